//! Bans and scopes end to end, through the real Envoy and filter: a ban refuses the user's
//! existing token at the edge, their refresh and their next login (403 `user_banned`), and an
//! unban lets them back in; a scope granted through the admin API reaches the `scope` claim of
//! the next token, and the filter's `rules[].scopes` lets that token through (403
//! `insufficient_scope` before the grant and after it is cleared). The admin API is called at
//! the issuer directly: it is not meant for the public edge.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weauth_tests::harness::{peek_claims, Stack};

async fn stack() -> Stack {
    Stack::builder()
        .plugin_config_patch(json!({"rules": [
            {"exact": "/v1/login", "require": "none"},
            {"exact": "/v1/token/refresh", "require": "none"},
            {"prefix": "/.well-known/", "require": "none"},
            {"exact": "/healthz", "require": "none"},
            {"prefix": "/v1/", "require": "required", "forward_authorization": true},
            {"prefix": "/api/admin/", "require": "required", "scopes": ["admin"]},
            {"prefix": "/api/", "require": "required"}
        ]}))
        .start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the weauth stack: {e}"))
}

/// An admin call straight at the issuer.
async fn admin(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = stack
        .client()
        .request(method, format!("{}{path}", stack.issuer_url()))
        .bearer_auth(stack.admin_token());
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits (at most 5 s: a loaded CI machine's bound, far below the feed poll's 20 s hold) until
/// the edge answers `want` for `path` with `token`; prints how long that took. A 401 must be
/// the revocation's (what these tests wait for), not another refusal.
async fn edge_status_becomes(stack: &Stack, path: &str, token: &str, want: u16) -> u16 {
    let started = Instant::now();
    loop {
        let response = stack.get(path, Some(token)).await.unwrap();
        let status = response.status().as_u16();
        if status == want {
            if want == 401 {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert_eq!(
                    body["error_description"], "the token has been revoked",
                    "{path}: {body}"
                );
            }
            eprintln!("{path}: {want} after {:?}", started.elapsed());
            return status;
        }
        if started.elapsed() > Duration::from_secs(5) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

#[tokio::test]
async fn ban_refuses_token_refresh_and_login_until_unbanned() {
    let stack = stack().await;
    let first = stack.login("mallory").await.unwrap();
    let sub = peek_claims(&first.access_token).unwrap().sub;
    assert_eq!(
        edge_status_becomes(&stack, "/api/hello", &first.access_token, 200).await,
        200
    );

    let (status, body) = admin(
        &stack,
        reqwest::Method::POST,
        "/v1/admin/ban",
        Some(json!({"sub": sub, "reason": "e2e test"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ban"]["reason"], "e2e test");

    // The existing token is refused at the edge (the ban's revocation through the feed).
    assert_eq!(
        edge_status_becomes(&stack, "/api/hello", &first.access_token, 401).await,
        401
    );
    // Refresh and login: 403 with a stable code.
    let (status, body) = refresh(&stack, &first.refresh_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("user_banned")),
        "{body}"
    );
    let err = stack.login("mallory").await.unwrap_err().to_string();
    assert!(err.contains("403") && err.contains("user_banned"), "{err}");
    // Other users are not affected.
    stack.login("not-mallory").await.unwrap();

    // The admin lookup shows it.
    let (status, user) = admin(
        &stack,
        reqwest::Method::GET,
        &format!("/v1/admin/user?sub={sub}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["banned"], true, "{user}");

    let (status, body) = admin(
        &stack,
        reqwest::Method::POST,
        "/v1/admin/unban",
        Some(json!({"sub": sub})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let again = stack.login("mallory").await.unwrap();
    assert_eq!(peek_claims(&again.access_token).unwrap().sub, sub);
    assert_eq!(
        edge_status_becomes(&stack, "/api/hello", &again.access_token, 200).await,
        200
    );
    // The ban's revocation still holds for the tokens issued before it.
    assert_eq!(
        stack
            .get("/api/hello", Some(&first.access_token))
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn scope_granted_reaches_next_token_and_passes_the_edge_rule() {
    let stack = stack().await;
    let tokens = stack.login("ada").await.unwrap();
    let sub = peek_claims(&tokens.access_token).unwrap().sub;
    let resp = stack
        .get("/api/admin/panel", Some(&tokens.access_token))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");

    let (status, body) = admin(
        &stack,
        reqwest::Method::POST,
        "/v1/admin/scopes",
        Some(json!({"sub": sub, "scopes": ["admin", "orders:read"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scopes"], json!(["admin", "orders:read"]));
    // The token already issued keeps its (absent) scopes...
    assert_eq!(
        stack
            .get("/api/admin/panel", Some(&tokens.access_token))
            .await
            .unwrap()
            .status(),
        403
    );
    // ...the next one carries them.
    let (status, body) = refresh(&stack, &tokens.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let granted = body["access_token"].as_str().unwrap().to_string();
    let next_refresh = body["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(
        peek_claims(&granted).unwrap().scope.as_deref(),
        Some("admin orders:read")
    );
    let resp = stack.get("/api/admin/panel", Some(&granted)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed: Value = resp.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-weauth-scope"], "admin orders:read");

    // Cleared: the next token has no scope and the rule refuses it again.
    let (status, body) = admin(
        &stack,
        reqwest::Method::POST,
        "/v1/admin/scopes",
        Some(json!({"sub": sub, "scopes": []})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = refresh(&stack, &next_refresh).await;
    assert_eq!(status, 200, "{body}");
    let cleared = body["access_token"].as_str().unwrap();
    assert_eq!(peek_claims(cleared).unwrap().scope, None);
    assert_eq!(
        stack
            .get("/api/admin/panel", Some(cleared))
            .await
            .unwrap()
            .status(),
        403
    );
}

/// A `sub` revocation with `issued_before` in the past (the moment a credential leaked, say)
/// ends the user's sessions created before it, and the edge refuses the tokens those sessions
/// issued since, which the `sub` entry's `iat < issued_before` does not cover: each session it
/// ends gets a `sid` entry of its own. Sessions created after `issued_before` live on.
#[tokio::test]
async fn sub_revocation_in_the_past_refuses_the_newer_tokens_of_the_sessions_it_ends() {
    let stack = stack().await;
    let old = stack.login("leaked").await.unwrap();
    let claims = peek_claims(&old.access_token).unwrap();
    // A second later: a refreshed token of the old session, and a session of its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, refreshed) = refresh(&stack, &old.refresh_token).await;
    assert_eq!(status, 200, "{refreshed}");
    let newer = refreshed["access_token"].as_str().unwrap().to_string();
    assert!(peek_claims(&newer).unwrap().iat > claims.iat);
    let later = stack.login("leaked").await.unwrap();
    assert!(peek_claims(&later.access_token).unwrap().iat > claims.iat);
    assert_eq!(
        edge_status_becomes(&stack, "/api/hello", &newer, 200).await,
        200
    );

    let (status, body) = admin(
        &stack,
        reqwest::Method::POST,
        "/v1/admin/revoke",
        Some(json!({"sub": claims.sub, "issued_before": claims.iat + 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        edge_status_becomes(&stack, "/api/hello", &newer, 401).await,
        401,
        "a token the ended session issued after issued_before still passes the edge"
    );
    assert_eq!(
        edge_status_becomes(&stack, "/api/hello", &later.access_token, 200).await,
        200,
        "a session created after issued_before lives on"
    );
}
