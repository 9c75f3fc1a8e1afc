//! OpenTelemetry traces of a publish: `publish` (the HTTP request, a
//! server span that continues the caller's W3C `traceparent`), `append`
//! (the engine storing the updates, until this node delivered them) and,
//! inside it, one `deliver` per update (the fan-out into the queues of its
//! subscribers on this node).
//!
//! The hub speaks the OpenTelemetry API only, through the global tracer
//! provider and propagator: with none installed every span is a no-op and
//! nothing below records anything. `herald serve --otlp-endpoint` installs
//! herald's own exporter ([`super::otlp`]); an application embedding the
//! hub installs whatever it uses.
//!
//! `deliver` happens where the engine's tail hands the update over, not in
//! the request: a publish registers its updates' ids with the append
//! span's context ([`Traced::watch`]), the fan-out picks the context up by
//! id, and the ids are forgotten once the append returned (or its publish
//! was dropped), so the table holds only updates in flight. Updates published on another node
//! are delivered here without a span: their trace lives on that node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry::global::{self, BoxedSpan, BoxedTracer};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{
    Span, SpanContext, SpanKind, Status, TraceContextExt, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use parking_lot::Mutex;

/// The instrumentation scope of herald's spans.
pub const SCOPE: &str = "herald";

fn tracer() -> BoxedTracer {
    global::tracer_provider().tracer(SCOPE)
}

/// Updates being published on this node in a sampled trace: id → the
/// context of the `append` span their `deliver` spans belong to.
#[derive(Debug, Default)]
pub struct Traced {
    /// How many ids are watched: the fan-out looks no further when 0.
    watched: AtomicUsize,
    spans: Mutex<HashMap<String, SpanContext>>,
}

impl Traced {
    /// Watches `ids`, whose `deliver` spans go under `parent`, until the
    /// returned guard is dropped (the append returned, or its publish was
    /// dropped half-way: the table never keeps an id).
    pub fn watch(&self, ids: Vec<String>, parent: &SpanContext) -> Watching<'_> {
        let mut spans = self.spans.lock();
        for id in &ids {
            spans.insert(id.clone(), parent.clone());
        }
        self.watched.store(spans.len(), Ordering::Release);
        Watching { traced: self, ids }
    }

    /// A `deliver` span for update `id`, when its publish is traced here.
    pub fn deliver(&self, id: &str) -> Option<BoxedSpan> {
        if self.watched.load(Ordering::Acquire) == 0 {
            return None;
        }
        let parent = self.spans.lock().get(id)?.clone();
        let cx = Context::new().with_remote_span_context(parent);
        let tracer = tracer();
        let mut span = tracer
            .span_builder("deliver")
            .with_kind(SpanKind::Internal)
            .start_with_context(&tracer, &cx);
        span.set_attribute(KeyValue::new("herald.update.id", id.to_owned()));
        Some(span)
    }
}

/// Ids being watched; forgotten when dropped.
#[derive(Debug)]
pub struct Watching<'a> {
    traced: &'a Traced,
    ids: Vec<String>,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        let mut spans = self.traced.spans.lock();
        for id in &self.ids {
            spans.remove(id);
        }
        self.traced.watched.store(spans.len(), Ordering::Release);
    }
}

/// Reads W3C trace context from request headers.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The `publish` span of a request, continuing the trace its headers name
/// (through the global propagator); the returned context carries it.
pub fn publish_span(headers: &http::HeaderMap) -> Context {
    let parent = global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let tracer = tracer();
    let span = tracer
        .span_builder("publish")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.path", "/.well-known/mercure"),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// Ends a request's span with its answer.
pub fn end_publish(cx: &Context, status: u16) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(format!("answered {status}")));
    }
    span.end();
}

/// The `append` span of updates published under `parent` (the current
/// context), when that trace is sampled.
pub fn append_span(parent: &Context, engine: &'static str, updates: usize) -> Option<Context> {
    if !parent.span().span_context().is_sampled() {
        return None;
    }
    let tracer = tracer();
    let span = tracer
        .span_builder("append")
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new("herald.engine", engine),
            KeyValue::new("herald.updates", updates as i64),
        ])
        .start_with_context(&tracer, parent);
    Some(parent.with_span(span))
}

/// Ends an `append` span, marking a failure.
pub fn end_append(cx: &Context, error: Option<&dyn std::fmt::Display>) {
    let span = cx.span();
    if let Some(e) = error {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}
