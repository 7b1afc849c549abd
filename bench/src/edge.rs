//! The edge comparison: the same Envoy (one worker, `taskset -c 0`, direct_response) with each
//! auth configuration in turn, loaded by `wrk` on the other core.
//!
//! All configurations are booted one after another (each its own ports and `--base-id`, each
//! verified before the next starts, so its start-to-ready time is its own: a valid token
//! passes, a tampered one is refused, a revoked one is refused where a revocation set exists),
//! then measured in interleaved rounds so that a noisy neighbour hits every row
//! alike, each row on a fresh Envoy (booted and verified again) in every round after the
//! first, so that no process's layout biases all of a row's rounds; each metric is the median
//! over rounds. Envoy CPU per request = `/proc/<pid>/stat`
//! utime+stime over the run divided by Envoy's own `http.bench.downstream_rq_total` delta.
//!
//! Then the native target's rows again, side by side as listeners of one Envoy (a fresh one per
//! round): the differences between them are then free of each process's own bias, which the
//! target's margins are no larger than ([`one_envoy_scenarios`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weauth_token::Algorithm;

use crate::feed::{synthetic_entries, FeedHandle};
use crate::parse::{envoy_stat, wrk_report};
use crate::procs::{
    alive, clock_ticks_per_second, cpu_ticks, free_port, rss_kib, spawn_pinned, Owned,
};
use crate::report::{EdgeMeasure, EdgeRow, MemoryResult};
use crate::stats::cpu_us_per_request;
use crate::template::{self, render, TemplateError};
use crate::tokens::{token_set, TokenSet, ISSUER};

/// The feed credential the edge rows use between Envoy and the driver's feed.
pub const FEED_CREDENTIAL: &str = "bench-feed-credential";
/// Most entries in one feed response, the issuer's own page size (`FEED_PAGE_ENTRIES`, about
/// 4 MB of JSON at ~75 bytes an entry): a set of 1 000 000 is served as a first chunk of this
/// many (`full: true`) followed by deltas, as the issuer pages it.
pub const FEED_CHUNK: usize = 50_000;
/// Envoy's request counter for the bench listener.
pub const RQ_COUNTER: &str = "http.bench.downstream_rq_total";

/// What sits in front of the router.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    /// The empty proxy-wasm filter (`bench/empty-filter`), making the host calls named.
    EmptyWasm(EmptyCalls),
    /// The same crate built as an Envoy dynamic module, making the ABI calls named.
    EmptyNative(NativeCalls),
    JwtAuthn {
        alg: Algorithm,
        cache: bool,
        /// Doing what weauth does to an allowed request as the bench configures it: the two
        /// identity headers from the token's claims (`claim_to_headers`), the token removed
        /// (`forward: false`) and the route matched again (`clear_route_cache`).
        edits: bool,
    },
    /// jwt_authn (EdDSA, cache on) + HTTP ext_authz to `weauth-revocation-check`.
    JwtAuthnExtAuthz {
        revoked: usize,
    },
    /// The weauth filter (EdDSA, its cache on) with a feed of `revoked` entries.
    Weauth {
        revoked: usize,
    },
    /// The same, built from another revision (`WEAUTH_BENCH_COMPARE_WASM`): a before/after
    /// measured in the same interleaved rounds.
    WeauthCompare {
        revoked: usize,
    },
    /// The weauth filter's native build (an Envoy dynamic module, `make native`), with a feed
    /// of `revoked` entries, forwarding what `forward` says.
    Native {
        revoked: usize,
        forward: Forward,
    },
    /// The native build from another revision (`WEAUTH_BENCH_COMPARE_NATIVE`): a before/after
    /// measured in the same interleaved rounds.
    NativeCompare {
        revoked: usize,
    },
}

/// What a native weauth row forwards on an allowed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// As the wasm rows are configured ([`plugin_config`]): the two identity headers set, the
    /// token removed (`forward_authorization` defaults to false), the route matched again.
    Identity,
    /// The job of the plain jwt_authn rows (`forward: true`, no `claim_to_headers`): the token
    /// forwarded and no identity header (`"forward_authorization": true`, `"claim_to_headers":
    /// []`), so the request is not edited and its route not matched again. Revocation stays on.
    Token,
}

/// What the empty wasm filter does per request (its plugin configuration; see
/// `bench/empty-filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyCalls {
    /// Nothing: the price of being a wasm filter at all, same SDK, profile and runtime as
    /// weauth.
    None,
    /// With fixed values and no logic, the host calls weauth makes on an allowed cache hit: the
    /// floor the proxy-wasm ABI sets for what weauth is configured to do.
    Weauth,
    /// Only weauth's reads (the header map, the revocation version, the clock).
    WeauthReads,
    /// Only weauth's header edits (two adds, one removal).
    WeauthEdits,
    /// The clock read six times: what one crossing of the ABI costs (the cheapest host call,
    /// no memory callback).
    Clock,
}

/// What the empty dynamic module does per request (its filter configuration; see
/// `bench/empty-filter/src/native.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeCalls {
    /// Nothing: the price of being a dynamic module at all.
    None,
    /// weauth's calls on a request it forwards untouched: the header map read, two counters.
    Reads,
    /// Those and weauth's edits on an allowed request as the weauth rows configure it: two
    /// identity headers added, `authorization` removed, the route cache cleared.
    Weauth,
}

impl NativeCalls {
    /// The filter configuration that selects the mode.
    pub fn filter_config(self) -> &'static str {
        match self {
            NativeCalls::None => "",
            NativeCalls::Reads => "weauth-reads",
            NativeCalls::Weauth => "weauth-calls",
        }
    }
}

impl EmptyCalls {
    /// The plugin configuration that selects the mode.
    pub fn plugin_config(self) -> &'static str {
        match self {
            EmptyCalls::None => "{}",
            EmptyCalls::Weauth => "\"weauth-host-calls\"",
            EmptyCalls::WeauthReads => "\"weauth-reads\"",
            EmptyCalls::WeauthEdits => "\"weauth-edits\"",
            EmptyCalls::Clock => "\"clock-reads\"",
        }
    }
}

impl Auth {
    /// Whether a tampered token must be refused.
    pub fn authenticates(&self) -> bool {
        !matches!(self, Auth::None | Auth::EmptyWasm(_) | Auth::EmptyNative(_))
    }

    /// How many revocations the configuration's feed holds (`None`: no revocation at all).
    pub fn revoked(&self) -> Option<usize> {
        match self {
            Auth::JwtAuthnExtAuthz { revoked }
            | Auth::Weauth { revoked }
            | Auth::WeauthCompare { revoked }
            | Auth::Native { revoked, .. }
            | Auth::NativeCompare { revoked } => Some(*revoked),
            _ => None,
        }
    }
}

/// One row of the edge table.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub auth: Auth,
}

/// The rows of the issue, in table order; the first is the no-auth baseline.
pub fn scenarios() -> Vec<Scenario> {
    let row = |name: &str, auth| Scenario {
        name: name.to_string(),
        auth,
    };
    vec![
        row("no auth", Auth::None),
        row("empty wasm filter", Auth::EmptyWasm(EmptyCalls::None)),
        row(
            "empty wasm filter + weauth's host calls",
            Auth::EmptyWasm(EmptyCalls::Weauth),
        ),
        row(
            "empty wasm filter + weauth's reads only",
            Auth::EmptyWasm(EmptyCalls::WeauthReads),
        ),
        row(
            "empty wasm filter + weauth's header edits only",
            Auth::EmptyWasm(EmptyCalls::WeauthEdits),
        ),
        row(
            "empty wasm filter + 6 clock reads",
            Auth::EmptyWasm(EmptyCalls::Clock),
        ),
        row("empty native module", Auth::EmptyNative(NativeCalls::None)),
        row(
            "empty native module + weauth's reads and counters",
            Auth::EmptyNative(NativeCalls::Reads),
        ),
        row(
            "empty native module + weauth's ABI calls",
            Auth::EmptyNative(NativeCalls::Weauth),
        ),
        row(
            "jwt_authn ES256, cache off",
            Auth::JwtAuthn {
                alg: Algorithm::ES256,
                cache: false,
                edits: false,
            },
        ),
        row(
            "jwt_authn ES256, cache on",
            Auth::JwtAuthn {
                alg: Algorithm::ES256,
                cache: true,
                edits: false,
            },
        ),
        row(
            "jwt_authn ES256 (cache on) + weauth's header edits",
            Auth::JwtAuthn {
                alg: Algorithm::ES256,
                cache: true,
                edits: true,
            },
        ),
        row(
            "jwt_authn EdDSA, cache off",
            Auth::JwtAuthn {
                alg: Algorithm::EdDSA,
                cache: false,
                edits: false,
            },
        ),
        row(
            "jwt_authn EdDSA (cache on) + ext_authz, 10k revoked",
            Auth::JwtAuthnExtAuthz { revoked: 10_000 },
        ),
        row(
            "weauth EdDSA (cache), 0 revoked",
            Auth::Weauth { revoked: 0 },
        ),
        row(
            "weauth EdDSA (cache), 10k revoked",
            Auth::Weauth { revoked: 10_000 },
        ),
        row(
            "weauth EdDSA (cache), 100k revoked",
            Auth::Weauth { revoked: 100_000 },
        ),
        row(
            "weauth EdDSA (cache), 1M revoked",
            Auth::Weauth { revoked: 1_000_000 },
        ),
        row(
            "weauth native EdDSA (cache), 0 revoked",
            Auth::Native {
                revoked: 0,
                forward: Forward::Identity,
            },
        ),
        row(
            "weauth native EdDSA (cache), 1M revoked",
            Auth::Native {
                revoked: 1_000_000,
                forward: Forward::Identity,
            },
        ),
        row(
            "weauth native EdDSA (cache) doing plain jwt_authn's job, 1M revoked",
            Auth::Native {
                revoked: 1_000_000,
                forward: Forward::Token,
            },
        ),
    ]
}

/// The rows of a run: [`scenarios`] (only the baseline and those named by
/// [`EdgeSettings::rows`] when it is not empty), plus a comparison build's row when one is given.
pub fn scenarios_for(settings: &EdgeSettings) -> Vec<Scenario> {
    let mut all: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| settings.keeps(s))
        .collect();
    if settings.compare_wasm.is_some() {
        all.push(Scenario {
            name: "comparison build (WEAUTH_BENCH_COMPARE_WASM), 0 revoked".into(),
            auth: Auth::WeauthCompare { revoked: 0 },
        });
    }
    if settings.compare_native.is_some() {
        all.push(native_compare());
    }
    all
}

/// The row of the native build from another revision (`WEAUTH_BENCH_COMPARE_NATIVE`), to set
/// beside "weauth native EdDSA (cache), 1M revoked".
fn native_compare() -> Scenario {
    Scenario {
        name: "comparison native build (WEAUTH_BENCH_COMPARE_NATIVE), 1M revoked".into(),
        auth: Auth::NativeCompare { revoked: 1_000_000 },
    }
}

impl EdgeSettings {
    /// Whether `--rows` keeps this row (the no-auth baseline always).
    fn keeps(&self, scenario: &Scenario) -> bool {
        scenario.auth == Auth::None
            || self.rows.is_empty()
            || self.rows.iter().any(|w| scenario.name.contains(w.as_str()))
    }
}

/// The native target's rows (the baseline, the empty dynamic module by itself and making
/// weauth's reads and counters, jwt_authn ES256 cached plain and doing weauth's job, the native
/// build with 1M revocations doing each job), measured again side by side as listeners of one
/// Envoy ([`run`]), those `--rows` keeps; and the native build from another revision, when one
/// is given (two builds in one process: a before/after free of each process's bias).
pub fn one_envoy_scenarios(settings: &EdgeSettings) -> Vec<Scenario> {
    let jwt = |edits| Auth::JwtAuthn {
        alg: Algorithm::ES256,
        cache: true,
        edits,
    };
    let native = |forward| Auth::Native {
        revoked: 1_000_000,
        forward,
    };
    let wanted = [
        Auth::None,
        Auth::EmptyNative(NativeCalls::None),
        Auth::EmptyNative(NativeCalls::Reads),
        jwt(false),
        jwt(true),
        native(Forward::Token),
        native(Forward::Identity),
    ];
    let mut rows: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| wanted.contains(&s.auth) && settings.keeps(s))
        .collect();
    if settings.compare_native.is_some() {
        rows.push(native_compare());
    }
    rows
}

/// The order rows are measured in during `round` of `rounds`: all `n` rows, rotated so that
/// the rounds start evenly spread over the table.
pub fn round_order(n: usize, round: usize, rounds: usize) -> Vec<usize> {
    let start = (round * n).checked_div(rounds).unwrap_or(0);
    (0..n).map(|i| (start + i) % n.max(1)).collect()
}

/// Ports and paths one configuration is rendered with.
pub struct Wiring<'a> {
    pub listen_port: u16,
    pub admin_port: u16,
    /// The driver feed's port (weauth rows).
    pub feed_port: u16,
    /// The revocation check's port (ext_authz row).
    pub check_port: u16,
    pub wasm: &'a Path,
    /// The empty filter module (empty-filter row).
    pub empty_wasm: &'a Path,
}

/// The weauth plugin configuration for the edge rows (docs/INTERFACES.md): two identity
/// headers (`sub`, `openid`), as issue 22's wasm target is stated for, not the default six;
/// with [`Forward::Token`], none, and the token forwarded.
pub fn plugin_config(jwks_json: &str, forward: Forward) -> Result<String, serde_json::Error> {
    let jwks: serde_json::Value = serde_json::from_str(jwks_json)?;
    let mut config = serde_json::json!({
        "issuer": ISSUER,
        "audiences": ["weauth"],
        "algorithms": ["EdDSA"],
        "jwks": {"inline": jwks},
        "revocation": {"cluster": "weauth_feed", "authority": "feed", "path": "/v1/revocations",
                       "credential": FEED_CREDENTIAL, "wait_seconds": 20,
                       "stale_after_seconds": 60, "stale_mode": "deny"},
        "claim_to_headers": [{"claim": "sub", "header": "x-weauth-sub"},
                             {"claim": "openid", "header": "x-weauth-openid"}],
        "cache_entries": 10000
    });
    if forward == Forward::Token {
        config["claim_to_headers"] = serde_json::json!([]);
        config["forward_authorization"] = serde_json::json!(true);
    }
    serde_json::to_string(&config)
}

/// The dynamic modules' names: Envoy loads `lib<name>.so` from [`modules_dir`], where the run
/// copies the native build, the empty module and the comparison build under these names (two
/// builds of the filter can then sit in one Envoy).
pub const NATIVE_MODULE: &str = "weauth_filter";
pub const EMPTY_MODULE: &str = "weauth_empty_filter";
pub const COMPARE_MODULE: &str = "weauth_filter_compare";

/// The folder of the run's dynamic modules (Envoy's `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
pub fn modules_dir(settings: &EdgeSettings) -> PathBuf {
    settings.work_dir.join("modules")
}

/// Copies the native build, the empty module and the comparison build (those that exist) into
/// [`modules_dir`] under their module names.
fn gather_modules(settings: &EdgeSettings) -> std::io::Result<()> {
    let dir = modules_dir(settings);
    std::fs::create_dir_all(&dir)?;
    let builds = [
        (Some(&settings.native), NATIVE_MODULE),
        (Some(&settings.empty_native), EMPTY_MODULE),
        (settings.compare_native.as_ref(), COMPARE_MODULE),
    ];
    for (build, name) in builds {
        let target = dir.join(format!("lib{name}.so"));
        let _ = std::fs::remove_file(&target);
        if let Some(build) = build.filter(|b| b.is_file()) {
            std::fs::copy(build, &target)?;
        }
    }
    Ok(())
}

/// What one configuration puts in front of the router, and the clusters its filters call.
pub struct Parts {
    pub filters: String,
    /// By name: listeners of one Envoy that call the same cluster share it.
    pub clusters: Vec<(&'static str, String)>,
}

/// Renders the Envoy bootstrap of `auth` with the keys of `tokens`: one listener, `bench`.
pub fn envoy_config(auth: &Auth, tokens: &TokenSet, w: &Wiring) -> Result<String, TemplateError> {
    let parts = auth_parts(auth, tokens, w)?;
    bootstrap(w.admin_port, &[("bench".to_string(), w.listen_port, parts)])
}

/// The bootstrap with these listeners (name — also its HTTP stat prefix —, port, what is in
/// front of its router), and the clusters they call, each once.
pub fn bootstrap(
    admin_port: u16,
    listeners: &[(String, u16, Parts)],
) -> Result<String, TemplateError> {
    let mut rendered = String::new();
    let mut clusters: Vec<&(&'static str, String)> = Vec::new();
    for (name, port, parts) in listeners {
        rendered.push_str(&render(
            template::LISTENER,
            &[
                ("NAME", name),
                ("LISTEN_PORT", &port.to_string()),
                ("HTTP_FILTERS", &parts.filters),
            ],
        )?);
        for cluster in &parts.clusters {
            if !clusters.iter().any(|c| c.0 == cluster.0) {
                clusters.push(cluster);
            }
        }
    }
    let clusters = if clusters.is_empty() {
        "[]".to_string()
    } else {
        clusters.iter().map(|c| c.1.as_str()).collect()
    };
    render(
        template::EDGE,
        &[
            ("ADMIN_PORT", &admin_port.to_string()),
            ("LISTENERS", &rendered),
            ("CLUSTERS", &clusters),
        ],
    )
}

/// What `auth` puts in front of the router, with the keys of `tokens`.
pub fn auth_parts(auth: &Auth, tokens: &TokenSet, w: &Wiring) -> Result<Parts, TemplateError> {
    // `forward`: whether the token stays in the request (jwt_authn's `forward`).
    let jwt = |extra: &str, forward: bool| {
        let forward = if forward { "true" } else { "false" };
        render(
            template::JWT_AUTHN,
            &[
                ("ISSUER", ISSUER),
                ("JWKS", &tokens.jwks_json),
                ("FORWARD", forward),
                ("PROVIDER_EXTRA", extra),
            ],
        )
    };
    const CACHE: &str = "jwt_cache_config: { jwt_cache_size: 1000 }";
    // weauth's edits on an allowed request, as jwt_authn says them (with `forward: false`).
    const JWT_EDITS: &str = "\nclaim_to_headers:\n\
        - { header_name: x-weauth-sub, claim_name: sub }\n\
        - { header_name: x-weauth-openid, claim_name: openid }\n\
        clear_route_cache: true";
    let cluster = |name: &'static str, port: u16| {
        render(
            template::CLUSTER,
            &[("NAME", name), ("PORT", &port.to_string())],
        )
        .map(|yaml| vec![(name, yaml)])
    };
    // The weauth plugin configuration, and the native build's filter with its feed cluster.
    let plugin = |forward| {
        plugin_config(&tokens.jwks_json, forward)
            .map_err(|e| TemplateError::Leftover(e.to_string()))
    };
    let native = |module, forward| -> Result<(String, Vec<_>), TemplateError> {
        Ok((
            render(
                template::WEAUTH_NATIVE,
                &[("MODULE", module), ("PLUGIN_CONFIG", &plugin(forward)?)],
            )?,
            cluster("weauth_feed", w.feed_port)?,
        ))
    };
    let (filters, clusters) = match auth {
        Auth::None => (String::new(), Vec::new()),
        Auth::EmptyWasm(calls) => (
            render(
                template::WEAUTH,
                &[
                    ("WASM_PATH", &w.empty_wasm.display().to_string()),
                    ("PLUGIN_CONFIG", calls.plugin_config()),
                ],
            )?,
            Vec::new(),
        ),
        Auth::JwtAuthn { cache, edits, .. } => {
            let mut extra = if *cache { CACHE } else { "" }.to_string();
            if *edits {
                extra.push_str(JWT_EDITS);
            }
            (jwt(&extra, !*edits)?, Vec::new())
        }
        Auth::JwtAuthnExtAuthz { .. } => (
            jwt(
                &format!("{CACHE}\nforward_payload_header: x-jwt-payload"),
                true,
            )? + &render(template::EXT_AUTHZ, &[])?,
            cluster("revocation_check", w.check_port)?,
        ),
        Auth::Native { forward, .. } => native(NATIVE_MODULE, *forward)?,
        Auth::NativeCompare { .. } => native(COMPARE_MODULE, Forward::Identity)?,
        Auth::EmptyNative(calls) => (
            render(
                template::WEAUTH_NATIVE,
                &[
                    ("MODULE", EMPTY_MODULE),
                    ("PLUGIN_CONFIG", calls.filter_config()),
                ],
            )?,
            Vec::new(),
        ),
        Auth::Weauth { .. } | Auth::WeauthCompare { .. } => (
            render(
                template::WEAUTH,
                &[
                    ("WASM_PATH", &w.wasm.display().to_string()),
                    ("PLUGIN_CONFIG", &plugin(Forward::Identity)?),
                ],
            )?,
            cluster("weauth_feed", w.feed_port)?,
        ),
    };
    Ok(Parts { filters, clusters })
}

/// Settings of one edge run.
pub struct EdgeSettings {
    pub envoy: PathBuf,
    pub wasm: PathBuf,
    /// The native build (`make native`), the native rows.
    pub native: PathBuf,
    /// The empty proxy-wasm filter (`bench/empty-filter`), the empty-filter rows.
    pub empty_wasm: PathBuf,
    /// The same crate as a dynamic module (`libweauth_empty_filter.so`), the empty-module rows.
    pub empty_native: PathBuf,
    /// Another build of the filter to measure alongside (`WEAUTH_BENCH_COMPARE_WASM`), if any.
    pub compare_wasm: Option<PathBuf>,
    /// Another native build to measure alongside (`WEAUTH_BENCH_COMPARE_NATIVE`, a
    /// `libweauth_filter.so`), if any.
    pub compare_native: Option<PathBuf>,
    pub revocation_check: PathBuf,
    pub work_dir: PathBuf,
    pub rounds: usize,
    pub seconds: u64,
    pub warmup_seconds: u64,
    pub connections: u32,
    /// First `--base-id` to use; each Envoy gets the next one.
    pub base_id: u32,
    /// Words naming the rows to run besides the no-auth baseline (`--rows`; empty: every row).
    pub rows: Vec<String>,
    /// Rounds of the native target's rows side by side in one Envoy ([`one_envoy_scenarios`];
    /// 0: not measured), and the seconds each row is measured in a round.
    pub one_envoy_rounds: usize,
    pub one_envoy_seconds: u64,
}

struct Booted {
    scenario: Scenario,
    envoy: Option<Owned>,
    listen_port: u16,
    admin_port: u16,
    token: String,
    verified: String,
    error: Option<String>,
    samples: Vec<EdgeMeasure>,
}

/// What starting a row needs besides the row: the run's settings, keys, feeds and checker.
struct Starter<'a> {
    settings: &'a EdgeSettings,
    client: &'a reqwest::Client,
    es256: &'a TokenSet,
    eddsa: &'a TokenSet,
    feed_port: &'a dyn Fn(usize) -> Option<u16>,
    check_port: Option<u16>,
}

impl Starter<'_> {
    /// The token set a row's configuration trusts (ES256 for the ES256 jwt_authn rows).
    fn tokens(&self, auth: &Auth) -> &TokenSet {
        match auth {
            Auth::JwtAuthn {
                alg: Algorithm::ES256,
                ..
            } => self.es256,
            _ => self.eddsa,
        }
    }

    /// A row not started yet, with the token its load sends.
    fn row(&self, scenario: Scenario) -> Booted {
        Booted {
            token: self.tokens(&scenario.auth).valid.clone(),
            scenario,
            envoy: None,
            listen_port: 0,
            admin_port: 0,
            verified: String::new(),
            error: None,
            samples: Vec::new(),
        }
    }

    /// Starts row `b`'s Envoy (configuration `index`) and verifies it: a valid token passes, a
    /// tampered one is refused, a revoked one is refused where a revocation set exists. Sets
    /// its process, ports and what was verified (with the start-to-ready time), or its error.
    async fn start(&self, index: usize, b: &mut Booted) {
        let tokens = self.tokens(&b.scenario.auth);
        let started = Instant::now();
        match boot(
            self.settings,
            index,
            1,
            &b.scenario,
            tokens,
            self.feed_port,
            self.check_port,
        ) {
            Ok((envoy, listen, admin)) => {
                b.envoy = Some(envoy);
                b.listen_port = listen;
                b.admin_port = admin;
            }
            Err(e) => {
                b.error = Some(e);
                return;
            }
        }
        let pid = b.envoy.as_ref().map(Owned::pid);
        let log = self.settings.work_dir.join(format!("envoy-{index}.log"));
        let probe = Probe::of(tokens);
        let result = verify(
            self.client,
            &b.scenario.auth,
            b.listen_port,
            pid,
            &probe,
            &log,
        )
        .await;
        // Start to ready: Envoy started → serving, with its whole revocation set loaded (the
        // revoked token, the set's last entry, refused).
        let ready = started.elapsed().as_secs_f64();
        match result {
            Ok(text) => b.verified = format!("{text}, ready {ready:.1} s after start"),
            Err(e) => b.error = Some(e),
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Status of `GET http://127.0.0.1:port/` with `Bearer token` (0 when the request failed).
async fn status(client: &reqwest::Client, port: u16, token: &str) -> u16 {
    client
        .get(format!("http://127.0.0.1:{port}/bench"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn admin_get(client: &reqwest::Client, port: u16, path: &str) -> Option<String> {
    client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// What the edge section measured.
#[derive(Debug, Default)]
pub struct EdgeRun {
    /// One row per scenario, each on its own Envoy.
    pub rows: Vec<EdgeRow>,
    /// The native target's rows side by side in one Envoy ([`one_envoy_scenarios`]; empty when
    /// not measured).
    pub one_envoy: Vec<EdgeRow>,
    pub memory: Memory,
}

/// Boots, verifies and measures every scenario (one row each), then the native target's rows
/// side by side in one Envoy, then the filters' memory.
pub async fn run(settings: &EdgeSettings) -> EdgeRun {
    let client = reqwest::Client::new();
    let now = now_unix();
    let (es256, eddsa) = match (
        token_set(Algorithm::ES256, now, 4 * 3600),
        token_set(Algorithm::EdDSA, now, 4 * 3600),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            let rows = scenarios_for(settings)
                .into_iter()
                .map(|s| EdgeRow::failed(&s.name, &e.to_string()))
                .collect();
            return EdgeRun {
                rows,
                ..EdgeRun::default()
            };
        }
    };
    let until = now + 4 * 3600;
    let wasm_present = settings.wasm.is_file();
    if let Err(e) = gather_modules(settings) {
        eprintln!("bench: the dynamic modules could not be copied to the run's folder: {e}");
    }

    // Feeds: one per distinct set size (the ext_authz row shares the 10k one).
    let mut feeds: Vec<(usize, FeedHandle)> = Vec::new();
    let side_by_side = if settings.one_envoy_rounds > 0 {
        one_envoy_scenarios(settings)
    } else {
        Vec::new()
    };
    for scenario in scenarios_for(settings).into_iter().chain(side_by_side) {
        let Some(size) = scenario.auth.revoked() else {
            continue;
        };
        if feeds.iter().any(|(n, _)| *n == size) {
            continue;
        }
        if matches!(
            scenario.auth,
            Auth::Weauth { .. } | Auth::WeauthCompare { .. }
        ) && !wasm_present
        {
            continue;
        }
        if matches!(scenario.auth, Auth::Native { .. }) && !settings.native.is_file() {
            continue;
        }
        if matches!(scenario.auth, Auth::NativeCompare { .. })
            && !settings
                .compare_native
                .as_ref()
                .is_some_and(|p| p.is_file())
        {
            continue;
        }
        let started = Instant::now();
        let entries = synthetic_entries(size, Some(&eddsa.revoked_jti), until);
        let entries = if size == 0 { Vec::new() } else { entries };
        let listen = ([127, 0, 0, 1], 0).into();
        match FeedHandle::start(listen, FEED_CREDENTIAL, entries, FEED_CHUNK).await {
            Ok(feed) => {
                eprintln!(
                    "bench: feed of {size} revocations on {} ({:.1}s to build)",
                    feed.addr(),
                    started.elapsed().as_secs_f64()
                );
                feeds.push((size, feed));
            }
            Err(e) => eprintln!("bench: feed of {size} could not start: {e}"),
        }
    }
    let feed_port = |size: usize| {
        feeds
            .iter()
            .find(|(n, _)| *n == size)
            .map(|(_, f)| f.addr().port())
    };

    // The ext_authz revocation check, on the load generator's core.
    let mut check: Option<(Owned, u16)> = None;
    if let (Some(port), Ok(check_port)) = (feed_port(10_000), free_port()) {
        let args = vec![
            format!("127.0.0.1:{check_port}"),
            format!("http://127.0.0.1:{port}/v1/revocations"),
        ];
        let log = settings.work_dir.join("revocation-check.log");
        match spawn_pinned(
            "1",
            &settings.revocation_check,
            &args,
            &log,
            &[("WEAUTH_FEED_TOKEN", FEED_CREDENTIAL)],
        ) {
            Ok(proc) => check = Some((proc, check_port)),
            Err(e) => eprintln!(
                "bench: cannot start {}: {e}",
                settings.revocation_check.display()
            ),
        }
    }
    if let Some((_, port)) = &check {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/ready"))
                .send()
                .await
            {
                if r.status().is_success() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Boot the Envoys one after another, each verified before the next starts, so that its
    // start-to-ready time is its own: booted all at once, 13 Envoys pinned to one core waited
    // for each other (the native 1M row was ready in 1.5 s alone and in 6.5–19.6 s with the
    // others). The ones already up stay idle (a held feed poll each) while the next boots.
    let starter = Starter {
        settings,
        client: &client,
        es256: &es256,
        eddsa: &eddsa,
        feed_port: &feed_port,
        check_port: check.as_ref().map(|c| c.1),
    };
    let mut booted = Vec::new();
    for (i, scenario) in scenarios_for(settings).into_iter().enumerate() {
        let mut b = starter.row(scenario);
        starter.start(i, &mut b).await;
        eprintln!(
            "bench: {}: {}",
            b.scenario.name,
            b.error.as_deref().unwrap_or(&b.verified)
        );
        booted.push(b);
    }

    // Measure in interleaved rounds, each row on a fresh Envoy in every round after the first.
    // Two Envoys with the same configuration and module differed by 0.7 µs a request in every
    // round of a run (4 December 2026): something fixed for a process's life (its memory
    // layout, most likely) biases all its rounds alike, by as much as the differences the
    // targets judge. A fresh process per round turns that bias into noise that the median over
    // rounds (and a round-by-round pairing) averages out.
    let hz = clock_ticks_per_second();
    let n = booted.len();
    for round in 0..settings.rounds {
        // Each round starts at a different row, so a burst of noise does not always land on
        // the same rows.
        for k in round_order(n, round, settings.rounds) {
            let Some(b) = booted.get_mut(k).filter(|b| b.error.is_none()) else {
                continue;
            };
            if round > 0 {
                let first = std::mem::take(&mut b.verified);
                b.envoy = None;
                starter.start(k, b).await;
                // The row says how its first Envoy started (its start-to-ready time alone).
                b.verified = first;
                if let Some(e) = &b.error {
                    eprintln!("bench: round {} {}: {e}", round + 1, b.scenario.name);
                    continue;
                }
            }
            let check_pid = match (&b.scenario.auth, &check) {
                (Auth::JwtAuthnExtAuthz { .. }, Some((p, _))) => Some(p.pid()),
                _ => None,
            };
            let measured = match b.load(settings) {
                Ok(load) => measure(&client, settings, &load, check_pid, hz).await,
                Err(e) => Err(e),
            };
            match measured {
                Ok(m) => {
                    eprintln!(
                        "bench: round {}/{} {}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {:.1} µs/req",
                        round + 1,
                        settings.rounds,
                        b.scenario.name,
                        m.rps,
                        m.p50_ms,
                        m.p99_ms,
                        m.cpu_us
                    );
                    b.samples.push(m);
                }
                Err(e) => {
                    eprintln!("bench: {}: {e}", b.scenario.name);
                    b.error = Some(e);
                }
            }
        }
    }
    drop(check);
    let one_envoy = one_envoy(&starter, hz).await;
    let memory = Memory {
        wasm: memory(settings, &client, &booted, &eddsa, &feed_port, false).await,
        native: memory(settings, &client, &booted, &eddsa, &feed_port, true).await,
    };
    let rows = booted
        .into_iter()
        .map(|b| match b.error {
            Some(e) if b.samples.is_empty() => EdgeRow::failed(&b.scenario.name, &e),
            _ => EdgeRow::from_samples(&b.scenario.name, &b.verified, &b.samples),
        })
        .collect();
    EdgeRun {
        rows,
        one_envoy,
        memory,
    }
}

/// Seconds of load on a listener of the one Envoy before each measurement of it.
pub const ONE_ENVOY_WARMUP_SECONDS: u64 = 1;

/// Measures [`one_envoy_scenarios`] side by side: every row a listener of the same Envoy (one
/// worker, core 0), a fresh Envoy each round, the listeners loaded one after another in an order
/// rotated by round. Separate Envoys carry a bias fixed for each process's life (two identical
/// ones differed by 0.4–2.1 µs a request, 4 December 2026) as large as the differences the
/// native target judges; listeners of one process share it, so a round's differences between
/// rows are free of it. A round in which any listener failed its check or its measurement is
/// left out whole, so that the rows' rounds stay paired.
async fn one_envoy(starter: &Starter<'_>, hz: u64) -> Vec<EdgeRow> {
    let settings = starter.settings;
    let scenarios = one_envoy_scenarios(settings);
    if settings.one_envoy_rounds == 0 || scenarios.len() < 2 {
        return Vec::new();
    }
    let failed = |why: &str| {
        scenarios
            .iter()
            .map(|s| EdgeRow::failed(&s.name, why))
            .collect()
    };
    if !settings.native.is_file() {
        return failed("not run: no native module (make native)");
    }
    let empty_rows = scenarios
        .iter()
        .any(|s| matches!(s.auth, Auth::EmptyNative(_)));
    if empty_rows && !settings.empty_native.is_file() {
        return failed("not run: no empty native module");
    }
    if settings
        .compare_native
        .as_ref()
        .is_some_and(|build| !build.is_file())
    {
        return failed("not run: no comparison native build at WEAUTH_BENCH_COMPARE_NATIVE");
    }
    let Some(feed_port) = (starter.feed_port)(1_000_000) else {
        return failed("not run: the feed of 1M revocations did not start");
    };
    let n = scenarios.len();
    let mut samples: Vec<Vec<EdgeMeasure>> = vec![Vec::new(); n];
    let mut verified = vec![String::new(); n];
    let mut error = String::new();
    for round in 0..settings.one_envoy_rounds {
        match one_envoy_round(starter, &scenarios, feed_port, round, hz).await {
            Ok(measured) => {
                for (k, (text, m)) in measured.into_iter().enumerate() {
                    if samples[k].is_empty() {
                        verified[k] = text;
                    }
                    samples[k].push(m);
                }
            }
            Err(e) => {
                eprintln!("bench: one Envoy, round {}: {e}", round + 1);
                error = e;
            }
        }
    }
    scenarios
        .iter()
        .enumerate()
        .map(|(k, s)| {
            if samples[k].is_empty() {
                EdgeRow::failed(&s.name, &error)
            } else {
                EdgeRow::from_samples(&s.name, &verified[k], &samples[k])
            }
        })
        .collect()
}

/// One round of [`one_envoy`]: boots the Envoy with a listener per scenario, checks each as a
/// row's own Envoy is checked, measures each; what each listener's check said and its measure,
/// in scenario order.
async fn one_envoy_round(
    starter: &Starter<'_>,
    scenarios: &[Scenario],
    feed_port: u16,
    round: usize,
    hz: u64,
) -> Result<Vec<(String, EdgeMeasure)>, String> {
    let settings = starter.settings;
    let admin_port = free_port().map_err(|e| e.to_string())?;
    let mut listeners = Vec::new();
    for (k, s) in scenarios.iter().enumerate() {
        let port = free_port().map_err(|e| e.to_string())?;
        let wiring = Wiring {
            listen_port: port,
            admin_port,
            feed_port,
            check_port: 0,
            wasm: &settings.wasm,
            empty_wasm: &settings.empty_wasm,
        };
        let parts =
            auth_parts(&s.auth, starter.tokens(&s.auth), &wiring).map_err(|e| e.to_string())?;
        listeners.push((format!("side_{k}"), port, parts));
    }
    let config = bootstrap(admin_port, &listeners).map_err(|e| e.to_string())?;
    let offset = scenarios_for(settings).len() + 4;
    let modules = modules_dir(settings);
    let envoy = spawn_envoy(settings, "one", offset, 1, &config, Some(&modules))?;
    let log = settings.work_dir.join("envoy-one.log");
    let started = Instant::now();
    let mut texts = Vec::new();
    for (s, (_, port, _)) in scenarios.iter().zip(&listeners) {
        let probe = Probe::of(starter.tokens(&s.auth));
        let text = verify(
            starter.client,
            &s.auth,
            *port,
            Some(envoy.pid()),
            &probe,
            &log,
        )
        .await
        .map_err(|e| format!("{}: {e}", s.name))?;
        texts.push(text);
    }
    let ready = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: one Envoy, round {}: {} listeners ready {ready:.1} s after start",
        round + 1,
        scenarios.len()
    );
    let mut measured: Vec<Option<EdgeMeasure>> = vec![None; scenarios.len()];
    for k in round_order(scenarios.len(), round, settings.one_envoy_rounds) {
        let counter = format!("http.{}.downstream_rq_total", listeners[k].0);
        let tokens = starter.tokens(&scenarios[k].auth);
        let load = Load {
            pid: envoy.pid(),
            port: listeners[k].1,
            admin_port,
            counter: &counter,
            token: &tokens.valid,
            warmup_seconds: ONE_ENVOY_WARMUP_SECONDS,
            seconds: settings.one_envoy_seconds,
        };
        let m = measure(starter.client, settings, &load, None, hz)
            .await
            .map_err(|e| format!("{}: {e}", scenarios[k].name))?;
        eprintln!(
            "bench: one Envoy, round {}/{} {}: {:.1} µs/req",
            round + 1,
            settings.one_envoy_rounds,
            scenarios[k].name,
            m.cpu_us
        );
        measured[k] = Some(m);
    }
    Ok(texts
        .into_iter()
        .zip(measured)
        .filter_map(|(text, m)| Some((text, m?)))
        .collect())
}

/// The filter-memory results of a run, per build.
#[derive(Debug, Default)]
pub struct Memory {
    pub wasm: Option<MemoryResult>,
    pub native: Option<MemoryResult>,
}

/// Envoy's resident memory with the weauth filter (the wasm build, or the native one) and 0 or
/// 1 000 000 revocations, at one and at two workers (the two-worker Envoys are booted here,
/// after the measurements).
async fn memory(
    settings: &EdgeSettings,
    client: &reqwest::Client,
    booted: &[Booted],
    tokens: &TokenSet,
    feed_port: &dyn Fn(usize) -> Option<u16>,
    native: bool,
) -> Option<MemoryResult> {
    let auth_of = |revoked: usize| {
        if native {
            Auth::Native {
                revoked,
                forward: Forward::Identity,
            }
        } else {
            Auth::Weauth { revoked }
        }
    };
    let find = |revoked: usize| {
        booted
            .iter()
            .find(|b| b.scenario.auth == auth_of(revoked) && b.error.is_none())
    };
    // The largest set that loaded (1M, unless the filter could not take it).
    let zero = find(0)?;
    let million = booted
        .iter()
        .filter(|b| b.error.is_none())
        .filter_map(|b| match b.scenario.auth {
            Auth::Weauth { revoked } if revoked > 0 && !native => Some((revoked, b)),
            Auth::Native {
                revoked,
                forward: Forward::Identity,
            } if revoked > 0 && native => Some((revoked, b)),
            _ => None,
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, b)| b)?;
    let set_size = million.scenario.auth.revoked().unwrap_or(0);
    let rss = |b: &Booted| b.envoy.as_ref().and_then(|e| rss_kib(e.pid()).ok());
    let entries = admin_get(
        client,
        million.admin_port,
        "/stats?filter=revocation_entries",
    )
    .await
    .and_then(|t| {
        t.lines()
            .find(|l| l.contains("weauth.revocation_entries"))
            .and_then(|l| l.rsplit(": ").next())
            .and_then(|v| v.trim().parse().ok())
    });
    // What Envoy's allocator says it holds (tcmalloc, admin `/memory`): allocated (live) bytes
    // against the heap it keeps, for the log.
    for (b, what) in [(zero, "0"), (million, "the largest set")] {
        if let Some(text) = admin_get(client, b.admin_port, "/memory").await {
            eprintln!(
                "bench: {} with {what}: Envoy's allocator: {}",
                b.scenario.name,
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    let mut result = MemoryResult {
        set_size,
        entries_gauge: entries,
        rss_kib: [[rss(zero), rss(million)], [None, None]],
    };
    let base = scenarios_for(settings).len() + if native { 2 } else { 0 };
    for (k, b) in [zero, million].into_iter().enumerate() {
        let booted2 = boot(settings, base + k, 2, &b.scenario, tokens, feed_port, None);
        let Ok((envoy, listen_port, _admin_port)) = booted2 else {
            continue;
        };
        let probe = Probe::of(tokens);
        let log = settings.work_dir.join(format!("envoy-{}.log", base + k));
        if verify(
            client,
            &b.scenario.auth,
            listen_port,
            Some(envoy.pid()),
            &probe,
            &log,
        )
        .await
        .is_ok()
        {
            // Touch both workers: a burst of fresh connections spreads over them.
            let token = tokens.valid.clone();
            let _ = tokio::task::spawn_blocking(move || wrk(8, listen_port, &token, 1)).await;
            result.rss_kib[1][k] = rss_kib(envoy.pid()).ok();
        }
    }
    Some(result)
}

#[allow(clippy::too_many_arguments)]
fn boot(
    settings: &EdgeSettings,
    index: usize,
    concurrency: u32,
    scenario: &Scenario,
    tokens: &TokenSet,
    feed_port: &dyn Fn(usize) -> Option<u16>,
    check_port: Option<u16>,
) -> Result<(Owned, u16, u16), String> {
    let mut feed = 0;
    let wasm = match (&scenario.auth, &settings.compare_wasm) {
        (Auth::WeauthCompare { .. }, Some(other)) => other,
        _ => &settings.wasm,
    };
    let native = match (&scenario.auth, &settings.compare_native) {
        (Auth::NativeCompare { .. }, Some(other)) => other,
        (Auth::EmptyNative(_), _) => &settings.empty_native,
        _ => &settings.native,
    };
    match scenario.auth {
        Auth::Weauth { revoked } | Auth::WeauthCompare { revoked } => {
            if !wasm.is_file() {
                return Err(format!("not run: no filter module at {}", wasm.display()));
            }
            feed = feed_port(revoked).ok_or("not run: its feed did not start")?;
        }
        Auth::Native { revoked, .. } | Auth::NativeCompare { revoked } => {
            if !native.is_file() {
                return Err(format!(
                    "not run: no native module at {} (make native)",
                    native.display()
                ));
            }
            feed = feed_port(revoked).ok_or("not run: its feed did not start")?;
        }
        Auth::EmptyWasm(_) if !settings.empty_wasm.is_file() => {
            return Err(format!(
                "not run: no empty filter module at {}",
                settings.empty_wasm.display()
            ))
        }
        Auth::EmptyNative(_) if !native.is_file() => {
            return Err(format!(
                "not run: no empty native module at {}",
                native.display()
            ))
        }
        Auth::JwtAuthnExtAuthz { .. } if check_port.is_none() => {
            return Err("not run: weauth-revocation-check did not start".into())
        }
        _ => {}
    }
    let listen_port = free_port().map_err(|e| e.to_string())?;
    let admin_port = free_port().map_err(|e| e.to_string())?;
    let wiring = Wiring {
        listen_port,
        admin_port,
        feed_port: feed,
        check_port: check_port.unwrap_or(0),
        wasm,
        empty_wasm: &settings.empty_wasm,
    };
    let config = envoy_config(&scenario.auth, tokens, &wiring).map_err(|e| e.to_string())?;
    let modules = modules_dir(settings);
    let module_dir = match scenario.auth {
        Auth::Native { .. } | Auth::NativeCompare { .. } | Auth::EmptyNative(_) => {
            Some(modules.as_path())
        }
        _ => None,
    };
    let label = index.to_string();
    let envoy = spawn_envoy(settings, &label, index, concurrency, &config, module_dir)?;
    Ok((envoy, listen_port, admin_port))
}

/// Writes `config` as `envoy-<label>.yaml` in the run's folder and starts Envoy with it on core
/// 0 (its log `envoy-<label>.log`; `--base-id` the run's first plus `offset`), finding dynamic
/// modules in `module_dir`.
fn spawn_envoy(
    settings: &EdgeSettings,
    label: &str,
    offset: usize,
    concurrency: u32,
    config: &str,
    module_dir: Option<&Path>,
) -> Result<Owned, String> {
    let path = settings.work_dir.join(format!("envoy-{label}.yaml"));
    std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    let base_id = settings.base_id + u32::try_from(offset).unwrap_or(0);
    let args = vec![
        "-c".to_string(),
        path.display().to_string(),
        "--concurrency".into(),
        concurrency.to_string(),
        "--base-id".into(),
        base_id.to_string(),
        "--disable-hot-restart".into(),
        "-l".into(),
        "warning".into(),
    ];
    let log = settings.work_dir.join(format!("envoy-{label}.log"));
    let module_dir = module_dir
        .map(|dir| dir.display().to_string())
        .unwrap_or_default();
    let envs: Vec<(&str, &str)> = if module_dir.is_empty() {
        Vec::new()
    } else {
        vec![("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir.as_str())]
    };
    spawn_pinned("0", &settings.envoy, &args, &log, &envs)
        .map_err(|e| format!("cannot start {}: {e}", settings.envoy.display()))
}

/// The tokens a verification sends, owned so that it can run in its own task.
#[derive(Clone)]
struct Probe {
    valid: String,
    revoked: String,
    tampered: String,
}

impl Probe {
    fn of(t: &TokenSet) -> Probe {
        Probe {
            valid: t.valid.clone(),
            revoked: t.revoked.clone(),
            tampered: t.tampered.clone(),
        }
    }
}

/// Feed failures in a row after which a configuration is given up.
const FEED_FAILURES_GIVE_UP: usize = 3;

/// How many times the filter logged a failed or crashed feed fetch in an Envoy log, and the
/// last such message (`None` when it logged none).
pub fn feed_failures(log: &str) -> Option<(usize, String)> {
    let hits: Vec<&str> = log
        .lines()
        .filter(|l| {
            (l.contains("revocation poll") && l.contains("failed"))
                || l.contains("proxy_on_http_call_response failed")
                || l.contains("buffer size limit for async client response body")
        })
        .collect();
    let last = hits.last()?;
    let message = last
        .split("] ")
        .last()
        .unwrap_or(last)
        .trim()
        .replace('|', "/");
    Some((hits.len(), message))
}

/// How long a configuration may take to serve: a 1M-entry set takes a while to load.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits for the configuration to serve a valid token (and, where a revocation set exists, to
/// refuse the revoked one), then checks that it refuses a tampered token.
async fn verify(
    client: &reqwest::Client,
    auth: &Auth,
    port: u16,
    pid: Option<u32>,
    tokens: &Probe,
    log: &Path,
) -> Result<String, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let must_refuse_revoked = auth.revoked().unwrap_or(0) > 0;
    loop {
        // A feed that keeps failing will not start working: stop waiting, say why.
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some((failures, last)) = feed_failures(&text) {
            if failures >= FEED_FAILURES_GIVE_UP {
                return Err(format!(
                    "the filter's feed fetch failed {failures} times; last: {last}"
                ));
            }
        }
        if let Some(pid) = pid {
            if !alive(pid) {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
                return Err(format!(
                    "Envoy exited during start: {}",
                    last.trim().replace('|', "/")
                ));
            }
        }
        let valid = status(client, port, &tokens.valid).await;
        let revoked = if must_refuse_revoked {
            status(client, port, &tokens.revoked).await
        } else {
            0
        };
        let ready = valid == 200 && (!must_refuse_revoked || (revoked != 200 && revoked != 0));
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not ready in {} s: valid token → {valid}, revoked token → {revoked} (see bench-results/run/)",
                READY_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let tampered = status(client, port, &tokens.tampered).await;
    let mut text = Vec::new();
    if auth.authenticates() {
        if tampered == 200 || tampered == 0 {
            return Err(format!(
                "a tampered token was answered {tampered}: not measured"
            ));
        }
        text.push(format!("tampered → {tampered}"));
    } else {
        text.push(format!("no auth (tampered → {tampered})"));
    }
    if must_refuse_revoked {
        let revoked = status(client, port, &tokens.revoked).await;
        text.push(format!("revoked → {revoked}"));
    }
    Ok(text.join(", "))
}

fn wrk(connections: u32, port: u16, token: &str, seconds: u64) -> Result<String, String> {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://127.0.0.1:{port}/bench"))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What one measurement loads: a listener of an Envoy, with the token its load sends.
struct Load<'a> {
    pid: u32,
    port: u16,
    admin_port: u16,
    /// The listener's request counter (`http.<stat prefix>.downstream_rq_total`).
    counter: &'a str,
    token: &'a str,
    /// Seconds of load before the measurement, and measured.
    warmup_seconds: u64,
    seconds: u64,
}

impl Booted {
    /// The load of a row on its own Envoy.
    fn load(&self, settings: &EdgeSettings) -> Result<Load<'_>, String> {
        Ok(Load {
            pid: self.envoy.as_ref().map(|e| e.pid()).ok_or("no Envoy")?,
            port: self.listen_port,
            admin_port: self.admin_port,
            counter: RQ_COUNTER,
            token: &self.token,
            warmup_seconds: settings.warmup_seconds,
            seconds: settings.seconds,
        })
    }
}

async fn measure(
    client: &reqwest::Client,
    settings: &EdgeSettings,
    load: &Load<'_>,
    check_pid: Option<u32>,
    hz: u64,
) -> Result<EdgeMeasure, String> {
    let pid = load.pid;
    if load.warmup_seconds > 0 {
        let (port, token) = (load.port, load.token.to_string());
        let secs = load.warmup_seconds;
        let conns = settings.connections;
        tokio::task::spawn_blocking(move || wrk(conns, port, &token, secs))
            .await
            .map_err(|e| e.to_string())??;
    }
    let counter = |text: Option<String>| -> Result<u64, String> {
        envoy_stat(&text.ok_or("admin /stats unreachable")?, load.counter)
            .map_err(|e| e.to_string())
    };
    let rq0 =
        counter(admin_get(client, load.admin_port, "/stats?filter=downstream_rq_total").await)?;
    let t0 = cpu_ticks(pid).map_err(|e| e.to_string())?;
    let c0 = check_pid
        .map(cpu_ticks)
        .transpose()
        .map_err(|e| e.to_string())?;
    let (port, token, secs) = (load.port, load.token.to_string(), load.seconds);
    let conns = settings.connections;
    let out = tokio::task::spawn_blocking(move || wrk(conns, port, &token, secs))
        .await
        .map_err(|e| e.to_string())??;
    let t1 = cpu_ticks(pid).map_err(|e| e.to_string())?;
    let c1 = check_pid
        .map(cpu_ticks)
        .transpose()
        .map_err(|e| e.to_string())?;
    let rq1 =
        counter(admin_get(client, load.admin_port, "/stats?filter=downstream_rq_total").await)?;
    let report = wrk_report(&out).map_err(|e| e.to_string())?;
    let requests = rq1.saturating_sub(rq0);
    let cpu_us = cpu_us_per_request(t1.saturating_sub(t0), hz, requests)
        .ok_or("Envoy counted no request")?;
    let ext_cpu_us = match (c0, c1) {
        (Some(a), Some(b)) => cpu_us_per_request(b.saturating_sub(a), hz, requests),
        _ => None,
    };
    Ok(EdgeMeasure {
        rps: report.requests_per_sec,
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        cpu_us,
        ext_cpu_us,
        non_2xx: report.non_2xx + report.socket_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wiring(wasm: &Path) -> Wiring<'_> {
        Wiring {
            listen_port: 20001,
            admin_port: 20002,
            feed_port: 20003,
            check_port: 20004,
            wasm,
            empty_wasm: Path::new("/x/empty.wasm"),
        }
    }

    #[test]
    fn envoy_config_every_scenario_renders() {
        let tokens = token_set(Algorithm::EdDSA, 1_700_000_000, 60).unwrap();
        let wasm = PathBuf::from("/x/weauth_filter.wasm");
        for s in scenarios() {
            let text = envoy_config(&s.auth, &tokens, &wiring(&wasm)).unwrap();
            assert!(text.contains("port_value: 20001"), "{}", s.name);
            let has = |needle: &str| text.contains(needle);
            match s.auth {
                Auth::None => assert!(!has("jwt_authn") && !has("wasm")),
                Auth::EmptyWasm(calls) => {
                    assert!(has("/x/empty.wasm") && !has("weauth_filter.wasm"));
                    assert!(!has("jwt_authn") && !has(FEED_CREDENTIAL));
                    assert!(
                        has(&format!("value: '{}'", calls.plugin_config())),
                        "{}",
                        s.name
                    );
                }
                Auth::JwtAuthn { cache, edits, .. } => {
                    assert!(has("jwt_authn.v3.JwtAuthentication"));
                    assert_eq!(has("jwt_cache_config"), cache, "{}", s.name);
                    assert_eq!(has(" forward: false\n"), edits, "{}", s.name);
                    assert_eq!(has(" forward: true\n"), !edits, "{}", s.name);
                    assert_eq!(has(" claim_to_headers:\n"), edits, "{}", s.name);
                    assert_eq!(
                        has("- { header_name: x-weauth-openid, claim_name: openid }\n"),
                        edits,
                        "{}",
                        s.name
                    );
                    assert_eq!(has(" clear_route_cache: true\n"), edits, "{}", s.name);
                }
                Auth::JwtAuthnExtAuthz { .. } => {
                    assert!(has("ext_authz.v3.ExtAuthz") && has("port_value: 20004"));
                    assert!(has("        forward_payload_header: x-jwt-payload"));
                }
                Auth::Weauth { .. } | Auth::WeauthCompare { .. } => {
                    assert!(has("/x/weauth_filter.wasm") && has("port_value: 20003"));
                    assert!(has(FEED_CREDENTIAL));
                }
                Auth::EmptyNative(calls) => {
                    assert!(has("dynamic_module_config: { name: weauth_empty_filter }"));
                    assert!(has(&format!("value: '{}'", calls.filter_config())));
                    assert!(!has(FEED_CREDENTIAL) && !has("wasm"), "{}", s.name);
                }
                Auth::Native { .. } | Auth::NativeCompare { .. } => {
                    assert!(has("dynamic_modules.v3.DynamicModuleFilter"));
                    assert!(has("dynamic_module_config: { name: weauth_filter }"));
                    assert!(!has("weauth_filter.wasm"));
                    assert!(has(FEED_CREDENTIAL) && has("port_value: 20003"));
                    let token = matches!(
                        s.auth,
                        Auth::Native {
                            forward: Forward::Token,
                            ..
                        }
                    );
                    assert_eq!(has("\"forward_authorization\":true"), token, "{}", s.name);
                    assert_eq!(has("x-weauth-sub"), !token, "{}", s.name);
                }
            }
        }
    }

    #[test]
    fn bootstrap_listeners_side_by_side_share_one_cluster() {
        let tokens = token_set(Algorithm::EdDSA, 1_700_000_000, 60).unwrap();
        let wasm = PathBuf::from("/x/weauth_filter.wasm");
        let settings = settings(Vec::new());
        let listeners: Vec<_> = one_envoy_scenarios(&settings)
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let parts = auth_parts(&s.auth, &tokens, &wiring(&wasm)).unwrap();
                (format!("side_{k}"), 30000 + k as u16, parts)
            })
            .collect();
        assert_eq!(listeners.len(), 7);
        let text = bootstrap(20002, &listeners).unwrap();
        for k in 0..7 {
            assert!(text.contains(&format!("    - name: side_{k}\n")), "{text}");
            assert!(text.contains(&format!("                stat_prefix: side_{k}\n")));
            assert!(text.contains(&format!("port_value: {} }}", 30000 + k)));
        }
        // The comparison build under its own module name.
        let compare = auth_parts(&native_compare().auth, &tokens, &wiring(&wasm)).unwrap();
        assert!(compare
            .filters
            .contains("dynamic_module_config: { name: weauth_filter_compare }"));
        // Two native listeners, one feed cluster.
        assert_eq!(
            text.matches("    - name: weauth_feed\n").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("name: weauth_empty_filter }").count(), 2);
        assert_eq!(text.matches("name: weauth_filter }").count(), 2);
        assert_eq!(text.matches("jwt_authn.v3.JwtAuthentication").count(), 2);
    }

    fn settings(rows: Vec<String>) -> EdgeSettings {
        EdgeSettings {
            envoy: PathBuf::new(),
            wasm: PathBuf::new(),
            native: PathBuf::new(),
            empty_wasm: PathBuf::new(),
            empty_native: PathBuf::new(),
            compare_wasm: None,
            compare_native: None,
            revocation_check: PathBuf::new(),
            work_dir: PathBuf::new(),
            rounds: 1,
            seconds: 1,
            warmup_seconds: 0,
            connections: 1,
            base_id: 0,
            rows,
            one_envoy_rounds: 1,
            one_envoy_seconds: 1,
        }
    }

    #[test]
    fn gather_modules_copies_each_build_under_its_module_name() {
        let dir = std::env::temp_dir().join(format!("weauth-bench-modules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let build = |name: &str| {
            let path = dir.join(name);
            std::fs::write(&path, name).unwrap();
            path
        };
        let mut settings = settings(Vec::new());
        settings.work_dir = dir.join("run");
        settings.native = build("native.so");
        settings.empty_native = build("empty.so");
        settings.compare_native = Some(build("before.so"));
        gather_modules(&settings).unwrap();
        let modules = modules_dir(&settings);
        let read =
            |module: &str| std::fs::read_to_string(modules.join(format!("lib{module}.so"))).ok();
        assert_eq!(read(NATIVE_MODULE).as_deref(), Some("native.so"));
        assert_eq!(read(EMPTY_MODULE).as_deref(), Some("empty.so"));
        assert_eq!(read(COMPARE_MODULE).as_deref(), Some("before.so"));
        // A later run without a comparison build leaves none behind.
        settings.compare_native = None;
        gather_modules(&settings).unwrap();
        assert_eq!(read(COMPARE_MODULE), None);
        assert_eq!(read(NATIVE_MODULE).as_deref(), Some("native.so"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_envoy_rows_are_the_native_targets_and_follow_rows() {
        let names: Vec<String> = one_envoy_scenarios(&settings(Vec::new()))
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            [
                "no auth",
                "empty native module",
                "empty native module + weauth's reads and counters",
                "jwt_authn ES256, cache on",
                "jwt_authn ES256 (cache on) + weauth's header edits",
                "weauth native EdDSA (cache), 1M revoked",
                "weauth native EdDSA (cache) doing plain jwt_authn's job, 1M revoked",
            ]
        );
        // A comparison build sits in the same Envoy, beside the native build.
        let mut with_compare = settings(Vec::new());
        with_compare.compare_native = Some(PathBuf::from("/x/before/libweauth_filter.so"));
        let rows = one_envoy_scenarios(&with_compare);
        assert_eq!(rows.last().map(|s| &s.auth), Some(&native_compare().auth));
        let kept = one_envoy_scenarios(&settings(vec!["plain".into()]));
        let kept: Vec<&str> = kept.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            kept,
            [
                "no auth",
                "weauth native EdDSA (cache) doing plain jwt_authn's job, 1M revoked"
            ]
        );
    }

    #[test]
    fn scenarios_start_with_baseline_and_cover_issue_rows() {
        let all = scenarios();
        assert_eq!(all[0].auth, Auth::None);
        assert!(all
            .iter()
            .any(|s| s.auth == Auth::EmptyWasm(EmptyCalls::None)));
        let weauth: Vec<_> = all
            .iter()
            .filter_map(|s| match s.auth {
                Auth::Weauth { revoked } => Some(revoked),
                _ => None,
            })
            .collect();
        assert_eq!(weauth, vec![0, 10_000, 100_000, 1_000_000]);
    }

    #[test]
    fn feed_failures_counts_and_keeps_last_message() {
        let log = "[t][1][warning][wasm] [context.cc:1154] wasm log weauth weauth: weauth[1] revocation poll to cluster weauth_feed failed: unreadable body\n\
            [t][1][info][main] started\n\
            [t][1][warning][http] [async_client_impl.cc:430] the buffer size limit for async client response body has been exceeded, draining data\n";
        let (n, last) = feed_failures(log).unwrap();
        assert_eq!(n, 2);
        assert!(last.starts_with("the buffer size limit"), "{last}");
        assert_eq!(feed_failures("[t] all good\n"), None);
    }

    #[test]
    fn round_order_rotates_and_covers_every_row() {
        assert_eq!(round_order(4, 0, 2), vec![0, 1, 2, 3]);
        assert_eq!(round_order(4, 1, 2), vec![2, 3, 0, 1]);
        let mut r = round_order(9, 2, 5);
        r.sort_unstable();
        assert_eq!(r, (0..9).collect::<Vec<_>>());
        assert!(round_order(0, 0, 1).is_empty());
    }

    #[test]
    fn plugin_config_inlines_jwks() {
        let text = plugin_config(r#"{"keys":[{"kty":"OKP"}]}"#, Forward::Identity).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["jwks"]["inline"]["keys"][0]["kty"], "OKP");
        assert_eq!(v["claim_to_headers"][1]["header"], "x-weauth-openid");
        assert!(
            v.get("forward_authorization").is_none(),
            "the default: false"
        );
        assert!(!text.contains('\''));
    }

    #[test]
    fn plugin_config_forwarding_the_token_edits_nothing() {
        let text = plugin_config(r#"{"keys":[]}"#, Forward::Token).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["claim_to_headers"], serde_json::json!([]));
        assert_eq!(v["forward_authorization"], true);
        assert_eq!(
            v["revocation"]["cluster"], "weauth_feed",
            "revocation stays on"
        );
    }
}
