//! The Redis store on real `redis-server`s: the contract suite, and what only Redis has.

use super::*;
use crate::store::contract::{contract_tests, Backend};
use weauth_servers::redis::RedisServer;

/// A real redis-server per test, so tests never share state.
struct TestRedis {
    server: RedisServer,
}

impl TestRedis {
    async fn new() -> TestRedis {
        TestRedis {
            server: RedisServer::start().await.unwrap(),
        }
    }

    fn options(&self) -> RedisOptions {
        RedisOptions {
            target: RedisTarget::Direct(self.server.url(0)),
            display: self.server.url(0),
            prefix: "t:".into(),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
            allow_eviction: false,
        }
    }
}

#[async_trait]
impl Backend for TestRedis {
    fn purge_deletes(&self) -> bool {
        false
    }

    fn scan_may_repeat(&self) -> bool {
        true
    }

    async fn handle(&self) -> Arc<dyn Store> {
        Arc::new(RedisStore::connect(self.options()).await.unwrap())
    }
}

contract_tests!(TestRedis::new());

#[tokio::test]
async fn redis_prefixes_keep_stores_apart() {
    let redis = TestRedis::new().await;
    let a = redis.handle().await;
    let mut other = redis.options();
    other.prefix = "other:".into();
    let b = RedisStore::connect(other).await.unwrap();
    a.revoke(&Revoke::Jti("j".into()), 10, 20).await.unwrap();
    assert!(a.current_seq().await.unwrap() > 1);
    assert_eq!(b.current_seq().await.unwrap(), 1);
}

#[tokio::test]
async fn redis_unreachable_at_start_names_weauth_store() {
    let port = weauth_servers::free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}/0");
    let Err(err) = RedisStore::connect(RedisOptions {
        target: RedisTarget::Direct(url.clone()),
        display: url,
        prefix: "t:".into(),
        wait_replicas: 0,
        wait_timeout: Duration::from_millis(100),
        allow_eviction: false,
    })
    .await
    else {
        panic!("connecting to a closed port must fail");
    };
    let text = err.to_string();
    assert!(text.contains("WEAUTH_STORE=redis://127.0.0.1:"), "{text}");
    assert!(text.contains("cannot connect"), "{text}");
}

/// An IPv6 host of a Sentinel or Cluster URL (the configuration keeps it without brackets) is
/// reached: a Sentinel's address is used as it is, a cluster node's URL brackets it.
#[tokio::test]
async fn redis_ipv6_hosts_reached() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        weauth_servers::report_skip(
            "redis_ipv6_hosts_reached: this machine has no IPv6 loopback (::1)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start_in(dir.path(), &["--bind", "127.0.0.1 ::1"])
        .await
        .unwrap();
    let port = server.port();
    // The password goes where a URL's goes; the server has none, so connect without it.
    assert_eq!(
        connect::node_url("::1", port, true, &None, &Some("pw".into())),
        format!("rediss://:pw@[::1]:{port}/")
    );
    let sentinel_style = redis::IntoConnectionInfo::into_connection_info(
        redis::ConnectionAddr::Tcp("::1".into(), port),
    )
    .unwrap();
    let cluster_style = redis::IntoConnectionInfo::into_connection_info(
        connect::node_url("::1", port, false, &None, &None).as_str(),
    )
    .unwrap();
    for info in [sentinel_style, cluster_style] {
        let client = redis::Client::open(info).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let addr: String = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(addr.contains("laddr=[::1]:"), "{addr}");
    }
}

#[tokio::test]
async fn redis_wrong_db_index_refused_clearly() {
    let redis = TestRedis::new().await;
    let url = format!("redis://127.0.0.1:{}/99", redis.server.port());
    let mut options = redis.options();
    options.target = RedisTarget::Direct(url);
    let Err(err) = RedisStore::connect(options).await else {
        panic!("db 99 does not exist");
    };
    assert!(err.to_string().contains("database index"), "{err}");
}

#[tokio::test]
async fn redis_rate_limit_shared_between_handles() {
    let redis = TestRedis::new().await;
    let a = RedisStore::connect(redis.options()).await.unwrap();
    let b = RedisStore::connect(redis.options()).await.unwrap();
    let take = |store: &RedisStore, space, key, now| {
        let store = store.clone();
        async move { store.rate_limit(space, key, 60, 2, now).await.unwrap() }
    };
    assert_eq!(take(&a, LOGIN_BUCKETS, "1.2.3.4", 100.0).await, None);
    assert_eq!(take(&b, LOGIN_BUCKETS, "1.2.3.4", 100.0).await, None);
    assert_eq!(take(&a, LOGIN_BUCKETS, "1.2.3.4", 100.0).await, Some(1));
    assert_eq!(take(&b, LOGIN_BUCKETS, "5.6.7.8", 100.0).await, None);
    assert_eq!(
        take(&b, USER_BUCKETS, "1.2.3.4", 100.0).await,
        None,
        "a user's bucket is not the client address's of the same name"
    );
    assert_eq!(take(&b, LOGIN_BUCKETS, "1.2.3.4", 101.5).await, None);
}

/// Replicas whose clocks differ share one bucket without refilling it: a replica behind
/// (1000) alternating with one 6 s ahead moved the bucket's time back at every call, and the
/// one ahead refilled 6 s — at 10 a minute, a token — each time.
#[tokio::test]
async fn redis_rate_limit_replicas_clocks_apart_do_not_refill() {
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let mut allowed = 0;
    for round in 0..10 {
        let now = if round % 2 == 0 { 1000.0 } else { 1006.0 };
        if store
            .rate_limit(USER_BUCKETS, "u_skew", 10, 1, now)
            .await
            .unwrap()
            .is_none()
        {
            allowed += 1;
        }
    }
    // The burst, and the 6 s the clock ahead is ahead of the first call: one token.
    assert_eq!(
        allowed, 2,
        "the clocks' difference was refilled at every call"
    );
}

/// The replicas' shared abilities on Redis (`crate::store::shared`): two replicas' limiters take
/// from one bucket, and the local one decides while Redis is down; a revocation written
/// through one handle is announced to a follower.
#[tokio::test]
async fn redis_shared_limiter_and_announcements() {
    use crate::store::shared::{Announcements, Limiter, RedisAnnouncements, RedisLimiter};
    let mut redis = TestRedis::new().await;
    let handle = || async { RedisStore::connect(redis.options()).await.unwrap() };
    let (a, b) = (
        RedisLimiter::new(handle().await, LOGIN_BUCKETS, 60, 2),
        RedisLimiter::new(handle().await, LOGIN_BUCKETS, 60, 2),
    );
    let client: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    assert!(a.take(&client, 100.0).await.is_ok());
    assert!(b.take(&client, 100.0).await.is_ok());
    assert!(a.take(&client, 100.0).await.is_err(), "one bucket for both");
    let (alice, bob) = (
        RedisLimiter::new(handle().await, USER_BUCKETS, 60, 1),
        RedisLimiter::new(handle().await, USER_BUCKETS, 60, 1),
    );
    let sub = "u_alice".to_string();
    assert!(alice.take(&sub, 100.0).await.is_ok());
    assert!(
        bob.take(&sub, 100.0).await.is_err(),
        "one user bucket for both"
    );

    let announcements = RedisAnnouncements(handle().await);
    let writer = handle().await;
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        let heard = move |seq: u64| {
            let _ = heard_tx.send(seq);
        };
        announcements.follow(&heard).await
    });
    // The first seq heard is the one read at subscription: the subscription is up.
    assert_eq!(heard_rx.recv().await, Some(1));
    let entry = writer
        .revoke(&Revoke::Jti("announced".into()), 10, 20)
        .await
        .unwrap();
    assert_eq!(heard_rx.recv().await, Some(entry.seq));
    follower.abort();

    redis.server.kill().await;
    assert!(
        a.take(&"192.0.2.8".parse().unwrap(), 100.0).await.is_ok(),
        "Redis down: the local bucket decides"
    );
}

/// A server that stops answering without closing its connections (its host lost, a
/// partition: here SIGSTOP) ends the revocation subscription within the PING's bound, for the
/// caller to subscribe again: else no message ever came again, and long polls woke on the
/// 5 s re-read only, until the process restarted.
#[tokio::test]
async fn a_revocation_subscription_whose_server_stops_answering_ends() {
    use crate::store::shared::{
        Announcements, RedisAnnouncements, SUBSCRIPTION_PING_EVERY, SUBSCRIPTION_PING_TIMEOUT,
    };
    let redis = TestRedis::new().await;
    let announcements = RedisAnnouncements(RedisStore::connect(redis.options()).await.unwrap());
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        let heard = move |seq: u64| {
            let _ = heard_tx.send(seq);
        };
        announcements.follow(&heard).await
    });
    assert_eq!(heard_rx.recv().await, Some(1), "subscribed");
    redis.server.pause();
    let bound = SUBSCRIPTION_PING_EVERY + SUBSCRIPTION_PING_TIMEOUT + Duration::from_secs(10);
    let ended = tokio::time::timeout(bound, follower).await;
    redis.server.resume();
    let ended = ended.expect("the subscription outlived its silent server");
    assert!(ended.unwrap().is_err(), "ended as lost");
}

#[tokio::test]
async fn redis_killed_then_restarted_reconnects_keeping_acknowledged_writes() {
    let mut redis = TestRedis::new().await;
    let store = redis.handle().await;
    let entry = store
        .revoke(&Revoke::Jti("kept".into()), 10, 100)
        .await
        .unwrap();
    redis.server.kill().await;
    let err = store.current_seq().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    redis.server.restart().await.unwrap();
    // Both connections meet the restart (the reads' and the writes'), and reconnect.
    let mut seq = None;
    for _ in 0..50 {
        if store.ping().await.is_ok() {
            if let Ok(current) = store.current_seq().await {
                seq = Some(current);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seq,
        Some(entry.seq),
        "the handle reconnects and the AOF kept the write"
    );
    // A restarted primary has a new replication id: the next seq jumps past any a lost
    // revocation could have been served with — and past any another primary could have
    // numbered since: to the primary's time in microseconds at least.
    use crate::clock::Clock as _;
    let before = u64::try_from(crate::clock::SystemClock.now_ms()).unwrap() * 1000;
    let next = store
        .revoke(&Revoke::Jti("after".into()), 10, 100)
        .await
        .unwrap();
    assert!(
        next.seq > entry.seq + SEQ_GAP as u64,
        "{} {}",
        next.seq,
        entry.seq
    );
    assert!(next.seq > before, "{} not past the time {before}", next.seq);
    assert!(next.seq < 1 << 53, "exact in a double");
    let again = store
        .revoke(&Revoke::Jti("again".into()), 10, 100)
        .await
        .unwrap();
    assert_eq!(again.seq, next.seq + 1, "one jump per primary change");
}

/// A primary and its replica in `dir`, and a store that `WAIT`s for one replica (500 ms),
/// once the primary reports the replica online.
async fn primary_with_replica(dir: &std::path::Path) -> (TestRedis, RedisServer, RedisStore) {
    // No 5 s wait before the replica's first copy.
    let primary = TestRedis {
        server: RedisServer::start_in(&dir.join("primary"), &["--repl-diskless-sync-delay", "0"])
            .await
            .unwrap(),
    };
    let replica_of = format!("127.0.0.1 {}", primary.server.port());
    let replica = RedisServer::start_in(&dir.join("replica"), &["--replicaof", &replica_of])
        .await
        .unwrap();
    let mut options = primary.options();
    options.wait_replicas = 1;
    options.wait_timeout = Duration::from_millis(500);
    let store = RedisStore::connect(options).await.unwrap();
    let mut health = store.check_health().await;
    for _ in 0..100 {
        if health.replicas == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        health = store.check_health().await;
    }
    assert_eq!(health.replicas, Some(1), "the replica never came online");
    (primary, replica, store)
}

/// `ACL SETUSER default <change>`: what the store's user may run.
fn acl_default(change: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("default").arg(change);
    cmd
}

/// A plain connection to `redis`, for the tests' own commands.
async fn side_connection(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.server.url(0))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The server `side` is connected to drops every other client connection (as a primary that
/// restarts would).
async fn drop_client_connections(side: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(side)
        .await
        .unwrap();
}

/// A write whose `WAIT` fails (here refused by an ACL; in production the primary going away
/// under it) is not acknowledged: the client gets a 503 to retry, not a success a failover
/// may lose. It was answered as a success and not even counted as unreplicated.
#[tokio::test]
async fn redis_write_whose_wait_fails_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, _replica, store) = primary_with_replica(dir.path()).await;
    let mut side = side_connection(&primary).await;
    let _: () = acl_default("-wait").query_async(&mut side).await.unwrap();
    let err = store
        .revoke(&Revoke::Jti("j1".into()), 10, 20)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("could not be confirmed"), "{err}");
    let _: () = acl_default("+wait").query_async(&mut side).await.unwrap();
    store
        .revoke(&Revoke::Jti("j2".into()), 10, 20)
        .await
        .unwrap();
}

/// With `WAIT` on, the store tells which connection a `WAIT` covers by `CLIENT ID`
/// ([`RedisStore::note_connections`]): a user an ACL refuses it is refused at start, saying
/// what to allow — not answered 503 on every write. Without `WAIT` it is not needed.
#[tokio::test]
async fn redis_user_refused_client_id_is_refused_at_start_when_writes_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, _replica, _store) = primary_with_replica(dir.path()).await;
    let mut side = side_connection(&primary).await;
    let _: () = acl_default("-client|id")
        .query_async(&mut side)
        .await
        .unwrap();
    let mut options = primary.options();
    options.wait_replicas = 1;
    let Err(err) = RedisStore::connect(options.clone()).await else {
        panic!("started without CLIENT ID")
    };
    assert!(err.to_string().contains("+client|id"), "{err}");
    options.wait_replicas = 0;
    RedisStore::connect(options).await.unwrap();
}

/// Every revocation reads the primary's replication id (`INFO replication` in REVOKE): a user
/// an ACL refuses `INFO` is refused at start, saying what to allow — every revocation failed
/// with `NOPERM` (the issuer started, and no logout, ban or reuse reached the edges).
#[tokio::test]
async fn redis_user_refused_info_is_refused_at_start() {
    let redis = TestRedis::new().await;
    let mut side = side_connection(&redis).await;
    let _: () = acl_default("-info").query_async(&mut side).await.unwrap();
    let Err(err) = RedisStore::connect(redis.options()).await else {
        panic!("started without INFO")
    };
    assert!(err.to_string().contains("+info"), "{err}");
    let _: () = acl_default("+info").query_async(&mut side).await.unwrap();
    let store = RedisStore::connect(redis.options()).await.unwrap();
    store
        .revoke(&Revoke::Jti("j-info".into()), 10, 20)
        .await
        .unwrap();
}

/// A `WAIT` covers only the writes of the connection it is sent on: a write made before the
/// store's connection was lost (the client reconnects by itself) is not confirmed by a `WAIT`
/// on the new one.
#[tokio::test]
async fn redis_write_before_a_lost_connection_is_not_confirmed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, _replica, store) = primary_with_replica(dir.path()).await;
    let before = store.link_epoch();
    store
        .revoke(&Revoke::Jti("j1".into()), 10, 20)
        .await
        .unwrap();
    // The server drops every client connection (as a primary that restarts would).
    let mut side = side_connection(&primary).await;
    drop_client_connections(&mut side).await;
    // The store meets the lost connection on its next command there, which fails (the
    // client reconnects for the one after); reads go on another connection.
    let failed = store.ping().await;
    assert!(failed.is_err(), "no command met the lost connection");
    assert_ne!(
        store.link_epoch(),
        before,
        "the lost connection was not noted"
    );
    let err = store.replicate(before).await.unwrap_err();
    assert!(err.to_string().contains("the connection changed"), "{err}");
    // Writes on the new connection are confirmed as before.
    store
        .revoke(&Revoke::Jti("j2".into()), 10, 20)
        .await
        .unwrap();
}

/// Issue 23 §8: a `WAIT` for a replica that is not there is skipped, and one that falls
/// short makes the store re-read the primary's replicas, so the next writes skip it too;
/// concurrent writes share one `WAIT` (group commit), so a replica's death costs them one
/// timeout together, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_wait_follows_the_replicas_online() {
    const WRITERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let (_primary, mut replica, store) = primary_with_replica(dir.path()).await;
    let concurrent = |tag: &'static str| {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .revoke(&Revoke::Jti(format!("{tag}-{i}")), 10, 20)
                        .await
                        .unwrap();
                })
            })
            .collect();
        async move {
            let started = Instant::now();
            for task in tasks {
                task.await.unwrap();
            }
            started.elapsed()
        }
    };
    let with_replica = concurrent("online").await;
    // (Not asserted to be 0: a replica slowed by a loaded machine may miss a WAIT.)
    let unreplicated = store.check_health().await.unreplicated_writes;
    let short_before = store.inner.health.short_waits.load(Ordering::Relaxed);

    replica.kill().await;
    // The writes in flight share one WAIT, which falls short and re-reads the replicas
    // (the primary notices the closed link at once); the writes after it skip the WAIT.
    let replica_gone = concurrent("gone").await;
    let short = store.inner.health.short_waits.load(Ordering::Relaxed) - short_before;
    println!(
        "{WRITERS} concurrent writes, WAIT 1 replica (timeout 500 ms): {with_replica:?} with the replica online, \
         {replica_gone:?} just after its death ({short} WAIT(s) fell short)"
    );
    // One WAIT each would be up to 16; a second or third only if the primary had not yet
    // noticed the closed link when the first fell short.
    assert!((1..=3).contains(&short), "{short} WAITs fell short");
    assert_eq!(store.online_replicas(), Some(0));
    let counted = store
        .inner
        .health
        .unreplicated_writes
        .load(Ordering::Relaxed);
    assert_eq!(
        counted,
        unreplicated + WRITERS as u64,
        "every write after the replica's death is counted"
    );
    store
        .revoke(&Revoke::Jti("alone".into()), 10, 20)
        .await
        .unwrap();
    let health = store.check_health().await;
    assert_eq!(health.replicas, Some(0));
    assert_eq!(health.unreplicated_writes, counted + 1);
    assert_eq!(
        store.inner.health.short_waits.load(Ordering::Relaxed) - short_before,
        short,
        "no WAIT is sent while no replica is online"
    );
}

/// A refresh token presented again within the reuse grace gets the successor another
/// connection wrote (another issuer replica, say, whose answer the client lost). `WAIT`
/// covers the writes of its own connection only: since Redis 7.2 a connection's `WAIT`
/// offset moves only when one of its commands propagated something (`call()`: "right after
/// its last command that resulted in propagation"; 7.0, which this machine runs, moves it at
/// every command), so a repeat that wrote nothing was confirmed at once, the successor maybe
/// on the primary alone — a failover then loses the token the client now holds, its
/// predecessor thrown away. The repeat writes (`repeated_at` on the presented token), so its
/// `WAIT` covers the successor, written before it in the one replication stream.
#[tokio::test]
async fn redis_repeat_within_the_grace_writes_so_its_wait_covers_the_successor() {
    use crate::store::contract::{login, rotate_of};
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let mut side = side_connection(&redis).await;
    store.login(&login("c1", "o1", None, 10)).await.unwrap();
    for (now, repeat) in [(20, false), (21, true)] {
        let rotated = store
            .rotate_refresh(&rotate_of("s-c1", "r-c1", "r-2", now, 10))
            .await
            .unwrap();
        assert!(
            matches!(rotated, RotateResult::Rotated { repeat: r, .. } if r == repeat),
            "{rotated:?}"
        );
    }
    let token = store.refresh_key(&rotate_of("s-c1", "r-c1", "r-2", 0, 0).family, "r-c1");
    let repeated_at: Option<i64> = redis::cmd("HGET")
        .arg(&token)
        .arg("repeated_at")
        .query_async(&mut side)
        .await
        .unwrap();
    assert_eq!(repeated_at, Some(21), "the repeat wrote nothing");
}

/// Erasing a retired signing key is WAITed for like every other write (a failover before the
/// replica had it would bring the private key back): with the replica gone, the erasure is
/// counted as unreplicated (it was a plain HSET, never WAITed for nor counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_key_erasure_is_replicated_like_any_write() {
    use crate::store::contract::key;
    let dir = tempfile::tempdir().unwrap();
    let (_primary, mut replica, store) = primary_with_replica(dir.path()).await;
    assert!(store.insert_key(&key("k1", 100), None).await.unwrap());
    replica.kill().await;
    let before = store
        .inner
        .health
        .unreplicated_writes
        .load(Ordering::Relaxed);
    store.erase_keys(&["k1".to_string()]).await.unwrap();
    let after = store
        .inner
        .health
        .unreplicated_writes
        .load(Ordering::Relaxed);
    assert_eq!(after, before + 1, "the erasure was not WAITed for");
    let keys = store.keys().await.unwrap();
    assert!(keys.iter().all(|k| k.kid != "k1" || k.sealed.is_empty()));
}

/// Issue 23 §7: a running check sees `evicted_keys` grow (the start check is covered
/// through the binary in issuer/tests/service.rs).
#[tokio::test]
async fn redis_check_health_counts_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start_in(
        dir.path(),
        &["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"],
    )
    .await
    .unwrap();
    let options = RedisOptions {
        target: RedisTarget::Direct(server.url(0)),
        display: server.url(0),
        prefix: "t:".into(),
        wait_replicas: 0,
        wait_timeout: Duration::from_millis(100),
        allow_eviction: false,
    };
    let Err(err) = RedisStore::connect(options.clone()).await else {
        panic!("allkeys-lru must be refused without allow_eviction");
    };
    assert!(
        err.to_string().contains("maxmemory-policy allkeys-lru"),
        "{err}"
    );
    let store = RedisStore::connect(RedisOptions {
        allow_eviction: true,
        ..options
    })
    .await
    .unwrap();
    assert_eq!(store.check_health().await.evicted_keys, 0);
    // Fill Redis past its 3 MB with other keys: it evicts.
    server.fill(6_000, 1024).unwrap();
    assert!(store.check_health().await.evicted_keys > 0);
}

/// The same store on a real 6-node Redis Cluster.
mod cluster;

/// The store behind Sentinel: switches, failovers, the health checks that follow them.
mod sentinel;

/// Revocations cut short and completed: the feed's entries of `sid` and `sub` revocations.
mod revocations;

/// Scripts the cluster client sends again after a lost answer, and scripts of earlier
/// releases running beside this one's (a rolling upgrade).
mod resent;

/// A Redis out of memory under `noeviction` refuses writes with `OOM`, a code the client does
/// not name: a 503 (retry), not a 500 with no `Retry-After` (OPERATIONS.md) — and not taken
/// for a primary gone (no failover handling within the request).
#[tokio::test]
async fn redis_out_of_memory_is_unavailable() {
    use crate::store::contract::login;
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let mut side = side_connection(&redis).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut side)
        .await
        .unwrap();
    let err = store
        .login(&login("oom", "o-oom", None, 10))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy(_)), "{err}");
    assert!(err.is_transient());
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut side)
        .await
        .unwrap();
}

/// A purge goes on while its rounds come back full: one round a purge capped it at a batch a
/// `WEAUTH_PURGE_INTERVAL`, and past that rate the indexes grew without bound.
#[tokio::test]
async fn redis_purge_goes_on_while_its_rounds_come_back_full() {
    use crate::store::contract::login;
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    for i in 0..8 {
        store
            .login(&login(&format!("p{i}"), &format!("o-p{i}"), None, 10))
            .await
            .unwrap();
    }
    // The sessions end at 1010.
    let purged = store.purge_rounds(2_000, 3).await.unwrap();
    assert_eq!(purged.sessions, 8, "{purged:?}");
    for i in 0..8 {
        assert!(store.session(&format!("s-p{i}")).await.unwrap().is_none());
    }
}

/// A purge cut short between the directory's script and the session's leaves no session in
/// its user's set: the directory forgets a session before its keys go. Dropped first, a purge
/// whose FORGET_SESSIONS failed left the sid in the user's set for good — the next purge found
/// the session gone and its owner with it — met again by every later ban and "log out
/// everywhere" of the user.
#[tokio::test]
async fn redis_purge_cut_short_leaves_no_session_in_its_users_set() {
    use crate::store::contract::login;
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    store.login(&login("cut", "o-cut", None, 10)).await.unwrap();
    let set = store.key(&keys::sub_sessions("u-cut"));
    let mut side = side_connection(&redis).await;
    // The user's set made a string: FORGET_SESSIONS fails on it (WRONGTYPE), where a purge
    // could be cut short (the issuer stopped, the directory's server failing over).
    let _: () = redis::pipe()
        .del(&set)
        .set(&set, "not a set")
        .query_async(&mut side)
        .await
        .unwrap();
    assert!(store.purge_rounds(2_000, 10).await.is_err());
    let _: () = redis::pipe()
        .del(&set)
        .sadd(&set, "s-cut")
        .query_async(&mut side)
        .await
        .unwrap();
    let purged = store.purge_rounds(2_000, 10).await.unwrap();
    assert_eq!(purged.sessions, 1, "{purged:?}");
    let member: bool = redis::cmd("SISMEMBER")
        .arg(&set)
        .arg("s-cut")
        .query_async(&mut side)
        .await
        .unwrap();
    assert!(!member, "the ended session is left in its user's set");
    assert!(store.session("s-cut").await.unwrap().is_none());
}

/// A login cut short between the directory's script and the session's takes the directory's
/// half back while it knows the session's owner: the purge reads an owner from the session,
/// which this one never got, so the sid stayed in the user's set for good (the set's TTL
/// renewed by each later login), met by every later ban and "log out everywhere" of the user.
#[tokio::test]
async fn redis_login_cut_short_leaves_no_session_in_its_users_set() {
    use crate::store::contract::login;
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let mut side = side_connection(&redis).await;
    // The session's key taken by a string: OPEN_SESSION fails on it (WRONGTYPE), where a login
    // could be cut short (the session family's shard failing over, the issuer stopped).
    let _: () = redis::cmd("SET")
        .arg(store.session_key("s-cut"))
        .arg("not a hash")
        .query_async(&mut side)
        .await
        .unwrap();
    let cut = login("cut", "o-cut", None, 10);
    assert!(store.login(&cut).await.is_err());
    let member: bool = redis::cmd("SISMEMBER")
        .arg(store.key(&keys::sub_sessions("u-cut")))
        .arg("s-cut")
        .query_async(&mut side)
        .await
        .unwrap();
    assert!(!member, "the sid left in its user's set");
    let indexed: Option<f64> = redis::cmd("ZSCORE")
        .arg(store.key(keys::SESSIONS_EXP))
        .arg("s-cut")
        .query_async(&mut side)
        .await
        .unwrap();
    assert_eq!(indexed, None, "the sid left in the expiry index");
    let spent: bool = redis::cmd("EXISTS")
        .arg(store.key(&keys::code(&cut.code_hash)))
        .query_async(&mut side)
        .await
        .unwrap();
    assert!(!spent, "the code's mark left");
}

/// A session counts the refresh tokens it is given (`given`) instead of keeping each one's hash
/// in a set to its end — about 250 KB for a session refreshed every 15 minutes for 30 days, only
/// ever counted — and the purge still counts them, a set a release before left included.
#[tokio::test]
async fn redis_a_session_counts_its_refresh_tokens_without_keeping_their_hashes() {
    use crate::store::contract::{login, rotate_of};
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    store
        .login(&login("given", "o-given", None, 10))
        .await
        .unwrap();
    let mut presented = "r-given".to_string();
    for i in 0..3 {
        let next = format!("r-given-{i}");
        let rotated = store
            .rotate_refresh(&rotate_of("s-given", &presented, &next, 11 + i, 0))
            .await
            .unwrap();
        assert!(
            matches!(rotated, RotateResult::Rotated { .. }),
            "{rotated:?}"
        );
        presented = next;
    }
    let mut side = side_connection(&redis).await;
    let set = store.family_set_key("s-given");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&set)
        .query_async(&mut side)
        .await
        .unwrap();
    assert!(!exists, "a set of the session's token hashes");
    let given: i64 = redis::cmd("HGET")
        .arg(store.session_key("s-given"))
        .arg("given")
        .query_async(&mut side)
        .await
        .unwrap();
    assert_eq!(given, 4);
    // As a release before wrote it: two hashes in the set.
    let _: () = redis::cmd("SADD")
        .arg(&set)
        .arg("old-1")
        .arg("old-2")
        .query_async(&mut side)
        .await
        .unwrap();
    let purged = store.purge_rounds(2_000, 10).await.unwrap();
    assert_eq!(
        (purged.sessions, purged.refresh_tokens),
        (1, 6),
        "{purged:?}"
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(&set)
        .query_async(&mut side)
        .await
        .unwrap();
    assert!(!exists, "the set left behind");
}

/// A read does not wait behind a write's `WAIT`: reads go on the connection that carries no
/// `WAIT`. On the main connection, where writes keep one in flight, every read of a request
/// waited for a replica's acknowledgement of others' writes — up to the `WAIT` timeout while
/// the replica stalled (paused here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_read_does_not_wait_behind_a_writes_wait() {
    use crate::store::contract::login;
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica, _) = primary_with_replica(dir.path()).await;
    let mut options = primary.options();
    options.wait_replicas = 1;
    options.wait_timeout = Duration::from_millis(2_900);
    let store = RedisStore::connect(options).await.unwrap();
    store
        .login(&login("reader", "o-reader", None, 10))
        .await
        .unwrap();
    replica.pause();
    let writing = {
        let store = store.clone();
        tokio::spawn(async move { store.revoke(&Revoke::Jti("j-w".into()), 10, 20).await })
    };
    let waiting = || async {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut side_connection(&primary).await)
            .await
            .unwrap();
        clients.lines().any(|client| client.contains("cmd=wait"))
    };
    let mut tries = 0;
    while !waiting().await {
        tries += 1;
        assert!(tries < 100, "the write never reached its WAIT");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let session = store.session("s-reader").await.unwrap();
    assert!(session.is_some());
    assert!(
        waiting().await,
        "the read was answered only once the WAIT had ended"
    );
    replica.resume();
    writing.await.unwrap().unwrap();
}
