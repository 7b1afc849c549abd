//! [`VARIABLES`]: the one table of the variables the issuer reads, with their defaults as
//! text (the parsing takes every default from it, `--help` prints it, `make docs` writes it
//! into `docs/CONFIGURATION.md`), and the check for unknown `WEAUTH_*` names.

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
        "where state lives: sqlite://PATH, redis://, rediss://, redis+sentinel://, redis+cluster:// or mysql://user:password@host:port/db",
    ),
    var(
        "WEAUTH_REDIS_PREFIX",
        "weauth:",
        "prefix of every Redis key (at most 64 characters; no spaces or braces)",
    ),
    var(
        "WEAUTH_REDIS_WAIT_REPLICAS",
        "",
        "WAIT for this many Redis replicas after each write (default 1 with Sentinel or a Cluster, else 0)",
    ),
    var(
        "WEAUTH_REDIS_WAIT_TIMEOUT",
        "500ms",
        "the longest such WAIT (under 2.5s)",
    ),
    var(
        "WEAUTH_REDIS_ALLOW_EVICTION",
        "false",
        "start even when Redis's maxmemory-policy can evict weauth's keys (anything but noeviction; a warning is logged)",
    ),
    var(
        "WEAUTH_MYSQL_POOL_MAX",
        "16",
        "the most connections one replica opens to MySQL/MariaDB",
    ),
    var(
        "WEAUTH_MYSQL_ACQUIRE_TIMEOUT",
        "2s",
        "how long an operation waits for a MySQL connection before it is answered 503",
    ),
    var(
        "WEAUTH_MYSQL_QUERY_TIMEOUT",
        "5s",
        "how long one store operation (a transaction, its wait for a connection included) may wait for MySQL before it is given up and answered 503: a server lost without closing its connections (a blackholed failover) would otherwise hold them for TCP's 15 minutes; keep it under WEAUTH_REFRESH_REUSE_GRACE, so a refresh retried after one given up is still within the grace",
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
        "Secure and `__Host-` on the web-login cookies, and the refresh cookie's binding (false: plain-http development only; refused with an https WEAUTH_ISSUER)",
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
        "a refresh token presented again this soon after its rotation gets the refresh token its first use got instead of revoking the session (<= 60s; 0s: every reuse revokes)",
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
        "credential of /v1/admin/* (unset: 503), >= 8 characters, not WEAUTH_FEED_TOKEN's (which every sidecar's configuration holds)",
    ),
    secret(
        "WEAUTH_DATA_KEY",
        "base64 of 32 bytes encrypting secrets at rest and deriving each refresh token's successor (unset: <db>.datakey, created 0600)",
    ),
    secret(
        "WEAUTH_DATA_KEY_PREVIOUS",
        "comma-separated base64 keys a rotation replaced: they only open values sealed under them (at most 8)",
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
        "how often keys are re-read from the store (at most half of WEAUTH_KEY_PUBLISH_DELAY)",
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
        "logins per minute per client IP (IPv6: per /64; 0: off)",
    ),
    var("WEAUTH_LOGIN_BURST", "20", "login burst allowance"),
    var(
        "WEAUTH_USER_WECHAT_RATE",
        "10",
        "WeChat calls per minute per user from the /v1/me routes that make one, and refused decryptions (0: off)",
    ),
    var("WEAUTH_USER_WECHAT_BURST", "10", "burst allowance of those calls"),
    var(
        "WEAUTH_TRUSTED_PROXIES",
        "",
        "IPs/CIDRs whose X-Forwarded-For is believed, comma-separated",
    ),
    var(
        "WEAUTH_MAX_IN_FLIGHT",
        "512",
        "the most requests one replica works on at once for clients (logins, refreshes, /v1/me, the web login); past it they are answered 503 with Retry-After at once, rather than piling up in memory while WeChat or the store is slow (0: no limit; at most 1000000)",
    ),
    var(
        "WEAUTH_MAX_BODY",
        "16384",
        "request body cap in bytes (>= 256)",
    ),
    var(
        "WEAUTH_HEADER_TIMEOUT",
        "10s",
        "time allowed to send request headers, and the body; also how long a keep-alive connection may stay idle (a proxy in front must close its idle connections to the issuer sooner: envoy/envoy.yaml's 5 s)",
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
