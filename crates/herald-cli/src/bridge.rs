//! `herald bridge`: events from where they already are, published to a
//! hub. One bridge runs in the foreground against a hub URL and publishes
//! over HTTP, so every update passes the hub's own authorization and
//! validation, as any publisher's does.
//!
//! The first source is PostgreSQL ([`postgres`]): `LISTEN`/`NOTIFY`
//! channels (fire-and-forget, as NOTIFY is), and an outbox table whose
//! rows are removed only once the hub has appended them (at least once,
//! across restarts of the bridge and of the hub; never twice, since each
//! row's update id is its row's key and the hub refuses an id it holds).
//!
//! A source event becomes an update by a [`Mapping`]: a topic template
//! over the channel and the payload's fields, and the payload taken as
//! the data or as a JSON update. An event that maps to no valid update is
//! a bad payload: it goes to the dead-letter log (target
//! `herald::dead_letter`, with its reason) and the bridge goes on. A
//! source that is down or refuses the bridge is retried with backoff.

pub mod postgres;
pub mod shared;

/// Bridge events from a source into a hub.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    source: Source,
    /// Log filter (`RUST_LOG` syntax); bad payloads are logged at `error`
    /// under the target `herald::dead_letter`.
    #[arg(
        long,
        value_name = "FILTER",
        env = "HERALD_LOG",
        default_value = "info",
        global = true
    )]
    log: String,
}

#[derive(clap::Subcommand, Debug)]
enum Source {
    /// PostgreSQL: NOTIFY channels (`--channel`), or an outbox table
    /// (`--outbox`).
    Postgres(postgres::Args),
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::serve::init_logs(&args.log, false)?;
    match args.source {
        Source::Postgres(a) => postgres::run(a).await,
    }
}
