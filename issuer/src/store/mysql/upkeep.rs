//! The store's upkeep on MySQL: the purge of what expired (revocations and the watermark, then
//! sessions, refresh tokens and pending web logins in batches) and the replicas' reports of
//! their access-token lifetimes. Apart from `ops.rs`, which answers the requests.

use sqlx::mysql::MySqlPool;
use sqlx::Row as _;

use super::ops::{text, to_i64, to_u64, Result};
use super::{Purged, ReportedTtl};
use crate::domain::rules;

/// The lifetimes are rows of `counters` named `access_ttl:<seconds>`, valued when last
/// reported. Each statement stands alone (a report is idempotent and only ever raises a row).
pub(super) async fn report_access_ttl(
    pool: &MySqlPool,
    access_ttl: i64,
    now: i64,
    forget_before: i64,
) -> Result<Vec<ReportedTtl>> {
    let prefix = ReportedTtl::ROW_PREFIX;
    sqlx::query(
        "INSERT INTO counters (name, value) VALUES (?, ?) \
         ON DUPLICATE KEY UPDATE value = GREATEST(value, ?)",
    )
    .bind(ReportedTtl::row_name(access_ttl))
    .bind(now)
    .bind(now)
    .execute(pool)
    .await?;
    // A range of the primary key, so that only the reports are read and locked (a scan of the
    // whole table waited on `purged_through`, which a purge holds).
    sqlx::query("DELETE FROM counters WHERE name >= ? AND name < ? AND value < ?")
        .bind(prefix)
        .bind(prefix_end(prefix))
        .bind(forget_before)
        .execute(pool)
        .await?;
    access_ttls(pool).await
}

/// The first name after every name that starts with `prefix` (an ASCII prefix; the column's
/// collation compares bytes): `name >= prefix AND name < prefix_end(prefix)` is a range of the
/// primary key.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_string();
    if let Some(last) = end.pop() {
        end.push(char::from_u32(u32::from(last) + 1).unwrap_or(char::MAX));
    }
    end
}

/// The lifetimes reported ([`report_access_ttl`]).
pub(super) async fn access_ttls(pool: &MySqlPool) -> Result<Vec<ReportedTtl>> {
    let prefix = ReportedTtl::ROW_PREFIX;
    let rows = sqlx::query("SELECT name, value FROM counters WHERE name >= ? AND name < ?")
        .bind(prefix)
        .bind(prefix_end(prefix))
        .fetch_all(pool)
        .await?;
    let mut reported = Vec::new();
    for row in &rows {
        reported.extend(ReportedTtl::from_row(&text(row, 0)?, row.try_get(1)?));
    }
    Ok(reported)
}

/// The purge's delete of expired refresh tokens (its arguments: now, now less
/// [`crate::config::MAX_REUSE_GRACE`], a row limit): a used one stays the longest grace after its use,
/// for a retry within the grace (deleted, the retry of a rotation made in the token's last
/// seconds read it as unknown: `invalid_grant`, a login again).
pub(super) const PURGE_REFRESH_TOKENS: &str =
    "DELETE FROM refresh_tokens WHERE expires_at < ? AND (used_at IS NULL OR used_at < ?) LIMIT ?";

pub(super) async fn purge(pool: &MySqlPool, now: i64) -> Result<Purged> {
    // In batches too, each with its watermark: one delete of a backlog ran past any bound.
    let revocations = in_batches(|| purge_revocations(pool, now)).await?;
    // Each on its own, by its expiry index, locking only the rows it removes. (A refresh token
    // never outlives its session — its expiry is capped by the session's end — so an expired
    // session's tokens have expired too: no join with `sessions`. Joined, the delete read and
    // locked every refresh token until it committed, and every rotation waited on its token's
    // row, past the lock wait timeout into a 503, at each replica's purge.)
    // In batches, each its own transaction: a day's expired rows in one delete made one long
    // transaction (its undo, one binlog event replicas apply for as long).
    let sessions = delete_in_batches(pool, PURGE_SESSIONS, &[now]).await?;
    let used_before = now.saturating_sub(crate::config::MAX_REUSE_GRACE);
    let refresh_tokens = delete_in_batches(pool, PURGE_REFRESH_TOKENS, &[now, used_before]).await?;
    delete_in_batches(pool, PURGE_EPHEMERAL, &[now]).await?;
    Ok(Purged {
        revocations,
        sessions,
        refresh_tokens,
    })
}

/// One batch of expired revocations — up to [`PURGE_BATCH`] of the lowest seqs, stopping at
/// the first live entry — and the watermark readers compare `since` with, together. Returns
/// how many were removed.
///
/// Only the expired entries below the first live one: the watermark then stays below every
/// live entry. An entry's `until` does not grow with its seq (replicas knowing other
/// lifetimes, a `sub` revocation of tokens issued before a past time, clocks apart): purging
/// every expired entry moved the watermark past live ones, and a reader loading the set in
/// pages, whose next `since` is a live entry's seq below it, was sent the first page again,
/// and again. The expired entries kept behind a live one are not served (the feed leaves out
/// what has expired) and go with it.
async fn purge_revocations(pool: &MySqlPool, now: i64) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let lowest: Vec<(i64, i64)> =
        sqlx::query_as("SELECT seq, until FROM revocations ORDER BY seq LIMIT ?")
            .bind(PURGE_BATCH)
            .fetch_all(&mut *tx)
            .await?;
    let Some(highest) = lowest
        .iter()
        .take_while(|(_, until)| *until < now)
        .map(|(seq, _)| *seq)
        .last()
    else {
        return Ok(0);
    };
    let removed = sqlx::query("DELETE FROM revocations WHERE seq <= ?")
        .bind(highest)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let current: i64 =
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'purged_through' FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let watermark = rules::next_watermark(to_u64(current), Some(to_u64(highest)));
    sqlx::query("UPDATE counters SET value = ? WHERE name = 'purged_through'")
        .bind(to_i64(watermark))
        .execute(&mut *tx)
        .await?;
    // The watermark's row is held only this long: a replica's lifetime report waits on it.
    tx.commit().await?;
    Ok(removed)
}

/// Rows a purge removes per statement ([`delete_in_batches`]).
const PURGE_BATCH: u64 = 5_000;
const PURGE_SESSIONS: &str = "DELETE FROM sessions WHERE expires_at < ? LIMIT ?";
const PURGE_EPHEMERAL: &str = "DELETE FROM ephemeral WHERE expires_at <= ? LIMIT ?";

/// Batches one purge runs per table at most: a backlog (the purge stopped for a while) drains
/// over the next purges, each within the purge's bound (`PURGE_TIMEOUT`) — one purge clearing
/// it all was cut short at that bound and warned of as failed at every run (the Redis store's
/// purge is capped alike).
const PURGE_ROUNDS: u32 = 10;

/// Runs `batch` (its own transaction, returning the rows it removed) until it removes fewer
/// than [`PURGE_BATCH`], at most [`PURGE_ROUNDS`] times; the rows removed in all.
async fn in_batches<F, Fut>(mut batch: F) -> Result<usize>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut removed = 0u64;
    for _ in 0..PURGE_ROUNDS {
        let rows = batch().await?;
        removed = removed.saturating_add(rows);
        if rows < PURGE_BATCH {
            break;
        }
    }
    Ok(usize::try_from(removed).unwrap_or(usize::MAX))
}

/// [`in_batches`] of `delete` (its arguments: `args`, then a row limit).
async fn delete_in_batches(pool: &MySqlPool, delete: &str, args: &[i64]) -> Result<usize> {
    in_batches(|| async {
        let mut query = sqlx::query(delete);
        for arg in args {
            query = query.bind(*arg);
        }
        Ok(query.bind(PURGE_BATCH).execute(pool).await?.rows_affected())
    })
    .await
}
