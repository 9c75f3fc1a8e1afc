//! Opening subscriber connections in bulk: the connection phase, paced
//! and with a bound on connections in progress, and the churn of
//! short-lived subscriptions opened while the load runs.
//!
//! Each connection is a [`subscriber`] task; this module only spawns them
//! at the requested pace and counts how connecting went.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use super::args::Args;
use super::progress::Progress;
use super::report::ChurnOut;
use super::stats::{self, new_histogram, rate_of, record, Percentiles};
use super::subscriber;

/// How the connection phase went.
pub(super) struct ConnectStats {
    pub ok: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub times: hdrhistogram::Histogram<u64>,
    /// Connected subscribers per slot (see [`Layout`]; those that read).
    ///
    /// [`Layout`]: super::layout::Layout
    pub per_slot: Vec<u64>,
    /// Connected subscribers that never read.
    pub slow: usize,
}

/// Opens `rate` subscriptions per second until `stop`, each closed once
/// the hub answers; at most 1,000 opening at once.
pub(super) async fn churn(
    cfg: Arc<subscriber::Config>,
    rate: f64,
    timeout: Duration,
    first_index: usize,
    mut stop: watch::Receiver<bool>,
) -> ChurnOut {
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
    ChurnOut {
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

/// Opens every subscriber connection (paced, with a bound on connections in
/// progress) and waits until each has connected or failed.
pub(super) async fn connect_all(
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
