//! NATS into a hub.
//!
//! - **Core subjects** (`--subject`, repeatable, with NATS wildcards `*`
//!   and `>`): each message becomes an update; `{channel}` is its subject.
//!   Fire-and-forget, as core NATS is.
//! - **A JetStream durable consumer** (`--stream NAME --durable NAME`):
//!   each message is acknowledged only once the hub appended it (or held
//!   it already, or it went to the dead-letter log), so delivery is at
//!   least once across restarts; its update id is `NAME:STREAM:SEQUENCE`, so a
//!   redelivered message is refused by the hub as a duplicate rather than
//!   shown twice. Bridges on several nodes bound to one durable consumer
//!   share its messages; what a stopped one left unacknowledged is
//!   redelivered to the others after `--ack-wait`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_util::StreamExt as _;

use super::shared::{Backoff, Bridge, Fatal, MapArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The NATS to read, e.g. `nats://127.0.0.1:4222`.
    #[arg(long, value_name = "URL", env = "HERALD_BRIDGE_NATS")]
    nats: String,
    /// A core subject to subscribe to, wildcards allowed (repeatable).
    #[arg(long = "subject", value_name = "SUBJECT", conflicts_with = "stream")]
    subjects: Vec<String>,
    /// A JetStream stream to read with a durable consumer.
    #[arg(long, value_name = "NAME", requires = "durable")]
    stream: Option<String>,
    /// The durable consumer (created if missing, from the messages stored
    /// after it).
    #[arg(long, value_name = "NAME", requires = "stream")]
    durable: Option<String>,
    /// Only the stream's messages on this subject (wildcards allowed),
    /// when the consumer is created.
    #[arg(long, value_name = "SUBJECT", requires = "stream")]
    filter: Option<String>,
    /// How long a message may go unacknowledged before it is delivered
    /// again (to this bridge or another on the same consumer).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::shared::parse_duration)]
    ack_wait: Duration,
    #[command(flatten)]
    pub map: MapArgs,
}

impl Args {
    /// Core subjects reach every subscriber; a durable shares its
    /// messages out.
    pub fn broadcast(&self) -> bool {
        self.stream.is_none()
    }

    /// Refuses arguments that can never work, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        self.nats
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| anyhow!("--nats {:?}: {e}", self.nats))?;
        if self.stream.is_none() && self.subjects.is_empty() {
            bail!("give --subject, or --stream with --durable");
        }
        Ok(())
    }
}

/// Runs the bridge until a fatal error.
pub async fn run(args: &Args, bridge: Arc<Bridge>) -> anyhow::Result<()> {
    args.check()?;
    let mut backoff = Backoff::new();
    loop {
        let result = match (&args.stream, &args.durable) {
            (Some(stream), Some(durable)) => consume(args, stream, durable, &bridge).await,
            _ => subscribe(args, &bridge).await,
        };
        let e = match result {
            Ok(()) => anyhow!("the connection ended"),
            Err(e) => e,
        };
        if let Some(fatal) = e.downcast_ref::<Fatal>() {
            bail!("{fatal}");
        }
        bridge.source_failed(&mut backoff, &e).await;
    }
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url),
    )
    .await
    .context("NATS did not answer within 10 s")?
    .context("cannot connect to NATS")
}

/// Core subjects, until the subscription ends.
async fn subscribe(args: &Args, bridge: &Bridge) -> anyhow::Result<()> {
    let client = connect(&args.nats).await?;
    let mut subs = futures_util::stream::SelectAll::new();
    for s in &args.subjects {
        subs.push(client.subscribe(s.clone()).await?);
    }
    // The subscriptions reach the server before the bridge says it
    // listens.
    client.flush().await?;
    tracing::info!(bridge = bridge.name, subjects = ?args.subjects, "source listening");
    while let Some(msg) = subs.next().await {
        let payload = String::from_utf8_lossy(&msg.payload);
        bridge.deliver(msg.subject.as_str(), &payload, None).await?;
    }
    Ok(())
}

/// A durable consumer, until its messages fail.
async fn consume(args: &Args, stream: &str, durable: &str, bridge: &Bridge) -> anyhow::Result<()> {
    let client = connect(&args.nats).await?;
    let js = async_nats::jetstream::new(client);
    let source = js
        .get_stream(stream)
        .await
        .with_context(|| format!("cannot open the stream {stream:?}"))?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = source
        .get_or_create_consumer(
            durable,
            pull::Config {
                durable_name: Some(durable.to_owned()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: args.ack_wait,
                deliver_policy: DeliverPolicy::New,
                filter_subject: args.filter.clone().unwrap_or_default(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot open the consumer {durable:?}"))?;
    let mut messages = consumer.messages().await?;
    tracing::info!(bridge = bridge.name, stream, durable, "reading the stream");
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| anyhow!("{e}"))?;
        let seq = msg.info().map_err(|e| anyhow!("{e}"))?.stream_sequence;
        let position = format!("{stream}:{seq}");
        let payload = String::from_utf8_lossy(&msg.payload);
        bridge
            .deliver(msg.subject.as_str(), &payload, Some(&position))
            .await?;
        msg.ack().await.map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}
