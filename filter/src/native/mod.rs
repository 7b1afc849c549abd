//! The native build's state and fetchers (Envoy's dynamic-module ABI; the FFI itself is
//! `ffi`, behind the `envoy-native` feature, and holds every `unsafe` of this build).
//!
//! What native makes possible over proxy-wasm, and what this module does with it:
//! - **One state per Envoy, not per worker.** A filter configuration is one [`Shared`] value
//!   that every worker thread reads: the keys and the revocation set sit behind
//!   [`arc_swap::ArcSwapOption`]s, so a request reads them lock-free and the fetcher replaces
//!   them whole. Only the token cache stays per worker thread (a thread-local map keyed by the
//!   configuration), because it is written on every miss.
//! - **Fetched once per Envoy.** The fetcher both builds share ([`fetch::Fetcher`]) runs on
//!   Envoy's main thread only (driven by the ABI's per-configuration scheduler, asked for a
//!   tick when one has work — [`State::next_tick_ms`] — and after every answer) and calls the issuer through the configured cluster with the ABI's
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
//! - **A configuration update serves at once, and adds no fetcher.** Envoy builds a new filter
//!   configuration on every update of its listener (Istio pushes them often) and sends new
//!   connections to it while the old one drains. [`Shared::start`] gives the new configuration
//!   the published state of a live one fetching from the same sources alike (the JWKS's
//!   cluster, authority and path on the same schedule, or the same inline keys; the feed's and
//!   its credential polled with the same wait, with the same clock skew, which decides how long
//!   an entry is kept: [`fetched_alike`]): the same keys and revocation set,
//!   filled by the one fetcher that already fills them — no 503 while a cold configuration
//!   would fetch, no second long poll per draining configuration, and the draining one's
//!   connections see every revocation too. When the fetching configuration goes, the next tick
//!   of another sharing the state takes the fetching over from the set's seq. A configuration
//!   with sources of its own starts from what a live one fetched from either source. (The wasm
//!   build gets the same from Envoy: a new plugin configuration runs in the same VM, over the
//!   same shared data and its one elected fetcher.) A worker's token cache for a configuration
//!   that is gone is dropped on that worker's next request.
//!
//! - **A clock that never steps for the schedules.** Every tick time, backoff, give-up and age
//!   here ([`State::next_tick_ms`], [`Revocation::last_ok_ms`], ...) is on [`Now::mono_ms`],
//!   which `ffi` reads from `std::time::Instant` (milliseconds since a process-wide epoch): a
//!   step of the wall clock — NTP at a VM's boot, `date -s` — neither stalls the fetching for
//!   as long as it steps back nor makes the set stale at once when it steps forward. A token's
//!   `exp`, `nbf` and `iat`, and a revocation entry's `until`, are judged by [`Now::unix_ms`].
//!   (The wasm build reads the same two clocks, its monotonic one Envoy's steady clock:
//!   [`crate::host::WasmClock`].)
//!
//! The fetcher's tests below run it against this build's real [`Shared`] and a scripted issuer.

#[cfg(feature = "envoy-native")]
mod ffi;

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, Weak};

use arc_swap::ArcSwapOption;
use weauth_token::KeySet;

use crate::cache::TokenCache;
use crate::config::{Config, JwksSource, Require};
use crate::fetch::{self, Publish, Published, StaleWatch};
use crate::host::{IssuerCall, KeyState, Level, Now, Report};
use crate::request::{self, Loaded};
use crate::revocation::RevocationSet;
use crate::verify::{Extracted, Verdict};

/// How often the clock thread looks for a configuration whose tick is due
/// ([`State::next_tick_ms`]), on the monotonic clock ([`Now::mono_ms`]).
pub const TICK_MS: u64 = 100;

/// The longest a fetching configuration goes without a tick, a safety net above the longest
/// feed poll (60 s wait and its margins): its calls' answers and due times bring every tick
/// it needs ([`fetch::Fetcher::next_tick_ms`]).
pub const IDLE_TICK_MS: u64 = 120_000;

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
    /// When the feed last answered ([`Now::mono_ms`]: only its age means anything).
    pub last_ok_ms: u64,
}

/// What the configurations fetching from the same sources share (module docs).
#[derive(Debug, Default)]
struct State {
    keys: ArcSwapOption<Keys>,
    revocation: ArcSwapOption<Revocation>,
    /// When a worker last saw an unknown `kid` ([`Now::mono_ms`]; 0 = never): the fetcher's
    /// hint.
    jwks_wanted_ms: AtomicU64,
    /// The configuration whose fetcher fills this state (0: none; the next tick of one of the
    /// configurations sharing it takes the fetching over).
    fetcher: AtomicU64,
    /// When the fetching configuration next needs a tick ([`Now::mono_ms`]; 0 = at once), read
    /// by the clock thread before it asks Envoy for one ([`TickGate`]).
    next_tick_ms: AtomicU64,
    /// The earliest a JWKS refetch for an unknown `kid` can go out, as of the last tick
    /// ([`fetch::Fetcher::jwks_refetch_not_before_ms`]): a worker that sees one brings the
    /// next tick no sooner (a stream of made-up kids must not bring a tick, each a window
    /// for a configuration's destruction on the clock thread, every [`TICK_MS`]).
    jwks_not_before_ms: AtomicU64,
}

impl State {
    /// Brings the next tick to when a JWKS refetch for an unknown `kid` can go out, if sooner.
    /// (SeqCst with the tick's store and re-read of `jwks_wanted_ms`: of a worker's hint and a
    /// tick's store, one sees the other.)
    fn wake_for_jwks(&self, now_ms: u64) {
        let when = now_ms.max(self.jwks_not_before_ms.load(Ordering::SeqCst));
        self.next_tick_ms.fetch_min(when, Ordering::SeqCst);
    }

    /// A tick at the clock's next look, the hint's bound forgotten (the fetcher started over:
    /// its next tick stores both again).
    fn tick_soon(&self) {
        self.jwks_not_before_ms.store(0, Ordering::SeqCst);
        self.next_tick_ms.store(0, Ordering::SeqCst);
    }
}

/// What the clock thread reads to decide whether to ask Envoy for a configuration's tick.
///
/// Each ask is a window in which the configuration can be destroyed on the clock thread
/// (Envoy's commit holds a reference for the call: `ffi::Slot`), where Envoy then cancels its
/// callouts off the main thread. So the clock asks only the configuration fetching for its
/// state (or any sharing it while none does: one of them takes the fetching over), and only
/// when a tick has work — a call due or to give up, an unknown `kid` seen, the fetching left
/// ([`State::next_tick_ms`]) — not every [`TICK_MS`]; an answer is followed by its tick on
/// the main thread directly. With the feed healthy the clock asks nothing at all: each answer
/// ticks, and the ticks dispatch the next poll and any JWKS refresh due.
pub struct TickGate {
    state: Arc<State>,
    id: u64,
}

impl TickGate {
    /// Whether the configuration needs a tick at `now_ms` ([`Now::mono_ms`]).
    pub fn due(&self, now_ms: u64) -> bool {
        let fetcher = self.state.fetcher.load(Ordering::Acquire);
        (fetcher == self.id || fetcher == 0)
            && now_ms >= self.state.next_tick_ms.load(Ordering::Acquire)
    }
}

/// One filter configuration's state, shared by every worker thread.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    state: Arc<State>,
    /// Distinguishes this configuration's per-thread cache from another's, and its fetcher.
    id: u64,
    /// Held while the configuration lives: a thread's cache for it holds a `Weak` of it.
    alive: Arc<()>,
    /// Envoy destroyed the configuration on another thread than its main one, and the module
    /// keeps its memory until the main thread's next hook (`ffi`'s graveyard, as a fetch answer
    /// may still be using it): it fetches no more, and has handed the fetching over
    /// ([`Shared::retire`]).
    retired: AtomicBool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How many configurations have gone: a thread that sees it move drops its caches of the
/// configurations that are gone.
static RETIRED: AtomicU64 = AtomicU64::new(0);

/// The configurations started by [`Shared::start`] that may still live, oldest first (Envoy
/// creates and destroys them on its main thread; a dead one is pruned at the next start).
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// One worker thread's token caches, one per configuration.
#[derive(Default)]
struct ThreadCaches {
    /// [`RETIRED`] when this thread last dropped the caches of configurations that are gone.
    retired: u64,
    /// Looked up on every request (hashed with `foldhash`, as the caches themselves are).
    caches: HashMap<u64, (Weak<()>, TokenCache), foldhash::fast::RandomState>,
}

impl ThreadCaches {
    /// This thread's cache for `shared`, after dropping those of configurations that are gone
    /// (only when one has gone since the last look: one atomic load per request).
    fn of(&mut self, shared: &Shared) -> &mut TokenCache {
        let retired = RETIRED.load(Ordering::Acquire);
        if retired != self.retired {
            self.caches.retain(|_, (alive, _)| alive.strong_count() > 0);
            self.retired = retired;
        }
        let (_, cache) = self.caches.entry(shared.id).or_insert_with(|| {
            (
                Arc::downgrade(&shared.alive),
                TokenCache::new(shared.config.cache_entries),
            )
        });
        cache
    }
}

thread_local! {
    static CACHES: RefCell<ThreadCaches> = RefCell::new(ThreadCaches::default());
}

/// How [`Shared::start`] started a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Sharing the state of a live configuration with the same sources, filled by that one's
    /// fetcher.
    Joined,
    /// With a state of its own, which its fetcher fills; starting from what a live
    /// configuration fetched from the same JWKS (`keys`) or the same feed (`revocation`).
    Own { keys: bool, revocation: bool },
}

/// What the configuration that fetches logs when it starts or takes the fetching over.
const FETCHER: &str = "the main thread is now the JWKS/revocation fetcher (one per Envoy)";

impl Start {
    /// What the configuration hook logs of it, for a configuration that `fetches` (None:
    /// nothing to say).
    pub fn message(self, fetches: bool) -> Option<String> {
        let from = match self {
            Start::Joined => {
                return Some(
                    "sharing the keys and revocation list of a live configuration with the \
                     same sources, which its fetcher fills (no second fetcher)"
                        .into(),
                )
            }
            Start::Own { .. } if !fetches => return None,
            Start::Own { keys, revocation } => match (keys, revocation) {
                (false, false) => "",
                (true, true) => {
                    ", starting from the keys and revocation list of a live configuration"
                }
                (true, false) => ", starting from the keys of a live configuration",
                (false, true) => ", starting from the revocation list of a live configuration",
            },
        };
        Some(format!("{FETCHER}{from}"))
    }
}

/// What [`Fetcher::tick`] found of the fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// This configuration fetches.
    Held,
    /// It does from now: the one that fetched is gone.
    Taken,
    /// Another one sharing the state fetches.
    Other,
}

/// Whether two configurations have the same keys: fetched from the same place, or the same
/// inline keys (then a configuration update with the same feed joins the state, and its feed's
/// long poll, instead of opening one more per configuration draining).
fn same_jwks(a: &Config, b: &Config) -> bool {
    match (&a.jwks, &b.jwks) {
        (JwksSource::Remote(a), JwksSource::Remote(b)) => {
            (&a.cluster, &a.authority, &a.path) == (&b.cluster, &b.authority, &b.path)
        }
        (JwksSource::Inline(a), JwksSource::Inline(b)) => a.same_keys(b),
        _ => false,
    }
}

/// Whether two configurations poll the same revocation feed with the same credential and keep
/// its entries alike: the fetcher drops an entry its clock skew past its `until`, so a set
/// kept for a smaller skew lacks entries a larger one still needs (a revoked token would pass
/// again until its `exp` plus the larger skew).
fn same_feed(a: &Config, b: &Config) -> bool {
    match (&a.revocation, &b.revocation) {
        (Some(feed_a), Some(feed_b)) => {
            (
                &feed_a.cluster,
                &feed_a.authority,
                &feed_a.path,
                &feed_a.credential,
            ) == (
                &feed_b.cluster,
                &feed_b.authority,
                &feed_b.path,
                &feed_b.credential,
            ) && a.validation.leeway == b.validation.leeway
        }
        _ => false,
    }
}

/// Whether a configuration may join another's state, and with it that one's fetcher: the same
/// keys and feed ([`same_jwks`], [`same_feed`]) fetched on the same schedule. A joiner's set
/// is as fresh as the other's fetcher keeps it: polling with a longer `wait_seconds`, it left
/// the set older than the joiner's own `stale_after_seconds` allows for most of each wait
/// (a 503 under `stale_mode: deny`), and the JWKS on another refresh period. Sources alike on
/// another schedule still start from what the other fetched.
fn fetched_alike(a: &Config, b: &Config) -> bool {
    let jwks = match (&a.jwks, &b.jwks) {
        (JwksSource::Remote(x), JwksSource::Remote(y)) => x == y,
        _ => same_jwks(a, b),
    };
    let feed = match (&a.revocation, &b.revocation) {
        (None, None) => true,
        (Some(x), Some(y)) => same_feed(a, b) && x.wait_seconds == y.wait_seconds,
        _ => false,
    };
    jwks && feed
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.hand_over();
        // Gone before it is announced, so that a thread that sees the count move finds it gone.
        drop(std::mem::take(&mut self.alive));
        RETIRED.fetch_add(1, Ordering::Release);
    }
}

impl Shared {
    /// A configuration with a state of its own before its first fetch (its fetcher fills it):
    /// the inline keys (generation 1) when the JWKS is inline, nothing else.
    pub fn new(config: Config) -> Shared {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let keys = match &config.jwks {
            JwksSource::Inline(keys) => Some(Arc::new(Keys {
                set: keys.clone(),
                generation: 1,
                json: Vec::new(),
            })),
            JwksSource::Remote(_) => None,
        };
        let state = State {
            keys: ArcSwapOption::new(keys),
            fetcher: AtomicU64::new(id),
            ..State::default()
        };
        Shared::with_state(config, id, Arc::new(state))
    }

    fn with_state(config: Config, id: u64, state: Arc<State>) -> Shared {
        Shared {
            config,
            state,
            id,
            alive: Arc::new(()),
            retired: AtomicBool::new(false),
        }
    }

    /// For a configuration Envoy has destroyed whose memory is kept a while (`ffi`'s
    /// graveyard), from any thread: it claims the fetching no more, and hands it over now, not
    /// when it is dropped — until then the state's other configurations would wait for a tick
    /// that never comes (their clock asks for none while this one holds the fetching, and
    /// Envoy has cancelled this one's calls), and with them the graveyard for a main-thread
    /// hook to empty it. A tick of this configuration in progress on the main thread meanwhile
    /// hands it over again when it ends ([`Fetcher::tick`]). SeqCst, as the claim and the
    /// tick's end: of this flag and a claim, one sees the other.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.hand_over();
    }

    /// Leaves the fetching, if this configuration holds it, to the next configuration sharing
    /// the state to tick, at once.
    fn hand_over(&self) {
        if self
            .state
            .fetcher
            .compare_exchange(self.id, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.state.next_tick_ms.store(0, Ordering::SeqCst);
        }
    }

    /// A configuration as Envoy's configuration hook starts it, registered (module docs):
    /// sharing the state of the newest live configuration fetching alike ([`fetched_alike`]),
    /// or else with a state of its own that starts
    /// from the keys of the newest live one with the same keys and the revocation set of the
    /// newest with the same feed. Its fetcher goes on from a revocation set it starts from ([`Fetcher::tick`]).
    pub fn start(config: Config) -> (Arc<Shared>, Start) {
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|other| other.strong_count() > 0);
        let newest = |same: &dyn Fn(&Config) -> bool| {
            live.iter()
                .rev()
                .filter_map(Weak::upgrade)
                .find(|other| same(&other.config))
        };
        let joined = newest(&|other| fetched_alike(other, &config));
        let (shared, start) = match joined {
            Some(other) => {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let state = Arc::clone(&other.state);
                (Shared::with_state(config, id, state), Start::Joined)
            }
            None => {
                let keys = newest(&|other| same_jwks(other, &config)).and_then(|o| o.keys());
                let revocation =
                    newest(&|other| same_feed(other, &config)).and_then(|o| o.revocation());
                let shared = Shared::new(config);
                let start = Start::Own {
                    keys: keys.is_some(),
                    revocation: revocation.is_some(),
                };
                if keys.is_some() {
                    shared.state.keys.store(keys);
                }
                shared.state.revocation.store(revocation);
                (shared, start)
            }
        };
        let shared = Arc::new(shared);
        live.push(Arc::downgrade(&shared));
        (shared, start)
    }

    /// What the clock thread reads for this configuration ([`TickGate`]).
    pub fn tick_gate(&self) -> TickGate {
        TickGate {
            state: Arc::clone(&self.state),
            id: self.id,
        }
    }

    /// The published keys.
    pub fn keys(&self) -> Option<Arc<Keys>> {
        self.state.keys.load_full()
    }

    /// The published revocation set.
    pub fn revocation(&self) -> Option<Arc<Revocation>> {
        self.state.revocation.load_full()
    }

    /// Whether this configuration's fetcher fills the state, taking the fetching over when
    /// the configuration that did is gone.
    fn claim(&self) -> Claim {
        if self.retired.load(Ordering::SeqCst) {
            return Claim::Other;
        }
        match self
            .state
            .fetcher
            .compare_exchange(0, self.id, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Claim::Taken,
            Err(fetcher) if fetcher == self.id => Claim::Held,
            Err(_) => Claim::Other,
        }
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
        now: Now,
    ) -> Verdict {
        let shared = self.shared;
        let keys = shared.state.keys.load();
        let revocation = shared.state.revocation.load();
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
                now,
            )
        };
        let cached = CACHES.try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            Some(run(caches.of(shared)))
        });
        match cached {
            Ok(Some(verdict)) => verdict,
            // No thread-local storage (thread exiting) or re-entered: decide without a cache.
            _ => run(&mut TokenCache::new(0)),
        }
    }

    fn want_jwks_refetch(&mut self, now: Now) {
        let state = &self.shared.state;
        state.jwks_wanted_ms.store(now.mono_ms, Ordering::SeqCst);
        state.wake_for_jwks(now.mono_ms);
    }
}

/// The native build's side of [`Publish`]: the state every worker thread reads.
impl Publish for &Shared {
    fn jwks_wanted_ms(&self) -> u64 {
        self.state.jwks_wanted_ms.load(Ordering::Relaxed)
    }

    fn publish_jwks(&mut self, json: &[u8], keys: KeySet, _now_ms: u64) -> Option<u64> {
        let current = self.keys();
        if current.as_ref().is_some_and(|current| current.json == json) {
            return None;
        }
        let generation = current.map_or(0, |k| k.generation).saturating_add(1);
        self.state.keys.store(Some(Arc::new(Keys {
            set: keys,
            generation,
            json: json.to_vec(),
        })));
        Some(generation)
    }

    fn published(&self) -> Option<Published> {
        self.state
            .revocation
            .load()
            .as_deref()
            .map(|rev| Published {
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
        self.state
            .revocation
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
        self.state.revocation.store(Some(Arc::new(Revocation {
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
    /// Whether it has ticked for its state yet.
    started: bool,
}

impl Fetcher {
    /// The fetchers a configuration needs (none for inline keys and no feed). Seeded with the
    /// wall clock: every Envoy's monotonic clock starts near the same value.
    pub fn new(config: &Config, now: Now) -> Fetcher {
        Fetcher {
            fetcher: fetch::Fetcher::new(config, now.mono_ms, now.unix_ms ^ 0x5EED),
            stale: StaleWatch::default(),
            started: false,
        }
    }

    /// Whether there is anything to fetch (else no tick is needed).
    pub fn fetches(&self) -> bool {
        self.fetcher.fetches()
    }

    /// One tick ([`fetch::Fetcher::tick`]), then the revocation gauges — when this
    /// configuration fetches for its state; it takes the fetching over when the configuration
    /// that did is gone. A fetcher starting on a state that already holds a revocation set (one
    /// [`Shared::start`] started from, or one taken over) goes on from the set's seq instead
    /// of loading a full set first.
    pub fn tick(
        &mut self,
        shared: &Shared,
        call: &mut impl IssuerCall,
        report: &impl Report,
        now: Now,
    ) {
        let now_ms = now.mono_ms;
        match shared.claim() {
            Claim::Other => return,
            Claim::Held => {}
            Claim::Taken => {
                self.fetcher.restart(now_ms);
                report.log(
                    Level::Info,
                    &format!("{FETCHER}, taking over from a configuration gone"),
                );
            }
        }
        if !self.started {
            self.started = true;
            if shared.revocation().is_some() {
                self.fetcher.resume();
            }
        }
        let state = &shared.state;
        let wanted = state.jwks_wanted_ms.load(Ordering::SeqCst);
        self.fetcher.tick(&mut &*shared, call, report, now);
        if let Some(feed) = &shared.config.revocation {
            self.stale
                .observe(feed, (&shared).published(), report, now_ms);
        }
        state
            .jwks_not_before_ms
            .store(self.fetcher.jwks_refetch_not_before_ms(), Ordering::Release);
        let next = self
            .fetcher
            .next_tick_ms()
            .min(now_ms.saturating_add(IDLE_TICK_MS));
        state.next_tick_ms.store(next, Ordering::SeqCst);
        // A worker's unknown kid since this tick read them would be lost under the store.
        if state.jwks_wanted_ms.load(Ordering::SeqCst) != wanted {
            state.wake_for_jwks(now_ms);
        }
        // Retired during this tick (destroyed on another thread: `Shared::retire`): its
        // hand-over may have come before the store above, which put the next tick off. Handed
        // over again, at once (no other configuration claims meanwhile: claims are made on
        // this thread). Retired after this load instead, `retire`'s own hand-over comes after
        // the store.
        if shared.retired.load(Ordering::SeqCst) {
            shared.hand_over();
            state.next_tick_ms.store(0, Ordering::SeqCst);
        }
    }

    /// A call's answer ([`fetch::Fetcher::on_response`], its body in the pieces of Envoy's
    /// buffer), then the tick it calls for (the next poll, a page, a retry's schedule), on the
    /// main thread at once instead of at the clock's next ask.
    #[allow(clippy::too_many_arguments)]
    pub fn on_answer(
        &mut self,
        shared: &Shared,
        call: &mut impl IssuerCall,
        report: &impl Report,
        id: u64,
        status: u32,
        body: &[&[u8]],
        now: Now,
    ) {
        // Retired ([`Shared::retire`]: Envoy is destroying its configuration on another
        // thread): the answer is dropped, for a feed answer dispatches the next poll, on a
        // configuration whose callouts Envoy is cancelling — one that would outlive it. The
        // configuration taking the fetching over asks again.
        if shared.retired.load(Ordering::SeqCst) {
            return;
        }
        self.fetcher
            .on_response(&mut &*shared, call, report, id, status, body, now);
        self.tick(shared, call, report, now);
    }
}

/// Runs `work` on a configuration's fetcher, for the main thread's hooks (a tick, an answer),
/// at `now_ms` ([`Now::mono_ms`]).
///
/// Nothing runs when the fetcher is held: only Envoy answering inline, inside the fetcher's own
/// dispatch (a request it fails at once, e.g. no healthy host), gets here then — that dispatch
/// returns an error, and the fetcher counts the failure and backs off, so the answer is not
/// needed.
///
/// A panic in `work` is caught here, while the lock is held, so that it never poisons the lock:
/// a fetcher left poisoned would stop fetching for good while its configuration lives — no key
/// refresh, no revocation reaching the edge — and, holding the state's fetching, keep every
/// configuration sharing it from taking over. The fetcher starts over instead (no call in
/// flight, a full set next, after the backoff of a failed call: a fault that repeats must not
/// ask for the whole set on every tick), and says so at error level.
pub fn with_fetcher(
    fetcher: &Mutex<Fetcher>,
    shared: &Shared,
    report: &impl Report,
    now_ms: u64,
    work: impl FnOnce(&mut Fetcher),
) {
    let mut guard = match fetcher.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::WouldBlock) => return,
        // Not from a panic caught below; from one anywhere else that held the lock.
        Err(TryLockError::Poisoned(poisoned)) => {
            let mut guard = poisoned.into_inner();
            fetcher.clear_poison();
            guard.fetcher.restart(now_ms);
            shared.state.tick_soon();
            guard
        }
    };
    if catch_unwind(AssertUnwindSafe(|| work(&mut guard))).is_err() {
        guard.fetcher.restart_after_fault(now_ms);
        // The tick times stored are the fetcher's from before: its restart's are sooner.
        shared.state.tick_soon();
        report.log(
            Level::Error,
            "the JWKS/revocation fetcher panicked; it starts over with a full load",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::testing::{
        at, jwks_json, page_body, remote_config, Log, ScriptedIssuer, NOW,
    };
    use crate::refresh::FEED_PAGE_ENTRIES;

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
            now: Now,
        ) {
            self.fetcher
                .on_response(&mut &*shared, call, report, id, status, &[body], now);
        }
    }

    #[test]
    fn fetcher_first_tick_dispatches_jwks_and_feed_once() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, at(NOW));
        fetcher.tick(&shared, &mut issuer, &log, at(NOW + TICK_MS));
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

    /// The clock asks Envoy for a tick only when one has work (each ask is a window for a
    /// configuration's destruction on the clock thread): a tick says when the next one is
    /// due, and an answer is followed by its own tick, dispatching the next poll at once.
    /// With the feed healthy, nothing is due before the poll out would be given up.
    #[test]
    fn a_tick_says_when_the_next_is_due_and_an_answer_ticks_at_once() {
        let shared = Shared::new(remote_config());
        let due = || shared.state.next_tick_ms.load(Ordering::Acquire);
        assert_eq!(due(), 0, "a new state is ticked at once");
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, at(NOW));
        assert_eq!(issuer.calls.len(), 2);
        // Both calls out: due when the first would be given up (the JWKS's, 2 s + 5 s).
        assert_eq!(due(), NOW + 7_001);
        // The JWKS answered: its refresh in 300 s is left to a poll's answer; the poll out is
        // given up 20 s + 2 × 5 s after it went.
        let jwks = jwks_json();
        fetcher.on_answer(
            &shared,
            &mut issuer,
            &log,
            1,
            200,
            &[jwks.as_bytes()],
            at(NOW + 10),
        );
        assert_eq!(issuer.calls.len(), 2);
        assert_eq!(due(), NOW + 30_001);
        // The poll answered: the next one goes out within the answer's own tick.
        let page = page_body(1, 3, false);
        fetcher.on_answer(&shared, &mut issuer, &log, 2, 200, &[&page], at(NOW + 20));
        assert_eq!(issuer.calls.len(), 3, "{:?}", issuer.calls);
        assert!(issuer.path(3).contains("since=3"), "{}", issuer.path(3));
        assert_eq!(due(), NOW + 20 + 30_001);
        // A worker saw an unknown kid: a tick when the refetch can go out, no sooner than
        // `min_refetch_seconds` (5 s) after the last fetch — without waiting for the poll,
        // and however many more are seen meanwhile.
        for when in [NOW + 30, NOW + 40, NOW + 4_000] {
            View { shared: &shared }.want_jwks_refetch(at(when));
            assert_eq!(due(), NOW + 5_000);
        }
        fetcher.tick(&shared, &mut issuer, &log, at(due()));
        assert_eq!(issuer.calls.len(), 4, "the refetch, when it was due");
        // While it is out, more unknown kids bring no tick sooner: its answer will.
        View { shared: &shared }.want_jwks_refetch(at(NOW + 5_005));
        assert_eq!(due(), NOW + 5_000 + 7_001);
        fetcher.on_answer(
            &shared,
            &mut issuer,
            &log,
            4,
            200,
            &[jwks.as_bytes()],
            at(NOW + 5_010),
        );
        // A failed poll: due at its backoff.
        fetcher.on_answer(&shared, &mut issuer, &log, 3, 0, &[], at(NOW + 5_020));
        assert!(
            due() > NOW + 5_020 && due() <= NOW + 5_020 + 1_000,
            "{}",
            due()
        );
        fetcher.tick(&shared, &mut issuer, &log, at(due()));
        assert_eq!(issuer.calls.len(), 5, "the retry, when it was due");
    }

    /// A failed JWKS fetch is retried at its backoff, not left to the feed's next answer: the
    /// keys may not be loaded at all (every token refused meanwhile).
    #[test]
    fn a_failed_jwks_fetch_is_retried_at_its_backoff_while_a_poll_is_out() {
        let (shared, mut fetcher, mut issuer, log) = polling();
        let due = || shared.state.next_tick_ms.load(Ordering::SeqCst);
        let full = page_body(1, 3, true);
        fetcher.on_answer(&shared, &mut issuer, &log, 2, 200, &[&full], at(NOW + 10));
        assert_eq!(issuer.calls.len(), 3, "the long poll is out");
        fetcher.on_answer(&shared, &mut issuer, &log, 1, 503, &[], at(NOW + 20));
        assert!(shared.keys().is_none());
        assert_eq!(due(), NOW + 20 + 1_000, "the JWKS's first backoff");
        fetcher.tick(&shared, &mut issuer, &log, at(due()));
        assert_eq!(issuer.calls.len(), 4, "the JWKS again");
    }

    #[test]
    fn fetcher_jwks_answer_publishes_keys_to_every_reader() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, at(NOW));
        assert!(shared.keys().is_none());
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            1,
            200,
            jwks_json().as_bytes(),
            at(NOW),
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
            at(NOW),
        );
        assert_eq!(shared.keys().unwrap().generation, 1);
    }

    #[test]
    fn fetcher_feed_answer_publishes_set_and_polls_again_from_its_seq() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, at(NOW));
        let body = br#"{"seq":7,"full":true,"now":1700000000,"entries":[
            {"seq":7,"kind":"jti","value":"j1","until":1700000900}]}"#;
        fetcher.on_response(&shared, &mut issuer, &log, 2, 200, body, at(NOW + 50));
        let published = shared.revocation().unwrap();
        assert_eq!((published.set.len(), published.set.seq), (1, 7));
        assert_eq!(published.last_ok_ms, NOW + 50);
        assert_eq!(issuer.calls.len(), 3, "the next long poll goes out at once");
        assert!(issuer.path(3).contains("since=7"), "{}", issuer.path(3));
    }

    /// A fetcher that asked for a full set (call 2), with its JWKS call (1) out.
    fn polling() -> (Shared, Fetcher, ScriptedIssuer, Log) {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, at(NOW));
        (shared, fetcher, issuer, log)
    }

    #[test]
    fn fetcher_panic_caught_unpoisoned_and_fetcher_starts_over() {
        let (shared, fetcher, mut issuer, log) = polling();
        let fetcher = Mutex::new(fetcher);
        let body = br#"{"seq":7,"full":true,"now":1700000000,"entries":[]}"#;
        with_fetcher(&fetcher, &shared, &log, NOW, |f| {
            f.on_response(&shared, &mut issuer, &log, 2, 200, body, at(NOW))
        });
        assert!(issuer.path(3).contains("since=7"), "{}", issuer.path(3));
        // A defect panics inside the fetcher (a hook's work, with the lock held).
        shared
            .state
            .next_tick_ms
            .store(NOW + 30_000, Ordering::SeqCst);
        with_fetcher(&fetcher, &shared, &log, NOW + 1, |_| {
            panic!("a defect in the fetcher")
        });
        assert!(
            !fetcher.is_poisoned(),
            "a later hook would find it poisoned"
        );
        assert_eq!(
            shared.state.next_tick_ms.load(Ordering::SeqCst),
            0,
            "the tick stored before the panic is not waited for"
        );
        assert!(log.has("the JWKS/revocation fetcher panicked; it starts over with a full load"));
        // The next ticks run; after a failed call's backoff, as a new fetcher's first: the
        // keys and a full set asked again (the calls out before the panic are forgotten).
        let soon = NOW + TICK_MS;
        with_fetcher(&fetcher, &shared, &log, soon, |f| {
            f.tick(&shared, &mut issuer, &log, at(soon))
        });
        assert_eq!(issuer.calls.len(), 3, "backing off");
        let later = NOW + 1 + 1_000;
        with_fetcher(&fetcher, &shared, &log, later, |f| {
            f.tick(&shared, &mut issuer, &log, at(later))
        });
        assert_eq!(issuer.calls.len(), 5);
        assert!(issuer.path(5).contains("since=0"), "{}", issuer.path(5));
    }

    #[test]
    fn fetcher_panicking_on_every_tick_backs_off() {
        let (shared, fetcher, mut issuer, log) = polling();
        let fetcher = Mutex::new(fetcher);
        // A defect that strikes on every tick, after the tick asked for what was due.
        for i in 1..=20 {
            let now = NOW + i * TICK_MS;
            with_fetcher(&fetcher, &shared, &log, now, |f| {
                f.tick(&shared, &mut issuer, &log, at(now));
                panic!("a defect in the fetcher");
            });
        }
        // Two seconds of ticks: the backoff doubles (500 ms, 1 s for the feed; 1 s for the
        // keys), not two full loads per tick.
        assert!(issuer.calls.len() <= 6, "{} calls", issuer.calls.len());
    }

    #[test]
    fn fetcher_poisoned_elsewhere_still_fetches_and_starts_over() {
        let (shared, fetcher, mut issuer, log) = polling();
        let fetcher = Mutex::new(fetcher);
        // A panic outside `with_fetcher` while the lock was held.
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = fetcher.lock();
                panic!("poisons the lock");
            })
            .join()
        });
        assert!(fetcher.is_poisoned());
        with_fetcher(&fetcher, &shared, &log, NOW + TICK_MS, |f| {
            f.tick(&shared, &mut issuer, &log, at(NOW + TICK_MS))
        });
        assert!(!fetcher.is_poisoned());
        assert_eq!(issuer.calls.len(), 4, "the keys and a full set asked again");
        assert!(issuer.path(4).contains("since=0"), "{}", issuer.path(4));
    }

    #[test]
    fn fetcher_held_hook_does_nothing() {
        let (shared, fetcher, _, log) = polling();
        let fetcher = Mutex::new(fetcher);
        let _held = fetcher.lock().unwrap();
        let mut ran = false;
        with_fetcher(&fetcher, &shared, &log, NOW + TICK_MS, |_| ran = true);
        assert!(
            !ran,
            "the answer of a dispatch failed inline is not handled"
        );
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
            at(NOW),
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
        fetcher.on_response(&shared, &mut issuer, &log, 3, 200, &body, at(NOW + 10));
        let published = shared.revocation().unwrap();
        assert_eq!(published.set.len(), FEED_PAGE_ENTRIES + 10);
        assert_eq!(published.set.seq, page + 10);
        assert_eq!(published.generation, 1, "published once");
        assert!(issuer.path(4).contains(&format!("since={}", page + 10)));
    }

    #[test]
    fn fetcher_paged_load_asks_without_wait_and_ends_on_the_answer() {
        let (shared, mut fetcher, mut issuer, log) = polling();
        let page = FEED_PAGE_ENTRIES as u64;
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, page, true),
            at(NOW),
        );
        // The next page asked for at once, not held by the issuer.
        let next = issuer.path(3);
        assert!(next.contains(&format!("since={page}&wait=0")), "{next}");
        // However long that answer takes, no part of the set is published.
        for t in [100, 2_000, 10_000] {
            fetcher.tick(&shared, &mut issuer, &log, at(NOW + t));
            assert!(shared.revocation().is_none(), "published at +{t} ms");
        }
        // The set was an exact number of pages: the issuer answers with nothing at once.
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            3,
            200,
            &page_body(page + 1, 0, false),
            at(NOW + 10_000),
        );
        let published = shared.revocation().unwrap();
        assert_eq!(
            (published.set.len(), published.set.seq, published.generation),
            (FEED_PAGE_ENTRIES, page, 1)
        );
        // Then the long poll as configured.
        let next = issuer.path(4);
        assert!(next.contains(&format!("since={page}&wait=20")), "{next}");
    }

    #[test]
    fn fetcher_reload_keeps_the_whole_old_set_until_the_new_one_is_in() {
        let (shared, mut fetcher, mut issuer, log) = polling();
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, 1000, true),
            at(NOW),
        );
        assert_eq!(shared.revocation().unwrap().set.len(), 1000);
        // The issuer answers the next poll with a new full set, paged (it lost its log, say).
        let page = FEED_PAGE_ENTRIES as u64;
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            3,
            200,
            &page_body(5_001, page, true),
            at(NOW + 100),
        );
        // The set is loaded aside and published once: readers keep the old set, however slow
        // the next page, or if its poll fails.
        fetcher.tick(&shared, &mut issuer, &log, at(NOW + 10_000));
        fetcher.on_response(&shared, &mut issuer, &log, 4, 503, b"", at(NOW + 10_000));
        fetcher.tick(&shared, &mut issuer, &log, at(NOW + 60_000));
        let held = shared.revocation().unwrap();
        assert_eq!((held.set.len(), held.set.seq), (1000, 1000));
        // The rest comes: the whole new set, published once.
        let last = issuer.calls.len() as u64;
        assert!(issuer
            .path(last)
            .contains(&format!("since={}&wait=0", 5_000 + page)));
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            last,
            200,
            &page_body(5_001 + page, 10, false),
            at(NOW + 60_100),
        );
        // The old entries stay with it until their `until`: nothing lifts a revocation.
        let published = shared.revocation().unwrap();
        assert_eq!(published.set.len(), 1000 + FEED_PAGE_ENTRIES + 10);
        assert_eq!(published.generation, held.generation + 1);
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
            at(NOW),
        );
        let before = shared.revocation().unwrap();
        fetcher.on_response(
            &shared,
            &mut issuer,
            &log,
            3,
            200,
            &page_body(1001, 1, false),
            at(NOW),
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
            at(NOW),
        );
        let body = br#"{"seq":3,"full":false,"now":1700000000,"entries":[]}"#;
        fetcher.on_response(&shared, &mut issuer, &log, 3, 200, body, at(NOW + 10));
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
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, at(NOW));
        fetcher.on_response(&shared, &mut issuer, &log, 2, 0, b"", at(NOW + 50));
        assert!(shared.revocation().is_none());
        assert!(log.0.borrow().iter().any(|l| l == "count feed_fetch_fail"));
    }

    const HOUR_MS: u64 = 3_600_000;

    /// The clock thread's looks from `from` to `to` on the monotonic clock, every [`TICK_MS`],
    /// each asking for the tick when the gate says one is due, as `ffi::keep_time` does; the
    /// wall clock read with each look is `wall(mono_ms)`.
    fn clock_looks(
        (shared, fetcher, issuer, log): (&Shared, &mut Fetcher, &mut ScriptedIssuer, &Log),
        from: u64,
        to: u64,
        wall: impl Fn(u64) -> u64,
    ) {
        let gate = shared.tick_gate();
        for mono_ms in (from..=to).step_by(TICK_MS as usize) {
            if gate.due(mono_ms) {
                let now = Now {
                    unix_ms: wall(mono_ms),
                    mono_ms,
                };
                fetcher.tick(shared, issuer, log, now);
            }
        }
    }

    fn feed_polls(issuer: &ScriptedIssuer) -> usize {
        (1..=issuer.calls.len() as u64)
            .filter(|&id| issuer.path(id).starts_with("/v1/revocations"))
            .count()
    }

    /// The wall clock stepped an hour back (NTP setting a VM's clock at boot, `date -s`) while
    /// the feed was backing off after a failed poll: the retry still goes out after its
    /// backoff, a worker's unknown `kid` still brings a JWKS refetch, and a poll lost without
    /// an answer is still given up and retried on time — not an hour later, with no
    /// revocation reaching the edge meanwhile.
    #[test]
    fn fetching_wall_clock_stepped_back_keeps_retries_refetches_and_give_ups_on_schedule() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, at(NOW));
        let jwks = jwks_json();
        fetcher.on_answer(
            &shared,
            &mut issuer,
            &log,
            1,
            200,
            &[jwks.as_bytes()],
            at(NOW + 10),
        );
        // The issuer is down: the poll fails, the next is due after a 500 ms backoff.
        fetcher.on_answer(&shared, &mut issuer, &log, 2, 503, &[], at(NOW + 20));
        assert_eq!(issuer.calls.len(), 2);
        // From here the wall clock reads an hour behind.
        let back = |mono_ms: u64| mono_ms - HOUR_MS;
        let rig = (&shared, &mut fetcher, &mut issuer, &log);
        clock_looks(rig, NOW + 100, NOW + 1_000, back);
        assert_eq!(feed_polls(&issuer), 2, "the retry, after its backoff");
        assert!(issuer.path(3).contains("since=0"), "{}", issuer.path(3));
        // A worker sees a token with an unknown `kid`: a refetch, 5 s after the last.
        let hint = Now {
            unix_ms: back(NOW + 6_000),
            mono_ms: NOW + 6_000,
        };
        View { shared: &shared }.want_jwks_refetch(hint);
        let rig = (&shared, &mut fetcher, &mut issuer, &log);
        clock_looks(rig, NOW + 6_000, NOW + 6_200, back);
        assert_eq!(issuer.calls.len(), 4, "the refetch");
        assert_eq!(issuer.path(4), "/.well-known/jwks.json");
        // The retried poll (out since NOW + 600) is never answered: given up 30 s later, and
        // polled again after the backoff.
        let rig = (&shared, &mut fetcher, &mut issuer, &log);
        clock_looks(rig, NOW + 6_300, NOW + 32_000, back);
        let failed = log
            .0
            .borrow()
            .iter()
            .filter(|l| *l == "count feed_fetch_fail")
            .count();
        assert_eq!(failed, 2, "the 503 and the poll given up");
        assert_eq!(feed_polls(&issuer), 3);
    }

    /// The wall clock stepped an hour forward a second after the feed answered: the set is a
    /// second old, not an hour — no "stale" warning, no 503 under `stale_mode: deny` — and the
    /// poll out is not given up as an hour old.
    #[test]
    fn revocation_wall_clock_stepped_forward_not_stale_and_the_poll_out_kept() {
        let shared = Shared::new(remote_config());
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        fetcher.tick(&shared, &mut issuer, &log, at(NOW));
        let jwks = jwks_json();
        fetcher.on_answer(
            &shared,
            &mut issuer,
            &log,
            1,
            200,
            &[jwks.as_bytes()],
            at(NOW + 10),
        );
        let page = page_body(1, 3, false);
        fetcher.on_answer(&shared, &mut issuer, &log, 2, 200, &[&page], at(NOW + 20));
        assert_eq!(shared.revocation().unwrap().set.seq, 3);
        assert_eq!(issuer.calls.len(), 3, "the next poll out");
        let now = Now {
            unix_ms: NOW + 1_000 + HOUR_MS,
            mono_ms: NOW + 1_000,
        };
        fetcher.tick(&shared, &mut issuer, &log, now);
        assert!(log.has("gauge revocation_age_seconds 0"));
        assert!(
            !log.0.borrow().iter().any(|l| l.contains("is stale")),
            "{:?}",
            log.0.borrow()
        );
        assert!(!log.has("count feed_fetch_fail"), "the poll out kept");
        assert_eq!(issuer.calls.len(), 3);
        // A token issued by the wall clock (as the issuer's is) is allowed: the set is fresh.
        let issued = i64::try_from(now.unix_ms / 1000).unwrap();
        let claims = weauth_token::Claims {
            iss: "https://issuer".into(),
            aud: weauth_token::Audience::One("weauth".into()),
            sub: "u1".into(),
            sid: "s1".into(),
            jti: "j-fresh".into(),
            iat: issued,
            nbf: issued,
            exp: issued + 900,
            openid: "o1".into(),
            unionid: None,
            appid: "wx".into(),
            scope: None,
        };
        let key = weauth_token::SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[7u8; 32])
            .unwrap();
        let token = weauth_token::sign(&claims, &key).unwrap();
        let found = Extracted::Found {
            token: &token,
            source: 0,
        };
        let verdict = View { shared: &shared }.judge(&found, Require::Required, &[], now);
        assert!(
            matches!(verdict.decision, crate::verify::Decision::Allow { .. }),
            "{:?}",
            verdict.decision
        );
    }

    #[test]
    fn view_unknown_kid_hint_reaches_the_fetcher() {
        let shared = Shared::new(remote_config());
        let mut view = View { shared: &shared };
        shared
            .state
            .next_tick_ms
            .store(NOW + 5_000, Ordering::Release);
        view.want_jwks_refetch(at(NOW));
        assert_eq!(shared.state.jwks_wanted_ms.load(Ordering::Relaxed), NOW);
        assert_eq!(
            shared.state.next_tick_ms.load(Ordering::Acquire),
            NOW,
            "no fetch yet: the clock asks for a tick at once"
        );
    }

    /// A configuration fetching from sources of its own (`cluster`: [`LIVE`] is shared by the
    /// tests running at once), with `extra` fields.
    fn sourced(cluster: &str, extra: &str) -> Config {
        Config::parse(
            format!(
                r#"{{"issuer":"https://issuer","audiences":["weauth"]{extra},
                    "jwks":{{"cluster":"{cluster}"}},
                    "revocation":{{"cluster":"{cluster}","credential":"feed-secret"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    /// `shared` with keys and a revocation set published, as its fetcher would.
    fn publish_both(shared: &Shared) {
        let mut issuer = ScriptedIssuer::default();
        let mut fetcher = Fetcher::new(&shared.config, at(NOW));
        let log = Log::default();
        fetcher.tick(shared, &mut issuer, &log, at(NOW));
        let jwks = jwks_json();
        fetcher.on_response(shared, &mut issuer, &log, 1, 200, jwks.as_bytes(), at(NOW));
        fetcher.on_response(
            shared,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, 3, false),
            at(NOW),
        );
        assert!(shared.keys().is_some() && shared.revocation().is_some());
    }

    #[test]
    fn start_shares_the_state_and_the_fetcher_of_a_live_configuration_with_the_same_sources() {
        let (old, start) = Shared::start(sourced("share_same", ""));
        assert_eq!(
            start,
            Start::Own {
                keys: false,
                revocation: false
            },
            "the first one starts cold"
        );
        let mut old_fetcher = Fetcher::new(&old.config, at(NOW));
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        old_fetcher.tick(&old, &mut issuer, &log, at(NOW));
        let jwks = jwks_json();
        old_fetcher.on_response(&old, &mut issuer, &log, 1, 200, jwks.as_bytes(), at(NOW));
        old_fetcher.on_response(
            &old,
            &mut issuer,
            &log,
            2,
            200,
            &page_body(1, 3, false),
            at(NOW),
        );
        // An update of the configuration (another cache size): the same sources.
        let (new, start) = Shared::start(sourced("share_same", r#","cache_entries":5"#));
        assert_eq!(start, Start::Joined);
        assert!(Arc::ptr_eq(&new.state, &old.state));
        assert_eq!(new.revocation().unwrap().set.seq, 3);
        assert_ne!(new.id, old.id, "its own token caches");
        // Its fetcher stays idle while the old one fetches for both.
        let mut new_fetcher = Fetcher::new(&new.config, at(NOW));
        let mut second = ScriptedIssuer::default();
        new_fetcher.tick(&new, &mut second, &log, at(NOW + TICK_MS));
        assert!(second.calls.is_empty(), "{:?}", second.calls);
        let page = page_body(4, 1, false);
        old_fetcher.on_response(&old, &mut issuer, &log, 3, 200, &page, at(NOW + TICK_MS));
        assert_eq!(
            new.revocation().unwrap().set.seq,
            4,
            "what the old one fetches"
        );
        // The old one goes (drained): the new one's next tick takes the fetching over, from
        // the set's seq — asked for at once.
        new.state.next_tick_ms.store(NOW + 5_000, Ordering::Release);
        drop(old);
        assert_eq!(new.state.next_tick_ms.load(Ordering::Acquire), 0);
        new_fetcher.tick(&new, &mut second, &log, at(NOW + 2 * TICK_MS));
        assert_eq!(second.calls.len(), 2, "the JWKS and the feed");
        assert!(second.path(2).contains("since=4"), "{}", second.path(2));
        assert_eq!(new.revocation().unwrap().set.seq, 4, "kept meanwhile");
    }

    /// Two configurations sharing a state, the first fetching for it (its first tick done).
    fn fetching_and_joined(cluster: &str) -> (Arc<Shared>, Fetcher, Arc<Shared>, Fetcher) {
        let (old, _) = Shared::start(sourced(cluster, ""));
        let mut old_fetcher = Fetcher::new(&old.config, at(NOW));
        old_fetcher.tick(
            &old,
            &mut ScriptedIssuer::default(),
            &Log::default(),
            at(NOW),
        );
        let (new, start) = Shared::start(sourced(cluster, r#","cache_entries":5"#));
        assert_eq!(start, Start::Joined);
        let new_fetcher = Fetcher::new(&new.config, at(NOW));
        (old, old_fetcher, new, new_fetcher)
    }

    /// A configuration Envoy destroyed on another thread is kept until the main thread's next
    /// hook (`ffi`'s graveyard); the state's other configurations must not wait for that hook
    /// to fetch — while it held the fetching, their clock would ask for no tick, and no hook
    /// would come.
    #[test]
    fn a_retired_configuration_hands_the_fetching_over_at_once_and_fetches_no_more() {
        let (old, mut old_fetcher, new, mut new_fetcher) = fetching_and_joined("retire_idle");
        let (gate, now) = (new.tick_gate(), NOW + TICK_MS);
        assert!(!gate.due(now), "the old one fetches");
        old.retire();
        assert!(gate.due(now), "the new one's tick is asked for at once");
        let mut calls = ScriptedIssuer::default();
        let log = Log::default();
        old_fetcher.tick(&old, &mut calls, &log, at(now));
        old_fetcher.on_answer(
            &old,
            &mut calls,
            &log,
            2,
            200,
            &[&page_body(1, 1, false)],
            at(now),
        );
        assert!(calls.calls.is_empty(), "retired, it fetches no more");
        assert_eq!(old.state.fetcher.load(Ordering::SeqCst), 0);
        new_fetcher.tick(&new, &mut calls, &log, at(now));
        assert_eq!(
            calls.calls.len(),
            2,
            "the new one took over: the JWKS and the feed"
        );
    }

    /// Retired during its own tick on the main thread (the destroy on the clock thread races
    /// a fetch answer's tick): the tick's closing store of when its next tick is due must not
    /// put the hand-over off until then.
    #[test]
    fn a_configuration_retired_during_its_tick_hands_the_fetching_over_when_it_ends() {
        struct RetiredOnCall<'a>(&'a Shared, ScriptedIssuer);
        impl IssuerCall for RetiredOnCall<'_> {
            fn dispatch(
                &mut self,
                cluster: &str,
                headers: &[(&str, &str)],
                timeout_ms: u64,
            ) -> Result<u64, crate::host::DispatchError> {
                self.0.retire();
                self.1.dispatch(cluster, headers, timeout_ms)
            }
        }
        let (old, _) = Shared::start(sourced("retire_in_tick", ""));
        let mut old_fetcher = Fetcher::new(&old.config, at(NOW));
        let (new, start) = Shared::start(sourced("retire_in_tick", r#","cache_entries":5"#));
        assert_eq!(start, Start::Joined);
        // Its first tick: the JWKS and the feed dispatched, retired at the first.
        let mut call = RetiredOnCall(&old, ScriptedIssuer::default());
        old_fetcher.tick(&old, &mut call, &Log::default(), at(NOW));
        assert_eq!(call.1.calls.len(), 2);
        assert_eq!(old.state.fetcher.load(Ordering::SeqCst), 0);
        assert!(
            new.tick_gate().due(NOW + 10),
            "due at once, not when the old one's next tick would have been ({})",
            old.state.next_tick_ms.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn start_with_the_same_inline_keys_and_feed_joins() {
        let jwk = serde_json::from_str::<serde_json::Value>(&jwks_json()).unwrap();
        let config = |cluster: &str, extra: &str| {
            Config::parse(
                format!(
                    r#"{{"issuer":"https://issuer","audiences":["weauth"]{extra},
                        "jwks":{{"inline":{jwk}}},
                        "revocation":{{"cluster":"{cluster}","credential":"feed-secret"}}}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let (old, _) = Shared::start(config("inline_same", ""));
        let (new, start) = Shared::start(config("inline_same", r#","cache_entries":5"#));
        assert_eq!(start, Start::Joined, "one state, one long poll");
        assert!(Arc::ptr_eq(&new.state, &old.state));
        // Other inline keys: a state of its own.
        let other = weauth_token::SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[9u8; 32])
            .unwrap();
        let other = serde_json::to_string(&weauth_token::Jwks {
            keys: vec![other.jwk()],
        })
        .unwrap();
        let (_, start) = Shared::start(
            Config::parse(
                format!(
                    r#"{{"issuer":"https://issuer","audiences":["weauth"],
                        "jwks":{{"inline":{other}}},
                        "revocation":{{"cluster":"inline_same","credential":"feed-secret"}}}}"#
                )
                .as_bytes(),
            )
            .unwrap(),
        );
        assert!(matches!(start, Start::Own { .. }), "{start:?}");
    }

    #[test]
    fn start_with_sources_of_its_own_starts_from_what_a_live_one_fetched_from_either() {
        let (old, _) = Shared::start(sourced("own_sources", ""));
        publish_both(&old);
        // Another feed credential: a state of its own, starting from the old one's keys.
        let other_credential = Config::parse(
            br#"{"issuer":"https://issuer","audiences":["weauth"],
                 "jwks":{"cluster":"own_sources"},
                 "revocation":{"cluster":"own_sources","credential":"another"}}"#,
        )
        .unwrap();
        let (new, start) = Shared::start(other_credential);
        assert_eq!(
            start,
            Start::Own {
                keys: true,
                revocation: false
            }
        );
        assert!(!Arc::ptr_eq(&new.state, &old.state));
        assert!(Arc::ptr_eq(&new.keys().unwrap(), &old.keys().unwrap()));
        assert!(new.revocation().is_none());
        // Another clock skew: its own set, not one pruned for the old skew (an entry dropped
        // at `until` + 60 s would let a token accepted until `exp` + 300 s pass again).
        let (wider, start) = Shared::start(sourced("own_sources", r#","clock_skew_seconds":300"#));
        assert_eq!(
            start,
            Start::Own {
                keys: true,
                revocation: false
            }
        );
        assert!(!Arc::ptr_eq(&wider.state, &old.state));
        // Another long-poll wait: its own state and fetcher, starting from the old one's keys
        // and set. (Joined, its set was as old as the old fetcher's 50 s polls left it, past
        // its own 20 s `stale_after_seconds` for most of each wait.)
        let scheduled = |jwks: &str, feed: &str| {
            Config::parse(
                format!(
                    r#"{{"issuer":"https://issuer","audiences":["weauth"],
                        "jwks":{{"cluster":"own_wait"{jwks}}},
                        "revocation":{{"cluster":"own_wait","credential":"feed-secret"{feed}}}}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let slow = r#","wait_seconds":50,"stale_after_seconds":60"#;
        let (slower, _) = Shared::start(scheduled("", slow));
        publish_both(&slower);
        let (quicker, start) = Shared::start(scheduled(
            "",
            r#","wait_seconds":10,"stale_after_seconds":20"#,
        ));
        assert_eq!(
            start,
            Start::Own {
                keys: true,
                revocation: true
            }
        );
        assert!(!Arc::ptr_eq(&quicker.state, &slower.state));
        // Another JWKS refresh period: the same.
        let (_, start) = Shared::start(scheduled(r#","refresh_seconds":60"#, slow));
        assert!(matches!(start, Start::Own { keys: true, .. }), "{start:?}");
        // The same schedule: joined.
        let (_, start) = Shared::start(scheduled("", slow));
        assert_eq!(start, Start::Joined);
        // Another cluster: nothing.
        let (_, start) = Shared::start(sourced("own_elsewhere", ""));
        assert_eq!(
            start,
            Start::Own {
                keys: false,
                revocation: false
            }
        );
        // The configuration gone (Envoy destroyed it): nothing.
        let (gone, _) = Shared::start(sourced("own_gone", ""));
        publish_both(&gone);
        drop(gone);
        let (_, start) = Shared::start(sourced("own_gone", ""));
        assert_eq!(
            start,
            Start::Own {
                keys: false,
                revocation: false
            }
        );
    }

    /// The configurations this thread holds a token cache for.
    fn thread_caches() -> Vec<u64> {
        CACHES.with(|caches| caches.borrow().caches.keys().copied().collect())
    }

    fn judge_once(shared: &Shared) {
        let mut view = View { shared };
        let _ = view.judge(&Extracted::Missing, Require::Required, &[], at(NOW));
    }

    #[test]
    fn a_threads_cache_of_a_configuration_gone_is_dropped_at_its_next_request() {
        let old = Shared::new(remote_config());
        let old_id = old.id;
        judge_once(&old);
        assert_eq!(thread_caches(), [old_id]);
        // Envoy destroys the configuration on its main thread; this worker's cache of it goes
        // at this worker's next request, whichever configuration that is for.
        std::thread::scope(|s| {
            s.spawn(move || drop(old));
        });
        let new = Shared::new(remote_config());
        judge_once(&new);
        assert_eq!(thread_caches(), [new.id]);
    }
}
