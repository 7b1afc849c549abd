//! The web login: `GET /v1/web/authorize` and `GET /v1/web/callback` (the pure parts are in
//! [`crate::domain::web`]).

use std::sync::Arc;

use axum::extract::State;
use hyper::header::{HeaderValue, CACHE_CONTROL, LOCATION};
use hyper::{HeaderMap, StatusCode, Uri};

use super::extract::{cookie, Now, Peer};
use super::{check_rate, set_cookies, set_session_cookies, Resp};
use crate::app::App;
use crate::domain::web::{self, WebError};
use crate::error::ApiError;
use crate::secrets;
use crate::service::identity::Credential;

/// The single value of query parameter `name` (a repeated one is refused).
fn query_param(query: &[(String, String)], name: &'static str) -> Result<Option<String>, ApiError> {
    let mut values = query.iter().filter(|(key, _)| key == name);
    let first = values.next().map(|(_, value)| value.clone());
    if values.next().is_some() {
        return Err(web_error(WebError::Repeated(name)));
    }
    Ok(first)
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

fn web_error(err: WebError) -> ApiError {
    match err {
        WebError::SnapshotUser => ApiError::AccessDenied(err.to_string()),
        other => ApiError::InvalidRequest(other.to_string()),
    }
}

fn redirect(location: &str) -> Result<Resp, ApiError> {
    let mut response = Resp::new(Default::default());
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

/// `GET /v1/web/authorize?appid=&redirect_uri=&scope=`: checks the app, the exact redirect
/// URI and the scope, stores a pending login under a fresh state, sets the browser binding
/// cookie, and redirects to WeChat's authorize page. Every refusal is a 400 and never a
/// redirect.
pub async fn authorize(
    State(app): State<Arc<App>>,
    Peer(peer): Peer,
    now: Now,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Resp, ApiError> {
    let query = query_pairs(&uri);
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
    check_rate(&app, peer, &headers, now).await?;
    let (state, binding) = {
        let mut rng = rand::thread_rng();
        (web::new_state(&mut rng), web::new_binding(&mut rng))
    };
    let expires_at = now.secs() + web::STATE_TTL;
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

/// `GET /v1/web/callback?code=&state=`. Every failure is a JSON answer (400/403; 429/502/503
/// when WeChat or the store fails), never a redirect.
/// The state cookie goes once it has been matched to the state, whatever follows; a callback
/// refused before (no state, a state unknown or of another login) leaves it to the login it
/// belongs to — another tab's, which would otherwise fail too.
pub async fn callback(State(app): State<Arc<App>>, now: Now, uri: Uri, headers: HeaderMap) -> Resp {
    let now = now.secs();
    let bound = match bind(&app, &uri, &headers, now).await {
        Ok(bound) => bound,
        Err(err) => return err.response(),
    };
    let mut response = match complete(&app, bound, now).await {
        Ok(response) => response,
        Err(err) => err.response(),
    };
    set_cookies(
        &mut response,
        &[web::state_cookie("", 0, app.config.cookie_secure)],
    );
    response
}

/// A callback whose state was taken and matched this browser's binding cookie.
struct Bound {
    pending: web::PendingLogin,
    code: Option<String>,
}

/// Takes the state once and checks the browser binding.
async fn bind(app: &Arc<App>, uri: &Uri, headers: &HeaderMap, now: i64) -> Result<Bound, ApiError> {
    let query = query_pairs(uri);
    let state = query_param(&query, "state")?
        .filter(|s| !s.is_empty())
        .ok_or(web_error(WebError::Missing("state")))?;
    let code = query_param(&query, "code")?;
    if !web::valid_state_format(&state) {
        return Err(web_error(WebError::StateMalformed));
    }
    let name = web::state_cookie_name(app.config.cookie_secure);
    let binding = cookie(headers, name)?.map(str::to_string);
    let taken = app
        .store
        .take_ephemeral(&web::state_key(&state), now)
        .await?;
    let pending = taken.as_deref().and_then(web::PendingLogin::decode);
    let pending = web::check_callback(pending, binding.as_deref(), now).map_err(|err| {
        app.metrics.login("web_state_refused");
        web_error(err)
    })?;
    Ok(Bound { pending, code })
}

/// Exchanges the code (the login-method boundary), establishes the session and redirects to
/// the app's redirect URI with the session cookies.
async fn complete(app: &Arc<App>, bound: Bound, now: i64) -> Result<Resp, ApiError> {
    let Bound { pending, code } = bound;
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
        let credential = Credential::Web {
            app: entry,
            code: &code,
        };
        let identity = app.identity.identify(credential).await?;
        let code_hash = secrets::sha256_hex(format!("web:{}:{code}", entry.appid).as_bytes());
        app.sessions.establish(identity, code_hash, now).await
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
    set_session_cookies(&mut response, &tokens, app.config.cookie_secure);
    Ok(response)
}
