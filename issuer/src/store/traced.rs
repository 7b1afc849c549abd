//! A [`Store`] that runs every operation of the store it wraps in a `store` span (DEBUG, with
//! `op`), so exported traces (see [`crate::telemetry::otel`]) show each store call under its request.
//! `App::build` wraps the store in it only when such spans are enabled (an OTLP endpoint is
//! set, or `WEAUTH_LOG` asks for debug): otherwise the store is used as is.

use async_trait::async_trait;
use tracing::Instrument as _;
use weauth_token::revocation::Entry;

use super::*;

/// The wrapped store.
pub struct TracedStore(pub std::sync::Arc<dyn Store>);

fn span(op: &'static str) -> tracing::Span {
    tracing::debug_span!("store", op)
}

#[async_trait]
impl Store for TracedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().instrument(span("ping")).await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.0.keys().instrument(span("keys")).await
    }

    async fn insert_key(
        &self,
        key: &KeyRecord,
        only_if_none_active_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.0
            .insert_key(key, only_if_none_active_at)
            .instrument(span("insert_key"))
            .await
    }

    async fn erase_keys(&self, kids: &[String]) -> Result<(), StoreError> {
        self.0.erase_keys(kids).instrument(span("erase_keys")).await
    }

    async fn code_used(&self, code_hash: &str) -> Result<bool, StoreError> {
        self.0
            .code_used(code_hash)
            .instrument(span("code_used"))
            .await
    }

    async fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError> {
        self.0.login(login).instrument(span("login")).await
    }

    async fn discard_session(&self, sid: &str) -> Result<(), StoreError> {
        self.0
            .discard_session(sid)
            .instrument(span("discard_session"))
            .await
    }

    async fn rotate_refresh(&self, rotate: &Rotate) -> Result<RotateResult, StoreError> {
        self.0
            .rotate_refresh(rotate)
            .instrument(span("rotate_refresh"))
            .await
    }

    async fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.0.session(sid).instrument(span("session")).await
    }

    async fn session_key_sealed(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0
            .session_key_sealed(sid)
            .instrument(span("session_key_sealed"))
            .await
    }

    async fn user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        self.0.user(sub).instrument(span("user")).await
    }

    async fn set_phone(
        &self,
        sub: &str,
        sealed_phone: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.0
            .set_phone(sub, sealed_phone, now)
            .instrument(span("set_phone"))
            .await
    }

    async fn set_risk(&self, sub: &str, fact: &RiskFact) -> Result<bool, StoreError> {
        self.0
            .set_risk(sub, fact)
            .instrument(span("set_risk"))
            .await
    }

    async fn wechat_token(&self, appid: &str) -> Result<Option<CachedToken>, StoreError> {
        self.0
            .wechat_token(appid)
            .instrument(span("wechat_token"))
            .await
    }

    async fn lease_wechat_token(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        self.0
            .lease_wechat_token(appid, holder, now, lease_until)
            .instrument(span("lease_wechat_token"))
            .await
    }

    async fn put_wechat_token(
        &self,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<bool, StoreError> {
        self.0
            .put_wechat_token(appid, token, holder)
            .instrument(span("put_wechat_token"))
            .await
    }

    async fn release_wechat_lease(&self, appid: &str, holder: &str) -> Result<(), StoreError> {
        self.0
            .release_wechat_lease(appid, holder)
            .instrument(span("release_wechat_lease"))
            .await
    }

    async fn invalidate_wechat_token(
        &self,
        appid: &str,
        token_hash: &str,
    ) -> Result<bool, StoreError> {
        self.0
            .invalidate_wechat_token(appid, token_hash)
            .instrument(span("invalidate_wechat_token"))
            .await
    }

    async fn revoke(&self, revoke: &Revoke, now: i64, until: i64) -> Result<Entry, StoreError> {
        self.0
            .revoke(revoke, now, until)
            .instrument(span("revoke"))
            .await
    }

    async fn revocation_facts(
        &self,
        jti: &str,
        sid: &str,
        sub: &str,
    ) -> Result<crate::domain::rules::RevocationFacts, StoreError> {
        self.0
            .revocation_facts(jti, sid, sub)
            .instrument(span("revocation_facts"))
            .await
    }

    async fn feed_snapshot(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> Result<FeedSnapshot, StoreError> {
        self.0
            .feed_snapshot(after, now, limit)
            .instrument(span("feed_snapshot"))
            .await
    }

    async fn current_seq(&self) -> Result<u64, StoreError> {
        self.0.current_seq().instrument(span("current_seq")).await
    }

    async fn report_access_ttl(
        &self,
        access_ttl: i64,
        now: i64,
        forget_before: i64,
    ) -> Result<Vec<ReportedTtl>, StoreError> {
        self.0
            .report_access_ttl(access_ttl, now, forget_before)
            .instrument(span("report_access_ttl"))
            .await
    }

    async fn access_ttls(&self) -> Result<Vec<ReportedTtl>, StoreError> {
        self.0.access_ttls().instrument(span("access_ttls")).await
    }

    async fn put_ephemeral(
        &self,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.0
            .put_ephemeral(key, value, expires_at)
            .instrument(span("put_ephemeral"))
            .await
    }

    async fn take_ephemeral(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0
            .take_ephemeral(key, now)
            .instrument(span("take_ephemeral"))
            .await
    }

    async fn purge(&self, now: i64) -> Result<Purged, StoreError> {
        self.0.purge(now).instrument(span("purge")).await
    }

    async fn grants(&self, sub: &str) -> Result<Option<Grants>, StoreError> {
        self.0.grants(sub).instrument(span("grants")).await
    }

    async fn set_scopes(&self, sub: &str, scopes: &[String], now: i64) -> Result<bool, StoreError> {
        self.0
            .set_scopes(sub, scopes, now)
            .instrument(span("set_scopes"))
            .await
    }

    async fn set_ban(&self, sub: &str, ban: Option<&Ban>, now: i64) -> Result<bool, StoreError> {
        self.0
            .set_ban(sub, ban, now)
            .instrument(span("set_ban"))
            .await
    }

    async fn set_ban_if(
        &self,
        sub: &str,
        expected: Option<&Ban>,
        ban: Option<&Ban>,
        now: i64,
    ) -> Result<BanWrite, StoreError> {
        self.0
            .set_ban_if(sub, expected, ban, now)
            .instrument(span("set_ban_if"))
            .await
    }

    async fn refresh_owner(
        &self,
        family: &str,
        refresh_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        self.0
            .refresh_owner(family, refresh_hash)
            .instrument(span("refresh_owner"))
            .await
    }
}
