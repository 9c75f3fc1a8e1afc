//! The `memory` engine: a bounded ring of recent updates, for tests and
//! ephemeral hubs. Nothing survives a restart.

use std::collections::VecDeque;

/// foldhash (seeded): the id index is hashed on every append and eviction.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use herald_protocol::Update;
use parking_lot::Mutex;

use super::{Bounds, Engine, EngineError, Position, Sink, Stored};

#[derive(Debug)]
pub struct MemoryEngine {
    capacity: usize,
    state: Mutex<State>,
    sink: parking_lot::RwLock<Option<Arc<dyn Sink>>>,
}

#[derive(Default)]
struct State {
    ring: VecDeque<Arc<Stored>>,
    ids: HashMap<String, Position>,
    last: Position,
    closed: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("len", &self.ring.len())
            .field("last", &self.last)
            .finish()
    }
}

impl MemoryEngine {
    /// Keeps at most `capacity` updates (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            sink: parking_lot::RwLock::new(None),
        }
    }
}

impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn start(&self, sink: Arc<dyn Sink>) {
        *self.sink.write() = Some(sink);
    }

    fn append(&self, updates: Vec<Update>) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>> {
        let result = (|| {
            let mut st = self.state.lock();
            if st.closed {
                return Err(EngineError::Closed);
            }
            // Refuse the whole batch before changing anything.
            let mut seen: std::collections::HashSet<&str, foldhash::fast::RandomState> =
                std::collections::HashSet::with_capacity_and_hasher(
                    if updates.len() > 1 { updates.len() } else { 0 },
                    Default::default(),
                );
            for u in &updates {
                if st.ids.contains_key(&u.id) || (updates.len() > 1 && !seen.insert(u.id.as_str()))
                {
                    return Err(EngineError::DuplicateId(u.id.clone()));
                }
            }
            let mut stored = Vec::with_capacity(updates.len());
            for u in updates {
                st.last += 1;
                let s = Arc::new(Stored::new(st.last, u));
                st.ids.insert(s.update.id.clone(), s.position);
                st.ring.push_back(s.clone());
                stored.push(s);
            }
            while st.ring.len() > self.capacity {
                if let Some(old) = st.ring.pop_front() {
                    st.ids.remove(&old.update.id);
                }
            }
            // Delivering under the lock keeps delivery in position order.
            if let Some(sink) = self.sink.read().as_ref() {
                sink.deliver(&stored);
            }
            Ok(stored)
        })();
        async move { result }.boxed()
    }

    fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Stored>>, EngineError>> {
        let st = self.state.lock();
        let out = match st.ring.front() {
            None => Vec::new(),
            Some(first) => {
                let skip = after.saturating_sub(first.position - 1) as usize;
                st.ring.iter().skip(skip).take(limit).cloned().collect()
            }
        };
        drop(st);
        async move { Ok(out) }.boxed()
    }

    fn resolve(&self, id: &str) -> BoxFuture<'_, Result<Option<Position>, EngineError>> {
        let pos = self.state.lock().ids.get(id).copied();
        async move { Ok(pos) }.boxed()
    }

    fn bounds(&self) -> BoxFuture<'_, Result<Bounds, EngineError>> {
        let st = self.state.lock();
        let b = Bounds {
            first: st.ring.front().map(|s| s.position),
            last: st.last,
        };
        async move { Ok(b) }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        self.state.lock().closed = true;
        async { Ok(()) }.boxed()
    }
}
