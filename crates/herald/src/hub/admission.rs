//! Admission: how many event streams the hub holds (in all, per client
//! address and per token), how many selectors one token's streams hold,
//! how fast new streams start, and how fast one address or one token may
//! publish.
//!
//! The client's address is the connection's peer, or, when the peer is a
//! trusted proxy (`trusted_proxies`), the last address of
//! `X-Forwarded-For` that is not itself a trusted proxy (the one a proxy of
//! ours saw connect; anything left of it was written by the client and
//! proves nothing). A token is known by a hash of its text, so a leaked
//! token reaches no further than its limits.
//!
//! Publish rates are token buckets (the `governor` crate, keyed by address
//! and by token): `publish_rate_per_ip` and `publish_rate_per_token`
//! updates per second, with a burst of as many, so a batch of up to that
//! many goes at once.
//!
//! New streams are paced ([`Pacer`], `stream_admission_rate`): when
//! thousands of clients reconnect at once (after a restart), each waits
//! for its turn instead of being refused, because a browser's
//! `EventSource` gives up for good on any answer but `200`. Only a client
//! whose turn is more than [`PACING_MAX_WAIT`] away is refused (`503` with
//! `Retry-After`). A stream waits in [`crate::hub::Hub::subscribe`], after
//! its request was parsed and authorized and its token's limits applied,
//! so requests refused anyway never take a turn.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The longest a new stream waits for its turn under pacing; one whose
/// turn is further away is refused.
pub const PACING_MAX_WAIT: Duration = Duration::from_secs(30);

/// Why a connection or a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` event streams are open (`503`).
    Full,
    /// This address has `max_streams_per_ip` event streams open (`429`).
    PerIp(usize),
    /// This token has `max_streams_per_token` event streams open (`429`).
    PerToken(usize),
    /// This token's streams would hold more than
    /// `max_subscriptions_per_token` selectors (`429`).
    TokenSubscriptions(usize),
    /// One request asks for more selectors than
    /// `max_subscriptions_per_token` allows at all (`400`: retrying cannot
    /// pass).
    SelectorsOverTokenLimit(usize),
    /// New streams are paced and this one's turn is too far away (`503`,
    /// retry after this long).
    Paced(Duration),
    /// Over a publish rate: retry after this long (`429`).
    Rate(&'static str, Duration),
    /// More updates in one request than the rate allows in a second.
    TooLarge(&'static str, u32),
}

impl Refused {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::Full => "streams",
            Refused::PerIp(_) => "streams_per_ip",
            Refused::PerToken(_) => "streams_per_token",
            Refused::TokenSubscriptions(_) | Refused::SelectorsOverTokenLimit(_) => {
                "subscriptions_per_token"
            }
            Refused::Paced(_) => "stream_pacing",
            Refused::Rate(who, _) | Refused::TooLarge(who, _) => who,
        }
    }
}

/// What is held per key (a client address, a token).
type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// `n` units of one key's count, given back when dropped.
#[derive(Debug)]
struct Share<K: Hash + Eq> {
    counts: Counts<K>,
    key: K,
    n: usize,
}

impl<K: Hash + Eq + Clone> Share<K> {
    /// Takes `n` more of `key`'s count, unless that passes `max`.
    fn take(counts: &Counts<K>, key: K, n: usize, max: usize) -> Option<Self> {
        let mut map = counts.lock();
        let held = map.entry(key.clone()).or_insert(0);
        if *held + n > max {
            if *held == 0 {
                map.remove(&key);
            }
            return None;
        }
        *held += n;
        Some(Self {
            counts: counts.clone(),
            key,
            n,
        })
    }
}

impl<K: Hash + Eq> Drop for Share<K> {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(held) = map.get_mut(&self.key) {
            *held = held.saturating_sub(self.n);
            if *held == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// One event stream's place: in `max_connections`, and in its address's
/// count. Released when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    _global: OwnedSemaphorePermit,
    _ip: Option<Share<IpAddr>>,
}

/// One stream's share of its token's limits (streams, selectors),
/// released when dropped.
#[derive(Debug)]
pub struct TokenHold {
    _streams: Option<Share<u64>>,
    _selectors: Option<Share<u64>>,
}

/// Paces new event streams to `rate` per second with a burst of as many:
/// the generic cell rate algorithm, where each stream reserves the next
/// free slot, so waiting streams start in arrival order, one interval
/// apart, with no herd waking at once.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    /// How far ahead of its theoretical time a stream may start (the burst).
    tolerance: Duration,
    /// The theoretical arrival time of the next stream.
    next: Mutex<Instant>,
}

impl Pacer {
    /// `None` for a rate of 0 (no pacing).
    pub fn new(rate: u32) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / rate;
        Some(Self {
            interval,
            tolerance: interval * (rate - 1),
            next: Mutex::new(Instant::now()),
        })
    }

    /// How long a new stream waits for its turn, reserving it; refused
    /// when that is more than `max_wait`.
    pub fn turn(&self, max_wait: Duration) -> Result<Duration, Refused> {
        self.turn_at(Instant::now(), max_wait)
    }

    /// [`Pacer::turn`] for a stream arriving at `now`.
    fn turn_at(&self, now: Instant, max_wait: Duration) -> Result<Duration, Refused> {
        let mut next = self.next.lock();
        let tat = (*next).max(now);
        let start = tat.checked_sub(self.tolerance).map_or(now, |t| t.max(now));
        let wait = start - now;
        if wait > max_wait {
            return Err(Refused::Paced(wait - max_wait));
        }
        *next = tat + self.interval;
        Ok(wait)
    }
}

pub(crate) struct Admission {
    streams: Arc<Semaphore>,
    max_streams: usize,
    per_ip: Counts<IpAddr>,
    max_per_ip: usize,
    per_token: Counts<u64>,
    max_per_token: usize,
    selectors_per_token: Counts<u64>,
    max_selectors_per_token: usize,
    pacer: Option<Pacer>,
    trusted: Vec<IpNet>,
    publish_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    publish_token: Option<DefaultKeyedRateLimiter<u64>>,
    /// Publishes admitted: every so often the buckets are shrunk.
    checks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max_per_ip", &self.max_per_ip)
            .finish_non_exhaustive()
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_second: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_second).map(|n| RateLimiter::keyed(Quota::per_second(n)))
}

impl Admission {
    pub fn new(cfg: &crate::config::HubConfig) -> Self {
        Self {
            streams: Arc::new(Semaphore::new(cfg.max_connections)),
            max_streams: cfg.max_connections,
            per_ip: Counts::default(),
            max_per_ip: cfg.max_streams_per_ip,
            per_token: Counts::default(),
            max_per_token: cfg.max_streams_per_token,
            selectors_per_token: Counts::default(),
            max_selectors_per_token: cfg.max_subscriptions_per_token,
            pacer: Pacer::new(cfg.stream_admission_rate),
            trusted: cfg.trusted_proxies.clone(),
            publish_ip: limiter(cfg.publish_rate_per_ip),
            publish_token: limiter(cfg.publish_rate_per_token),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The client's address: see the module documentation.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }

    /// Event streams (and sockets) holding a place now.
    pub fn open_streams(&self) -> usize {
        self.max_streams
            .saturating_sub(self.streams.available_permits())
    }

    /// A place for one more event stream from `ip`.
    pub fn stream(&self, ip: Option<IpAddr>) -> Result<StreamPermit, Refused> {
        let global = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        let ip = match ip.filter(|_| self.max_per_ip > 0) {
            Some(ip) => Some(
                Share::take(&self.per_ip, ip, 1, self.max_per_ip)
                    .ok_or(Refused::PerIp(self.max_per_ip))?,
            ),
            None => None,
        };
        Ok(StreamPermit {
            _global: global,
            _ip: ip,
        })
    }

    /// How long a new stream waits for its turn (zero without pacing).
    pub fn pace(&self) -> Result<Duration, Refused> {
        match &self.pacer {
            Some(p) => p.turn(PACING_MAX_WAIT),
            None => Ok(Duration::ZERO),
        }
    }

    /// One more stream of `token`, holding `selectors` selectors.
    pub fn token(&self, token: u64, selectors: usize) -> Result<TokenHold, Refused> {
        let streams = match self.max_per_token {
            0 => None,
            max => Some(Share::take(&self.per_token, token, 1, max).ok_or(Refused::PerToken(max))?),
        };
        let selectors = match self.max_selectors_per_token {
            0 => None,
            max if selectors > max => return Err(Refused::SelectorsOverTokenLimit(max)),
            max => Some(
                Share::take(&self.selectors_per_token, token, selectors, max)
                    .ok_or(Refused::TokenSubscriptions(max))?,
            ),
        };
        Ok(TokenHold {
            _streams: streams,
            _selectors: selectors,
        })
    }

    /// Takes `n` updates from the publish rates of `ip` and of `token`.
    pub fn publish(&self, ip: Option<IpAddr>, token: Option<u64>, n: usize) -> Result<(), Refused> {
        let n =
            NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX).max(1)).unwrap_or(NonZeroU32::MIN);
        let checks = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if checks % 4096 == 4095 {
            self.shrink();
        }
        if let (Some(l), Some(ip)) = (&self.publish_ip, ip) {
            take(l, &ip, n, "publish_rate_per_ip")?;
        }
        if let (Some(l), Some(t)) = (&self.publish_token, token) {
            take(l, &t, n, "publish_rate_per_token")?;
        }
        Ok(())
    }

    /// Forgets buckets that are full again (their keys come back fresh).
    pub fn shrink(&self) {
        if let Some(l) = &self.publish_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.publish_token {
            l.retain_recent();
        }
    }
}

fn take<K: std::hash::Hash + Eq + Clone>(
    l: &DefaultKeyedRateLimiter<K>,
    key: &K,
    n: NonZeroU32,
    who: &'static str,
) -> Result<(), Refused> {
    match l.check_key_n(key, n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(Refused::Rate(
            who,
            not_until.wait_time_from(DefaultClock::default().now()),
        )),
        Err(insufficient) => Err(Refused::TooLarge(who, insufficient.0)),
    }
}

/// The client's address behind `trusted` proxies: walking
/// `X-Forwarded-For` from the right (the entries our proxies appended),
/// the first address that is not a trusted proxy. An entry that is not an
/// address stops the walk at the last hop read, so nothing the client
/// wrote left of it counts. IPv4 addresses mapped into IPv6 (a dual-stack
/// listener) count as IPv4.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(&client) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_last_address_a_trusted_proxy_did_not_write() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.9".parse().unwrap(),
        );
        h.append("x-forwarded-for", "10.1.2.3".parse().unwrap());
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's header proves nothing.
        let outsider: IpAddr = "192.0.2.5".parse().unwrap();
        assert_eq!(client_ip(outsider, &h, &trusted), outsider);
        // No header: the peer.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        // Every address trusted: the first one.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "10.0.0.1, 10.0.0.2".parse().unwrap());
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        // A client cannot hide behind an entry that is not an address: the
        // walk stops at it, at the hop our proxy wrote.
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "6.6.6.6, x, 203.0.113.9".parse().unwrap(),
        );
        assert_eq!(client_ip(peer, &h, &trusted), ip("203.0.113.9"));
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, x".parse().unwrap());
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        // A dual-stack listener's mapped address is the IPv4 one.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "203.0.113.9".parse().unwrap());
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("::ffff:192.0.2.1"), &h, &trusted),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn streams_are_counted_per_address_and_released() {
        let a = Admission::new(&crate::config::HubConfig {
            max_connections: 10,
            max_streams_per_ip: 2,
            ..Default::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let one = a.stream(Some(ip)).unwrap();
        let _two = a.stream(Some(ip)).unwrap();
        assert_eq!(a.stream(Some(ip)).unwrap_err(), Refused::PerIp(2));
        assert!(a.stream(Some("192.0.2.2".parse().unwrap())).is_ok());
        drop(one);
        assert!(a.stream(Some(ip)).is_ok());
    }

    #[test]
    fn a_token_holds_streams_and_selectors_until_dropped() {
        let a = Admission::new(&crate::config::HubConfig {
            max_streams_per_token: 2,
            max_subscriptions_per_token: 5,
            ..Default::default()
        });
        let one = a.token(7, 2).unwrap();
        let two = a.token(7, 3).unwrap();
        assert_eq!(a.token(7, 1).unwrap_err(), Refused::PerToken(2));
        // Another token has its own share.
        let _other = a.token(8, 5).unwrap();
        drop(one);
        assert_eq!(a.token(7, 3).unwrap_err(), Refused::TokenSubscriptions(5));
        // More selectors than the limit at all: never possible.
        assert_eq!(
            a.token(9, 6).unwrap_err(),
            Refused::SelectorsOverTokenLimit(5)
        );
        // A refusal took nothing: two selectors are free.
        let _three = a.token(7, 2).unwrap();
        drop(two);
        assert!(a.per_token.lock().get(&7).is_some_and(|n| *n == 1));
    }

    #[test]
    fn the_pacer_lets_a_burst_through_then_spaces_streams_out() {
        let p = Pacer::new(10).unwrap();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let second = Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(p.turn_at(t0, second).unwrap(), Duration::ZERO);
        }
        // Then one every 100 ms: the 11th waits 100 ms, the 12th 200 ms.
        assert_eq!(p.turn_at(t0, second).unwrap(), ms(100));
        assert_eq!(p.turn_at(t0, second).unwrap(), ms(200));
        // Later arrivals wait less for the same slots.
        assert_eq!(p.turn_at(t0 + ms(250), second).unwrap(), ms(50));
        for _ in 0..6 {
            p.turn_at(t0, second).unwrap();
        }
        // The 20th would wait 1 s: beyond a 500 ms limit it is refused,
        // and reserves nothing.
        assert_eq!(p.turn_at(t0, ms(500)), Err(Refused::Paced(ms(500))));
        assert_eq!(p.turn_at(t0, 2 * second).unwrap(), second);
        // After a quiet while, a burst goes through again.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.turn_at(later, second).unwrap(), Duration::ZERO);
    }
}
