//! PostgreSQL into a hub.
//!
//! - **NOTIFY** (`--channel`, repeatable): each notification on a channel
//!   becomes an update. Fire-and-forget, as NOTIFY itself is: what is
//!   notified while the bridge is not connected is not seen.
//! - **Outbox** (`--outbox TABLE`): the application inserts rows
//!   `(channel, payload)` into the table in its own transactions; the
//!   bridge publishes them in id order and deletes each only once the hub
//!   has appended it. Each row's update id is `NAME:TABLE:ID`, so a row
//!   published before a crash and read again is refused by the hub as a
//!   duplicate and deleted: at least once, never twice (while the hub's
//!   history still holds the id). The bridge creates the table, and a
//!   trigger that notifies it of inserts, if they do not exist; it also
//!   reads the table every `--poll`, in case a notification is missed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use super::shared::{Backoff, Bridge, Fatal, MapArgs, Settled};

/// Rows read from an outbox at a time.
const OUTBOX_BATCH: i64 = 100;
/// Notifications held while the hub is slow or down; past them they go
/// to the dead-letter log (NOTIFY is fire-and-forget anyway).
const NOTIFY_QUEUE: usize = 10_000;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The PostgreSQL to read, e.g. `postgres://app@127.0.0.1:5432/app`.
    #[arg(long, value_name = "URL", env = "HERALD_BRIDGE_POSTGRES")]
    postgres: String,
    /// A NOTIFY channel to listen on (repeatable).
    #[arg(
        long = "channel",
        value_name = "NAME",
        required_unless_present = "outbox",
        conflicts_with = "outbox"
    )]
    channels: Vec<String>,
    /// An outbox table to publish and empty (created if missing).
    #[arg(long, value_name = "TABLE")]
    outbox: Option<String>,
    /// How often the outbox is read when no insert is notified.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::shared::parse_duration)]
    poll: Duration,
    #[command(flatten)]
    pub map: MapArgs,
}

impl Args {
    /// NOTIFY reaches every listener, and an outbox is read in id order
    /// by one reader: both run on one hub of several.
    pub fn broadcast(&self) -> bool {
        true
    }

    /// Refuses arguments that can never work, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Err(e) = self.postgres.parse::<tokio_postgres::Config>() {
            bail!("--postgres {:?}: {e}", self.postgres);
        }
        if self.poll.is_zero() {
            bail!("--poll must be more than 0");
        }
        if let Some(table) = &self.outbox {
            if !is_identifier(table) {
                bail!("--outbox {table:?}: a table name is letters, digits and _, not starting with a digit");
            }
        }
        Ok(())
    }
}

/// Runs the bridge until a [`Fatal`] error.
pub async fn run(args: &Args, bridge: Arc<Bridge>) -> anyhow::Result<()> {
    args.check()?;
    match &args.outbox {
        Some(table) => outbox(args, table, &bridge).await,
        None => notify(args, bridge).await,
    }
}

/// A plain SQL identifier (written quoted all the same, so a reserved
/// word works too).
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// Why a connection could not be set up.
enum ConnectError {
    /// Down, or refused us: try again later.
    Retry(anyhow::Error),
    /// The setup itself is wrong (a syntax or feature error): it will
    /// never work.
    Fatal(anyhow::Error),
}

/// Connects, runs `setup`, and returns the client and the notifications
/// (channel, payload) as they come; the receiver ends with the connection.
/// With `losses`, notifications past a full queue are lost events, for
/// the dead-letter log; without, they are wake-ups that one waiting
/// already stands for (an outbox's), held one at a time.
async fn connect(
    url: &str,
    setup: &str,
    losses: Option<Arc<Bridge>>,
) -> Result<(Client, mpsc::Receiver<(String, String)>), ConnectError> {
    let (client, mut connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .context("PostgreSQL did not answer within 10 s")
            .and_then(|r| r.context("cannot connect to PostgreSQL"))
            .map_err(ConnectError::Retry)?;
    let (tx, rx) = mpsc::channel(if losses.is_some() { NOTIFY_QUEUE } else { 1 });
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let sent = tx.try_send((n.channel().to_owned(), n.payload().to_owned()));
                    if let (Err(mpsc::error::TrySendError::Full(_)), Some(bridge)) = (sent, &losses)
                    {
                        bridge.dead_letter(
                            n.channel(),
                            None,
                            n.payload(),
                            "dropped: the hub is behind and the bridge holds the most it may",
                        );
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!("PostgreSQL connection failed: {e}");
                    return;
                }
                None => return,
            }
        }
    });
    if let Err(e) = client.batch_execute(setup).await {
        let fatal = e
            .code()
            .is_some_and(|c| c.code().starts_with("42") || c.code().starts_with("0A"));
        let e = anyhow::Error::new(e).context("cannot set the source up");
        return Err(if fatal {
            ConnectError::Fatal(e)
        } else {
            ConnectError::Retry(e)
        });
    }
    Ok((client, rx))
}

/// `LISTEN "name"`, quoted.
fn listen(channel: &str) -> String {
    format!("LISTEN \"{}\";", channel.replace('"', "\"\""))
}

async fn notify(args: &Args, bridge: Arc<Bridge>) -> anyhow::Result<()> {
    let setup: String = args.channels.iter().map(|c| listen(c)).collect();
    let mut backoff = Backoff::new();
    loop {
        let (_client, mut events) =
            match connect(&args.postgres, &setup, Some(bridge.clone())).await {
                Ok(c) => c,
                Err(ConnectError::Fatal(e)) => return Err(e),
                Err(ConnectError::Retry(e)) => {
                    bridge.source_failed(&mut backoff, &e).await;
                    continue;
                }
            };
        tracing::info!(bridge = bridge.name, channels = ?args.channels, "source listening");
        backoff.reset();
        while let Some((channel, payload)) = events.recv().await {
            bridge.deliver(&channel, &payload, None).await?;
        }
        let e = anyhow::anyhow!("the connection ended");
        bridge.source_failed(&mut backoff, &e).await;
    }
}

async fn outbox(args: &Args, table: &str, bridge: &Arc<Bridge>) -> anyhow::Result<()> {
    // Quoted: the name is checked to be plain, and may be a reserved word.
    let setup = format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (
             id bigserial PRIMARY KEY,
             channel text NOT NULL DEFAULT '',
             payload text NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now());
         CREATE OR REPLACE FUNCTION \"{table}_notify\"() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_notify('{table}', ''); RETURN NULL; END $$;
         CREATE OR REPLACE TRIGGER \"{table}_notify\" AFTER INSERT ON \"{table}\"
             FOR EACH STATEMENT EXECUTE FUNCTION \"{table}_notify\"();
         {}",
        listen(table)
    );
    // Cast, so an application's own table (`serial` ids, `jsonb`
    // payloads, a nullable channel) reads as well as the one made here.
    let select = format!(
        "SELECT id::int8, coalesce(channel::text, ''), payload::text FROM \"{table}\" \
         ORDER BY id LIMIT {OUTBOX_BATCH}"
    );
    let delete = format!("DELETE FROM \"{table}\" WHERE id = ANY($1)");
    let mut backoff = Backoff::new();
    loop {
        let (client, mut wakeups) = match connect(&args.postgres, &setup, None).await {
            Ok(c) => c,
            Err(ConnectError::Fatal(e)) => return Err(e),
            Err(ConnectError::Retry(e)) => {
                bridge.source_failed(&mut backoff, &e).await;
                continue;
            }
        };
        tracing::info!(bridge = bridge.name, table, "reading the outbox");
        let result: anyhow::Result<()> = async {
            loop {
                let rows = client.query(select.as_str(), &[]).await?;
                backoff.reset();
                let mut done: Vec<i64> = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: i64 = row.try_get(0)?;
                    let channel: String = row.try_get(1)?;
                    let payload: String = row.try_get::<_, Option<String>>(2)?.unwrap_or_default();
                    let position = format!("{table}:{id}");
                    // Appended, held already, or dead-lettered: the row is
                    // done. The hub down: it waits, on this connection.
                    match bridge.deliver(&channel, &payload, Some(&position)).await {
                        Ok(Settled::Published | Settled::DeadLetter) => done.push(id),
                        Err(fatal) => {
                            client.execute(delete.as_str(), &[&done]).await?;
                            return Err(fatal.into());
                        }
                    }
                }
                if !done.is_empty() {
                    client.execute(delete.as_str(), &[&done]).await?;
                }
                if rows.len() < OUTBOX_BATCH as usize {
                    // Caught up: until an insert is notified, or the poll.
                    if let Ok(None) = tokio::time::timeout(args.poll, wakeups.recv()).await {
                        bail!("the connection ended");
                    }
                    while wakeups.try_recv().is_ok() {}
                }
            }
        }
        .await;
        if let Err(e) = result {
            if let Some(Fatal(e)) = e.downcast_ref::<Fatal>() {
                bail!("{e:#}");
            }
            bridge.source_failed(&mut backoff, &e).await;
        }
    }
}
