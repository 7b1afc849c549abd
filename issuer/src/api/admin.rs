//! `/v1/admin/*`: revoke, ban, unban, scopes and the user lookup, behind the admin credential.

use std::sync::Arc;

use axum::extract::{Request, State};
use hyper::{StatusCode, Uri};
use serde::Deserialize;

use super::extract::{read_json, Admin, Now};
use super::{json, Resp};
use crate::app::App;
use crate::error::ApiError;
use crate::service::admin::check_claim;
use crate::store::{Revoke, SubSessions};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    issued_before: Option<i64>,
}

/// `POST /v1/admin/ban`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    sub: String,
    #[serde(default)]
    until: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/admin/unban`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubRequest {
    sub: String,
}

/// `POST /v1/admin/scopes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopesRequest {
    sub: String,
    scopes: Vec<String>,
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    _: Admin,
    now: Now,
    request: Request,
) -> Result<Resp, ApiError> {
    let body: RevokeRequest = read_json(request, &app.config).await?;
    let now = now.secs();
    let revoke = match (body.jti, body.sid, body.sub, body.issued_before) {
        (Some(jti), None, None, None) => {
            check_claim("jti", &jti)?;
            Revoke::Jti(jti)
        }
        (None, Some(sid), None, None) => {
            check_claim("sid", &sid)?;
            Revoke::Sid(sid)
        }
        (None, None, Some(sub), issued_before) => {
            check_claim("sub", &sub)?;
            // Default: every token issued up to and including this second.
            let issued_before = issued_before.unwrap_or(now + 1);
            if issued_before > now + 1 {
                return Err(ApiError::InvalidRequest(
                    "`issued_before` must not be in the future".into(),
                ));
            }
            // "Log out everywhere": the sessions created before `issued_before`
            // (`SubSessions::CreatedBefore` says why not every one, as a ban's).
            Revoke::Sub {
                sub,
                issued_before,
                sessions: SubSessions::CreatedBefore,
            }
        }
        _ => return Err(ApiError::InvalidRequest(
            "give exactly one of `jti`, `sid` or `sub` (with optional `issued_before` for `sub`)"
                .into(),
        )),
    };
    json(StatusCode::OK, &app.admin.revoke(revoke, now).await?)
}

pub async fn ban(
    State(app): State<Arc<App>>,
    _: Admin,
    now: Now,
    request: Request,
) -> Result<Resp, ApiError> {
    let body: BanRequest = read_json(request, &app.config).await?;
    json(
        StatusCode::OK,
        &app.admin
            .ban(body.sub, body.until, body.reason, now.secs())
            .await?,
    )
}

pub async fn unban(
    State(app): State<Arc<App>>,
    _: Admin,
    now: Now,
    request: Request,
) -> Result<Resp, ApiError> {
    let body: SubRequest = read_json(request, &app.config).await?;
    json(StatusCode::OK, &app.admin.unban(body.sub, now.ms).await?)
}

pub async fn scopes(
    State(app): State<Arc<App>>,
    _: Admin,
    now: Now,
    request: Request,
) -> Result<Resp, ApiError> {
    let body: ScopesRequest = read_json(request, &app.config).await?;
    json(
        StatusCode::OK,
        &app.admin
            .set_scopes(body.sub, body.scopes, now.secs())
            .await?,
    )
}

/// `GET /v1/admin/user?sub=`.
pub async fn user(
    State(app): State<Arc<App>>,
    _: Admin,
    now: Now,
    uri: Uri,
) -> Result<Resp, ApiError> {
    let sub = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(key, _)| key == "sub")
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| ApiError::InvalidRequest("`sub` query parameter is required".into()))?;
    json(StatusCode::OK, &app.admin.lookup(sub, now.secs()).await?)
}
