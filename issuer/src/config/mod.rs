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
mod parse;
/// `docs/CONFIGURATION.md`'s variable table from [`VARIABLES`], and its check.
#[cfg(test)]
mod reference;
mod variables;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::secrets::Secret;
use weauth_token::Algorithm;

use self::apps::Apps;
use self::parse::{
    parse_base_url, parse_canonical_base_url, parse_data_key, parse_previous_data_keys, parse_store,
};
pub use self::parse::{parse_duration, parse_log, IpNet, Source};
pub use self::variables::{default_of, help_text, unknown_variables, UnknownVar, Var, VARIABLES};

/// Where the Redis primary is. `Debug` shows no password ([`StoreUrl`]'s).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://` or `rediss://`: one server.
    Direct(String),
    /// `redis+sentinel://`: ask these sentinels for the primary of `master`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        username: Option<String>,
        password: Option<String>,
    },
    /// `redis+cluster://` or `rediss+cluster://` (TLS): a Redis Cluster; the hosts are seeds,
    /// the topology is discovered (and followed) by the client.
    Cluster {
        nodes: Vec<(String, u16)>,
        tls: bool,
        username: Option<String>,
        password: Option<String>,
    },
}

/// How the revocation feed's long-poll wakes are paced (`WEAUTH_FEED_COALESCE`,
/// `WEAUTH_FEED_ANSWER_RATE`; the pacing itself is `crate::feed`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// The longest window (`Duration::ZERO`: every change wakes at once).
    pub longest: Duration,
    /// Answers per second a replica's wakes aim to stay under.
    pub answers_per_sec: u32,
}

/// The longest reuse grace (`WEAUTH_REFRESH_REUSE_GRACE`), in seconds; also how long a store
/// keeps a used refresh token past its own expiry, for a retry within the grace after a
/// rotation in its last seconds (`rules::decide_refresh` judges a used token by its use, not
/// its expiry).
pub const MAX_REUSE_GRACE: i64 = 60;

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

/// The largest `WEAUTH_MAX_IN_FLIGHT` taken.
pub const MAX_IN_FLIGHT_LIMIT: usize = 1_000_000;

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

/// Where state lives. `Debug` shows the URLs with their passwords masked (a `{:?}` of the
/// configuration would have printed them).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH` (relative or absolute path; `sqlite:///abs/path` also accepted).
    Sqlite(PathBuf),
    /// `redis://[user:password@]host:port/db`, `rediss://…` (TLS), or
    /// `redis+sentinel://[user:password@]host:port[,host:port…]/<master-name>[/db]` (the
    /// user and password are the Redis servers'; the sentinels are asked without), or
    /// `redis+cluster://[user:password@]host:port[,host:port…]/` (`rediss+cluster://` for TLS;
    /// the hosts are seeds of a Redis Cluster).
    Redis {
        target: RedisTarget,
        /// The URL with its password masked, for messages and logs.
        display: String,
    },
    /// `mysql://user:password@host:port/db` (MySQL 8 or MariaDB 10.11 and later, InnoDB).
    Mysql {
        /// The URL as given (with the password): only handed to the driver.
        url: String,
        /// The URL with its password masked, for messages and logs.
        display: String,
    },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |password: &Option<String>| password.as_ref().map(|_| "[redacted]");
        match self {
            // The URL as given, password and all: `StoreUrl::Redis::display` is its masked form.
            RedisTarget::Direct(_) => f.write_str("Direct([redacted])"),
            RedisTarget::Sentinel {
                sentinels,
                master,
                db,
                username,
                password,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("master", master)
                .field("db", db)
                .field("username", username)
                .field("password", &masked(password))
                .finish(),
            RedisTarget::Cluster {
                nodes,
                tls,
                username,
                password,
            } => f
                .debug_struct("Cluster")
                .field("nodes", nodes)
                .field("tls", tls)
                .field("username", username)
                .field("password", &masked(password))
                .finish(),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            StoreUrl::Redis { target, display } => f
                .debug_struct("Redis")
                .field("target", target)
                .field("display", display)
                .finish(),
            StoreUrl::Mysql { display, .. } => f
                .debug_struct("Mysql")
                .field("display", display)
                .finish_non_exhaustive(),
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
    /// `WEAUTH_REDIS_WAIT_REPLICAS`, default 1 with Sentinel or a Cluster, else 0: after each write, `WAIT`
    /// for this many replicas before answering.
    pub redis_wait_replicas: usize,
    /// `WEAUTH_REDIS_WAIT_TIMEOUT`, default `500ms`: the longest such wait.
    pub redis_wait_timeout: Duration,
    /// `WEAUTH_REDIS_ALLOW_EVICTION`, default `false`: start even when Redis's
    /// `maxmemory-policy` is not `noeviction` (then a warning says what can be lost). Without
    /// it such a policy refuses the start, naming the setting.
    pub redis_allow_eviction: bool,
    /// `WEAUTH_MYSQL_POOL_MAX`, default 16: the most connections one replica opens to MySQL.
    pub mysql_pool_max: u32,
    /// `WEAUTH_MYSQL_ACQUIRE_TIMEOUT`, default `2s`: how long an operation waits for a pooled
    /// connection (or a new one to be opened) before it is answered 503.
    pub mysql_acquire_timeout: Duration,
    /// `WEAUTH_MYSQL_QUERY_TIMEOUT`, default `5s`: how long one store operation (one
    /// transaction, its wait for a connection included, each retry of it counted afresh) may
    /// wait for MySQL before it is given up (503; its transaction rolled back, its connection
    /// closed if it does not answer either).
    pub mysql_query_timeout: Duration,
    /// The WeChat apps served: `WEAUTH_APPS_FILE` (see [`crate::config::apps`]), or the one-app
    /// shortcut `WEAUTH_WECHAT_APPID` + `WEAUTH_WECHAT_SECRET` (`_FILE`), a single
    /// mini-program. One of the two forms is required to serve; both is an error. Empty for
    /// the `keys` subcommands when neither is set.
    pub apps: Apps,
    /// The first app's appid (with the shortcut: `WEAUTH_WECHAT_APPID`); empty without apps.
    pub wechat_appid: String,
    /// The first app's secret.
    pub wechat_secret: Secret<String>,
    /// `WEAUTH_WECHAT_OPEN_BASE`, default `https://open.weixin.qq.com`: where browsers are
    /// sent to authorize a web login (the mock's URL in tests).
    pub wechat_open_base: String,
    /// `WEAUTH_COOKIE_SECURE`, default `true`: whether the session cookies of a web login
    /// carry `Secure`. `false` is for plain-http development only: refused with an
    /// `https://` `WEAUTH_ISSUER`.
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
    /// this time after its rotation gets the refresh token its rotation gave, with an access
    /// token of its own (a retry after a lost answer on a weak mobile network, a second
    /// browser tab); a later use is reuse and
    /// revokes the session (RFC 9700 §4.14.2). 0 = every second use revokes. Ten seconds covers
    /// an immediate retry and two tabs waking together while keeping a replay window short.
    pub refresh_reuse_grace: Duration,
    /// `WEAUTH_LEEWAY`, default `60s`: clock skew allowed on our own bearer checks, and the
    /// margin added to a revocation entry's `until`.
    pub leeway: Duration,
    /// `WEAUTH_FEED_TOKEN` / `_FILE`: credential of `GET /v1/revocations` (route disabled
    /// with 503 when unset).
    pub feed_token: Option<Secret<String>>,
    /// `WEAUTH_ADMIN_TOKEN` / `_FILE`: credential of `POST /v1/admin/revoke` (disabled when
    /// unset).
    pub admin_token: Option<Secret<String>>,
    /// `WEAUTH_LOG`, default `info` (a `tracing` env-filter directive).
    pub log: String,
    /// `WEAUTH_LOG_FORMAT`: `text` (default) or `json` (one JSON object per line).
    pub log_json: bool,
    /// `WEAUTH_DATA_KEY` / `_FILE`: base64 of 32 bytes encrypting session keys and signing
    /// keys at rest, and deriving each refresh token's one successor
    /// ([`crate::domain::tokens::successor_refresh_token`]). Unset: a key file next to the
    /// database is used (created on first start).
    pub data_key: Option<Secret<Vec<u8>>>,
    /// `WEAUTH_DATA_KEY_PREVIOUS` / `_FILE`: the keys a rotation replaced; they only open.
    pub data_key_previous: Secret<Vec<[u8; 32]>>,
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
    /// refresh tokens are deleted (on Redis, refresh tokens are left to their TTLs).
    pub purge_interval: Duration,
    /// `WEAUTH_FEED_COALESCE` (default `250ms`, `0`: no pacing) and `WEAUTH_FEED_ANSWER_RATE`
    /// (default 10 000): how the feed's long polls are woken (see [`crate::feed`]).
    pub feed_pacing: Pacing,
    /// `WEAUTH_TRUSTED_PROXIES`: comma list of IPs/CIDRs whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `WEAUTH_LOGIN_RATE`: logins per minute per client IP, default 60; 0 disables.
    pub login_rate_per_min: u32,
    /// `WEAUTH_LOGIN_BURST`: burst allowance, default 20.
    pub login_burst: u32,
    /// `WEAUTH_USER_WECHAT_RATE`: calls to WeChat per minute per user (`sub`) from the routes
    /// that make one — `GET /v1/me/session`, `POST /v1/me/phone`, `POST /v1/me/decrypt` with
    /// `verify_with_wechat` — default 10; 0 disables. WeChat counts those APIs per app and
    /// day, so without it one logged-in user could spend the quota every user shares.
    pub user_wechat_rate_per_min: u32,
    /// `WEAUTH_USER_WECHAT_BURST`: burst allowance, default 10.
    pub user_wechat_burst: u32,
    /// `WEAUTH_MAX_IN_FLIGHT`, default 512 (0: no limit): the most client requests (the
    /// routes of [`crate::api`]'s `SHED`: logins, refreshes, `/v1/me`, the web login) one
    /// replica works on at once; past it they are answered 503 at once. A slow WeChat (a call
    /// may take its timeout three times over) or store at a login peak otherwise piles up
    /// requests, each with its connections and buffers, until the pod's memory limit ends them
    /// all.
    pub max_in_flight: usize,
    /// `WEAUTH_MAX_BODY`: request body cap in bytes, default 16384.
    pub max_body: usize,
    /// `WEAUTH_HEADER_TIMEOUT`, default `10s`: time allowed to send request headers.
    pub header_timeout: Duration,
    /// `WEAUTH_SHUTDOWN_GRACE`, default `10s`: drain deadline on SIGTERM/Ctrl-C.
    pub shutdown_grace: Duration,
    /// `WEAUTH_DECRYPT_MAX_AGE`, default unset (`off`): when set (e.g. `10m`), `POST
    /// /v1/me/decrypt` refuses data whose `watermark.timestamp` is older than this (400,
    /// `"error": "watermark_expired"`). Off by default because WeChat's
    /// timestamp is when the data was produced, and clients may legitimately cache it.
    pub decrypt_max_age: Option<Duration>,
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
            None => (String::new(), Secret::new(String::new())),
        };
        let wechat_open_base = errs.or(
            parse_canonical_base_url(
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
            parse_canonical_base_url(
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
        // Without `Secure` the cookies lose their `__Host-` names and the refresh cookie its
        // binding, so a sibling host could plant the state or a refresh cookie (login CSRF):
        // over https there is no reason to give that up.
        let https = url::Url::parse(&issuer).is_ok_and(|url| url.scheme() == "https");
        if !cookie_secure && https {
            errs.push(bad(
                "WEAUTH_COOKIE_SECURE",
                "`false` is for a plain-http WEAUTH_ISSUER only (it drops the cookies' __Host- names and the refresh cookie's binding)",
            ));
        }
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
        let access_ttl = errs.ok(src.seconds("WEAUTH_ACCESS_TTL", second));
        let refresh_ttl = errs.ok(src.seconds("WEAUTH_REFRESH_TTL", second));
        let session_max = errs.ok(src.seconds("WEAUTH_SESSION_MAX", second));
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
        let leeway = errs.or(src.seconds("WEAUTH_LEEWAY", Duration::ZERO), Duration::ZERO);
        if leeway > MAX_LEEWAY {
            errs.push(bad(
                "WEAUTH_LEEWAY",
                format!("must be at most {MAX_LEEWAY:?}"),
            ));
        }
        let refresh_reuse_grace = errs.or(
            src.seconds("WEAUTH_REFRESH_REUSE_GRACE", Duration::ZERO),
            Duration::ZERO,
        );
        let max_grace = MAX_REUSE_GRACE;
        if refresh_reuse_grace > Duration::from_secs(max_grace.unsigned_abs()) {
            errs.push(bad(
                "WEAUTH_REFRESH_REUSE_GRACE",
                format!("must be at most {max_grace}s"),
            ));
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
        // The feed credential sits in every sidecar's configuration; the admin one revokes,
        // bans and shows users: one that reads a sidecar's configuration must not get both.
        if feed_token.is_some() && feed_token == admin_token {
            errs.push(bad(
                "WEAUTH_ADMIN_TOKEN",
                "must differ from WEAUTH_FEED_TOKEN (the feed credential is in every sidecar's configuration)",
            ));
        }
        let data_key = match errs.or(src.secret("WEAUTH_DATA_KEY"), None) {
            None => None,
            Some(text) => errs.ok(parse_data_key(&text)),
        };
        let data_key_previous = match errs.or(src.secret("WEAUTH_DATA_KEY_PREVIOUS"), None) {
            None => Secret::default(),
            Some(text) => errs.or(
                parse_previous_data_keys(&text, data_key.as_deref().map(Vec::as_slice)),
                Secret::default(),
            ),
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
        if signing_alg == Algorithm::HS256 && signing_key_file.is_none() {
            errs.push(bad(
                "WEAUTH_SIGNING_KEY_FILE",
                "is required with WEAUTH_SIGNING_ALG=HS256: an HS256 secret is never published, \
                 so every verifier must be given it — a secret the issuer generated could reach \
                 none",
            ));
        }
        let key_publish_delay = errs.or(
            src.seconds("WEAUTH_KEY_PUBLISH_DELAY", Duration::ZERO),
            Duration::ZERO,
        );
        let key_reload = errs.or(
            src.duration("WEAUTH_KEY_RELOAD", Duration::from_millis(100)),
            Duration::ZERO,
        );
        // A replica learns of a new key only at a reload: every replica must publish it well
        // before any signs with it (and the edge fetch it), or the edge refuses the new tokens.
        if !key_publish_delay.is_zero() && key_reload * 2 > key_publish_delay {
            errs.push(bad(
                "WEAUTH_KEY_RELOAD",
                "must be at most half of WEAUTH_KEY_PUBLISH_DELAY (a replica publishes a new key only at its next reload, and must do so well before any replica signs with it)",
            ));
        }
        let purge_interval = errs.or(
            src.duration("WEAUTH_PURGE_INTERVAL", Duration::from_millis(100)),
            Duration::ZERO,
        );
        let feed_pacing = Pacing {
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
        let user_wechat_rate_per_min = errs.or(src.number("WEAUTH_USER_WECHAT_RATE"), 0);
        let user_wechat_burst = errs.or(src.number("WEAUTH_USER_WECHAT_BURST"), 0);
        let max_in_flight: usize = errs.or(src.number("WEAUTH_MAX_IN_FLIGHT"), 0);
        // A semaphore's permits are bounded (tokio panics above `usize::MAX >> 3`); a limit
        // past a million is no limit in practice: say 0.
        if max_in_flight > MAX_IN_FLIGHT_LIMIT {
            errs.push(bad(
                "WEAUTH_MAX_IN_FLIGHT",
                format!("at most {MAX_IN_FLIGHT_LIMIT} (0: no limit)"),
            ));
        }
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
            errs.ok(src.seconds("WEAUTH_DECRYPT_MAX_AGE", Duration::from_secs(1)))
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
        // No braces: on a Redis Cluster the prefix is the directory's hash tag (`{P}`) and
        // precedes the sessions' (`P{s:F}`); a brace in it would end or start a tag of its own.
        if redis_prefix.len() > 64
            || redis_prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            errs.push(bad(
                "WEAUTH_REDIS_PREFIX",
                "must be at most 64 characters without spaces or braces",
            ));
        }
        let sentinel = matches!(
            store,
            StoreUrl::Redis {
                target: RedisTarget::Sentinel { .. } | RedisTarget::Cluster { .. },
                ..
            }
        );
        let redis_wait_replicas: usize = if src.get("WEAUTH_REDIS_WAIT_REPLICAS").is_some() {
            errs.or(src.number("WEAUTH_REDIS_WAIT_REPLICAS"), 0)
        } else {
            usize::from(sentinel)
        };
        let redis_wait_timeout = errs.or(
            src.duration("WEAUTH_REDIS_WAIT_TIMEOUT", Duration::from_millis(1))
                .and_then(|wait| {
                    // Under the client's response timeout (3 s), or a WAIT that runs its course
                    // would end as a failed command — every write behind it refused — rather
                    // than as a shortfall.
                    if wait >= Duration::from_millis(2500) {
                        Err(bad(
                            "WEAUTH_REDIS_WAIT_TIMEOUT",
                            "must be under 2.5s (the Redis client gives up on a command after 3 s)",
                        ))
                    } else {
                        Ok(wait)
                    }
                }),
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
        let mysql_pool_max: u32 = errs.or(src.number("WEAUTH_MYSQL_POOL_MAX"), 16);
        if mysql_pool_max == 0 {
            errs.push(bad("WEAUTH_MYSQL_POOL_MAX", "must be at least 1"));
        }
        let mysql_acquire_timeout = errs.or(
            src.duration("WEAUTH_MYSQL_ACQUIRE_TIMEOUT", Duration::from_millis(10)),
            Duration::from_secs(2),
        );
        let mysql_query_timeout = errs.or(
            src.duration("WEAUTH_MYSQL_QUERY_TIMEOUT", Duration::from_millis(100)),
            Duration::from_secs(5),
        );
        if matches!(store, StoreUrl::Redis { .. } | StoreUrl::Mysql { .. })
            && data_key.is_none()
            && errs.0.iter().all(|e| !e.var.starts_with("WEAUTH_DATA_KEY"))
        {
            errs.push(bad(
                "WEAUTH_DATA_KEY",
                "is required with a Redis or MySQL store (every replica must share it; nothing is generated next to a shared store)",
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
            mysql_pool_max,
            mysql_acquire_timeout,
            mysql_query_timeout,
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
            data_key_previous,
            signing_alg,
            signing_key_file,
            key_publish_delay,
            key_reload,
            purge_interval,
            feed_pacing,
            trusted_proxies,
            login_rate_per_min,
            login_burst,
            user_wechat_rate_per_min,
            user_wechat_burst,
            max_in_flight,
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

    /// How long a superseded signing key stays published after its successor's `activate_at`,
    /// for tokens of lifetime `ttl` (seconds): their lifetime and the leeway, and one key reload
    /// (`WEAUTH_KEY_RELOAD`, rounded up) — a replica promotes the successor only at its next
    /// reload, and signs with the old key until then.
    pub fn key_retain_secs(&self, ttl: i64) -> i64 {
        let reload = i64::try_from(self.key_reload.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        ttl.saturating_add(self.leeway_secs())
            .saturating_add(reload)
    }

    /// The SQLite path, when the store is SQLite.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match &self.store {
            StoreUrl::Sqlite(path) => Some(path),
            StoreUrl::Redis { .. } | StoreUrl::Mysql { .. } => None,
        }
    }
}

/// Whole seconds of a duration as `i64` (saturating).
pub fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
