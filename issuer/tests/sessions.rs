//! Integration tests of refresh rotation, logout, `/v1/me`, admin revocation and the
//! revocation feed (including its long poll), against the real binary.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{payload, Stack, ADMIN, FEED};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_then_reuse_revokes_the_session() {
    // No grace: every second use is theft (the default grace is the next tests' subject).
    let stack = Stack::start(&[("WEAUTH_REFRESH_REUSE_GRACE", "0s")]).await;
    let first = stack.login("ivy").await;
    let rt1 = first["refresh_token"].as_str().unwrap();
    let (status, second, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(status, 200, "{second}");
    let rt2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(rt1, rt2);
    let at2 = second["access_token"].as_str().unwrap();
    let at1 = first["access_token"].as_str().unwrap();
    assert_eq!(payload(at1)["sid"], payload(at2)["sid"]);
    assert_ne!(payload(at1)["jti"], payload(at2)["jti"]);
    assert_eq!(second["token_type"], "Bearer");
    let (status, _, _) = stack.get("/v1/me", Some(at2)).await;
    assert_eq!(status, 200);

    // Reuse of rt1: invalid_grant, and the whole session is revoked.
    let (status, body, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, body, headers) = stack.get("/v1/me", Some(at2)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\", error_description=\"the token has been revoked\""
    );
    let (status, _, headers) = stack.get("/v1/me", None).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"], "Bearer",
        "no credential sent: no error code"
    );
    let (status, body, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt2 }))
        .await;
    assert_eq!(status, 400, "the rotated-to token dies with the session");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let feed = stack.feed(0, 0).await;
    let entries = feed["entries"].as_array().unwrap();
    assert!(entries
        .iter()
        .any(|e| e["kind"] == "sid" && e["value"] == payload(at1)["sid"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_concurrent_same_token_exactly_one_wins() {
    let stack = Stack::start(&[("WEAUTH_REFRESH_REUSE_GRACE", "0s")]).await;
    let login = stack.login("jack").await;
    let answers = concurrent_refreshes(&stack, &login, 12).await;
    let winners: Vec<_> = answers.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|(s, body)| *s == 400 && body["error"] == "invalid_grant")
            .count(),
        11,
        "{answers:?}"
    );
    // With no grace the losers' presentations were reuse: the session ended, and with it
    // the winner's tokens.
    let won = &winners[0].1;
    let (status, body, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": won["refresh_token"] }),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let access = won["access_token"].as_str().unwrap();
    let (status, body, _) = stack.get("/v1/me", Some(access)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["error_description"], "the token has been revoked",
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_unknown_or_malformed_token_invalid_grant() {
    let stack = Stack::start(&[]).await;
    for token in ["nope", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let (status, body, _) = stack
            .post("/v1/token/refresh", json!({ "refresh_token": token }))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_capped_by_session_max() {
    let (stack, clock) = Stack::start_clocked(&[
        ("WEAUTH_ACCESS_TTL", "3s"),
        ("WEAUTH_REFRESH_TTL", "3s"),
        ("WEAUTH_SESSION_MAX", "3s"),
    ])
    .await;
    let login = stack.login("kate").await;
    assert_eq!(login["refresh_expires_in"], 3);
    clock.advance_ms(1500);
    let (status, body, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": login["refresh_token"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let left = body["refresh_expires_in"].as_i64().unwrap();
    assert!(
        (1..=2).contains(&left),
        "sliding but capped by the 3 s session: {left}"
    );
    // The access token ends with the session too (it outlived it by up to WEAUTH_ACCESS_TTL).
    assert_eq!(body["expires_in"].as_i64(), Some(left), "{body}");
    let claims = common::payload(body["access_token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        left
    );
    clock.advance_ms(2600);
    let (status, body, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": body["refresh_token"] }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_returns_profile_and_requires_valid_bearer() {
    let stack = Stack::start(&[]).await;
    let login = stack.login("liam").await;
    let token = login["access_token"].as_str().unwrap();
    let (status, me, _) = stack.get("/v1/me", Some(token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["sub"], payload(token)["sub"]);
    assert_eq!(me["openid"], stack.mock.openid("liam").as_str());
    assert_eq!(me["appid"], common::APPID);
    assert!(me["created_at"].is_i64());
    assert!(me.get("session_key").is_none());
    for bad in [None, Some("garbage"), Some(&format!("{token}x")[..])] {
        let (status, body, _) = stack.get("/v1/me", bad).await;
        assert_eq!(status, 401, "{bad:?}");
        assert_eq!(body["error"], "invalid_token");
    }
    // The refresh token is not an access token.
    let (status, _, _) = stack.get("/v1/me", login["refresh_token"].as_str()).await;
    assert_eq!(status, 401);
}

/// A seq this replica heard of but the store does not have (announced, then lost with its
/// primary before it replicated; a store restored from a backup): a poll at the store's seq is
/// held for its wait, reading the store a few times — it was woken again every millisecond,
/// reading the store each time, for its whole wait — and a later revocation still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_held_calmly_past_a_seq_the_store_does_not_have() {
    let stack = Stack::start(&[]).await;
    let common::Runner::InProcess(issuer) = &stack.issuer else {
        panic!("not in process")
    };
    let app = std::sync::Arc::clone(&issuer.app);
    let seq = stack.feed(0, 0).await["seq"].as_u64().unwrap();
    app.notify_seq(seq + 5);
    let reads = app.feed.reloads();
    let started = Instant::now();
    let held = stack.feed(seq, 2).await;
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert_eq!(held["seq"].as_u64().unwrap(), seq, "{held}");
    let read = app.feed.reloads() - reads;
    assert!(
        read <= 6,
        "the held poll read the store {read} times in 2 s"
    );
    // The replica follows the store from there: its next revocation (at a seq below the one
    // heard of) wakes a held poll at once.
    let http = stack.http.clone();
    let url = stack.url(&format!("/v1/revocations?since={seq}&wait=30"));
    let poll = tokio::spawn(async move {
        let response = http.get(url).bearer_auth(FEED).send().await.unwrap();
        response.json::<serde_json::Value>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoked_at = Instant::now();
    let (status, _, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "jti": "after" })))
        .await;
    assert_eq!(status, 200);
    let answered = poll.await.unwrap();
    assert_eq!(answered["seq"].as_u64().unwrap(), seq + 1, "{answered}");
    // Woken by it, not by the end of its 30 s wait (bound for a loaded machine).
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
}

/// Entries this replica's copy of the feed read that the store then lost (a poll woken before
/// they replicated, their primary failed over): at its next re-read of the store's seq the
/// replica follows the store. Its copy kept them — answered to a `since` below them while
/// another replica answered the same edge a full set without them, the edge going back and
/// forth between the two until the next revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_copy_holding_entries_the_store_lost_follows_the_store() {
    let stack = Stack::start(&[]).await;
    let revoke = |jti: &'static str| {
        let stack = &stack;
        async move {
            let (status, body, _) = stack
                .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "jti": jti })))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    revoke("kept").await;
    let kept = stack.feed(0, 0).await["seq"].as_u64().unwrap();
    revoke("lost-1").await;
    revoke("lost-2").await;
    let read = stack.feed(kept, 0).await;
    assert_eq!(read["entries"].as_array().unwrap().len(), 2, "{read}");
    // The store loses them, as a primary failing over before they replicated would.
    let conn = rusqlite::Connection::open(stack.db_path()).unwrap();
    conn.execute_batch(&format!(
        "DELETE FROM revocations WHERE seq > {kept}; \
         UPDATE sqlite_sequence SET seq = {kept} WHERE name = 'revocations';"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = stack.feed(kept, 0).await;
        if answer["seq"].as_u64() == Some(kept) {
            assert_eq!(answer["entries"].as_array().unwrap().len(), 0, "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica still answers entries the store lost: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_session_and_wakes_long_poll_fast() {
    let started_us = common::now_us();
    let stack = Stack::start(&[]).await;
    let login = stack.login("mia").await;
    let token = login["access_token"].as_str().unwrap().to_string();
    // since=0 always answers at once with the full set; start from a real seq.
    let (status, _, _) = stack
        .post_auth(
            "/v1/admin/revoke",
            ADMIN,
            Some(json!({ "jti": "unrelated" })),
        )
        .await;
    assert_eq!(status, 200);
    let seq = stack.feed(0, 0).await["seq"].as_u64().unwrap();
    // The sequence starts at 1 on a new store, and the issuer's start moved it on (past any
    // seq a restored backup would lack: to the time in microseconds): the first entry is past
    // that.
    assert!(
        (started_us + 1..=common::now_us() + 1).contains(&seq),
        "{seq}"
    );
    // A poll with nothing new waits...
    let started = Instant::now();
    let idle = stack.feed(seq, 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(idle["full"], false);
    assert_eq!(idle["entries"].as_array().unwrap().len(), 0);
    assert_eq!(idle["seq"].as_u64().unwrap(), seq);
    // ...and is woken by a logout.
    let http = stack.http.clone();
    let url = stack.url(&format!("/v1/revocations?since={seq}&wait=30"));
    let poll = tokio::spawn(async move {
        let response = http.get(url).bearer_auth(FEED).send().await.unwrap();
        (
            Instant::now(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logged_out_at = Instant::now();
    let (status, _, _) = stack.post_auth("/v1/logout", &token, None).await;
    assert_eq!(status, 204);
    let (answered_at, body) = poll.await.unwrap();
    let latency = answered_at.saturating_duration_since(logged_out_at);
    // Woken by the logout, not by the end of its 30 s wait. The bound leaves room for a
    // loaded CI machine (a 500 ms bound failed once at load 10 on 2 cores); how fast the
    // wake is on an idle machine is `make bench`'s revocation-delay measurement.
    assert!(
        latency < Duration::from_secs(5),
        "long poll woke after {latency:?}"
    );
    assert_eq!(body["full"], false);
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{body}");
    assert_eq!(entries[0]["kind"], "sid");
    assert_eq!(entries[0]["value"], payload(&token)["sid"]);
    assert!(body["seq"].as_u64().unwrap() > seq);
    let until = entries[0]["until"].as_i64().unwrap();
    let now = body["now"].as_i64().unwrap();
    assert!(
        (now + 900..=now + 900 + 61).contains(&until),
        "until {until} now {now}"
    );
    // The token and the refresh token are dead.
    let (status, _, _) = stack.get("/v1/me", Some(&token)).await;
    assert_eq!(status, 401);
    let (_, metrics, _) = stack.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("weauth_bearer_rejections_total{reason=\"revoked\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("weauth_revocation_seq {}", body["seq"])),
        "{metrics}"
    );
    assert!(
        metrics.contains("weauth_revocations_total{kind=\"sid\"} 1"),
        "{metrics}"
    );
    let (status, _, _) = stack.post_auth("/v1/logout", &token, None).await;
    assert_eq!(status, 401);
    let (status, body, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": login["refresh_token"] }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_revoke_jti_sid_and_sub() {
    let stack = Stack::start(&[]).await;
    let a = stack.login("noah").await;
    let b = stack.login("noah").await;
    let c = stack.login("olga").await;
    let at = |v: &serde_json::Value| v["access_token"].as_str().unwrap().to_string();

    // Credential required.
    let (status, _, _) = stack
        .post_auth("/v1/admin/revoke", "wrong-token", Some(json!({"jti": "x"})))
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = stack.post("/v1/admin/revoke", json!({"jti": "x"})).await;
    assert_eq!(status, 401);
    // Exactly one selector.
    let (status, body, _) = stack
        .post_auth(
            "/v1/admin/revoke",
            ADMIN,
            Some(json!({"jti": "x", "sid": "y"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request", "{body}");
    let (status, body, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request", "{body}");

    // jti: only that token.
    let jti = payload(&at(&c))["jti"].as_str().unwrap().to_string();
    let (status, entry, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "jti": jti })))
        .await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["kind"], "jti");
    assert_eq!(stack.get("/v1/me", Some(&at(&c))).await.0, 401);
    let (status, c2, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": c["refresh_token"] }),
        )
        .await;
    assert_eq!(status, 200, "a jti revocation leaves the session alive");
    assert_eq!(stack.get("/v1/me", Some(&at(&c2))).await.0, 200);

    // sid: that session only.
    let sid = payload(&at(&c2))["sid"].as_str().unwrap().to_string();
    let (status, _, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "sid": sid })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(stack.get("/v1/me", Some(&at(&c2))).await.0, 401);
    assert_eq!(stack.get("/v1/me", Some(&at(&a))).await.0, 200);

    // sub: every token and session of noah issued so far.
    let sub = payload(&at(&a))["sub"].as_str().unwrap().to_string();
    let (status, entry, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "sub": sub })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(entry["kind"], "sub");
    assert!(entry["issued_before"].is_i64());
    for login in [&a, &b] {
        assert_eq!(stack.get("/v1/me", Some(&at(login))).await.0, 401);
        let (status, body, _) = stack
            .post(
                "/v1/token/refresh",
                json!({ "refresh_token": login["refresh_token"] }),
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
    // A future issued_before is refused.
    let (status, body, _) = stack
        .post_auth(
            "/v1/admin/revoke",
            ADMIN,
            Some(json!({ "sub": sub, "issued_before": 99_999_999_999i64 })),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request", "{body}");
    // An unknown session or user is a typo: 404, nothing written (a 200 passed it for done
    // and sent it to every edge); a jti cannot be checked.
    for unknown in [json!({ "sid": "s_typo" }), json!({ "sub": "u_typo" })] {
        let (status, body, _) = stack
            .post_auth("/v1/admin/revoke", ADMIN, Some(unknown.clone()))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{unknown}: {body}"
        );
    }
    let feed = stack.feed(0, 0).await;
    let kinds: Vec<&str> = feed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    // The `sub` revocation wrote a `sid` entry for each session it ended (a's and b's) before
    // its own: a session may hold tokens issued after `issued_before`.
    assert_eq!(kinds, vec!["jti", "sid", "sid", "sid", "sub"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_requires_credential_and_handles_since() {
    let started_us = common::now_us();
    let stack = Stack::start(&[]).await;
    let (status, body, _) = stack.get("/v1/revocations?since=0", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
    let (status, _, _) = stack
        .get("/v1/revocations?since=0", Some("nope-nope"))
        .await;
    assert_eq!(status, 401);
    let (status, body, _) = stack.get("/v1/revocations?since=abc", Some(FEED)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request", "{body}");
    let empty = stack.feed(0, 0).await;
    let seq = empty["seq"].as_u64().unwrap();
    assert!(
        (started_us..=common::now_us()).contains(&seq),
        "a new store's sequence starts at 1, moved on to the time in microseconds at the \
         issuer's start: {seq}"
    );
    assert_eq!(empty["full"], true);
    assert_eq!(empty["entries"].as_array().unwrap().len(), 0);
    // So a consumer can long-poll from its first answer on, even before any revocation.
    let first_seq = empty["seq"].as_u64().unwrap();
    let started = Instant::now();
    let idle = stack.feed(first_seq, 1).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        (idle["seq"].as_u64(), idle["full"].as_bool()),
        (Some(first_seq), Some(false))
    );
    for user in ["pia", "quin"] {
        let login = stack.login(user).await;
        let (status, _, _) = stack
            .post_auth("/v1/logout", login["access_token"].as_str().unwrap(), None)
            .await;
        assert_eq!(status, 204);
    }
    let full = stack.feed(0, 0).await;
    assert_eq!(full["full"], true);
    assert_eq!(full["entries"].as_array().unwrap().len(), 2);
    let seq = full["seq"].as_u64().unwrap();
    let first = full["entries"][0]["seq"].as_u64().unwrap();
    let delta = stack.feed(first, 0).await;
    assert_eq!(delta["full"], false);
    assert_eq!(delta["entries"].as_array().unwrap().len(), 1);
    assert_eq!(delta["entries"][0]["seq"].as_u64().unwrap(), seq);
    let ahead = stack.feed(seq + 100, 0).await;
    assert_eq!(ahead["full"], true, "a since from the future starts over");
    // The wait is capped (a huge wait still answers quickly when something is there).
    let started = Instant::now();
    let capped = stack.feed(0, 100_000).await;
    // Far under any wait it could have held (a loaded machine's margin over the milliseconds).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(capped["full"], true);
}

/// `n` refreshes of `login`'s refresh token sent at once: each one's status and body.
async fn concurrent_refreshes(
    stack: &Stack,
    login: &serde_json::Value,
    n: usize,
) -> Vec<(u16, serde_json::Value)> {
    let token = login["refresh_token"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let http = stack.http.clone();
        let url = stack.url("/v1/token/refresh");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .json(&json!({ "refresh_token": token }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// The value of one series in the issuer's `/metrics` (0 when absent).
async fn metric(stack: &Stack, series: &str) -> u64 {
    let (_, metrics, _) = stack.get("/metrics", None).await;
    metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |value| value.parse().unwrap())
}

/// Every refresh is counted once by its outcome: one refused before it reaches the session
/// logic (a body that is not a refresh request), one the store failed (its write lock held by
/// another connection past the issuer's 5 s busy timeout: 503) — a store outage showed as
/// refreshes falling, not failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refresh_is_counted_by_its_outcome_a_store_failure_too() {
    let stack = Stack::start(&[]).await;
    let pair = stack.login("counted").await;
    let (status, body, _) = stack
        .post("/v1/token/refresh", json!({ "refresh": "no such field" }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        metric(
            &stack,
            "weauth_refreshes_total{outcome=\"invalid_request\"}"
        )
        .await,
        1
    );
    let db = rusqlite::Connection::open(stack.dir.path().join("weauth.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let presented = json!({ "refresh_token": pair["refresh_token"] });
    let (status, body, _) = stack.post("/v1/token/refresh", presented.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    db.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        metric(
            &stack,
            "weauth_refreshes_total{outcome=\"temporarily_unavailable\"}"
        )
        .await,
        1
    );
    let (status, body, _) = stack.post("/v1/token/refresh", presented).await;
    assert_eq!(status, 200, "the failed refresh spent the token: {body}");
    assert_eq!(
        metric(&stack, "weauth_refreshes_total{outcome=\"ok\"}").await,
        1
    );
}

/// Issue 24 §6: a retry after a lost answer (or a second tab) within the default grace gets
/// the refresh token the first use got, with an access token of its own, and nothing is
/// revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_retried_within_the_default_grace_gets_the_same_refresh_token() {
    let stack = Stack::start(&[]).await;
    let login = stack.login("rosa").await;
    let rt1 = login["refresh_token"].as_str().unwrap();
    let (status, first, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(status, 200, "{first}");
    // The answer was lost: the client presents rt1 again.
    let (status, retry, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(
        status, 200,
        "a retry within the grace is not a theft: {retry}"
    );
    assert_eq!(
        retry["refresh_token"], first["refresh_token"],
        "one successor"
    );
    // The same expiry (the repeat's answer may come a second later: one second less).
    let (first_left, retry_left) = (
        first["refresh_expires_in"].as_i64().unwrap(),
        retry["refresh_expires_in"].as_i64().unwrap(),
    );
    assert!(
        (0..=1).contains(&(first_left - retry_left)),
        "{first_left} {retry_left}"
    );
    assert_eq!(
        payload(retry["access_token"].as_str().unwrap())["sid"],
        payload(first["access_token"].as_str().unwrap())["sid"],
        "the same session"
    );
    // Both access tokens work; the refresh token rotates on.
    for pair in [&first, &retry] {
        let (status, _, _) = stack.get("/v1/me", pair["access_token"].as_str()).await;
        assert_eq!(status, 200);
    }
    let (status, body, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": retry["refresh_token"] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stack.feed(0, 0).await["entries"],
        json!([]),
        "nothing revoked"
    );
    assert_eq!(
        metric(&stack, "weauth_refreshes_total{outcome=\"grace\"}").await,
        1
    );
    assert_eq!(
        metric(&stack, "weauth_refreshes_total{outcome=\"ok\"}").await,
        2
    );

    // Two tabs at once: every request gets a pair, all with the one successor, and the
    // session lives on.
    let login = stack.login("tabs").await;
    let answers = concurrent_refreshes(&stack, &login, 6).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    for (_, pair) in &answers {
        assert_eq!(pair["refresh_token"], answers[0].1["refresh_token"]);
        let (status, _, _) = stack.get("/v1/me", pair["access_token"].as_str()).await;
        assert_eq!(status, 200);
    }
}

/// A thief replaying a refresh token within the grace gets the owner's next token, not a
/// chain of its own: as soon as one of the two uses it after the other's grace, the session
/// ends (a sibling token of its own rotated on beside the owner's, undetected, until the
/// session's end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_replayed_within_the_grace_gets_no_chain_of_its_own() {
    let (stack, clock) = Stack::start_clocked(&[("WEAUTH_REFRESH_REUSE_GRACE", "2s")]).await;
    let login = stack.login("victim").await;
    let rt1 = login["refresh_token"].as_str().unwrap();
    let (status, owner, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(status, 200, "{owner}");
    // The thief replays the stolen rt1 within the grace.
    let (status, thief, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(status, 200, "{thief}");
    // The owner rotates on; later the thief uses what it got.
    let (status, owner_next, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": owner["refresh_token"] }),
        )
        .await;
    assert_eq!(status, 200, "{owner_next}");
    clock.advance_secs(3);
    let (status, body, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": thief["refresh_token"] }),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "the thief's chain is the owner's: its use after the grace is reuse: {body}"
    );
    // The session is over for both: the owner logs in again, the thief has nothing.
    let (status, _, _) = stack
        .get("/v1/me", owner_next["access_token"].as_str())
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = stack
        .post(
            "/v1/token/refresh",
            json!({ "refresh_token": owner_next["refresh_token"] }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        metric(&stack, "weauth_refreshes_total{outcome=\"reuse\"}").await,
        1
    );
}

/// Issue 24 §6: a replay after the grace is reuse (RFC 9700): the session ends, the pairs
/// handed out within the grace die with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_replayed_after_the_grace_revokes_the_session() {
    let (stack, clock) = Stack::start_clocked(&[("WEAUTH_REFRESH_REUSE_GRACE", "2s")]).await;
    let login = stack.login("mallory-victim").await;
    let rt1 = login["refresh_token"].as_str().unwrap();
    let (status, first, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(status, 200);
    let (status, repeat, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(status, 200, "{repeat}");
    // Three seconds later the rotation is past the 2 s grace.
    clock.advance_secs(3);
    let (status, body, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    for pair in [&first, &repeat] {
        let (status, _, _) = stack.get("/v1/me", pair["access_token"].as_str()).await;
        assert_eq!(status, 401, "the family is revoked");
        let (status, _, _) = stack
            .post(
                "/v1/token/refresh",
                json!({ "refresh_token": pair["refresh_token"] }),
            )
            .await;
        assert_eq!(status, 400);
    }
    assert_eq!(
        metric(&stack, "weauth_refreshes_total{outcome=\"reuse\"}").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revocations_purged_and_old_since_starts_over() {
    let stack = Stack::start(&[
        ("WEAUTH_ACCESS_TTL", "1s"),
        ("WEAUTH_LEEWAY", "0s"),
        ("WEAUTH_PURGE_INTERVAL", "200ms"),
    ])
    .await;
    let mut seqs = Vec::new();
    for jti in ["a", "b"] {
        let (status, entry, _) = stack
            .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "jti": jti })))
            .await;
        assert_eq!(status, 200);
        seqs.push(entry["seq"].as_u64().unwrap());
    }
    let live = stack.feed(0, 0).await;
    assert_eq!(live["entries"].as_array().unwrap().len(), 2);
    // until = now + 1 s: gone after a couple of seconds and a purge (every 200 ms); 15 s for
    // a loaded machine.
    let started = Instant::now();
    loop {
        if stack.count("revocations") == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not purged within 15 s ({} left)",
            stack.count("revocations")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "revocations purged {:?} after the feed listed them",
        started.elapsed()
    );
    let after = stack.feed(0, 0).await;
    assert_eq!(after["entries"], json!([]));
    assert_eq!(
        after["seq"].as_u64().unwrap(),
        seqs[1],
        "seq survives the purge"
    );
    let old = stack.feed(seqs[0], 0).await;
    assert_eq!(
        old["full"], true,
        "a since below the purge watermark starts over"
    );
    let current = stack.feed(seqs[1], 0).await;
    assert_eq!(current["full"], false);
    let (_, entry, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "jti": "c" })))
        .await;
    assert_eq!(entry["seq"].as_u64().unwrap(), seqs[1] + 1, "never reused");
}

/// Issue 19: revoke, then read the feed at once, many times. The feed's long-poll wakes are
/// paced, but a read after an acknowledged revocation on the same replica must see it: the
/// answer's `seq` is at least the revocation's and its entry is there. A poll held by another
/// caller keeps the pacing window open, as in production.
/// Revocations coming faster than a sidecar's round trip: its long poll, coming back for more
/// at once after each answer, is answered once per pacing window, not once per revocation
/// that landed during its round trip (which bypassed the pacing: every sidecar looped at the
/// revocation rate). Each answer still holds everything known when it is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_long_poll_coming_back_is_paced_whatever_the_revocation_rate() {
    // A window of 250 ms whatever the polls held (one answer a second aimed at).
    let stack = Stack::start(&[
        ("WEAUTH_FEED_COALESCE", "250ms"),
        ("WEAUTH_FEED_ANSWER_RATE", "1"),
    ])
    .await;
    let mut since = stack.feed(0, 0).await["seq"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Four revokers side by side: one alone, a request at a time, had to make more than 9
    // revocations a second for the test to tell paced answers from unpaced ones, which a
    // loaded machine might not.
    let revokers: Vec<_> = (0..4)
        .map(|n| {
            let (http, url, stop) = (
                stack.http.clone(),
                stack.url("/v1/admin/revoke"),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut revoked = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let response = http
                        .post(&url)
                        .bearer_auth(ADMIN)
                        .json(&json!({ "jti": format!("burst-{n}-{revoked}") }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    revoked += 1;
                }
                revoked
            })
        })
        .collect();
    let started = Instant::now();
    let mut answers = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        let answer = stack.feed(since, 30).await;
        since = answer["seq"].as_u64().unwrap();
        answers += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let mut revoked = 0;
    for revoker in revokers {
        revoked += revoker.await.unwrap();
    }
    // About 2 s / 250 ms (+1: the first change after a quiet window goes out at once); a
    // slower machine answers fewer, never more. Without the pacing of returning polls: one per
    // round trip while revocations keep coming (27 in a debug build here).
    assert!(
        answers <= 14,
        "{answers} answers in 2 s to one sidecar for {revoked} revocations"
    );
    assert!(
        revoked > 2 * answers,
        "too few revocations ({revoked}) to tell"
    );
    // Nothing is lost by it: a revocation after the burst reaches the poll.
    let (status, body, _) = stack
        .post_auth(
            "/v1/admin/revoke",
            ADMIN,
            Some(json!({ "jti": "after-burst" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut seq = since;
    let mut seen = false;
    for _ in 0..10 {
        let answer = stack.feed(seq, 5).await;
        seq = answer["seq"].as_u64().unwrap();
        if answer["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["value"] == "after-burst")
        {
            seen = true;
            break;
        }
    }
    assert!(
        seen,
        "the revocation after the burst never reached the poll"
    );
}

async fn revoke_then_read_at_once_sees_the_revocation(stack: &Stack) {
    let held_url = stack.url("/v1/revocations?since=0&wait=0");
    let held_seq = stack
        .http
        .get(held_url)
        .bearer_auth(FEED)
        .send()
        .await
        .unwrap();
    let held_seq = held_seq.json::<serde_json::Value>().await.unwrap()["seq"]
        .as_u64()
        .unwrap();
    let http = stack.http.clone();
    let hold = stack.url(&format!("/v1/revocations?since={held_seq}&wait=30"));
    let holder = tokio::spawn(async move {
        let _ = http.get(hold).bearer_auth(FEED).send().await;
    });
    for round in 0..40 {
        // A jti: not checked against the store (an unknown sid or sub is a 404).
        let sid = format!("read-after-write-{round}");
        let (status, entry, _) = stack
            .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "jti": sid })))
            .await;
        assert_eq!(status, 200, "round {round}: {entry}");
        let acked = entry["seq"].as_u64().unwrap();
        let feed = stack.feed(0, 0).await;
        assert!(
            feed["seq"].as_u64().unwrap() >= acked,
            "round {round}: revocation seq {acked} acknowledged, the feed answered {feed}"
        );
        let entries = feed["entries"].as_array().unwrap();
        assert!(
            entries.iter().any(|e| e["value"] == sid.as_str()),
            "round {round}: the feed lacks the acknowledged revocation {acked}: {feed}"
        );
    }
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_read_after_revoke_sees_it_on_sqlite() {
    let stack = Stack::start(&[]).await;
    revoke_then_read_at_once_sees_the_revocation(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_read_after_revoke_sees_it_on_redis() {
    let redis = weauth_servers::redis::RedisServer::start().await.unwrap();
    let stack = on_redis(&redis, &[]).await;
    revoke_then_read_at_once_sees_the_revocation(&stack).await;
}

/// An issuer on `redis` (database 0), with `extra` settings.
async fn on_redis(redis: &weauth_servers::redis::RedisServer, extra: &[(&str, &str)]) -> Stack {
    let url = redis.url(0);
    let mut env = vec![
        ("WEAUTH_STORE", url.as_str()),
        ("WEAUTH_DATA_KEY", common::SHARED_DATA_KEY),
    ];
    env.extend_from_slice(extra);
    Stack::start(&env).await
}

/// A refresh its client gives up on runs to its end (a refresh token's reuse is two writes
/// on Redis: the session marked revoked, then its `sid` entry published). Shown with a reuse
/// presented while the Redis server is stopped (SIGSTOP) and its client giving up before the
/// server is resumed: the session is revoked and the entry reaches the feed. Stopped with its
/// client, the refresh was dropped wherever it stood — between the two writes, the session
/// revoked and the edge never told while the thief's access token lived. Whether the server
/// took the request before the client gave up is read from its 499.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_abandoned_by_its_client_still_reaches_the_feed() {
    let redis = weauth_servers::redis::RedisServer::start().await.unwrap();
    let stack = on_redis(
        &redis,
        &[
            ("WEAUTH_REFRESH_REUSE_GRACE", "0s"),
            ("WEAUTH_LOGIN_RATE", "0"),
        ],
    )
    .await;
    let tokens = stack.login("quinn").await;
    let sid = payload(tokens["access_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let first = tokens["refresh_token"].as_str().unwrap().to_string();
    let (status, body, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": first }))
        .await;
    assert_eq!(status, 200, "{body}");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    async fn abandoned(stack: &Stack) -> u64 {
        let (_, metrics, _) = stack.get("/metrics", None).await;
        metrics
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|line| {
                line.strip_prefix("weauth_http_requests_total{route=\"refresh\",status=\"499\"} ")
            })
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    }
    let published = |feed: &serde_json::Value| {
        feed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "sid" && e["value"] == sid.as_str())
    };
    // Rounds: the server may not have taken the request before its client gave up, or (a
    // starved machine) the abandoned handler's first command may have met the store's 3 s
    // response timeout before the resume, writing nothing — then the token is presented
    // again. Without running to the end, no round publishes anything.
    let mut last = serde_json::Value::Null;
    for _ in 0..3 {
        let before = abandoned(&stack).await;
        redis.pause();
        let answer = impatient
            .post(stack.url("/v1/token/refresh"))
            .json(&json!({ "refresh_token": first }))
            .send()
            .await;
        let started = Instant::now();
        while abandoned(&stack).await == before && started.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis.resume();
        assert!(answer.is_err(), "the client gave up: {answer:?}");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            last = stack.feed(0, 0).await;
            if published(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the abandoned reuse never reached the feed: {last}");
}

/// "Log out everywhere" (a `sub` revocation) while a login is in flight — its WeChat exchange
/// under way, its session not yet written, so not marked — ends that login too: it is refused
/// (`invalid_grant`: log in again) rather than handing out an access token the edge refuses
/// and a refresh token that lives on, minting tokens after the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_revocation_during_a_login_in_flight_ends_that_login() {
    // Room for the exchange held at WeChat within one attempt.
    let stack = Stack::start(&[("WEAUTH_WECHAT_TIMEOUT", "30s")]).await;
    let first = stack.login("leo").await;
    let sub = payload(first["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    // The next login is held at WeChat until the revocation is done.
    let calls = stack.mock.calls("jscode2session");
    stack.mock.inject(
        "jscode2session",
        weauth_mock_wechat::Fault::Held("revoked".into()),
        1,
    );
    let code = stack.mock.login("leo").code;
    let login = {
        let (http, url) = (stack.http.clone(), stack.url("/v1/login"));
        tokio::spawn(async move {
            let response = http
                .post(url)
                .json(&json!({ "code": code }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        })
    };
    // The login is in flight: its code exchange is held at WeChat.
    common::until_calls(&stack.mock, "jscode2session", calls + 1).await;
    let (status, entry, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "sub": sub })))
        .await;
    assert_eq!(status, 200, "{entry}");
    stack.mock.release("revoked");
    let (status, body) = login.await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("in progress"),
        "{body}"
    );
    // Once the revocation's second has passed, a login is a login.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = stack.login("leo").await;
    let (status, _, _) = stack
        .get("/v1/me", Some(again["access_token"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
}

/// `WEAUTH_ACCESS_TTL` lowered from 15 min to 5 min and the issuer restarted: the tokens issued
/// before still verify for 15 min, so every revocation made meanwhile — a logout, an admin
/// `sub` revocation, a refresh-token reuse — is kept at the edge until they expire, not for
/// the new 5 min (a revoked token would pass again). Once the old lifetime's last token can no
/// longer verify, revocations are kept for the new lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_after_the_access_ttl_is_lowered_outlive_the_longer_tokens() {
    let (mut stack, clock) = Stack::start_clocked(&[
        ("WEAUTH_LEEWAY", "0s"),
        ("WEAUTH_REFRESH_REUSE_GRACE", "0s"),
    ])
    .await;
    let (lin, max, ned) = (
        stack.login("lin").await,
        stack.login("max").await,
        stack.login("ned").await,
    );
    let token = |login: &serde_json::Value| login["access_token"].as_str().unwrap().to_string();
    let exp = |login: &serde_json::Value| payload(&token(login))["exp"].as_i64().unwrap();
    let started = payload(&token(&lin))["iat"].as_i64().unwrap();
    assert_eq!(exp(&lin) - started, 900, "the default lifetime");

    clock.advance_secs(10);
    stack
        .issuer
        .env_mut()
        .insert("WEAUTH_ACCESS_TTL".into(), "5m".into());
    stack.restart().await;
    let fresh = stack.login("kai").await;
    assert_eq!(
        exp(&fresh) - payload(&token(&fresh))["iat"].as_i64().unwrap(),
        300,
        "the lowered lifetime"
    );
    let entries = |feed: serde_json::Value| feed["entries"].as_array().unwrap().clone();

    // A logout with a token of the old lifetime.
    let (status, _, _) = stack.post_auth("/v1/logout", &token(&lin), None).await;
    assert_eq!(status, 204);
    // An admin revocation of a user logged in before.
    let sub = payload(&token(&max))["sub"].as_str().unwrap().to_string();
    let (status, _, _) = stack
        .post_auth("/v1/admin/revoke", ADMIN, Some(json!({ "sub": sub })))
        .await;
    assert_eq!(status, 200);
    // A refresh token of a session opened before, used twice.
    let ned_refresh = ned["refresh_token"].as_str().unwrap();
    let (status, _, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": ned_refresh }))
        .await;
    assert_eq!(status, 200);
    let (status, reused, _) = stack
        .post("/v1/token/refresh", json!({ "refresh_token": ned_refresh }))
        .await;
    assert_eq!(status, 400, "{reused}");

    let feed = entries(stack.feed(0, 0).await);
    let until_of = |kind: &str, value: &str| {
        feed.iter()
            .find(|entry| entry["kind"] == kind && entry["value"] == value)
            .unwrap_or_else(|| panic!("no {kind} entry in {feed:?}"))["until"]
            .as_i64()
            .unwrap()
    };
    let lin_sid = payload(&token(&lin))["sid"].as_str().unwrap().to_string();
    let ned_sid = payload(&token(&ned))["sid"].as_str().unwrap().to_string();
    assert!(until_of("sid", &lin_sid) >= exp(&lin), "{feed:?}");
    assert!(until_of("sub", &sub) >= exp(&max), "{feed:?}");
    assert!(until_of("sid", &ned_sid) >= exp(&ned), "{feed:?}");

    // Past the old lifetime's last possible token (its last report + two report periods +
    // 15 min), a revocation is kept for the new lifetime.
    clock.advance_secs(900 + 60);
    let later = stack.login("liv").await;
    let (status, _, _) = stack.post_auth("/v1/logout", &token(&later), None).await;
    assert_eq!(status, 204);
    let feed = entries(stack.feed(0, 0).await);
    let later_sid = payload(&token(&later))["sid"].as_str().unwrap().to_string();
    let entry = feed
        .iter()
        .find(|entry| entry["kind"] == "sid" && entry["value"] == later_sid.as_str())
        .unwrap();
    assert_eq!(
        entry["until"].as_i64().unwrap(),
        payload(&token(&later))["iat"].as_i64().unwrap() + 300,
        "{entry}"
    );
}

/// A refresh-token reuse right after a replica of a longer lifetime started (its report in the
/// store, this replica's last read of the reports older): the session is revoked for the longer
/// lifetime too, not only for the one this replica last read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_revocation_covers_a_longer_lifetime_reported_since_the_last_read() {
    let stack = Stack::start(&[
        ("WEAUTH_ACCESS_TTL", "5m"),
        ("WEAUTH_LEEWAY", "0s"),
        ("WEAUTH_REFRESH_REUSE_GRACE", "0s"),
    ])
    .await;
    let login = stack.login("ada").await;
    let token = login["access_token"].as_str().unwrap();
    let issued = payload(token)["iat"].as_i64().unwrap();
    // Another replica issuing 15-minute tokens reports, as it does before its first token.
    rusqlite::Connection::open(stack.db_path())
        .unwrap()
        .execute(
            "INSERT INTO meta (key, value) VALUES ('access_ttl:900', ?1)",
            [issued],
        )
        .unwrap();
    let refresh = login["refresh_token"].as_str().unwrap();
    for want in [200, 400] {
        let (status, body, _) = stack
            .post("/v1/token/refresh", json!({ "refresh_token": refresh }))
            .await;
        assert_eq!(status, want, "{body}");
    }
    let sid = payload(token)["sid"].as_str().unwrap().to_string();
    let feed = stack.feed(0, 0).await;
    let until = feed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["kind"] == "sid" && entry["value"] == sid.as_str())
        .filter_map(|entry| entry["until"].as_i64())
        .max()
        .unwrap_or_else(|| panic!("no sid entry in {feed}"));
    assert!(
        until >= issued + 900,
        "until {until}, issued {issued}: {feed}"
    );
}
