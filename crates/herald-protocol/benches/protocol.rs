//! Micro-benchmarks of the hot path's pure parts: encoding an update into
//! its SSE frame, and matching topics against selectors (draft-07 URI
//! templates) and topic matchers (draft-08 URL patterns).

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

fn url_patterns(c: &mut Criterion) {
    use herald_protocol::matcher::{MatchType, Matcher};
    let hub = url::Url::parse("https://hub.example.com/.well-known/mercure").unwrap();
    let pattern =
        Matcher::new(MatchType::UrlPattern, "https://example.com/books/:id", &hub).unwrap();
    let relative = Matcher::new(
        MatchType::UrlPattern,
        "/.well-known/mercure/subscriptions/:type/:match/:subscriber",
        &hub,
    )
    .unwrap();
    // A hostile pattern on the input that makes it expensive: the bound
    // the linear-time engine keeps (see `herald_protocol::matcher`,
    // `url_pattern.rs`).
    let hostile = Matcher::new(
        MatchType::UrlPattern,
        "https://example.com/(.*a.{400}c)",
        &hub,
    )
    .unwrap();
    let mut x: u64 = 7;
    let long: String = std::iter::once("https://example.com/".to_owned())
        .chain((0..4000).map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ["a", "b", "c"][(x >> 33) as usize % 3].to_owned()
        }))
        .collect();
    c.bench_function("match/urlpattern/hit", |b| {
        b.iter(|| pattern.matches(black_box("https://example.com/books/12345")))
    });
    c.bench_function("match/urlpattern/miss", |b| {
        b.iter(|| pattern.matches(black_box("https://example.com/authors/12345")))
    });
    c.bench_function("match/urlpattern/relative", |b| {
        b.iter(|| {
            relative.matches(black_box(
                "/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Fa/urn%3Auuid%3A1",
            ))
        })
    });
    c.bench_function("match/urlpattern/hostile-4KiB", |b| {
        b.iter(|| hostile.matches(black_box(&long)))
    });
    c.bench_function("parse/urlpattern", |b| {
        b.iter(|| {
            Matcher::new(
                MatchType::UrlPattern,
                black_box("https://example.com/users/:user/books/:id"),
                &hub,
            )
        })
    });
}

criterion_group!(benches, encode, matching, url_patterns);
criterion_main!(benches);
