//! The issuer against its own OpenAPI description, with `schemathesis` (PyPI, pinned, installed
//! into `.tools/` by `make api-tools`): generated requests to every operation of the live
//! issuer's `GET /openapi.json` must get no 5xx, and every status code, content type, header
//! and body must conform to the description.
//!
//! Two bounded, seeded runs (reproducible): every operation without credentials, then the
//! operations of a logged-in user with a real access token (`logout` excluded, so the token
//! lives through the run). The feed and admin operations are exercised unauthenticated only: an
//! authenticated feed call may legitimately hold a generated `wait` of up to 60 s.
//!
//! A missing tool fails the test, naming the make target; it is never skipped. Run:
//! `make api-tools build && cargo test --target x86_64-unknown-linux-musl -p weauth-tests --test suites -- api_schemathesis::`.

use std::path::PathBuf;

use weauth_tests::harness::{workspace_root, Stack};

/// Examples per operation and phase: enough to cover every schema branch, bounded for CI.
const MAX_EXAMPLES: &str = "10";
const SEED: &str = "20261126";

fn schemathesis() -> PathBuf {
    let path = workspace_root().join(".tools/bin/schemathesis");
    assert!(
        path.exists(),
        "{} not found: run `make api-tools` (installs schemathesis from PyPI into .tools/)",
        path.display()
    );
    path
}

/// Runs schemathesis against the issuer with `extra` arguments; panics with its output on
/// failure.
async fn run(stack: &Stack, what: &str, extra: &[&str]) {
    let schema = format!("{}/openapi.json", stack.issuer_url());
    // Async: the mock WeChat runs on this test's runtime and must keep answering meanwhile.
    let output = tokio::process::Command::new(schemathesis())
        .arg("run")
        .arg(&schema)
        .args(["--url", &stack.issuer_url()])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
        // Hypothesis' `too_slow` health check times the data generation itself: on a loaded
        // machine it failed a run whose every request conformed (`POST /v1/admin/ban`, with
        // two `make test` runs on two cores). It says nothing about the issuer; the other
        // health checks stay on.
        .args(["--suppress-health-check", "too_slow"])
        .args(extra)
        // Its caches (`.schemathesis/`) go to the stack's temporary directory.
        .current_dir(stack.dir())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The summary, so the test log shows what ran.
    let tail: Vec<&str> = stdout.lines().rev().take(12).collect();
    println!(
        "schemathesis ({what}):\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        output.status.success(),
        "schemathesis ({what}) found problems ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

#[tokio::test]
async fn openapi_live_issuer_conforms_under_schemathesis() {
    let stack = match Stack::builder().without_envoy().start().await {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the issuer: {e}"),
    };
    // The user logs in first: the anonymous run posts to /v1/login as often as hypothesis
    // likes and can empty the login rate limit's bucket (this login then got 429).
    let user = {
        let code = stack.mock.login("schemathesis").code;
        let resp = stack
            .client()
            .post(format!("{}/v1/login", stack.issuer_url()))
            .json(&serde_json::json!({ "code": code }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<weauth_tests::harness::TokenResponse>()
            .await
            .unwrap()
    };
    run(&stack, "anonymous", &[]).await;
    let header = format!("Authorization: Bearer {}", user.access_token);
    run(
        &stack,
        "user",
        &[
            "--include-tag",
            "user",
            "--header",
            &header,
            "--output-sanitize",
            "true",
        ],
    )
    .await;
    stack.shutdown().await;
}
