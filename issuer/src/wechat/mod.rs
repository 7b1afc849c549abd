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
mod answers;
/// The API security protocol, a leaf of its own (the apps file reads its keys).
pub use crate::apisec;
mod clients;
mod http;
pub mod web;

pub use self::answers::*;
pub use self::clients::{UnknownApp, WechatClients};
pub use self::http::*;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::Deserialize;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use crate::telemetry::metrics::Metrics;
use crate::telemetry::throttle::{self, Throttle};

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
        "WeChat refused the app's credentials (errcode {errcode}: {errmsg}); check its appid and secret (WEAUTH_WECHAT_APPID and WEAUTH_WECHAT_SECRET, or its entry in WEAUTH_APPS_FILE)"
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
    /// No connection could be made (DNS, TCP connect, TLS handshake, a connect timeout): the
    /// request was never sent, so a code it carried is not spent (`wechat::http::with_retry`).
    /// Counted as `transport` in the metrics.
    #[error("cannot connect to WeChat: {0}")]
    Unreachable(String),
    /// 40001 (invalid or replaced), 42001 (expired) or 40014 (malformed) access token: the
    /// caller invalidates its cached token and retries once with a new one. `after_lost`: the
    /// failure of an earlier attempt of the same call, whose answer may have been lost after
    /// WeChat spent the code it carried (`wechat::http::with_retry`): the retry with a new
    /// token then meets "code already used", the echo of that failure, not a bad code.
    #[error("WeChat refused the app access token (errcode {errcode})")]
    InvalidAccessToken {
        errcode: i64,
        after_lost: Option<Box<WechatError>>,
    },
    /// 48001 from `sns/userinfo`: the user token's scope does not allow it (`snsapi_base`).
    #[error("WeChat refused the call for the granted scope (errcode 48001)")]
    ScopeUnauthorized,
    /// 48001 from any other API: the app has not been granted it (not enabled for the app in
    /// WeChat's console, or the app's type or verification does not allow it) — the operator's
    /// to fix, not the user's.
    #[error(
        "WeChat has not granted the app this API (errcode 48001: {errmsg}); enable it for the app in WeChat's console"
    )]
    ApiUnauthorized { errmsg: String },
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
            | WechatError::Transport(_)
            | WechatError::Unreachable(_) => true,
            WechatError::Status(status) => *status >= 500,
            _ => false,
        }
    }

    /// A label for metrics: the errcode when WeChat gave one, else the failure class. A rate
    /// limit is 45011 and a busy WeChat -1 whichever API said so (`getpluginopenpid`'s 1003 and
    /// 1000 too: one alert per meaning; RUNBOOK.md says so).
    pub fn metric_label(&self) -> String {
        match self {
            WechatError::InvalidCode { errcode } => errcode.to_string(),
            WechatError::RateLimited => "45011".into(),
            WechatError::HighRisk => "40226".into(),
            WechatError::ScopeUnauthorized | WechatError::ApiUnauthorized { .. } => "48001".into(),
            WechatError::Misconfigured { errcode, .. }
            | WechatError::Other { errcode, .. }
            | WechatError::InvalidAccessToken { errcode, .. } => errcode.to_string(),
            WechatError::Busy => "-1".into(),
            WechatError::Timeout => "timeout".into(),
            WechatError::Status(status) => format!("http_{status}"),
            WechatError::Unreadable(_) => "unreadable".into(),
            WechatError::Transport(_) | WechatError::Unreachable(_) => "transport".into(),
            WechatError::ApiSecurity(crate::wechat::apisec::ApiSecError::Refused {
                errcode,
                ..
            }) => errcode.to_string(),
            WechatError::ApiSecurity(err) => format!("api_security_{}", err.label()),
        }
    }
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

/// Whether to log WeChat's refusal of app `appid`'s configuration (its secret, its IP
/// allow-list, its API-security key) at `api` now: `Some(held_back)` once per app, API and
/// [`throttle::INTERVAL`] — every call met it until the configuration is mended, and each is
/// counted (`weauth_wechat_errors_total`, alerted by `WeauthWechatBadCredentials`).
fn log_misconfigured(appid: &str, api: &'static str) -> Option<u64> {
    static MISCONFIGURED: Throttle<(String, &'static str)> = Throttle::new(throttle::INTERVAL);
    MISCONFIGURED.admit((appid.to_string(), api))
}

#[cfg(test)]
mod tests;
