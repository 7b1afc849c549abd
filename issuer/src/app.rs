//! The application state handed to every handler ([`App`], shared as `Arc<App>`), its
//! construction at start, and the background tasks that keep it fresh.
//!
//! Background tasks: key reload (every `WEAUTH_KEY_RELOAD`, which also promotes a rotated key
//! once its publish delay is over); revocation wakeups from other replicas (on Redis a pub/sub
//! subscription, woken within milliseconds, with a 5 s `seq` re-read as a safety net; on SQLite
//! a cheap `max(seq)` poll every 250 ms; either re-read sets the `weauth_store_up` gauge); on
//! Redis, the store's health read every second (replicas online, evicted keys, the eviction
//! policy; the `weauth_store_replicas*` and `weauth_store_evicted_keys_total` series); and
//! a purge of expired revocations, sessions and refresh tokens (on Redis left to their TTLs)
//! every `WEAUTH_PURGE_INTERVAL` (default 60 s). All of them end when the shutdown `watch` flips.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::config::StoreUrl;
use crate::domain::keys::{self, KeyError, KeyRing, KeyRingCell};
use crate::domain::tokens::TokenPolicy;
use crate::feed::{revocation, FeedCache, KnownSeq};
use crate::secrets::{DataKey, SecretError};
use crate::service::admin::Admin;
use crate::service::flights::Flights;
use crate::service::identity::Identity;
use crate::service::sessions::Sessions;
use crate::service::userdata::UserData;
use crate::store::mysql::{MysqlOptions, MysqlStore};
use crate::store::redis::{RedisOptions, RedisStore, LOGIN_BUCKETS, USER_BUCKETS};
use crate::store::shared::{
    Announcements, HealthCheck, Limiter, LocalLimiter, Polling, RedisAnnouncements,
    RedisHealthCheck, RedisLimiter,
};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::throttle::{self, Throttle};
use crate::wechat::access_token::{self, AccessTokens};
use crate::wechat::web::{HttpWechatWeb, HttpWechatWebConfig, WechatWeb};
use crate::wechat::{Wechat, WechatClients};

/// Why the issuer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("WeChat client: {0}")]
    Wechat(String),
    #[error("background task failed: {0}")]
    Join(String),
}

/// The shared state.
pub struct App {
    pub config: Arc<Config>,
    /// The wall clock ([`crate::clock`]): the system's, or a test's manual one.
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    /// The login rate limit, per client address: this process's, or shared by the replicas of
    /// a shared store.
    pub login_limiter: Arc<dyn Limiter<IpAddr>>,
    /// How this replica hears of revocations other replicas write.
    announcements: Arc<dyn Announcements>,
    /// The shared store's own health checks, where it has any (Redis: replicas online,
    /// evicted keys, the eviction policy).
    health: Option<Arc<dyn HealthCheck>>,
    /// The replica's copy of the recent revocation feed.
    pub feed: FeedCache,
    /// The use cases (service/), each holding only what it uses.
    pub sessions: Arc<Sessions>,
    pub identity: Arc<Identity>,
    pub userdata: UserData,
    pub admin: Admin,
    /// Origins a cookie-authenticated POST may come from (see [`crate::domain::web::allowed_origins`]).
    pub allowed_origins: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub data_key: DataKey,
    keys: Arc<KeyRingCell>,
    /// The highest revocation seq this replica knows of.
    known_seq: Arc<KnownSeq>,
    /// What the feed's long polls wait on: `seq`, paced by [`crate::feed::pace`].
    wake: watch::Sender<u64>,
    draining: watch::Sender<bool>,
    started: Instant,
    feed_waiters: Arc<AtomicUsize>,
    /// The handlers of the routes that write in several steps, run apart from their
    /// connections ([`crate::api`]'s layer) so that a client going away cannot stop one
    /// between two writes; the drain waits for them.
    pub handlers: TaskTracker,
    /// `WEAUTH_MAX_IN_FLIGHT`'s places (`None`: no limit), taken by [`crate::api`]'s
    /// admission of client requests.
    pub(crate) in_flight: Option<Arc<tokio::sync::Semaphore>>,
}

/// Counts one open feed request while alive.
pub struct FeedWaiter(Arc<AtomicUsize>);

impl Drop for FeedWaiter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes sure a signing key is active at `now`, and that the configured key will sign:
/// - no active key (first start): generate one of `WEAUTH_SIGNING_ALG` (or import
///   `WEAUTH_SIGNING_KEY_FILE`) and sign with it at once;
/// - a key file whose key is not in the store yet, or a changed `WEAUTH_SIGNING_ALG`: add the
///   new key as "next", so it is published for `WEAUTH_KEY_PUBLISH_DELAY` before it signs,
///   exactly like `keys rotate` (verifiers that cached the JWKS keep working).
///
/// # Errors
/// Key file, sealing or store failures.
pub async fn bootstrap_keys(
    store: &dyn Store,
    config: &Config,
    data_key: &DataKey,
    now: i64,
) -> Result<(), StartError> {
    let retain = config.key_retain_secs(config.access_ttl_secs());
    let records = store.keys().await?;
    // No active key is a first start; a stored key this replica cannot open (a wrong
    // WEAUTH_DATA_KEY) is refused here, before anything is written: a key file's key imported
    // under the wrong data key signed at once and stopped every other replica's key reloads,
    // then their restarts.
    let current = match keys::ring(&records, data_key, now, retain) {
        Ok(ring) => Some(ring),
        Err(KeyError::NoSigningKey) => None,
        Err(err) => return Err(err.into()),
    };
    let delay = if current.is_some() {
        crate::config::secs(config.key_publish_delay)
    } else {
        0
    };
    if let Some(path) = &config.signing_key_file {
        let key = keys::from_file(path, config.signing_alg)?;
        let known = records.iter().find(|record| record.kid == key.kid());
        if known.is_some_and(|record| record.sealed.is_empty()) {
            tracing::warn!(
                kid = %key.kid(),
                "the key in WEAUTH_SIGNING_KEY_FILE was retired (`keys rotate`, or a newer key file) and is not brought back; the current key keeps signing — put a new key in the file, or unset it"
            );
        }
        if known.is_none() {
            let activate_at = keys::next_activation(&records, now, delay);
            store
                .insert_key(&keys::seal(&key, data_key, now, activate_at)?, None)
                .await?;
            tracing::info!(
                kid = %key.kid(),
                signs_in_s = activate_at - now,
                "imported the signing key from WEAUTH_SIGNING_KEY_FILE"
            );
        }
        return Ok(());
    }
    match current {
        None => {
            let key = keys::generate(config.signing_alg);
            if store
                .insert_key(&keys::seal(&key, data_key, now, now)?, Some(now))
                .await?
            {
                tracing::info!(kid = %key.kid(), alg = %config.signing_alg, "generated the first signing key");
            }
        }
        Some(ring) if ring.signing.algorithm() != config.signing_alg => {
            let pending = records
                .iter()
                .any(|r| r.activate_at > now && r.alg == config.signing_alg.as_str());
            if !pending {
                let key = keys::generate(config.signing_alg);
                let activate_at = keys::next_activation(&records, now, delay);
                store
                    .insert_key(&keys::seal(&key, data_key, now, activate_at)?, None)
                    .await?;
                tracing::warn!(
                    kid = %key.kid(),
                    alg = %config.signing_alg,
                    previous = %ring.signing.algorithm(),
                    signs_in_s = activate_at - now,
                    "WEAUTH_SIGNING_ALG changed: a new key is published now and signs after WEAUTH_KEY_PUBLISH_DELAY; the old key stays published until its tokens expire"
                );
            }
        }
        Some(_) => {}
    }
    Ok(())
}

/// Opens the store named by `WEAUTH_STORE` and loads the data key.
///
/// # Errors
/// The store cannot be opened, or the data key cannot be read or created.
pub async fn open_store(config: &Arc<Config>) -> Result<(Arc<dyn Store>, DataKey), StartError> {
    open_backend(config, None)
        .await
        .map(|backend| (backend.store, backend.data_key))
}

/// The store and what the replicas on it share ([`crate::store::shared`]).
struct Backend {
    store: Arc<dyn Store>,
    login_limiter: Arc<dyn Limiter<IpAddr>>,
    /// The WeChat calls per user ([`UserData::user_limiter`]).
    user_limiter: Arc<dyn Limiter<String>>,
    announcements: Arc<dyn Announcements>,
    health: Option<Arc<dyn HealthCheck>>,
    pub data_key: DataKey,
}

/// The data key of a store shared by replicas (Redis, MySQL): config validation makes
/// `WEAUTH_DATA_KEY` required there, so no key file is read (the path is unused).
fn shared_data_key(config: &Config) -> Result<DataKey, StartError> {
    load_data_key(config, std::path::Path::new("WEAUTH_DATA_KEY"))
}

/// `WEAUTH_DATA_KEY` (or the key file next to `db_path`), opening also what was sealed under
/// `WEAUTH_DATA_KEY_PREVIOUS`.
fn load_data_key(config: &Config, db_path: &std::path::Path) -> Result<DataKey, StartError> {
    let key = DataKey::load(config.data_key.as_deref().map(|k| k.as_slice()), db_path)?;
    Ok(key.with_previous(&config.data_key_previous)?)
}

/// The rate limits of this process alone: logins per client, WeChat calls per user.
type Limiters = (Arc<dyn Limiter<IpAddr>>, Arc<dyn Limiter<String>>);

fn local_limiters(config: &Config) -> Limiters {
    (
        Arc::new(LocalLimiter::new(
            config.login_rate_per_min,
            config.login_burst,
        )),
        Arc::new(LocalLimiter::new(
            config.user_wechat_rate_per_min,
            config.user_wechat_burst,
        )),
    )
}

/// Opens the store, with the local or shared rate limits and announcements that go with it.
/// `serving_at`: the time (ms) of the issuer's start (`None` for a `keys` command), at which
/// a SQL store's revocation seq moves past any a restored backup lacks
/// ([`SqliteStore::move_seq_past_possible_loss`]).
async fn open_backend(
    config: &Arc<Config>,
    serving_at: Option<i64>,
) -> Result<Backend, StartError> {
    match &config.store {
        StoreUrl::Sqlite(path) => {
            let (path, config_for_key) = (path.clone(), Arc::clone(config));
            let (store, data_key) = tokio::task::spawn_blocking(move || {
                let store = SqliteStore::open(&path)?;
                if let Some(now_ms) = serving_at {
                    store.move_seq_past_possible_loss(now_ms)?;
                }
                let store: Arc<dyn Store> = Arc::new(store);
                let data_key = load_data_key(&config_for_key, &path)?;
                Ok::<_, StartError>((store, data_key))
            })
            .await
            .map_err(|err| StartError::Join(err.to_string()))??;
            let (login_limiter, user_limiter) = local_limiters(config);
            Ok(Backend {
                store,
                login_limiter,
                user_limiter,
                announcements: Arc::new(Polling),
                health: None,
                data_key,
            })
        }
        StoreUrl::Redis { target, display } => {
            let redis = RedisStore::connect(RedisOptions {
                target: target.clone(),
                display: display.clone(),
                prefix: config.redis_prefix.clone(),
                wait_replicas: config.redis_wait_replicas,
                wait_timeout: config.redis_wait_timeout,
                allow_eviction: config.redis_allow_eviction,
            })
            .await?;
            redis.check_failover_time(config.refresh_reuse_grace).await;
            let data_key = shared_data_key(config)?;
            Ok(Backend {
                store: Arc::new(redis.clone()),
                login_limiter: Arc::new(RedisLimiter::new(
                    redis.clone(),
                    LOGIN_BUCKETS,
                    config.login_rate_per_min,
                    config.login_burst,
                )),
                user_limiter: Arc::new(RedisLimiter::new(
                    redis.clone(),
                    USER_BUCKETS,
                    config.user_wechat_rate_per_min,
                    config.user_wechat_burst,
                )),
                announcements: Arc::new(RedisAnnouncements(redis.clone())),
                health: Some(Arc::new(RedisHealthCheck(redis))),
                data_key,
            })
        }
        StoreUrl::Mysql { url, display } => {
            let store = MysqlStore::connect(&MysqlOptions {
                url: url.clone(),
                display: display.clone(),
                pool_max: config.mysql_pool_max,
                acquire_timeout: config.mysql_acquire_timeout,
                query_timeout: config.mysql_query_timeout,
            })
            .await?;
            if let Some(now_ms) = serving_at {
                store.move_seq_past_possible_loss(now_ms).await?;
                if config.mysql_query_timeout >= config.refresh_reuse_grace
                    && !config.refresh_reuse_grace.is_zero()
                {
                    tracing::warn!(
                        query_timeout_ms = config.mysql_query_timeout.as_millis() as u64,
                        grace_ms = config.refresh_reuse_grace.as_millis() as u64,
                        "WEAUTH_MYSQL_QUERY_TIMEOUT is not under WEAUTH_REFRESH_REUSE_GRACE: a refresh whose commit was given up (its outcome unknown) and retried arrives past the grace, as a reuse that ends its session"
                    );
                }
            }
            let data_key = shared_data_key(config)?;
            let (login_limiter, user_limiter) = local_limiters(config);
            Ok(Backend {
                store: Arc::new(store),
                // Per replica: a shared bucket would be one more row write (and row lock)
                // per login on the database every login already writes to; the limit guards
                // against one client's burst, which a load balancer spreads over replicas.
                // The same for the WeChat calls per user.
                login_limiter,
                user_limiter,
                // Cross-replica wake-ups: the seq is one primary-key read, re-read every
                // 250 ms by each replica (the bound on hearing another replica's revocation).
                announcements: Arc::new(Polling),
                health: None,
                data_key,
            })
        }
    }
}

impl App {
    /// Opens the store, loads or creates keys, builds the WeChat client (unless one is given,
    /// as tests do).
    ///
    /// # Errors
    /// Any [`StartError`].
    pub async fn build(
        config: Config,
        wechat: Option<Arc<dyn Wechat>>,
    ) -> Result<Arc<App>, StartError> {
        App::build_with_clock(config, wechat, Arc::new(SystemClock)).await
    }

    /// [`App::build`] on a given clock (tests: a [`crate::clock::ManualClock`]).
    ///
    /// # Errors
    /// Any [`StartError`].
    pub async fn build_with_clock(
        config: Config,
        wechat: Option<Arc<dyn Wechat>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<App>, StartError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let wechat = Arc::new(
            WechatClients::build(&config, wechat, &metrics, &clock).map_err(StartError::Wechat)?,
        );
        let wechat_web: Arc<dyn WechatWeb> = Arc::new(
            HttpWechatWeb::new(
                HttpWechatWebConfig {
                    api_base: config.wechat_api_base.clone(),
                    connect_timeout: config.wechat_connect_timeout,
                    timeout: config.wechat_timeout,
                    retries: config.wechat_retries,
                },
                Arc::clone(&metrics),
            )
            .map_err(StartError::Wechat)?,
        );
        let allowed_origins = crate::domain::web::allowed_origins(&config.issuer, &config.apps);
        for (appid, uri) in
            crate::domain::web::redirects_off_the_issuer_host(&config.issuer, &config.apps)
        {
            tracing::warn!(appid = %appid, redirect_uri = %uri, issuer = %config.issuer, "a web login's redirect URI is on another host than WEAUTH_ISSUER: the session cookies are set on the issuer's host, so pages there get no cookie of their own (their requests must go to the issuer's host with credentials) — put the issuer on the pages' host (docs/WEB-LOGIN.md)");
        }
        let Backend {
            store,
            login_limiter,
            user_limiter,
            announcements,
            health,
            data_key,
        } = open_backend(&config, Some(clock.now_ms())).await?;
        // A `store` span per operation only when something records it (traces exported, or
        // debug logs): otherwise the store is used as is, at no cost.
        let store: Arc<dyn Store> = if tracing::debug_span!("store", op = "probe").is_disabled() {
            store
        } else {
            Arc::new(crate::store::traced::Wrapped(
                store,
                crate::store::traced::Spans,
            ))
        };
        let now = clock.now();
        bootstrap_keys(store.as_ref(), &config, &data_key, now).await?;
        // Before the first token: revocations made anywhere from now on cover this replica's
        // tokens, and keys are kept for the longest lifetime any replica issued (this one's
        // may have been lowered since).
        let longest_ttl =
            revocation::report_lifetime(store.as_ref(), config.access_ttl_secs(), now).await?;
        let retain = config.key_retain_secs(longest_ttl);
        let ring = keys::ring(&store.keys().await?, &data_key, now, retain)?;
        let seq = store.current_seq().await?;
        metrics.store_check(true);
        metrics.signing_keys(ring.signing_since, ring.next, now);
        tracing::info!(kid = %ring.signing.kid(), alg = %ring.signing.algorithm(), published = ring.jwks.keys.len(), "signing keys loaded");
        let policy = TokenPolicy {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            access_ttl: config.access_ttl_secs(),
            leeway: config.leeway_secs(),
        };
        let access_tokens = Arc::new(AccessTokens::new(
            Arc::clone(&store),
            data_key.clone(),
            Arc::clone(&wechat),
            Arc::clone(&metrics),
            Arc::clone(&clock),
            access_token::lease_secs(config.wechat_timeout, config.wechat_retries),
        ));
        let identity = Arc::new(Identity {
            wechat: Arc::clone(&wechat),
            web: wechat_web,
            access_tokens: Arc::clone(&access_tokens),
        });
        let keys = Arc::new(KeyRingCell::new(ring));
        let known_seq = Arc::new(KnownSeq::new(seq));
        let sessions = Arc::new(Sessions {
            store: Arc::clone(&store),
            config: Arc::clone(&config),
            policy,
            keys: Arc::clone(&keys),
            data_key: data_key.clone(),
            metrics: Arc::clone(&metrics),
            known_seq: Arc::clone(&known_seq),
            identity: Arc::clone(&identity),
            inflight_codes: Mutex::new(HashSet::new()),
            longest_ttl: AtomicI64::new(longest_ttl),
        });
        let userdata = UserData {
            store: Arc::clone(&store),
            config: Arc::clone(&config),
            data_key: data_key.clone(),
            metrics: Arc::clone(&metrics),
            wechat,
            access_tokens,
            user_limiter,
            phone_flights: Flights::default(),
        };
        let admin = Admin {
            store: Arc::clone(&store),
            sessions: Arc::clone(&sessions),
            clock: Arc::clone(&clock),
        };
        let in_flight = (config.max_in_flight > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)));
        Ok(Arc::new(App {
            login_limiter,
            announcements,
            health,
            config,
            clock,
            store,
            feed: FeedCache::new(),
            sessions,
            identity,
            userdata,
            admin,
            allowed_origins,
            metrics,
            data_key,
            keys,
            known_seq,
            wake: watch::channel(seq).0,
            draining: watch::channel(false).0,
            started: Instant::now(),
            feed_waiters: Arc::new(AtomicUsize::new(0)),
            handlers: TaskTracker::new(),
            in_flight,
        }))
    }

    /// The current key ring.
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.current()
    }

    /// Re-reads the keys from the store and swaps the ring (promotion happens here).
    ///
    /// # Errors
    /// Store or key failures; the previous ring stays in place.
    pub async fn reload_keys(&self) -> Result<(), StartError> {
        let records = self.store.keys().await?;
        // Not only this replica's lifetime: a retired key stays until the last token it signed
        // under any replica's (or an earlier, longer) lifetime has expired.
        let retain = self
            .config
            .key_retain_secs(self.sessions.longest_ttl.load(Ordering::Acquire));
        let now = self.now();
        let ring = keys::ring(&records, &self.data_key, now, retain)?;
        let dropped = ring.dropped.clone();
        self.metrics
            .signing_keys(ring.signing_since, ring.next, now);
        let previous = self.keys();
        if previous.signing.kid() != ring.signing.kid() {
            tracing::info!(kid = %ring.signing.kid(), previous = %previous.signing.kid(), "signing key promoted");
        }
        self.keys.replace(ring);
        if !dropped.is_empty() {
            tracing::info!(kids = ?dropped, "erasing retired signing keys");
            self.store.erase_keys(&dropped).await?;
        }
        Ok(())
    }

    /// Records a new revocation high-water mark (the long polls are woken by
    /// [`crate::feed::pace`]).
    pub fn notify_seq(&self, seq: u64) {
        self.known_seq.advance(seq);
    }

    /// The store holds revocations only up to `stored`, below the `heard` this replica knew
    /// of (a seq announced, then lost with its primary before it replicated; a store restored
    /// from a backup): the known seq and the polls' wake go back to `stored`, unless a later
    /// seq came meanwhile — else every poll would read the store again for `heard`, and the
    /// store's next revocations, at or below `heard`, would wake no poll until one passed it.
    /// (One written between that read and this, at or below `heard`, wakes no poll: they
    /// answer it at their next wake or at the end of their wait.)
    pub fn forget_unstored_seq(&self, heard: u64, stored: u64) {
        if stored >= heard {
            return;
        }
        if self.known_seq.set_back(heard, stored) {
            tracing::warn!(
                heard,
                stored,
                "the revocation feed heard of a seq the store does not have (lost in a failover, or the store restored from a backup): following the store"
            );
            self.wake.send_if_modified(|wake| {
                let back = *wake > stored && *wake <= heard;
                if back {
                    *wake = stored;
                }
                back
            });
        }
    }

    /// The highest revocation seq this replica knows of.
    pub fn known_seq(&self) -> u64 {
        self.known_seq.get()
    }

    /// What the feed's long polls wait on: the known seq, paced by [`crate::feed::pace`].
    pub fn subscribe_wake(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Marks the server as draining: long polls answer at once.
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    /// A receiver that turns `true` when draining starts.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Registers an open feed request (for the `weauth_feed_waiters` gauge).
    pub fn feed_waiter(&self) -> FeedWaiter {
        self.feed_waiters.fetch_add(1, Ordering::Relaxed);
        FeedWaiter(Arc::clone(&self.feed_waiters))
    }

    /// Open feed requests.
    pub fn feed_waiters(&self) -> usize {
        self.feed_waiters.load(Ordering::Relaxed)
    }

    /// Seconds since start.
    /// Unix seconds now, on the app's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts the background tasks; they end when `shutdown` becomes `true`.
    pub fn spawn_background(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(crate::feed::pace(
            self.known_seq.subscribe(),
            self.wake.clone(),
            self.config.feed_pacing,
            Arc::clone(&self.feed_waiters),
            shutdown.clone(),
        ))];
        let app = Arc::clone(self);
        tasks.push(periodic(
            shutdown.clone(),
            app.config.key_reload,
            move || {
                let app = Arc::clone(&app);
                async move {
                    if let Err(err) = app.reload_keys().await {
                        tracing::warn!(error = %err, "key reload failed; keeping the current keys");
                    }
                }
            },
        ));
        tasks.push(tokio::spawn(follow_revocations(
            Arc::clone(self),
            shutdown.clone(),
        )));
        if let Some(health) = &self.health {
            let (app, health) = (Arc::clone(self), Arc::clone(health));
            tasks.push(periodic(shutdown.clone(), health.every(), move || {
                let (app, health) = (Arc::clone(&app), Arc::clone(&health));
                async move { health.check(&app.metrics).await }
            }));
        }
        let poll = self.announcements.reread_every();
        let app = Arc::clone(self);
        tasks.push(periodic(shutdown.clone(), poll, move || {
            let app = Arc::clone(&app);
            async move {
                match app.store.current_seq().await {
                    Ok(seq) => {
                        app.metrics.store_check(true);
                        if seq < app.feed.current() {
                            // The copy holds entries the store lost (read by a poll woken
                            // before they replicated, then lost with their primary): it starts
                            // over from the store, and so does the known seq. Left, its
                            // `since` was answered entries the store no longer has while
                            // another replica answered the same edge a full set, and an edge
                            // whose polls went to both went back and forth between the two
                            // until the next revocation.
                            if let Err(err) = app.feed.refresh(app.store.as_ref(), app.now()).await
                            {
                                tracing::debug!(error = %err, "feed copy refresh failed");
                            }
                            app.forget_unstored_seq(app.known_seq(), app.feed.current());
                        }
                        app.notify_seq(seq);
                    }
                    Err(err) => {
                        app.metrics.store_check(false);
                        tracing::debug!(error = %err, "seq poll failed");
                    }
                }
            }
        }));
        let app = Arc::clone(self);
        tasks.push(periodic(
            shutdown.clone(),
            revocation::TTL_REPORT_EVERY,
            move || {
                let app = Arc::clone(&app);
                async move {
                    if let Err(err) = app.sessions.report_access_ttl(app.now()).await {
                        tracing::warn!(error = %err, "access-token lifetime report failed");
                    }
                }
            },
        ));
        let app = Arc::clone(self);
        tasks.push(periodic(shutdown, self.config.purge_interval, move || {
            let app = Arc::clone(&app);
            async move {
                let at = app.now();
                match app.store.purge(at).await {
                    Ok(purged) if purged != Default::default() => {
                        if purged.revocations > 0 {
                            if let Err(err) = app.feed.refresh(app.store.as_ref(), at).await {
                                tracing::debug!(error = %err, "feed copy refresh after purge failed");
                            }
                        }
                        tracing::info!(
                            revocations = purged.revocations,
                            sessions = purged.sessions,
                            refresh_tokens = purged.refresh_tokens,
                            "purged expired rows"
                        );
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "purge failed"),
                }
            }
        }));
        tasks
    }
}

/// Wakes this replica's long polls when any replica writes a revocation: follows the
/// announcements ([`Announcements::follow`]), again after a lost subscription or a failover.
async fn follow_revocations(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let heard = |seq: u64| app.notify_seq(seq);
        tokio::select! {
            result = app.announcements.follow(&heard) => {
                if let Err(err) = result {
                    // Once per interval: with the store unreachable, every attempt fails at
                    // once, five a second.
                    static LOST: Throttle<()> = Throttle::new(throttle::INTERVAL);
                    if let Some(held_back) = LOST.admit(()) {
                        tracing::warn!(error = %err, held_back, "revocation subscription lost; re-subscribing");
                    }
                }
            }
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
        }
    }
}

fn periodic<F, Fut>(
    mut shutdown: watch::Receiver<bool>,
    every: Duration,
    mut tick: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            }
            // A tick under way is cut short by the shutdown too (each tick's writes are whole
            // on their own: the purge's batches, a report): a purge of a backlog or a store
            // that does not answer held the process past its drain, into Kubernetes' SIGKILL,
            // and the last spans were never sent.
            tokio::select! {
                () = tick() => {}
                () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            }
        }
    })
}

/// Checks, without writing anything, what [`App::build`] would otherwise find wrong only after
/// creating the database: the signing key file is readable and of `WEAUTH_SIGNING_ALG`, and an
/// existing data key file next to the database is readable and well-formed. `main` calls it
/// after binding the listener, so a start that fails leaves the directory as it was.
///
/// # Errors
/// The key file's or the data key file's problem.
pub fn preflight(config: &Config) -> Result<(), StartError> {
    if let Some(path) = &config.signing_key_file {
        keys::from_file(path, config.signing_alg)?;
    }
    if let (None, Some(db)) = (&config.data_key, config.sqlite_path()) {
        let path = crate::secrets::key_file_path(db);
        if path.exists() {
            DataKey::load(None, db)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tick under way when the shutdown comes is cut short: the task ends at once.
    #[tokio::test]
    async fn periodic_task_ends_at_shutdown_even_in_a_tick() {
        let (stop, shutdown) = watch::channel(false);
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let started_tx = std::sync::Mutex::new(Some(started_tx));
        let task = periodic(shutdown, Duration::from_millis(10), move || {
            if let Some(tx) = started_tx.lock().ok().and_then(|mut tx| tx.take()) {
                let _ = tx.send(());
            }
            std::future::pending::<()>()
        });
        started.await.unwrap();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task waited for its tick to end")
            .unwrap();
    }
}
