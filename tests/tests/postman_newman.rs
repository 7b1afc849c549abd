//! The Postman collection (`tests/postman/weauth.postman_collection.json` with
//! `weauth.postman_environment.json`) run by `newman` — a real client, as backend developers
//! use it — against the whole stack on free ports: a mock `wx.login` code → login through Envoy
//! → the token kept by a test script → `/api` call → refresh → the spent refresh token again
//! within the reuse grace (the same refresh token again) → user data decrypted and confirmed with WeChat →
//! logout → 401, with assertions in every step.
//!
//! newman comes from npm, locked by `tests/postman/package-lock.json` and installed with
//! `npm ci` by `make api-tools`; a missing newman fails the test naming that target. Run:
//! `make api-tools build && cargo test --target x86_64-unknown-linux-musl -p weauth-tests --test suites -- postman_newman::`.

use weauth_tests::harness::{workspace_root, Stack};

/// Every `pm.test` of the collection (one per request); each must have run and passed.
const ASSERTIONS: u64 = 12;

#[tokio::test]
async fn postman_collection_full_flow_through_envoy_passes_in_newman() {
    let dir = workspace_root().join("tests/postman");
    let newman = dir.join("node_modules/.bin/newman");
    assert!(
        newman.exists(),
        "{} not found: run `make api-tools` (npm ci in tests/postman)",
        newman.display()
    );
    let stack = match Stack::builder().start().await {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the weauth stack: {e}"),
    };
    let report = stack.dir().join("newman.json");
    // Async: the mock WeChat and the demo upstream run on this test's runtime.
    let output = tokio::process::Command::new(&newman)
        .arg("run")
        .arg(dir.join("weauth.postman_collection.json"))
        .arg("--environment")
        .arg(dir.join("weauth.postman_environment.json"))
        .args(["--env-var", &format!("edge={}", stack.envoy_url())])
        .args(["--env-var", &format!("mock={}", stack.mock_url())])
        .args(["--env-var", "user=newman"])
        .args(["--timeout-request", "10000", "--bail", "--color", "off"])
        .args(["--reporters", "cli,json", "--reporter-json-export"])
        .arg(&report)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "newman failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let assertions = &report["run"]["stats"]["assertions"];
    assert_eq!(assertions["failed"], 0, "{assertions}");
    assert_eq!(
        assertions["total"], ASSERTIONS,
        "every step's assertion ran"
    );
    stack.shutdown().await;
}
