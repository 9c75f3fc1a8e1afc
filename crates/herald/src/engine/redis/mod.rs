//! The `redis` engine: herald nodes share one Redis (7.0 or later) or
//! Valkey, any node takes a publish, every node delivers it, and a client
//! resumes on any node.
//!
//! - **One stream per namespace** holds the log; positions are its entry
//!   ids (`<position>-0`), taken from one counter, so they are the same
//!   total order on every node.
//! - **An append is one script** (`scripts.rs`): it checks that every id is
//!   new (the id→position hash doubles as the index a resume looks up),
//!   takes the next positions, adds the entries, and trims by count and age
//!   with `XTRIM MINID ~`. A batch is one call.
//! - **Tailing** (`tail.rs`): each node follows new entries with `XREAD
//!   BLOCK` on a dedicated connection and delivers them to its subscribers
//!   in order, once, its own appends included. An append returns once its
//!   node delivered it.
//! - **Epoch and gaps**: the log carries an identity; a node that finds it
//!   flushed, replaced, gone back, or trimmed past what it delivered
//!   signals a gap (see the engine contract).
//! - **Subscriptions across nodes** (`presence.rs`).
//!
//! Every call is bounded by [`RedisConfig::timeout`]: with Redis down, a
//! publish fails with [`EngineError::Unavailable`] within that time.
//!
//! Durability is Redis's: with `appendonly yes` and `appendfsync always`,
//! an acknowledged append survives a Redis crash; with `everysec`, up to a
//! second of them may be lost; without persistence, a Redis restart loses
//! the log (the nodes then signal a gap). [`RedisConfig::wait_replicas`]
//! makes each append also wait for replicas (`WAIT`), so a failover to one
//! of them keeps it.

mod config;
mod entries;
pub mod presence;
mod scripts;
mod state;
mod tail;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use herald_protocol::Update;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::records::{encode_record, now_ms, set_record_ts};
use super::waiters::Waiters;
use super::{Bounds, Engine, EngineError, Position, Sink, Stored};
pub use config::{RedisConfig, DEFAULT_NAMESPACE};
use entries::{decode_entries, int, malformed, tagged, text, unavailable};
use scripts::Keys;
use state::{Follow, Inner, Scripts};

/// The `redis` engine. See the module documentation. Dropping it stops
/// its background tasks.
pub struct RedisEngine {
    inner: Arc<Inner>,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("namespace", &self.inner.config.namespace)
            .field("follow", &*self.inner.follow.borrow())
            .finish_non_exhaustive()
    }
}

impl RedisEngine {
    /// Connects, creates the namespace's log if it has none, and returns an
    /// engine that will deliver from the log's current end once started.
    ///
    /// # Errors
    /// A URL that does not parse, or a server that does not answer within
    /// the timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self, EngineError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            EngineError::Unavailable(format!("redis: invalid URL {:?}: {e}", config.url))
        })?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            config.timeout * 2,
            ConnectionManager::new_with_config(client.clone(), manager),
        )
        .await
        .map_err(|_| {
            EngineError::Unavailable(format!(
                "redis: {} did not answer within {:?}",
                config.url, config.timeout
            ))
        })?
        .map_err(unavailable)?;
        let keys = Keys::new(&config.namespace);
        let node = config
            .node
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let presence = presence::Presence::new(keys.clone(), node, conn.clone(), config.timeout);
        let append_conn = if config.wait_replicas > 0 {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1);
            Some(
                tokio::time::timeout(
                    config.timeout * 2,
                    ConnectionManager::new_with_config(client.clone(), manager),
                )
                .await
                .map_err(|_| EngineError::Unavailable("redis: no answer".into()))?
                .map_err(unavailable)?,
            )
        } else {
            None
        };
        let inner = Arc::new(Inner {
            keys,
            client,
            conn,
            append_conn,
            scripts: Scripts {
                init: scripts::init(),
                append: scripts::append(),
                read: scripts::read(),
                check: scripts::check(),
                lease: scripts::lease(),
                release: scripts::release(),
            },
            follow: watch::Sender::new(Follow {
                epoch: Arc::from(""),
                delivered: 0,
                start_id: None,
            }),
            waiters: Mutex::new(Waiters::default()),
            tail_up: AtomicBool::new(false),
            tail_lost: AtomicBool::new(false),
            started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            presence,
            config,
        });
        let mut conn = inner.conn.clone();
        let (epoch, seq, start_id) = inner
            .bounded(async {
                let (epoch, seq, _) = inner.init(&mut conn).await?;
                let id = tail::id_at(&inner, &mut conn, seq).await?;
                Ok((epoch, seq, id))
            })
            .await?;
        inner.follow.send_modify(|f| {
            f.epoch = epoch;
            f.delivered = seq;
            f.start_id = start_id;
        });
        inner.waiters.lock().delivered = seq;
        inner.warn_on_eviction().await;
        Ok(Self { inner })
    }

    /// This node's share of the subscriptions directory.
    pub fn presence(&self) -> &presence::Presence {
        &self.inner.presence
    }

    /// The namespace's identity as this node follows it.
    pub fn epoch(&self) -> String {
        self.inner.follow.borrow().epoch.to_string()
    }

    /// Removes every key of this namespace (its log and its directory).
    /// For tests and for retiring a namespace; nodes still using it see a
    /// flush.
    ///
    /// # Errors
    /// Redis did not answer.
    pub async fn destroy_namespace(&self) -> Result<(), EngineError> {
        let mut conn = self.inner.conn.clone();
        let mut keys: Vec<String> = self
            .inner
            .keys
            .log_keys()
            .iter()
            .map(|k| (*k).to_owned())
            .collect();
        keys.push(self.inner.keys.nodes.clone());
        let nodes: Vec<String> = self
            .inner
            .bounded(async {
                redis::cmd("ZRANGE")
                    .arg(&self.inner.keys.nodes)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        keys.extend(nodes.iter().map(|n| self.inner.keys.node(n)));
        self.inner
            .bounded(async {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await
    }
}

impl Inner {
    /// Evicting keys would cut holes in the log: say so at start.
    async fn warn_on_eviction(&self) {
        let mut conn = self.conn.clone();
        let policy: Result<Vec<String>, _> = self
            .bounded(async {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await;
        if let Ok(p) = policy {
            if p.get(1).is_some_and(|p| p != "noeviction") {
                tracing::warn!(
                    engine = "redis",
                    policy = p[1],
                    "Redis may evict keys (maxmemory-policy is not noeviction): history can then be lost, and herald will signal gaps"
                );
            }
        }
    }

    /// Runs the append script (no update: only retention).
    async fn run_append(&self, epoch: &str, updates: &[Update]) -> Result<Position, EngineError> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        self.run_append_until(epoch, updates, deadline).await
    }

    async fn run_append_until(
        &self,
        epoch: &str,
        updates: &[Update],
        deadline: tokio::time::Instant,
    ) -> Result<Position, EngineError> {
        let mut inv = self.scripts.append.prepare_invoke();
        for k in self.keys.log_keys() {
            inv.key(k);
        }
        inv.arg(epoch)
            .arg(self.config.max_updates.unwrap_or(0))
            .arg(
                self.config
                    .max_age
                    .map_or(0, |a| a.as_millis().max(1) as u64),
            );
        let ts = now_ms();
        for u in updates {
            let mut record = encode_record(u);
            set_record_ts(&mut record, ts);
            inv.arg(&u.id).arg(record);
        }
        let mut conn = self.append_conn.as_ref().unwrap_or(&self.conn).clone();
        let reply: Value = tokio::time::timeout_at(deadline, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| self.no_answer())?
            .map_err(unavailable)?;
        match tagged(&reply)? {
            ("ok", last) => Ok(int(last).ok_or_else(|| malformed("position"))?.max(0) as Position),
            ("dup", id) => Err(EngineError::DuplicateId(
                text(id).unwrap_or_default().to_owned(),
            )),
            ("epoch", _) => Err(EngineError::Unavailable(
                "redis: the log was replaced (flushed, or failed over); this node is moving to the new one, retry".into(),
            )),
            _ => Err(malformed("append")),
        }
    }

    async fn append(&self, updates: Vec<Update>) -> Result<Vec<Arc<Stored>>, EngineError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        // One deadline for the whole call: script, WAIT, delivery.
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let epoch = self.follow.borrow().epoch.clone();
        let generation = self.waiters.lock().generation;
        let last = self.run_append_until(&epoch, &updates, deadline).await?;
        if self.config.wait_replicas > 0 {
            self.wait_replicas(deadline).await?;
        }
        // Delivered by this node's tail, in the log's order.
        super::waiters::delivered(
            &self.waiters,
            last,
            generation,
            deadline,
            &self.closed,
            ("redis", self.config.timeout),
            updates,
        )
        .await
    }

    fn no_answer(&self) -> EngineError {
        EngineError::Unavailable(format!("redis: no answer within {:?}", self.config.timeout))
    }

    async fn wait_replicas(&self, deadline: tokio::time::Instant) -> Result<(), EngineError> {
        let want = self.config.wait_replicas;
        let mut conn = self.append_conn.as_ref().unwrap_or(&self.conn).clone();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let acked: i64 = tokio::time::timeout_at(
            deadline,
            redis::cmd("WAIT")
                .arg(want)
                .arg((left.as_millis() as u64).saturating_sub(50).max(1))
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| self.no_answer())?
        .map_err(unavailable)?;
        if acked < i64::from(want) {
            return Err(EngineError::Unavailable(format!(
                "redis: stored on the primary, but only {acked} of {want} replicas confirmed it (a retry with the same id answers 409)"
            )));
        }
        Ok(())
    }

    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Arc<Stored>>, EngineError> {
        // Lua numbers are doubles: positions stay far below 2^53.
        if limit == 0 || after >= 1 << 53 {
            return Ok(Vec::new());
        }
        let limit = limit.min(1 << 20);
        let epoch = self.follow.borrow().epoch.clone();
        let mut conn = self.conn.clone();
        let reply: Value = self
            .bounded(async {
                self.scripts
                    .read
                    .key(&self.keys.meta)
                    .key(&self.keys.log)
                    .arg(&*epoch)
                    .arg(after)
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        match tagged(&reply)? {
            ("ok", entries) => decode_entries(entries),
            ("epoch", _) => Err(EngineError::Unavailable(
                "redis: the log was replaced; this node is moving to the new one".into(),
            )),
            _ => Err(malformed("read")),
        }
    }

    async fn resolve(&self, id: &str) -> Result<Option<Position>, EngineError> {
        let mut conn = self.conn.clone();
        let pos: Option<u64> = self
            .bounded(async {
                redis::cmd("HGET")
                    .arg(&self.keys.ids)
                    .arg(id)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(pos)
    }

    async fn bounds(&self) -> Result<Bounds, EngineError> {
        if self.tail_lost.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable(
                "redis: not following the log (reconnecting)".into(),
            ));
        }
        let mut conn = self.conn.clone();
        let (seq, first): (Option<u64>, Option<u64>) = self
            .bounded(async {
                redis::cmd("HMGET")
                    .arg(&self.keys.meta)
                    .arg("seq")
                    .arg("first")
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let last = seq.unwrap_or(0);
        let first = first.unwrap_or(1);
        Ok(Bounds {
            first: (last >= first).then_some(first),
            last,
        })
    }

    /// Applies `max_age` while nobody appends.
    async fn trim_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let epoch = self.follow.borrow().epoch.clone();
            if let Err(e) = self.run_append(&epoch, &[]).await {
                tracing::debug!(engine = "redis", "retention pass failed: {e}");
            }
        }
    }
}

impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn start(&self, sink: Arc<dyn Sink>) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut tasks = self.inner.tasks.lock();
        tasks.push(tokio::spawn(tail::run(self.inner.clone(), sink)));
        if self.inner.config.max_age.is_some() {
            tasks.push(tokio::spawn(self.inner.clone().trim_loop()));
        }
        tasks.push(tokio::spawn(
            self.inner.presence.clone().run(self.inner.stop.clone()),
        ));
    }

    fn append(&self, updates: Vec<Update>) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>> {
        self.inner.append(updates).boxed()
    }

    fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>> {
        self.inner.read_after(after, limit).boxed()
    }

    fn resolve(&self, id: &str) -> BoxFuture<'_, Result<Option<Position>, EngineError>> {
        let id = id.to_owned();
        async move { self.inner.resolve(&id).await }.boxed()
    }

    fn bounds(&self) -> BoxFuture<'_, Result<Bounds, EngineError>> {
        self.inner.bounds().boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        async move {
            if self.inner.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            // Stop the tail and the presence writer first, so no refresh
            // puts this node back after it left.
            self.inner.stop.cancel();
            let tasks = std::mem::take(&mut *self.inner.tasks.lock());
            for t in tasks {
                let _ = t.await;
            }
            self.inner.presence.leave().await;
            Ok(())
        }
        .boxed()
    }

    fn directory(&self) -> Option<Arc<dyn super::Directory>> {
        Some(Arc::new(self.inner.presence.clone()))
    }

    fn lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        async move {
            let inner = &self.inner;
            let mut conn = inner.conn.clone();
            let held: i64 = inner
                .bounded(async {
                    inner
                        .scripts
                        .lease
                        .key(inner.keys.lease(name))
                        .arg(holder)
                        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
                        .invoke_async(&mut conn)
                        .await
                        .map_err(unavailable)
                })
                .await?;
            Ok(held == 1)
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        async move {
            let inner = &self.inner;
            let mut conn = inner.conn.clone();
            let _: i64 = inner
                .bounded(async {
                    inner
                        .scripts
                        .release
                        .key(inner.keys.lease(name))
                        .arg(holder)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(unavailable)
                })
                .await?;
            Ok(())
        }
        .boxed()
    }
}
