//! End-to-end revocation at the edge: a real issuer, a real Envoy, the weauth filter.
//!
//! What jwt_authn cannot do and this filter must: a token revoked at the issuer (logout, ban
//! of a user, refresh-token reuse) is refused by every Envoy worker within 2 s (the design
//! target is well under 1 s); a rotated signing key is picked up; an unreachable feed makes the
//! filter follow its `stale_mode`; of several workers only one polls the issuer; and the feed
//! credential comes from the VM's environment (`revocation.credential_env`), a missing
//! variable making Envoy refuse the filter's configuration; and an update of the filter's
//! configuration through LDS (what Istio and Envoy Gateway push) serves at once, keeps what was
//! revoked refused, and leaves nothing of the old configuration behind once it has drained.
//!
//! Every check after a revocation uses fresh connections, so the requests are spread over all
//! workers (each has its own copy of the revocation set). Needs the issuer binary, Envoy and
//! the filter module (see `weauth_tests::harness`); a missing one fails, it is never skipped.
//! Run: `make build && cargo test --target x86_64-unknown-linux-musl -p weauth-tests --test suites -- e2e_filter::`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weauth_tests::harness::{
    free_port, peek_claims, peek_header, Binaries, Edge, Stack, StackBuilder,
};
use weauth_tests::upstream::INSTANT_FEED_PATH;
use weauth_token::{Algorithm, SigningKey};

/// The revocation deadline the tests enforce: a loaded CI machine's bound (2 cores, two test
/// streams), far below the 20 s the filter asks the issuer to hold a feed poll (so only the
/// woken poll passes it). The design target is well under 1 s: the measured delays are
/// printed (`-- --nocapture`).
const REVOKE_DEADLINE: Duration = Duration::from_secs(5);

async fn start(builder: StackBuilder) -> Stack {
    match builder.start().await {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the weauth stack: {e}"),
    }
}

/// A client that opens a new connection per request (spreads requests over Envoy workers).
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `GET /api/hello` on a fresh connection: status and JSON body (`Null` if not JSON).
async fn hello(stack: &Stack, client: &reqwest::Client, token: &str) -> (u16, Value) {
    let resp = client
        .get(format!("{}/api/hello", stack.envoy_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Polls `/api/hello` with `token` until it answers `want`; returns how long that took.
async fn wait_for(stack: &Stack, token: &str, want: u16, within: Duration, why: &str) -> Duration {
    let client = fresh_client();
    let start = Instant::now();
    loop {
        let (status, body) = hello(stack, &client, token).await;
        if status == want {
            let took = start.elapsed();
            eprintln!("{why}: {want} after {took:?}");
            return took;
        }
        assert!(
            start.elapsed() < within,
            "{why}: still {status} {body} after {:?} (wanted {want})",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs `token`'s session out at the issuer and waits until the edge refuses the token;
/// returns how long that took.
async fn logout_reaches_edge(stack: &Stack, token: &str, why: &str) -> Duration {
    let (status, body) = stack
        .post_json("/v1/logout", Some(token), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 204, "{why}: logout: {body}");
    wait_for(stack, token, 401, REVOKE_DEADLINE, why).await
}

/// Asserts `token` is refused on `n` fresh connections in a row, as revoked.
async fn assert_refused_everywhere(stack: &Stack, token: &str, n: usize, why: &str) {
    let client = fresh_client();
    for i in 0..n {
        let (status, body) = hello(stack, &client, token).await;
        assert_eq!(status, 401, "{why}: request {i} got {status} {body}");
        assert_eq!(body["error"], "invalid_token", "{why}: {body}");
        assert_eq!(
            body["error_description"], "the token has been revoked",
            "{why}: {body}"
        );
    }
}

/// The value of the filter's stat `weauth.<name>` in this stack's build (0 when absent).
async fn stat(stack: &Stack, name: &str) -> u64 {
    envoy_stat(stack, &stack.filter_stat(name)).await
}

/// The value of one Envoy stat by its full name (0 when absent).
async fn envoy_stat(stack: &Stack, name: &str) -> u64 {
    let stats = stack.envoy_stats().await.unwrap();
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

async fn admin_revoke(stack: &Stack, body: Value) {
    let resp = stack
        .client()
        .post(format!("{}/v1/admin/revoke", stack.issuer_url()))
        .bearer_auth(stack.admin_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "admin revoke {body}: {text}");
}

async fn refresh(stack: &Stack, refresh_token: &str) -> (u16, Value) {
    stack
        .post_json(
            "/v1/token/refresh",
            None,
            &json!({"refresh_token": refresh_token}),
        )
        .await
        .unwrap()
}

/// Waits (up to 15 s: Envoy writes its log asynchronously, and a loaded machine may delay it)
/// until Envoy's log contains `text`.
async fn assert_envoy_logged(stack: &Stack, text: &str) {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(stack.envoy_log()).unwrap_or_default();
        if log.contains(text) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "Envoy never logged {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The time of day of one of Envoy's log lines (`[2026-12-06 00:30:00.123][…`), in ms.
fn envoy_log_line_ms(line: &str) -> Option<u64> {
    let time = line.get(12..24)?;
    let field = |range: std::ops::Range<usize>| time.get(range)?.parse::<u64>().ok();
    Some(((field(0..2)? * 60 + field(3..5)?) * 60 + field(6..8)?) * 1000 + field(9..12)?)
}

/// The wasm build: every configuration that went while it held the revocation lease handed it
/// on, and a VM of a configuration left claimed the lease so handed on (not one left to run
/// out, whose claim the filter does not announce so) and took the fetching over. Said by the
/// filter's log, not by the gap between the lines — a hand-over is taken up in two ticks
/// (~200 ms), a lease left to run out ~1.9 s after, and a loaded machine's stall of a second
/// blurred the two. The gaps are printed.
fn assert_revocation_lease_handed_on(stack: &Stack) {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let log = std::fs::read_to_string(stack.envoy_log()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let mut handed = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("configuration gone: handing the revocation lease on") {
            continue;
        }
        handed += 1;
        let later = &lines[i + 1..];
        let claimed = later
            .iter()
            .position(|l| l.contains("claimed the revocation lease a configuration gone handed on"))
            .unwrap_or_else(|| panic!("nobody claimed the lease handed on by {line:?}"));
        let taken = later[claimed..]
            .iter()
            .find(|l| l.contains("is now the revocation fetcher"))
            .unwrap_or_else(|| panic!("nobody took the fetching over after {line:?}"));
        if let (Some(from), Some(to)) = (envoy_log_line_ms(line), envoy_log_line_ms(taken)) {
            let gap = Duration::from_millis((to + DAY_MS - from) % DAY_MS);
            eprintln!("revocation lease handed on, taken over {gap:?} later");
        }
    }
    assert!(
        handed > 0,
        "no configuration gone handed the revocation lease on"
    );
}

#[tokio::test]
async fn logout_refused_by_every_worker_within_deadline() {
    let stack = start(Stack::builder().concurrency(2)).await;
    let alice = stack.login("alice").await.unwrap().access_token;
    let bob = stack.login("bob").await.unwrap().access_token;
    // The stack is ready (every worker holds the keys and the revocation list): the new
    // token passes at once, on every worker.
    let client = fresh_client();
    for i in 0..4 {
        let (status, body) = hello(&stack, &client, &alice).await;
        assert_eq!(status, 200, "before logout, request {i}: {body}");
    }

    let took = logout_reaches_edge(&stack, &alice, "after logout").await;
    eprintln!("logout enforced at the edge after {took:?}");
    assert_refused_everywhere(&stack, &alice, 8, "after logout").await;

    // Only that session: another user's token still passes, on every worker.
    let client = fresh_client();
    for _ in 0..4 {
        assert_eq!(hello(&stack, &client, &bob).await.0, 200);
    }
    assert!(stat(&stack, "denied.revoked_sid").await >= 1);
}

#[tokio::test]
async fn sub_revocation_refuses_every_session_of_the_user_only() {
    let stack = start(Stack::builder().concurrency(2)).await;
    let phone = stack.login("dora").await.unwrap().access_token;
    let laptop = stack.login("dora").await.unwrap().access_token;
    let other = stack.login("emil").await.unwrap().access_token;
    let sub = peek_claims(&phone).unwrap().sub;
    assert_eq!(
        peek_claims(&laptop).unwrap().sub,
        sub,
        "same user, two sessions"
    );
    assert_ne!(
        peek_claims(&laptop).unwrap().sid,
        peek_claims(&phone).unwrap().sid
    );
    wait_for(&stack, &phone, 200, REVOKE_DEADLINE, "before the ban").await;

    admin_revoke(&stack, json!({"sub": sub})).await;
    wait_for(
        &stack,
        &phone,
        401,
        REVOKE_DEADLINE,
        "phone after sub revocation",
    )
    .await;
    wait_for(
        &stack,
        &laptop,
        401,
        REVOKE_DEADLINE,
        "laptop after sub revocation",
    )
    .await;
    assert_refused_everywhere(&stack, &laptop, 4, "laptop").await;
    assert_eq!(
        hello(&stack, &fresh_client(), &other).await.0,
        200,
        "another user"
    );
    assert!(stat(&stack, "denied.revoked_sub").await >= 1);

    // "Log out everywhere" cuts tokens issued up to the revocation's second: a login after
    // that second gets a token that passes.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = stack.login("dora").await.unwrap().access_token;
    wait_for(
        &stack,
        &again,
        200,
        REVOKE_DEADLINE,
        "a login after the cut-off",
    )
    .await;
}

#[tokio::test]
async fn refresh_token_reuse_revokes_the_session_at_the_edge() {
    // No reuse grace, so the second use below is theft at once (a replay after the default
    // grace is issuer/tests/sessions.rs's subject).
    let stack = start(
        Stack::builder()
            .concurrency(2)
            .issuer_env("WEAUTH_REFRESH_REUSE_GRACE", "0s"),
    )
    .await;
    let first = stack.login("fritz").await.unwrap();
    let (status, second) = refresh(&stack, &first.refresh_token).await;
    assert_eq!(status, 200, "{second}");
    let access = second["access_token"].as_str().unwrap().to_string();
    wait_for(
        &stack,
        &access,
        200,
        REVOKE_DEADLINE,
        "rotated access token",
    )
    .await;

    // The first refresh token was consumed: presenting it again is reuse.
    let (status, body) = refresh(&stack, &first.refresh_token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let took = wait_for(&stack, &access, 401, REVOKE_DEADLINE, "after refresh reuse").await;
    eprintln!("refresh reuse enforced at the edge after {took:?}");
    assert_refused_everywhere(&stack, &access, 4, "after refresh reuse").await;
    // The session is gone at the issuer too: the rotated refresh token no longer works.
    let second_refresh = second["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(&stack, second_refresh).await.0, 400);
}

/// Runs `weauth-issuer keys rotate` against the stack's database.
fn rotate_key(stack: &Stack) -> String {
    let mut cmd = std::process::Command::new(Binaries::from_env().issuer);
    cmd.args(["keys", "rotate"]);
    for (name, _) in std::env::vars() {
        if name.starts_with("WEAUTH_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(stack.issuer_env().iter().map(|(k, v)| (k, v)));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "keys rotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn rotated_key_picked_up_and_old_tokens_still_pass() {
    let stack = start(
        Stack::builder()
            .concurrency(2)
            .issuer_env("WEAUTH_KEY_PUBLISH_DELAY", "1s")
            .issuer_env("WEAUTH_KEY_RELOAD", "200ms"),
    )
    .await;
    let old = stack.login("gina").await.unwrap().access_token;
    let old_kid = peek_header(&old).unwrap().kid.unwrap();
    wait_for(&stack, &old, 200, REVOKE_DEADLINE, "before rotation").await;

    eprintln!("{}", rotate_key(&stack).trim());
    // Wait until the issuer signs with the new key.
    let start_wait = Instant::now();
    let new = loop {
        let token = stack.login("gina").await.unwrap().access_token;
        if peek_header(&token).unwrap().kid.as_deref() != Some(old_kid.as_str()) {
            break token;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(15),
            "the issuer never switched keys"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The filter learns the new key from the JWKS (refetched on the unknown kid, or by the
    // periodic refresh) without a restart.
    let took = wait_for(
        &stack,
        &new,
        200,
        Duration::from_secs(10),
        "token signed by the new key",
    )
    .await;
    eprintln!("new key accepted after {took:?}");
    let client = fresh_client();
    for _ in 0..4 {
        let (status, body) = hello(&stack, &client, &new).await;
        assert_eq!(status, 200, "new key, every worker: {body}");
        let (status, body) = hello(&stack, &client, &old).await;
        assert_eq!(status, 200, "old key still published: {body}");
    }
    assert!(stat(&stack, "jwks_fetch_ok").await >= 2);
}

#[tokio::test]
async fn issuer_stopped_stale_mode_deny_answers_503_then_recovers() {
    let mut stack = start(Stack::builder().plugin_config_patch(json!({
        "revocation": {"wait_seconds": 1, "stale_after_seconds": 3, "stale_mode": "deny"}
    })))
    .await;
    let token = stack.login("hans").await.unwrap().access_token;
    wait_for(&stack, &token, 200, REVOKE_DEADLINE, "issuer up").await;

    stack.stop_issuer().await;
    let took = wait_for(&stack, &token, 503, Duration::from_secs(10), "issuer down").await;
    eprintln!("stale after {took:?} without the feed");
    let (status, body) = hello(&stack, &fresh_client(), &token).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(stat(&stack, "denied.revocation_stale").await >= 1);
    assert!(stat(&stack, "feed_fetch_fail").await >= 1);
    assert_envoy_logged(&stack, "revocation list is stale").await;

    stack.start_issuer().await.unwrap();
    wait_for(&stack, &token, 200, Duration::from_secs(10), "issuer back").await;
}

#[tokio::test]
async fn issuer_stopped_stale_mode_allow_passes_and_counts() {
    let mut stack = start(Stack::builder().plugin_config_patch(json!({
        "revocation": {"wait_seconds": 1, "stale_after_seconds": 2, "stale_mode": "allow"}
    })))
    .await;
    let token = stack.login("ida").await.unwrap().access_token;
    wait_for(&stack, &token, 200, REVOKE_DEADLINE, "issuer up").await;

    stack.stop_issuer().await;
    // Stale 2 s after the feed's last answer: allowed, and counted so, from then on (polled,
    // not slept: a loaded machine may process the last answer late).
    let client = fresh_client();
    let stopped = Instant::now();
    loop {
        assert_eq!(
            hello(&stack, &client, &token).await.0,
            200,
            "stale_mode allow"
        );
        if stat(&stack, "revocation_stale_allowed").await >= 3 {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "no request was allowed as stale within 20 s of the issuer's stop"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_envoy_logged(&stack, "revocation list is stale").await;
}

#[tokio::test]
async fn several_workers_one_fetcher() {
    let stack = start(Stack::builder().concurrency(4)).await;
    // Move the feed past seq 0, so the fetcher holds a long poll open.
    let jan = stack.login("jan").await.unwrap().access_token;
    // Logout goes through the filter: wait until it holds the revocation set (before the first
    // feed answer, stale_mode deny answers 503).
    wait_for(&stack, &jan, 200, REVOKE_DEADLINE, "before logout").await;
    logout_reaches_edge(&stack, &jan, "after logout").await;
    assert_refused_everywhere(&stack, &jan, 12, "four workers").await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    // Only the filter's calls use the issuer cluster now: one long poll is open, not one per
    // worker.
    let mut most_active = 0;
    for _ in 0..10 {
        let active = envoy_stat(&stack, "cluster.weauth_issuer.upstream_rq_active").await;
        most_active = most_active.max(active);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(stack.envoy_log()).unwrap_or_default();
    // Natively the main thread fetches both; in the wasm build one VM is elected for each.
    // The last line names the revocation fetcher in both.
    let elected: &[&str] = if stack.edge() == Edge::WeauthNative {
        &["is now the JWKS/revocation fetcher"]
    } else {
        &["is now the JWKS fetcher", "is now the revocation fetcher"]
    };
    for line in elected {
        // One, not one per worker; a second only after a lease a starved worker let lapse
        // (the wasm build's lease is 2 s: a loaded machine can stall a thread that long).
        let count = log.matches(line).count();
        assert!((1..=2).contains(&count), "{count} elected: {line}");
    }
    // A poll per fetcher elected: the first one's poll stays open at the issuer (up to its
    // 20 s wait) after a second fetcher took over.
    let revocation = elected.last().copied().unwrap_or_default();
    let fetchers = log.matches(revocation).count() as u64;
    assert!(
        (1..=fetchers).contains(&most_active),
        "{most_active} requests open to the issuer from 4 workers, {fetchers} revocation \
         fetcher(s) elected"
    );
}

#[tokio::test]
async fn feed_credential_from_vm_environment_revocation_reaches_edge() {
    // The local stack's configuration: the plugin config names `credential_env`, Envoy's
    // bootstrap passes WEAUTH_FEED_TOKEN into the VM (`vm_config.environment_variables`), and
    // the credential is in no configuration file.
    let stack = start(Stack::builder()).await;
    let revocation = &stack.plugin_config()["revocation"];
    assert_eq!(revocation["credential_env"], "WEAUTH_FEED_TOKEN");
    assert!(revocation.get("credential").is_none(), "{revocation}");
    let bootstrap = std::fs::read_to_string(stack.dir().join("envoy.yaml")).unwrap();
    assert!(
        !bootstrap.contains(stack.feed_token()),
        "the feed credential leaked into the Envoy bootstrap"
    );
    assert_envoy_logged(&stack, "credential from env WEAUTH_FEED_TOKEN").await;
    // The feed works with the credential read from the environment: a logout reaches the edge.
    let tokens = stack.login("env-cred-user").await.unwrap();
    let client = fresh_client();
    assert_eq!(hello(&stack, &client, &tokens.access_token).await.0, 200);
    logout_reaches_edge(&stack, &tokens.access_token, "after logout").await;
    assert!(stat(&stack, "feed_fetch_ok").await >= 1);
    assert_eq!(stat(&stack, "feed_fetch_fail").await, 0);
    stack.shutdown().await;
}

#[tokio::test]
async fn feed_credential_env_missing_filter_refuses_its_configuration() {
    // The same configuration, but Envoy is started without WEAUTH_FEED_TOKEN: on_configure
    // fails naming the variable, and Envoy does not serve with the filter unconfigured.
    let err = match Stack::builder().without_envoy_feed_env().start().await {
        Ok(stack) => {
            let log = std::fs::read_to_string(stack.envoy_log()).unwrap_or_default();
            panic!("the stack started without the feed credential; Envoy log:\n{log}");
        }
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("envoy exited during start-up"),
        "Envoy did not refuse to start: {err}"
    );
    assert!(
        err.contains("environment variable `WEAUTH_FEED_TOKEN` is not set"),
        "the refusal does not name the variable: {err}"
    );
}

/// Adds a second public listener to `stack`'s Envoy, a copy of the first on a port of its own
/// whose weauth filter configuration `patch` changes; returns the port.
async fn add_second_listener(stack: &Stack, patch: impl Fn(&mut Value)) -> u16 {
    let port = free_port().unwrap();
    stack
        .update_listeners(|listeners| {
            let mut second = listeners
                .iter()
                .find(|l| l["name"] == "weauth_ingress")
                .cloned()
                .expect("the public listener");
            second["name"] = json!("weauth_ingress_b");
            second["address"]["socket_address"]["port_value"] = json!(port);
            for config in weauth_tests::template::weauth_filter_configs(&mut second) {
                let mut parsed: Value = serde_json::from_str(config.as_str().unwrap()).unwrap();
                patch(&mut parsed);
                *config = Value::String(parsed.to_string());
            }
            listeners.push(second);
        })
        .await
        .unwrap();
    port
}

#[tokio::test]
async fn listeners_sharing_a_feed_with_different_jwks_sources_apply_every_revocation() {
    // A second listener whose filter fetches its keys under another authority from the same
    // issuer but follows the same feed: the revocation set in shared data (wasm) must still have one
    // writer — two, publishing the same shards at once on every feed answer, left readers on a
    // torn set, applying no revocation. Both listeners refuse every logout within the deadline.
    let stack = start(Stack::builder().concurrency(2).listeners_from_file()).await;
    let port = add_second_listener(&stack, |config| {
        config["jwks"]["authority"] = json!("issuer-b.internal");
    })
    .await;
    let second = format!("http://127.0.0.1:{port}");
    for round in 0..6 {
        let token = stack
            .login(&format!("two-listeners-{round}"))
            .await
            .unwrap()
            .access_token;
        wait_for(&stack, &token, 200, REVOKE_DEADLINE, "before logout").await;
        // Listener b serves the token before the logout: its refusal after says the revocation
        // reached it, not that it refused everything.
        let at_b = || async {
            let response = fresh_client()
                .get(format!("{second}/api/hello"))
                .bearer_auth(&token)
                .send()
                .await;
            match response {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    (status, body)
                }
                Err(_) => (0, Value::Null),
            }
        };
        // (Its keys are fetched once it is added: up to 15 s for the first round's.)
        let started = Instant::now();
        loop {
            let (status, body) = at_b().await;
            if status == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "round {round}: listener b before the logout: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        logout_reaches_edge(&stack, &token, "a logout, listener a").await;
        assert_refused_everywhere(&stack, &token, 4, "listener a").await;
        let started = Instant::now();
        loop {
            let (status, body) = at_b().await;
            if status == 401 {
                assert_eq!(
                    body["error_description"], "the token has been revoked",
                    "round {round}: listener b"
                );
                eprintln!(
                    "round {round}: listener b refuses after {:?}",
                    started.elapsed()
                );
                break;
            }
            assert!(
                started.elapsed() < REVOKE_DEADLINE,
                "round {round}: listener b still answers {status} for a logged-out token"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_stale_feed_age_is_not_hidden_by_a_fresh_listener() {
    // Two listeners on two feeds in one Envoy: listener a's is answered, listener b's never
    // (its path is one the issuer does not serve). The age gauge is one stat per process; each
    // configuration writing its own made it alternate, so that a's fresh answers hid b's
    // growing age from the staleness alert between scrapes. It must show the older set's age
    // however often a's feed answers.
    let stack = start(Stack::builder().concurrency(2).listeners_from_file()).await;
    add_second_listener(&stack, |config| {
        config["revocation"]["path"] = json!("/v1/revocations-of-nobody");
    })
    .await;
    // b's fetcher has failed four times (at about 0, 0.5, 1.5 and 3.5 s): whichever build,
    // it has reported an age of 3 s or more since it started.
    let started = Instant::now();
    while stat(&stack, "feed_fetch_fail").await < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "listener b's feed did not fail four times"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let age = stack.filter_stat("revocation_age_seconds");
    for round in 0..10 {
        // A revocation: a's long poll answers at once, and a reports an age of 0.
        admin_revoke(&stack, json!({"jti": format!("gauge-round-{round}")})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shown = envoy_stat(&stack, &age).await;
        assert!(
            shown >= 2,
            "round {round}: {age} is {shown}, a fresh feed's age over the stale one's"
        );
    }
}

#[tokio::test]
async fn inline_keys_verify_tokens_and_are_counted() {
    // The signing keys given in the configuration (`jwks.inline`) instead of fetched: tokens
    // verify against them, and the `jwks_keys` gauge counts them as it counts fetched keys
    // (operators watch it: docs/RUNBOOK.md). One key more than the issuer publishes, so that
    // the count cannot be the fetched one's. Then without a feed too: the requests counted.
    let stack = start(Stack::builder().listeners_from_file()).await;
    let alice = stack.login("inline-alice").await.unwrap().access_token;
    let (status, mut jwks) = stack
        .get_json("/.well-known/jwks.json", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{jwks}");
    let extra = SigningKey::from_seed(Algorithm::EdDSA, &[9; 32]).unwrap();
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::to_value(extra.jwk()).unwrap());
    let keys = jwks["keys"].as_array().unwrap().len() as u64;
    assert_eq!(stat(&stack, "jwks_keys").await, keys - 1, "fetched");
    let remote = [
        "cluster",
        "authority",
        "path",
        "refresh_seconds",
        "min_refetch_seconds",
        "timeout_ms",
    ];
    let mut patch = json!({"inline": jwks});
    for field in remote {
        patch[field] = Value::Null;
    }
    stack
        .update_filter_config(&json!({"jwks": patch}))
        .await
        .unwrap();
    let (status, body) = hello(&stack, &fresh_client(), &alice).await;
    assert_eq!(status, 200, "a token signed by an inline key: {body}");
    // Set when the configuration is made (the same stat as the old configuration's).
    assert_eq!(stat(&stack, "jwks_keys").await, keys, "inline");
    // With no feed either, nothing is fetched or synced, and the requests are still counted.
    stack
        .update_filter_config(&json!({"revocation": null}))
        .await
        .unwrap();
    let allowed = stat(&stack, "allowed").await;
    for _ in 0..3 {
        let (status, body) = hello(&stack, &fresh_client(), &alice).await;
        assert_eq!(status, 200, "inline keys, no feed: {body}");
    }
    let started = Instant::now();
    while stat(&stack, "allowed").await < allowed + 3 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the allowed requests were not counted in weauth.allowed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn feed_cluster_envoy_has_not_got_is_logged_as_that() {
    // A configuration naming a cluster Envoy has not got (a typo, or a control plane that
    // names clusters its own way) is accepted — clusters may come later through CDS — but its
    // polls cannot go out. The log says why, in both builds: not the ABI's status name
    // (proxy-wasm's `BadArgument`) nor a wrong guess.
    let stack = start(Stack::builder().listeners_from_file()).await;
    stack
        .update_filter_config(&json!({"revocation": {"cluster": "weauth_no_such_cluster"}}))
        .await
        .unwrap();
    assert_envoy_logged(
        &stack,
        "revocation poll could not be dispatched to cluster weauth_no_such_cluster: \
         no cluster of that name in Envoy's configuration",
    )
    .await;
}

#[tokio::test]
async fn feed_answering_at_once_without_news_is_not_polled_in_a_hot_loop() {
    // Issue 19: the feed is a server that answers every poll at once with the same full set
    // at seq 1 (as a proxy that does not hold long polls would). After the first answer, each
    // early answer without news is followed by the floor (1 s plus up to 0.5 s of jitter), not
    // by another poll at once.
    let stack = start(Stack::builder().plugin_config_patch(
        json!({"revocation": {"cluster": "demo_upstream", "authority": "upstream", "path": INSTANT_FEED_PATH}}),
    ))
    .await;
    let first_polls = stack.upstream.feed_polls();
    let window = Instant::now();
    // Waits (deadline 20 s) until the floor was applied three times.
    let deadline = Duration::from_secs(20);
    while stat(&stack, "feed_poll_floored").await < 3 {
        assert!(
            window.elapsed() < deadline,
            "feed_poll_floored stayed below 3 for {deadline:?} ({} polls)",
            stack.upstream.feed_polls() - first_polls
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = window.elapsed();
    let polls = stack.upstream.feed_polls() - first_polls;
    // At most one poll per floor (1 s) in the window, plus the one in flight at each end.
    let bound = elapsed.as_secs() + 2;
    assert!(
        polls <= bound,
        "{polls} feed polls in {elapsed:?} against a feed that answers at once (bound {bound})"
    );
    assert!(stat(&stack, "feed_fetch_ok").await >= 3);
    assert_eq!(stat(&stack, "feed_fetch_fail").await, 0);
    stack.shutdown().await;
}

#[tokio::test]
async fn filter_config_updated_through_lds_serves_at_once_and_keeps_revocations() {
    // A control plane updates the listener (here: the filter's cache size); Envoy builds a new
    // filter configuration and sends new connections to it while the old one drains (1 s).
    let stack = start(Stack::builder().concurrency(2).listeners_from_file()).await;
    let alice = stack.login("lds-alice").await.unwrap().access_token;
    let bob = stack.login("lds-bob").await.unwrap().access_token;
    let carol = stack.login("lds-carol").await.unwrap().access_token;
    wait_for(&stack, &alice, 200, REVOKE_DEADLINE, "before the updates").await;
    logout_reaches_edge(&stack, &bob, "bob after logout").await;
    let threads = stack.envoy_threads().unwrap();
    let client = fresh_client();
    for round in 0..4u64 {
        stack
            .update_filter_config(&json!({"cache_entries": 1000 + round}))
            .await
            .unwrap();
        // At once, on new connections (the new configuration): no 503 while it would fetch
        // the keys and the revocation list, and what was revoked stays refused.
        for i in 0..5 {
            let (status, body) = hello(&stack, &client, &alice).await;
            assert_eq!(status, 200, "update {round}, request {i}: {body}");
            let (status, body) = hello(&stack, &client, &bob).await;
            assert_eq!(status, 401, "update {round}, request {i}: {body}");
            assert_eq!(body["error_description"], "the token has been revoked");
        }
        // No thread per configuration, draining ones included (natively: one clock thread).
        assert_eq!(stack.envoy_threads(), Some(threads), "after update {round}");
    }
    // The feed is still polled for the configuration serving now: a logout reaches the edge.
    logout_reaches_edge(&stack, &alice, "alice after the updates").await;
    assert_refused_everywhere(&stack, &alice, 4, "alice after the updates").await;
    // Once the old configurations have drained (Envoy destroys them then): one long poll to
    // the issuer, not one per configuration (all of them share one state and its one fetcher;
    // natively the oldest fetches until it goes, then one left takes over), and no thread of
    // theirs left.
    let start = Instant::now();
    loop {
        let draining = envoy_stat(&stack, "listener_manager.total_filter_chains_draining").await;
        let polls = envoy_stat(&stack, "cluster.weauth_issuer.upstream_rq_active").await;
        let now = stack.envoy_threads().unwrap();
        if draining == 0 && polls == 1 && now == threads {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{draining} filter chains draining, {polls} requests open to the issuer, \
             {now} threads ({threads} before)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if stack.edge() == Edge::WeauthNative {
        // The oldest configuration fetched for all of them; the one left took over.
        assert_envoy_logged(&stack, "taking over from a configuration gone").await;
        // The module kept itself loaded (`pin_module`: its clock thread may outlive the
        // configuration destroyed on it).
        let log = std::fs::read_to_string(stack.envoy_log()).unwrap_or_default();
        assert!(!log.contains("could not keep the module loaded"), "{log}");
    } else {
        // The lease passed to a VM of the configuration left, which goes on from the set it
        // holds instead of loading the whole set again.
        assert_envoy_logged(&stack, "is now the revocation fetcher, from seq").await;
        // Handed on as each configuration went, not waited out.
        assert_revocation_lease_handed_on(&stack);
    }
    // And the configuration left polls the feed: a logout still reaches the edge.
    assert_eq!(hello(&stack, &client, &carol).await.0, 200);
    logout_reaches_edge(&stack, &carol, "carol after the drain").await;
    stack.shutdown().await;
}

/// Envoy's access log (`envoy/envoy.yaml`) leaves out the query string: a web login's
/// callback carries WeChat's code there, and a client may send a token there. Both were in
/// every access line (Envoy's default format logs the path with its query).
#[tokio::test]
async fn access_log_carries_no_query_string() {
    let stack = start(Stack::builder()).await;
    let token = stack.login("log-query").await.unwrap().access_token;
    let resp = fresh_client()
        .get(format!(
            "{}/api/hello?access_token={token}&code=081secretcode",
            stack.envoy_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Envoy writes its access log out every 10 s (`--file-flush-interval-msec`).
    let start_wait = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(stack.envoy_log()).unwrap_or_default();
        if log.contains("\"GET /api/hello") {
            break log;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(20),
            "no access line for the request:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!log.contains("081secretcode"), "{log}");
    assert!(!log.contains(&token), "a token in Envoy's log");
    stack.shutdown().await;
}
