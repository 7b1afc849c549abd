//! weauth's fuzz harnesses, one module per crate under test. The libFuzzer targets in
//! `fuzz_targets/` are one-line wrappers around these functions, and the crates' replay tests
//! (`token/tests/fuzz_regressions.rs`, `wxdata/tests/fuzz_regressions.rs`,
//! `filter/tests/fuzz_regressions.rs`, `filter/tests/fuzz_glue.rs`,
//! `issuer/tests/fuzz_regressions.rs`) include the same module files with `#[path]`, so every
//! committed crash input and seed replays through the same code under plain
//! `cargo test --workspace`.

pub mod filter_harness;
pub mod fixture;
pub mod glue_harness;
pub mod issuer_harness;
pub mod replay;
pub mod token_harness;
pub mod wxdata_harness;
