//! OpenTelemetry traces, received by an OTLP/HTTP endpoint in this process.
//!
//! The hub's exporter ([`herald::telemetry::otlp`]) posts protobuf to a
//! small axum app that decodes every `ExportTraceServiceRequest`. A publish
//! carrying a sampled W3C `traceparent` must come back as three spans of
//! the publisher's trace: `publish` (a server span, child of the
//! publisher's), `append` under it, and `deliver` under `append`, with the
//! number of subscribers it reached. A `traceparent` that is not sampled
//! gives no span at all, and a publish without one starts a trace of its
//! own. Run on the memory engine and on the durable local engine (whose
//! fan-out runs on its writer, not in the request).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::{client, config, publisher_token, Subscription, TestHub};
use herald::engine::memory::MemoryEngine;
use herald::engine::Engine;
use herald::telemetry::otlp::{install, OtlpConfig};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Every span received, with its resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP endpoint on a free port: `/v1/traces`.
async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone())
                        .map(|v| match v {
                            Value::StringValue(s) => s,
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            sink.lock().unwrap().push((service.clone(), span));
                        }
                    }
                }
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(n)) => *n,
        other => panic!("{key} of {}: {other:?}", span.name),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Publishes `data` to topic `t` with these extra headers; returns its id.
async fn send(hub: &TestHub, data: &str, headers: &[(&str, &str)]) -> String {
    let mut req = client()
        .post(hub.hub_url())
        .bearer_auth(publisher_token())
        .form(&[("topic", "https://t"), ("data", data)]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// The spans of `trace` (hex), once `want` of them arrived.
async fn spans_of(received: &Received, trace: &str, want: usize) -> Vec<Span> {
    for _ in 0..100 {
        let spans: Vec<Span> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .map(|(_, s)| s.clone())
            .collect();
        if spans.len() >= want {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {want} spans of trace {trace} arrived");
}

/// The chain publish → append → deliver of one publish.
async fn check_chain(
    hub: &TestHub,
    received: &Received,
    flush: impl Fn() -> futures_util::future::BoxFuture<'static, ()>,
) {
    let mut sub = Subscription::topics(hub, &["https://t"]).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let id = send(
        hub,
        "traced",
        &[("traceparent", &format!("00-{trace}-{caller}-01"))],
    )
    .await;
    assert_eq!(
        sub.next_event(Duration::from_secs(5)).await.unwrap().data,
        "traced"
    );
    flush().await;
    let spans = spans_of(received, trace, 3).await;
    let named = |name: &str| {
        let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
        found[0]
    };
    let publish = named("publish");
    let append = named("append");
    let deliver = named("deliver");
    // publish: a server span under the caller's.
    assert_eq!(hex(&publish.parent_span_id), caller);
    assert_eq!(publish.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(int(publish, "http.response.status_code"), 200);
    // append under publish, deliver under append.
    assert_eq!(append.parent_span_id, publish.span_id);
    assert_eq!(int(append, "herald.updates"), 1);
    assert_eq!(deliver.parent_span_id, append.span_id);
    assert_eq!(int(deliver, "herald.subscribers"), 1);
    assert!(matches!(attr(deliver, "herald.update.id"), Some(Value::StringValue(v)) if *v == id));
    // Nested in time too.
    assert!(publish.start_time_unix_nano <= append.start_time_unix_nano);
    assert!(append.start_time_unix_nano <= deliver.start_time_unix_nano);
    assert!(deliver.end_time_unix_nano <= append.end_time_unix_nano);
    assert!(append.end_time_unix_nano <= publish.end_time_unix_nano);

    // A caller's trace that is not sampled records nothing here.
    let quiet = "11111111111111111111111111111111";
    send(
        hub,
        "not sampled",
        &[("traceparent", &format!("00-{quiet}-{caller}-00"))],
    )
    .await;
    // Without a traceparent, the publish starts a trace of its own.
    let before = received.lock().unwrap().len();
    send(hub, "own trace", &[]).await;
    flush().await;
    let own: Vec<(String, Span)> = received.lock().unwrap()[before..].to_vec();
    let root = own
        .iter()
        .find(|(_, s)| s.name == "publish" && s.parent_span_id.is_empty())
        .expect("a root publish span");
    assert_eq!(root.0, "herald-traces-test");
    assert!(received
        .lock()
        .unwrap()
        .iter()
        .all(|(_, s)| hex(&s.trace_id) != quiet));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_traced_from_request_to_delivery() {
    let (endpoint, received) = collector().await;
    let otlp = Arc::new(
        install(&OtlpConfig {
            endpoint: endpoint.parse().unwrap(),
            sample_ratio: 1.0,
            service_name: "herald-traces-test".into(),
        })
        .unwrap(),
    );
    let flush = {
        let otlp = otlp.clone();
        move || {
            let otlp = otlp.clone();
            Box::pin(async move { otlp.flush().await })
                as futures_util::future::BoxFuture<'static, ()>
        }
    };

    let memory: Arc<dyn Engine> = Arc::new(MemoryEngine::new(1000));
    let hub = TestHub::start_with(config(), memory).await;
    check_chain(&hub, &received, &flush).await;
    hub.stop().await.unwrap();

    #[cfg(feature = "local")]
    {
        use herald::engine::local::{LocalConfig, LocalEngine};
        let dir = tempfile::tempdir().unwrap();
        received.lock().unwrap().clear();
        let local: Arc<dyn Engine> =
            Arc::new(LocalEngine::open(LocalConfig::new(dir.path().join("store"))).unwrap());
        let hub = TestHub::start_with(config(), local).await;
        check_chain(&hub, &received, &flush).await;
        hub.stop().await.unwrap();
    }
    drop(flush);
    Arc::try_unwrap(otlp).unwrap().shutdown().await;
}
