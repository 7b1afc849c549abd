//! The Redis store behind Sentinel (a primary, its replica and three sentinels per test):
//! switching only to another primary, failovers followed by the health checks, a primary
//! refusing writes for want of replicas.

use super::*;

/// A primary, its replica and three sentinels in `dir`, and a store behind them writing with
/// `wait_replicas`.
async fn behind_sentinel(
    dir: &std::path::Path,
    wait_replicas: usize,
) -> (weauth_servers::redis::SentinelSetup, RedisStore) {
    behind_sentinel_with(dir, wait_replicas, &[]).await
}

/// [`behind_sentinel`], the primary started with `primary_args` too.
async fn behind_sentinel_with(
    dir: &std::path::Path,
    wait_replicas: usize,
    primary_args: &[&str],
) -> (weauth_servers::redis::SentinelSetup, RedisStore) {
    let setup = weauth_servers::redis::SentinelSetup::start_with(dir, primary_args)
        .await
        .unwrap();
    let sentinels = setup
        .sentinels
        .iter()
        .map(|s| ("127.0.0.1".to_string(), s.port()))
        .collect();
    let store = RedisStore::connect(RedisOptions {
        target: RedisTarget::Sentinel {
            sentinels,
            master: setup.master.clone(),
            db: 0,
            username: None,
            password: None,
        },
        display: setup.url(),
        prefix: "t:".into(),
        wait_replicas,
        wait_timeout: Duration::from_millis(500),
        allow_eviction: false,
    })
    .await
    .unwrap();
    (setup, store)
}

/// SIGKILLs the primary and waits (60 s at most) for Sentinel to name its replica; returns
/// when the kill was. The failover is these tests' precondition, not their subject: on a
/// starved machine an attempt that misses the 3 s failover timeout is tried again 6 s later,
/// and one CI run saw two set-ups (their tests run side by side) get none in 30 s.
async fn kill_primary_until_promoted(setup: &mut weauth_servers::redis::SentinelSetup) -> Instant {
    setup.primary.kill().await;
    let promoted = setup.replica.port();
    let started = Instant::now();
    while setup.current_primary_port() != Some(promoted) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no failover in 60 s: the sentinel names {:?}, the replica is :{promoted}",
            setup.current_primary_port()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started
}

/// Behind Sentinel, a failed command switches connections only when Sentinel names another
/// primary; and a command sent to the old primary before the switch, failing only after it
/// (its client still reconnecting to the dead server), is no news of the new connection: a
/// write made there meanwhile is confirmed as usual. Both replaced or voided the new
/// connection, failing every write in flight (a login failed a second after a failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_switches_only_to_another_primary_and_ignores_the_old_ones_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (mut setup, store) = behind_sentinel(dir.path(), 1).await;
    // The primary drops the store's connections: the next command fails, Sentinel names the
    // same primary, and the store keeps its connections (which reconnect by themselves).
    let mut side = redis::Client::open(setup.primary.url(0))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let before = store.link_epoch();
    // Past the store's pacing of Sentinel questions (one per 250 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop_client_connections(&mut side).await;
    assert!(
        store.ping().await.is_err(),
        "no command met the lost connection"
    );
    assert_eq!(store.switches(), 0, "switched to the primary it was on");
    assert_eq!(
        store.link_epoch(),
        before + 1,
        "one lost connection, no switch"
    );
    store
        .revoke(&Revoke::Jti("j1".into()), 10, 20)
        .await
        .unwrap();

    // A command on the primary's connection, held until after the switch.
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let late = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .op(|mut conn| async move {
                    let _ = held.await;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = kill_primary_until_promoted(&mut setup).await;
    while store.switches() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the store never switched"
        );
        let _ = store.session("s-none").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.session("s-none").await.unwrap();
    // A write on the new connection, then the old connection's command fails.
    let epoch = store.link_epoch();
    let mut call = store.inner.scripts.rate_limit.prepare_invoke();
    call.key("t:rl:x").arg(1).arg(1.0).arg(1.0).arg(2);
    let _: u64 = store.eval(&call).await.unwrap();
    release.send(()).unwrap();
    assert!(late.await.unwrap().is_err(), "the old primary is dead");
    assert_eq!(
        store.link_epoch(),
        epoch,
        "the old connection's failure voided the new one"
    );
    store.replicate(epoch).await.unwrap();
    assert_eq!(store.switches(), 1);
}

/// An idle store — no request of its own since the primary died — follows a Sentinel
/// failover through its health checks alone (every second in the issuer), so that its next
/// request goes to the new primary. It switched only at that next request, which failed doing
/// so (a replica of two behind Envoy answered a refresh 503 after the other had written on the
/// new primary). Without `WAIT`, so that no other read drives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_failover_followed_by_the_health_checks_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut setup, store) = behind_sentinel(dir.path(), 0).await;
    store.check_health().await;
    kill_primary_until_promoted(&mut setup).await;
    let followed = Instant::now();
    while store.switches() == 0 {
        assert!(
            followed.elapsed() < Duration::from_secs(15),
            "the health checks never followed the failover"
        );
        store.check_health().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.session("s-none").await.unwrap();
}

/// A primary cut off from Sentinel and its replicas while one of them is promoted refuses
/// writes with `NOREPLICAS` (`min-replicas-to-write`) until the partition heals; a store still
/// reaching it follows Sentinel to the new primary on that answer. Taken as a busy server,
/// every write answered 503 for as long as the partition lasted. The partition is played by
/// a primary that refuses to be demoted (its `REPLICAOF` renamed), failed over with
/// `SENTINEL FAILOVER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_primary_refusing_writes_for_want_of_replicas_is_left_for_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--min-replicas-to-write",
        "1",
        // A replica acks about once a second: a lag of 1 s refused writes whenever it was
        // a second late on a loaded machine.
        "--min-replicas-max-lag",
        "3",
        "--rename-command",
        "REPLICAOF",
        "weauth-test-replicaof",
        "--rename-command",
        "SLAVEOF",
        "weauth-test-slaveof",
    ];
    let (setup, store) = behind_sentinel_with(dir.path(), 0, &args).await;
    setup.fail_over().await.unwrap();
    // The old primary, still one, has lost its replica: it refuses writes.
    let mut old = redis::Client::open(setup.primary.url(0))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let refused = Instant::now();
    loop {
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg("x")
            .arg(1)
            .query_async(&mut old)
            .await;
        match set {
            Err(err) if err.code() == Some("NOREPLICAS") => break,
            _ => {}
        }
        assert!(
            refused.elapsed() < Duration::from_secs(15),
            "the old primary never refused a write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let followed = Instant::now();
    loop {
        match store.revoke(&Revoke::Jti("j2".into()), 10, 20).await {
            Ok(_) => break,
            Err(err) => assert!(
                followed.elapsed() < Duration::from_secs(15),
                "writes still refused 15 s after the failover: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.switches(), 1);
}
