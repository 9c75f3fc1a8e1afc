//! The write floor: the least work any push server can do per update, so
//! the benchmarks can tell the kernel's cost from a hub's own.
//!
//! One update is one `write` of its frame to each subscriber's socket, in a
//! plain loop, from the publisher's own thread: no queue, no task, no
//! history, no authorization. A socket that does not take a frame whole is
//! closed (a real server would queue; the floor does not). It speaks just
//! enough of the Mercure protocol for `herald bench`:
//!
//! - `GET /.well-known/mercure?topic=T` subscribes to topic `T`;
//! - `POST /.well-known/mercure` with the form fields `topic` and `data`
//!   publishes (any `Authorization` is ignored) and answers 200 with an id,
//!   once every subscriber's socket has been written.
//!
//! Run it pinned to one core: the time to reach the last of N sockets is
//! then N system calls through the kernel's TCP path, which is the cost
//! herald's latency targets measure.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest request head or form body accepted.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Default)]
struct Hub {
    topics: Mutex<HashMap<String, Vec<TcpStream>>>,
    next_id: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:8096".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--addr needs a value"))?;
                addr = v.parse()?;
            }
            _ => anyhow::bail!("usage: write-floor [--addr IP:PORT]"),
        }
    }
    let listener = TcpListener::bind(addr)?;
    let hub = Arc::new(Hub::default());
    eprintln!("write-floor listening on {addr}");
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let _ = stream.set_nodelay(true);
        if let Err(e) = accept(&hub, stream) {
            eprintln!("write-floor: connection dropped: {e}");
        }
    }
    Ok(())
}

/// Reads the first request head on the accepting thread: a subscription
/// joins its topic there, a publisher's connection gets a thread.
fn accept(hub: &Arc<Hub>, mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let head_len = read_head(&mut stream, &mut buf)?;
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    if head.starts_with("GET ") {
        let topic = request_target(&head)
            .and_then(|t| t.split_once('?'))
            .and_then(|(_, q)| form_value(q, "topic"))
            .ok_or_else(|| io::Error::other("no topic"))?;
        stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\n\r\n3\r\n:\n\n\r\n",
        )?;
        stream.set_nonblocking(true)?;
        hub.topics
            .lock()
            .expect("the topic map is never poisoned")
            .entry(topic)
            .or_default()
            .push(stream);
        return Ok(());
    }
    let hub = hub.clone();
    std::thread::spawn(move || {
        if let Err(e) = publisher(&hub, stream, buf) {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                eprintln!("write-floor: publisher dropped: {e}");
            }
        }
    });
    Ok(())
}

/// Serves one keep-alive publisher connection: each `POST` is written to
/// every subscriber of its topic before it is answered.
fn publisher(hub: &Hub, mut stream: TcpStream, mut buf: Vec<u8>) -> io::Result<()> {
    stream.set_read_timeout(None)?;
    loop {
        let head_len = read_head(&mut stream, &mut buf)?;
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        if length > MAX_REQUEST {
            return Err(io::Error::other("body too large"));
        }
        while buf.len() < head_len + length {
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_len..head_len + length]).into_owned();
        buf.drain(..head_len + length);
        let (Some(topic), Some(data)) = (form_value(&body, "topic"), form_value(&body, "data"))
        else {
            stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 17\r\n\r\ntopic, data: both",
            )?;
            continue;
        };
        let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
        let event = format!("id:{id}\ndata:{data}\n\n");
        let frame = format!("{:x}\r\n{event}\r\n", event.len());
        publish(hub, &topic, frame.as_bytes());
        let id = id.to_string();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{id}",
            id.len()
        )?;
    }
}

/// One `write` per subscriber; a socket that does not take the whole
/// frame is dropped.
fn publish(hub: &Hub, topic: &str, frame: &[u8]) {
    let mut topics = hub.topics.lock().expect("the topic map is never poisoned");
    let Some(subs) = topics.get_mut(topic) else {
        return;
    };
    subs.retain(|mut s| matches!(s.write(frame), Ok(n) if n == frame.len()));
}

/// Reads until `buf` holds a whole request head; returns its length.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(end + 4);
        }
        if buf.len() > MAX_REQUEST {
            return Err(io::Error::other("request head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn request_target(head: &str) -> Option<&str> {
    head.lines().next()?.split(' ').nth(1)
}

/// The first value of `key` in a form-encoded string, decoded.
fn form_value(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
