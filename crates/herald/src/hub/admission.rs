//! Admission: how many event streams the hub holds (in all, and per
//! client address), and how fast one address or one token may publish.
//!
//! The client's address is the connection's peer, or, when the peer is a
//! trusted proxy (`trusted_proxies`), the last address of
//! `X-Forwarded-For` that is not itself a trusted proxy (the one a proxy of
//! ours saw connect; anything left of it was written by the client and
//! proves nothing).
//!
//! Publish rates are token buckets (the `governor` crate, keyed by address
//! and by token): `publish_rate_per_ip` and `publish_rate_per_token`
//! updates per second, with a burst of as many, so a batch of up to that
//! many goes at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection or a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` event streams are open (`503`).
    Full,
    /// This address has `max_streams_per_ip` event streams open (`429`).
    PerIp(usize),
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
            Refused::Rate(who, _) | Refused::TooLarge(who, _) => who,
        }
    }
}

/// Event streams open per client address.
type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One event stream's place: in `max_connections`, and in its address's
/// count. Released when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    _global: OwnedSemaphorePermit,
    ip: Option<(PerIp, IpAddr)>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some((counts, ip)) = self.ip.take() {
            let mut counts = counts.lock();
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

pub(crate) struct Admission {
    streams: Arc<Semaphore>,
    per_ip: PerIp,
    max_per_ip: usize,
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
    pub fn new(
        max_streams: usize,
        max_per_ip: usize,
        trusted: Vec<IpNet>,
        publish_rate_per_ip: u32,
        publish_rate_per_token: u32,
    ) -> Self {
        Self {
            streams: Arc::new(Semaphore::new(max_streams)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_per_ip,
            trusted,
            publish_ip: limiter(publish_rate_per_ip),
            publish_token: limiter(publish_rate_per_token),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The client's address: see the module documentation.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }

    /// A place for one more event stream from `ip`.
    pub fn stream(&self, ip: Option<IpAddr>) -> Result<StreamPermit, Refused> {
        let global = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        let ip = match ip.filter(|_| self.max_per_ip > 0) {
            Some(ip) => {
                let mut counts = self.per_ip.lock();
                let n = counts.entry(ip).or_insert(0);
                if *n >= self.max_per_ip {
                    return Err(Refused::PerIp(self.max_per_ip));
                }
                *n += 1;
                Some((self.per_ip.clone(), ip))
            }
            None => None,
        };
        Ok(StreamPermit {
            _global: global,
            ip,
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
        let a = Admission::new(10, 2, Vec::new(), 0, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let one = a.stream(Some(ip)).unwrap();
        let _two = a.stream(Some(ip)).unwrap();
        assert_eq!(a.stream(Some(ip)).unwrap_err(), Refused::PerIp(2));
        assert!(a.stream(Some("192.0.2.2".parse().unwrap())).is_ok());
        drop(one);
        assert!(a.stream(Some(ip)).is_ok());
    }
}
