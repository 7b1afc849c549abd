//! Plugin configuration: the JSON in Envoy's `plugin_config.configuration`, parsed and
//! validated once in `on_configure` (schema and defaults: `docs/INTERFACES.md`, "Filter plugin
//! configuration").
//!
//! [`Config::parse`] turns the raw bytes into a [`Config`] whose keys are already decoded, whose
//! header names are lower-cased and whose numbers are range-checked, or into a [`ConfigError`]
//! naming the offending field by its path (`rules[2].require`, via `serde_path_to_error`).
//! Unknown and repeated members are refused everywhere (serde's `deny_unknown_fields` and
//! derived structs). Nothing here talks to the host.

use serde::Deserialize;
use weauth_token::{Algorithm, Jwks, KeySet, Validation};

/// Default JWKS path on the issuer.
pub const DEFAULT_JWKS_PATH: &str = "/.well-known/jwks.json";
/// Default revocation feed path on the issuer.
pub const DEFAULT_FEED_PATH: &str = "/v1/revocations";
/// The issuer caps `wait` at 60 s; so do we.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// Longest accepted `max_token_bytes`.
pub const MAX_TOKEN_BYTES_LIMIT: usize = 65_536;
/// Largest accepted `cache_entries`.
pub const MAX_CACHE_ENTRIES: usize = 1_000_000;
/// Default `identity_header_prefix`: the filter's header namespace.
pub const DEFAULT_IDENTITY_PREFIX: &str = "x-weauth-";

/// Why a plugin configuration was refused. The text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is missing (expected a JSON object)")]
    Missing,
    #[error("plugin configuration is not valid: {0}")]
    Json(String),
    #[error("`{field}`: {reason}")]
    Field { field: String, reason: String },
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What a path requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// A missing or invalid token is refused (401).
    Required,
    /// A missing token passes (no identity headers); an invalid one is refused (401).
    Optional,
    /// Not checked at all (identity headers are still stripped).
    None,
}

/// What the filter does when the revocation set is older than `stale_after_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaleMode {
    /// Refuse requests that need a token with 503 (the safe default).
    Deny,
    /// Keep checking against the last known set, counting and logging it.
    Allow,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// Keys given in the configuration.
    Inline(KeySet),
    /// Keys fetched from the issuer through an Envoy cluster.
    Remote(RemoteJwks),
}

/// A fetched JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// Envoy cluster name (Istio: `outbound|8080||issuer.ns.svc.cluster.local`).
    pub cluster: String,
    /// `:authority` of the request. Default: the cluster name.
    pub authority: String,
    /// Default [`DEFAULT_JWKS_PATH`].
    pub path: String,
    /// Refetch period. Default 300 s.
    pub refresh_seconds: u64,
    /// Least time between two fetches triggered by an unknown `kid`. Default 5 s.
    pub min_refetch_seconds: u64,
    /// Call timeout. Default 2000 ms.
    pub timeout_ms: u64,
}

/// The revocation feed. `Debug` by hand: the credential is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct RevocationConfig {
    pub cluster: String,
    /// Default: the cluster name.
    pub authority: String,
    /// Default [`DEFAULT_FEED_PATH`].
    pub path: String,
    /// The feed credential, sent as `Authorization: Bearer ...`. Never logged. Given inline
    /// (`credential`) or read from the VM's environment (`credential_env`), exactly one.
    pub credential: String,
    /// The environment variable the credential was read from (`credential_env`), if any.
    pub credential_env: Option<String>,
    /// Long-poll wait. Default 20 s, 0..=60.
    pub wait_seconds: u64,
    /// Age after which the set is stale. Default 60 s; must exceed `wait_seconds`.
    pub stale_after_seconds: u64,
    /// Default [`StaleMode::Deny`].
    pub stale_mode: StaleMode,
}

impl std::fmt::Debug for RevocationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationConfig")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("credential", &"[redacted]")
            .field("credential_env", &self.credential_env)
            .field("wait_seconds", &self.wait_seconds)
            .field("stale_after_seconds", &self.stale_after_seconds)
            .field("stale_mode", &self.stale_mode)
            .finish()
    }
}

/// Where a token is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A request header (lower-cased name) whose value starts with `prefix` (compared
    /// case-insensitively, so `bearer x` matches `Bearer `). Default prefix: none.
    Header { name: String, prefix: String },
    /// A cookie by name.
    Cookie(String),
    /// A query parameter by name.
    Query(String),
}

/// One claim copied into one request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub claim: String,
    /// Lower-cased.
    pub header: String,
}

/// How a rule matches the path (the `:path` without its query string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

/// One path rule; the first matching rule wins, else `default_require` with no scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathMatch,
    pub require: Require,
    /// Scopes the token must all carry (else 403 `insufficient_scope`).
    pub scopes: Vec<String>,
    /// Default true: a request authenticated by a cookie token source with an unsafe method
    /// must pass the CSRF rule ([`crate::csrf`]). `false` is logged as a warning at load
    /// when a cookie is a token source ([`Config::warnings`]).
    pub csrf: bool,
    /// `None`: the top-level `forward_authorization`.
    pub forward_authorization: Option<bool>,
}

/// What a rule says besides the requirement and scopes: the CSRF rule and whether the token
/// reaches the upstream. For a path with several readings ([`crate::path::CheckedPath::edge`])
/// the strictest of them applies ([`EdgeRule::stricter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeRule {
    pub csrf: bool,
    pub forward_authorization: bool,
}

impl EdgeRule {
    /// CSRF on if either has it on; the token forwarded only if both forward it.
    #[must_use]
    pub fn stricter(self, other: EdgeRule) -> EdgeRule {
        EdgeRule {
            csrf: self.csrf || other.csrf,
            forward_authorization: self.forward_authorization && other.forward_authorization,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `issuer`, `audiences`, `algorithms`, `clock_skew_seconds`, `max_token_bytes`.
    pub validation: Validation,
    pub jwks: JwksSource,
    /// `None`: no revocation checks.
    pub revocation: Option<RevocationConfig>,
    pub token_sources: Vec<TokenSource>,
    pub claim_to_headers: Vec<ClaimHeader>,
    /// Default [`DEFAULT_IDENTITY_PREFIX`] (lower-cased). Every client header whose name starts
    /// with it is removed from every forwarded request; then the `claim_to_headers` are set.
    pub identity_header_prefix: String,
    /// Default false (like jwt_authn's `forward: false`): the token is removed from the
    /// forwarded request: its header, or its pair in the `Cookie` header (a query token stays
    /// in `:path`). A rule may override it.
    pub forward_authorization: bool,
    /// Origins (`scheme://host[:port]`, lower-cased) whose cookie-authenticated unsafe requests
    /// pass the CSRF rule besides `Sec-Fetch-Site: same-origin`/`none`. Default none.
    pub csrf_allowed_origins: Vec<String>,
    pub rules: Vec<Rule>,
    pub default_require: Require,
    /// Default 10000; 0 disables the cache.
    pub cache_entries: usize,
    /// Default false. When true, CORS preflights (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) pass without a token.
    pub cors_preflight: bool,
    /// What the configuration does that is allowed but weakens the edge (a rule that turns
    /// the CSRF rule off while a cookie is a token source): logged at Warn in `on_configure`.
    pub warnings: Vec<String>,
}

// ---- raw serde shapes -------------------------------------------------------------------
//
// Every shape refuses unknown members (`deny_unknown_fields`) and, being a derived struct, a
// member given twice (serde's "duplicate field"): a configuration that says two things must
// not load, for the same reason tokens refuse duplicates. `serde_path_to_error` turns a serde
// error into the path of the member it concerns (`rules[2].require`), which is what the
// operator reading Envoy's log needs. What serde cannot express (ranges, "exactly one of",
// header-name syntax, keys that must decode) is checked in `Config::validate` below.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    jwks: Option<RawJwks>,
    revocation: Option<RawRevocation>,
    token_sources: Option<Vec<RawTokenSource>>,
    claim_to_headers: Option<Vec<RawClaimHeader>>,
    identity_header_prefix: Option<String>,
    #[serde(default)]
    forward_authorization: bool,
    #[serde(default)]
    csrf_allowed_origins: Vec<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default = "default_require")]
    default_require: Require,
    #[serde(default = "default_skew")]
    clock_skew_seconds: i64,
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
    #[serde(default = "default_cache_entries")]
    cache_entries: usize,
    #[serde(default)]
    cors_preflight: bool,
}

fn default_algorithms() -> Vec<String> {
    vec!["EdDSA".into()]
}
fn default_true() -> bool {
    true
}
fn default_require() -> Require {
    Require::Required
}
fn default_skew() -> i64 {
    60
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_cache_entries() -> usize {
    10_000
}

/// Reads the raw shape, naming the member an error concerns by its path.
fn read_raw(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    // A derived struct also accepts a JSON array (fields by position); a configuration is an
    // object, said plainly.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ConfigError::Json("expected a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw = serde_path_to_error::deserialize::<_, RawConfig>(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ConfigError::Json(inner.to_string())
        } else {
            field_error(path, inner.to_string())
        }
    })?;
    de.end().map_err(|err| ConfigError::Json(err.to_string()))?;
    Ok(raw)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    inline: Option<Jwks>,
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    refresh_seconds: Option<u64>,
    min_refetch_seconds: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    credential: Option<String>,
    credential_env: Option<String>,
    wait_seconds: Option<u64>,
    stale_after_seconds: Option<u64>,
    stale_mode: Option<StaleMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenSource {
    header: Option<String>,
    prefix: Option<String>,
    cookie: Option<String>,
    query: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimHeader {
    claim: String,
    header: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    prefix: Option<String>,
    exact: Option<String>,
    #[serde(default = "default_require")]
    require: Require,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default = "default_true")]
    csrf: bool,
    forward_authorization: Option<bool>,
}

/// Claim names [`weauth_token::Claims::get`] knows.
const KNOWN_CLAIMS: &[&str] = &[
    "iss", "sub", "sid", "jti", "openid", "unionid", "appid", "scope", "aud", "iat", "nbf", "exp",
];

/// The default identity headers.
fn default_claim_headers() -> Vec<ClaimHeader> {
    [
        ("sub", "x-weauth-sub"),
        ("openid", "x-weauth-openid"),
        ("unionid", "x-weauth-unionid"),
        ("appid", "x-weauth-appid"),
        ("sid", "x-weauth-sid"),
        ("scope", "x-weauth-scope"),
    ]
    .iter()
    .map(|(claim, header)| ClaimHeader {
        claim: (*claim).into(),
        header: (*header).into(),
    })
    .collect()
}

/// Whether `name` is a valid HTTP field name (RFC 9110 token characters).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn non_empty(field: &str, value: Option<String>) -> Result<String, ConfigError> {
    match value {
        Some(value) if !value.trim().is_empty() => Ok(value),
        Some(_) => Err(field_error(field, "must not be empty")),
        None => Err(field_error(field, "is required")),
    }
}

fn check_path(field: &str, path: String) -> Result<String, ConfigError> {
    if path.starts_with('/') && !path.contains('?') && !path.contains('#') {
        Ok(path)
    } else {
        Err(field_error(
            field,
            "must start with `/` and carry no query or fragment",
        ))
    }
}

fn in_range(field: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(field_error(
            field,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// Looks up an environment variable of the Wasm VM by name (`None`: not set). The root
/// context passes `std::env::var`, which under WASI reads what Envoy hands the VM through
/// `vm_config.environment_variables`; tests pass a map.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Parses and validates the plugin configuration in an empty environment (a
    /// `revocation.credential_env` is then always missing); see [`Config::parse_with_env`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that is missing, unknown or out of range.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with_env(bytes, &|_| None)
    }

    /// Parses and validates the plugin configuration, reading `revocation.credential_env`
    /// through `env`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that is missing, unknown or out of range, or the
    /// environment variable that is not set.
    pub fn parse_with_env(bytes: &[u8], env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Missing);
        }
        Config::validate(read_raw(bytes)?, env)
    }

    fn validate(raw: RawConfig, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let issuer = non_empty("issuer", raw.issuer)?;
        let audiences = raw
            .audiences
            .ok_or_else(|| field_error("audiences", "is required"))?;
        if audiences.is_empty() || audiences.iter().any(|aud| aud.is_empty()) {
            return Err(field_error(
                "audiences",
                "must list at least one non-empty audience",
            ));
        }
        if raw.algorithms.is_empty() {
            return Err(field_error(
                "algorithms",
                "must list at least one algorithm",
            ));
        }
        let mut algorithms = Vec::new();
        for (i, name) in raw.algorithms.iter().enumerate() {
            let alg = Algorithm::from_name(name).ok_or_else(|| {
                field_error(
                    format!("algorithms[{i}]"),
                    format!("`{name}` is not one of EdDSA, ES256, HS256"),
                )
            })?;
            algorithms.push(alg);
        }
        if !(0..=600).contains(&raw.clock_skew_seconds) {
            return Err(field_error(
                "clock_skew_seconds",
                "must be between 0 and 600",
            ));
        }
        if raw.max_token_bytes < 64 || raw.max_token_bytes > MAX_TOKEN_BYTES_LIMIT {
            return Err(field_error(
                "max_token_bytes",
                format!("must be between 64 and {MAX_TOKEN_BYTES_LIMIT}"),
            ));
        }
        if raw.cache_entries > MAX_CACHE_ENTRIES {
            return Err(field_error(
                "cache_entries",
                format!("must be at most {MAX_CACHE_ENTRIES}"),
            ));
        }
        let validation = Validation {
            issuer,
            audiences,
            algorithms,
            leeway: raw.clock_skew_seconds,
            max_token_bytes: raw.max_token_bytes,
        };
        let jwks = validate_jwks(raw.jwks)?;
        let revocation = raw
            .revocation
            .map(|raw| validate_revocation(raw, env))
            .transpose()?;
        let token_sources = match raw.token_sources {
            None => vec![TokenSource::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            }],
            Some(list) if list.is_empty() => {
                return Err(field_error(
                    "token_sources",
                    "must list at least one source",
                ))
            }
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, source)| validate_source(i, source))
                .collect::<Result<_, _>>()?,
        };
        let claim_to_headers = match raw.claim_to_headers {
            None => default_claim_headers(),
            Some(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, mapping)| validate_claim_header(i, mapping))
                .collect::<Result<_, _>>()?,
        };
        let rules: Vec<Rule> = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| validate_rule(i, rule))
            .collect::<Result<_, _>>()?;
        let shadowed = check_no_shadowed_rule(&rules)?;
        let identity_header_prefix = validate_prefix(
            raw.identity_header_prefix
                .unwrap_or_else(|| DEFAULT_IDENTITY_PREFIX.into()),
            &token_sources,
        )?;
        let csrf_allowed_origins = raw
            .csrf_allowed_origins
            .iter()
            .enumerate()
            .map(|(i, origin)| {
                crate::csrf::parse_origin(origin)
                    .map_err(|reason| field_error(format!("csrf_allowed_origins[{i}]"), reason))
            })
            .collect::<Result<_, _>>()?;
        let mut warnings = shadowed;
        warnings.extend(csrf_warnings(&rules, &token_sources));
        warnings.extend(open_prefix_warnings(&rules));
        warnings.extend(feed_warnings(revocation.as_ref()));
        Ok(Config {
            validation,
            jwks,
            revocation,
            token_sources,
            claim_to_headers,
            identity_header_prefix,
            forward_authorization: raw.forward_authorization,
            csrf_allowed_origins,
            rules,
            default_require: raw.default_require,
            cache_entries: raw.cache_entries,
            cors_preflight: raw.cors_preflight,
            warnings,
        })
    }

    /// The one-line summary both builds log when a configuration is loaded (no secrets: the
    /// feed credential is only said to be inline or from an environment variable).
    pub fn summary(&self) -> String {
        format!(
            "configured: issuer {}, {} audience(s), jwks {}, revocation {}, {} rule(s), \
             token forwarded upstream: {}, CSRF rule: {}, identity headers {}*",
            self.validation.issuer,
            self.validation.audiences.len(),
            match &self.jwks {
                JwksSource::Inline(keys) => format!("inline ({} key(s))", keys.len()),
                JwksSource::Remote(remote) => format!("from cluster {}", remote.cluster),
            },
            self.revocation
                .as_ref()
                .map_or("off".to_string(), |feed| format!(
                    "from cluster {} (credential {}, stale after {} s, mode {:?})",
                    feed.cluster,
                    feed.credential_env
                        .as_deref()
                        .map_or("inline".to_string(), |name| format!("from env {name}")),
                    feed.stale_after_seconds,
                    feed.stale_mode
                )),
            self.rules.len(),
            if self.forward_authorization {
                "yes"
            } else {
                "no"
            },
            if self.cookie_source() {
                format!(
                    "on for cookie-authenticated requests ({} allowed origin(s))",
                    self.csrf_allowed_origins.len()
                )
            } else {
                "off (no cookie token source)".to_string()
            },
            self.identity_header_prefix,
        )
    }

    /// Whether a cookie is one of the token sources (the CSRF rule can apply).
    pub fn cookie_source(&self) -> bool {
        self.token_sources
            .iter()
            .any(|source| matches!(source, TokenSource::Cookie(_)))
    }

    /// The CSRF and forwarding settings for a request path (query string already removed):
    /// the first matching rule's, else CSRF on and the top-level `forward_authorization`.
    pub fn edge_for(&self, path: &str) -> EdgeRule {
        self.edge_for_as(path, false)
    }

    /// [`Self::edge_for`], the rules matched as written or, with `lax`, as a lax upstream
    /// reads the path ([`PathMatch::matches_lax`]).
    pub fn edge_for_as(&self, path: &str, lax: bool) -> EdgeRule {
        self.rule_and_edge_for_as(path, lax).1
    }

    /// The rule for a request path (query string already removed): the first match, else the
    /// default requirement with no scopes.
    pub fn rule_for(&self, path: &str) -> (Require, &[String]) {
        self.rule_for_as(path, false)
    }

    /// [`Self::rule_for`], the rules matched as written or, with `lax`, as a lax upstream
    /// reads the path ([`PathMatch::matches_lax`]).
    pub fn rule_for_as(&self, path: &str, lax: bool) -> (Require, &[String]) {
        self.rule_and_edge_for_as(path, lax).0
    }

    /// [`Self::rule_for_as`] and [`Self::edge_for_as`] from one walk of the rules.
    pub fn rule_and_edge_for_as(&self, path: &str, lax: bool) -> ((Require, &[String]), EdgeRule) {
        match self.first_match(path, lax) {
            Some(rule) => (
                (rule.require, rule.scopes.as_slice()),
                EdgeRule {
                    csrf: rule.csrf,
                    forward_authorization: rule
                        .forward_authorization
                        .unwrap_or(self.forward_authorization),
                },
            ),
            None => (
                (self.default_require, &[]),
                EdgeRule {
                    csrf: true,
                    forward_authorization: self.forward_authorization,
                },
            ),
        }
    }

    fn first_match(&self, path: &str, lax: bool) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            if lax {
                rule.path.matches_lax(path)
            } else {
                rule.path.matches(path)
            }
        })
    }
}

/// Headers the identity prefix must not cover: removing them from every request would break
/// the request itself or what the filter reads.
const PREFIX_PROTECTED: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "origin",
    "sec-fetch-site",
];

fn validate_prefix(prefix: String, sources: &[TokenSource]) -> Result<String, ConfigError> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.len() < 2 || !is_header_name(&prefix) {
        return Err(field_error(
            "identity_header_prefix",
            "must be a header-name prefix of at least two characters, e.g. `x-weauth-`",
        ));
    }
    let token_headers = sources.iter().filter_map(|source| match source {
        TokenSource::Header { name, .. } => Some(name.as_str()),
        _ => None,
    });
    if let Some(covered) = PREFIX_PROTECTED
        .iter()
        .copied()
        .chain(token_headers)
        // As the filter strips them: `_` read as `-` (`content_` covers `content-length`).
        .find(|name| crate::headers::starts_with_folded(name, &prefix))
    {
        return Err(field_error(
            "identity_header_prefix",
            format!("covers `{covered}`, which every request would lose"),
        ));
    }
    Ok(prefix)
}

/// What a load says of the feed's settings, accepted though they weaken the edge: no feed at
/// all (a logout, a ban or a refresh token's reuse is not enforced here until the tokens
/// expire), or a staleness limit so close to the long poll's wait that an answer held its
/// whole wait and a little late ages the set past it (requests then flap to 503 or pass
/// unchecked, by `stale_mode`).
fn feed_warnings(feed: Option<&RevocationConfig>) -> Vec<String> {
    match feed {
        None => vec![
            "no `revocation` feed: logouts, bans and refresh-token reuse are not enforced at \
             this edge, only the tokens' expiry"
                .into(),
        ],
        Some(feed) if feed.stale_after_seconds < feed.wait_seconds.saturating_add(7) => {
            vec![format!(
                "`revocation.stale_after_seconds` ({}) leaves less than 7 s over \
                 `wait_seconds` ({}): a poll held its whole wait and answered a little late \
                 makes the set stale (stale_mode {}); 60 with a wait of 20 is the default",
                feed.stale_after_seconds,
                feed.wait_seconds,
                match feed.stale_mode {
                    StaleMode::Deny => "deny: 503s",
                    StaleMode::Allow => "allow: requests unchecked",
                }
            )]
        }
        Some(_) => Vec::new(),
    }
}

/// One warning per token-free prefix rule whose prefix does not end in `/`: a prefix is
/// compared as a string (as Envoy's route `prefix` is), so `/healthz` also opens `/healthzX`,
/// `/healthz.json` and `/healthz-admin/…`.
fn open_prefix_warnings(rules: &[Rule]) -> Vec<String> {
    rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| match &rule.path {
            PathMatch::Prefix(prefix)
                if rule.require == Require::None && !prefix.ends_with('/') =>
            {
                Some(format!(
                    "rules[{i}] (prefix {prefix}) needs no token on every path that starts with \
                     `{prefix}` — `{prefix}X` and `{prefix}.json` too: use `exact`, or end the \
                     prefix with `/`"
                ))
            }
            _ => None,
        })
        .collect()
}

/// One warning per rule that turns the CSRF rule off where a cookie can authenticate.
fn csrf_warnings(rules: &[Rule], sources: &[TokenSource]) -> Vec<String> {
    let Some(cookie) = sources.iter().find_map(|source| match source {
        TokenSource::Cookie(name) => Some(name.as_str()),
        _ => None,
    }) else {
        return Vec::new();
    };
    rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| !rule.csrf && rule.require != Require::None)
        .map(|(i, rule)| {
            let path = match &rule.path {
                PathMatch::Prefix(prefix) => format!("prefix {prefix}"),
                PathMatch::Exact(exact) => format!("exact {exact}"),
            };
            format!(
                "rules[{i}] ({path}) turns the CSRF rule off while the cookie `{cookie}` is a \
                 token source: any site can make a logged-in browser send POST, PUT or DELETE \
                 requests there with the user's identity"
            )
        })
        .collect()
}

fn validate_jwks(raw: Option<RawJwks>) -> Result<JwksSource, ConfigError> {
    let raw = raw.ok_or_else(|| field_error("jwks", "is required (`inline` or `cluster`)"))?;
    match (raw.inline, raw.cluster) {
        (Some(_), Some(_)) => Err(field_error(
            "jwks",
            "give either `inline` or `cluster`, not both",
        )),
        (None, None) => Err(field_error("jwks", "give either `inline` or `cluster`")),
        (Some(jwks), None) => {
            let remote_only = [
                ("jwks.authority", raw.authority.is_some()),
                ("jwks.path", raw.path.is_some()),
                ("jwks.refresh_seconds", raw.refresh_seconds.is_some()),
                (
                    "jwks.min_refetch_seconds",
                    raw.min_refetch_seconds.is_some(),
                ),
                ("jwks.timeout_ms", raw.timeout_ms.is_some()),
            ];
            if let Some((field, _)) = remote_only.iter().find(|(_, set)| *set) {
                return Err(field_error(*field, "only applies with `jwks.cluster`"));
            }
            let (keys, skipped) = KeySet::from_jwks(&jwks);
            if let Some((kid, err)) = skipped.first() {
                return Err(field_error(
                    "jwks.inline.keys",
                    format!("key {}: {err}", kid.as_deref().unwrap_or("(no kid)")),
                ));
            }
            if keys.is_empty() {
                return Err(field_error(
                    "jwks.inline.keys",
                    "must hold at least one key",
                ));
            }
            Ok(JwksSource::Inline(keys))
        }
        (None, Some(cluster)) => {
            let cluster = non_empty("jwks.cluster", Some(cluster))?;
            let authority = match raw.authority {
                Some(authority) => non_empty("jwks.authority", Some(authority))?,
                None => cluster.clone(),
            };
            Ok(JwksSource::Remote(RemoteJwks {
                cluster,
                authority,
                path: check_path(
                    "jwks.path",
                    raw.path.unwrap_or_else(|| DEFAULT_JWKS_PATH.into()),
                )?,
                refresh_seconds: in_range(
                    "jwks.refresh_seconds",
                    raw.refresh_seconds.unwrap_or(300),
                    1,
                    86_400,
                )?,
                // At least 1: an unknown kid refetches at most once a second per Envoy.
                min_refetch_seconds: in_range(
                    "jwks.min_refetch_seconds",
                    raw.min_refetch_seconds.unwrap_or(5),
                    1,
                    3_600,
                )?,
                timeout_ms: in_range("jwks.timeout_ms", raw.timeout_ms.unwrap_or(2000), 1, 60_000)?,
            }))
        }
    }
}

/// Whether `name` is a portable environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The feed credential: inline, or from the VM's environment; exactly one of the two.
fn feed_credential(
    raw: &RawRevocation,
    env: EnvLookup<'_>,
) -> Result<(String, Option<String>), ConfigError> {
    let (field, credential, from) = match (&raw.credential, &raw.credential_env) {
        (Some(_), Some(_)) => {
            return Err(field_error(
                "revocation",
                "give either `credential` or `credential_env`, not both",
            ))
        }
        (None, None) => {
            return Err(field_error(
                "revocation.credential",
                "is required (or name an environment variable in `credential_env`)",
            ))
        }
        (Some(inline), None) => (
            "revocation.credential",
            non_empty("revocation.credential", Some(inline.clone()))?,
            None,
        ),
        (None, Some(name)) => {
            if !is_env_name(name) {
                return Err(field_error(
                    "revocation.credential_env",
                    "is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
            let Some(value) = env(name) else {
                return Err(field_error(
                    "revocation.credential_env",
                    format!(
                        "environment variable `{name}` is not set in the Wasm VM \
                         (pass it with vm_config.environment_variables; Istio: vmConfig.env)"
                    ),
                ));
            };
            if value.trim().is_empty() {
                return Err(field_error(
                    "revocation.credential_env",
                    format!("environment variable `{name}` is empty"),
                ));
            }
            ("revocation.credential_env", value, Some(name.clone()))
        }
    };
    if !credential.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(field_error(
            field,
            "the credential must be printable ASCII without spaces",
        ));
    }
    Ok((credential, from))
}

fn validate_revocation(
    raw: RawRevocation,
    env: EnvLookup<'_>,
) -> Result<RevocationConfig, ConfigError> {
    let cluster = non_empty("revocation.cluster", raw.cluster.clone())?;
    let authority = match raw.authority.clone() {
        Some(authority) => non_empty("revocation.authority", Some(authority))?,
        None => cluster.clone(),
    };
    let (credential, credential_env) = feed_credential(&raw, env)?;
    let wait_seconds = in_range(
        "revocation.wait_seconds",
        raw.wait_seconds.unwrap_or(20),
        0,
        MAX_WAIT_SECONDS,
    )?;
    let stale_after_seconds = in_range(
        "revocation.stale_after_seconds",
        raw.stale_after_seconds.unwrap_or(60),
        1,
        86_400,
    )?;
    if stale_after_seconds <= wait_seconds {
        return Err(field_error(
            "revocation.stale_after_seconds",
            "must be greater than `revocation.wait_seconds`",
        ));
    }
    Ok(RevocationConfig {
        cluster,
        authority,
        path: check_path(
            "revocation.path",
            raw.path.unwrap_or_else(|| DEFAULT_FEED_PATH.into()),
        )?,
        credential,
        credential_env,
        wait_seconds,
        stale_after_seconds,
        stale_mode: raw.stale_mode.unwrap_or(StaleMode::Deny),
    })
}

fn validate_source(i: usize, raw: RawTokenSource) -> Result<TokenSource, ConfigError> {
    let field = format!("token_sources[{i}]");
    if raw.prefix.is_some() && raw.header.is_none() {
        return Err(field_error(
            format!("{field}.prefix"),
            "only applies to a `header` source",
        ));
    }
    match (raw.header, raw.cookie, raw.query) {
        (Some(name), None, None) => {
            let name = name.to_ascii_lowercase();
            if !is_header_name(&name) {
                return Err(field_error(
                    format!("{field}.header"),
                    "is not a header name",
                ));
            }
            Ok(TokenSource::Header {
                name,
                prefix: raw.prefix.unwrap_or_default(),
            })
        }
        (None, Some(cookie), None) if is_header_name(&cookie) => Ok(TokenSource::Cookie(cookie)),
        (None, Some(_), None) => Err(field_error(
            format!("{field}.cookie"),
            "is not a cookie name",
        )),
        (None, None, Some(query)) if !query.is_empty() && !query.contains(['&', '=', '#']) => {
            Ok(TokenSource::Query(query))
        }
        (None, None, Some(_)) => Err(field_error(
            format!("{field}.query"),
            "is not a query parameter name",
        )),
        _ => Err(field_error(
            field,
            "give exactly one of `header`, `cookie`, `query`",
        )),
    }
}

fn validate_claim_header(i: usize, raw: RawClaimHeader) -> Result<ClaimHeader, ConfigError> {
    if !KNOWN_CLAIMS.contains(&raw.claim.as_str()) {
        return Err(field_error(
            format!("claim_to_headers[{i}].claim"),
            format!("`{}` is not one of {}", raw.claim, KNOWN_CLAIMS.join(", ")),
        ));
    }
    let header = raw.header.to_ascii_lowercase();
    let reserved = [
        "host",
        "authorization",
        "cookie",
        "content-length",
        "transfer-encoding",
    ];
    // As the filter strips them: `_` read as `-` (`content_length` is `content-length`).
    let is_reserved = reserved.iter().any(|name| {
        name.len() == header.len() && crate::headers::starts_with_folded(name, &header)
    });
    if !is_header_name(&header) || is_reserved {
        return Err(field_error(
            format!("claim_to_headers[{i}].header"),
            "must be a header name other than host, authorization, cookie, content-length, transfer-encoding",
        ));
    }
    Ok(ClaimHeader {
        claim: raw.claim,
        header,
    })
}

fn validate_rule(i: usize, raw: RawRule) -> Result<Rule, ConfigError> {
    let field = format!("rules[{i}]");
    let path = match (raw.prefix, raw.exact) {
        (Some(prefix), None) => PathMatch::Prefix(check_path(&format!("{field}.prefix"), prefix)?),
        (None, Some(exact)) => PathMatch::Exact(check_path(&format!("{field}.exact"), exact)?),
        _ => {
            return Err(field_error(field, "give exactly one of `prefix`, `exact`"));
        }
    };
    if let Some(bad) = raw.scopes.iter().find(|scope| {
        scope.is_empty() || scope.contains(char::is_whitespace) || scope.contains('"')
    }) {
        return Err(field_error(
            format!("{field}.scopes"),
            format!("`{bad}` is not a single scope"),
        ));
    }
    if raw.require == Require::None && !raw.scopes.is_empty() {
        return Err(field_error(
            format!("{field}.scopes"),
            "scopes cannot be required with `require: none`",
        ));
    }
    if raw.require == Require::None && raw.forward_authorization.is_some() {
        return Err(field_error(
            format!("{field}.forward_authorization"),
            "has no effect with `require: none` (the request is forwarded as sent)",
        ));
    }
    Ok(Rule {
        path,
        require: raw.require,
        scopes: raw.scopes,
        csrf: raw.csrf,
        forward_authorization: raw.forward_authorization,
    })
}

/// The first matching rule wins, so a rule every path of which an earlier rule already
/// matches never applies: refused, naming both, when it says something else (an `exact` login
/// route listed after the `prefix` that covers it would otherwise be silently required to
/// carry a token); only warned of when it says the same (a configuration that loaded before
/// keeps loading). Returns the warnings.
fn check_no_shadowed_rule(rules: &[Rule]) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let (field, path) = match &rule.path {
            PathMatch::Prefix(prefix) => ("prefix", prefix),
            PathMatch::Exact(exact) => ("exact", exact),
        };
        let earlier = rules[..i].iter().position(|before| match &before.path {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => matches!(rule.path, PathMatch::Exact(_)) && exact == path,
        });
        let Some(j) = earlier else {
            continue;
        };
        let same = rules.get(j).is_some_and(|before| {
            (
                before.require,
                &before.scopes,
                before.csrf,
                before.forward_authorization,
            ) == (
                rule.require,
                &rule.scopes,
                rule.csrf,
                rule.forward_authorization,
            )
        });
        if same {
            warnings.push(format!(
                "rules[{i}] ({field} {path}) never applies: rules[{j}] matches every path it \
                 does, to the same effect; remove it"
            ));
            continue;
        }
        return Err(field_error(
            format!("rules[{i}].{field}"),
            format!(
                "never applies: `rules[{j}]` matches every path it does (the first matching \
                 rule wins; list the more specific rule first)"
            ),
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_repeated_member_refused_with_its_path() {
        let err = Config::parse(
            br#"{"issuer":"a","issuer":"b","audiences":["weauth"],"jwks":{"inline":{"keys":[]}}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("duplicate field `issuer`"),
            "{err}"
        );
        let err = Config::parse(
            br#"{"issuer":"a","audiences":["w"],"rules":[{"prefix":"/a","prefix":"/b"}]}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("duplicate field `prefix`"),
            "{err}"
        );
        assert_eq!(field_of(err), "rules[0]");
        // Inside an inline JWK too (a derived type of weauth-token).
        let err = Config::parse(
            br#"{"issuer":"a","audiences":["w"],"jwks":{"inline":{"keys":[{"kty":"OKP","kty":"EC"}]}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate field `kty`"), "{err}");
        assert_eq!(field_of(err), "jwks.inline.keys[0]");
    }

    use super::*;
    use weauth_token::SigningKey;

    pub(crate) fn inline_jwks_json() -> String {
        let key = SigningKey::from_seed(Algorithm::EdDSA, &[7u8; 32]).unwrap();
        serde_json::to_string(&Jwks {
            keys: vec![key.jwk()],
        })
        .unwrap()
    }

    fn minimal() -> String {
        format!(
            r#"{{"issuer":"http://127.0.0.1:8080","audiences":["weauth"],"jwks":{{"inline":{}}}}}"#,
            inline_jwks_json()
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text.as_bytes())
    }

    fn field_of(err: ConfigError) -> String {
        match err {
            ConfigError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    /// Builds `{issuer, audiences, jwks inline, <extra>}` without string surgery.
    fn config_with(extra: serde_json::Value) -> String {
        let mut value: serde_json::Value = serde_json::from_str(&minimal()).unwrap();
        if let (Some(obj), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        value.to_string()
    }

    #[test]
    fn parse_minimal_applies_defaults() {
        let config = parse(&minimal()).unwrap();
        assert_eq!(config.validation.algorithms, vec![Algorithm::EdDSA]);
        assert_eq!(config.validation.leeway, 60);
        assert_eq!(config.validation.max_token_bytes, 8192);
        assert_eq!(config.cache_entries, 10_000);
        assert!(!config.forward_authorization);
        assert!(config.csrf_allowed_origins.is_empty());
        assert_eq!(config.identity_header_prefix, "x-weauth-");
        assert!(!config.cors_preflight);
        assert!(config.revocation.is_none());
        // Without a feed, the load says what is not enforced.
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].starts_with("no `revocation` feed"));
        assert_eq!(config.default_require, Require::Required);
        assert_eq!(
            config.token_sources,
            vec![TokenSource::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }]
        );
        let headers: Vec<_> = config
            .claim_to_headers
            .iter()
            .map(|m| m.header.as_str())
            .collect();
        assert_eq!(
            headers,
            [
                "x-weauth-sub",
                "x-weauth-openid",
                "x-weauth-unionid",
                "x-weauth-appid",
                "x-weauth-sid",
                "x-weauth-scope"
            ]
        );
    }

    #[test]
    fn parse_interfaces_example_accepted() {
        // The example as docs/INTERFACES.md shows it (its first JSON block with `rules`).
        let doc = include_str!("../../docs/INTERFACES.md");
        let text = doc
            .split("```json")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .find(|block| block.contains("\"rules\""))
            .expect("INTERFACES.md shows a configuration with rules");
        // It shows both forms of `jwks`, the inline one first: the remote one is tested.
        let text: String = text
            .lines()
            .filter(|line| !line.contains("\"jwks\": {\"inline\""))
            .collect::<Vec<_>>()
            .join("\n");
        let env = |name: &str| (name == "WEAUTH_FEED_TOKEN").then(|| "feed-secret".to_string());
        let config = Config::parse_with_env(text.as_bytes(), &env).unwrap();
        let JwksSource::Remote(remote) = &config.jwks else {
            panic!("expected a remote jwks")
        };
        assert_eq!(remote.cluster, "weauth_issuer");
        assert_eq!(remote.authority, "issuer");
        let revocation = config.revocation.clone().unwrap();
        assert_eq!(revocation.wait_seconds, 20);
        assert_eq!(revocation.stale_mode, StaleMode::Deny);
        assert_eq!(config.token_sources.len(), 3);
        assert_eq!(config.rules.len(), 6);
        assert_eq!(config.csrf_allowed_origins, ["https://h5.example.com"]);
        assert!(config.edge_for("/v1/me").forward_authorization);
        assert!(!config.edge_for("/api/x").forward_authorization);
        // Logging in and refreshing need no token; the rest of /v1/ does.
        assert_eq!(config.rule_for("/v1/login").0, Require::None);
        assert_eq!(config.rule_for("/v1/token/refresh").0, Require::None);
        // A logout reaches the issuer with whatever credential it has (a lapsed cookie: none).
        assert_eq!(config.rule_for("/v1/logout").0, Require::None);
        assert_eq!(config.rule_for("/v1/me").0, Require::Required);
        // The hook rule's `csrf: false` is said at load.
        assert_eq!(config.warnings.len(), 1);
    }

    #[test]
    fn parse_unknown_top_field_refused() {
        let err = parse(&config_with(serde_json::json!({"isuer": "x"}))).unwrap_err();
        assert_eq!(field_of(err), "isuer");
    }

    #[test]
    fn parse_wrong_type_names_field() {
        let err = parse(&config_with(serde_json::json!({"max_token_bytes": "8192"}))).unwrap_err();
        assert_eq!(field_of(err), "max_token_bytes");
    }

    #[test]
    fn parse_unknown_nested_field_names_section() {
        let err = parse(&config_with(
            serde_json::json!({"revocation": {"cluster": "c", "credential": "s", "wait": 3}}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err.clone()), "revocation.wait");
        assert!(err.to_string().contains("unknown field `wait`"), "{err}");
    }

    #[test]
    fn parse_not_an_object_refused() {
        assert!(matches!(parse("[1]").unwrap_err(), ConfigError::Json(_)));
        assert!(matches!(parse("\"x\"").unwrap_err(), ConfigError::Json(_)));
    }

    #[test]
    fn parse_trailing_text_refused() {
        let err = parse(&format!("{} {{}}", minimal())).unwrap_err();
        assert!(matches!(err, ConfigError::Json(_)), "{err:?}");
    }

    #[test]
    fn parse_unknown_field_deep_names_full_path() {
        let err = parse(&config_with(serde_json::json!({"rules": [
            {"prefix": "/a"}, {"prefix": "/b", "scope": ["x"]}
        ]})))
        .unwrap_err();
        assert_eq!(field_of(err), "rules[1].scope");
    }

    #[test]
    fn parse_rule_an_earlier_one_covers_refused_naming_both() {
        let rules =
            |list: serde_json::Value| parse(&config_with(serde_json::json!({"rules": list})));
        let err = rules(serde_json::json!([
            {"prefix": "/v1/"}, {"exact": "/v1/login", "require": "none"}
        ]))
        .unwrap_err();
        assert_eq!(field_of(err.clone()), "rules[1].exact");
        assert!(err.to_string().contains("`rules[0]`"), "{err}");
        let err = rules(serde_json::json!([
            {"prefix": "/api"}, {"prefix": "/api/hooks/", "csrf": false}
        ]))
        .unwrap_err();
        assert_eq!(field_of(err), "rules[1].prefix");
        let err = rules(serde_json::json!([{"exact": "/a"}, {"exact": "/a", "require": "none"}]))
            .unwrap_err();
        assert_eq!(field_of(err), "rules[1].exact");
        // Covered to the same effect: loads (as it did), with a warning.
        let same = rules(serde_json::json!([{"prefix": "/api/"}, {"prefix": "/api/v2/"}])).unwrap();
        assert!(
            same.warnings
                .iter()
                .any(|w| w.starts_with("rules[1] (prefix /api/v2/) never applies")),
            "{:?}",
            same.warnings
        );
        // The specific rule first is what was meant; a prefix after an exact path is not
        // covered by it, nor are prefixes of each other the other way round.
        let ok = rules(serde_json::json!([
            {"exact": "/v1/login", "require": "none"}, {"prefix": "/v1/"},
            {"exact": "/a"}, {"prefix": "/a"}, {"prefix": "/b/c"}, {"prefix": "/b"}
        ]))
        .unwrap();
        assert_eq!(ok.rule_for("/v1/login").0, Require::None);
    }

    #[test]
    fn parse_missing_issuer_names_field() {
        let err = parse(r#"{"audiences":["a"],"jwks":{"cluster":"c"}}"#).unwrap_err();
        assert_eq!(field_of(err), "issuer");
    }

    #[test]
    fn parse_empty_config_missing() {
        assert_eq!(parse("  ").unwrap_err(), ConfigError::Missing);
    }

    #[test]
    fn parse_unknown_algorithm_names_index() {
        let err = parse(&config_with(
            serde_json::json!({"algorithms": ["EdDSA", "RS256"]}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "algorithms[1]");
    }

    #[test]
    fn parse_jwks_both_forms_refused() {
        let err = parse(&config_with(
            serde_json::json!({"jwks": {"inline": {"keys": []}, "cluster": "c"}}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "jwks");
    }

    #[test]
    fn parse_inline_jwks_empty_refused() {
        let err = parse(&config_with(
            serde_json::json!({"jwks": {"inline": {"keys": []}}}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "jwks.inline.keys");
    }

    #[test]
    fn parse_remote_jwks_defaults() {
        let config = parse(&config_with(
            serde_json::json!({"jwks": {"cluster": "issuer_c"}}),
        ))
        .unwrap();
        let JwksSource::Remote(remote) = config.jwks else {
            panic!("expected a remote jwks")
        };
        assert_eq!(remote.authority, "issuer_c");
        assert_eq!(remote.path, DEFAULT_JWKS_PATH);
        assert_eq!(remote.refresh_seconds, 300);
        assert_eq!(remote.min_refetch_seconds, 5);
        assert_eq!(remote.timeout_ms, 2000);
        // 0 would let a stream of unknown kids refetch the JWKS at every clock tick.
        let err = parse(&config_with(serde_json::json!(
            {"jwks": {"cluster": "issuer_c", "min_refetch_seconds": 0}}
        )))
        .unwrap_err();
        assert_eq!(field_of(err), "jwks.min_refetch_seconds");
    }

    #[test]
    fn parse_revocation_defaults() {
        let config = parse(&config_with(
            serde_json::json!({"revocation": {"cluster": "c", "credential": "s"}}),
        ))
        .unwrap();
        let revocation = config.revocation.unwrap();
        assert_eq!(revocation.path, DEFAULT_FEED_PATH);
        assert_eq!(revocation.wait_seconds, 20);
        assert_eq!(revocation.stale_after_seconds, 60);
        assert_eq!(revocation.stale_mode, StaleMode::Deny);
        assert_eq!(revocation.authority, "c");
    }

    #[test]
    fn parse_revocation_without_credential_refused() {
        let err = parse(&config_with(
            serde_json::json!({"revocation": {"cluster": "c"}}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "revocation.credential");
    }

    fn env_with(name: &'static str, value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |wanted: &str| (wanted == name).then(|| value.to_string())
    }

    #[test]
    fn parse_credential_env_reads_the_variable() {
        let text = config_with(serde_json::json!({"revocation":
            {"cluster": "c", "credential_env": "WEAUTH_FEED_TOKEN"}}));
        let config = Config::parse_with_env(
            text.as_bytes(),
            &env_with("WEAUTH_FEED_TOKEN", "feed-s3cret"),
        )
        .unwrap();
        // Never in a `{:?}` of the configuration (a log line, a panic message).
        let shown = format!("{config:?}");
        assert!(!shown.contains("feed-s3cret"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        let revocation = config.revocation.unwrap();
        assert_eq!(revocation.credential, "feed-s3cret");
        assert_eq!(
            revocation.credential_env.as_deref(),
            Some("WEAUTH_FEED_TOKEN")
        );
    }

    #[test]
    fn parse_credential_env_missing_variable_named() {
        let text = config_with(serde_json::json!({"revocation":
            {"cluster": "c", "credential_env": "WEAUTH_FEED_TOKEN"}}));
        let err = Config::parse_with_env(text.as_bytes(), &env_with("OTHER", "x")).unwrap_err();
        assert!(
            err.to_string()
                .contains("environment variable `WEAUTH_FEED_TOKEN` is not set"),
            "{err}"
        );
        assert_eq!(field_of(err), "revocation.credential_env");
        // `parse` sees no environment at all.
        assert_eq!(
            field_of(parse(&text).unwrap_err()),
            "revocation.credential_env"
        );
    }

    #[test]
    fn parse_credential_env_empty_or_unprintable_value_refused() {
        let text = config_with(serde_json::json!({"revocation":
            {"cluster": "c", "credential_env": "FEED"}}));
        for value in ["", "  ", "two words", "tab\there"] {
            let err =
                Config::parse_with_env(text.as_bytes(), &move |_: &str| Some(value.to_string()))
                    .unwrap_err();
            assert_eq!(field_of(err), "revocation.credential_env", "{value:?}");
        }
    }

    #[test]
    fn parse_credential_and_credential_env_both_refused() {
        let text = config_with(serde_json::json!({"revocation":
            {"cluster": "c", "credential": "s", "credential_env": "FEED"}}));
        let err = Config::parse_with_env(text.as_bytes(), &env_with("FEED", "x")).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        assert_eq!(field_of(err), "revocation");
    }

    #[test]
    fn parse_credential_env_bad_name_refused() {
        for name in ["", "1ABC", "A-B", "A B", "A=B"] {
            let text = config_with(serde_json::json!({"revocation":
                {"cluster": "c", "credential_env": name}}));
            let err =
                Config::parse_with_env(text.as_bytes(), &|_: &str| Some("x".into())).unwrap_err();
            assert_eq!(field_of(err), "revocation.credential_env", "{name:?}");
        }
    }

    #[test]
    fn parse_revocation_wait_over_cap_refused() {
        let err = parse(&config_with(serde_json::json!({"revocation":
            {"cluster": "c", "credential": "s", "wait_seconds": 61, "stale_after_seconds": 600}})))
        .unwrap_err();
        assert_eq!(field_of(err), "revocation.wait_seconds");
    }

    #[test]
    fn parse_stale_not_above_wait_refused() {
        let err = parse(&config_with(serde_json::json!({"revocation":
            {"cluster": "c", "credential": "s", "wait_seconds": 30, "stale_after_seconds": 30}})))
        .unwrap_err();
        assert_eq!(field_of(err), "revocation.stale_after_seconds");
    }

    #[test]
    fn parse_bad_stale_mode_refused() {
        let err = parse(&config_with(serde_json::json!({"revocation":
            {"cluster": "c", "credential": "s", "stale_mode": "maybe"}})))
        .unwrap_err();
        assert!(err.to_string().contains("maybe"), "{err}");
        assert_eq!(field_of(err), "revocation.stale_mode");
    }

    #[test]
    fn parse_token_source_two_kinds_refused() {
        let err = parse(&config_with(
            serde_json::json!({"token_sources": [{"cookie": "a", "query": "b"}]}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "token_sources[0]");
    }

    #[test]
    fn parse_token_source_header_lowercased() {
        let config = parse(&config_with(
            serde_json::json!({"token_sources": [{"header": "X-Token"}]}),
        ))
        .unwrap();
        assert_eq!(
            config.token_sources,
            vec![TokenSource::Header {
                name: "x-token".into(),
                prefix: String::new()
            }]
        );
    }

    #[test]
    fn parse_unknown_claim_refused() {
        let err = parse(&config_with(
            serde_json::json!({"claim_to_headers": [{"claim": "email", "header": "x-email"}]}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "claim_to_headers[0].claim");
    }

    #[test]
    fn parse_claim_into_authorization_refused() {
        let err = parse(&config_with(
            serde_json::json!({"claim_to_headers": [{"claim": "sub", "header": "Authorization"}]}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "claim_to_headers[0].header");
        // The underscore spelling names the same header to the filter (and to many upstreams).
        let err = parse(&config_with(
            serde_json::json!({"claim_to_headers": [{"claim": "sub", "header": "content_length"}]}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "claim_to_headers[0].header");
    }

    #[test]
    fn parse_rule_without_match_refused() {
        let err = parse(&config_with(
            serde_json::json!({"rules": [{"require": "none"}]}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "rules[0]");
    }

    #[test]
    fn parse_rule_bad_require_refused() {
        let err = parse(&config_with(
            serde_json::json!({"rules": [{"prefix": "/", "require": "sometimes"}]}),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
        assert_eq!(field_of(err), "rules[0].require");
    }

    #[test]
    fn parse_rule_prefix_without_slash_refused() {
        let err = parse(&config_with(
            serde_json::json!({"rules": [{"prefix": "api"}]}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "rules[0].prefix");
    }

    #[test]
    fn parse_skew_out_of_range_refused() {
        let err = parse(&config_with(serde_json::json!({"clock_skew_seconds": -1}))).unwrap_err();
        assert_eq!(field_of(err), "clock_skew_seconds");
    }

    #[test]
    fn parse_cache_too_large_refused() {
        let err = parse(&config_with(
            serde_json::json!({"cache_entries": 2_000_000}),
        ))
        .unwrap_err();
        assert_eq!(field_of(err), "cache_entries");
    }

    #[test]
    fn parse_csrf_allowed_origins_lowercased() {
        let config = parse(&config_with(serde_json::json!({"csrf_allowed_origins":
            ["https://App.Example.com", "http://127.0.0.1:10000"]})))
        .unwrap();
        assert_eq!(
            config.csrf_allowed_origins,
            ["https://app.example.com", "http://127.0.0.1:10000"]
        );
    }

    #[test]
    fn parse_csrf_allowed_origin_not_an_origin_refused() {
        for bad in ["https://app.example.com/", "null", "*", "app.example.com"] {
            let err = parse(&config_with(serde_json::json!({"csrf_allowed_origins":
                ["https://ok.example", bad]})))
            .unwrap_err();
            assert!(err.to_string().contains("origin"), "{bad}: {err}");
            assert_eq!(field_of(err), "csrf_allowed_origins[1]", "{bad}");
        }
    }

    #[test]
    fn parse_identity_prefix_lowercased() {
        let config = parse(&config_with(
            serde_json::json!({"identity_header_prefix": "X-Auth-"}),
        ))
        .unwrap();
        assert_eq!(config.identity_header_prefix, "x-auth-");
        // Two characters are enough, as the error says.
        let config = parse(&config_with(
            serde_json::json!({"identity_header_prefix": "x-"}),
        ))
        .unwrap();
        assert_eq!(config.identity_header_prefix, "x-");
    }

    /// A rule's scope must be one token of RFC 6750's `scope` syntax: not empty, no space, no
    /// `"` (a scope `"a b"` never matches, and every request on its rule would be refused).
    #[test]
    fn parse_rule_scopes_empty_spaced_or_quoted_refused() {
        for bad in ["", "a b", "a\tb", "a\"b"] {
            let err = parse(&config_with(serde_json::json!({"rules": [
                {"prefix": "/a", "scopes": [bad]}
            ]})))
            .unwrap_err();
            assert_eq!(field_of(err), "rules[0].scopes", "{bad:?}");
        }
        assert!(parse(&config_with(serde_json::json!({"rules": [
            {"prefix": "/a", "scopes": ["read:all"]}
        ]})))
        .is_ok());
    }

    #[test]
    fn parse_identity_prefix_covering_needed_headers_refused() {
        // `content_` covers `content-length` as the filter strips (`_` read as `-`).
        for bad in ["", "x", "a", "co", "x y", "auth", "content_", "sec_fetch"] {
            let err = parse(&config_with(
                serde_json::json!({"identity_header_prefix": bad}),
            ))
            .unwrap_err();
            assert_eq!(field_of(err), "identity_header_prefix", "{bad:?}");
        }
        // A token header source under the prefix would be removed from every request.
        let err = parse(&config_with(serde_json::json!({
            "identity_header_prefix": "x-weauth-",
            "token_sources": [{"header": "x-weauth-token"}]})))
        .unwrap_err();
        assert!(err.to_string().contains("x-weauth-token"), "{err}");
    }

    #[test]
    fn parse_rule_csrf_off_with_cookie_source_warns() {
        let config = parse(&config_with(serde_json::json!({
            "token_sources": [{"header": "authorization", "prefix": "Bearer "},
                              {"cookie": "weauth_at"}],
            "rules": [{"prefix": "/api/hooks/", "require": "required", "csrf": false},
                      {"prefix": "/public/", "require": "none", "csrf": false},
                      {"prefix": "/api/", "require": "required"}]})))
        .unwrap();
        let csrf: Vec<_> = config
            .warnings
            .iter()
            .filter(|w| w.starts_with("rules["))
            .collect();
        assert_eq!(csrf.len(), 1, "{:?}", config.warnings);
        assert!(csrf[0].starts_with("rules[0] (prefix /api/hooks/)"));
        assert!(csrf[0].contains("weauth_at"));
        assert!(!config.rules[0].csrf);
        assert!(config.rules[2].csrf);
    }

    #[test]
    fn parse_token_free_prefix_without_a_trailing_slash_warns() {
        let config = parse(&config_with(serde_json::json!({
            "rules": [{"prefix": "/healthz", "require": "none"},
                      {"prefix": "/public/", "require": "none"},
                      {"exact": "/ready", "require": "none"},
                      {"prefix": "/api", "require": "required"}]})))
        .unwrap();
        let open: Vec<_> = config
            .warnings
            .iter()
            .filter(|w| w.starts_with("rules["))
            .collect();
        assert_eq!(open.len(), 1, "{:?}", config.warnings);
        assert!(
            open[0].starts_with("rules[0] (prefix /healthz)"),
            "{}",
            open[0]
        );
        assert!(
            open[0].contains("starts with `/healthz` — `/healthzX`"),
            "{}",
            open[0]
        );
        assert!(!open[0].contains("  "), "{}", open[0]);
    }

    #[test]
    fn parse_rule_csrf_off_without_cookie_source_silent() {
        let config = parse(&config_with(serde_json::json!({
            "rules": [{"prefix": "/api/", "require": "required", "csrf": false}]})))
        .unwrap();
        assert!(
            !config.warnings.iter().any(|w| w.starts_with("rules[")),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn parse_feed_settings_that_weaken_the_edge_warn() {
        let feed = |wait: u64, stale: u64| {
            parse(&config_with(serde_json::json!({"revocation": {
                "cluster": "weauth_issuer", "credential": "feed-secret",
                "wait_seconds": wait, "stale_after_seconds": stale}})))
            .unwrap()
            .warnings
        };
        assert!(feed(20, 60).is_empty());
        assert!(feed(20, 27).is_empty());
        let close = feed(20, 26);
        assert_eq!(close.len(), 1, "{close:?}");
        assert!(close[0].contains("less than 7 s"), "{close:?}");
    }

    #[test]
    fn parse_rule_forward_authorization_with_require_none_refused() {
        let err = parse(&config_with(serde_json::json!({
            "rules": [{"prefix": "/p/", "require": "none", "forward_authorization": true}]})))
        .unwrap_err();
        assert_eq!(field_of(err), "rules[0].forward_authorization");
    }

    #[test]
    fn edge_for_rule_overrides_top_level() {
        let config = parse(&config_with(serde_json::json!({
            "forward_authorization": false,
            "rules": [{"prefix": "/v1/", "forward_authorization": true},
                      {"prefix": "/hooks/", "csrf": false},
                      {"prefix": "/api/"}]})))
        .unwrap();
        let edge = |path| config.edge_for(path);
        assert_eq!(
            edge("/v1/me"),
            EdgeRule {
                csrf: true,
                forward_authorization: true
            }
        );
        assert_eq!(
            edge("/hooks/x"),
            EdgeRule {
                csrf: false,
                forward_authorization: false
            }
        );
        assert_eq!(
            edge("/api/x"),
            EdgeRule {
                csrf: true,
                forward_authorization: false
            }
        );
        assert_eq!(
            edge("/elsewhere"),
            EdgeRule {
                csrf: true,
                forward_authorization: false
            }
        );
    }

    #[test]
    fn rule_for_first_match_wins() {
        let config = parse(&config_with(serde_json::json!({"rules": [
            {"exact": "/api/public", "require": "none"},
            {"prefix": "/api/", "require": "required", "scopes": ["read"]},
        ], "default_require": "optional"})))
        .unwrap();
        assert_eq!(config.rule_for("/api/public").0, Require::None);
        let (require, scopes) = config.rule_for("/api/orders");
        assert_eq!(require, Require::Required);
        assert_eq!(scopes, ["read".to_string()]);
        assert_eq!(config.rule_for("/api/public/x").0, Require::Required);
        assert_eq!(config.rule_for("/other").0, Require::Optional);
    }
}
