//! What every part of authorization shares: why a request was refused
//! ([`AuthError`], with its status, its RFC 6750 error code and its
//! metric label), which key a token is checked for ([`Role`]), and where
//! it was found ([`TokenSource`]).

/// Why a request was not authorized. Each maps to `401` or `403`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed Authorization header: expected \"Bearer <token>\"")]
    MalformedHeader,
    /// The application's authorization callback refused the request.
    #[error("the application refused this request")]
    CallbackRefused,
    /// Credentials of another scheme (`Basic`, ...): no bearer token, so
    /// `401` with a bare `Bearer` challenge (RFC 6750, 3.1).
    #[error("the Authorization header uses another scheme: a bearer token is required")]
    OtherScheme,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("a token is required")]
    Missing,
    #[error("an Origin or Referer header is required with cookie authorization")]
    NoOrigin,
    #[error("origin {0:?} is not allowed to publish")]
    OriginNotAllowed(String),
    #[error("the token does not allow publishing")]
    NoPublishClaim,
    #[error("the token does not allow publishing to topic {0:?}")]
    TopicNotAllowed(String),
    #[error("no key is configured for this action")]
    NoKey,
    #[error("access tokens are not accepted in the query string: use the Authorization header or the cookie")]
    TokenInQuery,
}

impl AuthError {
    /// `401` when the request carries no usable credentials, `403` when the
    /// credentials are valid but do not grant the action, `400` when the
    /// credentials are presented wrongly.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::NoOrigin
            | Self::OriginNotAllowed(_)
            | Self::NoPublishClaim
            | Self::TopicNotAllowed(_)
            | Self::CallbackRefused => http::StatusCode::FORBIDDEN,
            Self::MalformedHeader | Self::TokenInQuery => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 error code of the `WWW-Authenticate: Bearer` challenge:
    /// none when no token was presented, `invalid_token` for a token that
    /// failed validation (whatever the reason, which is not disclosed),
    /// `insufficient_scope` when a valid token does not grant the action,
    /// `invalid_request` when the request is malformed.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            Self::Missing | Self::OtherScheme => None,
            Self::CallbackRefused => Some("insufficient_scope"),
            Self::MalformedHeader | Self::TokenInQuery => Some("invalid_request"),
            // Not a token problem: a cross-site publish refused.
            Self::NoOrigin | Self::OriginNotAllowed(_) => None,
            Self::NoPublishClaim | Self::TopicNotAllowed(_) => Some("insufficient_scope"),
            Self::InvalidToken(_) | Self::Expired | Self::NotYetValid | Self::NoKey => {
                Some("invalid_token")
            }
        }
    }

    /// What the client is told. A token that fails validation is just an
    /// "invalid token", whatever the reason (which goes to logs and
    /// metrics): telling which issuers or keys exist would help an attacker.
    pub fn public_message(&self) -> String {
        match self.bearer_error() {
            Some("invalid_token") => "invalid token".to_owned(),
            _ => self.to_string(),
        }
    }

    /// A short label for metrics and logs (bounded values only).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedHeader => "malformed_header",
            Self::InvalidToken(_) => "invalid_token",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Missing => "missing",
            Self::OtherScheme => "other_scheme",
            Self::CallbackRefused => "callback_refused",
            Self::NoOrigin => "no_origin",
            Self::OriginNotAllowed(_) => "origin_not_allowed",
            Self::NoPublishClaim => "no_publish_claim",
            Self::TopicNotAllowed(_) => "topic_not_allowed",
            Self::NoKey => "no_key",
            Self::TokenInQuery => "token_in_query",
        }
    }
}

/// Which key verifies a draft-07 token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}
