//! Redis (or Valkey) into a hub.
//!
//! - **Pub/Sub** (`--channel`, `--pattern`, repeatable): each message
//!   becomes an update; `{channel}` is the channel it was published on.
//!   Fire-and-forget, as Pub/Sub itself is.
//! - **A stream read by a consumer group** (`--stream KEY --group NAME`):
//!   each entry's `--field` is the payload and `{channel}` is the stream's
//!   key. An entry is acknowledged (`XACK`) only once the hub appended it
//!   (or held it already, or it went to the dead-letter log), so delivery
//!   is at least once across restarts; its update id is `NAME:KEY:ENTRY-ID`,
//!   so a redelivered entry is refused by the hub as a duplicate rather
//!   than shown twice. Several bridges in one group share the entries
//!   (each goes to one of them); entries a stopped consumer left
//!   unacknowledged for `--claim-idle` are claimed by the others.

use std::sync::Arc;
use std::time::Duration;

use ::redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use ::redis::AsyncCommands as _;
use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;

use super::shared::{AbortOnDrop, Backoff, Bridge, MapArgs};

/// Pub/Sub messages held while the hub is behind; past them they go to
/// the dead-letter log (Pub/Sub is fire-and-forget anyway).
const QUEUE: usize = 10_000;
/// Entries read at a time.
const BATCH: usize = 100;
/// How long one read waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The Redis to read, e.g. `redis://127.0.0.1:6379/0` (`rediss://` for
    /// TLS).
    #[arg(long, value_name = "URL", env = "HERALD_BRIDGE_REDIS")]
    redis: String,
    /// A Pub/Sub channel to subscribe to (repeatable).
    #[arg(long = "channel", value_name = "NAME", conflicts_with = "stream")]
    channels: Vec<String>,
    /// A Pub/Sub pattern to subscribe to, e.g. `orders.*` (repeatable).
    #[arg(long = "pattern", value_name = "GLOB", conflicts_with = "stream")]
    patterns: Vec<String>,
    /// A stream to read with a consumer group (created if missing, from
    /// the entries added after it).
    #[arg(long, value_name = "KEY", requires = "group")]
    stream: Option<String>,
    /// The stream's consumer group.
    #[arg(long, value_name = "NAME", requires = "stream")]
    group: Option<String>,
    /// This bridge's name in the group [default: `herald-` and the host
    /// name, so a restarted bridge takes back what it left pending].
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    /// The entry field holding the payload.
    #[arg(long, value_name = "NAME", default_value = "payload")]
    field: String,
    /// Entries another consumer left unacknowledged this long are claimed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::shared::parse_duration)]
    claim_idle: Duration,
    #[command(flatten)]
    pub map: MapArgs,
}

impl Args {
    /// Pub/Sub reaches every subscriber; a group shares its entries out.
    pub fn broadcast(&self) -> bool {
        self.stream.is_none()
    }

    /// Refuses arguments that can never work, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        ::redis::Client::open(self.redis.as_str())
            .with_context(|| format!("--redis {:?}", self.redis))?;
        if self.stream.is_none() && self.channels.is_empty() && self.patterns.is_empty() {
            bail!("give --channel, --pattern, or --stream with --group");
        }
        Ok(())
    }
}

/// Runs the bridge until a fatal error.
pub async fn run(args: &Args, bridge: Arc<Bridge>) -> anyhow::Result<()> {
    args.check()?;
    let client = ::redis::Client::open(args.redis.as_str())?;
    match (&args.stream, &args.group) {
        (Some(stream), Some(group)) => consume(args, &client, stream, group, &bridge).await,
        _ => pubsub(args, &client, &bridge).await,
    }
}

async fn pubsub(args: &Args, client: &::redis::Client, bridge: &Arc<Bridge>) -> anyhow::Result<()> {
    let mut backoff = Backoff::new();
    loop {
        let connected: anyhow::Result<::redis::aio::PubSub> = async {
            let mut ps = client
                .get_async_pubsub()
                .await
                .context("cannot connect to Redis")?;
            for c in &args.channels {
                ps.subscribe(c).await?;
            }
            for p in &args.patterns {
                ps.psubscribe(p).await?;
            }
            Ok(ps)
        }
        .await;
        let ps = match connected {
            Ok(ps) => ps,
            Err(e) => {
                bridge.source_failed(&mut backoff, &e).await;
                continue;
            }
        };
        tracing::info!(bridge = bridge.name, channels = ?args.channels, patterns = ?args.patterns, "source listening");
        backoff.reset();
        // The client reads the connection into a queue of its own without
        // bound: messages are taken from it at once, into a bounded one.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(QUEUE);
        let forwarder = {
            let bridge = bridge.clone();
            tokio::spawn(async move {
                let mut messages = ps.into_on_message();
                while let Some(msg) = messages.next().await {
                    let channel = msg.get_channel_name().to_owned();
                    let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    if let Err(tokio::sync::mpsc::error::TrySendError::Full((channel, payload))) =
                        tx.try_send((channel, payload))
                    {
                        bridge.dead_letter(
                            &channel,
                            None,
                            &payload,
                            "dropped: the hub is behind and the bridge holds the most it may",
                        );
                    }
                }
            })
        };
        let _forwarder = AbortOnDrop(forwarder);
        while let Some((channel, payload)) = rx.recv().await {
            bridge.deliver(&channel, &payload, None).await?;
        }
        let e = anyhow::anyhow!("the connection ended");
        bridge.source_failed(&mut backoff, &e).await;
    }
}

/// This host's consumer name.
fn default_consumer() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "local".into());
    format!("herald-{host}")
}

async fn consume(
    args: &Args,
    client: &::redis::Client,
    stream: &str,
    group: &str,
    bridge: &Bridge,
) -> anyhow::Result<()> {
    let consumer = args.consumer.clone().unwrap_or_else(default_consumer);
    let config = ::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(10)));
    let mut backoff = Backoff::new();
    loop {
        let result: anyhow::Result<()> = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .context("cannot connect to Redis")?;
            let created: ::redis::RedisResult<()> =
                conn.xgroup_create_mkstream(stream, group, "$").await;
            if let Err(e) = created {
                if e.code() != Some("BUSYGROUP") {
                    return Err(anyhow::Error::new(e).context("cannot create the consumer group"));
                }
            }
            tracing::info!(
                bridge = bridge.name,
                stream,
                group,
                consumer,
                "reading the stream"
            );
            backoff.reset();
            // What this consumer left pending before a restart, first.
            let mut from = "0".to_owned();
            let mut last_claim = tokio::time::Instant::now() - args.claim_idle;
            loop {
                if last_claim.elapsed() >= args.claim_idle {
                    last_claim = tokio::time::Instant::now();
                    let idle = u64::try_from(args.claim_idle.as_millis()).unwrap_or(u64::MAX);
                    let claimed: StreamAutoClaimReply = ::redis::cmd("XAUTOCLAIM")
                        .arg(stream)
                        .arg(group)
                        .arg(&consumer)
                        .arg(idle)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut conn)
                        .await?;
                    if !claimed.claimed.is_empty() {
                        tracing::info!(
                            bridge = bridge.name,
                            n = claimed.claimed.len(),
                            "claimed entries another consumer left pending"
                        );
                    }
                    settle(args, stream, group, &mut conn, bridge, &claimed.claimed).await?;
                }
                let opts = StreamReadOptions::default()
                    .group(group, &consumer)
                    .count(BATCH)
                    .block(BLOCK.as_millis() as usize);
                let reply: Option<StreamReadReply> = conn
                    .xread_options(&[stream], &[from.as_str()], &opts)
                    .await?;
                let entries: Vec<StreamId> = reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default();
                if entries.is_empty() && from != ">" {
                    // Nothing of ours left pending: new entries from now on.
                    from = ">".into();
                    continue;
                }
                settle(args, stream, group, &mut conn, bridge, &entries).await?;
            }
        }
        .await;
        if let Err(e) = result {
            if let Some(fatal) = e.downcast_ref::<super::shared::Fatal>() {
                bail!("{fatal}");
            }
            bridge.source_failed(&mut backoff, &e).await;
        }
    }
}

/// Publishes entries, then acknowledges those settled (appended, held
/// already, or dead-lettered) in one `XACK`, also when a later one fails.
async fn settle(
    args: &Args,
    stream: &str,
    group: &str,
    conn: &mut ::redis::aio::MultiplexedConnection,
    bridge: &Bridge,
    entries: &[StreamId],
) -> anyhow::Result<()> {
    let mut settled: Vec<&str> = Vec::with_capacity(entries.len());
    let mut failed = None;
    for entry in entries {
        let position = format!("{stream}:{}", entry.id);
        match entry.get::<String>(&args.field) {
            Some(payload) => {
                if let Err(fatal) = bridge.deliver(stream, &payload, Some(&position)).await {
                    failed = Some(fatal);
                    break;
                }
            }
            None => bridge.dead_letter(
                stream,
                Some(&position),
                "",
                &format!("the entry has no {} field", args.field),
            ),
        }
        settled.push(&entry.id);
    }
    if !settled.is_empty() {
        let _: i64 = conn.xack(stream, group, &settled).await?;
    }
    match failed {
        Some(fatal) => Err(fatal.into()),
        None => Ok(()),
    }
}
