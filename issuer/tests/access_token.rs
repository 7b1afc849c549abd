//! The shared WeChat app access token (`AccessTokens::get_for`) against a real SQLite store and a
//! fake WeChat injected through the `Wechat` trait: one fetch for many concurrent callers,
//! refresh ahead of expiry, the old token kept when a refresh fails, 503 when there is none,
//! and a replica that waits for (or uses the still-valid token of) another lease holder.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weauth_issuer::app::App;
use weauth_issuer::clock::{Clock as _, SystemClock};
use weauth_issuer::error::ApiError;
use weauth_issuer::secrets::sha256_hex;
use weauth_issuer::store::CachedToken;
use weauth_issuer::wechat::access_token::TokenError;
use weauth_issuer::wechat::{AccessToken, BoxFuture, Code2Session, Wechat, WechatError};
use zeroize::Zeroizing;

/// Unix seconds now (the issuers under test run on the system clock).
fn now() -> i64 {
    SystemClock.now()
}

const APPID: &str = "wx1";

/// Hands out `T1`, `T2`, ... (7200 s), or HTTP 502 while `down`, or 45011 while `limited`;
/// while `stuck` is set, that token to every call (forced or not; a WeChat that keeps one).
struct FakeWechat {
    calls: AtomicU32,
    /// `stable_token` calls with `force_refresh`.
    forced: AtomicU32,
    limited: AtomicBool,
    stuck: std::sync::Mutex<Option<String>>,
    /// Every `stable_token` call, answered or failed.
    attempts: AtomicU32,
    down: AtomicBool,
    /// While set, each call waits for a permit of `gate` (a WeChat that has not answered yet).
    held: AtomicBool,
    gate: tokio::sync::Semaphore,
}

impl Wechat for FakeWechat {
    fn code2session<'a>(
        &'a self,
        _code: &'a str,
    ) -> BoxFuture<'a, Result<Code2Session, WechatError>> {
        Box::pin(async { Err(WechatError::InvalidCode { errcode: 40029 }) })
    }

    fn stable_token(&self, force: bool) -> BoxFuture<'_, Result<AccessToken, WechatError>> {
        Box::pin(async move {
            // Slow enough that concurrent callers overlap.
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if force {
                self.forced.fetch_add(1, Ordering::SeqCst);
            }
            if self.held.load(Ordering::SeqCst) {
                if let Ok(permit) = self.gate.acquire().await {
                    permit.forget();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(WechatError::Status(502));
            }
            if self.limited.load(Ordering::SeqCst) {
                return Err(WechatError::RateLimited);
            }
            if let Some(token) = self.stuck.lock().unwrap().clone() {
                return Ok(AccessToken {
                    token: Zeroizing::new(token),
                    expires_in: 7200,
                });
            }
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(AccessToken {
                token: Zeroizing::new(format!("T{n}")),
                expires_in: 7200,
            })
        })
    }
}

async fn app(dir: &common::TempDir) -> (Arc<App>, Arc<FakeWechat>) {
    let fake = Arc::new(FakeWechat {
        calls: AtomicU32::new(0),
        forced: AtomicU32::new(0),
        limited: AtomicBool::new(false),
        stuck: std::sync::Mutex::new(None),
        attempts: AtomicU32::new(0),
        down: AtomicBool::new(false),
        held: AtomicBool::new(false),
        gate: tokio::sync::Semaphore::new(0),
    });
    (replica(dir, &fake).await, fake)
}

/// An issuer replica on the store in `dir`, asking `fake`.
async fn replica(dir: &common::TempDir, fake: &Arc<FakeWechat>) -> Arc<App> {
    let vars: HashMap<&str, String> = HashMap::from([
        ("WEAUTH_WECHAT_APPID", APPID.to_string()),
        ("WEAUTH_WECHAT_SECRET", "s".to_string()),
        (
            "WEAUTH_STORE",
            format!("sqlite://{}", dir.path().join("t.db").display()),
        ),
    ]);
    App::build(
        common::config_of(&vars),
        Some(fake.clone() as Arc<dyn Wechat>),
    )
    .await
    .unwrap()
}

/// A request for the app's token on a task of its own; the token it gets (it must get one).
fn spawn_get(app: &Arc<App>) -> tokio::task::JoinHandle<String> {
    let app = Arc::clone(app);
    tokio::spawn(async move {
        app.identity
            .access_tokens
            .get_for(APPID, None)
            .await
            .unwrap()
            .to_string()
    })
}

/// The token's lease taken at `at` by another replica (`other`), fetching.
async fn lease_to_another_replica(app: &App, at: i64) {
    assert!(app
        .store
        .lease_wechat_token(APPID, "other", at, at + 60)
        .await
        .unwrap());
}

/// Writes `token` to the store as another replica would: as the lease's holder.
async fn put(app: &App, token: &str, expires_at: i64, refresh_at: i64, holder: &str) {
    let record = CachedToken {
        sealed: app
            .data_key
            .seal(token.as_bytes(), &format!("wechat_token:{APPID}"))
            .unwrap(),
        hash: sha256_hex(token.as_bytes()),
        expires_at,
        refresh_at,
    };
    let at = now();
    assert!(app
        .store
        .lease_wechat_token(APPID, holder, at, at + 60)
        .await
        .unwrap());
    assert!(app
        .store
        .put_wechat_token(APPID, &record, holder)
        .await
        .unwrap());
}

fn metrics(app: &App) -> String {
    app.metrics.render(&[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_concurrent_callers_one_fetch_same_token() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    let tasks: Vec<_> = (0..10).map(|_| spawn_get(&app)).collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), "T1");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        app.identity
            .access_tokens
            .get_for(APPID, None)
            .await
            .unwrap()
            .as_str(),
        "T1"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    let cached = app.store.wechat_token(APPID).await.unwrap().unwrap();
    let at = now();
    assert!((cached.expires_at - at - 7200).abs() <= 2);
    assert!((cached.refresh_at - at - 6900).abs() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_due_token_refreshed_ahead_of_expiry() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    let at = now();
    put(&app, "OLD", at + 200, at - 1, "other").await;
    // Still valid: the request that took the lease is answered with it at once, the refresh
    // runs in the background.
    // (WeChat held: a request waiting for the refresh would never end.)
    fake.held.store(true, Ordering::SeqCst);
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        app.identity.access_tokens.get_for(APPID, None),
    )
    .await
    .expect("the request waited for WeChat's answer");
    assert_eq!(answered.unwrap().as_str(), "OLD");
    assert!(!metrics(&app)
        .contains("weauth_wechat_token_refreshes_total{appid=\"wx1\",outcome=\"ok\"} 1"));
    fake.gate.add_permits(1);
    eventually(|| {
        metrics(&app)
            .contains("weauth_wechat_token_refreshes_total{appid=\"wx1\",outcome=\"ok\"} 1")
    })
    .await;
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        app.identity
            .access_tokens
            .get_for(APPID, None)
            .await
            .unwrap()
            .as_str(),
        "T1"
    );
}

/// Waits (10 s at most) until `done` holds.
async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_refresh_fails_still_valid_token_kept() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    let at = now();
    put(&app, "OLD", at + 200, at - 1, "other").await;
    fake.down.store(true, Ordering::SeqCst);
    assert_eq!(
        app.identity
            .access_tokens
            .get_for(APPID, None)
            .await
            .unwrap()
            .as_str(),
        "OLD"
    );
    eventually(|| {
        metrics(&app).contains(
            "weauth_wechat_token_refreshes_total{appid=\"wx1\",outcome=\"failed_kept_old\"} 1",
        )
    })
    .await;
    // The lease was released: the next caller may try again at once.
    assert!(app
        .store
        .lease_wechat_token(APPID, "probe", now(), now() + 5)
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_no_token_endpoint_down_503() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    fake.down.store(true, Ordering::SeqCst);
    let err = app
        .identity
        .access_tokens
        .get_for(APPID, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TokenError::Fetch(WechatError::Status(502))),
        "{err}"
    );
    assert_eq!(ApiError::from(err).status().as_u16(), 503);
}

/// WeChat's token endpoint down and no token: the requests waiting meanwhile, and those that
/// come within `FAILURE_HOLD` after, get the failure at once — each asked again in turn (a
/// whole round of retries each), the others polling the store meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_after_a_failed_fetch_fails_at_once_without_asking_again() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    fake.down.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.identity.access_tokens.get_for(APPID, None).await })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::Fetch(WechatError::Status(502))
                    | TokenError::Held {
                        cause: WechatError::Status(502),
                        ..
                    }
            ),
            "{err}"
        );
    }
    let err = app
        .identity
        .access_tokens
        .get_for(APPID, None)
        .await
        .unwrap_err();
    // The client is told when the hold ends, not "1" for a hold of 5 s.
    let TokenError::Held { retry_after, .. } = err else {
        panic!("not held: {err}");
    };
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    assert_eq!(
        fake.attempts.load(Ordering::SeqCst),
        1,
        "WeChat asked again within the hold"
    );
}

/// WeChat's rate limit on `stable_token` (45011, "retry next minute") is held for a minute:
/// asking again on every request kept the limit reached. The client is told how long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_rate_limited_held_for_a_minute() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    fake.limited.store(true, Ordering::SeqCst);
    let tokens = &app.identity.access_tokens;
    let err = tokens.get_for(APPID, None).await.unwrap_err();
    assert!(
        matches!(err, TokenError::Fetch(WechatError::RateLimited)),
        "{err}"
    );
    for _ in 0..5 {
        let err = tokens.get_for(APPID, None).await.unwrap_err();
        let response = ApiError::from(err).response();
        assert_eq!(response.status().as_u16(), 429);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((55..=60).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(
        fake.attempts.load(Ordering::SeqCst),
        1,
        "WeChat asked again within the rate limit's hold"
    );
}

/// WeChat allows 20 forced refreshes a day: the interval between two is kept across the
/// replicas on one store, not by each (K replicas facing a token WeChat keeps refusing spent K
/// per interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_refresh_interval_shared_by_replicas() {
    let dir = common::temp_dir("at");
    let (first, fake) = app(&dir).await;
    let second = replica(&dir, &fake).await;
    *fake.stuck.lock().unwrap() = Some("BAD".into());
    for replica in [&first, &second, &first] {
        let err = replica
            .identity
            .access_tokens
            .get_for(APPID, Some("BAD"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::Fetch(WechatError::InvalidAccessToken { .. })
            ),
            "{err}"
        );
    }
    assert_eq!(fake.forced.load(Ordering::SeqCst), 1, "forced again");
    assert!(metrics(&second).contains(
        "weauth_wechat_token_refreshes_total{appid=\"wx1\",outcome=\"force_withheld\"} 1"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_other_holder_refreshing_due_token_still_used() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    let at = now();
    put(&app, "OLD", at + 200, at - 1, "other").await;
    assert!(app
        .store
        .lease_wechat_token(APPID, "other", at, at + 60)
        .await
        .unwrap());
    assert_eq!(
        app.identity
            .access_tokens
            .get_for(APPID, None)
            .await
            .unwrap()
            .as_str(),
        "OLD"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_other_holder_fetching_no_token_waits_for_its_write() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    let at = now();
    lease_to_another_replica(&app, at).await;
    let waiter = spawn_get(&app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    put(&app, "THEIRS", at + 7200, at + 6900, "other").await;
    assert_eq!(waiter.await.unwrap(), "THEIRS");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_refused_token_never_returned_again() {
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    let at = now();
    put(&app, "BAD", at + 7200, at + 6900, "other").await;
    assert_eq!(
        app.identity
            .access_tokens
            .get_for(APPID, Some("BAD"))
            .await
            .unwrap()
            .as_str(),
        "T1"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
}

/// Counts the store operations by name, from the `store` spans `App::build` wraps the store in
/// when they are recorded (`store::traced`).
#[derive(Clone, Default)]
struct StoreOps(Arc<std::sync::Mutex<HashMap<String, usize>>>);

impl StoreOps {
    fn of(&self, op: &str) -> usize {
        self.0.lock().unwrap().get(op).copied().unwrap_or(0)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StoreOps {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Op(Option<String>);
        impl tracing::field::Visit for Op {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "op" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        if attrs.metadata().name() == "store" {
            let mut op = Op(None);
            attrs.record(&mut op);
            if let Some(op) = op.0 {
                *self.0.lock().unwrap().entry(op).or_default() += 1;
            }
        }
    }
}

// One thread: the subscriber counting the store's operations is this thread's.
#[tokio::test(flavor = "current_thread")]
async fn get_waiters_of_one_replica_poll_the_store_one_at_a_time() {
    use tracing_subscriber::layer::SubscriberExt as _;
    // With no global subscriber and this one the only one, a span's callsite first reached on
    // another test's thread caches that thread's view, "no one records it": `App::build` would
    // not wrap the store in its spans and nothing would be counted. With a second one (that
    // records nothing) every callsite asks them both.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let ops = StoreOps::default();
    let _counting =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(ops.clone()));
    let dir = common::temp_dir("at");
    let (app, fake) = app(&dir).await;
    let at = now();
    lease_to_another_replica(&app, at).await;
    let before = (ops.of("wechat_token"), ops.of("lease_wechat_token"));
    const WAITERS: usize = 20;
    let waiters: Vec<_> = (0..WAITERS).map(|_| spawn_get(&app)).collect();
    // A second of waiting: 20 polls of 50 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(waiters.iter().all(|w| !w.is_finished()));
    put(&app, "THEIRS", at + 7200, at + 6900, "other").await;
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), "THEIRS");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    // One waiter polls (a read and a lease attempt each 50 ms, at most 21 in the second); the
    // others read and try the lease once before queueing and read again when their turn
    // comes. Each polling on its own made about 20 × 21 of each.
    let reads = ops.of("wechat_token") - before.0;
    let leases = ops.of("lease_wechat_token") - before.1;
    let bound = 22 + 3 * WAITERS;
    assert!(reads <= bound, "{reads} reads of the token while waiting");
    assert!(leases <= bound, "{leases} lease attempts while waiting");
    assert!(
        reads >= WAITERS,
        "{reads}: the store spans were not counted"
    );
}
