//! A test double of WeChat's server API, quirks included, plus control routes that stand in
//! for the client side (`wx.login`, `getPhoneNumber`, `wx.getUserInfo`'s encrypted data).
//!
//! WeChat API routes (names in brackets are the route names used for faults and counters):
//!
//! - `GET /sns/jscode2session?appid&secret&js_code&grant_type=authorization_code`
//!   [`jscode2session`] → `{"session_key","openid"[,"unionid"]}` with **no** `errcode`, served
//!   as `Content-Type: text/plain`. Codes are single-use (40163 `code been used`) and expire
//!   after 5 minutes (40029 `invalid code`); 40013 bad appid, 40125 bad secret, 40002 bad
//!   grant_type, 41008 missing code. `unionid` only when [`MockConfig::unionid`] is set.
//! - `POST /cgi-bin/stable_token` `{"grant_type":"client_credential","appid","secret",
//!   "force_refresh"}` [`stable_token`] and `GET /cgi-bin/token?grant_type&appid&secret`
//!   [`token`] → `{"access_token","expires_in"}`. A new token replaces the previous one of the
//!   same kind, which keeps working for [`MockConfig::token_overlap`] and then gets 40001;
//!   `stable_token` without `force_refresh` returns the current stable token (the same one to
//!   every caller) until its last 5 minutes, when it hands out a new one, like WeChat.
//! - `POST /wxa/business/getuserphonenumber?access_token` `{"code"}` [`getuserphonenumber`] →
//!   `{"errcode":0,"errmsg":"ok","phone_info":{…,"watermark":{"timestamp","appid"}}}`; phone
//!   codes are single-use and live 5 minutes (40029 otherwise).
//! - `GET /wxa/checksession?access_token&openid&signature&sig_method=hmac_sha256`
//!   [`checksession`]: signature = hex(HMAC-SHA256(key = session_key text, "")); 87009 when
//!   it does not match the user's current session_key.
//!
//! Every error answers HTTP 200 with `{"errcode","errmsg"}` and an `errmsg` ending in
//! `, rid: <hex>`, like WeChat. Token-taking routes answer 40001 for an unknown or replaced
//! token and 42001 for an expired one.
//!
//! Control routes (not counted): `GET /mock/login?user=NAME` → `{"code","openid"}` (a fresh
//! code and a NEW session_key, like `wx.login`; the openid is stable per NAME);
//! `GET /mock/phonecode?user=NAME&phone=DIGITS[&country=86]` → `{"code"}`;
//! `POST /mock/encrypt {"user","data":{…}}` → `{"encryptedData","iv","rawData","signature"}`
//! with the user's CURRENT session_key; `POST /mock/faults {"route","times","fault"}` where
//! `fault` is `{"errcode":N[,"errmsg":"…"]}`, `{"status":502}`, `{"body":"…"}`, `"garbage"`, `"html"`,
//! `{"delay_ms":N}` or `"hang"`; `GET /mock/stats` → `{"<route>": calls, …}`;
//! `POST /mock/reset` clears faults and counters (`?all=1` also forgets codes, tokens and
//! session keys); `POST /mock/advance?seconds=N` moves the mock's clock forward;
//! `GET /healthz` → `ok`.

pub mod state;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::RngCore;
use serde_json::{json, Value};

use crate::serve::{self, param, query_pairs, read_body, respond, Request, Response, ServerHandle};
pub use state::Fault;
use state::{CodeError, CodeStore, FaultQueue, TokenCheck, TokenStore, User, CODE_TTL_MS, ROUTES};

/// How the mock is set up. Build with `MockConfig { unionid: true, ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The only appid the mock accepts (default `wx0123456789abcdef`).
    pub appid: String,
    /// The only secret the mock accepts (default `mock-secret`).
    pub secret: String,
    /// Whether the app is bound to an Open Platform account, so responses carry `unionid`
    /// (default false).
    pub unionid: bool,
    /// Where to listen (default `None` = 127.0.0.1 on a free port).
    pub listen: Option<SocketAddr>,
    /// How long a replaced access token keeps working (default 300 s, as at WeChat).
    pub token_overlap: Duration,
}

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            appid: "wx0123456789abcdef".to_string(),
            secret: "mock-secret".to_string(),
            unionid: false,
            listen: None,
            token_overlap: Duration::from_secs(300),
        }
    }
}

/// What `wx.login` gives a client: a fresh code, and (for tests) the openid it will map to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MockLogin {
    /// Single-use login code, valid 5 minutes.
    pub code: String,
    /// The user's stable openid for the mock's appid.
    pub openid: String,
}

/// A running mock WeChat. Dropping it (or [`MockWechat::shutdown`]) stops the server.
pub struct MockWechat {
    shared: Arc<Shared>,
    server: ServerHandle,
}

impl MockWechat {
    /// Starts the mock on `cfg.listen` (default 127.0.0.1:0) in the current tokio runtime.
    pub async fn start(cfg: MockConfig) -> io::Result<MockWechat> {
        let listen = cfg
            .listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let shared = Arc::new(Shared::new(cfg));
        let for_server = shared.clone();
        let server =
            ServerHandle::start(listen, move |req| handle(for_server.clone(), req)).await?;
        Ok(MockWechat { shared, server })
    }

    /// `http://ADDR`, to be used as `WEAUTH_WECHAT_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The configuration the mock runs with.
    pub fn config(&self) -> &MockConfig {
        &self.shared.cfg
    }

    /// Like `GET /mock/login?user=NAME`: a fresh code for `user`, and a new session_key.
    pub fn login(&self, user: &str) -> MockLogin {
        self.shared.login(user)
    }

    /// Like `GET /mock/phonecode`: a single-use code for `phone` (country code 86).
    pub fn phone_code(&self, user: &str, phone: &str) -> String {
        self.shared.phone_code(user, phone, "86")
    }

    /// The user's current session_key (the one of their latest login), by openid.
    pub fn session_key(&self, openid: &str) -> Option<String> {
        self.shared.lock().session_keys.get(openid).cloned()
    }

    /// The stable openid of `user` (without issuing a code).
    pub fn openid(&self, user: &str) -> String {
        User::new(&self.shared.cfg.appid, user).openid
    }

    /// The stable unionid of `user` (returned by WeChat only when `cfg.unionid` is set).
    pub fn unionid(&self, user: &str) -> String {
        User::new(&self.shared.cfg.appid, user).unionid
    }

    /// Like `POST /mock/encrypt`: `data` plus a watermark, encrypted like WeChat with the
    /// user's CURRENT session_key. Returns `(encryptedData, iv)`. A user who never logged in
    /// gets a session_key first (as if `wx.login` had been called without an exchange).
    pub fn encrypt(&self, user: &str, data: Value) -> (String, String) {
        let out = self.shared.encrypt(user, data);
        (out.encrypted_data, out.iv)
    }

    /// `rawData`'s `signature` for `user`'s current session_key: hex(sha1(raw + session_key)).
    pub fn sign_raw_data(&self, user: &str, raw_data: &str) -> String {
        let key = self.shared.current_session_key(user);
        weauth_wxdata::raw_data_signature(raw_data, &key)
    }

    /// checksession's signature for `user`'s current session_key.
    pub fn checksession_signature(&self, user: &str) -> String {
        let key = self.shared.current_session_key(user);
        weauth_wxdata::checksession_signature(&key)
    }

    /// Makes the next `times` calls of `route` misbehave. `route` is one of
    /// `jscode2session stable_token token getuserphonenumber checksession`, or `*` for any.
    ///
    /// # Panics
    /// On an unknown route name (a typo in a test should fail loudly).
    pub fn inject(&self, route: &str, fault: Fault, times: u32) {
        assert!(
            route == "*" || ROUTES.contains(&route),
            "unknown mock WeChat route {route:?}; known: * {}",
            ROUTES.join(" ")
        );
        self.shared.lock().faults.push(route, fault, times);
    }

    /// How many calls `route` received (faulted ones included); `*` = all WeChat routes.
    pub fn calls(&self, route: &str) -> u64 {
        let inner = self.shared.lock();
        if route == "*" {
            inner.calls.values().sum()
        } else {
            inner.calls.get(route).copied().unwrap_or(0)
        }
    }

    /// Clears faults and counters (codes, tokens and session keys are kept).
    pub fn reset(&self) {
        self.shared.reset(false);
    }

    /// Moves the mock's clock forward (expires codes and tokens without waiting).
    pub fn advance_clock(&self, by: Duration) {
        let mut inner = self.shared.lock();
        inner.clock_offset_ms = inner
            .clock_offset_ms
            .saturating_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX));
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

#[derive(Clone)]
struct PhoneGrant {
    phone: String,
    country: String,
}

struct Inner {
    /// openid → user.
    users: HashMap<String, User>,
    /// openid → current session_key.
    session_keys: HashMap<String, String>,
    /// code → (openid, session_key issued with the code).
    login_codes: CodeStore<(String, String)>,
    phone_codes: CodeStore<PhoneGrant>,
    tokens: TokenStore,
    faults: FaultQueue,
    calls: HashMap<String, u64>,
    clock_offset_ms: u64,
}

struct Shared {
    cfg: MockConfig,
    inner: Mutex<Inner>,
}

struct Encrypted {
    encrypted_data: String,
    iv: String,
    raw_data: String,
    signature: String,
}

impl Shared {
    fn new(cfg: MockConfig) -> Shared {
        let overlap = cfg.token_overlap;
        Shared {
            cfg,
            inner: Mutex::new(Inner {
                users: HashMap::new(),
                session_keys: HashMap::new(),
                login_codes: CodeStore::new(CODE_TTL_MS),
                phone_codes: CodeStore::new(CODE_TTL_MS),
                tokens: TokenStore::new(overlap),
                faults: FaultQueue::default(),
                calls: HashMap::new(),
                clock_offset_ms: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not make every later call panic too.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(inner: &Inner) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        real.saturating_add(inner.clock_offset_ms)
    }

    fn login(&self, name: &str) -> MockLogin {
        let mut rng = rand::thread_rng();
        let user = User::new(&self.cfg.appid, name);
        let code = state::new_code(&mut rng);
        let key = state::new_session_key(&mut rng);
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        inner.session_keys.insert(user.openid.clone(), key.clone());
        inner
            .login_codes
            .insert(code.clone(), (user.openid.clone(), key), now);
        let openid = user.openid.clone();
        inner.users.insert(openid.clone(), user);
        MockLogin { code, openid }
    }

    fn phone_code(&self, name: &str, phone: &str, country: &str) -> String {
        let _ = name; // a phone code is tied to the app, not checked against the caller
        let code = state::new_code(&mut rand::thread_rng());
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        inner.phone_codes.insert(
            code.clone(),
            PhoneGrant {
                phone: phone.to_string(),
                country: country.to_string(),
            },
            now,
        );
        code
    }

    /// The user's current session_key, creating one if the user never logged in.
    fn current_session_key(&self, name: &str) -> String {
        let user = User::new(&self.cfg.appid, name);
        let mut inner = self.lock();
        if let Some(k) = inner.session_keys.get(&user.openid) {
            return k.clone();
        }
        let key = state::new_session_key(&mut rand::thread_rng());
        inner.session_keys.insert(user.openid.clone(), key.clone());
        inner.users.insert(user.openid.clone(), user);
        key
    }

    fn encrypt(&self, name: &str, data: Value) -> Encrypted {
        let key = self.current_session_key(name);
        let raw_data = data.to_string();
        let mut iv = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut iv);
        let now_s = Self::now_ms(&self.lock()) / 1000;
        // The key was made by new_session_key, so it is always 16 bytes of base64.
        let (encrypted_data, iv) = state::encrypt_user_data(&key, iv, &self.cfg.appid, now_s, data)
            .unwrap_or_else(|e| unreachable!("mock session_key is well-formed: {e}"));
        Encrypted {
            encrypted_data,
            iv,
            signature: weauth_wxdata::raw_data_signature(&raw_data, &key),
            raw_data,
        }
    }

    fn reset(&self, all: bool) {
        let mut inner = self.lock();
        inner.faults.clear();
        inner.calls.clear();
        if all {
            inner.users.clear();
            inner.session_keys.clear();
            inner.login_codes = CodeStore::new(CODE_TTL_MS);
            inner.phone_codes = CodeStore::new(CODE_TTL_MS);
            inner.tokens = TokenStore::new(self.cfg.token_overlap);
        }
    }

    /// Counts a call of `route` and takes the fault queued for it, if any.
    fn begin_call(&self, route: &str) -> Option<Fault> {
        let mut inner = self.lock();
        *inner.calls.entry(route.to_string()).or_insert(0) += 1;
        inner.faults.take(route)
    }

    /// A WeChat error answer for `route`.
    fn error(&self, route: &str, errcode: i64, message: &str) -> Response {
        let now = Self::now_ms(&self.lock());
        let rid = state::rid(now, &mut rand::thread_rng());
        let body = json!({"errcode": errcode, "errmsg": state::errmsg(message, &rid)});
        respond(200, content_type(route), body.to_string())
    }

    fn ok(&self, route: &str, body: Value) -> Response {
        respond(200, content_type(route), body.to_string())
    }

    fn check_app(
        &self,
        route: &str,
        appid: Option<&str>,
        secret: Option<&str>,
    ) -> Option<Response> {
        if appid != Some(self.cfg.appid.as_str()) {
            return Some(self.error(route, 40013, "invalid appid"));
        }
        if secret != Some(self.cfg.secret.as_str()) {
            return Some(self.error(route, 40125, "invalid appsecret"));
        }
        None
    }

    fn check_token(&self, route: &str, token: Option<&str>) -> Option<Response> {
        let inner = self.lock();
        let now = Self::now_ms(&inner);
        let check = token.map_or(TokenCheck::Invalid, |t| inner.tokens.check(t, now));
        drop(inner);
        match check {
            TokenCheck::Valid => None,
            TokenCheck::Expired => Some(self.error(route, 42001, "access_token expired")),
            TokenCheck::Invalid => Some(self.error(
                route,
                40001,
                "invalid credential, access_token is invalid or not latest",
            )),
        }
    }

    /// The normal (fault-free) answer of a WeChat route.
    fn api(&self, route: &'static str, q: &[(String, String)], body: &[u8]) -> Response {
        match route {
            "jscode2session" => self.jscode2session(q),
            "stable_token" => self.stable_token(body),
            "token" => self.token(q),
            "getuserphonenumber" => self.getuserphonenumber(q, body),
            _ => self.checksession(q),
        }
    }

    fn jscode2session(&self, q: &[(String, String)]) -> Response {
        const R: &str = "jscode2session";
        if let Some(e) = self.check_app(R, param(q, "appid"), param(q, "secret")) {
            return e;
        }
        if param(q, "grant_type") != Some("authorization_code") {
            return self.error(R, 40002, "invalid grant_type");
        }
        let Some(code) = param(q, "js_code").filter(|c| !c.is_empty()) else {
            return self.error(R, 41008, "missing code");
        };
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        let redeemed = inner.login_codes.redeem(code, now);
        let user = redeemed
            .as_ref()
            .ok()
            .and_then(|(openid, _)| inner.users.get(openid).cloned());
        drop(inner);
        match (redeemed, user) {
            (Ok((openid, session_key)), Some(user)) => {
                let mut body = json!({"session_key": session_key, "openid": openid});
                if self.cfg.unionid {
                    body["unionid"] = Value::String(user.unionid);
                }
                self.ok(R, body)
            }
            (Err(CodeError::Used), _) => self.error(R, 40163, "code been used"),
            _ => self.error(R, 40029, "invalid code"),
        }
    }

    fn stable_token(&self, body: &[u8]) -> Response {
        const R: &str = "stable_token";
        #[derive(serde::Deserialize)]
        struct Req {
            grant_type: Option<String>,
            appid: Option<String>,
            secret: Option<String>,
            #[serde(default)]
            force_refresh: bool,
        }
        let Ok(req) = serde_json::from_slice::<Req>(body) else {
            return self.error(R, 47001, "data format error");
        };
        if req.grant_type.as_deref() != Some("client_credential") {
            return self.error(R, 40002, "invalid grant_type");
        }
        if let Some(e) = self.check_app(R, req.appid.as_deref(), req.secret.as_deref()) {
            return e;
        }
        let fresh = state::new_access_token(&mut rand::thread_rng());
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        let (token, expires_in) = inner.tokens.stable(fresh, req.force_refresh, now);
        drop(inner);
        self.ok(R, json!({"access_token": token, "expires_in": expires_in}))
    }

    fn token(&self, q: &[(String, String)]) -> Response {
        const R: &str = "token";
        if param(q, "grant_type") != Some("client_credential") {
            return self.error(R, 40002, "invalid grant_type");
        }
        if let Some(e) = self.check_app(R, param(q, "appid"), param(q, "secret")) {
            return e;
        }
        let token = state::new_access_token(&mut rand::thread_rng());
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        let expires_in = inner.tokens.issue_plain(token.clone(), now);
        drop(inner);
        self.ok(R, json!({"access_token": token, "expires_in": expires_in}))
    }

    fn getuserphonenumber(&self, q: &[(String, String)], body: &[u8]) -> Response {
        const R: &str = "getuserphonenumber";
        if let Some(e) = self.check_token(R, param(q, "access_token")) {
            return e;
        }
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return self.error(R, 47001, "data format error");
        };
        let Some(code) = req.get("code").and_then(Value::as_str) else {
            return self.error(R, 41008, "missing code");
        };
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        let grant = inner.phone_codes.redeem(code, now);
        drop(inner);
        // WeChat answers 40029 for an unknown, expired or already used phone code.
        let Ok(grant) = grant else {
            return self.error(R, 40029, "invalid code");
        };
        let phone_number = if grant.country == "86" {
            grant.phone.clone()
        } else {
            format!("+{}{}", grant.country, grant.phone)
        };
        self.ok(
            R,
            json!({
                "errcode": 0,
                "errmsg": "ok",
                "phone_info": {
                    "phoneNumber": phone_number,
                    "purePhoneNumber": grant.phone,
                    "countryCode": grant.country,
                    "watermark": {"timestamp": now / 1000, "appid": self.cfg.appid},
                }
            }),
        )
    }

    fn checksession(&self, q: &[(String, String)]) -> Response {
        const R: &str = "checksession";
        if let Some(e) = self.check_token(R, param(q, "access_token")) {
            return e;
        }
        if param(q, "sig_method") != Some("hmac_sha256") {
            return self.error(R, 87009, "invalid signature method");
        }
        let key = param(q, "openid").and_then(|o| self.lock().session_keys.get(o).cloned());
        let good = key.is_some_and(|k| {
            Some(weauth_wxdata::checksession_signature(&k).as_str()) == param(q, "signature")
        });
        if good {
            self.ok(R, json!({"errcode": 0, "errmsg": "ok"}))
        } else {
            self.error(R, 87009, "invalid signature")
        }
    }
}

/// WeChat serves jscode2session as `text/plain` although the body is JSON.
fn content_type(route: &str) -> &'static str {
    if route == "jscode2session" {
        "text/plain"
    } else {
        "application/json; encoding=utf-8"
    }
}

fn html_page(status: u16) -> String {
    format!(
        "<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
}

fn route_of(method: &hyper::Method, path: &str) -> Option<&'static str> {
    match (method.as_str(), path) {
        ("GET", "/sns/jscode2session") => Some("jscode2session"),
        ("POST", "/cgi-bin/stable_token") => Some("stable_token"),
        ("GET", "/cgi-bin/token") => Some("token"),
        ("POST", "/wxa/business/getuserphonenumber") => Some("getuserphonenumber"),
        ("GET", "/wxa/checksession") => Some("checksession"),
        _ => None,
    }
}

async fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = query_pairs(req.uri().query());
    let Some(body) = read_body(req.into_body()).await else {
        return respond(413, "text/plain", "request body too large or unreadable");
    };
    if let Some(route) = route_of(&method, &path) {
        match shared.begin_call(route) {
            None => {}
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Hang) => return std::future::pending::<Response>().await,
            Some(Fault::Status(status)) => {
                return respond(status, "text/html", html_page(status));
            }
            Some(Fault::Html) => return respond(200, "text/html", html_page(200)),
            Some(Fault::Garbage) => {
                return respond(
                    200,
                    content_type(route),
                    Bytes::from_static(b"\x00<<garbage>>{\"errcode"),
                );
            }
            Some(Fault::Errcode { errcode, errmsg }) => {
                return shared.error(route, errcode, &errmsg);
            }
            Some(Fault::Body(body)) => return respond(200, content_type(route), body),
        }
        return shared.api(route, &q, &body);
    }
    control(&shared, &method, &path, &q, &body)
}

fn bad_request(message: &str) -> Response {
    serve::json(400, &json!({"error": message}))
}

/// The control routes standing in for the client side and for test set-up.
fn control(
    shared: &Shared,
    method: &hyper::Method,
    path: &str,
    q: &[(String, String)],
    body: &[u8],
) -> Response {
    match (method.as_str(), path) {
        ("GET", "/healthz") => respond(200, "text/plain", "ok"),
        ("GET", "/mock/login") => match param(q, "user").filter(|u| !u.is_empty()) {
            Some(user) => {
                let login = shared.login(user);
                serve::json(200, &json!({"code": login.code, "openid": login.openid}))
            }
            None => bad_request("missing ?user=NAME"),
        },
        ("GET", "/mock/phonecode") => {
            let user = param(q, "user").filter(|u| !u.is_empty());
            let phone = param(q, "phone").filter(|p| !p.is_empty());
            let country = param(q, "country").unwrap_or("86");
            match (user, phone) {
                (Some(user), Some(phone)) => {
                    let code = shared.phone_code(user, phone, country);
                    serve::json(200, &json!({"code": code}))
                }
                _ => bad_request("need ?user=NAME&phone=DIGITS[&country=86]"),
            }
        }
        ("POST", "/mock/encrypt") => {
            let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let user = req
                .get("user")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty());
            match (user, req.get("data")) {
                (Some(user), Some(data)) => {
                    let e = shared.encrypt(user, data.clone());
                    serve::json(
                        200,
                        &json!({"encryptedData": e.encrypted_data, "iv": e.iv,
                                "rawData": e.raw_data, "signature": e.signature}),
                    )
                }
                _ => bad_request("need {\"user\":NAME,\"data\":{...}}"),
            }
        }
        ("POST", "/mock/faults") => match parse_fault_request(body) {
            Ok((route, fault, times)) => {
                shared.lock().faults.push(&route, fault, times);
                serve::json(200, &json!({"ok": true}))
            }
            Err(msg) => bad_request(&msg),
        },
        ("GET", "/mock/stats") => {
            let inner = shared.lock();
            let mut map = serde_json::Map::new();
            for r in ROUTES {
                map.insert(r.into(), json!(inner.calls.get(r).copied().unwrap_or(0)));
            }
            serve::json(200, &Value::Object(map))
        }
        ("POST", "/mock/reset") => {
            let all = matches!(param(q, "all"), Some("1" | "true"));
            shared.reset(all);
            serve::json(200, &json!({"ok": true}))
        }
        ("POST", "/mock/advance") => {
            match param(q, "seconds").and_then(|s| s.parse::<u64>().ok()) {
                Some(secs) => {
                    let mut inner = shared.lock();
                    inner.clock_offset_ms = inner.clock_offset_ms.saturating_add(secs * 1000);
                    serve::json(200, &json!({"ok": true}))
                }
                None => bad_request("need ?seconds=N"),
            }
        }
        _ => respond(404, "text/plain", "not found"),
    }
}

/// Parses `POST /mock/faults`: `{"route":"jscode2session","times":2,"fault":F}` where F is
/// `{"errcode":N[,"errmsg":"…"]}`, `{"status":N}`, `{"delay_ms":N}`, `{"body":"…"}`,
/// `"garbage"`, `"html"` or `"hang"`. `route` defaults to `*`, `times` to 1.
pub fn parse_fault_request(body: &[u8]) -> Result<(String, Fault, u32), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let route = v
        .get("route")
        .and_then(Value::as_str)
        .unwrap_or("*")
        .to_string();
    if route != "*" && !ROUTES.contains(&route.as_str()) {
        return Err(format!(
            "unknown route {route:?}; known: * {}",
            ROUTES.join(" ")
        ));
    }
    let times = match v.get("times") {
        None => 1,
        Some(t) => t
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or("times must be a non-negative integer")?,
    };
    let f = v.get("fault").ok_or("missing \"fault\"")?;
    let fault = match f {
        Value::String(s) if s == "garbage" => Fault::Garbage,
        Value::String(s) if s == "html" => Fault::Html,
        Value::String(s) if s == "hang" => Fault::Hang,
        Value::Object(o) if o.contains_key("errcode") => {
            let errcode = o["errcode"].as_i64().ok_or("errcode must be an integer")?;
            let errmsg = o
                .get("errmsg")
                .and_then(Value::as_str)
                .unwrap_or(state::default_errmsg(errcode))
                .to_string();
            Fault::Errcode { errcode, errmsg }
        }
        Value::Object(o) if o.contains_key("status") => {
            let s = o["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (100..=599).contains(s))
                .ok_or("status must be an HTTP status code")?;
            Fault::Status(s)
        }
        Value::Object(o) if o.contains_key("body") => {
            let body = o["body"].as_str().ok_or("body must be a string")?;
            Fault::Body(body.to_string())
        }
        Value::Object(o) if o.contains_key("delay_ms") => {
            let ms = o["delay_ms"].as_u64().ok_or("delay_ms must be an integer")?;
            Fault::Delay(Duration::from_millis(ms))
        }
        _ => {
            return Err(
                "fault must be {\"errcode\":N}, {\"status\":N}, {\"delay_ms\":N}, {\"body\":\"...\"}, \"garbage\", \"html\" or \"hang\""
                    .to_string(),
            )
        }
    };
    Ok((route, fault, times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fault_request_errcode_without_errmsg_gets_default() {
        let (r, f, n) = parse_fault_request(
            br#"{"route":"jscode2session","times":3,"fault":{"errcode":45011}}"#,
        )
        .unwrap();
        assert_eq!((r.as_str(), n), ("jscode2session", 3));
        assert_eq!(
            f,
            Fault::Errcode {
                errcode: 45011,
                errmsg: state::default_errmsg(45011).to_string()
            }
        );
    }

    #[test]
    fn parse_fault_request_body_parsed() {
        let (_, f, _) = parse_fault_request(br#"{"fault":{"body":"{\"openid\":\"o\"}"}}"#).unwrap();
        assert_eq!(f, Fault::Body(r#"{"openid":"o"}"#.to_string()));
    }

    #[test]
    fn parse_fault_request_defaults_to_any_route_once() {
        let (r, f, n) = parse_fault_request(br#"{"fault":"hang"}"#).unwrap();
        assert_eq!((r.as_str(), f, n), ("*", Fault::Hang, 1));
    }

    #[test]
    fn parse_fault_request_status_and_delay_parsed() {
        let (_, f, _) = parse_fault_request(br#"{"fault":{"status":503}}"#).unwrap();
        assert_eq!(f, Fault::Status(503));
        let (_, f, _) = parse_fault_request(br#"{"fault":{"delay_ms":250}}"#).unwrap();
        assert_eq!(f, Fault::Delay(Duration::from_millis(250)));
    }

    #[test]
    fn parse_fault_request_unknown_route_refused() {
        assert!(parse_fault_request(br#"{"route":"jscode","fault":"html"}"#).is_err());
    }

    #[test]
    fn parse_fault_request_unknown_fault_refused() {
        assert!(parse_fault_request(br#"{"fault":"explode"}"#).is_err());
        assert!(parse_fault_request(br#"{"fault":{"status":42}}"#).is_err());
    }

    #[test]
    fn content_type_jscode2session_is_text_plain() {
        assert_eq!(content_type("jscode2session"), "text/plain");
        assert!(content_type("token").starts_with("application/json"));
    }
}
