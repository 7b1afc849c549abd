//! The Redis store for several replicas (`WEAUTH_STORE=redis://…`, `rediss://…`,
//! `redis+sentinel://…`, `redis+cluster://…`, `rediss+cluster://…`), on the `redis` crate: its
//! tokio `ConnectionManager` multiplexes one connection per replica and reconnects by itself,
//! its `sentinel` feature finds the primary, and its cluster-async `ClusterConnection`
//! discovers a Redis Cluster from seed nodes, follows `MOVED`/`ASK` and refreshes the topology
//! after a failover or a resharding. (`fred` would do as well; `redis` is the more widely used
//! client, is what the Redis project maintains, and needs no extra runtime glue.)
//!
//! One module serves one server, Sentinel and a Cluster: the store is written once against
//! `link::Link` (a `ConnectionLike` over either connection), and what differs is where a
//! key lives (below) and which node a `WAIT` or a health read goes to. A sibling
//! `redis_cluster/` module would have repeated every script and the whole Store impl for a
//! difference of a hash tag.
//!
//! Layout, every key under the prefix `P` (`WEAUTH_REDIS_PREFIX`, default `weauth:`); `F`
//! is a session's *family* ([`tokens::family_of_sid`]: 8 characters its sid and every one of
//! its refresh tokens begin with), which places the session's keys on a cluster:
//!
//! | key (one server) | on a cluster | type | what |
//! | --- | --- | --- | --- |
//! | `P user:<sub>` | `{P}user:<sub>` | hash | sub, unionid, phone, created_at, updated_at, grants, risk (no TTL) |
//! | `P identity:<appid>:<openid>` | `{P}…` | string | the identity's sub (no TTL) |
//! | `P unionid:<unionid>` | `{P}…` | string | the sub carrying that unionid (no TTL) |
//! | `P code:<code_hash>` | `{P}…` | string | sid made from that code (TTL: session end) |
//! | `P sub_sessions:<sub>` | `{P}…` | set | sids of a user (TTL: latest session end + 1 day) |
//! | `P sessions_exp` | `{P}…` | zset | sid → session end, for the purge |
//! | `P session:<sid>` | `P{s:F}session:<sid>` | hash | the session (TTL: its end + 1 day) |
//! | `P refresh:<hash>` | `P{s:F}refresh:<hash>` | hash | sid, created_at, expires_at, used_at, rotated_by (the rotating call's id), repeated_at (a repeat within the grace writes it, for its `WAIT`; under `noeviction` with the memory full that write is refused like any other); TTL: expiry + 1 day |
//! | `P family:<sid>` | `P{s:F}family:<sid>` | set | a session's refresh-token hashes, as releases before its `given` count kept them; removed with it |
//! | `P refresh_exp` | `{P}…` | zset | expiry index of refresh tokens written before families (purged, no longer written) |
//! | `P seq` | `{P}…` | string | highest revocation seq (INCR; never decreases) |
//! | `P rev:entries` | `{P}…` | hash | seq → entry JSON (wire format) |
//! | `P rev:by_seq`, `P rev:by_until` | `{P}…` | zset | entry order and expiry index |
//! | `P rev:<kind>:<value>` | `{P}…` | zset | seq → issued_before: revocation facts by claim |
//! | `P seq_epoch` | `{P}…` | string | replication id of the primary the last revocation was written on |
//! | `P rev_call:<id>` | `{P}…` | string | the entry a REVOKE call appended (60 s, for the call sent again) |
//! | `P purged_through` | `{P}…` | string | purge watermark |
//! | `P access_ttls` | `{P}…` | hash | access-token lifetime (s) → when a replica last reported issuing it |
//! | `P keys` | `{P}…` | hash | kid → signing key record JSON |
//! | `P eph:<name>`, `P eph_exp`, `P eph_taken:<name>` | `{P}…` | hash, zset, hash | web-login state, its expiry index, and a state taken (60 s, for the take's resend) |
//! | `P wx:<appid>` | `P{wx:<appid>}` | hash | WeChat app token and its refresh lease |
//! | `P rl:<ip>` | `P{rl:<ip>}` | hash | login rate-limit bucket (TTL: refill time) |
//! | `P ru:<sub>` | `P{ru:<sub>}` | hash | a user's WeChat-call rate-limit bucket (TTL: refill time) |
//!
//! The TTLs are a safety net with one day of slack; the purge removes expired items on time,
//! using the operations' `now` (so the store's behaviour follows the domain's clock), except
//! refresh tokens: a token (rotated away or not) stays until its TTL runs out (the reuse
//! check needs it while its session lives; once the session is purged it reads as unknown).
//!
//! Atomicity: every change within one slot is one Lua script. Where the domain decides
//! ([`rules::decide_refresh`], [`rules::link_user`]), the store reads the facts, calls the
//! Rust function, and applies the verdict with a compare-and-set script that re-checks the
//! facts it was based on; when another writer got there first the script changes nothing and
//! the store reads and decides again. Where a rule has to run inside a script (which sessions
//! a `sub` revocation ends: [`rules::sub_revocation_covers`]; the purge watermark:
//! [`rules::next_watermark`]; the rate-limit bucket: [`crate::domain::ratelimit::RateLimiter`]), the
//! script mirrors it and the contract suite proves it agrees. Three changes span a session's
//! slot and the directory's, and run as idempotent steps in an order that leaves nothing
//! acknowledged half-done (the same steps on one server, so the contract suite covers them):
//!
//! - *A login*: the directory's half (LOGIN: the code spent, the user linked, the sid in the
//!   user's set and the expiry index), then the session and its first refresh token
//!   (OPEN_SESSION). A failure between answers an error with no session, the first half taken
//!   back (FORGET_SESSIONS, the owner known); if that fails too, the sid stays in the user's
//!   set (the purge, finding no session, cannot tell whose it was; it takes the sid off the
//!   expiry index at the session's end) and the code's mark expires.
//! - *A revocation*: the sessions it covers marked revoked in their slots (MARK_SESSION;
//!   for a `sub`, the user's set read, then read again after the entry for sessions that
//!   joined meanwhile; for a `sid`, its entry noted as pending in the session), then the
//!   entry appended to the feed (REVOKE), then the pending note cleared, then `WAIT`: see
//!   [`RedisStore::revoke_entry`]. A reader that finds a note left by a revocation cut short
//!   writes the entry.
//! - *The purge*: ended sessions found in the expiry index, their owners read, taken off the
//!   user's set, the code and, last, the index (FORGET_SESSIONS), then dropped in their slots
//!   (DROP_SESSION: their refresh tokens, unknown without them, are left to their TTLs): a
//!   purge cut short before the directory forgot is done again by the next; after, the
//!   sessions' keys end with their TTLs.
//!
//! Redis Cluster. A script's keys must all be in one hash slot. The directory (users,
//! identities, unionids, codes, users' session sets), the revocation feed, the key ring and
//! the web-login values share one slot, `{P}`: a login's linking and a revocation's entry are
//! atomic as on one server. Sessions and their refresh tokens are spread over the slots by
//! family, `P{s:F}`: a refresh — at WeChat scale the most frequent write, one per active user
//! per access-token lifetime — reads and writes only its session's slot, so refreshes, and
//! the reads of sessions (`/v1/me`, the bearer check), scale with the primaries; a login
//! writes the directory's slot once and its session's slot once; a revocation writes the
//! covered sessions' slots and the feed's. The rate-limit buckets `P{rl:<ip>}`, `P{ru:<sub>}` and the apps'
//! WeChat tokens `P{wx:<appid>}` have tags of their own. What stays on one primary: the
//! directory's writes (one per login) and the feed (one per revocation) — the feed on purpose
//! (below). Resharding moves slots key by key (`MIGRATE`); a script meeting a slot half moved
//! gets `TRYAGAIN`/`ASK`, which the client retries and otherwise surfaces as a 503 to retry.
//!
//! The feed. `since` is a cursor into one sequence, `P seq`, written in the same script and
//! slot as the entry it numbers, so an entry and its seq move, fail over and persist
//! together; a sidecar reads entries with `seq > since` in seq order. (One feed slot rather
//! than per-shard feeds with a composite cursor: the cursor stays one number, which every
//! deployed sidecar already keeps.) The cursor holds after any failover or resharding when
//! two things hold: no acknowledged entry is lost (nothing skipped), and no seq a reader was
//! ever given is handed to another entry (a reader past it would never ask for that one).
//!
//! - *Acknowledged means replicated.* A revocation is acknowledged after `WAIT` (below), so
//!   the replica a failover promotes has it and every seq before it, at the same seqs: the
//!   replica applies the script's effects in order (`tests/tests/e2e_cluster.rs` checks each
//!   acknowledged logout's seq in the store after a SIGKILL of the slot's primary).
//! - *What a failover can lose* is an entry the old primary executed but had not replicated
//!   (its `WAIT` fell short or had not ended: its client got no success, or a success counted
//!   in `weauth_store_unreplicated_writes_total`). A sidecar may have read it and holds its
//!   seq as `since`; the new primary's `P seq` is below it and would hand that seq to the
//!   next revocation. So the REVOKE script reads the primary's `master_replid` and, when it
//!   differs from `P seq_epoch`, first jumps the seq by [`SEQ_GAP`] (a million; far more than
//!   a dying primary can hold unreplicated, as every write waits for its replica). Redis gives
//!   a promoted replica a new replication id (the old one becomes its `master_replid2`), and
//!   a primary gets a fresh one at every start (only a replica restores its id from disk), so
//!   every way the serving copy can have lost a suffix of the sequence changes the id. A
//!   resharding moves the slot to a primary with another id: one harmless jump.
//!   On a change of primary (not at the store's first revocation) the jump goes at least to
//!   the primary's time in microseconds: a gap from its own seq does not clear the seqs
//!   another promoted primary numbered past its copy (two failovers in a row, the second to a
//!   copy lagging the first), and times grow between primaries whose clocks agree to the
//!   length of a failover (below 2^53 for centuries; written as digits, never through Lua's
//!   14-digit number formatting).
//!   Meanwhile a cursor past the new seq gets the full list (the feed's "future `since`" rule)
//!   and applies it again. Seqs only grow, with gaps, and are never reused.
//! - *A resharding* moves the slot key by key (`MIGRATE`). Every key a script touches is
//!   declared, so a script meeting the slot half moved gets `TRYAGAIN` or `ASK` before it runs
//!   (never half-applied), the client retries, and what still fails is a 503 to retry. The
//!   seq, the entries and `P seq_epoch` move together with the slot; nothing is renumbered.
//! - *Nothing is applied twice.* An entry is written once under its seq; a reader only gets
//!   entries above its cursor, or a full list to apply from scratch; the session change an
//!   entry carries is idempotent (`HSETNX revoked_at`).
//!
//! What this does not cover: losing the slot's primary and its replica's copy at once (a
//! primary without persistence restarting empty brings `P seq` back to 0; the AOF check at
//! start warns of that configuration), a failover of the *target* primary in the moment
//! after a resharding moved the slot to it (`MIGRATE` does not wait for the target's
//! replica). The purge's script still finds by name the keys of what it removes (an entry's
//! claim index, a session's code and user set), so during a resharding it can stop half way
//! ("non local key", a 503 in the log): every item leaves its expiry index last, so the next
//! purge finishes what this one began, and only the purge watermark can lag behind expired
//! entries already removed (a lagging sidecar then gets a delta without them rather than the
//! full set: they were past their `until`, nothing it needs).
//!
//! Durability: with `WAIT` configured (`WEAUTH_REDIS_WAIT_REPLICAS`, default 1 on Sentinel
//! and on a cluster, where the client sends it to every primary and answers the fewest
//! replicas any of them reached: each primary's `WAIT` covers the writes made on the
//! client's one connection to it), every write is acknowledged to the client only after that many replicas have it, or after
//! `WEAUTH_REDIS_WAIT_TIMEOUT` (then a warning is logged and counted: that write could be lost
//! by a failover in the next moment). A write whose `WAIT` fails, or whose connection was
//! replaced before its `WAIT` was sent ([`Inner::link_epoch`]), is answered as unavailable:
//! the store sees a replacement as a failed command, a Sentinel switch, or — the client
//! reconnecting by itself with no command failing (the cluster client retries a command that
//! met a closed connection on a new one) — a connection id (`CLIENT ID`, read on each primary
//! after every `WAIT`, [`RedisStore::note_connections`]) not the one read before. Hence with
//! `WAIT` on, the issuer's Redis user needs `CLIENT ID` (ACL `+client|id`; refused at start
//! without it). `WAIT` asks for no more replicas than the primary last
//! reported online (on a cluster: the fewest any primary reports), and is skipped while it
//! reports none (after a failover that left the promoted primary alone; on a cluster this
//! skips it for every shard until that one has a replica again — loud in the log and the
//! metrics — rather than hold every write for the timeout): a `WAIT` that cannot be satisfied runs its whole timeout and holds
//! every command queued behind it on the multiplexed connection. One `WAIT` is in flight at a
//! time, shared by the writes that finished before it was sent (group commit,
//! [`RedisStore::replicate`]). The primary's replicas are
//! read (`INFO replication`, on a second connection that no `WAIT` blocks) at connect, after
//! every Sentinel re-resolution, after a `WAIT` that fell short, and by [`RedisStore::check_health`]
//! (the issuer calls it every second), which also follows `evicted_keys` and re-checks
//! `maxmemory-policy`. On a cluster `maxmemory-policy`, AOF and `evicted_keys` are read on
//! every node (any evicting node refuses the start). The pure side of these checks is
//! [`super::redis_checks`].
//! Revocations are published on `P revocations` so every replica's long polls wake at once (on
//! a cluster a `PUBLISH` reaches every node; a follower subscribes on the first seed that
//! answers and, when that node goes, on the next).

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use redis::aio::ConnectionManager;
use redis::{
    AsyncCommands, ErrorKind, FromRedisValue, RedisError, ScriptInvocation, ServerErrorKind,
};
use serde::{Deserialize, Serialize};
use weauth_token::revocation::{Entry, EntryKind};

use super::redis_checks::{self, Eviction, EvictionWatch, Replication};
use super::{
    BanWrite, CachedToken, FeedSnapshot, KeyRecord, LoginResult, NewLogin, Purged, ReportedTtl,
    Revoke, RiskFact, Rotate, RotateResult, SessionRecord, Store, StoreError, SubSessions,
    UserRecord,
};
use crate::domain::grants::{self, Ban, Grants};
use crate::domain::rules::{
    self, FoundUser, LinkCandidates, RefreshDecision, RefreshRow, RevocationFacts,
};
use crate::domain::tokens;

/// Slack added to every natural-end TTL: the purge removes items first (refresh tokens are
/// left to their TTLs); the TTL bounds what a purge that never runs would leave behind.
mod connect;
mod errors;
mod health;
mod keys;
mod purge;
pub use keys::{LOGIN_BUCKETS, USER_BUCKETS};
mod link;
mod revoke;
mod scripts;
mod store;

use self::connect::*;
pub use self::errors::redis_err;
use self::errors::{connection_lost, may_have_moved};
use self::health::*;
use self::link::Link;
use self::revoke::SubReach;
use self::scripts::Scripts;

const TTL_SLACK: i64 = 86_400;
/// How many times a compare-and-set is retried after losing a race before answering busy.
const CAS_ATTEMPTS: usize = 8;
/// How far the revocation seq jumps when a revocation is written on another primary than the
/// last one (a failover or a restart): more than the revocations a primary can have
/// acknowledged without a replica when it dies (see "The feed" in the module docs). The
/// SQL stores move theirs by as much (at each start; MySQL also on another server).
const SEQ_GAP: i64 = crate::domain::rules::SEQ_GAP as i64;
/// Items removed per kind per purge round.
const PURGE_BATCH: usize = 10_000;
/// Rounds per purge while a round comes back full, a pause between them (each round's scripts
/// hold the directory's server for up to ~90 ms at a full batch): up to 100 000 items of each
/// kind per `WEAUTH_PURGE_INTERVAL`. One round a purge capped the purge at 10 000 a minute
/// (about 167 a second): past that rate of ended sessions, revocations or abandoned web logins
/// the indexes grew without bound, with them the feed's reload time, until `noeviction`
/// refused every write.
const PURGE_ROUNDS: usize = 10;
const PURGE_PAUSE: Duration = Duration::from_millis(20);
/// Scripts in flight at once where one change spans many slots (a user's sessions, a purge).
const CONCURRENT_SLOTS: usize = 32;

pub use crate::config::RedisTarget;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub target: RedisTarget,
    /// The URL without its password, for messages.
    pub display: String,
    /// Key prefix (`WEAUTH_REDIS_PREFIX`).
    pub prefix: String,
    /// `WAIT` for this many replicas after each write (0: do not wait).
    pub wait_replicas: usize,
    pub wait_timeout: Duration,
    /// `WEAUTH_REDIS_ALLOW_EVICTION`: start (with a warning) even when `maxmemory-policy` can
    /// evict weauth's keys.
    pub allow_eviction: bool,
}

/// The variable that accepts an evicting `maxmemory-policy`.
pub const ALLOW_EVICTION_VAR: &str = "WEAUTH_REDIS_ALLOW_EVICTION";

/// Connection state: the current primary's connection managers.
struct Conn {
    manager: Link,
    /// A second connection to the same primary (or cluster) for the health reads (`INFO`,
    /// `CONFIG GET`) and the store's reads ([`RedisStore::read`]), so they are never queued
    /// behind a `WAIT` on the main one.
    health: Link,
    /// When the primary was last re-resolved through Sentinel.
    resolved_at: Instant,
    /// The primary's address (`host:port`) these connections lead to: a Sentinel answer
    /// naming the same one is no switch.
    primary: String,
    /// Switches to another primary so far. A command's failure on a connection switched away
    /// from says nothing of the current one ([`RedisStore::op`]).
    switches: u64,
}

/// The Redis implementation of [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    options: RedisOptions,
    /// The prefix of the keys the scripts share (on a cluster, `{P}`: one hash slot).
    prefix: String,
    conn: Mutex<Conn>,
    /// Serializes Sentinel re-resolution.
    resolving: tokio::sync::Mutex<()>,
    scripts: Scripts,
    health: Health,
    waits: WaitGroup,
    /// Bumped whenever the connection a write went out on may have been replaced (a lost
    /// connection, which the client reconnects; a Sentinel switch; a demoted primary): a
    /// `WAIT` covers only the writes of the connection it is sent on, so a write whose
    /// epoch is not its `WAIT`'s is not confirmed by it ([`RedisStore::replicate`]). Not
    /// moved by a failure on a connection already switched away from, nor by a Sentinel
    /// answer naming the primary the store is on. Nor by the client replacing a connection by
    /// itself with no command failing (the cluster client retries a command that met a
    /// closed connection on a new one): [`RedisStore::note_connections`] moves it for that.
    link_epoch: AtomicU64,
    /// The connection the client had to each primary when last read
    /// ([`RedisStore::note_connections`]).
    connections: Mutex<Vec<(String, i64)>>,
}

/// The `WAIT` group commit ([`RedisStore::replicate`]).
struct WaitGroup {
    state: Mutex<WaitState>,
    /// The last `WAIT` that ended.
    done: tokio::sync::watch::Sender<WaitDone>,
}

#[derive(Default)]
struct WaitState {
    /// `WAIT`s sent so far (the generation of the latest).
    sent: u64,
    /// One is in flight.
    in_flight: bool,
}

/// How a `WAIT` ended.
#[derive(Debug, Clone, Copy, Default)]
struct WaitDone {
    generation: u64,
    /// Replicas that acknowledged (`None`: the `WAIT` failed).
    acked: Option<usize>,
    /// Replicas it asked for.
    target: usize,
    /// The link epoch it was sent in.
    epoch: u64,
}

/// What the health reads found, shared by the write path and the periodic check.
struct Health {
    /// Replicas the primary last reported online; -1 when unknown (no answer yet, or the
    /// server is not a primary).
    online: AtomicI64,
    /// Keys the server evicted since this handle started watching.
    evicted_total: AtomicU64,
    /// Writes acknowledged without the configured replicas: `WAIT` skipped (none online) or
    /// fallen short.
    unreplicated_writes: AtomicU64,
    evictions: Mutex<EvictionWatch>,
    /// The last `maxmemory-policy` verdict logged (a running check logs changes only).
    policy_seen: Mutex<Option<String>>,
    /// `WAIT`s that fell short (each shared by the writes of its group).
    short_waits: AtomicU64,
    /// The last health check could not read the primary's replication (it may be gone: the
    /// next check asks Sentinel first).
    primary_unread: AtomicBool,
    /// One replication re-read at a time after a `WAIT` fell short, at most every 250 ms.
    rereading: AtomicBool,
    reread_at: Mutex<Option<Instant>>,
}

/// What [`RedisStore::check_health`] saw (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisHealth {
    /// Replicas the primary reports online (`None`: unknown).
    pub replicas: Option<usize>,
    /// `WEAUTH_REDIS_WAIT_REPLICAS`.
    pub wanted: usize,
    /// Keys Redis evicted since this replica started watching.
    pub evicted_keys: u64,
    /// Writes acknowledged without the wanted replicas.
    pub unreplicated_writes: u64,
}

/// The connections `link` has now ([`Link::connection_ids`]), if read within 250 ms.
async fn read_connection_ids(mut link: Link) -> Option<Vec<(String, i64)>> {
    tokio::time::timeout(Duration::from_millis(250), link.connection_ids())
        .await
        .ok()
        .and_then(Result::ok)
}

/// A sealed key record as stored (JSON, material in base64).
#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    alg: String,
    sealed: String,
    created_at: i64,
    activate_at: i64,
}

fn ttl(expires_at: i64, now: i64) -> i64 {
    expires_at
        .saturating_sub(now)
        .max(1)
        .saturating_add(TTL_SLACK)
}

fn parse_entry(json: &str) -> Result<Entry, StoreError> {
    serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("revocation entry: {err}")))
}

fn text(fields: &HashMap<String, Vec<u8>>, name: &str) -> Option<String> {
    fields
        .get(name)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

fn number(fields: &HashMap<String, Vec<u8>>, name: &str) -> Result<Option<i64>, StoreError> {
    match text(fields, name) {
        None => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("field `{name}` is not a number"))),
    }
}

fn required(fields: &HashMap<String, Vec<u8>>, name: &str) -> Result<String, StoreError> {
    text(fields, name).ok_or_else(|| StoreError::Corrupt(format!("field `{name}` is missing")))
}

fn session_from(fields: &HashMap<String, Vec<u8>>) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        sid: required(fields, "sid")?,
        sub: required(fields, "sub")?,
        appid: required(fields, "appid")?,
        openid: required(fields, "openid")?,
        unionid: text(fields, "unionid"),
        created_at: number(fields, "created_at")?.unwrap_or(0),
        expires_at: number(fields, "expires_at")?.unwrap_or(0),
        revoked_at: number(fields, "revoked_at")?,
    })
}

impl RedisStore {
    /// Connects, checks the server can run scripts, refuses a `maxmemory-policy` that can
    /// evict weauth's keys (unless `allow_eviction`), and logs a warning naming the setting
    /// when the server's persistence could lose an acknowledged write.
    ///
    /// # Errors
    /// [`StoreError::Open`] naming `WEAUTH_STORE` and the reason (unreachable, wrong password,
    /// wrong database index, scripting refused, an evicting `maxmemory-policy` not accepted
    /// with `WEAUTH_REDIS_ALLOW_EVICTION`).
    pub async fn connect(options: RedisOptions) -> Result<RedisStore, StoreError> {
        let target = format!("WEAUTH_STORE={}", options.display);
        let fail = |reason: String| StoreError::Open {
            target: target.clone(),
            source: reason.into(),
        };
        let cluster = matches!(options.target, RedisTarget::Cluster { .. });
        let describe = |err: &RedisError| {
            let reason = describe_connect_error(err);
            if cluster {
                format!("no seed node of the cluster answered as a Redis Cluster node: {reason}")
            } else {
                reason
            }
        };
        let (primary, mut manager, mut health) =
            tokio::time::timeout(Duration::from_secs(5), connect_links(&options.target))
                .await
                .map_err(|_| fail("no answer within 5 s".into()))?
                .map_err(|err| fail(describe(&err)))?;
        let probe: Result<i64, RedisError> = redis::cmd("EVAL")
            .arg("return 1")
            .arg(0)
            .query_async(&mut manager)
            .await;
        if let Err(err) = probe {
            return Err(fail(format!(
                "the server does not run Lua scripts (EVAL), which every atomic change needs: {err}"
            )));
        }
        let policy = check_eviction(&mut health, options.allow_eviction).await;
        if let PolicyCheck::Refused { message, .. } = &policy {
            return Err(fail(message.clone()));
        }
        policy.log(false);
        check_persistence(&mut manager).await;
        let prefix = if cluster {
            // A hash tag: every key the scripts share lands in one slot.
            format!("{{{}}}", options.prefix)
        } else {
            options.prefix.clone()
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                options,
                prefix,
                conn: Mutex::new(Conn {
                    manager,
                    health: health.clone(),
                    resolved_at: Instant::now(),
                    primary,
                    switches: 0,
                }),
                resolving: tokio::sync::Mutex::new(()),
                scripts: Scripts::new(),
                health: Health {
                    online: AtomicI64::new(-1),
                    evicted_total: AtomicU64::new(0),
                    unreplicated_writes: AtomicU64::new(0),
                    short_waits: AtomicU64::new(0),
                    evictions: Mutex::new(EvictionWatch::default()),
                    policy_seen: Mutex::new(Some(policy.seen())),
                    primary_unread: AtomicBool::new(false),
                    rereading: AtomicBool::new(false),
                    reread_at: Mutex::new(None),
                },
                waits: WaitGroup {
                    state: Mutex::new(WaitState::default()),
                    done: tokio::sync::watch::channel(WaitDone::default()).0,
                },
                link_epoch: AtomicU64::new(0),
                connections: Mutex::new(Vec::new()),
            }),
        };
        if store.inner.options.wait_replicas > 0 {
            // Before the first write: the connections each later read is compared with.
            let mut link = store.current()?.0;
            match link.connection_ids().await {
                Ok(ids) => store.note_connection_ids(Some(ids), false),
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) => {
                    return Err(fail(format!(
                        "CLIENT ID is refused, which WEAUTH_REDIS_WAIT_REPLICAS needs to tell which connection a WAIT covers (an ACL must allow +client|id): {err}"
                    )));
                }
                // A node not answering yet: the first WAIT reads them (and confirms none of
                // the writes sharing it).
                Err(err) => {
                    tracing::warn!(error = %err, "could not read the Redis connections' ids at start");
                }
            }
        }
        // Every revocation's script reads the primary's replication id (`INFO replication`,
        // the seq's jump after a failover): refused by an ACL, every revocation failed.
        let mut link = store.current()?.0;
        let info: redis::RedisResult<redis::Value> = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut link)
            .await;
        if let Err(err) = info {
            if err.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) {
                return Err(fail(format!(
                    "INFO is refused, which every revocation needs to read the primary's replication id (an ACL must allow +info): {err}"
                )));
            }
        }
        store.note_replication(read_replication(&mut health).await);
        if let Some(evicted) = read_evicted(&mut health).await {
            store.note_evicted(&evicted);
        }
        Ok(store)
    }

    /// The prefix of the keys the scripts share (`WEAUTH_REDIS_PREFIX`; on a cluster inside
    /// a hash tag, `{P}`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The pub/sub channel revocations are announced on (payload: the new seq).
    pub fn channel(&self) -> String {
        format!("{}revocations", self.inner.options.prefix)
    }

    /// A client for the current primary (for pub/sub subscriptions).
    ///
    /// # Errors
    /// Sentinel or connection failures.
    pub async fn pubsub_client(&self) -> Result<redis::Client, StoreError> {
        primary_client(&self.inner.options.target)
            .await
            .map_err(redis_err)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.prefix)
    }

    fn cluster(&self) -> bool {
        matches!(self.inner.options.target, RedisTarget::Cluster { .. })
    }

    /// The key `name` of session family `family` (a session, its refresh tokens, their set):
    /// on a cluster in the family's own hash slot, `P{s:<family>}name`, so sessions and
    /// refreshes spread over the shards; on one server `P name` (the layout before families).
    fn family_key(&self, family: &str, name: &str) -> String {
        if self.cluster() {
            format!("{}{{s:{family}}}{name}", self.inner.options.prefix)
        } else {
            self.key(name)
        }
    }

    fn session_key(&self, sid: &str) -> String {
        self.family_key(tokens::family_of_sid(sid), &keys::session(sid))
    }

    fn refresh_key(&self, family: &str, hash: &str) -> String {
        self.family_key(family, &keys::refresh(hash))
    }

    /// The set of a session's refresh-token hashes that releases before its `given` count
    /// kept (DROP_SESSION counts and removes it).
    fn family_set_key(&self, sid: &str) -> String {
        self.family_key(tokens::family_of_sid(sid), &keys::family(sid))
    }

    /// A key no script shares with another (a rate-limit bucket, an app's WeChat token): on a
    /// cluster its own hash tag, `P{name}`, so these spread over the shards.
    fn key_apart(&self, name: &str) -> String {
        if self.cluster() {
            format!("{}{{{name}}}", self.inner.options.prefix)
        } else {
            self.key(name)
        }
    }

    fn manager(&self) -> Result<Link, StoreError> {
        self.current().map(|(manager, _)| manager)
    }

    /// The main connection and the switch it belongs to ([`Conn::switches`]).
    fn current(&self) -> Result<(Link, u64), StoreError> {
        self.link(false)
    }

    /// The main connection, or with `reads` the one that carries no `WAIT` ([`Conn::health`]),
    /// and the switches so far.
    fn link(&self, reads: bool) -> Result<(Link, u64), StoreError> {
        self.inner
            .conn
            .lock()
            .map(|conn| {
                let link = if reads { &conn.health } else { &conn.manager };
                (link.clone(), conn.switches)
            })
            .map_err(|_| StoreError::backend("the Redis connection lock is poisoned"))
    }

    /// Switches so far ([`Conn::switches`]).
    fn switches(&self) -> u64 {
        self.inner
            .conn
            .lock()
            .map(|conn| conn.switches)
            .unwrap_or(u64::MAX)
    }

    /// After a failure that says the primary may have moved (`moved`: a lost connection, a
    /// read-only answer, a primary refusing writes for want of replicas — see
    /// [`may_have_moved`]), behind Sentinel asks the sentinels for the primary again (at most
    /// every 250 ms) and switches to it. A direct connection reconnects by itself.
    async fn after_failure(&self, moved: bool) {
        if !moved {
            return;
        }
        if matches!(self.inner.options.target, RedisTarget::Cluster { .. }) {
            // The client follows the new topology by itself; the slot's primary may be a
            // promoted replica with none of its own: re-read before the next WAIT.
            self.reread_replication().await;
            return;
        }
        if !matches!(self.inner.options.target, RedisTarget::Sentinel { .. }) {
            return;
        }
        let Ok(_guard) = self.inner.resolving.try_lock() else {
            return;
        };
        let recent = self
            .inner
            .conn
            .lock()
            .map(|conn| conn.resolved_at.elapsed() < Duration::from_millis(250))
            .unwrap_or(true);
        if recent {
            return;
        }
        let current = self
            .inner
            .conn
            .lock()
            .map(|conn| conn.primary.clone())
            .unwrap_or_default();
        let resolved = async {
            let client = primary_client(&self.inner.options.target).await?;
            let primary = client.get_connection_info().addr().to_string();
            if primary == current {
                // Sentinel still names this primary (not failed over yet, or the failure was
                // not the primary's): keep the connections, which reconnect by themselves
                // (a lost connection has moved the link epoch already). Replacing them would
                // fail every write in flight for nothing.
                return Ok(None);
            }
            links_to(client)
                .await
                .map(|(manager, health)| Some((primary, manager, health)))
        };
        match tokio::time::timeout(Duration::from_secs(3), resolved).await {
            Ok(Ok(None)) => {
                if let Ok(mut conn) = self.inner.conn.lock() {
                    conn.resolved_at = Instant::now();
                }
            }
            Ok(Ok(Some((primary, manager, mut health)))) => {
                // Before any write reaches the new primary: does it have a replica to WAIT
                // for (a promoted replica usually has none until the old primary returns)?
                self.note_replication(read_replication(&mut health).await);
                if let Ok(mut watch) = self.inner.health.evictions.lock() {
                    watch.rebase();
                }
                let policy = check_eviction(&mut health, self.inner.options.allow_eviction).await;
                self.note_policy(&policy);
                let ids = read_connection_ids(manager.clone()).await;
                if let Ok(mut conn) = self.inner.conn.lock() {
                    conn.manager = manager;
                    conn.health = health;
                    conn.resolved_at = Instant::now();
                    conn.primary = primary;
                    conn.switches += 1;
                }
                self.note_connection_ids(ids, true);
                tracing::info!("reconnected to the Redis primary named by Sentinel");
            }
            Ok(Err(err)) => {
                if let Ok(mut conn) = self.inner.conn.lock() {
                    conn.resolved_at = Instant::now();
                }
                tracing::warn!(error = %err, "cannot reach the Redis primary through Sentinel yet");
            }
            Err(_) => {
                if let Ok(mut conn) = self.inner.conn.lock() {
                    conn.resolved_at = Instant::now();
                }
            }
        }
    }

    /// Runs one operation on the current connection, mapping and reacting to failures.
    async fn op<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Link) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.op_on(false, f).await
    }

    /// [`Self::op`] for a read, on the connection that carries no `WAIT` ([`Conn::health`]).
    /// Redis runs a connection's commands in order and holds the rest behind a `WAIT`: on the
    /// main connection, where writes keep one in flight, every read of a request waited for a
    /// replica's acknowledgement of others' writes — up to `WEAUTH_REDIS_WAIT_TIMEOUT` while a
    /// replica stalled. A write whose reply has come is seen by any later command on any
    /// connection (a server runs one command at a time), so a request still reads its own
    /// writes, and every acknowledged one.
    async fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Link) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.op_on(true, f).await
    }

    async fn op_on<T, F, Fut>(&self, reads: bool, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Link) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let (manager, switch) = self.link(reads)?;
        match f(manager).await {
            Ok(value) => Ok(value),
            Err(err) => {
                let lost = connection_lost(&err);
                let moved = may_have_moved(&err);
                let err = redis_err(err);
                // A connection the store has switched away from (a command sent to the old
                // primary before a Sentinel switch, failing only now): its failure is no news
                // of the current connection, whose writes in flight it must not fail.
                if self.switches() != switch {
                    return Err(err);
                }
                self.after_failure(moved).await;
                // Unless a Sentinel switch noted the new connections already: the connection
                // the client makes now carries the writes from here on, noted now so that the
                // next WAIT confirms them (noted only at that WAIT, it would be found new and
                // confirm none). Read after the switch a failure may bring, and briefly: a
                // server still down answers nothing, and the error waits for the read.
                // (A read's connection carries no write a `WAIT` must confirm.)
                if lost && !reads && self.switches() == switch {
                    let ids = match self.current() {
                        Ok((link, _)) if self.inner.options.wait_replicas > 0 => {
                            read_connection_ids(link).await
                        }
                        _ => None,
                    };
                    self.note_connection_ids(ids, true);
                }
                Err(err)
            }
        }
    }

    /// A write: one script call ([`Self::eval`]), answered once [`Self::replicate`] confirms it.
    async fn write<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        let epoch = self.link_epoch();
        let value = self.eval(call).await?;
        self.replicate(epoch).await?;
        Ok(value)
    }

    /// Runs one Lua script call, its keys and arguments already set: the one place a script
    /// is invoked, its failure mapped and reacted to like any other command's ([`Self::op`]).
    ///
    /// On a cluster a refusal (`OOM`, `BUSY`, `NOREPLICAS`: [`StoreError::Busy`]) is answered
    /// as unconfirmed ([`StoreError::Unavailable`], `write_unconfirmed`): the cluster client
    /// sends a command again by itself on a new connection when the old one closed before the
    /// answer came, so the refusal can be the second run's, the first one applied — a refresh
    /// token rotated, answered "busy", presented again after the reuse grace as a theft.
    /// (A script that only reads: [`Self::eval_read`].)
    async fn eval<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        // `op` itself, not through `eval_read`: one more level of futures nested in every
        // write put the layout of the store's futures past the compiler's query depth (in the
        // linted build of `make test`).
        self.op(|mut conn| async move { call.invoke_async(&mut conn).await })
            .await
            .map_err(|err| match err {
                StoreError::Busy(source) if self.cluster() => StoreError::Unavailable(source),
                other => other,
            })
    }

    /// [`Self::eval`] for a script that writes nothing: a refusal is busy, nothing was written
    /// (said unconfirmed, a refresh's read told its client to give up a valid token).
    async fn eval_read<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.op(|mut conn| async move { call.invoke_async(&mut conn).await })
            .await
    }

    /// Takes one token for `key` from the shared bucket in `space` ([`LOGIN_BUCKETS`],
    /// [`USER_BUCKETS`]; `per_minute`, `burst`), at `now` (Unix seconds, fractional). Returns
    /// the seconds to wait when refused.
    ///
    /// # Errors
    /// Redis failures (the caller falls back to its local limiter).
    pub async fn rate_limit(
        &self,
        space: &str,
        key: impl Display,
        per_minute: u32,
        burst: u32,
        now: f64,
    ) -> Result<Option<u64>, StoreError> {
        let per_second = f64::from(per_minute) / 60.0;
        if per_second <= 0.0 {
            return Ok(None);
        }
        let burst = f64::from(burst.max(1));
        let ttl = ((burst / per_second).ceil() as i64).max(1) + 1;
        let key = self.key_apart(&keys::rate_limit(space, key));
        let mut call = self.inner.scripts.rate_limit.prepare_invoke();
        call.key(key).arg(now).arg(per_second).arg(burst).arg(ttl);
        let retry: u64 = self.eval(&call).await?;
        Ok((retry > 0).then_some(retry))
    }

    /// Applies a Rotate (`used_at` None) or Repeat verdict with the ROTATE script: `None` when
    /// the token or its session changed since it was read (decide again). `call_id` names this
    /// rotation (the script tells its own resent run from another use by it).
    async fn rotate_cas(
        &self,
        rotate: &Rotate,
        sid: &str,
        new_expires: i64,
        used_at: Option<i64>,
        call_id: &str,
    ) -> Result<Option<RotateResult>, StoreError> {
        let keys = [
            self.refresh_key(&rotate.family, &rotate.presented_hash),
            self.refresh_key(&rotate.family, &rotate.new_hash),
            self.session_key(sid),
        ];
        let mut call = self.inner.scripts.rotate.prepare_invoke();
        for key in &keys {
            call.key(key);
        }
        let epoch = self.link_epoch();
        call.arg(rotate.now)
            .arg(new_expires)
            .arg(ttl(new_expires, rotate.now))
            .arg(used_at.map(|at| at.to_string()).unwrap_or_default())
            .arg(call_id);
        let answer: Option<(i64, HashMap<String, Vec<u8>>)> = self.eval(&call).await?;
        let Some((refresh_expires, fields)) = answer else {
            return Ok(None);
        };
        self.replicate(epoch).await?;
        Ok(Some(RotateResult::Rotated {
            session: session_from(&fields)?,
            refresh_expires,
            repeat: used_at.is_some(),
        }))
    }

    /// The token and its session, read together: the token's sid first, then the script
    /// with both keys declared (it answers `retry` if the sid changed in between). A token
    /// whose session is not of the family it was found under is unknown (the issuer never
    /// makes one; on a cluster the two would be in different slots). With the `until` of the
    /// session's `sid` entry when it is still pending ([`Self::revoke_entry`]).
    async fn read_refresh(
        &self,
        family: &str,
        hash: &str,
    ) -> Result<Option<(RefreshRow, Option<i64>)>, StoreError> {
        let key = self.refresh_key(family, hash);
        let mut row = None;
        for _ in 0..CAS_ATTEMPTS {
            let token = key.clone();
            let sid: Option<String> = self
                .read(|mut conn| async move { conn.hget(token, "sid").await })
                .await?;
            let Some(sid) = sid else {
                return Ok(None);
            };
            if self.cluster() && tokens::family_of_sid(&sid) != family {
                return Ok(None);
            }
            let mut call = self.inner.scripts.read_refresh.prepare_invoke();
            call.key(&key).key(self.session_key(&sid)).arg(&sid);
            match self.eval_read::<redis::Value>(&call).await? {
                redis::Value::Nil => return Ok(None),
                redis::Value::Array(values) => {
                    row = Some(
                        values
                            .into_iter()
                            .map(String::from_redis_value)
                            .collect::<Result<Vec<String>, _>>()
                            .map_err(|_| StoreError::Corrupt("refresh token read".into()))?,
                    );
                    break;
                }
                _ => continue,
            }
        }
        let Some(row) = row else {
            return Err(StoreError::Busy(
                "the refresh token changed under every read attempt".into(),
            ));
        };
        let num = |text: &str| -> Result<i64, StoreError> {
            text.parse()
                .map_err(|_| StoreError::Corrupt("refresh token field is not a number".into()))
        };
        let opt = |text: &str| -> Result<Option<i64>, StoreError> {
            if text.is_empty() {
                Ok(None)
            } else {
                num(text).map(Some)
            }
        };
        match row.as_slice() {
            [sid, expires, used, session_expires, revoked, pending] => Ok(Some((
                RefreshRow {
                    sid: sid.clone(),
                    expires_at: num(expires)?,
                    used_at: opt(used)?,
                    session_expires_at: num(session_expires)?,
                    session_revoked_at: opt(revoked)?,
                },
                opt(pending)?,
            ))),
            _ => Err(StoreError::Corrupt("refresh token read".into())),
        }
    }
}

#[cfg(test)]
mod tests;
