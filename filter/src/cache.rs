//! A bounded per-VM cache of verified tokens, so a client that sends the same token on every
//! request pays for one signature check, not one per request.
//!
//! Keyed by the token text itself, and a hit is an exact match of the whole token: no cryptographic
//! hash per request (SHA-256 of a 400-byte token was the largest single cost of a cache hit in V8,
//! see `filter/examples/request_path.rs`). The map hashes with `foldhash` (seeded per map), not
//! std's SipHash: SipHash of a 400-byte token was the second largest of the native build's own
//! symbols per request (`perf`, 4 December 2026) and the request path example measures the hit at a
//! fraction of the time. SipHash's strength against chosen collisions is not needed here: only a
//! token that verified is ever inserted (the issuer signed it), so a client cannot fill the map
//! with keys of its choosing; a lookup hashes whatever token arrives but adds nothing. For the same
//! reason the hash reads only a token's last [`HASHED_TAIL`] bytes — the end of its signature,
//! which no two verified tokens share — while a hit still compares the whole text ([`TailHash`]: 40
//! of the 560 ns the native module spent on an allowed request hashed the whole 590-byte token).
//! The price is the token text in the VM's memory while cached (about 0.4 KiB an entry, 4 MiB at
//! the default 10 000) — the same bytes Envoy already holds in the request's headers; they are
//! never logged. An entry holds the verified claims, the key-set generation they were verified
//! under, the revocation generation they were last checked against, and the instant they stop being
//! acceptable (`exp + leeway`). A lookup misses when the entry has expired or the key set changed
//! (a key may have been withdrawn); when only the revocation generation moved, the caller re-checks
//! revocation and records the new generation ([`TokenCache::mark_checked`]). Eviction is first-in
//! first-out once `capacity` is reached. Pure: time is an argument.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

use weauth_token::Claims;

/// A cached token's text, shared by the map and the eviction order.
type TokenKey = Rc<str>;

#[derive(Debug, Clone)]
struct Entry {
    /// Shared with the decisions made from this entry: a hit costs a reference count, not a
    /// copy of every claim.
    claims: Rc<Claims>,
    keys_generation: u64,
    revocation_generation: u64,
    /// Unix seconds; the entry is unusable at or after this instant.
    valid_until: i64,
}

/// A cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub claims: Rc<Claims>,
    /// The revocation generation the claims were last checked against.
    pub revocation_generation: u64,
}

/// How many of a token's last bytes its hash reads: 24 bytes of signature, which a token
/// cannot share with another that verified without the issuer's key.
pub const HASHED_TAIL: usize = 32;

/// `foldhash` over the last [`HASHED_TAIL`] bytes of each write (a `str` key is one write of
/// its bytes and one of a terminator byte). Equality still compares whole tokens, so this only
/// decides which tokens share a bucket; only verified tokens are inserted, so a client cannot
/// choose colliding entries (see the module's docs).
#[derive(Debug, Clone, Default)]
pub struct TailHash(foldhash::fast::RandomState);

impl BuildHasher for TailHash {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

/// The hasher of [`TailHash`].
pub struct TailHasher(foldhash::fast::FoldHasher<'static>);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = bytes.get(bytes.len().saturating_sub(HASHED_TAIL)..);
        self.0.write(tail.unwrap_or(bytes));
    }
    fn write_u8(&mut self, byte: u8) {
        self.0.write_u8(byte);
    }
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// The cache. A capacity of 0 disables it.
#[derive(Debug, Clone, Default)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<TokenKey, Entry, TailHash>,
    order: VecDeque<TokenKey>,
}

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity,
            entries: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached claims for `key`, if still valid at `now` under key-set `keys_generation`.
    /// An expired or outdated entry is removed.
    pub fn get(&mut self, token: &str, now: i64, keys_generation: u64) -> Option<Hit> {
        let entry = self.entries.get(token)?;
        if entry.valid_until <= now || entry.keys_generation != keys_generation {
            self.entries.remove(token);
            return None;
        }
        Some(Hit {
            claims: Rc::clone(&entry.claims),
            revocation_generation: entry.revocation_generation,
        })
    }

    /// Caches freshly verified claims, valid until `exp + leeway`.
    pub fn insert(
        &mut self,
        token: &str,
        claims: Rc<Claims>,
        leeway: i64,
        keys_generation: u64,
        revocation_generation: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let valid_until = claims.exp.saturating_add(leeway);
        let fresh = !self.entries.contains_key(token);
        let key: TokenKey = Rc::from(token);
        self.entries.insert(
            Rc::clone(&key),
            Entry {
                claims,
                keys_generation,
                revocation_generation,
                valid_until,
            },
        );
        if fresh {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        // Keys removed by `get`/`remove` linger in `order`; keep it bounded too.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let entries = &self.entries;
            self.order.retain(|key| entries.contains_key(key));
        }
    }

    /// Records that the entry passed the revocation check at `revocation_generation`.
    pub fn mark_checked(&mut self, token: &str, revocation_generation: u64) {
        if let Some(entry) = self.entries.get_mut(token) {
            entry.revocation_generation = revocation_generation;
        }
    }

    /// Drops one entry (a revoked token).
    pub fn remove(&mut self, token: &str) {
        self.entries.remove(token);
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weauth_token::Audience;

    const NOW: i64 = 1_700_000_000;

    fn claims(jti: &str, exp: i64) -> Rc<Claims> {
        Rc::new(Claims {
            iss: "i".into(),
            aud: Audience::One("a".into()),
            sub: "u".into(),
            sid: "s".into(),
            jti: jti.into(),
            iat: NOW,
            nbf: NOW,
            exp,
            openid: "o".into(),
            unionid: None,
            appid: "w".into(),
            scope: None,
        })
    }

    #[test]
    fn get_after_insert_hits() {
        let mut cache = TokenCache::new(10);
        let key = "t";
        cache.insert(key, claims("j", NOW + 100), 0, 1, 5);
        let hit = cache.get(key, NOW, 1).unwrap();
        assert_eq!(hit.claims.jti, "j");
        assert_eq!(hit.revocation_generation, 5);
    }

    #[test]
    fn get_past_exp_plus_leeway_misses() {
        let mut cache = TokenCache::new(10);
        let key = "t";
        cache.insert(key, claims("j", NOW + 100), 60, 1, 0);
        assert!(cache.get(key, NOW + 159, 1).is_some());
        assert!(cache.get(key, NOW + 160, 1).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn get_other_keys_generation_misses() {
        let mut cache = TokenCache::new(10);
        let key = "t";
        cache.insert(key, claims("j", NOW + 100), 0, 1, 0);
        assert!(cache.get(key, NOW, 2).is_none());
    }

    #[test]
    fn insert_over_capacity_evicts_oldest() {
        let mut cache = TokenCache::new(2);
        for name in ["a", "b", "c"] {
            cache.insert(name, claims(name, NOW + 100), 0, 1, 0);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a", NOW, 1).is_none());
        assert!(cache.get("c", NOW, 1).is_some());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut cache = TokenCache::new(0);
        cache.insert("a", claims("a", NOW + 100), 0, 1, 0);
        assert!(cache.get("a", NOW, 1).is_none());
    }

    #[test]
    fn mark_checked_updates_revocation_generation() {
        let mut cache = TokenCache::new(2);
        let key = "a";
        cache.insert(key, claims("a", NOW + 100), 0, 1, 3);
        cache.mark_checked(key, 4);
        assert_eq!(cache.get(key, NOW, 1).unwrap().revocation_generation, 4);
    }

    #[test]
    fn order_stays_bounded_under_churn() {
        let mut cache = TokenCache::new(4);
        for i in 0..100 {
            let key = i.to_string();
            cache.insert(&key, claims("x", NOW + 100), 0, 1, 0);
            cache.remove(&key);
        }
        assert!(cache.order.len() <= 8);
    }

    #[test]
    fn tokens_sharing_their_hashed_tail_stay_apart() {
        let tail = "s".repeat(HASHED_TAIL);
        let (one, two) = (format!("a.b.{tail}"), format!("a.c.{tail}"));
        let hasher = TailHash::default();
        assert_eq!(hasher.hash_one(one.as_str()), hasher.hash_one(two.as_str()));
        let mut cache = TokenCache::new(4);
        cache.insert(&one, claims("one", NOW + 100), 0, 1, 0);
        assert!(cache.get(&two, NOW, 1).is_none());
        cache.insert(&two, claims("two", NOW + 100), 0, 1, 0);
        assert_eq!(cache.get(&one, NOW, 1).unwrap().claims.jti, "one");
        assert_eq!(cache.get(&two, NOW, 1).unwrap().claims.jti, "two");
        // Tokens shorter than the tail are hashed whole.
        assert_ne!(hasher.hash_one("a.b.c"), hasher.hash_one("a.b.d"));
    }

    #[test]
    fn get_needs_the_whole_token() {
        let mut cache = TokenCache::new(2);
        cache.insert("a.b.c", claims("j", NOW + 100), 0, 1, 0);
        assert!(cache.get("a.b.d", NOW, 1).is_none());
        assert!(cache.get("a.b.", NOW, 1).is_none());
        assert!(cache.get("a.b.c", NOW, 1).is_some());
    }
}
