//! The native build's state and fetchers (Envoy's dynamic-module ABI; the FFI itself is
//! `ffi`, behind the `envoy-native` feature, and holds every `unsafe` of the crate).
//!
//! What native makes possible over proxy-wasm, and what this module does with it:
//! - **One state per Envoy, not per worker.** A filter configuration is one [`Shared`] value
//!   that every worker thread reads: the keys and the revocation set sit behind
//!   [`arc_swap::ArcSwapOption`]s, so a request reads them lock-free and the fetcher replaces
//!   them whole. Only the token cache stays per worker thread (a thread-local map keyed by the
//!   configuration), because it is written on every miss.
//! - **Fetched once per Envoy.** The [`Fetcher`] runs on Envoy's main thread only (driven by
//!   the ABI's per-configuration scheduler, ticked every 100 ms) and calls the issuer through
//!   the configured cluster with the ABI's per-configuration HTTP callout, as the wasm build
//!   does through `dispatch_http_call`. No lease and no shared-data shards are needed.
//! - **One set in memory, not one per answer.** A feed answer is read straight into rows
//!   ([`FeedPage`]) and applied to a clone of the published set, which shares every shard with
//!   it: only the shards the answer touches are copied. A large set arrives as pages of
//!   [`FEED_PAGE_ENTRIES`](refresh::FEED_PAGE_ENTRIES) that the issuer sends back to back; while they come, the fetcher
//!   applies them in place to a private set and publishes it once ([`Staging`], which the wasm
//!   build shares) — instead of copying the growing set for every page.
//! - **The body stays where Envoy put it.** A feed answer is read from the pieces of Envoy's
//!   buffer ([`FeedPage::parse_chunks`]), not from a joined copy.
//!
//! The fetcher is generic over [`IssuerCall`] and [`Report`], so it is unit-tested here against
//! a scripted issuer.

#[cfg(feature = "envoy-native")]
mod ffi;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use weauth_token::KeySet;

use crate::cache::TokenCache;
use crate::config::{Config, JwksSource, Require};
use crate::host::{IssuerCall, KeyState, Level};
use crate::refresh::{self, CallOutcome, NextPoll, Schedule, Staging};
use crate::request::{self, Loaded};
use crate::revocation::{FeedPage, RevocationSet};
use crate::verify::{Extracted, Verdict};

/// How often the main thread drives the fetchers.
pub const TICK_MS: u64 = 100;
/// Extra time given to a long poll beyond `wait_seconds` before Envoy times it out.
const FEED_TIMEOUT_MARGIN_MS: u64 = 5_000;
/// How often expired revocation entries are dropped.
const PRUNE_EVERY_MS: u64 = 10_000;

/// The published keys.
#[derive(Debug)]
pub struct Keys {
    pub set: KeySet,
    pub generation: u64,
}

/// The published revocation set.
#[derive(Debug)]
pub struct Revocation {
    pub set: Arc<RevocationSet>,
    pub generation: u64,
    /// When the feed last answered (unix ms).
    pub last_ok_ms: u64,
}

/// One filter configuration's state, shared by every worker thread.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    keys: ArcSwapOption<Keys>,
    revocation: ArcSwapOption<Revocation>,
    /// When a worker last saw an unknown `kid` (unix ms; 0 = never): the fetcher's hint.
    jwks_wanted_ms: AtomicU64,
    /// Distinguishes this configuration's per-thread cache from another's.
    id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Each worker thread's token caches, one per configuration.
    static CACHES: RefCell<HashMap<u64, TokenCache>> = RefCell::new(HashMap::new());
}

impl Shared {
    /// A configuration's state before its first fetch: the inline keys (generation 1) when the
    /// JWKS is inline, nothing else.
    pub fn new(config: Config) -> Shared {
        let keys = match &config.jwks {
            JwksSource::Inline(keys) => Some(Arc::new(Keys {
                set: keys.clone(),
                generation: 1,
            })),
            JwksSource::Remote(_) => None,
        };
        Shared {
            config,
            keys: ArcSwapOption::new(keys),
            revocation: ArcSwapOption::empty(),
            jwks_wanted_ms: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The published keys.
    pub fn keys(&self) -> Option<Arc<Keys>> {
        self.keys.load_full()
    }

    /// The published revocation set.
    pub fn revocation(&self) -> Option<Arc<Revocation>> {
        self.revocation.load_full()
    }

    /// Drops this configuration's cache on the calling thread (configuration removed).
    pub fn forget_thread_cache(&self) {
        let _ = CACHES.try_with(|caches| {
            if let Ok(mut caches) = caches.try_borrow_mut() {
                caches.remove(&self.id);
            }
        });
    }
}

/// The request side's view: lock-free loads of the published state and this thread's cache.
pub struct View<'a> {
    pub shared: &'a Shared,
}

impl KeyState for View<'_> {
    fn judge(
        &mut self,
        extracted: &Extracted,
        require: Require,
        scopes: &[String],
        now_ms: u64,
    ) -> Verdict {
        let shared = self.shared;
        let keys = shared.keys.load();
        let revocation = shared.revocation.load();
        let loaded = revocation.as_deref().map(|rev| Loaded {
            set: &rev.set,
            generation: rev.generation,
            last_ok_ms: rev.last_ok_ms,
        });
        let run = |cache: &mut TokenCache| {
            request::judge(
                &shared.config,
                keys.as_deref().map(|keys| &keys.set),
                keys.as_deref().map_or(0, |keys| keys.generation),
                loaded,
                cache,
                extracted,
                require,
                scopes,
                now_ms,
            )
        };
        let cached = CACHES.try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let cache = caches
                .entry(shared.id)
                .or_insert_with(|| TokenCache::new(shared.config.cache_entries));
            Some(run(cache))
        });
        match cached {
            Ok(Some(verdict)) => verdict,
            // No thread-local storage (thread exiting) or re-entered: decide without a cache.
            _ => run(&mut TokenCache::new(0)),
        }
    }

    fn want_jwks_refetch(&mut self, now_ms: u64) {
        self.shared.jwks_wanted_ms.store(now_ms, Ordering::Relaxed);
    }
}

/// What the fetcher reports through: log lines, counters and gauges (`weauth.*`).
pub trait Report {
    fn log(&self, level: Level, message: &str);
    fn count(&self, name: &'static str);
    fn gauge(&self, name: &'static str, value: u64);
}

/// The JWKS and revocation fetchers of one configuration (main thread only).
#[derive(Debug)]
pub struct Fetcher {
    jwks: Option<Schedule>,
    feed: Option<Schedule>,
    /// The JWKS last published, to keep its generation when a refetch brings the same.
    jwks_json: Vec<u8>,
    /// The next poll asks for a full set (`since=0`).
    full_pending: bool,
    last_prune_ms: u64,
    was_stale: Option<bool>,
    seed: u64,
    /// A set being loaded page by page, not yet published (module docs).
    staging: Staging,
}

impl Fetcher {
    /// The fetchers a configuration needs (none for inline keys and no feed).
    pub fn new(config: &Config, now_ms: u64) -> Fetcher {
        let jwks = match &config.jwks {
            JwksSource::Remote(remote) => Some(Schedule::new(
                now_ms,
                1_000,
                remote.refresh_seconds.saturating_mul(1000).min(30_000),
                remote.timeout_ms.saturating_add(5_000),
            )),
            JwksSource::Inline(_) => None,
        };
        let feed = config.revocation.as_ref().map(|feed| {
            Schedule::new(
                now_ms,
                500,
                30_000,
                feed.wait_seconds
                    .saturating_mul(1000)
                    .saturating_add(2 * FEED_TIMEOUT_MARGIN_MS),
            )
        });
        Fetcher {
            jwks,
            feed,
            jwks_json: Vec::new(),
            full_pending: true,
            last_prune_ms: now_ms,
            was_stale: None,
            seed: now_ms ^ 0x5EED,
            staging: Staging::default(),
        }
    }

    /// Whether there is anything to fetch (else no tick is needed).
    pub fn fetches(&self) -> bool {
        self.jwks.is_some() || self.feed.is_some()
    }

    /// One tick: expire calls, dispatch what is due, prune, refresh the gauges.
    pub fn tick(
        &mut self,
        shared: &Shared,
        call: &mut impl IssuerCall,
        report: &impl Report,
        now_ms: u64,
    ) {
        self.drive_jwks(shared, call, report, now_ms);
        self.drive_feed(shared, call, report, now_ms);
        self.publish_staged_when_idle(shared, now_ms);
        self.prune(shared, now_ms);
        self.report_revocation(shared, report, now_ms);
    }

    fn drive_jwks(
        &mut self,
        shared: &Shared,
        call: &mut impl IssuerCall,
        report: &impl Report,
        now_ms: u64,
    ) {
        let (Some(schedule), JwksSource::Remote(remote)) =
            (self.jwks.as_mut(), &shared.config.jwks)
        else {
            return;
        };
        if schedule.expire(now_ms) {
            report.count("jwks_fetch_fail");
        }
        let wanted = shared.jwks_wanted_ms.load(Ordering::Relaxed);
        if wanted > 0 && schedule.last_started_ms().is_none_or(|last| wanted > last) {
            schedule.hurry(now_ms, remote.min_refetch_seconds.saturating_mul(1000));
        }
        if !schedule.due(now_ms) {
            return;
        }
        let headers = [
            (":method", "GET"),
            (":path", remote.path.as_str()),
            (":authority", remote.authority.as_str()),
            ("accept", "application/json"),
        ];
        match call.dispatch(&remote.cluster, &headers, remote.timeout_ms) {
            Ok(id) => schedule.dispatched(token(id), now_ms),
            Err(err) => {
                schedule.dispatch_failed(now_ms);
                report.count("jwks_fetch_fail");
                report.log(
                    Level::Warn,
                    &format!(
                        "JWKS fetch could not be dispatched to cluster {}: {err}",
                        remote.cluster
                    ),
                );
            }
        }
    }

    fn since(&self, shared: &Shared) -> u64 {
        if self.full_pending {
            0
        } else if let Some(seq) = self.staging.seq() {
            seq
        } else {
            shared.revocation().map_or(0, |rev| rev.set.seq)
        }
    }

    fn drive_feed(
        &mut self,
        shared: &Shared,
        call: &mut impl IssuerCall,
        report: &impl Report,
        now_ms: u64,
    ) {
        let since = self.since(shared);
        let (Some(schedule), Some(feed)) = (self.feed.as_mut(), &shared.config.revocation) else {
            return;
        };
        if schedule.expire(now_ms) {
            report.count("feed_fetch_fail");
        }
        if !schedule.due(now_ms) {
            return;
        }
        let path = format!("{}?since={since}&wait={}", feed.path, feed.wait_seconds);
        let authorization = format!("Bearer {}", feed.credential);
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", feed.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("accept", "application/json"),
        ];
        let timeout = feed
            .wait_seconds
            .saturating_mul(1000)
            .saturating_add(FEED_TIMEOUT_MARGIN_MS);
        match call.dispatch(&feed.cluster, &headers, timeout) {
            Ok(id) => schedule.dispatched(token(id), now_ms),
            Err(err) => {
                schedule.dispatch_failed(now_ms);
                report.count("feed_fetch_fail");
                report.log(
                    Level::Warn,
                    &format!(
                        "revocation poll could not be dispatched to cluster {}: {err}",
                        feed.cluster
                    ),
                );
            }
        }
    }

    /// A call's answer (`status` 0 when the call failed without a response).
    #[allow(clippy::too_many_arguments)]
    pub fn on_response(
        &mut self,
        shared: &Shared,
        call: &mut impl IssuerCall,
        report: &impl Report,
        id: u64,
        status: u32,
        body: &[u8],
        now_ms: u64,
    ) {
        self.on_response_chunks(shared, call, report, id, status, &[body], now_ms);
    }

    /// A call's answer with its body in pieces, as Envoy hands it over (the chunks of its
    /// buffer): a feed answer is read from them as they are, without a joined copy (a
    /// 50 000-entry page is about 4 MB).
    #[allow(clippy::too_many_arguments)]
    pub fn on_response_chunks(
        &mut self,
        shared: &Shared,
        call: &mut impl IssuerCall,
        report: &impl Report,
        id: u64,
        status: u32,
        body: &[&[u8]],
        now_ms: u64,
    ) {
        let token = token(id);
        if self.jwks.as_ref().is_some_and(|s| s.is_current(token)) {
            let body = body.concat();
            self.on_jwks_response(shared, report, token, status, &body, now_ms);
        } else if self.feed.as_ref().is_some_and(|s| s.is_current(token)) {
            self.on_feed_response(shared, report, token, status, body, now_ms);
            // Keep the long poll open without a gap.
            self.drive_feed(shared, call, report, now_ms);
        } else {
            report.log(
                Level::Debug,
                &format!("dropping a stale call response (id {id})"),
            );
        }
    }

    fn on_jwks_response(
        &mut self,
        shared: &Shared,
        report: &impl Report,
        token: u32,
        status: u32,
        body: &[u8],
        now_ms: u64,
    ) {
        let JwksSource::Remote(remote) = &shared.config.jwks else {
            return;
        };
        let parsed = (status == 200)
            .then(|| KeySet::from_jwks_json(body).ok())
            .flatten()
            .filter(|(keys, _)| !keys.is_empty());
        let outcome = match parsed {
            Some((keys, _skipped)) => {
                report.count("jwks_fetch_ok");
                report.gauge("jwks_keys", keys.len() as u64);
                if self.jwks_json != body || shared.keys().is_none() {
                    let generation = shared.keys().map_or(0, |k| k.generation).saturating_add(1);
                    report.log(
                        Level::Info,
                        &format!(
                            "JWKS generation {generation} published: {} key(s)",
                            keys.len()
                        ),
                    );
                    shared.keys.store(Some(Arc::new(Keys {
                        set: keys,
                        generation,
                    })));
                    self.jwks_json = body.to_vec();
                }
                CallOutcome::Ok {
                    next_in_ms: remote.refresh_seconds.saturating_mul(1000),
                }
            }
            None => {
                report.count("jwks_fetch_fail");
                report.log(
                    Level::Warn,
                    &format!(
                        "JWKS fetch from cluster {} failed: HTTP status {status}, {} body bytes, no usable key",
                        remote.cluster,
                        body.len()
                    ),
                );
                CallOutcome::Failed
            }
        };
        if let Some(schedule) = self.jwks.as_mut() {
            schedule.finish(token, now_ms, outcome);
        }
    }

    fn on_feed_response(
        &mut self,
        shared: &Shared,
        report: &impl Report,
        token: u32,
        status: u32,
        body: &[&[u8]],
        now_ms: u64,
    ) {
        let Some(feed) = &shared.config.revocation else {
            return;
        };
        let parsed = if status == 200 {
            match body {
                [whole] => FeedPage::parse(whole),
                pieces => FeedPage::parse_chunks(pieces),
            }
            .map_err(|err| format!("unreadable body: {err}"))
        } else {
            Err(format!("HTTP status {status}"))
        };
        let outcome = match parsed {
            Ok(response) => {
                report.count("feed_fetch_ok");
                let since = self.since(shared);
                let elapsed_ms = self
                    .feed
                    .as_ref()
                    .and_then(Schedule::last_started_ms)
                    .map_or(0, |started| now_ms.saturating_sub(started));
                self.full_pending = false;
                let seq = response.seq;
                self.apply_feed(shared, report, response, elapsed_ms, now_ms);
                self.seed = self
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(now_ms);
                let next = refresh::next_feed_poll(
                    since,
                    seq,
                    elapsed_ms,
                    feed.wait_seconds.saturating_mul(1000),
                    self.seed,
                );
                if let NextPoll::Floor(_) = next {
                    report.count("feed_poll_floored");
                }
                CallOutcome::Ok {
                    next_in_ms: next.delay_ms(),
                }
            }
            Err(reason) => {
                report.count("feed_fetch_fail");
                report.log(
                    Level::Warn,
                    &format!(
                        "revocation poll to cluster {} failed: {reason}",
                        feed.cluster
                    ),
                );
                CallOutcome::Failed
            }
        };
        if let Some(schedule) = self.feed.as_mut() {
            schedule.finish(token, now_ms, outcome);
        }
    }

    /// Applies an answer to the set being loaded, or else to a clone of the published set
    /// (sharing its shards: only those the answer touches are copied), then publishes it —
    /// unless the answer is a full page, after which the set stays private until the load ends
    /// (module docs). An answer without news only moves `last_ok_ms`.
    fn apply_feed(
        &mut self,
        shared: &Shared,
        report: &impl Report,
        response: FeedPage,
        elapsed_ms: u64,
        now_ms: u64,
    ) {
        let current = shared.revocation();
        let staged = self.staging.take();
        let was_staged = staged.is_some();
        let mut set = match staged {
            Some(set) => set,
            None => current
                .as_ref()
                .map_or_else(RevocationSet::default, |rev| (*rev.set).clone()),
        };
        let held_seq = set.seq;
        let (seq, full) = (response.seq, response.full);
        let entries = response.entries;
        let more = refresh::is_full_page(entries);
        match set.apply_page(response, seconds(now_ms)) {
            Ok(applied) => {
                if current.is_none() || seq != held_seq {
                    report.log(
                        Level::Info,
                        &format!(
                            "revocation feed seq {seq} applied ({}{}): {} entries, {} KiB",
                            if full { "full" } else { "delta" },
                            if more { ", more to come" } else { "" },
                            set.len(),
                            set.heap_bytes() / 1024
                        ),
                    );
                }
                let Some(set) = self.staging.page_applied(set, entries, elapsed_ms) else {
                    return;
                };
                let unchanged = !was_staged && applied.changed.is_empty() && set.seq == held_seq;
                match (unchanged, current) {
                    (true, Some(current)) => shared.revocation.store(Some(Arc::new(Revocation {
                        set: Arc::clone(&current.set),
                        generation: current.generation,
                        last_ok_ms: now_ms,
                    }))),
                    (_, current) => Self::publish(shared, current.as_deref(), set, now_ms),
                }
            }
            Err(err) => {
                report.log(Level::Warn, &err.to_string());
                // The issuer lost state: start over from a full set (a page loaded so far is
                // dropped; the published set stays until the new one is in).
                self.staging.abandon();
                self.full_pending = true;
            }
        }
    }

    /// Publishes `set` as the next generation after `current`, fed at `last_ok_ms`.
    fn publish(shared: &Shared, current: Option<&Revocation>, set: RevocationSet, last_ok_ms: u64) {
        let generation = current.map_or(0, |rev| rev.generation).saturating_add(1);
        shared.revocation.store(Some(Arc::new(Revocation {
            set: Arc::new(set),
            generation,
            last_ok_ms,
        })));
    }

    /// Publishes a privately loaded set once no page is on its way ([`Staging::finished_by_wait`]).
    fn publish_staged_when_idle(&mut self, shared: &Shared, now_ms: u64) {
        let phase = self.feed.as_ref().map(Schedule::phase);
        if let Some(set) = self.staging.finished_by_wait(phase, now_ms) {
            let current = shared.revocation();
            Self::publish(shared, current.as_deref(), set, now_ms);
        }
    }

    fn prune(&mut self, shared: &Shared, now_ms: u64) {
        if now_ms.saturating_sub(self.last_prune_ms) < PRUNE_EVERY_MS {
            return;
        }
        self.last_prune_ms = now_ms;
        let Some(current) = shared.revocation() else {
            return;
        };
        // Shares every shard; only a shard with an expired entry is copied.
        let mut set = (*current.set).clone();
        if !set.prune(seconds(now_ms)).is_empty() {
            shared.revocation.store(Some(Arc::new(Revocation {
                set: Arc::new(set),
                generation: current.generation.saturating_add(1),
                last_ok_ms: current.last_ok_ms,
            })));
        }
    }

    fn report_revocation(&mut self, shared: &Shared, report: &impl Report, now_ms: u64) {
        let Some(feed) = &shared.config.revocation else {
            return;
        };
        let current = shared.revocation();
        let age_ms = current
            .as_ref()
            .map(|rev| now_ms.saturating_sub(rev.last_ok_ms));
        report.gauge(
            "revocation_entries",
            current.as_ref().map_or(0, |rev| rev.set.len() as u64),
        );
        report.gauge("revocation_age_seconds", age_ms.map_or(0, |age| age / 1000));
        let stale = age_ms.is_none_or(|age| age > feed.stale_after_seconds.saturating_mul(1000));
        if self.was_stale != Some(stale) {
            if stale && self.was_stale.is_some() {
                report.log(
                    Level::Warn,
                    &format!(
                        "revocation list is stale (feed not reached for over {} s); stale_mode={:?}",
                        feed.stale_after_seconds, feed.stale_mode
                    ),
                );
            }
            self.was_stale = Some(stale);
        }
    }
}

/// A callout id as the schedule's token (ids count up from 1 per configuration).
fn token(id: u64) -> u32 {
    (id % u64::from(u32::MAX)) as u32
}

fn seconds(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use weauth_token::{Algorithm, Jwks, SigningKey};

    use super::*;
    use crate::host::DispatchError;
    use crate::refresh::{FEED_PAGE_ENTRIES, STAGING_HOLD_MS};

    const NOW: u64 = 1_700_000_000_000;

    #[derive(Default)]
    struct ScriptedIssuer {
        calls: Vec<(String, Vec<(String, String)>)>,
    }

    impl IssuerCall for ScriptedIssuer {
        fn dispatch(
            &mut self,
            cluster: &str,
            headers: &[(&str, &str)],
            _timeout_ms: u64,
        ) -> Result<u64, DispatchError> {
            self.calls.push((
                cluster.to_string(),
                headers
                    .iter()
                    .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                    .collect(),
            ));
            Ok(self.calls.len() as u64)
        }
    }

    impl ScriptedIssuer {
        fn path(&self, id: u64) -> String {
            self.calls[(id - 1) as usize]
                .1
                .iter()
                .find(|(n, _)| n == ":path")
                .map(|(_, v)| v.clone())
                .unwrap()
        }
    }

    #[derive(Default)]
    struct Log(RefCell<Vec<String>>);

    impl Report for Log {
        fn log(&self, _level: Level, message: &str) {
            self.0.borrow_mut().push(message.to_string());
        }
        fn count(&self, name: &'static str) {
            self.0.borrow_mut().push(format!("count {name}"));
        }
        fn gauge(&self, _name: &'static str, _value: u64) {}
    }

    fn jwks_json() -> String {
        let key = SigningKey::from_seed(Algorithm::EdDSA, &[7u8; 32]).unwrap();
        serde_json::to_string(&Jwks {
            keys: vec![key.jwk()],
        })
        .unwrap()
    }

    fn remote_config() -> Config {
        Config::parse(
            br#"{"issuer":"https://issuer","audiences":["weauth"],
                 "jwks":{"cluster":"weauth_issuer"},
                 "revocation":{"cluster":"weauth_issuer","credential":"feed-secret"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn fetcher_first_tick_dispatches_jwks_and_feed_once() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, NOW);
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, NOW);
        fetcher.tick(&shared, &mut issuer, &log, NOW + TICK_MS);
        assert_eq!(
            issuer.calls.len(),
            2,
            "one JWKS fetch and one poll, not per tick"
        );
        assert!(issuer
            .calls
            .iter()
            .all(|(cluster, _)| cluster == "weauth_issuer"));
        assert!(issuer.path(2).contains("since=0"), "{}", issuer.path(2));
    }

    #[test]
    fn fetcher_jwks_answer_publishes_keys_to_every_reader() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, NOW);
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, NOW);
        assert!(shared.keys().is_none());
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            1,
            200,
            jwks_json().as_bytes(),
            NOW,
        );
        let keys = shared.keys().unwrap();
        assert_eq!((keys.set.len(), keys.generation), (1, 1));
        // The same JWKS again keeps the generation (cached verdicts stay valid).
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            1,
            200,
            jwks_json().as_bytes(),
            NOW,
        );
        assert_eq!(shared.keys().unwrap().generation, 1);
    }

    #[test]
    fn fetcher_feed_answer_publishes_set_and_polls_again_from_its_seq() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, NOW);
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, NOW);
        let body = br#"{"seq":7,"full":true,"now":1700000000,"entries":[
            {"seq":7,"kind":"jti","value":"j1","until":1700000900}]}"#;
        fetcher.on_response(&shared, &mut issuer, &log, 2, 200, body, NOW + 50);
        let published = shared.revocation().unwrap();
        assert_eq!((published.set.len(), published.set.seq), (1, 7));
        assert_eq!(published.last_ok_ms, NOW + 50);
        assert_eq!(issuer.calls.len(), 3, "the next long poll goes out at once");
        assert!(issuer.path(3).contains("since=7"), "{}", issuer.path(3));
    }

    /// A feed answer of `count` jti entries `j{from}`.., ending at seq `from + count - 1`.
    fn page_body(from: u64, count: u64, full: bool) -> Vec<u8> {
        let entries: Vec<String> = (from..from + count)
            .map(|i| format!(r#"{{"seq":{i},"kind":"jti","value":"j{i}","until":1700000900}}"#))
            .collect();
        format!(
            r#"{{"seq":{},"full":{full},"now":1700000000,"entries":[{}]}}"#,
            from + count - 1,
            entries.join(",")
        )
        .into_bytes()
    }

    /// A fetcher that asked for a full set (call 2), with its JWKS call (1) out.
    fn polling() -> (Shared, Fetcher, ScriptedIssuer, Log) {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, NOW);
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, NOW);
        (shared, fetcher, issuer, log)
    }

    #[test]
    fn fetcher_full_pages_loaded_privately_then_published_once() {
        let (shared, mut fetcher, mut issuer, log) = polling();
        let page = FEED_PAGE_ENTRIES as u64;
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, page, true),
            NOW,
        );
        assert!(
            shared.revocation().is_none(),
            "a full page waits for the rest"
        );
        assert!(
            issuer.path(3).contains(&format!("since={page}")),
            "{}",
            issuer.path(3)
        );
        let body = page_body(page + 1, 10, false);
        fetcher.on_response(&shared, &mut issuer, &log, 3, 200, &body, NOW + 10);
        let published = shared.revocation().unwrap();
        assert_eq!(published.set.len(), FEED_PAGE_ENTRIES + 10);
        assert_eq!(published.set.seq, page + 10);
        assert_eq!(published.generation, 1, "published once");
        assert!(issuer.path(4).contains(&format!("since={}", page + 10)));
    }

    #[test]
    fn fetcher_staged_set_published_when_the_next_poll_is_held() {
        let (shared, mut fetcher, mut issuer, log) = polling();
        let page = FEED_PAGE_ENTRIES as u64;
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, page, true),
            NOW,
        );
        // The poll after an exact number of pages is held by the issuer.
        fetcher.tick(&shared, &mut issuer, &log, NOW + STAGING_HOLD_MS - 1);
        assert!(shared.revocation().is_none());
        fetcher.tick(&shared, &mut issuer, &log, NOW + STAGING_HOLD_MS);
        let published = shared.revocation().unwrap();
        assert_eq!(
            (published.set.len(), published.set.seq),
            (FEED_PAGE_ENTRIES, page)
        );
        assert_eq!(issuer.calls.len(), 3, "the held poll is left alone");
    }

    #[test]
    fn fetcher_staging_hold_follows_the_slowest_page() {
        let (shared, mut fetcher, mut issuer, log) = polling();
        let page = FEED_PAGE_ENTRIES as u64;
        // The first page took 600 ms to come: wait 1.2 s for the next before publishing.
        let at = NOW + 600;
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, page, true),
            at,
        );
        fetcher.tick(&shared, &mut issuer, &log, at + 1_199);
        assert!(shared.revocation().is_none());
        fetcher.tick(&shared, &mut issuer, &log, at + 1_200);
        assert_eq!(shared.revocation().unwrap().set.len(), FEED_PAGE_ENTRIES);
    }

    #[test]
    fn fetcher_delta_copies_only_the_shards_it_touches() {
        let (shared, mut fetcher, mut issuer, log) = polling();
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, 1000, true),
            NOW,
        );
        let before = shared.revocation().unwrap();
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            3,
            200,
            &page_body(1001, 1, false),
            NOW,
        );
        let after = shared.revocation().unwrap();
        assert_eq!((after.set.len(), after.generation), (1001, 2));
        let shared_shards = (0..crate::revocation::SHARDS)
            .filter(|&i| std::ptr::eq(before.set.shard(i).unwrap(), after.set.shard(i).unwrap()))
            .count();
        assert_eq!(shared_shards, crate::revocation::SHARDS - 1);
    }

    #[test]
    fn fetcher_seq_gone_back_starts_over_from_a_full_set() {
        let (shared, mut fetcher, mut issuer, log) = polling();
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, 10, true),
            NOW,
        );
        let body = br#"{"seq":3,"full":false,"now":1700000000,"entries":[]}"#;
        fetcher.on_response(&shared, &mut issuer, &log, 3, 200, body, NOW + 10);
        assert_eq!(
            shared.revocation().unwrap().set.len(),
            10,
            "kept until a new set is in"
        );
        assert!(issuer.path(4).contains("since=0"), "{}", issuer.path(4));
    }

    #[test]
    fn fetcher_failed_poll_counted_and_nothing_published() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, NOW);
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, NOW);
        fetcher.on_response(&shared, &mut issuer, &log, 2, 0, b"", NOW + 50);
        assert!(shared.revocation().is_none());
        assert!(log.0.borrow().iter().any(|l| l == "count feed_fetch_fail"));
    }

    #[test]
    fn view_unknown_kid_hint_reaches_the_fetcher() {
        let shared = Shared::new(remote_config());
        let mut view = View { shared: &shared };
        view.want_jwks_refetch(NOW);
        assert_eq!(shared.jwks_wanted_ms.load(Ordering::Relaxed), NOW);
    }
}
