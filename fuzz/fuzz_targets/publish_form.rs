//! A publish body as a form, with the update rules (topics, id, type,
//! retry); what passes must encode to an SSE frame that parses back to it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald::fuzzing::publish_form(data);
});
