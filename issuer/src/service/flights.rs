//! Requests that must not overlap, one key at a time on this replica: a request entering with a
//! key another request holds waits until that one ends, then goes on (and looks again at what
//! the first one left). The phone route enters with the user and its code's hash
//! ([`super::userdata::UserData::phone`]): WeChat redeems a code once, so the same code sent
//! again while the first request is at WeChat (a client retrying after a timeout) would get
//! WeChat's "code used" before the first had stored the answer it could be given.
//!
//! This replica's requests only: one under way on another replica is not seen. A key's entry
//! lives while a request holds or waits for it; those that ended are dropped when the next
//! request enters (the map holds about one entry per request under way).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The keys held now, each with the requests holding or waiting for it.
#[derive(Default)]
pub struct Flights {
    keys: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// A request's hold on its key; dropping it lets the next request with the key go on.
pub struct Flight {
    _held: OwnedMutexGuard<()>,
}

impl Flights {
    /// Waits until no other request holds `key` (first come, first served), then holds it.
    /// Cancel-safe: a request dropped while waiting leaves the key to the others.
    pub async fn enter(&self, key: &str) -> Flight {
        let lock = {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            // An entry only the map refers to is one no request holds or waits for.
            keys.retain(|_, lock| Arc::strong_count(lock) > 1);
            Arc::clone(keys.entry(key.to_owned()).or_default())
        };
        Flight {
            _held: lock.lock_owned().await,
        }
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt as _;

    #[tokio::test]
    async fn enter_same_key_waits_until_the_holder_ends() {
        let flights = Flights::default();
        let first = flights.enter("gina:c0de").await;
        let mut second = Box::pin(flights.enter("gina:c0de"));
        assert!(
            (&mut second).now_or_never().is_none(),
            "entered while the key is held"
        );
        drop(first);
        assert!(
            (&mut second).now_or_never().is_some(),
            "still waiting once the holder ended"
        );
    }

    #[tokio::test]
    async fn enter_other_key_does_not_wait() {
        let flights = Flights::default();
        let _first = flights.enter("gina:c0de").await;
        assert!(flights.enter("gina:other").now_or_never().is_some());
        assert!(flights.enter("hugo:c0de").now_or_never().is_some());
    }

    #[tokio::test]
    async fn enter_waiters_go_on_in_turn() {
        let flights = Flights::default();
        let first = flights.enter("k").await;
        let mut second = Box::pin(flights.enter("k"));
        let mut third = Box::pin(flights.enter("k"));
        assert!((&mut second).now_or_never().is_none());
        assert!((&mut third).now_or_never().is_none());
        drop(first);
        let second = (&mut second).now_or_never().expect("second goes on first");
        assert!((&mut third).now_or_never().is_none(), "third beside second");
        drop(second);
        assert!((&mut third).now_or_never().is_some());
    }

    #[tokio::test]
    async fn enter_waiter_dropped_leaves_the_key_to_the_others() {
        let flights = Flights::default();
        let first = flights.enter("k").await;
        let mut gone = Box::pin(flights.enter("k"));
        assert!((&mut gone).now_or_never().is_none());
        drop(gone);
        drop(first);
        assert!(flights.enter("k").now_or_never().is_some());
    }

    #[tokio::test]
    async fn enter_drops_the_entries_of_ended_requests() {
        let flights = Flights::default();
        for n in 0..100 {
            drop(flights.enter(&format!("user{n}:code")).await);
        }
        let _held = flights.enter("last").await;
        assert_eq!(flights.entries(), 1, "only the key held now");
    }
}
