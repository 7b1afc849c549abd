//! The per-request glue shared by both builds: thin, host-independent, written against
//! [`crate::host`]'s traits and unit-tested natively against a mock host.
//!
//! 1. Read the request's header map once (everything below reads it): views into Envoy's own
//!    map in the native build, a copy in the wasm build.
//! 2. Pick the path rule ([`crate::path`]: refused with 400 when the path is unsafe, never a
//!    laxer rule than what the upstream may make of it); `none` forwards as is.
//! 3. Let a CORS preflight through when `cors_preflight` is on and it carries no token.
//! 4. A token from a cookie on an unsafe method must pass the CSRF rule ([`crate::csrf`]),
//!    else 403 before any verification.
//! 5. Decide ([`KeyState::judge`] → [`crate::verify::decide`]); on allow, set the identity
//!    headers (and remove the token, its header or its cookie, unless the rule forwards it); on
//!    deny, answer locally with the status, an RFC 6750 `WWW-Authenticate` challenge and a JSON
//!    body.
//!
//! Steps 1–5 only read: they end in owned edits (or a denial), applied once the header map is
//! no longer read. The native build's views point into Envoy's map, which an edit may change;
//! they live only inside [`Host::with_request_headers`], which borrows the host, so the borrow
//! checker keeps it that way.
//!
//! Whatever the outcome, no header the client sent under the identity prefix (`x-weauth-`)
//! nor any configured identity header reaches the upstream ([`crate::headers`]): on allow the
//! configured headers with a value are written — added when the map read shows the client did
//! not send them (the common case, and the cheaper call), set (which replaces the client's
//! copies) when it did — and every other one the client sent is removed; on every other
//! forwarded request each one the client sent is removed (a client must never assert an
//! identity).

use std::borrow::Cow;
use std::rc::Rc;

use weauth_token::{Claims, KeySet};

use crate::cache::TokenCache;
use crate::config::{Config, Require, StaleMode, TokenSource};
use crate::headers::{self, CookieEdit, Field, Header};
use crate::host::{Host, KeyState, Level, Now, Stats};
use crate::revocation::RevocationSet;
use crate::verify::{
    self, CacheUse, Decision, Denial, Extracted, RevocationView, Snapshot, Verdict,
};
use crate::{csrf, path};

/// What the host does with the request after the glue ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Forward to the upstream (headers possibly edited).
    Continue,
    /// A local reply was sent; stop the filter chain.
    Stop,
}

/// The revocation set as a decision sees it: the set, its generation and when the feed last
/// answered (on the fetcher's clock, [`Now::mono_ms`]). `None` while nothing is loaded.
#[derive(Debug, Clone, Copy)]
pub struct Loaded<'a> {
    pub set: &'a RevocationSet,
    pub generation: u64,
    pub last_ok_ms: u64,
}

/// Builds the [`Snapshot`] from a build's state and decides. Pure: both builds' [`KeyState`]
/// call it with what they hold. The set's age is reckoned on `now.mono_ms`, the token's times
/// on `now.unix_ms` ([`Now`]: a step of the wall clock neither ages the set nor, stepped back,
/// keeps it fresh).
#[allow(clippy::too_many_arguments)]
pub fn judge(
    config: &Config,
    keys: Option<&KeySet>,
    keys_generation: u64,
    revocation: Option<Loaded<'_>>,
    cache: &mut TokenCache,
    extracted: &Extracted<'_>,
    require: Require,
    scopes: &[String],
    now: Now,
) -> Verdict {
    let view = match &config.revocation {
        None => RevocationView::Disabled,
        Some(feed) => match revocation {
            None => RevocationView::NotLoaded {
                mode: feed.stale_mode,
            },
            Some(loaded) => RevocationView::Ready {
                set: loaded.set,
                generation: loaded.generation,
                stale: now.mono_ms.saturating_sub(loaded.last_ok_ms)
                    > feed.stale_after_seconds.saturating_mul(1000),
                mode: feed.stale_mode,
            },
        },
    };
    let snapshot = Snapshot {
        keys,
        keys_generation,
        revocation: view,
    };
    verify::decide(
        extracted,
        require,
        scopes,
        &config.validation,
        &snapshot,
        cache,
        i64::try_from(now.unix_ms / 1000).unwrap_or(i64::MAX),
    )
}

/// The 503 a request gets when the glue itself failed (a panic caught at the native FFI
/// boundary, a state that could not be borrowed): fail closed.
pub fn unavailable() -> Denial {
    Denial {
        status: 503,
        error: "temporarily_unavailable",
        description: "the filter is busy; retry shortly".into(),
        // Its own counter: a fault of the filter, not an outage of the keys.
        reason: "internal",
        scope: None,
    }
}

/// Runs the filter on one request's headers.
pub fn on_request_headers(
    host: &mut impl Host,
    config: &Config,
    state: &mut impl KeyState,
    stats: &impl Stats,
) -> Flow {
    // Everything that reads the header map runs first and returns owned edits: the native
    // build's header views point into Envoy's map, which an edit may change.
    let reader = &*host;
    let next = reader
        .with_request_headers(|headers| decide_request(headers, reader, config, state, stats));
    match next {
        Next::Forward(edits, judged) => match edits.apply(host, config) {
            Ok(edited) => {
                if edited {
                    host.headers_edited();
                }
                // Counted once forwarded: a request refused below is a denial only.
                match judged {
                    Judged::Allowed => stats.allowed(),
                    Judged::Anonymous => stats.anonymous(),
                    Judged::Not => {}
                }
                Flow::Continue
            }
            Err(header) => {
                // Forwarded unedited, it would carry a client's copy of an identity header or
                // the token the upstream must not see.
                host.log(
                    Level::Error,
                    &format!("the host refused to edit request header {header}; refused (503)"),
                );
                deny(host, stats, &unavailable())
            }
        },
        Next::Deny(denial) => deny(host, stats, &denial),
    }
}

/// What becomes of a request, decided on its header map.
enum Next<'c> {
    Forward(Edits<'c>, Judged),
    Deny(Denial),
}

/// What a forwarded request counts as, once its edits are made.
enum Judged {
    Allowed,
    Anonymous,
    /// Not judged: a public path, a CORS preflight.
    Not,
}

/// The header edits before a request is forwarded, decided while the header map was read and
/// applied once it no longer is.
struct Edits<'c> {
    /// On allow: the claims to set the identity headers from.
    claims: Option<Rc<Claims>>,
    /// The client's identity headers to remove (usually none, and then no allocation).
    strip: Vec<String>,
    /// The configured identity headers the client sent: set (which replaces the client's
    /// copies); the others are added.
    sent: Vec<&'c str>,
    token: TokenEdit<'c>,
}

/// What happens to the token before forwarding.
struct TokenEdit<'c> {
    /// Remove this header (the token's).
    header: Option<&'c str>,
    /// Remove these too: the other header sources that carry a token (rare: usually empty, and
    /// then no allocation).
    other_headers: Vec<&'c str>,
    /// What to do with `Cookie` (the token cookies taken out).
    cookie: CookieEdit,
}

impl TokenEdit<'_> {
    const KEEP: TokenEdit<'static> = TokenEdit {
        header: None,
        other_headers: Vec::new(),
        cookie: CookieEdit::Unchanged,
    };
}

impl<'c> Edits<'c> {
    /// The identity headers the client sent, all to be removed (nothing is set).
    fn strip_only(config: &Config, headers: &[Header<'_>]) -> Edits<'c> {
        Edits {
            claims: None,
            strip: owned(identity_sent(config, headers)),
            sent: Vec::new(),
            token: TokenEdit::KEEP,
        }
    }

    /// Sets the identity headers from the claims, removes every other identity header the
    /// client sent, and removes the token as decided. Setting a header replaces every copy the
    /// client sent; a header whose claim is absent (or unusable) is removed if the client sent
    /// it. Returns whether any header was edited, or the first header the host refused to edit
    /// (the edits stop there).
    fn apply(self, host: &mut impl Host, config: &Config) -> Result<bool, String> {
        let mut edited = false;
        if let Some(claims) = &self.claims {
            for (i, mapping) in config.claim_to_headers.iter().enumerate() {
                let value = claim_value(claims, &mapping.claim);
                let Some(value) = value.as_deref() else {
                    continue;
                };
                if !usable(value) {
                    // A claim with control characters cannot be a header value; leave it out.
                    host.log(
                        Level::Warn,
                        &format!("claim {} not forwarded: control characters", mapping.claim),
                    );
                    continue;
                }
                // An earlier mapping to the same header already wrote it: replace, as before.
                let written = config
                    .claim_to_headers
                    .iter()
                    .take(i)
                    .any(|earlier| earlier.header == mapping.header);
                let done = if written || self.sent.contains(&mapping.header.as_str()) {
                    host.set_request_header(&mapping.header, value)
                } else {
                    host.add_request_header(&mapping.header, value)
                };
                if !done {
                    return Err(mapping.header.clone());
                }
                edited = true;
            }
        }
        for name in self.strip {
            if !host.remove_request_header(&name) {
                return Err(name);
            }
            edited = true;
        }
        for name in self.token.header.iter().chain(&self.token.other_headers) {
            if !host.remove_request_header(name) {
                return Err((*name).to_string());
            }
            edited = true;
        }
        let done = match self.token.cookie {
            CookieEdit::Unchanged => return Ok(edited),
            CookieEdit::Set(rest) => host.set_request_header("cookie", &rest),
            CookieEdit::Remove => host.remove_request_header("cookie"),
        };
        if done {
            Ok(true)
        } else {
            Err("cookie".into())
        }
    }
}

/// On the header map read once: picks the rule, applies the CSRF rule and decides — the part
/// of the glue that reads headers. Host calls here only read (the clock, a log line).
fn decide_request<'c>(
    headers: &[Header<'_>],
    host: &impl Host,
    config: &'c Config,
    state: &mut impl KeyState,
    stats: &impl Stats,
) -> Next<'c> {
    let method = headers::first(headers, ":method");
    // No `:path` (a CONNECT, where a route allows one): no rule can be judged for it, so it is
    // refused rather than taken for `/`, which is often public.
    let path = headers::first(headers, ":path");
    // The path is checked and cut from its query once; the rule and the edge settings come
    // from one lookup per reading.
    let rule = path
        .ok_or(path::PathError::Missing)
        .and_then(path::CheckedPath::new)
        .and_then(|checked| checked.rule_and_edge(|p, lax| config.rule_and_edge_for_as(p, lax)));
    let ((require, scopes), edge) = match rule {
        Ok(rule) => rule,
        Err(err) => {
            return Next::Deny(Denial {
                status: 400,
                error: "invalid_request",
                description: err.to_string(),
                reason: "bad_path",
                scope: None,
            })
        }
    };
    if require == Require::None {
        return Next::Forward(Edits::strip_only(config, headers), Judged::Not);
    }
    // Checked above: there is one.
    let path = path.unwrap_or_default();
    let extracted = verify::extract_token(&config.token_sources, headers, path);
    // A CORS preflight (`cors_preflight`) goes through unauthenticated — a browser never sends
    // credentials with one — but only a credential-less one on a path judged like any other: a
    // crafted "preflight" carrying a token is judged as a request (its token is not forwarded
    // unchecked), one with an unsafe path is refused above. A token in the query is the one
    // exception: the preflight goes to the request's URL, query included.
    let credential_less = || match &extracted {
        Extracted::Missing => true,
        Extracted::Found { source, .. } => {
            matches!(
                config.token_sources.get(*source),
                Some(TokenSource::Query(_))
            )
        }
        Extracted::Ambiguous => false,
    };
    // Cheapest first: every request passes here, and nearly none is a preflight.
    if config.cors_preflight
        && method == Some("OPTIONS")
        && credential_less()
        && headers::first(headers, "origin").is_some()
        && headers::first(headers, "access-control-request-method").is_some()
    {
        return Next::Forward(Edits::strip_only(config, headers), Judged::Not);
    }
    if csrf::applies(edge.csrf, &config.token_sources, &extracted, method, || {
        headers::has(headers, "upgrade")
    }) {
        if let Err(denial) = csrf::check(
            headers::first(headers, "sec-fetch-site"),
            headers::first(headers, "origin"),
            &config.csrf_allowed_origins,
        ) {
            return Next::Deny(denial);
        }
    }
    let now = host.now();
    let outcome = state.judge(&extracted, require, &scopes, now);
    match outcome.cache {
        CacheUse::Hit => stats.cache_hit(),
        CacheUse::Miss => stats.cache_miss(),
        CacheUse::NotUsed => {}
    }
    if outcome.stale_allowed {
        stats.count("revocation_stale_allowed");
        let mode = config.revocation.as_ref().map(|feed| feed.stale_mode);
        if mode == Some(StaleMode::Allow) {
            host.log(
                Level::Debug,
                "revocation list stale: request allowed (stale_mode=allow)",
            );
        }
    }
    if outcome.unknown_key {
        state.want_jwks_refetch(now);
    }
    match outcome.decision {
        Decision::Allow { claims } => {
            let token = if edge.forward_authorization {
                TokenEdit::KEEP
            } else {
                token_edit(config, &extracted, headers)
            };
            Next::Forward(allow_edits(config, claims, headers, token), Judged::Allowed)
        }
        Decision::Anonymous => Next::Forward(Edits::strip_only(config, headers), Judged::Anonymous),
        Decision::Deny(denial) => Next::Deny(denial),
    }
}

/// The edits of an allowed request: the identity headers set from `claims`; every other
/// identity header the client sent removed.
fn allow_edits<'c>(
    config: &'c Config,
    claims: Rc<Claims>,
    headers: &[Header<'_>],
    token: TokenEdit<'c>,
) -> Edits<'c> {
    let mut strip = Vec::new();
    let mut sent = Vec::new();
    // Usually the client sent none: no allocation, and every identity header is added.
    for name in identity_sent(config, headers) {
        let set = config.claim_to_headers.iter().find(|mapping| {
            mapping.header == name
                && claim_value(&claims, &mapping.claim).is_some_and(|value| usable(&value))
        });
        match set {
            // The filter sets it, which replaces the client's copies.
            Some(mapping) => sent.push(mapping.header.as_str()),
            None => strip.push(name.to_owned()),
        }
    }
    Edits {
        claims: Some(claims),
        strip,
        sent,
        token,
    }
}

/// How the token leaves the request (`forward_authorization` false): its header removed, and
/// every other token the request carries for a header or cookie source — a browser sends the
/// cookie along with a script's `Authorization`, and whichever source wins, the other's token
/// must not go upstream: every token cookie is taken out of `Cookie`, and another header
/// source's header is removed when its value carries that source's prefix (a header without
/// it, `Authorization: Basic …` under a `Bearer ` source, is no token and stays). A query
/// token stays in `:path` (rewriting the path is not this filter's job).
fn token_edit<'c>(
    config: &'c Config,
    extracted: &Extracted<'_>,
    headers: &[Header<'_>],
) -> TokenEdit<'c> {
    let Extracted::Found { source, .. } = extracted else {
        return TokenEdit::KEEP;
    };
    let header = match config.token_sources.get(*source) {
        Some(TokenSource::Header { name, .. }) => Some(name.as_str()),
        _ => None,
    };
    let mut other_headers = Vec::new();
    for (index, token_source) in config.token_sources.iter().enumerate() {
        if let TokenSource::Header { name, prefix } = token_source {
            if index != *source
                && Some(name.as_str()) != header
                && !other_headers.contains(&name.as_str())
                && headers.iter().any(|header| {
                    header.name().eq_ignore_ascii_case(name)
                        && verify::carries_token(header.value(), prefix)
                })
            {
                other_headers.push(name.as_str());
            }
        }
    }
    let cookie = if config.cookie_source() {
        headers::cookie_without(headers, |name| {
            config
                .token_sources
                .iter()
                .any(|source| matches!(source, TokenSource::Cookie(cookie) if cookie == name))
        })
    } else {
        CookieEdit::Unchanged
    };
    TokenEdit {
        header,
        other_headers,
        cookie,
    }
}

/// The identity headers the client sent ([`headers::identity_to_remove`] with nothing set):
/// every header under the prefix and every configured one, each name once.
fn identity_sent<'h>(config: &Config, headers: &'h [Header<'_>]) -> Vec<&'h str> {
    headers::identity_to_remove(
        headers,
        &config.identity_header_prefix,
        &config.claim_to_headers,
        &[],
    )
}

fn owned(names: Vec<&str>) -> Vec<String> {
    names.into_iter().map(str::to_owned).collect()
}

/// Whether a claim's value can be a header value (no control characters).
fn usable(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

/// Runs `hook` (the request glue) so that a panic in it never leaves the hook: the panic is
/// caught, logged, and the request answered 503 `temporarily_unavailable` (fail closed). The
/// native build wraps every request with it (a panic unwinding into Envoy's C++ is undefined
/// behaviour); the wasm build is compiled with `panic = "abort"`, where the VM's trap does the
/// same job.
pub fn fail_closed<H: Host, S: Stats>(
    host: &mut H,
    stats: &S,
    hook: impl FnOnce(&mut H) -> Flow,
) -> Flow {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(host)));
    match outcome {
        Ok(flow) => flow,
        Err(_) => {
            host.log(Level::Error, "the request hook panicked; answering 503");
            // The reply itself is guarded too: nothing may unwind out of here.
            let replied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                deny(host, stats, &unavailable())
            }));
            replied.unwrap_or(Flow::Stop)
        }
    }
}

/// Answers locally with the denial's status, challenge and JSON body.
pub fn deny(host: &mut impl Host, stats: &impl Stats, denial: &Denial) -> Flow {
    stats.denied(denial.reason);
    host.log(
        Level::Debug,
        &format!("denied {}: {}", denial.status, denial.reason),
    );
    let body = denial.body();
    let challenge = denial.www_authenticate();
    let mut reply = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    if let Some(challenge) = challenge.as_deref() {
        reply.push(("www-authenticate", challenge));
    }
    if denial.status == 503 {
        reply.push(("retry-after", "1"));
    }
    host.send_local_reply(denial.status, &reply, body.as_bytes());
    Flow::Stop
}

/// Whether a request's `content-type` makes it gRPC, as Envoy decides it
/// (`Grpc::Common::hasGrpcContentType`): `application/grpc`, alone or followed by `+` or `;`.
pub fn is_grpc(content_type: &str) -> bool {
    content_type
        .strip_prefix("application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
}

/// The gRPC status Envoy gives a local reply of HTTP status `http` to a gRPC request
/// (`Grpc::Utility::httpToGrpcStatus`). The native build sets it itself: Envoy's
/// dynamic-module ABI passes a literal 0 (OK) for it, which a gRPC client reads as success.
pub fn grpc_status(http: u16) -> &'static str {
    match http {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502..=504 => "14",
        _ => "2",
    }
}

/// A claim's value for a header, borrowed when the claim is a string. An empty value counts
/// as absent — no header, and the client's copy removed — in both builds: Envoy's
/// dynamic-module ABI cannot add a header with an empty value (and setting one removes it),
/// so the wasm build does not send one either.
fn claim_value<'c>(claims: &'c Claims, name: &str) -> Option<Cow<'c, str>> {
    claim_text(claims, name).filter(|value| !value.is_empty())
}

fn claim_text<'c>(claims: &'c Claims, name: &str) -> Option<Cow<'c, str>> {
    let borrowed = match name {
        "sub" => Some(claims.sub.as_str()),
        "sid" => Some(claims.sid.as_str()),
        "openid" => Some(claims.openid.as_str()),
        "appid" => Some(claims.appid.as_str()),
        "jti" => Some(claims.jti.as_str()),
        "iss" => Some(claims.iss.as_str()),
        "unionid" => return claims.unionid.as_deref().map(Cow::Borrowed),
        "scope" => return claims.scope.as_deref().map(Cow::Borrowed),
        _ => None,
    };
    match borrowed {
        Some(value) => Some(Cow::Borrowed(value)),
        None => claims.get(name).map(Cow::Owned),
    }
}

#[cfg(test)]
mod tests {
    //! The glue against a mock host (what a proxy would do with the same calls).
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use weauth_token::revocation::{Entry, EntryKind, FeedResponse};
    use weauth_token::{Algorithm, Audience, Jwks, SigningKey};

    use super::*;
    use crate::host::Level;

    const NOW_MS: u64 = 1_700_000_000_000;
    const NOW: i64 = 1_700_000_000;

    /// A local reply: status, headers, body.
    type Reply = (u16, Vec<(String, String)>, String);

    #[derive(Default)]
    struct MockHost {
        headers: Vec<(String, String)>,
        /// Every header written, set or added, in order.
        set: Vec<(String, String)>,
        /// The names of those written with an add (the request did not carry them).
        added: Vec<String>,
        removed: Vec<String>,
        reply: Option<Reply>,
        logs: RefCell<Vec<(Level, String)>>,
        header_reads: std::cell::Cell<usize>,
        /// Edits made since the last `headers_edited`, and how often it was called.
        unsignalled_edits: usize,
        edits_signalled: usize,
        /// A header whose every edit the host refuses (as Envoy without a header map).
        refused: Option<&'static str>,
    }

    impl MockHost {
        fn with(headers: &[(&str, &str)]) -> MockHost {
            MockHost {
                headers: headers
                    .iter()
                    .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                    .collect(),
                ..MockHost::default()
            }
        }

        fn set_value(&self, name: &str) -> Option<&str> {
            self.set
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        fn reply_header(&self, name: &str) -> Option<&str> {
            self.reply.as_ref().and_then(|(_, headers, _)| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            })
        }
    }

    impl Host for MockHost {
        fn now(&self) -> Now {
            Now::wall(NOW_MS)
        }
        fn log(&self, level: Level, message: &str) {
            self.logs.borrow_mut().push((level, message.to_string()));
        }
        fn with_request_headers<R>(&self, read: impl FnOnce(&[Header<'_>]) -> R) -> R {
            self.header_reads.set(self.header_reads.get() + 1);
            let headers: Vec<Header<'_>> = self
                .headers
                .iter()
                .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str())))
                .collect();
            read(&headers)
        }
        fn set_request_header(&mut self, name: &str, value: &str) -> bool {
            if self.refused == Some(name) {
                return false;
            }
            self.set.push((name.to_string(), value.to_string()));
            self.unsignalled_edits += 1;
            true
        }
        fn add_request_header(&mut self, name: &str, value: &str) -> bool {
            assert!(
                !self.headers.iter().any(|(n, _)| n == name),
                "added {name}, which the request carries"
            );
            if self.refused == Some(name) {
                return false;
            }
            self.set.push((name.to_string(), value.to_string()));
            self.added.push(name.to_string());
            self.unsignalled_edits += 1;
            true
        }
        fn remove_request_header(&mut self, name: &str) -> bool {
            if self.refused == Some(name) {
                return false;
            }
            self.removed.push(name.to_string());
            self.unsignalled_edits += 1;
            true
        }
        fn headers_edited(&mut self) {
            assert!(self.unsignalled_edits > 0, "headers_edited with no edit");
            self.unsignalled_edits = 0;
            self.edits_signalled += 1;
        }
        fn send_local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
            let headers = headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect();
            self.reply = Some((status, headers, String::from_utf8_lossy(body).into_owned()));
        }
    }

    #[derive(Default)]
    struct MockStats(RefCell<BTreeMap<String, u64>>);

    impl MockStats {
        fn get(&self, name: &str) -> u64 {
            self.0.borrow().get(name).copied().unwrap_or(0)
        }
        fn bump(&self, name: &str) {
            *self.0.borrow_mut().entry(name.to_string()).or_default() += 1;
        }
    }

    impl Stats for MockStats {
        fn allowed(&self) {
            self.bump("allowed");
        }
        fn anonymous(&self) {
            self.bump("anonymous");
        }
        fn cache_hit(&self) {
            self.bump("cache_hit");
        }
        fn cache_miss(&self) {
            self.bump("cache_miss");
        }
        fn denied(&self, reason: &'static str) {
            self.bump(&format!("denied.{reason}"));
        }
        fn count(&self, name: &'static str) {
            self.bump(name);
        }
    }

    struct MockState<'c> {
        config: &'c Config,
        keys: Option<KeySet>,
        revoked: Option<RevocationSet>,
        cache: TokenCache,
        refetch_asked: Vec<u64>,
    }

    impl<'c> MockState<'c> {
        fn new(config: &'c Config) -> MockState<'c> {
            MockState {
                config,
                keys: Some(keys()),
                revoked: None,
                cache: TokenCache::new(16),
                refetch_asked: Vec::new(),
            }
        }
    }

    impl KeyState for MockState<'_> {
        fn judge(
            &mut self,
            extracted: &Extracted<'_>,
            require: Require,
            scopes: &[String],
            now: Now,
        ) -> Verdict {
            let revocation = self.revoked.as_ref().map(|set| Loaded {
                set,
                generation: 1,
                last_ok_ms: now.mono_ms,
            });
            judge(
                self.config,
                self.keys.as_ref(),
                1,
                revocation,
                &mut self.cache,
                extracted,
                require,
                scopes,
                now,
            )
        }
        fn want_jwks_refetch(&mut self, now: Now) {
            self.refetch_asked.push(now.mono_ms);
        }
    }

    fn signing_key() -> SigningKey {
        SigningKey::from_seed(Algorithm::EdDSA, &[7u8; 32]).unwrap()
    }

    fn keys() -> KeySet {
        KeySet::from_jwks(&Jwks {
            keys: vec![signing_key().jwk()],
        })
        .0
    }

    fn config(extra: serde_json::Value) -> Config {
        let jwks = serde_json::to_value(Jwks {
            keys: vec![signing_key().jwk()],
        })
        .unwrap();
        let mut value = serde_json::json!({
            "issuer": "https://issuer",
            "audiences": ["weauth"],
            "jwks": {"inline": jwks},
        });
        if let (Some(obj), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        Config::parse(value.to_string().as_bytes()).unwrap()
    }

    fn token() -> String {
        token_of(&claims())
    }

    fn token_of(claims: &Claims) -> String {
        weauth_token::sign(claims, &signing_key()).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            iss: "https://issuer".into(),
            aud: Audience::One("weauth".into()),
            sub: "u1".into(),
            sid: "s1".into(),
            jti: "j1".into(),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 900,
            openid: "o1".into(),
            unionid: None,
            appid: "wx".into(),
            scope: Some("read".into()),
        }
    }

    fn run(config: &Config, host: &mut MockHost, stats: &MockStats) -> Flow {
        let mut state = MockState::new(config);
        on_request_headers(host, config, &mut state, stats)
    }

    #[test]
    fn fail_closed_panic_in_the_hook_answers_503_and_does_not_unwind() {
        let mut host = MockHost::with(&[(":method", "GET"), (":path", "/api/me")]);
        let stats = MockStats::default();
        let flow = fail_closed(&mut host, &stats, |host| {
            // Partway through a request: a header was already set when the bug struck.
            host.set_request_header("x-weauth-sub", "u1");
            panic!("a bug in the request glue");
        });
        assert_eq!(flow, Flow::Stop);
        let (status, _, body) = host.reply.clone().unwrap();
        assert_eq!(status, 503);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        assert_eq!(host.reply_header("retry-after"), Some("1"));
        assert_eq!(stats.get("denied.internal"), 1);
        assert_eq!(stats.get("denied.jwks_unavailable"), 0, "not a keys outage");
        assert!(host
            .logs
            .borrow()
            .iter()
            .any(|(level, line)| *level == Level::Error && line.contains("panicked")));
    }

    #[test]
    fn fail_closed_passes_the_hooks_flow_through() {
        let config = config(serde_json::json!({}));
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
        ]);
        let stats = MockStats::default();
        let flow = fail_closed(&mut host, &stats, |host| run(&config, host, &stats));
        assert_eq!(flow, Flow::Continue);
        assert!(host.reply.is_none());
    }

    #[test]
    fn on_request_headers_valid_bearer_sets_identity_and_removes_token() {
        let config = config(serde_json::json!({}));
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert_eq!(host.set_value("x-weauth-sub"), Some("u1"));
        assert_eq!(host.set_value("x-weauth-openid"), Some("o1"));
        assert!(host.removed.contains(&"authorization".to_string()));
        assert!(host.reply.is_none());
        assert_eq!(stats.get("allowed"), 1);
        assert_eq!(stats.get("cache_miss"), 1);
        assert_eq!(host.header_reads.get(), 1, "the header map is read once");
        assert_eq!(host.edits_signalled, 1, "the route is matched again once");
        assert_eq!(host.unsignalled_edits, 0, "after the last edit");
    }

    #[test]
    fn on_request_headers_clean_request_identity_headers_added_not_set() {
        let config = config(serde_json::json!({}));
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        // The request carries none of them: each is added (the mock refuses an add of a
        // header the request carries).
        assert_eq!(
            host.added,
            [
                "x-weauth-sub",
                "x-weauth-openid",
                "x-weauth-appid",
                "x-weauth-sid",
                "x-weauth-scope"
            ]
        );
        assert_eq!(host.removed, ["authorization"]);
    }

    #[test]
    fn on_request_headers_forged_identity_header_replaced_by_a_set() {
        let config = config(serde_json::json!({
            "claim_to_headers": [{"claim": "sub", "header": "x-user"},
                                 {"claim": "unionid", "header": "x-weauth-unionid"}]
        }));
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
            ("x-user", "admin"),
            ("x-weauth-unionid", "forged"),
            ("x-weauth-role", "admin"),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert_eq!(host.set, [("x-user".to_string(), "u1".to_string())]);
        assert!(
            host.added.is_empty(),
            "x-user is set over the client's copy"
        );
        // The token has no unionid: the client's copy goes, as does the unconfigured one.
        assert_eq!(
            host.removed,
            ["x-weauth-unionid", "x-weauth-role", "authorization"]
        );
    }

    #[test]
    fn on_request_headers_empty_claim_forwarded_as_absent() {
        let config = config(serde_json::json!({
            "claim_to_headers": [{"claim": "sub", "header": "x-weauth-sub"},
                                 {"claim": "unionid", "header": "x-weauth-unionid"},
                                 {"claim": "scope", "header": "x-weauth-scope"}]
        }));
        let claims = Claims {
            unionid: Some(String::new()),
            scope: Some(String::new()),
            ..claims()
        };
        let bearer = format!("Bearer {}", token_of(&claims));
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
            ("x-weauth-unionid", "forged"),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        // Neither empty claim is written (natively an empty add is refused and an empty set
        // removes); the client's copy of one goes.
        assert_eq!(host.set, [("x-weauth-sub".to_string(), "u1".to_string())]);
        assert_eq!(host.removed, ["x-weauth-unionid", "authorization"]);
    }

    /// A claim with a control character cannot be a header value: not written, and the
    /// client's copy of the header goes all the same; the request goes on.
    #[test]
    fn on_request_headers_claim_with_a_control_character_not_written() {
        let config = config(serde_json::json!({
            "claim_to_headers": [{"claim": "sub", "header": "x-weauth-sub"},
                                 {"claim": "openid", "header": "x-weauth-openid"}]
        }));
        let claims = Claims {
            sub: "u\u{1}1".into(),
            ..claims()
        };
        let bearer = format!("Bearer {}", token_of(&claims));
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
            ("x-weauth-sub", "forged"),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert_eq!(
            host.set,
            [("x-weauth-openid".to_string(), "o1".to_string())]
        );
        assert_eq!(host.removed, ["x-weauth-sub", "authorization"]);
    }

    #[test]
    fn on_request_headers_two_claims_one_header_second_replaces_first() {
        let config = config(serde_json::json!({
            "claim_to_headers": [{"claim": "sub", "header": "x-id"},
                                 {"claim": "openid", "header": "x-id"}]
        }));
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert_eq!(host.added, ["x-id"]);
        assert_eq!(
            host.set,
            [
                ("x-id".to_string(), "u1".to_string()),
                ("x-id".to_string(), "o1".to_string())
            ]
        );
    }

    #[test]
    fn on_request_headers_second_request_hits_cache() {
        let config = config(serde_json::json!({}));
        let bearer = format!("Bearer {}", token());
        let stats = MockStats::default();
        let mut state = MockState::new(&config);
        for _ in 0..2 {
            let mut host = MockHost::with(&[
                (":method", "GET"),
                (":path", "/api/me"),
                ("authorization", &bearer),
            ]);
            on_request_headers(&mut host, &config, &mut state, &stats);
        }
        assert_eq!(stats.get("cache_miss"), 1);
        assert_eq!(stats.get("cache_hit"), 1);
        assert_eq!(stats.get("allowed"), 2);
    }

    #[test]
    fn on_request_headers_missing_token_401_with_challenge() {
        let config = config(serde_json::json!({}));
        let mut host = MockHost::with(&[(":method", "GET"), (":path", "/api/me")]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Stop);
        let (status, _, body) = host.reply.clone().unwrap();
        assert_eq!(status, 401);
        assert!(body.contains("\"error\""), "{body}");
        assert!(host
            .reply_header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        assert_eq!(host.reply_header("cache-control"), Some("no-store"));
        assert_eq!(stats.get("denied.missing"), 1);
    }

    #[test]
    fn on_request_headers_forged_identity_header_removed_on_public_path() {
        let config = config(serde_json::json!({
            "rules": [{"prefix": "/public/", "require": "none"}]
        }));
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/public/x"),
            ("x-weauth-sub", "admin"),
            ("x-weauth-other", "1"),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert!(host.removed.contains(&"x-weauth-sub".to_string()));
        assert!(host.removed.contains(&"x-weauth-other".to_string()));
        assert!(host.set.is_empty());
        assert_eq!((host.edits_signalled, host.unsignalled_edits), (1, 0));
    }

    /// An edit the host refuses — a client's identity header, the token, an identity header
    /// to set — refuses the request (503, counted as the filter's own fault and not as
    /// allowed), for forwarded unedited it would carry a spoofed identity or the token
    /// upstream.
    #[test]
    fn on_request_headers_an_edit_the_host_refuses_is_a_503_not_a_forward() {
        let public = config(serde_json::json!({
            "rules": [{"prefix": "/public/", "require": "none"}]
        }));
        let protected = config(serde_json::json!({}));
        let bearer = format!("Bearer {}", token());
        type Case<'a> = (&'a Config, &'a [(&'a str, &'a str)], &'static str);
        let cases: [Case<'_>; 4] = [
            (
                &public,
                &[
                    (":method", "GET"),
                    (":path", "/public/x"),
                    ("x-weauth-sub", "admin"),
                ],
                "x-weauth-sub",
            ),
            (
                &protected,
                &[
                    (":method", "GET"),
                    (":path", "/api/me"),
                    ("authorization", &bearer),
                ],
                "authorization",
            ),
            (
                &protected,
                &[
                    (":method", "GET"),
                    (":path", "/api/me"),
                    ("authorization", &bearer),
                ],
                "x-weauth-openid",
            ),
            (
                &protected,
                &[
                    (":method", "GET"),
                    (":path", "/api/me"),
                    ("authorization", &bearer),
                    ("x-weauth-sub", "admin"),
                ],
                "x-weauth-sub",
            ),
        ];
        for (config, headers, refused) in cases {
            let mut host = MockHost::with(headers);
            host.refused = Some(refused);
            let stats = MockStats::default();
            assert_eq!(run(config, &mut host, &stats), Flow::Stop, "{refused}");
            assert_eq!(host.reply.as_ref().map(|r| r.0), Some(503), "{refused}");
            assert_eq!(stats.get("denied.internal"), 1, "{refused}");
            // A denial only: not also counted as the allowed request it was about to be.
            assert_eq!(stats.get("allowed"), 0, "{refused}");
            assert_eq!(host.edits_signalled, 0, "{refused}");
            assert!(
                host.logs
                    .borrow()
                    .iter()
                    .any(|(level, line)| *level == Level::Error && line.contains(refused)),
                "{refused}: {:?}",
                host.logs.borrow()
            );
        }
    }

    #[test]
    fn on_request_headers_nothing_edited_route_left_alone() {
        let config = config(serde_json::json!({
            "rules": [{"prefix": "/public/", "require": "none"}]
        }));
        let mut host = MockHost::with(&[(":method", "GET"), (":path", "/public/x")]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert!(host.set.is_empty() && host.removed.is_empty());
        assert_eq!(host.edits_signalled, 0);
    }

    #[test]
    fn on_request_headers_optional_without_token_anonymous_and_stripped() {
        let config = config(serde_json::json!({"default_require": "optional"}));
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/feed"),
            ("x-weauth-sub", "admin"),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert_eq!(host.removed, vec!["x-weauth-sub".to_string()]);
        assert_eq!(stats.get("anonymous"), 1);
    }

    /// `cors_preflight`: a credential-less preflight goes through; one carrying a token is
    /// judged as a request (a bad token refused, not forwarded), one on an unsafe path refused.
    #[test]
    fn on_request_headers_cors_preflight_only_without_a_token_and_on_a_safe_path() {
        let config = config(serde_json::json!({"cors_preflight": true}));
        let preflight = |path: &'static str, extra: &[(&'static str, &'static str)]| {
            let mut headers = vec![
                (":method", "OPTIONS"),
                (":path", path),
                ("origin", "https://app.example"),
                ("access-control-request-method", "DELETE"),
            ];
            headers.extend_from_slice(extra);
            MockHost::with(&headers)
        };
        let stats = MockStats::default();
        let mut host = preflight("/api/admin/x", &[]);
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert!(host.reply.is_none());

        let mut host = preflight("/api/admin/x", &[("authorization", "Bearer forged")]);
        assert_eq!(run(&config, &mut host, &stats), Flow::Stop);
        assert_eq!(host.reply.as_ref().map(|r| r.0), Some(401));

        let mut host = preflight("/api/a%2fb", &[]);
        assert_eq!(run(&config, &mut host, &stats), Flow::Stop);
        assert_eq!(host.reply.as_ref().map(|r| r.0), Some(400));

        // A token in the query travels with the preflight (it goes to the request's URL): not
        // a credential of the preflight's.
        let config = config_with_query_source();
        let mut host = preflight("/api/admin/x?access_token=expired", &[]);
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert!(host.reply.is_none());
    }

    fn config_with_query_source() -> Config {
        config(serde_json::json!({
            "cors_preflight": true,
            "token_sources": [{"header": "authorization", "prefix": "Bearer "},
                              {"query": "access_token"}]
        }))
    }

    #[test]
    fn on_request_headers_unsafe_path_400() {
        let config = config(serde_json::json!({}));
        let mut host = MockHost::with(&[(":method", "GET"), (":path", "/api/a%2fb")]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Stop);
        assert_eq!(host.reply.as_ref().map(|r| r.0), Some(400));
        assert_eq!(stats.get("denied.bad_path"), 1);
        assert_eq!(host.edits_signalled, 0, "a refused request is not routed");
    }

    #[test]
    fn on_request_headers_no_path_400_even_where_slash_is_public() {
        // A CONNECT carries no `:path`; it is not judged as `/`, public here.
        let config = config(serde_json::json!({
            "rules": [{"exact": "/", "require": "none"}]
        }));
        let mut host = MockHost::with(&[(":method", "CONNECT"), (":authority", "db:5432")]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Stop);
        let (status, _, body) = host.reply.clone().unwrap();
        assert_eq!(status, 400);
        assert!(body.contains("the request has no path"), "{body}");
        assert_eq!(stats.get("denied.bad_path"), 1);
    }

    #[test]
    fn on_request_headers_cookie_cross_site_post_403_before_verification() {
        let config = config(serde_json::json!({
            "token_sources": [{"cookie": "weauth_at"}],
            "csrf_allowed_origins": ["https://h5.example.com"]
        }));
        let cookie = format!("weauth_at={}", token());
        let mut host = MockHost::with(&[
            (":method", "POST"),
            (":path", "/api/pay"),
            ("cookie", &cookie),
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Stop);
        assert_eq!(host.reply.as_ref().map(|r| r.0), Some(403));
        assert_eq!(stats.get("denied.csrf"), 1);
        assert_eq!(stats.get("cache_miss"), 0, "refused before verification");
    }

    #[test]
    fn on_request_headers_cookie_websocket_handshake_from_a_sibling_site_403() {
        let config = config(serde_json::json!({"token_sources": [{"cookie": "weauth_at"}]}));
        let cookie = format!("weauth_at={}", token());
        let handshake = |site: &'static str| {
            let mut host = MockHost::with(&[
                (":method", "GET"),
                (":path", "/api/ws"),
                ("cookie", &cookie),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-fetch-site", site),
                ("origin", "https://forum.example.com"),
            ]);
            let stats = MockStats::default();
            let flow = run(&config, &mut host, &stats);
            (
                flow,
                host.reply.as_ref().map(|r| r.0),
                stats.get("denied.csrf"),
            )
        };
        assert_eq!(handshake("same-site"), (Flow::Stop, Some(403), 1));
        // The app's own page opening its socket passes.
        assert_eq!(handshake("same-origin"), (Flow::Continue, None, 0));
    }

    #[test]
    fn grpc_content_types_and_statuses_as_envoy_maps_them() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=1",
        ] {
            assert!(is_grpc(grpc), "{grpc}");
        }
        for other in [
            "application/grpcx",
            "application/json",
            "application/grpc-web",
            "",
        ] {
            assert!(!is_grpc(other), "{other}");
        }
        let statuses: Vec<_> = [400, 401, 403, 404, 429, 502, 503, 504, 500]
            .into_iter()
            .map(grpc_status)
            .collect();
        assert_eq!(
            statuses,
            ["13", "16", "7", "12", "14", "14", "14", "14", "2"]
        );
    }

    #[test]
    fn on_request_headers_header_token_wins_and_the_cookie_token_is_not_forwarded_either() {
        let config = config(serde_json::json!({"token_sources": [
            {"header": "authorization", "prefix": "Bearer "}, {"cookie": "weauth_at"}
        ]}));
        let bearer = format!("Bearer {}", token());
        let cookie = format!("a=1; weauth_at={}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
            ("cookie", &cookie),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert!(host.removed.contains(&"authorization".to_string()));
        assert_eq!(host.set_value("cookie"), Some("a=1"));
    }

    #[test]
    fn on_request_headers_cookie_token_wins_and_the_header_token_is_not_forwarded_either() {
        // Found by the filter_glue fuzz target: with the cookie first, a token in
        // `Authorization` went upstream although the rule does not forward tokens.
        let config = config(serde_json::json!({"token_sources": [
            {"cookie": "weauth_at"}, {"header": "authorization", "prefix": "Bearer "},
            {"header": "x-token", "prefix": ""}
        ]}));
        let bearer = format!("bearer {}", token());
        let cookie = format!("weauth_at={}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("cookie", &cookie),
            ("authorization", &bearer),
            ("x-token", "anything"),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert!(host.removed.contains(&"authorization".to_string()));
        assert!(host.removed.contains(&"x-token".to_string()));
        assert!(host.removed.contains(&"cookie".to_string()));
        // Another scheme under the same header is no token of the source: it stays.
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("cookie", &cookie),
            ("authorization", "Basic dXNlcjpwYXNz"),
        ]);
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert!(!host.removed.contains(&"authorization".to_string()));
    }

    #[test]
    fn on_request_headers_cookie_token_removed_other_cookies_kept() {
        let config = config(serde_json::json!({"token_sources": [{"cookie": "weauth_at"}]}));
        let cookie = format!("a=1; weauth_at={}; b=2", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("cookie", &cookie),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert_eq!(host.set_value("cookie"), Some("a=1; b=2"));
    }

    #[test]
    fn on_request_headers_forward_authorization_rule_keeps_token() {
        let config = config(serde_json::json!({
            "rules": [{"prefix": "/v1/", "require": "required", "forward_authorization": true}]
        }));
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/v1/x"),
            ("authorization", &bearer),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Continue);
        assert!(!host.removed.contains(&"authorization".to_string()));
    }

    #[test]
    fn on_request_headers_revoked_jti_401_revoked() {
        let config = config(serde_json::json!({
            "revocation": {"cluster": "issuer", "credential": "c"}
        }));
        let mut set = RevocationSet::default();
        set.apply(
            &FeedResponse {
                seq: 1,
                full: true,
                now: NOW,
                entries: vec![Entry {
                    seq: 1,
                    kind: EntryKind::Jti,
                    value: "j1".into(),
                    issued_before: None,
                    until: NOW + 900,
                }],
            },
            NOW,
        )
        .unwrap();
        let mut state = MockState::new(&config);
        state.revoked = Some(set);
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
        ]);
        let stats = MockStats::default();
        let flow = on_request_headers(&mut host, &config, &mut state, &stats);
        assert_eq!(flow, Flow::Stop);
        assert_eq!(host.reply.as_ref().map(|r| r.0), Some(401));
        assert_eq!(stats.get("denied.revoked_jti"), 1);
    }

    /// The set's age is reckoned on the fetcher's clock and the token's times on the wall
    /// clock: a forward step of the wall clock (NTP at boot, `date -s`) does not make a set the
    /// feed answered a second ago stale (`stale_mode: deny` would refuse every request), and a
    /// backward one does not keep an old set fresh; the token still expires by the wall clock.
    #[test]
    fn judge_set_age_on_the_fetchers_clock_token_times_on_the_wall_clock() {
        let config = config(serde_json::json!({
            "revocation": {"cluster": "issuer", "credential": "c", "stale_mode": "deny",
                           "stale_after_seconds": 60}
        }));
        let keys = keys();
        let set = RevocationSet::default();
        // The feed answered at 5 s on the fetcher's clock, at NOW_MS on the wall clock.
        let loaded = Loaded {
            set: &set,
            generation: 1,
            last_ok_ms: 5_000,
        };
        let token = token();
        let extracted = Extracted::Found {
            token: &token,
            source: 0,
        };
        let judge_at = |unix_ms: u64, mono_ms: u64| {
            let now = Now { unix_ms, mono_ms };
            let verdict = judge(
                &config,
                Some(&keys),
                1,
                Some(loaded),
                &mut TokenCache::new(0),
                &extracted,
                Require::Required,
                &[],
                now,
            );
            match verdict.decision {
                Decision::Allow { .. } => "allow",
                Decision::Deny(denial) => denial.reason,
                Decision::Anonymous => "anonymous",
            }
        };
        assert_eq!(judge_at(NOW_MS + 1_000, 6_000), "allow");
        // Exactly `stale_after_seconds` old: not stale yet.
        assert_eq!(judge_at(NOW_MS + 1_000, 65_000), "allow");
        // The wall clock stepped an hour forward a second later: the set is a second old, and
        // the token (valid 900 s) has expired by the wall clock.
        assert_eq!(judge_at(NOW_MS + 3_601_000, 6_000), "expired");
        // Stepped back ten minutes instead: the token is not yet valid (`nbf`, beyond the 60 s
        // skew), the set still a second old.
        assert_eq!(judge_at(NOW_MS - 599_000, 6_000), "not_yet_valid");
        // The feed unreached for 61 s by the fetcher's clock: stale, though the wall clock
        // stepped 50 s back meanwhile (the token still valid, within the skew).
        assert_eq!(judge_at(NOW_MS - 50_000, 66_001), "revocation_stale");
        assert_eq!(judge_at(NOW_MS + 61_000, 66_001), "revocation_stale");
    }

    /// The wasm build's request reading ([`crate::host::WasmClock::request`]) after the wall
    /// clock stepped an hour forward since the VM's last tick (it booted an hour behind; NTP
    /// set it right): the set's age is its age at that tick plus at most the lead cap, not an
    /// hour — no 503 for every protected request until the next tick — while the token is
    /// judged by the corrected wall clock.
    #[test]
    fn judge_a_wasm_requests_reading_after_a_forward_step_keeps_the_set_fresh() {
        let config = config(serde_json::json!({
            "revocation": {"cluster": "issuer", "credential": "c", "stale_mode": "deny",
                           "stale_after_seconds": 60}
        }));
        let keys = keys();
        let set = RevocationSet::default();
        // A day after the host's boot, by Envoy's steady clock.
        let boot_ns = 86_400_000 * 1_000_000;
        let mut clock = crate::host::WasmClock::start(NOW_MS - 3_600_000, Some(boot_ns));
        let tick = clock.hook(NOW_MS - 3_599_900, Some(boot_ns + 100_000_000));
        // The feed last answered 30 s before that tick.
        let loaded = Loaded {
            set: &set,
            generation: 1,
            last_ok_ms: tick.mono_ms - 30_000,
        };
        let token = token();
        let extracted = Extracted::Found {
            token: &token,
            source: 0,
        };
        let now = clock.request(NOW_MS + 50);
        assert_eq!(now.unix_ms, NOW_MS + 50);
        let verdict = judge(
            &config,
            Some(&keys),
            1,
            Some(loaded),
            &mut TokenCache::new(0),
            &extracted,
            Require::Required,
            &[],
            now,
        );
        assert!(
            matches!(verdict.decision, Decision::Allow { .. }),
            "{:?}",
            match verdict.decision {
                Decision::Deny(denial) => denial.reason,
                _ => "anonymous",
            }
        );
    }

    #[test]
    fn on_request_headers_revocation_not_loaded_503_retry_after() {
        let config = config(serde_json::json!({
            "revocation": {"cluster": "issuer", "credential": "c"}
        }));
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
        ]);
        let stats = MockStats::default();
        assert_eq!(run(&config, &mut host, &stats), Flow::Stop);
        assert_eq!(host.reply.as_ref().map(|r| r.0), Some(503));
        assert_eq!(host.reply_header("retry-after"), Some("1"));
        assert_eq!(stats.get("denied.revocation_unavailable"), 1);
        assert_eq!(stats.get("denied.internal"), 0);
    }

    #[test]
    fn on_request_headers_unknown_kid_asks_for_refetch() {
        let config = config(serde_json::json!({}));
        let other = SigningKey::from_seed(Algorithm::EdDSA, &[8u8; 32]).unwrap();
        let mut state = MockState::new(&config);
        state.keys = Some(
            KeySet::from_jwks(&Jwks {
                keys: vec![other.jwk()],
            })
            .0,
        );
        let bearer = format!("Bearer {}", token());
        let mut host = MockHost::with(&[
            (":method", "GET"),
            (":path", "/api/me"),
            ("authorization", &bearer),
        ]);
        let stats = MockStats::default();
        let flow = on_request_headers(&mut host, &config, &mut state, &stats);
        assert_eq!(flow, Flow::Stop);
        assert_eq!(state.refetch_asked, vec![NOW_MS]);
    }

    #[test]
    fn deny_unavailable_503_fails_closed() {
        let mut host = MockHost::default();
        let stats = MockStats::default();
        assert_eq!(deny(&mut host, &stats, &unavailable()), Flow::Stop);
        assert_eq!(host.reply.as_ref().map(|r| r.0), Some(503));
    }
}
