//! The WeChat server API client, behind the [`Wechat`] trait so handlers and tests can use
//! any implementation.
//!
//! Today it covers `sns/jscode2session` (login). The phone-number and access-token calls of a
//! later issue belong on the same trait. [`classify`] is the pure part: it turns an HTTP status
//! and body into a result, knowing WeChat's quirks (JSON served as `text/plain`, success
//! without `errcode`, `errcode: 0` sometimes present). [`HttpWechat`] adds transport: connect
//! and total timeouts, and a bounded retry with full jitter for the transient failures (-1
//! busy, timeouts, 5xx, unreadable bodies). Logs never carry the code, the secret, the
//! session_key or the URL (which holds the first two).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::metrics::Metrics;

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
            WechatError::Misconfigured { errcode, .. } | WechatError::Other { errcode, .. } => {
                errcode.to_string()
            }
            WechatError::Busy => "-1".into(),
            WechatError::Timeout => "timeout".into(),
            WechatError::Status(status) => format!("http_{status}"),
            WechatError::Unreadable(_) => "unreadable".into(),
            WechatError::Transport(_) => "transport".into(),
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
        40029 | 40163 => WechatError::InvalidCode { errcode },
        45011 => WechatError::RateLimited,
        40226 => WechatError::HighRisk,
        40013 | 40125 => WechatError::Misconfigured {
            errcode,
            errmsg: errmsg.to_string(),
        },
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
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("weauth-issuer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| err.without_url().to_string())?;
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

fn transport_error(err: reqwest::Error) -> WechatError {
    // The URL carries the secret and the code: strip it before the error goes anywhere.
    let err = err.without_url();
    if err.is_timeout() {
        WechatError::Timeout
    } else if err.is_decode() || err.is_body() {
        WechatError::Unreadable(err.to_string())
    } else {
        WechatError::Transport(err.to_string())
    }
}

impl Wechat for HttpWechat {
    fn code2session<'a>(
        &'a self,
        code: &'a str,
    ) -> BoxFuture<'a, Result<Code2Session, WechatError>> {
        Box::pin(async move {
            let mut attempt = 0u32;
            loop {
                let started = Instant::now();
                let result = self.attempt(code).await;
                self.metrics.wechat_call(
                    "jscode2session",
                    started.elapsed(),
                    result.as_ref().err(),
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
    fn debug_hides_session_key_and_openid() {
        let session = classify(200, br#"{"openid":"oSECRETOPENID","session_key":"SK"}"#).unwrap();
        let text = format!("{session:?}");
        assert!(!text.contains("oSECRETOPENID"));
        assert!(!text.contains("SK\""));
    }
}
