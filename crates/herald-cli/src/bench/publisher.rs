//! One publisher: one keep-alive HTTP/1.1 connection, sending `POST`s one
//! after another on a fixed schedule (or flat out).
//!
//! Paced publishers each run on an OS thread of their own:
//! `std::thread::sleep` wakes within tens of microseconds of the scheduled
//! time, where the async timer's millisecond granularity would add up to
//! a millisecond to every measured latency. Flat-out publishers never wait
//! for a time, so all of them share one thread and its event loop: one
//! wakeup then serves every answer that arrived together, where a thread
//! per publisher costs a wakeup per answer, paid on the hub's core too on
//! loopback (the hub's write wakes the reader).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use hdrhistogram::Histogram;

use super::dial::io_error;
use super::http::{parse_head, BatchTemplate, Framing, PublishTemplate, Target};
use super::payload;
use super::stats::{new_histogram, record, Shared};

/// One place publications go, with its requests.
#[derive(Debug)]
pub(super) struct Destination {
    pub target: Target,
    /// The publication request of each topic.
    pub templates: Vec<PublishTemplate>,
    /// With `batch > 1`: the batch request (herald's JSON array).
    pub batch_template: Option<BatchTemplate>,
}

/// What every publisher shares.
#[derive(Debug)]
pub(super) struct Config {
    /// Where publications go: publisher k publishes to destination k
    /// modulo their number.
    pub targets: Vec<Destination>,
    /// Updates per request.
    pub batch: usize,
    pub payload_size: usize,
    /// Updates per second, all publishers together; 0: as fast as possible.
    pub rate: f64,
    pub publishers: usize,
    pub epoch: Instant,
    /// First send (ns since the epoch).
    pub start_ns: u64,
    /// Start of the measured window; sends before it are warm-up.
    pub measure_from_ns: u64,
    /// Nothing is scheduled at or after this.
    pub end_ns: u64,
    pub shared: Arc<Shared>,
}

/// What one publisher did.
#[derive(Debug)]
pub(super) struct Report {
    pub sent: u64,
    pub acked: u64,
    /// Acknowledgements received inside the measured window.
    pub acked_in_window: u64,
    /// Scheduled updates never sent: the window ended first (the publisher
    /// was behind its schedule).
    pub unsent: u64,
    pub errors: BTreeMap<String, u64>,
    /// Sequence numbers of the acknowledged updates.
    pub acked_seqs: Vec<u64>,
    /// Time from writing a request to reading its response, in ns.
    pub ack_time: Histogram<u64>,
    /// How far behind its schedule the latest send was, at worst, in ns.
    pub lag_ns: u64,
}

pub(super) async fn run(cfg: &Config, k: usize) -> Report {
    let mut report = Report {
        sent: 0,
        acked: 0,
        acked_in_window: 0,
        unsent: 0,
        errors: BTreeMap::new(),
        acked_seqs: Vec::new(),
        ack_time: new_histogram(),
        lag_ns: 0,
    };
    let mut conn: Option<Conn> = None;
    let mut request = Vec::with_capacity(cfg.payload_size + 512);
    let mut data = Vec::with_capacity(cfg.payload_size);
    let dest = &cfg.targets[k % cfg.targets.len()];
    let topics = dest.templates.len() as u64;
    let now_ns = || u64::try_from(cfg.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    sleep_until(now_ns(), cfg.start_ns);
    for j in 0u64.. {
        let now = now_ns();
        let batch = cfg.batch as u64;
        // Each request carries `batch` updates: requests are scheduled at
        // rate / batch, and every update of a request shares its time.
        let scheduled = if cfg.rate > 0.0 {
            let slot = j as f64 * cfg.publishers as f64 + k as f64;
            cfg.start_ns + (slot * batch as f64 * 1e9 / cfg.rate) as u64
        } else {
            now
        };
        if scheduled >= cfg.end_ns {
            break;
        }
        if now >= cfg.end_ns {
            // Behind schedule when the window closed: what is left is counted,
            // not sent, so the run ends on time.
            let slots = (cfg.end_ns - cfg.start_ns) as f64 * cfg.rate / 1e9 / batch as f64;
            let mine = ((slots - k as f64) / cfg.publishers as f64).ceil().max(0.0) as u64;
            report.unsent = mine.saturating_sub(j) * batch;
            break;
        }
        sleep_until(now, scheduled);
        report.lag_ns = report.lag_ns.max(now.saturating_sub(scheduled));

        let seq = cfg.shared.next_seq.fetch_add(batch, Ordering::Relaxed);
        request.clear();
        match &dest.batch_template {
            Some(bt) => {
                data.clear();
                let size = cfg.payload_size;
                for i in 0..batch {
                    payload::encode(&mut data, scheduled, seq + i, size);
                }
                let items = (0..batch).map(|i| {
                    let at = i as usize * size;
                    (((seq + i) % topics) as usize, &data[at..at + size])
                });
                bt.write(items, &mut request);
            }
            None => {
                data.clear();
                payload::encode(&mut data, scheduled, seq, cfg.payload_size);
                dest.templates[(seq % topics) as usize].write(&data, &mut request);
            }
        }

        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(&dest.target).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    *report.errors.entry(format!("connect: {e}")).or_default() += 1;
                    // The hub is unreachable: do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        report.sent += batch;
        cfg.shared.sent.fetch_add(batch, Ordering::Relaxed);
        let written = Instant::now();
        let exchanged = tokio::time::timeout(IO_TIMEOUT, c.exchange(&request))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        match exchanged {
            Ok((status, keep)) => {
                if !keep {
                    conn = None;
                }
                if (200..300).contains(&status) {
                    record(
                        &mut report.ack_time,
                        u64::try_from(written.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    );
                    report.acked += batch;
                    cfg.shared.acked.fetch_add(batch, Ordering::Relaxed);
                    report.acked_seqs.extend(seq..seq + batch);
                    if (cfg.measure_from_ns..cfg.end_ns).contains(&now_ns()) {
                        report.acked_in_window += batch;
                    }
                } else {
                    *report.errors.entry(format!("HTTP {status}")).or_default() += 1;
                }
            }
            Err(e) => {
                conn = None;
                *report.errors.entry(e).or_default() += 1;
            }
        }
    }
    report
}

/// Longest wait for one exchange with the hub.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Blocks the thread until `at_ns` (paced publishers have a thread each).
fn sleep_until(now_ns: u64, at_ns: u64) {
    if at_ns > now_ns {
        std::thread::sleep(Duration::from_nanos(at_ns - now_ns));
    }
}

/// A keep-alive connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    async fn open(target: &Target) -> Result<Self, String> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target.addr))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| io_error(&e))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            buf: vec![0; 8192],
            start: 0,
            end: 0,
        })
    }

    /// Reads more bytes into the buffer; `false` at end of stream.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self
            .stream
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|e| io_error(&e))?;
        self.end += n;
        Ok(n > 0)
    }

    /// Sends one request and reads its whole response: the status and
    /// whether the connection may be reused.
    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, bool), String> {
        self.stream
            .write_all(request)
            .await
            .map_err(|e| io_error(&e))?;
        let head = loop {
            match parse_head(&self.buf[self.start..self.end]).map_err(|e| e.to_string())? {
                Some((head, n)) => {
                    self.start += n;
                    break head;
                }
                None => {
                    if !self.fill().await? {
                        return Err("closed by the hub".into());
                    }
                }
            }
        };
        let mut framing = head.framing();
        let mut keep = !head.close;
        if matches!(framing, Framing::UntilClose) {
            keep = false;
        }
        loop {
            let (n, done) = framing
                .decode(&self.buf[self.start..self.end], |_| {})
                .map_err(|e| e.to_string())?;
            self.start += n;
            if done {
                break;
            }
            if !self.fill().await? {
                if matches!(framing, Framing::UntilClose) {
                    break;
                }
                return Err("closed by the hub".into());
            }
        }
        Ok((head.status, keep))
    }
}
