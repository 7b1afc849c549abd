//! What the Redis store reads from the server's own answers, as pure functions: whether a
//! `maxmemory-policy` can evict weauth's keys, the `INFO` sections the running checks watch
//! (`replication`: how many replicas are online; `stats`: `evicted_keys`), how much of an
//! `evicted_keys` reading is new, and how many replicas a write's `WAIT` asks for.
//!
//! The glue that sends `CONFIG GET` and `INFO` and acts on the answers is in
//! [`super::redis`]; everything here takes the text and returns a decision, so it is tested
//! without a server.
//!
//! Decisions recorded here (docs/OPERATIONS.md states them for operators):
//! - **Only `noeviction` passes.** Every `allkeys-*` policy can evict any key; every
//!   `volatile-*` policy can evict sessions, refresh tokens and used codes, which carry TTLs. An
//!   unknown policy name is treated as one that evicts (nothing says it keeps every key).
//! - **`maxmemory 0` does not make an evicting policy safe.** With no memory limit Redis never
//!   evicts, but a later `CONFIG SET maxmemory` (or a managed service resizing the instance)
//!   would start evicting at once, silently. Setting `noeviction` costs nothing while the limit
//!   is 0, so the check asks for it regardless of `maxmemory`, and names both in its message.
//! - **`WAIT` asks for no more replicas than are online**, and is skipped when none is: a
//!   `WAIT` for a replica that is not there runs its whole timeout and, on the multiplexed
//!   connection, holds every command queued behind it (after a Sentinel failover that left
//!   the promoted primary alone, logins fell from 316/s to 2/s). Writes are then on one
//!   machine; the store says so in its log and in `weauth_store_replicas`.

use std::collections::HashMap;
use std::time::Duration;

/// The eviction policy that never evicts.
pub const NOEVICTION: &str = "noeviction";

/// What a `maxmemory-policy` means for weauth's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// `noeviction`: a full Redis refuses writes (weauth answers 503); nothing acknowledged is
    /// dropped.
    Never,
    /// `allkeys-*`: any key can be evicted (revocation entries, users, signing keys).
    AllKeys,
    /// `volatile-*`: keys with a TTL can be evicted (sessions, refresh tokens, used codes).
    Volatile,
    /// A policy this version does not know: treated as one that evicts.
    Unknown,
}

/// Classifies a `maxmemory-policy` value (case-insensitive, surrounding spaces ignored).
pub fn eviction(policy: &str) -> Eviction {
    let policy = policy.trim().to_ascii_lowercase();
    match policy.as_str() {
        NOEVICTION => Eviction::Never,
        "allkeys-lru" | "allkeys-lfu" | "allkeys-random" => Eviction::AllKeys,
        "volatile-lru" | "volatile-lfu" | "volatile-random" | "volatile-ttl" => Eviction::Volatile,
        _ => Eviction::Unknown,
    }
}

/// The operator's message for a policy that can evict: names the setting, what it can drop,
/// the fix, and the variable that accepts the risk. `maxmemory` is the server's value (bytes,
/// as text).
pub fn eviction_message(policy: &str, maxmemory: Option<&str>, accept_var: &str) -> String {
    let what = match eviction(policy) {
        Eviction::Never => return format!("maxmemory-policy {policy} never evicts a key"),
        Eviction::AllKeys => {
            "any key, including acknowledged revocations, users and signing keys"
        }
        Eviction::Volatile => {
            "keys with a TTL: sessions and refresh tokens (their users are signed out early) and used login codes (the guard against a code used twice)"
        }
        Eviction::Unknown => "keys (this policy is not one weauth knows to keep every key)",
    };
    let limit = match maxmemory.map(str::trim) {
        Some("0") => " (maxmemory is 0 today, so nothing is evicted yet; setting a limit later would start evicting at once)".to_string(),
        Some(bytes) => format!(" (maxmemory {bytes} bytes)"),
        None => String::new(),
    };
    format!(
        "Redis runs with maxmemory-policy {policy}{limit}: when memory is full it silently drops {what}. Set maxmemory-policy noeviction (a full Redis then refuses writes and weauth answers 503), or set {accept_var}=true to accept the loss"
    )
}

/// The `name:value` lines of an `INFO` answer (section headers and blank lines skipped).
pub fn info_fields(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .collect()
}

/// What `INFO replication` says about the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// `role:master` (a replica refuses writes; its count means nothing for `WAIT`).
    pub primary: bool,
    /// Replicas in `state=online` (a replica still loading its first full copy does not
    /// acknowledge a `WAIT`, so it is not counted).
    pub online: usize,
}

/// Parses `INFO replication`; `None` when the answer has no `role` line.
pub fn replication(text: &str) -> Option<Replication> {
    let fields = info_fields(text);
    let role = fields.get("role")?;
    // Each replica is a line `slaveN:ip=…,port=…,state=online,offset=…,lag=…`.
    let online = fields
        .iter()
        .filter(|(name, _)| {
            name.strip_prefix("slave")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|(_, value)| value.split(',').any(|kv| kv == "state=online"))
        .count();
    Some(Replication {
        primary: *role == "master",
        online,
    })
}

/// A Redis Cluster's replication as `CLUSTER NODES` (one node's view of the whole cluster)
/// describes it: `primary` when some primary serves slots, `online` the fewest healthy
/// replicas any slot-serving primary has (a write's `WAIT` goes to every primary, so the
/// poorest shard sets what it can get). A node flagged `fail` or `fail?` counts for nothing;
/// a replica counts when its link is `connected`. `None` when the text names no primary
/// serving slots.
///
/// The cluster's own view is read rather than each primary's `INFO replication`, because the
/// client's map of primaries can lag a failover: asked "every primary" just after one, it
/// answered for the two healthy shards and left out the promoted primary that had no replica
/// (`tests/tests/e2e_cluster.rs`).
pub fn cluster_replication(nodes: &str) -> Option<Replication> {
    struct Node<'a> {
        id: &'a str,
        primary: bool,
        replica_of: &'a str,
        healthy: bool,
        connected: bool,
        serves_slots: bool,
    }
    let nodes: Vec<Node> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let [id, _addr, flags, replica_of, _ping, _pong, _epoch, link, slots @ ..] =
                fields.as_slice()
            else {
                return None;
            };
            let flags: Vec<&str> = flags.split(',').collect();
            Some(Node {
                id,
                primary: flags.contains(&"master"),
                replica_of,
                healthy: !flags
                    .iter()
                    .any(|f| matches!(*f, "fail" | "fail?" | "handshake" | "noaddr")),
                connected: *link == "connected",
                serves_slots: !slots.is_empty(),
            })
        })
        .collect();
    let online = nodes
        .iter()
        .filter(|n| n.primary && n.healthy && n.serves_slots)
        .map(|primary| {
            nodes
                .iter()
                .filter(|n| !n.primary && n.replica_of == primary.id && n.healthy && n.connected)
                .count()
        })
        .min()?;
    Some(Replication {
        primary: true,
        online,
    })
}

/// A cluster's [`cluster_replication`] bounded by what its primaries say of their own
/// replicas: `infos` are the `INFO replication` answers of the nodes the client reaches (the
/// replicas' own, `role:slave`, left out; [`replication`]). A replica in its first full sync —
/// a primary back after a failover always makes one — is `connected` in the cluster's view
/// but acknowledges no `WAIT` until its copy is loaded (`state=online`): counted, every `WAIT`
/// ran its whole timeout on every primary's connection, with the reads queued behind it, for
/// as long as the sync took. With no answer, the view alone.
pub fn cluster_online(view: Replication, infos: &[String]) -> Replication {
    let own = infos
        .iter()
        .filter_map(|text| replication(text))
        .filter(|own| own.primary)
        .map(|own| own.online)
        .min();
    Replication {
        primary: view.primary,
        online: own.map_or(view.online, |own| own.min(view.online)),
    }
}

/// Parses `evicted_keys` out of `INFO stats`.
pub fn evicted_keys(text: &str) -> Option<u64> {
    info_fields(text).get("evicted_keys")?.trim().parse().ok()
}

/// Follows each node's `evicted_keys` (a counter since that node started) and yields what
/// grew since the last reading. A node's first reading is its baseline (evictions before this
/// replica watched it are not counted again — a node added to a cluster brings its history); a
/// reading below its last one means that node restarted: whatever it holds counts as new
/// (those evictions happened since the restart, where our writes went). Each node is followed
/// apart: summed, one node of a cluster restarting lowered the total, and the next reading
/// counted the other nodes' unchanged evictions as new. After a Sentinel re-resolution the
/// store calls [`EvictionWatch::rebase`]: the primary may be the same server (a reconnect) or
/// another one, so its next reading is a new baseline (a promoted replica has evicted nothing
/// itself: replicas ignore `maxmemory` by default).
#[derive(Debug, Default, Clone)]
pub struct EvictionWatch {
    /// Each node's last reading, by its address; a node that left the readings is forgotten.
    last: HashMap<String, u64>,
}

impl EvictionWatch {
    /// The keys evicted since the previous reading, over the nodes read (`(address, count)`).
    pub fn observe(&mut self, readings: &[(String, u64)]) -> u64 {
        let mut grown = 0u64;
        let mut next = HashMap::with_capacity(readings.len());
        for (node, evicted) in readings {
            grown = grown.saturating_add(match self.last.get(node) {
                None => 0,
                Some(&last) if *evicted >= last => evicted - last,
                Some(_) => *evicted,
            });
            next.insert(node.clone(), *evicted);
        }
        self.last = next;
        grown
    }

    /// Forgets the baselines: the next reading becomes them.
    pub fn rebase(&mut self) {
        self.last.clear();
    }
}

/// Whether a Redis Cluster failing a primary over (`cluster-node-timeout` of `node_timeout_ms`,
/// then the election, about a second) can outlast the refresh reuse grace: a timeout of more
/// than half the grace leaves too little margin for the election and a client's retry.
pub fn failover_outlasts_grace(node_timeout_ms: u64, grace: Duration) -> bool {
    u128::from(node_timeout_ms) * 2 > grace.as_millis()
}

/// How many replicas a write's `WAIT` asks for: `wanted` (`WEAUTH_REDIS_WAIT_REPLICAS`)
/// capped by the replicas the primary last reported online; 0 means skip the `WAIT`. With no
/// report yet (`None`), `wanted`.
pub fn wait_target(wanted: usize, online: Option<usize>) -> usize {
    match online {
        Some(online) => wanted.min(online),
        None => wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPT: &str = "WEAUTH_REDIS_ALLOW_EVICTION";

    #[test]
    fn eviction_noeviction_never_evicts() {
        assert_eq!(eviction("noeviction"), Eviction::Never);
        assert_eq!(eviction(" NoEviction "), Eviction::Never);
    }

    #[test]
    fn eviction_allkeys_and_volatile_policies_evict() {
        for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert_eq!(eviction(policy), Eviction::AllKeys, "{policy}");
        }
        for policy in [
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert_eq!(eviction(policy), Eviction::Volatile, "{policy}");
        }
    }

    #[test]
    fn eviction_unknown_policy_treated_as_evicting() {
        assert_eq!(eviction("allkeys-new"), Eviction::Unknown);
        assert_eq!(eviction(""), Eviction::Unknown);
    }

    #[test]
    fn eviction_message_names_setting_fix_and_variable() {
        let text = eviction_message("allkeys-lru", Some("3145728"), ACCEPT);
        assert!(text.contains("maxmemory-policy allkeys-lru"), "{text}");
        assert!(text.contains("maxmemory 3145728 bytes"), "{text}");
        assert!(text.contains("acknowledged revocations"), "{text}");
        assert!(text.contains("maxmemory-policy noeviction"), "{text}");
        assert!(text.contains("WEAUTH_REDIS_ALLOW_EVICTION=true"), "{text}");
        let volatile = eviction_message("volatile-ttl", None, ACCEPT);
        assert!(
            volatile.contains("sessions and refresh tokens"),
            "{volatile}"
        );
    }

    #[test]
    fn eviction_message_maxmemory_zero_still_asks_for_noeviction() {
        let text = eviction_message("allkeys-lru", Some("0"), ACCEPT);
        assert!(text.contains("maxmemory is 0 today"), "{text}");
        assert!(text.contains("Set maxmemory-policy noeviction"), "{text}");
    }

    const PRIMARY_WITH_TWO: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
        slave0:ip=127.0.0.1,port=6380,state=online,offset=2310,lag=0\r\n\
        slave1:ip=127.0.0.1,port=6381,state=wait_bgsave,offset=0,lag=0\r\n\
        master_failover_state:no-failover\r\nmaster_repl_offset:2310\r\n";

    #[test]
    fn replication_counts_online_replicas_only() {
        assert_eq!(
            replication(PRIMARY_WITH_TWO),
            Some(Replication {
                primary: true,
                online: 1
            })
        );
    }

    #[test]
    fn replication_alone_primary_has_none_online() {
        let text = "# Replication\nrole:master\nconnected_slaves:0\nmaster_repl_offset:0\n";
        assert_eq!(
            replication(text),
            Some(Replication {
                primary: true,
                online: 0
            })
        );
    }

    #[test]
    fn replication_replica_role_is_not_primary() {
        let text = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nslave_read_only:1\r\nconnected_slaves:0\r\n";
        let parsed = replication(text).unwrap();
        assert!(!parsed.primary);
        assert_eq!(parsed.online, 0, "slave_read_only is not a replica line");
    }

    /// `CLUSTER NODES` of a 3-shard cluster (ids shortened; the format of Redis 7).
    const NODES: &str = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7002@17002 master - 0 1700000000000 2 connected 5461-10922
a3 127.0.0.1:7003@17003 master - 0 1700000000000 3 connected 10923-16383
b1 127.0.0.1:7004@17004 slave a1 0 1700000000000 1 connected
b2 127.0.0.1:7005@17005 slave a2 0 1700000000000 2 connected
b3 127.0.0.1:7006@17006 slave a3 0 1700000000000 3 connected
";

    /// A replica the cluster's view counts (its bus link `connected`) but that is still in its
    /// first full sync is not counted; the replicas' own answers are left out; with none
    /// readable the view stands.
    #[test]
    fn cluster_online_leaves_out_a_replica_still_in_its_first_sync() {
        let view = cluster_replication(NODES).unwrap();
        let primary = |state: &str| {
            format!("# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=7004,state={state},offset=0,lag=0\r\n")
        };
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n".to_string();
        let healthy = vec![primary("online"), primary("online"), replica.clone()];
        assert_eq!(cluster_online(view, &healthy).online, 1);
        let syncing = vec![primary("online"), primary("wait_bgsave"), replica.clone()];
        assert_eq!(cluster_online(view, &syncing).online, 0);
        let loading = vec![primary("send_bulk"), primary("online")];
        assert_eq!(cluster_online(view, &loading).online, 0);
        assert_eq!(cluster_online(view, &[]).online, 1);
        assert_eq!(cluster_online(view, &[replica]).online, 1);
        // Never more than the cluster's view (a shard the client's map has not caught up with).
        let after =
            cluster_replication(&NODES.replace(" 1 connected\n", " 1 disconnected\n")).unwrap();
        assert_eq!(after.online, 0);
        assert_eq!(cluster_online(after, &healthy).online, 0);
    }

    #[test]
    fn cluster_replication_is_the_poorest_shards() {
        assert_eq!(
            cluster_replication(NODES),
            Some(Replication {
                primary: true,
                online: 1
            })
        );
        // a1 killed: b1 promoted (serving a1's slots), a1 failed; b1 has no replica.
        let after = NODES
            .replace(
                "a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460",
                "a1 127.0.0.1:7001@17001 master,fail - 0 0 1 disconnected",
            )
            .replace(
                "b1 127.0.0.1:7004@17004 slave a1 0 1700000000000 1 connected",
                "b1 127.0.0.1:7004@17004 master - 0 1700000000000 4 connected 0-5460",
            );
        assert_eq!(cluster_replication(&after).map(|r| r.online), Some(0));
        // a1 back as b1's replica: every shard has one again.
        let back = after.replace(
            "a1 127.0.0.1:7001@17001 master,fail - 0 0 1 disconnected",
            "a1 127.0.0.1:7001@17001 slave b1 0 0 4 connected",
        );
        assert_eq!(cluster_replication(&back).map(|r| r.online), Some(1));
        // A replica suspected failing, or with its link down, is not counted.
        let suspect = NODES.replace("slave,", "").replace(
            "b2 127.0.0.1:7005@17005 slave a2",
            "b2 127.0.0.1:7005@17005 slave,fail? a2",
        );
        assert_eq!(cluster_replication(&suspect).map(|r| r.online), Some(0));
        let unlinked = NODES.replace(
            "slave a3 0 1700000000000 3 connected",
            "slave a3 0 1700000000000 3 disconnected",
        );
        assert_eq!(cluster_replication(&unlinked).map(|r| r.online), Some(0));
        // A primary serving no slots (an empty new node) does not count.
        let spare = format!("{NODES}c1 127.0.0.1:7007@17007 master - 0 0 5 connected\n");
        assert_eq!(cluster_replication(&spare).map(|r| r.online), Some(1));
        assert_eq!(cluster_replication(""), None);
        assert_eq!(cluster_replication("garbage line"), None);
    }

    #[test]
    fn replication_without_role_is_none() {
        assert_eq!(replication("ERR nothing"), None);
    }

    #[test]
    fn evicted_keys_read_from_stats() {
        let text =
            "# Stats\r\ntotal_connections_received:4\r\nevicted_keys:5043\r\nevicted_clients:0\r\n";
        assert_eq!(evicted_keys(text), Some(5043));
        assert_eq!(evicted_keys("# Stats\r\n"), None);
    }

    /// One server's readings (the address of a single server is `""`).
    fn one(evicted: u64) -> [(String, u64); 1] {
        [(String::new(), evicted)]
    }

    #[test]
    fn failover_outlasting_the_grace_is_a_node_timeout_over_half_of_it() {
        let grace = Duration::from_secs(10);
        assert!(!failover_outlasts_grace(5_000, grace), "the advised 5 s");
        assert!(failover_outlasts_grace(5_001, grace));
        assert!(
            failover_outlasts_grace(15_000, grace),
            "Redis's default against the default grace"
        );
        assert!(failover_outlasts_grace(1, Duration::ZERO));
    }

    #[test]
    fn eviction_watch_first_reading_is_baseline() {
        let mut watch = EvictionWatch::default();
        assert_eq!(watch.observe(&one(100)), 0);
        assert_eq!(watch.observe(&one(100)), 0);
        assert_eq!(watch.observe(&one(130)), 30);
    }

    #[test]
    fn eviction_watch_counter_reset_counts_from_zero_rebase_does_not() {
        let mut watch = EvictionWatch::default();
        watch.observe(&one(500));
        assert_eq!(
            watch.observe(&one(7)),
            7,
            "a restarted server's evictions are new"
        );
        assert_eq!(watch.observe(&one(9)), 2);
        watch.rebase();
        assert_eq!(
            watch.observe(&one(5_000)),
            0,
            "a re-resolved primary's history is not new"
        );
        assert_eq!(watch.observe(&one(5_003)), 3);
    }

    #[test]
    fn eviction_watch_follows_each_node_of_a_cluster() {
        let nodes = |a: u64, b: u64| [("n1:7000".to_string(), a), ("n2:7001".to_string(), b)];
        let mut watch = EvictionWatch::default();
        assert_eq!(watch.observe(&nodes(500, 300)), 0);
        // n1 restarts having evicted 4 since: only those are new (summed, 804 fell below 800
        // and became 804 "new" evictions; or, had n1 evicted nothing, 300 of n2's old ones).
        assert_eq!(watch.observe(&nodes(4, 300)), 4);
        assert_eq!(watch.observe(&nodes(4, 310)), 10);
        // A node joining brings its history; one leaving takes its baseline with it.
        let three = [
            ("n1:7000".to_string(), 4),
            ("n2:7001".to_string(), 310),
            ("n3:7002".to_string(), 9_000),
        ];
        assert_eq!(watch.observe(&three), 0);
        assert_eq!(watch.observe(&nodes(6, 311)), 3);
        assert_eq!(
            watch.observe(&[("n1:7000".to_string(), 6), ("n3:7002".to_string(), 9_500)]),
            0,
            "n3 left and came back: a baseline again"
        );
    }

    #[test]
    fn wait_target_capped_by_online_replicas() {
        assert_eq!(wait_target(1, None), 1);
        assert_eq!(wait_target(1, Some(1)), 1);
        assert_eq!(wait_target(1, Some(3)), 1);
        assert_eq!(wait_target(2, Some(1)), 1);
        assert_eq!(wait_target(1, Some(0)), 0, "no replica online: no WAIT");
        assert_eq!(wait_target(0, Some(2)), 0);
    }
}
