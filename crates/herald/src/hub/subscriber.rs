//! One subscriber connection: what it selects, what it may see, and its
//! bounded queue of encoded frames.
//!
//! The dispatcher pushes shared frames (`Bytes`, reference-counted, encoded
//! once per update) into the queue; the connection's stream drains it (its
//! task, or its transport once the stream is parked). The
//! queue is bounded in frames and bytes. When a live subscriber's queue is
//! full it is closed and its connection cancelled: the client reconnects
//! with `Last-Event-ID` and catches up from history, so memory stays flat
//! and nothing is lost. While a subscriber is still replaying history the
//! hub itself sets the pace, so an overflow there only drops the queue and
//! the replay reads the missed updates from history again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::task::AtomicWaker;
use herald_protocol::{selector::any_matches, Selector};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::active::event_revision;
use crate::auth::Allowed;
use crate::engine::Stored;

/// What a transport keeps for a stream it parked (see [`super::wake`]):
/// the core holds it for the transport and never looks inside.
pub type ParkedState = Box<dyn std::any::Any + Send>;

/// What the dispatcher did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Queued for a parked connection: its transport must be woken.
    QueuedParked,
    /// Not for this subscriber (or already delivered).
    Skipped,
    /// The queue overflowed and the subscriber was closed.
    Overflowed,
}

#[derive(Debug)]
pub struct Subscriber {
    pub id: u64,
    pub selectors: Vec<Selector>,
    /// The private updates the token lets it receive; `None` for anonymous.
    pub allowed: Option<Allowed>,
    /// Subscribed with draft-08 `match` parameters: it receives the
    /// draft-08 subscription events, never the draft-07 ones (and the
    /// other way round), each revision's clients seeing their own format.
    pub draft08: bool,
    queue: Mutex<Queue>,
    /// The connection task waiting for frames.
    waker: AtomicWaker,
    /// Cancels the whole connection (used when the queue overflows, since a
    /// subscriber that stopped reading never polls its stream again).
    pub cancel: Option<CancellationToken>,
    /// Highest position pushed, so an update with several matching topics
    /// is delivered once.
    last_pushed: AtomicU64,
    max_frames: u32,
    max_bytes: u32,
    /// Handed to the transport's [`super::wake::Wake`] and not looked at
    /// since.
    wake_claimed: AtomicBool,
    /// The stream's state once its transport parked it: it then has no
    /// task, and the transport writes its frames when woken.
    parked: Mutex<Option<ParkedState>>,
}

#[derive(Debug, Default)]
struct Queue {
    /// The updates themselves, shared by every queue holding them: an entry
    /// is one pointer, so queues stay small and cheap to grow.
    items: VecDeque<Arc<Stored>>,
    bytes: usize,
    replaying: bool,
    lagged: bool,
    closed: bool,
    /// A frame was queued since the last heartbeat tick.
    active: bool,
    /// Heartbeat ticks in a row with nothing queued.
    idle_ticks: u8,
    /// A heartbeat is due (set by the hub's ticker on idle subscribers).
    heartbeat: bool,
    /// The connection is parked: wakeups go to its transport, not a task.
    parked: bool,
    /// Parked, and its socket is full: new frames wait in the queue
    /// without waking the transport, until the socket drains.
    blocked: bool,
}

/// What the stream found in the queue.
#[derive(Debug)]
pub enum Drain {
    Frames(Vec<Arc<Stored>>),
    /// Nothing queued, and the connection has been idle: send a heartbeat.
    Heartbeat,
    Empty,
    Closed,
}

impl Subscriber {
    pub fn new(
        id: u64,
        selectors: Vec<Selector>,
        allowed: Option<Allowed>,
        replaying: bool,
        max_frames: usize,
        max_bytes: usize,
        cancel: Option<CancellationToken>,
    ) -> Self {
        Self {
            id,
            selectors,
            allowed,
            draft08: false,
            queue: Mutex::new(Queue {
                replaying,
                ..Queue::default()
            }),
            waker: AtomicWaker::new(),
            cancel,
            last_pushed: AtomicU64::new(0),
            max_frames: u32::try_from(max_frames).unwrap_or(u32::MAX),
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            wake_claimed: AtomicBool::new(false),
            parked: Mutex::new(None),
        }
    }

    /// True when the subscriber selected one of the update's topics and may
    /// see it (public, or private with a matching `mercure.subscribe`).
    pub fn wants(&self, stored: &Stored) -> bool {
        let topics = &stored.update.topics;
        any_matches(&self.selectors, topics) && self.may_see(stored)
    }

    /// Marks a subscriber of draft-08 (see [`Subscriber::draft08`]).
    #[must_use]
    pub fn with_draft08(mut self, draft08: bool) -> Self {
        self.draft08 = draft08;
        self
    }

    /// Authorization alone: public, or private and allowed by the token.
    /// Subscription events (always private) also go only to subscribers of
    /// their own revision.
    pub fn may_see(&self, stored: &Stored) -> bool {
        let update = &stored.update;
        if !update.private {
            return true;
        }
        if let Some(draft08) = event_revision(update) {
            if draft08 != self.draft08 {
                return false;
            }
        }
        self.allowed
            .as_ref()
            .is_some_and(|a| a.allows(&update.topics))
    }

    /// Queues a frame the dispatcher already matched against the selectors.
    /// Called in position order by the engine's delivery.
    pub fn push(&self, stored: &Arc<Stored>) -> Push {
        if self.last_pushed.load(Ordering::Relaxed) >= stored.position {
            return Push::Skipped;
        }
        if !self.may_see(stored) {
            return Push::Skipped;
        }
        self.last_pushed.store(stored.position, Ordering::Relaxed);
        let len = stored.frame.len();
        let mut q = self.queue.lock();
        if q.closed {
            return Push::Skipped;
        }
        if q.items.len() >= self.max_frames as usize || q.bytes + len > self.max_bytes as usize {
            q.items.clear();
            q.bytes = 0;
            if q.replaying {
                q.lagged = true;
                return Push::Skipped;
            }
            q.closed = true;
            drop(q);
            if let Some(c) = &self.cancel {
                c.cancel();
            }
            self.waker.wake();
            return Push::Overflowed;
        }
        q.items.push_back(stored.clone());
        q.bytes += len;
        q.active = true;
        if q.parked {
            if q.blocked {
                return Push::Queued;
            }
            return Push::QueuedParked;
        }
        drop(q);
        self.waker.wake();
        Push::Queued
    }

    /// Marks the subscriber as about to be handed to the transport's
    /// [`super::wake::Wake`]; `false` if it already is.
    pub fn claim_wake(&self) -> bool {
        !self.wake_claimed.swap(true, Ordering::AcqRel)
    }

    /// The transport took the subscriber off its ready list: the next
    /// wakeup hands it over again.
    pub fn release_wake(&self) {
        self.wake_claimed.store(false, Ordering::Release);
    }

    /// The slot of the state its transport parked (see [`super::wake`]).
    pub fn parked(&self) -> &Mutex<Option<ParkedState>> {
        &self.parked
    }

    /// From now on wakeups are for the transport (see [`super::wake`]):
    /// the connection's task is gone, and the waker it left (which keeps
    /// its memory alive) is dropped.
    pub fn set_parked(&self) {
        self.queue.lock().parked = true;
        drop(self.waker.take());
    }

    /// Back to a task: wakeups go to the waker its task registers with
    /// [`Subscriber::poll_ready`] (a transport whose client spoke takes
    /// the stream back from where it parked it).
    pub fn set_unparked(&self) {
        let mut q = self.queue.lock();
        q.parked = false;
        q.blocked = false;
    }

    /// Closed: disconnected, overflowed, expired or shut down.
    pub fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }

    /// A parked connection's socket is full (`true`) or drained again.
    pub fn set_blocked(&self, blocked: bool) {
        self.queue.lock().blocked = blocked;
    }

    /// Whether the connection is parked (its transport writes its frames when woken).
    pub fn is_parked(&self) -> bool {
        self.queue.lock().parked
    }

    /// Takes everything queued.
    pub fn drain(&self) -> Drain {
        let mut q = self.queue.lock();
        if q.closed {
            return Drain::Closed;
        }
        if q.items.is_empty() {
            if std::mem::take(&mut q.heartbeat) {
                return Drain::Heartbeat;
            }
            return Drain::Empty;
        }
        q.heartbeat = false;
        q.bytes = 0;
        Drain::Frames(std::mem::take(&mut q.items).into())
    }

    /// Ends the replay phase if nothing was dropped meanwhile. Returns
    /// `false` when the queue overflowed during replay: the caller reads
    /// history again from where it is, then calls this again.
    pub fn finish_replay(&self) -> bool {
        let mut q = self.queue.lock();
        if q.lagged {
            q.lagged = false;
            return false;
        }
        q.replaying = false;
        true
    }

    /// Ready when frames are queued, a heartbeat is due, or the subscriber
    /// is closed; otherwise the task is woken when one of these happens.
    /// (A waker slot rather than a `Notify`: the waiting state is a few
    /// bytes in each connection's task.)
    pub fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.waker.register(cx.waker());
        let q = self.queue.lock();
        if q.closed || q.heartbeat || !q.items.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Ready once the subscriber is closed (disconnect, overflow, shutdown);
    /// otherwise the task is woken when it is.
    pub fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.waker.register(cx.waker());
        if self.queue.lock().closed {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// A quarter of the heartbeat period passed: a subscriber that was sent
    /// nothing during the last four gets a heartbeat. One hub-wide ticker
    /// calls this, so an idle connection holds no timer of its own.
    /// Returns `true` when the subscriber is parked and its transport must
    /// run (see [`super::index::TopicIndex::tick_all`]).
    pub fn tick(&self, heartbeats: bool) -> bool {
        let mut q = self.queue.lock();
        // A parked connection whose socket is full: its transport checks how
        // long the write has waited (heartbeats on or not).
        let stalled = q.parked && q.blocked;
        if !heartbeats {
            return stalled;
        }
        if std::mem::take(&mut q.active) || q.closed || !q.items.is_empty() {
            q.idle_ticks = 0;
            return stalled;
        }
        q.idle_ticks += 1;
        if q.idle_ticks < 4 {
            return stalled;
        }
        q.idle_ticks = 0;
        q.heartbeat = true;
        if q.parked {
            return true;
        }
        drop(q);
        self.waker.wake();
        false
    }

    /// Marks the subscriber closed (disconnect, shutdown, token expiry).
    /// Returns `true` when it is parked and its transport must be woken to end
    /// the connection.
    pub fn close(&self) -> bool {
        let mut q = self.queue.lock();
        q.closed = true;
        if q.parked {
            return true;
        }
        drop(q);
        self.waker.wake();
        false
    }
}
