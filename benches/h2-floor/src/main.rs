//! The memory floor of an idle HTTP/2 stream in the h2 crate alone.
//!
//! A server built directly on h2 accepts `CONNS` connections with
//! `PER` streams each, answers every stream with an event-stream head and
//! one comment, and keeps each stream's send half in a plain `Vec` (no
//! task, no body, nothing of hyper or herald). A child process of the
//! same binary is the client. The figure is the server's resident memory
//! growth divided by the streams: what h2 itself holds per stream, plus
//! its per-connection buffers shared out.
//!
//! ```sh
//! cargo run --release -p h2-floor -- 100 100
//! ```

use std::time::Duration;

use bytes::Bytes;

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// The client: `conns` connections of `per` streams each, held open.
async fn client(addr: std::net::SocketAddr, conns: usize, per: usize) {
    let mut held = Vec::new();
    for _ in 0..conns {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut h2, conn) = h2::client::Builder::new()
            .max_concurrent_streams(1000)
            .handshake::<_, Bytes>(tcp)
            .await
            .expect("handshake");
        tokio::spawn(conn);
        for _ in 0..per {
            h2 = h2.ready().await.expect("ready");
            let req = http::Request::get("http://hub/.well-known/mercure")
                .body(())
                .expect("request");
            let (response, _) = h2.send_request(req, true).expect("send");
            held.push(tokio::spawn(async move {
                let body = response.await.expect("response").into_body();
                std::future::pending::<()>().await;
                drop(body);
            }));
        }
        held.push(tokio::spawn(async move {
            std::future::pending::<()>().await;
            drop(h2);
        }));
    }
    std::future::pending::<()>().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (conns, per) = (number(1, 100), number(2, 100));
    if let Some(addr) = args.get(3) {
        return client(addr.parse().expect("address"), conns, per).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .args([conns.to_string(), per.to_string(), addr.to_string()])
        .spawn()
        .expect("the client");
    let before = rss();
    let (opened, mut open) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.expect("accept");
            let opened = opened.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::Builder::new()
                    .max_concurrent_streams(1000)
                    .handshake::<_, Bytes>(tcp)
                    .await
                    .expect("handshake");
                let mut streams = Vec::new();
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    let head = http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(())
                        .expect("head");
                    let mut send = respond.send_response(head, false).expect("respond");
                    send.send_data(Bytes::from_static(b":\n\n"), false)
                        .expect("data");
                    streams.push(send);
                    let _ = opened.send(());
                }
            });
        }
    });
    for _ in 0..conns * per {
        open.recv().await.expect("a stream");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss().saturating_sub(before);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{conns} connections x {per} streams: {} bytes per idle stream (h2 alone, connection buffers shared out)",
        grown / (conns * per)
    );
}
