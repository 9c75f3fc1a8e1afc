//! A by-hand throughput check of the `local` engine (no criterion: it
//! measures fsyncs and disk, which criterion's statistics do not help with).
//!
//! ```text
//! cargo run --release -p herald --example local_engine_load [-- OPTIONS]
//!   --dir DIR        where to put the stores (default: the system temp dir);
//!                    use the disk you mean to measure
//!   --seconds N      length of each publish run (default 5)
//!   --replay N       size of the replay store (default 1000000)
//!   --big N          also build an N-update store and time opening it and
//!                    resuming from its middle (e.g. 10000000; slow)
//! ```
//!
//! Ids are spread like random (v4) UUIDs, the worst case for the id index;
//! set `LOAD_SEQUENTIAL_IDS=1` for time-ordered ids (like UUID v7).
//!
//! Reports acknowledged appends/s with `sync` durability at 1, 16 and 64
//! concurrent publishers (one update of 100 bytes of data per append), the
//! replay rate (`read_after` in pages of 1000), the store bytes per update,
//! the time to open a store (which verifies it), and the latency of a resume
//! (`resolve` + the first `read_after`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::engine::local::{Durability, LocalConfig, LocalEngine, STORE_FILE};
use herald::engine::{Engine, Sink, Stored};
use herald_protocol::Update;

#[derive(Debug, Default)]
struct CountingSink(AtomicU64);

impl Sink for CountingSink {
    fn deliver(&self, updates: &[Arc<Stored>]) {
        self.0.fetch_add(updates.len() as u64, Ordering::Relaxed);
    }

    /// The local engine never loses history it has not delivered.
    fn gap(&self, reason: &str) {
        panic!("unexpected gap: {reason}");
    }
}

struct Options {
    dir: PathBuf,
    seconds: u64,
    replay: u64,
    big: Option<u64>,
}

fn options() -> Options {
    let mut o = Options {
        dir: std::env::temp_dir(),
        seconds: 5,
        replay: 1_000_000,
        big: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("missing option value");
        match arg.as_str() {
            "--dir" => o.dir = value().into(),
            "--seconds" => o.seconds = value().parse().expect("--seconds N"),
            "--replay" => o.replay = value().parse().expect("--replay N"),
            "--big" => o.big = Some(value().parse().expect("--big N")),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// An update like a real publisher's: a `urn:uuid` id, one topic, 100
/// bytes of data.
fn update(i: u64) -> Update {
    Update {
        id: id(i),
        topics: vec![format!("https://example.com/books/{}", i % 1000)],
        data: format!("{{\"book\":{i:>10},\"status\":\"{:x<70}\"}}", "ok"),
        ..Update::default()
    }
}

/// Deterministic, uuid-shaped and spread over the key space like random
/// ids, so the id index sees random inserts as it would in production.
fn id(i: u64) -> String {
    if std::env::var_os("LOAD_SEQUENTIAL_IDS").is_some() {
        return format!("urn:uuid:{i:016x}");
    }
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i >> 7);
    format!(
        "urn:uuid:{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (i >> 12) & 0xfff,
        i
    )
}

fn open(dir: &Path, durability: Durability) -> Arc<LocalEngine> {
    let config = LocalConfig {
        durability,
        ..LocalConfig::new(dir)
    };
    let engine = Arc::new(LocalEngine::open(config).expect("open store"));
    engine.start(Arc::new(CountingSink::default()));
    engine
}

fn file_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(STORE_FILE)).map_or(0, |m| m.len())
}

/// The disk's own fsync latency, as a baseline for the publish figures:
/// with `sync`, a group commit costs at least one of these.
fn fsync_probe(base: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir_in(base).unwrap();
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let mut times = Vec::new();
    for i in 0..200u64 {
        f.seek(SeekFrom::Start((i % 64) * 4096)).unwrap();
        f.write_all(&[b'x'; 4096]).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "disk          fdatasync of one 4 KiB write: p50 {:.2?}, p99 {:.2?}",
        times[100], times[198]
    );
}

async fn publish_run(base: &Path, publishers: u64, seconds: u64) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let engine = open(dir.path(), Durability::Sync);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (engine, stop, next) = (engine.clone(), stop.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                engine.append(vec![update(i)]).await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = engine.stats();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "publish sync  {publishers:>3} publishers: {:>9.0} acknowledged appends/s   \
         latency p50 {:>7.2?} p99 {:>7.2?}   {:.1} updates per fsync",
        latencies.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        stats.appended as f64 / stats.durable_commits.max(1) as f64,
    );
    engine.close().await.unwrap();
}

/// Fills a store with `n` updates, 1000 per append.
async fn fill(dir: &Path, n: u64) {
    let engine = open(dir, Durability::Sync);
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 1000).min(n)).map(update).collect();
        i += batch.len() as u64;
        engine.append(batch).await.unwrap();
        if i % 1_000_000 == 0 {
            eprintln!("  filled {i} in {:.1?}", start.elapsed());
        }
    }
    engine.close().await.unwrap();
    println!(
        "fill          {n} updates in appends of 1000: {:.0} updates/s",
        n as f64 / start.elapsed().as_secs_f64()
    );
}

async fn replay(engine: &LocalEngine, label: &str) {
    let start = Instant::now();
    let (mut after, mut count) = (0, 0u64);
    loop {
        let page = engine.read_after(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        count += page.len() as u64;
    }
    let elapsed = start.elapsed();
    println!(
        "replay        {count} updates in pages of 1000 ({label}): {:>9.0} updates/s ({elapsed:.2?})",
        count as f64 / elapsed.as_secs_f64()
    );
}

async fn resume(engine: &LocalEngine, n: u64) {
    // The first resume after opening, then a spread of others.
    let mut times = Vec::new();
    for k in 0..200u64 {
        let i = (n / 2 + k * 7919 * 1013) % n;
        let t = Instant::now();
        let pos = engine.resolve(&id(i)).await.unwrap().expect("id present");
        let page = engine.read_after(pos, 100).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(page.first().map(|s| s.position), Some(pos + 1));
    }
    let first = times[0];
    times.sort();
    println!(
        "resume        resolve + read_after(100) in {n} updates: first {first:.2?}, \
         p50 {:.2?}, max {:.2?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

async fn big_store(base: &Path, n: u64) {
    let dir = tempfile::tempdir_in(base).unwrap();
    fill(dir.path(), n).await;
    println!(
        "size          {:.1} bytes per update ({} bytes for {n})",
        file_size(dir.path()) as f64 / n as f64,
        file_size(dir.path())
    );
    let t = Instant::now();
    let engine = open(dir.path(), Durability::Sync);
    println!(
        "open          {n} updates (verifies the file): {:.2?}",
        t.elapsed()
    );
    resume(&engine, n).await;
    engine.close().await.unwrap();
}

#[tokio::main]
async fn main() {
    let o = options();
    println!(
        "local engine load check: stores under {} ({} CPUs)",
        o.dir.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    fsync_probe(&o.dir);
    for publishers in [1, 16, 64] {
        publish_run(&o.dir, publishers, o.seconds).await;
    }

    let dir = tempfile::tempdir_in(&o.dir).unwrap();
    fill(dir.path(), o.replay).await;
    let size = file_size(dir.path());
    println!(
        "size          {:.1} bytes per update of 100 data bytes ({size} bytes for {})",
        size as f64 / o.replay as f64,
        o.replay
    );
    let t = Instant::now();
    let engine = open(dir.path(), Durability::Sync);
    println!(
        "open          {} updates (verifies the file): {:.2?}",
        o.replay,
        t.elapsed()
    );
    replay(&engine, "first, after open").await;
    replay(&engine, "again").await;
    resume(&engine, o.replay).await;
    engine.close().await.unwrap();
    drop(dir);

    if let Some(n) = o.big {
        big_store(&o.dir, n).await;
    }
}
