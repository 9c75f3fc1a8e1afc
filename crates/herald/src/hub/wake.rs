//! How the core wakes a transport: the one trait a transport implements to
//! take streams off their tasks.
//!
//! A stream served by a task waits on its subscriber ([`Subscriber::poll_ready`])
//! and needs nothing more. A transport may also *park* a stream: keep its
//! state in the subscriber ([`Subscriber::parked`]) and end its task, so a
//! waiting subscriber costs no task at all. The core then tells the
//! transport when a parked stream has work (frames queued, a heartbeat
//! due, its subscriber closed) through the [`Wake`] registered with the
//! topic index ([`super::index::TopicIndex::set_waker`]). The core never
//! looks inside what the transport parked.

use std::sync::Arc;

use super::subscriber::Subscriber;

/// Told which parked streams have work.
pub trait Wake: Send + Sync + 'static {
    /// These parked subscribers have work. Each was claimed with
    /// [`Subscriber::claim_wake`], so a subscriber is handed over once
    /// until the transport releases it ([`Subscriber::release_wake`]) and
    /// looks at it. `subs` is left empty.
    fn wake(&self, subs: &mut Vec<Arc<Subscriber>>);

    /// One parked subscriber has work (claimed, as for [`Wake::wake`]).
    fn wake_one(&self, sub: &Arc<Subscriber>) {
        self.wake(&mut vec![sub.clone()]);
    }
}
