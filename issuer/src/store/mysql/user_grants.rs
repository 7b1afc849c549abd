//! The grants on MySQL ([`crate::domain::grants`]): a user's scopes and ban, kept in
//! `user_grants` beside the user. Every write first locks the user's row, so writes of one
//! user's grants serialize, and a conditional one ([`set_ban_if`]) compares what it read under
//! that lock. Apart from `ops.rs`, which answers the other requests.

use sqlx::mysql::MySqlPool;
use sqlx::Row as _;

use super::ops::{opt_text, Result, Tx};
use super::{Ban, BanWrite, Grants};
use crate::domain::grants;

pub(super) async fn grants(pool: &MySqlPool, sub: &str) -> Result<Option<Grants>> {
    let Some(row) = sqlx::query(
        "SELECT g.scopes, g.ban_created_at, g.ban_until, g.ban_reason \
         FROM users u LEFT JOIN user_grants g ON g.sub = u.sub WHERE u.sub = ?",
    )
    .bind(sub)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let scopes = opt_text(&row, 0)?;
    Ok(Some(Grants {
        scopes: grants::scopes_from_stored(scopes.as_deref()),
        ban: ban_at(&row, 1)?,
    }))
}

/// The ban in `row`'s columns `first` (`ban_created_at`), `first + 1` (`ban_until`) and
/// `first + 2` (`ban_reason`); none without a `ban_created_at`.
fn ban_at(row: &sqlx::mysql::MySqlRow, first: usize) -> Result<Option<Ban>> {
    let Some(created_at) = row.try_get::<Option<i64>, _>(first)? else {
        return Ok(None);
    };
    Ok(Some(Ban {
        created_at,
        until: row.try_get(first + 1)?,
        reason: opt_text(row, first + 2)?,
    }))
}

/// Locks the user's row; false when there is none (the transaction is then dropped).
async fn lock_user(tx: &mut Tx, sub: &str) -> Result<bool> {
    Ok(sqlx::query("SELECT 1 FROM users WHERE sub = ? FOR UPDATE")
        .bind(sub)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

pub(super) async fn set_scopes(
    pool: &MySqlPool,
    sub: &str,
    scopes: &str,
    now: i64,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    if !lock_user(&mut tx, sub).await? {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO user_grants (sub, scopes, updated_at) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE scopes = ?, updated_at = ?",
    )
    .bind(sub)
    .bind(scopes)
    .bind(now)
    .bind(scopes)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn set_ban(
    pool: &MySqlPool,
    sub: &str,
    ban: Option<&Ban>,
    now: i64,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    if !lock_user(&mut tx, sub).await? {
        return Ok(false);
    }
    write_ban(&mut tx, sub, ban, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// The ban read and compared with `expected` under the user's row lock (which every write of
/// the user's grants takes first), then written.
pub(super) async fn set_ban_if(
    pool: &MySqlPool,
    sub: &str,
    expected: Option<&Ban>,
    ban: Option<&Ban>,
    now: i64,
) -> Result<BanWrite> {
    let mut tx = pool.begin().await?;
    if !lock_user(&mut tx, sub).await? {
        return Ok(BanWrite::UnknownUser);
    }
    // A locking read: the latest committed row, whatever the isolation level.
    let row = sqlx::query(
        "SELECT ban_created_at, ban_until, ban_reason FROM user_grants WHERE sub = ? FOR UPDATE",
    )
    .bind(sub)
    .fetch_optional(&mut *tx)
    .await?;
    let current = match &row {
        Some(row) => ban_at(row, 0)?,
        None => None,
    };
    if current.as_ref() != expected {
        return Ok(BanWrite::Changed);
    }
    write_ban(&mut tx, sub, ban, now).await?;
    tx.commit().await?;
    Ok(BanWrite::Written)
}

/// Writes the user's ban (`None` lifts it) in `tx`, which holds the user's row lock.
async fn write_ban(tx: &mut Tx, sub: &str, ban: Option<&Ban>, now: i64) -> Result<()> {
    let (created_at, until, reason) = match ban {
        Some(ban) => (Some(ban.created_at), ban.until, ban.reason.clone()),
        None => (None, None, None),
    };
    sqlx::query(
        "INSERT INTO user_grants (sub, scopes, ban_created_at, ban_until, ban_reason, updated_at) \
         VALUES (?, '', ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE ban_created_at = ?, ban_until = ?, ban_reason = ?, updated_at = ?",
    )
    .bind(sub)
    .bind(created_at)
    .bind(until)
    .bind(&reason)
    .bind(now)
    .bind(created_at)
    .bind(until)
    .bind(&reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
