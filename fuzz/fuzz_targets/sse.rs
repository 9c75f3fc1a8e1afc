//! The SSE parsers: `herald_protocol::sse::Parser` (the client, `herald
//! tail`, the tests) and the allocation-free scanner of `herald bench`,
//! which must agree with it, fed in pieces of any size.
#![no_main]
use herald_protocol::sse::{Item, Parser};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/herald-cli/src/bench/sse.rs"]
mod scanner;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut parser = Parser::new();
    let mut reference = Vec::new();
    for piece in stream.chunks(step) {
        for item in parser.feed(piece) {
            if let Item::Event(e) = item {
                let d = e.data.into_bytes();
                reference.push(d[..d.len().min(scanner::HEAD)].to_vec());
            }
        }
    }
    let mut s = scanner::Scanner::default();
    let mut scanned = Vec::new();
    for piece in stream.chunks(step) {
        s.feed(piece, |d| scanned.push(d.to_vec()));
    }
    if std::str::from_utf8(stream).is_ok() {
        assert_eq!(scanned, reference);
    } else {
        // Invalid UTF-8 is replaced by the parser, kept by the scanner.
        assert_eq!(scanned.len(), reference.len());
    }
});
