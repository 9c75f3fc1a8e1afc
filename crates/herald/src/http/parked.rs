//! Parked event streams: a live connection with no task of its own.
//!
//! Most of a hub's connections are subscribers waiting for the next
//! update. Once a direct event stream ([`super::direct`]) has sent its
//! first flush and its history, its socket and feed are moved into its
//! [`Subscriber`] and its task ends: a waiting subscriber is then its
//! subscriber record and nothing else, with no task, no timer and no
//! registration in tokio's reactor.
//!
//! Three hub-wide workers serve all parked connections:
//! - the **flusher** (one task per core): the dispatcher puts a subscriber
//!   in its ready list when it queues a frame; the flusher writes every
//!   frame queued since, as one chunk with one vectored write, straight
//!   from the dispatching core's run queue without waking a task per
//!   connection. A write the socket does not take in full leaves its rest
//!   pending, and the connection is written again once the socket drains;
//! - the **watcher** (one task, with an `epoll` instance of its own
//!   through mio, whose descriptor tokio watches): it reports clients that
//!   close or fail, discards bytes a client sends, and reschedules a
//!   connection whose full socket drained;
//! - the **expiry timer** (one task): ends streams whose token expires.

use std::collections::BTreeSet;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::subscribe::Feed;
use crate::registry::Registry;
use crate::subscriber::Subscriber;

/// Longest a parked client may leave a write unfinished before its
/// connection is given back.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// Subscribers flushed between two yields to the scheduler, so a sweep
/// over tens of thousands of sockets never holds up publishers and
/// accepts for long.
const FLUSH_SLICE: usize = 64;
/// Bytes a parked client may send in one readiness event before it is
/// treated as misbehaving and disconnected (an event stream's client has
/// nothing to say).
const MAX_DISCARD: usize = 64 * 1024;

/// A parked connection: what its task held, minus the task.
pub(crate) struct Parked {
    stream: std::net::TcpStream,
    feed: Feed,
    /// The connection's place under the connection limit.
    _permit: Option<OwnedSemaphorePermit>,
    /// Bytes of a chunk the socket did not take yet, and since when.
    pending: Option<(Bytes, Instant)>,
    /// The token's expiry, as registered with the expiry timer.
    expires: Option<Instant>,
    /// Registered for writability (after a first full socket).
    watch_writable: bool,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field(
                "pending",
                &self.pending.as_ref().map(|(rest, _)| rest.len()),
            )
            .finish_non_exhaustive()
    }
}

/// One flusher task's ready list.
#[derive(Default)]
struct Shard {
    ready: Mutex<Vec<Arc<Subscriber>>>,
    notify: Notify,
}

/// The hub-wide workers of parked connections.
pub(crate) struct Flusher {
    shards: Box<[Shard]>,
    started: OnceLock<()>,
    /// Registers sockets with the watcher; `None` if it could not start
    /// (connections then keep their tasks).
    watcher: OnceLock<Option<mio::Registry>>,
    /// Token deadlines of parked connections, by (deadline, subscriber).
    expiries: Mutex<BTreeSet<(Instant, u64)>>,
    expiry_changed: Notify,
    /// Connections parked now.
    parked: AtomicUsize,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("shards", &self.shards.len())
            .field("parked", &self.parked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Flusher {
    fn default() -> Self {
        // One task per core the process may run on: the flusher's work is
        // spread like the connection tasks it replaces.
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            shards: (0..n).map(|_| Shard::default()).collect(),
            started: OnceLock::new(),
            watcher: OnceLock::new(),
            expiries: Mutex::new(BTreeSet::new()),
            expiry_changed: Notify::new(),
            parked: AtomicUsize::new(0),
        }
    }
}

impl Flusher {
    /// Puts a parked subscriber in its flusher's ready list (once until
    /// it is flushed).
    pub(crate) fn schedule(&self, sub: &Arc<Subscriber>) {
        if !Self::claim(sub) {
            return;
        }
        let shard = &self.shards[self.shard_of(sub)];
        shard.ready.lock().push(sub.clone());
        shard.notify.notify_one();
    }

    /// The shard whose flusher writes this subscriber's frames.
    fn shard_of(&self, sub: &Subscriber) -> usize {
        (sub.id % self.shards.len() as u64) as usize
    }

    /// Marks a parked subscriber as about to be scheduled; `false` if it
    /// already is. Pass the claimed ones to [`Flusher::schedule_claimed`].
    pub(crate) fn claim(sub: &Subscriber) -> bool {
        !sub.scheduled.swap(true, Ordering::AcqRel)
    }

    /// Puts claimed subscribers in their flushers' ready lists: one lock
    /// and one wakeup per shard for a whole dispatch.
    pub(crate) fn schedule_claimed(&self, subs: &mut Vec<Arc<Subscriber>>) {
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

    /// Connections parked now.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Starts the flusher tasks and the expiry timer (once), on the
    /// current runtime.
    pub(crate) fn start(self: &Arc<Self>, registry: &Arc<Registry>) {
        self.started.get_or_init(|| {
            for i in 0..self.shards.len() {
                tokio::spawn(run_shard(self.clone(), i));
            }
            tokio::spawn(run_expiries(self.clone(), Arc::downgrade(registry)));
        });
    }

    /// The watcher's registry, starting it on first use (on the current
    /// runtime).
    fn watcher(&self, registry: &Arc<Registry>) -> Option<&mio::Registry> {
        self.watcher
            .get_or_init(|| match start_watcher(Arc::downgrade(registry)) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("cannot watch parked connections, keeping their tasks: {e}");
                    None
                }
            })
            .as_ref()
    }

    fn expire_at(&self, at: Instant, id: u64) {
        let mut map = self.expiries.lock();
        let earliest = map.first().is_none_or(|&(t, _)| at < t);
        map.insert((at, id));
        drop(map);
        if earliest {
            self.expiry_changed.notify_one();
        }
    }
}

/// Whether connections can be parked here (the watcher runs).
pub(crate) fn available(hub: &crate::hub::Hub) -> bool {
    hub.registry().flusher().watcher(hub.registry()).is_some()
}

/// Parks a live stream whose queue is empty (see [`available`]): its
/// socket and feed move into its subscriber and the calling task may end.
pub(crate) fn park(
    mut feed: Feed,
    stream: tokio::net::TcpStream,
    permit: Option<OwnedSemaphorePermit>,
) {
    let hub = feed.hub().clone();
    let registry = hub.registry();
    let flusher = registry.flusher().clone();
    let Some(watcher) = flusher.watcher(registry) else {
        return;
    };
    let sub = feed.subscriber().clone();
    // Leaves tokio's reactor: the socket stays non-blocking.
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(subscriber = sub.id, "cannot park stream: {e}");
            return;
        }
    };
    // Stored before the watcher sees the socket, so its first event finds
    // it (stray bytes are drained at once).
    let fd = stream.as_raw_fd();
    let expires = feed.take_deadline();
    let mut slot = sub.parked.lock();
    *slot = Some(Parked {
        stream,
        feed,
        _permit: permit,
        pending: None,
        expires,
        watch_writable: false,
    });
    if let Err(e) = watcher.register(
        &mut SourceFd(&fd),
        Token(sub.id as usize),
        Interest::READABLE,
    ) {
        let parked = slot.take();
        drop(slot);
        tracing::warn!(subscriber = sub.id, "cannot watch stream, closing it: {e}");
        drop(parked);
        return;
    }
    drop(slot);
    flusher.parked.fetch_add(1, Ordering::AcqRel);
    if let Some(at) = expires {
        flusher.expire_at(at, sub.id);
    }
    sub.set_parked();
    // Frames queued while parking woke the task that just left.
    flusher.schedule(&sub);
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
                sub.scheduled.store(false, Ordering::Release);
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
    let mut guard = sub.parked.lock();
    let Some(p) = guard.as_mut() else {
        return;
    };
    if let Some((rest, since)) = &mut p.pending {
        match write_pending(&p.stream, rest) {
            Ok(true) => {
                p.pending = None;
                sub.set_blocked(false);
            }
            Ok(false) => {
                // Closed meanwhile (its queue overflowed, shutdown, expiry):
                // a client that is not reading gets no more waiting.
                if sub.is_closed() {
                    end(flusher, guard, false);
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
    if !p.feed.take_live(&mut out) {
        if p.feed.is_done() {
            end(flusher, guard, true);
        }
        return;
    }
    match write_frames(&p.stream, &out) {
        Ok(None) => {}
        Ok(Some(rest)) => {
            p.pending = Some((rest, Instant::now()));
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
        // The write may have sent part of a chunk: no terminator.
        Err(_) => end(flusher, guard, false),
    }
}

/// Ends a parked stream: leaves the watcher, sends the last chunk if
/// `last_chunk` (the body is between chunks) and the socket takes it, and
/// drops the connection (which unregisters the subscriber and gives back
/// its connection permit).
fn end(
    flusher: &Flusher,
    mut guard: parking_lot::MutexGuard<'_, Option<Parked>>,
    last_chunk: bool,
) {
    let Some(p) = guard.take() else {
        return;
    };
    drop(guard);
    if let Some(Some(w)) = flusher.watcher.get() {
        let _ = w.deregister(&mut SourceFd(&p.stream.as_raw_fd()));
    }
    if last_chunk {
        let _ = (&p.stream).write(b"0\r\n\r\n");
    }
    if let Some(at) = p.expires {
        flusher
            .expiries
            .lock()
            .remove(&(at, p.feed.subscriber().id));
    }
    // Counted down once the connection is gone: the server waits for
    // this count at shutdown, and dropping `p` still sends events.
    drop(p);
    flusher.parked.fetch_sub(1, Ordering::AcqRel);
}

/// Writes `frames` as HTTP/1.1 chunks without blocking. Returns the bytes the socket did not take.
fn write_frames(
    stream: &std::net::TcpStream,
    frames: &[bytes::Bytes],
) -> io::Result<Option<Bytes>> {
    let heads = super::direct::chunk_heads(frames);
    let mut slices = super::direct::chunk_slices(frames, &heads);
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match (&*stream).write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut left = BytesMut::with_capacity(rest.iter().map(|s| s.len()).sum());
                for s in rest.iter() {
                    left.extend_from_slice(s);
                }
                return Ok(Some(left.freeze()));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
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
/// no thread switch. It stops once the registry is gone.
fn start_watcher(registry: Weak<Registry>) -> io::Result<mio::Registry> {
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
            let Some(registry) = registry.upgrade() else {
                return;
            };
            for ev in &events {
                let Some(sub) = registry.get(ev.token().0 as u64) else {
                    continue;
                };
                let closed =
                    ev.is_error() || ev.is_read_closed() || (ev.is_readable() && discard(&sub));
                if closed {
                    if sub.close() {
                        registry.flusher().schedule(&sub);
                    }
                } else if ev.is_writable() {
                    registry.flusher().schedule(&sub);
                }
            }
        }
    });
    Ok(handle)
}

/// Reads and drops what a parked client sent. `true` when it closed, or
/// keeps sending.
fn discard(sub: &Subscriber) -> bool {
    let guard = sub.parked.lock();
    let Some(p) = guard.as_ref() else {
        return false;
    };
    let mut sink = [0u8; 512];
    let mut total = 0;
    loop {
        match (&p.stream).read(&mut sink) {
            Ok(0) => return true,
            Ok(n) => {
                total += n;
                if total > MAX_DISCARD {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Ends parked streams whose token expired.
async fn run_expiries(flusher: Arc<Flusher>, registry: Weak<Registry>) {
    loop {
        let next = flusher.expiries.lock().first().map(|&(t, _)| t);
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = flusher.expiry_changed.notified() => continue,
        }
        let now = Instant::now();
        let due: Vec<u64> = {
            let mut map = flusher.expiries.lock();
            let later = map.split_off(&(now, u64::MAX));
            let due = std::mem::replace(&mut *map, later);
            due.into_iter().map(|(_, id)| id).collect()
        };
        let Some(registry) = registry.upgrade() else {
            return;
        };
        for id in due {
            if let Some(sub) = registry.get(id) {
                tracing::debug!(subscriber = id, "token expired: closing stream");
                if sub.close() {
                    flusher.schedule(&sub);
                }
            }
        }
    }
}
