//! Login sessions and their refresh-token families: login, rotation with reuse detection,
//! logout and admin revocation, the bearer check of the issuer's own routes, and the
//! `session_key` accessor.
//!
//! The decisions (refresh verdict, user linking, revocation coverage) are pure functions in
//! [`crate::domain::rules`], which the store calls inside its atomic units. This module is glue
//! between HTTP handlers, WeChat and the store; every method takes the request's `now`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use weauth_token::revocation::Entry;
use weauth_token::Claims;

use crate::config::Config;
use crate::domain::grants::Grants;
use crate::domain::keys::KeyRingCell;
use crate::domain::rules;
use crate::domain::tokens::{self, Subject, TokenPolicy};
use crate::error::ApiError;
use crate::feed::{revocation, KnownSeq};
use crate::secrets::{self, DataKey};
use crate::service::identity::{Credential, ExternalIdentity, Identity};
use crate::service::userdata;
use crate::store::{
    LoginResult, NewLogin, Revoke, Rotate, RotateResult, SessionRecord, Store, StoreError,
};
use crate::telemetry::metrics::Metrics;

/// The session use cases, with what they use and nothing else. Every method takes the
/// request's time (`now`, unix seconds), read once per request from the clock.
pub struct Sessions {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub policy: TokenPolicy,
    pub keys: Arc<KeyRingCell>,
    /// Seals session_keys; opens the stored phone number for the profile.
    pub data_key: DataKey,
    pub metrics: Arc<Metrics>,
    /// Advanced by every revocation written here, so this replica's feed polls wake at once.
    pub known_seq: Arc<KnownSeq>,
    /// WeChat: credentials into identities, and the risk-rank call.
    pub identity: Arc<Identity>,
    /// Hashes of the login codes being exchanged now (a second exchange of one is refused).
    pub inflight_codes: Mutex<HashSet<String>>,
    /// The longest access-token lifetime a token still verifying may have
    /// ([`revocation::longest_lifetime`]), as this replica last read the reports: what a
    /// refresh-token reuse's revocation is kept for, and a retired signing key published for.
    pub longest_ttl: AtomicI64,
}

/// An RFC 6749 §5.1 token response (plus `refresh_expires_in`).
#[derive(Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    pub refresh_expires_in: i64,
}

/// Without the tokens: a `{:?}` of a response in a log line must not carry them.
impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .finish_non_exhaustive()
    }
}

/// Removes a code hash from the in-flight set when the exchange ends, however it ends.
struct InflightGuard<'a> {
    set: &'a Mutex<HashSet<String>>,
    hash: String,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.hash);
        }
    }
}

fn valid_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 256 && code.bytes().all(|b| b.is_ascii_graphic())
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

/// The caller's profile (`GET /v1/me`).
#[derive(Debug, Serialize)]
pub struct Profile {
    pub sub: String,
    /// The user's openid in `appid` (absent for a plugin session, which has an `openpid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    /// The user's openpid in the plugin `appid` (plugin sessions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openpid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unionid: Option<String>,
    pub appid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub created_at: i64,
}

impl Sessions {
    /// Mints the access token of a new pair for `subject`, with the `scope` claim of `grants`
    /// (read by [`Sessions::grants_for_token`] just before).
    fn issue(
        &self,
        subject: &Subject,
        grants: &Grants,
        refresh_token: String,
        refresh_expires: i64,
        now: i64,
    ) -> Result<TokenResponse, ApiError> {
        let mut claims =
            tokens::access_claims(&self.policy, subject, secrets::random_id("t_"), now);
        // Not past the session's end (`WEAUTH_SESSION_MAX`), which caps the refresh token: a
        // refresh near it got a token outliving the session by up to WEAUTH_ACCESS_TTL.
        claims.exp = claims.exp.min(refresh_expires);
        claims.scope = grants.scope_claim();
        let ring = self.keys.current();
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

    /// The user's grants for a token about to be issued at `now`: 403 `user_banned` while a
    /// ban is in force. Every path that hands out tokens (login, refresh) passes here, so a
    /// ban set while a login was in flight still refuses it.
    ///
    /// # Errors
    /// [`ApiError::Banned`]; store failures.
    pub async fn grants_for_token(&self, sub: &str, now: i64) -> Result<Grants, ApiError> {
        let grants = self.store.grants(sub).await?.unwrap_or_default();
        if let Some(ban) = grants.active_ban(now) {
            tracing::info!(sub = %sub, "token refused: the user is banned");
            return Err(ApiError::Banned { until: ban.until });
        }
        Ok(grants)
    }

    /// The grants a login's tokens carry, read after its commit: refused for a banned user,
    /// and for one whose sessions were all revoked while the login was in progress — a
    /// revocation of every session of the user ("log out everywhere") between this login's
    /// start (its `now`, the session's `created_at` and the tokens' `iat`) and its commit
    /// found no session to mark, yet covers this one: its access token would be refused at
    /// the edge and its refresh token live on (the client logs in again, after the
    /// revocation). A revocation after this read marks the session itself.
    async fn grants_after_login(&self, sub: &str, sid: &str, now: i64) -> Result<Grants, ApiError> {
        let grants = self.grants_for_token(sub, now).await?;
        let facts = self.store.revocation_facts("", sid, sub).await?;
        if rules::is_revoked(&facts, now) {
            tracing::info!(sub = %sub, sid = %sid, "login refused: the user's sessions were revoked while it was in progress");
            return Err(ApiError::InvalidGrant(
                "the user's sessions were ended while this login was in progress; log in again"
                    .into(),
            ));
        }
        Ok(grants)
    }

    /// `POST /v1/login`: code → WeChat → user → session → token pair, for the mini-program
    /// `appid` (or the only one configured). A failure writes nothing; a code already
    /// exchanged (or being exchanged) is `invalid_grant`.
    ///
    /// # Errors
    /// See DESIGN.md's WeChat mapping; an unknown appid or one that is not a mini-program is
    /// 400 `invalid_request`; store failures are 5xx.
    pub async fn login(
        &self,
        code: &str,
        appid: Option<&str>,
        client_ip: std::net::IpAddr,
        now: i64,
    ) -> Result<TokenResponse, ApiError> {
        if !valid_code(code) {
            return Err(ApiError::InvalidRequest(
                "`code` must be a non-empty wx.login code".into(),
            ));
        }
        let entry = self
            .config
            .apps
            .miniprogram(appid)
            .map_err(|err| ApiError::InvalidRequest(err.to_string()))?;
        let code_hash = secrets::sha256_hex(code.as_bytes());
        let _guard = {
            let mut set = self
                .inflight_codes
                .lock()
                .map_err(|_| ApiError::Internal("in-flight set poisoned".into()))?;
            if !set.insert(code_hash.clone()) {
                return Err(ApiError::InvalidGrant(
                    "this login code is already being exchanged".into(),
                ));
            }
            InflightGuard {
                set: &self.inflight_codes,
                hash: code_hash.clone(),
            }
        };
        if self.store.code_used(&code_hash).await? {
            return Err(ApiError::InvalidGrant(
                "this login code has already been used".into(),
            ));
        }
        let credential = match entry.kind {
            crate::config::apps::AppKind::Plugin => Credential::Plugin { app: entry, code },
            _ => Credential::MiniProgram { app: entry, code },
        };
        let identity = self.identity.identify(credential).await?;
        let rank = match entry.risk {
            Some(risk) => {
                self.judge_risk(entry, &identity.openid, risk, client_ip)
                    .await?
            }
            None => None,
        };
        let (tokens, subject) = self.establish(identity, code_hash, now).await?;
        if let Some(rank) = rank {
            // An observation for admins, kept after the login (the user may be new until
            // then); the login stands if it cannot be kept.
            let fact = crate::store::RiskFact {
                appid: entry.appid.clone(),
                rank,
                at: now,
            };
            if let Err(err) = self.store.set_risk(&subject.sub, &fact).await {
                tracing::warn!(error = %err, appid = %entry.appid, "the user's risk rank was not kept");
            }
        }
        Ok(tokens)
    }

    /// WeChat's risk control at login, before anything is written: asks `getuserriskrank`
    /// for the user's rank and refuses a rank above the app's `max_rank` (403 `user_risky`);
    /// when WeChat cannot answer, the app's `on_error` decides — also when it has not answered
    /// within `WEAUTH_WECHAT_TIMEOUT` (one WeChat call's time, the app's access token included:
    /// waiting for another replica's fetch of it could take half a minute, the code already
    /// spent and the client given up, so that `allow` never let the login through). Counted in
    /// `weauth_login_risk_total{appid,outcome,rank}`; logged with a short hash of the openid
    /// only. Returns the rank of an admitted user (`None` when WeChat did not answer and
    /// `on_error` let the login through).
    ///
    /// # Errors
    /// `user_risky`, or WeChat's failure when `on_error` is `deny`.
    async fn judge_risk(
        &self,
        entry: &crate::config::apps::App,
        openid: &str,
        risk: crate::config::apps::Risk,
        client_ip: std::net::IpAddr,
    ) -> Result<Option<u8>, ApiError> {
        let wechat = self.identity.wechat.for_appid(&entry.appid)?;
        let query = crate::wechat::RiskQuery {
            appid: &entry.appid,
            openid,
            scene: risk.scene,
            client_ip,
        };
        let asked = tokio::time::timeout(
            self.config.wechat_timeout,
            self.identity
                .access_tokens
                .call_for(&entry.appid, |token| async move {
                    wechat.user_risk_rank(&token, query).await
                }),
        )
        .await
        .unwrap_or(Err(crate::wechat::access_token::CallError::Api(
            crate::wechat::WechatError::Timeout,
        )));
        let user = crate::short_hash(openid);
        match asked {
            Ok(rank) if risk.admits(rank) => {
                self.metrics
                    .login_risk(&entry.appid, "admitted", Some(rank));
                Ok(Some(rank))
            }
            Ok(rank) => {
                self.metrics.login_risk(&entry.appid, "refused", Some(rank));
                tracing::info!(appid = %entry.appid, user = %user, rank, max_rank = risk.max_rank, "login refused by risk control");
                Err(ApiError::UserRisky { rank })
            }
            Err(err) => {
                let err = ApiError::from(err);
                match risk.on_error {
                    crate::config::apps::RiskOnError::Allow => {
                        self.metrics.login_risk(&entry.appid, "error_allowed", None);
                        tracing::warn!(appid = %entry.appid, user = %user, error = %err, "risk control unavailable; login allowed (on_error: allow)");
                        Ok(None)
                    }
                    crate::config::apps::RiskOnError::Deny => {
                        self.metrics.login_risk(&entry.appid, "error_denied", None);
                        tracing::warn!(appid = %entry.appid, user = %user, error = %err, "risk control unavailable; login refused (on_error: deny)");
                        Err(err)
                    }
                }
            }
        }
    }

    /// The one path after every login method: links the user (inside the store's atomic
    /// login, with [`crate::domain::rules::link_user`]), creates the session (sealing the
    /// session_key when the method gave one) and its first refresh token, and mints the pair.
    /// `code_hash` makes the credential single-use. Returns the pair and the subject it was
    /// minted for.
    ///
    /// # Errors
    /// `invalid_grant` when a session was already made from this credential; 5xx on store or
    /// sealing failure.
    pub async fn establish(
        &self,
        identity: ExternalIdentity,
        code_hash: String,
        now: i64,
    ) -> Result<(TokenResponse, Subject), ApiError> {
        let sid = secrets::random_id("s_");
        let sealed = match &identity.session_key {
            Some(key) => Some(
                self.data_key
                    .seal(key.as_bytes(), &format!("session_key:{sid}"))
                    .map_err(|err| ApiError::Internal(err.to_string()))?,
            ),
            None => None,
        };
        let (refresh_token, refresh_hash) = tokens::new_refresh_token(tokens::family_of_sid(&sid));
        let session_expires = now.saturating_add(crate::config::secs(self.config.session_max));
        let refresh_expires = now
            .saturating_add(crate::config::secs(self.config.refresh_ttl))
            .min(session_expires);
        let record = NewLogin {
            appid: identity.appid.clone(),
            openid: identity.openid.clone(),
            unionid: identity.unionid.clone(),
            code_hash,
            new_sub: secrets::random_id("u_"),
            sid: sid.clone(),
            session_key_sealed: sealed,
            now,
            session_expires,
            refresh_hash,
            refresh_expires,
        };
        let (sub, unionid) = match self.store.login(&record).await? {
            LoginResult::Created {
                sub,
                new_user,
                unionid,
            } => {
                tracing::info!(sub = %sub, sid = %sid, appid = %identity.appid, openid = %crate::short_hash(&identity.openid), new_user, web = identity.session_key.is_none(), "login");
                (sub, unionid)
            }
            LoginResult::CodeAlreadyUsed => {
                return Err(ApiError::InvalidGrant(
                    "this login code has already been used".into(),
                ));
            }
        };
        // Only now is the user known (linking happens inside the store's login). A login
        // refused from here on — the user banned, a "log out everywhere" that came meanwhile,
        // signing failing — has spent its code and made a session, whose tokens never leave
        // the issuer: the session is discarded, so that a failed login leaves none. Should the
        // store fail (a 503 here, or the discard), the session can never be used — its refresh
        // token is dropped here unseen — and expires.
        let subject = Subject {
            sub,
            sid,
            openid: identity.openid,
            unionid,
            appid: identity.appid,
        };
        let issued = match self
            .grants_after_login(&subject.sub, &subject.sid, now)
            .await
        {
            Ok(grants) => self.issue(&subject, &grants, refresh_token, refresh_expires, now),
            Err(err) => Err(err),
        };
        let tokens = match issued {
            Ok(tokens) => tokens,
            Err(err) => {
                // Not when the store itself failed: the discard would only wait for it again
                // before the answer (the session expires unused).
                if !matches!(err, ApiError::StoreUnavailable { .. }) {
                    if let Err(discard) = self.store.discard_session(&subject.sid).await {
                        tracing::warn!(sid = %subject.sid, error = %discard, "a refused login's session could not be discarded: it expires unused");
                    }
                }
                return Err(err);
            }
        };
        Ok((tokens, subject))
    }

    /// `POST /v1/token/refresh`: single-use rotation; a second use within
    /// `WEAUTH_REFRESH_REUSE_GRACE` gets the first use's refresh token again (with an access
    /// token of its own), a later one revokes the session.
    ///
    /// # Errors
    /// `invalid_grant` for unknown, expired, used or revoked tokens; 5xx on store failure.
    pub async fn refresh(&self, presented: &str, now: i64) -> Result<TokenResponse, ApiError> {
        let mut outcome = None;
        let result = self.rotate(presented, now, &mut outcome).await;
        // Every outcome counted once, a store failure's too (it is the rise an outage shows).
        self.metrics.refresh(match (&result, outcome) {
            (Err(_), Some("reuse")) => "reuse",
            (Err(err), _) => err.code(),
            (Ok(_), Some(outcome)) => outcome,
            (Ok(_), None) => "ok",
        });
        result
    }

    /// [`Self::refresh`] but the count; `outcome` is set where the answer's code does not say
    /// it (`grace`, `reuse`).
    async fn rotate(
        &self,
        presented: &str,
        now: i64,
        outcome: &mut Option<&'static str>,
    ) -> Result<TokenResponse, ApiError> {
        if !tokens::refresh_token_well_formed(presented) {
            return Err(ApiError::InvalidGrant("unknown refresh token".into()));
        }
        let presented_hash = tokens::refresh_hash(presented);
        // A banned user's refresh is refused before anything is consumed. A ban set after
        // this read is still safe: the ban's `sub` revocation covers a token issued now.
        let family = tokens::family_of_refresh(presented).to_string();
        let owner = self.store.refresh_owner(&family, &presented_hash).await?;
        let grants = match &owner {
            Some(sub) => self.grants_for_token(sub, now).await?,
            None => Grants::default(),
        };
        // The presented token's one successor: a retry or a second use within the grace gets
        // the token the first use got (`tokens::successor_refresh_token`).
        let (refresh_token, new_hash) = tokens::successor_refresh_token(&self.data_key, presented);
        let cached_ttl = self.longest_ttl.load(Ordering::Acquire);
        let rotate = Rotate {
            family,
            presented_hash,
            new_hash,
            now,
            refresh_ttl: crate::config::secs(self.config.refresh_ttl),
            reuse_grace: crate::config::secs(self.config.refresh_reuse_grace),
            // As last read (at most one report period old): a refresh should not wait for a
            // store call that only its rare reuse outcome needs (which reads it fresh, below).
            revocation_until: revocation::until(now, cached_ttl, self.policy.leeway),
        };
        match self.store.rotate_refresh(&rotate).await? {
            RotateResult::Rotated {
                session,
                refresh_expires,
                repeat,
            } => {
                let grants = if owner.as_deref() == Some(session.sub.as_str()) {
                    grants
                } else {
                    self.grants_for_token(&session.sub, now).await?
                };
                // A second use within the reuse grace (a retry after a lost answer, a second
                // tab) got the first use's successor again: counted apart from first uses.
                if repeat {
                    *outcome = Some("grace");
                }
                self.issue(
                    &subject_of(&session),
                    &grants,
                    refresh_token,
                    refresh_expires,
                    now,
                )
            }
            RotateResult::Reused { sid, entry } => {
                *outcome = Some("reuse");
                self.metrics.revocation("sid");
                self.known_seq.advance(entry.seq);
                tracing::warn!(sid = %sid, seq = entry.seq, "refresh token reuse: session revoked");
                // The entry is kept for the lifetime as last read; a longer one reported since
                // (a replica started within the last report period) gets the session revoked
                // again, for that one. The session stays revoked whatever happens here.
                match revocation::read_lifetime(self.store.as_ref(), self.policy.access_ttl, now)
                    .await
                {
                    Ok(fresh) if fresh > cached_ttl => {
                        if let Err(err) = self.revoke(Revoke::Sid(sid), now).await {
                            tracing::warn!(error = %err, "the reuse revocation could not be lengthened for a longer access-token lifetime");
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "lifetime reports unreadable after a refresh-token reuse");
                    }
                }
                Err(ApiError::InvalidGrant(
                    "the refresh token was already used; the session has been revoked".into(),
                ))
            }
            RotateResult::Invalid(reason) => Err(ApiError::InvalidGrant(reason.into())),
        }
    }

    /// The bearer check of the issuer's own protected routes: signature and claims against
    /// the published keys, then revocation against the store.
    ///
    /// # Errors
    /// `invalid_token` (401) for anything wrong.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        now: i64,
    ) -> Result<Claims, ApiError> {
        let Some(token) = tokens::bearer(authorization) else {
            self.metrics.bearer_rejected("missing");
            return Err(ApiError::MissingToken(
                "a bearer access token is required".into(),
            ));
        };
        let ring = self.keys.current();
        let claims = tokens::check(token, &ring.verify, &self.policy, now).map_err(|err| {
            self.metrics.bearer_rejected(err.reason());
            ApiError::InvalidToken(err.to_string())
        })?;
        let facts = self
            .store
            .revocation_facts(&claims.jti, &claims.sid, &claims.sub)
            .await?;
        if rules::is_revoked(&facts, claims.iat) {
            self.metrics.bearer_rejected("revoked");
            return Err(ApiError::InvalidToken("the token has been revoked".into()));
        }
        Ok(claims)
    }

    /// Reports the access-token lifetime this replica issues as of `now` to the store, and
    /// keeps (and returns) the longest one a token still verifying may have
    /// ([`revocation::longest_lifetime`]). Run before this replica issues its first token and
    /// every [`revocation::TTL_REPORT_EVERY`] after.
    ///
    /// # Errors
    /// Store failures.
    pub async fn report_access_ttl(&self, now: i64) -> Result<i64, StoreError> {
        let longest =
            revocation::report_lifetime(self.store.as_ref(), self.policy.access_ttl, now).await?;
        self.longest_ttl.store(longest, Ordering::Release);
        Ok(longest)
    }

    /// Records a revocation, counts it and wakes the feed's long polls.
    ///
    /// # Errors
    /// Store failures.
    pub async fn revoke(&self, revoke: Revoke, now: i64) -> Result<Entry, ApiError> {
        // Read fresh (a revocation is rare; a read, no write): a replica of a longer lifetime
        // that started since this one last read the reports counts at once.
        let ttl =
            revocation::read_lifetime(self.store.as_ref(), self.policy.access_ttl, now).await?;
        let leeway = self.policy.leeway;
        let until = match &revoke {
            Revoke::Sub { issued_before, .. } => {
                revocation::until_for_sub(*issued_before, ttl, leeway)
            }
            _ => revocation::until(now, ttl, leeway),
        };
        let entry = self.store.revoke(&revoke, now, until).await?;
        let kind = entry.kind.name();
        self.metrics.revocation(kind);
        self.known_seq.advance(entry.seq);
        tracing::info!(kind, value = %entry.value, seq = entry.seq, "revoked");
        Ok(entry)
    }

    /// Reads the caller's profile.
    ///
    /// # Errors
    /// `invalid_token` when the session or user is gone; store failures.
    pub async fn profile(&self, claims: &Claims) -> Result<Profile, ApiError> {
        let session = self.store.session(&claims.sid).await?;
        let user = self.store.user(&claims.sub).await?;
        let (Some(session), Some(user)) = (session, user) else {
            return Err(ApiError::InvalidToken(
                "the token's session no longer exists".into(),
            ));
        };
        let phone = match &user.phone {
            Some(sealed) => Some(
                userdata::open_phone(&self.data_key, &user.sub, sealed)?
                    .phone
                    .phone_number,
            ),
            None => None,
        };
        let plugin = self
            .config
            .apps
            .get(&session.appid)
            .is_some_and(|entry| entry.kind == crate::config::apps::AppKind::Plugin);
        let (openid, openpid) = if plugin {
            (None, Some(session.openid))
        } else {
            (Some(session.openid), None)
        };
        Ok(Profile {
            sub: user.sub,
            openid,
            openpid,
            unionid: user.unionid.or(session.unionid),
            appid: session.appid,
            phone,
            created_at: user.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_code_shape() {
        assert!(valid_code("081abcDEF"));
        assert!(!valid_code(""));
        assert!(!valid_code("has space"));
        assert!(!valid_code(&"a".repeat(257)));
    }

    #[test]
    fn token_response_debug_carries_no_token() {
        let response = TokenResponse {
            access_token: "eyJ.access.sig".into(),
            token_type: "Bearer",
            expires_in: 900,
            refresh_token: "rt_secret".into(),
            refresh_expires_in: 86400,
        };
        let shown = format!("{response:?}");
        assert!(
            !shown.contains("eyJ") && !shown.contains("rt_secret"),
            "{shown}"
        );
        assert!(shown.contains("expires_in: 900"), "{shown}");
    }
}
