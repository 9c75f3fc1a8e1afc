//! Just enough HTTP/1.1 for the load generator: request text, response heads
//! and chunked bodies. Thousands of subscribers cannot each afford a full
//! HTTP client, and the publishers' per-request cost must stay far below the
//! hub's, so both sides speak the protocol directly over TCP.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context};
use reqwest::Url;

/// Largest response head accepted.
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Where the hub is and how to address it.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// The address connected to.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// Path of the hub endpoint, without query.
    pub path: String,
    /// The query the URL already had (kept on every request), if any.
    pub query: Option<String>,
}

impl Target {
    /// Resolves the hub URL. Only plain `http://` is spoken (HTTP/1.1,
    /// h2c with prior knowledge, or WebSocket upgrades).
    pub async fn resolve(url: &Url) -> anyhow::Result<Self> {
        if url.scheme() != "http" {
            bail!(
                "herald bench speaks plain HTTP only (got {}://): run it next to \
                 the hub, on its plain-HTTP address",
                url.scheme()
            );
        }
        let host = url.host_str().context("the hub URL has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .collect();
        // Prefer IPv4: loopback source spreading works over 127.0.0.0/8.
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .with_context(|| format!("{host} resolves to no address"))?;
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        Ok(Self {
            addr,
            host: host_header,
            path: url.path().to_owned(),
            query: url.query().filter(|q| !q.is_empty()).map(str::to_owned),
        })
    }

    /// The local addresses subscriber sockets are bound to, cycling: with
    /// an IPv4 loopback hub, `127.0.0.1 ..= 127.0.0.n`, so each source
    /// address has its own range of ephemeral ports. Elsewhere, none (the
    /// kernel chooses).
    pub fn source_addrs(&self, n: u8) -> Vec<IpAddr> {
        match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => (1..=n.max(1))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `path?query&` or `path?`: the start of a request target that a
    /// parameter is appended to.
    fn target_prefix(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}&", self.path),
            None => format!("{}?", self.path),
        }
    }

    /// The request target (path and query) subscribing to `topics` (at
    /// least one): a `topic=` parameter each, as Mercure allows.
    pub fn subscribe_target<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> String {
        let mut target = self.target_prefix();
        for (i, topic) in topics.into_iter().enumerate() {
            if i > 0 {
                target.push('&');
            }
            target.push_str("topic=");
            form_encode(topic, &mut target);
        }
        target
    }

    /// The complete subscription request for `topics` (at least one): a
    /// `topic=` parameter each, as Mercure allows.
    pub fn subscribe_request<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
        token: Option<&str>,
    ) -> Vec<u8> {
        let target = self.subscribe_target(topics);
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\nUser-Agent: {}\r\n",
            self.host,
            user_agent()
        );
        if let Some(t) = token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    /// The WebSocket upgrade request for `topics`: the same target and
    /// token as [`Self::subscribe_request`], with `key` as its
    /// `Sec-WebSocket-Key`.
    pub fn websocket_request<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
        token: Option<&str>,
        key: &str,
    ) -> Vec<u8> {
        let target = self.subscribe_target(topics);
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\nUser-Agent: {}\r\n",
            self.host,
            user_agent()
        );
        if let Some(t) = token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    /// The publication request for `topic` in `flavor`, less its data.
    /// `token` (if any) is sent as a bearer token.
    ///
    /// The topic travels form-encoded, exactly as in the subscription's
    /// query, so a server that takes its channel from the raw query (Nchan's
    /// `$arg_topic`, the Pushpin origin's `Grip-Channel`) sees the same
    /// name on both sides.
    pub fn publish_template(
        &self,
        flavor: Flavor,
        topic: &str,
        token: Option<&str>,
    ) -> PublishTemplate {
        let mut topic_enc = String::new();
        form_encode(topic, &mut topic_enc);
        let plain = match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        let (target, content_type, body_prefix, body_suffix) = match flavor {
            Flavor::Mercure => (
                plain,
                "application/x-www-form-urlencoded",
                format!("topic={topic_enc}&data="),
                String::new(),
            ),
            Flavor::Nchan => (
                format!("{}topic={topic_enc}", self.target_prefix()),
                "text/plain",
                String::new(),
                String::new(),
            ),
            // The data is digits and `x` only (see `payload`): nothing to
            // escape in the JSON string nor in the SSE frame.
            Flavor::Pushpin => (
                plain,
                "application/json",
                format!(
                    r#"{{"items":[{{"channel":"{topic_enc}","formats":{{"http-stream":{{"content":"data: "#
                ),
                r#"\n\n"}}}]}"#.to_owned(),
            ),
        };
        PublishTemplate {
            head: self.post_head(&target, content_type, token),
            body_prefix: body_prefix.into_bytes(),
            body_suffix: body_suffix.into_bytes(),
        }
    }
}

impl Target {
    /// A `POST` head up to `Content-Length: `, which the request completes.
    fn post_head(&self, target: &str, content_type: &str, token: Option<&str>) -> Vec<u8> {
        let mut head = format!(
            "POST {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\n",
            self.host,
            user_agent()
        );
        if let Some(t) = token {
            let _ = write!(head, "Authorization: Bearer {t}\r\n");
        }
        let _ = write!(head, "Content-Type: {content_type}\r\nContent-Length: ");
        head.into_bytes()
    }

    /// herald's batch publication: one `POST` of a JSON array of updates,
    /// each naming its topic. `topics` are the topics by index.
    pub fn batch_template(&self, topics: &[String], token: Option<&str>) -> BatchTemplate {
        let target = match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        BatchTemplate {
            head: self.post_head(&target, "application/json", token),
            items: topics
                .iter()
                .map(|t| {
                    let topic = serde_json::to_string(t).unwrap_or_default();
                    format!(r#"{{"topics":[{topic}],"data":""#).into_bytes()
                })
                .collect(),
        }
    }
}

/// A batch publication request: the head (up to `Content-Length: `), and
/// the opening of one JSON item per topic, up to its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BatchTemplate {
    pub head: Vec<u8>,
    pub items: Vec<Vec<u8>>,
}

impl BatchTemplate {
    /// Appends the complete request carrying `(topic index, data)` items.
    /// The data is digits and `x` only (see `payload`): nothing to escape.
    pub fn write<'a>(&self, items: impl Iterator<Item = (usize, &'a [u8])>, out: &mut Vec<u8>) {
        let mut body = Vec::with_capacity(1024);
        body.push(b'[');
        for (i, (topic, data)) in items.enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&self.items[topic]);
            body.extend_from_slice(data);
            body.extend_from_slice(b"\"}");
        }
        body.push(b']');
        out.extend_from_slice(&self.head);
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&body);
    }
}

/// How the generator publishes: the protocol of the server under test.
/// Subscribing is the same for every flavor (`GET <hub>?topic=<topic>`,
/// reading `text/event-stream`); only the publication request differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Flavor {
    /// A Mercure hub: a form `topic=…&data=…` POSTed with a bearer JWT.
    #[default]
    Mercure,
    /// nginx + Nchan: the data alone POSTed to an `nchan_publisher`
    /// location (`--publish-url`) whose channel id is `$arg_topic`; Nchan
    /// sends it to subscribers as the event's `data`.
    Nchan,
    /// Pushpin: a JSON item POSTed to its HTTP control API
    /// (`--publish-url`, e.g. `http://127.0.0.1:5561/publish/`), in the
    /// `http-stream` format with the SSE frame `data: …` as content, on the
    /// channel named by the form-encoded topic.
    Pushpin,
}

/// A publication request for one topic with a hole for the data: the head
/// (up to `Content-Length: `), then the body around the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PublishTemplate {
    pub head: Vec<u8>,
    pub body_prefix: Vec<u8>,
    pub body_suffix: Vec<u8>,
}

impl PublishTemplate {
    /// Appends the complete request carrying `data` to `out`.
    pub fn write(&self, data: &[u8], out: &mut Vec<u8>) {
        let len = self.body_prefix.len() + data.len() + self.body_suffix.len();
        out.extend_from_slice(&self.head);
        out.extend_from_slice(len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body_prefix);
        out.extend_from_slice(data);
        out.extend_from_slice(&self.body_suffix);
    }
}

pub(super) fn user_agent() -> &'static str {
    concat!("herald-bench/", env!("CARGO_PKG_VERSION"))
}

/// Appends `s` encoded as an `application/x-www-form-urlencoded` value.
pub(super) fn form_encode(s: &str, out: &mut String) {
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// The parts of a response head the generator cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<u64>,
    /// The server closes the connection after this response.
    pub close: bool,
    /// `Sec-WebSocket-Accept`, in the answer to an upgrade.
    pub websocket_accept: Option<String>,
}

impl Head {
    /// How the body of this response (to a non-HEAD request) is delimited.
    pub fn framing(&self) -> Framing {
        if self.chunked {
            Framing::Chunked(Chunked::default())
        } else if matches!(self.status, 100..=199 | 204 | 304) {
            Framing::Length(0)
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        }
    }
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else the head and its length in bytes.
pub(super) fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(Head, usize)>> {
    // The head ends at the first empty line (CRLF CRLF, or a bare LF LF).
    let mut end = None;
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                end = Some(i + 1);
                break;
            }
            line_start = i + 1;
        }
    }
    let Some(end) = end else {
        if buf.len() > MAX_HEAD {
            bail!("response head larger than {MAX_HEAD} bytes");
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
        close: version == "HTTP/1.0",
        websocket_accept: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                value
                    .parse()
                    .with_context(|| format!("malformed Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            head.websocket_accept = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    head.close = false;
                }
            }
        }
    }
    Ok(Some((head, end)))
}

/// How a response body is delimited.
#[derive(Debug)]
pub(super) enum Framing {
    Chunked(Chunked),
    /// This many bytes remain.
    Length(u64),
    /// The body runs until the server closes the connection.
    UntilClose,
}

impl Framing {
    /// Passes the body bytes found in `input` to `out`; returns how many
    /// bytes of `input` were consumed and whether the body is complete.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]),
    ) -> anyhow::Result<(usize, bool)> {
        match self {
            Self::Chunked(c) => c.decode(input, out),
            Self::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if n > 0 {
                    out(&input[..n]);
                }
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            Self::UntilClose => {
                if !input.is_empty() {
                    out(input);
                }
                Ok((input.len(), false))
            }
        }
    }
}

/// A `Transfer-Encoding: chunked` decoder that accepts any split of its
/// input.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hexadecimal chunk size.
    #[default]
    Size,
    /// Skipping a chunk extension up to the end of the line.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After chunk data: CR expected.
    DataCr,
    /// After chunk data's CR: LF expected.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// After the final CR.
    FinalLf,
    /// The body is complete.
    Done,
}

impl Chunked {
    /// Decodes `input`, passing each run of body bytes to `out`. Returns how
    /// many bytes were consumed (all of them unless the body ended) and
    /// whether the terminating chunk has been read.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]),
    ) -> anyhow::Result<(usize, bool)> {
        use ChunkState as S;
        let mut i = 0;
        while i < input.len() {
            match self.state {
                S::Data => {
                    let n = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    out(&input[i..i + n]);
                    i += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = S::DataCr;
                    }
                    continue;
                }
                S::Done => return Ok((i, true)),
                _ => {}
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (S::Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits >= 15 {
                        bail!("chunk size too large");
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from(hex_value(b));
                    S::Size
                }
                (S::Size, b';' | b' ' | b'\t') if self.digits > 0 => S::Extension,
                (S::Size, b'\r') if self.digits > 0 => S::SizeLf,
                (S::Size | S::Extension | S::SizeLf, b'\n') if self.digits > 0 => {
                    self.digits = 0;
                    if self.size == 0 {
                        S::TrailerStart
                    } else {
                        S::Data
                    }
                }
                (S::Extension, b'\r') => S::SizeLf,
                (S::Extension, _) => S::Extension,
                (S::DataCr, b'\r') => S::DataLf,
                (S::DataCr | S::DataLf, b'\n') => S::Size,
                (S::TrailerStart, b'\r') => S::FinalLf,
                (S::TrailerStart | S::FinalLf, b'\n') => S::Done,
                (S::TrailerLine, b'\n') => S::TrailerStart,
                (S::TrailerStart | S::TrailerLine, _) => S::TrailerLine,
                (state, b) => bail!("malformed chunked body (byte {b:#04x} in {state:?})"),
            };
            if self.state == S::Done {
                return Ok((i, true));
            }
        }
        Ok((i, self.state == S::Done))
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut c = Chunked::default();
        let mut body = Vec::new();
        let mut done = false;
        for piece in input.chunks(step) {
            let (_, d) = c.decode(piece, |s| body.extend_from_slice(s)).unwrap();
            done = d;
        }
        (body, done)
    }

    #[test]
    fn chunked_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..wire.len() {
            let (body, done) = decode_all(wire, step);
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(done, "step {step}");
        }
        let (body, done) = decode_all(b"a\r\n0123456789\r\n", 3);
        assert_eq!(body, b"0123456789");
        assert!(!done);
    }

    #[test]
    fn chunked_stops_at_the_end_of_the_body() {
        let mut c = Chunked::default();
        let (n, done) = c.decode(b"1\r\nx\r\n0\r\n\r\nHTTP/1.1", |_| {}).unwrap();
        assert!(done);
        assert_eq!(n, 11);
    }

    #[test]
    fn chunked_refuses_garbage() {
        let mut c = Chunked::default();
        assert!(c.decode(b"zz\r\n", |_| {}).is_err());
        let mut c = Chunked::default();
        assert!(c.decode(b"1\r\nxy", |_| {}).is_err());
    }

    #[test]
    fn heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                    Transfer-Encoding: chunked\r\n\r\n5\r\n";
        let (head, n) = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert!(head.chunked && !head.close);
        assert_eq!(&raw[n..], b"5\r\n");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nA: b\r\n")
            .unwrap()
            .is_none());
        let (head, _) = parse_head(b"HTTP/1.0 401 Unauthorized\nContent-Length: 12\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 401);
        assert_eq!(head.content_length, Some(12));
        assert!(head.close);
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
    }

    #[test]
    fn batch_requests_are_json_arrays() {
        let t = Target {
            host: "127.0.0.1:8080".into(),
            path: "/.well-known/mercure".into(),
            query: None,
            addr: "127.0.0.1:8080".parse().unwrap(),
        };
        let b = t.batch_template(
            &["https://b/\"1\"".into(), "https://b/2".into()],
            Some("tok"),
        );
        let mut out = Vec::new();
        b.write([(0, &b"12x"[..]), (1, &b"34x"[..])].into_iter(), &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("POST /.well-known/mercure HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("Authorization: Bearer tok\r\n"));
        assert!(head.contains("Content-Type: application/json\r\n"));
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"topics": ["https://b/\"1\""], "data": "12x"},
                {"topics": ["https://b/2"], "data": "34x"},
            ])
        );
    }

    #[test]
    fn requests() {
        let t = Target {
            addr: "127.0.0.1:8080".parse().unwrap(),
            host: "localhost:8080".into(),
            path: "/.well-known/mercure".into(),
            query: None,
        };
        let req = String::from_utf8(t.subscribe_request(["https://b/t/1 x"], Some("T"))).unwrap();
        assert_eq!(
            req,
            format!(
                "GET /.well-known/mercure?topic=https%3A%2F%2Fb%2Ft%2F1+x HTTP/1.1\r\n\
                 Host: localhost:8080\r\nAccept: text/event-stream\r\n\
                 Cache-Control: no-cache\r\nUser-Agent: {}\r\n\
                 Authorization: Bearer T\r\n\r\n",
                user_agent()
            )
        );
        let q = Target {
            query: Some("a=1".into()),
            ..t.clone()
        };
        let req =
            String::from_utf8(q.subscribe_request(["https://b/t/1", "b&c", "d"], None)).unwrap();
        assert!(req.starts_with(
            "GET /.well-known/mercure?a=1&topic=https%3A%2F%2Fb%2Ft%2F1&topic=b%26c&topic=d \
             HTTP/1.1\r\nHost: localhost:8080\r\n"
        ));
        assert!(!req.contains("Authorization"));
        assert_eq!(t.source_addrs(3).len(), 3);
        assert_eq!(t.source_addrs(3)[2].to_string(), "127.0.0.3");
    }

    fn publication(t: &Target, flavor: Flavor, token: Option<&str>) -> String {
        let mut out = Vec::new();
        t.publish_template(flavor, "https://b/t/1 x", token)
            .write(b"0042xx", &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Splits a request into head and body, checking Content-Length.
    fn split(req: &str) -> (&str, &str) {
        let (head, body) = req.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len(), "{req:?}");
        (head, body)
    }

    #[test]
    fn publications() {
        let t = Target {
            addr: "127.0.0.1:8080".parse().unwrap(),
            host: "localhost:8080".into(),
            path: "/.well-known/mercure".into(),
            query: None,
        };
        let req = publication(&t, Flavor::Mercure, Some("T"));
        let (head, body) = split(&req);
        assert_eq!(
            head,
            format!(
                "POST /.well-known/mercure HTTP/1.1\r\nHost: localhost:8080\r\n\
                 User-Agent: {}\r\nAuthorization: Bearer T\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 43",
                user_agent()
            )
        );
        assert_eq!(body, "topic=https%3A%2F%2Fb%2Ft%2F1+x&data=0042xx");

        let nchan = Target {
            path: "/pub".into(),
            query: Some("a=1".into()),
            ..t.clone()
        };
        let req = publication(&nchan, Flavor::Nchan, None);
        let (head, body) = split(&req);
        assert!(head.starts_with(
            "POST /pub?a=1&topic=https%3A%2F%2Fb%2Ft%2F1+x HTTP/1.1\r\nHost: localhost:8080\r\n"
        ));
        assert!(head.contains("\r\nContent-Type: text/plain\r\n"));
        assert!(!head.contains("Authorization"));
        assert_eq!(body, "0042xx");

        let pushpin = Target {
            path: "/publish/".into(),
            ..t
        };
        let req = publication(&pushpin, Flavor::Pushpin, None);
        let (head, body) = split(&req);
        assert!(head.starts_with("POST /publish/ HTTP/1.1\r\n"));
        assert!(head.contains("\r\nContent-Type: application/json\r\n"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"items": [{
                "channel": "https%3A%2F%2Fb%2Ft%2F1+x",
                "formats": {"http-stream": {"content": "data: 0042xx\n\n"}},
            }]})
        );
    }
}
