//! The subscriptions API, in both protocol revisions.
//!
//! - Draft-07: `GET /.well-known/mercure/subscriptions[/{topic}[/{subscriber}]]`
//!   answers JSON-LD documents with `lastEventID` in the body.
//! - Draft-08 (Mercure 1.0):
//!   `GET /.well-known/mercure/subscriptions[/{match_type}/{match}[/{subscriber}]]`
//!   answers plain JSON, with the last event id in the `Link` header
//!   (`rel="mercure"; last-event-id="…"`), in the `ETag`, and in the body
//!   as `last_event_id`.
//!
//! Both give the id of the last update the hub dispatched, read before the
//! list, so a client can read the list and then follow the subscription
//! events from exactly that point. A path is draft-08 when its first
//! segment is a match type (`exact`, `urlpattern`); the bare collection
//! answers in the revision of the token. The client's token must grant
//! `subscribe` on the requested path (in the canonical encoding of the
//! event topics), like a topic: a relative URL pattern such as
//! `/.well-known/mercure/subscriptions/:type/:match/:subscriber` covers the
//! events and the API alike.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::matcher::{self, MatchType};
use herald_protocol::update::EARLIEST;
use serde_json::{json, Value};

use super::error::HttpError;
use super::policy::MERCURE_PATH;
use crate::auth::{AuthError, Grants, Role};
use crate::hub::active::{
    self as subscriptions, ActiveSubscriptions, Filter, CONTEXT, SUBSCRIPTIONS_PATH,
};
use crate::hub::Hub;

pub(crate) async fn all(State(hub): State<Hub>, headers: HeaderMap) -> Result<Response, HttpError> {
    let (table, grants) = authorize(&hub, SUBSCRIPTIONS_PATH, &headers)?;
    // The id first, then the list: a subscription that starts in between
    // is listed and its event comes after the id, never missed.
    let last = last_event_id(&hub).await?;
    if grants.is_access_token() {
        let docs = list(table, Filter::Matcher(None), None).await?;
        return Ok(collection08(SUBSCRIPTIONS_PATH, docs, &last, &headers));
    }
    let docs = list(table, Filter::Topic(None), None).await?;
    Ok(collection07(SUBSCRIPTIONS_PATH.to_owned(), docs, &last))
}

pub(crate) async fn by_topic(
    State(hub): State<Hub>,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let (table, _) = authorize(&hub, &subscriptions::topic_collection(&topic), &headers)?;
    let last = last_event_id(&hub).await?;
    let docs = list(table, Filter::Topic(Some(&topic)), None).await?;
    Ok(collection07(
        subscriptions::topic_collection(&topic),
        docs,
        &last,
    ))
}

/// Two segments: a draft-08 matcher collection when the first names a
/// match type, else one draft-07 subscription.
pub(crate) async fn two_segments(
    State(hub): State<Hub>,
    Path((first, second)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    if let Some(match_type) = path_match_type(&first) {
        let path = format!(
            "{SUBSCRIPTIONS_PATH}/{}",
            matcher::subscription_matcher_path(match_type, &second)
        );
        let (table, _) = authorize(&hub, &path, &headers)?;
        let last = last_event_id(&hub).await?;
        let docs = list(table, Filter::Matcher(Some((match_type, &second))), None).await?;
        return Ok(collection08(&path, docs, &last, &headers));
    }
    let (topic, subscriber) = (first, second);
    let path = subscriptions::subscription_topic(&topic, &subscriber);
    let (table, _) = authorize(&hub, &path, &headers)?;
    let last = last_event_id(&hub).await?;
    let Some(mut doc) = list(table, Filter::Topic(Some(&topic)), Some(&subscriber))
        .await?
        .into_iter()
        .next()
    else {
        return Err(not_found());
    };
    doc["@context"] = json!(CONTEXT);
    doc["lastEventID"] = json!(last);
    Ok(json_ld(doc, &last))
}

/// One draft-08 subscription.
pub(crate) async fn one08(
    State(hub): State<Hub>,
    Path((kind, value, subscriber)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let Some(match_type) = path_match_type(&kind) else {
        return Err(HttpError::bad_request(format!(
            "unknown match type {kind:?} (exact or urlpattern)"
        )));
    };
    let path = matcher::subscription_topic(match_type, &value, &subscriber);
    let (table, _) = authorize(&hub, &path, &headers)?;
    let last = last_event_id(&hub).await?;
    let Some(mut doc) = list(
        table,
        Filter::Matcher(Some((match_type, &value))),
        Some(&subscriber),
    )
    .await?
    .into_iter()
    .next() else {
        return Err(not_found());
    };
    doc["last_event_id"] = json!(last);
    Ok(json08(doc, &last, &headers))
}

/// The documents of the active subscriptions (of every node, on a shared
/// engine) that pass `filter`.
async fn list(
    table: &ActiveSubscriptions,
    filter: Filter<'_>,
    subscriber: Option<&str>,
) -> Result<Vec<Value>, HttpError> {
    let all = table
        .all()
        .await
        .map_err(|e| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(subscriptions::documents(&all, filter, subscriber))
}

fn not_found() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "no such active subscription")
}

/// The match type a draft-08 API path names, in its canonical spelling.
fn path_match_type(segment: &str) -> Option<MatchType> {
    [MatchType::Exact, MatchType::UrlPattern]
        .into_iter()
        .find(|t| t.name() == segment)
}

/// The table and the caller's grants, once the request may read `path`:
/// the canonical path of what it asks for, rebuilt from the decoded
/// segments exactly as the matching subscription event topics are, so a
/// grant covers the API and the events alike however the client encoded
/// its request.
fn authorize<'h>(
    hub: &'h Hub,
    path: &str,
    headers: &HeaderMap,
) -> Result<(&'h ActiveSubscriptions, Grants), HttpError> {
    let Some(table) = hub.subscriptions() else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "the subscriptions API is off (enable subscriptions)",
        ));
    };
    let grants = check_token(hub, path, headers).map_err(|e| {
        hub.metrics().auth_failed("subscriptions", &e);
        HttpError::auth(hub, &e)
    })?;
    Ok((table, grants))
}

/// The requested path, percent-encoded as sent, must be a topic the token
/// may subscribe to.
fn check_token(hub: &Hub, path: &str, headers: &HeaderMap) -> Result<Grants, AuthError> {
    let (grants, _) = hub
        .authenticate(headers, None, Role::Subscriber)?
        .ok_or(AuthError::Missing)?;
    if grants.can_subscribe(path) {
        Ok(grants)
    } else {
        Err(AuthError::TopicNotAllowed(path.to_owned()))
    }
}

fn collection07(id: String, docs: Vec<Value>, last: &str) -> Response {
    let body = json!({
        "@context": CONTEXT,
        "id": id,
        "type": "Subscriptions",
        "lastEventID": last,
        "subscriptions": docs,
    });
    json_ld(body, last)
}

fn collection08(id: &str, docs: Vec<Value>, last: &str, headers: &HeaderMap) -> Response {
    let body = json!({
        "id": id,
        "type": "subscriptions",
        "last_event_id": last,
        "subscriptions": docs,
    });
    json08(body, last, headers)
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

/// An entity tag holding the last event id: quotes, `%` and bytes outside
/// the visible ASCII range percent-encoded, as an ETag allows none of them.
fn etag(last: &str) -> String {
    let mut out = String::with_capacity(last.len() + 2);
    out.push('"');
    for b in last.bytes() {
        if b <= 0x20 || b >= 0x7f || b == b'"' || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out.push('"');
    out
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
    if let Ok(v) = HeaderValue::from_str(&etag(last)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{MERCURE_PATH}>; rel=\"mercure\"")) {
        h.insert(header::LINK, v);
    }
    res
}

/// A draft-08 answer: plain JSON, the last event id in the `Link` header,
/// `304` when the client's `If-None-Match` names the current ETag.
fn json08(body: Value, last: &str, request: &HeaderMap) -> Response {
    let tag = etag(last);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut res = body.to_string().into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    };
    let h = res.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, must-revalidate"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("Authorization, Cookie"),
    );
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    let quoted = last.replace('\\', "\\\\").replace('"', "\\\"");
    let link = format!(
        "<{MERCURE_PATH}>; rel=\"mercure\"; last-event-id=\"{quoted}\"; type=\"{}\"; content-type=\"application/json\"",
        subscriptions::EVENT_TYPE
    );
    if let Ok(v) = HeaderValue::from_str(&link) {
        h.insert(header::LINK, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_hold_any_id() {
        assert_eq!(etag("urn:uuid:1"), "\"urn:uuid:1\"");
        assert_eq!(etag("a\"b %c"), "\"a%22b%20%25c\"");
        assert!(HeaderValue::from_str(&etag("é\u{1}")).is_ok());
    }

    #[test]
    fn only_canonical_match_types_name_draft08_paths() {
        assert_eq!(path_match_type("exact"), Some(MatchType::Exact));
        assert_eq!(path_match_type("urlpattern"), Some(MatchType::UrlPattern));
        assert_eq!(path_match_type("URLPattern"), None);
        assert_eq!(path_match_type("https://example.com/a"), None);
        // The API paths are the event topics.
        assert!(matcher::subscription_topic(MatchType::Exact, "a", "b")
            .starts_with(&format!("{SUBSCRIPTIONS_PATH}/exact/")));
    }
}
