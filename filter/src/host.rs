//! What the filter's glue needs from the proxy it runs in, as traits, so that one glue serves
//! two hosts: the proxy-wasm ABI (`wasm_host`, `http`, `root`; wasm32 only) and Envoy's
//! dynamic-module C ABI (`native`; the `envoy-native` feature). Nothing here talks to a host;
//! the glue in [`crate::request`] is written against these traits and unit-tested natively
//! against a mock host (Kuadrant wasm-shim's habit).
//!
//! - [`Host`]: one request — its header map, header edits, the local reply, the clocks
//!   ([`Now`]) and a log line. The header map is handed out as views where the host allows it
//!   (the native build: pointers into Envoy's own map, no copy), borrowed from the host so that
//!   no edit can be made while they are held (an edit may free what they point to).
//! - [`Stats`]: the filter's counters (the same `weauth.*` names in both builds).
//! - [`KeyState`]: the keys, the revocation set and the token cache a decision reads — per VM
//!   (synced from shared data) in the wasm build, one per Envoy (lock-free reads) in the native
//!   build.
//! - [`IssuerCall`]: an HTTP call to the issuer through the configured Envoy cluster (so a
//!   mesh's mTLS, timeouts and outlier detection apply).
//! - [`Report`]: what the fetchers ([`crate::fetch`]) say — log lines, counters, gauges.
//! - [`WasmClock`]: how the proxy-wasm build reads the two clocks of [`Now`] — both at a root
//!   context's hook, the monotonic one derived from the wall clock per request (pure, so that
//!   it is tested natively).

use crate::config::Require;
use crate::headers::Header;
use crate::verify::{Extracted, Verdict};

/// A log level, mapped onto each host's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One reading of the host's clocks, taken once at the edge (a request, a tick, a fetch's
/// answer) and passed down.
///
/// Two clocks, because a step of the wall clock (NTP setting a VM's clock at boot, an
/// operator's `date -s`) must not move a schedule: stepped back, a fetch due "later" would
/// wait out the step too — no key refresh and no revocation reaching the edge for that long;
/// stepped forward, the revocation set would look stale at once. So every schedule and age
/// (a fetch due or given up, a backoff, a fetcher lease's expiry, when the feed last answered
/// and how long ago that was) is reckoned on [`Now::mono_ms`], and only what is compared with
/// times written in a token or by the issuer (`exp`, `nbf`, `iat`; a revocation entry's
/// `until`) reads [`Now::unix_ms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix milliseconds (0 if the host cannot say).
    pub unix_ms: u64,
    /// Milliseconds on a clock that never steps, from an arbitrary start: only differences
    /// between two readings mean anything. Never 0 (0 means "never" or "at once" in the
    /// state). The native build's counts from 1 at a process-wide epoch
    /// (`std::time::Instant`); the proxy-wasm build's is Envoy's process-wide steady clock
    /// ([`WasmClock`]), so its readings compare across the VMs of one Envoy, as shared data
    /// needs.
    pub mono_ms: u64,
}

impl Now {
    /// One reading as both clocks: for tests, examples and harnesses where the wall clock
    /// does not step. Neither build reads its clocks so any more ([`WasmClock`]; the native
    /// build's `ffi::clocks`).
    pub const fn wall(unix_ms: u64) -> Now {
        Now {
            unix_ms,
            mono_ms: unix_ms,
        }
    }
}

/// How far a request's reading of the monotonic clock may run ahead of its VM's last hook
/// reading ([`WasmClock::request`]): ten ticks. A tick comes every 100 ms, so a request is
/// rarely more than a tick past the last reading; the cap only bites when the wall clock
/// stepped forward since.
pub const REQUEST_LEAD_MAX_MS: u64 = 1_000;

/// The proxy-wasm build's clocks, kept per VM (in the VM's `Worker`).
///
/// The proxy-wasm ABI's own clock call (`proxy_get_current_time_nanoseconds`) is the wall
/// clock; the monotonic clock is WASI's `clock_time_get` with clock id 1, which
/// proxy-wasm-cpp-host answers from the host's `getMonotonicTimeNanoseconds` — in Envoy its
/// process-wide steady clock, one for every VM of the process, as shared data is (a lease's
/// expiry, the set's `last_ok_ms`, an unknown-`kid` hint written by one VM are compared by
/// another).
///
/// Both clocks are read at each root-context hook (the configuration, a tick, an issuer's
/// answer: [`WasmClock::hook`]). A request reads only the wall clock — its one clock call, as
/// before: the per-request host calls are a cost target — and reckons the monotonic time as
/// the VM's last hook reading plus the wall clock's progress since, between 0 and
/// [`REQUEST_LEAD_MAX_MS`] ([`WasmClock::request`]). Without a step that is the monotonic time
/// to within the wall clock's slew over a tick. A step of the wall clock misleads a request
/// by at most [`REQUEST_LEAD_MAX_MS`] ahead, never behind the last hook, and only until the
/// next tick reads both clocks again: stepped forward an hour, the set does not look an hour
/// older (a 503 for every protected request under `stale_mode: deny`), nor does an
/// unknown-`kid` hint or this VM's own limit on them lie an hour ahead (a JWKS refetch every
/// `min_refetch_seconds` for an hour; no hint from this VM for an hour); stepped back, no
/// hint goes back before the last tick. The cap's cost: a VM whose ticks stall for longer
/// than it (a busy event loop) under-reckons the set's age by the stall's excess until its
/// next tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmClock {
    /// The last hook's reading.
    last: Now,
}

impl WasmClock {
    /// The first reading (the configuration's): the wall clock in Unix milliseconds and the
    /// monotonic clock in nanoseconds (`None` if the host refused it: then the wall clock
    /// stands in, as in the builds before, and [`WasmClock::hook`] carries it on).
    pub fn start(unix_ms: u64, mono_ns: Option<u64>) -> WasmClock {
        WasmClock {
            last: Now {
                unix_ms,
                mono_ms: mono_ns.map_or(unix_ms.max(1), mono_ms),
            },
        }
    }

    /// The last hook's reading.
    pub fn now(&self) -> Now {
        self.last
    }

    /// A root-context hook's reading of both clocks, kept for the requests that follow. A
    /// monotonic reading the host refused (proxy-wasm-cpp-host answers it always; this is a
    /// guard) goes on from the last one by the wall clock's progress, never back.
    pub fn hook(&mut self, unix_ms: u64, mono_ns: Option<u64>) -> Now {
        let mono_ms = match mono_ns {
            Some(ns) => mono_ms(ns),
            None => self
                .last
                .mono_ms
                .saturating_add(unix_ms.saturating_sub(self.last.unix_ms)),
        };
        self.last = Now { unix_ms, mono_ms };
        self.last
    }

    /// A request's reading from the wall clock alone (type docs).
    pub fn request(&self, unix_ms: u64) -> Now {
        let lead = unix_ms
            .saturating_sub(self.last.unix_ms)
            .min(REQUEST_LEAD_MAX_MS);
        Now {
            unix_ms,
            mono_ms: self.last.mono_ms.saturating_add(lead),
        }
    }
}

/// Monotonic nanoseconds as [`Now::mono_ms`]: counted from 1, since 0 means "never" in the
/// state (Envoy's steady clock counts from the host's boot, and could read under a
/// millisecond only in a test host).
fn mono_ms(ns: u64) -> u64 {
    (ns / 1_000_000).saturating_add(1)
}

/// The request-scoped host services. Every method but the header edits is infallible from the
/// glue's point of view: a host call that fails is logged by the adapter (or ignored where the
/// wasm build ignored it). A header edit says whether the host made it: a request whose
/// identity headers or token could not be edited is refused, not forwarded with a client's
/// spoofed identity or with the token.
pub trait Host {
    /// The clocks, read once per request (the wall clock 0 if the host cannot say: every token
    /// is then refused as not yet valid).
    fn now(&self) -> Now;
    /// One log line. Never pass tokens, login codes, key material or full openids.
    fn log(&self, level: Level, message: &str);
    /// Runs `read` on the request's header map, read once per request: views into the host's
    /// own memory where it allows that (native: held on the stack, no allocation for a request
    /// of up to 32 headers), copies where it does not (wasm). The views live only for the call,
    /// which borrows the host, so they are gone before any header is set or removed. A value
    /// that is not UTF-8 is read lossily (a copy), so it can only fail verification.
    fn with_request_headers<R>(&self, read: impl FnOnce(&[Header<'_>]) -> R) -> R;
    /// Sets a request header (replacing every copy the client sent); whether it was set.
    fn set_request_header(&mut self, name: &str, value: &str) -> bool;
    /// Adds a request header the request does not carry (the glue has checked the map it read):
    /// the same outcome as [`Host::set_request_header`] without looking for copies to replace.
    fn add_request_header(&mut self, name: &str, value: &str) -> bool {
        self.set_request_header(name, value)
    }
    /// Removes every copy of a request header; whether the host could (a header the request
    /// does not carry is removed all the same).
    fn remove_request_header(&mut self, name: &str) -> bool;
    /// Called once after a forwarded request's header edits (not when there were none). Envoy
    /// picked the route before the filter ran, matching the headers as the client sent them;
    /// it must match again against those the upstream will see, so that a route on an
    /// identity header sees the verified identity, never a client's spoofed copy, and a route
    /// on `authorization` sees it gone. The native host clears Envoy's route cache here; the
    /// proxy-wasm host has nothing to do (Envoy's wasm host clears it on every edit).
    fn headers_edited(&mut self);
    /// Answers the request locally (the request does not reach the upstream).
    fn send_local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]);
}

/// The filter's counters. The allow path's counters may be batched by the adapter.
pub trait Stats {
    fn allowed(&self);
    fn anonymous(&self);
    fn cache_hit(&self);
    fn cache_miss(&self);
    /// `weauth.denied.<reason>`.
    fn denied(&self, reason: &'static str);
    /// Any other counter by its name without the `weauth.` prefix (`revocation_stale_allowed`).
    fn count(&self, name: &'static str);
}

/// The state a decision reads: keys, revocation set, token cache.
pub trait KeyState {
    /// Brings this worker's view up to date where the host needs it (the wasm build picks up a
    /// revocation another VM published) and decides with it. An adapter whose view may lag
    /// (wasm) looks once more for keys before answering an unknown `kid`.
    fn judge(
        &mut self,
        extracted: &Extracted<'_>,
        require: Require,
        scopes: &[String],
        now: Now,
    ) -> Verdict;
    /// A token named a `kid` no key has: ask for a JWKS refetch (rate limited by the adapter,
    /// on the fetcher's clock: [`Now::mono_ms`]).
    fn want_jwks_refetch(&mut self, now: Now);
}

/// Why a call to the issuer could not be dispatched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DispatchError(pub String);

impl DispatchError {
    /// The configured cluster is not in Envoy's configuration (both ABIs say so apart).
    pub fn no_cluster() -> DispatchError {
        DispatchError("no cluster of that name in Envoy's configuration".into())
    }

    /// Envoy's async client failed the request before it went out — its answer, if any, came
    /// inline —, which is what a cluster with no healthy host does (or a circuit breaker open).
    pub fn failed_at_once() -> DispatchError {
        DispatchError("Envoy failed the request at once (no healthy host in the cluster?)".into())
    }
}

/// An HTTP call to the issuer through an Envoy cluster. The answer arrives later, through the
/// adapter's own callback, tagged with the returned id.
pub trait IssuerCall {
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u64, DispatchError>;
}

/// What the fetchers report through: log lines, counters and gauges (`weauth.*`, by their
/// names without the prefix).
pub trait Report {
    fn log(&self, level: Level, message: &str);
    fn count(&self, name: &'static str);
    fn gauge(&self, name: &'static str, value: u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: u64 = 1_700_000_000_000;
    /// A day after the host's boot, in nanoseconds (Envoy's steady clock).
    const BOOT_NS: u64 = 86_400_000 * 1_000_000;
    const BOOT_MS: u64 = 86_400_000 + 1;

    fn ns(ms: u64) -> u64 {
        ms * 1_000_000
    }

    #[test]
    fn wasm_clock_hook_reads_the_monotonic_clock_and_requests_follow_it_by_the_wall_clock() {
        let mut clock = WasmClock::start(WALL, Some(BOOT_NS));
        assert_eq!(
            clock.now(),
            Now {
                unix_ms: WALL,
                mono_ms: BOOT_MS
            }
        );
        let tick = clock.hook(WALL + 100, Some(BOOT_NS + ns(100)));
        assert_eq!(tick.mono_ms, BOOT_MS + 100);
        let request = clock.request(WALL + 140);
        assert_eq!(
            request,
            Now {
                unix_ms: WALL + 140,
                mono_ms: BOOT_MS + 140
            }
        );
    }

    /// Stepped an hour forward between two ticks: a request's monotonic time runs ahead of
    /// the last tick by at most the cap, and the next hook reads the true one.
    #[test]
    fn wasm_clock_wall_step_forward_moves_a_request_at_most_the_cap_and_a_hook_not_at_all() {
        let mut clock = WasmClock::start(WALL, Some(BOOT_NS));
        let request = clock.request(WALL + 3_600_040);
        assert_eq!(request.unix_ms, WALL + 3_600_040, "tokens: the wall clock");
        assert_eq!(request.mono_ms, BOOT_MS + REQUEST_LEAD_MAX_MS);
        let tick = clock.hook(WALL + 3_600_100, Some(BOOT_NS + ns(100)));
        assert_eq!(tick.mono_ms, BOOT_MS + 100);
        assert_eq!(clock.request(WALL + 3_600_130).mono_ms, BOOT_MS + 130);
    }

    /// Stepped an hour back: a request never reckons before the last tick (an unknown-`kid`
    /// hint an hour in the past would be taken as answered), and the hooks go on.
    #[test]
    fn wasm_clock_wall_step_back_keeps_a_request_at_the_last_tick_and_hooks_on_time() {
        let mut clock = WasmClock::start(WALL, Some(BOOT_NS));
        clock.hook(WALL + 100, Some(BOOT_NS + ns(100)));
        let request = clock.request(WALL + 120 - 3_600_000);
        assert_eq!(request.unix_ms, WALL + 120 - 3_600_000);
        assert_eq!(request.mono_ms, BOOT_MS + 100);
        let tick = clock.hook(WALL + 200 - 3_600_000, Some(BOOT_NS + ns(200)));
        assert_eq!(tick.mono_ms, BOOT_MS + 200);
        assert_eq!(clock.request(WALL + 250 - 3_600_000).mono_ms, BOOT_MS + 250);
    }

    /// A monotonic reading is never 0 ("never" in the state), and one the host refused goes
    /// on from the last by the wall clock's progress, never back.
    #[test]
    fn wasm_clock_reading_never_zero_and_a_refused_one_carries_on() {
        let mut clock = WasmClock::start(WALL, Some(0));
        assert_eq!(clock.now().mono_ms, 1);
        assert_eq!(clock.hook(WALL + 100, None).mono_ms, 101);
        assert_eq!(clock.hook(WALL - 5_000, None).mono_ms, 101, "stepped back");
        assert_eq!(WasmClock::start(0, None).now().mono_ms, 1);
    }
}
