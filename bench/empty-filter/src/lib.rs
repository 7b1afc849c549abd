//! The empty proxy-wasm filter: a root context that creates an HTTP context per request, and
//! an HTTP context that lets every request through untouched.
//!
//! It is the `make bench` row that prices "being a wasm filter at all" (the VM call per
//! request, context creation and teardown) with the same SDK (`proxy-wasm`), the same linker
//! (`scripts/wasm-link`: the callbacks no module here implements are not exported, so Envoy
//! calls this filter for a request's context, its request headers and its deletion only),
//! the same release profile (`wasm-release`: LTO, one codegen unit, `panic = "abort"`) and
//! the same runtime (V8) as `weauth-filter`. weauth's own cost is reported as a multiple of this one's.
//!
//! With the plugin configuration `"weauth-host-calls"` it also makes, with fixed values and no
//! logic, exactly the host calls weauth makes on an allowed cache hit configured as the bench's
//! weauth rows are, two identity headers (`scripts/count-host-calls.sh` lists them): read the
//! request's header map once, read the revocation version from shared data, read the clock,
//! add the two identity headers (`x-weauth-sub`, `x-weauth-openid`: an add, since the request
//! does not carry them), and remove `authorization` (the token is not forwarded:
//! `forward_authorization` defaults to false). No other removal: a client that sent no
//! `x-weauth-*` header costs none. That row is the floor the ABI sets for what weauth is
//! configured to do; weauth above it is its own computation.
//!
//! `"weauth-reads"` makes only the three reads of those calls (header map, shared data, clock)
//! and `"weauth-edits"` only the three header edits: the two rows split the floor between what
//! Envoy hands the VM and what it does for an edit (the proxy-wasm host clears the route cache
//! on each one, so the router matches the route again).
//!
//! With `"clock-reads"` it reads the clock six times and does nothing else: the cheapest host
//! call there is (no argument to copy, no memory callback, nothing for Envoy to look up), so
//! that row less the empty filter's, over six, is what one crossing of the ABI costs.
//!
//! Built natively (`--profile native`) the crate is the empty **Envoy dynamic module** instead
//! (`native.rs`): the same baseline for the filter's native build.

// The same baseline as an Envoy dynamic module, built natively (`--profile native`).
#[cfg(not(target_arch = "wasm32"))]
mod native;

#[cfg(target_arch = "wasm32")]
mod glue {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MapType};

    /// The plugin configuration that turns the host calls on.
    const HOST_CALLS: &[u8] = b"\"weauth-host-calls\"";
    /// Only the reads of [`HOST_CALLS`].
    const READS: &[u8] = b"\"weauth-reads\"";
    /// Only the header edits of [`HOST_CALLS`].
    const EDITS: &[u8] = b"\"weauth-edits\"";
    /// The plugin configuration that reads the clock [`CLOCK_READS`] times per request.
    const CLOCK: &[u8] = b"\"clock-reads\"";
    /// How many times `"clock-reads"` reads the clock (as many calls as weauth's floor).
    const CLOCK_READS: usize = 6;

    /// What the filter does per request.
    #[derive(Clone, Copy)]
    enum Mode {
        Pass,
        HostCalls,
        Reads,
        Edits,
        Clock,
    }

    /// What weauth adds on an allowed request with the bench's two `claim_to_headers` (values
    /// of the same lengths as the bench's tokens' claims).
    const ADD: [(&str, &str); 2] = [
        ("x-weauth-sub", "u_bench_subject_000001"),
        ("x-weauth-openid", "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"),
    ];

    pub struct Root {
        mode: Mode,
    }

    impl Root {
        pub fn new() -> Root {
            Root { mode: Mode::Pass }
        }
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let config = hostcalls::get_buffer(
                proxy_wasm::types::BufferType::PluginConfiguration,
                0,
                usize::MAX,
            )
            .ok()
            .flatten()
            .unwrap_or_default();
            self.mode = match config.trim_ascii() {
                HOST_CALLS => Mode::HostCalls,
                READS => Mode::Reads,
                EDITS => Mode::Edits,
                CLOCK => Mode::Clock,
                _ => Mode::Pass,
            };
            true
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Pass { mode: self.mode }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    pub struct Pass {
        mode: Mode,
    }

    impl Context for Pass {}

    impl HttpContext for Pass {
        fn on_http_request_headers(&mut self, _num_headers: usize, _eos: bool) -> Action {
            match self.mode {
                Mode::Pass => {}
                Mode::Clock => {
                    for _ in 0..CLOCK_READS {
                        let _ = hostcalls::get_current_time();
                    }
                }
                Mode::HostCalls => {
                    if weauth_reads() {
                        weauth_edits();
                    }
                }
                Mode::Reads => {
                    weauth_reads();
                }
                Mode::Edits => weauth_edits(),
            }
            Action::Continue
        }
    }

    /// The reads weauth makes on an allowed cache hit (module docs); whether all succeeded
    /// (keeps them alive, as weauth uses them).
    fn weauth_reads() -> bool {
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        let version = hostcalls::get_shared_data("weauth.rev3.0000000000000000.v");
        let now = hostcalls::get_current_time();
        headers.is_ok() && version.is_ok() && now.is_ok()
    }

    /// The header edits weauth makes on an allowed cache hit, with fixed values.
    fn weauth_edits() {
        for (name, value) in ADD {
            let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value);
        }
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "authorization");
    }
}

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(glue::Root::new())
    });
}}
