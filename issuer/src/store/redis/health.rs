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

/// `INFO replication` of the primary holding `slot_key`, parsed; `None` when it could not be
/// read.
///
/// On a cluster it runs inside a script that declares `slot_key`: only the node serving that
/// slot runs it (any other answers `MOVED`, which the client follows, refreshing its map).
/// A plain `INFO` routed by the client's map could be answered by another node: after a
/// failover the health connection, which writes nothing and so never meets a `MOVED`, still
/// mapped the slot to the dead primary and the client sent the read to a node it had a
/// connection to — a primary of another shard, whose replica made the promoted primary look
/// replicated, so every write `WAIT`ed its whole timeout again (measured: 10 requests/s
/// instead of 156, `tests/tests/e2e_cluster.rs`).
pub(super) async fn read_replication(conn: &mut Link, slot_key: &str) -> Option<Replication> {
    let text: String = match conn {
        Link::Cluster(_) => {
            static INFO_IN_SLOT: std::sync::LazyLock<redis::Script> =
                std::sync::LazyLock::new(|| {
                    redis::Script::new("return redis.call('INFO', 'replication')")
                });
            INFO_IN_SLOT.key(slot_key).invoke_async(conn).await.ok()?
        }
        Link::Single(_) => {
            let mut info = redis::cmd("INFO");
            info.arg("replication");
            conn.on_primary_of(&info, slot_key).await.ok()?
        }
    };
    redis_checks::replication(&text)
}

/// `evicted_keys` from `INFO stats`, summed over the nodes.
pub(super) async fn read_evicted(conn: &mut Link) -> Option<u64> {
    let mut info = redis::cmd("INFO");
    info.arg("stats");
    let texts: Vec<String> = conn.on_every_node(&info).await.ok()?;
    texts
        .iter()
        .map(|text| redis_checks::evicted_keys(text))
        .sum::<Option<u64>>()
}
