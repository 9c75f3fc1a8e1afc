//! The origin check of cookie-authorized publishes.
//!
//! A browser sends its cookies with any request, whichever site made it, so
//! a publish authorized by a cookie could be forged by another site. Such a
//! publish must come from an origin of `publish_origins`, read from the
//! `Origin` header or else from the `Referer`; requests authorized by a
//! header are not affected (a foreign site cannot set that header).

use super::error::AuthError;

/// Checks the origin of a cookie-authorized publish against the allowed
/// publish origins, to stop cross-site request forgery.
///
/// # Errors
/// No `Origin`/`Referer`, or an origin not in the list.
pub(crate) fn check_publish_origin(
    headers: &http::HeaderMap,
    allowed: &[String],
) -> Result<(), AuthError> {
    let origin = match headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        Some(o) => o.to_owned(),
        None => {
            let referer = headers
                .get(http::header::REFERER)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::NoOrigin)?;
            origin_of(referer).ok_or(AuthError::NoOrigin)?
        }
    };
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        Ok(())
    } else {
        Err(AuthError::OriginNotAllowed(origin))
    }
}

fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_from_referer() {
        assert_eq!(
            origin_of("https://example.com:8443/a/b?c").as_deref(),
            Some("https://example.com:8443")
        );
        assert_eq!(origin_of("nonsense"), None);
    }
}
