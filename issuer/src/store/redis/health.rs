//! What the Redis store checks about its server, apart from the data: the error a failed
//! connection is explained with, persistence (AOF) and the eviction policy at start, and the
//! periodic reads of replication and evicted keys (parsed by `super::super::redis_checks`).

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
pub(super) async fn check_persistence(conn: &mut ConnectionManager) {
    let get = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            let pair: Result<Vec<String>, RedisError> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await;
            pair.ok().and_then(|pair| pair.get(1).cloned())
        }
    };
    match (get("appendonly").await, get("appendfsync").await) {
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

/// `CONFIG GET name` → its value (`None` when the server has no such setting).
pub(super) async fn config_get(
    conn: &mut ConnectionManager,
    name: &str,
) -> Result<Option<String>, RedisError> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await?;
    Ok(pair.get(1).cloned())
}

/// Reads `maxmemory-policy` (and `maxmemory`, for the message) and judges it
/// ([`redis_checks::eviction`]).
pub(super) async fn check_eviction(conn: &mut ConnectionManager, allow: bool) -> PolicyCheck {
    let policy = match config_get(conn, "maxmemory-policy").await {
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
    let maxmemory = config_get(conn, "maxmemory").await.ok().flatten();
    let message = redis_checks::eviction_message(&policy, maxmemory.as_deref(), ALLOW_EVICTION_VAR);
    if allow {
        PolicyCheck::Accepted { policy, message }
    } else {
        PolicyCheck::Refused { policy, message }
    }
}

/// `INFO replication`, parsed; `None` when it could not be read.
pub(super) async fn read_replication(conn: &mut ConnectionManager) -> Option<Replication> {
    let text: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await
        .ok()?;
    redis_checks::replication(&text)
}

/// `evicted_keys` from `INFO stats`.
pub(super) async fn read_evicted(conn: &mut ConnectionManager) -> Option<u64> {
    let text: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .ok()?;
    redis_checks::evicted_keys(&text)
}
