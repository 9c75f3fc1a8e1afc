//! The topic index: which subscribers an update reaches.
//!
//! Exact selectors are a hash lookup per topic. Evaluated selectors (URI
//! templates and draft-08 URL patterns) are grouped by their text, and the
//! set of them matching a topic string is computed once and cached, so a
//! template or pattern is matched once per topic string, not once per
//! subscriber. `*` subscribers are a plain list.

// foldhash: a fast, seeded hasher (the one hashbrown defaults to). These
// maps are hashed once per delivery, where SipHash showed in profiles.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
use std::sync::Arc;

use herald_protocol::Selector;
use parking_lot::{Mutex, RwLock};

use super::subscriber::{Push, Subscriber};
use super::wake::Wake;
use crate::engine::{Sink, Stored};

/// Most cached topic strings before the template cache starts over.
const TEMPLATE_CACHE_LIMIT: usize = 100_000;

/// Called with each subscriber closed because its queue overflowed.
pub type OverflowHook = Box<dyn Fn(&Subscriber) + Send + Sync>;

#[derive(Default)]
pub struct TopicIndex {
    index: RwLock<Index>,
    template_cache: Mutex<TemplateCache>,
    on_overflow: Option<OverflowHook>,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
    /// The transport told when parked streams have work (see
    /// [`super::wake`]); none until a transport parks streams.
    waker: std::sync::OnceLock<Arc<dyn Wake>>,
    /// Updates whose publish is traced here, for their `deliver` spans.
    traced: crate::telemetry::traces::Traced,
}

impl std::fmt::Debug for TopicIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idx = self.index.read();
        f.debug_struct("TopicIndex")
            .field("subscribers", &idx.subscribers.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Index {
    subscribers: HashMap<u64, Arc<Subscriber>>,
    any: HashSet<u64>,
    exact: HashMap<String, HashSet<u64>>,
    templates: HashMap<String, TemplateEntry>,
    /// Bumped whenever the set of template strings changes.
    generation: u64,
}

struct TemplateEntry {
    selector: Selector,
    subscribers: HashSet<u64>,
}

#[derive(Default)]
struct TemplateCache {
    generation: u64,
    /// topic -> template strings that match it.
    matches: HashMap<String, Arc<[String]>>,
}

impl TopicIndex {
    pub fn new(on_overflow: OverflowHook, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        Self {
            on_overflow: Some(on_overflow),
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.index.read().subscribers.len()
    }

    /// Updates whose publish is traced here (see
    /// [`crate::telemetry::traces`]).
    pub fn traced(&self) -> &crate::telemetry::traces::Traced {
        &self.traced
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn insert(&self, sub: Arc<Subscriber>) {
        let mut idx = self.index.write();
        let id = sub.id;
        for sel in &sub.selectors {
            match sel {
                Selector::Any => {
                    idx.any.insert(id);
                }
                Selector::Exact(t) => {
                    idx.exact.entry(t.clone()).or_default().insert(id);
                }
                Selector::Template(_) | Selector::Pattern(_) => {
                    let key = sel.index_key().into_owned();
                    if !idx.templates.contains_key(&key) {
                        idx.generation += 1;
                    }
                    idx.templates
                        .entry(key)
                        .or_insert_with(|| TemplateEntry {
                            selector: sel.clone(),
                            subscribers: HashSet::default(),
                        })
                        .subscribers
                        .insert(id);
                }
            }
        }
        idx.subscribers.insert(id, sub);
    }

    /// Registers the transport to tell when parked streams have work.
    /// One per hub: a later call returns the one already registered.
    pub fn set_waker(&self, waker: Arc<dyn Wake>) -> &Arc<dyn Wake> {
        self.waker.get_or_init(|| waker)
    }

    /// Hands a parked subscriber to the transport, unless it already was.
    pub fn wake(&self, sub: &Arc<Subscriber>) {
        if let Some(w) = self.waker.get() {
            if sub.claim_wake() {
                w.wake_one(sub);
            }
        }
    }

    /// The registered subscriber with this id.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Subscriber>> {
        self.index.read().subscribers.get(&id).cloned()
    }

    /// A heartbeat tick for every subscriber (see [`Subscriber::tick`]).
    /// With `heartbeats` off it only looks for stalled writes.
    pub fn tick_all(&self, heartbeats: bool) {
        for sub in self.index.read().subscribers.values() {
            if sub.tick(heartbeats) {
                self.wake(sub);
            }
        }
    }

    /// Closes every subscriber, so each stream ends (shutdown).
    pub fn close_all(&self) {
        for sub in self.index.read().subscribers.values() {
            if sub.close() {
                self.wake(sub);
            }
        }
    }

    pub fn remove(&self, sub: &Subscriber) {
        let mut idx = self.index.write();
        let id = sub.id;
        if idx.subscribers.remove(&id).is_none() {
            return;
        }
        for sel in &sub.selectors {
            match sel {
                Selector::Any => {
                    idx.any.remove(&id);
                }
                Selector::Exact(t) => {
                    if let Some(set) = idx.exact.get_mut(t) {
                        set.remove(&id);
                        if set.is_empty() {
                            idx.exact.remove(t);
                        }
                    }
                }
                Selector::Template(_) | Selector::Pattern(_) => {
                    let key = sel.index_key();
                    if let Some(e) = idx.templates.get_mut(key.as_ref()) {
                        e.subscribers.remove(&id);
                        if e.subscribers.is_empty() {
                            idx.templates.remove(key.as_ref());
                            idx.generation += 1;
                        }
                    }
                }
            }
        }
    }

    /// Template strings matching `topic`, from the cache when possible.
    fn templates_for(&self, idx: &Index, topic: &str) -> Arc<[String]> {
        let mut cache = self.template_cache.lock();
        if cache.generation != idx.generation || cache.matches.len() >= TEMPLATE_CACHE_LIMIT {
            cache.matches.clear();
            cache.generation = idx.generation;
        }
        if let Some(hit) = cache.matches.get(topic) {
            return hit.clone();
        }
        let found: Arc<[String]> = idx
            .templates
            .iter()
            .filter(|(_, e)| e.selector.matches(topic))
            .map(|(k, _)| k.clone())
            .collect();
        cache.matches.insert(topic.to_owned(), found.clone());
        found
    }

    /// Queues `stored` for every subscriber it reaches; returns how many.
    fn dispatch(&self, stored: &Arc<Stored>) -> u64 {
        let idx = self.index.read();
        let mut queued = 0u64;
        // Parked subscribers to flush, handed over together at the end.
        let mut wake = Vec::new();
        let mut push = |id: &u64| {
            if let Some(sub) = idx.subscribers.get(id) {
                match sub.push(stored) {
                    Push::Queued => queued += 1,
                    Push::QueuedParked => {
                        queued += 1;
                        if sub.claim_wake() {
                            wake.push(sub.clone());
                        }
                    }
                    Push::Overflowed => {
                        if let Some(cb) = &self.on_overflow {
                            cb(sub);
                        }
                        if sub.is_parked() {
                            self.wake(sub);
                        }
                    }
                    Push::Skipped => {}
                }
            }
        };
        idx.any.iter().for_each(&mut push);
        let has_templates = !idx.templates.is_empty();
        for topic in &stored.update.topics {
            if let Some(set) = idx.exact.get(topic) {
                set.iter().for_each(&mut push);
            }
            if has_templates {
                for key in self.templates_for(&idx, topic).iter() {
                    if let Some(e) = idx.templates.get(key) {
                        e.subscribers.iter().for_each(&mut push);
                    }
                }
            }
        }
        if !wake.is_empty() {
            if let Some(w) = self.waker.get() {
                w.wake(&mut wake);
            }
        }
        if let Some(m) = &self.metrics {
            m.delivered(queued);
        }
        queued
    }

    /// The most subscribed selectors, with their subscriber counts.
    pub fn top_selectors(&self, limit: usize) -> Vec<(String, usize)> {
        let idx = self.index.read();
        let mut all: Vec<(String, usize)> = idx
            .exact
            .iter()
            .map(|(t, s)| (t.clone(), s.len()))
            .chain(
                idx.templates
                    .values()
                    .map(|e| (e.selector.as_str().to_owned(), e.subscribers.len())),
            )
            .collect();
        if !idx.any.is_empty() {
            all.push(("*".to_owned(), idx.any.len()));
        }
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        all
    }
}

impl Sink for TopicIndex {
    fn deliver(&self, updates: &[Arc<Stored>]) {
        use opentelemetry::trace::Span;
        for s in updates {
            let span = self.traced.deliver(&s.update.id);
            let queued = self.dispatch(s);
            if let Some(mut span) = span {
                span.set_attribute(opentelemetry::KeyValue::new(
                    "herald.subscribers",
                    i64::try_from(queued).unwrap_or(i64::MAX),
                ));
                span.end();
            }
        }
    }

    /// Ends every open stream: each client reconnects with its
    /// `Last-Event-ID` and resumes from the history that exists now.
    fn gap(&self, reason: &str) {
        tracing::warn!(
            subscribers = self.len(),
            "the engine lost history this node had not delivered ({reason}): ending every stream so clients resume"
        );
        if let Some(m) = &self.metrics {
            m.engine_gap();
        }
        self.close_all();
    }
}
