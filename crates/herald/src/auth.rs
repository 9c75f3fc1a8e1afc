//! Authorization with Mercure JWTs, in both protocol revisions.
//!
//! - A **draft-07** token carries a `mercure` claim: `publish` and
//!   `subscribe` are lists of topic selectors, `payload` is free JSON handed
//!   to subscription events. It is verified with `publisher_jwt` /
//!   `subscriber_jwt`, whose algorithm is fixed by configuration.
//! - A **draft-08** (Mercure 1.0) token is an OAuth access token, told apart
//!   by its `typ: at+jwt` header, and verified by [`crate::oauth`] against
//!   the trusted issuers; its `authorization_details` say what it grants.
//!
//! Either kind of token works with either kind of request: what a token
//! grants is a [`Grants`], and the rest of the hub asks it questions.
//!
//! Tokens come from the `Authorization: Bearer` header, then (draft-07
//! requests only) the `authorization` query parameter, then the draft-08
//! cookie (`__Secure-mercure_access_token`), then the draft-07 cookie
//! (`mercureAuthorization`). A header always wins over a cookie. Keys never
//! come from the token, so `none` and algorithm-confusion tokens are
//! refused.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use herald_protocol::authz::{Action, Authorization};
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
    #[error("access tokens are not accepted in the query string: use the Authorization header or the cookie")]
    TokenInQuery,
}

impl AuthError {
    /// `401` when the request carries no usable credentials, `403` when the
    /// credentials are valid but do not grant the action, `400` when the
    /// credentials are presented wrongly.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::NoOrigin
            | Self::OriginNotAllowed(_)
            | Self::NoPublishClaim
            | Self::TopicNotAllowed(_) => http::StatusCode::FORBIDDEN,
            Self::MalformedHeader | Self::TokenInQuery => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 error code of the `WWW-Authenticate: Bearer` challenge:
    /// none when no token was presented, `invalid_token` for a token that
    /// failed validation (whatever the reason, which is not disclosed),
    /// `insufficient_scope` when a valid token does not grant the action,
    /// `invalid_request` when the request is malformed.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            Self::Missing => None,
            Self::MalformedHeader | Self::TokenInQuery => Some("invalid_request"),
            // Not a token problem: a cross-site publish refused.
            Self::NoOrigin | Self::OriginNotAllowed(_) => None,
            Self::NoPublishClaim | Self::TopicNotAllowed(_) => Some("insufficient_scope"),
            Self::InvalidToken(_) | Self::Expired | Self::NotYetValid | Self::NoKey => {
                Some("invalid_token")
            }
        }
    }

    /// What the client is told. A token that fails validation is just an
    /// "invalid token", whatever the reason (which goes to logs and
    /// metrics): telling which issuers or keys exist would help an attacker.
    pub fn public_message(&self) -> String {
        match self.bearer_error() {
            Some("invalid_token") => "invalid token".to_owned(),
            _ => self.to_string(),
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
            Self::TokenInQuery => "token_in_query",
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
pub fn sign(claims: &Claims, cfg: &KeyConfig) -> Result<String, String> {
    let key = encoding_key(cfg)?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(cfg.algorithm), claims, &key)
        .map_err(|e| e.to_string())
}

/// The signing key of `cfg`: its HMAC secret, or its PEM private key.
///
/// # Errors
/// When the key does not parse for the algorithm.
pub fn encoding_key(cfg: &KeyConfig) -> Result<EncodingKey, String> {
    if is_hmac(cfg.algorithm) {
        return Ok(EncodingKey::from_secret(cfg.key.as_bytes()));
    }
    let pem = cfg.key.as_bytes();
    match cfg.algorithm {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        _ => return Err("unsupported algorithm".into()),
    }
    .map_err(|e| format!("invalid {:?} private key: {e}", cfg.algorithm))
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

/// Finds the token of a request: the `Authorization` header, then the
/// query token (draft-07 requests), then the cookies in the order given.
///
/// # Errors
/// A present but malformed `Authorization` header.
pub fn extract_token(
    headers: &http::HeaderMap,
    query_token: Option<&str>,
    cookie_names: &[&str],
) -> Result<Option<(String, TokenSource)>, AuthError> {
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(AuthError::MalformedHeader);
        }
        let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
        // The scheme name is case-insensitive (RFC 7235).
        let token = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| value[7..].trim())
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MalformedHeader)?;
        return Ok(Some((token.to_owned(), TokenSource::Header)));
    }
    if let Some(t) = query_token {
        return Ok(Some((t.to_owned(), TokenSource::Query)));
    }
    for name in cookie_names.iter().filter(|n| !n.is_empty()) {
        for value in headers.get_all(http::header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k == *name && !v.is_empty() {
                        return Ok(Some((v.to_owned(), TokenSource::Cookie)));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// Which key verifies a draft-07 token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// What a verified token grants, whichever revision it belongs to. Cheap to
/// clone: the compiled selectors and authorization details are shared.
#[derive(Debug, Clone)]
pub enum Grants {
    /// A draft-07 token's `mercure` claim, its selectors compiled once.
    Claim(Arc<ClaimGrants>),
    /// A draft-08 access token.
    Access(crate::oauth::AccessToken),
}

/// A draft-07 token's claims with `mercure.publish` and `mercure.subscribe`
/// compiled (invalid selectors in a token match nothing).
#[derive(Debug)]
pub struct ClaimGrants {
    pub claims: Claims,
    publish: Option<Vec<Selector>>,
    subscribe: Option<Arc<[Selector]>>,
}

impl ClaimGrants {
    pub fn new(claims: Claims) -> Self {
        let publish = claims.mercure.publish.as_deref().map(compile_selectors);
        let subscribe = claims
            .mercure
            .subscribe
            .as_deref()
            .map(|s| compile_selectors(s).into());
        Self {
            claims,
            publish,
            subscribe,
        }
    }
}

impl Grants {
    /// `exp`, seconds since the epoch; a stream closes then.
    pub fn exp(&self) -> Option<u64> {
        match self {
            Self::Claim(c) => c.claims.exp,
            Self::Access(a) => Some(a.exp),
        }
    }

    /// `nbf`, seconds since the epoch, when the token has one.
    fn nbf(&self) -> Option<u64> {
        match self {
            Self::Claim(c) => c.claims.nbf,
            Self::Access(_) => None,
        }
    }

    /// True for a draft-08 access token.
    pub fn is_access_token(&self) -> bool {
        matches!(self, Self::Access(_))
    }

    /// What the holder may receive of private updates.
    pub fn subscribe_rule(&self) -> Option<Allowed> {
        match self {
            Self::Claim(c) => c.subscribe.clone().map(Allowed::Selectors),
            Self::Access(a) => Some(Allowed::Access(a.authorization.clone())),
        }
    }

    /// True when the token may publish to `topic`.
    pub fn can_publish(&self, topic: &str) -> bool {
        match self {
            Self::Claim(c) => c
                .publish
                .as_deref()
                .is_some_and(|p| p.iter().any(|s| s.matches(topic))),
            Self::Access(a) => a.authorization.allows(Action::Publish, topic),
        }
    }

    /// True when the token may subscribe to `topic` (used for the
    /// subscriptions API, whose paths are authorized like topics).
    pub fn can_subscribe(&self, topic: &str) -> bool {
        self.subscribe_rule()
            .is_some_and(|a| a.allows(std::slice::from_ref(&topic.to_owned())))
    }

    /// True when the token carries some publish right at all.
    pub fn may_publish_somewhere(&self) -> bool {
        match self {
            Self::Claim(c) => c.publish.is_some(),
            Self::Access(a) => a
                .authorization
                .details()
                .iter()
                .any(|d| d.allows(Action::Publish)),
        }
    }

    /// True while the token is within its validity period at `now`
    /// (seconds since the epoch): for reusing an earlier verification.
    pub fn valid_at(&self, now: u64) -> bool {
        self.exp().is_none_or(|exp| now < exp) && self.nbf().is_none_or(|nbf| nbf <= now)
    }
}

/// The private updates a subscriber may receive.
#[derive(Debug, Clone)]
pub enum Allowed {
    /// Draft-07: one of the update's topics matches a selector of
    /// `mercure.subscribe`.
    Selectors(Arc<[Selector]>),
    /// Draft-08: the token grants `subscribe` on one of the update's topics.
    Access(Arc<Authorization>),
}

impl Allowed {
    /// True when an update with these topics may be delivered.
    pub fn allows(&self, topics: &[String]) -> bool {
        match self {
            Self::Selectors(s) => herald_protocol::selector::any_matches(s.iter(), topics),
            Self::Access(a) => topics.iter().any(|t| a.allows(Action::Subscribe, t)),
        }
    }
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
