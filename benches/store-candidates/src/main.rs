//! Issue 3's store comparison: herald's `local` engine workload on two
//! candidate stores, in one process run, interleaved (redb, then SQLite, at
//! every step), printed as one table.
//!
//! - **redb** is herald's real [`LocalEngine`] (`crates/herald`, by path);
//! - **sqlite** is the same engine design on SQLite through rusqlite
//!   (bundled SQLite, WAL, `synchronous=FULL`): see `src/sqlite.rs`.
//!
//! Both run behind herald's `Engine` trait, so the workload below is one
//! piece of code. It is the workload of
//! `crates/herald/examples/local_engine_load.rs`: acknowledged appends/s
//! with durable (fsynced) commits at 1, 16 and 64 concurrent publishers
//! (one update with 100 bytes of data per append, ids spread like random
//! UUIDs unless `LOAD_SEQUENTIAL_IDS=1`), a store of `--replay` updates
//! filled in appends of 1000 then replayed from the start in pages of
//! 1000, bytes on disk per update, the time to open a store, and resumes
//! (id → position, then the first page) from its middle; `--big N` repeats
//! the store measurements on N updates.
//!
//! Standalone crate (not in the workspace: it builds SQLite from C).
//! Run it on the disk to measure:
//!
//! ```text
//! cargo run --release --manifest-path benches/store-candidates/Cargo.toml -- --dir /work/tmp-store --runs 3
//!   --dir DIR      where the stores go (default: the system temp dir)
//!   --seconds N    length of each publish run (default 5)
//!   --runs K       repeat the publish runs and the replays K times (default 3);
//!                  the table gives the median and every run
//!   --replay N     size of the replay store (default 1000000)
//!   --big N        also build two N-update stores (e.g. 10000000; slow) and
//!                  time opening them and resuming from their middle
//! ```

mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::engine::local::{Durability, LocalConfig, LocalEngine};
use herald::engine::{Engine, Sink, Stored};
use herald_protocol::Update;
use sqlite::SqliteEngine;

#[derive(Debug, Default)]
struct CountingSink(AtomicU64);

impl Sink for CountingSink {
    fn deliver(&self, updates: &[Arc<Stored>]) {
        self.0.fetch_add(updates.len() as u64, Ordering::Relaxed);
    }
}

struct Options {
    dir: PathBuf,
    seconds: u64,
    runs: usize,
    replay: u64,
    big: Option<u64>,
}

fn options() -> Options {
    let mut o = Options {
        dir: std::env::temp_dir(),
        seconds: 5,
        runs: 3,
        replay: 1_000_000,
        big: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("missing option value");
        match arg.as_str() {
            "--dir" => o.dir = value().into(),
            "--seconds" => o.seconds = value().parse().expect("--seconds N"),
            "--runs" => o.runs = value().parse().expect("--runs K"),
            "--replay" => o.replay = value().parse().expect("--replay N"),
            "--big" => o.big = Some(value().parse().expect("--big N")),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(o.runs >= 1, "--runs must be at least 1");
    o
}

// === the workload's updates (as in local_engine_load.rs) ===

/// A `urn:uuid` id, one topic, 100 bytes of data.
fn update(i: u64) -> Update {
    Update {
        id: id(i),
        topics: vec![format!("https://example.com/books/{}", i % 1000)],
        data: format!("{{\"book\":{i:>10},\"status\":\"{:x<70}\"}}", "ok"),
        ..Update::default()
    }
}

/// Deterministic, uuid-shaped and spread over the key space like random ids.
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

// === the two candidates ===

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Redb,
    Sqlite,
}

const KINDS: [Kind; 2] = [Kind::Redb, Kind::Sqlite];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redb => "redb",
            Kind::Sqlite => "sqlite",
        }
    }
}

enum Store {
    Redb(Arc<LocalEngine>),
    Sqlite(Arc<SqliteEngine>),
}

impl Store {
    /// Opens a store in `dir` with durable (`sync`) appends. redb always
    /// verifies the whole file (herald's setting); SQLite runs
    /// `PRAGMA quick_check` only with `check`.
    fn open(kind: Kind, dir: &Path, check: bool) -> Store {
        let sink = Arc::new(CountingSink::default());
        let store = match kind {
            Kind::Redb => Store::Redb(Arc::new(
                LocalEngine::open(LocalConfig {
                    durability: Durability::Sync,
                    ..LocalConfig::new(dir)
                })
                .expect("open redb store"),
            )),
            Kind::Sqlite => Store::Sqlite(Arc::new(
                SqliteEngine::open(dir, check).expect("open sqlite store"),
            )),
        };
        store.engine().start(sink);
        store
    }

    fn engine(&self) -> Arc<dyn Engine> {
        match self {
            Store::Redb(e) => e.clone(),
            Store::Sqlite(e) => e.clone(),
        }
    }

    fn updates_per_commit(&self) -> f64 {
        match self {
            Store::Redb(e) => {
                let s = e.stats();
                s.appended as f64 / s.durable_commits.max(1) as f64
            }
            Store::Sqlite(e) => e.updates_per_commit(),
        }
    }

    async fn close(self) {
        self.engine().close().await.expect("close");
    }
}

/// Every file of the store directory (SQLite's WAL and shm included).
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read store dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

// === the table ===

#[derive(Clone, Copy)]
enum Unit {
    PerSecond,
    Millis,
    Bytes,
}

struct Row {
    name: String,
    unit: Unit,
    /// Per candidate, every measurement (one per run).
    values: [Vec<f64>; 2],
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, name: &str, unit: Unit, kind: Kind, value: f64) {
        let at = match self.0.iter().position(|r| r.name == name) {
            Some(at) => at,
            None => {
                self.0.push(Row {
                    name: name.to_owned(),
                    unit,
                    values: [Vec::new(), Vec::new()],
                });
                self.0.len() - 1
            }
        };
        self.0[at].values[kind as usize].push(value);
    }

    fn print(&self) {
        println!();
        println!("| measure | redb (herald LocalEngine) | SQLite (rusqlite, WAL, synchronous=FULL) | SQLite / redb |");
        println!("|---|---|---|---|");
        for row in &self.0 {
            let cell = |values: &[f64]| {
                let shown = format_value(row.unit, median(values));
                if values.len() > 1 {
                    let all: Vec<_> = values.iter().map(|&v| format_value(row.unit, v)).collect();
                    format!("{shown} ({})", all.join(", "))
                } else {
                    shown
                }
            };
            let ratio = median(&row.values[1]) / median(&row.values[0]);
            println!(
                "| {} | {} | {} | {ratio:.2}× |",
                row.name,
                cell(&row.values[0]),
                cell(&row.values[1])
            );
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn format_value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::PerSecond => thousands(v.round() as u64),
        Unit::Millis if v < 10.0 => format!("{v:.2} ms"),
        Unit::Millis => format!("{} ms", thousands(v.round() as u64)),
        Unit::Bytes => format!("{v:.1}"),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// === the measurements ===

/// The disk's own fsync latency: a durable commit costs at least one.
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
        "disk: fdatasync of one 4 KiB write: p50 {:.2?}, p99 {:.2?}",
        times[100], times[198]
    );
}

/// `publishers` tasks append one update each, flat out, for `seconds`.
async fn publish_run(kind: Kind, base: &Path, publishers: u64, seconds: u64, table: &mut Table) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = Store::open(kind, dir.path(), false);
    let engine = store.engine();
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
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{:<6} publish {publishers:>2} publishers: {rate:>7.0} appends/s, latency p50 {:>8.2?} p99 {:>8.2?}, {:.1} updates per commit",
        kind.name(),
        pct(0.5),
        pct(0.99),
        store.updates_per_commit()
    );
    let plural = if publishers == 1 { "" } else { "s" };
    table.add(
        &format!("acknowledged appends/s, durable, {publishers} publisher{plural}"),
        Unit::PerSecond,
        kind,
        rate,
    );
    if publishers == 64 {
        table.add(
            "append latency p50, 64 publishers",
            Unit::Millis,
            kind,
            ms(pct(0.5)),
        );
    }
    drop(engine);
    store.close().await;
}

/// Fills a store with `n` updates, 1000 per append; returns updates/s.
async fn fill(kind: Kind, dir: &Path, n: u64) -> f64 {
    let store = Store::open(kind, dir, false);
    let engine = store.engine();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 1000).min(n)).map(update).collect();
        i += batch.len() as u64;
        engine.append(batch).await.unwrap();
        if i % 1_000_000 == 0 {
            eprintln!("  {:<6} filled {i} in {:.1?}", kind.name(), start.elapsed());
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(engine);
    store.close().await;
    println!(
        "{:<6} fill {n} in appends of 1000: {rate:.0} updates/s",
        kind.name()
    );
    rate
}

/// Reads everything from the start in pages of 1000; returns updates/s.
async fn replay(kind: Kind, engine: &dyn Engine, n: u64) -> f64 {
    let start = Instant::now();
    let (mut after, mut count) = (0, 0u64);
    loop {
        let page = engine.read_after(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        count += page.len() as u64;
    }
    assert_eq!(count, n);
    let rate = count as f64 / start.elapsed().as_secs_f64();
    println!("{:<6} replay {count}: {rate:.0} updates/s", kind.name());
    rate
}

/// 200 resumes from the middle and spread around it: `resolve` then the
/// first `read_after` page (100). Returns (first, p50, max) in ms.
async fn resume(kind: Kind, engine: &dyn Engine, n: u64) -> (f64, f64, f64) {
    let mut times = Vec::new();
    for k in 0..200u64 {
        let i = (n / 2 + k * 7919 * 1013) % n;
        let t = Instant::now();
        let pos = engine.resolve(&id(i)).await.unwrap().expect("id present");
        let page = engine.read_after(pos, 100).await.unwrap();
        times.push(ms(t.elapsed()));
        assert_eq!(page.first().map(|s| s.position), Some(pos + 1));
    }
    let first = times[0];
    times.sort_by(f64::total_cmp);
    let (p50, max) = (times[times.len() / 2], times[times.len() - 1]);
    println!(
        "{:<6} resume in {n}: first {first:.2} ms, p50 {p50:.3} ms, max {max:.2} ms",
        kind.name()
    );
    (first, p50, max)
}

/// Fill, size, open (plain and checked), replays and resumes, on an
/// `n`-update store of each candidate, step by step.
async fn store_steps(base: &Path, n: u64, replays: usize, table: &mut Table) {
    let label = thousands(n);
    let dirs: Vec<_> = KINDS
        .iter()
        .map(|_| tempfile::tempdir_in(base).unwrap())
        .collect();
    for (kind, dir) in KINDS.iter().zip(&dirs) {
        let rate = fill(*kind, dir.path(), n).await;
        table.add(
            &format!("fill {label} updates (appends of 1000), updates/s"),
            Unit::PerSecond,
            *kind,
            rate,
        );
    }
    for (kind, dir) in KINDS.iter().zip(&dirs) {
        let size = dir_size(dir.path());
        println!("{:<6} size {size} bytes for {n}", kind.name());
        table.add(
            &format!("bytes on disk per 100-byte update, {label} updates"),
            Unit::Bytes,
            *kind,
            size as f64 / n as f64,
        );
    }
    for (check, name) in [
        (
            false,
            "open as herald would (redb verifies, SQLite does not)",
        ),
        (true, "open with a whole-file check (SQLite: quick_check)"),
    ] {
        for (kind, dir) in KINDS.iter().zip(&dirs) {
            let t = Instant::now();
            let store = Store::open(*kind, dir.path(), check);
            let took = ms(t.elapsed());
            println!("{:<6} {name}, {n}: {took:.1} ms", kind.name());
            table.add(
                &format!("{name}, {label} updates"),
                Unit::Millis,
                *kind,
                took,
            );
            store.close().await;
        }
    }
    let stores: Vec<_> = KINDS
        .iter()
        .zip(&dirs)
        .map(|(kind, dir)| Store::open(*kind, dir.path(), false))
        .collect();
    for _ in 0..replays {
        for (kind, store) in KINDS.iter().zip(&stores) {
            let rate = replay(*kind, &*store.engine(), n).await;
            table.add(
                &format!("replay from earliest, {label} updates, pages of 1000, updates/s"),
                Unit::PerSecond,
                *kind,
                rate,
            );
        }
    }
    for (kind, store) in KINDS.iter().zip(&stores) {
        let (first, p50, max) = resume(*kind, &*store.engine(), n).await;
        let name = format!("resume (resolve + first page) in {label} updates");
        table.add(&format!("{name}: first"), Unit::Millis, *kind, first);
        table.add(&format!("{name}: p50"), Unit::Millis, *kind, p50);
        table.add(&format!("{name}: max"), Unit::Millis, *kind, max);
    }
    for store in stores {
        store.close().await;
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    println!(
        "store candidates: redb (herald LocalEngine) vs SQLite {} (rusqlite), stores under {}, {} CPUs, {} runs of {} s, ids {}",
        rusqlite::version(),
        o.dir.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        o.runs,
        o.seconds,
        if std::env::var_os("LOAD_SEQUENTIAL_IDS").is_some() {
            "time-ordered"
        } else {
            "random-like"
        }
    );
    std::fs::create_dir_all(&o.dir).expect("create --dir");
    fsync_probe(&o.dir);
    let mut table = Table::default();
    for run in 1..=o.runs {
        println!("-- publish run {run}/{}", o.runs);
        for publishers in [1, 16, 64] {
            for kind in KINDS {
                publish_run(kind, &o.dir, publishers, o.seconds, &mut table).await;
            }
        }
    }
    println!("-- stores of {} updates", o.replay);
    store_steps(&o.dir, o.replay, o.runs, &mut table).await;
    if let Some(n) = o.big {
        println!("-- stores of {n} updates");
        store_steps(&o.dir, n, 1, &mut table).await;
    }
    table.print();
}
