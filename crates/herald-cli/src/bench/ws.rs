//! Just enough WebSocket (RFC 6455) for `herald bench --websocket`: the
//! upgrade request, and an allocation-free decoder of the hub's frames
//! that keeps, like [`Scanner`] does for event streams, only the first
//! [`HEAD`] bytes of each update's data.
//!
//! Each update arrives as one text message holding one JSON object,
//! `{"op":"update",…,"data":"…",…}`. The decoder does not parse JSON: it
//! looks for the bytes `"op":"update"` and `"data":"`, and takes the data
//! to be the bytes up to the next `"`. That holds for herald's compact
//! serialization and the bench's payload (digits and `x` only, see
//! `payload`: nothing is escaped); a string value cannot hold either
//! pattern, since its own quotes are escaped. An update whose data cannot
//! be read that way is reported as such ([`Item::Update`] with `None`), and
//! counted as a foreign event, like a binary message.
//!
//! [`Scanner`]: super::sse::Scanner

use super::sse::HEAD;

/// The `opcode` of each frame type.
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Largest payload of a control frame.
const MAX_CONTROL: usize = 125;

/// What the decoder found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Item<'a> {
    /// An update message: the first [`HEAD`] bytes of its data, or `None`
    /// when they could not be read (a binary message, or no `"data":"`).
    Update(Option<&'a [u8]>),
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(&'a [u8]),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// Between messages.
    #[default]
    None,
    Text,
    Binary,
}

/// A frame decoder accepting any split of its input.
#[derive(Debug)]
pub(super) struct Decoder {
    /// The frame header read so far (at most 2 + 8 bytes: server frames are
    /// not masked).
    header: [u8; 10],
    header_len: usize,
    /// Inside a frame's payload, with this many bytes left.
    in_payload: bool,
    left: u64,
    opcode: u8,
    fin: bool,
    /// The data message in progress (control frames may come between its
    /// fragments).
    message: Message,
    json: Json,
    /// The payload of the control frame in progress.
    control: [u8; MAX_CONTROL],
    control_len: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            header: [0; 10],
            header_len: 0,
            in_payload: false,
            left: 0,
            opcode: 0,
            fin: false,
            message: Message::None,
            json: Json::default(),
            control: [0; MAX_CONTROL],
            control_len: 0,
        }
    }
}

impl Decoder {
    /// Decodes `input`, calling `on` for each update and ping completed.
    /// Fails on a close frame (with its code and reason) and on anything
    /// RFC 6455 forbids a server to send without extensions.
    pub fn feed(&mut self, mut input: &[u8], mut on: impl FnMut(Item<'_>)) -> Result<(), String> {
        while !input.is_empty() || (self.in_payload && self.left == 0) {
            if !self.in_payload {
                let need = self.header_needed();
                let n = (need - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                self.header_len += n;
                input = &input[n..];
                if self.header_len == need && self.header_needed() == need {
                    self.start_frame()?;
                }
                continue;
            }
            let n = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(input.len());
            let (payload, rest) = input.split_at(n);
            input = rest;
            self.left -= n as u64;
            if self.opcode & 0x8 != 0 {
                self.control[self.control_len..self.control_len + n].copy_from_slice(payload);
                self.control_len += n;
            } else if self.message == Message::Text {
                self.json.feed(payload);
            }
            if self.left == 0 {
                self.in_payload = false;
                self.header_len = 0;
                self.end_frame(&mut on)?;
            }
        }
        Ok(())
    }

    /// Bytes of the current frame's header: 2, then as many more as its
    /// length field says.
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        match self.header[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        }
    }

    fn start_frame(&mut self) -> Result<(), String> {
        let (b0, b1) = (self.header[0], self.header[1]);
        if b0 & 0x70 != 0 {
            return Err("WebSocket frame with reserved bits set".into());
        }
        if b1 & 0x80 != 0 {
            return Err("masked WebSocket frame from the hub".into());
        }
        self.fin = b0 & 0x80 != 0;
        self.opcode = b0 & 0x0f;
        self.left = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut len = [0; 8];
                len.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(len)
            }
            n => u64::from(n),
        };
        match self.opcode {
            CLOSE | PING | PONG => {
                if !self.fin || self.left > MAX_CONTROL as u64 {
                    return Err("malformed WebSocket control frame".into());
                }
                self.control_len = 0;
            }
            TEXT | BINARY if self.message != Message::None => {
                return Err("WebSocket message started inside another".into());
            }
            TEXT => {
                self.message = Message::Text;
                self.json.reset();
            }
            BINARY => self.message = Message::Binary,
            CONTINUATION if self.message == Message::None => {
                return Err("WebSocket continuation outside a message".into());
            }
            CONTINUATION => {}
            op => return Err(format!("WebSocket frame with unknown opcode {op:#x}")),
        }
        self.in_payload = true;
        Ok(())
    }

    fn end_frame(&mut self, on: &mut impl FnMut(Item<'_>)) -> Result<(), String> {
        let control = &self.control[..self.control_len];
        match self.opcode {
            PING => on(Item::Ping(control)),
            PONG => {}
            CLOSE => return Err(close_reason(control)),
            _ if !self.fin => {}
            _ => match std::mem::take(&mut self.message) {
                Message::Text => {
                    if let Some(data) = self.json.finish() {
                        on(Item::Update(data));
                    }
                }
                Message::Binary => on(Item::Update(None)),
                Message::None => {}
            },
        }
        Ok(())
    }
}

/// How a close frame's payload reads in a report.
fn close_reason(payload: &[u8]) -> String {
    if payload.len() < 2 {
        return "closed by the hub (WebSocket close, no code)".into();
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8_lossy(&payload[2..]);
    if reason.is_empty() {
        format!("closed by the hub (WebSocket close {code})")
    } else {
        format!("closed by the hub (WebSocket close {code}: {reason})")
    }
}

/// An incremental search for a fixed byte pattern (Knuth–Morris–Pratt,
/// with the fallback worked out on a mismatch: patterns are short).
#[derive(Debug)]
struct Pattern {
    pat: &'static [u8],
    /// Bytes of `pat` matched so far.
    k: usize,
}

impl Pattern {
    const fn new(pat: &'static [u8]) -> Self {
        Self { pat, k: 0 }
    }

    /// Takes one byte; true when it completes the pattern.
    fn step(&mut self, b: u8) -> bool {
        if self.pat[self.k] == b {
            self.k += 1;
        } else {
            // The longest prefix of `pat` that ends the bytes seen so far.
            let seen = self.k;
            self.k = (1..=seen)
                .rev()
                .find(|&len| {
                    self.pat[len - 1] == b && self.pat[..len - 1] == self.pat[seen + 1 - len..seen]
                })
                .unwrap_or(0);
        }
        if self.k == self.pat.len() {
            self.k = 0;
            return true;
        }
        false
    }
}

/// The scan of one text message for its `op` and the head of its `data`.
#[derive(Debug)]
struct Json {
    op: Pattern,
    data: Pattern,
    is_update: bool,
    /// Inside the data string.
    in_data: bool,
    /// The data string was read to its closing quote.
    data_done: bool,
    head: [u8; HEAD],
    head_len: usize,
}

impl Default for Json {
    fn default() -> Self {
        Self {
            op: Pattern::new(br#""op":"update""#),
            data: Pattern::new(br#""data":""#),
            is_update: false,
            in_data: false,
            data_done: false,
            head: [0; HEAD],
            head_len: 0,
        }
    }
}

impl Json {
    fn reset(&mut self) {
        self.op.k = 0;
        self.data.k = 0;
        self.is_update = false;
        self.in_data = false;
        self.data_done = false;
        self.head_len = 0;
    }

    fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            if self.in_data {
                let end = input.iter().position(|&b| b == b'"');
                let value = &input[..end.unwrap_or(input.len())];
                let n = value.len().min(HEAD - self.head_len);
                self.head[self.head_len..self.head_len + n].copy_from_slice(&value[..n]);
                self.head_len += n;
                let Some(end) = end else { return };
                self.in_data = false;
                self.data_done = true;
                input = &input[end + 1..];
                continue;
            }
            if self.is_update && self.data_done {
                // All that is needed: the rest of the message is skipped.
                return;
            }
            // Both patterns start with a quote: skip to the next one.
            if self.op.k == 0 && self.data.k == 0 {
                match input.iter().position(|&b| b == b'"') {
                    Some(i) => input = &input[i..],
                    None => return,
                }
            }
            let b = input[0];
            input = &input[1..];
            if !self.is_update && self.op.step(b) {
                self.is_update = true;
            }
            if !self.data_done && self.data.step(b) {
                self.in_data = true;
            }
        }
    }

    /// At the end of the message: `None` unless it is an update, else its
    /// data's head if it was read to its closing quote.
    fn finish(&mut self) -> Option<Option<&[u8]>> {
        if !self.is_update {
            return None;
        }
        Some(self.data_done.then_some(&self.head[..self.head_len]))
    }
}

/// A frame from the client: masked with `mask`, as RFC 6455 requires.
/// Used for pongs (payload at most 125 bytes) and the closing handshake.
pub(super) fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= MAX_CONTROL);
    out.push(0x80 | opcode);
    out.push(0x80 | payload.len().min(MAX_CONTROL) as u8);
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .take(MAX_CONTROL)
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
}

/// A pong answering a ping with `payload`.
pub(super) fn pong(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    client_frame(PONG, payload, mask, out);
}

/// A masking key: RFC 6455 wants it unpredictable to intermediaries,
/// which a load generator talking to its hub directly does not need; it
/// only has to vary.
pub(super) fn mask_key(state: &mut u64) -> [u8; 4] {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state as u32).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as the hub sends it (unmasked), with the smallest length
    /// encoding unless `wide` forces the 64-bit one.
    fn frame(fin: bool, opcode: u8, payload: &[u8], wide: bool) -> Vec<u8> {
        let mut f = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            _ if wide => {
                f.push(127);
                f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn update(data: &str) -> String {
        format!(
            r#"{{"op":"update","sub":"default","id":"urn:uuid:1","type":"message","topic":"https://bench.herald/t/0","topics":["https://bench.herald/t/0"],"data":"{data}","private":false}}"#
        )
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Update(Option<Vec<u8>>),
        Ping(Vec<u8>),
    }

    /// Feeds `stream` in pieces of `step` bytes; returns what was seen and
    /// the error that ended it, if any.
    fn decode(stream: &[u8], step: usize) -> (Vec<Seen>, Option<String>) {
        let mut d = Decoder::default();
        let mut seen = Vec::new();
        for piece in stream.chunks(step) {
            let r = d.feed(piece, |item| {
                seen.push(match item {
                    Item::Update(data) => Seen::Update(data.map(<[u8]>::to_vec)),
                    Item::Ping(p) => Seen::Ping(p.to_vec()),
                })
            });
            if let Err(e) = r {
                return (seen, Some(e));
            }
        }
        (seen, None)
    }

    /// Every split gives the same result as the whole.
    fn check(stream: &[u8], expected: &[Seen], error: Option<&str>) {
        for step in [1, 2, 3, 5, 7, 13, 64, 4096, stream.len().max(1)] {
            let (seen, err) = decode(stream, step);
            assert_eq!(seen, expected, "step {step}");
            assert_eq!(err.as_deref(), error, "step {step}");
        }
    }

    fn head(s: &str) -> Seen {
        Seen::Update(Some(s.as_bytes()[..s.len().min(HEAD)].to_vec()))
    }

    #[test]
    fn updates_and_the_subscribed_message() {
        let long = format!("{}{}", "1".repeat(40), "x".repeat(300));
        let mut s = frame(
            true,
            TEXT,
            br#"{"op":"subscribed","sub":"default","resumed_from":null}"#,
            false,
        );
        s.extend(frame(true, TEXT, update("0123").as_bytes(), false));
        // 16-bit length (> 125 bytes).
        s.extend(frame(true, TEXT, update(&long).as_bytes(), false));
        // 64-bit length, for a short payload.
        s.extend(frame(true, TEXT, update("wide").as_bytes(), true));
        // A 64-bit length above 64 KiB.
        let huge = "y".repeat(70_000);
        s.extend(frame(true, TEXT, update(&huge).as_bytes(), false));
        s.extend(frame(true, TEXT, update("").as_bytes(), false));
        check(
            &s,
            &[
                head("0123"),
                head(&long),
                head("wide"),
                head(&huge),
                head(""),
            ],
            None,
        );
    }

    #[test]
    fn fragments_with_a_ping_between_them() {
        let text = update("fragmented");
        let (a, b) = text.as_bytes().split_at(50);
        let (b, c) = b.split_at(40);
        let mut s = frame(false, TEXT, a, false);
        s.extend(frame(true, PING, b"hb-1", false));
        s.extend(frame(false, CONTINUATION, b, false));
        s.extend(frame(false, CONTINUATION, b"", false));
        s.extend(frame(true, PONG, b"", false));
        s.extend(frame(true, CONTINUATION, c, false));
        s.extend(frame(true, PING, b"", false));
        check(
            &s,
            &[
                Seen::Ping(b"hb-1".to_vec()),
                head("fragmented"),
                Seen::Ping(Vec::new()),
            ],
            None,
        );
    }

    #[test]
    fn unreadable_updates_are_reported_as_such() {
        let mut s = frame(true, BINARY, &[0, 1, 2, 3], false);
        // No data field.
        s.extend(frame(true, TEXT, br#"{"op":"update","id":"x"}"#, false));
        // A data string that never ends.
        s.extend(frame(true, TEXT, br#"{"op":"update","data":"123"#, false));
        // Not an update: nothing.
        s.extend(frame(true, TEXT, br#"{"op":"error","data":"1"}"#, false));
        // Quote-like bytes before the real fields.
        s.extend(frame(
            true,
            TEXT,
            br#"{"id":"\"data\":\"no","op":"update","data""data":"yes"}"#,
            false,
        ));
        check(
            &s,
            &[
                Seen::Update(None),
                Seen::Update(None),
                Seen::Update(None),
                head("yes"),
            ],
            None,
        );
    }

    #[test]
    fn a_close_frame_ends_with_its_code() {
        let mut s = frame(true, TEXT, update("1").as_bytes(), false);
        let mut close = 4008u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"too slow");
        s.extend(frame(true, CLOSE, &close, false));
        s.extend(frame(true, TEXT, update("2").as_bytes(), false));
        check(
            &s,
            &[head("1")],
            Some("closed by the hub (WebSocket close 4008: too slow)"),
        );
        let s = frame(true, CLOSE, &1001u16.to_be_bytes(), false);
        check(&s, &[], Some("closed by the hub (WebSocket close 1001)"));
    }

    #[test]
    fn protocol_errors() {
        let masked = [0x81, 0x81, 1, 2, 3, 4, b'a'];
        assert!(decode(&masked, 7).1.unwrap().contains("masked"));
        let long_ping = frame(true, PING, &[0; 126], false);
        assert!(decode(&long_ping, 200).1.is_some());
        let stray = frame(true, CONTINUATION, b"x", false);
        assert!(decode(&stray, 10).1.is_some());
        let rsv = [0xC1, 0x00];
        assert!(decode(&rsv, 2).1.is_some());
    }

    #[test]
    fn pongs_are_masked() {
        let mut out = Vec::new();
        pong(b"hb", [1, 2, 3, 4], &mut out);
        assert_eq!(out, [0x8A, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'b' ^ 2]);
        let mut state = 7;
        assert_ne!(mask_key(&mut state), mask_key(&mut state));
    }

    #[test]
    fn the_pattern_search_falls_back_correctly() {
        let mut p = Pattern::new(b"aab");
        let hits: Vec<usize> = b"aaab aab aaaab"
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| p.step(b).then_some(i))
            .collect();
        assert_eq!(hits, [3, 7, 13]);
        let mut p = Pattern::new(br#""data":""#);
        let text = br#""data""data":"x"#;
        let hit = text.iter().position(|&b| p.step(b));
        assert_eq!(hit, Some(13));
    }
}
