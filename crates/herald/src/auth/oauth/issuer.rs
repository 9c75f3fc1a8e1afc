//! One trusted authorization server: its configuration and its loaded
//! state.
//!
//! An [`IssuerConfig`] names the issuer (the exact `iss` of its tokens), its
//! [`KeySource`] and its allowed algorithms. Loading it reads what can be
//! read at startup (a secret, a PEM key, a JWKS file) so that a bad key
//! stops the hub before it serves, and prepares the checks its tokens go
//! through (`exp`, `nbf`, `aud`, `iss`). Keys from a JWKS URL start empty
//! and are filled by the refresh task (`verify.rs`), which fetches them
//! (`jwks.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};
use parking_lot::RwLock;
use url::Url;

use super::jwk::parse_jwks;
use super::jwks::{check_jwks_url, UrlState};
use super::keys::{pem_key, secret_key, KeyEntry, KeyLoadError, KeySource};

/// One trusted authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// Exact value the token's `iss` must have.
    pub issuer: String,
    pub keys: KeySource,
    /// Accepted `alg` values for this issuer. Empty = a default derived from
    /// the key kind: `Secret` → `HS256`; `Pem` → the single algorithm of the
    /// key type (RSA → `RS256`, P-256 → `ES256`, P-384 → `ES384`, Ed25519 →
    /// `EdDSA`); JWKS → each key's own `alg` if present, else by its
    /// `kty`/`crv` as for PEM.
    pub algorithms: Vec<Algorithm>,
}

/// Why the trusted issuers cannot be set up. Each message is one line and
/// names the issuer it is about.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("the resource identifier is empty")]
    EmptyResource,
    #[error("an issuer identifier is empty")]
    EmptyIssuer,
    #[error("issuer {issuer:?}: configured twice")]
    Duplicate { issuer: String },
    /// The issuer's keys cannot be loaded.
    #[error("issuer {issuer:?}: {error}")]
    Keys { issuer: String, error: KeyLoadError },
    #[error("cannot build the JWKS HTTP client: {0}")]
    HttpClient(reqwest::Error),
}

/// Where an issuer's keys came from, once loaded.
#[derive(Debug)]
pub(super) enum Source {
    Secret,
    Pem,
    /// The path is only shown by `Debug`.
    JwksFile(#[allow(dead_code)] PathBuf),
    JwksUrl(UrlState),
}

impl Source {
    pub(super) fn is_jwks(&self) -> bool {
        matches!(self, Self::JwksFile(_) | Self::JwksUrl(_))
    }
}

/// A loaded issuer.
#[derive(Debug)]
pub(super) struct Issuer {
    pub(super) name: String,
    pub(super) source: Source,
    /// The configured allow-list (empty: per-key defaults).
    pub(super) explicit: Vec<Algorithm>,
    /// Swapped whole by a JWKS refresh; readers clone the `Arc`.
    pub(super) keys: RwLock<Arc<Vec<KeyEntry>>>,
    /// `exp`, `nbf`, `aud` and `iss` checks; `algorithms` is set per token.
    pub(super) validation: Validation,
}

impl Issuer {
    /// Loads `config`'s keys (all but those of a JWKS URL) for tokens whose
    /// `aud` must name `resource`.
    pub(super) fn load(config: IssuerConfig, resource: &str) -> Result<Self, IssuerError> {
        let IssuerConfig {
            issuer: name,
            keys,
            algorithms: explicit,
        } = config;
        match load_keys(keys, &explicit) {
            Ok((source, keys)) => Ok(Self {
                validation: validation_for(&name, resource),
                name,
                source,
                explicit,
                keys: RwLock::new(Arc::new(keys)),
            }),
            Err(error) => Err(IssuerError::Keys {
                issuer: name,
                error,
            }),
        }
    }
}

fn load_keys(
    keys: KeySource,
    explicit: &[Algorithm],
) -> Result<(Source, Vec<KeyEntry>), KeyLoadError> {
    Ok(match keys {
        KeySource::Secret(secret) => (Source::Secret, vec![secret_key(&secret, explicit)?]),
        KeySource::Pem(pem) => (Source::Pem, vec![pem_key(&pem, explicit)?]),
        KeySource::JwksFile(path) => {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) => return Err(KeyLoadError::ReadJwksFile { path, error }),
            };
            match parse_jwks(&bytes, explicit, true) {
                Ok(keys) => (Source::JwksFile(path), keys),
                Err(error) => return Err(KeyLoadError::JwksFile { path, error }),
            }
        }
        KeySource::JwksUrl(url) => {
            let parsed = match Url::parse(&url) {
                Ok(parsed) => parsed,
                Err(error) => return Err(KeyLoadError::InvalidJwksUrl { url, error }),
            };
            check_jwks_url(&parsed)?;
            (Source::JwksUrl(UrlState::new(url)), Vec::new())
        }
    })
}

fn validation_for(issuer: &str, resource: &str) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "aud", "iss"]);
    v.leeway = 0;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_audience(&[resource]);
    v.set_issuer(&[issuer]);
    v
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{OAuthVerifier, TokenError};
    use super::*;

    #[test]
    fn configuration_errors_name_the_issuer() {
        let new = |keys, algorithms| {
            OAuthVerifier::new(RESOURCE.into(), base(), vec![issuer(keys, algorithms)])
        };
        for (keys, algorithms) in [
            (KeySource::Pem(EC_PRIVATE.into()), vec![]),
            (KeySource::Pem("garbage".into()), vec![]),
            (KeySource::Pem(RSA_PUBLIC.into()), vec![Algorithm::HS256]),
            (KeySource::Secret(SECRET.into()), vec![Algorithm::RS256]),
            (KeySource::Secret(String::new()), vec![]),
            (KeySource::JwksFile("/nonexistent/jwks.json".into()), vec![]),
            (KeySource::JwksUrl("not a url".into()), vec![]),
        ] {
            let err = new(keys, algorithms).unwrap_err().to_string();
            assert!(err.contains(ISS) && !err.contains('\n'), "{err}");
        }
        let empty = jwks_file(&[]);
        let err = new(KeySource::JwksFile(empty.path().to_owned()), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no usable"), "{err}");
        let twice = vec![
            issuer(KeySource::Secret(SECRET.into()), vec![]),
            issuer(KeySource::Secret(SECRET.into()), vec![]),
        ];
        assert!(OAuthVerifier::new(RESOURCE.into(), base(), twice).is_err());
        let v = verifier(vec![]);
        assert!(v.is_empty());
        assert!(!hs_verifier().is_empty());
        assert_eq!(
            v.verify(&hs(&claims())).unwrap_err(),
            TokenError::UntrustedIssuer
        );
    }
}
