//! Replays the issuer's fuzz inputs as ordinary tests (`cargo test --workspace`): for the fuzz
//! target `issuer_http`, every committed seed in `fuzz/seeds/issuer_http/`, every crash the
//! fuzzer found in `fuzz/regressions/issuer_http/` (none is fine: the seeds still run) and a
//! set of large generated hostile inputs go through the very harness the fuzzer runs
//! (`fuzz/src/issuer_harness.rs`, included below), which calls the issuer's pure header
//! parsers (cookies, the CSRF origin rule, X-Forwarded-For, bearer, traceparent and B3) and
//! asserts its oracles. A seed that breaks an oracle fails this test. Here the outcome of the
//! named seeds is also pinned, so the oracles are exercised both ways.

#[path = "../../fuzz/src/issuer_harness.rs"]
mod harness;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

use std::net::IpAddr;

use harness::Outcome;
use replay::{count, inputs, run_all, Origin};

fn file_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A seed's file name and what it must come to.
type Expectation = (&'static str, fn(&Outcome) -> bool);

/// What each named seed must come to (a seed not named here only has to pass the oracles).
fn expectations() -> Vec<Expectation> {
    vec![
        ("cookie-several-names", |o| {
            o.cookies_one >= 5 && o.cookies_several == 0
        }),
        ("cookie-twice-across-lines", |o| o.cookies_several == 1),
        ("cookie-twice-in-one-line", |o| o.cookies_several == 1),
        ("cookie-non-ascii-neighbours", |o| o.cookies_one >= 2),
        ("cookie-unicode-space-name", |o| o.cookies_several == 0),
        ("origin-allowed", |o| o.same_origin),
        ("origin-null-referer-allowed", |o| !o.same_origin),
        ("referer-only-allowed", |o| o.same_origin),
        ("origin-other-port", |o| !o.same_origin),
        ("origin-userinfo", |o| !o.same_origin),
        ("origin-uppercase-default-port", |o| o.same_origin),
        ("origin-ipv6", |o| o.same_origin),
        ("origin-loopback-port", |o| o.same_origin),
        ("origin-suffix-host", |o| !o.same_origin),
        ("referer-evil-path", |o| !o.same_origin),
        ("origin-invalid-referer-allowed", |o| !o.same_origin),
        ("origin-twice", |o| !o.same_origin),
        ("xff-trusted-chain", |o| o.client == ip("203.0.113.7")),
        ("xff-untrusted-peer", |o| o.client == ip("198.51.100.1")),
        ("xff-ipv6-brackets-and-ports", |o| {
            o.client == ip("2001:db8::8")
        }),
        ("xff-ipv6-port-rightmost", |o| o.client == ip("2001:db8::7")),
        ("xff-ipv4-port", |o| o.client == ip("203.0.113.4")),
        ("xff-two-lines", |o| o.client == ip("1.2.3.4")),
        ("xff-v4-mapped", |o| o.client == ip("::ffff:203.0.113.5")),
        ("xff-all-trusted", |o| o.client == ip("10.0.0.2")),
        ("xff-garbage-hops", |o| o.client == ip("203.0.113.1")),
        ("xff-empty", |o| o.client == ip("10.0.0.1")),
        ("xff-ipv6-client", |o| {
            o.client == ip("2001:db8:1:2:3:4:5:6")
        }),
        ("xff-no-trusted-nets", |o| o.client == ip("10.0.0.1")),
        ("not-an-address", |o| o.client == ip("1.2.3.4")),
        ("bearer-ok", |o| {
            o.bearer.as_deref().is_some_and(|t| t.starts_with("eyJ"))
        }),
        ("bearer-lowercase-spaces", |o| {
            o.bearer.as_deref() == Some("tok_123")
        }),
        ("bearer-basic", |o| o.bearer.is_none()),
        ("bearer-empty", |o| o.bearer.is_none()),
        ("bearer-tab", |o| o.bearer.is_none()),
        ("bearer-scheme-only", |o| o.bearer.is_none()),
        ("bearer-multibyte-scheme", |o| o.bearer.is_none()),
        ("traceparent-spec", |o| o.traceparent.is_some_and(|t| t.2)),
        ("traceparent-unsampled", |o| {
            o.traceparent.is_some_and(|t| !t.2)
        }),
        ("traceparent-future-version", |o| o.traceparent.is_some()),
        ("traceparent-future-no-dash", |o| o.traceparent.is_none()),
        ("traceparent-version-ff", |o| o.traceparent.is_none()),
        ("traceparent-uppercase", |o| o.traceparent.is_none()),
        ("traceparent-zero-trace", |o| o.traceparent.is_none()),
        ("traceparent-zero-parent", |o| o.traceparent.is_none()),
        ("traceparent-00-with-suffix", |o| o.traceparent.is_none()),
        ("traceparent-short", |o| o.traceparent.is_none()),
        ("traceparent-spaces-flags-ff", |o| {
            o.traceparent.is_some_and(|t| t.2)
        }),
        ("b3-single-full", |o| {
            o.b3.is_some_and(|b| b.2 == Some(true))
        }),
        ("b3-single-debug", |o| {
            o.b3.is_some_and(|b| b.2 == Some(true))
        }),
        ("b3-single-unsampled", |o| {
            o.b3.is_some_and(|b| b.2 == Some(false))
        }),
        ("b3-single-64bit", |o| {
            o.b3.is_some_and(|b| b.0[..8] == [0; 8] && b.2.is_none())
        }),
        ("b3-deny-only", |o| o.b3.is_none()),
        ("b3-single-bad-sampling", |o| o.b3.is_none()),
        ("b3-single-too-many", |o| o.b3.is_none()),
        ("b3-multi", |o| o.b3.is_some_and(|b| b.2 == Some(true))),
        ("b3-multi-flags-debug", |o| {
            o.b3.is_some_and(|b| b.2 == Some(true))
        }),
        ("b3-multi-legacy-true", |o| {
            o.b3.is_some_and(|b| b.2 == Some(true))
        }),
        ("b3-multi-uppercase", |o| o.b3.is_none()),
        ("b3-deny-beats-multi", |o| o.b3.is_none()),
        ("b3-single-bad-falls-back-to-multi", |o| {
            o.b3.is_some_and(|b| b.2 == Some(true))
        }),
        ("browser-post-behind-envoy", |o| {
            o.same_origin
                && o.client == ip("2001:db8:1:2::99")
                && o.cookies_one >= 3
                && o.bearer.is_some()
                && o.traceparent.is_some()
                && o.b3.is_some()
        }),
    ]
}

#[test]
fn issuer_http_inputs_never_panic_and_oracles_hold() {
    let all = inputs(&replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")), "issuer_http");
    assert!(
        count(&all, Origin::Seed) >= 60,
        "fuzz/seeds/issuer_http/ has fewer than 60 seeds: the corpus was lost"
    );
    let mut outcomes = Vec::new();
    run_all(&all, |input| {
        let outcome = harness::issuer_http(&input.data);
        outcomes.push((file_name(&input.name).to_owned(), outcome));
    });
    let mut wrong = Vec::new();
    for (name, expected) in expectations() {
        match outcomes.iter().find(|(n, _)| n == name) {
            None => wrong.push(format!("{name}: no such seed")),
            Some((_, outcome)) if !expected(outcome) => {
                wrong.push(format!("{name}: came to {outcome:?}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "seeds with another outcome:\n{}",
        wrong.join("\n")
    );
    // Every branch the oracles judge is reached by some seed.
    let any = |f: fn(&Outcome) -> bool| outcomes.iter().any(|(_, o)| f(o));
    assert!(any(|o| o.cookies_several > 0) && any(|o| o.cookies_one > 0));
    assert!(any(|o| o.same_origin) && any(|o| !o.same_origin));
    assert!(any(|o| o.client != o.peer));
    assert!(any(|o| o.bearer.is_some()));
    assert!(any(|o| o.traceparent.is_some()) && any(|o| o.b3.is_some()));
}
