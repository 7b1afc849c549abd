//! The HTTP layer, on axum: the route table ([`ROUTES`] / [`router`]), the extractors
//! ([`extract`]: peer, bearer caller, admin, feed, strict JSON), handlers per area (`tokens`,
//! `me`, `admin`, `feed`, `weblogin`, `meta`), and one tower layer that puts every request in
//! its trace span, logs it and counts it. Every error leaves through [`ApiError`]'s response
//! (the one error mapping, `crate::error`).
//!
//! The accept loop stays hyper-util's ([`crate::server`]: it has the header-read timeout that
//! `axum::serve` lacks); [`handle`] runs the router on one request without a socket, for tests.
//!
//! Behaviour kept from the hand-written dispatcher it replaced: an unknown path is a JSON 404,
//! a known path with another method a JSON 405 with `Allow` (HEAD included: a GET route does
//! not answer HEAD), and no route reads a body before its caller is authenticated.

mod admin;
pub mod extract;
mod feed;
mod me;
mod meta;
mod tokens;
mod weblogin;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use hyper::{HeaderMap, Response, StatusCode, Uri};
use tower::ServiceExt as _;
use tracing::Instrument as _;

use self::extract::Now;
use crate::app::App;
use crate::domain::web;
use crate::error::{json_response, ApiError};
use crate::service::sessions;
use crate::telemetry::tracecontext::TraceContext;

pub use extract::Peer;

/// The response type the handlers build (a full body; axum boxes it).
type Resp = Response<Full<Bytes>>;

/// The issuer's OpenAPI 3.1 description (`issuer/openapi.json`), served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// The route table, written once: [`router`] builds the axum router from it and [`ROUTES`]
/// lists it (for the OpenAPI test, the 405 answer's `Allow`, and documentation).
macro_rules! route_table {
    ($($method:ident $path:literal => $handler:expr,)*) => {
        /// Every `(method, path)` the issuer answers, in table order.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn table() -> Router<Arc<App>> {
            Router::new()$(.route($path, $method($handler)))*
        }
    };
}

route_table! {
    POST "/v1/login" => tokens::login,
    POST "/v1/token/refresh" => tokens::refresh,
    POST "/v1/logout" => tokens::logout,
    GET "/v1/me" => me::profile,
    POST "/v1/me/decrypt" => me::decrypt,
    POST "/v1/me/phone" => me::phone,
    GET "/v1/me/session" => me::session,
    POST "/v1/admin/revoke" => admin::revoke,
    POST "/v1/admin/ban" => admin::ban,
    POST "/v1/admin/unban" => admin::unban,
    POST "/v1/admin/scopes" => admin::scopes,
    GET "/v1/admin/user" => admin::user,
    GET "/v1/revocations" => feed::poll,
    GET "/v1/web/authorize" => weblogin::authorize,
    GET "/v1/web/callback" => weblogin::callback,
    GET "/.well-known/jwks.json" => meta::jwks,
    GET "/.well-known/openid-configuration" => meta::discovery,
    GET "/healthz" => meta::healthz,
    GET "/readyz" => meta::readyz,
    GET "/metrics" => meta::metrics,
    GET "/openapi.json" => meta::openapi,
}

/// Every `(method, path)` the router answers, in table order.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    ROUTES.to_vec()
}

/// A GET route. axum would also answer HEAD with it; the issuer never has (405), and keeps it.
#[allow(non_snake_case)]
fn GET<H, T>(handler: H) -> MethodRouter<Arc<App>>
where
    H: Handler<T, Arc<App>>,
    T: 'static,
{
    axum::routing::get(handler).head(method_not_allowed)
}

#[allow(non_snake_case)]
fn POST<H, T>(handler: H) -> MethodRouter<Arc<App>>
where
    H: Handler<T, Arc<App>>,
    T: 'static,
{
    axum::routing::post(handler)
}

/// The issuer's router: the route table, the JSON 404/405 fallbacks, and the observing layer.
pub fn router(app: Arc<App>) -> Router {
    app.metrics.http_shed_ready(&SHED);
    table()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), observe))
        .with_state(app)
}

/// Answers one request without a socket (tests; the server goes through the same router).
pub async fn handle<B>(
    app: Arc<App>,
    peer: SocketAddr,
    request: hyper::Request<B>,
) -> Response<axum::body::Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut request = request.map(axum::body::Body::new);
    request.extensions_mut().insert(Peer(peer));
    match router(app).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A known path asked with another method: 405 naming the one it answers.
async fn method_not_allowed(uri: Uri) -> ApiError {
    match ROUTES.iter().find(|(_, path)| *path == uri.path()) {
        Some((method, _)) => ApiError::MethodNotAllowed(method),
        None => ApiError::NotFound,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        self.response().into_response()
    }
}

/// The layer around every request: its span (with the caller's W3C trace context, so every log
/// line of the request carries `trace_id` and `span_id` and the exported trace joins the
/// caller's), the request log line, and the HTTP metrics. The path is logged without its query
/// (a query string could carry a credential some client put there); `route` is the metrics'
/// fixed label, not the raw path.
async fn observe(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    let started = tokio::time::Instant::now();
    let mut request = request;
    request.extensions_mut().insert(Now {
        ms: app.clock.now_ms(),
    });
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = crate::telemetry::metrics::route_label(&path);
    let span = request_span(request.headers(), method.as_str(), route);
    let mut unanswered = Unanswered {
        app: &app,
        route,
        started,
        span: &span,
        answered: false,
    };
    // A place among the requests under way: taken now, or — a POST — once its body is read
    // (`extract::Admission`), or by its handler when it answers without reading one
    // (`extract::admit`: a refresh by cookie).
    let admission = (app.in_flight.is_some() && SHED.contains(&route))
        .then(|| extract::Admission::new(Arc::clone(&app), route));
    let admitted = match &admission {
        Some(admission) if request.method() == hyper::Method::POST => {
            request.extensions_mut().insert(admission.clone());
            Ok(())
        }
        Some(admission) => admission.take(),
        None => Ok(()),
    };
    let handler = next.run(request).instrument(span.clone());
    let response = if let Err(full) = admitted {
        full.into_response()
    } else if !RUN_TO_THE_END.contains(&route) {
        let _place = admission;
        handler.await
    } else {
        // Apart from this future, which the connection drops when the client goes away (or
        // Envoy's route timeout gives up): a ban between its ban and its revocation, or a
        // logout between marking its session and publishing it, would be left half-written.
        // Its place among the requests under way goes with it.
        let handler = async move {
            let _place = admission;
            handler.await
        };
        match app.handlers.spawn(handler).await {
            Ok(response) => response,
            Err(err) => {
                span.in_scope(|| tracing::error!(error = %err, "the request's handler failed"));
                ApiError::Internal("the request's handler failed".into()).into_response()
            }
        }
    };
    unanswered.answered = true;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    app.metrics.http(route, status);
    app.metrics.http_duration(route, started.elapsed());
    span.in_scope(|| {
        tracing::debug!(%method, %path, status, ms = started.elapsed().as_millis() as u64, "request");
    });
    response
}

/// A request never answered — the client went away, Envoy's route timeout gave up on it, the
/// shutdown deadline passed; the handler of one of [`RUN_TO_THE_END`] still runs to its end —
/// is still counted, as 499 (the
/// "client closed request" of nginx and Envoy's logs), with its time: else the slowest requests
/// of an incident vanished from the request counts and the latency histogram.
struct Unanswered<'a> {
    app: &'a App,
    route: &'static str,
    started: tokio::time::Instant,
    span: &'a tracing::Span,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.span.record("http.response.status_code", CLIENT_CLOSED);
            self.app.metrics.http(self.route, CLIENT_CLOSED);
            self.app
                .metrics
                .http_duration(self.route, self.started.elapsed());
        }
    }
}

/// The routes (metrics labels) whose handlers run to their end when their client goes away,
/// on [`App::handlers`]: those that write in more than one step — a ban (the ban, then its
/// revocation), an unban, a revocation, a logout and a refresh token's reuse (Redis: the
/// session marked, then its entry published; cut between the two, the edge would learn of
/// the revocation only when someone next presented one of the session's tokens to the
/// issuer). A 499 on them may have been carried out; a refresh rotated for a client that
/// left gives its retry within the reuse grace the same successor (past the grace, or with a
/// grace of 0, the retry is a reuse, as after any lost answer: docs/API.md). The others
/// stop with their client, as before: a login or a phone number asked of WeChat for a client
/// that has given up (and retries with a new code) would spend WeChat's quota and leave a
/// session nobody receives.
const RUN_TO_THE_END: [&str; 3] = ["admin", "logout", "refresh"];

/// The routes (metrics labels) of the client requests that hold a place of
/// `WEAUTH_MAX_IN_FLIGHT` while under way, and are answered 503 at once when none is left: those
/// any client can send many of that wait on WeChat or the store. Not the probes, the JWKS, the
/// feed (its long polls are held by design, one per sidecar, and cheap), nor a logout or the
/// admin API: a revocation refused under load would leave its tokens working.
const SHED: [&str; 4] = ["login", "refresh", "me", "web"];

/// The status a request is counted under when it was never answered ([`Unanswered`]).
const CLIENT_CLOSED: u16 = 499;

/// The span a request is handled in. At ERROR level because a span's level decides whether it
/// is recorded at all: the ids then stay on every line any `WEAUTH_LOG` filter lets through,
/// `warn` included.
fn request_span(headers: &HeaderMap, method: &str, route: &str) -> tracing::Span {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let ctx = TraceContext::child_of(header, rand::random(), rand::random());
    tracing::error_span!(
        "request",
        trace_id = %ctx.trace_id_hex(),
        span_id = %ctx.span_id_hex(),
        parent_id = %ctx.parent_id_hex(),
        // For the exporter's sampler (`telemetry::otel`): the caller's `sampled` flag.
        caller_sampled = ctx.caller_sampled.map(|s| if s { "yes" } else { "no" }),
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    )
}

/// A JSON answer of any serializable value.
fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Result<Resp, ApiError> {
    let value = serde_json::to_value(value).map_err(|err| ApiError::Internal(err.to_string()))?;
    Ok(json_response(status, &value))
}

fn no_content() -> Resp {
    let mut response = Resp::new(Full::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
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

/// The per-client login rate limit (`WEAUTH_LOGIN_RATE`), shared by `/v1/login` and
/// `/v1/web/authorize` (which stores a pending login per call).
async fn check_rate(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    now: Now,
) -> Result<(), ApiError> {
    let client = crate::domain::ratelimit::client_key(extract::client_ip(app, peer, headers));
    let allowed = app
        .login_limiter
        .take(&client, now.ms as f64 / 1000.0)
        .await;
    allowed.map_err(|retry| ApiError::RateLimited {
        retry_after: retry.0,
        description: "too many logins from this client; retry later".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed OpenAPI description and the router agree: every route the router knows is
    /// described with its method, and nothing else is. A failure names what to add or remove
    /// in `issuer/openapi.json`.
    /// The request bodies as the handlers read them: the login's `appid` (several apps, a
    /// plugin) is described (a schema-driven client or gateway refused it), and the refresh's
    /// body is optional (the cookie form sends none).
    #[test]
    fn openapi_request_bodies_as_the_handlers_read_them() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let body = |path: &str| doc["paths"][path]["post"]["requestBody"].clone();
        let login = &body("/v1/login")["content"]["application/json"]["schema"];
        let members: Vec<&String> = login["properties"].as_object().unwrap().keys().collect();
        assert_eq!(members, ["appid", "code"]);
        assert_eq!(login["required"], serde_json::json!(["code"]));
        assert_eq!(body("/v1/token/refresh")["required"], false);
    }

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
    fn route_table_paths_unique_and_methods_known() {
        let mut paths: Vec<&str> = ROUTES.iter().map(|(_, path)| *path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ROUTES.len());
        assert!(ROUTES
            .iter()
            .all(|(method, _)| ["GET", "POST"].contains(method)));
        assert!(ROUTES.contains(&("POST", "/v1/me/decrypt")));
        assert!(ROUTES.contains(&("GET", "/v1/web/callback")));
    }
}
