//! The contract of revocations, the feed and the purge.

use super::*;

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

/// "Log out everywhere" racing a login of the same user: either the revocation marks the
/// login's session, or the login's read of the revocation facts after its commit (the
/// service's check, which then refuses the login) sees the revocation — never neither. (MySQL
/// under READ COMMITTED missed it: the revocation's locking read of the user's sessions took
/// no gap lock, so a login inserting its session after that read and committing before the
/// entry was in neither.)
pub async fn revoke_sub_racing_a_login_misses_it_neither_way(backend: &dyn Backend) {
    let store = backend.handle().await;
    store
        .login(&login("race0", "o-race", None, 100))
        .await
        .unwrap();
    let mut missed = Vec::new();
    for i in 1..=100 {
        let now = 100 + i;
        let next = login(&format!("race{i}"), "o-race", None, now);
        let sid = next.sid.clone();
        let (a, b) = (Arc::clone(&store), backend.handle().await);
        let logging_in = tokio::spawn(async move {
            let made = a.login(&next).await.unwrap();
            let facts = a.revocation_facts("", &next.sid, "u-race0").await.unwrap();
            (made, rules::is_revoked(&facts, now))
        });
        let revoking = tokio::spawn(async move {
            let everywhere = Revoke::Sub {
                sub: "u-race0".into(),
                issued_before: now + 1,
                sessions: SubSessions::CreatedBefore,
            };
            b.revoke(&everywhere, now, now + 1000).await.unwrap()
        });
        let ((made, refused), _) = (logging_in.await.unwrap(), revoking.await.unwrap());
        assert!(matches!(made, LoginResult::Created { .. }), "{made:?}");
        let session = store.session(&sid).await.unwrap().unwrap();
        if !refused && session.revoked_at.is_none() {
            missed.push(i);
        }
    }
    assert!(
        missed.is_empty(),
        "logins neither refused nor revoked: {missed:?}"
    );
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
                sessions: SubSessions::CreatedBefore,
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
    // The session it ended has its own entry, before the `sub` one: it may hold tokens issued
    // at or after `issued_before` (refreshed since), which the edge's `sub` check lets pass.
    let feed = |store: Arc<dyn Store>| async move {
        let snapshot = store.feed_snapshot(0, 25, 100).await.unwrap();
        snapshot
            .entries
            .iter()
            .map(|e| (e.kind, e.value.clone(), e.until))
            .collect::<Vec<_>>()
    };
    let sub_entry = (EntryKind::Sub, "u-c1".to_string(), 1000);
    // Its tokens may have been issued up to the revocation (25), not only before 20: its
    // entry lasts 25 + 1 - 20 = 6 s longer (rules::session_until_of_sub).
    let sid_entry = (EntryKind::Sid, "s-c1".to_string(), 1006);
    assert_eq!(
        feed(Arc::clone(&store)).await,
        vec![sid_entry.clone(), sub_entry.clone()]
    );
    let last = store.feed_snapshot(0, 25, 100).await.unwrap().entries;
    assert_eq!(
        last.last().map(|e| e.seq),
        Some(entry.seq),
        "the `sub` entry is the last"
    );
    // Again: the session is already ended, no second entry for it.
    store
        .revoke(
            &Revoke::Sub {
                sub: "u-c1".into(),
                issued_before: 20,
                sessions: SubSessions::CreatedBefore,
            },
            26,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(
        feed(Arc::clone(&store)).await,
        vec![sid_entry, sub_entry.clone(), sub_entry]
    );
}

/// A ban's `sub` revocation ends every live session of the user, also one created at or after
/// its `issued_before` — on a replica whose clock runs ahead, before the ban — with a `sid`
/// entry for it (its tokens' `iat` is as far ahead, not covered by the `sub` entry).
pub async fn revoke_sub_of_a_ban_ends_every_live_session(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    // Dated after the ban's issued_before (20) by its replica's clock.
    created(&store.login(&login("c2", "o1", None, 21)).await.unwrap());
    created(&store.login(&login("c3", "o1", None, 22)).await.unwrap());
    store
        .revoke(&Revoke::Sid("s-c3".into()), 22, 500)
        .await
        .unwrap();
    let entry = store
        .revoke(
            &Revoke::Sub {
                sub: "u-c1".into(),
                issued_before: 20,
                sessions: SubSessions::All,
            },
            19,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(
        (entry.kind, entry.issued_before),
        (EntryKind::Sub, Some(20)),
        "the entry's own issued_before is unchanged"
    );
    for sid in ["s-c1", "s-c2"] {
        let session = store.session(sid).await.unwrap().unwrap();
        assert_eq!(session.revoked_at, Some(19), "{sid}");
        // A token of the session issued by the replica ahead (iat 21) is refused.
        assert!(revoked(store.as_ref(), "j", sid, "u-c1", 21).await, "{sid}");
    }
    let sids: Vec<String> = store
        .feed_snapshot(0, 19, 100)
        .await
        .unwrap()
        .entries
        .into_iter()
        .filter(|e| e.kind == EntryKind::Sid)
        .map(|e| e.value)
        .collect();
    let mut sorted = sids.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["s-c1", "s-c2", "s-c3"],
        "one entry each; none again for the session revoked before: {sids:?}"
    );
}

/// A `sub` revocation writes no `sid` entry for a session revoked long ago (a logout whose
/// entry the purge removed, the session kept to its end): its tokens have expired, and every
/// later ban would send it to every edge again.
pub async fn revoke_sub_writes_no_entry_for_a_session_logged_out_long_ago(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap()); // ends at 1010
    created(&store.login(&login("c2", "o1", None, 480)).await.unwrap());
    store
        .revoke(&Revoke::Sid("s-c1".into()), 20, 120)
        .await
        .unwrap();
    store.purge(500).await.unwrap();
    assert!(store.session("s-c1").await.unwrap().is_some());
    for (now, sessions) in [
        (500, SubSessions::All),
        (501, SubSessions::CreatedBefore),
        (502, SubSessions::All),
    ] {
        let revoke = Revoke::Sub {
            sub: "u-c1".into(),
            issued_before: now + 1,
            sessions,
        };
        store.revoke(&revoke, now, now + 100).await.unwrap();
    }
    let entries = feed_pairs(store.as_ref(), 502).await;
    let sub = (EntryKind::Sub, "u-c1".to_string());
    assert_eq!(
        entries,
        vec![
            (EntryKind::Sid, "s-c2".to_string()),
            sub.clone(),
            sub.clone(),
            sub
        ]
    );
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

/// An entry's `until` does not grow with its seq (replicas knowing other lifetimes, a `sub`
/// revocation of tokens issued before a past time, clocks apart). The purge removes only the
/// expired entries below the first live one, so the watermark stays below every live entry: a
/// reader loading the set in pages continues from a live entry's seq with the rest, where it
/// was sent the first page again (its `since` below the watermark), and again.
pub async fn purge_keeps_the_watermark_below_every_live_entry(backend: &dyn Backend) {
    let store = backend.handle().await;
    let revoke = |jti: &'static str, until: i64| {
        let store = Arc::clone(&store);
        async move {
            store
                .revoke(&Revoke::Jti(jti.into()), 10, until)
                .await
                .unwrap()
        }
    };
    let long = revoke("j1", 1000).await;
    let short = revoke("j2", 100).await;
    let later = revoke("j3", 1000).await;
    assert_eq!(
        store.purge(200).await.unwrap().revocations,
        0,
        "{short:?} waits behind the live {long:?}"
    );
    // A load in pages of one entry: the first ends at `long`, the next continues after it.
    let first = revocation::read(store.as_ref(), 0, 200, 1).await.unwrap();
    assert!(first.full);
    assert_eq!((first.entries, first.seq), (vec![long.clone()], long.seq));
    let next = revocation::read(store.as_ref(), long.seq, 200, 1)
        .await
        .unwrap();
    assert!(!next.full, "a live entry's seq is above the watermark");
    assert_eq!(next.entries, vec![later.clone()]);
    // The first live entry gone, the ones behind it go too.
    assert_eq!(store.purge(1500).await.unwrap().revocations, 3);
    let caught_up = revocation::read(store.as_ref(), later.seq, 1500, 100)
        .await
        .unwrap();
    assert!(!caught_up.full && caught_up.entries.is_empty());
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

/// A token rotated in its last seconds, its answer lost: the retry within the reuse grace,
/// after the token's expiry, gets the successor again — the purge keeps a used token the
/// longest grace after its use (the SQL stores deleted it at its expiry: "unknown refresh
/// token", a login again). Once that has passed, the purge removes it.
pub async fn purge_keeps_a_used_token_for_a_retry_within_the_grace(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap()); // r-c1 ends at 110
    assert!(matches!(
        store
            .rotate_refresh(&rotate("r-c1", "r2", 108, 10))
            .await
            .unwrap(),
        RotateResult::Rotated { repeat: false, .. }
    ));
    store.purge(111).await.unwrap();
    let again = store
        .rotate_refresh(&rotate("r-c1", "r2", 112, 10))
        .await
        .unwrap();
    assert!(
        matches!(again, RotateResult::Rotated { repeat: true, .. }),
        "{again:?}"
    );
    // Past the longest grace after its use the purge removes it (Redis leaves it to its TTL,
    // where a use past the grace is a reuse): never a repeat again.
    let after = 108 + crate::config::MAX_REUSE_GRACE + 1;
    let purged = store.purge(after).await.unwrap();
    if backend.purge_deletes() {
        assert!(purged.refresh_tokens >= 1, "{purged:?}");
    }
    let late = store
        .rotate_refresh(&rotate(
            "r-c1",
            "r2",
            after + 1,
            crate::config::MAX_REUSE_GRACE,
        ))
        .await
        .unwrap();
    if backend.purge_deletes() {
        assert!(matches!(late, RotateResult::Invalid(_)), "{late:?}");
    } else {
        assert!(matches!(late, RotateResult::Reused { .. }), "{late:?}");
    }
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
    // The ended session's token is gone, or (Redis: left to its TTL) unknown without it.
    assert!(matches!(
        store
            .rotate_refresh(&rotate_of("s-c1", "r-c1", "r4", 1012, 0))
            .await
            .unwrap(),
        RotateResult::Invalid(_)
    ));
    assert_eq!(
        store.refresh_owner(family("s-c1"), "r-c1").await.unwrap(),
        None
    );
    assert!(matches!(
        store
            .rotate_refresh(&rotate_of("s-c2", "r-c2", "r3", 1012, 0))
            .await
            .unwrap(),
        RotateResult::Rotated { .. }
    ));
}
