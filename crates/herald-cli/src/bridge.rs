//! Bridges: events from where they already are, published to a hub.
//!
//! A bridge runs two ways:
//! - `herald bridge SOURCE …` in the foreground against a hub URL, for
//!   one-off use: it publishes over HTTP with a token;
//! - inside `herald serve`, from `[[bridge]]` sections of the TOML file
//!   (or `--bridge "SOURCE …"`): it publishes to the hub itself, with the
//!   rights its `publish` selectors give, and counts its events and
//!   failures in `/metrics` (`herald_bridge_events_total`).
//!
//! Either way every update passes the hub's own publishing rules and
//! rights checks, as any publisher's does.
//!
//! A source event becomes an update by a mapping: a topic template over
//! the channel and the payload's fields, and the payload taken as the
//! data or as a JSON update. An event that maps to no valid update is a
//! bad payload: it goes to the dead-letter log (target
//! `herald::dead_letter`, with its reason) and the bridge goes on. A
//! source that is down or refuses the bridge is retried with backoff.
//!
//! Sources:
//! - [`postgres`]: `LISTEN`/`NOTIFY` channels (fire-and-forget, as NOTIFY
//!   is), and an outbox table whose rows are removed only once the hub
//!   has appended them (at least once, across restarts of the bridge and
//!   of the hub; never twice, since each row's update id is its row's key
//!   and the hub refuses an id it holds).
//! - [`redis`]: Pub/Sub channels and patterns, and streams read by a
//!   consumer group.
//! - [`nats`]: core subjects, and JetStream durable consumers.
//! - [`mqtt`]: topic filters with `+` and `#`.
//! - [`amqp`]: RabbitMQ queues, and exchanges with bindings.
//! - [`kafka`]: topics read by a consumer group.
//!
//! Every source that can say where an event sits in it (an offset, an
//! entry id, a sequence, a row key) acknowledges it only after the hub
//! appended it, and names the update after that place, so delivery is at
//! least once and a redelivery is never shown twice.

pub mod amqp;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod postgres;
pub mod redis;
pub mod shared;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{FromArgMatches as _, Subcommand as _};

use shared::{Bridge, HubArgs, MapArgs, Sink};

/// Bridge events from a source into a hub.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    source: Source,
    #[command(flatten)]
    hub: HubArgs,
    /// Log filter (`RUST_LOG` syntax); bad payloads are logged at `error`
    /// under the target `herald::dead_letter`.
    #[arg(
        long,
        value_name = "FILTER",
        env = "HERALD_LOG",
        default_value = "info",
        global = true
    )]
    log: String,
}

/// Where events come from.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Source {
    /// PostgreSQL: NOTIFY channels (`--channel`), or an outbox table
    /// (`--outbox`).
    Postgres(postgres::Args),
    /// Redis: Pub/Sub channels and patterns (`--channel`, `--pattern`), or
    /// a stream read by a consumer group (`--stream`, `--group`).
    Redis(redis::Args),
    /// NATS: core subjects (`--subject`), or a JetStream durable consumer
    /// (`--stream`, `--durable`).
    Nats(nats::Args),
    /// MQTT: topic filters with `+` and `#` wildcards (`--subscribe`).
    Mqtt(mqtt::Args),
    /// RabbitMQ (AMQP 0-9-1): a queue (`--queue`), or an exchange bound
    /// with routing keys (`--exchange`, `--binding`).
    #[command(alias = "rabbitmq")]
    Amqp(amqp::Args),
    /// Kafka: topics read by a consumer group (`--subscribe`, `--group`).
    Kafka(kafka::Args),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Nats(_) => "nats",
            Self::Mqtt(_) => "mqtt",
            Self::Amqp(_) => "amqp",
            Self::Kafka(_) => "kafka",
        }
    }

    fn map(&self) -> &MapArgs {
        match self {
            Self::Postgres(a) => &a.map,
            Self::Redis(a) => &a.map,
            Self::Nats(a) => &a.map,
            Self::Mqtt(a) => &a.map,
            Self::Amqp(a) => &a.map,
            Self::Kafka(a) => &a.map,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        match self {
            Self::Postgres(a) => a.check(),
            Self::Redis(a) => a.check(),
            Self::Nats(a) => a.check(),
            Self::Mqtt(a) => a.check(),
            Self::Amqp(a) => a.check(),
            Self::Kafka(a) => a.check(),
        }
    }

    /// True when every listener gets every event (so one hub of several
    /// runs it), false when the source shares its events out.
    fn broadcast(&self) -> bool {
        match self {
            Self::Postgres(a) => a.broadcast(),
            Self::Redis(a) => a.broadcast(),
            Self::Nats(a) => a.broadcast(),
            Self::Mqtt(_) => true,
            Self::Amqp(a) => a.broadcast(),
            // A group shares the partitions out.
            Self::Kafka(_) => false,
        }
    }

    /// Runs until a fatal error: a setup that can never work, or a token
    /// the hub refuses.
    async fn run(&self, bridge: Arc<Bridge>) -> anyhow::Result<()> {
        match self {
            Self::Postgres(a) => postgres::run(a, bridge).await,
            Self::Redis(a) => redis::run(a, bridge).await,
            Self::Nats(a) => nats::run(a, bridge).await,
            Self::Mqtt(a) => mqtt::run(a, bridge).await,
            Self::Amqp(a) => amqp::run(a, bridge).await,
            Self::Kafka(a) => kafka::run(a, bridge).await,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::logs::init(&args.log, false)?;
    args.source.check()?;
    let sink = Sink::http(&args.hub)?;
    let bridge = Bridge::new(
        args.source.name().to_owned(),
        sink,
        args.source.map().mapping(),
    );
    args.source.run(Arc::new(bridge)).await
}

/// One bridge `herald serve` runs: a `[[bridge]]` section, or a
/// `--bridge "SOURCE …"` flag, read with the same arguments as
/// `herald bridge SOURCE …` and two of its own.
#[derive(Debug, Clone)]
pub struct Configured {
    /// Its name in logs and in `/metrics`.
    pub name: String,
    /// The topics it may publish to, as a token's `mercure.publish`.
    pub publish: Vec<String>,
    /// How long a broadcast source's lease lasts unless renewed.
    pub lease_ttl: Duration,
    source: Source,
}

/// The arguments of one `--bridge`: a source's, plus `--name` and
/// `--publish`.
fn command() -> clap::Command {
    let cmd = clap::Command::new("bridge")
        .no_binary_name(true)
        .subcommand_required(true)
        .arg(
            clap::Arg::new("name")
                .long("name")
                .global(true)
                .help("the bridge's name in logs and metrics [default: its source and place]"),
        )
        .arg(
            clap::Arg::new("publish")
                .long("publish")
                .global(true)
                .action(clap::ArgAction::Append)
                .help("a topic selector the bridge may publish to (repeatable) [default: *]"),
        )
        .arg(
            clap::Arg::new("lease_ttl")
                .long("lease-ttl")
                .global(true)
                .value_parser(shared::parse_duration)
                .default_value("10s")
                .help("a broadcast source runs on one hub of those sharing an engine, under a lease this long (renewed every third of it)"),
        );
    Source::augment_subcommands(cmd)
}

/// Reads one bridge from its arguments (`what` names it in errors).
pub fn configured(argv: &[String], what: &str) -> anyhow::Result<Configured> {
    let m = command()
        .try_get_matches_from(argv)
        .map_err(|e| anyhow!("{what}: {}", e.render().to_string().trim()))?;
    let source = Source::from_arg_matches(&m).map_err(|e| anyhow!("{what}: {e}"))?;
    source.check().with_context(|| what.to_owned())?;
    // By default, named by what it reads: the same on every hub of a
    // cluster however its sections are ordered, since a broadcast
    // bridge's lease is named after it.
    let name = m.get_one::<String>("name").cloned().unwrap_or_else(|| {
        let hash = argv
            .iter()
            .flat_map(|a| a.bytes().chain([0]))
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        format!("{}-{:08x}", source.name(), hash >> 32)
    });
    let publish = m
        .get_many::<String>("publish")
        .map(|p| p.cloned().collect())
        .unwrap_or_else(|| vec!["*".to_owned()]);
    let lease_ttl = m
        .get_one::<Duration>("lease_ttl")
        .copied()
        .unwrap_or(Duration::from_secs(10));
    if lease_ttl < Duration::from_millis(300) {
        bail!("{what}: --lease-ttl must be at least 300ms");
    }
    Ok(Configured {
        name,
        publish,
        lease_ttl,
        source,
    })
}

/// A `[[bridge]]` table as arguments: `source = "postgres"` first, then
/// each key as its flag (`outbox = "events"` → `--outbox events`, an
/// array repeats the flag, `true` is the flag alone, `false` leaves it
/// out).
pub fn table_argv(table: &toml::Table) -> Result<Vec<String>, String> {
    let Some(source) = table.get("source") else {
        return Err("`source` is missing (postgres, redis, nats, mqtt, amqp, kafka)".into());
    };
    let Some(source) = source.as_str() else {
        return Err("`source` is not a string".into());
    };
    let mut argv = vec![source.to_owned()];
    for (key, value) in table {
        if key == "source" {
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            _ => None,
        };
        match value {
            toml::Value::Boolean(true) => argv.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    let v = scalar(item)
                        .ok_or_else(|| format!("`{key}`: expected strings or numbers"))?;
                    argv.extend([flag.clone(), v]);
                }
            }
            v => {
                let v = scalar(v).ok_or_else(|| {
                    format!("`{key}`: expected a string, a number, a boolean or an array")
                })?;
                argv.extend([flag, v]);
            }
        }
    }
    Ok(argv)
}

/// Starts `herald serve`'s bridges on `hub`. Each runs until the hub
/// stops; a fatal error (a setup the source refuses) is logged, counted
/// and retried after a minute, so one broken bridge never stops the hub.
///
/// A broadcast source (NOTIFY, Pub/Sub, core NATS, MQTT, an exchange
/// without a queue of its own) delivers every event to every listener,
/// and an outbox is read in id order by one reader, so among hubs sharing
/// an engine these run on one at a time: the one holding the bridge's
/// lease in the engine, renewed every third of its ttl. When that hub
/// dies, another takes the lease once it expires. A source with shared
/// consumption (a stream's consumer group, a JetStream durable, a queue)
/// runs on every hub: the source itself hands each event to one of them.
pub fn spawn(hub: &herald::Hub, bridges: Vec<Configured>) -> Bridges {
    let holder = format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "herald".into()),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut tasks = Vec::new();
    for c in bridges {
        let sink = Sink::Local {
            hub: hub.clone(),
            publisher: herald::http::LocalPublisher::new(c.publish.clone()),
        };
        let bridge = Arc::new(Bridge::new(c.name.clone(), sink, c.source.map().mapping()));
        if c.source.broadcast() {
            let lease = lease_name(&c.name);
            let task = tokio::spawn(leased(hub.clone(), holder.clone(), c, bridge));
            tasks.push((task, Some(lease)));
        } else {
            let task = tokio::spawn(async move { restarting(&c.source, &bridge).await });
            tasks.push((task, None));
        }
    }
    Bridges {
        hub: hub.clone(),
        holder,
        tasks,
    }
}

/// The bridges `herald serve` runs, until [`Bridges::stop`].
pub struct Bridges {
    hub: herald::Hub,
    /// This hub, as the holder of the broadcast bridges' leases.
    holder: String,
    /// Each bridge's task, and the lease it runs under (a broadcast one).
    tasks: Vec<(tokio::task::JoinHandle<()>, Option<String>)>,
}

impl Bridges {
    /// Stops every bridge as the hub stops, before its engine closes: an
    /// event taken from a source and not yet appended is not acknowledged,
    /// so the source gives it again (to another hub, or to this one when
    /// it is back). Then gives back the leases this hub holds, so another
    /// hub takes its broadcast bridges over at once rather than once the
    /// lease runs out.
    pub async fn stop(self) {
        for (task, _) in &self.tasks {
            task.abort();
        }
        for (task, lease) in self.tasks {
            let _ = task.await;
            let Some(lease) = lease else { continue };
            let given = tokio::time::timeout(
                Duration::from_secs(2),
                self.hub.release_lease(&lease, &self.holder),
            )
            .await;
            match given {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(
                        lease,
                        "cannot give the lease back ({e}): it runs out by itself"
                    );
                }
                Err(_) => {
                    tracing::warn!(
                        lease,
                        "cannot give the lease back within 2 s: it runs out by itself"
                    );
                }
            }
        }
    }
}

/// The lease a broadcast bridge runs under.
fn lease_name(bridge: &str) -> String {
    format!("bridge:{bridge}")
}

/// Runs a source for good: restarted a minute after a fatal error, or
/// after a panic (a bug; the hub serves on).
async fn restarting(source: &Source, bridge: &Arc<Bridge>) {
    /// Stops the source's task when its runner is stopped (the lease
    /// lost, the hub ending).
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    loop {
        let (source, running) = (source.clone(), bridge.clone());
        // Its own task, so a panic ends the task, not this loop.
        let task = tokio::spawn(async move { source.run(running).await });
        let _abort = Abort(task.abort_handle());
        let e = match task.await {
            Ok(Ok(())) => anyhow!("it ended"),
            Ok(Err(e)) => e,
            Err(panic) => anyhow!("it failed: {panic}"),
        };
        tracing::error!(
            bridge = bridge.name,
            "bridge stopped: {e:#}; restarted in 60 s"
        );
        bridge.count("source_failure");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// Runs a broadcast source while this hub holds its lease.
async fn leased(hub: herald::Hub, holder: String, c: Configured, bridge: Arc<Bridge>) {
    let lease = lease_name(&c.name);
    let renew = c.lease_ttl / 3;
    let mut standing_by = false;
    loop {
        let asked = tokio::time::Instant::now();
        match hub.lease(&lease, &holder, c.lease_ttl).await {
            Ok(true) => {
                standing_by = false;
                tracing::info!(
                    bridge = c.name,
                    "this hub holds the bridge's lease: running it"
                );
                // Held from when it was asked for, not from the answer.
                let mut held = asked;
                let run = restarting(&c.source, &bridge);
                tokio::pin!(run);
                let mut tick = tokio::time::interval_at(held + renew, renew);
                loop {
                    tokio::select! {
                        () = &mut run => {}
                        _ = tick.tick() => {
                            let asked = tokio::time::Instant::now();
                            match hub.lease(&lease, &holder, c.lease_ttl).await {
                                Ok(true) => held = asked,
                                Ok(false) => {
                                    tracing::warn!(bridge = c.name, "another hub took the bridge's lease: stopped here");
                                    break;
                                }
                                // Unsure whether it is still held: stop
                                // before it could have passed to another.
                                Err(e) if held.elapsed() + renew >= c.lease_ttl => {
                                    tracing::warn!(bridge = c.name, "cannot renew the bridge's lease ({e}): stopped here");
                                    break;
                                }
                                Err(_) => {}
                            }
                        }
                    }
                }
            }
            Ok(false) => {
                if !standing_by {
                    tracing::info!(bridge = c.name, "another hub runs this bridge: standing by");
                    standing_by = true;
                }
            }
            Err(e) => tracing::warn!(bridge = c.name, "cannot take the bridge's lease: {e}"),
        }
        tokio::time::sleep(renew).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `[[bridge]]` in README.md's TOML examples is one `herald
    /// serve` accepts, so the documentation cannot drift from the code.
    #[test]
    fn readme_bridges_are_valid() {
        let readme = include_str!("../../../README.md");
        let mut checked = 0;
        for block in readme.split("```toml\n").skip(1) {
            let block = &block[..block.find("```").unwrap()];
            if !block.contains("[[bridge]]") {
                continue;
            }
            let table: toml::Table = toml::from_str(block).unwrap();
            let bridges = table["bridge"].as_array().unwrap();
            for b in bridges {
                let argv = table_argv(b.as_table().unwrap()).unwrap();
                let c = configured(&argv, "README").unwrap_or_else(|e| panic!("{e:#}"));
                assert!(!c.name.is_empty());
                checked += 1;
            }
        }
        assert!(checked >= 8, "{checked} bridges found in README.md");
    }

    #[test]
    fn tables_become_arguments() {
        let t: toml::Table = toml::from_str(
            "source = 'redis'\nchannel = ['a', 'b']\nprivate = true\nother = false\nclaim_idle = 5\n",
        )
        .unwrap();
        assert_eq!(
            table_argv(&t).unwrap(),
            [
                "redis",
                "--channel",
                "a",
                "--channel",
                "b",
                "--claim-idle",
                "5",
                "--private"
            ]
        );
        let no_source: toml::Table = toml::from_str("topic = 'x'").unwrap();
        assert!(table_argv(&no_source).unwrap_err().contains("source"));
    }
}
