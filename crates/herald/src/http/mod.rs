//! HTTP routes of the hub.
//!
//! [`router`] gives an axum `Router` an embedder can mount in its own app;
//! [`crate::server::serve`] runs it on a listener with connection limits,
//! slow-subscriber cancellation and graceful shutdown.

mod admin;
pub(crate) mod direct;
mod page;
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
}

impl HttpError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut res = (self.status, format!("{}\n", self.reason)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

impl From<crate::auth::AuthError> for HttpError {
    fn from(e: crate::auth::AuthError) -> Self {
        tracing::debug!(reason = e.reason(), "authorization failed: {e}");
        Self::new(e.status(), e.to_string())
    }
}

/// All routes of the hub, with CORS when origins are configured.
pub fn router(hub: Hub) -> Router {
    let cors = cors_layer(&hub.config().cors_origins);
    let router = Router::new()
        .route("/", get(page::index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/.well-known/herald/stats", get(admin::stats))
        .route(
            MERCURE_PATH,
            get(subscribe::subscribe).post(publish::publish),
        )
        .route(
            "/.well-known/mercure/subscriptions",
            get(subscriptions::all),
        )
        .route(
            "/.well-known/mercure/subscriptions/{topic}",
            get(subscriptions::by_topic),
        )
        .route(
            "/.well-known/mercure/subscriptions/{topic}/{subscriber}",
            get(subscriptions::one),
        )
        .with_state(hub);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
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
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CACHE_CONTROL,
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([axum::http::HeaderName::from_static("last-event-id")]),
    )
}
