//! The operations, one per `Store` method, each one attempt (the caller runs it again after
//! a deadlock). Transactions read the facts they decide on with `FOR UPDATE`; the decisions
//! are [`rules`]'s, as in `sqlite/ops.rs`.

use sqlx::mysql::{MySql, MySqlPool, MySqlRow};
use sqlx::{Row as _, Transaction};
use weauth_token::revocation::{Entry, EntryKind};

use super::{
    CachedToken, FeedSnapshot, KeyRecord, LoginResult, NewLogin, PhonesPage, Revoke, RiskFact,
    Rotate, RotateResult, SessionRecord, UserRecord,
};
use crate::domain::rules::{
    self, FoundUser, LinkCandidates, RefreshDecision, RefreshRow, RevocationFacts,
};

pub(super) type Tx = Transaction<'static, MySql>;
pub(super) type Result<T> = std::result::Result<T, sqlx::Error>;

pub(super) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn decode(err: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(err.to_string().into())
}

// Text columns are read as bytes: with a binary collation (utf8mb4_bin) MariaDB flags them
// BINARY, and the driver then refuses to decode them as `String`.

fn utf8(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(decode)
}

pub(super) fn text(row: &MySqlRow, index: usize) -> Result<String> {
    utf8(row.try_get(index)?)
}

pub(super) fn opt_text(row: &MySqlRow, index: usize) -> Result<Option<String>> {
    row.try_get::<Option<Vec<u8>>, _>(index)?
        .map(utf8)
        .transpose()
}

pub(super) async fn keys(pool: &MySqlPool) -> Result<Vec<KeyRecord>> {
    let rows = sqlx::query(
        "SELECT kid, alg, sealed, created_at, activate_at FROM signing_keys \
         ORDER BY activate_at, kid",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(KeyRecord {
                kid: text(row, 0)?,
                alg: text(row, 1)?,
                sealed: row.try_get(2)?,
                created_at: row.try_get(3)?,
                activate_at: row.try_get(4)?,
            })
        })
        .collect()
}

pub(super) async fn insert_key(
    pool: &MySqlPool,
    key: &KeyRecord,
    only_if_none_active_at: Option<i64>,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    // The `signing_keys` counter row is the lock two first starts serialize on.
    sqlx::query("SELECT value FROM counters WHERE name = 'signing_keys' FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    if let Some(now) = only_if_none_active_at {
        let active: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys WHERE activate_at <= ?")
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
        if active > 0 {
            return Ok(false);
        }
    }
    let exists = sqlx::query("SELECT 1 FROM signing_keys WHERE kid = ?")
        .bind(&key.kid)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, sealed, created_at, activate_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&key.kid)
    .bind(&key.alg)
    .bind(&key.sealed)
    .bind(key.created_at)
    .bind(key.activate_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn erase_keys(pool: &MySqlPool, kids: &[String]) -> Result<()> {
    let mut tx = pool.begin().await?;
    for kid in kids {
        sqlx::query("UPDATE signing_keys SET sealed = ? WHERE kid = ?")
            .bind(Vec::<u8>::new())
            .bind(kid)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

pub(super) async fn code_used(pool: &MySqlPool, code_hash: &str) -> Result<bool> {
    Ok(sqlx::query("SELECT 1 FROM sessions WHERE code_hash = ?")
        .bind(code_hash)
        .fetch_optional(pool)
        .await?
        .is_some())
}

pub(super) async fn discard_session(pool: &MySqlPool, sid: &str) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM refresh_tokens WHERE sid = ?")
        .bind(sid)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM sessions WHERE sid = ?")
        .bind(sid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

pub(super) async fn login(pool: &MySqlPool, login: &NewLogin) -> Result<LoginResult> {
    let mut tx = pool.begin().await?;
    // Locking reads: a racing login with the same code or openid waits here, or deadlocks
    // and is run again; either way it then sees this one's rows.
    let used = sqlx::query("SELECT 1 FROM sessions WHERE code_hash = ? FOR UPDATE")
        .bind(&login.code_hash)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if used {
        return Ok(LoginResult::CodeAlreadyUsed);
    }
    let by_identity = sqlx::query(
        "SELECT u.sub, u.unionid FROM identities i JOIN users u ON u.sub = i.sub \
         WHERE i.appid = ? AND i.openid = ? FOR UPDATE",
    )
    .bind(&login.appid)
    .bind(&login.openid)
    .fetch_optional(&mut *tx)
    .await?
    .map(|row| {
        Ok::<_, sqlx::Error>(FoundUser {
            sub: text(&row, 0)?,
            unionid: opt_text(&row, 1)?,
        })
    })
    .transpose()?;
    let by_unionid: Option<String> = match &login.unionid {
        Some(unionid) => {
            sqlx::query_scalar::<_, Vec<u8>>("SELECT sub FROM users WHERE unionid = ? FOR UPDATE")
                .bind(unionid)
                .fetch_optional(&mut *tx)
                .await?
                .map(utf8)
                .transpose()?
        }
        None => None,
    };
    let candidates = LinkCandidates {
        by_identity,
        by_unionid,
    };
    let link = rules::link_user(&candidates, login.unionid.as_deref(), &login.new_sub);
    if link.create_user {
        sqlx::query("INSERT INTO users (sub, unionid, created_at, updated_at) VALUES (?, ?, ?, ?)")
            .bind(&link.sub)
            .bind(&login.unionid)
            .bind(login.now)
            .bind(login.now)
            .execute(&mut *tx)
            .await?;
    }
    if link.attach_unionid {
        sqlx::query("UPDATE users SET unionid = ?, updated_at = ? WHERE sub = ?")
            .bind(&login.unionid)
            .bind(login.now)
            .bind(&link.sub)
            .execute(&mut *tx)
            .await?;
    }
    if link.create_identity {
        sqlx::query("INSERT INTO identities (appid, openid, sub, created_at) VALUES (?, ?, ?, ?)")
            .bind(&login.appid)
            .bind(&login.openid)
            .bind(&link.sub)
            .bind(login.now)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO sessions (sid, sub, appid, openid, unionid, code_hash, session_key, \
         created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&login.sid)
    .bind(&link.sub)
    .bind(&login.appid)
    .bind(&login.openid)
    .bind(&link.unionid)
    .bind(&login.code_hash)
    .bind(&login.session_key_sealed)
    .bind(login.now)
    .bind(login.session_expires)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) VALUES (?, ?, ?, ?)",
    )
    .bind(&login.refresh_hash)
    .bind(&login.sid)
    .bind(login.now)
    .bind(login.refresh_expires)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(LoginResult::Created {
        sub: link.sub,
        new_user: link.create_user,
        unionid: link.unionid,
    })
}

fn session_from(row: &MySqlRow) -> Result<SessionRecord> {
    Ok(SessionRecord {
        sid: text(row, 0)?,
        sub: text(row, 1)?,
        appid: text(row, 2)?,
        openid: text(row, 3)?,
        unionid: opt_text(row, 4)?,
        created_at: row.try_get(5)?,
        expires_at: row.try_get(6)?,
        revoked_at: row.try_get(7)?,
    })
}

const SESSION_COLUMNS: &str =
    "SELECT sid, sub, appid, openid, unionid, created_at, expires_at, revoked_at FROM sessions";

/// The seq of a new revocation: the `revocation_seq` row, incremented and so locked until
/// this transaction ends (seqs become visible in order). The `revocation_server` row names the
/// server (`@@server_id`) the last revocation was written on: written on another one — a
/// failover, whose new primary may lack the old one's latest revocations, which sidecars
/// may hold — the seq first moves past them ([`rules::seq_after_possible_loss`]).
async fn next_seq(tx: &mut Tx, now: i64) -> Result<i64> {
    // `revocation_seq` locked first, alone: two revocations serialize on it before either
    // reads the server row (which only this function touches, under that lock).
    let (current, server): (i64, i64) = sqlx::query_as(
        "SELECT value, CAST(@@server_id AS SIGNED) FROM counters \
         WHERE name = 'revocation_seq' FOR UPDATE",
    )
    .fetch_one(&mut **tx)
    .await?;
    let last_server: Option<i64> =
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'revocation_server'")
            .fetch_optional(&mut **tx)
            .await?;
    let current = to_u64(current);
    let seq = if last_server == Some(server) {
        current
    } else {
        sqlx::query(
            "INSERT INTO counters (name, value) VALUES ('revocation_server', ?) \
             ON DUPLICATE KEY UPDATE value = ?",
        )
        .bind(server)
        .bind(server)
        .execute(&mut **tx)
        .await?;
        rules::seq_after_possible_loss(current, now.saturating_mul(1000))
    }
    .saturating_add(1);
    let seq = to_i64(seq);
    sqlx::query("UPDATE counters SET value = ? WHERE name = 'revocation_seq'")
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    Ok(seq)
}

/// Moves the revocation seq past any the database may have numbered and lost (a restored
/// backup), at the issuer's start: see [`super::MysqlStore::move_seq_past_possible_loss`].
pub(super) async fn move_seq_past_possible_loss(pool: &MySqlPool, now_ms: i64) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let current: i64 =
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'revocation_seq' FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let moved = rules::seq_after_possible_loss(to_u64(current), now_ms);
    sqlx::query("UPDATE counters SET value = ? WHERE name = 'revocation_seq'")
        .bind(to_i64(moved))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(moved)
}

async fn insert_revocation(
    tx: &mut Tx,
    kind: EntryKind,
    value: &str,
    issued_before: Option<i64>,
    until: i64,
    now: i64,
) -> Result<Entry> {
    let seq = next_seq(tx, now).await?;
    sqlx::query(
        "INSERT INTO revocations (seq, kind, value, issued_before, until, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(kind.name())
    .bind(value)
    .bind(issued_before)
    .bind(until)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(Entry {
        seq: to_u64(seq),
        kind,
        value: value.to_string(),
        issued_before,
        until,
    })
}

/// Writes the successor of a rotation and commits (the presented row is locked). A repeat
/// hands out the successor the first use wrote, as it was written, and writes it only if this
/// store does not hold it (the first use was rotated by a release that drew successors at
/// random).
async fn issue_successor(
    mut tx: Tx,
    rotate: &Rotate,
    sid: &str,
    new_expires: i64,
    repeat: bool,
) -> Result<RotateResult> {
    let held: Option<i64> = if repeat {
        sqlx::query_scalar("SELECT expires_at FROM refresh_tokens WHERE hash = ?")
            .bind(&rotate.new_hash)
            .fetch_optional(&mut *tx)
            .await?
    } else {
        None
    };
    let refresh_expires = match held {
        Some(expires_at) => expires_at,
        None => {
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(&rotate.new_hash)
            .bind(sid)
            .bind(rotate.now)
            .bind(new_expires)
            .execute(&mut *tx)
            .await?;
            new_expires
        }
    };
    let row = sqlx::query(&format!("{SESSION_COLUMNS} WHERE sid = ?"))
        .bind(sid)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| decode("the rotated token's session is missing"))?;
    let session = session_from(&row)?;
    tx.commit().await?;
    Ok(RotateResult::Rotated {
        session,
        refresh_expires,
        repeat,
    })
}

pub(super) async fn rotate_refresh(pool: &MySqlPool, rotate: &Rotate) -> Result<RotateResult> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT r.sid, r.expires_at, r.used_at, s.expires_at, s.revoked_at \
         FROM refresh_tokens r JOIN sessions s ON s.sid = r.sid WHERE r.hash = ? FOR UPDATE",
    )
    .bind(&rotate.presented_hash)
    .fetch_optional(&mut *tx)
    .await?
    .map(|row| {
        Ok::<_, sqlx::Error>(RefreshRow {
            sid: text(&row, 0)?,
            expires_at: row.try_get(1)?,
            used_at: row.try_get(2)?,
            session_expires_at: row.try_get(3)?,
            session_revoked_at: row.try_get(4)?,
        })
    })
    .transpose()?;
    match rules::decide_refresh(
        row.as_ref(),
        rotate.now,
        rotate.refresh_ttl,
        rotate.reuse_grace,
    ) {
        RefreshDecision::Invalid(reason) => Ok(RotateResult::Invalid(reason)),
        RefreshDecision::Reuse { sid } => {
            sqlx::query("UPDATE sessions SET revoked_at = ? WHERE sid = ? AND revoked_at IS NULL")
                .bind(rotate.now)
                .bind(&sid)
                .execute(&mut *tx)
                .await?;
            let entry = insert_revocation(
                &mut tx,
                EntryKind::Sid,
                &sid,
                None,
                rotate.revocation_until,
                rotate.now,
            )
            .await?;
            tx.commit().await?;
            Ok(RotateResult::Reused { sid, entry })
        }
        RefreshDecision::Rotate { sid, new_expires } => {
            // The row is locked: this cannot miss, but the single-use rule stays in the
            // statement itself.
            let consumed = sqlx::query(
                "UPDATE refresh_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL",
            )
            .bind(rotate.now)
            .bind(&rotate.presented_hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if consumed != 1 {
                return Ok(RotateResult::Invalid("refresh token already used"));
            }
            issue_successor(tx, rotate, &sid, new_expires, false).await
        }
        // The presented token stays as used as it was: its grace never slides.
        RefreshDecision::Repeat {
            sid, new_expires, ..
        } => issue_successor(tx, rotate, &sid, new_expires, true).await,
    }
}

pub(super) async fn session(pool: &MySqlPool, sid: &str) -> Result<Option<SessionRecord>> {
    sqlx::query(&format!("{SESSION_COLUMNS} WHERE sid = ?"))
        .bind(sid)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(session_from)
        .transpose()
}

pub(super) async fn session_key_sealed(pool: &MySqlPool, sid: &str) -> Result<Option<Vec<u8>>> {
    let key: Option<Option<Vec<u8>>> =
        sqlx::query_scalar("SELECT session_key FROM sessions WHERE sid = ?")
            .bind(sid)
            .fetch_optional(pool)
            .await?;
    Ok(key.flatten())
}

pub(super) async fn user(pool: &MySqlPool, sub: &str) -> Result<Option<UserRecord>> {
    let Some(row) = sqlx::query(
        "SELECT sub, unionid, phone, created_at, risk_appid, risk_rank, risk_at \
         FROM users WHERE sub = ?",
    )
    .bind(sub)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let risk = match (
        opt_text(&row, 4)?,
        row.try_get::<Option<i32>, _>(5)?,
        row.try_get::<Option<i64>, _>(6)?,
    ) {
        (Some(appid), Some(rank), Some(at)) => Some(RiskFact {
            appid,
            rank: u8::try_from(rank).map_err(decode)?,
            at,
        }),
        _ => None,
    };
    Ok(Some(UserRecord {
        sub: text(&row, 0)?,
        unionid: opt_text(&row, 1)?,
        phone: opt_text(&row, 2)?,
        created_at: row.try_get(3)?,
        risk,
    }))
}

pub(super) async fn refresh_owner(pool: &MySqlPool, hash: &str) -> Result<Option<String>> {
    sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT s.sub FROM refresh_tokens r JOIN sessions s ON s.sid = r.sid WHERE r.hash = ?",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await?
    .map(utf8)
    .transpose()
}

// The driver asks for the rows *matched*, not changed (CLIENT_FOUND_ROWS), so an update that
// writes the values already there still counts.

pub(super) async fn set_phone(
    pool: &MySqlPool,
    sub: &str,
    sealed_phone: Option<&str>,
    now: i64,
) -> Result<bool> {
    let changed = sqlx::query("UPDATE users SET phone = ?, updated_at = ? WHERE sub = ?")
        .bind(sealed_phone)
        .bind(now)
        .bind(sub)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(changed > 0)
}

/// [`crate::store::Store::phones_page`]: by `sub`, the cursor the last one given.
pub(super) async fn phones_page(
    pool: &MySqlPool,
    cursor: &str,
    limit: usize,
) -> Result<PhonesPage> {
    let rows = sqlx::query(
        "SELECT sub, phone FROM users WHERE phone IS NOT NULL AND sub > ? ORDER BY sub LIMIT ?",
    )
    .bind(cursor)
    .bind(limit.max(1) as u64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| Ok((text(row, 0)?, text(row, 1)?)))
    .collect::<Result<Vec<_>>>()?;
    let next = (rows.len() >= limit.max(1))
        .then(|| rows.last().map(|(sub, _)| sub.clone()))
        .flatten();
    Ok((rows, next))
}

/// Matched rows are counted (`CLIENT_FOUND_ROWS`): the guard is in the `WHERE`.
pub(super) async fn reseal_phone(
    pool: &MySqlPool,
    sub: &str,
    expected: &str,
    sealed: &str,
) -> Result<bool> {
    let changed = sqlx::query("UPDATE users SET phone = ? WHERE sub = ? AND phone = ?")
        .bind(sealed)
        .bind(sub)
        .bind(expected)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(changed > 0)
}

pub(super) async fn set_risk(pool: &MySqlPool, sub: &str, fact: &RiskFact) -> Result<bool> {
    let changed = sqlx::query(
        "UPDATE users SET risk_appid = ?, risk_rank = ?, risk_at = ?, updated_at = ? \
         WHERE sub = ?",
    )
    .bind(&fact.appid)
    .bind(i32::from(fact.rank))
    .bind(fact.at)
    .bind(fact.at)
    .bind(sub)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

pub(super) async fn wechat_token(pool: &MySqlPool, appid: &str) -> Result<Option<CachedToken>> {
    sqlx::query(
        "SELECT sealed, hash, expires_at, refresh_at FROM wechat_tokens \
         WHERE appid = ? AND sealed IS NOT NULL AND hash IS NOT NULL",
    )
    .bind(appid)
    .fetch_optional(pool)
    .await?
    .map(|row| {
        Ok(CachedToken {
            sealed: row.try_get(0)?,
            hash: text(&row, 1)?,
            expires_at: row.try_get(2)?,
            refresh_at: row.try_get(3)?,
        })
    })
    .transpose()
}

pub(super) async fn lease_wechat_token(
    pool: &MySqlPool,
    appid: &str,
    holder: &str,
    now: i64,
    lease_until: i64,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO wechat_tokens (appid) VALUES (?) ON DUPLICATE KEY UPDATE appid = appid",
    )
    .bind(appid)
    .execute(&mut *tx)
    .await?;
    let taken = sqlx::query(
        "UPDATE wechat_tokens SET lease_holder = ?, lease_until = ? \
         WHERE appid = ? AND (lease_holder IS NULL OR lease_holder = ? OR lease_until <= ?)",
    )
    .bind(holder)
    .bind(lease_until)
    .bind(appid)
    .bind(holder)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(taken > 0)
}

pub(super) async fn put_wechat_token(
    pool: &MySqlPool,
    appid: &str,
    token: &CachedToken,
    holder: &str,
) -> Result<bool> {
    let written = sqlx::query(
        "UPDATE wechat_tokens SET sealed = ?, hash = ?, expires_at = ?, refresh_at = ?, \
         lease_holder = NULL, lease_until = 0 \
         WHERE appid = ? AND lease_holder = ?",
    )
    .bind(&token.sealed)
    .bind(&token.hash)
    .bind(token.expires_at)
    .bind(token.refresh_at)
    .bind(appid)
    .bind(holder)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(written > 0)
}

pub(super) async fn release_wechat_lease(
    pool: &MySqlPool,
    appid: &str,
    holder: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE wechat_tokens SET lease_holder = NULL, lease_until = 0 \
         WHERE appid = ? AND lease_holder = ?",
    )
    .bind(appid)
    .bind(holder)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn invalidate_wechat_token(
    pool: &MySqlPool,
    appid: &str,
    token_hash: &str,
) -> Result<bool> {
    let changed = sqlx::query(
        "UPDATE wechat_tokens SET sealed = NULL, hash = NULL, expires_at = 0, refresh_at = 0 \
         WHERE appid = ? AND hash = ?",
    )
    .bind(appid)
    .bind(token_hash)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

pub(super) async fn revoke(
    pool: &MySqlPool,
    revoke: &Revoke,
    now: i64,
    until: i64,
) -> Result<Entry> {
    let mut tx = pool.begin().await?;
    let entry = match revoke {
        Revoke::Jti(jti) => {
            insert_revocation(&mut tx, EntryKind::Jti, jti, None, until, now).await?
        }
        Revoke::Sid(sid) => {
            sqlx::query("UPDATE sessions SET revoked_at = ? WHERE sid = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(sid)
                .execute(&mut *tx)
                .await?;
            insert_revocation(&mut tx, EntryKind::Sid, sid, None, until, now).await?
        }
        Revoke::Sub {
            sub,
            issued_before,
            sessions,
        } => {
            // The user's row first: a login of this user locks it (its identity or unionid
            // read), so the two serialize — under READ COMMITTED the sessions read below takes
            // no gap lock, and a login inserting its session after that read and committing
            // before this entry would be in neither (its check after commit sees no entry
            // yet; this revocation sees no session).
            sqlx::query("SELECT 1 FROM users WHERE sub = ? FOR UPDATE")
                .bind(sub)
                .fetch_optional(&mut *tx)
                .await?;
            let live = sqlx::query(
                "SELECT sid, created_at FROM sessions WHERE sub = ? AND revoked_at IS NULL \
                 FOR UPDATE",
            )
            .bind(sub)
            .fetch_all(&mut *tx)
            .await?;
            for row in live {
                let sid = text(&row, 0)?;
                let created_at: i64 = row.try_get(1)?;
                if rules::sub_revocation_covers(*issued_before, *sessions, created_at) {
                    sqlx::query("UPDATE sessions SET revoked_at = ? WHERE sid = ?")
                        .bind(now)
                        .bind(&sid)
                        .execute(&mut *tx)
                        .await?;
                    // Its own entry too (see `Store::revoke`): the session may hold tokens
                    // issued at or after `issued_before`, which the `sub` entry does not cover.
                    let session_until = rules::session_until_of_sub(until, *issued_before, now);
                    insert_revocation(&mut tx, EntryKind::Sid, &sid, None, session_until, now)
                        .await?;
                }
            }
            insert_revocation(
                &mut tx,
                EntryKind::Sub,
                sub,
                Some(*issued_before),
                until,
                now,
            )
            .await?
        }
    };
    tx.commit().await?;
    Ok(entry)
}

pub(super) async fn revocation_facts(
    pool: &MySqlPool,
    jti: &str,
    sid: &str,
    sub: &str,
) -> Result<RevocationFacts> {
    let row = sqlx::query(
        "SELECT \
         CAST(EXISTS (SELECT 1 FROM revocations WHERE value = ? AND kind = 'jti') AS SIGNED), \
         CAST(EXISTS (SELECT 1 FROM revocations WHERE value = ? AND kind = 'sid') AS SIGNED), \
         (SELECT MAX(issued_before) FROM revocations WHERE value = ? AND kind = 'sub'), \
         CAST(EXISTS (SELECT 1 FROM sessions WHERE sid = ? AND revoked_at IS NOT NULL) AS SIGNED)",
    )
    .bind(jti)
    .bind(sid)
    .bind(sub)
    .bind(sid)
    .fetch_one(pool)
    .await?;
    Ok(RevocationFacts {
        jti: row.try_get::<i64, _>(0)? != 0,
        sid: row.try_get::<i64, _>(1)? != 0,
        sub_issued_before: row.try_get(2)?,
        session_revoked: row.try_get::<i64, _>(3)? != 0,
    })
}

async fn counter(executor: &mut sqlx::MySqlConnection, name: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT value FROM counters WHERE name = ?")
            .bind(name)
            .fetch_optional(executor)
            .await?
            .unwrap_or(0),
    )
}

pub(super) async fn feed_snapshot(
    pool: &MySqlPool,
    after: u64,
    now: i64,
    limit: usize,
) -> Result<std::result::Result<FeedSnapshot, String>> {
    // One statement: seq, watermark and rows from the one read view InnoDB gives a statement
    // (READ COMMITTED, the session's level, takes a view per statement). A seq is visible only
    // once its revocation committed, and revocations commit in seq order (the counter's row
    // lock). A REPEATABLE READ transaction did the same in six round trips, and a caller gone
    // between its `SET TRANSACTION` and its `BEGIN` left the level to the connection's next
    // transaction.
    let rows = sqlx::query(
        "SELECT c.cur, c.purged, r.seq, r.kind, r.value, r.issued_before, r.until FROM \
         (SELECT COALESCE((SELECT value FROM counters WHERE name = 'revocation_seq'), 0) AS cur, \
                 COALESCE((SELECT value FROM counters WHERE name = 'purged_through'), 0) AS purged) AS c \
         LEFT JOIN (SELECT seq, kind, value, issued_before, until FROM revocations \
                    WHERE seq > ? AND until >= ? ORDER BY seq LIMIT ?) AS r ON 1 = 1 \
         ORDER BY r.seq",
    )
    .bind(to_i64(after))
    .bind(now)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    let (mut current, mut watermark) = (0, 0);
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        (current, watermark) = (row.try_get(0)?, row.try_get(1)?);
        // No revocation: the counters' one row, the rest NULL.
        let Some(seq) = row.try_get::<Option<i64>, _>(2)? else {
            continue;
        };
        let kind = text(&row, 3)?;
        let Some(kind) = EntryKind::from_name(&kind) else {
            return Ok(Err(format!("revocation kind `{kind}`")));
        };
        entries.push(Entry {
            seq: to_u64(seq),
            kind,
            value: text(&row, 4)?,
            issued_before: row.try_get(5)?,
            until: row.try_get(6)?,
        });
    }
    Ok(Ok(FeedSnapshot {
        current: to_u64(current),
        purged_through: to_u64(watermark),
        entries,
    }))
}

pub(super) async fn current_seq(pool: &MySqlPool) -> Result<u64> {
    let mut conn = pool.acquire().await?;
    Ok(to_u64(counter(&mut conn, "revocation_seq").await?))
}

pub(super) async fn put_ephemeral(
    pool: &MySqlPool,
    key: &str,
    value: &[u8],
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO ephemeral (name, value, expires_at) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE value = ?, expires_at = ?",
    )
    .bind(key)
    .bind(value)
    .bind(expires_at)
    .bind(value)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn take_ephemeral(
    pool: &MySqlPool,
    key: &str,
    now: i64,
) -> Result<Option<Vec<u8>>> {
    // MySQL has no DELETE … RETURNING: the row is read locked, then deleted; a second taker
    // waits on the lock and then finds nothing.
    let mut tx = pool.begin().await?;
    let Some(row) =
        sqlx::query("SELECT value, expires_at FROM ephemeral WHERE name = ? FOR UPDATE")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(None);
    };
    let value: Vec<u8> = row.try_get(0)?;
    let expires_at: i64 = row.try_get(1)?;
    sqlx::query("DELETE FROM ephemeral WHERE name = ?")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((expires_at > now).then_some(value))
}
