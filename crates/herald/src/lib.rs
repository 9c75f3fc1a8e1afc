//! herald: a real-time push hub speaking the Mercure protocol over
//! Server-Sent Events.
//!
//! # Layout
//!
//! - [`hub`]: the [`Hub`] handle: engine, topic index, authorization,
//!   counters, and the native publishing API ([`Hub::publish`]).
//! - [`engine`]: where updates live: [`engine::memory`] (bounded ring) and
//!   [`engine::local`] (durable, on disk).
//! - [`registry`]: the topic index that finds the subscribers of an update.
//! - [`subscriber`]: one connection's selectors, rights and bounded queue.
//! - [`subscriptions`]: subscription events and the table behind the
//!   subscriptions API (when switched on).
//! - [`auth`]: Mercure JWTs from header, query or cookie: draft-07 tokens
//!   and Mercure 1.0 access tokens ([`auth::oauth`]).
//! - [`http`]: the axum routes; [`server`]: listener, limits, shutdown.
//! - [`config`]: the settings of a hub.
//!
//! # The path of one update
//!
//! publisher → validate + authorize → `engine.append` (position + id) →
//! registry: matching subscribers → one shared SSE frame → each
//! subscriber's bounded queue → its stream → socket.

pub mod auth;
pub mod config;
pub mod engine;
pub mod http;
pub mod hub;
pub mod registry;
pub mod server;
pub mod stats;
pub mod subscriber;
pub mod subscriptions;
pub mod telemetry;

pub use config::HubConfig;
pub use herald_protocol as protocol;
pub use hub::Hub;
pub use server::serve;
