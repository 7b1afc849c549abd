//! The WeChat server API client, behind the [`Wechat`] trait so handlers and tests can use
//! any implementation.
//!
//! It covers `sns/jscode2session` (login), `cgi-bin/stable_token` (the app access token, cached
//! and shared through the store by [`crate::wechat::access_token`]), `wxa/business/getuserphonenumber`
//! and `wxa/checksession`, `wxa/getuserriskrank`, `wxa/getpluginopenpid` and
//! `wxa/business/checkencryptedmsg`. When an app carries `api_security` keys, the calls that
//! support WeChat's server API security are sent encrypted and signed and their answers
//! verified and decrypted ([`crate::wechat::apisec`]) in [`HttpWechat`]'s one helper for
//! token-taking APIs. [`classify`] and [`classify_json`] are the pure part: it turns an HTTP status
//! and body into a result, knowing WeChat's quirks (JSON served as `text/plain`, success
//! without `errcode`, `errcode: 0` sometimes present). [`HttpWechat`] adds transport: connect
//! and total timeouts, and a bounded retry with full jitter for the transient failures (-1
//! busy, timeouts, 5xx, unreadable bodies). Logs never carry the code, the secret, the
//! session_key or the URL (which holds the first two).

pub mod access_token;
pub mod apisec;
pub mod web;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::Deserialize;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use crate::telemetry::metrics::Metrics;

/// What `jscode2session` yields.
#[derive(Clone)]
pub struct Code2Session {
    pub openid: String,
    /// base64 of 16 bytes, as WeChat sends it. Never logged, never returned to a client.
    pub session_key: Zeroizing<String>,
    pub unionid: Option<String>,
}

impl std::fmt::Debug for Code2Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Code2Session")
            .field("openid", &crate::short_hash(&self.openid))
            .field("unionid", &self.unionid.is_some())
            .finish_non_exhaustive()
    }
}

/// A failed WeChat call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WechatError {
    #[error("WeChat refused the login code (errcode {errcode})")]
    InvalidCode { errcode: i64 },
    #[error("WeChat rate limit reached (errcode 45011)")]
    RateLimited,
    #[error("WeChat flagged the user as high-risk (errcode 40226)")]
    HighRisk,
    #[error(
        "WeChat refused our credentials (errcode {errcode}: {errmsg}); check WEAUTH_WECHAT_APPID and WEAUTH_WECHAT_SECRET"
    )]
    Misconfigured { errcode: i64, errmsg: String },
    #[error("WeChat is busy (errcode -1)")]
    Busy,
    #[error("WeChat did not answer in time")]
    Timeout,
    #[error("WeChat answered HTTP {0}")]
    Status(u16),
    #[error("WeChat's answer is unreadable: {0}")]
    Unreadable(String),
    #[error("cannot reach WeChat: {0}")]
    Transport(String),
    /// 40001 (invalid or replaced), 42001 (expired) or 40014 (malformed) access token: the
    /// caller invalidates its cached token and retries once with a new one.
    #[error("WeChat refused the app access token (errcode {errcode})")]
    InvalidAccessToken { errcode: i64 },
    /// 48001: the user token's scope does not allow this API (e.g. `sns/userinfo` with
    /// `snsapi_base`).
    #[error("WeChat refused the call for the granted scope (errcode 48001)")]
    ScopeUnauthorized,
    /// WeChat's server API security failed: an answer whose signature, certificate number,
    /// timestamp or encryption does not check out (never accepted), or WeChat refusing our
    /// signed call (errcodes 40230–40240: the app's keys or clock are wrong).
    #[error("WeChat API security: {0}")]
    ApiSecurity(crate::wechat::apisec::ApiSecError),
    #[error("WeChat error {errcode}: {errmsg}")]
    Other { errcode: i64, errmsg: String },
}

impl WechatError {
    /// Worth another attempt: busy, timeouts, 5xx, garbage, connection failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            WechatError::Busy
            | WechatError::Timeout
            | WechatError::Unreadable(_)
            | WechatError::Transport(_) => true,
            WechatError::Status(status) => *status >= 500,
            _ => false,
        }
    }

    /// A label for metrics: the errcode when WeChat gave one, else the failure class.
    pub fn metric_label(&self) -> String {
        match self {
            WechatError::InvalidCode { errcode } => errcode.to_string(),
            WechatError::RateLimited => "45011".into(),
            WechatError::HighRisk => "40226".into(),
            WechatError::ScopeUnauthorized => "48001".into(),
            WechatError::Misconfigured { errcode, .. }
            | WechatError::Other { errcode, .. }
            | WechatError::InvalidAccessToken { errcode } => errcode.to_string(),
            WechatError::Busy => "-1".into(),
            WechatError::Timeout => "timeout".into(),
            WechatError::Status(status) => format!("http_{status}"),
            WechatError::Unreadable(_) => "unreadable".into(),
            WechatError::Transport(_) => "transport".into(),
            WechatError::ApiSecurity(crate::wechat::apisec::ApiSecError::Refused {
                errcode,
                ..
            }) => errcode.to_string(),
            WechatError::ApiSecurity(err) => format!("api_security_{}", err.label()),
        }
    }
}

#[derive(Deserialize)]
struct RawCode2Session {
    #[serde(default)]
    openid: Option<String>,
    #[serde(default)]
    session_key: Option<String>,
    #[serde(default)]
    unionid: Option<String>,
    #[serde(default)]
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: Option<String>,
}

/// Maps an errcode to an error (`errcode` 0 is not an error and is not passed here).
pub fn errcode_error(errcode: i64, errmsg: &str) -> WechatError {
    match errcode {
        -1 => WechatError::Busy,
        // 42003: an expired web OAuth2 code.
        40029 | 40163 | 42003 => WechatError::InvalidCode { errcode },
        48001 => WechatError::ScopeUnauthorized,
        45011 => WechatError::RateLimited,
        40226 => WechatError::HighRisk,
        40001 | 42001 | 40014 => WechatError::InvalidAccessToken { errcode },
        40013 | 40125 => WechatError::Misconfigured {
            errcode,
            errmsg: errmsg.to_string(),
        },
        // The refusals of WeChat's API security layer (missing headers, bad signature or
        // encryption, expired timestamp, keys not set in the console).
        40230..=40240 => WechatError::ApiSecurity(crate::wechat::apisec::ApiSecError::Refused {
            errcode,
            errmsg: errmsg.to_string(),
        }),
        _ => WechatError::Other {
            errcode,
            errmsg: errmsg.to_string(),
        },
    }
}

/// Interprets a `jscode2session` answer (status and body), whatever its content type.
///
/// # Errors
/// Non-2xx → [`WechatError::Status`]; non-JSON → [`WechatError::Unreadable`]; an `errcode`
/// other than 0 → see [`errcode_error`]; a success missing `openid` or `session_key` →
/// [`WechatError::Unreadable`].
pub fn classify(status: u16, body: &[u8]) -> Result<Code2Session, WechatError> {
    if !(200..300).contains(&status) {
        return Err(WechatError::Status(status));
    }
    let raw: RawCode2Session = serde_json::from_slice(body)
        .map_err(|_| WechatError::Unreadable(format!("{} bytes of non-JSON", body.len())))?;
    if let Some(errcode) = raw.errcode.filter(|code| *code != 0) {
        return Err(errcode_error(errcode, raw.errmsg.as_deref().unwrap_or("")));
    }
    let openid = raw
        .openid
        .filter(|o| !o.is_empty())
        .ok_or_else(|| WechatError::Unreadable("success without openid".into()))?;
    let session_key = raw
        .session_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| WechatError::Unreadable("success without session_key".into()))?;
    Ok(Code2Session {
        openid,
        session_key: Zeroizing::new(session_key),
        unionid: raw.unionid.filter(|u| !u.is_empty()),
    })
}

/// An app access token from `cgi-bin/stable_token`.
#[derive(Clone)]
pub struct AccessToken {
    /// The token. Never logged.
    pub token: Zeroizing<String>,
    /// Seconds it stays valid from now, as WeChat said.
    pub expires_in: i64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The `phone_info` of `getuserphonenumber`. The number is personal data: never logged.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct PhoneInfo {
    /// With the country prefix for numbers outside mainland China (`+1...`), else bare.
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
    /// Without country code.
    #[serde(rename = "purePhoneNumber")]
    pub pure_phone_number: String,
    /// Country calling code, e.g. `86`.
    #[serde(rename = "countryCode", deserialize_with = "string_or_number")]
    pub country_code: String,
}

impl std::fmt::Debug for PhoneInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneInfo")
            .field("country_code", &self.country_code)
            .finish_non_exhaustive()
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(
            "countryCode is neither string nor number",
        )),
    }
}

/// Interprets the answer of a WeChat API other than `jscode2session`: a 2xx JSON object whose
/// `errcode`, when present and not 0, is an error. Returns the object.
///
/// # Errors
/// As [`classify`]: non-2xx, non-JSON, or an errcode (see [`errcode_error`]).
pub fn classify_json(status: u16, body: &[u8]) -> Result<serde_json::Value, WechatError> {
    if !(200..300).contains(&status) {
        return Err(WechatError::Status(status));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| WechatError::Unreadable(format!("{} bytes of non-JSON", body.len())))?;
    if !value.is_object() {
        return Err(WechatError::Unreadable("JSON that is not an object".into()));
    }
    if let Some(errcode) = value
        .get("errcode")
        .and_then(serde_json::Value::as_i64)
        .filter(|code| *code != 0)
    {
        let errmsg = value
            .get("errmsg")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        return Err(errcode_error(errcode, errmsg));
    }
    Ok(value)
}

/// Interprets a `stable_token` answer.
///
/// # Errors
/// See [`classify_json`]; a success without `access_token` or a positive `expires_in` is
/// [`WechatError::Unreadable`].
pub fn classify_stable_token(status: u16, body: &[u8]) -> Result<AccessToken, WechatError> {
    let value = classify_json(status, body)?;
    let token = value
        .get("access_token")
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| WechatError::Unreadable("stable_token without access_token".into()))?;
    let expires_in = value
        .get("expires_in")
        .and_then(serde_json::Value::as_i64)
        .filter(|e| *e > 0)
        .ok_or_else(|| WechatError::Unreadable("stable_token without expires_in".into()))?;
    Ok(AccessToken {
        token: Zeroizing::new(token.to_string()),
        expires_in,
    })
}

/// Interprets a `getuserphonenumber` answer.
///
/// # Errors
/// See [`classify_json`]; a success without a readable `phone_info` is
/// [`WechatError::Unreadable`].
pub fn classify_phone(status: u16, body: &[u8]) -> Result<PhoneInfo, WechatError> {
    let mut value = classify_json(status, body)?;
    let info = value
        .get_mut("phone_info")
        .map(serde_json::Value::take)
        .ok_or_else(|| WechatError::Unreadable("success without phone_info".into()))?;
    serde_json::from_value(info)
        .map_err(|_| WechatError::Unreadable("phone_info without a phone number".into()))
}

/// Interprets a `checksession` answer: `Ok(true)` valid, `Ok(false)` for 87009 (the signature,
/// i.e. the session_key, is not the user's current one).
///
/// # Errors
/// Any other failure, see [`classify_json`].
pub fn classify_checksession(status: u16, body: &[u8]) -> Result<bool, WechatError> {
    match classify_json(status, body) {
        Ok(_) => Ok(true),
        Err(WechatError::Other { errcode: 87009, .. }) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Interprets a `getuserriskrank` answer: the user's `risk_rank`, 0 (lowest) to 4. The rest
/// of the answer (`unoin_id`, WeChat's spelling of a unionid) is not used.
///
/// # Errors
/// See [`classify_json`]; a success without a rank 0–4 is [`WechatError::Unreadable`].
pub fn classify_risk_rank(status: u16, body: &[u8]) -> Result<u8, WechatError> {
    classify_json(status, body)?
        .get("risk_rank")
        .and_then(serde_json::Value::as_u64)
        .and_then(|rank| u8::try_from(rank).ok())
        .filter(|rank| *rank <= 4)
        .ok_or_else(|| WechatError::Unreadable("getuserriskrank without a risk_rank 0-4".into()))
}

/// Interprets a `getpluginopenpid` answer: the user's `openpid` in the plugin.
///
/// # Errors
/// See [`classify_json`]; a success without an `openpid` is [`WechatError::Unreadable`].
pub fn classify_openpid(status: u16, body: &[u8]) -> Result<String, WechatError> {
    classify_json(status, body)?
        .get("openpid")
        .and_then(serde_json::Value::as_str)
        .filter(|openpid| !openpid.is_empty())
        .map(String::from)
        .ok_or_else(|| WechatError::Unreadable("getpluginopenpid without openpid".into()))
}

/// What `getuserriskrank` is asked about: the user at login.
#[derive(Debug, Clone, Copy)]
pub struct RiskQuery<'a> {
    pub appid: &'a str,
    pub openid: &'a str,
    /// 0 registration/login, 1 marketing.
    pub scene: u8,
    /// The real client's address (the trusted `X-Forwarded-For` hop, else the peer).
    pub client_ip: std::net::IpAddr,
}

/// What `checkencryptedmsg` said of a user's encrypted data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EncryptedCheck {
    /// WeChat generated the data within the last 3 days.
    pub valid: bool,
    /// When WeChat generated it (unix seconds), when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
}

/// `checkencryptedmsg`'s `encrypted_msg_hash`: hex(SHA-256) of `encryptedData` exactly as the
/// client received it (the base64 text, not the decoded bytes — WeChat's documented example
/// hashes the text).
pub fn encrypted_msg_hash(encrypted_data: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(encrypted_data.as_bytes()))
}

/// Interprets a `checkencryptedmsg` answer: errcode 0 with `vaild` (WeChat's spelling; a
/// corrected `valid` is read too) and `create_time`; errcode 1 (no such data: not generated by
/// WeChat, or more than 3 days ago) is `valid: false`, not an error.
///
/// # Errors
/// Any other failure, see [`classify_json`]; a success without a boolean verdict is
/// [`WechatError::Unreadable`].
pub fn classify_encrypted_check(status: u16, body: &[u8]) -> Result<EncryptedCheck, WechatError> {
    let value = match classify_json(status, body) {
        Ok(value) => value,
        Err(WechatError::Other { errcode: 1, .. }) => {
            return Ok(EncryptedCheck {
                valid: false,
                create_time: None,
            })
        }
        Err(err) => return Err(err),
    };
    let valid = value
        .get("vaild")
        .or_else(|| value.get("valid"))
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| WechatError::Unreadable("checkencryptedmsg without vaild".into()))?;
    Ok(EncryptedCheck {
        valid,
        create_time: value.get("create_time").and_then(serde_json::Value::as_i64),
    })
}

/// Backoff before retry `attempt` (1-based): full jitter over `base * 2^(attempt-1)`, capped.
/// `unit` is a random number in [0, 1).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The WeChat server API as the issuer uses it.
pub trait Wechat: Send + Sync {
    /// Exchanges a `wx.login` code for the user's openid, session_key and unionid.
    fn code2session<'a>(
        &'a self,
        code: &'a str,
    ) -> BoxFuture<'a, Result<Code2Session, WechatError>>;

    /// `POST cgi-bin/stable_token`. Without `force_refresh` WeChat returns its current token
    /// (the same one to every caller); with it, a new token that replaces the old one.
    /// The default implementation (for test doubles) answers [`WechatError::Transport`].
    fn stable_token(&self, force_refresh: bool) -> BoxFuture<'_, Result<AccessToken, WechatError>> {
        let _ = force_refresh;
        Box::pin(async {
            Err(WechatError::Transport(
                "stable_token not implemented".into(),
            ))
        })
    }

    /// `POST wxa/business/getuserphonenumber` with a `getPhoneNumber` code and the caller's
    /// `openid`, which binds the code to the caller: WeChat refuses a code obtained by
    /// another user (as an invalid code, 40029). The default implementation (for test
    /// doubles) answers [`WechatError::Transport`].
    fn phone_number<'a>(
        &'a self,
        access_token: &'a str,
        code: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<PhoneInfo, WechatError>> {
        let _ = (access_token, code, openid);
        Box::pin(async {
            Err(WechatError::Transport(
                "phone_number not implemented".into(),
            ))
        })
    }

    /// `POST wxa/getpluginopenpid`: a `wx.pluginLogin` code (with the plugin's own access
    /// token) → the user's openpid in the plugin.
    /// The default implementation (for test doubles) answers [`WechatError::Transport`].
    fn plugin_openpid<'a>(
        &'a self,
        access_token: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<String, WechatError>> {
        let _ = (access_token, code);
        Box::pin(async {
            Err(WechatError::Transport(
                "plugin_openpid not implemented".into(),
            ))
        })
    }

    /// `POST wxa/getuserriskrank`: the user's risk rank (0–4).
    /// The default implementation (for test doubles) answers [`WechatError::Transport`].
    fn user_risk_rank<'a>(
        &'a self,
        access_token: &'a str,
        query: RiskQuery<'a>,
    ) -> BoxFuture<'a, Result<u8, WechatError>> {
        let _ = (access_token, query);
        Box::pin(async {
            Err(WechatError::Transport(
                "user_risk_rank not implemented".into(),
            ))
        })
    }

    /// `POST wxa/business/checkencryptedmsg`: whether WeChat generated the encrypted data
    /// whose [`encrypted_msg_hash`] this is, within the last 3 days.
    /// The default implementation (for test doubles) answers [`WechatError::Transport`].
    fn check_encrypted_data<'a>(
        &'a self,
        access_token: &'a str,
        encrypted_msg_hash: &'a str,
    ) -> BoxFuture<'a, Result<EncryptedCheck, WechatError>> {
        let _ = (access_token, encrypted_msg_hash);
        Box::pin(async {
            Err(WechatError::Transport(
                "check_encrypted_data not implemented".into(),
            ))
        })
    }

    /// `GET wxa/checksession`: whether `signature` (see
    /// [`weauth_wxdata::checksession_signature`]) matches the user's current session_key.
    /// The default implementation (for test doubles) answers [`WechatError::Transport`].
    fn check_session<'a>(
        &'a self,
        access_token: &'a str,
        openid: &'a str,
        signature: &'a str,
    ) -> BoxFuture<'a, Result<bool, WechatError>> {
        let _ = (access_token, openid, signature);
        Box::pin(async {
            Err(WechatError::Transport(
                "check_session not implemented".into(),
            ))
        })
    }
}

/// Settings of [`HttpWechat`].
#[derive(Debug, Clone)]
pub struct HttpWechatConfig {
    pub api_base: String,
    pub appid: String,
    pub secret: Zeroizing<String>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub retries: u32,
    /// The app's server API security keys: calls of [`crate::wechat::apisec::SECURED_PATHS`]
    /// are then encrypted and signed (`None`: every call in clear).
    pub api_security: Option<Arc<crate::wechat::apisec::ApiSecurityKeys>>,
    /// Dates the API security requests and judges the answers' timestamps.
    pub clock: Arc<dyn crate::clock::Clock>,
}

/// The real client, over reqwest with rustls.
pub struct HttpWechat {
    config: HttpWechatConfig,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl HttpWechat {
    /// Builds the client.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(config: HttpWechatConfig, metrics: Arc<Metrics>) -> Result<HttpWechat, String> {
        let client = http_client(config.connect_timeout, config.timeout)?;
        Ok(HttpWechat {
            config,
            client,
            metrics,
        })
    }

    async fn attempt(&self, code: &str) -> Result<Code2Session, WechatError> {
        let url = format!("{}/sns/jscode2session", self.config.api_base);
        let response = self
            .client
            .get(&url)
            .query(&[
                ("appid", self.config.appid.as_str()),
                ("secret", self.config.secret.as_str()),
                ("js_code", code),
                ("grant_type", "authorization_code"),
            ])
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport_error)?;
        classify(status, &body)
    }
}

/// The HTTP client of every WeChat API client: connect and total timeouts, no redirects (an
/// API answer is never a redirect; following one could carry the secret elsewhere).
///
/// # Errors
/// When the TLS backend cannot be initialised.
pub(crate) fn http_client(
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("weauth-issuer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| err.without_url().to_string())
}

/// Maps a transport failure. The URL carries the secret, the code or a user token: it is
/// stripped before the error goes anywhere.
pub(crate) fn transport_error(err: reqwest::Error) -> WechatError {
    let err = err.without_url();
    if err.is_timeout() {
        WechatError::Timeout
    } else if err.is_decode() || err.is_body() {
        WechatError::Unreadable(err.to_string())
    } else {
        WechatError::Transport(err.to_string())
    }
}

/// Runs one attempt of a WeChat call in a `wechat` span (DEBUG, so disabled unless traces are
/// exported: see [`crate::telemetry::otel`]) with `api`, `appid`, `attempt`, `outcome` (`ok` or `error`)
/// and, on error, `errcode` (the errcode or failure class of the metrics; never the code,
/// token or openid the call carried).
pub(crate) async fn traced_attempt<T>(
    api: &'static str,
    appid: &str,
    attempt: u32,
    call: impl Future<Output = Result<T, WechatError>>,
) -> Result<T, WechatError> {
    let span = tracing::debug_span!(
        "wechat",
        api,
        appid,
        attempt,
        outcome = tracing::field::Empty,
        errcode = tracing::field::Empty,
    );
    let result = call.instrument(span.clone()).await;
    match &result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(err) => {
            span.record("outcome", "error");
            span.record("errcode", err.metric_label().as_str());
        }
    }
    result
}

/// Runs `call` with the bounded, jittered retry of transient failures (at most `retries`
/// retries), recording each attempt in the metrics under `appid` and `api`.
pub(crate) async fn with_retry<T, F, Fut>(
    metrics: &Metrics,
    appid: &str,
    retries: u32,
    api: &'static str,
    call: F,
) -> Result<T, WechatError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, WechatError>>,
{
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let result = traced_attempt(api, appid, attempt, call()).await;
        let failed = result.as_ref().err().map(WechatError::metric_label);
        metrics.wechat_app_call(appid, api, started.elapsed(), failed.as_deref());
        match result {
            Err(err) if err.is_retryable() && attempt < retries => {
                attempt += 1;
                let wait = backoff(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(1),
                    rand::random::<f64>(),
                );
                tracing::info!(api, appid, error = %err, attempt, wait_ms = wait.as_millis() as u64, "retrying WeChat call");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

impl HttpWechat {
    /// [`with_retry`] under this client's appid.
    async fn with_retry<T, F, Fut>(&self, api: &'static str, call: F) -> Result<T, WechatError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        with_retry(
            &self.metrics,
            &self.config.appid,
            self.config.retries,
            api,
            call,
        )
        .await
    }

    async fn post_json(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<(u16, bytes::Bytes), WechatError> {
        let url = format!("{}{path}", self.config.api_base);
        let response = self
            .client
            .post(&url)
            .query(query)
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport_error)?;
        Ok((status, body))
    }

    /// A token-taking `POST` API (`path?access_token=…` with a JSON body), retried as
    /// [`HttpWechat::with_retry`] says, its answer read by `classify`. With API security keys
    /// and an API that supports it, each attempt is encrypted and signed afresh (new
    /// timestamp, nonce and iv) and `classify` only sees an answer that passed every check.
    async fn call_api<T>(
        &self,
        api: &'static str,
        path: &str,
        access_token: &str,
        body: serde_json::Value,
        classify: fn(u16, &[u8]) -> Result<T, WechatError>,
    ) -> Result<T, WechatError> {
        let secured = self
            .config
            .api_security
            .as_deref()
            .filter(|_| crate::wechat::apisec::is_secured(path));
        self.with_retry(api, || async {
            let (status, bytes) = match secured {
                Some(keys) => {
                    let answer = self
                        .post_secured(api, path, access_token, &body, keys)
                        .await?;
                    (200, bytes::Bytes::from(answer))
                }
                None => {
                    self.post_json(path, &[("access_token", access_token)], &body)
                        .await?
                }
            };
            classify(status, &bytes)
        })
        .await
    }

    /// One encrypted and signed call; the verified, decrypted answer (the API's ordinary JSON).
    async fn post_secured(
        &self,
        api: &'static str,
        path: &str,
        access_token: &str,
        body: &serde_json::Value,
        keys: &crate::wechat::apisec::ApiSecurityKeys,
    ) -> Result<String, WechatError> {
        use crate::wechat::apisec::{self as apisec, ApiSecError};
        let appid = self.config.appid.as_str();
        let urlpath = apisec::urlpath(&self.config.api_base, path);
        let request = apisec::secure_request(
            keys,
            appid,
            &urlpath,
            &body.to_string(),
            self.config.clock.now(),
            &apisec::RequestNonces::random(),
        )
        .map_err(WechatError::ApiSecurity)?;
        let mut builder = self
            .client
            .post(&urlpath)
            .query(&[("access_token", access_token)])
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = apisec::AnswerHeaders::read(|name| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(String::from)
        });
        let bytes = response.bytes().await.map_err(transport_error)?;
        if !(200..300).contains(&status) {
            return Err(WechatError::Status(status));
        }
        match apisec::open_answer(
            keys,
            appid,
            &urlpath,
            &headers,
            &bytes,
            self.config.clock.now(),
        ) {
            Ok(answer) => Ok(answer),
            // WeChat's refusals come in clear: an error, mapped as any errcode.
            Err(ApiSecError::Refused { errcode, errmsg }) => {
                let err = errcode_error(errcode, &errmsg);
                if let WechatError::ApiSecurity(_) = err {
                    tracing::error!(api, appid, error = %err, hint = apisec::describe_errcode(errcode).unwrap_or(""), "WeChat refused the signed call");
                }
                Err(err)
            }
            // An unsigned answer that is not even JSON (a proxy's error page): as unreadable.
            Err(ApiSecError::Unsigned)
                if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() =>
            {
                Err(WechatError::Unreadable(format!(
                    "{} bytes of unsigned non-JSON",
                    bytes.len()
                )))
            }
            Err(err) => {
                tracing::warn!(api, appid, check = err.label(), error = %err, "WeChat's answer failed the API security check; refused");
                Err(WechatError::ApiSecurity(err))
            }
        }
    }
}

impl Wechat for HttpWechat {
    fn stable_token(&self, force_refresh: bool) -> BoxFuture<'_, Result<AccessToken, WechatError>> {
        Box::pin(async move {
            let body = serde_json::json!({
                "grant_type": "client_credential",
                "appid": self.config.appid,
                "secret": self.config.secret.as_str(),
                "force_refresh": force_refresh,
            });
            let result = self
                .with_retry("stable_token", || async {
                    let (status, bytes) =
                        self.post_json("/cgi-bin/stable_token", &[], &body).await?;
                    classify_stable_token(status, &bytes)
                })
                .await;
            if let Err(err @ WechatError::Misconfigured { .. }) = &result {
                tracing::error!(error = %err, "WeChat refused the app credentials for stable_token");
            }
            result
        })
    }

    fn phone_number<'a>(
        &'a self,
        access_token: &'a str,
        code: &'a str,
        openid: &'a str,
    ) -> BoxFuture<'a, Result<PhoneInfo, WechatError>> {
        let body = serde_json::json!({ "code": code, "openid": openid });
        Box::pin(self.call_api(
            "getuserphonenumber",
            "/wxa/business/getuserphonenumber",
            access_token,
            body,
            classify_phone,
        ))
    }

    fn plugin_openpid<'a>(
        &'a self,
        access_token: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, Result<String, WechatError>> {
        let body = serde_json::json!({ "code": code });
        Box::pin(self.call_api(
            "getpluginopenpid",
            "/wxa/getpluginopenpid",
            access_token,
            body,
            classify_openpid,
        ))
    }

    fn user_risk_rank<'a>(
        &'a self,
        access_token: &'a str,
        query: RiskQuery<'a>,
    ) -> BoxFuture<'a, Result<u8, WechatError>> {
        let body = serde_json::json!({
            "appid": query.appid,
            "openid": query.openid,
            "scene": query.scene,
            "client_ip": query.client_ip.to_string(),
        });
        Box::pin(self.call_api(
            "getuserriskrank",
            "/wxa/getuserriskrank",
            access_token,
            body,
            classify_risk_rank,
        ))
    }

    fn check_encrypted_data<'a>(
        &'a self,
        access_token: &'a str,
        encrypted_msg_hash: &'a str,
    ) -> BoxFuture<'a, Result<EncryptedCheck, WechatError>> {
        let body = serde_json::json!({ "encrypted_msg_hash": encrypted_msg_hash });
        Box::pin(self.call_api(
            "checkencryptedmsg",
            "/wxa/business/checkencryptedmsg",
            access_token,
            body,
            classify_encrypted_check,
        ))
    }

    fn check_session<'a>(
        &'a self,
        access_token: &'a str,
        openid: &'a str,
        signature: &'a str,
    ) -> BoxFuture<'a, Result<bool, WechatError>> {
        Box::pin(async move {
            self.with_retry("checksession", || async {
                let url = format!("{}/wxa/checksession", self.config.api_base);
                let response = self
                    .client
                    .get(&url)
                    .query(&[
                        ("access_token", access_token),
                        ("openid", openid),
                        ("signature", signature),
                        ("sig_method", "hmac_sha256"),
                    ])
                    .send()
                    .await
                    .map_err(transport_error)?;
                let status = response.status().as_u16();
                let bytes = response.bytes().await.map_err(transport_error)?;
                classify_checksession(status, &bytes)
            })
            .await
        })
    }

    fn code2session<'a>(
        &'a self,
        code: &'a str,
    ) -> BoxFuture<'a, Result<Code2Session, WechatError>> {
        Box::pin(async move {
            let mut attempt = 0u32;
            loop {
                let started = Instant::now();
                let result = traced_attempt(
                    "jscode2session",
                    &self.config.appid,
                    attempt,
                    self.attempt(code),
                )
                .await;
                let failed = result.as_ref().err().map(WechatError::metric_label);
                self.metrics.wechat_app_call(
                    &self.config.appid,
                    "jscode2session",
                    started.elapsed(),
                    failed.as_deref(),
                );
                match result {
                    Ok(session) => return Ok(session),
                    Err(err) if err.is_retryable() && attempt < self.config.retries => {
                        attempt += 1;
                        let wait = backoff(
                            attempt,
                            Duration::from_millis(100),
                            Duration::from_secs(1),
                            rand::random::<f64>(),
                        );
                        tracing::info!(error = %err, attempt, wait_ms = wait.as_millis() as u64, "retrying jscode2session");
                        tokio::time::sleep(wait).await;
                    }
                    Err(err) => {
                        if let WechatError::Misconfigured { .. } = err {
                            tracing::error!(error = %err, "WeChat login is misconfigured");
                        }
                        return Err(err);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_success_without_errcode_ok() {
        let body = br#"{"openid":"o1","session_key":"a2V5a2V5a2V5a2V5a2V5aw==","unionid":"u1"}"#;
        let session = classify(200, body).unwrap();
        assert_eq!(session.openid, "o1");
        assert_eq!(session.unionid.as_deref(), Some("u1"));
    }

    #[test]
    fn classify_errcode_zero_is_success() {
        let body = br#"{"openid":"o1","session_key":"k","errcode":0,"errmsg":"ok"}"#;
        let session = classify(200, body).unwrap();
        assert!(session.unionid.is_none());
    }

    #[test]
    fn classify_errcodes_mapped() {
        let cases = [
            (40029, WechatError::InvalidCode { errcode: 40029 }),
            (40163, WechatError::InvalidCode { errcode: 40163 }),
            (45011, WechatError::RateLimited),
            (40226, WechatError::HighRisk),
            (-1, WechatError::Busy),
        ];
        for (errcode, expected) in cases {
            let body = format!(r#"{{"errcode":{errcode},"errmsg":"x, rid: 1a"}}"#);
            assert_eq!(classify(200, body.as_bytes()).unwrap_err(), expected);
        }
        let body = br#"{"errcode":40125,"errmsg":"invalid appsecret, rid: 2b"}"#;
        assert!(matches!(
            classify(200, body),
            Err(WechatError::Misconfigured { errcode: 40125, .. })
        ));
    }

    #[test]
    fn classify_html_is_unreadable_and_retryable() {
        let err = classify(200, b"<html>502 Bad Gateway</html>").unwrap_err();
        assert!(matches!(err, WechatError::Unreadable(_)));
        assert!(err.is_retryable());
    }

    #[test]
    fn classify_5xx_status_retryable_4xx_not() {
        assert!(classify(503, b"").unwrap_err().is_retryable());
        assert!(!classify(404, b"").unwrap_err().is_retryable());
    }

    #[test]
    fn classify_success_missing_session_key_unreadable() {
        assert!(matches!(
            classify(200, br#"{"openid":"o1"}"#),
            Err(WechatError::Unreadable(_))
        ));
    }

    #[test]
    fn invalid_code_not_retryable() {
        assert!(!WechatError::InvalidCode { errcode: 40029 }.is_retryable());
        assert!(!WechatError::RateLimited.is_retryable());
        assert!(WechatError::Busy.is_retryable());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_millis(1000);
        assert_eq!(
            backoff(1, base, cap, 0.999_999),
            Duration::from_nanos(99_999_900)
        );
        assert_eq!(backoff(2, base, cap, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(10, base, cap, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(3, base, cap, 0.0), Duration::ZERO);
    }

    #[test]
    fn classify_stable_token_success_ok() {
        let token =
            classify_stable_token(200, br#"{"access_token":"AT","expires_in":7200}"#).unwrap();
        assert_eq!(token.token.as_str(), "AT");
        assert_eq!(token.expires_in, 7200);
        assert!(!format!("{token:?}").contains("AT\""));
    }

    #[test]
    fn classify_stable_token_missing_expiry_unreadable() {
        assert!(matches!(
            classify_stable_token(200, br#"{"access_token":"AT"}"#),
            Err(WechatError::Unreadable(_))
        ));
    }

    #[test]
    fn classify_json_token_errcodes_invalid_access_token() {
        for errcode in [40001, 42001, 40014] {
            let body = format!(r#"{{"errcode":{errcode},"errmsg":"x, rid: 1"}}"#);
            assert_eq!(
                classify_json(200, body.as_bytes()).unwrap_err(),
                WechatError::InvalidAccessToken { errcode }
            );
        }
    }

    #[test]
    fn classify_openpid_reads_openpid() {
        let body = br#"{"errcode":0,"errmsg":"ok","openpid":"oP123"}"#;
        assert_eq!(classify_openpid(200, body).unwrap(), "oP123");
        assert!(matches!(
            classify_openpid(200, br#"{"errcode":0,"errmsg":"ok"}"#),
            Err(WechatError::Unreadable(_))
        ));
        assert!(matches!(
            classify_openpid(200, br#"{"errcode":40029,"errmsg":"invalid code"}"#),
            Err(WechatError::InvalidCode { errcode: 40029 })
        ));
    }

    #[test]
    fn classify_risk_rank_reads_the_rank_with_wechats_unoin_id() {
        let body = br#"{"errcode":0,"errmsg":"getuserriskrank succ","risk_rank":3,"unoin_id":123}"#;
        assert_eq!(classify_risk_rank(200, body).unwrap(), 3);
        for body in [
            &br#"{"errcode":0,"errmsg":"getuserriskrank succ"}"#[..],
            br#"{"errcode":0,"errmsg":"ok","risk_rank":9}"#,
            br#"{"errcode":0,"errmsg":"ok","risk_rank":-1}"#,
        ] {
            assert!(
                matches!(
                    classify_risk_rank(200, body),
                    Err(WechatError::Unreadable(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let missing = br#"{"errcode":61010,"errmsg":"code is expired"}"#;
        assert!(matches!(
            classify_risk_rank(200, missing),
            Err(WechatError::Other { errcode: 61010, .. })
        ));
    }

    #[test]
    fn encrypted_msg_hash_matches_wechats_documented_example() {
        // checkEncryptedData's documentation: this encryptedData hashes to 657edd86….
        let data = "hsSuSUsePBqSQw2rYMtf9Nvha603xX8f2BMQBcYRoJiMNwOqt/UEhrqekebG5ar0LFNAm5MD4Uz6zorRwiXJwbySJ/FEJHav4NsobBIU1PwdjbJWVQLFy7+YFkHB32OnQXWMh6ugW7Dyk2KS5BXp1f5lniKPp1KNLyNLlFlNZ2mgJCJmWvHj5AI7BLpWwoRvqRyZvVXo+9FsWqvBdxmAPA==";
        assert_eq!(
            encrypted_msg_hash(data),
            "657edd868c9715a9bebe42b833269a557a48498785397a796f1568c29a200b2c"
        );
    }

    #[test]
    fn classify_encrypted_check_reads_wechats_vaild_spelling() {
        let body = br#"{"errcode":0,"errmsg":"ok","vaild":true,"create_time":1629121902}"#;
        assert_eq!(
            classify_encrypted_check(200, body).unwrap(),
            EncryptedCheck {
                valid: true,
                create_time: Some(1629121902)
            }
        );
    }

    #[test]
    fn classify_encrypted_check_errcode_1_is_not_genuine_not_an_error() {
        let body = br#"{"errcode":1,"errmsg":"data not exist rid: 1"}"#;
        assert_eq!(
            classify_encrypted_check(200, body).unwrap(),
            EncryptedCheck {
                valid: false,
                create_time: None
            }
        );
        let busy = br#"{"errcode":-1,"errmsg":"system error"}"#;
        assert!(matches!(
            classify_encrypted_check(200, busy),
            Err(WechatError::Busy)
        ));
        let unreadable = br#"{"errcode":0,"errmsg":"ok"}"#;
        assert!(matches!(
            classify_encrypted_check(200, unreadable),
            Err(WechatError::Unreadable(_))
        ));
    }

    #[test]
    fn classify_phone_success_reads_phone_info() {
        let body = br#"{"errcode":0,"errmsg":"ok","phone_info":{"phoneNumber":"13800138000","purePhoneNumber":"13800138000","countryCode":"86","watermark":{"timestamp":1,"appid":"wx1"}}}"#;
        let info = classify_phone(200, body).unwrap();
        assert_eq!(info.phone_number, "13800138000");
        assert_eq!(info.country_code, "86");
        assert!(!format!("{info:?}").contains("13800138000"));
    }

    #[test]
    fn classify_phone_used_code_invalid_code() {
        let body = br#"{"errcode":40029,"errmsg":"invalid code, rid: 1"}"#;
        assert_eq!(
            classify_phone(200, body).unwrap_err(),
            WechatError::InvalidCode { errcode: 40029 }
        );
    }

    #[test]
    fn classify_checksession_87009_is_invalid_not_error() {
        assert_eq!(
            classify_checksession(200, br#"{"errcode":0,"errmsg":"ok"}"#),
            Ok(true)
        );
        assert_eq!(
            classify_checksession(200, br#"{"errcode":87009,"errmsg":"invalid signature"}"#),
            Ok(false)
        );
        assert!(classify_checksession(200, br#"{"errcode":40001,"errmsg":"x"}"#).is_err());
    }

    #[test]
    fn debug_hides_session_key_and_openid() {
        let session = classify(200, br#"{"openid":"oSECRETOPENID","session_key":"SK"}"#).unwrap();
        let text = format!("{session:?}");
        assert!(!text.contains("oSECRETOPENID"));
        assert!(!text.contains("SK\""));
    }
}
