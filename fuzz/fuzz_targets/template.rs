//! URI templates (draft-07 topic selectors), matched against topics. The
//! input is a template and a topic separated by a NUL byte.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, topic) = text
        .split_once('\0')
        .unwrap_or((text, "https://example.com/a"));
    if let Ok(t) = herald_protocol::template::UriTemplate::parse(template) {
        let _ = t.matches(topic);
        let _ = t.has_expressions();
    }
    if let Ok(s) = herald_protocol::Selector::parse(template) {
        let _ = s.as_str();
    }
});
