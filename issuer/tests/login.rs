//! Integration tests of `POST /v1/login` against the mock WeChat: the token pair, independent
//! verification of the access token, user/session bookkeeping, every WeChat failure class,
//! the same code posted concurrently, the per-client rate limit, risk control, plugin login,
//! and WeChat's server API security (signed and encrypted calls, bad answers refused).

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{payload, Stack, APPID};
use ed25519_dalek::Verifier;
use serde_json::json;
use weauth_mock_wechat::{
    apisec, ApiSecAnswer, Fault, MockApiSecurity, MockConfig, MockMiniProgram, MockPlugin,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_token_pair_verifiable_with_ed25519_dalek() {
    let stack = Stack::process(&[]).await;
    let body = stack.login("alice").await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["refresh_expires_in"], 7 * 86_400);
    let refresh = body["refresh_token"].as_str().unwrap();
    assert_eq!(refresh.len(), 43);
    let token = body["access_token"].as_str().unwrap();

    // Independent check: the JWKS key and ed25519-dalek, no weauth code involved.
    let (status, jwks, _) = stack.get("/.well-known/jwks.json", None).await;
    assert_eq!(status, 200);
    let header = common::header(token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("token kid published");
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    let x: [u8; 32] = weauth_token::b64::decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig: [u8; 64] = weauth_token::b64::decode(sig).unwrap().try_into().unwrap();
    key.verify(
        input.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .expect("signature verifies with ed25519-dalek");
    let mut tampered = input.to_string();
    tampered.push('x');
    assert!(key
        .verify(
            tampered.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&sig)
        )
        .is_err());

    let claims = payload(token);
    let openid = stack.mock.openid("alice");
    assert_eq!(claims["iss"], "http://issuer.test");
    assert_eq!(claims["aud"], "weauth");
    assert_eq!(claims["openid"], openid.as_str());
    assert_eq!(claims["appid"], APPID);
    assert!(claims.get("unionid").is_none());
    assert_ne!(claims["sub"], openid.as_str(), "sub must not be the openid");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert!(claims["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(claims["jti"].as_str().is_some_and(|s| !s.is_empty()));
    // Nothing secret in the log.
    let log = stack.issuer.log_text();
    assert!(!log.contains(&openid), "openid logged");
    assert!(!log.contains(refresh), "refresh token logged");
    assert!(!log.contains(token), "access token logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_same_user_twice_same_sub_new_session() {
    let stack = Stack::start(&[]).await;
    let first = payload(stack.login("bob").await["access_token"].as_str().unwrap());
    let second = payload(stack.login("bob").await["access_token"].as_str().unwrap());
    let other = payload(stack.login("carol").await["access_token"].as_str().unwrap());
    assert_eq!(first["sub"], second["sub"]);
    assert_ne!(first["sid"], second["sid"]);
    assert_ne!(first["sub"], other["sub"]);
    assert_eq!(stack.count("users"), 2);
    assert_eq!(stack.count("sessions"), 3);
    // session_key is stored encrypted: the mock's current key for bob is not in the file.
    let key = stack.mock.session_key(&stack.mock.openid("bob")).unwrap();
    let conn = rusqlite::Connection::open(stack.db_path()).unwrap();
    let stored: Vec<Vec<u8>> = conn
        .prepare("SELECT session_key FROM sessions")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for blob in stored {
        assert!(!blob.windows(key.len()).any(|w| w == key.as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_unionid_puts_it_in_claims_and_profile() {
    let stack = Stack::start_with(
        MockConfig {
            unionid: true,
            ..Default::default()
        },
        &[],
    )
    .await;
    let body = stack.login("dave").await;
    let token = body["access_token"].as_str().unwrap();
    let unionid = stack.mock.unionid("dave");
    assert_eq!(payload(token)["unionid"], unionid.as_str());
    let (status, me, _) = stack.get("/v1/me", Some(token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["unionid"], unionid.as_str());
}

async fn login_with_fault(
    stack: &Stack,
    fault: Fault,
    times: u32,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let code = stack.mock.login("erin").code;
    stack.mock.inject("jscode2session", fault, times);
    stack.post("/v1/login", json!({ "code": code })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_wechat_errcodes_map_to_http_and_write_nothing() {
    let stack = Stack::process(&[("WEAUTH_LOGIN_RATE", "0")]).await;
    let cases: [(i64, u16, &str); 6] = [
        (40029, 400, "invalid_grant"),
        (40163, 400, "invalid_grant"),
        (45011, 429, "rate_limited"),
        (40226, 403, "access_denied"),
        (40013, 502, "upstream_error"),
        (40125, 502, "upstream_error"),
    ];
    for (errcode, want_status, want_code) in cases {
        let before = stack.mock.calls("jscode2session");
        let (status, body, headers) = login_with_fault(
            &stack,
            Fault::Errcode {
                errcode,
                errmsg: "injected".into(),
            },
            1,
        )
        .await;
        assert_eq!(status, want_status, "errcode {errcode}: {body}");
        assert_eq!(body["error"], want_code, "errcode {errcode}");
        assert!(body["error_description"].is_string());
        assert_eq!(
            stack.mock.calls("jscode2session") - before,
            1,
            "errcode {errcode} must not be retried"
        );
        if errcode == 45011 {
            assert!(headers.get("retry-after").is_some());
        }
    }
    assert_eq!(stack.count("sessions"), 0);
    assert_eq!(stack.count("users"), 0);
    assert_eq!(stack.count("refresh_tokens"), 0);
    // Misconfiguration must be logged for the operator, naming the app.
    let log = stack.issuer.log_with(&["WEAUTH_WECHAT_SECRET"]).await;
    assert!(
        log.lines()
            .any(|line| line.contains("misconfigured") && line.contains(APPID)),
        "{log}"
    );
    let (_, metrics, _) = stack.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("weauth_wechat_errors_total{api=\"jscode2session\",errcode=\"40226\"} 1")
    );
    assert!(metrics.contains("weauth_logins_total{outcome=\"invalid_grant\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_wechat_transient_failures_retried_then_5xx() {
    let stack = Stack::start(&[("WEAUTH_LOGIN_RATE", "0"), ("WEAUTH_WECHAT_RETRIES", "2")]).await;
    // One busy answer: retried, then success.
    let before = stack.mock.calls("jscode2session");
    let (status, body, _) = login_with_fault(
        &stack,
        Fault::Errcode {
            errcode: -1,
            errmsg: "system error".into(),
        },
        1,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.mock.calls("jscode2session") - before, 2);
    // Persistent failures: 1 + 2 retries, then 503 (busy) or 502 (bad answers).
    for (fault, want) in [
        (
            Fault::Errcode {
                errcode: -1,
                errmsg: "system error".into(),
            },
            503,
        ),
        (Fault::Status(500), 502),
        (Fault::Garbage, 502),
        (Fault::Html, 502),
        // An answer past 64 KiB is not read on (a proxy's page, or worse), even a well-formed
        // success.
        (
            Fault::Body(format!(
                r#"{{"openid":"o_padded","session_key":"AAAAAAAAAAAAAAAAAAAAAA==","pad":"{}"}}"#,
                "x".repeat(64 * 1024)
            )),
            502,
        ),
    ] {
        let before = stack.mock.calls("jscode2session");
        let named: String = format!("{fault:?}").chars().take(80).collect();
        let (status, body, _) = login_with_fault(&stack, fault, 3).await;
        assert_eq!(status, want, "{named}: {body}");
        assert_eq!(stack.mock.calls("jscode2session") - before, 3, "{named}");
    }
    assert_eq!(stack.count("sessions"), 1);
}

/// WeChat spends a login code when it serves the call, whether or not its answer arrives: a
/// retry after a lost answer meets "code already used". That is the lost answer's echo — the
/// client gets the failure being retried (502/503: retry), not 400 `invalid_grant` (a bad
/// code), and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_retry_after_a_lost_answer_is_not_a_bad_code() {
    // The default WeChat timeout (2 s, the tests' common one), not a short one: the retry that
    // meets "code been used" must be answered within it, or a third attempt is made.
    let stack = Stack::start(&[("WEAUTH_LOGIN_RATE", "0"), ("WEAUTH_WECHAT_RETRIES", "2")]).await;
    for (lost, want, error) in [
        (Fault::Status(502), 502, "upstream_error"),
        (Fault::Garbage, 502, "upstream_error"),
        (Fault::Hang, 503, "temporarily_unavailable"),
    ] {
        let before = stack.mock.calls("jscode2session");
        let fault = Fault::ServedThen(Box::new(lost.clone()));
        let (status, body, _) = login_with_fault(&stack, fault, 1).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want, Some(error)),
            "{lost:?}: {body}"
        );
        assert_eq!(
            stack.mock.calls("jscode2session") - before,
            2,
            "{lost:?}: retried once, then the code was found spent"
        );
    }
    assert_eq!(stack.count("sessions"), 0);
    // A code refused at the first attempt is still a bad code.
    let (status, body, _) = login_with_fault(
        &stack,
        Fault::Errcode {
            errcode: 40163,
            errmsg: "code been used".into(),
        },
        1,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_wechat_hang_times_out_with_503() {
    let stack = Stack::start(&[
        ("WEAUTH_WECHAT_TIMEOUT", "300ms"),
        ("WEAUTH_WECHAT_RETRIES", "1"),
    ])
    .await;
    let started = Instant::now();
    let (status, body, _) = login_with_fault(&stack, Fault::Hang, 2).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stack.count("sessions"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_same_code_concurrently_makes_one_session() {
    let stack = Stack::start(&[("WEAUTH_LOGIN_RATE", "0")]).await;
    let code = stack.mock.login("frank").code;
    // Slow WeChat down so the requests overlap (the first call; the others must not make one).
    stack.mock.inject(
        "jscode2session",
        Fault::Delay(Duration::from_millis(300)),
        1,
    );
    let calls = stack.mock.calls("jscode2session");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = stack.http.clone();
        let url = stack.url("/v1/login");
        let code = code.clone();
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .json(&json!({ "code": code }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 200).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|(s, body)| *s == 200 || (*s == 400 && body["error"] == "invalid_grant")),
        "{answers:?}"
    );
    // WeChat was asked once: the others were refused by the issuer (the code in flight, or
    // used), not by WeChat's own single use of a code (the mock's 40163 would refuse them too).
    assert_eq!(stack.mock.calls("jscode2session"), calls + 1, "{answers:?}");
    assert_eq!(stack.count("sessions"), 1);
    // And the same code later: refused without asking WeChat again.
    let before = stack.mock.calls("jscode2session");
    let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(stack.mock.calls("jscode2session"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limited_per_client_with_retry_after() {
    let stack = Stack::start(&[("WEAUTH_LOGIN_RATE", "1"), ("WEAUTH_LOGIN_BURST", "2")]).await;
    stack.login("gina").await;
    stack.login("gina").await;
    let code = stack.mock.login("gina").code;
    let before = stack.mock.calls("jscode2session");
    let (status, body, headers) = stack.post("/v1/login", json!({ "code": code })).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        stack.mock.calls("jscode2session"),
        before,
        "limited before WeChat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limit_uses_forwarded_for_only_from_trusted_proxy() {
    let stack = Stack::start(&[
        ("WEAUTH_LOGIN_RATE", "1"),
        ("WEAUTH_LOGIN_BURST", "1"),
        ("WEAUTH_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    for client in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        let code = stack.mock.login("hank").code;
        let response = stack
            .http
            .post(stack.url("/v1/login"))
            .header("x-forwarded-for", format!("6.6.6.6, {client}"))
            .json(&json!({ "code": code }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "client {client}");
    }
    let code = stack.mock.login("hank").code;
    let response = stack
        .http
        .post(stack.url("/v1/login"))
        .header("x-forwarded-for", "10.0.0.1")
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_bad_requests_refused() {
    let stack = Stack::start(&[]).await;
    let (status, body, _) = stack.post("/v1/login", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body, _) = stack.post("/v1/login", json!({ "code": "" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body, _) = stack
        .post("/v1/login", json!({ "code": "x", "extra": 1 }))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let response = stack
        .http
        .post(stack.url("/v1/login"))
        .header("content-type", "text/plain")
        .body(r#"{"code":"abc"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let response = stack
        .http
        .post(stack.url("/v1/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(stack.mock.calls("jscode2session"), 0);
}

/// The issuer with one mini-program whose apps-file entry carries `risk`, WeChat retries off
/// (one injected fault is one answer), and `extra` variables.
/// A process (the tests read its log: the openid is never in it).
async fn start_with_risk(risk: serde_json::Value, extra: &[(&str, &str)]) -> Stack {
    Stack::process_prepared(
        MockConfig::default(),
        move |_, dir, env| {
            let secret = env.remove("WEAUTH_WECHAT_SECRET").unwrap();
            let appid = env.remove("WEAUTH_WECHAT_APPID").unwrap();
            let apps = json!({"apps": [{"appid": appid, "secret": secret, "kind": "miniprogram", "risk": risk}]});
            let path = dir.join("apps.json");
            std::fs::write(&path, apps.to_string()).unwrap();
            env.insert("WEAUTH_APPS_FILE".into(), path.display().to_string());
            env.insert("WEAUTH_WECHAT_RETRIES".into(), "0".into());
        },
        extra,
    )
    .await
}

async fn metrics(stack: &Stack) -> String {
    common::metrics_text(&stack.http, &stack.url("/metrics")).await
}

/// A proxy appends its hop to the client's `X-Forwarded-For` line: a byte that is not ASCII in
/// the client's part must not make the issuer drop the line (the address then was the
/// proxy's, for the rate limit and for WeChat's risk check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_line_with_a_non_ascii_byte_still_names_the_client() {
    let stack = start_with_risk(
        json!({"max_rank": 2}),
        &[("WEAUTH_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .await;
    let code = stack.mock.login("rene").code;
    let response = stack
        .http
        .post(stack.url("/v1/login"))
        .header(
            "x-forwarded-for",
            reqwest::header::HeaderValue::from_bytes(b"\xe9t\xe9, 203.0.113.8").unwrap(),
        )
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let (status, body, _) = common::split(response).await;
    assert_eq!(status, 200, "{body}");
    let query = stack.mock.last_risk_query().unwrap();
    assert_eq!(query["client_ip"], "203.0.113.8", "{query}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_rank_above_max_refused_403_nothing_written_real_client_ip_sent() {
    let stack = start_with_risk(
        json!({"max_rank": 2}),
        &[("WEAUTH_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .await;
    stack.mock.set_risk_rank("rita", 3);
    let code = stack.mock.login("rita").code;
    let response = stack
        .http
        .post(stack.url("/v1/login"))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let (status, body, _) = common::split(response).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "user_risky", "{body}");
    assert!(
        !body.to_string().contains('3'),
        "the rank is not sent: {body}"
    );
    // Asked about the real client behind the trusted proxy, scene 0, this app's openid.
    let query = stack.mock.last_risk_query().unwrap();
    assert_eq!(query["client_ip"], "203.0.113.9", "{query}");
    assert_eq!(query["scene"], 0);
    assert_eq!(query["appid"], APPID);
    assert_eq!(query["openid"], stack.mock.openid("rita"));
    // Nothing handed out, nothing written.
    assert_eq!(stack.count("sessions"), 0);
    assert_eq!(stack.count("users"), 0);
    assert_eq!(stack.count("refresh_tokens"), 0);
    let text = metrics(&stack).await;
    assert!(
        text.contains(&format!(
            "weauth_login_risk_total{{appid=\"{APPID}\",outcome=\"refused\",rank=\"3\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("weauth_logins_total{outcome=\"user_risky\"} 1"),
        "{text}"
    );
    assert!(!stack.issuer.log_text().contains(&stack.mock.openid("rita")));

    // A user at the limit logs in, and an admin sees the rank on the user.
    stack.mock.set_risk_rank("sam", 2);
    let body = stack.login("sam").await;
    let sub = payload(body["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, user, _) = stack
        .get(&format!("/v1/admin/user?sub={sub}"), Some(common::ADMIN))
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["risk"]["appid"], APPID, "{user}");
    assert_eq!(user["risk"]["rank"], 2, "{user}");
    assert!(user["risk"]["at"].as_i64().unwrap() > 0, "{user}");
    assert!(metrics(&stack).await.contains(&format!(
        "weauth_login_risk_total{{appid=\"{APPID}\",outcome=\"admitted\",rank=\"2\"}} 1"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_api_failing_follows_on_error() {
    let busy = || Fault::Errcode {
        errcode: -1,
        errmsg: "system error".into(),
    };
    // on_error: allow (the default): the login goes through, counted.
    let stack = start_with_risk(json!({"max_rank": 0}), &[]).await;
    stack.mock.inject("getuserriskrank", busy(), 1);
    stack.login("una").await;
    assert!(metrics(&stack).await.contains(&format!(
        "weauth_login_risk_total{{appid=\"{APPID}\",outcome=\"error_allowed\",rank=\"none\"}} 1"
    )));

    // on_error: deny: WeChat's failure is the answer, and nothing is written.
    let stack = start_with_risk(json!({"max_rank": 0, "on_error": "deny"}), &[]).await;
    stack.mock.inject("getuserriskrank", busy(), 1);
    let code = stack.mock.login("vic").code;
    let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_eq!(stack.count("sessions"), 0);
    assert_eq!(stack.count("users"), 0);
    assert!(metrics(&stack).await.contains(&format!(
        "weauth_login_risk_total{{appid=\"{APPID}\",outcome=\"error_denied\",rank=\"none\"}} 1"
    )));
}

/// Risk control gives WeChat one call's time (`WEAUTH_WECHAT_TIMEOUT`), the app's access token
/// included, then `on_error` decides: with another replica holding the token's lease (its fetch
/// under way), the login waited for it — up to the lease and 2 s, 12 s here, longer than a
/// client waits, the code already spent — before `allow` let it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_control_waiting_for_the_access_token_follows_on_error_in_time() {
    let stack = start_with_risk(json!({"max_rank": 2}), &[("WEAUTH_WECHAT_TIMEOUT", "1s")]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    rusqlite::Connection::open(stack.db_path())
        .unwrap()
        .execute(
            "INSERT OR REPLACE INTO wechat_tokens (appid, lease_holder, lease_until) \
             VALUES (?1, 'another-replica', ?2)",
            rusqlite::params![APPID, now + 600],
        )
        .unwrap();
    let started = Instant::now();
    stack.login("wendy").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "the login took {took:?}");
    assert!(metrics(&stack).await.contains(&format!(
        "weauth_login_risk_total{{appid=\"{APPID}\",outcome=\"error_allowed\",rank=\"none\"}} 1"
    )));
}

#[test]
fn risk_out_of_range_refused_at_start_naming_app_and_field() {
    let err = common::start_error(
        &json!({"apps": [{"appid": "wx1", "secret": "s", "kind": "miniprogram",
                          "risk": {"max_rank": 7}}]})
        .to_string(),
    );
    assert!(
        err.contains("WEAUTH_APPS_FILE")
            && err.contains("apps[0] (wx1): risk.max_rank 7 is out of range"),
        "{err}"
    );
}

/// The issuer's environment with an apps file in `dir` instead of the one mini-program's
/// variables: that mini-program, then `other`.
fn with_apps_file(dir: &Path, env: &mut HashMap<String, String>, other: serde_json::Value) {
    let secret = env.remove("WEAUTH_WECHAT_SECRET").unwrap();
    let appid = env.remove("WEAUTH_WECHAT_APPID").unwrap();
    let apps = json!({"apps": [
        {"appid": appid, "secret": secret, "kind": "miniprogram"},
        other,
    ]});
    let path = dir.join("apps.json");
    std::fs::write(&path, apps.to_string()).unwrap();
    env.insert("WEAUTH_APPS_FILE".into(), path.display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_login_exchanges_a_plugin_code_for_an_openpid_user_of_its_own() {
    let plugin = MockPlugin::test_plugin();
    let cfg = MockConfig {
        plugins: vec![plugin.clone()],
        ..Default::default()
    };
    let (plugin_appid, plugin_secret) = (plugin.appid.clone(), plugin.secret.clone());
    let stack = Stack::process_prepared(
        cfg,
        move |_, dir, env| {
            let plugin = json!({"appid": plugin_appid, "secret": plugin_secret, "kind": "plugin"});
            with_apps_file(dir, env, plugin);
            env.insert("WEAUTH_WECHAT_RETRIES".into(), "0".into());
        },
        &[],
    )
    .await;
    let code = stack.mock.plugin_login(&plugin.appid, "pat");
    let login = json!({"code": code, "appid": plugin.appid});
    let (status, body, _) = stack.post("/v1/login", login.clone()).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let claims = payload(&token);
    let openpid = stack.mock.openpid(&plugin.appid, "pat");
    assert_eq!(claims["appid"], plugin.appid.as_str());
    assert_eq!(
        claims["openid"],
        openpid.as_str(),
        "the openpid stands for the openid"
    );
    assert!(claims.get("unionid").is_none(), "{claims}");
    let (status, me, _) = stack.get("/v1/me", Some(&token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["openpid"], openpid.as_str(), "{me}");
    assert!(
        me.get("openid").is_none(),
        "a plugin never sees an openid: {me}"
    );
    // A user of its own: the same person through the host mini-program is another user.
    let host = stack.login("pat").await;
    assert_ne!(
        payload(host["access_token"].as_str().unwrap())["sub"],
        claims["sub"]
    );
    // Single use; a mini-program code is no plugin code; no session_key to decrypt with.
    let (status, body, _) = stack.post("/v1/login", login).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let host_code = stack.mock.login("quinn").code;
    let (status, body, _) = stack
        .post(
            "/v1/login",
            json!({"code": host_code, "appid": plugin.appid}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, body, _) = stack
        .post_auth(
            "/v1/me/decrypt",
            &token,
            Some(json!({"encryptedData": "AAAA", "iv": "AAAA"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // With the plugin's own access token (the mock accepts no other there); the reused code
    // was refused before WeChat.
    assert_eq!(stack.mock.calls("getpluginopenpid"), 2);
    assert!(!stack.issuer.log_text().contains(&openpid));
}

/// Two mini-programs of one Open Platform account: each exchanges its own codes with its own
/// credentials and calls WeChat with its own access token; one person (one unionid) is one
/// user across them; a code of one presented as the other's is a bad code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mini_programs_one_person_each_with_its_own_codes_and_tokens() {
    let second = MockMiniProgram::second();
    let cfg = MockConfig {
        unionid: true,
        mini_programs: vec![second.clone()],
        ..Default::default()
    };
    let (second_appid, second_secret) = (second.appid.clone(), second.secret.clone());
    let stack = Stack::start_prepared(
        cfg,
        move |_, dir, env| {
            let app =
                json!({"appid": second_appid, "secret": second_secret, "kind": "miniprogram"});
            with_apps_file(dir, env, app);
        },
        &[],
    )
    .await;
    let login = |code: String, appid: &str| json!({"code": code, "appid": appid});
    let first = stack.mock.login("ann").code;
    let (status, main, _) = stack.post("/v1/login", login(first, APPID)).await;
    assert_eq!(status, 200, "{main}");
    let via_second = stack.mock.login_to(&second.appid, "ann");
    let (status, other, _) = stack
        .post("/v1/login", login(via_second.code, &second.appid))
        .await;
    assert_eq!(status, 200, "{other}");
    let (main, other) = (
        payload(main["access_token"].as_str().unwrap()),
        payload(other["access_token"].as_str().unwrap()),
    );
    assert_eq!(main["sub"], other["sub"], "one person by unionid");
    assert_eq!(other["appid"], second.appid.as_str());
    assert_eq!(other["openid"], via_second.openid.as_str());
    assert_ne!(main["openid"], other["openid"], "an openid per app");
    // The main app's code with the second app's credentials: WeChat's 40029.
    let code = stack.mock.login("ann").code;
    let (status, body, _) = stack.post("/v1/login", login(code, &second.appid)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // A phone number through the second app: its own access token, which the main app's
    // code does not fit.
    let code = stack.mock.login_to(&second.appid, "ann").code;
    let (status, session, _) = stack.post("/v1/login", login(code, &second.appid)).await;
    assert_eq!(status, 200, "{session}");
    let token = session["access_token"].as_str().unwrap();
    let phone = |code: String| json!({ "code": code });
    let code = stack
        .mock
        .phone_code_for(&second.appid, "ann", "13800000021");
    let (status, body, _) = stack
        .post_auth("/v1/me/phone", token, Some(phone(code)))
        .await;
    assert_eq!(status, 200, "{body}");
    let code = stack.mock.phone_code("ann", "13800000022");
    let (status, body, _) = stack
        .post_auth("/v1/me/phone", token, Some(phone(code)))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // User data of the second app: decrypted with that session's session_key, its watermark
    // the second app's, and vouched for by WeChat to the second app's token; the main app's
    // data is not this session's.
    let decrypt = |encrypted: String, iv: String| json!({"encryptedData": encrypted, "iv": iv, "verify_with_wechat": true});
    let (encrypted, iv) =
        stack
            .mock
            .encrypt_in(&second.appid, "ann", json!({"phoneNumber": "13800138000"}));
    let (status, body, _) = stack
        .post_auth("/v1/me/decrypt", token, Some(decrypt(encrypted, iv)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["watermark"]["appid"], second.appid.as_str());
    assert_eq!(body["wechat_check"]["valid"], true, "{body}");
    let (encrypted, iv) = stack
        .mock
        .encrypt("ann", json!({"phoneNumber": "13800138000"}));
    let (status, body, _) = stack
        .post_auth("/v1/me/decrypt", token, Some(decrypt(encrypted, iv)))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[test]
fn plugin_with_redirect_uris_refused_at_start() {
    let err = common::start_error(
        &json!({"apps": [{"appid": "wxp", "secret": "s", "kind": "plugin",
                          "redirect_uris": ["https://x.example/"]}]})
        .to_string(),
    );
    assert!(
        err.contains(
            "apps[0] (wxp): redirect_uris is only for official_account and website apps, not a plugin"
        ),
        "{err}"
    );
}

/// The apps-file `api_security` of the fixtures' test keys (`mockwechat/fixtures/apisec`): the
/// symmetric key through an environment variable set in `env`, the private key and the
/// platform certificate through files, with the mock's key numbers except `private_key_sn`.
fn api_security_entry(
    env: &mut std::collections::HashMap<String, String>,
    private_key_sn: &str,
) -> serde_json::Value {
    let dir = apisec::fixture_dir();
    let sym = std::fs::read_to_string(dir.join("sym_key.txt")).unwrap();
    env.insert("WX_API_SYM_KEY".into(), sym.trim().to_string());
    json!({
        "sym_key_env": "WX_API_SYM_KEY", "sym_sn": "sym-test-sn",
        "private_key_file": dir.join("app_key.pem"), "private_key_sn": private_key_sn,
        "platform_cert_file": dir.join("platform_cert.pem"), "platform_cert_sn": "platform-test-sn",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_security_calls_encrypted_and_signed_bad_answers_refused_502() {
    let plugin = MockPlugin::test_plugin();
    let cfg = MockConfig {
        plugins: vec![plugin.clone()],
        api_security: vec![
            MockApiSecurity::test_keys(APPID),
            MockApiSecurity::test_keys(&plugin.appid),
        ],
        ..Default::default()
    };
    let (plugin_appid, plugin_secret) = (plugin.appid.clone(), plugin.secret.clone());
    let stack = Stack::process_prepared(
        cfg,
        move |_, dir, env| {
            let secret = env.remove("WEAUTH_WECHAT_SECRET").unwrap();
            let appid = env.remove("WEAUTH_WECHAT_APPID").unwrap();
            let keys = api_security_entry(env, "app-test-sn");
            let apps = json!({"apps": [
                {"appid": appid, "secret": secret, "kind": "miniprogram",
                 "risk": {"max_rank": 2, "on_error": "deny"}, "api_security": keys},
                {"appid": plugin_appid, "secret": plugin_secret, "kind": "plugin",
                 "api_security": keys},
            ]});
            let path = dir.join("apps.json");
            std::fs::write(&path, apps.to_string()).unwrap();
            env.insert("WEAUTH_APPS_FILE".into(), path.display().to_string());
            env.insert("WEAUTH_WECHAT_RETRIES".into(), "0".into());
        },
        &[],
    )
    .await;

    // Risk control over the secured call: the verified answer decides.
    stack.mock.set_risk_rank("rita", 3);
    let code = stack.mock.login("rita").code;
    let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("user_risky")),
        "{body}"
    );
    let login = stack.login("sam").await;
    let token = login["access_token"].as_str().unwrap().to_string();
    assert_eq!(stack.mock.calls("getuserriskrank"), 2);
    assert_eq!(
        stack.mock.secured_calls("getuserriskrank"),
        2,
        "every getuserriskrank call arrived encrypted and signed and passed WeChat's checks"
    );
    // What WeChat decrypted is the call's parameters (no access_token, no security fields).
    let query = stack.mock.last_risk_query().unwrap();
    assert_eq!(query["openid"], stack.mock.openid("sam"), "{query}");
    assert_eq!(query["appid"], APPID, "{query}");
    assert!(query.get("_n").is_none() && query.get("access_token").is_none());

    // The phone number, and checkencryptedmsg.
    let phone = |number: &str| {
        let code = stack.mock.phone_code("sam", number);
        let token = token.clone();
        let stack = &stack;
        async move {
            let (status, body, _) = stack
                .post_auth("/v1/me/phone", &token, Some(json!({ "code": code })))
                .await;
            (status, body)
        }
    };
    let (status, body) = phone("13800138000").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phoneNumber"], "13800138000", "{body}");
    assert_eq!(stack.mock.secured_calls("getuserphonenumber"), 1);
    let (encrypted, iv) = stack
        .mock
        .encrypt("sam", json!({"phoneNumber": "13800138000"}));
    let (status, body, _) = stack
        .post_auth(
            "/v1/me/decrypt",
            &token,
            Some(json!({"encryptedData": encrypted, "iv": iv, "verify_with_wechat": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["wechat_check"]["valid"], true, "{body}");
    assert_eq!(stack.mock.secured_calls("checkencryptedmsg"), 1);

    // Plugin login, with the plugin's own keys.
    let code = stack.mock.plugin_login(&plugin.appid, "pat");
    let (status, body, _) = stack
        .post("/v1/login", json!({"code": code, "appid": plugin.appid}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.mock.secured_calls("getpluginopenpid"), 1);
    // jscode2session does not support it: sent as before.
    assert_eq!(stack.mock.secured_calls("jscode2session"), 0);

    // WeChat rotating its certificate: our number is the deprecated one, still accepted.
    stack.mock.set_api_security_answer(ApiSecAnswer::Rotating);
    let (status, body) = phone("13800138001").await;
    assert_eq!(status, 200, "{body}");

    // Every broken answer is refused with 502 and nothing of it is used.
    let cases = [
        (ApiSecAnswer::BadSignature, "bad_signature"),
        (ApiSecAnswer::WrongSerial, "wrong_serial"),
        (ApiSecAnswer::Stale, "stale"),
        (ApiSecAnswer::BadEncryption, "decrypt"),
        (ApiSecAnswer::Unsigned, "unsigned"),
    ];
    for (i, (mode, check)) in cases.into_iter().enumerate() {
        stack.mock.set_api_security_answer(mode);
        let (status, body) = phone(&format!("1390000000{i}")).await;
        assert_eq!(status, 502, "{mode:?}: {body}");
        assert_eq!(body["error"], "upstream_error", "{mode:?}: {body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("API security check"),
            "{mode:?}: {body}"
        );
        // A risk verdict is never taken from such an answer either (on_error: deny).
        let code = stack.mock.login("tom").code;
        let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
        assert_eq!(status, 502, "{mode:?}: {body}");
        // The failed check is logged.
        stack
            .issuer
            .log_with(&[format!("check=\"{check}\"").as_str()])
            .await;
    }
    assert_eq!(
        stack.count("users"),
        2,
        "sam and pat; rita and tom were never admitted"
    );
    let (_, me, _) = stack.get("/v1/me", Some(&token)).await;
    assert_eq!(
        me["phone"], "13800138001",
        "no refused answer was stored: {me}"
    );
    let (_, metrics, _) = stack.get("/metrics", None).await;
    assert!(
        metrics.as_str().unwrap().contains(&format!(
            "weauth_wechat_app_calls_total{{appid=\"{APPID}\",api=\"getuserphonenumber\",outcome=\"api_security_bad_signature\"}} 1"
        )),
        "{metrics}"
    );
    // No key material, nothing of the users in the log.
    let log = stack.issuer.log_text();
    let sym = std::fs::read_to_string(apisec::fixture_dir().join("sym_key.txt")).unwrap();
    assert!(
        !log.contains(sym.trim()) && !log.contains("PRIVATE KEY"),
        "{log}"
    );
    assert!(!log.contains(&stack.mock.openid("sam")) && !log.contains("1390000000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_security_refused_by_wechat_is_502_naming_the_keys() {
    // The issuer signs with a key number WeChat does not know: WeChat refuses in clear
    // (40234), the issuer answers 502 and tells the operator which setting to check.
    let cfg = MockConfig {
        api_security: vec![MockApiSecurity::test_keys(APPID)],
        ..Default::default()
    };
    let stack = Stack::process_prepared(
        cfg,
        move |_, dir, env| {
            let secret = env.remove("WEAUTH_WECHAT_SECRET").unwrap();
            let appid = env.remove("WEAUTH_WECHAT_APPID").unwrap();
            let keys = api_security_entry(env, "not-the-app-sn");
            let apps = json!({"apps": [{"appid": appid, "secret": secret, "kind": "miniprogram",
                                        "api_security": keys}]});
            let path = dir.join("apps.json");
            std::fs::write(&path, apps.to_string()).unwrap();
            env.insert("WEAUTH_APPS_FILE".into(), path.display().to_string());
        },
        &[],
    )
    .await;
    let login = stack.login("una").await;
    let token = login["access_token"].as_str().unwrap();
    let code = stack.mock.phone_code("una", "13800138000");
    let (status, body, _) = stack
        .post_auth("/v1/me/phone", token, Some(json!({ "code": code })))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("refused the issuer's signed call"),
        "{body}"
    );
    assert_eq!(stack.mock.calls("getuserphonenumber"), 1, "not retried");
    assert_eq!(stack.mock.secured_calls("getuserphonenumber"), 0);
    stack.issuer.log_with(&["40234", "private_key_sn"]).await;
}

#[test]
fn api_security_bad_keys_refused_at_start_naming_app_and_field() {
    let dir = apisec::fixture_dir();
    let good = json!({
        "sym_key_file": dir.join("sym_key.txt"), "sym_sn": "s1",
        "private_key_file": dir.join("app_key.pem"), "private_key_sn": "a1",
        "platform_cert_file": dir.join("platform_cert.pem"), "platform_cert_sn": "p1",
    });
    let with = |change: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut keys = good.as_object().unwrap().clone();
        change(&mut keys);
        json!({"apps": [{"appid": "wx1", "secret": "s", "kind": "miniprogram",
                         "api_security": keys}]})
        .to_string()
    };
    let cases: [(String, &str); 4] = [
        (
            with(&|k| {
                k.remove("sym_key_file");
                k.insert("sym_key".into(), json!("aGVsbG8="));
            }),
            "apps[0] (wx1): api_security.sym_key: keys are never written in the apps file",
        ),
        (
            with(&|k| {
                k.insert(
                    "private_key_file".into(),
                    json!(dir.join("platform_cert.pem")),
                );
            }),
            "apps[0] (wx1): api_security.private_key_file",
        ),
        (
            with(&|k| {
                k.insert("platform_cert_file".into(), json!(dir.join("sym_key.txt")));
            }),
            "apps[0] (wx1): api_security.platform_cert_file",
        ),
        (
            with(&|k| {
                k.remove("platform_cert_sn");
            }),
            "apps[0] (wx1): api_security.platform_cert_sn is required",
        ),
    ];
    for (file, expected) in cases {
        let err = common::start_error(&file);
        assert!(
            err.contains("WEAUTH_APPS_FILE") && err.contains(expected),
            "{expected}\n→ {err}"
        );
        // Where the key came from, never what it holds.
        assert!(!err.contains("-----BEGIN") && !err.contains("MII"), "{err}");
    }
}

/// An admin request its client gives up on runs to its end all the same: the connection's
/// future is dropped, not the handler, so no operation is left half-written by a client going
/// away or Envoy's route timeout (a ban between its ban and its revocation, a logout between
/// marking its session and publishing it). Shown with an unban, which waits for the ban's
/// revocation second to pass before lifting (2 s here, the clock put a second back) while its
/// client waits 1 s. Whether the server took the request before the client gave up is read
/// from its 499: on a loaded machine it may not have, and then the client tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_request_abandoned_by_its_client_still_runs_to_its_end() {
    let (stack, clock) = Stack::start_clocked(&[("WEAUTH_LOGIN_RATE", "0")]).await;
    let tokens = stack.login("rowan").await;
    let sub = payload(tokens["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    use weauth_issuer::clock::Clock as _;
    clock.advance_ms(1000 - clock.now_ms().rem_euclid(1000));
    let (status, body, _) = stack
        .post_auth("/v1/admin/ban", common::ADMIN, Some(json!({ "sub": sub })))
        .await;
    assert_eq!(status, 200, "{body}");
    clock.advance_ms(-1000);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1000))
        .build()
        .unwrap();
    let abandoned = "weauth_http_requests_total{route=\"admin\",status=\"499\"}";
    let mut taken = false;
    for _ in 0..3 {
        let answer = impatient
            .post(stack.url("/v1/admin/unban"))
            .bearer_auth(common::ADMIN)
            .json(&json!({ "sub": sub }))
            .send()
            .await;
        assert!(answer.is_err(), "the client gave up: {answer:?}");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) && !taken {
            let (_, metrics, _) = stack.get("/metrics", None).await;
            taken = metrics.as_str().unwrap().contains(abandoned);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if taken {
            break;
        }
    }
    assert!(
        taken,
        "the server never took the unban before its client gave up"
    );
    let started = Instant::now();
    loop {
        let (status, user, _) = stack
            .get(&format!("/v1/admin/user?sub={sub}"), Some(common::ADMIN))
            .await;
        assert_eq!(status, 200, "{user}");
        if user["banned"] == json!(false) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the abandoned unban never lifted the ban: {user}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request whose client goes away before the answer (Envoy's route timeout, a phone losing
/// its network) is still counted: status 499 with its time, not missing from the request
/// counts and the latency histogram — the slowest requests of an incident are those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_abandoned_by_its_client_is_counted_as_499() {
    let stack = Stack::start(&[("WEAUTH_LOGIN_RATE", "0")]).await;
    let code = stack.mock.login("quinn").code;
    stack
        .mock
        .inject("jscode2session", Fault::Delay(Duration::from_secs(5)), 1);
    // 1 s for the server to take the request before the client gives up (300 ms left a
    // loaded machine little room), 4 s more before WeChat answers.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let abandoned = impatient
        .post(stack.url("/v1/login"))
        .json(&json!({ "code": code }))
        .send()
        .await;
    assert!(abandoned.is_err(), "the client gave up");
    let started = Instant::now();
    loop {
        let (_, metrics, _) = stack.get("/metrics", None).await;
        let text = metrics.as_str().unwrap().to_string();
        if text.contains("weauth_http_requests_total{route=\"login\",status=\"499\"} 1") {
            assert!(
                text.contains("weauth_http_request_duration_seconds_count{route=\"login\"} 1"),
                "{text}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the abandoned login was not counted as 499:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `WEAUTH_MAX_IN_FLIGHT`: with every place taken by logins held at a slow WeChat, the next
/// login is answered 503 with `Retry-After` at once — without a WeChat call — instead of piling
/// up; a logout and the probes are not held back; once the held ones finish, logins go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_past_max_in_flight_answered_503_at_once() {
    let stack = Stack::start(&[
        ("WEAUTH_MAX_IN_FLIGHT", "2"),
        ("WEAUTH_LOGIN_RATE", "0"),
        ("WEAUTH_WECHAT_TIMEOUT", "30s"),
    ])
    .await;
    let earlier = stack.login("earlier").await;
    let calls = stack.mock.calls("jscode2session");
    stack.mock.inject(
        "jscode2session",
        weauth_mock_wechat::Fault::Held("peak".into()),
        2,
    );
    let held: Vec<_> = ["held-1", "held-2"]
        .into_iter()
        .map(|user| {
            let code = stack.mock.login(user).code;
            let (http, url) = (stack.http.clone(), stack.url("/v1/login"));
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .json(&json!({ "code": code }))
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    common::until_calls(&stack.mock, "jscode2session", calls + 2).await;
    let code = stack.mock.login("turned-away").code;
    let (status, body, headers) = stack.post("/v1/login", json!({ "code": code })).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        stack.mock.calls("jscode2session"),
        calls + 2,
        "it asked WeChat"
    );
    let metrics = common::metrics_text(&stack.http, &stack.url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"weauth_http_shed_total{route="login"} 1"#),
        "{metrics}"
    );
    // The others exist from the start, at 0 (a rate over a missing series is no data).
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"weauth_http_shed_total{route="refresh"} 0"#),
        "{metrics}"
    );
    // Not held back: the probes, and a logout (a revocation refused under load would leave its
    // tokens working).
    let (status, _, _) = stack.get("/healthz", None).await;
    assert_eq!(status, 200);
    let (status, body, _) = stack
        .post_auth(
            "/v1/logout",
            earlier["access_token"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");

    stack.mock.release("peak");
    for login in held {
        assert_eq!(login.await.unwrap(), 200);
    }
    let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
    assert_eq!(status, 200, "the refused code was not spent: {body}");
}

/// A failure every request meets is logged once per kind and interval, not once per request:
/// WeChat refusing the app's secret wrote an ERROR and a WARN per login, and each request shed
/// at `WEAUTH_MAX_IN_FLIGHT` a WARN — as many lines a second as requests at a peak. The metrics
/// count every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_every_request_meets_is_logged_once_not_per_request() {
    let stack = Stack::process(&[
        ("WEAUTH_MAX_IN_FLIGHT", "1"),
        ("WEAUTH_LOGIN_RATE", "0"),
        ("WEAUTH_WECHAT_TIMEOUT", "30s"),
    ])
    .await;
    const TIMES: usize = 10;
    stack.mock.inject(
        "jscode2session",
        Fault::Errcode {
            errcode: 40125,
            errmsg: "invalid appsecret".into(),
        },
        TIMES as u32,
    );
    for n in 0..TIMES {
        let code = stack.mock.login(&format!("refused-{n}")).code;
        let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
        assert_eq!(status, 502, "{body}");
    }
    let held = stack.held_login("held", "peak").await;
    for _ in 0..TIMES {
        let code = stack.mock.login("shed").code;
        let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
        assert_eq!(status, 503, "{body}");
    }
    stack.mock.release("peak");
    assert_eq!(held.await.unwrap(), 200);
    let metrics = common::metrics_text(&stack.http, &stack.url("/metrics")).await;
    let shed = format!(r#"weauth_http_shed_total{{route="login"}} {TIMES}"#);
    assert!(metrics.lines().any(|l| l == shed), "{metrics}");
    let log = stack
        .issuer
        .log_with(&["WeChat login is misconfigured"])
        .await;
    let lines = |needles: &[&str]| {
        log.lines()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .count()
    };
    // One each, or two if the refusals straddled the 10 s interval on a slow machine.
    let misconfigured = lines(&["WeChat login is misconfigured"]);
    let failed = lines(&["request failed", "status=502"]);
    assert!(misconfigured <= 2, "{misconfigured} lines:\n{log}");
    assert!((1..=2).contains(&failed), "{failed} lines:\n{log}");
    assert_eq!(lines(&["request failed", "status=503"]), 0, "{log}");
}

/// A request with a body takes its place among those under way once the body is read: a
/// client sending its body slowly (up to `WEAUTH_HEADER_TIMEOUT`) holds none meanwhile, or a
/// few such clients kept every place from everyone else at no cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_slowly_holds_no_place_among_the_requests_under_way() {
    use tokio::io::AsyncWriteExt as _;
    let stack = Stack::start(&[("WEAUTH_MAX_IN_FLIGHT", "1"), ("WEAUTH_LOGIN_RATE", "0")]).await;
    let url = stack.url("");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /v1/token/refresh HTTP/1.1\r\nHost: issuer\r\nContent-Type: application/json\r\n\
          Content-Length: 64\r\n\r\n{\"refresh_token\":",
    )
    .await
    .unwrap();
    // The request is under way (its head read, its handler waiting for the body).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let code = stack.mock.login("meanwhile").code;
    let (status, body, _) = stack.post("/v1/login", json!({ "code": code })).await;
    assert_eq!(
        status, 200,
        "a login turned away by a body still on its way: {body}"
    );
    drop(slow);
}
