//! The admin API's user operations (`/v1/admin/ban`, `/unban`, `/scopes`, `/user`): glue
//! between the routes, the pure rules of [`crate::domain::grants`] and the store. Authentication (the
//! admin bearer credential) is the router's job.
//!
//! A ban is two writes: the ban itself (from then on no login or refresh of the user gets a
//! token), then a `sub` revocation of everything issued so far (existing tokens refused at
//! the edge, sessions ended). If the second fails the call answers 5xx with the ban already in
//! force; calling it again is safe (the ban is replaced, one more revocation entry written).
//!
//! "So far" is until the ban was in force, read from the clock once it is written, not the
//! request's arrival: a login that arrived after the ban request but read the user's grants
//! before the ban was written (the ban's body slow, its write queued behind a lock) got a
//! session and a token dated after the arrival, which a revocation dated by the arrival
//! missed — a banned user with a working token and a session that outlived the ban. And the
//! revocation ends every live session of the user, not only those created before its
//! `issued_before` ([`SubSessions::All`]): a session's `created_at` is its login replica's
//! clock, which may run ahead of this one's.
//!
//! An unban lifts the ban it read, and only once that ban's revocation is recorded
//! ([`grants::lift_waits_for_revocation`], waited for up to [`REVOCATION_WAIT`]); the store
//! lifts it only if it is still that ban ([`Store::set_ban_if`]). Otherwise it answers 409
//! `conflict` and lifts nothing: a ban set again while the unban was under way stays in force,
//! and a ban is never lifted between its own two writes.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use weauth_token::revocation::Entry;

use crate::clock::Clock;
use crate::domain::grants::{self, Ban};
use crate::error::ApiError;
use crate::service::sessions::Sessions;
use crate::store::{BanWrite, Revoke, Store, SubSessions};

/// How long an unban waits for its ban's revocation to be recorded (the ban writes it right
/// after the ban itself) before answering 409.
pub const REVOCATION_WAIT: Duration = Duration::from_secs(2);
/// How often the unban looks for it meanwhile.
const REVOCATION_POLL: Duration = Duration::from_millis(50);

/// The admin use cases, with what they use: the store, and the sessions' revocation.
pub struct Admin {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    /// Read again once a ban is written (module docs).
    pub clock: Arc<dyn Clock>,
}

fn check_sub(sub: &str) -> Result<(), ApiError> {
    check_claim("sub", sub)
}

/// What the admin API accepts as a `jti`, `sid` or `sub`: a claim's value as the issuer
/// mints them (printable ASCII, at most 128 bytes) — within every store's column (MySQL's
/// `VARCHAR(191)`), so an over-long value is a 400, not a store error.
///
/// # Errors
/// `invalid_request` naming the claim.
pub fn check_claim(claim: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidRequest(format!(
            "`{claim}` must be a value as found in a token's `{claim}` claim (printable ASCII, at most 128 bytes)"
        )));
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

/// The answer of `POST /v1/admin/unban`.
#[derive(Debug, Serialize)]
pub struct Unbanned {
    pub sub: String,
    /// Whether a ban (in force or lapsed) was there to lift.
    pub was_banned: bool,
}

/// Sleeps until the unix second `second` has begun, from `now_ms` (at most about a second
/// here).
async fn wait_until_second(second: i64, now_ms: i64) {
    let wait = second.saturating_mul(1000).saturating_sub(now_ms);
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

impl Admin {
    /// Records the operator's revocation. An unknown `sid` or `sub` is refused (404) and
    /// nothing is written: sessions and users are the store's own, so an unknown one is a
    /// typo, which a 200 let pass for done (and sent to every edge). A `jti` cannot be checked
    /// (tokens are not stored); a session ended and purged since is unknown too (its tokens
    /// expired before it was purged).
    ///
    /// # Errors
    /// 404 for an unknown session or user; store failures.
    pub async fn revoke(
        &self,
        revoke: Revoke,
        now: i64,
    ) -> Result<weauth_token::revocation::Entry, ApiError> {
        match &revoke {
            Revoke::Sid(sid) if self.store.session(sid).await?.is_none() => {
                return Err(ApiError::UnknownSession(sid.clone()));
            }
            Revoke::Sub { sub, .. } if self.store.user(sub).await?.is_none() => {
                return Err(ApiError::UnknownUser(sub.clone()));
            }
            _ => {}
        }
        self.sessions.revoke(revoke, now).await
    }

    /// Bans `sub` (until `until`, unix seconds, or until lifted) and revokes every token and
    /// session the user has.
    ///
    /// # Errors
    /// 400 for a bad `sub`, `until` or `reason`; 404 for an unknown user; store failures.
    pub async fn ban(
        &self,
        sub: String,
        until: Option<i64>,
        reason: Option<String>,
        now: i64,
    ) -> Result<Banned, ApiError> {
        check_sub(&sub)?;
        let ban = grants::new_ban(until, reason, now).map_err(ApiError::InvalidRequest)?;
        if !self.store.set_ban(&sub, Some(&ban), now).await? {
            return Err(ApiError::UnknownUser(sub));
        }
        tracing::info!(sub = %sub, until = ?ban.until, "user banned");
        let in_force = self.clock.now().max(now);
        let revoke = Revoke::Sub {
            sub: sub.clone(),
            issued_before: in_force + 1,
            sessions: SubSessions::All,
        };
        let revocation = self.sessions.revoke(revoke, in_force).await?;
        Ok(Banned {
            sub,
            ban,
            revocation,
        })
    }

    /// Lifts `sub`'s ban: the user may log in again. Tokens and sessions the ban revoked stay
    /// revoked. The ban's revocation covers every token issued before the second after the ban
    /// was in force (its `issued_before`), so an unban before then waits for it to pass before
    /// lifting: a login right after the answer must not be refused at the edge.
    ///
    /// The ban lifted is the one read here, once its revocation is recorded (module docs).
    /// Without a ban there is nothing to write (`was_banned: false`).
    ///
    /// # Errors
    /// 400 for a bad `sub`; 404 for an unknown user; 409 when the ban changed meanwhile (set
    /// again, replaced or lifted) or its revocation is not recorded within
    /// [`REVOCATION_WAIT`]; store failures.
    /// `now_ms` is the request's time in milliseconds.
    pub async fn unban(&self, sub: String, now_ms: i64) -> Result<Unbanned, ApiError> {
        check_sub(&sub)?;
        let Some(current) = self.store.grants(&sub).await? else {
            return Err(ApiError::UnknownUser(sub));
        };
        let Some(ban) = current.ban else {
            return Ok(Unbanned {
                sub,
                was_banned: false,
            });
        };
        let revoked_until = self.ban_revocation(&sub, &ban, now_ms).await?;
        let now_ms = self.clock.now_ms().max(now_ms);
        wait_until_second(revoked_until.unwrap_or(0).max(ban.created_at + 1), now_ms).await;
        match self
            .store
            .set_ban_if(&sub, Some(&ban), None, now_ms.div_euclid(1000))
            .await?
        {
            BanWrite::Written => {}
            BanWrite::UnknownUser => return Err(ApiError::UnknownUser(sub)),
            BanWrite::Changed => {
                tracing::info!(sub = %sub, "unban refused: the ban changed meanwhile");
                return Err(ApiError::Conflict(
                    "the user's ban changed while this unban was under way (banned again, \
                     replaced or lifted): nothing was lifted; read it again \
                     (GET /v1/admin/user) and unban again if still meant"
                        .into(),
                ));
            }
        }
        tracing::info!(sub = %sub, "user unbanned");
        Ok(Unbanned {
            sub,
            was_banned: true,
        })
    }

    /// The latest `issued_before` of `sub`'s revocations once `ban`'s own is recorded, read
    /// again every [`REVOCATION_POLL`] for up to [`REVOCATION_WAIT`]
    /// ([`grants::lift_waits_for_revocation`]).
    ///
    /// # Errors
    /// 409 when it is not recorded by then; store failures.
    async fn ban_revocation(
        &self,
        sub: &str,
        ban: &Ban,
        now_ms: i64,
    ) -> Result<Option<i64>, ApiError> {
        let deadline = tokio::time::Instant::now() + REVOCATION_WAIT;
        loop {
            let issued_before = self
                .store
                .revocation_facts("", "", sub)
                .await?
                .sub_issued_before;
            if !grants::lift_waits_for_revocation(ban, issued_before, now_ms.div_euclid(1000)) {
                return Ok(issued_before);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(sub = %sub, "unban refused: the ban's revocation is not recorded");
                return Err(ApiError::Conflict(format!(
                    "the ban's revocation is not recorded yet (the ban is still being written, \
                     or its revocation failed): nothing was lifted; try again — a ban set over \
                     {}s ago is lifted without it — or first revoke the user \
                     (POST /v1/admin/revoke {{\"sub\"}}) if the ban's call failed; waited {}s",
                    grants::BAN_WRITE_WINDOW,
                    REVOCATION_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(REVOCATION_POLL).await;
        }
    }

    /// Replaces `sub`'s scopes (empty clears). They are carried by the user's next token.
    ///
    /// # Errors
    /// 400 for a bad `sub` or scope name; 404 for an unknown user; store failures.
    pub async fn set_scopes(
        &self,
        sub: String,
        scopes: Vec<String>,
        now: i64,
    ) -> Result<Scopes, ApiError> {
        check_sub(&sub)?;
        let scopes = grants::normalize_scopes(&scopes).map_err(ApiError::InvalidRequest)?;
        if !self.store.set_scopes(&sub, &scopes, now).await? {
            return Err(ApiError::UnknownUser(sub));
        }
        tracing::info!(sub = %sub, scopes = %scopes.join(" "), "user scopes set");
        Ok(Scopes {
        sub,
        scopes,
        effective: "at the user's next token (refresh or login); tokens already issued keep their scopes until they expire or are revoked",
    })
    }

    /// What an admin may see of `sub`.
    ///
    /// # Errors
    /// 400 for a bad `sub`; 404 for an unknown user; store failures.
    pub async fn lookup(&self, sub: String, now: i64) -> Result<UserView, ApiError> {
        check_sub(&sub)?;
        let (Some(user), Some(grants)) =
            (self.store.user(&sub).await?, self.store.grants(&sub).await?)
        else {
            return Err(ApiError::UnknownUser(sub));
        };
        let banned = grants.active_ban(now).is_some();
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
}
