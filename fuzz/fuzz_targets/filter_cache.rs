//! Fuzz target `filter_cache`: sequences of requests, revocations, clock steps and key-set
//! changes through the filter's `decide` with a long-lived token cache, checked against
//! `decide` without one. The logic and its oracle live in `weauth_fuzz::filter_harness`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::filter_harness as harness;
use weauth_fuzz::fixture::Fixture;

/// Built once per process: keys and tokens are deterministic, and signing them on every input
/// would only slow the fuzzer down.
static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    harness::filter_cache(FIXTURE.get_or_init(Fixture::new), data);
});
