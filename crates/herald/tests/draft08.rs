//! Mercure draft-08 (1.0) beside draft-07, against a real hub over TCP:
//! matchers, access tokens from several issuers, token presentation, the
//! publishing rules, resume, subscription events and API, the protected
//! resource metadata, `QUERY`, and clients of both revisions at once.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald::auth::oauth::{IssuerConfig, KeySource};
use herald::HubConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const HUB: &str = "https://hub.example.com/.well-known/mercure";
const APP: &str = "https://app.example.com";
const APP_SECRET: &str = "draft08-app-secret-draft08-app-secret";
const ES: &str = "https://es.example.com";
const JWKS: &str = "https://jwks.example.com";
const REMOTE: &str = "https://remote.example.com";
const ED: &str = "https://ed.example.com";
const DETAIL: &str = "https://mercure.rocks/authorization-detail";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read_fixture(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A hub trusting four issuers: an HMAC secret, an EC PEM key, a JWKS file
/// and (optionally) a JWKS URL.
fn config(jwks_url: Option<&str>) -> HubConfig {
    let mut issuers = vec![
        IssuerConfig {
            issuer: APP.into(),
            keys: KeySource::Secret(APP_SECRET.into()),
            algorithms: vec![Algorithm::HS256],
        },
        IssuerConfig {
            issuer: ES.into(),
            keys: KeySource::Pem(read_fixture("ec_public.pem")),
            algorithms: vec![Algorithm::ES256],
        },
        // No allow-list: the algorithm follows from the key (EdDSA).
        IssuerConfig {
            issuer: ED.into(),
            keys: KeySource::Pem(read_fixture("ed_public.pem")),
            algorithms: Vec::new(),
        },
        IssuerConfig {
            issuer: JWKS.into(),
            keys: KeySource::JwksFile(fixture("jwks.json").into()),
            algorithms: vec![Algorithm::RS256, Algorithm::EdDSA],
        },
    ];
    if let Some(url) = jwks_url {
        issuers.push(IssuerConfig {
            issuer: REMOTE.into(),
            keys: KeySource::JwksUrl(url.into()),
            algorithms: vec![Algorithm::RS256],
        });
    }
    HubConfig {
        public_url: url::Url::parse(HUB).unwrap(),
        issuers,
        ..common::config()
    }
}

/// Signs `claims` as an access token (`typ: at+jwt`), with defaults for
/// `iss` (the HMAC issuer), `aud` and `exp` unless `claims` sets them.
fn sign_with(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut c = json!({"iss": APP, "aud": HUB, "exp": now() + 600, "sub": "user-1"});
    for (k, v) in claims.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    let mut header = Header::new(alg);
    header.typ = Some("at+jwt".into());
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &c, key).unwrap()
}

fn hmac_token(claims: Value) -> String {
    sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(APP_SECRET.as_bytes()),
        None,
        claims,
    )
}

fn details(actions: &[&str], topics: Value) -> Value {
    json!({"authorization_details": [{"type": DETAIL, "actions": actions, "topics": topics}]})
}

/// A token of the HMAC issuer granting `actions` on every topic.
fn all(actions: &[&str]) -> String {
    hmac_token(details(actions, json!([{"match": "*"}])))
}

async fn post(hub: &TestHub, token: Option<&str>, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().post(hub.hub_url()).form(fields);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn publish08(hub: &TestHub, fields: &[(&str, &str)]) -> String {
    let res = post(hub, Some(&all(&["publish"])), fields).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; charset=utf-8",
        "draft-08 publish answers text/plain"
    );
    res.text().await.unwrap()
}

fn challenge(res: &reqwest::Response) -> String {
    res.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn matchers_select_topics_exactly_or_by_url_pattern() {
    let hub = TestHub::start(config(None)).await;
    let mut s = Subscription::open(
        &hub,
        &[
            ("match", "https://example.com/books/1"),
            ("match_urlpattern", "https://example.com/authors/:id"),
            ("match_urlpattern", "/local/:x"),
            ("match_exact", "urn:x"),
        ],
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.headers["accept-query"],
        "application/x-www-form-urlencoded"
    );
    let topics = [
        ("https://example.com/books/1", true),
        ("https://EXAMPLE.com/books/1", false),
        ("https://example.com/books/1/", false),
        ("https://example.com/authors/7", true),
        ("https://example.com/authors/7/books", false),
        ("https://example.com/Authors/7", false),
        // Relative to the hub URL, both ways.
        ("/local/a", true),
        ("https://hub.example.com/local/b", true),
        ("https://other.example.com/local/c", false),
        ("urn:x", true),
        ("urn:y", false),
    ];
    for (t, _) in topics {
        publish08(&hub, &[("topic", t), ("data", t)]).await;
    }
    let got = s.drain_data(SHORT).await;
    let want: Vec<&str> = topics.iter().filter(|(_, m)| *m).map(|(t, _)| *t).collect();
    assert_eq!(got, want);

    // `*` as either type selects everything.
    let mut any = Subscription::open(&hub, &[("match_urlpattern", "*")], &[]).await;
    assert_eq!(any.status, 200);
    publish08(&hub, &[("topic", "whatever"), ("data", "w")]).await;
    assert_eq!(any.next_event(LONG).await.unwrap().data, "w");
}

#[tokio::test]
async fn bad_matchers_are_refused_with_400() {
    let hub = TestHub::start(config(None)).await;
    let long = "a".repeat(2049);
    let many: Vec<(&str, &str)> = (0..65).map(|_| ("match", "x")).collect();
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("match_regex", "x")],
        vec![("Match", "x")],
        vec![("matchurlpattern", "x")],
        vec![("match_urlpattern", "https://a/:")],
        vec![("match_urlpattern", "https://a/(\\d+)(?i)")],
        vec![("match", "a\u{7}b")],
        vec![("match", "")],
        vec![("match", &long)],
        many,
        vec![("match", "a"), ("topic", "a")],
        vec![("last_event_id", "x")],
    ];
    for q in cases {
        let s = Subscription::open(&hub, &q, &[]).await;
        assert_eq!(s.status, 400, "{:?}", q.first());
    }
    // The draft text's spelling is accepted.
    assert_eq!(
        Subscription::open(&hub, &[("matchURLPattern", "https://a/:id")], &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_pathological_pattern_does_not_stall_the_hub() {
    let hub = TestHub::start(config(None)).await;
    // Within the limits but built to make a matcher work hard: a nested
    // group over the whole path, evaluated on long topics.
    let hostile = format!("https://example.com/{}", "(.*a.{40}c)".repeat(8));
    let mut bad = Subscription::open(&hub, &[("match_urlpattern", &hostile)], &[]).await;
    assert_eq!(bad.status, 200);
    let mut good = Subscription::open(&hub, &[("match", "https://example.com/ok")], &[]).await;
    // Topics of pseudo-random `a`, `b` and `c`: the input that makes such a
    // pattern expensive (a backtracking engine would not finish; a lazy DFA
    // thrashes and falls back to a linear scan, about 10 ms per topic in a
    // debug build).
    let mut x: u64 = 12345;
    let mut long_topic = || {
        let mut t = String::from("https://example.com/");
        for _ in 0..4000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t.push(['a', 'b', 'c'][(x >> 33) as usize % 3]);
        }
        t
    };
    let started = std::time::Instant::now();
    for i in 0..50 {
        let t = long_topic();
        publish08(&hub, &[("topic", &format!("{t}{i}")), ("data", "x")]).await;
        publish08(
            &hub,
            &[
                ("topic", "https://example.com/ok"),
                ("data", &i.to_string()),
            ],
        )
        .await;
    }
    let got = good.drain_events(SHORT).await;
    assert_eq!(got.len(), 50);
    // A generous bound: stalling would take minutes (backtracking is
    // exponential); linear matching takes about a second here.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(bad.drain_events(Duration::from_millis(50)).await.is_empty());
}

#[tokio::test]
async fn access_tokens_from_each_issuer_and_every_refusal() {
    // A JWKS document served over HTTP, as an identity provider would.
    let jwks = read_fixture("jwks.json");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let body = jwks.clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    let url = format!("http://{jwks_addr}/jwks.json");
    let hub = TestHub::start(config(Some(&url))).await;
    hub.hub.oauth().unwrap().refresh_now().await.unwrap();

    let grant = details(
        &["publish"],
        json!([{"match": "https://example.com/:x", "match_type": "urlpattern"}]),
    );
    let with = |extra: Value| {
        let mut c = grant.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let ec = EncodingKey::from_ec_pem(read_fixture("ec_private.pem").as_bytes()).unwrap();
    let rsa = EncodingKey::from_rsa_pem(read_fixture("rsa_private.pem").as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(read_fixture("ed_private.pem").as_bytes()).unwrap();
    let ok_tokens = [
        ("hmac", hmac_token(grant.clone())),
        (
            "es256 pem",
            sign_with(Algorithm::ES256, &ec, None, with(json!({"iss": ES}))),
        ),
        (
            "rs256 jwks file",
            sign_with(
                Algorithm::RS256,
                &rsa,
                Some("rsa-1"),
                with(json!({"iss": JWKS})),
            ),
        ),
        (
            "eddsa jwks file",
            sign_with(
                Algorithm::EdDSA,
                &ed,
                Some("ed-1"),
                with(json!({"iss": JWKS})),
            ),
        ),
        (
            "rs256 jwks url",
            sign_with(
                Algorithm::RS256,
                &rsa,
                Some("rsa-1"),
                with(json!({"iss": REMOTE})),
            ),
        ),
        (
            "aud array",
            hmac_token(with(json!({"aud": ["https://other", HUB]}))),
        ),
        (
            "eddsa pem, algorithm from the key",
            sign_with(Algorithm::EdDSA, &ed, None, with(json!({"iss": ED}))),
        ),
    ];
    let fields = [("topic", "https://example.com/a"), ("data", "d")];
    for (what, t) in &ok_tokens {
        let res = post(&hub, Some(t), &fields).await;
        assert_eq!(res.status(), 200, "{what}");
    }

    // Header variants that make a token something else than an access token.
    let mut no_typ = Header::new(Algorithm::HS256);
    no_typ.typ = Some("JWT".into());
    let id_token = jsonwebtoken::encode(
        &no_typ,
        &json!({"iss": APP, "aud": HUB, "exp": now() + 60, "authorization_details": grant["authorization_details"]}),
        &EncodingKey::from_secret(APP_SECRET.as_bytes()),
    )
    .unwrap();
    // `alg: none`, with the at+jwt type.
    let b64 = |v: Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "at+jwt"})),
        b64(json!({"iss": APP, "aud": HUB, "exp": now() + 60}))
    );
    // Algorithm confusion: HS256 keyed with the issuer's public EC key.
    let confused = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(read_fixture("ec_public.pem").as_bytes()),
        None,
        with(json!({"iss": ES})),
    );
    let invalid = [
        (
            "wrong secret",
            sign_with(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-another-secret"),
                None,
                grant.clone(),
            ),
        ),
        (
            "untrusted issuer",
            hmac_token(with(json!({"iss": "https://evil.example.com"}))),
        ),
        (
            "wrong audience",
            hmac_token(with(
                json!({"aud": "https://other.example.com/.well-known/mercure"}),
            )),
        ),
        (
            "wrong audience array",
            hmac_token(with(json!({"aud": ["https://a", "https://b"]}))),
        ),
        ("no audience", hmac_token(with(json!({"aud": null})))),
        ("expired", hmac_token(with(json!({"exp": now() - 10})))),
        ("no exp", hmac_token(with(json!({"exp": null})))),
        (
            "not yet valid",
            hmac_token(with(json!({"nbf": now() + 600}))),
        ),
        ("not an access token", id_token),
        ("alg none", none),
        ("alg confusion", confused),
        (
            // The issuer has no allow-list: its key alone must refuse HMAC.
            "alg confusion, default algorithms",
            sign_with(
                Algorithm::HS256,
                &EncodingKey::from_secret(read_fixture("ed_public.pem").as_bytes()),
                None,
                with(json!({"iss": ED})),
            ),
        ),
        (
            "rs256 by the ES issuer",
            sign_with(Algorithm::RS256, &rsa, None, with(json!({"iss": ES}))),
        ),
        (
            "unknown kid",
            sign_with(
                Algorithm::RS256,
                &rsa,
                Some("nope"),
                with(json!({"iss": JWKS})),
            ),
        ),
        (
            "bad details",
            hmac_token(
                json!({"authorization_details": [{"type": DETAIL, "actions": ["publish"], "topics": "x"}]}),
            ),
        ),
        (
            "unknown match_type",
            hmac_token(details(
                &["publish"],
                json!([{"match": "a", "match_type": "regex"}]),
            )),
        ),
    ];
    for (what, t) in &invalid {
        let res = post(&hub, Some(t), &fields).await;
        assert_eq!(res.status(), 401, "{what}");
        let c = challenge(&res);
        assert!(
            c.starts_with("Bearer error=\"invalid_token\""),
            "{what}: {c}"
        );
        assert!(c.contains("resource_metadata=\"https://hub.example.com/.well-known/oauth-protected-resource/.well-known/mercure\""), "{c}");
    }

    // No token: a bare challenge pointing at the metadata.
    let res = post(&hub, None, &fields).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        challenge(&res),
        "Bearer resource_metadata=\"https://hub.example.com/.well-known/oauth-protected-resource/.well-known/mercure\""
    );
    // A valid token without the grant.
    let res = post(&hub, Some(&all(&["subscribe"])), &fields).await;
    assert_eq!(res.status(), 403);
    assert!(challenge(&res).starts_with("Bearer error=\"insufficient_scope\""));
    let res = post(
        &hub,
        Some(&ok_tokens[0].1),
        &[("topic", "https://elsewhere.example/a")],
    )
    .await;
    assert_eq!(res.status(), 403);
    // A malformed presentation.
    let res = client()
        .post(hub.hub_url())
        .header("authorization", "Bearer")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(challenge(&res).starts_with("Bearer error=\"invalid_request\""));
    // Credentials of another scheme: no bearer token (RFC 6750, 3.1).
    let res = client()
        .post(hub.hub_url())
        .header("authorization", "Basic abc")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(challenge(&res).starts_with("Bearer") && !challenge(&res).contains("error="));

    // Subscribers with an invalid token are refused before any stream.
    let bad = Subscription::open(
        &hub,
        &[("match", "a")],
        &[("authorization", &format!("Bearer {}", invalid[5].1))],
    )
    .await;
    assert_eq!(bad.status, 401);
}

#[tokio::test]
async fn presentation_header_cookie_and_no_query_tokens() {
    let hub = TestHub::start(config(None)).await;
    let reader = hmac_token(details(
        &["subscribe"],
        json!([{"match": "https://example.com/p"}]),
    ));
    let nothing = hmac_token(details(
        &["subscribe"],
        json!([{"match": "https://example.com/other"}]),
    ));
    let cookie = |t: &str| format!("__Secure-mercure_access_token={t}");

    let mut by_cookie = Subscription::open(
        &hub,
        &[("match", "https://example.com/p")],
        &[("cookie", &cookie(&reader))],
    )
    .await;
    assert_eq!(by_cookie.status, 200);
    // The header wins: this token does not grant the topic, the cookie's would.
    let mut header_wins = Subscription::open(
        &hub,
        &[("match", "https://example.com/p")],
        &[
            ("authorization", &format!("Bearer {nothing}")),
            ("cookie", &cookie(&reader)),
        ],
    )
    .await;
    assert_eq!(header_wins.status, 200);
    let mut anonymous = Subscription::open(&hub, &[("match", "https://example.com/p")], &[]).await;

    publish08(
        &hub,
        &[
            ("topic", "https://example.com/p"),
            ("data", "secret"),
            ("private", ""),
        ],
    )
    .await;
    publish08(
        &hub,
        &[("topic", "https://example.com/p"), ("data", "public")],
    )
    .await;
    assert_eq!(by_cookie.drain_data(SHORT).await, ["secret", "public"]);
    assert_eq!(header_wins.drain_data(SHORT).await, ["public"]);
    assert_eq!(anonymous.drain_data(SHORT).await, ["public"]);

    // An invalid header is not rescued by a valid cookie.
    let s = Subscription::open(
        &hub,
        &[("match", "https://example.com/p")],
        &[
            ("authorization", "Bearer garbage"),
            ("cookie", &cookie(&reader)),
        ],
    )
    .await;
    assert_eq!(s.status, 401);

    // Tokens in the query string of a draft-08 request are refused.
    for name in ["access_token", "authorization"] {
        let s = Subscription::open(&hub, &[("match", "a"), (name, &reader)], &[]).await;
        assert_eq!(s.status, 400, "{name}");
        assert!(s.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer error=\"invalid_request\""));
    }

    // The cookie name is configurable.
    let renamed = TestHub::start(HubConfig {
        access_token_cookie: "hub_token".into(),
        ..config(None)
    })
    .await;
    let mut s = Subscription::open(
        &renamed,
        &[("match", "https://example.com/p")],
        &[("cookie", &format!("hub_token={reader}"))],
    )
    .await;
    assert_eq!(s.status, 200);
    publish08(
        &renamed,
        &[
            ("topic", "https://example.com/p"),
            ("data", "s"),
            ("private", "on"),
        ],
    )
    .await;
    assert_eq!(s.next_event(LONG).await.unwrap().data, "s");
}

#[tokio::test]
async fn publishing_rules() {
    let hub = TestHub::start(config(None)).await;
    let token = all(&["publish"]);
    let cases: [(&[(&str, &str)], u16); 12] = [
        (&[("topic", "*")], 400),
        // Relative topics resolving into the namespace, as Mercure 1.0 says.
        (&[("topic", "#general")], 403),
        (&[("topic", "mercure/subscriptions/exact/a/b")], 403),
        (&[("topic", "?room=1")], 403),
        (
            &[("topic", "/.well-known/mercure/subscriptions/exact/a/b")],
            403,
        ),
        (
            &[(
                "topic",
                "https://hub.example.com/.well-known/mercure/subscriptions/x",
            )],
            403,
        ),
        (&[("topic", "/.well-known/mercure")], 403),
        (&[("topic", "a"), ("type", "mercure")], 400),
        (&[("topic", "a"), ("id", "#1")], 400),
        (&[("topic", "a"), ("id", "x\ny")], 400),
        (&[("topic", "a\u{85}b")], 400),
        (&[("topic", "a"), ("retry", "1s")], 400),
    ];
    for (fields, status) in cases {
        let res = post(&hub, Some(&token), fields).await;
        assert_eq!(res.status(), status, "{fields:?}");
    }
    // Not reserved: another path that merely starts alike.
    publish08(&hub, &[("topic", "/.well-known/mercurey"), ("data", "x")]).await;
    // A draft-07 publisher keeps the relative topics that only resolve to
    // the hub's URL itself, but not those below it.
    let c = client();
    for (topic, status) in [
        ("#general", 200),
        ("?room=1", 200),
        ("mercure", 200),
        ("mercure/subscriptions/exact/a/b", 403),
        ("/.well-known/mercure", 403),
        ("https://hub.example.com/.well-known/mercure", 403),
    ] {
        let (got, body) = common::publish(&c, &hub, &[("topic", topic)]).await;
        assert_eq!(got, status, "{topic}: {body}");
    }
    // Access tokens never travel in the URL, for publishers either.
    let res = client()
        .post(format!("{}?authorization={token}", hub.hub_url()))
        .form(&[("topic", "a")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(challenge(&res).starts_with("Bearer error=\"invalid_request\""));
    // `private` counts by presence, whatever its value.
    let mut anon = Subscription::open(&hub, &[("match", "t")], &[]).await;
    publish08(&hub, &[("topic", "t"), ("data", "p"), ("private", "")]).await;
    publish08(&hub, &[("topic", "t"), ("data", "q"), ("private", "false")]).await;
    let id = publish08(
        &hub,
        &[("topic", "t"), ("data", "visible"), ("id", "urn:my:1")],
    )
    .await;
    assert_eq!(id, "urn:my:1");
    let got = anon.drain_events(SHORT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, "visible");
    assert_eq!(got[0].id, "urn:my:1");
}

#[tokio::test]
async fn resume_with_last_event_id_and_the_current_token() {
    let hub = TestHub::start(config(None)).await;
    let first = publish08(&hub, &[("topic", "r"), ("data", "1")]).await;
    publish08(
        &hub,
        &[("topic", "r"), ("data", "2 private"), ("private", "")],
    )
    .await;
    publish08(&hub, &[("topic", "r"), ("data", "3")]).await;
    let reader = hmac_token(details(&["subscribe"], json!([{"match": "r"}])));
    let other = hmac_token(details(&["subscribe"], json!([{"match": "s"}])));

    // Query parameter; the token of the reconnection decides what replays.
    let mut s = Subscription::open(
        &hub,
        &[("match", "r"), ("last_event_id", &first)],
        &[("authorization", &format!("Bearer {reader}"))],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["mercure-last-event-id"], first.as_str());
    assert!(s.headers.get("last-event-id").is_none());
    let data = s.drain_data(SHORT).await;
    assert_eq!(data, ["2 private", "3"]);

    let mut narrow = Subscription::open(
        &hub,
        &[("match", "r"), ("last_event_id", &first)],
        &[("authorization", &format!("Bearer {other}"))],
    )
    .await;
    let data = narrow.drain_data(SHORT).await;
    assert_eq!(
        data,
        ["3"],
        "a private update replays only to a token granting it"
    );

    // The id of a private update the token may not read is not confirmed:
    // the hub answers as for an unknown id.
    let hidden = publish08(
        &hub,
        &[("topic", "r"), ("data", "4 private"), ("private", "")],
    )
    .await;
    let mut probe = Subscription::open(
        &hub,
        &[("match", "r"), ("last_event_id", &hidden)],
        &[("authorization", &format!("Bearer {other}"))],
    )
    .await;
    assert_eq!(probe.headers["mercure-last-event-id"], "earliest");
    let data = probe.drain_data(SHORT).await;
    assert_eq!(data, ["1", "3"]);
    let mut allowed = Subscription::open(
        &hub,
        &[("match", "r"), ("last_event_id", &hidden)],
        &[("authorization", &format!("Bearer {reader}"))],
    )
    .await;
    assert_eq!(allowed.headers["mercure-last-event-id"], hidden.as_str());
    assert!(allowed.drain_events(SHORT).await.is_empty());

    // The header wins over the query parameter.
    let mut h = Subscription::open(
        &hub,
        &[("match", "r"), ("last_event_id", "unknown")],
        &[("last-event-id", &first)],
    )
    .await;
    assert_eq!(h.headers["mercure-last-event-id"], first.as_str());
    assert_eq!(h.drain_events(SHORT).await.len(), 1);

    // An empty header says nothing: the query parameter applies.
    let e = Subscription::open(
        &hub,
        &[("match", "r"), ("last_event_id", &first)],
        &[("last-event-id", "")],
    )
    .await;
    assert_eq!(e.headers["mercure-last-event-id"], first.as_str());

    // Unknown id: everything retained (that it may read), and `earliest`
    // says so.
    let mut u = Subscription::open(&hub, &[("match", "r"), ("last_event_id", "nope")], &[]).await;
    assert_eq!(u.headers["mercure-last-event-id"], "earliest");
    assert_eq!(u.drain_events(SHORT).await.len(), 2);
    // No cursor, no header.
    let n = Subscription::open(&hub, &[("match", "r")], &[]).await;
    assert!(n.headers.get("mercure-last-event-id").is_none());
}

#[tokio::test]
async fn subscription_events_and_api() {
    let hub = TestHub::start(HubConfig {
        subscriptions: true,
        ..config(None)
    })
    .await;
    let pattern = "/.well-known/mercure/subscriptions/:type/:match/:subscriber";
    let watcher_token = hmac_token(details(
        &["subscribe"],
        json!([{"match": "/.well-known/mercure/subscriptions{/*}?", "match_type": "urlpattern"}]),
    ));
    let bearer = format!("Bearer {watcher_token}");
    let mut watcher = Subscription::open(
        &hub,
        &[("match_urlpattern", pattern)],
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(watcher.status, 200);
    // The watcher's own subscription is announced too.
    let own = watcher.next_event(LONG).await.unwrap();
    assert_eq!(own.event, "mercure");

    let member = hmac_token(json!({"authorization_details": [
        {"type": DETAIL, "actions": ["subscribe"], "topics": [{"match": "https://example.com/doc/:id", "match_type": "urlpattern"}], "payload": {"user": "alice"}},
        {"type": DETAIL, "actions": ["subscribe"], "topics": [{"match": "*"}], "payload": {"default": true}}
    ]}));
    let member_sub = Subscription::open(
        &hub,
        &[
            ("match_urlpattern", "https://example.com/doc/:id"),
            ("match", "https://example.com/lobby"),
        ],
        &[("authorization", &format!("Bearer {member}"))],
    )
    .await;
    assert_eq!(member_sub.status, 200);
    let mut docs = Vec::new();
    for _ in 0..2 {
        let e = watcher.next_event(LONG).await.unwrap();
        assert_eq!(e.event, "mercure");
        assert!(!e.data.contains('\n'));
        docs.push(serde_json::from_str::<Value>(&e.data).unwrap());
    }
    docs.sort_by_key(|d| d["match_type"].as_str().unwrap().to_owned());
    let subscriber = docs[0]["subscriber"].as_str().unwrap().to_owned();
    assert!(subscriber.starts_with("urn:uuid:"));
    assert_eq!(
        docs[0],
        json!({
            "id": format!("/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Flobby/{}", subscriber.replace(':', "%3A")),
            "type": "subscription",
            "subscriber": subscriber,
            "match": "https://example.com/lobby",
            "match_type": "exact",
            "active": true,
            "payload": {"default": true},
        })
    );
    assert_eq!(docs[1]["match_type"], "urlpattern");
    assert_eq!(docs[1]["payload"], json!({"user": "alice"}));
    assert_eq!(docs[1]["subscriber"], subscriber.as_str());

    // The API: the collection, in the token's revision.
    let c = client();
    let res = c
        .get(hub.url("/.well-known/mercure/subscriptions"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let link = res.headers()["link"].to_str().unwrap().to_owned();
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["type"], "subscriptions");
    assert_eq!(body["subscriptions"].as_array().unwrap().len(), 3);
    let last = body["last_event_id"].as_str().unwrap();
    assert_eq!(
        link,
        format!("</.well-known/mercure>; rel=\"mercure\"; last-event-id=\"{last}\"; type=\"mercure\"; content-type=\"application/json\"")
    );
    assert_eq!(etag, format!("\"{last}\""));
    // Not modified while nothing happened.
    let res = c
        .get(hub.url("/.well-known/mercure/subscriptions"))
        .header("authorization", &bearer)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);

    // One matcher's collection, and one subscription.
    let path = format!(
        "/.well-known/mercure/subscriptions/urlpattern/{}",
        herald_protocol::template::expand_simple("https://example.com/doc/:id")
    );
    let res = c
        .get(hub.url(&path))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], path.as_str());
    assert_eq!(body["subscriptions"].as_array().unwrap().len(), 1);
    let one = format!(
        "{path}/{}",
        herald_protocol::template::expand_simple(&subscriber)
    );
    let res = c
        .get(hub.url(&one))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["payload"], json!({"user": "alice"}));
    assert!(res_ok_link(&c, &hub, &one, &bearer).await);
    let missing = format!("{path}/urn%3Auuid%3A0");
    let res = c
        .get(hub.url(&missing))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Authorization: no token, or a token not covering the path.
    let res = c.get(hub.url(&one)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = c
        .get(hub.url(&one))
        .bearer_auth(hmac_token(details(
            &["subscribe"],
            json!([{"match": "https://example.com/x"}]),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // Leaving: `active: false` for both matchers.
    drop(member_sub);
    for _ in 0..2 {
        let e = watcher.next_event(LONG).await.unwrap();
        let d: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(d["active"], false);
        assert_eq!(d["subscriber"], subscriber.as_str());
    }
    // Anonymous subscribers never see subscription events.
    let mut anon = Subscription::open(&hub, &[("match_urlpattern", pattern)], &[]).await;
    let _member_again = Subscription::open(&hub, &[("match", "z")], &[]).await;
    assert!(anon.drain_events(SHORT).await.is_empty());
    // The draft-08 watcher saw both arrivals, in its format.
    let seen = watcher.drain_events(SHORT).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|e| e.event == "mercure"));
    assert!(seen.iter().any(|e| e.data.contains("\"match\":\"z\"")));

    // Each revision's watcher sees its own revision's events only, in its
    // own format, even with grants and selectors covering both.
    let v7_token = token(SUB_KEY, None, Some(&["*"]));
    let mut v7_watcher = Subscription::open(
        &hub,
        &[("topic", "*")],
        &[("authorization", &format!("Bearer {v7_token}"))],
    )
    .await;
    assert_eq!(v7_watcher.status, 200);
    let own = v7_watcher.next_event(LONG).await.unwrap();
    assert_eq!(own.event, "message");
    assert!(own.data.contains("\"@context\""), "{}", own.data);
    // The draft-07 watcher's own arrival is a draft-07 event: not for the
    // draft-08 watcher.
    assert!(watcher.drain_events(SHORT).await.is_empty());
    let _v7_member = Subscription::open(&hub, &[("topic", "https://example.com/v7")], &[]).await;
    let _v8_member = Subscription::open(&hub, &[("match", "https://example.com/v8")], &[]).await;
    let v7_seen = v7_watcher.drain_events(SHORT).await;
    assert_eq!(v7_seen.len(), 1, "{v7_seen:?}");
    let doc: Value = serde_json::from_str(&v7_seen[0].data).unwrap();
    assert_eq!(doc["topic"], "https://example.com/v7");
    assert_eq!(doc["type"], "Subscription");
    let v8_seen = watcher.drain_events(SHORT).await;
    assert_eq!(v8_seen.len(), 1, "{v8_seen:?}");
    assert_eq!(v8_seen[0].event, "mercure");
    let doc: Value = serde_json::from_str(&v8_seen[0].data).unwrap();
    assert_eq!(doc["match"], "https://example.com/v8");
}

async fn res_ok_link(c: &reqwest::Client, hub: &TestHub, path: &str, bearer: &str) -> bool {
    let res = c
        .get(hub.url(path))
        .header("authorization", bearer)
        .send()
        .await
        .unwrap();
    res.status() == 200
        && res.headers()["link"]
            .to_str()
            .unwrap()
            .starts_with("</.well-known/mercure>; rel=\"mercure\"; last-event-id=")
}

#[tokio::test]
async fn protected_resource_metadata() {
    let hub = TestHub::start(HubConfig {
        resource: Some("https://api.example.com/mercure-hub".into()),
        authorization_servers: vec![ES.into()],
        ..config(None)
    })
    .await;
    // RFC 9728: the metadata lives at the resource identifier's path.
    let res = client()
        .get(hub.url("/.well-known/oauth-protected-resource/mercure-hub"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["resource"], "https://api.example.com/mercure-hub");
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(
        doc["authorization_details_types_supported"],
        json!([DETAIL])
    );
    assert_eq!(doc["authorization_servers"], json!([ES]));
    assert_eq!(doc["mercure_cookie"], "__Secure-mercure_access_token");
    // `aud` is checked against the configured resource identifier.
    let t = hmac_token(
        json!({"aud": "https://api.example.com/mercure-hub", "authorization_details": [{"type": DETAIL, "actions": ["publish"], "topics": [{"match": "*"}]}]}),
    );
    assert_eq!(post(&hub, Some(&t), &[("topic", "a")]).await.status(), 200);
    let res = post(&hub, Some(&all(&["publish"])), &[("topic", "a")]).await;
    assert_eq!(res.status(), 401);
    // The challenge points at the metadata, with a fixed message.
    assert_eq!(
        challenge(&res),
        "Bearer error=\"invalid_token\", resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource/mercure-hub\""
    );
    assert_eq!(res.text().await.unwrap(), "invalid token\n");
    // A resource identifier that is not a URL is refused at start.
    let bad = HubConfig {
        resource: Some("urn:hub:1".into()),
        ..config(None)
    };
    assert!(herald::Hub::new(
        bad,
        std::sync::Arc::new(herald::engine::memory::MemoryEngine::new(10))
    )
    .is_err());
}

#[tokio::test]
async fn subscribing_with_query() {
    let hub = TestHub::start(config(None)).await;
    let query = reqwest::Method::from_bytes(b"QUERY").unwrap();
    let res = client()
        .request(query.clone(), hub.hub_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("match=https%3A%2F%2Fexample.com%2Fq&match_urlpattern=https%3A%2F%2Fexample.com%2Fr%2F%3Aid")
        .send()
        .await
        .unwrap();
    let mut s = Subscription::from_response(res);
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    publish08(&hub, &[("topic", "https://example.com/q"), ("data", "q")]).await;
    publish08(&hub, &[("topic", "https://example.com/r/1"), ("data", "r")]).await;
    assert_eq!(s.drain_data(SHORT).await, ["q", "r"]);

    // `last_event_id` in the body resumes like the query parameter.
    let first = publish08(&hub, &[("topic", "https://example.com/q"), ("data", "1")]).await;
    publish08(&hub, &[("topic", "https://example.com/q"), ("data", "2")]).await;
    let res = client()
        .request(query.clone(), hub.hub_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "match=https%3A%2F%2Fexample.com%2Fq&last_event_id={}",
            herald_protocol::template::expand_simple(&first)
        ))
        .send()
        .await
        .unwrap();
    let mut s = Subscription::from_response(res);
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["mercure-last-event-id"], first.as_str());
    assert_eq!(s.next_event(LONG).await.unwrap().data, "2");

    for (ct, status) in [(None, 400), (Some("application/json"), 415)] {
        let mut req = client()
            .request(query.clone(), hub.hub_url())
            .body("match=a");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        assert_eq!(req.send().await.unwrap().status(), status);
    }
    let res = client().delete(hub.hub_url()).send().await.unwrap();
    assert_eq!(res.status(), 405);
}

#[tokio::test]
async fn draft07_and_draft08_clients_on_one_endpoint() {
    let hub = TestHub::start(config(None)).await;
    let topic = "https://example.com/shared/1";
    // A draft-07 subscriber with a draft-07 token, a draft-08 one with an
    // access token; both may read the private updates of the topic.
    let v7_token = token(SUB_KEY, None, Some(&["https://example.com/shared/{id}"]));
    let mut v7 = Subscription::open(
        &hub,
        &[("topic", "https://example.com/shared/{id}")],
        &[("authorization", &format!("Bearer {v7_token}"))],
    )
    .await;
    let v8_token = hmac_token(details(
        &["subscribe"],
        json!([{"match": "https://example.com/shared/:id", "match_type": "urlpattern"}]),
    ));
    let mut v8 = Subscription::open(
        &hub,
        &[("match_urlpattern", "https://example.com/shared/:id")],
        &[("authorization", &format!("Bearer {v8_token}"))],
    )
    .await;
    assert_eq!((v7.status, v8.status), (200, 200));

    let c = client();
    let mut ids = Vec::new();
    // Draft-07 publisher: the `mercure.publish` claim.
    for private in [false, true] {
        let mut fields = vec![("topic", topic), ("data", "from v7")];
        if private {
            fields.push(("private", "on"));
        }
        ids.push(publish_ok(&c, &hub, &fields).await);
    }
    // Draft-08 publisher: an access token.
    for private in [false, true] {
        let mut fields = vec![("topic", topic), ("data", "from v8")];
        if private {
            fields.push(("private", "on"));
        }
        ids.push(publish08(&hub, &fields).await);
    }
    for s in [&mut v7, &mut v8] {
        let got = s.drain_events(SHORT).await;
        let seen: Vec<(String, String)> = got.into_iter().map(|e| (e.id, e.data)).collect();
        let want: Vec<(String, String)> = ids
            .iter()
            .zip(["from v7", "from v7", "from v8", "from v8"])
            .map(|(id, d)| (id.clone(), d.to_owned()))
            .collect();
        assert_eq!(seen, want);
    }
    // Each resumes in its own revision's terms.
    let r7 = Subscription::open(&hub, &[("topic", topic), ("lastEventID", &ids[0])], &[]).await;
    assert_eq!(r7.headers["last-event-id"], ids[0].as_str());
    let r8 = Subscription::open(&hub, &[("match", topic), ("last_event_id", &ids[0])], &[]).await;
    assert_eq!(r8.headers["mercure-last-event-id"], ids[0].as_str());
}
