//! An allocation-free `text/event-stream` scanner for counting events.
//!
//! It follows the same WHATWG rules as `herald_protocol::sse::Parser` (CR,
//! LF and CRLF line ends in any split, one space stripped after the colon,
//! `data` lines joined by LF, dispatch on an empty line only when data was
//! seen, comments ignored, a leading byte-order mark dropped) but keeps only
//! what the bench reads: the first [`HEAD`] bytes of each event's data. The
//! general parser allocates several times per line, which made it half of
//! the generator's CPU time; the tests check both agree.

/// Bytes of each event's data that are kept.
pub(super) const HEAD: usize = 40;

const BOM: &[u8] = "\u{feff}".as_bytes();
/// Longest field name kept: `data` after a byte-order mark.
const NAME: usize = 8;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the field name, at the start of a line.
    #[default]
    Name,
    /// Just after `data:`: one space is skipped.
    ValueStart,
    /// In the value of a `data` field.
    Value,
    /// In a comment or a field the bench does not read.
    Ignore,
}

#[derive(Debug)]
pub(super) struct Scanner {
    state: State,
    skip_lf: bool,
    started: bool,
    name: [u8; NAME],
    name_len: usize,
    /// The field name did not fit in `name` (so it is not `data`).
    name_long: bool,
    has_data: bool,
    head: [u8; HEAD],
    /// Bytes of the event's data so far, each line's LF included.
    data_len: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            state: State::Name,
            skip_lf: false,
            started: false,
            name: [0; NAME],
            name_len: 0,
            name_long: false,
            has_data: false,
            head: [0; HEAD],
            data_len: 0,
        }
    }
}

impl Scanner {
    /// Scans a chunk, calling `on_event` with the first [`HEAD`] bytes of the
    /// data of each event it completes.
    pub fn feed(&mut self, mut input: &[u8], mut on_event: impl FnMut(&[u8])) {
        while let Some(&first) = input.first() {
            if self.skip_lf {
                self.skip_lf = false;
                if first == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            match self.state {
                State::Name => {
                    input = &input[1..];
                    match first {
                        b'\r' | b'\n' => self.end_line(first, &mut on_event),
                        b':' => {
                            let name = self.name();
                            self.state = if name == b"data" {
                                State::ValueStart
                            } else {
                                State::Ignore
                            };
                        }
                        b => {
                            if self.name_len < NAME {
                                self.name[self.name_len] = b;
                                self.name_len += 1;
                            } else {
                                self.name_long = true;
                            }
                        }
                    }
                }
                State::ValueStart => {
                    if first == b' ' {
                        input = &input[1..];
                    }
                    self.state = State::Value;
                }
                State::Value | State::Ignore => {
                    let eol = input.iter().position(|&b| b == b'\n' || b == b'\r');
                    let value = &input[..eol.unwrap_or(input.len())];
                    if self.state == State::Value {
                        self.push_data(value);
                    }
                    let Some(i) = eol else { return };
                    self.end_line(input[i], &mut on_event);
                    input = &input[i + 1..];
                }
            }
        }
    }

    /// The field name of the current line, without a leading byte-order mark
    /// on the stream's first line.
    fn name(&self) -> &[u8] {
        if self.name_long {
            return b"?";
        }
        let name = &self.name[..self.name_len];
        if self.started {
            name
        } else {
            name.strip_prefix(BOM).unwrap_or(name)
        }
    }

    fn push_data(&mut self, bytes: &[u8]) {
        if self.data_len < HEAD {
            let n = bytes.len().min(HEAD - self.data_len);
            self.head[self.data_len..self.data_len + n].copy_from_slice(&bytes[..n]);
        }
        self.data_len += bytes.len();
    }

    fn end_line(&mut self, terminator: u8, on_event: &mut impl FnMut(&[u8])) {
        self.skip_lf = terminator == b'\r';
        match self.state {
            State::Name if self.name().is_empty() && !self.name_long => {
                if self.has_data {
                    // The data's last LF is not part of it.
                    let len = (self.data_len - 1).min(HEAD);
                    on_event(&self.head[..len]);
                }
                self.has_data = false;
                self.data_len = 0;
            }
            // A line without a colon names a field with an empty value.
            State::Name if self.name() == b"data" => self.end_data_line(),
            State::ValueStart | State::Value => self.end_data_line(),
            State::Name | State::Ignore => {}
        }
        self.started = true;
        self.state = State::Name;
        self.name_len = 0;
        self.name_long = false;
    }

    fn end_data_line(&mut self) {
        self.push_data(b"\n");
        self.has_data = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::sse::{encode, EventFields, Item, Parser};

    /// What the reference parser makes of the stream, as the scanner reports it.
    fn reference(stream: &[u8]) -> Vec<Vec<u8>> {
        Parser::new()
            .feed(stream)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => {
                    let d = e.data.into_bytes();
                    Some(d[..d.len().min(HEAD)].to_vec())
                }
                Item::Comment(_) => None,
            })
            .collect()
    }

    fn scan(stream: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut s = Scanner::default();
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            s.feed(piece, |d| out.push(d.to_vec()));
        }
        out
    }

    fn check(stream: &[u8]) {
        let expected = reference(stream);
        for step in [1, 2, 3, 5, 7, 13, 64, stream.len().max(1)] {
            assert_eq!(
                scan(stream, step),
                expected,
                "step {step}, stream {:?}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn agrees_with_the_reference_parser() {
        let long = "0123456789".repeat(9);
        let cases: Vec<Vec<u8>> = vec![
            b"data: hello\n\n".to_vec(),
            b"id: 1\nevent: x\ndata:one\ndata: two\n\n".to_vec(),
            b":comment\n\ndata\n\ndata:\n\ndata: \n\n".to_vec(),
            b"data:a\r\n\r\ndata:b\r\rdata:c\n\r\n".to_vec(),
            b"\xef\xbb\xbfdata: bom\n\n\xef\xbb\xbfdata: not a bom\n\n".to_vec(),
            b"\xef\xbb\xbf:comment\n\ndata:x\n\n".to_vec(),
            b"datax: no\n\ndata : no\n\nDATA: no\n\nverylongfieldname: v\n\n".to_vec(),
            b"id: only\n\nretry: 5\n\ndata:  two spaces\n\n".to_vec(),
            format!("data:{long}\ndata:{long}\n\ndata: {long}\n\n").into_bytes(),
            b"data: unterminated event".to_vec(),
            b"data: no blank line\n".to_vec(),
        ];
        for c in &cases {
            check(c);
        }
    }

    #[test]
    fn agrees_on_encoded_events() {
        // A small deterministic generator: xorshift over a few shapes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces = [
            "a",
            " ",
            "\n",
            "\r\n",
            "\r",
            "0123456789",
            ":",
            "data:",
            "é",
        ];
        for _ in 0..300 {
            let mut stream = Vec::new();
            for _ in 0..(next() % 5) {
                let mut data = String::new();
                for _ in 0..(next() % 12) {
                    data.push_str(pieces[(next() % pieces.len() as u64) as usize]);
                }
                let id = format!("urn:{}", next() % 1000);
                let fields = EventFields {
                    id: Some(&id),
                    event: (next() % 2 == 0).then_some("t"),
                    data: &data,
                    retry: None,
                };
                stream.extend_from_slice(&encode(&fields));
                if next() % 3 == 0 {
                    stream.extend_from_slice(b":\n\n");
                }
            }
            check(&stream);
        }
    }
}
