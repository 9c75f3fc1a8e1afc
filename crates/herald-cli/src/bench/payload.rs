//! The data of a bench update: its scheduled send time (20 decimal digits of
//! nanoseconds since the run's epoch), its sequence number (20 digits), then
//! `x` padding up to the payload size. Only digits and `x`: the value needs
//! no form encoding and no SSE escaping.

/// Bytes taken by the time and the sequence number.
pub(super) const MIN_SIZE: usize = 40;

/// Appends the data of update `seq`, scheduled at `scheduled_ns`, padded to
/// `size` bytes (at least [`MIN_SIZE`]).
pub(super) fn encode(out: &mut Vec<u8>, scheduled_ns: u64, seq: u64, size: usize) {
    push_digits(out, scheduled_ns);
    push_digits(out, seq);
    out.resize(out.len() + size.saturating_sub(MIN_SIZE), b'x');
}

fn push_digits(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [b'0'; 20];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits);
}

/// The scheduled time and sequence number of a bench update's data.
pub(super) fn decode(data: &[u8]) -> Option<(u64, u64)> {
    if data.len() < MIN_SIZE {
        return None;
    }
    Some((parse(&data[..20])?, parse(&data[20..40])?))
}

fn parse(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut out = Vec::new();
        encode(&mut out, 1_234_567_890_123, 42, 100);
        assert_eq!(out.len(), 100);
        assert!(out[40..].iter().all(|&b| b == b'x'));
        assert_eq!(decode(&out), Some((1_234_567_890_123, 42)));
        let mut out = Vec::new();
        encode(&mut out, u64::MAX, 0, 10);
        assert_eq!(out.len(), MIN_SIZE);
        assert_eq!(decode(&out), Some((u64::MAX, 0)));
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(&[b'9'; 40]), None);
    }
}
