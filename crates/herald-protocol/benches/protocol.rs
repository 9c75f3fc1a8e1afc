//! Micro-benchmarks of the hot path's pure parts: encoding an update into
//! its SSE frame, and matching topics against selectors.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use herald_protocol::sse::{self, EventFields};
use herald_protocol::Selector;

fn encode(c: &mut Criterion) {
    let data = "x".repeat(100);
    let multiline = "line of text\n".repeat(8);
    c.bench_function("encode/100B", |b| {
        b.iter(|| {
            sse::encode(black_box(&EventFields {
                id: Some("urn:uuid:6f1c1c4e-3b7e-4a3c-9d63-0d6f1c1c4e3b"),
                event: None,
                data: &data,
                retry: None,
            }))
        })
    });
    c.bench_function("encode/multiline", |b| {
        b.iter(|| {
            sse::encode(black_box(&EventFields {
                id: Some("1"),
                event: Some("update"),
                data: &multiline,
                retry: Some(1000),
            }))
        })
    });
}

fn matching(c: &mut Criterion) {
    let exact = Selector::parse("https://example.com/books/1").unwrap();
    let template = Selector::parse("https://example.com/books/{id}").unwrap();
    let complex = Selector::parse("https://example.com/{+path}/items{/id}{?q,lang}").unwrap();
    c.bench_function("match/exact", |b| {
        b.iter(|| exact.matches(black_box("https://example.com/books/1")))
    });
    c.bench_function("match/template/hit", |b| {
        b.iter(|| template.matches(black_box("https://example.com/books/12345")))
    });
    c.bench_function("match/template/miss", |b| {
        b.iter(|| template.matches(black_box("https://example.com/authors/12345")))
    });
    c.bench_function("match/template/complex", |b| {
        b.iter(|| complex.matches(black_box("https://example.com/a/b/items/7?q=x&lang=fr")))
    });
    c.bench_function("parse/template", |b| {
        b.iter(|| Selector::parse(black_box("https://example.com/users/{user}/books/{id}")))
    });
}

criterion_group!(benches, encode, matching);
criterion_main!(benches);
