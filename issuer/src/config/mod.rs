//! The issuer's configuration: environment variables read once at start into a typed
//! [`Config`], validated there, so a bad value stops the process with the variable's name.
//!
//! [`VARIABLES`] is the one table of the variables the issuer reads, with their defaults as
//! text: the parsing below takes every default from it, `--help` prints it, and the check for
//! unknown `WEAUTH_*` names ([`unknown_variables`]) compares against it. A new variable is a
//! new row there plus its parsing in [`Config::from_source`].
//!
//! Every problem is reported at once ([`ConfigErrors`]): a start with three bad variables
//! names all three, not one per attempt. Secrets may come from a `<NAME>_FILE` variant holding
//! a path (Docker/Kubernetes secrets); setting both the plain and the `_FILE` form is refused
//! as ambiguous. Reading goes through a lookup function so the parsing is tested without
//! touching the process environment.

pub mod apps;
/// `docs/CONFIGURATION.md`'s variable table from [`VARIABLES`], and its check.
#[cfg(test)]
mod reference;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use weauth_token::Algorithm;
use zeroize::Zeroizing;

use self::apps::Apps;
pub use crate::store::redis::RedisTarget;

/// One variable the issuer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The name, e.g. `WEAUTH_ACCESS_TTL`.
    pub name: &'static str,
    /// The default as the operator would write it; empty when there is none (unset means
    /// off, or the variable is required: `help` says which).
    pub default: &'static str,
    /// A `_FILE` variant holding a path to the value is accepted.
    pub file: bool,
    /// One line for `--help`.
    pub help: &'static str,
}

const fn var(name: &'static str, default: &'static str, help: &'static str) -> Var {
    Var {
        name,
        default,
        file: false,
        help,
    }
}

const fn secret(name: &'static str, help: &'static str) -> Var {
    Var {
        name,
        default: "",
        file: true,
        help,
    }
}

/// Every variable the issuer reads, in `--help` order.
pub const VARIABLES: &[Var] = &[
    var(
        "WEAUTH_LISTEN",
        "127.0.0.1:8080",
        "IP:PORT to listen on (port 0: any free port)",
    ),
    var(
        "WEAUTH_STORE",
        "sqlite://weauth.db",
        "where state lives: sqlite://PATH, redis://, rediss:// or redis+sentinel://",
    ),
    var(
        "WEAUTH_REDIS_PREFIX",
        "weauth:",
        "prefix of every Redis key",
    ),
    var(
        "WEAUTH_REDIS_WAIT_REPLICAS",
        "",
        "WAIT for this many Redis replicas after each write (default 1 with Sentinel, else 0)",
    ),
    var(
        "WEAUTH_REDIS_WAIT_TIMEOUT",
        "500ms",
        "the longest such WAIT",
    ),
    var(
        "WEAUTH_REDIS_ALLOW_EVICTION",
        "false",
        "start even when Redis's maxmemory-policy can evict weauth's keys (anything but noeviction; a warning is logged)",
    ),
    var(
        "WEAUTH_APPS_FILE",
        "",
        "JSON file of the apps served (miniprogram, official_account, website); or the one-app shortcut below",
    ),
    var(
        "WEAUTH_WECHAT_APPID",
        "",
        "the mini-program's appid (required to serve without WEAUTH_APPS_FILE)",
    ),
    secret(
        "WEAUTH_WECHAT_SECRET",
        "the mini-program's app secret (required to serve without WEAUTH_APPS_FILE)",
    ),
    var(
        "WEAUTH_WECHAT_OPEN_BASE",
        "https://open.weixin.qq.com",
        "where browsers are sent to authorize a web login",
    ),
    var(
        "WEAUTH_COOKIE_SECURE",
        "true",
        "Secure on the web-login cookies (false: plain-http development only)",
    ),
    var(
        "WEAUTH_WECHAT_API_BASE",
        "https://api.weixin.qq.com",
        "WeChat's API base URL",
    ),
    var("WEAUTH_WECHAT_TIMEOUT", "5s", "per WeChat call attempt"),
    var(
        "WEAUTH_WECHAT_CONNECT_TIMEOUT",
        "2s",
        "per WeChat connection attempt",
    ),
    var(
        "WEAUTH_WECHAT_RETRIES",
        "2",
        "extra attempts after a retryable WeChat failure (<= 5)",
    ),
    var(
        "WEAUTH_ISSUER",
        "http://127.0.0.1:8080",
        "the `iss` claim and discovery base URL",
    ),
    var(
        "WEAUTH_AUDIENCE",
        "weauth",
        "the `aud` claim, comma-separated",
    ),
    var(
        "WEAUTH_ACCESS_TTL",
        "15m",
        "access-token lifetime (1s..24h, <= WEAUTH_REFRESH_TTL)",
    ),
    var(
        "WEAUTH_REFRESH_TTL",
        "7d",
        "refresh-token lifetime, sliding (<= WEAUTH_SESSION_MAX)",
    ),
    var(
        "WEAUTH_SESSION_MAX",
        "30d",
        "absolute cap of a login session",
    ),
    var(
        "WEAUTH_REFRESH_REUSE_GRACE",
        "10s",
        "a refresh token presented again this soon after its rotation gets a sibling pair instead of revoking the session (<= 60s; 0s: every reuse revokes)",
    ),
    var(
        "WEAUTH_LEEWAY",
        "60s",
        "clock skew allowed on exp/nbf/iat (<= 5m)",
    ),
    secret(
        "WEAUTH_FEED_TOKEN",
        "credential of GET /v1/revocations (unset: 503), >= 8 characters",
    ),
    secret(
        "WEAUTH_ADMIN_TOKEN",
        "credential of /v1/admin/* (unset: 503), >= 8 characters",
    ),
    secret(
        "WEAUTH_DATA_KEY",
        "base64 of 32 bytes encrypting secrets at rest (unset: <db>.datakey, created 0600)",
    ),
    var("WEAUTH_SIGNING_ALG", "EdDSA", "EdDSA, ES256 or HS256"),
    var(
        "WEAUTH_SIGNING_KEY_FILE",
        "",
        "PKCS#8 PEM or raw HS256 secret (unset: generated, kept in the store)",
    ),
    var(
        "WEAUTH_KEY_PUBLISH_DELAY",
        "10m",
        "how long a rotated key is published before it signs",
    ),
    var(
        "WEAUTH_KEY_RELOAD",
        "2s",
        "how often keys are re-read from the store",
    ),
    var(
        "WEAUTH_PURGE_INTERVAL",
        "60s",
        "how often expired rows are deleted",
    ),
    var(
        "WEAUTH_FEED_COALESCE",
        "250ms",
        "longest wait of a feed wake after the previous one (0: no pacing)",
    ),
    var(
        "WEAUTH_FEED_ANSWER_RATE",
        "10000",
        "feed answers per second a replica's wakes aim to stay under",
    ),
    var(
        "WEAUTH_LOGIN_RATE",
        "60",
        "logins per minute per client IP (0: off)",
    ),
    var("WEAUTH_LOGIN_BURST", "20", "login burst allowance"),
    var(
        "WEAUTH_TRUSTED_PROXIES",
        "",
        "IPs/CIDRs whose X-Forwarded-For is believed, comma-separated",
    ),
    var(
        "WEAUTH_MAX_BODY",
        "16384",
        "request body cap in bytes (>= 256)",
    ),
    var(
        "WEAUTH_HEADER_TIMEOUT",
        "10s",
        "time allowed to send request headers, and the body",
    ),
    var(
        "WEAUTH_SHUTDOWN_GRACE",
        "10s",
        "drain deadline on SIGTERM/Ctrl-C",
    ),
    var(
        "WEAUTH_DECRYPT_MAX_AGE",
        "off",
        "refuse encrypted user data whose watermark is older (e.g. 10m)",
    ),
    var(
        "WEAUTH_LOG",
        "info",
        "log level or tracing directives (e.g. debug, info,weauth_issuer=debug)",
    ),
    var("WEAUTH_LOG_FORMAT", "text", "text or json"),
];

/// `WEAUTH_*` names read by the project's tooling (Makefile, test harness, bench), not by the
/// issuer: `make` exports them, so they are not reported as unknown.
const TOOLING: &[&str] = &[
    "WEAUTH_ISSUER_BIN",
    "WEAUTH_ENVOY_BIN",
    "WEAUTH_FILTER_WASM",
    "WEAUTH_KEEP_TMP",
    "WEAUTH_STACK_BIN",
    "WEAUTH_CHROMIUM",
];

/// The default of a known variable, as text ("" when it has none).
pub fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|v| v.name == name)
        .map_or("", |v| v.default)
}

/// The `--help` table: one line per variable with its default.
pub fn help_text() -> String {
    let width = VARIABLES
        .iter()
        .map(|v| v.name.len() + if v.file { 7 } else { 0 })
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for v in VARIABLES {
        let name = if v.file {
            format!("{}[_FILE]", v.name)
        } else {
            v.name.to_string()
        };
        let default = if v.default.is_empty() {
            "(unset)".to_string()
        } else {
            format!("[default: {}]", v.default)
        };
        out.push_str(&format!("  {name:<width$}  {}  {default}\n", v.help));
    }
    out
}

/// An unknown `WEAUTH_*` name in the environment, with the closest known name when one is
/// near enough to be a likely typo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVar {
    pub name: String,
    pub closest: Option<&'static str>,
}

/// The `WEAUTH_*` names among `names` that the issuer does not read (a typo such as
/// `WEAUTH_ACESS_TTL` would otherwise be ignored without a word). `_FILE` variants count as
/// known for the variables that accept them; the tooling's names are skipped.
pub fn unknown_variables<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<UnknownVar> {
    let known = |name: &str| {
        VARIABLES
            .iter()
            .any(|v| v.name == name || (v.file && name.strip_suffix("_FILE") == Some(v.name)))
            || TOOLING.contains(&name)
            || name.starts_with("WEAUTH_BENCH_")
    };
    let mut unknown: Vec<UnknownVar> = names
        .into_iter()
        .filter(|name| name.starts_with("WEAUTH_") && !known(name))
        .map(|name| UnknownVar {
            name: name.to_string(),
            closest: closest_name(name),
        })
        .collect();
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

/// The known variable nearest to `name` by edit distance, if within a third of its length
/// (at least 2 edits): close enough to be a typo. Hand-written: 20 lines do not justify a
/// dependency.
fn closest_name(name: &str) -> Option<&'static str> {
    let (best, distance) = VARIABLES
        .iter()
        .map(|v| v.name)
        .map(|candidate| (candidate, edit_distance(name, candidate)))
        .min_by_key(|(_, d)| *d)?;
    (distance <= (name.len() / 3).max(2)).then_some(best)
}

/// Levenshtein distance over bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// One refused variable. The `Display` names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: String,
    /// What is wrong with it, for the operator.
    pub reason: String,
}

/// Every refused variable of one start, in table order. `Display`: one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The names of the refused variables.
    pub fn vars(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.var.as_str()).collect()
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn bad(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        reason: reason.into(),
    }
}

/// Collects errors while parsing goes on, so every bad variable is reported.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    /// The value, or `fallback` after recording the error (parsing continues).
    fn or<T>(&mut self, result: Result<T, ConfigError>, fallback: T) -> T {
        match result {
            Ok(value) => value,
            Err(err) => {
                self.0.push(err);
                fallback
            }
        }
    }

    /// The value, or `None` after recording the error.
    fn ok<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.0.push(err);
                None
            }
        }
    }

    fn push(&mut self, err: ConfigError) {
        self.0.push(err);
    }
}

/// Where state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH` (relative or absolute path; `sqlite:///abs/path` also accepted).
    Sqlite(PathBuf),
    /// `redis://[user:password@]host:port/db`, `rediss://…` (TLS), or
    /// `redis+sentinel://[user:password@]host:port[,host:port…]/<master-name>[/db]` (the
    /// user and password are the Redis servers'; the sentinels are asked without).
    Redis {
        target: RedisTarget,
        /// The URL with its password masked, for messages and logs.
        display: String,
    },
}

/// One trusted proxy network (`10.0.0.0/8`, `::1`, `127.0.0.1/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The typed configuration. Every field documents its variable and default.
#[derive(Debug, Clone)]
pub struct Config {
    /// `WEAUTH_LISTEN`, default `127.0.0.1:8080` (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `WEAUTH_STORE`, default `sqlite://weauth.db`; see [`StoreUrl`] for Redis.
    pub store: StoreUrl,
    /// `WEAUTH_REDIS_PREFIX`, default `weauth:`: the prefix of every Redis key (several
    /// deployments, or tests, can share one Redis).
    pub redis_prefix: String,
    /// `WEAUTH_REDIS_WAIT_REPLICAS`, default 1 with Sentinel, else 0: after each write, `WAIT`
    /// for this many replicas before answering.
    pub redis_wait_replicas: usize,
    /// `WEAUTH_REDIS_WAIT_TIMEOUT`, default `500ms`: the longest such wait.
    pub redis_wait_timeout: Duration,
    /// `WEAUTH_REDIS_ALLOW_EVICTION`, default `false`: start even when Redis's
    /// `maxmemory-policy` is not `noeviction` (then a warning says what can be lost). Without
    /// it such a policy refuses the start, naming the setting.
    pub redis_allow_eviction: bool,
    /// The WeChat apps served: `WEAUTH_APPS_FILE` (see [`crate::config::apps`]), or the one-app
    /// shortcut `WEAUTH_WECHAT_APPID` + `WEAUTH_WECHAT_SECRET` (`_FILE`), a single
    /// mini-program. One of the two forms is required to serve; both is an error. Empty for
    /// the `keys` subcommands when neither is set.
    pub apps: Apps,
    /// The first app's appid (with the shortcut: `WEAUTH_WECHAT_APPID`); empty without apps.
    pub wechat_appid: String,
    /// The first app's secret.
    pub wechat_secret: Zeroizing<String>,
    /// `WEAUTH_WECHAT_OPEN_BASE`, default `https://open.weixin.qq.com`: where browsers are
    /// sent to authorize a web login (the mock's URL in tests).
    pub wechat_open_base: String,
    /// `WEAUTH_COOKIE_SECURE`, default `true`: whether the session cookies of a web login
    /// carry `Secure`. `false` is for plain-http development only.
    pub cookie_secure: bool,
    /// `WEAUTH_WECHAT_API_BASE`, default `https://api.weixin.qq.com` (no trailing slash kept).
    pub wechat_api_base: String,
    /// `WEAUTH_WECHAT_TIMEOUT`, total per WeChat call attempt, default `5s`.
    pub wechat_timeout: Duration,
    /// `WEAUTH_WECHAT_CONNECT_TIMEOUT`, default `2s`.
    pub wechat_connect_timeout: Duration,
    /// `WEAUTH_WECHAT_RETRIES`: extra attempts after a retryable failure, default 2 (max 5).
    pub wechat_retries: u32,
    /// `WEAUTH_ISSUER`, default `http://127.0.0.1:8080`: the `iss` claim and discovery base.
    pub issuer: String,
    /// `WEAUTH_AUDIENCE`, comma list, default `weauth`.
    pub audiences: Vec<String>,
    /// `WEAUTH_ACCESS_TTL`, default `15m`.
    pub access_ttl: Duration,
    /// `WEAUTH_REFRESH_TTL`, default `7d` (sliding).
    pub refresh_ttl: Duration,
    /// `WEAUTH_SESSION_MAX`, default `30d`: absolute cap of a login session.
    pub session_max: Duration,
    /// `WEAUTH_REFRESH_REUSE_GRACE`, default `10s`: a refresh token presented again within
    /// this time after its rotation gets a sibling pair in the same session (a retry after a
    /// lost answer on a weak mobile network, a second browser tab); a later use is reuse and
    /// revokes the session (RFC 9700 §4.14.2). 0 = every second use revokes. Ten seconds covers
    /// an immediate retry and two tabs waking together while keeping a replay window short.
    pub refresh_reuse_grace: Duration,
    /// `WEAUTH_LEEWAY`, default `60s`: clock skew allowed on our own bearer checks, and the
    /// margin added to a revocation entry's `until`.
    pub leeway: Duration,
    /// `WEAUTH_FEED_TOKEN` / `_FILE`: credential of `GET /v1/revocations` (route disabled
    /// with 503 when unset).
    pub feed_token: Option<Zeroizing<String>>,
    /// `WEAUTH_ADMIN_TOKEN` / `_FILE`: credential of `POST /v1/admin/revoke` (disabled when
    /// unset).
    pub admin_token: Option<Zeroizing<String>>,
    /// `WEAUTH_LOG`, default `info` (a `tracing` env-filter directive).
    pub log: String,
    /// `WEAUTH_LOG_FORMAT`: `text` (default) or `json` (one JSON object per line).
    pub log_json: bool,
    /// `WEAUTH_DATA_KEY` / `_FILE`: base64 of 32 bytes encrypting session keys and signing
    /// keys at rest. Unset: a key file next to the database is used (created on first start).
    pub data_key: Option<Zeroizing<Vec<u8>>>,
    /// `WEAUTH_SIGNING_ALG`: `EdDSA` (default), `ES256` or `HS256`.
    pub signing_alg: Algorithm,
    /// `WEAUTH_SIGNING_KEY_FILE`: PKCS#8 PEM (EdDSA, ES256) or the raw HS256 secret
    /// (>= 32 bytes). Unset: keys are generated and kept in the store.
    pub signing_key_file: Option<PathBuf>,
    /// `WEAUTH_KEY_PUBLISH_DELAY`, default `10m`: how long a rotated key is published before
    /// it signs.
    pub key_publish_delay: Duration,
    /// `WEAUTH_KEY_RELOAD`, default `2s`: how often keys are re-read from the store.
    pub key_reload: Duration,
    /// `WEAUTH_PURGE_INTERVAL`, default `60s`: how often expired revocations, sessions and
    /// refresh tokens are deleted.
    pub purge_interval: Duration,
    /// `WEAUTH_FEED_COALESCE` (default `250ms`, `0`: no pacing) and `WEAUTH_FEED_ANSWER_RATE`
    /// (default 10 000): how the feed's long polls are woken (see [`crate::feed`]).
    pub feed_pacing: crate::feed::Pacing,
    /// `WEAUTH_TRUSTED_PROXIES`: comma list of IPs/CIDRs whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `WEAUTH_LOGIN_RATE`: logins per minute per client IP, default 60; 0 disables.
    pub login_rate_per_min: u32,
    /// `WEAUTH_LOGIN_BURST`: burst allowance, default 20.
    pub login_burst: u32,
    /// `WEAUTH_MAX_BODY`: request body cap in bytes, default 16384.
    pub max_body: usize,
    /// `WEAUTH_HEADER_TIMEOUT`, default `10s`: time allowed to send request headers.
    pub header_timeout: Duration,
    /// `WEAUTH_SHUTDOWN_GRACE`, default `10s`: drain deadline on SIGTERM/Ctrl-C.
    pub shutdown_grace: Duration,
    /// `WEAUTH_DECRYPT_MAX_AGE`, default unset (`off`): when set (e.g. `10m`), `POST
    /// /v1/me/decrypt` refuses data whose `watermark.timestamp` is older than this (400
    /// `invalid_request`, `error_code` `watermark_expired`). Off by default because WeChat's
    /// timestamp is when the data was produced, and clients may legitimately cache it.
    pub decrypt_max_age: Option<Duration>,
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `7d`, or plain seconds (`900`).
///
/// # Errors
/// A readable reason when the text is not such a duration or overflows.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{text}` is not a duration like 30s, 15m, 7d"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is too large"))?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m, h or d)"
            ))
        }
    }
    .ok_or_else(|| format!("`{text}` is too large"))?;
    Ok(Duration::from_millis(millis))
}

/// Reads configuration through `lookup` (a variable's value, `None` when unset) and
/// `read_file` (a path's contents, for `_FILE` variables).
pub struct Source<'a> {
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    pub read_file: &'a dyn Fn(&str) -> std::io::Result<String>,
}

impl Source<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.is_empty())
    }

    /// The value, or the default of [`VARIABLES`].
    fn text(&self, var: &str) -> String {
        self.get(var).unwrap_or_else(|| default_of(var).to_string())
    }

    fn secret(&self, var: &str) -> Result<Option<Zeroizing<String>>, ConfigError> {
        let file_var = format!("{var}_FILE");
        match (self.get(var), self.get(&file_var)) {
            (Some(_), Some(_)) => Err(bad(
                var,
                format!("set either {var} or {file_var}, not both"),
            )),
            (Some(value), None) => Ok(Some(Zeroizing::new(value))),
            (None, Some(path)) => {
                let text = (self.read_file)(&path)
                    .map_err(|err| bad(&file_var, format!("cannot read `{path}`: {err}")))?;
                let trimmed = text.trim_end_matches(['\n', '\r']).to_string();
                if trimmed.is_empty() {
                    return Err(bad(&file_var, format!("`{path}` is empty")));
                }
                Ok(Some(Zeroizing::new(trimmed)))
            }
            (None, None) => Ok(None),
        }
    }

    fn duration(&self, var: &str, min: Duration) -> Result<Duration, ConfigError> {
        let value = parse_duration(&self.text(var)).map_err(|reason| bad(var, reason))?;
        if value < min {
            return Err(bad(var, format!("must be at least {min:?}")));
        }
        Ok(value)
    }

    fn number<T: std::str::FromStr>(&self, var: &str) -> Result<T, ConfigError> {
        let text = self.text(var);
        text.trim()
            .parse()
            .map_err(|_| bad(var, format!("`{text}` is not a valid number")))
    }
}

/// Checks a `WEAUTH_LOG` value: comma-separated `LEVEL` or `TARGET=LEVEL` directives, levels
/// `trace debug info warn error off`. A bare word that is not a level is refused: `tracing`
/// would read it as a target name and log nothing else (a typo such as `inof` gave a silent
/// issuer).
///
/// # Errors
/// The offending directive, for the operator.
pub fn parse_log(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let text = text.trim();
    for directive in text.split(',').map(str::trim) {
        if directive.is_empty() {
            return Err(format!("`{text}` has an empty directive"));
        }
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (Some(target), level),
            None => (None, directive),
        };
        if target.is_some_and(str::is_empty) {
            return Err(format!("`{directive}` has no target before `=`"));
        }
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{level}` in `{directive}` is not a level (trace, debug, info, warn, error, off); \
                 write LEVEL or TARGET=LEVEL, e.g. info,weauth_issuer=debug"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text).map_err(|err| format!("`{text}`: {err}"))?;
    Ok(text.to_string())
}

/// The URL with the password (if any) replaced by `***`.
fn mask_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{masked}@{hosts}/{path}")
        }
        None => text.to_string(),
    }
}

fn parse_sentinel(rest: &str, display: String) -> Result<StoreUrl, ConfigError> {
    let fail = |reason: &str| {
        bad(
            "WEAUTH_STORE",
            format!(
                "`{display}`: {reason} (expected redis+sentinel://[user:password@]host:port[,host:port…]/<master-name>[/db])"
            ),
        )
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| fail("no master name"))?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let decode = |text: &str| {
        url::form_urlencoded::parse(format!("x={text}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, pass)) => (
                Some(decode(user)).filter(|u| !u.is_empty()),
                Some(decode(pass)),
            ),
            None => (None, Some(decode(info))),
        },
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',').filter(|h| !h.trim().is_empty()) {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (
                name,
                port.parse::<u16>()
                    .map_err(|_| fail(&format!("`{port}` is not a port")))?,
            ),
            None => (host, 26379),
        };
        if name.is_empty() {
            return Err(fail("empty host"));
        }
        sentinels.push((name.to_string(), port));
    }
    if sentinels.is_empty() {
        return Err(fail("no sentinel host"));
    }
    let mut parts = path.split('/');
    let master = parts.next().unwrap_or_default().to_string();
    if master.is_empty() {
        return Err(fail("no master name"));
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .map_err(|_| fail(&format!("`{db}` is not a database index")))?,
    };
    Ok(StoreUrl::Redis {
        target: RedisTarget::Sentinel {
            sentinels,
            master,
            db,
            username,
            password,
        },
        display,
    })
}

fn parse_store(text: &str) -> Result<StoreUrl, ConfigError> {
    if let Some(rest) = text.strip_prefix("redis+sentinel://") {
        return parse_sentinel(rest, mask_password(text));
    }
    if text.starts_with("redis://") || text.starts_with("rediss://") {
        let display = mask_password(text);
        let url = url::Url::parse(text)
            .map_err(|err| bad("WEAUTH_STORE", format!("`{display}`: {err}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("WEAUTH_STORE", format!("`{display}`: no host")));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<i64>().is_err() {
            return Err(bad(
                "WEAUTH_STORE",
                format!("`{display}`: `{db}` is not a database index"),
            ));
        }
        return Ok(StoreUrl::Redis {
            target: RedisTarget::Direct(text.to_string()),
            display,
        });
    }
    if let Some(path) = text.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(bad(
                "WEAUTH_STORE",
                "sqlite:// needs a path, e.g. sqlite://weauth.db",
            ));
        }
        return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
    }
    Err(bad(
        "WEAUTH_STORE",
        format!(
            "`{}` is not a store URL (expected sqlite://PATH, redis://, rediss:// or redis+sentinel://)",
            mask_password(text)
        ),
    ))
}

fn parse_base_url(var: &str, text: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(text).map_err(|err| bad(var, format!("`{text}`: {err}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad(var, "must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(var, "must not carry a query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// Longest access-token lifetime accepted: an access token cannot be taken back except
/// through the revocation list, so a day is already generous.
pub const MAX_ACCESS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest clock-skew allowance accepted.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// What the configuration is for: serving needs the WeChat credentials, the `keys`
/// subcommands (which only touch the store and the data key) do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Keys,
}

fn parse_data_key(text: &str) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim()))
        .map_err(|_| bad("WEAUTH_DATA_KEY", "is not base64"))?;
    if bytes.len() != 32 {
        return Err(bad(
            "WEAUTH_DATA_KEY",
            format!("must decode to 32 bytes, got {}", bytes.len()),
        ));
    }
    Ok(Zeroizing::new(bytes))
}

/// The apps: `WEAUTH_APPS_FILE`, or the `WEAUTH_WECHAT_APPID` + `WEAUTH_WECHAT_SECRET`
/// shortcut; both forms at once are refused. Without either, serving is refused (both
/// shortcut variables named) and the `keys` subcommands get no apps.
fn load_apps(src: &Source<'_>, mode: Mode) -> (Apps, Vec<ConfigError>) {
    let none = || Apps::new(Vec::new());
    let shortcut_set = [
        "WEAUTH_WECHAT_APPID",
        "WEAUTH_WECHAT_SECRET",
        "WEAUTH_WECHAT_SECRET_FILE",
    ]
    .into_iter()
    .find(|var| src.get(var).is_some());
    if let Some(path) = src.get("WEAUTH_APPS_FILE") {
        if let Some(var) = shortcut_set {
            return (
                none(),
                vec![bad(
                    "WEAUTH_APPS_FILE",
                    format!(
                        "set either WEAUTH_APPS_FILE or {var} (the one-app shortcut), not both"
                    ),
                )],
            );
        }
        let parsed = (src.read_file)(&path)
            .map_err(|err| bad("WEAUTH_APPS_FILE", format!("cannot read `{path}`: {err}")))
            .and_then(|text| {
                apps::parse_apps_file(
                    &text,
                    &apps::SecretSources {
                        read_file: src.read_file,
                        lookup: src.lookup,
                    },
                )
                .map_err(|reason| bad("WEAUTH_APPS_FILE", format!("`{path}`: {reason}")))
            });
        return match parsed {
            Ok(apps) => (apps, Vec::new()),
            Err(err) => (none(), vec![err]),
        };
    }
    let mut problems = Vec::new();
    let appid = src.get("WEAUTH_WECHAT_APPID");
    if let Some(appid) = &appid {
        if !apps::valid_appid(appid) {
            problems.push(bad("WEAUTH_WECHAT_APPID", "must be alphanumeric (wx...)"));
        }
    }
    let secret = match src.secret("WEAUTH_WECHAT_SECRET") {
        Ok(secret) => secret,
        Err(err) => {
            problems.push(err);
            None
        }
    };
    if mode == Mode::Serve {
        if appid.is_none() {
            problems.push(bad(
                "WEAUTH_WECHAT_APPID",
                "is required (or configure the apps in WEAUTH_APPS_FILE)",
            ));
        }
        if secret.is_none()
            && problems
                .iter()
                .all(|e| !e.var.starts_with("WEAUTH_WECHAT_SECRET"))
        {
            problems.push(bad(
                "WEAUTH_WECHAT_SECRET",
                "is required (or WEAUTH_WECHAT_SECRET_FILE)",
            ));
        }
    }
    match (appid, secret) {
        (Some(appid), Some(secret)) if problems.is_empty() => {
            (Apps::single(appid, secret), problems)
        }
        _ => (none(), problems),
    }
}

impl Config {
    /// Reads the process environment and the filesystem, for serving.
    ///
    /// # Errors
    /// Every invalid or missing variable.
    pub fn from_env() -> Result<Config, ConfigErrors> {
        Config::from_env_for(Mode::Serve)
    }

    /// Reads the process environment and the filesystem, for `mode`.
    ///
    /// # Errors
    /// Every invalid or missing variable.
    pub fn from_env_for(mode: Mode) -> Result<Config, ConfigErrors> {
        Config::load(
            &Source {
                lookup: &|name| std::env::var(name).ok(),
                read_file: &|path| std::fs::read_to_string(path),
            },
            mode,
        )
    }

    /// Reads configuration from `source`, for serving.
    ///
    /// # Errors
    /// Every invalid or missing variable.
    pub fn from_source(src: &Source<'_>) -> Result<Config, ConfigErrors> {
        Config::load(src, Mode::Serve)
    }

    /// Reads configuration from `source` for `mode`. Parsing goes on after a bad value, so
    /// the error lists every variable at fault.
    ///
    /// # Errors
    /// Every invalid or missing variable, in table order.
    pub fn load(src: &Source<'_>, mode: Mode) -> Result<Config, ConfigErrors> {
        let mut errs = Errors::default();
        let listen_text = src.text("WEAUTH_LISTEN");
        let listen = errs.or(
            listen_text.parse().map_err(|_| {
                bad(
                    "WEAUTH_LISTEN",
                    format!("`{listen_text}` is not an IP:PORT address"),
                )
            }),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        let store = errs.or(
            parse_store(&src.text("WEAUTH_STORE")),
            StoreUrl::Sqlite(PathBuf::new()),
        );
        let apps = {
            let (apps, problems) = load_apps(src, mode);
            for problem in problems {
                errs.push(problem);
            }
            apps
        };
        let (wechat_appid, wechat_secret) = match apps.all().first() {
            Some(first) => (first.appid.clone(), first.secret.clone()),
            None => (String::new(), Zeroizing::new(String::new())),
        };
        let wechat_open_base = errs.or(
            parse_base_url(
                "WEAUTH_WECHAT_OPEN_BASE",
                &src.text("WEAUTH_WECHAT_OPEN_BASE"),
            ),
            String::new(),
        );
        let cookie_secure = match src.text("WEAUTH_COOKIE_SECURE").as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                errs.push(bad(
                    "WEAUTH_COOKIE_SECURE",
                    format!("`{other}` is not true or false"),
                ));
                true
            }
        };
        let wechat_api_base = errs.or(
            parse_base_url(
                "WEAUTH_WECHAT_API_BASE",
                &src.text("WEAUTH_WECHAT_API_BASE"),
            ),
            String::new(),
        );
        let wechat_timeout = errs.or(
            src.duration("WEAUTH_WECHAT_TIMEOUT", Duration::from_millis(50)),
            Duration::ZERO,
        );
        let wechat_connect_timeout = errs.or(
            src.duration("WEAUTH_WECHAT_CONNECT_TIMEOUT", Duration::from_millis(50)),
            Duration::ZERO,
        );
        let wechat_retries: u32 = errs.or(src.number("WEAUTH_WECHAT_RETRIES"), 0);
        if wechat_retries > 5 {
            errs.push(bad("WEAUTH_WECHAT_RETRIES", "must be at most 5"));
        }
        let issuer = errs.or(
            parse_base_url("WEAUTH_ISSUER", &src.text("WEAUTH_ISSUER")),
            String::new(),
        );
        let audiences: Vec<String> = src
            .text("WEAUTH_AUDIENCE")
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            errs.push(bad("WEAUTH_AUDIENCE", "needs at least one audience"));
        }
        let second = Duration::from_secs(1);
        let access_ttl = errs.ok(src.duration("WEAUTH_ACCESS_TTL", second));
        let refresh_ttl = errs.ok(src.duration("WEAUTH_REFRESH_TTL", second));
        let session_max = errs.ok(src.duration("WEAUTH_SESSION_MAX", second));
        // Lifetimes that make no sense together.
        if let Some(access) = access_ttl {
            if access > MAX_ACCESS_TTL {
                errs.push(bad(
                    "WEAUTH_ACCESS_TTL",
                    format!(
                        "{access:?} is longer than {MAX_ACCESS_TTL:?}: an access token is only \
                         taken back through the revocation list; keep it short and refresh"
                    ),
                ));
            } else if refresh_ttl.is_some_and(|refresh| access > refresh) {
                errs.push(bad(
                    "WEAUTH_ACCESS_TTL",
                    "must not exceed WEAUTH_REFRESH_TTL (an access token outliving its refresh token)",
                ));
            }
        }
        if let (Some(refresh), Some(max)) = (refresh_ttl, session_max) {
            if refresh > max {
                errs.push(bad(
                    "WEAUTH_REFRESH_TTL",
                    "must not exceed WEAUTH_SESSION_MAX",
                ));
            }
        }
        let leeway = errs.or(
            src.duration("WEAUTH_LEEWAY", Duration::ZERO),
            Duration::ZERO,
        );
        if leeway > MAX_LEEWAY {
            errs.push(bad(
                "WEAUTH_LEEWAY",
                format!("must be at most {MAX_LEEWAY:?}"),
            ));
        }
        let refresh_reuse_grace = errs.or(
            src.duration("WEAUTH_REFRESH_REUSE_GRACE", Duration::ZERO),
            Duration::ZERO,
        );
        if refresh_reuse_grace > Duration::from_secs(60) {
            errs.push(bad("WEAUTH_REFRESH_REUSE_GRACE", "must be at most 60s"));
        }
        let mut token = |var: &str| {
            let token = errs.or(src.secret(var), None);
            if token.as_ref().is_some_and(|t| t.len() < 8) {
                errs.push(bad(var, "must be at least 8 characters"));
            }
            token
        };
        let feed_token = token("WEAUTH_FEED_TOKEN");
        let admin_token = token("WEAUTH_ADMIN_TOKEN");
        let data_key = match errs.or(src.secret("WEAUTH_DATA_KEY"), None) {
            None => None,
            Some(text) => errs.ok(parse_data_key(&text)),
        };
        let alg_text = src.text("WEAUTH_SIGNING_ALG");
        let signing_alg = errs.or(
            Algorithm::from_name(&alg_text).ok_or_else(|| {
                bad(
                    "WEAUTH_SIGNING_ALG",
                    format!("`{alg_text}` is not one of EdDSA, ES256, HS256"),
                )
            }),
            Algorithm::EdDSA,
        );
        let signing_key_file = src.get("WEAUTH_SIGNING_KEY_FILE").map(PathBuf::from);
        let key_publish_delay = errs.or(
            src.duration("WEAUTH_KEY_PUBLISH_DELAY", Duration::ZERO),
            Duration::ZERO,
        );
        let key_reload = errs.or(
            src.duration("WEAUTH_KEY_RELOAD", Duration::from_millis(100)),
            Duration::ZERO,
        );
        let purge_interval = errs.or(
            src.duration("WEAUTH_PURGE_INTERVAL", Duration::from_millis(100)),
            Duration::ZERO,
        );
        let feed_pacing = crate::feed::Pacing {
            longest: errs.or(
                src.duration("WEAUTH_FEED_COALESCE", Duration::ZERO),
                Duration::ZERO,
            ),
            answers_per_sec: errs.or(
                src.number::<u32>("WEAUTH_FEED_ANSWER_RATE")
                    .and_then(|rate| match rate {
                        0 => Err(bad("WEAUTH_FEED_ANSWER_RATE", "must be at least 1")),
                        rate => Ok(rate),
                    }),
                10_000,
            ),
        };
        let mut trusted_proxies = Vec::new();
        for item in src
            .text("WEAUTH_TRUSTED_PROXIES")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match IpNet::parse(item) {
                Some(net) => trusted_proxies.push(net),
                None => errs.push(bad(
                    "WEAUTH_TRUSTED_PROXIES",
                    format!("`{item}` is not an IP or CIDR"),
                )),
            }
        }
        let login_rate_per_min = errs.or(src.number("WEAUTH_LOGIN_RATE"), 0);
        let login_burst = errs.or(src.number("WEAUTH_LOGIN_BURST"), 0);
        let max_body: usize = errs.or(src.number("WEAUTH_MAX_BODY"), 0);
        if max_body < 256 && src.number::<usize>("WEAUTH_MAX_BODY").is_ok() {
            errs.push(bad("WEAUTH_MAX_BODY", "must be at least 256 bytes"));
        }
        let header_timeout = errs.or(
            src.duration("WEAUTH_HEADER_TIMEOUT", Duration::from_millis(100)),
            Duration::ZERO,
        );
        let shutdown_grace = errs.or(
            src.duration("WEAUTH_SHUTDOWN_GRACE", Duration::ZERO),
            Duration::ZERO,
        );
        let decrypt_max_age = if src
            .text("WEAUTH_DECRYPT_MAX_AGE")
            .trim()
            .eq_ignore_ascii_case("off")
        {
            None
        } else {
            errs.ok(src.duration("WEAUTH_DECRYPT_MAX_AGE", Duration::from_secs(1)))
        };
        let log = errs.or(
            parse_log(&src.text("WEAUTH_LOG")).map_err(|reason| bad("WEAUTH_LOG", reason)),
            String::new(),
        );
        let log_json = match src.text("WEAUTH_LOG_FORMAT").as_str() {
            "text" => false,
            "json" => true,
            other => {
                errs.push(bad(
                    "WEAUTH_LOG_FORMAT",
                    format!("`{other}` is not text or json"),
                ));
                false
            }
        };
        let redis_prefix = src.text("WEAUTH_REDIS_PREFIX");
        if redis_prefix.len() > 64 || redis_prefix.chars().any(char::is_whitespace) {
            errs.push(bad(
                "WEAUTH_REDIS_PREFIX",
                "must be at most 64 characters without spaces",
            ));
        }
        let sentinel = matches!(
            store,
            StoreUrl::Redis {
                target: RedisTarget::Sentinel { .. },
                ..
            }
        );
        let redis_wait_replicas: usize = if src.get("WEAUTH_REDIS_WAIT_REPLICAS").is_some() {
            errs.or(src.number("WEAUTH_REDIS_WAIT_REPLICAS"), 0)
        } else {
            usize::from(sentinel)
        };
        let redis_wait_timeout = errs.or(
            src.duration("WEAUTH_REDIS_WAIT_TIMEOUT", Duration::from_millis(1)),
            Duration::from_millis(500),
        );
        let redis_allow_eviction = match src.text("WEAUTH_REDIS_ALLOW_EVICTION").trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                errs.push(bad(
                    "WEAUTH_REDIS_ALLOW_EVICTION",
                    format!("`{other}` is not true or false"),
                ));
                false
            }
        };
        if matches!(store, StoreUrl::Redis { .. })
            && data_key.is_none()
            && errs.0.iter().all(|e| !e.var.starts_with("WEAUTH_DATA_KEY"))
        {
            errs.push(bad(
                "WEAUTH_DATA_KEY",
                "is required with a Redis store (every replica must share it; nothing is generated next to a shared store)",
            ));
        }
        if !errs.0.is_empty() {
            let order = |var: &str| {
                let base = var.strip_suffix("_FILE").unwrap_or(var);
                VARIABLES
                    .iter()
                    .position(|v| v.name == base)
                    .unwrap_or(usize::MAX)
            };
            let mut list = errs.0;
            list.sort_by_key(|e| order(&e.var));
            return Err(ConfigErrors(list));
        }
        Ok(Config {
            listen,
            store,
            redis_prefix,
            redis_wait_replicas,
            redis_wait_timeout,
            redis_allow_eviction,
            apps,
            wechat_appid,
            wechat_secret,
            wechat_open_base,
            cookie_secure,
            wechat_api_base,
            wechat_timeout,
            wechat_connect_timeout,
            wechat_retries,
            issuer,
            audiences,
            access_ttl: access_ttl.unwrap_or_default(),
            refresh_ttl: refresh_ttl.unwrap_or_default(),
            session_max: session_max.unwrap_or_default(),
            leeway,
            refresh_reuse_grace,
            feed_token,
            admin_token,
            log,
            log_json,
            data_key,
            signing_alg,
            signing_key_file,
            key_publish_delay,
            key_reload,
            purge_interval,
            feed_pacing,
            trusted_proxies,
            login_rate_per_min,
            login_burst,
            max_body,
            header_timeout,
            shutdown_grace,
            decrypt_max_age,
        })
    }

    /// The access-token lifetime in seconds.
    pub fn access_ttl_secs(&self) -> i64 {
        secs(self.access_ttl)
    }

    /// The leeway in seconds.
    pub fn leeway_secs(&self) -> i64 {
        secs(self.leeway)
    }

    /// The SQLite path, when the store is SQLite.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.store {
            StoreUrl::Sqlite(path) => Some(path),
            StoreUrl::Redis { .. } => None,
        }
    }
}

/// Whole seconds of a duration as `i64` (saturating).
pub fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        load_for(vars, Mode::Serve)
    }

    fn load_for(vars: &[(&str, &str)], mode: Mode) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| map.get(name).cloned();
        let read_file = |path: &str| {
            if path == "/secret/wechat" {
                Ok("file-secret\n".to_string())
            } else if path == "/etc/weauth/apps.json" {
                Ok(r#"{"apps":[
                    {"appid":"wxmini","secret_file":"/secret/wechat","kind":"miniprogram"},
                    {"appid":"wxoa","secret":"oa-secret","kind":"official_account",
                     "redirect_uris":["https://h5.example.com/after-login"]}]}"#
                    .to_string())
            } else if path == "/etc/weauth/dup.json" {
                Ok(
                    r#"{"apps":[{"appid":"wx1","secret":"a","kind":"miniprogram"},
                               {"appid":"wx1","secret":"b","kind":"miniprogram"}]}"#
                        .to_string(),
                )
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file",
                ))
            }
        };
        Config::load(
            &Source {
                lookup: &lookup,
                read_file: &read_file,
            },
            mode,
        )
    }

    const BASE: [(&str, &str); 2] = [
        ("WEAUTH_WECHAT_APPID", "wx0123456789abcdef"),
        ("WEAUTH_WECHAT_SECRET", "mock-secret"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut vars = BASE.to_vec();
        vars.extend_from_slice(extra);
        vars
    }

    #[test]
    fn parse_duration_units_ok() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn parse_duration_garbage_refused() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m15").is_err());
        assert!(parse_duration("15 minutes").is_err());
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn config_minimal_defaults_ok() {
        let config = load(&BASE).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.store, StoreUrl::Sqlite("weauth.db".into()));
        assert_eq!(config.wechat_api_base, "https://api.weixin.qq.com");
        assert_eq!(config.issuer, "http://127.0.0.1:8080");
        assert_eq!(config.audiences, vec!["weauth".to_string()]);
        assert_eq!(config.access_ttl, Duration::from_secs(900));
        assert_eq!(config.refresh_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(config.session_max, Duration::from_secs(30 * 86_400));
        assert_eq!(config.signing_alg, Algorithm::EdDSA);
        assert_eq!(config.key_publish_delay, Duration::from_secs(600));
        assert!(config.feed_token.is_none());
        assert_eq!(config.login_rate_per_min, 60);
    }

    #[test]
    fn config_missing_appid_names_variable() {
        let err = load(&[("WEAUTH_WECHAT_SECRET", "s")]).unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_WECHAT_APPID"]);
    }

    #[test]
    fn config_secret_from_file_ok() {
        let config = load(&[
            ("WEAUTH_WECHAT_APPID", "wx1"),
            ("WEAUTH_WECHAT_SECRET_FILE", "/secret/wechat"),
        ])
        .unwrap();
        assert_eq!(config.wechat_secret.as_str(), "file-secret");
    }

    #[test]
    fn config_secret_file_unreadable_names_file_variable() {
        let err = load(&[
            ("WEAUTH_WECHAT_APPID", "wx1"),
            ("WEAUTH_WECHAT_SECRET_FILE", "/nope"),
        ])
        .unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_WECHAT_SECRET_FILE"]);
    }

    #[test]
    fn config_secret_both_forms_refused() {
        let err = load(&with(&[("WEAUTH_WECHAT_SECRET_FILE", "/secret/wechat")])).unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_WECHAT_SECRET"]);
    }

    const KEY: (&str, &str) = (
        "WEAUTH_DATA_KEY",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    );

    #[test]
    fn config_redis_url_parsed_with_password_masked() {
        let config = load(&with(&[
            ("WEAUTH_STORE", "redis://:s3cret@10.0.0.5:6380/2"),
            KEY,
        ]))
        .unwrap();
        let StoreUrl::Redis { target, display } = &config.store else {
            panic!("expected redis");
        };
        assert_eq!(
            target,
            &RedisTarget::Direct("redis://:s3cret@10.0.0.5:6380/2".into())
        );
        assert_eq!(display, "redis://:***@10.0.0.5:6380/2");
        assert_eq!(config.redis_prefix, "weauth:");
        assert_eq!(config.redis_wait_replicas, 0);
    }

    #[test]
    fn config_redis_allow_eviction_off_by_default_and_parsed() {
        let redis = ("WEAUTH_STORE", "redis://127.0.0.1:6379/0");
        let config = load(&with(&[redis, KEY])).unwrap();
        assert!(!config.redis_allow_eviction);
        let config = load(&with(&[
            redis,
            KEY,
            ("WEAUTH_REDIS_ALLOW_EVICTION", "true"),
        ]))
        .unwrap();
        assert!(config.redis_allow_eviction);
        let Err(errors) = load(&with(&[
            redis,
            KEY,
            ("WEAUTH_REDIS_ALLOW_EVICTION", "maybe"),
        ])) else {
            panic!("`maybe` is not a boolean");
        };
        assert!(
            errors.to_string().contains("WEAUTH_REDIS_ALLOW_EVICTION"),
            "{errors}"
        );
    }

    #[test]
    fn config_redis_sentinel_url_parsed() {
        let config = load(&with(&[
            (
                "WEAUTH_STORE",
                "redis+sentinel://app:pw@s1:26380,s2,s3:26381/mymaster/3",
            ),
            KEY,
        ]))
        .unwrap();
        assert_eq!(
            config.store,
            StoreUrl::Redis {
                target: RedisTarget::Sentinel {
                    sentinels: vec![
                        ("s1".into(), 26380),
                        ("s2".into(), 26379),
                        ("s3".into(), 26381)
                    ],
                    master: "mymaster".into(),
                    db: 3,
                    username: Some("app".into()),
                    password: Some("pw".into()),
                },
                display: "redis+sentinel://app:***@s1:26380,s2,s3:26381/mymaster/3".into(),
            }
        );
        assert_eq!(
            config.redis_wait_replicas, 1,
            "WAIT for one replica by default"
        );
    }

    #[test]
    fn config_redis_without_data_key_refused_naming_it() {
        let err = load(&with(&[("WEAUTH_STORE", "redis://127.0.0.1:6379/0")])).unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_DATA_KEY"]);
    }

    #[test]
    fn config_bad_values_name_their_variable() {
        for (var, value) in [
            ("WEAUTH_LISTEN", "localhost"),
            ("WEAUTH_STORE", "postgres://x"),
            ("WEAUTH_STORE", "redis+sentinel:///mymaster"),
            ("WEAUTH_STORE", "redis://127.0.0.1:6379/db"),
            ("WEAUTH_ACCESS_TTL", "soon"),
            ("WEAUTH_ACCESS_TTL", "0s"),
            ("WEAUTH_REFRESH_TTL", "40d"),
            ("WEAUTH_SIGNING_ALG", "RS256"),
            ("WEAUTH_SIGNING_ALG", "eddsa"),
            ("WEAUTH_DATA_KEY", "c2hvcnQ="),
            ("WEAUTH_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("WEAUTH_LOGIN_RATE", "many"),
            ("WEAUTH_ISSUER", "ftp://x"),
            ("WEAUTH_WECHAT_API_BASE", "not a url"),
            ("WEAUTH_AUDIENCE", " , "),
            ("WEAUTH_FEED_TOKEN", "short"),
            ("WEAUTH_WECHAT_RETRIES", "9"),
            ("WEAUTH_REFRESH_REUSE_GRACE", "5m"),
            ("WEAUTH_LOG_FORMAT", "xml"),
            ("WEAUTH_DECRYPT_MAX_AGE", "later"),
            ("WEAUTH_DECRYPT_MAX_AGE", "0s"),
            ("WEAUTH_LOG", "verbose"),
            ("WEAUTH_LOG", "inof"),
            ("WEAUTH_LOG", "info,,debug"),
            ("WEAUTH_LOG", "weauth_issuer=loud"),
            ("WEAUTH_ACCESS_TTL", "30d"),
            ("WEAUTH_ACCESS_TTL", "8d"),
            ("WEAUTH_LEEWAY", "1h"),
            ("WEAUTH_MAX_BODY", "10"),
        ] {
            let err = load(&with(&[(var, value)])).unwrap_err();
            assert_eq!(err.vars(), [var], "{var}={value}: {err}");
        }
    }

    #[test]
    fn config_several_bad_values_all_reported_at_once() {
        let err = load(&[
            ("WEAUTH_LOG", "verbose"),
            ("WEAUTH_ACCESS_TTL", "soon"),
            ("WEAUTH_LISTEN", "nowhere"),
        ])
        .unwrap_err();
        assert_eq!(
            err.vars(),
            [
                "WEAUTH_LISTEN",
                "WEAUTH_WECHAT_APPID",
                "WEAUTH_WECHAT_SECRET",
                "WEAUTH_ACCESS_TTL",
                "WEAUTH_LOG"
            ]
        );
        assert_eq!(err.to_string().lines().count(), 5, "{err}");
    }

    #[test]
    fn config_apps_file_read_with_secret_files() {
        let config = load(&[("WEAUTH_APPS_FILE", "/etc/weauth/apps.json")]).unwrap();
        assert_eq!(config.apps.all().len(), 2);
        assert_eq!(
            config.apps.get("wxmini").unwrap().secret.as_str(),
            "file-secret"
        );
        assert_eq!(
            config.apps.get("wxoa").unwrap().kind,
            crate::config::apps::AppKind::OfficialAccount
        );
        assert_eq!(config.wechat_appid, "wxmini");
    }

    #[test]
    fn config_apps_file_and_shortcut_both_refused() {
        let err = load(&with(&[("WEAUTH_APPS_FILE", "/etc/weauth/apps.json")])).unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_APPS_FILE"]);
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn config_apps_file_invalid_names_variable_and_entry() {
        let err = load(&[("WEAUTH_APPS_FILE", "/etc/weauth/dup.json")]).unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_APPS_FILE"]);
        assert!(
            err.to_string().contains("apps[1] (wx1): duplicate appid"),
            "{err}"
        );
        let err = load(&[("WEAUTH_APPS_FILE", "/nope.json")]).unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_APPS_FILE"]);
    }

    #[test]
    fn config_shortcut_is_one_miniprogram_and_web_defaults() {
        let config = load(&BASE).unwrap();
        assert_eq!(config.apps.all().len(), 1);
        assert_eq!(
            config.apps.miniprogram(None).unwrap().appid,
            "wx0123456789abcdef"
        );
        assert!(config.cookie_secure);
        assert_eq!(config.wechat_open_base, "https://open.weixin.qq.com");
        let config = load(&with(&[("WEAUTH_COOKIE_SECURE", "false")])).unwrap();
        assert!(!config.cookie_secure);
        for (var, value) in [
            ("WEAUTH_COOKIE_SECURE", "maybe"),
            ("WEAUTH_WECHAT_OPEN_BASE", "open.weixin.qq.com"),
        ] {
            let err = load(&with(&[(var, value)])).unwrap_err();
            assert_eq!(err.vars(), [var], "{var}={value}: {err}");
        }
    }

    #[test]
    fn config_log_directives_accepted() {
        for value in [
            "debug",
            "WARN",
            "info,weauth_issuer=debug",
            "off",
            "hyper=warn,trace",
        ] {
            let config = load(&with(&[("WEAUTH_LOG", value)])).unwrap();
            assert_eq!(config.log, value);
        }
    }

    #[test]
    fn config_access_ttl_longer_than_refresh_refused() {
        let err = load(&with(&[
            ("WEAUTH_ACCESS_TTL", "2h"),
            ("WEAUTH_REFRESH_TTL", "1h"),
        ]))
        .unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_ACCESS_TTL"]);
        assert!(err.to_string().contains("WEAUTH_REFRESH_TTL"), "{err}");
        assert!(load(&with(&[
            ("WEAUTH_ACCESS_TTL", "1h"),
            ("WEAUTH_REFRESH_TTL", "1h")
        ]))
        .is_ok());
    }

    #[test]
    fn config_keys_mode_without_wechat_credentials_ok() {
        assert!(load(&[]).is_err());
        let config = load_for(&[], Mode::Keys).unwrap();
        assert!(config.wechat_appid.is_empty());
        let err = load_for(&[("WEAUTH_ACCESS_TTL", "soon")], Mode::Keys).unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_ACCESS_TTL"]);
    }

    #[test]
    fn defaults_come_from_the_table() {
        let config = load(&BASE).unwrap();
        assert_eq!(
            config.wechat_timeout,
            parse_duration(default_of("WEAUTH_WECHAT_TIMEOUT")).unwrap()
        );
        assert_eq!(
            config.access_ttl,
            parse_duration(default_of("WEAUTH_ACCESS_TTL")).unwrap()
        );
        assert_eq!(config.log, default_of("WEAUTH_LOG"));
        assert_eq!(config.max_body.to_string(), default_of("WEAUTH_MAX_BODY"));
    }

    #[test]
    fn help_text_lists_every_variable_with_its_default() {
        let help = help_text();
        for v in VARIABLES {
            let line = help
                .lines()
                .find(|l| {
                    let name = l.split_whitespace().next().unwrap_or("");
                    name == v.name || name == format!("{}[_FILE]", v.name)
                })
                .unwrap_or_else(|| panic!("{} missing from --help", v.name));
            if !v.default.is_empty() {
                assert!(
                    line.contains(&format!("[default: {}]", v.default)),
                    "{line}"
                );
            }
        }
        assert!(help.contains("WEAUTH_WECHAT_SECRET[_FILE]"));
    }

    #[test]
    fn unknown_variables_suggest_the_closest_name() {
        let found = unknown_variables([
            "WEAUTH_ACESS_TTL",
            "WEAUTH_ACCESS_TTL",
            "WEAUTH_WECHAT_SECRET_FILE",
            "WEAUTH_ISSUER_BIN",
            "WEAUTH_STACK_BIN",
            "WEAUTH_BENCH_MODE",
            "WEAUTH_SOMETHING_ELSE_ENTIRELY",
            "HOME",
        ]);
        assert_eq!(
            found,
            vec![
                UnknownVar {
                    name: "WEAUTH_ACESS_TTL".into(),
                    closest: Some("WEAUTH_ACCESS_TTL"),
                },
                UnknownVar {
                    name: "WEAUTH_SOMETHING_ELSE_ENTIRELY".into(),
                    closest: None,
                },
            ]
        );
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_substitutions() {
        assert_eq!(edit_distance("WEAUTH_ACESS_TTL", "WEAUTH_ACCESS_TTL"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }

    #[test]
    fn config_decrypt_max_age_off_by_default_parsed_when_set() {
        assert_eq!(load(&BASE).unwrap().decrypt_max_age, None);
        assert_eq!(
            load(&with(&[("WEAUTH_DECRYPT_MAX_AGE", "off")]))
                .unwrap()
                .decrypt_max_age,
            None
        );
        assert_eq!(
            load(&with(&[("WEAUTH_DECRYPT_MAX_AGE", "10m")]))
                .unwrap()
                .decrypt_max_age,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn config_audience_list_trimmed() {
        let config = load(&with(&[("WEAUTH_AUDIENCE", "a, b ,c")])).unwrap();
        assert_eq!(config.audiences, vec!["a", "b", "c"]);
    }

    #[test]
    fn config_data_key_base64_32_bytes_ok() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let config = load(&with(&[("WEAUTH_DATA_KEY", key)])).unwrap();
        assert_eq!(config.data_key.unwrap()[31], 31);
    }

    #[test]
    fn ipnet_contains_matches_prefix() {
        let net = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = IpNet::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }
}
