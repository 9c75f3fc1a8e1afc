//! A strict `application/x-www-form-urlencoded` parser.
//!
//! Browsers and HTTP libraries replace bad escapes and invalid UTF-8
//! silently; a hub that did the same would store something the publisher
//! never sent. herald refuses such bodies with a clear reason instead.

/// Why a form body or query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("invalid percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("field is not valid UTF-8")]
    NotUtf8,
}

/// Parses `a=1&b=2&a=3` into ordered pairs; keys may repeat.
///
/// # Errors
/// A `%` not followed by two hex digits, or a field that does not decode
/// to UTF-8.
pub fn parse(input: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out = Vec::new();
    let mut offset = 0;
    for part in input.split(|&b| b == b'&') {
        let start = offset;
        offset += part.len() + 1;
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &[][..]),
        };
        let key = decode(k, start)?;
        let value = decode(v, start + k.len() + 1)?;
        out.push((key, value));
    }
    Ok(out)
}

fn decode(raw: &[u8], at: usize) -> Result<String, FormError> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hi = raw.get(i + 1).and_then(|b| (*b as char).to_digit(16));
                let lo = raw.get(i + 2).and_then(|b| (*b as char).to_digit(16));
                match (hi, lo) {
                    // Two hex digits always fit in a byte.
                    (Some(h), Some(l)) => bytes.push((h * 16 + l) as u8),
                    _ => return Err(FormError::BadEscape(at + i)),
                }
                i += 2;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_repeated_keys_plus_and_escapes() {
        let p = parse(b"topic=a&topic=b%2Fc&data=hello+world%0A&private").unwrap();
        assert_eq!(
            p,
            vec![
                ("topic".into(), "a".into()),
                ("topic".into(), "b/c".into()),
                ("data".into(), "hello world\n".into()),
                ("private".into(), "".into()),
            ]
        );
    }

    #[test]
    fn refuses_bad_escapes_and_bad_utf8() {
        assert_eq!(parse(b"a=%ZZ"), Err(FormError::BadEscape(2)));
        assert_eq!(parse(b"a=%4"), Err(FormError::BadEscape(2)));
        assert_eq!(parse(b"a=%FF"), Err(FormError::NotUtf8));
        assert_eq!(parse(b"a=\xff"), Err(FormError::NotUtf8));
    }

    proptest! {
        #[test]
        fn never_panics(input in any::<Vec<u8>>()) {
            let _ = parse(&input);
        }

        #[test]
        fn round_trips_encoded_pairs(pairs in proptest::collection::vec((any::<String>(), any::<String>()), 0..6)) {
            let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
            let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
            let parsed = parse(body.join("&").as_bytes()).unwrap();
            // A pair of two empty strings encodes as "=", which still parses.
            prop_assert_eq!(parsed, pairs);
        }
    }
}
