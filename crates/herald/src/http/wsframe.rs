//! WebSocket frames (RFC 6455, section 5) as herald's own server reads and
//! writes them on the sockets it serves below hyper (see
//! `transport::http1::socket`): a server's frames are never masked, so
//! one update's frame is the same bytes on every socket that sends it,
//! and is encoded once.
//!
//! Only what a hub needs: no extensions (a frame with a reserved bit set
//! is a protocol error), client frames must be masked, control frames are
//! short and never fragmented, and a message larger than the socket's
//! bound is refused with `1009`.

use bytes::{Buf as _, Bytes, BytesMut};

/// Opcodes (section 5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// A ping with no payload, as the hub sends it.
pub const PING_FRAME: &[u8] = &[0x80 | PING, 0];

/// Close codes of protocol failures (section 7.4.1).
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_DATA: u16 = 1007;
pub const TOO_BIG: u16 = 1009;

/// The head of a final, unmasked frame of `len` payload bytes, on the
/// stack.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    buf: [u8; 10],
    len: u8,
}

impl Head {
    pub fn new(opcode: u8, len: usize) -> Self {
        let mut buf = [0u8; 10];
        buf[0] = 0x80 | opcode;
        let n = if len < 126 {
            buf[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            buf[1] = 126;
            buf[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            buf[1] = 127;
            buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Self { buf, len: n }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// A close frame with `code` and `reason` (at most 123 bytes of it).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut reason = reason;
    while reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
    }
    let mut out = Vec::with_capacity(4 + reason.len());
    out.extend_from_slice(Head::new(CLOSE, 2 + reason.len()).as_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    Bytes::from(out)
}

/// One frame from a client, unmasked.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Bytes,
}

/// Whether a client may close with `code` (RFC 6455, 7.4): the defined
/// codes it may send, and those of the registry and of applications.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why a client's bytes are not a valid frame: the close code to answer
/// with, and a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub u16, pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.1, self.0)
    }
}

impl std::error::Error for Invalid {}

/// Takes one complete frame off the front of `buf`: `Ok(None)` when more
/// bytes are needed. A payload over `max` bytes is refused before it
/// arrives.
///
/// # Errors
/// The bytes break the protocol.
pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, Invalid> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(Invalid(
            PROTOCOL_ERROR,
            "reserved bits set, no extension agreed",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(Invalid(PROTOCOL_ERROR, "unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(Invalid(PROTOCOL_ERROR, "client frames must be masked"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(Invalid(PROTOCOL_ERROR, "the length's top bit is set"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= CLOSE && (!fin || len > 125) {
        return Err(Invalid(
            PROTOCOL_ERROR,
            "control frames are final and at most 125 bytes",
        ));
    }
    let len = match usize::try_from(len) {
        Ok(l) if l <= max => l,
        _ => return Err(Invalid(TOO_BIG, "message too large")),
    };
    let head = at + 4;
    if buf.len() < head + len {
        // Room for what is coming, a chunk at a time: a header alone
        // never makes the hub set aside the length it claims.
        buf.reserve((head + len - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    buf.advance(head);
    let mut payload = buf.split_to(len);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> BytesMut {
        let mask = [1u8, 2, 3, 4];
        let mut out = BytesMut::new();
        out.extend_from_slice(&[first]);
        match payload.len() {
            n if n < 126 => out.extend_from_slice(&[0x80 | n as u8]),
            n if n < 65536 => {
                out.extend_from_slice(&[0x80 | 126]);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.extend_from_slice(&[0x80 | 127]);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn heads_use_the_shortest_length() {
        assert_eq!(Head::new(TEXT, 5).as_bytes(), [0x81, 5]);
        assert_eq!(Head::new(BINARY, 126).as_bytes(), [0x82, 126, 0, 126]);
        assert_eq!(Head::new(TEXT, 65535).as_bytes(), [0x81, 126, 255, 255]);
        assert_eq!(
            Head::new(TEXT, 65536).as_bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        let close = close_frame(4008, "too slow");
        assert_eq!(&close[..4], [0x88, 10, 0x0F, 0xA8]);
        assert_eq!(&close[4..], b"too slow");
        assert_eq!(close_frame(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
    }

    #[test]
    fn client_frames_are_unmasked_whole_or_waited_for() {
        for len in [0, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let whole = masked(0x82, &payload);
            for cut in [0, 1, 3, whole.len() - 1] {
                let mut part = BytesMut::from(&whole[..cut.min(whole.len())]);
                if cut < whole.len() {
                    assert!(parse(&mut part, 1 << 20).unwrap().is_none(), "{len} {cut}");
                }
            }
            let mut buf = whole.clone();
            buf.extend_from_slice(&[0x89, 0x80]);
            let f = parse(&mut buf, 1 << 20).unwrap().unwrap();
            assert!(f.fin);
            assert_eq!(f.opcode, BINARY);
            assert_eq!(&f.payload[..], &payload[..]);
            assert_eq!(&buf[..], [0x89, 0x80], "the next frame stays");
        }
    }

    #[test]
    fn protocol_errors_are_named() {
        let err = |mut b: BytesMut| parse(&mut b, 100).unwrap_err().0;
        assert_eq!(err(BytesMut::from(&[0x81u8, 0x05][..])), PROTOCOL_ERROR);
        assert_eq!(err(masked(0xC1, b"x")), PROTOCOL_ERROR);
        assert_eq!(err(masked(0x83, b"x")), PROTOCOL_ERROR);
        assert_eq!(err(masked(0x09, b"x")), PROTOCOL_ERROR);
        assert_eq!(err(masked(0x89, &[0; 126])), PROTOCOL_ERROR);
        assert_eq!(err(masked(0x82, &[0; 101])), TOO_BIG);
    }
}
