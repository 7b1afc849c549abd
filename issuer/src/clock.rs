//! The one place the issuer reads the wall clock (kanidm's habit: time is an argument).
//!
//! [`App`](crate::app::App) holds an `Arc<dyn Clock>`: [`SystemClock`] in production, a
//! [`ManualClock`] in tests that need an expiry, a grace period or a ban's end to pass without
//! sleeping. Services read it once at the top of a request's work and pass `now` down; the
//! domain rules take it as an argument. Deadlines and timeouts use tokio's time (pausable in
//! tests), never this clock.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time, Unix milliseconds.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Unix milliseconds now.
    fn now_ms(&self) -> i64;

    /// Unix seconds now (what tokens, sessions and revocations are dated with).
    fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Unix seconds now, fractional (the login rate limit's buckets refill continuously).
    fn now_secs_f64(&self) -> f64 {
        self.now_ms() as f64 / 1000.0
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

impl SystemClock {
    /// Unix nanoseconds now, for exported trace spans (which date real events, so never a
    /// manual clock's time).
    pub fn now_nanos(self) -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock at `unix_ms`.
    pub fn at(unix_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(unix_ms))
    }

    /// A clock at the system's time now (so tokens it dates are accepted by real verifiers).
    pub fn starting_now() -> ManualClock {
        ManualClock::at(SystemClock.now_ms())
    }

    /// Moves the clock forward (or back, with a negative `ms`).
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by whole seconds.
    pub fn advance_secs(&self, secs: i64) {
        self.advance_ms(secs.saturating_mul(1000));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(1_700_000_000_500);
        assert_eq!(clock.now(), 1_700_000_000);
        assert_eq!(clock.now_secs_f64(), 1_700_000_000.5);
        clock.advance_ms(499);
        assert_eq!(clock.now(), 1_700_000_000);
        clock.advance_ms(1);
        assert_eq!(clock.now(), 1_700_000_001);
        clock.advance_secs(59);
        assert_eq!(clock.now(), 1_700_000_060);
    }

    #[test]
    fn system_clock_is_after_2025() {
        assert!(SystemClock.now() > 1_735_689_600);
        assert!(SystemClock.now_nanos() > 1_735_689_600 * 1_000_000_000);
    }
}
