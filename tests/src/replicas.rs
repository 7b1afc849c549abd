//! What the end-to-end tests of several issuer replicas share (`e2e_replicas.rs`,
//! `e2e_cluster.rs`): a client, the replicas' metrics, the replica holding the filter's feed
//! long poll, and the calls their load makes through Envoy.

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
