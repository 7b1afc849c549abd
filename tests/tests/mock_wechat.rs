//! The mock WeChat over real HTTP: WeChat's answers and quirks, the control routes and faults.
//!
//! These tests talk to the mock the way the issuer does (reqwest against `base_url()`), so they
//! pin down what the issuer's WeChat client will see.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use serde_json::{json, Value};
use weauth_tests::mock_wechat::{Fault, MockConfig, MockMiniProgram, MockWechat};

const APPID: &str = "wx0123456789abcdef";
const SECRET: &str = "mock-secret";

async fn start(cfg: MockConfig) -> (MockWechat, reqwest::Client) {
    let mock = MockWechat::start(cfg).await.unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    (mock, client)
}

async fn jscode2session(
    mock: &MockWechat,
    client: &reqwest::Client,
    appid: &str,
    secret: &str,
    code: &str,
) -> (String, Value) {
    let resp = client
        .get(format!("{}/sns/jscode2session", mock.base_url()))
        .query(&[
            ("appid", appid),
            ("secret", secret),
            ("js_code", code),
            ("grant_type", "authorization_code"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "WeChat answers errors with HTTP 200");
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    (content_type, v)
}

fn assert_errcode(v: &Value, errcode: i64) {
    assert_eq!(v["errcode"], errcode, "{v}");
    let msg = v["errmsg"].as_str().unwrap();
    let (_, rid) = msg
        .rsplit_once(", rid: ")
        .expect("errmsg ends with , rid: ...");
    assert!(
        !rid.is_empty() && rid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
        "{msg}"
    );
}

async fn stable_token(mock: &MockWechat, client: &reqwest::Client, force: bool) -> Value {
    stable_token_of(mock, client, APPID, SECRET, force).await
}

/// `stable_token` of the mini-program `appid`.
async fn stable_token_of(
    mock: &MockWechat,
    client: &reqwest::Client,
    appid: &str,
    secret: &str,
    force: bool,
) -> Value {
    client
        .post(format!("{}/cgi-bin/stable_token", mock.base_url()))
        .json(
            &json!({"grant_type": "client_credential", "appid": appid, "secret": secret,
                      "force_refresh": force}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn plain_token(mock: &MockWechat, client: &reqwest::Client) -> Value {
    client
        .get(format!("{}/cgi-bin/token", mock.base_url()))
        .query(&[
            ("grant_type", "client_credential"),
            ("appid", APPID),
            ("secret", SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `POST {mock}{path}?access_token={token}` with a JSON body; the JSON answer.
async fn api_post(
    mock: &MockWechat,
    client: &reqwest::Client,
    path: &str,
    token: &str,
    body: Value,
) -> Value {
    client
        .post(format!("{}{path}?access_token={token}", mock.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn phone(mock: &MockWechat, client: &reqwest::Client, token: &str, code: &str) -> Value {
    let body = json!({"code": code});
    api_post(
        mock,
        client,
        "/wxa/business/getuserphonenumber",
        token,
        body,
    )
    .await
}

#[tokio::test]
async fn jscode2session_success_text_plain_without_errcode() {
    let (mock, client) = start(MockConfig::default()).await;
    let login = mock.login("alice");
    let (content_type, v) = jscode2session(&mock, &client, APPID, SECRET, &login.code).await;
    assert_eq!(content_type, "text/plain");
    assert!(v.get("errcode").is_none(), "{v}");
    assert!(v.get("unionid").is_none(), "{v}");
    assert_eq!(v["openid"], login.openid);
    let key = v["session_key"].as_str().unwrap();
    assert_eq!(STANDARD.decode(key).unwrap().len(), 16);
    assert_eq!(mock.session_key(&login.openid).as_deref(), Some(key));
    assert_eq!(mock.calls("jscode2session"), 1);
}

#[tokio::test]
async fn jscode2session_reused_code_40163() {
    let (mock, client) = start(MockConfig::default()).await;
    let login = mock.login("alice");
    jscode2session(&mock, &client, APPID, SECRET, &login.code).await;
    let (_, v) = jscode2session(&mock, &client, APPID, SECRET, &login.code).await;
    assert_errcode(&v, 40163);
}

#[tokio::test]
async fn jscode2session_after_five_minutes_40029() {
    let (mock, client) = start(MockConfig::default()).await;
    let login = mock.login("alice");
    mock.advance_clock(Duration::from_secs(300));
    let (_, v) = jscode2session(&mock, &client, APPID, SECRET, &login.code).await;
    assert_errcode(&v, 40029);
}

#[tokio::test]
async fn jscode2session_unknown_code_40029_bad_appid_40013_bad_secret_40125() {
    let (mock, client) = start(MockConfig::default()).await;
    let (_, v) = jscode2session(&mock, &client, APPID, SECRET, "nope").await;
    assert_errcode(&v, 40029);
    let code = mock.login("a").code;
    let (_, v) = jscode2session(&mock, &client, "wxother", SECRET, &code).await;
    assert_errcode(&v, 40013);
    let (_, v) = jscode2session(&mock, &client, APPID, "wrong", &code).await;
    assert_errcode(&v, 40125);
    // The failed attempts did not consume the code.
    let (_, v) = jscode2session(&mock, &client, APPID, SECRET, &code).await;
    assert!(v.get("errcode").is_none(), "{v}");
}

#[tokio::test]
async fn login_same_user_same_openid_new_session_key() {
    let (mock, client) = start(MockConfig::default()).await;
    let a1 = mock.login("alice");
    let a2 = mock.login("alice");
    let b = mock.login("bob");
    assert_eq!(a1.openid, a2.openid);
    assert_ne!(a1.openid, b.openid);
    assert_ne!(a1.code, a2.code);
    let (_, v1) = jscode2session(&mock, &client, APPID, SECRET, &a1.code).await;
    let (_, v2) = jscode2session(&mock, &client, APPID, SECRET, &a2.code).await;
    assert_ne!(v1["session_key"], v2["session_key"]);
}

#[tokio::test]
async fn jscode2session_bound_app_returns_unionid() {
    let (mock, client) = start(MockConfig {
        unionid: true,
        ..Default::default()
    })
    .await;
    let login = mock.login("alice");
    let (_, v) = jscode2session(&mock, &client, APPID, SECRET, &login.code).await;
    assert_eq!(v["unionid"], mock.unionid("alice"));
}

#[tokio::test]
async fn control_login_route_gives_code_and_openid() {
    let (mock, client) = start(MockConfig::default()).await;
    let v: Value = client
        .get(format!("{}/mock/login?user=carol", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["openid"], mock.openid("carol"));
    let (_, s) = jscode2session(&mock, &client, APPID, SECRET, v["code"].as_str().unwrap()).await;
    assert_eq!(s["openid"], v["openid"]);
}

#[tokio::test]
async fn plain_token_reissue_old_token_stale_after_overlap_40001() {
    // The overlap is passed on the mock's clock (advance_clock), not waited for: a long
    // overlap cannot run out by itself during the test, and no sleep has to outlast it.
    let overlap = Duration::from_secs(60);
    let (mock, client) = start(MockConfig {
        token_overlap: overlap,
        ..Default::default()
    })
    .await;
    let t1 = plain_token(&mock, &client).await;
    assert_eq!(t1["expires_in"], 7200);
    let t1 = t1["access_token"].as_str().unwrap().to_string();
    let t2 = plain_token(&mock, &client).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(t1, t2);
    let code = mock.phone_code("alice", "13800138000");
    // Within the overlap the old token still works.
    let v = phone(&mock, &client, &t1, &code).await;
    assert_eq!(v["errcode"], 0, "{v}");
    mock.advance_clock(overlap + Duration::from_secs(1));
    let code = mock.phone_code("alice", "13800138000");
    assert_errcode(&phone(&mock, &client, &t1, &code).await, 40001);
    assert_eq!(phone(&mock, &client, &t2, &code).await["errcode"], 0);
}

#[tokio::test]
async fn stable_token_same_until_forced() {
    let (mock, client) = start(MockConfig {
        token_overlap: Duration::ZERO,
        ..Default::default()
    })
    .await;
    let a = stable_token(&mock, &client, false).await;
    let b = stable_token(&mock, &client, false).await;
    assert_eq!(a["access_token"], b["access_token"]);
    let c = stable_token(&mock, &client, true).await;
    assert_ne!(a["access_token"], c["access_token"]);
    let code = mock.phone_code("alice", "13800138000");
    let old = a["access_token"].as_str().unwrap();
    assert_errcode(&phone(&mock, &client, old, &code).await, 40001);
}

#[tokio::test]
async fn stable_token_bad_secret_40125() {
    let (mock, client) = start(MockConfig::default()).await;
    let v: Value = client
        .post(format!("{}/cgi-bin/stable_token", mock.base_url()))
        .json(&json!({"grant_type": "client_credential", "appid": APPID, "secret": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_errcode(&v, 40125);
}

#[tokio::test]
async fn getuserphonenumber_single_use_with_watermark() {
    let (mock, client) = start(MockConfig::default()).await;
    let token = stable_token(&mock, &client, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let code = mock.phone_code("alice", "13800138000");
    let v = phone(&mock, &client, &token, &code).await;
    assert_eq!(v["phone_info"]["purePhoneNumber"], "13800138000");
    assert_eq!(v["phone_info"]["phoneNumber"], "13800138000");
    // A number, as in the API page's example answer.
    assert_eq!(v["phone_info"]["countryCode"], 86);
    assert_eq!(v["phone_info"]["watermark"]["appid"], APPID);
    assert_errcode(&phone(&mock, &client, &token, &code).await, 40029);
}

/// Two mini-programs: each its own credentials, codes, openids and tokens; another app's code
/// is invalid (40029), the unionid is one.
#[tokio::test]
async fn several_mini_programs_each_their_own_codes_and_tokens() {
    let second = MockMiniProgram::second();
    let cfg = MockConfig {
        unionid: true,
        mini_programs: vec![second.clone()],
        ..MockConfig::default()
    };
    let (mock, client) = start(cfg).await;
    let exchange = |appid: &str, secret: &str, code: String| {
        let (mock, client) = (&mock, &client);
        let (appid, secret) = (appid.to_string(), secret.to_string());
        async move { jscode2session(mock, client, &appid, &secret, &code).await.1 }
    };
    let main = mock.login("ann");
    let other = mock.login_to(&second.appid, "ann");
    assert_ne!(main.openid, other.openid);
    let a = exchange(APPID, SECRET, main.code).await;
    let b = exchange(&second.appid, &second.secret, other.code).await;
    assert_eq!(a["openid"], main.openid.as_str());
    assert_eq!(b["openid"], other.openid.as_str());
    assert_eq!(a["unionid"], b["unionid"]);
    let crossed = mock.login("ann").code;
    let answer = exchange(&second.appid, &second.secret, crossed).await;
    assert_errcode(&answer, 40029);
    let wrong = exchange(&second.appid, SECRET, mock.login("ann").code).await;
    assert_errcode(&wrong, 40125);
    // A phone code is redeemed only with its own app's token.
    let main_token = stable_token(&mock, &client, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let code = mock.phone_code_for(&second.appid, "ann", "13800138001");
    assert_errcode(&phone(&mock, &client, &main_token, &code).await, 40029);
    // The risk rank of a user of the second app: with that app's token and appid only.
    let second_token = stable_token_of(&mock, &client, &second.appid, &second.secret, false).await
        ["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second_token, main_token, "an access token per app");
    let risk = |token: String, appid: String| {
        let body =
            json!({"appid": appid, "openid": other.openid, "scene": 0, "client_ip": "203.0.113.9"});
        let (mock, client) = (&mock, &client);
        async move { api_post(mock, client, "/wxa/getuserriskrank", &token, body).await }
    };
    let ranked = risk(second_token.clone(), second.appid.clone()).await;
    assert_eq!(ranked["errcode"], 0, "{ranked}");
    assert_errcode(&risk(main_token.clone(), APPID.into()).await, 43104);
    assert_errcode(&risk(main_token.clone(), second.appid.clone()).await, 43104);
    // checksession knows the session_key of the token's app's users only.
    let key = mock.session_key(&other.openid).unwrap();
    let signature = weauth_wxdata::checksession_signature(&key);
    let check = |token: String| {
        let url = format!("{}/wxa/checksession", mock.base_url());
        let query = [
            ("access_token", token),
            ("openid", other.openid.clone()),
            ("signature", signature.clone()),
            ("sig_method", "hmac_sha256".to_string()),
        ];
        let client = client.clone();
        async move {
            let answer = client.get(url).query(&query).send().await.unwrap();
            answer.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(check(second_token).await["errcode"], 0);
    assert_errcode(&check(main_token).await, 87009);
    // The control routes refuse an app the mock does not have.
    for route in ["/mock/login?user=ann", "/mock/phonecode?user=ann&phone=138"] {
        let url = format!("{}{route}&appid=wx00000000000000ff", mock.base_url());
        let status = client.get(url).send().await.unwrap().status();
        assert_eq!(status, 400, "{route}");
    }
}

#[tokio::test]
async fn getuserphonenumber_with_openid_checks_the_code_belongs_to_it() {
    let (mock, client) = start(MockConfig::default()).await;
    let token = stable_token(&mock, &client, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let ask = |code: String, openid: String| {
        let body = json!({"code": code, "openid": openid});
        api_post(
            &mock,
            &client,
            "/wxa/business/getuserphonenumber",
            &token,
            body,
        )
    };
    // alice's code with alice's openid: her number.
    let v = ask(
        mock.phone_code("alice", "13800138000"),
        mock.openid("alice"),
    )
    .await;
    assert_eq!(v["phone_info"]["purePhoneNumber"], "13800138000", "{v}");
    // alice's code presented with bob's openid: refused as an invalid code.
    let v = ask(mock.phone_code("alice", "13800138000"), mock.openid("bob")).await;
    assert_errcode(&v, 40029);
}

#[tokio::test]
async fn checksession_good_signature_ok_bad_87009() {
    let (mock, client) = start(MockConfig::default()).await;
    let token = stable_token(&mock, &client, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let login = mock.login("alice");
    let sig = mock.checksession_signature("alice");
    let call = |sig: String| {
        let client = client.clone();
        let url = format!("{}/wxa/checksession", mock.base_url());
        let (token, openid) = (token.clone(), login.openid.clone());
        async move {
            client
                .get(url)
                .query(&[
                    ("access_token", token.as_str()),
                    ("openid", openid.as_str()),
                    ("signature", sig.as_str()),
                    ("sig_method", "hmac_sha256"),
                ])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(call(sig.clone()).await["errcode"], 0);
    // A new wx.login rotates the session_key: the old signature no longer matches.
    mock.login("alice");
    assert_errcode(&call(sig).await, 87009);
}

#[tokio::test]
async fn encrypt_uses_current_session_key_and_watermark() {
    let (mock, client) = start(MockConfig::default()).await;
    let login = mock.login("alice");
    let v: Value = client
        .post(format!("{}/mock/encrypt", mock.base_url()))
        .json(&json!({"user": "alice", "data": {"nickName": "Alice"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: [u8; 16] = STANDARD
        .decode(mock.session_key(&login.openid).unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let iv: [u8; 16] = STANDARD
        .decode(v["iv"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let plain = cbc::Decryptor::<aes::Aes128>::new(&key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(
            &STANDARD
                .decode(v["encryptedData"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
    let data: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(data["nickName"], "Alice");
    assert_eq!(data["watermark"]["appid"], APPID);
    assert_eq!(v["rawData"], r#"{"nickName":"Alice"}"#);
    assert_eq!(
        v["signature"].as_str().unwrap(),
        mock.sign_raw_data("alice", r#"{"nickName":"Alice"}"#)
    );
}

#[tokio::test]
async fn fault_errcode_for_n_calls_then_normal() {
    let (mock, client) = start(MockConfig::default()).await;
    mock.inject(
        "jscode2session",
        Fault::Errcode {
            errcode: 45011,
            errmsg: "api minute-quota reach limit".into(),
        },
        2,
    );
    let code = mock.login("alice").code;
    for _ in 0..2 {
        let (_, v) = jscode2session(&mock, &client, APPID, SECRET, &code).await;
        assert_errcode(&v, 45011);
    }
    let (_, v) = jscode2session(&mock, &client, APPID, SECRET, &code).await;
    assert!(v.get("errcode").is_none(), "{v}");
    assert_eq!(mock.calls("jscode2session"), 3);
}

#[tokio::test]
async fn fault_status_html_garbage_via_control_route() {
    let (mock, client) = start(MockConfig::default()).await;
    let url = format!("{}/cgi-bin/token", mock.base_url());
    for fault in [json!({"status": 502}), json!("html"), json!("garbage")] {
        let r = client
            .post(format!("{}/mock/faults", mock.base_url()))
            .json(&json!({"route": "token", "times": 1, "fault": fault}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("<html>"));
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html");
    let r = client.get(&url).send().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());
    let stats: Value = client
        .get(format!("{}/mock/stats", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["token"], 3);
    assert_eq!(stats["jscode2session"], 0);
}

#[tokio::test]
async fn fault_delay_then_normal_answer() {
    let (mock, client) = start(MockConfig::default()).await;
    mock.inject("*", Fault::Delay(Duration::from_millis(300)), 1);
    let t0 = std::time::Instant::now();
    let v = plain_token(&mock, &client).await;
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(v["access_token"].is_string());
}

#[tokio::test]
async fn fault_hang_never_answers() {
    let (mock, client) = start(MockConfig::default()).await;
    mock.inject("token", Fault::Hang, 1);
    let r = client
        .get(format!("{}/cgi-bin/token", mock.base_url()))
        .timeout(Duration::from_millis(400))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    // The next call is normal again, and the hung one was counted.
    assert!(plain_token(&mock, &client).await["access_token"].is_string());
    assert_eq!(mock.calls("token"), 2);
    mock.shutdown().await;
}

#[tokio::test]
async fn reset_clears_faults_and_counters() {
    let (mock, client) = start(MockConfig::default()).await;
    mock.inject("token", Fault::Garbage, 5);
    let r = client
        .get(format!("{}/cgi-bin/token", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).is_err());
    client
        .post(format!("{}/mock/reset", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(mock.calls("*"), 0);
    assert!(plain_token(&mock, &client).await["access_token"].is_string());
}

// ---- web OAuth2 (official accounts and websites) ----

use weauth_tests::mock_wechat::MockApp;

fn web_cfg() -> MockConfig {
    MockConfig {
        unionid: true,
        web_apps: vec![MockApp::official_account(), MockApp::website()],
        ..Default::default()
    }
}

/// A client that does not follow redirects, as a test of the authorize page needs.
fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sns_get(
    mock: &MockWechat,
    client: &reqwest::Client,
    path: &str,
    query: &[(&str, &str)],
) -> (String, Value) {
    let resp = client
        .get(format!("{}{path}", mock.base_url()))
        .query(query)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "WeChat answers errors with HTTP 200");
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    (content_type, v)
}

async fn oauth_exchange(
    mock: &MockWechat,
    client: &reqwest::Client,
    app: &MockApp,
    code: &str,
) -> Value {
    sns_get(
        mock,
        client,
        "/sns/oauth2/access_token",
        &[
            ("appid", app.appid.as_str()),
            ("secret", app.secret.as_str()),
            ("code", code),
            ("grant_type", "authorization_code"),
        ],
    )
    .await
    .1
}

fn query_of(location: &str) -> Vec<(String, String)> {
    let url = url::Url::parse(location).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn authorize_page_approves_as_cookie_user_and_redirects_with_code_and_state() {
    let (mock, _) = start(web_cfg()).await;
    let client = no_redirect_client();
    let oa = MockApp::official_account();
    let resp = client
        .get(format!("{}/connect/oauth2/authorize", mock.base_url()))
        .query(&[
            ("appid", oa.appid.as_str()),
            ("redirect_uri", "http://127.0.0.1:9/v1/web/callback"),
            ("response_type", "code"),
            ("scope", "snsapi_userinfo"),
            ("state", "abcXYZ123"),
        ])
        .header("cookie", "mock_user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("http://127.0.0.1:9/v1/web/callback?"),
        "{location}"
    );
    let q = query_of(&location);
    assert_eq!(q[1], ("state".to_string(), "abcXYZ123".to_string()));
    let code = &q[0].1;
    let (ct, v) = sns_get(
        &mock,
        &client,
        "/sns/oauth2/access_token",
        &[
            ("appid", oa.appid.as_str()),
            ("secret", oa.secret.as_str()),
            ("code", code.as_str()),
            ("grant_type", "authorization_code"),
        ],
    )
    .await;
    assert_eq!(ct, "text/plain", "sns/* JSON is served as text/plain");
    assert!(v.get("errcode").is_none(), "no errcode on success: {v}");
    assert_eq!(v["openid"], mock.openid_in(&oa.appid, "alice"));
    assert_eq!(v["unionid"], mock.unionid("alice"));
    assert_eq!(v["scope"], "snsapi_userinfo");
    assert_eq!(v["expires_in"], 7200);
    assert!(v["refresh_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(v.get("is_snapshotuser").is_none());
}

#[tokio::test]
async fn authorize_page_deny_redirects_without_code() {
    let (mock, _) = start(web_cfg()).await;
    let client = no_redirect_client();
    let resp = client
        .get(format!("{}/connect/oauth2/authorize", mock.base_url()))
        .query(&[
            ("appid", "wx00000000000000a1"),
            ("redirect_uri", "https://h5.example.com/cb"),
            ("response_type", "code"),
            ("scope", "snsapi_base"),
            ("state", "s1"),
            ("mock_user", "alice"),
            ("mock_action", "deny"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap();
    assert_eq!(location, "https://h5.example.com/cb?state=s1");
}

#[tokio::test]
async fn authorize_page_without_user_shows_chooser_form() {
    let (mock, _) = start(web_cfg()).await;
    let client = no_redirect_client();
    let resp = client
        .get(format!("{}/connect/qrconnect", mock.base_url()))
        .query(&[
            ("appid", "wx00000000000000b2"),
            ("redirect_uri", "https://www.example.com/cb"),
            ("response_type", "code"),
            ("scope", "snsapi_login"),
            ("state", "s1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    assert!(page.contains("name=\"mock_user\""), "{page}");
    assert!(page.contains("value=\"wx00000000000000b2\""), "{page}");
}

#[tokio::test]
async fn authorize_page_bad_parameters_error_page_no_redirect() {
    let (mock, _) = start(web_cfg()).await;
    let client = no_redirect_client();
    let base = [
        ("appid", "wx00000000000000a1"),
        ("redirect_uri", "https://h5.example.com/cb"),
        ("response_type", "code"),
        ("scope", "snsapi_base"),
        ("state", "s1"),
        ("mock_user", "alice"),
    ];
    let cases: Vec<(&str, &str, &str)> = vec![
        ("/connect/oauth2/authorize", "appid", "wxnope"),
        ("/connect/oauth2/authorize", "scope", "snsapi_login"),
        ("/connect/oauth2/authorize", "response_type", "token"),
        ("/connect/oauth2/authorize", "state", "not-alnum"),
        ("/connect/oauth2/authorize", "redirect_uri", "not a url"),
        // an official account cannot use the website QR page
        ("/connect/qrconnect", "scope", "snsapi_login"),
    ];
    // (what the case is, the page, its query)
    type Case<'a> = (String, &'a str, Vec<(&'a str, &'a str)>);
    let mut queries: Vec<Case> = cases
        .into_iter()
        .map(|(path, key, value)| {
            let query = base
                .iter()
                .map(|(k, v)| if *k == key { (*k, value) } else { (*k, *v) })
                .collect();
            (format!("{path} {key}={value}"), path, query)
        })
        .collect();
    // WeChat matches the official account's authorize link with its parameters in order.
    let mut swapped = base.to_vec();
    swapped.swap(2, 3);
    queries.push((
        "scope before response_type".into(),
        "/connect/oauth2/authorize",
        swapped,
    ));
    for (case, path, query) in queries {
        let resp = client
            .get(format!("{}{path}", mock.base_url()))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{case}");
        assert!(resp.headers().get("location").is_none());
    }
}

#[tokio::test]
async fn oauth2_access_token_snsapi_base_no_unionid_and_userinfo_48001() {
    let (mock, client) = start(web_cfg()).await;
    let oa = MockApp::official_account();
    let code = mock.oauth_code(&oa.appid, "bob", "snsapi_base");
    let v = oauth_exchange(&mock, &client, &oa, &code).await;
    assert!(v.get("unionid").is_none(), "{v}");
    let (ct, info) = sns_get(
        &mock,
        &client,
        "/sns/userinfo",
        &[
            ("access_token", v["access_token"].as_str().unwrap()),
            ("openid", v["openid"].as_str().unwrap()),
            ("lang", "zh_CN"),
        ],
    )
    .await;
    assert_eq!(ct, "text/plain");
    assert_errcode(&info, 48001);
}

#[tokio::test]
async fn oauth2_code_single_use_expiring_and_per_app() {
    let (mock, client) = start(web_cfg()).await;
    let oa = MockApp::official_account();
    let web = MockApp::website();
    let code = mock.oauth_code(&oa.appid, "alice", "snsapi_base");
    assert_errcode(&oauth_exchange(&mock, &client, &web, &code).await, 40029);
    let code = mock.oauth_code(&oa.appid, "alice", "snsapi_base");
    assert!(oauth_exchange(&mock, &client, &oa, &code)
        .await
        .get("openid")
        .is_some());
    assert_errcode(&oauth_exchange(&mock, &client, &oa, &code).await, 40163);
    let code = mock.oauth_code(&oa.appid, "alice", "snsapi_base");
    mock.advance_clock(Duration::from_secs(301));
    assert_errcode(&oauth_exchange(&mock, &client, &oa, &code).await, 40029);
    assert_errcode(&oauth_exchange(&mock, &client, &oa, "unknown").await, 40029);
    let bad_secret = MockApp {
        secret: "wrong".into(),
        ..oa.clone()
    };
    assert_errcode(
        &oauth_exchange(&mock, &client, &bad_secret, "x").await,
        40125,
    );
    let bad_appid = MockApp {
        appid: "wxnope".into(),
        ..oa.clone()
    };
    assert_errcode(
        &oauth_exchange(&mock, &client, &bad_appid, "x").await,
        40013,
    );
    // The mini-program's appid is not a web app.
    let (_, v) = sns_get(
        &mock,
        &client,
        "/sns/oauth2/access_token",
        &[
            ("appid", APPID),
            ("secret", SECRET),
            ("code", "x"),
            ("grant_type", "authorization_code"),
        ],
    )
    .await;
    assert_errcode(&v, 40013);
}

#[tokio::test]
async fn userinfo_sns_auth_and_refresh_token() {
    let (mock, client) = start(web_cfg()).await;
    let web = MockApp::website();
    let code = mock.oauth_code(&web.appid, "carol", "snsapi_login");
    let v = oauth_exchange(&mock, &client, &web, &code).await;
    let token = v["access_token"].as_str().unwrap().to_string();
    let openid = v["openid"].as_str().unwrap().to_string();
    let (_, info) = sns_get(
        &mock,
        &client,
        "/sns/userinfo",
        &[
            ("access_token", &token),
            ("openid", &openid),
            ("lang", "zh_CN"),
        ],
    )
    .await;
    assert!(info.get("errcode").is_none(), "{info}");
    assert_eq!(info["unionid"], mock.unionid("carol"));
    assert_eq!(info["sex"], 0);
    assert_eq!(info["province"], "");
    assert!(info["privilege"].is_array());
    let (_, other) = sns_get(
        &mock,
        &client,
        "/sns/userinfo",
        &[("access_token", &token), ("openid", "oSomeoneElse")],
    )
    .await;
    assert_errcode(&other, 40003);
    let (_, auth) = sns_get(
        &mock,
        &client,
        "/sns/auth",
        &[("access_token", &token), ("openid", &openid)],
    )
    .await;
    assert_eq!(auth["errcode"], 0);
    let (_, auth) = sns_get(
        &mock,
        &client,
        "/sns/auth",
        &[("access_token", "nope"), ("openid", &openid)],
    )
    .await;
    assert_errcode(&auth, 40001);
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    let (_, renewed) = sns_get(
        &mock,
        &client,
        "/sns/oauth2/refresh_token",
        &[
            ("appid", &web.appid),
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_ne!(renewed["access_token"], v["access_token"]);
    assert_eq!(renewed["refresh_token"], refresh);
    let (_, bad) = sns_get(
        &mock,
        &client,
        "/sns/oauth2/refresh_token",
        &[
            ("appid", &web.appid),
            ("grant_type", "refresh_token"),
            ("refresh_token", "nope"),
        ],
    )
    .await;
    assert_errcode(&bad, 40030);
    mock.advance_clock(Duration::from_secs(7201));
    let (_, expired) = sns_get(
        &mock,
        &client,
        "/sns/auth",
        &[("access_token", &token), ("openid", &openid)],
    )
    .await;
    assert_errcode(&expired, 42001);
    mock.advance_clock(Duration::from_secs(31 * 86_400));
    let (_, expired) = sns_get(
        &mock,
        &client,
        "/sns/oauth2/refresh_token",
        &[
            ("appid", &web.appid),
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
        ],
    )
    .await;
    assert_errcode(&expired, 42002);
}

#[tokio::test]
async fn snapshot_user_flagged_and_virtual_openid() {
    let (mock, _) = start(web_cfg()).await;
    let client = no_redirect_client();
    let oa = MockApp::official_account();
    let resp = client
        .get(format!("{}/connect/oauth2/authorize", mock.base_url()))
        .query(&[
            ("appid", oa.appid.as_str()),
            ("redirect_uri", "https://h5.example.com/cb"),
            ("response_type", "code"),
            ("scope", "snsapi_base"),
            ("state", "s"),
        ])
        .header("cookie", "mock_user=dave; mock_action=snapshot")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let q = query_of(resp.headers()["location"].to_str().unwrap());
    let v = oauth_exchange(&mock, &client, &oa, &q[0].1).await;
    assert_eq!(v["is_snapshotuser"], 1, "{v}");
    assert_ne!(v["openid"], mock.openid_in(&oa.appid, "dave"));
}

#[tokio::test]
async fn oauth2_access_token_faults_injected_like_jscode2session() {
    let (mock, client) = start(web_cfg()).await;
    let oa = MockApp::official_account();
    mock.inject(
        "oauth2_access_token",
        Fault::Errcode {
            errcode: -1,
            errmsg: "system error".into(),
        },
        1,
    );
    let code = mock.oauth_code(&oa.appid, "alice", "snsapi_base");
    assert_errcode(&oauth_exchange(&mock, &client, &oa, &code).await, -1);
    // The faulted call did not consume the code.
    assert!(oauth_exchange(&mock, &client, &oa, &code)
        .await
        .get("openid")
        .is_some());
    assert_eq!(mock.calls("oauth2_access_token"), 2);
    mock.inject("userinfo", Fault::Status(502), 1);
    let resp = client
        .get(format!("{}/sns/userinfo", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn mock_oauth_code_control_route() {
    let (mock, client) = start(web_cfg()).await;
    let oa = MockApp::official_account();
    let v: Value = client
        .get(format!("{}/mock/oauth/code", mock.base_url()))
        .query(&[
            ("appid", oa.appid.as_str()),
            ("user", "erin"),
            ("scope", "snsapi_userinfo"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = oauth_exchange(&mock, &client, &oa, v["code"].as_str().unwrap()).await;
    assert_eq!(answer["openid"], v["openid"]);
    assert_eq!(answer["unionid"], mock.unionid("erin"));
}

#[tokio::test]
async fn checkencryptedmsg_vouches_for_what_it_generated_for_3_days() {
    let second = MockMiniProgram::second();
    let (mock, client) = start(MockConfig {
        mini_programs: vec![second.clone()],
        ..MockConfig::default()
    })
    .await;
    let token = stable_token(&mock, &client, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let check = |token: String, body: Value| {
        let (mock, client) = (&mock, &client);
        async move {
            api_post(
                mock,
                client,
                "/wxa/business/checkencryptedmsg",
                &token,
                body,
            )
            .await
        }
    };
    let (encrypted, _iv) = mock.encrypt("alice", json!({"phoneNumber": "13800138000"}));
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(encrypted.as_bytes()));
    let v = check(token.clone(), json!({"encrypted_msg_hash": hash})).await;
    assert_eq!(v["errcode"], 0, "{v}");
    assert_eq!(v["vaild"], true, "WeChat's spelling: {v}");
    assert!(v["create_time"].as_u64().unwrap() > 0);
    // Vouched for to the app it was generated for only: another app's token does not see it.
    let others = stable_token_of(&mock, &client, &second.appid, &second.secret, false).await
        ["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_errcode(
        &check(others, json!({"encrypted_msg_hash": hash.clone()})).await,
        1,
    );
    // Not generated here, malformed, missing.
    let other = json!({"encrypted_msg_hash": "ab".repeat(32)});
    assert_errcode(&check(token.clone(), other).await, 1);
    // Generated here, but not phone-number data: WeChat checks no other.
    let (profile, _iv) = mock.encrypt("alice", json!({"nickName": "Alice"}));
    let profile = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(profile.as_bytes()));
    assert_errcode(
        &check(token.clone(), json!({"encrypted_msg_hash": profile})).await,
        1,
    );
    let malformed = json!({"encrypted_msg_hash": "xyz"});
    assert_errcode(&check(token.clone(), malformed).await, 40097);
    assert_errcode(&check(token, json!({})).await, 44002);
    // Older than 3 days: no longer vouched for (with a token fetched after the jump).
    mock.advance_clock(Duration::from_secs(3 * 86_400 + 1));
    let token = stable_token(&mock, &client, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_errcode(&check(token, json!({"encrypted_msg_hash": hash})).await, 1);
}

/// Two apps of the mock under one appid are refused at start: they would share codes, users
/// and access tokens (the second mini-program once had the website's appid).
#[tokio::test]
async fn mock_apps_each_have_an_appid_of_their_own() {
    let mut cfg = web_cfg();
    cfg.mini_programs = vec![MockMiniProgram::second()];
    assert!(MockWechat::start(cfg.clone()).await.is_ok());
    cfg.mini_programs.push(MockMiniProgram {
        appid: MockApp::website().appid,
        secret: "s".into(),
    });
    let err = MockWechat::start(cfg).await.err().expect("started");
    assert!(err.to_string().contains(&MockApp::website().appid), "{err}");
}
