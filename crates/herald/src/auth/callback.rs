//! The authorization callback: instead of a JWT, herald asks the
//! application over HTTP whether a request may subscribe to, or publish
//! on, its topics.
//!
//! A request that carries no token (no `Authorization` header, cookie or
//! query token) is asked about, when `auth_callback_url` is set:
//!
//! ```text
//! POST <auth_callback_url>
//! Content-Type: application/json
//! <each header named in auth_callback_forward, e.g. Cookie>
//!
//! {"action":"subscribe","topics":["https://example.com/a"],"address":"203.0.113.7"}
//! ```
//!
//! The application answers what it would have put in a token:
//!
//! - `200` with the claims of a draft-07 token, such as
//!   `{"mercure":{"subscribe":["https://example.com/{id}"],"payload":{"user":7}}}`
//!   (and optionally `exp`, seconds since the epoch, which closes the
//!   stream then): the request goes on with these rights;
//! - `401` or `403`: refused (`403`);
//! - anything else, or no answer within `auth_callback_timeout`: a failure,
//!   handled as `auth_callback_failure` says: `deny` answers `503` with
//!   `Retry-After`, `anonymous` goes on as a request without credentials
//!   (public updates only; publishing refused).
//!
//! Answers (refusals included) are cached for `auth_callback_cache`, by
//! action, topics, address and forwarded header values; failures are not.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName};
use parking_lot::Mutex;

use super::grants::{ClaimGrants, Grants};
use super::jwt::Claims;

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers kept at most; the cache is emptied when full.
const CACHE_ENTRIES: usize = 10_000;

/// What to do when the application does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallbackFailure {
    /// `503` with `Retry-After`.
    #[default]
    Deny,
    /// Go on as a request without credentials.
    Anonymous,
}

/// The callback's settings.
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    pub url: url::Url,
    /// Request headers passed on to the application (names).
    pub forward: Vec<String>,
    pub cache: Duration,
    pub timeout: Duration,
    pub failure: CallbackFailure,
}

/// The application's decision.
#[derive(Debug, Clone)]
pub enum Decision {
    Granted(Grants),
    Refused,
    /// No usable answer: why.
    Failed(String),
}

#[derive(Debug)]
pub(crate) struct Callback {
    config: CallbackConfig,
    forward: Vec<HeaderName>,
    http: reqwest::Client,
    cache: Mutex<HashMap<u64, (Instant, Option<Grants>)>>,
}

impl Callback {
    pub fn new(config: CallbackConfig) -> Self {
        let forward = config
            .forward
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_default();
        Self {
            config,
            forward,
            http,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn failure(&self) -> CallbackFailure {
        self.config.failure
    }

    /// Asks (or finds in the cache) whether the request may do `action` on
    /// `topics`.
    pub async fn ask(
        &self,
        headers: &HeaderMap,
        action: &'static str,
        topics: &[String],
        address: Option<IpAddr>,
    ) -> Decision {
        let mut key = std::collections::hash_map::DefaultHasher::new();
        (action, topics, address).hash(&mut key);
        for name in &self.forward {
            for v in headers.get_all(name) {
                (name.as_str(), v.as_bytes()).hash(&mut key);
            }
        }
        let key = key.finish();
        if let Some((at, answer)) = self.cache.lock().get(&key).cloned() {
            let fresh = answer.as_ref().is_none_or(|g| g.valid_at(now_secs()));
            if at.elapsed() < self.config.cache && fresh {
                return answer.map_or(Decision::Refused, Decision::Granted);
            }
        }
        let decision = self.call(headers, action, topics, address).await;
        let keep = match &decision {
            Decision::Granted(g) => Some(Some(g.clone())),
            Decision::Refused => Some(None),
            Decision::Failed(_) => None,
        };
        if let Some(answer) = keep.filter(|_| !self.config.cache.is_zero()) {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), answer));
        }
        decision
    }

    async fn call(
        &self,
        headers: &HeaderMap,
        action: &'static str,
        topics: &[String],
        address: Option<IpAddr>,
    ) -> Decision {
        let body = serde_json::json!({
            "action": action,
            "topics": topics,
            "address": address.map(|a| a.to_string()),
        });
        let mut req = self.http.post(self.config.url.clone()).json(&body);
        for name in &self.forward {
            for v in headers.get_all(name) {
                req = req.header(name.clone(), v.clone());
            }
        }
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) => return Decision::Failed(format!("the authorization callback failed: {e}")),
        };
        match res.status().as_u16() {
            200 => match res.json::<Claims>().await {
                Ok(claims) => {
                    let grants = Grants::Claim(Arc::new(ClaimGrants::new(claims)));
                    if grants.valid_at(now_secs()) {
                        Decision::Granted(grants)
                    } else {
                        Decision::Failed(
                            "the authorization callback answered claims outside their validity (exp or nbf)"
                                .into(),
                        )
                    }
                }
                Err(e) => Decision::Failed(format!(
                    "the authorization callback answered 200 without claims: {e}"
                )),
            },
            401 | 403 => Decision::Refused,
            other => Decision::Failed(format!("the authorization callback answered {other}")),
        }
    }
}
