//! The rules every publish follows, whatever carries it (a form, a batch,
//! a stream of lines, a WebSocket message): Mercure 1.0's publishing
//! rules, the publisher's rights per topic, and the batch format of one
//! update.

use axum::http::StatusCode;
use herald_protocol::Update;

use super::error::HttpError;
use crate::auth::{AuthError, Grants};
use crate::engine::EngineError;
use crate::hub::{Hub, PublishError};

/// Every topic of the update must be granted to the publisher.
pub(crate) fn check_topics(grants: &Grants, update: &Update) -> Result<(), AuthError> {
    for topic in &update.topics {
        if !grants.can_publish(topic) {
            return Err(AuthError::TopicNotAllowed(topic.clone()));
        }
    }
    Ok(())
}

/// True when a publisher may not use `topic`; see [`check_rules`].
fn in_hub_namespace(topic: &str, base: &url::Url, draft08: bool) -> bool {
    use herald_protocol::matcher::{is_reserved_topic, HUB_PATH};
    if !is_reserved_topic(topic, base) {
        return false;
    }
    if draft08 {
        return true;
    }
    let below = base.join(topic).is_ok_and(|u| u.path() != HUB_PATH);
    let names_the_hub = topic.starts_with('/') || url::Url::parse(topic).is_ok();
    below || names_the_hub
}

/// Longest topic a publisher may use, in bytes.
pub(crate) const MAX_TOPIC_LEN: usize = 4096;

/// Longest update id a publisher may give, in bytes (a resume cursor must
/// fit in a `Last-Event-ID` header).
pub(crate) const MAX_ID_LEN: usize = 1024;

/// The publishing rules of Mercure 1.0, applied to publishers of both
/// revisions because they protect subscribers of both:
///
/// - `*` is the wildcard matcher, so a topic named `*` could not be
///   selected alone (400);
/// - topics in the hub's own `/.well-known/mercure` namespace, once
///   resolved against the hub's URL, are the hub's (subscription events),
///   so a publisher cannot forge them (403). For a draft-08 publisher that
///   is the whole namespace, as Mercure 1.0 says; a draft-07 publisher
///   keeps the relative topics that merely resolve to the hub's URL itself
///   (`#general`, `?room=1`, `mercure`), which draft-07 allowed and which
///   no subscription event uses;
/// - the event type `mercure` marks subscription events (400);
/// - an id starting with `#` is reserved for ids the hub generates, and ids
///   and topics have length limits (400).
pub(crate) fn check_rules(hub: &Hub, update: &Update, draft08: bool) -> Result<(), HttpError> {
    // The event-stream rules first: an empty topic is a bad topic, not the
    // hub's own URL.
    update
        .validate(hub.config().max_topics_per_update)
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    for topic in &update.topics {
        if topic == herald_protocol::matcher::WILDCARD {
            return Err(HttpError::bad_request(
                "topic \"*\" is reserved for the wildcard matcher",
            ));
        }
        if topic.len() > MAX_TOPIC_LEN {
            return Err(HttpError::bad_request(format!(
                "topic longer than {MAX_TOPIC_LEN} bytes"
            )));
        }
        if in_hub_namespace(topic, &hub.config().public_url, draft08) {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                format!("topic {topic:?} is in the hub's reserved /.well-known/mercure namespace"),
            ));
        }
    }
    if update.event_type.as_deref() == Some(crate::hub::active::EVENT_TYPE) {
        return Err(HttpError::bad_request(
            "type \"mercure\" is reserved for subscription events",
        ));
    }
    if update.id.starts_with('#') {
        return Err(HttpError::bad_request("id must not start with '#'"));
    }
    if update.id.len() > MAX_ID_LEN {
        return Err(HttpError::bad_request(format!(
            "id longer than {MAX_ID_LEN} bytes"
        )));
    }
    Ok(())
}

/// The id rules of [`check_rules`] that do not depend on the hub.
#[cfg(feature = "fuzzing")]
pub(crate) fn id_is_valid(id: &str) -> bool {
    !id.starts_with('#') && id.len() <= MAX_ID_LEN
}

/// One update of a batch. Unknown fields are refused, so a misspelt
/// `private` or `topics` is an error rather than a public update.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchUpdate {
    topics: Vec<String>,
    #[serde(default)]
    data: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    retry: Option<u64>,
    #[serde(default)]
    private: bool,
}

impl BatchUpdate {
    /// The update, once it names a topic.
    pub(crate) fn into_update(self) -> Result<Update, HttpError> {
        if self.topics.is_empty() {
            return Err(HttpError::bad_request("missing topic"));
        }
        Ok(Update {
            id: self.id.unwrap_or_default(),
            topics: self.topics,
            data: self.data,
            event_type: self.event_type.filter(|t| !t.is_empty()),
            retry: self.retry,
            private: self.private,
        })
    }
}

/// The answer to a publish the hub did not take: `400` for an invalid
/// update, `409` for an id it holds, `503` when the engine cannot append.
pub(crate) fn publish_error(e: PublishError) -> HttpError {
    match e {
        PublishError::Invalid(e) | PublishError::InvalidAt(_, e) => {
            HttpError::bad_request(e.to_string())
        }
        PublishError::Engine(e @ EngineError::DuplicateId(_)) => {
            HttpError::new(StatusCode::CONFLICT, e.to_string())
        }
        PublishError::Engine(e) => {
            tracing::error!("publish failed: {e}");
            HttpError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// A publisher inside the hub's process, such as a bridge run by
/// `herald serve`: it holds rights as a token would (its `mercure.publish`
/// selectors) and publishes under the same rules, rights checks and
/// answers as an HTTP publish, without a request.
#[derive(Debug, Clone)]
pub struct LocalPublisher {
    grants: Grants,
}

impl LocalPublisher {
    /// A publisher allowed the topics `publish` selects (`*` for all), as a
    /// token's `mercure.publish` claim would.
    pub fn new(publish: Vec<String>) -> Self {
        let claims = crate::auth::Claims {
            mercure: crate::auth::MercureClaim {
                publish: Some(publish),
                ..Default::default()
            },
            ..Default::default()
        };
        Self {
            grants: Grants::Claim(std::sync::Arc::new(crate::auth::ClaimGrants::new(claims))),
        }
    }

    /// Publishes one update written in the batch format (a JSON object
    /// `{topics, data, id, type, retry, private}`) and returns its id.
    ///
    /// # Errors
    /// What an HTTP publish of it would answer: `400` for a malformed or
    /// invalid update, `403` for a topic not granted or reserved, `409` for
    /// an id the hub holds, `413` past `max_body_bytes`, `503` when the
    /// engine cannot append.
    pub async fn publish(&self, hub: &Hub, update: serde_json::Value) -> Result<String, HttpError> {
        // What an HTTP publish of it would carry, at most `max_body_bytes`.
        let max = hub.config().max_body_bytes;
        if update.to_string().len() > max {
            return Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("update larger than {max} bytes (max_body_bytes)"),
            ));
        }
        let update = serde_json::from_value::<BatchUpdate>(update)
            .map_err(|e| HttpError::bad_request(format!("malformed update: {e}")))?
            .into_update()?;
        check_rules(hub, &update, false)?;
        if let Err(e) = check_topics(&self.grants, &update) {
            hub.metrics().auth_failed("publish", &e);
            return Err(HttpError::new(StatusCode::FORBIDDEN, e.to_string()));
        }
        let started = std::time::Instant::now();
        let result = hub.publish(vec![update]).await;
        hub.metrics().publish_request(started.elapsed());
        match result {
            Ok(stored) => Ok(stored
                .first()
                .map(|s| s.update.id.clone())
                .unwrap_or_default()),
            Err(e) => Err(publish_error(e)),
        }
    }
}
