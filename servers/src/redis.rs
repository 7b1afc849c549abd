//! A real `redis-server` (and `redis-sentinel`) for tests: started on a free loopback port
//! with its own data directory, AOF on with `appendfsync always`, killed on drop. Never a
//! mock. `make setup` installs the Debian packages when missing.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::{free_port, tail_file, temp_dir, Guard, ServerError};
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

    /// SIGSTOP: the server stops answering and keeps its connections open, as a host lost
    /// without closing them looks to its clients. [`RedisServer::resume`] undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
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

    /// Writes `keys` keys `filler:N` of `value_bytes` bytes each, through `redis-cli --pipe`
    /// (Redis's mass insertion: every reply is awaited, with no client-side timeout a loaded
    /// machine could run into) — to push a server past its `maxmemory`.
    ///
    /// # Errors
    /// `redis-cli` could not run, or it reported errors (a `noeviction` server out of memory).
    pub fn fill(&self, keys: usize, value_bytes: usize) -> Result<(), ServerError> {
        use std::io::Write;
        let value = "x".repeat(value_bytes);
        let mut commands = Vec::with_capacity(keys * (value_bytes + 48));
        for i in 0..keys {
            let key = format!("filler:{i}");
            // RESP: SET key value.
            let _ = write!(
                commands,
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            );
        }
        let mut child = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io_err("running redis-cli --pipe", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&commands)
                .map_err(|e| io_err("writing to redis-cli --pipe", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| io_err("waiting for redis-cli --pipe", e))?;
        let report = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && report.contains("errors: 0,") {
            Ok(())
        } else {
            Err(io_err(
                "filling redis",
                std::io::Error::other(format!(
                    "redis-cli --pipe: {report}{}",
                    String::from_utf8_lossy(&out.stderr)
                )),
            ))
        }
    }
}

/// A `redis-sentinel` watching `master` at `127.0.0.1:master_port` (quorum 2, 2 s down-after,
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
                 sentinel down-after-milliseconds {master} 2000\n\
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
    /// sentinel knows the two others (so a failover can be elected) and the replica (so it
    /// has one to promote: a sentinel learns of replicas from the primary's `INFO`, which it
    /// reads every 10 s — a primary killed before a sentinel has seen its replica in it is
    /// never failed over, and a test waiting for the failover waited in vain).
    ///
    /// # Errors
    /// A process did not start, or the set-up was not ready within 20 s.
    pub async fn start(dir: &Path) -> Result<SentinelSetup, ServerError> {
        SentinelSetup::start_with(dir, &[]).await
    }

    /// [`Self::start`], the primary started with `primary_args` too.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_with(
        dir: &Path,
        primary_args: &[&str],
    ) -> Result<SentinelSetup, ServerError> {
        let primary = RedisServer::start_in(&dir.join("primary"), primary_args).await?;
        // A name of its own: sentinels find each other through hello messages on the
        // primary's channel, naming the master. A sentinel of another set-up (another test
        // process, whose port picks are its own) watching a reused port would otherwise join
        // this one and, dead or not, count in the majority a failover needs.
        let master = format!("weauth-{}", primary.port());
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
                let (mut others, mut replicas) = (None, None);
                while let Some(line) = lines.next() {
                    match line.trim() {
                        "num-other-sentinels" => {
                            others = lines.next().map(|v| v.trim().to_string());
                        }
                        "num-slaves" => replicas = lines.next().map(|v| v.trim().to_string()),
                        _ => {}
                    }
                }
                others.as_deref() == Some("2") && replicas.as_deref() == Some("1")
            });
            if synced && known {
                return Ok(setup);
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err(ServerError {
                    what: format!(
                        "sentinel set-up not ready after 20 s (replica synced: {synced}, sentinels know each other and the replica: {known})"
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

    /// Fails the primary over to the replica with `SENTINEL FAILOVER` (the primary left
    /// running, as an operator's switch for maintenance does) and waits, 60 s at most, until
    /// the sentinels name the replica.
    ///
    /// # Errors
    /// The sentinels named no other primary within 60 s.
    pub async fn fail_over(&self) -> Result<(), ServerError> {
        let promoted = self.replica.port();
        let started = Instant::now();
        while self.current_primary_port() != Some(promoted) {
            if let Some(sentinel) = self.sentinels.first() {
                // Refused while a failover is in progress: asked again until one is done.
                cli(sentinel.port(), &["SENTINEL", "FAILOVER", &self.master]);
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(ServerError {
                    what: format!(
                        "no failover in 60 s: the sentinels name {:?}, the replica is :{promoted}",
                        self.current_primary_port()
                    ),
                    source: std::io::Error::other("timeout"),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
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

/// One node of a [`RedisCluster`]: `redis-server` under a [`Guard`], so a cluster shared by a
/// whole test binary through a `static` never outlives it.
struct ClusterNode {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    guard: Option<Guard>,
}

impl ClusterNode {
    fn spawn(&mut self) -> Result<(), ServerError> {
        let guard = Guard::spawn(&server_bin(), &self.args, &self.dir).map_err(|e| {
            io_err(
                "starting redis-server (install it with `make setup`, Debian package redis-server)",
                e,
            )
        })?;
        self.guard = Some(guard);
        wait_port_blocking(self.port, &self.dir.join("redis.log"))
    }

    /// SIGKILL, waiting until the process is gone.
    fn kill(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.kill();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_port_blocking(port: u16, log: &Path) -> Result<(), ServerError> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(ServerError {
                what: format!(
                    "redis on port {port} did not open within 10 s; log tail:\n{}",
                    tail_file(log, 20)
                ),
                source: std::io::Error::other("timeout"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `cluster-node-timeout` of a cluster whose tests fail a node over: a failover within
/// about three seconds of a kill. At 1 s, a node whose event loop stalled for a second (an
/// `appendfsync always` write on a busy disk, a starved CPU) could be failed over by the
/// others while a test was not looking for it, as happened to the shared cluster below.
const FAILOVER_NODE_TIMEOUT_MS: u64 = 2000;

/// `cluster-node-timeout` of the cluster a test binary shares ([`RedisCluster::shared`]),
/// whose tests never fail a node over: at 1 s, a node starved of the CPU for a second on a
/// loaded machine was marked failed by the others, and every command answered `ClusterDown`
/// until it came back (a contract test failed so, once, in a full run as a normal user).
const SHARED_NODE_TIMEOUT_MS: u64 = 5000;

/// A real Redis Cluster: 6 `redis-server`s on free loopback ports (3 primaries, 3 replicas),
/// each with its own data directory, AOF with `appendfsync always`, `cluster-node-timeout
/// 2000` (5000 for the shared one), formed with `redis-cli --cluster create`. Blocking (std processes and sleeps), so
/// one can be shared by every test of a binary ([`RedisCluster::shared`]); nodes are killed
/// when it is dropped or the test process ends.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    _temp: Option<TempDir>,
}

impl RedisCluster {
    /// Starts 6 nodes and forms the cluster; returns once every node reports `cluster_state:ok`
    /// and every primary has its replica online.
    ///
    /// # Errors
    /// A node did not start, `redis-cli --cluster create` failed, or the cluster was not ready
    /// within 30 s.
    pub fn start() -> Result<RedisCluster, ServerError> {
        RedisCluster::start_with_node_timeout(FAILOVER_NODE_TIMEOUT_MS)
    }

    /// As [`RedisCluster::start`], with `cluster-node-timeout` `node_timeout_ms`.
    fn start_with_node_timeout(node_timeout_ms: u64) -> Result<RedisCluster, ServerError> {
        let temp = temp_dir("weauth-redis-cluster").map_err(|e| io_err("creating temp dir", e))?;
        let mut cluster = RedisCluster::start_nodes(temp.path(), node_timeout_ms)?;
        cluster._temp = Some(temp);
        Ok(cluster)
    }

    /// As [`RedisCluster::start`], the nodes' directories under `root` (`node0` … `node5`).
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    pub fn start_in(root: &Path) -> Result<RedisCluster, ServerError> {
        RedisCluster::start_nodes(root, FAILOVER_NODE_TIMEOUT_MS)
    }

    fn start_nodes(root: &Path, node_timeout_ms: u64) -> Result<RedisCluster, ServerError> {
        let mut nodes = Vec::new();
        for i in 0..6 {
            let dir = root.join(format!("node{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| io_err("creating redis dir", e))?;
            // The cluster bus gets its own port from the harness's range too (`cluster-port`,
            // Redis 7): by default it is port + 10000, inside the ephemeral range, where an
            // outgoing connection can take it while a killed node is down and fail its restart.
            let port = free_port().map_err(|e| io_err("finding a free port", e))?;
            let bus_port = free_port().map_err(|e| io_err("finding a free port", e))?;
            let args: Vec<String> = [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus_port.to_string(),
                "--dir",
                &dir.to_string_lossy(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout_ms.to_string(),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
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
            let mut node = ClusterNode {
                port,
                dir,
                args,
                guard: None,
            };
            node.spawn()?;
            nodes.push(node);
        }
        let cluster = RedisCluster { nodes, _temp: None };
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_err("running redis-cli --cluster create", e))?;
        if !out.status.success() {
            return Err(ServerError {
                what: format!(
                    "redis-cli --cluster create failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                source: std::io::Error::other("cluster create"),
            });
        }
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// One cluster for the whole test binary, started on first use (tests keep apart with a
    /// fresh key prefix each).
    ///
    /// # Panics
    /// The cluster could not be started (the reason is in the message).
    pub fn shared() -> &'static RedisCluster {
        use std::sync::OnceLock;
        static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();
        let start = || {
            RedisCluster::start_with_node_timeout(SHARED_NODE_TIMEOUT_MS).map_err(|e| e.to_string())
        };
        match SHARED.get_or_init(start) {
            Ok(cluster) => cluster,
            Err(err) => panic!("starting the shared Redis Cluster: {err}"),
        }
    }

    /// Waits until every running node says `cluster_state:ok` and every primary reports
    /// its replicas online (`connected_slaves` ≥ 1).
    ///
    /// # Errors
    /// Not ready within `within` (the nodes' views are in the message).
    pub fn wait_ready(&self, within: Duration) -> Result<(), ServerError> {
        let start = Instant::now();
        loop {
            let mut ready = true;
            let mut views = String::new();
            for node in self.nodes.iter().filter(|n| n.guard.is_some()) {
                let info = cli(node.port, &["cluster", "info"]);
                let replication = cli(node.port, &["info", "replication"]);
                let ok = info.contains("cluster_state:ok");
                let primary = replication.contains("role:master");
                let replicated = !primary || !replication.contains("connected_slaves:0");
                ready &= ok && replicated;
                views.push_str(&format!(
                    "{}: ok={ok} primary={primary} replicated={replicated}\n",
                    node.port
                ));
            }
            if ready {
                return Ok(());
            }
            if start.elapsed() > within {
                return Err(ServerError {
                    what: format!("the Redis Cluster was not ready within {within:?}:\n{views}"),
                    source: std::io::Error::other("timeout"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…/` naming every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// The port of the primary serving `key`'s slot now (asked of the running nodes).
    pub fn primary_of(&self, key: &str) -> Option<u16> {
        let running: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.guard.is_some())
            .map(|n| n.port)
            .collect();
        for port in running {
            let slot = cli(port, &["cluster", "keyslot", key]);
            let Ok(slot) = slot.trim().parse::<u16>() else {
                continue;
            };
            let shards = cli(port, &["cluster", "slots"]);
            // redis-cli prints CLUSTER SLOTS flattened: start, end, then the primary's ip,
            // port, id, then the replicas'.
            let lines: Vec<&str> = shards.lines().map(str::trim).collect();
            let mut i = 0;
            while i + 3 < lines.len() {
                if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                {
                    if lines[i + 2] == "127.0.0.1" && (start..=end).contains(&slot) {
                        return lines[i + 3].parse().ok();
                    }
                }
                i += 1;
            }
        }
        None
    }

    /// SIGKILL of the node on `port` (nothing flushed beyond what `appendfsync always` wrote).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Restarts a killed node with its data directory (it rejoins, as a replica if it was
    /// failed over).
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    pub fn restart(&mut self, port: u16) -> Result<(), ServerError> {
        match self.nodes.iter_mut().find(|n| n.port == port) {
            Some(node) => node.spawn(),
            None => Ok(()),
        }
    }

    /// Runs `redis-cli ARGS…` against the node on `port` and returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }

    /// The ports of the running primaries.
    pub fn primaries(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.guard.is_some())
            .filter(|n| cli(n.port, &["info", "replication"]).contains("role:master"))
            .map(|n| n.port)
            .collect()
    }

    /// Moves the `count` lowest slots of the primary on `from` to the primary on `to` with
    /// `redis-cli --cluster reshard` (keys move by `MIGRATE`, 10 a step, while clients keep
    /// writing). Retried while `redis-cli` finds the nodes not yet agreeing (after a failover)
    /// until `within` is over.
    ///
    /// # Errors
    /// `redis-cli` failed (its output is in the message).
    pub fn reshard(
        &self,
        from: u16,
        to: u16,
        count: usize,
        within: Duration,
    ) -> Result<String, ServerError> {
        let id = |port: u16| cli(port, &["cluster", "myid"]).trim().to_string();
        let started = Instant::now();
        loop {
            let out = std::process::Command::new("redis-cli")
                .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
                .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
                .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| io_err("running redis-cli --cluster reshard", e))?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // redis-cli checks the cluster first and moves nothing while it finds a problem.
            let refused = text.contains("fix your cluster problems");
            if out.status.success() && !refused && !text.contains("[ERR]") {
                return Ok(text);
            }
            if !refused || started.elapsed() > within {
                return Err(ServerError {
                    what: format!("redis-cli --cluster reshard failed:\n{text}"),
                    source: std::io::Error::other("cluster reshard"),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
