//! What the Redis store checks about its server, apart from the data: the error a failed
//! connection is explained with, persistence (AOF) and the eviction policy at start, and the
//! periodic reads of replication and evicted keys (parsed by `super::super::redis_checks`).
//! On a cluster the settings are read on every node (the worst one decides) and replication
//! on the primary holding the store's slot.

use super::*;

pub(super) fn describe_connect_error(err: &RedisError) -> String {
    let text = err.to_string();
    if matches!(err.kind(), ErrorKind::AuthenticationFailed)
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        format!("authentication refused (check the user and password in the URL): {text}")
    } else if text.contains("DB index is out of range") {
        format!("the database index in the URL does not exist on this server: {text}")
    } else if err.is_connection_refusal() || err.is_io_error() || err.is_timeout() {
        format!("cannot connect: {text}")
    } else {
        text
    }
}

/// Logs what the server promises about acknowledged writes (`CONFIG GET` may be refused on
/// managed services: then it says it could not check).
pub(super) async fn check_persistence(conn: &mut Link) {
    // Every node's value; the first that differs from the safe one is reported.
    let get = |name: &'static str, safe: &'static str| {
        let mut conn = conn.clone();
        async move {
            config_get(&mut conn, name, |value| value != safe)
                .await
                .ok()
                .flatten()
        }
    };
    match (
        get("appendonly", "yes").await,
        get("appendfsync", "always").await,
    ) {
        (Some(aof), Some(fsync)) => {
            if aof != "yes" {
                tracing::warn!(appendonly = %aof, "Redis runs with appendonly no: a Redis restart loses every write since its last snapshot (set appendonly yes and appendfsync always)");
            } else if fsync != "always" {
                tracing::warn!(appendfsync = %fsync, "Redis runs with appendfsync other than always: a Redis crash can lose up to about a second of acknowledged logins, rotations and revocations (set appendfsync always)");
            } else {
                tracing::info!("Redis persistence: appendonly yes, appendfsync always");
            }
        }
        _ => tracing::warn!("cannot read Redis's appendonly/appendfsync (CONFIG GET refused): make sure the server runs appendonly yes with appendfsync always, or acknowledged writes can be lost on a restart"),
    }
}

/// What the `maxmemory-policy` check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PolicyCheck {
    /// `noeviction`.
    Safe,
    /// An evicting policy accepted with `WEAUTH_REDIS_ALLOW_EVICTION` (the message says what
    /// can be lost).
    Accepted { policy: String, message: String },
    /// An evicting policy not accepted: refuses to start.
    Refused { policy: String, message: String },
    /// `CONFIG GET` was refused (managed services, ACLs, a renamed command).
    Unchecked(String),
    /// No answer (connection lost, timeout): nothing learnt, nothing logged by a running check.
    Unanswered,
}

impl PolicyCheck {
    /// A key for "the same verdict as before" (a running check logs changes only).
    pub(super) fn seen(&self) -> String {
        match self {
            PolicyCheck::Safe => redis_checks::NOEVICTION.to_string(),
            PolicyCheck::Accepted { policy, .. } | PolicyCheck::Refused { policy, .. } => {
                policy.clone()
            }
            PolicyCheck::Unchecked(_) | PolicyCheck::Unanswered => "unchecked".to_string(),
        }
    }

    pub(super) fn log(&self, running: bool) {
        match self {
            PolicyCheck::Safe => {
                tracing::info!("Redis maxmemory-policy: noeviction (nothing is evicted)");
            }
            PolicyCheck::Accepted { message, .. } => tracing::warn!(
                "{message} ({ALLOW_EVICTION_VAR}=true: accepted, starting anyway; acknowledged writes can be lost)"
            ),
            PolicyCheck::Refused { message, .. } if running => tracing::error!(
                "{message} (found while running: this replica keeps serving; a restart would refuse to start)"
            ),
            PolicyCheck::Refused { message, .. } => tracing::error!("{message}"),
            PolicyCheck::Unanswered => tracing::warn!(
                "no answer to CONFIG GET maxmemory-policy: could not check that Redis never evicts weauth's keys; make sure it runs maxmemory-policy noeviction"
            ),
            PolicyCheck::Unchecked(error) => tracing::warn!(
                error = %error,
                "cannot read Redis's maxmemory-policy (CONFIG GET refused): could not check that Redis never evicts weauth's keys; make sure it runs maxmemory-policy noeviction"
            ),
        }
    }
}

/// `CONFIG GET name` on every node → each node's value (`None` where the server has no such
/// setting).
async fn config_get_all(conn: &mut Link, name: &str) -> Result<Vec<Option<String>>, RedisError> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg(name);
    let pairs: Vec<Vec<String>> = conn.on_every_node(&get).await?;
    Ok(pairs.into_iter().map(|pair| pair.get(1).cloned()).collect())
}

/// Reads a Redis Cluster's `cluster-node-timeout` on every node and logs a warning when the
/// longest is more than half of `grace` (`WEAUTH_REFRESH_REUSE_GRACE`): while a primary is
/// down — `cluster-node-timeout` and the election — writes on the surviving shards are applied
/// and then answered 503 (their `WAIT` fails), and a refresh retried only after the grace is
/// taken for reuse, ending its session (docs/OPERATIONS.md, "Redis Cluster"). Returns the
/// longest timeout read (milliseconds); `None` when not a cluster or not readable (logged).
pub(super) async fn check_node_timeout(conn: &mut Link, grace: Duration) -> Option<u64> {
    if !matches!(conn, Link::Cluster(_)) {
        return None;
    }
    let longest = match config_get_all(conn, "cluster-node-timeout").await {
        Ok(values) => values
            .iter()
            .flatten()
            .filter_map(|value| value.trim().parse::<u64>().ok())
            .max(),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the Redis Cluster's cluster-node-timeout (CONFIG GET refused): keep it under half of WEAUTH_REFRESH_REUSE_GRACE, or refreshes retried across a failover end their sessions");
            return None;
        }
    }?;
    if redis_checks::failover_outlasts_grace(longest, grace) {
        tracing::warn!(
            cluster_node_timeout_ms = longest,
            reuse_grace_s = grace.as_secs(),
            "the Redis Cluster's cluster-node-timeout is more than half of WEAUTH_REFRESH_REUSE_GRACE: while a primary fails over, refreshes are applied then answered 503, and one retried after the grace is taken for reuse and ends its session; lower cluster-node-timeout (or raise the grace)"
        );
    }
    Some(longest)
}

/// `CONFIG GET name`: the first node's value that `worse` picks out, else the first value
/// (`None` when the server has no such setting).
async fn config_get(
    conn: &mut Link,
    name: &str,
    worse: impl Fn(&str) -> bool,
) -> Result<Option<String>, RedisError> {
    let values = config_get_all(conn, name).await?;
    let first = values.first().cloned().flatten();
    Ok(values
        .into_iter()
        .flatten()
        .find(|value| worse(value))
        .or(first))
}

/// Reads `maxmemory-policy` (and `maxmemory`, for the message) and judges it
/// ([`redis_checks::eviction`]).
pub(super) async fn check_eviction(conn: &mut Link, allow: bool) -> PolicyCheck {
    let evicting = |policy: &str| redis_checks::eviction(policy) != Eviction::Never;
    let policy = match config_get(conn, "maxmemory-policy", evicting).await {
        Ok(Some(policy)) => policy,
        Ok(None) => return PolicyCheck::Unchecked("no maxmemory-policy setting".into()),
        Err(err) if matches!(redis_err(err.clone()), StoreError::Unavailable(_)) => {
            return PolicyCheck::Unanswered
        }
        Err(err) => return PolicyCheck::Unchecked(err.to_string()),
    };
    if redis_checks::eviction(&policy) == Eviction::Never {
        return PolicyCheck::Safe;
    }
    let maxmemory = config_get(conn, "maxmemory", |value| value != "0")
        .await
        .ok()
        .flatten();
    let message = redis_checks::eviction_message(&policy, maxmemory.as_deref(), ALLOW_EVICTION_VAR);
    if allow {
        PolicyCheck::Accepted { policy, message }
    } else {
        PolicyCheck::Refused { policy, message }
    }
}

/// How many replicas a write's `WAIT` can get, parsed; `None` when it could not be read. On
/// one server its `INFO replication`; on a cluster the cluster's own view, `CLUSTER NODES`
/// (the fewest healthy replicas of any primary: [`redis_checks::cluster_replication`]), as
/// the client's map of primaries can lag a failover, bounded by the primaries' own `INFO
/// replication` (a replica in its first full sync: [`redis_checks::cluster_online`]).
pub(super) async fn read_replication(conn: &mut Link) -> Option<Replication> {
    match conn {
        Link::Cluster(_) => {
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(conn)
                .await
                .ok()?;
            let view = redis_checks::cluster_replication(&text)?;
            let mut info = redis::cmd("INFO");
            info.arg("replication");
            // A node that does not answer (one failing over): the cluster's view alone.
            let infos: Vec<String> = conn.on_every_node(&info).await.unwrap_or_default();
            Some(redis_checks::cluster_online(view, &infos))
        }
        Link::Single(_) => {
            let text: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(conn)
                .await
                .ok()?;
            redis_checks::replication(&text)
        }
    }
}

/// `evicted_keys` from `INFO stats` of each node, by its address (each node counts since it
/// started: one restarting lowers only its own count).
pub(super) async fn read_evicted(conn: &mut Link) -> Option<Vec<(String, u64)>> {
    let mut info = redis::cmd("INFO");
    info.arg("stats");
    let texts: Vec<(String, String)> = conn.on_every_node_named(&info).await.ok()?;
    texts
        .into_iter()
        .map(|(node, text)| Some((node, redis_checks::evicted_keys(&text)?)))
        .collect()
}

/// Replication (the group-committed `WAIT`) and the periodic health read.
impl RedisStore {
    /// On a Redis Cluster, warns when a failover can outlast the refresh reuse grace
    /// ([`check_node_timeout`]); called once at start. Returns the longest
    /// `cluster-node-timeout` read (milliseconds).
    pub async fn check_failover_time(&self, grace: Duration) -> Option<u64> {
        let mut link = self.link(true).ok()?.0;
        check_node_timeout(&mut link, grace).await
    }

    /// The link epoch to give [`Self::replicate`]: read before a write is sent.
    pub(super) fn link_epoch(&self) -> u64 {
        self.inner.link_epoch.load(Ordering::Acquire)
    }

    /// `WAIT`s for the configured replicas after a write sent in link epoch `epoch`, asking
    /// for no more than the primary last reported online and skipping the `WAIT` while it
    /// reports none (see the module docs). A shortfall (the `WAIT` timed out) is logged and
    /// counted, not failed: the write is on the primary, and refusing now would make the
    /// client retry a done change; it makes the store re-read the primary's replicas.
    ///
    /// Group commit: one `WAIT` at a time per connection. A `WAIT` covers every write made
    /// on its connection before it was sent, so a write that finds one in flight waits for
    /// it to end and then shares the next one with every write that arrived meanwhile. Redis
    /// runs nothing else from a connection while a `WAIT` blocks it; one at a time bounds
    /// what a replica that stops answering costs the writes queued on the connection to about
    /// one `WEAUTH_REDIS_WAIT_TIMEOUT` (the `WAIT` in flight, then the re-read of the replicas
    /// stops the next), however many are in flight (one `WAIT` each made it their number times
    /// the timeout).
    ///
    /// # Errors
    /// `Unavailable` when the write cannot be confirmed: its `WAIT` failed (the primary went
    /// away — the write may be lost with it), or the connection changed since the write was
    /// sent (a `WAIT` on the new one would not cover it). The client gets no success for a
    /// write a failover may lose; retrying is safe (the module docs).
    pub(super) async fn replicate(&self, epoch: u64) -> Result<(), StoreError> {
        let wanted = self.inner.options.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let waits = &self.inner.waits;
        let mut done = waits.done.subscribe();
        // Any WAIT sent from now on covers this write (its reply has arrived).
        let needed = match waits.state.lock() {
            Ok(state) => state.sent + 1,
            Err(_) => return Err(StoreError::backend("the WAIT lock is poisoned")),
        };
        loop {
            if self.link_epoch() != epoch {
                return Err(unconfirmed("the connection changed since the write"));
            }
            let replicas = redis_checks::wait_target(wanted, self.online_replicas());
            if replicas == 0 {
                self.count_unreplicated();
                return Ok(());
            }
            let finished = *done.borrow_and_update();
            if finished.generation >= needed {
                return match finished.acked {
                    None => Err(unconfirmed("its WAIT failed")),
                    Some(_) if finished.epoch != epoch => {
                        Err(unconfirmed("the connection changed since the write"))
                    }
                    Some(acked) => {
                        if acked < finished.target {
                            self.count_unreplicated();
                        }
                        Ok(())
                    }
                };
            }
            let lead = match waits.state.lock() {
                Ok(mut state) if !state.in_flight => {
                    state.in_flight = true;
                    state.sent += 1;
                    Some(state.sent)
                }
                Ok(_) => None,
                Err(_) => return Err(StoreError::backend("the WAIT lock is poisoned")),
            };
            match lead {
                Some(generation) => return self.lead_wait(generation, replicas, epoch).await,
                None => {
                    if done.changed().await.is_err() {
                        return Err(unconfirmed("the store is closing"));
                    }
                }
            }
        }
    }

    /// Reads which connection the client has now to each primary and moves the link epoch
    /// when any is not the one the last read saw (or cannot be read). The cluster client
    /// replaces a node's connection by itself — a command meeting a closed connection is
    /// retried on a new one, a topology refresh replaces one failing its check — with no
    /// command of the store failing, and a `WAIT` on the new connection covers none of the
    /// old one's writes. Read after every `WAIT` (one at a time), a replacement at any moment
    /// moves the epoch by the end of the first `WAIT` sent after it, so a write that went
    /// out on the replaced connection (its epoch read before) is not confirmed, whichever
    /// connection its `WAIT` took. A new primary (a failover) counts as a replacement. Also
    /// read by every health check (reads may race: see [`Self::note_connection_ids`]).
    async fn note_connections(&self) {
        let ids = self
            .op(|mut conn| async move { conn.connection_ids().await })
            .await;
        self.note_connection_ids(ids.ok(), false);
    }

    /// Notes the connections `ids` read (`None`: could not be read) as the last seen, moving
    /// the link epoch once if `replaced` (the store saw a connection lost or switched) or they
    /// are not the ones seen before. Reads racing each other may move it twice, never miss a
    /// change: the first read to find a replaced connection compares with an earlier one.
    pub(super) fn note_connection_ids(&self, ids: Option<Vec<(String, i64)>>, replaced: bool) {
        let same = match (ids, self.inner.connections.lock()) {
            (Some(ids), Ok(mut seen)) => {
                let same = *seen == ids;
                *seen = ids;
                same
            }
            _ => false,
        };
        if replaced || !same {
            self.inner.link_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Sends the `WAIT` of generation `generation` for `replicas` and publishes its outcome
    /// to the writes sharing it (see [`Self::replicate`]); answers for the leading write, sent
    /// in link epoch `epoch`.
    pub(super) async fn lead_wait(
        &self,
        generation: u64,
        replicas: usize,
        epoch: u64,
    ) -> Result<(), StoreError> {
        /// Ends the lead even when the request is dropped mid-`WAIT`: the writes waiting on it
        /// wake up and one of them sends the next.
        struct Lead<'a> {
            waits: &'a WaitGroup,
        }
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                if let Ok(mut state) = self.waits.state.lock() {
                    state.in_flight = false;
                }
                self.waits.done.send_modify(|_| {});
            }
        }
        let lead = Lead {
            waits: &self.inner.waits,
        };
        let millis = u64::try_from(self.inner.options.wait_timeout.as_millis()).unwrap_or(u64::MAX);
        // The WAIT covers the writes of the connection it goes out on: the one of this epoch.
        let sent_in = self.link_epoch();
        // On a cluster the client sends a `WAIT` to every primary and answers the fewest
        // replicas any acknowledged: writes go to the shard of their slot (the directory and
        // the feed on one, sessions spread by family), and each primary's `WAIT` covers what
        // was written on the client's connection to it.
        let acked: Result<usize, StoreError> = self
            .op(|mut conn| async move {
                let mut wait = redis::cmd("WAIT");
                wait.arg(replicas).arg(millis);
                wait.query_async(&mut conn).await
            })
            .await;
        let short = matches!(acked, Ok(n) if n < replicas);
        if short || acked.is_err() {
            // Before the writes queued behind this WAIT decide whether to send the next one
            // (a replica gone: the next writes skip the WAIT rather than fail on it too).
            self.reread_replication().await;
        }
        // A connection the client replaced by itself shows now, whenever it was replaced.
        self.note_connections().await;
        // A reconnect that began before the WAIT picked its connection shows by now: such a
        // WAIT confirms nothing (`u64::MAX`: no write's epoch).
        let confirmed_in = if self.link_epoch() == sent_in {
            sent_in
        } else {
            u64::MAX
        };
        self.inner.waits.done.send_modify(|finished| {
            *finished = WaitDone {
                generation,
                acked: acked.as_ref().ok().copied(),
                target: replicas,
                epoch: confirmed_in,
            }
        });
        drop(lead);
        let ours = confirmed_in == epoch;
        match acked {
            Ok(n) if short => {
                if ours {
                    self.count_unreplicated();
                }
                self.inner
                    .health
                    .short_waits
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    acked = n,
                    wanted = replicas,
                    "WEAUTH_REDIS_WAIT_REPLICAS: writes reached fewer replicas than configured within WEAUTH_REDIS_WAIT_TIMEOUT; a failover right now could lose them"
                );
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "WAIT failed after a write: the writes it covered are answered as failed");
                return Err(unconfirmed("its WAIT failed"));
            }
        }
        if !ours {
            return Err(unconfirmed("the connection changed since the write"));
        }
        Ok(())
    }

    /// [`read_replication`] on the health connection; on a cluster, should the node it asked
    /// be gone, again on the main connection.
    pub(super) async fn read_replication(&self) -> Option<Replication> {
        if let Ok(mut conn) = self.health_manager() {
            if let Some(replication) = read_replication(&mut conn).await {
                return Some(replication);
            }
        }
        if !self.cluster() {
            return None;
        }
        let mut conn = self.manager().ok()?;
        read_replication(&mut conn).await
    }

    pub(super) fn count_unreplicated(&self) {
        self.inner
            .health
            .unreplicated_writes
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The replicas the primary last reported online (`None`: unknown).
    pub(super) fn online_replicas(&self) -> Option<usize> {
        usize::try_from(self.inner.health.online.load(Ordering::Relaxed)).ok()
    }

    pub(super) fn health_manager(&self) -> Result<Link, StoreError> {
        self.inner
            .conn
            .lock()
            .map(|conn| conn.health.clone())
            .map_err(|_| StoreError::backend("the Redis connection lock is poisoned"))
    }

    /// After a `WAIT` fell short: re-reads the primary's replicas on the health connection
    /// (one re-read at a time, at most every 250 ms), so the writes that follow stop waiting
    /// for a replica that is gone.
    pub(super) async fn reread_replication(&self) {
        let health = &self.inner.health;
        let recent = health
            .reread_at
            .lock()
            .map(|at| at.is_some_and(|at| at.elapsed() < Duration::from_millis(250)))
            .unwrap_or(true);
        if recent || health.rereading.swap(true, Ordering::AcqRel) {
            return;
        }
        let read = tokio::time::timeout(Duration::from_secs(1), self.read_replication());
        if let Ok(replication) = read.await {
            self.note_replication(replication);
        }
        if let Ok(mut at) = health.reread_at.lock() {
            *at = Some(Instant::now());
        }
        health.rereading.store(false, Ordering::Release);
    }

    /// Records what `INFO replication` said, logging when the primary has fewer replicas
    /// online than `WEAUTH_REDIS_WAIT_REPLICAS` asks for, and when they are back.
    pub(super) fn note_replication(&self, replication: Option<Replication>) {
        let online = match replication {
            Some(Replication {
                primary: true,
                online,
            }) => i64::try_from(online).unwrap_or(i64::MAX),
            _ => -1,
        };
        let before = self.inner.health.online.swap(online, Ordering::AcqRel);
        let wanted = i64::try_from(self.inner.options.wait_replicas).unwrap_or(i64::MAX);
        if wanted == 0 || online < 0 {
            return;
        }
        let was_short = before >= 0 && before < wanted;
        if online < wanted && (!was_short || (online == 0) != (before == 0)) {
            if online == 0 {
                tracing::error!(
                    replicas_online = 0,
                    wanted,
                    "the Redis primary reports no replica online: acknowledged writes are now on one machine (WAIT is skipped until a replica is back; losing this primary now loses them). Bring a replica back, e.g. restart the old primary: Sentinel makes it a replica"
                );
            } else {
                tracing::warn!(
                    replicas_online = online,
                    wanted,
                    "the Redis primary reports fewer replicas online than WEAUTH_REDIS_WAIT_REPLICAS: writes WAIT for those online only"
                );
            }
        } else if online >= wanted && was_short {
            tracing::info!(
                replicas_online = online,
                wanted,
                "Redis replicas online again: writes WAIT for WEAUTH_REDIS_WAIT_REPLICAS again"
            );
        }
    }

    /// Records the nodes' `evicted_keys` readings, logging what grew.
    pub(super) fn note_evicted(&self, evicted: &[(String, u64)]) {
        let grown = match self.inner.health.evictions.lock() {
            Ok(mut watch) => watch.observe(evicted),
            Err(_) => 0,
        };
        if grown > 0 {
            let total = self
                .inner
                .health
                .evicted_total
                .fetch_add(grown, Ordering::Relaxed)
                + grown;
            tracing::error!(
                evicted = grown,
                evicted_since_start = total,
                "Redis evicted keys (its evicted_keys grew): acknowledged revocations, sessions or refresh tokens may be gone. Set maxmemory-policy noeviction and give Redis more memory"
            );
        }
    }

    /// Logs a `maxmemory-policy` verdict when it differs from the last one logged.
    pub(super) fn note_policy(&self, policy: &PolicyCheck) {
        if *policy == PolicyCheck::Unanswered {
            return;
        }
        let seen = policy.seen();
        let changed = match self.inner.health.policy_seen.lock() {
            Ok(mut last) => {
                let changed = last.as_deref() != Some(seen.as_str());
                *last = Some(seen);
                changed
            }
            Err(_) => false,
        };
        if changed {
            policy.log(true);
        }
    }

    /// The periodic health read (the issuer runs it every second): the primary's replicas
    /// online, keys evicted since the last read, and `maxmemory-policy` (logged when it
    /// changes: an evicting policy set while running is an error in the log, not an exit).
    /// Runs on the health connection, so a `WAIT` on the main one does not delay it.
    pub async fn check_health(&self) -> RedisHealth {
        // An idle replica follows a Sentinel failover from here rather than at its next
        // request, which would fail doing so: when the last check could not read the primary,
        // ask Sentinel first (paced, and switching only to another primary, as after any
        // failure).
        if self
            .inner
            .health
            .primary_unread
            .swap(false, Ordering::AcqRel)
        {
            self.after_failure(true).await;
        }
        if let Ok(mut conn) = self.health_manager() {
            // Until read (the reads below may be cut short by their timeout).
            self.inner
                .health
                .primary_unread
                .store(true, Ordering::Release);
            let reads = async {
                let replication = self.read_replication().await;
                self.inner
                    .health
                    .primary_unread
                    .store(replication.is_none(), Ordering::Release);
                self.note_replication(replication);
                if let Some(evicted) = read_evicted(&mut conn).await {
                    self.note_evicted(&evicted);
                }
                let policy = check_eviction(&mut conn, self.inner.options.allow_eviction).await;
                self.note_policy(&policy);
                // Also while no WAIT is sent (the primary alone after a failover): the first
                // WAIT after would otherwise compare with connections from before the failover
                // and confirm none of the writes sharing it. Last, on the main connection:
                // behind a WAIT in flight it waits for it, and delays none of the reads above.
                if self.inner.options.wait_replicas > 0 {
                    self.note_connections().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), reads).await;
        }
        let health = &self.inner.health;
        RedisHealth {
            replicas: self.online_replicas(),
            wanted: self.inner.options.wait_replicas,
            evicted_keys: health.evicted_total.load(Ordering::Relaxed),
            unreplicated_writes: health.unreplicated_writes.load(Ordering::Relaxed),
        }
    }
}

/// A write whose replication cannot be confirmed (see [`RedisStore::replicate`]).
fn unconfirmed(why: &str) -> StoreError {
    StoreError::Unavailable(format!("the write could not be confirmed on a replica: {why}").into())
}
