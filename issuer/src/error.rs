//! The HTTP-facing error enum and the one place where errors become responses.
//!
//! Every failure a client can see is an [`ApiError`]; [`ApiError::response`] turns it into
//! `{"error": "<stable code>", "error_description": "..."}` with the right status and headers.
//! Lower layers have their own enums ([`crate::wechat::WechatError`],
//! [`crate::store::StoreError`]); their conversions into `ApiError` live here too, so the
//! status chosen for, say, WeChat's 45011 is decided in exactly one file. Internal details go
//! to the log, never to the client.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::store::StoreError;
use crate::telemetry::throttle::{self, Throttle};
use crate::wechat::access_token::{CallError, TokenError};
use crate::wechat::{UnknownApp, WechatError};

/// A failure answered to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_request`: malformed JSON, missing or bad fields.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// 400 `invalid_grant`: bad, used or expired code or refresh token.
    #[error("invalid grant: {0}")]
    InvalidGrant(String),
    /// 401 `invalid_token`: missing, bad, expired or revoked bearer token / credential.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// 401 `invalid_token` for a request that carried no bearer credential at all: the
    /// challenge is a plain `Bearer` (RFC 6750 §3.1: no error code when no credential was
    /// sent), as at the edge.
    #[error("no bearer credential: {0}")]
    MissingToken(String),
    /// 403 `access_denied`.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// 403 `user_banned`: an operator banned this user; no login or refresh gets a token
    /// while the ban lasts (`until`: unix seconds it ends, `None`: until lifted). The ban's
    /// reason is for operators and is not sent.
    #[error("user banned")]
    Banned { until: Option<i64> },
    /// 403 `user_risky`: WeChat's risk control ranked the user above the app's `max_rank`
    /// (the rank is for operators and metrics, and is not sent).
    #[error("user ranked {rank} by WeChat's risk control")]
    UserRisky { rank: u8 },
    /// 404 `not_found` for an admin call naming a user that does not exist.
    #[error("no such user: {0}")]
    UnknownUser(String),
    /// 404 `not_found` for an admin call naming a session that does not exist (or ended and
    /// was purged).
    #[error("no such session: {0}")]
    UnknownSession(String),
    /// 404 `not_found`.
    #[error("no such route")]
    NotFound,
    /// 405 `method_not_allowed`, with the allowed methods.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// 409 `conflict`: an admin change made on what the issuer read, which changed before it
    /// could be written (the description says what to read again).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 413 `request_too_large`.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 408 `request_timeout`: the body did not arrive within the allowed time.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// 415 `unsupported_media_type`.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// 429 `rate_limited` with `Retry-After` seconds.
    #[error("rate limited: {description}")]
    RateLimited {
        retry_after: u64,
        description: String,
    },
    /// 502 `upstream_error`: WeChat answered something we cannot use.
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// 502 `upstream_error` for a WeChat failure the client is told only `description` of:
    /// the failure itself (its errcode and errmsg, an HTTP status, a transport error — nothing
    /// the call carried) goes to the issuer's log with the request's 5xx line.
    #[error("bad gateway: {description} ({cause})")]
    Upstream {
        description: &'static str,
        cause: WechatError,
    },
    /// 503 `temporarily_unavailable` (WeChat busy or timing out), with `Retry-After: 1`.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// 503 `temporarily_unavailable` for a route this issuer's configuration turns off (the
    /// admin API, the feed): no `Retry-After`, which would have clients ask every second for
    /// what only a new configuration brings.
    #[error("route disabled: {0}")]
    Disabled(&'static str),
    /// 503 `temporarily_unavailable` with `Retry-After` seconds: a failure the issuer answers
    /// without asking again for that long (WeChat's token endpoint down, see
    /// [`crate::wechat::access_token::FAILURE_HOLD`]).
    #[error("temporarily unavailable: {description}")]
    UnavailableFor {
        retry_after: u64,
        description: String,
    },
    /// 503 `temporarily_unavailable`, the store busy or unreachable: the client is told only
    /// that; the store's error (a driver's text can name internal hosts, a `MOVED` slot's
    /// node, a certificate's names) goes to the issuer's log with the request's 5xx line.
    /// `unconfirmed`: the store was unreachable rather than busy, so a write the request made
    /// may have been applied (a Redis write whose replication `WAIT` failed, an answer lost
    /// after a commit): said in the answer (`"write_unconfirmed": true`), for a refresh's
    /// client to retry within the reuse grace or not present that refresh token again.
    #[error("temporarily unavailable: the store: {cause}")]
    StoreUnavailable { cause: String, unconfirmed: bool },
    /// 400 with a specific stable `error` code for refused user data (`/v1/me/decrypt`):
    /// `invalid_base64`, `invalid_key_length`, `invalid_iv_length`,
    /// `invalid_encrypted_data_length`, `session_key_mismatch`, `not_json`, `watermark_missing`,
    /// `watermark_appid_mismatch`, `watermark_expired` (the codes of
    /// [`weauth_wxdata::DecryptError::code`]) or `invalid_signature` (rawData). With
    /// `relogin: true` in the body when the client must call `wx.login` and log in again.
    #[error("user data refused ({code}): {description}")]
    UserData {
        code: &'static str,
        description: String,
        relogin: bool,
    },
    /// 500 `server_error`. The detail is logged, the client gets a generic text.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::InvalidGrant(_) | ApiError::UserData { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::InvalidToken(_) | ApiError::MissingToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::AccessDenied(_) | ApiError::Banned { .. } | ApiError::UserRisky { .. } => {
                StatusCode::FORBIDDEN
            }
            ApiError::UnknownUser(_) | ApiError::UnknownSession(_) => StatusCode::NOT_FOUND,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway(_) | ApiError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_)
            | ApiError::UnavailableFor { .. }
            | ApiError::Disabled(_)
            | ApiError::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidGrant(_) => "invalid_grant",
            ApiError::InvalidToken(_) | ApiError::MissingToken(_) => "invalid_token",
            ApiError::AccessDenied(_) => "access_denied",
            ApiError::Banned { .. } => "user_banned",
            ApiError::UserRisky { .. } => "user_risky",
            ApiError::UnknownUser(_) | ApiError::UnknownSession(_) => "not_found",
            ApiError::NotFound => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "request_too_large",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::BadGateway(_) | ApiError::Upstream { .. } => "upstream_error",
            ApiError::Unavailable(_)
            | ApiError::UnavailableFor { .. }
            | ApiError::Disabled(_)
            | ApiError::StoreUnavailable { .. } => "temporarily_unavailable",
            ApiError::UserData { code, .. } => code,
            ApiError::Internal(_) => "server_error",
        }
    }

    fn description(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error; see the issuer's log".to_string(),
            ApiError::Banned { until: Some(until) } => {
                format!("this user is banned until {until} (unix seconds)")
            }
            ApiError::Banned { until: None } => "this user is banned".to_string(),
            ApiError::UserRisky { .. } => {
                "WeChat's risk control does not let this user log in to this app".to_string()
            }
            ApiError::UnknownUser(sub) => format!("no user `{sub}`"),
            ApiError::UnknownSession(sid) => {
                format!("no session `{sid}` (or it ended and was purged)")
            }
            ApiError::InvalidRequest(d)
            | ApiError::InvalidGrant(d)
            | ApiError::InvalidToken(d)
            | ApiError::MissingToken(d)
            | ApiError::AccessDenied(d)
            | ApiError::Conflict(d)
            | ApiError::BadGateway(d)
            | ApiError::Unavailable(d)
            | ApiError::RateLimited { description: d, .. }
            | ApiError::UnavailableFor { description: d, .. }
            | ApiError::UserData { description: d, .. } => d.clone(),
            ApiError::Upstream { description, .. } | ApiError::Disabled(description) => {
                (*description).to_string()
            }
            ApiError::StoreUnavailable { .. } => {
                "the issuer's store is busy or unreachable; retry shortly".to_string()
            }
            other => other.to_string(),
        }
    }

    /// The response. 5xx errors are logged here with their detail, one line per kind and
    /// [`throttle::INTERVAL`] (the metrics count each); those answered from a hold are
    /// logged at debug only: a shed request (`weauth_http_shed_total`) or a WeChat token
    /// failure answered again (logged when it was met).
    pub fn response(self) -> Response<Full<Bytes>> {
        static FAILED: Throttle<std::mem::Discriminant<ApiError>> =
            Throttle::new(throttle::INTERVAL);
        let status = self.status();
        if status.is_server_error() {
            if let ApiError::UnavailableFor { .. } = self {
                tracing::debug!(status = status.as_u16(), error = %self, "request failed");
            } else if let Some(held_back) = FAILED.admit(std::mem::discriminant(&self)) {
                tracing::warn!(status = status.as_u16(), error = %self, held_back, "request failed");
            }
        }
        let mut body = serde_json::json!({
            "error": self.code(),
            "error_description": self.description(),
        });
        match &self {
            ApiError::UserData { relogin: true, .. } => {
                body["relogin"] = serde_json::Value::Bool(true);
            }
            // When the ban ends, for a client to hold its logins until then (API.md).
            ApiError::Banned { until: Some(until) } => body["until"] = (*until).into(),
            ApiError::StoreUnavailable {
                unconfirmed: true, ..
            } => body["write_unconfirmed"] = serde_json::Value::Bool(true),
            _ => {}
        }
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        match &self {
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::RateLimited { retry_after, .. }
            | ApiError::UnavailableFor { retry_after, .. } => {
                if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
                    headers.insert(RETRY_AFTER, value);
                }
            }
            ApiError::InvalidToken(description) => {
                let challenge = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    quoted_safe(description)
                );
                let value = HeaderValue::from_str(&challenge)
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""));
                headers.insert(WWW_AUTHENTICATE, value);
            }
            ApiError::MissingToken(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) | ApiError::StoreUnavailable { .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// RFC 6750 §3 limits `error_description` to printable ASCII without `"` and `\`: those
/// become `'`, anything else outside %x20-7E becomes `?` (the same rule as the filter's).
fn quoted_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// A JSON response with `Cache-Control: no-store` (token responses must not be cached,
/// RFC 6749 §5.1; nothing else here benefits from caching either).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let text = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes_response(status, Bytes::from(text))
}

/// [`json_response`] for a body already serialized.
pub fn json_bytes_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// WeChat failures: the mapping DESIGN.md prescribes.
impl From<WechatError> for ApiError {
    fn from(err: WechatError) -> Self {
        match err {
            WechatError::InvalidCode { .. } => {
                ApiError::InvalidGrant("the login code is invalid, expired or already used".into())
            }
            WechatError::RateLimited => ApiError::RateLimited {
                retry_after: 60,
                description: "WeChat rate-limited this user; retry later".into(),
            },
            WechatError::HighRisk => {
                ApiError::AccessDenied("WeChat flagged this user as high-risk".into())
            }
            WechatError::ScopeUnauthorized => ApiError::AccessDenied(
                "WeChat did not grant the scope needed for the user's profile".into(),
            ),
            WechatError::Misconfigured { .. } => {
                ApiError::BadGateway("the issuer's WeChat credentials were refused".into())
            }
            cause @ WechatError::ApiUnauthorized { .. } => ApiError::Upstream {
                description: "WeChat has not granted the issuer's app this API",
                cause,
            },
            WechatError::Busy | WechatError::Timeout => {
                ApiError::Unavailable("WeChat is busy or not answering; retry shortly".into())
            }
            cause @ WechatError::ApiSecurity(crate::apisec::ApiSecError::Refused {
                ..
            }) => ApiError::Upstream {
                description:
                    "WeChat refused the issuer's signed call (check the app's api_security keys)",
                cause,
            },
            cause @ WechatError::ApiSecurity(_) => ApiError::Upstream {
                description: "WeChat's answer failed the API security check (signature, \
                              certificate number, timestamp or decryption) and was not used",
                cause,
            },
            cause @ (WechatError::Status(_)
            | WechatError::Unreadable(_)
            | WechatError::Transport(_)
            | WechatError::Unreachable(_)
            | WechatError::InvalidAccessToken { .. }
            | WechatError::Other { .. }) => ApiError::Upstream {
                description: "WeChat returned an unusable answer",
                cause,
            },
        }
    }
}

/// Refused user data: 400 with the specific code, `relogin` when the session_key is stale or
/// unusable. Never a 5xx: every [`weauth_wxdata::DecryptError`] is about the client's input.
impl From<weauth_wxdata::DecryptError> for ApiError {
    fn from(err: weauth_wxdata::DecryptError) -> Self {
        ApiError::UserData {
            code: err.code(),
            description: err.to_string(),
            relogin: err.relogin_required(),
        }
    }
}

/// `getuserphonenumber` failures: a bad, expired or used phone code (40029) is the client's
/// (400 `invalid_grant`); the rest as any WeChat failure.
pub fn phone_error(err: WechatError) -> ApiError {
    match err {
        WechatError::InvalidCode { .. } => ApiError::InvalidGrant(
            "the phone-number code is invalid, expired, already used or was not issued to this \
             user; call getPhoneNumber again"
                .into(),
        ),
        other => other.into(),
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        // Busy or unreachable: 503 `temporarily_unavailable` with Retry-After. A client may
        // retry: every write is safe to repeat (a rotation repeated within the reuse grace
        // gets the same successor, a revocation or logout is applied again, a login code
        // already spent is refused). Anything else is a 500.
        if err.is_transient() {
            ApiError::StoreUnavailable {
                unconfirmed: matches!(err, StoreError::Unavailable(_)),
                cause: err.to_string(),
            }
        } else {
            ApiError::Internal(err.to_string())
        }
    }
}

/// No app access token: WeChat's token endpoint down or busy → 503 `temporarily_unavailable`
/// (with `Retry-After`); WeChat refusing the request — the appid/secret, the issuer's IP not
/// in the app's whitelist (40164), the daily quota spent (45009) — → 502 `upstream_error`,
/// which retrying in a second does not mend; WeChat's rate limit (45011) → 429 with
/// `Retry-After: 60`; a store or sealing failure → as any store failure. The client is told the errcode only: WeChat's `errmsg` can carry the issuer's own
/// address (40164), and is in the issuer's log.
impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Fetch(WechatError::Misconfigured { .. }) => ApiError::BadGateway(
                "WeChat refused the issuer's appid/secret for an access token".into(),
            ),
            // 45011: WeChat limits the issuer's token requests ("retry next minute").
            TokenError::Fetch(WechatError::RateLimited) => ApiError::RateLimited {
                retry_after: 60,
                description: "WeChat is rate-limiting the issuer's access token requests; retry in a minute"
                    .into(),
            },
            TokenError::Fetch(inner) if inner.is_retryable() => ApiError::Unavailable(format!(
                "cannot get a WeChat access token (WeChat: {}); retry shortly",
                inner.metric_label()
            )),
            TokenError::Fetch(inner) => ApiError::BadGateway(format!(
                "WeChat refused the issuer's access token request (WeChat: {}); see the issuer's log",
                inner.metric_label()
            )),
            // Answered from this replica's hold: the client is told when the hold ends.
            TokenError::Held { cause, retry_after } => {
                let retry_after = retry_after.max(1);
                match TokenError::Fetch(cause).into() {
                    ApiError::RateLimited { description, .. } => ApiError::RateLimited {
                        retry_after,
                        description,
                    },
                    ApiError::Unavailable(description) => ApiError::UnavailableFor {
                        retry_after,
                        description,
                    },
                    other => other,
                }
            }
            TokenError::LeaseTimeout => ApiError::Unavailable(
                "the WeChat access token is being refreshed by another replica; retry shortly"
                    .into(),
            ),
            TokenError::Store(store) => store.into(),
            TokenError::Seal(seal) => ApiError::Internal(seal.to_string()),
        }
    }
}

/// A call made with the app access token: the token's failure, or the API's.
impl From<CallError> for ApiError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Token(token) => token.into(),
            CallError::Api(api) => api.into(),
        }
    }
}

/// An appid that is not a configured mini-program → 400 `invalid_request`.
impl From<UnknownApp> for ApiError {
    fn from(err: UnknownApp) -> Self {
        ApiError::InvalidRequest(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
            response.into_body(),
        ))
        .expect("a full body is ready")
        .expect("infallible")
        .to_bytes();
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[test]
    fn store_unreachable_maps_to_503_with_retry_after_and_no_detail() {
        let err = StoreError::Unavailable("Moved: 3999 10.2.3.4:6379".into());
        let api = ApiError::from(err);
        assert!(api.to_string().contains("10.2.3.4:6379"), "logged: {api}");
        let response = api.response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let body = body_json(response);
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(
            !body.to_string().contains("10.2.3.4"),
            "the store's error reached the client: {body}"
        );
        let internal = ApiError::from(StoreError::Corrupt("x".into()));
        assert_eq!(internal.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// Unreachable, a write may have been applied (a refresh's rotation whose replication
    /// could not be confirmed): the answer says so, for the client's reuse-grace window. Busy,
    /// nothing was written: it does not.
    #[test]
    fn store_unreachable_answer_says_a_write_may_have_been_applied_busy_does_not() {
        let unreachable = ApiError::from(StoreError::Unavailable("WAIT failed".into()));
        let body = body_json(unreachable.response());
        assert_eq!(body["write_unconfirmed"], true, "{body}");
        let busy = ApiError::from(StoreError::Busy("database is locked".into()));
        let body = body_json(busy.response());
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(body.get("write_unconfirmed").is_none(), "{body}");
    }

    /// A token failure answered from the replica's hold tells the client when the hold ends.
    #[test]
    fn held_token_failures_say_when_the_hold_ends() {
        use crate::wechat::access_token::TokenError;
        let busy = ApiError::from(TokenError::Held {
            cause: WechatError::Timeout,
            retry_after: 4,
        })
        .response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[RETRY_AFTER], "4");
        assert_eq!(body_json(busy)["error"], "temporarily_unavailable");
        let limited = ApiError::from(TokenError::Held {
            cause: WechatError::RateLimited,
            retry_after: 37,
        })
        .response();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[RETRY_AFTER], "37");
        // Never 0: a hold ending this second still asks the client to wait one.
        let ending = ApiError::from(TokenError::Held {
            cause: WechatError::Busy,
            retry_after: 0,
        })
        .response();
        assert_eq!(ending.headers()[RETRY_AFTER], "1");
    }

    /// A route the configuration turns off says so without `Retry-After` (clients honouring
    /// it asked every second, forever).
    #[test]
    fn disabled_route_503_without_retry_after() {
        let response = ApiError::Disabled("the admin API is disabled").response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(RETRY_AFTER).is_none());
        assert_eq!(body_json(response)["error"], "temporarily_unavailable");
    }

    #[test]
    fn wechat_invalid_code_maps_to_invalid_grant() {
        for errcode in [40029, 40163] {
            let err = ApiError::from(WechatError::InvalidCode { errcode });
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            assert_eq!(err.code(), "invalid_grant");
        }
    }

    #[test]
    fn wechat_rate_limit_maps_to_429_with_retry_after() {
        let response = ApiError::from(WechatError::RateLimited).response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "60");
    }

    /// The client is told WeChat's answer was unusable; the log line of the 5xx (the error's
    /// Display, see `response`) says what it was.
    #[test]
    fn wechat_unusable_answer_502_detail_for_the_log_only() {
        let err = ApiError::from(WechatError::Other {
            errcode: 61010,
            errmsg: "user access expired".into(),
        });
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(err.code(), "upstream_error");
        assert_eq!(err.description(), "WeChat returned an unusable answer");
        let logged = err.to_string();
        assert!(
            logged.contains("61010") && logged.contains("user access expired"),
            "{logged}"
        );
    }

    #[test]
    fn wechat_high_risk_maps_to_403() {
        assert_eq!(
            ApiError::from(WechatError::HighRisk).status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn wechat_misconfigured_maps_to_502() {
        let err = ApiError::from(WechatError::Misconfigured {
            errcode: 40013,
            errmsg: "invalid appid".into(),
        });
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn wechat_api_security_failures_map_to_502_not_retried() {
        use crate::apisec::ApiSecError;
        for err in [
            ApiSecError::BadSignature,
            ApiSecError::WrongSerial {
                got: "a".into(),
                want: "b".into(),
            },
            ApiSecError::Stale { skew: 900 },
            ApiSecError::Decrypt,
            ApiSecError::Refused {
                errcode: 40234,
                errmsg: "invalid signature".into(),
            },
        ] {
            let wechat = WechatError::ApiSecurity(err);
            assert!(!wechat.is_retryable(), "{wechat}");
            assert_eq!(ApiError::from(wechat).status(), StatusCode::BAD_GATEWAY);
        }
        assert!(matches!(
            crate::wechat::errcode_error(40240, "timestamp expired"),
            WechatError::ApiSecurity(ApiSecError::Refused { errcode: 40240, .. })
        ));
    }

    #[test]
    fn wechat_transient_failures_map_to_5xx() {
        assert_eq!(
            ApiError::from(WechatError::Busy).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(WechatError::Timeout).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(WechatError::Status(500)).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ApiError::from(WechatError::Unreadable("x".into())).status(),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn internal_error_detail_not_sent_to_client() {
        let response = ApiError::Internal("sqlite exploded at /var/db".into()).response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = format!("{:?}", response.body());
        assert!(!body.contains("sqlite"));
    }

    #[test]
    fn decrypt_errors_map_to_400_never_5xx() {
        use weauth_wxdata::{DecryptError, Field};
        let cases = [
            DecryptError::Base64 {
                field: Field::EncryptedData,
                plus_became_space: true,
            },
            DecryptError::KeyLength { len: 3 },
            DecryptError::IvLength { len: 3 },
            DecryptError::CiphertextLength { len: 3 },
            DecryptError::SessionKeyMismatch,
            DecryptError::NotJson,
            DecryptError::WatermarkMissing { field: "watermark" },
            DecryptError::WrongApp {
                found: "wx2".into(),
            },
            DecryptError::StaleWatermark {
                age_secs: 10,
                max_age_secs: 5,
            },
        ];
        for err in cases {
            let code = err.code();
            let api = ApiError::from(err);
            assert_eq!(api.status(), StatusCode::BAD_REQUEST, "{code}");
            assert_eq!(api.code(), code);
        }
    }

    #[test]
    fn session_key_mismatch_body_has_relogin() {
        let response = ApiError::from(weauth_wxdata::DecryptError::SessionKeyMismatch).response();
        let body = format!("{:?}", response.body());
        assert!(body.contains("relogin"), "{body}");
        let response = ApiError::from(weauth_wxdata::DecryptError::NotJson).response();
        assert!(!format!("{:?}", response.body()).contains("relogin"));
    }

    #[test]
    fn token_fetch_down_503_misconfigured_502() {
        use crate::wechat::access_token::TokenError;
        assert_eq!(
            ApiError::from(TokenError::Fetch(WechatError::Status(502))).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(TokenError::LeaseTimeout).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let misconfigured = WechatError::Misconfigured {
            errcode: 40125,
            errmsg: "x".into(),
        };
        assert_eq!(
            ApiError::from(TokenError::Fetch(misconfigured)).status(),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn phone_code_used_maps_to_invalid_grant() {
        let err = phone_error(WechatError::InvalidCode { errcode: 40029 });
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.code(), "invalid_grant");
    }

    #[test]
    fn invalid_token_challenge_carries_error_and_description() {
        let response =
            ApiError::InvalidToken("the token has been \"revoked\"\u{e9}".into()).response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\", error_description=\"the token has been 'revoked'?\""
        );
    }

    #[test]
    fn missing_token_challenge_is_plain_bearer() {
        let response =
            ApiError::MissingToken("a bearer access token is required".into()).response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
        assert!(format!("{:?}", response.body()).contains("invalid_token"));
    }

    #[test]
    fn banned_maps_to_403_user_banned_with_until() {
        let err = ApiError::Banned { until: Some(1234) };
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(err.code(), "user_banned");
        assert!(err.description().contains("1234"));
        let body = |err: ApiError| body_json(err.response());
        assert_eq!(body(err)["until"], 1234);
        assert!(body(ApiError::Banned { until: None })
            .get("until")
            .is_none());
        assert_eq!(
            ApiError::UnknownUser("u".into()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn method_not_allowed_has_allow_header() {
        let response = ApiError::MethodNotAllowed("POST").response();
        assert_eq!(response.headers()[ALLOW], "POST");
    }
}
