//! Integration tests of bans and per-user scopes at the issuer (the real binary, SQLite, the
//! mock WeChat): the admin routes' answers and errors, a ban refusing login and refresh with
//! 403 `user_banned` and revoking what the user held, unban, a ban kept across a restart, and
//! scopes reaching the `scope` claim of the next token; an unban racing a ban (409), and a ban
//! ending a session opened on a replica whose clock runs ahead. The edge side is in
//! `tests/tests/e2e_grants.rs`.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{payload, InProcess, Stack, ADMIN};
use serde_json::{json, Value};
use weauth_issuer::clock::{Clock, ManualClock};
use weauth_issuer::store::{Ban, Revoke, SubSessions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_refuses_login_and_refresh_revokes_tokens_survives_restart_then_unban() {
    let mut stack = Stack::start(&[]).await;
    let first = stack.login("mallory").await;
    let token = first["access_token"].as_str().unwrap().to_string();
    let sub = payload(&token)["sub"].as_str().unwrap().to_string();

    let (status, body, _) = stack
        .post_auth(
            "/v1/admin/ban",
            ADMIN,
            Some(json!({"sub": sub, "reason": "chargebacks", "until": 4_000_000_000i64})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ban"]["until"], 4_000_000_000i64);
    assert_eq!(
        (
            body["revocation"]["kind"].as_str(),
            body["revocation"]["value"].as_str()
        ),
        (Some("sub"), Some(sub.as_str())),
        "{body}"
    );

    // What the user held is revoked.
    let (status, body, _) = stack.get("/v1/me", Some(&token)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
    // Refresh and login: 403 user_banned, with the end of the ban but not the reason.
    let (status, body, _) = stack
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("user_banned")),
        "{body}"
    );
    assert!(!body.to_string().contains("chargebacks"), "{body}");
    let code = stack.mock.login("mallory").code;
    let (sessions, refresh_tokens) = (stack.count("sessions"), stack.count("refresh_tokens"));
    let (status, body, _) = stack.post("/v1/login", json!({"code": code})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("user_banned")),
        "{body}"
    );
    // A failed login leaves no session (the ban is known only after the store linked the
    // login to its user: the session it made is discarded).
    assert_eq!(
        (stack.count("sessions"), stack.count("refresh_tokens")),
        (sessions, refresh_tokens),
        "the refused login left a session"
    );
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("4000000000"));
    assert_eq!(body["until"], 4_000_000_000i64, "{body}");

    // Kept as durably as a revocation: still banned after a restart.
    stack.restart().await;
    let code = stack.mock.login("mallory").code;
    let (status, _, _) = stack.post("/v1/login", json!({"code": code})).await;
    assert_eq!(status, 403);
    let (status, user, _) = stack
        .get(&format!("/v1/admin/user?sub={sub}"), Some(ADMIN))
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["banned"], true);
    assert_eq!(user["ban"]["reason"], "chargebacks");

    let (status, body, _) = stack
        .post_auth("/v1/admin/unban", ADMIN, Some(json!({"sub": sub})))
        .await;
    assert_eq!(
        (status, body["was_banned"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let again = stack.login("mallory").await;
    assert_eq!(
        payload(again["access_token"].as_str().unwrap())["sub"],
        sub.as_str()
    );
    // Not covered by the ban's revocation, even right after it (the unban waits out the
    // second the revocation covers).
    let (status, me, _) = stack
        .get("/v1/me", Some(again["access_token"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "{me}");
    let (status, user, _) = stack
        .get(&format!("/v1/admin/user?sub={sub}"), Some(ADMIN))
        .await;
    assert_eq!((status, user["banned"].as_bool()), (200, Some(false)));
    assert!(user.get("ban").is_none(), "{user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_set_reach_the_next_token_and_clear() {
    let stack = Stack::start(&[]).await;
    let login = stack.login("ada").await;
    let sub = payload(login["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(payload(login["access_token"].as_str().unwrap())
        .get("scope")
        .is_none());
    let (status, body, _) = stack
        .post_auth(
            "/v1/admin/scopes",
            ADMIN,
            Some(json!({"sub": sub, "scopes": ["orders:read", "admin", "admin"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scopes"], json!(["admin", "orders:read"]));
    let (status, refreshed, _) = stack
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": login["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(
        payload(refreshed["access_token"].as_str().unwrap())["scope"],
        "admin orders:read"
    );
    // A new login carries them too.
    let other = stack.login("ada").await;
    assert_eq!(
        payload(other["access_token"].as_str().unwrap())["scope"],
        "admin orders:read"
    );
    let (status, user, _) = stack
        .get(&format!("/v1/admin/user?sub={sub}"), Some(ADMIN))
        .await;
    assert_eq!(
        (status, &user["scopes"]),
        (200, &json!(["admin", "orders:read"]))
    );

    let (status, _, _) = stack
        .post_auth(
            "/v1/admin/scopes",
            ADMIN,
            Some(json!({"sub": sub, "scopes": []})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, cleared, _) = stack
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": refreshed["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{cleared}");
    assert!(payload(cleared["access_token"].as_str().unwrap())
        .get("scope")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_grant_routes_refuse_bad_input_and_unknown_users() {
    let stack = Stack::start(&[]).await;
    let login = stack.login("ben").await;
    let sub = payload(login["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, body, want) in [
        (
            "/v1/admin/ban",
            json!({"sub": "u_nobody"}),
            (404, "not_found"),
        ),
        (
            "/v1/admin/unban",
            json!({"sub": "u_nobody"}),
            (404, "not_found"),
        ),
        (
            "/v1/admin/scopes",
            json!({"sub": "u_nobody", "scopes": ["a"]}),
            (404, "not_found"),
        ),
        (
            "/v1/admin/ban",
            json!({"sub": sub, "until": 5}),
            (400, "invalid_request"),
        ),
        (
            "/v1/admin/ban",
            json!({"sub": sub, "bogus": 1}),
            (400, "invalid_request"),
        ),
        (
            "/v1/admin/ban",
            json!({"sub": ""}),
            (400, "invalid_request"),
        ),
        (
            "/v1/admin/scopes",
            json!({"sub": sub, "scopes": ["two words"]}),
            (400, "invalid_request"),
        ),
        (
            "/v1/admin/scopes",
            json!({"sub": sub}),
            (400, "invalid_request"),
        ),
    ] {
        let (status, answer, _) = stack.post_auth(path, ADMIN, Some(body.clone())).await;
        assert_eq!(
            (status, answer["error"].as_str().unwrap_or("")),
            want,
            "{path} {body}: {answer}"
        );
    }
    // The admin credential is required.
    let (status, _, headers) = stack
        .post_auth(
            "/v1/admin/ban",
            "not-the-admin-token",
            Some(json!({"sub": sub})),
        )
        .await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    let (status, _, _) = stack.get("/v1/admin/user?sub=x", None).await;
    assert_eq!(status, 401);
    let (status, body, _) = stack.get("/v1/admin/user", Some(ADMIN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // Nothing was banned by the refused calls.
    let (status, user, _) = stack
        .get(&format!("/v1/admin/user?sub={sub}"), Some(ADMIN))
        .await;
    assert_eq!(
        (status, user["banned"].as_bool()),
        (200, Some(false)),
        "{user}"
    );
    assert_eq!(user["scopes"], json!([]));
}

/// The admin API's audit trail: every admin request is logged with the client's address (the
/// use case then logs what it did), and a request refused for a wrong or missing admin or feed
/// credential is logged too — someone guessing, or a tool or sidecar with a stale credential,
/// shows in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_and_refused_credentials_are_logged_with_the_client() {
    let stack = Stack::process(&[]).await;
    let (status, _, _) = stack
        .get("/v1/admin/user?sub=u_nobody", Some("wrong-credential"))
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = stack
        .get("/v1/revocations?since=0", Some("wrong-credential"))
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = stack.get("/v1/admin/user?sub=u_nobody", Some(ADMIN)).await;
    assert_eq!(status, 404);
    let logged = |needle: &str, also: &str| {
        let log = stack.issuer.log_text();
        log.lines()
            .any(|line| line.contains(needle) && line.contains(also) && line.contains("127.0.0.1"))
    };
    for _ in 0..100 {
        if logged("admin request", "/v1/admin/user") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        logged("admin request", "/v1/admin/user"),
        "{}",
        stack.issuer.log_text()
    );
    for which in ["admin", "feed"] {
        assert!(
            logged("wrong or missing credential", which),
            "{which}: {}",
            stack.issuer.log_text()
        );
    }
    assert!(!stack.issuer.log_text().contains("wrong-credential"));
}

/// Moves `clock` to the start of its next second: an unban then waits a whole second for its
/// ban's revocation's `issued_before` (the ban's second + 1).
fn to_next_second(clock: &ManualClock) {
    clock.advance_ms(1000 - clock.now_ms().rem_euclid(1000));
}

/// `POST /v1/admin/unban {"sub"}` on its own task, as an operator's call under way.
fn unban_under_way(stack: &Stack, sub: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    let (http, url, sub) = (
        stack.http.clone(),
        stack.url("/v1/admin/unban"),
        sub.to_string(),
    );
    tokio::spawn(async move {
        let response = http
            .post(url)
            .bearer_auth(ADMIN)
            .json(&json!({ "sub": sub }))
            .send()
            .await
            .unwrap();
        let (status, body, _) = common::split(response).await;
        (status, body)
    })
}

/// An unban reads ban B1 and waits out the second B1's revocation covers; an operator bans
/// the user again meanwhile (B2, with its revocation). The unban lifts nothing and answers 409
/// `conflict`: B2 — which answered "banned" — stays in force (it was lifted, and the user
/// could log in at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unban_racing_a_new_ban_lifts_nothing_and_answers_409() {
    let (stack, clock) = Stack::start_clocked(&[]).await;
    let login = stack.login("nina").await;
    let sub = payload(login["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    to_next_second(&clock);
    let ban = |reason: &'static str| {
        let stack = &stack;
        let sub = sub.clone();
        async move {
            let (status, body, _) = stack
                .post_auth(
                    "/v1/admin/ban",
                    ADMIN,
                    Some(json!({"sub": sub, "reason": reason})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    ban("first").await;
    // A second back: the unban waits two seconds (its cap) for the ban's revocation second
    // to pass, room on a loaded machine for it to read the first ban and for the second.
    clock.advance_ms(-1000);
    let unban = unban_under_way(&stack, &sub);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!unban.is_finished(), "the unban waits out its ban's second");
    ban("second").await;
    let (status, body) = unban.await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (_, user, _) = stack
        .get(&format!("/v1/admin/user?sub={sub}"), Some(ADMIN))
        .await;
    assert_eq!(
        (user["banned"].as_bool(), user["ban"]["reason"].as_str()),
        (Some(true), Some("second")),
        "{user}"
    );
    let code = stack.mock.login("nina").code;
    let (status, body, _) = stack.post("/v1/login", json!({"code": code})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("user_banned")),
        "{body}"
    );
}

/// A ban set long ago — its revocation purged since, once the tokens it covered expired — is
/// lifted at once: the unban looks for the ban's revocation only while it may still be on its
/// way (`grants::BAN_WRITE_WINDOW`), not answering 409 for every ban older than the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unban_of_a_ban_whose_revocation_was_purged_lifts_it() {
    let (stack, clock) = Stack::start_clocked(&[("WEAUTH_PURGE_INTERVAL", "200ms")]).await;
    let login = stack.login("petra").await;
    let sub = payload(login["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body, _) = stack
        .post_auth("/v1/admin/ban", ADMIN, Some(json!({ "sub": sub })))
        .await;
    assert_eq!(status, 200, "{body}");
    clock.advance_secs(2 * 3600);
    let started = std::time::Instant::now();
    while stack.count("revocations") > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the ban's revocation was not purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body, _) = stack
        .post_auth("/v1/admin/unban", ADMIN, Some(json!({ "sub": sub })))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was_banned"], true, "{body}");
    let code = stack.mock.login("petra").code;
    let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
    assert_eq!(status, 200, "{body}");
}

/// A ban is two writes, the ban then its revocation. An unban between them waits for the
/// revocation before lifting (lifted first, the user logs in, then the late revocation ends
/// that login); one whose revocation does not come within the wait lifts nothing: 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unban_waits_for_the_bans_revocation_else_answers_409() {
    let (stack, clock) = Stack::start_clocked(&[]).await;
    let app = stack.app();
    let login = stack.login("olga").await;
    let sub = payload(login["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    // The ban's first write, a few seconds ago; its revocation slow (Redis' WAIT, a busy
    // store), not there yet.
    let now = clock.now();
    let ban = Ban {
        created_at: now - 3,
        until: None,
        reason: None,
    };
    assert!(app.store.set_ban(&sub, Some(&ban), now - 3).await.unwrap());
    let unban = unban_under_way(&stack, &sub);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !unban.is_finished(),
        "the unban did not wait for the ban's revocation"
    );
    // The ban's revocation lands (dated when the ban was in force).
    let revoke = Revoke::Sub {
        sub: sub.clone(),
        issued_before: now - 2,
        sessions: SubSessions::All,
    };
    app.sessions.revoke(revoke, now - 3).await.unwrap();
    let (status, body) = unban.await.unwrap();
    assert_eq!(
        (status, body["was_banned"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    let again = stack.login("olga").await;
    let (status, _, _) = stack.get("/v1/me", again["access_token"].as_str()).await;
    assert_eq!(status, 200, "the login after the unban was ended");

    // A ban whose revocation never comes (its call failed after the first write): 409 after
    // the wait, the ban still in force.
    let ban = Ban {
        created_at: now,
        until: None,
        reason: None,
    };
    assert!(app.store.set_ban(&sub, Some(&ban), now).await.unwrap());
    let (status, body, _) = stack
        .post_auth("/v1/admin/unban", ADMIN, Some(json!({"sub": sub})))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("/v1/admin/revoke"),
        "{body}"
    );
    let code = stack.mock.login("olga").code;
    let (status, _, _) = stack.post("/v1/login", json!({"code": code})).await;
    assert_eq!(status, 403);
}

/// Two replicas on one store, the login replica's clock 1.5 s ahead of the banning one's: a
/// session opened there just before the ban is dated after the ban's `issued_before`, and so
/// is its token's `iat`. The ban ends it all the same (its `sid` entry in the feed, its token
/// refused). "Log out everywhere" from the same replica leaves it: a login racing that is
/// legitimate (`SubSessions::CreatedBefore`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ends_a_session_opened_on_a_replica_whose_clock_runs_ahead() {
    let (stack, clock) = Stack::start_clocked(&[("WEAUTH_LEEWAY", "60s")]).await;
    to_next_second(&clock);
    let ahead = Arc::new(ManualClock::at(clock.now_ms() + 1500));
    let other = InProcess::start(stack.issuer.env(), Arc::clone(&ahead) as Arc<dyn Clock>).await;
    let code = stack.mock.login("pia").code;
    let response = stack
        .http
        .post(format!("http://{}/v1/login", other.addr))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let (status, login, _) = common::split(response).await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    let claims = payload(token);
    let (sub, sid) = (
        claims["sub"].as_str().unwrap().to_string(),
        claims["sid"].as_str().unwrap().to_string(),
    );
    assert_eq!(claims["iat"].as_i64(), Some(clock.now() + 1));

    let (status, body, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({"sub": sub})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_before"].as_i64(), Some(clock.now() + 1));
    let (status, _, _) = stack.get("/v1/me", Some(token)).await;
    assert_eq!(
        status, 200,
        "log out everywhere leaves a session opened as it ran"
    );

    let (status, body, _) = stack
        .post_auth("/v1/admin/ban", ADMIN, Some(json!({"sub": sub})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["revocation"]["issued_before"].as_i64(),
        Some(clock.now() + 1),
        "the ban's entry keeps its own issued_before"
    );
    let (status, body, _) = stack.get("/v1/me", Some(token)).await;
    assert_eq!(status, 401, "the banned user's session lives on: {body}");
    let ended = stack.app().store.session(&sid).await.unwrap().unwrap();
    assert!(ended.revoked_at.is_some());
    let feed = stack.feed(0, 0).await;
    assert!(
        feed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["kind"] == "sid" && entry["value"] == sid.as_str()),
        "no sid entry for the edge: {feed}"
    );
    other.stop().await;
}
