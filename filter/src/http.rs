//! The HTTP context (one per request): thin glue between Envoy's request headers and
//! [`crate::verify::decide`].
//!
//! 1. Let a CORS preflight through when `cors_preflight` is on.
//! 2. Pick the path rule ([`crate::path`]: refused with 400 when the path is unsafe, never a
//!    laxer rule than what the upstream may make of it); `none` forwards as is.
//! 3. Decide; on allow, set the identity headers (and drop the token's header when
//!    `forward_authorization` is false); on deny, answer locally with the status, an RFC 6750
//!    `WWW-Authenticate` challenge and a JSON body.
//!
//! Whatever the outcome, no identity header the client sent reaches the upstream: on allow
//! each configured header is set (which replaces the client's copies) or removed, on every
//! other forwarded request each is removed (a client must never assert an identity).
//!
//! Per-request cost: only the headers needed are read (`:path`, the token's header), never
//! the whole map in the default configuration; the claims are shared with the cache entry;
//! metric ids are resolved once; nothing is formatted on the allow path. What stays: one
//! small shared-data read of the revocation meta (so every worker refuses a revoked token as
//! soon as one does).

use std::borrow::Cow;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use weauth_token::Claims;

use crate::config::{Require, StaleMode, TokenSource};
use crate::host::{log, now_ms};
use crate::path;
use crate::verify::{
    self, CacheUse, Decision, Denial, Extracted, RevocationView, Snapshot, Verdict,
};
use crate::worker::{VmState, Worker};

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

    /// Sets the identity headers from the claims. Setting a header replaces every copy the
    /// client sent; a header whose claim is absent (or unusable) is removed instead.
    fn forward_identity(&self, claims: &Claims, extracted: &Extracted) {
        for mapping in &self.worker.config.claim_to_headers {
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
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, &mapping.header, usable);
        }
        if !self.worker.config.forward_authorization {
            if let Extracted::Found { source, .. } = extracted {
                if let Some(TokenSource::Header { name, .. }) =
                    self.worker.config.token_sources.get(*source)
                {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                }
            }
        }
    }
}

impl Context for Filter {}

/// One request header (the first copy; Envoy joins repeated copies of its inline headers,
/// `authorization` among them, with commas). Not UTF-8: read lossily, so it can only fail
/// verification, never panic the VM.
fn header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
        .map(|bytes| {
            String::from_utf8(bytes)
                .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
        })
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

impl Filter {
    /// Removes every identity header the client sent (a client must never assert an
    /// identity). One host call per configured header, no copy of the header map.
    fn strip_identity(&self) {
        for mapping in &self.worker.config.claim_to_headers {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, &mapping.header);
        }
    }

    /// The headers the token sources read. Usually only `authorization` (and `cookie` for a
    /// cookie source), one host call each; the whole map only when a header source other than
    /// `authorization` is configured, whose repeated copies Envoy does not join and which must
    /// still be seen as ambiguous.
    fn source_headers(&self) -> Vec<(String, String)> {
        if self.worker.reads_whole_map {
            return hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                .collect();
        }
        let mut headers = Vec::with_capacity(2);
        for source in &self.worker.config.token_sources {
            let name = match source {
                TokenSource::Header { name, .. } => name.as_str(),
                TokenSource::Cookie(_) => "cookie",
                TokenSource::Query(_) => continue,
            };
            if headers
                .iter()
                .any(|(seen, _): &(String, String)| seen == name)
            {
                continue;
            }
            if let Some(value) = header(name) {
                headers.push((name.to_string(), value));
            }
        }
        headers
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = &self.worker.config;
        if config.cors_preflight
            && header(":method").as_deref() == Some("OPTIONS")
            && header("origin").is_some()
            && header("access-control-request-method").is_some()
        {
            self.strip_identity();
            return Action::Continue;
        }
        let path = header(":path").unwrap_or_else(|| "/".to_string());
        let (require, scopes) = match path::rule_for_path(&path, |p| config.rule_for(p)) {
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
            self.strip_identity();
            return Action::Continue;
        }
        let headers = self.source_headers();
        let extracted = verify::extract_token(&config.token_sources, &headers, &path);
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
                self.forward_identity(&claims, &extracted);
                Action::Continue
            }
            Decision::Anonymous => {
                metrics.anonymous.bump();
                self.strip_identity();
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
