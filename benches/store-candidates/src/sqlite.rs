//! The second candidate: herald's `local` engine rebuilt on SQLite
//! (rusqlite, bundled SQLite), with the same architecture as the redb one
//! in `crates/herald/src/engine/local.rs`, so that the comparison measures
//! the stores and not two designs:
//!
//! - records are encoded on the caller's task (the same record layout as
//!   herald's, copied below because herald keeps its encoder private);
//! - one writer thread owns the only write connection and does group
//!   commit: it takes every queued append (up to the same bounds), lingers
//!   up to the same 200 µs for the publishers the last commit answered,
//!   writes them all in **one** transaction (`BEGIN IMMEDIATE` … `COMMIT`),
//!   checks each request for duplicate ids on its own like herald, updates
//!   the same `meta` row, delivers the batch to the sink, then answers;
//! - reads run on tokio's blocking pool on a small pool of read
//!   connections (WAL lets them read while the writer writes).
//!
//! # Schema
//!
//! ```sql
//! updates(position INTEGER PRIMARY KEY, record BLOB)   -- the rowid B-tree
//! ids(id TEXT PRIMARY KEY, position INTEGER) WITHOUT ROWID
//! meta(key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID
//! ```
//!
//! `ids` is the unique id→position index. It is a `WITHOUT ROWID` table
//! (a clustered index holding exactly `(id, position)`) rather than an
//! `id TEXT UNIQUE` column on `updates`, which would store every id a
//! second time in the table rows (the record already holds it). That is
//! the same two B-trees as herald's redb layout, and the smaller choice.
//!
//! # Durability
//!
//! `PRAGMA journal_mode=WAL` and `PRAGMA synchronous=FULL`. In WAL mode,
//! `FULL` makes every commit sync the WAL file before `COMMIT` returns, so
//! an acknowledged update survives a power cut (the same promise as redb's
//! `Durability::Immediate`); `NORMAL` would sync only at checkpoints and
//! may lose the last commits on power loss. (`EXTRA` only adds a directory
//! sync for rollback journals in DELETE mode; it changes nothing in WAL.)
//! Checkpoints are SQLite's default automatic ones (every 1000 WAL pages,
//! run by the committing writer), which also fsync the database file: part
//! of SQLite's write cost, so they are left in. Note that the bundled
//! SQLite is built without `HAVE_FDATASYNC`, so its syncs are `fsync(2)`
//! where redb's are `fdatasync(2)`: that is how the crate ships.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::{BoxFuture, FutureExt};
use herald::engine::local::{GROUP_LINGER, MAX_BATCH_BYTES, MAX_BATCH_UPDATES};
use herald::engine::{Bounds, Engine, EngineError, Position, Sink, Stored};
use herald_protocol::Update;
use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

/// The store file inside the store directory.
pub const STORE_FILE: &str = "herald.sqlite";

/// Page cache per connection, in KiB (negative `cache_size` means KiB):
/// 128 MiB, the size of herald's redb cache.
const CACHE_KIB: i64 = 128 * 1024;

/// The SQLite engine. Only what the benchmark needs: no retention, no
/// `async` durability, no reopening after an I/O error.
pub struct SqliteEngine {
    file: PathBuf,
    commands: RwLock<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    shared: Arc<Shared>,
}

struct Shared {
    sink: RwLock<Option<Arc<dyn Sink>>>,
    first: AtomicU64,
    last: AtomicU64,
    group_commits: AtomicU64,
    appended: AtomicU64,
}

enum Command {
    Append(AppendRequest),
    Shutdown(oneshot::Sender<Result<(), EngineError>>),
}

struct AppendRequest {
    items: Vec<Pending>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<Arc<Stored>>, EngineError>>,
}

struct Pending {
    stored: Stored,
    record: Vec<u8>,
}

#[derive(Default)]
struct Group {
    requests: Vec<AppendRequest>,
    updates: usize,
    bytes: usize,
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

    fn open(&self) -> bool {
        self.shutdown.is_none() && self.updates < MAX_BATCH_UPDATES && self.bytes < MAX_BATCH_BYTES
    }
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

/// Opens a connection with the settings every connection gets.
fn connect(file: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(file, flags)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(conn)
}

impl SqliteEngine {
    /// Opens (creating if missing) the store in `dir`. With `check`, runs
    /// `PRAGMA quick_check` first (reads every page and checks the B-trees:
    /// the nearest SQLite has to redb's verification at open, though SQLite
    /// pages carry no checksums).
    pub fn open(dir: &Path, check: bool) -> Result<Self, EngineError> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = dir.join(STORE_FILE);
        let conn = connect(
            &file,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(format!("journal_mode is {mode}, not wal")));
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS updates(position INTEGER PRIMARY KEY, record BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS ids(id TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             INSERT OR IGNORE INTO meta VALUES ('format', 1), ('last_position', 0), ('retained_bytes', 0);",
        )
        .map_err(err)?;
        if check {
            let verdict: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(err)?;
            if verdict != "ok" {
                return Err(err(format!("quick_check: {verdict}")));
            }
        }
        let meta = |key: &str| -> Result<u64, EngineError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .map_err(err)
        };
        let (last, bytes) = (meta("last_position")?, meta("retained_bytes")?);
        let first: Option<u64> = conn
            .query_row("SELECT min(position) FROM updates", [], |r| r.get(0))
            .map_err(err)?;

        let shared = Arc::new(Shared {
            sink: RwLock::new(None),
            first: AtomicU64::new(first.unwrap_or(0)),
            last: AtomicU64::new(last),
            group_commits: AtomicU64::new(0),
            appended: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            shared: shared.clone(),
            rx,
            last,
            bytes,
            last_ts: 0,
            carry: Group::default(),
            expected: 0,
        };
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(err)?;
        Ok(Self {
            file,
            commands: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            readers: Arc::new(Mutex::new(Vec::new())),
            shared,
        })
    }

    /// Updates per group commit so far (each one fsynced).
    pub fn updates_per_commit(&self) -> f64 {
        let s = &self.shared;
        s.appended.load(Ordering::Relaxed) as f64
            / s.group_commits.load(Ordering::Relaxed).max(1) as f64
    }

    /// Runs `f` on a pooled read connection, on tokio's blocking pool.
    fn read<T, F>(&self, f: F) -> BoxFuture<'_, Result<T, EngineError>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let file = self.file.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = match pool.lock().pop() {
                    Some(conn) => conn,
                    None => connect(
                        &file,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(err)?,
                };
                let result = f(&conn).map_err(err);
                pool.lock().push(conn);
                result
            })
            .await
            .map_err(err)?
        }
        .boxed()
    }
}

impl Engine for SqliteEngine {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn start(&self, sink: Arc<dyn Sink>) {
        *self.shared.sink.write() = Some(sink);
    }

    fn append(&self, updates: Vec<Update>) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>> {
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
        let sent = match self.commands.read().as_ref() {
            None => Err(EngineError::Closed),
            Some(tx) => tx
                .send(Command::Append(AppendRequest {
                    items,
                    bytes,
                    reply,
                }))
                .map_err(|_| err("writer gone")),
        };
        async move {
            sent?;
            rx.await.map_err(|_| err("writer gone"))?
        }
        .boxed()
    }

    fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT position, record FROM updates WHERE position > ?1 ORDER BY position LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![after, limit as i64])?;
            let mut out = Vec::with_capacity(limit.min(1024));
            while let Some(row) = rows.next()? {
                let pos: u64 = row.get(0)?;
                let record = row.get_ref(1)?.as_blob()?;
                let update = decode_record(record).ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(1, "record".into(), rusqlite::types::Type::Blob)
                })?;
                out.push(Arc::new(Stored::new(pos, update)));
            }
            Ok(out)
        })
    }

    fn resolve(&self, id: &str) -> BoxFuture<'_, Result<Option<Position>, EngineError>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT position FROM ids WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()
        })
    }

    fn bounds(&self) -> BoxFuture<'_, Result<Bounds, EngineError>> {
        let first = self.shared.first.load(Ordering::Acquire);
        let last = self.shared.last.load(Ordering::Acquire);
        async move {
            Ok(Bounds {
                first: (first != 0).then_some(first),
                last,
            })
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        let done = self.commands.write().take().map(|tx| {
            let (reply, rx) = oneshot::channel();
            let _ = tx.send(Command::Shutdown(reply));
            rx
        });
        async move {
            let result = match done {
                Some(rx) => rx.await.unwrap_or_else(|_| Err(err("writer gone"))),
                None => Ok(()),
            };
            let handle = self.writer.lock().take();
            if let Some(handle) = handle {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            // Closing the last connection checkpoints and removes the WAL.
            self.readers.lock().clear();
            result
        }
        .boxed()
    }
}

impl Drop for SqliteEngine {
    fn drop(&mut self) {
        if let Some(tx) = self.commands.get_mut().take() {
            let (reply, _rx) = oneshot::channel();
            let _ = tx.send(Command::Shutdown(reply));
        }
        if let Some(handle) = self.writer.get_mut().take() {
            let _ = handle.join();
        }
    }
}

// === the writer thread: herald's loop, on SQLite ===

struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    last: Position,
    bytes: u64,
    last_ts: u64,
    carry: Group,
    expected: usize,
}

impl Writer {
    fn run(mut self) {
        loop {
            let mut group = std::mem::take(&mut self.carry);
            if group.is_empty() {
                match self.rx.recv() {
                    Ok(command) => group.add(command),
                    Err(_) => return,
                }
            }
            self.drain_into(&mut group);
            let deadline = Instant::now() + GROUP_LINGER;
            while group.requests.len() < self.expected && group.open() {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(command) => group.add(command),
                    Err(_) => break,
                }
            }
            let requests = group.requests.len();
            if requests > 0 {
                self.commit_batch(group.requests);
            }
            self.expected = requests + self.carry.requests.len();
            if let Some(reply) = group.shutdown {
                let _ = reply.send(Ok(()));
                return;
            }
        }
    }

    fn drain_into(&self, group: &mut Group) {
        while group.open() {
            match self.rx.try_recv() {
                Ok(command) => group.add(command),
                Err(_) => break,
            }
        }
    }

    fn commit_batch(&mut self, batch: Vec<AppendRequest>) {
        let (replies, mut requests): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|r| (r.reply, r.items)).unzip();
        let before = self.last;
        let refused = match self.write(&mut requests) {
            Ok(refused) => refused,
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(err(&e)));
                }
                return;
            }
        };
        self.shared.last.store(self.last, Ordering::Release);
        if self.shared.first.load(Ordering::Acquire) == 0 && self.last > before {
            self.shared.first.store(before + 1, Ordering::Release);
        }
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
        let mut next = std::mem::take(&mut self.carry);
        self.drain_into(&mut next);
        self.carry = next;
        if !all.is_empty() {
            if let Some(sink) = self.shared.sink.read().clone() {
                sink.deliver(&all);
            }
        }
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    /// One transaction, one commit (fsync of the WAL). Returns per request
    /// the duplicate id that refused it.
    fn write(&mut self, requests: &mut [Vec<Pending>]) -> rusqlite::Result<Vec<Option<String>>> {
        let mut refused = Vec::with_capacity(requests.len());
        let (mut last, mut bytes) = (self.last, self.bytes);
        self.last_ts = self.last_ts.max(now_ms());
        let txn = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut accepted_any = false;
        {
            let mut exists = txn.prepare_cached("SELECT 1 FROM ids WHERE id = ?1")?;
            let mut put_update =
                txn.prepare_cached("INSERT INTO updates(position, record) VALUES (?1, ?2)")?;
            let mut put_id = txn.prepare_cached("INSERT INTO ids(id, position) VALUES (?1, ?2)")?;
            let mut batch_ids: HashSet<String> = HashSet::new();
            for items in requests.iter_mut() {
                let mut own = HashSet::with_capacity(items.len());
                let mut duplicate = None;
                for p in items.iter() {
                    let id = p.stored.update.id.as_str();
                    if !own.insert(id) || batch_ids.contains(id) || exists.exists([id])? {
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
                    last += 1;
                    p.stored.position = last;
                    p.record[1..9].copy_from_slice(&self.last_ts.to_le_bytes());
                    put_update.execute(params![last, p.record])?;
                    let id = p.stored.update.id.as_str();
                    put_id.execute(params![id, last])?;
                    bytes += (p.record.len() + id.len() + 16) as u64;
                    batch_ids.insert(id.to_owned());
                    accepted_any = true;
                }
            }
            if accepted_any {
                let mut meta = txn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
                meta.execute(params!["last_position", last])?;
                meta.execute(params!["retained_bytes", bytes])?;
            }
        }
        if !accepted_any {
            txn.rollback()?;
            return Ok(refused);
        }
        txn.commit()?;
        self.shared.group_commits.fetch_add(1, Ordering::Relaxed);
        self.shared
            .appended
            .fetch_add(last - self.last, Ordering::Relaxed);
        self.last = last;
        self.bytes = bytes;
        Ok(refused)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

// === records: herald's layout (local.rs, "records"), copied ===
//
//   u8 version (1) | u64 LE commit time | u8 flags (1 private, 2 event type,
//   4 retry) | str id | varint topic count, str topics | [str event type]
//   | [varint retry] | str data          (str = LEB128 length + UTF-8)

fn encode_record(u: &Update) -> Vec<u8> {
    let size = 16
        + u.id.len()
        + u.data.len()
        + u.topics.iter().map(|t| t.len() + 2).sum::<usize>()
        + u.event_type.as_ref().map_or(0, |t| t.len() + 2);
    let mut out = Vec::with_capacity(size);
    out.push(1);
    out.extend_from_slice(&[0; 8]);
    let flags = u8::from(u.private)
        | if u.event_type.is_some() { 2 } else { 0 }
        | if u.retry.is_some() { 4 } else { 0 };
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

/// Decodes a record (checked like herald's decoder: `None` if malformed).
fn decode_record(record: &[u8]) -> Option<Update> {
    let mut r = Reader { buf: record, at: 0 };
    if r.byte()? != 1 {
        return None;
    }
    r.at = 9;
    let flags = r.byte()?;
    if flags & !7 != 0 {
        return None;
    }
    let id = r.str()?.to_owned();
    let count = r.varint()?;
    if count > (record.len() - r.at) as u64 {
        return None;
    }
    let topics = (0..count)
        .map(|_| r.str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    let event_type = if flags & 2 != 0 {
        Some(r.str()?.to_owned())
    } else {
        None
    };
    let retry = if flags & 4 != 0 {
        Some(r.varint()?)
    } else {
        None
    };
    let data = r.str()?.to_owned();
    (r.at == record.len()).then_some(Update {
        id,
        topics,
        data,
        event_type,
        retry,
        private: flags & 1 != 0,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint()?).ok()?;
        let end = self.at.checked_add(len).filter(|&e| e <= self.buf.len())?;
        let s = std::str::from_utf8(&self.buf[self.at..end]).ok()?;
        self.at = end;
        Some(s)
    }
}
