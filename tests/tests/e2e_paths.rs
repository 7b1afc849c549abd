//! End-to-end path confusion: a real Envoy with its path normalization OFF (Envoy's defaults,
//! as in an Envoy someone else configured) in front of an upstream that normalizes as laxly as
//! any server might (`weauth_tests::upstream::lax_normalize`: every escape decoded, `\` as `/`,
//! `;parameters` cut, slashes merged, dot segments removed).
//!
//! The plugin's rules leave `/api/public/` open and require a token everywhere else. Every
//! variant of "walk out of `/api/public/` into `/api/private`" is sent on a raw TCP connection
//! (an HTTP client library would normalize the path itself) without a token, and must be
//! refused by the filter (400 `invalid_request` or 401 `invalid_token`) or by Envoy itself, or
//! reach the upstream only when the upstream's reading of it is still under `/api/public/`.
//! With a token, a walk into `/api/private` is served (or refused as unsafe), never opened
//! without one. Needs the issuer binary, Envoy and the filter module.
//! Run: `make build && cargo test --target x86_64-unknown-linux-musl -p weauth-tests --test suites -- e2e_paths::`.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weauth_tests::harness::Stack;

/// The variants: each, read by a lax upstream, is `/api/private` (or under it).
const WALKS: &[&str] = &[
    "/api/public/../private",
    "/api/public/./../private",
    "/api/public/%2e%2e/private",
    "/api/public/%2E%2E/private",
    "/api/public/.%2e/private",
    "/api/public/%2e%2e%2fprivate",
    "/api/public/..%2fprivate",
    "/api/public/..%2Fprivate",
    "/api/public/..%5cprivate",
    "/api/public/..\\private",
    "/api/public\\..\\private",
    "/api/public/..;/private",
    "/api/public/..;x=1/private",
    "/api/public;/../private",
    "/api/public/..%3b/private",
    "/api/public//../../private",
    "/api/public/a/../../private",
    "/api/public/../../api/private",
    "/api/public/%00/../private",
    "/api/%70ublic/../private",
    "/api/public/%252e%252e/private",
    "//api/public/../private",
    "/api/public/../private?x=1",
    "/api/public/../private#frag",
    "/api/public/.;/../private",
    "/api/public/;x/../private",
    // The hex digits of a double encoding encoded themselves: `..` to a server decoding twice.
    "/api/public/%25%32e%25%32e/private",
    "/api/public/%252%65%252%65/private",
];

/// One raw HTTP/1.1 request: status (0 when the connection gave no status line) and body.
async fn raw_get(port: u16, target: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: weauth.test\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read until the answer is complete (its Content-Length), not until the connection closes:
    // Envoy keeps some connections open after a local reply despite `Connection: close`, and
    // waiting each of those out made this suite take 26 s.
    let mut response = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 4096];
    while !response_complete(&response) {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => response.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string());
    (status, body)
}

/// Whether `response` holds a whole HTTP/1.1 answer: its head, and as many body bytes as its
/// `Content-Length` says (an answer without one is read until the connection closes).
fn response_complete(response: &[u8]) -> bool {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let length = head.lines().find_map(|line| {
        line.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    length.is_some_and(|length| response.len() >= end + 4 + length)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

async fn start() -> Stack {
    // The default rules (envoy/plugin-config.json) with `/api/public/` opened first.
    let rules = json!({"rules": [
        {"prefix": "/api/public/", "require": "none"},
        {"exact": "/v1/login", "require": "none"},
        {"exact": "/v1/token/refresh", "require": "none"},
        {"prefix": "/v1/admin/", "require": "none"},
        {"exact": "/v1/revocations", "require": "none"},
        {"prefix": "/.well-known/", "require": "none"},
        {"exact": "/healthz", "require": "none"},
        {"prefix": "/v1/", "require": "required", "forward_authorization": true},
        {"prefix": "/api/", "require": "required"}
    ]});
    Stack::builder()
        .envoy_path_normalization(false)
        .upstream_normalizes(true)
        .plugin_config_patch(rules)
        .start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the weauth stack: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_walks_out_of_public_prefix_never_reach_private_without_token() {
    let stack = start().await;
    let port = stack.ports().envoy;

    // The setup can tell the two apart: public is open, private needs a token.
    let (status, body) = raw_get(port, "/api/public/page", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["normalized_path"], "/api/public/page");
    let (status, body) = raw_get(port, "/api/private", None).await;
    assert_eq!(status, 401, "{body}");

    let mut refused_by_filter = 0;
    for walk in WALKS {
        let before = stack.upstream.requests();
        let (status, body) = raw_get(port, walk, None).await;
        let reached = stack.upstream.requests() > before;
        let echo = json_of(&body);
        match status {
            200 => {
                for reading in ["normalized_path", "normalized_path_twice"] {
                    let seen = echo[reading].as_str().unwrap_or("");
                    assert!(
                        seen.starts_with("/api/public/"),
                        "{walk:?} reached the upstream without a token as {seen:?} ({reading})"
                    );
                }
            }
            400 | 401 => {
                assert!(!reached, "{walk:?} was refused after reaching the upstream");
                let error = echo["error"].as_str().unwrap_or("");
                if ["invalid_request", "invalid_token"].contains(&error) {
                    refused_by_filter += 1;
                }
            }
            // Envoy's own refusals of a malformed request line (no JSON body) are fine too.
            404 | 0 => assert!(
                !reached,
                "{walk:?} got {status} after reaching the upstream"
            ),
            other => panic!("{walk:?}: unexpected {other} {body}"),
        }
    }
    // Most variants reach the filter (Envoy without normalization passes them on): the filter,
    // not luck, is what refuses them.
    assert!(
        refused_by_filter * 2 > WALKS.len(),
        "only {refused_by_filter} of {} refused by the filter",
        WALKS.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_walk_into_private_with_token_gets_private_rule() {
    let stack = start().await;
    let port = stack.ports().envoy;
    let token = stack.login("path-walker").await.unwrap().access_token;

    // With a valid token, a dot-segment walk into the protected path is served: the filter
    // applied the protected rule (and verified the token), it did not just refuse everything.
    let (status, body) = raw_get(port, "/api/public/../private", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["normalized_path"], "/api/private");
    assert!(
        json_of(&body)["headers"]["x-weauth-sub"].is_string(),
        "{body}"
    );

    // An encoded slash is refused outright, token or not: upstreams disagree on its meaning.
    let (status, body) = raw_get(port, "/api/public/..%2fprivate", Some(&token)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_of(&body)["error"], "invalid_request");

    // A walk from a protected prefix into the public one keeps the stricter rule.
    let (status, body) = raw_get(port, "/api/private/../public/x", None).await;
    assert_eq!(status, 401, "{body}");
}

/// Upstreams that route without regard to ASCII case or to a trailing slash (ASP.NET,
/// Express by default, Spring) serve `/api/Admin/users`, `/api/admin` and
/// `/api/admin/stats/` as the scoped routes `/api/admin/…`: the filter gives them that rule's
/// scopes — a token without `admin` is refused 403 — and keeps an open prefix open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_and_trailing_slash_spellings_get_the_scoped_rule() {
    let rules = json!({"rules": [
        {"prefix": "/api/public/", "require": "none"},
        {"exact": "/v1/login", "require": "none"},
        {"exact": "/v1/token/refresh", "require": "none"},
        {"prefix": "/.well-known/", "require": "none"},
        {"exact": "/healthz", "require": "none"},
        {"exact": "/api/stats", "require": "required", "scopes": ["admin"]},
        {"prefix": "/api/admin/", "require": "required", "scopes": ["admin"]},
        {"prefix": "/api/", "require": "required"}
    ]});
    let stack = Stack::builder()
        .envoy_path_normalization(false)
        .upstream_normalizes(true)
        .plugin_config_patch(rules)
        .start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the weauth stack: {e}"));
    let port = stack.ports().envoy;
    let token = stack.login("case-walker").await.unwrap().access_token;
    let (status, body) = raw_get(port, "/api/orders", Some(&token)).await;
    assert_eq!(status, 200, "the token is good: {body}");
    for spelling in [
        "/api/admin/users",
        "/api/Admin/users",
        "/API/ADMIN/users",
        "/api/admin",
        "/api/stats",
        "/api/stats/",
        "/api/Stats",
    ] {
        let before = stack.upstream.requests();
        let (status, body) = raw_get(port, spelling, Some(&token)).await;
        assert_eq!(status, 403, "{spelling}: {body}");
        assert_eq!(json_of(&body)["error"], "insufficient_scope", "{spelling}");
        assert_eq!(
            stack.upstream.requests(),
            before,
            "{spelling} reached the upstream"
        );
    }
    // An encoded `?` or `#` ends the path for an upstream that decodes and splits again:
    // `/api/stats%3F` is `/api/stats` there. Refused, token or not, before the upstream.
    for spelling in [
        "/api/stats%3F",
        "/api/stats%3Fx=1",
        "/api/stats%23",
        "/api/admin%3F/x",
    ] {
        let before = stack.upstream.requests();
        let (status, body) = raw_get(port, spelling, Some(&token)).await;
        assert_eq!(status, 400, "{spelling}: {body}");
        assert_eq!(json_of(&body)["error"], "invalid_request", "{spelling}");
        assert_eq!(
            stack.upstream.requests(),
            before,
            "{spelling} reached the upstream"
        );
    }
    // The open prefix stays open, its index too.
    for open in ["/api/public/", "/api/public/page"] {
        let (status, body) = raw_get(port, open, None).await;
        assert_eq!(status, 200, "{open}: {body}");
    }
}
