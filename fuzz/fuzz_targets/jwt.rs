//! Draft-07 JWTs, verified with an HMAC key: any text is refused or
//! accepted, never a panic.
#![no_main]
use herald::auth::{KeyConfig, Verifier};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::new(&KeyConfig::hmac("fuzz-secret-fuzz-secret-fuzz-secret!")).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = verifier().verify(token);
});
