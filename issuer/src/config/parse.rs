//! Parsing of single values: durations, log filters, store URLs (with the password masked
//! in every message), base URLs, the data key; and [`Source`], through which every value is
//! read (so the parsing is tested without touching the process environment).

use super::*;

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
    pub(super) fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.is_empty())
    }

    /// The value, or the default of [`VARIABLES`].
    pub(super) fn text(&self, var: &str) -> String {
        self.get(var).unwrap_or_else(|| default_of(var).to_string())
    }

    pub(super) fn secret(&self, var: &str) -> Result<Option<Secret<String>>, ConfigError> {
        let file_var = format!("{var}_FILE");
        match (self.get(var), self.get(&file_var)) {
            (Some(_), Some(_)) => Err(bad(
                var,
                format!("set either {var} or {file_var}, not both"),
            )),
            (Some(value), None) => Ok(Some(Secret::new(value))),
            (None, Some(path)) => {
                let text = (self.read_file)(&path)
                    .map_err(|err| bad(&file_var, format!("cannot read `{path}`: {err}")))?;
                let trimmed = text.trim_end_matches(['\n', '\r']).to_string();
                if trimmed.is_empty() {
                    return Err(bad(&file_var, format!("`{path}` is empty")));
                }
                Ok(Some(Secret::new(trimmed)))
            }
            (None, None) => Ok(None),
        }
    }

    pub(super) fn duration(&self, var: &str, min: Duration) -> Result<Duration, ConfigError> {
        let value = parse_duration(&self.text(var)).map_err(|reason| bad(var, reason))?;
        if value < min {
            return Err(bad(var, format!("must be at least {min:?}")));
        }
        Ok(value)
    }

    /// A duration the issuer counts in whole seconds (JWT `exp`/`iat`/`nbf` and the stores'
    /// times are seconds): a value with a fraction of a second is refused rather than cut
    /// (`1500ms` read as 1 s, a `500ms` grace as none at all).
    pub(super) fn seconds(&self, var: &str, min: Duration) -> Result<Duration, ConfigError> {
        let value = self.duration(var, min)?;
        if value.subsec_nanos() != 0 {
            return Err(bad(
                var,
                format!(
                    "`{}` is not a whole number of seconds, which the issuer counts in (tokens' \
                     times are seconds)",
                    self.text(var).trim()
                ),
            ));
        }
        Ok(value)
    }

    pub(super) fn number<T: std::str::FromStr>(&self, var: &str) -> Result<T, ConfigError> {
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

/// The URL with the password (if any) replaced by `***`. The user information ends at the
/// last `@`, wherever it is: a password with a raw `/`, `?` or `#` in it (which should be
/// percent-encoded, and then fails to parse) is still hidden, not read as the start of the
/// path and printed whole in the error that follows. (A path with an `@` of its own is masked
/// up to it: too much hidden in a message, never too little.)
pub(super) fn mask_password(text: &str) -> String {
    match userinfo(text) {
        Some((scheme, userinfo, after)) => {
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}://{masked}@{after}")
        }
        None => text.to_string(),
    }
}

/// A URL's scheme, user information (up to the last `@`) and the rest, when it has some.
fn userinfo(text: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let (userinfo, after) = rest.rsplit_once('@')?;
    Some((scheme, userinfo, after))
}

/// A URL's user, password and `host:port` list.
type Hosts = (Option<String>, Option<String>, Vec<(String, u16)>);

/// `[user:password@]host[:port][,host[:port]…]` → (user, password, hosts), `default_port`
/// where a host has none. An IPv6 address is written in brackets (`[::1]`, `[fd00::7]:7000`,
/// as in any URL) and kept without them; one without brackets is refused, since its last
/// group would read as a port.
fn parse_hosts(
    authority: &str,
    default_port: u16,
    fail: &dyn Fn(&str) -> ConfigError,
) -> Result<Hosts, ConfigError> {
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    // Percent-decoding as a URL's userinfo is decoded (RFC 3986; what the redis crate does
    // with a `redis://` URL): `+` stays `+`, `%2B` is `+`, `%40` is `@`. (Form decoding, used
    // before, turned a password's `+` into a space and cut it at `&`.)
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
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
    let mut parsed = Vec::new();
    let port_of = |port: &str| {
        port.parse::<u16>()
            .map_err(|_| fail(&format!("`{port}` is not a port")))
    };
    for host in hosts.split(',').filter(|h| !h.trim().is_empty()) {
        let (name, port) = if let Some(bracketed) = host.strip_prefix('[') {
            let (address, after) = bracketed
                .split_once(']')
                .ok_or_else(|| fail(&format!("`{host}` has no `]` closing its IPv6 address")))?;
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(fail(&format!("`[{address}]` is not an IPv6 address")));
            }
            let port = match after {
                "" => default_port,
                _ => port_of(after.strip_prefix(':').ok_or_else(|| {
                    fail(&format!("`{after}` after `[{address}]` is not `:port`"))
                })?)?,
            };
            (address, port)
        } else if host.matches(':').count() > 1 {
            return Err(fail(&format!(
                "`{host}`: an IPv6 address is written in brackets, `[{host}]` or `[address]:port`"
            )));
        } else {
            match host.rsplit_once(':') {
                Some((name, port)) => (name, port_of(port)?),
                None => (host, default_port),
            }
        };
        if name.is_empty() {
            return Err(fail("empty host"));
        }
        parsed.push((name.to_string(), port));
    }
    Ok((username, password, parsed))
}

pub(super) fn parse_sentinel(rest: &str, display: String) -> Result<StoreUrl, ConfigError> {
    let fail = |reason: &str| {
        bad(
            "WEAUTH_STORE",
            format!(
                "`{display}`: {reason} (expected redis+sentinel://[user:password@]host:port[,host:port…]/<master-name>[/db])"
            ),
        )
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| fail("no master name"))?;
    let (username, password, sentinels) = parse_hosts(authority, 26379, &fail)?;
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
    if parts.any(|part| !part.is_empty()) {
        return Err(fail("more path after the database index"));
    }
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

/// `redis+cluster://[user:password@]host:port[,host:port…]/` (`rediss+cluster://`: TLS). A
/// cluster has one database, so the path must be empty.
pub(super) fn parse_cluster(
    rest: &str,
    tls: bool,
    display: String,
) -> Result<StoreUrl, ConfigError> {
    let fail = |reason: &str| {
        bad(
            "WEAUTH_STORE",
            format!(
                "`{display}`: {reason} (expected redis+cluster://[user:password@]host:port[,host:port…]/)"
            ),
        )
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        return Err(fail(&format!(
            "`/{path}`: a Redis Cluster has no database index"
        )));
    }
    let (username, password, nodes) = parse_hosts(authority, 6379, &fail)?;
    if nodes.is_empty() {
        return Err(fail("no seed node"));
    }
    Ok(StoreUrl::Redis {
        target: RedisTarget::Cluster {
            nodes,
            tls,
            username,
            password,
        },
        display,
    })
}

pub(super) fn parse_store(text: &str) -> Result<StoreUrl, ConfigError> {
    // A raw `/`, `?` or `#` before the last `@` is a password (or user) not percent-encoded:
    // each parser below would take it for the start of the path, query or fragment and could
    // echo a piece of the password in its error. Said here, with the password masked.
    if let Some((_, userinfo, _)) = userinfo(text) {
        if userinfo.contains(['/', '?', '#']) {
            return Err(bad(
                "WEAUTH_STORE",
                format!(
                    "`{}`: the user or password holds a raw `/`, `?` or `#`; percent-encode it \
                     (%2F, %3F, %23)",
                    mask_password(text)
                ),
            ));
        }
    }
    if let Some(rest) = text.strip_prefix("redis+sentinel://") {
        return parse_sentinel(rest, mask_password(text));
    }
    if let Some(rest) = text.strip_prefix("redis+cluster://") {
        return parse_cluster(rest, false, mask_password(text));
    }
    if let Some(rest) = text.strip_prefix("rediss+cluster://") {
        return parse_cluster(rest, true, mask_password(text));
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
    if text.starts_with("mysql://") {
        return parse_mysql(text);
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
            "`{}` is not a store URL (expected sqlite://PATH, redis://, rediss://, redis+sentinel://, redis+cluster:// or mysql://)",
            mask_password(text)
        ),
    ))
}

/// `mysql://user:password@host[:port]/db`: a user and a database are required (the issuer
/// creates its tables in that database); the port defaults to 3306.
fn parse_mysql(text: &str) -> Result<StoreUrl, ConfigError> {
    let display = mask_password(text);
    let fail = |reason: &str| {
        bad(
            "WEAUTH_STORE",
            format!("`{display}`: {reason} (expected mysql://user:password@host:port/db)"),
        )
    };
    let url = url::Url::parse(text).map_err(|err| fail(&err.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail("no host"));
    }
    if url.username().is_empty() {
        return Err(fail("no user"));
    }
    let db = url.path().trim_start_matches('/');
    if db.is_empty() {
        return Err(fail("no database name"));
    }
    if db.contains('/')
        || !db
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    {
        return Err(fail(&format!(
            "`{db}` is not a plain database name (letters, digits, _ and $)"
        )));
    }
    Ok(StoreUrl::Mysql {
        url: text.to_string(),
        display,
    })
}

pub(super) fn parse_base_url(var: &str, text: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(text).map_err(|err| bad(var, format!("`{text}`: {err}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad(var, "must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(var, "must not carry a query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// [`parse_base_url`] in the URL's canonical form (the host in lower case, no default port):
/// for WeChat's bases, whose text API security signs (`urlpath`, [`crate::apisec::urlpath`]) —
/// `https://API.weixin.qq.com:443` reaches WeChat, but its text is not what WeChat checks the
/// signature against. (Not for `WEAUTH_ISSUER`, which is the tokens' `iss` as written.)
pub(super) fn parse_canonical_base_url(var: &str, text: &str) -> Result<String, ConfigError> {
    let base = parse_base_url(var, text)?;
    let url = url::Url::parse(&base).map_err(|err| bad(var, format!("`{text}`: {err}")))?;
    Ok(url.as_str().trim_end_matches('/').to_string())
}

pub(super) fn parse_data_key(text: &str) -> Result<Secret<Vec<u8>>, ConfigError> {
    key_bytes("WEAUTH_DATA_KEY", text).map(|key| Secret::new(key.to_vec()))
}

/// `WEAUTH_DATA_KEY_PREVIOUS`: the keys a rotation replaced, comma-separated, each as
/// `WEAUTH_DATA_KEY` is written; at most 8 (each is tried on every value the others fail to
/// open), none twice, not `current` (`WEAUTH_DATA_KEY`: refused here, before a start writes
/// anything; a key file's is refused when it is read).
pub(super) fn parse_previous_data_keys(
    text: &str,
    current: Option<&[u8]>,
) -> Result<Secret<Vec<[u8; 32]>>, ConfigError> {
    const VAR: &str = "WEAUTH_DATA_KEY_PREVIOUS";
    let mut keys = Vec::new();
    for (i, item) in text.split(',').enumerate() {
        if item.trim().is_empty() {
            return Err(bad(
                VAR,
                format!("key {} is empty (a comma too many?)", i + 1),
            ));
        }
        let key = key_bytes(VAR, item)
            .map_err(|err| bad(VAR, format!("key {}: {}", i + 1, err.reason)))?;
        if keys.contains(&key) {
            return Err(bad(VAR, format!("key {} is listed twice", i + 1)));
        }
        if current == Some(key.as_slice()) {
            return Err(bad(
                VAR,
                format!(
                    "key {} is WEAUTH_DATA_KEY: list only the keys it replaced",
                    i + 1
                ),
            ));
        }
        keys.push(key);
    }
    if keys.len() > 8 {
        return Err(bad(VAR, format!("lists {} keys; at most 8", keys.len())));
    }
    Ok(Secret::new(keys))
}

/// 32 bytes written in base64 (standard, or URL-safe without padding).
fn key_bytes(var: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    use base64::Engine;
    let bytes = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim()))
            .map_err(|_| bad(var, "is not base64"))?,
    );
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| bad(var, format!("must decode to 32 bytes, got {}", bytes.len())))
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
        // An IPv4-mapped network is its IPv4 network: addresses are unmapped before they are
        // compared, and written so it matched none.
        match addr.to_canonical() {
            IpAddr::V4(v4) if addr.is_ipv6() && prefix >= 96 => Some(IpNet {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            }),
            _ => Some(IpNet { addr, prefix }),
        }
    }

    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
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

#[cfg(test)]
mod tests {
    use super::IpNet;

    /// An IPv4-mapped network (`::ffff:10.0.0.0/104`) is its IPv4 network: addresses are
    /// unmapped before they are compared, and such an entry matched none.
    #[test]
    fn ipnet_ipv4_mapped_network_is_its_ipv4_network() {
        let net = IpNet::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(net, IpNet::parse("10.0.0.0/8").unwrap());
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(
            IpNet::parse("::ffff:192.0.2.7").unwrap(),
            IpNet::parse("192.0.2.7").unwrap()
        );
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
