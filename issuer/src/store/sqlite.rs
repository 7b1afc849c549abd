//! The embedded SQLite store (`WEAUTH_STORE=sqlite://PATH`).
//!
//! WAL journal, `synchronous=FULL` (a committed login or revocation survives power loss), a
//! busy timeout so several processes may share the file, and `BEGIN IMMEDIATE` for every
//! read-modify-write so two writers (threads or replicas) serialize instead of racing.
//! Revocation `seq` is an `AUTOINCREMENT` rowid: never reused, never decreasing, across
//! restarts and purges (SQLite keeps the high-water mark in `sqlite_sequence`).
//!
//! One connection behind a mutex: callers are already off the async threads, and the work per
//! call is small.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use weauth_token::revocation::{Entry, EntryKind, FeedResponse};

use super::{
    CachedToken, KeyRecord, LoginResult, NewLogin, Purged, RefreshRow, Revoke, Rotate,
    RotateResult, SessionRecord, Store, StoreError, UserRecord,
};
use crate::revocation::feed_is_full;
use crate::sessions::{decide_refresh, RefreshDecision};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    sub        TEXT PRIMARY KEY,
    unionid    TEXT UNIQUE,
    phone      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    appid      TEXT NOT NULL,
    openid     TEXT NOT NULL,
    sub        TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (appid, openid)
);
CREATE TABLE IF NOT EXISTS sessions (
    sid         TEXT PRIMARY KEY,
    sub         TEXT NOT NULL,
    appid       TEXT NOT NULL,
    openid      TEXT NOT NULL,
    unionid     TEXT,
    code_hash   TEXT NOT NULL UNIQUE,
    session_key BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_sub ON sessions (sub);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash       TEXT PRIMARY KEY,
    sid        TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX IF NOT EXISTS refresh_tokens_sid ON refresh_tokens (sid);
CREATE TABLE IF NOT EXISTS revocations (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,
    value         TEXT NOT NULL,
    issued_before INTEGER,
    until         INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_value ON revocations (value, kind);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    activate_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wechat_tokens (
    appid        TEXT PRIMARY KEY,
    sealed       BLOB,
    hash         TEXT,
    expires_at   INTEGER NOT NULL DEFAULT 0,
    refresh_at   INTEGER NOT NULL DEFAULT 0,
    lease_holder TEXT,
    lease_until  INTEGER NOT NULL DEFAULT 0
);
PRAGMA user_version = 1;
"#;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db_err(err: rusqlite::Error) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
        {
            StoreError::Busy(err.to_string())
        }
        _ => StoreError::Db(err.to_string()),
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Jti => "jti",
        EntryKind::Sid => "sid",
        EntryKind::Sub => "sub",
    }
}

fn parse_kind(text: &str) -> Result<EntryKind, StoreError> {
    match text {
        "jti" => Ok(EntryKind::Jti),
        "sid" => Ok(EntryKind::Sid),
        "sub" => Ok(EntryKind::Sub),
        other => Err(StoreError::Corrupt(format!("revocation kind `{other}`"))),
    }
}

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
    tx.execute(
        "INSERT INTO revocations (kind, value, issued_before, until, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![kind_name(kind), value, issued_before, until, now],
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

fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
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
}

const SESSION_COLUMNS: &str =
    "sid, sub, appid, openid, unionid, created_at, expires_at, revoked_at";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    ///
    /// # Errors
    /// [`StoreError::Open`] naming the path.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let fail = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| fail(err.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|err| fail(err.to_string()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|err| fail(err.to_string()))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|err| fail(err.to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(format!("cannot enable WAL (journal_mode is {mode})")));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(|err| fail(err.to_string()))?;
        conn.execute_batch(SCHEMA)
            .map_err(|err| fail(err.to_string()))?;
        // The feed's sequence starts at 1, not 0: `since=0` always means "send the full set",
        // so a consumer of a store that never revoked anything gets `seq: 1` and can long-poll
        // with `since=1` from its first answer on, instead of polling.
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'revocations', 1 \
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'revocations')",
            [],
        )
        .map_err(|err| fail(err.to_string()))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Db("connection mutex poisoned".into()))
    }
}

impl Store for SqliteStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.conn()?
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(db_err)
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = self.conn()?;
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

    fn insert_key(
        &self,
        key: &KeyRecord,
        only_if_none_active_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if let Some(now) = only_if_none_active_at {
            let active: i64 = tx
                .query_row(
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
            .execute(
                "INSERT OR IGNORE INTO signing_keys (kid, alg, sealed, created_at, activate_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.kid, key.alg, key.sealed, key.created_at, key.activate_at],
            )
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(inserted == 1)
    }

    fn delete_keys(&self, kids: &[String]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(db_err)?;
        for kid in kids {
            tx.execute("DELETE FROM signing_keys WHERE kid = ?1", [kid])
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    fn code_used(&self, code_hash: &str) -> Result<bool, StoreError> {
        self.conn()?
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE code_hash = ?1)",
                [code_hash],
                |row| row.get(0),
            )
            .map_err(db_err)
    }

    fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let used: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE code_hash = ?1)",
                [&login.code_hash],
                |row| row.get(0),
            )
            .map_err(db_err)?;
        if used {
            return Ok(LoginResult::CodeAlreadyUsed);
        }
        let by_identity: Option<String> = tx
            .query_row(
                "SELECT sub FROM identities WHERE appid = ?1 AND openid = ?2",
                params![login.appid, login.openid],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let (sub, new_user) = match by_identity {
            Some(sub) => {
                if let Some(unionid) = &login.unionid {
                    // Link the unionid the first time WeChat reveals it, unless another user
                    // already carries it.
                    tx.execute(
                        "UPDATE users SET unionid = ?1, updated_at = ?3 WHERE sub = ?2 AND unionid IS NULL \
                         AND NOT EXISTS (SELECT 1 FROM users WHERE unionid = ?1)",
                        params![unionid, sub, login.now],
                    )
                    .map_err(db_err)?;
                }
                (sub, false)
            }
            None => {
                let by_union: Option<String> = match &login.unionid {
                    Some(unionid) => tx
                        .query_row(
                            "SELECT sub FROM users WHERE unionid = ?1",
                            [unionid],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(db_err)?,
                    None => None,
                };
                let (sub, new_user) = match by_union {
                    Some(sub) => (sub, false),
                    None => {
                        tx.execute(
                            "INSERT INTO users (sub, unionid, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                            params![login.new_sub, login.unionid, login.now],
                        )
                        .map_err(db_err)?;
                        (login.new_sub.clone(), true)
                    }
                };
                tx.execute(
                    "INSERT INTO identities (appid, openid, sub, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![login.appid, login.openid, sub, login.now],
                )
                .map_err(db_err)?;
                (sub, new_user)
            }
        };
        tx.execute(
            "INSERT INTO sessions (sid, sub, appid, openid, unionid, code_hash, session_key, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                login.sid,
                sub,
                login.appid,
                login.openid,
                login.unionid,
                login.code_hash,
                login.session_key_sealed,
                login.now,
                login.session_expires
            ],
        )
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![login.refresh_hash, login.sid, login.now, login.refresh_expires],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(LoginResult::Created { sub, new_user })
    }

    fn rotate_refresh(&self, rotate: &Rotate) -> Result<RotateResult, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let row: Option<RefreshRow> = tx
            .query_row(
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
        match decide_refresh(
            row.as_ref(),
            rotate.now,
            rotate.refresh_ttl,
            rotate.reuse_grace,
        ) {
            RefreshDecision::Invalid(reason) => Ok(RotateResult::Invalid(reason)),
            RefreshDecision::Reuse { sid } => {
                tx.execute(
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
                    .execute(
                        "UPDATE refresh_tokens SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL",
                        params![rotate.presented_hash, rotate.now],
                    )
                    .map_err(db_err)?;
                if consumed != 1 {
                    return Ok(RotateResult::Invalid("refresh token already used"));
                }
                tx.execute(
                    "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    params![rotate.new_hash, sid, rotate.now, new_expires],
                )
                .map_err(db_err)?;
                let session = tx
                    .query_row(
                        &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE sid = ?1"),
                        [&sid],
                        session_from_row,
                    )
                    .map_err(db_err)?;
                tx.commit().map_err(db_err)?;
                Ok(RotateResult::Rotated {
                    session,
                    refresh_expires: new_expires,
                })
            }
        }
    }

    fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.conn()?
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE sid = ?1"),
                [sid],
                session_from_row,
            )
            .optional()
            .map_err(db_err)
    }

    fn session_key_sealed(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn()?
            .query_row(
                "SELECT session_key FROM sessions WHERE sid = ?1",
                [sid],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_err)
    }

    fn user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        self.conn()?
            .query_row(
                "SELECT sub, unionid, phone, created_at FROM users WHERE sub = ?1",
                [sub],
                |row| {
                    Ok(UserRecord {
                        sub: row.get(0)?,
                        unionid: row.get(1)?,
                        phone: row.get(2)?,
                        created_at: row.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
    }

    fn set_phone(
        &self,
        sub: &str,
        sealed_phone: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .conn()?
            .execute(
                "UPDATE users SET phone = ?2, updated_at = ?3 WHERE sub = ?1",
                params![sub, sealed_phone, now],
            )
            .map_err(db_err)?;
        Ok(changed > 0)
    }

    fn wechat_token(&self, appid: &str) -> Result<Option<CachedToken>, StoreError> {
        self.conn()?
            .query_row(
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

    fn lease_wechat_token(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        tx.execute(
            "INSERT OR IGNORE INTO wechat_tokens (appid) VALUES (?1)",
            [appid],
        )
        .map_err(db_err)?;
        let taken = tx
            .execute(
                "UPDATE wechat_tokens SET lease_holder = ?2, lease_until = ?4 \
                 WHERE appid = ?1 AND (lease_holder IS NULL OR lease_holder = ?2 OR lease_until <= ?3)",
                params![appid, holder, now, lease_until],
            )
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(taken > 0)
    }

    fn put_wechat_token(
        &self,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                "INSERT INTO wechat_tokens (appid, sealed, hash, expires_at, refresh_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (appid) DO UPDATE SET sealed = ?2, hash = ?3, expires_at = ?4, \
                 refresh_at = ?5, \
                 lease_holder = CASE WHEN lease_holder = ?6 THEN NULL ELSE lease_holder END, \
                 lease_until = CASE WHEN lease_holder = ?6 THEN 0 ELSE lease_until END",
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
        Ok(())
    }

    fn release_wechat_lease(&self, appid: &str, holder: &str) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                "UPDATE wechat_tokens SET lease_holder = NULL, lease_until = 0 \
                 WHERE appid = ?1 AND lease_holder = ?2",
                params![appid, holder],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn invalidate_wechat_token(&self, appid: &str, token_hash: &str) -> Result<bool, StoreError> {
        let changed = self
            .conn()?
            .execute(
                "UPDATE wechat_tokens SET sealed = NULL, hash = NULL, expires_at = 0, refresh_at = 0 \
                 WHERE appid = ?1 AND hash = ?2",
                params![appid, token_hash],
            )
            .map_err(db_err)?;
        Ok(changed > 0)
    }

    fn revoke(&self, revoke: &Revoke, now: i64, until: i64) -> Result<Entry, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let entry = match revoke {
            Revoke::Jti(jti) => insert_revocation(&tx, EntryKind::Jti, jti, None, until, now)?,
            Revoke::Sid(sid) => {
                tx.execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE sid = ?1 AND revoked_at IS NULL",
                    params![sid, now],
                )
                .map_err(db_err)?;
                insert_revocation(&tx, EntryKind::Sid, sid, None, until, now)?
            }
            Revoke::Sub { sub, issued_before } => {
                tx.execute(
                    "UPDATE sessions SET revoked_at = ?3 WHERE sub = ?1 AND created_at < ?2 AND revoked_at IS NULL",
                    params![sub, issued_before, now],
                )
                .map_err(db_err)?;
                insert_revocation(&tx, EntryKind::Sub, sub, Some(*issued_before), until, now)?
            }
        };
        tx.commit().map_err(db_err)?;
        Ok(entry)
    }

    fn is_revoked(&self, jti: &str, sid: &str, sub: &str, iat: i64) -> Result<bool, StoreError> {
        self.conn()?
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM revocations WHERE value = ?1 AND kind = 'jti') \
                 OR EXISTS (SELECT 1 FROM revocations WHERE value = ?2 AND kind = 'sid') \
                 OR EXISTS (SELECT 1 FROM revocations WHERE value = ?3 AND kind = 'sub' AND issued_before > ?4) \
                 OR EXISTS (SELECT 1 FROM sessions WHERE sid = ?2 AND revoked_at IS NOT NULL)",
                params![jti, sid, sub, iat],
                |row| row.get(0),
            )
            .map_err(db_err)
    }

    fn feed(&self, since: u64, now: i64, limit: usize) -> Result<FeedResponse, StoreError> {
        let mut conn = self.conn()?;
        // A read transaction: seq, watermark and rows from one snapshot.
        let tx = conn.transaction().map_err(db_err)?;
        let current = current_seq(&tx)?;
        let watermark: i64 = tx
            .query_row(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'purged_through'), 0)",
                [],
                |row| row.get(0),
            )
            .map_err(db_err)?;
        let full = feed_is_full(since, current, to_u64(watermark));
        let after = if full { 0 } else { to_i64(since) };
        let entries = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, kind, value, issued_before, until FROM revocations \
                     WHERE seq > ?1 AND until >= ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(
                    params![after, now, i64::try_from(limit).unwrap_or(i64::MAX)],
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
        // A full page: there may be more, so point the caller just past this page.
        let seq = match entries.last() {
            Some(last) if entries.len() >= limit => last.seq,
            _ => current,
        };
        Ok(FeedResponse {
            seq,
            full,
            now,
            entries,
        })
    }

    fn current_seq(&self) -> Result<u64, StoreError> {
        let conn = self.conn()?;
        current_seq(&conn)
    }

    fn purge(&self, now: i64) -> Result<Purged, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let highest: Option<i64> = tx
            .query_row(
                "SELECT MAX(seq) FROM revocations WHERE until < ?1",
                [now],
                |row| row.get(0),
            )
            .map_err(db_err)?;
        let mut purged = Purged::default();
        if let Some(highest) = highest {
            purged.revocations = tx
                .execute("DELETE FROM revocations WHERE until < ?1", [now])
                .map_err(db_err)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('purged_through', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                [highest],
            )
            .map_err(db_err)?;
        }
        purged.sessions = tx
            .execute("DELETE FROM sessions WHERE expires_at < ?1", [now])
            .map_err(db_err)?;
        purged.refresh_tokens = tx
            .execute(
                "DELETE FROM refresh_tokens WHERE expires_at < ?1 OR sid NOT IN (SELECT sid FROM sessions)",
                [now],
            )
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(purged)
    }
}

fn current_seq(conn: &Connection) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'revocations'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_err)?;
    Ok(seq.map(to_u64).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (SqliteStore, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("weauth-store-{}", crate::secrets::random_b64(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        (SqliteStore::open(&path).unwrap(), dir)
    }

    fn login(code: &str, openid: &str, unionid: Option<&str>, now: i64) -> NewLogin {
        NewLogin {
            appid: "wx1".into(),
            openid: openid.into(),
            unionid: unionid.map(String::from),
            code_hash: format!("h-{code}"),
            new_sub: format!("u-{code}"),
            sid: format!("s-{code}"),
            session_key_sealed: vec![1, 2, 3],
            now,
            session_expires: now + 1000,
            refresh_hash: format!("r-{code}"),
            refresh_expires: now + 100,
        }
    }

    fn rotate(old: &str, new: &str, now: i64) -> Rotate {
        Rotate {
            presented_hash: old.into(),
            new_hash: new.into(),
            now,
            refresh_ttl: 100,
            reuse_grace: 0,
            revocation_until: now + 960,
        }
    }

    fn cached(hash: &str) -> CachedToken {
        CachedToken {
            sealed: vec![9],
            hash: hash.into(),
            expires_at: 7200,
            refresh_at: 6900,
        }
    }

    #[test]
    fn wechat_lease_second_holder_refused_until_expiry_or_release() {
        let (store, dir) = temp_store();
        assert!(store.lease_wechat_token("wx1", "a", 100, 110).unwrap());
        assert!(!store.lease_wechat_token("wx1", "b", 105, 115).unwrap());
        assert!(store.lease_wechat_token("wx1", "b", 110, 120).unwrap());
        store.release_wechat_lease("wx1", "b").unwrap();
        assert!(store.lease_wechat_token("wx1", "a", 111, 121).unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn wechat_put_token_releases_holder_lease_and_is_read_back() {
        let (store, dir) = temp_store();
        assert_eq!(store.wechat_token("wx1").unwrap(), None);
        assert!(store.lease_wechat_token("wx1", "a", 100, 110).unwrap());
        store.put_wechat_token("wx1", &cached("h1"), "a").unwrap();
        assert_eq!(store.wechat_token("wx1").unwrap(), Some(cached("h1")));
        assert!(store.lease_wechat_token("wx1", "b", 101, 111).unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn wechat_invalidate_only_matching_hash() {
        let (store, dir) = temp_store();
        store.put_wechat_token("wx1", &cached("h2"), "a").unwrap();
        assert!(!store.invalidate_wechat_token("wx1", "h1").unwrap());
        assert!(store.wechat_token("wx1").unwrap().is_some());
        assert!(store.invalidate_wechat_token("wx1", "h2").unwrap());
        assert_eq!(store.wechat_token("wx1").unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn set_phone_unknown_user_false() {
        let (store, dir) = temp_store();
        assert!(!store.set_phone("nobody", Some("x"), 1).unwrap());
        store.login(&login("c1", "o1", None, 10)).unwrap();
        assert!(store.set_phone("u-c1", Some("sealed"), 11).unwrap());
        assert_eq!(
            store.user("u-c1").unwrap().unwrap().phone.as_deref(),
            Some("sealed")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn login_same_openid_same_sub_new_session() {
        let (store, dir) = temp_store();
        let first = store.login(&login("c1", "o1", None, 10)).unwrap();
        let second = store.login(&login("c2", "o1", None, 20)).unwrap();
        assert_eq!(
            first,
            LoginResult::Created {
                sub: "u-c1".into(),
                new_user: true
            }
        );
        assert_eq!(
            second,
            LoginResult::Created {
                sub: "u-c1".into(),
                new_user: false
            }
        );
        assert!(store.session("s-c2").unwrap().is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn login_same_code_twice_one_session() {
        let (store, dir) = temp_store();
        store.login(&login("c1", "o1", None, 10)).unwrap();
        let mut again = login("c1", "o1", None, 11);
        again.sid = "s-other".into();
        assert_eq!(store.login(&again).unwrap(), LoginResult::CodeAlreadyUsed);
        assert!(store.session("s-other").unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn login_linked_by_unionid_across_openids() {
        let (store, dir) = temp_store();
        store.login(&login("c1", "o1", Some("un1"), 10)).unwrap();
        let other_app = store.login(&login("c2", "o2", Some("un1"), 20)).unwrap();
        assert_eq!(
            other_app,
            LoginResult::Created {
                sub: "u-c1".into(),
                new_user: false
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rotate_then_reuse_revokes_session() {
        let (store, dir) = temp_store();
        store.login(&login("c1", "o1", None, 10)).unwrap();
        let rotated = store.rotate_refresh(&rotate("r-c1", "r2", 20)).unwrap();
        assert!(matches!(
            rotated,
            RotateResult::Rotated {
                refresh_expires: 120,
                ..
            }
        ));
        let reused = store.rotate_refresh(&rotate("r-c1", "r3", 30)).unwrap();
        let RotateResult::Reused { sid, entry } = reused else {
            panic!("expected reuse, got {reused:?}");
        };
        assert_eq!(sid, "s-c1");
        assert_eq!(entry.kind, EntryKind::Sid);
        assert!(store.session("s-c1").unwrap().unwrap().revoked_at.is_some());
        // The rotated-to token dies with its session.
        assert!(matches!(
            store.rotate_refresh(&rotate("r2", "r4", 40)).unwrap(),
            RotateResult::Invalid(_)
        ));
        assert!(store.is_revoked("j", "s-c1", "u-c1", 35).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn seq_monotonic_across_purge_and_reopen() {
        let (store, dir) = temp_store();
        let a = store.revoke(&Revoke::Jti("j1".into()), 10, 20).unwrap();
        let b = store.revoke(&Revoke::Jti("j2".into()), 10, 50).unwrap();
        assert!(b.seq > a.seq);
        assert_eq!(store.purge(30).unwrap().revocations, 1);
        let feed = store.feed(a.seq - 1, 30, 100).unwrap();
        assert!(
            feed.full,
            "since below the purge watermark must get a full set"
        );
        assert_eq!(feed.entries.len(), 1);
        let delta = store.feed(a.seq, 30, 100).unwrap();
        assert!(!delta.full);
        assert_eq!(delta.entries, vec![b.clone()]);
        store.revoke(&Revoke::Jti("j3".into()), 10, 50).unwrap();
        store.purge(60).unwrap();
        drop(store);
        let store = SqliteStore::open(&dir.join("t.db")).unwrap();
        let c = store.revoke(&Revoke::Jti("j4".into()), 60, 100).unwrap();
        assert_eq!(c.seq, b.seq + 2);
        assert_eq!(store.current_seq().unwrap(), c.seq);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn feed_large_set_paged_then_continued_by_since() {
        let (store, dir) = temp_store();
        let mut seqs = Vec::new();
        for i in 0..5 {
            seqs.push(
                store
                    .revoke(&Revoke::Jti(format!("j{i}")), 10, 50)
                    .unwrap()
                    .seq,
            );
        }
        let first = store.feed(0, 10, 2).unwrap();
        assert!(first.full);
        assert_eq!(first.entries.len(), 2);
        assert_eq!(first.seq, seqs[1], "a full page points past its last entry");
        let second = store.feed(first.seq, 10, 2).unwrap();
        assert!(!second.full);
        assert_eq!(second.seq, seqs[3]);
        let last = store.feed(second.seq, 10, 2).unwrap();
        assert_eq!(last.entries.len(), 1);
        assert_eq!(last.seq, seqs[4]);
        assert_eq!(last.seq, store.current_seq().unwrap());
        let idle = store.feed(last.seq, 10, 2).unwrap();
        assert!(idle.entries.is_empty());
        assert_eq!(idle.seq, last.seq);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn revoke_sub_ends_older_sessions_only() {
        let (store, dir) = temp_store();
        store.login(&login("c1", "o1", None, 10)).unwrap();
        store.login(&login("c2", "o1", None, 30)).unwrap();
        store
            .revoke(
                &Revoke::Sub {
                    sub: "u-c1".into(),
                    issued_before: 20,
                },
                25,
                1000,
            )
            .unwrap();
        assert!(store.session("s-c1").unwrap().unwrap().revoked_at.is_some());
        assert!(store.session("s-c2").unwrap().unwrap().revoked_at.is_none());
        assert!(store.is_revoked("j", "s-x", "u-c1", 19).unwrap());
        assert!(!store.is_revoked("j", "s-c2", "u-c1", 20).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
