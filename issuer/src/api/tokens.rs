//! `POST /v1/login`, `POST /v1/token/refresh` (JSON body, or the web login's cookie) and
//! `POST /v1/logout`.

use std::sync::Arc;

use axum::extract::{Request, State};
use hyper::header::CONTENT_TYPE;
use hyper::StatusCode;
use serde::Deserialize;

use super::extract::{
    admit, check_csrf, client_ip, cookie, read_json, same_origin, Now, Peer, User,
};
use super::{check_rate, json, no_content, set_cookies, set_session_cookies, Resp};
use crate::app::App;
use crate::domain::web;
use crate::error::ApiError;
use crate::store::Revoke;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    code: String,
    /// The mini-program; may be left out when exactly one is configured.
    #[serde(default)]
    appid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

/// `POST /v1/login`: the rate limit first (before the body is read), then the code exchange.
/// Every outcome is counted in `weauth_logins_total`.
pub async fn login(
    State(app): State<Arc<App>>,
    Peer(peer): Peer,
    now: Now,
    request: Request,
) -> Result<Resp, ApiError> {
    if let Err(err) = check_rate(&app, peer, request.headers(), now).await {
        app.metrics.login("rate_limited");
        return Err(err);
    }
    let client = client_ip(&app, peer, request.headers());
    let result = async {
        let body: LoginRequest = read_json(request, &app.config).await?;
        app.sessions
            .login(&body.code, body.appid.as_deref(), client, now.secs())
            .await
    }
    .await;
    match result {
        Ok(tokens) => {
            app.metrics.login("ok");
            json(StatusCode::OK, &tokens)
        }
        Err(err) => {
            app.metrics.login(err.code());
            Err(err)
        }
    }
}

/// `POST /v1/token/refresh`: with a JSON body, the new pair as JSON; with no body and the
/// `weauth_rt` cookie (and its binding), the cookies set again (204).
pub async fn refresh(
    State(app): State<Arc<App>>,
    now: Now,
    request: Request,
) -> Result<Resp, ApiError> {
    let refused = refused_refresh(&app);
    if !request.headers().contains_key(CONTENT_TYPE) {
        if let Some(presented) = refresh_cookie(&app, request.headers()).map_err(refused)? {
            let presented = presented.to_string();
            // No body to read: the place among the requests under way is taken here.
            admit(&request).map_err(refused)?;
            return cookie_refresh(&app, request.headers(), presented, now).await;
        }
    }
    let body: RefreshRequest = read_json(request, &app.config).await.map_err(refused)?;
    let tokens = app
        .sessions
        .refresh(&body.refresh_token, now.secs())
        .await?;
    json(StatusCode::OK, &tokens)
}

/// Counts a refresh refused before it reaches the service (`weauth_refreshes_total`, which
/// the service counts for each of its own outcomes), and hands the refusal on.
fn refused_refresh(app: &App) -> impl Fn(ApiError) -> ApiError + Copy + '_ {
    |err| {
        app.metrics.refresh(err.code());
        err
    }
}

/// The request's refresh cookie ([`web::chosen_refresh_cookie`]: of several, the bound one).
fn refresh_cookie<'a>(
    app: &App,
    headers: &'a hyper::HeaderMap,
) -> Result<Option<&'a str>, ApiError> {
    let values = web::cookie_values(
        headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .map(|value| value.as_bytes()),
        web::REFRESH_COOKIE,
    );
    let secure = app.config.cookie_secure;
    let binding = if secure && values.len() > 1 {
        cookie(headers, web::REFRESH_BINDING_COOKIE)?
    } else {
        None
    };
    web::chosen_refresh_cookie(&values, binding, secure).map_err(|()| {
        ApiError::InvalidRequest(format!(
            "the cookie `{}` is sent more than once, and not exactly one of them is bound to this browser",
            web::REFRESH_COOKIE
        ))
    })
}

/// The cookie form of the refresh: rotates, and sets the cookies again (204). A refused
/// refresh (an unknown, used or expired token; a banned user) clears them; a CSRF refusal, a
/// rate limit or a store failure leaves them alone. A refresh cookie without its
/// binding (`Secure`: one a sibling host planted, to walk the browser into its own user's
/// session) is refused as unknown, before any store access.
async fn cookie_refresh(
    app: &Arc<App>,
    headers: &hyper::HeaderMap,
    presented: String,
    now: Now,
) -> Result<Resp, ApiError> {
    let secure = app.config.cookie_secure;
    let refused = refused_refresh(app);
    check_csrf(app, headers).map_err(refused)?;
    let binding = if secure {
        cookie(headers, web::REFRESH_BINDING_COOKIE).map_err(refused)?
    } else {
        None
    };
    let refreshed = if web::refresh_cookie_bound(&presented, binding, secure) {
        app.sessions.refresh(&presented, now.secs()).await
    } else {
        Err(refused(ApiError::InvalidGrant(
            "the refresh cookie is not bound to this browser (no __Host-weauth_rb beside it); log in again"
                .into(),
        )))
    };
    match refreshed {
        Ok(tokens) => {
            let mut response = no_content();
            set_session_cookies(&mut response, &tokens, secure);
            Ok(response)
        }
        Err(err) => {
            let clear = matches!(err, ApiError::InvalidGrant(_) | ApiError::Banned { .. });
            let mut response = err.response();
            if clear {
                set_cookies(&mut response, &web::clear_session_cookies(secure));
            }
            Ok(response)
        }
    }
}

/// `POST /v1/logout`: revokes the caller's session; a cookie session's cookies are cleared.
///
/// Without a live credential there is nothing to revoke (401) — but a browser whose access
/// cookie lapsed with its token still holds the refresh cookie (scoped to the refresh route,
/// never sent here), which would bring the session back: when the request has no
/// `Authorization` header and passes the cookie CSRF rule (a page of this site), both cookies
/// are cleared with the 401, so that "log out" on a shared machine leaves no way back in. The
/// session itself then ends with its refresh token.
pub async fn logout(
    State(app): State<Arc<App>>,
    now: Now,
    headers: hyper::HeaderMap,
    user: Result<User, ApiError>,
) -> Result<Resp, ApiError> {
    let user = match user {
        Ok(user) => user,
        Err(err)
            if err.status() == StatusCode::UNAUTHORIZED
                && !headers.contains_key(hyper::header::AUTHORIZATION)
                && same_origin(&app, &headers) =>
        {
            let mut response = err.response();
            set_cookies(
                &mut response,
                &web::clear_session_cookies(app.config.cookie_secure),
            );
            return Ok(response);
        }
        Err(err) => return Err(err),
    };
    app.sessions
        .revoke(Revoke::Sid(user.claims.sid), now.secs())
        .await?;
    let mut response = Resp::new(Default::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    if user.via_cookie {
        set_cookies(
            &mut response,
            &web::clear_session_cookies(app.config.cookie_secure),
        );
    }
    Ok(response)
}
