//! `herald bench`: a load generator for any hub that speaks Mercure.
//!
//! Subscribers are raw HTTP/1.1 connections (one small task each), spread
//! over loopback source addresses so one machine can open far more than the
//! ~28k connections a single source address has ports for. Publishers are
//! threads with one keep-alive connection each, sending on a fixed schedule
//! or flat out. Every update carries its *scheduled* send time, so latency
//! (scheduled send → receive) includes any queueing an overloaded hub
//! causes, publisher-side included (no coordinated omission).
//!
//! The report gives connections, deliveries per second, latency
//! percentiles, losses and duplicates, the hub's memory and CPU (with
//! `--pid`), and the generator's own CPU, so a saturated generator is never
//! mistaken for a slow hub.

mod http;
mod layout;
mod payload;
mod publisher;
mod report;
mod sse;
mod stats;
mod subscriber;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herald::auth::MercureClaim;
use jsonwebtoken::Algorithm;
use reqwest::Url;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::publish::{parse_hub_url, DEFAULT_HUB};
use crate::settings::parse_duration;
use crate::token;
use http::{Flavor, Target};
use layout::Layout;
use report::{
    fmt_count, fmt_pct, render, ConfigOut, Connections, Deliveries, GeneratorOut, HubOut,
    MachineOut, PublishOut, Summary,
};
use stats::{new_histogram, record, BitSet, CpuSample, Percentiles, Proc, Shared};

/// Time the hub is given after the last connection before its memory is
/// read as "idle".
const SETTLE: Duration = Duration::from_millis(500);

/// Measure a hub: N subscribers and publishers at a fixed or unlimited rate.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Latency runs from each update's scheduled send time to its receipt, so queueing in an \
overloaded hub (or behind a slow publisher) counts. The report shows the generator's own \
CPU use and warns when it is saturated: then the figures understate the hub.

Plain HTTP only: run it on the hub's machine, or next to it. With a 127.x.x.x hub the \
subscribers are spread over --source-addrs loopback addresses, so more than the ~28k \
connections one address has ports for can be opened.

Example:
  herald bench --key $SECRET --subscribers 1000 --publishers 4 --rate 0 --pid $(pidof herald)")]
pub struct Args {
    /// Hub URL; a bare host (or path `/`) gets `/.well-known/mercure`.
    /// Subscribers `GET` it with `?topic=<form-encoded topic>` appended,
    /// whatever the --flavor (one `topic=` per topic when each carries
    /// several: see --topics).
    #[arg(long, value_name = "URL", env = "HERALD_HUB_URL", default_value = DEFAULT_HUB, value_parser = parse_hub_url)]
    hub: Url,
    /// How updates are published: to a Mercure hub, to nginx + Nchan or to
    /// Pushpin (to measure herald against them). Only the publication
    /// request changes; subscribing and every measure stay the same.
    #[arg(long, value_enum, value_name = "FLAVOR", default_value_t = Flavor::Mercure)]
    flavor: Flavor,
    /// Where publications go [default: the hub URL]. Needed by the nchan
    /// flavor (the `nchan_publisher` location, e.g.
    /// http://127.0.0.1:8092/pub) and the pushpin flavor (its control API,
    /// e.g. http://127.0.0.1:5561/publish/).
    #[arg(long, value_name = "URL")]
    publish_url: Option<Url>,
    /// Number of subscribers (one connection each).
    #[arg(long, value_name = "N", default_value_t = 100)]
    subscribers: usize,
    /// Number of topics; subscribers and updates are spread over them
    /// round-robin. With more topics than subscribers, each subscriber
    /// subscribes to several (one request with a `topic=` parameter each,
    /// mercure flavor only), so every topic has exactly one subscriber.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    topics: u64,
    /// Topics are this prefix followed by their number.
    #[arg(long, value_name = "URI", default_value = "https://bench.herald/t/")]
    topic_prefix: String,
    /// Number of publishers (one keep-alive connection each, one request in flight).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    publishers: u16,
    /// Percentage of subscribers that never read their stream (stalled
    /// clients, with a 4 KiB receive buffer). They are left out of the
    /// delivery and latency figures; the hub's memory shows what they cost.
    #[arg(long, value_name = "PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    slow: u8,
    /// New subscriptions per second opened (each closed once the hub
    /// answers) while the load runs, with the subscribers' token: the
    /// latency figures then show what connection churn costs existing
    /// subscribers.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0.0, value_parser = parse_rate)]
    churn: f64,
    /// Updates per publication request: above 1, herald's batch extension
    /// (a JSON array POSTed to the hub; mercure flavor only).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
    /// Updates per second, all publishers together; 0: as fast as the
    /// publishers' connections allow.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 100.0, value_parser = parse_rate)]
    rate: f64,
    /// How long to measure (after the warm-up), e.g. 10, 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = parse_positive_duration)]
    duration: Duration,
    /// Publishing before the measurement starts; its latencies are not recorded.
    #[arg(long, value_name = "DURATION", default_value = "1", value_parser = parse_any_duration)]
    warmup: Duration,
    /// How long to wait after the last publication for updates still in flight.
    #[arg(long, value_name = "DURATION", default_value = "2", value_parser = parse_any_duration)]
    grace: Duration,
    /// Bytes of data per update (at least 40: send time and sequence number).
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = clap::value_parser!(u64).range(payload::MIN_SIZE as u64..=16 * 1024 * 1024))]
    payload_size: u64,
    /// JWT allowing publication to the bench topics (optional with the nchan
    /// and pushpin flavors).
    #[arg(long, value_name = "JWT", env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Without --token: key to mint a publisher token with (HMAC secret, or
    /// a private key as PEM text or a path).
    #[arg(
        long,
        value_name = "KEY",
        env = "HERALD_PUBLISHER_JWT",
        hide_env_values = true
    )]
    key: Option<String>,
    /// Algorithm of --key and --subscriber-key.
    #[arg(long, value_name = "ALG", default_value = "HS256", value_parser = token::parse_alg)]
    alg: Algorithm,
    /// JWT sent by every subscriber [default: none, anonymous].
    #[arg(long, value_name = "JWT", hide_env_values = true)]
    subscriber_token: Option<String>,
    /// Without --subscriber-token: key to mint a subscriber token with.
    #[arg(
        long,
        value_name = "KEY",
        env = "HERALD_SUBSCRIBER_JWT",
        hide_env_values = true
    )]
    subscriber_key: Option<String>,
    /// With a loopback hub: bind subscribers to 127.0.0.1 ..= 127.0.0.N in
    /// turn, each with its own ~28k ephemeral ports.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..))]
    source_addrs: u8,
    /// New connections per second; 0: as fast as possible.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0.0, value_parser = parse_rate)]
    connect_rate: f64,
    /// Connections being opened at once, at most (the default stays under
    /// the 128-connection listen backlog common among servers).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    connect_concurrency: u32,
    /// Give up on a connection not answered within this time.
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = parse_positive_duration)]
    connect_timeout: Duration,
    /// Pid of a local hub process, to report its memory (RSS) and CPU use;
    /// several, comma-separated, for a hub made of several processes
    /// (their memory and CPU use are summed; the report names the first).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pid: Vec<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Only connect the subscribers and hold them for --duration: measures
    /// memory per idle connection and idle CPU; nothing is published.
    #[arg(long)]
    idle: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("invalid rate {s:?}: expected a number >= 0")),
    }
}

fn parse_any_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_any_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut warnings = Vec::new();
    let publishers = usize::from(args.publishers);
    let fd_limit = raise_fd_limit();
    let connections = args.subscribers as u64 + if args.idle { 0 } else { publishers as u64 };
    let needed = connections + 32;
    if let Some(limit) = fd_limit {
        if needed > limit {
            bail!(
                "{connections} connections need about {needed} file descriptors, but this \
                 process may open only {limit} (its hard limit): raise it (ulimit -Hn) or \
                 use fewer subscribers"
            );
        }
    }
    if args.idle && args.subscribers == 0 {
        bail!("--idle needs at least one subscriber");
    }

    let target = Target::resolve(&args.hub).await?;
    if args.batch > 1 && args.flavor != Flavor::Mercure {
        bail!("--batch is herald's extension: it needs --flavor mercure");
    }
    let publish_target = match (&args.publish_url, args.flavor) {
        (Some(url), _) => Target::resolve(url).await?,
        (None, flavor) if flavor == Flavor::Mercure || args.idle => target.clone(),
        (None, flavor) => bail!(
            "--flavor {} needs --publish-url: where to POST updates",
            format!("{flavor:?}").to_lowercase()
        ),
    };
    let publish_token = if args.idle {
        None
    } else {
        publisher_token(&args)?
    };
    let subscribe_token = subscriber_token(&args)?;
    for &pid in &args.pid {
        if !Proc::pid(pid).exists() {
            bail!("no process with pid {pid} (--pid)");
        }
    }
    let hub_proc = (!args.pid.is_empty()).then(|| Proc::pids(&args.pid));
    let topics: Vec<String> = (0..args.topics)
        .map(|i| format!("{}{i}", args.topic_prefix))
        .collect();
    let sources = target.source_addrs(args.source_addrs);
    if let Some(capacity) = port_capacity(sources.len().max(1)) {
        if (args.subscribers + publishers) as u64 > capacity {
            warnings.push(format!(
                "{} connections exceed the ~{capacity} ephemeral ports available{}",
                args.subscribers + publishers,
                if sources.is_empty() {
                    " (source address spreading needs a 127.x.x.x hub)"
                } else {
                    ""
                }
            ));
        }
    }

    let layout = args.layout();
    let requests = subscribe_requests(&args, &target, layout, &topics, subscribe_token.as_deref())?;

    let epoch = Instant::now();
    let shared = Arc::new(Shared::new());
    let sub_cfg = Arc::new(subscriber::Config {
        requests,
        target: target.clone(),
        sources: sources.clone(),
        connect_timeout: args.connect_timeout,
        layout,
        epoch,
        shared: shared.clone(),
        slow: args.slow,
    });
    let progress = Progress {
        quiet: args.quiet,
        hub: hub_proc.clone(),
    };

    // Connect.
    let rss_before = hub_proc.as_ref().and_then(Proc::rss_kib);
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu_connect_start = CpuSample::take(hub_proc.as_ref());
    let (handles, connect) = connect_all(&args, sub_cfg.clone(), stop_rx, &progress).await?;
    let cpu_connect_end = CpuSample::take(hub_proc.as_ref());
    if connect.ok == 0 && args.subscribers > 0 {
        let why: Vec<String> = connect
            .errors
            .iter()
            .map(|(e, n)| format!("{n}x {e}"))
            .collect();
        let hint = subscription_hint(layout, &sub_cfg.requests);
        bail!(
            "no subscriber could connect to {}: {}{hint}",
            args.hub,
            why.join(", ")
        );
    }
    tokio::time::sleep(SETTLE).await;
    let rss_idle = hub_proc.as_ref().and_then(Proc::rss_kib);

    // Hold (idle) or load.
    let mut load = None;
    let mut churn_out = None;
    let (cpu_from, cpu_to) = if args.idle {
        let from = CpuSample::take(hub_proc.as_ref());
        progress
            .wait_until(Instant::now() + args.duration, "idle", &shared)
            .await;
        (from, CpuSample::take(hub_proc.as_ref()))
    } else {
        let (churn_stop, churn_rx) = watch::channel(false);
        let churn_task = (args.churn > 0.0).then(|| {
            tokio::spawn(churn(
                sub_cfg.clone(),
                args.churn,
                args.connect_timeout,
                args.subscribers,
                churn_rx,
            ))
        });
        let (l, from, to) = publish(
            &args,
            &publish_target,
            publish_token.as_deref(),
            &topics,
            epoch,
            &shared,
            &progress,
        )
        .await?;
        load = Some(l);
        let _ = churn_stop.send(true);
        if let Some(t) = churn_task {
            churn_out = Some(t.await.context("the churn task failed")?);
        }
        (from, to)
    };

    // Wait for the stragglers, then read the hub's memory before letting go.
    if let Some(l) = &load {
        // Each slot's acknowledged updates (all its topics) times the
        // subscribers reading it.
        let expected: u64 = l
            .acked_per_slot
            .iter()
            .zip(&connect.per_slot)
            .map(|(acked, subs)| acked.len() * subs)
            .sum();
        let deadline = Instant::now() + args.grace;
        while shared.delivered() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let rss_end = hub_proc.as_ref().and_then(Proc::rss_kib);
    let rss_peak = hub_proc.as_ref().and_then(Proc::peak_rss_kib);
    let _ = stop_tx.send(true);
    let mut reports = Vec::with_capacity(handles.len());
    for h in handles {
        reports.push(h.await.context("a subscriber task failed")?);
    }

    // Tally.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let connect_cpu = cpu_connect_end.since(&cpu_connect_start);
    let window_cpu = cpu_to.since(&cpu_from);
    let (hub_cpu, own_cpu) = (window_cpu.hub, window_cpu.own);
    let mut dropped = 0;
    let mut dropped_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for r in &reports {
        if let Some(why) = &r.dropped {
            dropped += 1;
            *dropped_reasons.entry(why.clone()).or_default() += 1;
        }
    }
    let deliveries = load
        .as_ref()
        .map(|l| tally_deliveries(l, &reports, args.duration));
    let latency = Percentiles::of(&shared.latency());
    let saturated = own_cpu.is_some_and(|c| c > 90.0 * cores as f64);

    let mut summary = Summary {
        hub_url: args.hub.to_string(),
        mode: if args.idle { "idle" } else { "load" },
        config: ConfigOut {
            subscribers: args.subscribers,
            topics: args.topics,
            topics_per_subscriber: layout.max_topics_per_slot(),
            publishers,
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: if args.idle {
                0.0
            } else {
                args.warmup.as_secs_f64()
            },
            payload_size: args.payload_size,
            source_addrs: sources.len(),
            connect_rate: args.connect_rate,
        },
        connections: Connections {
            attempted: args.subscribers,
            ok: connect.ok,
            failed: connect.failed,
            errors: connect.errors,
            seconds: stats::round3(connect.seconds),
            per_second: stats::round1(rate(connect.ok, connect.seconds)),
            connect_ms: Percentiles::of(&connect.times),
            dropped,
            dropped_reasons,
            slow: connect.slow,
        },
        publish: load.as_ref().map(|l| PublishOut {
            sent: l.sent,
            unsent: l.unsent,
            acknowledged: l.acked,
            errors: l.errors,
            error_kinds: l.error_kinds.clone(),
            target_rate: (args.rate > 0.0).then_some(args.rate),
            achieved_rate: stats::round1(l.achieved_rate),
            max_lag_ms: stats::round3(l.max_lag_ms),
            ack_ms: Percentiles::of(&l.ack_time),
        }),
        deliveries,
        latency_ms: latency,
        churn: churn_out,
        hub_process: args.pid.first().map(|&pid| HubOut {
            pid,
            rss_before_kib: rss_before,
            rss_idle_kib: rss_idle,
            rss_end_kib: rss_end,
            rss_peak_kib: rss_peak,
            rss_per_connection_bytes: match (rss_before, rss_idle) {
                (Some(b), Some(i)) if connect.ok > 0 => Some(stats::round1(
                    (i as f64 - b as f64) * 1024.0 / connect.ok as f64,
                )),
                _ => None,
            },
            cpu_percent_connect: connect_cpu.hub,
            cpu_percent: hub_cpu,
        }),
        generator: GeneratorOut {
            cores,
            cpu_percent: own_cpu,
            cpu_percent_connect: connect_cpu.own,
            saturated,
            rss_kib: Proc::current().rss_kib(),
            fd_limit,
        },
        machine: MachineOut {
            interrupts_percent: window_cpu.interrupts,
            other_percent: window_cpu.interrupts.zip(own_cpu).map(|(irq, own)| {
                let all: f64 = window_cpu.cores.iter().sum();
                stats::round1((all - irq - own - hub_cpu.unwrap_or(0.0)).max(0.0))
            }),
            cores_busy_percent: window_cpu.cores.clone(),
        },
        warnings,
    };
    let found = report::warnings(&summary);
    summary.warnings.extend(found);
    print!("{}", render(&summary));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary).expect("the summary serializes");
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (or the kernel's
/// ceiling, `fs.nr_open`, when the hard limit is unlimited); returns the
/// limit in force.
fn raise_fd_limit() -> Option<u64> {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    rlimit::increase_nofile_limit(ceiling).ok().or_else(|| {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    })
}

/// Ephemeral ports available to `sources` source addresses.
fn port_capacity(sources: usize) -> Option<u64> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = range.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some((hi.saturating_sub(lo) + 1) * sources as u64)
}

/// The publishers' token: required by Mercure, optional elsewhere.
impl Args {
    /// How the topics are spread over the subscriptions: the one place
    /// both the subscribers and the publishers' tally take it from.
    fn layout(&self) -> Layout {
        Layout::new(self.topics, self.subscribers)
    }
}

fn publisher_token(args: &Args) -> anyhow::Result<Option<String>> {
    match (&args.token, &args.key) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(key)) => {
            let cfg = token::key_config(key, args.alg)?;
            let claim = MercureClaim {
                publish: Some(vec!["*".into()]),
                ..Default::default()
            };
            token::mint(&cfg, claim, token_ttl(args)).map(Some)
        }
        (None, None) if args.flavor != Flavor::Mercure => Ok(None),
        (None, None) => bail!(
            "publishing needs a token: pass --token (or set HERALD_TOKEN), or --key (or \
             set HERALD_PUBLISHER_JWT) to mint one; or measure idle connections with --idle"
        ),
    }
}

fn subscriber_token(args: &Args) -> anyhow::Result<Option<String>> {
    match (&args.subscriber_token, &args.subscriber_key) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(key)) => {
            let cfg = token::key_config(key, args.alg)?;
            let claim = MercureClaim {
                subscribe: Some(vec!["*".into()]),
                ..Default::default()
            };
            token::mint(&cfg, claim, token_ttl(args)).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Largest request head herald reads for a subscription (its
/// `http::direct::MAX_HEAD`; it answers 431 beyond).
const HERALD_MAX_HEAD: usize = 64 * 1024;
/// Request heads many servers refuse beyond (nginx's default
/// `large_client_header_buffers` holds request lines of up to 8 KiB).
const COMMON_MAX_HEAD: usize = 8 * 1024;
/// Topic selectors herald takes in one subscription unless started with a
/// larger `--max-selectors`.
const HERALD_MAX_SELECTORS: u64 = 64;

/// The subscription request of each slot of `layout` (`topics` by number).
/// Several topics per request need the mercure flavor, and every request
/// must fit in the request head herald accepts.
fn subscribe_requests(
    args: &Args,
    target: &Target,
    layout: Layout,
    topics: &[String],
    token: Option<&str>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let per = layout.max_topics_per_slot();
    if per > 1 && args.flavor != Flavor::Mercure {
        bail!(
            "--topics {} over {} subscribers puts up to {per} topics in each subscription, \
             as several topic= parameters only a Mercure hub takes: with --flavor {}, use \
             at most {} topics (or more subscribers)",
            args.topics,
            args.subscribers,
            format!("{:?}", args.flavor).to_lowercase(),
            args.subscribers
        );
    }
    let requests: Vec<Vec<u8>> = (0..layout.slots())
        .map(|slot| {
            let names = layout.topics_of(slot).map(|t| topics[t as usize].as_str());
            target.subscribe_request(names, token)
        })
        .collect();
    let largest = requests.iter().map(Vec::len).max().unwrap_or(0);
    if largest > HERALD_MAX_HEAD {
        bail!(
            "--topics {} over {} subscribers puts up to {per} topics in each subscription: \
             requests of up to {} bytes, more than the {} KiB request head herald accepts; \
             use more subscribers (fewer topics each) or a shorter --topic-prefix",
            args.topics,
            args.subscribers,
            fmt_count(largest as u64),
            HERALD_MAX_HEAD / 1024
        );
    }
    Ok(requests)
}

/// Why a hub might refuse every subscription of this layout, if it might.
fn subscription_hint(layout: Layout, requests: &[Vec<u8>]) -> String {
    let per = layout.max_topics_per_slot();
    let largest = requests.iter().map(Vec::len).max().unwrap_or(0);
    let mut why = Vec::new();
    if per > HERALD_MAX_SELECTORS {
        why.push(format!(
            "each subscription carries up to {per} topics, and herald takes at most \
             {HERALD_MAX_SELECTORS} unless started with a larger --max-selectors"
        ));
    }
    if largest > COMMON_MAX_HEAD {
        why.push(format!(
            "subscription requests take up to {} bytes, and many servers refuse request \
             heads above {} KiB",
            fmt_count(largest as u64),
            COMMON_MAX_HEAD / 1024
        ));
    }
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({})", why.join("; "))
    }
}

/// Minted tokens outlive the run comfortably, whatever connecting takes.
fn token_ttl(args: &Args) -> Duration {
    args.warmup + args.duration + args.grace + Duration::from_secs(3600)
}

/// How the connection phase went.
struct ConnectStats {
    ok: usize,
    failed: usize,
    errors: BTreeMap<String, u64>,
    seconds: f64,
    times: hdrhistogram::Histogram<u64>,
    /// Connected subscribers per slot (see [`Layout`]; those that read).
    per_slot: Vec<u64>,
    /// Connected subscribers that never read.
    slow: usize,
}

/// Opens every subscriber connection (paced, with a bound on connections in
/// progress) and waits until each has connected or failed.
/// Opens `rate` subscriptions per second until `stop`, each closed once
/// the hub answers; at most 1,000 opening at once.
async fn churn(
    cfg: Arc<subscriber::Config>,
    rate: f64,
    timeout: Duration,
    first_index: usize,
    mut stop: watch::Receiver<bool>,
) -> report::ChurnOut {
    const MAX_OPENING: usize = 1000;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut times = new_histogram();
    let (mut attempted, mut ok, mut failed, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut note = |r: Result<Result<Duration, String>, tokio::task::JoinError>| match r {
        Ok(Ok(took)) => {
            ok += 1;
            record(
                &mut times,
                u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            );
        }
        Ok(Err(e)) => {
            failed += 1;
            *errors.entry(e).or_default() += 1;
        }
        Err(_) => failed += 1,
    };
    let mut due = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let want = (started.elapsed().as_secs_f64() * rate) as u64;
        while due < want {
            due += 1;
            if tasks.len() >= MAX_OPENING {
                skipped += 1;
                continue;
            }
            attempted += 1;
            let cfg = cfg.clone();
            let index = first_index + due as usize;
            tasks.spawn(async move { subscriber::churn_once(&cfg, index, timeout).await });
        }
        while let Some(r) = tasks.try_join_next() {
            note(r);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    while let Some(r) = tasks.join_next().await {
        note(r);
    }
    report::ChurnOut {
        target_rate: rate,
        attempted,
        ok,
        failed,
        skipped,
        errors,
        per_second: stats::round1(ok as f64 / elapsed.max(1e-9)),
        connect_ms: Percentiles::of(&times),
    }
}

async fn connect_all(
    args: &Args,
    cfg: Arc<subscriber::Config>,
    stop: watch::Receiver<bool>,
    progress: &Progress,
) -> anyhow::Result<(Vec<JoinHandle<subscriber::Report>>, ConnectStats)> {
    let n = args.subscribers;
    let rate = args.connect_rate;
    let slots = cfg.requests.len();
    let (tx, mut outcomes) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let started = Instant::now();
    let spawner = tokio::spawn(async move {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            if rate > 0.0 {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
            }
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            handles.push(tokio::spawn(subscriber::run(
                cfg.clone(),
                i,
                permit,
                tx.clone(),
                stop.clone(),
            )));
        }
        handles
    });

    let mut stats = ConnectStats {
        ok: 0,
        failed: 0,
        errors: BTreeMap::new(),
        seconds: 0.0,
        times: new_histogram(),
        per_slot: vec![0; slots],
        slow: 0,
    };
    let mut ticker = tokio::time::interval_at(
        (started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last = (started, 0);
    while stats.ok + stats.failed < n {
        tokio::select! {
            o = outcomes.recv() => {
                let Some(o) = o else { break };
                record(&mut stats.times, u64::try_from(o.took.as_nanos()).unwrap_or(u64::MAX));
                match o.error {
                    None => {
                        stats.ok += 1;
                        if o.slow {
                            stats.slow += 1;
                        } else {
                            stats.per_slot[o.slot] += 1;
                        }
                    }
                    Some(e) => {
                        stats.failed += 1;
                        *stats.errors.entry(e).or_default() += 1;
                    }
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                let done = stats.ok + stats.failed;
                progress.line(&format!(
                    "connecting: {}/{n} ok, {} failed, {:.0}/s",
                    stats.ok,
                    stats.failed,
                    rate_of(done - last.1, now - last.0),
                ));
                last = (now, done);
            }
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    let handles = spawner.await.context("the connecting task failed")?;
    Ok((handles, stats))
}

/// What publishing produced.
struct Load {
    sent: u64,
    unsent: u64,
    acked: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    achieved_rate: f64,
    max_lag_ms: f64,
    ack_time: hdrhistogram::Histogram<u64>,
    /// Acknowledged updates of each slot, by their key there (see
    /// [`Layout::place`]): what its subscribers should have seen.
    acked_per_slot: Vec<BitSet>,
}

/// Runs the publishers through the warm-up and the measured window; returns
/// their tally and CPU samples taken at the window's edges.
async fn publish(
    args: &Args,
    target: &Target,
    token: Option<&str>,
    topics: &[String],
    epoch: Instant,
    shared: &Arc<Shared>,
    progress: &Progress,
) -> anyhow::Result<(Load, CpuSample, CpuSample)> {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let start_ns = ns(epoch.elapsed() + Duration::from_millis(50));
    let from_ns = start_ns + ns(args.warmup);
    let to_ns = from_ns + ns(args.duration);
    shared.measure_from.store(from_ns, Ordering::Relaxed);
    shared.measure_to.store(to_ns, Ordering::Relaxed);
    let cfg = Arc::new(publisher::Config {
        target: target.clone(),
        templates: topics
            .iter()
            .map(|t| target.publish_template(args.flavor, t, token))
            .collect(),
        batch_template: (args.batch > 1).then(|| target.batch_template(topics, token)),
        batch: args.batch as usize,
        payload_size: usize::try_from(args.payload_size).unwrap_or(usize::MAX),
        rate: args.rate,
        publishers: usize::from(args.publishers),
        epoch,
        start_ns,
        measure_from_ns: from_ns,
        end_ns: to_ns,
        shared: shared.clone(),
    });
    // Paced: a thread each (precise sleeps). Flat out: one thread and its
    // event loop for all (see `bench/publisher.rs`).
    let event_loop = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a publisher event loop")
    };
    let mut threads: Vec<std::thread::JoinHandle<Vec<publisher::Report>>> = Vec::new();
    if args.rate > 0.0 {
        for k in 0..usize::from(args.publishers) {
            let cfg = cfg.clone();
            let rt = event_loop()?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("bench-publisher-{k}"))
                    .spawn(move || vec![rt.block_on(publisher::run(&cfg, k))])
                    .context("cannot start a publisher thread")?,
            );
        }
    } else {
        let cfg = cfg.clone();
        let rt = event_loop()?;
        let n = usize::from(args.publishers);
        threads.push(
            std::thread::Builder::new()
                .name("bench-publishers".into())
                .spawn(move || {
                    rt.block_on(futures_util::future::join_all(
                        (0..n).map(|k| publisher::run(&cfg, k)),
                    ))
                })
                .context("cannot start the publishers' thread")?,
        );
    }
    let at = |ns: u64| epoch + Duration::from_nanos(ns);
    if !args.warmup.is_zero() {
        progress.wait_until(at(from_ns), "warm-up", shared).await;
    } else {
        tokio::time::sleep_until(at(from_ns).into()).await;
    }
    let cpu_from = CpuSample::take(progress.hub.as_ref());
    progress.wait_until(at(to_ns), "load", shared).await;
    let cpu_to = CpuSample::take(progress.hub.as_ref());
    let reports = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a publisher thread panicked"))
            .collect::<Vec<_>>()
    })
    .await
    .context("cannot join the publishers")?;

    let mut load = Load {
        sent: 0,
        unsent: 0,
        acked: 0,
        errors: 0,
        error_kinds: BTreeMap::new(),
        achieved_rate: 0.0,
        max_lag_ms: 0.0,
        ack_time: new_histogram(),
        acked_per_slot: Vec::new(),
    };
    let mut acked_in_window = 0;
    let layout = args.layout();
    let mut per_slot: Vec<Vec<u64>> = vec![Vec::new(); layout.slots()];
    for r in reports {
        load.sent += r.sent;
        load.unsent += r.unsent;
        load.acked += r.acked;
        acked_in_window += r.acked_in_window;
        for (kind, n) in r.errors {
            load.errors += n;
            *load.error_kinds.entry(kind).or_default() += n;
        }
        load.max_lag_ms = load.max_lag_ms.max(r.lag_ns as f64 / 1e6);
        let _ = load.ack_time.add(&r.ack_time);
        for seq in r.acked_seqs {
            let (slot, key) = layout.place(seq);
            per_slot[slot].push(key);
        }
    }
    load.achieved_rate = rate(acked_in_window as usize, args.duration.as_secs_f64());
    load.acked_per_slot = per_slot.into_iter().map(BitSet::from_indices).collect();
    Ok((load, cpu_from, cpu_to))
}

/// Expected against received, over every connected subscriber.
fn tally_deliveries(load: &Load, reports: &[subscriber::Report], duration: Duration) -> Deliveries {
    let mut d = Deliveries::default();
    let mut in_window = 0;
    for r in reports.iter().filter(|r| r.connected && !r.slow) {
        // Keys of every topic of its slot: all of them counted at once.
        let acked = &load.acked_per_slot[r.slot];
        let received = r.seen.seen_of(acked);
        let expected = acked.len();
        d.total += r.events;
        d.expected += expected;
        d.received += received;
        d.losses += expected - received;
        if expected > received {
            d.subscribers_with_losses += 1;
        }
        d.duplicates += r.duplicates;
        d.unacknowledged += r.seen.unique - received;
        d.foreign += r.foreign;
        in_window += r.in_window;
    }
    d.per_second = stats::round1(rate(in_window as usize, duration.as_secs_f64()));
    d
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn rate_of(n: usize, d: Duration) -> f64 {
    rate(n, d.as_secs_f64())
}

/// Progress lines on stderr, once a second.
struct Progress {
    quiet: bool,
    hub: Option<Proc>,
}

impl Progress {
    fn line(&self, text: &str) {
        if !self.quiet {
            eprintln!("herald bench: {text}");
        }
    }

    /// Waits until `deadline`, printing rates and CPU use each second.
    async fn wait_until(&self, deadline: Instant, phase: &str, shared: &Shared) {
        let mut last = (
            CpuSample::take(self.hub.as_ref()),
            Instant::now(),
            shared.sent.load(Ordering::Relaxed),
            shared.acked.load(Ordering::Relaxed),
            shared.delivered(),
        );
        loop {
            let next = (Instant::now() + Duration::from_secs(1)).min(deadline);
            tokio::time::sleep_until(next.into()).await;
            if self.quiet {
                if next >= deadline {
                    return;
                }
                continue;
            }
            let now = (
                CpuSample::take(self.hub.as_ref()),
                Instant::now(),
                shared.sent.load(Ordering::Relaxed),
                shared.acked.load(Ordering::Relaxed),
                shared.delivered(),
            );
            let secs = (now.1 - last.1).as_secs_f64();
            if secs >= 0.2 {
                let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
                let used = now.0.since(&last.0);
                let (hub_cpu, own_cpu) = (used.hub, used.own);
                let mut text = format!(
                    "{phase}: sent {}/s, acked {}/s, delivered {}/s, generator CPU {}",
                    fmt_count(per_s(last.2, now.2) as u64),
                    fmt_count(per_s(last.3, now.3) as u64),
                    fmt_count(per_s(last.4, now.4) as u64),
                    fmt_pct(own_cpu),
                );
                if self.hub.is_some() {
                    let _ = write!(text, ", hub CPU {}", fmt_pct(hub_cpu));
                }
                self.line(&text);
                last = now;
            }
            if next >= deadline {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::parse_from(["b", "--rate", "0", "--duration", "500ms", "--warmup", "0"]);
        assert_eq!(cli.args.rate, 0.0);
        assert_eq!(cli.args.duration, Duration::from_millis(500));
        assert_eq!(cli.args.subscribers, 100);
        assert!(Cli::try_parse_from(["b", "--duration", "0"]).is_err());
        assert!(Cli::try_parse_from(["b", "--rate", "-1"]).is_err());
        assert!(Cli::try_parse_from(["b", "--payload-size", "10"]).is_err());
        assert_eq!(cli.args.flavor, Flavor::Mercure);
        assert!(cli.args.pid.is_empty());
        let cli = Cli::parse_from([
            "b",
            "--flavor",
            "pushpin",
            "--publish-url",
            "http://127.0.0.1:5561/publish/",
            "--pid",
            "10,11",
            "--pid",
            "12",
        ]);
        assert_eq!(cli.args.flavor, Flavor::Pushpin);
        assert_eq!(cli.args.pid, [10, 11, 12]);
        assert_eq!(
            cli.args.publish_url.unwrap().as_str(),
            "http://127.0.0.1:5561/publish/"
        );
        assert!(Cli::try_parse_from(["b", "--flavor", "ably"]).is_err());
    }
}
