//! The Redis store on a real 6-node Redis Cluster (3 primaries, 3 replicas; one cluster for
//! the whole test binary, a fresh key prefix per test): the contract suite, the key layout
//! and WAIT on every primary, the announcements, and a cluster URL naming no reachable node.

use super::*;
use weauth_servers::redis::RedisCluster;

/// A fresh prefix on the shared cluster, so tests never share state.
struct TestCluster {
    prefix: String,
}

fn cluster_options(prefix: &str) -> RedisOptions {
    options_on(RedisCluster::shared(), prefix, 1)
}

/// The store's options on `cluster` (the shared one, or a test's own).
fn options_on(cluster: &RedisCluster, prefix: &str, wait_replicas: usize) -> RedisOptions {
    RedisOptions {
        target: cluster_target(&cluster.ports(), None),
        display: cluster.url(),
        prefix: prefix.to_string(),
        wait_replicas,
        wait_timeout: Duration::from_millis(500),
        allow_eviction: false,
    }
}

fn cluster_target(ports: &[u16], password: Option<&str>) -> RedisTarget {
    RedisTarget::Cluster {
        nodes: ports
            .iter()
            .map(|port| ("127.0.0.1".into(), *port))
            .collect(),
        tls: false,
        username: password.map(|_| "app".into()),
        password: password.map(Into::into),
    }
}

impl TestCluster {
    async fn new() -> TestCluster {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Started (once) off the async worker: forming the cluster blocks for seconds.
        tokio::task::spawn_blocking(RedisCluster::shared)
            .await
            .unwrap();
        TestCluster {
            prefix: format!("c{}:", NEXT.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

#[async_trait]
impl Backend for TestCluster {
    fn purge_deletes(&self) -> bool {
        false
    }

    fn scan_may_repeat(&self) -> bool {
        true
    }

    async fn handle(&self) -> Arc<dyn Store> {
        Arc::new(
            RedisStore::connect(cluster_options(&self.prefix))
                .await
                .unwrap(),
        )
    }
}

contract_tests!(TestCluster::new());

/// The directory, the feed and the key ring share one slot (the prefix is a hash tag); a
/// session, its refresh tokens and their set share their family's slot, and families,
/// rate-limit buckets and app tokens spread over the slots; the writes WAIT for every
/// primary's replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_by_slot_and_writes_reach_a_replica() {
    let test = TestCluster::new().await;
    let store = RedisStore::connect(cluster_options(&test.prefix))
        .await
        .unwrap();
    let slot = |key: &str| redis::cluster_routing::Slot::for_key(key.as_bytes());
    assert_eq!(store.prefix(), format!("{{{}}}", test.prefix));
    let main = slot(&store.key(keys::SEQ));
    for shared in [
        store.key(&keys::user("u")),
        store.key(&keys::identity("wx1", "o")),
        store.key(&keys::sub_sessions("u")),
        store.key(keys::SESSIONS_EXP),
        store.key(keys::KEYS),
        store.key(&keys::revoked("sid", "s")),
    ] {
        assert_eq!(slot(&shared), main, "{shared}");
    }
    let sid = crate::secrets::random_id("s_");
    let family = tokens::family_of_sid(&sid);
    let (token, hash) = tokens::new_refresh_token(family);
    assert_eq!(
        slot(&store.session_key(&sid)),
        slot(&store.refresh_key(tokens::family_of_refresh(&token), &hash))
    );
    assert_eq!(
        slot(&store.session_key(&sid)),
        slot(&store.family_set_key(&sid))
    );
    let sessions: std::collections::HashSet<_> = (0..20)
        .map(|_| slot(&store.session_key(&crate::secrets::random_id("s_"))))
        .collect();
    assert!(sessions.len() > 10, "sessions spread over slots");
    // Logins and refreshes of 30 sessions: their records are on every primary, not one.
    let cluster = RedisCluster::shared();
    let mut primaries = std::collections::HashSet::new();
    for i in 0..30 {
        let sid = crate::secrets::random_id("s_");
        let (first, first_hash) = tokens::new_refresh_token(tokens::family_of_sid(&sid));
        let login = crate::store::NewLogin {
            appid: "wx1".into(),
            openid: format!("o{i}"),
            unionid: None,
            code_hash: format!("code{i}"),
            new_sub: format!("u{i}"),
            sid: sid.clone(),
            session_key_sealed: None,
            now: 10,
            session_expires: 1000,
            refresh_hash: first_hash.clone(),
            refresh_expires: 500,
        };
        assert!(matches!(
            store.login(&login).await.unwrap(),
            LoginResult::Created { .. }
        ));
        let (_, next_hash) = tokens::new_refresh_token(tokens::family_of_refresh(&first));
        let rotated = store
            .rotate_refresh(&Rotate {
                family: tokens::family_of_refresh(&first).into(),
                presented_hash: first_hash,
                new_hash: next_hash.clone(),
                now: 11,
                refresh_ttl: 100,
                reuse_grace: 0,
                revocation_until: 1000,
            })
            .await
            .unwrap();
        assert!(
            matches!(rotated, RotateResult::Rotated { .. }),
            "{rotated:?}"
        );
        let session = store.session_key(&sid);
        assert_eq!(
            cluster.primary_of(&store.refresh_key(tokens::family_of_sid(&sid), &next_hash)),
            cluster.primary_of(&session)
        );
        primaries.insert(cluster.primary_of(&session).unwrap());
    }
    assert_eq!(
        primaries.len(),
        cluster.primaries().len(),
        "30 sessions, each on the primary of its family's slot, reach every primary"
    );
    let apart: std::collections::HashSet<_> = (0..20)
        .map(|i| slot(&store.key_apart(&keys::rate_limit(LOGIN_BUCKETS, format!("10.0.0.{i}")))))
        .collect();
    assert!(apart.len() > 1, "rate-limit buckets spread over slots");
    let mut health = store.check_health().await;
    for _ in 0..50 {
        if health.replicas == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        health = store.check_health().await;
    }
    assert_eq!(health.replicas, Some(1), "{health:?}");
    let before = health.unreplicated_writes;
    store
        .revoke(&Revoke::Jti("replicated".into()), 10, 20)
        .await
        .unwrap();
    let short = store.inner.health.short_waits.load(Ordering::Relaxed);
    let health = store.check_health().await;
    // A replica slowed by a loaded machine may miss one WAIT: then it is counted, not lost.
    assert!(
        health.unreplicated_writes == before || short > 0,
        "{health:?}"
    );
    assert_eq!(health.evicted_keys, 0);
}

/// Revocations are heard by a follower on another handle (PUBLISH reaches every node).
/// The start check reads every node's `cluster-node-timeout` (the shared cluster's 5 s):
/// against the default 10 s grace it is fine, against 6 s it warns.
#[tokio::test]
async fn cluster_node_timeout_read_against_the_reuse_grace() {
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    // This test's thread only (a current-thread runtime polls the check here).
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );
    let warned = || {
        String::from_utf8_lossy(&lines.0.lock().unwrap())
            .contains("cluster-node-timeout is more than half")
    };
    let store = RedisStore::connect(cluster_options("nt:")).await.unwrap();
    assert_eq!(
        store.check_failover_time(Duration::from_secs(10)).await,
        Some(5_000)
    );
    assert!(!warned());
    assert_eq!(
        store.check_failover_time(Duration::from_secs(6)).await,
        Some(5_000)
    );
    assert!(warned());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_announcements_reach_another_handle() {
    use crate::store::shared::{Announcements, RedisAnnouncements};
    let test = TestCluster::new().await;
    let announcements = RedisAnnouncements(
        RedisStore::connect(cluster_options(&test.prefix))
            .await
            .unwrap(),
    );
    let writer = RedisStore::connect(cluster_options(&test.prefix))
        .await
        .unwrap();
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        let heard = move |seq: u64| {
            let _ = heard_tx.send(seq);
        };
        announcements.follow(&heard).await
    });
    assert_eq!(heard_rx.recv().await, Some(1));
    let entry = writer
        .revoke(&Revoke::Jti("announced".into()), 10, 20)
        .await
        .unwrap();
    assert_eq!(heard_rx.recv().await, Some(entry.seq));
    follower.abort();
}

#[tokio::test]
async fn cluster_url_naming_no_reachable_node_refused_at_start() {
    let (a, b) = (
        weauth_servers::free_port().unwrap(),
        weauth_servers::free_port().unwrap(),
    );
    let Err(err) = RedisStore::connect(RedisOptions {
        target: cluster_target(&[a, b], Some("s3cret")),
        display: format!("redis+cluster://app:***@127.0.0.1:{a},127.0.0.1:{b}/"),
        prefix: "t:".into(),
        wait_replicas: 1,
        wait_timeout: Duration::from_millis(100),
        allow_eviction: false,
    })
    .await
    else {
        panic!("no node answers: the start must fail");
    };
    let text = err.to_string();
    assert!(
        text.contains("WEAUTH_STORE=redis+cluster://app:***@127.0.0.1:"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        text.contains("no seed node of the cluster answered"),
        "{text}"
    );
}

/// The cluster client replaces a node's connection by itself: a command that meets a closed
/// connection is retried on a new one, and none of the store's commands fails. A `WAIT` then
/// goes out on the new connection and covers none of the writes the old one carried, so such
/// a write is not confirmed by it (it was: a failover in the next moment could lose an
/// acknowledged refresh token or revocation). Writes after it are confirmed as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_write_on_a_connection_the_client_replaced_by_itself_is_not_confirmed() {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let test = TestCluster::new().await;
    let store = RedisStore::connect(cluster_options(&test.prefix))
        .await
        .unwrap();
    for _ in 0..50 {
        if store.check_health().await.replicas == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = store.key("replaced");
    let cluster = RedisCluster::shared();
    let port = cluster.primary_of(&key).unwrap();
    // A write, its WAIT not sent yet.
    let epoch = store.link_epoch();
    let set_key = key.clone();
    store
        .op(|mut conn| async move { conn.set::<_, _, ()>(set_key, "1").await })
        .await
        .unwrap();
    // The node closes the store's connection to it (a proxy's idle timeout, a network blip):
    // the store's id on that node, asked through the store's own connection.
    let (Link::Cluster(mut conn), _) = store.current().unwrap() else {
        panic!("not a cluster link")
    };
    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
        &key,
        SlotAddr::Master,
    )));
    let id = conn
        .route_command(redis::cmd("CLIENT").arg("ID").clone(), route)
        .await
        .unwrap();
    let id: i64 = redis::from_redis_value(id).unwrap();
    let killed = cluster.cli(port, &["CLIENT", "KILL", "ID", &id.to_string()]);
    assert_eq!(killed.trim(), "1", "{killed}");
    // Not confirmed: the WAIT went out on the new connection ("the connection changed"), or
    // failed on the closed one ("its WAIT failed") had the client not retried it.
    let err = store.replicate(epoch).await.unwrap_err();
    assert!(err.to_string().contains("could not be confirmed"), "{err}");
    store
        .revoke(&Revoke::Jti("after".into()), 10, 20)
        .await
        .unwrap();
}

/// A replica back without its data makes a full sync, and while its primary holds the
/// transfer (`repl-diskless-sync-delay`) the cluster's view already shows it `connected`: it
/// acknowledges no `WAIT` until its copy is loaded, so it is not counted — counted, each `WAIT`
/// ran its whole timeout on every primary's connection for as long as the sync took, the reads
/// queued behind it. Once online it counts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_replica_in_its_first_full_sync_is_not_counted() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().to_path_buf();
    let mut cluster = tokio::task::spawn_blocking(move || RedisCluster::start_in(&path))
        .await
        .unwrap()
        .unwrap();
    let store = RedisStore::connect(options_on(&cluster, "sync:", 1))
        .await
        .unwrap();
    let replicas_become = |want: Option<usize>| {
        let store = &store;
        async move {
            for _ in 0..200 {
                if store.check_health().await.replicas == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("replicas never {want:?}: {:?}", store.check_health().await);
        }
    };
    replicas_become(Some(1)).await;
    let primary = cluster.primaries()[0];
    let (index, replica) = cluster
        .ports()
        .into_iter()
        .enumerate()
        .find(|(_, port)| {
            let info = cluster.cli(*port, &["info", "replication"]);
            info.contains("role:slave") && info.contains(&format!("master_port:{primary}"))
        })
        .unwrap();
    cluster.cli(primary, &["config", "set", "repl-diskless-sync-delay", "5"]);
    cluster.kill(replica);
    let dir = root.path().join(format!("node{index}"));
    let _ = std::fs::remove_dir_all(dir.join("appendonlydir"));
    let _ = std::fs::remove_file(dir.join("dump.rdb"));
    cluster.restart(replica).unwrap();
    // Waiting for its transfer: `connected` in the cluster's view, not yet online at its
    // primary.
    let address = format!("127.0.0.1:{replica}@");
    let mut syncing = false;
    for _ in 0..80 {
        let nodes = cluster.cli(primary, &["cluster", "nodes"]);
        let linked = nodes
            .lines()
            .any(|line| line.contains(&address) && line.ends_with(" connected"));
        let info = cluster.cli(primary, &["info", "replication"]);
        if linked && info.contains(&format!("port={replica},state=wait_bgsave")) {
            syncing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(syncing, "the replica never waited for its full sync");
    assert_eq!(store.check_health().await.replicas, Some(0));
    replicas_become(Some(1)).await;
}

/// A cluster primary refusing a write (`OOM` under `noeviction`, `BUSY`) is answered as a write not
/// confirmed (`write_unconfirmed`, `store_unreachable_answer_says_…`): the cluster client resends a command whose connection closed before its answer,
/// so the refusal may be a second run's, the first applied (a single Redis's refusal stays
/// `Busy`: `redis_out_of_memory_is_unavailable`). Its own cluster: the shared one's nodes
/// carry every other test's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_write_refused_is_answered_unconfirmed_a_read_busy() {
    use crate::store::contract::login;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
        .unwrap();
    let store = RedisStore::connect(options_on(&cluster, "oom:", 0))
        .await
        .unwrap();
    for primary in cluster.primaries() {
        cluster.cli(primary, &["config", "set", "maxmemory", "1"]);
    }
    let err = store
        .login(&login("oom", "o-oom", None, 10))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("OOM"), "{err}");
    for primary in cluster.primaries() {
        cluster.cli(primary, &["config", "set", "maxmemory", "0"]);
    }

    // The feed's primary busy with a script past `busy-reply-threshold`: a write refused is
    // unconfirmed as above, a read refused is busy — nothing was written (said unconfirmed,
    // a refresh's read told its client to give up a valid refresh token).
    let primary = cluster.primary_of(&store.key(keys::SEQ)).unwrap();
    cluster.cli(primary, &["config", "set", "busy-reply-threshold", "20"]);
    let mut busy = std::process::Command::new("redis-cli")
        .args(["-p", &primary.to_string(), "eval", "while true do end", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut read = Ok(());
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        read = store.feed_snapshot(0, 10, 10).await.map(|_| ());
        if read.is_err() {
            break;
        }
    }
    let read = read.unwrap_err();
    let write = store
        .revoke(&Revoke::Jti("busy".into()), 10, 20)
        .await
        .unwrap_err();
    cluster.cli(primary, &["script", "kill"]);
    let _ = busy.wait();
    assert!(matches!(read, StoreError::Busy(_)), "{read}");
    assert!(read.to_string().contains("BUSY"), "{read}");
    assert!(matches!(write, StoreError::Unavailable(_)), "{write}");
}
