//! The replica's copy of the feed's live entries (pure: the store's reads and the time are
//! arguments), kept in shared chunks so that catching up with a new seq costs what the delta
//! costs, not what the whole set costs.
//!
//! Each catch-up makes a new copy (readers keep the one they took). Before, the new copy
//! cloned and filtered every entry of the old one: with a million revocations live, each new
//! seq copied a million entries and their strings — at every wake of the long polls. Now the
//! entries sit in chunks of [`CHUNK`] behind `Arc`s: a new copy shares every chunk of the old
//! one and copies only the last, partial one with the delta. Expired entries are dropped by a
//! compaction (every entry looked at once) at most every [`COMPACT_EVERY`] seconds and
//! whenever the copy starts over; in between they stay in memory, and answers skip them
//! (`until < now`), as they did.

use std::sync::Arc;

use weauth_token::revocation::{Entry, FeedResponse};

use super::revocation::{self, feed_is_full};
use crate::store::FeedSnapshot;

/// Entries per shared chunk: a catch-up copies at most this many (the last chunk) and one
/// pointer per chunk.
pub const CHUNK: usize = 1024;
/// The longest an expired entry stays in the copy (seconds).
pub const COMPACT_EVERY: i64 = 60;

/// The live entries in seq order, the store's current seq and purge watermark.
#[derive(Debug, Default, Clone)]
pub struct FeedCopy {
    /// Highest seq the copy has caught up with (0: never loaded).
    pub current: u64,
    pub purged_through: u64,
    /// Entries in seq order, in chunks of [`CHUNK`] (the last one may be shorter; none empty).
    chunks: Vec<Arc<Vec<Entry>>>,
    /// When expired entries were last dropped.
    compacted_at: i64,
}

/// What the store said since the copy's `current`.
#[derive(Debug, Default)]
pub struct Delta {
    /// The store said to start over (purged past the copy, or another store): `entries` are
    /// the whole set.
    pub restart: bool,
    /// New entries, in seq order, after the copy's (or all, with `restart`).
    pub entries: Vec<Entry>,
    pub current: u64,
    pub purged_through: u64,
}

impl FeedCopy {
    /// The copy after `delta`, read at `now`; `self` is left as it was (a reader may hold it).
    pub fn caught_up(&self, delta: Delta, now: i64) -> FeedCopy {
        let compact = delta.restart || now >= self.compacted_at + COMPACT_EVERY;
        let mut next = FeedCopy {
            current: delta.current,
            purged_through: delta.purged_through,
            chunks: Vec::new(),
            compacted_at: if compact { now } else { self.compacted_at },
        };
        if !delta.restart {
            if compact {
                next.extend(self.iter().filter(|e| e.is_live(now)).cloned());
            } else {
                next.chunks = self.chunks.clone();
            }
        }
        next.extend(delta.entries.into_iter().filter(|e| e.is_live(now)));
        next
    }

    /// Appends `entries` (in seq order, after the copy's): the last chunk is filled first
    /// (copied if another copy shares it), then new chunks.
    fn extend(&mut self, entries: impl IntoIterator<Item = Entry>) {
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            match self.chunks.last_mut() {
                Some(last) if last.len() < CHUNK => {
                    let last = Arc::make_mut(last);
                    let room = CHUNK - last.len();
                    last.extend(entries.by_ref().take(room));
                }
                _ => {
                    let chunk: Vec<Entry> = entries.by_ref().take(CHUNK).collect();
                    self.chunks.push(Arc::new(chunk));
                }
            }
        }
    }

    /// Every entry held, in seq order (expired ones up to [`COMPACT_EVERY`] included).
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The entries live at `now` after seq `after`, at most `limit`.
    fn live_after(&self, after: u64, now: i64, limit: usize) -> Vec<Entry> {
        // The first chunk whose last entry is past `after`; within it, the first such entry.
        let first = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|e| e.seq <= after));
        self.chunks[first..]
            .iter()
            .flat_map(|chunk| chunk.iter())
            .skip_while(|e| e.seq <= after)
            .filter(|e| e.is_live(now))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The answer for a reader at `since` at `now` (see [`revocation::read`] for the rules).
    pub fn answer(&self, since: u64, now: i64, limit: usize) -> FeedResponse {
        let full = feed_is_full(since, self.current, self.purged_through);
        let after = if full { 0 } else { since };
        revocation::page(
            FeedSnapshot {
                current: self.current,
                purged_through: self.purged_through,
                entries: self.live_after(after, now, limit),
            },
            full,
            limit,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weauth_token::revocation::EntryKind;

    fn entry(seq: u64, until: i64) -> Entry {
        Entry {
            seq,
            kind: EntryKind::Jti,
            value: format!("j{seq}"),
            issued_before: None,
            until,
        }
    }

    fn delta(seqs: std::ops::RangeInclusive<u64>, until: impl Fn(u64) -> i64) -> Delta {
        let entries: Vec<Entry> = seqs.map(|s| entry(s, until(s))).collect();
        Delta {
            restart: false,
            current: entries.last().map_or(0, |e| e.seq),
            purged_through: 0,
            entries,
        }
    }

    fn seqs(copy: &FeedCopy) -> Vec<u64> {
        copy.iter().map(|e| e.seq).collect()
    }

    /// A catch-up shares the old copy's full chunks (no entry copied) and leaves the old copy
    /// as it was.
    #[test]
    fn catch_up_shares_full_chunks_and_keeps_the_old_copy() {
        let n = (3 * CHUNK + 10) as u64;
        let old = FeedCopy::default().caught_up(delta(1..=n, |_| 1000), 10);
        assert_eq!(old.len(), n as usize);
        let next = old.caught_up(delta(n + 1..=n + 5, |_| 1000), 11);
        assert_eq!(seqs(&next), (1..=n + 5).collect::<Vec<_>>());
        assert_eq!(
            seqs(&old),
            (1..=n).collect::<Vec<_>>(),
            "the old copy changed"
        );
        for i in 0..3 {
            assert!(
                Arc::ptr_eq(&old.chunks[i], &next.chunks[i]),
                "chunk {i} copied"
            );
        }
        assert!(!Arc::ptr_eq(&old.chunks[3], &next.chunks[3]));
        assert!(next
            .chunks
            .iter()
            .all(|c| !c.is_empty() && c.len() <= CHUNK));
        // Filling the last chunk past CHUNK starts a new one.
        let more = next.caught_up(delta(n + 6..=n + 6 + CHUNK as u64, |_| 1000), 12);
        assert_eq!(more.len(), next.len() + CHUNK + 1);
        assert!(more.chunks.iter().all(|c| c.len() <= CHUNK));
        assert_eq!(more.chunks[3].len(), CHUNK);
    }

    /// A last chunk of a single entry is filled up to CHUNK, never past it (the next catch-up
    /// copies at most CHUNK entries).
    #[test]
    fn one_entry_last_chunk_filled_to_chunk_not_past_it() {
        let one = FeedCopy::default().caught_up(delta(1..=1, |_| 1000), 10);
        let next = one.caught_up(delta(2..=CHUNK as u64 + 1, |_| 1000), 11);
        let sizes: Vec<usize> = next.chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [CHUNK, 1]);
        assert_eq!(seqs(&next), (1..=CHUNK as u64 + 1).collect::<Vec<_>>());
    }

    /// Expired entries are dropped by the compaction, at most COMPACT_EVERY after they expire;
    /// answers never carry them.
    #[test]
    fn expired_entries_dropped_by_the_compaction_and_never_answered() {
        // Odd seqs expire at 20, even ones live long.
        let until = |s: u64| if s % 2 == 1 { 20 } else { 10_000 };
        let copy = FeedCopy::default().caught_up(delta(1..=10, until), 10);
        assert_eq!(copy.len(), 10);
        // At 30 the copy's expired entries stay (no compaction yet); the delta's own expired
        // one (11) is not taken.
        let later = copy.caught_up(delta(11..=12, until), 30);
        assert_eq!(later.len(), 11, "compacted before its time");
        let answer = later.answer(0, 30, 100);
        assert!(answer.entries.iter().all(|e| e.seq % 2 == 0), "{answer:?}");
        assert_eq!(answer.entries.len(), 6);
        let compacted = later.caught_up(delta(13..=14, until), 10 + COMPACT_EVERY);
        assert_eq!(seqs(&compacted), vec![2, 4, 6, 8, 10, 12, 14]);
    }

    /// A restart replaces the whole set.
    #[test]
    fn restart_replaces_the_set() {
        let copy = FeedCopy::default().caught_up(delta(1..=5, |_| 1000), 10);
        let mut fresh = delta(40..=42, |_| 1000);
        fresh.restart = true;
        fresh.purged_through = 39;
        let next = copy.caught_up(fresh, 11);
        assert_eq!(seqs(&next), vec![40, 41, 42]);
        assert_eq!((next.current, next.purged_through), (42, 39));
    }

    /// Answers across chunk boundaries, with `since` anywhere, and a limit.
    #[test]
    fn answers_after_since_across_chunks() {
        let n = (2 * CHUNK + 3) as u64;
        let copy = FeedCopy::default().caught_up(delta(1..=n, |_| 1000), 10);
        for since in [
            0,
            1,
            CHUNK as u64 - 1,
            CHUNK as u64,
            CHUNK as u64 + 1,
            n - 1,
            n,
        ] {
            let answer = copy.answer(since, 10, 5);
            let want: Vec<u64> = (since + 1..=n).take(5).collect();
            assert_eq!(
                answer.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
                want,
                "since {since}"
            );
        }
    }
}
