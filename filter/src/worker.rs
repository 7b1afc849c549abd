//! What every worker VM holds and does apart from fetching: the shared-data key names, the
//! per-VM state (decoded keys, the revocation replica, the token cache) and the syncs from
//! shared data that the tick and each request run. Apart from `root`, which elects the fetcher
//! and writes shared data: this side only reads it (save the JWKS refetch request), and it is
//! all an HTTP context sees.

use std::cell::{Cell, RefCell};

use proxy_wasm::hostcalls;
use weauth_token::KeySet;

use crate::cache::TokenCache;
use crate::config::{Config, JwksSource};
use crate::host::{Level, Now, WasmClock};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::refresh::{self, RefetchAsks};
use crate::revocation::{Meta, Replica};
use crate::wasm_host::{log, monotonic_ns, unix_ms};

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
    /// When this VM last asked the fetcher for a JWKS refetch (on the monotonic clock).
    refetch_asks: RefetchAsks,
    /// As the revocation writer: the meta's CAS right after this VM's last write of it. Any
    /// other writer's meta write changes it (see `root`'s `SharedData::publish_set`).
    pub written_meta_cas: Option<u32>,
    /// As the revocation writer: this VM has just taken the feed over, and its next
    /// publication rewrites every shard (see `root`'s `SharedData::in_shared`).
    pub taking_over: bool,
}

impl VmState {
    /// A VM's state before its first sync: an empty cache of the configured size, and the
    /// inline keys (as generation 1) when the JWKS is inline.
    pub fn new(config: &Config) -> VmState {
        let mut state = VmState {
            cache: TokenCache::new(config.cache_entries),
            ..VmState::default()
        };
        if let JwksSource::Inline(keys) = &config.jwks {
            state.keys = Some(keys.clone());
            state.keys_generation = 1;
        }
        state
    }

    /// Forgets the CAS of the meta last synced, so the next sync re-reads the meta (called by
    /// the fetcher after it published one).
    pub fn forget_meta_cas(&mut self) {
        self.meta_cas = None;
    }
}

/// Everything an HTTP context needs, owned by the root and shared by `Rc`.
#[derive(Debug)]
pub struct Worker {
    pub config: Config,
    pub metrics: Metrics,
    pub keys: Keys,
    pub state: RefCell<VmState>,
    /// This VM's clocks as its root context last read them: what a request reckons the
    /// monotonic time from ([`WasmClock`]).
    pub clock: Cell<WasmClock>,
}

impl Worker {
    /// Reads both clocks at a root-context hook (a tick, an issuer's answer) and keeps the
    /// reading for the requests that follow: two host calls, never made per request.
    pub fn read_clocks(&self) -> Now {
        let mut clock = self.clock.get();
        let now = clock.hook(unix_ms(), monotonic_ns());
        self.clock.set(clock);
        now
    }

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
                Level::Warn,
                context_id,
                "shared JWKS blob is unreadable; keeping the current keys",
            );
            return false;
        };
        if blob.generation == state.keys_generation && state.keys.is_some() {
            return false;
        }
        match KeySet::public_from_jwks_json(blob.json) {
            Ok((keys, _)) if !keys.is_empty() => {
                self.metrics.gauge("jwks_keys", keys.len() as u64);
                log(
                    Level::Info,
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
                    Level::Warn,
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
                    Level::Warn,
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
                    Level::Debug,
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

    /// Asks the elected fetcher for a JWKS refetch (a token named an unknown `kid`), at `now_ms`
    /// on the monotonic clock (the fetcher compares it with when its last fetch started). Rate
    /// limited per VM to one write per `min_refetch_seconds`.
    pub fn want_jwks_refetch(&self, state: &mut VmState, now_ms: u64) {
        let JwksSource::Remote(remote) = &self.config.jwks else {
            return;
        };
        let min_interval_ms = remote.min_refetch_seconds.saturating_mul(1000).max(1000);
        if !state.refetch_asks.ask(now_ms, min_interval_ms) {
            return;
        }
        let _ =
            hostcalls::set_shared_data(&self.keys.jwks_wanted, Some(&now_ms.to_le_bytes()), None);
    }
}
