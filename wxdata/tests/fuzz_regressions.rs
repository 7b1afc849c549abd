//! Replays the wxdata crate's fuzz inputs as ordinary tests (`cargo test --workspace`): for the
//! fuzz targets `wxdata_decrypt` and `wxdata_signature`, every committed seed in
//! `fuzz/seeds/<target>/`, every crash the fuzzer found in `fuzz/regressions/<target>/` (none
//! is fine: the seeds still run) and a set of large generated hostile inputs go through the
//! very harness the fuzzer runs (`fuzz/src/wxdata_harness.rs`, included below), which calls the
//! production functions and asserts its oracles.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/wxdata_harness.rs"]
mod harness;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

use replay::{count, inputs, run_all, Origin};

fn load(target: &str, min_seeds: usize) -> Vec<replay::Input> {
    let all = inputs(&replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")), target);
    assert!(
        count(&all, Origin::Seed) >= min_seeds,
        "fuzz/seeds/{target}/ has fewer than {min_seeds} seeds: the corpus was lost"
    );
    all
}

#[test]
fn wxdata_decrypt_inputs_never_panic_and_oracles_hold() {
    let all = load("wxdata_decrypt", 20);
    let mut accepted = Vec::new();
    run_all(&all, |input| {
        if harness::wxdata_decrypt(&input.data) {
            accepted.push(input.name.clone());
        }
    });
    // Exactly the well-formed seeds decrypt: the three "ok" vectors, the two plaintexts with
    // this app's fresh watermark, and one whose timestamp is i64::MAX (a future timestamp is
    // accepted by design: clocks differ; see `decrypt`'s docs). Everything else is refused.
    let mut names: Vec<&str> = accepted
        .iter()
        .map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "plain-ok",
            "plain-ok-max-age-0",
            "plain-timestamp-max",
            "vector-full_padding_block_ok",
            "vector-phone_number_ok",
            "vector-user_info_ok",
        ]
    );
}

#[test]
fn wxdata_signature_inputs_never_panic_and_oracles_hold() {
    let all = load("wxdata_signature", 8);
    let mut accepted = Vec::new();
    run_all(&all, |input| {
        if harness::wxdata_signature(&input.data) {
            accepted.push(input.name.clone());
        }
    });
    // "accepted" includes inputs without a signature field (nothing to refuse); the seeds with
    // a signature that is accepted are exactly the two spellings of the right one.
    let with_sig: Vec<&str> = accepted
        .iter()
        .map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n))
        .filter(|n| ["valid", "valid-uppercase", "short", "long", "non-hex"].contains(n))
        .collect();
    assert_eq!(with_sig, ["valid", "valid-uppercase"]);
}
