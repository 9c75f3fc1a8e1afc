//! What the CLI's integration tests share.

/// The address in `herald serve`'s "listening" log line, without the
/// colour codes that may follow it; `None` for any other line. Tests start
/// the hub on port 0 and read its address here: a port picked by the test
/// and handed over could be taken by another test's hub meanwhile.
pub fn listening_addr(line: &str) -> Option<String> {
    let (_, rest) = line
        .split_once("herald listening on http://")
        .or_else(|| line.split_once("herald listening on https://"))?;
    Some(
        rest.chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ':'))
            .collect(),
    )
}
