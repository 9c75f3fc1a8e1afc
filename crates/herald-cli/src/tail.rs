//! `herald tail`: follow topic selectors (draft-07) or topic matchers
//! (draft-08) on a hub and print their events.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use herald_protocol::sse::{Event, Item, Parser};
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use reqwest::{Response, Url};

use crate::publish::{cause, client, parse_hub_url, refused, unreachable_hub, DEFAULT_HUB};
use crate::settings::parse_duration;

/// Reconnection delay when the stream sets none.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Longest delay the backoff grows to (unless the stream asks for more).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How events are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `<id>\t<type>\t<data>`, with `\`, newlines, CR and tabs escaped as
    /// `\\`, `\n`, `\r` and `\t`.
    Text,
    /// One JSON object per line: {"id", "type", "data"}.
    Json,
}

/// Follow topic selectors and print each event on one line; reconnects
/// (resuming from the last event id) when the connection drops.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hub URL; a bare host (or path `/`) gets `/.well-known/mercure`.
    #[arg(long, value_name = "URL", env = "HERALD_HUB_URL", default_value = DEFAULT_HUB, value_parser = parse_hub_url)]
    hub: Url,
    /// Draft-07 topic selector to follow (repeatable) [default: `*` when
    /// no matcher is given].
    #[arg(long = "topic", value_name = "SELECTOR", conflicts_with_all = ["matches", "patterns"])]
    topics: Vec<String>,
    /// Draft-08 exact topic matcher to follow (repeatable).
    #[arg(long = "match", value_name = "TOPIC")]
    matches: Vec<String>,
    /// Draft-08 URL pattern to follow (repeatable).
    #[arg(long = "match-urlpattern", value_name = "PATTERN")]
    patterns: Vec<String>,
    /// JWT allowing the subscription (sent as `Authorization: Bearer`).
    #[arg(long, value_name = "JWT", env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Resume after this event id (`earliest` replays the whole history).
    #[arg(long, value_name = "ID")]
    last_event_id: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Exit after this many events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Exit after this long, e.g. 10s, 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    timeout: Option<Duration>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let timeout = args.timeout;
    let deadline = async move {
        match timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let interrupted = async {
        // If the handler cannot be installed, Ctrl-C keeps its default effect.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = Tail::new(args).follow() => r,
        () = interrupted => Ok(()),
        () = deadline => Ok(()),
    }
}

/// Why a connection ended.
enum End {
    /// `--count` reached, or stdout closed: exit successfully.
    Done,
    /// The stream broke: reconnect.
    Lost(String),
}

struct Tail {
    args: Args,
    last_id: Option<String>,
    retry: Duration,
    printed: u64,
}

impl Tail {
    fn new(args: Args) -> Self {
        Self {
            last_id: args.last_event_id.clone().filter(|id| !id.is_empty()),
            retry: DEFAULT_RETRY,
            printed: 0,
            args,
        }
    }

    async fn follow(mut self) -> anyhow::Result<()> {
        let client = client(None)?;
        let mut connected_once = false;
        let mut failures: u32 = 0;
        loop {
            let why = match self.request(&client).send().await {
                Err(e) if !connected_once => return Err(unreachable_hub(&self.args.hub, &e)),
                Err(e) => format!("cannot reach the hub: {}", cause(&e)),
                Ok(res) if res.status().is_client_error() => return Err(refused(res).await),
                Ok(res) if !res.status().is_success() => refused(res).await.to_string(),
                Ok(res) => {
                    connected_once = true;
                    failures = 0;
                    match self.read(res).await? {
                        End::Done => return Ok(()),
                        End::Lost(why) => why,
                    }
                }
            };
            failures = failures.saturating_add(1);
            let delay = backoff(self.retry, failures);
            eprintln!("herald: {why}; reconnecting in {}", human(delay));
            tokio::time::sleep(delay).await;
        }
    }

    fn request(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut url = self.args.hub.clone();
        {
            let mut q = url.query_pairs_mut();
            let draft08 = !self.args.matches.is_empty() || !self.args.patterns.is_empty();
            for m in &self.args.matches {
                q.append_pair("match", m);
            }
            for m in &self.args.patterns {
                q.append_pair("match_urlpattern", m);
            }
            for t in &self.args.topics {
                q.append_pair("topic", t);
            }
            if !draft08 && self.args.topics.is_empty() {
                q.append_pair("topic", "*");
            }
            // A header can only carry visible ASCII; other ids go in the query.
            if let Some(id) = self.last_id.as_deref().filter(|id| !is_header_safe(id)) {
                q.append_pair(
                    if draft08 {
                        "last_event_id"
                    } else {
                        "lastEventID"
                    },
                    id,
                );
            }
        }
        let mut req = client
            .get(url)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(t) = &self.args.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = self.last_id.as_deref().filter(|id| is_header_safe(id)) {
            req = req.header("Last-Event-ID", id);
        }
        req
    }

    async fn read(&mut self, res: Response) -> anyhow::Result<End> {
        let mut parser = Parser::new();
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(End::Lost(format!("connection lost: {}", cause(&e)))),
            };
            for item in parser.feed(&chunk) {
                let Item::Event(event) = item else { continue };
                if let Some(ms) = event.retry {
                    self.retry = Duration::from_millis(ms);
                }
                if !event.id.is_empty() {
                    self.last_id = Some(event.id.clone());
                }
                if !self.print(&event)? {
                    return Ok(End::Done);
                }
                self.printed += 1;
                if self.args.count == Some(self.printed) {
                    return Ok(End::Done);
                }
            }
        }
        Ok(End::Lost("the hub closed the connection".into()))
    }

    /// Prints one event; `false` when stdout is closed (e.g. `| head -1`).
    fn print(&self, event: &Event) -> anyhow::Result<bool> {
        let line = format_event(self.args.format, event);
        let mut out = std::io::stdout().lock();
        match out
            .write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
        {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
        }
    }
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    data: &'a str,
}

fn format_event(format: Format, e: &Event) -> String {
    match format {
        Format::Text => format!(
            "{}\t{}\t{}",
            escape(&e.id),
            escape(&e.event),
            escape(&e.data)
        ),
        Format::Json => serde_json::to_string(&JsonLine {
            id: &e.id,
            event_type: &e.event,
            data: &e.data,
        })
        .expect("strings always serialize"),
    }
}

/// Escapes a field so an event fits on one tab-separated line.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

fn is_header_safe(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The delay before reconnection attempt `failures` (1-based): the stream's
/// retry, doubled on each consecutive failure, capped.
fn backoff(retry: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    retry.saturating_mul(factor).min(MAX_BACKOFF.max(retry))
}

fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, ty: &str, data: &str) -> Event {
        Event {
            id: id.into(),
            event: ty.into(),
            data: data.into(),
            retry: None,
        }
    }

    #[test]
    fn text_format_escapes_to_one_line() {
        let e = event("urn:1", "message", "a\nb\tc\\d\re");
        assert_eq!(
            format_event(Format::Text, &e),
            "urn:1\tmessage\ta\\nb\\tc\\\\d\\re"
        );
        assert_eq!(escape("plain {\"json\": 1}"), "plain {\"json\": 1}");
    }

    #[test]
    fn json_format_keeps_field_order_and_raw_data() {
        let e = event("1", "x", "a\nb");
        assert_eq!(
            format_event(Format::Json, &e),
            r#"{"id":"1","type":"x","data":"a\nb"}"#
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), 1), s(1));
        assert_eq!(backoff(s(1), 2), s(2));
        assert_eq!(backoff(s(1), 4), s(8));
        assert_eq!(backoff(s(1), 100), MAX_BACKOFF);
        // A stream asking for a longer retry is honoured.
        assert_eq!(backoff(s(60), 3), s(60));
        assert_eq!(
            backoff(Duration::from_millis(200), 1),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_timeout("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_timeout("ten").is_err());
    }

    #[test]
    fn last_event_id_goes_in_header_or_query() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::parse_from(["t", "--hub", "http://h:1", "--last-event-id", "urn:1"]);
        let mut tail = Tail::new(cli.args);
        let client = reqwest::Client::new();
        let req = tail.request(&client).build().unwrap();
        assert_eq!(req.url().as_str(), "http://h:1/.well-known/mercure?topic=*");
        assert_eq!(req.headers()["last-event-id"], "urn:1");

        tail.last_id = Some("événement".into());
        let req = tail.request(&client).build().unwrap();
        assert!(req.headers().get("last-event-id").is_none());
        assert!(req
            .url()
            .as_str()
            .ends_with("&lastEventID=%C3%A9v%C3%A9nement"));

        // Draft-08 matchers, and the draft-08 resume parameter.
        let cli = Cli::parse_from([
            "t",
            "--hub",
            "http://h:1",
            "--match",
            "https://a/1",
            "--match-urlpattern",
            "https://a/:id",
        ]);
        let mut tail = Tail::new(cli.args);
        tail.last_id = Some("événement".into());
        let req = tail.request(&client).build().unwrap();
        assert_eq!(
            req.url().as_str(),
            "http://h:1/.well-known/mercure?match=https%3A%2F%2Fa%2F1&match_urlpattern=https%3A%2F%2Fa%2F%3Aid&last_event_id=%C3%A9v%C3%A9nement"
        );
        assert!(Cli::try_parse_from(["t", "--topic", "a", "--match", "b"]).is_err());
    }
}
