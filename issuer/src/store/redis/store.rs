//! The [`Store`] contract on Redis: every read-modify-write as a read followed by a
//! compare-and-set script (retried while the facts change), every write then `WAIT`ed for
//! the configured replicas ([`RedisStore::replicate`]).

use super::*;
use crate::store::PhonesPage;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

/// `text` matched literally by a `SCAN … MATCH` glob (a prefix may hold `*?[]\\`).
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisStore {
    /// Sets (or, for an empty value, deletes) fields of an existing user, atomically.
    async fn set_user_fields(
        &self,
        sub: &str,
        now: i64,
        fields: Vec<(&'static str, String)>,
    ) -> Result<bool, StoreError> {
        let changed = self.set_user_fields_as(sub, now, &[], &fields, "").await?;
        Ok(changed == BanWrite::Written)
    }

    /// [`Self::set_user_fields`] only while each field of `expected` holds its value (`""`:
    /// absent), compared inside the script.
    async fn set_user_fields_if(
        &self,
        sub: &str,
        now: i64,
        expected: &[(&'static str, String)],
        fields: &[(&'static str, String)],
    ) -> Result<BanWrite, StoreError> {
        self.set_user_fields_as(sub, now, expected, fields, &crate::secrets::random_b64(12))
            .await
    }

    /// [`Self::set_user_fields_if`] as the call `call_id` (a guarded write's run sent again
    /// with the same id answers as its first run did).
    pub(super) async fn set_user_fields_as(
        &self,
        sub: &str,
        now: i64,
        expected: &[(&'static str, String)],
        fields: &[(&'static str, String)],
        call_id: &str,
    ) -> Result<BanWrite, StoreError> {
        let key = self.key(&keys::user(sub));
        let mut call = self.inner.scripts.set_user_fields.prepare_invoke();
        call.key(key).arg(now).arg(call_id).arg(expected.len());
        for (name, value) in expected.iter().chain(fields) {
            call.arg(*name).arg(value);
        }
        let changed: i64 = self.write(&call).await?;
        Ok(match changed {
            0 => BanWrite::UnknownUser,
            1 => BanWrite::Written,
            _ => BanWrite::Changed,
        })
    }

    /// [`Store::take_ephemeral`] as the taker `taker` (its run sent again with the same id gets
    /// the value its first run took).
    pub(super) async fn take_ephemeral_as(
        &self,
        key: &str,
        now: i64,
        taker: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (name, index) = (self.key(&keys::ephemeral(key)), self.key(keys::EPH_EXP));
        let taken = self.key(&keys::ephemeral_taken(key));
        let member = key.to_string();
        let mut call = self.inner.scripts.take_ephemeral.prepare_invoke();
        call.key(name)
            .key(index)
            .key(taken)
            .arg(now)
            .arg(member)
            .arg(taker);
        let value: Option<Vec<u8>> = self.write(&call).await?;
        Ok(value)
    }
}

/// A ban as the user's hash keeps it (`""`: the field absent; every field empty: no ban).
pub(super) fn ban_fields(ban: Option<&Ban>) -> Vec<(&'static str, String)> {
    match ban {
        Some(ban) => vec![
            ("ban_created_at", ban.created_at.to_string()),
            (
                "ban_until",
                ban.until.map(|u| u.to_string()).unwrap_or_default(),
            ),
            ("ban_reason", ban.reason.clone().unwrap_or_default()),
        ],
        None => vec![
            ("ban_created_at", String::new()),
            ("ban_until", String::new()),
            ("ban_reason", String::new()),
        ],
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn grants(&self, sub: &str) -> Result<Option<Grants>, StoreError> {
        let key = self.key(&keys::user(sub));
        let fields: HashMap<String, Vec<u8>> = self
            .read(|mut conn| async move { conn.hgetall(key).await })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let ban = match number(&fields, "ban_created_at")? {
            Some(created_at) => Some(Ban {
                created_at,
                until: number(&fields, "ban_until")?,
                reason: text(&fields, "ban_reason"),
            }),
            None => None,
        };
        Ok(Some(Grants {
            scopes: grants::scopes_from_stored(text(&fields, "scopes").as_deref()),
            ban,
        }))
    }

    async fn set_risk(&self, sub: &str, fact: &RiskFact) -> Result<bool, StoreError> {
        let fields = vec![
            ("risk_appid", fact.appid.clone()),
            ("risk_rank", fact.rank.to_string()),
            ("risk_at", fact.at.to_string()),
        ];
        self.set_user_fields(sub, fact.at, fields).await
    }

    async fn set_scopes(&self, sub: &str, scopes: &[String], now: i64) -> Result<bool, StoreError> {
        self.set_user_fields(sub, now, vec![("scopes", grants::stored_scopes(scopes))])
            .await
    }

    async fn set_ban(&self, sub: &str, ban: Option<&Ban>, now: i64) -> Result<bool, StoreError> {
        self.set_user_fields(sub, now, ban_fields(ban)).await
    }

    async fn set_ban_if(
        &self,
        sub: &str,
        expected: Option<&Ban>,
        ban: Option<&Ban>,
        now: i64,
    ) -> Result<BanWrite, StoreError> {
        self.set_user_fields_if(sub, now, &ban_fields(expected), &ban_fields(ban))
            .await
    }

    async fn refresh_owner(
        &self,
        family: &str,
        refresh_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = self.refresh_key(family, refresh_hash);
        let sid: Option<String> = self
            .read(|mut conn| async move { conn.hget(key, "sid").await })
            .await?;
        let Some(sid) = sid else {
            return Ok(None);
        };
        let key = self.session_key(&sid);
        self.read(|mut conn| async move { conn.hget(key, "sub").await })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.op(|mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(|_| ())
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let key = self.key(keys::KEYS);
        let values: Vec<String> = self
            .read(|mut conn| async move { conn.hvals(key).await })
            .await?;
        let mut records = Vec::with_capacity(values.len());
        for value in values {
            let stored: StoredKey = serde_json::from_str(&value)
                .map_err(|err| StoreError::Corrupt(format!("signing key record: {err}")))?;
            records.push(KeyRecord {
                kid: stored.kid,
                alg: stored.alg,
                sealed: B64
                    .decode(stored.sealed)
                    .map_err(|err| StoreError::Corrupt(format!("signing key record: {err}")))?,
                created_at: stored.created_at,
                activate_at: stored.activate_at,
            });
        }
        records.sort_by(|a, b| (a.activate_at, &a.kid).cmp(&(b.activate_at, &b.kid)));
        Ok(records)
    }

    async fn insert_key(
        &self,
        key: &KeyRecord,
        only_if_none_active_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(&StoredKey {
            kid: key.kid.clone(),
            alg: key.alg.clone(),
            sealed: B64.encode(&key.sealed),
            created_at: key.created_at,
            activate_at: key.activate_at,
        })
        .map_err(|err| StoreError::backend(err.to_string()))?;
        let (hash, kid) = (self.key(keys::KEYS), key.kid.clone());
        let only = only_if_none_active_at
            .map(|v| v.to_string())
            .unwrap_or_default();
        let mut call = self.inner.scripts.insert_key.prepare_invoke();
        call.key(hash).arg(kid).arg(json).arg(only);
        let inserted: i64 = self.write(&call).await?;
        Ok(inserted == 1)
    }

    async fn erase_keys(&self, kids: &[String]) -> Result<(), StoreError> {
        // Each record read, then written back erased only over what was read (ERASE_KEY: a
        // replica changing it meanwhile makes this one read again) and through `write`, so
        // that the erasure is replicated before it is acknowledged: a failover must not bring
        // an erased private key back.
        let hash = self.key(keys::KEYS);
        for kid in kids {
            let mut erased = false;
            for _ in 0..CAS_ATTEMPTS {
                let (h, k) = (hash.clone(), kid.clone());
                let value: Option<String> = self
                    .op(|mut conn| async move { conn.hget(h, k).await })
                    .await?;
                let Some(value) = value else {
                    erased = true;
                    break;
                };
                let mut stored: StoredKey = serde_json::from_str(&value)
                    .map_err(|err| StoreError::Corrupt(format!("signing key record: {err}")))?;
                stored.sealed = String::new();
                let json = serde_json::to_string(&stored)
                    .map_err(|err| StoreError::backend(err.to_string()))?;
                let mut call = self.inner.scripts.erase_key.prepare_invoke();
                call.key(&hash).arg(kid).arg(&value).arg(&json);
                let written: i64 = self.write(&call).await?;
                if written != 0 {
                    erased = true;
                    break;
                }
            }
            if !erased {
                return Err(StoreError::Busy(
                    "erase_keys: the key record keeps changing".into(),
                ));
            }
        }
        Ok(())
    }

    async fn code_used(&self, code_hash: &str) -> Result<bool, StoreError> {
        let key = self.key(&keys::code(code_hash));
        self.read(|mut conn| async move { conn.exists(key).await })
            .await
    }

    async fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError> {
        let identity = self.key(&keys::identity(&login.appid, &login.openid));
        let unionid_key = self.key(&keys::unionid(login.unionid.as_deref().unwrap_or_default()));
        // Both halves' writes are confirmed by the one WAIT after the second.
        let epoch = self.link_epoch();
        for _ in 0..CAS_ATTEMPTS {
            // The candidates, then the pure decision, then a guarded apply.
            let (id_key, un_key) = (identity.clone(), unionid_key.clone());
            let has_unionid = login.unionid.is_some();
            let (by_identity, by_unionid): (Option<String>, Option<String>) = self
                .read(|mut conn| async move {
                    let by_identity: Option<String> = conn.get(&id_key).await?;
                    let by_unionid: Option<String> = if has_unionid {
                        conn.get(&un_key).await?
                    } else {
                        None
                    };
                    Ok((by_identity, by_unionid))
                })
                .await?;
            let found = match &by_identity {
                Some(sub) => {
                    let user_key = self.key(&keys::user(sub));
                    let unionid: Option<String> = self
                        .read(|mut conn| async move { conn.hget(user_key, "unionid").await })
                        .await?;
                    Some(FoundUser {
                        sub: sub.clone(),
                        unionid,
                    })
                }
                None => None,
            };
            let candidates = LinkCandidates {
                by_identity: found,
                by_unionid: by_unionid.clone(),
            };
            let link = rules::link_user(&candidates, login.unionid.as_deref(), &login.new_sub);
            let session_ttl = ttl(login.session_expires, login.now);
            let refresh_ttl = ttl(login.refresh_expires, login.now);
            let keys = [
                self.key(&keys::code(&login.code_hash)),
                identity.clone(),
                unionid_key.clone(),
                self.key(&keys::user(&link.sub)),
                self.key(&keys::sub_sessions(&link.sub)),
                self.key(keys::SESSIONS_EXP),
            ];
            let flag = |b: bool| if b { "1" } else { "0" };
            let decided = link.clone();
            let mut call = self.inner.scripts.login.prepare_invoke();
            for key in &keys {
                call.key(key);
            }
            call.arg(by_identity.unwrap_or_default())
                .arg(login.unionid.clone().unwrap_or_default())
                .arg(by_unionid.unwrap_or_default())
                .arg(&decided.sub)
                .arg(flag(decided.create_user))
                .arg(flag(decided.attach_unionid))
                .arg(flag(decided.create_identity))
                .arg(login.now)
                .arg(&login.sid)
                .arg(login.session_expires)
                .arg(session_ttl);
            let outcome: String = self.eval(&call).await?;
            match outcome.as_str() {
                "ok" => {}
                "used" => return Ok(LoginResult::CodeAlreadyUsed),
                _ => continue,
            }
            // The session and its first refresh token, in the family's slot. Should this
            // fail, the login fails with no session, and the directory's half (the code spent,
            // the sid in the user's set and the expiry index) is taken back now, while the
            // session's owner is known: the purge reads an owner from the session, which this
            // one never got, and the sid stayed in the user's set for good (its TTL renewed by
            // each later login), met by every later ban and "log out everywhere". If that
            // fails too (the directory's server is down as well), the sid stays in the set
            // (logged), the purge takes it off the expiry index, and the code's mark expires.
            let family = tokens::family_of_sid(&login.sid);
            let mut call = self.inner.scripts.open_session.prepare_invoke();
            call.key(self.session_key(&login.sid))
                .key(self.refresh_key(family, &login.refresh_hash))
                .arg(&login.sid)
                .arg(&link.sub)
                .arg(&login.appid)
                .arg(&login.openid)
                .arg(link.unionid.clone().unwrap_or_default())
                .arg(login.session_key_sealed.clone().unwrap_or_default())
                .arg(flag(login.session_key_sealed.is_some()))
                .arg(&login.code_hash)
                .arg(login.now)
                .arg(login.session_expires)
                .arg(session_ttl)
                .arg(login.refresh_expires)
                .arg(refresh_ttl);
            if let Err(err) = self.eval::<i64>(&call).await {
                let taken_back = self
                    .forget_sessions(&[(
                        login.sid.as_str(),
                        link.sub.as_str(),
                        login.code_hash.as_str(),
                    )])
                    .await;
                if let Err(also) = taken_back {
                    tracing::warn!(
                        error = %also,
                        "a login cut short: its session's id is left in its user's set"
                    );
                }
                return Err(err);
            }
            self.replicate(epoch).await?;
            return Ok(LoginResult::Created {
                sub: link.sub,
                new_user: link.create_user,
                unionid: link.unionid,
            });
        }
        Err(StoreError::Busy(
            "login: too many concurrent changes to the same user".into(),
        ))
    }

    async fn discard_session(&self, sid: &str) -> Result<(), StoreError> {
        // As the purge drops an ended session.
        self.drop_sessions(&[sid.to_string()]).await.map(|_| ())
    }

    async fn rotate_refresh(&self, rotate: &Rotate) -> Result<RotateResult, StoreError> {
        // This rotation's id, kept on the token it consumes ([`RedisStore::rotate_cas`]).
        let call_id = crate::secrets::random_b64(12);
        for _ in 0..CAS_ATTEMPTS {
            let read = self
                .read_refresh(&rotate.family, &rotate.presented_hash)
                .await?;
            let row = match read {
                Some((row, Some(until))) => {
                    // Its session's revocation was cut short: publish it before answering.
                    self.publish_pending(&row.sid, until, rotate.now, None)
                        .await?;
                    Some(row)
                }
                Some((row, None)) => Some(row),
                None => None,
            };
            match rules::decide_refresh(
                row.as_ref(),
                rotate.now,
                rotate.refresh_ttl,
                rotate.reuse_grace,
            ) {
                RefreshDecision::Invalid(reason) => return Ok(RotateResult::Invalid(reason)),
                RefreshDecision::Reuse { sid } => {
                    match self
                        .revoke_entry(
                            EntryKind::Sid,
                            &sid,
                            None,
                            rotate.revocation_until,
                            rotate.now,
                            true,
                        )
                        .await?
                    {
                        Some(entry) => return Ok(RotateResult::Reused { sid, entry }),
                        None => continue,
                    }
                }
                RefreshDecision::Rotate { sid, new_expires } => {
                    if let Some(done) = self
                        .rotate_cas(rotate, &sid, new_expires, None, &call_id)
                        .await?
                    {
                        return Ok(done);
                    }
                }
                RefreshDecision::Repeat {
                    sid,
                    new_expires,
                    used_at,
                } => {
                    if let Some(done) = self
                        .rotate_cas(rotate, &sid, new_expires, Some(used_at), &call_id)
                        .await?
                    {
                        return Ok(done);
                    }
                }
            }
        }
        Err(StoreError::Busy(
            "rotation: too many concurrent uses of the same refresh token".into(),
        ))
    }

    async fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        let key = self.session_key(sid);
        let fields: HashMap<String, Vec<u8>> = self
            .read(|mut conn| async move { conn.hgetall(key).await })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        session_from(&fields).map(Some)
    }

    async fn session_key_sealed(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.session_key(sid);
        self.read(|mut conn| async move { conn.hget(key, "session_key").await })
            .await
    }

    async fn user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        let key = self.key(&keys::user(sub));
        let fields: HashMap<String, Vec<u8>> = self
            .read(|mut conn| async move { conn.hgetall(key).await })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let risk =
            match (
                text(&fields, "risk_appid"),
                number(&fields, "risk_rank")?,
                number(&fields, "risk_at")?,
            ) {
                (Some(appid), Some(rank), Some(at)) => u8::try_from(rank)
                    .ok()
                    .map(|rank| RiskFact { appid, rank, at }),
                _ => None,
            };
        Ok(Some(UserRecord {
            sub: sub.to_string(),
            unionid: text(&fields, "unionid"),
            phone: text(&fields, "phone"),
            created_at: number(&fields, "created_at")?.unwrap_or(0),
            risk,
        }))
    }

    async fn set_phone(
        &self,
        sub: &str,
        sealed_phone: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(&keys::user(sub));
        let phone = sealed_phone.map(String::from);
        let mut call = self.inner.scripts.set_phone.prepare_invoke();
        call.key(key)
            .arg(if phone.is_some() { "1" } else { "0" })
            .arg(phone.unwrap_or_default())
            .arg(now)
            .arg("0")
            .arg("");
        let changed: i64 = self.write(&call).await?;
        Ok(changed == 1)
    }

    /// `SCAN` of the directory's slot for users' hashes (on a cluster, on the primary holding
    /// it), then each one's `phone`.
    async fn phones_page(&self, cursor: &str, limit: usize) -> Result<PhonesPage, StoreError> {
        let users = self.key(&keys::user(""));
        let users_prefix = users.clone();
        let mut scan = redis::cmd("SCAN");
        scan.arg(if cursor.is_empty() { "0" } else { cursor })
            .arg("MATCH")
            .arg(format!("{}*", glob_escape(&users)))
            .arg("COUNT")
            // Keys examined, not found: the directory's slot holds the other kinds too.
            .arg(limit.max(1).saturating_mul(10));
        let (next, names): (String, Vec<String>) = self
            .read(|mut link| async move {
                let answer: redis::Value = match &mut link {
                    Link::Single(conn) => scan.query_async(conn).await?,
                    Link::Cluster(conn) => {
                        let route = Route::with_key(users.as_bytes(), SlotAddr::Master);
                        let node = SingleNodeRoutingInfo::SpecificNode(route);
                        conn.route_command(scan, RoutingInfo::SingleNode(node))
                            .await?
                    }
                };
                Ok::<_, RedisError>(redis::from_redis_value(answer)?)
            })
            .await?;
        let mut page = Vec::with_capacity(names.len());
        for name in names {
            let phone: Option<String> = self
                .read(|mut link| {
                    let name = name.clone();
                    async move { link.hget(name, "phone").await }
                })
                .await?;
            if let (Some(sub), Some(phone)) = (name.strip_prefix(users_prefix.as_str()), phone) {
                page.push((sub.to_string(), phone));
            }
        }
        Ok((page, (next != "0").then_some(next)))
    }

    async fn reseal_phone(
        &self,
        sub: &str,
        expected: &str,
        sealed: &str,
    ) -> Result<bool, StoreError> {
        let mut call = self.inner.scripts.set_phone.prepare_invoke();
        call.key(self.key(&keys::user(sub)))
            .arg("1")
            .arg(sealed)
            .arg("")
            .arg("1")
            .arg(expected);
        let changed: i64 = self.write(&call).await?;
        Ok(changed == 1)
    }

    async fn wechat_token(&self, appid: &str) -> Result<Option<CachedToken>, StoreError> {
        let key = self.key_apart(&keys::wechat_token(appid));
        let fields: HashMap<String, Vec<u8>> = self
            .read(|mut conn| async move { conn.hgetall(key).await })
            .await?;
        let (Some(sealed), Some(hash)) = (fields.get("sealed"), text(&fields, "hash")) else {
            return Ok(None);
        };
        Ok(Some(CachedToken {
            sealed: sealed.clone(),
            hash,
            expires_at: number(&fields, "expires_at")?.unwrap_or(0),
            refresh_at: number(&fields, "refresh_at")?.unwrap_or(0),
        }))
    }

    async fn lease_wechat_token(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let (key, holder) = (
            self.key_apart(&keys::wechat_token(appid)),
            holder.to_string(),
        );
        let mut call = self.inner.scripts.lease.prepare_invoke();
        call.key(key).arg(holder).arg(now).arg(lease_until);
        let taken: i64 = self.eval(&call).await?;
        Ok(taken == 1)
    }

    async fn put_wechat_token(
        &self,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let (key, token, holder) = (
            self.key_apart(&keys::wechat_token(appid)),
            token.clone(),
            holder.to_string(),
        );
        let mut call = self.inner.scripts.put_token.prepare_invoke();
        call.key(key)
            .arg(token.sealed)
            .arg(token.hash)
            .arg(token.expires_at)
            .arg(token.refresh_at)
            .arg(holder);
        let written: i64 = self.write(&call).await?;
        Ok(written == 1)
    }

    async fn release_wechat_lease(&self, appid: &str, holder: &str) -> Result<(), StoreError> {
        let (key, holder) = (
            self.key_apart(&keys::wechat_token(appid)),
            holder.to_string(),
        );
        let mut call = self.inner.scripts.release.prepare_invoke();
        call.key(key).arg(holder);
        let _: i64 = self.eval(&call).await?;
        Ok(())
    }

    async fn invalidate_wechat_token(
        &self,
        appid: &str,
        token_hash: &str,
    ) -> Result<bool, StoreError> {
        let (key, hash) = (
            self.key_apart(&keys::wechat_token(appid)),
            token_hash.to_string(),
        );
        let mut call = self.inner.scripts.invalidate.prepare_invoke();
        call.key(key).arg(hash);
        let removed: i64 = self.eval(&call).await?;
        Ok(removed == 1)
    }

    async fn revoke(&self, revoke: &Revoke, now: i64, until: i64) -> Result<Entry, StoreError> {
        let (kind, value, reach) = match revoke {
            Revoke::Jti(jti) => (EntryKind::Jti, jti.as_str(), None),
            Revoke::Sid(sid) => (EntryKind::Sid, sid.as_str(), None),
            Revoke::Sub {
                sub,
                issued_before,
                sessions,
            } => (
                EntryKind::Sub,
                sub.as_str(),
                Some(SubReach {
                    issued_before: *issued_before,
                    sessions: *sessions,
                }),
            ),
        };
        self.revoke_entry(kind, value, reach, until, now, false)
            .await?
            .ok_or_else(|| StoreError::Corrupt("the revoke script wrote nothing".into()))
    }

    async fn revocation_facts(
        &self,
        jti: &str,
        sid: &str,
        sub: &str,
    ) -> Result<RevocationFacts, StoreError> {
        // The feed's indexes in one slot, the session in its family's: two reads at once.
        let keys = (
            self.key(&keys::revoked("jti", jti)),
            self.key(&keys::revoked("sid", sid)),
            self.key(&keys::revoked("sub", sub)),
        );
        let session = self.session_key(sid);
        let feed = self.read(|mut conn| async move {
            redis::pipe()
                .exists(keys.0)
                .exists(keys.1)
                .zrevrange_withscores(keys.2, 0, 0)
                .query_async(&mut conn)
                .await
        });
        let mark = self.read(|mut conn| async move {
            redis::cmd("HMGET")
                .arg(session)
                .arg("revoked_at")
                .arg("pending_until")
                .query_async(&mut conn)
                .await
        });
        type Mark = (Option<i64>, Option<i64>);
        let ((jti, mut sid_entry, top), (revoked_at, pending)): (
            (bool, bool, Vec<(String, f64)>),
            Mark,
        ) = tokio::try_join!(feed, mark)?;
        if let (Some(until), Some(at)) = (pending, revoked_at) {
            // Its revocation was cut short: publish it before answering (see revoke_entry).
            self.publish_pending(sid, until, at, Some(sid_entry))
                .await?;
            sid_entry = true;
        }
        Ok(RevocationFacts {
            jti,
            sid: sid_entry,
            sub_issued_before: top.first().map(|(_, score)| *score as i64),
            session_revoked: revoked_at.is_some(),
        })
    }

    async fn feed_snapshot(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> Result<FeedSnapshot, StoreError> {
        let keys = [
            self.key(keys::SEQ),
            self.key(keys::PURGED_THROUGH),
            self.key(keys::REV_BY_SEQ),
            self.key(keys::REV_ENTRIES),
        ];
        let mut call = self.inner.scripts.feed.prepare_invoke();
        for key in &keys {
            call.key(key);
        }
        call.arg(after).arg(now).arg(limit);
        let raw: Vec<redis::Value> = self.eval_read(&call).await?;
        let mut items = raw.into_iter();
        let mut next_number = || -> Result<u64, StoreError> {
            let value = items
                .next()
                .ok_or_else(|| StoreError::Corrupt("feed read".into()))?;
            redis::from_redis_value::<u64>(value)
                .map_err(|err| StoreError::Corrupt(format!("feed read: {err}")))
        };
        let current = next_number()?;
        let purged_through = next_number()?;
        let mut entries = Vec::new();
        for value in items {
            let json: String = redis::from_redis_value(value)
                .map_err(|err| StoreError::Corrupt(format!("feed read: {err}")))?;
            entries.push(parse_entry(&json)?);
        }
        Ok(FeedSnapshot {
            current,
            purged_through,
            entries,
        })
    }

    async fn current_seq(&self) -> Result<u64, StoreError> {
        let key = self.key(keys::SEQ);
        let seq: Option<u64> = self
            .read(|mut conn| async move { conn.get(key).await })
            .await?;
        Ok(seq.unwrap_or(1).max(1))
    }

    /// Not `WAIT`ed for: a failover may lose the latest report, which the replicas' next
    /// reports restore (a report stays in force for two report periods and a lifetime).
    async fn report_access_ttl(
        &self,
        access_ttl: i64,
        now: i64,
        forget_before: i64,
    ) -> Result<Vec<ReportedTtl>, StoreError> {
        let mut call = self.inner.scripts.report_ttl.prepare_invoke();
        call.key(self.key(keys::ACCESS_TTLS))
            .arg(access_ttl)
            .arg(now)
            .arg(forget_before);
        let _: i64 = self.eval(&call).await?;
        self.access_ttls().await
    }

    async fn access_ttls(&self) -> Result<Vec<ReportedTtl>, StoreError> {
        let key = self.key(keys::ACCESS_TTLS);
        let all: Vec<(i64, i64)> = self
            .read(|mut conn| async move { conn.hgetall(key).await })
            .await?;
        Ok(all
            .into_iter()
            .map(|(access_ttl, reported_at)| ReportedTtl {
                access_ttl,
                reported_at,
            })
            .collect())
    }

    async fn put_ephemeral(
        &self,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let (name, index) = (self.key(&keys::ephemeral(key)), self.key(keys::EPH_EXP));
        let (member, value) = (key.to_string(), value.to_vec());
        let mut call = self.inner.scripts.put_ephemeral.prepare_invoke();
        call.key(name)
            .key(index)
            .arg(value)
            .arg(expires_at)
            .arg(member);
        let _: i64 = self.write(&call).await?;
        Ok(())
    }

    async fn take_ephemeral(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.take_ephemeral_as(key, now, &crate::secrets::random_b64(12))
            .await
    }

    async fn purge(&self, now: i64) -> Result<Purged, StoreError> {
        self.purge_rounds(now, PURGE_BATCH).await
    }
}

impl RedisStore {
    /// [`Store::purge`] in rounds of `batch` items of each kind, while a round comes back full
    /// (at most [`PURGE_ROUNDS`], [`PURGE_PAUSE`] apart).
    pub(super) async fn purge_rounds(&self, now: i64, batch: usize) -> Result<Purged, StoreError> {
        let mut total = Purged::default();
        for round in 0..PURGE_ROUNDS {
            if round > 0 {
                tokio::time::sleep(PURGE_PAUSE).await;
            }
            let (purged, full) = self.purge_round(now, batch).await?;
            total.revocations += purged.revocations;
            total.sessions += purged.sessions;
            total.refresh_tokens += purged.refresh_tokens;
            if !full {
                break;
            }
        }
        Ok(total)
    }

    /// One round: what it removed, and whether a kind filled its batch (more may be left).
    async fn purge_round(&self, now: i64, batch: usize) -> Result<(Purged, bool), StoreError> {
        let (index, prefix) = (self.key(keys::EPH_EXP), self.prefix().to_string());
        let mut call = self.inner.scripts.purge_ephemeral.prepare_invoke();
        call.key(index).arg(prefix).arg(now).arg(batch);
        let ephemeral: i64 = self.eval(&call).await?;
        let keys = [
            self.key(keys::REV_BY_UNTIL),
            self.key(keys::REV_ENTRIES),
            self.key(keys::REV_BY_SEQ),
            self.key(keys::PURGED_THROUGH),
            self.key(keys::SESSIONS_EXP),
            self.key(keys::REFRESH_EXP),
        ];
        let prefix = self.prefix().to_string();
        let mut call = self.inner.scripts.purge.prepare_invoke();
        for key in &keys {
            call.key(key);
        }
        call.arg(&prefix).arg(now).arg(batch);
        let raw: Vec<redis::Value> = self.eval(&call).await?;
        let mut raw = raw.into_iter().map(String::from_redis_value);
        let mut count = || -> Result<usize, StoreError> {
            raw.next()
                .and_then(|value| value.ok())
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| StoreError::Corrupt("purge: bad answer".into()))
        };
        let (revocations, mut refresh_tokens) = (count()?, count()?);
        let ended: Vec<String> = raw
            .collect::<Result<_, _>>()
            .map_err(|_| StoreError::Corrupt("purge: bad answer".into()))?;
        refresh_tokens += self.drop_sessions(&ended).await?;
        let sessions = ended.len();
        let full = [
            usize::try_from(ephemeral).unwrap_or(0),
            revocations,
            sessions,
        ]
        .iter()
        .any(|&removed| removed >= batch);
        Ok((
            Purged {
                revocations,
                sessions,
                refresh_tokens,
            },
            full,
        ))
    }
}
