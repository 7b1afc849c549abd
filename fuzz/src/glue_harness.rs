//! What the fuzz target `filter_glue` does with one input: one request through the filter's
//! whole per-request glue, `weauth_filter::request::on_request_headers`, against a mock host
//! that keeps the header map as Envoy would, then oracles on the request that would be
//! forwarded (or on the local reply). Shared by the libFuzzer target
//! `fuzz/fuzz_targets/filter_glue.rs` and by the replay test `filter/tests/fuzz_glue.rs`
//! (which includes this file, and `fixture.rs` for the keys, with `#[path]`).
//!
//! The other filter targets (`filter_harness.rs`) feed the pure functions the glue calls; this
//! one runs what the glue does with them: the CORS preflight, the path's readings and lax
//! upstream lookups, the CSRF rule (Upgrade included), the token's removal, the identity
//! headers (stripped in both spellings, set from the verified claims), the local reply.
//!
//! The oracles are written from the documented behaviour (`docs/INTERFACES.md`, "Edge
//! defaults"; the `request`, `headers`, `csrf` and `verify` module docs), computed here from
//! the configuration and the request rather than by calling the glue's own helpers: the rule
//! from every reading of the path (`path::readings`) looked up both ways
//! (`Config::rule_and_edge_for_as`), the identity namespace with `_` read as `-`, the expected
//! identity header values from `Claims::get`.

// This is test code (a fuzz harness): a broken property must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use weauth_filter::cache::TokenCache;
use weauth_filter::config::{Config, Require, StaleMode, TokenSource};
use weauth_filter::headers::Header;
use weauth_filter::host::{Host, KeyState, Level, Now, Stats};
use weauth_filter::path::{check, readings, without_query};
use weauth_filter::request::{self, Flow, Loaded};
use weauth_filter::revocation::RevocationSet;
use weauth_filter::verify::{Decision, Extracted, Verdict};
use weauth_token::{sign, Algorithm, Claims, SigningKey};

use super::fixture::{claims, Fixture, NOW};

/// The host clock (ms) of every request.
pub const NOW_MS: u64 = NOW as u64 * 1000;

/// How many tokens a value can name (`0xFE k` picks `k % TOKENS`).
pub const TOKENS: usize = 8;
/// The tokens that verify, unrevoked: the fixture's EdDSA and HS256 ones and the admin one.
pub const GOOD: [usize; 3] = [0, 2, 3];
/// The tokens the revocation set revokes (by `jti`, by `sid`).
pub const REVOKED: [usize; 2] = [1, 4];
/// The most headers one input carries.
pub const MAX_HEADERS: usize = 32;
/// The byte that, in a header value, stands for a token: `0xFE k` is token `k % TOKENS`.
pub const TOKEN_MARK: u8 = 0xfe;

/// The plugin configurations an input picks from (byte 0 `& 3`). Every one has the fixture's
/// issuer, audience and algorithms, a revocation feed (so revocations are checked) and a
/// header, a cookie and a query token source.
///
/// - 0: the defaults (six `x-weauth-*` claim headers, the token not forwarded, CSRF on), CORS
///   preflights let through, `none`, `optional`, scoped and forwarding rules;
/// - 1: two claim headers, one outside the prefix (`x-user-openid`); the token forwarded by
///   default but not on `/api/strip/`; an allowed CSRF origin; a rule with CSRF off;
///   `optional` by default;
/// - 2: its own prefix (`x-auth-`, so a client's `x-weauth-*` is not the filter's), two cookie
///   sources listed before the header, two claims to one header, an `iat` claim header,
///   `stale_mode: allow`, `none` by default;
/// - 3: rules lax upstreams read differently (`/API/Admin/x`, `/docs/` under `/Docs/`), an
///   exact rule before the prefix that covers it, forwarding on for `/v1/`.
pub const CONFIGS: [&str; 4] = [
    r#"{
  "issuer": "https://issuer.fuzz.example", "audiences": ["weauth"],
  "algorithms": ["EdDSA", "ES256", "HS256"],
  "jwks": {"inline": {"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}},
  "revocation": {"cluster": "issuer", "credential": "c"},
  "token_sources": [{"header": "authorization", "prefix": "Bearer "},
                    {"cookie": "weauth_at"}, {"query": "access_token"}],
  "cors_preflight": true,
  "rules": [{"exact": "/v1/login", "require": "none"},
            {"prefix": "/public/", "require": "none"},
            {"prefix": "/admin/", "require": "required", "scopes": ["admin"]},
            {"prefix": "/api/", "require": "required", "scopes": ["read"]},
            {"prefix": "/opt/", "require": "optional"},
            {"prefix": "/fwd/", "require": "required", "forward_authorization": true}],
  "default_require": "required"
}"#,
    r#"{
  "issuer": "https://issuer.fuzz.example", "audiences": ["weauth"],
  "algorithms": ["EdDSA", "ES256", "HS256"],
  "jwks": {"inline": {"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}},
  "revocation": {"cluster": "issuer", "credential": "c"},
  "token_sources": [{"header": "authorization", "prefix": "Bearer "},
                    {"cookie": "weauth_at"}, {"query": "access_token"}],
  "claim_to_headers": [{"claim": "sub", "header": "x-weauth-sub"},
                       {"claim": "openid", "header": "x-user-openid"}],
  "forward_authorization": true,
  "csrf_allowed_origins": ["https://app.example.com"],
  "rules": [{"prefix": "/api/hooks/", "require": "required", "csrf": false},
            {"prefix": "/api/strip/", "require": "required", "forward_authorization": false},
            {"prefix": "/api/admin/", "require": "required", "scopes": ["admin"]},
            {"prefix": "/api/", "require": "required", "scopes": ["write"]},
            {"prefix": "/Public/", "require": "none"},
            {"exact": "/feed", "require": "optional"}],
  "default_require": "optional"
}"#,
    r#"{
  "issuer": "https://issuer.fuzz.example", "audiences": ["weauth"],
  "algorithms": ["EdDSA", "ES256", "HS256"],
  "jwks": {"inline": {"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}},
  "revocation": {"cluster": "issuer", "credential": "c", "stale_mode": "allow"},
  "identity_header_prefix": "x-auth-",
  "token_sources": [{"cookie": "weauth_at"}, {"cookie": "wa_legacy"},
                    {"header": "authorization", "prefix": "Bearer "}, {"query": "access_token"}],
  "claim_to_headers": [{"claim": "sub", "header": "x-auth-user"},
                       {"claim": "openid", "header": "x-auth-user"},
                       {"claim": "unionid", "header": "x-uid"},
                       {"claim": "appid", "header": "x-weauth-appid"},
                       {"claim": "iat", "header": "x-auth-iat"},
                       {"claim": "scope", "header": "x-auth-scope"}],
  "csrf_allowed_origins": ["https://h5.example.com", "http://localhost:8080"],
  "rules": [{"prefix": "/api/admin/", "require": "required", "scopes": ["admin"]},
            {"prefix": "/api/", "require": "required", "scopes": ["read"]},
            {"prefix": "/pub/", "require": "none"},
            {"prefix": "/opt/", "require": "optional"}],
  "default_require": "none"
}"#,
    r#"{
  "issuer": "https://issuer.fuzz.example", "audiences": ["weauth"],
  "algorithms": ["EdDSA", "ES256", "HS256"],
  "jwks": {"inline": {"keys": [{"kty": "oct", "k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}},
  "revocation": {"cluster": "issuer", "credential": "c"},
  "token_sources": [{"header": "authorization", "prefix": "Bearer "},
                    {"cookie": "weauth_at"}, {"query": "access_token"}],
  "rules": [{"exact": "/api/admin/stats", "require": "optional"},
            {"prefix": "/api/admin/", "require": "required", "scopes": ["admin"]},
            {"prefix": "/api/", "require": "required", "scopes": ["write"]},
            {"prefix": "/Docs/", "require": "none"},
            {"prefix": "/v1/", "require": "required", "forward_authorization": true}],
  "default_require": "required"
}"#,
];

/// The state the keys and the revocation set are in (byte 0 `>> 2 & 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Keys loaded, revocation set fresh (value 0).
    Fresh,
    /// Keys loaded, the revocation set never loaded (value 1): 503 in `deny` mode; in `allow`
    /// mode (config 2) nothing is revoked — the documented price of that mode.
    NotLoaded,
    /// The revocation set last answered 2 minutes ago (stale after 60 s): 503 in `deny`
    /// mode, checked against the last set in `allow` mode (config 2).
    Stale,
    /// No keys loaded yet: 503 for any request that must verify a token.
    NoKeys,
}

/// Everything the target needs, built once per process: the key fixture, the parsed
/// [`CONFIGS`], eight tokens and the revocation set.
pub struct GlueFixture {
    pub fx: Fixture,
    pub configs: Vec<Config>,
    /// 0: the fixture's EdDSA token (scope `read write`); 1: its ES256 one, revoked by `jti`;
    /// 2: its HS256 one; 3: EdDSA, scope `read admin`, an `openid` with a control character,
    /// an empty `appid`, no `unionid`; 4: EdDSA, revoked by `sid`; 5: token 0 with a changed
    /// signature; 6: signed by a key the key set lacks (unknown `kid`); 7: expired an hour ago.
    pub tokens: Vec<String>,
    /// The claims signed into each token (5: token 0's, under a broken signature).
    pub claims: Vec<Claims>,
    pub revoked: RevocationSet,
}

impl GlueFixture {
    pub fn new() -> GlueFixture {
        let fx = Fixture::new();
        let configs = CONFIGS
            .iter()
            .map(|text| Config::parse(text.as_bytes()).expect("a glue fixture config parses"))
            .collect();
        let eddsa = &fx.signing[0];
        let base = claims(Algorithm::EdDSA);
        let admin = Claims {
            sub: "u_admin".into(),
            sid: "s_admin".into(),
            jti: "j_admin".into(),
            openid: "o\u{1}ctl".into(),
            unionid: None,
            appid: String::new(),
            scope: Some("read admin".into()),
            ..base.clone()
        };
        let sid_revoked = Claims {
            sid: "s_revoked".into(),
            jti: "j_sid_revoked".into(),
            ..base.clone()
        };
        let unknown_key = SigningKey::from_seed(Algorithm::EdDSA, &[0x44; 32]).expect("a key");
        let stranger = Claims {
            jti: "j_unknown_key".into(),
            ..base.clone()
        };
        let expired = Claims {
            jti: "j_expired".into(),
            iat: NOW - 7200,
            nbf: NOW - 7200,
            exp: NOW - 3600,
            ..base.clone()
        };
        // Token 0 with one character in the middle of its signature changed.
        let forged = {
            let mut bytes = fx.tokens[0].clone().into_bytes();
            let at = fx.tokens[0].rfind('.').expect("three segments") + 20;
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8(bytes).expect("ASCII")
        };
        let tokens = vec![
            fx.tokens[0].clone(),
            fx.tokens[1].clone(),
            fx.tokens[2].clone(),
            sign(&admin, eddsa).expect("signs"),
            sign(&sid_revoked, eddsa).expect("signs"),
            forged,
            sign(&stranger, &unknown_key).expect("signs"),
            sign(&expired, eddsa).expect("signs"),
        ];
        let claims = vec![
            claims(Algorithm::EdDSA),
            claims(Algorithm::ES256),
            claims(Algorithm::HS256),
            admin,
            sid_revoked,
            base,
            stranger,
            expired,
        ];
        let feed = format!(
            r#"{{"seq":2,"full":true,"now":{NOW},"entries":[
                {{"seq":1,"kind":"jti","value":"j_ES256","until":{until}}},
                {{"seq":2,"kind":"sid","value":"s_revoked","until":{until}}}]}}"#,
            until = NOW + 3600
        );
        let mut revoked = RevocationSet::default();
        revoked
            .apply(&serde_json::from_str(&feed).expect("fixture feed"), NOW)
            .expect("fixture feed applies");
        GlueFixture {
            fx,
            configs,
            tokens,
            claims,
            revoked,
        }
    }
}

impl Default for GlueFixture {
    fn default() -> GlueFixture {
        GlueFixture::new()
    }
}

/// One fuzz input, read.
#[derive(Debug, Clone)]
pub struct Request {
    pub config: usize,
    pub state: State,
    /// Names lower-cased, as Envoy's codecs hand them to filters.
    pub headers: Vec<(String, String)>,
}

/// Reads an input (layout on [`filter_glue`]).
pub fn parse(gx: &GlueFixture, data: &[u8]) -> Request {
    let Some((&mode, rest)) = data.split_first() else {
        return Request {
            config: 0,
            state: State::Fresh,
            headers: Vec::new(),
        };
    };
    let state = match (mode >> 2) & 3 {
        1 => State::NotLoaded,
        2 => State::Stale,
        3 => State::NoKeys,
        _ => State::Fresh,
    };
    let mut fields = rest.split(|&b| b == 0xff);
    let mut headers = Vec::new();
    while headers.len() < MAX_HEADERS {
        let Some(name) = fields.next() else { break };
        let value = fields.next().unwrap_or(&[]);
        // Envoy's codecs lower-case header names (HTTP/1) or refuse upper-case ones (HTTP/2).
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&with_tokens(gx, value)).into_owned();
        headers.push((name, value));
    }
    Request {
        config: usize::from(mode & 3),
        state,
        headers,
    }
}

/// `value` with every `0xFE k` replaced by token `k % TOKENS` (a trailing `0xFE`: token 0).
fn with_tokens(gx: &GlueFixture, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&byte) = bytes.next() {
        if byte == TOKEN_MARK {
            let k = bytes.next().copied().unwrap_or(0);
            out.extend_from_slice(gx.tokens[usize::from(k) % TOKENS].as_bytes());
        } else {
            out.push(byte);
        }
    }
    out
}

// ---- the mock host -----------------------------------------------------------------------

/// A local reply: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One request's host: the header map kept as Envoy keeps it (a set replaces every copy, an
/// add appends one, a remove takes every copy; names compared without regard to ASCII case),
/// the local replies sent, the log lines, and the route-cache signals.
#[derive(Default)]
struct GlueHost {
    headers: Vec<(String, String)>,
    replies: Vec<Reply>,
    logs: RefCell<Vec<String>>,
    reads: Cell<usize>,
    /// Edits made, and those not yet followed by `headers_edited`.
    edits: usize,
    unsignalled: usize,
    signalled: usize,
    /// Headers added while the map already carried one (the trait says the glue checked).
    added_over_existing: Vec<String>,
}

impl Host for GlueHost {
    fn now(&self) -> Now {
        Now::wall(NOW_MS)
    }
    fn log(&self, _level: Level, message: &str) {
        self.logs.borrow_mut().push(message.to_owned());
    }
    fn with_request_headers<R>(&self, read: impl FnOnce(&[Header<'_>]) -> R) -> R {
        self.reads.set(self.reads.get() + 1);
        let views: Vec<Header<'_>> = self
            .headers
            .iter()
            .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str())))
            .collect();
        read(&views)
    }
    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self.edits += 1;
        self.unsignalled += 1;
        true
    }
    fn add_request_header(&mut self, name: &str, value: &str) -> bool {
        if self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            self.added_over_existing.push(name.to_owned());
        }
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self.edits += 1;
        self.unsignalled += 1;
        true
    }
    fn remove_request_header(&mut self, name: &str) -> bool {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.edits += 1;
        self.unsignalled += 1;
        true
    }
    fn headers_edited(&mut self) {
        self.unsignalled = 0;
        self.signalled += 1;
    }
    fn send_local_reply(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.replies.push(Reply {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
    }
}

/// Counters by name (`allowed`, `denied.<reason>`, ...).
#[derive(Default)]
struct GlueStats(RefCell<BTreeMap<String, u64>>);

impl GlueStats {
    fn get(&self, name: &str) -> u64 {
        self.0.borrow().get(name).copied().unwrap_or(0)
    }
    fn bump(&self, name: &str) {
        *self.0.borrow_mut().entry(name.to_owned()).or_default() += 1;
    }
    /// The `denied.<reason>` counters: (reason, count).
    fn denials(&self) -> Vec<(String, u64)> {
        self.0
            .borrow()
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("denied.").map(|r| (r.to_owned(), *v)))
            .collect()
    }
}

impl Stats for GlueStats {
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

/// The token a decision was asked about, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judged {
    Missing,
    Found { token: String, source: usize },
    Ambiguous,
}

/// The keys and revocation set as [`State`] says, deciding through `request::judge` (what
/// both builds' `KeyState` call) with one token cache for both runs of an input.
struct GlueState<'a> {
    gx: &'a GlueFixture,
    config: &'a Config,
    state: State,
    cache: TokenCache,
    /// What each `judge` call of the current run was asked and answered.
    calls: Vec<(Judged, Verdict)>,
    refetches: usize,
}

impl KeyState for GlueState<'_> {
    fn judge(
        &mut self,
        extracted: &Extracted<'_>,
        require: Require,
        scopes: &[String],
        now: Now,
    ) -> Verdict {
        let keys = (self.state != State::NoKeys).then_some(&self.gx.fx.keys);
        let last_ok_ms = match self.state {
            State::Stale => now.mono_ms - 120_000,
            _ => now.mono_ms,
        };
        let revocation = (self.state != State::NotLoaded).then_some(Loaded {
            set: &self.gx.revoked,
            generation: 1,
            last_ok_ms,
        });
        let verdict = request::judge(
            self.config,
            keys,
            1,
            revocation,
            &mut self.cache,
            extracted,
            require,
            scopes,
            now,
        );
        let judged = match extracted {
            Extracted::Missing => Judged::Missing,
            Extracted::Ambiguous => Judged::Ambiguous,
            Extracted::Found { token, source } => Judged::Found {
                token: (*token).to_owned(),
                source: *source,
            },
        };
        self.calls.push((judged, verdict.clone()));
        verdict
    }
    fn want_jwks_refetch(&mut self, _now: Now) {
        self.refetches += 1;
    }
}

// ---- the target --------------------------------------------------------------------------

/// What became of a request (the replay test tallies these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded with a verified identity.
    Allowed,
    /// Forwarded without one (`optional`, no token).
    Anonymous,
    /// Forwarded unchecked (a `none` rule, a CORS preflight).
    Unchecked,
    /// Answered locally with this status.
    Refused(u16),
}

/// One run of the glue: the host, counters and decisions it left.
struct Run {
    flow: Flow,
    host: GlueHost,
    stats: GlueStats,
    calls: Vec<(Judged, Verdict)>,
    refetches: usize,
}

fn run_once(request: &Request, config: &Config, state: &mut GlueState<'_>) -> Run {
    let mut host = GlueHost {
        headers: request.headers.clone(),
        ..GlueHost::default()
    };
    let stats = GlueStats::default();
    state.calls.clear();
    state.refetches = 0;
    let flow = request::on_request_headers(&mut host, config, state, &stats);
    Run {
        flow,
        host,
        stats,
        calls: std::mem::take(&mut state.calls),
        refetches: state.refetches,
    }
}

/// Target `filter_glue`. Layout: byte 0 picks the configuration (`& 3`, [`CONFIGS`]) and the
/// key state (`>> 2 & 3`: 0 fresh, 1 no revocation set loaded, 2 a stale one, 3 no keys;
/// [`State`]); the
/// rest, split at `0xFF`, is `name 0xFF value 0xFF name 0xFF value ...` — at most
/// [`MAX_HEADERS`] headers in the order given, pseudo-headers (`:method`, `:path`) included;
/// names are lower-cased (as Envoy's codecs give them), both read as UTF-8 lossily. In a value,
/// `0xFE k` stands for token `k % 8` of [`GlueFixture::tokens`] (good ones: 0, 2, 3), so
/// allowed requests are reached. The request runs through `on_request_headers` twice with
/// one token cache (the second decision may come from it).
///
/// Oracles (each a documented property of the glue):
/// 1. it never panics; the header map is read once; exactly one of: `Continue` with no local
///    reply, or one local reply (and then no header edited);
/// 2. counters agree: one `denied.<reason>` per reply, `allowed` exactly when the decision was
///    Allow and the request forwarded; a JWKS refetch asked exactly for an unknown `kid`;
///    edits are followed by one route-cache signal, none without edits; no `add` of a header
///    the map carries;
/// 3. a reply's status is 400, 401, 403 or 503, with `content-type: application/json`,
///    `cache-control: no-store`, a JSON body with `error` and `error_description`, printable
///    header values; 503 has `retry-after: 1` and no challenge; a CSRF refusal (403
///    `access_denied`) has no challenge and comes before any verification; 400/401/403
///    otherwise carry `WWW-Authenticate: Bearer` — bare for a missing token, else with
///    `error="<the body's error>"`, and `scope="..."` for `insufficient_scope`;
/// 4. a path the filter must refuse (no `:path`, or one `path::check` refuses) never reaches
///    the upstream, unless it is a CORS preflight the configuration lets through;
/// 5. forwarded on a path any of whose readings (as written or as a lax upstream reads it) has
///    a `required` rule: only with an Allow; on `optional`: Allow or no token at all; an Allow
///    is for a token issued here, unrevoked (unless no set was ever loaded and `stale_mode`
///    is `allow`), unexpired, with every scope any reading's rule asks, and its claims are the
///    token's; `revocation_stale_allowed` is counted only in `allow` mode with a stale or
///    missing set;
/// 6. a cookie-authenticated Allow on an unsafe method or an `Upgrade`, where any reading's
///    rule has CSRF on, came with `Sec-Fetch-Site: same-origin`/`none` or an allowed `Origin`;
/// 7. forwarded: no header whose name, `_` read as `-`, is under the identity prefix or is a
///    configured claim header — except, on an Allow, each configured header whose claim has a
///    usable value (non-empty, no control character), exactly once, with exactly the value of
///    the last mapping to it that has one; and on an Allow every such header is there;
/// 8. an Allow where any reading's rule does not forward the token: the token's own header
///    gone, and every other header token source's header that carries a token (its prefix,
///    [`carries`]) — the verified one or another — gone too, one that carries none forwarded
///    as sent; no token cookie left in any `Cookie` header and every other cookie kept in
///    order; otherwise the token headers and `Cookie` are forwarded as sent;
/// 9. every header the filter does not own (above) is forwarded exactly as sent;
/// 10. no log line holds one of the tokens;
/// 11. the second run (cache warm) forwards or answers exactly as the first.
///
/// A filter bug found by this target and not fixed yet is tolerated exactly where it shows
/// (see [`KNOWN_BUGS`]), so the fuzzer can go on looking for others; the replay test checks
/// that the committed inputs of each still show it. Returns the first run's [`Outcome`].
pub fn filter_glue(gx: &GlueFixture, data: &[u8]) -> Outcome {
    filter_glue_report(gx, data).0
}

/// Filter bugs this target found that may not be fixed yet, tolerated where (and only where)
/// they show, so that fuzzing the code as it is goes on. Each has inputs
/// `fuzz/regressions/filter_glue/bug-<id>-*`, replayed by `filter/tests/fuzz_glue.rs` (which
/// says when one no longer shows its bug). Once the fix is in, remove the entry: the oracle
/// is whole again, and the inputs must then pass it.
///
/// None now. Fixed: `token-header-after-cookie` (with `forward_authorization` off, a token read
/// from a cookie source listed before a header source left that header — `Authorization:
/// Bearer <the same token, or another>` — going upstream; its inputs are
/// `fixed-token-header-after-cookie-*`).
pub const KNOWN_BUGS: &[&str] = &[];

/// [`filter_glue`], also naming the [`KNOWN_BUGS`] the input showed.
pub fn filter_glue_report(gx: &GlueFixture, data: &[u8]) -> (Outcome, Vec<&'static str>) {
    let request = parse(gx, data);
    let config = &gx.configs[request.config];
    let mut state = GlueState {
        gx,
        config,
        state: request.state,
        cache: TokenCache::new(16),
        calls: Vec::new(),
        refetches: 0,
    };
    let mut known = Vec::new();
    let first = run_once(&request, config, &mut state);
    let outcome = check_run(gx, &request, config, &first, &mut known);
    let second = run_once(&request, config, &mut state);
    check_run(gx, &request, config, &second, &mut known);
    known.dedup();
    assert_eq!(first.flow, second.flow, "the second run flows otherwise");
    assert_eq!(
        first.host.headers, second.host.headers,
        "the second run forwards other headers"
    );
    assert_eq!(
        first.host.replies, second.host.replies,
        "the second run answers otherwise"
    );
    (outcome, known)
}

/// Whether the configuration's revocation `stale_mode` is `allow`.
fn allow_mode(config: &Config) -> bool {
    config
        .revocation
        .as_ref()
        .is_some_and(|feed| feed.stale_mode == StaleMode::Allow)
}

/// `name` lower-cased with `_` read as `-` (how CGI-style upstreams read header names).
fn fold(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect::<String>()
}

/// Whether the filter owns header `name`: under the identity prefix or a configured claim
/// header, `_` read as `-`.
fn owned(config: &Config, name: &str) -> bool {
    let folded = fold(name);
    folded.starts_with(&fold(&config.identity_header_prefix))
        || config
            .claim_to_headers
            .iter()
            .any(|mapping| fold(&mapping.header) == folded)
}

/// The identity headers an Allow with `claims` must forward: each configured header whose
/// claims have a usable value, with the value of the last such mapping.
fn expected_identity(config: &Config, claims: &Claims) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for mapping in &config.claim_to_headers {
        if let Some(value) = claims
            .get(&mapping.claim)
            .filter(|v| !v.is_empty() && !v.chars().any(char::is_control))
        {
            out.insert(mapping.header.clone(), value);
        }
    }
    out
}

/// What every reading of a path asks, both ways: the highest requirement, every scope, CSRF
/// on if any has it, the token forwarded only if every one does.
struct Asked {
    require: Require,
    scopes: Vec<String>,
    csrf: bool,
    forward: bool,
}

fn rank(require: Require) -> u8 {
    match require {
        Require::None => 0,
        Require::Optional => 1,
        Require::Required => 2,
    }
}

/// `None` when the filter must refuse the path (no `:path`, or a refused character).
fn asked(config: &Config, path: Option<&str>) -> Option<Asked> {
    let path = without_query(path?);
    check(path).ok()?;
    let mut asked = Asked {
        require: Require::None,
        scopes: Vec::new(),
        csrf: false,
        forward: true,
    };
    for reading in readings(path) {
        for lax in [false, true] {
            let ((require, scopes), edge) = config.rule_and_edge_for_as(&reading, lax);
            if rank(require) > rank(asked.require) {
                asked.require = require;
            }
            for scope in scopes {
                if !asked.scopes.contains(scope) {
                    asked.scopes.push(scope.clone());
                }
            }
            asked.csrf |= edge.csrf;
            asked.forward &= edge.forward_authorization;
        }
    }
    Some(asked)
}

fn first<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn copies<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The `name=value` pairs of every `Cookie` header, trimmed, empty ones skipped (RFC 6265).
fn cookie_pairs(headers: &[(String, String)]) -> Vec<&str> {
    headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .collect()
}

fn cookie_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name).trim()
}

fn is_token_cookie(config: &Config, pair: &str) -> bool {
    let name = cookie_name(pair);
    config
        .token_sources
        .iter()
        .any(|source| matches!(source, TokenSource::Cookie(cookie) if cookie == name))
}

/// Whether a header value carries a token for a header source with `prefix`, as the filter
/// reads one (`verify::extract_token`): the value, trimmed, starts with the prefix (ASCII case
/// ignored), or is the prefix without its trailing space (`Bearer` alone: a token source
/// present but empty). A value that does not start with it (`Basic ...`, or the token alone
/// where `Bearer ` is expected) carries none.
fn carries(value: &str, prefix: &str) -> bool {
    let value = value.trim();
    value
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        || (prefix.ends_with(' ') && value.eq_ignore_ascii_case(prefix.trim_end()))
}

/// The header names of the header token sources.
fn token_headers(config: &Config) -> Vec<&str> {
    config
        .token_sources
        .iter()
        .filter_map(|source| match source {
            TokenSource::Header { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

/// Oracles 1-10 on one run; returns its outcome. A tolerance for one of the [`KNOWN_BUGS`]
/// (none now) adds the bug to `known` where it skips an assertion.
fn check_run(
    gx: &GlueFixture,
    request: &Request,
    config: &Config,
    run: &Run,
    _known: &mut Vec<&'static str>,
) -> Outcome {
    let sent = &request.headers;
    let host = &run.host;
    let method = first(sent, ":method");
    let cors = config.cors_preflight
        && method == Some("OPTIONS")
        && first(sent, "origin").is_some()
        && first(sent, "access-control-request-method").is_some();

    // 1. One read; Continue xor one reply.
    assert_eq!(host.reads.get(), 1, "the header map is read once");
    match run.flow {
        Flow::Continue => assert!(host.replies.is_empty(), "forwarded and answered"),
        Flow::Stop => assert_eq!(host.replies.len(), 1, "stopped without exactly one reply"),
    }
    assert!(run.calls.len() <= 1, "judged {} times", run.calls.len());

    // 2. Counters, route signals, adds.
    let denials = run.stats.denials();
    let denied: u64 = denials.iter().map(|(_, n)| n).sum();
    assert_eq!(
        denied,
        host.replies.len() as u64,
        "denied counters {denials:?} against {} replies",
        host.replies.len()
    );
    let allowed = run.stats.get("allowed");
    let anonymous = run.stats.get("anonymous");
    assert!(allowed + anonymous + denied <= 1, "counted twice");
    let decision = run.calls.first().map(|(_, verdict)| &verdict.decision);
    let allow_claims = match decision {
        Some(Decision::Allow { claims }) => Some(claims),
        _ => None,
    };
    assert_eq!(
        allowed == 1,
        allow_claims.is_some() && run.flow == Flow::Continue,
        "`allowed` counted against decision {decision:?}, flow {:?}",
        run.flow
    );
    if anonymous == 1 {
        assert!(matches!(decision, Some(Decision::Anonymous)));
        assert_eq!(run.flow, Flow::Continue);
    }
    let unknown_key = run.calls.iter().any(|(_, verdict)| verdict.unknown_key);
    assert_eq!(
        run.refetches,
        usize::from(unknown_key),
        "JWKS refetch asked {} times, unknown kid: {unknown_key}",
        run.refetches
    );
    assert!(
        host.added_over_existing.is_empty(),
        "added {:?}, which the map carried (an add appends a copy)",
        host.added_over_existing
    );
    match run.flow {
        Flow::Stop => assert!(
            host.edits == 0 && host.signalled == 0,
            "a refused request had {} edits, {} route signals",
            host.edits,
            host.signalled
        ),
        Flow::Continue => {
            assert_eq!(
                host.signalled,
                usize::from(host.edits > 0),
                "{} edits, {} route signals",
                host.edits,
                host.signalled
            );
            assert_eq!(host.unsignalled, 0, "edits after the route signal");
        }
    }

    if run.stats.get("revocation_stale_allowed") > 0 {
        assert!(
            allow_mode(config) && matches!(request.state, State::Stale | State::NotLoaded),
            "revocation_stale_allowed counted with a fresh set or in deny mode"
        );
    }

    // 10. No token in a log line.
    for line in host.logs.borrow().iter() {
        for token in &gx.tokens {
            assert!(!line.contains(token.as_str()), "a token in a log line");
        }
    }

    let asked = asked(config, first(sent, ":path"));

    if let Some(reply) = host.replies.first() {
        // 3. The reply.
        let reason = denials
            .first()
            .map(|(reason, _)| reason.clone())
            .unwrap_or_default();
        check_reply(reply, &reason, run);
        // 4. A refused path: 400 bad_path.
        if asked.is_none() && !cors {
            assert_eq!(
                (reply.status, reason.as_str()),
                (400, "bad_path"),
                "a refused path answered otherwise"
            );
        }
        return Outcome::Refused(reply.status);
    }

    // Forwarded from here on.
    let forwarded = &host.headers;
    let identity = allow_claims.map(|claims| expected_identity(config, claims));

    // 7. The identity namespace.
    for (name, value) in forwarded {
        if !owned(config, name) {
            continue;
        }
        let Some(identity) = &identity else {
            panic!(
                "forwarded identity header {name:?} without an Allow (decision {decision:?}, \
                 cors {cors})"
            );
        };
        match identity.get(name.as_str()) {
            Some(expected) => {
                assert_eq!(
                    value, expected,
                    "identity header {name:?} has a forged value"
                );
                assert_eq!(
                    copies(forwarded, name).len(),
                    1,
                    "identity header {name:?} forwarded more than once"
                );
            }
            None => panic!("forwarded identity header {name:?}, which the claims do not set"),
        }
    }
    if let Some(identity) = &identity {
        for (name, value) in identity {
            assert_eq!(
                copies(forwarded, name),
                [value.as_str()],
                "identity header {name:?} not set from the claims"
            );
        }
    }

    // 9. Headers the filter does not own pass as sent (the token's header and `Cookie` below).
    let token_headers = token_headers(config);
    let mut names: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        if owned(config, name) || name == "cookie" || token_headers.contains(&name) {
            continue;
        }
        assert_eq!(
            copies(forwarded, name),
            copies(sent, name),
            "header {name:?} not forwarded as sent"
        );
    }

    if cors {
        assert!(identity.is_none(), "a CORS preflight was allowed");
        for name in token_headers.iter().copied().chain(["cookie"]) {
            assert_eq!(copies(forwarded, name), copies(sent, name));
        }
        return Outcome::Unchecked;
    }
    // 4. Only a path the filter can judge is forwarded.
    let Some(asked) = asked else {
        panic!(
            "forwarded a path the filter must refuse: {:?}",
            first(sent, ":path")
        );
    };

    // 5. The requirement, the token, its scopes.
    let judged = run.calls.first().map(|(judged, _)| judged);
    let allowed_token = match (allow_claims, judged) {
        (Some(claims), Some(Judged::Found { token, source })) => {
            let index = gx
                .tokens
                .iter()
                .position(|t| t == token)
                .unwrap_or_else(|| panic!("allowed a token never issued: {token:?}"));
            let nothing_revoked = request.state == State::NotLoaded && allow_mode(config);
            assert!(
                GOOD.contains(&index) || (nothing_revoked && REVOKED.contains(&index)),
                "allowed token {index} (revoked, forged, unknown-key or expired)"
            );
            assert_eq!(**claims, gx.claims[index], "allowed with other claims");
            assert!(
                claims.has_scopes(&asked.scopes),
                "allowed token {index} lacks a scope of {:?}",
                asked.scopes
            );
            Some((token.as_str(), *source))
        }
        (Some(_), judged) => panic!("allowed on {judged:?}"),
        (None, _) => None,
    };
    match asked.require {
        Require::Required => assert!(
            allowed_token.is_some(),
            "forwarded without an Allow where a reading is `required` (decision {decision:?})"
        ),
        Require::Optional => assert!(
            allowed_token.is_some() || judged == Some(&Judged::Missing),
            "forwarded on `optional` with {judged:?}"
        ),
        Require::None => assert!(judged.is_none(), "judged on a `none` rule"),
    }

    // 6. CSRF.
    if let Some((_, source)) = allowed_token {
        let cookie = matches!(
            config.token_sources.get(source),
            Some(TokenSource::Cookie(_))
        );
        let unsafe_method = !matches!(method, Some("GET" | "HEAD" | "OPTIONS"));
        let upgrade = sent.iter().any(|(n, _)| n == "upgrade");
        if asked.csrf && cookie && (unsafe_method || upgrade) {
            let site = first(sent, "sec-fetch-site").map(str::trim);
            let origin = first(sent, "origin").map(str::trim);
            let allowed_origin = origin.is_some_and(|origin| {
                config
                    .csrf_allowed_origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            });
            assert!(
                matches!(site, Some("same-origin" | "none")) || allowed_origin,
                "a cookie-authenticated unsafe or Upgrade request from {site:?}, {origin:?} \
                 passed the CSRF rule"
            );
        }
    }

    // 8. The token.
    let strip = allowed_token.filter(|_| !asked.forward);
    if let Some((token, source)) = strip {
        for (index, name, prefix) in config
            .token_sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                TokenSource::Header { name, prefix } => Some((i, name.as_str(), prefix.as_str())),
                _ => None,
            })
        {
            let forwarded_copies = copies(forwarded, name);
            if index == source {
                assert!(
                    forwarded_copies.is_empty(),
                    "the token's header {name:?} forwarded (rule does not forward it)"
                );
                continue;
            }
            let sent_copies = copies(sent, name);
            if !sent_copies.iter().any(|value| carries(value, prefix)) {
                assert_eq!(
                    forwarded_copies, sent_copies,
                    "{name:?}, carrying no token, not forwarded as sent"
                );
                continue;
            }
            assert!(
                forwarded_copies.is_empty(),
                "{name:?} carrying a token (verified: {}) forwarded (rule does not forward it)",
                sent_copies.iter().any(|value| value.contains(token))
            );
        }
        let kept: Vec<&str> = cookie_pairs(sent)
            .into_iter()
            .filter(|pair| !is_token_cookie(config, pair))
            .collect();
        assert_eq!(
            cookie_pairs(forwarded),
            kept,
            "Cookie forwarded with a token cookie, or without another cookie"
        );
    } else {
        for name in token_headers.iter().copied().chain(["cookie"]) {
            assert_eq!(
                copies(forwarded, name),
                copies(sent, name),
                "{name:?} not forwarded as sent"
            );
        }
    }

    match (allowed_token, decision) {
        (Some(_), _) => Outcome::Allowed,
        (None, Some(Decision::Anonymous)) => Outcome::Anonymous,
        (None, _) => Outcome::Unchecked,
    }
}

/// Oracle 3 on a local reply counted under `reason`.
fn check_reply(reply: &Reply, reason: &str, run: &Run) {
    let header = |name: &str| {
        reply
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert!(
        matches!(reply.status, 400 | 401 | 403 | 503),
        "reply status {}",
        reply.status
    );
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("cache-control"), Some("no-store"));
    for (name, value) in &reply.headers {
        assert!(
            value.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "reply header {name}: {value:?} is not printable ASCII"
        );
    }
    let body: serde_json::Value =
        serde_json::from_str(&reply.body).expect("the reply body is JSON");
    let error = body["error"].as_str().expect("the body has an error");
    assert!(body["error_description"].is_string());
    let challenge = header("www-authenticate");
    let judged = !run.calls.is_empty();
    match (reply.status, reason) {
        (503, _) => {
            assert_eq!(header("retry-after"), Some("1"));
            assert_eq!(challenge, None, "a 503 with a challenge");
            assert_eq!(error, "temporarily_unavailable");
        }
        (403, "csrf") => {
            assert_eq!(challenge, None, "a CSRF refusal with a challenge");
            assert_eq!(error, "access_denied");
            assert!(!judged, "a CSRF refusal after verification");
        }
        (_, "csrf") => panic!("a CSRF refusal with status {}", reply.status),
        (401, "missing") => assert_eq!(challenge, Some("Bearer")),
        (status, _) => {
            let challenge = challenge.unwrap_or_else(|| panic!("a {status} without a challenge"));
            assert!(
                challenge.starts_with(&format!("Bearer error=\"{error}\", error_description=\"")),
                "challenge {challenge:?} for error {error}"
            );
            if reason == "insufficient_scope" {
                assert_eq!(status, 403);
                assert!(
                    challenge.contains(", scope=\""),
                    "no scope in {challenge:?}"
                );
            }
            if reason == "bad_path" {
                assert_eq!(status, 400);
                assert!(!judged, "a refused path was judged");
            }
        }
    }
    assert!(header("retry-after").is_none() || reply.status == 503);
}
