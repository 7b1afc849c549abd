//! Persistent state behind the async [`Store`] trait: users, login sessions, refresh tokens,
//! revocation entries, signing keys and the shared WeChat app token.
//!
//! Storage is a boundary, not a home for rules: the domain decides ([`crate::domain::rules`]: the
//! refresh verdict, user linking, what a `sub` revocation covers, whether a token is revoked,
//! the purge watermark; [`crate::feed::revocation`]: feed paging and `full`), and a store offers
//! atomic primitives and keeps what was decided. Every operation that changes more than one
//! record is atomic in the implementation, so a failure leaves nothing half-written.
//!
//! The trait is async and object-safe through `async_trait` (boxed futures): the application
//! holds an `Arc<dyn Store>` chosen at start from `WEAUTH_STORE`, and native async functions in
//! traits are not object-safe, while hand-written `Pin<Box<dyn Future>>` signatures would say
//! the same thing at three times the length. One allocation per call is nothing next to a
//! store round trip. A blocking backend ([`sqlite::SqliteStore`]) runs its work on tokio's
//! blocking pool inside its own methods; callers just `.await`.
//!
//! [`contract`] is the one test suite every backend's tests call.

#[cfg(test)]
pub mod contract;
pub mod mysql;
pub mod redis;
pub mod redis_checks;
pub mod shared;
pub mod sqlite;
pub mod traced;

use async_trait::async_trait;
use weauth_token::revocation::Entry;

pub use crate::domain::grants::{Ban, Grants};
pub use crate::domain::keys::KeyRecord;
pub use crate::domain::rules::{RefreshRow, SubSessions};

/// A page of [`Store::phones_page`]: `(sub, sealed phone)` pairs and the next page's cursor.
pub type PhonesPage = (Vec<(String, String)>, Option<String>);

/// The underlying error of a store failure, kept as the source.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store failure. Each variant keeps the backend's error as its `source()`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is locked by another writer for longer than the busy timeout (retry later).
    #[error("store busy: {0}")]
    Busy(#[source] Source),
    /// The store cannot be reached right now (connection lost, failover in progress).
    #[error("store unreachable: {0}")]
    Unavailable(#[source] Source),
    /// Any other backend failure.
    #[error("store error: {0}")]
    Backend(#[source] Source),
    /// Stored data the issuer cannot read back.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// The store could not be opened at start.
    #[error("cannot open the store at {target}: {source}")]
    Open {
        target: String,
        #[source]
        source: Source,
    },
}

impl StoreError {
    /// A backend failure from a message (no underlying error value).
    pub fn backend(message: impl Into<String>) -> StoreError {
        StoreError::Backend(message.into().into())
    }

    /// Whether retrying later may succeed (answered 503 with `Retry-After`).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Busy(_) | StoreError::Unavailable(_))
    }
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
    /// `session_key` sealed with the data key under `session_key:<sid>`; `None` for a login
    /// that yields no `session_key` (web OAuth2).
    pub session_key_sealed: Option<Vec<u8>>,
    pub now: i64,
    /// Absolute end of the session (now + session max).
    pub session_expires: i64,
    pub refresh_hash: String,
    pub refresh_expires: i64,
}

/// The outcome of [`Store::login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginResult {
    /// Written. `sub` is the user's (possibly pre-existing) id; `unionid` the one the session
    /// carries ([`crate::domain::rules::LinkDecision::unionid`]).
    Created {
        sub: String,
        new_user: bool,
        unionid: Option<String>,
    },
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
    /// WeChat's risk rank at the user's last judged login ([`Store::set_risk`]).
    pub risk: Option<RiskFact>,
}

/// What WeChat's risk control said of a user at a login (`getuserriskrank`): the app, the
/// rank (0–4) and when. Shown to admins; never logged with the openid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RiskFact {
    pub appid: String,
    pub rank: u8,
    pub at: i64,
}

/// A rotation request.
#[derive(Debug, Clone)]
pub struct Rotate {
    /// The family the presented token names ([`crate::domain::tokens::family_of_refresh`]):
    /// where a sharded store keeps the token's session; the other stores ignore it.
    pub family: String,
    pub presented_hash: String,
    /// The presented token's successor: one token whichever use asks
    /// ([`crate::domain::tokens::successor_refresh_token`]).
    pub new_hash: String,
    pub now: i64,
    /// Sliding lifetime of the new refresh token, seconds (capped by the session's end).
    pub refresh_ttl: i64,
    /// Seconds after a rotation during which a second use gets the successor again instead of
    /// revoking the session ([`crate::domain::rules::decide_refresh`]).
    pub reuse_grace: i64,
    /// `until` of the sid revocation written when reuse is detected.
    pub revocation_until: i64,
}

/// The outcome of [`Store::rotate_refresh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateResult {
    /// The presented token is consumed; its successor (`new_hash`) expires at
    /// `refresh_expires`. `repeat`: the presented token had been rotated within the reuse
    /// grace, and its successor is handed out again.
    Rotated {
        session: SessionRecord,
        refresh_expires: i64,
        repeat: bool,
    },
    /// The token had already been used: the session is now revoked (entry written).
    Reused { sid: String, entry: Entry },
    /// Unknown, expired, or its session is revoked or over. Nothing written.
    Invalid(&'static str),
}

/// An access-token lifetime some replica reported ([`Store::report_access_ttl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedTtl {
    /// Seconds.
    pub access_ttl: i64,
    /// When a replica last reported issuing tokens of this lifetime (unix seconds).
    pub reported_at: i64,
}

impl ReportedTtl {
    /// How the SQL stores name a lifetime's row in their key-value table
    /// (`access_ttl:<seconds>`, valued when last reported).
    pub(crate) const ROW_PREFIX: &'static str = "access_ttl:";

    pub(crate) fn row_name(access_ttl: i64) -> String {
        format!("{}{access_ttl}", Self::ROW_PREFIX)
    }

    /// The lifetime a row names; `None` for a row of another kind.
    pub(crate) fn from_row(name: &str, reported_at: i64) -> Option<ReportedTtl> {
        let access_ttl = name.strip_prefix(Self::ROW_PREFIX)?.parse().ok()?;
        Some(ReportedTtl {
            access_ttl,
            reported_at,
        })
    }
}

/// A revocation to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    Jti(String),
    Sid(String),
    /// Every token of `sub` with `iat < issued_before`; the user's live sessions end too, those
    /// created before `issued_before` or all of them ([`SubSessions`]).
    Sub {
        sub: String,
        issued_before: i64,
        sessions: SubSessions,
    },
}

/// The outcome of [`Store::set_ban_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanWrite {
    /// The ban was as expected, and is now the one given.
    Written,
    /// The user's ban was not the one expected (set, replaced or lifted since it was read):
    /// nothing written.
    Changed,
    /// No such user: nothing written.
    UnknownUser,
}

/// The WeChat app access token shared by every replica (see [`crate::wechat::access_token`]).
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
    /// Removed, or unusable with their session gone (Redis leaves their keys to their TTLs).
    pub refresh_tokens: usize,
}

/// A snapshot of the feed's state for [`crate::feed::revocation::read`]: taken in one atomic read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedSnapshot {
    /// The highest seq ever assigned (never decreases, survives purges and restarts).
    pub current: u64,
    /// Every entry with `seq <= purged_through` may have been purged.
    pub purged_through: u64,
    /// Live entries (`until >= now`) with `seq > after`, in seq order, at most `limit`.
    pub entries: Vec<Entry>,
}

/// The persistence the issuer needs. Implementations must be safe to share between tasks and
/// between processes using the same backing store (several replicas). Semantics are fixed by
/// the contract suite ([`contract`]), not by any one backend.
#[async_trait]
pub trait Store: Send + Sync {
    /// Cheap reachability check (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// All stored signing keys, ordered by `activate_at`, then kid.
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Inserts a key (a kid already present is left alone: returns false). With
    /// `only_if_none_active_at = Some(now)`, inserts only when no key is active at `now` (first
    /// start of several replicas at once); returns whether it inserted.
    async fn insert_key(
        &self,
        key: &KeyRecord,
        only_if_none_active_at: Option<i64>,
    ) -> Result<bool, StoreError>;
    /// Erases the key material of retired keys by kid (`sealed` emptied): the record — kid,
    /// algorithm, times — stays, so a retired key is never brought back (a
    /// `WEAUTH_SIGNING_KEY_FILE` still naming it is not imported again) and keeps its place
    /// in the schedule.
    async fn erase_keys(&self, kids: &[String]) -> Result<(), StoreError>;

    /// Whether a session was already made from this code.
    async fn code_used(&self, code_hash: &str) -> Result<bool, StoreError>;
    /// In one atomic unit: refuses a used code; finds the [`crate::domain::rules::LinkCandidates`],
    /// links with [`crate::domain::rules::link_user`] and writes what it decided (user, identity,
    /// unionid), the session and its first refresh token.
    async fn login(&self, login: &NewLogin) -> Result<LoginResult, StoreError>;
    /// Removes session `sid` and its refresh tokens (its code's single-use mark with it): a
    /// login refused after its commit — the user banned, or a "log out everywhere" that came
    /// meanwhile — whose tokens never left the issuer, so that a failed login leaves no
    /// session. The user and identity it linked stay: they describe the person, not the login.
    async fn discard_session(&self, sid: &str) -> Result<(), StoreError>;

    /// Single-use rotation with reuse detection: reads the [`RefreshRow`], judges it with
    /// [`crate::domain::rules::decide_refresh`] and applies the verdict atomically (a rotation consumes
    /// the token only if still unused; a reuse ends the session and writes a `sid` entry).
    async fn rotate_refresh(&self, rotate: &Rotate) -> Result<RotateResult, StoreError>;

    /// A session by id.
    async fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// The sealed `session_key` of a session (open with `userdata::session_key`); `None` when
    /// the session is unknown or has none.
    async fn session_key_sealed(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// A user by id.
    async fn user(&self, sub: &str) -> Result<Option<UserRecord>, StoreError>;

    /// Stores the user's phone number (sealed, base64 text; `None` clears it). Returns false
    /// when the user does not exist.
    async fn set_phone(
        &self,
        sub: &str,
        sealed_phone: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// The users' sealed phone numbers (`(sub, sealed)`), a page of about `limit` from `cursor`
    /// (`""` to begin), with the cursor of the next page (`None`: done). A page may be short,
    /// even empty, before the end, and a user may come twice (Redis `SCAN`).
    async fn phones_page(&self, cursor: &str, limit: usize) -> Result<PhonesPage, StoreError>;

    /// Replaces the user's sealed phone number with `sealed` only if it is still `expected`
    /// (a data-key reseal: a number bound meanwhile is kept). Returns whether it was replaced.
    async fn reseal_phone(
        &self,
        sub: &str,
        expected: &str,
        sealed: &str,
    ) -> Result<bool, StoreError>;

    /// Records the risk rank WeChat gave the user at a login to `fact.appid`, replacing the
    /// previous one. Returns false when the user does not exist.
    async fn set_risk(&self, sub: &str, fact: &RiskFact) -> Result<bool, StoreError>;

    /// The cached WeChat app access token of `appid`.
    async fn wechat_token(&self, appid: &str) -> Result<Option<CachedToken>, StoreError>;
    /// Takes the refresh lease of `appid` for `holder` until `lease_until`, unless another
    /// holder's lease is still live at `now`. Returns whether `holder` now holds it.
    async fn lease_wechat_token(
        &self,
        appid: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError>;
    /// Stores a freshly fetched token and releases `holder`'s lease, atomically — only while
    /// `holder` still holds the lease (lapsed or not): a holder whose lease lapsed and was
    /// taken by another must not write over what the new holder fetched (an older token, which
    /// a forced refresh may have ended). Returns whether it was written.
    async fn put_wechat_token(
        &self,
        appid: &str,
        token: &CachedToken,
        holder: &str,
    ) -> Result<bool, StoreError>;
    /// Releases `holder`'s lease (after a failed fetch).
    async fn release_wechat_lease(&self, appid: &str, holder: &str) -> Result<(), StoreError>;
    /// Forgets the cached token if it is still the one whose hash is `token_hash` (a newer one
    /// written by another replica is kept). Returns whether it was removed.
    async fn invalidate_wechat_token(
        &self,
        appid: &str,
        token_hash: &str,
    ) -> Result<bool, StoreError>;

    /// Records a revocation with the next seq and, atomically, ends the sessions it covers (a
    /// `sid`: that session; a `sub`: the live sessions
    /// [`crate::domain::rules::sub_revocation_covers`], by the revocation's [`SubSessions`]).
    /// A `sub` revocation also writes a `sid` entry for each live session it ends (its `until`:
    /// [`crate::domain::rules::session_until_of_sub`]), before its own entry, which is the one
    /// returned: the edge refuses a `sub` entry's
    /// tokens by `iat < issued_before`, and a session created before `issued_before` may hold
    /// newer ones (refreshed since, when `issued_before` is in the past; minted on a replica
    /// whose clock runs ahead).
    async fn revoke(&self, revoke: &Revoke, now: i64, until: i64) -> Result<Entry, StoreError>;
    /// The facts [`crate::domain::rules::is_revoked`] judges, for a token with these claims.
    async fn revocation_facts(
        &self,
        jti: &str,
        sid: &str,
        sub: &str,
    ) -> Result<crate::domain::rules::RevocationFacts, StoreError>;
    /// Current seq, purge watermark and up to `limit` live entries after `after`, from one
    /// consistent read.
    async fn feed_snapshot(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> Result<FeedSnapshot, StoreError>;
    /// The highest revocation seq ever assigned (at least 1 on a fresh store, see
    /// `docs/INTERFACES.md`).
    async fn current_seq(&self) -> Result<u64, StoreError>;
    /// Records that a replica issues access tokens of `access_ttl` seconds as of `now` (per
    /// lifetime, the latest report is kept: an earlier `now` never replaces a later one),
    /// forgets the lifetimes last reported before `forget_before`, and returns every lifetime
    /// still recorded, in any order. Which of them may still have tokens out is the domain's
    /// decision ([`crate::feed::revocation::longest_lifetime`]).
    async fn report_access_ttl(
        &self,
        access_ttl: i64,
        now: i64,
        forget_before: i64,
    ) -> Result<Vec<ReportedTtl>, StoreError>;
    /// The lifetimes [`Store::report_access_ttl`] returns, read without reporting one (a
    /// revocation reads them fresh; only the replicas' periodic reports write).
    async fn access_ttls(&self) -> Result<Vec<ReportedTtl>, StoreError>;
    /// Stores `value` under `key` until `expires_at` (unix seconds), replacing any value
    /// already there. Short-lived server-side state such as a pending web login
    /// ([`crate::domain::web::PendingLogin`], key [`crate::domain::web::state_key`]).
    async fn put_ephemeral(
        &self,
        key: &str,
        value: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError>;
    /// Takes `key` once, atomically: returns its value and deletes it, so of two concurrent
    /// takes exactly one gets it. `None` when absent, already taken, or expired at `now`
    /// (an expired value is deleted too).
    async fn take_ephemeral(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Deletes expired revocations (advancing the watermark with
    /// [`crate::domain::rules::next_watermark`]), ended sessions and expired refresh tokens.
    async fn purge(&self, now: i64) -> Result<Purged, StoreError>;

    // Grants ([`crate::domain::grants`]): what an operator decided about a user. Kept with the user,
    // as durably as a revocation; the decisions (is a ban active, which scopes are valid) are
    // the domain's, the store keeps the values as given.

    /// The user's scopes and ban; `None` when the user does not exist.
    async fn grants(&self, sub: &str) -> Result<Option<Grants>, StoreError>;
    /// Replaces the user's scopes with `scopes` (already normalised; empty clears). Returns
    /// false when the user does not exist.
    async fn set_scopes(&self, sub: &str, scopes: &[String], now: i64) -> Result<bool, StoreError>;
    /// Sets (`Some`, replacing any previous one) or lifts (`None`) the user's ban. Returns
    /// false when the user does not exist.
    async fn set_ban(&self, sub: &str, ban: Option<&Ban>, now: i64) -> Result<bool, StoreError>;
    /// [`Store::set_ban`], atomically only while the user's ban is still `expected` (`None`:
    /// no ban), every field equal: an unban lifts the ban it read and judged, never one set
    /// meanwhile by another call or replica.
    async fn set_ban_if(
        &self,
        sub: &str,
        expected: Option<&Ban>,
        ban: Option<&Ban>,
        now: i64,
    ) -> Result<BanWrite, StoreError>;
    /// The `sub` whose session a refresh token (used or not, expired or not) belongs to;
    /// `None` for an unknown token. Read-only: lets a refresh be refused for a banned user
    /// before anything is consumed. `family` as in [`Rotate::family`].
    async fn refresh_owner(
        &self,
        family: &str,
        refresh_hash: &str,
    ) -> Result<Option<String>, StoreError>;
}
