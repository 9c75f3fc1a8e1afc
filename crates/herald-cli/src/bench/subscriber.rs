//! One subscriber: by default a raw HTTP/1.1 `GET` over its own TCP
//! connection, bound to one of the loopback source addresses, scanning the
//! event stream. With `--http2` it is one stream of a shared HTTP/2
//! connection (see `h2c.rs`), with `--websocket` a WebSocket on the same
//! URL (see `ws.rs`); every transport's updates are counted the same way.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::dial::{io_error, tcp_connect};
use super::h2c;
use super::http::{parse_head, Framing, Target, MAX_HEAD};
use super::layout::Layout;
use super::payload;
use super::sse::Scanner;
use super::stats::{Seen, Shared};
use super::ws;

/// Size of each subscriber's read buffer (and the largest response head).
const READ_BUFFER: usize = 4096;

/// What every subscriber shares.
#[derive(Debug)]
pub(super) struct Config {
    pub target: Target,
    /// The subscription request of each slot (see [`Layout`]); subscriber
    /// `index` sends `requests[index % requests.len()]`.
    pub requests: Vec<Vec<u8>>,
    /// Local addresses to bind to, cycling; empty: let the kernel choose.
    pub sources: Vec<IpAddr>,
    pub connect_timeout: Duration,
    /// Which topics each slot holds, and how updates are keyed.
    pub layout: Layout,
    /// Zero of every timestamp in the run.
    pub epoch: Instant,
    pub shared: Arc<Shared>,
    /// Percentage of subscribers that never read, spread evenly over the
    /// indices: they model stalled clients.
    pub slow: u8,
    /// How subscribers talk to the hub.
    pub transport: Transport,
}

/// How subscribers talk to the hub.
#[derive(Debug)]
pub(super) enum Transport {
    /// One HTTP/1.1 connection each, sending [`Config::requests`].
    Http1,
    /// Streams sharing HTTP/2 connections.
    Http2(h2c::Pool),
    /// A WebSocket each, opened with [`Config::requests`] (upgrade
    /// requests); the `Sec-WebSocket-Accept` each slot's answer must carry.
    WebSocket { accepts: Vec<String> },
}

/// A subscriber once the hub has accepted its subscription.
enum Connection {
    /// The event stream's connection, its framing, and the body bytes
    /// read with the response head.
    Http1(TcpStream, Framing, Vec<u8>),
    Http2(h2::RecvStream),
    /// The socket, and the frame bytes read with the response head.
    WebSocket(TcpStream, Vec<u8>),
}

impl Config {
    /// Whether subscriber `index` is one of the `slow` percent.
    pub fn is_slow(&self, index: usize) -> bool {
        one_in_share(index, self.slow)
    }
}

/// Picks `pct` percent of the indices 0, 1, 2, …, spread evenly.
fn one_in_share(index: usize, pct: u8) -> bool {
    let pct = usize::from(pct);
    (index + 1) * pct / 100 > index * pct / 100
}

/// How connecting went, reported as soon as it is known.
#[derive(Debug)]
pub(super) struct Outcome {
    /// The subscriber's slot (see [`Layout`]).
    pub slot: usize,
    /// A subscriber that never reads: not expected to receive anything.
    pub slow: bool,
    pub took: Duration,
    pub error: Option<String>,
}

/// What one subscriber saw, handed back when the run stops.
#[derive(Debug, Default)]
pub(super) struct Report {
    /// The subscriber's slot (see [`Layout`]).
    pub slot: usize,
    pub connected: bool,
    /// Never read (see [`Config::slow`]).
    pub slow: bool,
    /// Events received, duplicates included.
    pub events: u64,
    /// Events received inside the measured window.
    pub in_window: u64,
    pub duplicates: u64,
    /// Events that did not carry a bench payload of its topics.
    pub foreign: u64,
    /// The updates seen, by their key in the slot (see [`Layout::place`]).
    pub seen: Seen,
    /// Why the stream ended before the run did.
    pub dropped: Option<String>,
}

/// Connects subscriber `index`, reports the outcome, then counts events
/// until `stop` turns true.
pub(super) async fn run(
    cfg: Arc<Config>,
    index: usize,
    permit: OwnedSemaphorePermit,
    outcomes: mpsc::UnboundedSender<Outcome>,
    mut stop: watch::Receiver<bool>,
) -> Report {
    let slot = cfg.layout.slot_of(index);
    let slow = cfg.is_slow(index);
    let mut report = Report {
        slot,
        slow,
        ..Default::default()
    };
    let started = Instant::now();
    let mut buf = vec![0u8; READ_BUFFER].into_boxed_slice();
    let connected = tokio::time::timeout(cfg.connect_timeout, open(&cfg, index, &mut buf)).await;
    drop(permit);
    let connection = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let _ = outcomes.send(Outcome {
                slot,
                slow,
                took: started.elapsed(),
                error: Some(e),
            });
            return report;
        }
        Err(_) => {
            let _ = outcomes.send(Outcome {
                slot,
                slow,
                took: started.elapsed(),
                error: Some("timed out".into()),
            });
            return report;
        }
    };
    report.connected = true;
    let _ = outcomes.send(Outcome {
        slot,
        slow,
        took: started.elapsed(),
        error: None,
    });
    drop(outcomes);
    if slow {
        // Hold the connection (or stream) without reading until the run
        // ends.
        let _ = stop.changed().await;
        drop(connection);
        return report;
    }

    let mut state = Reader {
        cfg: &cfg,
        index,
        slot,
        scanner: Scanner::default(),
        events: Vec::new(),
        latencies: Vec::new(),
        report,
    };
    let ended = match connection {
        Connection::Http1(stream, framing, leftover) => {
            state
                .http1(stream, framing, &leftover, &mut buf, &mut stop)
                .await
        }
        Connection::Http2(body) => state.http2(body, &mut stop).await,
        Connection::WebSocket(stream, leftover) => {
            state
                .websocket(stream, &leftover, &mut buf, &mut stop)
                .await
        }
    };
    if let Err(e) = ended {
        state.report.dropped = Some(e);
    }
    state.report
}

/// One connection of `--churn`: opens subscription `index`, waits for its
/// response head, and closes it. Returns the time to the head.
pub(super) async fn churn_once(
    cfg: &Config,
    index: usize,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(timeout, open(cfg, index, &mut buf)).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".into()),
    }
}

/// Opens subscriber `index` with the run's transport, up to the hub's
/// acceptance of the subscription. `buf` is the read buffer.
async fn open(cfg: &Config, index: usize, buf: &mut [u8]) -> Result<Connection, String> {
    match &cfg.transport {
        Transport::Http1 => {
            let (stream, head, rest) = request(cfg, index, buf).await?;
            if head.status != 200 {
                return Err(format!("HTTP {}", head.status));
            }
            Ok(Connection::Http1(stream, head.framing(), rest))
        }
        Transport::Http2(pool) => pool
            .open(cfg.target.addr, &cfg.sources, index)
            .await
            .map(Connection::Http2),
        Transport::WebSocket { accepts } => {
            let (stream, head, rest) = request(cfg, index, buf).await?;
            if head.status != 101 {
                return Err(format!("HTTP {}", head.status));
            }
            let expected = &accepts[index % accepts.len()];
            if head.websocket_accept.as_deref() != Some(expected.as_str()) {
                return Err("wrong or missing Sec-WebSocket-Accept".into());
            }
            Ok(Connection::WebSocket(stream, rest))
        }
    }
}

/// Opens the connection, sends subscriber `index`'s request and reads the
/// response head. Returns the stream, the head and the bytes read past it.
async fn request(
    cfg: &Config,
    index: usize,
    buf: &mut [u8],
) -> Result<(TcpStream, super::http::Head, Vec<u8>), String> {
    let mut stream = tcp_connect(cfg.target.addr, &cfg.sources, index, cfg.is_slow(index)).await?;
    let request = &cfg.requests[index % cfg.requests.len()];
    stream.write_all(request).await.map_err(|e| io_error(&e))?;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(format!(
                "response head larger than {} bytes",
                buf.len().min(MAX_HEAD)
            ));
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|e| io_error(&e))?;
        if n == 0 {
            return Err("closed by the hub before answering".into());
        }
        filled += n;
        match parse_head(&buf[..filled]) {
            Ok(None) => continue,
            Ok(Some((head, len))) => return Ok((stream, head, buf[len..filled].to_vec())),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Decodes the body and counts what it carries.
struct Reader<'a> {
    cfg: &'a Config,
    index: usize,
    slot: usize,
    scanner: Scanner,
    /// What the events of the current read carried: (scheduled time,
    /// sequence number), `None` for a foreign payload.
    events: Vec<Option<(u64, u64)>>,
    /// Latencies of the current read, flushed to the shared histogram at once.
    latencies: Vec<u64>,
    report: Report,
}

/// Reads `stream` into `buf` until `stop` (`Ok(None)`), the end of the
/// stream (`Ok(Some(0))`) or an error.
async fn read_or_stop(
    stream: &mut TcpStream,
    buf: &mut [u8],
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<usize>, String> {
    tokio::select! {
        biased;
        _ = stop.changed() => Ok(None),
        r = stream.read(buf) => r.map(Some).map_err(|e| io_error(&e)),
    }
}

impl Reader<'_> {
    /// An HTTP/1.1 event stream, until `stop` or its end (the error).
    async fn http1(
        &mut self,
        mut stream: TcpStream,
        mut framing: Framing,
        leftover: &[u8],
        buf: &mut [u8],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        self.body(&mut framing, leftover)?;
        loop {
            match read_or_stop(&mut stream, buf, stop).await? {
                None => return Ok(()),
                Some(0) => return Err("closed by the hub".into()),
                Some(n) => self.body(&mut framing, &buf[..n])?,
            }
        }
    }

    /// An HTTP/2 stream's event stream, until `stop` or its end.
    async fn http2(
        &mut self,
        mut body: h2::RecvStream,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut framing = Framing::UntilClose;
        loop {
            let data = tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                d = body.data() => d,
            };
            match data {
                None => return Err("the hub ended the stream".into()),
                Some(Err(e)) => return Err(h2c::h2_error(&e)),
                Some(Ok(bytes)) => {
                    // Read: the hub may send as much again.
                    let _ = body.flow_control().release_capacity(bytes.len());
                    self.body(&mut framing, &bytes)?;
                }
            }
        }
    }

    /// A WebSocket's updates, answering pings, until `stop`, a close
    /// frame or an error.
    async fn websocket(
        &mut self,
        mut stream: TcpStream,
        leftover: &[u8],
        buf: &mut [u8],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut decoder = ws::Decoder::default();
        let mut pong = Vec::new();
        let mut mask_state = (self.index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut n = leftover.len();
        buf[..n].copy_from_slice(leftover);
        loop {
            let now = self.now();
            let events = &mut self.events;
            let decoded = decoder.feed(&buf[..n], |item| match item {
                ws::Item::Update(data) => events.push(data.and_then(payload::decode)),
                ws::Item::Ping(p) => {
                    // Only the latest ping needs an answer (RFC 6455, 5.5.3).
                    pong.clear();
                    ws::pong(p, ws::mask_key(&mut mask_state), &mut pong);
                }
            });
            self.tally(now);
            decoded?;
            if !pong.is_empty() {
                stream.write_all(&pong).await.map_err(|e| io_error(&e))?;
                pong.clear();
            }
            match read_or_stop(&mut stream, buf, stop).await? {
                None => return Ok(()),
                Some(0) => return Err("closed by the hub".into()),
                Some(read) => n = read,
            }
        }
    }

    /// Nanoseconds since the run's epoch.
    fn now(&self) -> u64 {
        u64::try_from(self.cfg.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Decodes event-stream body bytes and counts the events they carry.
    fn body(&mut self, framing: &mut Framing, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let (scanner, events) = (&mut self.scanner, &mut self.events);
        let (_, done) = framing
            .decode(bytes, |data| {
                scanner.feed(data, |head| events.push(payload::decode(head)));
            })
            .map_err(|e| e.to_string())?;
        self.tally(now);
        if done {
            return Err("the hub ended the stream".into());
        }
        Ok(())
    }

    /// Counts the events decoded from what was read at `now`.
    fn tally(&mut self, now: u64) {
        if self.events.is_empty() {
            return;
        }
        let shared = &*self.cfg.shared;
        let from = shared.measure_from.load(Ordering::Relaxed);
        let to = shared.measure_to.load(Ordering::Relaxed);
        let next_seq = shared.next_seq.load(Ordering::Relaxed);
        let mut fresh = 0;
        for event in self.events.drain(..) {
            self.report.events += 1;
            let Some((scheduled, seq)) = event else {
                self.report.foreign += 1;
                continue;
            };
            let (slot, key) = self.cfg.layout.place(seq);
            if seq >= next_seq || slot != self.slot {
                self.report.foreign += 1;
                continue;
            }
            if !self.report.seen.insert(key) {
                self.report.duplicates += 1;
                continue;
            }
            fresh += 1;
            if (from..=to).contains(&now) {
                self.report.in_window += 1;
            }
            if scheduled >= from {
                self.latencies.push(now.saturating_sub(scheduled));
            }
        }
        shared.add(self.index, fresh, &self.latencies);
        self.latencies.clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slow_subscribers_are_the_given_share_spread_out() {
        let count = |n: usize, pct: u8| (0..n).filter(|&i| super::one_in_share(i, pct)).count();
        assert_eq!(count(10_000, 10), 1_000);
        assert_eq!(count(20, 10), 2);
        assert_eq!(count(100, 0), 0);
        assert_eq!(count(100, 100), 100);
        assert_eq!(count(1000, 33), 330);
    }
}
