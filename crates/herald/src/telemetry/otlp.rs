//! Sends herald's traces ([`super::traces`]) over OTLP/HTTP (protobuf) to an
//! OpenTelemetry collector, or anything that takes OTLP (Jaeger, Tempo,
//! vendors' endpoints).
//!
//! [`install`] sets the global tracer provider (a batching exporter, so a
//! publish never waits for the collector; spans past its queue are
//! dropped) and the W3C trace-context propagator, so a publisher's
//! `traceparent` carries its trace through the hub. Requests go out
//! through herald's own HTTP client on the hub's runtime.

use std::time::Duration;

use opentelemetry::global;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// Where and what to export.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`):
    /// traces go to its `/v1/traces`. A URL with another path is used as
    /// it is.
    pub endpoint: url::Url,
    /// The share of traces started here that are recorded (0 to 1); a
    /// publisher's sampled `traceparent` is always followed.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("the OTLP exporter needs a running tokio runtime")]
    NoRuntime,
    #[error("otlp_sample_ratio must be between 0 and 1, not {0}")]
    Ratio(f64),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("the OTLP exporter is already installed in this process")]
    Twice,
}

/// The installed exporter. [`Otlp::shutdown`] sends what is queued.
#[derive(Debug)]
pub struct Otlp {
    provider: SdkTracerProvider,
}

/// The URL spans are posted to.
fn traces_url(endpoint: &url::Url) -> String {
    match endpoint.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/')),
        _ => endpoint.to_string(),
    }
}

/// Exports the hub's traces as `cfg` says, from now on.
///
/// # Errors
/// No tokio runtime is running, the ratio is out of range, or the
/// exporter does not build.
pub fn install(cfg: &OtlpConfig) -> Result<Otlp, OtlpError> {
    if !(0.0..=1.0).contains(&cfg.sample_ratio) {
        return Err(OtlpError::Ratio(cfg.sample_ratio));
    }
    // Replacing an installed provider would drop it on this thread, which
    // blocks until its exporter thread is done: once per process.
    static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if INSTALLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(OtlpError::Twice);
    }
    let rt = tokio::runtime::Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| OtlpError::Exporter(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client { http, rt })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(&cfg.endpoint))
        .build()
        .map_err(|e| OtlpError::Exporter(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Otlp { provider })
}

impl Otlp {
    /// Sends every finished span now.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        // The exporter's thread blocks on requests it runs on this
        // runtime: never block a worker waiting for it.
        let done = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!("OTLP flush failed: {e}");
        }
    }

    /// Sends what is queued and stops exporting.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            tracing::warn!("OTLP shutdown: {e}");
        }
    }
}

/// opentelemetry-http's client over herald's reqwest, on the hub's
/// runtime: the exporter's batch thread awaits the spawned request.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let (parts, body) = request.into_parts();
        let task = self.rt.spawn(async move {
            let res = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = res.status();
            let headers = res.headers().clone();
            let body = res.bytes().await?;
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, BoxError>(out)
        });
        let answer = task.await?;
        match &answer {
            Ok(res) if !res.status().is_success() => {
                tracing::warn!(status = %res.status(), "the OTLP endpoint refused traces");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("traces not sent to the OTLP endpoint: {e}"),
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_go_to_v1_traces_unless_a_path_is_given() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(traces_url(&u("http://c:4318")), "http://c:4318/v1/traces");
        assert_eq!(traces_url(&u("http://c:4318/")), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url(&u("https://x.example/otlp/v1/traces")),
            "https://x.example/otlp/v1/traces"
        );
    }
}
