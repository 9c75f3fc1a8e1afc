//! A batch publish body (a JSON array of updates), with the same rules.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald::fuzzing::publish_batch(data);
});
