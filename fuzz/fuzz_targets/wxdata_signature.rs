//! Fuzz target `wxdata_signature`: `weauth_wxdata::check_raw_data_signature` and the checksession signature.
//! The logic and its oracle live in `weauth_fuzz::wxdata_harness`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::wxdata_harness as harness;

fuzz_target!(|data: &[u8]| {
    harness::wxdata_signature(data);
});
