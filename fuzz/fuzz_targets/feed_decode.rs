//! Fuzz target `feed_decode`: the revocation feed decoder, `serde_json::from_slice::<FeedResponse>`, with a round-trip oracle.
//! The logic and its oracle live in `weauth_fuzz::token_harness`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::token_harness as harness;

fuzz_target!(|data: &[u8]| {
    harness::feed_decode(data);
});
