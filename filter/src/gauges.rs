//! The filter's gauges when one Envoy runs several configurations of it.
//!
//! Each gauge (`revocation_entries`, `revocation_age_seconds`, `jwks_keys`) is one Envoy stat
//! per process, whichever configuration writes it, and one Envoy often runs several: two
//! listeners following two feeds, or a listener's new configuration beside the old one while
//! the old drains (a credential rotation, any LDS update). Each writing its own value made the
//! stat alternate between them — a stale feed's age overwritten by a fresh one's between two
//! scrapes, so that `WeauthRevocationFeedStale` could go on not firing while an edge enforced a
//! set minutes old.
//!
//! The [`Board`] keeps every live configuration's last value of the revocation gauges, which
//! every configuration writes on every tick, and says what the stat shows: the worst of them —
//! the oldest set's age, the largest set's size. A configuration reports through it
//! ([`board`]) and is taken off when it goes ([`Board::remove`]). `jwks_keys` is written on
//! events only (keys loaded or fetched), so it does not alternate: the last count written
//! stands, and a configuration replacing another shows its keys at once.
//!
//! The board is the process's in the native build, and the VM's in the wasm build: an Envoy
//! runs one VM per worker (and one on its main thread), each holding every configuration that
//! shares the VM's `vm_config` (the shipped configurations give every listener the same
//! `vm_id`), so each VM writes the same worst values. Configurations on VMs of their own (a
//! different `vm_id` or module) still overwrite each other's gauges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One configuration reporting gauges: a value of its own for each gauge it reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reporter(u64);

impl Reporter {
    /// A reporter no other has been (nor will be) in this process.
    pub fn next() -> Reporter {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Reporter(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The gauges the board keeps (module docs); their worse value is the larger.
const KEPT: [&str; 2] = ["revocation_age_seconds", "revocation_entries"];

/// Every live reporter's last value of each gauge (module docs).
#[derive(Debug, Default)]
pub struct Board {
    values: BTreeMap<(&'static str, Reporter), u64>,
}

impl Board {
    /// An empty board.
    pub const fn new() -> Board {
        Board {
            values: BTreeMap::new(),
        }
    }

    /// Records `value` as `reporter`'s `name`; returns what the stat is to show (`value`
    /// itself for a gauge the board does not keep).
    pub fn set(&mut self, reporter: Reporter, name: &'static str, value: u64) -> u64 {
        if !KEPT.contains(&name) {
            return value;
        }
        self.values.insert((name, reporter), value);
        self.shown(name).unwrap_or(value)
    }

    /// What the stat `name` is to show: the worst of its reporters' values (`None`: none).
    fn shown(&self, name: &'static str) -> Option<u64> {
        self.values
            .range((name, Reporter(0))..=(name, Reporter(u64::MAX)))
            .map(|(_, value)| *value)
            .max()
    }

    /// Takes `reporter` off; returns each gauge it reported that others still report, with
    /// what the stat is to show now. (A gauge nobody reports any more keeps its last value.)
    pub fn remove(&mut self, reporter: Reporter) -> Vec<(&'static str, u64)> {
        let names: Vec<&'static str> = self
            .values
            .keys()
            .filter(|(_, who)| *who == reporter)
            .map(|(name, _)| *name)
            .collect();
        names
            .into_iter()
            .filter_map(|name| {
                self.values.remove(&(name, reporter));
                self.shown(name).map(|value| (name, value))
            })
            .collect()
    }
}

/// The process's (wasm: the VM's) board. Never poisoned in effect: nothing panics under it,
/// and a poisoned lock is taken as it is (the filter must not panic).
pub fn board() -> MutexGuard<'static, Board> {
    static BOARD: Mutex<Board> = Mutex::new(Board::new());
    BOARD.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: &str = "revocation_age_seconds";
    const ENTRIES: &str = "revocation_entries";
    const KEYS: &str = "jwks_keys";

    #[test]
    fn one_reporter_shows_its_own_values() {
        let mut board = Board::new();
        let a = Reporter::next();
        assert_eq!(board.set(a, AGE, 90), 90);
        assert_eq!(board.set(a, AGE, 0), 0);
        assert_eq!(board.set(a, KEYS, 2), 2);
    }

    #[test]
    fn a_fresh_feed_does_not_hide_a_stale_one() {
        let mut board = Board::new();
        let (stale, fresh) = (Reporter::next(), Reporter::next());
        assert_eq!(board.set(stale, AGE, 75), 75);
        // The fresh feed's answers keep its own age near 0: the stat stays at the stale one's.
        assert_eq!(board.set(fresh, AGE, 0), 75);
        assert_eq!(board.set(fresh, AGE, 1), 75);
        assert_eq!(board.set(stale, AGE, 76), 76);
        // The stale feed answers again: the stat follows the older of the two.
        assert_eq!(board.set(stale, AGE, 0), 1);
    }

    #[test]
    fn the_largest_set_is_shown_and_the_last_key_count() {
        let mut board = Board::new();
        let (a, b) = (Reporter::next(), Reporter::next());
        board.set(a, ENTRIES, 1_000);
        assert_eq!(board.set(b, ENTRIES, 10), 1_000);
        // A new configuration's keys show at once, whatever the old one had.
        board.set(a, KEYS, 3);
        assert_eq!(board.set(b, KEYS, 4), 4);
        assert_eq!(board.set(a, KEYS, 2), 2);
        assert!(board.remove(a).iter().all(|(name, _)| *name != KEYS));
    }

    #[test]
    fn a_reporter_gone_leaves_the_others_values_shown() {
        let mut board = Board::new();
        let (old, new, other) = (Reporter::next(), Reporter::next(), Reporter::next());
        board.set(old, AGE, 300);
        board.set(old, ENTRIES, 9);
        board.set(new, AGE, 2);
        board.set(new, ENTRIES, 7);
        board.set(other, ENTRIES, 5);
        let mut shown = board.remove(old);
        shown.sort_unstable();
        assert_eq!(shown, vec![(AGE, 2), (ENTRIES, 7)]);
        assert_eq!(board.set(new, AGE, 3), 3);
        // Gone for good: a second removal finds nothing, and the last reporter's removal
        // leaves its gauges to keep their last values.
        assert!(board.remove(old).is_empty());
        assert_eq!(board.remove(new), vec![(ENTRIES, 5)]);
        assert!(board.remove(other).is_empty());
        assert_eq!(board.shown(ENTRIES), None);
    }

    #[test]
    fn reporters_are_never_given_twice() {
        let reporters: Vec<Reporter> = (0..100).map(|_| Reporter::next()).collect();
        let mut unique = reporters.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), reporters.len());
        assert!(!reporters.contains(&Reporter::default()));
    }
}
