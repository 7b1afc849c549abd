//! Envoy's dynamic-module C ABI, as the native build uses it: the declarations, the event hooks
//! Envoy calls, and thin safe wrappers. Every `unsafe` of the crate is in this module. Envoy's
//! Rust SDK for this ABI is not on crates.io (and a build here may only use the registries),
//! hence declarations written by hand; only the calls the filter uses are declared.
//!
//! Where they come from: `source/extensions/dynamic_modules/abi/abi.h` of envoyproxy/envoy as
//! stored for reference (a commit of the released-ABI-is-frozen era; the v1.40.0 tag itself
//! could not be fetched), checked against Envoy 1.40.0's binary: every callback declared here
//! is in its dynamic symbol table (`nm -D`), every hook it requires is defined here, and it
//! logs `Dynamic module ABI version v0.2.0 matched` for [`ABI_VERSION`] (it called the
//! header's `v0.1.0` "deprecated").
//!
//! Load-time checks: [`envoy_dynamic_module_on_program_init`] returns [`ABI_VERSION`], which
//! Envoy compares with its own — a mismatch is only warned of (as "deprecated") and the module
//! is loaded all the same; and the library is linked with `-z now` (`filter/build.rs`), so a
//! callback this module declares that the Envoy binary does not export fails the `dlopen`, and
//! Envoy refuses the configuration instead of aborting at the first call. An Envoy that
//! exports every one of them with another meaning or layout passes both: the module is built
//! for one Envoy minor (docs/DEPLOY.md).
//!
//! Panics never cross the boundary: every hook runs its body under `catch_unwind`; a panic in
//! the request hook answers 503 (fail closed), one in the configuration hook refuses the
//! configuration.

#![allow(unsafe_code)]

// `catch_unwind` catches nothing when panics abort: a bug would then take Envoy down instead of
// failing one request with 503 (the `wasm-release` profile aborts; this build must not).
#[cfg(panic = "abort")]
compile_error!("the Envoy dynamic module must be built with panic = \"unwind\"");

use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;

use crate::config::{Config, JwksSource};
use crate::gauges::{self, Reporter};
use crate::headers::{text, Header};
use crate::host::{DispatchError, Host, IssuerCall, Level, Now, Report, Stats};
use crate::request::{self, Flow};

use super::{with_fetcher, Fetcher, Shared, TickGate, View, TICK_MS};

/// The ABI version this module was written against: Envoy 1.40.0's
/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` (found by loading: 1.40.0 matches `v0.2.0`),
/// NUL-terminated.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

// ---------------------------------------------------------------------------------------------
// Types (abi.h "Common Types" and "HTTP Filter Types").

type ConfigEnvoyPtr = *mut c_void;
type ConfigModulePtr = *const c_void;
type FilterEnvoyPtr = *mut c_void;
type FilterModulePtr = *const c_void;
type SchedulerPtr = *mut c_void;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    fn null() -> ModuleBuffer {
        ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl EnvoyHttpHeader {
    /// An entry before Envoy fills it.
    const EMPTY: EnvoyHttpHeader = EnvoyHttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// How many request headers [`Request::with_request_headers`] reads into arrays on the stack
/// (1 KiB for Envoy's entries, 1.5 KiB for their views); a request with more gets heap arrays.
const INLINE_HEADERS: usize = 32;

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// `envoy_dynamic_module_type_on_http_filter_request_headers_status_{Continue,StopIteration}`
/// (the same values for every `*_status` enum used here).
const STATUS_CONTINUE: u32 = 0;
const STATUS_STOP_ITERATION: u32 = 1;
/// `envoy_dynamic_module_type_http_callout_init_result_*`.
const CALLOUT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_result_Success`.
const CALLOUT_RESULT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_log_level_*`.
const LOG_TRACE: u32 = 0;
const LOG_DEBUG: u32 = 1;
const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;

// ---------------------------------------------------------------------------------------------
// Callbacks Envoy implements (only those the filter calls).

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result_headers: *mut EnvoyHttpHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);
}

// ---------------------------------------------------------------------------------------------
// Safe wrappers.

fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => LOG_TRACE,
        Level::Debug => LOG_DEBUG,
        Level::Info => LOG_INFO,
        Level::Warn => LOG_WARN,
        Level::Error => LOG_ERROR,
    };
    // SAFETY: plain values; the message outlives the call.
    unsafe {
        if envoy_dynamic_module_callback_log_enabled(level) {
            let line = format!("weauth: {message}");
            envoy_dynamic_module_callback_log(level, ModuleBuffer::of(line.as_bytes()));
        }
    }
}

/// The wall clock in Unix milliseconds (0 if it reads before 1970): what a token's `exp`,
/// `nbf` and `iat`, and a revocation entry's `until`, are judged by — nothing is scheduled on
/// it ([`mono_ms`]).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds on `Instant` (Linux: `CLOCK_MONOTONIC`, which NTP may slew but never steps,
/// nor does `date -s`), counted from 1 at the first reading in the process: every schedule
/// and age of this build is reckoned on it ([`Now::mono_ms`]). One epoch per process, not per
/// configuration, because the readings meet across threads and configurations (a worker's
/// unknown-`kid` hint, the clock thread's look at a tick due, a state a new configuration
/// joins). From 1, since 0 means "never" or "at once" in the state's atomics.
fn mono_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Both clocks, read once at a hook's edge.
fn clocks() -> Now {
    Now {
        unix_ms: unix_ms(),
        mono_ms: mono_ms(),
    }
}

/// Counter and gauge ids, defined once in `on_http_filter_config_new` (Envoy freezes stat
/// creation after it). Names as the wasm build's: `weauth.<name>`, `weauth.denied.<reason>`.
/// The counters every request may touch are also resolved once into their own fields, so the
/// request path increments them without a search by name.
#[derive(Debug, Default)]
struct Ids {
    /// This configuration on the process's gauge board ([`crate::gauges`]).
    reporter: Reporter,
    counters: Vec<(&'static str, usize)>,
    denied: Vec<(&'static str, usize)>,
    gauges: Vec<(&'static str, usize)>,
    /// `weauth.allowed`, `weauth.anonymous`, `weauth.cache_hit`, `weauth.cache_miss`: `None`
    /// when Envoy refused to define it (as a name missing from `counters`).
    allowed: Option<usize>,
    anonymous: Option<usize>,
    cache_hit: Option<usize>,
    cache_miss: Option<usize>,
}

impl Ids {
    fn define(config: ConfigEnvoyPtr) -> Ids {
        let mut counters = Vec::new();
        let mut denied = Vec::new();
        let mut gauges = Vec::new();
        for name in crate::metrics_names::COUNTERS {
            if let Some(id) = define(config, &format!("weauth.{name}"), false) {
                counters.push((*name, id));
            }
        }
        for reason in crate::metrics_names::DENY_REASONS {
            if let Some(id) = define(config, &format!("weauth.denied.{reason}"), false) {
                denied.push((*reason, id));
            }
        }
        for name in crate::metrics_names::GAUGES {
            if let Some(id) = define(config, &format!("weauth.{name}"), true) {
                gauges.push((*name, id));
            }
        }
        Ids::new(counters, denied, gauges)
    }

    /// The ids as defined, with the per-request counters looked up once.
    fn new(
        counters: Vec<(&'static str, usize)>,
        denied: Vec<(&'static str, usize)>,
        gauges: Vec<(&'static str, usize)>,
    ) -> Ids {
        Ids {
            reporter: Reporter::next(),
            allowed: Ids::find(&counters, "allowed"),
            anonymous: Ids::find(&counters, "anonymous"),
            cache_hit: Ids::find(&counters, "cache_hit"),
            cache_miss: Ids::find(&counters, "cache_miss"),
            counters,
            denied,
            gauges,
        }
    }

    fn find(list: &[(&'static str, usize)], name: &str) -> Option<usize> {
        list.iter().find(|(n, _)| *n == name).map(|(_, id)| *id)
    }
}

/// A configuration gone: off the gauge board. The stats show the worst of the others at their
/// next report (their fetcher's next tick: an answer, a retry, at the latest
/// [`super::IDLE_TICK_MS`]): the configuration's Envoy pointer, which a write now would need,
/// is being destroyed, possibly on another thread.
impl Drop for Ids {
    fn drop(&mut self) {
        gauges::board().remove(self.reporter);
    }
}

fn define(config: ConfigEnvoyPtr, name: &str, gauge: bool) -> Option<usize> {
    let mut id = 0usize;
    // SAFETY: `config` is the pointer Envoy passed to this hook; no labels.
    let result = unsafe {
        if gauge {
            envoy_dynamic_module_callback_http_filter_config_define_gauge(
                config,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        } else {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                config,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        }
    };
    (result == METRICS_SUCCESS).then_some(id)
}

/// The Envoy configuration pointer, valid on the main thread between `config_new` and
/// `config_destroy` (the hooks that hand it out).
#[derive(Clone, Copy)]
struct EnvoyConfig(ConfigEnvoyPtr);

impl IssuerCall for EnvoyConfig {
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u64, DispatchError> {
        let mut raw = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: main thread, inside a hook that received this pointer; every buffer outlives
        // the call (Envoy copies them into its request).
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                ModuleBuffer::null(),
                timeout_ms,
            )
        };
        match result {
            CALLOUT_SUCCESS => Ok(id),
            1 => Err(DispatchError("missing required headers".into())),
            2 => Err(DispatchError::no_cluster()),
            3 => Err(DispatchError("duplicate callout id".into())),
            _ => Err(DispatchError::failed_at_once()),
        }
    }
}

/// Reports of the main-thread fetcher, through the configuration's stats.
struct ConfigReport<'a> {
    config: EnvoyConfig,
    ids: &'a Ids,
}

impl Report for ConfigReport<'_> {
    fn log(&self, level: Level, message: &str) {
        log(level, message);
    }

    fn count(&self, name: &'static str) {
        if let Some(id) = Ids::find(&self.ids.counters, name) {
            // SAFETY: main thread, inside a hook that received this pointer.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    self.config.0,
                    id,
                    std::ptr::null_mut(),
                    0,
                    1,
                );
            }
        }
    }

    /// Sets this configuration's value; the stat shows the worst of the process's
    /// configurations ([`crate::gauges`]).
    fn gauge(&self, name: &'static str, value: u64) {
        if let Some(id) = Ids::find(&self.ids.gauges, name) {
            let shown = gauges::board().set(self.ids.reporter, name, value);
            // SAFETY: as above.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    self.config.0,
                    id,
                    std::ptr::null_mut(),
                    0,
                    shown,
                );
            }
        }
    }
}

/// A configuration's scheduler on the [`Clock`]. The clock thread commits to it holding no
/// lock: Envoy's commit holds a strong reference to the configuration for the call, so when
/// Envoy's main thread drops its own meanwhile, the commit's is the last one and the
/// configuration is destroyed *on the clock thread, inside the commit* — and that destroy
/// removes this scheduler from the clock. (Committing under the clock's lock, as before, then
/// locked it twice on one thread: the clock thread hung, and with it Envoy's main thread at
/// the next configuration's start or end.) So who deletes the scheduler is decided by its
/// state: removed while idle, the remover deletes it; removed during a commit, the committing
/// thread does once the commit returns; never committed to after either.
struct Slot {
    raw: SchedulerPtr,
    state: AtomicU8,
    /// Whether its configuration needs a tick: the clock asks Envoy only then.
    gate: TickGate,
}

/// [`Slot::state`]: on the clock, not being committed to.
const IDLE: u8 = 0;
/// On the clock, a commit in progress.
const COMMITTING: u8 = 1;
/// Removed from the clock; deleted, or to be deleted by the thread whose commit is in progress.
const REMOVED: u8 = 2;

// SAFETY: Envoy's configuration scheduler posts to the main dispatcher and may be committed to
// from any thread ("safe to call from any thread"); the state decides which one thread deletes
// it, after any commit to it has returned.
unsafe impl Send for Slot {}
// SAFETY: as above (commit takes no exclusive access; the state is atomic).
unsafe impl Sync for Slot {}

impl Slot {
    /// Commits when a tick is due at `now_ms` ([`mono_ms`]), unless removed; deletes it when
    /// it was removed during the commit.
    fn tick(&self, now_ms: u64) {
        self.tick_with(
            now_ms,
            || {
                committing(|| {
                    // SAFETY: not removed (the state says so), hence not deleted.
                    unsafe {
                        envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                            self.raw, 0,
                        )
                    }
                })
            },
            // SAFETY: removed during the commit, which has returned: no one else deletes it.
            || unsafe {
                envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.raw)
            },
        );
    }

    fn tick_with(&self, now_ms: u64, commit: impl FnOnce(), delete: impl FnOnce()) {
        if !self.gate.due(now_ms) {
            return;
        }
        if self
            .state
            .compare_exchange(IDLE, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        commit();
        if self
            .state
            .compare_exchange(COMMITTING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            delete();
        }
    }

    /// Once off the clock's list: deletes it, or leaves that to the commit in progress.
    fn remove(&self) {
        // SAFETY: idle until now, so no commit is in progress or will start: no one else
        // deletes it.
        self.remove_with(|| unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.raw)
        });
    }

    fn remove_with(&self, delete: impl FnOnce()) {
        if self.state.swap(REMOVED, Ordering::AcqRel) == IDLE {
            delete();
        }
    }
}

/// The one thread per Envoy that only keeps time (the ABI has no per-configuration timer):
/// every [`TICK_MS`] it looks for a configuration whose tick is due ([`TickGate`]: the one
/// fetching for its state, when a tick has work the answers do not bring — with the feed
/// healthy, none) and asks Envoy to run that one's tick on the main thread, through its
/// scheduler — one thread however many configurations are draining after updates. Started with the first such configuration, stopped with the last
/// (and joined, unless the last is destroyed on the clock thread itself: see [`Slot`]; the
/// module is then kept loaded, [`pin_module`], so that the thread can return into it).
struct Clock {
    slots: Vec<Arc<Slot>>,
    /// The thread, and what tells it to stop.
    thread: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

/// The clock thread's name.
const CLOCK_THREAD: &str = "weauth-tick";

static CLOCK: Mutex<Clock> = Mutex::new(Clock {
    slots: Vec::new(),
    thread: None,
});

fn clock() -> std::sync::MutexGuard<'static, Clock> {
    CLOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The clock thread: commits every scheduler on the clock whose tick is due, the clock's lock
/// held only to copy the list (see [`Slot`]).
fn keep_time(stop: &AtomicBool) {
    loop {
        // Woken early to stop (a spurious wake-up only ticks early).
        std::thread::park_timeout(Duration::from_millis(TICK_MS));
        let slots = {
            let clock = clock();
            if stop.load(Ordering::Acquire) {
                return;
            }
            clock.slots.clone()
        };
        let now = mono_ms();
        for slot in &slots {
            slot.tick(now);
        }
    }
}

/// Keeps this library loaded until Envoy exits, whatever configurations come and go: Envoy
/// unloads a module with its last configuration unless `do_not_close` is set, and a
/// configuration destroyed on the clock thread (inside a commit) returns from the destroy into
/// the clock thread's code. The `RTLD_NODELETE` reference Envoy's `do_not_close` would take,
/// taken by the module itself, once.
fn pin_module() {
    static PINNED: std::sync::Once = std::sync::Once::new();
    PINNED.call_once(|| {
        let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
        let here = pin_module as fn() as *const c_void;
        // SAFETY: dladdr fills `info` for an address in a loaded object (this function); on
        // success `dli_fname` is that object's path, NUL-terminated, valid while it is loaded.
        let pinned = unsafe {
            libc::dladdr(here, info.as_mut_ptr()) != 0 && {
                let path = info.assume_init().dli_fname;
                !path.is_null()
                    && !libc::dlopen(
                        path,
                        libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
                    )
                    .is_null()
            }
        };
        if !pinned {
            log(
                Level::Warn,
                "could not keep the module loaded (dladdr/dlopen RTLD_NODELETE): set \
                 `do_not_close: true` in its dynamic_module_config",
            );
        }
    });
}

/// A configuration's place on the [`Clock`]: its scheduler, ticked until this is dropped.
struct Ticker {
    slot: Arc<Slot>,
}

impl Ticker {
    fn start(config: ConfigEnvoyPtr, gate: TickGate) -> Option<Ticker> {
        // SAFETY: inside `config_new`, with the pointer Envoy passed.
        let raw = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        if raw.is_null() {
            return None;
        }
        pin_module();
        let mut clock = clock();
        if clock.thread.is_none() {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            let spawned = std::thread::Builder::new()
                .name(CLOCK_THREAD.into())
                .spawn(move || keep_time(&flag));
            match spawned {
                Ok(thread) => clock.thread = Some((thread, stop)),
                Err(_) => {
                    drop(clock);
                    // SAFETY: created above and held by nothing else.
                    unsafe {
                        envoy_dynamic_module_callback_http_filter_config_scheduler_delete(raw)
                    };
                    return None;
                }
            }
        }
        let slot = Arc::new(Slot {
            raw,
            state: AtomicU8::new(IDLE),
            gate,
        });
        clock.slots.push(Arc::clone(&slot));
        Some(Ticker { slot })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let last = {
            let mut clock = clock();
            clock.slots.retain(|slot| !Arc::ptr_eq(slot, &self.slot));
            if clock.slots.is_empty() {
                clock.thread.take()
            } else {
                None
            }
        };
        self.slot.remove();
        if let Some((thread, stop)) = last {
            stop.store(true, Ordering::Release);
            if thread.thread().id() == std::thread::current().id() {
                // Destroyed inside the clock's own commit: it stops at its next turn (no
                // thread joins itself; the module stays loaded, `pin_module`).
                return;
            }
            // At once, not after the rest of its sleep: Envoy's main thread waits here.
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The in-module configuration: what `config_new` returns and every hook receives.
struct Module {
    shared: Arc<Shared>,
    ids: Ids,
    /// Main thread only; a mutex to make that checkable rather than assumed.
    fetcher: Mutex<Fetcher>,
    /// Taken by the destroy hook, on whatever thread that runs, while a fetch answer on the
    /// main thread may still be reading the rest (see [`Grave`]): hence behind a lock.
    ticker: Mutex<Option<Ticker>>,
    /// The thread that made it: Envoy's main thread, where its fetch answers and ticks run.
    /// A destroy elsewhere cannot free it at once ([`Grave`]).
    made_on: ThreadId,
}

// Envoy calls the request hooks of one configuration from every worker thread at once, through
// the raw pointer `config_new` returned: the module must be shareable (checked here, since the
// pointer casts cannot check it).
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Module>();
};

/// A configuration Envoy destroyed where it could not be freed at once, freed by the next
/// hook of the main thread (the thread that made it) that is not one of its own.
///
/// Envoy 1.40 runs a configuration's destructor wherever its last reference goes, and that can
/// be off the main thread: on the clock thread, when Envoy's scheduler commit held the last
/// reference ([`Slot`]) — or on a worker, should a stream there hold the last one. The destructor
/// calls the destroy hook *before* it clears its pointer to the module's configuration and
/// cancels its callouts, and a callout's answer holds no reference to the configuration: on
/// the main thread, an answer that found the pointer still set may be inside the callout hook,
/// using the module, while the destroy hook runs on the other thread. Freed there, the module
/// would be freed under it. So it is only retired there (its fetching handed over,
/// [`Shared::retire`], and its ticker stopped) and buried; the main thread's hooks run one
/// after the other, so at the start of the next one none is still using it — save the hook
/// called for that very configuration, which the same window of Envoy's destructor lets in
/// (its pointer not yet cleared): that one spares it, for the hook after. And only once
/// Envoy's destructor is over on the other thread (`free_after`): until it has cleared the
/// pointer, an answer for the configuration may still come in on the main thread, after any
/// number of other hooks. On the clock thread the destructor runs inside the commit, so the
/// grave is settled when the commit returns ([`committing`]); on a worker (no commit to wait
/// for) after [`WORKER_MARGIN`] — the few statements left of the destructor, with a margin for
/// a descheduled thread, not a proof. Envoy's own object is freed by the destructor all the
/// same; what an answer in that window does with it is Envoy's to fix (an answer holds a plain
/// reference to it), and rare: the clock asks for a tick only when one has work
/// ([`TickGate`]). A grave is freed only by a later main-thread hook: with none (the last
/// configuration gone), it is kept until the next configuration is made.
struct Grave {
    module: *const Module,
    made_on: ThreadId,
    /// The thread whose destroy buried it.
    buried_on: ThreadId,
    /// From when it may be freed; `None` while the commit it was destroyed in has not returned.
    free_after: Option<Instant>,
}

/// How long after a destroy on a worker its module is kept at least (see [`Grave`]).
const WORKER_MARGIN: Duration = Duration::from_secs(1);

// SAFETY: a `Module` is `Send + Sync` (checked above); the pointer is turned back into its box
// once, on `made_on`, by the hook that takes it out of the graveyard.
unsafe impl Send for Grave {}

static GRAVEYARD: Mutex<Vec<Grave>> = Mutex::new(Vec::new());

fn graveyard() -> std::sync::MutexGuard<'static, Vec<Grave>> {
    GRAVEYARD.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// How many of the main thread's hooks are in progress on this thread: more than one when
    /// Envoy calls one back from inside another (a fetch it fails at once, inside the
    /// fetcher's own dispatch, answers inline). Only the outermost may free the graveyard.
    static MAIN_HOOKS: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread (the clock thread) is inside a scheduler commit ([`committing`]).
    static IN_COMMIT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `commit` (the clock thread's scheduler commit) and then settles the graves of the
/// configurations Envoy destroyed inside it: the commit held the last reference, so Envoy's
/// destructor has run to its end by the time it returns (see [`Grave`]).
fn committing(commit: impl FnOnce()) {
    let _ = IN_COMMIT.try_with(|flag| flag.set(true));
    commit();
    let _ = IN_COMMIT.try_with(|flag| flag.set(false));
    let here = std::thread::current().id();
    let now = Instant::now();
    for grave in graveyard().iter_mut() {
        if grave.buried_on == here && grave.free_after.is_none() {
            grave.free_after = Some(now);
        }
    }
}

/// One of the main thread's hooks in progress (a configuration made, ticked, answered or
/// destroyed there), from its start to its end.
struct MainHook;

impl MainHook {
    /// At the start of a main-thread hook called for `current` (null: none yet): the
    /// outermost frees the configurations this thread made that were buried, except
    /// `current`'s.
    fn enter(current: ConfigModulePtr) -> MainHook {
        let outermost = MAIN_HOOKS
            .try_with(|hooks| {
                hooks.set(hooks.get().saturating_add(1));
                hooks.get() == 1
            })
            .unwrap_or(false);
        if outermost {
            free_buried(current, Instant::now());
        }
        MainHook
    }

    /// Whether none of the main thread's hooks is in progress on this thread.
    fn idle() -> bool {
        MAIN_HOOKS
            .try_with(|hooks| hooks.get() == 0)
            .unwrap_or(false)
    }
}

impl Drop for MainHook {
    fn drop(&mut self) {
        let _ = MAIN_HOOKS.try_with(|hooks| hooks.set(hooks.get().saturating_sub(1)));
    }
}

/// Buries a configuration Envoy destroyed, to be freed by a later hook on `made_on` once
/// Envoy's destructor is over ([`Grave`]).
fn bury(module: *const Module, made_on: ThreadId) {
    let here = std::thread::current().id();
    let now = Instant::now();
    let free_after = if IN_COMMIT.try_with(Cell::get).unwrap_or(false) {
        None
    } else if here == made_on {
        // Called back from inside another of its hooks: the destructor ends before that does.
        Some(now)
    } else {
        Some(now + WORKER_MARGIN)
    };
    graveyard().push(Grave {
        module,
        made_on,
        buried_on: here,
        free_after,
    });
}

/// Frees the buried configurations made on this thread that are settled at `now`, but
/// `spare`'s (see [`Grave`]).
fn free_buried(spare: ConfigModulePtr, now: Instant) {
    let here = std::thread::current().id();
    let due: Vec<Grave> = {
        let mut graves = graveyard();
        if graves.is_empty() {
            return;
        }
        let (due, kept) = std::mem::take(&mut *graves).into_iter().partition(|grave| {
            grave.made_on == here
                && !std::ptr::eq(grave.module.cast(), spare)
                && grave.free_after.is_some_and(|after| after <= now)
        });
        *graves = kept;
        due
    };
    // Outside the lock: a configuration's drop may take others (the clock's).
    for grave in due {
        // SAFETY: the box `config_new` made, which Envoy destroyed and the destroy hook
        // buried; taken out of the graveyard here, once. On the thread that made it, at the
        // start of the outermost of its hooks, and not the one called for it, after Envoy's
        // destructor is over: no hook is using it, and Envoy calls none for it any more.
        drop(unsafe { Box::from_raw(grave.module.cast_mut()) });
    }
}

/// One request's host: the filter pointer Envoy passed to the hook.
struct Request<'a> {
    filter: FilterEnvoyPtr,
    ids: &'a Ids,
}

impl Request<'_> {
    /// Envoy's `setCopy`, or its `remove` for a null value: true unless Envoy had no request
    /// header map to edit.
    fn set(&self, name: &str, value: ModuleBuffer) -> bool {
        // SAFETY: inside a request hook with Envoy's filter pointer; buffers outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.filter,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    fn increment(&self, id: Option<usize>) {
        if let Some(id) = id {
            // SAFETY: inside a request hook with Envoy's filter pointer; no labels.
            unsafe {
                envoy_dynamic_module_callback_http_filter_increment_counter(
                    self.filter,
                    id,
                    std::ptr::null_mut(),
                    0,
                    1,
                );
            }
        }
    }
}

impl Host for Request<'_> {
    fn now(&self) -> Now {
        clocks()
    }

    fn log(&self, level: Level, message: &str) {
        log(level, message);
    }

    /// Views into Envoy's own header map: no copy unless a value is not UTF-8. The array Envoy
    /// fills and the views are on the stack when the request has at most [`INLINE_HEADERS`]
    /// headers (nearly every request): nothing is allocated.
    fn with_request_headers<R>(&self, read: impl FnOnce(&[Header<'_>]) -> R) -> R {
        // SAFETY: inside a request hook with Envoy's filter pointer.
        let size = unsafe {
            envoy_dynamic_module_callback_http_get_headers_size(self.filter, REQUEST_HEADER)
        };
        if size == 0 {
            return read(&[]);
        }
        with_header_array(size, |raw| {
            // SAFETY: inside a request hook; the array holds exactly the host's own count of
            // entries, which Envoy fills. The buffers they point to are Envoy's header map's
            // own: they live until the hook returns or the map changes. The views live only
            // for `read`, during which `self` stays borrowed, so no edit can change the map.
            let views = unsafe {
                if !envoy_dynamic_module_callback_http_get_headers(
                    self.filter,
                    REQUEST_HEADER,
                    raw.as_mut_ptr(),
                ) {
                    return read(&[]);
                }
                views(raw)
            };
            read(&views)
        })
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        self.set(name, ModuleBuffer::of(value.as_bytes()))
    }

    /// Envoy's `addCopy`: no look for copies to replace, which a set (`setCopy`) makes. False
    /// also for an empty value (the glue sends none).
    fn add_request_header(&mut self, name: &str, value: &str) -> bool {
        // SAFETY: inside a request hook with Envoy's filter pointer; buffers outlive the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.filter,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    fn remove_request_header(&mut self, name: &str) -> bool {
        // A null value removes the header (abi.h).
        self.set(name, ModuleBuffer::null())
    }

    /// Envoy's dynamic-module host leaves the route cache alone on a header edit (its wasm
    /// host clears it on each): cleared once here, after the last edit.
    fn headers_edited(&mut self) {
        // SAFETY: inside a request hook with Envoy's filter pointer.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.filter) }
    }

    fn send_local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        // Envoy writes a gRPC request's local reply as a gRPC answer, with the grpc-status
        // this ABI passes as a literal 0 (OK) unless the reply carries its own.
        let grpc = self.with_request_headers(|request| {
            crate::headers::first(request, "content-type").is_some_and(crate::request::is_grpc)
        });
        let grpc_status = [("grpc-status", crate::request::grpc_status(status))];
        let all: Vec<(&str, &str)> = headers
            .iter()
            .chain(grpc_status.iter().filter(|_| grpc))
            .copied()
            .collect();
        send_response(self.filter, status, &all, body);
    }
}

impl Stats for Request<'_> {
    fn allowed(&self) {
        self.increment(self.ids.allowed);
    }
    fn anonymous(&self) {
        self.increment(self.ids.anonymous);
    }
    fn cache_hit(&self) {
        self.increment(self.ids.cache_hit);
    }
    fn cache_miss(&self) {
        self.increment(self.ids.cache_miss);
    }
    fn denied(&self, reason: &'static str) {
        self.increment(Ids::find(&self.ids.denied, reason));
    }
    fn count(&self, name: &'static str) {
        self.increment(Ids::find(&self.ids.counters, name));
    }
}

/// # Safety
/// `ptr` must point to `len` readable bytes (or be null with any `len`).
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// Runs `fill` on an array of `size` empty header entries: on the stack when `size` is at most
/// [`INLINE_HEADERS`], on the heap otherwise.
fn with_header_array<R>(size: usize, fill: impl FnOnce(&mut [EnvoyHttpHeader]) -> R) -> R {
    let mut inline = [EnvoyHttpHeader::EMPTY; INLINE_HEADERS];
    match inline.get_mut(..size) {
        Some(raw) => fill(raw),
        None => fill(&mut vec![EnvoyHttpHeader::EMPTY; size]),
    }
}

/// The headers Envoy wrote into `raw`, as text views (see [`view`]).
///
/// # Safety
/// Every entry's pointers must be null or point to their lengths' readable bytes, for as long
/// as `'a`.
unsafe fn views<'a>(raw: &[EnvoyHttpHeader]) -> SmallVec<[Header<'a>; INLINE_HEADERS]> {
    raw.iter().map(|h| view(h)).collect()
}

/// One header as text: borrowed when it is ASCII — nearly every header, checked with
/// `is_ascii` (inlined, a word at a time) — else through [`text`]. Measured natively on ten
/// headers with a 590-byte token (the bench's request): 318 ns to build their views when each
/// name and value went through `from_utf8` (a call each; its ASCII fast path only once its
/// input is word-aligned), 85 ns with this check first. In Envoy (`perf`, with the views on
/// the stack and the token's `,` search by `memchr`), the module's own code on an allowed
/// request went from 0.70 to 0.56 µs.
///
/// # Safety
/// As [`bytes`], for both of the entry's buffers, for as long as `'a`.
unsafe fn view<'a>(h: &EnvoyHttpHeader) -> Header<'a> {
    let name = bytes(h.key_ptr, h.key_length);
    let value = bytes(h.value_ptr, h.value_length);
    if name.is_ascii() && value.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        (
            Cow::Borrowed(std::str::from_utf8_unchecked(name)),
            Cow::Borrowed(std::str::from_utf8_unchecked(value)),
        )
    } else {
        (text(name), text(value))
    }
}

/// # Safety
/// `module` must be a pointer returned by [`envoy_dynamic_module_on_http_filter_config_new`]
/// and not yet destroyed.
unsafe fn module<'a>(module: ConfigModulePtr) -> Option<&'a Module> {
    module.cast::<Module>().as_ref()
}

// ---------------------------------------------------------------------------------------------
// Event hooks (Envoy calls these).

/// Returns the ABI version this module was built against.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    ABI_VERSION.as_ptr()
}

/// Parses the configuration (the same JSON as the wasm plugin's), defines the stats and starts
/// the ticker. A null return makes Envoy refuse the configuration.
///
/// # Safety
/// Called by Envoy with valid buffers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    let raw = bytes(config.ptr, config.length);
    let built = catch_unwind(AssertUnwindSafe(|| {
        let _hook = MainHook::enter(std::ptr::null());
        let config = match Config::parse_with_env(raw, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(err) => {
                log(
                    Level::Error,
                    &format!("invalid filter configuration: {err}"),
                );
                return None;
            }
        };
        for warning in &config.warnings {
            log(Level::Warn, &format!("filter configuration: {warning}"));
        }
        let ids = Ids::define(config_envoy);
        if let JwksSource::Inline(keys) = &config.jwks {
            // Fetched keys are counted by the fetcher; these, once, here (as the wasm build).
            let report = ConfigReport {
                config: EnvoyConfig(config_envoy),
                ids: &ids,
            };
            report.gauge("jwks_keys", keys.len() as u64);
        }
        let fetcher = Fetcher::new(&config, clocks());
        let fetches = fetcher.fetches();
        let summary = config.summary();
        let (shared, start) = Shared::start(config);
        let ticker = if fetches {
            match Ticker::start(config_envoy, shared.tick_gate()) {
                Some(ticker) => Some(ticker),
                None => {
                    log(Level::Error, "could not start the fetchers' tick");
                    return None;
                }
            }
        } else {
            None
        };
        log(Level::Info, &format!("{summary} (native build)"));
        if let Some(message) = start.message(fetches) {
            log(Level::Info, &message);
        }
        Some(Box::new(Module {
            shared,
            ids,
            fetcher: Mutex::new(fetcher),
            ticker: Mutex::new(ticker),
            made_on: std::thread::current().id(),
        }))
    }));
    match built {
        Ok(Some(module)) => Box::into_raw(module).cast_const().cast(),
        Ok(None) => std::ptr::null(),
        Err(_) => {
            log(
                Level::Error,
                "the configuration hook panicked; configuration refused",
            );
            std::ptr::null()
        }
    }
}

/// Frees the configuration at once on the thread that made it (Envoy's main thread), with
/// none of that thread's hooks in progress; else retires and buries it ([`Grave`]).
///
/// # Safety
/// `config` is what `config_new` returned, not destroyed before.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: ConfigModulePtr,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Some(module) = module(config) else {
            return;
        };
        // Off the clock (the last configuration on it stops it) before anything else, on
        // whatever thread this is: on the clock thread itself when a commit held the last
        // reference (see `Slot`).
        let ticker = module
            .ticker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(ticker);
        let made_on = module.made_on;
        let here = std::thread::current();
        if here.id() == made_on && MainHook::idle() {
            let _hook = MainHook::enter(config);
            // SAFETY: the box `config_new` made, destroyed once; on the main thread with none
            // of its hooks in progress, so none is using it. `module` is not used past here.
            drop(Box::from_raw(config.cast::<Module>().cast_mut()));
            return;
        }
        module.shared.retire();
        if here.id() != made_on {
            // A hook of this configuration on the main thread may be past its `retired` check
            // and dispatching a call now. Envoy cancels the configuration's calls once this
            // returns, and one dispatched after that would outlive it, its answer calling into
            // a configuration freed. Waiting for the fetcher closes the window: every hook
            // after this one sees `retired` and dispatches nothing. (Not on the main thread:
            // there the holder could be the hook this destroy was called back from.) Bounded:
            // the main thread could be waiting for this thread meanwhile (a destroy of the
            // clock's last configuration, called back inside that hook, joins the clock
            // thread), and a hook outlasting the bound is not one dispatching now.
            wait_for_fetcher(&module.fetcher, FETCHER_WAIT);
        }
        bury(config.cast(), made_on);
        // Expected of Envoy 1.40 (see `Grave`): told at debug level from the clock thread, at
        // info from any other (a worker, should a stream there hold the last reference; a
        // destroy Envoy called back from inside another hook on the main thread).
        if here.id() == made_on {
            log(
                Level::Debug,
                "a filter configuration was destroyed inside another of the main thread's \
                 hooks: freed at its next one",
            );
            return;
        }
        let (level, thread) = match here.name() {
            Some(CLOCK_THREAD) => (Level::Debug, CLOCK_THREAD),
            Some(name) => (Level::Info, name),
            None => (Level::Info, "unnamed"),
        };
        log(
            level,
            &format!(
                "a filter configuration was destroyed off Envoy's main thread (on {thread}): \
                 retired there, freed at the main thread's next hook"
            ),
        );
    }));
}

/// How long a destroy off the main thread waits for a hook of the configuration there.
const FETCHER_WAIT: Duration = Duration::from_secs(5);

/// Waits until `fetcher` is free or `bound` has passed.
fn wait_for_fetcher(fetcher: &Mutex<Fetcher>, bound: Duration) {
    let started = Instant::now();
    while started.elapsed() < bound {
        match fetcher.try_lock() {
            Ok(_) | Err(std::sync::TryLockError::Poisoned(_)) => return,
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The per-stream filter needs no state of its own: the configuration pointer is returned.
///
/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    _filter_envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    config
}

/// `headers` as the ABI's header array (pointing into them: valid while they are).
fn module_headers(headers: &[(&str, &str)]) -> Vec<ModuleHttpHeader> {
    headers
        .iter()
        .map(|(name, value)| ModuleHttpHeader {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        })
        .collect()
}

/// Answers the request with a local reply (its details `weauth_denied`).
fn send_response(filter: FilterEnvoyPtr, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut raw = module_headers(headers);
    // SAFETY: called inside a request hook with Envoy's filter pointer; every buffer outlives
    // the call.
    unsafe {
        envoy_dynamic_module_callback_http_send_response(
            filter,
            u32::from(status),
            raw.as_mut_ptr(),
            raw.len(),
            ModuleBuffer::of(body),
            ModuleBuffer::of(b"weauth_denied"),
        );
    }
}

/// Runs the shared request glue. A panic answers 503 (fail closed).
///
/// # Safety
/// Called by Envoy with the pointers of a live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter_module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    let Some(module) = module(filter_module) else {
        // Not reachable (a filter's pointer is its configuration's): refused all the same,
        // never passed unchecked — with the reply's usual headers, and a gRPC status (14,
        // UNAVAILABLE: this ABI would otherwise send 0) whatever the request.
        let body = request::unavailable().body();
        let headers = [
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
            ("retry-after", "1"),
            ("grpc-status", request::grpc_status(503)),
        ];
        send_response(filter_envoy, 503, &headers, body.as_bytes());
        return STATUS_STOP_ITERATION;
    };
    let mut host = Request {
        filter: filter_envoy,
        ids: &module.ids,
    };
    let stats = Request {
        filter: filter_envoy,
        ids: &module.ids,
    };
    let flow = request::fail_closed(&mut host, &stats, |host| {
        let mut view = View {
            shared: &module.shared,
        };
        request::on_request_headers(host, &module.shared.config, &mut view, &stats)
    });
    match flow {
        Flow::Continue => STATUS_CONTINUE,
        Flow::Stop => STATUS_STOP_ITERATION,
    }
}

/// The main-thread tick (scheduled by the clock thread).
///
/// # Safety
/// Called by Envoy on the main thread.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    _event_id: u64,
) {
    let Some(module) = module(config) else {
        return;
    };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _hook = MainHook::enter(config);
        let mut call = EnvoyConfig(config_envoy);
        let report = ConfigReport {
            config: call,
            ids: &module.ids,
        };
        let now = clocks();
        with_fetcher(
            &module.fetcher,
            &module.shared,
            &report,
            now.mono_ms,
            |fetcher| fetcher.tick(&module.shared, &mut call, &report, now),
        );
    }));
}

/// A fetch's answer.
///
/// # Safety
/// Called by Envoy on the main thread; the arrays live until the hook returns.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    let Some(module) = module(config) else {
        return;
    };
    let mut status = 0u32;
    let mut body: Vec<&[u8]> = Vec::new();
    if result == CALLOUT_RESULT_SUCCESS {
        let headers = if headers.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(headers, headers_size)
        };
        for header in headers {
            if bytes(header.key_ptr, header.key_length) == b":status" {
                status = std::str::from_utf8(bytes(header.value_ptr, header.value_length))
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
        let chunks = if body_chunks.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(body_chunks, body_chunks_size)
        };
        // The body stays in Envoy's buffer: the fetcher reads the pieces where they are.
        body = chunks
            .iter()
            .map(|chunk| bytes(chunk.ptr, chunk.length))
            .collect();
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _hook = MainHook::enter(config);
        let mut call = EnvoyConfig(config_envoy);
        let report = ConfigReport {
            config: call,
            ids: &module.ids,
        };
        let now = clocks();
        with_fetcher(
            &module.fetcher,
            &module.shared,
            &report,
            now.mono_ms,
            |fetcher| {
                fetcher.on_answer(
                    &module.shared,
                    &mut call,
                    &report,
                    callout_id,
                    status,
                    &body,
                    now,
                )
            },
        );
    }));
}

// The hooks Envoy requires but this filter does not use: pass through.

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    STATUS_CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
) -> u32 {
    STATUS_CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    STATUS_CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    STATUS_CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
) -> u32 {
    STATUS_CONTINUE
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
) {
}

/// The filter pointer is the configuration's: nothing to free.
///
/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
    _filter_module: FilterModulePtr,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _stream_id: u64,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
    _event_id: u64,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
) {
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter_module: FilterModulePtr,
) {
}

/// Per-route configuration is not used: refused (null), so a per-route config fails loudly.
///
/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    log(Level::Error, "per-route configuration is not supported");
    std::ptr::null()
}

/// # Safety
/// Called by Envoy.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_REQUEST: [&str; 4] = ["allowed", "anonymous", "cache_hit", "cache_miss"];

    fn header(key: &[u8], value: &[u8]) -> EnvoyHttpHeader {
        EnvoyHttpHeader {
            key_ptr: key.as_ptr(),
            key_length: key.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    fn slot_of(shared: &Shared) -> Slot {
        Slot {
            raw: std::ptr::null_mut(),
            state: AtomicU8::new(IDLE),
            gate: shared.tick_gate(),
        }
    }

    /// A slot whose configuration is due at every tick (a new state's first tick is due at
    /// once, and nothing here ticks it).
    fn slot() -> Slot {
        slot_of(&Shared::new(crate::fetch::testing::remote_config()))
    }

    /// The clock asks for a tick only once its configuration needs one, and only the
    /// configuration fetching for its state: each ask is a window in which Envoy can destroy
    /// the configuration on the clock thread.
    #[test]
    fn slot_committed_only_when_its_tick_is_due() {
        let (fetching, _) = Shared::start(crate::fetch::testing::remote_config());
        let (joined, _) = Shared::start(crate::fetch::testing::remote_config());
        let (slot, other) = (slot_of(&fetching), slot_of(&joined));
        fetching
            .state
            .next_tick_ms
            .store(NOW + 5_000, Ordering::Release);
        let commits = std::cell::Cell::new(0);
        for now in [NOW, NOW + 100, NOW + 4_999] {
            slot.tick_with(now, || commits.set(commits.get() + 1), || panic!("deleted"));
        }
        assert_eq!(commits.get(), 0, "not due");
        slot.tick_with(
            NOW + 5_000,
            || commits.set(commits.get() + 1),
            || panic!("deleted"),
        );
        assert_eq!(commits.get(), 1);
        // The configuration that joined its state is not asked while the other fetches...
        other.tick_with(NOW + 5_000, || panic!("asked"), || panic!("deleted"));
        // ...and is, at once, when the other has gone (it takes the fetching over).
        drop(slot);
        drop(fetching);
        other.tick_with(NOW, || commits.set(commits.get() + 1), || panic!("deleted"));
        assert_eq!(commits.get(), 2);
    }

    /// The schedules' clock counts from 1 (0 means "never" or "at once" in the state) and never
    /// goes back; the wall clock is Unix time.
    #[test]
    fn clocks_monotonic_from_one_wall_in_unix_time() {
        let first = clocks();
        assert!(first.mono_ms >= 1);
        assert!(first.unix_ms > NOW, "{}", first.unix_ms);
        std::thread::sleep(Duration::from_millis(5));
        let second = clocks();
        assert!(second.mono_ms >= first.mono_ms + 5, "{first:?} {second:?}");
    }

    #[test]
    fn slot_on_the_clock_committed_at_every_tick_due() {
        let slot = slot();
        let commits = std::cell::Cell::new(0);
        for _ in 0..3 {
            slot.tick_with(NOW, || commits.set(commits.get() + 1), || panic!("deleted"));
        }
        assert_eq!(commits.get(), 3);
    }

    #[test]
    fn slot_removed_while_idle_deleted_by_the_remover_and_never_committed_again() {
        let slot = slot();
        let deletes = std::cell::Cell::new(0);
        slot.remove_with(|| deletes.set(deletes.get() + 1));
        assert_eq!(deletes.get(), 1);
        slot.tick_with(
            NOW,
            || panic!("committed after removal"),
            || panic!("deleted twice"),
        );
    }

    /// As when a commit held the configuration's last reference: the configuration's destroy,
    /// inside the commit on the clock thread, removes the slot (and must neither delete the
    /// scheduler under the commit nor wait for it). The committer deletes it once the commit
    /// returns, and never commits to it again.
    #[test]
    fn slot_removed_during_its_commit_deleted_by_the_committer_after_the_commit() {
        let slot = slot();
        let deletes = std::cell::Cell::new(0);
        let committed = std::cell::Cell::new(false);
        slot.tick_with(
            NOW,
            || {
                slot.remove_with(|| panic!("deleted during the commit"));
                committed.set(true);
            },
            || {
                assert!(committed.get(), "deleted before the commit returned");
                deletes.set(deletes.get() + 1);
            },
        );
        assert_eq!(deletes.get(), 1);
        slot.tick_with(
            NOW,
            || panic!("committed after removal"),
            || panic!("deleted twice"),
        );
    }

    /// The same from another thread: a removal racing commits deletes the scheduler exactly
    /// once, after the last commit that began.
    #[test]
    fn slot_removed_from_another_thread_deleted_once_after_the_last_commit() {
        use std::sync::atomic::AtomicUsize;
        for _ in 0..200 {
            let slot = Arc::new(slot());
            let deletes = Arc::new(AtomicUsize::new(0));
            let committing = Arc::new(AtomicBool::new(false));
            let ticker = {
                let (slot, deletes, committing) = (
                    Arc::clone(&slot),
                    Arc::clone(&deletes),
                    Arc::clone(&committing),
                );
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        slot.tick_with(
                            NOW,
                            || {
                                committing.store(true, Ordering::SeqCst);
                                std::hint::spin_loop();
                                committing.store(false, Ordering::SeqCst);
                            },
                            || {
                                deletes.fetch_add(1, Ordering::SeqCst);
                            },
                        );
                    }
                })
            };
            slot.remove_with(|| {
                assert!(!committing.load(Ordering::SeqCst), "deleted under a commit");
                deletes.fetch_add(1, Ordering::SeqCst);
            });
            ticker.join().unwrap();
            assert_eq!(deletes.load(Ordering::SeqCst), 1);
        }
    }

    // Envoy's callbacks that the hooks tested below reach, for this test binary: Envoy's
    // binary defines them. Log lines are kept, with their level.
    static LOGGED: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

    /// Not poisoned by a failed test: a panic in a callback would abort them all.
    fn logged() -> std::sync::MutexGuard<'static, Vec<(u32, String)>> {
        LOGGED.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: u32) -> bool {
        true
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer) {
        // SAFETY: the module's buffer, valid for the call.
        let line = unsafe { bytes(message.ptr, message.length) };
        let line = String::from_utf8_lossy(line).into_owned();
        logged().push((level, line));
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        _config: ConfigEnvoyPtr,
        _callout_id: *mut u64,
        _cluster_name: ModuleBuffer,
        _headers: *mut ModuleHttpHeader,
        _headers_size: usize,
        _body: ModuleBuffer,
        _timeout_milliseconds: u64,
    ) -> u32 {
        2 // ClusterNotFound
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        _config: ConfigEnvoyPtr,
        _id: usize,
        _label_values: *mut ModuleBuffer,
        _label_values_length: usize,
        _value: u64,
    ) -> u32 {
        METRICS_SUCCESS
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        _config: ConfigEnvoyPtr,
        _id: usize,
        _label_values: *mut ModuleBuffer,
        _label_values_length: usize,
        _value: u64,
    ) -> u32 {
        METRICS_SUCCESS
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        _scheduler: SchedulerPtr,
    ) {
    }

    /// A configuration as `config_new` makes it, on this thread (as on Envoy's main thread),
    /// with a state of its own; and what tells whether it is still there (its state is held
    /// by it alone).
    fn module_here(cluster: &str) -> (ConfigModulePtr, std::sync::Weak<Shared>) {
        let config = Config::parse(
            format!(
                r#"{{"issuer":"https://issuer","audiences":["weauth"],
                    "jwks":{{"cluster":"{cluster}"}},
                    "revocation":{{"cluster":"{cluster}","credential":"feed-secret"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let fetcher = Fetcher::new(&config, Now::wall(NOW));
        let shared = Arc::new(Shared::new(config));
        let alive = Arc::downgrade(&shared);
        let module = Box::new(Module {
            shared,
            ids: Ids::default(),
            fetcher: Mutex::new(fetcher),
            ticker: Mutex::new(None),
            made_on: std::thread::current().id(),
        });
        (Box::into_raw(module).cast_const().cast(), alive)
    }

    fn destroy(config: ConfigModulePtr) {
        // SAFETY: a configuration `module_here` made, destroyed once.
        unsafe { envoy_dynamic_module_on_http_filter_config_destroy(config) }
    }

    /// Destroyed on a thread of that name, as Envoy destroys a configuration whose last
    /// reference goes there.
    fn destroy_on(thread: &str, config: ConfigModulePtr) {
        let config = config as usize;
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || destroy(config as ConfigModulePtr))
            .unwrap()
            .join()
            .unwrap();
    }

    /// A fetch's answer (a reset) on this thread, as Envoy's main thread delivers it.
    fn answer(config: ConfigModulePtr) {
        // SAFETY: a configuration `module_here` made, not freed; no headers, no body.
        unsafe {
            envoy_dynamic_module_on_http_filter_config_http_callout_done(
                std::ptr::null_mut(),
                config,
                1,
                1,
                std::ptr::null(),
                0,
                std::ptr::null(),
                0,
            );
        }
    }

    /// Envoy 1.40 destroys a configuration on the clock thread when its scheduler commit held
    /// the last reference, and calls the destroy hook before it stops delivering that
    /// configuration's fetch answers on the main thread: one may be using the module then. It
    /// is kept (retired: its fetching handed over) until the main thread's next hook — but
    /// not by the answer of its own that the same window lets through — and the destroy is
    /// said at debug level, not as an error.
    #[test]
    fn a_configuration_destroyed_off_the_main_thread_is_freed_at_the_main_threads_next_hook() {
        let (config, alive) = module_here("grave_clock");
        let (other, other_alive) = module_here("grave_clock_other");
        // Destroyed inside a commit on the clock thread, as Envoy does when the commit holds
        // the last reference; the commit returns only when the test says so.
        let (destroyed, until_destroyed) = std::sync::mpsc::channel();
        let (finish, until_finished) = std::sync::mpsc::channel::<()>();
        let raw = config as usize;
        let clock = std::thread::Builder::new()
            .name(CLOCK_THREAD.into())
            .spawn(move || {
                committing(|| {
                    destroy(raw as ConfigModulePtr);
                    destroyed.send(()).unwrap();
                    until_finished.recv().unwrap();
                });
            })
            .unwrap();
        until_destroyed.recv().unwrap();
        let shared = alive.upgrade().expect("freed on the clock thread");
        assert!(shared.retired.load(Ordering::SeqCst), "retired there");
        drop(shared);
        // Envoy's destructor not over (the commit has not returned): another configuration's
        // hook on the main thread does not free it — an answer of its own may still come.
        answer(other);
        assert!(
            alive.upgrade().is_some(),
            "freed before the commit returned"
        );
        finish.send(()).unwrap();
        clock.join().unwrap();
        // Another configuration's thread does not free it.
        std::thread::spawn(|| drop(MainHook::enter(std::ptr::null())))
            .join()
            .unwrap();
        assert!(alive.upgrade().is_some(), "freed on another thread");
        // The answer of its own, in the window of Envoy's destructor, spares it...
        answer(config);
        assert!(alive.upgrade().is_some(), "freed by its own answer");
        // ...the next hook on the main thread frees it.
        answer(other);
        assert!(alive.upgrade().is_none(), "still kept");
        assert!(other_alive.upgrade().is_some());
        destroy(other);
        assert!(other_alive.upgrade().is_none());
        let logged = logged();
        let said: Vec<_> = logged
            .iter()
            .filter(|(_, line)| line.contains("destroyed off Envoy's main thread (on weauth-tick)"))
            .collect();
        assert!(!said.is_empty(), "{logged:?}");
        assert!(
            said.iter().all(|(level, _)| *level == LOG_DEBUG),
            "{said:?}"
        );
    }

    /// Destroyed off the main thread while a hook of its own on the main thread holds the
    /// fetcher (past its `retired` check, dispatching a call): the destroy returns only once that
    /// hook is done, so that Envoy's cancelling of the configuration's calls, which follows it,
    /// cannot miss the call the hook dispatched.
    #[test]
    fn a_destroy_off_the_main_thread_waits_for_the_fetcher_in_use() {
        let (config, alive) = module_here("grave_busy");
        // SAFETY: made by `module_here`, not freed until the end of this test.
        let module = unsafe { &*config.cast::<Module>() };
        let busy = module.fetcher.lock().unwrap();
        let raw = config as usize;
        let clock = std::thread::Builder::new()
            .name(CLOCK_THREAD.into())
            .spawn(move || committing(|| destroy(raw as ConfigModulePtr)))
            .unwrap();
        let retired = Instant::now();
        while !module.shared.retired.load(Ordering::SeqCst) {
            assert!(retired.elapsed() < Duration::from_secs(10), "never retired");
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !clock.is_finished(),
            "returned while the fetcher was in use"
        );
        drop(busy);
        clock.join().unwrap();
        // Freed at the main thread's next hook, as any configuration destroyed off it.
        let (other, _) = module_here("grave_busy_other");
        answer(other);
        assert!(alive.upgrade().is_none(), "still kept");
        destroy(other);
    }

    /// The destroy's wait for a hook in progress ends at its bound: the main thread could be
    /// waiting for the destroying thread meanwhile (a nested destroy joining the clock thread).
    #[test]
    fn the_wait_for_a_fetcher_in_use_is_bounded() {
        let (config, alive) = module_here("grave_bounded");
        // SAFETY: made by `module_here`, freed by the destroy below.
        let module = unsafe { &*config.cast::<Module>() };
        let busy = module.fetcher.lock().unwrap();
        let started = Instant::now();
        wait_for_fetcher(&module.fetcher, Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(busy);
        let started = Instant::now();
        wait_for_fetcher(&module.fetcher, Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a free fetcher waited"
        );
        destroy(config);
        assert!(alive.upgrade().is_none());
    }

    /// Destroyed on the main thread, with none of its hooks in progress: freed at once. Inside
    /// one of them (a hook Envoy called back from inside another), buried until the next.
    #[test]
    fn a_configuration_destroyed_on_the_main_thread_is_freed_at_once_unless_inside_a_hook() {
        let (config, alive) = module_here("grave_main");
        destroy(config);
        assert!(alive.upgrade().is_none(), "kept");

        let (config, alive) = module_here("grave_nested");
        let hook = MainHook::enter(std::ptr::null());
        destroy(config);
        assert!(alive.upgrade().is_some(), "freed under a hook in progress");
        drop(MainHook::enter(std::ptr::null()));
        assert!(alive.upgrade().is_some(), "freed by a nested hook");
        drop(hook);
        drop(MainHook::enter(std::ptr::null()));
        assert!(alive.upgrade().is_none(), "kept past the next hook");
    }

    /// Destroyed on a worker thread (its last stream held the last reference): kept as well,
    /// and said at info level.
    #[test]
    fn a_configuration_destroyed_on_a_worker_is_kept_and_said_at_info() {
        let (config, alive) = module_here("grave_worker");
        let before = Instant::now();
        destroy_on("wrk:worker_0", config);
        assert!(alive.upgrade().is_some(), "freed on the worker");
        // Kept for the margin (no commit tells when Envoy's destructor is over there)...
        free_buried(std::ptr::null(), before + WORKER_MARGIN / 2);
        assert!(alive.upgrade().is_some(), "freed within the margin");
        // ...then freed by the main thread's next hook.
        free_buried(std::ptr::null(), Instant::now() + WORKER_MARGIN);
        assert!(alive.upgrade().is_none());
        let logged = logged();
        assert!(
            logged.iter().any(|(level, line)| *level == LOG_INFO
                && line.contains("destroyed off Envoy's main thread (on wrk:worker_0)")),
            "{logged:?}"
        );
    }

    #[test]
    fn ids_per_request_counters_resolved_from_the_defined_ones() {
        let ids = Ids::new(
            vec![
                ("jwks_fetch_ok", 2),
                ("cache_miss", 3),
                ("allowed", 5),
                ("cache_hit", 7),
            ],
            vec![("missing", 11)],
            vec![("jwks_keys", 13)],
        );
        // `anonymous` was not defined (Envoy refused it): not counted, as before.
        assert_eq!(
            (ids.allowed, ids.anonymous, ids.cache_hit, ids.cache_miss),
            (Some(5), None, Some(7), Some(3))
        );
        assert_eq!(Ids::find(&ids.counters, "jwks_fetch_ok"), Some(2));
        assert_eq!(Ids::find(&ids.denied, "missing"), Some(11));
        assert_eq!(Ids::find(&ids.gauges, "jwks_keys"), Some(13));
    }

    #[test]
    fn ids_per_request_counters_are_the_listed_names() {
        let counters = crate::metrics_names::COUNTERS
            .iter()
            .zip(100..)
            .map(|(name, id)| (*name, id))
            .collect();
        let ids = Ids::new(counters, Vec::new(), Vec::new());
        let fields = [ids.allowed, ids.anonymous, ids.cache_hit, ids.cache_miss];
        for (name, field) in PER_REQUEST.into_iter().zip(fields) {
            assert!(field.is_some(), "{name} is not in metrics_names::COUNTERS");
            assert_eq!(field, Ids::find(&ids.counters, name), "{name}");
        }
    }

    #[test]
    fn with_header_array_exact_size_stack_or_heap() {
        for size in [
            1,
            INLINE_HEADERS - 1,
            INLINE_HEADERS,
            INLINE_HEADERS + 1,
            200,
        ] {
            let len = with_header_array(size, |raw| {
                assert!(raw
                    .iter()
                    .all(|h| h.key_ptr.is_null() && h.value_length == 0));
                raw.len()
            });
            assert_eq!(len, size);
        }
    }

    #[test]
    fn views_borrow_utf8_copy_the_rest_lossily() {
        let raw = [
            header(b":path", b"/api/me"),
            header(b"x-bin", b"a\xffb"),
            EnvoyHttpHeader::EMPTY,
            header("x-name".as_bytes(), "café".as_bytes()),
        ];
        // SAFETY: every entry points into the byte strings above (or is null), which outlive
        // the views.
        let views = unsafe { views(&raw) };
        assert_eq!(views.len(), 4);
        // Held inline, on the stack: nothing allocated for a request's views.
        assert!(!views.spilled());
        assert!(matches!(
            views.first(),
            Some((Cow::Borrowed(":path"), Cow::Borrowed("/api/me")))
        ));
        assert!(
            matches!(views.get(1), Some((Cow::Borrowed("x-bin"), Cow::Owned(value))) if value == "a\u{fffd}b")
        );
        assert!(matches!(
            views.get(2),
            Some((Cow::Borrowed(""), Cow::Borrowed("")))
        ));
        // UTF-8 that is not ASCII is borrowed too (the check after the ASCII one).
        assert!(matches!(
            views.get(3),
            Some((Cow::Borrowed("x-name"), Cow::Borrowed("café")))
        ));
    }
}
