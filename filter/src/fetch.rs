//! The JWKS and revocation fetchers — one for both builds, generic over the host.
//!
//! The fetcher decides when to call the issuer and what an answer means; the host carries the
//! calls ([`IssuerCall`], through the configured Envoy cluster), the reports ([`Report`]) and
//! the results ([`Publish`]):
//! - the native build publishes into the one state every worker thread reads (`native`);
//! - the wasm build runs it in the VM that holds the fetcher lease and publishes into shared
//!   data, where every VM syncs from (`root`).
//!
//! What it does: dispatch the JWKS fetch on its period, or sooner when a worker saw an unknown
//! `kid`; keep one long poll to the revocation feed open (the next poll goes out as soon as an
//! answer is in); apply each answer to the set and publish what changed. A set that arrives as
//! several pages is loaded aside ([`Staging`]) and published once, so no reader — in either
//! build — serves with a part of it. Expired entries are pruned every [`PRUNE_EVERY_MS`].
//!
//! Time: every `now_ms` here is the fetcher's clock ([`Now::mono_ms`]: one that never steps,
//! in both builds), on which every schedule, backoff, give-up and age is reckoned —
//! `last_ok_ms` included. Only the entries' cutoff (their `until`, Unix seconds, against the
//! time tokens are judged by) reads the wall clock ([`Now::unix_ms`]).

use weauth_token::{Algorithm, KeySet};

use crate::config::{Config, JwksSource, RemoteJwks, RevocationConfig};
use crate::host::{IssuerCall, Level, Now, Report};
use crate::refresh::{self, CallOutcome, FetchPhase, NextPoll, Schedule, Staging};
use crate::revocation::{FeedPage, RevocationSet, SHARDS};

/// Extra time given to a long poll beyond `wait_seconds` before Envoy times it out.
pub const FEED_TIMEOUT_MARGIN_MS: u64 = 5_000;
/// How often expired revocation entries are dropped.
pub const PRUNE_EVERY_MS: u64 = 10_000;

/// What a reader holds of the published revocation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The feed seq the set reflects.
    pub seq: u64,
    pub entries: usize,
    /// When the feed last answered (on the fetcher's clock: module docs).
    pub last_ok_ms: u64,
}

/// Where the fetcher's results go, and what it reads back of them.
pub trait Publish {
    /// When a worker last saw a token with an unknown `kid` (on the fetcher's clock; 0 =
    /// never).
    fn jwks_wanted_ms(&self) -> u64;
    /// Publishes a fetched JWKS (`json` as fetched, `keys` parsed from it). A JWKS equal to the
    /// published one keeps its generation, so cached verdicts stay valid. Returns the new
    /// generation, or `None` when nothing changed (or it could not be written; the adapter
    /// logs why).
    fn publish_jwks(&mut self, json: &[u8], keys: KeySet, now_ms: u64) -> Option<u64>;
    /// The published revocation set (`None` before the first).
    fn published(&self) -> Option<Published>;
    /// The published set, for the fetcher to change and publish again: taken out where no
    /// reader holds it (the wasm fetcher VM's own copy), else a copy sharing every shard
    /// (native: readers keep theirs until the next is published). Empty before the first.
    fn take_set(&mut self) -> RevocationSet;
    /// A copy of the published set sharing every shard, which the published one keeps (a
    /// paged load starts from it).
    fn copy_set(&self) -> RevocationSet;
    /// Gives back a set from [`Publish::take_set`] unpublished (an answer that could not be
    /// applied).
    fn restore_set(&mut self, set: RevocationSet);
    /// Publishes `set`, of which the shards `changed` differ from the published one (none: only
    /// its seq and `last_ok_ms` move, the generation stays), fed at `last_ok_ms`.
    fn publish_set(&mut self, set: RevocationSet, changed: &[usize], last_ok_ms: u64);
}

/// The JWKS and revocation fetchers of one configuration.
#[derive(Debug)]
pub struct Fetcher {
    jwks: Option<(RemoteJwks, Schedule)>,
    feed: Option<(RevocationConfig, Schedule)>,
    /// The next poll asks for a full set (`since=0`).
    full_pending: bool,
    /// The set was taken over ([`Self::resume`]) and no poll has been answered since: the
    /// next asks without wait.
    resumed: bool,
    last_prune_ms: u64,
    /// Spreads the floored polls of many Envoys.
    seed: u64,
    /// When (the fetcher's clock) the last full set came for a poll that held one.
    last_restart_ms: Option<u64>,
    /// How long an entry is kept past its `until` (s): the clock skew tokens are accepted with
    /// past their `exp` (`clock_skew_seconds`). The issuer's `until` allows for its own
    /// leeway only; an entry dropped sooner than the filter stops accepting the token would
    /// let a revoked token pass again until then.
    keep_past_until_s: i64,
    /// A set being loaded page by page, not yet published (module docs).
    staging: Staging,
    /// A worker saw an unknown `kid` since the last JWKS fetch started (as of the last tick).
    jwks_wanted: bool,
    /// The configuration's `algorithms`: a published key outside them is warned of.
    algorithms: Vec<Algorithm>,
}

impl Fetcher {
    /// The fetchers a configuration needs (none for inline keys and no feed), first due at
    /// `now_ms` (the fetcher's clock). `seed` differs per fetcher (the wasm VM id; the native
    /// start time, by the wall clock).
    pub fn new(config: &Config, now_ms: u64, seed: u64) -> Fetcher {
        let jwks = match &config.jwks {
            JwksSource::Remote(remote) => Some((
                remote.clone(),
                Schedule::new(
                    now_ms,
                    1_000,
                    remote.refresh_seconds.saturating_mul(1000).min(30_000),
                    remote.timeout_ms.saturating_add(5_000),
                ),
            )),
            JwksSource::Inline(_) => None,
        };
        let feed = config.revocation.as_ref().map(|feed| {
            (
                feed.clone(),
                Schedule::new(
                    now_ms,
                    500,
                    30_000,
                    feed.wait_seconds
                        .saturating_mul(1000)
                        .saturating_add(2 * FEED_TIMEOUT_MARGIN_MS),
                ),
            )
        });
        Fetcher {
            jwks,
            feed,
            full_pending: true,
            resumed: false,
            last_prune_ms: now_ms,
            seed,
            last_restart_ms: None,
            keep_past_until_s: config.validation.leeway.max(0),
            staging: Staging::default(),
            jwks_wanted: false,
            algorithms: config.validation.algorithms.clone(),
        }
    }

    /// The JWKS fetcher of [`Fetcher::new`] alone, without the feed's (the wasm build elects
    /// a fetcher per kind of data: `keys`).
    pub fn jwks_only(config: &Config, now_ms: u64, seed: u64) -> Fetcher {
        Fetcher {
            feed: None,
            ..Fetcher::new(config, now_ms, seed)
        }
    }

    /// The feed's fetcher of [`Fetcher::new`] alone, without the JWKS one.
    pub fn feed_only(config: &Config, now_ms: u64, seed: u64) -> Fetcher {
        Fetcher {
            jwks: None,
            ..Fetcher::new(config, now_ms, seed)
        }
    }

    /// Whether call `id` is one this fetcher is waiting for.
    pub fn owns(&self, id: u64) -> bool {
        let token = token(id);
        let jwks = self.jwks.as_ref().map(|(_, schedule)| schedule);
        let feed = self.feed.as_ref().map(|(_, schedule)| schedule);
        jwks.into_iter()
            .chain(feed)
            .any(|schedule| schedule.is_current(token))
    }

    /// Whether there is anything to fetch (else no tick is needed).
    pub fn fetches(&self) -> bool {
        self.jwks.is_some() || self.feed.is_some()
    }

    /// The earliest a JWKS refetch an unknown `kid` asks for can go out
    /// ([`Schedule::hurry`]): `min_refetch_seconds` after the last fetch started, or a failed
    /// fetch's backoff; `u64::MAX` while a fetch is out (its answer brings a tick) or the keys
    /// are inline.
    pub fn jwks_refetch_not_before_ms(&self) -> u64 {
        let Some((remote, schedule)) = self.jwks.as_ref() else {
            return u64::MAX;
        };
        match schedule.phase() {
            FetchPhase::InFlight { .. } => u64::MAX,
            FetchPhase::Idle { next_ms } if schedule.failures() > 0 => next_ms,
            FetchPhase::Idle { next_ms } => {
                next_ms.min(schedule.last_started_ms().map_or(0, |last| {
                    last.saturating_add(remote.min_refetch_seconds.saturating_mul(1000))
                }))
            }
        }
    }

    /// When a tick next has a call to dispatch or give up ([`Schedule::next_tick_ms`]);
    /// `u64::MAX` when it fetches nothing. While a feed poll is out, its answer brings a tick
    /// within the feed's wait, so a JWKS refresh falling due meanwhile is left to that tick
    /// (a refetch an unknown `kid` asked for is not): with the feed healthy, nothing calls
    /// for a tick of its own. (Pruning and the gauges wait for any tick.)
    pub fn next_tick_ms(&self) -> u64 {
        let feed = self.feed.as_ref().map(|(_, schedule)| schedule);
        let polling =
            feed.is_some_and(|schedule| matches!(schedule.phase(), FetchPhase::InFlight { .. }));
        let jwks = self
            .jwks
            .as_ref()
            .map(|(_, schedule)| schedule)
            // Only a healthy refresh waits: a retry after a failed fetch (the keys may not be
            // loaded at all: every token refused meanwhile) keeps its backoff.
            .filter(|schedule| {
                !(polling
                    && !self.jwks_wanted
                    && schedule.failures() == 0
                    && matches!(schedule.phase(), FetchPhase::Idle { .. }))
            });
        jwks.into_iter()
            .chain(feed)
            .map(Schedule::next_tick_ms)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Polls the feed from the published set's seq rather than for a full set first: the set
    /// was taken over from another fetcher of the same feed (the native build, a configuration
    /// update). The first poll asks without wait: the set's age runs from the last answer the
    /// fetcher before got, up to a whole wait ago, and a held poll would add another (up to
    /// twice `wait_seconds` in all, past a `stale_after_seconds` the configuration allows:
    /// every request 503 `revocation_stale` meanwhile); its answer, at once, renews the age.
    pub fn resume(&mut self) {
        self.full_pending = false;
        self.resumed = true;
    }

    /// Starts over as a new fetcher (the wasm build: this VM took the lease, or lost it): no
    /// call in flight, the next poll asks for a full set, a load under way is dropped.
    pub fn restart(&mut self, now_ms: u64) {
        for schedule in self.schedules() {
            schedule.reset(now_ms);
        }
        self.full_pending = true;
        self.resumed = false;
        self.staging.abandon();
    }

    /// Starts over after a fault of its own (a panic caught while it worked): as
    /// [`Self::restart`], but each call waits its backoff, counted as one more failure — a
    /// fault that repeats on the same answer must not become a full load on every tick.
    pub fn restart_after_fault(&mut self, now_ms: u64) {
        for schedule in self.schedules() {
            schedule.give_up(now_ms);
        }
        self.full_pending = true;
        self.staging.abandon();
    }

    /// Forgets the call `id` if it is one of ours, unanswered (the wasm build: the answer came
    /// after this VM lost the lease; the new fetcher has its own call).
    pub fn drop_call(&mut self, id: u64, now_ms: u64) {
        let token = token(id);
        for schedule in self.schedules() {
            if schedule.is_current(token) {
                schedule.reset(now_ms);
            }
        }
    }

    fn schedules(&mut self) -> impl Iterator<Item = &mut Schedule> {
        let jwks = self.jwks.as_mut().map(|(_, schedule)| schedule);
        let feed = self.feed.as_mut().map(|(_, schedule)| schedule);
        jwks.into_iter().chain(feed)
    }

    /// One tick: expire calls, dispatch what is due, publish a load the feed stopped sending,
    /// prune.
    pub fn tick(
        &mut self,
        publish: &mut impl Publish,
        call: &mut impl IssuerCall,
        report: &impl Report,
        now: Now,
    ) {
        self.drive_jwks(&*publish, call, report, now.mono_ms);
        self.drive_feed(&*publish, call, report, now.mono_ms);
        self.prune(publish, now);
    }

    fn drive_jwks(
        &mut self,
        publish: &impl Publish,
        call: &mut impl IssuerCall,
        report: &impl Report,
        now_ms: u64,
    ) {
        let Some((remote, schedule)) = self.jwks.as_mut() else {
            return;
        };
        if schedule.expire(now_ms) {
            report.count("jwks_fetch_fail");
        }
        let wanted = publish.jwks_wanted_ms();
        let unanswered = |schedule: &Schedule| {
            wanted > 0 && schedule.last_started_ms().is_none_or(|last| wanted > last)
        };
        if unanswered(schedule) {
            schedule.hurry(now_ms, remote.min_refetch_seconds.saturating_mul(1000));
        }
        self.jwks_wanted = unanswered(schedule) && !schedule.due(now_ms);
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

    /// The `since` of the next feed poll: 0 for a new fetcher (it starts from a full set,
    /// whatever a previous one left), else the seq of the set being loaded or published.
    fn since(&self, publish: &impl Publish) -> u64 {
        if self.full_pending {
            0
        } else if let Some(seq) = self.staging.seq() {
            seq
        } else {
            publish.published().map_or(0, |published| published.seq)
        }
    }

    /// How long the next feed poll asks the issuer to hold it: the configured `wait_seconds`,
    /// but 0 while a paged set is loading — the issuer then answers at once, with the next page
    /// or with nothing when the last full page ended the set, so a load always ends on an
    /// answer and never on a guess ([`Staging`]) — and for the first poll after a take-over
    /// ([`Self::resume`]).
    fn poll_wait_seconds(&self) -> u64 {
        match &self.feed {
            Some(_) if self.prompt() => 0,
            Some((feed, _)) => feed.wait_seconds,
            None => 0,
        }
    }

    /// Whether the next feed poll asks without wait ([`Self::poll_wait_seconds`]) — a page of
    /// a load, or the first poll after a take-over — so that the held poll follows its answer
    /// at once.
    fn prompt(&self) -> bool {
        self.staging.is_loading() || self.resumed
    }

    fn drive_feed(
        &mut self,
        publish: &impl Publish,
        call: &mut impl IssuerCall,
        report: &impl Report,
        now_ms: u64,
    ) {
        let since = self.since(publish);
        let wait = self.poll_wait_seconds();
        let Some((feed, schedule)) = self.feed.as_mut() else {
            return;
        };
        if schedule.expire(now_ms) {
            report.count("feed_fetch_fail");
        }
        if !schedule.due(now_ms) {
            return;
        }
        let path = format!("{}?since={since}&wait={wait}", feed.path);
        let authorization = format!("Bearer {}", feed.credential);
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", feed.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("accept", "application/json"),
        ];
        let timeout = wait
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

    /// A call's answer: `status` 0 when the call failed without a response; the body in the
    /// pieces the host hands over (the chunks of Envoy's buffer in the native build) — a feed
    /// answer is read from them as they are, without a joined copy (a 50 000-entry page is
    /// about 4 MB).
    #[allow(clippy::too_many_arguments)]
    pub fn on_response(
        &mut self,
        publish: &mut impl Publish,
        call: &mut impl IssuerCall,
        report: &impl Report,
        id: u64,
        status: u32,
        body: &[&[u8]],
        now: Now,
    ) {
        let token = token(id);
        let is = |fetch: Option<&Schedule>| fetch.is_some_and(|s| s.is_current(token));
        if is(self.jwks.as_ref().map(|(_, s)| s)) {
            self.on_jwks_response(publish, report, token, status, &body.concat(), now.mono_ms);
        } else if is(self.feed.as_ref().map(|(_, s)| s)) {
            self.on_feed_response(publish, report, token, status, body, now);
            // Keep the long poll open without a gap: a revocation made right after this answer
            // is not held back by up to a tick.
            self.drive_feed(&*publish, call, report, now.mono_ms);
        } else {
            report.log(
                Level::Debug,
                &format!("dropping a stale call response (id {id})"),
            );
        }
    }

    fn on_jwks_response(
        &mut self,
        publish: &mut impl Publish,
        report: &impl Report,
        token: u32,
        status: u32,
        body: &[u8],
        now_ms: u64,
    ) {
        let Some((remote, schedule)) = self.jwks.as_mut() else {
            return;
        };
        let parsed = (status == 200)
            .then(|| KeySet::public_from_jwks_json(body).ok())
            .flatten()
            .filter(|(keys, _)| !keys.is_empty());
        let outcome = match parsed {
            Some((keys, skipped)) => {
                report.count("jwks_fetch_ok");
                report.gauge("jwks_keys", keys.len() as u64);
                for (kid, err) in &skipped {
                    report.log(
                        Level::Debug,
                        &format!(
                            "JWKS key {} skipped: {err}",
                            kid.as_deref().unwrap_or("(no kid)")
                        ),
                    );
                }
                let count = keys.len();
                let refused = keys_outside(&keys, &self.algorithms);
                if let Some(generation) = publish.publish_jwks(body, keys, now_ms) {
                    report.log(
                        Level::Info,
                        &format!("JWKS generation {generation} published: {count} key(s)"),
                    );
                    // The issuer publishes a key for WEAUTH_KEY_PUBLISH_DELAY before it signs:
                    // said now, before its tokens start being refused (a change of the
                    // issuer's algorithm the configuration does not follow).
                    if !refused.is_empty() {
                        report.log(
                            Level::Warn,
                            &format!(
                                "JWKS key(s) {} of an algorithm `algorithms` does not allow: every token they sign will be refused (alg_not_allowed); add the algorithm before the issuer signs with them",
                                refused.join(", ")
                            ),
                        );
                    }
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
        schedule.finish(token, now_ms, outcome);
    }

    fn on_feed_response(
        &mut self,
        publish: &mut impl Publish,
        report: &impl Report,
        token: u32,
        status: u32,
        body: &[&[u8]],
        now: Now,
    ) {
        let now_ms = now.mono_ms;
        let parsed = if status == 200 {
            match body {
                [whole] => FeedPage::parse(whole),
                pieces => FeedPage::parse_chunks(pieces),
            }
            .map_err(|err| format!("unreadable body: {err}"))
        } else {
            Err(format!("HTTP status {status}"))
        };
        // What the answered poll asked with, before the answer moves it.
        let since = self.since(&*publish);
        let wait_ms = self.poll_wait_seconds().saturating_mul(1000);
        let prompt = self.prompt();
        let Some((feed, schedule)) = self.feed.as_ref() else {
            return;
        };
        let started_ms = schedule.last_started_ms();
        let outcome = match parsed {
            Ok(page) => {
                report.count("feed_fetch_ok");
                let elapsed_ms = started_ms.map_or(0, |started| now_ms.saturating_sub(started));
                self.full_pending = false;
                self.resumed = false;
                let seq = page.seq;
                let full_page = refresh::is_full_page(page.entries);
                let restarted_again = page.full
                    && since != 0
                    && self
                        .last_restart_ms
                        .replace(now.mono_ms)
                        .is_some_and(|last| {
                            now.mono_ms.saturating_sub(last) < refresh::RESTART_WINDOW_MS
                        });
                self.apply(publish, report, page, now);
                self.seed = self
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(now.unix_ms);
                let next = refresh::next_feed_poll(
                    since,
                    seq,
                    elapsed_ms,
                    (!prompt).then_some(wait_ms),
                    self.seed,
                    full_page,
                    restarted_again,
                );
                if let NextPoll::Floor(ms) = next {
                    report.count("feed_poll_floored");
                    report.log(
                        Level::Debug,
                        &format!(
                            "revocation feed answered without news after {elapsed_ms} ms \
                             (asked to hold {} s): next poll in {ms} ms",
                            wait_ms / 1000
                        ),
                    );
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
        if let Some((_, schedule)) = self.feed.as_mut() {
            schedule.finish(token, now_ms, outcome);
        }
    }

    /// Applies a feed answer to the set being loaded or else to the published set, then
    /// publishes what changed — unless the answer is a full page, after which the set stays
    /// aside until the load ends (module docs). An answer without news only moves `last_ok_ms`.
    fn apply(
        &mut self,
        publish: &mut impl Publish,
        report: &impl Report,
        page: FeedPage,
        now: Now,
    ) {
        let first = publish.published().is_none();
        let entries = page.entries;
        let more = refresh::is_full_page(entries);
        // A load starts aside from a copy of the published set; a single answer changes it.
        let (mut set, aside) = match self.staging.take() {
            Some(set) => (set, true),
            None if more => (publish.copy_set(), true),
            None => (publish.take_set(), false),
        };
        let held_seq = set.seq;
        let (seq, full) = (page.seq, page.full);
        let applied = match set.apply_page(page, self.cutoff(now.unix_ms)) {
            Ok(applied) => applied,
            Err(err) => {
                report.log(Level::Warn, &err.to_string());
                if !aside {
                    publish.restore_set(set);
                }
                // The issuer lost state: start over from a full set (a load under way is
                // dropped; the published set stays until the new one is in).
                self.staging.abandon();
                self.full_pending = true;
                return;
            }
        };
        if applied.skipped > 0 {
            report.log(
                Level::Debug,
                &format!(
                    "{} revocation entries skipped (expired or malformed)",
                    applied.skipped
                ),
            );
        }
        if first || seq != held_seq {
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
        if !aside {
            publish.publish_set(set, &applied.changed, now.mono_ms);
        } else if let Some(set) = self.staging.page_applied(set, entries) {
            publish_loaded(publish, set, now.mono_ms);
        }
    }

    /// The `now` the set judges entries by, from the wall clock tokens are judged by
    /// (`unix_ms`): an entry whose `until` is before it is dropped.
    fn cutoff(&self, unix_ms: u64) -> i64 {
        seconds(unix_ms).saturating_sub(self.keep_past_until_s)
    }

    /// Every [`PRUNE_EVERY_MS`] on the fetcher's clock, drops the entries expired by the wall
    /// clock.
    fn prune(&mut self, publish: &mut impl Publish, now: Now) {
        let now_ms = now.mono_ms;
        if self.feed.is_none() || now_ms.saturating_sub(self.last_prune_ms) < PRUNE_EVERY_MS {
            return;
        }
        self.last_prune_ms = now_ms;
        // Only a published set is pruned; its last_ok time is kept as it is.
        let Some(published) = publish.published() else {
            return;
        };
        // Only a shard with an expired entry is written (and, where shared, copied).
        let mut set = publish.take_set();
        let changed = set.prune(self.cutoff(now.unix_ms));
        if changed.is_empty() {
            publish.restore_set(set);
        } else {
            publish.publish_set(set, &changed, published.last_ok_ms);
        }
    }
}

/// The keys of `keys` whose algorithm is not in `allowed`, as `kid (alg)`.
fn keys_outside(keys: &KeySet, allowed: &[Algorithm]) -> Vec<String> {
    keys.kids()
        .filter_map(|kid| {
            let alg = keys.get(kid)?.algorithm();
            (!allowed.contains(&alg)).then(|| format!("{kid} ({})", alg.as_str()))
        })
        .collect()
}

/// A set loaded aside replaces the published one: every shard may differ from it.
fn publish_loaded(publish: &mut impl Publish, set: RevocationSet, last_ok_ms: u64) {
    let all: Vec<usize> = (0..SHARDS).collect();
    publish.publish_set(set, &all, last_ok_ms);
}

/// Reports the published set's size and age, and says when it turns stale or fresh again —
/// kept apart from the fetcher because in the wasm build every VM reports its own copy.
#[derive(Debug, Default)]
pub struct StaleWatch {
    was_stale: Option<bool>,
    /// When this configuration first reported (its start).
    since_ms: Option<u64>,
}

impl StaleWatch {
    /// Gauges `revocation_entries` and `revocation_age_seconds`, and one log line per change,
    /// at `now_ms` on the fetcher's clock (module docs).
    /// With no set yet the age counts from the configuration's start: an edge that never
    /// reached the feed (a wrong credential, a cluster it cannot reach) reports its growing
    /// age, which the staleness alerts see, not 0 — "fresh".
    pub fn observe(
        &mut self,
        feed: &RevocationConfig,
        published: Option<Published>,
        report: &impl Report,
        now_ms: u64,
    ) {
        let since_ms = *self.since_ms.get_or_insert(now_ms);
        let age_ms = published.map(|p| now_ms.saturating_sub(p.last_ok_ms));
        report.gauge(
            "revocation_entries",
            published.map_or(0, |p| p.entries as u64),
        );
        let reported_ms = age_ms.unwrap_or_else(|| now_ms.saturating_sub(since_ms));
        report.gauge("revocation_age_seconds", reported_ms / 1000);
        let stale = age_ms.is_none_or(|age| age > feed.stale_after_seconds.saturating_mul(1000));
        if self.was_stale == Some(stale) {
            return;
        }
        if stale && self.was_stale.is_some() {
            report.log(
                Level::Warn,
                &format!(
                    "revocation list is stale (feed not reached for over {} s); stale_mode={:?}",
                    feed.stale_after_seconds, feed.stale_mode
                ),
            );
        } else if let (false, Some(published)) = (stale, published) {
            report.log(
                Level::Info,
                &format!(
                    "revocation list is fresh: seq {}, {} entries",
                    published.seq, published.entries
                ),
            );
        }
        self.was_stale = Some(stale);
    }
}

/// A call id as the schedule's token (the wasm build's are u32; the native ABI's count up
/// from 1 per configuration).
fn token(id: u64) -> u32 {
    (id % u64::from(u32::MAX)) as u32
}

fn seconds(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

/// Test doubles shared with the native build's tests: a scripted issuer, a report that keeps
/// what it is told, feed answers.
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::RefCell;

    use weauth_token::{Algorithm, Jwks, SigningKey};

    use crate::config::Config;
    use crate::host::{DispatchError, IssuerCall, Level, Now, Report};

    pub const NOW: u64 = 1_700_000_000_000;

    /// Both clocks at `ms` ([`Now::wall`]); a test of a step of the wall clock builds its own
    /// [`Now`] (or reads a [`crate::host::WasmClock`]).
    pub fn at(ms: u64) -> Now {
        Now::wall(ms)
    }

    /// Records every call; call ids count from 1.
    #[derive(Default)]
    pub struct ScriptedIssuer {
        pub calls: Vec<(String, Vec<(String, String)>)>,
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
        /// The `:path` of call `id`.
        pub fn path(&self, id: u64) -> String {
            self.calls[(id - 1) as usize]
                .1
                .iter()
                .find(|(n, _)| n == ":path")
                .map(|(_, v)| v.clone())
                .unwrap()
        }
    }

    /// Log lines as they are, counters as `count <name>`, gauges as `gauge <name> <value>`.
    #[derive(Default)]
    pub struct Log(pub RefCell<Vec<String>>);

    impl Report for Log {
        fn log(&self, _level: Level, message: &str) {
            self.0.borrow_mut().push(message.to_string());
        }
        fn count(&self, name: &'static str) {
            self.0.borrow_mut().push(format!("count {name}"));
        }
        fn gauge(&self, name: &'static str, value: u64) {
            self.0.borrow_mut().push(format!("gauge {name} {value}"));
        }
    }

    impl Log {
        pub fn has(&self, line: &str) -> bool {
            self.0.borrow().iter().any(|l| l == line)
        }
    }

    pub fn jwks_json() -> String {
        let key = SigningKey::from_seed(Algorithm::EdDSA, &[7u8; 32]).unwrap();
        serde_json::to_string(&Jwks {
            keys: vec![key.jwk()],
        })
        .unwrap()
    }

    pub fn remote_config() -> Config {
        Config::parse(
            br#"{"issuer":"https://issuer","audiences":["weauth"],
                 "jwks":{"cluster":"weauth_issuer"},
                 "revocation":{"cluster":"weauth_issuer","credential":"feed-secret"}}"#,
        )
        .unwrap()
    }

    /// A feed answer of `count` jti entries `j{from}`.., ending at seq `from + count - 1`, each
    /// live until `until` (unix seconds).
    pub fn page_body_until(from: u64, count: u64, full: bool, until: u64) -> Vec<u8> {
        let entries: Vec<String> = (from..from + count)
            .map(|i| format!(r#"{{"seq":{i},"kind":"jti","value":"j{i}","until":{until}}}"#))
            .collect();
        format!(
            r#"{{"seq":{},"full":{full},"now":1700000000,"entries":[{}]}}"#,
            from + count - 1,
            entries.join(",")
        )
        .into_bytes()
    }

    /// [`page_body_until`] 15 minutes after [`NOW`].
    pub fn page_body(from: u64, count: u64, full: bool) -> Vec<u8> {
        page_body_until(from, count, full, 1_700_000_900)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{
        at, jwks_json, page_body, page_body_until, remote_config, Log, ScriptedIssuer, NOW,
    };
    use super::*;
    use crate::host::WasmClock;
    use crate::refresh::FEED_PAGE_ENTRIES;
    use weauth_token::{Jwks, SigningKey};

    /// A store that lends its set out, as the wasm build's does (the fetcher VM's own copy is
    /// taken, changed in place and put back): a set lent and never given back is lost.
    #[derive(Default)]
    struct Lending {
        set: RevocationSet,
        last_ok_ms: Option<u64>,
        lent: bool,
        /// Each publication: the shards it said changed, and its `last_ok_ms`.
        publications: Vec<(Vec<usize>, u64)>,
        wanted_ms: u64,
    }

    impl Publish for Lending {
        fn jwks_wanted_ms(&self) -> u64 {
            self.wanted_ms
        }
        fn publish_jwks(&mut self, _json: &[u8], _keys: KeySet, _now_ms: u64) -> Option<u64> {
            Some(1)
        }
        fn published(&self) -> Option<Published> {
            assert!(!self.lent, "read while the set is lent out");
            self.last_ok_ms.map(|last_ok_ms| Published {
                seq: self.set.seq,
                entries: self.set.len(),
                last_ok_ms,
            })
        }
        fn take_set(&mut self) -> RevocationSet {
            assert!(!self.lent, "lent twice");
            self.lent = true;
            std::mem::take(&mut self.set)
        }
        fn copy_set(&self) -> RevocationSet {
            self.set.clone()
        }
        fn restore_set(&mut self, set: RevocationSet) {
            assert!(self.lent, "given back unlent");
            self.lent = false;
            self.set = set;
        }
        fn publish_set(&mut self, set: RevocationSet, changed: &[usize], last_ok_ms: u64) {
            self.lent = false;
            self.set = set;
            self.last_ok_ms = Some(last_ok_ms);
            self.publications.push((changed.to_vec(), last_ok_ms));
        }
    }

    /// A fetcher with its store, issuer and report.
    struct Rig {
        fetcher: Fetcher,
        store: Lending,
        issuer: ScriptedIssuer,
        log: Log,
    }

    impl Rig {
        /// A fetcher that asked for a full set (call 2), with its JWKS call (1) out.
        fn polling() -> Rig {
            let mut rig = Rig {
                fetcher: Fetcher::new(&remote_config(), NOW, 1),
                store: Lending::default(),
                issuer: ScriptedIssuer::default(),
                log: Log::default(),
            };
            rig.tick(NOW);
            assert_eq!(rig.issuer.calls.len(), 2);
            rig
        }

        fn tick(&mut self, now_ms: u64) {
            self.tick_at(at(now_ms));
        }

        fn tick_at(&mut self, now: Now) {
            let Rig {
                fetcher,
                store,
                issuer,
                log,
            } = self;
            fetcher.tick(store, issuer, log, now);
        }

        /// Answers call `id` with 200 and `body`.
        fn answer_call(&mut self, id: u64, body: &[u8], now_ms: u64) {
            self.answer_call_at(id, body, at(now_ms));
        }

        fn answer_call_at(&mut self, id: u64, body: &[u8], now: Now) {
            let Rig {
                fetcher,
                store,
                issuer,
                log,
            } = self;
            fetcher.on_response(store, issuer, log, id, 200, &[body], now);
            assert!(!store.lent, "the set was not given back");
        }

        /// Answers the last call.
        fn answer(&mut self, body: &[u8], now_ms: u64) {
            self.answer_call(self.issuer.calls.len() as u64, body, now_ms);
        }

        fn publications(&self) -> usize {
            self.store.publications.len()
        }
    }

    #[test]
    fn an_answer_that_cannot_be_applied_gives_the_set_back_unpublished() {
        let mut rig = Rig::polling();
        rig.answer(&page_body(1, 10, true), NOW);
        assert_eq!(rig.publications(), 1);
        // The issuer went back to seq 3: it lost state.
        rig.answer(
            br#"{"seq":3,"full":false,"now":1700000000,"entries":[]}"#,
            NOW + 10,
        );
        assert_eq!(rig.store.set.len(), 10, "the published set is kept");
        assert_eq!(rig.publications(), 1, "nothing published");
        assert!(
            rig.issuer.path(4).contains("since=0"),
            "{}",
            rig.issuer.path(4)
        );
    }

    /// A fetcher taking over a published set (a configuration update, the wasm lease handed
    /// on) asks first without wait: held for its whole wait, the poll's answer came up to twice
    /// `wait_seconds` after the last the fetcher before got, and the set went stale meanwhile.
    /// Its answer moves the set's age at once, and the held polls follow.
    #[test]
    fn a_set_taken_over_is_polled_without_wait_first() {
        let mut rig = Rig::polling();
        rig.answer(&page_body(1, 10, true), NOW);
        let mut taker = Fetcher::new(&remote_config(), NOW + 15_000, 2);
        taker.resume();
        rig.fetcher = taker;
        let feed_calls = |rig: &Rig| -> Vec<u64> {
            (1..=rig.issuer.calls.len() as u64)
                .filter(|&id| rig.issuer.path(id).starts_with("/v1/revocations"))
                .collect()
        };
        let before = feed_calls(&rig).len();
        rig.tick(NOW + 15_000);
        let calls = feed_calls(&rig);
        assert_eq!(calls.len(), before + 1);
        let first = *calls.last().unwrap();
        assert!(
            rig.issuer.path(first).ends_with("since=10&wait=0"),
            "{}",
            rig.issuer.path(first)
        );
        rig.answer_call(
            first,
            br#"{"seq":10,"full":false,"now":1700000015,"entries":[]}"#,
            NOW + 15_050,
        );
        assert_eq!(rig.store.publications.last(), Some(&(vec![], NOW + 15_050)));
        rig.tick(NOW + 15_100);
        let next = *feed_calls(&rig).last().unwrap();
        assert_ne!(next, first, "the held poll follows at once");
        let path = rig.issuer.path(next);
        assert!(
            path.contains("since=10&wait=") && !path.ends_with("wait=0"),
            "{path}"
        );
        assert!(!rig.log.has("count feed_poll_floored"));
    }

    #[test]
    fn a_delta_without_news_publishes_no_shard_but_moves_last_ok() {
        let mut rig = Rig::polling();
        rig.answer(&page_body(1, 10, true), NOW);
        rig.answer(
            br#"{"seq":10,"full":false,"now":1700000000,"entries":[]}"#,
            NOW + 20_000,
        );
        assert_eq!(rig.store.publications.last(), Some(&(vec![], NOW + 20_000)));
        assert!(
            rig.issuer.path(4).contains("since=10"),
            "{}",
            rig.issuer.path(4)
        );
    }

    #[test]
    fn a_paged_load_leaves_the_published_set_to_its_readers_until_it_is_whole() {
        let mut rig = Rig::polling();
        rig.answer(&page_body(1, 1, true), NOW);
        // The issuer starts over with a set of more than a page.
        let page = FEED_PAGE_ENTRIES as u64;
        rig.answer(&page_body(1, page, true), NOW + 10);
        assert_eq!((rig.store.set.len(), rig.publications()), (1, 1));
        assert!(rig.issuer.path(4).contains(&format!("since={page}")));
        rig.answer(&page_body(page + 1, 5, false), NOW + 20);
        assert_eq!(rig.store.set.len(), FEED_PAGE_ENTRIES + 5);
        assert_eq!(
            rig.store.publications.last(),
            Some(&((0..SHARDS).collect(), NOW + 20)),
            "published once, every shard"
        );
    }

    /// An issuer that answers a load's next page with its first page again (its purge
    /// watermark past the page's end: the set starts over) is not asked again at once: each
    /// ask is a page of 50 000 entries fetched and parsed, and it would be asked for ever.
    #[test]
    fn a_full_page_sent_again_is_not_asked_for_again_at_once() {
        let mut rig = Rig::polling();
        let page = FEED_PAGE_ENTRIES as u64;
        rig.answer(&page_body(1, page, true), NOW);
        let calls = rig.issuer.calls.len();
        assert!(rig
            .issuer
            .path(calls as u64)
            .contains(&format!("since={page}")));
        rig.answer(&page_body(1, page, true), NOW + 10);
        assert_eq!(rig.issuer.calls.len(), calls, "asked again at once");
        rig.tick(NOW + 10 + refresh::FEED_FLOOR_MS - 1);
        assert_eq!(
            rig.issuer.calls.len(),
            calls,
            "asked again within the floor"
        );
        rig.tick(NOW + 10 + refresh::FEED_FLOOR_MS + refresh::FEED_FLOOR_JITTER_MS);
        assert_eq!(
            rig.issuer.calls.len(),
            calls + 1,
            "asked again after the floor"
        );
    }

    /// Whatever a misbehaving issuer (or whatever answers for it) sends, the feed is not asked
    /// in a loop: a minute of answers given at once — the same seq again (a proxy that does not
    /// hold long polls), a set starting over at the seq held, errors, garbage, two issuers on
    /// two stores behind one address answering in turn — makes at most about one poll a second.
    #[test]
    fn no_issuer_answer_makes_the_feed_polled_in_a_loop() {
        let held = page_body(1, 10, true);
        /// An answer: its HTTP status and body.
        type Answer = (u32, Vec<u8>);
        let cases: Vec<(&str, Vec<Answer>)> = vec![
            (
                "same seq, empty",
                vec![(
                    200,
                    br#"{"seq":10,"full":false,"now":1700000000,"entries":[]}"#.to_vec(),
                )],
            ),
            ("the same set again", vec![(200, page_body(1, 10, true))]),
            ("HTTP 503", vec![(503, b"busy".to_vec())]),
            ("garbage", vec![(200, b"<html>".to_vec())]),
            ("seq gone back", vec![(200, page_body(1, 3, true))]),
            (
                "two stores in turn",
                vec![(200, page_body(1, 10, true)), (200, page_body(1, 20, true))],
            ),
            (
                "two stores in turn, one answering a delta",
                vec![
                    (200, page_body(11, 10, false)),
                    (200, page_body(1, 10, true)),
                ],
            ),
        ];
        let mut loops = Vec::new();
        for (case, answers) in cases {
            let mut rig = Rig::polling();
            rig.answer_call(1, jwks_json().as_bytes(), NOW);
            rig.answer(&held, NOW);
            let is_feed = |rig: &Rig, id: u64| rig.issuer.path(id).starts_with("/v1/revocations");
            let mut answered = rig.issuer.calls.len() as u64;
            let mut polls = 0;
            let mut turn = 0;
            let mut now = NOW;
            while now < NOW + 60_000 && polls <= 1_000 {
                rig.tick(now);
                while answered < rig.issuer.calls.len() as u64 && polls <= 1_000 {
                    answered += 1;
                    if !is_feed(&rig, answered) {
                        rig.answer_call(answered, jwks_json().as_bytes(), now);
                        continue;
                    }
                    polls += 1;
                    let (status, body) = &answers[turn % answers.len()];
                    turn += 1;
                    let Rig {
                        fetcher,
                        store,
                        issuer,
                        log,
                    } = &mut rig;
                    fetcher.on_response(store, issuer, log, answered, *status, &[body], at(now));
                }
                now += 10;
            }
            if polls > 120 {
                loops.push(format!("{case}: {polls} polls in {} ms", now - NOW));
            }
        }
        assert!(loops.is_empty(), "{loops:#?}");
    }

    #[test]
    fn prune_publishes_only_the_shards_with_expired_entries_and_keeps_last_ok() {
        let mut rig = Rig::polling();
        // Past its `until` by 55 s: still kept, within the 60 s clock skew.
        rig.answer(&page_body_until(1, 1, true, NOW / 1000 - 55), NOW);
        rig.answer(&page_body(2, 1, false), NOW + 1);
        assert_eq!(rig.store.set.len(), 2);
        let published = rig.publications();
        rig.tick(NOW + 4_000);
        assert_eq!(rig.publications(), published, "not due yet");
        rig.tick(NOW + PRUNE_EVERY_MS);
        assert!(!rig.store.lent);
        let (changed, last_ok_ms) = rig.store.publications.last().unwrap().clone();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(
            last_ok_ms,
            NOW + 1,
            "a prune is not an answer from the feed"
        );
        assert_eq!(rig.store.set.len(), 1);
        // Nothing more to prune: the set is given back, nothing published.
        rig.tick(NOW + 2 * PRUNE_EVERY_MS);
        assert!(!rig.store.lent);
        assert_eq!(rig.publications(), published + 1);
    }

    #[test]
    fn a_fetcher_per_kind_fetches_only_its_own_and_owns_only_its_calls() {
        let config = remote_config();
        let mut issuer = ScriptedIssuer::default();
        let log = Log::default();
        let mut store = Lending::default();
        let mut jwks = Fetcher::jwks_only(&config, NOW, 1);
        let mut feed = Fetcher::feed_only(&config, NOW, 2);
        jwks.tick(&mut store, &mut issuer, &log, at(NOW));
        feed.tick(&mut store, &mut issuer, &log, at(NOW));
        assert_eq!(issuer.calls.len(), 2);
        assert_eq!(issuer.path(1), "/.well-known/jwks.json");
        assert!(issuer.path(2).starts_with("/v1/revocations?since=0"));
        assert!(jwks.owns(1) && !jwks.owns(2));
        assert!(feed.owns(2) && !feed.owns(1));
    }

    #[test]
    fn entries_kept_past_until_for_the_clock_skew_tokens_are_accepted_with() {
        // remote_config: clock_skew_seconds 60, the default. A token is accepted until its
        // exp + 60 s; its entry stays as long, whatever `until` the issuer gave it.
        let mut rig = Rig::polling();
        let now_s = NOW / 1000;
        let body = format!(
            r#"{{"seq":2,"full":true,"now":{now_s},"entries":[
                {{"seq":1,"kind":"jti","value":"j1","until":{}}},
                {{"seq":2,"kind":"jti","value":"j2","until":{}}}]}}"#,
            now_s - 30,
            now_s - 61
        );
        rig.answer(body.as_bytes(), NOW);
        assert_eq!(
            rig.store.set.len(),
            1,
            "61 s past until is past the skew: skipped"
        );
        rig.tick(NOW + PRUNE_EVERY_MS);
        assert_eq!(rig.store.set.len(), 1, "40 s past until: kept");
        rig.tick(NOW + 4 * PRUNE_EVERY_MS);
        assert_eq!(rig.store.set.len(), 0, "70 s past until: pruned");
    }

    /// Pruning runs every [`PRUNE_EVERY_MS`] on the fetcher's clock, and drops what the wall
    /// clock says has expired: a forward step of the wall clock prunes no sooner, and the
    /// entries go by the time tokens are judged by (kept longer, a revoked token would pass).
    #[test]
    fn prune_on_the_fetchers_schedule_by_the_wall_clocks_cutoff() {
        let mut rig = Rig::polling();
        // Live 10 minutes by the wall clock.
        rig.answer(&page_body_until(1, 1, true, NOW / 1000 + 600), NOW);
        let published = rig.publications();
        let stepped = |mono_ms: u64| Now {
            unix_ms: mono_ms + 3_600_000,
            mono_ms,
        };
        rig.tick_at(stepped(NOW + 4_000));
        assert_eq!(rig.publications(), published, "not due yet");
        rig.tick_at(stepped(NOW + PRUNE_EVERY_MS));
        assert_eq!(rig.store.set.len(), 0, "expired by the wall clock: pruned");
        let (_, last_ok_ms) = rig.store.publications.last().unwrap().clone();
        assert_eq!(last_ok_ms, NOW, "on the fetcher's clock");
    }

    /// A published key of an algorithm the configuration does not allow (the issuer changing
    /// `WEAUTH_SIGNING_ALG`, published before it signs) is warned of with its kid: its tokens
    /// would be refused as `alg_not_allowed` with nothing said before.
    #[test]
    fn a_published_key_outside_algorithms_is_warned_of() {
        let mut rig = Rig::polling();
        let es = SigningKey::from_seed(Algorithm::ES256, &[8u8; 32]).unwrap();
        let ed = SigningKey::from_seed(Algorithm::EdDSA, &[7u8; 32]).unwrap();
        let body = serde_json::to_string(&Jwks {
            keys: vec![ed.jwk(), es.jwk()],
        })
        .unwrap();
        rig.answer_call(1, body.as_bytes(), NOW);
        let warned: Vec<String> = rig
            .log
            .0
            .borrow()
            .iter()
            .filter(|line| line.contains("alg_not_allowed"))
            .cloned()
            .collect();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].contains(&format!("{} (ES256)", es.kid())),
            "{warned:?}"
        );
        assert!(!warned[0].contains(&ed.kid()), "{warned:?}");
        // The configuration's own algorithm only: nothing to say.
        let mut quiet = Rig::polling();
        quiet.answer_call(1, jwks_json().as_bytes(), NOW);
        assert!(!quiet
            .log
            .0
            .borrow()
            .iter()
            .any(|line| line.contains("alg_not_allowed")));
    }

    #[test]
    fn an_unknown_kid_hurries_the_jwks_fetch_no_sooner_than_min_refetch() {
        let mut rig = Rig::polling();
        let jwks_calls = |rig: &Rig| {
            (1..=rig.issuer.calls.len() as u64)
                .filter(|&id| rig.issuer.path(id) == "/.well-known/jwks.json")
                .count()
        };
        rig.answer_call(1, jwks_json().as_bytes(), NOW);
        rig.store.wanted_ms = NOW + 1_000;
        rig.tick(NOW + 1_000);
        assert_eq!(
            jwks_calls(&rig),
            1,
            "5 s since the last fetch have not passed"
        );
        rig.tick(NOW + 5_000);
        assert_eq!(jwks_calls(&rig), 2);
    }

    #[test]
    fn restart_asks_for_a_full_set_and_drops_the_call_out() {
        let mut rig = Rig::polling();
        rig.answer(&page_body(1, 10, true), NOW);
        rig.fetcher.restart(NOW + 10);
        rig.answer_call(3, &page_body(11, 1, false), NOW + 20);
        assert_eq!(
            rig.store.set.len(),
            10,
            "the answer to the old call is dropped"
        );
        rig.tick(NOW + 20);
        assert!(
            rig.issuer.path(5).contains("since=0"),
            "{}",
            rig.issuer.path(5)
        );
    }

    #[test]
    fn stale_watch_says_fresh_once_then_stale_once() {
        let feed = remote_config().revocation.unwrap();
        let mut watch = StaleWatch::default();
        let log = Log::default();
        let published = Some(Published {
            seq: 7,
            entries: 3,
            last_ok_ms: NOW,
        });
        watch.observe(&feed, None, &log, NOW);
        assert!(log.has("gauge revocation_entries 0"));
        // Never reached: the age counts from the start, not 0.
        watch.observe(&feed, None, &log, NOW + 90_000);
        assert!(log.has("gauge revocation_age_seconds 90"));
        watch.observe(&feed, published, &log, NOW + 1_000);
        watch.observe(&feed, published, &log, NOW + 2_000);
        assert!(log.has("gauge revocation_entries 3"));
        let fresh = log
            .0
            .borrow()
            .iter()
            .filter(|l| l.contains("is fresh: seq 7, 3 entries"))
            .count();
        assert_eq!(fresh, 1);
        let stale_at = NOW + feed.stale_after_seconds * 1000 + 1;
        watch.observe(&feed, published, &log, stale_at);
        watch.observe(&feed, published, &log, stale_at + 1_000);
        let stale = log
            .0
            .borrow()
            .iter()
            .filter(|l| l.contains("is stale"))
            .count();
        assert_eq!(stale, 1);
        assert!(log.has(&format!(
            "gauge revocation_age_seconds {}",
            feed.stale_after_seconds
        )));
    }

    /// The host's two clocks as a wasm VM reads them: the wall clock, which NTP or an operator
    /// may step, and Envoy's steady clock (ns since the host's boot), which never steps.
    struct Machine {
        unix_ms: u64,
        mono_ns: u64,
    }

    impl Machine {
        fn pass(&mut self, ms: u64) {
            self.unix_ms += ms;
            self.mono_ns += ms * 1_000_000;
        }

        fn step_wall(&mut self, by_ms: i64) {
            self.unix_ms = self.unix_ms.saturating_add_signed(by_ms);
        }
    }

    /// One wasm VM's root context as `root::Root` drives it (that glue is wasm32-only; this
    /// mirrors it over the pure parts it calls): both clocks read at each hook into its
    /// [`WasmClock`] (`Worker::read_clocks`), one round of [`refresh::lease_step`] per tick on
    /// a lease the VMs share (`Root::elect`), and a request's reading from the wall clock
    /// alone (`http`).
    struct WasmVm {
        id: u64,
        clock: WasmClock,
        asks: refresh::RefetchAsks,
    }

    impl WasmVm {
        fn configure(id: u64, machine: &Machine) -> WasmVm {
            WasmVm {
                id,
                clock: WasmClock::start(machine.unix_ms, Some(machine.mono_ns)),
                asks: refresh::RefetchAsks::default(),
            }
        }

        /// A tick or an issuer's answer.
        fn hook(&mut self, machine: &Machine) -> Now {
            self.clock.hook(machine.unix_ms, Some(machine.mono_ns))
        }

        /// `Root::elect` on the hook's reading.
        fn elect(&self, lease: &mut Option<refresh::Lease>, now: Now) -> bool {
            match refresh::lease_step(*lease, self.id, now.mono_ms, refresh::LEASE_MS) {
                refresh::LeaseStep::Renew(next) => {
                    *lease = Some(next);
                    true
                }
                refresh::LeaseStep::Claim(next) => {
                    *lease = Some(next);
                    false
                }
                refresh::LeaseStep::Follow => false,
            }
        }
    }

    /// Two wasm VMs of one Envoy, a day after the host's boot: `a` elected and fetching, `b`
    /// following.
    struct TwoVms {
        machine: Machine,
        a: WasmVm,
        b: WasmVm,
        lease: Option<refresh::Lease>,
        rig: Rig,
    }

    impl TwoVms {
        /// Configured with the wall clock `wall_off_ms` off the true time; two ticks (`a`
        /// claims, then takes up and dispatches call 1), and call 1 answered with `body`.
        fn elected(
            wall_off_ms: i64,
            fetcher: fn(&Config, u64, u64) -> Fetcher,
            body: &[u8],
        ) -> TwoVms {
            let machine = Machine {
                unix_ms: NOW.saturating_add_signed(wall_off_ms),
                mono_ns: 86_400_000 * 1_000_000,
            };
            let a = WasmVm::configure(1, &machine);
            let b = WasmVm::configure(2, &machine);
            let rig = Rig {
                fetcher: fetcher(&remote_config(), a.clock.now().mono_ms, a.id),
                store: Lending::default(),
                issuer: ScriptedIssuer::default(),
                log: Log::default(),
            };
            let mut vms = TwoVms {
                machine,
                a,
                b,
                lease: None,
                rig,
            };
            vms.tick();
            vms.tick();
            assert_eq!(vms.rig.issuer.calls.len(), 1, "the leader fetches");
            vms.machine.pass(40);
            vms.answer(1, body);
            vms
        }

        /// 100 ms on, a tick of both VMs: the follower must not take the lease, the leader
        /// drives its fetcher.
        fn tick(&mut self) {
            self.machine.pass(100);
            let at_a = self.a.hook(&self.machine);
            let at_b = self.b.hook(&self.machine);
            let leader = self.a.elect(&mut self.lease, at_a);
            assert!(
                !self.b.elect(&mut self.lease, at_b),
                "the follower took a live lease"
            );
            if leader {
                self.rig.tick_at(at_a);
            }
        }

        /// The leader's answer to call `id` (its clocks read at the hook).
        fn answer(&mut self, id: u64, body: &[u8]) {
            let now = self.a.hook(&self.machine);
            self.rig.answer_call_at(id, body, now);
        }

        /// A request on the follower met an unknown `kid` (`http`'s `want_jwks_refetch`,
        /// `Worker::want_jwks_refetch`): the hint written to shared data, if its limit let it.
        fn unknown_kid_on_b(&mut self) {
            let now = self.b.clock.request(self.machine.unix_ms);
            if self.b.asks.ask(now.mono_ms, 5_000) {
                self.rig.store.wanted_ms = now.mono_ms;
            }
        }

        fn jwks_calls(&self) -> usize {
            (1..=self.rig.issuer.calls.len() as u64)
                .filter(|&id| self.rig.issuer.path(id) == "/.well-known/jwks.json")
                .count()
        }
    }

    /// A wasm VM's wall clock steps an hour forward between two ticks (it booted an hour
    /// behind; NTP set it right): the follower finds the fetcher's lease live, and the fetcher
    /// renews it. On the wall clock every follower found it expired at once and took it.
    #[test]
    fn wasm_vms_wall_clock_forward_an_hour_the_lease_holder_stays_the_holder() {
        let mut vms = TwoVms::elected(-3_600_000, Fetcher::feed_only, &page_body(1, 1, true));
        vms.machine.pass(60);
        vms.machine.step_wall(3_600_000);
        let at_a = vms.a.hook(&vms.machine);
        let at_b = vms.b.hook(&vms.machine);
        // The follower first: ticks come in any order.
        assert!(!vms.b.elect(&mut vms.lease, at_b), "claimed a live lease");
        assert!(
            vms.a.elect(&mut vms.lease, at_a),
            "the holder lost its lease"
        );
        // The leader's poll goes on from where it was.
        vms.rig.tick_at(at_a);
        assert!(vms.rig.issuer.path(2).contains("since=1"));
    }

    /// The same step: the set published a moment ago is fresh in every VM, not an hour old
    /// (`stale_mode: deny` would answer every protected request 503 until the feed's next
    /// answer, up to `wait_seconds`).
    #[test]
    fn wasm_vms_wall_clock_forward_an_hour_the_set_is_not_stale() {
        let mut vms = TwoVms::elected(-3_600_000, Fetcher::feed_only, &page_body(1, 1, true));
        let feed = remote_config().revocation.unwrap();
        vms.machine.pass(60);
        vms.machine.step_wall(3_600_000);
        for vm in [&mut vms.a, &mut vms.b] {
            let log = Log::default();
            let now = vm.hook(&vms.machine);
            StaleWatch::default().observe(&feed, vms.rig.store.published(), &log, now.mono_ms);
            assert!(log.has("gauge revocation_age_seconds 0"), "{:?}", log.0);
            assert!(!log.0.borrow().iter().any(|l| l.contains("is stale")));
        }
    }

    /// A wasm VM's wall clock steps an hour back: the JWKS refresh keeps its period (300 s).
    /// On the wall clock it waited the hour too.
    #[test]
    fn wasm_vms_wall_clock_back_an_hour_the_jwks_refresh_keeps_its_period() {
        let mut vms = TwoVms::elected(3_600_000, Fetcher::jwks_only, jwks_json().as_bytes());
        vms.machine.step_wall(-3_600_000);
        // Answered at 240 ms: due at 300.24 s, the 3000th tick from then.
        for _ in 0..2_999 {
            vms.tick();
        }
        assert_eq!(vms.jwks_calls(), 1, "sooner than refresh_seconds");
        vms.tick();
        assert_eq!(vms.jwks_calls(), 2, "the refresh did not keep its period");
    }

    /// The same step: a token with an unknown `kid`, met by another VM just after, still
    /// brings a refetch `min_refetch_seconds` (5 s) after the last fetch started. On the wall
    /// clock the hint lay an hour before that fetch, taken as answered by it.
    #[test]
    fn wasm_vms_wall_clock_back_an_hour_an_unknown_kid_still_brings_a_refetch() {
        let mut vms = TwoVms::elected(3_600_000, Fetcher::jwks_only, jwks_json().as_bytes());
        vms.machine.step_wall(-3_600_000);
        vms.tick();
        vms.machine.pass(10);
        vms.unknown_kid_on_b();
        // The fetch started at 200 ms: the refetch is due at 5.2 s, the tick at 5.25 s.
        for _ in 0..48 {
            vms.tick();
        }
        assert_eq!(vms.jwks_calls(), 1, "sooner than min_refetch_seconds");
        vms.tick();
        assert_eq!(vms.jwks_calls(), 2, "no refetch for the unknown kid");
    }

    /// The same step with a leader that stops ticking (a trapped VM): the follower takes the
    /// fetching over after the lease's 2 s. On the wall clock the lease stayed "live" for the
    /// hour — no key refresh nor revocation reaching the edge meanwhile.
    #[test]
    fn wasm_vms_wall_clock_back_an_hour_a_trapped_leaders_lease_expires_on_time() {
        let mut vms = TwoVms::elected(3_600_000, Fetcher::feed_only, &page_body(1, 1, true));
        vms.tick();
        vms.machine.step_wall(-3_600_000);
        let mut took_over_ms = None;
        for ticks in 1..=30u64 {
            vms.machine.pass(100);
            let at_b = vms.b.hook(&vms.machine);
            if vms.b.elect(&mut vms.lease, at_b) {
                took_over_ms = Some(ticks * 100);
                break;
            }
        }
        // Claimed at the lease's expiry, taken up on the tick after.
        assert_eq!(took_over_ms, Some(refresh::LEASE_MS + 100));
    }
}
