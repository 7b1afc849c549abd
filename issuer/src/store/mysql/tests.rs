//! The MySQL store on a real MariaDB server (one per test binary, a fresh database per
//! test): the contract suite, migrations, and the start-up refusals.

use std::sync::Arc;

use super::*;
use crate::store::contract::{contract_tests, Backend};
use weauth_servers::mariadb;

/// A fresh database on the shared server; every handle is its own pool, like a replica.
struct TestDb {
    url: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let server = mariadb::shared().unwrap();
        let db = server.create_database().unwrap();
        TestDb {
            url: server.url(&db),
        }
    }

    fn options(&self) -> MysqlOptions {
        MysqlOptions {
            url: self.url.clone(),
            display: self.url.replace(mariadb::PASSWORD, "***"),
            pool_max: 8,
            acquire_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(10),
        }
    }
}

#[async_trait]
impl Backend for TestDb {
    async fn handle(&self) -> Arc<dyn Store> {
        Arc::new(MysqlStore::connect(&self.options()).await.unwrap())
    }
}

contract_tests!(TestDb::new());

fn open_error(result: Result<MysqlStore, StoreError>) -> String {
    match result {
        Ok(_) => panic!("the store must be refused"),
        Err(err) => {
            assert!(matches!(err, StoreError::Open { .. }), "{err}");
            err.to_string()
        }
    }
}

#[test]
fn mysql_migration_statements_split_at_line_ends_without_comments() {
    let split = statements("-- a; comment\nCREATE TABLE a (x INT);\nINSERT INTO a VALUES (1);\n");
    assert_eq!(
        split,
        ["CREATE TABLE a (x INT)", "INSERT INTO a VALUES (1)"]
    );
    for migration in MIGRATIONS {
        assert!(statements(migration).iter().all(|s| !s.contains(';')));
    }
}

#[test]
fn mysql_durability_warns_on_lax_flush_and_unsynced_binlog_only() {
    let safe = Durability {
        flush_log_at_trx_commit: 1,
        log_bin: false,
        sync_binlog: 0,
    };
    assert!(safe.warnings().is_empty());
    // MariaDB's 3 syncs at every commit too.
    let group_commit = Durability {
        flush_log_at_trx_commit: 3,
        ..safe
    };
    assert!(group_commit.warnings().is_empty());
    let lax = Durability {
        flush_log_at_trx_commit: 2,
        log_bin: true,
        sync_binlog: 0,
    };
    let warnings = lax.warnings();
    assert_eq!(warnings.len(), 2);
    assert!(warnings[0].contains("innodb_flush_log_at_trx_commit is 2"));
    assert!(warnings[1].contains("sync_binlog is 0"));
}

/// A purge under way locks only the refresh tokens it removes: a rotation of a live one does
/// not wait for it. (Joined with `sessions` under an `OR`, the delete read and locked every
/// row of the table until it committed: rotations waited past the lock wait timeout into a
/// 503, at every replica's purge.)
#[tokio::test]
async fn mysql_purge_under_way_leaves_live_refresh_tokens_unlocked() {
    use crate::store::contract::login;
    let db = TestDb::new().await;
    let store = MysqlStore::connect(&db.options()).await.unwrap();
    // r-old expires at 110, r-live at 1100.
    store.login(&login("old", "o-old", None, 10)).await.unwrap();
    store
        .login(&login("live", "o-live", None, 1000))
        .await
        .unwrap();
    // A table of live tokens, as in production (the index is then the way to the expired).
    for i in 0..50 {
        let other = login(&format!("l{i}"), &format!("o-l{i}"), None, 1000 + i);
        store.login(&other).await.unwrap();
    }
    sqlx::query("ANALYZE TABLE refresh_tokens")
        .execute(&store.pool)
        .await
        .unwrap();
    let mut purging = store.pool.begin().await.unwrap();
    let removed = sqlx::query(upkeep::PURGE_REFRESH_TOKENS)
        .bind(500)
        .bind(440)
        .bind(1_000)
        .execute(&mut *purging)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(removed, 1);
    let mut rotating = store.pool.acquire().await.unwrap();
    sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
        .execute(&mut *rotating)
        .await
        .unwrap();
    let mut rotation = sqlx::Connection::begin(&mut *rotating).await.unwrap();
    // What `rotate_refresh` reads first, under the purge.
    let locked = sqlx::query("SELECT sid FROM refresh_tokens WHERE hash = ? FOR UPDATE")
        .bind("r-live")
        .fetch_optional(&mut *rotation)
        .await;
    assert!(
        matches!(locked, Ok(Some(_))),
        "the live token's row waited on the purge: {locked:?}"
    );
    rotation.rollback().await.unwrap();
    purging.rollback().await.unwrap();
}

#[tokio::test]
async fn mysql_second_start_finds_schema_and_seq_kept_after_purge() {
    let db = TestDb::new().await;
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
    let server = mariadb::shared().unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let version = server
        .sql(&format!("SELECT version FROM {name}.weauth_schema"))
        .unwrap();
    assert_eq!(version.trim(), MIGRATIONS.len().to_string());
}

#[tokio::test]
async fn mysql_replicas_starting_together_migrate_once() {
    let db = TestDb::new().await;
    let options = db.options();
    let starts = (0..4).map(|_| MysqlStore::connect(&options));
    for store in futures_util::future::join_all(starts).await {
        store.unwrap();
    }
}

/// A start on a current schema takes no migration lock: it does not wait for one held
/// elsewhere, and works where `GET_LOCK` is refused (MariaDB Galera). Shown by holding the
/// lock from another connection: the start waited for it, past its own timeout, before.
#[tokio::test]
async fn mysql_start_on_a_current_schema_takes_no_migration_lock() {
    let db = TestDb::new().await;
    drop(db.handle().await);
    let holder = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let mut conn = holder.acquire().await.unwrap();
    let held: Option<i64> =
        sqlx::query_scalar(&format!("SELECT GET_LOCK({}, 0)", super::MIGRATION_LOCK))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(held, Some(1));
    // It starts (it waited for the lock before, past the start's timeout).
    drop(db.handle().await);
}

#[tokio::test]
async fn mysql_database_from_newer_issuer_refused_naming_version() {
    let db = TestDb::new().await;
    drop(db.handle().await);
    let server = mariadb::shared().unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    server
        .sql(&format!("UPDATE {name}.weauth_schema SET version = 99"))
        .unwrap();
    let err = open_error(MysqlStore::connect(&db.options()).await);
    assert!(err.contains("schema version 99"), "{err}");
}

#[tokio::test]
async fn mysql_unreachable_at_start_names_weauth_store_without_password() {
    let port = weauth_servers::free_port().unwrap();
    let options = MysqlOptions {
        url: format!("mysql://weauth:s3cret@127.0.0.1:{port}/weauth"),
        display: format!("mysql://weauth:***@127.0.0.1:{port}/weauth"),
        pool_max: 2,
        acquire_timeout: Duration::from_secs(1),
        query_timeout: Duration::from_secs(10),
    };
    let err = open_error(MysqlStore::connect(&options).await);
    assert!(
        err.contains("WEAUTH_STORE=mysql://weauth:***@127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[tokio::test]
async fn mysql_user_without_write_privileges_refused_with_the_reason() {
    let db = TestDb::new().await;
    drop(db.handle().await);
    let server = mariadb::shared().unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let user = format!("ro_{name}");
    server
        .sql(&format!(
            "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'ro'; \
             GRANT SELECT ON {name}.* TO '{user}'@'127.0.0.1'"
        ))
        .unwrap();
    let url = format!("mysql://{user}:ro@127.0.0.1:{}/{name}", server.port());
    let options = MysqlOptions {
        display: url.replace(":ro@", ":***@"),
        url,
        pool_max: 2,
        acquire_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(10),
    };
    let err = open_error(MysqlStore::connect(&options).await);
    assert!(err.contains("lacks a privilege"), "{err}");
    // A user who cannot create the tables is told the same at the migration.
    let fresh = server.create_database().unwrap();
    server
        .sql(&format!(
            "GRANT SELECT ON {fresh}.* TO '{user}'@'127.0.0.1'"
        ))
        .unwrap();
    let url = format!("mysql://{user}:ro@127.0.0.1:{}/{fresh}", server.port());
    let err = open_error(
        MysqlStore::connect(&MysqlOptions {
            display: url.replace(":ro@", ":***@"),
            url,
            ..options
        })
        .await,
    );
    assert!(err.contains("lacks a privilege"), "{err}");
    assert!(err.contains("CREATE command denied"), "{err}");
}

#[tokio::test]
async fn mysql_non_transactional_table_refused_naming_it() {
    let db = TestDb::new().await;
    let server = mariadb::shared().unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    server
        .sql(&format!(
            "CREATE TABLE {name}.sessions (sid VARCHAR(191) PRIMARY KEY) ENGINE=MyISAM"
        ))
        .unwrap();
    let err = open_error(MysqlStore::connect(&db.options()).await);
    assert!(
        err.contains("table `sessions` uses the MyISAM engine"),
        "{err}"
    );
}

#[test]
fn mysql_errors_map_lost_server_to_unavailable() {
    assert!(matches!(
        db_err(sqlx::Error::PoolTimedOut),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        db_err(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))),
        StoreError::Unavailable(_)
    ));
}

/// ProxySQL's answer while its writer hostgroup is empty during a failover (error 9001),
/// raised by a real server: a 503 to retry, not a 500.
#[tokio::test]
async fn mysql_proxysql_without_a_writer_is_unavailable() {
    let db = TestDb::new().await;
    let store = MysqlStore::connect(&db.options()).await.unwrap();
    let err = sqlx::query(
        "BEGIN NOT ATOMIC SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 9001, \
         MESSAGE_TEXT = 'Max connect timeout reached while reaching hostgroup 10 after 10000ms'; END",
    )
    .execute(&store.pool)
    .await
    .unwrap_err();
    assert!(matches!(db_err(err), StoreError::Unavailable(_)));
}

#[tokio::test]
async fn mysql_durability_read_from_the_server() {
    let db = TestDb::new().await;
    let store = MysqlStore::connect(&db.options()).await.unwrap();
    let durability = store.durability().await.unwrap();
    // The test server runs with MariaDB's defaults: flush at every commit, no binary log.
    assert_eq!(durability.flush_log_at_trx_commit, 1, "{durability:?}");
    assert!(!durability.log_bin, "{durability:?}");
    assert!(durability.warnings().is_empty());
}

/// 64 first logins of distinct users at once on a fresh database (the worst case for gap
/// locks: every new code, openid and refresh hash falls into the same few index gaps): all
/// are created, none is refused as busy. Prints InnoDB's deadlock count over the run (the
/// server's global counter: other tests running at the same time add to it).
#[tokio::test]
async fn mysql_concurrent_first_logins_all_created() {
    let db = TestDb::new().await;
    let store = MysqlStore::connect(&MysqlOptions {
        pool_max: 16,
        ..db.options()
    })
    .await
    .unwrap();
    let server = mariadb::shared().unwrap();
    let deadlocks = || {
        server
            .sql("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
            .unwrap()
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = deadlocks();
    let logins = (0..64).map(|i| {
        let store = store.clone();
        async move {
            let n = format!("{i:02}");
            store
                .login(&NewLogin {
                    appid: "wx1".into(),
                    openid: format!("o-{n}"),
                    unionid: None,
                    code_hash: format!("h-{n}"),
                    new_sub: format!("u-{n}"),
                    sid: format!("s-{n}"),
                    session_key_sealed: None,
                    now: 100,
                    session_expires: 1000,
                    refresh_hash: format!("r-{n}"),
                    refresh_expires: 200,
                })
                .await
        }
    });
    for result in futures_util::future::join_all(logins).await {
        assert!(
            matches!(result, Ok(LoginResult::Created { new_user: true, .. })),
            "{result:?}"
        );
    }
    println!(
        "mysql: 64 concurrent first logins, {} InnoDB deadlocks",
        deadlocks() - before
    );
}

/// A unique key still taken after the retries is contention (503, retry), and what is said of
/// it names the key, never its value: MySQL's message quotes the value — an openid or a
/// unionid — and the error reaches the issuer's log. It was logged whole.
#[tokio::test]
async fn mysql_duplicate_key_after_the_retries_is_busy_and_names_no_value() {
    let db = TestDb::new().await;
    let store = MysqlStore::connect(&db.options()).await.unwrap();
    let insert = || {
        sqlx::query("INSERT INTO users (sub, unionid, created_at, updated_at) VALUES (?, ?, 1, 1)")
            .bind(crate::secrets::random_id("u_"))
            .bind("union-secret-42")
            .execute(&store.pool)
    };
    retry(Duration::from_secs(10), insert).await.unwrap();
    let err = retry(Duration::from_secs(10), insert).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let said = err.to_string();
    assert!(!said.contains("union-secret-42"), "{said}");
    assert!(said.contains("unionid"), "{said}");
    assert_eq!(
        duplicate_key("Duplicate entry 'wx1-o123' for key 'identities.PRIMARY'"),
        "a unique key stayed taken through 5 retries (MySQL 1062, key 'identities.PRIMARY')"
    );
}

/// The purge removes the expired rows in batches (each its own transaction), at most ten a
/// run — a backlog drains over the next runs, each within the query timeout — and no live one.
#[tokio::test]
async fn mysql_purge_goes_through_ten_batches_a_run() {
    use crate::store::contract::login;
    let db = TestDb::new().await;
    let store = MysqlStore::connect(&db.options()).await.unwrap();
    store
        .login(&login("live", "o-live", None, 1000))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) \
         WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000), \
         m (j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM m WHERE j < 51) \
         SELECT CONCAT('h', i, '-', j), 's-gone', 1, 50 FROM n, m LIMIT 50007",
    )
    .execute(&store.pool)
    .await
    .unwrap();
    let purged = store.purge(100).await.unwrap();
    assert_eq!(purged.refresh_tokens, 50_000);
    let purged = store.purge(100).await.unwrap();
    assert_eq!(purged.refresh_tokens, 7);
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM refresh_tokens WHERE hash = 'r-live' \
         AND (SELECT COUNT(*) FROM refresh_tokens) = 1",
    )
    .fetch_one(&store.pool)
    .await
    .unwrap();
    assert_eq!(left, 1, "the live token alone is left");
}

/// Two revocations, then the database made the copy that lost the second (its seq set back to
/// the first's, the second's row gone) and, with `another_server`, last written by another
/// server than this one.
async fn two_revocations_then_a_copy_without_the_second(
    store: &MysqlStore,
    another_server: bool,
) -> (Entry, Entry) {
    let mut entries = Vec::new();
    for jti in ["a", "b"] {
        let entry = store
            .revoke(&Revoke::Jti(jti.into()), 10, 20)
            .await
            .unwrap();
        entries.push(entry);
    }
    let (a, b) = (entries[0].clone(), entries[1].clone());
    assert_eq!(b.seq, a.seq + 1, "one server: no move");
    sqlx::query(
        "UPDATE counters SET value = CASE name WHEN 'revocation_seq' THEN ? \
         ELSE CAST(@@server_id AS SIGNED) + ? END \
         WHERE name IN ('revocation_seq', 'revocation_server')",
    )
    .bind(ops::to_i64(a.seq))
    .bind(i64::from(another_server))
    .execute(&store.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM revocations WHERE seq > ?")
        .bind(ops::to_i64(a.seq))
        .execute(&store.pool)
        .await
        .unwrap();
    (a, b)
}

/// A backup restored with the issuers stopped lacks the last revocations, whose seqs a sidecar
/// may hold as its `since`: the start after it moves the seq past them, so the next
/// revocation is not given one of those seqs (a sidecar past it would never ask for it).
#[tokio::test]
async fn mysql_start_after_a_restored_backup_hands_out_no_seq_a_sidecar_holds() {
    let db = TestDb::new().await;
    let store = MysqlStore::connect(&db.options()).await.unwrap();
    let (a, b) = two_revocations_then_a_copy_without_the_second(&store, false).await;
    drop(store);
    let store = MysqlStore::connect(&db.options()).await.unwrap();
    let from = store.move_seq_past_possible_loss(0).await.unwrap();
    assert_eq!(from, a.seq + crate::domain::rules::SEQ_GAP);
    crate::store::contract::revoke_past_a_lost_one(&store, &b).await;
}

/// A failover to a server that lacked the old primary's last revocation: the first
/// revocation written on the new server moves the seq past it; the next ones follow on.
#[tokio::test]
async fn mysql_first_revocation_on_another_server_moves_the_seq_past_a_lost_one() {
    let db = TestDb::new().await;
    let store = MysqlStore::connect(&db.options()).await.unwrap();
    // The copy the new primary had: without b, and written last by another server.
    let (a, b) = two_revocations_then_a_copy_without_the_second(&store, true).await;
    let c = store
        .revoke(&Revoke::Jti("c".into()), 10, 20)
        .await
        .unwrap();
    // Revoked at 10 s: past the gap and the time in microseconds.
    assert_eq!(
        c.seq,
        crate::domain::rules::seq_after_possible_loss(a.seq, 10_000) + 1
    );
    let d = store
        .revoke(&Revoke::Jti("d".into()), 10, 20)
        .await
        .unwrap();
    assert_eq!(d.seq, c.seq + 1);
    let past_b = store.feed_snapshot(b.seq, 10, 10).await.unwrap();
    assert_eq!(past_b.entries, vec![c, d]);
}

/// A server lost without closing its connections (a dead host, a failover whose address
/// moved: the connections open stay open and nothing comes back on them, while a new one
/// reaches a live server — a relay whose connections go silent): an operation under way is
/// given up after `WEAUTH_MYSQL_QUERY_TIMEOUT` as unavailable (503), not held until TCP gives
/// up, about 15 minutes on; and its connection, which sqlx tests with a ping of its own on
/// the way back to the pool, does not hold its place there that long either: the next
/// operations open new connections and succeed. The operation is caught under way by a row
/// lock another connection holds.
#[tokio::test]
async fn mysql_server_gone_silent_gives_up_within_the_query_timeout() {
    use sqlx::Connection as _;
    let server = mariadb::shared().unwrap();
    let db = server.create_database().unwrap();
    let relay = weauth_servers::relay::Relay::start(server.port())
        .await
        .unwrap();
    let direct = server.url(&db);
    let url = direct.replace(
        &format!(":{}/", server.port()),
        &format!(":{}/", relay.port()),
    );
    let store = MysqlStore::connect(&MysqlOptions {
        display: url.replace(mariadb::PASSWORD, "***"),
        url,
        pool_max: 1,
        acquire_timeout: Duration::from_secs(5),
        // Under InnoDB's lock wait (5 s), with room to see the operation wait before it is
        // given up on.
        query_timeout: Duration::from_secs(3),
    })
    .await
    .unwrap();
    let seq = store.current_seq().await.unwrap();
    let mut holder = sqlx::MySqlConnection::connect(&direct).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT value FROM counters WHERE name = 'revocation_seq' FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.move_seq_past_possible_loss(0).await })
    };
    // Under way: its statement is executing on the server (waiting on the lock), not waiting
    // for the pool.
    let mut tries = 0;
    let waiting_here = format!(
        "SELECT COUNT(*) FROM information_schema.processlist \
         WHERE db = '{db}' AND command IN ('Execute', 'Query') AND id <> CONNECTION_ID()"
    );
    loop {
        let seen = server.sql(&waiting_here).unwrap();
        if seen.trim() == "1" {
            break;
        }
        tries += 1;
        assert!(
            tries < 40,
            "the operation never waited on the lock: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.silence();
    let result = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("an operation under way was held by a silent server past 20 s")
        .unwrap();
    assert!(
        matches!(&result, Err(StoreError::Unavailable(why)) if why.to_string().contains("WEAUTH_MYSQL_QUERY_TIMEOUT")),
        "{result:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    // The pool's one place is free again within seconds: a new connection, and the operation
    // given up left nothing.
    let now = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match store.current_seq().await {
                Ok(now) => return now,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the pool's place stayed held by the silent connection");
    assert_eq!(now, seq);
}

/// A pooled connection back from an operation within the last second is used without a ping:
/// a ping on every checkout was a round trip before every store operation on the request path.
/// One idle longer is pinged first, and one that died meanwhile (killed here) is replaced, not
/// handed to the operation.
#[tokio::test]
async fn mysql_a_connection_just_used_is_not_pinged_again_one_idle_is() {
    let (server, db, store) = store_on_a_server_of_its_own().await;
    store.current_seq().await.unwrap();
    // COM_PING is counted among the server's admin commands.
    let pings = || status(&server, "Com_admin_commands");
    let before = pings();
    for _ in 0..40 {
        store.current_seq().await.unwrap();
    }
    let made = pings() - before;
    // Two on each return (the bounded one, then sqlx's own), none on checkout: 80; with one on
    // every checkout, 120.
    assert!((40..=85).contains(&made), "{made} pings for 40 operations");
    let ids = server
        .sql(&format!(
            "SELECT id FROM information_schema.processlist WHERE db = '{db}'"
        ))
        .unwrap();
    for id in ids.split_whitespace() {
        server.sql(&format!("KILL {id}")).unwrap();
    }
    tokio::time::sleep(IDLE_BEFORE_PING + Duration::from_millis(200)).await;
    store.current_seq().await.unwrap();
}

/// A store on a server of its own, one pooled connection: the server's global counters are
/// then this store's.
async fn store_on_a_server_of_its_own() -> (mariadb::MariaDb, String, MysqlStore) {
    let server = mariadb::MariaDb::start(&[]).await.unwrap();
    let db = server.create_database().unwrap();
    let url = server.url(&db);
    let store = MysqlStore::connect(&MysqlOptions {
        display: url.replace(mariadb::PASSWORD, "***"),
        url,
        pool_max: 1,
        acquire_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    (server, db, store)
}

/// One of the server's global status counters (`SHOW GLOBAL STATUS`).
fn status(server: &mariadb::MariaDb, name: &str) -> u64 {
    let row = server
        .sql(&format!("SHOW GLOBAL STATUS LIKE '{name}'"))
        .unwrap();
    row.split_whitespace().last().unwrap().parse().unwrap()
}

/// A feed read is one statement — the counters and the rows in the one read view InnoDB gives
/// a statement — not a REPEATABLE READ transaction of six round trips (whose caller, gone
/// between its `SET TRANSACTION` and its `BEGIN`, left that level to the connection's next
/// transaction); and it answers as before, counters and rows.
#[tokio::test]
async fn mysql_a_feed_read_is_one_statement() {
    let (server, _db, store) = store_on_a_server_of_its_own().await;
    let entry = store
        .revoke(&Revoke::Jti("j-one".into()), 10, 100)
        .await
        .unwrap();
    let (begins, selects) = (status(&server, "Com_begin"), status(&server, "Com_select"));
    let snapshot = store.feed_snapshot(0, 10, 100).await.unwrap();
    assert_eq!(status(&server, "Com_begin"), begins, "a transaction");
    assert_eq!(status(&server, "Com_select") - selects, 1);
    assert_eq!(snapshot.current, entry.seq);
    assert_eq!(snapshot.entries, vec![entry.clone()]);
    let empty = store.feed_snapshot(entry.seq, 10, 100).await.unwrap();
    assert_eq!((empty.current, empty.entries.len()), (entry.seq, 0));
}
