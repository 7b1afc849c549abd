//! What the end-to-end tests of several issuer replicas share (`e2e_replicas.rs`,
//! `e2e_cluster.rs`): a client, the replicas' metrics, the replica holding the filter's feed
//! long poll, the calls their load makes through Envoy, the load itself ([`Load`]) and the
//! check that nothing it was told was done has been lost ([`assert_nothing_acked_lost`]).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{stat_value, Stack};

/// A client with no connection reuse (every request may reach another replica) and a 10 s
/// timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The value of gauge or counter `name` (without labels) on replica `url`'s `/metrics`.
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<u64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    stat_value(&text.replace(' ', ": "), name)
}

/// The number of feed long polls replica `url` holds now.
pub async fn feed_waiters(http: &reqwest::Client, url: &str) -> Option<u64> {
    metric(http, url, "weauth_feed_waiters").await
}

/// The replica holding the filter's long poll (waits up to 10 s for one to appear).
pub async fn poll_holder(stack: &Stack, http: &reqwest::Client) -> usize {
    let started = Instant::now();
    loop {
        for i in 0..stack.replica_count() {
            if feed_waiters(http, &stack.replica_url(i)).await.unwrap_or(0) > 0 {
                return i;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no replica holds the filter's feed long poll"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /api/hello` through Envoy: the status.
pub async fn hello(http: &reqwest::Client, envoy: &str, token: &str) -> u16 {
    match http
        .get(format!("{envoy}/api/hello"))
        .bearer_auth(token)
        .send()
        .await
    {
        Ok(resp) => resp.status().as_u16(),
        Err(_) => 0,
    }
}

/// Logs a mock user in through Envoy: `(status, body)`.
pub async fn login(http: &reqwest::Client, mock: &str, envoy: &str, user: &str) -> (u16, Value) {
    let code: Value = http
        .get(format!("{mock}/mock/login?user={user}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    post(
        http,
        envoy,
        "/v1/login",
        None,
        &json!({"code": code["code"]}),
    )
    .await
}

/// POSTs `body` as JSON to `base` + `path`: `(status, body)`, status 0 when no answer came.
pub async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = http.post(format!("{base}{path}")).json(body);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Rounds of the cross-replica logout check, back to back.
pub const LOGOUT_ROUNDS: usize = 3;
/// Each round's bound, from the logout's 204 to the edge's 401: a loaded CI machine's margin
/// over the milliseconds the announcement takes, still under the 5 s of the seq re-read.
pub const LOGOUT_ROUND_BOUND: Duration = Duration::from_secs(4);
/// The fastest round's bound: the pub/sub wake-up itself (DESIGN.md: "within a second").
pub const LOGOUT_FASTEST_BOUND: Duration = Duration::from_secs(1);

/// A logout at one replica refused at the edge while the filter's feed poll is held by the
/// other replica (the writer's announcement wakes the holder's poll): [`LOGOUT_ROUNDS`]
/// rounds back to back (log `user{round}` in, find the poll's holder, log out at the other
/// replica), each under [`LOGOUT_ROUND_BOUND`] from the logout's 204 and the fastest under
/// [`LOGOUT_FASTEST_BOUND`]. The issuer's safety net, a `seq` re-read every 5 s, cannot pass
/// that: a round after one the re-read ended starts just after a re-read, so it would wait
/// about 5 s for the next. Each round's delay is printed under `label`.
pub async fn cross_replica_logout_rounds(stack: &Stack, http: &reqwest::Client, label: &str) {
    let envoy = stack.envoy_url();
    let mut delays = Vec::new();
    for round in 0..LOGOUT_ROUNDS {
        let tokens = stack.login(&format!("ann{round}")).await.unwrap();
        assert_eq!(hello(http, &envoy, &tokens.access_token).await, 200);
        let holder = poll_holder(stack, http).await;
        let writer = 1 - holder;
        let (status, _) = post(
            http,
            &stack.replica_url(writer),
            "/v1/logout",
            Some(&tokens.access_token),
            &json!({}),
        )
        .await;
        assert_eq!(status, 204, "logout at replica {writer}");
        let logged_out = Instant::now();
        let delay = loop {
            if hello(http, &envoy, &tokens.access_token).await == 401 {
                break logged_out.elapsed();
            }
            assert!(
                logged_out.elapsed() < LOGOUT_ROUND_BOUND,
                "{label} round {round}: the logout at replica {writer} was not enforced at the \
                 edge within {LOGOUT_ROUND_BOUND:?} of its 204 (poll held by replica {holder}; \
                 earlier rounds: {delays:?})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        println!(
            "{label} round {round}: logout at replica {writer}, feed poll held by replica \
             {holder}: refused at the edge {delay:?} after the 204"
        );
        delays.push(delay);
    }
    let fastest = delays.iter().min().copied().unwrap_or(Duration::MAX);
    assert!(
        fastest < LOGOUT_FASTEST_BOUND,
        "{label}: no round's logout reached the edge within {LOGOUT_FASTEST_BOUND:?} of its \
         204: {delays:?}"
    );
}

/// What a [`Load`] was answered with success, to check afterwards that none of it was lost.
#[derive(Debug, Default)]
pub struct Acked {
    /// The latest refresh token each worker got back with a 200 (one live session each).
    pub refresh: Vec<Option<String>>,
    /// Access tokens whose logout was answered 204, with the load's phase then.
    pub logged_out: Vec<(String, u8)>,
    /// Client-visible failures (status 0 = no answer, or 5xx): operation, status, phase.
    pub failures: Vec<(String, u16, u8)>,
    /// Requests answered (or failed), all operations.
    pub ops: usize,
}

/// A mixed load through Envoy: `workers` loops, each with at most one request in flight, of
/// login → (API call, refresh) ×3 → logout every other round, until stopped. A refresh not
/// answered 200 abandons its session (whether the old token was consumed is unknown). Each
/// logout and failure is tagged with the phase set by [`Load::set_phase`] (0 at start), so a
/// test can tell the failures of one fault from another's.
pub struct Load {
    acked: Arc<Mutex<Acked>>,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` loops against `stack`'s Envoy.
    pub fn start(stack: &Stack, workers: usize) -> Load {
        let acked = Arc::new(Mutex::new(Acked {
            refresh: vec![None; workers],
            ..Acked::default()
        }));
        let phase = Arc::new(AtomicU8::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|w| {
                tokio::spawn(worker(
                    w,
                    stack.envoy_url(),
                    stack.mock_url(),
                    Arc::clone(&acked),
                    Arc::clone(&phase),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        Load {
            acked,
            phase,
            stop,
            tasks,
        }
    }

    /// Tags what is acknowledged or fails from now on with `phase`.
    pub fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// Requests made so far.
    pub fn ops(&self) -> usize {
        self.acked.lock().unwrap().ops
    }

    /// The access tokens whose logout was acknowledged so far in `phase`.
    pub fn logged_out_in(&self, phase: u8) -> Vec<String> {
        let acked = self.acked.lock().unwrap();
        acked
            .logged_out
            .iter()
            .filter(|(_, p)| *p == phase)
            .map(|(access, _)| access.clone())
            .collect()
    }

    /// Stops the workers, waits for their last requests, and returns what was acknowledged.
    pub async fn stop(self) -> Acked {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// One worker of a [`Load`].
async fn worker(
    w: usize,
    envoy: String,
    mock: String,
    acked: Arc<Mutex<Acked>>,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) {
    let http = client();
    let fail = |op: &str, status: u16| {
        let mut a = acked.lock().unwrap();
        a.failures
            .push((op.to_string(), status, phase.load(Ordering::Relaxed)));
    };
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let (status, body) = login(&http, &mock, &envoy, &format!("u{w}-{round}")).await;
        acked.lock().unwrap().ops += 1;
        if status != 200 {
            fail("login", status);
            continue;
        }
        let mut access = body["access_token"].as_str().unwrap().to_string();
        let mut refresh = body["refresh_token"].as_str().unwrap().to_string();
        acked.lock().unwrap().refresh[w] = Some(refresh.clone());
        for _ in 0..3 {
            let status = hello(&http, &envoy, &access).await;
            acked.lock().unwrap().ops += 1;
            if status != 200 {
                fail("api", status);
            }
            let (status, body) = post(
                &http,
                &envoy,
                "/v1/token/refresh",
                None,
                &json!({"refresh_token": refresh}),
            )
            .await;
            acked.lock().unwrap().ops += 1;
            if status == 200 {
                access = body["access_token"].as_str().unwrap().to_string();
                refresh = body["refresh_token"].as_str().unwrap().to_string();
                acked.lock().unwrap().refresh[w] = Some(refresh.clone());
            } else {
                // Not acknowledged: the old token may or may not have been consumed; this
                // session is abandoned.
                fail("refresh", status);
                acked.lock().unwrap().refresh[w] = None;
                break;
            }
        }
        if round % 2 == 0 {
            let (status, _) = post(&http, &envoy, "/v1/logout", Some(&access), &json!({})).await;
            acked.lock().unwrap().ops += 1;
            if status == 204 {
                let mut a = acked.lock().unwrap();
                a.logged_out
                    .push((access.clone(), phase.load(Ordering::Relaxed)));
                a.refresh[w] = None;
            } else {
                fail("logout", status);
            }
        }
    }
}

/// Every acknowledged refresh token still rotates, and every acknowledged logout is refused at
/// the edge within `within` from the end of the refresh checks (the promise is "refused at
/// every sidecar within a second"; the last logouts were acknowledged moments ago, so each
/// gets that time from now). Returns how long the slowest logout took to be refused.
pub async fn assert_nothing_acked_lost(stack: &Stack, acked: &Acked, within: Duration) -> Duration {
    let http = client();
    let envoy = stack.envoy_url();
    for token in acked.refresh.iter().flatten() {
        let (status, body) = post(
            &http,
            &envoy,
            "/v1/token/refresh",
            None,
            &json!({"refresh_token": token}),
        )
        .await;
        assert_eq!(
            status, 200,
            "an acknowledged refresh token was lost: {body}"
        );
    }
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (access, _) in &acked.logged_out {
        loop {
            let status = hello(&http, &envoy, access).await;
            if status == 401 {
                break;
            }
            assert!(
                started.elapsed() < within,
                "an acknowledged logout is not enforced at the edge within {within:?} (status {status})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slowest = slowest.max(started.elapsed());
    }
    slowest
}
