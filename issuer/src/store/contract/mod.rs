//! The store contract suite: one set of async test functions that every backend's tests run
//! (SQLite in `sqlite/tests.rs`, Redis in `redis/tests.rs`), through [`contract_tests!`]. A backend is done
//! when the whole suite passes; the store's semantics are what these functions say, not what
//! one backend happens to do.
//!
//! Each function gets a fresh, empty [`Backend`] and may open several handles on it (two
//! SQLite connections on one file, two Redis clients on one prefix) to race writers the way
//! replicas do. The decisions are the domain's ([`crate::domain::rules`], [`crate::feed::revocation::read`]);
//! the suite checks the backend finds the right facts and keeps the decisions atomically.

mod records;
mod revocations;

pub use self::records::*;
pub use self::revocations::*;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use weauth_token::revocation::{Entry, EntryKind};

use super::{
    Ban, BanWrite, CachedToken, Grants, KeyRecord, LoginResult, NewLogin, ReportedTtl, Revoke,
    RiskFact, Rotate, RotateResult, Store, SubSessions,
};
use crate::domain::rules;
use crate::feed::revocation;

/// A fresh, empty backing store from which any number of handles can be opened.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new handle (connection, client) on the same backing store.
    async fn handle(&self) -> Arc<dyn Store>;
    /// Whether [`Store::purge`] deletes expired rows itself (the SQL stores); Redis leaves
    /// them to their keys' TTL.
    fn purge_deletes(&self) -> bool {
        true
    }
    /// Whether [`Store::phones_page`] may give a user twice (Redis `SCAN`); the SQL stores
    /// page by `sub`.
    fn scan_may_repeat(&self) -> bool {
        false
    }
}

/// Generates one `#[tokio::test]` per contract function, each on a fresh backend produced by
/// the given async expression (evaluated once per test).
macro_rules! contract_tests {
    ($backend:expr) => {
        $crate::store::contract::contract_tests!(@each $backend;
            fresh_store_seq_starts_at_one,
            login_same_code_twice_one_session,
            login_same_code_concurrently_one_session,
            login_same_openid_same_sub_new_session,
            login_linked_by_unionid_across_openids,
            login_unionid_revealed_later_attached_then_linked,
            login_unionid_of_another_user_not_carried,
            login_without_session_key_stores_none,
            discard_session_leaves_no_session_and_keeps_the_user,
            rotate_concurrently_exactly_one_winner,
            rotate_then_reuse_revokes_session_and_writes_entry,
            rotate_within_grace_repeats_the_successor_after_it_is_reuse,
            rotate_concurrently_with_grace_one_rotation_and_repeats,
            rotate_unknown_or_expired_invalid,
            rotate_capped_by_session_end,
            revoke_seq_strictly_increasing_under_two_writers,
            revoke_sid_ends_session_and_is_revoked,
            revoke_sub_ends_older_sessions_only,
            revoke_sub_racing_a_login_misses_it_neither_way,
            revoke_sub_of_a_ban_ends_every_live_session,
            revoke_sub_writes_no_entry_for_a_session_logged_out_long_ago,
            revoke_jti_revokes_only_that_token,
            access_ttl_reports_keep_the_latest_per_lifetime,
            feed_paged_then_continued_by_since,
            feed_full_semantics_zero_future_and_purged,
            feed_excludes_expired_entries,
            purge_keeps_the_watermark_below_every_live_entry,
            purge_removes_expired_and_keeps_seq_monotonic,
            purge_removes_ended_sessions_and_their_tokens,
            purge_keeps_a_used_token_for_a_retry_within_the_grace,
            wechat_lease_held_by_one_holder_at_a_time,
            wechat_lease_concurrent_exactly_one_holder,
            wechat_put_token_releases_holder_lease_and_is_read_back,
            wechat_invalidate_only_matching_hash,
            keys_two_first_starts_agree_on_one_key,
            keys_insert_existing_kid_ignored_and_erase,
            set_phone_unknown_user_false,
            phones_paged_and_resealed_only_while_unchanged,
            risk_fact_kept_with_the_user,
            grants_unknown_user_none_and_writes_refused,
            grants_scopes_replaced_and_cleared_ban_kept,
            grants_ban_read_back_replaced_and_lifted_scopes_kept,
            grants_ban_set_if_only_while_it_is_the_one_expected,
            grants_ban_lift_racing_a_new_ban_never_lifts_it,
            grants_survive_a_new_handle,
            refresh_owner_of_unused_used_and_unknown_tokens,
            ephemeral_taken_once,
            ephemeral_expired_not_returned,
            ephemeral_put_replaces,
            ephemeral_concurrent_take_exactly_one
        );
    };
    (@each $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let backend = $backend.await;
                $crate::store::contract::$name(&backend).await;
            }
        )*
    };
}
pub(crate) use contract_tests;

/// The feed's entries at `now` from the start (up to 100), as `(kind, value)` pairs.
pub(crate) async fn feed_pairs(store: &dyn Store, now: i64) -> Vec<(EntryKind, String)> {
    store
        .feed_snapshot(0, now, 100)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| (e.kind, e.value))
        .collect()
}

pub(crate) fn login(code: &str, openid: &str, unionid: Option<&str>, now: i64) -> NewLogin {
    NewLogin {
        appid: "wx1".into(),
        openid: openid.into(),
        unionid: unionid.map(String::from),
        code_hash: format!("h-{code}"),
        new_sub: format!("u-{code}"),
        sid: format!("s-{code}"),
        session_key_sealed: Some(vec![1, 2, 3]),
        now,
        session_expires: now + 1000,
        refresh_hash: format!("r-{code}"),
        refresh_expires: now + 100,
    }
}

/// [`login`] to the suite's second app (`wx2`).
fn login_in_other_app(code: &str, openid: &str, unionid: Option<&str>, now: i64) -> NewLogin {
    NewLogin {
        appid: "wx2".into(),
        ..login(code, openid, unionid, now)
    }
}

/// A rotation of a token of the suite's usual session, `s-c1`.
fn rotate(old: &str, new: &str, now: i64, grace: i64) -> Rotate {
    rotate_of("s-c1", old, new, now, grace)
}

/// A rotation of a token of session `sid` (a sharded store finds it by the session's family).
pub(crate) fn rotate_of(sid: &str, old: &str, new: &str, now: i64, grace: i64) -> Rotate {
    Rotate {
        family: family(sid).into(),
        presented_hash: old.into(),
        new_hash: new.into(),
        now,
        refresh_ttl: 100,
        reuse_grace: grace,
        revocation_until: now + 960,
    }
}

/// The family of session `sid`'s refresh tokens.
fn family(sid: &str) -> &str {
    crate::domain::tokens::family_of_sid(sid)
}

fn cached(hash: &str) -> CachedToken {
    CachedToken {
        sealed: vec![9],
        hash: hash.into(),
        expires_at: 7200,
        refresh_at: 6900,
    }
}

pub(crate) fn key(kid: &str, activate_at: i64) -> KeyRecord {
    KeyRecord {
        kid: kid.into(),
        alg: "EdDSA".into(),
        sealed: vec![7, 7],
        created_at: activate_at,
        activate_at,
    }
}

async fn revoked(store: &dyn Store, jti: &str, sid: &str, sub: &str, iat: i64) -> bool {
    let facts = store.revocation_facts(jti, sid, sub).await.unwrap();
    rules::is_revoked(&facts, iat)
}

fn created(result: &LoginResult) -> (String, bool) {
    match result {
        LoginResult::Created { sub, new_user, .. } => (sub.clone(), *new_user),
        LoginResult::CodeAlreadyUsed => panic!("expected a created login, got {result:?}"),
    }
}

/// After a store lost revocation `lost` (a restored backup, a failover): the next revocation
/// gets a seq past it, so a sidecar whose `since` is `lost.seq` is given it.
pub async fn revoke_past_a_lost_one(store: &dyn Store, lost: &Entry) {
    let next = store
        .revoke(&Revoke::Jti("after-the-loss".into()), 10, 20)
        .await
        .unwrap();
    assert!(
        next.seq > lost.seq,
        "{} reuses a seq up to {}",
        next.seq,
        lost.seq
    );
    let past_lost = store.feed_snapshot(lost.seq, 10, 10).await.unwrap();
    assert_eq!(past_lost.entries, vec![next]);
}

pub async fn fresh_store_seq_starts_at_one(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert_eq!(store.current_seq().await.unwrap(), 1);
    let answer = revocation::read(store.as_ref(), 0, 10, 100).await.unwrap();
    assert!(answer.full && answer.entries.is_empty());
    assert_eq!(answer.seq, 1);
    let entry = store
        .revoke(&Revoke::Jti("j".into()), 10, 20)
        .await
        .unwrap();
    // Past 1: 2, or past a jump (`rules::seq_after_possible_loss`: a MySQL store's first
    // revocation on a server, a Redis store's on a primary).
    assert!(entry.seq > 1, "{entry:?}");
}

/// Access-token lifetime reports: per lifetime the latest report is kept (an earlier one
/// never replaces it), reports older than `forget_before` are forgotten, every handle reads
/// the same, and concurrent reports keep the latest.
pub async fn access_ttl_reports_keep_the_latest_per_lifetime(backend: &dyn Backend) {
    let (a, b) = (backend.handle().await, backend.handle().await);
    assert!(a.access_ttls().await.unwrap().is_empty());
    let sorted = |mut reports: Vec<ReportedTtl>| {
        reports.sort_by_key(|report| report.access_ttl);
        reports
            .iter()
            .map(|report| (report.access_ttl, report.reported_at))
            .collect::<Vec<_>>()
    };
    let reports = a.report_access_ttl(900, 1_000, 0).await.unwrap();
    assert_eq!(sorted(reports), [(900, 1_000)]);
    let reports = b.report_access_ttl(300, 1_010, 0).await.unwrap();
    assert_eq!(sorted(reports), [(300, 1_010), (900, 1_000)]);
    // A late report of an earlier time does not move the latest back.
    let reports = a.report_access_ttl(900, 990, 0).await.unwrap();
    assert_eq!(sorted(reports), [(300, 1_010), (900, 1_000)]);
    let reports = a.report_access_ttl(900, 1_030, 0).await.unwrap();
    assert_eq!(sorted(reports), [(300, 1_010), (900, 1_030)]);
    // Forgotten once older than forget_before; the report itself is kept.
    let reports = b.report_access_ttl(300, 1_040, 1_031).await.unwrap();
    assert_eq!(sorted(reports), [(300, 1_040)]);
    let reports = (0..16i64).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move { store.report_access_ttl(60, 2_000 + i * 7 % 16, 0).await })
    });
    for report in futures_util::future::join_all(reports).await {
        assert!(report.unwrap().unwrap().len() == 2);
    }
    let reports = b.report_access_ttl(300, 1_040, 0).await.unwrap();
    assert_eq!(sorted(reports), [(60, 2_015), (300, 1_040)]);
    // Read without reporting: the same, and nothing changes.
    assert_eq!(
        sorted(a.access_ttls().await.unwrap()),
        [(60, 2_015), (300, 1_040)]
    );
    assert_eq!(
        sorted(b.access_ttls().await.unwrap()),
        [(60, 2_015), (300, 1_040)]
    );
}

pub async fn login_same_code_twice_one_session(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert!(!store.code_used("h-c1").await.unwrap());
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert!(store.code_used("h-c1").await.unwrap());
    let mut again = login("c1", "o1", None, 11);
    again.sid = "s-other".into();
    again.refresh_hash = "r-other".into();
    assert_eq!(
        store.login(&again).await.unwrap(),
        LoginResult::CodeAlreadyUsed
    );
    assert!(store.session("s-other").await.unwrap().is_none());
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-other", "x", 12, 0))
            .await
            .unwrap(),
        RotateResult::Invalid(_)
    ));
}

pub async fn login_same_code_concurrently_one_session(backend: &dyn Backend) {
    let handles = [backend.handle().await, backend.handle().await];
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&handles[i % 2]);
        tasks.push(tokio::spawn(async move {
            let mut attempt = login("same", "o1", None, 10);
            attempt.sid = format!("s-{i}");
            attempt.refresh_hash = format!("r-{i}");
            attempt.new_sub = format!("u-{i}");
            (i, store.login(&attempt).await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if matches!(result, LoginResult::Created { .. }) {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one login per code: {winners:?}");
    for i in 0..8 {
        let session = handles[0].session(&format!("s-{i}")).await.unwrap();
        assert_eq!(session.is_some(), winners.contains(&i));
    }
}

pub async fn login_same_openid_same_sub_new_session(backend: &dyn Backend) {
    let store = backend.handle().await;
    let first = created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    let second = created(&store.login(&login("c2", "o1", None, 20)).await.unwrap());
    assert_eq!(first, ("u-c1".into(), true));
    assert_eq!(second, ("u-c1".into(), false));
    let session = store.session("s-c2").await.unwrap().unwrap();
    assert_eq!(
        (
            session.sub.as_str(),
            session.openid.as_str(),
            session.created_at
        ),
        ("u-c1", "o1", 20)
    );
    assert_eq!(session.expires_at, 1020);
    assert_eq!(session.revoked_at, None);
    let user = store.user("u-c1").await.unwrap().unwrap();
    assert_eq!((user.created_at, user.unionid), (10, None));
}

pub async fn login_linked_by_unionid_across_openids(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(
        &store
            .login(&login("c1", "o1", Some("un1"), 10))
            .await
            .unwrap(),
    );
    let other_app = login_in_other_app("c2", "o2", Some("un1"), 20);
    assert_eq!(
        created(&store.login(&other_app).await.unwrap()),
        ("u-c1".into(), false)
    );
    let stranger = created(
        &store
            .login(&login("c3", "o3", Some("un2"), 30))
            .await
            .unwrap(),
    );
    assert_eq!(stranger, ("u-c3".into(), true));
}

pub async fn login_unionid_revealed_later_attached_then_linked(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    created(
        &store
            .login(&login("c2", "o1", Some("un1"), 20))
            .await
            .unwrap(),
    );
    assert_eq!(
        store
            .user("u-c1")
            .await
            .unwrap()
            .unwrap()
            .unionid
            .as_deref(),
        Some("un1")
    );
    let other_app = login_in_other_app("c3", "o9", Some("un1"), 30);
    assert_eq!(
        created(&store.login(&other_app).await.unwrap()),
        ("u-c1".into(), false)
    );
}

/// The linking conflict (WEB-LOGIN.md, "One person across apps"): an identity first seen
/// without a unionid (user u-c1), the unionid then carried by another user (u-c2, another
/// app), then the first identity with it. The login goes to u-c1 and the unionid stays with
/// u-c2 — so u-c1's session, and its tokens, do not carry it either (two users asserting one
/// unionid at the edge would be merged by an upstream keyed by it).
pub async fn login_unionid_of_another_user_not_carried(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    let other_app = login_in_other_app("c2", "o2", Some("un1"), 20);
    created(&store.login(&other_app).await.unwrap());
    let made = store
        .login(&login("c3", "o1", Some("un1"), 30))
        .await
        .unwrap();
    assert_eq!(
        made,
        LoginResult::Created {
            sub: "u-c1".into(),
            new_user: false,
            unionid: None,
        }
    );
    assert_eq!(store.session("s-c3").await.unwrap().unwrap().unionid, None);
    assert_eq!(store.user("u-c1").await.unwrap().unwrap().unionid, None);
    // The user that carries it: its sessions carry it.
    let again = login_in_other_app("c4", "o2", Some("un1"), 40);
    let made = store.login(&again).await.unwrap();
    assert!(
        matches!(&made, LoginResult::Created { sub, unionid: Some(u), .. } if sub == "u-c2" && u == "un1"),
        "{made:?}"
    );
    assert_eq!(
        store
            .session("s-c4")
            .await
            .unwrap()
            .unwrap()
            .unionid
            .as_deref(),
        Some("un1")
    );
}

/// A login refused after its commit (a ban, a "log out everywhere" meanwhile) is discarded:
/// no session, no usable refresh token; its user and identity stay, and the next login of
/// the same identity finds them.
pub async fn discard_session_leaves_no_session_and_keeps_the_user(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(
        &store
            .login(&login("c1", "o1", Some("un1"), 10))
            .await
            .unwrap(),
    );
    store.discard_session("s-c1").await.unwrap();
    assert_eq!(store.session("s-c1").await.unwrap(), None);
    let rotated = store
        .rotate_refresh(&rotate("r-c1", "r-2", 20, 0))
        .await
        .unwrap();
    assert!(matches!(rotated, RotateResult::Invalid(_)), "{rotated:?}");
    assert!(store.user("u-c1").await.unwrap().is_some());
    assert_eq!(
        created(
            &store
                .login(&login("c2", "o1", Some("un1"), 30))
                .await
                .unwrap()
        ),
        ("u-c1".into(), false)
    );
    // Discarding a session that is not there (again) is no error.
    store.discard_session("s-c1").await.unwrap();
}

pub async fn login_without_session_key_stores_none(backend: &dyn Backend) {
    let store = backend.handle().await;
    let mut web = login("c1", "o1", None, 10);
    web.session_key_sealed = None;
    created(&store.login(&web).await.unwrap());
    assert!(store.session("s-c1").await.unwrap().is_some());
    assert_eq!(store.session_key_sealed("s-c1").await.unwrap(), None);
    created(&store.login(&login("c2", "o1", None, 10)).await.unwrap());
    assert_eq!(
        store.session_key_sealed("s-c2").await.unwrap(),
        Some(vec![1, 2, 3])
    );
}

pub async fn rotate_concurrently_exactly_one_winner(backend: &dyn Backend) {
    let handles = [backend.handle().await, backend.handle().await];
    created(
        &handles[0]
            .login(&login("c1", "o1", None, 10))
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&handles[i % 2]);
        tasks.push(tokio::spawn(async move {
            store
                .rotate_refresh(&rotate("r-c1", &format!("n{i}"), 20, 0))
                .await
                .unwrap()
        }));
    }
    let mut rotated = Vec::new();
    let mut reused = 0;
    for task in tasks {
        match task.await.unwrap() {
            RotateResult::Rotated { session, .. } => rotated.push(session.sid),
            RotateResult::Reused { .. } => reused += 1,
            RotateResult::Invalid(_) => {}
        }
    }
    assert_eq!(rotated, vec!["s-c1".to_string()], "exactly one winner");
    // Every loser presented a used token (grace 0): the family is revoked, by one or more
    // entries, and the winner's new token is dead too.
    assert!(reused >= 1);
    let session = handles[1].session("s-c1").await.unwrap().unwrap();
    assert!(session.revoked_at.is_some());
}

pub async fn rotate_then_reuse_revokes_session_and_writes_entry(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    let rotated = store
        .rotate_refresh(&rotate("r-c1", "r2", 20, 0))
        .await
        .unwrap();
    let RotateResult::Rotated {
        session,
        refresh_expires,
        repeat: false,
    } = rotated
    else {
        panic!("expected a rotation, got {rotated:?}");
    };
    assert_eq!((session.sid.as_str(), refresh_expires), ("s-c1", 120));
    let before = store.current_seq().await.unwrap();
    let reused = store
        .rotate_refresh(&rotate("r-c1", "r3", 30, 0))
        .await
        .unwrap();
    let RotateResult::Reused { sid, entry } = reused else {
        panic!("expected reuse, got {reused:?}");
    };
    assert_eq!(sid, "s-c1");
    assert_eq!((entry.kind, entry.value.as_str()), (EntryKind::Sid, "s-c1"));
    assert_eq!(entry.until, 990);
    assert!(entry.seq > before);
    assert_eq!(store.current_seq().await.unwrap(), entry.seq);
    assert!(store
        .session("s-c1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    // The rotated-to token dies with its session.
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r2", "r4", 40, 0))
            .await
            .unwrap(),
        RotateResult::Invalid(_)
    ));
    assert!(revoked(store.as_ref(), "j", "s-c1", "u-c1", 35).await);
    let feed = revocation::read(store.as_ref(), before, 40, 100)
        .await
        .unwrap();
    assert_eq!(feed.entries, vec![entry]);
}

pub async fn rotate_within_grace_repeats_the_successor_after_it_is_reuse(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c1", "r2", 20, 5))
            .await
            .unwrap(),
        RotateResult::Rotated {
            repeat: false,
            refresh_expires: 120,
            ..
        }
    ));
    let seq = store.current_seq().await.unwrap();
    // A retry of r-c1 within the grace names the same successor (the service derives it from
    // the token): r2 again, as written at 20 — not a token of its own expiring at 122.
    let again = store
        .rotate_refresh(&rotate("r-c1", "r2", 22, 5))
        .await
        .unwrap();
    let RotateResult::Rotated {
        session,
        refresh_expires,
        repeat: true,
    } = again
    else {
        panic!("expected a repeat, got {again:?}");
    };
    assert_eq!((session.sid.as_str(), refresh_expires), ("s-c1", 120));
    assert_eq!(store.current_seq().await.unwrap(), seq, "nothing revoked");
    // r2 is one token, however many times it was handed out: it rotates once.
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r2", "r3", 23, 0))
            .await
            .unwrap(),
        RotateResult::Rotated { repeat: false, .. }
    ));
    // Still within r-c1's grace, after r2 was used: r2 again, used as it is — whoever holds
    // it cannot start a chain of its own.
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c1", "r2", 24, 5))
            .await
            .unwrap(),
        RotateResult::Rotated {
            repeat: true,
            refresh_expires: 120,
            ..
        }
    ));
    // A successor the store does not hold (r-c1 rotated by a release that drew successors at
    // random, or under another data key): written, and live in the same session.
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c1", "r-drawn", 24, 5))
            .await
            .unwrap(),
        RotateResult::Rotated {
            repeat: true,
            refresh_expires: 124,
            ..
        }
    ));
    assert_eq!(
        store
            .refresh_owner(family("s-c1"), "r-drawn")
            .await
            .unwrap(),
        Some("u-c1".to_string())
    );
    assert_eq!(store.current_seq().await.unwrap(), seq, "nothing revoked");
    // The grace runs from the rotation at 20, not from the repeats: at 26 it is over.
    let reused = store
        .rotate_refresh(&rotate("r-c1", "r2", 26, 5))
        .await
        .unwrap();
    assert!(matches!(reused, RotateResult::Reused { .. }), "{reused:?}");
    // Reuse after the grace ends the family: every token of it dies with it.
    for live in ["r2", "r3", "r-drawn"] {
        assert!(matches!(
            store
                .rotate_refresh(&rotate(live, "r5", 27, 5))
                .await
                .unwrap(),
            RotateResult::Invalid(_)
        ));
    }
}

pub async fn rotate_concurrently_with_grace_one_rotation_and_repeats(backend: &dyn Backend) {
    let handles = [backend.handle().await, backend.handle().await];
    created(
        &handles[0]
            .login(&login("c1", "o1", None, 10))
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&handles[i % 2]);
        tasks.push(tokio::spawn(async move {
            store
                .rotate_refresh(&rotate("r-c1", "n", 20, 5))
                .await
                .unwrap()
        }));
    }
    let (mut first_uses, mut repeats) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            RotateResult::Rotated {
                repeat,
                refresh_expires: 120,
                ..
            } => {
                if repeat {
                    repeats += 1;
                } else {
                    first_uses += 1;
                }
            }
            other => panic!("within the grace every use gets the successor, got {other:?}"),
        }
    }
    assert_eq!((first_uses, repeats), (1, 7));
    let session = handles[1].session("s-c1").await.unwrap().unwrap();
    assert_eq!(session.revoked_at, None, "two tabs are not a theft");
    // The successor is one token: it rotates once, and its second use after its own grace
    // is reuse.
    assert!(matches!(
        handles[0]
            .rotate_refresh(&rotate("n", "n-next", 21, 0))
            .await
            .unwrap(),
        RotateResult::Rotated { repeat: false, .. }
    ));
    assert!(matches!(
        handles[1]
            .rotate_refresh(&rotate("n", "n-next", 22, 0))
            .await
            .unwrap(),
        RotateResult::Reused { .. }
    ));
}

pub async fn rotate_unknown_or_expired_invalid(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert!(matches!(
        store
            .rotate_refresh(&rotate("nope", "x", 20, 0))
            .await
            .unwrap(),
        RotateResult::Invalid(_)
    ));
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    // refresh_expires = 110.
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c1", "x", 110, 0))
            .await
            .unwrap(),
        RotateResult::Invalid(_)
    ));
    assert!(store
        .session("s-c1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
}

pub async fn rotate_capped_by_session_end(backend: &dyn Backend) {
    let store = backend.handle().await;
    let mut short = login("c1", "o1", None, 10);
    short.session_expires = 50;
    short.refresh_expires = 50;
    created(&store.login(&short).await.unwrap());
    let rotated = store
        .rotate_refresh(&rotate("r-c1", "r2", 20, 0))
        .await
        .unwrap();
    assert!(matches!(
        rotated,
        RotateResult::Rotated {
            refresh_expires: 50,
            ..
        }
    ));
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r2", "r3", 50, 0))
            .await
            .unwrap(),
        RotateResult::Invalid(_)
    ));
}
