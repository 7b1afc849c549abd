//! The HTTP dispatcher: one match on the path, then the method, then the handler; plus the
//! JSON helpers (capped body reading, content-type check, strict request types).
//!
//! [`handle`] is generic over the request body, so the router runs without a socket in tests.
//! Every error leaves through [`ApiError::into_response`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::app::{now, App};
use crate::error::{json_response, ApiError};
use crate::ratelimit;
use crate::revocation;
use crate::secrets;
use crate::sessions;
use crate::store::Revoke;
use crate::userdata;

type Resp = Response<Full<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Login,
    Refresh,
    Logout,
    Me,
    Decrypt,
    Phone,
    SessionCheck,
    AdminRevoke,
    Revocations,
    Jwks,
    Discovery,
    Healthz,
    Readyz,
    Metrics,
}

impl Route {
    fn find(path: &str) -> Option<Route> {
        Some(match path {
            "/v1/login" => Route::Login,
            "/v1/token/refresh" => Route::Refresh,
            "/v1/logout" => Route::Logout,
            "/v1/me" => Route::Me,
            "/v1/me/decrypt" => Route::Decrypt,
            "/v1/me/phone" => Route::Phone,
            "/v1/me/session" => Route::SessionCheck,
            "/v1/admin/revoke" => Route::AdminRevoke,
            "/v1/revocations" => Route::Revocations,
            "/.well-known/jwks.json" => Route::Jwks,
            "/.well-known/openid-configuration" => Route::Discovery,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            _ => return None,
        })
    }

    fn method(self) -> (Method, &'static str) {
        match self {
            Route::Login
            | Route::Refresh
            | Route::Logout
            | Route::AdminRevoke
            | Route::Decrypt
            | Route::Phone => (Method::POST, "POST"),
            _ => (Method::GET, "GET"),
        }
    }
}

/// Answers one request. Never fails: errors become JSON error responses.
pub async fn handle<B>(app: Arc<App>, peer: SocketAddr, req: Request<B>) -> Resp
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = std::time::Instant::now();
    let method = req.method().clone();
    // The path only: a query string could carry a credential some client put there.
    let path = req.uri().path().to_string();
    let response = match dispatch(&app, peer, req).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    let status = response.status().as_u16();
    app.metrics.http(status);
    tracing::debug!(%method, %path, status, ms = started.elapsed().as_millis() as u64, "request");
    response
}

async fn dispatch<B>(app: &Arc<App>, peer: SocketAddr, req: Request<B>) -> Result<Resp, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let route = Route::find(req.uri().path()).ok_or(ApiError::NotFound)?;
    let (method, allow) = route.method();
    if req.method() != method {
        return Err(ApiError::MethodNotAllowed(allow));
    }
    match route {
        Route::Login => login(app, peer, req).await,
        Route::Refresh => {
            let body: RefreshRequest = read_json(req, &app.config).await?;
            let tokens = sessions::refresh(app, &body.refresh_token).await?;
            Ok(json_response(StatusCode::OK, &to_value(&tokens)?))
        }
        Route::Logout => {
            let claims = sessions::authenticate(app, authorization(&req)?).await?;
            sessions::revoke(app, Revoke::Sid(claims.sid)).await?;
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        Route::Me => {
            let claims = sessions::authenticate(app, authorization(&req)?).await?;
            let profile = sessions::profile(app, &claims).await?;
            Ok(json_response(StatusCode::OK, &to_value(&profile)?))
        }
        Route::Decrypt => {
            let claims = sessions::authenticate(app, authorization(&req)?).await?;
            let body: DecryptRequest = read_json(req, &app.config).await?;
            let input = userdata::DecryptInput {
                encrypted_data: &body.encrypted_data,
                iv: &body.iv,
                raw_data: body.raw_data.as_deref(),
                signature: body.signature.as_deref(),
            };
            let decrypted = userdata::decrypt(app, &claims, input).await?;
            Ok(json_response(StatusCode::OK, &to_value(&decrypted)?))
        }
        Route::Phone => {
            let claims = sessions::authenticate(app, authorization(&req)?).await?;
            let body: PhoneRequest = read_json(req, &app.config).await?;
            let phone = userdata::phone(app, &claims, &body.code).await?;
            Ok(json_response(StatusCode::OK, &to_value(&phone)?))
        }
        Route::SessionCheck => {
            let claims = sessions::authenticate(app, authorization(&req)?).await?;
            let valid = userdata::check_session(app, &claims).await?;
            Ok(json_response(StatusCode::OK, &json!({ "valid": valid })))
        }
        Route::AdminRevoke => admin_revoke(app, req).await,
        Route::Revocations => feed(app, req).await,
        Route::Jwks => {
            let ring = app.keys();
            let mut response = json_response(StatusCode::OK, &to_value(&ring.jwks)?);
            // Cache for at most half the publish delay, so a rotated key is fetched before
            // it signs.
            let max_age = (app.config.key_publish_delay.as_secs() / 2).min(300);
            if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
                response.headers_mut().insert(CACHE_CONTROL, value);
            }
            Ok(response)
        }
        Route::Discovery => Ok(json_response(StatusCode::OK, &discovery(app))),
        Route::Healthz => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Route::Readyz => match app.store.ping().await {
            Ok(()) => Ok(json_response(StatusCode::OK, &json!({"status": "ready"}))),
            Err(err) => Err(ApiError::Unavailable(format!("store unreachable: {err}"))),
        },
        Route::Metrics => {
            let ring = app.keys();
            let gauges = [
                (
                    "weauth_revocation_seq",
                    "Highest revocation seq seen.",
                    *app.subscribe_seq().borrow() as f64,
                ),
                (
                    "weauth_signing_keys_published",
                    "Keys in the JWKS (next, signing, retiring).",
                    ring.verify.len() as f64,
                ),
                (
                    "weauth_feed_waiters",
                    "Revocation-feed long polls currently waiting.",
                    app.feed_waiters() as f64,
                ),
            ];
            let mut response = Response::new(Full::new(Bytes::from(app.metrics.render(&gauges))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
    }
}

/// The request's `Authorization` value. Several `Authorization` headers are ambiguous (which
/// one would a proxy in front have checked?) and refused with 400, as the filter does.
fn authorization<B>(req: &Request<B>) -> Result<Option<&str>, ApiError> {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::InvalidRequest(
            "several Authorization headers; send exactly one".into(),
        ));
    }
    Ok(first.and_then(|value| value.to_str().ok()))
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|err| ApiError::Internal(err.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    code: String,
}

/// `POST /v1/me/decrypt`, with WeChat's member names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecryptRequest {
    #[serde(rename = "encryptedData")]
    encrypted_data: String,
    iv: String,
    #[serde(rename = "rawData", default)]
    raw_data: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    /// The other members of WeChat's `e.detail` (`getUserProfile`, `getPhoneNumber`), which
    /// mini-programs commonly post whole: accepted and ignored, so only real typos are refused.
    #[serde(rename = "cloudID", default)]
    _cloud_id: Option<serde::de::IgnoredAny>,
    #[serde(rename = "errMsg", default)]
    _err_msg: Option<serde::de::IgnoredAny>,
    #[serde(rename = "userInfo", default)]
    _user_info: Option<serde::de::IgnoredAny>,
}

/// `POST /v1/me/phone`: the code from `getPhoneNumber` (the rest of its `e.detail` is
/// accepted and ignored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhoneRequest {
    code: String,
    #[serde(rename = "cloudID", default)]
    _cloud_id: Option<serde::de::IgnoredAny>,
    #[serde(rename = "errMsg", default)]
    _err_msg: Option<serde::de::IgnoredAny>,
    #[serde(rename = "encryptedData", default)]
    _encrypted_data: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    _iv: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminRevokeRequest {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    issued_before: Option<i64>,
}

async fn login<B>(app: &Arc<App>, peer: SocketAddr, req: Request<B>) -> Result<Resp, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok());
    let client = ratelimit::client_ip(peer.ip(), forwarded, &app.config.trusted_proxies);
    let allowed = {
        let mut limiter = app
            .limiter
            .lock()
            .map_err(|_| ApiError::Internal("rate limiter poisoned".into()))?;
        limiter.check(client, app.uptime().as_secs_f64())
    };
    if let Err(retry) = allowed {
        app.metrics.login("rate_limited");
        return Err(ApiError::RateLimited {
            retry_after: retry.0,
            description: "too many logins from this client; retry later".into(),
        });
    }
    let body: LoginRequest = match read_json(req, &app.config).await {
        Ok(body) => body,
        Err(err) => {
            app.metrics.login(err.code());
            return Err(err);
        }
    };
    match sessions::login(app, &body.code).await {
        Ok(tokens) => {
            app.metrics.login("ok");
            Ok(json_response(StatusCode::OK, &to_value(&tokens)?))
        }
        Err(err) => {
            app.metrics.login(err.code());
            Err(err)
        }
    }
}

async fn admin_revoke<B>(app: &Arc<App>, req: Request<B>) -> Result<Resp, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let expected = app.config.admin_token.as_ref().ok_or_else(|| {
        ApiError::Unavailable("the admin API is disabled (WEAUTH_ADMIN_TOKEN is not set)".into())
    })?;
    check_credential(authorization(&req)?, expected)?;
    let body: AdminRevokeRequest = read_json(req, &app.config).await?;
    let now = now();
    let revoke = match (body.jti, body.sid, body.sub, body.issued_before) {
        (Some(jti), None, None, None) if !jti.is_empty() => Revoke::Jti(jti),
        (None, Some(sid), None, None) if !sid.is_empty() => Revoke::Sid(sid),
        (None, None, Some(sub), issued_before) if !sub.is_empty() => {
            // Default: every token issued up to and including this second.
            let issued_before = issued_before.unwrap_or(now + 1);
            if issued_before > now + 1 {
                return Err(ApiError::InvalidRequest(
                    "`issued_before` must not be in the future".into(),
                ));
            }
            Revoke::Sub { sub, issued_before }
        }
        _ => return Err(ApiError::InvalidRequest(
            "give exactly one of `jti`, `sid` or `sub` (with optional `issued_before` for `sub`)"
                .into(),
        )),
    };
    let entry = sessions::revoke(app, revoke).await?;
    Ok(json_response(StatusCode::OK, &to_value(&entry)?))
}

fn check_credential(header: Option<&str>, expected: &str) -> Result<(), ApiError> {
    let presented = crate::tokens::bearer(header)
        .ok_or_else(|| ApiError::InvalidToken("a bearer credential is required".into()))?;
    if secrets::credential_matches(presented, expected) {
        Ok(())
    } else {
        Err(ApiError::InvalidToken(
            "the credential is not accepted".into(),
        ))
    }
}

/// Parses `since` and `wait` from the query string.
fn feed_params(query: Option<&str>) -> Result<(u64, Duration), ApiError> {
    let mut since = 0u64;
    let mut wait = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "since" => {
                since = value.parse().map_err(|_| {
                    ApiError::InvalidRequest("`since` must be a non-negative integer".into())
                })?
            }
            "wait" => {
                wait = Some(value.parse::<f64>().map_err(|_| {
                    ApiError::InvalidRequest("`wait` must be a number of seconds".into())
                })?)
            }
            _ => {}
        }
    }
    Ok((since, revocation::capped_wait(wait)))
}

async fn feed<B>(app: &Arc<App>, req: Request<B>) -> Result<Resp, ApiError> {
    let expected = app.config.feed_token.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "the revocation feed is disabled (WEAUTH_FEED_TOKEN is not set)".into(),
        )
    })?;
    check_credential(authorization(&req)?, expected)?;
    let (since, wait) = feed_params(req.uri().query())?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut seq = app.subscribe_seq();
    let mut draining = app.draining();
    let _waiting = app.feed_waiter();
    loop {
        let at = now();
        let page =
            revocation::read(app.store.as_ref(), since, at, revocation::FEED_PAGE_ENTRIES).await?;
        // Answer when anything changed (even if the new entries already expired), when the
        // caller must start over, or when the wait is over.
        let changed = page.full || page.seq != since || !page.entries.is_empty();
        if changed || tokio::time::Instant::now() >= deadline || *draining.borrow() {
            app.notify_seq(page.seq);
            return Ok(json_response(StatusCode::OK, &to_value(&page)?));
        }
        tokio::select! {
            () = async { let _ = seq.wait_for(|current| *current > since).await; } => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = async { let _ = draining.wait_for(|d| *d).await; } => {}
        }
        // Insurance against a hot loop should the signal and the store ever disagree.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn discovery(app: &App) -> serde_json::Value {
    let base = &app.config.issuer;
    let algs: Vec<&str> = {
        let ring = app.keys();
        let mut algs: Vec<&str> = ring
            .verify
            .kids()
            .filter_map(|kid| ring.verify.get(kid))
            .map(|key| key.algorithm().as_str())
            .collect();
        algs.sort_unstable();
        algs.dedup();
        algs
    };
    json!({
        "issuer": base,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/v1/token/refresh"),
        "userinfo_endpoint": format!("{base}/v1/me"),
        "weauth_login_endpoint": format!("{base}/v1/login"),
        "weauth_logout_endpoint": format!("{base}/v1/logout"),
        "weauth_revocation_feed_endpoint": format!("{base}/v1/revocations"),
        "grant_types_supported": ["refresh_token"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": ["none"],
        "id_token_signing_alg_values_supported": algs,
        "access_token_signing_alg_values_supported": algs,
        "claims_supported": ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "openid", "unionid", "appid", "scope"],
    })
}

/// Reads a JSON body: `Content-Type: application/json` (415 otherwise), at most `WEAUTH_MAX_BODY` bytes
/// whether announced by `Content-Length` or streamed (413), arriving within
/// `WEAUTH_HEADER_TIMEOUT` (408), valid JSON of `T` (400).
async fn read_json<T, B>(req: Request<B>, config: &crate::config::Config) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
        });
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let max = config.max_body;
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        return Err(ApiError::PayloadTooLarge(max));
    }
    // The header timeout also bounds the body: a client that dribbles it is cut off (408).
    let limit = config.header_timeout;
    let bytes = tokio::time::timeout(limit, Limited::new(req.into_body(), max).collect())
        .await
        .map_err(|_| ApiError::BodyTimeout(limit))?
        .map_err(|err| {
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::PayloadTooLarge(max)
            } else {
                ApiError::InvalidRequest(format!("could not read the request body: {err}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::InvalidRequest(format!("invalid JSON body: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table_methods() {
        assert_eq!(Route::find("/v1/login").map(|r| r.method().1), Some("POST"));
        assert_eq!(Route::find("/healthz").map(|r| r.method().1), Some("GET"));
        assert_eq!(Route::find("/v1/login/"), None);
        assert_eq!(
            Route::find("/v1/me/decrypt").map(|r| r.method().1),
            Some("POST")
        );
        assert_eq!(
            Route::find("/v1/me/phone").map(|r| r.method().1),
            Some("POST")
        );
        assert_eq!(
            Route::find("/v1/me/session").map(|r| r.method().1),
            Some("GET")
        );
        assert_eq!(Route::find("/nope"), None);
    }

    #[test]
    fn feed_params_parse_and_cap() {
        assert_eq!(feed_params(None).unwrap(), (0, Duration::ZERO));
        assert_eq!(
            feed_params(Some("since=42&wait=5")).unwrap(),
            (42, Duration::from_secs(5))
        );
        assert_eq!(
            feed_params(Some("since=1&wait=999")).unwrap().1,
            revocation::MAX_WAIT
        );
        assert!(feed_params(Some("since=-1")).is_err());
        assert!(feed_params(Some("wait=soon")).is_err());
    }

    #[test]
    fn check_credential_requires_exact_bearer() {
        assert!(check_credential(Some("Bearer dev-feed-token"), "dev-feed-token").is_ok());
        assert!(check_credential(Some("Bearer nope"), "dev-feed-token").is_err());
        assert!(check_credential(None, "dev-feed-token").is_err());
    }
}
