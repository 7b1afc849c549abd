//! Fuzz target `jws_verify_mutated`: `weauth_token::verify` on a valid token edited by the input (gets past base64 and JSON).
//! The logic and its oracle live in `weauth_fuzz::token_harness`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::token_harness::{self as harness, Fixture};

/// Built once per process: keys and tokens are deterministic, and signing them
/// on every input would only slow the fuzzer down.
static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(Fixture::new)
}

fuzz_target!(|data: &[u8]| {
    harness::jws_verify_mutated(fixture(), data);
});
