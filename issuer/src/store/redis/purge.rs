//! The sessions the purge removes (and a failed login's, discarded): the directory forgets
//! them, then their slots drop them (see "The purge" in the module docs).

use super::*;

impl RedisStore {
    /// Removes sessions `sids` (ended, or discarded): their owners read in their families'
    /// slots, the directory made to forget them (FORGET_SESSIONS: their user's set, their
    /// code's mark, the expiry index), then each dropped in its slot ([`Self::drop_session`]),
    /// a few slots at a time. Their refresh tokens are left to their TTLs, unknown without the
    /// session. Returns how many refresh tokens they had been given.
    ///
    /// The directory forgets first: cut short after it, a session's keys are left to their
    /// TTLs (its end and a day), out of every index; dropped first, the sessions' owners were
    /// gone with them, and the next purge, finding them in the index still, could no longer
    /// take them off their users' sets — there for good, each met again by every later ban
    /// and "log out everywhere" of the user.
    pub(super) async fn drop_sessions(&self, sids: &[String]) -> Result<usize, StoreError> {
        if sids.is_empty() {
            return Ok(0);
        }
        let mut owners = Vec::with_capacity(sids.len());
        for chunk in sids.chunks(CONCURRENT_SLOTS) {
            let reads = chunk.iter().map(|sid| self.session_owner(sid));
            owners.extend(futures_util::future::try_join_all(reads).await?);
        }
        let forget: Vec<_> = sids
            .iter()
            .zip(&owners)
            .map(|(sid, (sub, code_hash))| (sid.as_str(), sub.as_str(), code_hash.as_str()))
            .collect();
        self.forget_sessions(&forget).await?;
        let mut tokens = 0;
        for chunk in sids.chunks(CONCURRENT_SLOTS) {
            let drops = chunk.iter().map(|sid| self.drop_session(sid));
            tokens += futures_util::future::try_join_all(drops)
                .await?
                .into_iter()
                .sum::<usize>();
        }
        Ok(tokens)
    }

    /// FORGET_SESSIONS: sessions `(sid, sub, code_hash)` taken off their user's set (`sub`
    /// `""`: none), their code's mark and the expiry index.
    pub(super) async fn forget_sessions(
        &self,
        sessions: &[(&str, &str, &str)],
    ) -> Result<(), StoreError> {
        let mut call = self.inner.scripts.forget_sessions.prepare_invoke();
        call.key(self.key(keys::SESSIONS_EXP)).arg(self.prefix());
        for (sid, sub, code_hash) in sessions {
            call.arg(sid).arg(sub).arg(code_hash);
        }
        let _: i64 = self.eval(&call).await?;
        Ok(())
    }

    /// A session's sub and code hash (`""` for what it does not have, or a session gone).
    async fn session_owner(&self, sid: &str) -> Result<(String, String), StoreError> {
        let fields: Vec<Option<String>> = self
            .op(|mut conn| {
                let key = self.session_key(sid);
                async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg("sub")
                        .arg("code_hash")
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let mut fields = fields.into_iter().map(Option::unwrap_or_default);
        Ok((
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
        ))
    }

    /// DROP_SESSION on one ended session: the refresh tokens it was given (left to their
    /// TTLs).
    async fn drop_session(&self, sid: &str) -> Result<usize, StoreError> {
        let mut call = self.inner.scripts.drop_session.prepare_invoke();
        call.key(self.session_key(sid))
            .key(self.family_set_key(sid));
        self.eval(&call).await
    }
}
