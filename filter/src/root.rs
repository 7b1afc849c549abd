//! The root context (one per plugin per worker VM): configuration, metrics, the tick, the
//! fetcher election and the two fetchers. Thin glue over the pure modules.
//!
//! Every 100 ms, in every VM: re-read the JWKS blob and the revocation meta from shared data
//! and decode only what changed (by CAS value and generation); refresh the gauges; then take
//! part in the lease election. The VM that holds the lease dispatches the JWKS fetch (on its
//! period, or sooner when a worker saw an unknown `kid`) and keeps one long poll to the
//! revocation feed open; it applies each answer to its copy and publishes the changed shard
//! blobs, then the meta. The SDK's own wrappers are avoided where they would panic on an
//! unexpected host status; `proxy_wasm::hostcalls` results are handled instead.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MapType, MetricType};
use weauth_token::revocation::FeedResponse;
use weauth_token::KeySet;

use crate::cache::TokenCache;
use crate::config::{Config, JwksSource, RemoteJwks, RevocationConfig};
use crate::refresh::{self, CallOutcome, LeaseStep, Schedule};
use crate::revocation::{fnv1a, Meta, Publication, Replica, RevocationSet};

/// How often every VM syncs from shared data (and the elected VM drives its fetchers).
const TICK: Duration = Duration::from_millis(100);
/// The fetcher lease's lifetime; renewed on every tick by its holder.
const LEASE_MS: u64 = 2_000;
/// Extra time given to a long poll beyond `wait_seconds` before Envoy times it out.
const FEED_TIMEOUT_MARGIN_MS: u64 = 5_000;
/// Largest response body read from the issuer.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Poll period while the issuer's feed is at seq 0 (see `on_feed_response`).
const EMPTY_FEED_POLL_MS: u64 = 250;
/// How often the elected VM drops expired revocation entries.
const PRUNE_EVERY_MS: u64 = 10_000;

/// Writes one log line tagged with the context id. Never pass tokens or full openids.
pub fn log(level: LogLevel, context_id: u32, message: &str) {
    let _ = hostcalls::log(level, &format!("weauth[{context_id}] {message}"));
}

/// Host time in unix milliseconds (0 if the host cannot say, which makes everything stale).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Every reason a request can be denied for (one counter each).
const DENY_REASONS: &[&str] = &[
    "missing",
    "ambiguous",
    "too_large",
    "malformed",
    "alg_not_allowed",
    "forbidden_header",
    "unknown_kid",
    "key_alg_mismatch",
    "bad_signature",
    "wrong_type",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "wrong_issuer",
    "wrong_audience",
    "revoked_jti",
    "revoked_sid",
    "revoked_sub",
    "insufficient_scope",
    "jwks_unavailable",
    "revocation_unavailable",
    "revocation_stale",
    "bad_path",
];

/// A counter of the allow path, counted in the VM and added to Envoy's stat on the tick
/// ([`Metrics::flush`]): one host call per counter per 100 ms instead of one per request. Envoy's
/// stats therefore lag by up to one tick (and a VM torn down loses at most one tick's counts).
#[derive(Debug, Default)]
pub struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Counter {
    fn new(id: Option<u32>) -> Counter {
        Counter {
            id,
            pending: Cell::new(0),
        }
    }

    /// Adds one, in the VM only (no host call).
    pub fn bump(&self) {
        self.pending.set(self.pending.get().saturating_add(1));
    }

    /// What is counted and not yet flushed; resets it.
    fn take(&self) -> u64 {
        self.pending.replace(0)
    }
}

/// Metric ids, defined once per VM (Envoy shares the underlying stats across VMs). The
/// counters of the allow path are [`Counter`]s, so a request never looks an id up by name nor
/// crosses the host boundary to count.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: HashMap<&'static str, u32>,
    denied: HashMap<&'static str, u32>,
    pub allowed: Counter,
    pub anonymous: Counter,
    pub cache_hit: Counter,
    pub cache_miss: Counter,
}

impl Metrics {
    fn define() -> Metrics {
        let mut metrics = Metrics::default();
        let counters = [
            "allowed",
            "anonymous",
            "cache_hit",
            "cache_miss",
            "jwks_fetch_ok",
            "jwks_fetch_fail",
            "feed_fetch_ok",
            "feed_fetch_fail",
            "revocation_stale_allowed",
        ];
        for name in counters {
            if let Ok(id) = hostcalls::define_metric(MetricType::Counter, &format!("weauth.{name}"))
            {
                metrics.ids.insert(name, id);
            }
        }
        for name in ["revocation_entries", "revocation_age_seconds", "jwks_keys"] {
            if let Ok(id) = hostcalls::define_metric(MetricType::Gauge, &format!("weauth.{name}")) {
                metrics.ids.insert(name, id);
            }
        }
        metrics.allowed = Counter::new(metrics.ids.get("allowed").copied());
        metrics.anonymous = Counter::new(metrics.ids.get("anonymous").copied());
        metrics.cache_hit = Counter::new(metrics.ids.get("cache_hit").copied());
        metrics.cache_miss = Counter::new(metrics.ids.get("cache_miss").copied());
        for reason in DENY_REASONS {
            if let Ok(id) =
                hostcalls::define_metric(MetricType::Counter, &format!("weauth.denied.{reason}"))
            {
                metrics.denied.insert(reason, id);
            }
        }
        metrics
    }

    /// Adds the allow path's counts since the last flush to Envoy's stats (on the tick): one
    /// host call per counter that moved.
    pub fn flush(&self) {
        for counter in [
            &self.allowed,
            &self.anonymous,
            &self.cache_hit,
            &self.cache_miss,
        ] {
            let pending = counter.take();
            if let (Some(id), true) = (counter.id, pending > 0) {
                let _ = hostcalls::increment_metric(id, i64::try_from(pending).unwrap_or(i64::MAX));
            }
        }
    }

    /// Adds one to a counter.
    pub fn count(&self, name: &str) {
        if let Some(id) = self.ids.get(name) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    /// Adds one to `weauth.denied.<reason>`.
    pub fn denied(&self, reason: &str) {
        if let Some(id) = self.denied.get(reason) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    /// Sets a gauge.
    pub fn gauge(&self, name: &str, value: u64) {
        if let Some(id) = self.ids.get(name) {
            let _ = hostcalls::record_metric(*id, value);
        }
    }
}

/// Shared-data key names, namespaced by what is fetched so two plugin configurations with
/// different issuers in one VM group do not mix.
#[derive(Debug, Clone)]
pub struct Keys {
    pub lease: String,
    pub jwks: String,
    pub jwks_wanted: String,
    pub meta: String,
    /// Rewritten (empty: its CAS is the version) after every meta write: what a request reads
    /// to learn whether the meta moved, instead of copying the whole meta across the boundary.
    pub meta_version: String,
    pub shard_prefix: String,
}

impl Keys {
    fn new(config: &Config) -> Keys {
        let jwks_ns = match &config.jwks {
            JwksSource::Remote(remote) => fnv1a(&[
                remote.cluster.as_bytes(),
                remote.authority.as_bytes(),
                remote.path.as_bytes(),
            ]),
            JwksSource::Inline(_) => 0,
        };
        let feed_ns = config.revocation.as_ref().map_or(0, |feed| {
            fnv1a(&[
                feed.cluster.as_bytes(),
                feed.authority.as_bytes(),
                feed.path.as_bytes(),
                feed.credential.as_bytes(),
            ])
        });
        let lease_ns = fnv1a(&[&jwks_ns.to_le_bytes(), &feed_ns.to_le_bytes()]);
        Keys {
            lease: format!("weauth.lease.{lease_ns:016x}"),
            jwks: format!("weauth.jwks.{jwks_ns:016x}"),
            jwks_wanted: format!("weauth.jwks.{jwks_ns:016x}.wanted"),
            // `rev2`: the compact shard format (WRS2). A VM of an older build, still running
            // during a plugin update, keeps to its own keys instead of misreading these.
            meta: format!("weauth.rev2.{feed_ns:016x}.meta"),
            meta_version: format!("weauth.rev2.{feed_ns:016x}.v"),
            shard_prefix: format!("weauth.rev2.{feed_ns:016x}.shard."),
        }
    }

    fn shard(&self, index: usize) -> String {
        format!("{}{index}", self.shard_prefix)
    }
}

/// Per-VM mutable state shared by the root and the HTTP contexts (single-threaded VM). (Not
/// `refresh::FetchPhase`, where one fetcher is.)
#[derive(Debug, Default)]
pub struct VmState {
    pub keys: Option<KeySet>,
    pub keys_generation: u64,
    /// CAS of the JWKS blob last decoded (change detection without re-decoding).
    jwks_cas: Option<u32>,
    pub replica: Replica,
    meta_cas: Option<u32>,
    /// CAS of the meta-version key when the meta was last synced (see
    /// [`Worker::sync_revocation_if_moved`]).
    meta_version_cas: Option<u32>,
    pub cache: TokenCache,
    /// When this VM last asked the fetcher for a JWKS refetch.
    pub refetch_asked_ms: u64,
}

/// Everything an HTTP context needs, owned by the root and shared by `Rc`.
#[derive(Debug)]
pub struct Worker {
    pub config: Config,
    /// A header token source other than `authorization` is configured: the HTTP context reads
    /// the whole header map to see repeated copies (Envoy joins only its inline headers).
    pub reads_whole_map: bool,
    pub metrics: Metrics,
    pub keys: Keys,
    pub state: RefCell<VmState>,
}

impl Worker {
    /// Re-reads the JWKS blob when its CAS moved; decodes only a new generation. Returns
    /// whether the keys changed.
    pub fn sync_jwks(&self, state: &mut VmState, context_id: u32) -> bool {
        if !matches!(self.config.jwks, JwksSource::Remote(_)) {
            return false;
        }
        let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(&self.keys.jwks) else {
            return false;
        };
        if cas.is_some() && cas == state.jwks_cas {
            return false;
        }
        state.jwks_cas = cas;
        let Some(blob) = refresh::decode_jwks_blob(&bytes) else {
            log(
                LogLevel::Warn,
                context_id,
                "shared JWKS blob is unreadable; keeping the current keys",
            );
            return false;
        };
        if blob.generation == state.keys_generation && state.keys.is_some() {
            return false;
        }
        match KeySet::from_jwks_json(blob.json) {
            Ok((keys, _)) if !keys.is_empty() => {
                self.metrics.gauge("jwks_keys", keys.len() as u64);
                log(
                    LogLevel::Info,
                    context_id,
                    &format!(
                        "JWKS generation {} loaded: {} key(s)",
                        blob.generation,
                        keys.len()
                    ),
                );
                state.keys = Some(keys);
                state.keys_generation = blob.generation;
                state.cache.clear();
                true
            }
            _ => {
                log(
                    LogLevel::Warn,
                    context_id,
                    "shared JWKS has no usable key; keeping the current keys",
                );
                false
            }
        }
    }

    /// Re-reads the revocation meta when its CAS moved, then only the shards whose generation
    /// changed. Cheap when nothing changed (one small shared-data read), so it runs on every
    /// tick and before every decision that consults the set.
    /// Returns whether this VM's copy is now the published one.
    pub fn sync_revocation(&self, state: &mut VmState, context_id: u32) -> bool {
        if self.config.revocation.is_none() {
            return true;
        }
        let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(&self.keys.meta) else {
            return false;
        };
        if cas.is_some() && cas == state.meta_cas {
            return true;
        }
        let meta = match Meta::decode(&bytes) {
            Ok(meta) => meta,
            Err(err) => {
                log(
                    LogLevel::Warn,
                    context_id,
                    &format!("shared revocation meta is unreadable: {err}"),
                );
                return false;
            }
        };
        let result = state.replica.sync(meta, |index| {
            hostcalls::get_shared_data(&self.keys.shard(index))
                .ok()
                .and_then(|(bytes, _)| bytes)
        });
        match result {
            // Cached verdicts re-check revocation because the generation moved.
            Ok(()) => {
                state.meta_cas = cas;
                true
            }
            // A write in progress: keep the copy and retry next time (meta_cas unchanged).
            Err(err) => {
                log(
                    LogLevel::Debug,
                    context_id,
                    &format!("revocation sync deferred: {err}"),
                );
                false
            }
        }
    }

    /// The per-request form of [`Worker::sync_revocation`]: reads only the (empty) meta-version
    /// key's CAS, and syncs when its CAS moved since the last sync. The fetcher writes shards, then
    /// the meta, then the version, so a moved version always finds the new meta in place; a
    /// version read before a sync can only be older than the meta it syncs, never newer, so no
    /// change is skipped. This keeps "once one worker refuses a revoked token, every worker
    /// does" at the cost of one small read per request (the tick still syncs in full, which
    /// also picks up `last_ok_ms` for staleness).
    pub fn sync_revocation_if_moved(&self, state: &mut VmState, context_id: u32) {
        if self.config.revocation.is_none() {
            return;
        }
        let version_cas = hostcalls::get_shared_data(&self.keys.meta_version)
            .ok()
            .and_then(|(_, cas)| cas);
        if version_cas.is_some() && version_cas == state.meta_version_cas {
            return;
        }
        if self.sync_revocation(state, context_id) {
            state.meta_version_cas = version_cas;
        }
    }

    /// Asks the elected fetcher for a JWKS refetch (a token named an unknown `kid`). Rate
    /// limited per VM to one write per `min_refetch_seconds`.
    pub fn want_jwks_refetch(&self, state: &mut VmState, now_ms: u64) {
        let JwksSource::Remote(remote) = &self.config.jwks else {
            return;
        };
        if now_ms.saturating_sub(state.refetch_asked_ms)
            < remote.min_refetch_seconds.saturating_mul(1000).max(1000)
        {
            return;
        }
        state.refetch_asked_ms = now_ms;
        let _ =
            hostcalls::set_shared_data(&self.keys.jwks_wanted, Some(&now_ms.to_le_bytes()), None);
    }
}

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
        })
    }

    fn log(&self, level: LogLevel, message: &str) {
        log(level, self.context_id, message);
    }

    fn fetches(&self) -> bool {
        self.jwks_schedule.is_some() || self.feed_schedule.is_some()
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
                    LogLevel::Warn,
                    &format!(
                        "revocation list is stale (feed not reached for over {} s); stale_mode={:?}",
                        feed.stale_after_seconds, feed.stale_mode
                    ),
                );
            } else if !stale {
                self.log(
                    LogLevel::Info,
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
                    LogLevel::Warn,
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
                    LogLevel::Warn,
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
            let floor = shared_generation(worker);
            let publication = state.replica.publish(&changed, last_ok_ms, floor);
            self.write_publication(worker, &publication, &state.replica.set);
            state.meta_cas = None;
        }
    }

    fn write_publication(&self, worker: &Worker, publication: &Publication, set: &RevocationSet) {
        for (index, blob) in publication.blobs(set) {
            if hostcalls::set_shared_data(&worker.keys.shard(index), Some(&blob), None).is_err() {
                self.log(
                    LogLevel::Warn,
                    &format!("could not write revocation shard {index}"),
                );
            }
        }
        if hostcalls::set_shared_data(&worker.keys.meta, Some(&publication.meta.encode()), None)
            .is_err()
        {
            self.log(LogLevel::Warn, "could not write the revocation meta");
        }
        // Only the key's CAS (bumped by the host on every write) carries the version; an empty
        // value crosses the boundary without a memory callback.
        if hostcalls::set_shared_data(&worker.keys.meta_version, Some(&[]), None).is_err() {
            self.log(
                LogLevel::Warn,
                "could not write the revocation meta version",
            );
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
                        LogLevel::Debug,
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
                    LogLevel::Warn,
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
            self.log(LogLevel::Warn, "could not write the JWKS to shared data");
        } else {
            self.log(
                LogLevel::Info,
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
            serde_json::from_slice::<FeedResponse>(&body)
                .map_err(|err| format!("unreadable body: {err}"))
        } else {
            Err(format!("HTTP status {status}"))
        };
        let outcome = match parsed {
            Ok(response) => {
                worker.metrics.count("feed_fetch_ok");
                self.full_pending = false;
                self.apply_feed(worker, &response, now_ms);
                // `since=0` always answers at once with the full set, so while the issuer's seq
                // is still 0 (nothing ever revoked) there is nothing to long-poll on: re-ask
                // every EMPTY_FEED_POLL_MS instead of spinning on every tick.
                CallOutcome::Ok {
                    next_in_ms: if response.seq == 0 {
                        EMPTY_FEED_POLL_MS
                    } else {
                        0
                    },
                }
            }
            Err(reason) => {
                worker.metrics.count("feed_fetch_fail");
                self.log(
                    LogLevel::Warn,
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

    fn apply_feed(&self, worker: &Worker, response: &FeedResponse, now_ms: u64) {
        let Ok(mut state) = worker.state.try_borrow_mut() else {
            return;
        };
        let held_seq = state.replica.set.seq;
        let first = state.replica.meta.is_none();
        let changed = match state.replica.set.apply(response, seconds(now_ms)) {
            Ok(applied) => {
                if applied.skipped > 0 {
                    self.log(
                        LogLevel::Debug,
                        &format!(
                            "{} revocation entries skipped (expired or malformed)",
                            applied.skipped
                        ),
                    );
                }
                if first || response.seq != held_seq {
                    self.log(
                        LogLevel::Info,
                        &format!(
                            "revocation feed seq {} applied ({}): {} entries",
                            response.seq,
                            if response.full { "full" } else { "delta" },
                            state.replica.set.len()
                        ),
                    );
                }
                applied.changed
            }
            Err(err) => {
                self.log(LogLevel::Warn, &err.to_string());
                return;
            }
        };
        // A full set that left every shard as it was still needs a first meta; publish()
        // creates it. Shards never written keep generation 0 = empty.
        let floor = shared_generation(worker);
        let publication = state.replica.publish(&changed, now_ms, floor);
        self.write_publication(worker, &publication, &state.replica.set);
        state.meta_cas = None;
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
                LogLevel::Debug,
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
                    LogLevel::Error,
                    &format!("invalid plugin configuration: {err}"),
                );
                return false;
            }
        };
        let now = now_ms();
        let mut state = VmState {
            cache: TokenCache::new(config.cache_entries),
            ..VmState::default()
        };
        if let JwksSource::Inline(keys) = &config.jwks {
            state.keys = Some(keys.clone());
            state.keys_generation = 1;
        }
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
        let summary =
            format!(
            "configured: issuer {}, {} audience(s), jwks {}, revocation {}, {} rule(s), vm {:016x}",
            config.validation.issuer,
            config.validation.audiences.len(),
            match &config.jwks {
                JwksSource::Inline(keys) => format!("inline ({} key(s))", keys.len()),
                JwksSource::Remote(remote) => format!("from cluster {}", remote.cluster),
            },
            config.revocation.as_ref().map_or("off".to_string(), |feed| format!(
                "from cluster {} (credential {}, stale after {} s, mode {:?})",
                feed.cluster,
                feed.credential_env
                    .as_deref()
                    .map_or("inline".to_string(), |name| format!("from env {name}")),
                feed.stale_after_seconds,
                feed.stale_mode
            )),
            config.rules.len(),
            self.vm_id,
        );
        let metrics = Metrics::define();
        if let Some(keys) = &state.keys {
            metrics.gauge("jwks_keys", keys.len() as u64);
        }
        let keys = Keys::new(&config);
        let reads_whole_map = config.token_sources.iter().any(|source| {
            matches!(source, crate::config::TokenSource::Header { name, .. } if name != "authorization")
        });
        self.worker = Some(Rc::new(Worker {
            reads_whole_map,
            config,
            metrics,
            keys,
            state: RefCell::new(state),
        }));
        self.leader = false;
        self.was_stale = None;
        // Inline keys and no feed: nothing to sync, no tick needed.
        if self.fetches() && hostcalls::set_tick_period(TICK).is_err() {
            self.log(LogLevel::Error, "could not start the tick");
            return false;
        }
        self.log(LogLevel::Info, &summary);
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
        }
        if !self.fetches() {
            return;
        }
        let leader = self.elect(&worker, now);
        if leader != self.leader {
            self.log(
                LogLevel::Info,
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
