//! weauth-filter: an Envoy filter (and Istio sidecars) that verifies weauth access tokens at
//! the edge and enforces the issuer's revocations without a call per request. One core, two
//! builds: a proxy-wasm module (wasm32-wasip1) and an Envoy dynamic module (`envoy-native`
//! feature, [`native`]); the host is a set of traits ([`host`]) and the per-request glue
//! ([`request`]) is shared and unit-tested natively against a mock host.
//!
//! Modules, pure first (all unit-tested natively; none imports `proxy_wasm`):
//! - [`config`]: the plugin configuration, parsed and validated once in `on_configure`.
//! - [`path`]: which rule a request path gets, whatever an upstream makes of it (normalized,
//!   ambiguous readings never laxer, unsafe paths refused with 400).
//! - [`verify`]: token extraction and the per-request [`verify::Decision`].
//! - [`csrf`]: the CSRF rule for cookie-authenticated unsafe requests, and origin syntax.
//! - [`headers`]: the identity header namespace and the token's removal before forwarding.
//! - [`revocation`]: the revocation set (O(1) lookups by jti, sid, sub), feed application and
//!   its sharded, versioned encoding for Envoy shared data.
//! - [`refresh`]: the fetchers' timer state machine, the fetcher lease and the JWKS blob.
//! - [`fetch`]: the JWKS and revocation fetchers, one for both builds, generic over the host
//!   (where they call, report and publish).
//! - [`cache`]: the bounded per-VM cache of verified tokens.
//! - [`gauges`]: what a gauge shows when several configurations report it (the worst value).
//!
//! Host glue, compiled only for wasm32:
//! - `root` (one per VM: configuration, the 100 ms tick, the lease election and — on the
//!   elected VM only — the JWKS and long-poll feed fetchers and their publication into shared
//!   data);
//! - `worker` (what every VM holds and shares with its HTTP contexts: the shared-data key
//!   names, the decoded keys, the revocation replica and the cache, and the syncs from shared
//!   data run on the tick and per request);
//! - `metrics` (metric ids defined once per VM; the allow path's counters batched per tick);
//! - `wasm_host` (the context-tagged log line, the host's wall and monotonic clocks, the raw
//!   header map read; [`host::WasmClock`] says how the clocks are read);
//! - `http` (one per request: read the header map once, pick the rule, apply the CSRF rule,
//!   call [`verify::decide`], then forward with identity headers — every client header under
//!   the identity prefix removed — or answer 400/401/403/503).
//!
//! Data flow: issuer → (elected VM: `dispatch_http_call`) → shared data (JWKS blob; revocation
//! meta + 32 shard blobs) → (every VM's tick, only on a version change) decoded copies →
//! requests.

pub mod cache;
pub mod config;
pub mod csrf;
pub mod fetch;
pub mod gauges;
pub mod headers;
pub mod host;
pub mod keys;
pub mod metrics_names;
pub mod path;
pub mod refresh;
pub mod request;
pub mod revocation;
pub mod verify;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;

#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod metrics;
#[cfg(target_arch = "wasm32")]
mod root;
#[cfg(target_arch = "wasm32")]
mod wasm_host;
#[cfg(target_arch = "wasm32")]
mod worker;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(root::Root::create);
}}
