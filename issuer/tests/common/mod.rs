//! Shared harness of the issuer's integration tests: runs the REAL `weauth-issuer` binary on
//! a loopback port it picks itself (`WEAUTH_LISTEN=127.0.0.1:0`, address read from its
//! `listening on ADDR` log line) with a SQLite file in a fresh temp directory, against the
//! in-process mock WeChat of `weauth-tests`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use weauth_tests::mock_wechat::{MockConfig, MockWechat};

pub const APPID: &str = "wx0123456789abcdef";
pub const FEED: &str = "test-feed-token";
pub const ADMIN: &str = "test-admin-token";

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

/// A mock, a temp dir and an issuer with the base env plus `extra`.
pub struct Stack {
    pub mock: MockWechat,
    pub issuer: Issuer,
    pub dir: TempDir,
    pub http: reqwest::Client,
}

impl Stack {
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
        let mock = MockWechat::start(cfg).await.unwrap();
        let dir = temp_dir("it");
        let mut env = base_env(&mock, dir.path());
        prepare(&mock, dir.path(), &mut env);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let issuer = tokio::task::spawn_blocking(move || Issuer::start(&env))
            .await
            .unwrap();
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

    /// Stops the issuer (SIGTERM, clean exit expected) and starts it again on the same DB.
    pub async fn restart(&mut self) {
        let status = tokio::task::block_in_place(|| self.issuer.terminate(Duration::from_secs(15)));
        assert!(status.success(), "issuer exit status {status:?}");
        let env = self.issuer.env.clone();
        self.issuer = tokio::task::spawn_blocking(move || Issuer::start(&env))
            .await
            .unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        self.issuer.url(path)
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
