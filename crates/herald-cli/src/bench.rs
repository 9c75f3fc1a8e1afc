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
//! - `args.rs`: the command's arguments, read by every step.
//! - `plan.rs`: the arguments checked, the hub resolved, tokens minted and
//!   subscription requests built, before any connection.
//! - `connect.rs`: opening the subscribers (paced) and `--churn`;
//!   `subscriber.rs`: one subscriber's connection and event counting.
//! - `load.rs`: the publishers through warm-up and the measured window;
//!   `publisher.rs`: one publisher.
//! - `run_types.rs`: what the phases hand on to the summary: the
//!   connections, the measured window and the end of the run.
//! - `summary.rs`: what was measured, tallied into the report's figures;
//!   `report.rs`: the report's shape, its warnings, text and JSON.
//! - `progress.rs`: the once-a-second lines on stderr.
//! - `http.rs`, `sse.rs`, `payload.rs`, `layout.rs`, `stats.rs`: the wire
//!   formats, the topic layout, and counting; `h2c.rs` and `ws.rs`: the
//!   `--http2` and `--websocket` transports.

mod args;
mod connect;
mod dial;
mod h2c;
mod http;
mod layout;
mod load;
mod payload;
mod plan;
mod progress;
mod publisher;
mod report;
mod run_types;
mod sse;
mod stats;
mod subscriber;
mod summary;
mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use args::Args;
use plan::Plan;
use progress::Progress;
use run_types::{Connected, Ended, Window};
use stats::{CpuSample, Proc, Shared};

/// Time the hub is given after the last connection before its memory is
/// read as "idle".
const SETTLE: Duration = Duration::from_millis(500);

/// Runs a benchmark: plan it, connect the subscribers, hold them idle or
/// put the hub under load for the measured window, wind down, and report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::new(&args).await?;
    let requests = plan.subscribe_requests(&args)?;
    let transport = plan.transport(&args)?;
    let run = Run::new(&args, &plan, requests, transport);
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
    fn new(
        args: &Args,
        plan: &Plan,
        requests: Vec<Vec<u8>>,
        transport: subscriber::Transport,
    ) -> Self {
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
            transport,
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
        &plan.publish_targets,
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
