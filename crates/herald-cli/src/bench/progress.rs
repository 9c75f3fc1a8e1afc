//! Progress lines on stderr while the bench runs: connections opened, and
//! once a second the rates of publication, acknowledgement and delivery
//! with the CPU use of the generator and the hub, so a stalled or
//! saturated run shows before its report.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::report::{fmt_count, fmt_pct};
use super::stats::{CpuSample, Proc, Shared};

/// Progress lines on stderr, once a second.
pub(super) struct Progress {
    pub quiet: bool,
    /// The hub's processes, whose CPU use is shown (`--pid`).
    pub hub: Option<Proc>,
}

impl Progress {
    pub fn line(&self, text: &str) {
        if !self.quiet {
            eprintln!("herald bench: {text}");
        }
    }

    /// Waits until `deadline`, printing rates and CPU use each second.
    pub async fn wait_until(&self, deadline: Instant, phase: &str, shared: &Shared) {
        let mut last = (
            CpuSample::take(self.hub.as_ref()),
            Instant::now(),
            shared.sent.load(Ordering::Relaxed),
            shared.acked.load(Ordering::Relaxed),
            shared.delivered(),
        );
        loop {
            let next = (Instant::now() + Duration::from_secs(1)).min(deadline);
            tokio::time::sleep_until(next.into()).await;
            if self.quiet {
                if next >= deadline {
                    return;
                }
                continue;
            }
            let now = (
                CpuSample::take(self.hub.as_ref()),
                Instant::now(),
                shared.sent.load(Ordering::Relaxed),
                shared.acked.load(Ordering::Relaxed),
                shared.delivered(),
            );
            let secs = (now.1 - last.1).as_secs_f64();
            if secs >= 0.2 {
                let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
                let used = now.0.since(&last.0);
                let (hub_cpu, own_cpu) = (used.hub, used.own);
                let mut text = format!(
                    "{phase}: sent {}/s, acked {}/s, delivered {}/s, generator CPU {}",
                    fmt_count(per_s(last.2, now.2) as u64),
                    fmt_count(per_s(last.3, now.3) as u64),
                    fmt_count(per_s(last.4, now.4) as u64),
                    fmt_pct(own_cpu),
                );
                if self.hub.is_some() {
                    let _ = write!(text, ", hub CPU {}", fmt_pct(hub_cpu));
                }
                self.line(&text);
                last = now;
            }
            if next >= deadline {
                return;
            }
        }
    }
}
