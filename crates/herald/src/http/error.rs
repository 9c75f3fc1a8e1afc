//! Error answers: a status and one line saying why, the same on every path
//! (the axum routes and the HTTP/1.1 fast path write the same bytes).

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::hub::handle::Hub;

/// A short text error: the status and one line saying why.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub reason: String,
    /// The `WWW-Authenticate` value of an authorization failure.
    pub challenge: Option<String>,
    /// Seconds for `Retry-After` (a `503` or `429` without it says 1).
    pub retry_after: Option<u64>,
}

impl HttpError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            challenge: None,
            retry_after: None,
        }
    }

    /// The answer to an admission refusal: `503` when the hub is full,
    /// `429` when one client or token is over its share.
    pub fn refused(r: &crate::hub::admission::Refused) -> Self {
        use crate::hub::admission::Refused;
        match r {
            Refused::Full => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the hub is at its limit of event streams; retry shortly",
            ),
            Refused::PerIp(n) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this address has {n} event streams open, the most it may (max_streams_per_ip)"
                ),
            ),
            Refused::PerToken(n) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token has {n} event streams open, the most it may (max_streams_per_token)"
                ),
            ),
            Refused::TokenSubscriptions(n) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token's streams would hold more than {n} selectors (max_subscriptions_per_token)"
                ),
            ),
            Refused::SelectorsOverTokenLimit(n) => Self::bad_request(format!(
                "more selectors in one request than a token may hold ({n}, max_subscriptions_per_token)"
            )),
            Refused::Paced(wait) => Self {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many event streams are starting at once; retry shortly",
                )
            },
            Refused::Rate(who, wait) => Self {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("publishing too fast ({who}); retry shortly"),
                )
            },
            // Retrying can never pass: no Retry-After.
            Refused::TooLarge(who, n) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more updates in one request than {who} allows at once ({n})"),
            ),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }

    /// An authorization failure, answered as RFC 6750 says: the status of
    /// the error and a `WWW-Authenticate: Bearer` challenge with its error
    /// code and the URL of the hub's protected resource metadata.
    pub fn auth(hub: &Hub, e: &AuthError) -> Self {
        tracing::debug!(reason = e.reason(), "authorization failed: {e}");
        let metadata = hub.config().resource_metadata_url();
        let challenge = match e.bearer_error() {
            Some(code) => format!("Bearer error=\"{code}\", resource_metadata=\"{metadata}\""),
            None => format!("Bearer resource_metadata=\"{metadata}\""),
        };
        Self {
            status: e.status(),
            reason: e.public_message(),
            challenge: Some(challenge),
            retry_after: None,
        }
    }

    /// The body: the reason and a newline.
    pub fn body(&self) -> String {
        format!("{}\n", self.reason)
    }

    /// The response headers: a plain-text body, a `WWW-Authenticate`
    /// challenge on authorization failures (a bare `Bearer` on a `401`
    /// without one of its own), and `Retry-After` on a `503`.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )];
        let challenge = match &self.challenge {
            Some(c) => HeaderValue::from_str(c).ok(),
            None if self.status == StatusCode::UNAUTHORIZED => {
                Some(HeaderValue::from_static("Bearer"))
            }
            None => None,
        };
        if let Some(c) = challenge {
            out.push((header::WWW_AUTHENTICATE, c));
        }
        // Every 503 of herald is "not now": the engine is unreachable or
        // the hub is stopping. A client (or a balancer) retries soon.
        if let Some(secs) = self.retry_after {
            out.push((header::RETRY_AFTER, HeaderValue::from(secs)));
        } else if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            out.push((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        out
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.body()).into_response();
        for (name, value) in self.headers() {
            res.headers_mut().insert(name, value);
        }
        res
    }
}

/// Reads a request body of at most `limit` bytes (`413` beyond).
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, HttpError> {
    use http_body_util::{BodyExt, Limited};
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes"),
        )),
        Err(e) => Err(HttpError::bad_request(format!("cannot read body: {e}"))),
    }
}
