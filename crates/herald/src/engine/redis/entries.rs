//! Reading the replies of the `redis` engine: stream entries back into
//! [`Stored`] updates, and the scripts' small tagged answers.

use std::sync::Arc;

use redis::Value;

use crate::engine::records::decode_record;
use crate::engine::{EngineError, Position, Stored};

/// A Redis failure as the engine contract names it.
pub(crate) fn unavailable(e: redis::RedisError) -> EngineError {
    EngineError::Unavailable(format!("redis: {e}"))
}

/// A reply that is not what the scripts and commands send.
pub(crate) fn malformed(what: &str) -> EngineError {
    EngineError::Unavailable(format!("unexpected reply from Redis ({what})"))
}

/// The bytes of a string reply.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The text of a string reply.
pub(crate) fn text(v: &Value) -> Option<&str> {
    std::str::from_utf8(bytes(v)?).ok()
}

/// An integer, sent as an integer or as its decimal text.
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// The items of an array reply.
pub(crate) fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// A script's `{tag, value}` answer.
pub(crate) fn tagged(v: &Value) -> Result<(&str, &Value), EngineError> {
    match items(v) {
        Some([tag, value]) => Ok((text(tag).ok_or_else(|| malformed("tag"))?, value)),
        _ => Err(malformed("script answer")),
    }
}

/// The position of entry id `<position>-0`.
fn position(entry_id: &str) -> Option<Position> {
    entry_id.strip_suffix("-0")?.parse().ok()
}

/// One stream entry as the tail reads it: its position, the epoch it was
/// appended in, and its update (or why it cannot be read).
#[derive(Debug)]
pub(crate) struct Entry {
    pub position: Position,
    pub epoch: Option<String>,
    pub stored: Result<Arc<Stored>, EngineError>,
}

/// Stream entries (`XRANGE`) as stored updates; a damaged one fails the
/// read.
pub(crate) fn decode_entries(v: &Value) -> Result<Vec<Arc<Stored>>, EngineError> {
    entries(v)?.into_iter().map(|e| e.stored).collect()
}

/// Stream entries, each decoded on its own: a damaged record is that
/// entry's error. Fails only when an entry's id itself is unreadable.
pub(crate) fn entries(v: &Value) -> Result<Vec<Entry>, EngineError> {
    let Some(list) = items(v) else {
        return match v {
            Value::Nil => Ok(Vec::new()),
            _ => Err(malformed("entries")),
        };
    };
    list.iter().map(decode_entry).collect()
}

fn decode_entry(v: &Value) -> Result<Entry, EngineError> {
    let [id, fields] = items(v).ok_or_else(|| malformed("entry"))? else {
        return Err(malformed("entry"));
    };
    let position = text(id)
        .and_then(position)
        .ok_or_else(|| malformed("entry id"))?;
    let fields = items(fields).unwrap_or_default();
    let field = |name: &[u8]| {
        fields
            .chunks(2)
            .find(|kv| kv.first().and_then(bytes) == Some(name))
            .and_then(|kv| kv.get(1))
            .and_then(bytes)
    };
    let epoch = field(b"e").and_then(|e| std::str::from_utf8(e).ok().map(str::to_owned));
    let stored = match field(b"r") {
        None => Err(EngineError::Unavailable(format!(
            "entry at position {position} has no record"
        ))),
        Some(record) => match decode_record(record) {
            Ok((_, update)) => Ok(Arc::new(Stored::new(position, update))),
            Err(e) => Err(EngineError::Unavailable(format!(
                "entry at position {position} is damaged: {e}"
            ))),
        },
    };
    Ok(Entry {
        position,
        epoch,
        stored,
    })
}

/// The entries of the one stream an `XREAD` asked for (`Nil` on timeout).
pub(crate) fn xread_entries(v: &Value) -> Result<Vec<Entry>, EngineError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => match streams.first() {
            None => Ok(Vec::new()),
            Some(stream) => match items(stream) {
                Some([_, list]) => entries(list),
                _ => Err(malformed("XREAD stream")),
            },
        },
        // RESP3 servers answer with a map of stream → entries.
        Value::Map(streams) => match streams.first() {
            None => Ok(Vec::new()),
            Some((_, list)) => entries(list),
        },
        _ => Err(malformed("XREAD")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::records::encode_record;
    use herald_protocol::Update;

    fn entry(id: &str, record: Vec<u8>) -> Value {
        Value::Array(vec![
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(vec![
                Value::BulkString(b"r".to_vec()),
                Value::BulkString(record),
            ]),
        ])
    }

    #[test]
    fn entries_decode_to_positions_and_updates() {
        let u = Update {
            id: "a".into(),
            topics: vec!["https://t/1".into()],
            data: "hello".into(),
            event_type: None,
            retry: None,
            private: false,
        };
        let v = Value::Array(vec![entry("7-0", encode_record(&u))]);
        let got = decode_entries(&v).unwrap();
        assert_eq!(got[0].position, 7);
        assert_eq!(got[0].update.id, "a");
        assert_eq!(got[0].update.data, "hello");
    }

    #[test]
    fn foreign_or_damaged_entries_are_errors_not_panics() {
        for v in [
            Value::Array(vec![entry("7-1", vec![1])]),
            Value::Array(vec![entry("x-0", vec![1])]),
            Value::Array(vec![entry("7-0", vec![9, 9, 9])]),
            Value::Array(vec![Value::Int(3)]),
            Value::Int(1),
        ] {
            assert!(decode_entries(&v).is_err(), "{v:?}");
        }
        // The tail reads past a damaged record: it is that entry's error.
        let one = entries(&Value::Array(vec![entry("7-0", vec![9, 9, 9])])).unwrap();
        assert_eq!(one[0].position, 7);
        assert!(one[0].stored.is_err());
        assert!(decode_entries(&Value::Nil).unwrap().is_empty());
        assert!(xread_entries(&Value::Nil).unwrap().is_empty());
    }
}
