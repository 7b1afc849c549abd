//! The pure parts of web login (official-account OAuth2 and website QR login): the `state`,
//! the WeChat authorize URL, the session cookies and the CSRF rule. No I/O, no clock: the
//! handlers in `routes` pass `now` and the request's headers.
//!
//! Decisions (also in `docs/WEB-LOGIN.md`):
//! - **state**: 32 characters of `[A-Za-z0-9]` (≈190 random bits; WeChat allows ≤ 128 bytes of
//!   that alphabet). It is kept server-side for [`STATE_TTL`] (10 minutes) under its SHA-256
//!   ([`state_key`]), with the app, the redirect URI, the scope and the hash of a browser
//!   binding: a second random value (256 bits) set as a cookie on the authorize response
//!   (`HttpOnly; SameSite=Lax; Max-Age=600`): `__Host-weauth_oauth` (`Path=/`, which the
//!   prefix requires) when cookies are `Secure`, so that no sibling host can plant one;
//!   `weauth_oauth` (`Path=/v1/web/callback`) over plain http for development. The
//!   callback takes the state once (a replay finds nothing) and requires the cookie to match
//!   ([`check_callback`]), so a state or code captured from a URL cannot be completed in
//!   another browser (login CSRF). One login at a time per browser: a second authorize
//!   replaces the cookie and the first tab's callback is refused.
//! - **cookies**: `__Host-weauth_at` = the access token (`HttpOnly; Secure; SameSite=Lax;
//!   Path=/`, `Max-Age` = its lifetime), `weauth_rt` = the refresh token (`HttpOnly; Secure;
//!   SameSite=Strict; Path=/v1/token/refresh`) with `__Host-weauth_rb`, its binding (a labelled
//!   SHA-256 of the refresh token; `Path=/`, the same lifetime), which a cookie refresh requires.
//!   The `__Host-` prefix makes a browser take a cookie only from this very host, so a sibling
//!   host cannot plant its own user's session (cookie tossing: the victim would act as the
//!   attacker); the refresh cookie cannot carry the prefix (it needs `Path=/`, and the refresh
//!   token must not travel with every request), hence the binding beside it.
//!   `WEAUTH_COOKIE_SECURE=false` drops `Secure` for plain-http development, and with it the
//!   prefix (`weauth_at`) and the binding. A cookie name sent twice is refused, not guessed.
//! - **CSRF**: SameSite plus an `Origin` check. A state-changing request (POST) authenticated
//!   only by a cookie must carry an `Origin` (or, when a browser omits it, a `Referer`) whose
//!   origin is the issuer's or one of the configured redirect URIs' ([`allowed_origins`]);
//!   otherwise 403. SameSite=Lax already keeps the cookie off cross-site POSTs; the Origin check
//!   also covers same-site, cross-origin pages (another port or subdomain of the same site),
//!   and old browsers. No token is needed in the page, so plain `fetch()` works.

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::apps::{App, AppKind, Apps};
use crate::secrets::sha256_hex;

/// How long a state stays usable: 10 minutes.
pub const STATE_TTL: i64 = 600;
/// Length of a state: 32 characters of `[A-Za-z0-9]`.
pub const STATE_LEN: usize = 32;
/// The browser-binding cookie of a pending web login, over plain http (development).
pub const STATE_COOKIE: &str = "weauth_oauth";
/// The same cookie when cookies are `Secure` (production): with the `__Host-` prefix a browser
/// takes it only from this very host with `Path=/` and no `Domain`, so a sibling host cannot
/// plant its own binding (cookie tossing) and walk the browser through a callback of the
/// attacker's login — which would log the user in as the attacker.
pub const STATE_COOKIE_HOST: &str = "__Host-weauth_oauth";
/// The access-token cookie over plain http (development).
pub const ACCESS_COOKIE: &str = "weauth_at";
/// The access-token cookie when cookies are `Secure` (production): `__Host-`, as
/// [`STATE_COOKIE_HOST`], so that no sibling host can plant one.
pub const ACCESS_COOKIE_HOST: &str = "__Host-weauth_at";
/// The refresh-token cookie (scoped to the refresh route, so without the prefix).
pub const REFRESH_COOKIE: &str = "weauth_rt";
/// The refresh cookie's binding when cookies are `Secure`: a hash of the refresh token under a
/// `__Host-` name, which a sibling host cannot set — a refresh cookie it planted has none.
pub const REFRESH_BINDING_COOKIE: &str = "__Host-weauth_rb";
/// Where the callback lives (and the state cookie's path).
pub const CALLBACK_PATH: &str = "/v1/web/callback";
/// The refresh route (and the refresh cookie's path).
pub const REFRESH_PATH: &str = "/v1/token/refresh";

/// Why a web login step is refused (all 400 or 403, never a redirect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebError {
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{0}` is given more than once")]
    Repeated(&'static str),
    #[error("scope `{scope}` is not available to a {kind} app (use {allowed})")]
    Scope {
        scope: String,
        kind: &'static str,
        allowed: &'static str,
    },
    #[error("redirect_uri is not one of this app's redirect_uris")]
    RedirectNotAllowed,
    #[error("the state is malformed")]
    StateMalformed,
    #[error("the state is unknown, expired or already used; start the login again")]
    StateUnknown,
    #[error(
        "this login was started in another browser (the state cookie is missing or does not match)"
    )]
    BrowserMismatch,
    #[error("the user did not authorize the login (WeChat sent no code)")]
    ConsentRefused,
    #[error("this is a snapshot-mode virtual account (a page preview), not a WeChat user; open the page in WeChat to log in")]
    SnapshotUser,
}

/// A fresh state.
pub fn new_state(rng: &mut impl Rng) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(STATE_LEN)
        .map(char::from)
        .collect()
}

/// A fresh browser binding (the `weauth_oauth` cookie value): 256 bits, base64url.
pub fn new_binding(rng: &mut impl Rng) -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rng.gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `state` can be ours: 1..=128 bytes of `[A-Za-z0-9]`.
pub fn valid_state_format(state: &str) -> bool {
    !state.is_empty() && state.len() <= 128 && state.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The store key of a state: its SHA-256, so the store never holds a usable state.
pub fn state_key(state: &str) -> String {
    format!("web_state:{}", sha256_hex(state.as_bytes()))
}

/// What the issuer remembers between authorize and callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    pub appid: String,
    pub redirect_uri: String,
    pub scope: String,
    /// SHA-256 hex of the browser binding cookie.
    pub binding_hash: String,
    /// Unix seconds after which the state is refused.
    pub expires_at: i64,
}

impl PendingLogin {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the stored form (`None` when unreadable: treated as unknown).
    pub fn decode(bytes: &[u8]) -> Option<PendingLogin> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The scope for `kind` given the requested one: an official account defaults to
/// `snsapi_base` and allows `snsapi_userinfo`; a website always uses `snsapi_login`.
///
/// # Errors
/// [`WebError::Scope`] for any other combination (and for a mini-program).
pub fn scope_for(kind: AppKind, requested: Option<&str>) -> Result<&'static str, WebError> {
    let refuse = |allowed: &'static str| WebError::Scope {
        scope: requested.unwrap_or("").to_string(),
        kind: kind.as_str(),
        allowed,
    };
    match (kind, requested) {
        (AppKind::OfficialAccount, None | Some("snsapi_base")) => Ok("snsapi_base"),
        (AppKind::OfficialAccount, Some("snsapi_userinfo")) => Ok("snsapi_userinfo"),
        (AppKind::OfficialAccount, _) => Err(refuse("snsapi_base or snsapi_userinfo")),
        (AppKind::Website, None | Some("snsapi_login")) => Ok("snsapi_login"),
        (AppKind::Website, _) => Err(refuse("snsapi_login")),
        (AppKind::Miniprogram | AppKind::Plugin, _) => Err(refuse("POST /v1/login")),
    }
}

/// Whether the web login reads `sns/userinfo` (profile and unionid) for the `scope` WeChat's
/// token answer names. WeChat documents that field as comma-separated and has been seen to
/// answer `snsapi_userinfo,` (a trailing comma): read as a list.
pub fn reads_userinfo(scope: &str) -> bool {
    scope
        .split(',')
        .map(str::trim)
        .any(|one| one == "snsapi_userinfo" || one == "snsapi_login")
}

fn encode_component(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// WeChat's authorize URL for `app`. The parameters are in WeChat's documented order (its
/// pages are known to refuse other orders) and the URL ends with `#wechat_redirect`.
pub fn authorize_url(
    open_base: &str,
    app: &App,
    callback: &str,
    scope: &str,
    state: &str,
) -> String {
    let page = match app.kind {
        AppKind::Website => "connect/qrconnect",
        _ => "connect/oauth2/authorize",
    };
    format!(
        "{open_base}/{page}?appid={}&redirect_uri={}&response_type=code&scope={scope}&state={state}#wechat_redirect",
        encode_component(&app.appid),
        encode_component(callback),
    )
}

/// Judges a callback: the pending login taken for the state (`None` when unknown or already
/// taken), the browser's binding cookie, and `now`.
///
/// # Errors
/// [`WebError::StateUnknown`] (unknown, used, expired) or [`WebError::BrowserMismatch`].
pub fn check_callback(
    pending: Option<PendingLogin>,
    binding_cookie: Option<&str>,
    now: i64,
) -> Result<PendingLogin, WebError> {
    let pending = pending.ok_or(WebError::StateUnknown)?;
    if now >= pending.expires_at {
        return Err(WebError::StateUnknown);
    }
    let presented = binding_cookie.map(|c| sha256_hex(c.as_bytes()));
    match presented {
        Some(hash) if crate::secrets::credential_matches(&hash, &pending.binding_hash) => {
            Ok(pending)
        }
        _ => Err(WebError::BrowserMismatch),
    }
}

/// `SameSite` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
}

/// A `Set-Cookie` value. `max_age` 0 deletes the cookie.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    same_site: SameSite,
    max_age: i64,
    secure: bool,
) -> String {
    let same_site = match same_site {
        SameSite::Lax => "Lax",
        SameSite::Strict => "Strict",
    };
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly{secure}; SameSite={same_site}"
    )
}

/// The name of the access-token cookie: [`ACCESS_COOKIE_HOST`] when cookies are `Secure`.
pub fn access_cookie_name(secure: bool) -> &'static str {
    if secure {
        ACCESS_COOKIE_HOST
    } else {
        ACCESS_COOKIE
    }
}

/// The session cookies after a web login or a cookie refresh: the access token's, the refresh
/// token's and, `Secure`, the refresh token's binding.
pub fn session_cookies(
    access_token: &str,
    access_ttl: i64,
    refresh_token: &str,
    refresh_ttl: i64,
    secure: bool,
) -> Vec<String> {
    let binding = secure.then(|| refresh_binding(refresh_token));
    session_cookie_values(
        access_token,
        access_ttl,
        refresh_token,
        refresh_ttl,
        binding.as_deref(),
        secure,
    )
}

/// Cookies that delete the session cookies (logout, refused cookie refresh).
pub fn clear_session_cookies(secure: bool) -> Vec<String> {
    session_cookie_values("", 0, "", 0, secure.then_some(""), secure)
}

fn session_cookie_values(
    access_token: &str,
    access_ttl: i64,
    refresh_token: &str,
    refresh_ttl: i64,
    binding: Option<&str>,
    secure: bool,
) -> Vec<String> {
    let mut cookies = vec![
        set_cookie(
            access_cookie_name(secure),
            access_token,
            "/",
            SameSite::Lax,
            access_ttl,
            secure,
        ),
        set_cookie(
            REFRESH_COOKIE,
            refresh_token,
            REFRESH_PATH,
            SameSite::Strict,
            refresh_ttl,
            secure,
        ),
    ];
    if let Some(binding) = binding {
        cookies.push(set_cookie(
            REFRESH_BINDING_COOKIE,
            binding,
            "/",
            SameSite::Strict,
            refresh_ttl,
            secure,
        ));
    }
    cookies
}

/// The binding of a refresh token: a SHA-256 of it under a label of its own, so that the cookie
/// (sent with every request to the host) is not the hash the store keys the token by.
fn refresh_binding(refresh_token: &str) -> String {
    sha256_hex(format!("weauth refresh binding:{refresh_token}").as_bytes())
}

/// Whether a refresh cookie may be used: `Secure`, only with its binding cookie (a hash of the
/// refresh token, set by this host beside it); over plain http there is none.
pub fn refresh_cookie_bound(refresh_token: &str, binding: Option<&str>, secure: bool) -> bool {
    if !secure {
        return true;
    }
    binding.is_some_and(|binding| {
        crate::secrets::credential_matches(&refresh_binding(refresh_token), binding)
    })
}

/// The name of the browser-binding cookie: [`STATE_COOKIE_HOST`] when cookies are `Secure`.
pub fn state_cookie_name(secure: bool) -> &'static str {
    if secure {
        STATE_COOKIE_HOST
    } else {
        STATE_COOKIE
    }
}

/// The browser-binding cookie of a pending login (`binding` empty and `max_age` 0 deletes it):
/// scoped to the callback, or, `Secure`, `__Host-` with the `Path=/` the prefix requires.
pub fn state_cookie(binding: &str, max_age: i64, secure: bool) -> String {
    set_cookie(
        state_cookie_name(secure),
        binding,
        if secure { "/" } else { CALLBACK_PATH },
        SameSite::Lax,
        max_age,
        secure,
    )
}

/// A cookie looked up in the request's `Cookie` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieLookup<'a> {
    Absent,
    One(&'a str),
    /// The name appears more than once (refused: which one would be ours?).
    Several,
}

/// Finds cookie `name` in the `Cookie` header values (their bytes, see [`cookie_values`]).
pub fn find_cookie<'a>(
    headers: impl IntoIterator<Item = &'a [u8]>,
    name: &str,
) -> CookieLookup<'a> {
    match cookie_values(headers, name).as_slice() {
        [] => CookieLookup::Absent,
        [value] => CookieLookup::One(value),
        _ => CookieLookup::Several,
    }
}

/// What browsers trim around a cookie's name and value: spaces and tabs, nothing else.
const COOKIE_SPACE: [char; 2] = [' ', '\t'];

/// Every value of cookie `name` in the `Cookie` header values, in the order sent. The headers
/// are read as bytes and each pair as text on its own: browsers send a cookie set with a raw
/// UTF-8 value (a page's `city=北京`, or a sibling host's `Domain=` cookie) as it is, in the
/// one `Cookie` header with ours — read as a whole (`HeaderValue::to_str` takes visible ASCII
/// only), such a header was dropped with every cookie of ours in it: no web login, no cookie
/// authentication or refresh in that browser. A pair that is not UTF-8 is not ours.
///
/// Names and values are trimmed of spaces and tabs only, as browsers trim them (RFC 6265bis
/// §5.6): trimmed of every Unicode space (`str::trim`), a cookie a sibling host sets as
/// `\u{2000}__Host-weauth_oauth` with `Domain=` — allowed, since to a browser its name does not
/// begin with `__Host-` — was read as ours, defeating the prefix that keeps our cookies from
/// being planted.
pub fn cookie_values<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &str) -> Vec<&'a str> {
    let mut values = Vec::new();
    for header in headers {
        let pairs = header
            .split(|byte| *byte == b';')
            .filter_map(|pair| std::str::from_utf8(pair).ok());
        for pair in pairs {
            if let Some((key, value)) = pair.split_once('=') {
                if key.trim_matches(COOKIE_SPACE) == name {
                    values.push(value.trim_matches(COOKIE_SPACE));
                }
            }
        }
    }
    values
}

/// The refresh cookie to use among the `weauth_rt` values sent (`values`), `Ok(None)` when
/// none is. One is used as it is ([`refresh_cookie_bound`] judges it). Several are what a
/// sibling host makes by planting its own under `Domain=` — which the issuer's host-only
/// clears never remove, so refusing them all would end the browser's refreshes for as long
/// as the attacker likes: with `Secure` cookies, the one its binding cookie names is used
/// (the binding is `__Host-`, which no other host can set). `Err` when several are sent and
/// not exactly one is bound.
pub fn chosen_refresh_cookie<'a>(
    values: &[&'a str],
    binding: Option<&str>,
    secure: bool,
) -> Result<Option<&'a str>, ()> {
    let sent: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
    match sent.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        several if secure => {
            let mut bound = several
                .iter()
                .filter(|value| refresh_cookie_bound(value, binding, secure));
            match (bound.next(), bound.next()) {
                (Some(value), None) => Ok(Some(value)),
                _ => Err(()),
            }
        }
        _ => Err(()),
    }
}

/// The origin (`scheme://host[:port]`) of an absolute URL, or `None`.
pub fn origin_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    match parsed.origin() {
        url::Origin::Tuple(..) => Some(parsed.origin().ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// The origins a cookie-authenticated state-changing request may come from: the issuer's and
/// those of every configured redirect URI.
pub fn allowed_origins(issuer: &str, apps: &Apps) -> Vec<String> {
    let mut origins: Vec<String> = std::iter::once(issuer)
        .chain(
            apps.all()
                .iter()
                .flat_map(|app| app.redirect_uris.iter().map(String::as_str)),
        )
        .filter_map(origin_of)
        .collect();
    origins.sort();
    origins.dedup();
    origins
}

/// The web apps' redirect URIs on another host than the issuer's (appid, URI): the session
/// cookies the callback sets are host-only on the issuer's host (`__Host-`; ports do not
/// count), so pages there do not send them to their own host — the access cookie reaches the
/// issuer's host only (a cross-origin request with credentials, CORS in front). Logged as a
/// warning at start (WEB-LOGIN.md: the issuer on the host of the pages).
pub fn redirects_off_the_issuer_host(issuer: &str, apps: &Apps) -> Vec<(String, String)> {
    let host = |url: &str| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    };
    let issuer_host = host(issuer);
    apps.all()
        .iter()
        .flat_map(|app| app.redirect_uris.iter().map(move |uri| (app, uri)))
        .filter(|(_, uri)| host(uri) != issuer_host)
        .map(|(app, uri)| (app.appid.clone(), uri.clone()))
        .collect()
}

/// The CSRF rule for a cookie-authenticated state-changing request: `Origin` (or, without
/// it, `Referer`) must be one of `allowed`. Neither header, or `Origin: null`, is refused.
pub fn same_origin_request(
    origin: Option<&str>,
    referer: Option<&str>,
    allowed: &[String],
) -> bool {
    let source = match origin {
        Some(origin) => origin_of(origin.trim()),
        None => referer.and_then(|r| origin_of(r.trim())),
    };
    source.is_some_and(|source| allowed.contains(&source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(kind: AppKind) -> App {
        App {
            appid: "wx00000000000000a1".into(),
            secret: crate::secrets::Secret::new("s".into()),
            kind,
            redirect_uris: vec!["https://h5.example.com/after-login".into()],
            risk: None,
            api_security: None,
        }
    }

    #[test]
    fn new_state_alphanumeric_32_and_distinct() {
        let mut rng = rand::thread_rng();
        let a = new_state(&mut rng);
        let b = new_state(&mut rng);
        assert_eq!(a.len(), STATE_LEN);
        assert!(valid_state_format(&a));
        assert_ne!(a, b);
        // 32 symbols of 62: more than 128 bits.
        assert!(STATE_LEN as f64 * 62f64.log2() >= 128.0);
    }

    #[test]
    fn valid_state_format_cases() {
        assert!(valid_state_format("abcXYZ019"));
        assert!(valid_state_format(&"a".repeat(128)));
        assert!(!valid_state_format(&"a".repeat(129)));
        assert!(!valid_state_format(""));
        assert!(!valid_state_format("a-b"));
        assert!(!valid_state_format("a b"));
    }

    #[test]
    fn new_binding_is_43_chars_base64url() {
        let b = new_binding(&mut rand::thread_rng());
        assert_eq!(b.len(), 43);
        assert!(b
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn state_key_hides_the_state() {
        let key = state_key("abc");
        assert!(!key.contains("abc"));
        assert_eq!(key, state_key("abc"));
    }

    /// Each state has its own store key, `web_state:` and the state's SHA-256: two logins in
    /// flight never share (or overwrite) one pending entry.
    #[test]
    fn state_key_is_the_hash_of_that_state() {
        assert_eq!(
            state_key("abc"),
            format!("web_state:{}", sha256_hex(b"abc"))
        );
        assert_ne!(state_key("abc"), state_key("abd"));
    }

    #[test]
    fn scope_for_kinds() {
        assert_eq!(scope_for(AppKind::OfficialAccount, None), Ok("snsapi_base"));
        assert_eq!(
            scope_for(AppKind::OfficialAccount, Some("snsapi_userinfo")),
            Ok("snsapi_userinfo")
        );
        assert!(scope_for(AppKind::OfficialAccount, Some("snsapi_login")).is_err());
        assert_eq!(scope_for(AppKind::Website, None), Ok("snsapi_login"));
        assert!(scope_for(AppKind::Website, Some("snsapi_base")).is_err());
        assert!(scope_for(AppKind::Miniprogram, None).is_err());
    }

    #[test]
    fn authorize_url_official_account_in_wechat_order_with_fragment() {
        let url = authorize_url(
            "https://open.weixin.qq.com",
            &app(AppKind::OfficialAccount),
            "https://auth.example.com/v1/web/callback",
            "snsapi_base",
            "S1",
        );
        assert_eq!(
            url,
            "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx00000000000000a1\
             &redirect_uri=https%3A%2F%2Fauth.example.com%2Fv1%2Fweb%2Fcallback\
             &response_type=code&scope=snsapi_base&state=S1#wechat_redirect"
        );
    }

    #[test]
    fn authorize_url_website_is_qrconnect() {
        let url = authorize_url(
            "http://m",
            &app(AppKind::Website),
            "http://i/cb",
            "snsapi_login",
            "S",
        );
        assert!(
            url.starts_with("http://m/connect/qrconnect?appid="),
            "{url}"
        );
        assert!(
            url.ends_with("&scope=snsapi_login&state=S#wechat_redirect"),
            "{url}"
        );
    }

    fn pending(expires_at: i64) -> PendingLogin {
        PendingLogin {
            appid: "wx1".into(),
            redirect_uri: "https://a/".into(),
            scope: "snsapi_base".into(),
            binding_hash: sha256_hex(b"B"),
            expires_at,
        }
    }

    #[test]
    fn check_callback_matching_cookie_ok() {
        assert_eq!(
            check_callback(Some(pending(100)), Some("B"), 99),
            Ok(pending(100))
        );
    }

    #[test]
    fn check_callback_unknown_or_used_state_refused() {
        assert_eq!(
            check_callback(None, Some("B"), 0),
            Err(WebError::StateUnknown)
        );
    }

    #[test]
    fn check_callback_expired_state_refused() {
        assert_eq!(
            check_callback(Some(pending(100)), Some("B"), 100),
            Err(WebError::StateUnknown)
        );
    }

    #[test]
    fn check_callback_other_browser_refused() {
        assert_eq!(
            check_callback(Some(pending(100)), Some("other"), 0),
            Err(WebError::BrowserMismatch)
        );
        assert_eq!(
            check_callback(Some(pending(100)), None, 0),
            Err(WebError::BrowserMismatch)
        );
    }

    #[test]
    fn pending_login_round_trips() {
        let p = pending(5);
        assert_eq!(PendingLogin::decode(&p.encode()), Some(p));
        assert_eq!(PendingLogin::decode(b"garbage"), None);
    }

    #[test]
    fn session_cookies_attributes() {
        let cookies = session_cookies("AT", 900, "RT", 604_800, true);
        assert_eq!(
            cookies,
            [
                "__Host-weauth_at=AT; Path=/; Max-Age=900; HttpOnly; Secure; SameSite=Lax".to_string(),
                "weauth_rt=RT; Path=/v1/token/refresh; Max-Age=604800; HttpOnly; Secure; SameSite=Strict".to_string(),
                format!(
                    "__Host-weauth_rb={}; Path=/; Max-Age=604800; HttpOnly; Secure; SameSite=Strict",
                    refresh_binding("RT")
                ),
            ]
        );
        // Plain http (development): no prefix (a browser refuses it without Secure), no binding.
        let cookies = session_cookies("AT", 900, "RT", 1, false);
        assert_eq!(cookies.len(), 2);
        assert!(cookies[0].starts_with("weauth_at=AT;"), "{cookies:?}");
        assert!(!cookies[0].contains("Secure"), "{cookies:?}");
    }

    #[test]
    fn clear_session_cookies_expire_every_one_at_its_path() {
        let cookies = clear_session_cookies(false);
        assert_eq!(
            cookies[0],
            "weauth_at=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
        assert!(
            cookies[1].starts_with("weauth_rt=; Path=/v1/token/refresh; Max-Age=0"),
            "{cookies:?}"
        );
        assert_eq!(cookies.len(), 2);
        let cookies = clear_session_cookies(true);
        assert!(cookies[0].starts_with("__Host-weauth_at=; Path=/; Max-Age=0"));
        assert!(cookies[2].starts_with("__Host-weauth_rb=; Path=/; Max-Age=0"));
    }

    #[test]
    fn refresh_cookie_bound_only_with_its_own_binding() {
        let binding = refresh_binding("RT");
        // Not the hash the store keys the token by (the cookie goes with every request).
        assert_ne!(binding, sha256_hex(b"RT"));
        assert!(refresh_cookie_bound("RT", Some(&binding), true));
        // A refresh cookie planted by a sibling host: no binding, or another token's.
        assert!(!refresh_cookie_bound("RT", None, true));
        assert!(!refresh_cookie_bound(
            "RT",
            Some(&sha256_hex(b"other")),
            true
        ));
        assert!(refresh_cookie_bound("RT", None, false));
    }

    #[test]
    fn userinfo_read_for_a_scope_list_with_it() {
        for scope in [
            "snsapi_userinfo",
            "snsapi_login",
            "snsapi_userinfo,",
            "snsapi_base,snsapi_userinfo",
        ] {
            assert!(reads_userinfo(scope), "{scope}");
        }
        for scope in ["snsapi_base", "", "snsapi_userinfox", "snsapi_base,"] {
            assert!(!reads_userinfo(scope), "{scope}");
        }
    }

    #[test]
    fn state_cookie_host_only_when_secure_else_scoped_to_callback() {
        assert_eq!(
            state_cookie("B", 600, true),
            "__Host-weauth_oauth=B; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"
        );
        assert_eq!(
            state_cookie("B", 600, false),
            "weauth_oauth=B; Path=/v1/web/callback; Max-Age=600; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn chosen_refresh_cookie_takes_the_bound_one_of_several() {
        let binding = refresh_binding("RT");
        // One, bound or not (the caller judges it), or none.
        assert_eq!(chosen_refresh_cookie(&["RT"], None, true), Ok(Some("RT")));
        assert_eq!(
            chosen_refresh_cookie(&["", "RT"], None, true),
            Ok(Some("RT"))
        );
        assert_eq!(chosen_refresh_cookie(&[], Some(&binding), true), Ok(None));
        assert_eq!(chosen_refresh_cookie(&[""], None, true), Ok(None));
        // A planted one beside ours, in either order: ours, by its binding.
        for values in [["PLANTED", "RT"], ["RT", "PLANTED"]] {
            assert_eq!(
                chosen_refresh_cookie(&values, Some(&binding), true),
                Ok(Some("RT"))
            );
        }
        // No binding, a binding of neither, the same one twice, or plain http: refused.
        assert_eq!(chosen_refresh_cookie(&["A", "RT"], None, true), Err(()));
        let other = refresh_binding("OTHER");
        assert_eq!(
            chosen_refresh_cookie(&["A", "RT"], Some(&other), true),
            Err(())
        );
        assert_eq!(
            chosen_refresh_cookie(&["RT", "RT"], Some(&binding), true),
            Err(())
        );
        assert_eq!(
            chosen_refresh_cookie(&["A", "RT"], Some(&binding), false),
            Err(())
        );
    }

    #[test]
    fn find_cookie_cases() {
        fn find(headers: &[&'static str], name: &str) -> CookieLookup<'static> {
            find_cookie(headers.iter().map(|h| h.as_bytes()), name)
        }
        assert_eq!(
            find(&["a=1; weauth_at=T; b=2"], "weauth_at"),
            CookieLookup::One("T")
        );
        assert_eq!(
            find(&["a=1", "weauth_at=T"], "weauth_at"),
            CookieLookup::One("T")
        );
        assert_eq!(find(&["a=1"], "weauth_at"), CookieLookup::Absent);
        assert_eq!(
            find(&["weauth_at=T1; weauth_at=T2"], "weauth_at"),
            CookieLookup::Several
        );
        assert_eq!(find(&["xweauth_at=T"], "weauth_at"), CookieLookup::Absent);
    }

    /// A name that only a Unicode space before or after makes ours is another cookie (a
    /// browser lets any host set it: to it the name does not begin with `__Host-`); spaces
    /// and tabs around a name or value are trimmed, as browsers do.
    #[test]
    fn find_cookie_names_trimmed_of_spaces_and_tabs_only() {
        for planted in [
            "\u{2000}__Host-weauth_oauth=B",
            "\u{00a0}__Host-weauth_oauth=B",
            "__Host-weauth_oauth\u{3000}=B",
            "a=1;\u{2028}__Host-weauth_oauth=B",
        ] {
            assert_eq!(
                find_cookie([planted.as_bytes()], "__Host-weauth_oauth"),
                CookieLookup::Absent,
                "{planted:?}"
            );
        }
        assert_eq!(
            find_cookie(
                [b"a=1;\t__Host-weauth_oauth = B \t".as_slice()],
                "__Host-weauth_oauth"
            ),
            CookieLookup::One("B")
        );
    }

    /// Another cookie's value in raw UTF-8, or not UTF-8 at all, in the same header does not
    /// hide ours.
    #[test]
    fn find_cookie_beside_non_ascii_cookies() {
        let utf8 = "city=北京; weauth_at=T; lang=中文".as_bytes();
        assert_eq!(find_cookie([utf8], "weauth_at"), CookieLookup::One("T"));
        let latin1: &[u8] = b"name=Jos\xe9; weauth_at=T";
        assert_eq!(find_cookie([latin1], "weauth_at"), CookieLookup::One("T"));
    }

    #[test]
    fn redirects_off_the_issuer_host_named() {
        let apps = Apps::new(vec![app(AppKind::OfficialAccount)]);
        let uris: Vec<String> = apps.all()[0].redirect_uris.clone();
        assert!(!uris.is_empty());
        let same = url::Url::parse(&uris[0]).unwrap();
        // The issuer on the pages' host (another port too): nothing to say.
        let issuer = format!("{}://{}:8443", same.scheme(), same.host_str().unwrap());
        let on_host: Vec<_> = redirects_off_the_issuer_host(&issuer, &apps)
            .into_iter()
            .filter(|(_, uri)| *uri == uris[0])
            .collect();
        assert!(on_host.is_empty(), "{on_host:?}");
        let off = redirects_off_the_issuer_host("https://auth.elsewhere.example", &apps);
        assert_eq!(off.len(), uris.len());
        assert_eq!(off[0].0, apps.all()[0].appid);
    }

    #[test]
    fn allowed_origins_issuer_and_redirect_origins() {
        let apps = Apps::new(vec![app(AppKind::OfficialAccount)]);
        assert_eq!(
            allowed_origins("http://127.0.0.1:8080", &apps),
            vec![
                "http://127.0.0.1:8080".to_string(),
                "https://h5.example.com".to_string()
            ]
        );
    }

    #[test]
    fn same_origin_request_cases() {
        let allowed = vec!["https://h5.example.com".to_string()];
        assert!(same_origin_request(
            Some("https://h5.example.com"),
            None,
            &allowed
        ));
        assert!(!same_origin_request(
            Some("https://evil.example"),
            None,
            &allowed
        ));
        // Same site, other origin (port): refused.
        assert!(!same_origin_request(
            Some("https://h5.example.com:8443"),
            None,
            &allowed
        ));
        assert!(!same_origin_request(
            Some("null"),
            Some("https://h5.example.com/x"),
            &allowed
        ));
        assert!(same_origin_request(
            None,
            Some("https://h5.example.com/page?x=1"),
            &allowed
        ));
        assert!(!same_origin_request(
            None,
            Some("https://evil.example/h5.example.com"),
            &allowed
        ));
        assert!(!same_origin_request(None, None, &allowed));
    }
}
