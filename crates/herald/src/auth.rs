//! Authorization with Mercure JWTs.
//!
//! A token carries a `mercure` claim: `publish` and `subscribe` are lists of
//! topic selectors, `payload` is free JSON handed to subscription events.
//! Tokens come from the `Authorization: Bearer` header, the `authorization`
//! query parameter, or the `mercureAuthorization` cookie, in that order.
//! The accepted algorithm is fixed by configuration and the key never comes
//! from the token, so `none` and algorithm-confusion tokens are refused.

use std::collections::HashSet;
use std::str::FromStr;

use herald_protocol::Selector;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

/// Why a request was not authorized. Each maps to `401` or `403`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed Authorization header: expected \"Bearer <token>\"")]
    MalformedHeader,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("a token is required")]
    Missing,
    #[error("an Origin or Referer header is required with cookie authorization")]
    NoOrigin,
    #[error("origin {0:?} is not allowed to publish")]
    OriginNotAllowed(String),
    #[error("the token does not allow publishing")]
    NoPublishClaim,
    #[error("the token does not allow publishing to topic {0:?}")]
    TopicNotAllowed(String),
    #[error("no key is configured for this action")]
    NoKey,
}

impl AuthError {
    /// `401` when the request carries no usable credentials, `403` when the
    /// credentials are valid but do not grant the action.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::NoOrigin
            | Self::OriginNotAllowed(_)
            | Self::NoPublishClaim
            | Self::TopicNotAllowed(_) => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// A short label for metrics and logs (bounded values only).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedHeader => "malformed_header",
            Self::InvalidToken(_) => "invalid_token",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Missing => "missing",
            Self::NoOrigin => "no_origin",
            Self::OriginNotAllowed(_) => "origin_not_allowed",
            Self::NoPublishClaim => "no_publish_claim",
            Self::TopicNotAllowed(_) => "topic_not_allowed",
            Self::NoKey => "no_key",
        }
    }
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
pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    let alg = Algorithm::from_str(s).map_err(|_| format!("unknown JWT algorithm {s:?}"))?;
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
        _ => Err(format!("unsupported JWT algorithm {s:?}")),
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
    pub fn new(cfg: &KeyConfig) -> Result<Self, String> {
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
                _ => return Err("unsupported algorithm".into()),
            }
            .map_err(|e| format!("invalid {:?} public key: {e}", cfg.algorithm))?
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
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
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
            })
    }
}

/// Signs tokens (for `herald token` and the zero-configuration start).
///
/// # Errors
/// When the key does not parse for the algorithm.
pub fn sign(claims: &Claims, cfg: &KeyConfig) -> Result<String, String> {
    let key = if is_hmac(cfg.algorithm) {
        EncodingKey::from_secret(cfg.key.as_bytes())
    } else {
        let pem = cfg.key.as_bytes();
        match cfg.algorithm {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                EncodingKey::from_rsa_pem(pem)
            }
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => return Err("unsupported algorithm".into()),
        }
        .map_err(|e| format!("invalid {:?} private key: {e}", cfg.algorithm))?
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(cfg.algorithm), claims, &key)
        .map_err(|e| e.to_string())
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

/// Finds the token of a request: header, then query, then cookie.
///
/// # Errors
/// A present but malformed `Authorization` header.
pub fn extract_token(
    headers: &http::HeaderMap,
    query_token: Option<&str>,
    cookie_name: &str,
) -> Result<Option<(String, TokenSource)>, AuthError> {
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(AuthError::MalformedHeader);
        }
        let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MalformedHeader)?;
        return Ok(Some((token.to_owned(), TokenSource::Header)));
    }
    if let Some(t) = query_token {
        return Ok(Some((t.to_owned(), TokenSource::Query)));
    }
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((name, v)) = pair.trim().split_once('=') {
                if name == cookie_name && !v.is_empty() {
                    return Ok(Some((v.to_owned(), TokenSource::Cookie)));
                }
            }
        }
    }
    Ok(None)
}

/// Checks the origin of a cookie-authorized publish against the allowed
/// publish origins, to stop cross-site request forgery.
///
/// # Errors
/// No `Origin`/`Referer`, or an origin not in the list.
pub fn check_publish_origin(
    headers: &http::HeaderMap,
    allowed: &[String],
) -> Result<(), AuthError> {
    let origin = match headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        Some(o) => o.to_owned(),
        None => {
            let referer = headers
                .get(http::header::REFERER)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::NoOrigin)?;
            origin_of(referer).ok_or(AuthError::NoOrigin)?
        }
    };
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        Ok(())
    } else {
        Err(AuthError::OriginNotAllowed(origin))
    }
}

fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

/// Compiled selectors from a claim; invalid selectors in a token match nothing.
pub fn compile_selectors(list: &[String]) -> Vec<Selector> {
    list.iter()
        .filter_map(|s| Selector::parse(s).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_from_referer() {
        assert_eq!(
            origin_of("https://example.com:8443/a/b?c").as_deref(),
            Some("https://example.com:8443")
        );
        assert_eq!(origin_of("nonsense"), None);
    }

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
}
