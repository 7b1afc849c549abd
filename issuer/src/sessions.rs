//! Login sessions and their refresh-token families: login, rotation with reuse detection,
//! logout and admin revocation, the bearer check of the issuer's own routes, and the
//! `session_key` accessor.
//!
//! [`decide_refresh`] is the pure state machine of one presented refresh token; the store
//! runs it inside its rotation transaction. The rest is glue between HTTP handlers, WeChat
//! and the store, with every time taken once per request from [`crate::app::now`].

use std::sync::Arc;

use serde::Serialize;
use weauth_token::revocation::Entry;
use weauth_token::Claims;
use zeroize::Zeroizing;

use crate::app::{now, App};
use crate::error::ApiError;
use crate::revocation;
use crate::secrets;
use crate::store::{
    LoginResult, NewLogin, RefreshRow, Revoke, Rotate, RotateResult, SessionRecord,
};
use crate::tokens::{self, Subject};

/// What to do with a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Consume it and issue a new one expiring at `new_expires`.
    Rotate { sid: String, new_expires: i64 },
    /// It was already used: revoke the session.
    Reuse { sid: String },
    /// Refuse without side effects.
    Invalid(&'static str),
}

/// Judges a presented refresh token at `now`. The new token's lifetime slides
/// (`now + refresh_ttl`) but never passes the session's absolute end. A token used at most
/// `reuse_grace` seconds ago is refused without revoking the session (a client that fired
/// two refreshes at once); `reuse_grace = 0` (the default) treats every reuse as theft.
pub fn decide_refresh(
    row: Option<&RefreshRow>,
    now: i64,
    refresh_ttl: i64,
    reuse_grace: i64,
) -> RefreshDecision {
    let Some(row) = row else {
        return RefreshDecision::Invalid("unknown refresh token");
    };
    if row.session_revoked_at.is_some() {
        return RefreshDecision::Invalid("the session has been revoked");
    }
    if let Some(used_at) = row.used_at {
        if reuse_grace > 0 && now.saturating_sub(used_at) <= reuse_grace {
            return RefreshDecision::Invalid("the refresh token was just used by another request");
        }
        return RefreshDecision::Reuse {
            sid: row.sid.clone(),
        };
    }
    if row.expires_at <= now {
        return RefreshDecision::Invalid("the refresh token has expired");
    }
    if row.session_expires_at <= now {
        return RefreshDecision::Invalid("the session has reached its maximum lifetime");
    }
    RefreshDecision::Rotate {
        sid: row.sid.clone(),
        new_expires: now.saturating_add(refresh_ttl).min(row.session_expires_at),
    }
}

/// An RFC 6749 §5.1 token response (plus `refresh_expires_in`).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    pub refresh_expires_in: i64,
}

fn issue(
    app: &App,
    subject: &Subject,
    refresh_token: String,
    refresh_expires: i64,
    now: i64,
) -> Result<TokenResponse, ApiError> {
    let claims = tokens::access_claims(&app.policy, subject, secrets::random_id("t_"), now);
    let ring = app.keys();
    let access_token = tokens::mint(&claims, &ring.signing)
        .map_err(|err| ApiError::Internal(format!("signing failed: {err}")))?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: claims.exp - now,
        refresh_token,
        refresh_expires_in: refresh_expires - now,
    })
}

/// Removes a code hash from the in-flight set when the exchange ends, however it ends.
struct InflightGuard<'a> {
    app: &'a App,
    hash: String,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.app.inflight_codes.lock() {
            set.remove(&self.hash);
        }
    }
}

fn valid_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 256 && code.bytes().all(|b| b.is_ascii_graphic())
}

/// `POST /v1/login`: code → WeChat → user → session → token pair. A failure writes nothing;
/// a code already exchanged (or being exchanged) is `invalid_grant`.
///
/// # Errors
/// See DESIGN.md's WeChat mapping; store failures are 5xx.
pub async fn login(app: &Arc<App>, code: &str) -> Result<TokenResponse, ApiError> {
    if !valid_code(code) {
        return Err(ApiError::InvalidRequest(
            "`code` must be a non-empty wx.login code".into(),
        ));
    }
    let code_hash = secrets::sha256_hex(code.as_bytes());
    let _guard = {
        let mut set = app
            .inflight_codes
            .lock()
            .map_err(|_| ApiError::Internal("in-flight set poisoned".into()))?;
        if !set.insert(code_hash.clone()) {
            return Err(ApiError::InvalidGrant(
                "this login code is already being exchanged".into(),
            ));
        }
        InflightGuard {
            app,
            hash: code_hash.clone(),
        }
    };
    let hash = code_hash.clone();
    if app.db(move |store| store.code_used(&hash)).await? {
        return Err(ApiError::InvalidGrant(
            "this login code has already been used".into(),
        ));
    }
    let session = app.wechat.code2session(code).await?;
    let now = now();
    let sid = secrets::random_id("s_");
    let sealed = app
        .data_key
        .seal(
            session.session_key.as_bytes(),
            &format!("session_key:{sid}"),
        )
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    let (refresh_token, refresh_hash) = tokens::new_refresh_token();
    let session_expires = now.saturating_add(crate::config::secs(app.config.session_max));
    let refresh_expires = now
        .saturating_add(crate::config::secs(app.config.refresh_ttl))
        .min(session_expires);
    let record = NewLogin {
        appid: app.config.wechat_appid.clone(),
        openid: session.openid.clone(),
        unionid: session.unionid.clone(),
        code_hash,
        new_sub: secrets::random_id("u_"),
        sid: sid.clone(),
        session_key_sealed: sealed,
        now,
        session_expires,
        refresh_hash,
        refresh_expires,
    };
    let sub = match app.db(move |store| store.login(&record)).await? {
        LoginResult::Created { sub, new_user } => {
            tracing::info!(sub = %sub, sid = %sid, openid = %crate::short_hash(&session.openid), new_user, "login");
            sub
        }
        LoginResult::CodeAlreadyUsed => {
            return Err(ApiError::InvalidGrant(
                "this login code has already been used".into(),
            ));
        }
    };
    let subject = Subject {
        sub,
        sid,
        openid: session.openid,
        unionid: session.unionid,
        appid: app.config.wechat_appid.clone(),
    };
    issue(app, &subject, refresh_token, refresh_expires, now)
}

fn subject_of(session: &SessionRecord) -> Subject {
    Subject {
        sub: session.sub.clone(),
        sid: session.sid.clone(),
        openid: session.openid.clone(),
        unionid: session.unionid.clone(),
        appid: session.appid.clone(),
    }
}

/// `POST /v1/token/refresh`: single-use rotation; a reused token revokes its session.
///
/// # Errors
/// `invalid_grant` for unknown, expired, used or revoked tokens; 5xx on store failure.
pub async fn refresh(app: &Arc<App>, presented: &str) -> Result<TokenResponse, ApiError> {
    if !tokens::refresh_token_well_formed(presented) {
        app.metrics.refresh("invalid_grant");
        return Err(ApiError::InvalidGrant("unknown refresh token".into()));
    }
    let now = now();
    let (refresh_token, new_hash) = tokens::new_refresh_token();
    let rotate = Rotate {
        presented_hash: tokens::refresh_hash(presented),
        new_hash,
        now,
        refresh_ttl: crate::config::secs(app.config.refresh_ttl),
        reuse_grace: crate::config::secs(app.config.refresh_reuse_grace),
        revocation_until: revocation::until(now, app.policy.access_ttl, app.policy.leeway),
    };
    match app.db(move |store| store.rotate_refresh(&rotate)).await? {
        RotateResult::Rotated {
            session,
            refresh_expires,
        } => {
            app.metrics.refresh("ok");
            issue(
                app,
                &subject_of(&session),
                refresh_token,
                refresh_expires,
                now,
            )
        }
        RotateResult::Reused { sid, entry } => {
            app.metrics.refresh("reuse");
            app.metrics.revocation("sid");
            app.notify_seq(entry.seq);
            tracing::warn!(sid = %sid, seq = entry.seq, "refresh token reuse: session revoked");
            Err(ApiError::InvalidGrant(
                "the refresh token was already used; the session has been revoked".into(),
            ))
        }
        RotateResult::Invalid(reason) => {
            app.metrics.refresh("invalid_grant");
            Err(ApiError::InvalidGrant(reason.into()))
        }
    }
}

/// The bearer check of the issuer's own protected routes: signature and claims against the
/// published keys, then revocation against the store.
///
/// # Errors
/// `invalid_token` (401) for anything wrong.
pub async fn authenticate(app: &Arc<App>, authorization: Option<&str>) -> Result<Claims, ApiError> {
    let Some(token) = tokens::bearer(authorization) else {
        app.metrics.bearer_rejected("missing");
        return Err(ApiError::MissingToken(
            "a bearer access token is required".into(),
        ));
    };
    let ring = app.keys();
    let claims = tokens::check(token, &ring.verify, &app.policy, now()).map_err(|err| {
        app.metrics.bearer_rejected(err.reason());
        ApiError::InvalidToken(err.to_string())
    })?;
    let (jti, sid, sub, iat) = (
        claims.jti.clone(),
        claims.sid.clone(),
        claims.sub.clone(),
        claims.iat,
    );
    if app
        .db(move |store| store.is_revoked(&jti, &sid, &sub, iat))
        .await?
    {
        app.metrics.bearer_rejected("revoked");
        return Err(ApiError::InvalidToken("the token has been revoked".into()));
    }
    Ok(claims)
}

/// Records a revocation, counts it and wakes the feed's long polls.
///
/// # Errors
/// Store failures.
pub async fn revoke(app: &Arc<App>, revoke: Revoke) -> Result<Entry, ApiError> {
    let now = now();
    let until = match &revoke {
        Revoke::Sub { issued_before, .. } => {
            revocation::until_for_sub(*issued_before, app.policy.access_ttl, app.policy.leeway)
        }
        _ => revocation::until(now, app.policy.access_ttl, app.policy.leeway),
    };
    let entry = app
        .db(move |store| store.revoke(&revoke, now, until))
        .await?;
    let kind = match entry.kind {
        weauth_token::revocation::EntryKind::Jti => "jti",
        weauth_token::revocation::EntryKind::Sid => "sid",
        weauth_token::revocation::EntryKind::Sub => "sub",
    };
    app.metrics.revocation(kind);
    app.notify_seq(entry.seq);
    tracing::info!(kind, value = %entry.value, seq = entry.seq, "revoked");
    Ok(entry)
}

/// The caller's profile (`GET /v1/me`).
#[derive(Debug, Serialize)]
pub struct Profile {
    pub sub: String,
    pub openid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    pub appid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub created_at: i64,
}

/// Reads the caller's profile.
///
/// # Errors
/// `invalid_token` when the session or user is gone; store failures.
pub async fn profile(app: &Arc<App>, claims: &Claims) -> Result<Profile, ApiError> {
    let (sid, sub) = (claims.sid.clone(), claims.sub.clone());
    let (session, user) = app
        .db(move |store| Ok((store.session(&sid)?, store.user(&sub)?)))
        .await?;
    let (Some(session), Some(user)) = (session, user) else {
        return Err(ApiError::InvalidToken(
            "the token's session no longer exists".into(),
        ));
    };
    let phone = match &user.phone {
        Some(sealed) => Some(crate::userdata::open_phone(app, &user.sub, sealed)?),
        None => None,
    };
    Ok(Profile {
        sub: user.sub,
        openid: session.openid,
        unionid: user.unionid.or(session.unionid),
        appid: session.appid,
        phone,
        created_at: user.created_at,
    })
}

/// The decrypted `session_key` (base64 text, as WeChat sent it) of a session, for
/// `/v1/me/decrypt` and `/v1/me/session` (see `userdata`).
///
/// # Errors
/// `invalid_token` when the session is unknown; 5xx when it does not decrypt.
pub async fn session_key(app: &Arc<App>, sid: &str) -> Result<Zeroizing<String>, ApiError> {
    let owned = sid.to_string();
    let sealed = app
        .db(move |store| store.session_key_sealed(&owned))
        .await?
        .ok_or_else(|| ApiError::InvalidToken("the token's session no longer exists".into()))?;
    let bytes = app
        .data_key
        .open(&sealed, &format!("session_key:{sid}"))
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    String::from_utf8(bytes.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| ApiError::Internal("stored session_key is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        used: Option<i64>,
        revoked: Option<i64>,
        expires: i64,
        session_expires: i64,
    ) -> RefreshRow {
        RefreshRow {
            sid: "s1".into(),
            expires_at: expires,
            used_at: used,
            session_expires_at: session_expires,
            session_revoked_at: revoked,
        }
    }

    #[test]
    fn decide_refresh_unknown_invalid() {
        assert!(matches!(
            decide_refresh(None, 10, 100, 0),
            RefreshDecision::Invalid(_)
        ));
    }

    #[test]
    fn decide_refresh_fresh_token_rotates_sliding() {
        assert_eq!(
            decide_refresh(Some(&row(None, None, 50, 1000)), 10, 100, 0),
            RefreshDecision::Rotate {
                sid: "s1".into(),
                new_expires: 110
            }
        );
    }

    #[test]
    fn decide_refresh_capped_by_session_end() {
        assert_eq!(
            decide_refresh(Some(&row(None, None, 50, 60)), 10, 100, 0),
            RefreshDecision::Rotate {
                sid: "s1".into(),
                new_expires: 60
            }
        );
    }

    #[test]
    fn decide_refresh_used_token_is_reuse() {
        assert_eq!(
            decide_refresh(Some(&row(Some(5), None, 50, 1000)), 10, 100, 0),
            RefreshDecision::Reuse { sid: "s1".into() }
        );
    }

    #[test]
    fn decide_refresh_used_token_of_revoked_session_invalid_only() {
        assert!(matches!(
            decide_refresh(Some(&row(Some(5), Some(6), 50, 1000)), 10, 100, 0),
            RefreshDecision::Invalid(_)
        ));
    }

    #[test]
    fn decide_refresh_reuse_within_grace_refused_without_revoking() {
        let used = row(Some(8), None, 50, 1000);
        assert!(matches!(
            decide_refresh(Some(&used), 10, 100, 2),
            RefreshDecision::Invalid(_)
        ));
        assert_eq!(
            decide_refresh(Some(&used), 11, 100, 2),
            RefreshDecision::Reuse { sid: "s1".into() }
        );
    }

    #[test]
    fn decide_refresh_expired_invalid() {
        assert!(matches!(
            decide_refresh(Some(&row(None, None, 10, 1000)), 10, 100, 0),
            RefreshDecision::Invalid(_)
        ));
        assert!(matches!(
            decide_refresh(Some(&row(None, None, 50, 10)), 10, 100, 0),
            RefreshDecision::Invalid(_)
        ));
    }

    #[test]
    fn valid_code_shape() {
        assert!(valid_code("081abcDEF"));
        assert!(!valid_code(""));
        assert!(!valid_code("has space"));
        assert!(!valid_code(&"a".repeat(257)));
    }
}
