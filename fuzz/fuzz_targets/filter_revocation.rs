//! Fuzz target `filter_revocation`: the filter's revocation set (feed `apply`, `check`, the
//! shared-data shard and meta codecs, `Replica::sync`). The logic and its oracles live in
//! `weauth_fuzz::filter_harness`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::filter_harness as harness;

fuzz_target!(|data: &[u8]| {
    harness::filter_revocation(data);
});
