//! One in-memory copy of the recent revocation feed per replica, so a feed answer costs no
//! store read: the copy follows the store (one delta read per new seq, shared by every long
//! poll woken by it), and [`FeedCache::answer`] serves every subscriber from it with the same
//! paging and `full` rules as [`crate::revocation::read`].
//!
//! The copy holds the live entries (`until >= now` at the last refresh), the store's current
//! seq and its purge watermark. A refresh is serialized: when 10 000 long polls wake for one
//! revocation, the first reads the delta and the others find the copy already fresh.

use std::sync::{Arc, RwLock};

use weauth_token::revocation::{Entry, FeedResponse};

use crate::revocation::{self, feed_is_full, FEED_PAGE_ENTRIES};
use crate::store::{FeedSnapshot, Store, StoreError};

#[derive(Debug, Default)]
struct Copy {
    /// Highest seq the copy has caught up with (0: never loaded).
    current: u64,
    purged_through: u64,
    /// Live entries in seq order.
    entries: Vec<Entry>,
}

/// The replica's copy of the feed.
#[derive(Default)]
pub struct FeedCache {
    copy: RwLock<Arc<Copy>>,
    refresh: tokio::sync::Mutex<()>,
}

impl FeedCache {
    /// An empty copy (loaded on first use).
    pub fn new() -> FeedCache {
        FeedCache::default()
    }

    fn snapshot(&self) -> Arc<Copy> {
        match self.copy.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The seq the copy has caught up with.
    pub fn current(&self) -> u64 {
        self.snapshot().current
    }

    /// Makes sure the copy has caught up with at least `seq` (reading the delta from `store`
    /// once if not), dropping entries expired at `now`.
    ///
    /// # Errors
    /// Store failures (the copy stays as it was).
    pub async fn catch_up(&self, store: &dyn Store, seq: u64, now: i64) -> Result<(), StoreError> {
        if self.current() >= seq.max(1) {
            return Ok(());
        }
        let _refreshing = self.refresh.lock().await;
        if self.current() >= seq.max(1) {
            return Ok(());
        }
        self.reload(store, now).await
    }

    /// Reads the delta (and the purge watermark) now, whatever the copy's seq: after this
    /// replica purged, so readers below the new watermark start over as the store says.
    ///
    /// # Errors
    /// Store failures (the copy stays as it was).
    pub async fn refresh(&self, store: &dyn Store, now: i64) -> Result<(), StoreError> {
        let _refreshing = self.refresh.lock().await;
        self.reload(store, now).await
    }

    async fn reload(&self, store: &dyn Store, now: i64) -> Result<(), StoreError> {
        let old = self.snapshot();
        let mut cursor = old.current;
        let mut entries: Vec<Entry> = old
            .entries
            .iter()
            .filter(|e| e.until >= now)
            .cloned()
            .collect();
        let (current, purged_through) = loop {
            let snap = store.feed_snapshot(cursor, now, FEED_PAGE_ENTRIES).await?;
            if cursor != 0 && feed_is_full(cursor, snap.current, snap.purged_through) {
                // Purged past the copy, or another store: start over.
                cursor = 0;
                entries.clear();
                continue;
            }
            let page_full = snap.entries.len() >= FEED_PAGE_ENTRIES;
            if let Some(last) = snap.entries.last() {
                cursor = last.seq;
            }
            entries.extend(snap.entries);
            if !page_full {
                break (snap.current, snap.purged_through);
            }
        };
        let fresh = Arc::new(Copy {
            current,
            purged_through,
            entries,
        });
        match self.copy.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// The answer for a reader at `since` at `now`, from the copy (see
    /// [`revocation::read`] for the rules), or `None` before the first load.
    pub fn answer(&self, since: u64, now: i64, limit: usize) -> Option<FeedResponse> {
        let copy = self.snapshot();
        if copy.current == 0 {
            return None;
        }
        let full = feed_is_full(since, copy.current, copy.purged_through);
        let after = if full { 0 } else { since };
        let start = copy.entries.partition_point(|e| e.seq <= after);
        let entries: Vec<Entry> = copy.entries[start..]
            .iter()
            .filter(|e| e.until >= now)
            .take(limit)
            .cloned()
            .collect();
        Some(revocation::page(
            FeedSnapshot {
                current: copy.current,
                purged_through: copy.purged_through,
                entries,
            },
            full,
            limit,
            now,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::Backend;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Revoke;

    struct Db(std::path::PathBuf);

    impl Drop for Db {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[async_trait::async_trait]
    impl Backend for Db {
        async fn handle(&self) -> Arc<dyn Store> {
            Arc::new(SqliteStore::open(&self.0.join("t.db")).unwrap())
        }
    }

    fn db() -> Db {
        let dir =
            std::env::temp_dir().join(format!("weauth-feed-{}", crate::secrets::random_b64(6)));
        std::fs::create_dir_all(&dir).unwrap();
        Db(dir)
    }

    #[tokio::test]
    async fn feed_cache_answers_like_the_store() {
        let db = db();
        let store = db.handle().await;
        let cache = FeedCache::new();
        assert!(cache.answer(0, 10, 100).is_none());
        let mut last = 0;
        for i in 0..5 {
            last = store
                .revoke(&Revoke::Jti(format!("j{i}")), 10, 20 + i)
                .await
                .unwrap()
                .seq;
        }
        cache.catch_up(store.as_ref(), last, 10).await.unwrap();
        for (since, now, limit) in [
            (0, 10, 100),
            (0, 10, 2),
            (3, 10, 2),
            (4, 22, 100),
            (99, 10, 100),
        ] {
            assert_eq!(
                cache.answer(since, now, limit).unwrap(),
                revocation::read(store.as_ref(), since, now, limit)
                    .await
                    .unwrap(),
                "since={since} now={now} limit={limit}"
            );
        }
    }

    #[tokio::test]
    async fn feed_cache_catch_up_reads_only_the_delta_and_follows_purges() {
        let db = db();
        let store = db.handle().await;
        let cache = FeedCache::new();
        let a = store
            .revoke(&Revoke::Jti("a".into()), 10, 20)
            .await
            .unwrap();
        cache.catch_up(store.as_ref(), a.seq, 10).await.unwrap();
        let b = store
            .revoke(&Revoke::Jti("b".into()), 10, 50)
            .await
            .unwrap();
        assert_eq!(cache.current(), a.seq, "not caught up until asked");
        cache.catch_up(store.as_ref(), b.seq, 10).await.unwrap();
        assert_eq!(
            cache.answer(a.seq, 10, 100).unwrap().entries,
            vec![b.clone()]
        );
        store.purge(30).await.unwrap();
        let c = store
            .revoke(&Revoke::Jti("c".into()), 30, 50)
            .await
            .unwrap();
        cache.catch_up(store.as_ref(), c.seq, 30).await.unwrap();
        for since in [0, a.seq - 1, a.seq, b.seq] {
            assert_eq!(
                cache.answer(since, 30, 100).unwrap(),
                revocation::read(store.as_ref(), since, 30, 100)
                    .await
                    .unwrap(),
                "since={since}"
            );
        }
    }
}
