//! One in-memory copy of the recent revocation feed per replica, so a feed answer costs no
//! store read: the copy follows the store (one delta read per new seq, shared by every long
//! poll woken by it), and [`FeedCache::answer`] serves every subscriber from it with the same
//! paging and `full` rules as [`crate::feed::revocation::read`].
//!
//! The copy ([`copy::FeedCopy`]) holds the live entries in shared chunks (a new seq costs
//! what its delta costs; expired entries are dropped at most a minute late, never answered),
//! the store's current seq and its purge watermark. A refresh is serialized: when 10 000 long polls wake for one
//! revocation, the first reads the delta and the others find the copy already fresh; and the
//! serialized answer is kept ([`FeedCache::answer_body`]), so the polls woken together, which
//! ask with the same `since`, share one body.
//!
//! **Coalescing.** Without a bound, every revocation costs one answer and one new request per
//! held poll: at 10 000 sidecars and 100 revocations per second that is a million answers a
//! second. [`pace`] bounds it: after a wake, the next one waits for a window of
//! `held polls ÷ WEAUTH_FEED_ANSWER_RATE` (default 10 000 answers per second), at most
//! `WEAUTH_FEED_COALESCE` (default 250 ms) — see [`Pacing::window`]. The first change after a
//! quiet window goes out at once; changes within the window go out together when it ends. So a
//! replica sends at most about `WEAUTH_FEED_ANSWER_RATE` answers per second whatever the
//! revocation rate (more only when the cap cuts the window short), a few held polls are
//! answered at once (a window of microseconds), and a revocation waits at most
//! `WEAUTH_FEED_COALESCE` for its wake. A request that does not wait (`wait=0`), or whose
//! `since` is behind the last wake, is answered at once; a long poll coming back at the wake it
//! was answered by waits for the next one, even when the replica knows of more already (else a
//! sidecar would loop at the revocation rate, one answer per revocation landing during its
//! round trip). Either way the answer comes from a copy caught up to every seq the replica
//! knows of: pacing delays answers, never what they say (a read after an acknowledged
//! revocation sees it).

pub mod copy;
pub mod revocation;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;
use weauth_token::revocation::FeedResponse;

use self::copy::{Delta, FeedCopy};
use self::revocation::{feed_is_full, FEED_PAGE_ENTRIES};
use crate::store::{Store, StoreError};

/// What [`FeedCache::answer_body`] depends on: two calls with the same key give the same body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BodyKey {
    /// The copy the answer was made from (`Arc::as_ptr`; a new copy is a new allocation,
    /// and the cache holds the copy alive, so the address is not reused while cached).
    copy: usize,
    /// Entries after this seq (0 for a full answer).
    after: u64,
    full: bool,
    now: i64,
    limit: usize,
}

/// A serialized feed answer and what the long poll decides on.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer's `seq`.
    pub seq: u64,
    /// The caller must start over.
    pub full: bool,
    /// The answer carries entries.
    pub has_entries: bool,
    /// The JSON body.
    pub body: Bytes,
}

impl Answer {
    /// `page`, serialized.
    pub fn of(page: &FeedResponse) -> Answer {
        Answer {
            seq: page.seq,
            full: page.full,
            has_entries: !page.entries.is_empty(),
            body: Bytes::from(serde_json::to_vec(page).unwrap_or_default()),
        }
    }
}

/// How many recent bodies are kept: the polls woken together share one `since`; a few slower
/// callers one or two behind.
const BODIES: usize = 4;

/// The replica's copy of the feed.
#[derive(Default)]
pub struct FeedCache {
    copy: RwLock<Arc<FeedCopy>>,
    refresh: tokio::sync::Mutex<()>,
    /// Recent serialized answers, newest last (with the copy each was made from).
    bodies: Mutex<Vec<(BodyKey, Arc<FeedCopy>, Answer)>>,
    /// Reads of the store begun so far (each [`Self::reload`]).
    reloads: std::sync::atomic::AtomicU64,
    /// The number (in [`Self::reloads`]) of the last read that succeeded.
    reloaded: std::sync::atomic::AtomicU64,
}

impl FeedCache {
    /// An empty copy (loaded on first use).
    pub fn new() -> FeedCache {
        FeedCache::default()
    }

    fn snapshot(&self) -> Arc<FeedCopy> {
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

    /// Reads the delta (and the purge watermark) from the store, whatever the copy's seq — or
    /// lets a read begun after this call do: a full answer (an edge starting) must hold every
    /// revocation acknowledged before it was asked for, and after this replica purged, readers
    /// below the new watermark start over as the store says. The calls that arrive together
    /// share the reads: a fleet of edges starting at once made a read of the store, a new copy
    /// and a serialization of the whole set for each edge, one after another under the lock.
    ///
    /// # Errors
    /// Store failures (the copy stays as it was).
    pub async fn refresh(&self, store: &dyn Store, now: i64) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let arrived = self.reloads.load(SeqCst);
        let _refreshing = self.refresh.lock().await;
        // Numbered past `arrived`: begun after this call, and done (the lock is ours).
        if self.reloaded.load(SeqCst) > arrived {
            return Ok(());
        }
        self.reload(store, now).await
    }

    /// How many times the copy has read the store.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One read of the store, under [`Self::refresh`]'s lock.
    async fn reload(&self, store: &dyn Store, now: i64) -> Result<(), StoreError> {
        let number = 1 + self
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let old = self.snapshot();
        let mut cursor = old.current;
        let mut delta = Delta::default();
        loop {
            let snap = store.feed_snapshot(cursor, now, FEED_PAGE_ENTRIES).await?;
            if cursor != 0 && feed_is_full(cursor, snap.current, snap.purged_through) {
                // Purged past the copy, or another store: start over.
                cursor = 0;
                delta = Delta {
                    restart: true,
                    ..Delta::default()
                };
                continue;
            }
            let page_full = snap.entries.len() >= FEED_PAGE_ENTRIES;
            if let Some(last) = snap.entries.last() {
                cursor = last.seq;
            }
            delta.entries.extend(snap.entries);
            if !page_full {
                (delta.current, delta.purged_through) = (snap.current, snap.purged_through);
                break;
            }
        }
        // A copy never loaded starts from the whole set.
        delta.restart |= old.current == 0;
        let fresh = Arc::new(old.caught_up(delta, now));
        match self.copy.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        self.reloaded
            .store(number, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The answer for a reader at `since` at `now`, from the copy (see
    /// [`revocation::read`] for the rules), or `None` before the first load.
    pub fn answer(&self, since: u64, now: i64, limit: usize) -> Option<FeedResponse> {
        let copy = self.snapshot();
        if copy.current == 0 {
            return None;
        }
        Some(copy.answer(since, now, limit))
    }

    /// [`FeedCache::answer`], serialized; the polls woken together, asking with the same
    /// `since` at the same second, get one shared body.
    pub fn answer_body(&self, since: u64, now: i64, limit: usize) -> Option<Answer> {
        let copy = self.snapshot();
        if copy.current == 0 {
            return None;
        }
        let full = feed_is_full(since, copy.current, copy.purged_through);
        let key = BodyKey {
            copy: Arc::as_ptr(&copy) as usize,
            after: if full { 0 } else { since },
            full,
            now,
            limit,
        };
        let mut bodies = match self.bodies.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((_, _, answer)) = bodies.iter().rev().find(|(k, _, _)| *k == key) {
            return Some(answer.clone());
        }
        let answer = Answer::of(&copy.answer(since, now, limit));
        if bodies.len() >= BODIES {
            bodies.remove(0);
        }
        bodies.push((key, copy, answer.clone()));
        Some(answer)
    }
}

pub use crate::config::Pacing;

impl Pacing {
    /// The window after a wake for `held` polls: long enough that waking them all once per
    /// window stays under `answers_per_sec`, at most `longest`.
    pub fn window(&self, held: usize) -> Duration {
        if self.answers_per_sec == 0 {
            return self.longest;
        }
        Duration::from_secs_f64(held as f64 / f64::from(self.answers_per_sec)).min(self.longest)
    }
}

/// When the next wake of the long polls may go out, for a change seen at `now`: at once if the
/// last wake went out at least `window` ago (or never), else when the window ends.
pub fn next_wake(last: Option<Instant>, now: Instant, window: Duration) -> Instant {
    match last {
        Some(last) if now < last + window => last + window,
        _ => now,
    }
}

/// Moves `wake` (what the long polls wait on) up to `known` (the highest seq this replica
/// knows of), paced by `pacing` for the `held` polls (see the module's doc); ends when
/// `shutdown` turns `true`.
pub async fn pace(
    mut known: watch::Receiver<u64>,
    wake: watch::Sender<u64>,
    pacing: Pacing,
    held: Arc<AtomicUsize>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = None;
    // The polls held when the last wake went out: right after a wake most of them are in
    // flight (answered, not yet back), and counting only those held would shrink the window.
    let mut held_at_wake = 0;
    loop {
        // The wake as it is at each change of `known`, not as it was when this wait began: it
        // may have been set back meanwhile ([`crate::app::App::forget_unstored_seq`]).
        tokio::select! {
            changed = known.wait_for(|seq| *seq > *wake.borrow()) => if changed.is_err() { return },
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
        }
        let window = pacing.window(held.load(Ordering::Relaxed).max(held_at_wake));
        let at = next_wake(last, Instant::now(), window);
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
        }
        let seq = *known.borrow();
        held_at_wake = held.load(Ordering::Relaxed);
        wake.send_if_modified(|current| {
            let newer = seq > *current;
            if newer {
                *current = seq;
            }
            newer
        });
        last = Some(Instant::now());
    }
}

/// The highest revocation seq this replica knows of (from its own writes, the store's
/// announcements and the feed reads); the feed's long polls are woken from it by [`pace`].
pub struct KnownSeq(watch::Sender<u64>);

impl KnownSeq {
    pub fn new(seq: u64) -> KnownSeq {
        KnownSeq(watch::channel(seq).0)
    }

    /// Records a new high-water mark (never moves back).
    pub fn advance(&self, seq: u64) {
        if *self.0.borrow() >= seq {
            // The common case at every feed answer: no write lock.
            return;
        }
        self.0.send_if_modified(|current| {
            if seq > *current {
                *current = seq;
                true
            } else {
                false
            }
        });
    }

    /// Moves the high-water mark back from `from` to `to` (the store's own seq, below it),
    /// unless it moved meanwhile; whether it did.
    pub fn set_back(&self, from: u64, to: u64) -> bool {
        self.0.send_if_modified(|current| {
            let back = *current == from && to < from;
            if back {
                *current = to;
            }
            back
        })
    }

    /// The current high-water mark.
    pub fn get(&self) -> u64 {
        *self.0.borrow()
    }

    /// Changes of the high-water mark (what [`pace`] follows).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
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

    /// The lifetime a replica keeps its keys and revocations for comes from every replica's
    /// reports: its own lifetime when longest, another's while that one's tokens can verify.
    /// A read (a revocation's) counts the reports without adding one of its own.
    #[tokio::test]
    async fn report_and_read_lifetime_return_the_longest_reported() {
        let db = db();
        let store = db.handle().await;
        let store = store.as_ref();
        let report = |ttl, now| revocation::report_lifetime(store, ttl, now);
        let read = |ttl, now| revocation::read_lifetime(store, ttl, now);
        // A replica issuing 3600 s tokens reports at 1000; this one issues 900 s tokens.
        assert_eq!(report(3600, 1000).await.unwrap(), 3600);
        assert_eq!(report(900, 1010).await.unwrap(), 3600);
        assert_eq!(read(300, 1010).await.unwrap(), 3600);
        // A longer own lifetime wins, and a read does not record it.
        assert_eq!(read(7200, 1010).await.unwrap(), 7200);
        assert_eq!(read(300, 1010).await.unwrap(), 3600);
        // Once the 3600 s tokens of the last report (plus a late report's period) are past.
        let past = 1000 + 2 * revocation::TTL_REPORT_EVERY.as_secs() as i64 + 3600;
        assert_eq!(report(900, past).await.unwrap(), 900);
        assert_eq!(read(300, past).await.unwrap(), 900);
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

    /// Full reads arriving together share the store's reads: each needs one begun after it
    /// arrived, not one of its own (a fleet of edges starting at once made a read, a copy and
    /// a serialization of the whole set per edge); a read after an acknowledged revocation
    /// still sees it.
    #[tokio::test]
    async fn refreshes_arriving_together_share_the_store_reads() {
        let db = db();
        let store = db.handle().await;
        let cache = Arc::new(FeedCache::new());
        for i in 0..3 {
            store
                .revoke(&Revoke::Jti(format!("j{i}")), 10, 20)
                .await
                .unwrap();
        }
        cache.refresh(store.as_ref(), 10).await.unwrap();
        let before = cache.reloads();
        // A read under way (its lock held) while the 100 arrive: each waits for the lock.
        let under_way = cache.refresh.lock().await;
        let together: Vec<_> = (0..100)
            .map(|_| {
                let (cache, store) = (Arc::clone(&cache), Arc::clone(&store));
                tokio::spawn(async move { cache.refresh(store.as_ref(), 10).await })
            })
            .collect();
        // One thread: the spawned calls run (and queue for the lock) while this one yields.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(under_way);
        for call in together {
            call.await.unwrap().unwrap();
        }
        let reads = cache.reloads() - before;
        assert_eq!(reads, 1, "{reads} reads for 100 refreshes");
        let late = store
            .revoke(&Revoke::Jti("late".into()), 10, 20)
            .await
            .unwrap();
        cache.refresh(store.as_ref(), 10).await.unwrap();
        assert_eq!(cache.current(), late.seq);
        // Alone, a call makes its own read.
        assert_eq!(cache.reloads() - before, reads + 1);
    }

    #[tokio::test]
    async fn answer_body_is_the_answer_serialized_and_shared_by_the_same_since() {
        let db = db();
        let store = db.handle().await;
        let cache = FeedCache::new();
        let mut last = 0;
        for i in 0..3 {
            last = store
                .revoke(&Revoke::Jti(format!("j{i}")), 10, 20)
                .await
                .unwrap()
                .seq;
        }
        cache.catch_up(store.as_ref(), last, 10).await.unwrap();
        for since in [0, 1, last, last + 5] {
            let answer = cache.answer_body(since, 10, 100).unwrap();
            let page = cache.answer(since, 10, 100).unwrap();
            let parsed: FeedResponse = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(parsed, page, "since={since}");
            assert_eq!(
                (answer.seq, answer.full, answer.has_entries),
                (page.seq, page.full, !page.entries.is_empty())
            );
        }
        let a = cache.answer_body(1, 10, 100).unwrap();
        let b = cache.answer_body(1, 10, 100).unwrap();
        assert_eq!(a.body.as_ptr(), b.body.as_ptr(), "one body for one since");
        // A new copy, a new second or another limit is another body.
        let next = store
            .revoke(&Revoke::Jti("late".into()), 10, 20)
            .await
            .unwrap()
            .seq;
        cache.catch_up(store.as_ref(), next, 10).await.unwrap();
        let c = cache.answer_body(1, 10, 100).unwrap();
        assert_eq!(c.seq, next);
        assert_ne!(c.body, a.body);
        assert!(!cache.answer_body(1, 21, 100).unwrap().has_entries);
        assert_eq!(
            serde_json::from_slice::<FeedResponse>(&cache.answer_body(1, 10, 1).unwrap().body)
                .unwrap()
                .entries
                .len(),
            1
        );
    }

    #[test]
    fn next_wake_goes_at_once_after_a_quiet_window_and_else_at_its_end() {
        let t0 = Instant::now();
        let w = Duration::from_millis(250);
        assert_eq!(next_wake(None, t0, w), t0);
        assert_eq!(next_wake(Some(t0), t0 + w, w), t0 + w);
        assert_eq!(
            next_wake(Some(t0), t0 + Duration::from_secs(3), w),
            t0 + Duration::from_secs(3)
        );
        assert_eq!(
            next_wake(Some(t0), t0 + Duration::from_millis(10), w),
            t0 + w
        );
        assert_eq!(next_wake(Some(t0), t0, Duration::ZERO), t0);
    }

    #[test]
    fn pacing_window_grows_with_held_polls_up_to_the_cap() {
        let pacing = Pacing {
            longest: Duration::from_millis(250),
            answers_per_sec: 20_000,
        };
        assert_eq!(pacing.window(0), Duration::ZERO);
        assert_eq!(pacing.window(1), Duration::from_micros(50));
        assert_eq!(pacing.window(1_000), Duration::from_millis(50));
        assert_eq!(pacing.window(5_000), Duration::from_millis(250));
        assert_eq!(pacing.window(50_000), Duration::from_millis(250));
        let off = Pacing {
            longest: Duration::ZERO,
            ..pacing
        };
        assert_eq!(off.window(50_000), Duration::ZERO);
        let fixed = Pacing {
            answers_per_sec: 0,
            ..pacing
        };
        assert_eq!(fixed.window(1), Duration::from_millis(250));
    }

    /// Records the instants at which `wake` moved, and to what, with `held` polls held.
    async fn wakes_held(changes: &[(u64, u64)], pacing: Pacing, held: usize) -> Vec<(u64, u64)> {
        let start = Instant::now();
        let (known_tx, known_rx) = watch::channel(0u64);
        let (wake_tx, mut wake_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let held = Arc::new(AtomicUsize::new(held));
        let pacer = tokio::spawn(pace(known_rx, wake_tx, pacing, held, stop_rx));
        let changes = changes.to_vec();
        let writer = tokio::spawn(async move {
            for (at_ms, seq) in changes {
                tokio::time::sleep_until(start + Duration::from_millis(at_ms)).await;
                known_tx.send_replace(seq);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(known_tx);
        });
        let mut seen = Vec::new();
        while let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), wake_rx.changed()).await
        {
            let at = (Instant::now() - start).as_millis() as u64;
            seen.push((at, *wake_rx.borrow_and_update()));
        }
        writer.await.unwrap();
        stop_tx.send_replace(true);
        pacer.await.unwrap();
        seen
    }

    /// [`wakes_held`] with a window of `window` whatever the polls held.
    async fn wakes_for(changes: &[(u64, u64)], window: Duration) -> Vec<(u64, u64)> {
        let pacing = Pacing {
            longest: window,
            answers_per_sec: 0,
        };
        wakes_held(changes, pacing, 1).await
    }

    #[tokio::test(start_paused = true)]
    async fn pace_window_follows_the_polls_held() {
        let pacing = Pacing {
            longest: Duration::from_millis(250),
            answers_per_sec: 20_000,
        };
        let burst = [(0, 1), (10, 2), (20, 3), (30, 4)];
        // One held poll: a window of 50 µs, every change wakes at once.
        let seen = wakes_held(&burst, pacing, 1).await;
        assert_eq!(seen, vec![(0, 1), (10, 2), (20, 3), (30, 4)]);
        // 1 000 held polls: 50 ms.
        let seen = wakes_held(&burst, pacing, 1_000).await;
        assert_eq!(seen, vec![(0, 1), (50, 4)]);
        // 10 000: capped at 250 ms.
        let seen = wakes_held(&burst, pacing, 10_000).await;
        assert_eq!(seen, vec![(0, 1), (250, 4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn pace_wakes_at_once_then_at_most_once_per_window() {
        let w = Duration::from_millis(250);
        // A lone change goes out at once; a burst within the window after it goes out as
        // one wake at the window's end, carrying the burst's last seq; after a quiet window,
        // at once again.
        let seen = wakes_for(
            &[(0, 1), (10, 2), (20, 3), (200, 4), (1000, 5), (1010, 6)],
            w,
        )
        .await;
        assert_eq!(seen, vec![(0, 1), (250, 4), (1000, 5), (1250, 6)]);
        // 100 changes a second for a second: four or five wakes, not a hundred.
        let burst: Vec<(u64, u64)> = (0..100).map(|i| (i * 10, i + 1)).collect();
        let seen = wakes_for(&burst, w).await;
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert_eq!(seen.last().unwrap().1, 100);
        assert!(seen.windows(2).all(|p| p[1].0 - p[0].0 >= 250), "{seen:?}");
        // No window: every change wakes.
        let seen = wakes_for(&[(0, 1), (10, 2), (20, 3)], Duration::ZERO).await;
        assert_eq!(seen, vec![(0, 1), (10, 2), (20, 3)]);
    }
}
