//! The HTTP context (one per request): thin glue between Envoy's request headers and
//! [`crate::verify::decide`].
//!
//! 1. Remove every identity header named in `claim_to_headers` from the client's request,
//!    whatever the rule (a client must never be able to assert an identity).
//! 2. Let a CORS preflight through when `cors_preflight` is on.
//! 3. Pick the path rule; `none` forwards as is.
//! 4. Decide; on allow, set the identity headers (and drop the token's header when
//!    `forward_authorization` is false); on deny, answer locally with the status, an RFC 6750
//!    `WWW-Authenticate` challenge and a JSON body.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use weauth_token::Claims;

use crate::config::{Require, StaleMode, TokenSource};
use crate::root::{log, now_ms, State, Worker};
use crate::verify::{
    self, CacheUse, Decision, Denial, Extracted, Outcome, RevocationView, Snapshot,
};

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

    fn forward_identity(&self, claims: &Claims, extracted: &Extracted) {
        for mapping in &self.worker.config.claim_to_headers {
            let Some(value) = claims.get(&mapping.claim) else {
                continue;
            };
            // A claim with control characters cannot be a header value; leave it out.
            if value.chars().any(char::is_control) {
                self.log(
                    LogLevel::Warn,
                    &format!("claim {} not forwarded: control characters", mapping.claim),
                );
                continue;
            }
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                &mapping.header,
                Some(&value),
            );
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

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = &self.worker.config;
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        for mapping in &config.claim_to_headers {
            if headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(&mapping.header))
            {
                let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, &mapping.header);
            }
        }
        let header = |wanted: &str| {
            headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value.as_str())
        };
        if config.cors_preflight
            && header(":method") == Some("OPTIONS")
            && header("origin").is_some()
            && header("access-control-request-method").is_some()
        {
            return Action::Continue;
        }
        let path = header(":path").unwrap_or("/");
        let (require, scopes) = config.rule_for(verify::path_only(path));
        if require == Require::None {
            return Action::Continue;
        }
        let extracted = verify::extract_token(&config.token_sources, &headers, path);
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
        // Pick up a revocation the fetcher published since the last tick (one small read).
        self.worker.sync_revocation(state, self.context_id);
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
        match outcome.cache {
            CacheUse::Hit => self.worker.metrics.count("cache_hit"),
            CacheUse::Miss => self.worker.metrics.count("cache_miss"),
            CacheUse::NotUsed => {}
        }
        if outcome.stale_allowed {
            self.worker.metrics.count("revocation_stale_allowed");
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
                self.worker.metrics.count("allowed");
                self.forward_identity(&claims, &extracted);
                Action::Continue
            }
            Decision::Anonymous => {
                self.worker.metrics.count("anonymous");
                Action::Continue
            }
            Decision::Deny(denial) => self.deny(&denial),
        }
    }
}

/// Builds the snapshot from this VM's state and decides.
fn judge(
    worker: &Worker,
    state: &mut State,
    extracted: &Extracted,
    require: Require,
    scopes: &[String],
    now_ms: u64,
) -> Outcome {
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
