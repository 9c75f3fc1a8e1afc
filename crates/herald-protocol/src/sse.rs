//! Server-Sent Events wire format.
//!
//! The encoder follows the WHATWG HTML "server-sent events" parsing rules in
//! reverse: data containing CR, LF or CRLF becomes one `data:` line per line,
//! a field value that starts with a space gets the one space the parser
//! strips (`data:  x` keeps its leading space), `id` and `event` must not
//! contain CR, LF or NUL (checked by [`crate::update::Update::validate`] before
//! anything is encoded), and `retry:` is digits only.
//!
//! The [`Parser`] is the client side: it is fed arbitrary chunks and yields
//! the events a browser's `EventSource` would dispatch.

use bytes::{BufMut, Bytes, BytesMut};

/// Fields of one event to encode.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFields<'a> {
    pub id: Option<&'a str>,
    pub event: Option<&'a str>,
    pub data: &'a str,
    pub retry: Option<u64>,
}

/// Encodes one event into a complete frame, terminated by a blank line.
///
/// `id` and `event` must already be free of CR, LF and NUL; the encoder does
/// not repeat that check on the hot path (`debug_assert!` guards it in tests).
pub fn encode(fields: &EventFields<'_>) -> Bytes {
    let mut out = BytesMut::with_capacity(fields.data.len() + 64);
    encode_into(fields, &mut out);
    out.freeze()
}

/// Appends one encoded event to `out`.
pub fn encode_into(fields: &EventFields<'_>, out: &mut BytesMut) {
    if let Some(event) = fields.event {
        debug_assert!(is_valid_field_value(event));
        put_field(out, b"event", event);
    }
    if let Some(id) = fields.id {
        debug_assert!(is_valid_field_value(id));
        put_field(out, b"id", id);
    }
    if let Some(retry) = fields.retry {
        out.put_slice(b"retry:");
        out.put_slice(retry.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    for line in split_lines(fields.data) {
        put_field(out, b"data", line);
    }
    out.put_u8(b'\n');
}

/// Encodes a comment frame (`:text\n\n`), used for heartbeats.
pub fn comment(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    for line in split_lines(text) {
        out.put_u8(b':');
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// A field value may be sent on one line when it holds no CR, LF or NUL.
pub fn is_valid_field_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &str) {
    out.put_slice(name);
    out.put_u8(b':');
    // The parser removes exactly one leading space after the colon; adding
    // one unconditionally would be valid too, but costs a byte per line.
    if value.starts_with(' ') {
        out.put_u8(b' ');
    }
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

/// Splits on CRLF, CR or LF, as the event-stream parser does.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// One event as dispatched to an `EventSource` listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `lastEventId` in force when the event was dispatched.
    pub id: String,
    /// The event type; `message` when the stream named none.
    pub event: String,
    pub data: String,
    /// The last `retry` value seen with this event, if any.
    pub retry: Option<u64>,
}

/// What the parser produced from a line group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    /// A comment line (without the leading colon), e.g. a heartbeat.
    Comment(String),
}

/// A streaming `text/event-stream` parser following the WHATWG algorithm.
///
/// Bytes are decoded as UTF-8 with replacement, exactly as browsers do; a
/// leading byte-order mark is dropped.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    started: bool,
    skip_lf: bool,
    last_id: String,
    event: String,
    data: String,
    has_data: bool,
    retry: Option<u64>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last event id the stream set (what a client resumes from).
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// The reconnection time the stream set last (`retry:`), in
    /// milliseconds: how long an `EventSource` waits before it reconnects.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Feeds a chunk and returns every complete item it finished.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        for &b in chunk {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.skip_lf = true;
                    self.line(&mut items);
                }
                b'\n' => self.line(&mut items),
                _ => self.buf.push(b),
            }
        }
        items
    }

    fn line(&mut self, items: &mut Vec<Item>) {
        let raw = std::mem::take(&mut self.buf);
        let mut line = String::from_utf8_lossy(&raw).into_owned();
        if !self.started {
            self.started = true;
            if let Some(stripped) = line.strip_prefix('\u{feff}') {
                line = stripped.to_owned();
            }
        }
        if line.is_empty() {
            self.dispatch(items);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            items.push(Item::Comment(comment.to_owned()));
            return;
        }
        let (name, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line.as_str(), ""),
        };
        match name {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, items: &mut Vec<Item>) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            self.data.clear();
            return;
        }
        self.has_data = false;
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the trailing LF the algorithm strips
        items.push(Item::Event(Event {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            retry: self.retry,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(fields: &EventFields<'_>) -> Event {
        let frame = encode(fields);
        let mut p = Parser::new();
        let items = p.feed(&frame);
        assert_eq!(items.len(), 1, "one frame gives one event: {frame:?}");
        match &items[0] {
            Item::Event(e) => e.clone(),
            other => panic!("expected event, got {other:?}"),
        }
    }

    #[test]
    fn multiline_data_becomes_several_data_lines() {
        let frame = encode(&EventFields {
            id: Some("1"),
            data: "a\nb\r\nc\rd",
            ..Default::default()
        });
        assert_eq!(&frame[..], b"id:1\ndata:a\ndata:b\ndata:c\ndata:d\n\n");
    }

    #[test]
    fn leading_space_is_preserved() {
        let e = roundtrip(&EventFields {
            data: " x",
            event: Some(" t"),
            ..Default::default()
        });
        assert_eq!(e.data, " x");
        assert_eq!(e.event, " t");
    }

    #[test]
    fn parser_handles_chunk_boundaries_and_crlf() {
        let stream = b":hb\r\n\r\nid: 7\r\nevent: x\r\ndata: one\r\ndata:two\r\n\r\n";
        let mut p = Parser::new();
        let mut items = Vec::new();
        for b in stream.iter() {
            items.extend(p.feed(&[*b]));
        }
        assert_eq!(items[0], Item::Comment("hb".into()));
        assert_eq!(
            items[1],
            Item::Event(Event {
                id: "7".into(),
                event: "x".into(),
                data: "one\ntwo".into(),
                retry: None
            })
        );
    }

    proptest! {
        #[test]
        fn encode_parse_roundtrip(
            data in any::<String>(),
            id in "[^\r\n\0]*",
            event in "[^\r\n\0]+",
            retry in proptest::option::of(any::<u64>()),
        ) {
            let e = roundtrip(&EventFields { id: Some(&id), event: Some(&event), data: &data, retry });
            // The parser turns every line break into LF, as browsers do.
            let expected = data.replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(e.data, expected);
            prop_assert_eq!(e.id, id);
            prop_assert_eq!(e.event, event);
            prop_assert_eq!(e.retry, retry);
        }

        #[test]
        fn parser_never_panics(chunks in proptest::collection::vec(any::<Vec<u8>>(), 0..8)) {
            let mut p = Parser::new();
            for c in chunks { let _ = p.feed(&c); }
        }
    }
}
