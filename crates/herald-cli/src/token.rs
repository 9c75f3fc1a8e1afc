//! `herald token`: mint a JWT carrying a Mercure claim (draft-07), or, with
//! `--issuer`, a Mercure 1.0 access token (draft-08).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use herald::auth::{self, Claims, KeyConfig, MercureClaim};
use jsonwebtoken::Algorithm;

use crate::settings::parse_duration;

/// Mint a JWT for publishing and subscribing; prints the token alone on stdout.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topic selector the token may publish to (repeatable).
    #[arg(long = "publish", value_name = "SELECTOR")]
    publish: Vec<String>,
    /// Topic selector the token may subscribe to (repeatable).
    #[arg(long = "subscribe", value_name = "SELECTOR")]
    subscribe: Vec<String>,
    /// JSON handed to subscription events as `payload`.
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    payload: Option<serde_json::Value>,
    /// Lifetime of the token, e.g. 30m, 1h, 3600s; sets `exp` [default: no expiry].
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Subject (`sub` claim).
    #[arg(long, value_name = "SUBJECT")]
    sub: Option<String>,
    /// Signing key: the HMAC secret, or an RSA / EC / Ed25519 private key as
    /// PEM text or a path to a PEM file.
    #[arg(
        long,
        value_name = "KEY",
        env = "HERALD_PUBLISHER_JWT",
        hide_env_values = true
    )]
    key: Option<String>,
    /// Signing algorithm (HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA).
    #[arg(
        long,
        value_name = "ALG",
        env = "HERALD_PUBLISHER_JWT_ALG",
        default_value = "HS256",
        value_parser = parse_alg
    )]
    alg: Algorithm,
    /// Mint a draft-08 access token (`typ: at+jwt`) from this issuer (`iss`)
    /// instead of a draft-07 token; `--publish` and `--subscribe` become
    /// exact matchers of its `authorization_details`.
    #[arg(long, value_name = "ISSUER")]
    issuer: Option<String>,
    /// Audience (`aud`) of an access token: the hub's resource identifier,
    /// by default its public URL.
    #[arg(long, value_name = "RESOURCE", requires = "issuer")]
    audience: Option<String>,
    /// URL pattern the access token may publish to (repeatable).
    #[arg(long = "publish-pattern", value_name = "PATTERN", requires = "issuer")]
    publish_pattern: Vec<String>,
    /// URL pattern the access token may subscribe to (repeatable).
    #[arg(
        long = "subscribe-pattern",
        value_name = "PATTERN",
        requires = "issuer"
    )]
    subscribe_pattern: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Some(key) = args.key.as_deref() else {
        bail!("a signing key is required: pass --key or set HERALD_PUBLISHER_JWT");
    };
    let cfg = key_config(key, args.alg)?;
    if let Some(issuer) = &args.issuer {
        let Some(audience) = &args.audience else {
            bail!("an access token needs --audience: the hub's resource identifier (by default its public URL)");
        };
        let token = access_token(&cfg, issuer, audience, &args)?;
        println!("{token}");
        return Ok(());
    }
    let claims = Claims {
        mercure: MercureClaim {
            publish: non_empty(args.publish),
            subscribe: non_empty(args.subscribe),
            payload: args.payload,
        },
        exp: args.ttl.map(|ttl| expiry(now_secs(), ttl)),
        nbf: None,
        sub: args.sub,
    };
    let token = auth::sign(&claims, &cfg).context("cannot sign")?;
    println!("{token}");
    Ok(())
}

/// A Mercure 1.0 access token: RFC 9068 claims and one authorization
/// detail per action.
fn access_token(cfg: &KeyConfig, issuer: &str, audience: &str, a: &Args) -> anyhow::Result<String> {
    use herald_protocol::authz::DETAIL_TYPE;
    use serde_json::{json, Value};
    let matchers = |exact: &[String], patterns: &[String]| -> Vec<Value> {
        exact
            .iter()
            .map(|m| json!({"match": m}))
            .chain(
                patterns
                    .iter()
                    .map(|m| json!({"match": m, "match_type": "urlpattern"})),
            )
            .collect()
    };
    let mut details = Vec::new();
    let publish = matchers(&a.publish, &a.publish_pattern);
    if !publish.is_empty() {
        details.push(json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": publish}));
    }
    let subscribe = matchers(&a.subscribe, &a.subscribe_pattern);
    if !subscribe.is_empty() {
        let mut d = json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": subscribe});
        if let Some(p) = &a.payload {
            d["payload"] = p.clone();
        }
        details.push(d);
    }
    let now = now_secs();
    // An access token must expire: an hour unless told otherwise.
    let ttl = a.ttl.unwrap_or(Duration::from_secs(3600));
    let mut claims = json!({
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": expiry(now, ttl),
        "jti": uuid::Uuid::new_v4().to_string(),
        "client_id": "herald-cli",
        "authorization_details": details,
    });
    if let Some(sub) = &a.sub {
        claims["sub"] = json!(sub);
    }
    let mut header = jsonwebtoken::Header::new(cfg.algorithm);
    header.typ = Some("at+jwt".to_owned());
    let key = auth::encoding_key(cfg).context("cannot sign")?;
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| anyhow::anyhow!("cannot sign: {e}"))
}

/// Builds the signing key configuration. For asymmetric algorithms a value
/// that is not PEM text is read as the path of a PEM file.
pub(crate) fn key_config(key: &str, algorithm: Algorithm) -> anyhow::Result<KeyConfig> {
    if key.is_empty() {
        bail!("the signing key is empty");
    }
    let is_hmac = matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    );
    let key = if is_hmac || key.trim_start().starts_with("-----BEGIN") {
        key.to_owned()
    } else {
        std::fs::read_to_string(key).with_context(|| format!("cannot read key file {key}"))?
    };
    Ok(KeyConfig { key, algorithm })
}

/// Signs a token allowing `claim`, valid for `ttl`.
pub(crate) fn mint(cfg: &KeyConfig, claim: MercureClaim, ttl: Duration) -> anyhow::Result<String> {
    let claims = Claims {
        mercure: claim,
        exp: Some(expiry(now_secs(), ttl)),
        ..Default::default()
    };
    auth::sign(&claims, cfg).context("cannot sign a token")
}

fn expiry(now: u64, ttl: Duration) -> u64 {
    // Round up so a sub-second ttl still yields a token valid for a moment.
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    now.saturating_add(secs)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn non_empty(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}

pub(crate) fn parse_alg(s: &str) -> Result<Algorithm, auth::KeyError> {
    auth::parse_algorithm(s)
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("the ttl must be longer than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::auth::Verifier;

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("3600s").unwrap(), Duration::from_secs(3600));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn expiry_rounds_up() {
        assert_eq!(expiry(100, Duration::from_secs(60)), 160);
        assert_eq!(expiry(100, Duration::from_millis(1500)), 102);
        assert_eq!(expiry(u64::MAX, Duration::from_secs(1)), u64::MAX);
    }

    #[test]
    fn payload_must_be_json() {
        assert_eq!(
            parse_json(r#"{"a":1}"#).unwrap(),
            serde_json::json!({"a": 1})
        );
        assert!(parse_json("{nope")
            .unwrap_err()
            .starts_with("not valid JSON"));
    }

    #[test]
    fn algorithms() {
        assert_eq!(parse_alg("RS256").unwrap(), Algorithm::RS256);
        assert!(parse_alg("none").is_err());
    }

    #[test]
    fn hmac_key_is_used_verbatim() {
        let cfg = key_config("not/a/path", Algorithm::HS256).unwrap();
        assert_eq!(cfg.key, "not/a/path");
        assert!(key_config("", Algorithm::HS256).is_err());
    }

    #[test]
    fn asymmetric_key_is_pem_or_path() {
        let pem = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";
        assert_eq!(key_config(pem, Algorithm::ES256).unwrap().key, pem);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, pem).unwrap();
        let cfg = key_config(path.to_str().unwrap(), Algorithm::RS256).unwrap();
        assert_eq!(cfg.key, pem);

        let missing = dir.path().join("missing.pem");
        let err = key_config(missing.to_str().unwrap(), Algorithm::RS256).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read key file"),
            "{err:#}"
        );
    }

    #[test]
    fn minted_token_verifies() {
        let cfg = KeyConfig::hmac("a-secret-long-enough-for-hs256!!");
        let claim = MercureClaim {
            publish: Some(vec!["https://example.com/a".into()]),
            ..Default::default()
        };
        let token = mint(&cfg, claim.clone(), Duration::from_secs(60)).unwrap();
        let claims = Verifier::new(&cfg).unwrap().verify(&token).unwrap();
        assert_eq!(claims.mercure, claim);
        assert!(claims.exp.unwrap() > now_secs());
    }

    #[test]
    fn signs_with_fixture_keys() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../herald/tests/fixtures");
        for (alg, name) in [(Algorithm::RS256, "rsa"), (Algorithm::ES256, "ec")] {
            let private = format!("{fixtures}/{name}_private.pem");
            let public = std::fs::read_to_string(format!("{fixtures}/{name}_public.pem")).unwrap();
            let cfg = key_config(&private, alg).unwrap();
            let token = mint(&cfg, MercureClaim::default(), Duration::from_secs(60)).unwrap();
            let verifier = Verifier::new(&KeyConfig {
                key: public,
                algorithm: alg,
            })
            .unwrap();
            assert!(verifier.verify(&token).is_ok(), "{alg:?}");
        }
    }
}
