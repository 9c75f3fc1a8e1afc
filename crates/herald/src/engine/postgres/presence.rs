//! The subscriptions directory in PostgreSQL: each node's subscriptions
//! are rows of `subscriptions` under its name, and `nodes` holds when each
//! node's presence expires (the server's clock).
//!
//! As with Redis: writes are batched in the background and redone in full
//! after a failure; a node refreshes its deadline every [`REFRESH`] and
//! drops out of listings [`LIVENESS`] (10 s) after it stops; reaping a
//! dead node is one statement that deletes its `nodes` row and returns its
//! subscriptions, so exactly one surviving node gets them. A node never
//! reaps itself, and reaps only after [`LIVENESS`] of good writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::rows::unavailable;
use super::schema::Names;
use super::state::Link;
use crate::engine::{Directory, EngineError};

/// How often a node refreshes its deadline.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long a node is listed after its last refresh.
pub const LIVENESS: Duration = Duration::from_secs(10);

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
    names: Names,
    node: String,
    link: Arc<Link>,
    timeout: Duration,
    entries: Mutex<BTreeMap<u64, String>>,
    pending: Mutex<Vec<Change>>,
    resync: AtomicBool,
    healthy_since: Mutex<Option<Instant>>,
    wake: Notify,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl Presence {
    pub(crate) fn new(names: Names, node: String, link: Arc<Link>, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(State {
                names,
                node,
                link,
                timeout,
                entries: Mutex::new(BTreeMap::new()),
                pending: Mutex::new(Vec::new()),
                resync: AtomicBool::new(true),
                healthy_since: Mutex::new(None),
                wake: Notify::new(),
            }),
        }
    }

    /// Writes changes and refreshes the deadline until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let refresh = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => true,
                () = self.inner.wake.notified() => false,
            };
            let written = tokio::time::timeout(self.inner.timeout, self.inner.write(refresh)).await;
            match written {
                Ok(Ok(())) => {
                    self.inner
                        .healthy_since
                        .lock()
                        .get_or_insert_with(Instant::now);
                }
                Ok(Err(e)) => self.failed(&e),
                Err(_) => self.failed(&EngineError::Unavailable("postgres: no answer".into())),
            }
        }
    }

    fn failed(&self, e: &EngineError) {
        tracing::debug!(
            engine = "postgres",
            "subscriptions directory not written: {e}"
        );
        self.inner.resync.store(true, Ordering::Release);
        *self.inner.healthy_since.lock() = None;
    }

    /// Leaves the directory at once (a clean shutdown).
    pub(crate) async fn leave(&self) {
        let s = &self.inner;
        let _ = tokio::time::timeout(s.timeout, async {
            let c = s.link.client().await?;
            c.execute(
                &format!("DELETE FROM {} WHERE node = $1", s.names.subscriptions),
                &[&s.node],
            )
            .await
            .map_err(unavailable)?;
            c.execute(
                &format!("DELETE FROM {} WHERE node = $1", s.names.nodes),
                &[&s.node],
            )
            .await
            .map_err(unavailable)
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
        let n = &self.names;
        let resync = self.resync.swap(false, Ordering::AcqRel);
        let (keys, values, removed): (Vec<i64>, Vec<String>, Vec<i64>) = if resync {
            let entries = self.entries.lock();
            self.pending.lock().clear();
            (
                entries.keys().map(|k| *k as i64).collect(),
                entries.values().cloned().collect(),
                Vec::new(),
            )
        } else {
            let changes = std::mem::take(&mut *self.pending.lock());
            if changes.is_empty() && !refresh {
                return Ok(());
            }
            // The last change of each key wins: a put then a remove of the
            // same key is a remove.
            let mut last: BTreeMap<u64, Option<String>> = BTreeMap::new();
            for c in changes {
                match c {
                    Change::Put(key, val) => last.insert(key, Some(val)),
                    Change::Remove(key) => last.insert(key, None),
                };
            }
            let (mut k, mut v, mut r) = (Vec::new(), Vec::new(), Vec::new());
            for (key, val) in last {
                match val {
                    Some(val) => {
                        k.push(key as i64);
                        v.push(val);
                    }
                    None => r.push(key as i64),
                }
            }
            (k, v, r)
        };
        let client = self.link.client().await?;
        if resync {
            client
                .execute(
                    &format!("DELETE FROM {} WHERE node = $1", n.subscriptions),
                    &[&self.node],
                )
                .await
                .map_err(unavailable)?;
        }
        if !removed.is_empty() {
            client
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE node = $1 AND key = ANY($2)",
                        n.subscriptions
                    ),
                    &[&self.node, &removed],
                )
                .await
                .map_err(unavailable)?;
        }
        if !keys.is_empty() {
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (node, key, entry) SELECT $1, k, e FROM unnest($2::int8[], $3::text[]) AS t(k, e) \
                         ON CONFLICT (node, key) DO UPDATE SET entry = excluded.entry",
                        n.subscriptions
                    ),
                    &[&self.node, &keys, &values],
                )
                .await
                .map_err(unavailable)?;
        }
        let liveness = LIVENESS.as_millis() as i64;
        let refreshed = client
            .execute(
                &format!(
                    "UPDATE {} SET expires = clock_timestamp() + $2::int8 * interval '1 millisecond' \
                     WHERE node = $1",
                    n.nodes
                ),
                &[&self.node, &liveness],
            )
            .await
            .map_err(unavailable)?;
        if refreshed == 0 {
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (node, expires) VALUES ($1, clock_timestamp() + $2::int8 * interval '1 millisecond') \
                         ON CONFLICT (node) DO UPDATE SET expires = excluded.expires",
                        n.nodes
                    ),
                    &[&self.node, &liveness],
                )
                .await
                .map_err(unavailable)?;
            if !resync {
                // Reaped while alive (paused past LIVENESS): its rows are
                // gone, write everything again.
                self.resync.store(true, Ordering::Release);
                self.wake.notify_one();
            }
        }
        Ok(())
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
        async move {
            let s = &self.inner;
            let c = s.link.client().await?;
            let rows = tokio::time::timeout(
                s.timeout,
                c.query(
                    &format!(
                        "SELECT s.entry FROM {} s JOIN {} n USING (node) \
                         WHERE n.expires > clock_timestamp() AND s.node <> $1 ORDER BY s.node, s.key",
                        s.names.subscriptions, s.names.nodes
                    ),
                    &[&s.node],
                ),
            )
            .await
            .map_err(|_| EngineError::Unavailable("postgres: no answer".into()))?
            .map_err(unavailable)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }
        .boxed()
    }

    fn reap(&self) -> BoxFuture<'_, Result<Vec<String>, EngineError>> {
        async move {
            let s = &self.inner;
            let healthy = s.healthy_since.lock().is_some_and(|t| t.elapsed() >= LIVENESS);
            if !healthy {
                return Ok(Vec::new());
            }
            let c = s.link.client().await?;
            let rows = tokio::time::timeout(
                s.timeout,
                c.query(
                    &format!(
                        "WITH dead AS (DELETE FROM {nodes} WHERE expires < clock_timestamp() AND node <> $1 RETURNING node) \
                         DELETE FROM {subs} s USING dead WHERE s.node = dead.node RETURNING s.entry",
                        nodes = s.names.nodes,
                        subs = s.names.subscriptions
                    ),
                    &[&s.node],
                ),
            )
            .await
            .map_err(|_| EngineError::Unavailable("postgres: no answer".into()))?
            .map_err(unavailable)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }
        .boxed()
    }
}
