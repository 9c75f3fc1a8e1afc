//! Finding the token of a request.
//!
//! A token travels in the `Authorization: Bearer` header, in the draft-07
//! `authorization` query parameter, or in a cookie. The header always wins:
//! a request that sends one means it, and a cookie is whatever the browser
//! happened to hold. Which cookies count, and in which order, is the
//! caller's choice ([`crate::Hub::authenticate`] passes the draft-08 cookie,
//! then the draft-07 one).

use super::error::{AuthError, TokenSource};

/// Finds the token of a request: the `Authorization` header, then the
/// query token (draft-07 requests), then the cookies in the order given.
///
/// # Errors
/// A present but malformed `Authorization` header.
pub(crate) fn extract_token(
    headers: &http::HeaderMap,
    query_token: Option<&str>,
    cookie_names: &[&str],
) -> Result<Option<(String, TokenSource)>, AuthError> {
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(AuthError::MalformedHeader);
        }
        let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
        // The scheme name is case-insensitive (RFC 7235). Another scheme
        // (`Basic ...`) carries no bearer token at all.
        let scheme = value.split(' ').next().unwrap_or_default();
        let is_token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if is_token(scheme) && !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::OtherScheme);
        }
        let token = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| value[7..].trim())
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MalformedHeader)?;
        return Ok(Some((token.to_owned(), TokenSource::Header)));
    }
    if let Some(t) = query_token {
        return Ok(Some((t.to_owned(), TokenSource::Query)));
    }
    for name in cookie_names.iter().filter(|n| !n.is_empty()) {
        for value in headers.get_all(http::header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k == *name && !v.is_empty() {
                        return Ok(Some((v.to_owned(), TokenSource::Cookie)));
                    }
                }
            }
        }
    }
    Ok(None)
}
