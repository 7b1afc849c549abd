//! The revocation set: lookups, feed application and pruning, in a compact form.
//!
//! A revoked value (`jti`, `sid`, `sub`) is kept as its [`entry_hash`] (kind + value, 64 bits)
//! with its `until` in whole seconds (`u32`, clamped: an `until` past 2106 is kept until then),
//! and for a `sub` its `issued_before` (`i64`). Each kind of each shard is a [`Column`]:
//! parallel arrays sorted by hash, so a lookup is a binary search and an entry costs 12 bytes
//! (20 for a `sub`) with no allocation of its own. The set is split into [`SHARDS`] shards by
//! the hash, because Envoy's shared data has no delete and no key listing: it is stored under a
//! fixed, bounded set of keys — one blob per shard plus a meta blob ([`super::codec`]) — and a
//! feed delta rewrites only the shards it touched.
//!
//! Entries are dropped once `until < now` ([`RevocationSet::prune`]). Pure: time is an argument —
//! the fetcher passes `now` less the clock skew tokens are accepted with (`fetch.rs`).

use std::sync::Arc;

use weauth_token::revocation::{EntryKind, FeedResponse};
use weauth_token::Claims;

use super::page::FeedPage;

/// Number of shard blobs in shared data.
pub const SHARDS: usize = 32;
/// Longest revoked value (`jti`, `sid`, `sub`) accepted from the feed; longer ones are skipped.
pub const MAX_VALUE_BYTES: usize = 512;

/// Why a feed response could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("feed delta goes back from seq {held} to {got}; starting over from a full set")]
    SeqWentBack { held: u64, got: u64 },
}

/// Which rule revoked a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Jti,
    Sid,
    Sub,
}

impl Revoked {
    /// Stable reason for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Revoked::Jti => "revoked_jti",
            Revoked::Sid => "revoked_sid",
            Revoked::Sub => "revoked_sub",
        }
    }
}

/// Stable FNV-1a hash, identical in every VM (std's hasher is randomly seeded).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

pub(crate) fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Jti => 1,
        EntryKind::Sid => 2,
        EntryKind::Sub => 3,
    }
}

/// The hash a value is kept under: FNV-1a of (kind, value), then MurmurHash3's 64-bit
/// finalizer so that every bit (the shard is taken from the low ones) depends on every byte.
/// Stable across VMs and builds: it is part of the shared-data format.
pub fn entry_hash(kind: EntryKind, value: &str) -> u64 {
    let mut h = fnv1a(&[&[kind_byte(kind)], value.as_bytes()]);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The shard a hash belongs to.
pub fn shard_of_hash(hash: u64) -> usize {
    // SHARDS is a small constant, so the remainder always fits in usize.
    usize::try_from(hash % SHARDS as u64).unwrap_or(0)
}

/// Seconds since the epoch as kept in the set: clamped into `u32`.
pub(crate) fn clamp_until(until: i64) -> u32 {
    u32::try_from(until.max(0)).unwrap_or(u32::MAX)
}

/// One kind's entries in one shard: parallel arrays sorted by hash, hashes unique.
/// `issued_before` is empty for `jti` and `sid` and as long as `hashes` for `sub`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Column {
    pub(crate) hashes: Vec<u64>,
    pub(crate) until: Vec<u32>,
    pub(crate) issued_before: Vec<i64>,
}

/// One entry on its way into a column: (hash, until, issued_before).
pub(crate) type Row = (u64, u32, i64);

impl Column {
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    fn find(&self, hash: u64) -> Option<usize> {
        self.hashes.binary_search(&hash).ok()
    }

    fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        self.hashes.iter().enumerate().map(|(i, hash)| {
            (
                *hash,
                self.until.get(i).copied().unwrap_or(0),
                self.issued_before.get(i).copied().unwrap_or(0),
            )
        })
    }

    /// Builds a column from rows in any order; rows with one hash merge into the later
    /// `until` and the later `issued_before` (every token issued before the later cut-off
    /// expires by that entry's own `until`).
    fn from_rows(mut rows: Vec<Row>, with_cutoff: bool) -> Column {
        rows.sort_unstable_by_key(|row| row.0);
        let mut column = Column::default();
        column.hashes.reserve_exact(rows.len());
        column.until.reserve_exact(rows.len());
        if with_cutoff {
            column.issued_before.reserve_exact(rows.len());
        }
        for (hash, until, issued_before) in rows {
            if column.hashes.last() == Some(&hash) {
                if let Some(last) = column.until.last_mut() {
                    *last = (*last).max(until);
                }
                if let Some(last) = column.issued_before.last_mut() {
                    *last = (*last).max(issued_before);
                }
                continue;
            }
            column.hashes.push(hash);
            column.until.push(until);
            if with_cutoff {
                column.issued_before.push(issued_before);
            }
        }
        column.hashes.shrink_to_fit();
        column.until.shrink_to_fit();
        column.issued_before.shrink_to_fit();
        column
    }

    /// Adds rows (merging as [`Column::from_rows`] does). The new rows are sorted on their
    /// own, then merged with the column's in one pass into arrays of the exact size: the
    /// column's entries are never copied into rows.
    fn merge(&mut self, new: Vec<Row>, with_cutoff: bool) {
        if new.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = Column::from_rows(new, with_cutoff);
            return;
        }
        let new = Column::from_rows(new, with_cutoff);
        let capacity = self.len() + new.len();
        let mut merged = Column {
            hashes: Vec::with_capacity(capacity),
            until: Vec::with_capacity(capacity),
            issued_before: Vec::with_capacity(if with_cutoff { capacity } else { 0 }),
        };
        let mut old_rows = self.rows().peekable();
        let mut new_rows = new.rows().peekable();
        loop {
            let row = match (old_rows.peek(), new_rows.peek()) {
                (Some(old), Some(new)) if old.0 == new.0 => {
                    let row = (old.0, old.1.max(new.1), old.2.max(new.2));
                    old_rows.next();
                    new_rows.next();
                    row
                }
                (Some(old), Some(new)) if old.0 < new.0 => {
                    let row = *old;
                    old_rows.next();
                    row
                }
                (_, Some(new)) => {
                    let row = *new;
                    new_rows.next();
                    row
                }
                (Some(old), None) => {
                    let row = *old;
                    old_rows.next();
                    row
                }
                (None, None) => break,
            };
            merged.hashes.push(row.0);
            merged.until.push(row.1);
            if with_cutoff {
                merged.issued_before.push(row.2);
            }
        }
        drop((old_rows, new_rows));
        if merged.hashes.len() < capacity {
            merged.hashes.shrink_to_fit();
            merged.until.shrink_to_fit();
            merged.issued_before.shrink_to_fit();
        }
        *self = merged;
    }

    /// Whether every row is held already, with an `until` and an `issued_before` at least its
    /// own (merging it would change nothing).
    fn covers(&self, rows: &[Row]) -> bool {
        rows.iter().all(|(hash, until, issued_before)| {
            self.find(*hash).is_some_and(|i| {
                self.until.get(i).is_some_and(|held| held >= until)
                    && self
                        .issued_before
                        .get(i)
                        .is_none_or(|held| held >= issued_before)
            })
        })
    }

    /// Whether an entry is past its `until` at `now`.
    fn has_expired(&self, now: i64) -> bool {
        self.until.iter().any(|until| i64::from(*until) < now)
    }

    /// Drops entries past `until`; returns whether anything was dropped.
    fn prune(&mut self, now: i64) -> bool {
        let live = |until: u32| i64::from(until) >= now;
        if self.until.iter().all(|until| live(*until)) {
            return false;
        }
        let with_cutoff = !self.issued_before.is_empty();
        let rows: Vec<Row> = self.rows().filter(|row| live(row.1)).collect();
        *self = Column::from_rows(rows, with_cutoff);
        true
    }
}

/// One shard: a column per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shard {
    pub(crate) jti: Column,
    pub(crate) sid: Column,
    pub(crate) sub: Column,
}

impl Shard {
    pub fn len(&self) -> usize {
        self.jti.len() + self.sid.len() + self.sub.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn has_expired(&self, now: i64) -> bool {
        self.jti.has_expired(now) || self.sid.has_expired(now) || self.sub.has_expired(now)
    }

    fn prune(&mut self, now: i64) -> bool {
        let jti = self.jti.prune(now);
        let sid = self.sid.prune(now);
        let sub = self.sub.prune(now);
        jti || sid || sub
    }
}

/// The revoked jtis, sids and subs, plus the feed position.
///
/// Each shard sits behind its own [`Arc`], so a clone shares every shard and costs 32 pointer
/// copies; changing a clone copies only the shards it changes (copy on write, through
/// [`Arc::make_mut`]), and a set nobody shares is changed in place. The native build publishes
/// a set to every worker and applies the next feed answer to a clone of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSet {
    /// The feed `seq` this set reflects (`since` for the next poll; 0 = fetch a full set).
    pub seq: u64,
    shards: Vec<Arc<Shard>>,
}

impl Default for RevocationSet {
    fn default() -> Self {
        RevocationSet {
            seq: 0,
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
        }
    }
}

/// Which shards changed (indices), so only those are rewritten.
pub type Changed = Vec<usize>;

/// The result of [`RevocationSet::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Shards to rewrite.
    pub changed: Changed,
    /// Entries ignored (already expired, malformed).
    pub skipped: usize,
}

impl RevocationSet {
    /// Bytes the set holds on the heap (its shards and their columns' capacities), for memory
    /// accounting; a shard shared with another set counts in both.
    pub fn heap_bytes(&self) -> usize {
        let column = |c: &Column| {
            c.hashes.capacity() * 8 + c.until.capacity() * 4 + c.issued_before.capacity() * 8
        };
        self.shards
            .iter()
            .map(|s| {
                column(&s.jti) + column(&s.sid) + column(&s.sub) + std::mem::size_of::<Shard>()
            })
            .sum::<usize>()
            + self.shards.capacity() * std::mem::size_of::<Arc<Shard>>()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.len()).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One shard (an empty one for an index out of range).
    pub fn shard(&self, index: usize) -> Option<&Shard> {
        self.shards.get(index).map(|shard| &**shard)
    }

    fn column(&self, kind: EntryKind, hash: u64) -> Option<&Column> {
        let shard = self.shards.get(shard_of_hash(hash))?;
        Some(match kind {
            EntryKind::Jti => &shard.jti,
            EntryKind::Sid => &shard.sid,
            EntryKind::Sub => &shard.sub,
        })
    }

    fn contains(&self, kind: EntryKind, value: &str) -> bool {
        let hash = entry_hash(kind, value);
        self.column(kind, hash)
            .is_some_and(|column| column.find(hash).is_some())
    }

    /// Whether the token is revoked, checking `jti`, then `sub`/`issued_before`, then `sid`:
    /// a token a ban or "log out everywhere" covers is counted as `revoked_sub`, though the
    /// issuer also writes a `sid` entry for each session such a revocation ends.
    pub fn check(&self, claims: &Claims) -> Option<Revoked> {
        if self.is_empty() {
            return None;
        }
        if self.contains(EntryKind::Jti, &claims.jti) {
            return Some(Revoked::Jti);
        }
        let hash = entry_hash(EntryKind::Sub, &claims.sub);
        let banned = self.column(EntryKind::Sub, hash).is_some_and(|column| {
            column
                .find(hash)
                .and_then(|i| column.issued_before.get(i))
                .is_some_and(|issued_before| claims.iat < *issued_before)
        });
        if banned {
            return Some(Revoked::Sub);
        }
        self.contains(EntryKind::Sid, &claims.sid)
            .then_some(Revoked::Sid)
    }

    /// Applies a feed response at local time `now`: [`RevocationSet::apply_page`] of its rows.
    ///
    /// # Errors
    /// As [`RevocationSet::apply_page`].
    pub fn apply(&mut self, feed: &FeedResponse, now: i64) -> Result<Applied, ApplyError> {
        self.apply_page(FeedPage::of(feed), now)
    }

    /// Applies a feed answer ([`FeedPage::parse`]) at local time `now`: its entries are added
    /// to the set, a full answer's as a delta's — the entries held and not in a full answer
    /// stay until their `until`, since nothing lifts a revocation. Entries already past
    /// `until`, `sub` entries without `issued_before` and values empty or longer than
    /// [`MAX_VALUE_BYTES`] are skipped (counted in the result). Then prunes. Only the shards the answer changes are written (and, when
    /// shared with a clone, copied).
    ///
    /// # Errors
    /// [`ApplyError::SeqWentBack`] when a delta's `seq` is below ours (the issuer lost state):
    /// the set's `seq` is reset to 0 so that the next poll asks for a full set.
    pub fn apply_page(&mut self, page: FeedPage, now: i64) -> Result<Applied, ApplyError> {
        if !page.full && page.seq < self.seq {
            let held = self.seq;
            self.seq = 0;
            return Err(ApplyError::SeqWentBack {
                held,
                got: page.seq,
            });
        }
        let mut skipped = page.skipped;
        let live = |until: u32| i64::from(until) >= now;
        let mut changed = [false; SHARDS];
        for (index, (shard, kinds)) in self.shards.iter_mut().zip(page.rows.by_shard).enumerate() {
            let [mut jti, mut sid, mut sub] = kinds;
            for rows in [&mut jti, &mut sid, &mut sub] {
                let before = rows.len();
                rows.retain(|row| live(row.1));
                skipped += before - rows.len();
            }
            // A full answer's entries are added like a delta's, not put in place of ours: a
            // revocation is never lifted, and an entry held here that the answer lacks is one
            // past its `until` on the issuer's clock that is kept here for the clock skew, or
            // one the issuer lost (a restored backup, a failover) — either is still a revoked
            // token until its own `until` (`prune`). Rows the shard has already (a full set
            // repeating it) change nothing: the shard is neither copied nor rewritten.
            let covered =
                shard.jti.covers(&jti) && shard.sid.covers(&sid) && shard.sub.covers(&sub);
            if !covered {
                let shard = Arc::make_mut(shard);
                shard.jti.merge(jti, false);
                shard.sid.merge(sid, false);
                shard.sub.merge(sub, true);
                changed[index] = true;
            }
        }
        self.seq = page.seq;
        for index in self.prune(now) {
            if let Some(flag) = changed.get_mut(index) {
                *flag = true;
            }
        }
        Ok(Applied {
            changed: changed
                .iter()
                .enumerate()
                .filter_map(|(index, flag)| flag.then_some(index))
                .collect(),
            skipped,
        })
    }

    /// Drops entries past their `until`; returns the shards that changed.
    /// Only shards holding an expired entry are written (and, when shared, copied).
    pub fn prune(&mut self, now: i64) -> Changed {
        self.shards
            .iter_mut()
            .enumerate()
            .filter_map(|(index, shard)| {
                (shard.has_expired(now) && Arc::make_mut(shard).prune(now)).then_some(index)
            })
            .collect()
    }

    /// Replaces one shard (from [`super::decode_shard`]).
    pub fn install_shard(&mut self, index: usize, shard: Shard) {
        if let Some(slot) = self.shards.get_mut(index) {
            *slot = Arc::new(shard);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use weauth_token::revocation::Entry;
    use weauth_token::Audience;

    pub const NOW: i64 = 1_700_000_000;

    pub fn claims(jti: &str, sid: &str, sub: &str, iat: i64) -> Claims {
        Claims {
            iss: "i".into(),
            aud: Audience::One("a".into()),
            sub: sub.into(),
            sid: sid.into(),
            jti: jti.into(),
            iat,
            nbf: iat,
            exp: iat + 900,
            openid: "o".into(),
            unionid: None,
            appid: "w".into(),
            scope: None,
        }
    }

    pub fn entry(seq: u64, kind: EntryKind, value: &str, until: i64) -> Entry {
        Entry {
            seq,
            kind,
            value: value.into(),
            issued_before: (kind == EntryKind::Sub).then_some(NOW),
            until,
        }
    }

    pub fn feed(seq: u64, full: bool, entries: Vec<Entry>) -> FeedResponse {
        FeedResponse {
            seq,
            full,
            now: NOW,
            entries,
        }
    }

    pub fn set_with(entries: Vec<Entry>) -> RevocationSet {
        let mut set = RevocationSet::default();
        set.apply(&feed(10, true, entries), NOW).unwrap();
        set
    }

    pub fn shard_index(kind: EntryKind, value: &str) -> usize {
        shard_of_hash(entry_hash(kind, value))
    }

    fn shard_of(kind: EntryKind, value: &str) -> usize {
        shard_index(kind, value)
    }

    #[test]
    fn check_jti_revoked() {
        let set = set_with(vec![entry(1, EntryKind::Jti, "j1", NOW + 100)]);
        assert_eq!(set.check(&claims("j1", "s", "u", NOW)), Some(Revoked::Jti));
        assert_eq!(set.check(&claims("j2", "s", "u", NOW)), None);
    }

    #[test]
    fn check_sid_revoked() {
        let set = set_with(vec![entry(1, EntryKind::Sid, "s1", NOW + 100)]);
        assert_eq!(set.check(&claims("j", "s1", "u", NOW)), Some(Revoked::Sid));
        assert_eq!(set.check(&claims("j", "s2", "u", NOW)), None);
    }

    #[test]
    fn check_kind_matters() {
        // A revoked sid "x" does not revoke a token whose jti is "x".
        let set = set_with(vec![entry(1, EntryKind::Sid, "x", NOW + 100)]);
        assert_eq!(set.check(&claims("x", "s", "x", NOW - 1)), None);
    }

    /// A `sub` revocation writes a `sid` entry for each session it ends: a token both cover is
    /// counted as the `sub` revocation's; a newer one of such a session as the `sid`'s.
    #[test]
    fn check_sub_before_sid() {
        let set = set_with(vec![
            entry(1, EntryKind::Sid, "s1", NOW + 100),
            entry(2, EntryKind::Sub, "u1", NOW + 100),
        ]);
        assert_eq!(
            set.check(&claims("j", "s1", "u1", NOW - 1)),
            Some(Revoked::Sub)
        );
        assert_eq!(set.check(&claims("j", "s1", "u1", NOW)), Some(Revoked::Sid));
    }

    #[test]
    fn check_sub_only_before_cutoff() {
        let set = set_with(vec![entry(1, EntryKind::Sub, "u1", NOW + 100)]);
        assert_eq!(
            set.check(&claims("j", "s", "u1", NOW - 1)),
            Some(Revoked::Sub)
        );
        // Issued at the cut-off or later: a fresh login after the ban/logout-everywhere.
        assert_eq!(set.check(&claims("j", "s", "u1", NOW)), None);
        assert_eq!(set.check(&claims("j", "s", "u2", NOW - 1)), None);
    }

    #[test]
    fn check_many_entries_all_found_others_not() {
        let entries: Vec<Entry> = (0..5_000)
            .map(|i| entry(i, EntryKind::Jti, &format!("jti-{i}"), NOW + 100))
            .collect();
        let set = set_with(entries);
        assert_eq!(set.len(), 5_000);
        for i in 0..5_000 {
            let revoked = set.check(&claims(&format!("jti-{i}"), "s", "u", NOW));
            assert_eq!(revoked, Some(Revoked::Jti), "jti-{i}");
            assert_eq!(
                set.check(&claims(&format!("other-{i}"), "s", "u", NOW)),
                None
            );
        }
    }

    #[test]
    fn heap_bytes_counts_twelve_bytes_a_jti_and_twenty_a_sub() {
        let empty = RevocationSet::default().heap_bytes();
        let jtis: Vec<Entry> = (0..1000)
            .map(|i| entry(i, EntryKind::Jti, &format!("j{i}"), NOW + 100))
            .collect();
        let subs: Vec<Entry> = (0..1000)
            .map(|i| entry(i, EntryKind::Sub, &format!("u{i}"), NOW + 100))
            .collect();
        assert_eq!(set_with(jtis).heap_bytes() - empty, 12 * 1000);
        assert_eq!(set_with(subs).heap_bytes() - empty, 20 * 1000);
    }

    #[test]
    fn apply_full_adds_to_the_set_and_keeps_what_it_lacks_until_its_until() {
        // "kept" is past its until on the issuer's clock (NOW + 1 ≥ NOW - skew here: the
        // fetcher's `now` is its clock less the skew), or lost by the issuer: a full answer
        // without it does not lift it.
        let mut set = set_with(vec![
            entry(1, EntryKind::Jti, "kept", NOW + 1),
            entry(2, EntryKind::Sid, "both", NOW + 100),
        ]);
        let applied = set
            .apply(
                &feed(
                    20,
                    true,
                    vec![
                        entry(2, EntryKind::Sid, "both", NOW + 100),
                        entry(3, EntryKind::Jti, "new", NOW + 100),
                    ],
                ),
                NOW,
            )
            .unwrap();
        assert_eq!(
            set.check(&claims("kept", "s", "u", NOW)),
            Some(Revoked::Jti)
        );
        assert_eq!(set.check(&claims("new", "s", "u", NOW)), Some(Revoked::Jti));
        assert_eq!(
            set.check(&claims("j", "both", "u", NOW)),
            Some(Revoked::Sid)
        );
        assert_eq!(set.len(), 3);
        assert_eq!(set.seq, 20);
        assert_eq!(applied.changed, vec![shard_of(EntryKind::Jti, "new")]);
        // Then dropped at its own until, as any entry.
        set.prune(NOW + 2);
        assert_eq!(set.check(&claims("kept", "s", "u", NOW)), None);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn apply_delta_adds_and_moves_seq() {
        let mut set = set_with(vec![entry(1, EntryKind::Jti, "a", NOW + 100)]);
        set.apply(
            &feed(11, false, vec![entry(11, EntryKind::Sid, "s", NOW + 100)]),
            NOW,
        )
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.seq, 11);
        assert_eq!(set.check(&claims("a", "x", "u", NOW)), Some(Revoked::Jti));
        assert_eq!(set.check(&claims("b", "s", "u", NOW)), Some(Revoked::Sid));
    }

    #[test]
    fn apply_delta_repeated_value_merges_to_later_until_and_cutoff() {
        let mut set = set_with(
            (0..300)
                .map(|i| entry(i, EntryKind::Jti, &format!("j{i}"), NOW + 10))
                .chain([entry(300, EntryKind::Sub, "u", NOW + 10)])
                .collect(),
        );
        let mut later = entry(302, EntryKind::Sub, "u", NOW + 50);
        later.issued_before = Some(NOW + 5);
        set.apply(
            &feed(
                302,
                false,
                vec![entry(301, EntryKind::Jti, "j7", NOW + 100), later],
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(set.len(), 301);
        set.prune(NOW + 20);
        assert_eq!(set.len(), 2, "j7 and u live on with the later until");
        assert_eq!(set.check(&claims("j7", "s", "x", NOW)), Some(Revoked::Jti));
        assert_eq!(
            set.check(&claims("j", "s", "u", NOW + 1)),
            Some(Revoked::Sub)
        );
        for shard in &set.shards {
            for column in [&shard.jti, &shard.sid, &shard.sub] {
                assert!(column.hashes.windows(2).all(|w| w[0] < w[1]));
                assert_eq!(column.hashes.capacity(), column.hashes.len());
            }
        }
    }

    #[test]
    fn apply_delta_to_a_clone_copies_only_the_touched_shard() {
        let original = set_with(vec![
            entry(1, EntryKind::Jti, "a", NOW + 100),
            entry(2, EntryKind::Jti, "b", NOW + 100),
        ]);
        let mut copy = original.clone();
        copy.apply(
            &feed(11, false, vec![entry(11, EntryKind::Sid, "s", NOW + 100)]),
            NOW,
        )
        .unwrap();
        let touched = shard_of(EntryKind::Sid, "s");
        for (index, (a, b)) in original.shards.iter().zip(&copy.shards).enumerate() {
            assert_eq!(Arc::ptr_eq(a, b), index != touched, "shard {index}");
        }
        assert_eq!(original.len(), 2, "the original is untouched");
    }

    #[test]
    fn apply_delta_changes_only_touched_shard() {
        let mut set = set_with(vec![]);
        let applied = set
            .apply(
                &feed(11, false, vec![entry(11, EntryKind::Sid, "s", NOW + 100)]),
                NOW,
            )
            .unwrap();
        assert_eq!(applied.changed, vec![shard_of(EntryKind::Sid, "s")]);
    }

    #[test]
    fn apply_empty_delta_changes_nothing() {
        let mut set = set_with(vec![entry(1, EntryKind::Jti, "a", NOW + 100)]);
        let applied = set.apply(&feed(10, false, vec![]), NOW).unwrap();
        assert!(applied.changed.is_empty());
    }

    #[test]
    fn apply_delta_seq_back_resets_to_full() {
        let mut set = set_with(vec![]);
        let err = set.apply(&feed(3, false, vec![]), NOW).unwrap_err();
        assert_eq!(err, ApplyError::SeqWentBack { held: 10, got: 3 });
        assert_eq!(set.seq, 0);
    }

    #[test]
    fn apply_expired_entry_skipped() {
        let mut set = RevocationSet::default();
        let applied = set
            .apply(
                &feed(1, true, vec![entry(1, EntryKind::Jti, "j", NOW - 1)]),
                NOW,
            )
            .unwrap();
        assert_eq!(applied.skipped, 1);
        assert!(set.is_empty());
    }

    #[test]
    fn apply_sub_without_issued_before_skipped() {
        let mut bad = entry(1, EntryKind::Sub, "u", NOW + 10);
        bad.issued_before = None;
        let mut set = RevocationSet::default();
        assert_eq!(
            set.apply(&feed(1, true, vec![bad]), NOW).unwrap().skipped,
            1
        );
        assert!(set.is_empty());
    }

    #[test]
    fn apply_until_beyond_u32_kept() {
        let set = set_with(vec![entry(1, EntryKind::Jti, "far", i64::MAX)]);
        assert_eq!(set.check(&claims("far", "s", "u", NOW)), Some(Revoked::Jti));
    }

    #[test]
    fn prune_drops_past_until() {
        let mut set = set_with(vec![
            entry(1, EntryKind::Jti, "short", NOW + 10),
            entry(2, EntryKind::Sid, "long", NOW + 1000),
        ]);
        let changed = set.prune(NOW + 11);
        assert_eq!(changed, vec![shard_of(EntryKind::Jti, "short")]);
        assert_eq!(set.len(), 1);
        assert_eq!(set.check(&claims("short", "s", "u", NOW)), None);
        assert_eq!(
            set.check(&claims("j", "long", "u", NOW)),
            Some(Revoked::Sid)
        );
    }

    #[test]
    fn sub_entries_merge_to_later_cutoff() {
        let mut early = entry(1, EntryKind::Sub, "u", NOW + 100);
        early.issued_before = Some(NOW - 50);
        let mut late = entry(2, EntryKind::Sub, "u", NOW + 50);
        late.issued_before = Some(NOW);
        let set = set_with(vec![early, late]);
        assert_eq!(set.len(), 1);
        assert_eq!(
            set.check(&claims("j", "s", "u", NOW - 10)),
            Some(Revoked::Sub)
        );
    }

    #[test]
    fn apply_entries_held_already_change_no_shard() {
        let mut set = set_with(vec![entry(1, EntryKind::Jti, "a", NOW + 100)]);
        let again = feed(10, false, vec![entry(1, EntryKind::Jti, "a", NOW + 50)]);
        assert!(set.apply(&again, NOW).unwrap().changed.is_empty());
        assert_eq!(set.seq, 10);
        // A later until is news.
        let later = feed(11, false, vec![entry(11, EntryKind::Jti, "a", NOW + 200)]);
        assert_eq!(
            set.apply(&later, NOW).unwrap().changed,
            vec![shard_of(EntryKind::Jti, "a")]
        );
    }

    #[test]
    fn apply_identical_full_changes_nothing() {
        let entries = vec![entry(1, EntryKind::Jti, "a", NOW + 100)];
        let mut set = set_with(entries.clone());
        let applied = set.apply(&feed(10, true, entries), NOW).unwrap();
        assert!(applied.changed.is_empty());
    }

    #[test]
    fn entry_hash_is_stable() {
        // Pinned: the hash is part of the shared-data format, so VMs of different builds agree.
        assert_eq!(entry_hash(EntryKind::Jti, "abc"), 0xf7b7_7ecd_0d4d_984b);
        assert_ne!(
            entry_hash(EntryKind::Jti, "abc"),
            entry_hash(EntryKind::Sid, "abc")
        );
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    /// Pruning a `sub` column keeps the `issued_before` of the entries that stay.
    #[test]
    fn prune_keeps_the_cutoff_of_a_surviving_sub() {
        let a = "u0".to_string();
        let target = shard_of(EntryKind::Sub, &a);
        let b = (1..)
            .map(|i| format!("u{i}"))
            .find(|v| shard_of(EntryKind::Sub, v) == target)
            .unwrap();
        let mut set = set_with(vec![
            entry(1, EntryKind::Sub, &a, NOW + 10),
            entry(2, EntryKind::Sub, &b, NOW + 1000),
        ]);
        assert_eq!(set.prune(NOW + 11), vec![target]);
        assert_eq!(
            set.check(&claims("j", "s", &b, NOW - 1)),
            Some(Revoked::Sub)
        );
    }

    /// A shard whose only expired entry is a `sid` is pruned, and said changed.
    #[test]
    fn prune_of_an_expired_sid_alone() {
        let mut set = set_with(vec![entry(1, EntryKind::Sid, "old", NOW + 10)]);
        assert_eq!(set.prune(NOW + 11), vec![shard_of(EntryKind::Sid, "old")]);
        assert!(set.is_empty());
    }
}
