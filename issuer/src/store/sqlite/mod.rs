//! The embedded SQLite store (`WEAUTH_STORE=sqlite://PATH`).
//!
//! WAL journal, `synchronous=FULL` (a committed login or revocation survives power loss), a
//! busy timeout so several processes may share the file, and `BEGIN IMMEDIATE` for every
//! read-modify-write so two writers (threads or processes) serialize instead of racing.
//! Revocation `seq` is an `AUTOINCREMENT` rowid: never reused, never decreasing, across
//! restarts and purges (SQLite keeps the high-water mark in `sqlite_sequence`), and past a
//! backup restored over the file: each start of the issuer moves it on by [`crate::domain::rules::SEQ_GAP`]
//! ([`SqliteStore::move_seq_past_possible_loss`]).
//!
//! The schema is versioned: [`MIGRATIONS`] are applied in order from the file's `user_version`
//! (each in its own transaction, re-checked under the write lock so two processes starting
//! together migrate once); a file written by a newer issuer is refused at start.
//!
//! The decisions (refresh verdict, user linking, `sub` coverage, revocation facts, watermark)
//! come from [`crate::domain::rules`]; this module finds the facts inside a transaction and writes the
//! outcome. One connection behind a mutex, used from tokio's blocking pool: every async method
//! hands its work to [`SqliteStore::run`], so callers never block the async threads.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use weauth_token::revocation::{Entry, EntryKind};

use super::{
    Ban, BanWrite, CachedToken, FeedSnapshot, Grants, KeyRecord, LoginResult, NewLogin, PhonesPage,
    Purged, ReportedTtl, Revoke, RiskFact, Rotate, RotateResult, SessionRecord, Store, StoreError,
    UserRecord,
};
use crate::domain::grants;
use crate::domain::rules::{
    self, FoundUser, LinkCandidates, RefreshDecision, RefreshRow, RevocationFacts,
};

mod ops;

/// The migrations, in order (`migrations/vN.sql`): the schema version of a file is the number
/// of them applied (`PRAGMA user_version`). Append only; never edit a published one.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/v1.sql"),
    include_str!("migrations/v2.sql"),
    include_str!("migrations/v3.sql"),
    include_str!("migrations/v4.sql"),
    include_str!("migrations/v5.sql"),
    include_str!("migrations/v6.sql"),
];

/// Applies the migrations the file lacks; refuses a file from a newer issuer.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let latest = MIGRATIONS.len();
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| err.to_string())?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|err| err.to_string())?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > latest {
            return Err(format!(
                "the database has schema version {version}, written by a newer weauth-issuer; this one knows up to {latest}"
            ));
        }
        if version > index {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|err| format!("migration to schema version {}: {err}", index + 1))?;
        tx.pragma_update(None, "user_version", index + 1)
            .map_err(|err| err.to_string())?;
        tx.commit().map_err(|err| err.to_string())?;
    }
    Ok(())
}

/// The SQLite implementation of [`Store`]. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn db_err(err: rusqlite::Error) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            StoreError::Busy(Box::new(err))
        }
        _ => StoreError::Backend(Box::new(err)),
    }
}

fn parse_kind(text: &str) -> Result<EntryKind, StoreError> {
    EntryKind::from_name(text)
        .ok_or_else(|| StoreError::Corrupt(format!("revocation kind `{text}`")))
}

/// `execute` and `query_row` through the connection's statement cache: rusqlite's own prepare
/// the statement anew at every call (parse and plan it), on the one connection every request
/// of the replica waits for.
trait Cached {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Statements kept prepared: every one the store runs, with room.
const STATEMENT_CACHE: usize = 96;

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn insert_revocation(
    tx: &rusqlite::Transaction<'_>,
    kind: EntryKind,
    value: &str,
    issued_before: Option<i64>,
    until: i64,
    now: i64,
) -> Result<Entry, StoreError> {
    tx.execute_cached(
        "INSERT INTO revocations (kind, value, issued_before, until, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![kind.name(), value, issued_before, until, now],
    )
    .map_err(db_err)?;
    Ok(Entry {
        seq: to_u64(tx.last_insert_rowid()),
        kind,
        value: value.to_string(),
        issued_before,
        until,
    })
}

/// Writes the successor of a rotation and commits: the presented row was read joined to its
/// session in this transaction. A repeat hands out the successor the first use wrote, as it
/// was written, and writes it only if this store does not hold it (the first use was rotated
/// by a release that drew successors at random).
fn issue_successor(
    tx: rusqlite::Transaction<'_>,
    rotate: &Rotate,
    sid: &str,
    new_expires: i64,
    repeat: bool,
) -> Result<RotateResult, StoreError> {
    let held: Option<i64> = if repeat {
        tx.query_row_cached(
            "SELECT expires_at FROM refresh_tokens WHERE hash = ?1",
            [&rotate.new_hash],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_err)?
    } else {
        None
    };
    let refresh_expires = match held {
        Some(expires_at) => expires_at,
        None => {
            tx.execute_cached(
                "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![rotate.new_hash, sid, rotate.now, new_expires],
            )
            .map_err(db_err)?;
            new_expires
        }
    };
    let session = read_session(&tx, sid)?
        .ok_or_else(|| StoreError::Corrupt("the rotated token's session is missing".into()))?;
    tx.commit().map_err(db_err)?;
    Ok(RotateResult::Rotated {
        session,
        refresh_expires,
        repeat,
    })
}

/// The session `sid`: the one read of a session row, shared by the lookup and by a rotation
/// (inside its transaction, which passes itself as the connection).
fn read_session(conn: &Connection, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
    conn.query_row_cached(
        "SELECT sid, sub, appid, openid, unionid, created_at, expires_at, revoked_at \
         FROM sessions WHERE sid = ?1",
        [sid],
        |row| {
            Ok(SessionRecord {
                sid: row.get(0)?,
                sub: row.get(1)?,
                appid: row.get(2)?,
                openid: row.get(3)?,
                unionid: row.get(4)?,
                created_at: row.get(5)?,
                expires_at: row.get(6)?,
                revoked_at: row.get(7)?,
            })
        },
    )
    .optional()
    .map_err(db_err)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    ///
    /// # Errors
    /// [`StoreError::Open`] naming the path.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let fail = |reason: String| StoreError::Open {
            target: path.display().to_string(),
            source: reason.into(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| fail(err.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|err| fail(err.to_string()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|err| fail(err.to_string()))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|err| fail(err.to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(format!("cannot enable WAL (journal_mode is {mode})")));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(|err| fail(err.to_string()))?;
        let mut conn = conn;
        migrate(&mut conn).map_err(fail)?;
        // The feed's sequence starts at 1, not 0: `since=0` always means "send the full set",
        // so a consumer of a store that never revoked anything gets a `seq` of 1 or more (the
        // issuer's start moves it on: `move_seq_past_possible_loss`) and can long-poll with
        // it from its first answer on, instead of polling.
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'revocations', 1 \
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'revocations')",
            [],
        )
        .map_err(|err| fail(err.to_string()))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Moves the revocation seq on by [`crate::domain::rules::SEQ_GAP`], and at least to
    /// `now_ms` in microseconds ([`crate::domain::rules::seq_after_possible_loss`]), and
    /// returns the seq it continues from. The issuer calls it at every start, from a blocking
    /// thread: a backup restored over the file (with the issuer stopped: a file cannot be
    /// replaced under a running one) lacks revocations whose seqs sidecars may hold, and the
    /// next revocations must not be given them.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn move_seq_past_possible_loss(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::backend("the SQLite connection mutex is poisoned"))?;
        ops::move_seq_past_possible_loss(&mut conn, now_ms)
    }

    /// Runs `op` on the connection in tokio's blocking pool.
    async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::backend("the SQLite connection mutex is poisoned"))?;
            op(&mut guard)
        })
        .await
        .map_err(|err| StoreError::Backend(Box::new(err)))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.run(ops::ping).await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.run(ops::keys).await
    }

    async fn insert_key(
        &self,
        key: &KeyRecord,
        only_if_none_active_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let key = key.clone();
        self.run(move |c| ops::insert_key(c, &key, only_if_none_active_at))
            .await
    }

    async fn erase_keys(&self, kids: &[String]) -> Result<(), StoreError> {
        let kids = kids.to_vec();
        self.run(move |c| ops::erase_keys(c, &kids)).await
    }

    async fn code_used(&self, code_hash: &str) -> Result<bool, StoreError> {
        let code_hash = code_hash.to_string();
        self.run(move |c| ops::code_used(c, &code_hash)).await
    }

    async fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError> {
        let login = login.clone();
        self.run(move |c| ops::login(c, &login)).await
    }

    async fn discard_session(&self, sid: &str) -> Result<(), StoreError> {
        let sid = sid.to_string();
        self.run(move |c| ops::discard_session(c, &sid)).await
    }

    async fn rotate_refresh(&self, rotate: &Rotate) -> Result<RotateResult, StoreError> {
        let rotate = rotate.clone();
        self.run(move |c| ops::rotate_refresh(c, &rotate)).await
    }

    async fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sid = sid.to_string();
        self.run(move |c| ops::session(c, &sid)).await
    }

    async fn session_key_sealed(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sid = sid.to_string();
        self.run(move |c| ops::session_key_sealed(c, &sid)).await
    }

    async fn user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        let sub = sub.to_string();
        self.run(move |c| ops::user(c, &sub)).await
    }

    async fn set_phone(
        &self,
        sub: &str,
        sealed_phone: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (sub, phone) = (sub.to_string(), sealed_phone.map(String::from));
        self.run(move |c| ops::set_phone(c, &sub, phone.as_deref(), now))
            .await
    }

    async fn phones_page(&self, cursor: &str, limit: usize) -> Result<PhonesPage, StoreError> {
        let cursor = cursor.to_string();
        self.run(move |c| ops::phones_page(c, &cursor, limit)).await
    }

    async fn reseal_phone(
        &self,
        sub: &str,
        expected: &str,
        sealed: &str,
    ) -> Result<bool, StoreError> {
        let (sub, expected, sealed) = (sub.to_string(), expected.to_string(), sealed.to_string());
        self.run(move |c| ops::reseal_phone(c, &sub, &expected, &sealed))
            .await
    }

    async fn set_risk(&self, sub: &str, fact: &RiskFact) -> Result<bool, StoreError> {
        let (sub, fact) = (sub.to_string(), fact.clone());
        self.run(move |c| ops::set_risk(c, &sub, &fact)).await
    }

    async fn wechat_token(&self, appid: &str) -> Result<Option<CachedToken>, StoreError> {
        let appid = appid.to_string();
        self.run(move |c| ops::wechat_token(c, &appid)).await
    }

    async fn lease_wechat_token(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let (appid, holder) = (appid.to_string(), holder.to_string());
        self.run(move |c| ops::lease_wechat_token(c, &appid, &holder, now, lease_until))
            .await
    }

    async fn put_wechat_token(
        &self,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let (appid, token, holder) = (appid.to_string(), token.clone(), holder.to_string());
        self.run(move |c| ops::put_wechat_token(c, &appid, &token, &holder))
            .await
    }

    async fn release_wechat_lease(&self, appid: &str, holder: &str) -> Result<(), StoreError> {
        let (appid, holder) = (appid.to_string(), holder.to_string());
        self.run(move |c| ops::release_wechat_lease(c, &appid, &holder))
            .await
    }

    async fn invalidate_wechat_token(
        &self,
        appid: &str,
        token_hash: &str,
    ) -> Result<bool, StoreError> {
        let (appid, hash) = (appid.to_string(), token_hash.to_string());
        self.run(move |c| ops::invalidate_wechat_token(c, &appid, &hash))
            .await
    }

    async fn revoke(&self, revoke: &Revoke, now: i64, until: i64) -> Result<Entry, StoreError> {
        let revoke = revoke.clone();
        self.run(move |c| ops::revoke(c, &revoke, now, until)).await
    }

    async fn revocation_facts(
        &self,
        jti: &str,
        sid: &str,
        sub: &str,
    ) -> Result<RevocationFacts, StoreError> {
        let (jti, sid, sub) = (jti.to_string(), sid.to_string(), sub.to_string());
        self.run(move |c| ops::revocation_facts(c, &jti, &sid, &sub))
            .await
    }

    async fn feed_snapshot(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> Result<FeedSnapshot, StoreError> {
        self.run(move |c| ops::feed_snapshot(c, after, now, limit))
            .await
    }

    async fn current_seq(&self) -> Result<u64, StoreError> {
        self.run(ops::current_seq).await
    }

    async fn report_access_ttl(
        &self,
        access_ttl: i64,
        now: i64,
        forget_before: i64,
    ) -> Result<Vec<ReportedTtl>, StoreError> {
        self.run(move |c| ops::report_access_ttl(c, access_ttl, now, forget_before))
            .await
    }

    async fn access_ttls(&self) -> Result<Vec<ReportedTtl>, StoreError> {
        self.run(|c| ops::access_ttls(c)).await
    }

    async fn put_ephemeral(
        &self,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |c| ops::put_ephemeral(c, &key, &value, expires_at))
            .await
    }

    async fn take_ephemeral(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.run(move |c| ops::take_ephemeral(c, &key, now)).await
    }

    /// The revocations and the watermark in one transaction, then the expired sessions,
    /// refresh tokens and pending web logins in batches of [`ops::PURGE_BATCH`] rows, each its
    /// own transaction and its own turn on the connection: every other call waits for the
    /// connection, so one delete of a day's expired rows held them all for as long.
    async fn purge(&self, now: i64) -> Result<Purged, StoreError> {
        let mut purged = self.run(move |c| ops::purge_revocations(c, now)).await?;
        for table in ops::PURGED_BY_EXPIRY {
            loop {
                let removed = self
                    .run(move |c| ops::purge_expired_batch(c, table, now))
                    .await?;
                match table {
                    ops::ExpiringTable::Sessions => purged.sessions += removed,
                    ops::ExpiringTable::RefreshTokens => purged.refresh_tokens += removed,
                    ops::ExpiringTable::Ephemeral => {}
                }
                if removed < ops::PURGE_BATCH {
                    break;
                }
            }
        }
        Ok(purged)
    }

    async fn grants(&self, sub: &str) -> Result<Option<Grants>, StoreError> {
        let sub = sub.to_string();
        self.run(move |c| ops::grants(c, &sub)).await
    }

    async fn set_scopes(&self, sub: &str, scopes: &[String], now: i64) -> Result<bool, StoreError> {
        let (sub, scopes) = (sub.to_string(), grants::stored_scopes(scopes));
        self.run(move |c| ops::set_scopes(c, &sub, &scopes, now))
            .await
    }

    async fn set_ban(&self, sub: &str, ban: Option<&Ban>, now: i64) -> Result<bool, StoreError> {
        let (sub, ban) = (sub.to_string(), ban.cloned());
        self.run(move |c| ops::set_ban(c, &sub, ban.as_ref(), now))
            .await
    }

    async fn set_ban_if(
        &self,
        sub: &str,
        expected: Option<&Ban>,
        ban: Option<&Ban>,
        now: i64,
    ) -> Result<BanWrite, StoreError> {
        let (sub, expected, ban) = (sub.to_string(), expected.cloned(), ban.cloned());
        self.run(move |c| ops::set_ban_if(c, &sub, expected.as_ref(), ban.as_ref(), now))
            .await
    }

    async fn refresh_owner(
        &self,
        _family: &str,
        refresh_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        let hash = refresh_hash.to_string();
        self.run(move |c| ops::refresh_owner(c, &hash)).await
    }
}

fn read_current_seq(conn: &Connection) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .query_row_cached(
            "SELECT seq FROM sqlite_sequence WHERE name = 'revocations'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_err)?;
    Ok(seq.map(to_u64).unwrap_or(0))
}

#[cfg(test)]
mod tests;
