//! The HTTP context (one per request): thin glue between Envoy's request headers and
//! [`crate::verify::decide`].
//!
//! 1. Read the request's header map once (one host call; everything below reads that copy).
//! 2. Let a CORS preflight through when `cors_preflight` is on.
//! 3. Pick the path rule ([`crate::path`]: refused with 400 when the path is unsafe, never a
//!    laxer rule than what the upstream may make of it); `none` forwards as is.
//! 4. A token from a cookie on an unsafe method must pass the CSRF rule ([`crate::csrf`]),
//!    else 403 before any verification.
//! 5. Decide; on allow, set the identity headers (and remove the token, its header or its
//!    cookie, unless the rule forwards it); on deny, answer locally with the status, an
//!    RFC 6750 `WWW-Authenticate` challenge and a JSON body.
//!
//! Whatever the outcome, no header the client sent under the identity prefix (`x-weauth-`)
//! nor any configured identity header reaches the upstream ([`crate::headers`]): on allow the
//! configured headers with a value are set (which replaces the client's copies) and every
//! other one the client sent is removed; on every other forwarded request each one the client
//! sent is removed (a client must never assert an identity).
//!
//! Per-request cost on an allowed cache hit with the default identity headers: the header map
//! (one read), the clock, the revocation version (one small shared-data read, so every worker
//! refuses a revoked token as soon as one does), and one set per identity header with a value;
//! a removal only for a header the client actually sent. The claims are shared with the cache
//! entry, metric ids are resolved once, nothing is formatted on the allow path.

use std::borrow::Cow;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use weauth_token::Claims;

use crate::config::{Require, StaleMode, TokenSource};
use crate::headers::{self, CookieEdit};
use crate::host::{log, now_ms};
use crate::verify::{
    self, CacheUse, Decision, Denial, Extracted, RevocationView, Snapshot, Verdict,
};
use crate::worker::{VmState, Worker};
use crate::{csrf, path};

/// One request.
pub struct Filter {
    context_id: u32,
    worker: Rc<Worker>,
}

impl Filter {
    pub fn new(context_id: u32, worker: Rc<Worker>) -> Filter {
        Filter { context_id, worker }
    }

    fn log(&self, level: LogLevel, message: &str) {
        log(level, self.context_id, message);
    }

    fn deny(&self, denial: &Denial) -> Action {
        self.worker.metrics.denied(denial.reason);
        self.log(
            LogLevel::Debug,
            &format!("denied {}: {}", denial.status, denial.reason),
        );
        let body = denial.body();
        let challenge = denial.www_authenticate();
        let mut headers = vec![
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ];
        if let Some(challenge) = challenge.as_deref() {
            headers.push(("www-authenticate", challenge));
        }
        if denial.status == 503 {
            headers.push(("retry-after", "1"));
        }
        if hostcalls::send_http_response(u32::from(denial.status), headers, Some(body.as_bytes()))
            .is_err()
        {
            self.log(LogLevel::Error, "could not send the local reply");
        }
        Action::Pause
    }

    /// Sets the identity headers from the claims, removes every other identity header the
    /// client sent, and removes the token unless the rule forwards it. Setting a header
    /// replaces every copy the client sent; a header whose claim is absent (or unusable) is
    /// removed if the client sent it.
    fn forward_identity(
        &self,
        claims: &Claims,
        extracted: &Extracted,
        headers: &[(String, String)],
        forward_authorization: bool,
    ) {
        let config = &self.worker.config;
        let mut set: Vec<&str> = Vec::with_capacity(config.claim_to_headers.len());
        for mapping in &config.claim_to_headers {
            let value = claim_value(claims, &mapping.claim);
            // A claim with control characters cannot be a header value; leave it out.
            let usable = value
                .as_deref()
                .filter(|value| !value.chars().any(char::is_control));
            if value.is_some() && usable.is_none() {
                self.log(
                    LogLevel::Warn,
                    &format!("claim {} not forwarded: control characters", mapping.claim),
                );
            }
            if let Some(usable) = usable {
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    &mapping.header,
                    Some(usable),
                );
                set.push(&mapping.header);
            }
        }
        self.strip_identity(headers, &set);
        if forward_authorization {
            return;
        }
        let Extracted::Found { source, .. } = extracted else {
            return;
        };
        match config.token_sources.get(*source) {
            Some(TokenSource::Header { name, .. }) => {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
            }
            Some(TokenSource::Cookie(name)) => match headers::cookie_without(headers, name) {
                CookieEdit::Unchanged => {}
                CookieEdit::Set(rest) => {
                    let _ = hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        "cookie",
                        Some(&rest),
                    );
                }
                CookieEdit::Remove => {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "cookie");
                }
            },
            // A query token stays in `:path` (rewriting the path is not this filter's job).
            Some(TokenSource::Query(_)) | None => {}
        }
    }

    /// Removes the identity headers the client sent, but those in `set` (see
    /// [`headers::identity_to_remove`]): one host call per header actually sent.
    fn strip_identity(&self, headers: &[(String, String)], set: &[&str]) {
        let config = &self.worker.config;
        for name in headers::identity_to_remove(
            headers,
            &config.identity_header_prefix,
            &config.claim_to_headers,
            set,
        ) {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
        }
    }
}

impl Context for Filter {}

/// The request's header map, in one host call. A value that is not UTF-8 is read lossily, so
/// it can only fail verification, never panic the VM. Envoy joins repeated copies of its
/// inline headers (`authorization` among them) with commas; others arrive as separate pairs.
fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let value = String::from_utf8(value)
                .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
            (name, value)
        })
        .collect()
}

/// A claim's value for a header, borrowed when the claim is a string.
fn claim_value<'c>(claims: &'c Claims, name: &str) -> Option<Cow<'c, str>> {
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

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = &self.worker.config;
        let headers = request_headers();
        let method = headers::first(&headers, ":method");
        if config.cors_preflight
            && method == Some("OPTIONS")
            && headers::first(&headers, "origin").is_some()
            && headers::first(&headers, "access-control-request-method").is_some()
        {
            self.strip_identity(&headers, &[]);
            return Action::Continue;
        }
        let path = headers::first(&headers, ":path").unwrap_or("/");
        let (require, scopes) = match path::rule_for_path(path, |p| config.rule_for(p)) {
            Ok(rule) => rule,
            Err(err) => {
                return self.deny(&Denial {
                    status: 400,
                    error: "invalid_request",
                    description: err.to_string(),
                    reason: "bad_path",
                    scope: None,
                })
            }
        };
        if require == Require::None {
            self.strip_identity(&headers, &[]);
            return Action::Continue;
        }
        let edge = path::edge_for_path(path, |p| config.edge_for(p));
        let extracted = verify::extract_token(&config.token_sources, &headers, path);
        if csrf::applies(edge.csrf, &config.token_sources, &extracted, method) {
            if let Err(denial) = csrf::check(
                headers::first(&headers, "sec-fetch-site"),
                headers::first(&headers, "origin"),
                &config.csrf_allowed_origins,
            ) {
                return self.deny(&denial);
            }
        }
        let now = now_ms();
        let Ok(mut state) = self.worker.state.try_borrow_mut() else {
            // Cannot happen in a single-threaded VM; fail closed rather than panic.
            return self.deny(&Denial {
                status: 503,
                error: "temporarily_unavailable",
                description: "the filter is busy; retry shortly".into(),
                reason: "jwks_unavailable",
                scope: None,
            });
        };
        let state = &mut *state;
        // Pick up a revocation the fetcher published since the last tick (one read of an empty
        // value's CAS; kept on every request so that once one worker refuses a revoked token,
        // every worker does).
        self.worker.sync_revocation_if_moved(state, self.context_id);
        // A worker VM whose tick has not picked up the keys the fetcher already published
        // (the first requests after start): look now instead of answering 503.
        if state.keys.is_none() {
            self.worker.sync_jwks(state, self.context_id);
        }
        let mut outcome = judge(&self.worker, state, &extracted, require, scopes, now);
        // An unknown `kid` may be a key the fetcher published since this VM's last tick: look
        // once more before refusing (cheap: only on this path).
        if outcome.unknown_key && self.worker.sync_jwks(state, self.context_id) {
            outcome = judge(&self.worker, state, &extracted, require, scopes, now);
        }
        let metrics = &self.worker.metrics;
        match outcome.cache {
            CacheUse::Hit => metrics.cache_hit.bump(),
            CacheUse::Miss => metrics.cache_miss.bump(),
            CacheUse::NotUsed => {}
        }
        if outcome.stale_allowed {
            metrics.count("revocation_stale_allowed");
            let mode = config.revocation.as_ref().map(|feed| feed.stale_mode);
            if mode == Some(StaleMode::Allow) {
                self.log(
                    LogLevel::Debug,
                    "revocation list stale: request allowed (stale_mode=allow)",
                );
            }
        }
        if outcome.unknown_key {
            self.worker.want_jwks_refetch(state, now);
        }
        match outcome.decision {
            Decision::Allow { claims } => {
                metrics.allowed.bump();
                self.forward_identity(&claims, &extracted, &headers, edge.forward_authorization);
                Action::Continue
            }
            Decision::Anonymous => {
                metrics.anonymous.bump();
                self.strip_identity(&headers, &[]);
                Action::Continue
            }
            Decision::Deny(denial) => self.deny(&denial),
        }
    }
}

/// Builds the snapshot from this VM's state and decides.
fn judge(
    worker: &Worker,
    state: &mut VmState,
    extracted: &Extracted,
    require: Require,
    scopes: &[String],
    now_ms: u64,
) -> Verdict {
    let config = &worker.config;
    let revocation = match &config.revocation {
        None => RevocationView::Disabled,
        Some(feed) => match &state.replica.meta {
            None => RevocationView::NotLoaded {
                mode: feed.stale_mode,
            },
            Some(meta) => RevocationView::Ready {
                set: &state.replica.set,
                generation: meta.generation,
                stale: now_ms.saturating_sub(meta.last_ok_ms)
                    > feed.stale_after_seconds.saturating_mul(1000),
                mode: feed.stale_mode,
            },
        },
    };
    let snapshot = Snapshot {
        keys: state.keys.as_ref(),
        keys_generation: state.keys_generation,
        revocation,
    };
    verify::decide(
        extracted,
        require,
        scopes,
        &config.validation,
        &snapshot,
        &mut state.cache,
        i64::try_from(now_ms / 1000).unwrap_or(i64::MAX),
    )
}
