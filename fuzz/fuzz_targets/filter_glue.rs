//! Fuzz target `filter_glue`: one request through the filter's whole per-request glue
//! (`weauth_filter::request::on_request_headers`) against a mock host that keeps the header
//! map as Envoy does, twice (the second time the token cache is warm). The logic and its
//! oracles on the forwarded request or the local reply live in `weauth_fuzz::glue_harness`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::glue_harness::{self as harness, GlueFixture};

/// Built once per process: keys, tokens, configurations and the revocation set are
/// deterministic, and rebuilding them on every input would only slow the fuzzer down.
static FIXTURE: OnceLock<GlueFixture> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    harness::filter_glue(FIXTURE.get_or_init(GlueFixture::new), data);
});
