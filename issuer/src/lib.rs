//! weauth issuer: WeChat mini-program login that issues weauth access tokens (JWT) and
//! rotating refresh tokens, and serves the revocation feed the edge filter follows.
//!
//! Data flow: `server` accepts connections and hands requests to `api` (axum: the route table,
//! extractors, handlers per area, the observing layer), whose handlers call `sessions` (login, refresh, logout, revocation, bearer checks). `sessions`
//! calls WeChat through the `wechat` trait, mints tokens with `tokens` (over the shared
//! `weauth-token` crate) using the signing keys of `keys`, and persists through the async `store`
//! trait (SQLite today), which calls the pure decisions of `rules`. `app` holds the shared state and background tasks; `config` reads
//! the environment; `error` is the single error→HTTP mapping; `metrics`, `ratelimit`,
//! `revocation`, `secrets` and `tracecontext` (the W3C `traceparent` each request's log span
//! carries) are small helpers; `otel` exports the request, WeChat and store spans over OTLP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. `userdata` serves the mini-program's user
//! data (`/v1/me/decrypt`, `/v1/me/phone`, `/v1/me/session`) over the `weauth-wxdata` crate,
//! with the WeChat app access token shared between replicas by `access_token`. `cli` implements `weauth-issuer keys ...`.
//!
//! Several apps and web login: `apps` reads `WEAUTH_APPS_FILE` (mini-programs, official
//! accounts, websites). `identity` is the login-method boundary: a mini-program code (through
//! `wechat`) or a web OAuth2 code (through `wechat_web`) becomes an external identity, and
//! `sessions::establish` is the one path after it. `web` holds the pure parts of
//! `/v1/web/authorize` and `/v1/web/callback` (state, authorize URL, cookies, CSRF rule),
//! which `api` glues to the store's `put_ephemeral` / `take_ephemeral`.

pub mod access_token;
pub mod admin;
pub mod api;
pub mod app;
pub mod apps;
pub mod cli;
pub mod clock;
pub mod config;
/// `docs/CONFIGURATION.md`'s variable table from [`config::VARIABLES`], and its check.
#[cfg(test)]
mod config_reference;
pub mod error;
pub mod feed;
pub mod grants;
pub mod identity;
pub mod keys;
pub mod metrics;
pub mod otel;
pub mod ratelimit;
pub mod revocation;
pub mod rules;
pub mod secrets;
pub mod server;
pub mod sessions;
pub mod shared;
pub mod store;
pub mod tokens;
pub mod tracecontext;
pub mod userdata;
pub mod web;
pub mod wechat;
pub mod wechat_apisec;
pub mod wechat_web;

/// A short, non-reversible tag of an identifier for logs (first 10 hex digits of SHA-256),
/// so an openid can be correlated across log lines without being logged.
pub fn short_hash(value: &str) -> String {
    secrets::sha256_hex(value.as_bytes())[..10].to_string()
}
