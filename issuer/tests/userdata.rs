//! Integration tests of the user-data routes (`POST /v1/me/decrypt`, `POST /v1/me/phone`,
//! `GET /v1/me/session`) with the real binary against the mock WeChat: decryption and every
//! refusal (bad base64 and the `+`→space hint, iv length, truncated data, a session_key
//! rotated by a later login, another app's watermark, a stale watermark, rawData signatures),
//! the phone number stored sealed and shown by `/v1/me`, the shared WeChat access token
//! (invalidated and retried once on 40001, 503 when WeChat's token endpoint is down, and two
//! issuer processes on one store fetching it exactly once), and checksession.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{InProcess, Issuer, Stack, APPID};
use serde_json::{json, Value};
use weauth_issuer::clock::SystemClock;
use weauth_mock_wechat::{Fault, MockConfig};

fn token(login: &Value) -> String {
    login["access_token"].as_str().unwrap().to_string()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Logs `user` in and encrypts `data` for them with their (new) session_key.
async fn login_and_encrypt(stack: &Stack, user: &str, data: Value) -> (String, String, String) {
    let login = stack.login(user).await;
    let (encrypted, iv) = stack.mock.encrypt(user, data);
    (token(&login), encrypted, iv)
}

async fn decrypt(stack: &Stack, token: &str, body: Value) -> (u16, Value) {
    let (status, body, _) = stack.post_auth("/v1/me/decrypt", token, Some(body)).await;
    (status, body)
}

fn assert_refused(status: u16, body: &Value, code: &str, relogin: bool) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].as_str().unwrap().len() > 10);
    assert_eq!(body.get("relogin") == Some(&json!(true)), relogin, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_fresh_data_returns_object_with_watermark() {
    let stack = Stack::start(&[]).await;
    let user_info = json!({"nickName": "Alice", "gender": 1, "city": "Shenzhen"});
    let (token, encrypted, iv) = login_and_encrypt(&stack, "alice", user_info).await;
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nickName"], "Alice");
    assert_eq!(body["data"]["city"], "Shenzhen");
    assert_eq!(body["data"]["watermark"]["appid"], APPID);
    assert_eq!(body["raw_data_verified"], false);
    let (_, metrics, _) = stack.get("/metrics", None).await;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("weauth_decrypt_total{outcome=\"ok\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_verify_with_wechat_genuine_then_too_old() {
    let stack = Stack::process(&[]).await;
    let data = json!({"phoneNumber": "13800138000"});
    let (token, encrypted, iv) = login_and_encrypt(&stack, "walt", data).await;
    // Not asked: no WeChat call, no verdict in the answer.
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("wechat_check").is_none(), "{body}");
    assert_eq!(stack.mock.calls("checkencryptedmsg"), 0);
    // Asked: WeChat generated it just now.
    let ask = json!({"encryptedData": encrypted, "iv": iv, "verify_with_wechat": true});
    let (status, body) = decrypt(&stack, &token, ask.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["wechat_check"]["valid"], true, "{body}");
    assert!(
        body["wechat_check"]["create_time"].as_i64().unwrap() > 0,
        "{body}"
    );
    assert_eq!(body["data"]["phoneNumber"], "13800138000");
    assert_eq!(stack.mock.calls("checkencryptedmsg"), 1);
    // Three days and a minute later WeChat no longer vouches for it: valid false, not an error.
    stack
        .mock
        .advance_clock(Duration::from_secs(3 * 86_400 + 60));
    let (status, body) = decrypt(&stack, &token, ask).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["wechat_check"], json!({"valid": false}), "{body}");
    assert!(!stack.issuer.log_text().contains(&encrypted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_whole_wechat_detail_accepted_typo_refused() {
    // Mini-programs often post getUserProfile's `e.detail` as it is.
    let stack = Stack::start(&[]).await;
    let (token, encrypted, iv) =
        login_and_encrypt(&stack, "dora", json!({"nickName": "Dora"})).await;
    let detail = json!({
        "errMsg": "getUserProfile:ok", "cloudID": "c1", "userInfo": {"nickName": "Dora"},
        "encryptedData": encrypted, "iv": iv,
    });
    let (status, body) = decrypt(&stack, &token, detail).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nickName"], "Dora");
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv, "singature": "x"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("singature"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_raw_data_signature_good_verified_bad_refused() {
    let stack = Stack::start(&[]).await;
    let data = json!({"nickName": "Bob"});
    let (token, encrypted, iv) = login_and_encrypt(&stack, "bob", data.clone()).await;
    let raw = data.to_string();
    let signature = stack.mock.sign_raw_data("bob", &raw);
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv, "rawData": raw, "signature": signature}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["raw_data_verified"], true);

    let tampered = json!({"nickName": "Mallory"}).to_string();
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv, "rawData": tampered, "signature": signature}),
    )
    .await;
    assert_refused(status, &body, "invalid_signature", false);

    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv, "rawData": raw}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");

    // The genuine rawData and signature with the first block rewritten through the iv
    // (`{"nickName":"Bob` is exactly 16 bytes): it decrypts to "Eve", which rawData does not
    // say — refused, not answered as verified.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forged = b64.decode(iv.as_str()).unwrap();
    for (i, (bob, eve)) in b"Bob".iter().zip(b"Eve").enumerate() {
        forged[13 + i] ^= bob ^ eve;
    }
    let forged = b64.encode(forged);
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": forged}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nickName"], "Eve", "the forgery took: {body}");
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": forged, "rawData": raw, "signature": signature}),
    )
    .await;
    assert_refused(status, &body, "invalid_signature", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_malformed_input_named_never_500() {
    let stack = Stack::start(&[]).await;
    // Big enough that the base64 surely holds a '+' somewhere (retry a few times otherwise).
    let mut found = None;
    for _ in 0..20 {
        let data = json!({"padding": "x".repeat(200), "n": rand::random::<u64>()});
        let (token, encrypted, iv) = login_and_encrypt(&stack, "carol", data).await;
        if encrypted.contains('+') {
            found = Some((token, encrypted, iv));
            break;
        }
    }
    let (token, encrypted, iv) = found.expect("some ciphertext with a '+'");

    // '+' turned into a space by form encoding.
    let spaced = encrypted.replace('+', " ");
    let (status, body) = decrypt(&stack, &token, json!({"encryptedData": spaced, "iv": iv})).await;
    assert_refused(status, &body, "invalid_base64", false);
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("'+'"), "{description}");
    assert!(description.contains("encryptedData"), "{description}");

    // Not base64 at all.
    let (status, body) = decrypt(&stack, &token, json!({"encryptedData": "%%%", "iv": iv})).await;
    assert_refused(status, &body, "invalid_base64", false);
    assert!(!body["error_description"].as_str().unwrap().contains("'+'"));

    // iv of 8 bytes.
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": "AAAAAAAAAAA="}),
    )
    .await;
    assert_refused(status, &body, "invalid_iv_length", false);

    // Truncated ciphertext (not a whole number of blocks).
    let truncated = base64::engine::general_purpose::STANDARD.encode([7u8; 20]);
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": truncated, "iv": iv}),
    )
    .await;
    assert_refused(status, &body, "invalid_encrypted_data_length", false);

    // Missing member, unknown member.
    let (status, body) = decrypt(&stack, &token, json!({"encryptedData": encrypted})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv, "extra": 1}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // Without a bearer token.
    let (status, _, _) = stack
        .post(
            "/v1/me/decrypt",
            json!({"encryptedData": encrypted, "iv": iv}),
        )
        .await;
    assert_eq!(status, 401);

    // The original still decrypts.
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_old_session_after_second_login_session_key_mismatch_relogin() {
    let stack = Stack::start(&[]).await;
    let first = stack.login("dave").await;
    let second = stack.login("dave").await; // wx.login again: WeChat rotates the session_key
    let (encrypted, iv) = stack.mock.encrypt("dave", json!({"nickName": "Dave"}));
    let (status, body) = decrypt(
        &stack,
        &token(&first),
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_refused(status, &body, "session_key_mismatch", true);
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("wx.login"));
    let (status, body) = decrypt(
        &stack,
        &token(&second),
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nickName"], "Dave");
    let (_, metrics, _) = stack.get("/metrics", None).await;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains("weauth_decrypt_total{outcome=\"session_key_mismatch\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_watermark_of_another_app_refused() {
    let stack = Stack::start(&[]).await;
    let login = stack.login("erin").await;
    let openid = stack.mock.openid("erin");
    let session_key = stack.mock.session_key(&openid).unwrap();
    let iv = "AAECAwQFBgcICQoLDA0ODw==";
    let encrypted = weauth_wxdata::encrypt(
        &session_key,
        iv,
        &json!({"nickName": "Erin"}),
        "wxffffffffffffffff",
        unix_now(),
    )
    .unwrap();
    let (status, body) = decrypt(
        &stack,
        &token(&login),
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_refused(status, &body, "watermark_appid_mismatch", false);
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("wxffffffffffffffff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_max_age_refuses_old_watermark_accepts_fresh() {
    let stack = Stack::start(&[("WEAUTH_DECRYPT_MAX_AGE", "10m")]).await;
    let login = stack.login("frank").await;
    let session_key = stack.mock.session_key(&stack.mock.openid("frank")).unwrap();
    let iv = "AAECAwQFBgcICQoLDA0ODw==";
    let old =
        weauth_wxdata::encrypt(&session_key, iv, &json!({}), APPID, unix_now() - 3600).unwrap();
    let (status, body) = decrypt(
        &stack,
        &token(&login),
        json!({"encryptedData": old, "iv": iv}),
    )
    .await;
    assert_refused(status, &body, "watermark_expired", false);
    let fresh =
        weauth_wxdata::encrypt(&session_key, iv, &json!({}), APPID, unix_now() - 60).unwrap();
    let (status, body) = decrypt(
        &stack,
        &token(&login),
        json!({"encryptedData": fresh, "iv": iv}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn phone(stack: &Stack, issuer: Option<&Issuer>, token: &str, code: &str) -> (u16, Value) {
    let url = match issuer {
        Some(issuer) => issuer.url("/v1/me/phone"),
        None => stack.url("/v1/me/phone"),
    };
    let (status, body, _) = phone_task(stack, url, token, code).await.unwrap();
    (status, body)
}

/// A phone code is redeemed once at WeChat; sent again by its user (the first answer lost on
/// the way back) it gets the stored answer with no second WeChat call. Once a later code has
/// replaced the number, the first code is refused as WeChat refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_stored_sealed_and_shown_by_me_code_sent_again_answered_from_the_store() {
    let stack = Stack::process(&[]).await;
    let token = token(&stack.login("grace").await);
    let code = stack.mock.phone_code("grace", "13800138000");
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phoneNumber"], "13800138000");
    assert_eq!(body["purePhoneNumber"], "13800138000");
    assert_eq!(body["countryCode"], "86");
    let (status, me, _) = stack.get("/v1/me", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(me["phone"], "13800138000");
    // Sealed at rest: the number is nowhere in the users table.
    let conn = rusqlite::Connection::open(stack.db_path()).unwrap();
    let stored: String = conn
        .query_row("SELECT phone FROM users WHERE phone IS NOT NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(!stored.contains("13800138000"));
    // Never logged.
    assert!(!stack.issuer.log_text().contains("13800138000"));

    let (status, again) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, body);
    assert_eq!(stack.mock.calls("getuserphonenumber"), 1);
    assert_eq!(stack.mock.calls("stable_token"), 1);

    let newer = stack.mock.phone_code("grace", "13800138001");
    let (status, body) = phone(&stack, None, &token, &newer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phoneNumber"], "13800138001");
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        stack.get("/v1/me", Some(&token)).await.1["phone"],
        "13800138001"
    );
}

/// A stored phone number no key opens (a data key dropped too early, a damaged row) does not
/// keep the user from binding one: the new number replaces it (it answered 500, the stored
/// value read for a code sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_stored_unreadable_is_replaced_by_a_number_bound_again() {
    let stack = Stack::start(&[]).await;
    let token = token(&stack.login("hana").await);
    let sub = common::payload(&token)["sub"].as_str().unwrap().to_string();
    let conn = rusqlite::Connection::open(stack.db_path()).unwrap();
    let damaged = base64::engine::general_purpose::STANDARD.encode([1u8; 40]);
    conn.execute(
        "UPDATE users SET phone = ?1 WHERE sub = ?2",
        [damaged.as_str(), sub.as_str()],
    )
    .unwrap();
    let code = stack.mock.phone_code("hana", "13800138004");
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 200, "{body}");
    let (status, me, _) = stack.get("/v1/me", Some(&token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["phone"], "13800138004");
}

/// A phone code's request, sent to `url` in a task of its own.
fn phone_task(
    stack: &Stack,
    url: String,
    token: &str,
    code: &str,
) -> tokio::task::JoinHandle<(u16, Value, reqwest::header::HeaderMap)> {
    let (http, token, code) = (stack.http.clone(), token.to_string(), code.to_string());
    tokio::spawn(async move {
        let response = http
            .post(url)
            .bearer_auth(token)
            .json(&json!({ "code": code }));
        common::split(response.send().await.unwrap()).await
    })
}

/// The same phone code sent again while its first request is at WeChat (a client's retry
/// racing its first try), to the same replica: the second waits for the first, then answers
/// with what the first stored — one WeChat call. Both ways the first can be under way: held
/// before WeChat redeems the code, and redeemed with WeChat's answer still on its way back
/// (where the second, at WeChat by then, got "code used" and a 400 before the replica held
/// its requests with one code apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_code_sent_again_while_at_wechat_waits_for_the_first_same_answer() {
    let stack = Stack::start(&[]).await;
    let token = token(&stack.login("gina").await);
    for (n, (fault, gate, number)) in [
        (Fault::Held("first".into()), "first", "13800138003"),
        (
            Fault::ServedThen(Box::new(Fault::Held("second".into()))),
            "second",
            "13800138013",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let calls = stack.mock.calls("getuserphonenumber");
        let code = stack.mock.phone_code("gina", number);
        stack.mock.inject("getuserphonenumber", fault, 1);
        let url = stack.url("/v1/me/phone");
        let first = phone_task(&stack, url.clone(), &token, &code);
        common::until_calls(&stack.mock, "getuserphonenumber", calls + 1).await;
        let again = phone_task(&stack, url, &token, &code);
        // Time for the second to reach the replica, where it waits for the first. (Later, it
        // finds the first's answer stored: the same outcome, checked the same way.)
        tokio::time::sleep(Duration::from_millis(200)).await;
        stack.mock.release(gate);
        let (status, first, _) = first.await.unwrap();
        assert_eq!(status, 200, "case {n}: {first}");
        let (status, again, _) = again.await.unwrap();
        assert_eq!(status, 200, "case {n}: {again}");
        assert_eq!(first, again, "case {n}");
        assert_eq!(first["purePhoneNumber"], number, "case {n}");
        assert_eq!(
            stack.mock.calls("getuserphonenumber"),
            calls + 1,
            "case {n}: the code sent again reached WeChat"
        );
    }
}

/// The same phone code at two replicas at once: the first one's request held before WeChat
/// redeems the code, the other's redeems it and stores the number; the first, refused by
/// WeChat as a code used after that, finds that answer stored and gets it too. (Refused
/// before the other has stored its answer, it gets the 400 of a code used: nothing tells a
/// replica that a request is under way at another.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_code_sent_at_two_replicas_at_once_both_get_the_answer() {
    let stack = Stack::start(&[]).await;
    let other = InProcess::start(stack.issuer.env(), Arc::new(SystemClock)).await;
    let token = token(&stack.login("gina").await);
    let code = stack.mock.phone_code("gina", "13800138003");
    stack
        .mock
        .inject("getuserphonenumber", Fault::Held("first".into()), 1);
    let first = phone_task(&stack, stack.url("/v1/me/phone"), &token, &code);
    common::until_calls(&stack.mock, "getuserphonenumber", 1).await;
    let (status, second, _) = phone_task(
        &stack,
        format!("http://{}/v1/me/phone", other.addr),
        &token,
        &code,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{second}");
    stack.mock.release("first");
    let (status, first, _) = first.await.unwrap();
    assert_eq!(status, 200, "{first}");
    assert_eq!(first, second);
    assert_eq!(
        stack.mock.calls("getuserphonenumber"),
        2,
        "both reached WeChat"
    );
    other.stop().await;
}

/// `getPhoneNumber`'s `e.detail` as WeChat hands it over — `errMsg`, `code`,
/// `encryptedData`, `iv`, `cloudID`, and `errno` (documented for failures, reported beside a
/// code) — posted whole to either route, as the client does and API.md allows: both used to
/// refuse it as having an unknown field (`iv` on the phone route, `code` on decrypt, `errno`
/// on both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_phone_number_e_detail_posted_whole_to_either_route() {
    let stack = Stack::start(&[]).await;
    let (token, encrypted, iv) =
        login_and_encrypt(&stack, "ivan", json!({"phoneNumber": "13700000007"})).await;
    let code = stack.mock.phone_code("ivan", "13700000007");
    let detail = json!({
        "errMsg": "getPhoneNumber:ok",
        "code": code,
        "encryptedData": encrypted,
        "iv": iv,
        "cloudID": "cloud-id",
        "errno": 0,
    });
    let (status, body, _) = stack
        .post_auth("/v1/me/phone", &token, Some(detail.clone()))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phoneNumber"], "13700000007");
    let (status, body) = decrypt(&stack, &token, detail).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["phoneNumber"], "13700000007");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_code_of_another_user_refused_nothing_stored() {
    // The issuer sends the caller's openid with the code, so WeChat refuses a phone code
    // obtained by someone else (WxJava#4076): mallory cannot attach grace's number.
    let stack = Stack::start(&[]).await;
    let mallory = token(&stack.login("mallory").await);
    let code = stack.mock.phone_code("grace", "13800138000");
    let (status, body) = phone(&stack, None, &mallory, &code).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not issued to this user"),
        "{body}"
    );
    let (status, me, _) = stack.get("/v1/me", Some(&mallory)).await;
    assert_eq!(status, 200);
    assert!(me.get("phone").is_none_or(Value::is_null), "{me}");
    assert_eq!(stack.count("users WHERE phone IS NOT NULL"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_40001_on_cached_token_invalidated_refetched_retried_once() {
    let (stack, clock) = Stack::start_clocked(&[]).await;
    let token = token(&stack.login("heidi").await);
    let code = stack.mock.phone_code("heidi", "13900000001");
    assert_eq!(phone(&stack, None, &token, &code).await.0, 200);
    assert_eq!(stack.mock.calls("stable_token"), 1);
    let db = rusqlite::Connection::open(stack.db_path()).unwrap();
    let hash = |db: &rusqlite::Connection| -> Option<String> {
        db.query_row("SELECT hash FROM wechat_tokens", [], |r| r.get(0))
            .unwrap()
    };
    let before = hash(&db).unwrap();

    // WeChat says the cached token is no longer valid, once.
    stack.mock.inject(
        "getuserphonenumber",
        Fault::Errcode {
            errcode: 40001,
            errmsg: "invalid credential, access_token is invalid or not latest".into(),
        },
        1,
    );
    let code = stack.mock.phone_code("heidi", "13900000002");
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phoneNumber"], "13900000002");
    assert_eq!(stack.mock.calls("getuserphonenumber"), 3);
    // stable_token returned the refused token again, so the issuer forced a new one.
    assert_eq!(stack.mock.calls("stable_token"), 3);
    assert_ne!(hash(&db).unwrap(), before);

    // The new token is cached: no more stable_token calls.
    let code = stack.mock.phone_code("heidi", "13900000003");
    assert_eq!(phone(&stack, None, &token, &code).await.0, 200);
    assert_eq!(stack.mock.calls("stable_token"), 3);

    // Refused again at once: stable_token still answers that token, and a refresh was forced
    // moments ago — no second force (WeChat allows 20 a day): an error, not a loop.
    let refuse = |times| {
        stack.mock.inject(
            "getuserphonenumber",
            Fault::Errcode {
                errcode: 40001,
                errmsg: "invalid credential".into(),
            },
            times,
        );
    };
    refuse(1);
    let code = stack.mock.phone_code("heidi", "13900000004");
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(stack.mock.calls("getuserphonenumber"), 5);
    assert_eq!(stack.mock.calls("stable_token"), 4, "asked, not forced");
    let (_, metrics, _) = stack.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(metrics.contains("weauth_wechat_token_invalidations_total{errcode=\"40001\"} 2"));
    assert!(metrics.contains(&format!(
        "weauth_wechat_token_refreshes_total{{appid=\"{APPID}\",outcome=\"force_withheld\"}} 1"
    )));

    // Five minutes later (the issuer's clock) it forces again, but WeChat's clock says the last
    // force was seconds ago, and a force within 30 s answers the same token: not stored.
    clock.advance_secs(301);
    refuse(1);
    let code = stack.mock.phone_code("heidi", "13900000005");
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 502, "{body}");
    // The invalidated token is fetched again (not known refused yet), refused, then asked for
    // once more and forced.
    assert_eq!(
        stack.mock.calls("stable_token"),
        7,
        "fetched, asked, then forced"
    );
    assert_eq!(
        hash(&db),
        None,
        "the forced answer was the refused token: not stored"
    );

    // Once WeChat's 30 s have passed too, a force refreshes and the call goes through.
    stack.mock.advance_clock(Duration::from_secs(31));
    clock.advance_secs(301);
    refuse(1);
    let code = stack.mock.phone_code("heidi", "13900000006");
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 200, "{body}");
    assert!(hash(&db).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_token_endpoint_down_503_with_clear_error() {
    let stack = Stack::start(&[]).await;
    let token = token(&stack.login("ivan").await);
    stack.mock.inject("stable_token", Fault::Status(502), 10);
    let code = stack.mock.phone_code("ivan", "13700000000");
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("access token"));
    assert_eq!(stack.mock.calls("getuserphonenumber"), 0);
}

/// WeChat refusing the issuer's token request for good — its IP not in the app's whitelist
/// (40164), the daily quota spent (45009) — is a 502 without `Retry-After`, not "503, retry in
/// a second", and does not hand the client WeChat's errmsg (which names the issuer's own
/// address); the log names the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_token_endpoint_refusal_502_without_wechat_errmsg() {
    let stack = Stack::process(&[]).await;
    let token = token(&stack.login("judy").await);
    for errcode in [40164, 45009] {
        stack.mock.inject(
            "stable_token",
            Fault::Errcode {
                errcode,
                errmsg: mockwechat_errmsg(errcode),
            },
            1,
        );
        let code = stack.mock.phone_code("judy", "13700000008");
        let (status, body, headers) = stack
            .post_auth("/v1/me/phone", &token, Some(json!({ "code": code })))
            .await;
        assert_eq!(status, 502, "{errcode}: {body}");
        assert_eq!(body["error"], "upstream_error", "{body}");
        assert!(headers.get("retry-after").is_none(), "{headers:?}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(&errcode.to_string()), "{body}");
        assert!(!description.contains("203.0.113.7"), "{body}");
    }
    // WeChat's rate limit on the token endpoint (45011, "retry next minute"): 429 with
    // Retry-After 60, not a 502 (nor "503, retry in 1 s").
    stack.mock.inject(
        "stable_token",
        Fault::Errcode {
            errcode: 45011,
            errmsg: mockwechat_errmsg(45011),
        },
        1,
    );
    let code = stack.mock.phone_code("judy", "13700000008");
    let (status, body, headers) = stack
        .post_auth("/v1/me/phone", &token, Some(json!({ "code": code })))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("60")
    );
    let log = stack.issuer.log_text();
    assert!(
        log.lines()
            .any(|line| line.contains("cannot get a WeChat access token") && line.contains(APPID)),
        "{log}"
    );
    assert_eq!(stack.mock.calls("getuserphonenumber"), 0);
}

/// 48001 from `getuserphonenumber` is the app lacking the API (WeChat's "api unauthorized":
/// not enabled for the app, or its type does not allow it), not the user refusing a scope: a
/// 502 `upstream_error` naming the API as not granted, logged, not a 403 blaming the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_api_not_granted_to_the_app_is_502_not_a_users_refusal() {
    let stack = Stack::process(&[]).await;
    let token = token(&stack.login("kyle").await);
    stack.mock.inject(
        "getuserphonenumber",
        Fault::Errcode {
            errcode: 48001,
            errmsg: mockwechat_errmsg(48001),
        },
        1,
    );
    let code = stack.mock.phone_code("kyle", "13700000009");
    let (status, body, _) = stack
        .post_auth("/v1/me/phone", &token, Some(json!({ "code": code })))
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_error", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not granted the issuer's app this API"),
        "{body}"
    );
    // The issuer's log is written apart from the answer: read until the line is there.
    let started = std::time::Instant::now();
    loop {
        let log = stack.issuer.log_text();
        if log
            .lines()
            .any(|line| line.contains("48001") && line.contains("console"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no log line names the API as not granted:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mockwechat_errmsg(errcode: i64) -> String {
    weauth_mock_wechat::state::default_errmsg(errcode).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_one_store_concurrent_phone_no_40001_one_stable_token() {
    // Zero overlap: a token replaced by anyone would fail at once with 40001.
    let cfg = MockConfig {
        token_overlap: Duration::ZERO,
        ..Default::default()
    };
    // Two processes, as two replicas are (and their logs are read below).
    let stack = Stack::process_with(cfg, &[]).await;
    let env = stack.issuer.env().clone();
    let second = tokio::task::spawn_blocking(move || Issuer::start(&env))
        .await
        .unwrap();
    let users = ["u0", "u1", "u2", "u3"];
    let mut tokens = Vec::new();
    for user in users {
        tokens.push(token(&stack.login(user).await));
    }
    let mut tasks = Vec::new();
    for i in 0..20 {
        let user = users[i % users.len()];
        let code = stack.mock.phone_code(user, &format!("1350000{i:04}"));
        let token = tokens[i % users.len()].clone();
        let url = if i % 2 == 0 {
            stack.url("/v1/me/phone")
        } else {
            second.url("/v1/me/phone")
        };
        let http = stack.http.clone();
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "code": code }))
                .send()
                .await
                .unwrap();
            common::split(response).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, body, _) = task.await.unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body["phoneNumber"], format!("1350000{i:04}"));
    }
    assert_eq!(stack.mock.calls("stable_token"), 1);
    assert_eq!(stack.mock.calls("getuserphonenumber"), 20);
    // WeChat never refused a token (each refusal would be counted, even when hidden by the
    // retry), and nobody logged one.
    for (url, log) in [
        (stack.url("/metrics"), stack.issuer.log_text()),
        (second.url("/metrics"), second.log_text()),
    ] {
        let text = common::metrics_text(&stack.http, &url).await;
        assert!(
            text.contains("weauth_phone_total{outcome=\"ok\"} 10"),
            "{text}"
        );
        assert!(
            !text.contains("weauth_wechat_token_invalidations_total{"),
            "{text}"
        );
        assert!(!log.contains("40001"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksession_current_key_valid_old_key_invalid() {
    let stack = Stack::start(&[]).await;
    let first = token(&stack.login("judy").await);
    let (status, body, _) = stack.get("/v1/me/session", Some(&first)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], true);
    let second = token(&stack.login("judy").await);
    let (status, body, _) = stack.get("/v1/me/session", Some(&first)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], false);
    let (status, body, _) = stack.get("/v1/me/session", Some(&second)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], true);
    assert_eq!(stack.mock.calls("checksession"), 3);
    assert_eq!(stack.mock.calls("stable_token"), 1);
    let (status, _, _) = stack.get("/v1/me/session", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_session_key_of_wrong_length_invalid_key_length_relogin() {
    let stack = Stack::start(&[]).await;
    // WeChat (here: a fault) hands out a session_key of 5 bytes; login still works.
    let login = stack.mock.login("kim");
    let body = json!({"openid": login.openid, "session_key": "c2hvcnQ="}).to_string();
    stack.mock.inject("jscode2session", Fault::Body(body), 1);
    let (status, tokens, _) = stack.post("/v1/login", json!({ "code": login.code })).await;
    assert_eq!(status, 200, "{tokens}");
    let (encrypted, iv) = stack.mock.encrypt("kim", json!({"nickName": "Kim"}));
    let (status, body) = decrypt(
        &stack,
        &token(&tokens),
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_refused(status, &body, "invalid_key_length", true);
}

/// The calls to WeChat one user can make the issuer do are limited per user
/// (`WEAUTH_USER_WECHAT_RATE`), one bucket across the three routes that make one: past it a
/// route answers 429 with `Retry-After` before any call to WeChat. Another user, and a
/// decryption that does not ask WeChat, are not limited; the bucket refills with time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_calls_limited_per_user_across_routes() {
    let (stack, clock) = Stack::start_clocked(&[
        ("WEAUTH_USER_WECHAT_RATE", "1"),
        ("WEAUTH_USER_WECHAT_BURST", "3"),
    ])
    .await;
    let (mallory, encrypted, iv) =
        login_and_encrypt(&stack, "mallory", json!({"phoneNumber": "13800000001"})).await;
    let verify = json!({"encryptedData": encrypted, "iv": iv, "verify_with_wechat": true});
    let (status, body, _) = stack.get("/v1/me/session", Some(&mallory)).await;
    assert_eq!(status, 200, "{body}");
    let code = stack.mock.phone_code("mallory", "13800000001");
    assert_eq!(phone(&stack, None, &mallory, &code).await.0, 200);
    let (status, body) = decrypt(&stack, &mallory, verify.clone()).await;
    assert_eq!(status, 200, "{body}");

    let (status, body, headers) = stack.get("/v1/me/session", Some(&mallory)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(headers["retry-after"], "60");
    let code = stack.mock.phone_code("mallory", "13800000002");
    let (status, body) = phone(&stack, None, &mallory, &code).await;
    assert_eq!(status, 429, "{body}");
    let (status, body) = decrypt(&stack, &mallory, verify.clone()).await;
    assert_eq!(status, 429, "{body}");
    let wechat_calls = || {
        ["checksession", "getuserphonenumber", "checkencryptedmsg"].map(|api| stack.mock.calls(api))
    };
    assert_eq!(
        wechat_calls(),
        [1, 1, 1],
        "no call to WeChat past the limit"
    );

    let (status, body) = decrypt(
        &stack,
        &mallory,
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_eq!(status, 200, "decryption alone calls no one: {body}");
    let other = token(&stack.login("olivia").await);
    let (status, body, _) = stack.get("/v1/me/session", Some(&other)).await;
    assert_eq!(status, 200, "another user's bucket: {body}");

    clock.advance_secs(60);
    let (status, body, _) = stack.get("/v1/me/session", Some(&mallory)).await;
    assert_eq!(status, 200, "refilled: {body}");
    assert_eq!(wechat_calls(), [3, 1, 1]);
}

/// A decryption refused on its plaintext — its padding, its JSON, its watermark — says
/// something of it under an iv the client chose: unlimited, such answers are a padding oracle
/// that forges any data. They spend the user's allowance (`WEAUTH_USER_WECHAT_RATE`); past it
/// the answer is 429, without the refusal's code. Refusals decided on the input alone (base64,
/// lengths), genuine data and another user are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_refusals_on_the_plaintext_limited_per_user() {
    let stack = Stack::start(&[
        ("WEAUTH_USER_WECHAT_RATE", "1"),
        ("WEAUTH_USER_WECHAT_BURST", "3"),
    ])
    .await;
    let (token, encrypted, iv) =
        login_and_encrypt(&stack, "trudy", json!({"nickName": "Trudy"})).await;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let chosen = |n: u8| json!({"encryptedData": b64(&[n; 32]), "iv": b64(&[n ^ 0x5a; 16])});
    let on_plaintext = [
        "session_key_mismatch",
        "not_json",
        "watermark_missing",
        "watermark_appid_mismatch",
    ];
    for n in 0..3 {
        let (status, body) = decrypt(&stack, &token, chosen(n)).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            on_plaintext.contains(&body["error"].as_str().unwrap_or("")),
            "{body}"
        );
    }
    let (status, body) = decrypt(&stack, &token, chosen(3)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let (status, body) = decrypt(&stack, &token, json!({"encryptedData": "%%%", "iv": iv})).await;
    assert_refused(status, &body, "invalid_base64", false);
    let (status, body) = decrypt(
        &stack,
        &token,
        json!({"encryptedData": encrypted, "iv": iv}),
    )
    .await;
    assert_eq!(status, 200, "genuine data: {body}");
    let (other, _, _) = login_and_encrypt(&stack, "uma", json!({"nickName": "Uma"})).await;
    let (status, body) = decrypt(&stack, &other, chosen(4)).await;
    assert_eq!(status, 400, "another user's allowance: {body}");
}

/// A phone code is spent when WeChat serves the call: a retry after a lost answer meets "code
/// already used", which is answered as the lost answer's failure (502: retry), not 400
/// `invalid_grant` (`wechat::http::with_retry`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_retry_after_a_lost_answer_is_not_a_bad_code() {
    let stack = Stack::start(&[("WEAUTH_WECHAT_RETRIES", "1")]).await;
    let token = token(&stack.login("nina").await);
    let code = stack.mock.phone_code("nina", "13800000009");
    stack.mock.inject(
        "getuserphonenumber",
        Fault::ServedThen(Box::new(Fault::Status(502))),
        1,
    );
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
    assert_eq!(stack.mock.calls("getuserphonenumber"), 2);
}

/// The same when the retry after the lost answer meets a refused access token: the round with
/// a new token (`call_for`) finds the code spent, still the lost answer's echo (it answered
/// 400 `invalid_grant`: "this code is bad").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_retry_after_a_lost_answer_and_a_refused_token_is_not_a_bad_code() {
    let stack = Stack::start(&[("WEAUTH_WECHAT_RETRIES", "1")]).await;
    let token = token(&stack.login("nora").await);
    let code = stack.mock.phone_code("nora", "13800000019");
    stack.mock.inject(
        "getuserphonenumber",
        Fault::ServedThen(Box::new(Fault::Status(502))),
        1,
    );
    stack.mock.inject(
        "getuserphonenumber",
        Fault::Errcode {
            errcode: 40001,
            errmsg: "invalid credential, access_token is invalid or not latest".into(),
        },
        1,
    );
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
    assert_eq!(
        stack.mock.calls("getuserphonenumber"),
        3,
        "lost, refused token, then the code found spent with a new token"
    );
}

/// An errcode the issuer has no meaning for is a 502 "unusable answer" to the client, and the
/// issuer's log line of it names the errcode (it said only "unusable answer").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_unknown_errcode_502_named_in_the_log() {
    let stack = Stack::process(&[]).await;
    let token = token(&stack.login("oscar").await);
    let code = stack.mock.phone_code("oscar", "13800000010");
    stack.mock.inject(
        "getuserphonenumber",
        Fault::Errcode {
            errcode: 40097,
            errmsg: "invalid args".into(),
        },
        1,
    );
    let (status, body) = phone(&stack, None, &token, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
    assert!(!body.to_string().contains("40097"), "{body}");
    stack.issuer.log_with(&["request failed", "40097"]).await;
}

/// Rotating the data key (docs/CONFIGURATION.md, `WEAUTH_DATA_KEY_PREVIOUS`): restarted with a
/// new `WEAUTH_DATA_KEY` and the old one listed as previous, the issuer opens what the old key
/// sealed — its signing key (it starts, and the tokens it issued before still work), a
/// session's session_key, a phone number and the answer kept with it — and seals what it
/// writes from then on under the new key alone. `data-key reseal` then seals the phone number
/// again under the new key and names the signing key still under the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_key_rotated_old_values_open_and_new_ones_are_sealed_under_the_new_key() {
    use weauth_issuer::secrets::DataKey;
    const OLD: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
    const NEW: &[u8; 32] = b"fedcba9876543210fedcba9876543210";
    let b64 = |key: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(key);
    let mut stack = Stack::start(&[("WEAUTH_DATA_KEY", &b64(OLD))]).await;
    let (rita, encrypted, iv) =
        login_and_encrypt(&stack, "rita", json!({"nickName": "Rita"})).await;
    let code = stack.mock.phone_code("rita", "13800138002");
    let (status, answer) = phone(&stack, None, &rita, &code).await;
    assert_eq!(status, 200, "{answer}");

    let env = stack.issuer.env_mut();
    env.insert("WEAUTH_DATA_KEY".into(), b64(NEW));
    env.insert("WEAUTH_DATA_KEY_PREVIOUS".into(), b64(OLD));
    stack.restart().await;
    let (status, body) =
        decrypt(&stack, &rita, json!({"encryptedData": encrypted, "iv": iv})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["nickName"], "Rita");
    let (status, me, _) = stack.get("/v1/me", Some(&rita)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["phone"], "13800138002");
    assert_eq!(phone(&stack, None, &rita, &code).await, (200, answer));

    let later = token(&stack.login("sam").await);
    let sid = common::payload(&later)["sid"].as_str().unwrap().to_string();
    let conn = rusqlite::Connection::open(stack.db_path()).unwrap();
    let sealed: Vec<u8> = conn
        .query_row(
            "SELECT session_key FROM sessions WHERE sid = ?1",
            [&sid],
            |r| r.get(0),
        )
        .unwrap();
    let aad = format!("session_key:{sid}");
    assert!(DataKey::from_bytes(NEW).open(&sealed, &aad).is_ok());
    assert!(DataKey::from_bytes(OLD).open(&sealed, &aad).is_err());

    let sub = common::payload(&rita)["sub"].as_str().unwrap().to_string();
    let phone_opens_under = |key: &[u8; 32]| {
        let stored: String = conn
            .query_row("SELECT phone FROM users WHERE sub = ?1", [&sub], |r| {
                r.get(0)
            })
            .unwrap();
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(stored)
            .unwrap();
        DataKey::from_bytes(key)
            .open(&sealed, &format!("phone:{sub}"))
            .is_ok()
    };
    assert!(phone_opens_under(OLD));
    let env: std::collections::HashMap<&str, String> = stack
        .issuer
        .env()
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let config = std::sync::Arc::new(common::config_of(&env));
    let said = weauth_issuer::cli::reseal(&config).await.unwrap();
    assert!(
        said.contains("phone numbers: 1 sealed again under WEAUTH_DATA_KEY, 0 under it already"),
        "{said}"
    );
    assert!(
        said.contains("signing keys not under WEAUTH_DATA_KEY: "),
        "{said}"
    );
    assert!(
        said.contains("check: every phone number under WEAUTH_DATA_KEY"),
        "{said}"
    );
    assert!(phone_opens_under(NEW) && !phone_opens_under(OLD));
    let said = weauth_issuer::cli::reseal(&config).await.unwrap();
    assert!(
        said.contains("phone numbers: 0 sealed again under WEAUTH_DATA_KEY, 1 under it already"),
        "{said}"
    );
    let (status, me, _) = stack.get("/v1/me", Some(&rita)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["phone"], "13800138002");
    // A number no key opens: the check says so, and the run fails (keep the previous keys).
    let sam = common::payload(&later)["sub"].as_str().unwrap().to_string();
    let damaged = base64::engine::general_purpose::STANDARD.encode([1u8; 40]);
    conn.execute(
        "UPDATE users SET phone = ?1 WHERE sub = ?2",
        [damaged.as_str(), sam.as_str()],
    )
    .unwrap();
    let said = weauth_issuer::cli::reseal(&config).await.unwrap_err();
    assert!(
        said.contains("check: 0 phone numbers still under a previous key")
            && said.contains("1 under no key"),
        "{said}"
    );
}
