//! End-to-end on a real Redis Cluster (6 nodes: 3 primaries, 3 replicas, `cluster-node-timeout
//! 2000`, AOF `appendfsync always`, formed by `redis-cli --cluster create`): two issuer
//! replicas on `redis+cluster://`, as one Envoy cluster, with the weauth filter at the edge.
//! One cluster and one stack for the binary; one test walks through, in order:
//!
//! - a logout written through replica A is refused at the edge while the filter's feed long
//!   poll is held by replica B (the announcement crosses the cluster): in several rounds,
//!   each within 3 s of the logout's answer and the fastest within 1 s;
//! - under a mixed load (logins, refreshes, API calls, logouts) and a sidecar following the
//!   feed from cursor to cursor across both replicas: SIGKILL of the primary serving the
//!   store's slot; its replica is promoted; the window in which writes fail is measured;
//! - while the promoted primary has no replica, both issuer replicas say so
//!   (`weauth_store_replicas 0`) and do not `WAIT` (the rate before and after is printed);
//! - the old primary comes back (as a replica); the store's slot is moved to another primary
//!   with `redis-cli --cluster reshard` under the same load: every failed request is a
//!   retryable 503;
//! - afterwards nothing acknowledged is lost (every acknowledged refresh token rotates, every
//!   acknowledged logout is refused at the edge and was applied by the sidecar), every
//!   revocation acknowledged before the failover still has its seq in the store, and no seq
//!   the sidecar was ever given names another entry now (seqs are never reused).
//!
//! Needs the issuer binary, Envoy, the filter module and `redis-server`/`redis-cli` (`make
//! setup`); a missing one fails, it is never skipped. Run with `-- --nocapture` to see the
//! measured numbers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weauth_tests::harness::{peek_claims, Stack};
use weauth_tests::replicas::{
    assert_nothing_acked_lost, client, cross_replica_logout_rounds, login, metric, post, Load,
};

/// The store's prefix: its hash tag `{weauth56793:}` is slot 0, the first slot of its
/// primary, so `reshard` of one slot moves every key the issuer has (the worst case: the
/// whole store in migration at once).
const PREFIX: &str = "weauth56793:";

/// Load workers: each has at most one request in flight.
const WORKERS: usize = 6;

/// The load's phases, to tell the failover's failures from the resharding's.
const STEADY: u8 = 0;
const FAILOVER: u8 = 1;
const RESHARD: u8 = 2;
/// After the failover, the promoted primary still without a replica.
const ALONE: u8 = 3;

/// `weauth_store_replicas` of replica `url`: the replicas its store's primary has online.
async fn store_replicas(http: &reqwest::Client, url: &str) -> Option<u64> {
    metric(http, url, "weauth_store_replicas").await
}

/// What a sidecar following the feed was given.
#[derive(Default)]
struct Sidecar {
    /// Every (seq, value) the feed ever answered.
    given: HashMap<u64, String>,
    /// The values applied since the last full list.
    applied: HashSet<String>,
    /// The cursor it resumes from.
    cursor: u64,
    /// Answers with `full` (the list to apply from scratch) after the first.
    full_lists: usize,
    /// Polls that failed (no answer or not 200).
    failed_polls: usize,
    /// An entry at or below the cursor outside a full list: applied twice.
    replayed: Vec<u64>,
    /// Seqs given for two different entries.
    reused: Vec<u64>,
}

/// A sidecar: polls `GET /v1/revocations?since=<cursor>&wait=1`, alternating between the
/// replicas, as a sidecar behind a load balancer would.
fn spawn_sidecar(
    stack: &Stack,
    sidecar: Arc<Mutex<Sidecar>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let urls: Vec<String> = (0..stack.replica_count())
        .map(|i| stack.replica_url(i))
        .collect();
    let token = stack.feed_token().to_string();
    tokio::spawn(async move {
        let http = client();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let since = sidecar.lock().unwrap().cursor;
            let url = &urls[n % urls.len()];
            let answer = match http
                .get(format!("{url}/v1/revocations?since={since}&wait=1"))
                .bearer_auth(&token)
                .send()
                .await
            {
                Ok(resp) if resp.status() == 200 => resp.json::<Value>().await.ok(),
                _ => None,
            };
            let Some(answer) = answer else {
                sidecar.lock().unwrap().failed_polls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut s = sidecar.lock().unwrap();
            let full = answer["full"].as_bool().unwrap_or(false);
            if full {
                // A fresh sidecar (cursor 0) starts with one; later ones mean a cursor ahead
                // of the store (an unacknowledged entry it saw was lost by the failover).
                s.full_lists += usize::from(since != 0);
                s.applied.clear();
            }
            for entry in answer["entries"].as_array().into_iter().flatten() {
                let seq = entry["seq"].as_u64().unwrap();
                let value = entry["value"].as_str().unwrap_or_default().to_string();
                if !full && seq <= since {
                    s.replayed.push(seq);
                }
                if let Some(before) = s.given.insert(seq, value.clone()) {
                    if before != value {
                        s.reused.push(seq);
                    }
                }
                s.applied.insert(value);
            }
            s.cursor = answer["seq"].as_u64().unwrap();
        }
    })
}

/// The store's revocation entries now (seq → value), read on the slot's primary.
fn store_entries(stack: &mut Stack) -> HashMap<u64, String> {
    let cluster = stack.cluster().unwrap();
    let key = format!("{{{PREFIX}}}rev:entries");
    let primary = cluster.primary_of(&key).expect("the slot has a primary");
    let text = cluster.cli(primary, &["hgetall", &key]);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter_map(|pair| {
            let seq = pair.first()?.trim().parse().ok()?;
            let entry: Value = serde_json::from_str(pair.get(1)?).ok()?;
            Some((seq, entry["value"].as_str()?.to_string()))
        })
        .collect()
}

/// Writes (a login, then refreshes of its chain) every 20 ms until one succeeds after at
/// least one failed: the time from `since` to that success, and the failed writes.
async fn write_window(stack: &Stack, since: Instant, name: &str) -> (Duration, usize) {
    let http = client();
    let (envoy, mock) = (stack.envoy_url(), stack.mock_url());
    let mut chain: Option<String> = None;
    let (mut failures, mut n) = (0, 0);
    loop {
        n += 1;
        let (status, body) = match &chain {
            Some(token) => {
                post(
                    &http,
                    &envoy,
                    "/v1/token/refresh",
                    None,
                    &json!({"refresh_token": token}),
                )
                .await
            }
            None => login(&http, &mock, &envoy, &format!("{name}-{n}")).await,
        };
        if status == 200 {
            chain = body["refresh_token"].as_str().map(String::from);
            if failures > 0 {
                return (since.elapsed(), failures);
            }
        } else {
            failures += 1;
            chain = None;
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "{name}: writes did not resume within 20 s ({failures} failures)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) until every replica answers `/readyz` 200.
async fn replicas_ready(stack: &Stack) {
    let http = client();
    for i in 0..stack.replica_count() {
        let started = Instant::now();
        while http
            .get(format!("{}/readyz", stack.replica_url(i)))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "replica {i} not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits (up to 20 s: the nodes learn a new owner by gossip, within a second or two) until the nodes name `port` as
/// the primary of `key`'s slot.
async fn primary_becomes(stack: &mut Stack, key: &str, port: u16, what: &str) {
    let started = Instant::now();
    loop {
        let now = stack.cluster().unwrap().primary_of(key);
        if now == Some(port) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: the slot's primary is {now:?}, not :{port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_and_resharding_under_load_lose_nothing_acknowledged() {
    let mut stack = match Stack::builder()
        .redis_replicas(2)
        .redis_cluster()
        // Logins come from one client address at a fast pace here.
        .issuer_env("WEAUTH_LOGIN_RATE", "0")
        .issuer_env("WEAUTH_REDIS_PREFIX", PREFIX)
        .start()
        .await
    {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the Redis Cluster stack: {e}"),
    };
    let http = client();
    let envoy = stack.envoy_url();
    let slot_key = format!("{{{PREFIX}}}seq");
    {
        let cluster = stack.cluster().unwrap();
        let port = cluster.ports()[0];
        assert_eq!(
            cluster.cli(port, &["cluster", "keyslot", &slot_key]).trim(),
            "0"
        );
    }

    // Cross-replica wake-up: a logout at one replica, the poll held by the other.
    cross_replica_logout_rounds(&stack, &http, "cluster").await;

    // The load and a sidecar.
    let load = Load::start(&stack, WORKERS);
    let sidecar = Arc::new(Mutex::new(Sidecar::default()));
    let sidecar_stop = Arc::new(AtomicBool::new(false));
    let follower = spawn_sidecar(&stack, Arc::clone(&sidecar), Arc::clone(&sidecar_stop));
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SIGKILL of the primary serving the store's slot.
    let (victim, promoted_from) = {
        let cluster = stack.cluster().unwrap();
        let victim = cluster.primary_of(&slot_key).unwrap();
        let replicas = cluster.cli(victim, &["info", "replication"]);
        let replica = replicas
            .lines()
            .find_map(|l| l.strip_prefix("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("port=")))
            .and_then(|p| p.trim().parse::<u16>().ok())
            .expect("the primary has a replica");
        load.set_phase(FAILOVER);
        cluster.kill(victim);
        (victim, replica)
    };
    let killed = Instant::now();
    let rate_before = load.ops() as f64 / load_started.elapsed().as_secs_f64();
    // What was acknowledged before the kill: logouts answered 204 by now.
    let acked_before: Vec<String> = load
        .logged_out_in(STEADY)
        .iter()
        .map(|access| peek_claims(access).unwrap().sid)
        .collect();
    let seqs_before: HashMap<String, u64> = {
        let s = sidecar.lock().unwrap();
        s.given.iter().map(|(seq, v)| (v.clone(), *seq)).collect()
    };
    let (window, failed_writes) = write_window(&stack, killed, "failover").await;
    println!(
        "cluster failover: writes unavailable for {window:?} after SIGKILL of the slot's primary \
         ({failed_writes} failed probe writes)"
    );
    assert!(
        window < Duration::from_secs(20),
        "unavailability window {window:?}"
    );
    primary_becomes(
        &mut stack,
        &slot_key,
        promoted_from,
        "the replica was promoted",
    )
    .await;
    // Every revocation acknowledged before the failover kept its seq in the store.
    let entries = store_entries(&mut stack);
    let mut kept = 0;
    for sid in &acked_before {
        if let Some(seq) = seqs_before.get(sid) {
            assert_eq!(
                entries.get(seq),
                Some(sid),
                "the acknowledged revocation at seq {seq} was lost or renumbered by the failover"
            );
            kept += 1;
        }
    }
    println!(
        "cluster failover: {} logouts acknowledged before the kill, {kept} of them already \
         given to the sidecar: each still at its seq",
        acked_before.len()
    );

    // The promoted primary has no replica until the old one returns: writes do not wait for
    // one (they would crawl), and every replica says acknowledged writes are on one machine.
    load.set_phase(ALONE);
    for i in 0..stack.replica_count() {
        let started = Instant::now();
        while store_replicas(&http, &stack.replica_url(i)).await != Some(0) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "replica {i} does not report the promoted primary alone (weauth_store_replicas)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (alone_started, ops_alone) = (Instant::now(), load.ops());
    // For 2 s (two health reads), neither replica takes the alone primary for replicated:
    // that would make every write `WAIT` its whole timeout again, and the issuer crawl.
    while alone_started.elapsed() < Duration::from_secs(2) {
        for i in 0..stack.replica_count() {
            assert_eq!(
                store_replicas(&http, &stack.replica_url(i)).await,
                Some(0),
                "replica {i} takes the promoted primary, alone, for replicated"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate_alone = (load.ops() - ops_alone) as f64 / alone_started.elapsed().as_secs_f64();
    println!(
        "cluster failover: {rate_before:.0} requests/s before the kill, {rate_alone:.0}/s with \
         the promoted primary alone ({:.0} %)",
        100.0 * rate_alone / rate_before
    );

    // The old primary returns (as a replica of the promoted one).
    {
        let cluster = stack.cluster().unwrap();
        cluster.restart(victim).unwrap();
        tokio::task::block_in_place(|| cluster.wait_ready(Duration::from_secs(30))).unwrap();
    }
    replicas_ready(&stack).await;
    load.set_phase(STEADY);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The store's slot moves to another primary under the load.
    load.set_phase(RESHARD);
    let reshard_started = Instant::now();
    let to = {
        let cluster = stack.cluster().unwrap();
        let from = cluster.primary_of(&slot_key).unwrap();
        let to = *cluster
            .primaries()
            .iter()
            .find(|p| **p != from)
            .expect("another primary");
        let keys = cluster.cli(from, &["cluster", "countkeysinslot", "0"]);
        tokio::task::block_in_place(|| cluster.reshard(from, to, 1, Duration::from_secs(20)))
            .unwrap();
        println!(
            "cluster reshard: slot 0 ({} keys) moved from :{from} to :{to} in {:?}",
            keys.trim(),
            reshard_started.elapsed()
        );
        to
    };
    primary_becomes(&mut stack, &slot_key, to, "the slot moved").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let acked = load.stop().await;
    let count = |p: u8| acked.failures.iter().filter(|f| f.2 == p).count();
    println!(
        "cluster: {} operations; failures: {} in the failover (statuses {:?}), {} with the \
         promoted primary alone, {} in the resharding, {} otherwise",
        acked.ops,
        count(FAILOVER),
        acked
            .failures
            .iter()
            .filter(|f| f.2 == FAILOVER)
            .map(|f| f.1)
            .collect::<HashSet<_>>(),
        count(ALONE),
        count(RESHARD),
        count(STEADY)
    );
    let bad: Vec<_> = acked
        .failures
        .iter()
        .filter(|f| (f.2 == RESHARD || f.2 == ALONE) && f.1 != 503)
        .collect();
    assert!(
        bad.is_empty(),
        "requests failed other than with a retryable 503 after the failover or in the \
         resharding: {bad:?}"
    );
    assert_eq!(
        count(STEADY),
        0,
        "failures outside the failover and resharding"
    );

    // Nothing acknowledged lost: refresh tokens rotate, logouts are refused at the edge.
    assert_nothing_acked_lost(&stack, &acked, Duration::from_secs(5)).await;
    // The sidecar, resuming from its cursor all along, applied every acknowledged logout,
    // nothing twice, and no seq it was given names another entry now.
    let sids: Vec<String> = acked
        .logged_out
        .iter()
        .map(|(access, _)| peek_claims(access).unwrap().sid)
        .collect();
    let started = Instant::now();
    loop {
        let applied_all = {
            let s = sidecar.lock().unwrap();
            sids.iter().all(|sid| s.applied.contains(sid))
        };
        if applied_all {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sidecar did not apply every acknowledged logout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sidecar_stop.store(true, Ordering::Relaxed);
    follower.await.unwrap();
    // A revocation now: its seq is past every seq handed out before the failover by the
    // jump (the primary's replication id changed), whatever the old primary held unreplicated.
    let last = stack.login("zed").await.unwrap();
    let (status, _) = post(
        &http,
        &envoy,
        "/v1/logout",
        Some(&last.access_token),
        &json!({}),
    )
    .await;
    assert_eq!(status, 204);
    let last_sid = peek_claims(&last.access_token).unwrap().sid;
    let before_kill = seqs_before.values().max().copied().unwrap_or(0);
    let last_seq = store_entries(&mut stack)
        .into_iter()
        .find_map(|(seq, value)| (value == last_sid).then_some(seq))
        .expect("the last logout is in the store");
    assert!(
        last_seq > before_kill + 1_000_000,
        "seq {last_seq} after the failover and resharding, {before_kill} before: no jump"
    );
    let s = sidecar.lock().unwrap();
    assert!(
        s.replayed.is_empty(),
        "entries applied twice: {:?}",
        s.replayed
    );
    assert!(
        s.reused.is_empty(),
        "seqs given to two entries: {:?}",
        s.reused
    );
    let entries = store_entries(&mut stack);
    for (seq, value) in &s.given {
        if let Some(now) = entries.get(seq) {
            assert_eq!(now, value, "seq {seq} names another entry now");
        }
    }
    println!(
        "cluster: {} acknowledged refresh tokens and {} acknowledged logouts kept; the sidecar \
         followed {} entries to seq {} ({} full lists after the first, {} failed polls), the store holds {}",
        acked.refresh.iter().flatten().count(),
        acked.logged_out.len(),
        s.given.len(),
        s.cursor,
        s.full_lists,
        s.failed_polls,
        entries.len()
    );
}
