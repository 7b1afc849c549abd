//! The end-to-end suites, built as ONE test binary: each file beside this one is a suite, a
//! module here (`cargo test -p weauth-tests --test suites -- e2e_filter::` runs one; the
//! Makefile's streams select suites this way). Every suite links the harness, the issuer's
//! dependencies and the mock WeChat; as a binary each, the 18 suites cost about 69
//! CPU-seconds of a fresh build (one link each), one binary about 15. Cargo builds only this
//! file's crate (`autotests = false` in Cargo.toml): a new suite is declared below, and
//! [`every_suite_file_is_declared`] fails for a file that is not (here and in
//! `issuer/tests/main.rs`, which is built the same way).

mod api_schemathesis;
mod deploy_native;
mod e2e_attacks;
mod e2e_browser;
mod e2e_cluster;
mod e2e_faults;
mod e2e_filter;
mod e2e_grants;
mod e2e_jwt_authn;
mod e2e_listeners;
mod e2e_login;
mod e2e_paths;
mod e2e_replicas;
mod e2e_walkthrough;
mod harness_stack;
mod mock_wechat;
mod monitoring;
mod postman_newman;

use std::path::Path;

/// A suite file that its folder's `main.rs` does not declare is never compiled, and its tests
/// never run, without a word from cargo.
#[test]
fn every_suite_file_is_declared() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for folder in ["issuer/tests", "tests/tests"] {
        let dir = workspace.join(folder);
        let root = std::fs::read_to_string(dir.join("main.rs")).unwrap();
        let declared: Vec<&str> = root
            .lines()
            .filter_map(|line| line.strip_prefix("mod ")?.strip_suffix(';'))
            .collect();
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "rs")
                && stem != "main"
                && !declared.contains(&stem)
            {
                missing.push(stem.to_owned());
            }
        }
        assert!(
            missing.is_empty(),
            "{folder}/main.rs does not declare {missing:?}: add `mod <name>;` for each, or its \
             tests are never built"
        );
    }
}
