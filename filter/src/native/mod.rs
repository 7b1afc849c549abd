//! The native build's state and fetchers (Envoy's dynamic-module ABI; the FFI itself is
//! `ffi`, behind the `envoy-native` feature, and holds every `unsafe` of the crate).
//!
//! What native makes possible over proxy-wasm, and what this module does with it:
//! - **One state per Envoy, not per worker.** A filter configuration is one [`Shared`] value
//!   that every worker thread reads: the keys and the revocation set sit behind
//!   [`arc_swap::ArcSwapOption`]s, so a request reads them lock-free and the fetcher replaces
//!   them whole. Only the token cache stays per worker thread (a thread-local map keyed by the
//!   configuration), because it is written on every miss.
//! - **Fetched once per Envoy.** The fetcher both builds share ([`fetch::Fetcher`]) runs on
//!   Envoy's main thread only (driven by the ABI's per-configuration scheduler, ticked every
//!   100 ms) and calls the issuer through the configured cluster with the ABI's
//!   per-configuration HTTP callout, as the wasm build does through `dispatch_http_call`. No
//!   lease and no shared-data shards are needed: it publishes straight into [`Shared`] (its
//!   [`Publish`] side, below).
//! - **One set in memory, not one per answer.** A feed answer is read straight into rows and
//!   applied to a clone of the published set, which shares every shard with it: only the
//!   shards the answer touches are copied. A set loaded page by page is kept aside and
//!   published once ([`crate::refresh::Staging`]) — instead of copying the growing set for
//!   every page.
//! - **The body stays where Envoy put it.** A feed answer is read from the pieces of Envoy's
//!   buffer, not from a joined copy.
//!
//! The fetcher's tests below run it against this build's real [`Shared`] and a scripted issuer.

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
use crate::fetch::{self, Publish, Published, StaleWatch};
use crate::host::{IssuerCall, KeyState, Report};
use crate::request::{self, Loaded};
use crate::revocation::RevocationSet;
use crate::verify::{Extracted, Verdict};

/// How often the main thread drives the fetchers.
pub const TICK_MS: u64 = 100;

/// The published keys.
#[derive(Debug)]
pub struct Keys {
    pub set: KeySet,
    pub generation: u64,
    /// The JWKS as fetched (a refetch of the same keeps the generation); empty when inline.
    pub json: Vec<u8>,
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
    /// Each worker thread's token caches, one per configuration (looked up on every request:
    /// hashed with `foldhash`, as the caches themselves are).
    static CACHES: RefCell<HashMap<u64, TokenCache, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

impl Shared {
    /// A configuration's state before its first fetch: the inline keys (generation 1) when the
    /// JWKS is inline, nothing else.
    pub fn new(config: Config) -> Shared {
        let keys = match &config.jwks {
            JwksSource::Inline(keys) => Some(Arc::new(Keys {
                set: keys.clone(),
                generation: 1,
                json: Vec::new(),
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

/// The native build's side of [`Publish`]: the state every worker thread reads.
impl Publish for &Shared {
    fn jwks_wanted_ms(&self) -> u64 {
        self.jwks_wanted_ms.load(Ordering::Relaxed)
    }

    fn publish_jwks(&mut self, json: &[u8], keys: KeySet, _now_ms: u64) -> Option<u64> {
        let current = self.keys();
        if current.as_ref().is_some_and(|current| current.json == json) {
            return None;
        }
        let generation = current.map_or(0, |k| k.generation).saturating_add(1);
        self.keys.store(Some(Arc::new(Keys {
            set: keys,
            generation,
            json: json.to_vec(),
        })));
        Some(generation)
    }

    fn published(&self) -> Option<Published> {
        self.revocation.load().as_deref().map(|rev| Published {
            seq: rev.set.seq,
            entries: rev.set.len(),
            last_ok_ms: rev.last_ok_ms,
        })
    }

    /// Readers hold the published set: a copy sharing its shards (only the shards an answer
    /// touches are copied).
    fn take_set(&mut self) -> RevocationSet {
        self.copy_set()
    }

    fn copy_set(&self) -> RevocationSet {
        self.revocation
            .load()
            .as_deref()
            .map_or_else(RevocationSet::default, |rev| (*rev.set).clone())
    }

    fn restore_set(&mut self, _set: RevocationSet) {}

    fn publish_set(&mut self, set: RevocationSet, changed: &[usize], last_ok_ms: u64) {
        let current = self.revocation();
        let generation = match &current {
            Some(current) if changed.is_empty() => current.generation,
            current => current
                .as_ref()
                .map_or(0, |rev| rev.generation)
                .saturating_add(1),
        };
        self.revocation.store(Some(Arc::new(Revocation {
            set: Arc::new(set),
            generation,
            last_ok_ms,
        })));
    }
}

/// The main thread's fetching for one configuration: the fetcher both builds share, publishing
/// into [`Shared`], and the set's gauges.
#[derive(Debug)]
pub struct Fetcher {
    fetcher: fetch::Fetcher,
    stale: StaleWatch,
}

impl Fetcher {
    /// The fetchers a configuration needs (none for inline keys and no feed).
    pub fn new(config: &Config, now_ms: u64) -> Fetcher {
        Fetcher {
            fetcher: fetch::Fetcher::new(config, now_ms, now_ms ^ 0x5EED),
            stale: StaleWatch::default(),
        }
    }

    /// Whether there is anything to fetch (else no tick is needed).
    pub fn fetches(&self) -> bool {
        self.fetcher.fetches()
    }

    /// One tick ([`fetch::Fetcher::tick`]), then the revocation gauges.
    pub fn tick(
        &mut self,
        shared: &Shared,
        call: &mut impl IssuerCall,
        report: &impl Report,
        now_ms: u64,
    ) {
        self.fetcher.tick(&mut &*shared, call, report, now_ms);
        if let Some(feed) = &shared.config.revocation {
            self.stale
                .observe(feed, (&shared).published(), report, now_ms);
        }
    }

    /// A call's answer ([`fetch::Fetcher::on_response`]), its body in the pieces of Envoy's
    /// buffer.
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
        self.fetcher
            .on_response(&mut &*shared, call, report, id, status, body, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::testing::{jwks_json, page_body, remote_config, Log, ScriptedIssuer, NOW};
    use crate::refresh::{FEED_PAGE_ENTRIES, STAGING_HOLD_MS};

    impl Fetcher {
        /// An answer with its body in one piece.
        #[allow(clippy::too_many_arguments)]
        fn on_response(
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
