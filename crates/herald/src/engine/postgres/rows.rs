//! Rows of the `postgres` engine back into [`Stored`] updates, and its
//! errors as the engine contract names them.

use std::sync::Arc;

use herald_protocol::Update;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use crate::engine::{EngineError, Position, Stored};

/// The columns [`stored`] reads, in its order.
pub(crate) const COLUMNS: &str = "position, id, topics, data, event_type, retry, private";

/// A failure to reach or use the server: retry later.
pub(crate) fn unavailable(e: tokio_postgres::Error) -> EngineError {
    match e.as_db_error() {
        // "db error" alone says nothing: the server's own message does.
        Some(db) => EngineError::Unavailable(format!("postgres: {}", db.message())),
        None => EngineError::Unavailable(format!("postgres: {e}")),
    }
}

/// An append's failure: a duplicate id is a refusal, the rest is
/// `Unavailable`.
pub(crate) fn append_error(e: tokio_postgres::Error) -> EngineError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some("updates_id_key") {
            // "Key (id)=(the id) already exists."
            let id = db
                .detail()
                .and_then(|d| d.strip_prefix("Key (id)=("))
                .and_then(|d| d.strip_suffix(") already exists."))
                .unwrap_or_default();
            return EngineError::DuplicateId(id.to_owned());
        }
    }
    unavailable(e)
}

/// A row of `updates` selected with [`COLUMNS`] (from column `at`).
pub(crate) fn stored(row: &Row, at: usize) -> Result<Arc<Stored>, EngineError> {
    let bad = |e: tokio_postgres::Error| {
        EngineError::Unavailable(format!("postgres: a row of updates: {e}"))
    };
    let position: i64 = row.try_get(at).map_err(bad)?;
    let retry: Option<i64> = row.try_get(at + 5).map_err(bad)?;
    let update = Update {
        id: row.try_get(at + 1).map_err(bad)?,
        topics: row.try_get(at + 2).map_err(bad)?,
        data: row.try_get(at + 3).map_err(bad)?,
        event_type: row.try_get(at + 4).map_err(bad)?,
        // The bits of the u64 (see the append).
        retry: retry.map(|r| r as u64),
        private: row.try_get(at + 6).map_err(bad)?,
    };
    Ok(Arc::new(Stored::new(position.max(0) as Position, update)))
}
