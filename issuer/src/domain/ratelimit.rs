//! Rate limiting (pure: time is an argument) — logins per client address, WeChat calls per
//! user — and client-address resolution behind trusted proxies.
//!
//! A token bucket per key (a client's address, a user's `sub`): `burst` tokens, refilled at
//! `per_minute`. The table is bounded: when full, buckets that have refilled completely
//! (indistinguishable from new ones) are dropped, and if none has, the half holding the most
//! tokens goes (the oldest-touched first among equals).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use crate::config::IpNet;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: f64,
}

/// The limiter, one bucket per key `K`.
#[derive(Debug)]
pub struct RateLimiter<K = IpAddr> {
    per_second: f64,
    burst: f64,
    max_clients: usize,
    buckets: HashMap<K, Bucket>,
}

/// The client a rate-limit bucket is kept for: an IPv4 address, or an IPv6 address's /64 — the
/// prefix one host or subscriber line is given (RFC 6177), so cycling through the addresses
/// of one's own /64 does not give a fresh bucket per address (nor, by filling the table,
/// reset everyone else's). An IPv4-mapped IPv6 address is its IPv4 address.
pub fn client_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// A refusal: retry after this many whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` = 0 disables limiting.
    pub fn new(per_minute: u32, burst: u32, max_clients: usize) -> RateLimiter<K> {
        RateLimiter {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            max_clients: max_clients.max(16),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `client` at `now` (seconds, any monotonic origin).
    ///
    /// # Errors
    /// [`RetryAfter`] when the bucket is empty.
    pub fn check(&mut self, client: &K, now: f64) -> Result<(), RetryAfter> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= self.max_clients && !self.buckets.contains_key(client) {
            self.evict(now);
        }
        let (per_second, burst) = (self.per_second, self.burst);
        let bucket = self.buckets.entry(client.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = (now - bucket.updated).max(0.0);
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        // Never moved back (a backward step of the clock): the next reading would refill the
        // step again.
        bucket.updated = bucket.updated.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(RetryAfter((missing / per_second).ceil().max(1.0) as u64))
        }
    }

    fn evict(&mut self, now: f64) {
        let (per_second, burst) = (self.per_second, self.burst);
        let level = |b: &Bucket| (b.tokens + (now - b.updated).max(0.0) * per_second).min(burst);
        self.buckets.retain(|_, b| level(b) < burst);
        if self.buckets.len() >= self.max_clients {
            // Exactly half goes: the buckets holding the most tokens now (dropping a bucket
            // gives its client a full one, so these lose the least), the oldest-touched
            // first among equals. Not "every bucket touched at or before the median time":
            // touched in one instant (a burst of new addresses), that was every bucket, and
            // each limited client's was reset.
            let mut ranked: Vec<(f64, f64, K)> = self
                .buckets
                .iter()
                .map(|(key, b)| (level(b), b.updated, key.clone()))
                .collect();
            let half = ranked.len() / 2;
            ranked
                .select_nth_unstable_by(half, |a, b| b.0.total_cmp(&a.0).then(a.1.total_cmp(&b.1)));
            for (_, _, key) in &ranked[..half] {
                self.buckets.remove(key);
            }
        }
    }

    /// How many clients are tracked.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The client address: the peer, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` hop that is not itself a trusted proxy (hops further left are
/// client-controlled and ignored). A hop is an address, bare or with a port (`192.0.2.1:5678`,
/// `[2001:db8::1]:443`: some proxies append the client's port), or in brackets; a hop that is
/// none of these ends the walk (the trusted hop right of it is the client).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match forwarded_hop(hop.trim()) {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// One `X-Forwarded-For` hop's address ([`client_ip`]).
fn forwarded_hop(hop: &str) -> Result<IpAddr, ()> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Ok(socket.ip());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn limiter_burst_then_refused_with_retry_after() {
        let mut limiter = RateLimiter::new(60, 3, 100);
        for _ in 0..3 {
            assert!(limiter.check(&ip("1.1.1.1"), 0.0).is_ok());
        }
        assert_eq!(limiter.check(&ip("1.1.1.1"), 0.0), Err(RetryAfter(1)));
        assert!(limiter.check(&ip("2.2.2.2"), 0.0).is_ok());
    }

    #[test]
    fn limiter_refills_over_time() {
        let mut limiter = RateLimiter::new(6, 1, 100);
        assert!(limiter.check(&ip("1.1.1.1"), 0.0).is_ok());
        assert_eq!(limiter.check(&ip("1.1.1.1"), 1.0), Err(RetryAfter(9)));
        assert!(limiter.check(&ip("1.1.1.1"), 10.5).is_ok());
    }

    /// A clock going back and forth (a backward step, then the time again) refills only the
    /// time that really passed.
    #[test]
    fn limiter_clock_back_and_forth_refills_once() {
        let mut limiter = RateLimiter::new(10, 1, 100);
        let allowed = (0..10)
            .filter(|round| {
                let now = if round % 2 == 0 { 1000.0 } else { 1006.0 };
                limiter.check(&ip("1.1.1.1"), now).is_ok()
            })
            .count();
        assert_eq!(allowed, 2);
    }

    #[test]
    fn limiter_zero_rate_disabled() {
        let mut limiter = RateLimiter::new(0, 1, 100);
        for _ in 0..100 {
            assert!(limiter.check(&ip("1.1.1.1"), 0.0).is_ok());
        }
    }

    #[test]
    fn limiter_keyed_by_user() {
        let mut limiter: RateLimiter<String> = RateLimiter::new(60, 2, 100);
        let (alice, bob) = ("u_alice".to_string(), "u_bob".to_string());
        assert!(limiter.check(&alice, 0.0).is_ok());
        assert!(limiter.check(&alice, 0.0).is_ok());
        assert_eq!(limiter.check(&alice, 0.5), Err(RetryAfter(1)));
        assert!(limiter.check(&bob, 0.5).is_ok(), "another user's bucket");
        assert!(limiter.check(&alice, 1.0).is_ok(), "refilled");
    }

    #[test]
    fn limiter_table_bounded() {
        let mut limiter = RateLimiter::new(60, 5, 16);
        for i in 0..200u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            limiter.check(&addr, f64::from(i) * 0.001).unwrap();
        }
        assert!(limiter.tracked() <= 16);
    }

    /// When the table is full, a newcomer drops the buckets that have refilled completely and
    /// keeps a client still limited: its tokens are not reset to a fresh burst.
    #[test]
    fn limiter_full_table_drops_refilled_buckets_not_a_limited_one() {
        let mut limiter = RateLimiter::new(30, 3, 16);
        let limited = ip("10.0.0.1");
        for _ in 0..3 {
            limiter.check(&limited, 10.0).unwrap();
        }
        for i in 0..15u32 {
            let other = IpAddr::from((0x0b00_0000 + i).to_be_bytes());
            limiter.check(&other, 11.0).unwrap();
        }
        assert_eq!(limiter.tracked(), 16);
        // At 13.5 the others hold 2 + 1.25 tokens (full: dropped), the limited one 1.75.
        limiter.check(&ip("12.0.0.1"), 13.5).unwrap();
        assert_eq!(limiter.tracked(), 2);
        let allowed = (0..3)
            .filter(|_| limiter.check(&limited, 13.5).is_ok())
            .count();
        assert_eq!(allowed, 1);
    }

    /// A full table of limited clients drops its oldest-touched half for a newcomer, keeping
    /// the most recently touched buckets — also when every bucket has the same time.
    #[test]
    fn limiter_full_table_of_limited_clients_drops_the_oldest_half() {
        let client = |i: u32| IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        let mut limiter = RateLimiter::new(60, 1, 16);
        for i in 0..16u32 {
            limiter.check(&client(i), f64::from(i) * 0.01).unwrap();
        }
        limiter.check(&client(16), 0.2).unwrap();
        assert!(limiter.tracked() <= 9, "{}", limiter.tracked());
        assert_eq!(limiter.check(&client(15), 0.2), Err(RetryAfter(1)));
        let mut limiter = RateLimiter::new(60, 1, 16);
        for i in 0..100u32 {
            limiter.check(&client(i), 5.0).unwrap();
        }
        assert!(limiter.tracked() <= 16, "{}", limiter.tracked());
    }

    /// A full table whose buckets were all touched in the same instant drops half of them for
    /// a newcomer, those holding the most tokens: it dropped every one (the median time was
    /// every bucket's), and a burst of new addresses in one instant reset each limited
    /// client's bucket.
    #[test]
    fn limiter_full_table_touched_in_one_instant_drops_the_fullest_half() {
        let mut limiter = RateLimiter::new(60, 3, 16);
        let limited = ip("10.0.0.1");
        for _ in 0..3 {
            limiter.check(&limited, 5.0).unwrap();
        }
        for i in 0..15u32 {
            let other = IpAddr::from((0x0b00_0000 + i).to_be_bytes());
            limiter.check(&other, 5.0).unwrap();
        }
        assert_eq!(limiter.tracked(), 16);
        limiter.check(&ip("12.0.0.1"), 5.0).unwrap();
        assert_eq!(limiter.tracked(), 9);
        assert_eq!(limiter.check(&limited, 5.0), Err(RetryAfter(1)));
    }

    /// A tracked client asking again while the table is full evicts nothing: its own empty
    /// bucket is not dropped and replaced by a fresh one.
    #[test]
    fn limiter_full_table_keeps_the_bucket_of_a_returning_client() {
        let mut limiter = RateLimiter::new(60, 1, 16);
        let client = |i: u32| IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        for i in 0..16u32 {
            limiter.check(&client(i), f64::from(i) * 0.01).unwrap();
        }
        // The oldest-touched client, nothing refilled yet: refused, the table untouched.
        assert_eq!(limiter.check(&client(0), 0.2), Err(RetryAfter(1)));
        assert_eq!(limiter.tracked(), 16);
    }

    #[test]
    fn client_key_is_an_ipv6_address_s_64() {
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(client_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn client_ip_untrusted_peer_ignores_header() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            client_ip(ip("9.9.9.9"), Some("1.2.3.4"), &trusted),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn client_ip_trusted_peer_takes_rightmost_untrusted_hop() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("6.6.6.6, 1.2.3.4, 10.0.0.7"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("garbage, 1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
    }

    /// A hop with the client's port (some proxies append it) is its address: read as an
    /// unreadable hop, every request behind such a proxy counted as the proxy's own and shared
    /// one login bucket.
    #[test]
    fn client_ip_hops_with_ports_or_brackets_read_as_their_address() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        for (header, client) in [
            ("203.0.113.7:51234", "203.0.113.7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::8]", "2001:db8::8"),
            ("6.6.6.6, 203.0.113.9:80, 10.0.0.7:3128", "203.0.113.9"),
        ] {
            assert_eq!(
                client_ip(ip("10.0.0.1"), Some(header), &trusted),
                ip(client),
                "{header}"
            );
        }
        for unreadable in ["203.0.113.7:port", "[203.0.113.7]", "2001:db8::7]:443"] {
            assert_eq!(
                client_ip(ip("10.0.0.1"), Some(unreadable), &trusted),
                ip("10.0.0.1"),
                "{unreadable}"
            );
        }
    }
}
