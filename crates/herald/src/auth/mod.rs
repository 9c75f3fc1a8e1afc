//! Authorization with Mercure JWTs, in both protocol revisions.
//!
//! - A **draft-07** token carries a `mercure` claim: `publish` and
//!   `subscribe` are lists of topic selectors, `payload` is free JSON handed
//!   to subscription events. It is verified with `publisher_jwt` /
//!   `subscriber_jwt`, whose algorithm is fixed by configuration
//!   (`jwt.rs`).
//! - A **draft-08** (Mercure 1.0) token is an OAuth access token, told apart
//!   by its `typ: at+jwt` header, and verified by [`oauth`] against the
//!   trusted issuers; its `authorization_details` say what it grants.
//!
//! Either kind of token works with either kind of request: what a token
//! grants is a [`Grants`] (`grants.rs`), and the rest of the hub asks it
//! questions.
//!
//! Tokens come from the `Authorization: Bearer` header, then (draft-07
//! requests only) the `authorization` query parameter, then the draft-08
//! cookie (`__Secure-mercure_access_token`), then the draft-07 cookie
//! (`mercureAuthorization`) (`extract.rs`). A header always wins over a
//! cookie. Keys never come from the token, so `none` and
//! algorithm-confusion tokens are refused. A publish authorized by a cookie
//! must also come from an allowed origin (`origin.rs`).
//!
//! What every part shares: the [`Role`] a token is checked for, where it
//! was found ([`TokenSource`]), and why a request was refused
//! ([`AuthError`]), is in `error.rs`.

pub mod callback;
mod error;
mod extract;
mod grants;
mod jwt;
pub mod oauth;
mod origin;

pub use error::{AuthError, Role, TokenSource};
pub(crate) use extract::extract_token;
pub use grants::{Allowed, ClaimGrants, Grants};
pub use jwt::{
    encoding_key, parse_algorithm, sign, Claims, KeyConfig, KeyError, MercureClaim, Verifier,
};
pub(crate) use origin::check_publish_origin;
