//! The results of a run: the JSON document and the table printed for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::layout::Layout;
use super::stats::Percentiles;

#[derive(Debug, Serialize)]
pub(super) struct Summary {
    pub(super) hub_url: String,
    pub(super) mode: &'static str,
    pub(super) config: ConfigOut,
    pub(super) connections: Connections,
    pub(super) publish: Option<PublishOut>,
    pub(super) deliveries: Option<Deliveries>,
    pub(super) latency_ms: Percentiles,
    /// Subscriptions opened and closed during the load (`--churn`).
    pub(super) churn: Option<ChurnOut>,
    pub(super) hub_process: Option<HubOut>,
    pub(super) generator: GeneratorOut,
    pub(super) machine: MachineOut,
    pub(super) warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct ChurnOut {
    pub(super) target_rate: f64,
    pub(super) attempted: u64,
    pub(super) ok: u64,
    pub(super) failed: u64,
    /// Not attempted because too many were still opening.
    pub(super) skipped: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) per_second: f64,
    pub(super) connect_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub(super) struct ConfigOut {
    /// How subscribers talk to the hub: `http1` (a connection each),
    /// `http2` (streams sharing connections) or `websocket`.
    pub(super) transport: &'static str,
    /// With `http2`: streams per connection, and the connections opened.
    pub(super) streams_per_connection: Option<usize>,
    pub(super) subscriber_connections: usize,
    pub(super) subscribers: usize,
    pub(super) topics: u64,
    /// Topics each subscriber subscribes to (in one request), at most: 1
    /// unless there are more topics than subscribers, which then share
    /// them out so every topic has exactly one subscriber.
    pub(super) topics_per_subscriber: u64,
    pub(super) publishers: usize,
    /// Updates per second; 0 is unlimited.
    pub(super) rate: f64,
    pub(super) duration_s: f64,
    pub(super) warmup_s: f64,
    pub(super) payload_size: u64,
    /// Source addresses subscribers were spread over (0: the kernel's choice).
    pub(super) source_addrs: usize,
    pub(super) connect_rate: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Connections {
    pub(super) attempted: usize,
    pub(super) ok: usize,
    pub(super) failed: usize,
    pub(super) errors: BTreeMap<String, u64>,
    /// From the first connection attempt to the last answer.
    pub(super) seconds: f64,
    pub(super) per_second: f64,
    pub(super) connect_ms: Percentiles,
    /// Connections that ended before the run did.
    pub(super) dropped: usize,
    pub(super) dropped_reasons: BTreeMap<String, u64>,
    /// Connected subscribers that never read (`--slow`).
    pub(super) slow: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct PublishOut {
    pub(super) sent: u64,
    /// Scheduled but not sent: the publishers were still behind their
    /// schedule when the window closed.
    pub(super) unsent: u64,
    pub(super) acknowledged: u64,
    pub(super) errors: u64,
    pub(super) error_kinds: BTreeMap<String, u64>,
    pub(super) target_rate: Option<f64>,
    /// Acknowledgements per second received in the measured window.
    pub(super) achieved_rate: f64,
    /// How late (behind schedule) a send was, at worst.
    pub(super) max_lag_ms: f64,
    pub(super) ack_ms: Percentiles,
}

#[derive(Debug, Serialize, Default)]
pub(super) struct Deliveries {
    /// Events received by all subscribers, duplicates included.
    pub(super) total: u64,
    /// Distinct deliveries received inside the measured window, per second.
    pub(super) per_second: f64,
    /// Acknowledged updates × the subscribers of their topic.
    pub(super) expected: u64,
    /// Of those, how many arrived.
    pub(super) received: u64,
    pub(super) losses: u64,
    pub(super) subscribers_with_losses: u64,
    pub(super) duplicates: u64,
    /// Deliveries of updates whose publication was not acknowledged.
    pub(super) unacknowledged: u64,
    /// Events that carried no bench payload of the subscriber's topic.
    pub(super) foreign: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct HubOut {
    pub(super) pid: u32,
    pub(super) rss_before_kib: Option<u64>,
    pub(super) rss_idle_kib: Option<u64>,
    pub(super) rss_end_kib: Option<u64>,
    pub(super) rss_peak_kib: Option<u64>,
    /// (idle RSS − RSS before connecting) / connections.
    pub(super) rss_per_connection_bytes: Option<f64>,
    /// In % of one core.
    pub(super) cpu_percent_connect: Option<f64>,
    /// During the measured window (or the idle hold), in % of one core.
    pub(super) cpu_percent: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(super) struct GeneratorOut {
    /// Cores this process may run on.
    pub(super) cores: usize,
    /// During the measured window (or the idle hold), in % of one core.
    pub(super) cpu_percent: Option<f64>,
    pub(super) cpu_percent_connect: Option<f64>,
    /// Above 90% of every core it may use.
    pub(super) saturated: bool,
    pub(super) rss_kib: Option<u64>,
    pub(super) fd_limit: Option<u64>,
}

/// The whole machine during the measured window (or the idle hold).
#[derive(Debug, Serialize)]
pub(super) struct MachineOut {
    /// How busy each core was, whatever ran on it (interrupt and softirq
    /// time included: on loopback much of the network work is counted
    /// there, not in any process).
    pub(super) cores_busy_percent: Vec<f64>,
    /// Hard and soft interrupt time, in % of one core (on loopback, much
    /// of the TCP work of both sides lands here rather than in a process).
    pub(super) interrupts_percent: Option<f64>,
    /// Busy time spent neither in the hub (with --pid), the generator nor
    /// interrupts, in % of one core: other processes.
    pub(super) other_percent: Option<f64>,
}

/// Completes the summary with the warnings found in it, prints the
/// report on stdout and writes it as JSON to `json`, if given.
pub(super) fn emit(mut summary: Summary, json: Option<&Path>) -> anyhow::Result<()> {
    let found = warnings(&summary);
    summary.warnings.extend(found);
    print!("{}", render(&summary));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&summary).expect("the summary serializes");
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// What a reader must not miss: failures, losses, a publisher behind its
/// schedule, and a saturated generator (or an idle machine).
pub(super) fn warnings(s: &Summary) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(h) = &s.hub_process {
        if h.rss_end_kib.is_none() {
            w.push(format!(
                "the hub process (pid {}) was gone by the end of the run",
                h.pid
            ));
        }
    }
    let k = &s.connections;
    if k.failed > 0 {
        w.push(format!(
            "{} of {} subscribers could not connect",
            fmt_count(k.failed as u64),
            fmt_count(k.attempted as u64)
        ));
    }
    if k.dropped > 0 {
        w.push(format!(
            "{} subscriber connections ended during the run",
            fmt_count(k.dropped as u64)
        ));
    }
    if let Some(p) = &s.publish {
        if let Some(target) = p.target_rate {
            if p.unsent > 0 || p.achieved_rate < 0.95 * target {
                w.push(format!(
                    "publishers fell behind their schedule: {}/s acknowledged of {}/s, up \
                     to {:.1} ms late, {} updates left unsent; latencies include the delay \
                     (add --publishers if the hub's CPU is not saturated)",
                    fmt_num(p.achieved_rate),
                    fmt_num(target),
                    p.max_lag_ms,
                    fmt_count(p.unsent)
                ));
            }
        }
        if p.errors > 0 {
            w.push(format!("{} publications failed", fmt_count(p.errors)));
        }
        let busy = &s.machine.cores_busy_percent;
        let busiest = busy.iter().copied().fold(0.0, f64::max);
        if p.target_rate.is_none() && !busy.is_empty() && busiest < 80.0 && p.errors == 0 {
            w.push(format!(
                "no core was busier than {busiest:.0}%: the {} publisher(s), one request in \
                 flight each, limit the rate; add --publishers to load the hub more",
                s.config.publishers
            ));
        }
    }
    if let Some(d) = &s.deliveries {
        if d.losses > 0 {
            w.push(format!(
                "{} deliveries lost ({} subscribers missed updates)",
                fmt_count(d.losses),
                fmt_count(d.subscribers_with_losses)
            ));
        }
    }
    if let Some(other) = s.machine.other_percent {
        if other > 50.0 {
            w.push(format!(
                "other processes used {other:.0}% of a core during the measurement: the \
                 figures may be perturbed"
            ));
        }
    }
    let g = &s.generator;
    if g.saturated {
        w.push(format!(
            "the generator itself used {} CPU of {} core(s): it is saturated, so these \
             figures may understate the hub; give the generator more cores or lighten the load",
            fmt_pct(g.cpu_percent),
            g.cores
        ));
    }
    w
}

/// Appends a titled section of label/value rows.
pub(super) fn section(text: &mut String, title: &str, rows: &[(&str, String)]) {
    let _ = writeln!(text, "\n{title}");
    for (label, value) in rows {
        let _ = writeln!(text, "  {label:<26}{value}");
    }
}

/// The human-readable report.
pub(super) fn render(s: &Summary) -> String {
    let c = &s.config;
    let idle = s.mode == "idle";
    let mut text = String::new();
    let _ = writeln!(text, "\nherald bench: {} ({})", s.hub_url, s.mode);
    let on_topics = format!("{} topic(s){}", c.topics, fmt_topics_per_subscriber(c));
    let _ = if idle {
        writeln!(
            text,
            "{} subscribers on {on_topics}, held {} s",
            c.subscribers, c.duration_s
        )
    } else {
        let rate = if c.rate > 0.0 {
            format!("{}/s", fmt_num(c.rate))
        } else {
            "unlimited rate".into()
        };
        writeln!(
            text,
            "{} subscribers on {on_topics}, {} publisher(s) at {rate}, {}-byte payloads, \
             {} s measured after {} s warm-up",
            c.subscribers, c.publishers, c.payload_size, c.duration_s, c.warmup_s
        )
    };

    let k = &s.connections;
    let transport = match c.streams_per_connection {
        Some(per) => format!(
            "{} ({} connection(s), up to {per} streams each)",
            c.transport,
            fmt_count(c.subscriber_connections as u64)
        ),
        None => c.transport.to_owned(),
    };
    let mut rows = vec![
        ("transport", transport),
        (
            "ok / failed",
            format!(
                "{} / {}",
                fmt_count(k.ok as u64),
                fmt_count(k.failed as u64)
            ),
        ),
        (
            "connect rate",
            format!("{}/s ({:.2} s for all)", fmt_num(k.per_second), k.seconds),
        ),
        ("connect time", fmt_percentiles(&k.connect_ms, false)),
        (
            "source addresses",
            if c.source_addrs == 0 {
                "the kernel's choice".into()
            } else {
                c.source_addrs.to_string()
            },
        ),
    ];
    for (e, n) in &k.errors {
        rows.push(("  failed", format!("{}x {e}", fmt_count(*n))));
    }
    if k.slow > 0 {
        rows.push(("never reading (--slow)", fmt_count(k.slow as u64)));
    }
    rows.push(("dropped during the run", fmt_count(k.dropped as u64)));
    for (e, n) in &k.dropped_reasons {
        rows.push(("  dropped", format!("{}x {e}", fmt_count(*n))));
    }
    section(&mut text, "connections", &rows);

    if let Some(p) = &s.publish {
        let mut rows = vec![
            (
                "sent / acknowledged",
                format!("{} / {}", fmt_count(p.sent), fmt_count(p.acknowledged)),
            ),
            ("errors", fmt_count(p.errors)),
        ];
        if p.unsent > 0 {
            rows.push(("unsent (behind schedule)", fmt_count(p.unsent)));
        }
        for (e, n) in &p.error_kinds {
            rows.push(("  error", format!("{}x {e}", fmt_count(*n))));
        }
        rows.push((
            "rate (measured window)",
            format!(
                "{}/s (target: {})",
                fmt_num(p.achieved_rate),
                p.target_rate
                    .map_or("unlimited".into(), |r| format!("{}/s", fmt_num(r)))
            ),
        ));
        rows.push(("acknowledgement time", fmt_percentiles(&p.ack_ms, false)));
        section(&mut text, "publishing", &rows);
    }

    if let Some(d) = &s.deliveries {
        let mut rows = vec![
            ("events received", fmt_count(d.total)),
            (
                "per second (measured)",
                format!("{}/s", fmt_num(d.per_second)),
            ),
            (
                "expected / arrived",
                format!("{} / {}", fmt_count(d.expected), fmt_count(d.received)),
            ),
            (
                "lost",
                format!(
                    "{} ({} subscribers)",
                    fmt_count(d.losses),
                    fmt_count(d.subscribers_with_losses)
                ),
            ),
            ("duplicates", fmt_count(d.duplicates)),
        ];
        if d.unacknowledged > 0 {
            rows.push(("of unacknowledged updates", fmt_count(d.unacknowledged)));
        }
        if d.foreign > 0 {
            rows.push(("foreign events", fmt_count(d.foreign)));
        }
        section(&mut text, "deliveries", &rows);
        let title = format!(
            "latency, scheduled send to receive ({} samples)",
            fmt_count(s.latency_ms.samples)
        );
        let _ = writeln!(
            text,
            "\n{title}\n  {}",
            fmt_percentiles(&s.latency_ms, true)
        );
    }

    if let Some(c) = &s.churn {
        let mut rows = vec![
            (
                "opened and closed",
                format!(
                    "{} of {} ({}/s, target {}/s)",
                    fmt_count(c.ok),
                    fmt_count(c.attempted),
                    c.per_second,
                    c.target_rate
                ),
            ),
            ("failed", fmt_count(c.failed)),
            ("to the response head", fmt_percentiles(&c.connect_ms, true)),
        ];
        if c.skipped > 0 {
            rows.push(("skipped (too many opening)", fmt_count(c.skipped)));
        }
        for (e, n) in &c.errors {
            rows.push(("  failed", format!("{}x {e}", fmt_count(*n))));
        }
        section(&mut text, "churn (--churn)", &rows);
    }

    let window = if idle {
        "CPU (idle hold)"
    } else {
        "CPU (measured window)"
    };
    if let Some(h) = &s.hub_process {
        let rows = [
            (
                "RSS before / idle / end",
                format!(
                    "{} / {} / {} (peak {})",
                    fmt_kib(h.rss_before_kib),
                    fmt_kib(h.rss_idle_kib),
                    fmt_kib(h.rss_end_kib),
                    fmt_kib(h.rss_peak_kib)
                ),
            ),
            (
                // Per subscriber: with --http2, per stream.
                if s.config.transport == "http2" {
                    "RSS per stream"
                } else {
                    "RSS per connection"
                },
                h.rss_per_connection_bytes.map_or("-".into(), fmt_bytes),
            ),
            (window, format!("{} of one core", fmt_pct(h.cpu_percent))),
            (
                "CPU (connecting)",
                format!("{} of one core", fmt_pct(h.cpu_percent_connect)),
            ),
        ];
        section(&mut text, &format!("hub process (pid {})", h.pid), &rows);
    }

    let g = &s.generator;
    let rows = [
        (
            window,
            format!(
                "{} of {} core(s){}",
                fmt_pct(g.cpu_percent),
                g.cores,
                if g.saturated { "  SATURATED" } else { "" }
            ),
        ),
        ("CPU (connecting)", fmt_pct(g.cpu_percent_connect)),
        ("RSS", fmt_kib(g.rss_kib)),
    ];
    section(&mut text, "generator (this process)", &rows);

    let busy = &s.machine.cores_busy_percent;
    if !busy.is_empty() {
        let shown: Vec<String> = busy
            .iter()
            .take(32)
            .enumerate()
            .map(|(i, p)| format!("cpu{i} {p:.0}%"))
            .collect();
        let more = if busy.len() > 32 { ", ..." } else { "" };
        section(
            &mut text,
            "machine (any process, interrupts included)",
            &[
                ("cores busy", format!("{}{more}", shown.join("  "))),
                (
                    "interrupts",
                    format!("{} of one core", fmt_pct(s.machine.interrupts_percent)),
                ),
                (
                    "other processes, at least",
                    format!("{} of one core", fmt_pct(s.machine.other_percent)),
                ),
            ],
        );
    }

    if !s.warnings.is_empty() {
        text.push('\n');
        for w in &s.warnings {
            let _ = writeln!(text, "WARNING: {w}");
        }
    }
    text
}

/// ` (6 per subscriber)`, ` (5 or 6 per subscriber)`; nothing with one
/// topic each.
fn fmt_topics_per_subscriber(c: &ConfigOut) -> String {
    if c.topics_per_subscriber <= 1 {
        return String::new();
    }
    let layout = Layout::new(c.topics, c.subscribers);
    let (least, most) = (layout.min_topics_per_slot(), c.topics_per_subscriber);
    if least == most {
        format!(" ({most} per subscriber)")
    } else {
        format!(" ({least} or {most} per subscriber)")
    }
}

pub(super) fn fmt_percentiles(p: &Percentiles, long: bool) -> String {
    if p.samples == 0 {
        return "-".into();
    }
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
    if long {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}) ms",
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.p999),
            ms(p.max),
            ms(p.mean)
        )
    } else {
        format!("p50 {}  p99 {}  max {} ms", ms(p.p50), ms(p.p99), ms(p.max))
    }
}

/// An integer with thousands separators.
pub(super) fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate: thousands separators, one decimal below 100.
pub(super) fn fmt_num(x: f64) -> String {
    if x < 100.0 {
        format!("{x:.1}")
    } else {
        fmt_count(x.round() as u64)
    }
}

pub(super) fn fmt_pct(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.1}%"))
}

pub(super) fn fmt_kib(kib: Option<u64>) -> String {
    match kib {
        None => "-".into(),
        Some(k) if k >= 10 * 1024 => format!("{:.1} MiB", k as f64 / 1024.0),
        Some(k) => format!("{k} KiB"),
    }
}

pub(super) fn fmt_bytes(b: f64) -> String {
    if b.abs() >= 10.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(12345.6), "12,346");
        assert_eq!(fmt_kib(Some(512)), "512 KiB");
        assert_eq!(fmt_kib(Some(20 * 1024)), "20.0 MiB");
        assert_eq!(fmt_bytes(2048.0), "2048 B");
        assert_eq!(fmt_bytes(20480.0), "20.0 KiB");
    }
}
