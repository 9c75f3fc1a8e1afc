//! What the engine handle, the readers and the writer thread share: the
//! open store, the bounds of history, the sink, the writer's counters.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::RwLock;
use redb::Database;

use crate::engine::{EngineError, Sink};

/// What the engine handle, the readers and the writer thread share.
pub(super) struct Shared {
    pub(super) file: PathBuf,
    /// The open store. `None` after close, or while the writer reopens it
    /// after an I/O error.
    pub(super) db: RwLock<Option<Arc<Database>>>,
    pub(super) closed: AtomicBool,
    /// Oldest retained position, 0 when history is empty.
    pub(super) first: AtomicU64,
    pub(super) last: AtomicU64,
    pub(super) sink: RwLock<Option<Arc<dyn Sink>>>,
    pub(super) stats: Counters,
}

/// Counters the writer keeps; see [`LocalEngine::stats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) group_commits: AtomicU64,
    pub(super) appended: AtomicU64,
    pub(super) durable_commits: AtomicU64,
    pub(super) retention_removed: AtomicU64,
}

/// A store operation on `file` failed: unavailable, retry.
pub(super) fn storage_error(file: &Path, what: &str, e: &dyn fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("store {} {what} failed: {e}", file.display()))
}
