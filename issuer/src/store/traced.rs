//! A [`Store`] that runs every operation of the store it wraps through an [`Around`]: in
//! production [`Spans`], a `store` span (DEBUG, with `op`) per operation, so exported traces
//! (see [`crate::telemetry::otel`]) show each store call under its request — `App::build`
//! wraps the store in it ([`TracedStore`]) only when such spans are enabled (an OTLP endpoint
//! is set, or `WEAUTH_LOG` asks for debug): otherwise the store is used as is. In tests,
//! [`Faults`] makes an operation fail after it ran: a write applied whose answer was lost.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument as _;
use weauth_token::revocation::Entry;

use super::*;

/// One store operation's future, as the wrapped store's methods return it.
pub type Call<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What [`Wrapped`] does around each operation (`op`: the [`Store`] method's name).
pub trait Around: Send + Sync {
    fn around<'a, T: Send + 'a>(&'a self, op: &'static str, call: Call<'a, T>) -> Call<'a, T>;
}

/// The wrapped store, and what runs around its operations.
pub struct Wrapped<A: Around>(pub Arc<dyn Store>, pub A);

/// A `store` span per operation.
pub struct Spans;

impl Around for Spans {
    fn around<'a, T: Send + 'a>(&'a self, op: &'static str, call: Call<'a, T>) -> Call<'a, T> {
        Box::pin(call.instrument(tracing::debug_span!("store", op)))
    }
}

/// The store as `App::build` wraps it when store spans are recorded.
pub type TracedStore = Wrapped<Spans>;

/// Fails the next call of the operations named in it: after the wrapped store ran it (what a
/// caller sees of a write applied whose answer was lost — a connection cut, a timeout after
/// the commit), or without running it (a store that cannot be reached). Tests only.
#[cfg(test)]
#[derive(Default)]
pub struct Faults {
    lost: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    refused: std::sync::Mutex<std::collections::HashSet<&'static str>>,
}

#[cfg(test)]
impl Faults {
    /// Fails the next `op` after it ran.
    pub fn lose_answer_of(&self, op: &'static str) {
        self.lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(op);
    }

    /// Fails the next `op` without running it.
    pub fn refuse(&self, op: &'static str) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(op);
    }
}

#[cfg(test)]
impl Around for Faults {
    fn around<'a, T: Send + 'a>(&'a self, op: &'static str, call: Call<'a, T>) -> Call<'a, T> {
        let take = |set: &std::sync::Mutex<std::collections::HashSet<&'static str>>| {
            set.lock().unwrap_or_else(|e| e.into_inner()).remove(op)
        };
        let fault =
            move |what: &str| StoreError::Unavailable(format!("{op}: {what} (injected)").into());
        if take(&self.refused) {
            return Box::pin(async move { Err(fault("refused")) });
        }
        Box::pin(async move {
            let result = call.await;
            if take(&self.lost) {
                return Err(fault("its answer was lost"));
            }
            result
        })
    }
}

#[async_trait]
impl<A: Around> Store for Wrapped<A> {
    async fn ping(&self) -> Result<(), StoreError> {
        self.1.around("ping", self.0.ping()).await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.1.around("keys", self.0.keys()).await
    }

    async fn insert_key(
        &self,
        key: &KeyRecord,
        only_if_none_active_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.1
            .around("insert_key", self.0.insert_key(key, only_if_none_active_at))
            .await
    }

    async fn erase_keys(&self, kids: &[String]) -> Result<(), StoreError> {
        self.1.around("erase_keys", self.0.erase_keys(kids)).await
    }

    async fn code_used(&self, code_hash: &str) -> Result<bool, StoreError> {
        self.1
            .around("code_used", self.0.code_used(code_hash))
            .await
    }

    async fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError> {
        self.1.around("login", self.0.login(login)).await
    }

    async fn discard_session(&self, sid: &str) -> Result<(), StoreError> {
        self.1
            .around("discard_session", self.0.discard_session(sid))
            .await
    }

    async fn rotate_refresh(&self, rotate: &Rotate) -> Result<RotateResult, StoreError> {
        self.1
            .around("rotate_refresh", self.0.rotate_refresh(rotate))
            .await
    }

    async fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.1.around("session", self.0.session(sid)).await
    }

    async fn session_key_sealed(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.1
            .around("session_key_sealed", self.0.session_key_sealed(sid))
            .await
    }

    async fn user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        self.1.around("user", self.0.user(sub)).await
    }

    async fn set_phone(
        &self,
        sub: &str,
        sealed_phone: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.1
            .around("set_phone", self.0.set_phone(sub, sealed_phone, now))
            .await
    }

    async fn phones_page(&self, cursor: &str, limit: usize) -> Result<PhonesPage, StoreError> {
        self.1
            .around("phones_page", self.0.phones_page(cursor, limit))
            .await
    }

    async fn reseal_phone(
        &self,
        sub: &str,
        expected: &str,
        sealed: &str,
    ) -> Result<bool, StoreError> {
        self.1
            .around("reseal_phone", self.0.reseal_phone(sub, expected, sealed))
            .await
    }

    async fn set_risk(&self, sub: &str, fact: &RiskFact) -> Result<bool, StoreError> {
        self.1.around("set_risk", self.0.set_risk(sub, fact)).await
    }

    async fn wechat_token(&self, appid: &str) -> Result<Option<CachedToken>, StoreError> {
        self.1
            .around("wechat_token", self.0.wechat_token(appid))
            .await
    }

    async fn lease_wechat_token(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        self.1
            .around(
                "lease_wechat_token",
                self.0.lease_wechat_token(appid, holder, now, lease_until),
            )
            .await
    }

    async fn put_wechat_token(
        &self,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<bool, StoreError> {
        self.1
            .around(
                "put_wechat_token",
                self.0.put_wechat_token(appid, token, holder),
            )
            .await
    }

    async fn release_wechat_lease(&self, appid: &str, holder: &str) -> Result<(), StoreError> {
        self.1
            .around(
                "release_wechat_lease",
                self.0.release_wechat_lease(appid, holder),
            )
            .await
    }

    async fn invalidate_wechat_token(
        &self,
        appid: &str,
        token_hash: &str,
    ) -> Result<bool, StoreError> {
        self.1
            .around(
                "invalidate_wechat_token",
                self.0.invalidate_wechat_token(appid, token_hash),
            )
            .await
    }

    async fn revoke(&self, revoke: &Revoke, now: i64, until: i64) -> Result<Entry, StoreError> {
        self.1
            .around("revoke", self.0.revoke(revoke, now, until))
            .await
    }

    async fn revocation_facts(
        &self,
        jti: &str,
        sid: &str,
        sub: &str,
    ) -> Result<crate::domain::rules::RevocationFacts, StoreError> {
        self.1
            .around("revocation_facts", self.0.revocation_facts(jti, sid, sub))
            .await
    }

    async fn feed_snapshot(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> Result<FeedSnapshot, StoreError> {
        self.1
            .around("feed_snapshot", self.0.feed_snapshot(after, now, limit))
            .await
    }

    async fn current_seq(&self) -> Result<u64, StoreError> {
        self.1.around("current_seq", self.0.current_seq()).await
    }

    async fn report_access_ttl(
        &self,
        access_ttl: i64,
        now: i64,
        forget_before: i64,
    ) -> Result<Vec<ReportedTtl>, StoreError> {
        self.1
            .around(
                "report_access_ttl",
                self.0.report_access_ttl(access_ttl, now, forget_before),
            )
            .await
    }

    async fn access_ttls(&self) -> Result<Vec<ReportedTtl>, StoreError> {
        self.1.around("access_ttls", self.0.access_ttls()).await
    }

    async fn put_ephemeral(
        &self,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.1
            .around(
                "put_ephemeral",
                self.0.put_ephemeral(key, value, expires_at),
            )
            .await
    }

    async fn take_ephemeral(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.1
            .around("take_ephemeral", self.0.take_ephemeral(key, now))
            .await
    }

    async fn purge(&self, now: i64) -> Result<Purged, StoreError> {
        self.1.around("purge", self.0.purge(now)).await
    }

    async fn grants(&self, sub: &str) -> Result<Option<Grants>, StoreError> {
        self.1.around("grants", self.0.grants(sub)).await
    }

    async fn set_scopes(&self, sub: &str, scopes: &[String], now: i64) -> Result<bool, StoreError> {
        self.1
            .around("set_scopes", self.0.set_scopes(sub, scopes, now))
            .await
    }

    async fn set_ban(&self, sub: &str, ban: Option<&Ban>, now: i64) -> Result<bool, StoreError> {
        self.1
            .around("set_ban", self.0.set_ban(sub, ban, now))
            .await
    }

    async fn set_ban_if(
        &self,
        sub: &str,
        expected: Option<&Ban>,
        ban: Option<&Ban>,
        now: i64,
    ) -> Result<BanWrite, StoreError> {
        self.1
            .around("set_ban_if", self.0.set_ban_if(sub, expected, ban, now))
            .await
    }

    async fn refresh_owner(
        &self,
        family: &str,
        refresh_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        self.1
            .around("refresh_owner", self.0.refresh_owner(family, refresh_hash))
            .await
    }
}
