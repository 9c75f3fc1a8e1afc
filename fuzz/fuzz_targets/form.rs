//! Form bodies and query strings (`application/x-www-form-urlencoded`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = herald_protocol::form::parse(data) {
        // Whatever parses is text.
        for (k, v) in pairs {
            assert!(std::str::from_utf8(k.as_bytes()).is_ok());
            assert!(std::str::from_utf8(v.as_bytes()).is_ok());
        }
    }
});
