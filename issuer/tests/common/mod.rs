//! Shared harness of the issuer's integration tests: an issuer with a SQLite file in a fresh
//! temp directory, against the in-process mock WeChat of `weauth-tests`, on a loopback port.
//!
//! [`Stack::start`] runs it in this test's process: the real `App` built from the same
//! environment the binary would read, served by the real `server::run` (what the binary's
//! `main` does, minus the process). [`Stack::process`] runs the REAL `weauth-issuer` binary
//! (`WEAUTH_LISTEN=127.0.0.1:0`, address read from its `listening on ADDR` log line), for what
//! needs a process: its log, signals, exit codes, a restart that a crash would cause.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use weauth_issuer::app::App;
use weauth_issuer::clock::{Clock, ManualClock, SystemClock};
use weauth_issuer::config::{Config, Source};
use weauth_mock_wechat::{MockConfig, MockWechat};

pub const APPID: &str = "wx0123456789abcdef";
pub const FEED: &str = "test-feed-token";
pub const ADMIN: &str = "test-admin-token";
/// Any 32 bytes, base64: the data key a shared store (Redis, MySQL) requires of its replicas.
#[allow(dead_code)]
pub const SHARED_DATA_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A temp directory removed on drop.
pub type TempDir = tempfile::TempDir;

/// A fresh `weauth-issuer-<tag>-…` directory under the system temp dir, removed on drop.
pub fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("weauth-issuer-{tag}-"))
        .tempdir()
        .unwrap()
}

/// The environment for an issuer against `mock`, storing in `dir`.
pub fn base_env(mock: &MockWechat, dir: &Path) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (k, v) in [
        ("WEAUTH_LISTEN", "127.0.0.1:0".to_string()),
        (
            "WEAUTH_STORE",
            format!("sqlite://{}", dir.join("weauth.db").display()),
        ),
        ("WEAUTH_WECHAT_APPID", APPID.to_string()),
        ("WEAUTH_WECHAT_SECRET", "mock-secret".to_string()),
        ("WEAUTH_WECHAT_API_BASE", mock.base_url()),
        ("WEAUTH_ISSUER", "http://issuer.test".to_string()),
        ("WEAUTH_AUDIENCE", "weauth".to_string()),
        ("WEAUTH_FEED_TOKEN", FEED.to_string()),
        ("WEAUTH_ADMIN_TOKEN", ADMIN.to_string()),
        ("WEAUTH_LOG", "info".to_string()),
        ("WEAUTH_WECHAT_TIMEOUT", "2s".to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    env
}

/// A running issuer process.
pub struct Issuer {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    pub env: HashMap<String, String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_weauth-issuer")
}

impl Issuer {
    /// Starts the binary with exactly `env` (plus PATH) and waits for `listening on ADDR`.
    pub fn start(env: &HashMap<String, String>) -> Issuer {
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn weauth-issuer");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(pos) = line.find("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line[pos + 13..].trim().to_string());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "issuer did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Issuer {
            child,
            addr,
            log,
            env: env.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log once it holds every one of `needles`: a line written while (or just after) the
    /// answer went out reaches the pipe reader a moment later. Fails after 10 s with the log.
    pub async fn log_with(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if needles.iter().all(|needle| log.contains(needle)) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the issuer never logged {needles:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits (up to `limit`) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.sigterm();
        self.wait_exit(limit)
    }

    /// Waits (up to `limit`) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "issuer did not stop within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An issuer served in this process: the real `App` and `server::run` on a loopback listener.
pub struct InProcess {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub env: HashMap<String, String>,
    clock: Arc<dyn Clock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    background: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The configuration of exactly `vars`, no files readable (the library tests' replicas).
#[allow(dead_code)]
pub fn config_of(vars: &HashMap<&str, String>) -> Config {
    let lookup = |name: &str| vars.get(name).cloned();
    let read_file = |_: &str| Err(std::io::Error::other("no files"));
    Config::from_source(&Source {
        lookup: &lookup,
        read_file: &read_file,
    })
    .unwrap_or_else(|err| panic!("invalid configuration: {err}"))
}

impl InProcess {
    /// What `weauth-issuer` does at start with exactly `env`, in this process, on `clock`.
    pub async fn start(env: &HashMap<String, String>, clock: Arc<dyn Clock>) -> InProcess {
        let lookup = |name: &str| env.get(name).cloned();
        let read_file = |path: &str| std::fs::read_to_string(path);
        let config = Config::from_source(&Source {
            lookup: &lookup,
            read_file: &read_file,
        })
        .unwrap_or_else(|err| panic!("invalid configuration: {err}"));
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        weauth_issuer::app::preflight(&config).unwrap();
        let app = App::build_with_clock(config, None, Arc::clone(&clock))
            .await
            .unwrap();
        let (background, stopped) = tokio::sync::watch::channel(false);
        let tasks = app.spawn_background(stopped);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(weauth_issuer::server::run(
            listener,
            Arc::clone(&app),
            async {
                let _ = stop_rx.await;
            },
        ));
        InProcess {
            addr,
            app,
            env: env.clone(),
            clock,
            stop: Some(stop),
            served: Some(served),
            background,
            tasks,
        }
    }

    /// Shuts down as on SIGTERM: stops accepting, drains, ends the background tasks.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
        let _ = self.background.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(served) = &self.served {
            served.abort();
        }
        let _ = self.background.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How a [`Stack`]'s issuer runs (see the module docs).
pub enum Runner {
    InProcess(InProcess),
    Process(Issuer),
    /// Only while [`Stack::restart`] swaps one for the next.
    Restarting,
}

impl Runner {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Runner::InProcess(issuer) => issuer.addr,
            Runner::Process(issuer) => issuer.addr,
            Runner::Restarting => unreachable!("restarting"),
        }
    }

    pub fn env(&self) -> &HashMap<String, String> {
        match self {
            Runner::InProcess(issuer) => &issuer.env,
            Runner::Process(issuer) => &issuer.env,
            Runner::Restarting => unreachable!("restarting"),
        }
    }

    pub fn env_mut(&mut self) -> &mut HashMap<String, String> {
        match self {
            Runner::InProcess(issuer) => &mut issuer.env,
            Runner::Process(issuer) => &mut issuer.env,
            Runner::Restarting => unreachable!("restarting"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// The binary's process; a test that needs it starts with [`Stack::process`].
    pub fn process(&mut self) -> &mut Issuer {
        match self {
            Runner::Process(issuer) => issuer,
            _ => panic!(
                "this test needs the issuer's process (its log, a signal): start it with Stack::process*"
            ),
        }
    }

    pub fn log_text(&self) -> String {
        match self {
            Runner::Process(issuer) => issuer.log_text(),
            _ => panic!("this test reads the issuer's log: start it with Stack::process*"),
        }
    }

    pub async fn log_with(&self, needles: &[&str]) -> String {
        match self {
            Runner::Process(issuer) => issuer.log_with(needles).await,
            _ => panic!("this test reads the issuer's log: start it with Stack::process*"),
        }
    }
}

/// A mock, a temp dir and an issuer with the base env plus `extra`.
pub struct Stack {
    pub mock: MockWechat,
    pub issuer: Runner,
    pub dir: TempDir,
    pub http: reqwest::Client,
}

impl Stack {
    /// In this process ([`InProcess`]), with the base env plus `extra`.
    pub async fn start(extra: &[(&str, &str)]) -> Stack {
        Stack::start_with(MockConfig::default(), extra).await
    }

    pub async fn start_with(cfg: MockConfig, extra: &[(&str, &str)]) -> Stack {
        Stack::start_prepared(cfg, |_, _, _| {}, extra).await
    }

    /// [`Stack::start_with`], letting `prepare` change the base env (given the mock and the
    /// temp dir, e.g. to write an apps file there) before `extra` is applied.
    pub async fn start_prepared(
        cfg: MockConfig,
        prepare: impl FnOnce(&MockWechat, &Path, &mut HashMap<String, String>),
        extra: &[(&str, &str)],
    ) -> Stack {
        Stack::launch_with(cfg, prepare, extra, false, None).await
    }

    /// In this process on a manual clock (starting at the system's time), which the test
    /// advances instead of sleeping.
    pub async fn start_clocked(extra: &[(&str, &str)]) -> (Stack, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::starting_now());
        let stack = Stack::launch_with(
            MockConfig::default(),
            |_, _, _| {},
            extra,
            false,
            Some(Arc::clone(&clock) as Arc<dyn Clock>),
        )
        .await;
        (stack, clock)
    }

    /// The real binary ([`Issuer`]), for a test that needs its process.
    pub async fn process(extra: &[(&str, &str)]) -> Stack {
        Stack::process_with(MockConfig::default(), extra).await
    }

    pub async fn process_with(cfg: MockConfig, extra: &[(&str, &str)]) -> Stack {
        Stack::process_prepared(cfg, |_, _, _| {}, extra).await
    }

    pub async fn process_prepared(
        cfg: MockConfig,
        prepare: impl FnOnce(&MockWechat, &Path, &mut HashMap<String, String>),
        extra: &[(&str, &str)],
    ) -> Stack {
        Stack::launch_with(cfg, prepare, extra, true, None).await
    }

    /// [`Stack::start_prepared`] or, with `process`, [`Stack::process_prepared`].
    pub async fn launch(
        cfg: MockConfig,
        prepare: impl FnOnce(&MockWechat, &Path, &mut HashMap<String, String>),
        extra: &[(&str, &str)],
        process: bool,
    ) -> Stack {
        Stack::launch_with(cfg, prepare, extra, process, None).await
    }

    async fn launch_with(
        cfg: MockConfig,
        prepare: impl FnOnce(&MockWechat, &Path, &mut HashMap<String, String>),
        extra: &[(&str, &str)],
        process: bool,
        clock: Option<Arc<dyn Clock>>,
    ) -> Stack {
        let mock = MockWechat::start(cfg).await.unwrap();
        let dir = temp_dir("it");
        let mut env = base_env(&mock, dir.path());
        prepare(&mock, dir.path(), &mut env);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let issuer = if process {
            Runner::Process(
                tokio::task::spawn_blocking(move || Issuer::start(&env))
                    .await
                    .unwrap(),
            )
        } else {
            Runner::InProcess(
                InProcess::start(&env, clock.unwrap_or_else(|| Arc::new(SystemClock))).await,
            )
        };
        Stack {
            mock,
            issuer,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// Stops the issuer (as on SIGTERM; the process must exit cleanly) and starts it again on
    /// the same database.
    pub async fn restart(&mut self) {
        self.restart_after(|| {}).await;
    }

    /// Stops the issuer, runs `stopped` (an operator's work on its files), starts it again.
    pub async fn restart_after(&mut self, stopped: impl FnOnce()) {
        let env = self.issuer.env().clone();
        match std::mem::replace(&mut self.issuer, Runner::Restarting) {
            Runner::InProcess(issuer) => {
                let clock = Arc::clone(&issuer.clock);
                issuer.stop().await;
                stopped();
                self.issuer = Runner::InProcess(InProcess::start(&env, clock).await);
            }
            Runner::Process(mut issuer) => {
                let status =
                    tokio::task::block_in_place(|| issuer.terminate(Duration::from_secs(15)));
                assert!(status.success(), "issuer exit status {status:?}");
                stopped();
                self.issuer = Runner::Process(
                    tokio::task::spawn_blocking(move || Issuer::start(&env))
                        .await
                        .unwrap(),
                );
            }
            Runner::Restarting => unreachable!("restarting"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.issuer.url(path)
    }

    /// The in-process issuer's `App` (a stack started with [`Stack::start`] and its kin).
    pub fn app(&self) -> Arc<App> {
        match &self.issuer {
            Runner::InProcess(issuer) => Arc::clone(&issuer.app),
            _ => panic!("an in-process issuer"),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("weauth.db")
    }

    /// Counts rows of a table straight from the SQLite file.
    pub fn count(&self, table: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        split(response).await
    }

    pub async fn post_auth(
        &self,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.post(self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        split(request.send().await.unwrap()).await
    }

    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        split(request.send().await.unwrap()).await
    }

    /// Logs `user` in through the mock's `wx.login` stand-in; asserts 200.
    pub async fn login(&self, user: &str) -> Value {
        let code = self.mock.login(user).code;
        let (status, body, _) = self
            .post("/v1/login", serde_json::json!({ "code": code }))
            .await;
        assert_eq!(status, 200, "login {user}: {body}");
        body
    }

    /// A login of `user` held at the mock WeChat's `jscode2session` until `gate` is released
    /// (`mock.release(gate)`), under way once this returns; its task answers its status.
    pub async fn held_login(&self, user: &str, gate: &str) -> tokio::task::JoinHandle<u16> {
        let calls = self.mock.calls("jscode2session");
        self.mock.inject(
            "jscode2session",
            weauth_mock_wechat::Fault::Held(gate.into()),
            1,
        );
        let code = self.mock.login(user).code;
        let (http, url) = (self.http.clone(), self.url("/v1/login"));
        let login = tokio::spawn(async move {
            let response = http.post(url).json(&serde_json::json!({ "code": code }));
            response.send().await.unwrap().status().as_u16()
        });
        until_calls(&self.mock, "jscode2session", calls + 1).await;
        login
    }

    pub async fn feed(&self, since: u64, wait: u64) -> Value {
        let (status, body, _) = self
            .get(
                &format!("/v1/revocations?since={since}&wait={wait}"),
                Some(FEED),
            )
            .await;
        assert_eq!(status, 200, "feed: {body}");
        body
    }
}

pub async fn split(response: reqwest::Response) -> (u16, Value, reqwest::header::HeaderMap) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, body, headers)
}

/// The Prometheus text of the issuer's `/metrics` at `url`.
pub async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// The decoded payload of a JWT (no verification).
pub fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&weauth_token::b64::decode(part).unwrap()).unwrap()
}

/// The decoded header of a JWT.
pub fn header(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&weauth_token::b64::decode(part).unwrap()).unwrap()
}

/// Starts the issuer on the apps file `file` (and a SQLite file) with nothing else set, expects
/// it to refuse to start with exit 2, and returns its stderr.
pub fn start_error(file: &str) -> String {
    let dir = temp_dir("apps-bad");
    let path = dir.path().join("apps.json");
    std::fs::write(&path, file).unwrap();
    let output = Command::new(bin())
        .env_clear()
        .env("WEAUTH_APPS_FILE", &path)
        .env(
            "WEAUTH_STORE",
            format!("sqlite://{}", dir.path().join("x.db").display()),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The wall clock's milliseconds, in microseconds: what a start moves a new SQL store's
/// revocation seq to at least (`rules::seq_after_possible_loss`, from the issuer's clock in
/// milliseconds).
pub fn now_us() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(since.as_millis()).unwrap() * 1000
}

/// Waits (up to 10 s) until the mock WeChat has received `count` calls of `route`: a request
/// the issuer makes there is in flight.
pub async fn until_calls(mock: &MockWechat, route: &str, count: u64) {
    let started = Instant::now();
    while mock.calls(route) < count {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{route} was called {} times, not {count}, within 10 s",
            mock.calls(route)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
