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
use hyper::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, LOCATION,
    ORIGIN, REFERER, SET_COOKIE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::admin;
use crate::app::{now, App};
use crate::error::{json_bytes_response, json_response, ApiError};
use crate::identity::{self, Credential};
use crate::ratelimit;
use crate::revocation;
use crate::secrets;
use crate::sessions;
use crate::store::Revoke;
use crate::userdata;
use crate::web::{self, CookieLookup, WebError};

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
    AdminBan,
    AdminUnban,
    AdminScopes,
    AdminUser,
    Revocations,
    WebAuthorize,
    WebCallback,
    Jwks,
    Discovery,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
}

/// Every path the issuer answers, and its route: the one table the dispatcher, the OpenAPI
/// description's test ([`routes`]) and anything else that lists routes read. A route added to
/// [`Route`] must be added here (and to [`Route::method`] when it is not a GET).
const TABLE: &[(&str, Route)] = &[
    ("/v1/login", Route::Login),
    ("/v1/token/refresh", Route::Refresh),
    ("/v1/logout", Route::Logout),
    ("/v1/me", Route::Me),
    ("/v1/me/decrypt", Route::Decrypt),
    ("/v1/me/phone", Route::Phone),
    ("/v1/me/session", Route::SessionCheck),
    ("/v1/admin/revoke", Route::AdminRevoke),
    ("/v1/admin/ban", Route::AdminBan),
    ("/v1/admin/unban", Route::AdminUnban),
    ("/v1/admin/scopes", Route::AdminScopes),
    ("/v1/admin/user", Route::AdminUser),
    ("/v1/revocations", Route::Revocations),
    ("/v1/web/authorize", Route::WebAuthorize),
    ("/v1/web/callback", Route::WebCallback),
    ("/.well-known/jwks.json", Route::Jwks),
    ("/.well-known/openid-configuration", Route::Discovery),
    ("/healthz", Route::Healthz),
    ("/readyz", Route::Readyz),
    ("/metrics", Route::Metrics),
    ("/openapi.json", Route::OpenApi),
];

impl Route {
    fn find(path: &str) -> Option<Route> {
        TABLE
            .iter()
            .find(|(known, _)| *known == path)
            .map(|(_, route)| *route)
    }

    fn method(self) -> (Method, &'static str) {
        match self {
            Route::Login
            | Route::Refresh
            | Route::Logout
            | Route::AdminRevoke
            | Route::AdminBan
            | Route::AdminUnban
            | Route::AdminScopes
            | Route::Decrypt
            | Route::Phone => (Method::POST, "POST"),
            _ => (Method::GET, "GET"),
        }
    }
}

/// Every `(method, path)` the router answers, in table order (for the OpenAPI description's
/// test and for documentation; the dispatcher uses the same table).
pub fn routes() -> Vec<(&'static str, &'static str)> {
    TABLE
        .iter()
        .map(|(path, route)| (route.method().1, *path))
        .collect()
}

/// The issuer's OpenAPI 3.1 description (`issuer/openapi.json`), served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

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
            let has_body = req.headers().contains_key(CONTENT_TYPE);
            if !has_body {
                if let Some(presented) = cookie(&req, web::REFRESH_COOKIE)? {
                    return cookie_refresh(app, &req, presented.to_string()).await;
                }
            }
            let body: RefreshRequest = read_json(req, &app.config).await?;
            let tokens = sessions::refresh(app, &body.refresh_token).await?;
            Ok(json_response(StatusCode::OK, &to_value(&tokens)?))
        }
        Route::Logout => {
            let caller = caller(app, &req, true)?;
            let claims = sessions::authenticate(app, caller.header.as_deref()).await?;
            sessions::revoke(app, Revoke::Sid(claims.sid)).await?;
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            if caller.via_cookie {
                set_cookies(
                    &mut response,
                    &web::clear_session_cookies(app.config.cookie_secure),
                );
            }
            Ok(response)
        }
        Route::WebAuthorize => web_authorize(app, peer, &req).await,
        Route::WebCallback => match web_callback(app, &req).await {
            Ok(response) => Ok(response),
            Err(err) => {
                // Every failure is a JSON 400/403 (never a redirect); the state cookie goes.
                let mut response = err.into_response();
                set_cookies(
                    &mut response,
                    &[web::state_cookie("", 0, app.config.cookie_secure)],
                );
                Ok(response)
            }
        },
        Route::Me => {
            let caller = caller(app, &req, false)?;
            let claims = sessions::authenticate(app, caller.header.as_deref()).await?;
            let profile = sessions::profile(app, &claims).await?;
            Ok(json_response(StatusCode::OK, &to_value(&profile)?))
        }
        Route::Decrypt => {
            let caller = caller(app, &req, true)?;
            let claims = sessions::authenticate(app, caller.header.as_deref()).await?;
            let body: DecryptRequest = read_json(req, &app.config).await?;
            let input = userdata::DecryptInput {
                encrypted_data: &body.encrypted_data,
                iv: &body.iv,
                raw_data: body.raw_data.as_deref(),
                signature: body.signature.as_deref(),
                verify_with_wechat: body.verify_with_wechat,
            };
            let decrypted = userdata::decrypt(app, &claims, input).await?;
            Ok(json_response(StatusCode::OK, &to_value(&decrypted)?))
        }
        Route::Phone => {
            let caller = caller(app, &req, true)?;
            let claims = sessions::authenticate(app, caller.header.as_deref()).await?;
            let body: PhoneRequest = read_json(req, &app.config).await?;
            let phone = userdata::phone(app, &claims, &body.code).await?;
            Ok(json_response(StatusCode::OK, &to_value(&phone)?))
        }
        Route::SessionCheck => {
            let caller = caller(app, &req, false)?;
            let claims = sessions::authenticate(app, caller.header.as_deref()).await?;
            let valid = userdata::check_session(app, &claims).await?;
            Ok(json_response(StatusCode::OK, &json!({ "valid": valid })))
        }
        Route::AdminRevoke => admin_revoke(app, req).await,
        Route::AdminBan => {
            admin_auth(app, &req)?;
            let body: AdminBanRequest = read_json(req, &app.config).await?;
            let banned = admin::ban(app, body.sub, body.until, body.reason).await?;
            Ok(json_response(StatusCode::OK, &to_value(&banned)?))
        }
        Route::AdminUnban => {
            admin_auth(app, &req)?;
            let body: AdminSubRequest = read_json(req, &app.config).await?;
            let unbanned = admin::unban(app, body.sub).await?;
            Ok(json_response(StatusCode::OK, &to_value(&unbanned)?))
        }
        Route::AdminScopes => {
            admin_auth(app, &req)?;
            let body: AdminScopesRequest = read_json(req, &app.config).await?;
            let scopes = admin::set_scopes(app, body.sub, body.scopes).await?;
            Ok(json_response(StatusCode::OK, &to_value(&scopes)?))
        }
        Route::AdminUser => {
            admin_auth(app, &req)?;
            let sub = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .find(|(key, _)| key == "sub")
                .map(|(_, value)| value.into_owned())
                .ok_or_else(|| {
                    ApiError::InvalidRequest("`sub` query parameter is required".into())
                })?;
            let user = admin::lookup(app, sub).await?;
            Ok(json_response(StatusCode::OK, &to_value(&user)?))
        }
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
        Route::OpenApi => {
            let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
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
                    app.known_seq() as f64,
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
    /// The mini-program; may be left out when exactly one is configured.
    #[serde(default)]
    appid: Option<String>,
}

/// How the caller presented its access token.
struct Caller {
    /// `Bearer …`: the `Authorization` header, or the `weauth_at` cookie in that form.
    header: Option<String>,
    /// The token came from the cookie (no `Authorization` header).
    via_cookie: bool,
}

/// The caller's access token: the `Authorization` header, else the `weauth_at` cookie. A
/// state-changing route (`state_changing`) authenticated only by the cookie must pass the CSRF
/// rule ([`web::same_origin_request`]): a request from another origin is refused with 403.
fn caller<B>(app: &App, req: &Request<B>, state_changing: bool) -> Result<Caller, ApiError> {
    if let Some(header) = authorization(req)? {
        return Ok(Caller {
            header: Some(header.to_string()),
            via_cookie: false,
        });
    }
    match cookie(req, web::ACCESS_COOKIE)? {
        Some(token) => {
            if state_changing {
                check_csrf(app, req)?;
            }
            Ok(Caller {
                header: Some(format!("Bearer {token}")),
                via_cookie: true,
            })
        }
        None => Ok(Caller {
            header: None,
            via_cookie: false,
        }),
    }
}

/// A cookie of the request; a name sent twice is refused (400).
fn cookie<'a, B>(req: &'a Request<B>, name: &str) -> Result<Option<&'a str>, ApiError> {
    let headers = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok());
    match web::find_cookie(headers, name) {
        CookieLookup::Absent => Ok(None),
        CookieLookup::One("") => Ok(None),
        CookieLookup::One(value) => Ok(Some(value)),
        CookieLookup::Several => Err(ApiError::InvalidRequest(format!(
            "the cookie `{name}` is sent more than once"
        ))),
    }
}

fn header_str<B>(req: &Request<B>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// The CSRF rule of cookie-authenticated POSTs (see [`crate::web`]).
fn check_csrf<B>(app: &App, req: &Request<B>) -> Result<(), ApiError> {
    let origin = header_str(req, ORIGIN);
    let referer = header_str(req, REFERER);
    if web::same_origin_request(origin, referer, &app.allowed_origins) {
        Ok(())
    } else {
        app.metrics.bearer_rejected("csrf");
        Err(ApiError::AccessDenied(format!(
            "cross-origin request refused: a request authenticated by a cookie must come from the issuer's or an app's redirect origin (Origin: {})",
            origin.or(referer).unwrap_or("none")
        )))
    }
}

fn set_cookies(response: &mut Resp, cookies: &[String]) {
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
}

/// Delivers a session as the web login's cookies (see [`web::session_cookies`]).
fn set_session_cookies(response: &mut Resp, tokens: &sessions::TokenResponse, secure: bool) {
    set_cookies(
        response,
        &web::session_cookies(
            &tokens.access_token,
            tokens.expires_in,
            &tokens.refresh_token,
            tokens.refresh_expires_in,
            secure,
        ),
    );
}

fn no_content() -> Resp {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /v1/token/refresh` with no body and the `weauth_rt` cookie: rotates, and sets both
/// cookies again (204). A refused refresh clears them.
async fn cookie_refresh<B>(
    app: &Arc<App>,
    req: &Request<B>,
    presented: String,
) -> Result<Resp, ApiError> {
    let secure = app.config.cookie_secure;
    let result = match check_csrf(app, req) {
        Ok(()) => sessions::refresh(app, &presented).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(tokens) => {
            let mut response = no_content();
            set_session_cookies(&mut response, &tokens, secure);
            Ok(response)
        }
        Err(err @ ApiError::AccessDenied(_)) => Err(err),
        Err(err) => {
            let clear = matches!(err, ApiError::InvalidGrant(_));
            let mut response = err.into_response();
            if clear {
                set_cookies(&mut response, &web::clear_session_cookies(secure));
            }
            Ok(response)
        }
    }
}

/// The single value of query parameter `name` (a repeated one is refused).
fn query_param(query: &[(String, String)], name: &'static str) -> Result<Option<String>, ApiError> {
    let mut values = query.iter().filter(|(key, _)| key == name);
    let first = values.next().map(|(_, value)| value.clone());
    if values.next().is_some() {
        return Err(web_error(WebError::Repeated(name)));
    }
    Ok(first)
}

fn query_pairs<B>(req: &Request<B>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

fn web_error(err: WebError) -> ApiError {
    match err {
        WebError::SnapshotUser => ApiError::AccessDenied(err.to_string()),
        other => ApiError::InvalidRequest(other.to_string()),
    }
}

/// The real client's address: the trusted `X-Forwarded-For` hop behind Envoy
/// (`WEAUTH_TRUSTED_PROXIES`), else the peer.
fn client_ip<B>(app: &App, peer: SocketAddr, req: &Request<B>) -> std::net::IpAddr {
    let forwarded = header_str(
        req,
        hyper::header::HeaderName::from_static("x-forwarded-for"),
    );
    ratelimit::client_ip(peer.ip(), forwarded, &app.config.trusted_proxies)
}

/// The per-client login rate limit (`WEAUTH_LOGIN_RATE`), shared by `/v1/login` and
/// `/v1/web/authorize` (which stores a pending login per call).
async fn check_rate<B>(app: &App, peer: SocketAddr, req: &Request<B>) -> Result<(), ApiError> {
    let client = client_ip(app, peer, req);
    let shared = match &app.redis {
        // On Redis the bucket is shared by every replica; if Redis cannot answer, the local
        // bucket decides (the login itself will meet the same outage).
        Some(redis) => {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            match redis
                .rate_limit(
                    &client.to_string(),
                    app.config.login_rate_per_min,
                    app.config.login_burst,
                    unix,
                )
                .await
            {
                Ok(verdict) => {
                    Some(verdict.map_or(Ok(()), |secs| Err(ratelimit::RetryAfter(secs))))
                }
                Err(err) => {
                    tracing::debug!(error = %err, "shared rate limit unavailable; using the local one");
                    None
                }
            }
        }
        None => None,
    };
    let allowed = match shared {
        Some(verdict) => verdict,
        None => {
            let mut limiter = app
                .limiter
                .lock()
                .map_err(|_| ApiError::Internal("rate limiter poisoned".into()))?;
            limiter.check(client, app.uptime().as_secs_f64())
        }
    };
    allowed.map_err(|retry| ApiError::RateLimited {
        retry_after: retry.0,
        description: "too many logins from this client; retry later".into(),
    })
}

/// `GET /v1/web/authorize?appid=&redirect_uri=&scope=`: checks the app, the exact redirect
/// URI and the scope, stores a pending login under a fresh state, sets the browser binding
/// cookie, and redirects to WeChat's authorize page. Every refusal is a 400 and never a
/// redirect.
async fn web_authorize<B>(
    app: &Arc<App>,
    peer: SocketAddr,
    req: &Request<B>,
) -> Result<Resp, ApiError> {
    let query = query_pairs(req);
    let appid = query_param(&query, "appid")?.ok_or(web_error(WebError::Missing("appid")))?;
    let redirect_uri =
        query_param(&query, "redirect_uri")?.ok_or(web_error(WebError::Missing("redirect_uri")))?;
    let scope = query_param(&query, "scope")?;
    let entry = app
        .config
        .apps
        .web(&appid)
        .map_err(|err| ApiError::InvalidRequest(err.to_string()))?;
    if !entry.allows_redirect(&redirect_uri) {
        return Err(web_error(WebError::RedirectNotAllowed));
    }
    let scope = web::scope_for(entry.kind, scope.as_deref()).map_err(web_error)?;
    check_rate(app, peer, req).await?;
    let (state, binding) = {
        let mut rng = rand::thread_rng();
        (web::new_state(&mut rng), web::new_binding(&mut rng))
    };
    let expires_at = now() + web::STATE_TTL;
    let pending = web::PendingLogin {
        appid: entry.appid.clone(),
        redirect_uri,
        scope: scope.to_string(),
        binding_hash: secrets::sha256_hex(binding.as_bytes()),
        expires_at,
    };
    app.store
        .put_ephemeral(&web::state_key(&state), &pending.encode(), expires_at)
        .await?;
    let callback = format!("{}{}", app.config.issuer, web::CALLBACK_PATH);
    let location = web::authorize_url(
        &app.config.wechat_open_base,
        entry,
        &callback,
        scope,
        &state,
    );
    let mut response = redirect(&location)?;
    set_cookies(
        &mut response,
        &[web::state_cookie(
            &binding,
            web::STATE_TTL,
            app.config.cookie_secure,
        )],
    );
    Ok(response)
}

fn redirect(location: &str) -> Result<Resp, ApiError> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    let value = HeaderValue::from_str(location)
        .map_err(|_| ApiError::Internal("redirect location is not a header value".into()))?;
    let headers = response.headers_mut();
    headers.insert(LOCATION, value);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        hyper::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

/// `GET /v1/web/callback?code=&state=`: takes the state once, checks the browser binding,
/// exchanges the code (the login-method boundary), establishes the session and redirects to
/// the app's redirect URI with the session cookies.
async fn web_callback<B>(app: &Arc<App>, req: &Request<B>) -> Result<Resp, ApiError> {
    let query = query_pairs(req);
    let state = query_param(&query, "state")?
        .filter(|s| !s.is_empty())
        .ok_or(web_error(WebError::Missing("state")))?;
    let code = query_param(&query, "code")?;
    if !web::valid_state_format(&state) {
        return Err(web_error(WebError::StateMalformed));
    }
    let binding = cookie(req, web::STATE_COOKIE)?.map(str::to_string);
    let now = now();
    let taken = app
        .store
        .take_ephemeral(&web::state_key(&state), now)
        .await?;
    let pending = taken.as_deref().and_then(web::PendingLogin::decode);
    let pending = web::check_callback(pending, binding.as_deref(), now).map_err(|err| {
        app.metrics.login("web_state_refused");
        web_error(err)
    })?;
    let code = match code.filter(|c| !c.is_empty()) {
        Some(code) => code,
        None => {
            app.metrics.login("web_consent_refused");
            return Err(web_error(WebError::ConsentRefused));
        }
    };
    if code.len() > 256 || !code.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidRequest("`code` is malformed".into()));
    }
    let entry = app
        .config
        .apps
        .web(&pending.appid)
        .map_err(|err| ApiError::InvalidRequest(err.to_string()))?;
    let result = async {
        let identity = identity::identify(
            app,
            Credential::Web {
                app: entry,
                code: &code,
            },
        )
        .await?;
        let code_hash = secrets::sha256_hex(format!("web:{}:{code}", entry.appid).as_bytes());
        sessions::establish(app, identity, code_hash).await
    }
    .await;
    let (tokens, _subject) = match result {
        Ok(done) => {
            app.metrics.login("ok");
            done
        }
        Err(err) => {
            app.metrics.login(err.code());
            return Err(err);
        }
    };
    let mut response = redirect(&pending.redirect_uri)?;
    let secure = app.config.cookie_secure;
    set_session_cookies(&mut response, &tokens, secure);
    set_cookies(&mut response, &[web::state_cookie("", 0, secure)]);
    Ok(response)
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
    /// Ask WeChat (`checkencryptedmsg`) whether it generated `encryptedData` recently.
    #[serde(default)]
    verify_with_wechat: bool,
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
    if let Err(err) = check_rate(app, peer, &req).await {
        app.metrics.login("rate_limited");
        return Err(err);
    }
    let client = client_ip(app, peer, &req);
    let body: LoginRequest = match read_json(req, &app.config).await {
        Ok(body) => body,
        Err(err) => {
            app.metrics.login(err.code());
            return Err(err);
        }
    };
    match sessions::login(app, &body.code, body.appid.as_deref(), client).await {
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

/// The admin bearer credential check of every `/v1/admin/*` route.
fn admin_auth<B>(app: &App, req: &Request<B>) -> Result<(), ApiError> {
    let expected = app.config.admin_token.as_ref().ok_or_else(|| {
        ApiError::Unavailable("the admin API is disabled (WEAUTH_ADMIN_TOKEN is not set)".into())
    })?;
    check_credential(authorization(req)?, expected)
}

/// `POST /v1/admin/ban`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminBanRequest {
    sub: String,
    #[serde(default)]
    until: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/admin/unban`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSubRequest {
    sub: String,
}

/// `POST /v1/admin/scopes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminScopesRequest {
    sub: String,
    scopes: Vec<String>,
}

async fn admin_revoke<B>(app: &Arc<App>, req: Request<B>) -> Result<Resp, ApiError>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    admin_auth(app, &req)?;
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
        .ok_or_else(|| ApiError::MissingToken("a bearer credential is required".into()))?;
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
    let mut wake = app.subscribe_wake();
    let mut draining = app.draining();
    let _waiting = app.feed_waiter();
    let mut woken = false;
    loop {
        let at = now();
        // Served from the replica's copy, which reads the store once per new seq however many
        // polls are waiting, and serializes once per `since` the woken polls share.
        // The copy is caught up to every seq this replica knows of (its own acknowledged
        // revocations, and those other replicas announced), not to the paced wake: pacing
        // delays waking held polls, never what a caller who asks is told (issue 19). A `since`
        // ahead of that may come from another replica that is ahead: catch up to it before
        // calling it "from the future".
        let known = app.known_seq().max(since);
        app.feed.catch_up(app.store.as_ref(), known, at).await?;
        let answer = match app
            .feed
            .answer_body(since, at, revocation::FEED_PAGE_ENTRIES)
        {
            Some(answer) => answer,
            None => crate::feed::Answer::of(
                &revocation::read(app.store.as_ref(), since, at, revocation::FEED_PAGE_ENTRIES)
                    .await?,
            ),
        };
        // Answer when anything changed (even if the new entries already expired), when the
        // caller must start over, or when the wait is over.
        let changed = answer.full || answer.seq != since || answer.has_entries;
        if changed || tokio::time::Instant::now() >= deadline || *draining.borrow() {
            app.notify_seq(answer.seq);
            return Ok(json_bytes_response(StatusCode::OK, answer.body));
        }
        if woken {
            // Woken, yet nothing to say: insurance against a hot loop should the signal and
            // the store ever disagree (not on the common path, where a wake has news).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::select! {
            () = async { let _ = wake.wait_for(|current| *current > since).await; } => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = async { let _ = draining.wait_for(|d| *d).await; } => {}
        }
        woken = true;
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
        "weauth_web_authorize_endpoint": format!("{base}/v1/web/authorize"),
        "weauth_revocation_feed_endpoint": format!("{base}/v1/revocations"),
        "grant_types_supported": ["refresh_token"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": ["none"],
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
        assert_eq!(
            Route::find("/v1/web/authorize").map(|r| r.method().1),
            Some("GET")
        );
        assert_eq!(
            Route::find("/v1/web/callback").map(|r| r.method().1),
            Some("GET")
        );
        assert_eq!(Route::find("/nope"), None);
    }

    /// The committed OpenAPI description and the router agree: every route the router knows is
    /// described with its method, and nothing else is. A failure names what to add or remove
    /// in `issuer/openapi.json`.
    #[test]
    fn openapi_paths_equal_router_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut described = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if [
                    "get", "put", "post", "delete", "options", "head", "patch", "trace",
                ]
                .contains(&method.as_str())
                {
                    described.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let routed: std::collections::BTreeSet<(String, String)> = routes()
            .into_iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        let missing: Vec<_> = routed.difference(&described).collect();
        let extra: Vec<_> = described.difference(&routed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "issuer/openapi.json disagrees with the router: describe {missing:?}; remove {extra:?}"
        );
    }

    #[test]
    fn route_table_paths_unique() {
        let mut paths: Vec<&str> = TABLE.iter().map(|(path, _)| *path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), TABLE.len());
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
