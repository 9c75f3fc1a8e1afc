//! HTTP routes of the hub.
//!
//! [`router`] gives an axum `Router` an embedder can mount in its own app;
//! [`crate::server::serve`] runs it on a listener with connection limits,
//! slow-subscriber cancellation and graceful shutdown.

mod admin;
pub(crate) mod direct;
mod metadata;
mod page;
pub(crate) mod parked;
mod publish;
mod subscribe;
mod subscriptions;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::hub::Hub;

/// The hub's well-known path.
pub const MERCURE_PATH: &str = "/.well-known/mercure";

/// Response headers cross-origin clients may read: the resume points of
/// both revisions, the subscriptions API's `Link`, `Accept-Query`, and the
/// challenge of an authorization failure.
pub(crate) const EXPOSED_HEADERS: &str =
    "last-event-id, mercure-last-event-id, link, accept-query, www-authenticate";

/// Per-connection context the server puts into each request's extensions.
#[derive(Clone, Debug)]
pub struct ConnContext {
    /// Cancelling it drops the connection at once (slow subscribers). The
    /// direct event-stream path has none: it watches the subscriber.
    pub cancel: Option<CancellationToken>,
    /// The client's address.
    pub peer: std::net::SocketAddr,
}

/// A short text error: the status and one line saying why.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub reason: String,
    /// The `WWW-Authenticate` value of an authorization failure.
    pub challenge: Option<String>,
}

impl HttpError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            challenge: None,
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }

    /// An authorization failure, answered as RFC 6750 says: the status of
    /// the error and a `WWW-Authenticate: Bearer` challenge with its error
    /// code and the URL of the hub's protected resource metadata.
    pub fn auth(hub: &Hub, e: &crate::auth::AuthError) -> Self {
        tracing::debug!(reason = e.reason(), "authorization failed: {e}");
        let metadata = hub.config().resource_metadata_url();
        let challenge = match e.bearer_error() {
            Some(code) => format!("Bearer error=\"{code}\", resource_metadata=\"{metadata}\""),
            None => format!("Bearer resource_metadata=\"{metadata}\""),
        };
        Self {
            status: e.status(),
            reason: e.public_message(),
            challenge: Some(challenge),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut res = (self.status, format!("{}\n", self.reason)).into_response();
        let challenge = match self.challenge {
            Some(c) => HeaderValue::from_str(&c).ok(),
            None if self.status == StatusCode::UNAUTHORIZED => {
                Some(HeaderValue::from_static("Bearer"))
            }
            None => None,
        };
        if let Some(c) = challenge {
            res.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, c);
        }
        res
    }
}

/// Reads a request body of at most `limit` bytes (`413` beyond).
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, HttpError> {
    use http_body_util::{BodyExt, Limited};
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes"),
        )),
        Err(e) => Err(HttpError::bad_request(format!("cannot read body: {e}"))),
    }
}

/// All routes of the hub, with CORS when origins are configured.
pub fn router(hub: Hub) -> Router {
    let cors = cors_layer(&hub.config().cors_origins);
    let metadata_path = hub.config().resource_metadata_path();
    let router = Router::new()
        .route("/", get(page::index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/.well-known/herald/stats", get(admin::stats))
        .route(
            MERCURE_PATH,
            get(subscribe::subscribe)
                .post(publish::publish)
                .fallback(other_method),
        )
        .route(&metadata_path, get(metadata::protected_resource))
        .route(
            "/.well-known/mercure/subscriptions",
            get(subscriptions::all),
        )
        .route(
            "/.well-known/mercure/subscriptions/{topic}",
            get(subscriptions::by_topic),
        )
        .route(
            "/.well-known/mercure/subscriptions/{first}/{second}",
            get(subscriptions::two_segments),
        )
        .route(
            "/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}",
            get(subscriptions::one08),
        )
        .with_state(hub);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// `QUERY` subscribes with a form body; other methods are not allowed.
async fn other_method(
    axum::extract::State(hub): axum::extract::State<Hub>,
    conn: Option<axum::Extension<ConnContext>>,
    method: Method,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, HttpError> {
    if method.as_str() == "QUERY" {
        let conn = conn.map(|axum::Extension(c)| c);
        return subscribe::subscribe_query(hub, conn, query, headers, body).await;
    }
    let mut res = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed (GET, QUERY or POST)"),
    )
    .into_response();
    res.headers_mut().insert(
        axum::http::header::ALLOW,
        HeaderValue::from_static("GET, HEAD, QUERY, POST"),
    );
    Ok(res)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        // Credentials (cookies) are allowed, so the origin is mirrored
        // rather than answered with a literal `*`.
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_credentials(true)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::OPTIONS,
                Method::from_bytes(b"QUERY").expect("a valid method"),
            ])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CACHE_CONTROL,
                axum::http::header::CONTENT_TYPE,
                axum::http::header::IF_NONE_MATCH,
                axum::http::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers(
                EXPOSED_HEADERS
                    .split(", ")
                    .map(axum::http::HeaderName::from_static)
                    .collect::<Vec<_>>(),
            ),
    )
}
