//! The caller's own routes: `GET /v1/me`, `POST /v1/me/decrypt`, `POST /v1/me/phone`,
//! `GET /v1/me/session`.

use std::sync::Arc;

use axum::extract::{Request, State};
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json as value;

use super::extract::{read_json, Now, User};
use super::{json, Resp};
use crate::app::App;
use crate::error::{json_response, ApiError};

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
    /// `getPhoneNumber`'s error number (documented for failures; seen beside a code).
    #[serde(rename = "errno", default)]
    _errno: Option<serde::de::IgnoredAny>,
    /// `getPhoneNumber`'s `e.detail` also carries the phone code (see `/v1/me/phone`).
    #[serde(rename = "code", default)]
    _code: Option<serde::de::IgnoredAny>,
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
    #[serde(rename = "iv", default)]
    _iv: Option<serde::de::IgnoredAny>,
    #[serde(rename = "errno", default)]
    _errno: Option<serde::de::IgnoredAny>,
}

pub async fn profile(State(app): State<Arc<App>>, user: User) -> Result<Resp, ApiError> {
    json(StatusCode::OK, &app.sessions.profile(&user.claims).await?)
}

pub async fn decrypt(
    State(app): State<Arc<App>>,
    now: Now,
    user: User,
    request: Request,
) -> Result<Resp, ApiError> {
    let body: DecryptRequest = read_json(request, &app.config).await?;
    let input = crate::service::userdata::DecryptInput {
        encrypted_data: &body.encrypted_data,
        iv: &body.iv,
        raw_data: body.raw_data.as_deref(),
        signature: body.signature.as_deref(),
        verify_with_wechat: body.verify_with_wechat,
    };
    json(
        StatusCode::OK,
        &app.userdata
            .decrypt(&user.claims, input, now.secs())
            .await?,
    )
}

pub async fn phone(
    State(app): State<Arc<App>>,
    now: Now,
    user: User,
    request: Request,
) -> Result<Resp, ApiError> {
    let body: PhoneRequest = read_json(request, &app.config).await?;
    json(
        StatusCode::OK,
        &app.userdata
            .phone(&user.claims, &body.code, now.secs())
            .await?,
    )
}

pub async fn session(State(app): State<Arc<App>>, now: Now, user: User) -> Result<Resp, ApiError> {
    let valid = app.userdata.check_session(&user.claims, now.secs()).await?;
    Ok(json_response(StatusCode::OK, &value!({ "valid": valid })))
}
