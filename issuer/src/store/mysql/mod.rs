//! The MySQL / MariaDB store (`WEAUTH_STORE=mysql://user:password@host:port/db`), through
//! `sqlx`'s pool: MySQL 8 and MariaDB 10.11 or later, InnoDB tables.
//!
//! Atomicity is InnoDB's: every read-modify-write is one transaction whose facts are read
//! with `SELECT … FOR UPDATE` (the rows it decides on are locked until commit, so two
//! replicas racing on one refresh token, code or lease serialize), at READ COMMITTED (no gap
//! locks: a row that is not there yet is guarded by its unique key instead). A deadlock (or a
//! multi-primary cluster's certification conflict) or a duplicate key between two such
//! transactions (two first logins of one openid) rolls one back; it is run again from the
//! start ([`RETRIES`] times), and then finds what the other wrote.
//!
//! The revocation `seq` is not an `AUTO_INCREMENT`: InnoDB hands those out at insert, not at
//! commit, so a reader could see seq 6 committed before 5 and skip 5 for good. It is the
//! `counters` row `revocation_seq`, incremented inside the revoking transaction and locked by
//! it until commit: seqs become visible in order, never reused, never decreasing (the row
//! survives purges and restarts), starting at 1. Past a loss too: each start of an issuer moves
//! it on by [`crate::domain::rules::SEQ_GAP`] (a restored backup lacks revocations whose seqs sidecars hold),
//! and so does the first revocation written on another server than the last one (a failover's
//! new primary may lack the old one's latest).
//!
//! The schema is versioned: [`MIGRATIONS`] (`migrations/vN.sql`) are applied in order at
//! start, one replica at a time (a `GET_LOCK` named after the database is held around
//! migrating); a database written by a newer issuer is refused.
//!
//! At start the store also refuses a table on another engine than InnoDB (no transactions:
//! a login half-written on a crash) and a user lacking a privilege an operation needs (read
//! by a probe transaction that is rolled back), naming the reason; and it warns, like Redis
//! without `appendfsync always`, when `innodb_flush_log_at_trx_commit` is not 1 or the binary
//! log is on without `sync_binlog=1` (a crash of the server could then lose acknowledged
//! writes).
//!
//! The decisions come from [`crate::domain::rules`], as in the SQLite store (`ops.rs` and
//! `user_grants.rs` mirror `sqlite/ops.rs`). A lost server is [`StoreError::Unavailable`] (503); the pool tests each
//! connection before handing it out and opens new ones by itself once the server is back.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{Executor as _, Row as _};
use weauth_token::revocation::Entry;

use super::{
    Ban, BanWrite, CachedToken, FeedSnapshot, Grants, KeyRecord, LoginResult, NewLogin, PhonesPage,
    Purged, ReportedTtl, Revoke, RiskFact, Rotate, RotateResult, SessionRecord, Store, StoreError,
    UserRecord,
};
use crate::domain::grants;
use crate::domain::rules::RevocationFacts;

mod ops;
mod upkeep;
mod user_grants;

/// The migrations, in order: the schema version of a database is the number applied (table
/// `weauth_schema`). Append only; never edit a published one.
pub const MIGRATIONS: &[&str] = &[include_str!("migrations/v1.sql")];

/// How many times a transaction rolled back by a deadlock, a certification conflict or a
/// duplicate key is run again.
const RETRIES: usize = 5;

/// The tables the issuer owns (checked for their engine at start).
const TABLES: &[&str] = &[
    "users",
    "identities",
    "sessions",
    "refresh_tokens",
    "revocations",
    "counters",
    "signing_keys",
    "wechat_tokens",
    "user_grants",
    "ephemeral",
];

/// What [`MysqlStore::connect`] needs.
#[derive(Debug, Clone)]
pub struct MysqlOptions {
    /// The URL with the password (only handed to the driver).
    pub url: String,
    /// The URL with the password masked (messages, logs).
    pub display: String,
    /// `WEAUTH_MYSQL_POOL_MAX`.
    pub pool_max: u32,
    /// `WEAUTH_MYSQL_ACQUIRE_TIMEOUT`.
    pub acquire_timeout: Duration,
    /// `WEAUTH_MYSQL_QUERY_TIMEOUT`: one attempt of an operation ([`MysqlStore::retry`]).
    pub query_timeout: Duration,
}

/// The MySQL implementation of [`Store`]. Cheap to clone (one shared pool).
#[derive(Clone)]
pub struct MysqlStore {
    pool: MySqlPool,
    query_timeout: Duration,
}

/// MySQL's error number of a database error (`ER_LOCK_DEADLOCK` is 1213, …).
fn error_number(err: &sqlx::Error) -> Option<u16> {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(sqlx::mysql::MySqlDatabaseError::number),
        _ => None,
    }
}

/// Maps a driver error: no connection (refused, reset, pool timed out, server shutting down
/// or read-only after a failover) is [`StoreError::Unavailable`]; a lock wait timeout or a
/// deadlock that outlived the retries is [`StoreError::Busy`].
pub(crate) fn db_err(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(Box::new(err)),
        sqlx::Error::Database(db) => match error_number(&err) {
            // 3101: Group Replication's conflict at commit (multi-primary), as Galera's 1213.
            Some(1205 | 1213 | 3101) => StoreError::Busy(Box::new(err)),
            // A unique key still taken after the retries (a race lost every time): contention.
            // MySQL's message quotes the key's value — an openid, a unionid, a code's hash —
            // which must not reach a log: only the key's name is kept.
            Some(1062) => StoreError::Busy(duplicate_key(db.message()).into()),
            // Too many connections, server shutdown, connection killed, read-only server, a
            // Galera node out of the primary component (1047), Group Replication refusing
            // writes (3100), ProxySQL with no server in the writer hostgroup (9001, "Max
            // connect timeout reached while reaching hostgroup": the failover docs/OPERATIONS.md
            // puts it in front of).
            Some(1040 | 1047 | 1053 | 1927 | 1290 | 1836 | 3100 | 9001) => {
                StoreError::Unavailable(Box::new(err))
            }
            _ => StoreError::Backend(Box::new(err)),
        },
        _ => StoreError::Backend(Box::new(err)),
    }
}

/// What is said of a duplicate-key error (1062): MySQL's `Duplicate entry '<value>' for key
/// '<name>'` without the value.
fn duplicate_key(message: &str) -> String {
    let key = message
        .rsplit_once(" for key ")
        .map_or("(not named)", |(_, key)| key);
    format!("a unique key stayed taken through {RETRIES} retries (MySQL 1062, key {key})")
}

/// How long a pooled connection may have been idle and still be used without a ping first.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// How long one purge ([`upkeep::purge`]) may take: a background task, in batches of which
/// each commits on its own (`WEAUTH_MYSQL_QUERY_TIMEOUT` bounds a request's operation).
const PURGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a failed transaction is run again: it was rolled back by a deadlock (or a
/// multi-primary cluster's certification conflict, Galera's 1213 or Group Replication's 3101),
/// or lost a race on a unique key (it will find the winner's row the second time).
fn retryable(err: &sqlx::Error) -> bool {
    matches!(error_number(err), Some(1213 | 1062 | 3101))
}

/// Runs `attempt` again while it fails with a [`retryable`] error, at most [`RETRIES`] times;
/// an attempt without an answer within `timeout` is given up as [`StoreError::Unavailable`]:
/// dropped, its transaction is rolled back on the way back to the pool (a statement the server
/// runs already finishes there; a COMMIT sent may have landed), and a connection that does not
/// answer then is closed (`after_release` in [`MysqlStore::connect`]).
/// Without it, a server lost without closing its connections — a blackholed failover, a
/// moved address, a dead host behind ProxySQL — held each operation under way until TCP gave
/// up (about 15 minutes), and with them the pool: the pool's own timeout covers only waiting
/// for a connection.
async fn retry<T, F, Fut>(timeout: Duration, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        let Ok(result) = tokio::time::timeout(timeout, attempt()).await else {
            return Err(StoreError::Unavailable(
                format!("MySQL did not answer within {timeout:?} (WEAUTH_MYSQL_QUERY_TIMEOUT)")
                    .into(),
            ));
        };
        match result {
            Err(err) if retryable(&err) && tries < RETRIES => {
                tries += 1;
                // A short, growing pause lets the winner commit.
                tokio::time::sleep(Duration::from_millis(2 << tries)).await;
            }
            other => return other.map_err(db_err),
        }
    }
}

/// A reason for the operator: a missing privilege is named as such.
fn describe(err: &sqlx::Error) -> String {
    match error_number(err) {
        Some(1044 | 1142 | 1143 | 1227 | 1370) => format!(
            "the MySQL user lacks a privilege weauth needs (SELECT, INSERT, UPDATE, DELETE, and \
             CREATE, ALTER, INDEX to migrate, on the database): {err}"
        ),
        Some(1045) => format!("access denied (user or password): {err}"),
        Some(1049) => format!("the database does not exist (create it first): {err}"),
        _ => err.to_string(),
    }
}

/// The statements of a migration file: split at `;` ending a line, comments dropped.
fn statements(sql: &str) -> Vec<String> {
    let text: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    text.split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// How long a start waits for the schema migrations (another replica's included).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);

/// The schema version recorded in the database (0 when there is no record yet).
async fn schema_version(conn: &mut sqlx::MySqlConnection) -> Result<usize, String> {
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'weauth_schema'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| describe(&err))?;
    if exists == 0 {
        return Ok(0);
    }
    let version: Option<i32> = sqlx::query_scalar("SELECT version FROM weauth_schema WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(|err| describe(&err))?;
    Ok(usize::try_from(version.unwrap_or(0)).unwrap_or(0))
}

/// Refuses a database from a newer issuer; `Ok(true)` when the schema is current.
fn check_version(version: usize) -> Result<bool, String> {
    let latest = MIGRATIONS.len();
    if version > latest {
        return Err(format!(
            "the database has schema version {version}, written by a newer weauth-issuer; this one knows up to {latest}"
        ));
    }
    Ok(version == latest)
}

/// The name of the migration lock, named after the database: MySQL refuses a lock name over
/// 64 characters (error 3057), so a database name over 49 is hashed (MariaDB has no limit;
/// shorter names keep the name earlier versions used).
pub(super) const MIGRATION_LOCK: &str = "IF(CHAR_LENGTH(DATABASE()) <= 49, \
     CONCAT('weauth_migrate.', DATABASE()), CONCAT('weauth_migrate.', SHA1(DATABASE())))";

/// Applies the migrations the database lacks, holding `GET_LOCK` so that replicas starting
/// together migrate one at a time; refuses a database from a newer issuer. A current schema is
/// seen without the lock (every start but the first after an upgrade), and where `GET_LOCK`
/// is refused — MariaDB Galera (error 1235: it has no cluster-wide lock) — the migration runs
/// without it (every statement of a migration may run twice).
async fn migrate(pool: &MySqlPool) -> Result<(), String> {
    let mut conn = pool.acquire().await.map_err(|err| describe(&err))?;
    if check_version(schema_version(&mut conn).await?)? {
        return Ok(());
    }
    let locked: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar(&format!("SELECT GET_LOCK({MIGRATION_LOCK}, 60)"))
            .fetch_one(&mut *conn)
            .await;
    let locked = match locked {
        Ok(Some(1)) => true,
        Ok(_) => return Err("another replica held the migration lock for 60 s".into()),
        Err(err) if error_number(&err) == Some(1235) => {
            tracing::warn!(error = %err, "GET_LOCK is not supported here (MariaDB Galera): migrating without the lock");
            false
        }
        Err(err) => return Err(describe(&err)),
    };
    let result = async {
        // Created only when missing: a user with the data privileges alone (a DBA ran the
        // migrations) can start once the schema is current.
        let version = schema_version(&mut conn).await?;
        if check_version(version)? {
            return Ok(());
        }
        if version == 0 {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS weauth_schema (id TINYINT NOT NULL PRIMARY KEY, \
                 version INT NOT NULL) ENGINE=InnoDB",
            )
            .await
            .map_err(|err| format!("creating the schema table: {}", describe(&err)))?;
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            for statement in statements(sql) {
                conn.execute(statement.as_str()).await.map_err(|err| {
                    format!(
                        "migration to schema version {}: {}",
                        index + 1,
                        describe(&err)
                    )
                })?;
            }
            sqlx::query(
                "INSERT INTO weauth_schema (id, version) VALUES (1, ?) \
                 ON DUPLICATE KEY UPDATE version = ?",
            )
            .bind(i32::try_from(index + 1).unwrap_or(i32::MAX))
            .bind(i32::try_from(index + 1).unwrap_or(i32::MAX))
            .execute(&mut *conn)
            .await
            .map_err(|err| describe(&err))?;
            tracing::info!(version = index + 1, "MySQL schema migrated");
        }
        Ok(())
    }
    .await;
    if locked {
        let _ = conn
            .execute(format!("DO RELEASE_LOCK({MIGRATION_LOCK})").as_str())
            .await;
    }
    result
}

/// Refuses tables on another engine than InnoDB.
async fn check_engines(pool: &MySqlPool) -> Result<(), String> {
    let rows = sqlx::query(
        "SELECT TABLE_NAME, COALESCE(ENGINE, '') FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE()",
    )
    .fetch_all(pool)
    .await
    .map_err(|err| describe(&err))?;
    for row in rows {
        let table: String = row.try_get(0).map_err(|err| err.to_string())?;
        let engine: String = row.try_get(1).map_err(|err| err.to_string())?;
        if TABLES.contains(&table.as_str()) && !engine.eq_ignore_ascii_case("InnoDB") {
            return Err(format!(
                "table `{table}` uses the {engine} engine, which has no transactions (a login \
                 could be half-written by a crash); convert it: ALTER TABLE {table} ENGINE=InnoDB"
            ));
        }
    }
    Ok(())
}

/// Tries every kind of statement the store runs (locking read, insert, update, delete) in a
/// transaction that is rolled back: a missing privilege is found at start, not at the first
/// login.
async fn check_privileges(pool: &MySqlPool) -> Result<(), String> {
    let mut tx = pool.begin().await.map_err(|err| describe(&err))?;
    for statement in [
        "SELECT value FROM counters WHERE name = 'revocation_seq' FOR UPDATE",
        "INSERT INTO ephemeral (name, value, expires_at) VALUES ('weauth.probe', '', 0)",
        "UPDATE ephemeral SET expires_at = 1 WHERE name = 'weauth.probe'",
        "DELETE FROM ephemeral WHERE name = 'weauth.probe'",
    ] {
        tx.execute(statement).await.map_err(|err| describe(&err))?;
    }
    tx.rollback().await.map_err(|err| describe(&err))
}

/// What the server promises about a committed write surviving a crash of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    pub flush_log_at_trx_commit: i64,
    pub log_bin: bool,
    pub sync_binlog: i64,
}

impl Durability {
    /// The warnings for settings under which an acknowledged write can be lost in a crash of
    /// the server (empty when there are none).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        // 3: MariaDB's group commit, which syncs at every commit as 1 does.
        if !matches!(self.flush_log_at_trx_commit, 1 | 3) {
            warnings.push(format!(
                "innodb_flush_log_at_trx_commit is {} (not 1): a crash of the MySQL server can lose up to a second of acknowledged logins and revocations",
                self.flush_log_at_trx_commit
            ));
        }
        if self.log_bin && self.sync_binlog != 1 {
            warnings.push(format!(
                "sync_binlog is {} (not 1) with the binary log on: after a crash the binary log (and replicas fed from it) can miss acknowledged writes",
                self.sync_binlog
            ));
        }
        warnings
    }
}

async fn read_durability(pool: &MySqlPool) -> Result<Durability, sqlx::Error> {
    let row = sqlx::query(
        "SELECT CAST(@@GLOBAL.innodb_flush_log_at_trx_commit AS SIGNED), \
         CAST(@@GLOBAL.log_bin AS SIGNED), CAST(@@GLOBAL.sync_binlog AS SIGNED)",
    )
    .fetch_one(pool)
    .await?;
    Ok(Durability {
        flush_log_at_trx_commit: row.try_get(0)?,
        log_bin: row.try_get::<i64, _>(1)? != 0,
        sync_binlog: row.try_get(2)?,
    })
}

impl MysqlStore {
    /// Connects, migrates (one replica at a time), refuses a non-InnoDB table or a user
    /// lacking a privilege, and warns about durability settings that can lose acknowledged
    /// writes.
    ///
    /// # Errors
    /// [`StoreError::Open`] naming `WEAUTH_STORE` (password masked) and the reason.
    pub async fn connect(options: &MysqlOptions) -> Result<MysqlStore, StoreError> {
        let fail = |reason: String| StoreError::Open {
            target: format!("WEAUTH_STORE={}", options.display),
            source: reason.into(),
        };
        // The driver logs statements at DEBUG and slow ones (over 1 s) at WARN, never binds.
        let connect = MySqlConnectOptions::from_str(&options.url)
            .map_err(|_| fail("not a valid MySQL URL".into()))?;
        let pool = MySqlPoolOptions::new()
            .max_connections(options.pool_max)
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            // A connection idle a while is pinged before use (bounded: one to a silent server
            // is closed); one back from an operation within the last second is not — it
            // answered then, and was pinged on its way back (below). A ping on every checkout
            // was a round trip before every operation on the request path: 4 of a login's 14,
            // 3 of a refresh's 11. One that died since (the server restarted this second)
            // fails its first statement before anything is written: 503, as the restart's
            // other requests.
            .test_before_acquire(false)
            .before_acquire({
                let timeout = options.query_timeout;
                move |conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for < IDLE_BEFORE_PING {
                            return Ok(true);
                        }
                        match tokio::time::timeout(timeout, sqlx::Connection::ping(conn)).await {
                            Ok(pinged) => pinged.map(|()| true),
                            Err(_) => Err(sqlx::Error::PoolTimedOut),
                        }
                    })
                }
            })
            // A connection comes back to the pool through a ping of sqlx's own, without a
            // timeout: one whose operation was given up (`retry`'s timeout) on a server gone
            // silent held its place in the pool until TCP gave up (~15 minutes), so after as
            // many timeouts as the pool has places every operation was refused, the new
            // server answering or not. The same ping first, bounded: no answer in time closes
            // the connection before sqlx's own ping is sent (sqlx 0.8 sends that one after this
            // hook whatever it did: two pings on each return while the server answers).
            .after_release({
                let timeout = options.query_timeout;
                move |conn, _| {
                    Box::pin(async move {
                        match tokio::time::timeout(timeout, sqlx::Connection::ping(conn)).await {
                            Ok(pinged) => pinged.map(|()| true),
                            Err(_) => Err(sqlx::Error::PoolTimedOut),
                        }
                    })
                }
            })
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Strict: a value too long is an error, never a silent truncation; a
                    // lock wait fails after 5 s (503) instead of InnoDB's 50.
                    conn.execute(
                        "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,\
                         NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO', \
                         SESSION innodb_lock_wait_timeout = 5",
                    )
                    .await?;
                    // READ COMMITTED: a locking read of a row that is not there (a new code,
                    // a first login's openid) takes no gap lock, so concurrent logins do not
                    // deadlock on inserts into one gap; a racing insert of the same key meets
                    // the unique index instead (1062) and is run again. The feed's reads ask
                    // for REPEATABLE READ themselves (one snapshot).
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(connect.clone());
        let opened = async {
            // One connection of its own first: the pool would only say it timed out, this
            // says why (refused, access denied, unknown database).
            use sqlx::Connection as _;
            sqlx::MySqlConnection::connect_with(&connect)
                .await
                .map_err(|err| describe(&err))?
                .close()
                .await
                .map_err(|err| describe(&err))?;
            let version: String = sqlx::query_scalar("SELECT VERSION()")
                .fetch_one(&pool)
                .await
                .map_err(|err| describe(&err))?;
            Ok::<_, String>(version)
        };
        let answer = options.acquire_timeout.max(Duration::from_secs(5)) * 3;
        let no_answer = || fail("no answer from the server".into());
        let version = tokio::time::timeout(answer, opened)
            .await
            .map_err(|_| no_answer())?
            .map_err(fail)?;
        // Not under the connection's timeout: a migration may wait a minute for another
        // replica's, and one on a large table (an index) may run for minutes — cut at every
        // start, its committed DDL would be re-run and fail.
        tokio::time::timeout(MIGRATION_TIMEOUT, migrate(&pool))
            .await
            .map_err(|_| {
                fail(format!(
                    "the schema migration did not finish within {} minutes",
                    MIGRATION_TIMEOUT.as_secs() / 60
                ))
            })?
            .map_err(fail)?;
        tokio::time::timeout(answer, async {
            check_engines(&pool).await?;
            check_privileges(&pool).await
        })
        .await
        .map_err(|_| no_answer())?
        .map_err(fail)?;
        match read_durability(&pool).await {
            Ok(durability) => {
                for warning in durability.warnings() {
                    tracing::warn!(store = %options.display, "{warning}");
                }
            }
            Err(err) => tracing::warn!(
                store = %options.display,
                error = %err,
                "could not read the MySQL durability settings (innodb_flush_log_at_trx_commit, sync_binlog)"
            ),
        }
        tracing::info!(store = %options.display, version = %version, "MySQL store ready");
        Ok(MysqlStore {
            pool,
            query_timeout: options.query_timeout,
        })
    }

    /// The server's durability settings (for tests and the start-up warning).
    ///
    /// # Errors
    /// The server cannot be read.
    pub async fn durability(&self) -> Result<Durability, StoreError> {
        read_durability(&self.pool).await.map_err(db_err)
    }

    /// [`retry`] under `WEAUTH_MYSQL_QUERY_TIMEOUT`: a request's store operation.
    async fn retry<T, F, Fut>(&self, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        retry(self.query_timeout, attempt).await
    }

    /// Moves the revocation seq on by [`crate::domain::rules::SEQ_GAP`], and at least to
    /// `now_ms` in microseconds ([`crate::domain::rules::seq_after_possible_loss`]), and
    /// returns the seq it continues from. The issuer calls it at every start: after a backup
    /// restored with the issuers stopped (the restore procedure, OPERATIONS.md), the next
    /// revocations are not given the seqs of the ones the backup lacked, which sidecars may
    /// hold. A failover to another server is covered
    /// at the first revocation written on it (`revocation_server`).
    ///
    /// # Errors
    /// The database cannot be written.
    pub async fn move_seq_past_possible_loss(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.retry(|| ops::move_seq_past_possible_loss(&self.pool, now_ms))
            .await
    }
}

#[async_trait]
impl Store for MysqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(db_err)
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.retry(|| ops::keys(&self.pool)).await
    }

    async fn insert_key(
        &self,
        key: &KeyRecord,
        only_if_none_active_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.retry(|| ops::insert_key(&self.pool, key, only_if_none_active_at))
            .await
    }

    async fn erase_keys(&self, kids: &[String]) -> Result<(), StoreError> {
        self.retry(|| ops::erase_keys(&self.pool, kids)).await
    }

    async fn code_used(&self, code_hash: &str) -> Result<bool, StoreError> {
        self.retry(|| ops::code_used(&self.pool, code_hash)).await
    }

    async fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError> {
        self.retry(|| ops::login(&self.pool, login)).await
    }

    async fn discard_session(&self, sid: &str) -> Result<(), StoreError> {
        self.retry(|| ops::discard_session(&self.pool, sid)).await
    }

    async fn rotate_refresh(&self, rotate: &Rotate) -> Result<RotateResult, StoreError> {
        self.retry(|| ops::rotate_refresh(&self.pool, rotate)).await
    }

    async fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.retry(|| ops::session(&self.pool, sid)).await
    }

    async fn session_key_sealed(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.retry(|| ops::session_key_sealed(&self.pool, sid))
            .await
    }

    async fn user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError> {
        self.retry(|| ops::user(&self.pool, sub)).await
    }

    async fn set_phone(
        &self,
        sub: &str,
        sealed_phone: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.retry(|| ops::set_phone(&self.pool, sub, sealed_phone, now))
            .await
    }

    async fn phones_page(&self, cursor: &str, limit: usize) -> Result<PhonesPage, StoreError> {
        self.retry(|| ops::phones_page(&self.pool, cursor, limit))
            .await
    }

    async fn reseal_phone(
        &self,
        sub: &str,
        expected: &str,
        sealed: &str,
    ) -> Result<bool, StoreError> {
        self.retry(|| ops::reseal_phone(&self.pool, sub, expected, sealed))
            .await
    }

    async fn set_risk(&self, sub: &str, fact: &RiskFact) -> Result<bool, StoreError> {
        self.retry(|| ops::set_risk(&self.pool, sub, fact)).await
    }

    async fn wechat_token(&self, appid: &str) -> Result<Option<CachedToken>, StoreError> {
        self.retry(|| ops::wechat_token(&self.pool, appid)).await
    }

    async fn lease_wechat_token(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        self.retry(|| ops::lease_wechat_token(&self.pool, appid, holder, now, lease_until))
            .await
    }

    async fn put_wechat_token(
        &self,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<bool, StoreError> {
        self.retry(|| ops::put_wechat_token(&self.pool, appid, token, holder))
            .await
    }

    async fn release_wechat_lease(&self, appid: &str, holder: &str) -> Result<(), StoreError> {
        self.retry(|| ops::release_wechat_lease(&self.pool, appid, holder))
            .await
    }

    async fn invalidate_wechat_token(
        &self,
        appid: &str,
        token_hash: &str,
    ) -> Result<bool, StoreError> {
        self.retry(|| ops::invalidate_wechat_token(&self.pool, appid, token_hash))
            .await
    }

    async fn revoke(&self, revoke: &Revoke, now: i64, until: i64) -> Result<Entry, StoreError> {
        self.retry(|| ops::revoke(&self.pool, revoke, now, until))
            .await
    }

    async fn revocation_facts(
        &self,
        jti: &str,
        sid: &str,
        sub: &str,
    ) -> Result<RevocationFacts, StoreError> {
        self.retry(|| ops::revocation_facts(&self.pool, jti, sid, sub))
            .await
    }

    async fn feed_snapshot(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> Result<FeedSnapshot, StoreError> {
        self.retry(|| ops::feed_snapshot(&self.pool, after, now, limit))
            .await?
            .map_err(StoreError::Corrupt)
    }

    async fn current_seq(&self) -> Result<u64, StoreError> {
        self.retry(|| ops::current_seq(&self.pool)).await
    }

    async fn report_access_ttl(
        &self,
        access_ttl: i64,
        now: i64,
        forget_before: i64,
    ) -> Result<Vec<ReportedTtl>, StoreError> {
        self.retry(|| upkeep::report_access_ttl(&self.pool, access_ttl, now, forget_before))
            .await
    }

    async fn access_ttls(&self) -> Result<Vec<ReportedTtl>, StoreError> {
        self.retry(|| upkeep::access_ttls(&self.pool)).await
    }

    async fn put_ephemeral(
        &self,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.retry(|| ops::put_ephemeral(&self.pool, key, value, expires_at))
            .await
    }

    async fn take_ephemeral(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.retry(|| ops::take_ephemeral(&self.pool, key, now))
            .await
    }

    async fn purge(&self, now: i64) -> Result<Purged, StoreError> {
        // Its own bound: up to forty batches, each its own transaction (what was
        // committed stays when it is cut short).
        retry(PURGE_TIMEOUT, || upkeep::purge(&self.pool, now)).await
    }

    async fn grants(&self, sub: &str) -> Result<Option<Grants>, StoreError> {
        self.retry(|| user_grants::grants(&self.pool, sub)).await
    }

    async fn set_scopes(&self, sub: &str, scopes: &[String], now: i64) -> Result<bool, StoreError> {
        let scopes = grants::stored_scopes(scopes);
        self.retry(|| user_grants::set_scopes(&self.pool, sub, &scopes, now))
            .await
    }

    async fn set_ban(&self, sub: &str, ban: Option<&Ban>, now: i64) -> Result<bool, StoreError> {
        self.retry(|| user_grants::set_ban(&self.pool, sub, ban, now))
            .await
    }

    async fn set_ban_if(
        &self,
        sub: &str,
        expected: Option<&Ban>,
        ban: Option<&Ban>,
        now: i64,
    ) -> Result<BanWrite, StoreError> {
        self.retry(|| user_grants::set_ban_if(&self.pool, sub, expected, ban, now))
            .await
    }

    async fn refresh_owner(
        &self,
        _family: &str,
        refresh_hash: &str,
    ) -> Result<Option<String>, StoreError> {
        self.retry(|| ops::refresh_owner(&self.pool, refresh_hash))
            .await
    }
}

#[cfg(test)]
mod tests;
