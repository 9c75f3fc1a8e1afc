//! The subscriptions directory over Redis: every node keeps its own
//! subscriptions in a hash of its own (`{ns}:node:<id>`) and says it is
//! alive in `{ns}:nodes`, a sorted set whose scores are deadlines.
//!
//! - A node writes its changes in the background, batched: a connect never
//!   waits for Redis. After any failure (or when it finds its hash gone) it
//!   rewrites the whole hash.
//! - Every [`REFRESH`] it moves its deadline to the server's time plus
//!   [`LIVENESS`]. A node that stops (killed, cut off) drops out of
//!   listings once its deadline passes: **a killed node's subscriptions
//!   disappear within [`LIVENESS`]** (10 s).
//! - [`Directory::reap`] hands the entries of each dead node to exactly one
//!   surviving node (one script removes the node and returns its hash), so
//!   their `active: false` events are published once. A node never reaps
//!   itself, and reaps only once its own writes have succeeded for
//!   [`LIVENESS`]: after an outage every node first gets its chance to
//!   refresh.
//!
//! Time is the Redis server's (`TIME` in the scripts), so clock skew
//! between nodes does not matter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::entries::{bytes, items, malformed, unavailable};
use super::scripts::Keys;
use crate::engine::{Directory, EngineError};

/// How often a node refreshes its deadline.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long a node is listed after its last refresh.
pub const LIVENESS: Duration = Duration::from_secs(10);
/// A dead node's hash outlives its deadline this long, for the reaper.
const KEEP_DEAD: Duration = Duration::from_secs(600);

/// A change not yet written.
#[derive(Debug)]
enum Change {
    Put(u64, String),
    Remove(u64),
}

/// This node's part of the directory. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<State>,
}

struct State {
    keys: Keys,
    node: String,
    conn: ConnectionManager,
    timeout: Duration,
    /// What this node has now: the source of a full rewrite.
    entries: Mutex<BTreeMap<u64, String>>,
    pending: Mutex<Vec<Change>>,
    /// Rewrite everything at the next pass.
    resync: AtomicBool,
    /// Since when every write succeeded: a node reaps only after
    /// [`LIVENESS`] of those, so after an outage the others have had
    /// their chance to refresh before anyone is declared dead.
    healthy_since: Mutex<Option<std::time::Instant>>,
    wake: Notify,
    refresh: Script,
    list: Script,
    reap: Script,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl Presence {
    pub(super) fn new(
        keys: Keys,
        node: String,
        conn: ConnectionManager,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(State {
                keys,
                node,
                conn,
                timeout,
                entries: Mutex::new(BTreeMap::new()),
                pending: Mutex::new(Vec::new()),
                resync: AtomicBool::new(true),
                healthy_since: Mutex::new(None),
                wake: Notify::new(),
                // KEYS: nodes, this node's hash. ARGV: node, liveness ms,
                // keep ms. Returns whether the hash exists.
                refresh: Script::new(
                    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return redis.call('EXISTS', KEYS[2])
",
                ),
                // KEYS: nodes. ARGV: the node hash prefix, this node.
                // Returns the entries of every other live node.
                list: Script::new(
                    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%d', now), '+inf')) do
  if n ~= ARGV[2] then
    for _, v in ipairs(redis.call('HVALS', ARGV[1] .. n)) do out[#out + 1] = v end
  end
end
return out
",
                ),
                // KEYS: nodes. ARGV: the node hash prefix, this node.
                // Removes every other dead node and returns its entries
                // (once: the script is atomic).
                reap: Script::new(
                    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now))) do
  if n ~= ARGV[2] then
    redis.call('ZREM', KEYS[1], n)
    for _, v in ipairs(redis.call('HVALS', ARGV[1] .. n)) do out[#out + 1] = v end
    redis.call('DEL', ARGV[1] .. n)
  end
end
return out
",
                ),
            }),
        }
    }

    /// This node's name in the directory.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Writes changes and refreshes the deadline until `stop`.
    pub(super) async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let refresh = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => true,
                () = self.inner.wake.notified() => false,
            };
            match self.inner.write(refresh).await {
                Ok(()) => {
                    self.inner
                        .healthy_since
                        .lock()
                        .get_or_insert_with(std::time::Instant::now);
                }
                Err(e) => {
                    tracing::debug!(engine = "redis", "subscriptions directory not written: {e}");
                    self.inner.resync.store(true, Ordering::Release);
                    *self.inner.healthy_since.lock() = None;
                }
            }
        }
    }

    /// Leaves the directory at once (a clean shutdown).
    pub(super) async fn leave(&self) {
        let s = &self.inner;
        let mut conn = s.conn.clone();
        let _ = tokio::time::timeout(s.timeout, async {
            redis::pipe()
                .cmd("ZREM")
                .arg(&s.keys.nodes)
                .arg(&s.node)
                .ignore()
                .cmd("DEL")
                .arg(s.keys.node(&s.node))
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await;
    }

    fn change(&self, c: Change) {
        let mut entries = self.inner.entries.lock();
        match &c {
            Change::Put(k, v) => {
                entries.insert(*k, v.clone());
            }
            Change::Remove(k) => {
                entries.remove(k);
            }
        }
        self.inner.pending.lock().push(c);
        drop(entries);
        self.inner.wake.notify_one();
    }
}

impl State {
    async fn write(&self, refresh: bool) -> Result<(), EngineError> {
        let hash = self.keys.node(&self.node);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if self.resync.swap(false, Ordering::AcqRel) {
            // The pending changes are in `entries` already.
            let entries = self.entries.lock();
            self.pending.lock().clear();
            pipe.cmd("DEL").arg(&hash).ignore();
            for (k, v) in entries.iter() {
                pipe.cmd("HSET").arg(&hash).arg(*k).arg(v).ignore();
            }
        } else {
            let changes = std::mem::take(&mut *self.pending.lock());
            if changes.is_empty() && !refresh {
                return Ok(());
            }
            for c in changes {
                match c {
                    Change::Put(k, v) => pipe.cmd("HSET").arg(&hash).arg(k).arg(v).ignore(),
                    Change::Remove(k) => pipe.cmd("HDEL").arg(&hash).arg(k).ignore(),
                };
            }
        }
        let mut conn = self.conn.clone();
        let outcome = tokio::time::timeout(self.timeout, async {
            pipe.query_async::<()>(&mut conn).await?;
            self.refresh
                .key(&self.keys.nodes)
                .key(&hash)
                .arg(&self.node)
                .arg(LIVENESS.as_millis() as u64)
                .arg(KEEP_DEAD.as_millis() as u64)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await;
        match outcome {
            Ok(Ok(exists)) => {
                if exists == 0 && !self.entries.lock().is_empty() {
                    // Reaped while cut off: write everything again.
                    self.resync.store(true, Ordering::Release);
                    self.wake.notify_one();
                }
                Ok(())
            }
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(EngineError::Unavailable("redis: no answer".into())),
        }
    }

    async fn values(&self, script: &Script) -> Result<Vec<String>, EngineError> {
        let mut conn = self.conn.clone();
        let mut inv = script.key(&self.keys.nodes);
        inv.arg(self.keys.node("")).arg(&self.node);
        let reply: Value = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| EngineError::Unavailable("redis: no answer".into()))?
            .map_err(unavailable)?;
        items(&reply)
            .ok_or_else(|| malformed("directory"))?
            .iter()
            .map(|v| {
                bytes(v)
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
                    .ok_or_else(|| malformed("directory entry"))
            })
            .collect()
    }
}

impl Directory for Presence {
    fn put(&self, key: u64, entry: String) {
        self.change(Change::Put(key, entry));
    }

    fn remove(&self, key: u64) {
        self.change(Change::Remove(key));
    }

    fn others(&self) -> BoxFuture<'_, Result<Vec<String>, EngineError>> {
        async move { self.inner.values(&self.inner.list).await }.boxed()
    }

    fn reap(&self) -> BoxFuture<'_, Result<Vec<String>, EngineError>> {
        async move {
            let healthy = self
                .inner
                .healthy_since
                .lock()
                .is_some_and(|t| t.elapsed() >= LIVENESS);
            if !healthy {
                return Ok(Vec::new());
            }
            self.inner.values(&self.inner.reap).await
        }
        .boxed()
    }
}
