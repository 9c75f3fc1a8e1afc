//! `authorization_details` parsing: arbitrary text must be refused or
//! parsed without panicking, and a parsed claim must answer queries
//! without panicking.
//!
//! Input layout: the claim as JSON text, then an optional topic after the
//! first NUL byte.

#![no_main]

use herald_protocol::authz::Authorization;
use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (claim, topic) = text
        .split_once('\0')
        .unwrap_or((text, "https://example.com/books/1"));
    let hub = Url::parse("https://example.com/.well-known/mercure").unwrap();
    if let Ok(authz) = Authorization::from_json(claim, &hub) {
        let _ = authz.can_publish(topic);
        let _ = authz.can_subscribe(topic);
        let _ = authz.payload_for(topic);
        for detail in authz.details() {
            assert!(!detail.topics().is_empty());
        }
    }
    // The same text as a whole claims object.
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(claim) {
        let _ = Authorization::from_claims(&value, &hub);
    }
});
