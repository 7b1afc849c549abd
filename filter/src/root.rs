//! The root context (one per plugin per worker VM): configuration, the tick and the fetcher
//! election. Thin glue over the pure modules, over `worker` (the shared keys, state and syncs
//! every VM has), over `metrics` and over the fetcher both builds share ([`fetch::Fetcher`]).
//!
//! Every 100 ms, in every VM: flush the batched counters; re-read the JWKS blob and the
//! revocation meta from shared data and decode only what changed (by CAS value and generation;
//! the `Worker` syncs); refresh the gauges; then take part in the lease elections, one per kind
//! of data (`keys`). The VM that holds a lease drives that kind's fetcher, which calls the issuer
//! through `dispatch_http_call` and publishes into shared data ([`SharedData`], its [`Publish`]
//! side here): the JWKS blob, or the changed revocation shard blobs, then the meta.
//! When its configuration goes, a VM hands on the leases it holds (the root's `Drop`), so the
//! fetching passes to a configuration left within a tick.
//!
//! Time: each hook (the configuration, a tick, an issuer's answer) reads both clocks once
//! (`Worker::read_clocks`, [`WasmClock`]) and keeps the reading for the VM's requests. Every
//! schedule, lease expiry and age — the first ticks, the elections, the fetchers, the set's
//! `last_ok_ms` and staleness — runs on the monotonic clock, which is Envoy's process-wide
//! steady clock and so compares across VMs (a lease written by one VM is judged live or
//! expired by another); only the revocation entries' cutoff reads the wall clock. A step of
//! the wall clock so neither makes every VM's set stale and every lease look expired at once
//! (forward) nor holds back the JWKS refresh, the unknown-`kid` refetch and a trapped
//! leader's successor for the step's length (back).
//!
//! Host calls go through `proxy_wasm::hostcalls`, whose results are handled. Note that the SDK
//! (0.2.5) returns an error only for the statuses a call documents and panics — aborting the
//! VM — on any other; Envoy returns only documented statuses, so that is not reachable from a
//! client. Where the SDK's trait wrappers would panic on a documented status (a missing header
//! map), the raw results are read instead ([`Root::response_status_and_body`]); the request's
//! header map is read raw (`wasm_host::request_header_map`), since the SDK's reader also aborts
//! on a header name that is not UTF-8.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType, Status};
use weauth_token::KeySet;

use crate::config::Config;
use crate::fetch::{self, Publish, Published, StaleWatch};
use crate::host::{DispatchError, IssuerCall, Level, Report, WasmClock};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::refresh::{self, LeaseStep, LEASE_MS};
use crate::revocation::{InShared, Meta, RevocationSet};
use crate::wasm_host::{log, monotonic_ns, unix_ms};
use crate::worker::{VmState, Worker};

/// How often every VM syncs from shared data (and the elected VM drives its fetchers).
const TICK: Duration = Duration::from_millis(100);
/// The tick until the VM holds its keys and a revocation set: the election takes two ticks
/// (claim, then take up) and each sync waits for one, so at 100 ms a new Envoy's first token
/// waited about 200 ms for ticks alone.
const FIRST_TICK: Duration = Duration::from_millis(10);
/// The fast first ticks end at the latest this long after the configuration (an issuer that
/// cannot be reached is retried on the fetchers' own backoff, not every 10 ms).
const FIRST_TICKS_MAX_MS: u64 = 2_000;
/// Largest response body read from the issuer.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The root context.
pub struct Root {
    context_id: u32,
    /// Random per VM (std's RandomState seeds from WASI `random_get`).
    vm_id: u64,
    worker: Option<Rc<Worker>>,
    /// The fetchers this configuration needs, one per kind of data (the JWKS, the revocation
    /// set), each driven only while this VM holds that kind's lease (`keys`: one writer per
    /// key).
    parts: Vec<Part>,
    stale: StaleWatch,
    /// When the configuration was applied (on the monotonic clock), while the tick is still
    /// [`FIRST_TICK`].
    first_ticks_since_ms: Option<u64>,
}

/// The kinds of data, for [`Part::what`].
const JWKS: &str = "JWKS";
const REVOCATION: &str = "revocation";

/// One kind of data this VM may fetch: its lease and its fetcher.
struct Part {
    lease: String,
    fetcher: fetch::Fetcher,
    /// For the log: "JWKS" or "revocation".
    what: &'static str,
    leader: bool,
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
            parts: Vec::new(),
            stale: StaleWatch::default(),
            first_ticks_since_ms: None,
        })
    }

    fn log(&self, level: Level, message: &str) {
        log(level, self.context_id, message);
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

    /// One round of the election for the lease of `what` (named `lease`) at `now_ms` on the
    /// monotonic clock (the lease's expiry is compared by every VM: module docs). Returns
    /// whether this VM holds it now.
    fn elect(&self, lease: &str, what: &str, now_ms: u64) -> bool {
        let Ok((bytes, cas)) = hostcalls::get_shared_data(lease) else {
            return false;
        };
        let current = bytes.as_deref().and_then(refresh::Lease::decode);
        match refresh::lease_step(current, self.vm_id, now_ms, LEASE_MS) {
            LeaseStep::Renew(next) => {
                hostcalls::set_shared_data(lease, Some(&next.encode()), cas).is_ok()
            }
            LeaseStep::Claim(next) => {
                let claimed = hostcalls::set_shared_data(lease, Some(&next.encode()), cas).is_ok();
                if claimed && current.is_some_and(|lease| lease.handed_on()) {
                    // Said apart from a lease waited out (`refresh::lease_release`).
                    self.log(
                        Level::Info,
                        &format!("claimed the {what} lease a configuration gone handed on"),
                    );
                }
                false
            }
            LeaseStep::Follow => false,
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
}

/// The fetcher's reports: this VM's metrics and log lines.
struct RootReport<'a> {
    metrics: &'a Metrics,
    context_id: u32,
}

impl Report for RootReport<'_> {
    fn log(&self, level: Level, message: &str) {
        log(level, self.context_id, message);
    }

    fn count(&self, name: &'static str) {
        self.metrics.count(name);
    }

    fn gauge(&self, name: &'static str, value: u64) {
        self.metrics.gauge(name, value);
    }
}

/// The fetcher's calls: `dispatch_http_call` from the root context.
struct WasmCall;

impl IssuerCall for WasmCall {
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u64, DispatchError> {
        hostcalls::dispatch_http_call(
            cluster,
            headers.to_vec(),
            None,
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .map(u64::from)
        .map_err(|status| match status {
            // Envoy's `httpCall`: no such cluster (the headers it also checks are always sent).
            Status::BadArgument => DispatchError::no_cluster(),
            // The async client returned no request: it failed at once.
            Status::InternalFailure => DispatchError::failed_at_once(),
            other => DispatchError(format!("{other:?}")),
        })
    }
}

/// The wasm build's side of [`Publish`]: shared data, which every VM syncs from, and the
/// fetcher VM's own copy of the set (the one it applies answers to, in place).
struct SharedData<'a> {
    worker: &'a Worker,
    state: &'a mut VmState,
    context_id: u32,
}

impl SharedData<'_> {
    fn warn(&self, message: &str) {
        log(Level::Warn, self.context_id, message);
    }

    /// The meta in shared data as the writer sees it: its generation (0 when none), and
    /// whether another VM wrote it since this one last did (its CAS moved).
    fn in_shared(&self) -> InShared {
        let Ok((bytes, cas)) = hostcalls::get_shared_data(&self.worker.keys.meta) else {
            return InShared::default();
        };
        InShared {
            generation: bytes
                .and_then(|bytes| Meta::decode(&bytes).ok())
                .map_or(0, |meta| meta.generation),
            // A VM that has just taken the feed over rewrites every shard: the VM before may
            // have written shards under the generation this one picks and stopped before its
            // meta (a trap mid-publication), leaving blobs no meta lists.
            foreign: self.state.taking_over
                || self
                    .state
                    .written_meta_cas
                    .is_some_and(|written| cas != Some(written)),
        }
    }
}

impl Publish for SharedData<'_> {
    fn jwks_wanted_ms(&self) -> u64 {
        match hostcalls::get_shared_data(&self.worker.keys.jwks_wanted) {
            Ok((Some(bytes), _)) => bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes),
            _ => 0,
        }
    }

    /// Compared with the blob in shared data, so a VM that takes the lease over does not
    /// republish the JWKS its predecessor published.
    fn publish_jwks(&mut self, json: &[u8], _keys: KeySet, now_ms: u64) -> Option<u64> {
        let previous = hostcalls::get_shared_data(&self.worker.keys.jwks)
            .ok()
            .and_then(|(bytes, _)| bytes);
        let previous = previous.as_deref().and_then(refresh::decode_jwks_blob);
        if previous.is_some_and(|blob| blob.json == json) {
            return None;
        }
        let generation = previous.map_or(0, |blob| blob.generation).saturating_add(1);
        let blob = refresh::encode_jwks_blob(generation, now_ms, json);
        if hostcalls::set_shared_data(&self.worker.keys.jwks, Some(&blob), None).is_err() {
            self.warn("could not write the JWKS to shared data");
            return None;
        }
        Some(generation)
    }

    fn published(&self) -> Option<Published> {
        published(self.state)
    }

    /// No reader in this VM holds the set apart from its copy: taken out, changed in place.
    fn take_set(&mut self) -> RevocationSet {
        std::mem::take(&mut self.state.replica.set)
    }

    fn copy_set(&self) -> RevocationSet {
        self.state.replica.set.clone()
    }

    fn restore_set(&mut self, set: RevocationSet) {
        self.state.replica.set = set;
    }

    /// Writes the changed shards, then the meta, then the meta version (the `replica` module's
    /// publication protocol).
    fn publish_set(&mut self, set: RevocationSet, changed: &[usize], last_ok_ms: u64) {
        let shared = self.in_shared();
        self.state.replica.set = set;
        // A first publication creates the meta even with no shard changed; shards never
        // written keep generation 0 = empty.
        let publication = self.state.replica.publish(changed, last_ok_ms, shared);
        for (index, blob) in publication.blobs(&self.state.replica.set) {
            let key = self.worker.keys.shard(index);
            if hostcalls::set_shared_data(&key, Some(&blob), None).is_err() {
                self.warn(&format!("could not write revocation shard {index}"));
            }
        }
        let meta = publication.meta.encode();
        if hostcalls::set_shared_data(&self.worker.keys.meta, Some(&meta), None).is_err() {
            self.warn("could not write the revocation meta");
        }
        // Only the CAS: the meta just written needs no decoding.
        self.state.written_meta_cas = hostcalls::get_shared_data(&self.worker.keys.meta)
            .ok()
            .and_then(|(_, cas)| cas);
        // Only the key's CAS (bumped by the host on every write) carries the version; an empty
        // value crosses the boundary without a memory callback.
        if hostcalls::set_shared_data(&self.worker.keys.meta_version, Some(&[]), None).is_err() {
            self.warn("could not write the revocation meta version");
        }
        self.state.taking_over = false;
        self.state.forget_meta_cas();
    }
}

/// What this VM holds of the published set.
fn published(state: &VmState) -> Option<Published> {
    state.replica.meta.as_ref().map(|meta| Published {
        seq: state.replica.set.seq,
        entries: state.replica.set.len(),
        last_ok_ms: meta.last_ok_ms,
    })
}

impl Root {
    /// Runs `f` with fetcher `part` and what it works through, if this VM's state is free.
    fn with_fetcher(
        &mut self,
        worker: &Worker,
        part: usize,
        f: impl FnOnce(&mut fetch::Fetcher, &mut SharedData<'_>, &RootReport<'_>),
    ) {
        let (Some(part), Ok(mut state)) = (self.parts.get_mut(part), worker.state.try_borrow_mut())
        else {
            return;
        };
        let fetcher = &mut part.fetcher;
        let mut publish = SharedData {
            worker,
            state: &mut state,
            context_id: self.context_id,
        };
        let report = RootReport {
            metrics: &worker.metrics,
            context_id: self.context_id,
        };
        f(fetcher, &mut publish, &report);
    }
}

/// The configuration is going (Envoy destroys it once an update's drain ends, and
/// `proxy_on_delete` drops its root context): hand on the leases this VM holds, so that a VM of
/// the configuration left takes the fetching over on its next tick rather than after the last
/// renewal's [`LEASE_MS`] — revocations would otherwise stop reaching the edge for up to 2 s
/// after every configuration update. Here and not in `on_done`: the module does not export
/// `proxy_on_done` (scripts/wasm-link), which Envoy would call into the VM on every request.
impl Drop for Root {
    fn drop(&mut self) {
        for part in &self.parts {
            let Ok((bytes, cas)) = hostcalls::get_shared_data(&part.lease) else {
                continue;
            };
            let current = bytes.as_deref().and_then(refresh::Lease::decode);
            let Some(released) = refresh::lease_release(current, self.vm_id) else {
                continue;
            };
            // Said before the write: another VM may claim the lease the moment it is written,
            // and its line must come after this one in the log.
            self.log(
                Level::Info,
                &format!("configuration gone: handing the {} lease on", part.what),
            );
            if hostcalls::set_shared_data(&part.lease, Some(&released.encode()), cas).is_err() {
                self.log(
                    Level::Info,
                    &format!("the {} lease changed meanwhile: not handed on", part.what),
                );
            }
        }
    }
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
        let now = worker.read_clocks();
        let id = u64::from(token_id);
        let Some(part) = self.parts.iter().position(|part| part.fetcher.owns(id)) else {
            return;
        };
        // Still the fetcher? This VM learns it lost the lease at its next tick, and an answer
        // can come first (its thread stalled past the lease while another VM took the
        // fetching over; the event loop runs the answer before the timer): applied, it
        // published a set older than the new fetcher's over it — revocations gone from every
        // worker until the next publication. So the lease is renewed here, or the answer
        // dropped.
        let holds = self
            .parts
            .get(part)
            .is_some_and(|p| p.leader && self.elect(&p.lease, p.what, now.mono_ms));
        if !holds {
            if let Some(lost) = self.parts.get_mut(part) {
                // Lost the lease while the call was out: drop it, the new fetcher has its own.
                lost.fetcher.drop_call(id, now.mono_ms);
                if lost.leader {
                    lost.leader = false;
                    lost.fetcher.restart(now.mono_ms);
                    let what = lost.what;
                    self.log(
                        Level::Info,
                        &format!("this VM is no longer the {what} fetcher"),
                    );
                }
            }
            return;
        }
        let (status, body) = Root::response_status_and_body(num_headers, body_size);
        self.with_fetcher(&worker, part, |fetcher, publish, report| {
            fetcher.on_response(
                publish,
                &mut WasmCall,
                report,
                u64::from(token_id),
                status,
                &[&body],
                now,
            );
        });
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
        let mono_ns = monotonic_ns();
        if mono_ns.is_none() {
            // proxy-wasm-cpp-host (Envoy's) always answers it: another host's gap.
            self.log(
                Level::Warn,
                "the host gives no monotonic clock (WASI clock_time_get): schedules, leases and \
                 the set's age go on the wall clock's progress instead",
            );
        }
        let clock = WasmClock::start(unix_ms(), mono_ns);
        let now = clock.now().mono_ms;
        let state = VmState::new(&config);
        let keys = Keys::new(&config);
        let parts = [
            (
                keys.jwks_lease.clone(),
                fetch::Fetcher::jwks_only(&config, now, self.vm_id),
                JWKS,
            ),
            (
                keys.feed_lease.clone(),
                fetch::Fetcher::feed_only(&config, now, self.vm_id),
                REVOCATION,
            ),
        ];
        self.parts = parts
            .into_iter()
            .filter_map(|(lease, fetcher, what)| {
                Some(Part {
                    lease: lease?,
                    fetcher,
                    what,
                    leader: false,
                })
                .filter(|part| part.fetcher.fetches())
            })
            .collect();
        let fetches = !self.parts.is_empty();
        let summary = format!("{}, vm {:016x}", config.summary(), self.vm_id);
        let metrics = Metrics::define();
        if let Some(keys) = &state.keys {
            metrics.gauge("jwks_keys", keys.len() as u64);
        }
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
            clock: Cell::new(clock),
        }));
        self.stale = StaleWatch::default();
        // Inline keys and no feed: nothing to sync, but the tick still adds the allow path's
        // counts to Envoy's stats (`Metrics::flush`).
        let period = if fetches { FIRST_TICK } else { TICK };
        if hostcalls::set_tick_period(period).is_err() {
            self.log(Level::Error, "could not start the tick");
            return false;
        }
        if fetches {
            self.first_ticks_since_ms = Some(now);
        }
        self.log(Level::Info, &summary);
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let now = worker.read_clocks();
        worker.metrics.flush();
        // The seq of the revocation set this VM holds whole and as published (`None`: none, or
        // not in sync): where a VM that takes the feed over goes on from.
        let mut current_seq = None;
        if let Ok(mut state) = worker.state.try_borrow_mut() {
            worker.sync_jwks(&mut state, self.context_id);
            if worker.sync_revocation(&mut state, self.context_id) {
                current_seq = state.replica.meta.as_ref().map(|meta| meta.seq);
            }
            if let Some(feed) = &worker.config.revocation {
                let report = RootReport {
                    metrics: &worker.metrics,
                    context_id: self.context_id,
                };
                self.stale
                    .observe(feed, published(&state), &report, now.mono_ms);
            }
            self.end_first_ticks(&worker, &state, now.mono_ms);
        }
        for index in 0..self.parts.len() {
            let Some(part) = self.parts.get(index) else {
                break;
            };
            let leader = self.elect(&part.lease, part.what, now.mono_ms);
            let part_is_feed = part.what == REVOCATION;
            if leader != part.leader {
                // Taking the feed over with the published set in hand (the configuration that
                // fetched has gone, after a configuration update's drain): go on from its seq,
                // as the native build does, rather than load the whole set again.
                let resume = current_seq.filter(|_| leader && part.what == REVOCATION);
                let message = match (leader, resume) {
                    (true, Some(seq)) => {
                        format!("this VM is now the {} fetcher, from seq {seq}", part.what)
                    }
                    (true, None) => format!("this VM is now the {} fetcher", part.what),
                    (false, _) => format!("this VM is no longer the {} fetcher", part.what),
                };
                self.log(Level::Info, &message);
                if let Some(part) = self.parts.get_mut(index) {
                    part.fetcher.restart(now.mono_ms);
                    if resume.is_some() {
                        part.fetcher.resume();
                    }
                    part.leader = leader;
                }
                if leader && part_is_feed {
                    if let Ok(mut state) = worker.state.try_borrow_mut() {
                        state.taking_over = true;
                    }
                }
            }
            if leader {
                self.with_fetcher(&worker, index, |fetcher, publish, report| {
                    fetcher.tick(publish, &mut WasmCall, report, now);
                });
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(crate::http::Filter::new(context_id, worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
