//! The HTTP routes of the hub: publishing, event streams, the
//! subscriptions API, metadata, admin endpoints and the dashboard page.
//!
//! [`router`] gives an axum `Router` an embedder mounts in its own app;
//! [`crate::serve`] runs it behind the HTTP/1.1 fast path. Both stream
//! events under one [`policy`].

mod admin;
pub mod conn;
pub mod error;
pub(crate) mod events;
mod metadata;
mod page;
pub mod policy;
pub(crate) mod publish;
mod publish_rules;
mod publish_stream;
pub(crate) mod router;
mod subscriptions_api;
pub(crate) mod websocket;
pub(crate) mod wsframe;

pub use conn::ConnContext;
pub use error::HttpError;
pub use policy::MERCURE_PATH;
pub use publish_rules::LocalPublisher;
pub use router::router;
