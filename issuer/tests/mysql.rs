//! The issuer on a real MariaDB (issue 23 §2, §4): a database unreachable at start,
//! cross-replica wake-ups by polling, and SIGKILL of `mariadbd` under load.
//!
//! The issuer runs in this process (`common::Stack`), its second replica and the start-up
//! refusal as the binary. Servers: the wake-up test takes a database on this binary's shared server
//! (`weauth_servers::mariadb::shared`); the SIGKILL test kills and restarts a server, so it has one
//! of its own. `make setup` installs Debian's `mariadb-server`.

use crate::common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{payload, Issuer, Stack, ADMIN, FEED};
use serde_json::{json, Value};
use weauth_mock_wechat::MockConfig;
use weauth_servers::mariadb::{self, MariaDb};

/// An issuer (and its mock WeChat) on the MySQL database at `url`, login rate limit off.
async fn stack_on(url: &str, extra: &[(&str, &str)]) -> Stack {
    let mut env = vec![
        ("WEAUTH_STORE", url),
        ("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY),
        ("WEAUTH_LOGIN_RATE", "0"),
    ];
    env.extend_from_slice(extra);
    Stack::start_with(MockConfig::default(), &env).await
}

/// Waits (up to `limit`) until `check` holds; fails naming `what`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn mysql_unreachable_at_start_exits_2_naming_weauth_store_with_password_masked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(common::bin())
        .env_clear()
        // Not the default 8080: `make up`'s issuer, or another test's, may hold it.
        .env("WEAUTH_LISTEN", "127.0.0.1:0")
        .env("WEAUTH_WECHAT_APPID", "wx1")
        .env("WEAUTH_WECHAT_SECRET", "s")
        .env(
            "WEAUTH_STORE",
            format!("mysql://weauth:hunter2@127.0.0.1:{port}/weauth"),
        )
        .env("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY)
        .env("WEAUTH_MYSQL_ACQUIRE_TIMEOUT", "1s")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("WEAUTH_STORE=mysql://weauth:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password is never printed: {stderr}"
    );
}

/// An admin revocation whose value is longer than any claim the issuer mints is a 400 naming
/// the field, on every store: on MariaDB it was a 500 (the column is `VARCHAR(191)` and the
/// session runs in strict mode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_admin_revocation_of_an_over_long_value_is_a_400() {
    let server = mariadb::shared().unwrap();
    let url = server.url(&server.create_database().unwrap());
    let stack = stack_on(&url, &[]).await;
    for field in ["jti", "sid", "sub"] {
        let (status, body, _) = stack
            .post_auth(
                "/v1/admin/revoke",
                ADMIN,
                Some(json!({ field: "j".repeat(192) })),
            )
            .await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`")),
            "{body}"
        );
    }
    let (status, body, _) = stack
        .post_auth(
            "/v1/admin/revoke",
            ADMIN,
            Some(json!({ "jti": "j".repeat(128) })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Two replicas on one database: a long poll held at B (asking for 30 s) is woken by a logout
/// at A — B re-reads the seq every 250 ms; asserted under 2 s from the logout's 204, a loaded
/// CI machine's margin that is still far below the poll's 30 s (the delay is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_logout_at_one_replica_wakes_long_poll_at_the_other_within_two_seconds() {
    let server = mariadb::shared().unwrap();
    let url = server.url(&server.create_database().unwrap());
    let a = stack_on(&url, &[]).await;
    let env = a.issuer.env().clone();
    let b = tokio::task::spawn_blocking(move || Issuer::start(&env))
        .await
        .unwrap();
    let login = a.login("wren").await;
    let token = login["access_token"].as_str().unwrap().to_string();
    let (status, _, _) = a
        .post_auth(
            "/v1/admin/revoke",
            ADMIN,
            Some(json!({ "jti": "unrelated" })),
        )
        .await;
    assert_eq!(status, 200);
    let seq = a.feed(0, 0).await["seq"].as_u64().unwrap();
    // B has heard of that seq (else its long poll would answer at once).
    let http = a.http.clone();
    let b_feed = b.url(&format!("/v1/revocations?since={seq}&wait=30"));
    let b_metrics = b.url("/metrics");
    let poll = tokio::spawn({
        let http = http.clone();
        async move {
            let response = http.get(b_feed).bearer_auth(FEED).send().await.unwrap();
            (Instant::now(), response.json::<Value>().await.unwrap())
        }
    });
    eventually(Duration::from_secs(10), "B holds the long poll", || {
        let (http, url) = (http.clone(), b_metrics.clone());
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            text.lines().any(|line| line == "weauth_feed_waiters 1")
        }
    })
    .await;
    let (status, _, _) = a.post_auth("/v1/logout", &token, None).await;
    assert_eq!(status, 204);
    let logged_out_at = Instant::now();
    let (answered_at, body) = poll.await.unwrap();
    let latency = answered_at.saturating_duration_since(logged_out_at);
    println!("mysql: B's long poll woke {latency:?} after the 204 of the logout at A");
    assert!(
        // Under the 10 s the poll asked for, with a loaded machine's margin: B woke.
        latency < Duration::from_secs(5),
        "B's long poll woke {latency:?} after the logout's 204"
    );
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{body}");
    assert_eq!(entries[0]["kind"], "sid");
    assert_eq!(entries[0]["value"], payload(&token)["sid"]);
}

/// What one client of the load knows was acknowledged.
#[derive(Default)]
struct Acked {
    /// The refresh token of each live chain whose last answer was a 200 (login or rotation).
    live: Vec<String>,
    /// Sessions whose logout was answered 204, with the chain's last refresh token.
    logged_out: Vec<(String, String)>,
    /// Answers other than 200/204 and 503 `temporarily_unavailable`.
    unexpected: Vec<String>,
    /// Acknowledged operations (logins, rotations, logouts).
    count: usize,
    /// 503 `temporarily_unavailable` answers seen.
    unavailable: usize,
}

/// One answer: `Ok(Some(body))` for the expected success, `Ok(None)` for a 503
/// `temporarily_unavailable` (or a cut connection: the outcome is unknown), `Err` otherwise.
async fn answer(
    request: reqwest::RequestBuilder,
    ok: u16,
    acked: &Mutex<Acked>,
) -> Result<Option<Value>, String> {
    let Ok(response) = request.send().await else {
        return Ok(None);
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == ok {
        return Ok(Some(body));
    }
    if status == 503 && body["error"] == "temporarily_unavailable" {
        acked.lock().unwrap().unavailable += 1;
        return Ok(None);
    }
    Err(format!("{status} {body}"))
}

/// One client: log in, rotate three times, log out every other chain; a chain whose answer
/// was unknown (503) is abandoned (its outcome was not acknowledged).
async fn client(
    stack_mock: String,
    base: String,
    c: usize,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let Ok(code) = async {
            let body: Value = http
                .get(format!("{stack_mock}/mock/login?user=kill-{c}-{n}"))
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, reqwest::Error>(body["code"].as_str().unwrap_or("").to_string())
        }
        .await
        else {
            continue;
        };
        let login = http
            .post(format!("{base}/v1/login"))
            .json(&json!({ "code": code }));
        let mut tokens = match answer(login, 200, &acked).await {
            Ok(Some(body)) => body,
            Ok(None) => continue,
            Err(err) => {
                acked
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("login: {err}"));
                continue;
            }
        };
        let mut chain = tokens["refresh_token"].as_str().unwrap().to_string();
        {
            let mut acked = acked.lock().unwrap();
            acked.count += 1;
            acked.live.push(chain.clone());
        }
        let mut alive = true;
        for _ in 0..3 {
            let refresh = http
                .post(format!("{base}/v1/token/refresh"))
                .json(&json!({ "refresh_token": chain }));
            let outcome = answer(refresh, 200, &acked).await;
            let mut acked = acked.lock().unwrap();
            acked.live.retain(|t| *t != chain);
            match outcome {
                Ok(Some(body)) => {
                    chain = body["refresh_token"].as_str().unwrap().to_string();
                    tokens = body;
                    acked.count += 1;
                    acked.live.push(chain.clone());
                }
                Ok(None) => {
                    alive = false;
                    break;
                }
                Err(err) => {
                    acked.unexpected.push(format!("refresh: {err}"));
                    alive = false;
                    break;
                }
            }
        }
        if !alive || n % 2 == 0 {
            continue;
        }
        let access = tokens["access_token"].as_str().unwrap().to_string();
        let logout = http.post(format!("{base}/v1/logout")).bearer_auth(&access);
        let outcome = answer(logout, 204, &acked).await;
        let mut acked = acked.lock().unwrap();
        acked.live.retain(|t| *t != chain);
        match outcome {
            Ok(Some(_)) => {
                acked.count += 1;
                let sid = payload(&access)["sid"].as_str().unwrap().to_string();
                acked.logged_out.push((sid, chain));
            }
            Ok(None) => {}
            Err(err) => acked.unexpected.push(format!("logout: {err}")),
        }
    }
}

/// SIGKILL of `mariadbd` under 8 clients logging in, refreshing and logging out: while it is
/// down every answer is 503 `temporarily_unavailable` and `/readyz` is 503; after a restart of
/// the server the issuer reconnects by itself, and every acknowledged login and rotation still
/// refreshes and every acknowledged logout is in the feed and refuses its refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sigkill_under_load_loses_nothing_acknowledged_and_reconnects() {
    let mut server = MariaDb::start(&[]).await.unwrap();
    let db = server.create_database().unwrap();
    let stack = stack_on(&server.url(&db), &[("WEAUTH_MYSQL_ACQUIRE_TIMEOUT", "1s")]).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            tokio::spawn(client(
                stack.mock.base_url(),
                stack.url(""),
                c,
                Arc::clone(&acked),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let count = |acked: &Arc<Mutex<Acked>>| acked.lock().unwrap().count;
    eventually(
        Duration::from_secs(30),
        "100 acknowledged operations",
        || {
            let n = count(&acked);
            async move { n >= 100 }
        },
    )
    .await;

    server.kill().await;
    let killed_at = Instant::now();
    let before = count(&acked);
    let http = stack.http.clone();
    let readyz = stack.url("/readyz");
    eventually(
        Duration::from_secs(10),
        "/readyz 503 with the store down",
        || {
            let (http, url) = (http.clone(), readyz.clone());
            async move {
                let response = http.get(url).send().await.unwrap();
                response.status().as_u16() == 503
                    && response.json::<Value>().await.unwrap()["error"] == "temporarily_unavailable"
            }
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the load answered 503", || {
        let n = acked.lock().unwrap().unavailable;
        async move { n > 0 }
    })
    .await;
    let down_for = killed_at.elapsed();

    server.restart().await.unwrap();
    let restarted_at = Instant::now();
    eventually(Duration::from_secs(30), "/readyz 200 again", || {
        let (http, url) = (http.clone(), readyz.clone());
        async move { http.get(url).send().await.unwrap().status().as_u16() == 200 }
    })
    .await;
    let ready_after = restarted_at.elapsed();
    let resumed = count(&acked);
    eventually(
        Duration::from_secs(30),
        "50 more operations after the restart",
        || {
            let n = count(&acked);
            async move { n >= resumed + 50 }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let acked = std::mem::take(&mut *acked.lock().unwrap());
    println!(
        "mysql kill: {before} operations acknowledged before the kill, {} in all; {} answers 503 \
         while down (checked for {down_for:?}); /readyz 200 {ready_after:?} after the restart; \
         {} live chains and {} logouts checked",
        acked.count,
        acked.unavailable,
        acked.live.len(),
        acked.logged_out.len()
    );
    assert!(acked.unexpected.is_empty(), "{:?}", acked.unexpected);
    for chain in &acked.live {
        let (status, body, _) = stack
            .post("/v1/token/refresh", json!({ "refresh_token": chain }))
            .await;
        assert_eq!(
            status, 200,
            "an acknowledged refresh token was lost: {body}"
        );
    }
    let feed = stack.feed(0, 0).await;
    let revoked: HashMap<&str, &Value> = feed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "sid")
        .map(|e| (e["value"].as_str().unwrap(), e))
        .collect();
    for (sid, chain) in &acked.logged_out {
        assert!(revoked.contains_key(sid.as_str()), "logout of {sid} lost");
        let (status, _, _) = stack
            .post("/v1/token/refresh", json!({ "refresh_token": chain }))
            .await;
        assert_eq!(status, 400, "a logged-out session refreshed");
    }
}
