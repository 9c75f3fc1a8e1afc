//! The request-head classifier: the first bytes of every connection.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald::fuzzing::classify_head(data);
});
