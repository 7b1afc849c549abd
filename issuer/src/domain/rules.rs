//! The domain's decisions about stored state, as pure functions (no I/O, time as an argument):
//! what a presented refresh token is worth ([`decide_refresh`]), which user a login belongs to
//! ([`link_user`]), which sessions a `sub` revocation ends ([`sub_revocation_covers`],
//! [`SubSessions`]), whether a token is revoked ([`is_revoked`]) and where the purge watermark
//! goes ([`next_watermark`]).
//!
//! A store never decides: it finds the facts these functions take, inside its own atomic unit
//! (an SQLite transaction; a Redis read followed by a compare-and-set script), calls the
//! function, and keeps what it decided. Where a Redis script has to repeat a condition (for
//! example "still unused"), the store contract suite (`store::contract`) proves both backends
//! agree. This module depends on nothing else in the crate, so the store can call it without
//! an import cycle.

/// What the store knows about a presented refresh token and its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRow {
    pub sid: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub session_expires_at: i64,
    pub session_revoked_at: Option<i64>,
}

/// What to do with a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Consume it and issue a new one expiring at `new_expires`.
    Rotate { sid: String, new_expires: i64 },
    /// It was rotated at `used_at`, within the reuse grace: hand out its successor again
    /// (written at `new_expires` if the store does not hold it), leaving the token as used as
    /// it was. The store applies it only while `used_at` is still what it read.
    Repeat {
        sid: String,
        new_expires: i64,
        used_at: i64,
    },
    /// It was already used: revoke the session.
    Reuse { sid: String },
    /// Refuse without side effects.
    Invalid(&'static str),
}

/// Judges a presented refresh token at `now`. The new token's lifetime slides
/// (`now + refresh_ttl`) but never passes the session's absolute end.
///
/// A token rotated at most `reuse_grace` seconds ago gets its successor again: a retry after
/// a lost answer, or a second tab, must not end the session (the grace periods of Okta and Ory
/// Hydra). Every later use is reuse and revokes the session (RFC 9700 §4.14.2);
/// `reuse_grace = 0` treats every second use as theft. The grace runs from the token's one
/// rotation, so repeats never extend it. The successor is one token whoever asks
/// ([`crate::domain::tokens::successor_refresh_token`]), so a session stays one chain.
pub fn decide_refresh(
    row: Option<&RefreshRow>,
    now: i64,
    refresh_ttl: i64,
    reuse_grace: i64,
) -> RefreshDecision {
    let Some(row) = row else {
        return RefreshDecision::Invalid("unknown refresh token");
    };
    if row.session_revoked_at.is_some() {
        return RefreshDecision::Invalid("the session has been revoked");
    }
    if let Some(used_at) = row.used_at {
        if reuse_grace > 0 && now.saturating_sub(used_at) <= reuse_grace {
            if row.session_expires_at <= now {
                return RefreshDecision::Invalid("the session has reached its maximum lifetime");
            }
            return RefreshDecision::Repeat {
                sid: row.sid.clone(),
                new_expires: now.saturating_add(refresh_ttl).min(row.session_expires_at),
                used_at,
            };
        }
        return RefreshDecision::Reuse {
            sid: row.sid.clone(),
        };
    }
    if row.expires_at <= now {
        return RefreshDecision::Invalid("the refresh token has expired");
    }
    if row.session_expires_at <= now {
        return RefreshDecision::Invalid("the session has reached its maximum lifetime");
    }
    RefreshDecision::Rotate {
        sid: row.sid.clone(),
        new_expires: now.saturating_add(refresh_ttl).min(row.session_expires_at),
    }
}

/// A user the store found for a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundUser {
    pub sub: String,
    /// The unionid the user already carries, if any.
    pub unionid: Option<String>,
}

/// The candidates the store found for a login, read in the same atomic unit that writes the
/// outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkCandidates {
    /// The user this (appid, openid) identity already belongs to.
    pub by_identity: Option<FoundUser>,
    /// The user that already carries the login's unionid (only looked up when WeChat sent one).
    pub by_unionid: Option<String>,
}

/// Who a login belongs to, and what to write for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDecision {
    pub sub: String,
    /// `sub` is new: create the user (carrying the login's unionid, if any).
    pub create_user: bool,
    /// Record the (appid, openid) identity as `sub`'s.
    pub create_identity: bool,
    /// Attach the login's unionid to the existing user `sub` (first time WeChat reveals it).
    pub attach_unionid: bool,
    /// The unionid `sub` carries once this login is written: the session's and its tokens'.
    /// Not the login's when another user carries that one (the conflict of WEB-LOGIN.md, "One
    /// person across apps": the login goes to the identity's user, the unionid stays with the
    /// other — two users asserting one unionid would merge them at any upstream keyed by it),
    /// nor when the user carries another already.
    pub unionid: Option<String>,
}

/// Links a login to a user:
/// - a known (appid, openid) identity keeps its user; when WeChat now sends a unionid that the
///   user does not carry yet and no other user carries it, it is attached;
/// - an unknown identity with a unionid some user carries joins that user (same person,
///   another app of the same Open Platform account);
/// - otherwise a new user `new_sub` is created.
pub fn link_user(
    candidates: &LinkCandidates,
    unionid: Option<&str>,
    new_sub: &str,
) -> LinkDecision {
    match (&candidates.by_identity, &candidates.by_unionid) {
        (Some(user), by_union) => {
            let attach_unionid = unionid.is_some() && user.unionid.is_none() && by_union.is_none();
            LinkDecision {
                sub: user.sub.clone(),
                create_user: false,
                create_identity: false,
                attach_unionid,
                unionid: match &user.unionid {
                    Some(own) => Some(own.clone()),
                    None if attach_unionid => unionid.map(String::from),
                    None => None,
                },
            }
        }
        (None, Some(sub)) if unionid.is_some() => LinkDecision {
            sub: sub.clone(),
            create_user: false,
            create_identity: true,
            attach_unionid: false,
            unionid: unionid.map(String::from),
        },
        (None, _) => LinkDecision {
            sub: new_sub.to_string(),
            create_user: true,
            create_identity: true,
            attach_unionid: false,
            unionid: unionid.map(String::from),
        },
    }
}

/// Which of a user's live sessions a `sub` revocation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubSessions {
    /// Those created before the entry's `issued_before`: "log out everywhere" (the admin's
    /// `POST /v1/admin/revoke {"sub"}`). A session created at or after it keeps working: its
    /// tokens all have `iat >= created_at`, which the entry does not cover either, and it is
    /// a login the revocation did not mean — one after an explicit `issued_before` in the past
    /// ("everything issued before the leak"), or one racing the request, which is as
    /// legitimate as a login a moment later (nothing stops the user logging in again; the
    /// login in flight that the entry does cover is refused by its own check after its
    /// commit). Ending it too would log out a user who has just logged in, for a skew of the
    /// replicas' clocks.
    CreatedBefore,
    /// Every live session, whatever its `created_at`: a ban. `created_at` is the login
    /// replica's clock and `issued_before` the banning replica's, so a session opened before
    /// the ban on a replica whose clock runs ahead looks created after it, and would keep
    /// working — its tokens too, their `iat` as far ahead — while the user is banned. No
    /// session may outlive a ban: a login while it is in force is refused anyway, so every
    /// live session is one from before it.
    All,
}

/// Whether a `sub` revocation with `issued_before` ending `sessions` ends a session of that
/// user created at `session_created_at`.
pub fn sub_revocation_covers(
    issued_before: i64,
    sessions: SubSessions,
    session_created_at: i64,
) -> bool {
    match sessions {
        SubSessions::All => true,
        SubSessions::CreatedBefore => session_created_at < issued_before,
    }
}

/// Whether a `sub` revocation (`issued_before`, `until`) at `now` still needs a `sid` entry
/// for a session of the user revoked earlier, at `revoked_at`, whose own entry is not in the
/// feed (Redis: an earlier attempt of the revocation cut between its marks and their entries;
/// or a logout long ago whose entry the purge has removed since). The session's tokens were
/// all issued by `revoked_at` and stop verifying a lifetime and the leeway later — the span
/// the `sub` entry's `until` carries past `issued_before - 1`; after that an entry would
/// refuse nothing (and be re-sent to every edge by each later ban).
pub fn revoked_session_needs_entry(
    until: i64,
    issued_before: i64,
    revoked_at: i64,
    now: i64,
) -> bool {
    let span = until.saturating_sub(issued_before.saturating_sub(1));
    revoked_at.saturating_add(span) >= now
}

/// The `until` of the `sid` entry a `sub` revocation at `now` writes for a session it ends,
/// from the `sub` entry's `until`: that one covers tokens issued before `issued_before`
/// (`issued_before - 1 + lifetime + leeway`); the session's own may have been issued up to
/// `now`, so the `sid` entry lasts `now + 1 - issued_before` longer (never less).
pub fn session_until_of_sub(until: i64, issued_before: i64, now: i64) -> i64 {
    until.saturating_add(now.saturating_add(1).saturating_sub(issued_before).max(0))
}

/// What the store knows about a token's revocation, looked up by its claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevocationFacts {
    /// A `jti` entry for the token exists.
    pub jti: bool,
    /// A `sid` entry for its session exists.
    pub sid: bool,
    /// The largest `issued_before` of the `sub` entries of its user, if any.
    pub sub_issued_before: Option<i64>,
    /// Its session is marked revoked (also after its entry has been purged).
    pub session_revoked: bool,
}

/// Whether a token issued at `iat` with these facts is revoked.
pub fn is_revoked(facts: &RevocationFacts, iat: i64) -> bool {
    facts.jti
        || facts.sid
        || facts.session_revoked
        || facts.sub_issued_before.is_some_and(|before| iat < before)
}

/// The purge watermark after purging entries up to `highest_purged` (the largest seq removed,
/// if any): it never goes down.
pub fn next_watermark(current: u64, highest_purged: Option<u64>) -> u64 {
    highest_purged.map_or(current, |highest| highest.max(current))
}

/// How far a store moves the revocation seq on when it may have lost revocations it had
/// numbered and a sidecar may already hold (its `since` past the store's seq): a restored
/// backup, a failover to a copy that lacked the last writes. Without the move the next
/// revocations would be given those seqs again, and a sidecar past them never asks for them.
/// A million: far more revocations than a backup's age or a failover's lag can hold at the
/// rates one store takes (the filter treats gaps in the seq as nothing missing).
pub const SEQ_GAP: u64 = 1_000_000;

/// The seq a store continues from when it may have lost some of its latest revocations
/// (`current` is the seq it holds), at `now_ms`: moved on by [`SEQ_GAP`] — also from 1, the
/// seq of a store that never revoked anything, which may be a copy taken before revocations
/// it has lost — and at least to the time in microseconds, as the Redis store does on a new
/// primary. The gap alone is not enough after a restored backup: the backup's seq moved on by
/// a gap is the seq the start after the backup moved to already, so the revocations numbered
/// since that start — which sidecars hold — would be numbered again. Times only grow, and a
/// store never numbers a million revocations a second: a seq handed out before `now` is below
/// it. Below 2^53 for centuries: exact in JSON and in a double.
///
/// A loss of more than [`SEQ_GAP`] revocations leaves the sidecars that read them ahead of
/// the store (or a clock set back): their next poll's `since` is past its seq and gets the
/// full set (the feed's rule), unless the store numbered that many new ones before it.
pub fn seq_after_possible_loss(current: u64, now_ms: i64) -> u64 {
    let floor = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
    current.saturating_add(SEQ_GAP).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_moves_on_after_a_possible_loss() {
        // From 1 too: a backup taken before the first revocation lacks it.
        assert_eq!(seq_after_possible_loss(1, 0), 1 + SEQ_GAP);
        assert_eq!(seq_after_possible_loss(7, -5), 7 + SEQ_GAP);
        assert_eq!(seq_after_possible_loss(u64::MAX - 1, 0), u64::MAX);
        // At least the time in microseconds.
        let now_ms = 1_796_600_000_000;
        assert_eq!(seq_after_possible_loss(1, now_ms), 1_796_600_000_000_000);
        assert!(seq_after_possible_loss(1, now_ms) < 1 << 53);
        let ahead = 1_796_600_000_000_000 + 5;
        assert_eq!(seq_after_possible_loss(ahead, now_ms), ahead + SEQ_GAP);
    }

    /// A backup taken after one start, restored after another: the gap alone moved the
    /// restored seq to where the second start had moved it, and the revocations numbered since
    /// (which sidecars hold) were numbered again; the time does not come back.
    #[test]
    fn seq_after_a_restored_backup_passes_every_seq_handed_out_since() {
        let first_start = seq_after_possible_loss(1, 1_000_000);
        let backup = first_start + 10;
        let second_start = seq_after_possible_loss(backup, 1_000_000 + 3_600_000);
        let handed_out = second_start + 500;
        let restored = seq_after_possible_loss(backup, 1_000_000 + 7_200_000);
        assert!(restored + 1 > handed_out, "{restored} ≤ {handed_out}");
    }

    #[test]
    fn session_until_of_sub_covers_tokens_issued_up_to_now() {
        // issued_before an hour ago, lifetime + leeway 960: the sub entry ends 960 s after
        // issued_before - 1; a session's token issued at now ends 960 s after now.
        let (now, issued_before) = (10_000, 6_400);
        let until = issued_before - 1 + 960;
        assert_eq!(session_until_of_sub(until, issued_before, now), now + 960);
        // The default issued_before (now + 1): the same until.
        assert_eq!(session_until_of_sub(until, now + 1, now), until);
    }

    fn row(
        used: Option<i64>,
        revoked: Option<i64>,
        expires: i64,
        session_expires: i64,
    ) -> RefreshRow {
        RefreshRow {
            sid: "s1".into(),
            expires_at: expires,
            used_at: used,
            session_expires_at: session_expires,
            session_revoked_at: revoked,
        }
    }

    #[test]
    fn decide_refresh_unknown_invalid() {
        assert!(matches!(
            decide_refresh(None, 10, 100, 0),
            RefreshDecision::Invalid(_)
        ));
    }

    #[test]
    fn decide_refresh_fresh_token_rotates_sliding() {
        assert_eq!(
            decide_refresh(Some(&row(None, None, 50, 1000)), 10, 100, 0),
            RefreshDecision::Rotate {
                sid: "s1".into(),
                new_expires: 110
            }
        );
    }

    #[test]
    fn decide_refresh_capped_by_session_end() {
        assert_eq!(
            decide_refresh(Some(&row(None, None, 50, 60)), 10, 100, 0),
            RefreshDecision::Rotate {
                sid: "s1".into(),
                new_expires: 60
            }
        );
    }

    #[test]
    fn decide_refresh_used_token_is_reuse() {
        assert_eq!(
            decide_refresh(Some(&row(Some(5), None, 50, 1000)), 10, 100, 0),
            RefreshDecision::Reuse { sid: "s1".into() }
        );
    }

    #[test]
    fn decide_refresh_used_token_of_revoked_session_invalid_only() {
        assert!(matches!(
            decide_refresh(Some(&row(Some(5), Some(6), 50, 1000)), 10, 100, 0),
            RefreshDecision::Invalid(_)
        ));
    }

    #[test]
    fn decide_refresh_second_use_within_grace_is_a_repeat_after_it_is_reuse() {
        let used = row(Some(8), None, 50, 1000);
        assert_eq!(
            decide_refresh(Some(&used), 10, 100, 2),
            RefreshDecision::Repeat {
                sid: "s1".into(),
                new_expires: 110,
                used_at: 8
            }
        );
        assert_eq!(
            decide_refresh(Some(&used), 11, 100, 2),
            RefreshDecision::Reuse { sid: "s1".into() }
        );
        // Within the grace but past the session's end: nothing to hand out.
        assert!(matches!(
            decide_refresh(Some(&row(Some(8), None, 50, 10)), 10, 100, 2),
            RefreshDecision::Invalid(_)
        ));
        // A repeat never outlives the session either.
        assert_eq!(
            decide_refresh(Some(&row(Some(8), None, 50, 60)), 10, 100, 5),
            RefreshDecision::Repeat {
                sid: "s1".into(),
                new_expires: 60,
                used_at: 8
            }
        );
    }

    /// With `reuse_grace = 0` a second use in the very second of the rotation is reuse (the
    /// session is revoked), not a repeat handing out the successor again.
    #[test]
    fn decide_refresh_without_grace_a_second_use_in_the_same_second_is_reuse() {
        assert_eq!(
            decide_refresh(Some(&row(Some(10), None, 50, 1000)), 10, 100, 0),
            RefreshDecision::Reuse { sid: "s1".into() }
        );
    }

    #[test]
    fn decide_refresh_expired_invalid() {
        assert!(matches!(
            decide_refresh(Some(&row(None, None, 10, 1000)), 10, 100, 0),
            RefreshDecision::Invalid(_)
        ));
        assert!(matches!(
            decide_refresh(Some(&row(None, None, 50, 10)), 10, 100, 0),
            RefreshDecision::Invalid(_)
        ));
    }

    fn found(sub: &str, unionid: Option<&str>) -> FoundUser {
        FoundUser {
            sub: sub.into(),
            unionid: unionid.map(String::from),
        }
    }

    #[test]
    fn link_user_nothing_found_creates_user_and_identity() {
        let decision = link_user(&LinkCandidates::default(), Some("un"), "u-new");
        assert_eq!(
            decision,
            LinkDecision {
                sub: "u-new".into(),
                create_user: true,
                create_identity: true,
                attach_unionid: false,
                unionid: Some("un".into()),
            }
        );
    }

    #[test]
    fn link_user_known_identity_keeps_user() {
        let candidates = LinkCandidates {
            by_identity: Some(found("u1", None)),
            by_unionid: None,
        };
        let decision = link_user(&candidates, None, "u-new");
        assert_eq!(decision.sub, "u1");
        assert!(!decision.create_user && !decision.create_identity && !decision.attach_unionid);
    }

    #[test]
    fn link_user_known_identity_new_unionid_attached() {
        let candidates = LinkCandidates {
            by_identity: Some(found("u1", None)),
            by_unionid: None,
        };
        let decision = link_user(&candidates, Some("un"), "u-new");
        assert!(decision.attach_unionid);
        assert_eq!(decision.unionid.as_deref(), Some("un"));
    }

    #[test]
    fn link_user_unionid_carried_by_other_user_not_attached() {
        let candidates = LinkCandidates {
            by_identity: Some(found("u1", None)),
            by_unionid: Some("u2".into()),
        };
        let decision = link_user(&candidates, Some("un"), "u-new");
        assert_eq!(decision.sub, "u1");
        assert!(!decision.attach_unionid);
        // u1's session does not claim u2's unionid.
        assert_eq!(decision.unionid, None);
    }

    #[test]
    fn link_user_user_with_unionid_not_overwritten() {
        let candidates = LinkCandidates {
            by_identity: Some(found("u1", Some("old"))),
            by_unionid: None,
        };
        let decision = link_user(&candidates, Some("un"), "u-new");
        assert!(!decision.attach_unionid);
        assert_eq!(decision.unionid.as_deref(), Some("old"));
    }

    #[test]
    fn link_user_new_identity_same_unionid_joins_user() {
        let candidates = LinkCandidates {
            by_identity: None,
            by_unionid: Some("u1".into()),
        };
        assert_eq!(
            link_user(&candidates, Some("un"), "u-new"),
            LinkDecision {
                sub: "u1".into(),
                create_user: false,
                create_identity: true,
                attach_unionid: false,
                unionid: Some("un".into()),
            }
        );
    }

    #[test]
    fn sub_revocation_covers_only_older_sessions() {
        assert!(sub_revocation_covers(20, SubSessions::CreatedBefore, 19));
        assert!(!sub_revocation_covers(20, SubSessions::CreatedBefore, 20));
        assert!(!sub_revocation_covers(20, SubSessions::CreatedBefore, 30));
    }

    #[test]
    fn sub_revocation_of_a_ban_covers_every_session() {
        for created_at in [19, 20, 30] {
            assert!(sub_revocation_covers(20, SubSessions::All, created_at));
        }
    }

    #[test]
    fn revoked_session_needs_entry_while_its_tokens_may_verify() {
        // Lifetime + leeway 960: the `sub` entry (issued before 1001) lasts to 1960.
        let (issued_before, until, now) = (1001, 1960, 1000);
        // Revoked a moment ago (an attempt cut short): its tokens verify to 999 + 960.
        assert!(revoked_session_needs_entry(until, issued_before, 999, now));
        assert!(revoked_session_needs_entry(until, issued_before, 40, now));
        // Logged out long ago: its tokens expired.
        assert!(!revoked_session_needs_entry(until, issued_before, 39, now));
        assert!(!revoked_session_needs_entry(until, issued_before, 20, now));
    }

    #[test]
    fn is_revoked_any_fact_revokes() {
        assert!(!is_revoked(&RevocationFacts::default(), 10));
        for facts in [
            RevocationFacts {
                jti: true,
                ..Default::default()
            },
            RevocationFacts {
                sid: true,
                ..Default::default()
            },
            RevocationFacts {
                session_revoked: true,
                ..Default::default()
            },
        ] {
            assert!(is_revoked(&facts, 10));
        }
    }

    #[test]
    fn is_revoked_sub_only_before_issued_before() {
        let facts = RevocationFacts {
            sub_issued_before: Some(20),
            ..Default::default()
        };
        assert!(is_revoked(&facts, 19));
        assert!(!is_revoked(&facts, 20));
    }

    #[test]
    fn next_watermark_never_decreases() {
        assert_eq!(next_watermark(5, None), 5);
        assert_eq!(next_watermark(5, Some(9)), 9);
        assert_eq!(next_watermark(5, Some(3)), 5);
    }
}
