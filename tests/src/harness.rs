//! Boots the whole weauth stack for end-to-end tests and for `make up`.
//!
//! [`StackBuilder::start`] runs, on loopback:
//! - the mock WeChat and the demo upstream in-process (they live as long as the [`Stack`]);
//! - the issuer as a child process (`WEAUTH_ISSUER_BIN`, default `weauth-issuer` in the cargo
//!   output directory of the running binary — `target/<triple>/debug/` for a test built with
//!   `--target`, as `make test` builds them — else `$CARGO_TARGET_DIR/debug/weauth-issuer` or
//!   `<workspace>/target/debug/weauth-issuer`),
//!   configured through `WEAUTH_*` variables (inherited `WEAUTH_*` variables are removed first,
//!   so a developer's shell cannot leak into a test), with a SQLite store in the stack's
//!   directory;
//! - Envoy as a child process (`WEAUTH_ENVOY_BIN`, default `<workspace>/.tools/bin/envoy`) with
//!   the bootstrap rendered from `envoy/envoy.yaml` and the filter module from
//!   `WEAUTH_FILTER_WASM` (default `<target>/wasm32-wasip1/wasm-release/weauth_filter.wasm`),
//!   `--concurrency N` (default 1) and `--disable-hot-restart`, so several Envoys can run at
//!   once. With `WEAUTH_FILTER_BUILD=native` the filter is the native build instead
//!   (`WEAUTH_FILTER_NATIVE`, default `<target>/native/libweauth_filter.so`, loaded as an
//!   Envoy dynamic module with the same configuration): every filter test runs against either
//!   build unchanged (`make test` runs them against both).
//!
//! Each process must answer before `start` returns: the issuer's `/healthz`, Envoy's admin
//! `/ready` and then `/healthz` through Envoy's listener (which proves the filter accepted its
//! configuration: with `fail_open: false` a refused configuration answers 5xx), and finally
//! until the filter in every worker holds the issuer's keys and the revocation list: a token
//! of the probe user ([`PROBE_USER`], logged in directly at the issuer before Envoy starts;
//! the mock's counters are reset afterwards) must pass on `/api/__weauth_ready` on
//! `2 × concurrency` fresh connections in a row. A missing
//! binary is an error naming the file and the make target that builds it; a process that dies
//! or never becomes ready is an error carrying the tail of its log.
//!
//! By default the stack uses free ports and a fresh directory under the system temp dir
//! (removed on drop unless `WEAUTH_KEEP_TMP` is set). Every child process is killed when the
//! [`Stack`] is dropped, also when a test panics; then the tails of the issuer's and Envoy's
//! logs are printed to stderr so the failure can be understood from the test output alone.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::mock_wechat::{MockApp, MockAppKind, MockConfig, MockWechat};
use crate::template::{self, EnvoyPorts, TemplateError};
use crate::upstream::Upstream;

/// How long a process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped process may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of log printed when something fails.
const TAIL_LINES: usize = 40;
/// A token-shaped string no key verifies: the fallback readiness probe sends it to see the
/// filter answer 401 (keys loaded, token refused) rather than 503 (keys not loaded yet).
const JUNK_TOKEN: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCJ9.e30.AAAA";
/// The mock WeChat user the readiness probe logs in as.
pub const PROBE_USER: &str = "weauth-harness-probe";

/// Why the stack could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary or module the stack needs does not exist.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    /// Local I/O (temp dir, log file, port, spawn) failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The Envoy or plugin configuration template could not be rendered.
    #[error("rendering the Envoy configuration: {0}")]
    Template(#[from] TemplateError),
    /// A process exited while starting.
    #[error("{name} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    Exited {
        name: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    /// A process did not become ready in time.
    #[error("{name} not ready after {waited:?} ({detail}); last lines of {log}:\n{tail}")]
    NotReady {
        name: &'static str,
        waited: Duration,
        detail: String,
        log: PathBuf,
        tail: String,
    },
    /// An HTTP exchange with the stack did not go as expected.
    #[error("{what}: {detail}")]
    Http { what: String, detail: String },
    /// A real server (Redis, Sentinel) could not be started.
    #[error(transparent)]
    Server(#[from] weauth_servers::ServerError),
}

pub use weauth_servers::{free_port, tail_file, tail_lines, temp_dir};

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the binaries and the filter module are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `WEAUTH_ISSUER_BIN`.
    pub issuer: PathBuf,
    /// `WEAUTH_ENVOY_BIN`.
    pub envoy: PathBuf,
    /// `WEAUTH_FILTER_WASM`.
    pub wasm: PathBuf,
    /// `WEAUTH_FILTER_NATIVE`: the native build (`make native`).
    pub native: PathBuf,
}

impl Binaries {
    /// From the environment, with the defaults described in the module docs.
    pub fn from_env() -> Binaries {
        let get = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| output_dir_of(&exe));
        let binaries = Binaries::resolve(
            &workspace_root(),
            get("CARGO_TARGET_DIR").map(PathBuf::from),
            beside,
            get("WEAUTH_ISSUER_BIN").map(PathBuf::from),
            get("WEAUTH_ENVOY_BIN").map(PathBuf::from),
            get("WEAUTH_FILTER_WASM").map(PathBuf::from),
        );
        let mut binaries = binaries;
        if let Some(native) = get("WEAUTH_FILTER_NATIVE").map(PathBuf::from) {
            binaries.native = if native.is_absolute() {
                native
            } else {
                workspace_root().join(native)
            };
        }
        binaries
    }

    /// The defaults applied to explicit settings (pure; see [`Binaries::from_env`]). `beside`:
    /// the cargo output directory of the running binary ([`output_dir_of`]), where the issuer
    /// built with it is.
    pub fn resolve(
        root: &Path,
        target_dir: Option<PathBuf>,
        beside: Option<PathBuf>,
        issuer: Option<PathBuf>,
        envoy: Option<PathBuf>,
        wasm: Option<PathBuf>,
    ) -> Binaries {
        let target = match target_dir {
            Some(t) if t.is_absolute() => t,
            Some(t) => root.join(t),
            None => root.join("target"),
        };
        let abs = |p: PathBuf| if p.is_absolute() { p } else { root.join(p) };
        Binaries {
            issuer: issuer.map(abs).unwrap_or_else(|| {
                beside
                    .unwrap_or_else(|| target.join("debug"))
                    .join("weauth-issuer")
            }),
            envoy: envoy
                .map(abs)
                .unwrap_or_else(|| root.join(".tools/bin/envoy")),
            wasm: wasm
                .map(abs)
                .unwrap_or_else(|| target.join("wasm32-wasip1/wasm-release/weauth_filter.wasm")),
            native: target.join("native/libweauth_filter.so"),
        }
    }

    /// Fails, naming the file and how to build it, when one is missing.
    pub fn check(&self, with_envoy: bool) -> Result<(), HarnessError> {
        self.check_edge(with_envoy, Edge::WeauthFilter)
    }

    /// [`Binaries::check`] for the filter build the stack runs.
    pub fn check_edge(&self, with_envoy: bool, edge: Edge) -> Result<(), HarnessError> {
        if with_envoy && edge == Edge::WeauthNative && !self.native.is_file() {
            return Err(HarnessError::Missing {
                what: "native filter module",
                path: self.native.clone(),
                hint: "run `make native`, or set WEAUTH_FILTER_NATIVE",
            });
        }
        if !self.issuer.is_file() {
            return Err(HarnessError::Missing {
                what: "weauth-issuer binary",
                path: self.issuer.clone(),
                hint: "run `make build` (it builds for x86_64-unknown-linux-musl) or `cargo build \
                       -p weauth-issuer` with the target of this binary, or set WEAUTH_ISSUER_BIN",
            });
        }
        if with_envoy && !self.envoy.is_file() {
            return Err(HarnessError::Missing {
                what: "envoy binary",
                path: self.envoy.clone(),
                hint: "run `make setup` (installs Envoy into .tools/), or set WEAUTH_ENVOY_BIN",
            });
        }
        if with_envoy && edge == Edge::WeauthFilter && !self.wasm.is_file() {
            return Err(HarnessError::Missing {
                what: "filter module",
                path: self.wasm.clone(),
                hint: "run `make build` (or `cargo build -p weauth-filter --target wasm32-wasip1 \
                       --profile wasm-release`), or set WEAUTH_FILTER_WASM",
            });
        }
        Ok(())
    }
}

/// The cargo output directory (`target/[<triple>/]<profile>/`) of a binary cargo built: its
/// own directory, or for a test binary (in `deps/`) that directory's parent.
pub fn output_dir_of(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    Some(if dir.file_name() == Some(std::ffi::OsStr::new("deps")) {
        dir.parent()?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// A directory under the system temp dir, removed on drop.
pub type TempDir = tempfile::TempDir;

/// Where the stack lives: a temp dir (tests) or a fixed directory (`make up`).
#[derive(Debug)]
enum RunDir {
    Temp(TempDir),
    Fixed(PathBuf),
}

impl RunDir {
    fn path(&self) -> &Path {
        match self {
            RunDir::Temp(t) => t.path(),
            RunDir::Fixed(p) => p,
        }
    }
}

/// Ports of every part of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackPorts {
    /// Envoy's public listener.
    pub envoy: u16,
    /// Envoy's internal listener: the admin API and the revocation feed only.
    pub internal: u16,
    /// Envoy admin.
    pub admin: u16,
    /// weauth-issuer.
    pub issuer: u16,
    /// Demo upstream.
    pub upstream: u16,
    /// Mock WeChat.
    pub mock: u16,
}

impl StackPorts {
    /// The `make up` ports of DESIGN.md.
    pub const LOCAL: StackPorts = StackPorts {
        envoy: 10000,
        internal: 10001,
        admin: 9901,
        issuer: 8080,
        upstream: 8081,
        mock: 8090,
    };
}

/// The value of counter or gauge `name` in Envoy's text `/stats`.
pub fn stat_value(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (k, v) = line.split_once(": ")?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A random `WEAUTH_DATA_KEY` (base64 of 32 bytes), shared by a stack's replicas.
fn random_data_key() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The shared store's data key: random per stack, but kept in a fixed run directory
/// (`make up`: `.run/data-key`), whose Redis and MariaDB data outlive the stack — a new key at
/// each `make up STORE=redis|mysql` could not open the signing key the last one stored, and
/// the issuer refused to start.
fn data_key_in(dir: &RunDir) -> Result<String, HarnessError> {
    let RunDir::Fixed(dir) = dir else {
        return Ok(random_data_key());
    };
    let path = dir.join("data-key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_string()),
        _ => {
            let key = random_data_key();
            std::fs::write(&path, format!("{key}\n"))
                .map_err(io_err(format!("writing {}", path.display())))?;
            Ok(key)
        }
    }
}

fn random_secret(prefix: &str) -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}-{tail}")
}

/// Sends SIGTERM to `pid` (through `kill(1)`, to keep this crate free of `unsafe`).
fn sigterm(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A child process whose output goes to a log file; killed on drop.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Proc, HarnessError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(format!("opening {}", log.display())))?;
        let err_file: File = file
            .try_clone()
            .map_err(io_err(format!("opening {}", log.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err_file))
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(io_err(format!("starting {name}")))?;
        Ok(Proc {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status when known.
    async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        if let Some(pid) = self.pid() {
            sigterm(pid);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                self.child.wait().await.ok()
            }
        }
    }

    fn tail(&self) -> String {
        tail_file(&self.log, TAIL_LINES)
    }

    fn exited_error(&self, status: ExitStatus) -> HarnessError {
        HarnessError::Exited {
            name: self.name,
            status: status.to_string(),
            log: self.log.clone(),
            tail: self.tail(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Polls `url` until it answers `200`, the process exits, or [`READY_TIMEOUT`] passes.
async fn wait_ready(
    client: &reqwest::Client,
    proc: &mut Proc,
    url: &str,
) -> Result<(), HarnessError> {
    let start = Instant::now();
    loop {
        if let Some(status) = proc.exited() {
            return Err(proc.exited_error(status));
        }
        let last = match client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status() == 200 => return Ok(()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                format!(
                    "GET {url} → {status} {}",
                    body.chars().take(200).collect::<String>()
                )
            }
            Err(e) => format!("GET {url}: {e}"),
        };
        if start.elapsed() > READY_TIMEOUT {
            return Err(HarnessError::NotReady {
                name: proc.name,
                waited: start.elapsed(),
                detail: last,
                log: proc.log.clone(),
                tail: proc.tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True when the probe token's `exp` has passed (it can no longer show the filter ready).
fn probe_expired(token: &str) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    peek_claims(token).is_some_and(|c| c.exp <= now)
}

/// The claims of a JWT, decoded WITHOUT verification (for test assertions only).
pub fn peek_claims(token: &str) -> Option<weauth_token::Claims> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&weauth_token::b64::decode(payload).ok()?).ok()
}

/// The JOSE header of a JWT, decoded WITHOUT verification (for test assertions only).
pub fn peek_header(token: &str) -> Option<weauth_token::Header> {
    let header = token.split('.').next()?;
    serde_json::from_slice(&weauth_token::b64::decode(header).ok()?).ok()
}

/// A token response (RFC 6749 §5.1 names).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds.
    pub expires_in: u64,
    /// Opaque, single use.
    pub refresh_token: String,
    /// Seconds.
    pub refresh_expires_in: u64,
}

/// The apps file of a [`StackBuilder::web_login`] stack: the mock's mini-program and web apps,
/// the web apps redirecting to the demo page behind Envoy on `envoy_port`.
pub fn web_apps_file(mock: &MockConfig, envoy_port: u16) -> Value {
    let mut apps = vec![serde_json::json!({
        "appid": mock.appid, "secret": mock.secret, "kind": "miniprogram"
    })];
    for app in &mock.web_apps {
        let kind = match app.kind {
            MockAppKind::OfficialAccount => "official_account",
            MockAppKind::Website => "website",
        };
        apps.push(serde_json::json!({
            "appid": app.appid, "secret": app.secret, "kind": kind,
            "redirect_uris": [
                format!("http://127.0.0.1:{envoy_port}/demo/"),
                format!("http://localhost:{envoy_port}/demo/"),
            ],
        }));
    }
    serde_json::json!({ "apps": apps })
}

/// Options for [`Stack`]; start with [`Stack::builder`].
#[derive(Debug, Clone)]
pub struct StackBuilder {
    concurrency: u32,
    plugin_patches: Vec<Value>,
    issuer_env: Vec<(String, String)>,
    mock: MockConfig,
    ports: Option<StackPorts>,
    run_dir: Option<PathBuf>,
    feed_token: Option<String>,
    admin_token: Option<String>,
    audience: String,
    with_envoy: bool,
    edge: Edge,
    binaries: Option<Binaries>,
    redis_replicas: usize,
    mysql_replicas: usize,
    sentinel: bool,
    cluster: bool,
    web_login: bool,
    envoy_feed_env: bool,
    path_normalization: bool,
    upstream_normalizes: bool,
    routes_first: Vec<Value>,
    listeners_from_file: bool,
}

/// What checks tokens in the stack's Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Edge {
    /// The weauth wasm filter (`envoy/envoy.yaml`).
    #[default]
    WeauthFilter,
    /// Envoy's own jwt_authn against the issuer's JWKS (`envoy/jwt-authn.yaml`), no wasm.
    JwtAuthn,
    /// The weauth filter's native build as an Envoy dynamic module (`envoy/envoy.yaml` with
    /// the filter block turned by [`template::native_filter`]).
    WeauthNative,
}

impl Edge {
    /// The weauth filter build named by `WEAUTH_FILTER_BUILD` (`native`, or `wasm`, the
    /// default): what a stack gets unless a test asks for another edge.
    pub fn from_env() -> Edge {
        match std::env::var("WEAUTH_FILTER_BUILD").as_deref() {
            Ok("native") => Edge::WeauthNative,
            _ => Edge::WeauthFilter,
        }
    }

    /// Whether the weauth filter (either build) is the edge.
    pub fn is_weauth(self) -> bool {
        matches!(self, Edge::WeauthFilter | Edge::WeauthNative)
    }

    /// The full Envoy stat name of the weauth filter's `weauth.<name>` in this build.
    pub fn stat(self, name: &str) -> String {
        match self {
            Edge::WeauthNative => format!("{NATIVE_STATS_PREFIX}weauth.{name}"),
            _ => format!("wasmcustom.weauth.{name}"),
        }
    }
}

/// The prefix of a dynamic module's stats in /stats (its default `metrics_namespace`), as
/// `wasmcustom.` is the wasm build's; Prometheus strips both ([`template::NATIVE_RUNTIME`]).
pub const NATIVE_STATS_PREFIX: &str = "dynamicmodulescustom.";

impl Default for StackBuilder {
    fn default() -> StackBuilder {
        StackBuilder {
            concurrency: 1,
            plugin_patches: Vec::new(),
            issuer_env: Vec::new(),
            mock: MockConfig::default(),
            ports: None,
            run_dir: None,
            feed_token: None,
            admin_token: None,
            audience: "weauth".into(),
            with_envoy: true,
            edge: Edge::from_env(),
            binaries: None,
            redis_replicas: 0,
            mysql_replicas: 0,
            sentinel: false,
            cluster: false,
            web_login: false,
            envoy_feed_env: true,
            path_normalization: true,
            upstream_normalizes: false,
            routes_first: Vec::new(),
            listeners_from_file: false,
        }
    }
}

impl StackBuilder {
    /// Runs `n` issuer replicas (n >= 1) on one real `redis-server` (started in the stack's
    /// directory on a free port, AOF `appendfsync always`) instead of SQLite, all of them
    /// endpoints of Envoy's issuer cluster. Replica 0 is "the issuer" of the other methods.
    pub fn redis_replicas(mut self, n: usize) -> Self {
        self.redis_replicas = n.max(1);
        self
    }

    /// Runs `n` issuer replicas (n >= 1) on one real MariaDB (`mariadbd` with its data in the
    /// stack's directory, on a free port, database `weauth`) instead of SQLite, all of them
    /// endpoints of Envoy's issuer cluster.
    pub fn mysql_replicas(mut self, n: usize) -> Self {
        self.mysql_replicas = n.max(1);
        self
    }

    /// With `redis_replicas`: a primary, a replica and three sentinels instead of one
    /// `redis-server`; the issuers use `redis+sentinel://` (and `WAIT` for the replica).
    pub fn redis_sentinel(mut self) -> Self {
        self.sentinel = true;
        self.redis_replicas = self.redis_replicas.max(1);
        self
    }

    /// With `redis_replicas`: a 6-node Redis Cluster (3 primaries, 3 replicas) instead of one
    /// `redis-server`; the issuers use `redis+cluster://` (and `WAIT` for the slot primary's
    /// replica).
    pub fn redis_cluster(mut self) -> Self {
        self.cluster = true;
        self.redis_replicas = self.redis_replicas.max(1);
        self
    }

    /// Envoy worker threads (`--concurrency`), default 1.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// An RFC 7386 merge patch applied to the default plugin configuration
    /// (`envoy/plugin-config.json`); `null` members remove defaults. Several patches apply in
    /// the order given.
    pub fn plugin_config_patch(mut self, patch: Value) -> Self {
        self.plugin_patches.push(patch);
        self
    }

    /// An extra (or overriding) environment variable for the issuer.
    pub fn issuer_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.issuer_env.push((name.into(), value.into()));
        self
    }

    /// The mock WeChat's configuration (its `listen` is overridden by fixed ports).
    pub fn mock_config(mut self, cfg: MockConfig) -> Self {
        self.mock = cfg;
        self
    }

    /// Fixed ports instead of free ones (`make up`).
    pub fn ports(mut self, ports: StackPorts) -> Self {
        self.ports = Some(ports);
        self
    }

    /// A fixed directory for the database, logs and rendered config, kept after the stack
    /// stops (`make up`), instead of a temp dir.
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = Some(dir.into());
        self
    }

    /// The revocation feed credential (default: random per stack).
    pub fn feed_token(mut self, token: impl Into<String>) -> Self {
        self.feed_token = Some(token.into());
        self
    }

    /// The admin credential (default: random per stack).
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// Do not start Envoy (issuer-only scenarios); the envoy URLs then point nowhere.
    pub fn without_envoy(mut self) -> Self {
        self.with_envoy = false;
        self
    }

    /// What checks tokens in Envoy (default: the weauth filter).
    pub fn edge(mut self, edge: Edge) -> Self {
        self.edge = edge;
        self
    }

    /// Several apps and web login: the mock gets the official account and the website of
    /// [`MockApp`] (and answers `unionid`, as apps bound to one Open Platform account do), and
    /// the issuer gets an apps file (`WEAUTH_APPS_FILE` instead of the one-app variables) with
    /// the mini-program, the official account and the website, whose `redirect_uris` are the
    /// demo page behind this stack's Envoy (`http://127.0.0.1:PORT/demo/` and the same on
    /// `localhost`), plus `WEAUTH_WECHAT_OPEN_BASE` = the mock and `WEAUTH_COOKIE_SECURE=false`.
    pub fn web_login(mut self) -> Self {
        self.web_login = true;
        self.mock.unionid = true;
        if self.mock.web_apps.is_empty() {
            self.mock.web_apps = vec![MockApp::official_account(), MockApp::website()];
        }
        self
    }

    /// Start Envoy WITHOUT the feed credential in its environment
    /// ([`template::FEED_TOKEN_ENV`]), so a plugin configuration with `credential_env` finds
    /// it missing (the default passes it).
    pub fn without_envoy_feed_env(mut self) -> Self {
        self.envoy_feed_env = false;
        self
    }

    /// Envoy's listeners served by LDS from a file in the run directory (the bootstrap keeps
    /// the clusters), as Istio and Envoy Gateway serve them over xDS: [`Stack::update_listeners`]
    /// then changes them while Envoy runs. Envoy drains an updated listener's old filter chains
    /// for 1 s (`--drain-time-s`), so that what an old filter configuration holds is released
    /// within a test.
    pub fn listeners_from_file(mut self) -> Self {
        self.listeners_from_file = true;
        self
    }

    /// Envoy's path normalization (`normalize_path`, `merge_slashes`,
    /// `path_with_escaped_slashes_action`), on in every shipped bootstrap; off = Envoy's
    /// defaults, for the path-confusion tests.
    pub fn envoy_path_normalization(mut self, on: bool) -> Self {
        self.path_normalization = on;
        self
    }

    /// Envoy routes (JSON `Route`s) placed ahead of the shipped ones in the public listener's
    /// route table (the weauth builds' bootstrap only).
    pub fn routes_first(mut self, routes: Vec<Value>) -> Self {
        self.routes_first = routes;
        self
    }

    /// Makes the demo upstream normalize paths as laxly as any server might
    /// ([`crate::upstream::lax_normalize`]) and report the result in its echo.
    pub fn upstream_normalizes(mut self, on: bool) -> Self {
        self.upstream_normalizes = on;
        self
    }

    /// Binaries to use instead of [`Binaries::from_env`].
    pub fn binaries(mut self, binaries: Binaries) -> Self {
        self.binaries = Some(binaries);
        self
    }

    /// Starts everything and waits until it is ready.
    pub async fn start(self) -> Result<Stack, HarnessError> {
        Stack::start(self).await
    }
}

/// Everything the issuer child needs to be (re)started.
#[derive(Debug, Clone)]
struct IssuerSpec {
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl IssuerSpec {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WEAUTH_") {
                cmd.env_remove(name);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Everything the Envoy child needs to be (re)started.
#[derive(Debug, Clone)]
struct EnvoySpec {
    bin: PathBuf,
    config: PathBuf,
    concurrency: u32,
    /// The weauth filter is the edge (not jwt_authn): its fetch counters can be awaited.
    weauth_filter: bool,
    edge: Edge,
    /// The native build's directory (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
    native_dir: Option<PathBuf>,
    /// The feed credential, passed as [`template::FEED_TOKEN_ENV`] (None: not passed).
    feed_token: Option<String>,
    /// `--drain-time-s` (None: Envoy's default, 600 s).
    drain_seconds: Option<u32>,
}

impl EnvoySpec {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        // Envoy hands this variable to the filter's VM (`host_env_keys` in envoy/envoy.yaml).
        match &self.feed_token {
            Some(token) => cmd.env(template::FEED_TOKEN_ENV, token),
            None => cmd.env_remove(template::FEED_TOKEN_ENV),
        };
        match &self.native_dir {
            Some(dir) => cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir),
            None => cmd.env_remove("ENVOY_DYNAMIC_MODULES_SEARCH_PATH"),
        };
        cmd.arg("-c")
            .arg(&self.config)
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("-l")
            .arg("info");
        if let Some(seconds) = self.drain_seconds {
            cmd.arg("--drain-time-s").arg(seconds.to_string());
        }
        cmd
    }
}

/// Writes the LDS file (`text`, [`template::lds_file`]) whole: into a new file, then renamed
/// over `path` (Envoy watches the file for a move, and never reads half of one).
fn write_lds(path: &Path, text: &str) -> Result<(), HarnessError> {
    let next = path.with_extension("next");
    std::fs::write(&next, text).map_err(io_err(format!("writing {}", next.display())))?;
    std::fs::rename(&next, path).map_err(io_err(format!("renaming to {}", path.display())))
}

/// A running stack. Dropping it kills every child process it started.
pub struct Stack {
    // Field order matters for drop: processes first, the directory last.
    issuer: Option<Proc>,
    envoy: Option<Proc>,
    /// Issuer replicas 1.. (replica 0 is `issuer`), each with its spec (own port).
    replicas: Vec<(Option<Proc>, IssuerSpec, u16)>,
    /// The Redis the replicas share (`redis_replicas`).
    redis: Option<crate::redis::RedisServer>,
    /// Or the Sentinel set-up they share (`redis_sentinel`).
    sentinel: Option<crate::redis::SentinelSetup>,
    /// Or the MariaDB they share (`mysql_replicas`).
    mysql: Option<crate::mariadb::MariaDb>,
    /// Or the Redis Cluster they share (`redis_cluster`).
    cluster: Option<crate::redis::RedisCluster>,
    /// The mock WeChat (in-process): log users in, inject faults, count calls.
    pub mock: MockWechat,
    /// The demo upstream (in-process).
    pub upstream: Upstream,
    issuer_spec: IssuerSpec,
    envoy_spec: Option<EnvoySpec>,
    ports: StackPorts,
    feed_token: String,
    admin_token: String,
    plugin_config: Value,
    client: reqwest::Client,
    /// A token of [`PROBE_USER`], for the readiness probe (None if that login failed).
    probe_token: Option<String>,
    /// The listeners Envoy reads from its LDS file, and that file
    /// ([`StackBuilder::listeners_from_file`]).
    /// Behind a lock so that a stack shared between tasks can be updated (the soak).
    lds: Option<std::sync::Mutex<(Vec<Value>, PathBuf)>>,
    dir: RunDir,
}

impl Stack {
    /// Options, defaulting to: free ports, temp dir, Envoy with concurrency 1, the default
    /// plugin configuration, the default mock configuration.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// `Stack::builder().start()`.
    pub async fn start_default() -> Result<Stack, HarnessError> {
        Stack::builder().start().await
    }

    async fn start(b: StackBuilder) -> Result<Stack, HarnessError> {
        let bins = b.binaries.clone().unwrap_or_else(Binaries::from_env);
        bins.check_edge(b.with_envoy, b.edge)?;
        let dir = match &b.run_dir {
            Some(p) => {
                std::fs::create_dir_all(p).map_err(io_err(format!("creating {}", p.display())))?;
                RunDir::Fixed(p.clone())
            }
            None => RunDir::Temp(temp_dir("weauth-e2e").map_err(io_err("creating temp dir"))?),
        };
        // A stack whose listeners change (`update_listeners`) keeps no idle connection: one
        // kept from before an update belongs to a draining listener, which closes it — a POST
        // sent on it as it closed failed with a connection error (a logout in
        // `filter_config_updated_through_lds_…`, once in a CI run).
        let idle_per_host = if b.listeners_from_file { 0 } else { usize::MAX };
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(idle_per_host)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HarnessError::Http {
                what: "building HTTP client".into(),
                detail: e.to_string(),
            })?;

        let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut mock_cfg = b.mock.clone();
        if let Some(p) = b.ports {
            mock_cfg.listen = Some(loopback(p.mock));
        }
        let mock = MockWechat::start(mock_cfg.clone())
            .await
            .map_err(io_err(format!(
                "starting mock WeChat on {:?}",
                mock_cfg.listen
            )))?;
        let upstream =
            Upstream::start_with(b.ports.map(|p| loopback(p.upstream)), b.upstream_normalizes)
                .await
                .map_err(io_err("starting demo upstream"))?;
        let ports = match b.ports {
            Some(p) => p,
            None => StackPorts {
                envoy: free_port().map_err(io_err("finding a free port"))?,
                internal: free_port().map_err(io_err("finding a free port"))?,
                admin: free_port().map_err(io_err("finding a free port"))?,
                issuer: free_port().map_err(io_err("finding a free port"))?,
                upstream: upstream.addr().port(),
                mock: mock.addr().port(),
            },
        };

        let feed_token = b
            .feed_token
            .clone()
            .unwrap_or_else(|| random_secret("feed"));
        let admin_token = b
            .admin_token
            .clone()
            .unwrap_or_else(|| random_secret("admin"));
        let issuer_url = format!("http://127.0.0.1:{}", ports.issuer);
        let db = dir.path().join("weauth.db");
        let sentinel = if b.sentinel {
            Some(crate::redis::SentinelSetup::start(&dir.path().join("sentinel")).await?)
        } else {
            None
        };
        let cluster = if b.cluster {
            // Formed afresh each time (a `make up` run directory outlives the stack, and
            // the nodes' ports change).
            let root = dir.path().join("cluster");
            match std::fs::remove_dir_all(&root) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(HarnessError::Io {
                        what: format!("removing {}", root.display()),
                        source: e,
                    })
                }
                _ => {}
            }
            Some(
                tokio::task::spawn_blocking(move || crate::redis::RedisCluster::start_in(&root))
                    .await
                    .map_err(|e| HarnessError::Io {
                        what: "starting the Redis Cluster".into(),
                        source: std::io::Error::other(e.to_string()),
                    })??,
            )
        } else {
            None
        };
        let redis = if b.redis_replicas > 0 && sentinel.is_none() && cluster.is_none() {
            Some(crate::redis::RedisServer::start_in(&dir.path().join("redis"), &[]).await?)
        } else {
            None
        };
        let mysql = if b.mysql_replicas > 0 {
            let server =
                crate::mariadb::MariaDb::start_in(&dir.path().join("mariadb"), &[]).await?;
            server.sql("CREATE DATABASE IF NOT EXISTS weauth")?;
            Some(server)
        } else {
            None
        };
        let mut env: Vec<(String, String)> = vec![
            (
                "WEAUTH_LISTEN".into(),
                format!("127.0.0.1:{}", ports.issuer),
            ),
            ("WEAUTH_STORE".into(), format!("sqlite://{}", db.display())),
            ("WEAUTH_WECHAT_APPID".into(), mock_cfg.appid.clone()),
            ("WEAUTH_WECHAT_SECRET".into(), mock_cfg.secret.clone()),
            ("WEAUTH_WECHAT_API_BASE".into(), mock.base_url()),
            ("WEAUTH_ISSUER".into(), issuer_url.clone()),
            ("WEAUTH_AUDIENCE".into(), b.audience.clone()),
            ("WEAUTH_FEED_TOKEN".into(), feed_token.clone()),
            ("WEAUTH_ADMIN_TOKEN".into(), admin_token.clone()),
            // Envoy (use_remote_address) appends the client's address to X-Forwarded-For;
            // the issuer believes it from Envoy's address only, so logins are rate-limited per
            // client and not all in one bucket.
            ("WEAUTH_TRUSTED_PROXIES".into(), "127.0.0.1".into()),
        ];
        let shared_store = match (&redis, &sentinel, &cluster, &mysql) {
            (_, _, Some(cluster), _) => Some(cluster.url()),
            (_, Some(sentinel), None, _) => Some(sentinel.url()),
            (Some(redis), None, None, _) => Some(redis.url(0)),
            (None, None, None, Some(mysql)) => Some(mysql.url("weauth")),
            (None, None, None, None) => None,
        };
        if let Some(url) = shared_store {
            env.retain(|(name, _)| name != "WEAUTH_STORE");
            env.push(("WEAUTH_STORE".into(), url));
            env.push(("WEAUTH_DATA_KEY".into(), data_key_in(&dir)?));
        }
        if b.web_login {
            let apps = web_apps_file(&mock_cfg, ports.envoy);
            let path = dir.path().join("apps.json");
            std::fs::write(&path, apps.to_string())
                .map_err(io_err(format!("writing {}", path.display())))?;
            env.retain(|(name, _)| name != "WEAUTH_WECHAT_APPID" && name != "WEAUTH_WECHAT_SECRET");
            env.push(("WEAUTH_APPS_FILE".into(), path.display().to_string()));
            env.push(("WEAUTH_WECHAT_OPEN_BASE".into(), mock.base_url()));
            env.push(("WEAUTH_COOKIE_SECURE".into(), "false".into()));
        }
        for (k, v) in &b.issuer_env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
        let issuer_spec = IssuerSpec {
            bin: bins.issuer.clone(),
            env,
        };
        let mut replicas = Vec::new();
        for i in 1..b.redis_replicas.max(b.mysql_replicas) {
            // `make up` (fixed ports): further replicas on 8082, 8083, ... (8081 is the demo
            // upstream, 8090 the mock WeChat); tests: free ports.
            let port = match b.ports {
                Some(p) => p.issuer + 1 + u16::try_from(i).unwrap_or(0),
                None => free_port().map_err(io_err("finding a free port"))?,
            };
            let mut spec = issuer_spec.clone();
            spec.env.retain(|(name, _)| name != "WEAUTH_LISTEN");
            spec.env
                .push(("WEAUTH_LISTEN".into(), format!("127.0.0.1:{port}")));
            replicas.push((None, spec, port));
        }
        let plugin_config = template::plugin_config(&issuer_url, &b.audience, &b.plugin_patches)?;

        let mut stack = Stack {
            issuer: None,
            envoy: None,
            replicas,
            redis,
            sentinel,
            mysql,
            cluster,
            mock,
            upstream,
            issuer_spec,
            envoy_spec: None,
            ports,
            feed_token,
            admin_token,
            plugin_config,
            client,
            probe_token: None,
            lds: None,
            dir,
        };
        stack.start_issuer().await?;
        for i in 1..=stack.replicas.len() {
            stack.start_replica(i).await?;
        }
        if b.with_envoy {
            stack.probe_token = stack.probe_login().await;
            // The probe's WeChat calls are the harness's business, not the test's.
            stack.mock.reset();
        }
        if b.with_envoy {
            let envoy_ports = EnvoyPorts {
                envoy: ports.envoy,
                internal: ports.internal,
                admin: ports.admin,
                issuer: ports.issuer,
                upstream: ports.upstream,
            };
            let yaml = match b.edge {
                Edge::WeauthFilter | Edge::WeauthNative => {
                    let more: Vec<u16> = stack.replicas.iter().map(|r| r.2).collect();
                    let yaml = template::envoy_config_replicas(
                        envoy_ports,
                        &more,
                        &bins.wasm.to_string_lossy(),
                        &stack.plugin_config,
                    )?;
                    let yaml = template::with_routes_first(&yaml, &b.routes_first)?;
                    if b.edge == Edge::WeauthNative {
                        template::native_filter(&yaml)?
                    } else {
                        yaml
                    }
                }
                Edge::JwtAuthn => {
                    template::jwt_authn_config(envoy_ports, &issuer_url, &b.audience)?
                }
            };
            let yaml = if b.path_normalization {
                yaml
            } else {
                template::without_path_normalization(&yaml)?
            };
            let yaml = if b.listeners_from_file {
                let path = stack.dir.path().join("lds.yaml");
                let (bootstrap, listeners) =
                    template::listeners_from_file(&yaml, &path.to_string_lossy())?;
                write_lds(&path, &template::lds_file(&listeners))?;
                stack.lds = Some(std::sync::Mutex::new((listeners, path)));
                bootstrap
            } else {
                yaml
            };
            let config = stack.dir.path().join("envoy.yaml");
            std::fs::write(&config, yaml)
                .map_err(io_err(format!("writing {}", config.display())))?;
            stack.envoy_spec = Some(EnvoySpec {
                bin: bins.envoy.clone(),
                config,
                concurrency: b.concurrency,
                weauth_filter: b.edge.is_weauth(),
                edge: b.edge,
                native_dir: (b.edge == Edge::WeauthNative)
                    .then(|| bins.native.parent().map(Path::to_path_buf))
                    .flatten(),
                feed_token: b.envoy_feed_env.then(|| stack.feed_token.clone()),
                drain_seconds: b.listeners_from_file.then_some(1),
            });
            stack.start_envoy().await?;
        }
        Ok(stack)
    }

    /// What checks tokens in this stack's Envoy (jwt_authn when there is no Envoy).
    pub fn edge(&self) -> Edge {
        self.envoy_spec
            .as_ref()
            .map_or(Edge::JwtAuthn, |spec| spec.edge)
    }

    /// The full Envoy stat name of the weauth filter's `weauth.<name>` in this stack's build
    /// (`wasmcustom.weauth.allowed`, or the native build's namespace).
    pub fn filter_stat(&self, name: &str) -> String {
        self.edge().stat(name)
    }

    /// Envoy's listener, `http://127.0.0.1:PORT`.
    pub fn envoy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.envoy)
    }

    /// Envoy's internal listener (admin API and revocation feed), `http://127.0.0.1:PORT`.
    pub fn internal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.internal)
    }

    /// Envoy's admin interface.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.admin)
    }

    /// The issuer, directly (bypassing Envoy); also its `WEAUTH_ISSUER` value.
    pub fn issuer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.issuer)
    }

    /// The mock WeChat.
    pub fn mock_url(&self) -> String {
        self.mock.base_url()
    }

    /// The demo upstream, directly.
    pub fn upstream_url(&self) -> String {
        self.upstream.base_url()
    }

    /// All ports.
    pub fn ports(&self) -> StackPorts {
        self.ports
    }

    /// The revocation feed credential given to the issuer and the filter.
    pub fn feed_token(&self) -> &str {
        &self.feed_token
    }

    /// The admin credential given to the issuer.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The plugin configuration Envoy was started with.
    pub fn plugin_config(&self) -> &Value {
        &self.plugin_config
    }

    /// The directory holding the database, logs and rendered Envoy config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The issuer's log file.
    pub fn issuer_log(&self) -> PathBuf {
        self.dir.path().join("issuer.log")
    }

    /// Envoy's log file (its stderr log and the access log).
    pub fn envoy_log(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    /// The environment the issuer runs with (for starting a sibling issuer).
    pub fn issuer_env(&self) -> &[(String, String)] {
        &self.issuer_spec.env
    }

    /// The shared HTTP client (no proxy, 30 s timeout).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// PIDs of the child processes (issuer, Envoy) while running.
    pub fn child_pids(&self) -> Vec<u32> {
        [&self.issuer, &self.envoy]
            .into_iter()
            .flatten()
            .filter_map(Proc::pid)
            .collect()
    }

    /// A request through Envoy: `method` on `path` (which starts with `/`).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.envoy_url()))
    }

    /// `GET path` through Envoy, with `Authorization: Bearer <token>` when given.
    pub async fn get(
        &self,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<reqwest::Response, HarnessError> {
        let mut req = self.request(reqwest::Method::GET, path);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        req.send().await.map_err(|e| HarnessError::Http {
            what: format!("GET {path} through Envoy"),
            detail: e.to_string(),
        })
    }

    /// `GET path` through Envoy and the answer's status and JSON body (`Value::Null` when the
    /// body is not JSON).
    pub async fn get_json(
        &self,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<(u16, Value), HarnessError> {
        let resp = self.get(path, bearer).await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| HarnessError::Http {
            what: format!("reading GET {path}"),
            detail: e.to_string(),
        })?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// `POST path` with a JSON body through Envoy; status and JSON body (`Null` if not JSON).
    pub async fn post_json(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
    ) -> Result<(u16, Value), HarnessError> {
        let mut req = self.request(reqwest::Method::POST, path).json(body);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| HarnessError::Http {
            what: format!("POST {path} through Envoy"),
            detail: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| HarnessError::Http {
            what: format!("reading POST {path}"),
            detail: e.to_string(),
        })?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Logs `user` in through Envoy: a fresh code from the mock, then `POST /v1/login`.
    pub async fn login(&self, user: &str) -> Result<TokenResponse, HarnessError> {
        let code = self.mock.login(user).code;
        let (status, body) = self
            .post_json("/v1/login", None, &json!({"code": code}))
            .await?;
        if status != 200 {
            return Err(HarnessError::Http {
                what: format!("POST /v1/login as {user:?} through Envoy"),
                detail: format!("status {status}, body {body}"),
            });
        }
        serde_json::from_value(body.clone()).map_err(|e| HarnessError::Http {
            what: "POST /v1/login".into(),
            detail: format!("unexpected token response {body}: {e}"),
        })
    }

    /// Logs [`PROBE_USER`] in directly at the issuer; `None` when that fails (for example a
    /// test configured the issuer to fail logins), which selects the fallback probe.
    async fn probe_login(&self) -> Option<String> {
        let code = self.mock.login(PROBE_USER).code;
        let resp = self
            .client
            .post(format!("{}/v1/login", self.issuer_url()))
            .json(&json!({"code": code}))
            .send()
            .await
            .ok()?;
        if resp.status() != 200 {
            return None;
        }
        let tokens: TokenResponse = resp.json().await.ok()?;
        Some(tokens.access_token)
    }

    /// Envoy's `/stats` (text format).
    /// Envoy's stats once `name` reads at least `min`, or the last stats after 15 s. The
    /// filter's allow-path counters (`allowed`, `anonymous`, `cache_hit`, `cache_miss`) reach
    /// Envoy on the filter's 100 ms tick, not with the response.
    pub async fn envoy_stats_once(&self, name: &str, min: u64) -> Result<String, HarnessError> {
        let start = Instant::now();
        loop {
            let stats = self.envoy_stats().await?;
            if stat_value(&stats, name).unwrap_or(0) >= min
                || start.elapsed() > Duration::from_secs(15)
            {
                return Ok(stats);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn envoy_stats(&self) -> Result<String, HarnessError> {
        let url = format!("{}/stats", self.admin_url());
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| HarnessError::Http {
                what: format!("GET {url}"),
                detail: e.to_string(),
            })?;
        resp.text().await.map_err(|e| HarnessError::Http {
            what: format!("reading {url}"),
            detail: e.to_string(),
        })
    }

    /// Changes Envoy's listeners while it runs ([`StackBuilder::listeners_from_file`]): `edit`
    /// gets them, the LDS file is replaced whole (a rename, which Envoy watches), and this
    /// returns once Envoy has taken the update (`listener_manager.lds.update_success` moved).
    ///
    /// # Errors
    /// [`HarnessError::Http`] when the stack does not serve its listeners from a file, or
    /// Envoy rejected the update or did not take it within 5 s.
    pub async fn update_listeners(
        &self,
        edit: impl FnOnce(&mut Vec<Value>),
    ) -> Result<(), HarnessError> {
        const TAKEN: &str = "listener_manager.lds.update_success";
        const REJECTED: &str = "listener_manager.lds.update_rejected";
        let Some(lds) = self.lds.as_ref() else {
            return Err(HarnessError::Http {
                what: "updating Envoy's listeners".into(),
                detail: "this stack was built without listeners_from_file()".into(),
            });
        };
        let (text, path) = {
            let mut lds = lds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (listeners, path) = &mut *lds;
            edit(listeners);
            (template::lds_file(listeners), path.clone())
        };
        let before = self.envoy_stats().await?;
        let taken = stat_value(&before, TAKEN).unwrap_or(0);
        let rejected = stat_value(&before, REJECTED).unwrap_or(0);
        write_lds(&path, &text)?;
        let start = Instant::now();
        loop {
            let stats = self.envoy_stats().await?;
            if stat_value(&stats, TAKEN).unwrap_or(0) > taken {
                return Ok(());
            }
            if stat_value(&stats, REJECTED).unwrap_or(0) > rejected
                || start.elapsed() > Duration::from_secs(30)
            {
                let log = std::fs::read_to_string(self.envoy_log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                return Err(HarnessError::Http {
                    what: "updating Envoy's listeners".into(),
                    detail: format!(
                        "the update was rejected or not taken; Envoy's log ends:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Changes the weauth filter's configuration in every listener that has the filter (an
    /// RFC 7386 merge `patch` of its JSON), through [`Stack::update_listeners`]: what a new
    /// plugin configuration pushed by a control plane does.
    ///
    /// # Errors
    /// As [`Stack::update_listeners`].
    pub async fn update_filter_config(&self, patch: &Value) -> Result<(), HarnessError> {
        self.update_listeners(|listeners| {
            for config in listeners
                .iter_mut()
                .flat_map(template::weauth_filter_configs)
            {
                let mut parsed: Value = config
                    .as_str()
                    .and_then(|text| serde_json::from_str(text).ok())
                    .unwrap_or(Value::Null);
                template::merge_patch(&mut parsed, patch);
                *config = Value::String(parsed.to_string());
            }
        })
        .await
    }

    /// The threads of Envoy's process (Linux: `/proc/<pid>/task`).
    pub fn envoy_threads(&self) -> Option<usize> {
        let pid = self.envoy_pid()?;
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()
            .map(Iterator::count)
    }

    /// Stops the issuer (SIGTERM, then SIGKILL after 5 s). The database is kept.
    pub async fn stop_issuer(&mut self) {
        if let Some(mut p) = self.issuer.take() {
            p.stop(STOP_GRACE).await;
        }
    }

    /// Kills the issuer with SIGKILL: no drain, no shutdown hook, like a crash or the OOM
    /// killer. The database is kept; [`Stack::start_issuer`] starts it again.
    pub async fn kill_issuer(&mut self) {
        if let Some(mut p) = self.issuer.take() {
            // tokio's `Child::kill` is SIGKILL on Unix, then waits for the exit.
            let _ = p.child.kill().await;
        }
    }

    /// The issuer's PID while it runs.
    pub fn issuer_pid(&self) -> Option<u32> {
        self.issuer.as_ref().and_then(Proc::pid)
    }

    /// Envoy's PID while it runs.
    pub fn envoy_pid(&self) -> Option<u32> {
        self.envoy.as_ref().and_then(Proc::pid)
    }

    /// Starts the issuer again (same port, same database) and waits for `/healthz`.
    pub async fn start_issuer(&mut self) -> Result<(), HarnessError> {
        self.stop_issuer().await;
        let log = self.issuer_log();
        let mut proc = Proc::spawn("weauth-issuer", self.issuer_spec.command(), &log)?;
        let url = format!("{}/healthz", self.issuer_url());
        wait_ready(&self.client, &mut proc, &url).await?;
        self.issuer = Some(proc);
        Ok(())
    }

    /// Stops Envoy (SIGTERM, then SIGKILL after 5 s).
    pub async fn stop_envoy(&mut self) {
        if let Some(mut p) = self.envoy.take() {
            p.stop(STOP_GRACE).await;
        }
    }

    async fn start_envoy(&mut self) -> Result<(), HarnessError> {
        let Some(spec) = self.envoy_spec.clone() else {
            return Err(HarnessError::Http {
                what: "starting Envoy".into(),
                detail: "this stack was built without_envoy()".into(),
            });
        };
        self.stop_envoy().await;
        let log = self.envoy_log();
        let mut proc = Proc::spawn("envoy", spec.command(), &log)?;
        wait_ready(
            &self.client,
            &mut proc,
            &format!("{}/ready", self.admin_url()),
        )
        .await?;
        // Through the listener and the filter (public route), to the issuer.
        wait_ready(
            &self.client,
            &mut proc,
            &format!("{}/healthz", self.envoy_url()),
        )
        .await?;
        self.wait_filter_ready(&mut proc, spec.concurrency, spec.weauth_filter)
            .await?;
        self.envoy = Some(proc);
        Ok(())
    }

    /// Waits until the filter in every worker holds the issuer's keys AND the revocation list:
    /// the probe user's token must pass on `/api/__weauth_ready` (200 from the upstream, which
    /// does not count these) on `2 × concurrency` fresh connections in a row (connections are
    /// spread over the workers). Without a probe token (its login failed), falls back to: a
    /// junk token no longer answered 503, then the feed fetched once (Envoy stats) plus a few
    /// ticks.
    async fn wait_filter_ready(
        &self,
        proc: &mut Proc,
        concurrency: u32,
        weauth_filter: bool,
    ) -> Result<(), HarnessError> {
        let fresh = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| HarnessError::Http {
                what: "building HTTP client".into(),
                detail: e.to_string(),
            })?;
        let url = format!("{}{}", self.envoy_url(), crate::upstream::PROBE_PATH);
        let (mut token, want_200) = match &self.probe_token {
            Some(t) => (t.clone(), true),
            None => (JUNK_TOKEN.to_string(), false),
        };
        let start = Instant::now();
        // First wait, on the admin stats, until the fetcher holds the keys and the revocation
        // list, so the probe requests below are not refused with 503 while they load: a fresh
        // stack's stats then show no `denied.*` and no 5xx caused by the harness itself.
        if weauth_filter {
            self.wait_fetched(proc, start).await?;
        }
        let mut in_a_row = 0;
        loop {
            if let Some(status) = proc.exited() {
                return Err(proc.exited_error(status));
            }
            // A stack started with a very short WEAUTH_ACCESS_TTL (the mini-program client's
            // tests use 4 s) can outlive the probe token while Envoy starts: log in again.
            if want_200 && probe_expired(&token) {
                if let Some(t) = self.probe_login().await {
                    token = t;
                    self.mock.reset();
                }
            }
            let last = match fresh.get(&url).bearer_auth(&token).send().await {
                Ok(r) if (want_200 && r.status() == 200) || (!want_200 && r.status() != 503) => {
                    in_a_row += 1;
                    if in_a_row >= 2 * concurrency {
                        break;
                    }
                    continue;
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    format!(
                        "GET {url} with the probe token → {status} {}",
                        body.chars().take(200).collect::<String>()
                    )
                }
                Err(e) => format!("GET {url}: {e}"),
            };
            in_a_row = 0;
            if start.elapsed() > READY_TIMEOUT {
                return Err(HarnessError::NotReady {
                    name: "envoy filter (keys and revocation list)",
                    waited: start.elapsed(),
                    detail: last,
                    log: proc.log.clone(),
                    tail: proc.tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if want_200 || self.plugin_config.get("revocation").is_none() {
            return Ok(());
        }
        loop {
            let stats = self.envoy_stats().await.unwrap_or_default();
            if stat_value(&stats, &self.edge().stat("feed_fetch_ok")).unwrap_or(0) >= 1 {
                // Worker VMs pick the list up from shared data on their next tick (100 ms).
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(HarnessError::NotReady {
                    name: "envoy filter (revocation feed)",
                    waited: start.elapsed(),
                    detail: format!("{} stayed 0", self.edge().stat("feed_fetch_ok")),
                    log: proc.log.clone(),
                    tail: proc.tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until Envoy's stats count one successful JWKS fetch (when the keys come from the
    /// issuer) and one revocation-feed answer (when the feed is configured).
    async fn wait_fetched(&self, proc: &mut Proc, start: Instant) -> Result<(), HarnessError> {
        let mut wanted = Vec::new();
        if self
            .plugin_config
            .get("jwks")
            .and_then(|jwks| jwks.get("cluster"))
            .is_some()
        {
            wanted.push(self.edge().stat("jwks_fetch_ok"));
        }
        if self.plugin_config.get("revocation").is_some() {
            wanted.push(self.edge().stat("feed_fetch_ok"));
        }
        loop {
            if let Some(status) = proc.exited() {
                return Err(proc.exited_error(status));
            }
            let stats = self.envoy_stats().await.unwrap_or_default();
            let missing: Vec<&str> = wanted
                .iter()
                .map(String::as_str)
                .filter(|name| stat_value(&stats, name).unwrap_or(0) == 0)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(HarnessError::NotReady {
                    name: "envoy filter (first JWKS and feed fetch)",
                    waited: start.elapsed(),
                    detail: format!("{} stayed 0", missing.join(", ")),
                    log: proc.log.clone(),
                    tail: proc.tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts Envoy with the same configuration and waits until it is ready.
    pub async fn restart_envoy(&mut self) -> Result<(), HarnessError> {
        self.start_envoy().await
    }

    /// Stops Envoy and the issuer gracefully (SIGTERM), then the in-process servers.
    pub async fn shutdown(mut self) {
        self.stop_envoy().await;
        self.stop_issuer().await;
        for (proc, _, _) in &mut self.replicas {
            if let Some(mut p) = proc.take() {
                p.stop(STOP_GRACE).await;
            }
        }
    }

    /// The PIDs of the running issuer replicas (replica 0 first).
    pub fn replica_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.issuer.iter().filter_map(Proc::pid).collect();
        pids.extend(
            self.replicas
                .iter()
                .filter_map(|(proc, _, _)| proc.as_ref().and_then(Proc::pid)),
        );
        pids
    }

    /// How many issuer replicas the stack runs (1 unless `redis_replicas`).
    pub fn replica_count(&self) -> usize {
        1 + self.replicas.len()
    }

    /// `http://127.0.0.1:PORT` of replica `i` (0 is the issuer).
    pub fn replica_url(&self, i: usize) -> String {
        match i {
            0 => self.issuer_url(),
            _ => format!("http://127.0.0.1:{}", self.replicas[i - 1].2),
        }
    }

    /// The log file of replica `i`.
    pub fn replica_log(&self, i: usize) -> PathBuf {
        match i {
            0 => self.issuer_log(),
            _ => self.dir.path().join(format!("issuer-{i}.log")),
        }
    }

    /// Starts replica `i` (1..) again and waits for `/healthz`.
    ///
    /// # Errors
    /// The process exited or never became ready.
    pub async fn start_replica(&mut self, i: usize) -> Result<(), HarnessError> {
        if i == 0 {
            return self.start_issuer().await;
        }
        self.kill_replica(i).await;
        let log = self.replica_log(i);
        let url = format!("{}/healthz", self.replica_url(i));
        let spec = self.replicas[i - 1].1.clone();
        let mut proc = Proc::spawn("weauth-issuer replica", spec.command(), &log)?;
        wait_ready(&self.client, &mut proc, &url).await?;
        self.replicas[i - 1].0 = Some(proc);
        Ok(())
    }

    /// SIGKILLs replica `i` (0 is the issuer): a crash, no drain.
    pub async fn kill_replica(&mut self, i: usize) {
        if i == 0 {
            return self.kill_issuer().await;
        }
        if let Some(mut p) = self.replicas[i - 1].0.take() {
            let _ = p.child.kill().await;
        }
    }

    /// The Sentinel set-up of a `redis_sentinel` stack.
    pub fn sentinel(&mut self) -> Option<&mut crate::redis::SentinelSetup> {
        self.sentinel.as_mut()
    }

    /// The MariaDB of a `mysql_replicas` stack.
    pub fn mysql(&mut self) -> Option<&mut crate::mariadb::MariaDb> {
        self.mysql.as_mut()
    }

    /// The Redis Cluster of a `redis_cluster` stack.
    pub fn cluster(&mut self) -> Option<&mut crate::redis::RedisCluster> {
        self.cluster.as_mut()
    }

    /// The Redis server of a `redis_replicas` stack (to kill and restart it).
    pub fn redis(&mut self) -> Option<&mut crate::redis::RedisServer> {
        self.redis.as_mut()
    }

    /// Starts another issuer process against the same mock WeChat, with its own database in
    /// this stack's directory, on a free port, with this stack's issuer environment plus
    /// `overrides` (e.g. `WEAUTH_AUDIENCE=other`). Killed when the handle is dropped.
    pub async fn spawn_sibling_issuer(
        &self,
        name: &str,
        overrides: &[(&str, &str)],
    ) -> Result<SiblingIssuer, HarnessError> {
        let port = free_port().map_err(io_err("finding a free port"))?;
        let mut env = self.issuer_spec.env.clone();
        let db = self.dir.path().join(format!("{name}.db"));
        let mut set = |k: &str, v: String| {
            env.retain(|(n, _)| n != k);
            env.push((k.to_string(), v));
        };
        set("WEAUTH_LISTEN", format!("127.0.0.1:{port}"));
        set("WEAUTH_STORE", format!("sqlite://{}", db.display()));
        for (k, v) in overrides {
            set(k, (*v).to_string());
        }
        let spec = IssuerSpec {
            bin: self.issuer_spec.bin.clone(),
            env,
        };
        let log = self.dir.path().join(format!("{name}.log"));
        let mut proc = Proc::spawn("sibling weauth-issuer", spec.command(), &log)?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&self.client, &mut proc, &format!("{url}/healthz")).await?;
        Ok(SiblingIssuer { proc, url })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== weauth stack in {} =====",
                self.dir.path().display()
            );
            let mut logs = vec![
                ("issuer".to_string(), self.issuer_log()),
                ("envoy".to_string(), self.envoy_log()),
            ];
            for i in 1..self.replica_count() {
                logs.push((format!("issuer replica {i}"), self.replica_log(i)));
            }
            for (name, log) in logs {
                eprintln!(
                    "----- last {TAIL_LINES} lines of the {name} log ({}) -----\n{}",
                    log.display(),
                    tail_file(&log, TAIL_LINES)
                );
            }
            eprintln!("===== end of weauth stack logs =====\n");
        }
        // Kill before the directory goes away.
        self.envoy.take();
        self.issuer.take();
        self.replicas.clear();
        self.redis.take();
        self.sentinel.take();
        self.mysql.take();
        self.cluster.take();
    }
}

/// A second issuer started by [`Stack::spawn_sibling_issuer`]; killed on drop.
pub struct SiblingIssuer {
    proc: Proc,
    url: String,
}

impl SiblingIssuer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.proc.log
    }
}

impl Drop for SiblingIssuer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last {TAIL_LINES} lines of the sibling issuer log ({}) -----\n{}",
                self.proc.log.display(),
                self.proc.tail()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_value_exact_name_only() {
        let stats =
            "wasmcustom.weauth.allowed: 3\nwasmcustom.weauth.allowed_x: 9\nh: No recorded values";
        assert_eq!(stat_value(stats, "wasmcustom.weauth.allowed"), Some(3));
        assert_eq!(stat_value(stats, "wasmcustom.weauth.allow"), None);
        assert_eq!(stat_value(stats, "h"), None);
    }

    #[test]
    fn binaries_resolve_defaults_relative_to_root() {
        let b = Binaries::resolve(Path::new("/ws"), None, None, None, None, None);
        assert_eq!(b.issuer, Path::new("/ws/target/debug/weauth-issuer"));
        assert_eq!(b.envoy, Path::new("/ws/.tools/bin/envoy"));
        assert_eq!(
            b.wasm,
            Path::new("/ws/target/wasm32-wasip1/wasm-release/weauth_filter.wasm")
        );
    }

    #[test]
    fn binaries_resolve_target_dir_and_explicit_paths() {
        let b = Binaries::resolve(
            Path::new("/ws"),
            Some("/t".into()),
            Some("/t/x86_64-unknown-linux-musl/debug".into()),
            Some("bin/issuer".into()),
            Some("/opt/envoy".into()),
            None,
        );
        assert_eq!(b.issuer, Path::new("/ws/bin/issuer"));
        assert_eq!(b.envoy, Path::new("/opt/envoy"));
        assert_eq!(
            b.wasm,
            Path::new("/t/wasm32-wasip1/wasm-release/weauth_filter.wasm")
        );
    }

    #[test]
    fn binaries_resolve_the_issuer_beside_the_running_binary() {
        let test = Path::new("/ws/target/x86_64-unknown-linux-musl/debug/deps/suites-0a1b");
        let stack = Path::new("/ws/target/release/weauth-stack");
        for (exe, issuer) in [
            (
                test,
                "/ws/target/x86_64-unknown-linux-musl/debug/weauth-issuer",
            ),
            (stack, "/ws/target/release/weauth-issuer"),
        ] {
            let b = Binaries::resolve(Path::new("/ws"), None, output_dir_of(exe), None, None, None);
            assert_eq!(b.issuer, Path::new(issuer), "{exe:?}");
        }
        let b = Binaries::resolve(
            Path::new("/ws"),
            None,
            output_dir_of(test),
            Some("/opt/weauth-issuer".into()),
            None,
            None,
        );
        assert_eq!(b.issuer, Path::new("/opt/weauth-issuer"));
    }

    #[test]
    fn binaries_check_missing_issuer_names_make_target() {
        let b = Binaries::resolve(Path::new("/nonexistent-ws"), None, None, None, None, None);
        let err = b.check(true).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent-ws/target/debug/weauth-issuer"),
            "{err}"
        );
        assert!(err.contains("make build"), "{err}");
    }

    #[test]
    fn stack_builder_patches_apply_in_order_keeping_removals() {
        let b = Stack::builder()
            .plugin_config_patch(json!({"revocation": null}))
            .plugin_config_patch(json!({"clock_skew_seconds": 5}));
        let c = template::plugin_config("http://i", "weauth", &b.plugin_patches).unwrap();
        assert!(c.get("revocation").is_none());
        assert_eq!(c["clock_skew_seconds"], 5);
    }
}
