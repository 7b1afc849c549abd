//! An allowed request whose token is cached allocates nothing in the filter: the request glue
//! and the native build's state (`native::View`: the shared keys and revocation set, this
//! thread's token cache) on a host that hands out its headers without allocating, as the
//! native host does (Envoy's own header map, views on the stack). `perf` put the module's
//! whole cost on an allowed request at about 0.6 µs; an allocation and its free are tens of ns
//! each, so one slipping back into the hot path is worth a failing test. Counted, not timed: a
//! global allocator that counts this thread's allocations (its own test binary).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::cell::Cell;

use weauth_filter::config::Config;
use weauth_filter::fetch::Publish;
use weauth_filter::headers::Header;
use weauth_filter::host::{Host, Level, Now, Stats};
use weauth_filter::native::{Shared, View};
use weauth_filter::request::{self, Flow};
use weauth_token::{Algorithm, Jwks, SigningKey};

#[path = "support/request_fixture.rs"]
mod fixture;
use fixture::{revocations, NOW};

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const ISSUER: &str = "https://issuer.test";

/// A request as the bench sends it, held in fixed storage (no allocation to read it).
struct FixedHost {
    authorization: String,
    edits: usize,
    replied: Option<u16>,
}

impl Host for FixedHost {
    fn now(&self) -> Now {
        Now::wall(u64::try_from(NOW).unwrap() * 1000)
    }
    fn log(&self, _level: Level, _message: &str) {}
    fn with_request_headers<R>(&self, read: impl FnOnce(&[Header<'_>]) -> R) -> R {
        let headers: [Header<'_>; 8] = [
            (Cow::Borrowed(":method"), Cow::Borrowed("GET")),
            (Cow::Borrowed(":path"), Cow::Borrowed("/api/me")),
            (
                Cow::Borrowed(":authority"),
                Cow::Borrowed("api.example.com"),
            ),
            (Cow::Borrowed(":scheme"), Cow::Borrowed("https")),
            (Cow::Borrowed("user-agent"), Cow::Borrowed("wrk/4.2")),
            (
                Cow::Borrowed("authorization"),
                Cow::Borrowed(self.authorization.as_str()),
            ),
            (Cow::Borrowed("accept"), Cow::Borrowed("*/*")),
            // A browser's other cookies (no token among them).
            (
                Cow::Borrowed("cookie"),
                Cow::Borrowed("_ga=GA1.2.3; theme=dark"),
            ),
        ];
        read(&headers)
    }
    fn set_request_header(&mut self, _name: &str, _value: &str) -> bool {
        self.edits += 1;
        true
    }
    fn add_request_header(&mut self, _name: &str, _value: &str) -> bool {
        self.edits += 1;
        true
    }
    fn remove_request_header(&mut self, _name: &str) -> bool {
        self.edits += 1;
        true
    }
    fn headers_edited(&mut self) {}
    fn send_local_reply(&mut self, status: u16, _headers: &[(&str, &str)], _body: &[u8]) {
        self.replied = Some(status);
    }
}

struct NoStats;

impl Stats for NoStats {
    fn allowed(&self) {}
    fn anonymous(&self) {}
    fn cache_hit(&self) {}
    fn cache_miss(&self) {}
    fn denied(&self, _reason: &'static str) {}
    fn count(&self, _name: &'static str) {}
}

/// The filter's configuration with the key's JWKS inline; `job` adds the rest.
fn config(key: &SigningKey, job: serde_json::Value) -> Config {
    let jwks = Jwks {
        keys: vec![key.jwk()],
    };
    let mut json = serde_json::json!({
        "issuer": ISSUER,
        "audiences": ["weauth"],
        "algorithms": ["EdDSA"],
        "jwks": {"inline": jwks},
        "rules": [{"prefix": "/", "require": "required"}],
        "revocation": {"cluster": "weauth_feed", "credential": "test-feed-credential",
                       "path": "/v1/revocations", "stale_after_seconds": 60,
                       "stale_mode": "deny", "wait_seconds": 20},
    });
    json.as_object_mut()
        .unwrap()
        .extend(job.as_object().unwrap().clone());
    Config::parse(json.to_string().as_bytes()).unwrap()
}

fn token(key: &SigningKey) -> String {
    weauth_token::sign(&fixture::claims(ISSUER), key).unwrap()
}

/// Allocations over 100 allowed requests after the token was cached, and the edits made;
/// revocation on, with a set of 1 000 other tokens loaded (as the bench's 1M rows, smaller).
fn allocations_per_allowed_request(job: serde_json::Value) -> (usize, usize) {
    let key = SigningKey::from_seed(Algorithm::EdDSA, &[7u8; 32]).unwrap();
    let shared = Shared::new(config(&key, job));
    let set = revocations(1000);
    let now_ms = u64::try_from(NOW).unwrap() * 1000;
    (&shared).publish_set(set, &[0], now_ms);
    assert!(shared.revocation().is_some_and(|rev| rev.set.len() == 1000));
    let mut host = FixedHost {
        authorization: format!("Bearer {}", token(&key)),
        edits: 0,
        replied: None,
    };
    let run = |host: &mut FixedHost| {
        let mut view = View { shared: &shared };
        request::on_request_headers(host, &shared.config, &mut view, &NoStats)
    };
    // The first request verifies the signature and caches the token.
    assert_eq!(run(&mut host), Flow::Continue);
    let (before, edits_before) = (allocations(), host.edits);
    for _ in 0..100 {
        assert_eq!(run(&mut host), Flow::Continue, "{:?}", host.replied);
    }
    (allocations() - before, host.edits - edits_before)
}

#[test]
fn allowed_cached_request_doing_plain_jwt_authn_job_allocates_nothing() {
    let plain = serde_json::json!({"forward_authorization": true, "claim_to_headers": []});
    assert_eq!(allocations_per_allowed_request(plain), (0, 0));
}

#[test]
fn allowed_cached_request_setting_identity_headers_allocates_nothing() {
    // Two identity headers added and the token removed: three edits a request.
    let identity = serde_json::json!({"claim_to_headers": [
        {"claim": "sub", "header": "x-weauth-sub"},
        {"claim": "openid", "header": "x-weauth-openid"},
    ]});
    assert_eq!(allocations_per_allowed_request(identity), (0, 300));
}

#[test]
fn allowed_cached_request_with_a_cookie_source_and_other_cookies_allocates_nothing() {
    // The token cookie is looked for to take it out too (forward_authorization off): the
    // request's other cookies are read, not copied.
    let cookie_source = serde_json::json!({"token_sources": [
        {"header": "authorization", "prefix": "Bearer "}, {"cookie": "weauth_at"}
    ], "claim_to_headers": [
        {"claim": "sub", "header": "x-weauth-sub"},
        {"claim": "openid", "header": "x-weauth-openid"},
    ]});
    assert_eq!(allocations_per_allowed_request(cookie_source), (0, 300));
}
