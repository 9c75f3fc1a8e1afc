//! Following the log: each node reads new log messages with an ordered
//! consumer (no acks, recreated by the client from the last sequence it
//! saw when it notices a hole or a missed heartbeat), from the message
//! after the last one it delivered, and hands their updates to its sink in
//! position order, once (its own appends too).
//!
//! Positions come from each message's headers, so the tail sees a hole by
//! position: updates removed before this node delivered them are a gap,
//! signalled before anything after them is delivered. Every second, and
//! each time it connects, the node also checks the log's identity (the
//! stream's creation time) and end: a stream deleted and made again, or a
//! log that went back, is a gap too.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::{FutureExt, StreamExt};

use super::state::{ensure_streams, span, unavailable, Cursor, Group, Head, Inner, RECENT};
use crate::engine::{EngineError, Position, Sink, Stored};

/// Most log messages handed over in one delivery.
const BATCH: usize = 256;

/// Follows the log until the engine closes.
pub(crate) async fn run(inner: Arc<Inner>, sink: Arc<dyn Sink>) {
    let mut cursor = *inner.start.lock();
    let mut retry = crate::engine::retry::Retry::default();
    while !inner.stop.is_cancelled() {
        let Err(e) = follow(&inner, &sink, &mut cursor).await else {
            return;
        };
        let flags = (&inner.tail_up, &inner.tail_lost);
        if !retry.after("nats", &e, flags, &inner.stop).await {
            return;
        }
    }
}

async fn follow(
    inner: &Arc<Inner>,
    sink: &Arc<dyn Sink>,
    cursor: &mut Cursor,
) -> Result<(), EngineError> {
    loop {
        let head = inner.bounded(inner.head()).await?;
        check(inner, sink, cursor, &head);
        let config = pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: cursor.seq + 1,
            },
            ..Default::default()
        };
        let mut messages = inner
            .bounded(async {
                let consumer = inner
                    .log
                    .create_consumer(config)
                    .await
                    .map_err(unavailable)?;
                consumer.messages().await.map_err(unavailable)
            })
            .await?;
        inner.tail_lost.store(false, Ordering::Release);
        if !inner.tail_up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                engine = "nats",
                position = cursor.delivered,
                "following the log"
            );
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut ticks: u64 = 0;
        loop {
            let next = tokio::select! {
                () = inner.stop.cancelled() => return Ok(()),
                m = messages.next() => m,
                _ = tick.tick() => {
                    ticks += 1;
                    if ticks.is_multiple_of(10) {
                        // A stream deleted by hand (the ids or the
                        // directory) is made again.
                        let _ = inner
                            .bounded(ensure_streams(&inner.js, &inner.names, &inner.config))
                            .await;
                    }
                    let head = inner.bounded(inner.head()).await?;
                    if check(inner, sink, cursor, &head) {
                        // Another log: follow it from its end.
                        break;
                    }
                    continue;
                }
            };
            let mut groups = Vec::new();
            let mut next = Some(next);
            let mut failed = None;
            while let Some(item) = next.take() {
                let item = match group(item) {
                    Ok(item) => item,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                match item {
                    Ok(g) => groups.push(g),
                    Err((seq, e)) => {
                        // Not a message herald wrote (another client
                        // publishing on the log's subject): passed over.
                        // Had it held updates, the next message shows the
                        // hole.
                        handle(inner, sink, cursor, std::mem::take(&mut groups));
                        tracing::error!(engine = "nats", seq, "skipping a log message: {e}");
                        cursor.seq = cursor.seq.max(seq);
                    }
                }
                if groups.len() < BATCH {
                    next = messages.next().now_or_never();
                }
            }
            handle(inner, sink, cursor, groups);
            if let Some(e) = failed {
                // The consumer failed (a purge by retention can end it):
                // read the log's head again and make a new one from this
                // node's position. The server being down fails there, and
                // only then is the log lost.
                tracing::debug!(
                    engine = "nats",
                    "the log's consumer ended, making a new one: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                break;
            }
        }
    }
}

/// The next log message: an error when the consumer failed; inside,
/// `Err((seq, why))` when the message is not one herald can read.
#[allow(clippy::type_complexity)]
fn group(
    next: Option<
        Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::OrderedError>,
    >,
) -> Result<Result<Group, (u64, EngineError)>, EngineError> {
    let m = next
        .ok_or_else(|| EngineError::Unavailable("nats: the log's consumer ended".into()))?
        .map_err(unavailable)?;
    let seq = m.info().map_err(unavailable)?.stream_sequence;
    let headers = m.message.headers.clone().unwrap_or_default();
    Ok(match span(&headers) {
        Ok((first, count)) => Ok(Group {
            seq,
            first,
            count,
            time_ns: 0,
            payload: m.message.payload.clone(),
        }),
        Err(e) => Err((seq, e)),
    })
}

/// Compares the log with what this node follows; on another log (or one
/// that went back) signals a gap and moves to its end. Returns whether it
/// moved.
fn check(inner: &Inner, sink: &Arc<dyn Sink>, cursor: &mut Cursor, head: &Head) -> bool {
    let ours = inner.epoch.lock().clone();
    let reason = if *head.epoch != *ours {
        "the log was replaced"
    } else if head.last_seq < cursor.seq || head.end < cursor.delivered {
        "the log went back (restored from an older copy?)"
    } else {
        return false;
    };
    *inner.epoch.lock() = Arc::from(head.epoch.as_str());
    if std::panic::catch_unwind(AssertUnwindSafe(|| sink.gap(reason))).is_err() {
        tracing::error!(engine = "nats", "the sink panicked on a gap");
    }
    *cursor = Cursor {
        seq: head.last_seq,
        delivered: head.end,
    };
    inner.recent.lock().clear();
    inner.waiters.lock().replaced(head.end);
    true
}

/// Delivers the updates of these log messages, in order, signalling a gap
/// before any update that follows a hole.
fn handle(inner: &Inner, sink: &Arc<dyn Sink>, cursor: &mut Cursor, groups: Vec<Group>) {
    let mut batch: Vec<Arc<Stored>> = Vec::new();
    for g in groups {
        if g.end() <= cursor.delivered {
            // Seen already (the consumer was recreated), or a marker
            // carrying the numbering on.
            cursor.seq = cursor.seq.max(g.seq);
            continue;
        }
        if g.first > cursor.delivered + 1 {
            deliver(inner, sink, cursor, &std::mem::take(&mut batch));
            signal_gap(
                inner,
                sink,
                cursor,
                g.first - 1,
                "updates were removed before this node delivered them",
            );
        }
        cursor.seq = g.seq;
        if g.count == 0 {
            continue;
        }
        match g.updates() {
            Ok(updates) => {
                // A message overlapping what was delivered (never written
                // by herald) gives only its new part.
                let skip = (cursor.delivered + 1).saturating_sub(g.first) as usize;
                batch.extend(updates.into_iter().skip(skip));
                cursor.delivered = g.end();
                let mut recent = inner.recent.lock();
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back((g.first, g.seq));
            }
            Err(e) => {
                deliver(inner, sink, cursor, &std::mem::take(&mut batch));
                tracing::error!(engine = "nats", "skipping a log message: {e}");
                signal_gap(
                    inner,
                    sink,
                    cursor,
                    g.end(),
                    "a log message could not be read",
                );
            }
        }
    }
    deliver(inner, sink, cursor, &batch);
}

fn deliver(inner: &Inner, sink: &Arc<dyn Sink>, cursor: &Cursor, batch: &[Arc<Stored>]) {
    let Some(last) = batch.last() else { return };
    if std::panic::catch_unwind(AssertUnwindSafe(|| sink.deliver(batch))).is_err() {
        tracing::error!(engine = "nats", "the sink panicked; delivery goes on");
    }
    debug_assert!(last.position <= cursor.delivered);
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
        tracing::error!(engine = "nats", "the sink panicked on a gap");
    }
    cursor.delivered = resume_after;
    inner.waiters.lock().lost(resume_after);
}
