//! A real `redis-server` (and `redis-sentinel`) for tests: started on a free loopback port
//! with its own data directory, AOF on with `appendfsync always`, killed on drop. Never a
//! mock. `make setup` installs the Debian packages when missing.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::{free_port, tail_file, temp_dir, ServerError};
use tempfile::TempDir;

/// The `redis-server` binary: `WEAUTH_REDIS_SERVER_BIN`, else `redis-server` on the PATH.
pub fn server_bin() -> PathBuf {
    std::env::var_os("WEAUTH_REDIS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn io_err(what: &str, err: std::io::Error) -> ServerError {
    ServerError {
        what: what.to_string(),
        source: err,
    }
}

/// One `redis-server` (a primary, or a replica of one).
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    _temp: Option<TempDir>,
}

impl RedisServer {
    /// A primary in a fresh temp directory.
    ///
    /// # Errors
    /// The binary is missing, or the server did not accept connections within 10 s.
    pub async fn start() -> Result<RedisServer, ServerError> {
        let temp = temp_dir("weauth-redis").map_err(|e| io_err("creating temp dir", e))?;
        let dir = temp.path().to_path_buf();
        let mut server = RedisServer::start_in(&dir, &[]).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// A server in `dir` (created if needed) with extra `--name value` arguments (for
    /// example `["--replicaof", "127.0.0.1 6380"]`).
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub async fn start_in(dir: &Path, extra: &[&str]) -> Result<RedisServer, ServerError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating redis dir", e))?;
        let port = free_port().map_err(|e| io_err("finding a free port", e))?;
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dir",
            &dir.to_string_lossy(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer {
            child: None,
            port,
            dir: dir.to_path_buf(),
            args,
            _temp: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// (Re)starts the process with the same port, directory and settings (AOF replayed).
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub async fn restart(&mut self) -> Result<(), ServerError> {
        let mut cmd = Command::new(server_bin());
        cmd.args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            io_err(
                "starting redis-server (install it with `make setup`, Debian package redis-server)",
                e,
            )
        })?;
        self.child = Some(child);
        wait_port(self.port, &self.dir.join("redis.log")).await
    }

    /// SIGKILL (nothing flushed beyond what `appendfsync always` already wrote).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/db`.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A `redis-sentinel` watching `master` at `127.0.0.1:master_port` (quorum 2, 1 s down-after,
/// 3 s failover timeout: a failover attempt that fails — a split vote between the three
/// sentinels, likelier on a loaded machine — is tried again after twice that, 6 s, not 20 s,
/// which the failover tests' 20 s bound for writes to resume could not absorb).
pub struct Sentinel {
    child: Option<Child>,
    port: u16,
}

impl Sentinel {
    /// Starts a sentinel with its own config file in `dir`.
    ///
    /// # Errors
    /// The binary is missing or the port never opened.
    pub async fn start(
        dir: &Path,
        master: &str,
        master_port: u16,
        quorum: u32,
    ) -> Result<Sentinel, ServerError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating sentinel dir", e))?;
        let port = free_port().map_err(|e| io_err("finding a free port", e))?;
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\nprotected-mode no\ndir {dir}\nlogfile sentinel.log\n\
                 sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 3000\n\
                 sentinel parallel-syncs {master} 1\n",
                dir = dir.display()
            ),
        )
        .map_err(|e| io_err("writing sentinel.conf", e))?;
        let bin = std::env::var_os("WEAUTH_REDIS_SENTINEL_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-sentinel"));
        let child = Command::new(bin)
            .arg(&conf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                io_err(
                    "starting redis-sentinel (Debian package redis-sentinel, `make setup`)",
                    e,
                )
            })?;
        wait_port(port, &dir.join("sentinel.log")).await?;
        Ok(Sentinel {
            child: Some(child),
            port,
        })
    }

    /// The sentinel's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

async fn wait_port(port: u16, log: &Path) -> Result<(), ServerError> {
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(ServerError {
                what: format!(
                    "redis on port {port} did not open within 10 s; log tail:\n{}",
                    tail_file(log, 20)
                ),
                source: std::io::Error::other("timeout"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `redis-cli -p PORT ARGS...` and returns its output (for set-up checks).
fn cli(port: u16, args: &[&str]) -> String {
    std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// A primary, one replica and three sentinels (quorum 2) on loopback, for failover tests.
pub struct SentinelSetup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
    pub master: String,
}

impl SentinelSetup {
    /// Starts everything under `dir` and waits until the replica is in sync and every
    /// sentinel knows the two others (so a failover can be elected).
    ///
    /// # Errors
    /// A process did not start, or the set-up was not ready within 20 s.
    pub async fn start(dir: &Path) -> Result<SentinelSetup, ServerError> {
        let master = "weauth".to_string();
        let primary = RedisServer::start_in(&dir.join("primary"), &[]).await?;
        let replica_of = format!("127.0.0.1 {}", primary.port());
        let replica =
            RedisServer::start_in(&dir.join("replica"), &["--replicaof", &replica_of]).await?;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            sentinels.push(
                Sentinel::start(
                    &dir.join(format!("sentinel{i}")),
                    &master,
                    primary.port(),
                    2,
                )
                .await?,
            );
        }
        let setup = SentinelSetup {
            primary,
            replica,
            sentinels,
            master,
        };
        let started = Instant::now();
        loop {
            let synced = cli(setup.replica.port(), &["INFO", "replication"])
                .contains("master_link_status:up");
            let known = setup.sentinels.iter().all(|s| {
                let out = cli(s.port(), &["SENTINEL", "master", &setup.master]);
                let mut lines = out.lines();
                let mut others = None;
                while let Some(line) = lines.next() {
                    if line.trim() == "num-other-sentinels" {
                        others = lines.next().map(|v| v.trim().to_string());
                    }
                }
                others.as_deref() == Some("2")
            });
            if synced && known {
                return Ok(setup);
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err(ServerError {
                    what: format!(
                        "sentinel set-up not ready after 20 s (replica synced: {synced}, sentinels know each other: {known})"
                    ),
                    source: std::io::Error::other("timeout"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/weauth/0`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{}/0", hosts.join(","), self.master)
    }

    /// The port the sentinels currently name as primary.
    pub fn current_primary_port(&self) -> Option<u16> {
        let out = cli(
            self.sentinels.first()?.port(),
            &["SENTINEL", "get-master-addr-by-name", &self.master],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }
}
