//! What every source of `herald bridge` shares: the hub it publishes to
//! ([`Target`], [`Hub`]), how events become updates ([`Mapping`]), the
//! dead-letter log and the backoff.

use std::time::Duration;

use anyhow::{anyhow, bail};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::publish::{cause, parse_hub_url};

/// Where a bridge publishes, and how its events become updates.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Hub URL; a bare host (or path `/`) gets `/.well-known/mercure`.
    #[arg(long, value_name = "URL", env = "HERALD_HUB_URL", default_value = crate::publish::DEFAULT_HUB, value_parser = parse_hub_url)]
    hub: Url,
    /// JWT allowing the bridge to publish to its topics.
    #[arg(long, value_name = "JWT", env = "HERALD_TOKEN", hide_env_values = true)]
    token: String,
    /// The topic of each update: a template over `{channel}` and the
    /// fields of a JSON payload, e.g. `https://example.com/orders/{order}`.
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

impl Target {
    /// How this target maps events.
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

/// Publishes updates to the hub over HTTP.
pub struct Hub {
    url: Url,
    token: String,
    client: reqwest::Client,
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

impl Hub {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        Ok(Self {
            url: target.hub.clone(),
            token: target.token.clone(),
            client: crate::publish::client(Some(Duration::from_secs(30)))?,
        })
    }

    /// Publishes one update (the batch format's object).
    ///
    /// # Errors
    /// The hub cannot be reached or cannot take it now (retry later).
    pub async fn publish(&self, update: &Value) -> anyhow::Result<Published> {
        let res = self
            .client
            .post(self.url.clone())
            .bearer_auth(&self.token)
            .json(&vec![update])
            .send()
            .await
            .map_err(|e| anyhow!("hub {} unreachable: {}", self.url, cause(&e)))?;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        match status {
            StatusCode::OK => {
                let ids: Vec<String> = serde_json::from_str(&body)
                    .map_err(|e| anyhow!("unexpected answer from the hub: {e}"))?;
                tracing::debug!(id = ids.first(), "published");
                Ok(Published::Appended)
            }
            StatusCode::CONFLICT => Ok(Published::Duplicate),
            StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN | StatusCode::PAYLOAD_TOO_LARGE => {
                Ok(Published::Refused(format!("{status}: {}", body.trim())))
            }
            StatusCode::UNAUTHORIZED => Ok(Published::Unauthorized(body.trim().to_owned())),
            _ => bail!("the hub answered {status}: {}", body.trim()),
        }
    }
}

/// Records a bad payload in the dead-letter log.
pub fn dead_letter(source: &str, position: Option<&str>, payload: &str, reason: &str) {
    tracing::error!(
        target: "herald::dead_letter",
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
