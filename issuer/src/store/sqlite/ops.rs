//! The blocking operations, one per `Store` method, each on the locked connection.
use super::*;

pub(super) fn put_ephemeral(
    conn: &mut Connection,
    key: &str,
    value: &[u8],
    expires_at: i64,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "INSERT INTO ephemeral (key, value, expires_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        params![key, value, expires_at],
    )
    .map(|_| ())
    .map_err(db_err)
}

pub(super) fn take_ephemeral(
    conn: &mut Connection,
    key: &str,
    now: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    // DELETE … RETURNING is one statement: of two takers exactly one gets the row.
    let taken: Option<(Vec<u8>, i64)> = conn
        .query_row_cached(
            "DELETE FROM ephemeral WHERE key = ?1 RETURNING value, expires_at",
            [key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    Ok(taken.and_then(|(value, expires_at)| (expires_at > now).then_some(value)))
}

pub(super) fn ping(conn: &mut Connection) -> Result<(), StoreError> {
    conn.query_row_cached("SELECT 1", [], |_| Ok(()))
        .map_err(db_err)
}

pub(super) fn keys(conn: &mut Connection) -> Result<Vec<KeyRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT kid, alg, sealed, created_at, activate_at FROM signing_keys ORDER BY activate_at, kid")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |row| {
            Ok(KeyRecord {
                kid: row.get(0)?,
                alg: row.get(1)?,
                sealed: row.get(2)?,
                created_at: row.get(3)?,
                activate_at: row.get(4)?,
            })
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

pub(super) fn insert_key(
    conn: &mut Connection,
    key: &KeyRecord,
    only_if_none_active_at: Option<i64>,
) -> Result<bool, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    if let Some(now) = only_if_none_active_at {
        let active: i64 = tx
            .query_row_cached(
                "SELECT COUNT(*) FROM signing_keys WHERE activate_at <= ?1",
                [now],
                |row| row.get(0),
            )
            .map_err(db_err)?;
        if active > 0 {
            return Ok(false);
        }
    }
    let inserted = tx
        .execute_cached(
            "INSERT OR IGNORE INTO signing_keys (kid, alg, sealed, created_at, activate_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.kid, key.alg, key.sealed, key.created_at, key.activate_at],
        )
        .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(inserted == 1)
}

pub(super) fn erase_keys(conn: &mut Connection, kids: &[String]) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(db_err)?;
    for kid in kids {
        tx.execute_cached(
            "UPDATE signing_keys SET sealed = ?1 WHERE kid = ?2",
            params![Vec::<u8>::new(), kid],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

pub(super) fn code_used(conn: &mut Connection, code_hash: &str) -> Result<bool, StoreError> {
    conn.query_row_cached(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE code_hash = ?1)",
        [code_hash],
        |row| row.get(0),
    )
    .map_err(db_err)
}

pub(super) fn login(conn: &mut Connection, login: &NewLogin) -> Result<LoginResult, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let used: bool = tx
        .query_row_cached(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE code_hash = ?1)",
            [&login.code_hash],
            |row| row.get(0),
        )
        .map_err(db_err)?;
    if used {
        return Ok(LoginResult::CodeAlreadyUsed);
    }
    let by_identity = tx
        .query_row_cached(
            "SELECT u.sub, u.unionid FROM identities i JOIN users u ON u.sub = i.sub \
             WHERE i.appid = ?1 AND i.openid = ?2",
            params![login.appid, login.openid],
            |row| {
                Ok(FoundUser {
                    sub: row.get(0)?,
                    unionid: row.get(1)?,
                })
            },
        )
        .optional()
        .map_err(db_err)?;
    let by_unionid: Option<String> = match &login.unionid {
        Some(unionid) => tx
            .query_row_cached(
                "SELECT sub FROM users WHERE unionid = ?1",
                [unionid],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_err)?,
        None => None,
    };
    let candidates = LinkCandidates {
        by_identity,
        by_unionid,
    };
    let link = rules::link_user(&candidates, login.unionid.as_deref(), &login.new_sub);
    if link.create_user {
        tx.execute_cached(
            "INSERT INTO users (sub, unionid, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
            params![link.sub, login.unionid, login.now],
        )
        .map_err(db_err)?;
    }
    if link.attach_unionid {
        tx.execute_cached(
            "UPDATE users SET unionid = ?1, updated_at = ?3 WHERE sub = ?2",
            params![login.unionid, link.sub, login.now],
        )
        .map_err(db_err)?;
    }
    if link.create_identity {
        tx.execute_cached(
            "INSERT INTO identities (appid, openid, sub, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![login.appid, login.openid, link.sub, login.now],
        )
        .map_err(db_err)?;
    }
    tx.execute_cached(
        "INSERT INTO sessions (sid, sub, appid, openid, unionid, code_hash, session_key, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            login.sid,
            link.sub,
            login.appid,
            login.openid,
            link.unionid,
            login.code_hash,
            login.session_key_sealed,
            login.now,
            login.session_expires
        ],
    )
    .map_err(db_err)?;
    tx.execute_cached(
        "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            login.refresh_hash,
            login.sid,
            login.now,
            login.refresh_expires
        ],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(LoginResult::Created {
        sub: link.sub,
        new_user: link.create_user,
        unionid: link.unionid,
    })
}

pub(super) fn discard_session(conn: &mut Connection, sid: &str) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute_cached("DELETE FROM refresh_tokens WHERE sid = ?1", [sid])
        .map_err(db_err)?;
    tx.execute_cached("DELETE FROM sessions WHERE sid = ?1", [sid])
        .map_err(db_err)?;
    tx.commit().map_err(db_err)
}

pub(super) fn rotate_refresh(
    conn: &mut Connection,
    rotate: &Rotate,
) -> Result<RotateResult, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let row: Option<RefreshRow> = tx
        .query_row_cached(
            "SELECT r.sid, r.expires_at, r.used_at, s.expires_at, s.revoked_at \
             FROM refresh_tokens r JOIN sessions s ON s.sid = r.sid WHERE r.hash = ?1",
            [&rotate.presented_hash],
            |row| {
                Ok(RefreshRow {
                    sid: row.get(0)?,
                    expires_at: row.get(1)?,
                    used_at: row.get(2)?,
                    session_expires_at: row.get(3)?,
                    session_revoked_at: row.get(4)?,
                })
            },
        )
        .optional()
        .map_err(db_err)?;
    match rules::decide_refresh(
        row.as_ref(),
        rotate.now,
        rotate.refresh_ttl,
        rotate.reuse_grace,
    ) {
        RefreshDecision::Invalid(reason) => Ok(RotateResult::Invalid(reason)),
        RefreshDecision::Reuse { sid } => {
            tx.execute_cached(
                "UPDATE sessions SET revoked_at = ?2 WHERE sid = ?1 AND revoked_at IS NULL",
                params![sid, rotate.now],
            )
            .map_err(db_err)?;
            let entry = insert_revocation(
                &tx,
                EntryKind::Sid,
                &sid,
                None,
                rotate.revocation_until,
                rotate.now,
            )?;
            tx.commit().map_err(db_err)?;
            Ok(RotateResult::Reused { sid, entry })
        }
        RefreshDecision::Rotate { sid, new_expires } => {
            // Conditional: only an unused token is consumed. Under BEGIN IMMEDIATE this
            // cannot miss, but it keeps the single-use rule in the statement itself.
            let consumed = tx
                .execute_cached(
                    "UPDATE refresh_tokens SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL",
                    params![rotate.presented_hash, rotate.now],
                )
                .map_err(db_err)?;
            if consumed != 1 {
                return Ok(RotateResult::Invalid("refresh token already used"));
            }
            issue_successor(tx, rotate, &sid, new_expires, false)
        }
        // The presented token stays as used as it was: its grace never slides.
        RefreshDecision::Repeat {
            sid, new_expires, ..
        } => issue_successor(tx, rotate, &sid, new_expires, true),
    }
}

pub(super) fn session(
    conn: &mut Connection,
    sid: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    read_session(conn, sid)
}

pub(super) fn session_key_sealed(
    conn: &mut Connection,
    sid: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    conn.query_row_cached(
        "SELECT session_key FROM sessions WHERE sid = ?1",
        [sid],
        |row| row.get::<_, Option<Vec<u8>>>(0),
    )
    .optional()
    .map(Option::flatten)
    .map_err(db_err)
}

pub(super) fn user(conn: &mut Connection, sub: &str) -> Result<Option<UserRecord>, StoreError> {
    conn.query_row_cached(
        "SELECT sub, unionid, phone, created_at, risk_appid, risk_rank, risk_at \
         FROM users WHERE sub = ?1",
        [sub],
        |row| {
            let risk = match (
                row.get::<_, Option<String>>(4)?,
                row.get::<_, Option<u8>>(5)?,
                row.get::<_, Option<i64>>(6)?,
            ) {
                (Some(appid), Some(rank), Some(at)) => Some(RiskFact { appid, rank, at }),
                _ => None,
            };
            Ok(UserRecord {
                sub: row.get(0)?,
                unionid: row.get(1)?,
                phone: row.get(2)?,
                created_at: row.get(3)?,
                risk,
            })
        },
    )
    .optional()
    .map_err(db_err)
}

pub(super) fn grants(conn: &mut Connection, sub: &str) -> Result<Option<Grants>, StoreError> {
    read_grants(conn, sub)
}

/// The user's grants, read on `conn` (inside the caller's transaction, if any).
fn read_grants(conn: &Connection, sub: &str) -> Result<Option<Grants>, StoreError> {
    conn.query_row_cached(
        "SELECT g.scopes, g.ban_created_at, g.ban_until, g.ban_reason \
         FROM users u LEFT JOIN user_grants g ON g.sub = u.sub WHERE u.sub = ?1",
        [sub],
        |row| {
            let scopes: Option<String> = row.get(0)?;
            let ban_created_at: Option<i64> = row.get(1)?;
            Ok(Grants {
                scopes: grants::scopes_from_stored(scopes.as_deref()),
                ban: match ban_created_at {
                    Some(created_at) => Some(Ban {
                        created_at,
                        until: row.get(2)?,
                        reason: row.get(3)?,
                    }),
                    None => None,
                },
            })
        },
    )
    .optional()
    .map_err(db_err)
}

/// Runs `write` (an upsert of `user_grants`) only when the user exists, in one
/// transaction; returns whether it ran.
fn with_user(
    conn: &mut Connection,
    sub: &str,
    write: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<usize>,
) -> Result<bool, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let exists = tx
        .query_row_cached("SELECT 1 FROM users WHERE sub = ?1", [sub], |_| Ok(()))
        .optional()
        .map_err(db_err)?
        .is_some();
    if exists {
        write(&tx).map_err(db_err)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(exists)
}

pub(super) fn set_scopes(
    conn: &mut Connection,
    sub: &str,
    scopes: &str,
    now: i64,
) -> Result<bool, StoreError> {
    with_user(conn, sub, |tx| {
        tx.execute_cached(
            "INSERT INTO user_grants (sub, scopes, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (sub) DO UPDATE SET scopes = excluded.scopes, updated_at = excluded.updated_at",
            params![sub, scopes, now],
        )
    })
}

pub(super) fn set_ban(
    conn: &mut Connection,
    sub: &str,
    ban: Option<&Ban>,
    now: i64,
) -> Result<bool, StoreError> {
    with_user(conn, sub, |tx| write_ban(tx, sub, ban, now))
}

/// Writes the user's ban (`None` lifts it); the caller knows the user exists.
fn write_ban(
    tx: &rusqlite::Transaction<'_>,
    sub: &str,
    ban: Option<&Ban>,
    now: i64,
) -> rusqlite::Result<usize> {
    let (created_at, until, reason) = match ban {
        Some(ban) => (Some(ban.created_at), ban.until, ban.reason.clone()),
        None => (None, None, None),
    };
    tx.execute_cached(
        "INSERT INTO user_grants (sub, ban_created_at, ban_until, ban_reason, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (sub) DO UPDATE SET ban_created_at = excluded.ban_created_at, \
         ban_until = excluded.ban_until, ban_reason = excluded.ban_reason, \
         updated_at = excluded.updated_at",
        params![sub, created_at, until, reason, now],
    )
}

/// The ban read and compared with `expected` under the write lock (`BEGIN IMMEDIATE`), then
/// written: no other writer comes between.
pub(super) fn set_ban_if(
    conn: &mut Connection,
    sub: &str,
    expected: Option<&Ban>,
    ban: Option<&Ban>,
    now: i64,
) -> Result<BanWrite, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let Some(current) = read_grants(&tx, sub)? else {
        return Ok(BanWrite::UnknownUser);
    };
    if current.ban.as_ref() != expected {
        return Ok(BanWrite::Changed);
    }
    write_ban(&tx, sub, ban, now).map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(BanWrite::Written)
}

pub(super) fn refresh_owner(
    conn: &mut Connection,
    hash: &str,
) -> Result<Option<String>, StoreError> {
    conn.query_row_cached(
        "SELECT s.sub FROM refresh_tokens r JOIN sessions s ON s.sid = r.sid WHERE r.hash = ?1",
        [hash],
        |row| row.get(0),
    )
    .optional()
    .map_err(db_err)
}

pub(super) fn set_phone(
    conn: &mut Connection,
    sub: &str,
    sealed_phone: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let changed = conn
        .execute_cached(
            "UPDATE users SET phone = ?2, updated_at = ?3 WHERE sub = ?1",
            params![sub, sealed_phone, now],
        )
        .map_err(db_err)?;
    Ok(changed > 0)
}

/// [`crate::store::Store::phones_page`]: by `sub`, the cursor the last one given.
pub(super) fn phones_page(
    conn: &mut Connection,
    cursor: &str,
    limit: usize,
) -> Result<PhonesPage, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT sub, phone FROM users WHERE phone IS NOT NULL AND sub > ?1 \
             ORDER BY sub LIMIT ?2",
        )
        .map_err(db_err)?;
    let rows = statement
        .query_map(params![cursor, limit.max(1) as i64], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    let next = (rows.len() >= limit.max(1))
        .then(|| rows.last().map(|(sub, _)| sub.clone()))
        .flatten();
    Ok((rows, next))
}

pub(super) fn reseal_phone(
    conn: &mut Connection,
    sub: &str,
    expected: &str,
    sealed: &str,
) -> Result<bool, StoreError> {
    let changed = conn
        .execute_cached(
            "UPDATE users SET phone = ?3 WHERE sub = ?1 AND phone = ?2",
            params![sub, expected, sealed],
        )
        .map_err(db_err)?;
    Ok(changed > 0)
}

pub(super) fn set_risk(
    conn: &mut Connection,
    sub: &str,
    fact: &RiskFact,
) -> Result<bool, StoreError> {
    let changed = conn
        .execute_cached(
            "UPDATE users SET risk_appid = ?2, risk_rank = ?3, risk_at = ?4, updated_at = ?4 \
             WHERE sub = ?1",
            params![sub, fact.appid, fact.rank, fact.at],
        )
        .map_err(db_err)?;
    Ok(changed > 0)
}

pub(super) fn wechat_token(
    conn: &mut Connection,
    appid: &str,
) -> Result<Option<CachedToken>, StoreError> {
    conn.query_row_cached(
        "SELECT sealed, hash, expires_at, refresh_at FROM wechat_tokens \
             WHERE appid = ?1 AND sealed IS NOT NULL AND hash IS NOT NULL",
        [appid],
        |row| {
            Ok(CachedToken {
                sealed: row.get(0)?,
                hash: row.get(1)?,
                expires_at: row.get(2)?,
                refresh_at: row.get(3)?,
            })
        },
    )
    .optional()
    .map_err(db_err)
}

pub(super) fn lease_wechat_token(
    conn: &mut Connection,
    appid: &str,
    holder: &str,
    now: i64,
    lease_until: i64,
) -> Result<bool, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute_cached(
        "INSERT OR IGNORE INTO wechat_tokens (appid) VALUES (?1)",
        [appid],
    )
    .map_err(db_err)?;
    let taken = tx
        .execute_cached(
            "UPDATE wechat_tokens SET lease_holder = ?2, lease_until = ?4 \
             WHERE appid = ?1 AND (lease_holder IS NULL OR lease_holder = ?2 OR lease_until <= ?3)",
            params![appid, holder, now, lease_until],
        )
        .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(taken > 0)
}

pub(super) fn put_wechat_token(
    conn: &mut Connection,
    appid: &str,
    token: &CachedToken,
    holder: &str,
) -> Result<bool, StoreError> {
    let written = conn
        .execute_cached(
            "UPDATE wechat_tokens SET sealed = ?2, hash = ?3, expires_at = ?4, refresh_at = ?5, \
             lease_holder = NULL, lease_until = 0 \
             WHERE appid = ?1 AND lease_holder = ?6",
            params![
                appid,
                token.sealed,
                token.hash,
                token.expires_at,
                token.refresh_at,
                holder
            ],
        )
        .map_err(db_err)?;
    Ok(written > 0)
}

pub(super) fn release_wechat_lease(
    conn: &mut Connection,
    appid: &str,
    holder: &str,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE wechat_tokens SET lease_holder = NULL, lease_until = 0 \
             WHERE appid = ?1 AND lease_holder = ?2",
        params![appid, holder],
    )
    .map_err(db_err)?;
    Ok(())
}

pub(super) fn invalidate_wechat_token(
    conn: &mut Connection,
    appid: &str,
    token_hash: &str,
) -> Result<bool, StoreError> {
    let changed = conn
        .execute_cached(
            "UPDATE wechat_tokens SET sealed = NULL, hash = NULL, expires_at = 0, refresh_at = 0 \
             WHERE appid = ?1 AND hash = ?2",
            params![appid, token_hash],
        )
        .map_err(db_err)?;
    Ok(changed > 0)
}

pub(super) fn revoke(
    conn: &mut Connection,
    revoke: &Revoke,
    now: i64,
    until: i64,
) -> Result<Entry, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let entry = match revoke {
        Revoke::Jti(jti) => insert_revocation(&tx, EntryKind::Jti, jti, None, until, now)?,
        Revoke::Sid(sid) => {
            tx.execute_cached(
                "UPDATE sessions SET revoked_at = ?2 WHERE sid = ?1 AND revoked_at IS NULL",
                params![sid, now],
            )
            .map_err(db_err)?;
            insert_revocation(&tx, EntryKind::Sid, sid, None, until, now)?
        }
        Revoke::Sub {
            sub,
            issued_before,
            sessions,
        } => {
            let live: Vec<(String, i64)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT sid, created_at FROM sessions WHERE sub = ?1 AND revoked_at IS NULL",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([sub], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            };
            for (sid, created_at) in live {
                if rules::sub_revocation_covers(*issued_before, *sessions, created_at) {
                    tx.execute_cached(
                        "UPDATE sessions SET revoked_at = ?2 WHERE sid = ?1",
                        params![sid, now],
                    )
                    .map_err(db_err)?;
                    // Its own entry too (see `Store::revoke`): the session may hold tokens
                    // issued at or after `issued_before`, which the `sub` entry does not cover.
                    let session_until = rules::session_until_of_sub(until, *issued_before, now);
                    insert_revocation(&tx, EntryKind::Sid, &sid, None, session_until, now)?;
                }
            }
            insert_revocation(&tx, EntryKind::Sub, sub, Some(*issued_before), until, now)?
        }
    };
    tx.commit().map_err(db_err)?;
    Ok(entry)
}

pub(super) fn revocation_facts(
    conn: &mut Connection,
    jti: &str,
    sid: &str,
    sub: &str,
) -> Result<RevocationFacts, StoreError> {
    conn.query_row_cached(
        "SELECT EXISTS (SELECT 1 FROM revocations WHERE value = ?1 AND kind = 'jti'), \
         EXISTS (SELECT 1 FROM revocations WHERE value = ?2 AND kind = 'sid'), \
         (SELECT MAX(issued_before) FROM revocations WHERE value = ?3 AND kind = 'sub'), \
         EXISTS (SELECT 1 FROM sessions WHERE sid = ?2 AND revoked_at IS NOT NULL)",
        params![jti, sid, sub],
        |row| {
            Ok(RevocationFacts {
                jti: row.get(0)?,
                sid: row.get(1)?,
                sub_issued_before: row.get(2)?,
                session_revoked: row.get(3)?,
            })
        },
    )
    .map_err(db_err)
}

pub(super) fn feed_snapshot(
    conn: &mut Connection,
    after: u64,
    now: i64,
    limit: usize,
) -> Result<FeedSnapshot, StoreError> {
    // A read transaction: seq, watermark and rows from one snapshot.
    let tx = conn.transaction().map_err(db_err)?;
    let current = read_current_seq(&tx)?;
    let watermark: i64 = tx
        .query_row_cached(
            "SELECT COALESCE((SELECT value FROM meta WHERE key = 'purged_through'), 0)",
            [],
            |row| row.get(0),
        )
        .map_err(db_err)?;
    let entries = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT seq, kind, value, issued_before, until FROM revocations \
                 WHERE seq > ?1 AND until >= ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(
                params![to_i64(after), now, i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<i64>>(3)?,
                        row.get::<_, i64>(4)?,
                    ))
                },
            )
            .map_err(db_err)?;
        let mut entries = Vec::new();
        for row in rows {
            let (seq, kind, value, issued_before, until) = row.map_err(db_err)?;
            entries.push(Entry {
                seq: to_u64(seq),
                kind: parse_kind(&kind)?,
                value,
                issued_before,
                until,
            });
        }
        entries
    };
    tx.commit().map_err(db_err)?;
    Ok(FeedSnapshot {
        current,
        purged_through: to_u64(watermark),
        entries,
    })
}

pub(super) fn current_seq(conn: &mut Connection) -> Result<u64, StoreError> {
    read_current_seq(conn)
}

pub(super) fn move_seq_past_possible_loss(
    conn: &mut Connection,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let current = read_current_seq(&tx)?;
    let moved = rules::seq_after_possible_loss(current, now_ms);
    tx.execute_cached(
        "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'revocations'",
        params![to_i64(moved)],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(moved)
}

/// The lifetimes are rows of `meta` named `access_ttl:<seconds>`, valued when last reported.
pub(super) fn report_access_ttl(
    conn: &mut Connection,
    access_ttl: i64,
    now: i64,
    forget_before: i64,
) -> Result<Vec<ReportedTtl>, StoreError> {
    let prefix = ReportedTtl::ROW_PREFIX;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
        params![ReportedTtl::row_name(access_ttl), now],
    )
    .map_err(db_err)?;
    tx.execute_cached(
        "DELETE FROM meta WHERE substr(key, 1, ?1) = ?2 AND value < ?3",
        params![prefix.len(), prefix, forget_before],
    )
    .map_err(db_err)?;
    let reported = access_ttls(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(reported)
}

/// The lifetimes reported ([`report_access_ttl`]); a read, in its own implicit transaction
/// when `conn` is not in one.
pub(super) fn access_ttls(conn: &Connection) -> Result<Vec<ReportedTtl>, StoreError> {
    let prefix = ReportedTtl::ROW_PREFIX;
    let mut statement = conn
        .prepare("SELECT key, value FROM meta WHERE substr(key, 1, ?1) = ?2")
        .map_err(db_err)?;
    let rows = statement
        .query_map(params![prefix.len(), prefix], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(db_err)?;
    let mut reported = Vec::new();
    for row in rows {
        let (name, reported_at) = row.map_err(db_err)?;
        reported.extend(ReportedTtl::from_row(&name, reported_at));
    }
    Ok(reported)
}

/// The rows a purge removes in one transaction from a table of [`PURGED_BY_EXPIRY`].
pub(super) const PURGE_BATCH: usize = 5_000;

/// A table the purge empties of expired rows, batch by batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExpiringTable {
    Sessions,
    RefreshTokens,
    Ephemeral,
}

/// In this order. (A refresh token never outlives its session — its expiry is capped by the
/// session's end — so an expired session's tokens have expired too.)
pub(super) const PURGED_BY_EXPIRY: [ExpiringTable; 3] = [
    ExpiringTable::Sessions,
    ExpiringTable::RefreshTokens,
    ExpiringTable::Ephemeral,
];

impl ExpiringTable {
    /// Deletes up to `?2` rows expired at `?1`, found by the table's expiry index.
    pub(super) fn delete_batch(self) -> &'static str {
        match self {
            ExpiringTable::Sessions => {
                "DELETE FROM sessions WHERE sid IN \
                 (SELECT sid FROM sessions WHERE expires_at < ?1 LIMIT ?2)"
            }
            // A used one stays the longest reuse grace (`config::MAX_REUSE_GRACE`, 60 s) after
            // its use, for a retry within the grace of a rotation in the token's last seconds.
            ExpiringTable::RefreshTokens => {
                "DELETE FROM refresh_tokens WHERE hash IN \
                 (SELECT hash FROM refresh_tokens WHERE expires_at < ?1 \
                  AND (used_at IS NULL OR used_at < ?1 - 60) LIMIT ?2)"
            }
            ExpiringTable::Ephemeral => {
                "DELETE FROM ephemeral WHERE key IN \
                 (SELECT key FROM ephemeral WHERE expires_at <= ?1 LIMIT ?2)"
            }
        }
    }
}

/// One batch of the purge's expired rows of `table` ([`PURGE_BATCH`] at most): how many.
pub(super) fn purge_expired_batch(
    conn: &mut Connection,
    table: ExpiringTable,
    now: i64,
) -> Result<usize, StoreError> {
    conn.execute_cached(table.delete_batch(), params![now, PURGE_BATCH as i64])
        .map_err(db_err)
}

/// The lowest seq of the revocations live at `?1` (`until` not passed): read in seq order, it
/// stops at the first live entry, having visited only the expired ones before it — the ones
/// the purge removes. (The expiry index would visit every live entry.)
pub(super) const PURGE_REVOCATIONS_FIRST_LIVE: &str =
    "SELECT seq FROM revocations NOT INDEXED WHERE until >= ?1 ORDER BY seq LIMIT 1";
/// The highest seq below `?1`.
pub(super) const PURGE_REVOCATIONS_HIGHEST: &str =
    "SELECT MAX(seq) FROM revocations WHERE seq < ?1";
/// The revocations below `?1` (all expired: `?1` is the first live one).
pub(super) const PURGE_REVOCATIONS: &str = "DELETE FROM revocations WHERE seq < ?1";

/// The expired revocations, and the watermark readers compare `since` with, together.
pub(super) fn purge_revocations(conn: &mut Connection, now: i64) -> Result<Purged, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    // Only the expired entries below the first live one, in seq order: the watermark then
    // stays below every live entry. An entry's `until` does not grow with its seq (replicas
    // knowing other lifetimes, a `sub` revocation of tokens issued before a past time, clocks
    // apart): purging every expired entry moved the watermark past live ones, and a reader
    // loading the set in pages, whose next `since` is a live entry's seq below it, was sent
    // the first page again, and again. The expired entries kept behind a live one are not
    // served (the feed leaves out what has expired) and go with it.
    let first_live: Option<i64> = tx
        .query_row_cached(PURGE_REVOCATIONS_FIRST_LIVE, [now], |row| row.get(0))
        .optional()
        .map_err(db_err)?;
    let bound = first_live.unwrap_or(i64::MAX);
    let highest: Option<i64> = tx
        .query_row_cached(PURGE_REVOCATIONS_HIGHEST, [bound], |row| row.get(0))
        .map_err(db_err)?;
    let mut purged = Purged::default();
    if let Some(highest) = highest {
        purged.revocations = tx
            .execute_cached(PURGE_REVOCATIONS, [bound])
            .map_err(db_err)?;
        let current: i64 = tx
            .query_row_cached(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'purged_through'), 0)",
                [],
                |row| row.get(0),
            )
            .map_err(db_err)?;
        let watermark = rules::next_watermark(to_u64(current), Some(to_u64(highest)));
        tx.execute_cached(
            "INSERT INTO meta (key, value) VALUES ('purged_through', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [to_i64(watermark)],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(purged)
}
