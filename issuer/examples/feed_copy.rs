//! What the replica's feed copy costs to catch up with one new revocation when it holds a
//! large set (`weauth_issuer::feed::copy`), against the way it was done before (every entry
//! cloned and filtered into a new copy), in the same run.
//!
//! `cargo run --release -p weauth-issuer --example feed_copy [entries] [rounds]`
//! (default 1 000 000 entries, 20 rounds). Prints the median and the slowest round of each.

use std::time::{Duration, Instant};

use weauth_issuer::feed::copy::{Delta, FeedCopy};
use weauth_token::revocation::{Entry, EntryKind};

fn entry(seq: u64, now: i64) -> Entry {
    Entry {
        seq,
        kind: EntryKind::Jti,
        value: format!("jti-{seq:016x}-{:08x}", seq.wrapping_mul(2_654_435_761)),
        issued_before: None,
        until: now + 900 + (seq % 600) as i64,
    }
}

fn one(seq: u64, now: i64) -> Delta {
    Delta {
        restart: false,
        entries: vec![entry(seq, now)],
        current: seq,
        purged_through: 0,
    }
}

fn median(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let now = 1_700_000_000;
    let all: Vec<Entry> = (1..=n).map(|s| entry(s, now)).collect();

    // Before: the new copy is the old one's live entries, cloned, then the delta.
    let mut before = all.clone();
    let mut before_times = Vec::new();
    for r in 0..rounds {
        let started = Instant::now();
        let mut next: Vec<Entry> = before.iter().filter(|e| e.until >= now).cloned().collect();
        next.extend(one(n + 1 + r, now).entries);
        before_times.push(started.elapsed());
        before = next;
    }

    // Now: shared chunks (the compaction is not due within the rounds: same `now`).
    let mut copy = FeedCopy::default().caught_up(
        Delta {
            restart: true,
            entries: all,
            current: n,
            purged_through: 0,
        },
        now,
    );
    let mut after_times = Vec::new();
    for r in 0..rounds {
        let started = Instant::now();
        let next = copy.caught_up(one(n + 1 + r, now), now);
        after_times.push(started.elapsed());
        copy = next;
    }
    assert_eq!(copy.len(), before.len());

    let (b50, bmax) = median(before_times);
    let (a50, amax) = median(after_times);
    println!("feed copy, {n} entries, one new revocation per catch-up, {rounds} rounds");
    println!("  before (every entry cloned): median {b50:?}, slowest {bmax:?}");
    println!("  shared chunks:               median {a50:?}, slowest {amax:?}");
}
