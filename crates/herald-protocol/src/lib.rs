//! Pure protocol code for herald: no I/O, no async.
//!
//! # Layout
//!
//! - [`sse`]: encoding updates into `text/event-stream` frames exactly as the
//!   WHATWG HTML standard parses them, and a streaming parser for clients
//!   (`herald tail`, tests, the load generator).
//! - [`template`]: RFC 6570 URI templates compiled into linear-time matchers.
//! - [`selector`]: Mercure draft-07 topic selectors (`*`, exact, template).
//! - [`matcher`]: Mercure draft-08 topic matchers (`*`, `Exact`, `URLPattern`),
//!   the subscribe query's matcher parameters and subscription event topics.
//! - [`authz`]: Mercure draft-08 `authorization_details` (RFC 9396), parsed and
//!   validated into what a token lets its holder publish and subscribe to.
//! - [`update`]: the update a publisher sends and the checks it must pass.

pub mod authz;
pub mod form;
pub mod matcher;
pub mod selector;
pub mod sse;
pub mod template;
pub mod update;

pub use authz::{Authorization, AuthzError};
pub use matcher::{MatchType, Matcher, MatcherError};
pub use selector::{Selector, SelectorError};
pub use update::{Update, UpdateError};
