//! Revocation rules (pure): how long an entry matters, when a feed reader must start over,
//! how an answer is paged, and how long a long poll may wait; plus [`read`], the one
//! composition of those rules over [`Store::feed_snapshot`].
//!
//! The feed itself is served by `api/feed.rs`, woken through the application's `watch` channel
//! of the current `seq`.

use std::time::Duration;

use weauth_token::revocation::FeedResponse;

use crate::config::MAX_ACCESS_TTL;
use crate::store::{FeedSnapshot, ReportedTtl, Store, StoreError};

/// Longest `wait` honoured on `GET /v1/revocations` (longer requests are capped).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How often each replica reports the access-token lifetime it issues to the store, and
/// reads back what every replica reported ([`Store::report_access_ttl`]).
pub const TTL_REPORT_EVERY: Duration = Duration::from_secs(30);

/// How long a report is kept in the store: past the longest lifetime the configuration allows
/// and two report periods, no token of that report can still verify.
pub const TTL_REPORT_KEPT: i64 = (MAX_ACCESS_TTL.as_secs() + 2 * TTL_REPORT_EVERY.as_secs()) as i64;

/// The longest access-token lifetime a token still verifying at `now` may have been issued
/// with: this replica's own, or a longer one a replica reported (before `WEAUTH_ACCESS_TTL`
/// was lowered, or another replica of a rolling update). A report at `reported_at` counts
/// while a token of its lifetime issued before the replica's next report was due — with one
/// period to spare, for a late or lost report — can still verify: until
/// `reported_at + 2 × TTL_REPORT_EVERY + access_ttl`.
pub fn longest_lifetime(own_ttl: i64, reported: &[ReportedTtl], now: i64) -> i64 {
    let spare = 2 * TTL_REPORT_EVERY.as_secs() as i64;
    reported
        .iter()
        .filter(|report| {
            report
                .reported_at
                .saturating_add(spare)
                .saturating_add(report.access_ttl)
                > now
        })
        .map(|report| report.access_ttl)
        .fold(own_ttl, i64::max)
}

/// Reports `own_ttl` as the lifetime this replica issues as of `now` and returns the longest
/// lifetime a token still verifying may have ([`longest_lifetime`]) from every replica's
/// reports: the one composition of that rule over [`Store::report_access_ttl`].
///
/// # Errors
/// Store failures.
pub async fn report_lifetime(store: &dyn Store, own_ttl: i64, now: i64) -> Result<i64, StoreError> {
    let forget_before = now.saturating_sub(TTL_REPORT_KEPT);
    let reported = store.report_access_ttl(own_ttl, now, forget_before).await?;
    Ok(longest_lifetime(own_ttl, &reported, now))
}

/// [`longest_lifetime`] from the reports as they stand, without reporting (a revocation's read).
///
/// # Errors
/// Store failures.
pub async fn read_lifetime(store: &dyn Store, own_ttl: i64, now: i64) -> Result<i64, StoreError> {
    let reported = store.access_ttls().await?;
    Ok(longest_lifetime(own_ttl, &reported, now))
}

/// The `until` of an entry written at `now` that revokes tokens issued up to `now`: the last
/// moment such a token can still be accepted, i.e. its latest `exp` plus the verifiers' leeway.
/// `access_ttl` is the longest lifetime such a token may have ([`longest_lifetime`]): a
/// revocation kept only for this replica's lifetime would lapse while tokens of a longer one
/// still verify.
pub fn until(now: i64, access_ttl: i64, leeway: i64) -> i64 {
    now.saturating_add(access_ttl).saturating_add(leeway)
}

/// The `until` of a `sub` entry: tokens with `iat < issued_before` expire by
/// `issued_before - 1 + access_ttl`.
pub fn until_for_sub(issued_before: i64, access_ttl: i64, leeway: i64) -> i64 {
    until(issued_before.saturating_sub(1), access_ttl, leeway)
}

/// The most entries one feed answer carries. A larger set is sent in pages: each answer's `seq`
/// is that of its last entry, so the caller's next `since` fetches the rest at once (the first
/// page of a full set has `full: true`, the rest are deltas). At about 75 bytes an entry a page
/// stays near 4 MB, well under the filter's 16 MiB body cap and Envoy's async-client buffer.
pub const FEED_PAGE_ENTRIES: usize = 50_000;

/// Whether a reader at `since` gets the full live set instead of a delta: `since = 0`, a
/// `since` below the purge watermark (entries after it may be gone: `seq <= purged_through`
/// may have been purged, so a reader at the watermark itself misses nothing), or a `since`
/// from the future (another database, or a restored backup).
pub fn feed_is_full(since: u64, current: u64, purged_through: u64) -> bool {
    since == 0 || since > current || since < purged_through
}

/// The answer for a reader at `since`, from a snapshot read after `since` (after 0 when
/// `full`), with at most `limit` entries: when the page is full there may be more, so `seq` is
/// its last entry's and `since=seq` continues; otherwise `seq` is the store's current seq.
pub fn page(snapshot: FeedSnapshot, full: bool, limit: usize, now: i64) -> FeedResponse {
    let seq = match snapshot.entries.last() {
        Some(last) if snapshot.entries.len() >= limit => last.seq,
        _ => snapshot.current,
    };
    FeedResponse {
        seq,
        full,
        now,
        entries: snapshot.entries,
    }
}

/// Reads the feed answer for `since` at `now` (see `docs/INTERFACES.md`): a delta, or the
/// full live set when [`feed_is_full`] says the reader must start over.
///
/// # Errors
/// Store failures.
pub async fn read(
    store: &dyn Store,
    since: u64,
    now: i64,
    limit: usize,
) -> Result<FeedResponse, StoreError> {
    let snapshot = store.feed_snapshot(since, now, limit).await?;
    let full = feed_is_full(since, snapshot.current, snapshot.purged_through);
    let snapshot = if full && since != 0 {
        store.feed_snapshot(0, now, limit).await?
    } else {
        snapshot
    };
    Ok(page(snapshot, full, limit, now))
}

/// The wait to honour for a requested `wait` (seconds, possibly fractional or absent).
pub fn capped_wait(requested: Option<f64>) -> Duration {
    match requested {
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::from_secs_f64(secs.min(MAX_WAIT.as_secs_f64()))
        }
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_covers_ttl_and_leeway() {
        assert_eq!(until(1000, 900, 60), 1960);
    }

    #[test]
    fn until_for_sub_tracks_issued_before() {
        // A token with iat = 999 expires at 1899; with leeway 60 it matters until 1959.
        assert_eq!(until_for_sub(1000, 900, 60), 1959);
    }

    fn report(access_ttl: i64, reported_at: i64) -> ReportedTtl {
        ReportedTtl {
            access_ttl,
            reported_at,
        }
    }

    #[test]
    fn a_lowered_lifetime_still_counts_the_longer_one_while_its_tokens_can_verify() {
        // Lowered from 900 s to 300 s: the last report of 900 s came at 1000; a token of it
        // issued up to 1000 + 60 (a report late by a period) verifies until 1960.
        let reported = [report(900, 1000), report(300, 1010)];
        assert_eq!(longest_lifetime(300, &reported, 1010), 900);
        assert_eq!(longest_lifetime(300, &reported, 1959), 900);
        assert_eq!(longest_lifetime(300, &reported, 1960), 300);
        // A revocation at 1010 covers tokens issued up to 1010, of either lifetime: kept until
        // 1010 + 900 (+ leeway), not 1010 + 300.
        assert_eq!(
            until(1010, longest_lifetime(300, &reported, 1010), 60),
            1970
        );
    }

    #[test]
    fn a_shorter_report_never_shortens_the_own_lifetime() {
        assert_eq!(longest_lifetime(900, &[report(300, 1000)], 1000), 900);
        assert_eq!(longest_lifetime(900, &[], 1000), 900);
        // a longer one of another replica, running now
        assert_eq!(longest_lifetime(300, &[report(3600, 995)], 1000), 3600);
    }

    #[test]
    fn a_report_is_kept_as_long_as_it_can_count() {
        let longest = MAX_ACCESS_TTL.as_secs() as i64;
        let reported_at = 1000;
        let now = reported_at + TTL_REPORT_KEPT;
        // At the longest lifetime the configuration allows, a report kept until then has just
        // stopped counting: forgetting it changes nothing.
        assert_eq!(
            longest_lifetime(1, &[report(longest, reported_at)], now - 1),
            longest
        );
        assert_eq!(longest_lifetime(1, &[report(longest, reported_at)], now), 1);
    }

    #[test]
    fn feed_zero_is_full() {
        assert!(feed_is_full(0, 10, 0));
        assert!(feed_is_full(0, 0, 0));
    }

    #[test]
    fn feed_since_below_watermark_is_full() {
        assert!(feed_is_full(4, 10, 5));
        assert!(!feed_is_full(5, 10, 5));
        assert!(!feed_is_full(7, 10, 5));
    }

    #[test]
    fn feed_since_ahead_of_current_is_full() {
        assert!(feed_is_full(11, 10, 0));
        assert!(!feed_is_full(10, 10, 0));
    }

    fn entry(seq: u64) -> weauth_token::revocation::Entry {
        weauth_token::revocation::Entry {
            seq,
            kind: weauth_token::revocation::EntryKind::Jti,
            value: format!("j{seq}"),
            issued_before: None,
            until: 100,
        }
    }

    #[test]
    fn page_short_page_points_at_current() {
        let snapshot = FeedSnapshot {
            current: 9,
            purged_through: 0,
            entries: vec![entry(4)],
        };
        let answer = page(snapshot, false, 2, 50);
        assert_eq!((answer.seq, answer.full, answer.now), (9, false, 50));
    }

    #[test]
    fn page_full_page_points_past_last_entry() {
        let snapshot = FeedSnapshot {
            current: 9,
            purged_through: 0,
            entries: vec![entry(3), entry(4)],
        };
        let answer = page(snapshot, true, 2, 50);
        assert_eq!((answer.seq, answer.full), (4, true));
    }

    #[test]
    fn capped_wait_limits() {
        assert_eq!(capped_wait(None), Duration::ZERO);
        assert_eq!(capped_wait(Some(-3.0)), Duration::ZERO);
        assert_eq!(capped_wait(Some(f64::NAN)), Duration::ZERO);
        assert_eq!(capped_wait(Some(2.5)), Duration::from_millis(2500));
        assert_eq!(capped_wait(Some(3600.0)), MAX_WAIT);
    }
}
