//! Fuzz target `issuer_http`: the issuer's pure parsers of request headers — `find_cookie`,
//! `same_origin_request` (the cookie CSRF rule), `client_ip`/`client_key` (X-Forwarded-For
//! behind trusted proxies), `bearer`, `parse_traceparent` and `parse_b3` — on one hostile
//! request. The logic and its oracles live in `weauth_fuzz::issuer_harness`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weauth_fuzz::issuer_harness as harness;

fuzz_target!(|data: &[u8]| {
    harness::issuer_http(data);
});
