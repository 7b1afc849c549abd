//! The issuer's integration tests, built as ONE test binary: each file beside this one is a
//! suite, a module here (`cargo test -p weauth-issuer --test issuer -- login::` runs one).
//! Every suite links the whole issuer and its dependencies; as a binary each, the 12 suites
//! cost about 64 CPU-seconds of a fresh build (one link each), one binary about 20. Cargo builds
//! only this file's crate (`autotests = false` in Cargo.toml): a new suite is declared below,
//! which `tests/tests/main.rs`'s `every_suite_file_is_declared` checks.

// Test code: unwrap/expect/panic are how a test fails (the lints guard the service code).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod access_token;
mod fuzz_regressions;
mod grants;
mod layers;
mod login;
mod mysql;
mod operator;
mod router;
mod service;
mod sessions;
mod userdata;
mod web;
