//! Operator routes: `/metrics`, `/readyz`, and the dashboard's stats stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use super::error::HttpError;
use crate::auth::{self, AuthError};
use crate::config::MetricsAccess;
use crate::hub::Hub;

/// The Prometheus exposition, as `metrics` allows.
pub(crate) async fn metrics(
    State(hub): State<Hub>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    match &hub.config().metrics {
        MetricsAccess::Off => return Err(HttpError::new(StatusCode::NOT_FOUND, "metrics are off")),
        MetricsAccess::Open => {}
        MetricsAccess::Token(expected) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(expected.as_str()) {
                return Err(HttpError::new(
                    StatusCode::UNAUTHORIZED,
                    "metrics need the metrics token",
                ));
            }
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.metrics().encode(),
    )
        .into_response())
}

/// Ready when the engine answers within a second.
pub(crate) async fn readyz(State(hub): State<Hub>) -> Result<&'static str, HttpError> {
    match tokio::time::timeout(Duration::from_secs(1), hub.engine().bounds()).await {
        Ok(Ok(_)) => Ok("ready\n"),
        Ok(Err(e)) => Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("engine: {e}"),
        )),
        Err(_) => Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine: no answer within 1s",
        )),
    }
}

/// The dashboard's feed. Outside development mode it needs a token signed
/// with the publisher key (header or `authorization` query parameter).
pub(crate) async fn stats(
    State(hub): State<Hub>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    if !hub.config().dev_mode {
        let query_token = query.as_deref().and_then(|q| {
            herald_protocol::form::parse(q.as_bytes())
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v)
        });
        let checked = auth::extract_token(&headers, query_token.as_deref(), &[])
            .and_then(|t| t.ok_or(AuthError::Missing))
            .and_then(|(token, _)| {
                hub.publisher_verifier()
                    .ok_or(AuthError::NoKey)?
                    .verify(&token)
            });
        if let Err(e) = checked {
            hub.metrics().auth_failed("admin", &e);
            return Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                format!("admin token required: {e}"),
            ));
        }
    }
    let feed = hub.stats_feed();
    let (history, mut rx) = feed.subscribe();
    let stop = hub.shutdown_token().clone();
    let stream = async_stream::stream! {
        let history: Vec<&crate::hub::stats::Sample> = history.iter().map(|s| &**s).collect();
        yield Ok::<Bytes, Infallible>(crate::hub::stats::frame("history", &history));
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(s) => yield Ok(crate::hub::stats::frame("stats", &*s)),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
                () = stop.cancelled() => return,
            }
        }
    };
    let mut res = Response::new(Body::from_stream(stream));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}
