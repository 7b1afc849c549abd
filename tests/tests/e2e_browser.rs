//! The web-login browser test: boots the stack with several apps ([`StackBuilder::web_login`]:
//! a mini-program, an official account and a website bound to one Open Platform account), logs
//! "alice" in through the mini-program first, then runs `tests/browser/web_login.test.mjs`
//! (Node's test runner, playwright-core driving Debian's Chromium) against it: the demo page
//! behind Envoy → `/v1/web/authorize` → the mock's authorize page → the callback → back with
//! cookies → `fetch('/api/...')` reaches the upstream with the identity headers and alice's
//! mini-program `sub`; cookie refresh; logout → 401; replayed, forged and other-browser
//! states refused; an off-list `redirect_uri` refused without a redirect; refused consent; a
//! cross-site and a same-site cross-origin POST refused.
//!
//! Needs what `make browser-setup` installs (Chromium, Node.js, `tests/browser/node_modules`)
//! besides the usual binaries; a missing one fails the test with the make target to run, it is
//! never skipped. Run: `make build browser-setup && cargo test --target x86_64-unknown-linux-musl
//! -p weauth-tests --test suites -- e2e_browser::`.
//!
//! [`StackBuilder::web_login`]: weauth_tests::harness::StackBuilder::web_login

use std::path::Path;
use std::time::Duration;

use weauth_tests::harness::{peek_claims, workspace_root, Stack};
use weauth_tests::mock_wechat::MockApp;

fn check_browser_tools(dir: &Path, chromium: &str) {
    assert!(
        Path::new(chromium).exists(),
        "{chromium} is missing: run `make browser-setup` (installs Debian's chromium), or set WEAUTH_CHROMIUM"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "{}/node_modules is missing: run `make browser-setup` (npm ci)",
        dir.display()
    );
}

#[tokio::test]
async fn web_login_in_chromium_through_envoy() {
    let dir = workspace_root().join("tests/browser");
    let chromium = std::env::var("WEAUTH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    check_browser_tools(&dir, &chromium);
    let stack = match Stack::builder().web_login().start().await {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the weauth stack: {e}"),
    };
    let mini = stack
        .login("alice")
        .await
        .expect("mini-program login of alice");
    let mini_sub = peek_claims(&mini.access_token)
        .expect("access token is a JWT")
        .sub;

    // `node FILE` (not `node --test`, which would run the file in a child process that
    // survives a kill): killing node closes Playwright's pipe, and Chromium exits with it.
    let out_path = stack.dir().join("browser.out");
    let err_path = stack.dir().join("browser.err");
    let mut child = tokio::process::Command::new("node")
        .arg("--test-reporter=spec")
        .arg("web_login.test.mjs")
        .current_dir(&dir)
        .env("WEAUTH_ENVOY_URL", stack.envoy_url())
        .env("WEAUTH_ISSUER_URL", stack.issuer_url())
        .env("WEAUTH_MOCK_URL", stack.mock_url())
        .env("WEAUTH_OA_APPID", MockApp::official_account().appid)
        .env("WEAUTH_MINI_SUB", &mini_sub)
        .env("WEAUTH_CHROMIUM", &chromium)
        .stdout(std::fs::File::create(&out_path).expect("browser.out"))
        .stderr(std::fs::File::create(&err_path).expect("browser.err"))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (run `make browser-setup`): {e}"));
    let status = tokio::time::timeout(Duration::from_secs(240), child.wait()).await;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    println!("{stdout}");
    eprintln!("{stderr}");
    let status = match status {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("waiting for node: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("the browser test did not finish within 240 s (output above)");
        }
    };
    assert!(
        status.success(),
        "the browser test failed ({status}); issuer log:\n{}",
        weauth_tests::harness::tail_file(&stack.issuer_log(), 40)
    );
    // Node's runner reports its counts: make sure tests actually ran.
    assert!(
        stdout.contains("ℹ pass 9"),
        "expected 9 passing browser tests:\n{stdout}"
    );
    stack.shutdown().await;
}
