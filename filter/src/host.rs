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
/// (a fetch due or given up, a backoff, when the feed last answered and how long ago that
/// was) is reckoned on [`Now::mono_ms`], and only what is compared with times written in a
/// token or by the issuer (`exp`, `nbf`, `iat`; a revocation entry's `until`) reads
/// [`Now::unix_ms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix milliseconds (0 if the host cannot say).
    pub unix_ms: u64,
    /// Milliseconds on a clock that never steps, from an arbitrary start: only differences
    /// between two readings mean anything. The native build's counts from a process-wide
    /// epoch (`std::time::Instant`).
    pub mono_ms: u64,
}

impl Now {
    /// One wall-clock reading as both clocks: the proxy-wasm build's. The proxy-wasm ABI has
    /// no monotonic clock call (`proxy_get_current_time` is the wall clock), and its schedules
    /// and ages cross VMs in shared data (a lease's expiry, the set's `last_ok_ms`), where
    /// only the wall clock is common to every VM: that build keeps the wall clock for both.
    pub const fn wall(unix_ms: u64) -> Now {
        Now {
            unix_ms,
            mono_ms: unix_ms,
        }
    }
}

/// The request-scoped host services. Every method is infallible from the glue's point of view:
/// a host call that fails is logged by the adapter (or ignored where the wasm build ignored it).
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
    /// Sets a request header (replacing every copy the client sent).
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Adds a request header the request does not carry (the glue has checked the map it read):
    /// the same outcome as [`Host::set_request_header`] without looking for copies to replace.
    fn add_request_header(&mut self, name: &str, value: &str) {
        self.set_request_header(name, value);
    }
    /// Removes every copy of a request header.
    fn remove_request_header(&mut self, name: &str);
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
