//! Integration tests of the service as an operator sees it: restart without loss, graceful
//! shutdown, configuration errors, body caps and HTTP error shapes, health/readiness/metrics,
//! discovery, key algorithms, key rotation through the CLI, and the header-read timeout.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{payload, Issuer, Stack, ADMIN, FEED};
use serde_json::{json, Value};
use weauth_issuer::clock::Clock as _;
use weauth_mock_wechat::Fault;

/// Waits (up to 10 s) until the issuer at `metrics_url` (its `/metrics`) holds `count` feed
/// long polls (`weauth_feed_waiters`).
async fn until_feed_waiters(http: &reqwest::Client, metrics_url: &str, count: u64) {
    let line = format!("weauth_feed_waiters {count}");
    let started = Instant::now();
    loop {
        let text = common::metrics_text(http, metrics_url).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no `{line}` within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_tokens_revocations_and_seq() {
    let mut stack = Stack::process(&[]).await;
    let kept = stack.login("rita").await;
    let dropped = stack.login("sam").await;
    let (status, _, _) = stack
        .post_auth(
            "/v1/logout",
            dropped["access_token"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, jwks_before, _) = stack.get("/.well-known/jwks.json", None).await;
    let seq_before = stack.feed(0, 0).await["seq"].as_u64().unwrap();
    assert!(seq_before >= 1);

    let restarted_us = common::now_us();
    stack.restart().await;

    let (_, jwks_after, _) = stack.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks_before, jwks_after, "signing key persisted");
    let (status, _, _) = stack.get("/v1/me", kept["access_token"].as_str()).await;
    assert_eq!(
        status, 200,
        "access token from before the restart still verifies"
    );
    let (status, _, _) = stack.get("/v1/me", dropped["access_token"].as_str()).await;
    assert_eq!(status, 401, "revocation survived the restart");
    let (status, refreshed, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": kept["refresh_token"] }),
        )
        .await;
    assert_eq!(
        status, 200,
        "refresh token from before the restart: {refreshed}"
    );
    let feed = stack.feed(0, 0).await;
    // Past any seq a restored backup would lack: by a million and to the time.
    let seq = feed["seq"].as_u64().unwrap();
    assert!(
        seq >= seq_before + 1_000_000
            && seq >= restarted_us
            && seq <= (seq_before + 1_000_000).max(common::now_us()),
        "seq moved on at the start from {seq_before} to {seq}"
    );
    let sid = payload(refreshed["access_token"].as_str().unwrap())["sid"].clone();
    let (status, entry, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "sid": sid })))
        .await;
    assert_eq!(status, 200);
    assert!(entry["seq"].as_u64().unwrap() > seq_before);
}

/// A backup of the SQLite file restored with the issuer stopped lacks the logouts after it; a
/// sidecar holds the seq of the last one as its `since`. The next logout after the restart is
/// in that sidecar's next answer (given a lost seq again, it would never be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_after_a_restored_backup_reaches_a_sidecar_past_the_backup() {
    let mut stack = Stack::start(&[]).await;
    let (first, lost, after) = (
        stack.login("ann").await,
        stack.login("bob").await,
        stack.login("cy").await,
    );
    let logout = |login: &Value| login["access_token"].as_str().unwrap().to_string();
    let (status, _, _) = stack.post_auth("/v1/logout", &logout(&first), None).await;
    assert_eq!(status, 204);
    let backup = stack.dir.path().join("backup.db");
    {
        let conn = rusqlite::Connection::open(stack.db_path()).unwrap();
        conn.execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
            .unwrap();
    }
    let (status, _, _) = stack.post_auth("/v1/logout", &logout(&lost), None).await;
    assert_eq!(status, 204);
    let since = stack.feed(0, 0).await["seq"].as_u64().unwrap();

    let db = stack.db_path();
    stack
        .restart_after(|| {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
            std::fs::copy(&backup, &db).unwrap();
        })
        .await;

    let (status, _, _) = stack.post_auth("/v1/logout", &logout(&after), None).await;
    assert_eq!(status, 204);
    let sid = payload(&logout(&after))["sid"].clone();
    let answer = stack.feed(since, 0).await;
    let entries = answer["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|entry| entry["value"] == sid),
        "the logout after the restore is past since={since}: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_login() {
    // A grace far longer than the login and than the bound below: an exit within the bound
    // is one that waited for the login, not for the grace (on a loaded machine a debug
    // issuer's exit can take seconds).
    let mut stack = Stack::process(&[("WEAUTH_SHUTDOWN_GRACE", "60s")]).await;
    let code = stack.mock.login("tom").code;
    let calls = stack.mock.calls("jscode2session");
    stack.mock.inject(
        "jscode2session",
        Fault::Delay(Duration::from_millis(800)),
        1,
    );
    let http = stack.http.clone();
    let url = stack.url("/v1/login");
    let login = tokio::spawn(async move {
        let response = http
            .post(url)
            .json(&json!({ "code": code }))
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    });
    // The login is in flight: its code exchange is held at WeChat.
    common::until_calls(&stack.mock, "jscode2session", calls + 1).await;
    let started = Instant::now();
    let status =
        tokio::task::block_in_place(|| stack.issuer.process().terminate(Duration::from_secs(30)));
    assert!(status.success(), "{status:?}");
    assert_eq!(login.await.unwrap(), 200, "in-flight request completed");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // New connections are refused once it has exited.
    assert!(stack.http.get(stack.url("/healthz")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_long_polls_promptly() {
    // A grace longer than the poll's wait: an exit within the bound below is one that ended
    // the poll, not one that waited for it or for the grace.
    let mut stack = Stack::process(&[("WEAUTH_SHUTDOWN_GRACE", "60s")]).await;
    let http = stack.http.clone();
    // A delta poll that would wait 50 s.
    let seq = stack.feed(0, 0).await["seq"].as_u64().unwrap();
    let url = stack.url(&format!("/v1/revocations?since={seq}&wait=50"));
    let poll = tokio::spawn(async move {
        http.get(url)
            .bearer_auth(FEED)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    until_feed_waiters(&stack.http, &stack.url("/metrics"), 1).await;
    let started = Instant::now();
    let status =
        tokio::task::block_in_place(|| stack.issuer.process().terminate(Duration::from_secs(30)));
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(poll.await.unwrap().unwrap(), 200);
}

#[test]
fn bad_config_exits_nonzero_naming_the_variable() {
    for (var, value) in [
        ("WEAUTH_ACCESS_TTL", "soon"),
        ("WEAUTH_LISTEN", "nowhere"),
        ("WEAUTH_SIGNING_ALG", "RS256"),
        ("WEAUTH_STORE", "mysql://x"),
        ("WEAUTH_DATA_KEY", "dG9vIHNob3J0"),
    ] {
        let output = Command::new(common::bin())
            .env_clear()
            .env("WEAUTH_WECHAT_APPID", "wx1")
            .env("WEAUTH_WECHAT_SECRET", "s")
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
    let output = Command::new(common::bin())
        .env_clear()
        .env("WEAUTH_WECHAT_SECRET", "s")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("WEAUTH_WECHAT_APPID"));
}

#[test]
fn redis_unreachable_at_start_exits_2_naming_weauth_store() {
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
            format!("redis://:hunter2@127.0.0.1:{port}/0"),
        )
        .env(
            "WEAUTH_DATA_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("WEAUTH_STORE=redis://:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the password is never printed: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_json_with_stable_codes() {
    let stack = Stack::process(&[("WEAUTH_MAX_BODY", "1024")]).await;
    let (status, body, _) = stack.get("/nope", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body, headers) = stack.get("/v1/login", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert_eq!(headers["allow"], "POST");
    let (status, _, _) = stack.post("/healthz", json!({})).await;
    assert_eq!(status, 405);

    // Announced too large.
    let big = format!(r#"{{"code":"{}"}}"#, "a".repeat(4096));
    let response = stack
        .http
        .post(stack.url("/v1/login"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "request_too_large");
    // Streamed (chunked, no Content-Length) too large.
    let addr = stack.issuer.addr();
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = "POST /v1/token/refresh HTTP/1.1\r\nHost: issuer\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).unwrap();
        let chunk = "a".repeat(256);
        for _ in 0..16 {
            if stream
                .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
                .is_err()
            {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(stack.mock.calls("jscode2session"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let stack = Stack::process(&[("WEAUTH_HEADER_TIMEOUT", "500ms")]).await;
    let addr = stack.issuer.addr();
    let elapsed = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        // The server closes (possibly after a 408) without the rest of the headers.
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        started.elapsed()
    })
    .await
    .unwrap();
    // Far under the read timeout (what an uncut connection would take), whatever the load.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_is_cut_off_with_408() {
    let stack = Stack::process(&[("WEAUTH_HEADER_TIMEOUT", "500ms")]).await;
    let addr = stack.issuer.addr();
    let (elapsed, answer) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // Complete headers, then only part of the announced body.
        stream
            .write_all(
                b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 40\r\n\r\n{\"code\":",
            )
            .unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).to_string(),
        )
    })
    .await
    .unwrap();
    // Far under the read timeout (what an uncut connection would take), whatever the load.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_discovery() {
    let stack = Stack::process(&[]).await;
    let (status, body, _) = stack.get("/healthz", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _, _) = stack.get("/readyz", None).await;
    assert_eq!(status, 200);
    stack.login("uma").await;
    let (status, metrics, headers) = stack.get("/metrics", None).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("weauth_logins_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("weauth_wechat_call_seconds_count{api=\"jscode2session\"} 1"));
    let (status, discovery, _) = stack.get("/.well-known/openid-configuration", None).await;
    assert_eq!(status, 200);
    assert_eq!(discovery["issuer"], "http://issuer.test");
    assert_eq!(
        discovery["jwks_uri"],
        "http://issuer.test/.well-known/jwks.json"
    );
    assert_eq!(
        discovery["weauth_revocation_feed_endpoint"],
        "http://issuer.test/v1/revocations"
    );
    assert_eq!(
        discovery["access_token_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    assert!(
        discovery
            .get("id_token_signing_alg_values_supported")
            .is_none(),
        "no id_token is ever issued: {discovery}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_selectable_and_published() {
    let stack = Stack::process(&[("WEAUTH_SIGNING_ALG", "ES256")]).await;
    let login = stack.login("vera").await;
    let token = login["access_token"].as_str().unwrap();
    assert_eq!(common::header(token)["alg"], "ES256");
    let (_, jwks, _) = stack.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["crv"], "P-256");
    // Verify with weauth-token against the published JWKS only.
    let (keys, skipped) =
        weauth_token::KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
    assert!(skipped.is_empty());
    let mut validation = weauth_token::Validation::new("http://issuer.test", vec!["weauth".into()]);
    validation.algorithms = vec![weauth_token::Algorithm::ES256];
    let now = payload(token)["iat"].as_i64().unwrap();
    weauth_token::verify(token, &keys, &validation, now).unwrap();
    assert_eq!(stack.get("/v1/me", Some(token)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_from_secret_file_not_published() {
    let dir = common::temp_dir("hs");
    let secret_path = dir.path().join("hs.key");
    std::fs::write(&secret_path, "0123456789abcdef0123456789abcdef-shared").unwrap();
    let path = secret_path.display().to_string();
    let stack = Stack::process(&[
        ("WEAUTH_SIGNING_ALG", "HS256"),
        ("WEAUTH_SIGNING_KEY_FILE", &path),
    ])
    .await;
    let login = stack.login("will").await;
    let token = login["access_token"].as_str().unwrap();
    assert_eq!(common::header(token)["alg"], "HS256");
    let (_, jwks, _) = stack.get("/.well-known/jwks.json", None).await;
    assert_eq!(
        jwks["keys"],
        json!([]),
        "an HS256 secret is never published"
    );
    assert_eq!(stack.get("/v1/me", Some(token)).await.0, 200);
    // Verifiable by anyone holding the shared secret.
    let key = weauth_token::SigningKey::hmac(b"0123456789abcdef0123456789abcdef-shared").unwrap();
    let mut keys = weauth_token::KeySet::default();
    keys.insert(key.kid(), key.verifying_key());
    let mut validation = weauth_token::Validation::new("http://issuer.test", vec!["weauth".into()]);
    validation.algorithms = vec![weauth_token::Algorithm::HS256];
    let now = payload(token)["iat"].as_i64().unwrap();
    weauth_token::verify(token, &keys, &validation, now).unwrap();
}

/// The wall clock in Unix seconds (fractional): what the issuer's `iat` and `activate_at`
/// count in.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The kids the JWKS publishes.
async fn published_kids(stack: &Stack) -> Vec<String> {
    let (_, jwks, _) = stack.get("/.well-known/jwks.json", None).await;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// Polls the JWKS (up to 10 s) until it publishes `count` keys; returns their kids.
async fn until_published(stack: &Stack, count: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let kids = published_kids(stack).await;
        if kids.len() == count {
            return kids;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the JWKS never published {count} keys: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs in (`user` with a number) every 100 ms until a token's header `field` is `new`, up to
/// 10 s past `activate_at` (whole seconds: the key ring is rebuilt on each key reload, so the
/// switch comes up to a reload after it). Asserts of every token: `new` only if the login was
/// answered at or after `activate_at` and issued (`iat`) at or after it — or, for a login in
/// flight across it, sent before: a token's `iat` is its login's start (the service takes one
/// `now` for the whole login) and its key the one signing when it is signed, so such a login
/// can carry the new key with the second before (seen once in a loaded CI run) — `old`
/// otherwise. Returns the tokens issued with `old`, and the first with `new`.
async fn logins_until_switch(
    stack: &Stack,
    user: &str,
    field: &str,
    (old, new): (&str, &str),
    activate_at: i64,
) -> (Vec<String>, String) {
    let mut before = Vec::new();
    for i in 0.. {
        let sent = unix_now();
        let login = stack.login(&format!("{user}{i}")).await;
        let answered = unix_now();
        let token = login["access_token"].as_str().unwrap().to_string();
        let value = common::header(&token)[field].as_str().unwrap().to_string();
        let iat = payload(&token)["iat"].as_i64().unwrap();
        if value == new {
            let activation = activate_at as f64;
            assert!(
                answered >= activation && (iat >= activate_at || sent < activation),
                "a token issued at {iat} (its login sent at {sent:.3}, answered at \
                 {answered:.3}) carries {field} {new}, which signs only from {activate_at}"
            );
            println!(
                "{field} {new} signs from {activate_at}: first seen on a token issued at {iat} \
                 ({} earlier logins with {old})",
                before.len()
            );
            return (before, token);
        }
        assert_eq!(value, old, "{field} of a token issued at {iat}");
        assert!(
            unix_now() < (activate_at + 10) as f64,
            "still {field} {old} 10 s after {activate_at}, when {new} signs"
        );
        before.push(token);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// `keys rotate` publishes the new key at once and makes it sign only from its `activate_at`
/// (`WEAUTH_KEY_PUBLISH_DELAY` later, in whole seconds): the JWKS has both keys before any
/// token carries the new kid, tokens issued before `activate_at` carry the old kid, then the
/// new kid signs and the old key stays published (its tokens still verify).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_publishes_then_promotes_and_keeps_old_key() {
    let stack = Stack::process(&[
        ("WEAUTH_KEY_PUBLISH_DELAY", "5s"),
        ("WEAUTH_KEY_RELOAD", "200ms"),
        // The switch is found by logging in every 100 ms.
        ("WEAUTH_LOGIN_RATE", "0"),
    ])
    .await;
    let before = stack.login("xena").await;
    let old_token = before["access_token"].as_str().unwrap().to_string();
    let old_kid = common::header(&old_token)["kid"]
        .as_str()
        .unwrap()
        .to_string();

    let activate_at = rotate_keys(&stack);

    // Published (JWKS has both) before it signs.
    let kids = until_published(&stack, 2).await;
    let published_at = unix_now();
    assert!(
        published_at < activate_at as f64,
        "the new key was first seen in the JWKS at {published_at:.3}, not before it signs \
         ({activate_at})"
    );
    let new_kid = kids.iter().find(|k| **k != old_kid).unwrap().clone();
    let (early, late) =
        logins_until_switch(&stack, "xena", "kid", (&old_kid, &new_kid), activate_at).await;
    assert!(
        !early.is_empty(),
        "no token was signed by the old key while the new one was published and not signing"
    );

    // The new key signs; the old token still verifies.
    assert_eq!(common::header(&late)["kid"], new_kid.as_str());
    assert_eq!(stack.get("/v1/me", Some(&old_token)).await.0, 200);
    let (_, jwks, _) = stack.get("/.well-known/jwks.json", None).await;
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "old key stays until its tokens expire"
    );

    let output = keys_cli(&stack, "list");
    let listed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(listed.contains(&format!("{new_kid}\tEdDSA")), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&old_kid) && l.ends_with("retiring")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&new_kid) && l.ends_with("signing")),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_key_dropped_after_its_tokens_expire() {
    let stack = Stack::process(&[
        ("WEAUTH_KEY_PUBLISH_DELAY", "0s"),
        ("WEAUTH_KEY_RELOAD", "200ms"),
        ("WEAUTH_ACCESS_TTL", "1s"),
        ("WEAUTH_LEEWAY", "0s"),
    ])
    .await;
    let (_, jwks, _) = stack.get("/.well-known/jwks.json", None).await;
    let old_kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let activate_at = rotate_keys(&stack);
    // The old key's last tokens expire 1 s (WEAUTH_ACCESS_TTL) after the new key signs; the
    // next key reload drops it from the JWKS and erases its material from the store (its
    // record stays: a retired key is never brought back).
    let started = Instant::now();
    let dropped_at = loop {
        let kids = published_kids(&stack).await;
        let seen = unix_now();
        if kids.len() == 1 && stack.count(WITH_MATERIAL) == 1 {
            assert_ne!(kids[0], old_kid, "the new key was dropped");
            break seen;
        }
        assert!(
            !kids.is_empty() && kids.len() <= 2,
            "the JWKS publishes {kids:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the retired key {old_kid} is still published or stored 15 s after the rotation \
             (its tokens expired 1 s after {activate_at}): JWKS {kids:?}, {} with material",
            stack.count(WITH_MATERIAL)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "retired key dropped (JWKS and store) by {dropped_at:.3}; its successor signs from \
         {activate_at}"
    );
    assert!(
        dropped_at >= (activate_at + 1) as f64,
        "the retired key was dropped at {dropped_at:.3}, before its last tokens expired \
         ({activate_at} + 1 s)"
    );
    assert_eq!(
        stack.count("signing_keys"),
        2,
        "the retired key's record stays"
    );
}

/// The signing keys whose material is still in the store (a retired key's is erased).
const WITH_MATERIAL: &str = "signing_keys WHERE length(sealed) > 0";

/// A key from `WEAUTH_SIGNING_KEY_FILE`, rotated away with `keys rotate` and retired, is not
/// brought back when an issuer restarts with the same file (it was: the retired key was
/// deleted, so the file's key looked new and was imported to sign again — a leaked key
/// rotated away came back at the next restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_file_key_is_not_brought_back_by_a_restart() {
    let dir = common::temp_dir("keyfile");
    let pem = dir.path().join("signing.pem");
    std::fs::write(
        &pem,
        weauth_token::SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[7; 32])
            .unwrap()
            .to_pkcs8_pem()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let pem = pem.display().to_string();
    let mut stack = Stack::process(&[
        ("WEAUTH_SIGNING_KEY_FILE", &pem),
        ("WEAUTH_KEY_PUBLISH_DELAY", "0s"),
        ("WEAUTH_KEY_RELOAD", "100ms"),
        ("WEAUTH_ACCESS_TTL", "1s"),
        ("WEAUTH_LEEWAY", "0s"),
    ])
    .await;
    let file_kid = published_kids(&stack).await[0].clone();
    rotate_keys(&stack);
    let started = Instant::now();
    while stack.count(WITH_MATERIAL) != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the file's key was not retired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_kid = published_kids(&stack).await[0].clone();
    assert_ne!(new_kid, file_kid);

    stack.restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let token = stack.login("vic").await;
    let kid = common::header(token["access_token"].as_str().unwrap())["kid"].clone();
    assert_eq!(kid, new_kid.as_str(), "the retired file key signs again");
    assert_eq!(published_kids(&stack).await, vec![new_kid]);
    stack
        .issuer
        .log_with(&["the key in WEAUTH_SIGNING_KEY_FILE was retired"])
        .await;
}

/// A key retired while tokens of a 15 min lifetime are out, then `WEAUTH_ACCESS_TTL` lowered
/// to 5 min and the issuer restarted: the retired key stays published (and its tokens verify)
/// until those tokens expire, not for the new 5 min; then it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_outlives_a_lowered_access_ttl_until_its_tokens_expire() {
    let (mut stack, clock) = Stack::start_clocked(&[
        ("WEAUTH_KEY_PUBLISH_DELAY", "0s"),
        ("WEAUTH_KEY_RELOAD", "100ms"),
        ("WEAUTH_LEEWAY", "0s"),
    ])
    .await;
    let before = stack.login("uma").await;
    let old_token = before["access_token"].as_str().unwrap().to_string();
    let old_kid = common::header(&old_token)["kid"]
        .as_str()
        .unwrap()
        .to_string();
    rotate_keys(&stack);
    stack
        .issuer
        .env_mut()
        .insert("WEAUTH_ACCESS_TTL".into(), "5m".into());
    stack.restart().await;
    // Past the new lifetime, within the old one; several key reloads (every 100 ms) later.
    clock.advance_secs(400);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        published_kids(&stack).await.contains(&old_kid),
        "the retired key was dropped while its tokens still verify"
    );
    assert_eq!(stack.get("/v1/me", Some(&old_token)).await.0, 200);
    // Past the old lifetime's last token: dropped.
    clock.advance_secs(900);
    let started = Instant::now();
    while published_kids(&stack).await.contains(&old_kid) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the retired key {old_kid} is still published after its tokens expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stack's issuer (a process) and a second issuer process on the same database, on a
/// runtime of two workers (each `Issuer::start` blocks while the process comes up).
fn with_second_replica<F, Fut>(test: F)
where
    F: FnOnce(Stack, Issuer) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stack = Stack::process(&[]).await;
        let env = stack.issuer.env().clone();
        let other = tokio::task::spawn_blocking(move || Issuer::start(&env))
            .await
            .unwrap();
        test(stack, other).await;
    });
}

/// `GET url` with the feed credential, as JSON.
async fn feed_at(http: &reqwest::Client, url: String) -> serde_json::Value {
    http.get(url)
        .bearer_auth(FEED)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[test]
fn second_issuer_on_same_db_shares_keys() {
    with_second_replica(|stack, other| async move {
        let login = stack.login("yan").await;
        let token = login["access_token"].as_str().unwrap();
        let response = stack
            .http
            .get(other.url("/v1/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // A revocation written through one replica reaches the other's feed.
        let (status, _, _) = stack
            .post_auth(
                "/v1/admin/revoke",
                ADMIN,
                Some(json!({ "jti": "unrelated" })),
            )
            .await;
        assert_eq!(status, 200);
        let seq = stack.feed(0, 0).await["seq"].as_u64().unwrap();
        let http = stack.http.clone();
        let url = other.url(&format!("/v1/revocations?since={seq}&wait=10"));
        let poll = tokio::spawn(async move {
            let body = feed_at(&http, url).await;
            (Instant::now(), body)
        });
        // The other replica holds the poll (it asked for 10 s), then the logout: the other
        // hears of it by its seq re-read (every 250 ms).
        until_feed_waiters(&stack.http, &other.url("/metrics"), 1).await;
        let (status, _, _) = stack.post_auth("/v1/logout", token, None).await;
        assert_eq!(status, 204);
        let logged_out = Instant::now();
        let (answered, body) = poll.await.unwrap();
        assert_eq!(body["entries"].as_array().unwrap().len(), 1, "{body}");
        let elapsed = answered.saturating_duration_since(logged_out);
        println!("the other replica's long poll answered {elapsed:?} after the logout's 204");
        // Under the 10 s the poll asked for, with a loaded machine's margin.
        assert!(
            elapsed < Duration::from_secs(5),
            "{elapsed:?} after the 204"
        );
    });
}

/// A full answer (`since=0`: an edge starting, or starting over after its `since` went back)
/// holds every revocation the store has, not only those this replica heard of: a replica hears
/// of another's by re-reading the seq every 250 ms, and a full answer from its copy lagged by
/// that much — an edge starting over then dropped revocations it already enforced.
#[test]
fn a_full_feed_answer_holds_what_another_replica_just_wrote() {
    with_second_replica(|stack, other| async move {
        // The other replica's copy, loaded.
        feed_at(&stack.http, other.url("/v1/revocations?since=0")).await;
        let (status, _, _) = stack
            .post_auth(
                "/v1/admin/revoke",
                ADMIN,
                Some(json!({ "jti": "just-written" })),
            )
            .await;
        assert_eq!(status, 200);
        let body = feed_at(&stack.http, other.url("/v1/revocations?since=0")).await;
        assert_eq!(body["full"], true);
        assert!(
            body["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["value"] == "just-written"),
            "{body}"
        );
    });
}

/// A restart with another `WEAUTH_SIGNING_ALG` publishes a key of that algorithm at once and
/// signs with it only from its `activate_at` (`WEAUTH_KEY_PUBLISH_DELAY` later): tokens issued
/// before carry the old algorithm, and the old key's tokens still verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_signing_alg_published_before_it_signs() {
    let mut stack = Stack::process(&[
        ("WEAUTH_KEY_PUBLISH_DELAY", "5s"),
        ("WEAUTH_KEY_RELOAD", "200ms"),
        // The switch is found by logging in every 100 ms.
        ("WEAUTH_LOGIN_RATE", "0"),
    ])
    .await;
    let before = stack.login("zoe").await;
    assert_eq!(
        common::header(before["access_token"].as_str().unwrap())["alg"],
        "EdDSA"
    );
    stack
        .issuer
        .env_mut()
        .insert("WEAUTH_SIGNING_ALG".into(), "ES256".into());
    stack.restart().await;
    // Published at once, not signing yet.
    let (_, jwks, _) = stack.get("/.well-known/jwks.json", None).await;
    let published_at = unix_now();
    let ktys: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kty"].as_str().unwrap())
        .collect();
    assert!(ktys.contains(&"OKP") && ktys.contains(&"EC"), "{jwks}");
    // The ES256 key's activation time, as `keys list` shows it.
    let output = keys_cli(&stack, "list");
    let listed = String::from_utf8_lossy(&output.stdout).to_string();
    let activate_at: i64 = listed
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&"ES256"))
        .and_then(|fields| fields.get(3).and_then(|at| at.parse().ok()))
        .unwrap_or_else(|| panic!("no ES256 key with an activation time in {listed:?}"));
    assert!(
        published_at < activate_at as f64,
        "the ES256 key was first seen in the JWKS at {published_at:.3}, not before it signs \
         ({activate_at})"
    );
    let (early, _) =
        logins_until_switch(&stack, "zoe", "alg", ("EdDSA", "ES256"), activate_at).await;
    assert!(
        !early.is_empty(),
        "no token was signed by the EdDSA key while the ES256 one was published and not signing"
    );
    assert_eq!(
        stack.get("/v1/me", before["access_token"].as_str()).await.0,
        200
    );
    // A second restart during or after the switch adds no further key.
    stack.restart().await;
    assert_eq!(stack.count("signing_keys"), 2);
}

// --- Redis: the eviction policy (issue 23 §7) -------------------------------------------------

/// A real `redis-server` with `extra` settings, in its own temp directory.
async fn redis_with(extra: &[&str]) -> (weauth_servers::redis::RedisServer, common::TempDir) {
    let dir = common::temp_dir("redis");
    let server = weauth_servers::redis::RedisServer::start_in(&dir.path().join("redis"), extra)
        .await
        .unwrap();
    (server, dir)
}

/// Waits (up to 10 s) until the issuer's log contains `text`.
async fn log_shows(issuer: &common::Runner, text: &str) {
    let started = Instant::now();
    while !issuer.log_text().contains(text) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the log never said `{text}`:\n{}",
            issuer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_evicting_policy_refused_at_start_naming_the_setting() {
    for policy in ["allkeys-lru", "volatile-lru"] {
        let (redis, _dir) = redis_with(&["--maxmemory", "3mb", "--maxmemory-policy", policy]).await;
        let output = Command::new(common::bin())
            .env_clear()
            // Not the default 8080: `make up`'s issuer, or another test's, may hold it.
            .env("WEAUTH_LISTEN", "127.0.0.1:0")
            .env("WEAUTH_WECHAT_APPID", "wx1")
            .env("WEAUTH_WECHAT_SECRET", "s")
            .env("WEAUTH_STORE", redis.url(0))
            .env("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{policy}: {stderr}");
        for part in [
            "WEAUTH_STORE=redis://127.0.0.1:",
            &format!("maxmemory-policy {policy}"),
            "maxmemory 3145728 bytes",
            "maxmemory-policy noeviction",
            "WEAUTH_REDIS_ALLOW_EVICTION=true",
        ] {
            assert!(
                stderr.contains(part),
                "{policy}: `{part}` missing: {stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_noeviction_passes_the_policy_check() {
    // The harness's redis-server runs Redis's default policy, noeviction.
    let (redis, _dir) = redis_with(&[]).await;
    let url = redis.url(0);
    let stack = Stack::process(&[
        ("WEAUTH_STORE", &url),
        ("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY),
    ])
    .await;
    log_shows(&stack.issuer, "maxmemory-policy: noeviction").await;
    stack.login("noeviction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_evicting_policy_accepted_warns_then_counts_evictions() {
    let (redis, _dir) =
        redis_with(&["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"]).await;
    let url = redis.url(0);
    let stack = Stack::process(&[
        ("WEAUTH_STORE", &url),
        ("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY),
        ("WEAUTH_REDIS_ALLOW_EVICTION", "true"),
    ])
    .await;
    log_shows(
        &stack.issuer,
        "WEAUTH_REDIS_ALLOW_EVICTION=true: accepted, starting anyway",
    )
    .await;
    // Fill Redis past its 3 MB with other keys: it evicts.
    redis.fill(6_000, 1024).unwrap();
    let started = Instant::now();
    loop {
        let text = common::metrics_text(&stack.http, &stack.url("/metrics")).await;
        let evicted = text
            .lines()
            .find_map(|line| line.strip_prefix("weauth_store_evicted_keys_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if evicted > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "evictions never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log_shows(&stack.issuer, "Redis evicted keys").await;
}

/// With Redis gone, the revocation subscription fails at each attempt at once (five a second):
/// logged once per interval, not once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_the_lost_subscription_is_logged_once_not_per_attempt() {
    let (mut redis, _dir) = redis_with(&[]).await;
    let url = redis.url(0);
    let stack = Stack::process(&[
        ("WEAUTH_STORE", &url),
        ("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY),
    ])
    .await;
    redis.kill().await;
    const LOST: &str = "revocation subscription lost";
    log_shows(&stack.issuer, LOST).await;
    // Ten attempts' worth.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = stack.issuer.log_text();
    let lines = log.lines().filter(|line| line.contains(LOST)).count();
    assert_eq!(lines, 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_config_refused_warns_it_could_not_check_and_starts() {
    // A managed Redis that refuses CONFIG (here: renamed away).
    let (redis, _dir) = redis_with(&[
        "--maxmemory-policy",
        "allkeys-lru",
        "--rename-command",
        "CONFIG",
        "weauth-test-hidden-config",
    ])
    .await;
    let url = redis.url(0);
    let stack = Stack::process(&[
        ("WEAUTH_STORE", &url),
        ("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY),
    ])
    .await;
    log_shows(
        &stack.issuer,
        "could not check that Redis never evicts weauth's keys",
    )
    .await;
    stack.login("unchecked").await;
}

// --- Redis: a Sentinel failover that leaves the primary alone (issue 23 §8) -------------------

/// One login of the load: when it started and ended, and whether it was answered 200.
#[derive(Clone)]
struct Attempt {
    start: Instant,
    end: Instant,
    ok: bool,
    /// A failed attempt's answer (status and body) or transport error, for the assertions.
    failure: String,
}

/// `clients` loops of mock `wx.login` + `POST /v1/login` until `stop`, recording every
/// attempt in `attempts`.
fn login_load(
    stack: &Stack,
    clients: usize,
    attempts: &Arc<Mutex<Vec<Attempt>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (mock, login) = (stack.mock.base_url(), stack.url("/v1/login"));
            let (attempts, stop) = (Arc::clone(attempts), Arc::clone(stop));
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let start = Instant::now();
                    let code = async {
                        let body: serde_json::Value = http
                            .get(format!("{mock}/mock/login?user=load-{c}-{n}"))
                            .send()
                            .await?
                            .json()
                            .await?;
                        Ok::<_, reqwest::Error>(body["code"].as_str().unwrap_or("").to_string())
                    };
                    let failure = match code.await {
                        Ok(code) => {
                            match http
                                .post(&login)
                                .json(&json!({ "code": code }))
                                .send()
                                .await
                            {
                                Ok(r) if r.status().as_u16() == 200 => String::new(),
                                Ok(r) => {
                                    let status = r.status();
                                    format!("{status} {}", r.text().await.unwrap_or_default())
                                }
                                Err(err) => format!("login: {err}"),
                            }
                        }
                        Err(err) => format!("mock wx.login: {err}"),
                    };
                    attempts.lock().unwrap().push(Attempt {
                        start,
                        end: Instant::now(),
                        ok: failure.is_empty(),
                        failure,
                    });
                }
            })
        })
        .collect()
}

/// `weauth-issuer keys <command>` with the issuer's environment: its output.
/// `keys rotate` through the CLI; asserts it succeeded. Returns the time the new key signs
/// from (its printed `activate_at`).
fn rotate_keys(stack: &Stack) -> i64 {
    let output = keys_cli(stack, "rotate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(printed.contains("published"), "{printed}");
    printed
        .split("signs from ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|at| at.parse().ok())
        .unwrap_or_else(|| panic!("no activation time in {printed:?}"))
}

fn keys_cli(stack: &Stack, command: &str) -> std::process::Output {
    keys_cli_with(stack, command, &[])
}

/// [`keys_cli`] with `extra` variables set over the issuer's.
fn keys_cli_with(stack: &Stack, command: &str, extra: &[(&str, &str)]) -> std::process::Output {
    Command::new(common::bin())
        .env_clear()
        .envs(stack.issuer.env())
        .envs(extra.iter().copied())
        .args(["keys", command])
        .output()
        .unwrap()
}

/// `keys rotate` adds nothing the replicas could not use: not a key sealed with another data
/// key (every replica's key reloads, then restarts, would fail on it), not an HS256 secret
/// (never published: no verifier could learn it); and it rotates to the algorithm the
/// replicas sign with, not the one in the operator's shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_refuses_what_the_replicas_could_not_use() {
    let stack = Stack::process(&[("WEAUTH_SIGNING_ALG", "ES256")]).await;
    let other_data_key = (
        "WEAUTH_DATA_KEY",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    );
    let output = keys_cli_with(&stack, "rotate", &[other_data_key]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("WEAUTH_DATA_KEY"), "{stderr}");
    assert_eq!(stack.count("signing_keys"), 1);
    let output = keys_cli_with(&stack, "rotate", &[("WEAUTH_SIGNING_ALG", "EdDSA")]);
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(printed.starts_with("new ES256 key"), "{printed}");
    assert_eq!(stack.count("signing_keys"), 2);

    let dir = common::temp_dir("hs-rotate");
    let secret = dir.path().join("hs.key");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-shared").unwrap();
    let secret = secret.display().to_string();
    let hs = Stack::process(&[
        ("WEAUTH_SIGNING_ALG", "HS256"),
        ("WEAUTH_SIGNING_KEY_FILE", &secret),
    ])
    .await;
    let output = keys_cli(&hs, "rotate");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("WEAUTH_SIGNING_KEY_FILE"), "{stderr}");
    assert_eq!(hs.count("signing_keys"), 1);
}

/// Successful logins that ended in `[from, to)`, per second.
fn rate(attempts: &[Attempt], from: Instant, to: Instant) -> f64 {
    let ok = attempts
        .iter()
        .filter(|a| a.ok && a.end >= from && a.end < to)
        .count();
    ok as f64 / (to - from).as_secs_f64()
}

/// A replica whose key reload fails keeps the keys it has and says when it last read them
/// (`weauth_signing_keys_loaded_timestamp_seconds`, alerted by WeauthSigningKeysNotReloaded):
/// a failing reload was a warning line and nothing else, and a replica stuck on an old ring
/// looked like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_key_reload_leaves_when_the_keys_were_last_read() {
    let (stack, clock) = Stack::start_clocked(&[]).await;
    let app = stack.app();
    let name = "weauth_signing_keys_loaded_timestamp_seconds";
    clock.advance_secs(60);
    app.reload_keys().await.unwrap();
    let read_at = clock.now() as f64;
    assert_eq!(metric(&stack, name).await, Some(read_at));
    let db = rusqlite::Connection::open(stack.dir.path().join("weauth.db")).unwrap();
    db.execute("UPDATE signing_keys SET sealed = x'00ff'", [])
        .unwrap();
    clock.advance_secs(60);
    assert!(app.reload_keys().await.is_err(), "a key it cannot open");
    assert_eq!(metric(&stack, name).await, Some(read_at));
    let (status, _, _) = stack.get("/.well-known/jwks.json", None).await;
    assert_eq!(status, 200, "the keys it holds are still published");
}

async fn metric(stack: &Stack, name: &str) -> Option<f64> {
    let text = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits (up to 10 s) until the issuer's metric `name` equals `value`.
async fn metric_becomes(stack: &Stack, name: &str, value: f64) {
    let started = Instant::now();
    loop {
        let now = metric(stack, name).await;
        if now == Some(value) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} is {now:?}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGKILL of the Sentinel primary under 16 clients logging in; the promoted replica has no
/// replica of its own (the old primary stays dead). Writes come back and keep succeeding, the
/// issuer says acknowledged writes are on one machine (log and `weauth_store_replicas 0`), and
/// the login rate before and after is printed (a measurement, not an assertion: run with
/// `--nocapture`; `WEAUTH_TEST_FAILOVER_AFTER=120` measures the two minutes after, printed per
/// 10 s, for docs/OPERATIONS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_failover_without_replica_keeps_serving_and_says_so() {
    const CLIENTS: usize = 16;
    // Logins begun this long after the first one to succeed after the kill must all succeed:
    // the issuer's health read (every second) and a `WAIT` timeout, with a loaded machine's
    // margin, for every replica of the issuer to have followed the failover.
    const SETTLE: Duration = Duration::from_secs(3);
    let phase = |var: &str, default: u64| {
        Duration::from_secs(
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    };
    let (before, after) = (
        phase("WEAUTH_TEST_FAILOVER_BEFORE", 3),
        phase("WEAUTH_TEST_FAILOVER_AFTER", 5),
    );
    let dir = common::temp_dir("sentinel");
    let mut sentinel = weauth_servers::redis::SentinelSetup::start(dir.path())
        .await
        .unwrap();
    let url = sentinel.url();
    let stack = Stack::process(&[
        ("WEAUTH_STORE", &url),
        ("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY),
        ("WEAUTH_LOGIN_RATE", "0"),
    ])
    .await;
    metric_becomes(&stack, "weauth_store_replicas", 1.0).await;
    metric_becomes(&stack, "weauth_store_replicas_wanted", 1.0).await;

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let load = login_load(&stack, CLIENTS, &attempts, &stop);
    tokio::time::sleep(before).await;
    sentinel.primary.kill().await;
    let killed = Instant::now();
    // Writes are back when a login begun after the kill succeeds; then `after` more.
    let first_ok_after_kill = || {
        attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.ok && a.start >= killed)
            .map(|a| a.end)
            .min()
    };
    let window_end = loop {
        if let Some(end) = first_ok_after_kill() {
            break end;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no login succeeded within 30 s of the primary's death"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep((window_end + after).saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let attempts = attempts.lock().unwrap().clone();
    let window = window_end - killed;
    let measured_to = window_end + after;
    let before_rate = rate(&attempts, started, killed);
    let after_rate = rate(&attempts, window_end, measured_to);
    let failed_later: Vec<String> = attempts
        .iter()
        .filter(|a| !a.ok && a.start >= window_end + SETTLE)
        .map(|a| {
            format!(
                "{:.2?} after the kill: {}",
                a.start.saturating_duration_since(killed),
                a.failure
            )
        })
        .collect();
    let failed = attempts.iter().filter(|a| !a.ok).count();
    let slowest_after = attempts
        .iter()
        .filter(|a| a.ok && a.start >= window_end)
        .map(|a| a.end - a.start)
        .max()
        .unwrap_or_default();
    println!(
        "Sentinel failover, no replica left, {CLIENTS} clients: {before_rate:.0} logins/s before the kill; \
         logins unavailable for {window:.1?}; {after_rate:.0} logins/s in the {after:?} after \
         ({:.0}% of before); {failed} failed logins in all; slowest login after: {slowest_after:.0?}",
        100.0 * after_rate / before_rate.max(f64::MIN_POSITIVE)
    );
    // Per 10 s for the longer measurements (the machine's load average too: the rate follows
    // whatever else runs on it).
    for (phase_start, phase_end, long) in [
        (started, killed, before > Duration::from_secs(10)),
        (window_end, measured_to, after > Duration::from_secs(10)),
    ] {
        let mut from = phase_start;
        while long && from + Duration::from_secs(10) <= phase_end {
            let to = from + Duration::from_secs(10);
            println!(
                "  {:>+5.0} s .. {:>+5.0} s from the kill: {:.0} logins/s",
                from.duration_since(started).as_secs_f64() - (killed - started).as_secs_f64(),
                to.duration_since(started).as_secs_f64() - (killed - started).as_secs_f64(),
                rate(&attempts, from, to)
            );
            from = to;
        }
    }
    if before > Duration::from_secs(10) || after > Duration::from_secs(10) {
        println!(
            "  load average at the end: {}",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
    }
    assert!(
        failed_later.is_empty(),
        "logins failed more than {SETTLE:?} after writes resumed ({window:.2?} after the kill):\n{}\n--- the issuer's log:\n{}",
        failed_later.join("\n"),
        stack.issuer.log_text()
    );
    assert!(
        rate(&attempts, window_end, window_end + after) > 0.0,
        "writes did not keep succeeding after the failover"
    );
    // The issuer says so: the log, the gauge, and the writes counted as on one machine.
    log_shows(&stack.issuer, "acknowledged writes are now on one machine").await;
    metric_becomes(&stack, "weauth_store_replicas", 0.0).await;
    let unreplicated = metric(&stack, "weauth_store_unreplicated_writes_total")
        .await
        .unwrap_or(0.0);
    assert!(
        unreplicated > 0.0,
        "writes acknowledged on one machine are counted"
    );
}

/// A configuration of the library (no process) on the SQLite store `db` with `data_key`.
fn library_config(
    db: &str,
    data_key: &str,
    extra: &[(&'static str, &str)],
) -> Arc<weauth_issuer::config::Config> {
    let mut vars: std::collections::HashMap<&str, String> = std::collections::HashMap::from([
        ("WEAUTH_WECHAT_APPID", "wx1".to_string()),
        ("WEAUTH_WECHAT_SECRET", "s".to_string()),
        ("WEAUTH_STORE", db.to_string()),
        ("WEAUTH_DATA_KEY", data_key.to_string()),
    ]);
    for (name, value) in extra {
        vars.insert(name, value.to_string());
    }
    Arc::new(common::config_of(&vars))
}

/// A data key (base64 of 32 bytes) for the library tests: `A…` or `B…`.
fn data_key_of(letter: char) -> String {
    format!("{}A", letter.to_string().repeat(42))
}

/// A replica started with a wrong `WEAUTH_DATA_KEY` and a new `WEAUTH_SIGNING_KEY_FILE` is
/// refused before it writes anything: it imported the file's key — sealed under its wrong data
/// key, signing at once — and only then failed, and every replica with the right data key
/// stopped reloading its keys and could no longer restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_data_key_with_a_new_key_file_writes_no_key() {
    use weauth_issuer::app::{bootstrap_keys, open_store};
    let dir = common::temp_dir("datakey");
    let pem = dir.path().join("new.pem");
    std::fs::write(
        &pem,
        weauth_token::SigningKey::from_seed(weauth_token::Algorithm::EdDSA, &[9; 32])
            .unwrap()
            .to_pkcs8_pem()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let now = unix_now() as i64;
    let right = library_config(&db, &data_key_of('A'), &[]);
    let (store, data_key) = open_store(&right).await.unwrap();
    bootstrap_keys(store.as_ref(), &right, &data_key, now)
        .await
        .unwrap();
    let before = store.keys().await.unwrap();
    assert_eq!(before.len(), 1);
    let pem = pem.display().to_string();
    let wrong = library_config(
        &db,
        &data_key_of('B'),
        &[("WEAUTH_SIGNING_KEY_FILE", pem.as_str())],
    );
    let (other, wrong_key) = open_store(&wrong).await.unwrap();
    let err = bootstrap_keys(other.as_ref(), &wrong, &wrong_key, now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("signing key"), "{err}");
    assert_eq!(store.keys().await.unwrap(), before, "a key was written");
    // The right replica starts as before.
    bootstrap_keys(store.as_ref(), &right, &data_key, now)
        .await
        .unwrap();
}

/// `keys rotate` while a change of `WEAUTH_SIGNING_ALG` is pending (its key published, not
/// signing yet) adds a key of the new algorithm: it took the signing key's, scheduled after
/// the pending one, and so undid the change a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_during_an_algorithm_change_keeps_the_new_algorithm() {
    use weauth_issuer::app::{bootstrap_keys, open_store};
    let dir = common::temp_dir("algchange");
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let now = unix_now() as i64;
    let ed = library_config(&db, &data_key_of('A'), &[]);
    let (store, data_key) = open_store(&ed).await.unwrap();
    bootstrap_keys(store.as_ref(), &ed, &data_key, now)
        .await
        .unwrap();
    let es = library_config(&db, &data_key_of('A'), &[("WEAUTH_SIGNING_ALG", "ES256")]);
    bootstrap_keys(store.as_ref(), &es, &data_key, now)
        .await
        .unwrap();
    // The operator's shell, with the old setting.
    weauth_issuer::cli::rotate(&ed).await.unwrap();
    let records = store.keys().await.unwrap();
    let latest = records.iter().max_by_key(|r| r.activate_at).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(
        latest.alg,
        "ES256",
        "{:?}",
        records.iter().map(|r| &r.alg).collect::<Vec<_>>()
    );
}
