//! What the phases of a run hand on: the connection phase's [`Connected`],
//! the measured [`Window`] and the [`Ended`] run, filled in by `bench.rs`
//! and tallied by `summary.rs`.

use super::connect::ConnectStats;
use super::load::Load;
use super::report::ChurnOut;
use super::stats::CpuUse;
use super::subscriber;

/// What connecting the subscribers measured.
pub(super) struct Connected {
    pub(super) stats: ConnectStats,
    /// CPU use while connecting.
    pub(super) cpu: CpuUse,
    /// The hub's memory (KiB, with `--pid`) before the first connection,
    /// and once the connections have settled.
    pub(super) rss_before: Option<u64>,
    pub(super) rss_idle: Option<u64>,
}

/// The measured window.
pub(super) struct Window {
    /// What the publishers did; `None` with `--idle`.
    pub(super) load: Option<Load>,
    /// The subscriptions opened meanwhile (`--churn`).
    pub(super) churn: Option<ChurnOut>,
    /// CPU use over the window.
    pub(super) cpu: CpuUse,
}

/// The end of the run: what the subscribers saw, and the hub's memory
/// (KiB, with `--pid`) just before they let go.
pub(super) struct Ended {
    pub(super) reports: Vec<subscriber::Report>,
    pub(super) rss_end: Option<u64>,
    pub(super) rss_peak: Option<u64>,
}
