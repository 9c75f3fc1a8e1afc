//! Pure protocol code for herald: no I/O, no async.
//!
//! # Layout
//!
//! - [`sse`]: encoding updates into `text/event-stream` frames exactly as the
//!   WHATWG HTML standard parses them, and a streaming parser for clients
//!   (`herald tail`, tests, the load generator).
//! - [`template`]: RFC 6570 URI templates compiled into linear-time matchers.
//! - [`selector`]: Mercure draft-07 topic selectors (`*`, exact, template).
//! - [`update`]: the update a publisher sends and the checks it must pass.

pub mod form;
pub mod selector;
pub mod sse;
pub mod template;
pub mod update;

pub use selector::{Selector, SelectorError};
pub use update::{Update, UpdateError};
