//! End-to-end: what the shipped Envoy configuration (`envoy/envoy.yaml`) exposes where.
//!
//! - The admin API (`/v1/admin/*`) and the revocation feed (`/v1/revocations`) are not reachable
//!   through the public listener — not with their credentials, not with a valid user token, not
//!   through path variants — and nothing is revoked by trying; on the internal listener they
//!   work, and a revocation made there is enforced at the public edge.
//! - Envoy sets `X-Forwarded-For` (`use_remote_address`) and the stack's issuer trusts it from
//!   Envoy only, so the login rate limit counts each client on its own: one client using up its
//!   bucket does not lock out the others, and a client cannot escape its bucket by writing its
//!   own `X-Forwarded-For`.
//!
//! Clients come from distinct loopback addresses (127.0.0.2, 127.0.0.3: Linux routes all of
//! 127.0.0.0/8 to `lo`). Run: `make build && cargo test --target x86_64-unknown-linux-musl -p weauth-tests --test suites -- e2e_listeners::`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weauth_tests::harness::{peek_claims, Stack, StackBuilder};

async fn start(builder: StackBuilder) -> Stack {
    match builder.start().await {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the weauth stack: {e}"),
    }
}

/// A client whose connections come from `source` (a loopback address).
fn client_from(source: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(source))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends `method path` to `base` with `bearer`; status and body text.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    bearer: &str,
) -> (u16, String) {
    let mut req = client.request(method.clone(), &url).bearer_auth(bearer);
    if method == reqwest::Method::POST {
        req = req.json(&json!({"sub": "anyone"}));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// The revocation feed from the start, read on the internal listener.
async fn feed(stack: &Stack) -> Value {
    let resp = stack
        .client()
        .get(format!("{}/v1/revocations?since=0", stack.internal_url()))
        .bearer_auth(stack.feed_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "feed on the internal listener");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn admin_and_feed_public_listener_unreachable_internal_listener_serves_them() {
    let stack = start(Stack::builder()).await;
    let alice = stack.login("alice").await.unwrap();
    let client = stack.client();
    let public = stack.envoy_url();
    let admin = stack.admin_token().to_string();
    let feed_token = stack.feed_token().to_string();
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

    // With their own credentials (not JWTs): the filter has no public rule for these paths,
    // so it refuses them as it refuses any unauthenticated /v1/ call.
    for (method, path, bearer) in [
        (&post, "/v1/admin/revoke", &admin),
        (&get, "/v1/revocations?since=0", &feed_token),
    ] {
        let (status, body) = send(client, method.clone(), format!("{public}{path}"), bearer).await;
        assert_eq!(
            status, 401,
            "{method} {path} on the public listener: {body}"
        );
        assert!(body.contains("invalid_token"), "{path}: {body}");
    }
    // With a valid user token the filter lets the request on, and the router has no route:
    // 404, also for path variants.
    for (method, path) in [
        (&post, "/v1/admin/revoke"),
        (&post, "/v1/admin/revoke?x=1"),
        (&post, "/v1//admin/revoke"),
        (&post, "/v1/admin//revoke"),
        (&post, "/v1/admin/./revoke"),
        (&post, "/v1/%61dmin/revoke"),
        (&get, "/v1/revocations?since=0"),
        (&get, "/v1/revocations/?since=0"),
        (&get, "/v1//revocations?since=0"),
    ] {
        let (status, body) = send(
            client,
            method.clone(),
            format!("{public}{path}"),
            &alice.access_token,
        )
        .await;
        assert_eq!(
            status, 404,
            "{method} {path} on the public listener: {body}"
        );
        assert!(!body.contains("\"seq\""), "{path} leaked the feed: {body}");
        // Envoy's own 404 (no route: an empty body), not the issuer's JSON `not_found` — a
        // variant the router normalised into the `/v1/` route would reach the issuer.
        assert!(
            body.is_empty(),
            "{method} {path} reached the issuer: {body}"
        );
    }
    // Nothing was revoked by any of that, and alice is still served.
    let before = feed(&stack).await;
    assert_eq!(before["entries"], json!([]), "{before}");
    let (status, body) = stack
        .get_json("/api/hello", Some(&alice.access_token))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    // The internal listener: only these two routes, and they work.
    let internal = stack.internal_url();
    let (status, _) = send(
        client,
        get.clone(),
        format!("{internal}/api/hello"),
        &alice.access_token,
    )
    .await;
    assert_eq!(
        status, 404,
        "the internal listener routes nothing but admin and feed"
    );
    let (status, _) = send(
        client,
        get.clone(),
        format!("{internal}/.well-known/jwks.json"),
        "x",
    )
    .await;
    assert_eq!(
        status, 404,
        "the internal listener routes nothing but admin and feed"
    );
    let sid = peek_claims(&alice.access_token).unwrap().sid;
    let resp = client
        .post(format!("{internal}/v1/admin/revoke"))
        .bearer_auth(&admin)
        .json(&json!({ "sid": sid }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "admin revoke on the internal listener");
    let after = feed(&stack).await;
    assert_eq!(
        after["entries"].as_array().map(Vec::len),
        Some(1),
        "{after}"
    );
    assert_eq!(after["entries"][0]["kind"], "sid", "{after}");
    assert_eq!(after["entries"][0]["value"], json!(sid), "{after}");

    // And the revocation made there is enforced at the public edge.
    let start = Instant::now();
    loop {
        let (status, body) = stack
            .get_json("/api/hello", Some(&alice.access_token))
            .await
            .unwrap();
        if status == 401 {
            assert_eq!(
                body["error_description"], "the token has been revoked",
                "{body}"
            );
            eprintln!(
                "the revocation made on the internal listener refused at the public edge {:?} \
                 after the feed showed it",
                start.elapsed()
            );
            break;
        }
        assert_eq!(status, 200, "{body}");
        // A loaded CI machine's bound, far below the feed poll's 20 s hold.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "revocation not enforced within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.shutdown().await;
}

/// `POST /v1/login` through Envoy from `client` with a fresh code for `user`; the status.
async fn login_status(
    stack: &Stack,
    client: &reqwest::Client,
    user: &str,
    xff: Option<&str>,
) -> u16 {
    let code = stack.mock.login(user).code;
    let mut req = client
        .post(format!("{}/v1/login", stack.envoy_url()))
        .json(&json!({ "code": code }));
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn login_rate_limit_through_envoy_counts_each_client_apart() {
    let stack = start(
        Stack::builder()
            .issuer_env("WEAUTH_LOGIN_RATE", "1")
            .issuer_env("WEAUTH_LOGIN_BURST", "2"),
    )
    .await;
    let first = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let second = client_from(Ipv4Addr::new(127, 0, 0, 3));
    assert_eq!(login_status(&stack, &first, "u1", None).await, 200);
    assert_eq!(login_status(&stack, &first, "u2", None).await, 200);
    assert_eq!(
        login_status(&stack, &first, "u3", None).await,
        429,
        "burst of 2 used up"
    );
    // A forged X-Forwarded-For does not give the same client a new bucket: Envoy appends the
    // real peer and the issuer takes the right-most hop that is not a trusted proxy.
    assert_eq!(
        login_status(&stack, &first, "u4", Some("203.0.113.7")).await,
        429,
        "a client-written X-Forwarded-For must not reset its bucket"
    );
    // Another client is not affected.
    assert_eq!(login_status(&stack, &second, "u5", None).await, 200);
    assert_eq!(login_status(&stack, &second, "u6", None).await, 200);
    stack.shutdown().await;
}

/// The issuer closes a keep-alive connection left idle for `WEAUTH_HEADER_TIMEOUT` (10 s: hyper
/// times the next request's headers from the end of the last answer). Envoy closes its idle
/// connections to the issuer first (`envoy/envoy.yaml`, 5 s), so it never sends a request on a
/// connection the issuer is closing: a 503 "connection termination" that no retry policy may
/// retry, the request having been sent. Without the cluster's idle timeout Envoy kept them an
/// hour and the issuer closed them (`upstream_cx_destroy_remote`).
#[tokio::test]
async fn envoy_closes_idle_issuer_connections_before_the_issuer_does() {
    let stack = start(Stack::builder()).await;
    let resp = stack
        .client()
        .get(format!("{}/healthz", stack.envoy_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Longer than the issuer's 10 s on purpose: had the issuer closed first, the loop ends at
    // the deadline with no idle timeout counted, and `upstream_cx_destroy_remote` says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = stack.envoy_stats().await.unwrap();
        let idle = weauth_tests::harness::stat_value(
            &stats,
            "cluster.weauth_issuer.upstream_cx_idle_timeout",
        );
        if idle.unwrap_or(0) >= 1 || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stat = |name: &str| weauth_tests::harness::stat_value(&stats, name).unwrap_or(0);
    assert!(
        stat("cluster.weauth_issuer.upstream_cx_idle_timeout") >= 1,
        "Envoy did not close an idle connection to the issuer within 30 s"
    );
    assert_eq!(
        stat("cluster.weauth_issuer.upstream_cx_destroy_remote"),
        0,
        "the issuer closed a connection Envoy still pooled"
    );
    // The idle timeout counts only connections with no request: the filter's feed long poll
    // (20 s) held through it is not cut.
    assert_eq!(stat(&stack.filter_stat("feed_fetch_fail")), 0);
    assert!(
        stat("cluster.weauth_issuer.upstream_rq_active") >= 1,
        "no long poll held"
    );
    stack.shutdown().await;
}
