//! Draft-07 tokens: the `mercure` claim, its keys, verifying and signing.
//!
//! A draft-07 hub has at most two keys, `publisher_jwt` and
//! `subscriber_jwt`, each with the one algorithm configuration gives it: a
//! token signed with any other algorithm is refused, whatever its header
//! says. The same [`KeyConfig`] signs tokens for `herald token` and for the
//! key generated at a zero-configuration start ([`sign`]). A key that does
//! not parse is a [`KeyError`], found when the hub starts rather than when
//! the first token arrives.

use std::collections::HashSet;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::error::AuthError;

/// Why a draft-07 key or algorithm cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The name is not a JWT algorithm at all.
    #[error("unknown JWT algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// A JWT algorithm herald does not verify (`none`, `PS256`, ...).
    #[error("unsupported JWT algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A [`KeyConfig`] built by hand with an algorithm herald does not
    /// verify.
    #[error("unsupported algorithm")]
    AlgorithmNotVerified(Algorithm),
    /// The PEM text is not a public key of the algorithm's type.
    #[error("invalid {algorithm:?} public key: {error}")]
    InvalidPublicKey {
        algorithm: Algorithm,
        error: jsonwebtoken::errors::Error,
    },
    /// The PEM text is not a private key of the algorithm's type.
    #[error("invalid {algorithm:?} private key: {error}")]
    InvalidPrivateKey {
        algorithm: Algorithm,
        error: jsonwebtoken::errors::Error,
    },
    /// Signing failed with a key that did parse.
    #[error("{0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// The `mercure` claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MercureClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// The claims herald reads from a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    #[serde(default)]
    pub mercure: MercureClaim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// A key and the one algorithm accepted with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConfig {
    /// An HMAC secret, or PEM text (RSA / EC public key to verify; private
    /// key to sign with `herald token`).
    pub key: String,
    pub algorithm: Algorithm,
}

impl KeyConfig {
    pub fn hmac(secret: impl Into<String>) -> Self {
        Self {
            key: secret.into(),
            algorithm: Algorithm::HS256,
        }
    }
}

/// Parses an algorithm name, refusing everything herald does not verify.
///
/// # Errors
/// [`KeyError::UnknownAlgorithm`] or [`KeyError::UnsupportedAlgorithm`].
pub fn parse_algorithm(s: &str) -> Result<Algorithm, KeyError> {
    let alg = Algorithm::from_str(s).map_err(|_| KeyError::UnknownAlgorithm(s.to_owned()))?;
    match alg {
        Algorithm::HS256
        | Algorithm::HS384
        | Algorithm::HS512
        | Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::ES256
        | Algorithm::ES384
        | Algorithm::EdDSA => Ok(alg),
        _ => Err(KeyError::UnsupportedAlgorithm(s.to_owned())),
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Verifies tokens with one key and one algorithm.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// # Errors
    /// When the key does not parse for the configured algorithm.
    pub fn new(cfg: &KeyConfig) -> Result<Self, KeyError> {
        let key = if is_hmac(cfg.algorithm) {
            DecodingKey::from_secret(cfg.key.as_bytes())
        } else {
            let pem = cfg.key.as_bytes();
            match cfg.algorithm {
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                    DecodingKey::from_rsa_pem(pem)
                }
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
                other => return Err(KeyError::AlgorithmNotVerified(other)),
            }
            .map_err(|error| KeyError::InvalidPublicKey {
                algorithm: cfg.algorithm,
                error,
            })?
        };
        let mut validation = Validation::new(cfg.algorithm);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = 0;
        Ok(Self { key, validation })
    }

    /// # Errors
    /// A malformed, wrongly signed, wrong-algorithm, expired or premature token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::InvalidToken("algorithm not accepted".into())
                }
                ErrorKind::InvalidSignature => AuthError::InvalidToken("bad signature".into()),
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    AuthError::InvalidToken("malformed token".into())
                }
                ErrorKind::Json(e) => AuthError::InvalidToken(format!("malformed claims: {e}")),
                _ => AuthError::InvalidToken(e.to_string()),
            })?;
        // jsonwebtoken still accepts a token in the second of its `exp`; a
        // stream is closed at that instant, so the token ends there too.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if claims.exp.is_some_and(|exp| exp <= now) {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

/// Signs tokens (for `herald token` and the zero-configuration start).
///
/// # Errors
/// When the key does not parse for the algorithm.
pub fn sign(claims: &Claims, cfg: &KeyConfig) -> Result<String, KeyError> {
    let key = encoding_key(cfg)?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(cfg.algorithm), claims, &key)
        .map_err(KeyError::Sign)
}

/// The signing key of `cfg`: its HMAC secret, or its PEM private key.
///
/// # Errors
/// When the key does not parse for the algorithm.
pub fn encoding_key(cfg: &KeyConfig) -> Result<EncodingKey, KeyError> {
    if is_hmac(cfg.algorithm) {
        return Ok(EncodingKey::from_secret(cfg.key.as_bytes()));
    }
    let pem = cfg.key.as_bytes();
    match cfg.algorithm {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        other => return Err(KeyError::AlgorithmNotVerified(other)),
    }
    .map_err(|error| KeyError::InvalidPrivateKey {
        algorithm: cfg.algorithm,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_hmac() {
        let cfg = KeyConfig::hmac("secret-secret-secret-secret-secret");
        let claims = Claims {
            mercure: MercureClaim {
                publish: Some(vec!["*".into()]),
                ..Default::default()
            },
            ..Default::default()
        };
        let t = sign(&claims, &cfg).unwrap();
        let v = Verifier::new(&cfg).unwrap();
        assert_eq!(v.verify(&t).unwrap(), claims);
        let other = Verifier::new(&KeyConfig::hmac("another-secret")).unwrap();
        assert!(matches!(other.verify(&t), Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn key_errors_read_as_before() {
        assert_eq!(
            parse_algorithm("XX256").unwrap_err().to_string(),
            "unknown JWT algorithm \"XX256\""
        );
        assert_eq!(
            parse_algorithm("PS256").unwrap_err().to_string(),
            "unsupported JWT algorithm \"PS256\""
        );
        let bad = KeyConfig {
            key: "not a key".into(),
            algorithm: Algorithm::RS256,
        };
        let err = Verifier::new(&bad).unwrap_err().to_string();
        assert!(err.starts_with("invalid RS256 public key: "), "{err}");
        let err = sign(&Claims::default(), &bad).unwrap_err().to_string();
        assert!(err.starts_with("invalid RS256 private key: "), "{err}");
        let ps = KeyConfig {
            key: "x".into(),
            algorithm: Algorithm::PS256,
        };
        assert_eq!(
            Verifier::new(&ps).unwrap_err().to_string(),
            "unsupported algorithm"
        );
    }
}
