//! Checking an access token: [`OAuthVerifier`] and what it hands back.
//!
//! The checks run in the order the module documentation of
//! [`crate::auth::oauth`] gives, cheapest first and failing closed: size and
//! header, then the issuer picked by the unverified `iss`, then `alg` and
//! the key, then the signature and the registered claims, and last the
//! authorization details. Verification is synchronous and never waits on
//! the network: keys of a JWKS URL are read from what the refresh task
//! (below) last installed, and an unknown `kid` only asks it to fetch
//! again.
//!
//! The refresh task ([`OAuthVerifier::start_refresh`]) shares the
//! verifier's issuers: it fetches every JWKS URL periodically and, within
//! each URL's rate limit, soon after a token met an unknown `kid`, and
//! installs the keys it gets; fetching itself is `jwks.rs`'s.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_protocol::authz::{Authorization, AuthzError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::header::{is_at_jwt, parse_header, MAX_TOKEN_LEN};
use super::issuer::{Issuer, IssuerConfig, IssuerError, Source};
use super::jwks::{
    fetch_jwks, http_client, FetchError, FetchErrorKind, RefreshError, MIN_REFRESH_INTERVAL,
};
use super::keys::KeyEntry;

/// Most keys tried for one token that names no `kid`: each try is a
/// signature verification, so the cost of a token stays bounded however
/// large the issuer's JWKS is.
pub(crate) const MAX_KEY_TRIES: usize = 8;

/// A verified access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// What the token grants: its Mercure authorization details.
    pub authorization: Arc<Authorization>,
    /// The `sub` claim, when present.
    pub sub: Option<String>,
    /// The issuer, as configured (and as in the token).
    pub iss: String,
    /// `exp`, seconds since the epoch (always present: it is required).
    pub exp: u64,
}

/// Why an access token was refused. Every variant is reported to clients as
/// a 401 `invalid_token`; [`TokenError::reason`] gives a bounded label for
/// metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed JWS compact serialization, or too long.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `typ` is not `at+jwt`.
    #[error("the token type must be at+jwt")]
    WrongType,
    /// The header has `crit` (no extension is understood).
    #[error("unsupported critical header parameters")]
    CriticalHeader,
    /// The `iss` claim names no configured issuer.
    #[error("untrusted issuer")]
    UntrustedIssuer,
    /// `alg` is `none`, unknown, not allowed for the issuer, or does not fit
    /// its keys.
    #[error("signing algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No key of the issuer has the token's `kid` (or the issuer has no key
    /// yet).
    #[error("unknown signing key")]
    UnknownKey,
    /// No key of the issuer verifies the signature.
    #[error("invalid signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    /// A required claim (`exp`, `aud`, `iss`) is missing.
    #[error("missing required claim {0}")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type (`exp` or `nbf` not a number, `sub`
    /// not a string, ...).
    #[error("invalid claim {0}")]
    InvalidClaim(&'static str),
    /// `aud` does not name the hub.
    #[error("the token is not meant for this hub (aud)")]
    WrongAudience,
    /// The `authorization_details` claim is invalid.
    #[error("invalid authorization details: {0}")]
    InvalidAuthorizationDetails(#[from] AuthzError),
}

impl TokenError {
    /// A short label for metrics and logs (bounded values only).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::WrongType => "wrong_type",
            Self::CriticalHeader => "critical_header",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidAuthorizationDetails(_) => "invalid_authorization_details",
        }
    }
}

/// What clones of one [`OAuthVerifier`] share with each other and with its
/// refresh task.
#[derive(Debug)]
pub(super) struct Inner {
    resource: String,
    base: Url,
    pub(super) issuers: Vec<Issuer>,
    by_name: HashMap<String, usize>,
    /// Present when some issuer has a JWKS URL.
    pub(super) client: Option<reqwest::Client>,
    /// Wakes the refresh task when a token meets an unknown `kid`.
    pub(super) wake: tokio::sync::Notify,
    /// Shortest time between two fetches of one JWKS URL asked for by
    /// tokens with an unknown `kid`.
    pub(super) min_refresh: Duration,
}

/// Verifies Mercure 1.0 access tokens against the configured issuers. Cheap
/// to clone: clones share keys and refresh state.
#[derive(Clone)]
pub struct OAuthVerifier {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for OAuthVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let issuers: Vec<_> = self
            .inner
            .issuers
            .iter()
            .map(|i| (&i.name, &i.source, &i.explicit, i.keys.read().len()))
            .collect();
        f.debug_struct("OAuthVerifier")
            .field("resource", &self.inner.resource)
            .field("issuers", &issuers)
            .finish_non_exhaustive()
    }
}

impl OAuthVerifier {
    /// `resource`: the hub's resource identifier that must appear in `aud`
    /// (string or array). `base`: the hub's public URL (for relative URL
    /// patterns in authorization details). Loads `Secret`, `Pem` and
    /// `JwksFile` keys now; `JwksUrl` keys start empty (see
    /// [`OAuthVerifier::refresh_now`] and [`OAuthVerifier::start_refresh`]).
    ///
    /// # Errors
    /// An [`IssuerError`], naming the issuer: an unusable key or file, an
    /// algorithm that does not fit the key, a repeated issuer, or an empty
    /// resource identifier.
    pub fn new(
        resource: String,
        base: Url,
        issuers: Vec<IssuerConfig>,
    ) -> Result<Self, IssuerError> {
        Self::with_min_refresh(resource, base, issuers, MIN_REFRESH_INTERVAL)
    }

    pub(super) fn with_min_refresh(
        resource: String,
        base: Url,
        configs: Vec<IssuerConfig>,
        min_refresh: Duration,
    ) -> Result<Self, IssuerError> {
        if resource.is_empty() {
            return Err(IssuerError::EmptyResource);
        }
        let mut issuers = Vec::with_capacity(configs.len());
        let mut by_name = HashMap::with_capacity(configs.len());
        for config in configs {
            if config.issuer.is_empty() {
                return Err(IssuerError::EmptyIssuer);
            }
            if by_name
                .insert(config.issuer.clone(), issuers.len())
                .is_some()
            {
                return Err(IssuerError::Duplicate {
                    issuer: config.issuer,
                });
            }
            issuers.push(Issuer::load(config, &resource)?);
        }
        let client = if issuers
            .iter()
            .any(|i| matches!(i.source, Source::JwksUrl(_)))
        {
            Some(http_client().map_err(IssuerError::HttpClient)?)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                resource,
                base,
                issuers,
                by_name,
                client,
                wake: tokio::sync::Notify::new(),
                min_refresh,
            }),
        })
    }

    /// Verifies a token. Synchronous: JWKS URLs are read from the cache
    /// kept by the refresh task; an unknown `kid` asks that task for an
    /// early fetch.
    ///
    /// # Errors
    /// See the module documentation for the checks, in order.
    pub fn verify(&self, token: &str) -> Result<AccessToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not a JWS compact serialization"));
        };
        let header = parse_header(header_b64).ok_or(TokenError::Malformed("invalid header"))?;
        if !header.typ.as_ref().is_some_and(is_at_jwt) {
            return Err(TokenError::WrongType);
        }
        if header.crit.is_some() {
            return Err(TokenError::CriticalHeader);
        }
        let alg = header
            .alg
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|a| Algorithm::from_str(a).ok())
            .ok_or(TokenError::AlgorithmNotAllowed)?;
        let kid = match &header.kid {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(TokenError::Malformed("invalid header")),
        };

        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed("invalid claims"))?;
        let raw: serde_json::Map<String, Value> = serde_json::from_slice(&payload)
            .map_err(|_| TokenError::Malformed("invalid claims"))?;
        let iss = match raw.get("iss") {
            None => return Err(TokenError::MissingClaim("iss")),
            Some(iss) => iss.as_str().ok_or(TokenError::UntrustedIssuer)?,
        };
        let issuer = self
            .inner
            .by_name
            .get(iss)
            .map(|&i| &self.inner.issuers[i])
            .ok_or(TokenError::UntrustedIssuer)?;

        if !issuer.explicit.is_empty() && !issuer.explicit.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let keys: Arc<Vec<KeyEntry>> = Arc::clone(&*issuer.keys.read());
        let by_kid = kid.filter(|_| issuer.source.is_jwks());
        let matching: Vec<&KeyEntry> = keys
            .iter()
            .filter(|k| by_kid.is_none() || k.kid.as_deref() == by_kid)
            .collect();
        if matching.is_empty() {
            self.request_refresh(issuer);
            return Err(TokenError::UnknownKey);
        }
        let mut candidates = matching
            .into_iter()
            .filter(|k| k.algorithms.contains(&alg))
            .take(MAX_KEY_TRIES)
            .peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::AlgorithmNotAllowed);
        }

        let mut validation = issuer.validation.clone();
        validation.algorithms = vec![alg];
        for entry in candidates {
            match jsonwebtoken::decode::<Value>(token, &entry.key, &validation) {
                Ok(data) => return self.accept(issuer, &data.claims),
                Err(e) if is_key_mismatch(e.kind()) => {}
                Err(e) => return Err(map_jwt_error(e.kind())),
            }
        }
        Err(TokenError::BadSignature)
    }

    /// The last checks, on verified claims.
    fn accept(&self, issuer: &Issuer, claims: &Value) -> Result<AccessToken, TokenError> {
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.round() as u64)))
            .ok_or(TokenError::MissingClaim("exp"))?;
        // jsonwebtoken accepts a token in its last second (exp == now);
        // RFC 7519 wants the current time strictly before exp.
        if exp <= jsonwebtoken::get_current_timestamp() {
            return Err(TokenError::Expired);
        }
        let sub = match claims.get("sub") {
            None => None,
            Some(Value::String(sub)) => Some(sub.clone()),
            Some(_) => return Err(TokenError::InvalidClaim("sub")),
        };
        let authorization = Authorization::from_claims(claims, &self.inner.base)?;
        Ok(AccessToken {
            authorization: Arc::new(authorization),
            sub,
            iss: issuer.name.clone(),
            exp,
        })
    }

    /// True when no issuer is configured: no access token can be valid.
    pub fn is_empty(&self) -> bool {
        self.inner.issuers.is_empty()
    }

    /// The configured JWKS URLs, in configuration order (for the
    /// protected-resource metadata `jwks_uri` when there is exactly one).
    pub fn jwks_urls(&self) -> Vec<String> {
        self.inner
            .issuers
            .iter()
            .filter_map(|i| match &i.source {
                Source::JwksUrl(state) => Some(state.url.clone()),
                _ => None,
            })
            .collect()
    }

    /// The configured issuer identifiers, in configuration order (for the
    /// protected-resource metadata `authorization_servers`).
    pub fn issuers(&self) -> Vec<String> {
        self.inner.issuers.iter().map(|i| i.name.clone()).collect()
    }

    /// The resource identifier tokens must name in `aud`.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }
}

/// Errors meaning "this key did not verify the signature": try the next one.
fn is_key_mismatch(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
    )
}

fn claim_name(name: &str) -> &'static str {
    match name {
        "exp" => "exp",
        "nbf" => "nbf",
        "aud" => "aud",
        "iss" => "iss",
        "sub" => "sub",
        _ => "unknown",
    }
}

fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::UntrustedIssuer,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(claim_name(c)),
        ErrorKind::InvalidClaimFormat(c) => TokenError::InvalidClaim(claim_name(c)),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenError::AlgorithmNotAllowed,
        k if is_key_mismatch(k) => TokenError::BadSignature,
        _ => TokenError::Malformed("invalid token"),
    }
}

impl OAuthVerifier {
    /// Asks the refresh task to fetch `issuer`'s JWKS URL soon.
    pub(super) fn request_refresh(&self, issuer: &Issuer) {
        if let Source::JwksUrl(state) = &issuer.source {
            if !state.wanted.swap(true, Ordering::AcqRel) {
                self.inner.wake.notify_one();
            }
        }
    }

    /// For issuers with a JWKS URL: fetches now, then every `every` (at
    /// least ten seconds, `MIN_REFRESH_INTERVAL`) until `shutdown` is
    /// cancelled, and also soon after [`OAuthVerifier::verify`] meets an
    /// unknown `kid` for that issuer (at most once per
    /// `MIN_REFRESH_INTERVAL` per issuer).
    /// Spawns a tokio task and returns at once; does nothing when no issuer
    /// has a JWKS URL. A failed fetch keeps the previous keys and logs a
    /// warning. Call it once, inside a tokio runtime: the task holds the
    /// verifier until shutdown.
    pub fn start_refresh(&self, every: Duration, shutdown: CancellationToken) {
        if self.inner.client.is_none() {
            return;
        }
        let every = every.max(self.inner.min_refresh);
        tokio::spawn(refresh_loop(Arc::clone(&self.inner), every, shutdown));
    }

    /// Fetches every JWKS URL once, now (at startup and in tests).
    ///
    /// # Errors
    /// Each issuer and URL whose fetch failed; those issuers keep their
    /// previous keys, the others are updated.
    pub async fn refresh_now(&self) -> Result<(), RefreshError> {
        let fetches = self
            .inner
            .issuers
            .iter()
            .filter(|i| matches!(i.source, Source::JwksUrl(_)))
            .map(|i| self.inner.fetch(i));
        let failures: Vec<FetchError> = futures_util::future::join_all(fetches)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(RefreshError { failures })
        }
    }
}

impl Inner {
    /// Fetches one issuer's JWKS URL and installs its keys.
    async fn fetch(&self, issuer: &Issuer) -> Result<usize, FetchError> {
        let Source::JwksUrl(state) = &issuer.source else {
            return Ok(0);
        };
        *state.last_attempt.lock() = Some(Instant::now());
        let fail = |kind| FetchError {
            issuer: issuer.name.clone(),
            url: state.url.clone(),
            kind,
        };
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| fail(FetchErrorKind::NoClient))?;
        let keys = fetch_jwks(client, &state.url, &issuer.explicit)
            .await
            .map_err(fail)?;
        let count = keys.len();
        *issuer.keys.write() = Arc::new(keys);
        Ok(count)
    }

    /// [`Inner::fetch`], with the outcome logged.
    async fn fetch_logged(&self, issuer: &Issuer) {
        match self.fetch(issuer).await {
            Ok(keys) => tracing::debug!(issuer = %issuer.name, keys, "JWKS refreshed"),
            Err(error) => tracing::warn!(%error, "JWKS refresh failed; keeping the previous keys"),
        }
    }
}

/// The refresh task: every `every`, all JWKS URLs; in between, the issuers
/// whose `wanted` flag is set, once their rate limit allows.
async fn refresh_loop(inner: Arc<Inner>, every: Duration, shutdown: CancellationToken) {
    let mut next_periodic = Instant::now();
    loop {
        let now = Instant::now();
        let mut due: Vec<&Issuer> = Vec::new();
        let mut wake_at = next_periodic;
        if now >= next_periodic {
            next_periodic = now + every;
            wake_at = next_periodic;
            for issuer in &inner.issuers {
                if let Source::JwksUrl(state) = &issuer.source {
                    state.wanted.store(false, Ordering::Release);
                    due.push(issuer);
                }
            }
        } else {
            for issuer in &inner.issuers {
                let Source::JwksUrl(state) = &issuer.source else {
                    continue;
                };
                if !state.wanted.load(Ordering::Acquire) {
                    continue;
                }
                let allowed = state
                    .last_attempt
                    .lock()
                    .map_or(now, |t| t + inner.min_refresh);
                if allowed <= now {
                    state.wanted.store(false, Ordering::Release);
                    due.push(issuer);
                } else {
                    wake_at = wake_at.min(allowed);
                }
            }
        }
        if !due.is_empty() {
            let fetches = futures_util::future::join_all(due.iter().map(|i| inner.fetch_logged(i)));
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = fetches => {}
            }
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = inner.wake.notified() => {}
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::KeySource;
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    #[test]
    fn hs256_grants_what_the_claim_says() {
        let token = hs_verifier().verify(&hs(&claims())).unwrap();
        assert_eq!(token.iss, ISS);
        assert_eq!(token.sub.as_deref(), Some("alice"));
        assert!(token.exp > now());
        assert!(token.authorization.can_subscribe(BOOK));
        assert!(!token.authorization.can_publish(BOOK));
        assert!(!token
            .authorization
            .can_subscribe("https://example.com/books/2"));

        let mut c = claims();
        c["authorization_details"] = json!([{
            "type": DETAIL,
            "actions": ["publish", "subscribe"],
            "topics": [{"match": "https://example.com/books/:id", "match_type": "urlpattern"}]
        }]);
        let token = hs_verifier().verify(&hs(&c)).unwrap();
        assert!(token
            .authorization
            .can_publish("https://example.com/books/2"));
        assert!(token.authorization.can_subscribe(BOOK));
        assert!(!token
            .authorization
            .can_publish("https://example.com/authors/2"));
    }

    #[test]
    fn no_authorization_details_grants_nothing() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("authorization_details");
        c.as_object_mut().unwrap().remove("sub");
        let token = hs_verifier().verify(&hs(&c)).unwrap();
        assert!(token.authorization.is_empty());
        assert_eq!(token.sub, None);
        c["sub"] = json!(42);
        assert_eq!(
            hs_verifier().verify(&hs(&c)).unwrap_err(),
            TokenError::InvalidClaim("sub")
        );
    }

    #[test]
    fn es256_pem() {
        let v = verifier(vec![issuer(KeySource::Pem(EC_PUBLIC.into()), vec![])]);
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let token = sign(&at_header(Algorithm::ES256), &claims(), &key);
        assert!(v.verify(&token).unwrap().authorization.can_subscribe(BOOK));
        // The EC key is P-256: ES384 does not fit it.
        let err = OAuthVerifier::new(
            RESOURCE.into(),
            base(),
            vec![issuer(
                KeySource::Pem(EC_PUBLIC.into()),
                vec![Algorithm::ES384],
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(ISS) && err.contains("ES384"), "{err}");
    }

    #[test]
    fn rs256_and_eddsa_pem() {
        let v = verifier(vec![issuer(KeySource::Pem(RSA_PUBLIC.into()), vec![])]);
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        v.verify(&sign(&at_header(Algorithm::RS256), &claims(), &key))
            .unwrap();
        // RS256 is the default for RSA; PS256 must be listed.
        assert_eq!(
            v.verify(&sign(&at_header(Algorithm::PS256), &claims(), &key))
                .unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        let v = verifier(vec![issuer(KeySource::Pem(ED_PUBLIC.into()), vec![])]);
        let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        v.verify(&sign(&at_header(Algorithm::EdDSA), &claims(), &key))
            .unwrap();
    }

    #[test]
    fn eddsa_jwks_file() {
        let file = jwks_file(&[
            jwk(Algorithm::RS256, RSA_PRIVATE, "rsa"),
            jwk(Algorithm::EdDSA, ED_PRIVATE, "ed"),
        ]);
        let v = verifier(vec![issuer(
            KeySource::JwksFile(file.path().to_owned()),
            vec![],
        )]);
        let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let token = sign(&with_kid(Algorithm::EdDSA, "ed"), &claims(), &key);
        assert!(v.verify(&token).unwrap().authorization.can_subscribe(BOOK));
        // Without kid, the keys that accept the algorithm are tried.
        let token = sign(&at_header(Algorithm::EdDSA), &claims(), &key);
        v.verify(&token).unwrap();
        // A kid naming another key of the set: that key only.
        let token = sign(&with_kid(Algorithm::EdDSA, "rsa"), &claims(), &key);
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
    }

    #[test]
    fn unknown_kid() {
        let file = jwks_file(&[jwk(Algorithm::EdDSA, ED_PRIVATE, "ed")]);
        let v = verifier(vec![issuer(
            KeySource::JwksFile(file.path().to_owned()),
            vec![],
        )]);
        let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let token = sign(&with_kid(Algorithm::EdDSA, "other"), &claims(), &key);
        let err = v.verify(&token).unwrap_err();
        assert_eq!(err, TokenError::UnknownKey);
        assert_eq!(err.reason(), "unknown_key");
    }

    #[test]
    fn typ_must_be_at_jwt() {
        let v = hs_verifier();
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+JWT",
        ] {
            let mut h = at_header(Algorithm::HS256);
            h.typ = Some(typ.into());
            v.verify(&sign(&h, &claims(), &key)).unwrap();
        }
        for typ in [
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt "),
            Some("application/jwt"),
            None,
        ] {
            let mut h = at_header(Algorithm::HS256);
            h.typ = typ.map(Into::into);
            let err = v.verify(&sign(&h, &claims(), &key)).unwrap_err();
            assert_eq!(err, TokenError::WrongType, "{typ:?}");
            assert_eq!(err.reason(), "wrong_type");
        }
    }

    #[test]
    fn issuer_must_be_configured() {
        let v = hs_verifier();
        let mut c = claims();
        c["iss"] = json!("https://evil.example.com");
        assert_eq!(v.verify(&hs(&c)).unwrap_err(), TokenError::UntrustedIssuer);
        c["iss"] = json!([ISS]);
        assert_eq!(v.verify(&hs(&c)).unwrap_err(), TokenError::UntrustedIssuer);
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            v.verify(&hs(&c)).unwrap_err(),
            TokenError::MissingClaim("iss")
        );
        // Several issuers: each token is checked with its own issuer's key.
        let other = IssuerConfig {
            issuer: "https://other.example.com".into(),
            keys: KeySource::Secret("another-secret-another-secret-another".into()),
            algorithms: vec![],
        };
        let v = verifier(vec![
            other,
            issuer(KeySource::Secret(SECRET.into()), vec![]),
        ]);
        v.verify(&hs(&claims())).unwrap();
        let mut c = claims();
        c["iss"] = json!("https://other.example.com");
        assert_eq!(v.verify(&hs(&c)).unwrap_err(), TokenError::BadSignature);
        assert_eq!(v.issuers(), vec!["https://other.example.com", ISS]);
    }

    #[test]
    fn audience_must_name_the_hub() {
        let v = hs_verifier();
        let mut c = claims();
        c["aud"] = json!("https://other-hub.example.com");
        let err = v.verify(&hs(&c)).unwrap_err();
        assert_eq!(err, TokenError::WrongAudience);
        assert_eq!(err.reason(), "wrong_audience");
        c["aud"] = json!(["https://a.example.com", "https://b.example.com"]);
        assert_eq!(v.verify(&hs(&c)).unwrap_err(), TokenError::WrongAudience);
        c["aud"] = json!([]);
        assert_eq!(v.verify(&hs(&c)).unwrap_err(), TokenError::WrongAudience);
        c["aud"] = json!(["https://a.example.com", RESOURCE]);
        v.verify(&hs(&c)).unwrap();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            v.verify(&hs(&c)).unwrap_err(),
            TokenError::MissingClaim("aud")
        );
    }

    #[test]
    fn lifetime_is_enforced() {
        let v = hs_verifier();
        let mut c = claims();
        c["exp"] = json!(now() - 1);
        let err = v.verify(&hs(&c)).unwrap_err();
        assert_eq!(err, TokenError::Expired);
        assert_eq!(err.reason(), "expired");
        c["exp"] = json!(now());
        assert_eq!(v.verify(&hs(&c)).unwrap_err(), TokenError::Expired);
        c["exp"] = json!("tomorrow");
        assert_eq!(
            v.verify(&hs(&c)).unwrap_err(),
            TokenError::MissingClaim("exp")
        );
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify(&hs(&c)).unwrap_err(),
            TokenError::MissingClaim("exp")
        );
        let mut c = claims();
        c["nbf"] = json!(now() + 60);
        assert_eq!(v.verify(&hs(&c)).unwrap_err(), TokenError::NotYetValid);
        c["nbf"] = json!(now() - 60);
        v.verify(&hs(&c)).unwrap();
    }

    #[test]
    fn algorithm_must_be_allowed() {
        // Algorithm confusion: the public key used as an HMAC secret.
        let confused = sign(
            &at_header(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
        );
        for algorithms in [vec![], vec![Algorithm::ES256]] {
            let v = verifier(vec![issuer(KeySource::Pem(EC_PUBLIC.into()), algorithms)]);
            let err = v.verify(&confused).unwrap_err();
            assert_eq!(err, TokenError::AlgorithmNotAllowed);
            assert_eq!(err.reason(), "algorithm_not_allowed");
        }
        // The same with a JWKS.
        let file = jwks_file(&[jwk(Algorithm::ES256, EC_PRIVATE, "ec")]);
        let v = verifier(vec![issuer(
            KeySource::JwksFile(file.path().to_owned()),
            vec![],
        )]);
        assert_eq!(
            v.verify(&confused).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        // HS384 with a secret whose issuer allows HS256 only.
        let hs384 = sign(
            &at_header(Algorithm::HS384),
            &claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        assert_eq!(
            hs_verifier().verify(&hs384).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        let v = verifier(vec![issuer(
            KeySource::Secret(SECRET.into()),
            vec![Algorithm::HS256, Algorithm::HS384],
        )]);
        v.verify(&hs384).unwrap();
    }

    #[test]
    fn alg_none_is_refused() {
        let header = json!({"alg": "none", "typ": "at+jwt"});
        let v = hs_verifier();
        for sig in ["", "AAAA"] {
            let token = format!("{}.{}.{sig}", b64(&header), b64(&claims()));
            let err = v.verify(&token).unwrap_err();
            assert_eq!(err, TokenError::AlgorithmNotAllowed);
        }
        let header = json!({"typ": "at+jwt"});
        let token = format!("{}.{}.", b64(&header), b64(&claims()));
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
    }

    #[test]
    fn bad_signature() {
        let token = sign(
            &at_header(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the"),
        );
        let err = hs_verifier().verify(&token).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
        assert_eq!(err.reason(), "bad_signature");
        // A tampered payload.
        let good = hs(&claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut c = claims();
        c["authorization_details"][0]["actions"] = json!(["publish"]);
        let forged = b64(&c);
        parts[1] = &forged;
        assert_eq!(
            hs_verifier().verify(&parts.join(".")).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn keys_in_the_token_header_are_ignored() {
        let file = jwks_file(&[jwk(Algorithm::EdDSA, ED_PRIVATE, "ed")]);
        let v = verifier(vec![issuer(
            KeySource::JwksFile(file.path().to_owned()),
            vec![],
        )]);
        let attacker = EncodingKey::from_ed_pem(ED2_PRIVATE.as_bytes()).unwrap();
        let mut h = at_header(Algorithm::EdDSA);
        let attacker_jwk = jwk(Algorithm::EdDSA, ED2_PRIVATE, "ed");
        h.jwk = Some(serde_json::from_value(attacker_jwk).unwrap());
        h.jku = Some("https://evil.example.com/jwks.json".into());
        assert_eq!(
            v.verify(&sign(&h, &claims(), &attacker)).unwrap_err(),
            TokenError::BadSignature
        );
        h.kid = Some("ed".into());
        assert_eq!(
            v.verify(&sign(&h, &claims(), &attacker)).unwrap_err(),
            TokenError::BadSignature
        );
    }

    #[test]
    fn invalid_authorization_details() {
        let v = hs_verifier();
        let mut c = claims();
        c["authorization_details"][0]["topics"] = json!(BOOK);
        let err = v.verify(&hs(&c)).unwrap_err();
        assert!(
            matches!(err, TokenError::InvalidAuthorizationDetails(_)),
            "{err:?}"
        );
        assert_eq!(err.reason(), "invalid_authorization_details");
        c["authorization_details"] = json!({"type": DETAIL});
        assert!(matches!(
            v.verify(&hs(&c)).unwrap_err(),
            TokenError::InvalidAuthorizationDetails(_)
        ));
    }

    #[test]
    fn malformed_tokens() {
        let v = hs_verifier();
        let header = b64(&json!({"alg": "HS256", "typ": "at+jwt"}));
        let too_long = format!("{header}.{}.x", "A".repeat(MAX_TOKEN_LEN));
        let cases = [
            "",
            ".",
            "..",
            "a.b.c",
            "not a token",
            &too_long,
            &format!("{header}.e30"),
            &format!("{header}.e30.x.y"),
            &format!("{header}.!!!.x"),
            &format!("{header}.{}.x", b64(&json!([1, 2]))),
        ];
        for token in cases {
            let err = v.verify(token).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed(_) | TokenError::WrongType),
                "{token:?}: {err:?}"
            );
        }
        let crit = json!({"alg": "HS256", "typ": "at+jwt", "crit": ["exp"], "exp": 1});
        let token = format!("{}.{}.x", b64(&crit), b64(&claims()));
        assert_eq!(v.verify(&token).unwrap_err(), TokenError::CriticalHeader);
        // A repeated header member is refused, whichever copy one reads.
        let dup = format!(
            "{}.{}.x",
            URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","typ":"at+jwt","alg":"HS256"}"#),
            b64(&claims())
        );
        assert!(matches!(
            v.verify(&dup).unwrap_err(),
            TokenError::Malformed(_)
        ));
    }

    #[test]
    fn verifier_is_shareable_and_debug_hides_secrets() {
        fn shareable<T: Send + Sync + Clone + fmt::Debug>() {}
        shareable::<OAuthVerifier>();
        let debug = format!("{:?}", hs_verifier());
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains(ISS), "{debug}");
    }
}
