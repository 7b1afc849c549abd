//! Revocations cut short (a crash, a lost connection, the feed's primary failing over) and
//! completed by whoever comes next, and the two passes of a `sub` revocation, on one Redis.

use super::*;

/// The feed's seq broken (`INCR` then fails inside REVOKE, as the script fails when the feed's
/// primary fails over between the session's slot and the feed's), or repaired at `seq`.
async fn set_feed_seq(side: &mut redis::aio::MultiplexedConnection, seq: &str) {
    let _: () = redis::cmd("SET")
        .arg("t:seq")
        .arg(seq)
        .query_async(side)
        .await
        .unwrap();
}

/// Two failovers in a row, the second to a copy that lags the first promoted primary: that
/// primary (B) numbered revocations past the seq its predecessor (A) had, edges took them as
/// their cursor, then B was lost and a copy of A's data (C) promoted. C's jump must take its
/// seqs past B's: a gap from its own seq did not (it numbered C's first entry as B's first,
/// and an edge whose cursor was past it never read C's revocations). Simulated on one server
/// by the epoch key (a replication id other than the server's is a change of primary) and the
/// seq set back to A's.
#[tokio::test]
async fn redis_seq_never_reused_after_two_failovers_to_a_lagging_copy() {
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let mut side = side_connection(&redis).await;
    let set = |key: String, value: String| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        cmd
    };
    let a = store
        .revoke(&Revoke::Jti("a".into()), 10, 100)
        .await
        .unwrap();
    // B promoted (another replication id than the one A's entries were written under).
    let _: () = set(store.key(keys::SEQ_EPOCH), "a-replid".into())
        .query_async(&mut side)
        .await
        .unwrap();
    let b1 = store
        .revoke(&Revoke::Jti("b1".into()), 10, 100)
        .await
        .unwrap();
    let b2 = store
        .revoke(&Revoke::Jti("b2".into()), 10, 100)
        .await
        .unwrap();
    // B lost; C promoted with A's copy: A's seq and A's epoch.
    for (key, value) in [
        (keys::SEQ, a.seq.to_string()),
        (keys::SEQ_EPOCH, "a-replid".to_string()),
    ] {
        let _: () = set(store.key(key), value)
            .query_async(&mut side)
            .await
            .unwrap();
    }
    let c1 = store
        .revoke(&Revoke::Jti("c1".into()), 10, 100)
        .await
        .unwrap();
    assert!(
        c1.seq > b2.seq,
        "C numbered {} at or below B's {} (B's first {})",
        c1.seq,
        b2.seq,
        b1.seq
    );
}

/// A `sid` revocation cut between the session's mark and the feed's entry — a refresh token's
/// reuse, a logout — is published by whoever reads the session next: the retried refresh,
/// the retried logout's bearer check. Their retries find the session revoked and never got
/// to a revocation, so the entry never reached the feed and the session's access tokens
/// passed the edge to their `exp`.
#[tokio::test]
async fn redis_sid_revocation_cut_short_is_published_by_the_next_reader() {
    use crate::store::contract::{login, rotate_of};
    let redis = TestRedis::new().await;
    let store = redis.handle().await;
    let mut side = side_connection(&redis).await;
    let sid_entries = |feed: &weauth_token::revocation::FeedResponse, sid: &str| {
        feed.entries
            .iter()
            .filter(|entry| entry.value == sid)
            .count()
    };

    // A reuse: r-c1 rotated, then presented again while the feed is broken.
    store.login(&login("c1", "o1", None, 10)).await.unwrap();
    let rotated = store
        .rotate_refresh(&rotate_of("s-c1", "r-c1", "r-2", 20, 0))
        .await
        .unwrap();
    assert!(
        matches!(rotated, RotateResult::Rotated { .. }),
        "{rotated:?}"
    );
    set_feed_seq(&mut side, "broken").await;
    assert!(store
        .rotate_refresh(&rotate_of("s-c1", "r-c1", "r-3", 40, 0))
        .await
        .is_err());
    set_feed_seq(&mut side, "100").await;
    let retried = store
        .rotate_refresh(&rotate_of("s-c1", "r-c1", "r-4", 41, 0))
        .await
        .unwrap();
    assert!(matches!(retried, RotateResult::Invalid(_)), "{retried:?}");
    let feed = crate::feed::revocation::read(store.as_ref(), 0, 41, 100)
        .await
        .unwrap();
    assert_eq!(sid_entries(&feed, "s-c1"), 1, "{:?}", feed.entries);
    // With the `until` of the reuse's revocation (40 + 960).
    assert!(feed.entries.iter().any(|entry| entry.until == 1000));

    // A logout: the session revoked while the feed is broken, then its token checked.
    store.login(&login("c2", "o2", None, 50)).await.unwrap();
    set_feed_seq(&mut side, "broken").await;
    assert!(store
        .revoke(&Revoke::Sid("s-c2".into()), 60, 999)
        .await
        .is_err());
    set_feed_seq(&mut side, "200").await;
    let facts = store.revocation_facts("j", "s-c2", "u-c2").await.unwrap();
    assert!(facts.sid && facts.session_revoked, "{facts:?}");
    let feed = crate::feed::revocation::read(store.as_ref(), 0, 61, 100)
        .await
        .unwrap();
    assert_eq!(sid_entries(&feed, "s-c2"), 1, "{:?}", feed.entries);

    // Published once: later reads find nothing pending.
    store.revocation_facts("j", "s-c2", "u-c2").await.unwrap();
    // A note left beside an entry that was written (a crash between the entry and clearing
    // the note; or a revocation's own short window) adds no entry of a reader's.
    let _: () = redis::cmd("HSET")
        .arg("t:session:s-c2")
        .arg("pending_until")
        .arg(999)
        .query_async(&mut side)
        .await
        .unwrap();
    store.revocation_facts("j", "s-c2", "u-c2").await.unwrap();
    store
        .rotate_refresh(&rotate_of("s-c1", "r-c1", "r-5", 42, 0))
        .await
        .unwrap();
    let feed = crate::feed::revocation::read(store.as_ref(), 0, 62, 100)
        .await
        .unwrap();
    assert_eq!(feed.entries.len(), 2, "{:?}", feed.entries);
}

/// A `sub` revocation's first pass can find a session listed in the user's set that a login
/// has not written yet (its LOGIN half done, its OPEN_SESSION not); the login's own check
/// after its commit can come before the revocation's entry. The second pass, after the entry,
/// must then mark it — it skipped every listed session as marked, so the session lived on —
/// and write its `sid` entry: refreshed in between, it holds a token the `sub` entry does not
/// cover. The revocation's steps, in that order.
#[tokio::test]
async fn redis_sub_revocation_marks_a_session_opened_between_its_passes() {
    use crate::store::contract::{login, rotate_of};
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let mut side = side_connection(&redis).await;
    let (sub, sid, now, issued_before) = ("u-c5", "s-c5", 50_i64, 61_i64);
    let reach = SubReach {
        issued_before,
        sessions: SubSessions::CreatedBefore,
    };
    // The login's first half: the sid listed in the user's set, the session not written.
    let _: () = redis::cmd("SADD")
        .arg(store.key(&keys::sub_sessions(sub)))
        .arg(sid)
        .query_async(&mut side)
        .await
        .unwrap();
    // The revocation's first pass: nothing to mark yet.
    let mut marked = HashSet::new();
    store
        .mark_user_sessions(sub, 60, reach, &mut marked)
        .await
        .unwrap();
    // The login completes; its check finds no entry yet.
    store.login(&login("c5", "o5", None, now)).await.unwrap();
    let facts = store.revocation_facts("", sid, sub).await.unwrap();
    assert!(!rules::is_revoked(&facts, now));
    // The revocation's entry, then its second pass.
    store
        .append_entry_as(EntryKind::Sub, sub, Some(issued_before), 2000, "c5-entry")
        .await
        .unwrap();
    // Refreshed meanwhile: an access token issued at 70, which the `sub` entry (issued before
    // 61) does not cover.
    let rotated = store
        .rotate_refresh(&rotate_of(sid, "r-c5", "r-c5b", 70, 0))
        .await
        .unwrap();
    assert!(
        matches!(rotated, RotateResult::Rotated { .. }),
        "{rotated:?}"
    );
    store
        .revoke_user_sessions(sub, 60, reach, 2000, &mut marked, false)
        .await
        .unwrap();
    // Created at 50, before issued_before 61: covered, so marked, so no refresh.
    let session = store.session(sid).await.unwrap().unwrap();
    assert!(
        session.revoked_at.is_some(),
        "the covered session was never marked"
    );
    let rotated = store
        .rotate_refresh(&rotate_of(sid, "r-c5b", "r-c5c", 71, 0))
        .await
        .unwrap();
    assert!(matches!(rotated, RotateResult::Invalid(_)), "{rotated:?}");
    // And its own `sid` entry is in the feed, for the token issued at 70.
    let feed = crate::feed::revocation::read(&store, 0, 71, 100)
        .await
        .unwrap();
    assert!(
        feed.entries
            .iter()
            .any(|entry| entry.kind == EntryKind::Sid && entry.value == sid),
        "no sid entry for the session the second pass revoked: {:?}",
        feed.entries
    );
}

/// A `sub` revocation cut short between its marks and its sessions' `sid` entries (a crash, a
/// failover), then retried by the admin: the retry finds the sessions already revoked and
/// still writes their `sid` entries (it wrote only the `sub` one, leaving the sessions' newer
/// tokens to pass the edge).
#[tokio::test]
async fn redis_sub_revocation_retried_after_a_cut_writes_the_sessions_entries() {
    use crate::store::contract::login;
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    assert!(matches!(
        store.login(&login("cut", "o-cut", None, 10)).await.unwrap(),
        LoginResult::Created { .. }
    ));
    // The cut attempt: its first pass marked the session, then nothing.
    let mark = store
        .mark_session(
            "s-cut",
            30,
            None,
            Some(SubReach {
                issued_before: 20,
                sessions: SubSessions::CreatedBefore,
            }),
            None,
        )
        .await
        .unwrap();
    assert_eq!(mark, super::revoke::Mark::Revoked);
    // The retry.
    store
        .revoke(
            &Revoke::Sub {
                sub: "u-cut".into(),
                issued_before: 20,
                sessions: SubSessions::CreatedBefore,
            },
            31,
            1000,
        )
        .await
        .unwrap();
    let kinds = crate::store::contract::feed_pairs(&store, 31).await;
    assert_eq!(
        kinds,
        vec![
            (EntryKind::Sid, "s-cut".to_string()),
            (EntryKind::Sub, "u-cut".to_string())
        ]
    );
    // Again: the session's entry is in the feed now, no second one.
    store
        .revoke(
            &Revoke::Sub {
                sub: "u-cut".into(),
                issued_before: 20,
                sessions: SubSessions::CreatedBefore,
            },
            32,
            1000,
        )
        .await
        .unwrap();
    let sids = store
        .feed_snapshot(0, 32, 100)
        .await
        .unwrap()
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Sid)
        .count();
    assert_eq!(sids, 1);
}
