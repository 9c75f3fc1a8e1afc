//! Kafka into a hub: topics read by a consumer group (`--subscribe TOPIC
//! --group NAME`); each record becomes an update and `{channel}` is its
//! topic.
//!
//! A record's offset is stored only once the hub appended it (or held it
//! already, or it went to the dead-letter log), and only stored offsets
//! are committed (every second, and when the group takes a partition
//! away), so delivery is at least once across restarts. Its update id is
//! `NAME:TOPIC:PARTITION:OFFSET`, so a record read again after a crash is
//! refused by the hub as a duplicate rather than shown twice. Bridges on
//! several nodes in one group share the topics' partitions, each read by
//! one of them; when one stops, the group hands its partitions to the
//! others after `--session-timeout`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::Message as _;

use super::shared::{Bridge, MapArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The brokers to start from, e.g. `127.0.0.1:9092` or
    /// `kafka://k1:9092,k2:9092`.
    #[arg(long, value_name = "HOST:PORT,…", env = "HERALD_BRIDGE_KAFKA")]
    kafka: String,
    /// A topic to read (repeatable); one starting with `^` is a regular
    /// expression over topic names.
    #[arg(long = "subscribe", value_name = "TOPIC", required = true)]
    topics: Vec<String>,
    /// The consumer group: bridges in one group share the partitions,
    /// and its committed offsets say where a restarted bridge goes on.
    #[arg(long, value_name = "NAME")]
    group: String,
    /// Where a group with no committed offset starts: at the records
    /// written from then on (`latest`), or at the oldest the topic keeps
    /// (`earliest`).
    #[arg(long, value_name = "WHERE", default_value = "latest", value_parser = ["latest", "earliest"])]
    from: String,
    /// How long the group waits for a bridge that stopped answering
    /// before handing its partitions to the others (1s to 300s; Kafka
    /// brokers accept 6s to 30m by default: group.min.session.timeout.ms,
    /// group.max.session.timeout.ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::shared::parse_duration)]
    session_timeout: Duration,
    #[command(flatten)]
    pub map: MapArgs,
}

impl Args {
    /// The bootstrap list librdkafka takes: `host:port,host:port`.
    fn brokers(&self) -> anyhow::Result<String> {
        let list = self.kafka.strip_prefix("kafka://").unwrap_or(&self.kafka);
        let list = list.trim_end_matches('/');
        for broker in list.split(',') {
            // No credentials in the address: librdkafka would take them
            // for part of the host name.
            let ok = !broker.contains('@')
                && broker
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                bail!(
                    "--kafka {:?}: expected HOST:PORT, comma-separated for several brokers",
                    self.kafka
                );
            }
        }
        Ok(list.to_owned())
    }

    /// Refuses arguments that can never work, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        self.brokers()?;
        if self.group.trim().is_empty() {
            bail!("--group is empty");
        }
        if self.topics.iter().any(|t| t.trim().is_empty()) {
            bail!("--subscribe is empty");
        }
        // librdkafka wants it within max.poll.interval.ms (300 s).
        if self.session_timeout < Duration::from_secs(1)
            || self.session_timeout > Duration::from_secs(300)
        {
            bail!("--session-timeout must be from 1s to 300s");
        }
        Ok(())
    }
}

/// What librdkafka reports beside the records: its log, and the
/// partitions the group gives this bridge. (Its errors also come out of
/// `recv`, where they are counted.)
struct Context {
    bridge: Arc<Bridge>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let bridge = &self.bridge.name;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(bridge, fac, "kafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(bridge, fac, "kafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(bridge, fac, "kafka: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(bridge, fac, "kafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(bridge = self.bridge.name, "kafka: {error}: {reason}");
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let partitions: Vec<String> = partitions
                    .elements()
                    .iter()
                    .map(|p| format!("{}:{}", p.topic(), p.partition()))
                    .collect();
                tracing::info!(bridge = self.bridge.name, ?partitions, "reading the topics");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                self.bridge.count("source_failure");
                tracing::warn!(bridge = self.bridge.name, "kafka rebalance failed: {e}");
            }
        }
    }
}

/// Runs the bridge until a fatal error.
pub async fn run(args: &Args, bridge: Arc<Bridge>) -> anyhow::Result<()> {
    args.check()?;
    let consumer: StreamConsumer<Context> = ClientConfig::new()
        .set("bootstrap.servers", args.brokers()?)
        .set("group.id", &args.group)
        .set("client.id", format!("herald-{}", bridge.name))
        // Offsets are stored by hand once a record is settled; what is
        // stored is committed every second, and when a partition goes.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", &args.from)
        // A broker that is down or refuses the bridge is tried again by
        // librdkafka, 100 ms doubling to 10 s, as the other sources do.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "10000")
        .set(
            "session.timeout.ms",
            args.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (args.session_timeout.as_millis() / 3).max(100).to_string(),
        )
        .set_log_level(RDKafkaLogLevel::Warning)
        .create_with_context(Context {
            bridge: bridge.clone(),
        })
        .map_err(|e| anyhow!("cannot make a Kafka consumer: {e}"))?;
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| anyhow!("cannot subscribe to {topics:?}: {e}"))?;
    tracing::info!(
        bridge = bridge.name,
        group = args.group,
        ?topics,
        "source listening"
    );
    let result = consume(&consumer, &bridge).await;
    // Leaving the group waits on the brokers: not on the hub's threads.
    tokio::task::spawn_blocking(move || drop(consumer));
    result
}

/// Reads records until a fatal error.
async fn consume(consumer: &StreamConsumer<Context>, bridge: &Bridge) -> anyhow::Result<()> {
    loop {
        let record = match consumer.recv().await {
            Ok(record) => record,
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                bail!("the Kafka consumer cannot go on: {e}");
            }
            Err(e) => {
                // A broker down, a topic that does not exist yet, a fetch
                // that failed: librdkafka retries with its own backoff
                // (above) and reports each; waiting here would only hold
                // up the partitions that work and the group's rebalances.
                bridge.count("source_failure");
                tracing::warn!(
                    bridge = bridge.name,
                    "bridge {}: source: {e}; librdkafka tries again",
                    bridge.name
                );
                continue;
            }
        };
        let position = format!(
            "{}:{}:{}",
            record.topic(),
            record.partition(),
            record.offset()
        );
        let payload = String::from_utf8_lossy(record.payload().unwrap_or_default());
        bridge
            .deliver(record.topic(), &payload, Some(&position))
            .await?;
        // Refused only when the group took the partition away meanwhile:
        // its new reader reads the record again, and the hub drops it as
        // a duplicate.
        if let Err(e) = consumer.store_offset_from_message(&record) {
            tracing::debug!(bridge = bridge.name, position, "offset not stored: {e}");
        }
    }
}
