//! Counting: latency histograms, which updates each subscriber saw, and the
//! CPU and memory of processes read from `/proc`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in nanoseconds, from 1 µs resolution up to an
/// hour, to three significant digits.
pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records a nanosecond value, clamping what the histogram cannot hold.
pub(super) fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// Number of latency shards; a subscriber records into shard `index % SHARDS`,
/// once per socket read, so the locks are practically never contended.
const SHARDS: usize = 16;

/// Counters shared by every subscriber task.
#[derive(Debug)]
pub(super) struct Shared {
    shards: Vec<Shard>,
    /// Updates scheduled before this (ns since the epoch) are warm-up: their
    /// latency is not recorded.
    pub measure_from: AtomicU64,
    /// End of the measured window (ns since the epoch).
    pub measure_to: AtomicU64,
    /// Next sequence number a publisher takes; anything at or above it was
    /// never sent by this run.
    pub next_seq: AtomicU64,
    /// Publication requests sent and acknowledged, for the progress line.
    pub sent: AtomicU64,
    pub acked: AtomicU64,
}

#[derive(Debug)]
struct Shard {
    latency: Mutex<Histogram<u64>>,
    /// Distinct bench updates received (duplicates excluded).
    delivered: AtomicU64,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    latency: Mutex::new(new_histogram()),
                    delivered: AtomicU64::new(0),
                })
                .collect(),
            measure_from: AtomicU64::new(u64::MAX),
            measure_to: AtomicU64::new(u64::MAX),
            next_seq: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        }
    }

    /// Adds one read's worth of deliveries and latencies of subscriber `index`.
    pub fn add(&self, index: usize, delivered: u64, latencies_ns: &[u64]) {
        let shard = &self.shards[index % SHARDS];
        if delivered > 0 {
            shard.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
        if !latencies_ns.is_empty() {
            let mut h = shard
                .latency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for &ns in latencies_ns {
                record(&mut h, ns);
            }
        }
    }

    /// Distinct deliveries so far, all subscribers together.
    pub fn delivered(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// All latencies recorded, merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            let h = s
                .latency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = all.add(&*h);
        }
        all
    }
}

/// Which updates of its topic one subscriber has seen, by per-topic index.
///
/// A bit set whose leading all-ones words are dropped as they fill: memory
/// follows the spread of losses and reordering, not the length of the run.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Index (in 64-bit words) of `words[0]`; every update below was seen.
    base: u64,
    words: VecDeque<u64>,
    /// Distinct updates seen.
    pub unique: u64,
}

impl Seen {
    /// Marks update `index` seen; `false` when it already was (a duplicate).
    pub fn insert(&mut self, index: u64) -> bool {
        let word = index / 64;
        if word < self.base {
            return false;
        }
        let offset = usize::try_from(word - self.base).expect("index within memory");
        if offset >= self.words.len() {
            self.words.resize(offset + 1, 0);
        }
        let bit = 1u64 << (index % 64);
        if self.words[offset] & bit != 0 {
            return false;
        }
        self.words[offset] |= bit;
        self.unique += 1;
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 1;
        }
        true
    }

    /// How many of the updates in `acked` were seen.
    pub fn seen_of(&self, acked: &BitSet) -> u64 {
        let mut n = acked.count_below_word(self.base);
        for (i, w) in self.words.iter().enumerate() {
            n += u64::from((w & acked.word(self.base + i as u64)).count_ones());
        }
        n
    }
}

/// A plain bit set with prefix counts, for the acknowledged updates of a topic.
#[derive(Debug, Default)]
pub(super) struct BitSet {
    words: Vec<u64>,
    /// `prefix[i]` = bits set in `words[..i]`.
    prefix: Vec<u64>,
}

impl BitSet {
    pub fn from_indices(indices: impl IntoIterator<Item = u64>) -> Self {
        let mut words: Vec<u64> = Vec::new();
        for i in indices {
            let w = usize::try_from(i / 64).expect("index within memory");
            if w >= words.len() {
                words.resize(w + 1, 0);
            }
            words[w] |= 1 << (i % 64);
        }
        let mut prefix = Vec::with_capacity(words.len() + 1);
        let mut total = 0;
        prefix.push(0);
        for w in &words {
            total += u64::from(w.count_ones());
            prefix.push(total);
        }
        Self { words, prefix }
    }

    pub fn len(&self) -> u64 {
        self.prefix.last().copied().unwrap_or(0)
    }

    fn word(&self, i: u64) -> u64 {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.words.get(i))
            .copied()
            .unwrap_or(0)
    }

    fn count_below_word(&self, w: u64) -> u64 {
        let i = usize::try_from(w)
            .unwrap_or(usize::MAX)
            .min(self.words.len());
        self.prefix.get(i).copied().unwrap_or(0)
    }
}

/// Percentiles of a histogram of nanoseconds, in milliseconds; `None` when
/// nothing was recorded.
#[derive(Debug, Clone, Serialize, Default)]
pub(super) struct Percentiles {
    pub samples: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |ns: u64| Some(round3(ns as f64 / 1e6));
        Self {
            samples: h.len(),
            mean: Some(round3(h.mean() / 1e6)),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// `n` per second over `secs`; 0 over an empty window.
pub(super) fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// `n` per second over `d`.
pub(super) fn rate_of(n: usize, d: Duration) -> f64 {
    rate(n, d.as_secs_f64())
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(super) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which the kernel
/// fixes at 100 per second for user space on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process whose CPU and memory are read from `/proc`, or several read
/// as one (a hub made of several processes): their figures are summed, and
/// are unknown as soon as one of them is gone.
#[derive(Debug, Clone)]
pub(super) struct Proc {
    dirs: Vec<String>,
}

impl Proc {
    pub fn pid(pid: u32) -> Self {
        Self::pids(&[pid])
    }

    pub fn pids(pids: &[u32]) -> Self {
        Self {
            dirs: pids.iter().map(|p| format!("/proc/{p}")).collect(),
        }
    }

    pub fn current() -> Self {
        Self {
            dirs: vec!["/proc/self".into()],
        }
    }

    pub fn exists(&self) -> bool {
        self.dirs
            .iter()
            .all(|d| std::path::Path::new(d).join("stat").exists())
    }

    /// Sums `read` over the processes; `None` if any cannot be read.
    fn sum(&self, read: impl Fn(&str) -> Option<u64>) -> Option<u64> {
        self.dirs.iter().map(|d| read(d)).sum()
    }

    /// User plus system CPU time of all its threads, in ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        self.sum(|dir| {
            let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
            // The command name (field 2) may hold spaces and parentheses: the
            // fields that follow start after its last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut fields = rest.split_whitespace();
            // `rest` starts at field 3 (state); utime and stime are 14 and 15.
            let utime: u64 = fields.nth(11)?.parse().ok()?;
            let stime: u64 = fields.next()?.parse().ok()?;
            Some(utime + stime)
        })
    }

    /// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS` or `VmHWM`, in KiB.
    fn status_kib(&self, key: &str) -> Option<u64> {
        self.sum(|dir| {
            let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
            status.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.strip_prefix(':')?;
                v.trim().trim_end_matches("kB").trim().parse().ok()
            })
        })
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS")
    }

    /// Peak resident memory since the process started, in KiB (of several
    /// processes: the sum of their peaks, which may not have coincided).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM")
    }
}

/// Ticks of one core, from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct CoreTicks {
    busy: u64,
    /// Hard and soft interrupts (on loopback, much of the TCP work).
    interrupts: u64,
    total: u64,
}

fn core_ticks() -> Vec<CoreTicks> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let field = |i: usize| v.get(i).copied().unwrap_or(0);
            // Fields: user nice system idle iowait irq softirq steal.
            let idle = field(3) + field(4);
            CoreTicks {
                busy: total - idle.min(total),
                interrupts: field(5) + field(6),
                total,
            }
        })
        .collect()
}

/// CPU time of the hub (when known), of this process and of every core of
/// the machine at one instant.
#[derive(Debug, Clone)]
pub(super) struct CpuSample {
    at: Instant,
    hub: Option<u64>,
    own: Option<u64>,
    cores: Vec<CoreTicks>,
}

/// CPU use between two samples.
#[derive(Debug, Clone, Default)]
pub(super) struct CpuUse {
    /// The hub process, in % of one core.
    pub hub: Option<f64>,
    /// This process, in % of one core.
    pub own: Option<f64>,
    /// How busy each core of the machine was (any process, interrupts
    /// included), in %.
    pub cores: Vec<f64>,
    /// Interrupt time of all cores together, in % of one core.
    pub interrupts: Option<f64>,
}

/// Windows shorter than this give no percentage: the kernel counts CPU time
/// in 10 ms ticks.
const MIN_WINDOW: f64 = 0.25;

impl CpuSample {
    pub fn take(hub: Option<&Proc>) -> Self {
        Self {
            at: Instant::now(),
            hub: hub.and_then(Proc::cpu_ticks),
            own: Proc::current().cpu_ticks(),
            cores: core_ticks(),
        }
    }

    /// CPU use from `earlier` to this sample.
    pub fn since(&self, earlier: &Self) -> CpuUse {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        if secs < MIN_WINDOW {
            return CpuUse::default();
        }
        let pct = |a: Option<u64>, b: Option<u64>| {
            let (a, b) = (a?, b?);
            Some(round1(
                b.saturating_sub(a) as f64 / TICKS_PER_SECOND / secs * 100.0,
            ))
        };
        let same = earlier.cores.len() == self.cores.len() && !self.cores.is_empty();
        let pairs = || earlier.cores.iter().zip(&self.cores);
        let cores = if same {
            pairs()
                .map(|(a, b)| {
                    let total = b.total.saturating_sub(a.total);
                    let busy = b.busy.saturating_sub(a.busy);
                    if total == 0 {
                        0.0
                    } else {
                        round1(busy as f64 * 100.0 / total as f64)
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let interrupts = same.then(|| {
            pairs()
                .map(|(a, b)| b.interrupts.saturating_sub(a.interrupts))
                .sum()
        });
        CpuUse {
            hub: pct(earlier.hub, self.hub),
            own: pct(earlier.own, self.own),
            cores,
            interrupts: pct(Some(0), interrupts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seen_counts_duplicates_and_compacts() {
        let mut s = Seen::default();
        for i in 0..1000 {
            assert!(s.insert(i));
        }
        assert!(!s.insert(5));
        assert!(!s.insert(999));
        assert_eq!(s.unique, 1000);
        // 15 full words were dropped; the partial 16th remains.
        assert_eq!(s.base, 15);
        assert_eq!(s.words.len(), 1);
        assert!(s.insert(2000));
        assert!(!s.insert(2000));
    }

    #[test]
    fn losses_against_acknowledged() {
        let mut s = Seen::default();
        // Saw 0..200 except 70 and 150, plus 300 (not acknowledged).
        for i in (0..200).filter(|i| *i != 70 && *i != 150) {
            s.insert(i);
        }
        s.insert(300);
        let acked = BitSet::from_indices(0..200);
        assert_eq!(acked.len(), 200);
        assert_eq!(s.seen_of(&acked), 198);
        let acked = BitSet::from_indices((0..250).filter(|i| i % 2 == 0));
        assert_eq!(s.seen_of(&acked), 98);
        assert_eq!(s.seen_of(&BitSet::default()), 0);
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            record(&mut h, i * 1_000_000);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.samples, 1000);
        assert!((p.p50.unwrap() - 500.0).abs() < 1.0);
        assert!((p.max.unwrap() - 1000.0).abs() < 1.0);
        assert!(Percentiles::of(&new_histogram()).p50.is_none());
    }

    #[test]
    fn reads_own_process() {
        let me = Proc::current();
        assert!(me.exists());
        assert!(me.cpu_ticks().is_some());
        assert!(me.rss_kib().unwrap() > 0);
        assert!(me.peak_rss_kib().unwrap() >= me.rss_kib().unwrap() / 2);
        let a = CpuSample::take(Some(&me));
        let mut x = 0u64;
        while a.at.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let used = CpuSample::take(Some(&me)).since(&a);
        assert!(used.own.unwrap() > 10.0, "{used:?} {x}");
        assert!(used.hub.is_some());
        assert!(!used.cores.is_empty());
    }

    #[test]
    fn sums_several_processes() {
        let me = std::process::id();
        let one = Proc::pid(me).rss_kib().unwrap();
        let two = Proc::pids(&[me, me]).rss_kib().unwrap();
        // Allocation between the reads moves RSS a little.
        assert!(two.abs_diff(2 * one) < one / 2, "{one} {two}");
        assert!(Proc::pids(&[me, me]).cpu_ticks().is_some());
        let gone = Proc::pids(&[me, u32::MAX]);
        assert!(!gone.exists());
        assert!(gone.rss_kib().is_none() && gone.cpu_ticks().is_none());
    }
}
