//! Keys, tokens and servers shared by the unit tests of the access-token
//! verifier: test key pairs (generated once with `openssl genpkey`), claims
//! that a test issuer would issue, and a tiny JWKS server.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};
use url::Url;

use super::issuer::IssuerConfig;
use super::keys::KeySource;
use super::verify::OAuthVerifier;

pub(super) const ISS: &str = "https://auth.example.com";
pub(super) const RESOURCE: &str = "https://hub.example.com/.well-known/mercure";
pub(super) const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
pub(super) const DETAIL: &str = "https://mercure.rocks/authorization-detail";
pub(super) const BOOK: &str = "https://example.com/books/1";

pub(super) const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
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
pub(super) const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnRl4HaomjvchY/L0MAuM
d5URB5XxGEubB6WeaMs75sP3qc68yE7FNluMOhYC+yW+tTqMSgUr5c+RxCm/bhEg
ZX0EL3ksHhb2aVPc4zoEofTf6RehkjXKeQzI4e9FSYRDg7BUGsSN2Fq8ZLSz4HQY
zpSj+zHaPvRGUxcvYU5CLudi3WX+JHWXFDaNYz3nYLplDVXrrkVIwJsGRB5Fnfmz
03BX2v5eTuQUuEw7HgI/rYbNt5i4FU0MNnkdkc0MMXwil7ip3QmWvi6aZMVuFyjz
DQ3/KKN9gCyPEea/4auSYOzA2GX+jbobVc7WoSQc0TDrMP8jepQs1p8eqK/iam9v
bQIDAQAB
-----END PUBLIC KEY-----
";
pub(super) const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsZ2iC5MRzqpY8kXb
KsdnyiRhRxP16hBoYAmWm6eiKL6hRANCAAQGQ1yQpKoHJLIFQB28FyFxUJtbtomQ
1yWtK5jLqqfW9G4WsO1E7YPMxRHNfturPRqiKQmw54MJK/AaRAybQ1ej
-----END PRIVATE KEY-----
";
pub(super) const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEBkNckKSqBySyBUAdvBchcVCbW7aJ
kNclrSuYy6qn1vRuFrDtRO2DzMURzX7bqz0aoikJsOeDCSvwGkQMm0NXow==
-----END PUBLIC KEY-----
";
pub(super) const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFVjprOH7oaMsN3Eis+BklwaSkbXlc3akSHK9KsdvM4q
-----END PRIVATE KEY-----
";
pub(super) const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAMQuOyYKl9HBMJunnZCxK4q2TCC71sb32rlohYcp47F0=
-----END PUBLIC KEY-----
";
pub(super) const ED2_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEII3k9LtWCfa5amE9LdfxaYjD71ehY5aB7iqDPbhWmYyM
-----END PRIVATE KEY-----
";

pub(super) fn base() -> Url {
    Url::parse(RESOURCE).unwrap()
}

pub(super) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

pub(super) fn claims() -> Value {
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

pub(super) fn at_header(alg: Algorithm) -> Header {
    let mut h = Header::new(alg);
    h.typ = Some("at+jwt".into());
    h
}

pub(super) fn with_kid(alg: Algorithm, kid: &str) -> Header {
    let mut h = at_header(alg);
    h.kid = Some(kid.into());
    h
}

pub(super) fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

pub(super) fn hs(claims: &Value) -> String {
    sign(
        &at_header(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

pub(super) fn issuer(keys: KeySource, algorithms: Vec<Algorithm>) -> IssuerConfig {
    IssuerConfig {
        issuer: ISS.into(),
        keys,
        algorithms,
    }
}

pub(super) fn verifier(issuers: Vec<IssuerConfig>) -> OAuthVerifier {
    OAuthVerifier::new(RESOURCE.into(), base(), issuers).unwrap()
}

pub(super) fn hs_verifier() -> OAuthVerifier {
    verifier(vec![issuer(KeySource::Secret(SECRET.into()), vec![])])
}

/// A public JWK (with `alg`) for a private PEM key.
pub(super) fn jwk(alg: Algorithm, private_pem: &str, kid: &str) -> Value {
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

pub(super) fn jwks_file(keys: &[Value]) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), json!({ "keys": keys }).to_string()).unwrap();
    file
}

/// Serves the current value of `body` at `/jwks.json` on 127.0.0.1;
/// returns its URL and the count of requests served.
pub(super) async fn serve_jwks_counted(
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

pub(super) async fn serve_jwks(body: Arc<Mutex<String>>) -> String {
    serve_jwks_counted(body).await.0
}

pub(super) fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}
