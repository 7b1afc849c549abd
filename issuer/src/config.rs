//! The issuer's configuration: environment variables read once at start into a typed
//! [`Config`], validated there, so a bad value stops the process with the variable's name.
//!
//! Secrets may come from a `<NAME>_FILE` variant holding a path (Docker/Kubernetes secrets);
//! setting both the plain and the `_FILE` form is refused as ambiguous. Reading goes through a
//! lookup function so the parsing is tested without touching the process environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use weauth_token::Algorithm;
use zeroize::Zeroizing;

use crate::apps::{self, Apps};

/// Why the configuration was refused. The `Display` names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: String,
    /// What is wrong with it, for the operator.
    pub reason: String,
}

fn bad(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_string(),
        reason: reason.into(),
    }
}

/// Where state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH` (relative or absolute path; `sqlite:///abs/path` also accepted).
    Sqlite(PathBuf),
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
    /// `WEAUTH_STORE`, default `sqlite://weauth.db`. `redis://` is refused (not built yet).
    pub store: StoreUrl,
    /// The WeChat apps served: `WEAUTH_APPS_FILE` (see [`crate::apps`]), or the one-app
    /// shortcut `WEAUTH_WECHAT_APPID` + `WEAUTH_WECHAT_SECRET` (`_FILE`), a single
    /// mini-program. One of the two forms is required; both is an error.
    pub apps: Apps,
    /// The first app's appid (with the shortcut: `WEAUTH_WECHAT_APPID`).
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
    /// `WEAUTH_WECHAT_TIMEOUT`, total per WeChat call attempt, default `3s`.
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
    /// `WEAUTH_REFRESH_REUSE_GRACE`, default `0s`: a refresh token presented again within
    /// this time after its rotation is refused (400) without revoking the session, for clients
    /// that fire concurrent refreshes. 0 = every reuse revokes the session (RFC 9700 §4.14).
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

    fn duration(&self, var: &str, default: &str, min: Duration) -> Result<Duration, ConfigError> {
        let text = self.get(var).unwrap_or_else(|| default.to_string());
        let value = parse_duration(&text).map_err(|reason| bad(var, reason))?;
        if value < min {
            return Err(bad(var, format!("must be at least {min:?}")));
        }
        Ok(value)
    }

    fn number<T: std::str::FromStr>(&self, var: &str, default: T) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| bad(var, format!("`{text}` is not a valid number"))),
        }
    }
}

fn parse_store(text: &str) -> Result<StoreUrl, ConfigError> {
    if let Some(path) = text.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(bad(
                "WEAUTH_STORE",
                "sqlite:// needs a path, e.g. sqlite://weauth.db",
            ));
        }
        return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
    }
    if text.starts_with("redis://") {
        return Err(bad(
            "WEAUTH_STORE",
            "redis:// is not supported by this build yet; use sqlite://PATH",
        ));
    }
    Err(bad(
        "WEAUTH_STORE",
        format!("`{text}` is not a store URL (expected sqlite://PATH)"),
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

/// The apps: `WEAUTH_APPS_FILE`, or the `WEAUTH_WECHAT_APPID` + `WEAUTH_WECHAT_SECRET`
/// shortcut; both forms at once are refused.
fn load_apps(src: &Source<'_>) -> Result<Apps, ConfigError> {
    let shortcut_set = [
        "WEAUTH_WECHAT_APPID",
        "WEAUTH_WECHAT_SECRET",
        "WEAUTH_WECHAT_SECRET_FILE",
    ]
    .iter()
    .find(|var| src.get(var).is_some());
    if let Some(path) = src.get("WEAUTH_APPS_FILE") {
        if let Some(var) = shortcut_set {
            return Err(bad(
                "WEAUTH_APPS_FILE",
                format!("set either WEAUTH_APPS_FILE or {var} (the one-app shortcut), not both"),
            ));
        }
        let text = (src.read_file)(&path)
            .map_err(|err| bad("WEAUTH_APPS_FILE", format!("cannot read `{path}`: {err}")))?;
        return apps::parse_apps_file(&text, src.read_file)
            .map_err(|reason| bad("WEAUTH_APPS_FILE", format!("`{path}`: {reason}")));
    }
    let appid = src.get("WEAUTH_WECHAT_APPID").ok_or_else(|| {
        bad(
            "WEAUTH_WECHAT_APPID",
            "is required (or configure the apps in WEAUTH_APPS_FILE)",
        )
    })?;
    if !apps::valid_appid(&appid) {
        return Err(bad("WEAUTH_WECHAT_APPID", "must be alphanumeric (wx...)"));
    }
    let secret = src.secret("WEAUTH_WECHAT_SECRET")?.ok_or_else(|| {
        bad(
            "WEAUTH_WECHAT_SECRET",
            "is required (or WEAUTH_WECHAT_SECRET_FILE)",
        )
    })?;
    Ok(Apps::single(appid, secret))
}

impl Config {
    /// Reads the process environment and the filesystem.
    ///
    /// # Errors
    /// The first invalid or missing variable.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_source(&Source {
            lookup: &|name| std::env::var(name).ok(),
            read_file: &|path| std::fs::read_to_string(path),
        })
    }

    /// Reads configuration from `source`.
    ///
    /// # Errors
    /// The first invalid or missing variable.
    pub fn from_source(src: &Source<'_>) -> Result<Config, ConfigError> {
        let listen_text = src
            .get("WEAUTH_LISTEN")
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text.parse().map_err(|_| {
            bad(
                "WEAUTH_LISTEN",
                format!("`{listen_text}` is not an IP:PORT address"),
            )
        })?;
        let store = parse_store(
            &src.get("WEAUTH_STORE")
                .unwrap_or_else(|| "sqlite://weauth.db".into()),
        )?;
        let apps = load_apps(src)?;
        let (wechat_appid, wechat_secret) = match apps.all().first() {
            Some(first) => (first.appid.clone(), first.secret.clone()),
            None => return Err(bad("WEAUTH_APPS_FILE", "configures no app")),
        };
        let wechat_open_base = parse_base_url(
            "WEAUTH_WECHAT_OPEN_BASE",
            &src.get("WEAUTH_WECHAT_OPEN_BASE")
                .unwrap_or_else(|| "https://open.weixin.qq.com".into()),
        )?;
        let cookie_secure = match src.get("WEAUTH_COOKIE_SECURE").as_deref() {
            None | Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(other) => {
                return Err(bad(
                    "WEAUTH_COOKIE_SECURE",
                    format!("`{other}` is not true or false"),
                ))
            }
        };
        let wechat_api_base = parse_base_url(
            "WEAUTH_WECHAT_API_BASE",
            &src.get("WEAUTH_WECHAT_API_BASE")
                .unwrap_or_else(|| "https://api.weixin.qq.com".into()),
        )?;
        let issuer = parse_base_url(
            "WEAUTH_ISSUER",
            &src.get("WEAUTH_ISSUER")
                .unwrap_or_else(|| "http://127.0.0.1:8080".into()),
        )?;
        let audiences: Vec<String> = src
            .get("WEAUTH_AUDIENCE")
            .unwrap_or_else(|| "weauth".into())
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err(bad("WEAUTH_AUDIENCE", "needs at least one audience"));
        }
        let second = Duration::from_secs(1);
        let access_ttl = src.duration("WEAUTH_ACCESS_TTL", "15m", second)?;
        let refresh_ttl = src.duration("WEAUTH_REFRESH_TTL", "7d", second)?;
        let session_max = src.duration("WEAUTH_SESSION_MAX", "30d", second)?;
        if refresh_ttl > session_max {
            return Err(bad(
                "WEAUTH_REFRESH_TTL",
                "must not exceed WEAUTH_SESSION_MAX",
            ));
        }
        let leeway = src.duration("WEAUTH_LEEWAY", "60s", Duration::ZERO)?;
        let refresh_reuse_grace =
            src.duration("WEAUTH_REFRESH_REUSE_GRACE", "0s", Duration::ZERO)?;
        if refresh_reuse_grace > Duration::from_secs(60) {
            return Err(bad("WEAUTH_REFRESH_REUSE_GRACE", "must be at most 60s"));
        }
        let data_key = match src.secret("WEAUTH_DATA_KEY")? {
            None => None,
            Some(text) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .or_else(|_| {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim())
                    })
                    .map_err(|_| bad("WEAUTH_DATA_KEY", "is not base64"))?;
                if bytes.len() != 32 {
                    return Err(bad(
                        "WEAUTH_DATA_KEY",
                        format!("must decode to 32 bytes, got {}", bytes.len()),
                    ));
                }
                Some(Zeroizing::new(bytes))
            }
        };
        let alg_text = src
            .get("WEAUTH_SIGNING_ALG")
            .unwrap_or_else(|| "EdDSA".into());
        let signing_alg = Algorithm::from_name(&alg_text).ok_or_else(|| {
            bad(
                "WEAUTH_SIGNING_ALG",
                format!("`{alg_text}` is not one of EdDSA, ES256, HS256"),
            )
        })?;
        let signing_key_file = src.get("WEAUTH_SIGNING_KEY_FILE").map(PathBuf::from);
        let key_publish_delay = src.duration("WEAUTH_KEY_PUBLISH_DELAY", "10m", Duration::ZERO)?;
        let key_reload = src.duration("WEAUTH_KEY_RELOAD", "2s", Duration::from_millis(100))?;
        let mut trusted_proxies = Vec::new();
        if let Some(list) = src.get("WEAUTH_TRUSTED_PROXIES") {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                trusted_proxies.push(IpNet::parse(item).ok_or_else(|| {
                    bad(
                        "WEAUTH_TRUSTED_PROXIES",
                        format!("`{item}` is not an IP or CIDR"),
                    )
                })?);
            }
        }
        let wechat_retries: u32 = src.number("WEAUTH_WECHAT_RETRIES", 2)?;
        if wechat_retries > 5 {
            return Err(bad("WEAUTH_WECHAT_RETRIES", "must be at most 5"));
        }
        let max_body: usize = src.number("WEAUTH_MAX_BODY", 16 * 1024)?;
        if max_body < 256 {
            return Err(bad("WEAUTH_MAX_BODY", "must be at least 256 bytes"));
        }
        let config = Config {
            listen,
            store,
            apps,
            wechat_appid,
            wechat_secret,
            wechat_open_base,
            cookie_secure,
            wechat_api_base,
            wechat_timeout: src.duration(
                "WEAUTH_WECHAT_TIMEOUT",
                "5s",
                Duration::from_millis(50),
            )?,
            wechat_connect_timeout: src.duration(
                "WEAUTH_WECHAT_CONNECT_TIMEOUT",
                "2s",
                Duration::from_millis(50),
            )?,
            wechat_retries,
            issuer,
            audiences,
            access_ttl,
            refresh_ttl,
            session_max,
            leeway,
            refresh_reuse_grace,
            feed_token: src.secret("WEAUTH_FEED_TOKEN")?,
            admin_token: src.secret("WEAUTH_ADMIN_TOKEN")?,
            log: src.get("WEAUTH_LOG").unwrap_or_else(|| "info".into()),
            log_json: match src.get("WEAUTH_LOG_FORMAT").as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(bad(
                        "WEAUTH_LOG_FORMAT",
                        format!("`{other}` is not text or json"),
                    ))
                }
            },
            data_key,
            signing_alg,
            signing_key_file,
            key_publish_delay,
            key_reload,
            purge_interval: src.duration(
                "WEAUTH_PURGE_INTERVAL",
                "60s",
                Duration::from_millis(100),
            )?,
            trusted_proxies,
            login_rate_per_min: src.number("WEAUTH_LOGIN_RATE", 60)?,
            login_burst: src.number("WEAUTH_LOGIN_BURST", 20)?,
            max_body,
            header_timeout: src.duration(
                "WEAUTH_HEADER_TIMEOUT",
                "10s",
                Duration::from_millis(100),
            )?,
            shutdown_grace: src.duration("WEAUTH_SHUTDOWN_GRACE", "10s", Duration::ZERO)?,
            decrypt_max_age: match src.get("WEAUTH_DECRYPT_MAX_AGE") {
                None => None,
                Some(text) if text.trim().eq_ignore_ascii_case("off") => None,
                Some(_) => {
                    Some(src.duration("WEAUTH_DECRYPT_MAX_AGE", "0s", Duration::from_secs(1))?)
                }
            },
        };
        for (var, token) in [
            ("WEAUTH_FEED_TOKEN", &config.feed_token),
            ("WEAUTH_ADMIN_TOKEN", &config.admin_token),
        ] {
            if token.as_ref().is_some_and(|t| t.len() < 8) {
                return Err(bad(var, "must be at least 8 characters"));
            }
        }
        Ok(config)
    }

    /// The access-token lifetime in seconds.
    pub fn access_ttl_secs(&self) -> i64 {
        secs(self.access_ttl)
    }

    /// The leeway in seconds.
    pub fn leeway_secs(&self) -> i64 {
        secs(self.leeway)
    }

    /// The SQLite path (the only store today).
    pub fn sqlite_path(&self) -> &std::path::Path {
        match &self.store {
            StoreUrl::Sqlite(path) => path,
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

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
        Config::from_source(&Source {
            lookup: &lookup,
            read_file: &read_file,
        })
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
        assert_eq!(err.var, "WEAUTH_WECHAT_APPID");
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
        assert_eq!(err.var, "WEAUTH_WECHAT_SECRET_FILE");
    }

    #[test]
    fn config_secret_both_forms_refused() {
        let err = load(&with(&[("WEAUTH_WECHAT_SECRET_FILE", "/secret/wechat")])).unwrap_err();
        assert_eq!(err.var, "WEAUTH_WECHAT_SECRET");
    }

    #[test]
    fn config_bad_values_name_their_variable() {
        for (var, value) in [
            ("WEAUTH_LISTEN", "localhost"),
            ("WEAUTH_STORE", "postgres://x"),
            ("WEAUTH_STORE", "redis://127.0.0.1:6379/0"),
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
            ("WEAUTH_COOKIE_SECURE", "maybe"),
            ("WEAUTH_WECHAT_OPEN_BASE", "open.weixin.qq.com"),
        ] {
            let err = load(&with(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}: {err}");
        }
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
    fn config_apps_file_read_with_secret_files() {
        let config = load(&[("WEAUTH_APPS_FILE", "/etc/weauth/apps.json")]).unwrap();
        assert_eq!(config.apps.all().len(), 2);
        assert_eq!(
            config.apps.get("wxmini").unwrap().secret.as_str(),
            "file-secret"
        );
        assert_eq!(
            config.apps.get("wxoa").unwrap().kind,
            crate::apps::AppKind::OfficialAccount
        );
    }

    #[test]
    fn config_apps_file_and_shortcut_both_refused() {
        let err = load(&with(&[("WEAUTH_APPS_FILE", "/etc/weauth/apps.json")])).unwrap_err();
        assert_eq!(err.var, "WEAUTH_APPS_FILE");
        assert!(err.reason.contains("not both"), "{err}");
    }

    #[test]
    fn config_apps_file_invalid_names_variable_and_entry() {
        let err = load(&[("WEAUTH_APPS_FILE", "/etc/weauth/dup.json")]).unwrap_err();
        assert_eq!(err.var, "WEAUTH_APPS_FILE");
        assert!(
            err.reason.contains("apps[1] (wx1): duplicate appid"),
            "{err}"
        );
        let err = load(&[("WEAUTH_APPS_FILE", "/nope.json")]).unwrap_err();
        assert_eq!(err.var, "WEAUTH_APPS_FILE");
    }

    #[test]
    fn config_shortcut_is_one_miniprogram() {
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
