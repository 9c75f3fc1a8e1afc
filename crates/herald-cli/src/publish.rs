//! `herald publish`: send one update to a hub and print its id.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use herald::auth::MercureClaim;
use jsonwebtoken::Algorithm;
use reqwest::{Response, Url};

use crate::token;

/// The hub a command talks to when `--hub` is not given.
pub(crate) const DEFAULT_HUB: &str = "http://127.0.0.1:8080/.well-known/mercure";

/// Lifetime of the token minted from `--key`.
const MINTED_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Publish one update to a hub; prints the id the hub gave it.
///
/// The data comes from `--data`, from `--data-file` (`-` for stdin), or,
/// when neither is given, from stdin if it is not a terminal (else empty).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hub URL; a bare host (or path `/`) gets `/.well-known/mercure`.
    #[arg(long, value_name = "URL", env = "HERALD_HUB_URL", default_value = DEFAULT_HUB, value_parser = parse_hub_url)]
    hub: Url,
    /// Topic of the update (repeatable; the first is the canonical topic).
    #[arg(long = "topic", value_name = "TOPIC", required = true)]
    topics: Vec<String>,
    /// The update's data [default: stdin when it is not a terminal, else empty].
    #[arg(long, value_name = "STRING", conflicts_with = "data_file")]
    data: Option<String>,
    /// Read the update's data from a file (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    data_file: Option<PathBuf>,
    /// Id of the update [default: chosen by the hub].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Event type of the update.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Reconnection delay, in milliseconds, sent to subscribers.
    #[arg(long, value_name = "MS")]
    retry: Option<u64>,
    /// Deliver only to subscribers authorized for one of the topics.
    #[arg(long)]
    private: bool,
    /// JWT allowing the publication.
    #[arg(long, value_name = "JWT", env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Without --token: key to mint a short-lived token for these topics
    /// (HMAC secret, or a private key as PEM text or a path).
    #[arg(
        long,
        value_name = "KEY",
        env = "HERALD_PUBLISHER_JWT",
        hide_env_values = true
    )]
    key: Option<String>,
    /// Algorithm of --key.
    #[arg(
        long,
        value_name = "ALG",
        env = "HERALD_PUBLISHER_JWT_ALG",
        default_value = "HS256",
        value_parser = token::parse_alg
    )]
    alg: Algorithm,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let bearer = match (&args.token, &args.key) {
        (Some(t), _) => t.clone(),
        (None, Some(key)) => {
            let cfg = token::key_config(key, args.alg)?;
            let claim = MercureClaim {
                publish: Some(args.topics.clone()),
                ..Default::default()
            };
            token::mint(&cfg, claim, MINTED_TOKEN_TTL)?
        }
        (None, None) => bail!(
            "a token is required: pass --token (or set HERALD_TOKEN), \
             or --key (or set HERALD_PUBLISHER_JWT) to mint one"
        ),
    };
    let data = read_data(args.data, args.data_file.as_deref()).await?;
    let retry = args.retry.map(|r| r.to_string());

    let mut form: Vec<(&str, &str)> = args.topics.iter().map(|t| ("topic", t.as_str())).collect();
    form.push(("data", &data));
    if let Some(id) = &args.id {
        form.push(("id", id));
    }
    if let Some(t) = &args.event_type {
        form.push(("type", t));
    }
    if let Some(r) = &retry {
        form.push(("retry", r));
    }
    if args.private {
        form.push(("private", "on"));
    }

    let client = client(Some(Duration::from_secs(30)))?;
    let res = client
        .post(args.hub.clone())
        .bearer_auth(bearer)
        .form(&form)
        .send()
        .await
        .map_err(|e| unreachable_hub(&args.hub, &e))?;
    if !res.status().is_success() {
        return Err(refused(res).await);
    }
    let id = res
        .text()
        .await
        .map_err(|e| anyhow!("cannot read the hub's answer: {}", cause(&e)))?;
    println!("{}", id.trim_end_matches(['\r', '\n']));
    Ok(())
}

async fn read_data(data: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Some(d) = data {
        return Ok(d);
    }
    let bytes = match file {
        Some(p) if p.as_os_str() == "-" => read_stdin().await?,
        Some(p) => tokio::fs::read(p)
            .await
            .with_context(|| format!("cannot read data file {}", p.display()))?,
        None if std::io::stdin().is_terminal() => Vec::new(),
        None => read_stdin().await?,
    };
    String::from_utf8(bytes).map_err(|_| match file {
        Some(p) if p.as_os_str() != "-" => anyhow!("data file {} is not valid UTF-8", p.display()),
        _ => anyhow!("the data read from stdin is not valid UTF-8"),
    })
}

async fn read_stdin() -> anyhow::Result<Vec<u8>> {
    tokio::task::spawn_blocking(|| {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map(|_| buf)
    })
    .await
    .context("cannot read stdin")?
    .context("cannot read stdin")
}

/// Parses a hub URL. A missing scheme means `http://`; an empty path or `/`
/// means the well-known Mercure path.
pub(crate) fn parse_hub_url(s: &str) -> Result<Url, String> {
    let s = s.trim();
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| format!("invalid hub URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "invalid hub URL {s:?}: expected an http:// or https:// URL"
        ));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/.well-known/mercure");
    }
    Ok(url)
}

/// An HTTP client for talking to a hub.
pub(crate) fn client(timeout: Option<Duration>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build()
        .map_err(|e| anyhow!("cannot create an HTTP client: {}", cause(&e)))
}

/// "cannot reach hub at <url>: <why>", with the innermost cause only.
pub(crate) fn unreachable_hub(hub: &Url, e: &reqwest::Error) -> anyhow::Error {
    let mut shown = hub.clone();
    shown.set_query(None);
    anyhow!("cannot reach hub at {shown}: {}", cause(e))
}

/// "hub answered <status>: <first line of the body>".
pub(crate) async fn refused(res: Response) -> anyhow::Error {
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    refusal_message(status, &body)
}

fn refusal_message(status: reqwest::StatusCode, body: &str) -> anyhow::Error {
    match body.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(reason) => anyhow!("hub answered {status}: {reason}"),
        None => anyhow!("hub answered {status}"),
    }
}

/// The innermost cause of a request error, worded for a person.
pub(crate) fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut inner: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    if let Some(io) = inner.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        let text = match io.kind() {
            ConnectionRefused => "connection refused",
            ConnectionReset => "connection reset",
            ConnectionAborted => "connection aborted",
            TimedOut => "timed out",
            UnexpectedEof => "connection closed unexpectedly",
            _ => return io.to_string(),
        };
        return text.into();
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_url_normalization() {
        let n = |s: &str| parse_hub_url(s).unwrap().to_string();
        assert_eq!(n(DEFAULT_HUB), DEFAULT_HUB);
        assert_eq!(
            n("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/.well-known/mercure"
        );
        assert_eq!(
            n("https://hub.example/"),
            "https://hub.example/.well-known/mercure"
        );
        assert_eq!(
            n("localhost:3000"),
            "http://localhost:3000/.well-known/mercure"
        );
        assert_eq!(n("http://h/custom/hub"), "http://h/custom/hub");
        assert!(parse_hub_url("ftp://h/").is_err());
        assert!(parse_hub_url("http://").is_err());
    }

    #[test]
    fn refusal_uses_first_non_empty_line() {
        let e = refusal_message(
            reqwest::StatusCode::UNAUTHORIZED,
            "invalid token: bad signature\nmore\n",
        );
        assert_eq!(
            e.to_string(),
            "hub answered 401 Unauthorized: invalid token: bad signature"
        );
        let e = refusal_message(reqwest::StatusCode::BAD_GATEWAY, "\n");
        assert_eq!(e.to_string(), "hub answered 502 Bad Gateway");
    }

    #[tokio::test]
    async fn data_sources() {
        assert_eq!(read_data(Some("x".into()), None).await.unwrap(), "x");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.txt");
        std::fs::write(&path, "line1\nline2").unwrap();
        assert_eq!(read_data(None, Some(&path)).await.unwrap(), "line1\nline2");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let err = read_data(None, Some(&path)).await.unwrap_err();
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        let err = read_data(None, Some(&dir.path().join("none")))
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read data file"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_one_clear_line() {
        // Bind then drop a listener to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hub = parse_hub_url(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = client(None)
            .unwrap()
            .get(hub.clone())
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            unreachable_hub(&hub, &e).to_string(),
            format!("cannot reach hub at http://127.0.0.1:{port}/.well-known/mercure: connection refused")
        );
    }
}
