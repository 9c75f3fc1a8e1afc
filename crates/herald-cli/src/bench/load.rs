//! The load: the publishers run through the warm-up and the measured
//! window, and their reports added up into what each slot's subscribers
//! should have received.
//!
//! One publisher is a [`publisher`] task; this module starts them on
//! their threads, waits out the window (sampling CPU at its edges) and
//! tallies.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::args::Args;
use super::http::Target;
use super::progress::Progress;
use super::publisher;
use super::stats::{new_histogram, rate, BitSet, CpuSample, Shared};

/// What publishing produced.
pub(super) struct Load {
    pub sent: u64,
    pub unsent: u64,
    pub acked: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub achieved_rate: f64,
    pub max_lag_ms: f64,
    pub ack_time: hdrhistogram::Histogram<u64>,
    /// Acknowledged updates of each slot, by their key there (see
    /// [`Layout::place`]): what its subscribers should have seen.
    ///
    /// [`Layout::place`]: super::layout::Layout::place
    pub acked_per_slot: Vec<BitSet>,
}

/// Runs the publishers through the warm-up and the measured window; returns
/// their tally and CPU samples taken at the window's edges.
pub(super) async fn publish(
    args: &Args,
    targets: &[Target],
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
        targets: targets
            .iter()
            .map(|target| publisher::Destination {
                target: target.clone(),
                templates: topics
                    .iter()
                    .map(|t| target.publish_template(args.flavor, t, token))
                    .collect(),
                batch_template: (args.batch > 1).then(|| target.batch_template(topics, token)),
            })
            .collect(),
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
