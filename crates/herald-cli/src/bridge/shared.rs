//! What every source of a bridge shares: where it publishes ([`Sink`]:
//! a hub over HTTP for `herald bridge`, the hub itself for a `[[bridge]]`
//! of `herald serve`), how its events become updates ([`Mapping`]), how
//! one event is delivered ([`Bridge::deliver`]: retried while the hub
//! cannot take it, dead-lettered when it is bad), and the backoff.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::publish::{cause, parse_hub_url};

/// The hub `herald bridge` publishes to over HTTP.
#[derive(clap::Args, Debug, Clone)]
pub struct HubArgs {
    /// Hub URL; a bare host (or path `/`) gets `/.well-known/mercure`.
    #[arg(long, value_name = "URL", env = "HERALD_HUB_URL", default_value = crate::publish::DEFAULT_HUB, value_parser = parse_hub_url, global = true)]
    hub: Url,
    /// JWT allowing the bridge to publish to its topics.
    #[arg(
        long,
        value_name = "JWT",
        env = "HERALD_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
}

/// A duration argument: `500ms`, `25s`, `5m`, or seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::settings::parse_duration(s).map_err(|e| format!("{e:#}"))
}

/// Stops a task when dropped: a source's helper task (a connection driver,
/// a forwarder) ends with the source.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a source's events become updates.
#[derive(clap::Args, Debug, Clone)]
pub struct MapArgs {
    /// The topic of each update: a template over `{channel}` (the channel,
    /// subject, topic or key the event came from) and the fields of a JSON
    /// payload, e.g. `https://example.com/orders/{order}`.
    #[arg(long, value_name = "TEMPLATE")]
    topic: String,
    /// `data`: the payload is the update's data. `json`: the payload is a
    /// JSON object `{topic, data, type, id, private}` (all optional; a
    /// `data` that is not a string is sent as its JSON text).
    #[arg(long, value_name = "MODE", default_value = "data", value_parser = ["data", "json"])]
    payload: String,
    /// The updates' event type, unless the payload gives one.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// The updates are private, unless the payload says otherwise.
    #[arg(long)]
    private: bool,
}

impl MapArgs {
    /// How these arguments map events.
    pub fn mapping(&self) -> Mapping {
        Mapping::new(
            &self.topic,
            self.payload == "json",
            self.event_type.clone(),
            self.private,
        )
    }
}

/// How source events become updates.
#[derive(Debug, Clone)]
pub struct Mapping {
    topic: String,
    json: bool,
    event_type: Option<String>,
    private: bool,
}

impl Mapping {
    pub fn new(topic: &str, json: bool, event_type: Option<String>, private: bool) -> Self {
        Self {
            topic: topic.to_owned(),
            json,
            event_type,
            private,
        }
    }

    /// The update (as the batch format's JSON object) for `payload` from
    /// `channel`; `id`, when given, is the event's source position.
    ///
    /// # Errors
    /// The payload maps to no update: the reason, for the dead-letter log.
    pub fn update(&self, channel: &str, payload: &str, id: Option<&str>) -> Result<Value, String> {
        let mut fields = serde_json::Map::new();
        let mut out = serde_json::Map::new();
        if self.json {
            let v: Value = serde_json::from_str(payload)
                .map_err(|e| format!("the payload is not JSON: {e}"))?;
            let Value::Object(obj) = v else {
                return Err("the payload is not a JSON object".into());
            };
            fields = obj;
        }
        let topic = match fields.get("topic") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err("the payload's topic is not a string".into()),
            None => expand(&self.topic, channel, &fields)?,
        };
        out.insert("topics".into(), Value::from(vec![topic]));
        let data = if self.json {
            match fields.get("data") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            }
        } else {
            payload.to_owned()
        };
        out.insert("data".into(), Value::from(data));
        let event_type = match fields.get("type") {
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err("the payload's type is not a string".into()),
            None => self.event_type.clone(),
        };
        if let Some(t) = event_type {
            out.insert("type".into(), Value::from(t));
        }
        let private = match fields.get("private") {
            Some(Value::Bool(p)) => *p,
            Some(_) => return Err("the payload's private is not a boolean".into()),
            None => self.private,
        };
        out.insert("private".into(), Value::from(private));
        // The source position wins: it is what drops a redelivery.
        let id = match (id, fields.get("id")) {
            (Some(id), _) => Some(id.to_owned()),
            (None, Some(Value::String(id))) => Some(id.clone()),
            (None, Some(id @ Value::Number(_))) => Some(id.to_string()),
            (None, Some(_)) => return Err("the payload's id is not a string or number".into()),
            (None, None) => None,
        };
        if let Some(id) = id {
            out.insert("id".into(), Value::from(id));
        }
        Ok(Value::Object(out))
    }
}

/// Expands `{channel}` and `{field}` (a JSON payload's top-level string,
/// number or boolean) in a topic template.
fn expand(
    template: &str,
    channel: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("unclosed {{ in the topic template {template:?}"));
        };
        let name = &rest[open + 1..open + close];
        let value = match (name, fields.get(name)) {
            ("channel", None) => channel.to_owned(),
            (_, Some(Value::String(s))) => s.clone(),
            (_, Some(v @ (Value::Number(_) | Value::Bool(_)))) => v.to_string(),
            (_, Some(_)) => return Err(format!("the payload's {name} is not a string or number")),
            (_, None) => return Err(format!("the payload has no {name} for the topic template")),
        };
        out.push_str(&value);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where a bridge's updates go.
pub enum Sink {
    /// A hub over HTTP, with a token: `herald bridge`.
    Http {
        url: Url,
        token: String,
        client: reqwest::Client,
    },
    /// The hub of this process, with the rights of its `[[bridge]]`
    /// section: `herald serve`.
    Local {
        hub: herald::Hub,
        publisher: herald::http::LocalPublisher,
    },
}

/// How a publish went.
#[derive(Debug)]
pub enum Published {
    /// Appended.
    Appended,
    /// The hub holds an update with this id already: an event delivered
    /// again, published before.
    Duplicate,
    /// The hub refused the update itself (400, 403, 413): a bad payload,
    /// with the hub's reason.
    Refused(String),
    /// The hub refused the bridge's token (401): nothing will pass.
    Unauthorized(String),
}

impl Sink {
    /// The hub of `herald bridge`.
    pub fn http(args: &HubArgs) -> anyhow::Result<Self> {
        let Some(token) = args.token.clone() else {
            bail!("--token (or HERALD_TOKEN) is required: a JWT allowing the bridge to publish");
        };
        Ok(Self::Http {
            url: args.hub.clone(),
            token,
            client: crate::publish::client(Some(Duration::from_secs(30)))?,
        })
    }

    /// Publishes one update (the batch format's object).
    ///
    /// # Errors
    /// The hub cannot be reached or cannot take it now (retry later).
    pub async fn publish(&self, update: &Value) -> anyhow::Result<Published> {
        let (status, body) = match self {
            Self::Http { url, token, client } => {
                let res = client
                    .post(url.clone())
                    .bearer_auth(token)
                    .json(&vec![update])
                    .send()
                    .await
                    .map_err(|e| anyhow!("hub {url} unreachable: {}", cause(&e)))?;
                let status = res.status();
                let body = res.text().await.unwrap_or_default();
                if status == StatusCode::OK {
                    let ids: Vec<String> = serde_json::from_str(&body)
                        .map_err(|e| anyhow!("unexpected answer from the hub: {e}"))?;
                    tracing::debug!(id = ids.first(), "published");
                    return Ok(Published::Appended);
                }
                (status, body)
            }
            Self::Local { hub, publisher } => match publisher.publish(hub, update.clone()).await {
                Ok(id) => {
                    tracing::debug!(id, "published");
                    return Ok(Published::Appended);
                }
                Err(e) => (
                    StatusCode::from_u16(e.status.as_u16())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    e.reason,
                ),
            },
        };
        match status {
            StatusCode::CONFLICT => Ok(Published::Duplicate),
            StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN | StatusCode::PAYLOAD_TOO_LARGE => {
                Ok(Published::Refused(format!("{status}: {}", body.trim())))
            }
            StatusCode::UNAUTHORIZED => Ok(Published::Unauthorized(body.trim().to_owned())),
            _ => bail!("the hub answered {status}: {}", body.trim()),
        }
    }
}

/// An error that ends a bridge rather than being retried: its setup can
/// never work, or the hub refuses its token.
#[derive(Debug)]
pub struct Fatal(pub anyhow::Error);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Fatal {}

/// How an event was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The hub appended it, or held it already (a redelivery).
    Published,
    /// It went to the dead-letter log.
    DeadLetter,
}

/// One running bridge: its name (in logs and metrics), where it
/// publishes, and how it maps events.
pub struct Bridge {
    pub name: String,
    sink: Sink,
    mapping: Mapping,
    metrics: Option<Arc<herald::telemetry::Metrics>>,
}

impl Bridge {
    pub fn new(name: String, sink: Sink, mapping: Mapping) -> Self {
        let metrics = match &sink {
            Sink::Local { hub, .. } => Some(hub.metrics().clone()),
            Sink::Http { .. } => None,
        };
        Self {
            name,
            sink,
            mapping,
            metrics,
        }
    }

    /// Counts an outcome in `herald_bridge_events_total` (a bridge run by
    /// `herald serve`; `herald bridge` has no `/metrics` and logs only).
    pub fn count(&self, outcome: &'static str) {
        if let Some(m) = &self.metrics {
            m.bridge_event(&self.name, outcome);
        }
    }

    /// Records a bad event in the dead-letter log, and counts it.
    pub fn dead_letter(&self, channel: &str, position: Option<&str>, payload: &str, reason: &str) {
        self.count("dead_letter");
        dead_letter(&self.name, channel, position, payload, reason);
    }

    /// Waits before the next attempt at a source that failed, and counts
    /// the failure.
    pub async fn source_failed(&self, backoff: &mut Backoff, e: &anyhow::Error) {
        self.count("source_failure");
        backoff
            .wait(&format!("bridge {}: source", self.name), e)
            .await;
    }

    /// Maps and publishes one event from `channel`. `position` is the
    /// event's place in its source (an offset, a stream entry, a row key):
    /// with the bridge's name before it, it becomes the update's id
    /// (`NAME:POSITION`), so a redelivered event is refused by
    /// the hub as a duplicate rather than shown twice. An event without
    /// one gets a fresh id before its first attempt, so a retry after an
    /// answer that was lost is a duplicate too. While the hub cannot take
    /// it, the event waits, retried with backoff.
    ///
    /// # Errors
    /// [`Fatal`] when the hub refuses the bridge's token.
    pub async fn deliver(
        &self,
        channel: &str,
        payload: &str,
        position: Option<&str>,
    ) -> Result<Settled, Fatal> {
        // The bridge's name first: two bridges whose sources number their
        // events alike (two outboxes of one name in two databases) never
        // share an id.
        let id = position.map(|p| format!("{}:{p}", self.name));
        let mut update = match self.mapping.update(channel, payload, id.as_deref()) {
            Ok(u) => u,
            Err(reason) => {
                self.dead_letter(channel, position, payload, &reason);
                return Ok(Settled::DeadLetter);
            }
        };
        if update.get("id").is_none() {
            update["id"] = Value::from(format!("urn:uuid:{}", uuid::Uuid::new_v4()));
        }
        let mut backoff = Backoff::new();
        loop {
            match self.sink.publish(&update).await {
                Ok(Published::Appended) => {
                    self.count("published");
                    return Ok(Settled::Published);
                }
                Ok(Published::Duplicate) => {
                    self.count("duplicate");
                    tracing::info!(
                        bridge = self.name,
                        position,
                        "the hub already holds this event's update: a redelivery, dropped"
                    );
                    return Ok(Settled::Published);
                }
                Ok(Published::Refused(reason)) => {
                    self.dead_letter(channel, position, payload, &reason);
                    return Ok(Settled::DeadLetter);
                }
                Ok(Published::Unauthorized(reason)) => {
                    return Err(Fatal(anyhow!(
                        "the hub refused the bridge's token: {reason}"
                    )))
                }
                Err(e) => {
                    self.count("hub_failure");
                    backoff
                        .wait(&format!("bridge {}: hub", self.name), &e)
                        .await;
                }
            }
        }
    }
}

/// Records a bad payload in the dead-letter log.
fn dead_letter(bridge: &str, source: &str, position: Option<&str>, payload: &str, reason: &str) {
    tracing::error!(
        target: "herald::dead_letter",
        bridge,
        source,
        position,
        payload,
        "bad payload: {reason}"
    );
}

/// Waits before the next attempt: 100 ms doubling to 10 s.
pub struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    pub async fn wait(&mut self, what: &str, e: &anyhow::Error) {
        tracing::warn!("{what}: {e:#}; again in {:?}", self.0);
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
    }

    pub fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_map_to_updates() {
        let data = Mapping::new("https://example.com/{channel}", false, None, false);
        assert_eq!(
            data.update("orders", "hello", None).unwrap(),
            json!({"topics": ["https://example.com/orders"], "data": "hello", "private": false})
        );
        let j = Mapping::new(
            "https://example.com/{channel}/{order}",
            true,
            Some("t".into()),
            true,
        );
        assert_eq!(
            j.update(
                "orders",
                r#"{"order": 7, "data": {"total": 3}}"#,
                Some("pg:1")
            )
            .unwrap(),
            json!({"topics": ["https://example.com/orders/7"], "data": "{\"total\":3}",
                   "type": "t", "private": true, "id": "pg:1"})
        );
        assert_eq!(
            j.update(
                "c",
                r#"{"topic": "x", "data": "d", "type": "u", "private": false, "id": "i"}"#,
                None
            )
            .unwrap(),
            json!({"topics": ["x"], "data": "d", "type": "u", "private": false, "id": "i"})
        );
        assert!(j
            .update("c", "not json", None)
            .unwrap_err()
            .contains("not JSON"));
        assert!(j.update("c", "[1]", None).unwrap_err().contains("object"));
        assert!(j
            .update("c", r#"{"data": "no order field"}"#, None)
            .unwrap_err()
            .contains("no order"));
        assert_eq!(
            j.update("c", r#"{"order": 1, "id": 12}"#, None).unwrap()["id"],
            "12"
        );
        assert!(Mapping::new("x/{channel", false, None, false)
            .update("c", "p", None)
            .unwrap_err()
            .contains("unclosed"));
    }
}
