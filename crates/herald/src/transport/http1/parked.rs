//! Parked event streams: a live connection with no task of its own.
//!
//! Most of a hub's connections are subscribers waiting for the next
//! update. Once a direct event stream ([`super::direct`]) has sent its
//! first flush and its history, its socket and feed are moved into its
//! [`Subscriber`] (as the core's opaque parked state, see
//! [`crate::hub::wake`]) and its task ends: a waiting subscriber is then
//! its subscriber record and nothing else, with no task, no timer and no
//! registration in tokio's reactor. Token expiry and heartbeats are the
//! hub's timers' ([`crate::hub::heartbeat`]), as for every stream.
//!
//! Two hub-wide workers serve all parked connections:
//! - the **flusher** (one task per core): the dispatcher puts a subscriber
//!   in its ready list when it queues a frame; the flusher writes every
//!   frame queued since, as one chunk with one vectored write, straight
//!   from the dispatching core's run queue without waking a task per
//!   connection. A write the socket does not take in full leaves its rest
//!   pending, and the connection is written again once the socket drains;
//! - the **watcher** (one task, with an `epoll` instance of its own
//!   through mio, whose descriptor tokio watches): it reports clients that
//!   close or fail, discards bytes a client sends, and reschedules a
//!   connection whose full socket drained.
//!
//! A parked WebSocket ([`super::socket`]) is served the same way, its
//! updates written as frames and its heartbeats as pings; when its client
//! sends anything the watcher hands it back to a task.

use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::unix::SourceFd;
use mio::{Interest, Token};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::hub::admission::StreamPermit;

use super::chunk;
use crate::http::policy::{discard_input, Input, WRITE_STALL};
use crate::http::websocket::{Idle, Taken};
use crate::hub::feed::Feed;
use crate::hub::index::TopicIndex;
use crate::hub::subscriber::{ParkedState, Subscriber};
use crate::hub::wake::Wake;
use crate::telemetry::Metrics;

/// Subscribers flushed between two yields to the scheduler, so a sweep
/// over tens of thousands of sockets never holds up publishers and
/// accepts for long.
const FLUSH_SLICE: usize = 64;

/// A parked connection: what its task held, minus the task.
pub(crate) struct Parked {
    stream: std::net::TcpStream,
    kind: Kind,
    /// Bytes of a chunk the socket did not take yet, and since when
    /// (boxed: rare, and every parked connection would carry its room).
    pending: Option<Box<(Bytes, Instant)>>,
    /// Registered for writability (after a first full socket).
    watch_writable: bool,
}

/// What a parked connection carries.
enum Kind {
    /// An event stream: its frames go out as HTTP/1.1 chunks.
    Events {
        feed: Feed,
        /// The connection's place under the connection limit.
        _permit: Option<StreamPermit>,
    },
    /// A WebSocket: its frames go out as they are.
    Socket(Box<Idle>),
}

impl Kind {
    fn feed(&self) -> &Feed {
        match self {
            Kind::Events { feed, .. } => feed,
            Kind::Socket(idle) => idle.feed(),
        }
    }
}

/// Writes a stream another transport parked ([`Flusher::park_stream`]),
/// one that writes through a connection of its own rather than a socket
/// per stream (HTTP/2's, see [`crate::transport::h2`]): `None` when the
/// state in the slot is not that transport's, otherwise whether the
/// stream goes on (if not, the flusher drops it, which ends it).
pub(crate) type FlushParked = fn(&mut ParkedState, &Arc<Subscriber>) -> Option<bool>;

/// Hands a parked socket whose client spoke back to a task: its socket,
/// what it had not yet written, its state (see [`super::socket::resume`]).
pub(crate) type Resume = fn(std::net::TcpStream, Option<Bytes>, Idle, Arc<Flusher>);

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("pending", &self.pending.as_ref().map(|p| p.0.len()))
            .finish_non_exhaustive()
    }
}

/// One flusher task's ready list.
#[derive(Default)]
struct Shard {
    ready: Mutex<Vec<Arc<Subscriber>>>,
    notify: Notify,
}

/// The hub-wide workers of parked connections: the fast path's
/// [`Wake`].
pub struct Flusher {
    shards: Box<[Shard]>,
    /// Finds a parked subscriber from its socket's watcher token.
    index: Weak<TopicIndex>,
    /// Counts parked connections (`herald_parked_streams`).
    metrics: Arc<Metrics>,
    /// Registers sockets with the watcher; `None` if it could not start
    /// (connections then keep their tasks).
    watcher: OnceLock<Option<mio::Registry>>,
    /// Takes back parked sockets whose client spoke.
    resume: Resume,
    /// Writes the streams other transports park.
    others: Vec<FlushParked>,
    me: Weak<Flusher>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("shards", &self.shards.len())
            .field("parked", &self.metrics.parked_streams.get())
            .finish_non_exhaustive()
    }
}

impl Flusher {
    /// Starts the flusher tasks on the current runtime, for the parked
    /// streams of `index`. One task per core the process may run on: the
    /// flusher's work is spread like the connection tasks it replaces.
    pub(crate) fn start(
        index: &Arc<TopicIndex>,
        metrics: Arc<Metrics>,
        resume: Resume,
        others: Vec<FlushParked>,
    ) -> Arc<Self> {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let flusher = Arc::new_cyclic(|me| Self {
            shards: (0..n).map(|_| Shard::default()).collect(),
            index: Arc::downgrade(index),
            metrics,
            watcher: OnceLock::new(),
            resume,
            others,
            me: me.clone(),
        });
        for i in 0..n {
            tokio::spawn(run_shard(flusher.clone(), i));
        }
        flusher
    }

    /// Puts a parked subscriber in its flusher's ready list (once until
    /// it is flushed).
    pub(crate) fn schedule(&self, sub: &Arc<Subscriber>) {
        if sub.claim_wake() {
            self.wake_one(sub);
        }
    }

    /// The shard whose flusher writes this subscriber's frames.
    fn shard_of(&self, sub: &Subscriber) -> usize {
        (sub.id % self.shards.len() as u64) as usize
    }

    /// Connections parked now.
    pub fn parked(&self) -> i64 {
        self.metrics.parked_streams.get()
    }

    /// Whether connections can be parked (the watcher runs; it starts on
    /// first use, on the current runtime).
    pub fn available(&self) -> bool {
        self.watcher().is_some()
    }

    fn watcher(&self) -> Option<&mio::Registry> {
        self.watcher
            .get_or_init(
                || match start_watcher(self.index.clone(), self.me.clone()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!("cannot watch parked connections, keeping their tasks: {e}");
                        None
                    }
                },
            )
            .as_ref()
    }
}

impl Wake for Flusher {
    /// Puts claimed subscribers in their flushers' ready lists: one lock
    /// and one wakeup per shard for a whole dispatch.
    fn wake(&self, subs: &mut Vec<Arc<Subscriber>>) {
        if subs.is_empty() {
            return;
        }
        if self.shards.len() == 1 {
            self.shards[0].ready.lock().append(subs);
            self.shards[0].notify.notify_one();
            return;
        }
        for (i, shard) in self.shards.iter().enumerate() {
            let mut ready = shard.ready.lock();
            let before = ready.len();
            ready.extend(subs.iter().filter(|s| self.shard_of(s) == i).cloned());
            let added = ready.len() > before;
            drop(ready);
            if added {
                shard.notify.notify_one();
            }
        }
        subs.clear();
    }

    fn wake_one(&self, sub: &Arc<Subscriber>) {
        let shard = &self.shards[self.shard_of(sub)];
        shard.ready.lock().push(sub.clone());
        shard.notify.notify_one();
    }
}

impl Flusher {
    /// Parks a live stream whose queue is empty (see
    /// [`Flusher::available`]): its socket and feed move into its
    /// subscriber and the calling task may end.
    pub fn park(
        self: &Arc<Self>,
        feed: Feed,
        stream: tokio::net::TcpStream,
        permit: Option<StreamPermit>,
    ) {
        let sub = feed.subscriber().clone();
        self.park_kind(
            sub,
            stream,
            Kind::Events {
                feed,
                _permit: permit,
            },
        );
    }

    /// Parks a socket with one live subscription, as [`Flusher::park`]
    /// parks an event stream. If it cannot be watched it is closed.
    pub(crate) fn park_socket(self: &Arc<Self>, stream: tokio::net::TcpStream, idle: Idle) {
        let sub = idle.feed().subscriber().clone();
        self.park_kind(sub, stream, Kind::Socket(Box::new(idle)));
    }

    /// Parks a stream of another transport (see [`ParkedStream`]): it
    /// waits in its subscriber, and the flusher writes it when woken.
    pub(crate) fn park_stream(self: &Arc<Self>, sub: &Arc<Subscriber>, stream: ParkedState) {
        let mut slot = sub.parked().lock();
        *slot = Some(stream);
        self.metrics.parked_streams.inc();
        sub.set_parked();
        drop(slot);
        // Frames queued while parking woke the task that just left.
        self.schedule(sub);
    }

    fn park_kind(
        self: &Arc<Self>,
        sub: Arc<Subscriber>,
        stream: tokio::net::TcpStream,
        kind: Kind,
    ) {
        let Some(watcher) = self.watcher() else {
            return;
        };
        // Leaves tokio's reactor: the socket stays non-blocking.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(subscriber = sub.id, "cannot park stream: {e}");
                return;
            }
        };
        // Stored, counted and marked parked before the watcher sees the
        // socket, all under the slot's lock: its first event (stray bytes,
        // or a socket's client speaking, which takes it back at once)
        // finds it complete.
        let fd = stream.as_raw_fd();
        let mut slot = sub.parked().lock();
        *slot = Some(Box::new(Parked {
            stream,
            kind,
            pending: None,
            watch_writable: false,
        }));
        self.metrics.parked_streams.inc();
        sub.set_parked();
        if let Err(e) = watcher.register(
            &mut SourceFd(&fd),
            Token(sub.id as usize),
            Interest::READABLE,
        ) {
            let parked = slot.take();
            sub.set_unparked();
            self.metrics.parked_streams.dec();
            drop(slot);
            tracing::warn!(subscriber = sub.id, "cannot watch stream, closing it: {e}");
            drop(parked);
            return;
        }
        drop(slot);
        // Frames queued while parking woke the task that just left.
        self.schedule(&sub);
    }
}

/// The parked connection in a subscriber's slot, if this transport parked
/// it.
fn parked_mut(slot: &mut Option<ParkedState>) -> Option<&mut Parked> {
    slot.as_mut()?.downcast_mut::<Parked>()
}

async fn run_shard(flusher: Arc<Flusher>, i: usize) {
    let shard = &flusher.shards[i];
    let mut batch = Vec::new();
    loop {
        shard.notify.notified().await;
        // Let the tasks already ready run first (publishers' requests, other
        // dispatches): their frames join this sweep, so a busy subscriber
        // gets one write for several updates instead of one each.
        tokio::task::yield_now().await;
        loop {
            std::mem::swap(&mut *shard.ready.lock(), &mut batch);
            if batch.is_empty() {
                break;
            }
            for (n, sub) in batch.iter().enumerate() {
                sub.release_wake();
                // A panic here (in a metric, a log, a drop) must not stop
                // the flusher of every connection of this shard.
                let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    flush(&flusher, sub);
                }));
                if flushed.is_err() {
                    tracing::error!(subscriber = sub.id, "flushing a parked stream panicked");
                }
                if n % FLUSH_SLICE == FLUSH_SLICE - 1 {
                    tokio::task::yield_now().await;
                }
            }
            batch.clear();
        }
    }
}

/// Writes what a parked subscriber has queued, or ends its stream.
fn flush(flusher: &Flusher, sub: &Arc<Subscriber>) {
    let mut guard = sub.parked().lock();
    if !guard.as_ref().is_some_and(|s| s.is::<Parked>()) {
        let Some(state) = guard.as_mut() else {
            return;
        };
        let on = flusher.others.iter().find_map(|flush| flush(state, sub));
        if on == Some(false) {
            let state = guard.take();
            drop(guard);
            drop(state);
            flusher.metrics.parked_streams.dec();
        }
        return;
    }
    let Some(p) = parked_mut(&mut guard) else {
        return;
    };
    if let Some(pending) = &mut p.pending {
        let (rest, since) = &mut **pending;
        match write_pending(&p.stream, rest) {
            Ok(true) => {
                p.pending = None;
                sub.set_blocked(false);
            }
            Ok(false) => {
                // Closed meanwhile (its queue overflowed, shutdown, expiry):
                // a client that is not reading gets no more waiting. A
                // socket's task finishes the frame and says why it closes,
                // if the client takes them within a few seconds.
                if sub.is_closed() {
                    if matches!(p.kind, Kind::Socket(_)) {
                        hand_back(flusher, sub, guard);
                    } else {
                        end(flusher, guard, false);
                    }
                    return;
                }
                if since.elapsed() >= WRITE_STALL {
                    tracing::debug!(subscriber = sub.id, "client stopped reading: closing");
                    end(flusher, guard, false);
                    return;
                }
                // Still full: the watcher reschedules it once it drains.
                // Queued frames wait, under the queue's bounds.
                return;
            }
            Err(_) => {
                end(flusher, guard, false);
                return;
            }
        }
    }
    let mut out = Vec::new();
    let taken = match &mut p.kind {
        Kind::Events { feed, .. } => {
            if feed.take_live(&mut out) {
                Taken::Frames
            } else {
                Taken::Nothing
            }
        }
        Kind::Socket(idle) => idle.take_frames(&mut out),
    };
    match taken {
        Taken::Frames => {}
        Taken::Nothing => {
            if p.kind.feed().is_done() {
                // A socket's task closes it with the reason's code.
                if matches!(p.kind, Kind::Socket(_)) {
                    hand_back(flusher, sub, guard);
                } else {
                    end(flusher, guard, true);
                }
            }
            return;
        }
        Taken::NoPong => {
            let _ = (&p.stream).write(&Idle::no_pong());
            end(flusher, guard, false);
            return;
        }
    }
    let written = match p.kind {
        Kind::Events { .. } => chunk::try_write(&p.stream, &out),
        Kind::Socket(_) => chunk::try_write_raw(&p.stream, &out),
    };
    match written {
        Ok(None) => {}
        Ok(Some(rest)) => {
            p.pending = Some(Box::new((rest, Instant::now())));
            // New frames no longer wake the flusher: the watcher does once
            // the socket drains (and the ticker, to check for a stall).
            sub.set_blocked(true);
            if !p.watch_writable {
                if let Some(Some(w)) = flusher.watcher.get() {
                    let watched = w.reregister(
                        &mut SourceFd(&p.stream.as_raw_fd()),
                        Token(sub.id as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if watched.is_err() {
                        end(flusher, guard, false);
                        return;
                    }
                }
                p.watch_writable = true;
                // The socket may have drained between the write and the
                // registration, with no event to tell: try again once.
                flusher.schedule(sub);
            }
        }
        // The write may have sent part of a chunk: no last chunk.
        Err(_) => end(flusher, guard, false),
    }
}

/// Ends a parked stream: leaves the watcher, sends the last chunk if
/// `last_chunk` (the body is between chunks) and the socket takes it, and
/// drops the connection (which unregisters the subscriber and gives back
/// its connection permit).
fn end(flusher: &Flusher, mut guard: MutexGuard<'_, Option<ParkedState>>, last_chunk: bool) {
    let Some(state) = guard.take() else {
        return;
    };
    drop(guard);
    let Ok(p) = state.downcast::<Parked>() else {
        return;
    };
    if let Some(Some(w)) = flusher.watcher.get() {
        let _ = w.deregister(&mut SourceFd(&p.stream.as_raw_fd()));
    }
    if last_chunk && matches!(p.kind, Kind::Events { .. }) {
        let _ = (&p.stream).write(chunk::LAST_CHUNK);
    }
    // Counted down once the connection is gone: the server waits for
    // this count at shutdown, and dropping `p` still sends events.
    drop(p);
    flusher.metrics.parked_streams.dec();
}

/// Writes what it can of `rest`; `Ok(true)` once all of it is written.
fn write_pending(stream: &std::net::TcpStream, rest: &mut Bytes) -> io::Result<bool> {
    while !rest.is_empty() {
        match (&*stream).write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = rest.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Starts the watcher: a task on the current runtime waiting on the
/// readiness of its epoll instance (which tokio's own epoll reports like
/// any descriptor), so closes are handled on the runtime's threads with
/// no thread switch. It stops once the topic index is gone.
fn start_watcher(index: Weak<TopicIndex>, flusher: Weak<Flusher>) -> io::Result<mio::Registry> {
    let poll = mio::Poll::new()?;
    let handle = poll.registry().try_clone()?;
    // tokio deprecates its safe constructors because an arbitrary
    // `AsRawFd` may close or change its descriptor while registered (and
    // this workspace forbids `unsafe`). A `mio::Poll` owns its epoll
    // descriptor from creation to drop and always returns that same one,
    // and the `AsyncFd` owns the `Poll`: the registration is sound.
    #[allow(deprecated)]
    let mut poll = tokio::io::unix::AsyncFd::with_interest(poll, tokio::io::Interest::READABLE)?;
    tokio::spawn(async move {
        let mut events = mio::Events::with_capacity(256);
        loop {
            let mut guard = match poll.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("parked connection watcher failed: {e}");
                    return;
                }
            };
            // Readiness is cleared only once a poll finds nothing.
            let polled = guard.try_io(|poll| {
                poll.get_mut().poll(&mut events, Some(Duration::ZERO))?;
                if events.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match polled {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    // Parked streams depend on it: retry, never give up.
                    tracing::error!("parked connection watcher: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_would_block) => continue,
            }
            let Some(index) = index.upgrade() else {
                return;
            };
            for ev in &events {
                let Some(sub) = index.get(ev.token().0 as u64) else {
                    continue;
                };
                // A socket whose client sent something (or went away)
                // goes back to a task, which reads it.
                let spoke = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                if spoke && flusher.upgrade().is_some_and(|f| unpark_socket(&f, &sub)) {
                    continue;
                }
                let closed =
                    ev.is_error() || ev.is_read_closed() || (ev.is_readable() && discard(&sub));
                if closed {
                    if sub.close() {
                        index.wake(&sub);
                    }
                } else if ev.is_writable() {
                    index.wake(&sub);
                }
            }
        }
    });
    Ok(handle)
}

/// Reads and drops what a parked client sent (see
/// [`crate::http::policy::discard_input`]). `true` when the stream must end.
fn discard(sub: &Subscriber) -> bool {
    let mut guard = sub.parked().lock();
    let Some(p) = parked_mut(&mut guard) else {
        return false;
    };
    discard_input(|b| (&p.stream).read(b)) == Input::Closed
}

/// Hands a parked socket back to a task (see [`Resume`]); `false` when
/// the subscriber's parked connection is not a socket.
fn unpark_socket(flusher: &Flusher, sub: &Subscriber) -> bool {
    let mut guard = sub.parked().lock();
    if !parked_mut(&mut guard).is_some_and(|p| matches!(p.kind, Kind::Socket(_))) {
        return false;
    }
    hand_back(flusher, sub, guard);
    true
}

/// Takes the parked socket in `guard` off the watcher and hands it to a
/// task: its client spoke, or its stream ended and the task closes it
/// with the reason's code.
fn hand_back(flusher: &Flusher, sub: &Subscriber, mut guard: MutexGuard<'_, Option<ParkedState>>) {
    let Some(state) = guard.take() else {
        return;
    };
    // Wakeups go to the task again (what was queued meanwhile, it reads),
    // before anyone can park it anew.
    sub.set_unparked();
    flusher.metrics.parked_streams.dec();
    drop(guard);
    let Ok(p) = state.downcast::<Parked>() else {
        return;
    };
    let Parked {
        stream,
        kind,
        pending,
        ..
    } = *p;
    if let Some(Some(w)) = flusher.watcher.get() {
        let _ = w.deregister(&mut SourceFd(&stream.as_raw_fd()));
    }
    if let (Kind::Socket(idle), Some(me)) = (kind, flusher.me.upgrade()) {
        (flusher.resume)(stream, pending.map(|p| p.0), *idle, me);
    }
}
