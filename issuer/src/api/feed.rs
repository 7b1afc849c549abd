//! `GET /v1/revocations?since=&wait=`: the revocation feed's long poll.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use hyper::{StatusCode, Uri};

use super::extract::FeedReader;
use super::Resp;
use crate::app::App;
use crate::error::{json_bytes_response, ApiError};
use crate::feed::revocation;

/// Parses `since` and `wait` from the query string.
fn feed_params(query: Option<&str>) -> Result<(u64, Duration), ApiError> {
    let mut since = 0u64;
    let mut wait = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "since" => {
                since = value.parse().map_err(|_| {
                    ApiError::InvalidRequest("`since` must be a non-negative integer".into())
                })?
            }
            "wait" => {
                wait = Some(value.parse::<f64>().map_err(|_| {
                    ApiError::InvalidRequest("`wait` must be a number of seconds".into())
                })?)
            }
            _ => {}
        }
    }
    Ok((since, revocation::capped_wait(wait)))
}

/// Answers at once when the caller is behind the paced wake (or must start over, or does not
/// wait), else holds the poll until the next wake, the wait ends, or the issuer drains.
pub async fn poll(State(app): State<Arc<App>>, _: FeedReader, uri: Uri) -> Result<Resp, ApiError> {
    let (since, wait) = feed_params(uri.query())?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut wake = app.subscribe_wake();
    let mut draining = app.draining();
    let _waiting = app.feed_waiter();
    let mut woken = false;
    loop {
        // The wake this round answers for, read before the store: a wake that moves while
        // the answer is made wakes the poll again at once.
        let woken_at = *wake.borrow_and_update();
        // Read again after every wait: a poll may be held for its whole `wait`, and what has
        // expired is judged at the time of the answer.
        let at = app.now();
        // Served from the replica's copy, which reads the store once per new seq however many
        // polls are waiting, and serializes once per `since` the woken polls share.
        // The copy is caught up to every seq this replica knows of (its own acknowledged
        // revocations, and those other replicas announced), not to the paced wake: pacing
        // delays waking held polls, never what a caller who asks is told (issue 19). A `since`
        // ahead of that may come from another replica that is ahead: catch up to it before
        // calling it "from the future".
        let heard = app.known_seq();
        let known = heard.max(since);
        if since == 0 {
            // A full answer (an edge starting, or starting over) holds every revocation the
            // store has: the known seq lags another replica's writes by up to its seq re-read
            // (250 ms on the SQL stores), and an edge starting over replaces its whole set.
            app.feed.refresh(app.store.as_ref(), at).await?;
        }
        app.feed.catch_up(app.store.as_ref(), known, at).await?;
        app.forget_unstored_seq(heard, app.feed.current());
        let answer = match app
            .feed
            .answer_body(since, at, revocation::FEED_PAGE_ENTRIES)
        {
            Some(answer) => answer,
            None => crate::feed::Answer::of(
                &revocation::read(app.store.as_ref(), since, at, revocation::FEED_PAGE_ENTRIES)
                    .await?,
            ),
        };
        // Answer when anything changed (even if the new entries already expired), when the
        // caller must start over, or when the wait is over. But a long poll coming back for
        // more — its `since` at or past the wake it was last answered by — waits for the next
        // wake even when this replica knows of more already: answered at once, a sidecar
        // loops at the revocation rate (each revocation landing during its round trip answers
        // its next poll), and the pacing's bound on answers per window fails once revocations
        // come faster than a round trip. When woken it is told everything known then; a
        // request that does not wait (`wait=0`), or that is behind the wake, is answered at
        // once (issue 19: a read after an acknowledged revocation sees it).
        let changed = answer.full || answer.seq != since || answer.has_entries;
        let paced = !wait.is_zero() && !answer.full && since >= woken_at;
        if (changed && !paced) || tokio::time::Instant::now() >= deadline || *draining.borrow() {
            app.notify_seq(answer.seq);
            return Ok(json_bytes_response(StatusCode::OK, answer.body));
        }
        if woken {
            // Woken, yet nothing to say: insurance against a hot loop should the signal and
            // the store ever disagree (not on the common path, where a wake has news).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Woken for a seq the store does not have (announced, then lost with its primary
        // before it replicated; a store restored from a backup): wait for a later one, not
        // again at once — that spun, reading the store every millisecond for the whole wait.
        let quiet_at = since.max(woken_at);
        tokio::select! {
            () = async { let _ = wake.wait_for(|current| *current > quiet_at).await; } => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = async { let _ = draining.wait_for(|d| *d).await; } => {}
        }
        woken = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_params_parse_and_cap() {
        assert_eq!(feed_params(None).unwrap(), (0, Duration::ZERO));
        assert_eq!(
            feed_params(Some("since=42&wait=5")).unwrap(),
            (42, Duration::from_secs(5))
        );
        assert_eq!(
            feed_params(Some("since=1&wait=999")).unwrap().1,
            revocation::MAX_WAIT
        );
        assert!(feed_params(Some("since=-1")).is_err());
        assert!(feed_params(Some("wait=soon")).is_err());
    }
}
