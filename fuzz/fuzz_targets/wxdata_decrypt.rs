//! Fuzz target `wxdata_decrypt`: `weauth_wxdata::decrypt` with the input split into its arguments, or as a plaintext.
//! The logic and its oracle live in `weauth_fuzz::wxdata_harness`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::wxdata_harness as harness;

fuzz_target!(|data: &[u8]| {
    harness::wxdata_decrypt(data);
});
