//! The client of WeChat's web OAuth2 (official-account pages and website QR login):
//! `sns/oauth2/access_token` (code → user access token, openid, unionid?) and `sns/userinfo`
//! (nickname and avatar for `snsapi_userinfo` / `snsapi_login`).
//!
//! [`classify_oauth_token`] and [`classify_userinfo`] are the pure part, over
//! [`crate::wechat::classify_json`] (JSON as `text/plain`, no `errcode` on success); the errcodes
//! map through [`crate::wechat::errcode_error`] (40029/40163/42003 invalid code, 40013/40125
//! misconfigured app, -1 busy, 48001 scope not granted). [`HttpWechatWeb`] adds transport with
//! the same timeouts and bounded, jittered retry as the mini-program client. The app (appid and
//! secret) is an argument of each call, so one client serves every configured web app.
//!
//! WeChat's user access token and refresh token are never returned to a browser and never
//! logged: the issuer reads the profile with them at once and keeps nothing else (see
//! `docs/WEB-LOGIN.md`).

use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::config::apps::App;
use crate::telemetry::metrics::Metrics;
use crate::wechat::{
    classify_json, http_client, read_answer, transport_error, with_retry, BoxFuture, WechatError,
};

/// What `sns/oauth2/access_token` yields.
#[derive(Clone)]
pub struct OauthToken {
    /// The user access token (not the app's). Never logged, never sent to a browser.
    pub access_token: Zeroizing<String>,
    pub openid: String,
    /// Present for `snsapi_userinfo` / `snsapi_login` of an app bound to the Open Platform.
    pub unionid: Option<String>,
    /// The scope the user granted.
    pub scope: String,
    /// `is_snapshotuser: 1`: a snapshot-mode virtual account (a preview, not a real user).
    pub snapshot_user: bool,
}

impl std::fmt::Debug for OauthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OauthToken")
            .field("openid", &crate::short_hash(&self.openid))
            .field("unionid", &self.unionid.is_some())
            .field("scope", &self.scope)
            .field("snapshot_user", &self.snapshot_user)
            .finish_non_exhaustive()
    }
}

/// The public profile of `sns/userinfo` (sex and region are empty since 2021 and not kept).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebProfile {
    pub nickname: String,
    pub headimgurl: String,
    pub unionid: Option<String>,
}

fn text(value: &serde_json::Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Interprets an `sns/oauth2/access_token` answer.
///
/// # Errors
/// See [`classify_json`]; a success without `access_token` or `openid` is
/// [`WechatError::Unreadable`].
pub fn classify_oauth_token(status: u16, body: &[u8]) -> Result<OauthToken, WechatError> {
    let value = classify_json(status, body)?;
    let access_token = text(&value, "access_token")
        .ok_or_else(|| WechatError::Unreadable("oauth2 answer without access_token".into()))?;
    let openid = text(&value, "openid")
        .ok_or_else(|| WechatError::Unreadable("oauth2 answer without openid".into()))?;
    let snapshot_user = match value.get("is_snapshotuser") {
        Some(serde_json::Value::Number(n)) => n.as_i64() == Some(1),
        Some(serde_json::Value::Bool(b)) => *b,
        _ => false,
    };
    Ok(OauthToken {
        access_token: Zeroizing::new(access_token),
        openid,
        unionid: text(&value, "unionid"),
        scope: text(&value, "scope").unwrap_or_default(),
        snapshot_user,
    })
}

/// Interprets an `sns/userinfo` answer, checking it is about `openid`.
///
/// # Errors
/// See [`classify_json`]; an answer about another openid is [`WechatError::Unreadable`].
pub fn classify_userinfo(
    status: u16,
    body: &[u8],
    openid: &str,
) -> Result<WebProfile, WechatError> {
    // 48001 here is the user token's scope (`snsapi_base`), not an API the app lacks.
    let value = classify_json(status, body).map_err(|err| match err {
        WechatError::ApiUnauthorized { .. } => WechatError::ScopeUnauthorized,
        other => other,
    })?;
    if text(&value, "openid").as_deref() != Some(openid) {
        return Err(WechatError::Unreadable(
            "userinfo answer about another openid".into(),
        ));
    }
    Ok(WebProfile {
        nickname: text(&value, "nickname").unwrap_or_default(),
        headimgurl: text(&value, "headimgurl").unwrap_or_default(),
        unionid: text(&value, "unionid"),
    })
}

/// WeChat's web OAuth2 as the issuer uses it.
pub trait WechatWeb: Send + Sync {
    /// `GET sns/oauth2/access_token` for `app` with the code from the callback.
    fn oauth_token<'a>(
        &'a self,
        app: &'a App,
        code: &'a str,
    ) -> BoxFuture<'a, Result<OauthToken, WechatError>>;

    /// `GET sns/userinfo` with a user access token.
    fn userinfo<'a>(
        &'a self,
        app: &'a App,
        token: &'a OauthToken,
    ) -> BoxFuture<'a, Result<WebProfile, WechatError>>;
}

/// Settings of [`HttpWechatWeb`].
#[derive(Debug, Clone)]
pub struct HttpWechatWebConfig {
    pub api_base: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub retries: u32,
}

/// The real client, over reqwest with rustls.
pub struct HttpWechatWeb {
    config: HttpWechatWebConfig,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl HttpWechatWeb {
    /// Builds the client.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(config: HttpWechatWebConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = http_client(config.connect_timeout, config.timeout)?;
        Ok(HttpWechatWeb {
            config,
            client,
            metrics,
        })
    }

    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(u16, bytes::Bytes), WechatError> {
        let response = self
            .client
            .get(format!("{}{path}", self.config.api_base))
            .query(query)
            .send()
            .await
            .map_err(transport_error)?;
        read_answer(response).await
    }

    /// [`with_retry`] under `appid`; a refused appid/secret is logged for the operator.
    async fn with_retry<T, F, Fut>(
        &self,
        api: &'static str,
        appid: &str,
        call: F,
    ) -> Result<T, WechatError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, WechatError>>,
    {
        let result = with_retry(&self.metrics, appid, self.config.retries, api, call).await;
        if let Err(err @ WechatError::Misconfigured { .. }) = &result {
            if let Some(held_back) = super::log_misconfigured(appid, api) {
                tracing::error!(api, appid, error = %err, held_back, "WeChat refused this app's appid/secret: check its entry in WEAUTH_APPS_FILE");
            }
        }
        result
    }
}

impl WechatWeb for HttpWechatWeb {
    fn oauth_token<'a>(
        &'a self,
        app: &'a App,
        code: &'a str,
    ) -> BoxFuture<'a, Result<OauthToken, WechatError>> {
        Box::pin(async move {
            self.with_retry("oauth2_access_token", &app.appid, || async {
                let (status, body) = self
                    .get(
                        "/sns/oauth2/access_token",
                        &[
                            ("appid", app.appid.as_str()),
                            ("secret", app.secret.as_str()),
                            ("code", code),
                            ("grant_type", "authorization_code"),
                        ],
                    )
                    .await?;
                classify_oauth_token(status, &body)
            })
            .await
        })
    }

    fn userinfo<'a>(
        &'a self,
        app: &'a App,
        token: &'a OauthToken,
    ) -> BoxFuture<'a, Result<WebProfile, WechatError>> {
        Box::pin(async move {
            self.with_retry("userinfo", &app.appid, || async {
                let (status, body) = self
                    .get(
                        "/sns/userinfo",
                        &[
                            ("access_token", token.access_token.as_str()),
                            ("openid", token.openid.as_str()),
                            ("lang", "zh_CN"),
                        ],
                    )
                    .await?;
                classify_userinfo(status, &body, &token.openid)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_oauth_token_success_without_errcode_ok() {
        let body = br#"{"access_token":"UAT","expires_in":7200,"refresh_token":"URT","openid":"o1","scope":"snsapi_userinfo","unionid":"u1"}"#;
        let token = classify_oauth_token(200, body).unwrap();
        assert_eq!(token.openid, "o1");
        assert_eq!(token.unionid.as_deref(), Some("u1"));
        assert_eq!(token.scope, "snsapi_userinfo");
        assert!(!token.snapshot_user);
        let text = format!("{token:?}");
        assert!(!text.contains("UAT") && !text.contains("\"o1\""), "{text}");
    }

    #[test]
    fn classify_oauth_token_snapshot_user_flagged() {
        let body = br#"{"access_token":"UAT","expires_in":7200,"refresh_token":"R","openid":"o1","scope":"snsapi_base","is_snapshotuser":1}"#;
        assert!(classify_oauth_token(200, body).unwrap().snapshot_user);
    }

    #[test]
    fn classify_oauth_token_errcodes_mapped() {
        let cases = [
            (40029, WechatError::InvalidCode { errcode: 40029 }),
            (40163, WechatError::InvalidCode { errcode: 40163 }),
            (42003, WechatError::InvalidCode { errcode: 42003 }),
            (-1, WechatError::Busy),
            (45011, WechatError::RateLimited),
        ];
        for (errcode, expected) in cases {
            let body = format!(r#"{{"errcode":{errcode},"errmsg":"x, rid: 1a"}}"#);
            assert_eq!(
                classify_oauth_token(200, body.as_bytes()).unwrap_err(),
                expected
            );
        }
        for errcode in [40013, 40125] {
            let body = format!(r#"{{"errcode":{errcode},"errmsg":"bad, rid: 1a"}}"#);
            assert!(matches!(
                classify_oauth_token(200, body.as_bytes()),
                Err(WechatError::Misconfigured { .. })
            ));
        }
    }

    #[test]
    fn classify_oauth_token_missing_openid_unreadable() {
        assert!(matches!(
            classify_oauth_token(200, br#"{"access_token":"A"}"#),
            Err(WechatError::Unreadable(_))
        ));
        assert!(matches!(
            classify_oauth_token(200, b"<html>"),
            Err(WechatError::Unreadable(_))
        ));
        assert!(classify_oauth_token(502, b"").unwrap_err().is_retryable());
    }

    #[test]
    fn classify_userinfo_ok_and_scope_refused() {
        let body = br#"{"openid":"o1","nickname":"A","sex":0,"province":"","city":"","country":"","headimgurl":"https://x/1","privilege":[],"unionid":"u1"}"#;
        let profile = classify_userinfo(200, body, "o1").unwrap();
        assert_eq!(profile.nickname, "A");
        assert_eq!(profile.unionid.as_deref(), Some("u1"));
        assert!(classify_userinfo(200, body, "o2").is_err());
        let refused = br#"{"errcode":48001,"errmsg":"api unauthorized, rid: 1"}"#;
        assert_eq!(
            classify_userinfo(200, refused, "o1").unwrap_err(),
            WechatError::ScopeUnauthorized
        );
    }
}
