//! JWKS URLs: where keys may be fetched from, and fetching them.
//!
//! Keys fetched over the network decide who may publish, so they travel
//! over HTTPS only (plain HTTP only to a loopback address), from exactly the
//! configured URL (no redirects), within a time limit and a size limit. A
//! fetched document is read as a JWKS file is (`jwk.rs`), except that
//! symmetric keys are ignored.
//!
//! Each JWKS URL keeps a [`UrlState`] for the refresh task (in `verify.rs`,
//! [`OAuthVerifier::start_refresh`](super::verify::OAuthVerifier::start_refresh)),
//! which fetches it every few minutes (that is how key rotation shows up)
//! and also soon after a token names a `kid` the hub does not know, since a
//! new key is often used before the next periodic fetch. Such early fetches
//! are rate-limited per issuer (at most one per ten seconds) so that tokens
//! with made-up `kid`s cannot turn the hub into a load generator against
//! the authorization server. A failed fetch keeps the previous keys.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use parking_lot::Mutex;
use url::Url;

use super::jwk::parse_jwks;
use super::keys::{JwksError, KeyEntry, KeyLoadError};

/// Shortest time between two fetches of one issuer's JWKS URL when fetches
/// are triggered by tokens with an unknown `kid`.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Largest JWKS document accepted, in bytes.
pub(crate) const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Time allowed for one JWKS fetch, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one issuer's JWKS URL could not be fetched; the issuer keeps its
/// previous keys.
#[derive(Debug, thiserror::Error)]
#[error("issuer {issuer:?}: JWKS {url}: {kind}")]
pub struct FetchError {
    pub issuer: String,
    pub url: String,
    pub kind: FetchErrorKind,
}

/// What went wrong with a JWKS fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchErrorKind {
    #[error("no HTTP client")]
    NoClient,
    /// The request failed (connection, TLS, timeout, ...): the error and
    /// its sources, on one line.
    #[error("{}", error_chain(.0))]
    Request(reqwest::Error),
    #[error("HTTP status {0}")]
    Status(reqwest::StatusCode),
    #[error("larger than {} bytes", MAX_JWKS_BYTES)]
    TooLarge,
    #[error("{0}")]
    Document(JwksError),
}

/// The fetches that failed in
/// [`OAuthVerifier::refresh_now`](super::verify::OAuthVerifier::refresh_now), in
/// configuration order; shown on one line, separated by `; `.
#[derive(Debug)]
pub struct RefreshError {
    pub failures: Vec<FetchError>,
}

impl std::fmt::Display for RefreshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RefreshError {}

/// Fetch state of a JWKS URL.
#[derive(Debug)]
pub(super) struct UrlState {
    pub(super) url: String,
    /// A token met an unknown `kid`: fetch when the rate limit allows.
    pub(super) wanted: AtomicBool,
    /// Start of the last fetch, for the rate limit.
    pub(super) last_attempt: Mutex<Option<Instant>>,
}

impl UrlState {
    pub(super) fn new(url: String) -> Self {
        Self {
            url,
            wanted: AtomicBool::new(false),
            last_attempt: Mutex::new(None),
        }
    }
}

/// Keys fetched over the network decide who may publish, so they travel
/// over HTTPS; plain HTTP only to a loopback address (a sidecar, tests).
pub(super) fn check_jwks_url(url: &Url) -> Result<(), KeyLoadError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(KeyLoadError::InsecureJwksUrl(url.clone()))
            }
        }
        other => Err(KeyLoadError::JwksUrlScheme(other.to_owned())),
    }
}

/// The client JWKS URLs are fetched with.
pub(super) fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        // A redirect could lead to plain HTTP or another host: keys
        // come from exactly the configured URL.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Fetches the JWKS document at `url` and reads its keys; symmetric keys
/// are ignored (a secret published at a URL is no secret).
pub(super) async fn fetch_jwks(
    client: &reqwest::Client,
    url: &str,
    explicit: &[Algorithm],
) -> Result<Vec<KeyEntry>, FetchErrorKind> {
    let body = fetch_body(client, url).await?;
    parse_jwks(&body, explicit, false).map_err(FetchErrorKind::Document)
}

/// GETs `url`, refusing error statuses and bodies over [`MAX_JWKS_BYTES`].
async fn fetch_body(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, FetchErrorKind> {
    let mut response = client
        .get(url)
        .header(
            reqwest::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .send()
        .await
        .map_err(FetchErrorKind::Request)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchErrorKind::Status(status));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(FetchErrorKind::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchErrorKind::Request)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(FetchErrorKind::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{IssuerConfig, KeySource, OAuthVerifier, TokenError};
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::json;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn rs256_jwks_url() {
        let body = Arc::new(Mutex::new(
            json!({"keys": [jwk(Algorithm::RS256, RSA_PRIVATE, "r1")]}).to_string(),
        ));
        let url = serve_jwks(body).await;
        let v = verifier(vec![issuer(KeySource::JwksUrl(url.clone()), vec![])]);
        assert_eq!(v.jwks_urls(), vec![url]);
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let token = sign(&with_kid(Algorithm::RS256, "r1"), &claims(), &key);
        // No key before the first fetch.
        assert_eq!(v.verify(&token).unwrap_err(), TokenError::UnknownKey);
        v.refresh_now().await.unwrap();
        assert!(v.verify(&token).unwrap().authorization.can_subscribe(BOOK));
    }

    #[tokio::test]
    async fn unknown_kid_triggers_an_early_refresh() {
        let body = Arc::new(Mutex::new(
            json!({"keys": [jwk(Algorithm::RS256, RSA_PRIVATE, "r1")]}).to_string(),
        ));
        let url = serve_jwks(Arc::clone(&body)).await;
        let v = OAuthVerifier::with_min_refresh(
            RESOURCE.into(),
            base(),
            vec![issuer(KeySource::JwksUrl(url), vec![])],
            Duration::from_millis(200),
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        v.start_refresh(Duration::from_secs(3600), shutdown.clone());

        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let old = sign(&with_kid(Algorithm::RS256, "r1"), &claims(), &rsa);
        let ed = EncodingKey::from_ed_pem(ED2_PRIVATE.as_bytes()).unwrap();
        let new = sign(&with_kid(Algorithm::EdDSA, "e2"), &claims(), &ed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while v.verify(&old).is_err() {
            assert!(Instant::now() < deadline, "initial fetch did not happen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The authorization server rotates its key.
        *body.lock() = json!({"keys": [jwk(Algorithm::EdDSA, ED2_PRIVATE, "e2")]}).to_string();
        assert_eq!(v.verify(&new).unwrap_err(), TokenError::UnknownKey);
        while v.verify(&new).is_err() {
            assert!(
                Instant::now() < deadline,
                "unknown kid did not trigger a refresh"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(v.verify(&old).unwrap_err(), TokenError::UnknownKey);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn unknown_kid_refreshes_are_rate_limited() {
        let body = Arc::new(Mutex::new(
            json!({"keys": [jwk(Algorithm::RS256, RSA_PRIVATE, "r1")]}).to_string(),
        ));
        let (url, hits) = serve_jwks_counted(body).await;
        let v = verifier(vec![issuer(KeySource::JwksUrl(url), vec![])]);
        let shutdown = CancellationToken::new();
        v.start_refresh(Duration::from_secs(3600), shutdown.clone());
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let known = sign(&with_kid(Algorithm::RS256, "r1"), &claims(), &rsa);
        let unknown = sign(&with_kid(Algorithm::RS256, "r2"), &claims(), &rsa);
        let deadline = Instant::now() + Duration::from_secs(10);
        while v.verify(&known).is_err() {
            assert!(Instant::now() < deadline, "initial fetch did not happen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..50 {
            assert_eq!(v.verify(&unknown).unwrap_err(), TokenError::UnknownKey);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Within MIN_REFRESH_INTERVAL of the first fetch: no other request.
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn failed_refresh_names_issuer_and_url_and_keeps_keys() {
        let body = Arc::new(Mutex::new(
            json!({"keys": [jwk(Algorithm::RS256, RSA_PRIVATE, "r1")]}).to_string(),
        ));
        let url = serve_jwks(Arc::clone(&body)).await;
        let v = verifier(vec![issuer(KeySource::JwksUrl(url.clone()), vec![])]);
        v.refresh_now().await.unwrap();
        *body.lock() = "not json".into();
        let err = v.refresh_now().await.unwrap_err().to_string();
        assert!(err.contains(ISS) && err.contains(&url), "{err}");
        assert!(!err.contains('\n'));
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        v.verify(&sign(&with_kid(Algorithm::RS256, "r1"), &claims(), &key))
            .unwrap();

        let missing = url.replace("jwks.json", "missing");
        let v = verifier(vec![issuer(KeySource::JwksUrl(missing), vec![])]);
        let err = v.refresh_now().await.unwrap_err().to_string();
        assert!(err.contains("404"), "{err}");
    }

    #[test]
    fn jwks_urls_need_https_except_on_loopback() {
        let check = |u: &str| check_jwks_url(&Url::parse(u).unwrap());
        assert!(check("https://idp.example.com/jwks.json").is_ok());
        assert!(check("http://127.0.0.1:8080/jwks.json").is_ok());
        assert!(check("http://[::1]/jwks.json").is_ok());
        assert!(check("http://localhost/jwks.json").is_ok());
        assert!(check("http://idp.example.com/jwks.json").is_err());
        assert!(check("http://10.0.0.1/jwks.json").is_err());
        assert!(check("ftp://idp.example.com/jwks.json").is_err());
        let err = OAuthVerifier::new(
            "https://hub.example.com/.well-known/mercure".into(),
            Url::parse("https://hub.example.com/.well-known/mercure").unwrap(),
            vec![IssuerConfig {
                issuer: "https://idp.example.com".into(),
                keys: KeySource::JwksUrl("http://idp.example.com/jwks.json".into()),
                algorithms: Vec::new(),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("https"), "{err}");
    }
}
