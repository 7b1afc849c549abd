//! Persistent state behind the [`Store`] trait: users, login sessions, refresh tokens,
//! revocation entries and signing keys.
//!
//! The trait is synchronous and object-safe; the application calls it off the async threads
//! (`tokio::task::spawn_blocking`, see `App::db`). Every operation that changes more than one
//! row is one transaction in the implementation, so a failure leaves nothing half-written.
//! [`sqlite::SqliteStore`] is the embedded implementation; a Redis one for several replicas
//! would implement the same trait.

pub mod sqlite;

use weauth_token::revocation::{Entry, FeedResponse};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is locked by another writer for longer than the busy timeout.
    #[error("database busy: {0}")]
    Busy(String),
    #[error("database error: {0}")]
    Db(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
}

/// A stored signing key (material sealed with the data key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub kid: String,
    pub alg: String,
    pub sealed: Vec<u8>,
    pub created_at: i64,
    pub activate_at: i64,
}

/// Everything a successful login writes, prepared by the caller.
#[derive(Debug, Clone)]
pub struct NewLogin {
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    /// SHA-256 of the login code: a code makes at most one session.
    pub code_hash: String,
    /// Used when the user is new.
    pub new_sub: String,
    pub sid: String,
    /// `session_key` sealed with the data key under `session_key:<sid>`.
    pub session_key_sealed: Vec<u8>,
    pub now: i64,
    /// Absolute end of the session (now + session max).
    pub session_expires: i64,
    pub refresh_hash: String,
    pub refresh_expires: i64,
}

/// The outcome of [`Store::login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginResult {
    /// Written. `sub` is the user's (possibly pre-existing) id.
    Created { sub: String, new_user: bool },
    /// A session for this code already exists: nothing written.
    CodeAlreadyUsed,
}

/// A login session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub sid: String,
    pub sub: String,
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub sub: String,
    pub unionid: Option<String>,
    pub phone: Option<String>,
    pub created_at: i64,
}

/// What the store knows about a presented refresh token, read inside the rotation
/// transaction and judged by [`crate::sessions::decide_refresh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRow {
    pub sid: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub session_expires_at: i64,
    pub session_revoked_at: Option<i64>,
}

/// A rotation request.
#[derive(Debug, Clone)]
pub struct Rotate {
    pub presented_hash: String,
    pub new_hash: String,
    pub now: i64,
    /// Sliding lifetime of the new refresh token, seconds (capped by the session's end).
    pub refresh_ttl: i64,
    /// Seconds after a rotation during which a second use is refused without revoking.
    pub reuse_grace: i64,
    /// `until` of the sid revocation written when reuse is detected.
    pub revocation_until: i64,
}

/// The outcome of [`Store::rotate_refresh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateResult {
    /// The presented token is consumed; the new one expires at `refresh_expires`.
    Rotated {
        session: SessionRecord,
        refresh_expires: i64,
    },
    /// The token had already been used: the session is now revoked (entry written).
    Reused { sid: String, entry: Entry },
    /// Unknown, expired, or its session is revoked or over. Nothing written.
    Invalid(&'static str),
}

/// A revocation to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    Jti(String),
    Sid(String),
    /// Every token of `sub` with `iat < issued_before`; sessions created before then end too.
    Sub {
        sub: String,
        issued_before: i64,
    },
}

/// The WeChat app access token shared by every replica (see [`crate::access_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedToken {
    /// The token sealed with the data key (AAD `wechat_token:<appid>`).
    pub sealed: Vec<u8>,
    /// SHA-256 hex of the token, so a replica can invalidate exactly the token WeChat refused.
    pub hash: String,
    /// Unix seconds when WeChat stops accepting it.
    pub expires_at: i64,
    /// Unix seconds from which one replica (the lease holder) fetches the next token.
    pub refresh_at: i64,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub revocations: usize,
    pub sessions: usize,
    pub refresh_tokens: usize,
}

/// The persistence the issuer needs. Implementations must be safe to share between threads
/// and between processes using the same backing store (several replicas).
pub trait Store: Send + Sync {
    /// Cheap reachability check (readiness).
    fn ping(&self) -> Result<(), StoreError>;

    /// All stored signing keys.
    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Inserts a key. With `only_if_none_active_at = Some(now)`, inserts only when no key is
    /// active at `now` (first start of several replicas at once); returns whether it inserted.
    fn insert_key(
        &self,
        key: &KeyRecord,
        only_if_none_active_at: Option<i64>,
    ) -> Result<bool, StoreError>;
    /// Deletes keys by kid.
    fn delete_keys(&self, kids: &[String]) -> Result<(), StoreError>;

    /// Whether a session was already made from this code.
    fn code_used(&self, code_hash: &str) -> Result<bool, StoreError>;
    /// User upsert (linked by unionid when present, else by appid+openid), session and first
    /// refresh token, in one transaction.
    fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError>;

    /// Single-use rotation with reuse detection, in one transaction.
    fn rotate_refresh(&self, rotate: &Rotate) -> Result<RotateResult, StoreError>;

    /// A session by id.
    fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// The sealed `session_key` of a session (open with `sessions::session_key`).
    fn session_key_sealed(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// A user by id.
    fn user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Stores the user's phone number (sealed, base64 text; `None` clears it). Returns false
    /// when the user does not exist.
    fn set_phone(
        &self,
        sub: &str,
        sealed_phone: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// The cached WeChat app access token of `appid`.
    fn wechat_token(&self, appid: &str) -> Result<Option<CachedToken>, StoreError>;
    /// Takes the refresh lease of `appid` for `holder` until `lease_until`, unless another
    /// holder's lease is still live at `now`. Returns whether `holder` now holds it.
    fn lease_wechat_token(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError>;
    /// Stores a freshly fetched token and releases `holder`'s lease, in one transaction.
    fn put_wechat_token(
        &self,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<(), StoreError>;
    /// Releases `holder`'s lease (after a failed fetch).
    fn release_wechat_lease(&self, appid: &str, holder: &str) -> Result<(), StoreError>;
    /// Forgets the cached token if it is still the one whose hash is `token_hash` (a newer one
    /// written by another replica is kept). Returns whether it was removed.
    fn invalidate_wechat_token(&self, appid: &str, token_hash: &str) -> Result<bool, StoreError>;

    /// Records a revocation (and ends the sessions it covers), returning the entry.
    fn revoke(&self, revoke: &Revoke, now: i64, until: i64) -> Result<Entry, StoreError>;
    /// Whether a token with these claims is revoked.
    fn is_revoked(&self, jti: &str, sid: &str, sub: &str, iat: i64) -> Result<bool, StoreError>;
    /// The feed answer for `since` at `now` (see `docs/INTERFACES.md`), with at most `limit`
    /// entries: when there are more, `seq` is the last entry's, so `since=seq` continues.
    fn feed(&self, since: u64, now: i64, limit: usize) -> Result<FeedResponse, StoreError>;
    /// The highest revocation seq ever assigned (0 when none).
    fn current_seq(&self) -> Result<u64, StoreError>;
    /// Deletes expired revocations (advancing the watermark), ended sessions and expired
    /// refresh tokens.
    fn purge(&self, now: i64) -> Result<Purged, StoreError>;
}
