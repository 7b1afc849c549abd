//! How the Redis client's errors become the store's: [`redis_err`] maps one to a
//! [`StoreError`] (the 503s to retry, the busy server, the backend's fault), and the two
//! readings the store reacts to — [`connection_lost`] (the link epoch moves) and
//! [`may_have_moved`] (behind Sentinel, ask where the primary is).

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::store::StoreError;

/// Maps a client error: lost connections, timeouts, a read-only replica (failover under way)
/// and a loading server are [`StoreError::Unavailable`] (503, retry); a server out of memory,
/// busy with a script or short of replicas is [`StoreError::Busy`] (503 too); the rest are
/// backend errors.
pub fn redis_err(err: RedisError) -> StoreError {
    match class(&err) {
        ErrorClass::Unavailable => StoreError::Unavailable(Box::new(err)),
        ErrorClass::Busy => StoreError::Busy(Box::new(err)),
        ErrorClass::Backend => StoreError::Backend(Box::new(err)),
    }
}

/// The [`StoreError`] a client error becomes ([`redis_err`]).
enum ErrorClass {
    Unavailable,
    Busy,
    Backend,
}

fn class(err: &RedisError) -> ErrorClass {
    let transient = err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            ) | ErrorKind::ClusterConnectionNotFound
        );
    // A script reaching a key of a slot being migrated (resharding): retry shortly.
    let migrating = err.to_string().contains("non local key");
    // Codes the client does not name: out of memory under `noeviction` (writes refused until
    // the purge or an operator frees some), a script running past `busy-reply-threshold`,
    // fewer replicas than `min-replicas-to-write`. Each passes; none is the request's fault.
    // (`NOREPLICAS` may also mean the primary is being replaced: [`may_have_moved`].)
    let refusing = matches!(err.code(), Some("OOM" | "BUSY" | "NOREPLICAS"));
    if transient || migrating {
        ErrorClass::Unavailable
    } else if refusing {
        ErrorClass::Busy
    } else {
        ErrorClass::Backend
    }
}

/// Whether the connection `err` came on may be gone or now lead elsewhere (the client
/// reconnects by itself; a primary demoted under it answers READONLY): see
/// [`super::Inner::link_epoch`].
pub(super) fn connection_lost(err: &RedisError) -> bool {
    // Not a response timeout: the connection stays (a late answer is dropped), and counting
    // it would fail every write in flight for one slow command.
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                | ErrorKind::ClusterConnectionNotFound
        )
}

/// Whether `err` may mean that the primary moved: anything [`redis_err`] calls unavailable
/// (a lost connection, a read-only replica, …), and `NOREPLICAS` — a primary under
/// `min-replicas-to-write` cut off from its replicas, which is what a primary partitioned
/// away from Sentinel and its replicas answers while Sentinel promotes one of them (it
/// refuses writes until the partition heals, then becomes a replica). A store still reaching
/// it follows Sentinel to the new primary instead of answering 503 for the partition's length.
pub(super) fn may_have_moved(err: &RedisError) -> bool {
    err.code() == Some("NOREPLICAS") || matches!(class(err), ErrorClass::Unavailable)
}
