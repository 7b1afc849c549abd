//! The WeChat app access token (`cgi-bin/stable_token`), shared by every issuer replica
//! through the store, so that no replica ever invalidates another's token.
//!
//! Decisions (for `docs/API.md`):
//! - The token lives in the store (`wechat_tokens`, sealed with the data key like the
//!   session_key), not in process memory: every replica on the same store uses the same one.
//! - It is refreshed ahead of expiry: from `refresh_at` = fetch time + `max(expires_in −
//!   REFRESH_MARGIN, expires_in / 2)` (with WeChat's 7200 s that is 5 minutes before expiry).
//!   Only the holder of a lease in the store ([`Store::lease_wechat_token`], held for
//!   [`lease_secs`], released when the new token is written or the fetch fails) calls WeChat
//!   — in the background while the current token is still valid, the request that took the
//!   lease answered with it at once; the others keep using the current token while it is
//!   still valid, or wait for the holder's answer when there is none (up to the lease length
//!   plus 2 s, then 503); of the requests of one replica waiting so, one polls the store at a
//!   time. The holder's fetch runs on a task of its own, to its end even when the request
//!   that took the lease goes away.
//! - A fetch asks `stable_token` WITHOUT `force_refresh`, which hands every caller the same
//!   token. Only when WeChat refused a token (40001, 42001, 40014) and `stable_token` still
//!   returns that very token is `force_refresh` used — at most once per [`FORCE_INTERVAL`] per
//!   app in a replica (WeChat allows 20 a day, and a second one within 30 s does not refresh),
//!   and a forced answer that is still the refused token is an error, never stored. Past it the
//!   call fails (502) rather than spending the day's forced refreshes on a token WeChat keeps
//!   refusing.
//! - When WeChat answers 40001/42001/40014 to an API call, the cached token is invalidated
//!   (only if it is still the refused one: a newer one written by another replica stays), a
//!   token is obtained again and the call is retried once ([`AccessTokens::call_for`]).
//! - The forced refreshes are counted in the store, across replicas: forcing takes a lease on
//!   the app's forcing key ([`force_key`]) for [`FORCE_INTERVAL`], never released (K replicas
//!   facing a token WeChat keeps refusing spent K of the day's 20 per interval when each
//!   counted its own). A store that cannot be asked means no force.
//! - A fetched token is written only while its fetcher still holds the lease
//!   ([`Store::put_wechat_token`]): a fetcher whose lease lapsed and was taken answers its
//!   own request with the token but does not write over the new holder's.
//! - WeChat's token endpoint down: if the cached token is still valid it keeps being used (and
//!   the failure is counted and logged; the refresh is asked again once its hold is over:
//!   [`FAILURE_HOLD`], or [`RATE_LIMIT_HOLD`] for the rate limit); otherwise the request fails
//!   with 503 `temporarily_unavailable` (502 `upstream_error` when WeChat refuses the appid/secret); a
//!   busy, slow or unreachable WeChat fails the replica's requests for the next
//!   [`FAILURE_HOLD`] seconds too, at once, without asking again (each waited for a fetch of
//!   its own in turn, up to the lease), and WeChat's rate limit (45011) for
//!   [`RATE_LIMIT_HOLD`] seconds (asking again each time kept the limit reached); the client is
//!   told when the hold ends (`Retry-After`).
//!
//! [`plan`] is the pure decision; the rest is glue. The token is never logged.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::secrets::{self, DataKey, SecretError};
use crate::store::{CachedToken, Store, StoreError};
use crate::telemetry::metrics::Metrics;
use crate::wechat::clients::WechatClients;
use crate::wechat::WechatError;

/// Refresh when fewer than this many seconds are left (5 minutes).
pub const REFRESH_MARGIN: i64 = 300;
/// A cached token is not used in its last seconds (clock skew, request time).
pub const EXPIRY_SAFETY: i64 = 30;
/// How often a replica waiting for another's refresh re-reads the store.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// The least time between two forced `stable_token` refreshes of one app, across the
/// replicas on one store.
pub const FORCE_INTERVAL: i64 = 300;
/// How long a replica answers with its last failure to get a token — WeChat busy, slow or
/// unreachable ([`WechatError::is_retryable`]), and no token usable — before it asks WeChat
/// again ([`AccessTokens::get_for`]). A refusal (an IP not allowed, the quota spent) comes
/// back at once: it is asked again each time; the rate limit is held for [`RATE_LIMIT_HOLD`].
/// A failed refresh of a token still valid is held too, a refusal included
/// ([`AccessTokens::hold_refresh`]).
pub const FAILURE_HOLD: i64 = 5;
/// How long a replica answers WeChat's rate limit on `stable_token` (45011, "retry next
/// minute") before asking again.
pub const RATE_LIMIT_HOLD: i64 = 60;

/// How long a failure to get a token is answered without asking WeChat again, if at all.
fn hold_of(err: &WechatError) -> Option<i64> {
    match err {
        WechatError::RateLimited => Some(RATE_LIMIT_HOLD),
        err if err.is_retryable() => Some(FAILURE_HOLD),
        _ => None,
    }
}

/// The store key of `appid`'s forced-refresh budget: a lease on it, taken for
/// [`FORCE_INTERVAL`] and never released, allows one forced refresh per interval across every
/// replica on the store. `#` is in no appid.
pub fn force_key(appid: &str) -> String {
    format!("{appid}#force")
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot get a WeChat access token: {0}")]
    Fetch(WechatError),
    /// A failure this replica met less than its hold ago ([`FAILURE_HOLD`],
    /// [`RATE_LIMIT_HOLD`]), answered again without asking WeChat: `retry_after` seconds are
    /// left of the hold.
    #[error("cannot get a WeChat access token (answered again for {retry_after} s): {cause}")]
    Held {
        cause: WechatError,
        retry_after: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the cached WeChat access token cannot be unsealed or sealed: {0}")]
    Seal(#[from] SecretError),
    #[error("another replica is fetching the WeChat access token and has not finished")]
    LeaseTimeout,
}

/// Why a WeChat API call with the access token failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The API call itself failed (after the one retry with a new token, if any).
    #[error(transparent)]
    Api(WechatError),
}

/// What to do with the cached token at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Use it.
    Use,
    /// Still usable, but due for refresh: try the lease; if another replica holds it, use it.
    Refresh,
    /// None usable (missing, expired, or the one WeChat just refused): fetch or wait.
    Fetch,
}

/// Decides about `cached` at `now`. `refused_hash` is the hash of a token WeChat just refused.
pub fn plan(cached: Option<&CachedToken>, now: i64, refused_hash: Option<&str>) -> Plan {
    match cached {
        Some(token)
            if token.expires_at - EXPIRY_SAFETY > now
                && refused_hash != Some(token.hash.as_str()) =>
        {
            if token.refresh_at > now {
                Plan::Use
            } else {
                Plan::Refresh
            }
        }
        _ => Plan::Fetch,
    }
}

/// When to refresh a token fetched at `now` that WeChat says lives `expires_in` seconds.
pub fn refresh_at(now: i64, expires_in: i64) -> i64 {
    now + (expires_in - REFRESH_MARGIN).max(expires_in / 2)
}

/// The lease length: long enough for a fetch — two `stable_token` calls (the second forced)
/// with all their retries.
pub fn lease_secs(timeout: Duration, retries: u32) -> i64 {
    let fetch = 2.0 * timeout.as_secs_f64() * f64::from(retries + 1) + 2.0;
    (fetch.ceil() as i64).max(10)
}

fn aad(appid: &str) -> String {
    format!("wechat_token:{appid}")
}

/// The app access tokens of every mini-program and plugin, shared through the store: what
/// [`AccessTokens::call_for`] needs, and nothing else.
pub struct AccessTokens {
    store: Arc<dyn Store>,
    data_key: DataKey,
    clients: Arc<WechatClients>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// Random per process: prefixes the names of this replica's lease holders.
    replica_id: String,
    /// [`lease_secs`] of the configured WeChat timeout and retries.
    lease: i64,
    /// This replica's last failure to get a token, per appid, and until when it is answered
    /// without asking WeChat again ([`hold_of`]).
    failed: std::sync::Mutex<std::collections::HashMap<String, (i64, WechatError)>>,
    /// Per appid, the turn to poll the store while another holder fetches the token: one
    /// waiter of this replica polls, the others queue for its turn ([`Self::get_for`]).
    /// Keyed by the configured appids only.
    turns: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AccessTokens {
    /// Tokens kept in `store` sealed with `data_key`, fetched through `clients`.
    pub fn new(
        store: Arc<dyn Store>,
        data_key: DataKey,
        clients: Arc<WechatClients>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        lease: i64,
    ) -> AccessTokens {
        AccessTokens {
            store,
            data_key,
            clients,
            metrics,
            clock,
            replica_id: secrets::random_id("r_"),
            lease,
            failed: std::sync::Mutex::default(),
            turns: std::sync::Mutex::default(),
        }
    }

    /// `appid`'s turn to poll the store for another holder's token.
    fn turn(&self, appid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self
            .turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(turns.entry(appid.to_string()).or_default())
    }

    /// The failure to get `appid`'s token this replica met less than its hold ago, as the
    /// answer to give again ([`TokenError::Held`]).
    fn recent_failure(&self, appid: &str, now: i64) -> Option<TokenError> {
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failed
            .get(appid)
            .filter(|(until, _)| now < *until)
            .map(|(until, err)| TokenError::Held {
                cause: err.clone(),
                retry_after: (until - now).unsigned_abs(),
            })
    }

    /// Notes a failed refresh of a token still valid: held as a failed fetch is, and at least
    /// [`FAILURE_HOLD`] — with a valid token in hand nothing waits for the refresh, and asking
    /// again at once, for each request of the refresh window (one at a time, the lease taken
    /// in turn), spent WeChat's `stable_token` calls, a daily quota, at the request rate for
    /// up to the window's 5 minutes. A request meeting the hold uses the token
    /// ([`Self::get_for`]).
    fn hold_refresh(&self, appid: &str, now: i64, err: &WechatError) {
        self.hold(appid, now + hold_of(err).unwrap_or(FAILURE_HOLD), err);
    }

    /// Answers `appid`'s requests needing a fetch with `err` until `until`.
    fn hold(&self, appid: &str, until: i64, err: &WechatError) {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(appid.to_string(), (until, err.clone()));
    }

    /// Notes the outcome of a fetch: a failure worth holding ([`hold_of`]) is held, a success
    /// ends any hold.
    fn note_fetch(&self, appid: &str, failure: Option<(i64, &WechatError)>) {
        match failure {
            Some((now, err)) => {
                if let Some(hold) = hold_of(err) {
                    self.hold(appid, now + hold, err);
                }
            }
            None => {
                self.failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(appid);
            }
        }
    }

    fn open(&self, appid: &str, token: &CachedToken) -> Result<Zeroizing<String>, TokenError> {
        let bytes = self.data_key.open(&token.sealed, &aad(appid))?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| TokenError::Seal(SecretError::Open))
    }

    /// The current app access token of mini-program `appid`, fetching it when needed (see
    /// the module docs): the token, its cache and its lease are keyed by appid, so apps never
    /// overwrite each other's token. `refused`: a token WeChat just refused, which must not
    /// be returned again.
    ///
    /// With none usable, a failure to get one that this replica met less than
    /// [`FAILURE_HOLD`] ago is answered at once: while WeChat's token endpoint is down or slow,
    /// each request needing the token waited for a fetch of its own in turn (a whole round of
    /// retries each, up to the lease), and the waiters polled the store meanwhile.
    ///
    /// # Errors
    /// [`TokenError`].
    pub async fn get_for(
        self: &Arc<Self>,
        appid: &str,
        refused: Option<&str>,
    ) -> Result<Zeroizing<String>, TokenError> {
        let refused_hash = refused.map(|t| secrets::sha256_hex(t.as_bytes()));
        let deadline = Instant::now() + Duration::from_secs(self.lease.unsigned_abs() + 2);
        // One holder name per attempt, not per process: concurrent requests of one replica
        // must not share the lease either.
        let holder = format!("{}.{}", self.replica_id, secrets::random_b64(6));
        // Held while this request polls for another holder's token (below).
        let mut turn = None;
        loop {
            let at = self.clock.now();
            let cached = self.store.wechat_token(appid).await?;
            let decision = plan(cached.as_ref(), at, refused_hash.as_deref());
            if decision == Plan::Use {
                if let Some(token) = &cached {
                    return self.open(appid, token);
                }
            }
            if let Some(held) = self.recent_failure(appid, at) {
                match (decision, &cached) {
                    (Plan::Fetch, _) => return Err(held),
                    // Refreshed again once the hold is over.
                    (Plan::Refresh, Some(token)) => return self.open(appid, token),
                    _ => {}
                }
            }
            let leased = match self
                .store
                .lease_wechat_token(appid, &holder, at, at + self.lease)
                .await
            {
                Ok(leased) => leased,
                Err(err) => {
                    // The lease may be written all the same (an answer lost, a write not
                    // confirmed): left, every request of every replica would wait for a token
                    // nobody fetches until it lapsed (a lease length, about half a minute).
                    self.release(appid, &holder).await;
                    return Err(err.into());
                }
            };
            if leased {
                // A fetch that failed between our check above and this lease (its failure
                // noted, its lease released): answered with it, not asked again.
                if decision == Plan::Fetch {
                    if let Some(held) = self.recent_failure(appid, self.clock.now()) {
                        self.release(appid, &holder).await;
                        return Err(held);
                    }
                }
                if decision == Plan::Refresh {
                    if let Some(token) = &cached {
                        // Still good: refreshed in the background, this request answered now
                        // (a WeChat slow to answer held it for a whole round of retries).
                        self.refresh_in_background(appid, holder, refused, cached.clone());
                        return self.open(appid, token);
                    }
                }
                // On a task of its own: this request may go away meanwhile (its client gave
                // up, Envoy's route timeout) — dropped with it, the fetch left the lease held
                // to its end (about half a minute, every request of every replica waiting for
                // it), WeChat's answer lost and no failure noted.
                return match self.spawn_fetch(appid, holder, refused, cached).await {
                    Ok(result) => result,
                    Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                    // The runtime shutting down.
                    Err(_) => Err(TokenError::LeaseTimeout),
                };
            }
            if decision == Plan::Refresh {
                if let Some(token) = &cached {
                    return self.open(appid, token);
                }
            }
            if Instant::now() > deadline {
                return Err(TokenError::LeaseTimeout);
            }
            // Waiting for another holder's token: one waiter of this replica polls the store,
            // the others queue for its turn and read the store once it has gone. Each waiter
            // read the store and tried the lease every poll: at a login peak while WeChat was
            // slow to answer a first fetch, thousands of store operations a second per replica.
            if turn.is_none() {
                let queue = self.turn(appid);
                match Arc::clone(&queue).try_lock_owned() {
                    Ok(mine) => turn = Some(mine),
                    Err(_) => {
                        let mine = tokio::time::timeout_at(deadline, queue.lock_owned())
                            .await
                            .map_err(|_| TokenError::LeaseTimeout)?;
                        turn = Some(mine);
                        // The waiter before has gone: the token is likely there now.
                        continue;
                    }
                }
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// [`Self::fetch_as_holder`] on a task of its own, which runs to its end whether or not
    /// the request that took the lease is still there. Not awaited at shutdown: a fetch cut
    /// short leaves the lease to expire (one lease length).
    fn spawn_fetch(
        self: &Arc<Self>,
        appid: &str,
        holder: String,
        refused: Option<&str>,
        cached: Option<CachedToken>,
    ) -> tokio::task::JoinHandle<Result<Zeroizing<String>, TokenError>> {
        let this = Arc::clone(self);
        let appid = appid.to_string();
        let refused = refused.map(|r| Zeroizing::new(r.to_string()));
        tokio::spawn(async move {
            let refused = refused.as_ref().map(|r| r.as_str());
            let refused_hash = refused.map(|t| secrets::sha256_hex(t.as_bytes()));
            this.fetch_as_holder(&appid, &holder, refused, refused_hash.as_deref(), cached)
                .await
        })
    }

    /// [`Self::spawn_fetch`] for a token due for refresh but still valid, not awaited.
    /// WeChat's answer is counted and logged there (a failure keeps the current token); a
    /// store or sealing failure is logged here, and the lease released.
    fn refresh_in_background(
        self: &Arc<Self>,
        appid: &str,
        holder: String,
        refused: Option<&str>,
        cached: Option<CachedToken>,
    ) {
        let fetch = self.spawn_fetch(appid, holder, refused, cached);
        let appid = appid.to_string();
        tokio::spawn(async move {
            if let Ok(Err(err)) = fetch.await {
                tracing::warn!(appid = %appid, error = %err, "the background refresh of the WeChat access token failed; the current token stays in use");
            }
        });
    }

    /// [`Self::fetch_holding`], the lease released when it fails: a store or sealing failure
    /// left it held by a request that had given up (every request of every replica then waited
    /// for a token nobody fetched, a lease length). Releasing is holder-guarded: a lease the
    /// token's write already released, or another holder took, is left as it is.
    async fn fetch_as_holder(
        &self,
        appid: &str,
        holder: &str,
        refused: Option<&str>,
        refused_hash: Option<&str>,
        cached: Option<CachedToken>,
    ) -> Result<Zeroizing<String>, TokenError> {
        let result = self
            .fetch_holding(appid, holder, refused, refused_hash, cached)
            .await;
        if result.is_err() {
            self.release(appid, holder).await;
        }
        result
    }

    async fn fetch_holding(
        &self,
        appid: &str,
        holder: &str,
        refused: Option<&str>,
        refused_hash: Option<&str>,
        cached: Option<CachedToken>,
    ) -> Result<Zeroizing<String>, TokenError> {
        // Another replica may have written a fresh token between our read and the lease.
        let latest = self.store.wechat_token(appid).await?;
        if plan(latest.as_ref(), self.clock.now(), refused_hash) == Plan::Use {
            if let Some(token) = &latest {
                self.release(appid, holder).await;
                return self.open(appid, token);
            }
        }
        match self.fetch(appid, holder, refused).await {
            Ok(token) => {
                let at = self.clock.now();
                let record = CachedToken {
                    sealed: self
                        .data_key
                        .seal(token.token.as_bytes(), &aad(appid))
                        .map_err(TokenError::Seal)?,
                    hash: secrets::sha256_hex(token.token.as_bytes()),
                    expires_at: at + token.expires_in,
                    refresh_at: refresh_at(at, token.expires_in),
                };
                if !self.store.put_wechat_token(appid, &record, holder).await? {
                    tracing::info!(appid = %appid, "the WeChat access token lease lapsed and another replica took it; the token fetched here answers this request but is not stored");
                }
                self.note_fetch(appid, None);
                self.metrics.wechat_token_refresh(appid, "ok");
                tracing::info!(
                    appid = %appid,
                    expires_in = token.expires_in,
                    "fetched the WeChat app access token"
                );
                Ok(token.token)
            }
            Err(err) => {
                // Still valid (just due for refresh)? Keep serving with it. Else the failure is
                // noted before the lease goes, so that no waiter takes it to ask again.
                let now = self.clock.now();
                let usable = cached.filter(|c| plan(Some(c), now, refused_hash) != Plan::Fetch);
                if usable.is_none() {
                    self.note_fetch(appid, Some((now, &err)));
                }
                if let Some(token) = usable {
                    // Not asked again for a while either ([`Self::hold_refresh`]), the lease
                    // released after.
                    self.hold_refresh(appid, now, &err);
                    self.release(appid, holder).await;
                    self.metrics.wechat_token_refresh(appid, "failed_kept_old");
                    tracing::warn!(appid = %appid, error = %err, "WeChat access token refresh failed; the current token is still valid and stays in use");
                    return self.open(appid, &token);
                }
                self.metrics.wechat_token_refresh(appid, "failed");
                tracing::warn!(appid = %appid, error = %err, "cannot get a WeChat access token");
                // The lease goes in `fetch_as_holder`, after the failure was noted here.
                Err(TokenError::Fetch(err))
            }
        }
    }

    async fn release(&self, appid: &str, holder: &str) {
        if let Err(err) = self.store.release_wechat_lease(appid, holder).await {
            tracing::warn!(error = %err, "could not release the WeChat token lease; it expires by itself");
        }
    }

    async fn fetch(
        &self,
        appid: &str,
        holder: &str,
        refused: Option<&str>,
    ) -> Result<crate::wechat::AccessToken, WechatError> {
        let wechat = self.clients.for_token(appid);
        let token = wechat.stable_token(false).await?;
        let Some(refused) = refused.filter(|r| *r == token.token.as_str()) else {
            return Ok(token);
        };
        // Taken before asking, so a force that timed out (it may have counted at WeChat)
        // counts here too.
        let now = self.clock.now();
        let allowed = self
            .store
            .lease_wechat_token(&force_key(appid), holder, now, now + FORCE_INTERVAL)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(appid = %appid, error = %err, "cannot ask the store whether a forced refresh of the WeChat access token is allowed; not forcing");
                false
            });
        if !allowed {
            self.metrics.wechat_token_refresh(appid, "force_withheld");
            tracing::warn!(appid = %appid, interval_s = FORCE_INTERVAL, "stable_token returned the token WeChat refused again; a refresh was forced less than the interval ago (by this or another replica), not forcing another");
            return Err(WechatError::InvalidAccessToken {
                errcode: 40001,
                after_lost: None,
            });
        }
        self.metrics.wechat_token_refresh(appid, "forced");
        tracing::warn!(
            appid = %appid,
            "stable_token returned the token WeChat just refused; forcing a new one"
        );
        let forced = wechat.stable_token(true).await?;
        if forced.token.as_str() == refused {
            tracing::warn!(appid = %appid, "a forced stable_token refresh returned the refused token");
            return Err(WechatError::InvalidAccessToken {
                errcode: 40001,
                after_lost: None,
            });
        }
        Ok(forced)
    }

    /// Runs a WeChat API call with the app access token of mini-program `appid`; when WeChat
    /// refuses the token (40001, 42001, 40014), invalidates it, gets another and retries once.
    ///
    /// # Errors
    /// [`CallError::Token`] when no token could be had, [`CallError::Api`] when the call
    /// failed.
    pub async fn call_for<T, F, Fut>(self: &Arc<Self>, appid: &str, api: F) -> Result<T, CallError>
    where
        F: Fn(Zeroizing<String>) -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        let token = self.get_for(appid, None).await?;
        match api(token.clone()).await {
            Err(WechatError::InvalidAccessToken {
                errcode,
                after_lost,
            }) => {
                self.metrics.wechat_token_invalidated(errcode);
                tracing::warn!(
                    errcode,
                    "WeChat refused the cached access token; invalidating it and retrying once"
                );
                let hash = secrets::sha256_hex(token.as_bytes());
                self.store
                    .invalidate_wechat_token(appid, &hash)
                    .await
                    .map_err(TokenError::from)?;
                let fresh = self.get_for(appid, Some(token.as_str())).await?;
                match api(fresh).await {
                    // The code this call carries was spent by the first round's attempt
                    // whose answer was lost: that failure is the answer (a 502/503, "retry"),
                    // as within one round (`with_retry`), not 400 `invalid_grant`.
                    Err(refusal @ WechatError::InvalidCode { .. }) => {
                        Err(CallError::Api(match after_lost {
                            Some(first) => {
                                tracing::info!(appid, error = %first, refusal = %refusal, "the retry with a new access token found the code spent by an attempt whose answer was lost");
                                *first
                            }
                            None => refusal,
                        }))
                    }
                    other => other.map_err(CallError::Api),
                }
            }
            other => other.map_err(CallError::Api),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(hash: &str, expires_at: i64, refresh_at: i64) -> CachedToken {
        CachedToken {
            sealed: vec![],
            hash: hash.into(),
            expires_at,
            refresh_at,
        }
    }

    #[test]
    fn plan_none_cached_fetch() {
        assert_eq!(plan(None, 100, None), Plan::Fetch);
    }

    #[test]
    fn plan_fresh_token_use() {
        assert_eq!(plan(Some(&token("h", 7300, 7000)), 100, None), Plan::Use);
    }

    #[test]
    fn plan_due_but_valid_refresh() {
        assert_eq!(
            plan(Some(&token("h", 7300, 7000)), 7000, None),
            Plan::Refresh
        );
    }

    #[test]
    fn plan_inside_expiry_safety_fetch() {
        assert_eq!(
            plan(Some(&token("h", 7300, 7000)), 7300 - EXPIRY_SAFETY, None),
            Plan::Fetch
        );
    }

    #[test]
    fn plan_refused_token_fetch_other_token_use() {
        assert_eq!(
            plan(Some(&token("h", 7300, 7000)), 100, Some("h")),
            Plan::Fetch
        );
        assert_eq!(
            plan(Some(&token("h2", 7300, 7000)), 100, Some("h")),
            Plan::Use
        );
    }

    #[test]
    fn refresh_at_five_minutes_before_expiry_or_half_life() {
        assert_eq!(refresh_at(1000, 7200), 1000 + 6900);
        assert_eq!(refresh_at(1000, 200), 1000 + 100);
    }

    /// The WeChat double of these tests: `stable_token` hands out one token (7200 s), or
    /// `error`, counting the calls; `held`, each call says it is there (`at_wechat`) and waits
    /// to be let through (`release`). `code2session` refuses every code.
    #[derive(Default)]
    struct TokenDouble {
        error: Option<WechatError>,
        held: bool,
        at_wechat: tokio::sync::Notify,
        release: tokio::sync::Notify,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl crate::wechat::Wechat for TokenDouble {
        fn code2session<'a>(
            &'a self,
            _code: &'a str,
        ) -> crate::wechat::BoxFuture<'a, Result<crate::wechat::Code2Session, WechatError>>
        {
            Box::pin(async { Err(WechatError::InvalidCode { errcode: 40029 }) })
        }

        fn stable_token(
            &self,
            _force: bool,
        ) -> crate::wechat::BoxFuture<'_, Result<crate::wechat::AccessToken, WechatError>> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if self.held {
                    self.at_wechat.notify_one();
                    self.release.notified().await;
                }
                match &self.error {
                    Some(error) => Err(error.clone()),
                    None => Ok(crate::wechat::AccessToken {
                        token: Zeroizing::new("T1".into()),
                        expires_in: 7200,
                    }),
                }
            })
        }
    }

    /// Tokens of app `wx1` on a SQLite store in `dir` whose operations run through `faults`,
    /// fetched from a [`TokenDouble`] handing out its token; and the store itself.
    fn tokens_over(
        dir: &std::path::Path,
        faults: crate::store::traced::Faults,
    ) -> (Arc<AccessTokens>, Arc<dyn Store>) {
        tokens_from(dir, faults, Arc::new(TokenDouble::default()))
    }

    /// [`tokens_over`], fetched from `wechat`.
    fn tokens_from(
        dir: &std::path::Path,
        faults: crate::store::traced::Faults,
        wechat: Arc<dyn crate::wechat::Wechat>,
    ) -> (Arc<AccessTokens>, Arc<dyn Store>) {
        let sqlite: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::open(&dir.join("t.db")).unwrap());
        let store: Arc<dyn Store> =
            Arc::new(crate::store::traced::Wrapped(Arc::clone(&sqlite), faults));
        let vars = std::collections::HashMap::from([
            ("WEAUTH_WECHAT_APPID", "wx1"),
            ("WEAUTH_WECHAT_SECRET", "s"),
        ]);
        let config = crate::config::Config::from_source(&crate::config::Source {
            lookup: &|name| vars.get(name).map(|v| v.to_string()),
            read_file: &|path| Err(std::io::Error::other(path.to_string())),
        })
        .unwrap();
        let (metrics, clock) = (
            Arc::new(Metrics::default()),
            Arc::new(crate::clock::SystemClock) as Arc<dyn Clock>,
        );
        let clients = WechatClients::build(&config, Some(wechat), &metrics, &clock).unwrap();
        let tokens = AccessTokens::new(
            store,
            DataKey::from_bytes(&[7; 32]),
            Arc::new(clients),
            metrics,
            clock,
            30,
        );
        (Arc::new(tokens), sqlite)
    }

    /// A lease written whose answer was lost (a connection cut, a timeout after the commit),
    /// or a token fetched whose write failed, is released by the request that gave up: left,
    /// every request of every replica waited for a token nobody fetched until the lease lapsed
    /// (about half a minute).
    #[tokio::test]
    async fn a_lease_taken_by_a_request_that_failed_is_released() {
        for (op, lost) in [("lease_wechat_token", true), ("put_wechat_token", false)] {
            let dir = tempfile::tempdir().unwrap();
            let faults = crate::store::traced::Faults::default();
            if lost {
                faults.lose_answer_of(op);
            } else {
                faults.refuse(op);
            }
            let (tokens, store) = tokens_over(dir.path(), faults);
            let failed = tokens.get_for("wx1", None).await;
            assert!(
                matches!(failed, Err(TokenError::Store(_))),
                "{op}: {failed:?}"
            );
            assert!(
                lease_takeable(&store).await,
                "{op}: the lease is still held by the request that gave up"
            );
        }
    }

    /// A request holding the lease that goes away while its fetch is at WeChat (its client
    /// gave up, Envoy's route timeout) leaves the fetch to finish: the token is stored and the
    /// lease released. Dropped with the request, the fetch left the lease held to its end
    /// (about half a minute, every request of every replica waiting for it), and WeChat's
    /// answer was lost.
    #[tokio::test]
    async fn a_fetch_whose_request_went_away_stores_its_token_and_releases_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let wechat = Arc::new(TokenDouble {
            held: true,
            ..TokenDouble::default()
        });
        let (tokens, store) = tokens_from(
            dir.path(),
            crate::store::traced::Faults::default(),
            Arc::clone(&wechat) as Arc<dyn crate::wechat::Wechat>,
        );
        let request = tokio::spawn({
            let tokens = Arc::clone(&tokens);
            async move { tokens.get_for("wx1", None).await }
        });
        wechat.at_wechat.notified().await;
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        wechat.release.notify_one();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while store.wechat_token("wx1").await.unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the token fetched for the request that went away was not stored"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            lease_takeable(&store).await,
            "the lease is still held by the request that went away"
        );
    }

    /// Whether another replica could take `wx1`'s lease now (taken and released again).
    async fn lease_takeable(store: &Arc<dyn Store>) -> bool {
        let now = crate::clock::SystemClock.now();
        let taken = store
            .lease_wechat_token("wx1", "probe", now, now + 5)
            .await
            .unwrap();
        if taken {
            store.release_wechat_lease("wx1", "probe").await.unwrap();
        }
        taken
    }

    /// Waits until nobody holds `wx1`'s lease (a background refresh has ended).
    async fn lease_free(store: &Arc<dyn Store>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !lease_takeable(store).await {
            assert!(
                std::time::Instant::now() < deadline,
                "the lease is still held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A refresh of a token still valid that fails — WeChat busy, or refusing (an IP not
    /// allowed) — is not asked again by the next requests: they use the token until the hold
    /// is over. Each request of the refresh window took the lease in turn and asked WeChat
    /// again, spending `stable_token`'s daily quota at the request rate.
    #[tokio::test]
    async fn a_failed_refresh_of_a_valid_token_is_not_asked_again_at_once() {
        for error in [
            WechatError::Busy,
            WechatError::Misconfigured {
                errcode: 40164,
                errmsg: "invalid ip".into(),
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let wechat = Arc::new(TokenDouble {
                error: Some(error.clone()),
                ..TokenDouble::default()
            });
            let (tokens, store) = tokens_from(
                dir.path(),
                crate::store::traced::Faults::default(),
                Arc::clone(&wechat) as Arc<dyn crate::wechat::Wechat>,
            );
            let now = crate::clock::SystemClock.now();
            assert!(store
                .lease_wechat_token("wx1", "test", now, now + 30)
                .await
                .unwrap());
            let due = CachedToken {
                sealed: tokens.data_key.seal(b"T0", &aad("wx1")).unwrap(),
                hash: secrets::sha256_hex(b"T0"),
                expires_at: now + 200,
                refresh_at: now - 1,
            };
            assert!(store.put_wechat_token("wx1", &due, "test").await.unwrap());
            for _ in 0..3 {
                let token = tokens.get_for("wx1", None).await.unwrap();
                assert_eq!(token.as_str(), "T0", "{error}");
                lease_free(&store).await;
            }
            assert_eq!(
                wechat.calls.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "{error}"
            );
        }
    }

    #[test]
    fn lease_secs_covers_retries_with_floor() {
        // Two calls (the second forced) of three attempts of 3 s, and 2 s.
        assert_eq!(lease_secs(Duration::from_secs(3), 2), 20);
        assert_eq!(lease_secs(Duration::from_secs(1), 0), 10);
    }
}
