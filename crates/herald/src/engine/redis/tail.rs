//! Following the shared log: each node reads new entries with `XREAD
//! BLOCK` on a connection of its own (a blocked read would stall every
//! other command on a shared one) and hands them to its sink in position
//! order, once.
//!
//! The tail is the only path to the sink, for this node's appends too:
//! that is what keeps every node's delivery in the one order of the log.
//! While it waits, and each time it reconnects, it checks that it still
//! follows the same history (see "The log's identity" in the engine
//! contract): the epoch, the counter, and where the update it delivered
//! last sits now. Anything else is a gap, signalled before the next
//! delivery.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};

use super::entries::{entries, int, items, text, unavailable, xread_entries, Entry};
use super::state::Inner;
use crate::engine::{EngineError, Position, Sink, Stored};

/// How long one `XREAD` blocks: also how often an idle tail checks the log.
const BLOCK: Duration = Duration::from_secs(1);
/// Most entries read at once.
const BATCH: usize = 1024;

/// The tail's own view of where it is.
struct Cursor {
    delivered: Position,
    /// The id of the update at `delivered`, to recognise its history.
    last_id: Option<String>,
}

/// Follows the log until the engine closes.
pub(super) async fn run(inner: Arc<Inner>, sink: Arc<dyn Sink>) {
    let mut cursor = {
        let f = inner.follow.borrow();
        Cursor {
            delivered: f.delivered,
            last_id: f.start_id.clone(),
        }
    };
    let mut retry = crate::engine::retry::Retry::default();
    while !inner.stop.is_cancelled() {
        let Err(e) = follow(&inner, &sink, &mut cursor).await else {
            return;
        };
        let flags = (&inner.tail_up, &inner.tail_lost);
        if !retry.after("redis", &e, flags, &inner.stop).await {
            return;
        }
    }
}

/// One connection's worth of following: returns `Ok` when the engine
/// closes, an error when the connection fails.
async fn follow(
    inner: &Arc<Inner>,
    sink: &Arc<dyn Sink>,
    cursor: &mut Cursor,
) -> Result<(), EngineError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(inner.config.timeout))
        .set_response_timeout(Some(BLOCK + inner.config.timeout));
    let mut conn = inner
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(unavailable)?;
    verify(inner, sink, &mut conn, cursor).await?;
    if inner.tail_lost.swap(false, Ordering::AcqRel) || !inner.tail_up.swap(true, Ordering::AcqRel)
    {
        inner.tail_up.store(true, Ordering::Release);
        tracing::info!(
            engine = "redis",
            position = cursor.delivered,
            "following the log"
        );
    }
    let mut checked = Instant::now();
    loop {
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&inner.keys.log)
            .arg(format!("{}-0", cursor.delivered));
        let read = xread.query_async::<Value>(&mut conn);
        let reply = tokio::select! {
            () = inner.stop.cancelled() => return Ok(()),
            r = read => r.map_err(unavailable)?,
        };
        let read = xread_entries(&reply)?;
        let ours = inner.follow.borrow().epoch.clone();
        if read
            .iter()
            .any(|e| e.epoch.as_deref().is_some_and(|e| *e != *ours))
        {
            // Entries of another log: it was replaced without this
            // connection noticing. Nothing of it is delivered before the
            // gap is signalled and the new log adopted.
            verify(inner, sink, &mut conn, cursor).await?;
            if *inner.follow.borrow().epoch == *ours {
                let (epoch, seq) = current(inner, &mut conn).await?;
                adopt(
                    inner,
                    sink,
                    &mut conn,
                    cursor,
                    epoch,
                    seq,
                    "the log was replaced",
                )
                .await?;
            }
            checked = Instant::now();
            continue;
        }
        deliver_entries(inner, sink, cursor, read);
        if reply_was_empty(&reply) || checked.elapsed() >= BLOCK {
            verify(inner, sink, &mut conn, cursor).await?;
            checked = Instant::now();
        }
    }
}

fn reply_was_empty(reply: &Value) -> bool {
    matches!(reply, Value::Nil) || items(reply).is_some_and(<[Value]>::is_empty)
}

/// Delivers what was read, in order: a hole before an entry (trimmed
/// before this node read it) or an entry that cannot be read is a gap,
/// signalled before anything after it.
fn deliver_entries(inner: &Inner, sink: &Arc<dyn Sink>, cursor: &mut Cursor, read: Vec<Entry>) {
    let mut batch: Vec<Arc<Stored>> = Vec::with_capacity(read.len());
    for e in read {
        if e.position <= cursor.delivered {
            continue;
        }
        let expected = cursor.delivered + batch.len() as Position + 1;
        let hole = e.position != expected;
        if hole || e.stored.is_err() {
            deliver(inner, sink, cursor, &std::mem::take(&mut batch));
        }
        if hole {
            signal_gap(
                inner,
                sink,
                cursor,
                e.position - 1,
                "updates were trimmed before this node delivered them",
            );
        }
        match e.stored {
            Ok(s) => batch.push(s),
            Err(err) => {
                tracing::error!(engine = "redis", "skipping an entry: {err}");
                signal_gap(
                    inner,
                    sink,
                    cursor,
                    e.position,
                    "an entry could not be read",
                );
            }
        }
    }
    deliver(inner, sink, cursor, &batch);
}

/// Hands entries to the sink (a panicking sink does not stop the tail) and
/// lets the appends waiting for them return.
fn deliver(inner: &Inner, sink: &Arc<dyn Sink>, cursor: &mut Cursor, entries: &[Arc<Stored>]) {
    let Some(last) = entries.last() else { return };
    if std::panic::catch_unwind(AssertUnwindSafe(|| sink.deliver(entries))).is_err() {
        tracing::error!(engine = "redis", "the sink panicked; delivery goes on");
    }
    cursor.delivered = last.position;
    cursor.last_id = Some(last.update.id.clone());
    inner.waiters.lock().delivered(last.position);
}

/// Signals a gap in this log and goes on after `resume_after`: appends
/// waiting for a position in the hole answer `Unavailable` (their update
/// may be what was lost); those past it wait on.
fn signal_gap(
    inner: &Inner,
    sink: &Arc<dyn Sink>,
    cursor: &mut Cursor,
    resume_after: Position,
    reason: &str,
) {
    if std::panic::catch_unwind(AssertUnwindSafe(|| sink.gap(reason))).is_err() {
        tracing::error!(engine = "redis", "the sink panicked on a gap");
    }
    cursor.delivered = resume_after;
    cursor.last_id = None;
    inner.waiters.lock().lost(resume_after);
}

/// The log's epoch and last position now.
async fn current(
    inner: &Inner,
    conn: &mut MultiplexedConnection,
) -> Result<(Arc<str>, Position), EngineError> {
    let (epoch, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
        .arg(&inner.keys.meta)
        .arg("epoch")
        .arg("seq")
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    match epoch {
        Some(e) => Ok((e.into(), seq.unwrap_or(0))),
        None => {
            let (e, seq, _) = inner.init(conn).await?;
            Ok((e, seq))
        }
    }
}

/// Checks that the log is still the history this node follows; signals a
/// gap (and adopts the log as it is now) when it is not.
async fn verify(
    inner: &Arc<Inner>,
    sink: &Arc<dyn Sink>,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor,
) -> Result<(), EngineError> {
    let reply: Value = inner
        .scripts
        .check
        .key(&inner.keys.meta)
        .key(&inner.keys.ids)
        .arg(cursor.last_id.as_deref().unwrap_or(""))
        .invoke_async(conn)
        .await
        .map_err(unavailable)?;
    let [epoch, seq, first, at] =
        items(&reply).ok_or_else(|| super::entries::malformed("check"))?
    else {
        return Err(super::entries::malformed("check"));
    };
    let (epoch, seq, first, at) = (
        text(epoch).unwrap_or_default().to_owned(),
        int(seq).unwrap_or(0).max(0) as Position,
        int(first).unwrap_or(1).max(1) as Position,
        int(at).unwrap_or(-1),
    );
    let ours = inner.follow.borrow().epoch.clone();
    let delivered = cursor.delivered;
    if epoch.is_empty() {
        // Flushed (or never made): make a new log and follow it.
        let (new_epoch, seq, _) = inner.init(conn).await?;
        adopt(
            inner,
            sink,
            conn,
            cursor,
            new_epoch,
            seq,
            "the log was flushed",
        )
        .await?;
    } else if *epoch != *ours {
        adopt(
            inner,
            sink,
            conn,
            cursor,
            epoch.into(),
            seq,
            "the log was replaced",
        )
        .await?;
    } else if seq < delivered {
        let reason = "the log went back: a failover lost updates this node delivered";
        adopt(inner, sink, conn, cursor, ours, seq, reason).await?;
    } else if cursor.last_id.is_some() && first <= delivered && at != delivered as i64 {
        let reason = "the update this node delivered last is gone: a failover lost it";
        adopt(inner, sink, conn, cursor, ours, seq, reason).await?;
    } else if first > delivered + 1 && !entry_exists(inner, conn, delivered + 1).await? {
        signal_gap(
            inner,
            sink,
            cursor,
            first - 1,
            "updates were trimmed before this node delivered them",
        );
    }
    Ok(())
}

/// Signals a gap and follows `epoch` from its current end `seq`,
/// remembering which update sits there.
async fn adopt(
    inner: &Inner,
    sink: &Arc<dyn Sink>,
    conn: &mut MultiplexedConnection,
    cursor: &mut Cursor,
    epoch: Arc<str>,
    seq: Position,
    reason: &str,
) -> Result<(), EngineError> {
    inner.follow.send_modify(|f| f.epoch = epoch);
    if std::panic::catch_unwind(AssertUnwindSafe(|| sink.gap(reason))).is_err() {
        tracing::error!(engine = "redis", "the sink panicked on a gap");
    }
    cursor.delivered = seq;
    cursor.last_id = None;
    // Another log (or a history that went back): every waiting append
    // may be lost.
    inner.waiters.lock().replaced(seq);
    cursor.last_id = id_at(inner, conn, seq).await?;
    Ok(())
}

/// The entry of a position, if it is still in the stream (`XTRIM ~`
/// keeps some below `first`; the tail may still deliver those).
async fn entry_at<C: ConnectionLike + Send>(
    inner: &Inner,
    conn: &mut C,
    pos: Position,
) -> Result<Option<Entry>, EngineError> {
    let id = format!("{pos}-0");
    let found: Value = redis::cmd("XRANGE")
        .arg(&inner.keys.log)
        .arg(&id)
        .arg(&id)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    Ok(entries(&found)?.into_iter().next())
}

async fn entry_exists(
    inner: &Inner,
    conn: &mut MultiplexedConnection,
    pos: Position,
) -> Result<bool, EngineError> {
    Ok(entry_at(inner, conn, pos).await?.is_some())
}

/// The id of the update at a position, when it is still there.
pub(super) async fn id_at<C: ConnectionLike + Send>(
    inner: &Inner,
    conn: &mut C,
    pos: Position,
) -> Result<Option<String>, EngineError> {
    if pos == 0 {
        return Ok(None);
    }
    Ok(entry_at(inner, conn, pos)
        .await?
        .and_then(|e| e.stored.ok())
        .map(|s| s.update.id.clone()))
}
