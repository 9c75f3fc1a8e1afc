//! Every route of the hub in one axum [`Router`].

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::conn::ConnContext;
use super::error::HttpError;
use super::policy::{cors_layer, MERCURE_PATH};
use super::{admin, events, metadata, page, publish, subscriptions_api, websocket};
use crate::hub::handle::Hub;

/// All routes of the hub, with CORS when origins are configured. Mount it
/// in an axum app, or let [`crate::serve`] run it.
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
            get(websocket::subscribe)
                .post(publish::publish)
                .fallback(other_method),
        )
        .route(&metadata_path, get(metadata::protected_resource))
        .route(
            "/.well-known/mercure/subscriptions",
            get(subscriptions_api::all),
        )
        .route(
            "/.well-known/mercure/subscriptions/{topic}",
            get(subscriptions_api::by_topic),
        )
        .route(
            "/.well-known/mercure/subscriptions/{first}/{second}",
            get(subscriptions_api::two_segments),
        )
        .route(
            "/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}",
            get(subscriptions_api::one08),
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
        return events::subscribe_query(hub, conn, query, headers, body).await;
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
