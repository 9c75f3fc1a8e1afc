//! Group commit: each node's appends go through one writer task, which
//! puts every append waiting at that moment into one statement, so one
//! commit (one hold of the position lock, one WAL flush) carries many.
//!
//! Positions are taken under a lock held until commit (see `schema.rs`):
//! one statement per append would cap a namespace at one commit's latency
//! per append, about 1,500 appends/s on this machine's disk. If a group
//! fails (a duplicate id, data the server refuses), its appends are
//! retried one by one, so only the one at fault is refused.

use std::sync::Arc;

use herald_protocol::Update;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use super::rows::append_error;
use super::state::{Inner, Request};
use crate::engine::{EngineError, Position};

/// Most updates in one statement.
const MAX_GROUP: usize = 4096;

/// Writes groups until `stop`.
/// The append statement, prepared on the connection it was prepared on.
type Prepared = Option<(Arc<Client>, Statement)>;

pub(crate) async fn run(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    stop: CancellationToken,
) {
    let mut prepared: Prepared = None;
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let mut group = vec![first];
        let mut count = group[0].updates.len();
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => {
                    count += r.updates.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        // An append whose caller gave up (its deadline passed) is not
        // written: it was answered 503 already.
        group.retain(|r| !r.reply.is_closed());
        write(&inner, group, &mut prepared).await;
    }
}

async fn write(inner: &Inner, mut group: Vec<Request>, prepared: &mut Prepared) {
    // Appends of one statement must expect the same log: a group that
    // straddles an adoption is split.
    while !group.is_empty() {
        let epoch = group[0].epoch.clone();
        let end = group
            .iter()
            .position(|r| r.epoch != epoch)
            .unwrap_or(group.len());
        let rest = group.split_off(end);
        write_same_epoch(inner, group, &epoch, prepared).await;
        group = rest;
    }
}

fn replaced() -> EngineError {
    EngineError::Unavailable(
        "postgres: the log was replaced; this node is moving to the new one, retry".into(),
    )
}

async fn write_same_epoch(
    inner: &Inner,
    group: Vec<Request>,
    epoch: &str,
    prepared: &mut Prepared,
) {
    let all: Vec<&Update> = group.iter().flat_map(|r| r.updates.iter()).collect();
    let result = statement(inner, &all, epoch, prepared).await;
    let total = all.len() as Position;
    drop(all);
    match result {
        Ok(Some(last)) => {
            let mut end = last + 1 - total;
            for r in group {
                end += r.updates.len() as Position;
                let _ = r.reply.send(Ok(end - 1));
            }
        }
        Ok(None) => {
            for r in group {
                let _ = r.reply.send(Err(replaced()));
            }
        }
        Err(_) if group.len() > 1 => {
            // Find out which append fails (a duplicate id, data the
            // server refuses): the others are written, that one refused.
            for r in group {
                if r.reply.is_closed() {
                    continue;
                }
                let mine: Vec<&Update> = r.updates.iter().collect();
                let result = match statement(inner, &mine, epoch, prepared).await {
                    Ok(Some(last)) => Ok(last),
                    Ok(None) => Err(replaced()),
                    Err(e) => Err(e),
                };
                let _ = r.reply.send(result);
            }
        }
        Err(e) => {
            for r in group {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Runs one append statement for `updates`: the last position, `None`
/// when the log's epoch is not `epoch`.
async fn statement(
    inner: &Inner,
    updates: &[&Update],
    epoch: &str,
    prepared: &mut Prepared,
) -> Result<Option<Position>, EngineError> {
    let n = updates.len() as i64;
    let ids: Vec<&str> = updates.iter().map(|u| u.id.as_str()).collect();
    let topics: Vec<String> = updates
        .iter()
        .map(|u| serde_json::to_string(&u.topics).unwrap_or_default())
        .collect();
    let data: Vec<&str> = updates.iter().map(|u| u.data.as_str()).collect();
    let types: Vec<Option<&str>> = updates.iter().map(|u| u.event_type.as_deref()).collect();
    // `retry` is a u64; bigint holds its bits (values above i64::MAX read
    // back as written).
    let retries: Vec<Option<i64>> = updates.iter().map(|u| u.retry.map(|r| r as i64)).collect();
    let private: Vec<bool> = updates.iter().map(|u| u.private).collect();
    let sql = format!(
        "WITH c AS (UPDATE {meta} SET last = last + $1 WHERE epoch = $2 RETURNING last) \
         INSERT INTO {updates} (position, id, topics, data, event_type, retry, private) \
         SELECT c.last - $1 + u.ord, u.id, ARRAY(SELECT json_array_elements_text(u.topics::json)), \
                u.data, u.event_type, u.retry, u.private \
         FROM c, unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::bool[]) \
             WITH ORDINALITY AS u(id, topics, data, event_type, retry, private, ord) \
         RETURNING position",
        meta = inner.names.meta,
        updates = inner.names.updates,
    );
    let result = inner
        .bounded(async {
            let client = inner.writer_link.client().await?;
            let stmt = match prepared {
                Some((c, s)) if Arc::ptr_eq(c, &client) => s.clone(),
                _ => {
                    let s = client.prepare(&sql).await.map_err(append_error)?;
                    *prepared = Some((client.clone(), s.clone()));
                    s
                }
            };
            let rows = client
                .query(
                    &stmt,
                    &[&n, &epoch, &ids, &topics, &data, &types, &retries, &private],
                )
                .await
                .map_err(append_error)?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, i64>(0).max(0) as Position)
                .max())
        })
        .await;
    // A failed statement may have been made stale (a schema dropped and
    // made again): prepare it anew next time.
    if matches!(result, Err(EngineError::Unavailable(_))) {
        *prepared = None;
    }
    result
}
