//! The store file: its tables, creating it, opening (and verifying) it,
//! and reading back the state the writer starts from.
//!
//! Everything here runs before the writer thread exists, at
//! [`LocalEngine::open`](super::LocalEngine::open), and again when the
//! writer reopens the store after an I/O error. Opening never creates,
//! initializes or resets an existing file: a file that does not verify is
//! an error naming it (see "Damage is loud" in the module documentation).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::shared::storage_error;
use crate::engine::records::record_ts;
use crate::engine::{EngineError, Position};

/// The store file inside [`LocalConfig::path`](super::LocalConfig::path).
pub const STORE_FILE: &str = "herald.redb";

/// redb's page cache. History replays mostly read recent pages; the OS page
/// cache serves the rest.
const CACHE_BYTES: usize = 128 << 20;

/// Position → record (see [`records`](super::records)).
pub(super) const UPDATES: TableDefinition<u64, &[u8]> = TableDefinition::new("updates");
/// Id → position: what makes [`Engine::resolve`](crate::engine::Engine::resolve)
/// one indexed lookup.
pub(super) const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
/// The format version, the last position ever assigned, the retained bytes.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
pub(super) const META_LAST: &str = "last_position";
pub(super) const META_BYTES: &str = "retained_bytes";
/// The layout of the tables above; bumped on incompatible changes.
const FORMAT_VERSION: u64 = 1;

/// Creates an empty store under a temporary name and renames it into
/// place, so a crash during creation never leaves a half-made store file
/// that would then (rightly) refuse to open.
pub(super) fn create_store(dir: &Path, file: &Path) -> Result<(), EngineError> {
    let tmp = dir.join(format!("{STORE_FILE}.new"));
    let fail = |what: &str, e: &dyn fmt::Display| {
        EngineError::Unavailable(format!(
            "cannot create the store {} ({what}): {e}",
            file.display()
        ))
    };
    // A leftover from an interrupted creation never held any update.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("remove leftover", &e)),
    }
    let db = Database::builder()
        .create(&tmp)
        .map_err(|e| fail("create", &e))?;
    let txn = db.begin_write().map_err(|e| fail("write", &e))?;
    {
        txn.open_table(UPDATES).map_err(|e| fail("write", &e))?;
        txn.open_table(IDS).map_err(|e| fail("write", &e))?;
        let mut meta = txn.open_table(META).map_err(|e| fail("write", &e))?;
        for (key, value) in [
            (META_FORMAT, FORMAT_VERSION),
            (META_LAST, 0),
            (META_BYTES, 0),
        ] {
            meta.insert(key, value).map_err(|e| fail("write", &e))?;
        }
    }
    txn.commit().map_err(|e| fail("commit", &e))?;
    db.close().map_err(|e| fail("close", &e))?;
    std::fs::rename(&tmp, file).map_err(|e| fail("rename", &e))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("sync directory", &e))?;
    Ok(())
}

/// Opens an existing store, verifying every page. Never creates,
/// initializes or resets: a file that does not verify is an error.
pub(super) fn open_store(file: &Path) -> Result<Arc<Database>, EngineError> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder.set_check_integrity_on_open(true);
    let shown = file.display().to_string();
    builder.set_repair_callback(move |session| {
        // redb reports 0.3 only when the newest commit failed its checksum
        // and it falls back to the previous one: what a crash in the middle
        // of a commit leaves (that commit was never acknowledged).
        if (session.progress() - 0.3).abs() < 1e-9 {
            tracing::warn!(
                file = %shown,
                "the newest commit of the store is incomplete; recovering the previous commit \
                 (expected after a crash during a commit)"
            );
        }
    });
    // redb documents that it may panic on a file modified behind its back
    // (in debug builds on some checks). Report that as the damage it is.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.open(file)));
    let hint = "the file was left untouched; restore it from a backup, or move it away to \
                start with an empty store";
    match opened {
        Ok(Ok(db)) => Ok(Arc::new(db)),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            Err(EngineError::Unavailable(format!(
                "store {} is already open (by another process or engine)",
                file.display()
            )))
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Err(EngineError::Unavailable(format!(
                "cannot open the store {}: the file is truncated ({e}); {hint}",
                file.display()
            )))
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => Err(
            EngineError::Unavailable(format!("cannot open the store {}: {e}", file.display())),
        ),
        Ok(Err(e)) => Err(EngineError::Unavailable(format!(
            "cannot open the store {}: {e}; {hint}",
            file.display()
        ))),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(EngineError::Unavailable(format!(
                "store {} is damaged (opening it failed: {why}); {hint}",
                file.display()
            )))
        }
    }
}

/// What the writer tracks between commits; read from `meta` at open.
#[derive(Debug, Clone, Copy)]
pub(super) struct State {
    /// Oldest retained position, 0 when none.
    pub(super) first: Position,
    /// Last position ever assigned.
    pub(super) last: Position,
    /// Total footprint of the retained records.
    pub(super) bytes: u64,
    /// Commit time of the newest update (ms since the epoch); commit times
    /// never go backwards even if the clock does, so age retention can stop
    /// at the first update young enough.
    pub(super) last_ts: u64,
}

pub(super) fn load_state(db: &Database, file: &Path) -> Result<State, EngineError> {
    let bad = |why: String| {
        EngineError::Unavailable(format!(
            "store {} is not a valid herald store: {why}",
            file.display()
        ))
    };
    let fail = |e: &dyn fmt::Display| storage_error(file, "read", e);
    let txn = db.begin_read().map_err(|e| fail(&e))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(bad("no meta table".into())),
        Err(e) => return Err(fail(&e)),
    };
    let get = |key: &str| -> Result<Option<u64>, EngineError> {
        Ok(meta.get(key).map_err(|e| fail(&e))?.map(|v| v.value()))
    };
    match get(META_FORMAT)? {
        Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(bad(format!(
                "format version {v}, this herald reads version {FORMAT_VERSION}"
            )))
        }
        None => return Err(bad("no format version".into())),
    }
    let mut last = get(META_LAST)?.unwrap_or(0);
    let bytes = get(META_BYTES)?.unwrap_or(0);
    let updates = txn.open_table(UPDATES).map_err(|e| fail(&e))?;
    let first = match updates.first().map_err(|e| fail(&e))? {
        Some((k, _)) => k.value(),
        None => 0,
    };
    let mut last_ts = 0;
    if let Some((k, v)) = updates.last().map_err(|e| fail(&e))? {
        if k.value() > last {
            return Err(bad(format!(
                "position {} is past the recorded last position {last}",
                k.value()
            )));
        }
        last = last.max(k.value());
        last_ts = record_ts(v.value()).map_err(|e| bad(e.to_string()))?;
    }
    Ok(State {
        first,
        last,
        bytes,
        last_ts,
    })
}
