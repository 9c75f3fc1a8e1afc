//! How bytes reach a client: the transports that carry the hub's routes
//! and event streams.
//!
//! - [`server`]: accepts connections, sorts them by their first request
//!   head, limits and drains them: [`crate::serve`];
//! - [`http1`]: the HTTP/1.1 fast path of event streams (direct, then
//!   parked);
//! - [`tls`]: rustls with ALPN (`h2`, `http/1.1`) and certificate reload;
//! - `h3` (the `http3` feature): HTTP/3 over QUIC on the TLS listener's
//!   port (UDP), advertised to TCP clients with `Alt-Svc`;
//! - [`h2`]: HTTP/2 (h2c with prior knowledge on a plain listener, `h2`
//!   over TLS) on the h2 crate, its event streams parked too;
//! - everything else (HTTP/1.1 connections that begin with another
//!   request) is served by hyper and the axum router
//!   ([`crate::http::router`]).
//!
//! A transport reaches the core through [`crate::hub::Hub::subscribe`], the
//! [`crate::hub::Feed`] it returns, and, to park streams, the
//! [`crate::hub::Wake`] trait. A new transport is a folder here and a line
//! in [`server`].

mod h2;
#[cfg(feature = "http3")]
mod h3;
pub(crate) mod http1;
pub mod server;
mod shared;
pub mod tls;
