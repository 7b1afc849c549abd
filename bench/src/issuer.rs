//! The sections that need the real issuer, run on the `weauth_tests::harness` stack (mock
//! WeChat in-process, issuer and Envoy with the filter as child processes):
//!
//! - revocation delay: log in, see the token accepted at Envoy, log out at the issuer, then
//!   poll Envoy with the token until it is refused; the delay is from the logout response to
//!   the first refusal;
//! - issuer throughput: logins/s and refreshes/s at fixed concurrency against the mock, with
//!   p50/p99, the issuer's resident memory before and after, and the raw EdDSA token-signing
//!   rate of this machine (`weauth_token::sign`, one thread) as the ceiling.
//!
//! Login rate limiting is switched off (`WEAUTH_LOGIN_RATE=0`) for these stacks: every request
//! comes from 127.0.0.1, which the default limit would throttle after a burst of 20.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weauth_tests::harness::{Stack, TokenResponse};
use weauth_token::{sign, Algorithm, SigningKey};

use crate::procs::rss_kib;
use crate::report::{DelayResult, IssuerResult, Phase};
use crate::stats::{millis, summarize};

fn builder() -> weauth_tests::harness::StackBuilder {
    Stack::builder().issuer_env("WEAUTH_LOGIN_RATE", "0")
}

async fn status_through_envoy(stack: &Stack, token: &str) -> u16 {
    stack
        .get("/api/bench", Some(token))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Measures `count` revocations, giving each up to `give_up` to reach Envoy running `edge`
/// (the wasm or the native build of the filter).
pub async fn revocation_delay(
    count: usize,
    give_up: Duration,
    edge: weauth_tests::harness::Edge,
) -> Result<DelayResult, String> {
    let stack = builder()
        .edge(edge)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let mut delays = Vec::with_capacity(count);
    let mut timeouts = 0;
    let mut errors = Vec::new();
    for i in 0..count {
        let user = format!("bench-delay-{i}");
        let tokens = match stack.login(&user).await {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("login: {e}"));
                if errors.len() > 5 {
                    break;
                }
                continue;
            }
        };
        // The fresh token must be accepted before it is revoked.
        let accepted_by = Instant::now() + Duration::from_secs(2);
        while status_through_envoy(&stack, &tokens.access_token).await != 200 {
            if Instant::now() > accepted_by {
                errors.push("a fresh token was not accepted by Envoy within 2 s".into());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let logout = client
            .post(format!("{}/v1/logout", stack.issuer_url()))
            .bearer_auth(&tokens.access_token)
            .send()
            .await;
        let logged_out = Instant::now();
        match logout {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                errors.push(format!("logout answered {}", r.status()));
                continue;
            }
            Err(e) => {
                errors.push(format!("logout: {e}"));
                continue;
            }
        }
        loop {
            let status = status_through_envoy(&stack, &tokens.access_token).await;
            if status == 401 || status == 403 {
                delays.push(logged_out.elapsed());
                break;
            }
            if logged_out.elapsed() > give_up {
                timeouts += 1;
                break;
            }
        }
    }
    let ms = millis(&delays);
    Ok(DelayResult {
        summary: summarize(&ms),
        max_ms: ms.iter().copied().reduce(f64::max),
        timeouts,
        errors,
    })
}

/// Signs issuer-shaped claims with a fresh Ed25519 key for `duration`; tokens per second.
pub fn signing_rate(duration: Duration) -> f64 {
    let seed = [7u8; 32];
    let Ok(key) = SigningKey::from_seed(Algorithm::EdDSA, &seed) else {
        return 0.0;
    };
    let claims = crate::tokens::claims(1_700_000_000, 900);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        for _ in 0..100 {
            if sign(&claims, &key).is_ok() {
                n += 1;
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[derive(Default)]
struct Collected {
    latencies: Mutex<Vec<Duration>>,
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Collected {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(what);
        }
    }

    fn phase(&self, seconds: f64) -> Phase {
        let lat = self
            .latencies
            .lock()
            .map(|l| millis(&l))
            .unwrap_or_default();
        Phase {
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            seconds,
            latency: summarize(&lat),
            first_error: self.first_error.lock().ok().and_then(|f| f.clone()),
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
    let resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "{status}: {}",
            body.get("error").and_then(Value::as_str).unwrap_or("?")
        ))
    }
}

/// Logins then refreshes, each for `duration` with `concurrency` clients, straight at the
/// issuer (not through Envoy); on SQLite, or with `redis` on one replica over a real
/// `redis-server` (AOF `appendfsync always`).
pub async fn throughput(
    concurrency: usize,
    duration: Duration,
    redis: bool,
) -> Result<IssuerResult, String> {
    let mut builder = builder().without_envoy();
    if redis {
        builder = builder.redis_replicas(1);
    }
    throughput_on(concurrency, duration, builder).await
}

/// As [`throughput`], with one replica on a local MariaDB (`mariadbd`, InnoDB,
/// `innodb_flush_log_at_trx_commit=1`: every commit flushed).
pub async fn throughput_mysql(
    concurrency: usize,
    duration: Duration,
) -> Result<IssuerResult, String> {
    let builder = builder().without_envoy().mysql_replicas(1);
    throughput_on(concurrency, duration, builder).await
}

/// As [`throughput`], with one replica on a 6-node Redis Cluster (3 primaries, 3 replicas,
/// AOF `appendfsync always`, every write `WAIT`ing for a replica of every primary; sessions spread over the slots).
pub async fn throughput_cluster(
    concurrency: usize,
    duration: Duration,
) -> Result<IssuerResult, String> {
    let builder = builder().without_envoy().redis_replicas(1).redis_cluster();
    throughput_on(concurrency, duration, builder).await
}

async fn throughput_on(
    concurrency: usize,
    duration: Duration,
    builder: weauth_tests::harness::StackBuilder,
) -> Result<IssuerResult, String> {
    let stack = Arc::new(builder.start().await.map_err(|e| e.to_string())?);
    let pid = stack.child_pids().first().copied();
    let rss_before_kib = pid.and_then(|p| rss_kib(p).ok());
    let client = reqwest::Client::new();
    let login_url = format!("{}/v1/login", stack.issuer_url());
    let refresh_url = format!("{}/v1/token/refresh", stack.issuer_url());

    // Logins: each client logs in new users (a fresh code from the mock, in-process, outside
    // the timed request) until the phase ends, and keeps its last refresh token.
    let logins = Arc::new(Collected::default());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (stack, client, url, col) = (
            stack.clone(),
            client.clone(),
            login_url.clone(),
            logins.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut last: Option<String> = None;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let code = stack.mock.login(&format!("bench-{w}-{i}")).code;
                i += 1;
                let t = Instant::now();
                match post(&client, &url, &json!({ "code": code })).await {
                    Ok(body) => {
                        let elapsed = t.elapsed();
                        col.ok.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = col.latencies.lock() {
                            l.push(elapsed);
                        }
                        if let Ok(tokens) = serde_json::from_value::<TokenResponse>(body) {
                            last = Some(tokens.refresh_token);
                        }
                    }
                    Err(e) => col.error(format!("login {e}")),
                }
            }
            last
        }));
    }
    let mut refresh_tokens = Vec::new();
    for t in tasks {
        if let Ok(Some(token)) = t.await {
            refresh_tokens.push(token);
        }
    }
    let login_phase = logins.phase(start.elapsed().as_secs_f64());

    // Refreshes: each client rotates its own refresh token (single use) in a loop.
    let refreshes = Arc::new(Collected::default());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for token in refresh_tokens {
        let (client, url, col) = (client.clone(), refresh_url.clone(), refreshes.clone());
        tasks.push(tokio::spawn(async move {
            let mut token = token;
            while Instant::now() < deadline {
                let t = Instant::now();
                match post(&client, &url, &json!({ "refresh_token": token })).await {
                    Ok(body) => {
                        let elapsed = t.elapsed();
                        let Ok(next) = serde_json::from_value::<TokenResponse>(body) else {
                            col.error("refresh: unreadable token response".into());
                            break;
                        };
                        col.ok.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = col.latencies.lock() {
                            l.push(elapsed);
                        }
                        token = next.refresh_token;
                    }
                    Err(e) => {
                        col.error(format!("refresh {e}"));
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let refresh_phase = refreshes.phase(start.elapsed().as_secs_f64());
    let rss_after_kib = pid.and_then(|p| rss_kib(p).ok());
    let sign_per_sec_one_thread =
        tokio::task::spawn_blocking(|| signing_rate(Duration::from_secs(1)))
            .await
            .unwrap_or(0.0);
    Ok(IssuerResult {
        concurrency,
        logins_made: login_phase.ok,
        logins: login_phase,
        refreshes: refresh_phase,
        sign_per_sec_one_thread,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rss_before_kib,
        rss_after_kib,
    })
}
