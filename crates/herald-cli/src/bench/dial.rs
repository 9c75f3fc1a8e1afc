//! Connecting to the hub: a TCP connection from one of the loopback
//! source addresses, and short descriptions of socket errors. Shared by
//! the subscribers of every transport and the publishers.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Receive buffer of a subscriber that never reads: small, so the hub
/// finds its socket full soon and its own bounded queue has to hold.
const SLOW_RECV_BUFFER: u32 = 4096;

/// Opens a TCP connection to the hub, bound to source address number
/// `source` (cycling), with a small receive buffer when `slow`.
pub(super) async fn tcp_connect(
    addr: SocketAddr,
    sources: &[IpAddr],
    source: usize,
    slow: bool,
) -> Result<TcpStream, String> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_error(&e))?;
    if slow {
        let _ = socket.set_recv_buffer_size(SLOW_RECV_BUFFER);
    }
    if !sources.is_empty() {
        let src = sources[source % sources.len()];
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| format!("bind {src}: {}", io_error(&e)))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| io_error(&e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A short, stable description of a socket error.
pub(super) fn io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::TimedOut | K::WouldBlock => "timed out".into(),
        K::AddrNotAvailable => "address not available (out of ephemeral ports?)".into(),
        K::AddrInUse => "address in use (out of ephemeral ports?)".into(),
        K::BrokenPipe => "broken pipe".into(),
        K::UnexpectedEof => "closed by the hub".into(),
        _ => match e.raw_os_error() {
            Some(24) => "too many open files".into(),
            _ => e.to_string(),
        },
    }
}
