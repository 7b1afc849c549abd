//! What replicas share besides the store's records, behind traits: a store that can share them
//! (Redis) brings one implementation of each; an issuer on its own, and MySQL (whose replicas
//! meet only in its tables), use the local ones. Nothing else in the issuer knows which store
//! it has.
//!
//! - [`Limiter`]: the rate limits — logins per client, WeChat calls per user
//!   ([`LocalLimiter`] per process; [`RedisLimiter`] one bucket per key for every replica, the
//!   local one deciding while Redis cannot answer).
//! - [`Announcements`]: hearing of revocations other replicas wrote ([`Polling`]: none, the
//!   seq is re-read every 250 ms — SQLite and MySQL; [`RedisAnnouncements`]: pub/sub, with a
//!   slow re-read as a safety net).
//! - [`HealthCheck`]: what the shared store itself cannot promise, read periodically
//!   ([`RedisHealthCheck`]: replicas online, evicted keys, the eviction policy).

use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::ratelimit::{RateLimiter, RetryAfter};
use crate::store::redis::{redis_err, RedisStore};
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::Metrics;

/// How many clients (or users) a local limiter tracks before it evicts full buckets.
const LOCAL_CLIENTS: usize = 100_000;

/// A rate limit with one bucket per key: logins per client address (`WEAUTH_LOGIN_RATE`,
/// `WEAUTH_LOGIN_BURST`), WeChat calls per user (`WEAUTH_USER_WECHAT_RATE`,
/// `WEAUTH_USER_WECHAT_BURST`).
#[async_trait]
pub trait Limiter<K>: Send + Sync {
    /// Takes one token for `key` at `now` (Unix seconds, fractional).
    ///
    /// # Errors
    /// [`RetryAfter`] when the key's bucket is empty.
    async fn take(&self, key: &K, now: f64) -> Result<(), RetryAfter>;
}

/// One token bucket per key in this process.
pub struct LocalLimiter<K>(Mutex<RateLimiter<K>>);

impl<K: Hash + Eq + Clone> LocalLimiter<K> {
    pub fn new(per_minute: u32, burst: u32) -> LocalLimiter<K> {
        LocalLimiter(Mutex::new(RateLimiter::new(
            per_minute,
            burst,
            LOCAL_CLIENTS,
        )))
    }

    fn take_now(&self, key: &K, now: f64) -> Result<(), RetryAfter> {
        // A panic while holding the lock cannot leave the buckets inconsistent (each update
        // is a few float assignments): keep limiting rather than fail every call.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(key, now)
    }
}

#[async_trait]
impl<K: Hash + Eq + Clone + Send + Sync> Limiter<K> for LocalLimiter<K> {
    async fn take(&self, key: &K, now: f64) -> Result<(), RetryAfter> {
        self.take_now(key, now)
    }
}

/// One bucket per key shared by every replica on the Redis store, under `rl:<key>` (logins,
/// per client address) or `ru:<key>` (WeChat calls, per user).
pub struct RedisLimiter<K> {
    redis: RedisStore,
    /// The buckets' key space: [`crate::store::redis::LOGIN_BUCKETS`] or
    /// [`crate::store::redis::USER_BUCKETS`].
    space: &'static str,
    per_minute: u32,
    burst: u32,
    /// Decides while Redis cannot answer (the call itself meets the same outage).
    local: LocalLimiter<K>,
}

impl<K: Hash + Eq + Clone> RedisLimiter<K> {
    pub fn new(redis: RedisStore, space: &'static str, per_minute: u32, burst: u32) -> Self {
        RedisLimiter {
            redis,
            space,
            per_minute,
            burst,
            local: LocalLimiter::new(per_minute, burst),
        }
    }
}

#[async_trait]
impl<K: Hash + Eq + Clone + Display + Send + Sync> Limiter<K> for RedisLimiter<K> {
    async fn take(&self, key: &K, now: f64) -> Result<(), RetryAfter> {
        match self
            .redis
            .rate_limit(self.space, key, self.per_minute, self.burst, now)
            .await
        {
            Ok(verdict) => verdict.map_or(Ok(()), |secs| Err(RetryAfter(secs))),
            Err(err) => {
                tracing::debug!(error = %err, "shared rate limit unavailable; using the local one");
                self.local.take_now(key, now)
            }
        }
    }
}

/// Hearing of the revocations other replicas write.
#[async_trait]
pub trait Announcements: Send + Sync {
    /// How often the store's seq is re-read: the only way to hear of other writers where
    /// nothing is announced, a safety net where announcements can be lost.
    fn reread_every(&self) -> Duration;

    /// Follows the announcements, passing each announced seq to `heard`, until the
    /// subscription is lost (then the caller waits a moment and calls again). Where nothing is
    /// announced, never returns.
    ///
    /// # Errors
    /// The subscription could not be made or was lost.
    async fn follow(&self, heard: &(dyn Fn(u64) + Send + Sync)) -> Result<(), StoreError>;
}

/// No announcements: the seq is re-read every 250 ms, so a revocation written by another
/// writer wakes this replica's long polls within 250 ms plus one read. SQLite (every writer
/// shares the file, `max(seq)` is cheap) and MySQL (one primary-key read of the
/// `revocation_seq` counter row per replica every 250 ms: 4 reads/s per replica, no
/// notification channel needed; `issuer/tests/mysql.rs` measures the wake-up across replicas).
pub struct Polling;

#[async_trait]
impl Announcements for Polling {
    fn reread_every(&self) -> Duration {
        Duration::from_millis(250)
    }

    async fn follow(&self, _: &(dyn Fn(u64) + Send + Sync)) -> Result<(), StoreError> {
        std::future::pending().await
    }
}

/// How often the revocation subscription checks that its server still answers.
pub const SUBSCRIPTION_PING_EVERY: Duration = Duration::from_secs(5);
/// How long that check waits for the answer.
pub const SUBSCRIPTION_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis pub/sub on the store's revocation channel (the REVOKE script publishes each new seq),
/// woken within milliseconds; the seq is re-read every 5 s for a message lost while the
/// subscription was reconnecting.
pub struct RedisAnnouncements(pub RedisStore);

#[async_trait]
impl Announcements for RedisAnnouncements {
    fn reread_every(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn follow(&self, heard: &(dyn Fn(u64) + Send + Sync)) -> Result<(), StoreError> {
        use futures_util::StreamExt as _;
        let channel = self.0.channel();
        let client = self.0.pubsub_client().await?;
        let mut pubsub = client.get_async_pubsub().await.map_err(redis_err)?;
        pubsub.subscribe(&channel).await.map_err(redis_err)?;
        // Messages published before the subscription are gone: read the seq once now.
        heard(self.0.current_seq().await?);
        tracing::debug!(channel = %channel, "following revocations");
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(SUBSCRIPTION_PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => {
                        if let Ok(seq) = message.get_payload::<u64>() {
                            heard(seq);
                        }
                    }
                    None => break,
                },
                // A server gone without closing the connection (its host lost, a partition)
                // ends nothing by itself: no message ever comes again, and the long polls
                // would wake on the 5 s re-read only, for good. An unanswered PING ends the
                // subscription; the caller subscribes again, to the primary of the moment.
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        SUBSCRIPTION_PING_TIMEOUT,
                        sink.ping::<redis::Value>(),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return Err(StoreError::Unavailable(
                            "the revocation subscription's server did not answer a PING".into(),
                        ));
                    }
                }
            }
        }
        Err(StoreError::Unavailable(
            "the revocation subscription ended".into(),
        ))
    }
}

/// A periodic check of the shared store's health, reported in the metrics.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// How often [`HealthCheck::check`] runs.
    fn every(&self) -> Duration;

    /// Reads the store's health and reports it (logs and `metrics`).
    async fn check(&self, metrics: &Metrics);
}

/// Redis: every second, the replicas the primary reports online, keys evicted since the last
/// read, and `maxmemory-policy` ([`RedisStore::check_health`]).
pub struct RedisHealthCheck(pub RedisStore);

#[async_trait]
impl HealthCheck for RedisHealthCheck {
    fn every(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn check(&self, metrics: &Metrics) {
        let health = self.0.check_health().await;
        metrics.redis_health(
            health.replicas,
            health.wanted,
            health.evicted_keys,
            health.unreplicated_writes,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[tokio::test]
    async fn local_limiter_refuses_past_the_burst_per_client() {
        let limiter = LocalLimiter::new(60, 2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_eq!(limiter.take(&a, 100.0).await, Ok(()));
        assert_eq!(limiter.take(&a, 100.0).await, Ok(()));
        assert_eq!(limiter.take(&a, 100.0).await, Err(RetryAfter(1)));
        assert_eq!(limiter.take(&b, 100.0).await, Ok(()), "another client");
        assert_eq!(limiter.take(&a, 101.0).await, Ok(()), "refilled");
    }
}
