//! The store contract suite: one set of async test functions that every backend's tests run
//! (SQLite in `sqlite.rs`, Redis in `redis.rs`), through [`contract_tests!`]. A backend is done
//! when the whole suite passes; the store's semantics are what these functions say, not what
//! one backend happens to do.
//!
//! Each function gets a fresh, empty [`Backend`] and may open several handles on it (two
//! SQLite connections on one file, two Redis clients on one prefix) to race writers the way
//! replicas do. The decisions are the domain's ([`crate::domain::rules`], [`crate::feed::revocation::read`]);
//! the suite checks the backend finds the right facts and keeps the decisions atomically.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use weauth_token::revocation::EntryKind;

use super::{
    Ban, CachedToken, Grants, KeyRecord, LoginResult, NewLogin, Revoke, RiskFact, Rotate,
    RotateResult, Store,
};
use crate::domain::rules;
use crate::feed::revocation;

/// A fresh, empty backing store from which any number of handles can be opened.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new handle (connection, client) on the same backing store.
    async fn handle(&self) -> Arc<dyn Store>;
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
            login_without_session_key_stores_none,
            rotate_concurrently_exactly_one_winner,
            rotate_then_reuse_revokes_session_and_writes_entry,
            rotate_within_grace_gets_a_sibling_after_it_is_reuse,
            rotate_concurrently_with_grace_one_rotation_and_siblings,
            rotate_unknown_or_expired_invalid,
            rotate_capped_by_session_end,
            revoke_seq_strictly_increasing_under_two_writers,
            revoke_sid_ends_session_and_is_revoked,
            revoke_sub_ends_older_sessions_only,
            revoke_jti_revokes_only_that_token,
            feed_paged_then_continued_by_since,
            feed_full_semantics_zero_future_and_purged,
            feed_excludes_expired_entries,
            purge_removes_expired_and_keeps_seq_monotonic,
            purge_removes_ended_sessions_and_their_tokens,
            wechat_lease_held_by_one_holder_at_a_time,
            wechat_lease_concurrent_exactly_one_holder,
            wechat_put_token_releases_holder_lease_and_is_read_back,
            wechat_invalidate_only_matching_hash,
            keys_two_first_starts_agree_on_one_key,
            keys_insert_existing_kid_ignored_and_delete,
            set_phone_unknown_user_false,
            risk_fact_kept_with_the_user,
            grants_unknown_user_none_and_writes_refused,
            grants_scopes_replaced_and_cleared_ban_kept,
            grants_ban_read_back_replaced_and_lifted_scopes_kept,
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

fn login(code: &str, openid: &str, unionid: Option<&str>, now: i64) -> NewLogin {
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

fn rotate(old: &str, new: &str, now: i64, grace: i64) -> Rotate {
    Rotate {
        presented_hash: old.into(),
        new_hash: new.into(),
        now,
        refresh_ttl: 100,
        reuse_grace: grace,
        revocation_until: now + 960,
    }
}

fn cached(hash: &str) -> CachedToken {
    CachedToken {
        sealed: vec![9],
        hash: hash.into(),
        expires_at: 7200,
        refresh_at: 6900,
    }
}

fn key(kid: &str, activate_at: i64) -> KeyRecord {
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
        LoginResult::Created { sub, new_user } => (sub.clone(), *new_user),
        LoginResult::CodeAlreadyUsed => panic!("expected a created login, got {result:?}"),
    }
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
    assert_eq!(entry.seq, 2);
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
    let mut other_app = login("c2", "o2", Some("un1"), 20);
    other_app.appid = "wx2".into();
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
    let mut other_app = login("c3", "o9", Some("un1"), 30);
    other_app.appid = "wx2".into();
    assert_eq!(
        created(&store.login(&other_app).await.unwrap()),
        ("u-c1".into(), false)
    );
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
        sibling: false,
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

pub async fn rotate_within_grace_gets_a_sibling_after_it_is_reuse(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c1", "r2", 20, 5))
            .await
            .unwrap(),
        RotateResult::Rotated { sibling: false, .. }
    ));
    let seq = store.current_seq().await.unwrap();
    // A retry of r-c1 within the grace: a sibling of r2, live in the same session.
    let again = store
        .rotate_refresh(&rotate("r-c1", "r3", 22, 5))
        .await
        .unwrap();
    let RotateResult::Rotated {
        session,
        refresh_expires,
        sibling: true,
    } = again
    else {
        panic!("expected a sibling, got {again:?}");
    };
    assert_eq!((session.sid.as_str(), refresh_expires), ("s-c1", 122));
    assert_eq!(store.current_seq().await.unwrap(), seq, "nothing revoked");
    assert_eq!(
        store.refresh_owner("r3").await.unwrap(),
        Some("u-c1".to_string())
    );
    // The grace runs from the rotation at 20, not from the sibling at 22: at 26 it is over.
    let reused = store
        .rotate_refresh(&rotate("r-c1", "r4", 26, 5))
        .await
        .unwrap();
    assert!(matches!(reused, RotateResult::Reused { .. }), "{reused:?}");
    // Reuse after the grace ends the family: the successor and the sibling die with it.
    for live in ["r2", "r3"] {
        assert!(matches!(
            store
                .rotate_refresh(&rotate(live, "r5", 27, 5))
                .await
                .unwrap(),
            RotateResult::Invalid(_)
        ));
    }
}

pub async fn rotate_concurrently_with_grace_one_rotation_and_siblings(backend: &dyn Backend) {
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
            let result = store
                .rotate_refresh(&rotate("r-c1", &format!("n{i}"), 20, 5))
                .await
                .unwrap();
            (format!("n{i}"), result)
        }));
    }
    let (mut first_uses, mut siblings) = (0, Vec::new());
    for task in tasks {
        match task.await.unwrap() {
            (_, RotateResult::Rotated { sibling: false, .. }) => first_uses += 1,
            (new, RotateResult::Rotated { sibling: true, .. }) => siblings.push(new),
            (_, other) => panic!("within the grace every use gets a pair, got {other:?}"),
        }
    }
    assert_eq!((first_uses, siblings.len()), (1, 7));
    let session = handles[1].session("s-c1").await.unwrap().unwrap();
    assert_eq!(session.revoked_at, None, "two tabs are not a theft");
    // Every sibling is a working refresh token of its own.
    for new in &siblings {
        assert!(matches!(
            handles[0]
                .rotate_refresh(&rotate(new, &format!("{new}-next"), 21, 5))
                .await
                .unwrap(),
            RotateResult::Rotated { sibling: false, .. }
        ));
    }
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

pub async fn revoke_seq_strictly_increasing_under_two_writers(backend: &dyn Backend) {
    let handles = [backend.handle().await, backend.handle().await];
    let mut tasks = Vec::new();
    for (w, store) in handles.iter().enumerate() {
        for t in 0..2 {
            let store = Arc::clone(store);
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..15 {
                    let entry = store
                        .revoke(&Revoke::Jti(format!("j{w}-{t}-{i}")), 10, 100)
                        .await
                        .unwrap();
                    seqs.push(entry.seq);
                }
                seqs
            }));
        }
    }
    let mut all = HashSet::new();
    let mut highest = 0;
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one writer sees increasing seqs: {seqs:?}"
        );
        for seq in seqs {
            assert!(all.insert(seq), "seq {seq} assigned twice");
            highest = highest.max(seq);
        }
    }
    assert_eq!(all.len(), 60);
    assert_eq!(handles[0].current_seq().await.unwrap(), highest);
    let feed = revocation::read(handles[1].as_ref(), 1, 10, 1000)
        .await
        .unwrap();
    let fed: Vec<u64> = feed.entries.iter().map(|e| e.seq).collect();
    assert!(fed.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(fed.len(), 60);
}

pub async fn revoke_sid_ends_session_and_is_revoked(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert!(!revoked(store.as_ref(), "j", "s-c1", "u-c1", 10).await);
    let entry = store
        .revoke(&Revoke::Sid("s-c1".into()), 20, 980)
        .await
        .unwrap();
    assert_eq!(
        (
            entry.kind,
            entry.value.as_str(),
            entry.until,
            entry.issued_before
        ),
        (EntryKind::Sid, "s-c1", 980, None)
    );
    assert_eq!(
        store.session("s-c1").await.unwrap().unwrap().revoked_at,
        Some(20)
    );
    assert!(revoked(store.as_ref(), "j", "s-c1", "u-c1", 10).await);
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c1", "x", 21, 0))
            .await
            .unwrap(),
        RotateResult::Invalid(_)
    ));
    // After the entry is purged, the session's own mark still revokes.
    store.purge(981).await.unwrap();
    assert!(revoked(store.as_ref(), "j", "s-c1", "u-c1", 10).await);
}

pub async fn revoke_sub_ends_older_sessions_only(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    created(&store.login(&login("c2", "o1", None, 30)).await.unwrap());
    let entry = store
        .revoke(
            &Revoke::Sub {
                sub: "u-c1".into(),
                issued_before: 20,
            },
            25,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(
        (entry.kind, entry.issued_before),
        (EntryKind::Sub, Some(20))
    );
    assert!(store
        .session("s-c1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(store
        .session("s-c2")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
    assert!(revoked(store.as_ref(), "j", "s-x", "u-c1", 19).await);
    assert!(!revoked(store.as_ref(), "j", "s-c2", "u-c1", 20).await);
    assert!(!revoked(store.as_ref(), "j", "s-x", "u-other", 19).await);
}

pub async fn revoke_jti_revokes_only_that_token(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    store
        .revoke(&Revoke::Jti("t1".into()), 20, 980)
        .await
        .unwrap();
    assert!(revoked(store.as_ref(), "t1", "s-c1", "u-c1", 10).await);
    assert!(!revoked(store.as_ref(), "t2", "s-c1", "u-c1", 10).await);
    assert!(store
        .session("s-c1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
}

pub async fn feed_paged_then_continued_by_since(backend: &dyn Backend) {
    let store = backend.handle().await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(
            store
                .revoke(&Revoke::Jti(format!("j{i}")), 10, 50)
                .await
                .unwrap()
                .seq,
        );
    }
    let read = |since| revocation::read(store.as_ref(), since, 10, 2);
    let first = read(0).await.unwrap();
    assert!(first.full);
    assert_eq!(first.entries.len(), 2);
    assert_eq!(first.seq, seqs[1], "a full page points past its last entry");
    let second = read(first.seq).await.unwrap();
    assert!(!second.full);
    assert_eq!(second.seq, seqs[3]);
    let last = read(second.seq).await.unwrap();
    assert_eq!(last.entries.len(), 1);
    assert_eq!(last.seq, seqs[4]);
    assert_eq!(last.seq, store.current_seq().await.unwrap());
    let idle = read(last.seq).await.unwrap();
    assert!(idle.entries.is_empty() && !idle.full);
    assert_eq!(idle.seq, last.seq);
    assert_eq!(idle.now, 10);
}

pub async fn feed_full_semantics_zero_future_and_purged(backend: &dyn Backend) {
    let store = backend.handle().await;
    let a = store
        .revoke(&Revoke::Jti("j1".into()), 10, 20)
        .await
        .unwrap();
    let b = store
        .revoke(&Revoke::Jti("j2".into()), 10, 50)
        .await
        .unwrap();
    let future = revocation::read(store.as_ref(), b.seq + 5, 10, 100)
        .await
        .unwrap();
    assert!(future.full, "a since from the future starts over");
    assert_eq!(future.entries, vec![a.clone(), b.clone()]);
    assert_eq!(future.seq, b.seq);
    assert_eq!(store.purge(30).await.unwrap().revocations, 1);
    let below = revocation::read(store.as_ref(), a.seq - 1, 30, 100)
        .await
        .unwrap();
    assert!(
        below.full,
        "since below the purge watermark gets a full set"
    );
    assert_eq!(below.entries, vec![b.clone()]);
    let delta = revocation::read(store.as_ref(), a.seq, 30, 100)
        .await
        .unwrap();
    assert!(!delta.full);
    assert_eq!(delta.entries, vec![b]);
}

pub async fn feed_excludes_expired_entries(backend: &dyn Backend) {
    let store = backend.handle().await;
    let old = store
        .revoke(&Revoke::Jti("j1".into()), 10, 20)
        .await
        .unwrap();
    let live = store
        .revoke(&Revoke::Jti("j2".into()), 10, 50)
        .await
        .unwrap();
    let answer = revocation::read(store.as_ref(), 0, 21, 100).await.unwrap();
    assert_eq!(answer.entries, vec![live.clone()]);
    // The seq still moves past an expired entry, so a reader does not ask again.
    let delta = revocation::read(store.as_ref(), old.seq - 1, 21, 100)
        .await
        .unwrap();
    assert_eq!(delta.seq, live.seq);
}

pub async fn purge_removes_expired_and_keeps_seq_monotonic(backend: &dyn Backend) {
    let store = backend.handle().await;
    let a = store
        .revoke(&Revoke::Jti("j1".into()), 10, 20)
        .await
        .unwrap();
    store
        .revoke(&Revoke::Jti("j2".into()), 10, 50)
        .await
        .unwrap();
    let purged = store.purge(30).await.unwrap();
    assert_eq!(purged.revocations, 1);
    assert_eq!(store.purge(30).await.unwrap().revocations, 0);
    let c = store
        .revoke(&Revoke::Jti("j3".into()), 30, 50)
        .await
        .unwrap();
    store.purge(60).await.unwrap();
    assert_eq!(store.current_seq().await.unwrap(), c.seq);
    let d = store
        .revoke(&Revoke::Jti("j4".into()), 60, 70)
        .await
        .unwrap();
    assert_eq!(d.seq, a.seq + 3, "seq never reused after a purge");
    // Everything up to c was purged: a reader at a's seq starts over.
    let answer = revocation::read(store.as_ref(), a.seq, 60, 100)
        .await
        .unwrap();
    assert!(answer.full);
    assert_eq!(answer.entries, vec![d]);
}

pub async fn purge_removes_ended_sessions_and_their_tokens(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap()); // ends at 1010
    let mut later = login("c2", "o1", None, 500);
    later.refresh_expires = 2000;
    later.session_expires = 3000;
    created(&store.login(&later).await.unwrap());
    let purged = store.purge(1011).await.unwrap();
    assert_eq!(purged.sessions, 1);
    assert!(purged.refresh_tokens >= 1);
    assert!(store.session("s-c1").await.unwrap().is_none());
    assert!(store.session("s-c2").await.unwrap().is_some());
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c2", "r3", 1012, 0))
            .await
            .unwrap(),
        RotateResult::Rotated { .. }
    ));
}

pub async fn wechat_lease_held_by_one_holder_at_a_time(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert!(store
        .lease_wechat_token("wx1", "a", 100, 110)
        .await
        .unwrap());
    assert!(!store
        .lease_wechat_token("wx1", "b", 105, 115)
        .await
        .unwrap());
    assert!(store
        .lease_wechat_token("wx2", "b", 105, 115)
        .await
        .unwrap());
    assert!(store
        .lease_wechat_token("wx1", "a", 106, 116)
        .await
        .unwrap());
    assert!(store
        .lease_wechat_token("wx1", "b", 116, 120)
        .await
        .unwrap());
    store.release_wechat_lease("wx1", "a").await.unwrap();
    assert!(!store
        .lease_wechat_token("wx1", "a", 117, 121)
        .await
        .unwrap());
    store.release_wechat_lease("wx1", "b").await.unwrap();
    assert!(store
        .lease_wechat_token("wx1", "a", 117, 121)
        .await
        .unwrap());
}

pub async fn wechat_lease_concurrent_exactly_one_holder(backend: &dyn Backend) {
    let handles = [backend.handle().await, backend.handle().await];
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&handles[i % 2]);
        tasks.push(tokio::spawn(async move {
            store
                .lease_wechat_token("wx1", &format!("h{i}"), 100, 110)
                .await
                .unwrap()
        }));
    }
    let mut holders = 0;
    for task in tasks {
        holders += usize::from(task.await.unwrap());
    }
    assert_eq!(holders, 1);
}

pub async fn wechat_put_token_releases_holder_lease_and_is_read_back(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert_eq!(store.wechat_token("wx1").await.unwrap(), None);
    assert!(store
        .lease_wechat_token("wx1", "a", 100, 110)
        .await
        .unwrap());
    store
        .put_wechat_token("wx1", &cached("h1"), "a")
        .await
        .unwrap();
    assert_eq!(store.wechat_token("wx1").await.unwrap(), Some(cached("h1")));
    assert_eq!(store.wechat_token("wx2").await.unwrap(), None);
    assert!(store
        .lease_wechat_token("wx1", "b", 101, 111)
        .await
        .unwrap());
    // A put by a non-holder keeps the current holder's lease.
    store
        .put_wechat_token("wx1", &cached("h2"), "a")
        .await
        .unwrap();
    assert!(!store
        .lease_wechat_token("wx1", "c", 102, 112)
        .await
        .unwrap());
}

pub async fn wechat_invalidate_only_matching_hash(backend: &dyn Backend) {
    let store = backend.handle().await;
    store
        .put_wechat_token("wx1", &cached("h2"), "a")
        .await
        .unwrap();
    assert!(!store.invalidate_wechat_token("wx1", "h1").await.unwrap());
    assert!(store.wechat_token("wx1").await.unwrap().is_some());
    assert!(store.invalidate_wechat_token("wx1", "h2").await.unwrap());
    assert_eq!(store.wechat_token("wx1").await.unwrap(), None);
    assert!(!store.invalidate_wechat_token("wx1", "h2").await.unwrap());
}

pub async fn keys_two_first_starts_agree_on_one_key(backend: &dyn Backend) {
    let handles = [backend.handle().await, backend.handle().await];
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = Arc::clone(&handles[i % 2]);
        tasks.push(tokio::spawn(async move {
            store
                .insert_key(&key(&format!("k{i}"), 100), Some(100))
                .await
                .unwrap()
        }));
    }
    let mut inserted = 0;
    for task in tasks {
        inserted += usize::from(task.await.unwrap());
    }
    assert_eq!(inserted, 1);
    assert_eq!(handles[0].keys().await.unwrap().len(), 1);
    assert_eq!(
        handles[1].keys().await.unwrap(),
        handles[0].keys().await.unwrap()
    );
}

pub async fn keys_insert_existing_kid_ignored_and_delete(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert!(store.insert_key(&key("k2", 200), None).await.unwrap());
    // A key that only activates later does not count as active.
    assert!(store.insert_key(&key("k1", 100), Some(150)).await.unwrap());
    assert!(!store.insert_key(&key("k3", 50), Some(150)).await.unwrap());
    assert!(!store.insert_key(&key("k1", 300), None).await.unwrap());
    assert_eq!(
        store.keys().await.unwrap(),
        vec![key("k1", 100), key("k2", 200)],
        "ordered by activate_at"
    );
    store.delete_keys(&["k1".to_string()]).await.unwrap();
    assert_eq!(store.keys().await.unwrap(), vec![key("k2", 200)]);
}

pub async fn set_phone_unknown_user_false(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert!(!store.set_phone("nobody", Some("x"), 1).await.unwrap());
    assert!(store.user("nobody").await.unwrap().is_none());
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert!(store.set_phone("u-c1", Some("sealed"), 11).await.unwrap());
    assert_eq!(
        store.user("u-c1").await.unwrap().unwrap().phone.as_deref(),
        Some("sealed")
    );
    assert!(store.set_phone("u-c1", None, 12).await.unwrap());
    assert_eq!(store.user("u-c1").await.unwrap().unwrap().phone, None);
}

pub async fn risk_fact_kept_with_the_user(backend: &dyn Backend) {
    let store = backend.handle().await;
    let fact = |appid: &str, rank: u8, at: i64| RiskFact {
        appid: appid.into(),
        rank,
        at,
    };
    assert!(!store.set_risk("nobody", &fact("wxa", 1, 5)).await.unwrap());
    created(&store.login(&login("r1", "o1", None, 10)).await.unwrap());
    assert_eq!(store.user("u-r1").await.unwrap().unwrap().risk, None);
    assert!(store.set_risk("u-r1", &fact("wxa", 2, 11)).await.unwrap());
    assert!(store.set_risk("u-r1", &fact("wxb", 0, 12)).await.unwrap());
    assert_eq!(
        store.user("u-r1").await.unwrap().unwrap().risk,
        Some(fact("wxb", 0, 12)),
        "the last judged login's rank replaces the previous one"
    );
}

fn ban(created_at: i64, until: Option<i64>, reason: Option<&str>) -> Ban {
    Ban {
        created_at,
        until,
        reason: reason.map(String::from),
    }
}

fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub async fn grants_unknown_user_none_and_writes_refused(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert_eq!(store.grants("nobody").await.unwrap(), None);
    assert!(!store
        .set_scopes("nobody", &scopes(&["a"]), 1)
        .await
        .unwrap());
    assert!(!store
        .set_ban("nobody", Some(&ban(1, None, None)), 1)
        .await
        .unwrap());
    assert_eq!(store.grants("nobody").await.unwrap(), None);
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert_eq!(
        store.grants("u-c1").await.unwrap(),
        Some(Grants::default()),
        "a user without grants has none"
    );
}

pub async fn grants_scopes_replaced_and_cleared_ban_kept(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    let banned = ban(11, Some(500), Some("spam"));
    assert!(store.set_ban("u-c1", Some(&banned), 11).await.unwrap());
    assert!(store
        .set_scopes("u-c1", &scopes(&["admin", "orders:read"]), 12)
        .await
        .unwrap());
    let grants = store.grants("u-c1").await.unwrap().unwrap();
    assert_eq!(grants.scopes, scopes(&["admin", "orders:read"]));
    assert!(store.set_scopes("u-c1", &scopes(&["b"]), 13).await.unwrap());
    assert_eq!(
        store.grants("u-c1").await.unwrap().unwrap().scopes,
        scopes(&["b"])
    );
    assert!(store.set_scopes("u-c1", &[], 14).await.unwrap());
    let grants = store.grants("u-c1").await.unwrap().unwrap();
    assert!(grants.scopes.is_empty());
    assert_eq!(
        grants.ban,
        Some(banned),
        "setting scopes leaves the ban alone"
    );
}

pub async fn grants_ban_read_back_replaced_and_lifted_scopes_kept(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    created(&store.login(&login("c2", "o2", None, 10)).await.unwrap());
    assert!(store
        .set_scopes("u-c1", &scopes(&["admin"]), 11)
        .await
        .unwrap());
    let first = ban(12, None, Some("first"));
    assert!(store.set_ban("u-c1", Some(&first), 12).await.unwrap());
    assert_eq!(
        store.grants("u-c1").await.unwrap().unwrap().ban,
        Some(first)
    );
    let second = ban(13, Some(99), None);
    assert!(store.set_ban("u-c1", Some(&second), 13).await.unwrap());
    assert_eq!(
        store.grants("u-c1").await.unwrap().unwrap().ban,
        Some(second),
        "a new ban replaces the old one"
    );
    assert_eq!(
        store.grants("u-c2").await.unwrap().unwrap().ban,
        None,
        "another user is not affected"
    );
    assert!(store.set_ban("u-c1", None, 14).await.unwrap());
    let grants = store.grants("u-c1").await.unwrap().unwrap();
    assert_eq!(grants.ban, None);
    assert_eq!(
        grants.scopes,
        scopes(&["admin"]),
        "lifting a ban keeps scopes"
    );
}

pub async fn grants_survive_a_new_handle(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert!(store.set_scopes("u-c1", &scopes(&["x"]), 11).await.unwrap());
    assert!(store
        .set_ban("u-c1", Some(&ban(11, None, None)), 11)
        .await
        .unwrap());
    drop(store);
    let other = backend.handle().await;
    let grants = other.grants("u-c1").await.unwrap().unwrap();
    assert_eq!(grants.scopes, scopes(&["x"]));
    assert_eq!(grants.ban, Some(ban(11, None, None)));
}

pub async fn refresh_owner_of_unused_used_and_unknown_tokens(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert_eq!(
        store.refresh_owner("r-c1").await.unwrap().as_deref(),
        Some("u-c1")
    );
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c1", "r-c1b", 11, 0))
            .await
            .unwrap(),
        RotateResult::Rotated { .. }
    ));
    assert_eq!(
        store.refresh_owner("r-c1").await.unwrap().as_deref(),
        Some("u-c1"),
        "a used token still names its owner"
    );
    assert_eq!(
        store.refresh_owner("r-c1b").await.unwrap().as_deref(),
        Some("u-c1")
    );
    assert_eq!(store.refresh_owner("r-unknown").await.unwrap(), None);
}

pub async fn ephemeral_taken_once(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert_eq!(store.take_ephemeral("k", 100).await.unwrap(), None);
    store.put_ephemeral("k", b"v1", 200).await.unwrap();
    store.put_ephemeral("other", b"o", 200).await.unwrap();
    assert_eq!(
        store.take_ephemeral("k", 100).await.unwrap(),
        Some(b"v1".to_vec())
    );
    assert_eq!(store.take_ephemeral("k", 100).await.unwrap(), None);
    // Another handle (replica) sees the same state.
    let other = backend.handle().await;
    assert_eq!(
        other.take_ephemeral("other", 100).await.unwrap(),
        Some(b"o".to_vec())
    );
}

pub async fn ephemeral_expired_not_returned(backend: &dyn Backend) {
    let store = backend.handle().await;
    store.put_ephemeral("k", b"v", 200).await.unwrap();
    assert_eq!(store.take_ephemeral("k", 200).await.unwrap(), None);
    store.put_ephemeral("p", b"v", 200).await.unwrap();
    store.purge(300).await.unwrap();
    assert_eq!(store.take_ephemeral("p", 100).await.unwrap(), None);
}

pub async fn ephemeral_put_replaces(backend: &dyn Backend) {
    let store = backend.handle().await;
    store.put_ephemeral("k", b"old", 200).await.unwrap();
    store.put_ephemeral("k", b"new", 300).await.unwrap();
    assert_eq!(
        store.take_ephemeral("k", 250).await.unwrap(),
        Some(b"new".to_vec())
    );
}

pub async fn ephemeral_concurrent_take_exactly_one(backend: &dyn Backend) {
    let handles = [backend.handle().await, backend.handle().await];
    handles[0].put_ephemeral("k", b"v", 200).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&handles[i % 2]);
        tasks.push(tokio::spawn(async move {
            store.take_ephemeral("k", 100).await.unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);
}
