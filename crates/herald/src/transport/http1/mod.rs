//! The HTTP/1.1 fast path of event streams: the server reads a
//! connection's first request head itself ([`head`]); a subscription is
//! answered on the socket ([`direct`]), then parked once its history is
//! sent ([`parked`]), its frames written as chunks ([`chunk`]). Anything
//! else goes to hyper with the bytes already read ([`rewind`]).

pub mod chunk;
pub mod direct;
pub mod head;
pub mod parked;
pub mod rewind;
