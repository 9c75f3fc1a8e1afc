//! Verification of Mercure 1.0 (draft-08) access tokens.
//!
//! A Mercure 1.0 access token is an RFC 9068 JWT access token (header `typ:
//! at+jwt`) issued by an OAuth authorization server for the hub, whose
//! `authorization_details` claim (RFC 9396) says what its holder may do.
//! [`OAuthVerifier`] checks such a token and hands back what it grants, as a
//! [`herald_protocol::authz::Authorization`]; draft-07 tokens (the `mercure`
//! claim, see [`crate::auth`]) are told apart by their `typ`.
//!
//! # What is checked, in order
//!
//! Every check fails closed, and every failure is a [`TokenError`], reported
//! to the client as a 401 `invalid_token`:
//!
//! 1. The token is at most 16 KiB (`MAX_TOKEN_LEN`), before any other work.
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
//!    algorithm is tried, at most 8 (`MAX_KEY_TRIES`). With a single key (a
//!    secret or a PEM key), `kid` is ignored.
//! 5. The signature, then `exp` (required; no leeway), `nbf` (when present),
//!    and `aud`, which must be the hub's resource identifier or, as an
//!    array, contain it.
//! 6. [`Authorization::from_claims`](herald_protocol::authz::Authorization::from_claims)
//!    reads the authorization details; an invalid claim invalidates the
//!    whole token.
//!
//! # Keys
//!
//! Each trusted issuer has one [`KeySource`]: an HMAC secret, a PEM public
//! key, or a JWKS document from a file or a URL. JWKS URLs are fetched by a
//! background task ([`OAuthVerifier::start_refresh`]) every few minutes and
//! also soon after a token names a `kid` the hub does not know, which is how
//! key rotation shows up; such early fetches are rate-limited per issuer
//! (`MIN_REFRESH_INTERVAL`) so that tokens with made-up `kid`s cannot turn
//! the hub into a load generator against the authorization server. A failed
//! fetch keeps the previous keys. [`OAuthVerifier::verify`] itself is
//! synchronous and never waits on the network.
//!
//! Symmetric (`oct`) keys are accepted from a JWKS file but ignored in a
//! JWKS fetched over the network: a secret published at a URL is no secret.
//!
//! # Files
//!
//! From the bottom up; each file uses only those listed before it (and
//! names them directly, never through this module's re-exports):
//!
//! - `header.rs`: the JOSE header read before verification, and telling
//!   access tokens from draft-07 tokens.
//! - `keys.rs`: key sources (`secret:`, `pem:`, `jwks:`), loading a secret
//!   or a PEM key, and the errors of loading keys.
//! - `jwk.rs`: JWKS documents to verification keys.
//! - `jwks.rs`: JWKS URLs and fetching them.
//! - `issuer.rs`: one trusted issuer, configured and loaded.
//! - `verify.rs`: [`OAuthVerifier`], the checks above and the refresh task.
//!
//! # Errors
//!
//! Setting up the issuers fails with an [`IssuerError`]; parsing a
//! `KIND:VALUE` key source with a [`KeySourceError`]; a JWKS refresh with a
//! [`RefreshError`]. Each message is complete on one line, causes included
//! (operators read them as they are, in the CLI's output and in logs), so
//! these errors carry their causes as fields rather than as a
//! [`std::error::Error::source`] chain that would repeat them.

mod header;
mod issuer;
mod jwk;
mod jwks;
mod keys;
#[cfg(test)]
mod testkit;
mod verify;

pub(crate) use header::is_access_token;
pub use issuer::{IssuerConfig, IssuerError};
pub use jwks::{FetchError, FetchErrorKind, RefreshError};
pub use keys::{parse_key_source, JwksError, KeyLoadError, KeySource, KeySourceError};
pub use verify::{AccessToken, OAuthVerifier, TokenError};
