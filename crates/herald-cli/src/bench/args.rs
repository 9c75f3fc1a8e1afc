//! The arguments of `herald bench` ([`Args`]) and their parsers: the
//! bottom of the bench modules, which every phase reads its settings from.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use reqwest::Url;

use super::http::Flavor;
use super::layout::Layout;
use super::payload;
use crate::publish::{parse_hub_url, DEFAULT_HUB};
use crate::settings::parse_duration;
use crate::token;

/// Measure a hub: N subscribers and publishers at a fixed or unlimited rate.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Latency runs from each update's scheduled send time to its receipt, so queueing in an \
overloaded hub (or behind a slow publisher) counts. The report shows the generator's own \
CPU use and warns when it is saturated: then the figures understate the hub.

Plain HTTP only: run it on the hub's machine, or next to it. With a 127.x.x.x hub the \
subscribers are spread over --source-addrs loopback addresses, so more than the ~28k \
connections one address has ports for can be opened.

Example:
  herald bench --key $SECRET --subscribers 1000 --publishers 4 --rate 0 --pid $(pidof herald)")]
pub struct Args {
    /// Hub URL; a bare host (or path `/`) gets `/.well-known/mercure`.
    /// Subscribers `GET` it with `?topic=<form-encoded topic>` appended,
    /// whatever the --flavor (one `topic=` per topic when each carries
    /// several: see --topics).
    #[arg(long, value_name = "URL", env = "HERALD_HUB_URL", default_value = DEFAULT_HUB, value_parser = parse_hub_url)]
    pub(super) hub: Url,
    /// How updates are published: to a Mercure hub, to nginx + Nchan or to
    /// Pushpin (to measure herald against them). Only the publication
    /// request changes; subscribing and every measure stay the same.
    #[arg(long, value_enum, value_name = "FLAVOR", default_value_t = Flavor::Mercure)]
    pub(super) flavor: Flavor,
    /// Where publications go [default: the hub URL]. Needed by the nchan
    /// flavor (the `nchan_publisher` location, e.g.
    /// http://127.0.0.1:8092/pub) and the pushpin flavor (its control API,
    /// e.g. http://127.0.0.1:5561/publish/). Several, comma-separated (or
    /// the flag repeated): publisher k publishes to URL k modulo their
    /// number, e.g. the nodes of a herald cluster.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub(super) publish_url: Vec<Url>,
    /// Number of subscribers (one connection each, or one HTTP/2 stream
    /// each with --http2).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(super) subscribers: usize,
    /// Subscribers are HTTP/2 streams over cleartext TCP (h2c with prior
    /// knowledge), --streams-per-connection of them per connection, instead
    /// of one HTTP/1.1 connection each. A --slow stream is one whose body
    /// is never read: HTTP/2 flow control stops it. Mercure flavor only.
    #[arg(long, conflicts_with = "websocket")]
    pub(super) http2: bool,
    /// With --http2: streams sharing each connection (herald takes up to
    /// 1,024 at once on one connection).
    #[arg(long, value_name = "N", default_value_t = 100, requires = "http2", value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) streams_per_connection: u32,
    /// Subscribers are WebSockets on the hub's URL (same query and token),
    /// each update one JSON text message, pings answered, instead of
    /// event streams. Mercure flavor only.
    #[arg(long)]
    pub(super) websocket: bool,
    /// Number of topics; subscribers and updates are spread over them
    /// round-robin. With more topics than subscribers, each subscriber
    /// subscribes to several (one request with a `topic=` parameter each,
    /// mercure flavor only), so every topic has exactly one subscriber.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) topics: u64,
    /// Topics are this prefix followed by their number.
    #[arg(long, value_name = "URI", default_value = "https://bench.herald/t/")]
    pub(super) topic_prefix: String,
    /// Number of publishers (one keep-alive connection each, one request in flight).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(super) publishers: u16,
    /// Percentage of subscribers that never read their stream (stalled
    /// clients, with a 4 KiB receive buffer). They are left out of the
    /// delivery and latency figures; the hub's memory shows what they cost.
    #[arg(long, value_name = "PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub(super) slow: u8,
    /// New subscriptions per second opened (each closed once the hub
    /// answers) while the load runs, with the subscribers' token: the
    /// latency figures then show what connection churn costs existing
    /// subscribers.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0.0, value_parser = parse_rate)]
    pub(super) churn: f64,
    /// Updates per publication request: above 1, herald's batch extension
    /// (a JSON array POSTed to the hub; mercure flavor only).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(super) batch: u32,
    /// Updates per second, all publishers together; 0: as fast as the
    /// publishers' connections allow.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 100.0, value_parser = parse_rate)]
    pub(super) rate: f64,
    /// How long to measure (after the warm-up), e.g. 10, 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = parse_positive_duration)]
    pub(super) duration: Duration,
    /// Publishing before the measurement starts; its latencies are not recorded.
    #[arg(long, value_name = "DURATION", default_value = "1", value_parser = parse_any_duration)]
    pub(super) warmup: Duration,
    /// How long to wait after the last publication for updates still in flight.
    #[arg(long, value_name = "DURATION", default_value = "2", value_parser = parse_any_duration)]
    pub(super) grace: Duration,
    /// Bytes of data per update (at least 40: send time and sequence number).
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = clap::value_parser!(u64).range(payload::MIN_SIZE as u64..=16 * 1024 * 1024))]
    pub(super) payload_size: u64,
    /// JWT allowing publication to the bench topics (optional with the nchan
    /// and pushpin flavors).
    #[arg(long, value_name = "JWT", env = "HERALD_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// Without --token: key to mint a publisher token with (HMAC secret, or
    /// a private key as PEM text or a path).
    #[arg(
        long,
        value_name = "KEY",
        env = "HERALD_PUBLISHER_JWT",
        hide_env_values = true
    )]
    pub(super) key: Option<String>,
    /// Algorithm of --key and --subscriber-key.
    #[arg(long, value_name = "ALG", default_value = "HS256", value_parser = token::parse_alg)]
    pub(super) alg: Algorithm,
    /// JWT sent by every subscriber [default: none, anonymous].
    #[arg(long, value_name = "JWT", hide_env_values = true)]
    pub(super) subscriber_token: Option<String>,
    /// Without --subscriber-token: key to mint a subscriber token with.
    #[arg(
        long,
        value_name = "KEY",
        env = "HERALD_SUBSCRIBER_JWT",
        hide_env_values = true
    )]
    pub(super) subscriber_key: Option<String>,
    /// With a loopback hub: bind subscribers to 127.0.0.1 ..= 127.0.0.N in
    /// turn, each with its own ~28k ephemeral ports.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..))]
    pub(super) source_addrs: u8,
    /// New connections per second; 0: as fast as possible.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0.0, value_parser = parse_rate)]
    pub(super) connect_rate: f64,
    /// Connections being opened at once, at most (the default stays under
    /// the 128-connection listen backlog common among servers).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) connect_concurrency: u32,
    /// Give up on a connection not answered within this time.
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = parse_positive_duration)]
    pub(super) connect_timeout: Duration,
    /// Pid of a local hub process, to report its memory (RSS) and CPU use;
    /// several, comma-separated, for a hub made of several processes
    /// (their memory and CPU use are summed; the report names the first).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub(super) pid: Vec<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub(super) json: Option<PathBuf>,
    /// Only connect the subscribers and hold them for --duration: measures
    /// memory per idle connection and idle CPU; nothing is published.
    #[arg(long)]
    pub(super) idle: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub(super) quiet: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("invalid rate {s:?}: expected a number >= 0")),
    }
}

fn parse_any_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_any_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

impl Args {
    /// How the topics are spread over the subscriptions: the one place
    /// both the subscribers and the publishers' tally take it from.
    pub(super) fn layout(&self) -> Layout {
        Layout::new(self.topics, self.subscribers)
    }

    /// TCP connections the subscribers open: one each, or one per
    /// --streams-per-connection with --http2.
    pub(super) fn subscriber_connections(&self) -> usize {
        if self.http2 {
            self.subscribers
                .div_ceil(self.streams_per_connection.max(1) as usize)
        } else {
            self.subscribers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::parse_from(["b", "--rate", "0", "--duration", "500ms", "--warmup", "0"]);
        assert_eq!(cli.args.rate, 0.0);
        assert_eq!(cli.args.duration, Duration::from_millis(500));
        assert_eq!(cli.args.subscribers, 100);
        assert!(Cli::try_parse_from(["b", "--duration", "0"]).is_err());
        assert!(Cli::try_parse_from(["b", "--rate", "-1"]).is_err());
        assert!(Cli::try_parse_from(["b", "--payload-size", "10"]).is_err());
        assert_eq!(cli.args.flavor, Flavor::Mercure);
        assert!(cli.args.pid.is_empty());
        let cli = Cli::parse_from([
            "b",
            "--flavor",
            "pushpin",
            "--publish-url",
            "http://127.0.0.1:5561/publish/",
            "--pid",
            "10,11",
            "--pid",
            "12",
        ]);
        assert_eq!(cli.args.flavor, Flavor::Pushpin);
        assert_eq!(cli.args.pid, [10, 11, 12]);
        assert_eq!(
            cli.args.publish_url[0].as_str(),
            "http://127.0.0.1:5561/publish/"
        );
        assert!(Cli::try_parse_from(["b", "--flavor", "ably"]).is_err());
        assert!(!cli.args.http2 && !cli.args.websocket);
        assert_eq!(cli.args.subscriber_connections(), 100);
    }

    #[test]
    fn transports() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::parse_from(["b", "--http2", "--subscribers", "250"]);
        assert!(cli.args.http2);
        assert_eq!(cli.args.streams_per_connection, 100);
        assert_eq!(cli.args.subscriber_connections(), 3);
        let cli = Cli::parse_from(["b", "--http2", "--streams-per-connection", "1000"]);
        assert_eq!(cli.args.subscriber_connections(), 1);
        assert!(Cli::parse_from(["b", "--websocket"]).args.websocket);
        assert!(Cli::try_parse_from(["b", "--http2", "--websocket"]).is_err());
        assert!(Cli::try_parse_from(["b", "--streams-per-connection", "10"]).is_err());
        assert!(Cli::try_parse_from(["b", "--http2", "--streams-per-connection", "0"]).is_err());
    }
}
