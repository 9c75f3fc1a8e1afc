//! The stored record of one update: how an [`Update`] and its commit time
//! are laid out as bytes, by the `local` engine (one value of its
//! `updates` table) and the `redis` engine (one field of a stream entry).
//!
//! A record is compact, versioned and self-describing enough to be checked:
//!
//! ```text
//! u8      version (1)
//! u64 LE  commit time, ms since the Unix epoch   (fixed offset: retention
//!                                                 reads it without decoding)
//! u8      flags: 1 private, 2 has event type, 4 has retry
//! str     id                    str = LEB128 length + UTF-8 bytes
//! varint  topic count, then each topic as str
//! str     event type            if flag 2
//! varint  retry                 if flag 4
//! str     data
//! ```
//!
//! A decoder meeting a record it cannot read reports the store as damaged
//! rather than guessing: every function here returns a [`RecordError`] on
//! bad input and never panics, whatever the bytes.

use std::time::{SystemTime, UNIX_EPOCH};

use herald_protocol::Update;

const RECORD_V1: u8 = 1;
const TS_RANGE: std::ops::Range<usize> = 1..9;
const FLAG_PRIVATE: u8 = 1;
const FLAG_EVENT_TYPE: u8 = 2;
const FLAG_RETRY: u8 = 4;

/// Encodes an update as a store record, with a zero commit time.
pub(crate) fn encode_record(u: &Update) -> Vec<u8> {
    let size = 16
        + u.id.len()
        + u.data.len()
        + u.topics.iter().map(|t| t.len() + 2).sum::<usize>()
        + u.event_type.as_ref().map_or(0, |t| t.len() + 2);
    let mut out = Vec::with_capacity(size);
    out.push(RECORD_V1);
    out.extend_from_slice(&[0; 8]);
    let mut flags = 0;
    if u.private {
        flags |= FLAG_PRIVATE;
    }
    if u.event_type.is_some() {
        flags |= FLAG_EVENT_TYPE;
    }
    if u.retry.is_some() {
        flags |= FLAG_RETRY;
    }
    out.push(flags);
    put_str(&mut out, &u.id);
    put_varint(&mut out, u.topics.len() as u64);
    for t in &u.topics {
        put_str(&mut out, t);
    }
    if let Some(t) = &u.event_type {
        put_str(&mut out, t);
    }
    if let Some(r) = u.retry {
        put_varint(&mut out, r);
    }
    put_str(&mut out, &u.data);
    out
}

pub(crate) fn set_record_ts(record: &mut [u8], ts: u64) {
    record[TS_RANGE].copy_from_slice(&ts.to_le_bytes());
}

/// The commit time written into records: ms since the Unix epoch (0 if the
/// clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A record the decoder cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad record: {0}")]
pub(crate) struct RecordError(&'static str);

pub(crate) fn record_ts(record: &[u8]) -> Result<u64, RecordError> {
    if record.first() != Some(&RECORD_V1) {
        return Err(RecordError("unknown version"));
    }
    let ts = record.get(TS_RANGE).ok_or(RecordError("truncated"))?;
    Ok(u64::from_le_bytes(
        ts.try_into().map_err(|_| RecordError("truncated"))?,
    ))
}

pub(crate) fn record_id(record: &[u8]) -> Result<&str, RecordError> {
    record_ts(record)?;
    let mut r = Reader {
        buf: record,
        at: TS_RANGE.end + 1,
    };
    r.str()
}

/// Decodes a store record into its commit time and update.
pub(crate) fn decode_record(record: &[u8]) -> Result<(u64, Update), RecordError> {
    let ts = record_ts(record)?;
    let mut r = Reader {
        buf: record,
        at: TS_RANGE.end,
    };
    let flags = r.byte()?;
    if flags & !(FLAG_PRIVATE | FLAG_EVENT_TYPE | FLAG_RETRY) != 0 {
        return Err(RecordError("unknown flags"));
    }
    let id = r.str()?.to_owned();
    let count = r.varint()?;
    // Each topic takes at least one byte: a bound before allocating.
    if count > (record.len() - r.at) as u64 {
        return Err(RecordError("bad topic count"));
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        topics.push(r.str()?.to_owned());
    }
    let event_type = if flags & FLAG_EVENT_TYPE != 0 {
        Some(r.str()?.to_owned())
    } else {
        None
    };
    let retry = if flags & FLAG_RETRY != 0 {
        Some(r.varint()?)
    } else {
        None
    };
    let data = r.str()?.to_owned();
    if r.at != record.len() {
        return Err(RecordError("trailing bytes"));
    }
    Ok((
        ts,
        Update {
            id,
            topics,
            data,
            event_type,
            retry,
            private: flags & FLAG_PRIVATE != 0,
        },
    ))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, RecordError> {
        let b = *self.buf.get(self.at).ok_or(RecordError("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if shift == 63 && b > 1 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(RecordError("bad varint"))
    }

    fn str(&mut self) -> Result<&'a str, RecordError> {
        let len = self.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.at.checked_add(len))
            .filter(|&end| end <= self.buf.len())
            .ok_or(RecordError("truncated"))?;
        let s = std::str::from_utf8(&self.buf[self.at..end])
            .map_err(|_| RecordError("invalid UTF-8"))?;
        self.at = end;
        Ok(s)
    }
}

/// What one update counts for in [`Retention::max_bytes`](super::config::Retention::max_bytes):
/// its record, its id-index key, and the two `u64`s of keys and index value.
pub(crate) fn footprint(record_len: usize, id_len: usize) -> u64 {
    (record_len + id_len + 16) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> Update {
        Update {
            id: "urn:uuid:1".into(),
            topics: vec!["https://example.com/a".into(), "b".into()],
            data: "line 1\nline 2 — é".into(),
            event_type: Some("ping".into()),
            retry: Some(u64::MAX),
            private: true,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut rec = encode_record(&update());
        set_record_ts(&mut rec, 1234);
        assert_eq!(decode_record(&rec).unwrap(), (1234, update()));
        assert_eq!(record_id(&rec).unwrap(), "urn:uuid:1");
        let plain = Update {
            id: "x".into(),
            topics: vec!["t".into()],
            ..Update::default()
        };
        let rec = encode_record(&plain);
        assert_eq!(decode_record(&rec).unwrap(), (0, plain));
    }

    #[test]
    fn damaged_records_are_errors() {
        let rec = encode_record(&update());
        for len in 0..rec.len() {
            assert!(decode_record(&rec[..len]).is_err(), "prefix {len}");
        }
        let mut longer = rec.clone();
        longer.push(0);
        assert!(decode_record(&longer).is_err());
        let mut bad_version = rec.clone();
        bad_version[0] = 9;
        assert!(decode_record(&bad_version).is_err());
        // Any byte flipped: an error or a different update, never a panic.
        for i in 0..rec.len() {
            let mut flipped = rec.clone();
            flipped[i] ^= 0xff;
            let _ = decode_record(&flipped);
        }
    }
}
