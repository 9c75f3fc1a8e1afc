//! The `herald` command: a thin layer over the `herald` library.

mod bench;
mod bridge;
mod logs;
mod publish;
mod serve;
mod settings;
mod tail;
mod token;

use clap::{Parser, Subcommand};

/// herald: a real-time push hub (Mercure protocol over Server-Sent Events).
#[derive(Parser, Debug)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub.
    Serve(Box<serve::Args>),
    /// Publish one update to a hub.
    Publish(publish::Args),
    /// Follow topics on a hub and print their events.
    Tail(tail::Args),
    /// Mint a JWT for publishing and subscribing.
    Token(token::Args),
    /// Measure a hub: subscribers, publishers, deliveries/s and latency.
    Bench(bench::Args),
    /// Publish events from a database or broker to a hub, in the foreground.
    Bridge(bridge::Args),
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::Token(args) => token::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Bridge(args) => bridge::run(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("herald: {e:#}");
        std::process::exit(1);
    }
}
