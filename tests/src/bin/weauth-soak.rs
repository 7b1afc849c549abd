//! `make soak`: a bounded soak test of the whole stack on loopback.
//!
//! Boots the harness stack (real issuer, real Envoy with the filter, two workers), then runs
//! `SOAK_CLIENTS` (default 8) clients for `SOAK_SECONDS` (default 120) through Envoy, each
//! looping over: log in, call the API, refresh, call the API with the new token; every 4th
//! round it logs out and waits until the edge refuses the old token (a 401 the scenario
//! causes on purpose), every 10th round it replays a used refresh token (400 on purpose, and
//! the session must then be refused at the edge), and every round it sends one junk token
//! (401 on purpose). Every other answer must be a success.
//!
//! The issuer's and Envoy's resident memory (`VmRSS` in `/proc/<pid>/status`) is sampled every
//! 5 s; the baseline is taken after a warm-up (a quarter of the run, at most 30 s), when the
//! filter's token cache and the allocators have settled. It prints a summary table and exits
//! non-zero on any unexpected answer or when either process grew by more than its bound over
//! the baseline (`SOAK_ISSUER_GROWTH_MIB`, default 32; `SOAK_ENVOY_GROWTH_MIB`, default 64:
//! the filter's cache is bounded at 10 000 entries per worker and the revocation set by the
//! access-token lifetime, so steady load must plateau well below that).
//!
//! Meanwhile, every `SOAK_CONFIG_UPDATE_SECONDS` (default 10; 0: never) the filter's
//! configuration is changed through Envoy's LDS file, as a control plane (Istio, Envoy Gateway)
//! pushes listener updates: Envoy builds a new filter configuration and the old one drains
//! (1 s). Every update must be taken, the answers above stay as expected through them, what the
//! configurations leave behind counts in Envoy's memory bound, and Envoy's thread count at the
//! end must be what it was after the warm-up.
//!
//! Uses the binaries the harness uses (`WEAUTH_ISSUER_BIN`, `WEAUTH_FILTER_WASM`,
//! `WEAUTH_ENVOY_BIN`; `WEAUTH_FILTER_BUILD=native` for the native build, see
//! `weauth_tests::harness`). Loopback only.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use weauth_tests::harness::Stack;

/// Tally of one kind of operation.
#[derive(Default, Debug, Clone)]
struct Tally {
    ok: u64,
    expected_refusals: u64,
    unexpected: u64,
    total_ms: u128,
    max_ms: u128,
}

#[derive(Default)]
struct Report {
    ops: BTreeMap<&'static str, Tally>,
    samples: Vec<String>,
}

impl Report {
    fn record(&mut self, op: &'static str, outcome: Verdict, took: Duration, detail: String) {
        let t = self.ops.entry(op).or_default();
        match outcome {
            Verdict::Ok => t.ok += 1,
            Verdict::Expected => t.expected_refusals += 1,
            Verdict::Unexpected => {
                t.unexpected += 1;
                if self.samples.len() < 20 {
                    self.samples.push(format!("{op}: {detail}"));
                }
            }
        }
        let ms = took.as_millis();
        t.total_ms += ms;
        t.max_ms = t.max_ms.max(ms);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Expected,
    Unexpected,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A request's error with its causes ("error sending request" alone does not say why).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

async fn api(client: &reqwest::Client, envoy: &str, token: &str) -> Result<u16, String> {
    client
        .get(format!("{envoy}/api/hello"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| describe(&e))
}

/// `GET /api/hello` through Envoy with `token`: `Ok` when it answers `want`, else what came back.
async fn api_expect(
    client: &reqwest::Client,
    envoy: &str,
    token: &str,
    want: u16,
) -> Result<(), String> {
    match api(client, envoy, token).await {
        Ok(status) if status == want => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// POSTs for a token pair (login or refresh): `(access_token, refresh_token)` on 200, else what
/// came back instead.
async fn token_pair(
    client: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> Result<(String, String), String> {
    match post(client, url, None, body).await {
        Ok((200, body)) => {
            let member = |name: &str| body[name].as_str().unwrap_or_default().to_string();
            Ok((member("access_token"), member("refresh_token")))
        }
        other => Err(format!("{other:?}")),
    }
}

async fn post(
    client: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: serde_json::Value,
) -> Result<(u16, serde_json::Value), String> {
    let mut req = client.post(url).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.map_err(|e| describe(&e))?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
}

/// Polls the API with `token` until it answers 401 (the edge learned of a revocation).
async fn until_refused(client: &reqwest::Client, envoy: &str, token: &str) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match api(client, envoy, token).await? {
            401 => return Ok(()),
            200 if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Err(format!("still {other} after {:?}", start.elapsed())),
        }
    }
}

/// One client's loop until `deadline`. With `reuse` off every request opens its own
/// connection: while configurations change, a listener's drain closes the connections of the
/// old one, and a kept-alive connection can be closed just as a request goes out on it ("connection
/// closed before message completed" — the race of every HTTP/1.1 keep-alive client, which
/// clients answer by retrying); the soak counts every failure as one, so it does not keep any.
async fn client_loop(
    stack: Arc<Stack>,
    id: usize,
    deadline: Instant,
    report: Arc<Mutex<Report>>,
    reuse: bool,
) {
    let mut client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30));
    if !reuse {
        client = client.pool_max_idle_per_host(0);
    }
    let client = client.build().unwrap_or_default();
    let envoy = stack.envoy_url();
    let record = |op, outcome, took, detail| {
        if let Ok(mut r) = report.lock() {
            r.record(op, outcome, took, detail);
        }
    };
    // `good` when the call answered as expected, else unexpected with what came back.
    let record_answer = |op, good, started: Instant, answer: Result<(), String>| match answer {
        Ok(()) => record(op, good, started.elapsed(), String::new()),
        Err(detail) => record(op, Verdict::Unexpected, started.elapsed(), detail),
    };
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        // Log in (through Envoy; the code comes from the mock WeChat).
        let t = Instant::now();
        let code = stack.mock.login(&format!("soak-{id}-{}", round % 50)).code;
        let (access, refresh) = match token_pair(
            &client,
            format!("{envoy}/v1/login"),
            json!({ "code": code }),
        )
        .await
        {
            Ok(pair) => {
                record("login", Verdict::Ok, t.elapsed(), String::new());
                pair
            }
            Err(what) => {
                record("login", Verdict::Unexpected, t.elapsed(), what);
                continue;
            }
        };
        for _ in 0..3 {
            let t = Instant::now();
            let answer = api_expect(&client, &envoy, &access, 200).await;
            record_answer("api", Verdict::Ok, t, answer);
        }
        // A junk token: refused on purpose.
        let t = Instant::now();
        let answer = api_expect(&client, &envoy, "eyJhbGciOiJFZERTQSJ9.e30.AAAA", 401).await;
        record_answer("api (junk token)", Verdict::Expected, t, answer);
        // Refresh.
        let t = Instant::now();
        let url = format!("{envoy}/v1/token/refresh");
        let (access2, _refresh2) =
            match token_pair(&client, url.clone(), json!({ "refresh_token": refresh })).await {
                Ok(pair) => {
                    record("refresh", Verdict::Ok, t.elapsed(), String::new());
                    pair
                }
                Err(what) => {
                    record("refresh", Verdict::Unexpected, t.elapsed(), what);
                    continue;
                }
            };
        for _ in 0..2 {
            let t = Instant::now();
            let answer = api_expect(&client, &envoy, &access2, 200).await;
            record_answer("api", Verdict::Ok, t, answer);
        }
        if round.is_multiple_of(10) {
            // Replay the used refresh token: 400, and the session is revoked at the edge.
            let t = Instant::now();
            match post(&client, url, None, json!({ "refresh_token": refresh })).await {
                Ok((400, _)) => record(
                    "refresh reuse",
                    Verdict::Expected,
                    t.elapsed(),
                    String::new(),
                ),
                // Not refused: nothing to wait for at the edge (counted once, here).
                other => {
                    let detail = format!("{other:?}");
                    record("refresh reuse", Verdict::Unexpected, t.elapsed(), detail);
                    continue;
                }
            }
            let t = Instant::now();
            match until_refused(&client, &envoy, &access2).await {
                Ok(()) => record(
                    "edge refuses reused session",
                    Verdict::Expected,
                    t.elapsed(),
                    String::new(),
                ),
                Err(e) => record(
                    "edge refuses reused session",
                    Verdict::Unexpected,
                    t.elapsed(),
                    e,
                ),
            }
        } else if round.is_multiple_of(4) {
            let t = Instant::now();
            match post(
                &client,
                format!("{envoy}/v1/logout"),
                Some(&access2),
                json!({}),
            )
            .await
            {
                Ok((204, _)) => record("logout", Verdict::Ok, t.elapsed(), String::new()),
                other => {
                    let detail = format!("{other:?}");
                    record("logout", Verdict::Unexpected, t.elapsed(), detail);
                    continue;
                }
            }
            let t = Instant::now();
            match until_refused(&client, &envoy, &access2).await {
                Ok(()) => record(
                    "edge refuses logged-out token",
                    Verdict::Expected,
                    t.elapsed(),
                    String::new(),
                ),
                Err(e) => record(
                    "edge refuses logged-out token",
                    Verdict::Unexpected,
                    t.elapsed(),
                    e,
                ),
            }
        }
    }
}

/// Changes the filter's configuration every `every` seconds until `deadline` (none when 0):
/// the updates Envoy took, and what went wrong with the others.
async fn update_loop(stack: Arc<Stack>, every: u64, deadline: Instant) -> (u64, Vec<String>) {
    let (mut taken, mut errors) = (0u64, Vec::new());
    if every == 0 {
        return (taken, errors);
    }
    let every = Duration::from_secs(every);
    while Instant::now() + every < deadline {
        tokio::time::sleep(every).await;
        // A change Envoy must build a new configuration for, and no change of behaviour.
        let patch = json!({"cache_entries": 10_000 - (taken + errors.len() as u64) % 2});
        match stack.update_filter_config(&patch).await {
            Ok(()) => taken += 1,
            Err(e) => errors.push(e.to_string()),
        }
    }
    (taken, errors)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let seconds = env_u64("SOAK_SECONDS", 120);
    let clients = env_u64("SOAK_CLIENTS", 8) as usize;
    let issuer_bound_mib = env_u64("SOAK_ISSUER_GROWTH_MIB", 32);
    let envoy_bound_mib = env_u64("SOAK_ENVOY_GROWTH_MIB", 64);
    let update_every = env_u64("SOAK_CONFIG_UPDATE_SECONDS", 10);
    println!("weauth soak: {clients} clients for {seconds} s through Envoy (2 workers), loopback");
    if update_every > 0 {
        println!("  the filter's configuration updated through LDS every {update_every} s");
    }
    let mut builder = Stack::builder()
        .concurrency(2)
        .issuer_env("WEAUTH_LOGIN_RATE", "0")
        // The scenario replays used refresh tokens at once and expects the session revoked.
        .issuer_env("WEAUTH_REFRESH_REUSE_GRACE", "0s");
    if update_every > 0 {
        builder = builder.listeners_from_file();
    }
    let stack = match builder.start().await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("cannot start the weauth stack: {e}");
            return ExitCode::from(2);
        }
    };
    let (Some(issuer_pid), Some(envoy_pid)) = (stack.issuer_pid(), stack.envoy_pid()) else {
        eprintln!("the stack has no issuer or Envoy process");
        return ExitCode::from(2);
    };
    let start_rss = (
        rss_kib(issuer_pid).unwrap_or(0),
        rss_kib(envoy_pid).unwrap_or(0),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let warmup = Duration::from_secs((seconds / 4).min(30));
    let report = Arc::new(Mutex::new(Report::default()));
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            let reuse = update_every == 0;
            tokio::spawn(client_loop(
                stack.clone(),
                id,
                deadline,
                report.clone(),
                reuse,
            ))
        })
        .collect();
    let updates = tokio::spawn(update_loop(stack.clone(), update_every, deadline));

    let mut baseline: Option<(u64, u64)> = None;
    let mut baseline_threads = None;
    let mut peak = start_rss;
    let mut last = start_rss;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (Some(i), Some(e)) = (rss_kib(issuer_pid), rss_kib(envoy_pid)) else {
            eprintln!("the issuer or Envoy exited during the soak");
            return ExitCode::from(1);
        };
        last = (i, e);
        peak = (peak.0.max(i), peak.1.max(e));
        if baseline.is_none() && started.elapsed() >= warmup {
            baseline = Some(last);
            baseline_threads = stack.envoy_threads();
        }
        let done: u64 = report
            .lock()
            .map(|r| {
                r.ops
                    .values()
                    .map(|t| t.ok + t.expected_refusals + t.unexpected)
                    .sum()
            })
            .unwrap_or(0);
        println!(
            "  t={:>4}s  operations={done:>7}  issuer RSS {:>6.1} MiB  envoy RSS {:>6.1} MiB",
            started.elapsed().as_secs(),
            mib(i),
            mib(e)
        );
    }
    for t in tasks {
        let _ = t.await;
    }
    let (updated, update_errors) = updates
        .await
        .unwrap_or_else(|e| (0, vec![format!("the update task failed: {e}")]));
    // The last configuration replaced has drained (1 s) before the threads are counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let threads = (baseline_threads, stack.envoy_threads());
    let elapsed = started.elapsed();
    let baseline = baseline.unwrap_or(start_rss);
    let report = match report.lock() {
        Ok(r) => (r.ops.clone(), r.samples.clone()),
        Err(_) => (BTreeMap::new(), Vec::new()),
    };
    let stats = stack.envoy_stats().await.unwrap_or_default();

    println!(
        "\n{:<32} {:>8} {:>10} {:>10} {:>9} {:>8}",
        "operation", "ok", "refused*", "UNEXPECTED", "mean ms", "max ms"
    );
    let mut unexpected = 0;
    let mut total = 0;
    for (op, t) in &report.0 {
        let n = t.ok + t.expected_refusals + t.unexpected;
        total += n;
        unexpected += t.unexpected;
        println!(
            "{op:<32} {:>8} {:>10} {:>10} {:>9.1} {:>8}",
            t.ok,
            t.expected_refusals,
            t.unexpected,
            t.total_ms as f64 / n.max(1) as f64,
            t.max_ms
        );
    }
    println!("* refused on purpose by the scenario (junk token, logout, refresh reuse)");
    println!(
        "\n{total} operations in {:.0} s ({:.0}/s); unexpected answers: {unexpected}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for name in ["allowed", "cache_hit", "cache_miss", "revocation_entries"] {
        let name = stack.filter_stat(name);
        if let Some(v) = weauth_tests::harness::stat_value(&stats, &name) {
            println!("envoy {name}: {v}");
        }
    }
    if update_every > 0 {
        println!(
            "filter configuration updates taken: {updated}, failed: {}",
            update_errors.len()
        );
    }
    for error in &update_errors {
        println!("update failed: {error}");
    }
    println!(
        "envoy threads after the warm-up: {}, at the end: {}",
        threads.0.map_or("?".into(), |n| n.to_string()),
        threads.1.map_or("?".into(), |n| n.to_string())
    );
    let growth = (
        last.0 as i64 - baseline.0 as i64,
        last.1 as i64 - baseline.1 as i64,
    );
    println!(
        "\n{:<8} {:>10} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "process", "start MiB", "baseline MiB", "peak MiB", "end MiB", "growth MiB", "bound MiB"
    );
    let mut failed = unexpected > 0
        || !update_errors.is_empty()
        || matches!(threads, (Some(warm), Some(end)) if warm != end);
    for (name, s, b, p, e, g, bound) in [
        (
            "issuer",
            start_rss.0,
            baseline.0,
            peak.0,
            last.0,
            growth.0,
            issuer_bound_mib,
        ),
        (
            "envoy",
            start_rss.1,
            baseline.1,
            peak.1,
            last.1,
            growth.1,
            envoy_bound_mib,
        ),
    ] {
        let over = g > (bound as i64) * 1024;
        failed |= over;
        println!(
            "{name:<8} {:>10.1} {:>12.1} {:>10.1} {:>10.1} {:>12.1} {:>10}{}",
            mib(s),
            mib(b),
            mib(p),
            mib(e),
            g as f64 / 1024.0,
            bound,
            if over { "  OVER" } else { "" }
        );
    }
    for sample in &report.1 {
        println!("unexpected: {sample}");
    }
    if let Ok(stack) = Arc::try_unwrap(stack) {
        stack.shutdown().await;
    }
    if failed {
        println!("\nsoak FAILED");
        ExitCode::from(1)
    } else {
        println!("\nsoak passed");
        ExitCode::SUCCESS
    }
}
