//! Scripts sent again: the cluster client resends a command on a new connection when the
//! first one's answer was lost, so one call's script can run twice; and scripts of an earlier
//! release run beside this one's during a rolling upgrade.

use super::*;

/// The cluster client sends a command again on a new connection when the first one's reply
/// was lost, so a script can run twice for one call. The login's and the rotation's answer as
/// their first run did: a login's second run found its own code spent ("code already used"
/// for a login that was made, and no session opened); a rotation's second run found its own
/// rotation a second use of the token (with a grace of 0 the session was then revoked).
#[tokio::test]
async fn redis_login_and_rotation_scripts_run_twice_answer_as_the_first_run() {
    use crate::store::contract::{login, rotate_of};
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let made = login("twice", "o-twice", None, 10);
    for run in ["first", "second"] {
        let result = store.login(&made).await.unwrap();
        assert!(
            matches!(&result, LoginResult::Created { sub, .. } if sub == "u-twice"),
            "{run} run: {result:?}"
        );
    }
    assert!(store.session("s-twice").await.unwrap().is_some());
    let rotation = rotate_of("s-twice", "r-twice", "r-next", 11, 0);
    for run in ["first", "second"] {
        let rotated = store
            .rotate_cas(&rotation, "s-twice", 111, None, "call-1")
            .await
            .unwrap();
        assert!(
            matches!(
                rotated,
                Some(RotateResult::Rotated {
                    repeat: false,
                    refresh_expires: 111,
                    ..
                })
            ),
            "{run} run: {rotated:?}"
        );
    }
    // Another call presenting the used token is still a second use, though it names the
    // same successor (every rotation of a token does).
    let other = rotate_of("s-twice", "r-twice", "r-next", 12, 0);
    assert_eq!(
        store
            .rotate_cas(&other, "s-twice", 112, None, "call-2")
            .await
            .unwrap(),
        None
    );
    let session = store.session("s-twice").await.unwrap().unwrap();
    assert!(session.revoked_at.is_none(), "{session:?}");
}

/// During a rolling upgrade a web login's state taken by this release is not taken again by a
/// replica of an earlier one, which takes by name alone: the state taken was kept under its
/// name, marked with its taker, and the release before the mark (deleting what it takes)
/// took it a second time within 60 s — as did the release that marked in place, from a
/// take of this one.
#[tokio::test]
async fn redis_state_taken_is_not_taken_again_by_an_earlier_release() {
    const BEFORE_THE_MARK: &str = r"
local f = redis.call('HMGET', KEYS[1], 'v', 'exp')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if not f[1] then return false end
if tonumber(f[2]) <= tonumber(ARGV[1]) then return false end
return f[1]";
    const MARKED_IN_PLACE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'v', 'exp', 'taken_by')
if not f[1] then return false end
if f[3] then
  if f[3] == ARGV[3] then return f[1] end
  return false
end
if tonumber(f[2]) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('HSET', KEYS[1], 'taken_by', ARGV[3])
redis.call('EXPIRE', KEYS[1], 60)
return f[1]";
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let side = side_connection(&redis).await;
    let (name, index) = (store.key(&keys::ephemeral("st")), store.key(keys::EPH_EXP));
    // A take as an earlier release's script does it, for another call.
    let take_as = |script: &'static str| {
        let (name, index, mut side) = (name.clone(), index.clone(), side.clone());
        async move {
            let taken: Option<Vec<u8>> = redis::Script::new(script)
                .key(&name)
                .key(&index)
                .arg(100)
                .arg("st")
                .arg("take-old")
                .invoke_async(&mut side)
                .await
                .unwrap();
            taken
        }
    };
    for (earlier, taker) in [(BEFORE_THE_MARK, "take-1"), (MARKED_IN_PLACE, "take-2")] {
        store.put_ephemeral("st", b"pending", 200).await.unwrap();
        assert_eq!(
            store.take_ephemeral_as("st", 100, taker).await.unwrap(),
            Some(b"pending".to_vec())
        );
        assert_eq!(take_as(earlier).await, None, "taken again by {earlier}");
        assert_eq!(
            store.take_ephemeral_as("st", 100, taker).await.unwrap(),
            Some(b"pending".to_vec()),
            "the take sent again"
        );
    }
    // A state an earlier release marked in place is still not given to another taker.
    store.put_ephemeral("st", b"marked", 200).await.unwrap();
    take_as(MARKED_IN_PLACE).await;
    assert_eq!(
        store.take_ephemeral_as("st", 100, "take-3").await.unwrap(),
        None
    );
}

/// As above for the other scripts whose second run answered otherwise: a web login's state
/// taken (the second run found it gone: the callback failed 400 with the login made nowhere),
/// an unban's guarded lift (the second run found its own lift a changed ban: 409 for an unban
/// applied) and a reuse's guarded mark. Another call still gets nothing, `Changed`, or a
/// failed guard.
#[tokio::test]
async fn redis_take_guarded_write_and_mark_scripts_run_twice_answer_as_the_first_run() {
    use super::store::ban_fields;
    use crate::store::contract::login;
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    store.put_ephemeral("st", b"pending", 200).await.unwrap();
    for run in ["first", "second"] {
        assert_eq!(
            store.take_ephemeral_as("st", 100, "take-1").await.unwrap(),
            Some(b"pending".to_vec()),
            "{run} run"
        );
    }
    assert_eq!(
        store.take_ephemeral_as("st", 100, "take-2").await.unwrap(),
        None
    );
    assert_eq!(store.take_ephemeral("st", 100).await.unwrap(), None);
    // Put again after a take: a new value, taken once.
    store.put_ephemeral("st", b"again", 200).await.unwrap();
    assert_eq!(
        store.take_ephemeral("st", 100).await.unwrap(),
        Some(b"again".to_vec())
    );
    assert_eq!(store.take_ephemeral("st", 100).await.unwrap(), None);

    assert!(matches!(
        store.login(&login("gw", "o-gw", None, 10)).await.unwrap(),
        LoginResult::Created { .. }
    ));
    let ban = Ban {
        created_at: 11,
        until: None,
        reason: Some("r".into()),
    };
    assert!(store.set_ban("u-gw", Some(&ban), 11).await.unwrap());
    let (expected, lifted) = (ban_fields(Some(&ban)), ban_fields(None));
    for run in ["first", "second"] {
        assert_eq!(
            store
                .set_user_fields_as("u-gw", 12, &expected, &lifted, "unban-1")
                .await
                .unwrap(),
            BanWrite::Written,
            "{run} run"
        );
    }
    assert_eq!(
        store
            .set_user_fields_as("u-gw", 13, &expected, &lifted, "unban-2")
            .await
            .unwrap(),
        BanWrite::Changed,
        "another unban of the lifted ban"
    );
    assert_eq!(store.grants("u-gw").await.unwrap().unwrap().ban, None);

    // A reuse's guarded mark: its second run finds its own mark, not a session revoked before
    // (which made the reuse go uncounted and unlogged, answered as an ended session).
    use super::revoke::Mark;
    for run in ["first", "second"] {
        assert_eq!(
            store
                .mark_session("s-gw", 14, Some("reuse-1"), None, Some(100))
                .await
                .unwrap(),
            Mark::Revoked,
            "{run} run"
        );
    }
    assert_eq!(
        store
            .mark_session("s-gw", 15, Some("reuse-2"), None, Some(100))
            .await
            .unwrap(),
        Mark::GuardFailed,
        "another call's guard"
    );
}

/// A revocation's REVOKE run twice for one call (its answer lost) appends its entry once and
/// answers it both times: the second run appended the entry again under a new seq (harmless
/// to an edge, which applies it twice as once, but a feed that grew by a copy per resend).
/// Another call appends its own.
#[tokio::test]
async fn redis_revoke_script_run_twice_appends_one_entry() {
    use weauth_token::revocation::EntryKind;
    let redis = TestRedis::new().await;
    let store = RedisStore::connect(redis.options()).await.unwrap();
    let first = store
        .append_entry_as(EntryKind::Jti, "j-twice", None, 500, "call-1")
        .await
        .unwrap();
    let again = store
        .append_entry_as(EntryKind::Jti, "j-twice", None, 500, "call-1")
        .await
        .unwrap();
    assert_eq!(again, first);
    let other = store
        .append_entry_as(EntryKind::Jti, "j-twice", None, 500, "call-2")
        .await
        .unwrap();
    assert_ne!(other, first);
    let feed = store.feed_snapshot(0, 100, 10).await.unwrap();
    assert_eq!(feed.entries.len(), 2, "{:?}", feed.entries);
}
