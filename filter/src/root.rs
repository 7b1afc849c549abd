//! The root context (one per plugin per worker VM): configuration, the tick, the fetcher
//! election and the two fetchers. Thin glue over the pure modules, over `worker` (the shared
//! keys, state and syncs every VM has) and over `metrics`.
//!
//! Every 100 ms, in every VM: flush the batched counters; re-read the JWKS blob and the
//! revocation meta from shared data and decode only what changed (by CAS value and generation;
//! the `Worker` syncs); refresh the gauges; then take part in the lease election. The VM that
//! holds the lease dispatches the JWKS fetch (on its period, or sooner when a worker saw an
//! unknown `kid`) and keeps one long poll to the revocation feed open; it applies each answer
//! to its copy and publishes the changed shard blobs, then the meta. A set that arrives as
//! several pages is loaded aside ([`Staging`], as in the native build) and published once, so no
//! VM — the fetcher's own included — serves with a part of it. The SDK's own wrappers
//! are avoided where they would panic on an unexpected host status; `proxy_wasm::hostcalls`
//! results are handled instead.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};
use weauth_token::KeySet;

use crate::config::{Config, JwksSource, RemoteJwks, RevocationConfig};
use crate::host::Level;
use crate::metrics::Metrics;
use crate::refresh::{self, CallOutcome, LeaseStep, NextPoll, Schedule, Staging};
use crate::revocation::{FeedPage, Meta, Publication, RevocationSet, SHARDS};
use crate::wasm_host::{log, now_ms};
use crate::worker::{Keys, VmState, Worker};

/// How often every VM syncs from shared data (and the elected VM drives its fetchers).
const TICK: Duration = Duration::from_millis(100);
/// The tick until the VM holds its keys and a revocation set: the election takes two ticks
/// (claim, then take up) and each sync waits for one, so at 100 ms a new Envoy's first token
/// waited about 200 ms for ticks alone.
const FIRST_TICK: Duration = Duration::from_millis(10);
/// The fast first ticks end at the latest this long after the configuration (an issuer that
/// cannot be reached is retried on the fetchers' own backoff, not every 10 ms).
const FIRST_TICKS_MAX_MS: u64 = 2_000;
/// The fetcher lease's lifetime; renewed on every tick by its holder.
const LEASE_MS: u64 = 2_000;
/// Extra time given to a long poll beyond `wait_seconds` before Envoy times it out.
const FEED_TIMEOUT_MARGIN_MS: u64 = 5_000;
/// Largest response body read from the issuer.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How often the elected VM drops expired revocation entries.
const PRUNE_EVERY_MS: u64 = 10_000;

/// The root context.
pub struct Root {
    context_id: u32,
    /// Random per VM (std's RandomState seeds from WASI `random_get`).
    vm_id: u64,
    worker: Option<Rc<Worker>>,
    leader: bool,
    jwks_schedule: Option<Schedule>,
    feed_schedule: Option<Schedule>,
    last_prune_ms: u64,
    was_stale: Option<bool>,
    /// The next poll asks for a full set (`since=0`).
    full_pending: bool,
    /// A set being loaded page by page, not yet published (module docs).
    staging: Staging,
    /// When the configuration was applied, while the tick is still [`FIRST_TICK`].
    first_ticks_since_ms: Option<u64>,
}

impl Root {
    /// `proxy_wasm::set_root_context` constructor.
    pub fn create(context_id: u32) -> Box<dyn RootContext> {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(context_id);
        Box::new(Root {
            context_id,
            vm_id: hasher.finish(),
            worker: None,
            leader: false,
            jwks_schedule: None,
            feed_schedule: None,
            last_prune_ms: 0,
            was_stale: None,
            full_pending: true,
            staging: Staging::default(),
            first_ticks_since_ms: None,
        })
    }

    fn log(&self, level: Level, message: &str) {
        log(level, self.context_id, message);
    }

    fn fetches(&self) -> bool {
        self.jwks_schedule.is_some() || self.feed_schedule.is_some()
    }

    /// Back to the [`TICK`] once this VM holds keys and, with a feed, a revocation set (or
    /// [`FIRST_TICKS_MAX_MS`] after the configuration).
    fn end_first_ticks(&mut self, worker: &Worker, state: &VmState, now_ms: u64) {
        let Some(since_ms) = self.first_ticks_since_ms else {
            return;
        };
        let loaded = state.keys.is_some()
            && (worker.config.revocation.is_none() || state.replica.meta.is_some());
        if !loaded && now_ms.saturating_sub(since_ms) < FIRST_TICKS_MAX_MS {
            return;
        }
        if hostcalls::set_tick_period(TICK).is_ok() {
            self.first_ticks_since_ms = None;
        }
    }

    fn report_revocation(&mut self, worker: &Worker, state: &VmState, now_ms: u64) {
        let Some(feed) = &worker.config.revocation else {
            return;
        };
        let age_ms = state
            .replica
            .meta
            .as_ref()
            .map(|meta| now_ms.saturating_sub(meta.last_ok_ms));
        worker
            .metrics
            .gauge("revocation_entries", state.replica.set.len() as u64);
        worker
            .metrics
            .gauge("revocation_age_seconds", age_ms.map_or(0, |age| age / 1000));
        let stale = age_ms.is_none_or(|age| age > feed.stale_after_seconds.saturating_mul(1000));
        if self.was_stale != Some(stale) {
            if stale && self.was_stale.is_some() {
                self.log(
                    Level::Warn,
                    &format!(
                        "revocation list is stale (feed not reached for over {} s); stale_mode={:?}",
                        feed.stale_after_seconds, feed.stale_mode
                    ),
                );
            } else if !stale {
                self.log(
                    Level::Info,
                    &format!(
                        "revocation list is fresh: seq {}, {} entries",
                        state.replica.set.seq,
                        state.replica.set.len()
                    ),
                );
            }
            self.was_stale = Some(stale);
        }
    }

    /// One round of the election. Returns whether this VM is the fetcher now.
    fn elect(&self, worker: &Worker, now_ms: u64) -> bool {
        let Ok((bytes, cas)) = hostcalls::get_shared_data(&worker.keys.lease) else {
            return false;
        };
        let current = bytes.as_deref().and_then(refresh::Lease::decode);
        match refresh::lease_step(current, self.vm_id, now_ms, LEASE_MS) {
            LeaseStep::Renew(lease) => {
                hostcalls::set_shared_data(&worker.keys.lease, Some(&lease.encode()), cas).is_ok()
            }
            LeaseStep::Claim(lease) => {
                let _ = hostcalls::set_shared_data(&worker.keys.lease, Some(&lease.encode()), cas);
                false
            }
            LeaseStep::Follow => false,
        }
    }

    fn drive_jwks(&mut self, worker: &Worker, remote: &RemoteJwks, now_ms: u64) {
        let Some(schedule) = self.jwks_schedule.as_mut() else {
            return;
        };
        if schedule.expire(now_ms) {
            worker.metrics.count("jwks_fetch_fail");
        }
        if let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&worker.keys.jwks_wanted) {
            let wanted = bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            if schedule.last_started_ms().is_none_or(|last| wanted > last) {
                schedule.hurry(now_ms, remote.min_refetch_seconds.saturating_mul(1000));
            }
        }
        if !schedule.due(now_ms) {
            return;
        }
        let headers = vec![
            (":method", "GET"),
            (":path", remote.path.as_str()),
            (":authority", remote.authority.as_str()),
            ("accept", "application/json"),
        ];
        match hostcalls::dispatch_http_call(
            &remote.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(remote.timeout_ms),
        ) {
            Ok(token) => schedule.dispatched(token, now_ms),
            Err(status) => {
                schedule.dispatch_failed(now_ms);
                worker.metrics.count("jwks_fetch_fail");
                log(
                    Level::Warn,
                    self.context_id,
                    &format!(
                        "JWKS fetch could not be dispatched to cluster {}: {status:?}",
                        remote.cluster
                    ),
                );
            }
        }
    }

    /// The `since` of the next feed poll: 0 for a new fetcher (it starts from a full set and
    /// rewrites every shard under a fresh generation, whatever a previous fetcher left
    /// half-written), else the seq it holds.
    fn feed_since(&self, worker: &Worker) -> u64 {
        if self.full_pending {
            0
        } else if let Some(seq) = self.staging.seq() {
            seq
        } else {
            worker
                .state
                .try_borrow()
                .map_or(0, |state| state.replica.set.seq)
        }
    }

    fn drive_feed(&mut self, worker: &Worker, feed: &RevocationConfig, since: u64, now_ms: u64) {
        let Some(schedule) = self.feed_schedule.as_mut() else {
            return;
        };
        if schedule.expire(now_ms) {
            worker.metrics.count("feed_fetch_fail");
        }
        if !schedule.due(now_ms) {
            return;
        }
        let path = format!("{}?since={since}&wait={}", feed.path, feed.wait_seconds);
        let authorization = format!("Bearer {}", feed.credential);
        let headers = vec![
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
        match hostcalls::dispatch_http_call(
            &feed.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(timeout),
        ) {
            Ok(token) => schedule.dispatched(token, now_ms),
            Err(status) => {
                schedule.dispatch_failed(now_ms);
                worker.metrics.count("feed_fetch_fail");
                log(
                    Level::Warn,
                    self.context_id,
                    &format!(
                        "revocation poll could not be dispatched to cluster {}: {status:?}",
                        feed.cluster
                    ),
                );
            }
        }
    }

    fn prune(&mut self, worker: &Worker, now_ms: u64) {
        if worker.config.revocation.is_none()
            || now_ms.saturating_sub(self.last_prune_ms) < PRUNE_EVERY_MS
        {
            return;
        }
        self.last_prune_ms = now_ms;
        let Ok(mut state) = worker.state.try_borrow_mut() else {
            return;
        };
        // Only prune a loaded copy; its last_ok time is kept as it is.
        let Some(last_ok_ms) = state.replica.meta.as_ref().map(|meta| meta.last_ok_ms) else {
            return;
        };
        let changed = state.replica.set.prune(seconds(now_ms));
        if !changed.is_empty() {
            self.publish(worker, &mut state, &changed, last_ok_ms);
        }
    }

    fn write_publication(&self, worker: &Worker, publication: &Publication, set: &RevocationSet) {
        for (index, blob) in publication.blobs(set) {
            if hostcalls::set_shared_data(&worker.keys.shard(index), Some(&blob), None).is_err() {
                self.log(
                    Level::Warn,
                    &format!("could not write revocation shard {index}"),
                );
            }
        }
        if hostcalls::set_shared_data(&worker.keys.meta, Some(&publication.meta.encode()), None)
            .is_err()
        {
            self.log(Level::Warn, "could not write the revocation meta");
        }
        // Only the key's CAS (bumped by the host on every write) carries the version; an empty
        // value crosses the boundary without a memory callback.
        if hostcalls::set_shared_data(&worker.keys.meta_version, Some(&[]), None).is_err() {
            self.log(Level::Warn, "could not write the revocation meta version");
        }
    }

    /// The `:status` (0 when unknown) and body of the call's response. A call that Envoy reset
    /// (timeout, connection failure, response over its buffer limit) has no header map at all,
    /// and the SDK's `get_map_value` panics on the host's answer for a missing map — so the
    /// headers are only read when the host says there are some.
    fn response_status_and_body(num_headers: usize, body_size: usize) -> (u32, Vec<u8>) {
        if num_headers == 0 {
            return (0, Vec::new());
        }
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|status| status.parse().ok())
            .unwrap_or(0);
        let body = if body_size == 0 || body_size > MAX_BODY_BYTES {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        (status, body)
    }

    fn on_jwks_response(
        &mut self,
        worker: &Worker,
        token: u32,
        num_headers: usize,
        body_size: usize,
        now_ms: u64,
    ) {
        let (status, body) = Root::response_status_and_body(num_headers, body_size);
        let JwksSource::Remote(remote) = &worker.config.jwks else {
            return;
        };
        let parsed = (status == 200)
            .then(|| KeySet::from_jwks_json(&body).ok())
            .flatten()
            .filter(|(keys, _)| !keys.is_empty());
        let outcome = match parsed {
            Some((keys, skipped)) => {
                worker.metrics.count("jwks_fetch_ok");
                for (kid, err) in &skipped {
                    self.log(
                        Level::Debug,
                        &format!(
                            "JWKS key {} skipped: {err}",
                            kid.as_deref().unwrap_or("(no kid)")
                        ),
                    );
                }
                self.publish_jwks(worker, &body, keys.len(), now_ms);
                CallOutcome::Ok {
                    next_in_ms: remote.refresh_seconds.saturating_mul(1000),
                }
            }
            None => {
                worker.metrics.count("jwks_fetch_fail");
                self.log(
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
        if let Some(schedule) = self.jwks_schedule.as_mut() {
            schedule.finish(token, now_ms, outcome);
        }
    }

    fn publish_jwks(&self, worker: &Worker, json: &[u8], key_count: usize, now_ms: u64) {
        let previous = hostcalls::get_shared_data(&worker.keys.jwks)
            .ok()
            .and_then(|(bytes, _)| bytes);
        let previous = previous.as_deref().and_then(refresh::decode_jwks_blob);
        if previous.is_some_and(|blob| blob.json == json) {
            return; // unchanged: keep the generation, so cached verdicts stay valid
        }
        let generation = previous.map_or(0, |blob| blob.generation).saturating_add(1);
        let blob = refresh::encode_jwks_blob(generation, now_ms, json);
        if hostcalls::set_shared_data(&worker.keys.jwks, Some(&blob), None).is_err() {
            self.log(Level::Warn, "could not write the JWKS to shared data");
        } else {
            self.log(
                Level::Info,
                &format!("JWKS generation {generation} published: {key_count} key(s)"),
            );
        }
    }

    fn on_feed_response(
        &mut self,
        worker: &Worker,
        token: u32,
        num_headers: usize,
        body_size: usize,
        now_ms: u64,
    ) {
        let (status, body) = Root::response_status_and_body(num_headers, body_size);
        let Some(feed) = &worker.config.revocation else {
            return;
        };
        let parsed = if status == 200 {
            FeedPage::parse(&body).map_err(|err| format!("unreadable body: {err}"))
        } else {
            Err(format!("HTTP status {status}"))
        };
        let outcome = match parsed {
            Ok(response) => {
                worker.metrics.count("feed_fetch_ok");
                // What the answered poll asked with, before the answer moves it.
                let since = self.feed_since(worker);
                let elapsed_ms = self
                    .feed_schedule
                    .as_ref()
                    .and_then(Schedule::last_started_ms)
                    .map_or(0, |started| now_ms.saturating_sub(started));
                self.full_pending = false;
                let seq = response.seq;
                self.apply_feed(worker, response, elapsed_ms, now_ms);
                let next = refresh::next_feed_poll(
                    since,
                    seq,
                    elapsed_ms,
                    feed.wait_seconds.saturating_mul(1000),
                    self.vm_id
                        .wrapping_add(now_ms.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                );
                if let NextPoll::Floor(ms) = next {
                    worker.metrics.count("feed_poll_floored");
                    self.log(
                        Level::Debug,
                        &format!(
                            "revocation feed answered without news after {elapsed_ms} ms \
                             (asked to hold {} s): next poll in {ms} ms",
                            feed.wait_seconds
                        ),
                    );
                }
                CallOutcome::Ok {
                    next_in_ms: next.delay_ms(),
                }
            }
            Err(reason) => {
                worker.metrics.count("feed_fetch_fail");
                self.log(
                    Level::Warn,
                    &format!(
                        "revocation poll to cluster {} failed: {reason}",
                        feed.cluster
                    ),
                );
                CallOutcome::Failed
            }
        };
        if let Some(schedule) = self.feed_schedule.as_mut() {
            schedule.finish(token, now_ms, outcome);
        }
    }

    /// Applies an answer to the VM's copy and publishes the shards it changed — or, when the
    /// answer is a full page or a load is under way, to the set loaded aside, published whole
    /// when the load is over (here, or by [`Root::publish_staged_when_idle`]).
    fn apply_feed(&mut self, worker: &Worker, response: FeedPage, elapsed_ms: u64, now_ms: u64) {
        let Ok(mut state) = worker.state.try_borrow_mut() else {
            return;
        };
        let entries = response.entries;
        let more = refresh::is_full_page(entries);
        // A load starts aside from a copy of the VM's set (sharing its shards).
        let mut aside = self
            .staging
            .take()
            .or_else(|| more.then(|| state.replica.set.clone()));
        let first = state.replica.meta.is_none();
        let set = aside.as_mut().unwrap_or(&mut state.replica.set);
        let held_seq = set.seq;
        let (seq, full) = (response.seq, response.full);
        let changed = match set.apply_page(response, seconds(now_ms)) {
            Ok(applied) => {
                if applied.skipped > 0 {
                    self.log(
                        Level::Debug,
                        &format!(
                            "{} revocation entries skipped (expired or malformed)",
                            applied.skipped
                        ),
                    );
                }
                if first || seq != held_seq {
                    self.log(
                        Level::Info,
                        &format!(
                            "revocation feed seq {} applied ({}{}): {} entries, {} KiB",
                            seq,
                            if full { "full" } else { "delta" },
                            if more { ", more to come" } else { "" },
                            set.len(),
                            set.heap_bytes() / 1024
                        ),
                    );
                }
                applied.changed
            }
            Err(err) => {
                self.log(Level::Warn, &err.to_string());
                // The issuer lost state: start over from a full set (a load under way is
                // dropped; the published set stays until the new one is in).
                self.staging.abandon();
                self.full_pending = true;
                return;
            }
        };
        match aside {
            None => self.publish(worker, &mut state, &changed, now_ms),
            Some(set) => {
                if let Some(set) = self.staging.page_applied(set, entries, elapsed_ms) {
                    self.install_loaded(worker, &mut state, set, now_ms);
                }
            }
        }
    }

    /// Makes a set loaded aside the VM's copy and publishes every shard (the load may have
    /// changed any since the copy it started from).
    fn install_loaded(
        &self,
        worker: &Worker,
        state: &mut VmState,
        set: RevocationSet,
        last_ok_ms: u64,
    ) {
        state.replica.set = set;
        let all: Vec<usize> = (0..SHARDS).collect();
        self.publish(worker, state, &all, last_ok_ms);
    }

    /// Writes the `changed` shards of the VM's set and a new meta (fed at `last_ok_ms`).
    fn publish(&self, worker: &Worker, state: &mut VmState, changed: &[usize], last_ok_ms: u64) {
        // A full set that left every shard as it was still needs a first meta; publish()
        // creates it. Shards never written keep generation 0 = empty.
        let floor = shared_generation(worker);
        let publication = state.replica.publish(changed, last_ok_ms, floor);
        self.write_publication(worker, &publication, &state.replica.set);
        state.forget_meta_cas();
    }

    /// Publishes a set loaded aside once no page is on its way ([`Staging::finished_by_wait`]).
    fn publish_staged_when_idle(&mut self, worker: &Worker, now_ms: u64) {
        let phase = self.feed_schedule.as_ref().map(Schedule::phase);
        let Some(set) = self.staging.finished_by_wait(phase, now_ms) else {
            return;
        };
        let Ok(mut state) = worker.state.try_borrow_mut() else {
            return;
        };
        self.install_loaded(worker, &mut state, set, now_ms);
    }
}

/// The generation currently published (0 when none), so a new fetcher never reuses one.
fn shared_generation(worker: &Worker) -> u64 {
    hostcalls::get_shared_data(&worker.keys.meta)
        .ok()
        .and_then(|(bytes, _)| bytes)
        .and_then(|bytes| Meta::decode(&bytes).ok())
        .map_or(0, |meta| meta.generation)
}

fn seconds(ms: u64) -> i64 {
    i64::try_from(ms / 1000).unwrap_or(i64::MAX)
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = now_ms();
        let is_jwks = self
            .jwks_schedule
            .as_ref()
            .is_some_and(|s| s.is_current(token_id));
        let is_feed = self
            .feed_schedule
            .as_ref()
            .is_some_and(|s| s.is_current(token_id));
        if !self.leader {
            // Lost the lease while the call was out: drop it, the new fetcher has its own.
            for schedule in [self.jwks_schedule.as_mut(), self.feed_schedule.as_mut()]
                .into_iter()
                .flatten()
            {
                if schedule.is_current(token_id) {
                    schedule.reset(now);
                }
            }
            return;
        }
        if is_jwks {
            self.on_jwks_response(&worker, token_id, num_headers, body_size, now);
        } else if is_feed {
            self.on_feed_response(&worker, token_id, num_headers, body_size, now);
            // Keep the long poll open without a gap: dispatch the next one now (when the
            // schedule says it is due, i.e. after a success) rather than on the next tick, so a
            // revocation made right after this answer is not held back by up to a tick.
            if let Some(feed) = &worker.config.revocation {
                let since = self.feed_since(&worker);
                self.drive_feed(&worker, feed, since, now);
            }
        } else {
            self.log(
                Level::Debug,
                &format!("dropping a stale call response (token {token_id})"),
            );
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        // `revocation.credential_env` is read from the VM's environment: under WASI,
        // `std::env::var` sees what Envoy passes in `vm_config.environment_variables`.
        let config = match Config::parse_with_env(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(err) => {
                self.log(
                    Level::Error,
                    &format!("invalid plugin configuration: {err}"),
                );
                return false;
            }
        };
        let now = now_ms();
        let state = VmState::new(&config);
        self.jwks_schedule = match &config.jwks {
            JwksSource::Remote(remote) => Some(Schedule::new(
                now,
                1_000,
                remote.refresh_seconds.saturating_mul(1000).min(30_000),
                remote.timeout_ms.saturating_add(5_000),
            )),
            JwksSource::Inline(_) => None,
        };
        self.feed_schedule = config.revocation.as_ref().map(|feed| {
            Schedule::new(
                now,
                500,
                30_000,
                feed.wait_seconds
                    .saturating_mul(1000)
                    .saturating_add(2 * FEED_TIMEOUT_MARGIN_MS),
            )
        });
        let summary = format!("{}, vm {:016x}", config.summary(), self.vm_id);
        let metrics = Metrics::define();
        if let Some(keys) = &state.keys {
            metrics.gauge("jwks_keys", keys.len() as u64);
        }
        let keys = Keys::new(&config);
        // Allowed but weakening choices (a rule with the CSRF rule off where a cookie
        // authenticates): said at every load.
        for warning in &config.warnings {
            self.log(Level::Warn, &format!("plugin configuration: {warning}"));
        }
        self.worker = Some(Rc::new(Worker {
            config,
            metrics,
            keys,
            state: RefCell::new(state),
        }));
        self.leader = false;
        self.was_stale = None;
        // Inline keys and no feed: nothing to sync, no tick needed.
        if self.fetches() {
            if hostcalls::set_tick_period(FIRST_TICK).is_err() {
                self.log(Level::Error, "could not start the tick");
                return false;
            }
            self.first_ticks_since_ms = Some(now);
        }
        self.log(Level::Info, &summary);
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = now_ms();
        worker.metrics.flush();
        if let Ok(mut state) = worker.state.try_borrow_mut() {
            worker.sync_jwks(&mut state, self.context_id);
            let _ = worker.sync_revocation(&mut state, self.context_id);
            self.report_revocation(&worker, &state, now);
            self.end_first_ticks(&worker, &state, now);
        }
        if !self.fetches() {
            return;
        }
        let leader = self.elect(&worker, now);
        if leader != self.leader {
            self.log(
                Level::Info,
                if leader {
                    "this VM is now the JWKS/revocation fetcher"
                } else {
                    "this VM is no longer the fetcher"
                },
            );
            for schedule in [self.jwks_schedule.as_mut(), self.feed_schedule.as_mut()]
                .into_iter()
                .flatten()
            {
                schedule.reset(now);
            }
            self.leader = leader;
            self.full_pending = leader;
            self.staging.abandon();
        }
        if !leader {
            return;
        }
        if let JwksSource::Remote(remote) = &worker.config.jwks {
            self.drive_jwks(&worker, remote, now);
        }
        if let Some(feed) = &worker.config.revocation {
            let since = self.feed_since(&worker);
            self.drive_feed(&worker, feed, since, now);
        }
        self.publish_staged_when_idle(&worker, now);
        self.prune(&worker, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(crate::http::Filter::new(context_id, worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
