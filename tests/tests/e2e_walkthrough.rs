//! The README as a new user meets it: a fresh stack's Envoy stats carry no refusals and no 5xx
//! of the harness's own making, and the README's walkthroughs (the blocks `make up` prints),
//! run as shell scripts with `curl` against a stack on free ports, do what their comments say.

use std::process::Stdio;
use std::time::Duration;

use weauth_tests::harness::{stat_value, Stack};
use weauth_tests::walkthrough::{self, README};

/// Runs walkthrough `name` of the README with bash against `stack`; returns its stdout.
async fn run(stack: &Stack, name: &str) -> String {
    let script = walkthrough::block(README, name)
        .unwrap_or_else(|| panic!("README.md has no walkthrough:{name} block"));
    let script = walkthrough::for_ports(script, stack.ports());
    let child = tokio::process::Command::new("bash")
        .args(["-e", "-u", "-o", "pipefail", "-c", &script])
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("bash: {e} (curl and bash are installed by `make setup`)"));
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("walkthrough:{name} did not finish in 30 s"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "walkthrough:{name} failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn readme_walkthroughs_run_as_written_and_fresh_stats_are_clean() {
    // The README's admin walkthrough uses `make up`'s development admin token.
    let stack = Stack::builder()
        .admin_token("dev-admin-token")
        .start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the weauth stack: {e}"));

    // A fresh stack: the readiness probe left no refusal and no 5xx behind. (The README names
    // the wasm build's stats; `make up EDGE=native`'s are the same under the native namespace.)
    let allowed = stack.filter_stat("allowed");
    let denied = stack.filter_stat("denied.");
    let stats = stack.envoy_stats_once(&allowed, 2).await.unwrap();
    let dirty: Vec<&str> = stats
        .lines()
        .filter(|line| {
            let Some((name, value)) = line.split_once(": ") else {
                return false;
            };
            (name.starts_with(&denied) || name.ends_with("downstream_rq_5xx"))
                && value.trim() != "0"
        })
        .collect();
    assert!(dirty.is_empty(), "fresh stack stats: {dirty:?}");
    assert!(stat_value(&stats, &allowed).unwrap_or(0) >= 2);

    let out = run(&stack, walkthrough::MAIN).await;
    let (before, after) = out
        .split_once("logout: 204")
        .unwrap_or_else(|| panic!("no `logout: 204` in:\n{out}"));
    let (unauthenticated, echoed) = before
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("step 3 printed no response head:\n{out}"));
    assert!(
        unauthenticated.starts_with("HTTP/1.1 401"),
        "step 3:\n{unauthenticated}"
    );
    assert!(
        unauthenticated
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer\r\n"),
        "step 3 challenge:\n{unauthenticated}"
    );
    assert!(
        echoed.contains("\"x-weauth-sub\"") && echoed.contains("\"x-weauth-openid\""),
        "step 4 (identity headers echoed):\n{echoed}"
    );
    assert!(
        after.trim_start().starts_with("HTTP/1.1 401"),
        "step 7:\n{after}"
    );
    assert!(
        after.contains("the token has been revoked"),
        "step 7:\n{after}"
    );

    let out = run(&stack, walkthrough::USER_DATA).await;
    assert!(
        out.contains("\"purePhoneNumber\":\"13800138000\""),
        "phone:\n{out}"
    );
    assert!(
        out.contains("\"nickName\":\"Bob\"") && out.contains("\"raw_data_verified\":true"),
        "decrypt:\n{out}"
    );

    let out = run(&stack, walkthrough::ADMIN).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "one answer per call:\n{out}");
    assert!(
        lines[0].contains("\"scopes\":[\"admin\"]"),
        "scopes:\n{out}"
    );
    assert!(
        lines[1].contains("\"ban\"") && lines[1].contains("\"revocation\""),
        "ban:\n{out}"
    );
    assert!(
        lines[2].contains("\"error\":\"user_banned\""),
        "login while banned:\n{out}"
    );
    assert!(
        lines[3].contains("\"banned\":true") && lines[3].contains("\"scopes\":[\"admin\"]"),
        "lookup:\n{out}"
    );
    assert!(lines[4].contains("\"was_banned\":true"), "unban:\n{out}");
}
