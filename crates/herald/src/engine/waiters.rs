//! Appends waiting for their node to deliver what they appended: the part
//! of a shared engine between an append and its tail (`redis`, `postgres`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::Update;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{EngineError, Position, Stored};

/// Appends waiting for the tail to deliver their last position. The tail
/// completes them in position order, so each delivered batch wakes only
/// the appends it finished (a watch channel would wake every waiting
/// append at every batch).
///
/// A gap fails only the appends it may have lost: those in the lost range
/// of the same log, or every append begun before the node moved to
/// another log (or to a history that went back). An append past the hole
/// is still delivered and acknowledged: failing it would make a client
/// retry, and a retry with a new id would publish a second copy.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// The last position the tail delivered.
    pub delivered: Position,
    /// Bumped each time the node follows another log: an append begun
    /// before cannot be trusted.
    pub generation: u64,
    /// Ranges `(after, up_to]` of this log the node never delivered,
    /// newest last (the last few).
    lost: std::collections::VecDeque<(Position, Position)>,
    /// By (position, ticket): `true` once delivered, `false` on a gap.
    waiting: std::collections::BTreeMap<(Position, u64), oneshot::Sender<bool>>,
    next: u64,
}

/// Lost ranges remembered: an append is answered long before more holes
/// than this open in one log.
const LOST_KEPT: usize = 64;

/// What an append waits on.
pub(crate) enum Wait {
    /// Already delivered.
    Done,
    /// Its update may be lost: a gap covers it, or the node moved to
    /// another log since it began.
    Gap,
    Pending(oneshot::Receiver<bool>),
}

impl Waiters {
    /// Waits for `last`, appended by an append that began at `generation`.
    pub fn wait(&mut self, last: Position, generation: u64) -> Wait {
        let lost = self.lost.iter().any(|&(a, b)| last > a && last <= b);
        if self.generation != generation || lost {
            return Wait::Gap;
        }
        if self.delivered >= last {
            return Wait::Done;
        }
        let (tx, rx) = oneshot::channel();
        self.next += 1;
        self.waiting.insert((last, self.next), tx);
        Wait::Pending(rx)
    }

    /// The tail delivered up to `pos`.
    pub fn delivered(&mut self, pos: Position) {
        self.delivered = pos;
        let later = self.waiting.split_off(&(pos + 1, 0));
        for (_, tx) in std::mem::replace(&mut self.waiting, later) {
            let _ = tx.send(true);
        }
    }

    /// Positions after the last delivered one, up to `up_to`, were lost
    /// from this log: the appends waiting for them fail, the others wait
    /// on.
    pub fn lost(&mut self, up_to: Position) {
        if up_to > self.delivered {
            if self.lost.len() == LOST_KEPT {
                self.lost.pop_front();
            }
            self.lost.push_back((self.delivered, up_to));
        }
        self.delivered = self.delivered.max(up_to);
        let later = self.waiting.split_off(&(up_to + 1, 0));
        for (_, tx) in std::mem::replace(&mut self.waiting, later) {
            let _ = tx.send(false);
        }
    }

    /// The node follows another log (or a history that went back) from
    /// `pos`: every waiting append may have been lost.
    pub fn replaced(&mut self, pos: Position) {
        self.generation += 1;
        self.lost.clear();
        self.delivered = pos;
        for (_, tx) in std::mem::take(&mut self.waiting) {
            let _ = tx.send(false);
        }
    }
}

/// The end of a shared engine's append: waits until this node's tail
/// delivered `last` (the last position the server gave `updates`, appended
/// at `generation`), then returns the updates with their positions. A gap
/// that may have lost them, a deadline passed or a close is an error;
/// `engine` and `timeout` name them in its message.
pub(crate) async fn delivered(
    waiters: &Mutex<Waiters>,
    last: Position,
    generation: u64,
    deadline: tokio::time::Instant,
    closed: &AtomicBool,
    (engine, timeout): (&str, Duration),
    updates: Vec<Update>,
) -> Result<Vec<Arc<Stored>>, EngineError> {
    let wait = waiters.lock().wait(last, generation);
    let delivered = match wait {
        Wait::Done => Some(true),
        Wait::Gap => Some(false),
        Wait::Pending(rx) => tokio::time::timeout_at(deadline, rx)
            .await
            .ok()
            .map(|r| r.unwrap_or(false)),
    };
    match delivered {
        Some(true) => {}
        Some(false) if !closed.load(Ordering::Acquire) => {
            return Err(EngineError::Unavailable(format!(
                "{engine}: stored at position {last}, but history was lost meanwhile (a failover, a flush or a trim): it may be gone, publish it again"
            )))
        }
        _ if closed.load(Ordering::Acquire) => return Err(EngineError::Closed),
        _ => {
            return Err(EngineError::Unavailable(format!(
                "{engine}: stored at position {last}, but this node did not see it delivered within {timeout:?} (a retry with the same id answers 409)"
            )))
        }
    }
    let first = last + 1 - updates.len() as Position;
    Ok(updates
        .into_iter()
        .zip(first..)
        .map(|(u, pos)| Arc::new(Stored::new(pos, u)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(w: Wait) -> Option<bool> {
        match w {
            Wait::Done => Some(true),
            Wait::Gap => Some(false),
            Wait::Pending(mut rx) => rx.try_recv().ok(),
        }
    }

    #[test]
    fn a_hole_fails_only_the_appends_inside_it() {
        let mut w = Waiters::default();
        let inside = w.wait(3, 0);
        let past = w.wait(9, 0);
        w.lost(5);
        assert_eq!(answer(inside), Some(false));
        assert!(
            matches!(answer(w.wait(4, 0)), Some(false)),
            "a late append inside the hole"
        );
        w.delivered(9);
        assert_eq!(answer(past), Some(true));
        assert!(matches!(w.wait(7, 0), Wait::Done));
    }

    #[test]
    fn another_log_fails_every_append_begun_before() {
        let mut w = Waiters::default();
        let waiting = w.wait(3, 0);
        w.replaced(100);
        assert_eq!(answer(waiting), Some(false));
        assert!(matches!(w.wait(50, 0), Wait::Gap));
        assert!(matches!(w.wait(50, 1), Wait::Done));
    }
}
