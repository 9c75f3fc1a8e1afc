//! The `postgres` engine: herald nodes share one PostgreSQL (13 or
//! later), any node takes a publish, every node delivers it, a client
//! resumes on any node, and an application publishes inside its own
//! transactions with `herald_publish(...)`.
//!
//! - `schema.rs`: the tables of a namespace (one PostgreSQL schema),
//!   created and versioned at start; why positions are in commit order;
//!   `herald_publish`; the NOTIFY trigger.
//! - `writer.rs`: appends are grouped, one statement per group: it takes
//!   the next positions from `meta` (checking the epoch this node follows)
//!   and inserts the rows; a duplicate id violates the unique index
//!   (`409`, for the one append that carries it).
//! - `tail.rs`: each node reads new rows on a connection of its own,
//!   woken by NOTIFY and polling, and checks the log's identity in the same
//!   snapshot; an append returns once its node delivered it.
//! - `presence.rs`: subscriptions across nodes.
//! - Retention (count, age, bytes) runs every second on one node at a time
//!   (a try-lock), deleting the oldest rows.
//!
//! Behind PgBouncer in transaction mode LISTEN does not work: the tail
//! then relies on polling alone (every [`PostgresConfig::poll_interval`],
//! 100 ms by default), so updates arrive up to that much later, and none
//! is lost. Appends and reads use prepared statements, which PgBouncer
//! keeps across transactions only from version 1.21 with
//! `max_prepared_statements` set.

mod config;
pub mod presence;
mod rows;
mod schema;
mod state;
mod tail;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use herald_protocol::Update;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::waiters::Waiters;
use super::{Bounds, Engine, EngineError, Position, Sink, Stored};
pub use config::{PostgresConfig, DEFAULT_NAMESPACE};
use rows::{stored, unavailable, COLUMNS};
pub use schema::SCHEMA_VERSION;
use schema::{migrate, Names};
use state::{Inner, Link, Start};

/// The `postgres` engine. Dropping it stops its background tasks.
pub struct PostgresEngine {
    inner: Arc<Inner>,
    presence: presence::Presence,
}

impl std::fmt::Debug for PostgresEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEngine")
            .field("namespace", &self.inner.config.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresEngine {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl PostgresEngine {
    /// Connects, creates or checks the namespace's schema, and returns an
    /// engine that will deliver from the log's current end once started.
    ///
    /// # Errors
    /// A server that does not answer within the timeout, a refused login,
    /// or a schema newer than this build.
    pub async fn connect(config: PostgresConfig) -> Result<Self, EngineError> {
        let names = Names::new(&config.namespace);
        let (mut client, _) = state::connect(&config.url, config.timeout).await?;
        tokio::time::timeout(config.timeout * 5, migrate(&mut client, &names))
            .await
            .map_err(|_| {
                EngineError::Unavailable("postgres: the schema was not ready in time".into())
            })??;
        let link = Arc::new(Link::new(&config.url, config.timeout));
        let node = config
            .node
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let presence = presence::Presence::new(names.clone(), node, link.clone(), config.timeout);
        let (writer_tx, writer_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            names,
            writer: writer_tx,
            link: Link::new(&config.url, config.timeout),
            writer_link: Link::new(&config.url, config.timeout),
            epoch: Mutex::new(Arc::from("")),
            start: Mutex::new(Start {
                delivered: 0,
                last_id: None,
            }),
            waiters: Mutex::new(Waiters::default()),
            tail_up: AtomicBool::new(false),
            tail_lost: AtomicBool::new(false),
            started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            config,
        });
        let (epoch, last) = inner
            .head(&client)
            .await?
            .ok_or_else(|| EngineError::Unavailable("postgres: the log has no identity".into()))?;
        let last_id = inner.id_at(&client, last).await?;
        *inner.epoch.lock() = Arc::from(epoch.as_str());
        *inner.start.lock() = Start {
            delivered: last,
            last_id,
        };
        inner.waiters.lock().delivered = last;
        let writer = tokio::spawn(writer::run(inner.clone(), writer_rx, inner.stop.clone()));
        inner.tasks.lock().push(writer);
        Ok(Self { inner, presence })
    }

    /// This node's share of the subscriptions directory.
    pub fn presence(&self) -> &presence::Presence {
        &self.presence
    }

    /// Drops the namespace's schema (its log and directory). For tests and
    /// for retiring a namespace; nodes still using it see a gap.
    ///
    /// # Errors
    /// The server refused or did not answer.
    pub async fn destroy_namespace(&self) -> Result<(), EngineError> {
        let client = self.inner.link.client().await?;
        self.inner
            .bounded(async {
                client
                    .batch_execute(&format!(
                        "DROP SCHEMA IF EXISTS {} CASCADE",
                        self.inner.names.schema
                    ))
                    .await
                    .map_err(unavailable)
            })
            .await
    }
}

impl Inner {
    async fn append(&self, updates: Vec<Update>) -> Result<Vec<Arc<Stored>>, EngineError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let epoch = self.epoch.lock().clone();
        let generation = self.waiters.lock().generation;
        let updates = Arc::new(updates);
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send(state::Request {
                updates: updates.clone(),
                epoch,
                reply,
            })
            .map_err(|_| EngineError::Closed)?;
        let last = tokio::time::timeout_at(deadline, answer)
            .await
            .map_err(|_| self.no_answer())?
            .map_err(|_| EngineError::Closed)??;
        let updates = Arc::try_unwrap(updates).unwrap_or_else(|shared| (*shared).clone());
        super::waiters::delivered(
            &self.waiters,
            last,
            generation,
            deadline,
            &self.closed,
            ("postgres", self.config.timeout),
            updates,
        )
        .await
    }

    fn no_answer(&self) -> EngineError {
        EngineError::Unavailable(format!(
            "postgres: no answer within {:?}",
            self.config.timeout
        ))
    }

    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Arc<Stored>>, EngineError> {
        if limit == 0 || after >= i64::MAX as Position {
            return Ok(Vec::new());
        }
        let limit = limit.min(1 << 20) as i64;
        let epoch = self.epoch.lock().clone();
        self.bounded(async {
            let client = self.link.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT m.epoch, u.* FROM {meta} m LEFT JOIN LATERAL \
                         (SELECT {COLUMNS} FROM {updates} WHERE position > $1 ORDER BY position LIMIT $2) u ON true",
                        meta = self.names.meta,
                        updates = self.names.updates
                    ),
                    &[&(after as i64), &limit],
                )
                .await
                .map_err(unavailable)?;
            if rows.first().map(|r| r.get::<_, String>(0)).as_deref() != Some(&*epoch) {
                return Err(EngineError::Unavailable(
                    "postgres: the log was replaced; this node is moving to the new one".into(),
                ));
            }
            rows.iter()
                .filter(|r| r.get::<_, Option<i64>>(1).is_some())
                .map(|r| stored(r, 1))
                .collect()
        })
        .await
    }

    /// See [`Engine::lease`]. The table is made on first use (a schema
    /// made before leases existed has none), times come from the
    /// server's clock.
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, EngineError> {
        let take = format!(
            "INSERT INTO {leases} (name, holder, expires)
                 VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires
                 WHERE {leases}.holder = EXCLUDED.holder OR {leases}.expires < clock_timestamp()
             RETURNING holder",
            leases = self.names.leases
        );
        let ms = ttl.as_secs_f64() * 1000.0;
        self.bounded(async {
            let client = self.link.client().await?;
            let row = match client.query_opt(&take, &[&name, &holder, &ms]).await {
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    // Two nodes creating it together: one may fail, and
                    // the table is there all the same.
                    let _ = client
                        .batch_execute(&format!(
                            "CREATE TABLE IF NOT EXISTS {} (
                                 name text PRIMARY KEY,
                                 holder text NOT NULL,
                                 expires timestamptz NOT NULL)",
                            self.names.leases
                        ))
                        .await;
                    client.query_opt(&take, &[&name, &holder, &ms]).await
                }
                other => other,
            }
            .map_err(unavailable)?;
            Ok(row.is_some())
        })
        .await
    }

    /// See [`Engine::release`].
    async fn release(&self, name: &str, holder: &str) -> Result<(), EngineError> {
        let give_back = format!(
            "DELETE FROM {} WHERE name = $1 AND holder = $2",
            self.names.leases
        );
        self.bounded(async {
            let client = self.link.client().await?;
            match client.execute(&give_back, &[&name, &holder]).await {
                Ok(_) => Ok(()),
                // No table: no lease was ever taken.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    Ok(())
                }
                Err(e) => Err(unavailable(e)),
            }
        })
        .await
    }

    async fn resolve(&self, id: &str) -> Result<Option<Position>, EngineError> {
        self.bounded(async {
            let client = self.link.client().await?;
            let row = client
                .query_opt(
                    &format!("SELECT position FROM {} WHERE id = $1", self.names.updates),
                    &[&id],
                )
                .await
                .map_err(unavailable)?;
            Ok(row.map(|r| r.get::<_, i64>(0).max(0) as Position))
        })
        .await
    }

    async fn bounds(&self) -> Result<Bounds, EngineError> {
        if self.tail_lost.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable(
                "postgres: not following the log (reconnecting)".into(),
            ));
        }
        self.bounded(async {
            let client = self.link.client().await?;
            let row = client
                .query_one(
                    &format!(
                        "SELECT (SELECT min(position) FROM {}), (SELECT last FROM {})",
                        self.names.updates, self.names.meta
                    ),
                    &[],
                )
                .await
                .map_err(unavailable)?;
            let first: Option<i64> = row.get(0);
            let last: Option<i64> = row.get(1);
            Ok(Bounds {
                first: first.map(|f| f.max(1) as Position),
                last: last.unwrap_or(0).max(0) as Position,
            })
        })
        .await
    }

    /// Applies retention every second, on one node at a time.
    async fn retention_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.bounded(self.trim()).await {
                tracing::debug!(engine = "postgres", "retention pass failed: {e}");
            }
        }
    }

    async fn trim(&self) -> Result<(), EngineError> {
        let client = self.link.client().await?;
        let n = &self.names;
        let lock = format!("{}:retention", n.lock_key);
        let mut sql = format!(
            "DO $$ BEGIN IF pg_try_advisory_xact_lock(hashtext('{}')) THEN ",
            lock.replace('\'', "''")
        );
        if let Some(max) = self.config.max_updates {
            sql.push_str(&format!(
                "DELETE FROM {u} WHERE position <= (SELECT last FROM {m}) - {max}; ",
                u = n.updates,
                m = n.meta
            ));
        }
        if let Some(age) = self.config.max_age {
            sql.push_str(&format!(
                "DELETE FROM {u} d USING (SELECT position FROM {u} ORDER BY position LIMIT 10000) o \
                 WHERE d.position = o.position AND d.at < now() - interval '{} milliseconds'; ",
                age.as_millis(),
                u = n.updates
            ));
        }
        if let Some(bytes) = self.config.max_bytes {
            sql.push_str(&format!(
                "DELETE FROM {u} WHERE position <= (SELECT position FROM \
                 (SELECT position, sum(octet_length(data) + octet_length(id) + 64) OVER (ORDER BY position DESC) AS total FROM {u}) t \
                 WHERE total > {bytes} ORDER BY position DESC LIMIT 1); ",
                u = n.updates
            ));
        }
        sql.push_str("END IF; END $$;");
        client.batch_execute(&sql).await.map_err(unavailable)
    }
}

impl Engine for PostgresEngine {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn start(&self, sink: Arc<dyn Sink>) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut tasks = self.inner.tasks.lock();
        tasks.push(tokio::spawn(tail::run(self.inner.clone(), sink)));
        let c = &self.inner.config;
        if c.max_updates.is_some() || c.max_age.is_some() || c.max_bytes.is_some() {
            tasks.push(tokio::spawn(self.inner.clone().retention_loop()));
        }
        tasks.push(tokio::spawn(
            self.presence.clone().run(self.inner.stop.clone()),
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
            self.inner.stop.cancel();
            let tasks = std::mem::take(&mut *self.inner.tasks.lock());
            for t in tasks {
                let _ = t.await;
            }
            self.presence.leave().await;
            Ok(())
        }
        .boxed()
    }

    fn directory(&self) -> Option<Arc<dyn super::Directory>> {
        Some(Arc::new(self.presence.clone()))
    }

    fn lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        self.inner.lease(name, holder, ttl).boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        self.inner.release(name, holder).boxed()
    }
}
