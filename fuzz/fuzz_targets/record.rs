//! Stored records (the `local` engine's values, the `redis` engine's
//! stream fields): bytes from disk decode or are refused, and what
//! decodes encodes back to the same update.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald::fuzzing::record_round_trip(data);
});
