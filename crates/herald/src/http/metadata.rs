//! `GET /.well-known/oauth-protected-resource/.well-known/mercure`: the
//! hub's OAuth 2.0 protected resource metadata (RFC 9728), so a client can
//! learn the resource identifier to put in `aud`, the authorization servers
//! that issue tokens, and how to present a token, without configuration.
//! The `resource_metadata` parameter of every `WWW-Authenticate` challenge
//! points here.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use herald_protocol::authz::DETAIL_TYPE;
use serde_json::json;

use crate::hub::Hub;

pub(crate) async fn protected_resource(State(hub): State<Hub>) -> Response {
    let cfg = hub.config();
    let mut doc = json!({
        "resource": cfg.resource_identifier(),
        // RFC 6750 methods: the header only; tokens in URLs end up in logs.
        "bearer_methods_supported": ["header"],
        "authorization_details_types_supported": [DETAIL_TYPE],
        // The cookie is a Mercure extension, advertised by its name.
        "mercure_cookie": cfg.access_token_cookie,
        "mercure_subscriptions": cfg.subscriptions,
    });
    if !cfg.authorization_servers.is_empty() {
        doc["authorization_servers"] = json!(cfg.authorization_servers);
    }
    let mut res = doc.to_string().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
