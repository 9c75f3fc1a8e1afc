//! RabbitMQ (AMQP 0-9-1) into a hub.
//!
//! - **A queue** (`--queue NAME`): the bridge consumes it (declaring it
//!   durable if missing). Bridges on several nodes consuming one queue
//!   share its messages, each going to one of them.
//! - **An exchange** (`--exchange NAME --binding KEY`, repeatable): bound
//!   to `--queue` when one is given (shared as above, and kept while the
//!   bridge is away), else to a queue of the bridge's own that lives as
//!   long as its connection (every bridge gets every message, and what is
//!   published while it is away is not seen).
//!
//! `{channel}` is the message's routing key. A message is acknowledged
//! only once the hub appended it (or held it already, or it went to the
//! dead-letter log), so delivery is at least once. A message whose
//! publisher set its `message-id` gets the update id `NAME:QUEUE:MESSAGE-ID`,
//! so a redelivered one is refused by the hub as a duplicate rather than
//! shown twice; AMQP gives other messages no lasting identity (a delivery
//! tag lives as long as its channel), so those may show twice after a
//! crash between the append and the acknowledgement.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use super::shared::{Backoff, Bridge, Fatal, MapArgs};

/// Messages the broker may have in flight to the bridge, unacknowledged.
const PREFETCH: u16 = 100;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The broker, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[arg(long, value_name = "URL", env = "HERALD_BRIDGE_AMQP")]
    amqp: String,
    /// The queue to consume (declared durable if missing).
    #[arg(long, value_name = "NAME", required_unless_present = "exchange")]
    queue: Option<String>,
    /// An exchange to bind the queue to.
    #[arg(long, value_name = "NAME", requires = "bindings")]
    exchange: Option<String>,
    /// A routing key (or pattern, for a topic exchange) binding the queue
    /// to the exchange (repeatable).
    #[arg(long = "binding", value_name = "KEY", requires = "exchange")]
    bindings: Vec<String>,
    #[command(flatten)]
    pub map: MapArgs,
}

impl Args {
    /// A queue of the bridge's own gets every message; a named queue
    /// shares them out among its consumers.
    pub fn broadcast(&self) -> bool {
        self.queue.is_none()
    }

    /// Refuses arguments that can never work, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        self.amqp
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| anyhow!("--amqp {:?}: {e}", self.amqp))?;
        Ok(())
    }
}

/// Runs the bridge until a fatal error.
pub async fn run(args: &Args, bridge: Arc<Bridge>) -> anyhow::Result<()> {
    args.check()?;
    let mut backoff = Backoff::new();
    loop {
        let e = match consume(args, &bridge, &mut backoff).await {
            Ok(()) => anyhow!("the connection ended"),
            Err(e) => e,
        };
        if let Some(fatal) = e.downcast_ref::<Fatal>() {
            bail!("{fatal}");
        }
        bridge.source_failed(&mut backoff, &e).await;
    }
}

/// One connection, until it fails.
async fn consume(args: &Args, bridge: &Bridge, backoff: &mut Backoff) -> anyhow::Result<()> {
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Connection::connect(&args.amqp, ConnectionProperties::default()),
    )
    .await
    .context("RabbitMQ did not answer within 10 s")?
    .context("cannot connect to RabbitMQ")?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let options = match &args.queue {
        Some(_) => QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        // The bridge's own: named by the broker, gone with the connection.
        None => QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
    };
    let name = args.queue.clone().unwrap_or_default();
    let queue = channel
        .queue_declare(name.as_str().into(), options, FieldTable::default())
        .await
        .with_context(|| format!("cannot declare the queue {name:?}"))?;
    let queue = queue.name().as_str().to_owned();
    if let Some(exchange) = &args.exchange {
        for key in &args.bindings {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("cannot bind the queue to {exchange:?} with {key:?}"))?;
        }
    }
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(bridge = bridge.name, queue, "source listening");
    backoff.reset();
    // Acknowledged together (`multiple`): once 50 are settled, and
    // whenever no more are waiting, so none waits long for its ack.
    let mut unacked: Option<lapin::message::Delivery> = None;
    let mut count = 0;
    loop {
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                if let Some(last) = unacked.take() {
                    ack_through(&last).await?;
                    count = 0;
                }
                consumer.next().await
            }
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let position = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| format!("{queue}:{}", id.as_str()));
        let payload = String::from_utf8_lossy(&delivery.data);
        if let Err(fatal) = bridge
            .deliver(delivery.routing_key.as_str(), &payload, position.as_deref())
            .await
        {
            if let Some(last) = unacked.take() {
                ack_through(&last).await?;
            }
            return Err(fatal.into());
        }
        unacked = Some(delivery);
        count += 1;
        if count >= 50 {
            if let Some(last) = unacked.take() {
                ack_through(&last).await?;
            }
            count = 0;
        }
    }
    Ok(())
}

/// Acknowledges `last` and every delivery before it on its channel.
async fn ack_through(last: &lapin::message::Delivery) -> anyhow::Result<()> {
    last.ack(BasicAckOptions { multiple: true }).await?;
    Ok(())
}
