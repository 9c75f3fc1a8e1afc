//! Once-a-second samples of the hub for the dashboard at `/`, served as an
//! event stream at `/.well-known/herald/stats`: the last five minutes first
//! (`event: history`), then one `event: stats` per second.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

use tokio_util::sync::CancellationToken;

use super::index::TopicIndex;
use crate::telemetry::Metrics;

/// Samples kept for a newly opened dashboard: five minutes.
const HISTORY: usize = 300;
/// Topics listed per sample.
const TOP_TOPICS: usize = 50;

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub time: u64,
    pub uptime_s: u64,
    pub engine: &'static str,
    pub connections: i64,
    pub connections_total: u64,
    pub subscribers: usize,
    pub updates_published_total: u64,
    pub updates_delivered_total: u64,
    pub slow_disconnects_total: u64,
    pub topics: Vec<TopicCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicCount {
    pub topic: String,
    pub subscribers: usize,
}

/// What the sampler reads.
#[derive(Debug)]
pub struct Source {
    pub metrics: Arc<Metrics>,
    pub index: Arc<TopicIndex>,
    /// The engine's name.
    pub engine: &'static str,
    /// When the hub started.
    pub started: std::time::Instant,
    /// Sampling stops when it fires.
    pub stop: CancellationToken,
}

/// The sampler and its recent history.
#[derive(Debug)]
pub struct StatsFeed {
    history: Mutex<VecDeque<Arc<Sample>>>,
    live: broadcast::Sender<Arc<Sample>>,
}

impl StatsFeed {
    /// Starts sampling every second until the hub shuts down.
    pub fn start(hub: Source) -> Arc<Self> {
        let (live, _) = broadcast::channel(16);
        let feed = Arc::new(Self {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            live,
        });
        let f = feed.clone();
        let stop = hub.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let s = Arc::new(sample(&hub));
                {
                    let mut h = f.history.lock();
                    if h.len() == HISTORY {
                        h.pop_front();
                    }
                    h.push_back(s.clone());
                }
                let _ = f.live.send(s);
            }
        });
        feed
    }

    /// The recent samples, oldest first, and a receiver for the next ones.
    pub fn subscribe(&self) -> (Vec<Arc<Sample>>, broadcast::Receiver<Arc<Sample>>) {
        let h = self.history.lock();
        let rx = self.live.subscribe();
        (h.iter().cloned().collect(), rx)
    }
}

fn sample(hub: &Source) -> Sample {
    let m = &hub.metrics;
    Sample {
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        uptime_s: hub.started.elapsed().as_secs(),
        engine: hub.engine,
        connections: m.connections.get(),
        connections_total: m.connections_total.get(),
        subscribers: hub.index.len(),
        updates_published_total: m.published_count.load(Ordering::Relaxed),
        updates_delivered_total: m.delivered_count.load(Ordering::Relaxed),
        slow_disconnects_total: m.slow_disconnects.get(),
        topics: hub
            .index
            .top_selectors(TOP_TOPICS)
            .into_iter()
            .map(|(topic, subscribers)| TopicCount { topic, subscribers })
            .collect(),
    }
}

/// Encodes one SSE event carrying JSON.
pub fn frame<T: Serialize>(event: &str, value: &T) -> Bytes {
    let data = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    herald_protocol::sse::encode(&herald_protocol::sse::EventFields {
        id: None,
        event: Some(event),
        data: &data,
        retry: None,
    })
}
