//! Following the shared log: each node reads new rows on a connection of
//! its own, woken by `NOTIFY` and by a poll every
//! [`PostgresConfig::poll_interval`](super::config::PostgresConfig), and
//! hands them to its sink in position order, once (its own appends too).
//!
//! Each read is one statement, so one snapshot: the log's identity
//! (`meta`), the id of the update this node delivered last, and the next
//! rows are seen together, and a replaced, restored or trimmed log is a
//! gap signalled before anything after it is delivered.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::rows::{stored, unavailable, COLUMNS};
use super::schema::migrate;
use super::state::{connect, Inner};
use crate::engine::{EngineError, Position, Sink, Stored};

/// Most rows read at once.
const BATCH: i64 = 1024;

struct Cursor {
    delivered: Position,
    last_id: Option<String>,
}

/// Follows the log until the engine closes.
pub(crate) async fn run(inner: Arc<Inner>, sink: Arc<dyn Sink>) {
    let mut cursor = {
        let s = inner.start.lock();
        Cursor {
            delivered: s.delivered,
            last_id: s.last_id.clone(),
        }
    };
    let mut retry = crate::engine::retry::Retry::default();
    while !inner.stop.is_cancelled() {
        let Err(e) = follow(&inner, &sink, &mut cursor).await else {
            return;
        };
        let flags = (&inner.tail_up, &inner.tail_lost);
        if !retry.after("postgres", &e, flags, &inner.stop).await {
            return;
        }
    }
}

async fn follow(
    inner: &Arc<Inner>,
    sink: &Arc<dyn Sink>,
    cursor: &mut Cursor,
) -> Result<(), EngineError> {
    let (mut client, mut wake) = connect(&inner.config.url, inner.config.timeout).await?;
    inner
        .bounded(async {
            client
                .batch_execute(&format!("LISTEN {}", inner.names.channel))
                .await
                .map_err(unavailable)
        })
        .await?;
    let mut up = false;
    let mut prepared = None;
    loop {
        // Read until a short page: then wait for a wake-up or the poll.
        loop {
            let full = inner
                .bounded(step(inner, sink, &mut client, cursor, &mut prepared))
                .await?;
            if !up {
                up = true;
                inner.tail_lost.store(false, Ordering::Release);
                if !inner.tail_up.swap(true, Ordering::AcqRel) {
                    tracing::info!(
                        engine = "postgres",
                        position = cursor.delivered,
                        "following the log"
                    );
                }
            }
            if !full || inner.stop.is_cancelled() {
                break;
            }
        }
        tokio::select! {
            () = inner.stop.cancelled() => return Ok(()),
            w = wake.recv() => {
                if w.is_none() {
                    return Err(EngineError::Unavailable("postgres: the tail's connection closed".into()));
                }
                // Several notifications may have queued: one read covers them.
                while wake.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(inner.config.poll_interval) => {}
        }
    }
}

/// One read: checks the log is the history this node follows, delivers
/// the next rows. Returns whether the page was full.
async fn step(
    inner: &Inner,
    sink: &Arc<dyn Sink>,
    client: &mut Client,
    cursor: &mut Cursor,
    prepared: &mut Option<Statement>,
) -> Result<bool, EngineError> {
    let n = &inner.names;
    let sql = format!(
        "SELECT m.epoch, m.last, (SELECT id FROM {updates} WHERE position = $1), u.* \
         FROM {meta} m LEFT JOIN LATERAL \
         (SELECT {COLUMNS} FROM {updates} WHERE position > $1 ORDER BY position LIMIT $2) u ON true",
        updates = n.updates,
        meta = n.meta,
    );
    // Prepared once per connection (and again after the schema changed):
    // the read runs at every wake-up.
    let read = match prepared.clone() {
        Some(s) => Ok(s),
        None => client.prepare(&sql).await,
    };
    let result = match read {
        Ok(stmt) => {
            *prepared = Some(stmt.clone());
            client
                .query(&stmt, &[&(cursor.delivered as i64), &BATCH])
                .await
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        *prepared = None;
    }
    let rows = match result {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            // The schema is gone: make a new log and follow it.
            migrate(client, n).await?;
            let (epoch, last) = inner.head(client).await?.unwrap_or_default();
            adopt(
                inner,
                sink,
                client,
                cursor,
                epoch,
                last,
                "the log was dropped",
            )
            .await?;
            return Ok(false);
        }
        Err(e) => return Err(unavailable(e)),
    };
    let Some(first) = rows.first() else {
        // No meta row: the log lost its identity.
        migrate(client, n).await?;
        let (epoch, last) = inner.head(client).await?.unwrap_or_default();
        adopt(
            inner,
            sink,
            client,
            cursor,
            epoch,
            last,
            "the log was reset",
        )
        .await?;
        return Ok(false);
    };
    let epoch: String = first.get(0);
    let last = first.get::<_, i64>(1).max(0) as Position;
    let id_at_delivered: Option<String> = first.get(2);
    let ours = inner.epoch.lock().clone();
    if *epoch != *ours {
        adopt(
            inner,
            sink,
            client,
            cursor,
            epoch,
            last,
            "the log was replaced",
        )
        .await?;
        return Ok(false);
    }
    if last < cursor.delivered {
        let reason = "the log went back (restored from an older backup?)";
        adopt(inner, sink, client, cursor, epoch, last, reason).await?;
        return Ok(false);
    }
    if let (Some(ours), Some(now)) = (&cursor.last_id, &id_at_delivered) {
        if ours != now {
            let reason = "the update this node delivered last was replaced";
            adopt(inner, sink, client, cursor, epoch, last, reason).await?;
            return Ok(false);
        }
    }
    let has_rows = first.get::<_, Option<i64>>(3).is_some();
    if !has_rows {
        if last > cursor.delivered {
            // Everything after this node's position is gone.
            signal_gap(
                inner,
                sink,
                cursor,
                last,
                "updates were removed before this node delivered them",
            );
        }
        return Ok(false);
    }
    let mut batch: Vec<Arc<Stored>> = Vec::with_capacity(rows.len());
    for row in &rows {
        let s = match stored(row, 3) {
            Ok(s) => s,
            Err(e) => {
                // A row this build cannot read: skip it, as a gap.
                let pos = row.get::<_, i64>(3).max(0) as Position;
                deliver(inner, sink, cursor, &std::mem::take(&mut batch));
                tracing::error!(engine = "postgres", "skipping a row: {e}");
                signal_gap(inner, sink, cursor, pos, "a row could not be read");
                continue;
            }
        };
        let expected = cursor.delivered + batch.len() as Position + 1;
        if s.position != expected {
            deliver(inner, sink, cursor, &std::mem::take(&mut batch));
            signal_gap(
                inner,
                sink,
                cursor,
                s.position - 1,
                "updates were removed before this node delivered them",
            );
        }
        batch.push(s);
    }
    deliver(inner, sink, cursor, &batch);
    Ok(rows.len() as i64 >= BATCH)
}

fn deliver(inner: &Inner, sink: &Arc<dyn Sink>, cursor: &mut Cursor, batch: &[Arc<Stored>]) {
    let Some(last) = batch.last() else { return };
    if std::panic::catch_unwind(AssertUnwindSafe(|| sink.deliver(batch))).is_err() {
        tracing::error!(engine = "postgres", "the sink panicked; delivery goes on");
    }
    cursor.delivered = last.position;
    cursor.last_id = Some(last.update.id.clone());
    inner.waiters.lock().delivered(last.position);
}

/// Signals a gap in this log and goes on after `resume_after`: appends
/// waiting for a position in the hole answer `Unavailable`, those past it
/// wait on.
fn signal_gap(
    inner: &Inner,
    sink: &Arc<dyn Sink>,
    cursor: &mut Cursor,
    resume_after: Position,
    reason: &str,
) {
    if std::panic::catch_unwind(AssertUnwindSafe(|| sink.gap(reason))).is_err() {
        tracing::error!(engine = "postgres", "the sink panicked on a gap");
    }
    cursor.delivered = resume_after;
    cursor.last_id = None;
    inner.waiters.lock().lost(resume_after);
}

/// Signals a gap and follows `epoch` from `last`.
async fn adopt(
    inner: &Inner,
    sink: &Arc<dyn Sink>,
    client: &Client,
    cursor: &mut Cursor,
    epoch: String,
    last: Position,
    reason: &str,
) -> Result<(), EngineError> {
    *inner.epoch.lock() = Arc::from(epoch.as_str());
    if std::panic::catch_unwind(AssertUnwindSafe(|| sink.gap(reason))).is_err() {
        tracing::error!(engine = "postgres", "the sink panicked on a gap");
    }
    cursor.delivered = last;
    cursor.last_id = None;
    // Another log (or a history that went back): every waiting append
    // may be lost.
    inner.waiters.lock().replaced(last);
    cursor.last_id = inner.id_at(client, last).await?;
    Ok(())
}
