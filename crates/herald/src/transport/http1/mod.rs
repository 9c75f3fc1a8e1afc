//! The HTTP/1.1 fast path of event streams: the server reads a
//! connection's first request head itself ([`head`]); a subscription is
//! answered on the socket ([`direct`]), then parked once its history is
//! sent ([`parked`]), its frames written as chunks ([`chunk`]). Anything
//! else goes to hyper with the bytes already read ([`rewind`]). A
//! WebSocket opened on a fresh connection is served here too
//! ([`socket`]), and parked the same way while it waits.

pub mod chunk;
pub mod direct;
pub mod head;
pub mod parked;
pub mod rewind;
pub mod socket;
