//! The contract of the other records: the WeChat token lease, signing keys, user facts,
//! grants and bans, ephemeral values.

use super::*;

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
    // A put by a holder whose lease was taken writes nothing (the new holder's token is not
    // overwritten by an older one) and keeps the current holder's lease.
    assert!(!store
        .put_wechat_token("wx1", &cached("h2"), "a")
        .await
        .unwrap());
    assert_eq!(store.wechat_token("wx1").await.unwrap(), Some(cached("h1")));
    assert!(!store
        .lease_wechat_token("wx1", "c", 102, 112)
        .await
        .unwrap());
    assert!(store
        .put_wechat_token("wx1", &cached("h3"), "b")
        .await
        .unwrap());
    assert_eq!(store.wechat_token("wx1").await.unwrap(), Some(cached("h3")));
    // Released by that put: another may take the lease at once.
    assert!(store
        .lease_wechat_token("wx1", "c", 102, 112)
        .await
        .unwrap());
    // The holder writes, its lease lapsed or not (nobody took it since).
    assert!(store
        .put_wechat_token("wx1", &cached("h4"), "c")
        .await
        .unwrap());
    assert_eq!(store.wechat_token("wx1").await.unwrap(), Some(cached("h4")));
}

pub async fn wechat_invalidate_only_matching_hash(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert!(store
        .lease_wechat_token("wx1", "a", 100, 110)
        .await
        .unwrap());
    assert!(store
        .put_wechat_token("wx1", &cached("h2"), "a")
        .await
        .unwrap());
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

/// An erased (retired) key keeps its record without its material, and its kid cannot be
/// inserted again: a retired key never comes back.
pub async fn keys_insert_existing_kid_ignored_and_erase(backend: &dyn Backend) {
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
    store.erase_keys(&["k1".to_string()]).await.unwrap();
    let erased = KeyRecord {
        sealed: Vec::new(),
        ..key("k1", 100)
    };
    assert_eq!(
        store.keys().await.unwrap(),
        vec![erased.clone(), key("k2", 200)]
    );
    assert!(!store.insert_key(&key("k1", 300), None).await.unwrap());
    store
        .erase_keys(&["k1".to_string(), "gone".to_string()])
        .await
        .unwrap();
    assert_eq!(store.keys().await.unwrap(), vec![erased, key("k2", 200)]);
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

/// A data-key reseal's two operations: every user's sealed phone number read page by page,
/// whatever the page size (small pages take several, each page's cursor followed; a user may
/// come twice only on Redis, whose `SCAN` allows it), and one replaced only while it is still
/// the value read.
pub async fn phones_paged_and_resealed_only_while_unchanged(backend: &dyn Backend) {
    let store = backend.handle().await;
    for n in 1..=6 {
        let name = format!("p{n}");
        created(
            &store
                .login(&login(&name, &format!("o-{name}"), None, 10))
                .await
                .unwrap(),
        );
        if n <= 5 {
            assert!(store
                .set_phone(&format!("u-{name}"), Some(&format!("sealed-{n}")), 11)
                .await
                .unwrap());
        }
    }
    let expected: std::collections::BTreeMap<String, String> = (1..=5)
        .map(|n| (format!("u-p{n}"), format!("sealed-{n}")))
        .collect();
    for limit in [1, 2, 500] {
        let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0);
        loop {
            let (page, next) = store
                .phones_page(cursor.as_deref().unwrap_or(""), limit)
                .await
                .unwrap();
            seen.extend(page);
            pages += 1;
            assert!(pages < 1_000, "no end to the pages of {limit}");
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        if limit == 1 {
            assert!(pages > 1, "one page of {limit}");
        }
        let distinct: std::collections::BTreeMap<String, String> = seen.iter().cloned().collect();
        assert_eq!(distinct, expected, "pages of {limit}");
        if !backend.scan_may_repeat() {
            assert_eq!(seen.len(), expected.len(), "a user twice: {seen:?}");
        }
    }
    assert!(!store
        .reseal_phone("u-p1", "sealed-2", "resealed")
        .await
        .unwrap());
    assert!(store
        .reseal_phone("u-p1", "sealed-1", "resealed-1")
        .await
        .unwrap());
    assert_eq!(
        store.user("u-p1").await.unwrap().unwrap().phone.as_deref(),
        Some("resealed-1")
    );
    assert!(!store.reseal_phone("u-p6", "", "resealed").await.unwrap());
    assert_eq!(store.user("u-p6").await.unwrap().unwrap().phone, None);
    assert!(!store.reseal_phone("nobody", "x", "resealed").await.unwrap());
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

/// An unban lifts the ban it read, never another: the write is conditional on every field of
/// the ban, and a ban set, replaced or lifted since is left as it is.
pub async fn grants_ban_set_if_only_while_it_is_the_one_expected(backend: &dyn Backend) {
    let store = backend.handle().await;
    assert_eq!(
        store
            .set_ban_if("nobody", None, Some(&ban(1, None, None)), 1)
            .await
            .unwrap(),
        BanWrite::UnknownUser
    );
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    assert!(store.set_scopes("u-c1", &scopes(&["x"]), 11).await.unwrap());
    let first = ban(12, Some(99), Some("first"));
    assert!(store.set_ban("u-c1", Some(&first), 12).await.unwrap());
    // Another ban than the one there, by any field, or none: nothing written.
    for other in [
        Some(ban(13, Some(99), Some("first"))),
        Some(ban(12, None, Some("first"))),
        Some(ban(12, Some(98), Some("first"))),
        Some(ban(12, Some(99), None)),
        Some(ban(12, Some(99), Some("second"))),
        None,
    ] {
        assert_eq!(
            store
                .set_ban_if("u-c1", other.as_ref(), None, 14)
                .await
                .unwrap(),
            BanWrite::Changed,
            "{other:?}"
        );
        assert_eq!(
            store.grants("u-c1").await.unwrap().unwrap().ban,
            Some(first.clone())
        );
    }
    assert_eq!(
        store
            .set_ban_if("u-c1", Some(&first), None, 15)
            .await
            .unwrap(),
        BanWrite::Written
    );
    let grants = store.grants("u-c1").await.unwrap().unwrap();
    assert_eq!((grants.ban, grants.scopes), (None, scopes(&["x"])));
    // Lifted already: the same lift again is a change, not a success.
    assert_eq!(
        store
            .set_ban_if("u-c1", Some(&first), None, 16)
            .await
            .unwrap(),
        BanWrite::Changed
    );
    // From no ban, a ban (and no ban expected with one there: refused).
    let second = ban(17, None, None);
    assert_eq!(
        store
            .set_ban_if("u-c1", None, Some(&second), 17)
            .await
            .unwrap(),
        BanWrite::Written
    );
    assert_eq!(
        store.grants("u-c1").await.unwrap().unwrap().ban,
        Some(second)
    );
}

/// An unban's conditional lift racing a new ban from another replica: whichever comes first,
/// the new ban is what stays (the lift either came first, then the ban replaced nothing, or
/// found the new ban and left it).
pub async fn grants_ban_lift_racing_a_new_ban_never_lifts_it(backend: &dyn Backend) {
    let store = backend.handle().await;
    created(&store.login(&login("c1", "o1", None, 10)).await.unwrap());
    for i in 0..50 {
        let (old, new) = (
            ban(100 + i, None, Some("old")),
            ban(100 + i, None, Some("new")),
        );
        assert!(store.set_ban("u-c1", Some(&old), 100 + i).await.unwrap());
        let (a, b) = (Arc::clone(&store), backend.handle().await);
        let banning = {
            let new = new.clone();
            tokio::spawn(async move { a.set_ban("u-c1", Some(&new), 100 + i).await.unwrap() })
        };
        let lifting = tokio::spawn(async move {
            b.set_ban_if("u-c1", Some(&old), None, 100 + i)
                .await
                .unwrap()
        });
        let (banned, lift) = (banning.await.unwrap(), lifting.await.unwrap());
        assert!(banned);
        assert_ne!(lift, BanWrite::UnknownUser);
        assert_eq!(
            store.grants("u-c1").await.unwrap().unwrap().ban,
            Some(new),
            "round {i}: the new ban was lifted ({lift:?})"
        );
    }
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
        store
            .refresh_owner(family("s-c1"), "r-c1")
            .await
            .unwrap()
            .as_deref(),
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
        store
            .refresh_owner(family("s-c1"), "r-c1")
            .await
            .unwrap()
            .as_deref(),
        Some("u-c1"),
        "a used token still names its owner"
    );
    assert_eq!(
        store
            .refresh_owner(family("s-c1"), "r-c1b")
            .await
            .unwrap()
            .as_deref(),
        Some("u-c1")
    );
    assert_eq!(
        store
            .refresh_owner(family("s-c1"), "r-unknown")
            .await
            .unwrap(),
        None
    );
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
