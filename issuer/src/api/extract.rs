//! What handlers take from a request, as axum extractors whose rejection is [`ApiError`]:
//! the peer address ([`Peer`]), the request's time ([`Now`]), the authenticated caller
//! ([`User`]), the admin and feed credentials ([`Admin`], [`FeedReader`]), and a strict JSON
//! body ([`read_json`]).
//! Plus the small header helpers they share (one `Authorization`, cookies named once, the CSRF
//! rule of cookie-authenticated requests, the real client address).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, ORIGIN, REFERER};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method};
use serde::de::DeserializeOwned;
use weauth_token::Claims;

use crate::app::App;
use crate::domain::ratelimit;
use crate::domain::web::{self, CookieLookup};
use crate::error::ApiError;
use crate::secrets;

/// The TCP peer of the connection, put on every request by the accept loop
/// ([`crate::server`]) or by [`super::handle`] in tests.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Peer>()
            .copied()
            .ok_or_else(|| ApiError::Internal("the request carries no peer address".into()))
    }
}

/// The request's time, read from the app's clock once per request (by the `observe` layer,
/// [`super::router`]) and passed down to every use case it calls: one request, one `now`.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Unix milliseconds.
    pub ms: i64,
}

impl Now {
    /// Unix seconds (what tokens, sessions and revocations are dated with).
    pub fn secs(self) -> i64 {
        self.ms.div_euclid(1000)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Now {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Now>()
            .copied()
            .ok_or_else(|| ApiError::Internal("the request carries no time".into()))
    }
}

/// The caller of a user route, authenticated: the access token from the `Authorization`
/// header, else from the access cookie (`__Host-weauth_at`; `weauth_at` over plain http). A request that is not a GET (it changes state)
/// authenticated only by the cookie must pass the CSRF rule ([`check_csrf`]).
pub struct User {
    pub claims: Claims,
    /// The token came from the cookie (no `Authorization` header).
    pub via_cookie: bool,
}

impl FromRequestParts<Arc<App>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let (header, via_cookie) = match authorization(&parts.headers)? {
            Some(header) => (Some(header.to_string()), false),
            None => match cookie(
                &parts.headers,
                web::access_cookie_name(app.config.cookie_secure),
            )? {
                Some(token) => {
                    if parts.method != Method::GET {
                        check_csrf(app, &parts.headers)?;
                    }
                    (Some(format!("Bearer {token}")), true)
                }
                None => (None, false),
            },
        };
        let now = Now::from_request_parts(parts, app).await?;
        let claims = app
            .sessions
            .authenticate(header.as_deref(), now.secs())
            .await?;
        Ok(User { claims, via_cookie })
    }
}

/// The admin bearer credential of every `/v1/admin/*` route (`WEAUTH_ADMIN_TOKEN`; 503 when
/// the admin API is disabled).
pub struct Admin;

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let expected = app.config.admin_token.as_ref().ok_or(ApiError::Disabled(
            "the admin API is disabled (WEAUTH_ADMIN_TOKEN is not set)",
        ))?;
        credential_checked(app, parts, expected, "admin")?;
        // The audit trail's who and what (the use case logs what it did): every admin request,
        // lookups included, with the client's address.
        tracing::info!(client = %client_of(app, parts), method = %parts.method, path = %parts.uri.path(), "admin request");
        Ok(Admin)
    }
}

/// The revocation feed's bearer credential (`WEAUTH_FEED_TOKEN`; 503 when the feed is
/// disabled).
pub struct FeedReader;

impl FromRequestParts<Arc<App>> for FeedReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let expected = app.config.feed_token.as_ref().ok_or(ApiError::Disabled(
            "the revocation feed is disabled (WEAUTH_FEED_TOKEN is not set)",
        ))?;
        credential_checked(app, parts, expected, "feed")?;
        Ok(FeedReader)
    }
}

/// [`check_credential`] for the admin or feed credential (`which`), a refusal logged with the
/// client's address: someone guessing, or a sidecar or tool configured with a stale credential,
/// shows in the log, not only in `weauth_http_requests_total{status="401"}`.
fn credential_checked(
    app: &App,
    parts: &Parts,
    expected: &str,
    which: &'static str,
) -> Result<(), ApiError> {
    check_credential(authorization(&parts.headers)?, expected).inspect_err(|_| {
        tracing::warn!(credential = which, client = %client_of(app, parts), path = %parts.uri.path(), "a request with a wrong or missing credential was refused");
    })
}

/// The client's address as [`client_ip`] reads it, or `unknown` without a peer.
fn client_of(app: &App, parts: &Parts) -> String {
    parts.extensions.get::<Peer>().map_or_else(
        || "unknown".to_string(),
        |Peer(peer)| client_ip(app, *peer, &parts.headers).to_string(),
    )
}

/// The request's `Authorization` value. Several `Authorization` headers are ambiguous (which
/// one would a proxy in front have checked?) and refused with 400, as the filter does.
pub fn authorization(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::InvalidRequest(
            "several Authorization headers; send exactly one".into(),
        ));
    }
    Ok(first.and_then(|value| value.to_str().ok()))
}

/// `Bearer <expected>`, compared in constant time.
pub fn check_credential(header: Option<&str>, expected: &str) -> Result<(), ApiError> {
    let presented = crate::domain::tokens::bearer(header)
        .ok_or_else(|| ApiError::MissingToken("a bearer credential is required".into()))?;
    if secrets::credential_matches(presented, expected) {
        Ok(())
    } else {
        Err(ApiError::InvalidToken(
            "the credential is not accepted".into(),
        ))
    }
}

/// The place among the client requests under way (`WEAUTH_MAX_IN_FLIGHT`) of a request that
/// takes it once its body is read ([`read_json`]); until then it holds none, so a client
/// sending its body slowly — up to `WEAUTH_HEADER_TIMEOUT` — cannot keep places from others
/// at no cost. A handler that answers such a request without reading its body takes the place
/// first ([`admit`]). Held as long as a clone of it lives (the request's layer keeps one).
#[derive(Clone)]
pub struct Admission {
    app: Arc<App>,
    /// The route's metrics label.
    route: &'static str,
    place: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
}

impl Admission {
    pub fn new(app: Arc<App>, route: &'static str) -> Admission {
        Admission {
            app,
            route,
            place: Arc::default(),
        }
    }

    /// Takes a place now; every place taken is a 503 to retry shortly.
    ///
    /// # Errors
    /// [`ApiError::UnavailableFor`] when every place is taken.
    pub fn take(&self) -> Result<(), ApiError> {
        let Some(places) = &self.app.in_flight else {
            return Ok(());
        };
        let place = Arc::clone(places).try_acquire_owned().map_err(|_| {
            self.app.metrics.http_shed(self.route);
            tracing::debug!(
                route = self.route,
                "refused: WEAUTH_MAX_IN_FLIGHT requests already under way"
            );
            full()
        })?;
        if let Ok(mut slot) = self.place.lock() {
            *slot = Some(place);
        }
        Ok(())
    }
}

/// Takes the request's place among those under way now, for a handler that answers without
/// reading the body ([`read_json`] takes it otherwise; call one or the other): nothing is
/// spent on a request past `WEAUTH_MAX_IN_FLIGHT`, body or not.
///
/// # Errors
/// [`ApiError::UnavailableFor`] when every place is taken.
pub fn admit(request: &axum::extract::Request) -> Result<(), ApiError> {
    request
        .extensions()
        .get::<Admission>()
        .map_or(Ok(()), Admission::take)
}

/// The answer to a client request past `WEAUTH_MAX_IN_FLIGHT`.
fn full() -> ApiError {
    ApiError::UnavailableFor {
        retry_after: 1,
        description: "the issuer has too many requests under way; retry shortly".into(),
    }
}

/// A cookie of the request; a name sent twice is refused (400).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let values = headers.get_all(COOKIE).iter().map(|value| value.as_bytes());
    match web::find_cookie(values, name) {
        CookieLookup::Absent | CookieLookup::One("") => Ok(None),
        CookieLookup::One(value) => Ok(Some(value)),
        CookieLookup::Several => Err(ApiError::InvalidRequest(format!(
            "the cookie `{name}` is sent more than once"
        ))),
    }
}

pub fn header_str(headers: &HeaderMap, name: hyper::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The CSRF rule of cookie-authenticated POSTs (see [`crate::domain::web`]).
pub fn check_csrf(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let origin = header_str(headers, ORIGIN);
    let referer = header_str(headers, REFERER);
    if same_origin(app, headers) {
        Ok(())
    } else {
        app.metrics.bearer_rejected("csrf");
        Err(ApiError::AccessDenied(format!(
            "cross-origin request refused: a request authenticated by a cookie must come from the issuer's or an app's redirect origin (Origin: {})",
            origin.or(referer).unwrap_or("none")
        )))
    }
}

/// Whether the request comes from a page of this site: its `Origin` (else `Referer`) is the
/// issuer's or an app's redirect origin (the cookie CSRF rule, [`check_csrf`]).
pub fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    web::same_origin_request(
        header_str(headers, ORIGIN),
        header_str(headers, REFERER),
        &app.allowed_origins,
    )
}

/// The real client's address: the trusted `X-Forwarded-For` hop behind Envoy
/// (`WEAUTH_TRUSTED_PROXIES`), else the peer. Every `X-Forwarded-For` line counts, in order
/// (RFC 9110 §5.3: the same as one line joined with commas): a proxy that appends its hop as
/// a line of its own after the client's must not leave the client's line to be read alone.
/// A line is read whatever bytes the client put in it (a byte that is not visible ASCII
/// becomes U+FFFD): a proxy appends its hop to the client's line, and dropping a line with
/// such a byte dropped the hop the proxy appended — every such request then counted as the
/// proxy's own address.
pub fn client_ip(app: &App, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let lines: Vec<std::borrow::Cow<'_, str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
        .collect();
    let joined;
    let forwarded = match lines.as_slice() {
        [] => None,
        [one] => Some(one.as_ref()),
        many => {
            joined = many.join(",");
            Some(joined.as_str())
        }
    };
    ratelimit::client_ip(peer.ip(), forwarded, &app.config.trusted_proxies)
}

/// Reads a JSON body: `Content-Type: application/json` (415 otherwise), at most
/// `WEAUTH_MAX_BODY` bytes whether announced by `Content-Length` or streamed (413), arriving
/// within `WEAUTH_HEADER_TIMEOUT` (408), valid JSON of `T` with no unknown member (400).
///
/// A function rather than a `FromRequest` extractor: handlers call it after the checks that
/// must come first (authentication, the login rate limit), so a refused caller's body is never
/// read.
pub async fn read_json<T: DeserializeOwned>(
    request: axum::extract::Request,
    config: &crate::config::Config,
) -> Result<T, ApiError> {
    let admission = request.extensions().get::<Admission>().cloned();
    let json = header_str(request.headers(), CONTENT_TYPE)
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
    let announced =
        header_str(request.headers(), CONTENT_LENGTH).and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        return Err(ApiError::PayloadTooLarge(max));
    }
    // The header timeout also bounds the body: a client that dribbles it is cut off (408).
    let limit = config.header_timeout;
    let bytes: Bytes =
        tokio::time::timeout(limit, Limited::new(request.into_body(), max).collect())
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
    // The body is in: the request now takes its place among those under way (a client
    // dribbling its body held none meanwhile).
    if let Some(admission) = admission {
        admission.take()?;
    }
    // Every body the issuer reads is an object, and serde reads a struct from a JSON array as
    // well (its members in order): `["…"]` passed as `{"refresh_token": "…"}`.
    if !bytes.is_empty() && bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "invalid JSON body: it must be an object".into(),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::InvalidRequest(format!("invalid JSON body: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_credential_requires_exact_bearer() {
        assert!(check_credential(Some("Bearer dev-feed-token"), "dev-feed-token").is_ok());
        assert!(check_credential(Some("Bearer nope"), "dev-feed-token").is_err());
        assert!(check_credential(None, "dev-feed-token").is_err());
    }

    #[test]
    fn several_authorization_headers_refused() {
        let mut headers = HeaderMap::new();
        headers.append(AUTHORIZATION, "Bearer a".parse().unwrap());
        assert_eq!(authorization(&headers).unwrap(), Some("Bearer a"));
        headers.append(AUTHORIZATION, "Bearer b".parse().unwrap());
        assert!(authorization(&headers).is_err());
    }
}
