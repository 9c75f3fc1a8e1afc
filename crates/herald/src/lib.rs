//! herald: a real-time push hub speaking the Mercure protocol over
//! Server-Sent Events.
//!
//! # Layout
//!
//! Layers, each using only those below it:
//!
//! ```text
//! transport/  how bytes reach a client: the server, the HTTP/1.1 fast path
//!             (direct + parked); hyper for the rest
//! http/       the routes (publish, event streams, subscriptions API,
//!             metadata, admin, page) and the stream policy
//! hub/        the core: the Hub handle, topic index, subscriber queues, the
//!             replay→live feed, heartbeats; no socket, no HTTP
//! config, telemetry
//! auth/       tokens of both revisions
//! engine/     the contract, memory and local
//! herald-protocol (its own crate): SSE, selectors, templates, URL patterns
//! ```
//!
//! # The path of one update
//!
//! publisher → validate + authorize → `engine.append` (position + id) →
//! topic index: matching subscribers → one shared SSE frame → each
//! subscriber's bounded queue → its stream → socket.

pub mod auth;
pub mod config;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod telemetry;
pub mod transport;

pub use config::HubConfig;
pub use herald_protocol as protocol;
pub use hub::Hub;
pub use transport::server::{serve, Server};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
