//! Streaming publish: `POST /.well-known/mercure` with `Content-Type:
//! application/x-ndjson`, one update per line in the batch format, for a
//! publisher that produces as it goes (a model's tokens, a log shipper).
//!
//! Each line is authorized, appended and delivered as soon as it arrives,
//! not when the request ends, and answered at once on the response, which
//! streams one JSON line per update: `{"line":N,"id":"…"}`, or
//! `{"line":N,"status":S,"error":"…"}` with the status and reason `POST`
//! would answer. A bad line is answered for itself and stops nothing;
//! blank lines are skipped. The limits:
//!
//! - a line holds at most `max_body_bytes`, not counting its line ending
//!   (`\n` or `\r\n`): `413` for that line, whose bytes are skipped up to
//!   its newline;
//! - a request that sends nothing for `publish_stream_idle` is ended with
//!   a `408` line;
//! - a request carries at most `publish_stream_updates` updates, each
//!   line answered counting (published or refused, so a publisher whose
//!   every line is refused is stopped too): the line past them is
//!   answered `413` and the stream ends.
//!
//! Errors that concern the whole request (no token, no publish right at
//! all, a cookie from a foreign origin) are answered before the stream
//! starts, as `POST` answers them.

use std::convert::Infallible;
use std::net::IpAddr;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use super::error::HttpError;
use super::publish_rules::{check_rules, check_topics, publish_error, BatchUpdate};
use crate::auth::{self, AuthError, Grants};
use crate::hub::Hub;

/// The media type of a streaming publish, and of its answer.
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// Who publishes, as the request's head says.
pub(crate) struct Publisher {
    pub hub: Hub,
    /// The token's grants; `None` when the application's callback decides
    /// (asked for each line's topics).
    pub grants: Option<Grants>,
    /// The token's key for the per-token publish rate.
    pub token: Option<u64>,
    pub ip: Option<IpAddr>,
    pub headers: HeaderMap,
}

/// Answers a streaming publish: checks what concerns the whole request,
/// then streams one answer per line of `body`.
pub(crate) fn publish(p: Publisher, body: Body) -> Result<Response, HttpError> {
    match &p.grants {
        Some(g) if !g.may_publish_somewhere() => {
            let e = AuthError::NoPublishClaim;
            p.hub.metrics().auth_failed("publish", &e);
            return Err(HttpError::auth(&p.hub, &e));
        }
        Some(_) => {}
        // A browser sends its cookies cross-site too (see `POST`).
        None if p.headers.contains_key(header::COOKIE) => {
            if let Err(e) = auth::check_publish_origin(&p.headers, &p.hub.config().publish_origins)
            {
                p.hub.metrics().auth_failed("publish", &e);
                return Err(HttpError::auth(&p.hub, &e));
            }
        }
        None => {}
    }
    let cfg = p.hub.config();
    let (max_line, idle, max_updates) = (
        cfg.max_body_bytes,
        cfg.publish_stream_idle,
        cfg.publish_stream_updates,
    );
    let answers = async_stream::stream! {
        let mut data = body.into_data_stream();
        let mut buf = BytesMut::new();
        // Lines seen, blank ones included (answers name them).
        let mut line = 0u64;
        // Lines answered, published or refused.
        let mut answered = 0usize;
        // Skipping the rest of a line already answered as too long.
        let mut skipping = false;
        // Bytes of `buf` already searched for a newline: a line arriving
        // a byte at a time is scanned once, not once per byte.
        let mut scanned = 0;
        'read: loop {
            while let Some(end) = buf[scanned..].iter().position(|&b| b == b'\n') {
                let text = buf.split_to(scanned + end + 1);
                scanned = 0;
                line += 1;
                if std::mem::take(&mut skipping) {
                    continue;
                }
                let text = without_line_ending(&text);
                if text.trim_ascii().is_empty() {
                    continue;
                }
                if answered >= max_updates {
                    yield Ok::<_, Infallible>(failed(
                        line,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("at most {max_updates} updates per request (publish_stream_updates): the stream ends here"),
                    ));
                    break 'read;
                }
                answered += 1;
                if text.len() > max_line {
                    yield Ok(failed(line, StatusCode::PAYLOAD_TOO_LARGE, &too_long(max_line)));
                    continue;
                }
                yield Ok(p.publish_line(line, text.trim_ascii()).await);
            }
            scanned = buf.len();
            // What has come of a line without its newline: over the limit
            // once it cannot be a line that fits and its `\r`.
            let over = buf.len() > max_line + 1
                || (buf.len() == max_line + 1 && buf.last() != Some(&b'\r'));
            if over {
                if !skipping {
                    if answered >= max_updates {
                        yield Ok(failed(
                            line + 1,
                            StatusCode::PAYLOAD_TOO_LARGE,
                            &format!("at most {max_updates} updates per request (publish_stream_updates): the stream ends here"),
                        ));
                        break;
                    }
                    answered += 1;
                    yield Ok(failed(line + 1, StatusCode::PAYLOAD_TOO_LARGE, &too_long(max_line)));
                }
                buf.clear();
                scanned = 0;
                skipping = true;
            }
            let next = if idle.is_zero() {
                data.next().await
            } else {
                match tokio::time::timeout(idle, data.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        yield Ok(failed(
                            line + 1,
                            StatusCode::REQUEST_TIMEOUT,
                            &format!("nothing received for {idle:?} (publish_stream_idle): the stream ends here"),
                        ));
                        break;
                    }
                }
            };
            match next {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    yield Ok(failed(
                        line + 1,
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read the request: {e}"),
                    ));
                    break;
                }
                None => {
                    // A last line without its newline is a line.
                    let text = without_line_ending(&buf);
                    if !skipping && !text.trim_ascii().is_empty() {
                        line += 1;
                        let answer = if answered >= max_updates {
                            failed(
                                line,
                                StatusCode::PAYLOAD_TOO_LARGE,
                                &format!("at most {max_updates} updates per request (publish_stream_updates)"),
                            )
                        } else if text.len() > max_line {
                            failed(line, StatusCode::PAYLOAD_TOO_LARGE, &too_long(max_line))
                        } else {
                            p.publish_line(line, text.trim_ascii()).await
                        };
                        yield Ok(answer);
                    }
                    break;
                }
            }
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, NDJSON),
            // Each answer as it is written, through proxies that buffer.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(answers),
    )
        .into_response())
}

impl Publisher {
    /// Publishes one line: its answer.
    async fn publish_line(&self, line: u64, text: &[u8]) -> Bytes {
        match self.try_publish(text).await {
            Ok(id) => {
                let answer = serde_json::json!({ "line": line, "id": id }).to_string();
                with_newline(answer)
            }
            Err(e) => failed(line, e.status, &e.reason),
        }
    }

    async fn try_publish(&self, text: &[u8]) -> Result<String, HttpError> {
        let hub = &self.hub;
        let update = serde_json::from_slice::<BatchUpdate>(text)
            .map_err(|e| HttpError::bad_request(format!("malformed update: {e}")))?
            .into_update()?;
        let asked;
        let grants = match &self.grants {
            Some(g) => g,
            None => {
                let topics = update.topics.clone();
                asked =
                    super::events::ask_callback(hub, &self.headers, "publish", &topics, self.ip)
                        .await?;
                match &asked {
                    Some(g) => g,
                    None => {
                        let e = AuthError::Missing;
                        hub.metrics().auth_failed("publish", &e);
                        return Err(HttpError::auth(hub, &e));
                    }
                }
            }
        };
        check_rules(hub, &update, grants.is_access_token())?;
        let checked = if grants.may_publish_somewhere() {
            check_topics(grants, &update)
        } else {
            Err(AuthError::NoPublishClaim)
        };
        if let Err(e) = checked {
            hub.metrics().auth_failed("publish", &e);
            return Err(HttpError::auth(hub, &e));
        }
        hub.admit_publish(self.ip, self.token, 1)
            .map_err(|r| HttpError::refused(&r))?;
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

fn too_long(max: usize) -> String {
    format!("line longer than {max} bytes (max_body_bytes)")
}

/// The answer of a line that was not published.
fn failed(line: u64, status: StatusCode, reason: &str) -> Bytes {
    with_newline(
        serde_json::json!({ "line": line, "status": status.as_u16(), "error": reason }).to_string(),
    )
}

fn with_newline(mut s: String) -> Bytes {
    s.push('\n');
    Bytes::from(s)
}

/// A line without its `\n` or `\r\n`.
fn without_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
