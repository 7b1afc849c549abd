//! The embedded SQLite store (`WEAUTH_STORE=sqlite://PATH`).
//!
//! WAL journal, `synchronous=FULL` (a committed login or revocation survives power loss), a
//! busy timeout so several processes may share the file, and `BEGIN IMMEDIATE` for every
//! read-modify-write so two writers (threads or processes) serialize instead of racing.
//! Revocation `seq` is an `AUTOINCREMENT` rowid: never reused, never decreasing, across
//! restarts and purges (SQLite keeps the high-water mark in `sqlite_sequence`).
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
    Ban, CachedToken, FeedSnapshot, Grants, KeyRecord, LoginResult, NewLogin, Purged, Revoke,
    RiskFact, Rotate, RotateResult, SessionRecord, Store, StoreError, UserRecord,
};
use crate::domain::rules::{
    self, FoundUser, LinkCandidates, RefreshDecision, RefreshRow, RevocationFacts,
};

/// Schema version 1: the original tables.
const V1: &str = r#"
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
"#;

/// Schema version 2: a session may have no `session_key` (web OAuth2 logins). SQLite cannot
/// drop a NOT NULL constraint in place, so the table is rebuilt.
const V2: &str = r#"
CREATE TABLE sessions_v2 (
    sid         TEXT PRIMARY KEY,
    sub         TEXT NOT NULL,
    appid       TEXT NOT NULL,
    openid      TEXT NOT NULL,
    unionid     TEXT,
    code_hash   TEXT NOT NULL UNIQUE,
    session_key BLOB,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
INSERT INTO sessions_v2 (sid, sub, appid, openid, unionid, code_hash, session_key, created_at, expires_at, revoked_at)
    SELECT sid, sub, appid, openid, unionid, code_hash, session_key, created_at, expires_at, revoked_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_v2 RENAME TO sessions;
CREATE INDEX sessions_sub ON sessions (sub);
"#;

/// Schema version 3: a user's grants ([`crate::domain::grants`]): scopes (space-separated) and a ban.
const V3: &str = r#"
CREATE TABLE user_grants (
    sub            TEXT PRIMARY KEY,
    scopes         TEXT NOT NULL DEFAULT '',
    ban_created_at INTEGER,
    ban_until      INTEGER,
    ban_reason     TEXT,
    updated_at     INTEGER NOT NULL
);
"#;

/// Schema version 4: short-lived values taken once (pending web logins).
const V4: &str = r#"
CREATE TABLE ephemeral (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX ephemeral_expires ON ephemeral (expires_at);
"#;

/// Schema version 5: the risk rank WeChat gave the user at the last judged login.
const V5: &str = r#"
ALTER TABLE users ADD COLUMN risk_appid TEXT;
ALTER TABLE users ADD COLUMN risk_rank INTEGER;
ALTER TABLE users ADD COLUMN risk_at INTEGER;
"#;

/// The migrations, in order: the schema version of a file is the number of them applied
/// (`PRAGMA user_version`). Append only; never edit a published one.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

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

/// Writes the new refresh token of a rotation (or a sibling) and commits: the presented row
/// was read joined to its session in this transaction.
fn issue_successor(
    tx: rusqlite::Transaction<'_>,
    rotate: &Rotate,
    sid: &str,
    new_expires: i64,
    sibling: bool,
) -> Result<RotateResult, StoreError> {
    tx.execute(
        "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![rotate.new_hash, sid, rotate.now, new_expires],
    )
    .map_err(db_err)?;
    let session = read_session(&tx, sid)?
        .ok_or_else(|| StoreError::Corrupt("the rotated token's session is missing".into()))?;
    tx.commit().map_err(db_err)?;
    Ok(RotateResult::Rotated {
        session,
        refresh_expires: new_expires,
        sibling,
    })
}

/// The session `sid`: the one read of a session row, shared by the lookup and by a rotation
/// (inside its transaction, which passes itself as the connection).
fn read_session(conn: &Connection, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
    conn.query_row(
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
        // so a consumer of a store that never revoked anything gets `seq: 1` and can long-poll
        // with `since=1` from its first answer on, instead of polling.
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

    async fn delete_keys(&self, kids: &[String]) -> Result<(), StoreError> {
        let kids = kids.to_vec();
        self.run(move |c| ops::delete_keys(c, &kids)).await
    }

    async fn code_used(&self, code_hash: &str) -> Result<bool, StoreError> {
        let code_hash = code_hash.to_string();
        self.run(move |c| ops::code_used(c, &code_hash)).await
    }

    async fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError> {
        let login = login.clone();
        self.run(move |c| ops::login(c, &login)).await
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
    ) -> Result<(), StoreError> {
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

    async fn purge(&self, now: i64) -> Result<Purged, StoreError> {
        self.run(move |c| ops::purge(c, now)).await
    }

    async fn grants(&self, sub: &str) -> Result<Option<Grants>, StoreError> {
        let sub = sub.to_string();
        self.run(move |c| ops::grants(c, &sub)).await
    }

    async fn set_scopes(&self, sub: &str, scopes: &[String], now: i64) -> Result<bool, StoreError> {
        let (sub, scopes) = (sub.to_string(), scopes.join(" "));
        self.run(move |c| ops::set_scopes(c, &sub, &scopes, now))
            .await
    }

    async fn set_ban(&self, sub: &str, ban: Option<&Ban>, now: i64) -> Result<bool, StoreError> {
        let (sub, ban) = (sub.to_string(), ban.cloned());
        self.run(move |c| ops::set_ban(c, &sub, ban.as_ref(), now))
            .await
    }

    async fn refresh_owner(&self, refresh_hash: &str) -> Result<Option<String>, StoreError> {
        let hash = refresh_hash.to_string();
        self.run(move |c| ops::refresh_owner(c, &hash)).await
    }
}

/// The blocking operations, one per trait method, each on the locked connection.
mod ops {
    use super::*;

    pub(super) fn put_ephemeral(
        conn: &mut Connection,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        conn.execute(
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
            .query_row(
                "DELETE FROM ephemeral WHERE key = ?1 RETURNING value, expires_at",
                [key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        Ok(taken.and_then(|(value, expires_at)| (expires_at > now).then_some(value)))
    }

    pub(super) fn ping(conn: &mut Connection) -> Result<(), StoreError> {
        conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err)
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

    pub(super) fn delete_keys(conn: &mut Connection, kids: &[String]) -> Result<(), StoreError> {
        let tx = conn.transaction().map_err(db_err)?;
        for kid in kids {
            tx.execute("DELETE FROM signing_keys WHERE kid = ?1", [kid])
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    pub(super) fn code_used(conn: &mut Connection, code_hash: &str) -> Result<bool, StoreError> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE code_hash = ?1)",
            [code_hash],
            |row| row.get(0),
        )
        .map_err(db_err)
    }

    pub(super) fn login(
        conn: &mut Connection,
        login: &NewLogin,
    ) -> Result<LoginResult, StoreError> {
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
        let by_identity = tx
            .query_row(
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
                .query_row(
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
            tx.execute(
                "INSERT INTO users (sub, unionid, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                params![link.sub, login.unionid, login.now],
            )
            .map_err(db_err)?;
        }
        if link.attach_unionid {
            tx.execute(
                "UPDATE users SET unionid = ?1, updated_at = ?3 WHERE sub = ?2",
                params![login.unionid, link.sub, login.now],
            )
            .map_err(db_err)?;
        }
        if link.create_identity {
            tx.execute(
                "INSERT INTO identities (appid, openid, sub, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![login.appid, login.openid, link.sub, login.now],
            )
            .map_err(db_err)?;
        }
        tx.execute(
            "INSERT INTO sessions (sid, sub, appid, openid, unionid, code_hash, session_key, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                login.sid,
                link.sub,
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
        Ok(LoginResult::Created {
            sub: link.sub,
            new_user: link.create_user,
        })
    }

    pub(super) fn rotate_refresh(
        conn: &mut Connection,
        rotate: &Rotate,
    ) -> Result<RotateResult, StoreError> {
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
        match rules::decide_refresh(
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
                issue_successor(tx, rotate, &sid, new_expires, false)
            }
            // The presented token stays as used as it was: its grace never slides.
            RefreshDecision::Sibling {
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
        conn.query_row(
            "SELECT session_key FROM sessions WHERE sid = ?1",
            [sid],
            |row| row.get::<_, Option<Vec<u8>>>(0),
        )
        .optional()
        .map(Option::flatten)
        .map_err(db_err)
    }

    pub(super) fn user(conn: &mut Connection, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        conn.query_row(
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
        conn.query_row(
            "SELECT g.scopes, g.ban_created_at, g.ban_until, g.ban_reason \
             FROM users u LEFT JOIN user_grants g ON g.sub = u.sub WHERE u.sub = ?1",
            [sub],
            |row| {
                let scopes: Option<String> = row.get(0)?;
                let ban_created_at: Option<i64> = row.get(1)?;
                Ok(Grants {
                    scopes: scopes
                        .unwrap_or_default()
                        .split_ascii_whitespace()
                        .map(String::from)
                        .collect(),
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
            .query_row("SELECT 1 FROM users WHERE sub = ?1", [sub], |_| Ok(()))
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
            tx.execute(
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
        let (created_at, until, reason) = match ban {
            Some(ban) => (Some(ban.created_at), ban.until, ban.reason.clone()),
            None => (None, None, None),
        };
        with_user(conn, sub, |tx| {
            tx.execute(
                "INSERT INTO user_grants (sub, ban_created_at, ban_until, ban_reason, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (sub) DO UPDATE SET ban_created_at = excluded.ban_created_at, \
                 ban_until = excluded.ban_until, ban_reason = excluded.ban_reason, \
                 updated_at = excluded.updated_at",
                params![sub, created_at, until, reason, now],
            )
        })
    }

    pub(super) fn refresh_owner(
        conn: &mut Connection,
        hash: &str,
    ) -> Result<Option<String>, StoreError> {
        conn.query_row(
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
            .execute(
                "UPDATE users SET phone = ?2, updated_at = ?3 WHERE sub = ?1",
                params![sub, sealed_phone, now],
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
            .execute(
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
        conn.query_row(
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

    pub(super) fn put_wechat_token(
        conn: &mut Connection,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<(), StoreError> {
        conn.execute(
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

    pub(super) fn release_wechat_lease(
        conn: &mut Connection,
        appid: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        conn.execute(
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
            .execute(
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
                tx.execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE sid = ?1 AND revoked_at IS NULL",
                    params![sid, now],
                )
                .map_err(db_err)?;
                insert_revocation(&tx, EntryKind::Sid, sid, None, until, now)?
            }
            Revoke::Sub { sub, issued_before } => {
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
                    if rules::sub_revocation_covers(*issued_before, created_at) {
                        tx.execute(
                            "UPDATE sessions SET revoked_at = ?2 WHERE sid = ?1",
                            params![sid, now],
                        )
                        .map_err(db_err)?;
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
        conn.query_row(
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
            .query_row(
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

    pub(super) fn purge(conn: &mut Connection, now: i64) -> Result<Purged, StoreError> {
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
            let current: i64 = tx
                .query_row(
                    "SELECT COALESCE((SELECT value FROM meta WHERE key = 'purged_through'), 0)",
                    [],
                    |row| row.get(0),
                )
                .map_err(db_err)?;
            let watermark = rules::next_watermark(to_u64(current), Some(to_u64(highest)));
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('purged_through', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [to_i64(watermark)],
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
        tx.execute("DELETE FROM ephemeral WHERE expires_at <= ?1", [now])
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(purged)
    }
}

fn read_current_seq(conn: &Connection) -> Result<u64, StoreError> {
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
    use crate::store::contract::{contract_tests, Backend};

    /// A fresh database file in its own directory, removed on drop.
    struct TempDb {
        dir: tempfile::TempDir,
    }

    impl TempDb {
        async fn new() -> TempDb {
            TempDb {
                dir: tempfile::Builder::new()
                    .prefix("weauth-store-")
                    .tempdir()
                    .unwrap(),
            }
        }

        fn path(&self) -> std::path::PathBuf {
            self.dir.path().join("t.db")
        }
    }

    /// Every handle is its own connection on the same file, like two processes.
    #[async_trait]
    impl Backend for TempDb {
        async fn handle(&self) -> Arc<dyn Store> {
            Arc::new(SqliteStore::open(&self.path()).unwrap())
        }
    }

    contract_tests!(TempDb::new());

    #[tokio::test]
    async fn sqlite_seq_survives_reopen_after_purge() {
        let db = TempDb::new().await;
        let store = db.handle().await;
        store
            .revoke(&Revoke::Jti("j1".into()), 10, 20)
            .await
            .unwrap();
        let b = store
            .revoke(&Revoke::Jti("j2".into()), 10, 20)
            .await
            .unwrap();
        store.purge(30).await.unwrap();
        drop(store);
        let store = db.handle().await;
        assert_eq!(store.current_seq().await.unwrap(), b.seq);
        let c = store
            .revoke(&Revoke::Jti("j3".into()), 30, 50)
            .await
            .unwrap();
        assert_eq!(c.seq, b.seq + 1);
        let snapshot = store.feed_snapshot(0, 30, 10).await.unwrap();
        assert_eq!(snapshot.purged_through, b.seq);
    }

    #[tokio::test]
    async fn sqlite_version_one_file_migrated_keeping_rows() {
        let db = TempDb::new().await;
        {
            let conn = Connection::open(db.path()).unwrap();
            conn.execute_batch(V1).unwrap();
            conn.execute_batch(
                "INSERT INTO users (sub, created_at, updated_at) VALUES ('u1', 1, 1);
                 INSERT INTO sessions (sid, sub, appid, openid, code_hash, session_key, created_at, expires_at)
                     VALUES ('s1', 'u1', 'wx1', 'o1', 'h1', x'010203', 1, 1000);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = db.handle().await;
        assert_eq!(
            store.session_key_sealed("s1").await.unwrap(),
            Some(vec![1, 2, 3])
        );
        assert_eq!(store.session("s1").await.unwrap().unwrap().sub, "u1");
        let conn = Connection::open(db.path()).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
    }

    #[tokio::test]
    async fn sqlite_file_from_newer_issuer_refused_naming_version() {
        let db = TempDb::new().await;
        {
            let conn = Connection::open(db.path()).unwrap();
            conn.execute_batch("PRAGMA user_version = 99;").unwrap();
        }
        let Err(err) = SqliteStore::open(&db.path()) else {
            panic!("a newer schema must be refused");
        };
        assert!(err.to_string().contains("schema version 99"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn sqlite_busy_error_keeps_source() {
        let err = db_err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(5),
            None,
        ));
        assert!(matches!(err, StoreError::Busy(_)));
        assert!(err.is_transient());
        assert!(std::error::Error::source(&err).is_some());
    }
}
