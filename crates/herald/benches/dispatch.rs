//! Micro-benchmarks of the fan-out path inside the hub: an update handed to
//! the topic index, matched, and queued (enqueue) on every subscriber it
//! reaches, then taken from each queue as a connection task would.
//!
//! `cargo bench -p herald --bench dispatch`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::engine::{Sink, Stored};
use herald::hub::Subscriber;
use herald::hub::TopicIndex as Registry;
use herald::telemetry::Metrics;
use herald_protocol::{Selector, Update};

fn registry() -> Registry {
    Registry::new(Box::new(|_| {}), Arc::new(Metrics::new()))
}

fn subscriber(id: u64, selector: &str) -> Arc<Subscriber> {
    Arc::new(Subscriber::new(
        id,
        vec![Selector::parse(selector).unwrap()],
        None,
        false,
        1 << 20,
        1 << 30,
        None,
    ))
}

fn update(position: u64, topic: String) -> Arc<Stored> {
    Arc::new(Stored::new(
        position,
        Update {
            id: format!("urn:uuid:{position}"),
            topics: vec![topic],
            data: "x".repeat(100),
            ..Update::default()
        },
    ))
}

/// One topic, N subscribers: the cost per delivery of matching, enqueueing
/// the shared frame, and draining it.
fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for n in [1_000u64, 10_000] {
        let reg = registry();
        let subs: Vec<_> = (0..n).map(|i| subscriber(i, "https://t/1")).collect();
        for s in &subs {
            reg.insert(s.clone());
        }
        let mut position = 0;
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                position += 1;
                reg.deliver(&[update(position, "https://t/1".into())]);
                for s in &subs {
                    std::hint::black_box(s.drain());
                }
            })
        });
    }
    group.finish();
}

/// One subscriber on each of N topics, updates to random topics: the cost
/// per update must not grow with the number of topics.
fn many_topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("many_topics");
    for n in [10u64, 100_000] {
        let reg = registry();
        let subs: Vec<_> = (0..n)
            .map(|i| subscriber(i, &format!("https://t/{i}")))
            .collect();
        for s in &subs {
            reg.insert(s.clone());
        }
        let topics: Vec<String> = (0..n).map(|i| format!("https://t/{i}")).collect();
        let mut position = 0u64;
        let mut pick = 0x9e37_79b9_7f4a_7c15u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                position += 1;
                pick ^= pick << 13;
                pick ^= pick >> 7;
                pick ^= pick << 17;
                let t = (pick % n) as usize;
                reg.deliver(&[update(position, topics[t].clone())]);
                std::hint::black_box(subs[t].drain());
            })
        });
    }
    group.finish();
}

/// 1,000 subscribers sharing one URI template, updates to 1,000 topic
/// strings it matches: the template is matched once per topic string (then
/// cached), not once per subscriber.
fn template(c: &mut Criterion) {
    let reg = registry();
    let subs: Vec<_> = (0..1000).map(|i| subscriber(i, "https://t/{id}")).collect();
    for s in &subs {
        reg.insert(s.clone());
    }
    let topics: Vec<String> = (0..1000).map(|i| format!("https://t/{i}")).collect();
    let mut position = 0u64;
    let mut group = c.benchmark_group("template");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000_subscribers", |b| {
        b.iter(|| {
            position += 1;
            let t = (position % 1000) as usize;
            reg.deliver(&[update(position, topics[t].clone())]);
            for s in &subs {
                std::hint::black_box(s.drain());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, fan_out, many_topics, template);
criterion_main!(benches);
