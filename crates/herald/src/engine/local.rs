//! The `local` engine: a crash-safe store in one file on this machine, and
//! the hub's default.
//!
//! # Why redb
//!
//! The store is a [redb](https://docs.rs/redb) database: a pure-Rust,
//! copy-on-write B-tree with checksummed pages, ACID transactions and a
//! documented crash-recovery story (after `kill -9` or a power cut it opens
//! with every transaction whose commit returned). No C toolchain, no
//! background compaction threads, one file.
//!
//! # Layout of the store
//!
//! `<path>/herald.redb` holds three tables:
//!
//! - `updates`: position (`u64`) → one record (see the *records* section
//!   of the source): a version byte, the commit time, the flags and the
//!   fields of the update, length-prefixed. Positions are contiguous:
//!   retention only ever removes the oldest ones, so the retained history
//!   is `first..=last`.
//! - `ids`: id → position. [`Engine::resolve`] is one indexed lookup.
//! - `meta`: the format version, the last position ever assigned (so
//!   positions continue after a restart even when retention removed every
//!   update) and the running total of retained bytes.
//!
//! # Acknowledged means durable: group commit
//!
//! One dedicated writer thread owns every write. [`Engine::append`] encodes
//! its updates (SSE frame and store record, on the caller's task, so that
//! work is spread over the runtime), sends them with a reply channel, and
//! waits. The writer takes everything queued (up to [`MAX_BATCH_UPDATES`]
//! updates or [`MAX_BATCH_BYTES`]) into **one** write transaction, checks
//! each request for duplicate ids on its own (a refused request writes
//! nothing and does not disturb the others), assigns positions, and commits
//! once. With [`Durability::Sync`] that commit is fsynced before anyone is
//! answered, so an acknowledged update survives a crash; the cost of that
//! fsync is shared by every publisher waiting at that moment, which is what
//! lets 64 concurrent publishers get far more than `1 / fsync latency`
//! acknowledgements per second. (Publishers answered by one commit would
//! otherwise come back while the next is being written and settle into two
//! cohorts taking turns; the writer waits up to [`GROUP_LINGER`] for them,
//! stopping as soon as they are all back.) Then the writer hands the whole
//! batch to the [`Sink`] in position order, once, and only then answers
//! each waiter: the contract of [`Engine::append`].
//!
//! [`Durability::Async`] commits without fsync; the writer makes the store
//! durable at least every [`FLUSH_INTERVAL`] and on [`Engine::close`]. A
//! crash may lose the updates of that last interval (never corrupt the
//! store).
//!
//! # Retention
//!
//! [`Retention`] limits by count, by age (each record keeps its commit
//! time) and by bytes (the total of record sizes, kept in `meta`). It is
//! enforced in the background, by the writer thread between group commits,
//! in transactions of at most [`RETENTION_CHUNK`] removals, so a large
//! clean-up never holds the writer for long: appends are served between
//! chunks.
//! Those transactions are committed without fsync: if the process dies
//! before the next durable commit, the clean-up simply happens again.
//! Running them on the writer (rather than on a thread of their own)
//! avoids two threads queueing on redb's single write lock, and keeps the
//! byte total owned by one thread.
//!
//! # Damage is loud
//!
//! The store is opened with redb's integrity check: every page checksum of
//! the committed trees is verified, so a damaged or truncated file fails to
//! open with [`EngineError::Unavailable`] naming the file, instead of being
//! trusted (or panicking later). Nothing is ever deleted or reset at
//! start-up. The only repair allowed is redb's own crash recovery (falling
//! back to the last complete commit), which is logged. The check reads the
//! whole file, so opening takes time proportional to the store size
//! (measured with `examples/local_engine_load.rs`: about 0.7 s per million
//! 100-byte updates, 13 s for ten million).
//!
//! An I/O error at commit (a full disk, say) fails the waiting appends with
//! [`EngineError::Unavailable`]; the engine keeps running, and the writer
//! reopens the store (letting redb recover it) before its next write.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::{BoxFuture, FutureExt};
use herald_protocol::Update;
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use super::{Bounds, Engine, EngineError, Position, Sink, Stored};

/// The store file inside [`LocalConfig::path`].
pub const STORE_FILE: &str = "herald.redb";

/// A group commit takes at most this many updates...
pub const MAX_BATCH_UPDATES: usize = 4096;
/// ...or this many record bytes (a single larger request still goes alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// With [`Durability::Sync`], how long a group commit may wait for the
/// publishers the previous commit answered to send their next update. It
/// ends as soon as they all have, so a lone publisher never waits.
pub const GROUP_LINGER: Duration = Duration::from_micros(200);
/// At most this many updates are removed per retention transaction.
pub const RETENTION_CHUNK: usize = 2048;
/// With [`Durability::Async`], the longest time a commit stays non-durable.
/// Also the period of the age-retention check.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// redb's page cache. History replays mostly read recent pages; the OS page
/// cache serves the rest.
const CACHE_BYTES: usize = 128 << 20;
/// After a failed reopen, wait this long before trying again.
const REOPEN_BACKOFF: Duration = Duration::from_secs(2);

const UPDATES: TableDefinition<u64, &[u8]> = TableDefinition::new("updates");
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_LAST: &str = "last_position";
const META_BYTES: &str = "retained_bytes";
/// The layout of the tables above; bumped on incompatible changes.
const FORMAT_VERSION: u64 = 1;

// === configuration ===

/// Where and how the `local` engine stores updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The store directory, created if missing. The data lives in
    /// [`STORE_FILE`] inside it.
    pub path: PathBuf,
    pub durability: Durability,
    pub retention: Retention,
}

impl LocalConfig {
    /// A store in `path` with [`Durability::Sync`] and no retention limit.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::default(),
            retention: Retention::default(),
        }
    }
}

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the commit reached the disk (fsync): an acknowledged update
    /// survives a crash or a power cut. Concurrent appends share fsyncs.
    #[default]
    Sync,
    /// After the commit, before the disk: faster, but a crash (or an I/O
    /// error that makes the engine reopen the store) may lose up to
    /// [`FLUSH_INTERVAL`] of acknowledged updates. The store itself stays
    /// consistent.
    Async,
}

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    /// Parses `sync` or `async` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("sync") {
            Ok(Self::Sync)
        } else if s.eq_ignore_ascii_case("async") {
            Ok(Self::Async)
        } else {
            Err(ParseDurabilityError(s.to_owned()))
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sync => "sync",
            Self::Async => "async",
        })
    }
}

/// A durability that is neither `sync` nor `async`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability {0:?} (expected \"sync\" or \"async\")")]
pub struct ParseDurabilityError(String);

/// How much history to keep. Every limit that is set applies; the default
/// keeps everything. Enforced in the background, so history may exceed a
/// limit for a moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most this many updates.
    pub max_updates: Option<u64>,
    /// Remove updates committed longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many bytes of records (the encoded updates plus a
    /// small fixed overhead each; not the file size, which redb grows and
    /// reuses but does not shrink).
    pub max_bytes: Option<u64>,
}

impl Retention {
    fn is_unlimited(&self) -> bool {
        self.max_updates.is_none() && self.max_age.is_none() && self.max_bytes.is_none()
    }
}

// === the engine ===

/// The durable `local` engine. See the module documentation.
pub struct LocalEngine {
    shared: Arc<Shared>,
    /// `None` once closed: later appends fail with [`EngineError::Closed`].
    commands: RwLock<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the engine handle, the readers and the writer thread share.
struct Shared {
    file: PathBuf,
    /// The open store. `None` after close, or while the writer reopens it
    /// after an I/O error.
    db: RwLock<Option<Arc<Database>>>,
    closed: AtomicBool,
    /// Oldest retained position, 0 when history is empty.
    first: AtomicU64,
    last: AtomicU64,
    sink: RwLock<Option<Arc<dyn Sink>>>,
    stats: Counters,
}

/// Counters the writer keeps; see [`LocalEngine::stats`].
#[derive(Debug, Default)]
struct Counters {
    group_commits: AtomicU64,
    appended: AtomicU64,
    durable_commits: AtomicU64,
    retention_removed: AtomicU64,
}

/// What the writer has done since the engine was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalStats {
    /// Write transactions that committed appends.
    pub group_commits: u64,
    /// Updates committed by those transactions.
    pub appended: u64,
    /// Commits made durable with an fsync (appends, flushes).
    pub durable_commits: u64,
    /// Updates removed by retention.
    pub retention_removed: u64,
}

/// The requests of one group commit, being collected.
#[derive(Default)]
struct Group {
    requests: Vec<AppendRequest>,
    updates: usize,
    bytes: usize,
    /// A shutdown ends the group: nothing can follow it.
    shutdown: Option<oneshot::Sender<Result<(), EngineError>>>,
}

impl Group {
    fn add(&mut self, command: Command) {
        match command {
            Command::Append(req) => {
                self.updates += req.items.len();
                self.bytes += req.bytes;
                self.requests.push(req);
            }
            Command::Shutdown(reply) => self.shutdown = Some(reply),
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.shutdown.is_none()
    }

    /// Whether it may take more.
    fn open(&self) -> bool {
        self.shutdown.is_none() && self.updates < MAX_BATCH_UPDATES && self.bytes < MAX_BATCH_BYTES
    }
}

enum Command {
    Append(AppendRequest),
    /// Finish what is queued, commit durably, stop.
    Shutdown(oneshot::Sender<Result<(), EngineError>>),
}

struct AppendRequest {
    items: Vec<Pending>,
    /// Sum of the record sizes, for the batch bound.
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<Arc<Stored>>, EngineError>>,
}

/// One update on its way to the writer, already encoded.
struct Pending {
    /// Its position is set by the writer.
    stored: Stored,
    /// The store record; the writer patches in the commit time.
    record: Vec<u8>,
}

impl fmt::Debug for LocalEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEngine")
            .field("file", &self.shared.file)
            .field("first", &self.shared.first.load(Ordering::Acquire))
            .field("last", &self.shared.last.load(Ordering::Acquire))
            .field("closed", &self.shared.closed.load(Ordering::Acquire))
            .finish()
    }
}

impl LocalEngine {
    /// Opens the store in `config.path` (creating the directory and an empty
    /// store if missing) and starts the writer thread.
    ///
    /// This is synchronous: it verifies the whole file (see the module
    /// documentation), which for a large store takes a while, so from async
    /// code call it on `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unavailable`], naming the path, when the directory
    /// cannot be created or written, the file is damaged, truncated or not a
    /// herald store, or another process has it open. The file is left as it
    /// was.
    pub fn open(config: LocalConfig) -> Result<Self, EngineError> {
        let dir = &config.path;
        std::fs::create_dir_all(dir).map_err(|e| {
            EngineError::Unavailable(format!(
                "cannot create the store directory {}: {e}",
                dir.display()
            ))
        })?;
        let file = dir.join(STORE_FILE);
        let exists = match std::fs::metadata(&file) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(EngineError::Unavailable(format!(
                    "cannot read the store file {}: {e}",
                    file.display()
                )))
            }
        };
        if !exists {
            create_store(dir, &file)?;
        }
        let db = open_store(&file)?;
        let state = load_state(&db, &file)?;

        let shared = Arc::new(Shared {
            file: file.clone(),
            db: RwLock::new(Some(db.clone())),
            closed: AtomicBool::new(false),
            first: AtomicU64::new(state.first),
            last: AtomicU64::new(state.last),
            sink: RwLock::new(None),
            stats: Counters::default(),
        });
        let (tx, rx) = mpsc::channel();
        let now = Instant::now();
        let writer = Writer {
            db: Some(db),
            shared: shared.clone(),
            rx,
            durability: config.durability,
            retention: config.retention,
            state,
            dirty: false,
            last_durable: now,
            last_tick: now,
            retention_due: true,
            broken_since: None,
            carry: Group::default(),
            expected: 0,
        };
        let handle = std::thread::Builder::new()
            .name("herald-local-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| {
                EngineError::Unavailable(format!("cannot start the store writer thread: {e}"))
            })?;
        tracing::info!(
            file = %file.display(),
            first = shared.first.load(Ordering::Relaxed),
            last = shared.last.load(Ordering::Relaxed),
            durability = %config.durability,
            "local engine opened"
        );
        Ok(Self {
            shared,
            commands: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// What the writer has done so far: `appended / group_commits` is the
    /// average group size.
    pub fn stats(&self) -> LocalStats {
        let c = &self.shared.stats;
        LocalStats {
            group_commits: c.group_commits.load(Ordering::Relaxed),
            appended: c.appended.load(Ordering::Relaxed),
            durable_commits: c.durable_commits.load(Ordering::Relaxed),
            retention_removed: c.retention_removed.load(Ordering::Relaxed),
        }
    }

    /// The store file.
    pub fn file(&self) -> &Path {
        &self.shared.file
    }

    /// The open store, for a read.
    fn db(&self) -> Result<Arc<Database>, EngineError> {
        match self.shared.db.read().as_ref() {
            Some(db) => Ok(db.clone()),
            None if self.shared.closed.load(Ordering::Acquire) => Err(EngineError::Closed),
            None => Err(EngineError::Unavailable(format!(
                "store {} is being reopened after an I/O error",
                self.shared.file.display()
            ))),
        }
    }

    /// Runs a blocking read on tokio's blocking pool, so a read that has to
    /// go to the disk never stalls the async runtime.
    fn read<T, F>(&self, f: F) -> BoxFuture<'_, Result<T, EngineError>>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Path) -> Result<T, EngineError> + Send + 'static,
    {
        let db = self.db();
        let file = self.shared.file.clone();
        async move {
            let db = db?;
            tokio::task::spawn_blocking(move || f(&db, &file))
                .await
                .map_err(|e| EngineError::Unavailable(format!("store read failed: {e}")))?
        }
        .boxed()
    }

    fn shutdown_writer(&self) -> Option<oneshot::Receiver<Result<(), EngineError>>> {
        let tx = self.commands.write().take()?;
        self.shared.closed.store(true, Ordering::Release);
        let (reply, rx) = oneshot::channel();
        tx.send(Command::Shutdown(reply)).ok()?;
        Some(rx)
    }
}

impl Engine for LocalEngine {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start(&self, sink: Arc<dyn Sink>) {
        *self.shared.sink.write() = Some(sink);
    }

    fn append(&self, updates: Vec<Update>) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>> {
        // Encode here, on the caller's task: the writer thread only writes.
        let mut bytes = 0;
        let items: Vec<Pending> = updates
            .into_iter()
            .map(|update| {
                let record = encode_record(&update);
                bytes += record.len();
                Pending {
                    stored: Stored::new(0, update),
                    record,
                }
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        let sent = {
            // Sending under the read lock orders every append before the
            // shutdown command of a concurrent close().
            let guard = self.commands.read();
            match guard.as_ref() {
                None => Err(EngineError::Closed),
                Some(tx) => tx
                    .send(Command::Append(AppendRequest {
                        items,
                        bytes,
                        reply,
                    }))
                    .map_err(|_| writer_gone()),
            }
        };
        async move {
            sent?;
            rx.await.map_err(|_| writer_gone())?
        }
        .boxed()
    }

    fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>> {
        if limit == 0 || after == Position::MAX {
            return async { Ok(Vec::new()) }.boxed();
        }
        self.read(move |db, file| {
            let fail = |e: &dyn fmt::Display| storage_error(file, "read", e);
            let txn = db.begin_read().map_err(|e| fail(&e))?;
            let table = txn.open_table(UPDATES).map_err(|e| fail(&e))?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for entry in table.range(after + 1..).map_err(|e| fail(&e))?.take(limit) {
                let (pos, record) = entry.map_err(|e| fail(&e))?;
                let pos = pos.value();
                let (_, update) = decode_record(record.value()).map_err(|e| {
                    EngineError::Unavailable(format!(
                        "store {} holds a damaged record at position {pos}: {e}",
                        file.display()
                    ))
                })?;
                out.push(Arc::new(Stored::new(pos, update)));
            }
            Ok(out)
        })
    }

    fn resolve(&self, id: &str) -> BoxFuture<'_, Result<Option<Position>, EngineError>> {
        let id = id.to_owned();
        self.read(move |db, file| {
            let fail = |e: &dyn fmt::Display| storage_error(file, "read", e);
            let txn = db.begin_read().map_err(|e| fail(&e))?;
            let table = txn.open_table(IDS).map_err(|e| fail(&e))?;
            let pos = table.get(id.as_str()).map_err(|e| fail(&e))?;
            Ok(pos.map(|p| p.value()))
        })
    }

    fn bounds(&self) -> BoxFuture<'_, Result<Bounds, EngineError>> {
        // The writer publishes both after each commit; no I/O needed.
        let first = self.shared.first.load(Ordering::Acquire);
        let last = self.shared.last.load(Ordering::Acquire);
        let bounds = Bounds {
            first: (first != 0).then_some(first),
            last,
        };
        async move { Ok(bounds) }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        let done = self.shutdown_writer();
        async move {
            let result = match done {
                Some(rx) => rx.await.unwrap_or_else(|_| Err(writer_gone())),
                None => Ok(()),
            };
            let handle = self.writer.lock().take();
            if let Some(handle) = handle {
                // The writer has answered, so it is about to return.
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            // Release the file (and its lock) once in-flight reads are done.
            let db = self.shared.db.write().take();
            if let Some(db) = db.and_then(|db| Arc::try_unwrap(db).ok()) {
                if let Err(e) = db.close() {
                    return Err(storage_error(&self.shared.file, "close", &e));
                }
            }
            result
        }
        .boxed()
    }
}

impl Drop for LocalEngine {
    /// Without [`Engine::close`], still finish the queued appends and the
    /// final durable commit before the file is released.
    fn drop(&mut self) {
        drop(self.shutdown_writer());
        if let Some(handle) = self.writer.get_mut().take() {
            let _ = handle.join();
        }
    }
}

fn writer_gone() -> EngineError {
    EngineError::Unavailable("the store writer thread stopped".into())
}

fn storage_error(file: &Path, what: &str, e: &dyn fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("store {} {what} failed: {e}", file.display()))
}

// === opening ===

/// Creates an empty store under a temporary name and renames it into
/// place, so a crash during creation never leaves a half-made store file
/// that would then (rightly) refuse to open.
fn create_store(dir: &Path, file: &Path) -> Result<(), EngineError> {
    let tmp = dir.join(format!("{STORE_FILE}.new"));
    let fail = |what: &str, e: &dyn fmt::Display| {
        EngineError::Unavailable(format!(
            "cannot create the store {} ({what}): {e}",
            file.display()
        ))
    };
    // A leftover from an interrupted creation never held any update.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("remove leftover", &e)),
    }
    let db = Database::builder()
        .create(&tmp)
        .map_err(|e| fail("create", &e))?;
    let txn = db.begin_write().map_err(|e| fail("write", &e))?;
    {
        txn.open_table(UPDATES).map_err(|e| fail("write", &e))?;
        txn.open_table(IDS).map_err(|e| fail("write", &e))?;
        let mut meta = txn.open_table(META).map_err(|e| fail("write", &e))?;
        for (key, value) in [
            (META_FORMAT, FORMAT_VERSION),
            (META_LAST, 0),
            (META_BYTES, 0),
        ] {
            meta.insert(key, value).map_err(|e| fail("write", &e))?;
        }
    }
    txn.commit().map_err(|e| fail("commit", &e))?;
    db.close().map_err(|e| fail("close", &e))?;
    std::fs::rename(&tmp, file).map_err(|e| fail("rename", &e))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("sync directory", &e))?;
    Ok(())
}

/// Opens an existing store, verifying every page. Never creates,
/// initializes or resets: a file that does not verify is an error.
fn open_store(file: &Path) -> Result<Arc<Database>, EngineError> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder.set_check_integrity_on_open(true);
    let shown = file.display().to_string();
    builder.set_repair_callback(move |session| {
        // redb reports 0.3 only when the newest commit failed its checksum
        // and it falls back to the previous one: what a crash in the middle
        // of a commit leaves (that commit was never acknowledged).
        if (session.progress() - 0.3).abs() < 1e-9 {
            tracing::warn!(
                file = %shown,
                "the newest commit of the store is incomplete; recovering the previous commit \
                 (expected after a crash during a commit)"
            );
        }
    });
    // redb documents that it may panic on a file modified behind its back
    // (in debug builds on some checks). Report that as the damage it is.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.open(file)));
    let hint = "the file was left untouched; restore it from a backup, or move it away to \
                start with an empty store";
    match opened {
        Ok(Ok(db)) => Ok(Arc::new(db)),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            Err(EngineError::Unavailable(format!(
                "store {} is already open (by another process or engine)",
                file.display()
            )))
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Err(EngineError::Unavailable(format!(
                "cannot open the store {}: the file is truncated ({e}); {hint}",
                file.display()
            )))
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => Err(
            EngineError::Unavailable(format!("cannot open the store {}: {e}", file.display())),
        ),
        Ok(Err(e)) => Err(EngineError::Unavailable(format!(
            "cannot open the store {}: {e}; {hint}",
            file.display()
        ))),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(EngineError::Unavailable(format!(
                "store {} is damaged (opening it failed: {why}); {hint}",
                file.display()
            )))
        }
    }
}

/// What the writer tracks between commits; read from `meta` at open.
#[derive(Debug, Clone, Copy)]
struct State {
    /// Oldest retained position, 0 when none.
    first: Position,
    /// Last position ever assigned.
    last: Position,
    /// Total footprint of the retained records.
    bytes: u64,
    /// Commit time of the newest update (ms since the epoch); commit times
    /// never go backwards even if the clock does, so age retention can stop
    /// at the first update young enough.
    last_ts: u64,
}

fn load_state(db: &Database, file: &Path) -> Result<State, EngineError> {
    let bad = |why: String| {
        EngineError::Unavailable(format!(
            "store {} is not a valid herald store: {why}",
            file.display()
        ))
    };
    let fail = |e: &dyn fmt::Display| storage_error(file, "read", e);
    let txn = db.begin_read().map_err(|e| fail(&e))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(bad("no meta table".into())),
        Err(e) => return Err(fail(&e)),
    };
    let get = |key: &str| -> Result<Option<u64>, EngineError> {
        Ok(meta.get(key).map_err(|e| fail(&e))?.map(|v| v.value()))
    };
    match get(META_FORMAT)? {
        Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(bad(format!(
                "format version {v}, this herald reads version {FORMAT_VERSION}"
            )))
        }
        None => return Err(bad("no format version".into())),
    }
    let mut last = get(META_LAST)?.unwrap_or(0);
    let bytes = get(META_BYTES)?.unwrap_or(0);
    let updates = txn.open_table(UPDATES).map_err(|e| fail(&e))?;
    let first = match updates.first().map_err(|e| fail(&e))? {
        Some((k, _)) => k.value(),
        None => 0,
    };
    let mut last_ts = 0;
    if let Some((k, v)) = updates.last().map_err(|e| fail(&e))? {
        if k.value() > last {
            return Err(bad(format!(
                "position {} is past the recorded last position {last}",
                k.value()
            )));
        }
        last = last.max(k.value());
        last_ts = record_ts(v.value()).map_err(|e| bad(e.to_string()))?;
    }
    Ok(State {
        first,
        last,
        bytes,
        last_ts,
    })
}

// === the writer thread ===

struct Writer {
    /// `None` after an I/O error made the writer drop the store to reopen it.
    db: Option<Arc<Database>>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    durability: Durability,
    retention: Retention,
    state: State,
    /// A commit was made without fsync since the last durable one.
    dirty: bool,
    last_durable: Instant,
    last_tick: Instant,
    /// Retention may have something to remove.
    retention_due: bool,
    /// When a write failed and the store has not been reopened since.
    broken_since: Option<Instant>,
    /// Requests that queued during the last commit: the next group.
    carry: Group,
    /// How many requests the next group may expect (see [`GROUP_LINGER`]).
    expected: usize,
}

impl Writer {
    fn run(mut self) {
        loop {
            let mut group = std::mem::take(&mut self.carry);
            if group.is_empty() {
                let wait = if self.retention_due {
                    Duration::ZERO
                } else {
                    FLUSH_INTERVAL.saturating_sub(self.last_tick.elapsed())
                };
                match self.rx.recv_timeout(wait) {
                    Ok(command) => group.add(command),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // Every handle is gone without a shutdown: still flush.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = self.finish();
                        return;
                    }
                }
            }
            if !group.is_empty() {
                // Group commit: take whatever else is already queued...
                self.drain_into(&mut group);
                // ...and, with fsyncs to share, give the publishers answered
                // by the last commit a moment to come back, so that
                // concurrent publishers do not settle into two cohorts that
                // take turns, each paying its own fsync.
                if self.durability == Durability::Sync {
                    let deadline = Instant::now() + GROUP_LINGER;
                    while group.requests.len() < self.expected && group.open() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match self.rx.recv_timeout(left) {
                            Ok(command) => group.add(command),
                            Err(_) => break,
                        }
                    }
                }
                let requests = group.requests.len();
                if requests > 0 {
                    self.commit_batch(group.requests);
                }
                self.expected = requests + self.carry.requests.len();
                if let Some(reply) = group.shutdown {
                    // Appends are sent before the shutdown (close() takes the
                    // sender first), so every one of them is committed now.
                    let _ = reply.send(self.finish());
                    return;
                }
            }
            self.housekeeping();
        }
    }

    /// Moves the queued commands into `group`, up to its bounds.
    fn drain_into(&self, group: &mut Group) {
        while group.open() {
            match self.rx.try_recv() {
                Ok(command) => group.add(command),
                Err(_) => break,
            }
        }
    }

    /// Periodic duties, between group commits.
    fn housekeeping(&mut self) {
        if self.last_tick.elapsed() >= FLUSH_INTERVAL {
            self.last_tick = Instant::now();
            if self.retention.max_age.is_some() {
                self.retention_due = true;
            }
            if self.dirty {
                if let Err(e) = self.flush() {
                    tracing::error!(file = %self.shared.file.display(), "store flush failed: {e}");
                }
            }
        }
        if self.retention_due {
            if let Err(e) = self.retention_chunk() {
                self.retention_due = false;
                tracing::error!(file = %self.shared.file.display(), "store retention failed: {e}");
            }
        }
    }

    /// A write transaction, reopening the store first if an earlier I/O
    /// error left it unusable.
    fn begin_write(&mut self) -> Result<WriteTransaction, WriteError> {
        if let Some(db) = &self.db {
            match db.begin_write() {
                Ok(txn) => return Ok(txn),
                Err(e) => {
                    tracing::error!(
                        file = %self.shared.file.display(),
                        "store write failed: {e}; reopening it"
                    );
                    self.broken_since.get_or_insert_with(Instant::now);
                }
            }
        }
        self.reopen()?;
        let db = self.db.as_ref().ok_or(WriteError::Closed)?;
        Ok(db.begin_write()?)
    }

    /// Drops every handle on the store (so redb releases its lock), then
    /// opens it again: redb recovers it to the last complete commit.
    fn reopen(&mut self) -> Result<(), WriteError> {
        if let Some(since) = self.broken_since {
            if self.db.is_none() && since.elapsed() < REOPEN_BACKOFF {
                return Err(WriteError::Backoff);
            }
        }
        self.broken_since = Some(Instant::now());
        *self.shared.db.write() = None;
        if let Some(db) = self.db.take() {
            // Readers that already hold the store finish first.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&db) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if Arc::strong_count(&db) > 1 {
                *self.shared.db.write() = Some(db.clone());
                self.db = Some(db);
                return Err(WriteError::Busy);
            }
            drop(db);
        }
        let db = open_store(&self.shared.file).map_err(WriteError::Reopen)?;
        let mut state = load_state(&db, &self.shared.file).map_err(WriteError::Reopen)?;
        // With Async durability the last commits may not have survived; the
        // positions they used were delivered, so never hand them out again
        // (the next commit records this `last`).
        state.last = state.last.max(self.state.last);
        state.last_ts = state.last_ts.max(self.state.last_ts);
        self.state = state;
        self.publish_bounds();
        self.dirty = false;
        self.broken_since = None;
        *self.shared.db.write() = Some(db.clone());
        self.db = Some(db);
        tracing::warn!(file = %self.shared.file.display(), "store reopened");
        Ok(())
    }

    fn publish_bounds(&self) {
        self.shared.first.store(self.state.first, Ordering::Release);
        self.shared.last.store(self.state.last, Ordering::Release);
    }

    /// One group commit: validate each request, write the accepted ones in
    /// one transaction, commit once, deliver, answer.
    fn commit_batch(&mut self, batch: Vec<AppendRequest>) {
        let (replies, mut requests): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|r| (r.reply, r.items)).unzip();
        let written = self.write(&mut requests);
        let refused = match written {
            Ok(refused) => refused,
            Err(reason) => {
                let reason = format!("store {}: {reason}", self.shared.file.display());
                tracing::error!("append failed: {reason}");
                for reply in replies {
                    let _ = reply.send(Err(EngineError::Unavailable(reason.clone())));
                }
                return;
            }
        };
        // Committed: publish, deliver the whole batch in position order,
        // then answer.
        self.publish_bounds();
        let mut all = Vec::new();
        let mut answers = Vec::with_capacity(replies.len());
        for (items, refused) in requests.into_iter().zip(refused) {
            if let Some(id) = refused {
                answers.push(Err(EngineError::DuplicateId(id)));
                continue;
            }
            let stored: Vec<Arc<Stored>> = items.into_iter().map(|p| Arc::new(p.stored)).collect();
            all.extend(stored.iter().cloned());
            answers.push(Ok(stored));
        }
        // What queued up during this commit is the next group; taken now,
        // before the answers below bring more, so the next linger knows how
        // many publishers to expect.
        let mut next = std::mem::take(&mut self.carry);
        self.drain_into(&mut next);
        self.carry = next;
        if !all.is_empty() {
            let sink = self.shared.sink.read().clone();
            if let Some(sink) = sink {
                // A panicking sink must not take the writer (and every later
                // append) down with it.
                let delivered =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.deliver(&all)));
                if delivered.is_err() {
                    tracing::error!("the engine sink panicked while delivering updates");
                }
            }
        }
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
        if self.over_limits() {
            self.retention_due = true;
        }
    }

    /// Writes the requests that have no duplicate id and commits. Returns,
    /// per request, the duplicate id that refused it. On success the
    /// accepted updates carry their positions and the state is advanced; on
    /// error nothing changed.
    fn write(&mut self, requests: &mut [Vec<Pending>]) -> Result<Vec<Option<String>>, WriteError> {
        let mut refused = Vec::with_capacity(requests.len());
        let mut state = self.state;
        let mut txn = self.begin_write()?;
        let durability = match self.durability {
            Durability::Sync => redb::Durability::Immediate,
            // At least every FLUSH_INTERVAL, a commit is durable.
            Durability::Async if self.last_durable.elapsed() >= FLUSH_INTERVAL => {
                redb::Durability::Immediate
            }
            Durability::Async => redb::Durability::None,
        };
        txn.set_durability(durability)?;
        let mut accepted_any = false;
        {
            let mut updates = txn.open_table(UPDATES)?;
            let mut ids = txn.open_table(IDS)?;
            let mut batch_ids: HashSet<String> = HashSet::new();
            state.last_ts = state.last_ts.max(now_ms());
            for items in requests.iter_mut() {
                // Refuse the whole request before writing any of it.
                let mut own = HashSet::with_capacity(items.len());
                let mut duplicate = None;
                for p in items.iter() {
                    let id = p.stored.update.id.as_str();
                    if !own.insert(id) || batch_ids.contains(id) || ids.get(id)?.is_some() {
                        duplicate = Some(id.to_owned());
                        break;
                    }
                }
                if duplicate.is_some() {
                    refused.push(duplicate);
                    continue;
                }
                refused.push(None);
                for p in items.iter_mut() {
                    state.last += 1;
                    p.stored.position = state.last;
                    set_record_ts(&mut p.record, state.last_ts);
                    updates.insert(state.last, p.record.as_slice())?;
                    let id = p.stored.update.id.as_str();
                    ids.insert(id, state.last)?;
                    state.bytes += footprint(p.record.len(), id.len());
                    if state.first == 0 {
                        state.first = state.last;
                    }
                    batch_ids.insert(id.to_owned());
                    accepted_any = true;
                }
            }
            if accepted_any {
                let mut meta = txn.open_table(META)?;
                meta.insert(META_LAST, state.last)?;
                meta.insert(META_BYTES, state.bytes)?;
            }
        }
        if !accepted_any {
            let _ = txn.abort();
            return Ok(refused);
        }
        txn.commit().map_err(|e| {
            self.broken_since.get_or_insert_with(Instant::now);
            WriteError::Commit(e)
        })?;
        self.committed(durability);
        self.broken_since = None;
        let stats = &self.shared.stats;
        stats.group_commits.fetch_add(1, Ordering::Relaxed);
        stats
            .appended
            .fetch_add(state.last - self.state.last, Ordering::Relaxed);
        self.state = state;
        Ok(refused)
    }

    fn committed(&mut self, durability: redb::Durability) {
        match durability {
            redb::Durability::None => self.dirty = true,
            _ => {
                self.dirty = false;
                self.last_durable = Instant::now();
                self.shared
                    .stats
                    .durable_commits
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Makes every earlier non-durable commit durable.
    fn flush(&mut self) -> Result<(), WriteError> {
        if !self.dirty {
            return Ok(());
        }
        let txn = self.begin_write()?;
        txn.commit().map_err(WriteError::Commit)?;
        self.committed(redb::Durability::Immediate);
        Ok(())
    }

    /// The final durable commit.
    fn finish(&mut self) -> Result<(), EngineError> {
        let result = self.flush().map_err(|e| {
            EngineError::Unavailable(format!("store {}: {e}", self.shared.file.display()))
        });
        self.db = None;
        result
    }

    fn over_limits(&self) -> bool {
        let st = &self.state;
        let count = if st.first == 0 {
            0
        } else {
            st.last - st.first + 1
        };
        self.retention.max_updates.is_some_and(|max| count > max)
            || self.retention.max_bytes.is_some_and(|max| st.bytes > max)
    }

    /// Removes up to [`RETENTION_CHUNK`] of the oldest updates that some
    /// limit no longer allows, in one transaction (no fsync: see the module
    /// documentation). Leaves `retention_due` set while more may remain.
    fn retention_chunk(&mut self) -> Result<(), WriteError> {
        self.retention_due = false;
        if self.state.first == 0 || self.retention.is_unlimited() {
            return Ok(());
        }
        let r = &self.retention;
        let count_cut = r.max_updates.map(|max| self.state.last.saturating_sub(max));
        let age_cut = r
            .max_age
            .map(|age| now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
        let max_bytes = r.max_bytes;

        let mut state = self.state;
        let mut txn = self.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let removed;
        {
            let mut updates = txn.open_table(UPDATES)?;
            let mut ids = txn.open_table(IDS)?;
            let mut victims = Vec::new();
            for entry in updates.range(state.first..)?.take(RETENTION_CHUNK) {
                let (pos, record) = entry?;
                let (pos, record) = (pos.value(), record.value());
                let ts = record_ts(record).map_err(|error| WriteError::Record {
                    position: pos,
                    error,
                })?;
                let expired = count_cut.is_some_and(|cut| pos <= cut)
                    || max_bytes.is_some_and(|max| state.bytes > max)
                    || age_cut.is_some_and(|cut| ts < cut);
                if !expired {
                    break;
                }
                let id = record_id(record).map_err(|error| WriteError::Record {
                    position: pos,
                    error,
                })?;
                state.bytes = state
                    .bytes
                    .saturating_sub(footprint(record.len(), id.len()));
                victims.push((pos, id.to_owned()));
            }
            removed = victims.len();
            for (pos, id) in &victims {
                updates.remove(pos)?;
                // Only if the index still points here (it always should).
                let indexed = ids.get(id.as_str())?.map(|v| v.value());
                if indexed == Some(*pos) {
                    ids.remove(id.as_str())?;
                }
            }
            state.first = match updates.first()? {
                Some((k, _)) => k.value(),
                None => 0,
            };
            if removed > 0 {
                let mut meta = txn.open_table(META)?;
                meta.insert(META_BYTES, state.bytes)?;
            }
        }
        if removed == 0 {
            let _ = txn.abort();
            return Ok(());
        }
        txn.commit().map_err(|e| {
            self.broken_since.get_or_insert_with(Instant::now);
            WriteError::Commit(e)
        })?;
        self.committed(redb::Durability::None);
        self.state = state;
        self.publish_bounds();
        self.shared
            .stats
            .retention_removed
            .fetch_add(removed as u64, Ordering::Relaxed);
        tracing::debug!(removed, first = state.first, "store retention");
        self.retention_due = removed == RETENTION_CHUNK || self.over_limits();
        Ok(())
    }
}

/// Why the writer could not write: the reason given in an
/// [`EngineError::Unavailable`] and in the logs.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// An I/O error closed the store, and reopening it is not due yet.
    #[error("store unavailable after an I/O error; retrying shortly")]
    Backoff,
    /// Readers still hold the store that must be reopened.
    #[error("store busy; cannot reopen it yet")]
    Busy,
    #[error("store is closed")]
    Closed,
    /// Opening the store again failed.
    #[error("{0}")]
    Reopen(EngineError),
    #[error("{0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("{0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("{0}")]
    Table(#[from] redb::TableError),
    #[error("{0}")]
    Storage(#[from] redb::StorageError),
    #[error("commit failed: {0}")]
    Commit(redb::CommitError),
    /// A stored record does not decode.
    #[error("position {position}: {error}")]
    Record { position: u64, error: RecordError },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What one update counts for in [`Retention::max_bytes`]: its record, its
/// id-index key, and the two `u64`s of keys and index value.
fn footprint(record_len: usize, id_len: usize) -> u64 {
    (record_len + id_len + 16) as u64
}

// === records ===
//
// A record is compact, versioned and self-describing enough to be checked:
//
//   u8      version (1)
//   u64 LE  commit time, ms since the Unix epoch   (fixed offset: retention
//                                                   reads it without decoding)
//   u8      flags: 1 private, 2 has event type, 4 has retry
//   str     id                    str = LEB128 length + UTF-8 bytes
//   varint  topic count, then each topic as str
//   str     event type            if flag 2
//   varint  retry                 if flag 4
//   str     data
//
// A decoder meeting a record it cannot read reports the store as damaged
// rather than guessing.

const RECORD_V1: u8 = 1;
const TS_RANGE: std::ops::Range<usize> = 1..9;
const FLAG_PRIVATE: u8 = 1;
const FLAG_EVENT_TYPE: u8 = 2;
const FLAG_RETRY: u8 = 4;

/// Encodes an update as a store record, with a zero commit time.
fn encode_record(u: &Update) -> Vec<u8> {
    let size = 16
        + u.id.len()
        + u.data.len()
        + u.topics.iter().map(|t| t.len() + 2).sum::<usize>()
        + u.event_type.as_ref().map_or(0, |t| t.len() + 2);
    let mut out = Vec::with_capacity(size);
    out.push(RECORD_V1);
    out.extend_from_slice(&[0; 8]);
    let mut flags = 0;
    if u.private {
        flags |= FLAG_PRIVATE;
    }
    if u.event_type.is_some() {
        flags |= FLAG_EVENT_TYPE;
    }
    if u.retry.is_some() {
        flags |= FLAG_RETRY;
    }
    out.push(flags);
    put_str(&mut out, &u.id);
    put_varint(&mut out, u.topics.len() as u64);
    for t in &u.topics {
        put_str(&mut out, t);
    }
    if let Some(t) = &u.event_type {
        put_str(&mut out, t);
    }
    if let Some(r) = u.retry {
        put_varint(&mut out, r);
    }
    put_str(&mut out, &u.data);
    out
}

fn set_record_ts(record: &mut [u8], ts: u64) {
    record[TS_RANGE].copy_from_slice(&ts.to_le_bytes());
}

/// A record the decoder cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad record: {0}")]
struct RecordError(&'static str);

fn record_ts(record: &[u8]) -> Result<u64, RecordError> {
    if record.first() != Some(&RECORD_V1) {
        return Err(RecordError("unknown version"));
    }
    let ts = record.get(TS_RANGE).ok_or(RecordError("truncated"))?;
    Ok(u64::from_le_bytes(
        ts.try_into().map_err(|_| RecordError("truncated"))?,
    ))
}

fn record_id(record: &[u8]) -> Result<&str, RecordError> {
    record_ts(record)?;
    let mut r = Reader {
        buf: record,
        at: TS_RANGE.end + 1,
    };
    r.str()
}

/// Decodes a store record into its commit time and update.
fn decode_record(record: &[u8]) -> Result<(u64, Update), RecordError> {
    let ts = record_ts(record)?;
    let mut r = Reader {
        buf: record,
        at: TS_RANGE.end,
    };
    let flags = r.byte()?;
    if flags & !(FLAG_PRIVATE | FLAG_EVENT_TYPE | FLAG_RETRY) != 0 {
        return Err(RecordError("unknown flags"));
    }
    let id = r.str()?.to_owned();
    let count = r.varint()?;
    // Each topic takes at least one byte: a bound before allocating.
    if count > (record.len() - r.at) as u64 {
        return Err(RecordError("bad topic count"));
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        topics.push(r.str()?.to_owned());
    }
    let event_type = if flags & FLAG_EVENT_TYPE != 0 {
        Some(r.str()?.to_owned())
    } else {
        None
    };
    let retry = if flags & FLAG_RETRY != 0 {
        Some(r.varint()?)
    } else {
        None
    };
    let data = r.str()?.to_owned();
    if r.at != record.len() {
        return Err(RecordError("trailing bytes"));
    }
    Ok((
        ts,
        Update {
            id,
            topics,
            data,
            event_type,
            retry,
            private: flags & FLAG_PRIVATE != 0,
        },
    ))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, RecordError> {
        let b = *self.buf.get(self.at).ok_or(RecordError("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(RecordError("bad varint"))
    }

    fn str(&mut self) -> Result<&'a str, RecordError> {
        let len = self.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.at.checked_add(len))
            .filter(|&end| end <= self.buf.len())
            .ok_or(RecordError("truncated"))?;
        let s = std::str::from_utf8(&self.buf[self.at..end])
            .map_err(|_| RecordError("invalid UTF-8"))?;
        self.at = end;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> Update {
        Update {
            id: "urn:uuid:1".into(),
            topics: vec!["https://example.com/a".into(), "b".into()],
            data: "line 1\nline 2 — é".into(),
            event_type: Some("ping".into()),
            retry: Some(u64::MAX),
            private: true,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut rec = encode_record(&update());
        set_record_ts(&mut rec, 1234);
        assert_eq!(decode_record(&rec).unwrap(), (1234, update()));
        assert_eq!(record_id(&rec).unwrap(), "urn:uuid:1");
        let plain = Update {
            id: "x".into(),
            topics: vec!["t".into()],
            ..Update::default()
        };
        let rec = encode_record(&plain);
        assert_eq!(decode_record(&rec).unwrap(), (0, plain));
    }

    #[test]
    fn damaged_records_are_errors() {
        let rec = encode_record(&update());
        for len in 0..rec.len() {
            assert!(decode_record(&rec[..len]).is_err(), "prefix {len}");
        }
        let mut longer = rec.clone();
        longer.push(0);
        assert!(decode_record(&longer).is_err());
        let mut bad_version = rec.clone();
        bad_version[0] = 9;
        assert!(decode_record(&bad_version).is_err());
        // Any byte flipped: an error or a different update, never a panic.
        for i in 0..rec.len() {
            let mut flipped = rec.clone();
            flipped[i] ^= 0xff;
            let _ = decode_record(&flipped);
        }
    }

    #[test]
    fn durability_parses() {
        assert_eq!("sync".parse::<Durability>().unwrap(), Durability::Sync);
        assert_eq!("ASYNC".parse::<Durability>().unwrap(), Durability::Async);
        assert!("fast".parse::<Durability>().is_err());
        assert_eq!(Durability::default(), Durability::Sync);
    }
}
