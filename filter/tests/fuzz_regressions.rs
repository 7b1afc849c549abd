//! Replays the filter's fuzz inputs as ordinary tests (`cargo test --workspace`): for the fuzz
//! targets `filter_config`, `filter_revocation` and `filter_request`, every committed seed in
//! `fuzz/seeds/<target>/`, every crash the fuzzer found in `fuzz/regressions/<target>/` (none
//! is fine: the seeds still run) and a set of large generated hostile inputs go through the
//! very harness the fuzzer runs (`fuzz/src/filter_harness.rs`, included below), which calls
//! the filter's pure functions and asserts its oracles. A panic in any of them would kill the
//! Envoy VM serving every request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/filter_harness.rs"]
mod filter_harness;
#[path = "../../fuzz/src/fixture.rs"]
mod fixture;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

use filter_harness as harness;
use replay::{count, inputs, run_all, Origin};
use weauth_filter::config::Config;

fn load(target: &str, min_seeds: usize) -> Vec<replay::Input> {
    let all = inputs(&replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")), target);
    assert!(
        count(&all, Origin::Seed) >= min_seeds,
        "fuzz/seeds/{target}/ has fewer than {min_seeds} seeds: the corpus was lost"
    );
    all
}

fn file_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

#[test]
fn filter_config_inputs_never_panic_and_limits_hold() {
    let all = load("filter_config", 20);
    let mut accepted = Vec::new();
    run_all(&all, |input| {
        if harness::filter_config(&input.data) {
            accepted.push(file_name(&input.name).to_owned());
        }
    });
    for good in ["minimal-inline", "interfaces-remote"] {
        assert!(accepted.iter().any(|n| n == good), "{good} refused");
    }
    for bad in [
        "alg-none",
        "unknown-field",
        "skew-negative",
        "max-token-bytes-zero",
        "jwks-both-forms",
        "deep-nesting",
        "invalid-utf8",
    ] {
        assert!(!accepted.iter().any(|n| n == bad), "{bad} accepted");
    }
    assert!(harness::filter_config(harness::CONFIG.as_bytes()));
}

#[test]
fn filter_revocation_inputs_never_panic_and_entries_revoke() {
    let all = load("filter_revocation", 20);
    let mut applied = 0;
    run_all(&all, |input| {
        applied += harness::filter_revocation(&input.data)
    });
    assert!(applied >= 10, "only {applied} feeds or blobs were usable");
}

#[test]
fn filter_request_inputs_only_issued_unrevoked_tokens_allowed() {
    let fx = fixture::Fixture::new();
    let config = Config::parse(harness::CONFIG.as_bytes()).unwrap();
    let all = load("filter_request", 15);
    let mut allowed = Vec::new();
    run_all(&all, |input| {
        if harness::filter_request(&fx, &config, &input.data) {
            allowed.push(file_name(&input.name).to_owned());
        }
    });
    allowed.sort();
    assert_eq!(
        allowed,
        [
            "valid-eddsa-header",
            "valid-hs256-cookie",
            "valid-hs256-query"
        ]
    );
}

#[test]
fn filter_cache_inputs_cached_decisions_equal_uncached() {
    let fx = fixture::Fixture::new();
    let all = load("filter_cache", 5);
    let mut allowed = 0;
    run_all(&all, |input| {
        allowed += harness::filter_cache(&fx, &input.data)
    });
    assert!(allowed >= 5, "only {allowed} requests were allowed");
}

/// Writes the filter_request seeds that carry the fixture's tokens. Run by hand after a
/// change to the token format:
/// `cargo test -p weauth-filter --test fuzz_regressions -- --ignored write_generated_seeds`.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand"]
fn write_generated_seeds() {
    let fx = fixture::Fixture::new();
    let dir = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join("filter_request");
    std::fs::create_dir_all(&dir).unwrap();
    let [eddsa, es256, hs256] = [&fx.tokens[0], &fx.tokens[1], &fx.tokens[2]];
    let seeds: [(&str, String); 6] = [
        (
            "valid-eddsa-header",
            format!("/api/x\u{ff}authorization:Bearer {eddsa}"),
        ),
        (
            "valid-hs256-cookie",
            format!("/api/x\u{ff}cookie:a=1; weauth_at={hs256}"),
        ),
        ("valid-hs256-query", format!("/api/x?access_token={hs256}")),
        (
            "revoked-es256",
            format!("/api/x\u{ff}authorization:Bearer {es256}"),
        ),
        (
            "insufficient-scope",
            format!("/admin/x\u{ff}authorization:Bearer {eddsa}"),
        ),
        (
            "truncated-token",
            format!(
                "/api/x\u{ff}authorization:Bearer {}",
                &eddsa[..eddsa.len() - 1]
            ),
        ),
    ];
    for (name, text) in seeds {
        // U+00FF stands for the 0xFF separator byte.
        let bytes: Vec<u8> = text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
