//! Revocations on Redis: the sessions a revocation covers marked in their slots, its entry
//! appended to the feed, and the `sid` entry a revocation cut short between the two left
//! pending, published by the next reader of the session ([`RedisStore::revoke_entry`]).

use super::*;

/// What a `sub` revocation reaches: the tokens issued before its `issued_before`, and the
/// user's sessions [`SubSessions`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SubReach {
    pub(super) issued_before: i64,
    pub(super) sessions: SubSessions,
}

impl SubReach {
    /// MARK_SESSION's `reach` argument.
    fn argument(reach: Option<SubReach>) -> String {
        match reach {
            None => String::new(),
            Some(SubReach {
                sessions: SubSessions::All,
                ..
            }) => "all".into(),
            Some(SubReach {
                issued_before,
                sessions: SubSessions::CreatedBefore,
            }) => issued_before.to_string(),
        }
    }
}

/// What MARK_SESSION did to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// Revoked by this call.
    Revoked,
    /// Covered by a `sub` revocation, and revoked before, at the time given (by a logout, a
    /// reuse, or an earlier attempt of this revocation cut short).
    RevokedBefore(i64),
    /// Left as it was: already revoked by a `sid` revocation, or not covered by the `sub`
    /// revocation.
    Done,
    /// No such session.
    Missing,
    /// The reuse verdict's guard failed: the session is gone or already revoked.
    GuardFailed,
}

impl RedisStore {
    /// A revocation: first the sessions it covers are marked, each in its family's slot
    /// (MARK_SESSION; for a `sub`, the user's sessions its [`SubReach`] names), then
    /// the entry is appended to the feed (REVOKE), then the user's set is read again and
    /// sessions that joined it meanwhile are marked too. Every step is idempotent, and the
    /// revocation is acknowledged only after the last and its `WAIT`.
    ///
    /// One cut short (a crash, a lost connection, the feed's primary failing over) answers an
    /// error and may leave a session marked without its entry: its refresh token is dead at
    /// once, its access tokens would pass the edge to their `exp`. A `sub` revocation is
    /// completed by its retry (the admin's call). A `sid` one — a logout, a refresh token's
    /// reuse — cannot count on one: the client's retry finds the session revoked (a 401, an
    /// `invalid_grant`) before any revocation. So its mark also notes the entry as pending
    /// (`pending_until`, the entry's `until`), cleared once the entry is written; whoever reads
    /// the session and finds it still pending — the retried logout's bearer check, any call
    /// with one of its tokens, the retried refresh — writes the entry first
    /// ([`Self::publish_pending`]). (Two may both write it: the edge applies a `sid` twice
    /// as once.) `guard` (the reuse verdict): only while the session `value` is live; `None`
    /// when it no longer is (decide again).
    pub(super) async fn revoke_entry(
        &self,
        kind: EntryKind,
        value: &str,
        reach: Option<SubReach>,
        until: i64,
        now: i64,
        guard: bool,
    ) -> Result<Option<Entry>, StoreError> {
        let issued_before = reach.map(|reach| reach.issued_before);
        let epoch = self.link_epoch();
        let mut marked = HashSet::new();
        match kind {
            EntryKind::Sid => {
                // The guard's call id: a run of the script sent again finds its own mark.
                let guard = guard.then(|| crate::secrets::random_b64(12));
                let mark = self
                    .mark_session(value, now, guard.as_deref(), None, Some(until))
                    .await?;
                if mark == Mark::GuardFailed {
                    return Ok(None);
                }
            }
            EntryKind::Sub => {
                if let Some(reach) = reach {
                    self.revoke_user_sessions(value, now, reach, until, &mut marked, true)
                        .await?;
                }
            }
            EntryKind::Jti => {}
        }
        let json = self.append_entry(kind, value, issued_before, until).await?;
        match kind {
            EntryKind::Sub => {
                if let Some(reach) = reach {
                    self.revoke_user_sessions(value, now, reach, until, &mut marked, false)
                        .await?;
                }
            }
            EntryKind::Sid => {
                let session = self.session_key(value);
                self.op(
                    |mut conn| async move { conn.hdel::<_, _, ()>(session, "pending_until").await },
                )
                .await?;
            }
            EntryKind::Jti => {}
        }
        self.replicate(epoch).await?;
        parse_entry(&json).map(Some)
    }

    /// One pass of a `sub` revocation over user `sub`'s sessions (`marked`: those a pass
    /// marked already): each it revokes gets its own `sid` entry (`Store::revoke`), as it may
    /// hold tokens issued at or after `issued_before` — in the second pass too, after the
    /// `sub` entry: a session it finds was opened meanwhile and may have been refreshed since
    /// `issued_before`, a token the `sub` entry does not cover. With `complete_earlier` (the
    /// first pass), also each it covers that was revoked before without a `sid` entry in the
    /// feed — an earlier attempt of this revocation cut between its marks and their entries,
    /// which the admin's retry completes here. Not for one revoked so long ago that its tokens
    /// have all expired ([`rules::revoked_session_needs_entry`]): a logout of last month, whose
    /// entry the purge removed while the session stays listed to its end, is not sent to every
    /// edge again by each later ban (the SQL stores write none for a session revoked before).
    pub(super) async fn revoke_user_sessions(
        &self,
        sub: &str,
        now: i64,
        reach: SubReach,
        until: i64,
        marked: &mut HashSet<String>,
        complete_earlier: bool,
    ) -> Result<(), StoreError> {
        let (mut revoked, before) = self.mark_user_sessions(sub, now, reach, marked).await?;
        if complete_earlier {
            for (sid, revoked_at) in before {
                if !rules::revoked_session_needs_entry(until, reach.issued_before, revoked_at, now)
                {
                    continue;
                }
                let index = self.key(&keys::revoked(EntryKind::Sid.name(), &sid));
                let listed: bool = self
                    .op(|mut conn| async move { conn.exists(index).await })
                    .await?;
                if !listed {
                    revoked.push(sid);
                }
            }
        }
        let session_until = rules::session_until_of_sub(until, reach.issued_before, now);
        for sid in revoked {
            self.append_entry(EntryKind::Sid, &sid, None, session_until)
                .await?;
        }
        Ok(())
    }

    /// Appends one entry to the feed (REVOKE): its answer, the entry's JSON.
    async fn append_entry(
        &self,
        kind: EntryKind,
        value: &str,
        issued_before: Option<i64>,
        until: i64,
    ) -> Result<String, StoreError> {
        let call_id = crate::secrets::random_b64(12);
        self.append_entry_as(kind, value, issued_before, until, &call_id)
            .await
    }

    /// [`Self::append_entry`] as the call `call_id`: its run sent again answers the entry the
    /// first run appended, instead of appending it a second time under another seq.
    pub(super) async fn append_entry_as(
        &self,
        kind: EntryKind,
        value: &str,
        issued_before: Option<i64>,
        until: i64,
        call_id: &str,
    ) -> Result<String, StoreError> {
        let keys = [
            self.key(keys::SEQ),
            self.key(keys::REV_ENTRIES),
            self.key(keys::REV_BY_SEQ),
            self.key(keys::REV_BY_UNTIL),
            self.key(&keys::revoked(kind.name(), value)),
            self.key(keys::SEQ_EPOCH),
            self.key(&keys::revoke_call(call_id)),
        ];
        let mut call = self.inner.scripts.revoke.prepare_invoke();
        for key in &keys {
            call.key(key);
        }
        call.arg(kind.name())
            .arg(value)
            .arg(issued_before.map(|v| v.to_string()).unwrap_or_default())
            .arg(until)
            .arg(self.channel())
            .arg(SEQ_GAP);
        self.eval(&call).await
    }

    /// Writes the `sid` entry a revocation cut short left pending on session `sid` (see
    /// [`Self::revoke_entry`]), with the `until` it was to have — unless the feed has it
    /// already (`entry_known`, else read here): the note also shows during a revocation's
    /// own short window between its entry and clearing the note, and readers then must not
    /// add entries of their own.
    pub(super) async fn publish_pending(
        &self,
        sid: &str,
        until: i64,
        now: i64,
        entry_known: Option<bool>,
    ) -> Result<(), StoreError> {
        let exists = match entry_known {
            Some(known) => known,
            None => {
                let key = self.key(&keys::revoked(EntryKind::Sid.name(), sid));
                self.op(|mut conn| async move { conn.exists(key).await })
                    .await?
            }
        };
        if exists {
            return Ok(());
        }
        tracing::warn!(
            sid = %sid,
            "a revocation of this session was cut short before its entry reached the feed: publishing it now"
        );
        self.revoke_entry(EntryKind::Sid, sid, None, until, now, false)
            .await
            .map(|_| ())
    }

    /// MARK_SESSION on one session, for a `sid` revocation (`reach`: `None`) or a `sub` one.
    /// `pending_until`: a `sid` revocation's, whose entry is written next.
    pub(super) async fn mark_session(
        &self,
        sid: &str,
        now: i64,
        guard: Option<&str>,
        reach: Option<SubReach>,
        pending_until: Option<i64>,
    ) -> Result<Mark, StoreError> {
        let mut call = self.inner.scripts.mark_session.prepare_invoke();
        let text = |value: Option<i64>| value.map(|v| v.to_string()).unwrap_or_default();
        call.key(self.session_key(sid))
            .arg(now)
            .arg(guard.unwrap_or_default())
            .arg(SubReach::argument(reach))
            .arg(text(pending_until));
        let (done, revoked_at): (i64, i64) = self.eval(&call).await?;
        Ok(match done {
            0 => Mark::GuardFailed,
            2 => Mark::Missing,
            3 => Mark::Revoked,
            4 => Mark::RevokedBefore(revoked_at),
            _ => Mark::Done,
        })
    }

    /// Marks the sessions of `sub` not in `marked` (which it extends), concurrently; returns
    /// those this call revoked and those it covers that were revoked before (with when).
    pub(super) async fn mark_user_sessions(
        &self,
        sub: &str,
        now: i64,
        reach: SubReach,
        marked: &mut HashSet<String>,
    ) -> Result<(Vec<String>, Vec<(String, i64)>), StoreError> {
        let (mut revoked, mut before) = (Vec::new(), Vec::new());
        let set = self.key(&keys::sub_sessions(sub));
        let sids: Vec<String> = self
            .op(|mut conn| async move { conn.smembers(set).await })
            .await?;
        let fresh: Vec<String> = sids
            .into_iter()
            .filter(|sid| !marked.contains(sid))
            .collect();
        for chunk in fresh.chunks(CONCURRENT_SLOTS) {
            let mut marks = Vec::with_capacity(chunk.len());
            for sid in chunk {
                marks.push(self.mark_session(sid, now, None, Some(reach), None));
            }
            let outcomes = futures_util::future::try_join_all(marks).await?;
            // A session listed but not written yet (a login between its two scripts) is not
            // marked: the second pass, after the entry, looks at it again.
            for (sid, outcome) in chunk.iter().zip(outcomes) {
                if outcome != Mark::Missing {
                    marked.insert(sid.clone());
                }
                match outcome {
                    Mark::Revoked => revoked.push(sid.clone()),
                    Mark::RevokedBefore(at) => before.push((sid.clone(), at)),
                    _ => {}
                }
            }
        }
        Ok((revoked, before))
    }
}
