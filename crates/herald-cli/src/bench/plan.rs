//! Before the first connection: the arguments checked against each other
//! and against the machine (file descriptors, ephemeral ports, `--pid`),
//! the hub resolved, tokens minted, and the subscription request of each
//! slot built.
//!
//! Everything that can refuse a run does so here, so a mistake costs no
//! connection to the hub, and a run that starts has what it needs.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::bail;
use herald::auth::MercureClaim;

use super::args::Args;
use super::h2c;
use super::http::{Flavor, Target};
use super::layout::Layout;
use super::report::fmt_count;
use super::stats::Proc;
use super::subscriber::Transport;
use crate::token;

/// What the run needs from its arguments, checked.
pub(super) struct Plan {
    /// The open-files limit in force, raised as far as allowed.
    pub fd_limit: Option<u64>,
    /// Where subscribers connect.
    pub target: Target,
    /// Where publications go.
    /// Where publications go: publisher k uses target k modulo their number.
    pub publish_targets: Vec<Target>,
    pub publish_token: Option<String>,
    pub subscribe_token: Option<String>,
    /// The hub's processes (`--pid`).
    pub hub_proc: Option<Proc>,
    /// Topic names, by number.
    pub topics: Vec<String>,
    /// Local addresses subscribers bind to, cycling; empty: the kernel's
    /// choice.
    pub sources: Vec<IpAddr>,
    pub layout: Layout,
    /// Found while planning, for the report.
    pub warnings: Vec<String>,
    /// With --websocket, each slot's `Sec-WebSocket-Key`.
    websocket_keys: Vec<String>,
}

impl Plan {
    /// Checks the arguments, resolves the hub and the publication target,
    /// mints the tokens and checks `--pid`, in that order: the first
    /// problem found is the error.
    pub async fn new(args: &Args) -> anyhow::Result<Self> {
        let fd_limit = check_fd_limit(args)?;
        if args.idle && args.subscribers == 0 {
            bail!("--idle needs at least one subscriber");
        }

        let target = Target::resolve(&args.hub).await?;
        if (args.http2 || args.websocket) && args.flavor != Flavor::Mercure {
            bail!(
                "--{} subscribes the way herald does: it needs --flavor mercure",
                if args.http2 { "http2" } else { "websocket" }
            );
        }
        if args.batch > 1 && args.flavor != Flavor::Mercure {
            bail!("--batch is herald's extension: it needs --flavor mercure");
        }
        let mut publish_targets = Vec::with_capacity(args.publish_url.len());
        for url in &args.publish_url {
            publish_targets.push(Target::resolve(url).await?);
        }
        match args.flavor {
            _ if !publish_targets.is_empty() => {}
            flavor if flavor == Flavor::Mercure || args.idle => {
                publish_targets.push(target.clone())
            }
            flavor => bail!(
                "--flavor {} needs --publish-url: where to POST updates",
                format!("{flavor:?}").to_lowercase()
            ),
        };
        let publish_token = if args.idle {
            None
        } else {
            publisher_token(args)?
        };
        let subscribe_token = subscriber_token(args)?;
        let hub_proc = hub_processes(&args.pid)?;
        let topics: Vec<String> = (0..args.topics)
            .map(|i| format!("{}{i}", args.topic_prefix))
            .collect();
        let sources = target.source_addrs(args.source_addrs);
        let warnings = port_warning(args, &sources).into_iter().collect();
        let layout = args.layout();
        let websocket_keys = if args.websocket {
            (0..layout.slots())
                .map(|_| tungstenite::handshake::client::generate_key())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            fd_limit,
            target,
            publish_targets,
            publish_token,
            subscribe_token,
            hub_proc,
            topics,
            sources,
            layout,
            warnings,
            websocket_keys,
        })
    }

    /// How the subscribers talk to the hub (see [`Transport`]).
    pub fn transport(&self, args: &Args) -> anyhow::Result<Transport> {
        if args.http2 {
            let targets: Vec<String> = (0..self.layout.slots())
                .map(|slot| self.target.subscribe_target(self.slot_topics(slot)))
                .collect();
            let pool = h2c::Pool::new(
                &self.target,
                &targets,
                self.subscribe_token.as_deref(),
                args.subscribers,
                args.streams_per_connection as usize,
            )?;
            Ok(Transport::Http2(pool))
        } else if args.websocket {
            let accepts = self
                .websocket_keys
                .iter()
                .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()))
                .collect();
            Ok(Transport::WebSocket { accepts })
        } else {
            Ok(Transport::Http1)
        }
    }

    /// The topic names of subscription slot `slot`.
    fn slot_topics(&self, slot: usize) -> impl Iterator<Item = &str> {
        self.layout
            .topics_of(slot)
            .map(|t| self.topics[t as usize].as_str())
    }

    /// The subscription request of each slot of the layout. Several topics
    /// per request need the mercure flavor, and every request must fit in
    /// the request head herald accepts.
    pub fn subscribe_requests(&self, args: &Args) -> anyhow::Result<Vec<Vec<u8>>> {
        let layout = self.layout;
        let token = self.subscribe_token.as_deref();
        let per = layout.max_topics_per_slot();
        if per > 1 && args.flavor != Flavor::Mercure {
            bail!(
                "--topics {} over {} subscribers puts up to {per} topics in each subscription, \
                 as several topic= parameters only a Mercure hub takes: with --flavor {}, use \
                 at most {} topics (or more subscribers)",
                args.topics,
                args.subscribers,
                format!("{:?}", args.flavor).to_lowercase(),
                args.subscribers
            );
        }
        let requests: Vec<Vec<u8>> = (0..layout.slots())
            .map(|slot| match self.websocket_keys.get(slot) {
                Some(key) => self
                    .target
                    .websocket_request(self.slot_topics(slot), token, key),
                None => self.target.subscribe_request(self.slot_topics(slot), token),
            })
            .collect();
        let largest = requests.iter().map(Vec::len).max().unwrap_or(0);
        if largest > HERALD_MAX_HEAD {
            bail!(
                "--topics {} over {} subscribers puts up to {per} topics in each subscription: \
                 requests of up to {} bytes, more than the {} KiB request head herald accepts; \
                 use more subscribers (fewer topics each) or a shorter --topic-prefix",
                args.topics,
                args.subscribers,
                fmt_count(largest as u64),
                HERALD_MAX_HEAD / 1024
            );
        }
        Ok(requests)
    }
}

/// Raises the open-files limit (see [`raise_fd_limit`]) and refuses a run
/// that needs more descriptors than it allows; returns the limit in force.
fn check_fd_limit(args: &Args) -> anyhow::Result<Option<u64>> {
    let publishers = usize::from(args.publishers);
    let fd_limit = raise_fd_limit();
    let connections =
        args.subscriber_connections() as u64 + if args.idle { 0 } else { publishers as u64 };
    let needed = connections + 32;
    if let Some(limit) = fd_limit {
        if needed > limit {
            bail!(
                "{connections} connections need about {needed} file descriptors, but this \
                 process may open only {limit} (its hard limit): raise it (ulimit -Hn) or \
                 use fewer subscribers"
            );
        }
    }
    Ok(fd_limit)
}

/// A warning when the subscribers and publishers need more ephemeral
/// ports than `sources` source addresses have (one when empty).
fn port_warning(args: &Args, sources: &[IpAddr]) -> Option<String> {
    let publishers = usize::from(args.publishers);
    let capacity = port_capacity(sources.len().max(1))?;
    let connections = args.subscriber_connections() + publishers;
    (connections as u64 > capacity).then(|| {
        format!(
            "{connections} connections exceed the ~{capacity} ephemeral ports available{}",
            if sources.is_empty() {
                " (source address spreading needs a 127.x.x.x hub)"
            } else {
                ""
            }
        )
    })
}

/// Raises the soft limit on open files to the hard limit (or the kernel's
/// ceiling, `fs.nr_open`, when the hard limit is unlimited); returns the
/// limit in force.
fn raise_fd_limit() -> Option<u64> {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    rlimit::increase_nofile_limit(ceiling).ok().or_else(|| {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    })
}

/// The hub's processes (`--pid`), once each is known to exist.
fn hub_processes(pids: &[u32]) -> anyhow::Result<Option<Proc>> {
    for &pid in pids {
        if !Proc::pid(pid).exists() {
            bail!("no process with pid {pid} (--pid)");
        }
    }
    Ok((!pids.is_empty()).then(|| Proc::pids(pids)))
}

/// Ephemeral ports available to `sources` source addresses.
fn port_capacity(sources: usize) -> Option<u64> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = range.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    Some((hi.saturating_sub(lo) + 1) * sources as u64)
}

/// The publishers' token: required by Mercure, optional elsewhere.
fn publisher_token(args: &Args) -> anyhow::Result<Option<String>> {
    match (&args.token, &args.key) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(key)) => {
            let cfg = token::key_config(key, args.alg)?;
            let claim = MercureClaim {
                publish: Some(vec!["*".into()]),
                ..Default::default()
            };
            token::mint(&cfg, claim, token_ttl(args)).map(Some)
        }
        (None, None) if args.flavor != Flavor::Mercure => Ok(None),
        (None, None) => bail!(
            "publishing needs a token: pass --token (or set HERALD_TOKEN), or --key (or \
             set HERALD_PUBLISHER_JWT) to mint one; or measure idle connections with --idle"
        ),
    }
}

/// The subscribers' token, if any: anonymous by default.
fn subscriber_token(args: &Args) -> anyhow::Result<Option<String>> {
    match (&args.subscriber_token, &args.subscriber_key) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(key)) => {
            let cfg = token::key_config(key, args.alg)?;
            let claim = MercureClaim {
                subscribe: Some(vec!["*".into()]),
                ..Default::default()
            };
            token::mint(&cfg, claim, token_ttl(args)).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Largest request head herald reads for a subscription (its
/// `http::direct::MAX_HEAD`; it answers 431 beyond).
const HERALD_MAX_HEAD: usize = 64 * 1024;
/// Request heads many servers refuse beyond (nginx's default
/// `large_client_header_buffers` holds request lines of up to 8 KiB).
const COMMON_MAX_HEAD: usize = 8 * 1024;
/// Topic selectors herald takes in one subscription unless started with a
/// larger `--max-selectors`.
const HERALD_MAX_SELECTORS: u64 = 64;

/// Why a hub might refuse every subscription of this layout, if it might.
pub(super) fn subscription_hint(layout: Layout, requests: &[Vec<u8>]) -> String {
    let per = layout.max_topics_per_slot();
    let largest = requests.iter().map(Vec::len).max().unwrap_or(0);
    let mut why = Vec::new();
    if per > HERALD_MAX_SELECTORS {
        why.push(format!(
            "each subscription carries up to {per} topics, and herald takes at most \
             {HERALD_MAX_SELECTORS} unless started with a larger --max-selectors"
        ));
    }
    if largest > COMMON_MAX_HEAD {
        why.push(format!(
            "subscription requests take up to {} bytes, and many servers refuse request \
             heads above {} KiB",
            fmt_count(largest as u64),
            COMMON_MAX_HEAD / 1024
        ));
    }
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({})", why.join("; "))
    }
}

/// Minted tokens outlive the run comfortably, whatever connecting takes.
fn token_ttl(args: &Args) -> Duration {
    args.warmup + args.duration + args.grace + Duration::from_secs(3600)
}
