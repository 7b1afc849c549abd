//! Integration tests of several apps and web login against the mock WeChat, without a browser
//! (the browser test is `tests/tests/e2e_browser.rs`): the apps file at start, `/v1/login` with
//! an appid, `/v1/web/authorize` and `/v1/web/callback` (every refusal, every WeChat error),
//! the cookies, cookie authentication with its CSRF rule, cookie refresh and logout, the
//! mini-program-only routes for web sessions, and one person across apps (same unionid → same
//! `sub`; a login first seen without a unionid linked, not duplicated).

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{payload, split, Stack, APPID};
use serde_json::{json, Value};
use weauth_mock_wechat::{Fault, MockApp, MockAppKind, MockConfig};

const BACK: &str = "https://h5.example.com/after-login";
const WEB_BACK: &str = "https://www.example.com/";
const H5_ORIGIN: &str = "https://h5.example.com";

/// The browser-binding cookie of the tests' issuer, whose cookies are `Secure` (the default).
const STATE_COOKIE: &str = "__Host-weauth_oauth";

fn oa() -> MockApp {
    MockApp::official_account()
}

fn website() -> MockApp {
    MockApp::website()
}

/// An official account not bound to the Open Platform account: WeChat gives no unionid for
/// its users, in the token answer or in `sns/userinfo`.
fn unbound_oa() -> MockApp {
    MockApp {
        appid: "wx00000000000000e5".into(),
        secret: "mock-oa2-secret".into(),
        kind: MockAppKind::OfficialAccount,
        unionid: false,
    }
}

fn apps_file() -> Value {
    json!({"apps": [
        {"appid": APPID, "secret": "mock-secret", "kind": "miniprogram"},
        {"appid": oa().appid, "secret": oa().secret, "kind": "official_account",
         "redirect_uris": [BACK]},
        {"appid": website().appid, "secret": website().secret, "kind": "website",
         "redirect_uris": [WEB_BACK]},
        {"appid": unbound_oa().appid, "secret": unbound_oa().secret,
         "kind": "official_account", "redirect_uris": [BACK]},
    ]})
}

/// The issuer with an apps file (mini-program, official account, website; all bound) and
/// `extra` variables, with WeChat retries off so one injected fault is one answer.
async fn start(extra: &[(&str, &str)]) -> Stack {
    start_as(false, extra).await
}

/// [`start`] as the binary's process (for a test that reads the issuer's log).
async fn start_process(extra: &[(&str, &str)]) -> Stack {
    start_as(true, extra).await
}

async fn start_as(process: bool, extra: &[(&str, &str)]) -> Stack {
    let cfg = MockConfig {
        unionid: true,
        web_apps: vec![oa(), website(), unbound_oa()],
        ..Default::default()
    };
    let mut stack = Stack::launch(
        cfg,
        |mock, dir, env| {
            env.remove("WEAUTH_WECHAT_APPID");
            env.remove("WEAUTH_WECHAT_SECRET");
            let path = dir.join("apps.json");
            std::fs::write(&path, apps_file().to_string()).unwrap();
            env.insert("WEAUTH_APPS_FILE".into(), path.display().to_string());
            env.insert("WEAUTH_WECHAT_OPEN_BASE".into(), mock.base_url());
            env.insert("WEAUTH_WECHAT_RETRIES".into(), "0".into());
        },
        extra,
        process,
    )
    .await;
    // Redirects are what the tests look at: never follow them.
    stack.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    stack
}

/// The `name=value` of each `Set-Cookie`, with its attributes.
fn set_cookies(headers: &reqwest::header::HeaderMap) -> HashMap<String, String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap().to_string();
            let name = text.split('=').next().unwrap().to_string();
            (name, text)
        })
        .collect()
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string()
}

/// A started web login: the state (from WeChat's URL) and the browser binding cookie.
struct Started {
    state: String,
    binding: String,
    location: String,
}

async fn authorize(
    stack: &Stack,
    query: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let response = stack
        .http
        .get(stack.url("/v1/web/authorize"))
        .query(query)
        .send()
        .await
        .unwrap();
    split(response).await
}

async fn start_login(stack: &Stack, appid: &str, redirect: &str, scope: Option<&str>) -> Started {
    let mut query = vec![("appid", appid), ("redirect_uri", redirect)];
    if let Some(scope) = scope {
        query.push(("scope", scope));
    }
    let (status, body, headers) = authorize(stack, &query).await;
    assert_eq!(status, 302, "{body}");
    let location = headers["location"].to_str().unwrap().to_string();
    let url = url::Url::parse(&location).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let cookies = set_cookies(&headers);
    // Over plain http (`WEAUTH_COOKIE_SECURE=false`) it is `weauth_oauth`.
    let binding = cookie_value(
        cookies
            .get(STATE_COOKIE)
            .or_else(|| cookies.get("weauth_oauth"))
            .unwrap(),
    );
    Started {
        state,
        binding,
        location,
    }
}

async fn callback(
    stack: &Stack,
    code: Option<&str>,
    state: &str,
    binding: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    // Under both names: the issuer reads the one its `WEAUTH_COOKIE_SECURE` gives.
    let cookie = binding.map(|b| format!("{STATE_COOKIE}={b}; weauth_oauth={b}"));
    callback_with_cookie(stack, code, state, cookie.as_deref()).await
}

/// A `Cookie` header of these bytes as they are (a browser sends a cookie set with a raw
/// UTF-8 value so; `HeaderValue::from_str` takes visible ASCII only).
fn cookie_header(cookie: &str) -> reqwest::header::HeaderValue {
    reqwest::header::HeaderValue::from_bytes(cookie.as_bytes()).unwrap()
}

/// The callback with exactly this `Cookie` header (or none).
async fn callback_with_cookie(
    stack: &Stack,
    code: Option<&str>,
    state: &str,
    cookie: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut query = vec![("state", state)];
    if let Some(code) = code {
        query.push(("code", code));
    }
    let mut request = stack.http.get(stack.url("/v1/web/callback")).query(&query);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie_header(cookie));
    }
    split(request.send().await.unwrap()).await
}

/// A whole web login of `user`: authorize, the mock's approval, callback. Returns the
/// callback's `Set-Cookie`s (asserting the 302 back to `redirect`).
async fn web_login(
    stack: &Stack,
    app: &MockApp,
    redirect: &str,
    scope: &str,
    user: &str,
) -> HashMap<String, String> {
    let started = start_login(stack, &app.appid, redirect, Some(scope)).await;
    let code = stack.mock.oauth_code(&app.appid, user, scope);
    let (status, body, headers) =
        callback(stack, Some(&code), &started.state, Some(&started.binding)).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(headers["location"], redirect);
    set_cookies(&headers)
}

/// The access cookie's name with `Secure` cookies (the tests' default).
const AT: &str = "__Host-weauth_at";

fn access_of(cookies: &HashMap<String, String>) -> String {
    cookie_value(&cookies[AT])
}

/// A callback refused 400 as one from another browser than the login's (its binding cookie
/// missing or not the login's), not for another reason.
fn assert_another_browser(status: u16, body: &serde_json::Value) {
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("another browser"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_official_account_redirects_to_wechat_with_state_and_binding_cookie() {
    let stack = start(&[]).await;
    let started = start_login(&stack, &oa().appid, BACK, None).await;
    let expected = format!(
        "{}/connect/oauth2/authorize?appid={}&redirect_uri=http%3A%2F%2Fissuer.test%2Fv1%2Fweb%2Fcallback&response_type=code&scope=snsapi_base&state={}#wechat_redirect",
        stack.mock.base_url(),
        oa().appid,
        started.state
    );
    assert_eq!(started.location, expected);
    assert_eq!(started.state.len(), 32);
    assert!(started.state.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_ne!(started.binding, started.state);
    let (_, _, headers) =
        authorize(&stack, &[("appid", &oa().appid), ("redirect_uri", BACK)]).await;
    // `__Host-`: only this host can set it (no cookie tossing from a sibling host), which
    // needs `Path=/`, `Secure` and no `Domain`.
    let cookie = &set_cookies(&headers)[STATE_COOKIE];
    assert!(cookie.contains("; Path=/;"), "{cookie}");
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(cookie.contains("Max-Age=600"), "{cookie}");
    // A website goes to the QR page with snsapi_login.
    let web = start_login(&stack, &website().appid, WEB_BACK, None).await;
    assert!(
        web.location.contains("/connect/qrconnect?"),
        "{}",
        web.location
    );
    assert!(
        web.location.contains("scope=snsapi_login"),
        "{}",
        web.location
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_bad_input_400_never_redirects_and_stores_nothing() {
    let stack = start(&[]).await;
    let oa_id = oa().appid;
    let web_id = website().appid;
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("redirect_uri", BACK)], "appid"),
        (vec![("appid", &oa_id)], "redirect_uri"),
        (
            vec![("appid", "wxunknown"), ("redirect_uri", BACK)],
            "unknown appid",
        ),
        (
            vec![("appid", APPID), ("redirect_uri", BACK)],
            "miniprogram",
        ),
        (
            vec![
                ("appid", &oa_id),
                ("redirect_uri", "https://evil.example/after-login"),
            ],
            "redirect_uri",
        ),
        (
            vec![
                ("appid", &oa_id),
                ("redirect_uri", "https://h5.example.com/after-login/"),
            ],
            "redirect_uri",
        ),
        (
            vec![
                ("appid", &oa_id),
                (
                    "redirect_uri",
                    "https://h5.example.com/after-login?next=//evil",
                ),
            ],
            "redirect_uri",
        ),
        (
            vec![
                ("appid", &oa_id),
                ("redirect_uri", "https://h5.example.com/"),
            ],
            "redirect_uri",
        ),
        (
            vec![("appid", &oa_id), ("redirect_uri", WEB_BACK)],
            "redirect_uri",
        ),
        (
            vec![
                ("appid", &oa_id),
                ("redirect_uri", BACK),
                ("scope", "snsapi_login"),
            ],
            "scope",
        ),
        (
            vec![
                ("appid", &web_id),
                ("redirect_uri", WEB_BACK),
                ("scope", "snsapi_base"),
            ],
            "scope",
        ),
        (
            vec![("appid", &oa_id), ("appid", &oa_id), ("redirect_uri", BACK)],
            "more than once",
        ),
    ];
    for (query, needle) in cases {
        let (status, body, headers) = authorize(&stack, &query).await;
        assert_eq!(status, 400, "{query:?}: {body}");
        assert!(headers.get("location").is_none(), "{query:?}");
        assert!(headers.get("set-cookie").is_none(), "{query:?}");
        assert_eq!(body["error"], "invalid_request");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(needle), "{query:?}: {description}");
    }
    assert_eq!(stack.count("ephemeral"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_sets_session_cookies_and_redirects_to_the_app() {
    let stack = start_process(&[]).await;
    let cookies = web_login(&stack, &oa(), BACK, "snsapi_userinfo", "alice").await;
    let at = &cookies[AT];
    assert!(
        at.contains("Path=/;")
            && at.contains("HttpOnly")
            && at.contains("Secure")
            && at.contains("SameSite=Lax"),
        "{at}"
    );
    assert!(at.contains("Max-Age=900"), "{at}");
    let rt = &cookies["weauth_rt"];
    assert!(
        rt.contains("Path=/v1/token/refresh")
            && rt.contains("SameSite=Strict")
            && rt.contains("HttpOnly"),
        "{rt}"
    );
    let rb = &cookies["__Host-weauth_rb"];
    assert!(
        rb.contains("Path=/;") && rb.contains("Secure") && rb.contains("SameSite=Strict"),
        "{rb}"
    );
    assert!(
        cookies[STATE_COOKIE].contains("Max-Age=0"),
        "the state cookie is cleared"
    );
    let claims = payload(&access_of(&cookies));
    assert_eq!(claims["appid"], oa().appid);
    assert_eq!(claims["openid"], stack.mock.openid_in(&oa().appid, "alice"));
    assert_eq!(claims["unionid"], stack.mock.unionid("alice"));
    assert_eq!(stack.count("sessions"), 1);
    assert_eq!(stack.count("ephemeral"), 0, "the state was taken");
    // WeChat's user tokens never reach the browser or the log.
    let log = stack.issuer.log_text();
    assert!(
        !log.contains(&stack.mock.openid_in(&oa().appid, "alice")),
        "openid logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_secure_false_drops_secure() {
    let stack = start(&[("WEAUTH_COOKIE_SECURE", "false")]).await;
    let cookies = web_login(&stack, &oa(), BACK, "snsapi_base", "bob").await;
    assert!(
        !cookies["weauth_at"].contains("Secure"),
        "{}",
        cookies["weauth_at"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_state_missing_malformed_forged_used_or_other_browser_400_nothing_written() {
    let stack = start(&[]).await;
    let started = start_login(&stack, &oa().appid, BACK, None).await;
    let code = stack.mock.oauth_code(&oa().appid, "alice", "snsapi_base");
    for (state, binding, needle) in [
        ("", Some(started.binding.as_str()), "state"),
        ("has-dash", Some(started.binding.as_str()), "malformed"),
        (
            "Forged0123456789abcdefABCDEF0123",
            Some(started.binding.as_str()),
            "unknown",
        ),
    ] {
        let (status, body, headers) = callback(&stack, Some(&code), state, binding).await;
        assert_eq!(status, 400, "{state}: {body}");
        assert!(headers.get("location").is_none());
        assert!(
            body["error_description"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    // Another browser: no binding cookie, or someone else's.
    let (status, body, _) =
        callback(&stack, Some(&code), &started.state, Some("someone-elses")).await;
    assert_another_browser(status, &body);
    // That attempt consumed the state: even the right browser cannot use it now.
    let (status, body, _) =
        callback(&stack, Some(&code), &started.state, Some(&started.binding)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );
    let second = start_login(&stack, &oa().appid, BACK, None).await;
    let (status, body, _) = callback(&stack, Some(&code), &second.state, None).await;
    assert_another_browser(status, &body);
    // Used: a completed login replayed.
    let third = start_login(&stack, &oa().appid, BACK, None).await;
    let code = stack.mock.oauth_code(&oa().appid, "alice", "snsapi_base");
    let (status, _, _) = callback(&stack, Some(&code), &third.state, Some(&third.binding)).await;
    assert_eq!(status, 302);
    let sessions = stack.count("sessions");
    let (status, body, headers) =
        callback(&stack, Some(&code), &third.state, Some(&third.binding)).await;
    assert_eq!(status, 400, "{body}");
    assert!(!set_cookies(&headers).contains_key(AT));
    assert_eq!(stack.count("sessions"), sessions, "nothing written");
    assert_eq!(stack.count("sessions"), 1);
}

/// With `Secure` cookies the binding is read only as `__Host-weauth_oauth`, which a browser
/// takes only from this host: the same value under the plain name — all a sibling host can
/// plant (`Domain=` the parent) — is another browser's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_under_a_name_a_sibling_host_can_set_is_not_read() {
    let stack = start(&[]).await;
    let started = start_login(&stack, &oa().appid, BACK, None).await;
    let code = stack.mock.oauth_code(&oa().appid, "alice", "snsapi_base");
    let planted = format!("weauth_oauth={}", started.binding);
    let (status, body, _) =
        callback_with_cookie(&stack, Some(&code), &started.state, Some(&planted)).await;
    assert_another_browser(status, &body);
    assert_eq!(stack.count("sessions"), 0);
}

/// Nor under our binding cookie's name behind a Unicode space: a sibling host may set
/// `\u{2000}__Host-weauth_oauth` with `Domain=` (to a browser it lacks the `__Host-` prefix),
/// and read as ours it bound an attacker's WeChat approval to the victim's browser (login
/// CSRF).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_behind_a_unicode_space_is_not_read() {
    let stack = start(&[]).await;
    let started = start_login(&stack, &oa().appid, BACK, None).await;
    let code = stack.mock.oauth_code(&oa().appid, "mallory", "snsapi_base");
    let planted = format!("\u{2000}__Host-weauth_oauth={}", started.binding);
    let (status, body, headers) =
        callback_with_cookie(&stack, Some(&code), &started.state, Some(&planted)).await;
    // Refused as a browser without the binding, not for the header's bytes.
    assert_another_browser(status, &body);
    assert!(headers.get("location").is_none());
    assert_eq!(stack.count("sessions"), 0);
}

/// Two tabs: the second authorize replaces the first's binding cookie, so the first tab's
/// callback is refused (WEB-LOGIN.md) — and leaves the cookie to the second tab's login, which
/// completes. The refusal used to delete it, failing both; so could any cross-site link to the
/// callback with a made-up state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_tabs_refused_callback_leaves_the_second_tabs_login_alone() {
    let stack = start(&[]).await;
    let first = start_login(&stack, &oa().appid, BACK, None).await;
    let second = start_login(&stack, &oa().appid, BACK, None).await;
    let code = stack.mock.oauth_code(&oa().appid, "alice", "snsapi_base");
    // The browser holds the second tab's cookie only.
    let (status, body, headers) =
        callback(&stack, Some(&code), &first.state, Some(&second.binding)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        !set_cookies(&headers).contains_key(STATE_COOKIE),
        "the refusal must not touch the second tab's binding cookie: {headers:?}"
    );
    let (status, _, headers) = callback(
        &stack,
        Some(&code),
        "Forged0123456789abcdefABCDEF0123",
        Some(&second.binding),
    )
    .await;
    assert_eq!(status, 400);
    assert!(!set_cookies(&headers).contains_key(STATE_COOKIE));
    let code = stack.mock.oauth_code(&oa().appid, "alice", "snsapi_base");
    let (status, body, headers) =
        callback(&stack, Some(&code), &second.state, Some(&second.binding)).await;
    assert_eq!(status, 302, "{body}");
    let cookies = set_cookies(&headers);
    assert!(cookies.contains_key(AT));
    assert!(cookies[STATE_COOKIE].contains("Max-Age=0"), "used: cleared");
}

/// An issuer behind a trusted proxy on loopback, allowing one login per minute per client.
async fn one_login_a_minute_behind_a_proxy() -> Stack {
    start(&[
        ("WEAUTH_LOGIN_RATE", "1"),
        ("WEAUTH_LOGIN_BURST", "1"),
        ("WEAUTH_TRUSTED_PROXIES", "127.0.0.1/32,::1/128"),
    ])
    .await
}

/// `/v1/web/authorize`'s status for a request whose `X-Forwarded-For` has these lines.
async fn authorize_forwarded_for(stack: &Stack, lines: &[&str]) -> u16 {
    let mut request = stack
        .http
        .get(stack.url("/v1/web/authorize"))
        .query(&[("appid", oa().appid.as_str()), ("redirect_uri", BACK)]);
    for line in lines {
        request = request.header("x-forwarded-for", *line);
    }
    request.send().await.unwrap().status().as_u16()
}

/// The login rate limit keeps one bucket per IPv6 /64 (one host's or subscriber's prefix):
/// cycling through the addresses of one's own /64 used to get a fresh bucket for each (and a
/// pending login stored per call on `/v1/web/authorize`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rate_limit_one_bucket_per_ipv6_64() {
    let stack = one_login_a_minute_behind_a_proxy().await;
    let mut statuses = Vec::new();
    for i in 1..=4 {
        let client = format!("2001:db8:1:2::{i:x}");
        statuses.push(authorize_forwarded_for(&stack, &[&client]).await);
    }
    assert_eq!(statuses, vec![302, 429, 429, 429], "one /64, one client");
    // Another /64 is another client.
    assert_eq!(
        authorize_forwarded_for(&stack, &["2001:db8:1:3::1"]).await,
        302
    );
}

/// `X-Forwarded-For` in two lines — the client's own, then the line a trusted proxy appended
/// for the hop it saw — is read as one list (RFC 9110 §5.3): the client is the proxy's hop,
/// whatever the client wrote. Only the first line was read, so a client varying its own line
/// escaped the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_lines_read_as_one_list() {
    let stack = one_login_a_minute_behind_a_proxy().await;
    let mut statuses = Vec::new();
    for i in 1..=3 {
        let own = format!("198.51.100.{i}");
        statuses.push(authorize_forwarded_for(&stack, &[&own, "203.0.113.9"]).await);
    }
    assert_eq!(statuses, vec![302, 429, 429], "one client: 203.0.113.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_without_code_is_refused_consent_400() {
    let stack = start(&[]).await;
    let started = start_login(&stack, &oa().appid, BACK, None).await;
    let (status, body, headers) =
        callback(&stack, None, &started.state, Some(&started.binding)).await;
    assert_eq!(status, 400);
    assert!(headers.get("location").is_none());
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("did not authorize"),
        "{body}"
    );
    assert_eq!(stack.count("sessions"), 0);
    assert_eq!(stack.mock.calls("oauth2_access_token"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_wechat_errors_mapped_and_nothing_written() {
    let stack = start(&[]).await;
    let cases: Vec<(&str, Fault, u16, &str)> = vec![
        (
            "oauth2_access_token",
            Fault::Errcode {
                errcode: 40029,
                errmsg: "invalid code".into(),
            },
            400,
            "invalid_grant",
        ),
        (
            "oauth2_access_token",
            Fault::Errcode {
                errcode: 40163,
                errmsg: "code been used".into(),
            },
            400,
            "invalid_grant",
        ),
        (
            "oauth2_access_token",
            Fault::Errcode {
                errcode: 42003,
                errmsg: "code expired".into(),
            },
            400,
            "invalid_grant",
        ),
        (
            "oauth2_access_token",
            Fault::Errcode {
                errcode: 45011,
                errmsg: "limit".into(),
            },
            429,
            "rate_limited",
        ),
        (
            "oauth2_access_token",
            Fault::Errcode {
                errcode: -1,
                errmsg: "system error".into(),
            },
            503,
            "temporarily_unavailable",
        ),
        (
            "oauth2_access_token",
            Fault::Errcode {
                errcode: 40013,
                errmsg: "invalid appid".into(),
            },
            502,
            "upstream_error",
        ),
        (
            "oauth2_access_token",
            Fault::Errcode {
                errcode: 40125,
                errmsg: "invalid appsecret".into(),
            },
            502,
            "upstream_error",
        ),
        (
            "oauth2_access_token",
            Fault::Status(502),
            502,
            "upstream_error",
        ),
        ("oauth2_access_token", Fault::Garbage, 502, "upstream_error"),
        ("oauth2_access_token", Fault::Html, 502, "upstream_error"),
        // `sns/userinfo` is asked only for a unionid the token answer lacks: the unbound
        // account's (the profile itself is not kept).
        (
            "userinfo",
            Fault::Errcode {
                errcode: 48001,
                errmsg: "api unauthorized".into(),
            },
            403,
            "access_denied",
        ),
        (
            "userinfo",
            Fault::Errcode {
                errcode: -1,
                errmsg: "system error".into(),
            },
            503,
            "temporarily_unavailable",
        ),
    ];
    for (route, fault, status_expected, code_expected) in cases {
        let app = if route == "userinfo" {
            unbound_oa()
        } else {
            oa()
        };
        let started = start_login(&stack, &app.appid, BACK, Some("snsapi_userinfo")).await;
        let code = stack
            .mock
            .oauth_code(&app.appid, "alice", "snsapi_userinfo");
        stack.mock.inject(route, fault.clone(), 1);
        let (status, body, headers) =
            callback(&stack, Some(&code), &started.state, Some(&started.binding)).await;
        assert_eq!(status, status_expected, "{route} {fault:?}: {body}");
        assert_eq!(body["error"], code_expected, "{route} {fault:?}: {body}");
        assert!(headers.get("location").is_none());
        assert!(!set_cookies(&headers).contains_key(AT));
        assert_eq!(
            stack.count("sessions"),
            0,
            "{route} {fault:?}: nothing written"
        );
    }
    // A bound account's token answer carries the unionid: `sns/userinfo` is not asked, so its
    // failure does not fail the login (an outage of it blocked every web login for a profile
    // that was thrown away).
    let started = start_login(&stack, &oa().appid, BACK, Some("snsapi_userinfo")).await;
    let code = stack
        .mock
        .oauth_code(&oa().appid, "alice", "snsapi_userinfo");
    stack.mock.inject(
        "userinfo",
        Fault::Errcode {
            errcode: -1,
            errmsg: "system error".into(),
        },
        1,
    );
    let (status, body, headers) =
        callback(&stack, Some(&code), &started.state, Some(&started.binding)).await;
    assert_eq!(status, 302, "{body}");
    let cookies = set_cookies(&headers);
    assert!(payload(&access_of(&cookies))["unionid"].is_string());
    assert_eq!(stack.count("sessions"), 1);
    // Real (not injected) WeChat refusals: a website's code posted for the official account,
    // and a code used twice.
    let sessions = stack.count("sessions");
    let started = start_login(&stack, &oa().appid, BACK, None).await;
    let foreign = stack
        .mock
        .oauth_code(&website().appid, "alice", "snsapi_login");
    let (status, body, _) = callback(
        &stack,
        Some(&foreign),
        &started.state,
        Some(&started.binding),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert_eq!(stack.count("sessions"), sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_snapshot_user_refused_403() {
    let stack = start(&[]).await;
    let started = start_login(&stack, &oa().appid, BACK, None).await;
    // The mock's authorize page, as a browser in snapshot mode would see it.
    let page = stack
        .http
        .get(&started.location)
        .header("cookie", "mock_user=snap; mock_action=snapshot")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 302);
    let back = url::Url::parse(page.headers()["location"].to_str().unwrap()).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let state = back
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(state, started.state);
    let (status, body, _) = callback(&stack, Some(&code), &state, Some(&started.binding)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("snapshot"),
        "{body}"
    );
    assert_eq!(stack.count("sessions"), 0);
    assert_eq!(stack.count("users"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_mini_program_official_account_and_website_same_sub() {
    let stack = start(&[]).await;
    let mini = stack.login("alice").await;
    let mini_sub = payload(mini["access_token"].as_str().unwrap())["sub"].clone();
    let oa_cookies = web_login(&stack, &oa(), BACK, "snsapi_userinfo", "alice").await;
    let web_cookies = web_login(&stack, &website(), WEB_BACK, "snsapi_login", "alice").await;
    assert_eq!(payload(&access_of(&oa_cookies))["sub"], mini_sub);
    assert_eq!(payload(&access_of(&web_cookies))["sub"], mini_sub);
    assert_eq!(payload(&access_of(&web_cookies))["appid"], website().appid);
    let bob = web_login(&stack, &oa(), BACK, "snsapi_userinfo", "bob").await;
    assert_ne!(payload(&access_of(&bob))["sub"], mini_sub);
    assert_eq!(stack.count("users"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_seen_without_unionid_then_with_it_linked_not_duplicated() {
    let stack = start(&[]).await;
    // snsapi_base gives no unionid: a user known by (official account, openid) only.
    let base = web_login(&stack, &oa(), BACK, "snsapi_base", "carol").await;
    let base_claims = payload(&access_of(&base));
    assert!(base_claims.get("unionid").is_none(), "{base_claims}");
    // The same person grants snsapi_userinfo later: same user, unionid now attached…
    let info = web_login(&stack, &oa(), BACK, "snsapi_userinfo", "carol").await;
    assert_eq!(payload(&access_of(&info))["sub"], base_claims["sub"]);
    // …so the mini-program login (same unionid) finds the same user.
    let mini = stack.login("carol").await;
    assert_eq!(
        payload(mini["access_token"].as_str().unwrap())["sub"],
        base_claims["sub"]
    );
    assert_eq!(stack.count("users"), 1);
}

/// The linking conflict: an identity first seen without a unionid (the official account's
/// `snsapi_base`), the same person then logging in to the mini-program (a second user, with
/// the unionid), then granting `snsapi_userinfo` to the official account. The login goes to the
/// first user and the unionid stays with the second (WEB-LOGIN.md) — so the first user's token
/// and `/v1/me` do not carry it: two users asserting one unionid at the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_conflict_the_unionid_stays_with_its_user_in_tokens_too() {
    let stack = start(&[]).await;
    let base = web_login(&stack, &oa(), BACK, "snsapi_base", "carl").await;
    let first = payload(&access_of(&base))["sub"].clone();
    let mini = stack.login("carl").await;
    let second = payload(mini["access_token"].as_str().unwrap());
    assert_ne!(second["sub"], first);
    assert!(second["unionid"].is_string(), "{second}");
    let info = web_login(&stack, &oa(), BACK, "snsapi_userinfo", "carl").await;
    let claims = payload(&access_of(&info));
    assert_eq!(claims["sub"], first);
    assert!(claims.get("unionid").is_none(), "{claims}");
    let (status, me, _) = stack.get("/v1/me", Some(&access_of(&info))).await;
    assert_eq!(status, 200, "{me}");
    assert!(me.get("unionid").is_none(), "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_session_mini_program_routes_400_and_me_by_cookie() {
    let stack = start(&[]).await;
    let cookies = web_login(&stack, &oa(), BACK, "snsapi_base", "dave").await;
    let token = access_of(&cookies);
    for (path, body) in [
        (
            "/v1/me/decrypt",
            Some(json!({"encryptedData": "AAAA", "iv": "AAAAAAAAAAAAAAAAAAAAAA=="})),
        ),
        ("/v1/me/phone", Some(json!({"code": "c"}))),
    ] {
        let (status, body, _) = stack.post_auth(path, &token, body).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("web login"),
            "{body}"
        );
    }
    let (status, body, _) = stack.get("/v1/me/session", Some(&token)).await;
    assert_eq!(status, 400, "{body}");
    // GET /v1/me with the cookie alone.
    let response = stack
        .http
        .get(stack.url("/v1/me"))
        .header("cookie", format!("{AT}={token}"))
        .send()
        .await
        .unwrap();
    let (status, me, _) = split(response).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["appid"], oa().appid);
}

async fn cookie_post(
    stack: &Stack,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = stack
        .http
        .post(stack.url(path))
        .header("cookie", cookie_header(cookie));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    split(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_logout_needs_allowed_origin_then_clears_cookies_and_revokes() {
    let stack = start(&[]).await;
    let cookies = web_login(&stack, &oa(), BACK, "snsapi_base", "erin").await;
    let token = access_of(&cookies);
    let cookie = format!("{AT}={token}");
    for origin in [
        None,
        Some("https://evil.example"),
        Some("https://h5.example.com:8443"),
        Some("null"),
    ] {
        let (status, body, _) = cookie_post(&stack, "/v1/logout", &cookie, origin).await;
        assert_eq!(status, 403, "{origin:?}: {body}");
        assert_eq!(body["error"], "access_denied");
    }
    // A bearer header needs no Origin (a cross-site page cannot set it).
    let (status, _, _) = stack.get("/v1/me", Some(&token)).await;
    assert_eq!(status, 200, "still logged in");
    let (status, _, headers) = cookie_post(&stack, "/v1/logout", &cookie, Some(H5_ORIGIN)).await;
    assert_eq!(status, 204);
    let cleared = set_cookies(&headers);
    assert!(cleared[AT].starts_with("__Host-weauth_at=;") && cleared[AT].contains("Max-Age=0"));
    assert!(
        cleared["weauth_rt"].contains("Path=/v1/token/refresh")
            && cleared["weauth_rt"].contains("Max-Age=0")
    );
    let (status, _, _) = stack.get("/v1/me", Some(&token)).await;
    assert_eq!(status, 401, "revoked");
}

/// The access cookie lapses with its token (its `Max-Age`) while the refresh cookie, scoped
/// to the refresh route, stays: "log out" from a page of the site then has nothing to revoke
/// (401) but clears both cookies, so that no one at the machine gets the session back through
/// the refresh route. It answered 401 and left the refresh cookie. From another origin, or
/// with a bearer header, nothing is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_logout_after_the_access_cookie_lapsed_clears_both_cookies() {
    let stack = start(&[]).await;
    web_login(&stack, &oa(), BACK, "snsapi_base", "gina").await;
    let (status, body, headers) = cookie_post(&stack, "/v1/logout", "", Some(H5_ORIGIN)).await;
    assert_eq!(status, 401, "{body}");
    let cleared = set_cookies(&headers);
    assert!(
        cleared["weauth_rt"].contains("Path=/v1/token/refresh")
            && cleared["weauth_rt"].contains("Max-Age=0"),
        "{cleared:?}"
    );
    assert!(cleared[AT].contains("Max-Age=0"), "{cleared:?}");
    assert!(
        cleared["__Host-weauth_rb"].contains("Max-Age=0"),
        "{cleared:?}"
    );
    let (status, _, headers) =
        cookie_post(&stack, "/v1/logout", "", Some("https://evil.example")).await;
    assert_eq!(status, 401);
    assert!(
        set_cookies(&headers).is_empty(),
        "cleared from another origin"
    );
    let response = stack
        .http
        .post(stack.url("/v1/logout"))
        .header("origin", H5_ORIGIN)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    let (status, _, headers) = split(response).await;
    assert_eq!(status, 401);
    assert!(
        set_cookies(&headers).is_empty(),
        "cleared for a bearer client"
    );
}

/// A cookie the site's pages set with a raw UTF-8 value (`city=北京`, sent by the browser as
/// it is, in the one `Cookie` header with ours): the callback, the cookie's authentication and
/// the cookie refresh still find ours. The whole header was dropped (it is not visible ASCII):
/// 400 "started in another browser", 401, and 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_beside_a_raw_utf8_cookie_are_read() {
    let stack = start(&[]).await;
    let started = start_login(&stack, &oa().appid, BACK, Some("snsapi_base")).await;
    let code = stack.mock.oauth_code(&oa().appid, "hana", "snsapi_base");
    let cookie = format!("city=北京; {STATE_COOKIE}={}", started.binding);
    let (status, body, headers) =
        callback_with_cookie(&stack, Some(&code), &started.state, Some(&cookie)).await;
    assert_eq!(status, 302, "{body}");
    let cookies = set_cookies(&headers);
    let me = stack
        .http
        .get(stack.url("/v1/me"))
        .header(
            "cookie",
            cookie_header(&format!("{AT}={}; lang=中文", access_of(&cookies))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let refresh = format!(
        "weauth_rt={}; city=北京; __Host-weauth_rb={}",
        cookie_value(&cookies["weauth_rt"]),
        cookie_value(&cookies["__Host-weauth_rb"])
    );
    let (status, body, _) =
        cookie_post(&stack, "/v1/token/refresh", &refresh, Some(H5_ORIGIN)).await;
    assert_eq!(status, 204, "{body}");
}

/// The cookie form of the refresh reads no body, so it takes its place among the requests under
/// way (`WEAUTH_MAX_IN_FLIGHT`) at once: it took none (a request with a body takes its place
/// once the body is read), and refreshes sent past the cap each reached the store — and ran to
/// their end, their clients gone or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_refresh_past_max_in_flight_answered_503_at_once() {
    let stack = start(&[
        ("WEAUTH_MAX_IN_FLIGHT", "1"),
        ("WEAUTH_WECHAT_TIMEOUT", "30s"),
    ])
    .await;
    let cookies = web_login(&stack, &oa(), BACK, "snsapi_base", "grace").await;
    let cookie = format!(
        "weauth_rt={}; __Host-weauth_rb={}",
        cookie_value(&cookies["weauth_rt"]),
        cookie_value(&cookies["__Host-weauth_rb"])
    );
    let held = stack.held_login("held", "peak").await;
    let (status, body, headers) =
        cookie_post(&stack, "/v1/token/refresh", &cookie, Some(H5_ORIGIN)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    let metrics = common::metrics_text(&stack.http, &stack.url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"weauth_http_shed_total{route="refresh"} 1"#),
        "{metrics}"
    );
    stack.mock.release("peak");
    assert_eq!(held.await.unwrap(), 200);
    // Turned away, not spent: the same cookie refreshes now.
    let (status, body, _) =
        cookie_post(&stack, "/v1/token/refresh", &cookie, Some(H5_ORIGIN)).await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_refresh_rotates_both_cookies_and_reuse_clears_them() {
    // No reuse grace: the old cookie's second use is theft at once.
    let stack = start(&[("WEAUTH_REFRESH_REUSE_GRACE", "0s")]).await;
    let cookies = web_login(&stack, &oa(), BACK, "snsapi_base", "frank").await;
    let rt = cookie_value(&cookies["weauth_rt"]);
    let binding = cookie_value(&cookies["__Host-weauth_rb"]);
    let cookie = format!("weauth_rt={rt}; __Host-weauth_rb={binding}");
    let (status, body, _) = cookie_post(
        &stack,
        "/v1/token/refresh",
        &cookie,
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // The refresh cookie without its binding, as a sibling host plants one (it cannot set a
    // `__Host-` cookie) to walk the browser into its own user's session: refused before the
    // store sees it, the session untouched.
    for unbound in [
        format!("weauth_rt={rt}"),
        format!("weauth_rt={rt}; __Host-weauth_rb={}", "0".repeat(64)),
    ] {
        let (status, body, _) =
            cookie_post(&stack, "/v1/token/refresh", &unbound, Some(H5_ORIGIN)).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("not bound"),
            "{body}"
        );
    }
    let (status, body, headers) =
        cookie_post(&stack, "/v1/token/refresh", &cookie, Some(H5_ORIGIN)).await;
    assert_eq!(status, 204, "{body}");
    let rotated = set_cookies(&headers);
    assert_ne!(cookie_value(&rotated["weauth_rt"]), rt);
    assert_ne!(access_of(&rotated), access_of(&cookies));
    assert_eq!(
        payload(&access_of(&rotated))["sub"],
        payload(&access_of(&cookies))["sub"]
    );
    // The old refresh cookie again: reuse, the session is revoked and the cookies cleared.
    let (status, body, headers) =
        cookie_post(&stack, "/v1/token/refresh", &cookie, Some(H5_ORIGIN)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert!(set_cookies(&headers)[AT].contains("Max-Age=0"));
    let (status, _, _) = stack.get("/v1/me", Some(&access_of(&rotated))).await;
    assert_eq!(status, 401, "reuse revoked the session");
}

/// A sibling host can plant its own `weauth_rt` under `Domain=` the parent domain, which the
/// issuer's host-only clears never remove; the browser then sends both. The refresh uses the
/// one the `__Host-` binding names (refusing both ended the browser's refreshes until the
/// planted cookie expired: a denial of service by any sibling host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_refresh_takes_the_bound_cookie_beside_a_planted_one() {
    let stack = start(&[]).await;
    let mut cookies = web_login(&stack, &oa(), BACK, "snsapi_base", "hank").await;
    let planted = "P".repeat(43);
    for planted_first in [true, false] {
        let rt = cookie_value(&cookies["weauth_rt"]);
        let binding = cookie_value(&cookies["__Host-weauth_rb"]);
        let both = if planted_first {
            format!("weauth_rt={planted}; weauth_rt={rt}; __Host-weauth_rb={binding}")
        } else {
            format!("__Host-weauth_rb={binding}; weauth_rt={rt}; weauth_rt={planted}")
        };
        let (status, body, headers) =
            cookie_post(&stack, "/v1/token/refresh", &both, Some(H5_ORIGIN)).await;
        assert_eq!(status, 204, "{body}");
        let rotated = set_cookies(&headers);
        assert_ne!(cookie_value(&rotated["weauth_rt"]), rt);
        cookies = rotated;
    }
    // Two and no binding: which one is ours cannot be told.
    let rt = cookie_value(&cookies["weauth_rt"]);
    let (status, body, _) = cookie_post(
        &stack,
        "/v1/token/refresh",
        &format!("weauth_rt={planted}; weauth_rt={rt}"),
        Some(H5_ORIGIN),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("more than once"),
        "{body}"
    );
}

/// A cookie refresh refused because the user is banned clears the cookies, as every refused
/// refresh does (they kept the refresh cookie of a session the ban revoked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_refresh_of_a_banned_user_clears_the_cookies() {
    let stack = start(&[]).await;
    let cookies = web_login(&stack, &oa(), BACK, "snsapi_base", "gwen").await;
    let sub = payload(&access_of(&cookies))["sub"].clone();
    let (status, body, _) = stack
        .post_auth(
            "/v1/admin/ban",
            common::ADMIN,
            Some(json!({"sub": sub, "until": 4_000_000_000i64})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let cookie = format!(
        "weauth_rt={}; __Host-weauth_rb={}",
        cookie_value(&cookies["weauth_rt"]),
        cookie_value(&cookies["__Host-weauth_rb"])
    );
    let (status, body, headers) =
        cookie_post(&stack, "/v1/token/refresh", &cookie, Some(H5_ORIGIN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("user_banned")),
        "{body}"
    );
    let cleared = set_cookies(&headers);
    assert!(cleared[AT].contains("Max-Age=0"), "{cleared:?}");
    assert!(cleared["weauth_rt"].contains("Max-Age=0"), "{cleared:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_appid_optional_with_one_miniprogram_refused_for_other_kinds() {
    let stack = start(&[]).await;
    let code = stack.mock.login("gina").code;
    let (status, body, _) = stack
        .post("/v1/login", json!({"code": code, "appid": APPID}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        payload(body["access_token"].as_str().unwrap())["appid"],
        APPID
    );
    for (appid, needle) in [
        (oa().appid, "needs a miniprogram"),
        ("wxnope".to_string(), "unknown appid"),
    ] {
        let code = stack.mock.login("gina").code;
        let (status, body, _) = stack
            .post("/v1/login", json!({"code": code, "appid": appid}))
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error_description"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    assert_eq!(
        stack.mock.calls("jscode2session"),
        1,
        "refused before WeChat"
    );
}

#[test]
fn apps_file_errors_stop_start_naming_the_entry() {
    let err = common::start_error(
        r#"{"apps":[{"appid":"wx1","secret":"a","kind":"miniprogram"},{"appid":"wx1","secret":"b","kind":"miniprogram"}]}"#,
    );
    assert!(
        err.contains("WEAUTH_APPS_FILE") && err.contains("apps[1] (wx1): duplicate appid"),
        "{err}"
    );
    let err = common::start_error(
        r#"{"apps":[{"appid":"wxoa","secret":"a","kind":"official_account"}]}"#,
    );
    assert!(
        err.contains("apps[0] (wxoa)") && err.contains("redirect_uris"),
        "{err}"
    );
    let err = common::start_error(
        r#"{"apps":[{"appid":"wxoa","secret":"a","kind":"official_account","redirect_uris":["http://h5.example.com/"]}]}"#,
    );
    assert!(
        err.contains("apps[0] (wxoa)") && err.contains("https"),
        "{err}"
    );
    let err = common::start_error(
        r#"{"apps":[{"appid":"wx1","secret":"a","kind":"miniprogram","extra":1}]}"#,
    );
    assert!(err.contains("unknown field"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_wechat_timeout_503_nothing_written() {
    let stack = start(&[("WEAUTH_WECHAT_TIMEOUT", "300ms")]).await;
    let started = start_login(&stack, &oa().appid, BACK, None).await;
    let code = stack.mock.oauth_code(&oa().appid, "alice", "snsapi_base");
    stack.mock.inject("oauth2_access_token", Fault::Hang, 1);
    let (status, body, headers) =
        callback(&stack, Some(&code), &started.state, Some(&started.binding)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(headers.get("location").is_none());
    assert_eq!(stack.count("sessions"), 0);
}
