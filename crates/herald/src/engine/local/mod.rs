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
//! - `updates`: position (`u64`) → one record (see `records.rs`): a version
//!   byte, the commit time, the flags and the
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
//! reopens the store (letting redb recover it) right away: after an I/O
//! error redb refuses reads too until then, and clients resuming from
//! history must not wait for the disk to have room again. Publishing
//! resumes by itself once it has (`crates/herald-cli/tests/chaos.rs`).
//!
//! # Source layout
//!
//! One concern per file:
//!
//! - `mod.rs`: [`LocalEngine`] and its [`Engine`] implementation (the
//!   caller's side: encoding, sending to the writer, reads on the blocking
//!   pool, close);
//! - `config.rs`: [`LocalConfig`], [`Durability`], [`Retention`];
//! - `store.rs`: the tables, creating, opening and verifying the file;
//! - `writer.rs`: the writer thread and group commit;
//! - `retention.rs`: removing what [`Retention`] no longer allows.
//!
//! The byte layout of one stored update is `engine/records.rs`, shared
//! with the `redis` engine.

mod config;
mod retention;
mod shared;
mod store;
mod writer;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use futures_util::future::{BoxFuture, FutureExt};
use herald_protocol::Update;
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase};
use tokio::sync::oneshot;

use super::{Bounds, Engine, EngineError, Position, Sink, Stored};
use crate::engine::records::{decode_record, encode_record};
use shared::{storage_error, Counters, Shared};
use store::{create_store, load_state, open_store, IDS, UPDATES};
use writer::{AppendRequest, Command, Pending, Writer};

pub use config::{Durability, LocalConfig, ParseDurabilityError, Retention};
pub use retention::RETENTION_CHUNK;
pub use store::STORE_FILE;
pub use writer::{FLUSH_INTERVAL, GROUP_LINGER, MAX_BATCH_BYTES, MAX_BATCH_UPDATES};

/// The durable `local` engine. See the module documentation.
pub struct LocalEngine {
    shared: Arc<Shared>,
    /// `None` once closed: later appends fail with [`EngineError::Closed`].
    commands: RwLock<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
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
        let writer = Writer::new(
            db,
            shared.clone(),
            rx,
            config.durability,
            config.retention,
            state,
        );
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
