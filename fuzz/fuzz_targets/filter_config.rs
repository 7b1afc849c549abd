//! Fuzz target `filter_config`: the filter's plugin-configuration parser, `Config::parse`, on
//! arbitrary bytes. The logic and its oracle live in `weauth_fuzz::filter_harness`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::filter_harness as harness;

fuzz_target!(|data: &[u8]| {
    harness::filter_config(data);
});
