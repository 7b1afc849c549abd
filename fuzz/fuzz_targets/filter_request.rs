//! Fuzz target `filter_request`: one request through the filter's pure request path
//! (`extract_token`, `rule_for_path`, `decide` twice, the second time from the cache). The logic and
//! its oracles live in `weauth_fuzz::filter_harness`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weauth_filter::config::Config;
use weauth_fuzz::filter_harness as harness;
use weauth_fuzz::fixture::Fixture;

/// Built once per process: keys, tokens and config are deterministic, and rebuilding them on
/// every input would only slow the fuzzer down.
static STATE: OnceLock<(Fixture, Config)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (fixture, config) = STATE.get_or_init(|| {
        let config = Config::parse(harness::CONFIG.as_bytes()).expect("the fixture config parses");
        (Fixture::new(), config)
    });
    harness::filter_request(fixture, config, data);
});
