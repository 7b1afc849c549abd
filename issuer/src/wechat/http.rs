//! The real client ([`HttpWechat`]), over reqwest with rustls: timeouts, retries with
//! backoff, the app access token, the server API security, a trace span per attempt.

use super::*;
use crate::secrets::Secret;

/// Settings of [`HttpWechat`].
#[derive(Debug, Clone)]
pub struct HttpWechatConfig {
    pub api_base: String,
    pub appid: String,
    pub secret: Secret<String>,
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
        let (status, body) = read_answer(response).await?;
        classify(status, &body)
    }
}

/// The most of a WeChat answer read. WeChat's answers are a few hundred bytes (the largest, a
/// signed and encrypted one, a few KiB); anything longer is a proxy's page or worse, and read
/// whole it would cost memory for nothing until the total timeout.
const MAX_ANSWER: usize = 64 * 1024;

/// A WeChat answer's status and body, the body read up to [`MAX_ANSWER`] bytes.
///
/// # Errors
/// A longer body is [`WechatError::Unreadable`]; a failed read as [`transport_error`].
pub(crate) async fn read_answer(
    mut response: reqwest::Response,
) -> Result<(u16, bytes::Bytes), WechatError> {
    let status = response.status().as_u16();
    let too_long = || WechatError::Unreadable(format!("an answer longer than {MAX_ANSWER} bytes"));
    if response
        .content_length()
        .is_some_and(|length| length > MAX_ANSWER as u64)
    {
        return Err(too_long());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body.freeze()))
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
        // A peak of calls leaves as many connections open (HTTP/1.1, each with its TLS
        // session) for the idle timeout; keep enough for the steady rate, not the peak.
        .pool_max_idle_per_host(64)
        .user_agent(concat!("weauth-issuer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| err.without_url().to_string())
}

/// Maps a transport failure. The URL carries the secret, the code or a user token: it is
/// stripped before the error goes anywhere.
pub(crate) fn transport_error(err: reqwest::Error) -> WechatError {
    let err = err.without_url();
    // Before the timeout: a connect timeout is both, and its request was never sent.
    if err.is_connect() {
        WechatError::Unreachable(err.to_string())
    } else if err.is_timeout() {
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
///
/// A call carrying a single-use code (`jscode2session`, `getuserphonenumber`,
/// `getpluginopenpid`, the web login's `oauth2/access_token`) may have spent it at WeChat in an
/// attempt whose answer never arrived whole (a timeout, a reset, a gateway's 5xx, a cut body):
/// the retry then meets "code already used" (40163) or "invalid code" (40029). That refusal is
/// the first failure's echo, not a bad code: the caller gets the failure it was retrying (a 502
/// or 503, "retry"), not 400 `invalid_grant` ("log in again with a new code"). An attempt that
/// could not connect ([`WechatError::Unreachable`]) sent nothing: a refusal after it is the
/// code's own.
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
    let mut retried: Option<WechatError> = None;
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
                // A request never sent spent nothing: only a failure that may have reached
                // WeChat makes a later "code already used" its echo.
                if !matches!(err, WechatError::Unreachable(_)) {
                    retried = Some(err);
                }
                tokio::time::sleep(wait).await;
            }
            // A new access token is fetched and the call made again by `call_for`: carry the
            // lost answer there, which may have spent the code this call carries.
            Err(WechatError::InvalidAccessToken { errcode, .. }) => {
                return Err(WechatError::InvalidAccessToken {
                    errcode,
                    after_lost: retried.map(Box::new),
                })
            }
            Err(err @ WechatError::InvalidCode { .. }) => {
                return Err(match retried {
                    Some(first) => {
                        tracing::info!(api, appid, error = %first, refusal = %err, "the retry found the code spent by an attempt whose answer was lost");
                        first
                    }
                    None => err,
                })
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
        read_answer(response).await
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
        let headers = apisec::AnswerHeaders::read(|name| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(String::from)
        });
        let (status, bytes) = read_answer(response).await?;
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
                    if let Some(held_back) = log_misconfigured(appid, api) {
                        tracing::error!(api, appid, error = %err, hint = apisec::describe_errcode(errcode).unwrap_or(""), held_back, "WeChat refused the signed call");
                    }
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
                if let Some(held_back) = log_misconfigured(&self.config.appid, "stable_token") {
                    tracing::error!(appid = %self.config.appid, error = %err, held_back, "WeChat refused the app credentials for stable_token");
                }
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
                let (status, bytes) = read_answer(response).await?;
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
            let result = self
                .with_retry("jscode2session", || self.attempt(code))
                .await;
            if let Err(err @ WechatError::Misconfigured { .. }) = &result {
                if let Some(held_back) = log_misconfigured(&self.config.appid, "jscode2session") {
                    tracing::error!(appid = %self.config.appid, error = %err, held_back, "WeChat login is misconfigured");
                }
            }
            result
        })
    }
}
