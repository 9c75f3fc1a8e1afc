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
//!
//! # Layout
//!
//! [`run`] is the outline of a benchmark; each step lives with its concern:
//!
//! - `plan.rs`: the arguments checked, the hub resolved, tokens minted and
//!   subscription requests built, before any connection.
//! - `connect.rs`: opening the subscribers (paced) and `--churn`;
//!   `subscriber.rs`: one subscriber's connection and event counting.
//! - `load.rs`: the publishers through warm-up and the measured window;
//!   `publisher.rs`: one publisher.
//! - `summary.rs`: what was measured, tallied into the report's figures;
//!   `report.rs`: the report's shape, its warnings, text and JSON.
//! - `progress.rs`: the once-a-second lines on stderr.
//! - `http.rs`, `sse.rs`, `payload.rs`, `layout.rs`, `stats.rs`: the wire
//!   formats, the topic layout, and counting.

mod connect;
mod http;
mod layout;
mod load;
mod payload;
mod plan;
mod progress;
mod publisher;
mod report;
mod sse;
mod stats;
mod subscriber;
mod summary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jsonwebtoken::Algorithm;
use reqwest::Url;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::publish::{parse_hub_url, DEFAULT_HUB};
use crate::settings::parse_duration;
use crate::token;
use connect::ConnectStats;
use http::Flavor;
use layout::Layout;
use load::Load;
use plan::Plan;
use progress::Progress;
use report::ChurnOut;
use stats::{CpuSample, CpuUse, Proc, Shared};

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

/// Runs a benchmark: plan it, connect the subscribers, hold them idle or
/// put the hub under load for the measured window, wind down, and report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::new(&args).await?;
    let requests = plan.subscribe_requests(&args)?;
    let run = Run::new(&args, &plan, requests);
    let (subscribers, connected) = connect_subscribers(&args, &plan, &run).await?;
    let window = if args.idle {
        hold_idle(&args, &plan, &run).await
    } else {
        apply_load(&args, &plan, &run).await?
    };
    let ended = wind_down(&args, &plan, &run, subscribers, &connected, &window).await?;
    let summary = summary::build(&args, plan, &run.shared, connected, window, &ended);
    report::emit(summary, args.json.as_deref())
}

/// What every phase of a run shares once it is planned.
struct Run {
    /// Zero of every timestamp in the run.
    epoch: Instant,
    /// Counters the subscribers and publishers update as they go.
    shared: Arc<Shared>,
    /// What every subscriber task is given.
    subscribers: Arc<subscriber::Config>,
    progress: Progress,
}

impl Run {
    /// Starts the run's clock, with one subscription request per slot.
    fn new(args: &Args, plan: &Plan, requests: Vec<Vec<u8>>) -> Self {
        let epoch = Instant::now();
        let shared = Arc::new(Shared::new());
        let subscribers = Arc::new(subscriber::Config {
            requests,
            target: plan.target.clone(),
            sources: plan.sources.clone(),
            connect_timeout: args.connect_timeout,
            layout: plan.layout,
            epoch,
            shared: shared.clone(),
            slow: args.slow,
        });
        let progress = Progress {
            quiet: args.quiet,
            hub: plan.hub_proc.clone(),
        };
        Self {
            epoch,
            shared,
            subscribers,
            progress,
        }
    }
}

/// The subscriber tasks while they run.
struct Subscribers {
    /// Each hands back its report once told to stop.
    handles: Vec<JoinHandle<subscriber::Report>>,
    stop: watch::Sender<bool>,
}

/// What connecting the subscribers measured.
struct Connected {
    stats: ConnectStats,
    /// CPU use while connecting.
    cpu: CpuUse,
    /// The hub's memory (KiB, with `--pid`) before the first connection,
    /// and once the connections have settled.
    rss_before: Option<u64>,
    rss_idle: Option<u64>,
}

/// The measured window.
struct Window {
    /// What the publishers did; `None` with `--idle`.
    load: Option<Load>,
    /// The subscriptions opened meanwhile (`--churn`).
    churn: Option<ChurnOut>,
    /// CPU use over the window.
    cpu: CpuUse,
}

/// The end of the run: what the subscribers saw, and the hub's memory
/// (KiB, with `--pid`) just before they let go.
struct Ended {
    reports: Vec<subscriber::Report>,
    rss_end: Option<u64>,
    rss_peak: Option<u64>,
}

/// Opens every subscriber connection and waits until each has connected
/// or failed; fails the run when none could. Then gives the hub
/// [`SETTLE`] before reading its idle memory.
async fn connect_subscribers(
    args: &Args,
    plan: &Plan,
    run: &Run,
) -> anyhow::Result<(Subscribers, Connected)> {
    let hub = plan.hub_proc.as_ref();
    let rss_before = hub.and_then(Proc::rss_kib);
    let (stop, stop_rx) = watch::channel(false);
    let cpu_start = CpuSample::take(hub);
    let (handles, stats) =
        connect::connect_all(args, run.subscribers.clone(), stop_rx, &run.progress).await?;
    let cpu_end = CpuSample::take(hub);
    if stats.ok == 0 && args.subscribers > 0 {
        let why: Vec<String> = stats
            .errors
            .iter()
            .map(|(e, n)| format!("{n}x {e}"))
            .collect();
        let hint = plan::subscription_hint(plan.layout, &run.subscribers.requests);
        bail!(
            "no subscriber could connect to {}: {}{hint}",
            args.hub,
            why.join(", ")
        );
    }
    tokio::time::sleep(SETTLE).await;
    let rss_idle = hub.and_then(Proc::rss_kib);
    let connected = Connected {
        stats,
        cpu: cpu_end.since(&cpu_start),
        rss_before,
        rss_idle,
    };
    Ok((Subscribers { handles, stop }, connected))
}

/// `--idle`: holds the connections for `--duration`, publishing nothing.
async fn hold_idle(args: &Args, plan: &Plan, run: &Run) -> Window {
    let from = CpuSample::take(plan.hub_proc.as_ref());
    run.progress
        .wait_until(Instant::now() + args.duration, "idle", &run.shared)
        .await;
    let to = CpuSample::take(plan.hub_proc.as_ref());
    Window {
        load: None,
        churn: None,
        cpu: to.since(&from),
    }
}

/// Runs the publishers through the warm-up and the measured window, with
/// `--churn` subscriptions opening and closing meanwhile.
async fn apply_load(args: &Args, plan: &Plan, run: &Run) -> anyhow::Result<Window> {
    let (churn_stop, churn_rx) = watch::channel(false);
    let churn_task = (args.churn > 0.0).then(|| {
        tokio::spawn(connect::churn(
            run.subscribers.clone(),
            args.churn,
            args.connect_timeout,
            args.subscribers,
            churn_rx,
        ))
    });
    let (load, from, to) = load::publish(
        args,
        &plan.publish_target,
        plan.publish_token.as_deref(),
        &plan.topics,
        run.epoch,
        &run.shared,
        &run.progress,
    )
    .await?;
    let _ = churn_stop.send(true);
    let churn = match churn_task {
        Some(t) => Some(t.await.context("the churn task failed")?),
        None => None,
    };
    Ok(Window {
        load: Some(load),
        churn,
        cpu: to.since(&from),
    })
}

/// Waits up to `--grace` for the updates still in flight, reads the
/// hub's memory while the connections are still open, then stops the
/// subscribers and collects their reports.
async fn wind_down(
    args: &Args,
    plan: &Plan,
    run: &Run,
    subscribers: Subscribers,
    connected: &Connected,
    window: &Window,
) -> anyhow::Result<Ended> {
    if let Some(load) = &window.load {
        // Each slot's acknowledged updates (all its topics) times the
        // subscribers reading it.
        let expected: u64 = load
            .acked_per_slot
            .iter()
            .zip(&connected.stats.per_slot)
            .map(|(acked, subs)| acked.len() * subs)
            .sum();
        let deadline = Instant::now() + args.grace;
        while run.shared.delivered() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let hub = plan.hub_proc.as_ref();
    let rss_end = hub.and_then(Proc::rss_kib);
    let rss_peak = hub.and_then(Proc::peak_rss_kib);
    let _ = subscribers.stop.send(true);
    let mut reports = Vec::with_capacity(subscribers.handles.len());
    for h in subscribers.handles {
        reports.push(h.await.context("a subscriber task failed")?);
    }
    Ok(Ended {
        reports,
        rss_end,
        rss_peak,
    })
}

impl Args {
    /// How the topics are spread over the subscriptions: the one place
    /// both the subscribers and the publishers' tally take it from.
    fn layout(&self) -> Layout {
        Layout::new(self.topics, self.subscribers)
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
