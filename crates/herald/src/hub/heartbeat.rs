//! The hub's timers, one task each for every subscriber, so that no
//! connection holds a timer of its own:
//!
//! - the **ticker** ticks every quarter of the heartbeat period: a
//!   subscriber sent nothing for four ticks gets a heartbeat comment, so an
//!   idle stream hears from the hub after between 3/4 of `heartbeat` and
//!   `heartbeat` of silence; parked streams whose socket is full get their
//!   write checked for a stall; at shutdown it closes every subscriber, so
//!   every stream ends;
//! - the **expiry timer** closes the subscriber of a stream whose token
//!   expires, at that moment, whatever transport carries the stream.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::index::TopicIndex;

/// Starts the ticker on the current runtime; it stops at `stop`, after
/// closing every subscriber.
pub(crate) fn start_ticker(index: Arc<TopicIndex>, stop: CancellationToken, heartbeat: Duration) {
    tokio::spawn(async move {
        // Without heartbeats it still ticks, for parked streams whose
        // client stopped reading.
        let period = if heartbeat.is_zero() {
            Duration::from_secs(15)
        } else {
            heartbeat / 4
        };
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => index.tick_all(!heartbeat.is_zero()),
                () = stop.cancelled() => {
                    index.close_all();
                    return;
                }
            }
        }
    });
}

/// Token deadlines of open streams, by (deadline, subscriber id).
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    deadlines: Mutex<BTreeSet<(Instant, u64)>>,
    changed: Notify,
}

impl Expiries {
    /// Closes subscriber `id` at `at`.
    pub(crate) fn insert(&self, at: Instant, id: u64) {
        let mut set = self.deadlines.lock();
        let earliest = set.first().is_none_or(|&(t, _)| at < t);
        set.insert((at, id));
        drop(set);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// The stream ended first.
    pub(crate) fn remove(&self, at: Instant, id: u64) {
        self.deadlines.lock().remove(&(at, id));
    }

    /// Starts the expiry timer on the current runtime; it stops with the
    /// index or at `stop`.
    pub(crate) fn start(self: &Arc<Self>, index: Weak<TopicIndex>, stop: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let next = this.deadlines.lock().first().map(|&(t, _)| t);
                let sleep = async {
                    match next {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = sleep => {}
                    () = this.changed.notified() => continue,
                    () = stop.cancelled() => return,
                }
                let now = Instant::now();
                let due: Vec<u64> = {
                    let mut set = this.deadlines.lock();
                    let later = set.split_off(&(now, u64::MAX));
                    std::mem::replace(&mut *set, later)
                        .into_iter()
                        .map(|(_, id)| id)
                        .collect()
                };
                let Some(index) = index.upgrade() else {
                    return;
                };
                for id in due {
                    if let Some(sub) = index.get(id) {
                        tracing::debug!(
                            subscriber = id,
                            "token expired or stream lifetime over: closing stream"
                        );
                        if sub.close() {
                            index.wake(&sub);
                        }
                    }
                }
            }
        });
    }
}
