//! What a run measured, turned into the [`Summary`] the report prints:
//! the subscribers' reports tallied against what the publishers had
//! acknowledged, and the CPU and memory samples turned into figures.
//!
//! Kept apart from `report.rs`, which only knows the summary's shape and
//! how to print it: this module knows where each figure comes from.

use std::collections::BTreeMap;
use std::time::Duration;

use super::args::Args;
use super::connect::ConnectStats;
use super::load::Load;
use super::plan::Plan;
use super::report::{
    ConfigOut, Connections, Deliveries, GeneratorOut, HubOut, MachineOut, PublishOut, Summary,
};
use super::run_types::{Connected, Ended, Window};
use super::stats::{self, rate, CpuUse, Percentiles, Proc, Shared};
use super::subscriber;

/// The summary of a run, before [`super::report::warnings`] adds what it
/// finds in it.
pub(super) fn build(
    args: &Args,
    plan: Plan,
    shared: &Shared,
    connected: Connected,
    window: Window,
    ended: &Ended,
) -> Summary {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let deliveries = window
        .load
        .as_ref()
        .map(|l| tally_deliveries(l, &ended.reports, args.duration));
    let latency = Percentiles::of(&shared.latency());
    let hub_process = hub_process(args, &connected, ended, &window.cpu);
    Summary {
        hub_url: args.hub.to_string(),
        mode: if args.idle { "idle" } else { "load" },
        config: config(args, &plan),
        connections: connections(args, connected.stats, &ended.reports),
        publish: window.load.as_ref().map(|l| publish(args, l)),
        deliveries,
        latency_ms: latency,
        churn: window.churn,
        hub_process,
        generator: GeneratorOut {
            cores,
            cpu_percent: window.cpu.own,
            cpu_percent_connect: connected.cpu.own,
            saturated: window.cpu.own.is_some_and(|c| c > 90.0 * cores as f64),
            rss_kib: Proc::current().rss_kib(),
            fd_limit: plan.fd_limit,
        },
        machine: machine(&window.cpu),
        warnings: plan.warnings,
    }
}

/// The run's configuration, as it was carried out.
fn config(args: &Args, plan: &Plan) -> ConfigOut {
    ConfigOut {
        transport: if args.http2 {
            "http2"
        } else if args.websocket {
            "websocket"
        } else {
            "http1"
        },
        streams_per_connection: args.http2.then_some(args.streams_per_connection as usize),
        subscriber_connections: args.subscriber_connections(),
        subscribers: args.subscribers,
        topics: args.topics,
        topics_per_subscriber: plan.layout.max_topics_per_slot(),
        publishers: usize::from(args.publishers),
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: if args.idle {
            0.0
        } else {
            args.warmup.as_secs_f64()
        },
        payload_size: args.payload_size,
        source_addrs: plan.sources.len(),
        connect_rate: args.connect_rate,
    }
}

/// How connecting went, and which connections the hub dropped before the
/// end, by reason.
fn connections(args: &Args, connect: ConnectStats, reports: &[subscriber::Report]) -> Connections {
    let mut dropped = 0;
    let mut dropped_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for r in reports {
        if let Some(why) = &r.dropped {
            dropped += 1;
            *dropped_reasons.entry(why.clone()).or_default() += 1;
        }
    }
    Connections {
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
    }
}

/// What the publishers sent and the hub acknowledged.
fn publish(args: &Args, l: &Load) -> PublishOut {
    PublishOut {
        sent: l.sent,
        unsent: l.unsent,
        acknowledged: l.acked,
        errors: l.errors,
        error_kinds: l.error_kinds.clone(),
        target_rate: (args.rate > 0.0).then_some(args.rate),
        achieved_rate: stats::round1(l.achieved_rate),
        max_lag_ms: stats::round3(l.max_lag_ms),
        ack_ms: Percentiles::of(&l.ack_time),
    }
}

/// The hub's memory and CPU use (`--pid`; the report names the first
/// pid). Memory per connection is what connecting and settling added.
fn hub_process(
    args: &Args,
    connected: &Connected,
    ended: &Ended,
    window: &CpuUse,
) -> Option<HubOut> {
    args.pid.first().map(|&pid| HubOut {
        pid,
        rss_before_kib: connected.rss_before,
        rss_idle_kib: connected.rss_idle,
        rss_end_kib: ended.rss_end,
        rss_peak_kib: ended.rss_peak,
        rss_per_connection_bytes: match (connected.rss_before, connected.rss_idle) {
            (Some(b), Some(i)) if connected.stats.ok > 0 => Some(stats::round1(
                (i as f64 - b as f64) * 1024.0 / connected.stats.ok as f64,
            )),
            _ => None,
        },
        cpu_percent_connect: connected.cpu.hub,
        cpu_percent: window.hub,
    })
}

/// The whole machine over the measured window: interrupts, and what
/// neither the hub nor the generator used.
fn machine(window: &CpuUse) -> MachineOut {
    MachineOut {
        interrupts_percent: window.interrupts,
        other_percent: window.interrupts.zip(window.own).map(|(irq, own)| {
            let all: f64 = window.cores.iter().sum();
            stats::round1((all - irq - own - window.hub.unwrap_or(0.0)).max(0.0))
        }),
        cores_busy_percent: window.cores.clone(),
    }
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
