//! A shared engine's tail reconnecting after it lost its server (`redis`,
//! `postgres`, `nats`): it waits 50 ms, doubling to 1 s, and says so once
//! per outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::EngineError;

/// The wait before the next try.
#[derive(Debug)]
pub(crate) struct Retry {
    backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            backoff: Duration::from_millis(50),
        }
    }
}

impl Retry {
    /// After a failed try: marks the tail down (`up` false, `lost` true),
    /// logs the first failure of an outage, and waits. `false` when `stop`
    /// came first.
    pub async fn after(
        &mut self,
        engine: &'static str,
        e: &EngineError,
        (up, lost): (&AtomicBool, &AtomicBool),
        stop: &CancellationToken,
    ) -> bool {
        let was_up = up.swap(false, Ordering::AcqRel);
        let first_failure = !lost.swap(true, Ordering::AcqRel);
        if was_up || first_failure {
            tracing::warn!(engine, "lost the log, reconnecting: {e}");
            self.backoff = Duration::from_millis(50);
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(self.backoff) => {}
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
        true
    }
}
