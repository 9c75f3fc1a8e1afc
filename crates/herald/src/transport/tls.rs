//! TLS for the listener (rustls): ALPN offers `h2` and `http/1.1` (and
//! `h3` on QUIC, with the `http3` feature), and the
//! certificate is read again whenever its files change or the process
//! gets `SIGHUP`, without a restart and without touching open
//! connections (a new certificate applies to new handshakes).
//!
//! A certificate that does not load (a half-written file, a key that does
//! not match) is logged and the one in use is kept, so a renewal that goes
//! wrong never takes the hub down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Where the certificate chain and its private key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the certificate {cert} and the key {key} do not go together: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Loads the certificate chain and key of `cfg`, checking they match.
fn load(cfg: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cfg.cert.clone(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| TlsError::Key {
        path: cfg.key.clone(),
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(certified))
}

/// A server config (ring) that serves the certificate `current` holds.
fn server_config(
    current: &Arc<Current>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Hands every handshake the certificate loaded last.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// The listener's TLS: an acceptor, and the certificate it serves, kept
/// up to date by [`Tls::watch`].
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    cfg: TlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate and builds the acceptor.
    ///
    /// # Errors
    /// The files cannot be read or parsed, or the key does not match.
    pub fn new(cfg: TlsConfig) -> Result<Self, TlsError> {
        let current = Arc::new(Current(RwLock::new(load(&cfg)?)));
        let config = server_config(&current, rustls::DEFAULT_VERSIONS, &[b"h2", b"http/1.1"]);
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cfg,
        })
    }

    /// The TLS of HTTP/3 (QUIC): TLS 1.3 only, as QUIC requires, ALPN
    /// `h3`, and the same certificate resolver, so a reload serves QUIC
    /// handshakes too.
    #[cfg(feature = "http3")]
    pub(crate) fn quic_config(&self) -> ServerConfig {
        server_config(&self.current, &[&rustls::version::TLS13], &[b"h3"])
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again; the new certificate serves new handshakes.
    ///
    /// # Errors
    /// It did not load: the one in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.cfg)?;
        *self.current.0.write() = fresh;
        Ok(())
    }

    /// Reloads on `SIGHUP` and whenever the files change, until `stop`.
    pub fn watch(&self, stop: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut seen = stamp(&tls.cfg);
            let mut hangup = hangups();
            let mut tick = tokio::time::interval(RELOAD_CHECK);
            loop {
                let why = tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let now = stamp(&tls.cfg);
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        "the files changed"
                    }
                    () = next_hangup(&mut hangup) => "SIGHUP",
                };
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %tls.cfg.cert.display(), "TLS certificate reloaded ({why})")
                    }
                    Err(e) => tracing::error!(
                        "TLS certificate not reloaded ({why}), keeping the current one: {e}"
                    ),
                }
            }
        });
    }
}

/// What tells a file changed: its modification time and length, for both.
fn stamp(cfg: &TlsConfig) -> [Option<(SystemTime, u64)>; 2] {
    let of = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [of(&cfg.cert), of(&cfg.key)]
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// Resolves at the next `SIGHUP` (never where there is none).
#[cfg(unix)]
async fn next_hangup(h: &mut Hangups) {
    match h {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) {
    std::future::pending().await
}
