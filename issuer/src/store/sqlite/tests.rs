//! The SQLite store: the contract suite on two connections to one file, migrations, and
//! what only a file has.

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
        conn.execute_batch(MIGRATIONS[0]).unwrap();
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

/// The purge finds expired rows by each table's expiry index, and the revocations by their
/// seq, stopping at the first live one: without them it scanned the sessions, refresh-token
/// and revocation tables whole (0.3 s at a million tokens, holding the writer and the
/// connection every other call waits for).
#[test]
fn sqlite_purge_deletes_find_rows_by_their_expiry_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).unwrap();
    let conn = store.conn.lock().unwrap();
    let plan = |sql: &str| -> String {
        let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = statement
            .query_map(params![1_i64, 10_i64], |row| row.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    };
    // The grace a used refresh token is kept for, written into the SQL as a number.
    assert!(ops::ExpiringTable::RefreshTokens
        .delete_batch()
        .contains(&format!("?1 - {}", crate::config::MAX_REUSE_GRACE)));
    for table in ops::PURGED_BY_EXPIRY {
        let sql = table.delete_batch();
        let plan = plan(sql);
        assert!(plan.contains("_expires"), "{sql}: {plan}");
        assert!(!plan.contains("SCAN"), "{sql}: {plan}");
    }
    for sql in [ops::PURGE_REVOCATIONS_HIGHEST, ops::PURGE_REVOCATIONS] {
        // Bound like the others (the plan's parameters are two).
        let plan = plan(&format!("{sql} AND ?2 > 0"));
        assert!(plan.contains("PRIMARY KEY"), "{sql}: {plan}");
        assert!(!plan.contains("SCAN"), "{sql}: {plan}");
    }
    // The first live entry: in seq order, no sort, so it stops at the first live row.
    let sql = ops::PURGE_REVOCATIONS_FIRST_LIVE;
    let plan = plan(&sql.replace("ORDER BY", "AND ?2 > 0 ORDER BY"));
    assert_eq!(plan, "SCAN revocations", "{sql}");
}

/// A purge removes every expired row, however many batches that takes, and no live one.
#[tokio::test]
async fn sqlite_purge_goes_through_every_batch() {
    let db = TempDb::new().await;
    let store = SqliteStore::open(&db.path()).unwrap();
    {
        let mut conn = store.conn.lock().unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..(2 * ops::PURGE_BATCH + 7) {
            tx.execute(
                "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) \
                 VALUES (?1, 's', 1, 50)",
                [format!("h{i}")],
            )
            .unwrap();
        }
        tx.execute(
            "INSERT INTO refresh_tokens (hash, sid, created_at, expires_at) \
             VALUES ('live', 's', 1, 500)",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let purged = store.purge(100).await.unwrap();
    assert_eq!(purged.refresh_tokens, 2 * ops::PURGE_BATCH + 7);
    let left: Vec<String> = {
        let conn = store.conn.lock().unwrap();
        let mut statement = conn.prepare("SELECT hash FROM refresh_tokens").unwrap();
        let rows = statement.query_map([], |row| row.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(left, ["live"]);
}

/// A copy of the store's file, as a backup is taken.
fn back_up(store: &SqliteStore, backup: &std::path::Path) {
    let conn = store.conn.lock().unwrap();
    conn.execute("VACUUM INTO ?1", params![backup.to_str().unwrap()])
        .unwrap();
}

/// The backup put back over the file, with the issuer stopped (`store` closed first).
fn restore(store: SqliteStore, db: &TempDb, backup: &std::path::Path) -> SqliteStore {
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.path().display()));
    }
    std::fs::copy(backup, db.path()).unwrap();
    SqliteStore::open(&db.path()).unwrap()
}

/// A backup restored over the file with the issuer stopped lacks the last revocations, whose
/// seqs a sidecar may hold as its `since`: the start after it moves the seq past them, so the
/// next revocation is not given one of those seqs (a sidecar past it would never ask for it).
/// Here the backup was taken before the first revocation (`issuer/tests/service.rs` restores
/// one taken after).
#[tokio::test]
async fn sqlite_start_after_a_restored_backup_hands_out_no_seq_a_sidecar_holds() {
    let db = TempDb::new().await;
    let backup = db.dir.path().join("backup.db");
    let store = SqliteStore::open(&db.path()).unwrap();
    back_up(&store, &backup);
    store
        .revoke(&Revoke::Jti("a".into()), 10, 20)
        .await
        .unwrap();
    let b = store
        .revoke(&Revoke::Jti("b".into()), 10, 20)
        .await
        .unwrap();
    let store = restore(store, &db, &backup);
    assert_eq!(
        store.current_seq().await.unwrap(),
        1,
        "restored: nothing revoked"
    );
    let from = store.move_seq_past_possible_loss(0).unwrap();
    assert_eq!(from, 1 + rules::SEQ_GAP);
    crate::store::contract::revoke_past_a_lost_one(&store, &b).await;
}

/// A backup taken after one start and restored after another: the start after the restore
/// moves the seq past every seq handed out since the backup, by the time — the gap alone moved
/// it to where the second start had, and the revocations numbered since (which sidecars hold)
/// were numbered again.
#[tokio::test]
async fn sqlite_backup_from_before_the_last_start_restored_hands_out_no_seq_again() {
    let db = TempDb::new().await;
    let backup = db.dir.path().join("backup.db");
    let store = SqliteStore::open(&db.path()).unwrap();
    store.move_seq_past_possible_loss(1_000_000).unwrap();
    back_up(&store, &backup);
    store.move_seq_past_possible_loss(2_000_000).unwrap();
    let lost = store
        .revoke(&Revoke::Jti("lost".into()), 10, 20)
        .await
        .unwrap();
    let store = restore(store, &db, &backup);
    store.move_seq_past_possible_loss(3_000_000).unwrap();
    crate::store::contract::revoke_past_a_lost_one(&store, &lost).await;
}
