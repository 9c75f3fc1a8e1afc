//! The `nats` engine: herald nodes share one NATS server (2.9 or later)
//! with JetStream; any node takes a publish, every node delivers it, and a
//! client resumes on any node.
//!
//! Each namespace has three streams:
//!
//! - `HERALD_<ns>_LOG`, subject `herald.<ns>.log`: the update log. The
//!   stream sequence orders it; each message holds one append group (one
//!   or more whole appends), and its `Herald-First` header gives the
//!   position of its first update. `writer.rs` explains why a group is one
//!   message and how positions stay gapless across nodes.
//! - `HERALD_<ns>_IDS`, one subject per id: reservations that keep ids
//!   unique across nodes and resolve an id with two direct gets
//!   (`writer.rs`).
//! - `HERALD_<ns>_DIR`: the subscriptions of every node (`presence.rs`).
//!
//! `tail.rs` follows the log with an ordered consumer. Retention
//! (`retention.rs`) removes whole log messages by count and age, and the
//! log stream's `MaxBytes` bounds its size. A namespace with a `.` in it
//! is spelled in hex in stream and subject names.

mod config;
pub mod presence;
mod retention;
mod state;
mod tail;
mod writer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream::stream::DirectGetErrorKind;
use futures_util::future::{join_all, BoxFuture, FutureExt};
use herald_protocol::Update;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::waiters::Waiters;
use super::{Bounds, Engine, EngineError, Position, Sink, Stored};
pub use config::{NatsConfig, DEFAULT_NAMESPACE};
use state::{ensure_streams, unavailable, Cursor, Head, Inner, Names};

/// The `nats` engine. Dropping it stops its background tasks.
pub struct NatsEngine {
    inner: Arc<Inner>,
    presence: presence::Presence,
}

impl std::fmt::Debug for NatsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEngine")
            .field("namespace", &self.inner.config.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for NatsEngine {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl NatsEngine {
    /// Connects, creates the namespace's streams when missing, and returns
    /// an engine that will deliver from the log's current end once
    /// started.
    ///
    /// # Errors
    /// A server that does not answer within the timeout, a refused login,
    /// or a server without JetStream.
    pub async fn connect(config: NatsConfig) -> Result<Self, EngineError> {
        let timeout = config.timeout;
        let client = tokio::time::timeout(
            timeout,
            async_nats::ConnectOptions::new()
                .connection_timeout(timeout)
                .request_timeout(Some(timeout))
                .connect(config.url.as_str()),
        )
        .await
        .map_err(|_| EngineError::Unavailable(format!("nats: no answer within {timeout:?}")))?
        .map_err(unavailable)?;
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(timeout);
        let names = Names::new(&config.namespace);
        tokio::time::timeout(timeout * 2, ensure_streams(&js, &names, &config))
            .await
            .map_err(|_| {
                EngineError::Unavailable("nats: the streams were not ready in time".into())
            })??;
        let log = js
            .get_stream_no_info(&names.log)
            .await
            .map_err(unavailable)?;
        let ids = js
            .get_stream_no_info(&names.ids)
            .await
            .map_err(unavailable)?;
        let dir = js
            .get_stream_no_info(&names.dir)
            .await
            .map_err(unavailable)?;
        let node = config
            .node
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let presence =
            presence::Presence::new(js.clone(), dir, names.dir_prefix.clone(), node, timeout);
        let (writer_tx, writer_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            names,
            js,
            log,
            ids,
            writer: writer_tx,
            epoch: Mutex::new(Arc::from("")),
            start: Mutex::new(Cursor::default()),
            waiters: Mutex::new(Waiters::default()),
            recent: Mutex::new(VecDeque::new()),
            tail_up: AtomicBool::new(false),
            tail_lost: AtomicBool::new(false),
            started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            config,
        });
        let head = inner.bounded(inner.head()).await?;
        *inner.epoch.lock() = Arc::from(head.epoch.as_str());
        *inner.start.lock() = Cursor {
            seq: head.last_seq,
            delivered: head.end,
        };
        inner.waiters.lock().delivered = head.end;
        let writer = tokio::spawn(writer::run(inner.clone(), writer_rx, inner.stop.clone()));
        inner.tasks.lock().push(writer);
        Ok(Self { inner, presence })
    }

    /// The subject of the lease `name` in the directory stream (subject
    /// tokens take letters, digits, `-` and `_`).
    fn lease_subject(&self, name: &str) -> String {
        let token: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("_{b:02x}")
                }
            })
            .collect();
        format!("{}lease.{token}", self.inner.names.dir_prefix)
    }

    /// The last message of a lease's subject (its holder, and when it
    /// was taken or renewed), if it was ever taken.
    async fn last_lease_message(
        &self,
        subject: &str,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, EngineError> {
        let inner = &self.inner;
        let dir = inner
            .js
            .get_stream_no_info(inner.names.dir.as_str())
            .await
            .map_err(unavailable)?;
        match dir.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// See [`Engine::release`]: an empty holder, written only over this
    /// holder's own message, frees the lease.
    async fn give_lease_back(&self, name: &str, holder: &str) -> Result<(), EngineError> {
        use async_nats::jetstream::context::Publish;
        let subject = self.lease_subject(name);
        let Some(last) = self.last_lease_message(&subject).await? else {
            return Ok(());
        };
        if last.payload != holder.as_bytes() {
            return Ok(());
        }
        let publish = Publish::build()
            .payload(bytes::Bytes::new())
            .expected_last_subject_sequence(last.sequence);
        // Refused only when another took it meanwhile: not ours to free.
        let _ = self
            .inner
            .js
            .send_publish(subject, publish)
            .await
            .map_err(unavailable)?
            .await;
        Ok(())
    }

    /// See [`Engine::lease`]. A lease is a subject of the directory's
    /// stream (one message kept per subject) whose last message names its
    /// holder; it is taken and renewed by a publish that expects the
    /// subject's last sequence, so two nodes asking together cannot both
    /// win. It expires `ttl` after that message's time on the server.
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, EngineError> {
        use async_nats::jetstream::context::{Publish, PublishErrorKind};
        let inner = &self.inner;
        let subject = self.lease_subject(name);
        // The last holder's message carries the server's time; its age is
        // read on this node's clock, so nodes and server keep time (NTP)
        // well within the ttl.
        let last = self.last_lease_message(&subject).await?;
        let expected = match &last {
            None => 0,
            Some(m) => {
                let held_by = String::from_utf8_lossy(&m.payload);
                let age = time::OffsetDateTime::now_utc() - m.time;
                // An empty holder: given back.
                if !held_by.is_empty() && held_by != holder && age < ttl {
                    return Ok(false);
                }
                m.sequence
            }
        };
        let publish = Publish::build()
            .payload(bytes::Bytes::from(holder.to_owned()))
            .expected_last_subject_sequence(expected);
        let ack = inner
            .js
            .send_publish(subject, publish)
            .await
            .map_err(unavailable)?
            .await;
        match ack {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// This node's share of the subscriptions directory.
    pub fn presence(&self) -> &presence::Presence {
        &self.presence
    }

    /// Deletes the namespace's streams (its log, ids and directory). For
    /// tests and for retiring a namespace; nodes still using it see a gap.
    ///
    /// # Errors
    /// The server refused or did not answer.
    pub async fn destroy_namespace(&self) -> Result<(), EngineError> {
        let n = &self.inner.names;
        self.inner
            .bounded(async {
                for name in [&n.log, &n.ids, &n.dir] {
                    match self.inner.js.delete_stream(name).await {
                        Ok(_) => {}
                        Err(e) if e.to_string().contains("not found") => {}
                        Err(e) => return Err(unavailable(e)),
                    }
                }
                Ok(())
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
                reply: Some(reply),
            })
            .map_err(|_| EngineError::Closed)?;
        let last = tokio::time::timeout_at(deadline, answer)
            .await
            .map_err(|_| {
                EngineError::Unavailable(format!(
                    "nats: no answer within {:?}",
                    self.config.timeout
                ))
            })?
            .map_err(|_| EngineError::Closed)??;
        let updates = Arc::try_unwrap(updates).unwrap_or_else(|shared| (*shared).clone());
        super::waiters::delivered(
            &self.waiters,
            last,
            generation,
            deadline,
            &self.closed,
            ("nats", self.config.timeout),
            updates,
        )
        .await
    }

    /// The log as this node follows it: another log is `Unavailable`
    /// until the tail moves to it.
    async fn current_head(&self) -> Result<Head, EngineError> {
        let head = self.head().await?;
        if *head.epoch != **self.epoch.lock() {
            return Err(EngineError::Unavailable(
                "nats: the log was replaced; this node is moving to the new one".into(),
            ));
        }
        Ok(head)
    }

    /// The first log message holding a position at or after `pos`.
    async fn locate(&self, pos: Position, head: &Head) -> Result<u64, EngineError> {
        {
            let recent = self.recent.lock();
            if recent.front().is_some_and(|&(first, _)| first <= pos) {
                let i = recent.partition_point(|&(first, _)| first <= pos);
                return Ok(recent[i - 1].1);
            }
        }
        // The smallest sequence whose message ends at or after `pos`; a
        // message removed meanwhile counts as before it.
        let (mut lo, mut hi) = (head.first_seq.max(1), head.last_seq);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let after = self
                .group_from(mid, hi)
                .await?
                .is_some_and(|g| g.end() >= pos);
            if after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<Arc<Stored>>, EngineError> {
        if limit == 0 || after == Position::MAX {
            return Ok(Vec::new());
        }
        let head = self.current_head().await?;
        if after >= head.end || head.last_seq == 0 {
            return Ok(Vec::new());
        }
        let mut seq = self.locate(after + 1, &head).await?;
        let mut out = Vec::new();
        // Log messages are read by direct get, several at once.
        let window = limit.clamp(1, 64) as u64;
        while out.len() < limit && seq <= head.last_seq {
            let hi = (seq + window - 1).min(head.last_seq);
            for g in join_all((seq..=hi).map(|s| self.group_at(s))).await {
                let Some(g) = g? else { continue };
                for s in g.updates()? {
                    if s.position > after && out.len() < limit {
                        out.push(s);
                    }
                }
            }
            seq = hi + 1;
        }
        Ok(out)
    }

    async fn resolve(&self, id: &str) -> Result<Option<Position>, EngineError> {
        let found = self
            .ids
            .direct_get_last_for_subject(self.names.id_subject(id))
            .await;
        let reservation = match found {
            Ok(m) => m.payload,
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        let epoch = self.epoch.lock().clone();
        let Some(seq) = writer::reserved_seq(&epoch, &reservation) else {
            return Ok(None);
        };
        match self.group_at(seq).await? {
            Some(g) => g.find(id),
            None => Ok(None),
        }
    }

    async fn bounds(&self) -> Result<Bounds, EngineError> {
        if self.tail_lost.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable(
                "nats: not following the log (reconnecting)".into(),
            ));
        }
        let head = self.current_head().await?;
        let mut first = None;
        // A marker (no updates) may lead the log: look a little further.
        let mut seq = head.first_seq.max(1);
        while seq <= head.last_seq && seq < head.first_seq + 8 {
            if let Some(g) = self.group_at(seq).await? {
                if g.count > 0 {
                    first = Some(g.first);
                    break;
                }
            }
            seq += 1;
        }
        Ok(Bounds {
            first,
            last: head.end,
        })
    }
}

impl Engine for NatsEngine {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn start(&self, sink: Arc<dyn Sink>) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut tasks = self.inner.tasks.lock();
        tasks.push(tokio::spawn(tail::run(self.inner.clone(), sink)));
        let c = &self.inner.config;
        if c.max_updates.is_some() || c.max_age.is_some() || c.max_bytes.is_some() {
            tasks.push(tokio::spawn(retention::run(self.inner.clone())));
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
        async move {
            self.inner
                .bounded(self.inner.read_after(after, limit))
                .await
        }
        .boxed()
    }

    fn resolve(&self, id: &str) -> BoxFuture<'_, Result<Option<Position>, EngineError>> {
        let id = id.to_owned();
        async move { self.inner.bounded(self.inner.resolve(&id)).await }.boxed()
    }

    fn bounds(&self) -> BoxFuture<'_, Result<Bounds, EngineError>> {
        async move { self.inner.bounded(self.inner.bounds()).await }.boxed()
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
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        self.take_lease(name, holder, ttl).boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        self.give_lease_back(name, holder).boxed()
    }
}
