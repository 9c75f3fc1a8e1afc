//! JWKS documents to verification keys.
//!
//! A JWKS document lists keys as JWKs (RFC 7517). Each usable one becomes
//! a [`KeyEntry`] with the algorithms it is accepted with; the others are
//! skipped with a debug log (an authorization server's set often holds
//! encryption keys too). A key is usable when it is meant for signatures
//! (`use`, `key_ops`), its type and curve are supported, its `alg`, if any,
//! fits its type, and its parameters make a valid key. Symmetric (`oct`)
//! keys count only from a file: a secret published at a URL is no secret.
//! The same reading serves JWKS files at startup and JWKS URLs at each
//! refresh (`jwks.rs`).

use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use super::keys::{key_fits, JwksError, KeyEntry, HMAC_ALGS, MAX_JWKS_KEYS, RSA_ALGS};

/// Turns one JWK into a key entry, or says why it is not usable.
fn jwk_key(jwk: &Jwk, explicit: &[Algorithm], allow_oct: bool) -> Result<KeyEntry, &'static str> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err("not a signature key (use)");
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("not a verification key (key_ops)");
    }
    let (family, default): (&[Algorithm], Algorithm) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (RSA_ALGS, Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (&[Algorithm::ES256], Algorithm::ES256),
            EllipticCurve::P384 => (&[Algorithm::ES384], Algorithm::ES384),
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (&[Algorithm::EdDSA], Algorithm::EdDSA),
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKey(_) if allow_oct => (HMAC_ALGS, Algorithm::HS256),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key in a fetched JWKS"),
        _ => return Err("unsupported key type"),
    };
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let alg = Algorithm::from_str(&a.to_string()).map_err(|_| "unsupported alg")?;
            if !family.contains(&alg) {
                return Err("alg does not fit the key type");
            }
            Some(alg)
        }
    };
    let wanted: Vec<Algorithm> = if explicit.is_empty() {
        vec![declared.unwrap_or(default)]
    } else {
        explicit
            .iter()
            .copied()
            .filter(|a| family.contains(a) && declared.is_none_or(|d| d == *a))
            .collect()
    };
    if wanted.is_empty() {
        return Err("no allowed algorithm fits the key");
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "invalid key parameters")?;
    let algorithms: Vec<_> = wanted.into_iter().filter(|a| key_fits(&key, *a)).collect();
    if algorithms.is_empty() {
        return Err("invalid key parameters");
    }
    Ok(KeyEntry {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

/// Reads a JWKS document, keeping the usable keys.
///
/// # Errors
/// Not JSON, no `keys` array, too many keys, or not one usable key.
pub(super) fn parse_jwks(
    bytes: &[u8],
    explicit: &[Algorithm],
    allow_oct: bool,
) -> Result<Vec<KeyEntry>, JwksError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(JwksError::InvalidJson)?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NotJwks)?;
    if keys.len() > MAX_JWKS_KEYS {
        return Err(JwksError::TooManyKeys);
    }
    let mut out = Vec::with_capacity(keys.len());
    for (index, raw) in keys.iter().enumerate() {
        let entry = Jwk::deserialize(raw)
            .map_err(|_| "unparsable key")
            .and_then(|jwk| jwk_key(&jwk, explicit, allow_oct));
        match entry {
            Ok(entry) => out.push(entry),
            Err(reason) => {
                tracing::debug!(index, kid = ?raw.get("kid"), reason, "JWKS key skipped");
            }
        }
    }
    if out.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{jwk, RSA_PRIVATE, SECRET};
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    #[test]
    fn symmetric_keys_are_ignored_in_fetched_jwks() {
        let oct = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET), "kid": "s"});
        let doc = json!({ "keys": [oct] }).to_string();
        assert!(parse_jwks(doc.as_bytes(), &[], false).is_err());
        assert_eq!(parse_jwks(doc.as_bytes(), &[], true).unwrap().len(), 1);
    }

    #[test]
    fn encryption_keys_are_skipped() {
        let mut enc = jwk(Algorithm::RS256, RSA_PRIVATE, "enc");
        enc["use"] = json!("enc");
        enc.as_object_mut().unwrap().remove("alg");
        let mut oaep = jwk(Algorithm::RS256, RSA_PRIVATE, "oaep");
        oaep["alg"] = json!("RSA-OAEP");
        let sig = jwk(Algorithm::RS256, RSA_PRIVATE, "sig");
        let doc = json!({ "keys": [enc, oaep, sig] }).to_string();
        let keys = parse_jwks(doc.as_bytes(), &[], false).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
    }
}
