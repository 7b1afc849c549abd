//! End-to-end: several issuer replicas on one real Redis, as one Envoy cluster, with the
//! weauth filter at the edge (docs/OPERATIONS.md).
//!
//! - a logout written through replica A is refused at the edge while the filter's feed long
//!   poll is held by replica B (pub/sub wakes B): in several rounds, each within 3 s of the
//!   logout's answer and the fastest within 1 s;
//! - SIGKILL a replica under a mixed load of logins, refreshes, API calls and logouts: no
//!   acknowledged refresh token or revocation is lost, the feed resumes on the survivor, the
//!   sidecar never goes stale; the client-visible failures are counted and bounded by the
//!   requests that can be in flight at the dead replica;
//! - SIGKILL `redis-server` (AOF, `appendfsync always`) under load and restart it: nothing
//!   acknowledged is lost and the replicas reconnect by themselves.
//!
//! Needs the issuer binary, Envoy, the filter module and `redis-server` (`make setup`); a
//! missing one fails, it is never skipped. Run: `make build && cargo test --target
//! x86_64-unknown-linux-musl -p weauth-tests --test suites -- e2e_replicas:: --nocapture` to see the measured numbers.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weauth_tests::harness::{stat_value, Stack};
use weauth_tests::replicas::{
    assert_nothing_acked_lost, client, cross_replica_logout_rounds, feed_waiters, hello, login,
    poll_holder, post, Acked, Load,
};

/// Load workers: each has at most one request in flight.
const WORKERS: usize = 6;

async fn start(replicas: usize) -> Stack {
    match Stack::builder()
        .redis_replicas(replicas)
        // Logins come from one client address at a fast pace here.
        .issuer_env("WEAUTH_LOGIN_RATE", "0")
        .start()
        .await
    {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the replicated stack: {e}"),
    }
}

/// A logout at one replica is refused at the edge while the filter's feed poll is held by the
/// other replica: the writer's pub/sub announcement wakes the holder's poll
/// ([`cross_replica_logout_rounds`]: in rounds, each within seconds of the logout's 204 and
/// the fastest within a second, which the issuer's 5 s `seq` re-read cannot pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_at_one_replica_refused_at_edge_while_other_holds_the_poll() {
    let stack = start(2).await;
    cross_replica_logout_rounds(&stack, &client(), "replicas").await;
}

/// Every acknowledged refresh token still rotates and every acknowledged logout is refused at
/// the edge (within 5 s of the checks' start: a loaded machine's bound; the measured time is
/// printed — a logout lost by the failover is never refused, and fails it).
async fn assert_nothing_lost(stack: &Stack, acked: &Acked) {
    let slowest = assert_nothing_acked_lost(stack, acked, Duration::from_secs(5)).await;
    println!(
        "checked {} acknowledged refresh tokens and {} acknowledged logouts: none lost \
         (all logouts refused at the edge {slowest:?} after the refresh checks)",
        acked.refresh.iter().flatten().count(),
        acked.logged_out.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_under_load_nothing_acknowledged_lost() {
    let mut stack = start(2).await;
    let http = client();
    let load = Load::start(&stack, WORKERS);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Kill the replica that holds the feed's long poll: the feed must resume on the other.
    let victim = poll_holder(&stack, &http).await;
    let ops_before = load.ops();
    stack.kill_replica(victim).await;
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The load goes on after the kill: polled, not a rate over a fixed time (a loaded machine
    // may stall the workers for seconds).
    while load.ops() <= ops_before + 20 {
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "the load did not go on after the kill: {} operations, {ops_before} before it",
            load.ops()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = load.stop().await;
    let survivor = 1 - victim;
    println!(
        "replica {victim} SIGKILLed after {ops_before} operations; {} operations in all; client-visible failures: {} {:?}",
        acked.ops,
        acked.failures.len(),
        acked.failures
    );
    // Only requests in flight at the dead replica may fail: at most one per worker.
    assert!(
        acked.failures.len() <= WORKERS,
        "{} failures for {WORKERS} workers",
        acked.failures.len()
    );
    assert!(
        acked.ops > ops_before + 20,
        "the load went on after the kill"
    );
    assert_nothing_lost(&stack, &acked).await;
    // The sidecar did not go stale, and the feed now runs on the survivor: a new logout at
    // the survivor is enforced at the edge.
    assert!(
        feed_waiters(&http, &stack.replica_url(survivor))
            .await
            .unwrap_or(0)
            > 0
    );
    let tokens = stack.login("after-kill").await.unwrap();
    assert_eq!(
        hello(&http, &stack.envoy_url(), &tokens.access_token).await,
        200
    );
    let (status, _) = post(
        &http,
        &stack.replica_url(survivor),
        "/v1/logout",
        Some(&tokens.access_token),
        &json!({}),
    )
    .await;
    assert_eq!(status, 204);
    let started = Instant::now();
    while hello(&http, &stack.envoy_url(), &tokens.access_token).await != 401 {
        assert!(
            // Any working follow-up passes (the re-read included): what is shown is that the
            // feed resumed, not how fast.
            started.elapsed() < Duration::from_secs(10),
            "feed did not resume on the survivor"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "feed resumed on replica {survivor}; checks done {:?} after the kill",
        killed_at.elapsed()
    );
    let stats = stack.envoy_stats().await.unwrap();
    println!(
        "envoy: retries on the issuer cluster: {:?}",
        stat_value(&stats, "cluster.weauth_issuer.upstream_rq_retry")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_nothing_acknowledged_lost() {
    let mut stack = start(2).await;
    let http = client();
    let load = Load::start(&stack, WORKERS);
    let spare = stack.login("spare").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let redis = stack.redis().unwrap();
    redis.kill().await;
    let down_at = Instant::now();
    // While Redis is down: writes answer 503 with Retry-After, /readyz false, /healthz true.
    let resp = http
        .post(format!("{}/v1/token/refresh", stack.replica_url(0)))
        .json(&json!({"refresh_token": spare.refresh_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503, "refresh while Redis is down");
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    let ready = http
        .get(format!("{}/readyz", stack.replica_url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let health = http
        .get(format!("{}/healthz", stack.replica_url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stack.redis().unwrap().restart().await.unwrap();
    // The replicas reconnect by themselves.
    for i in 0..stack.replica_count() {
        let started = Instant::now();
        loop {
            let ready = http
                .get(format!("{}/readyz", stack.replica_url(i)))
                .send()
                .await
                .unwrap();
            if ready.status() == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "replica {i} did not reconnect"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "redis-server was down for {:?}; both replicas ready again",
        down_at.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked = load.stop().await;
    let unavailable = acked.failures.iter().filter(|(_, s, _)| *s == 503).count();
    println!(
        "{} operations; failures while Redis was down: {} ({} of them 503)",
        acked.ops,
        acked.failures.len(),
        unavailable
    );
    assert_nothing_lost(&stack, &acked).await;
    assert!(acked.failures.len() < acked.ops, "the load went on");
    // The refresh refused during the outage wrote nothing: the token still rotates once.
    let (status, body) = post(
        &http,
        &stack.envoy_url(),
        "/v1/token/refresh",
        None,
        &json!({"refresh_token": spare.refresh_token}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Bound on a Sentinel failover's write window, from SIGKILL of the primary to the first
/// write that succeeds again. Usually about 4 s (2 s down-after, the vote, the promotion), but
/// a failover attempt that fails — a split vote between the three sentinels, likelier on a
/// loaded machine — is retried only after twice the 3 s failover-timeout
/// (`weauth_servers::redis::Sentinel`): up to two retries fit.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);
/// Bound on the issuer's part of that window: from the replica saying `role:master` to the
/// first write that succeeds there (the Sentinels name it after they see the promotion, then
/// the issuer re-resolves the primary and retries): a loaded machine's margin over the
/// second or so it takes; an issuer that did not follow would never write there.
const FOLLOW_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_replicas_follow_the_promoted_replica() {
    let mut stack = match Stack::builder()
        .redis_replicas(2)
        .redis_sentinel()
        .issuer_env("WEAUTH_LOGIN_RATE", "0")
        .start()
        .await
    {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the Sentinel stack: {e}"),
    };
    let http = client();
    let (envoy, mock) = (stack.envoy_url(), stack.mock_url());
    let replica_port = stack.sentinel().unwrap().replica.port();
    // A revocation and a rotation acknowledged just before the primary dies (WAIT 1 replica).
    let victim = stack.login("revoked-before-failover").await.unwrap();
    let (status, _) = post(
        &http,
        &envoy,
        "/v1/logout",
        Some(&victim.access_token),
        &json!({}),
    )
    .await;
    assert_eq!(status, 204);
    let kept = stack.login("rotated-before-failover").await.unwrap();
    let (status, body) = post(
        &http,
        &envoy,
        "/v1/token/refresh",
        None,
        &json!({"refresh_token": kept.refresh_token}),
    )
    .await;
    assert_eq!(status, 200);
    let kept_refresh = body["refresh_token"].as_str().unwrap().to_string();

    stack.sentinel().unwrap().primary.kill().await;
    let killed = Instant::now();
    // When the replica is promoted (it says `role:master`): the Sentinels' part of the window
    // (down-after, the vote, SLAVEOF NO ONE), apart from the issuer's part (learning the new
    // primary and writing there).
    let promoted = tokio::task::spawn_blocking(move || loop {
        let info = std::process::Command::new("redis-cli")
            .args(["-p", &replica_port.to_string(), "info", "replication"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        if info.contains("role:master") {
            return Some(killed.elapsed());
        }
        if killed.elapsed() > FAILOVER_BOUND {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    // Writes (a login, then refreshes of its chain) every 20 ms until one succeeds again.
    let mut chain: Option<String> = None;
    let mut failures = 0;
    let mut n = 0;
    let window = loop {
        n += 1;
        let (status, body) = match &chain {
            Some(token) => {
                post(
                    &http,
                    &envoy,
                    "/v1/token/refresh",
                    None,
                    &json!({"refresh_token": token}),
                )
                .await
            }
            None => login(&http, &mock, &envoy, &format!("failover-{n}")).await,
        };
        if status == 200 {
            chain = body["refresh_token"].as_str().map(String::from);
            if failures > 0 {
                break killed.elapsed();
            }
        } else {
            failures += 1;
            // Not acknowledged: start a new session rather than risk presenting a token whose
            // rotation reached the old primary.
            chain = None;
        }
        assert!(
            killed.elapsed() < FAILOVER_BOUND,
            "writes did not resume within {FAILOVER_BOUND:?} of the primary's death ({failures} failures)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let promoted = promoted
        .await
        .unwrap()
        .expect("the replica says role:master once writes succeed");
    let followed = window.saturating_sub(promoted);
    println!(
        "Sentinel failover: writes unavailable for {window:?} after SIGKILL of the primary \
         ({failures} failed writes); the replica was promoted after {promoted:?}, the issuer \
         wrote there {followed:?} later"
    );
    // The sentinel asked may learn of the switch a moment after the issuer did from another
    // (the failover's leader announces it; the others hear it in their next hello, about 1 s
    // apart): wait for it rather than read it once.
    let started = Instant::now();
    loop {
        let primary = stack.sentinel().unwrap().current_primary_port();
        if primary == Some(replica_port) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the replica (:{replica_port}) was not promoted: the sentinel names {primary:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What was acknowledged before the failover survived it. A replica that has not yet met
    // the failover (no request of its own since) follows it on this request and answers it
    // 503 — retried, as a client does (a refused rotation changed nothing: no reuse); an
    // undone rotation would be a 400.
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = post(
            &http,
            &envoy,
            "/v1/token/refresh",
            None,
            &json!({"refresh_token": kept_refresh}),
        )
        .await;
        if status != 503 || started.elapsed() > Duration::from_secs(10) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status, 200,
        "a rotation acknowledged before the failover was undone: {body}"
    );
    assert_eq!(hello(&http, &envoy, &victim.access_token).await, 401);
    // Both replicas follow the new primary.
    for i in 0..stack.replica_count() {
        let started = Instant::now();
        while http
            .get(format!("{}/readyz", stack.replica_url(i)))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "replica {i} not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Writes resume by themselves, however long the Sentinels took (the bound of the probe
    // loop above), and the issuer's own part is short: it follows the promoted replica
    // within FOLLOW_BOUND.
    assert!(
        followed < FOLLOW_BOUND,
        "writes resumed {followed:?} after the replica was promoted ({promoted:?} after the \
         kill; window {window:?})"
    );
}
