//! Every key of the Redis store, named in one place (the table in the module docs of
//! `store::redis`); [`super::RedisStore::key`] puts `WEAUTH_REDIS_PREFIX` in front. The Lua
//! scripts build the keys they discover inside a script (a user's sessions, a revocation's
//! index entries) from the same names.

use std::fmt::Display;

/// The revocation sequence (`INCR`).
pub const SEQ: &str = "seq";
/// The replication id of the primary the last revocation was written on.
pub const SEQ_EPOCH: &str = "seq_epoch";
/// Entries with `seq <= purged_through` may be gone.
pub const PURGED_THROUGH: &str = "purged_through";
/// The access-token lifetimes replicas reported (hash: seconds → when last reported).
pub const ACCESS_TTLS: &str = "access_ttls";
/// The signing keys (hash: kid → JSON).
pub const KEYS: &str = "keys";
/// Revocation entries by seq (hash), and their indexes by seq and by `until` (sorted sets).
pub const REV_ENTRIES: &str = "rev:entries";
pub const REV_BY_SEQ: &str = "rev:by_seq";
pub const REV_BY_UNTIL: &str = "rev:by_until";
/// Expiry indexes (sorted sets) the purge walks.
pub const SESSIONS_EXP: &str = "sessions_exp";
pub const REFRESH_EXP: &str = "refresh_exp";
pub const EPH_EXP: &str = "eph_exp";

/// A used login code (by hash).
pub fn code(code_hash: impl Display) -> String {
    format!("code:{code_hash}")
}

/// The user an (appid, openid) identity belongs to.
pub fn identity(appid: impl Display, openid: impl Display) -> String {
    format!("identity:{appid}:{openid}")
}

/// The user carrying a unionid.
pub fn unionid(unionid: impl Display) -> String {
    format!("unionid:{unionid}")
}

pub fn user(sub: impl Display) -> String {
    format!("user:{sub}")
}

pub fn session(sid: impl Display) -> String {
    format!("session:{sid}")
}

/// The refresh-token hashes of a session (set), as releases before its `given` count kept them;
/// the purge counts and removes it with the session.
pub fn family(sid: impl Display) -> String {
    format!("family:{sid}")
}

/// The sessions of a user (set).
pub fn sub_sessions(sub: impl Display) -> String {
    format!("sub_sessions:{sub}")
}

/// A refresh token (by hash).
pub fn refresh(hash: impl Display) -> String {
    format!("refresh:{hash}")
}

/// The revocations of one `kind` (`jti`, `sid`, `sub`) and value (index for the bearer check).
pub fn revoked(kind: impl Display, value: impl Display) -> String {
    format!("rev:{kind}:{value}")
}

/// An app's cached WeChat access token and its lease.
pub fn wechat_token(appid: impl Display) -> String {
    format!("wx:{appid}")
}

/// The key space of the login rate limit's buckets (one per client address).
pub const LOGIN_BUCKETS: &str = "rl";

/// The key space of the per-user WeChat-call rate limit's buckets (one per `sub`).
pub const USER_BUCKETS: &str = "ru";

/// A rate-limit bucket: `space` ([`LOGIN_BUCKETS`], [`USER_BUCKETS`]) and the key in it.
pub fn rate_limit(space: &str, key: impl Display) -> String {
    format!("{space}:{key}")
}

/// An ephemeral value (web-login state).
pub fn ephemeral(name: impl Display) -> String {
    format!("eph:{name}")
}

/// The entry a REVOKE call appended, by the call's id (kept 60 s, for the call sent again).
pub fn revoke_call(call_id: impl Display) -> String {
    format!("rev_call:{call_id}")
}

/// An ephemeral value once taken, marked with its taker (kept 60 s for the take sent again).
pub fn ephemeral_taken(name: impl Display) -> String {
    format!("eph_taken:{name}")
}
