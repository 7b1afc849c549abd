//! The login-method boundary: the one place where a WeChat credential becomes an
//! [`ExternalIdentity`]. Everything after it — linking the user
//! ([`crate::domain::rules::link_user`], inside the store's atomic login), creating the session and
//! minting the tokens — is one path, [`crate::service::sessions::establish`], whatever the method.
//!
//! Methods ([`Credential`]):
//! - a mini-program's `wx.login` code → `sns/jscode2session` → openid, unionid?, session_key;
//! - a plugin's `wx.pluginLogin` code → `wxa/getpluginopenpid` (with the plugin's own app
//!   access token) → openpid, which stands where an openid stands (the `openid` claim of a
//!   plugin session holds it; `/v1/me` shows it as `openpid`). No unionid, no session_key:
//!   a plugin user is a user of their own, never linked to the host mini-program's;
//! - an official account's or a website's OAuth2 code (after `/v1/web/callback` checked the
//!   state) → `sns/oauth2/access_token` → openid, unionid?; for `snsapi_userinfo` and
//!   `snsapi_login`, when that answer has no unionid, also `sns/userinfo` → unionid (its
//!   profile is not kept). There is no session_key.
//!   A snapshot-mode virtual account (`is_snapshotuser: 1`) is refused here (403): it is a
//!   preview of the page, not a WeChat user. WeChat's user access token is dropped as soon as
//!   the profile is read; it is never stored, logged or sent to the browser.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::config::apps::{self, AppKind};
use crate::error::ApiError;
use crate::wechat::access_token::{AccessTokens, CallError};
use crate::wechat::web::{WebProfile, WechatWeb};
use crate::wechat::WechatClients;

/// The login-method boundary: WeChat's clients, and the app access tokens some calls need.
pub struct Identity {
    pub wechat: Arc<WechatClients>,
    pub web: Arc<dyn WechatWeb>,
    pub access_tokens: Arc<AccessTokens>,
}

/// Who logged in, as WeChat says, whatever the login method.
#[derive(Clone)]
pub struct ExternalIdentity {
    /// The app the user logged into (the `appid` claim).
    pub appid: String,
    /// The user's openid in that app.
    pub openid: String,
    /// Present when the app is bound to an Open Platform account (and, on the web, the scope
    /// reveals it): links the user across apps.
    pub unionid: Option<String>,
    /// Mini-program logins only. Never logged (see the `Debug` impl).
    pub session_key: Option<Zeroizing<String>>,
    /// Web logins with `snsapi_userinfo` / `snsapi_login` whose token answer had no unionid
    /// (`sns/userinfo` is asked only then, for its unionid).
    pub profile: Option<WebProfile>,
}

impl std::fmt::Debug for ExternalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalIdentity")
            .field("appid", &self.appid)
            .field("openid", &crate::short_hash(&self.openid))
            .field("unionid", &self.unionid.is_some())
            .field("session_key", &self.session_key.is_some())
            .field("profile", &self.profile.is_some())
            .finish()
    }
}

/// A WeChat credential, with the app it was issued for. Its `Debug` names the kind and the
/// app, never the code.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// A `wx.login` code of a mini-program.
    MiniProgram { app: &'a apps::App, code: &'a str },
    /// A `wx.pluginLogin` code of a plugin.
    Plugin { app: &'a apps::App, code: &'a str },
    /// A web OAuth2 code (official account or website), its state already checked.
    Web { app: &'a apps::App, code: &'a str },
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, app) = match self {
            Credential::MiniProgram { app, .. } => ("MiniProgram", app),
            Credential::Plugin { app, .. } => ("Plugin", app),
            Credential::Web { app, .. } => ("Web", app),
        };
        f.debug_struct(kind)
            .field("app", app)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Turns a credential into an identity by asking WeChat.
    ///
    /// # Errors
    /// WeChat's answer mapped as DESIGN.md says (a code of another app or a used code → 400
    /// `invalid_grant`, …); a snapshot-mode account → 403 `access_denied`; a credential of the
    /// wrong kind of app → 400 `invalid_request`.
    pub async fn identify(&self, credential: Credential<'_>) -> Result<ExternalIdentity, ApiError> {
        match credential {
            Credential::Plugin { app: entry, code } => {
                if entry.kind != AppKind::Plugin {
                    return Err(ApiError::InvalidRequest(format!(
                        "appid `{}` is not a plugin",
                        entry.appid
                    )));
                }
                let wechat = self.wechat.for_appid(&entry.appid)?;
                let openpid = self
                    .access_tokens
                    .call_for(&entry.appid, |token| async move {
                        wechat.plugin_openpid(&token, code).await
                    })
                    .await
                    .map_err(|err| match err {
                        CallError::Token(token) => ApiError::from(token),
                        CallError::Api(api) => ApiError::from(api),
                    })?;
                Ok(ExternalIdentity {
                    appid: entry.appid.clone(),
                    openid: openpid,
                    unionid: None,
                    session_key: None,
                    profile: None,
                })
            }
            Credential::MiniProgram { app: entry, code } => {
                if entry.kind != AppKind::Miniprogram {
                    return Err(ApiError::InvalidRequest(format!(
                        "appid `{}` is not a mini-program",
                        entry.appid
                    )));
                }
                let session = self
                    .wechat
                    .for_appid(&entry.appid)?
                    .code2session(code)
                    .await?;
                Ok(ExternalIdentity {
                    appid: entry.appid.clone(),
                    openid: session.openid,
                    unionid: session.unionid,
                    session_key: Some(session.session_key),
                    profile: None,
                })
            }
            Credential::Web { app: entry, code } => {
                if !entry.kind.is_web() {
                    return Err(ApiError::InvalidRequest(format!(
                        "appid `{}` is not an official account or website",
                        entry.appid
                    )));
                }
                let token = self.web.oauth_token(entry, code).await?;
                if token.snapshot_user {
                    return Err(ApiError::AccessDenied(
                        crate::domain::web::WebError::SnapshotUser.to_string(),
                    ));
                }
                // `sns/userinfo` only for a unionid the token answer lacks (the profile itself
                // is not kept): a bound account's answer carries it, so an outage of userinfo
                // does not fail those logins.
                let profile = if token.unionid.is_none()
                    && crate::domain::web::reads_userinfo(&token.scope)
                {
                    Some(self.web.userinfo(entry, &token).await?)
                } else {
                    None
                };
                let unionid = token
                    .unionid
                    .clone()
                    .or_else(|| profile.as_ref().and_then(|p| p.unionid.clone()));
                Ok(ExternalIdentity {
                    appid: entry.appid.clone(),
                    openid: token.openid.clone(),
                    unionid,
                    session_key: None,
                    profile,
                })
            }
        }
    }
}
