//! The writer thread: the one owner of every write to the store, and
//! where group commit happens.
//!
//! [`LocalEngine::append`](super::LocalEngine) sends an already encoded
//! [`AppendRequest`] down a channel and waits for its reply. The writer
//! takes everything queued into one write transaction, refuses requests with
//! a duplicate id one by one, assigns positions, commits once (fsynced with
//! [`Durability::Sync`]), hands the batch to the sink, then answers: see
//! "Acknowledged means durable" in the module documentation for why.
//! Between group commits it flushes (with [`Durability::Async`]), runs
//! retention ([`retention`](super::retention)) and, after an I/O error,
//! reopens the store.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::config::{Durability, Retention};
use super::shared::Shared;
use super::store::{load_state, open_store, State, IDS, META, META_BYTES, META_LAST, UPDATES};
use crate::engine::records::{footprint, now_ms, set_record_ts, RecordError};
use crate::engine::{EngineError, Stored};

/// A group commit takes at most this many updates...
pub const MAX_BATCH_UPDATES: usize = 4096;
/// ...or this many record bytes (a single larger request still goes alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// With [`Durability::Sync`], how long a group commit may wait for the
/// publishers the previous commit answered to send their next update. It
/// ends as soon as they all have, so a lone publisher never waits.
pub const GROUP_LINGER: Duration = Duration::from_micros(200);
/// With [`Durability::Async`], the longest time a commit stays non-durable.
/// Also the period of the age-retention check.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// After a failed reopen, wait this long before trying again.
const REOPEN_BACKOFF: Duration = Duration::from_secs(2);

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

pub(super) enum Command {
    Append(AppendRequest),
    /// Finish what is queued, commit durably, stop.
    Shutdown(oneshot::Sender<Result<(), EngineError>>),
}

pub(super) struct AppendRequest {
    pub(super) items: Vec<Pending>,
    /// Sum of the record sizes, for the batch bound.
    pub(super) bytes: usize,
    pub(super) reply: oneshot::Sender<Result<Vec<Arc<Stored>>, EngineError>>,
}

/// One update on its way to the writer, already encoded.
pub(super) struct Pending {
    /// Its position is set by the writer.
    pub(super) stored: Stored,
    /// The store record; the writer patches in the commit time.
    pub(super) record: Vec<u8>,
}

pub(super) struct Writer {
    /// `None` after an I/O error made the writer drop the store to reopen it.
    db: Option<Arc<Database>>,
    pub(super) shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    durability: Durability,
    pub(super) retention: Retention,
    pub(super) state: State,
    /// A commit was made without fsync since the last durable one.
    dirty: bool,
    last_durable: Instant,
    last_tick: Instant,
    /// Retention may have something to remove.
    pub(super) retention_due: bool,
    /// When a write failed and the store has not been reopened since.
    pub(super) broken_since: Option<Instant>,
    /// After a failed commit: no write before this time, and why.
    paused: Option<(Instant, String)>,
    /// Requests that queued during the last commit: the next group.
    carry: Group,
    /// How many requests the next group may expect (see [`GROUP_LINGER`]).
    expected: usize,
}

impl Writer {
    /// A writer for the store `db`, opened with `state`, taking commands
    /// from `rx`. Nothing runs until [`Writer::run`].
    pub(super) fn new(
        db: Arc<Database>,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Command>,
        durability: Durability,
        retention: Retention,
        state: State,
    ) -> Self {
        let now = Instant::now();
        Self {
            db: Some(db),
            shared,
            rx,
            durability,
            retention,
            state,
            dirty: false,
            last_durable: now,
            last_tick: now,
            retention_due: true,
            broken_since: None,
            paused: None,
            carry: Group::default(),
            expected: 0,
        }
    }

    pub(super) fn run(mut self) {
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
        // A failed commit (a full disk) leaves redb refusing every
        // operation, reads included, until the store is reopened: reopen
        // it now rather than at the next write, so history reads (clients
        // resuming) work again while the disk stays full.
        if self.broken_since.is_some() {
            match self.reopen() {
                Ok(()) | Err(WriteError::Backoff) => {}
                Err(e) => {
                    tracing::error!(file = %self.shared.file.display(), "store reopen failed: {e}")
                }
            }
        }
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
    pub(super) fn begin_write(&mut self) -> Result<WriteTransaction, WriteError> {
        if let Some((until, why)) = &self.paused {
            if Instant::now() < *until {
                return Err(WriteError::Paused(why.clone()));
            }
            self.paused = None;
        }
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

    pub(super) fn publish_bounds(&self) {
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
            // redb refuses everything after an I/O error: the store is
            // reopened at once (see `housekeeping`), and writes wait a
            // moment, so a full disk is not tried (and the store not
            // reopened) again for every publish.
            self.broken_since.get_or_insert_with(Instant::now);
            self.paused = Some((Instant::now() + REOPEN_BACKOFF, e.to_string()));
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

    pub(super) fn committed(&mut self, durability: redb::Durability) {
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
}

/// Why the writer could not write: the reason given in an
/// [`EngineError::Unavailable`] and in the logs.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    /// An I/O error closed the store, and reopening it is not due yet.
    #[error("store unavailable after an I/O error; retrying shortly")]
    Backoff,
    /// A commit failed a moment ago (a full disk, say): writes wait
    /// [`REOPEN_BACKOFF`] before trying again, so the store stays readable.
    #[error("the last commit failed ({0}); writes are tried again within {REOPEN_BACKOFF:?}")]
    Paused(String),
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
