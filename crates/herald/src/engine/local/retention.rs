//! Enforcing [`Retention`](super::Retention): removing the oldest updates
//! that a count, age or byte limit no longer allows.
//!
//! It runs on the writer thread, between group commits, in transactions of
//! at most [`RETENTION_CHUNK`] removals committed without fsync, so a large
//! clean-up never holds the writer for long and a crash merely repeats it.
//! See "Retention" in the module documentation for why it runs there rather
//! than on a thread of its own. Positions are contiguous and only the
//! oldest are ever removed, so the retained history stays `first..=last`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use redb::ReadableTable;

use super::store::{IDS, META, META_BYTES, UPDATES};
use super::writer::{WriteError, Writer};
use crate::engine::records::{footprint, now_ms, record_id, record_ts};

/// At most this many updates are removed per retention transaction.
pub const RETENTION_CHUNK: usize = 2048;

impl Writer {
    /// Whether history is over a count or byte limit right now.
    pub(super) fn over_limits(&self) -> bool {
        let st = &self.state;
        let count = if st.first == 0 {
            0
        } else {
            st.last - st.first + 1
        };
        self.retention.max_updates.is_some_and(|max| count > max)
            || self.retention.max_bytes.is_some_and(|max| st.bytes > max)
    }

    /// Removes up to [`RETENTION_CHUNK`] of the oldest updates that some
    /// limit no longer allows, in one transaction (no fsync: see the module
    /// documentation). Leaves `retention_due` set while more may remain.
    pub(super) fn retention_chunk(&mut self) -> Result<(), WriteError> {
        self.retention_due = false;
        if self.state.first == 0 || self.retention.is_unlimited() {
            return Ok(());
        }
        let r = &self.retention;
        let count_cut = r.max_updates.map(|max| self.state.last.saturating_sub(max));
        let age_cut = r
            .max_age
            .map(|age| now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
        let max_bytes = r.max_bytes;

        let mut state = self.state;
        let mut txn = self.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let removed;
        {
            let mut updates = txn.open_table(UPDATES)?;
            let mut ids = txn.open_table(IDS)?;
            let mut victims = Vec::new();
            for entry in updates.range(state.first..)?.take(RETENTION_CHUNK) {
                let (pos, record) = entry?;
                let (pos, record) = (pos.value(), record.value());
                let ts = record_ts(record).map_err(|error| WriteError::Record {
                    position: pos,
                    error,
                })?;
                let expired = count_cut.is_some_and(|cut| pos <= cut)
                    || max_bytes.is_some_and(|max| state.bytes > max)
                    || age_cut.is_some_and(|cut| ts < cut);
                if !expired {
                    break;
                }
                let id = record_id(record).map_err(|error| WriteError::Record {
                    position: pos,
                    error,
                })?;
                state.bytes = state
                    .bytes
                    .saturating_sub(footprint(record.len(), id.len()));
                victims.push((pos, id.to_owned()));
            }
            removed = victims.len();
            for (pos, id) in &victims {
                updates.remove(pos)?;
                // Only if the index still points here (it always should).
                let indexed = ids.get(id.as_str())?.map(|v| v.value());
                if indexed == Some(*pos) {
                    ids.remove(id.as_str())?;
                }
            }
            state.first = match updates.first()? {
                Some((k, _)) => k.value(),
                None => 0,
            };
            if removed > 0 {
                let mut meta = txn.open_table(META)?;
                meta.insert(META_BYTES, state.bytes)?;
            }
        }
        if removed == 0 {
            let _ = txn.abort();
            return Ok(());
        }
        txn.commit().map_err(|e| {
            self.broken_since.get_or_insert_with(Instant::now);
            WriteError::Commit(e)
        })?;
        self.committed(redb::Durability::None);
        self.state = state;
        self.publish_bounds();
        self.shared
            .stats
            .retention_removed
            .fetch_add(removed as u64, Ordering::Relaxed);
        tracing::debug!(removed, first = state.first, "store retention");
        self.retention_due = removed == RETENTION_CHUNK || self.over_limits();
        Ok(())
    }
}
