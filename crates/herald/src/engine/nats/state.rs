//! The state every part of the `nats` engine shares: the streams and
//! subjects of a namespace, how an append group is laid out in one log
//! message, and where this node's tail is.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, Stream};
use bytes::Bytes;
use herald_protocol::Update;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::config::NatsConfig;
use crate::engine::records::{decode_record, encode_record, now_ms, set_record_ts};
use crate::engine::waiters::Waiters;
use crate::engine::{EngineError, Position, Stored};

/// The header carrying the position of a log message's first update.
pub(crate) const FIRST: &str = "Herald-First";
/// The header carrying how many updates a log message holds (0 for a
/// marker, which only carries the numbering on; see `retention.rs`).
pub(crate) const COUNT: &str = "Herald-Count";

/// The streams and subjects of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The log: one message per append group, one subject.
    pub log: String,
    pub log_subject: String,
    /// Id reservations: one subject per id, its last message names the
    /// log message holding that id.
    pub ids: String,
    ids_prefix: String,
    /// The subscriptions directory.
    pub dir: String,
    pub dir_prefix: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        // Stream names and subject tokens take letters, digits, `-` and
        // `_`; a namespace with a `.` is spelled in hex.
        let token = if namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            namespace.to_owned()
        } else {
            let hex: String = namespace.bytes().map(|b| format!("{b:02x}")).collect();
            format!("x{hex}")
        };
        Self {
            log: format!("HERALD_{token}_LOG"),
            log_subject: format!("herald.{token}.log"),
            ids: format!("HERALD_{token}_IDS"),
            ids_prefix: format!("herald.{token}.ids."),
            dir: format!("HERALD_{token}_DIR"),
            dir_prefix: format!("herald.{token}.dir."),
        }
    }

    /// The reservation subject of an id: one token, whatever the id holds.
    pub fn id_subject(&self, id: &str) -> String {
        use base64::Engine as _;
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        format!("{}i{enc}", self.ids_prefix)
    }

    pub fn ids_filter(&self) -> String {
        format!("{}*", self.ids_prefix)
    }
}

/// A failure to reach or use the server: retry later.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("nats: {e}"))
}

/// Lays out an append group as one log message's payload: for each update
/// its length (LEB128) and its stored record (`records.rs`).
pub(crate) fn encode_group<'a>(updates: impl Iterator<Item = &'a Update>) -> Bytes {
    let ts = now_ms();
    let mut out = Vec::new();
    for u in updates {
        let mut rec = encode_record(u);
        set_record_ts(&mut rec, ts);
        let mut n = rec.len() as u64;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(&rec);
    }
    Bytes::from(out)
}

/// The records of a log message's payload.
fn records(payload: &[u8]) -> Result<Vec<&[u8]>, EngineError> {
    let bad = || EngineError::Unavailable("nats: a log message could not be read".into());
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let mut len: u64 = 0;
        let mut shift = 0;
        loop {
            let b = *payload.get(at).ok_or_else(bad)?;
            at += 1;
            if shift > 56 {
                return Err(bad());
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = at.checked_add(len as usize).ok_or_else(bad)?;
        out.push(payload.get(at..end).ok_or_else(bad)?);
        at = end;
    }
    Ok(out)
}

/// One log message: where its updates start in the engine's order and how
/// many it holds.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub seq: u64,
    pub first: Position,
    pub count: u64,
    /// Server time of the append, ns since the Unix epoch.
    pub time_ns: i128,
    pub payload: Bytes,
}

impl Group {
    pub fn from_message(m: StreamMessage) -> Result<Self, EngineError> {
        let (first, count) = span(&m.headers)?;
        Ok(Self {
            seq: m.sequence,
            first,
            count,
            time_ns: m.time.unix_timestamp_nanos(),
            payload: m.payload,
        })
    }

    /// The position of its last update (`first - 1` for a marker).
    pub fn end(&self) -> Position {
        self.first + self.count - 1
    }

    pub fn updates(&self) -> Result<Vec<Arc<Stored>>, EngineError> {
        let recs = records(&self.payload)?;
        if recs.len() as u64 != self.count {
            return Err(EngineError::Unavailable(
                "nats: a log message holds another count of updates than it says".into(),
            ));
        }
        recs.into_iter()
            .zip(self.first..)
            .map(|(r, pos)| {
                let (_, u) = decode_record(r).map_err(unavailable)?;
                Ok(Arc::new(Stored::new(pos, u)))
            })
            .collect()
    }

    /// The position of the update with this id, if it holds one.
    pub fn find(&self, id: &str) -> Result<Option<Position>, EngineError> {
        for (r, pos) in records(&self.payload)?.into_iter().zip(self.first..) {
            if crate::engine::records::record_id(r).map_err(unavailable)? == id {
                return Ok(Some(pos));
            }
        }
        Ok(None)
    }
}

/// `(first, count)` from a log message's headers.
pub(crate) fn span(headers: &async_nats::HeaderMap) -> Result<(Position, u64), EngineError> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                EngineError::Unavailable(format!("nats: a log message lacks its {name} header"))
            })
    };
    let (first, count) = (num(FIRST)?, num(COUNT)?);
    // Bounds no herald message comes near: `first + count` never
    // overflows.
    if first == 0 || first > 1 << 62 || count > 1 << 32 {
        return Err(EngineError::Unavailable(format!(
            "nats: a log message claims positions {first} and {count} more"
        )));
    }
    Ok((first, count))
}

/// One append waiting for the writer: its updates, the log it expects,
/// and where its last position goes.
pub(crate) struct Request {
    pub updates: Arc<Vec<Update>>,
    pub epoch: Arc<str>,
    /// Taken when answered.
    pub reply: Option<oneshot::Sender<Result<Position, EngineError>>>,
}

/// Where this node's tail is.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cursor {
    /// The log message delivered last (0: none).
    pub seq: u64,
    /// The position delivered last.
    pub delivered: Position,
}

/// Log messages this node delivered lately, `(first position, seq)`, to
/// find where a read starts without asking the server.
pub(crate) const RECENT: usize = 1 << 16;

pub(crate) struct Inner {
    pub config: NatsConfig,
    pub names: Names,
    pub js: Context,
    pub log: Stream<()>,
    pub ids: Stream<()>,
    /// Appends, to the writer.
    pub writer: tokio::sync::mpsc::UnboundedSender<Request>,
    /// The log this node follows: its stream's creation time.
    pub epoch: Mutex<Arc<str>>,
    pub start: Mutex<Cursor>,
    pub waiters: Mutex<Waiters>,
    pub recent: Mutex<VecDeque<(Position, u64)>>,
    pub tail_up: AtomicBool,
    pub tail_lost: AtomicBool,
    pub started: AtomicBool,
    pub closed: AtomicBool,
    pub stop: CancellationToken,
    pub tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The log's identity and end.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub epoch: String,
    pub first_seq: u64,
    /// The last log message (0: none ever).
    pub last_seq: u64,
    /// The last position ever given.
    pub end: Position,
}

impl Inner {
    /// Runs a call within the timeout.
    pub async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        tokio::time::timeout(self.config.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(EngineError::Unavailable(format!(
                    "nats: no answer within {:?}",
                    self.config.timeout
                )))
            })
    }

    /// The log message at `seq`, `None` when there is none (removed, not
    /// written yet, or not herald's).
    pub async fn group_at(&self, seq: u64) -> Result<Option<Group>, EngineError> {
        if seq == 0 {
            return Ok(None);
        }
        match self.log.direct_get(seq).await {
            // One another client published on the log's subject is no
            // update of herald's.
            Ok(m) => Ok(Group::from_message(m).ok()),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The first log message herald wrote at or after `seq` (looking at a
    /// few, up to `hi`): what a search by sequence probes.
    pub async fn group_from(&self, seq: u64, hi: u64) -> Result<Option<Group>, EngineError> {
        for s in seq..=hi.min(seq + 8) {
            if let Some(g) = self.group_at(s).await? {
                return Ok(Some(g));
            }
        }
        Ok(None)
    }

    /// The last log message's sequence and end position, in one direct get
    /// (what the writer needs after another node appended).
    pub async fn end(&self) -> Result<(u64, Position), EngineError> {
        match self
            .log
            .direct_get_last_for_subject(&self.names.log_subject)
            .await
        {
            Ok(m) => match Group::from_message(m) {
                Ok(g) => Ok((g.seq, g.end())),
                // Not herald's: the end is further back.
                Err(_) => {
                    let h = self.head().await?;
                    Ok((h.last_seq, h.end))
                }
            },
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => {
                let h = self.head().await?;
                Ok((h.last_seq, h.end))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The end position of the log whose last message is `last_seq`: the
    /// end of the last message herald wrote among the last few (one
    /// published on the log's subject by another client is passed over).
    async fn end_at(&self, last_seq: u64) -> Result<Position, EngineError> {
        if last_seq == 0 {
            return Ok(0);
        }
        for seq in (last_seq.saturating_sub(64).max(1)..=last_seq).rev() {
            match self.log.direct_get(seq).await {
                Ok(m) => match Group::from_message(m) {
                    Ok(g) => return Ok(g.end()),
                    Err(_) => continue,
                },
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(EngineError::Unavailable(
            "nats: the log's last message is gone (purged by hand?): positions cannot go on".into(),
        ))
    }

    /// The log's identity and end, creating the streams when missing.
    pub async fn head(&self) -> Result<Head, EngineError> {
        let info = self.log.get_info().await;
        let info = match info {
            Ok(i) => i,
            Err(_) => {
                ensure_streams(&self.js, &self.names, &self.config).await?;
                self.log.get_info().await.map_err(unavailable)?
            }
        };
        let epoch = info.created.unix_timestamp_nanos().to_string();
        let last_seq = info.state.last_sequence;
        let end = self.end_at(last_seq).await?;
        Ok(Head {
            epoch,
            first_seq: info.state.first_sequence,
            last_seq,
            end,
        })
    }
}

/// Creates the namespace's streams when they do not exist.
pub(crate) async fn ensure_streams(
    js: &Context,
    names: &Names,
    config: &NatsConfig,
) -> Result<(), EngineError> {
    let log = stream::Config {
        name: names.log.clone(),
        subjects: vec![names.log_subject.clone()],
        storage: stream::StorageType::File,
        allow_direct: true,
        discard: stream::DiscardPolicy::Old,
        max_bytes: config
            .max_bytes
            .map_or(-1, |b| b.min(i64::MAX as u64) as i64),
        description: Some("herald: the update log (one message per append group)".into()),
        ..Default::default()
    };
    let ids = stream::Config {
        name: names.ids.clone(),
        subjects: vec![names.ids_filter()],
        storage: stream::StorageType::File,
        allow_direct: true,
        max_messages_per_subject: 1,
        description: Some("herald: which log message holds each id".into()),
        ..Default::default()
    };
    let dir = stream::Config {
        name: names.dir.clone(),
        subjects: vec![format!("{}>", names.dir_prefix)],
        storage: stream::StorageType::File,
        allow_direct: true,
        max_messages_per_subject: 1,
        description: Some("herald: the subscriptions of every node".into()),
        ..Default::default()
    };
    for config in [log, ids, dir] {
        js.get_or_create_stream(config).await.map_err(unavailable)?;
    }
    Ok(())
}
