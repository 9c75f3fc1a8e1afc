//! Where an issuer's keys come from, and loading the single-key sources.
//!
//! An issuer trusts one [`KeySource`]: an HMAC secret, a PEM public key, or
//! a JWKS document from a file or a URL. The CLI writes it as `KIND:VALUE`
//! ([`parse_key_source`]). A secret or a PEM key loads into one
//! [`KeyEntry`] here; JWKS documents are read key by key (`jwk.rs`) and
//! fetched (`jwks.rs`) elsewhere, but what goes wrong reading one
//! ([`JwksError`]) is here, with the other errors of loading keys. Every
//! key carries the algorithms it is accepted with, chosen when it loads:
//! the configured allow-list, each of which must fit the key, or else the
//! single default of its type. An HMAC algorithm never fits a public key,
//! which is what stops algorithm confusion.

use std::fmt;
use std::path::PathBuf;

use jsonwebtoken::{Algorithm, DecodingKey};
use url::Url;

pub(super) const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
pub(super) const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC_ALGS: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];

/// Where an issuer's verification keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An HMAC secret (HS256/HS384/HS512).
    Secret(String),
    /// PEM text of a public key (RSA, EC P-256/P-384, Ed25519).
    Pem(String),
    /// A JWKS document read from a file at startup.
    JwksFile(PathBuf),
    /// A JWKS document fetched over HTTP(S), refreshed periodically.
    JwksUrl(String),
}

/// Like a derived `Debug`, but never shows a secret.
impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => f.debug_tuple("Secret").field(&"[redacted]").finish(),
            Self::Pem(pem) => f.debug_tuple("Pem").field(pem).finish(),
            Self::JwksFile(path) => f.debug_tuple("JwksFile").field(path).finish(),
            Self::JwksUrl(url) => f.debug_tuple("JwksUrl").field(url).finish(),
        }
    }
}

/// Why a `KIND:VALUE` key source does not parse. The message is one line
/// and never repeats the text of a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    /// No `KIND:`, or a kind other than `secret`, `pem` and `jwks`.
    #[error("a key source is secret:TEXT, pem:PATH, jwks:PATH or jwks:URL")]
    Usage,
    #[error("secret: the secret is empty")]
    EmptySecret,
    #[error("pem: no file given")]
    NoPemFile,
    #[error("pem: cannot read {path:?}: {error}")]
    ReadPem { path: String, error: std::io::Error },
    #[error("jwks: no file or URL given")]
    NoJwks,
    #[error("jwks: invalid URL {url:?}: {error}")]
    InvalidUrl { url: String, error: url::ParseError },
    #[error("jwks: URL {url:?} has no host")]
    NoHost { url: String },
}

/// Most keys in one JWKS document.
pub(crate) const MAX_JWKS_KEYS: usize = 64;

/// Why a JWKS document gave no keys (read in `jwk.rs`; here because a
/// [`KeyLoadError`] carries it).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("invalid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("not a JWKS document (no \"keys\" array)")]
    NotJwks,
    #[error("too many keys (at most {})", MAX_JWKS_KEYS)]
    TooManyKeys,
    /// Every key was skipped (see the debug log for why).
    #[error("no usable signature key")]
    NoUsableKey,
}

/// Why an issuer's keys cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    #[error("the secret is empty")]
    EmptySecret,
    #[error("the PEM holds a private key: configure the public key")]
    PrivateKey,
    #[error("unsupported EC public key (P-256 and P-384 are supported)")]
    UnsupportedEcKey,
    #[error("unsupported EdDSA public key (Ed25519 is supported)")]
    UnsupportedEdKey,
    #[error("not a supported PEM public key (RSA, EC P-256/P-384, Ed25519)")]
    NotPublicKey,
    /// A configured algorithm does not fit the key (`key` says which kind
    /// of key, "an RSA key").
    #[error("algorithm {algorithm:?} cannot be used with {key}")]
    AlgorithmMismatch {
        algorithm: Algorithm,
        key: &'static str,
    },
    #[error("cannot read JWKS file {path:?}: {error}")]
    ReadJwksFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("JWKS file {path:?}: {error}")]
    JwksFile { path: PathBuf, error: JwksError },
    #[error("invalid JWKS URL {url:?}: {error}")]
    InvalidJwksUrl { url: String, error: url::ParseError },
    /// Plain HTTP to a host that is not a loopback address.
    #[error("JWKS URL {0} must use https (plain http only to a loopback address)")]
    InsecureJwksUrl(Url),
    #[error("JWKS URL scheme {0:?} is not http(s)")]
    JwksUrlScheme(String),
}

/// Parses `KIND:VALUE` as used by the CLI: `secret:TEXT`, `pem:PATH` (reads
/// the file), `jwks:PATH`, or `jwks:https://...` / `jwks:http://...` (a URL).
///
/// # Errors
/// Unknown kind, empty value, unreadable PEM file or invalid URL.
pub fn parse_key_source(s: &str) -> Result<KeySource, KeySourceError> {
    let Some((kind, value)) = s.split_once(':') else {
        return Err(KeySourceError::Usage);
    };
    match kind {
        "secret" if value.is_empty() => Err(KeySourceError::EmptySecret),
        "secret" => Ok(KeySource::Secret(value.to_owned())),
        "pem" if value.is_empty() => Err(KeySourceError::NoPemFile),
        "pem" => std::fs::read_to_string(value)
            .map(KeySource::Pem)
            .map_err(|error| KeySourceError::ReadPem {
                path: value.to_owned(),
                error,
            }),
        "jwks" if value.is_empty() => Err(KeySourceError::NoJwks),
        "jwks" => {
            let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
            if lower.starts_with("https://") || lower.starts_with("http://") {
                let url = Url::parse(value).map_err(|error| KeySourceError::InvalidUrl {
                    url: value.to_owned(),
                    error,
                })?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(KeySourceError::NoHost {
                        url: value.to_owned(),
                    });
                }
                Ok(KeySource::JwksUrl(value.to_owned()))
            } else {
                Ok(KeySource::JwksFile(PathBuf::from(value)))
            }
        }
        _ => Err(KeySourceError::Usage),
    }
}

/// One verification key and the algorithms it is accepted with (never
/// empty).
#[derive(Debug)]
pub(super) struct KeyEntry {
    pub(super) kid: Option<String>,
    pub(super) key: DecodingKey,
    pub(super) algorithms: Vec<Algorithm>,
}

/// True when jsonwebtoken can build a verifier for `key` with `alg`: the
/// key is of the algorithm's family and, for EC and Ed25519, a valid point
/// of the right curve. RSA keys are only parsed when a signature is checked.
pub(super) fn key_fits(key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify("AA", b"probe", key, alg).is_ok()
}

/// Allowed algorithms: the explicit list, each of which must be usable,
/// or the default.
fn choose_algorithms(
    explicit: &[Algorithm],
    usable: &[Algorithm],
    default: Algorithm,
    what: &'static str,
) -> Result<Vec<Algorithm>, KeyLoadError> {
    if explicit.is_empty() {
        return Ok(vec![default]);
    }
    match explicit.iter().find(|a| !usable.contains(a)) {
        Some(bad) => Err(KeyLoadError::AlgorithmMismatch {
            algorithm: *bad,
            key: what,
        }),
        None => Ok(explicit.to_vec()),
    }
}

/// The key of a `secret:` source.
pub(super) fn secret_key(secret: &str, explicit: &[Algorithm]) -> Result<KeyEntry, KeyLoadError> {
    if secret.is_empty() {
        return Err(KeyLoadError::EmptySecret);
    }
    if secret.len() < 32 {
        tracing::warn!("an HMAC secret shorter than 32 bytes is weak (RFC 7518 section 3.2)");
    }
    Ok(KeyEntry {
        kid: None,
        key: DecodingKey::from_secret(secret.as_bytes()),
        algorithms: choose_algorithms(explicit, HMAC_ALGS, Algorithm::HS256, "an HMAC secret")?,
    })
}

/// The key of a `pem:` source: RSA, EC (P-256, P-384) or Ed25519.
pub(super) fn pem_key(pem: &str, explicit: &[Algorithm]) -> Result<KeyEntry, KeyLoadError> {
    if pem.contains("PRIVATE KEY") {
        return Err(KeyLoadError::PrivateKey);
    }
    let bytes = pem.as_bytes();
    let (key, usable, what): (DecodingKey, Vec<Algorithm>, &'static str) =
        if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            (key, RSA_ALGS.to_vec(), "an RSA key")
        } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            let usable: Vec<_> = EC_ALGS
                .iter()
                .copied()
                .filter(|a| key_fits(&key, *a))
                .collect();
            if usable.is_empty() {
                return Err(KeyLoadError::UnsupportedEcKey);
            }
            (key, usable, "this EC key")
        } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            if !key_fits(&key, Algorithm::EdDSA) {
                return Err(KeyLoadError::UnsupportedEdKey);
            }
            (key, vec![Algorithm::EdDSA], "an Ed25519 key")
        } else {
            return Err(KeyLoadError::NotPublicKey);
        };
    Ok(KeyEntry {
        kid: None,
        algorithms: choose_algorithms(explicit, &usable, usable[0], what)?,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::EC_PUBLIC;
    use super::*;

    #[test]
    fn key_sources() {
        assert_eq!(
            parse_key_source("secret:abc:def").unwrap(),
            KeySource::Secret("abc:def".into())
        );
        let pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(pem.path(), EC_PUBLIC).unwrap();
        assert_eq!(
            parse_key_source(&format!("pem:{}", pem.path().display())).unwrap(),
            KeySource::Pem(EC_PUBLIC.into())
        );
        assert_eq!(
            parse_key_source("jwks:/etc/herald/jwks.json").unwrap(),
            KeySource::JwksFile("/etc/herald/jwks.json".into())
        );
        assert_eq!(
            parse_key_source("jwks:https://auth.example.com/jwks").unwrap(),
            KeySource::JwksUrl("https://auth.example.com/jwks".into())
        );
        assert_eq!(
            parse_key_source("jwks:HTTP://127.0.0.1:8080/jwks").unwrap(),
            KeySource::JwksUrl("HTTP://127.0.0.1:8080/jwks".into())
        );
        for bad in [
            "",
            "hunter2",
            "secret:",
            "pem:",
            "pem:/nonexistent/key.pem",
            "jwks:",
            "jwks:https://",
            "x509:foo",
        ] {
            let err = parse_key_source(bad).unwrap_err().to_string();
            assert!(!err.contains('\n') && !err.contains("hunter2"), "{err}");
        }
        assert!(!format!("{:?}", KeySource::Secret("hunter2".into())).contains("hunter2"));
    }
}
