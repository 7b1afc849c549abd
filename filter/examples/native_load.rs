//! The native build's fetcher loading a large revocation set, with every heap byte counted:
//! `cargo run --release -p weauth-filter --example native_load [ENTRIES]` (default 1 000 000).
//!
//! It drives [`weauth_filter::native::Fetcher`] as Envoy's main thread does — the first poll,
//! then each answer the bench's driver feed would send (`since=0` → a first page of 50 000
//! `jti` entries with 22-character values, `full: true`, then deltas of 50 000, and an empty
//! one after a last page that is full: the set is published at the first short answer), each body
//! handed over in 16 KiB pieces as the ABI glue does — and counts the allocator's live bytes
//! through a wrapping global allocator. It prints, per answer and at the end: the set's own
//! size (`heap_bytes`), the live bytes after the answer (what the set and the fetcher keep),
//! and the most ever live at once (the peak an allocator that keeps what it freed, such as
//! Envoy's tcmalloc, ends up holding). The bodies are built before counting starts and are
//! not counted. Envoy's own copy of each answer (its response buffer) is not seen here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use weauth_filter::config::Config;
use weauth_filter::host::{DispatchError, IssuerCall, Level, Now, Report};
use weauth_filter::native::{Fetcher, Shared};
use weauth_filter::revocation::FeedPage;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A realloc may copy: count the new block before the old one goes.
        let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        let out = System.realloc(ptr, layout, new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        out
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Calls(u64);

impl IssuerCall for Calls {
    fn dispatch(
        &mut self,
        _cluster: &str,
        _headers: &[(&str, &str)],
        _timeout_ms: u64,
    ) -> Result<u64, DispatchError> {
        self.0 += 1;
        Ok(self.0)
    }
}

struct Quiet;

impl Report for Quiet {
    fn log(&self, _level: Level, _message: &str) {}
    fn count(&self, _name: &'static str) {}
    fn gauge(&self, _name: &'static str, _value: u64) {}
}

const PAGE: u64 = 50_000;
const NOW_MS: u64 = 1_700_000_000_000;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The driver feed's answer for entries `from..=to`, as JSON.
fn body(from: u64, to: u64, full: bool, state: &mut u64) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    // `from > to`: no entries, at seq `to`.
    let mut out = format!(r#"{{"seq":{to},"full":{full},"now":1700000000,"entries":["#);
    for seq in from..=to {
        let mut value = String::with_capacity(22);
        for _ in 0..22 {
            // xorshift64: ids as random as the bench's.
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            value.push(char::from(ALPHABET[(*state % 64) as usize]));
        }
        if seq > from {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"seq":{seq},"kind":"jti","value":"{value}","until":1700014400}}"#
        ));
    }
    out.push_str("]}");
    out.into_bytes()
}

fn main() {
    let entries: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut bodies = Vec::new();
    let mut from = 1;
    while from <= entries {
        let to = (from + PAGE - 1).min(entries);
        bodies.push(body(from, to, from == 1, &mut state));
        from = to + 1;
    }
    // The fetcher publishes a set once an answer is shorter than a page: after a last page
    // that is full, the issuer's next answer (asked with `wait=0`) is an empty one.
    if entries.is_multiple_of(PAGE) {
        bodies.push(body(entries + 1, entries, entries == 0, &mut state));
    }
    let json_bytes: usize = bodies.iter().map(Vec::len).sum();
    let config = Config::parse(
        br#"{"issuer":"https://issuer","audiences":["weauth"],
             "jwks":{"cluster":"issuer"},
             "revocation":{"cluster":"issuer","credential":"c"}}"#,
    );
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration refused: {err}");
            return;
        }
    };
    let shared = Shared::new(config);
    let mut fetcher = Fetcher::new(&shared.config, Now::wall(NOW_MS));
    let mut calls = Calls(0);
    // Reading a body whole (`parse`) against reading it in Envoy's pieces (`parse_chunks`).
    let mut parse_ns = [0u128; 2];
    for wire in &bodies {
        let chunks: Vec<&[u8]> = wire.chunks(16 * 1024).collect();
        let t = Instant::now();
        let whole = FeedPage::parse(wire).map(|page| page.entries).ok();
        parse_ns[0] += t.elapsed().as_nanos();
        let t = Instant::now();
        let pieces = FeedPage::parse_chunks(&chunks)
            .map(|page| page.entries)
            .ok();
        parse_ns[1] += t.elapsed().as_nanos();
        if whole != pieces {
            eprintln!("parse and parse_chunks disagree");
        }
    }
    println!(
        "reading the answers: whole {} ms, in 16 KiB pieces {} ms",
        parse_ns[0] / 1_000_000,
        parse_ns[1] / 1_000_000
    );
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let start_live = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    fetcher.tick(&shared, &mut calls, &Quiet, Now::wall(NOW_MS));
    for (i, wire) in bodies.iter().enumerate() {
        // As the ABI glue does: the answer handed over in the pieces of Envoy's buffer, then
        // its tick.
        let chunks: Vec<&[u8]> = wire.chunks(16 * 1024).collect();
        let now = Now::wall(NOW_MS + i as u64);
        let id = calls.0;
        fetcher.on_answer(&shared, &mut calls, &Quiet, id, 200, &chunks, now);
        let set = shared.revocation();
        println!(
            "answer {:>2}: published {:>8} entries, set {:6.1} MiB, live {:6.1} MiB, peak {:6.1} MiB",
            i + 1,
            set.as_ref().map_or(0, |rev| rev.set.len()),
            mib(set.as_ref().map_or(0, |rev| rev.set.heap_bytes())),
            mib(LIVE.load(Ordering::Relaxed) - start_live),
            mib(PEAK.load(Ordering::Relaxed) - start_live),
        );
    }
    let elapsed = started.elapsed();
    let set = shared.revocation();
    println!(
        "{} answers ({:.1} MiB of JSON) in {:.2} s: {} entries published, set {:.1} MiB, \
         live {:.1} MiB, peak {:.1} MiB",
        bodies.len(),
        mib(json_bytes),
        elapsed.as_secs_f64(),
        set.as_ref().map_or(0, |rev| rev.set.len()),
        mib(set.as_ref().map_or(0, |rev| rev.set.heap_bytes())),
        mib(LIVE.load(Ordering::Relaxed) - start_live),
        mib(PEAK.load(Ordering::Relaxed) - start_live),
    );
}
