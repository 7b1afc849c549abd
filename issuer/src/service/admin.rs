//! The admin API's user operations (`/v1/admin/ban`, `/unban`, `/scopes`, `/user`): glue
//! between the routes, the pure rules of [`crate::domain::grants`] and the store. Authentication (the
//! admin bearer credential) is the router's job.
//!
//! A ban is two writes: the ban itself (from then on no login or refresh of the user gets a
//! token), then a `sub` revocation of everything issued so far (existing tokens refused at
//! the edge, sessions ended). If the second fails the call answers 5xx with the ban already in
//! force; calling it again is safe (the ban is replaced, one more revocation entry written).

use std::sync::Arc;

use serde::Serialize;
use weauth_token::revocation::Entry;

use crate::app::App;
use crate::domain::grants::{self, Ban};
use crate::error::ApiError;
use crate::service::sessions;
use crate::store::Revoke;

fn check_sub(sub: &str) -> Result<(), ApiError> {
    if sub.is_empty() || sub.len() > 128 || !sub.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidRequest(
            "`sub` must be a user id as found in a token's `sub` claim".into(),
        ));
    }
    Ok(())
}

/// The answer of `POST /v1/admin/ban`.
#[derive(Debug, Serialize)]
pub struct Banned {
    pub sub: String,
    pub ban: Ban,
    /// The `sub` revocation that ended what the user held.
    pub revocation: Entry,
}

/// Bans `sub` (until `until`, unix seconds, or until lifted) and revokes every token and
/// session the user has.
///
/// # Errors
/// 400 for a bad `sub`, `until` or `reason`; 404 for an unknown user; store failures.
pub async fn ban(
    app: &Arc<App>,
    sub: String,
    until: Option<i64>,
    reason: Option<String>,
) -> Result<Banned, ApiError> {
    check_sub(&sub)?;
    let now = app.now();
    let ban = grants::new_ban(until, reason, now).map_err(ApiError::InvalidRequest)?;
    if !app.store.set_ban(&sub, Some(&ban), now).await? {
        return Err(ApiError::UnknownUser(sub));
    }
    tracing::info!(sub = %sub, until = ?ban.until, "user banned");
    let revocation = sessions::revoke(
        app,
        Revoke::Sub {
            sub: sub.clone(),
            issued_before: now + 1,
        },
    )
    .await?;
    Ok(Banned {
        sub,
        ban,
        revocation,
    })
}

/// The answer of `POST /v1/admin/unban`.
#[derive(Debug, Serialize)]
pub struct Unbanned {
    pub sub: String,
    /// Whether a ban (in force or lapsed) was there to lift.
    pub was_banned: bool,
}

/// Lifts `sub`'s ban: the user may log in again. Tokens and sessions the ban revoked stay
/// revoked. The ban's revocation covers every token issued before the second after the ban
/// (`issued_before` = ban time + 1 s), so an unban within that second waits for it to pass
/// before lifting: a login right after the answer must not be refused at the edge.
///
/// # Errors
/// 400 for a bad `sub`; 404 for an unknown user; store failures.
pub async fn unban(app: &Arc<App>, sub: String) -> Result<Unbanned, ApiError> {
    check_sub(&sub)?;
    let Some(current) = app.store.grants(&sub).await? else {
        return Err(ApiError::UnknownUser(sub));
    };
    if let Some(ban) = &current.ban {
        wait_until_second(app, ban.created_at + 1).await;
    }
    if !app.store.set_ban(&sub, None, app.now()).await? {
        return Err(ApiError::UnknownUser(sub));
    }
    tracing::info!(sub = %sub, "user unbanned");
    Ok(Unbanned {
        sub,
        was_banned: current.ban.is_some(),
    })
}

/// Sleeps until the unix second `second` has begun (at most about a second here).
async fn wait_until_second(app: &App, second: i64) {
    let wait = second
        .saturating_mul(1000)
        .saturating_sub(app.clock.now_ms());
    if wait > 0 {
        let wait = u64::try_from(wait).unwrap_or(0).min(2000);
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
}

/// The answer of `POST /v1/admin/scopes`.
#[derive(Debug, Serialize)]
pub struct Scopes {
    pub sub: String,
    pub scopes: Vec<String>,
    /// When the change reaches the user's tokens, for the operator.
    pub effective: &'static str,
}

/// Replaces `sub`'s scopes (empty clears). They are carried by the user's next token.
///
/// # Errors
/// 400 for a bad `sub` or scope name; 404 for an unknown user; store failures.
pub async fn set_scopes(
    app: &Arc<App>,
    sub: String,
    scopes: Vec<String>,
) -> Result<Scopes, ApiError> {
    check_sub(&sub)?;
    let scopes = grants::normalize_scopes(&scopes).map_err(ApiError::InvalidRequest)?;
    if !app.store.set_scopes(&sub, &scopes, app.now()).await? {
        return Err(ApiError::UnknownUser(sub));
    }
    tracing::info!(sub = %sub, scopes = %scopes.join(" "), "user scopes set");
    Ok(Scopes {
        sub,
        scopes,
        effective: "at the user's next token (refresh or login); tokens already issued keep their scopes until they expire or are revoked",
    })
}

/// The answer of `GET /v1/admin/user?sub=`.
#[derive(Debug, Serialize)]
pub struct UserView {
    pub sub: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    /// Whether a phone number is stored (the number itself is not shown).
    pub has_phone: bool,
    pub scopes: Vec<String>,
    /// Whether a ban is in force now.
    pub banned: bool,
    /// The ban as set (also when lapsed), with its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ban: Option<Ban>,
    /// WeChat's risk rank at the user's last login to an app with risk control.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<crate::store::RiskFact>,
}

/// What an admin may see of `sub`.
///
/// # Errors
/// 400 for a bad `sub`; 404 for an unknown user; store failures.
pub async fn lookup(app: &Arc<App>, sub: String) -> Result<UserView, ApiError> {
    check_sub(&sub)?;
    let (Some(user), Some(grants)) = (app.store.user(&sub).await?, app.store.grants(&sub).await?)
    else {
        return Err(ApiError::UnknownUser(sub));
    };
    let banned = grants.active_ban(app.now()).is_some();
    Ok(UserView {
        sub: user.sub,
        created_at: user.created_at,
        unionid: user.unionid,
        has_phone: user.phone.is_some(),
        scopes: grants.scopes,
        banned,
        ban: grants.ban,
        risk: user.risk,
    })
}
