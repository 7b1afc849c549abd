//! The revocation feed at mesh scale: N simulated sidecars hold `GET /v1/revocations` long
//! polls spread over two issuer replicas on one Redis, while revocations arrive at R per second
//! through the admin API (alternating replicas). Each simulated sidecar re-polls at once with
//! the answer's `seq`, as the filter does. Each case names the replicas' `WEAUTH_FEED_COALESCE`
//! (the longest wait of a wake of the long polls after the previous one; the window is held
//! polls ÷ `WEAUTH_FEED_ANSWER_RATE`, default 10 000/s, up to it: see `issuer/src/feed/mod.rs`); a
//! case with 0 is the unbounded baseline.
//!
//! The simulated sidecars speak HTTP/1.1 over one kept-alive connection each through
//! [`Poller`], a minimal client written for this driver: with reqwest (pool, URL parsing,
//! header maps) the 10 000 clients took several times the replicas' CPU on the same cores, so
//! the table measured mostly the driver. The revocations themselves go through reqwest.
//!
//! Per case: the time from a revocation's acknowledgment until every subscriber has it (p50,
//! p99 over revocations; a revocation some subscriber never got within the drain time counts
//! as missing), issuer CPU per delivered answer (both replicas' /proc utime+stime over the
//! answers they sent), and issuer memory per held poll (resident memory with all polls held
//! minus before any, over N). Bounded: each case runs `duration` plus at most 3 s of drain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weauth_tests::harness::Stack;

use crate::procs::{clock_ticks_per_second, cpu_ticks, rss_kib};
use crate::stats::{summarize, Summary};

/// One measured case.
#[derive(Debug, Clone)]
pub struct FanoutRow {
    pub subscribers: usize,
    pub rate: u32,
    /// The replicas' `WEAUTH_FEED_COALESCE`, ms.
    pub window_ms: u64,
    pub revocations: usize,
    /// Revocations not received by every subscriber within the drain time.
    pub missing: usize,
    /// Time until every subscriber had a revocation, ms.
    pub all_delivered: Option<Summary>,
    pub answers: u64,
    /// Answers per second while revocations arrived (and the first 0.5 s of the drain).
    pub answers_per_sec: Option<f64>,
    pub cpu_us_per_answer: Option<f64>,
    pub kib_per_poll: Option<f64>,
    pub note: String,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap_or_default()
}

fn issuer_cpu(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_ticks(*p).ok()).sum()
}

fn issuer_rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| rss_kib(*p).ok()).sum()
}

/// One simulated sidecar's connection: `GET /v1/revocations?since=…&wait=30` with the feed
/// credential, kept alive; answers are read by `Content-Length` (what the issuer sends).
struct Poller {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    addr: std::net::SocketAddr,
    credential: String,
    buf: Vec<u8>,
}

impl Poller {
    async fn connect(addr: std::net::SocketAddr, credential: &str) -> std::io::Result<Poller> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Poller {
            stream: tokio::io::BufReader::with_capacity(16 * 1024, stream),
            addr,
            credential: credential.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// One long poll: the answer's body, or an error (the caller reconnects).
    async fn poll(&mut self, since: u64) -> std::io::Result<Answer> {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let request = format!(
            "GET /v1/revocations?since={since}&wait=30 HTTP/1.1\r\nhost: {}\r\n\
             authorization: Bearer {}\r\n\r\n",
            self.addr, self.credential
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut length = None;
        let mut status_ok = None;
        loop {
            self.buf.clear();
            if self.stream.read_until(b'\n', &mut self.buf).await? == 0 {
                return Err(bad("connection closed"));
            }
            let line = std::str::from_utf8(&self.buf).map_err(|_| bad("header not UTF-8"))?;
            let line = line.trim_end();
            if status_ok.is_none() {
                status_ok = Some(line.split(' ').nth(1) == Some("200"));
                continue;
            }
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.ok_or_else(|| bad("no content-length"))?;
        self.buf.resize(length, 0);
        self.stream.read_exact(&mut self.buf).await?;
        if status_ok != Some(true) {
            return Err(bad("not 200"));
        }
        serde_json::from_slice(&self.buf).map_err(|e| bad(&e.to_string()))
    }
}

/// What a simulated sidecar reads of an answer (the rest is skipped, not parsed into values).
#[derive(serde::Deserialize)]
struct Answer {
    seq: u64,
    entries: Vec<AnswerEntry>,
}

#[derive(serde::Deserialize)]
struct AnswerEntry {
    seq: u64,
}

/// Runs every `(subscribers, revocations per second, coalescing window ms)` case on a fresh
/// two-replica stack.
///
/// # Errors
/// The stack did not start.
pub async fn run(
    cases: &[(usize, u32, u64)],
    duration: Duration,
) -> Result<Vec<FanoutRow>, String> {
    let mut rows = Vec::new();
    for &(subscribers, rate, window_ms) in cases {
        let stack = Stack::builder()
            .redis_replicas(2)
            .without_envoy()
            .issuer_env("WEAUTH_LOGIN_RATE", "0")
            .issuer_env("WEAUTH_FEED_COALESCE", format!("{window_ms}ms"))
            .start()
            .await
            .map_err(|e| e.to_string())?;
        eprintln!(
            "bench: fan-out {subscribers} subscribers × {rate} revocations/s, window {window_ms} ms"
        );
        let mut row = case(&stack, subscribers, rate, duration).await;
        row.window_ms = window_ms;
        rows.push(row);
        stack.shutdown().await;
    }
    Ok(rows)
}

async fn case(stack: &Stack, subscribers: usize, rate: u32, duration: Duration) -> FanoutRow {
    let pids = stack.replica_pids();
    let feed = stack.feed_token().to_string();
    let urls: Vec<String> = (0..stack.replica_count())
        .map(|i| stack.replica_url(i))
        .collect();
    let clients: Vec<reqwest::Client> = urls.iter().map(|_| client()).collect();
    let first: Value = match clients[0]
        .get(format!("{}/v1/revocations?since=0", urls[0]))
        .bearer_auth(&feed)
        .send()
        .await
    {
        Ok(resp) => resp.json().await.unwrap_or(Value::Null),
        Err(e) => return failed(subscribers, rate, format!("first feed read: {e}")),
    };
    let start_seq = first["seq"].as_u64().unwrap_or(1);
    let rss_before = issuer_rss(&pids);

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let holding = Arc::new(AtomicU64::new(0));
    let addrs: Vec<std::net::SocketAddr> = urls
        .iter()
        .filter_map(|u| u.trim_start_matches("http://").parse().ok())
        .collect();
    if addrs.len() != urls.len() {
        return failed(subscribers, rate, format!("replica addresses: {urls:?}"));
    }
    let mut tasks = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let addr = addrs[i % addrs.len()];
        let (feed, stop, answers, holding) = (
            feed.clone(),
            Arc::clone(&stop),
            Arc::clone(&answers),
            Arc::clone(&holding),
        );
        tasks.push(tokio::spawn(async move {
            let mut since = start_seq;
            let mut got: Vec<(u64, Instant)> = Vec::new();
            let mut first = true;
            let mut poller = None;
            while !stop.load(Ordering::Relaxed) {
                if poller.is_none() {
                    match Poller::connect(addr, &feed).await {
                        Ok(p) => poller = Some(p),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(conn) = poller.as_mut() else {
                    continue;
                };
                if first {
                    holding.fetch_add(1, Ordering::Relaxed);
                    first = false;
                }
                let body = match conn.poll(since).await {
                    Ok(body) => body,
                    Err(_) => {
                        poller = None;
                        continue;
                    }
                };
                let at = Instant::now();
                answers.fetch_add(1, Ordering::Relaxed);
                got.extend(body.entries.iter().map(|e| (e.seq, at)));
                since = body.seq;
            }
            got
        }));
    }
    // Let every subscriber's first poll arrive and be held.
    let settle = Instant::now();
    while holding.load(Ordering::Relaxed) < subscribers as u64
        && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_held = issuer_rss(&pids);

    // Revocations at `rate` per second, alternating replicas; acknowledgment time per seq.
    let acked: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let cpu_before = issuer_cpu(&pids);
    let answers_before = answers.load(Ordering::Relaxed);
    let admin = stack.admin_token().to_string();
    let total = (duration.as_secs_f64() * f64::from(rate)).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let began = Instant::now();
    let mut writers = Vec::new();
    for n in 0..total {
        let due = began + interval * u32::try_from(n).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let (http, url, admin, acked) = (
            clients[n % clients.len()].clone(),
            format!("{}/v1/admin/revoke", urls[n % urls.len()]),
            admin.clone(),
            Arc::clone(&acked),
        );
        writers.push(tokio::spawn(async move {
            if let Ok(resp) = http
                .post(url)
                .bearer_auth(admin)
                .json(&json!({"jti": format!("fan-{n}")}))
                .send()
                .await
            {
                let at = Instant::now();
                if let Ok(body) = resp.json::<Value>().await {
                    if let (Some(seq), Ok(mut map)) = (body["seq"].as_u64(), acked.lock()) {
                        map.insert(seq, at);
                    }
                }
            }
        }));
    }
    for w in writers {
        let _ = w.await;
    }
    // Drain: 3 s for the last answers (CPU is counted over the first 0.5 s of it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_after = issuer_cpu(&pids);
    let counted = began.elapsed();
    let answers_during = answers.load(Ordering::Relaxed) - answers_before;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    // Wake the held polls so the subscribers see `stop`.
    let _ = clients[0]
        .post(format!("{}/v1/admin/revoke", urls[0]))
        .bearer_auth(&admin)
        .json(&json!({"jti": "fan-stop"}))
        .send()
        .await;
    let _ = clients[1 % clients.len()]
        .post(format!("{}/v1/admin/revoke", urls[1 % urls.len()]))
        .bearer_auth(&admin)
        .json(&json!({"jti": "fan-stop-2"}))
        .send()
        .await;
    let mut last_seen: HashMap<u64, (usize, Instant)> = HashMap::new();
    for task in tasks {
        if let Ok(Ok(got)) = tokio::time::timeout(Duration::from_secs(10), task).await {
            for (seq, at) in got {
                let slot = last_seen.entry(seq).or_insert((0, at));
                slot.0 += 1;
                if at > slot.1 {
                    slot.1 = at;
                }
            }
        }
    }
    let acked = acked.lock().map(|m| m.clone()).unwrap_or_default();
    let mut all = Vec::new();
    let mut missing = 0;
    for (seq, at) in &acked {
        match last_seen.get(seq) {
            Some((count, last)) if *count >= subscribers => {
                all.push(last.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            }
            _ => missing += 1,
        }
    }
    let ticks = cpu_after.saturating_sub(cpu_before) as f64;
    let cpu_us = ticks * 1_000_000.0 / clock_ticks_per_second() as f64;
    FanoutRow {
        subscribers,
        rate,
        window_ms: 0,
        revocations: acked.len(),
        missing,
        all_delivered: summarize(&all),
        answers: answers_during,
        answers_per_sec: Some(answers_during as f64 / counted.as_secs_f64().max(1e-3)),
        cpu_us_per_answer: (answers_during > 0).then(|| cpu_us / answers_during as f64),
        kib_per_poll: (subscribers > 0)
            .then(|| rss_held.saturating_sub(rss_before) as f64 / subscribers as f64),
        note: String::new(),
    }
}

fn failed(subscribers: usize, rate: u32, note: String) -> FanoutRow {
    FanoutRow {
        subscribers,
        rate,
        window_ms: 0,
        revocations: 0,
        missing: 0,
        all_delivered: None,
        answers: 0,
        answers_per_sec: None,
        cpu_us_per_answer: None,
        kib_per_poll: None,
        note,
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// The fan-out section of `results.md`.
pub fn markdown(rows: Option<&Result<Vec<FanoutRow>, String>>) -> String {
    let mut md = String::from(
        "\n## Feed fan-out\n\nTwo issuer replicas (release) on one `redis-server`, no Envoy: N \
         simulated sidecars hold `GET /v1/revocations?wait=30` long polls spread over both \
         replicas and re-poll at once with each answer's `seq`; revocations arrive through \
         `POST /v1/admin/revoke` at R per second, alternating replicas. \"All have it\" = from \
         a revocation's acknowledgment until the last subscriber received it. CPU = both \
         replicas' utime+stime while revocations arrived ÷ answers sent then. Memory = both \
         replicas' resident memory with every poll held minus before, ÷ N. Window = the \
         replicas' `WEAUTH_FEED_COALESCE` (default 250 ms): after a wake the next waits held \
         polls ÷ `WEAUTH_FEED_ANSWER_RATE` (default 10 000/s), at most that; the first change \
         after a quiet window at once; 0 is the unbounded baseline, where every revocation \
         costs an answer and a new request per subscriber. \
         The driver, the replicas and Redis share the machine's cores.\n\n\
         | subscribers | revocations/s | window ms | revocations | missing | all have it p50 ms | p99 ms | answers | answers/s | issuer CPU µs/answer | issuer KiB/poll | note |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    match rows {
        None => md.push_str("Not run (`--only`).\n"),
        Some(Err(e)) => md.push_str(&format!("Not measured: {e}\n")),
        Some(Ok(rows)) => {
            for r in rows {
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    r.subscribers,
                    r.rate,
                    r.window_ms,
                    r.revocations,
                    r.missing,
                    num(r.all_delivered.map(|s| s.p50), 1),
                    num(r.all_delivered.map(|s| s.p99), 1),
                    r.answers,
                    num(r.answers_per_sec, 0),
                    num(r.cpu_us_per_answer, 1),
                    num(r.kib_per_poll, 2),
                    r.note
                ));
            }
        }
    }
    md
}
