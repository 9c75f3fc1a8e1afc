//! Logs of the long-running commands (`serve`, `bridge`): a filter in
//! `RUST_LOG` syntax, text or JSON lines on stderr.

use anyhow::Context as _;

pub fn init(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}
