//! The `herald` binary end to end: zero-configuration start, publish, tail,
//! token, clear CLI errors, graceful shutdown on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `herald serve` child, killed on drop.
struct Hub {
    child: Child,
    addr: String,
    stderr_lines: Vec<String>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    /// Starts `herald serve` with extra args; waits until it listens and
    /// collects what it printed before (the quickstart, when generated).
    fn start(extra: &[&str]) -> Hub {
        // The hub picks its port (see `common::listening_addr`).
        let mut child = Command::new(BIN)
            .args(["serve", "--addr", "127.0.0.1:0", "--log", "info"])
            .args(extra)
            .env_remove("HERALD_PUBLISHER_JWT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    let addr = common::listening_addr(&l);
                    lines.push(l);
                    if let Some(addr) = addr {
                        break addr;
                    }
                }
                Err(_) => panic!("hub did not start: {lines:#?}"),
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Hub {
            child,
            addr,
            stderr_lines: lines,
        }
    }

    fn hub_url(&self) -> String {
        format!("http://{}/.well-known/mercure", self.addr)
    }
}

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_PUBLISHER_JWT")
        .output()
        .unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

#[test]
fn zero_configuration_prints_a_working_token_and_curl_example() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hub = Hub::start(&["--data-dir", data.to_str().unwrap()]);
    let text = hub.stderr_lines.join("\n");
    assert!(text.contains("curl -N"), "{text}");
    let token = hub
        .stderr_lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("eyJ"))
        .expect("a printed token")
        .to_owned();
    assert!(data.exists(), "the local engine created its store");

    // Subscribe with tail, publish with the printed token.
    let url = hub.hub_url();
    let tail = Command::new(BIN)
        .args([
            "tail",
            "--hub",
            &url,
            "--topic",
            "https://example.com/{x}",
            "--count",
            "2",
            "--timeout",
            "20s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let p1 = herald(&[
        "publish",
        "--hub",
        &url,
        "--token",
        &token,
        "--topic",
        "https://example.com/a",
        "--data",
        "first",
        "--id",
        "one",
    ]);
    assert!(p1.status.success(), "{}", stderr(&p1));
    assert_eq!(stdout(&p1), "one");
    let p2 = herald(&[
        "publish",
        "--hub",
        &url,
        "--token",
        &token,
        "--topic",
        "https://example.com/b",
        "--data",
        "two\nlines",
        "--type",
        "note",
    ]);
    assert!(p2.status.success(), "{}", stderr(&p2));
    let generated = stdout(&p2);
    assert!(generated.starts_with("urn:uuid:"), "{generated}");
    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "one\tmessage\tfirst".to_string(),
            format!("{generated}\tnote\ttwo\\nlines")
        ]
    );
}

#[test]
fn token_command_mints_tokens_the_hub_accepts() {
    let secret = "a-secret-of-enough-length-for-hs256";
    let hub = Hub::start(&["--engine", "memory", "--publisher-jwt", secret]);
    assert!(!hub.stderr_lines.join("\n").contains("generated"));
    let t = herald(&[
        "token",
        "--key",
        secret,
        "--publish",
        "https://example.com/{id}",
    ]);
    assert!(t.status.success(), "{}", stderr(&t));
    let token = stdout(&t);
    let url = hub.hub_url();
    let ok = herald(&[
        "publish",
        "--hub",
        &url,
        "--token",
        &token,
        "--topic",
        "https://example.com/1",
        "--data",
        "x",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let denied = herald(&[
        "publish",
        "--hub",
        &url,
        "--token",
        &token,
        "--topic",
        "https://other.example/1",
        "--data",
        "x",
    ]);
    assert!(!denied.status.success());
    let err = stderr(&denied);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("herald: ") && err.contains("403"), "{err}");
}

#[test]
fn cli_errors_are_one_line_and_non_zero() {
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let cases: Vec<Vec<String>> = vec![
        vec![
            "serve".into(),
            "--addr".into(),
            addr.clone(),
            "--engine".into(),
            "bogus".into(),
        ],
        vec![
            "serve".into(),
            "--addr".into(),
            addr.clone(),
            "--heartbeat".into(),
            "5y".into(),
        ],
        vec![
            "serve".into(),
            "--addr".into(),
            addr.clone(),
            "--publisher-jwt-alg".into(),
            "none".into(),
            "--publisher-jwt".into(),
            "x".into(),
        ],
        vec![
            "publish".into(),
            "--hub".into(),
            format!("http://{addr}/.well-known/mercure"),
            "--token".into(),
            "t".into(),
            "--topic".into(),
            "x".into(),
            "--data".into(),
            "y".into(),
        ],
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = herald(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("herald: "), "{args:?}: {err}");
    }
}

#[test]
fn config_file_with_unknown_key_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, "publisher_jwt = 'x'\npublisher_jwtt = 'typo'\n").unwrap();
    let o = herald(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--engine",
        "memory",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("publisher_jwtt"), "{}", stderr(&o));
}

#[test]
fn config_file_settings_apply() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    let secret = "file-secret-file-secret-file-secret";
    std::fs::write(
        &file,
        format!("publisher_jwt = '{secret}'\nengine = 'memory'\nheartbeat = '1s'\n"),
    )
    .unwrap();
    let hub = Hub::start(&["--config", file.to_str().unwrap()]);
    let t = herald(&["token", "--key", secret, "--publish", "*"]);
    let url = hub.hub_url();
    let ok = herald(&[
        "publish",
        "--hub",
        &url,
        "--token",
        &stdout(&t),
        "--topic",
        "t",
        "--data",
        "x",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn sigterm_ends_streams_and_exits_cleanly() {
    let mut hub = Hub::start(&[
        "--engine",
        "memory",
        "--publisher-jwt",
        "k-k-k-k-k-k-k-k-k-k-k-k-k-k-k-k",
        "--shutdown-grace",
        "10s",
    ]);
    let url = hub.hub_url();
    let mut tail = Command::new(BIN)
        .args(["tail", "--hub", &url, "--timeout", "30s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let pid = hub.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = hub.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "hub still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    // Streams were ended, not held: no waiting for the 10 s grace period.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let _ = tail.kill();
    let _ = tail.wait();
}

#[test]
fn access_tokens_minted_by_the_cli_work_with_flag_and_file_issuers() {
    let secret = "issuer-secret-issuer-secret-issuer";
    let publish_with = |hub: &Hub, token: &str| {
        herald(&[
            "publish",
            "--hub",
            &hub.hub_url(),
            "--token",
            token,
            "--topic",
            "https://example.com/books/1",
            "--data",
            "x",
        ])
    };
    let mint = |hub: &Hub, pattern: &str| {
        let t = herald(&[
            "token",
            "--key",
            secret,
            "--issuer",
            "https://app.example.com",
            "--audience",
            &hub.hub_url(),
            "--publish-pattern",
            pattern,
        ]);
        assert!(t.status.success(), "{}", stderr(&t));
        stdout(&t)
    };

    // Flag: the public URL follows the bound address, and is the audience.
    let hub = Hub::start(&[
        "--engine",
        "memory",
        "--issuer",
        &format!("https://app.example.com secret:{secret} HS256"),
    ]);
    let ok = publish_with(&hub, &mint(&hub, "https://example.com/books/:id"));
    assert!(ok.status.success(), "{}", stderr(&ok));
    let refused = publish_with(&hub, &mint(&hub, "https://example.com/authors/:id"));
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("403"), "{}", stderr(&refused));
    drop(hub);

    // File: [[issuers]] tables.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(
        &file,
        format!(
            "engine = 'memory'\n[[issuers]]\nissuer = 'https://app.example.com'\nkey = 'secret:{secret}'\n"
        ),
    )
    .unwrap();
    let hub = Hub::start(&["--config", file.to_str().unwrap()]);
    let ok = publish_with(&hub, &mint(&hub, "https://example.com/books/:id"));
    assert!(ok.status.success(), "{}", stderr(&ok));

    // Bad issuer settings are one-line errors before binding.
    for bad in [
        "https://app.example.com",
        "https://app.example.com rot13:abc",
        "https://app.example.com secret:abc NONE",
        "https://app.example.com pem:/nonexistent.pem",
    ] {
        let o = herald(&["serve", "--engine", "memory", "--issuer", bad]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert_eq!(stderr(&o).lines().count(), 1, "{bad}: {}", stderr(&o));
    }
    let o = herald(&["token", "--key", secret, "--issuer", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--audience"), "{}", stderr(&o));
}

#[test]
fn settings_of_another_engine_are_refused_from_flags_variables_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, "engine = 'memory'\nretention_max_age = '7d'\n").unwrap();
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let o = Command::new(BIN)
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_PUBLISHER_JWT")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?} {env:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    let err = serve(&["--history-size", "10"], &[]);
    assert!(
        err.contains(
            "history_size (--history-size) is a setting of the memory engine; the engine is local"
        ),
        "{err}"
    );
    let err = serve(
        &["--engine", "memory"],
        &[("HERALD_DATA_DIR", "/nonexistent")],
    );
    assert!(
        err.contains(
            "data_dir (HERALD_DATA_DIR) is a setting of the local engine; the engine is memory"
        ),
        "{err}"
    );
    let err = serve(&["--config", file.to_str().unwrap()], &[]);
    assert!(
        err.contains(
            "retention_max_age (config file) is a setting of the local, redis, postgres or nats engines"
        ),
        "{err}"
    );
    // Flags beat variables: the variable's engine is overridden.
    let err = serve(
        &["--engine", "local", "--history-size", "1"],
        &[("HERALD_ENGINE", "memory")],
    );
    assert!(err.contains("the engine is local (--engine)"), "{err}");
}

#[test]
fn an_unreachable_redis_is_a_clear_error_without_the_password() {
    // Nothing listens on port 1.
    let o = herald(&[
        "serve",
        "--engine",
        "redis://:hunter2@127.0.0.1:1/0",
        "--redis-timeout",
        "1s",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("cannot use Redis at redis://:***@127.0.0.1:1/0"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let o = herald(&["serve", "--engine", "redis://h", "--namespace", "a{b}"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("namespace"), "{}", stderr(&o));
}

#[test]
fn engine_urls_that_answer_nothing_or_nothing_known_are_refused() {
    // Nothing listens on port 1: a clear error, fast.
    let o = herald(&[
        "serve",
        "--engine",
        "nats://127.0.0.1:1",
        "--nats-timeout",
        "1s",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("cannot use NATS at nats://127.0.0.1:1"),
        "{err}"
    );
    let o = herald(&["serve", "--engine", "ftp://x"]);
    let err = stderr(&o);
    assert!(
        err.contains("\"ftp\"") && err.contains("memory") && err.contains("nats://"),
        "{err}"
    );
}

#[test]
fn variables_apply_and_flags_beat_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, "engine = 'local'\n").unwrap();
    // The variable beats the file's engine; the flag beats the variable's
    // secret, so the token signed with the flag's secret is accepted.
    let flag_secret = "flag-secret-flag-secret-flag-secret";
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ])
        .args(["--publisher-jwt", flag_secret])
        .env("HERALD_ENGINE", "memory")
        .env(
            "HERALD_PUBLISHER_JWT",
            "variable-secret-variable-secret-var",
        )
        .env("HERALD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("hub exited").unwrap();
        if let Some(addr) = common::listening_addr(&line) {
            assert!(line.contains("memory"), "{line}");
            break addr;
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let token = stdout(&herald(&["token", "--key", flag_secret, "--publish", "*"]));
    let ok = herald(&[
        "publish",
        "--hub",
        &format!("http://{addr}/.well-known/mercure"),
        "--token",
        &token,
        "--topic",
        "t",
        "--data",
        "x",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// `--otlp-endpoint`: a publish with a sampled `traceparent` reaches an
/// OTLP/HTTP endpoint (a plain TCP server here, decoding the protobuf) as
/// the spans publish, append and deliver of that trace, sent at the latest
/// when the hub stops on SIGTERM.
#[test]
fn traces_are_exported_over_otlp_and_flushed_at_shutdown() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use std::io::{Read, Write};

    // The endpoint: answers each request 200 and hands its body over.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (bodies, received) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let bodies = bodies.clone();
            std::thread::spawn(move || loop {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                conn.read_exact(&mut body).unwrap();
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let _ = bodies.send((path, body));
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            });
        }
    });

    let key = "k-k-k-k-k-k-k-k-k-k-k-k-k-k-k-k";
    let mut hub = Hub::start(&[
        "--engine",
        "memory",
        "--publisher-jwt",
        key,
        "--otlp-endpoint",
        &endpoint,
        "--otlp-service-name",
        "herald-cli-test",
    ]);
    let token = herald(&["token", "--key", key, "--publish", "*"]);
    assert!(token.status.success(), "{}", stderr(&token));
    let token = stdout(&token);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut tcp = std::net::TcpStream::connect(&hub.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = "topic=https%3A%2F%2Fexample.com%2Fa&data=traced";
    write!(
        tcp,
        "POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         traceparent: 00-{trace}-b7ad6b7169203331-01\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let pid = hub.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = hub.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the hub did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut names = Vec::new();
    let mut service = String::new();
    while let Ok((path, body)) = received.recv_timeout(Duration::from_secs(2)) {
        assert_eq!(path, "/v1/traces");
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            for kv in rs.resource.iter().flat_map(|r| &r.attributes) {
                if kv.key == "service.name" {
                    service = format!("{:?}", kv.value);
                }
            }
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                if id == trace {
                    names.push(span.name);
                }
            }
        }
    }
    names.sort();
    assert_eq!(names, ["append", "deliver", "publish"]);
    assert!(service.contains("herald-cli-test"), "{service}");
}

/// `--tls-cert` and `--tls-key`: curl gets HTTP/2 over TLS by ALPN, and
/// receives over it what another client publishes; HTTP/3 holds the same
/// port over UDP and is advertised with `Alt-Svc` (`--http3 false`: not
/// at all); a plain listener takes
/// HTTP/2 with prior knowledge (`curl --http2-prior-knowledge`); one of
/// the two settings alone is a clear error.
#[test]
fn tls_and_h2c_serve_curl_over_http2() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let key = "k-k-k-k-k-k-k-k-k-k-k-k-k-k-k-k";
    let hub = Hub::start(&[
        "--engine",
        "memory",
        "--publisher-jwt",
        key,
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let port = hub.addr.rsplit(':').next().unwrap().to_owned();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let base = format!("https://localhost:{port}");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--http2", "--cacert", cert_path.to_str().unwrap()])
            .args(["--resolve", &resolve])
            .args(args)
            .output()
            .unwrap()
    };
    let health = curl(&["-w", " %{http_version}", &format!("{base}/healthz")]);
    assert!(health.status.success(), "{}", stderr(&health));
    assert_eq!(stdout(&health), "ok\n 2");
    // HTTP/3 is on with TLS: the same port is bound over UDP, and TCP
    // responses say so with `Alt-Svc`.
    let head = curl(&["-o", "/dev/null", "-D", "-", &format!("{base}/healthz")]);
    assert!(
        stdout(&head).contains(&format!("alt-svc: h3=\":{port}\"; ma=86400")),
        "{}",
        stdout(&head)
    );
    let udp = std::net::UdpSocket::bind(&hub.addr);
    assert_eq!(
        udp.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::AddrInUse),
        "herald does not hold UDP {}",
        hub.addr
    );
    // A stream over HTTP/2 gets what is published.
    let sub = Command::new("curl")
        .args(["-sSN", "--http2", "--cacert", cert_path.to_str().unwrap()])
        .args(["--resolve", &resolve, "--max-time", "5"])
        .arg(format!(
            "{base}/.well-known/mercure?topic=https://example.com/a"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let token = stdout(&herald(&["token", "--key", key, "--publish", "*"]));
    let published = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-d",
        "topic=https://example.com/a",
        "-d",
        "data=over h2",
        &format!("{base}/.well-known/mercure"),
    ]);
    assert!(published.status.success(), "{}", stderr(&published));
    let out = sub.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("data:over h2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(hub);

    // `--http3 false`: TLS over TCP alone, no `Alt-Svc`, UDP left free.
    let tcp_only = Hub::start(&[
        "--engine",
        "memory",
        "--publisher-jwt",
        key,
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--http3",
        "false",
    ]);
    let port = tcp_only.addr.rsplit(':').next().unwrap().to_owned();
    let head = Command::new("curl")
        .args(["-sS", "--http2", "--cacert", cert_path.to_str().unwrap()])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-o", "/dev/null", "-D", "-"])
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .unwrap();
    assert!(stdout(&head).starts_with("HTTP/2 200"), "{}", stderr(&head));
    assert!(!stdout(&head).contains("alt-svc"), "{}", stdout(&head));
    assert!(std::net::UdpSocket::bind(&tcp_only.addr).is_ok());
    drop(tcp_only);

    // h2c on a plain listener.
    let plain = Hub::start(&["--engine", "memory", "--publisher-jwt", key]);
    let h2c = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-w", " %{http_version}"])
        .arg(format!("http://{}/healthz", plain.addr))
        .output()
        .unwrap();
    assert_eq!(stdout(&h2c), "ok\n 2", "{}", stderr(&h2c));

    // Half a TLS configuration.
    let o = herald(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert_path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tls_cert and tls_key go together"),
        "{}",
        stderr(&o)
    );
}
