//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the
//! parsers that face the network or the disk but are private to the
//! crate. Not an API: nothing here is stable.

use herald_protocol::sse::{Item, Parser};
use herald_protocol::Update;

/// Sorts a connection's first bytes as the server does.
pub fn classify_head(buf: &[u8]) {
    let _ = crate::transport::http1::head::classify(buf);
}

/// Decodes a stored record (the `local` and `redis` engines' layout);
/// a record that decodes is encoded again to the same update.
pub fn record_round_trip(buf: &[u8]) {
    use crate::engine::records::{decode_record, encode_record};
    if let Ok((_, update)) = decode_record(buf) {
        let again = encode_record(&update);
        let (_, back) = decode_record(&again).expect("a record herald wrote decodes");
        assert_eq!(back, update);
    }
}

/// A publish form body, parsed and checked as `POST` does; an update that
/// passes is encoded as an SSE frame, which must parse back to it.
pub fn publish_form(body: &[u8]) {
    let Ok(fields) = herald_protocol::form::parse(body) else {
        return;
    };
    if let Ok(update) = crate::http::publish::update_from_form(fields) {
        check_update(update);
    }
}

/// A batch body (JSON), parsed and checked as `POST` does.
pub fn publish_batch(body: &[u8]) {
    if let Ok(updates) = crate::http::publish::updates_from_json(body, 1000) {
        for u in updates {
            check_update(u);
        }
    }
}

fn check_update(mut update: Update) {
    if update.validate(64).is_err() || !crate::http::publish::id_is_valid(&update.id) {
        return;
    }
    if update.id.is_empty() {
        update.id = "urn:uuid:fuzz".to_owned();
    }
    let stored = crate::engine::Stored::new(1, update);
    let items = Parser::new().feed(&stored.frame);
    let events: Vec<_> = items
        .into_iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e),
            Item::Comment(_) => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "one frame, one event: {:?}", stored.frame);
    let e = &events[0];
    // SSE carries line breaks, not which: CR LF and CR arrive as LF.
    let sent = stored.update.data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(e.data, sent);
    assert_eq!(e.id, stored.update.id);
    assert_eq!(
        e.event,
        stored.update.event_type.as_deref().unwrap_or("message")
    );
}
