//! The driver's own revocation feed, in exactly the issuer's wire format
//! (`GET /v1/revocations?since=SEQ&wait=SECONDS`, bearer feed credential,
//! `weauth_token::revocation::FeedResponse`), so that the edge rows can give the filter and the
//! ext_authz check a set of 0, 10 000 or 1 000 000 entries without an issuer having to make
//! that many logouts. The results say that the edge rows used this feed.
//!
//! `since=0` (or a `since` the feed does not know) returns the full set, serialized once and
//! kept; `since=seq` holds the call up to `wait` seconds (long poll) and returns an empty delta,
//! or the entries added meanwhile with [`FeedHandle::push`]. A set larger than the per-response
//! limit goes out as a first chunk (`full: true`) followed by deltas (see [`response`]): the
//! filter refuses a feed body over 16 MiB, and 1 000 000 entries are about 75 MB of JSON.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::RngCore;
use tokio::sync::watch;
use weauth_token::revocation::{Entry, EntryKind, FeedResponse};

use crate::serve::{query_param, respond, Request, Response, Server};

/// `count` synthetic `jti` revocations (22-character random base64url ids, like real `jti`s),
/// sequence numbers 1..=count, live until `until`. `last` (if any) is used as the last value,
/// so a test can revoke a token it holds, and know when it is refused that the whole set
/// arrived.
pub fn synthetic_entries(count: usize, last: Option<&str>, until: i64) -> Vec<Entry> {
    use base64::Engine;
    let mut rng = rand::thread_rng();
    (0..count)
        .map(|i| {
            let value = match last {
                Some(v) if i + 1 == count => v.to_string(),
                _ => {
                    let mut raw = [0u8; 16];
                    rng.fill_bytes(&mut raw);
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
                }
            };
            Entry {
                seq: i as u64 + 1,
                kind: EntryKind::Jti,
                value,
                issued_before: None,
                until,
            }
        })
        .collect()
}

struct State {
    /// Every entry, in sequence order: entry `k` has seq `k + 1`.
    entries: Vec<Entry>,
    /// Most entries one response carries.
    chunk: usize,
    /// The cached `since=0` answer (the first chunk), rebuilt when it changes.
    full_body: Bytes,
}

impl State {
    fn seq(&self) -> u64 {
        self.entries.len() as u64
    }
}

/// A running feed; dropping it stops the server.
pub struct FeedHandle {
    server: Server,
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
    /// Full-set responses served (every `since=0` or unknown `since`).
    full_served: Arc<std::sync::atomic::AtomicU64>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The response to `since` (`None` when `since` is current: nothing to send yet).
///
/// `since=0` or a `since` beyond the feed's sequence gets a full set; past `chunk` entries the
/// full set is the first `chunk` entries at their last sequence number, and the rest follows as
/// deltas of at most `chunk` entries, which is what a consumer asking again with the returned
/// `seq` receives anyway.
pub fn response(entries: &[Entry], chunk: usize, since: u64, now: i64) -> Option<FeedResponse> {
    let seq = entries.len() as u64;
    let chunk = chunk.max(1);
    let (full, from) = if since == 0 || since > seq {
        (true, 0)
    } else if since == seq {
        return None;
    } else {
        (false, since as usize)
    };
    let to = (from + chunk).min(entries.len());
    let part = entries.get(from..to).unwrap_or_default().to_vec();
    Some(FeedResponse {
        seq: to as u64,
        full,
        now,
        entries: part,
    })
}

fn body(feed: &FeedResponse) -> Bytes {
    Bytes::from(serde_json::to_vec(feed).unwrap_or_default())
}

fn full_body(entries: &[Entry], chunk: usize) -> Bytes {
    let feed = response(entries, chunk, 0, now_unix()).unwrap_or(FeedResponse {
        seq: 0,
        full: true,
        now: now_unix(),
        entries: Vec::new(),
    });
    body(&feed)
}

impl FeedHandle {
    /// Serves `entries` (sequence numbers 1..=n, in order) on `listen` to callers presenting
    /// `Bearer credential`, at most `chunk` entries per response.
    pub async fn start(
        listen: SocketAddr,
        credential: &str,
        entries: Vec<Entry>,
        chunk: usize,
    ) -> std::io::Result<FeedHandle> {
        let state = Arc::new(Mutex::new(State {
            full_body: full_body(&entries, chunk),
            entries,
            chunk,
        }));
        let seq = state.lock().map(|s| s.seq()).unwrap_or(0);
        let (changed, _) = watch::channel(seq);
        let full_served = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let expected = format!("Bearer {credential}");
        let (st, ch, fs) = (state.clone(), changed.clone(), full_served.clone());
        let server = Server::start(listen, move |req| {
            handle(
                req,
                expected.clone(),
                st.clone(),
                ch.subscribe(),
                fs.clone(),
            )
        })
        .await?;
        Ok(FeedHandle {
            server,
            state,
            changed,
            full_served,
        })
    }

    /// The feed's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// How many full sets were served so far.
    pub fn full_served(&self) -> u64 {
        self.full_served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds one revocation and wakes the long polls.
    pub fn push(&self, kind: EntryKind, value: &str, until: i64) {
        let seq = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let seq = st.seq() + 1;
            st.entries.push(Entry {
                seq,
                kind,
                value: value.to_string(),
                issued_before: None,
                until,
            });
            if st.entries.len() <= st.chunk {
                st.full_body = full_body(&st.entries, st.chunk);
            }
            seq
        };
        let _ = self.changed.send(seq);
    }
}

async fn handle(
    req: Request,
    expected: String,
    state: Arc<Mutex<State>>,
    mut changed: watch::Receiver<u64>,
    full_served: Arc<std::sync::atomic::AtomicU64>,
) -> Response {
    if req.uri().path() != "/v1/revocations" {
        return respond(404, "application/json", r#"{"error":"not_found"}"#);
    }
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    if !authorized {
        return respond(401, "application/json", r#"{"error":"invalid_token"}"#);
    }
    let since: u64 = query_param(req.uri().query(), "since")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let wait: u64 = query_param(req.uri().query(), "wait")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(60);
    let current = *changed.borrow_and_update();
    // `since=0` always answers at once (the full set, even an empty one at seq 0), as the
    // issuer does: holding it made the 0-revoked rows wait a whole `wait` before their first set.
    if since != 0 && since == current && wait > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(wait), changed.changed()).await;
    }
    let Ok(st) = state.lock() else {
        return respond(500, "application/json", r#"{"error":"server_error"}"#);
    };
    if since == 0 || since > st.seq() {
        full_served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return respond(200, "application/json", st.full_body.clone());
    }
    let feed = response(&st.entries, st.chunk, since, now_unix()).unwrap_or(FeedResponse {
        seq: since,
        full: false,
        now: now_unix(),
        entries: Vec::new(),
    });
    respond(200, "application/json", body(&feed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_small_set_is_one_full() {
        let entries = synthetic_entries(5, None, 99);
        let r = response(&entries, 10, 0, 1).unwrap();
        assert!(r.full);
        assert_eq!((r.seq, r.entries.len()), (5, 5));
        assert!(response(&entries, 10, 5, 1).is_none());
    }

    #[test]
    fn response_large_set_is_chunk_then_deltas() {
        let entries = synthetic_entries(25, None, 99);
        let first = response(&entries, 10, 0, 1).unwrap();
        assert!(first.full);
        assert_eq!((first.seq, first.entries.len()), (10, 10));
        let second = response(&entries, 10, first.seq, 1).unwrap();
        assert!(!second.full);
        assert_eq!(second.entries[0].seq, 11);
        assert_eq!((second.seq, second.entries.len()), (20, 10));
        let third = response(&entries, 10, second.seq, 1).unwrap();
        assert_eq!((third.seq, third.entries.len()), (25, 5));
        assert!(response(&entries, 10, 25, 1).is_none());
    }

    #[test]
    fn response_unknown_since_restarts_full() {
        let entries = synthetic_entries(3, None, 99);
        let r = response(&entries, 10, 7, 1).unwrap();
        assert!(r.full);
        assert_eq!(r.seq, 3);
    }

    #[test]
    fn synthetic_entries_first_value_and_unique_seqs() {
        let entries = synthetic_entries(1000, Some("mine"), 99);
        assert_eq!(entries.len(), 1000);
        assert_eq!(entries[999].value, "mine");
        assert_eq!(entries[999].seq, 1000);
        let values: std::collections::HashSet<_> = entries.iter().map(|e| &e.value).collect();
        assert_eq!(values.len(), 1000);
        assert!(entries
            .iter()
            .all(|e| e.until == 99 && e.kind == EntryKind::Jti));
    }
}
