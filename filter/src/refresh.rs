//! Timer state machines for the two background fetchers (JWKS and revocation feed), and the
//! lease that elects the one VM that runs them.
//!
//! [`Schedule`] is either idle until a due time, or in flight with the host's call token and
//! start time. The root context asks [`Schedule::due`] on every tick, reports
//! [`Schedule::dispatched`], and hands every call response to [`Schedule::finish`], which drops
//! responses whose token is not the one in flight (a stale call). Failures back off
//! exponentially; [`Schedule::expire`] recovers from a callback that never came.
//!
//! [`Lease`] is the election: `on_tick` fires in every worker VM, so a lease (holder id, expiry)
//! is CAS-written to shared data and only its holder fetches. Pure: every time is an argument
//! (host milliseconds). Every one here is on the fetcher's clock ([`crate::host::Now::mono_ms`]),
//! the wall clock playing no part: in the wasm build the lease's expiry, the JWKS blob's
//! fetch time and an unknown-`kid` hint are written to shared data by one VM and read by
//! another, on Envoy's process-wide monotonic clock ([`crate::host::WasmClock`]).

/// Where a fetcher is. (Named apart from `worker::VmState`, the per-VM data, and `CallOutcome`
/// apart from `verify::Verdict`, the verdict on a request, so neither pair can be confused.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchPhase {
    /// Nothing in flight; dispatch at or after `next_ms`.
    Idle { next_ms: u64 },
    /// A call is out.
    InFlight { token: u32, started_ms: u64 },
}

/// How a finished fetch call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Success: the next call is due `next_in_ms` from now.
    Ok { next_in_ms: u64 },
    /// Failure: back off.
    Failed,
}

/// One fetcher's timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    phase: FetchPhase,
    /// Consecutive failures (0 after a success).
    failures: u32,
    /// First backoff step.
    base_ms: u64,
    /// Backoff ceiling.
    max_ms: u64,
    /// A call in flight longer than this is given up (its late response is dropped).
    give_up_ms: u64,
    last_started_ms: Option<u64>,
}

impl Schedule {
    /// A schedule due immediately, backing off from `base_ms` doubling up to `max_ms`, and
    /// abandoning calls older than `give_up_ms` (set it above the call's own timeout).
    pub fn new(now_ms: u64, base_ms: u64, max_ms: u64, give_up_ms: u64) -> Schedule {
        Schedule {
            phase: FetchPhase::Idle { next_ms: now_ms },
            failures: 0,
            base_ms: base_ms.max(1),
            max_ms: max_ms.max(base_ms.max(1)),
            give_up_ms,
            last_started_ms: None,
        }
    }

    /// Where the fetcher is now.
    pub fn phase(&self) -> FetchPhase {
        self.phase
    }

    /// Consecutive failures.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether a call should be dispatched now.
    pub fn due(&self, now_ms: u64) -> bool {
        matches!(self.phase, FetchPhase::Idle { next_ms } if now_ms >= next_ms)
    }

    /// When a tick next has something to do: the due time, or when the call in flight is
    /// given up ([`Self::expire`]).
    pub fn next_tick_ms(&self) -> u64 {
        match self.phase {
            FetchPhase::Idle { next_ms } => next_ms,
            FetchPhase::InFlight { started_ms, .. } => {
                started_ms.saturating_add(self.give_up_ms).saturating_add(1)
            }
        }
    }

    /// Records a dispatched call.
    pub fn dispatched(&mut self, token: u32, now_ms: u64) {
        self.phase = FetchPhase::InFlight {
            token,
            started_ms: now_ms,
        };
        self.last_started_ms = Some(now_ms);
    }

    /// The host refused to dispatch: counts as a failure.
    pub fn dispatch_failed(&mut self, now_ms: u64) {
        self.last_started_ms = Some(now_ms);
        self.fail(now_ms);
    }

    fn backoff_ms(&self) -> u64 {
        let exponent = self.failures.saturating_sub(1).min(32);
        self.base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms)
    }

    fn fail(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        self.phase = FetchPhase::Idle {
            next_ms: now_ms.saturating_add(self.backoff_ms()),
        };
    }

    /// Whether `token` is the call in flight (a response for any other token is stale).
    pub fn is_current(&self, token: u32) -> bool {
        matches!(self.phase, FetchPhase::InFlight { token: current, .. } if current == token)
    }

    /// Accepts the result of call `token`. Returns false, changing nothing, when the token is
    /// not the call in flight: the caller must drop that response.
    pub fn finish(&mut self, token: u32, now_ms: u64, outcome: CallOutcome) -> bool {
        if !self.is_current(token) {
            return false;
        }
        match outcome {
            CallOutcome::Ok { next_in_ms } => {
                self.failures = 0;
                self.phase = FetchPhase::Idle {
                    next_ms: now_ms.saturating_add(next_in_ms),
                };
            }
            CallOutcome::Failed => self.fail(now_ms),
        }
        true
    }

    /// Gives up a call in flight for longer than `give_up_ms` (counted as a failure). Returns
    /// whether it did.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        match self.phase {
            FetchPhase::InFlight { started_ms, .. }
                if now_ms.saturating_sub(started_ms) > self.give_up_ms =>
            {
                self.fail(now_ms);
                true
            }
            _ => false,
        }
    }

    /// Brings an idle schedule forward to now, unless the last call started less than
    /// `min_interval_ms` ago (then to that point). Used to refetch the JWKS on an unknown
    /// `kid` without letting a stream of bad tokens hammer the issuer. Returns the new due
    /// time, or `None` when a call is in flight. After a failed call the backoff stands: a
    /// stream of tokens with made-up kids (the kid is looked up before the signature) must not
    /// turn an issuer outage's backoff into a fetch every `min_interval_ms`.
    pub fn hurry(&mut self, now_ms: u64, min_interval_ms: u64) -> Option<u64> {
        let FetchPhase::Idle { next_ms } = self.phase else {
            return None;
        };
        if self.failures > 0 {
            return Some(next_ms);
        }
        let earliest = self.last_started_ms.map_or(now_ms, |last| {
            last.saturating_add(min_interval_ms).max(now_ms)
        });
        let next = next_ms.min(earliest);
        self.phase = FetchPhase::Idle { next_ms: next };
        Some(next)
    }

    /// When the last call started.
    pub fn last_started_ms(&self) -> Option<u64> {
        self.last_started_ms
    }

    /// Forgets any call in flight and counts a failure: the next call waits its backoff
    /// (after a fault of the fetcher itself).
    pub fn give_up(&mut self, now_ms: u64) {
        self.fail(now_ms);
    }

    /// Forgets any call in flight and makes the schedule due now (when this VM becomes the
    /// fetcher, or stops being it).
    pub fn reset(&mut self, now_ms: u64) {
        self.phase = FetchPhase::Idle { next_ms: now_ms };
        self.failures = 0;
    }
}

/// Poll period while the issuer's feed is at seq 0: `since=0` always answers at once with the
/// full set, so there is nothing to long-poll on until the first revocation.
pub const EMPTY_FEED_POLL_MS: u64 = 250;
/// The least time between an answer that brought nothing new, early, and the next poll.
pub const FEED_FLOOR_MS: u64 = 1_000;
/// The floor's jitter: the wait is `FEED_FLOOR_MS` plus `0..FEED_FLOOR_JITTER_MS`, so the
/// sidecars behind one misbehaving proxy do not poll in step.
pub const FEED_FLOOR_JITTER_MS: u64 = 500;

/// When to poll the feed again after a successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextPoll {
    /// The answer brought news (a new seq: new entries, a new full set, or a page with more
    /// to follow): poll again at once.
    Now,
    /// The issuer has never revoked anything (seq 0): re-ask after [`EMPTY_FEED_POLL_MS`].
    Empty(u64),
    /// The poll was held for the wait it asked for and nothing happened: poll again at once.
    Held,
    /// Nothing new, and answered before the requested wait was over (a proxy that does not
    /// hold long polls, or a server that keeps answering `full` at the same seq): wait this
    /// long first, so the filter never hot-loops on the feed (counted as `feed_poll_floored`).
    Floor(u64),
}

impl NextPoll {
    /// Milliseconds until the next poll.
    pub fn delay_ms(self) -> u64 {
        match self {
            NextPoll::Now | NextPoll::Held => 0,
            NextPoll::Empty(ms) | NextPoll::Floor(ms) => ms,
        }
    }
}

/// Decides when to poll the feed again after answer `seq` to a poll with `since` that was
/// dispatched `elapsed_ms` ago asking to be held `wait_ms` (`None`: a page of a load, asked
/// for without wait — the long poll follows its answer at once); `full_page`: the answer was a
/// full page ([`is_full_page`], more announced); `restarted_again`: the answer is a full set
/// for a poll that held one (`since` not 0), the second such within [`RESTART_WINDOW_MS`].
/// `entropy` is any per-VM varying number (it picks the jitter).
///
/// News is a change of seq: the issuer's answers carry the seq of their last entry (a page
/// with more to follow ends below the current seq), so an answer with the caller's own seq has
/// nothing the caller does not hold, even when it is a repeated `full` set.
pub fn next_feed_poll(
    since: u64,
    seq: u64,
    elapsed_ms: u64,
    wait_ms: Option<u64>,
    entropy: u64,
    full_page: bool,
    restarted_again: bool,
) -> NextPoll {
    if restarted_again {
        // A full set for a poll that held one, the second within [`RESTART_WINDOW_MS`]: the
        // issuer starts the caller over again and again — two issuers on two stores behind
        // one address (each answer's seq is news to the other's), or one losing its state.
        // News every time, asked for at once it would be a loop of whole sets; paced.
        NextPoll::Floor(FEED_FLOOR_MS + entropy % FEED_FLOOR_JITTER_MS)
    } else if seq != since {
        NextPoll::Now
    } else if seq == 0 {
        NextPoll::Empty(EMPTY_FEED_POLL_MS)
    } else if full_page {
        // A full page that ends where the caller already was: the issuer sent a page it had
        // sent before (a full set restarting below the caller's place, again and again). Asked
        // for at once it would be fetched and parsed in a loop; the floor paces it.
        NextPoll::Floor(FEED_FLOOR_MS + entropy % FEED_FLOOR_JITTER_MS)
    } else if wait_ms.is_none_or(|wait| wait > 0 && elapsed_ms >= wait) {
        // The issuer held the poll its whole wait, or a load's last page came: poll again at
        // once. (With `wait_seconds` 0 nothing is held: the floor below keeps that from
        // polling in a loop.)
        NextPoll::Held
    } else {
        NextPoll::Floor(FEED_FLOOR_MS + entropy % FEED_FLOOR_JITTER_MS)
    }
}

/// How close two full sets for polls that held one are taken as the issuer starting the caller
/// over again and again ([`next_feed_poll`]'s `restarted_again`). An issuer starts a reader
/// over rarely (its purge passed the reader's place, a restored backup): once, then deltas.
pub const RESTART_WINDOW_MS: u64 = 10_000;

/// The most entries the issuer puts in one feed answer (docs/INTERFACES.md, "Revocation
/// feed"): an answer this long has more behind it, asked for at once.
pub const FEED_PAGE_ENTRIES: usize = 50_000;
/// Whether a feed answer of `entries` entries is a full page, with more behind it.
pub fn is_full_page(entries: usize) -> bool {
    entries >= FEED_PAGE_ENTRIES
}

/// A revocation set being loaded page by page, kept from readers until the load is over —
/// the same in both builds: while a first load is under way requests are answered as before any
/// set (503: a part of a first set would let through what its later pages revoke), and during
/// a reload readers keep the set they have until the new one is whole, published once (a full
/// set is added to the one held: `RevocationSet::apply_page`).
///
/// A feed answer of [`FEED_PAGE_ENTRIES`] has more behind it; the fetcher keeps applying the
/// pages to the staged set, asking for each next one with `wait=0` (the issuer answers at once:
/// the next page, or nothing when the last full page ended the set), and publishes it when an
/// answer is shorter ([`Staging::page_applied`] hands it back). A page that is slow, or a poll
/// that fails, only delays the load: nothing is published until it is whole.
#[derive(Debug, Default)]
pub struct Staging {
    set: Option<crate::revocation::RevocationSet>,
}

impl Staging {
    /// Whether a load is under way.
    pub fn is_loading(&self) -> bool {
        self.set.is_some()
    }

    /// The seq the staged set holds (what the next poll asks `since`).
    pub fn seq(&self) -> Option<u64> {
        self.set.as_ref().map(|set| set.seq)
    }

    /// The set the next answer applies to: the staged one when a load is under way (taken out;
    /// [`Staging::page_applied`] puts it back), else `None`.
    pub fn take(&mut self) -> Option<crate::revocation::RevocationSet> {
        self.set.take()
    }

    /// After an answer of `entries` entries was applied to `set`: a full page is kept staged
    /// (`None`: publish nothing yet); otherwise the load, if any, is over and the set comes back
    /// to be published.
    pub fn page_applied(
        &mut self,
        set: crate::revocation::RevocationSet,
        entries: usize,
    ) -> Option<crate::revocation::RevocationSet> {
        if is_full_page(entries) {
            self.set = Some(set);
            None
        } else {
            Some(set)
        }
    }

    /// Drops a load under way (the feed went back, or this VM stopped being the fetcher).
    pub fn abandon(&mut self) {
        self.set = None;
    }
}

/// The wasm build's fetcher lease's lifetime (on the monotonic clock); renewed on every tick by
/// its holder.
pub const LEASE_MS: u64 = 2_000;

/// The fetcher lease kept in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The holder's id: random per root context (one per configuration in each VM).
    pub holder: u64,
    /// When (ms, on the monotonic clock) anyone may take the lease; 0 when handed on.
    pub expires_ms: u64,
}

/// What a VM should do with the lease on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// We hold it: CAS-write this renewal; if the write succeeds, we are the fetcher.
    Renew(Lease),
    /// Free or expired: CAS-write this claim. It only makes us the fetcher once a later tick
    /// finds us still holding it (two VMs can both claim a key that did not exist yet; only the
    /// last write survives, and only its author will renew).
    Claim(Lease),
    /// Someone else holds a live lease.
    Follow,
}

impl Lease {
    /// 16 bytes: holder u64 LE, expires_ms u64 LE.
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (holder, expires) = out.split_at_mut(8);
        holder.copy_from_slice(&self.holder.to_le_bytes());
        expires.copy_from_slice(&self.expires_ms.to_le_bytes());
        out
    }

    /// `None` for anything but 16 bytes.
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let holder = bytes.get(..8)?.try_into().ok()?;
        let expires = bytes.get(8..16)?.try_into().ok()?;
        (bytes.len() == 16).then(|| Lease {
            holder: u64::from_le_bytes(holder),
            expires_ms: u64::from_le_bytes(expires),
        })
    }

    /// Whether its holder handed it on as its configuration went ([`lease_release`]) rather
    /// than letting it run out.
    pub fn handed_on(&self) -> bool {
        self.expires_ms == 0
    }
}

/// Decides the lease step for VM `me` at `now_ms`, given the current lease (if readable).
pub fn lease_step(current: Option<Lease>, me: u64, now_ms: u64, duration_ms: u64) -> LeaseStep {
    let next = Lease {
        holder: me,
        expires_ms: now_ms.saturating_add(duration_ms),
    };
    match current {
        Some(lease) if lease.holder == me => LeaseStep::Renew(next),
        Some(lease) if lease.expires_ms > now_ms => LeaseStep::Follow,
        _ => LeaseStep::Claim(next),
    }
}

/// The lease VM `me` writes as its configuration goes (its root context dropped on
/// `proxy_on_delete`): expired at once, so that a VM of a configuration left claims it on its
/// next tick instead of waiting out the
/// [`Lease::expires_ms`] of the last renewal. `None` when `me` does not hold it (nothing to
/// hand on; someone else's lease is left alone).
pub fn lease_release(current: Option<Lease>, me: u64) -> Option<Lease> {
    current
        .filter(|lease| lease.holder == me)
        .map(|lease| Lease {
            holder: lease.holder,
            expires_ms: 0,
        })
}

/// A VM's own limit on asking the fetcher for a JWKS refetch (a token named an unknown
/// `kid`): one ask per interval, so a stream of such tokens costs one shared-data write per
/// interval, not one per request. The first ask goes out whatever the clock reads (the
/// monotonic clock counts from the host's boot: "0 = never" would hold back the asks of an
/// Envoy started less than an interval after it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefetchAsks {
    last_ms: Option<u64>,
}

impl RefetchAsks {
    /// Whether to ask at `now_ms` (the monotonic clock): not within `min_interval_ms` of the
    /// last ask. Records the ask.
    pub fn ask(&mut self, now_ms: u64, min_interval_ms: u64) -> bool {
        if self
            .last_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < min_interval_ms)
        {
            return false;
        }
        self.last_ms = Some(now_ms);
        true
    }
}

/// The JWKS blob in shared data: `WJK1`, generation u64 LE, fetched-at (ms on the monotonic
/// clock) u64 LE, then the JWKS JSON exactly as the issuer served it.
pub fn encode_jwks_blob(generation: u64, fetched_ms: u64, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + json.len());
    out.extend_from_slice(b"WJK1");
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&fetched_ms.to_le_bytes());
    out.extend_from_slice(json);
    out
}

/// A decoded JWKS blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksBlob<'a> {
    pub generation: u64,
    pub fetched_ms: u64,
    pub json: &'a [u8],
}

/// Reads a blob written by [`encode_jwks_blob`]; `None` when it is not one.
pub fn decode_jwks_blob(bytes: &[u8]) -> Option<JwksBlob<'_>> {
    if bytes.get(..4)? != b"WJK1" {
        return None;
    }
    Some(JwksBlob {
        generation: u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?),
        fetched_ms: u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?),
        json: bytes.get(20..)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The monotonic clock counts from the host's boot: an Envoy started 2 s after it still
    /// asks at once (with 0 as "never", not before 5 s after the boot).
    #[test]
    fn refetch_asks_first_ask_goes_out_whatever_the_clock_reads_then_one_per_interval() {
        let mut asks = RefetchAsks::default();
        assert!(asks.ask(2_001, 5_000));
        assert!(!asks.ask(7_000, 5_000));
        assert!(asks.ask(7_001, 5_000));
    }

    #[test]
    fn next_feed_poll_news_polls_at_once() {
        assert_eq!(
            next_feed_poll(5, 6, 3, Some(20_000), 7, false, false),
            NextPoll::Now
        );
        // A new full set at another seq (after a purge, or the first since=0) is news too.
        assert_eq!(
            next_feed_poll(0, 4, 3, Some(20_000), 7, false, false),
            NextPoll::Now
        );
    }

    #[test]
    fn next_feed_poll_empty_issuer_polls_at_the_empty_period() {
        assert_eq!(
            next_feed_poll(0, 0, 2, Some(20_000), 7, false, false),
            NextPoll::Empty(EMPTY_FEED_POLL_MS)
        );
    }

    #[test]
    fn next_feed_poll_held_for_the_wait_polls_at_once() {
        assert_eq!(
            next_feed_poll(9, 9, 20_000, Some(20_000), 7, false, false),
            NextPoll::Held
        );
        assert_eq!(NextPoll::Held.delay_ms(), 0);
        // `wait_seconds: 0` holds nothing: floored, not a poll per round trip.
        assert!(matches!(
            next_feed_poll(9, 9, 0, Some(0), 7, false, false),
            NextPoll::Floor(_)
        ));
        assert!(matches!(
            next_feed_poll(9, 9, 30, Some(0), 7, false, false),
            NextPoll::Floor(_)
        ));
        // A load's last page (asked without wait): the long poll at once.
        assert_eq!(
            next_feed_poll(9, 9, 0, None, 7, false, false),
            NextPoll::Held
        );
    }

    #[test]
    fn next_feed_poll_early_answer_without_news_waits_the_jittered_floor() {
        for entropy in [0, 1, 499, 500, u64::MAX] {
            let next = next_feed_poll(9, 9, 5, Some(20_000), entropy, false, false);
            assert!(matches!(next, NextPoll::Floor(_)), "{next:?}");
            let delay = next.delay_ms();
            assert!(
                (FEED_FLOOR_MS..FEED_FLOOR_MS + FEED_FLOOR_JITTER_MS).contains(&delay),
                "{delay}"
            );
        }
        assert_ne!(
            next_feed_poll(9, 9, 5, Some(20_000), 1, false, false).delay_ms(),
            next_feed_poll(9, 9, 5, Some(20_000), 2, false, false).delay_ms()
        );
    }

    #[test]
    fn next_feed_poll_repeated_full_set_at_the_same_seq_is_floored() {
        // A server at seq 1 that answers every poll with its full set.
        assert!(matches!(
            next_feed_poll(1, 1, 0, Some(20_000), 3, false, false),
            NextPoll::Floor(_)
        ));
    }

    #[test]
    fn next_feed_poll_a_full_page_repeated_during_a_load_is_floored() {
        // A load's pages are asked for at once (no wait): the next page, or the last.
        assert_eq!(
            next_feed_poll(9, 12, 0, None, 3, true, false),
            NextPoll::Now
        );
        assert_eq!(
            next_feed_poll(9, 9, 0, None, 3, false, false),
            NextPoll::Held
        );
        // A full page ending at the caller's own seq moved nothing: an issuer sending the
        // first page of its set again (a since below its purge watermark) is paced, not asked
        // again at once for ever.
        let next = next_feed_poll(9, 9, 0, None, 3, true, false);
        assert!(matches!(next, NextPoll::Floor(_)), "{next:?}");
        assert!(next.delay_ms() >= FEED_FLOOR_MS);
    }

    #[test]
    fn next_feed_poll_a_set_started_over_again_is_floored() {
        // News (another seq), yet the second full set within the window for a poll that held
        // one: paced, whatever its seq.
        for seq in [5, 9, 12] {
            let next = next_feed_poll(9, seq, 0, Some(20_000), 3, false, true);
            assert!(matches!(next, NextPoll::Floor(_)), "{seq}: {next:?}");
        }
        assert_eq!(
            next_feed_poll(9, 12, 0, Some(20_000), 3, false, false),
            NextPoll::Now
        );
    }

    fn schedule() -> Schedule {
        Schedule::new(1_000, 1_000, 30_000, 10_000)
    }

    #[test]
    fn new_schedule_due_immediately() {
        assert!(schedule().due(1_000));
    }

    #[test]
    fn in_flight_not_due() {
        let mut s = schedule();
        s.dispatched(7, 1_000);
        assert!(!s.due(50_000));
    }

    #[test]
    fn finish_current_token_accepted() {
        let mut s = schedule();
        s.dispatched(7, 1_000);
        assert!(s.finish(
            7,
            1_500,
            CallOutcome::Ok {
                next_in_ms: 300_000
            }
        ));
        assert_eq!(s.phase(), FetchPhase::Idle { next_ms: 301_500 });
    }

    #[test]
    fn finish_stale_token_dropped() {
        let mut s = schedule();
        s.dispatched(7, 1_000);
        assert!(!s.finish(6, 1_500, CallOutcome::Failed));
        assert_eq!(
            s.phase(),
            FetchPhase::InFlight {
                token: 7,
                started_ms: 1_000
            }
        );
    }

    #[test]
    fn finish_when_idle_dropped() {
        let mut s = schedule();
        assert!(!s.finish(1, 1_500, CallOutcome::Ok { next_in_ms: 0 }));
    }

    #[test]
    fn failures_back_off_exponentially_to_cap() {
        let mut s = schedule();
        let mut delays = Vec::new();
        let mut now = 1_000;
        for token in 0..8 {
            s.dispatched(token, now);
            s.finish(token, now, CallOutcome::Failed);
            let FetchPhase::Idle { next_ms } = s.phase() else {
                panic!("idle expected")
            };
            delays.push(next_ms - now);
            now = next_ms;
        }
        assert_eq!(
            delays,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
    }

    #[test]
    fn success_resets_backoff() {
        let mut s = schedule();
        s.dispatched(1, 0);
        s.finish(1, 0, CallOutcome::Failed);
        s.dispatched(2, 1_000);
        s.finish(2, 1_000, CallOutcome::Failed);
        s.dispatched(3, 3_000);
        s.finish(3, 3_000, CallOutcome::Ok { next_in_ms: 0 });
        assert_eq!(s.failures(), 0);
        s.dispatched(4, 3_000);
        s.finish(4, 3_000, CallOutcome::Failed);
        assert_eq!(s.phase(), FetchPhase::Idle { next_ms: 4_000 });
    }

    #[test]
    fn dispatch_failed_backs_off() {
        let mut s = schedule();
        s.dispatch_failed(1_000);
        assert!(!s.due(1_999));
        assert!(s.due(2_000));
    }

    #[test]
    fn expire_gives_up_lost_call() {
        let mut s = schedule();
        s.dispatched(9, 1_000);
        assert!(!s.expire(11_000));
        assert!(s.expire(11_001));
        assert!(!s.is_current(9));
        assert_eq!(s.failures(), 1);
    }

    #[test]
    fn hurry_respects_min_interval() {
        let mut s = schedule();
        s.dispatched(1, 1_000);
        s.finish(
            1,
            1_100,
            CallOutcome::Ok {
                next_in_ms: 300_000,
            },
        );
        assert_eq!(s.hurry(2_000, 5_000), Some(6_000));
        assert!(!s.due(5_999));
        assert!(s.due(6_000));
    }

    #[test]
    fn hurry_never_delays() {
        let mut s = schedule();
        assert_eq!(s.hurry(1_000, 5_000), Some(1_000));
    }

    #[test]
    fn hurry_keeps_a_failure_backoff() {
        let mut s = schedule();
        s.dispatched(1, 1_000);
        s.finish(1, 1_100, CallOutcome::Failed);
        let backoff = s.hurry(1_100, 0).unwrap();
        assert!(backoff > 1_100, "{backoff}");
        assert_eq!(s.hurry(1_200, 0), Some(backoff));
    }

    #[test]
    fn hurry_in_flight_noop() {
        let mut s = schedule();
        s.dispatched(1, 1_000);
        assert_eq!(s.hurry(2_000, 0), None);
    }

    #[test]
    fn lease_free_is_claimed() {
        assert_eq!(
            lease_step(None, 3, 100, 2_000),
            LeaseStep::Claim(Lease {
                holder: 3,
                expires_ms: 2_100
            })
        );
    }

    #[test]
    fn lease_live_other_followed() {
        let held = Lease {
            holder: 1,
            expires_ms: 500,
        };
        assert_eq!(lease_step(Some(held), 3, 499, 2_000), LeaseStep::Follow);
    }

    #[test]
    fn lease_expired_other_claimed() {
        let held = Lease {
            holder: 1,
            expires_ms: 500,
        };
        assert!(matches!(
            lease_step(Some(held), 3, 500, 2_000),
            LeaseStep::Claim(_)
        ));
    }

    #[test]
    fn lease_own_renewed() {
        let held = Lease {
            holder: 3,
            expires_ms: 500,
        };
        assert_eq!(
            lease_step(Some(held), 3, 400, 2_000),
            LeaseStep::Renew(Lease {
                holder: 3,
                expires_ms: 2_400
            })
        );
    }

    #[test]
    fn lease_released_by_its_holder_is_claimed_by_the_next() {
        let held = Lease {
            holder: 3,
            expires_ms: 2_400,
        };
        let released = lease_release(Some(held), 3);
        assert_eq!(
            released,
            Some(Lease {
                holder: 3,
                expires_ms: 0
            })
        );
        // Another VM claims it on its next tick, long before 2 400.
        assert_eq!(
            lease_step(released, 5, 500, 2_000),
            LeaseStep::Claim(Lease {
                holder: 5,
                expires_ms: 2_500
            })
        );
    }

    #[test]
    fn lease_of_another_or_none_is_not_released() {
        let held = Lease {
            holder: 1,
            expires_ms: 2_400,
        };
        assert_eq!(lease_release(Some(held), 3), None);
        assert_eq!(lease_release(None, 3), None);
    }

    #[test]
    fn lease_encoding_roundtrip() {
        let lease = Lease {
            holder: u64::MAX - 1,
            expires_ms: 42,
        };
        assert_eq!(Lease::decode(&lease.encode()), Some(lease));
        assert_eq!(Lease::decode(&[0u8; 15]), None);
        assert_eq!(Lease::decode(&[0u8; 17]), None);
    }

    #[test]
    fn jwks_blob_roundtrip() {
        let blob = encode_jwks_blob(4, 99, b"{\"keys\":[]}");
        let decoded = decode_jwks_blob(&blob).unwrap();
        assert_eq!(decoded.generation, 4);
        assert_eq!(decoded.fetched_ms, 99);
        assert_eq!(decoded.json, b"{\"keys\":[]}");
    }

    #[test]
    fn jwks_blob_garbage_refused() {
        assert_eq!(decode_jwks_blob(b"WJK1short"), None);
        assert_eq!(decode_jwks_blob(b"XXXX0000000000000000{}"), None);
    }

    fn set_at(seq: u64) -> crate::revocation::RevocationSet {
        let mut set = crate::revocation::RevocationSet::default();
        set.seq = seq;
        set
    }

    #[test]
    fn staging_keeps_full_pages_and_hands_back_the_set_after_a_shorter_one() {
        let mut staging = Staging::default();
        assert!(!staging.is_loading());
        // Not a full page, nothing staged: straight back, to publish.
        let back = staging.page_applied(set_at(5), 10);
        assert_eq!(back.map(|set| set.seq), Some(5));
        assert!(!staging.is_loading());
        // A full page: kept, nothing to publish.
        assert!(staging
            .page_applied(set_at(50_000), FEED_PAGE_ENTRIES)
            .is_none());
        assert!(staging.is_loading());
        assert_eq!(staging.seq(), Some(50_000));
        // The next answer applies to the staged set, taken out...
        let set = staging.take().map(|set| set.seq);
        assert_eq!(set, Some(50_000));
        assert!(!staging.is_loading());
        // ... and a shorter page — an empty one too — ends the load.
        let back = staging.page_applied(set_at(50_000), 0);
        assert_eq!(back.map(|set| set.seq), Some(50_000));
    }

    #[test]
    fn staging_abandon_drops_the_load() {
        let mut staging = Staging::default();
        staging.page_applied(set_at(1), FEED_PAGE_ENTRIES);
        staging.abandon();
        assert!(!staging.is_loading());
        assert_eq!(staging.seq(), None);
    }
}
