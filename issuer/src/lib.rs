//! weauth issuer: WeChat logins (mini-program codes, official-account and website OAuth2,
//! plugins) exchanged for short-lived EdDSA access tokens (JWT) and rotating refresh tokens,
//! and the revocation feed the edge filter follows.
//!
//! Layout, imports one way (a folder imports only from the ones listed before it, or its own:
//! `issuer/tests/layers.rs` checks it; the wall clock is read in `clock` only):
//! - `clock`, `secrets`, `apisec`: leaves — the one wall clock (system or manual), the data
//!   key and hashing helpers, WeChat's server API security (pure: its keys, the encryption and
//!   signing of calls and the checks of answers; the apps file reads its keys);
//! - `config/`: the variable table, parsing and validation (`config::VARIABLES` also makes
//!   `--help` and `docs/CONFIGURATION.md`), and the apps file (`config::apps`);
//! - `domain/`: pure rules, time as an argument — refresh verdicts and user linking
//!   (`rules`), grants and bans, the web-login decisions and cookies (`web`), token minting
//!   and checks (`tokens`), the signing-key schedule (`keys`), the rate limiter (logins per
//!   client, WeChat calls per user);
//! - `telemetry/`: metrics, the W3C trace context, the OTLP exporter;
//! - `store/`: the `Store` trait and its records (semantics fixed by `store::contract`), the
//!   SQLite, Redis and MySQL backends, and what replicas share besides records (`store::shared`:
//!   the rate limiters, revocation announcements, health checks);
//! - `wechat/`: the mini-program client (`wechat`), web OAuth2 (`wechat::web`), the calls
//!   made with API security (`apisec` re-exported as `wechat::apisec`) and the app access
//!   token shared by replicas (`wechat::access_token`);
//! - `error`: the one service-error type ([`error::ApiError`]) with its HTTP mapping, and the
//!   conversions of the lower layers' errors into it (the store's, WeChat's, the app token's);
//! - `feed/`: the revocation feed's replica copy and long-poll pacing, and its reads;
//! - `service/`: the use cases, each a struct holding only what it uses (none sees `App`) —
//!   login, sessions and refresh (`sessions`), the login-method boundary (`identity`: every
//!   WeChat credential becomes one external identity), user data (`userdata`),
//!   administration (`admin`); every call takes the request's `now`;
//! - `app`: builds those parts once at start and composes them, and runs the background
//!   tasks;
//! - `api/`: the HTTP layer on axum (route table, extractors, handlers per area);
//! - `server` (the accept loop and graceful shutdown) and `cli` (`weauth-issuer keys ...`).

pub mod api;
pub mod apisec;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
mod domain;
pub mod error;
pub mod feed;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod wechat;

/// The issuer's pure parsers of hostile HTTP input, re-exported for the fuzz targets
/// (`fuzz/src/issuer_harness.rs`) and their replay test (`issuer/tests/fuzz_regressions.rs`).
/// Not API: nothing else may use it, and it changes with them.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::config::IpNet;
    pub use crate::domain::ratelimit::{client_ip, client_key};
    pub use crate::domain::tokens::bearer;
    pub use crate::domain::web::{find_cookie, same_origin_request, CookieLookup};
    pub use crate::telemetry::tracecontext::{parse_b3, parse_traceparent};
}

/// A short, non-reversible tag of an identifier for logs (first 10 hex digits of SHA-256),
/// so an openid can be correlated across log lines without being logged.
pub fn short_hash(value: &str) -> String {
    secrets::sha256_hex(value.as_bytes())[..10].to_string()
}
