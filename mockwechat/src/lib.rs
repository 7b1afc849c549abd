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
//!   Several mini-programs ([`MockConfig::mini_programs`]): each its own codes, openids and
//!   tokens; a code presented with another app's credentials is 40029.
//! - `POST /cgi-bin/stable_token` `{"grant_type":"client_credential","appid","secret",
//!   "force_refresh"}` [`stable_token`] and `GET /cgi-bin/token?grant_type&appid&secret`
//!   [`token`] → `{"access_token","expires_in"}`. A new token replaces the previous one of the
//!   same kind, which keeps working for [`MockConfig::token_overlap`] and then gets 40001 (a
//!   forced `stable_token` refresh ends it at once, as WeChat's page says);
//!   `stable_token` without `force_refresh` returns the current stable token (the same one to
//!   every caller) until its last 5 minutes, when it hands out a new one, like WeChat.
//! - `POST /wxa/business/getuserphonenumber?access_token` `{"code"[,"openid"]}`
//!   [`getuserphonenumber`] → `{"errcode":0,"errmsg":"ok","phone_info":{…,"watermark":
//!   {"timestamp","appid"}}}`; phone codes are single-use and live 5 minutes (40029
//!   otherwise); with `openid`, a code issued to another user is refused with 40029 too.
//! - `POST /wxa/getpluginopenpid?access_token` `{"code"}` [`getpluginopenpid`] →
//!   `{"errcode":0,"errmsg":"ok","openpid"}` for a `wx.pluginLogin` code
//!   ([`MockWechat::plugin_login`]) with a token of that plugin ([`MockConfig::plugins`]; a
//!   plugin gets its own tokens from `stable_token` with its appid and secret); this API's own
//!   errcodes, as its page lists them: 1007 for an unknown, expired or used code, 1005 for
//!   another plugin's, 1001 without one; 40001 for any other token.
//! - `POST /wxa/getuserriskrank?access_token` `{"appid","openid","scene","client_ip"}`
//!   [`getuserriskrank`] → `{"errcode":0,"errmsg":"getuserriskrank succ","risk_rank",
//!   "unoin_id"}` (WeChat's spelling; the rank set by [`MockWechat::set_risk_rank`], default
//!   0); 44002 for a missing field, 40129 for a scene other than 0/1, 43104 for another app's
//!   appid, 61010 for a user who never logged in (WeChat ranks recent visitors only).
//! - `POST /wxa/business/checkencryptedmsg?access_token` `{"encrypted_msg_hash"}`
//!   [`checkencryptedmsg`]: hex(SHA-256(encryptedData text)) of phone-number data (a
//!   `phoneNumber` member: WeChat checks no other) the mock generated
//!   ([`MockWechat::encrypt`], `/mock/encrypt`) within 3 days, asked with the token of the app
//!   it was generated for → `{"errcode":0,"errmsg":"ok", "vaild":true,"create_time"}`
//!   (WeChat's spelling); anything else (another app's token too) errcode 1 ("data not
//!   exist"); 44002 for a missing or empty hash, 40097 for one that is not 64 hex digits.
//! - `GET /wxa/checksession?access_token&openid&signature&sig_method=hmac_sha256`
//!   [`checksession`]: signature = hex(HMAC-SHA256(key = session_key text, "")); 87009 when
//!   it does not match the user's current session_key.
//!
//! WeChat's server API security ([`apisec`], apps in [`MockConfig::api_security`]): a call of
//! `getuserphonenumber`, `getuserriskrank`, `getpluginopenpid` or `checkencryptedmsg` that
//! carries `Wechatmp-*` headers is verified and decrypted as WeChat does (refused in clear with
//! its errcodes 40230–40240), served, and answered encrypted and signed with the platform key
//! — or broken on purpose as [`MockWechat::set_api_security_answer`] says. Verified calls are
//! counted apart ([`MockWechat::secured_calls`]).
//!
//! Every error answers HTTP 200 with `{"errcode","errmsg"}` and an `errmsg` ending in
//! `, rid: <hex>`, like WeChat. Token-taking routes answer 40001 for an unknown or replaced
//! token and 42001 for an expired one.
//!
//! Web OAuth2 (official accounts and websites, [`MockConfig::web_apps`]; see DESIGN.md):
//!
//! - `GET /connect/oauth2/authorize?appid&redirect_uri&response_type=code&scope=snsapi_base|
//!   snsapi_userinfo&state` [`oauth2_authorize`] and `GET /connect/qrconnect?…&scope=snsapi_login`
//!   [`qrconnect`] are the pages a browser visits. The user is chosen by a `mock_user` query
//!   parameter or cookie (a browser test sets the cookie on the mock's origin); without one
//!   the page shows a small form to pick a name. `mock_action` (query or cookie) decides:
//!   `approve` (default) redirects 302 to `redirect_uri?code=CODE&state=STATE`, `deny`
//!   redirects to `redirect_uri?state=STATE` without `code` (the user refused), `snapshot`
//!   approves as a snapshot-mode virtual account (`snsapi_base` only). Bad parameters (unknown
//!   appid, an official account at `qrconnect` or a website at `oauth2/authorize`, a scope
//!   the page does not offer, `response_type` not `code`, a `state` over 128 bytes or outside
//!   `a-zA-Z0-9`, no `redirect_uri`; at `oauth2/authorize`, WeChat's parameters out of the
//!   order above, which WeChat's guide says it matches strictly) answer an HTML error page with
//!   status 400 and no redirect.
//!   `#wechat_redirect` cannot be checked: browsers never send the fragment.
//! - `GET /sns/oauth2/access_token?appid&secret&code&grant_type=authorization_code`
//!   [`oauth2_access_token`] → `{"access_token","expires_in":7200,"refresh_token","openid",
//!   "scope"[,"unionid"][,"is_snapshotuser":1]}`; `unionid` only for `snsapi_userinfo` and
//!   `snsapi_login` of an app bound to the Open Platform ([`MockApp::unionid`]). Codes are
//!   single-use (40163), live 5 minutes (40029) and belong to one app (40029 for another's).
//! - `GET /sns/oauth2/refresh_token?appid&grant_type=refresh_token&refresh_token`
//!   [`oauth2_refresh_token`]: a new user access token; 40030 unknown, 42002 expired.
//! - `GET /sns/userinfo?access_token&openid[&lang]` [`userinfo`] → `openid, nickname, sex (0),
//!   province, city, country (empty since 2021), headimgurl, privilege, unionid?`; 48001 for
//!   an `snsapi_base` token, 40001/42001 for an unknown/expired token, 40003 for another openid.
//! - `GET /sns/auth?access_token&openid` [`sns_auth`] → `{"errcode":0,"errmsg":"ok"}` or the
//!   token errors.
//!
//! The `sns/*` answers are JSON served as `text/plain`, without `errcode` on success (except
//! `sns/auth`), like `jscode2session`.
//!
//! Control routes (not counted): `GET /mock/oauth/code?appid&user&scope[&snapshot=1]` →
//! `{"code","openid"}` (an approved authorization without a browser); `GET /mock/login?user=NAME[&appid]` → `{"code","openid"}` (a fresh
//! code and a NEW session_key, like `wx.login`; the openid is stable per NAME);
//! `GET /mock/phonecode?user=NAME&phone=DIGITS[&country=86][&appid]` → `{"code"}`;
//! `POST /mock/encrypt {"user","data":{…}}` → `{"encryptedData","iv","rawData","signature"}`
//! with the user's CURRENT session_key; `POST /mock/faults {"route","times","fault"}` where
//! `fault` is `{"errcode":N[,"errmsg":"…"]}`, `{"status":502}`, `{"body":"…"}`, `"garbage"`, `"html"`,
//! `{"delay_ms":N}`, `"hang"`, or `{"served_then":F}` (the call is served — its code spent —
//! and then answered with fault F instead); `GET /mock/stats` → `{"<route>": calls, …}`;
//! `POST /mock/apisec {"answer":"good|bad_signature|wrong_serial|stale|bad_encryption|rotating|unsigned"}`
//! sets how verified secured calls are answered;
//! `POST /mock/reset` clears faults and counters (and the API security answer mode) (`?all=1` also forgets codes, tokens and
//! session keys); `POST /mock/advance?seconds=N` moves the mock's clock forward;
//! `GET /healthz` → `ok`.

pub mod apisec;
pub mod serve;
pub mod state;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::RngCore;
use serde_json::{json, Value};

use crate::serve::{param, query_pairs, read_body, respond, Request, Response, ServerHandle};
pub use apisec::{ApiSecAnswer, MockApiSecurity};
pub use state::Fault;
use state::{
    CodeError, CodeStore, FaultQueue, OauthGrant, TokenCheck, TokenStore, User, UserTokenCheck,
    UserTokens, CODE_TTL_MS, ROUTES,
};

/// The kind of a web app the mock knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockAppKind {
    /// An official account: `connect/oauth2/authorize`, `snsapi_base|snsapi_userinfo`.
    OfficialAccount,
    /// An Open Platform website app: `connect/qrconnect`, `snsapi_login`.
    Website,
}

/// A web app (official account or website) the mock accepts besides the mini-program.
#[derive(Debug, Clone)]
pub struct MockApp {
    pub appid: String,
    pub secret: String,
    pub kind: MockAppKind,
    /// Bound to the Open Platform account: `unionid` in `snsapi_userinfo`/`snsapi_login`
    /// answers (the same unionid per user name as the mini-program's).
    pub unionid: bool,
}

impl MockApp {
    /// The official account of the local stack and the tests: `wx00000000000000a1`,
    /// secret `mock-oa-secret`, bound to the Open Platform.
    pub fn official_account() -> MockApp {
        MockApp {
            appid: "wx00000000000000a1".into(),
            secret: "mock-oa-secret".into(),
            kind: MockAppKind::OfficialAccount,
            unionid: true,
        }
    }

    /// The website app of the tests: `wx00000000000000b2`, secret `mock-web-secret`, bound.
    pub fn website() -> MockApp {
        MockApp {
            appid: "wx00000000000000b2".into(),
            secret: "mock-web-secret".into(),
            kind: MockAppKind::Website,
            unionid: true,
        }
    }
}

/// A mini-program plugin the mock accepts besides the mini-program: its own appid and secret
/// (its own access tokens), and codes from `wx.pluginLogin` ([`MockWechat::plugin_login`]).
#[derive(Debug, Clone)]
pub struct MockPlugin {
    pub appid: String,
    pub secret: String,
}

/// A mini-program the mock accepts besides [`MockConfig::appid`].
#[derive(Debug, Clone)]
pub struct MockMiniProgram {
    pub appid: String,
    pub secret: String,
}

impl MockMiniProgram {
    /// The second mini-program of the tests: `wx00000000000000d4`, secret `mock-mp2-secret`
    /// (an appid of its own: not the website's `wx00000000000000b2`, as it was — a mock with
    /// both would have mixed their codes and tokens up).
    pub fn second() -> MockMiniProgram {
        MockMiniProgram {
            appid: "wx00000000000000d4".into(),
            secret: "mock-mp2-secret".into(),
        }
    }
}

impl MockPlugin {
    /// The plugin of the tests: `wx00000000000000c3`, secret `mock-plugin-secret`.
    pub fn test_plugin() -> MockPlugin {
        MockPlugin {
            appid: "wx00000000000000c3".into(),
            secret: "mock-plugin-secret".into(),
        }
    }
}

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
    /// Official accounts and websites for web OAuth2 (default none).
    pub web_apps: Vec<MockApp>,
    /// Mini-program plugins (default none).
    pub plugins: Vec<MockPlugin>,
    /// More mini-programs besides `appid` (default none), each with its own secret, login
    /// and phone codes, openids and access tokens; a user's unionid is the same in all
    /// ([`MockWechat::login_to`], [`MockWechat::phone_code_for`]). A code presented with
    /// another app's credentials is an invalid code (40029), as at WeChat.
    pub mini_programs: Vec<MockMiniProgram>,
    /// Apps with server API security keys (default none): their secured calls are verified
    /// and answered encrypted and signed.
    pub api_security: Vec<MockApiSecurity>,
}

impl MockConfig {
    /// Every app of the mock has an appid of its own (WeChat's are unique): two apps under one
    /// would share codes, users and access tokens, and a test of one would pass on the other.
    ///
    /// # Errors
    /// `InvalidInput` naming the appid given twice.
    pub fn check_appids(&self) -> io::Result<()> {
        let mut seen = std::collections::HashSet::new();
        let appids = std::iter::once(&self.appid)
            .chain(self.mini_programs.iter().map(|app| &app.appid))
            .chain(self.web_apps.iter().map(|app| &app.appid))
            .chain(self.plugins.iter().map(|app| &app.appid));
        for appid in appids {
            if !seen.insert(appid) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the mock's apps share the appid {appid}"),
                ));
            }
        }
        Ok(())
    }
}

impl Default for MockConfig {
    fn default() -> MockConfig {
        MockConfig {
            appid: "wx0123456789abcdef".to_string(),
            secret: "mock-secret".to_string(),
            unionid: false,
            listen: None,
            token_overlap: Duration::from_secs(300),
            web_apps: Vec::new(),
            plugins: Vec::new(),
            mini_programs: Vec::new(),
            api_security: Vec::new(),
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
        cfg.check_appids()?;
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
        self.shared.login(&self.shared.cfg.appid, user)
    }

    /// Like [`MockWechat::login`] in mini-program `appid` (the main one or one of
    /// [`MockConfig::mini_programs`]): the code is that app's, the openid the user's in it.
    pub fn login_to(&self, appid: &str, user: &str) -> MockLogin {
        assert!(
            self.shared.is_mini_program(appid),
            "{appid} is none of the mock's mini-programs"
        );
        self.shared.login(appid, user)
    }

    /// What `wx.pluginLogin` gives a plugin: a single-use code of `plugin` (one of
    /// [`MockConfig::plugins`]) for `user`, redeemed by `getpluginopenpid`.
    pub fn plugin_login(&self, plugin: &str, user: &str) -> String {
        let code = state::new_code(&mut rand::thread_rng());
        let mut inner = self.shared.lock();
        let now = Shared::now_ms(&inner);
        inner
            .plugin_codes
            .insert(code.clone(), (plugin.to_string(), user.to_string()), now);
        code
    }

    /// The stable openpid of `user` in `plugin` (what `getpluginopenpid` answers).
    pub fn openpid(&self, plugin: &str, user: &str) -> String {
        state::openid_for(plugin, &format!("plugin:{user}"))
    }

    /// Like `GET /mock/phonecode`: a single-use code for `phone` (country code 86).
    pub fn phone_code(&self, user: &str, phone: &str) -> String {
        self.shared
            .phone_code(&self.shared.cfg.appid, user, phone, "86")
    }

    /// Like [`MockWechat::phone_code`] in mini-program `appid`: redeemed only with that app's
    /// access token.
    pub fn phone_code_for(&self, appid: &str, user: &str, phone: &str) -> String {
        assert!(
            self.shared.is_mini_program(appid),
            "{appid} is none of the mock's mini-programs"
        );
        self.shared.phone_code(appid, user, phone, "86")
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

    /// [`MockWechat::encrypt`] in mini-program `appid` (one of [`MockConfig::mini_programs`], or
    /// the main one): the user's session_key there and `appid` in the watermark.
    pub fn encrypt_in(&self, appid: &str, user: &str, data: Value) -> (String, String) {
        assert!(
            self.shared.is_mini_program(appid),
            "{appid} is none of the mock's mini-programs"
        );
        let out = self.shared.encrypt_in(appid, user, data);
        (out.encrypted_data, out.iv)
    }

    /// `rawData`'s `signature` for `user`'s current session_key: hex(sha1(raw + session_key)).
    pub fn sign_raw_data(&self, user: &str, raw_data: &str) -> String {
        let key = self.shared.current_session_key(user);
        weauth_wxdata::raw_data_signature(raw_data, &key)
    }

    /// The risk rank (0–4) `getuserriskrank` answers for `user` from now on (default 0).
    pub fn set_risk_rank(&self, user: &str, rank: u8) {
        let openid = self.openid(user);
        self.shared.lock().risk_ranks.insert(openid, rank);
    }

    /// The body of the last `getuserriskrank` request, if any.
    pub fn last_risk_query(&self) -> Option<Value> {
        self.shared.lock().last_risk_query.clone()
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

    /// Releases the calls held by [`Fault::Held`] with this gate, and every later one.
    pub fn release(&self, gate: &str) {
        self.shared.gate(gate).send_replace(true);
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

    /// Like `GET /mock/oauth/code`: an approved web authorization of `user` for `appid` with
    /// `scope`, without a browser. Returns the code.
    ///
    /// # Panics
    /// When `appid` is not one of [`MockConfig::web_apps`] (a test mistake).
    pub fn oauth_code(&self, appid: &str, user: &str, scope: &str) -> String {
        match self.shared.oauth_code(appid, user, scope, false) {
            Ok(code) => code,
            Err(e) => panic!("mock oauth_code({appid}, {user}, {scope}): {e}"),
        }
    }

    /// The stable openid of `user` in `appid` (any app: openids are per app).
    pub fn openid_in(&self, appid: &str, user: &str) -> String {
        User::new(appid, user).openid
    }

    /// How verified secured calls are answered from now on (default [`ApiSecAnswer::Good`]).
    pub fn set_api_security_answer(&self, mode: ApiSecAnswer) {
        self.shared.lock().apisec_answer = mode;
    }

    /// How many calls of `route` arrived encrypted and signed and passed WeChat's checks.
    pub fn secured_calls(&self, route: &str) -> u64 {
        self.shared
            .lock()
            .secured_calls
            .get(route)
            .copied()
            .unwrap_or(0)
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

/// How long WeChat can vouch for encrypted data it generated (`checkencryptedmsg`): 3 days.
const ENCRYPTED_KEPT_S: u64 = 3 * 86_400;

#[derive(Clone)]
struct PhoneGrant {
    phone: String,
    country: String,
    /// The mini-program the code was issued in.
    appid: String,
    /// The openid (in that app) of the user the code was issued to.
    openid: String,
}

struct Inner {
    /// openid → user.
    users: HashMap<String, User>,
    /// openid → current session_key.
    session_keys: HashMap<String, String>,
    /// code → (the mini-program's appid, openid, session_key issued with the code).
    login_codes: CodeStore<(String, String, String)>,
    phone_codes: CodeStore<PhoneGrant>,
    /// hex(SHA-256(encryptedData)) → when the mock generated it (unix seconds), for
    /// `checkencryptedmsg`.
    encrypted: HashMap<String, (u64, String)>,
    /// Web OAuth2 codes (`connect/*` approvals).
    oauth_codes: CodeStore<OauthGrant>,
    user_tokens: UserTokens,
    tokens: TokenStore,
    faults: FaultQueue,
    calls: HashMap<String, u64>,
    clock_offset_ms: u64,
    /// Each plugin's access tokens, by plugin appid.
    plugin_tokens: HashMap<String, TokenStore>,
    /// The access tokens of [`MockConfig::mini_programs`], by appid (the main app's are
    /// `tokens`).
    app_tokens: HashMap<String, TokenStore>,
    /// `wx.pluginLogin` codes → (plugin appid, user name).
    plugin_codes: CodeStore<(String, String)>,
    /// openid → risk rank (`getuserriskrank`; 0 when not set).
    risk_ranks: HashMap<String, u8>,
    /// The body of the last `getuserriskrank` request (what the issuer sent).
    last_risk_query: Option<Value>,
    /// How verified secured calls are answered.
    apisec_answer: ApiSecAnswer,
    /// Verified secured calls, by route.
    secured_calls: HashMap<String, u64>,
}

struct Shared {
    cfg: MockConfig,
    inner: Mutex<Inner>,
    /// The gates of [`Fault::Held`], by name: `true` once released.
    gates: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

struct Encrypted {
    encrypted_data: String,
    iv: String,
    raw_data: String,
    signature: String,
}

impl Shared {
    /// The gate named `name` ([`Fault::Held`]), made closed on first use.
    fn gate(&self, name: &str) -> tokio::sync::watch::Sender<bool> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gates
            .entry(name.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(false).0)
            .clone()
    }

    fn new(cfg: MockConfig) -> Shared {
        let overlap = cfg.token_overlap;
        Shared {
            cfg,
            gates: Mutex::new(HashMap::new()),
            inner: Mutex::new(Inner {
                users: HashMap::new(),
                session_keys: HashMap::new(),
                login_codes: CodeStore::new(CODE_TTL_MS),
                phone_codes: CodeStore::new(CODE_TTL_MS),
                encrypted: HashMap::new(),
                oauth_codes: CodeStore::new(CODE_TTL_MS),
                user_tokens: UserTokens::default(),
                tokens: TokenStore::new(overlap),
                faults: FaultQueue::default(),
                calls: HashMap::new(),
                risk_ranks: HashMap::new(),
                plugin_tokens: HashMap::new(),
                app_tokens: HashMap::new(),
                plugin_codes: CodeStore::new(CODE_TTL_MS),
                last_risk_query: None,
                apisec_answer: ApiSecAnswer::Good,
                secured_calls: HashMap::new(),
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

    fn login(&self, appid: &str, name: &str) -> MockLogin {
        let mut rng = rand::thread_rng();
        let user = User::new(appid, name);
        let code = state::new_code(&mut rng);
        let key = state::new_session_key(&mut rng);
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        inner.session_keys.insert(user.openid.clone(), key.clone());
        inner.login_codes.insert(
            code.clone(),
            (appid.to_string(), user.openid.clone(), key),
            now,
        );
        let openid = user.openid.clone();
        inner.users.insert(openid.clone(), user);
        MockLogin { code, openid }
    }

    fn phone_code(&self, appid: &str, name: &str, phone: &str, country: &str) -> String {
        let openid = state::openid_for(appid, name);
        let code = state::new_code(&mut rand::thread_rng());
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        inner.phone_codes.insert(
            code.clone(),
            PhoneGrant {
                phone: phone.to_string(),
                country: country.to_string(),
                appid: appid.to_string(),
                openid,
            },
            now,
        );
        code
    }

    /// The user's current session_key in the main mini-program, creating one if the user
    /// never logged in.
    fn current_session_key(&self, name: &str) -> String {
        self.current_session_key_in(&self.cfg.appid, name)
    }

    /// The user's current session_key in mini-program `appid` (a session_key is per openid,
    /// an openid per app), creating one if the user never logged in there.
    fn current_session_key_in(&self, appid: &str, name: &str) -> String {
        let user = User::new(appid, name);
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
        self.encrypt_in(&self.cfg.appid, name, data)
    }

    /// [`Self::encrypt`] for the user's session in mini-program `appid` (its session_key, its
    /// appid in the watermark).
    fn encrypt_in(&self, appid: &str, name: &str, data: Value) -> Encrypted {
        let key = self.current_session_key_in(appid, name);
        let raw_data = data.to_string();
        let data_has_phone_number = data.get("phoneNumber").is_some();
        let mut iv = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut iv);
        let now_s = Self::now_ms(&self.lock()) / 1000;
        // The key was made by new_session_key, so it is always 16 bytes of base64.
        let (encrypted_data, iv) = state::encrypt_user_data(&key, iv, appid, now_s, data)
            .unwrap_or_else(|e| unreachable!("mock session_key is well-formed: {e}"));
        // Remembered for checkencryptedmsg, by hex(SHA-256(the base64 text)), with the app it
        // was generated for (the watermark's) — phone-number data only: WeChat's
        // checkencryptedmsg "currently supports phone-number encrypted data only"
        // (auth.checkEncryptedData), and answers any other as not existing.
        if data_has_phone_number {
            let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                encrypted_data.as_bytes(),
            ));
            self.lock()
                .encrypted
                .insert(hash, (now_s, appid.to_string()));
        }
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
        inner.secured_calls.clear();
        inner.apisec_answer = ApiSecAnswer::Good;
        if all {
            inner.users.clear();
            inner.session_keys.clear();
            inner.login_codes = CodeStore::new(CODE_TTL_MS);
            inner.phone_codes = CodeStore::new(CODE_TTL_MS);
            inner.encrypted.clear();
            inner.oauth_codes = CodeStore::new(CODE_TTL_MS);
            inner.user_tokens = UserTokens::default();
            inner.tokens = TokenStore::new(self.cfg.token_overlap);
            inner.app_tokens.clear();
        }
    }

    /// The secret of mini-program `appid` (the main one or one of
    /// [`MockConfig::mini_programs`]), if the mock has it.
    fn mini_program_secret(&self, appid: &str) -> Option<&str> {
        std::iter::once((&self.cfg.appid, &self.cfg.secret))
            .chain(
                self.cfg
                    .mini_programs
                    .iter()
                    .map(|app| (&app.appid, &app.secret)),
            )
            .find(|(known, _)| known.as_str() == appid)
            .map(|(_, secret)| secret.as_str())
    }

    /// Whether `appid` is one of the mock's mini-programs.
    fn is_mini_program(&self, appid: &str) -> bool {
        self.mini_program_secret(appid).is_some()
    }

    /// Whether `openid` is a user of mini-program `appid` the mock knows.
    fn user_of_app(inner: &Inner, appid: &str, openid: &str) -> bool {
        inner
            .users
            .get(openid)
            .is_some_and(|user| state::openid_for(appid, &user.name) == openid)
    }

    /// The access tokens of mini-program `appid` (the main one or one of
    /// [`MockConfig::mini_programs`]; `check_app` has vouched for it).
    fn tokens_of<'i>(&self, inner: &'i mut Inner, appid: &str) -> &'i mut TokenStore {
        if appid == self.cfg.appid {
            &mut inner.tokens
        } else {
            let overlap = self.cfg.token_overlap;
            inner
                .app_tokens
                .entry(appid.to_string())
                .or_insert_with(|| TokenStore::new(overlap))
        }
    }

    /// The mini-program (main or other) whose access token `token` is, and how it checks.
    fn mini_program_token(
        inner: &Inner,
        main: &str,
        token: &str,
        now: u64,
    ) -> (TokenCheck, Option<String>) {
        let mut seen = TokenCheck::Invalid;
        let stores = std::iter::once((main, &inner.tokens)).chain(
            inner
                .app_tokens
                .iter()
                .map(|(appid, store)| (appid.as_str(), store)),
        );
        for (appid, store) in stores {
            match store.check(token, now) {
                TokenCheck::Valid => return (TokenCheck::Valid, Some(appid.to_string())),
                TokenCheck::Expired => seen = TokenCheck::Expired,
                TokenCheck::Invalid => {}
            }
        }
        (seen, None)
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
        match appid.and_then(|appid| self.mini_program_secret(appid)) {
            None => Some(self.error(route, 40013, "invalid appid")),
            Some(known) if secret != Some(known) => {
                Some(self.error(route, 40125, "invalid appsecret"))
            }
            Some(_) => None,
        }
    }

    fn check_token(&self, route: &str, token: Option<&str>) -> Option<Response> {
        let inner = self.lock();
        let now = Self::now_ms(&inner);
        let check = token.map_or(TokenCheck::Invalid, |t| {
            Self::mini_program_token(&inner, &self.cfg.appid, t, now).0
        });
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

    /// The app an access token was issued to (valid or expired), if any.
    fn token_app(&self, token: Option<&str>) -> Option<String> {
        let token = token?;
        let inner = self.lock();
        let now = Self::now_ms(&inner);
        let known = |check: TokenCheck| !matches!(check, TokenCheck::Invalid);
        if known(inner.tokens.check(token, now)) {
            return Some(self.cfg.appid.clone());
        }
        if let Some((appid, _)) = inner
            .app_tokens
            .iter()
            .find(|(_, tokens)| known(tokens.check(token, now)))
        {
            return Some(appid.clone());
        }
        inner
            .plugin_tokens
            .iter()
            .find(|(_, tokens)| known(tokens.check(token, now)))
            .map(|(appid, _)| appid.clone())
    }

    /// A secured call (see [`apisec`]): verified and decrypted, served by [`Shared::api`],
    /// answered encrypted and signed (or broken as the test asked).
    async fn secured(
        &self,
        route: &'static str,
        headers: &apisec::RequestHeaders,
        urlpath: &str,
        q: &[(String, String)],
        body: &[u8],
        cookies: &[(String, String)],
    ) -> Response {
        let now_s = i64::try_from(Self::now_ms(&self.lock()) / 1000).unwrap_or(i64::MAX);
        let keys_of = |appid: &str| {
            self.cfg
                .api_security
                .iter()
                .find(|keys| keys.appid == appid)
                .cloned()
        };
        let token_app = self.token_app(param(q, "access_token"));
        let opened = match apisec::open_request(headers, urlpath, body, now_s, keys_of, token_app) {
            Ok(opened) => opened,
            Err(refusal) => return self.error(route, refusal.errcode, refusal.errmsg),
        };
        let Some(keys) = keys_of(&opened.appid) else {
            return self.error(route, 40238, "API_NoExist_DevSecretSym");
        };
        {
            let mut inner = self.lock();
            *inner.secured_calls.entry(route.to_string()).or_insert(0) += 1;
        }
        let plain = self.api(route, q, &opened.params, cookies);
        let (parts, plain_body) = plain.into_parts();
        let plain_bytes = http_body_util::BodyExt::collect(plain_body)
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let mode = self.lock().apisec_answer;
        match apisec::seal_answer(&keys, &opened, &plain_bytes, now_s, mode) {
            Some(sealed) => {
                let mut response = respond(200, "application/json; encoding=utf-8", sealed.body);
                for (name, value) in sealed.headers {
                    if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
                        response.headers_mut().insert(name, value);
                    }
                }
                response
            }
            None => hyper::Response::from_parts(parts, http_body_util::Full::new(plain_bytes)),
        }
    }

    /// The normal (fault-free) answer of a WeChat route.
    fn api(
        &self,
        route: &'static str,
        q: &[(String, String)],
        body: &[u8],
        cookies: &[(String, String)],
    ) -> Response {
        match route {
            "jscode2session" => self.jscode2session(q),
            "stable_token" => self.stable_token(body),
            "token" => self.token(q),
            "getuserphonenumber" => self.getuserphonenumber(q, body),
            "checkencryptedmsg" => self.checkencryptedmsg(q, body),
            "getuserriskrank" => self.getuserriskrank(q, body),
            "getpluginopenpid" => self.getpluginopenpid(q, body),
            "oauth2_authorize" => self.authorize_page(false, q, cookies),
            "qrconnect" => self.authorize_page(true, q, cookies),
            "oauth2_access_token" => self.oauth2_access_token(q),
            "oauth2_refresh_token" => self.oauth2_refresh_token(q),
            "userinfo" => self.userinfo(q),
            "sns_auth" => self.sns_auth(q),
            _ => self.checksession(q),
        }
    }

    fn web_app(&self, appid: Option<&str>) -> Option<&MockApp> {
        let appid = appid?;
        self.cfg.web_apps.iter().find(|app| app.appid == appid)
    }

    /// Records an approved authorization and returns its code.
    fn oauth_code(
        &self,
        appid: &str,
        name: &str,
        scope: &str,
        snapshot: bool,
    ) -> Result<String, String> {
        let app = self
            .web_app(Some(appid))
            .ok_or_else(|| format!("unknown web appid {appid:?}"))?;
        let user = User::new(&app.appid, name);
        let openid = if snapshot {
            state::snapshot_openid(&app.appid, name)
        } else {
            user.openid.clone()
        };
        let grant = OauthGrant {
            appid: app.appid.clone(),
            openid,
            unionid: user.unionid.clone(),
            name: name.to_string(),
            scope: scope.to_string(),
            snapshot,
        };
        let code = state::new_code(&mut rand::thread_rng());
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        inner.oauth_codes.insert(code.clone(), grant, now);
        Ok(code)
    }

    /// `connect/oauth2/authorize` (`qr` false) or `connect/qrconnect` (`qr` true).
    fn authorize_page(
        &self,
        qr: bool,
        q: &[(String, String)],
        cookies: &[(String, String)],
    ) -> Response {
        let appid = param(q, "appid");
        let wanted = if qr {
            MockAppKind::Website
        } else {
            MockAppKind::OfficialAccount
        };
        let Some(app) = self.web_app(appid).filter(|app| app.kind == wanted) else {
            return error_page("appid 参数错误 (the appid is unknown or not allowed on this page)");
        };
        // "微信会对授权链接做正则强匹配校验，如果链接的参数顺序不对，授权页面将无法正常访问"
        // (the official account's web authorization guide): appid, redirect_uri,
        // response_type, scope, state, in that order (the mock's own parameters aside).
        if !qr && !state::authorize_params_in_order(q.iter().map(|(key, _)| key.as_str())) {
            return error_page(
                "the parameters must come in the order appid, redirect_uri, response_type, scope, state",
            );
        }
        let scope = param(q, "scope");
        let redirect_uri = param(q, "redirect_uri");
        let state_param = param(q, "state");
        if let Err(reason) = state::check_authorize_params(
            qr,
            param(q, "response_type"),
            scope,
            redirect_uri,
            state_param,
        ) {
            return error_page(&reason);
        }
        let (Some(scope), Some(redirect_uri)) = (scope, redirect_uri) else {
            return error_page("missing parameters");
        };
        let user = param(q, "mock_user")
            .or_else(|| param(cookies, "mock_user"))
            .filter(|u| !u.is_empty());
        let action = param(q, "mock_action")
            .or_else(|| param(cookies, "mock_action"))
            .unwrap_or("approve");
        let Some(user) = user else {
            return chooser_page(q);
        };
        let location = match action {
            "deny" => state::callback_url(redirect_uri, None, state_param),
            "approve" | "snapshot" => {
                let snapshot = action == "snapshot";
                if snapshot && scope != "snsapi_base" {
                    return error_page("a snapshot-mode page only allows snsapi_base");
                }
                match self.oauth_code(&app.appid, user, scope, snapshot) {
                    Ok(code) => state::callback_url(redirect_uri, Some(&code), state_param),
                    Err(reason) => return error_page(&reason),
                }
            }
            _ => return error_page("mock_action must be approve, deny or snapshot"),
        };
        let mut response = respond(302, "text/html; charset=utf-8", "");
        if let Ok(value) = hyper::header::HeaderValue::from_str(&location) {
            response
                .headers_mut()
                .insert(hyper::header::LOCATION, value);
        }
        response
    }

    fn check_web_app(
        &self,
        route: &str,
        appid: Option<&str>,
        secret: Option<&str>,
    ) -> Result<MockApp, Box<Response>> {
        let Some(app) = self.web_app(appid) else {
            return Err(Box::new(self.error(route, 40013, "invalid appid")));
        };
        if secret != Some(app.secret.as_str()) {
            return Err(Box::new(self.error(route, 40125, "invalid appsecret")));
        }
        Ok(app.clone())
    }

    /// Mints a user access token and a refresh token for `grant` and answers like
    /// `sns/oauth2/access_token`.
    fn user_token_answer(
        &self,
        route: &str,
        app: &MockApp,
        grant: OauthGrant,
        refresh: Option<String>,
    ) -> Response {
        let mut rng = rand::thread_rng();
        let access = state::new_access_token(&mut rng);
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        inner
            .user_tokens
            .insert_access(access.clone(), grant.clone(), now);
        let refresh = refresh.unwrap_or_else(|| {
            let token = state::new_access_token(&mut rng);
            inner
                .user_tokens
                .insert_refresh(token.clone(), grant.clone(), now);
            token
        });
        drop(inner);
        let mut body = json!({
            "access_token": access,
            "expires_in": state::USER_TOKEN_TTL_MS / 1000,
            "refresh_token": refresh,
            "openid": grant.openid,
            "scope": grant.scope,
        });
        if app.unionid && grant.scope != "snsapi_base" && !grant.snapshot {
            body["unionid"] = Value::String(grant.unionid);
        }
        if grant.snapshot {
            body["is_snapshotuser"] = json!(1);
        }
        self.ok(route, body)
    }

    fn oauth2_access_token(&self, q: &[(String, String)]) -> Response {
        const R: &str = "oauth2_access_token";
        let app = match self.check_web_app(R, param(q, "appid"), param(q, "secret")) {
            Ok(app) => app,
            Err(e) => return *e,
        };
        if param(q, "grant_type") != Some("authorization_code") {
            return self.error(R, 40002, "invalid grant_type");
        }
        let Some(code) = param(q, "code").filter(|c| !c.is_empty()) else {
            return self.error(R, 41008, "missing code");
        };
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        let redeemed = inner.oauth_codes.redeem(code, now);
        drop(inner);
        match redeemed {
            // A code of another app is unknown to this one.
            Ok(grant) if grant.appid == app.appid => self.user_token_answer(R, &app, grant, None),
            Err(CodeError::Used) => self.error(R, 40163, "code been used"),
            _ => self.error(R, 40029, "invalid code"),
        }
    }

    fn oauth2_refresh_token(&self, q: &[(String, String)]) -> Response {
        const R: &str = "oauth2_refresh_token";
        let Some(app) = self.web_app(param(q, "appid")).cloned() else {
            return self.error(R, 40013, "invalid appid");
        };
        if param(q, "grant_type") != Some("refresh_token") {
            return self.error(R, 40002, "invalid grant_type");
        }
        let token = param(q, "refresh_token").unwrap_or("");
        let check = {
            let inner = self.lock();
            let now = Self::now_ms(&inner);
            inner.user_tokens.refresh(token, now)
        };
        match check {
            UserTokenCheck::Valid(grant) if grant.appid == app.appid => {
                self.user_token_answer(R, &app, grant, Some(token.to_string()))
            }
            UserTokenCheck::Expired => self.error(R, 42002, "refresh_token expired"),
            _ => self.error(R, 40030, "invalid refresh_token"),
        }
    }

    /// Checks a user access token and its openid; the grant when usable.
    fn check_user_token(
        &self,
        route: &str,
        q: &[(String, String)],
    ) -> Result<OauthGrant, Box<Response>> {
        let token = param(q, "access_token").unwrap_or("");
        let check = {
            let inner = self.lock();
            let now = Self::now_ms(&inner);
            inner.user_tokens.access(token, now)
        };
        match check {
            UserTokenCheck::Valid(grant) => {
                if param(q, "openid") != Some(grant.openid.as_str()) {
                    return Err(Box::new(self.error(route, 40003, "invalid openid")));
                }
                Ok(grant)
            }
            UserTokenCheck::Expired => {
                Err(Box::new(self.error(route, 42001, "access_token expired")))
            }
            UserTokenCheck::Invalid => Err(Box::new(self.error(
                route,
                40001,
                "invalid credential, access_token is invalid or not latest",
            ))),
        }
    }

    fn userinfo(&self, q: &[(String, String)]) -> Response {
        const R: &str = "userinfo";
        let grant = match self.check_user_token(R, q) {
            Ok(grant) => grant,
            Err(e) => return *e,
        };
        if grant.scope == "snsapi_base" {
            return self.error(R, 48001, "api unauthorized");
        }
        let bound = self
            .web_app(Some(&grant.appid))
            .is_some_and(|app| app.unionid);
        let mut body = json!({
            "openid": grant.openid,
            "nickname": format!("{} (mock)", grant.name),
            "sex": 0,
            "language": "",
            "province": "",
            "city": "",
            "country": "",
            "headimgurl": format!("https://thirdwx.qlogo.cn/mmopen/mock/{}/132", grant.name),
            "privilege": [],
        });
        if bound {
            body["unionid"] = Value::String(grant.unionid);
        }
        self.ok(R, body)
    }

    fn sns_auth(&self, q: &[(String, String)]) -> Response {
        const R: &str = "sns_auth";
        match self.check_user_token(R, q) {
            Ok(_) => self.ok(R, json!({"errcode": 0, "errmsg": "ok"})),
            Err(e) => *e,
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
            .and_then(|(_, openid, _)| inner.users.get(openid).cloned());
        drop(inner);
        match (redeemed, user) {
            // Another mini-program's code: invalid with these credentials (and spent).
            (Ok((of, _, _)), _) if Some(of.as_str()) != param(q, "appid") => {
                self.error(R, 40029, "invalid code")
            }
            (Ok((_, openid, session_key)), Some(user)) => {
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
        let plugin = self
            .cfg
            .plugins
            .iter()
            .find(|p| Some(p.appid.as_str()) == req.appid.as_deref());
        if let Some(plugin) = plugin {
            if req.secret.as_deref() != Some(plugin.secret.as_str()) {
                return self.error(R, 40125, "invalid appsecret");
            }
        } else if let Some(e) = self.check_app(R, req.appid.as_deref(), req.secret.as_deref()) {
            return e;
        }
        let fresh = state::new_access_token(&mut rand::thread_rng());
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        let overlap = self.cfg.token_overlap;
        let tokens = match plugin {
            // A plugin has its own tokens, apart from the mini-program's.
            Some(plugin) => inner
                .plugin_tokens
                .entry(plugin.appid.clone())
                .or_insert_with(|| TokenStore::new(overlap)),
            None => self.tokens_of(&mut inner, req.appid.as_deref().unwrap_or("")),
        };
        let (token, expires_in) = tokens.stable(fresh, req.force_refresh, now);
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
        let appid = param(q, "appid").unwrap_or("");
        let expires_in = self
            .tokens_of(&mut inner, appid)
            .issue_plain(token.clone(), now);
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
        // Another mini-program's code (its token is not this app's): invalid, and spent.
        if self.token_app(param(q, "access_token")).as_deref() != Some(grant.appid.as_str()) {
            return self.error(R, 40029, "invalid code");
        }
        // The optional `openid` binds the code to the caller: WeChat checks the binding and
        // refuses a code issued to another user as an invalid code (the code is spent).
        if let Some(openid) = req.get("openid") {
            if openid.as_str() != Some(grant.openid.as_str()) {
                return self.error(R, 40029, "invalid code, the code does not belong to openid");
            }
        }
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
                    // A number, as in the API page's example answer (its table says
                    // string: the issuer reads both).
                    "countryCode": grant.country.parse::<u64>().map_or_else(|_| json!(grant.country), |n| json!(n)),
                    "watermark": {"timestamp": now / 1000, "appid": grant.appid},
                }
            }),
        )
    }

    fn getpluginopenpid(&self, q: &[(String, String)], body: &[u8]) -> Response {
        const R: &str = "getpluginopenpid";
        let mut inner = self.lock();
        let now = Self::now_ms(&inner);
        // The token must be a plugin's own (a mini-program token is not accepted).
        let token = param(q, "access_token").unwrap_or("");
        let mut expired = false;
        let plugin =
            inner
                .plugin_tokens
                .iter()
                .find_map(|(appid, tokens)| match tokens.check(token, now) {
                    TokenCheck::Valid => Some(appid.clone()),
                    TokenCheck::Expired => {
                        expired = true;
                        None
                    }
                    TokenCheck::Invalid => None,
                });
        let Some(plugin) = plugin else {
            drop(inner);
            return if expired {
                self.error(R, 42001, "access_token expired")
            } else {
                self.error(
                    R,
                    40001,
                    "invalid credential, access_token is invalid or not latest",
                )
            };
        };
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            drop(inner);
            return self.error(R, 47001, "data format error");
        };
        let Some(code) = req
            .get("code")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
        else {
            drop(inner);
            return self.error(R, 1001, "invalid parameter");
        };
        let grant = inner.plugin_codes.redeem(code, now);
        drop(inner);
        // This API's own errcodes (its API page): 1007 for a code with no data (unknown,
        // expired, used), 1005 for another plugin's.
        match grant {
            Ok((of, name)) if of == plugin => {
                let openpid = state::openid_for(&plugin, &format!("plugin:{name}"));
                self.ok(R, json!({"errcode": 0, "errmsg": "ok", "openpid": openpid}))
            }
            Ok(_) => self.error(R, 1005, "plugin appid does not match the data"),
            Err(_) => self.error(R, 1007, "openpid data not exist"),
        }
    }

    fn getuserriskrank(&self, q: &[(String, String)], body: &[u8]) -> Response {
        const R: &str = "getuserriskrank";
        if let Some(e) = self.check_token(R, param(q, "access_token")) {
            return e;
        }
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return self.error(R, 47001, "data format error");
        };
        self.lock().last_risk_query = Some(req.clone());
        let text = |name: &str| {
            req.get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        let (Some(appid), Some(openid), Some(_client_ip), Some(scene)) = (
            text("appid"),
            text("openid"),
            text("client_ip"),
            req.get("scene"),
        ) else {
            return self.error(R, 44002, "empty post data");
        };
        if !matches!(scene.as_u64(), Some(0 | 1)) {
            return self.error(R, 40129, "invalid scene");
        }
        // The appid must be the token's app, and the openid a user of it.
        let token_app = self.token_app(param(q, "access_token"));
        let inner = self.lock();
        let of_app = Self::user_of_app(&inner, appid, openid);
        if token_app.as_deref() != Some(appid) || (inner.users.contains_key(openid) && !of_app) {
            drop(inner);
            return self.error(R, 43104, "appid not match openid");
        }
        if !inner.users.contains_key(openid) {
            // WeChat only ranks users who used the mini-program in the last two hours.
            drop(inner);
            return self.error(R, 61010, "user access record timeout");
        }
        let rank = inner.risk_ranks.get(openid).copied().unwrap_or(0);
        drop(inner);
        // `unoin_id` (sic): WeChat's name for the request's id, a number.
        let request_id: u32 = rand::random();
        self.ok(
            R,
            json!({"errcode": 0, "errmsg": "getuserriskrank succ", "risk_rank": rank, "unoin_id": request_id}),
        )
    }

    fn checkencryptedmsg(&self, q: &[(String, String)], body: &[u8]) -> Response {
        const R: &str = "checkencryptedmsg";
        if let Some(e) = self.check_token(R, param(q, "access_token")) {
            return e;
        }
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return self.error(R, 47001, "data format error");
        };
        let hash = match req.get("encrypted_msg_hash").and_then(Value::as_str) {
            None | Some("") => return self.error(R, 44002, "empty post data"),
            Some(hash) => hash.to_ascii_lowercase(),
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.error(R, 40097, "invalid args");
        }
        let token_app = self.token_app(param(q, "access_token")).unwrap_or_default();
        let inner = self.lock();
        let now_s = Self::now_ms(&inner) / 1000;
        let created = inner.encrypted.get(&hash).cloned();
        drop(inner);
        // WeChat keeps what it generated for 3 days, and vouches for it to the app it was
        // generated for only (checked with that app's token); anything else is "data not
        // exist".
        match created {
            Some((created, appid))
                if now_s.saturating_sub(created) <= ENCRYPTED_KEPT_S && appid == token_app =>
            {
                self.ok(
                    R,
                    json!({"errcode": 0, "errmsg": "ok", "vaild": true, "create_time": created}),
                )
            }
            _ => self.error(R, 1, "data not exist"),
        }
    }

    fn checksession(&self, q: &[(String, String)]) -> Response {
        const R: &str = "checksession";
        if let Some(e) = self.check_token(R, param(q, "access_token")) {
            return e;
        }
        if param(q, "sig_method") != Some("hmac_sha256") {
            return self.error(R, 87009, "invalid signature method");
        }
        // The session_key of the openid, a user of the token's app (another app's user has
        // none there).
        let token_app = self.token_app(param(q, "access_token")).unwrap_or_default();
        let key = param(q, "openid").and_then(|openid| {
            let inner = self.lock();
            Self::user_of_app(&inner, &token_app, openid)
                .then(|| inner.session_keys.get(openid).cloned())
                .flatten()
        });
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

/// WeChat serves jscode2session and the `sns/*` web OAuth2 API as `text/plain` although the
/// body is JSON.
fn content_type(route: &str) -> &'static str {
    match route {
        "jscode2session"
        | "oauth2_access_token"
        | "oauth2_refresh_token"
        | "userinfo"
        | "sns_auth" => "text/plain",
        _ => "application/json; encoding=utf-8",
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// WeChat's authorize pages refuse bad parameters with an error page and no redirect.
fn error_page(reason: &str) -> Response {
    respond(
        400,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><title>微信登录 - 错误</title><h1>请求参数错误</h1><p id=\"mock-error\">{}</p>",
            html_escape(reason)
        ),
    )
}

/// The authorize page without a chosen user: a form to log in as a name, or to refuse.
fn chooser_page(q: &[(String, String)]) -> Response {
    let hidden: String = q
        .iter()
        .filter(|(k, _)| k != "mock_user" && k != "mock_action")
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                html_escape(k),
                html_escape(v)
            )
        })
        .collect();
    respond(
        200,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>微信授权 (mock)</title>\
             <h1>Mock WeChat: authorize this app?</h1>\
             <form method=\"get\">{hidden}\
             <label>Log in as <input name=\"mock_user\" value=\"alice\"></label>\
             <button name=\"mock_action\" value=\"approve\">Allow</button>\
             <button name=\"mock_action\" value=\"deny\">Refuse</button></form>"
        ),
    )
}

/// The `name=value` pairs of a `Cookie` header.
fn cookie_pairs(header: Option<&str>) -> Vec<(String, String)> {
    header
        .unwrap_or("")
        .split(';')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .collect()
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
        ("POST", "/wxa/business/checkencryptedmsg") => Some("checkencryptedmsg"),
        ("POST", "/wxa/getuserriskrank") => Some("getuserriskrank"),
        ("POST", "/wxa/getpluginopenpid") => Some("getpluginopenpid"),
        ("GET", "/wxa/checksession") => Some("checksession"),
        ("GET", "/connect/oauth2/authorize") => Some("oauth2_authorize"),
        ("GET", "/connect/qrconnect") => Some("qrconnect"),
        ("GET", "/sns/oauth2/access_token") => Some("oauth2_access_token"),
        ("GET", "/sns/oauth2/refresh_token") => Some("oauth2_refresh_token"),
        ("GET", "/sns/userinfo") => Some("userinfo"),
        ("GET", "/sns/auth") => Some("sns_auth"),
        _ => None,
    }
}

async fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = query_pairs(req.uri().query());
    let apisec_headers = apisec::RequestHeaders::read(req.headers());
    // The guide's `urlpath`: the URL the caller used, with scheme and host, without the query.
    let urlpath = format!(
        "http://{}{path}",
        req.headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    );
    let cookies = cookie_pairs(
        req.headers()
            .get(hyper::header::COOKIE)
            .and_then(|v| v.to_str().ok()),
    );
    let Some(body) = read_body(req.into_body()).await else {
        return respond(413, "text/plain", "request body too large or unreadable");
    };
    if let Some(route) = route_of(&method, &path) {
        let fault = shared.begin_call(route);
        let (served_first, fault) = match fault {
            Some(Fault::ServedThen(after)) => (true, Some(*after)),
            other => (false, other),
        };
        let serve = || async {
            if apisec_headers.any() && apisec::SECURED_ROUTES.contains(&route) {
                shared
                    .secured(route, &apisec_headers, &urlpath, &q, &body, &cookies)
                    .await
            } else {
                shared.api(route, &q, &body, &cookies)
            }
        };
        let served = if served_first {
            Some(serve().await)
        } else {
            None
        };
        if let Some(answer) = fault_answer(&shared, route, fault).await {
            return answer;
        }
        return match served {
            Some(answer) => answer,
            None => serve().await,
        };
    }
    control(&shared, &method, &path, &q, &body)
}

/// What a fault answers instead of the call's own answer; `None` to answer normally (after a
/// [`Fault::Delay`]'s wait).
async fn fault_answer(shared: &Shared, route: &str, fault: Option<Fault>) -> Option<Response> {
    match fault? {
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::Hang => std::future::pending::<Option<Response>>().await,
        Fault::Held(gate) => {
            let mut released = shared.gate(&gate).subscribe();
            // An error: the mock is going away; answer all the same.
            let _ = released.wait_for(|open| *open).await;
            None
        }
        Fault::Status(status) => Some(respond(status, "text/html", html_page(status))),
        Fault::Html => Some(respond(200, "text/html", html_page(200))),
        Fault::Garbage => Some(respond(
            200,
            content_type(route),
            Bytes::from_static(b"\x00<<garbage>>{\"errcode"),
        )),
        Fault::Errcode { errcode, errmsg } => Some(shared.error(route, errcode, &errmsg)),
        Fault::Body(body) => Some(respond(200, content_type(route), body)),
        // Served once already: what is left is the answer's loss.
        Fault::ServedThen(after) => Box::pin(fault_answer(shared, route, Some(*after))).await,
    }
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
                let appid = param(q, "appid").unwrap_or(&shared.cfg.appid);
                if !shared.is_mini_program(appid) {
                    return bad_request("appid is none of the mock's mini-programs");
                }
                let login = shared.login(appid, user);
                serve::json(200, &json!({"code": login.code, "openid": login.openid}))
            }
            None => bad_request("missing ?user=NAME"),
        },
        ("GET", "/mock/oauth/code") => {
            let appid = param(q, "appid").unwrap_or("");
            let user = param(q, "user").filter(|u| !u.is_empty());
            let scope = param(q, "scope").unwrap_or("snsapi_base");
            let snapshot = matches!(param(q, "snapshot"), Some("1" | "true"));
            match user {
                Some(user) => match shared.oauth_code(appid, user, scope, snapshot) {
                    Ok(code) => serve::json(
                        200,
                        &json!({"code": code, "openid": User::new(appid, user).openid}),
                    ),
                    Err(e) => bad_request(&e),
                },
                None => bad_request("need ?appid=WEB_APPID&user=NAME[&scope=snsapi_base]"),
            }
        }
        ("GET", "/mock/phonecode") => {
            let user = param(q, "user").filter(|u| !u.is_empty());
            let phone = param(q, "phone").filter(|p| !p.is_empty());
            let country = param(q, "country").unwrap_or("86");
            match (user, phone) {
                (Some(user), Some(phone)) => {
                    let appid = param(q, "appid").unwrap_or(&shared.cfg.appid);
                    if !shared.is_mini_program(appid) {
                        return bad_request("appid is none of the mock's mini-programs");
                    }
                    let code = shared.phone_code(appid, user, phone, country);
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
        ("POST", "/mock/apisec") => {
            let answer = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("answer").and_then(Value::as_str).map(String::from))
                .and_then(|name| ApiSecAnswer::parse(&name));
            match answer {
                Some(mode) => {
                    shared.lock().apisec_answer = mode;
                    serve::json(200, &json!({"ok": true}))
                }
                None => bad_request(
                    "need {\"answer\": \"good|bad_signature|wrong_serial|stale|bad_encryption|rotating|unsigned\"}",
                ),
            }
        }
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
/// `"garbage"`, `"html"`, `"hang"` or `{"served_then":F}`. `route` defaults to `*`, `times` to 1.
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
    Ok((route, parse_fault(f)?, times))
}

/// One fault of `POST /mock/faults`; `{"served_then": F}` serves the call, then answers F.
fn parse_fault(f: &Value) -> Result<Fault, String> {
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
        Value::Object(o) if o.contains_key("served_then") => {
            Fault::ServedThen(Box::new(parse_fault(&o["served_then"])?))
        }
        _ => {
            return Err(
                "fault must be {\"errcode\":N}, {\"status\":N}, {\"delay_ms\":N}, {\"body\":\"...\"}, {\"served_then\":F}, \"garbage\", \"html\" or \"hang\""
                    .to_string(),
            )
        }
    };
    Ok(fault)
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
    fn parse_fault_request_served_then_nests() {
        let (_, f, _) = parse_fault_request(
            br#"{"route":"jscode2session","fault":{"served_then":{"status":502}}}"#,
        )
        .unwrap();
        assert_eq!(f, Fault::ServedThen(Box::new(Fault::Status(502))));
        assert!(parse_fault_request(br#"{"fault":{"served_then":"soon"}}"#).is_err());
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
