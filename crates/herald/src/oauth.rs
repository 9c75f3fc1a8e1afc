//! Verification of Mercure 1.0 (draft-08) access tokens.
//!
//! A Mercure 1.0 access token is an RFC 9068 JWT access token (header `typ:
//! at+jwt`) issued by an OAuth authorization server for the hub, whose
//! `authorization_details` claim (RFC 9396) says what its holder may do.
//! [`OAuthVerifier`] checks such a token and hands back what it grants, as a
//! [`herald_protocol::authz::Authorization`]; draft-07 tokens (the `mercure`
//! claim, see [`crate::auth`]) are told apart by their `typ`
//! ([`is_access_token`]).
//!
//! # What is checked, in order
//!
//! Every check fails closed, and every failure is a [`TokenError`], reported
//! to the client as a 401 `invalid_token`:
//!
//! 1. The token is at most [`MAX_TOKEN_LEN`] bytes, before any other work.
//! 2. The JOSE header's `typ` is `at+jwt` or `application/at+jwt`, ASCII
//!    case-insensitively (RFC 9068 section 4), so that an ID token or some
//!    other JWT signed by the same server is not taken for an access token.
//!    A `crit` header is refused: herald understands no extension.
//! 3. The unverified `iss` claim picks the issuer's configuration (exact
//!    string match); an unknown issuer is refused. No other claim is used
//!    before the signature is checked, and keys never come from the token:
//!    `jwk`, `jku`, `x5u` and `x5c` headers are ignored (RFC 8725 section
//!    3.10).
//! 4. `alg` must be in the issuer's allow-list and fit the key; `none` is
//!    never accepted, and an HMAC algorithm is never tried with a public key,
//!    so algorithm confusion (RFC 8725 section 2.1) fails. With a JWKS, a
//!    `kid` selects the key; without one, every key that accepts the
//!    algorithm is tried, at most [`MAX_KEY_TRIES`]. With a single key (a
//!    secret or a PEM key), `kid` is ignored.
//! 5. The signature, then `exp` (required; no leeway), `nbf` (when present),
//!    and `aud`, which must be the hub's resource identifier or, as an
//!    array, contain it.
//! 6. [`Authorization::from_claims`] reads the authorization details; an
//!    invalid claim invalidates the whole token.
//!
//! # Keys
//!
//! Each trusted issuer has one [`KeySource`]: an HMAC secret, a PEM public
//! key, or a JWKS document from a file or a URL. JWKS URLs are fetched by a
//! background task ([`OAuthVerifier::start_refresh`]) every few minutes and
//! also soon after a token names a `kid` the hub does not know, which is how
//! key rotation shows up; such early fetches are rate-limited per issuer
//! ([`MIN_REFRESH_INTERVAL`]) so that tokens with made-up `kid`s cannot turn
//! the hub into a load generator against the authorization server. A failed
//! fetch keeps the previous keys. [`OAuthVerifier::verify`] itself is
//! synchronous and never waits on the network.
//!
//! Symmetric (`oct`) keys are accepted from a JWKS file but ignored in a
//! JWKS fetched over the network: a secret published at a URL is no secret.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_protocol::authz::{Authorization, AuthzError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Longest token accepted, in bytes. Real access tokens are a few hundred
/// bytes to a few KiB; anything longer is refused before it is decoded.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Most keys tried for one token that names no `kid`: each try is a
/// signature verification, so the cost of a token stays bounded however
/// large the issuer's JWKS is.
pub const MAX_KEY_TRIES: usize = 8;

/// Shortest time between two fetches of one issuer's JWKS URL when fetches
/// are triggered by tokens with an unknown `kid`.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Most keys in one JWKS document.
pub const MAX_JWKS_KEYS: usize = 64;

/// Time allowed for one JWKS fetch, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGS: &[Algorithm] = &[
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

/// Parses `KIND:VALUE` as used by the CLI: `secret:TEXT`, `pem:PATH` (reads
/// the file), `jwks:PATH`, or `jwks:https://...` / `jwks:http://...` (a URL).
///
/// # Errors
/// A one-line message: unknown kind, empty value, unreadable PEM file or
/// invalid URL. The text of a secret is never repeated in it.
pub fn parse_key_source(s: &str) -> Result<KeySource, String> {
    const USAGE: &str = "a key source is secret:TEXT, pem:PATH, jwks:PATH or jwks:URL";
    let Some((kind, value)) = s.split_once(':') else {
        return Err(USAGE.into());
    };
    match kind {
        "secret" if value.is_empty() => Err("secret: the secret is empty".into()),
        "secret" => Ok(KeySource::Secret(value.to_owned())),
        "pem" if value.is_empty() => Err("pem: no file given".into()),
        "pem" => std::fs::read_to_string(value)
            .map(KeySource::Pem)
            .map_err(|e| format!("pem: cannot read {value:?}: {e}")),
        "jwks" if value.is_empty() => Err("jwks: no file or URL given".into()),
        "jwks" => {
            let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
            if lower.starts_with("https://") || lower.starts_with("http://") {
                let url =
                    Url::parse(value).map_err(|e| format!("jwks: invalid URL {value:?}: {e}"))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!("jwks: URL {value:?} has no host"));
                }
                Ok(KeySource::JwksUrl(value.to_owned()))
            } else {
                Ok(KeySource::JwksFile(PathBuf::from(value)))
            }
        }
        _ => Err(USAGE.into()),
    }
}

/// Keys fetched over the network decide who may publish, so they travel
/// over HTTPS; plain HTTP only to a loopback address (a sidecar, tests).
fn check_jwks_url(url: &Url) -> Result<(), String> {
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
                Err(format!(
                    "JWKS URL {url} must use https (plain http only to a loopback address)"
                ))
            }
        }
        other => Err(format!("JWKS URL scheme {other:?} is not http(s)")),
    }
}

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

/// True when the token's JOSE header has `typ` equal (ASCII
/// case-insensitively) to `at+jwt` or `application/at+jwt`: the token is
/// for [`OAuthVerifier`], not for the draft-07 verifier. Never panics, and
/// false on anything that is not a JWS with such a header.
pub fn is_access_token(token: &str) -> bool {
    let Some((header, _)) = token.split_once('.') else {
        return false;
    };
    header.len() <= MAX_TOKEN_LEN
        && parse_header(header).is_some_and(|h| h.typ.as_ref().is_some_and(is_at_jwt))
}

fn is_at_jwt(typ: &Value) -> bool {
    typ.as_str().is_some_and(|t| {
        t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
    })
}

/// The header members read before verification. Derived deserialization
/// refuses duplicate members, like jsonwebtoken's own header parsing.
#[derive(Deserialize)]
struct RawHeader {
    typ: Option<Value>,
    alg: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
}

/// Decodes a header; `None` unless it is a JSON object (a derived
/// `Deserialize` would also take an array).
fn parse_header(b64: &str) -> Option<RawHeader> {
    let json = URL_SAFE_NO_PAD.decode(b64).ok()?;
    if json.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(&json).ok()
}

/// One verification key and the algorithms it is accepted with (never
/// empty).
#[derive(Debug)]
struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// True when jsonwebtoken can build a verifier for `key` with `alg`: the
/// key is of the algorithm's family and, for EC and Ed25519, a valid point
/// of the right curve. RSA keys are only parsed when a signature is checked.
fn key_fits(key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify("AA", b"probe", key, alg).is_ok()
}

/// Allowed algorithms: the explicit list, each of which must be usable,
/// or the default.
fn choose_algorithms(
    explicit: &[Algorithm],
    usable: &[Algorithm],
    default: Algorithm,
    what: &str,
) -> Result<Vec<Algorithm>, String> {
    if explicit.is_empty() {
        return Ok(vec![default]);
    }
    match explicit.iter().find(|a| !usable.contains(a)) {
        Some(bad) => Err(format!("algorithm {bad:?} cannot be used with {what}")),
        None => Ok(explicit.to_vec()),
    }
}

fn secret_key(secret: &str, explicit: &[Algorithm]) -> Result<KeyEntry, String> {
    if secret.is_empty() {
        return Err("the secret is empty".into());
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

fn pem_key(pem: &str, explicit: &[Algorithm]) -> Result<KeyEntry, String> {
    if pem.contains("PRIVATE KEY") {
        return Err("the PEM holds a private key: configure the public key".into());
    }
    let bytes = pem.as_bytes();
    let (key, usable, what): (DecodingKey, Vec<Algorithm>, &str) =
        if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            (key, RSA_ALGS.to_vec(), "an RSA key")
        } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            let usable: Vec<_> = EC_ALGS
                .iter()
                .copied()
                .filter(|a| key_fits(&key, *a))
                .collect();
            if usable.is_empty() {
                return Err("unsupported EC public key (P-256 and P-384 are supported)".into());
            }
            (key, usable, "this EC key")
        } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            if !key_fits(&key, Algorithm::EdDSA) {
                return Err("unsupported EdDSA public key (Ed25519 is supported)".into());
            }
            (key, vec![Algorithm::EdDSA], "an Ed25519 key")
        } else {
            return Err("not a supported PEM public key (RSA, EC P-256/P-384, Ed25519)".into());
        };
    Ok(KeyEntry {
        kid: None,
        algorithms: choose_algorithms(explicit, &usable, usable[0], what)?,
        key,
    })
}

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
fn parse_jwks(
    bytes: &[u8],
    explicit: &[Algorithm],
    allow_oct: bool,
) -> Result<Vec<KeyEntry>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWKS document (no \"keys\" array)")?;
    if keys.len() > MAX_JWKS_KEYS {
        return Err(format!("too many keys (at most {MAX_JWKS_KEYS})"));
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
        return Err("no usable signature key".into());
    }
    Ok(out)
}

/// Fetch state of a JWKS URL.
#[derive(Debug)]
struct UrlState {
    url: String,
    /// A token met an unknown `kid`: fetch when the rate limit allows.
    wanted: AtomicBool,
    /// Start of the last fetch, for the rate limit.
    last_attempt: Mutex<Option<Instant>>,
}

#[derive(Debug)]
enum Source {
    Secret,
    Pem,
    /// The path is only shown by `Debug`.
    JwksFile(#[allow(dead_code)] PathBuf),
    JwksUrl(UrlState),
}

impl Source {
    fn is_jwks(&self) -> bool {
        matches!(self, Self::JwksFile(_) | Self::JwksUrl(_))
    }
}

#[derive(Debug)]
struct Issuer {
    name: String,
    source: Source,
    /// The configured allow-list (empty: per-key defaults).
    explicit: Vec<Algorithm>,
    /// Swapped whole by a JWKS refresh; readers clone the `Arc`.
    keys: RwLock<Arc<Vec<KeyEntry>>>,
    /// `exp`, `nbf`, `aud` and `iss` checks; `algorithms` is set per token.
    validation: Validation,
}

#[derive(Debug)]
struct Inner {
    resource: String,
    base: Url,
    issuers: Vec<Issuer>,
    by_name: HashMap<String, usize>,
    /// Present when some issuer has a JWKS URL.
    client: Option<reqwest::Client>,
    /// Wakes the refresh task when a token meets an unknown `kid`.
    wake: tokio::sync::Notify,
    min_refresh: Duration,
}

/// Verifies Mercure 1.0 access tokens against the configured issuers. Cheap
/// to clone: clones share keys and refresh state.
#[derive(Clone)]
pub struct OAuthVerifier {
    inner: Arc<Inner>,
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
    /// A one-line message naming the issuer: an unusable key or file, an
    /// algorithm that does not fit the key, a repeated issuer, or an empty
    /// resource identifier.
    pub fn new(resource: String, base: Url, issuers: Vec<IssuerConfig>) -> Result<Self, String> {
        Self::with_min_refresh(resource, base, issuers, MIN_REFRESH_INTERVAL)
    }

    fn with_min_refresh(
        resource: String,
        base: Url,
        configs: Vec<IssuerConfig>,
        min_refresh: Duration,
    ) -> Result<Self, String> {
        if resource.is_empty() {
            return Err("the resource identifier is empty".into());
        }
        let mut issuers = Vec::with_capacity(configs.len());
        let mut by_name = HashMap::with_capacity(configs.len());
        for config in configs {
            let name = config.issuer;
            let fail = |e: String| format!("issuer {name:?}: {e}");
            if name.is_empty() {
                return Err("an issuer identifier is empty".into());
            }
            if by_name.insert(name.clone(), issuers.len()).is_some() {
                return Err(fail("configured twice".into()));
            }
            let explicit = config.algorithms;
            let (source, keys) = match config.keys {
                KeySource::Secret(secret) => (
                    Source::Secret,
                    vec![secret_key(&secret, &explicit).map_err(fail)?],
                ),
                KeySource::Pem(pem) => (Source::Pem, vec![pem_key(&pem, &explicit).map_err(fail)?]),
                KeySource::JwksFile(path) => {
                    let bytes = std::fs::read(&path)
                        .map_err(|e| fail(format!("cannot read JWKS file {path:?}: {e}")))?;
                    let keys = parse_jwks(&bytes, &explicit, true)
                        .map_err(|e| fail(format!("JWKS file {path:?}: {e}")))?;
                    (Source::JwksFile(path), keys)
                }
                KeySource::JwksUrl(url) => {
                    let parsed = Url::parse(&url)
                        .map_err(|e| fail(format!("invalid JWKS URL {url:?}: {e}")))?;
                    check_jwks_url(&parsed).map_err(fail)?;
                    let state = UrlState {
                        url,
                        wanted: AtomicBool::new(false),
                        last_attempt: Mutex::new(None),
                    };
                    (Source::JwksUrl(state), Vec::new())
                }
            };
            issuers.push(Issuer {
                validation: validation_for(&name, &resource),
                name,
                source,
                explicit,
                keys: RwLock::new(Arc::new(keys)),
            });
        }
        let client = if issuers
            .iter()
            .any(|i| matches!(i.source, Source::JwksUrl(_)))
        {
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT)
                // A redirect could lead to plain HTTP or another host: keys
                // come from exactly the configured URL.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
            Some(client)
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

    /// Asks the refresh task to fetch `issuer`'s JWKS URL soon.
    fn request_refresh(&self, issuer: &Issuer) {
        if let Source::JwksUrl(state) = &issuer.source {
            if !state.wanted.swap(true, Ordering::AcqRel) {
                self.inner.wake.notify_one();
            }
        }
    }

    /// For issuers with a JWKS URL: fetches now, then every `every` (at
    /// least [`MIN_REFRESH_INTERVAL`]) until `shutdown` is cancelled, and
    /// also soon after [`OAuthVerifier::verify`] meets an unknown `kid` for
    /// that issuer (at most once per [`MIN_REFRESH_INTERVAL`] per issuer).
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
    /// One line naming each issuer and URL whose fetch failed; those
    /// issuers keep their previous keys, the others are updated.
    pub async fn refresh_now(&self) -> Result<(), String> {
        let fetches = self
            .inner
            .issuers
            .iter()
            .filter(|i| matches!(i.source, Source::JwksUrl(_)))
            .map(|i| self.inner.fetch(i));
        let errors: Vec<String> = futures_util::future::join_all(fetches)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
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

impl Inner {
    /// Fetches one issuer's JWKS URL and installs its keys.
    async fn fetch(&self, issuer: &Issuer) -> Result<usize, String> {
        let Source::JwksUrl(state) = &issuer.source else {
            return Ok(0);
        };
        *state.last_attempt.lock() = Some(Instant::now());
        let fail = |e: String| format!("issuer {:?}: JWKS {}: {e}", issuer.name, state.url);
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| fail("no HTTP client".into()))?;
        let body = fetch_body(client, &state.url).await.map_err(fail)?;
        let keys = parse_jwks(&body, &issuer.explicit, false).map_err(fail)?;
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

/// GETs `url`, refusing error statuses and bodies over [`MAX_JWKS_BYTES`].
async fn fetch_body(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url)
        .header(
            reqwest::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
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
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISS: &str = "https://auth.example.com";
    const RESOURCE: &str = "https://hub.example.com/.well-known/mercure";
    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    const DETAIL: &str = "https://mercure.rocks/authorization-detail";
    const BOOK: &str = "https://example.com/books/1";

    // Test key pairs, generated once with `openssl genpkey`.
    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCdGXgdqiaO9yFj
8vQwC4x3lREHlfEYS5sHpZ5oyzvmw/epzrzITsU2W4w6FgL7Jb61OoxKBSvlz5HE
Kb9uESBlfQQveSweFvZpU9zjOgSh9N/pF6GSNcp5DMjh70VJhEODsFQaxI3YWrxk
tLPgdBjOlKP7Mdo+9EZTFy9hTkIu52LdZf4kdZcUNo1jPedgumUNVeuuRUjAmwZE
HkWd+bPTcFfa/l5O5BS4TDseAj+ths23mLgVTQw2eR2RzQwxfCKXuKndCZa+Lppk
xW4XKPMNDf8oo32ALI8R5r/hq5Jg7MDYZf6NuhtVztahJBzRMOsw/yN6lCzWnx6o
r+Jqb29tAgMBAAECggEACFdimxKefv9MsNGk2Qs3716FG7XAqiVTizWmQlKuMMvN
ceD2AZ27F26HdMsX5+1iYZ2E9uYs5UQe7X84+JdktLbNWtbwen2GImQPSapaNh46
KFZ2n/yGrmQ5I1Pwxh1Fd2/Mm2o9zNPOhntYxK1tZsSaK1uDhs2yETXdMGm3FmXh
82adNSDdEr9i8LRVfK2TN2MYVSkW5XBM5KLNUc6ujwr07k8919JgzOmKFTHYciJF
kO4aMqHDAeUJFqbUUVYr4qRKXXkzzHoZKk1hA2TSNjRcDI8+JL57QpdCWxPpf6z2
jHN8mhUkkA6yal80xMprJsIWAsogD0+vwwj8BwVCEQKBgQDUXT03rh4N6XROJgE+
+PAR7h9u6rODpHuQ/eOeDi3Xx5ko/Ox0Ykc7RGaqCKKCzbGZnvR0nZ03tpUFAKVi
ORFVOW8tI7jNoEYcls9W1yHxY7T/GVvnQRJJ5e7x5VnTvtBX/ENgfw6CJFbvyEbh
KUs1LDoF7jagIp1t3jztETCnHQKBgQC9YTNXvgLFIrS7v0kv6vCkrOa5EkG0ccwe
C4/xLWX6Hoab7ntArN4h6it+dBSPD6Lnm2D+f4sShlM48Rgkq6GAobfSMOojNOfp
Kqw5JSZ3t/uH+8M0Lj8JJyXYE5WDlouOHDqroCcEbEkh75s2ndwdVST9/x9NqNx6
WipXeGFokQKBgHn23rzGxD4LMR/c1eRbxk0V7HmgU98sLUd1eS+CRzPhT4Zp1Ed3
Vh+kxi2rbeIfzntC/nSnPO8NboKD/3fs/JZsuPw8wttdzEaJGqVuQvFG6WGFJ/Il
viIw602EAlYJBdEycWPPNP7rbf6ikIqqU6ZDM0PKrxbDKpU6CNXChKXFAoGAB2o0
3mycIyfWt7snnG6weWIjrn9efzgta8e8HQ9P/NkRIC3YOZILKHzIsyzMWUWddUAK
LizEPzdvLr2R2m215xlt3xb3M+WwZtq634nq1akoegyLehGNekhEHQ+3PO26DRhh
27JrlKrAukltZFgN9EAPMLq6eQnxiADbw4z9E2ECgYAf/Nj+3Op9u2ZUWK3wHrsj
Y6HN0kD1CjNEJLtLg4bJ/xo3s4W44Vc85wldxywd1N5wd3VqcF+bn67y5PP0kbeT
5Vl5AKqbvcDI7VHKqmWcYiPAo6xPdlQ63vDG7mFGLTsN1fUi8GPbc3D++MTgwMq7
qyfO5lTTTfXPh21eCsVQUA==
-----END PRIVATE KEY-----
";
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnRl4HaomjvchY/L0MAuM
d5URB5XxGEubB6WeaMs75sP3qc68yE7FNluMOhYC+yW+tTqMSgUr5c+RxCm/bhEg
ZX0EL3ksHhb2aVPc4zoEofTf6RehkjXKeQzI4e9FSYRDg7BUGsSN2Fq8ZLSz4HQY
zpSj+zHaPvRGUxcvYU5CLudi3WX+JHWXFDaNYz3nYLplDVXrrkVIwJsGRB5Fnfmz
03BX2v5eTuQUuEw7HgI/rYbNt5i4FU0MNnkdkc0MMXwil7ip3QmWvi6aZMVuFyjz
DQ3/KKN9gCyPEea/4auSYOzA2GX+jbobVc7WoSQc0TDrMP8jepQs1p8eqK/iam9v
bQIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsZ2iC5MRzqpY8kXb
KsdnyiRhRxP16hBoYAmWm6eiKL6hRANCAAQGQ1yQpKoHJLIFQB28FyFxUJtbtomQ
1yWtK5jLqqfW9G4WsO1E7YPMxRHNfturPRqiKQmw54MJK/AaRAybQ1ej
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBkNckKSqBySyBUAdvBchcVCbW7aJ
kNclrSuYy6qn1vRuFrDtRO2DzMURzX7bqz0aoikJsOeDCSvwGkQMm0NXow==
-----END PUBLIC KEY-----
";
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFVjprOH7oaMsN3Eis+BklwaSkbXlc3akSHK9KsdvM4q
-----END PRIVATE KEY-----
";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAMQuOyYKl9HBMJunnZCxK4q2TCC71sb32rlohYcp47F0=
-----END PUBLIC KEY-----
";
    const ED2_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEII3k9LtWCfa5amE9LdfxaYjD71ehY5aB7iqDPbhWmYyM
-----END PRIVATE KEY-----
";

    fn base() -> Url {
        Url::parse(RESOURCE).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> Value {
        json!({
            "iss": ISS,
            "sub": "alice",
            "aud": RESOURCE,
            "exp": now() + 600,
            "iat": now(),
            "jti": "1",
            "client_id": "app",
            "authorization_details": [{
                "type": DETAIL,
                "actions": ["subscribe"],
                "topics": [{"match": BOOK, "match_type": "exact"}]
            }]
        })
    }

    fn at_header(alg: Algorithm) -> Header {
        let mut h = Header::new(alg);
        h.typ = Some("at+jwt".into());
        h
    }

    fn with_kid(alg: Algorithm, kid: &str) -> Header {
        let mut h = at_header(alg);
        h.kid = Some(kid.into());
        h
    }

    fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
        jsonwebtoken::encode(header, claims, key).unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign(
            &at_header(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
    }

    fn issuer(keys: KeySource, algorithms: Vec<Algorithm>) -> IssuerConfig {
        IssuerConfig {
            issuer: ISS.into(),
            keys,
            algorithms,
        }
    }

    fn verifier(issuers: Vec<IssuerConfig>) -> OAuthVerifier {
        OAuthVerifier::new(RESOURCE.into(), base(), issuers).unwrap()
    }

    fn hs_verifier() -> OAuthVerifier {
        verifier(vec![issuer(KeySource::Secret(SECRET.into()), vec![])])
    }

    /// A public JWK (with `alg`) for a private PEM key.
    fn jwk(alg: Algorithm, private_pem: &str, kid: &str) -> Value {
        let key = match alg.family() {
            jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
            jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        }
        .unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    fn jwks_file(keys: &[Value]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json!({ "keys": keys }).to_string()).unwrap();
        file
    }

    /// Serves the current value of `body` at `/jwks.json` on 127.0.0.1;
    /// returns its URL and the count of requests served.
    async fn serve_jwks_counted(
        body: Arc<Mutex<String>>,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = Arc::clone(&body);
                async move { body.lock().clone() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/jwks.json"), hits)
    }

    async fn serve_jwks(body: Arc<Mutex<String>>) -> String {
        serve_jwks_counted(body).await.0
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

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
        .unwrap_err();
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
        let err = v.refresh_now().await.unwrap_err();
        assert!(err.contains(ISS) && err.contains(&url), "{err}");
        assert!(!err.contains('\n'));
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        v.verify(&sign(&with_kid(Algorithm::RS256, "r1"), &claims(), &key))
            .unwrap();

        let missing = url.replace("jwks.json", "missing");
        let v = verifier(vec![issuer(KeySource::JwksUrl(missing), vec![])]);
        let err = v.refresh_now().await.unwrap_err();
        assert!(err.contains("404"), "{err}");
    }

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
            let err = parse_key_source(bad).unwrap_err();
            assert!(!err.contains('\n') && !err.contains("hunter2"), "{err}");
        }
        assert!(!format!("{:?}", KeySource::Secret("hunter2".into())).contains("hunter2"));
    }

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
            let err = new(keys, algorithms).unwrap_err();
            assert!(err.contains(ISS) && !err.contains('\n'), "{err}");
        }
        let empty = jwks_file(&[]);
        let err = new(KeySource::JwksFile(empty.path().to_owned()), vec![]).unwrap_err();
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

    #[test]
    fn verifier_is_shareable_and_debug_hides_secrets() {
        fn shareable<T: Send + Sync + Clone + fmt::Debug>() {}
        shareable::<OAuthVerifier>();
        let debug = format!("{:?}", hs_verifier());
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains(ISS), "{debug}");
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
        .unwrap_err();
        assert!(err.contains("https"), "{err}");
    }
}
