//! The JOSE header of a token, read before its signature is checked.
//!
//! Two things are decided from the header alone: whether a token is a
//! Mercure 1.0 access token at all (its `typ` is `at+jwt`, RFC 9068 section
//! 4), which routes it to the access-token verifier rather than to the
//! draft-07 one; and, for an access token, which `alg` and `kid` to try. An
//! unverified header is attacker-controlled, so it is read defensively:
//! bounded in size, a JSON object only, duplicate members refused, and
//! nothing else in it (`jwk`, `jku`, `x5u`, `x5c`) is ever used.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// Longest token accepted, in bytes. Real access tokens are a few hundred
/// bytes to a few KiB; anything longer is refused before it is decoded.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// True when the token's JOSE header has `typ` equal (ASCII
/// case-insensitively) to `at+jwt` or `application/at+jwt`: the token is
/// for [`super::OAuthVerifier`], not for the draft-07 verifier. Never panics, and
/// false on anything that is not a JWS with such a header.
pub(crate) fn is_access_token(token: &str) -> bool {
    let Some((header, _)) = token.split_once('.') else {
        return false;
    };
    header.len() <= MAX_TOKEN_LEN
        && parse_header(header).is_some_and(|h| h.typ.as_ref().is_some_and(is_at_jwt))
}

pub(super) fn is_at_jwt(typ: &Value) -> bool {
    typ.as_str().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    })
}

/// The header members read before verification. Derived deserialization
/// refuses duplicate members, like jsonwebtoken's own header parsing.
#[derive(Deserialize)]
pub(super) struct RawHeader {
    pub(super) typ: Option<Value>,
    pub(super) alg: Option<Value>,
    pub(super) kid: Option<Value>,
    pub(super) crit: Option<Value>,
}

/// Decodes a header; `None` unless it is a JSON object (a derived
/// `Deserialize` would also take an array).
pub(super) fn parse_header(b64: &str) -> Option<RawHeader> {
    let json = URL_SAFE_NO_PAD.decode(b64).ok()?;
    if json.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{b64, claims, hs, sign, SECRET};
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    #[test]
    fn routing_by_typ() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        assert!(is_access_token(&hs(&claims())));
        let mut h = Header::new(Algorithm::HS256);
        assert!(!is_access_token(&sign(&h, &claims(), &key)));
        h.typ = Some("application/AT+JWT".into());
        assert!(is_access_token(&sign(&h, &claims(), &key)));
        let header = b64(&json!({"typ": "at+jwt"}));
        assert!(is_access_token(&format!("{header}.")));
        let huge = "A".repeat(MAX_TOKEN_LEN + 1);
        for garbage in [
            "",
            ".",
            "....",
            "abc",
            "é.ü.ß",
            "!!!.e30.",
            "e30.e30.e30",
            "bnVsbA.e30.",
            &huge,
            &format!("{huge}.x"),
        ] {
            assert!(!is_access_token(garbage), "{garbage:?}");
        }
    }
}
