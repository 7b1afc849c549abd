//! The mock WeChat's state and rules, with no I/O and no clock.
//!
//! Everything WeChat remembers between calls lives here: users (a stable openid per user name,
//! the current session_key), single-use expiring login and phone codes, access tokens with
//! their replacement overlap, injected faults and call counters. Time is an argument (`now_ms`,
//! unix milliseconds on the mock's own clock) so the rules are unit-tested without waiting.
//!
//! The wire helpers WeChat's quirks depend on are here too: the `errmsg` format with its
//! `, rid: …` suffix, and user-data encryption. The cryptography itself (encryption, the
//! rawData and checksession signatures) is `weauth-wxdata`'s, the crate the issuer uses, so
//! the mock and the issuer cannot drift apart.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

/// How long a login code (`wx.login`) or a phone code stays redeemable: 5 minutes.
pub const CODE_TTL_MS: u64 = 5 * 60 * 1000;
/// Lifetime of an access token, as WeChat announces it in `expires_in`: 7200 s.
pub const TOKEN_TTL_MS: u64 = 7200 * 1000;
/// `stable_token` (normal mode) hands out a NEW token when the current one has less than this
/// left (WeChat: "the platform renews the access_token 5 minutes ahead").
pub const STABLE_RENEWAL_MS: u64 = 5 * 60 * 1000;

/// The WeChat API routes (and web OAuth2 pages) the mock serves, by the names used for faults
/// and counters.
pub const ROUTES: [&str; 14] = [
    "jscode2session",
    "getpluginopenpid",
    "stable_token",
    "token",
    "getuserphonenumber",
    "getuserriskrank",
    "checkencryptedmsg",
    "checksession",
    "oauth2_authorize",
    "qrconnect",
    "oauth2_access_token",
    "oauth2_refresh_token",
    "userinfo",
    "sns_auth",
];

/// Lifetime of a web OAuth2 user access token (`sns/oauth2/access_token`): 7200 s.
pub const USER_TOKEN_TTL_MS: u64 = 7200 * 1000;
/// Lifetime of a web OAuth2 refresh token: 30 days.
pub const USER_REFRESH_TTL_MS: u64 = 30 * 86_400 * 1000;

/// What an approved web OAuth2 authorization grants (kept with its code, then with the user
/// tokens minted from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OauthGrant {
    /// The app the user approved.
    pub appid: String,
    /// The user's openid in that app (a virtual one for a snapshot-mode user).
    pub openid: String,
    /// The user's unionid (sent only when the app is bound and the scope is not
    /// `snsapi_base`).
    pub unionid: String,
    /// The user's name in the mock (nickname source).
    pub name: String,
    /// `snsapi_base`, `snsapi_userinfo` or `snsapi_login`.
    pub scope: String,
    /// A snapshot-mode virtual account (`is_snapshotuser: 1`).
    pub snapshot: bool,
}

/// Result of looking up a web OAuth2 user token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserTokenCheck {
    /// Usable, for this grant.
    Valid(OauthGrant),
    /// Past its lifetime (42001 for access tokens, 42002 for refresh tokens).
    Expired,
    /// Unknown (40001 for access tokens, 40030 for refresh tokens).
    Invalid,
}

/// Web OAuth2 user tokens (access and refresh), each with its grant and expiry.
#[derive(Debug, Clone, Default)]
pub struct UserTokens {
    access: HashMap<String, (OauthGrant, u64)>,
    refresh: HashMap<String, (OauthGrant, u64)>,
}

impl UserTokens {
    /// Remembers a new access token (7200 s) for `grant`.
    pub fn insert_access(&mut self, token: String, grant: OauthGrant, now_ms: u64) {
        self.access
            .retain(|_, (_, expires)| *expires + USER_TOKEN_TTL_MS > now_ms);
        self.access
            .insert(token, (grant, now_ms.saturating_add(USER_TOKEN_TTL_MS)));
    }

    /// Remembers a new refresh token (30 days) for `grant`.
    pub fn insert_refresh(&mut self, token: String, grant: OauthGrant, now_ms: u64) {
        self.refresh
            .insert(token, (grant, now_ms.saturating_add(USER_REFRESH_TTL_MS)));
    }

    /// Looks an access token up.
    pub fn access(&self, token: &str, now_ms: u64) -> UserTokenCheck {
        Self::check(&self.access, token, now_ms)
    }

    /// Looks a refresh token up.
    pub fn refresh(&self, token: &str, now_ms: u64) -> UserTokenCheck {
        Self::check(&self.refresh, token, now_ms)
    }

    fn check(map: &HashMap<String, (OauthGrant, u64)>, token: &str, now_ms: u64) -> UserTokenCheck {
        match map.get(token) {
            None => UserTokenCheck::Invalid,
            Some((_, expires)) if now_ms >= *expires => UserTokenCheck::Expired,
            Some((grant, _)) => UserTokenCheck::Valid(grant.clone()),
        }
    }
}

/// Checks the parameters of an authorize page (`connect/oauth2/authorize` when `qr` is false,
/// `connect/qrconnect` when true) as WeChat does: `response_type=code`, a scope the page
/// supports, an absolute http(s) `redirect_uri`, and a `state` of at most 128 bytes of
/// `[a-zA-Z0-9]` (WeChat's documented limit).
///
/// # Errors
/// What WeChat's error page would say.
pub fn check_authorize_params(
    qr: bool,
    response_type: Option<&str>,
    scope: Option<&str>,
    redirect_uri: Option<&str>,
    state: Option<&str>,
) -> Result<(), String> {
    if response_type != Some("code") {
        return Err("response_type must be code".into());
    }
    let scopes: &[&str] = if qr {
        &["snsapi_login"]
    } else {
        &["snsapi_base", "snsapi_userinfo"]
    };
    match scope {
        Some(scope) if scopes.contains(&scope) => {}
        _ => return Err(format!("scope must be one of {}", scopes.join(", "))),
    }
    let redirect = redirect_uri.ok_or("redirect_uri is missing")?;
    let parsed = url::Url::parse(redirect).map_err(|_| "redirect_uri is not a URL".to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("redirect_uri must be http(s)".into());
    }
    if let Some(state) = state {
        if state.len() > 128 || !state.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err("state must be at most 128 bytes of a-zA-Z0-9".into());
        }
    }
    Ok(())
}

/// Whether an official account's authorize page has WeChat's parameters in the order WeChat
/// matches them (`appid`, `redirect_uri`, `response_type`, `scope`, `state`; others ignored).
pub fn authorize_params_in_order<'a>(keys: impl Iterator<Item = &'a str>) -> bool {
    const ORDER: [&str; 5] = ["appid", "redirect_uri", "response_type", "scope", "state"];
    let positions: Vec<usize> = keys
        .filter_map(|key| ORDER.iter().position(|known| *known == key))
        .collect();
    positions.windows(2).all(|pair| pair[0] < pair[1])
}

/// Where WeChat sends the browser after the user's decision: `redirect_uri` with `code` (when
/// approved) and `state` appended to its query.
pub fn callback_url(redirect_uri: &str, code: Option<&str>, state: Option<&str>) -> String {
    let mut url = match url::Url::parse(redirect_uri) {
        Ok(url) => url,
        Err(_) => return redirect_uri.to_string(),
    };
    {
        let mut pairs = url.query_pairs_mut();
        if let Some(code) = code {
            pairs.append_pair("code", code);
        }
        pairs.append_pair("state", state.unwrap_or(""));
    }
    url.to_string()
}

/// A snapshot-mode (朋友圈快照页) virtual openid: stable per app and user, distinct from the real
/// one.
pub fn snapshot_openid(appid: &str, name: &str) -> String {
    openid_for(appid, &format!("snapshot\0{name}"))
}

/// A misbehaviour injected for the next calls of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer 200 with `{"errcode", "errmsg"}` (the mock appends `, rid: <hex>` to `errmsg`).
    Errcode { errcode: i64, errmsg: String },
    /// Answer with this HTTP status and an HTML error page, like WeChat's gateway does.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Answer 200 with an HTML page (a proxy or captive portal answering instead of WeChat).
    Html,
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Never answer (the connection stays open until the client gives up or the mock stops).
    Hang,
    /// Hold the call until the test releases this gate (`MockWechat::release`), then answer
    /// normally: a call under way for exactly as long as a test needs, however loaded the
    /// machine (a [`Fault::Delay`] ends on its own, maybe before the test is done).
    Held(String),
    /// Answer 200 with exactly this body (with the route's usual content type): a
    /// well-formed answer the mock would not give by itself, e.g. a `jscode2session` success
    /// whose `session_key` is not 16 bytes.
    Body(String),
    /// Serve the call — a code it carries is spent, as at WeChat — then lose its answer: the
    /// caller gets the inner fault instead (a gateway's 502 between WeChat's back end and the
    /// caller, a connection that hangs past the caller's timeout, a cut body).
    ServedThen(Box<Fault>),
}

/// Why a code could not be redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeError {
    /// Unknown or expired (WeChat 40029 `invalid code`).
    Invalid,
    /// Already redeemed (WeChat 40163 `code been used` for login codes).
    Used,
}

#[derive(Debug, Clone)]
struct CodeEntry<T> {
    value: T,
    issued_ms: u64,
    used: bool,
}

/// Single-use codes that expire [`CODE_TTL_MS`] after issue.
#[derive(Debug, Clone)]
pub struct CodeStore<T> {
    codes: HashMap<String, CodeEntry<T>>,
    ttl_ms: u64,
}

impl<T: Clone> CodeStore<T> {
    /// An empty store whose codes live `ttl_ms`.
    pub fn new(ttl_ms: u64) -> CodeStore<T> {
        CodeStore {
            codes: HashMap::new(),
            ttl_ms,
        }
    }

    /// Remembers `code` as issued at `now_ms` for `value`.
    pub fn insert(&mut self, code: String, value: T, now_ms: u64) {
        self.purge(now_ms);
        self.codes.insert(
            code,
            CodeEntry {
                value,
                issued_ms: now_ms,
                used: false,
            },
        );
    }

    /// Redeems `code` once. Expiry wins over reuse: an expired code is `Invalid` even if used.
    pub fn redeem(&mut self, code: &str, now_ms: u64) -> Result<T, CodeError> {
        let ttl = self.ttl_ms;
        let entry = self.codes.get_mut(code).ok_or(CodeError::Invalid)?;
        if now_ms.saturating_sub(entry.issued_ms) >= ttl {
            return Err(CodeError::Invalid);
        }
        if entry.used {
            return Err(CodeError::Used);
        }
        entry.used = true;
        Ok(entry.value.clone())
    }

    /// Forgets codes that can only answer `Invalid` any more.
    pub fn purge(&mut self, now_ms: u64) {
        let ttl = self.ttl_ms;
        self.codes
            .retain(|_, e| now_ms.saturating_sub(e.issued_ms) < ttl);
    }

    /// Number of codes still remembered.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether no code is remembered.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

/// Which issuing route minted a token. WeChat keeps the two apart: a `/cgi-bin/token` call
/// does not replace a stable token and vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `GET /cgi-bin/token`.
    Plain,
    /// `POST /cgi-bin/stable_token`.
    Stable,
}

/// Result of checking an `access_token` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// Usable.
    Valid,
    /// Past its `expires_in` (WeChat 42001).
    Expired,
    /// Unknown, or replaced longer than the overlap ago (WeChat 40001).
    Invalid,
}

#[derive(Debug, Clone)]
struct TokenEntry {
    expires_ms: u64,
    /// Set when a newer token of the same kind replaced this one.
    invalid_after_ms: Option<u64>,
}

/// Access tokens with WeChat's replacement rules.
///
/// `GET /cgi-bin/token` always mints a new token; the previous one keeps working for the
/// overlap (5 minutes at WeChat), then answers 40001. `stable_token` returns the current
/// stable token while more than [`STABLE_RENEWAL_MS`] of it is left, unless `force_refresh`
/// asks for a new one; a new stable token replaces the old one with the same overlap — a
/// forced one ends it at once ("会导致上次获取的 access_token 失效"). As at
/// WeChat, a forced refresh within [`FORCE_INTERVAL_MS`] of the previous one does not
/// refresh: it answers the current token.
#[derive(Debug, Clone)]
pub struct TokenStore {
    tokens: HashMap<String, TokenEntry>,
    current_plain: Option<String>,
    current_stable: Option<String>,
    overlap_ms: u64,
    last_forced_ms: Option<u64>,
}

/// The least time between two forced `stable_token` refreshes (WeChat: 30 s); a second force
/// within it answers the current token.
pub const FORCE_INTERVAL_MS: u64 = 30_000;

impl TokenStore {
    /// An empty store; replaced tokens stay valid for `overlap`.
    pub fn new(overlap: Duration) -> TokenStore {
        TokenStore {
            tokens: HashMap::new(),
            current_plain: None,
            current_stable: None,
            overlap_ms: u64::try_from(overlap.as_millis()).unwrap_or(u64::MAX),
            last_forced_ms: None,
        }
    }

    /// `GET /cgi-bin/token`: a new token (`token`, minted by the caller) replacing the previous
    /// plain one. Returns `expires_in` seconds.
    pub fn issue_plain(&mut self, token: String, now_ms: u64) -> u64 {
        self.replace(TokenKind::Plain, token, now_ms, self.overlap_ms);
        TOKEN_TTL_MS / 1000
    }

    /// `POST /cgi-bin/stable_token`: the current stable token and its remaining seconds, or,
    /// when there is none, it is in its last [`STABLE_RENEWAL_MS`], or `force_refresh` is set,
    /// `fresh` replacing it. A forced refresh ends the previous token at once (WeChat's API
    /// page: "强制刷新模式,会导致上次获取的 access_token 失效"); the overlap of both being valid is
    /// for a renewal in the normal mode.
    pub fn stable(&mut self, fresh: String, force_refresh: bool, now_ms: u64) -> (String, u64) {
        let too_soon = self
            .last_forced_ms
            .is_some_and(|at| now_ms < at.saturating_add(FORCE_INTERVAL_MS));
        if force_refresh && !too_soon {
            self.last_forced_ms = Some(now_ms);
        }
        if !force_refresh || too_soon {
            if let Some(cur) = &self.current_stable {
                if let Some(e) = self.tokens.get(cur) {
                    if e.expires_ms > now_ms.saturating_add(STABLE_RENEWAL_MS) {
                        return (cur.clone(), (e.expires_ms - now_ms) / 1000);
                    }
                }
            }
        }
        let overlap_ms = if force_refresh && !too_soon {
            0
        } else {
            self.overlap_ms
        };
        self.replace(TokenKind::Stable, fresh.clone(), now_ms, overlap_ms);
        (fresh, TOKEN_TTL_MS / 1000)
    }

    fn replace(&mut self, kind: TokenKind, token: String, now_ms: u64, overlap_ms: u64) {
        let slot = match kind {
            TokenKind::Plain => &mut self.current_plain,
            TokenKind::Stable => &mut self.current_stable,
        };
        if let Some(old) = slot.replace(token.clone()) {
            if let Some(e) = self.tokens.get_mut(&old) {
                e.invalid_after_ms = Some(now_ms.saturating_add(overlap_ms));
            }
        }
        self.tokens.insert(
            token,
            TokenEntry {
                expires_ms: now_ms.saturating_add(TOKEN_TTL_MS),
                invalid_after_ms: None,
            },
        );
        self.tokens
            .retain(|_, e| e.expires_ms > now_ms && e.invalid_after_ms.is_none_or(|t| t > now_ms));
    }

    /// Whether `token` may call the API at `now_ms`.
    pub fn check(&self, token: &str, now_ms: u64) -> TokenCheck {
        match self.tokens.get(token) {
            None => TokenCheck::Invalid,
            Some(e) if e.invalid_after_ms.is_some_and(|t| now_ms >= t) => TokenCheck::Invalid,
            Some(e) if now_ms >= e.expires_ms => TokenCheck::Expired,
            Some(_) => TokenCheck::Valid,
        }
    }
}

/// Faults waiting to be served, in the order they were injected.
#[derive(Debug, Clone, Default)]
pub struct FaultQueue {
    entries: Vec<(String, Fault, u32)>,
}

impl FaultQueue {
    /// Queues `fault` for the next `times` calls of `route` (`*` = any WeChat route).
    pub fn push(&mut self, route: &str, fault: Fault, times: u32) {
        if times > 0 {
            self.entries.push((route.to_string(), fault, times));
        }
    }

    /// The fault for this call of `route`, if one is queued; consumes one of its `times`.
    pub fn take(&mut self, route: &str) -> Option<Fault> {
        let i = self
            .entries
            .iter()
            .position(|(r, _, _)| r == route || r == "*")?;
        let entry = &mut self.entries[i];
        let fault = entry.1.clone();
        entry.2 -= 1;
        if entry.2 == 0 {
            self.entries.remove(i);
        }
        Some(fault)
    }

    /// Drops every queued fault.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// What a user name maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name tests log in as.
    pub name: String,
    /// Stable for (appid, name).
    pub openid: String,
    /// Stable for name (a unionid is the same across an Open Platform account's apps).
    pub unionid: String,
}

impl User {
    /// The user called `name` in app `appid`.
    pub fn new(appid: &str, name: &str) -> User {
        User {
            name: name.to_string(),
            openid: openid_for(appid, name),
            unionid: unionid_for(name),
        }
    }
}

/// A WeChat-looking openid (28 characters, starting with `o`), stable for (appid, name).
pub fn openid_for(appid: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("openid\0{appid}\0{name}").as_bytes());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    format!("o{}", &b64[..27])
}

/// A WeChat-looking unionid (28 characters, starting with `u`), stable for name.
pub fn unionid_for(name: &str) -> String {
    let digest = Sha256::digest(format!("unionid\0{name}").as_bytes());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    format!("u{}", &b64[..27])
}

/// A request id like WeChat's: `<unix seconds hex>-<8 hex>-<8 hex>`.
pub fn rid(now_ms: u64, rng: &mut impl RngCore) -> String {
    format!(
        "{:08x}-{:08x}-{:08x}",
        now_ms / 1000,
        rng.next_u32(),
        rng.next_u32()
    )
}

/// An `errmsg` as WeChat writes it: the message, then `, rid: <rid>`.
pub fn errmsg(message: &str, rid: &str) -> String {
    format!("{message}, rid: {rid}")
}

/// The usual `errmsg` text for an errcode (used when a fault gives none).
pub fn default_errmsg(errcode: i64) -> &'static str {
    match errcode {
        -1 => "system error",
        0 => "ok",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40013 => "invalid appid",
        40029 => "invalid code",
        40125 => "invalid appsecret",
        40163 => "code been used",
        40226 => "high risk user",
        41008 => "missing code",
        42001 => "access_token expired",
        40003 => "invalid openid",
        40030 => "invalid refresh_token",
        42002 => "refresh_token expired",
        42003 => "code expired",
        45011 => "api minute-quota reach limit  mustslower  retry next minute",
        // The caller's address is not in the app's IP whitelist (stable_token); WeChat names it.
        40164 => "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist",
        45009 => "reach max api daily quota limit",
        48001 => "api unauthorized",
        47001 => "data format error",
        87009 => "invalid signature",
        _ => "mock error",
    }
}

/// A login or phone code like `wx.login`'s: 32 alphanumeric characters.
pub fn new_code(rng: &mut impl Rng) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// A session_key: standard base64 of 16 random bytes.
pub fn new_session_key(rng: &mut impl RngCore) -> String {
    let mut key = [0u8; 16];
    rng.fill_bytes(&mut key);
    STANDARD.encode(key)
}

/// An access token: 136 characters of `[A-Za-z0-9_-]`, roughly what WeChat hands out.
pub fn new_access_token(rng: &mut impl RngCore) -> String {
    let mut raw = [0u8; 102];
    rng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Encrypts user data like WeChat, through `weauth_wxdata::encrypt` (the same code the issuer
/// decrypts with): adds `watermark {appid, timestamp}` to `data` (wrapped as
/// `{"value": data}` when it is not an object), serializes it, and encrypts with AES-128-CBC,
/// PKCS#7, key = base64-decode(session_key), iv = the 16 given bytes. Returns
/// `(encryptedData, iv)`, both standard base64.
///
/// # Errors
/// [`weauth_wxdata::EncryptError::InvalidSessionKey`] when the session_key is not base64 of
/// 16 bytes.
pub fn encrypt_user_data(
    session_key: &str,
    iv: [u8; 16],
    appid: &str,
    timestamp: u64,
    data: serde_json::Value,
) -> Result<(String, String), weauth_wxdata::EncryptError> {
    let payload = match data {
        serde_json::Value::Object(map) => serde_json::Value::Object(map),
        other => serde_json::json!({ "value": other }),
    };
    let iv_b64 = STANDARD.encode(iv);
    let timestamp = i64::try_from(timestamp).unwrap_or(i64::MAX);
    let encrypted = weauth_wxdata::encrypt(session_key, &iv_b64, &payload, appid, timestamp)?;
    Ok((encrypted, iv_b64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::Aes128;
    use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    use hmac::{Hmac, Mac};
    use weauth_wxdata::{checksession_signature, raw_data_signature};

    #[test]
    fn authorize_params_in_order_ignores_others_and_a_missing_state() {
        let ordered = ["appid", "redirect_uri", "response_type", "scope", "state"];
        assert!(authorize_params_in_order(ordered.into_iter()));
        assert!(authorize_params_in_order(
            [
                "appid",
                "mock_user",
                "redirect_uri",
                "response_type",
                "scope"
            ]
            .into_iter()
        ));
        assert!(!authorize_params_in_order(
            ["appid", "redirect_uri", "scope", "response_type", "state"].into_iter()
        ));
        assert!(!authorize_params_in_order(
            ["redirect_uri", "appid", "response_type", "scope"].into_iter()
        ));
    }

    fn grant(scope: &str) -> OauthGrant {
        OauthGrant {
            appid: "wxoa".into(),
            openid: "o1".into(),
            unionid: "u1".into(),
            name: "alice".into(),
            scope: scope.into(),
            snapshot: false,
        }
    }

    #[test]
    fn user_tokens_access_valid_then_expired_unknown_invalid() {
        let mut t = UserTokens::default();
        t.insert_access("at".into(), grant("snsapi_base"), 0);
        assert_eq!(
            t.access("at", 1),
            UserTokenCheck::Valid(grant("snsapi_base"))
        );
        assert_eq!(t.access("at", USER_TOKEN_TTL_MS), UserTokenCheck::Expired);
        assert_eq!(t.access("nope", 0), UserTokenCheck::Invalid);
        assert_eq!(t.refresh("at", 0), UserTokenCheck::Invalid);
    }

    #[test]
    fn user_tokens_refresh_lives_thirty_days() {
        let mut t = UserTokens::default();
        t.insert_refresh("rt".into(), grant("snsapi_userinfo"), 0);
        assert!(matches!(
            t.refresh("rt", USER_REFRESH_TTL_MS - 1),
            UserTokenCheck::Valid(_)
        ));
        assert_eq!(
            t.refresh("rt", USER_REFRESH_TTL_MS),
            UserTokenCheck::Expired
        );
    }

    #[test]
    fn check_authorize_params_cases() {
        let ok = |qr, scope, state| {
            check_authorize_params(
                qr,
                Some("code"),
                Some(scope),
                Some("https://a.example/cb"),
                state,
            )
        };
        assert!(ok(false, "snsapi_base", Some("abc123")).is_ok());
        assert!(ok(false, "snsapi_userinfo", None).is_ok());
        assert!(ok(true, "snsapi_login", Some("x")).is_ok());
        assert!(ok(true, "snsapi_base", None).is_err());
        assert!(ok(false, "snsapi_login", None).is_err());
        assert!(ok(false, "snsapi_base", Some("has-dash")).is_err());
        let long = "a".repeat(129);
        assert!(ok(false, "snsapi_base", Some(&long)).is_err());
        assert!(ok(false, "snsapi_base", Some(&long[1..])).is_ok());
        assert!(check_authorize_params(
            false,
            Some("token"),
            Some("snsapi_base"),
            Some("https://a/"),
            None
        )
        .is_err());
        assert!(
            check_authorize_params(false, Some("code"), Some("snsapi_base"), None, None).is_err()
        );
        assert!(check_authorize_params(
            false,
            Some("code"),
            Some("snsapi_base"),
            Some("javascript:x"),
            None
        )
        .is_err());
    }

    #[test]
    fn callback_url_appends_code_and_state_to_query() {
        assert_eq!(
            callback_url("https://a.example/cb", Some("C1"), Some("S1")),
            "https://a.example/cb?code=C1&state=S1"
        );
        assert_eq!(
            callback_url("https://a.example/cb?x=1", None, Some("S1")),
            "https://a.example/cb?x=1&state=S1"
        );
    }

    #[test]
    fn snapshot_openid_differs_from_real_openid() {
        assert_ne!(snapshot_openid("wx1", "alice"), openid_for("wx1", "alice"));
        assert_eq!(
            snapshot_openid("wx1", "alice"),
            snapshot_openid("wx1", "alice")
        );
    }

    #[test]
    fn code_store_first_redeem_returns_value() {
        let mut s = CodeStore::new(CODE_TTL_MS);
        s.insert("c".into(), "alice".to_string(), 1_000);
        assert_eq!(s.redeem("c", 2_000), Ok("alice".to_string()));
    }

    #[test]
    fn code_store_second_redeem_is_used() {
        let mut s = CodeStore::new(CODE_TTL_MS);
        s.insert("c".into(), 1u8, 1_000);
        assert!(s.redeem("c", 1_000).is_ok());
        assert_eq!(s.redeem("c", 1_001), Err(CodeError::Used));
    }

    #[test]
    fn code_store_unknown_code_is_invalid() {
        let mut s: CodeStore<u8> = CodeStore::new(CODE_TTL_MS);
        assert_eq!(s.redeem("nope", 0), Err(CodeError::Invalid));
    }

    #[test]
    fn code_store_after_five_minutes_is_invalid() {
        let mut s = CodeStore::new(CODE_TTL_MS);
        s.insert("c".into(), 1u8, 1_000);
        assert_eq!(s.redeem("c", 1_000 + CODE_TTL_MS), Err(CodeError::Invalid));
    }

    #[test]
    fn code_store_just_before_expiry_redeems() {
        let mut s = CodeStore::new(CODE_TTL_MS);
        s.insert("c".into(), 1u8, 1_000);
        assert_eq!(s.redeem("c", 1_000 + CODE_TTL_MS - 1), Ok(1));
    }

    #[test]
    fn code_store_used_then_expired_is_invalid() {
        let mut s = CodeStore::new(CODE_TTL_MS);
        s.insert("c".into(), 1u8, 0);
        assert!(s.redeem("c", 0).is_ok());
        assert_eq!(s.redeem("c", CODE_TTL_MS), Err(CodeError::Invalid));
    }

    #[test]
    fn code_store_purge_drops_expired_only() {
        let mut s = CodeStore::new(CODE_TTL_MS);
        s.insert("old".into(), 1u8, 0);
        s.insert("new".into(), 2u8, CODE_TTL_MS);
        s.purge(CODE_TTL_MS);
        assert_eq!(s.len(), 1);
        assert_eq!(s.redeem("new", CODE_TTL_MS), Ok(2));
    }

    #[test]
    fn token_plain_reissue_old_valid_during_overlap_then_invalid() {
        let mut s = TokenStore::new(Duration::from_secs(300));
        s.issue_plain("a".into(), 0);
        s.issue_plain("b".into(), 10_000);
        assert_eq!(s.check("a", 10_000 + 299_999), TokenCheck::Valid);
        assert_eq!(s.check("a", 10_000 + 300_000), TokenCheck::Invalid);
        assert_eq!(s.check("b", 10_000 + 300_000), TokenCheck::Valid);
    }

    #[test]
    fn token_zero_overlap_old_invalid_at_once() {
        let mut s = TokenStore::new(Duration::ZERO);
        s.issue_plain("a".into(), 0);
        s.issue_plain("b".into(), 5);
        assert_eq!(s.check("a", 5), TokenCheck::Invalid);
    }

    #[test]
    fn token_after_ttl_is_expired() {
        let mut s = TokenStore::new(Duration::from_secs(300));
        s.issue_plain("a".into(), 0);
        assert_eq!(s.check("a", TOKEN_TTL_MS), TokenCheck::Expired);
        assert_eq!(s.check("zzz", 0), TokenCheck::Invalid);
    }

    #[test]
    fn token_stable_without_force_returns_same_token_with_remaining_time() {
        let mut s = TokenStore::new(Duration::from_secs(300));
        let (t1, e1) = s.stable("a".into(), false, 0);
        let (t2, e2) = s.stable("b".into(), false, 100_000);
        assert_eq!((t1.as_str(), e1), ("a", 7200));
        assert_eq!((t2.as_str(), e2), ("a", 7100));
    }

    #[test]
    fn token_stable_force_refresh_ends_the_previous_token_at_once() {
        let mut s = TokenStore::new(Duration::from_secs(300));
        s.stable("a".into(), false, 0);
        let (t, _) = s.stable("b".into(), true, 1_000);
        assert_eq!(t, "b");
        assert_eq!(s.check("a", 1_000), TokenCheck::Invalid);
        assert_eq!(s.check("b", 1_000), TokenCheck::Valid);
    }

    #[test]
    fn token_stable_second_force_within_30_s_answers_the_current_token() {
        let mut s = TokenStore::new(Duration::from_secs(300));
        s.stable("a".into(), false, 0);
        assert_eq!(s.stable("b".into(), true, 1_000).0, "b");
        assert_eq!(s.stable("c".into(), true, 30_999).0, "b", "too soon");
        assert_eq!(s.stable("d".into(), true, 31_000).0, "d");
    }

    #[test]
    fn token_stable_in_last_five_minutes_renewed_old_still_valid() {
        let mut s = TokenStore::new(Duration::from_secs(300));
        s.stable("a".into(), false, 0);
        let before = TOKEN_TTL_MS - STABLE_RENEWAL_MS;
        assert_eq!(s.stable("b".into(), false, before - 1).0, "a");
        let (t, e) = s.stable("c".into(), false, before);
        assert_eq!((t.as_str(), e), ("c", 7200));
        assert_eq!(s.check("a", TOKEN_TTL_MS - 1), TokenCheck::Valid);
        assert_ne!(s.check("a", TOKEN_TTL_MS), TokenCheck::Valid);
    }

    #[test]
    fn token_stable_expired_is_reissued() {
        let mut s = TokenStore::new(Duration::from_secs(300));
        s.stable("a".into(), false, 0);
        let (t, e) = s.stable("b".into(), false, TOKEN_TTL_MS);
        assert_eq!((t.as_str(), e), ("b", 7200));
    }

    #[test]
    fn token_plain_reissue_does_not_touch_stable() {
        let mut s = TokenStore::new(Duration::ZERO);
        s.stable("st".into(), false, 0);
        s.issue_plain("p1".into(), 0);
        s.issue_plain("p2".into(), 1);
        assert_eq!(s.check("st", 2), TokenCheck::Valid);
        assert_eq!(s.check("p1", 2), TokenCheck::Invalid);
    }

    #[test]
    fn fault_queue_serves_n_times_then_nothing() {
        let mut q = FaultQueue::default();
        q.push("token", Fault::Garbage, 2);
        assert_eq!(q.take("jscode2session"), None);
        assert_eq!(q.take("token"), Some(Fault::Garbage));
        assert_eq!(q.take("token"), Some(Fault::Garbage));
        assert_eq!(q.take("token"), None);
    }

    #[test]
    fn fault_queue_star_matches_any_route_in_order() {
        let mut q = FaultQueue::default();
        q.push("*", Fault::Html, 1);
        q.push("token", Fault::Status(502), 1);
        assert_eq!(q.take("token"), Some(Fault::Html));
        assert_eq!(q.take("token"), Some(Fault::Status(502)));
    }

    #[test]
    fn fault_queue_zero_times_queues_nothing() {
        let mut q = FaultQueue::default();
        q.push("token", Fault::Hang, 0);
        assert_eq!(q.take("token"), None);
    }

    #[test]
    fn errmsg_ends_with_rid_hex() {
        let mut rng = rand::thread_rng();
        let r = rid(1_700_000_000_000, &mut rng);
        let m = errmsg("invalid code", &r);
        let (head, tail) = m.split_once(", rid: ").unwrap();
        assert_eq!(head, "invalid code");
        assert!(tail.starts_with("6553f100-"), "{tail}");
        assert!(tail.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        assert_eq!(tail.len(), 26);
    }

    #[test]
    fn openid_same_name_same_app_is_stable_and_differs_per_app() {
        let a = openid_for("wx1", "alice");
        assert_eq!(a, openid_for("wx1", "alice"));
        assert_ne!(a, openid_for("wx2", "alice"));
        assert_ne!(a, openid_for("wx1", "bob"));
        assert_eq!(a.len(), 28);
        assert!(a.starts_with('o'));
        assert_eq!(unionid_for("alice"), User::new("wx2", "alice").unionid);
    }

    #[test]
    fn session_key_is_base64_of_16_bytes() {
        let k = new_session_key(&mut rand::thread_rng());
        assert_eq!(STANDARD.decode(&k).unwrap().len(), 16);
    }

    #[test]
    fn checksession_signature_matches_known_vector() {
        // HMAC-SHA256(key="key", "") computed with:
        //   python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"",hashlib.sha256).hexdigest())'
        assert_eq!(
            checksession_signature("key"),
            "5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0"
        );
    }

    #[test]
    fn checksession_signature_keys_with_text_not_decoded_bytes() {
        let k = "tiihtNczf5v6AKRyjwEUhQ==";
        let decoded = STANDARD.decode(k).unwrap();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&decoded).unwrap();
        mac.update(b"");
        assert_ne!(
            checksession_signature(k),
            hex::encode(mac.finalize().into_bytes())
        );
    }

    #[test]
    fn raw_data_signature_is_sha1_of_raw_plus_key() {
        // python3 -c 'import hashlib;print(hashlib.sha1(b"{}k").hexdigest())'
        assert_eq!(
            raw_data_signature("{}", "k"),
            "361becec674aa8043b76aed2fec7d6107b2e7fd2"
        );
    }

    #[test]
    fn encrypt_user_data_round_trips_with_watermark() {
        let key = new_session_key(&mut rand::thread_rng());
        let iv = [7u8; 16];
        let (enc, iv_b64) =
            encrypt_user_data(&key, iv, "wxapp", 123, serde_json::json!({"nickName": "A"}))
                .unwrap();
        let k: [u8; 16] = STANDARD.decode(&key).unwrap().try_into().unwrap();
        let iv2: [u8; 16] = STANDARD.decode(iv_b64).unwrap().try_into().unwrap();
        let plain = cbc::Decryptor::<Aes128>::new(&k.into(), &iv2.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&STANDARD.decode(enc).unwrap())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["nickName"], "A");
        assert_eq!(v["watermark"]["appid"], "wxapp");
        assert_eq!(v["watermark"]["timestamp"], 123);
    }

    #[test]
    fn encrypt_user_data_bad_key_is_refused() {
        let r = encrypt_user_data("c2hvcnQ=", [0; 16], "a", 0, serde_json::json!({}));
        assert_eq!(r, Err(weauth_wxdata::EncryptError::InvalidSessionKey));
    }

    #[test]
    fn encrypt_user_data_non_object_wrapped_as_value() {
        let key = new_session_key(&mut rand::thread_rng());
        let (enc, iv) =
            encrypt_user_data(&key, [3; 16], "wxapp", 9, serde_json::json!([1, 2])).unwrap();
        let v = weauth_wxdata::decrypt(&key, &enc, &iv, "wxapp", 9, None).unwrap();
        assert_eq!(v["value"], serde_json::json!([1, 2]));
        assert_eq!(v["watermark"]["timestamp"], 9);
    }
}
