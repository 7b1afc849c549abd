//! The HTTP context (one per request) of the proxy-wasm build: the proxy-wasm side of
//! [`crate::host`]'s traits, around the shared glue [`crate::request::on_request_headers`].
//!
//! Per-request cost on an allowed cache hit: the header map (one read), the clock (the wall
//! clock only: the monotonic time is reckoned from the VM's last tick, [`WasmClock::request`]),
//! the revocation version (one small shared-data read, so every worker refuses a revoked token as
//! soon as one does), one add per identity header with a value (a set, which replaces, only
//! for one the client sent), the token's header removed, and a removal only for another
//! identity header the client actually sent: six calls with two identity headers. The token is
//! borrowed from the header map and the claims are shared with the cache entry, metric ids are
//! resolved once, nothing is formatted on the allow path.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::Require;
use crate::headers::{self, Header};
use crate::host::{Host, KeyState, Level, Now, WasmClock};
use crate::request::{self, Flow, Loaded};
use crate::verify::{Extracted, Verdict};
use crate::wasm_host::{self, log, request_header_map, unix_ms, Edit};
use crate::worker::{VmState, Worker};

/// One request.
pub struct Filter {
    context_id: u32,
    worker: Rc<Worker>,
}

impl Filter {
    pub fn new(context_id: u32, worker: Rc<Worker>) -> Filter {
        Filter { context_id, worker }
    }
}

/// The proxy-wasm request host: header map calls on the current HTTP context.
struct WasmRequest {
    context_id: u32,
    /// The VM's clocks as its root context last read them.
    clock: WasmClock,
}

impl Host for WasmRequest {
    /// One host call, the wall clock; the monotonic time is the VM's last hook reading carried
    /// on by the wall clock's progress since, at most [`crate::host::REQUEST_LEAD_MAX_MS`]
    /// ([`WasmClock::request`]): a step of the wall clock misleads a request's schedules and
    /// ages by no more than that, and only until the VM's next tick.
    fn now(&self) -> Now {
        self.clock.request(unix_ms())
    }

    fn log(&self, level: Level, message: &str) {
        log(level, self.context_id, message);
    }

    /// One host call, copied into the VM in one buffer (the proxy-wasm ABI has no views), read
    /// borrowing from it. Envoy joins repeated copies of its inline headers (`authorization`
    /// among them) with commas; others arrive as separate pairs. A map the host refuses, or
    /// one that does not read, counts as no headers (a protected path then answers 401).
    fn with_request_headers<R>(&self, read: impl FnOnce(&[Header<'_>]) -> R) -> R {
        let map = request_header_map().unwrap_or_default();
        let headers = headers::parse_map_pairs(&map).unwrap_or_default();
        read(&headers)
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        wasm_host::edit_request_header(name, Edit::Set(value))
    }

    /// `proxy_add_header_map_value`: Envoy's `addCopy`, without the look for copies to replace
    /// that a set (`proxy_replace_header_map_value`, `setCopy`) makes.
    fn add_request_header(&mut self, name: &str, value: &str) -> bool {
        wasm_host::edit_request_header(name, Edit::Add(value))
    }

    fn remove_request_header(&mut self, name: &str) -> bool {
        wasm_host::edit_request_header(name, Edit::Remove)
    }

    /// Nothing to do: Envoy's proxy-wasm host clears the route cache on every edit of the
    /// request's headers (`Context::onHeadersModified`), so the route is matched again.
    fn headers_edited(&mut self) {}

    fn send_local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        if hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body)).is_err() {
            self.log(Level::Error, "could not send the local reply");
        }
    }
}

/// This VM's state, synced from shared data before each decision.
struct VmView<'a> {
    worker: &'a Worker,
    state: &'a mut VmState,
    context_id: u32,
}

impl VmView<'_> {
    fn judge_now(
        &mut self,
        extracted: &Extracted<'_>,
        require: Require,
        scopes: &[String],
        now: Now,
    ) -> Verdict {
        let state = &mut *self.state;
        let revocation = state.replica.meta.as_ref().map(|meta| Loaded {
            set: &state.replica.set,
            generation: meta.generation,
            last_ok_ms: meta.last_ok_ms,
        });
        request::judge(
            &self.worker.config,
            state.keys.as_ref(),
            state.keys_generation,
            revocation,
            &mut state.cache,
            extracted,
            require,
            scopes,
            now,
        )
    }
}

impl KeyState for VmView<'_> {
    fn judge(
        &mut self,
        extracted: &Extracted<'_>,
        require: Require,
        scopes: &[String],
        now: Now,
    ) -> Verdict {
        // Pick up a revocation the fetcher published since the last tick (one read of an empty
        // value's CAS; kept on every request so that once one worker refuses a revoked token,
        // every worker does).
        self.worker
            .sync_revocation_if_moved(self.state, self.context_id);
        // A worker VM whose tick has not picked up the keys the fetcher already published
        // (the first requests after start): look now instead of answering 503.
        if self.state.keys.is_none() {
            self.worker.sync_jwks(self.state, self.context_id);
        }
        let outcome = self.judge_now(extracted, require, scopes, now);
        // An unknown `kid` may be a key the fetcher published since this VM's last tick: look
        // once more before refusing (cheap: only on this path).
        if outcome.unknown_key && self.worker.sync_jwks(self.state, self.context_id) {
            return self.judge_now(extracted, require, scopes, now);
        }
        outcome
    }

    fn want_jwks_refetch(&mut self, now: Now) {
        self.worker.want_jwks_refetch(self.state, now.mono_ms);
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let worker = &*self.worker;
        let mut host = WasmRequest {
            context_id: self.context_id,
            clock: worker.clock.get(),
        };
        let Ok(mut state) = worker.state.try_borrow_mut() else {
            // Cannot happen in a single-threaded VM; fail closed rather than panic.
            request::deny(&mut host, &worker.metrics, &request::unavailable());
            return Action::Pause;
        };
        let mut view = VmView {
            worker,
            state: &mut state,
            context_id: self.context_id,
        };
        match request::on_request_headers(&mut host, &worker.config, &mut view, &worker.metrics) {
            Flow::Continue => Action::Continue,
            Flow::Stop => Action::Pause,
        }
    }
}
