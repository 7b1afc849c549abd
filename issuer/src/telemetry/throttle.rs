//! At most one log line per key and interval, with the number held back since the last one.
//!
//! A failure that every request meets — each answer of a replica at its
//! `WEAUTH_MAX_IN_FLIGHT`, the store or WeChat gone at a peak, WeChat refusing the app's secret
//! — was logged once per request: as many lines a second as the issuer answered requests
//! (gigabytes a day per replica), written on the request's thread in the very incident they
//! were to explain. The metrics count every such request; the log shows one line per kind of
//! failure and [`INTERVAL`], with `held_back`, the lines of that kind not written since the
//! last one (said with the next line of its kind, however late that comes).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The least time between two lines of one key.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// The most keys remembered; past it the one written longest ago is forgotten (keys are kinds
/// of failure and configured apps, a handful: this bounds a key WeChat's answers could vary).
const KEYS: usize = 64;

struct Seen<K> {
    key: K,
    last: Instant,
    held: u64,
}

/// The lines of one call site, by key.
pub struct Throttle<K> {
    every: Duration,
    seen: Mutex<Vec<Seen<K>>>,
}

impl<K: PartialEq> Throttle<K> {
    /// One line per key and `every`.
    pub const fn new(every: Duration) -> Throttle<K> {
        Throttle {
            every,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Whether a line of `key` is written now: `Some(held_back)`, the lines of `key` held
    /// back since the last one written, or `None`: hold this one back too.
    pub fn admit(&self, key: K) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = seen.iter_mut().find(|entry| entry.key == key) {
            if now.saturating_duration_since(entry.last) < self.every {
                entry.held += 1;
                return None;
            }
            entry.last = now;
            return Some(std::mem::take(&mut entry.held));
        }
        if seen.len() >= KEYS {
            if let Some(oldest) = (0..seen.len()).min_by_key(|&i| seen[i].last) {
                seen.swap_remove(oldest);
            }
        }
        seen.push(Seen {
            key,
            last: now,
            held: 0,
        });
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_with_the_held_back_count() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(throttle.admit_at("store", at(0)), Some(0));
        assert_eq!(throttle.admit_at("store", at(1)), None);
        assert_eq!(throttle.admit_at("store", at(9)), None);
        // Another key has its own interval.
        assert_eq!(throttle.admit_at("wechat", at(9)), Some(0));
        // The interval counts from the last line written, not from the last one held back.
        assert_eq!(throttle.admit_at("store", at(10)), Some(2));
        assert_eq!(throttle.admit_at("store", at(19)), None);
        assert_eq!(throttle.admit_at("store", at(45)), Some(1));
        assert_eq!(throttle.admit_at("store", at(55)), Some(0));
        assert_eq!(throttle.admit_at("wechat", at(18)), None);
        assert_eq!(throttle.admit_at("wechat", at(19)), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn admit_counts_the_interval_on_the_runtime_clock() {
        // What the call sites use: `admit_at` at tokio's now (paused here, so stepped).
        let throttle = Throttle::new(INTERVAL);
        assert_eq!(throttle.admit("store"), Some(0));
        assert_eq!(throttle.admit("store"), None);
        tokio::time::advance(INTERVAL).await;
        assert_eq!(throttle.admit("store"), Some(1));
    }

    #[test]
    fn past_the_most_keys_the_one_written_longest_ago_is_forgotten() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for key in 0..KEYS {
            let at = t0 + Duration::from_millis(key as u64);
            assert_eq!(throttle.admit_at(key, at), Some(0));
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(throttle.admit_at(KEYS, later), Some(0));
        assert_eq!(throttle.seen.lock().unwrap().len(), KEYS);
        // Key 1 is still remembered; key 0, written first, was forgotten: a line of it is
        // written again at once.
        assert_eq!(throttle.admit_at(1, later), None);
        assert_eq!(throttle.admit_at(0, later), Some(0));
    }
}
