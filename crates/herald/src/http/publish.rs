//! `POST /.well-known/mercure`: publish one update (a Mercure form), or
//! many at once (herald's batch extension: a JSON array).
//!
//! A batch is all or nothing: every update is validated and authorized
//! before any is appended, and the engine appends them in one commit (one
//! fsync with the `local` engine), in order. The answer lists their ids in
//! the same order. `max_body_bytes` bounds a batch like any body, and a
//! batch holds at most half of `queue_frames` updates.
//!
//! A third form streams: `application/x-ndjson`, one update per line,
//! each published as its line arrives (see [`super::publish_stream`]).

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use herald_protocol::{Update, UpdateError};

use super::conn::ConnContext;
use super::error::HttpError;
#[cfg(feature = "fuzzing")]
pub(crate) use super::publish_rules::id_is_valid;
use super::publish_rules::BatchUpdate;
use super::publish_rules::{check_rules, check_topics, publish_error};
use crate::auth::{self, AuthError, Grants, Role, TokenSource};
use crate::hub::{Hub, PublishError};
use crate::telemetry::traces;

/// `POST /.well-known/mercure`, in its `publish` span (see
/// [`crate::telemetry::traces`]).
pub(crate) async fn publish(
    State(hub): State<Hub>,
    conn: Option<Extension<ConnContext>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    use opentelemetry::context::FutureExt;
    let cx = traces::publish_span(&headers);
    let result = publish_request(hub, conn, query, headers, body)
        .with_context(cx.clone())
        .await;
    let status = match &result {
        Ok(res) => res.status(),
        Err(e) => e.status,
    };
    traces::end_publish(&cx, status.as_u16());
    result
}

async fn publish_request(
    hub: Hub,
    conn: Option<Extension<ConnContext>>,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let started = std::time::Instant::now();
    // Without a token, the application's callback decides once the
    // topics are known.
    let (grants, token) = match authorize_publisher(&hub, &headers, query.as_deref()) {
        Ok((g, t)) => (Some(g), t),
        Err(AuthError::Missing) if hub.callback().is_some() => (None, None),
        Err(e) => {
            hub.metrics().auth_failed("publish", &e);
            return Err(HttpError::auth(&hub, &e));
        }
    };
    let ip = conn
        .as_ref()
        .map(|Extension(c)| hub.client_ip(c.peer.ip(), &headers));

    let batch = match headers.get(header::CONTENT_TYPE) {
        None => false,
        Some(ct) => {
            let ct = ct.to_str().unwrap_or("");
            let mime = ct.split(';').next().unwrap_or("").trim();
            if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
                false
            } else if mime.eq_ignore_ascii_case("application/json") {
                true
            } else if mime.eq_ignore_ascii_case(super::publish_stream::NDJSON) {
                let publisher = super::publish_stream::Publisher {
                    hub,
                    grants,
                    token,
                    ip,
                    headers,
                };
                return super::publish_stream::publish(publisher, body);
            } else {
                return Err(HttpError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "expected Content-Type: application/x-www-form-urlencoded (one update), \
                     application/json (a batch) or application/x-ndjson (a stream of updates)",
                ));
            }
        }
    };
    let bytes = super::error::read_body(body, hub.config().max_body_bytes).await?;
    let updates = if batch {
        updates_from_json(&bytes, max_batch(&hub))?
    } else {
        let fields = herald_protocol::form::parse(&bytes)
            .map_err(|e| HttpError::bad_request(format!("malformed form body: {e}")))?;
        vec![update_from_form(fields)?]
    };
    for (i, u) in updates.iter().enumerate() {
        let draft08 = grants.as_ref().is_some_and(Grants::is_access_token);
        check_rules(&hub, u, draft08).map_err(|mut e| {
            if batch {
                e.reason = format!("update {i}: {}", e.reason);
            }
            e
        })?;
    }
    let grants = match grants {
        Some(g) => g,
        None => {
            // A browser sends its cookies cross-site too: a publish the
            // app may grant on cookies must come from an allowed origin,
            // as a publish with a token cookie must.
            if headers.contains_key(header::COOKIE) {
                if let Err(e) = auth::check_publish_origin(&headers, &hub.config().publish_origins)
                {
                    hub.metrics().auth_failed("publish", &e);
                    return Err(HttpError::auth(&hub, &e));
                }
            }
            let topics: Vec<String> = updates.iter().flat_map(|u| u.topics.clone()).collect();
            match super::events::ask_callback(&hub, &headers, "publish", &topics, ip).await? {
                Some(g) => g,
                None => {
                    let e = AuthError::Missing;
                    hub.metrics().auth_failed("publish", &e);
                    return Err(HttpError::auth(&hub, &e));
                }
            }
        }
    };
    let checked = if grants.may_publish_somewhere() {
        updates.iter().try_for_each(|u| check_topics(&grants, u))
    } else {
        Err(AuthError::NoPublishClaim)
    };
    if let Err(e) = checked {
        hub.metrics().auth_failed("publish", &e);
        return Err(HttpError::auth(&hub, &e));
    }
    // The publish rates, by the client's address and by token.
    hub.admit_publish(ip, token, updates.len())
        .map_err(|r| HttpError::refused(&r))?;

    let result = hub.publish(updates).await;
    hub.metrics().publish_request(started.elapsed());
    match result {
        Ok(stored) if batch => {
            let ids: Vec<&str> = stored.iter().map(|s| s.update.id.as_str()).collect();
            let body = serde_json::to_string(&ids).unwrap_or_default();
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Ok(stored) => {
            let id = stored
                .first()
                .map(|s| s.update.id.clone())
                .unwrap_or_default();
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], id).into_response())
        }
        Err(PublishError::InvalidAt(i, e)) => {
            Err(HttpError::bad_request(format!("update {i}: {e}")))
        }
        Err(e) => Err(publish_error(e)),
    }
}

/// The publisher's grants, and a key for its token (for the per-token
/// publish rate).
fn authorize_publisher(
    hub: &Hub,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(Grants, Option<u64>), AuthError> {
    let query_token = query.and_then(|q| {
        herald_protocol::form::parse(q.as_bytes())
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v)
    });
    let (grants, source) = hub
        .authenticate(headers, query_token.as_deref(), Role::Publisher)?
        .ok_or(AuthError::Missing)?;
    if source == TokenSource::Cookie {
        auth::check_publish_origin(headers, &hub.config().publish_origins)?;
    }
    Ok((grants, hub.token_key(headers, query_token.as_deref())))
}

/// Builds an update from form fields. `topic` may repeat (the first is the
/// canonical topic); `private` counts by presence, as in Mercure.
pub(crate) fn update_from_form(fields: Vec<(String, String)>) -> Result<Update, HttpError> {
    let mut u = Update::default();
    let mut seen_data = false;
    for (k, v) in fields {
        match k.as_str() {
            "topic" => u.topics.push(v),
            "data" => {
                if seen_data {
                    return Err(HttpError::bad_request("data must appear at most once"));
                }
                seen_data = true;
                u.data = v;
            }
            "id" => u.id = v,
            "type" => u.event_type = Some(v).filter(|t| !t.is_empty()),
            "retry" => {
                u.retry = Some(
                    Update::parse_retry(&v)
                        .map_err(|e: UpdateError| HttpError::bad_request(e.to_string()))?,
                )
            }
            "private" => u.private = true,
            _ => {}
        }
    }
    if u.topics.is_empty() {
        return Err(HttpError::bad_request("missing topic"));
    }
    Ok(u)
}

/// Most updates in one batch: half a subscriber's queue, so one batch to a
/// topic never overflows the queues of its live subscribers (which would
/// disconnect them all at once).
fn max_batch(hub: &Hub) -> usize {
    (hub.config().queue_frames / 2).max(1)
}

/// Parses a batch: a JSON array of at least one and at most `max` updates.
pub(crate) fn updates_from_json(body: &[u8], max: usize) -> Result<Vec<Update>, HttpError> {
    let batch: Vec<BatchUpdate> = serde_json::from_slice(body)
        .map_err(|e| HttpError::bad_request(format!("malformed JSON batch: {e}")))?;
    if batch.is_empty() {
        return Err(HttpError::bad_request("empty batch"));
    }
    if batch.len() > max {
        return Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("batch of {} updates: at most {max}", batch.len()),
        ));
    }
    batch
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            b.into_update()
                .map_err(|e| HttpError::bad_request(format!("update {i}: {}", e.reason)))
        })
        .collect()
}
