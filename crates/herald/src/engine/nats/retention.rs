//! Retention by count and age, every second, on every node (removing the
//! same messages twice is harmless).
//!
//! Whole log messages are removed: the oldest ones whose updates are all
//! past `max_updates`, or older than `max_age`. A message holds one append
//! group, so a few more updates than `max_updates` may stay.
//!
//! The log's end must outlive its updates: positions go on from the last
//! message's headers. So when every update is older than `max_age`, a
//! marker (a message with no updates, carrying the next position) is
//! appended first, and everything before it removed.
//!
//! Reservations in the ids stream older than the oldest retained log
//! message (less the append timeout, since a reservation comes just before
//! its log message) can only name removed updates: they are removed too,
//! every ten seconds.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::{Publish, PublishErrorKind};
use futures_util::StreamExt;

use super::state::{unavailable, Group, Inner, COUNT, FIRST};
use crate::engine::EngineError;

/// Runs until the engine closes.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes: u64 = 0;
    loop {
        tokio::select! {
            () = inner.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        passes += 1;
        if let Err(e) = inner.bounded(trim(&inner)).await {
            tracing::debug!(engine = "nats", "retention pass failed: {e}");
        }
        if passes.is_multiple_of(10) {
            if let Err(e) = inner.bounded(trim_ids(&inner)).await {
                tracing::debug!(engine = "nats", "reservation cleanup failed: {e}");
            }
        }
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The smallest sequence in `lo..=hi` whose message passes `keep`
/// (monotone: once true, true after), `hi + 1` when none does.
async fn search(
    inner: &Inner,
    mut lo: u64,
    hi: u64,
    keep: impl Fn(&Group) -> bool,
) -> Result<u64, EngineError> {
    let mut hi = hi + 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if inner
            .group_from(mid, hi - 1)
            .await?
            .is_some_and(|g| keep(&g))
        {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

async fn trim(inner: &Inner) -> Result<(), EngineError> {
    let head = inner.head().await?;
    if head.last_seq == 0 {
        return Ok(());
    }
    let first = head.first_seq.max(1);
    let mut cut = first;
    if let Some(max) = inner.config.max_updates {
        if head.end > max {
            let keep_from = head.end - max + 1;
            cut = cut.max(search(inner, first, head.last_seq, |g| g.end() >= keep_from).await?);
        }
    }
    if let Some(age) = inner.config.max_age {
        let oldest = now_ns() - age.as_nanos() as i128;
        let young = search(inner, first, head.last_seq, |g| g.time_ns >= oldest).await?;
        cut = cut.max(young);
    }
    if cut > head.last_seq {
        // Every update goes: a marker keeps the numbering.
        let last = inner.group_at(head.last_seq).await?;
        if last.as_ref().is_some_and(|g| g.count == 0) {
            cut = head.last_seq;
        } else {
            let marker = Publish::build()
                .payload(bytes::Bytes::new())
                .header(FIRST, (head.end + 1).to_string())
                .header(COUNT, "0")
                .expected_last_sequence(head.last_seq);
            let ack = inner
                .js
                .send_publish(inner.names.log_subject.clone(), marker)
                .await
                .map_err(unavailable)?
                .await;
            match ack {
                Ok(ack) => cut = ack.sequence,
                // An append came first: next pass.
                Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => return Ok(()),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
    if cut > first {
        inner.log.purge().sequence(cut).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn trim_ids(inner: &Inner) -> Result<(), EngineError> {
    let head = inner.head().await?;
    let oldest = match inner.group_at(head.first_seq.max(1)).await? {
        Some(g) => g.time_ns,
        None if head.last_seq == 0 => return Ok(()),
        // Nothing retained: every reservation is stale, up to now.
        None => now_ns(),
    };
    let margin = 3 * inner.config.timeout.as_nanos() as i128;
    let since = oldest - margin;
    let Ok(start_time) = time_of(since) else {
        return Ok(());
    };
    let consumer = inner
        .ids
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    let first_kept = match tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
        Ok(Some(Ok(m))) => m.info().map_err(unavailable)?.stream_sequence,
        // No reservation that recent: none to keep, but a slow answer is
        // no proof of that.
        _ => return Ok(()),
    };
    if first_kept > 1 {
        inner
            .ids
            .purge()
            .sequence(first_kept)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// A time the server's API takes.
fn time_of(ns: i128) -> Result<time::OffsetDateTime, time::error::ComponentRange> {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
}
