//! The subscriptions API (Mercure draft-07):
//! `GET /.well-known/mercure/subscriptions[/{topic}[/{subscriber}]]`.
//!
//! Answers JSON-LD documents listing the active subscriptions, with the id
//! of the last update the hub dispatched (`lastEventID`, also the `ETag`),
//! so a client can read the list and then follow the subscription events
//! from exactly that point. A client needs a token whose `mercure.subscribe`
//! selectors match the requested path.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use herald_protocol::update::EARLIEST;
use serde_json::{json, Value};

use super::{HttpError, MERCURE_PATH};
use crate::auth::{self, AuthError};
use crate::hub::Hub;
use crate::subscriptions::{self, ActiveSubscriptions, CONTEXT, SUBSCRIPTIONS_PATH};

pub(super) async fn all(
    State(hub): State<Hub>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let table = authorize(&hub, &uri, &headers)?;
    // The id first, then the list: a subscription that starts in between
    // is listed and its event comes after the id, never missed.
    let last = last_event_id(&hub).await?;
    let docs = table.documents(None, None);
    Ok(collection(SUBSCRIPTIONS_PATH.to_owned(), docs, &last))
}

pub(super) async fn by_topic(
    State(hub): State<Hub>,
    Path(topic): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let table = authorize(&hub, &uri, &headers)?;
    let last = last_event_id(&hub).await?;
    let docs = table.documents(Some(&topic), None);
    Ok(collection(
        subscriptions::topic_collection(&topic),
        docs,
        &last,
    ))
}

pub(super) async fn one(
    State(hub): State<Hub>,
    Path((topic, subscriber)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let table = authorize(&hub, &uri, &headers)?;
    let last = last_event_id(&hub).await?;
    let Some(mut doc) = table
        .documents(Some(&topic), Some(&subscriber))
        .into_iter()
        .next()
    else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "no such active subscription",
        ));
    };
    doc["@context"] = json!(CONTEXT);
    doc["lastEventID"] = json!(last);
    Ok(json_ld(doc, &last))
}

/// The table, once the request is allowed to read it.
fn authorize<'h>(
    hub: &'h Hub,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<&'h ActiveSubscriptions, HttpError> {
    let Some(table) = hub.subscriptions() else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "the subscriptions API is off (enable subscriptions)",
        ));
    };
    check_token(hub, uri.path(), headers).map_err(|e| {
        hub.metrics().auth_failed("subscriptions", &e);
        HttpError::from(e)
    })?;
    Ok(table)
}

/// The requested URL (its path, percent-encoded as sent) must match one of
/// the token's `mercure.subscribe` selectors.
fn check_token(hub: &Hub, path: &str, headers: &HeaderMap) -> Result<(), AuthError> {
    let (token, _) =
        auth::extract_token(headers, None, &hub.config().cookie_name)?.ok_or(AuthError::Missing)?;
    let verifier = hub.subscriber_verifier().ok_or(AuthError::NoKey)?;
    let claims = verifier.verify(&token)?;
    let allowed = auth::compile_selectors(claims.mercure.subscribe.as_deref().unwrap_or(&[]));
    if allowed.iter().any(|s| s.matches(path)) {
        Ok(())
    } else {
        Err(AuthError::TopicNotAllowed(path.to_owned()))
    }
}

fn collection(id: String, docs: Vec<Value>, last: &str) -> Response {
    let body = json!({
        "@context": CONTEXT,
        "id": id,
        "type": "Subscriptions",
        "lastEventID": last,
        "subscriptions": docs,
    });
    json_ld(body, last)
}

/// The id of the newest update in history, or `earliest` when there is none.
async fn last_event_id(hub: &Hub) -> Result<String, HttpError> {
    let unavailable = |e: crate::engine::EngineError| {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    };
    let bounds = hub.engine().bounds().await.map_err(unavailable)?;
    if bounds.first.is_none() || bounds.last == 0 {
        return Ok(EARLIEST.to_owned());
    }
    let newest = hub
        .engine()
        .read_after(bounds.last - 1, 1)
        .await
        .map_err(unavailable)?;
    Ok(newest
        .first()
        .map_or_else(|| EARLIEST.to_owned(), |s| s.update.id.clone()))
}

fn json_ld(body: Value, last: &str) -> Response {
    let mut res = body.to_string().into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ld+json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("must-revalidate"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{last}\"")) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{MERCURE_PATH}>; rel=\"mercure\"")) {
        h.insert(header::LINK, v);
    }
    res
}
