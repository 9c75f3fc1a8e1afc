//! The `postgres` engine's schema: one PostgreSQL schema per namespace,
//! created and migrated at start, versioned in its `meta` row.
//!
//! | table | holds |
//! |---|---|
//! | `meta` | one row: schema `version`, the log's `epoch`, `last` (the last position given) |
//! | `updates` | one row per retained update: `position` (primary key), `id` (unique), the update's fields, `at` (commit time) |
//! | `nodes` | node → when its presence expires |
//! | `subscriptions` | each node's subscriptions (the directory) |
//! | `leases` | lease → the node holding it and until when (broadcast bridges'); created on first use |
//!
//! **Positions in commit order.** An append takes its positions by
//! `UPDATE meta SET last = last + n` in the same transaction as its rows.
//! The row lock that `UPDATE` takes is held until the transaction ends,
//! so the next append (on any node, or an application's
//! `herald_publish`) takes its positions only after this one committed or
//! rolled back: positions become visible in order, with no hole a reader
//! could skip. A `bigserial` would hand out numbers at insert time, out of
//! commit order, and a tail reading "after position P" would skip a row
//! that commits late. The price is that appends are serialized, each
//! holding the lock through its commit; the node groups concurrent
//! appends so that one commit carries many.
//!
//! **`herald_publish(topics, data, id, event_type, retry, private)`**
//! lets an application publish inside its own transaction: the update
//! exists only if that transaction commits. Until it ends, it holds the
//! position lock, so call it last in the transaction.
//!
//! **Wake-ups.** A statement-level trigger sends `NOTIFY` on the
//! namespace's channel after each insert (delivered at commit). It is a
//! wake-up only: tails also poll, so a lost notification (or LISTEN behind
//! PgBouncer in transaction mode, where it does not work) costs latency,
//! never data.

use tokio_postgres::Client;

use super::rows::unavailable;
use crate::engine::EngineError;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = 1;

/// A namespace's SQL names, quoted.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub schema: String,
    pub meta: String,
    pub updates: String,
    pub nodes: String,
    pub subscriptions: String,
    pub leases: String,
    /// The NOTIFY channel, quoted for LISTEN.
    pub channel: String,
    /// The channel as `pg_notify` takes it (unquoted text).
    channel_text: String,
    /// For the migration's advisory lock.
    pub lock_key: String,
    namespace: String,
}

/// `"name"` with inner quotes doubled.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        let schema = quote(namespace);
        let channel_text = format!("herald_{namespace}");
        Self {
            meta: format!("{schema}.meta"),
            updates: format!("{schema}.updates"),
            nodes: format!("{schema}.nodes"),
            subscriptions: format!("{schema}.subscriptions"),
            leases: format!("{schema}.leases"),
            channel: quote(&channel_text),
            channel_text,
            lock_key: format!("herald:{namespace}"),
            schema,
            namespace: namespace.to_owned(),
        }
    }

    /// The schema's name as catalogs spell it.
    pub fn schema_text(&self) -> &str {
        &self.namespace
    }
}

/// The statements that create version 1 (without the `meta` row).
fn create(n: &Names) -> String {
    let Names {
        schema,
        meta,
        updates,
        nodes,
        subscriptions,
        channel_text,
        ..
    } = n;
    let channel = channel_text.replace('\'', "''");
    format!(
        r#"
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {meta} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL,
    epoch text NOT NULL,
    last bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {updates} (
    position bigint PRIMARY KEY,
    id text NOT NULL UNIQUE,
    topics text[] NOT NULL,
    data text NOT NULL,
    event_type text,
    retry bigint,
    private boolean NOT NULL DEFAULT false,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS {nodes} (
    node text PRIMARY KEY,
    expires timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {subscriptions} (
    node text NOT NULL,
    key bigint NOT NULL,
    entry text NOT NULL,
    PRIMARY KEY (node, key)
);
CREATE OR REPLACE FUNCTION {schema}.herald_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS herald_notify ON {updates};
CREATE TRIGGER herald_notify AFTER INSERT ON {updates}
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.herald_notify();
CREATE OR REPLACE FUNCTION {schema}.herald_publish(
    topics text[],
    data text,
    id text DEFAULT NULL,
    event_type text DEFAULT NULL,
    retry bigint DEFAULT NULL,
    private boolean DEFAULT false
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    pos bigint;
    uid text := coalesce(id, 'urn:uuid:' || gen_random_uuid()::text);
BEGIN
    IF topics IS NULL OR cardinality(topics) = 0 THEN
        RAISE EXCEPTION 'herald_publish: at least one topic';
    END IF;
    UPDATE {meta} SET last = last + 1 RETURNING last INTO pos;
    INSERT INTO {updates} (position, id, topics, data, event_type, retry, private)
        VALUES (pos, uid, topics, coalesce(data, ''), event_type, retry, coalesce(private, false));
    RETURN uid;
END $$;
"#
    )
}

/// Creates the namespace's schema when missing, in one transaction under
/// an advisory lock (nodes starting together create it once), and gives
/// the log an identity when it has none: a new log, or one whose `meta`
/// row was deleted, which then starts over empty. Refuses a schema newer
/// than this build.
///
/// # Errors
/// The server refused, or the schema is of a version this build does not
/// know.
pub(crate) async fn migrate(client: &mut Client, n: &Names) -> Result<(), EngineError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&n.lock_key])
        .await
        .map_err(unavailable)?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'meta'",
            &[&n.schema_text()],
        )
        .await
        .map_err(unavailable)?
        .is_some();
    if exists {
        let row = tx
            .query_opt(&format!("SELECT version FROM {}", n.meta), &[])
            .await
            .map_err(unavailable)?;
        if let Some(row) = row {
            let version: i32 = row.get(0);
            if version > SCHEMA_VERSION {
                return Err(EngineError::Unavailable(format!(
                    "postgres: the schema {} is at version {version}, newer than this herald knows ({SCHEMA_VERSION}): upgrade herald",
                    n.schema
                )));
            }
        }
    } else {
        tx.batch_execute(&create(n)).await.map_err(unavailable)?;
    }
    let epoch = uuid::Uuid::new_v4().simple().to_string();
    let made = tx
        .query_opt(
            &format!(
                "INSERT INTO {} (version, epoch, last) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING RETURNING 1",
                n.meta
            ),
            &[&SCHEMA_VERSION, &epoch],
        )
        .await
        .map_err(unavailable)?
        .is_some();
    if made && exists {
        tx.execute(&format!("DELETE FROM {}", n.updates), &[])
            .await
            .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)
}
