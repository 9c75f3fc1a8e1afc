//! Authorization: private updates, token sources, and every refusal.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald::auth::{sign, Claims, KeyConfig, MercureClaim};
use herald::HubConfig;
use jsonwebtoken::Algorithm;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(publish: Option<&[&str]>, subscribe: Option<&[&str]>) -> Claims {
    Claims {
        mercure: MercureClaim {
            publish: publish.map(|v| v.iter().map(|s| s.to_string()).collect()),
            subscribe: subscribe.map(|v| v.iter().map(|s| s.to_string()).collect()),
            payload: None,
        },
        ..Claims::default()
    }
}

#[tokio::test]
async fn private_updates_reach_only_authorized_subscribers() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let allowed = token(SUB_KEY, None, Some(&["https://example.com/users/{id}"]));
    let other = token(SUB_KEY, None, Some(&["https://example.com/other"]));
    let mut authorized = Subscription::open(
        &hub,
        &[("topic", "https://example.com/users/{id}")],
        &[("Authorization", &format!("Bearer {allowed}"))],
    )
    .await;
    let mut unauthorized = Subscription::open(
        &hub,
        &[("topic", "https://example.com/users/{id}")],
        &[("Authorization", &format!("Bearer {other}"))],
    )
    .await;
    let mut anonymous = Subscription::topics(&hub, &["https://example.com/users/{id}"]).await;
    assert_eq!(authorized.status, 200);
    assert_eq!(unauthorized.status, 200);

    publish_ok(
        &c,
        &hub,
        &[
            ("topic", "https://example.com/users/1"),
            ("data", "secret"),
            ("private", "on"),
        ],
    )
    .await;
    publish_ok(
        &c,
        &hub,
        &[("topic", "https://example.com/users/2"), ("data", "public")],
    )
    .await;

    let a: Vec<_> = authorized
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let u: Vec<_> = unauthorized
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    let n: Vec<_> = anonymous
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(a, ["secret", "public"]);
    assert_eq!(u, ["public"]);
    assert_eq!(n, ["public"]);
}

#[tokio::test]
async fn private_updates_are_filtered_from_history_too() {
    let hub = TestHub::start(config()).await;
    let c = client();
    publish_ok(
        &c,
        &hub,
        &[("topic", "p"), ("data", "secret"), ("private", "")],
    )
    .await;
    publish_ok(&c, &hub, &[("topic", "p"), ("data", "public")]).await;
    let mut anon =
        Subscription::open(&hub, &[("topic", "p"), ("lastEventID", "earliest")], &[]).await;
    let got: Vec<_> = anon
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["public"]);
    let t = token(SUB_KEY, None, Some(&["p"]));
    let mut auth = Subscription::open(
        &hub,
        &[
            ("topic", "p"),
            ("lastEventID", "earliest"),
            ("authorization", &t),
        ],
        &[],
    )
    .await;
    let got: Vec<_> = auth
        .drain_events(SHORT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["secret", "public"]);
}

#[tokio::test]
async fn subscriber_token_from_cookie() {
    let hub = TestHub::start(config()).await;
    let c = client();
    let t = token(SUB_KEY, None, Some(&["*"]));
    let mut s = Subscription::open(
        &hub,
        &[("topic", "p")],
        &[("Cookie", &format!("x=1; mercureAuthorization={t}"))],
    )
    .await;
    assert_eq!(s.status, 200);
    publish_ok(
        &c,
        &hub,
        &[("topic", "p"), ("data", "secret"), ("private", "on")],
    )
    .await;
    assert_eq!(s.next_event(LONG).await.unwrap().data, "secret");
}

#[tokio::test]
async fn anonymous_subscribers_can_be_refused() {
    let hub = TestHub::start(HubConfig {
        anonymous: false,
        ..config()
    })
    .await;
    let s = Subscription::topics_status(&hub, &["t"]).await;
    assert_eq!(s, 401);
    let t = token(SUB_KEY, None, Some(&["t"]));
    let s = Subscription::open(
        &hub,
        &[("topic", "t")],
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(s.status, 200);
}

#[tokio::test]
async fn bad_subscriber_tokens_get_401() {
    let hub = TestHub::start(config()).await;
    let wrong_key = token(PUB_KEY, None, Some(&["*"])); // signed with the publisher key
    let expired = sign(
        &Claims {
            exp: Some(now() - 10),
            ..claims(None, Some(&["*"]))
        },
        &KeyConfig::hmac(SUB_KEY),
    )
    .unwrap();
    let premature = sign(
        &Claims {
            nbf: Some(now() + 3600),
            ..claims(None, Some(&["*"]))
        },
        &KeyConfig::hmac(SUB_KEY),
    )
    .unwrap();
    let hs512 = sign(
        &claims(None, Some(&["*"])),
        &KeyConfig {
            key: SUB_KEY.into(),
            algorithm: Algorithm::HS512,
        },
    )
    .unwrap();
    let none_alg = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"mercure":{"subscribe":["*"]}}"#)
    );
    for (name, t) in [
        ("wrong key", wrong_key),
        ("expired", expired),
        ("not yet valid", premature),
        ("wrong algorithm", hs512),
        ("alg none", none_alg),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let s = Subscription::open(
            &hub,
            &[("topic", "t")],
            &[("Authorization", &format!("Bearer {t}"))],
        )
        .await;
        assert_eq!(s.status, 401, "{name}");
    }
    // Credentials of another scheme are no bearer token: 401 with a bare
    // challenge, no error code (RFC 6750, 3.1).
    let s = Subscription::open(&hub, &[("topic", "t")], &[("Authorization", "Basic abc")]).await;
    assert_eq!(s.status, 401, "another scheme");
    let c = s.headers["www-authenticate"].to_str().unwrap();
    assert!(c.starts_with("Bearer") && !c.contains("error="), "{c}");
    let res = client()
        .post(hub.hub_url())
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .form(&[("topic", "t"), ("data", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a publish with Basic credentials");
    let c = res.headers()["www-authenticate"].to_str().unwrap();
    assert!(c.starts_with("Bearer") && !c.contains("error="), "{c}");
    // A malformed bearer presentation is a bad request (RFC 6750
    // invalid_request).
    for bad in ["Bearer", "Bearer ", "Bearer, x"] {
        let s = Subscription::open(&hub, &[("topic", "t")], &[("Authorization", bad)]).await;
        assert_eq!(s.status, 400, "malformed header {bad:?}");
        assert!(s.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer error=\"invalid_request\""));
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn stream_closes_when_the_token_expires() {
    let hub = TestHub::start(config()).await;
    let t = sign(
        &Claims {
            exp: Some(now() + 2),
            ..claims(None, Some(&["*"]))
        },
        &KeyConfig::hmac(SUB_KEY),
    )
    .unwrap();
    let mut s = Subscription::open(
        &hub,
        &[("topic", "t")],
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(
        s.wait_end(Duration::from_secs(6)).await,
        "stream still open after expiry"
    );
    // The hub remembers verified tokens, but not past their expiry: the
    // same token is refused now.
    let again = Subscription::open(
        &hub,
        &[("topic", "t")],
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(again.status, 401);
    // A token the subscriber key verified (and the hub remembers) still
    // does not verify with the publisher key.
    let t = sign(
        &claims(Some(&["*"]), Some(&["*"])),
        &KeyConfig::hmac(SUB_KEY),
    )
    .unwrap();
    let bearer = format!("Bearer {t}");
    let s = Subscription::open(&hub, &[("topic", "t")], &[("Authorization", &bearer)]).await;
    assert_eq!(s.status, 200);
    let (status, _) = publish_with(&hub, &[("Authorization", &bearer)], &[("topic", "t")]).await;
    assert_eq!(status, 401);
}

async fn publish_with(
    hub: &TestHub,
    headers: &[(&str, &str)],
    fields: &[(&str, &str)],
) -> (u16, String) {
    let mut req = client().post(hub.hub_url()).form(fields);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn publish_authorization() {
    let hub = TestHub::start(HubConfig {
        publish_origins: vec!["https://app.example".into()],
        ..config()
    })
    .await;
    let f = [("topic", "https://example.com/a"), ("data", "x")];
    let bearer = |t: &str| format!("Bearer {t}");
    // No token.
    assert_eq!(publish_with(&hub, &[], &f).await.0, 401);
    // Subscriber key is not the publisher key.
    let t = token(SUB_KEY, Some(&["*"]), None);
    assert_eq!(
        publish_with(&hub, &[("Authorization", &bearer(&t))], &f)
            .await
            .0,
        401
    );
    // No publish claim.
    let t = token(PUB_KEY, None, Some(&["*"]));
    assert_eq!(
        publish_with(&hub, &[("Authorization", &bearer(&t))], &f)
            .await
            .0,
        403
    );
    // Every topic must be allowed.
    let t = token(PUB_KEY, Some(&["https://example.com/a"]), None);
    assert_eq!(
        publish_with(&hub, &[("Authorization", &bearer(&t))], &f)
            .await
            .0,
        200
    );
    let two = [
        ("topic", "https://example.com/a"),
        ("topic", "https://example.com/b"),
        ("data", "x"),
    ];
    assert_eq!(
        publish_with(&hub, &[("Authorization", &bearer(&t))], &two)
            .await
            .0,
        403
    );
    // Templates in the publish claim.
    let t = token(PUB_KEY, Some(&["https://example.com/{x}"]), None);
    assert_eq!(
        publish_with(&hub, &[("Authorization", &bearer(&t))], &two)
            .await
            .0,
        200
    );
    // Cookie: only from allowed origins.
    let t = token(PUB_KEY, Some(&["*"]), None);
    let cookie = format!("mercureAuthorization={t}");
    assert_eq!(
        publish_with(&hub, &[("Cookie", &cookie)], &f).await.0,
        403,
        "no origin"
    );
    assert_eq!(
        publish_with(
            &hub,
            &[("Cookie", &cookie), ("Origin", "https://evil.example")],
            &f
        )
        .await
        .0,
        403
    );
    assert_eq!(
        publish_with(
            &hub,
            &[("Cookie", &cookie), ("Origin", "https://app.example")],
            &f
        )
        .await
        .0,
        200
    );
    assert_eq!(
        publish_with(
            &hub,
            &[
                ("Cookie", &cookie),
                ("Referer", "https://app.example/page?x")
            ],
            &f
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn rsa_and_ec_keys() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}{f}")).unwrap();
    for (alg, public, private) in [
        (Algorithm::RS256, "rsa_public.pem", "rsa_private.pem"),
        (Algorithm::ES256, "ec_public.pem", "ec_private.pem"),
    ] {
        let hub = TestHub::start(HubConfig {
            publisher_jwt: Some(KeyConfig {
                key: read(public),
                algorithm: alg,
            }),
            subscriber_jwt: Some(KeyConfig {
                key: read(public),
                algorithm: alg,
            }),
            ..HubConfig::default()
        })
        .await;
        let t = sign(
            &claims(Some(&["*"]), Some(&["*"])),
            &KeyConfig {
                key: read(private),
                algorithm: alg,
            },
        )
        .unwrap();
        let mut s = Subscription::open(
            &hub,
            &[("topic", "t")],
            &[("Authorization", &format!("Bearer {t}"))],
        )
        .await;
        assert_eq!(s.status, 200, "{alg:?}");
        let (status, _) = publish_with(
            &hub,
            &[("Authorization", &format!("Bearer {t}"))],
            &[("topic", "t"), ("data", "signed"), ("private", "on")],
        )
        .await;
        assert_eq!(status, 200, "{alg:?}");
        assert_eq!(s.next_event(LONG).await.unwrap().data, "signed");
        // An HMAC token is refused when the hub expects RSA/EC.
        let hmac = token("whatever-secret", Some(&["*"]), None);
        let (status, _) = publish_with(
            &hub,
            &[("Authorization", &format!("Bearer {hmac}"))],
            &[("topic", "t")],
        )
        .await;
        assert_eq!(status, 401, "{alg:?}");
    }
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let hub = TestHub::start(HubConfig {
        cors_origins: vec!["https://app.example".into()],
        ..config()
    })
    .await;
    let c = client();
    let r = c
        .request(reqwest::Method::OPTIONS, hub.hub_url())
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "GET")
        .header(
            "Access-Control-Request-Headers",
            "authorization,last-event-id",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let r = c
        .request(reqwest::Method::OPTIONS, hub.hub_url())
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // QUERY subscriptions may be sent cross-origin, and both revisions'
    // resume headers and the subscriptions API's Link can be read, on the
    // direct event-stream path and on hyper's alike.
    let r = c
        .request(reqwest::Method::OPTIONS, hub.hub_url())
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "QUERY")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let methods = r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("QUERY"), "{methods}");
    let s = Subscription::open(
        &hub,
        &[("match", "t")],
        &[("Origin", "https://app.example")],
    )
    .await;
    let exposed = s.headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for h in ["mercure-last-event-id", "last-event-id", "link"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    let r = c
        .get(hub.url("/.well-known/mercure/subscriptions"))
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(exposed.contains("link"), "{exposed}");
}

/// A token whose `exp` is centuries away (here the largest there is) is
/// simply valid: the hub does not fail computing when it expires.
#[tokio::test]
async fn an_exp_beyond_any_clock_is_never() {
    let hub = TestHub::start(config()).await;
    let t = sign(
        &Claims {
            exp: Some(u64::MAX),
            ..claims(None, Some(&["*"]))
        },
        &KeyConfig::hmac(SUB_KEY),
    )
    .unwrap();
    let mut s = Subscription::open(
        &hub,
        &[("topic", "t")],
        &[("Authorization", &format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(s.status, 200);
    let c = client();
    let id = publish_ok(&c, &hub, &[("topic", "t"), ("data", "x")]).await;
    assert_eq!(s.next_event(Duration::from_secs(2)).await.unwrap().id, id);
}
