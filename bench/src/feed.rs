//! The driver's own revocation feed, in exactly the issuer's wire format
//! (`GET /v1/revocations?since=SEQ&wait=SECONDS`, bearer feed credential,
//! `weauth_token::revocation::FeedResponse`), so that the edge rows can give the filter and the
//! ext_authz check a set of 0, 10 000 or 1 000 000 entries without an issuer having to make
//! that many logouts. The results say that the edge rows used this feed.
//!
//! `since=0` (or a `since` the feed does not know) returns the full set, serialized once and
//! kept; `since=seq` holds the call up to `wait` seconds (long poll) and returns an empty delta,
//! or the entries added meanwhile with [`FeedHandle::push`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::RngCore;
use tokio::sync::watch;
use weauth_token::revocation::{Entry, EntryKind, FeedResponse};

use crate::serve::{query_param, respond, Request, Response, Server};

/// `count` synthetic `jti` revocations (22-character random base64url ids, like real `jti`s),
/// sequence numbers 1..=count, live until `until`. `first` (if any) is used as the first value,
/// so a test can revoke a token it holds.
pub fn synthetic_entries(count: usize, first: Option<&str>, until: i64) -> Vec<Entry> {
    use base64::Engine;
    let mut rng = rand::thread_rng();
    (0..count)
        .map(|i| {
            let value = match (i, first) {
                (0, Some(v)) => v.to_string(),
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
    seq: u64,
    /// The highest sequence of the initial set.
    base_seq: u64,
    full_body: Bytes,
    /// Entries added with `push`, after the initial set.
    added: Vec<Entry>,
    entries: Vec<Entry>,
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

fn full_body(seq: u64, entries: &[Entry]) -> Bytes {
    let feed = FeedResponse {
        seq,
        full: true,
        now: now_unix(),
        entries: entries.to_vec(),
    };
    Bytes::from(serde_json::to_vec(&feed).unwrap_or_default())
}

impl FeedHandle {
    /// Serves `entries` on `listen` to callers presenting `Bearer credential`.
    pub async fn start(
        listen: SocketAddr,
        credential: &str,
        entries: Vec<Entry>,
    ) -> std::io::Result<FeedHandle> {
        let seq = entries.iter().map(|e| e.seq).max().unwrap_or(0);
        let state = Arc::new(Mutex::new(State {
            seq,
            base_seq: seq,
            full_body: full_body(seq, &entries),
            added: Vec::new(),
            entries,
        }));
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
            st.seq += 1;
            let entry = Entry {
                seq: st.seq,
                kind,
                value: value.to_string(),
                issued_before: None,
                until,
            };
            st.added.push(entry.clone());
            st.entries.push(entry);
            st.full_body = full_body(st.seq, &st.entries);
            st.seq
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
    if since == current && wait > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(wait), changed.changed()).await;
    }
    let Ok(st) = state.lock() else {
        return respond(500, "application/json", r#"{"error":"server_error"}"#);
    };
    // Deltas are kept only for what was pushed after the initial set.
    if since == 0 || since > st.seq || since < st.base_seq {
        full_served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return respond(200, "application/json", st.full_body.clone());
    }
    let feed = FeedResponse {
        seq: st.seq,
        full: false,
        now: now_unix(),
        entries: st.added.iter().filter(|e| e.seq > since).cloned().collect(),
    };
    respond(
        200,
        "application/json",
        serde_json::to_vec(&feed).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_entries_first_value_and_unique_seqs() {
        let entries = synthetic_entries(1000, Some("mine"), 99);
        assert_eq!(entries.len(), 1000);
        assert_eq!(entries[0].value, "mine");
        assert_eq!(entries[999].seq, 1000);
        let values: std::collections::HashSet<_> = entries.iter().map(|e| &e.value).collect();
        assert_eq!(values.len(), 1000);
        assert!(entries
            .iter()
            .all(|e| e.until == 99 && e.kind == EntryKind::Jti));
    }
}
