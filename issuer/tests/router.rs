//! The router without a socket: `api::handle` called directly with in-memory bodies, and a
//! fake WeChat injected through the `Wechat` trait (no mock server, no network).

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};
use weauth_issuer::api;
use weauth_issuer::app::App;
use weauth_issuer::clock::{Clock, ManualClock, SystemClock};
use weauth_issuer::config::{Config, Source};
use weauth_issuer::wechat::{BoxFuture, Code2Session, Wechat, WechatError};
use zeroize::Zeroizing;

/// Answers `good-*` codes with a user named after the code's suffix; `used` with 40163.
struct FakeWechat {
    calls: AtomicU32,
}

impl Wechat for FakeWechat {
    fn code2session<'a>(
        &'a self,
        code: &'a str,
    ) -> BoxFuture<'a, Result<Code2Session, WechatError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            // `good-<user>`, or `good-<user>#<n>` for another code of the same user.
            match code
                .strip_prefix("good-")
                .and_then(|user| user.split('#').next())
            {
                Some(user) => Ok(Code2Session {
                    openid: format!("o-{user}"),
                    session_key: Zeroizing::new("a2V5a2V5a2V5a2V5a2V5aw==".into()),
                    unionid: None,
                }),
                None => Err(WechatError::InvalidCode { errcode: 40163 }),
            }
        })
    }
}

async fn app(dir: &common::TempDir) -> (Arc<App>, Arc<FakeWechat>) {
    app_on(dir, Arc::new(SystemClock)).await
}

async fn app_on(dir: &common::TempDir, clock: Arc<dyn Clock>) -> (Arc<App>, Arc<FakeWechat>) {
    let vars: HashMap<&str, String> = HashMap::from([
        ("WEAUTH_WECHAT_APPID", "wx1".to_string()),
        ("WEAUTH_WECHAT_SECRET", "s".to_string()),
        (
            "WEAUTH_STORE",
            format!("sqlite://{}", dir.path().join("r.db").display()),
        ),
        ("WEAUTH_MAX_BODY", "512".to_string()),
        ("WEAUTH_FEED_TOKEN", "feed-token-1".to_string()),
    ]);
    let lookup = move |name: &str| vars.get(name).cloned();
    let read_file = |_: &str| Err(std::io::Error::other("no files"));
    let config = Config::from_source(&Source {
        lookup: &lookup,
        read_file: &read_file,
    })
    .unwrap();
    let fake = Arc::new(FakeWechat {
        calls: AtomicU32::new(0),
    });
    let app = App::build_with_clock(config, Some(fake.clone() as Arc<dyn Wechat>), clock)
        .await
        .unwrap();
    (app, fake)
}

fn peer() -> SocketAddr {
    "192.0.2.1:5000".parse().unwrap()
}

async fn call(app: &Arc<App>, req: Request<Full<Bytes>>) -> (u16, Value) {
    let response = api::handle(app.clone(), peer(), req).await;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, body)
}

fn post_json(path: &str, body: Value) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn router_login_refresh_me_without_network() {
    let dir = common::temp_dir("router");
    let (app, fake) = app(&dir).await;
    let (status, tokens) = call(&app, post_json("/v1/login", json!({"code": "good-amy"}))).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let me = Request::get("/v1/me")
        .header("authorization", format!("Bearer {access}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, profile) = call(&app, me).await;
    assert_eq!(status, 200);
    assert_eq!(profile["openid"], "o-amy");
    let (status, _) = call(
        &app,
        post_json(
            "/v1/token/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    // A used code is refused locally: WeChat is not asked twice.
    let (status, body) = call(&app, post_json("/v1/login", json!({"code": "good-amy"}))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    // The session_key accessor (for the decrypt routes) returns what WeChat sent.
    let sid = common::payload(access)["sid"].as_str().unwrap().to_string();
    let key = app.userdata.session_key(&sid).await.unwrap();
    assert_eq!(key.as_str(), "a2V5a2V5a2V5a2V5a2V5aw==");
}

#[tokio::test]
async fn router_error_shapes() {
    let dir = common::temp_dir("router");
    let (app, _) = app(&dir).await;
    let (status, body) = call(&app, post_json("/v1/login", json!({"code": "bad"}))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = call(
        &app,
        Request::get("/v1/nothing")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // The method check answers as the hand-written dispatcher did before axum: a JSON 405
    // naming the one method in `Allow`, HEAD included (a GET route does not answer HEAD), and
    // a path with a trailing slash is another path.
    for (method, path, allow) in [
        ("PUT", "/v1/login", "POST"),
        ("GET", "/v1/login", "POST"),
        ("POST", "/v1/me", "GET"),
        ("HEAD", "/healthz", "GET"),
        ("DELETE", "/v1/revocations", "GET"),
    ] {
        let response = api::handle(
            app.clone(),
            peer(),
            Request::builder()
                .method(method)
                .uri(path)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        if method != "HEAD" {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], "method_not_allowed", "{method} {path}");
        }
    }
    let (status, body) = call(
        &app,
        Request::get("/healthz/")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let big = json!({"code": "x".repeat(600)});
    let (status, body) = call(&app, post_json("/v1/login", big)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("request_too_large"))
    );
    let (status, _) = call(
        &app,
        Request::post("/v1/login")
            .body(Full::new(Bytes::from_static(b"code=abc")))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 415);
    // Admin API disabled without WEAUTH_ADMIN_TOKEN.
    let (status, body) = call(&app, post_json("/v1/admin/revoke", json!({"jti": "x"}))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
}

/// A ban whose request arrived before a login but was written after the login read the user's
/// grants (the ban's body slow, its write queued behind a lock) still ends that login's
/// session and refuses its token: its revocation covers what was issued until the ban was in
/// force, not until its request arrived.
#[tokio::test]
async fn a_ban_written_after_a_racing_login_still_ends_its_session() {
    let dir = common::temp_dir("router");
    let clock = Arc::new(ManualClock::starting_now());
    let (app, _) = app_on(&dir, clock.clone()).await;
    let me = |access: &Value| {
        Request::get("/v1/me")
            .header(
                "authorization",
                format!("Bearer {}", access.as_str().unwrap()),
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (status, first) = call(&app, post_json("/v1/login", json!({"code": "good-ban"}))).await;
    assert_eq!(status, 200, "{first}");
    let sub = common::payload(first["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    // The ban request arrives; two seconds later, before it is written, the user logs in.
    let arrived = clock.now();
    clock.advance_secs(2);
    let (status, racing) = call(&app, post_json("/v1/login", json!({"code": "good-ban#2"}))).await;
    assert_eq!(status, 200, "no ban yet: {racing}");
    let banned = app.admin.ban(sub, None, None, arrived).await.unwrap();
    assert_eq!(banned.revocation.issued_before, Some(arrived + 3));
    for pair in [&first, &racing] {
        let (status, body) = call(&app, me(&pair["access_token"])).await;
        assert_eq!(status, 401, "{body}");
        let (status, body) = call(
            &app,
            post_json(
                "/v1/token/refresh",
                json!({"refresh_token": pair["refresh_token"]}),
            ),
        )
        .await;
        assert_eq!(status, 403, "{body}");
    }
    let sid = common::payload(racing["access_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let session = app.store.session(&sid).await.unwrap().unwrap();
    assert!(
        session.revoked_at.is_some(),
        "the racing login's session ended"
    );
}

/// Time is an argument: on a manual clock, the reuse grace and the access token's lifetime
/// pass without sleeping.
#[tokio::test]
async fn manual_clock_drives_the_reuse_grace_and_token_expiry() {
    let dir = common::temp_dir("router");
    let clock = Arc::new(ManualClock::starting_now());
    let (app, _) = app_on(&dir, clock.clone()).await;
    let me = |access: &str| {
        Request::get("/v1/me")
            .header("authorization", format!("Bearer {access}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let refresh = |token: &Value| post_json("/v1/token/refresh", json!({"refresh_token": token}));
    let (_, login) = call(&app, post_json("/v1/login", json!({"code": "good-kim"}))).await;
    let (status, _) = call(&app, refresh(&login["refresh_token"])).await;
    assert_eq!(status, 200);
    // Within the default 10 s grace: the same refresh token, a new access token.
    clock.advance_secs(10);
    let (status, repeat) = call(&app, refresh(&login["refresh_token"])).await;
    assert_eq!(status, 200, "{repeat}");
    // One second later the grace is over: reuse, the session is revoked.
    clock.advance_secs(1);
    let (status, body) = call(&app, refresh(&login["refresh_token"])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = call(&app, me(repeat["access_token"].as_str().unwrap())).await;
    assert_eq!(status, 401, "revoked with its session");

    // A fresh session's access token expires after WEAUTH_ACCESS_TTL (15 min) + leeway (60 s).
    let (_, login) = call(&app, post_json("/v1/login", json!({"code": "good-lee"}))).await;
    let access = login["access_token"].as_str().unwrap().to_string();
    clock.advance_secs(15 * 60);
    assert_eq!(call(&app, me(&access)).await.0, 200, "within the leeway");
    clock.advance_secs(61);
    let (status, body) = call(&app, me(&access)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
}
