//! The harness's own behaviour against the real processes: restarts, concurrency, stats, and
//! the error a missing binary gives. Also shows two properties of the product that only a
//! restart can show: verification at the edge keeps working while the issuer is down, and a
//! restarted issuer keeps its sessions (same database).

use std::path::PathBuf;

use serde_json::json;
use weauth_tests::harness::{Binaries, HarnessError, Stack};

async fn stack(builder: weauth_tests::harness::StackBuilder) -> Stack {
    builder
        .start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the weauth stack: {e}"))
}

#[tokio::test]
async fn issuer_down_edge_still_verifies_then_restart_keeps_sessions() {
    let mut stack = stack(Stack::builder()).await;
    let tokens = stack.login("alice").await.unwrap();

    stack.stop_issuer().await;
    let (status, _) = stack
        .get_json("/api/hello", Some(&tokens.access_token))
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "the filter verifies locally, without the issuer"
    );
    let (status, _) = stack
        .post_json(
            "/v1/token/refresh",
            None,
            &json!({"refresh_token": tokens.refresh_token}),
        )
        .await
        .unwrap();
    // Envoy cannot reach the issuer's cluster: its own 503.
    assert_eq!(status, 503, "issuer down: refresh cannot succeed");

    stack.start_issuer().await.unwrap();
    let (status, body) = stack
        .post_json(
            "/v1/token/refresh",
            None,
            &json!({"refresh_token": tokens.refresh_token}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "same database after restart: {body}");
    assert!(body["access_token"].is_string());
}

#[tokio::test]
async fn envoy_restart_verifies_again_and_counts_in_stats() {
    let mut stack = stack(Stack::builder()).await;
    let token = stack.login("bob").await.unwrap().access_token;
    stack.restart_envoy().await.unwrap();
    let (status, _) = stack.get_json("/api/hello", Some(&token)).await.unwrap();
    assert_eq!(status, 200);
    let stats = stack
        .envoy_stats_once("wasmcustom.weauth.allowed", 1)
        .await
        .unwrap();
    let allowed = stats
        .lines()
        .find(|l| l.contains("weauth.allowed:"))
        .unwrap_or_else(|| panic!("no weauth.allowed counter in Envoy stats"));
    let n: u64 = allowed.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1, "{allowed}");
}

#[tokio::test]
async fn concurrency_two_every_worker_verifies() {
    let stack = stack(Stack::builder().concurrency(2)).await;
    let token = stack.login("carol").await.unwrap().access_token;
    // Connections each worker of the public listener took (Envoy's per-worker counters).
    let port = stack.envoy_url().rsplit(':').next().unwrap().to_string();
    let taken = |stats: &str, worker: &str| -> u64 {
        stats
            .lines()
            .filter(|l| {
                l.starts_with("listener.")
                    && l.contains(&format!("_{port}.{worker}.downstream_cx_total:"))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = stack.envoy_stats().await.unwrap();
    // Fresh connections are spread over both workers.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..40 {
        let r = fresh
            .get(format!("{}/api/hello", stack.envoy_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // Both workers took some of these 40 (all on one worker is a chance of 2^-39; the login's
    // and the probes' connections before are not counted), so both verified a token.
    let after = stack.envoy_stats().await.unwrap();
    for worker in ["worker_0", "worker_1"] {
        let took = taken(&after, worker) - taken(&before, worker);
        assert!(took > 0, "{worker} took none of the 40 connections");
    }
}

#[tokio::test]
async fn missing_issuer_binary_error_names_the_file_and_make_target() {
    let bins = Binaries {
        issuer: PathBuf::from("/nonexistent/weauth-issuer"),
        ..Binaries::from_env()
    };
    let err = match Stack::builder().binaries(bins).start().await {
        Ok(_) => panic!("a stack started without an issuer binary"),
        Err(e) => e,
    };
    assert!(matches!(err, HarnessError::Missing { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/weauth-issuer"), "{msg}");
    assert!(msg.contains("make build"), "{msg}");
}

/// With an issuer that cannot log anyone in (wrong WeChat secret), the readiness probe's
/// login fails; the harness falls back to its junk-token + feed-stats probe and still starts.
#[tokio::test]
async fn issuer_failing_logins_stack_still_starts_with_fallback_probe() {
    let stack = stack(Stack::builder().issuer_env("WEAUTH_WECHAT_SECRET", "wrong-secret")).await;
    let (status, body) = stack
        .post_json(
            "/v1/login",
            None,
            &json!({"code": stack.mock.login("zoe").code}),
        )
        .await
        .unwrap();
    // WeChat's 40125 (invalid secret) is the operator's problem: 502, never a 4xx to the user.
    assert_eq!(status, 502, "login with a wrong WeChat secret: {body}");
    assert_eq!(body["error"], "upstream_error", "{body}");
    let (status, _) = stack.get_json("/api/hello", None).await.unwrap();
    assert_eq!(status, 401);
    assert_eq!(stack.upstream.requests(), 0);
}

/// `make up STORE=mysql` without Envoy: two issuer replicas on one MariaDB started by the
/// harness; a login at replica 0 refreshes at replica 1 (one database, one data key).
#[tokio::test]
async fn mysql_replicas_share_one_mariadb() {
    let stack = stack(Stack::builder().mysql_replicas(2).without_envoy()).await;
    assert_eq!(stack.replica_count(), 2);
    let http = reqwest::Client::new();
    let code = stack.mock.login("maria").code;
    let login: serde_json::Value = http
        .post(format!("{}/v1/login", stack.replica_url(0)))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refreshed = http
        .post(format!("{}/v1/token/refresh", stack.replica_url(1)))
        .json(&json!({ "refresh_token": login["refresh_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200, "{login}");
}

/// `make up STORE=redis` a second time: its run directory keeps Redis's data, and now the data
/// key the signing key was sealed with too — a new random data key at each start could not
/// open the stored key, and the second stack's issuer refused to start. The session of the
/// first start refreshes on the second (same store, same key).
#[tokio::test]
async fn a_fixed_run_dir_on_redis_starts_again_with_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let builder = || {
        Stack::builder()
            .run_dir(dir.path())
            .redis_replicas(1)
            .without_envoy()
    };
    let first = stack(builder()).await;
    let http = reqwest::Client::new();
    let code = first.mock.login("rhea").code;
    let login: serde_json::Value = http
        .post(format!("{}/v1/login", first.replica_url(0)))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    first.shutdown().await;
    let second = stack(builder()).await;
    let refreshed = http
        .post(format!("{}/v1/token/refresh", second.replica_url(0)))
        .json(&json!({ "refresh_token": login["refresh_token"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200, "{login}");
    second.shutdown().await;
}

/// The processes whose parent is `pid` (from `/proc`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // `pid (comm) state ppid …`: the comm may hold spaces and parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Whether process `pid` still runs (a zombie, ended and not yet reaped, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// `weauth-stack` stopped while it starts (`make down` during `make up`'s start, Ctrl-C) or by
/// its terminal closing (SIGHUP) stops the processes it started: with the default disposition
/// it ended at once, leaving them running on the stack's ports, and `make down` then found no
/// stack to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weauth_stack_stopped_while_starting_leaves_no_process_behind() {
    use std::time::{Duration, Instant};
    for signal in ["TERM", "HUP"] {
        let mut stack = tokio::process::Command::new(env!("CARGO_BIN_EXE_weauth-stack"))
            .args(["--free-ports", "--json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = stack.id().unwrap();
        // Under way: a process of its own started.
        let deadline = Instant::now() + Duration::from_secs(60);
        let children = loop {
            let children = children_of(pid);
            if !children.is_empty() {
                break children;
            }
            assert!(Instant::now() < deadline, "SIG{signal}: no process started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(30), stack.wait())
            .await
            .unwrap_or_else(|_| panic!("SIG{signal}: weauth-stack did not stop"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while children.iter().any(|&child| running(child)) {
            assert!(
                Instant::now() < deadline,
                "SIG{signal}: left running: {:?}",
                children.iter().filter(|&&c| running(c)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
