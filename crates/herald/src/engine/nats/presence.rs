//! The subscriptions directory over NATS, in the namespace's `DIR` stream
//! (one message kept per subject):
//!
//! - `herald.<ns>.dir.alive.<node>`: each node rewrites it every
//!   [`REFRESH`]; its server timestamp says when the node was last alive.
//! - `herald.<ns>.dir.subs.<node>.<key>`: one message per subscription
//!   entry of the node; a removed entry is purged.
//!
//! A node writes its changes in the background, batched: a connect never
//! waits for NATS. After any failure (or when it finds it was reaped) it
//! rewrites all its entries. **A killed node's subscriptions disappear
//! from listings within [`LIVENESS`]** (10 s) of its last refresh.
//! [`Directory::reap`] hands each dead node's entries to exactly one
//! surviving node: claiming a node is a publish on its `alive` subject
//! expecting the dead timestamp's sequence, which only one node can win. A
//! node never reaps itself, and reaps only once its own writes have
//! succeeded for [`LIVENESS`], so after an outage every node first gets its
//! chance to refresh.
//!
//! Times are the server's (message timestamps, compared with this node's
//! own latest one), so clock skew between nodes does not matter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::{Context, Publish, PublishErrorKind};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture, FutureExt};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::state::unavailable;
use crate::engine::{Directory, EngineError};

/// How often a node refreshes its timestamp.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long a node is listed after its last refresh.
pub const LIVENESS: Duration = Duration::from_secs(10);

/// How long a scan waits for its next message.
const SCAN_IDLE: Duration = Duration::from_millis(300);

/// The payload that marks a node claimed by a reaper.
const REAPED: &[u8] = b"reaped";

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
    js: Context,
    dir: Stream<()>,
    prefix: String,
    node: String,
    timeout: Duration,
    entries: Mutex<BTreeMap<u64, String>>,
    pending: Mutex<Vec<Change>>,
    resync: AtomicBool,
    /// The sequence of this node's last `alive` message (0: none yet).
    alive_seq: AtomicU64,
    healthy_since: Mutex<Option<std::time::Instant>>,
    wake: Notify,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// A subject token for a node name: as is when it is letters, digits, `-`
/// and `_`, else in hex.
fn token(node: &str) -> String {
    if !node.is_empty()
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        node.to_owned()
    } else {
        let hex: String = node.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

/// One message of a scan: its subject, sequence, payload and server time
/// (ns since the Unix epoch).
struct Seen {
    subject: String,
    seq: u64,
    payload: Bytes,
    time_ns: i128,
}

impl Presence {
    pub(super) fn new(
        js: Context,
        dir: Stream<()>,
        prefix: String,
        node: String,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(State {
                js,
                dir,
                prefix,
                node: token(&node),
                timeout,
                entries: Mutex::new(BTreeMap::new()),
                pending: Mutex::new(Vec::new()),
                resync: AtomicBool::new(true),
                alive_seq: AtomicU64::new(0),
                healthy_since: Mutex::new(None),
                wake: Notify::new(),
            }),
        }
    }

    /// This node's name in the directory.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Writes changes and refreshes the timestamp until `stop`.
    pub(super) async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let refresh = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => true,
                () = self.inner.wake.notified() => false,
            };
            let s = &self.inner;
            match tokio::time::timeout(s.timeout, s.write(refresh)).await {
                Ok(Ok(())) => {
                    s.healthy_since
                        .lock()
                        .get_or_insert_with(std::time::Instant::now);
                }
                outcome => {
                    let e = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer".to_owned(),
                    };
                    tracing::debug!(engine = "nats", "subscriptions directory not written: {e}");
                    s.resync.store(true, Ordering::Release);
                    *s.healthy_since.lock() = None;
                }
            }
        }
    }

    /// Leaves the directory at once (a clean shutdown).
    pub(super) async fn leave(&self) {
        let s = &self.inner;
        let _ = tokio::time::timeout(s.timeout, async {
            let _ = s.dir.purge().filter(s.subs_of(&s.node, ">")).await;
            let _ = s.dir.purge().filter(s.alive_of(&s.node)).await;
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
    fn alive_of(&self, node: &str) -> String {
        format!("{}alive.{node}", self.prefix)
    }

    fn subs_of(&self, node: &str, key: &str) -> String {
        format!("{}subs.{node}.{key}", self.prefix)
    }

    async fn write(&self, refresh: bool) -> Result<(), EngineError> {
        let mut puts: Vec<(u64, String)> = Vec::new();
        let mut removes: Vec<u64> = Vec::new();
        let resync = self.resync.swap(false, Ordering::AcqRel);
        if resync {
            // The pending changes are in `entries` already.
            self.pending.lock().clear();
            self.dir
                .purge()
                .filter(self.subs_of(&self.node, ">"))
                .await
                .map_err(unavailable)?;
            puts = self
                .entries
                .lock()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect();
        } else {
            let changes = std::mem::take(&mut *self.pending.lock());
            if changes.is_empty() && !refresh {
                return Ok(());
            }
            for c in changes {
                match c {
                    Change::Put(k, v) => puts.push((k, v)),
                    Change::Remove(k) => removes.push(k),
                }
            }
        }
        let mut acks = Vec::with_capacity(puts.len());
        for (k, v) in puts {
            let ack = self
                .js
                .publish(self.subs_of(&self.node, &k.to_string()), Bytes::from(v))
                .await
                .map_err(unavailable)?;
            acks.push(std::future::IntoFuture::into_future(ack));
        }
        for ack in join_all(acks).await {
            ack.map_err(unavailable)?;
        }
        let purges = removes.iter().map(|k| {
            let subject = self.subs_of(&self.node, &k.to_string());
            async move { self.dir.purge().filter(subject).await }
        });
        for p in join_all(purges).await {
            p.map_err(unavailable)?;
        }
        self.refresh().await
    }

    /// Moves this node's timestamp to now. Finding it claimed by a reaper
    /// (cut off too long) makes the next pass write every entry again.
    async fn refresh(&self) -> Result<(), EngineError> {
        let prior = self.alive_seq.load(Ordering::Acquire);
        let mut publish = Publish::build().payload(Bytes::from_static(b"alive"));
        if prior != 0 {
            publish = publish.expected_last_subject_sequence(prior);
        }
        let ack = self
            .js
            .send_publish(self.alive_of(&self.node), publish)
            .await
            .map_err(unavailable)?
            .await;
        let seq = match ack {
            Ok(a) => a.sequence,
            Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => {
                // Reaped while cut off: say so, and write everything again.
                self.resync.store(true, Ordering::Release);
                self.wake.notify_one();
                self.js
                    .publish(self.alive_of(&self.node), Bytes::from_static(b"alive"))
                    .await
                    .map_err(unavailable)?
                    .await
                    .map_err(unavailable)?
                    .sequence
            }
            Err(e) => return Err(unavailable(e)),
        };
        self.alive_seq.store(seq, Ordering::Release);
        Ok(())
    }

    /// The last message of every subject matching `filter`.
    async fn scan(&self, filter: String) -> Result<Vec<Seen>, EngineError> {
        let mut consumer = self
            .dir
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let pending = consumer.info().await.map_err(unavailable)?.num_pending;
        let mut out = Vec::with_capacity(pending as usize);
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        // A subject purged after the count was taken never comes: a short
        // wait for the next message ends the scan too.
        while let Ok(Some(m)) = tokio::time::timeout(SCAN_IDLE, messages.next()).await {
            let m = m.map_err(unavailable)?;
            let info = m.info().map_err(unavailable)?;
            let left = info.pending;
            out.push(Seen {
                subject: m.message.subject.to_string(),
                seq: info.stream_sequence,
                payload: m.message.payload.clone(),
                time_ns: info.published.unix_timestamp_nanos(),
            });
            if left == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// The nodes and their latest timestamps, and the server's "now" (this
    /// node's own latest timestamp).
    async fn nodes(&self) -> Result<(Vec<(String, Seen)>, i128), EngineError> {
        let now = match self
            .dir
            .direct_get_last_for_subject(self.alive_of(&self.node))
            .await
        {
            Ok(m) => Some(m.time.unix_timestamp_nanos()),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => None,
            Err(e) => return Err(unavailable(e)),
        };
        let prefix = self.alive_of("");
        let nodes: Vec<(String, Seen)> = self
            .scan(self.alive_of("*"))
            .await?
            .into_iter()
            .filter_map(|s| Some((s.subject.strip_prefix(&prefix)?.to_owned(), s)))
            .collect();
        let now = now.unwrap_or_else(|| nodes.iter().map(|(_, s)| s.time_ns).max().unwrap_or(0));
        Ok((nodes, now))
    }

    async fn others(&self) -> Result<Vec<String>, EngineError> {
        let (nodes, now) = self.nodes().await?;
        let live: std::collections::HashSet<String> = nodes
            .into_iter()
            .filter(|(n, s)| {
                *n != self.node
                    && &s.payload[..] != REAPED
                    && s.time_ns >= now - LIVENESS.as_nanos() as i128
            })
            .map(|(n, _)| n)
            .collect();
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = format!("{}subs.", self.prefix);
        Ok(self
            .scan(self.subs_of("*", "*"))
            .await?
            .into_iter()
            .filter(|s| {
                s.subject
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.split_once('.'))
                    .is_some_and(|(node, _)| live.contains(node))
            })
            .filter_map(|s| String::from_utf8(s.payload.to_vec()).ok())
            .collect())
    }

    async fn reap(&self) -> Result<Vec<String>, EngineError> {
        let (nodes, now) = self.nodes().await?;
        let mut out = Vec::new();
        for (node, seen) in nodes {
            if node == self.node || seen.time_ns >= now - LIVENESS.as_nanos() as i128 {
                continue;
            }
            // Claim it: only one node's publish expecting this sequence
            // succeeds. (A claim older than LIVENESS is one whose reaper
            // failed before it finished: claimed again.)
            let claim = Publish::build()
                .payload(Bytes::from_static(REAPED))
                .expected_last_subject_sequence(seen.seq);
            let ack = self
                .js
                .send_publish(self.alive_of(&node), claim)
                .await
                .map_err(unavailable)?
                .await;
            match ack {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => continue,
                Err(e) => return Err(unavailable(e)),
            }
            for s in self.scan(self.subs_of(&node, "*")).await? {
                if let Ok(text) = String::from_utf8(s.payload.to_vec()) {
                    out.push(text);
                }
            }
            self.dir
                .purge()
                .filter(self.subs_of(&node, ">"))
                .await
                .map_err(unavailable)?;
            self.dir
                .purge()
                .filter(self.alive_of(&node))
                .await
                .map_err(unavailable)?;
        }
        Ok(out)
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
        let s = &self.inner;
        async move {
            tokio::time::timeout(s.timeout, s.others())
                .await
                .unwrap_or_else(|_| Err(EngineError::Unavailable("nats: no answer".into())))
        }
        .boxed()
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
            let s = &self.inner;
            tokio::time::timeout(s.timeout * 3, s.reap())
                .await
                .unwrap_or_else(|_| Err(EngineError::Unavailable("nats: no answer".into())))
        }
        .boxed()
    }
}
