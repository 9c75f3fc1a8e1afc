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
}

impl HttpError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            challenge: None,
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
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
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
