//! Appends waiting for their node to deliver what they appended: the part
//! of a shared engine between an append and its tail (`redis`, `postgres`).

use tokio::sync::oneshot;

use super::Position;

/// Appends waiting for the tail to deliver their last position. The tail
/// completes them in position order, so each delivered batch wakes only
/// the appends it finished (a watch channel would wake every waiting
/// append at every batch).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// The last position the tail delivered.
    pub delivered: Position,
    /// Gaps signalled so far.
    pub gaps: u64,
    /// By (position, ticket): `true` once delivered, `false` on a gap.
    waiting: std::collections::BTreeMap<(Position, u64), oneshot::Sender<bool>>,
    next: u64,
}

/// What an append waits on.
pub(crate) enum Wait {
    /// Already delivered.
    Done,
    /// A gap was signalled since the append started: it may be lost.
    Gap,
    Pending(oneshot::Receiver<bool>),
}

impl Waiters {
    /// Waits for `last`, unless it is already delivered or a gap came
    /// since `gaps` was read.
    pub fn wait(&mut self, last: Position, gaps: u64) -> Wait {
        if self.gaps != gaps {
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

    /// The tail signalled a gap and goes on after `pos`: every waiting
    /// append may have been lost.
    pub fn gap(&mut self, pos: Position) {
        self.gaps += 1;
        self.delivered = pos;
        for (_, tx) in std::mem::take(&mut self.waiting) {
            let _ = tx.send(false);
        }
    }
}
