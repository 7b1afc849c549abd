//! A real MariaDB server (`mariadbd`) for tests: its own data directory made by
//! `mariadb-install-db`, a free loopback port, a user `weauth` (password `weauth`) with every
//! privilege, default durability (`innodb_flush_log_at_trx_commit=1`). Never a mock.
//! `make setup` installs Debian's `mariadb-server` when missing.
//!
//! Two ways to have one:
//! - [`MariaDb::start`]: a server of the caller's own, killed on drop (tests that SIGKILL or
//!   restart it);
//! - [`shared`]: one server per test process, started at first use (about 3 s), each test
//!   taking a fresh database from it ([`MariaDb::create_database`]). A watchdog shell kills
//!   it and removes its directory once the test process is gone (a static is never dropped).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, tail_file, temp_dir, Guard, ServerError};

/// The user every test server has (all privileges, from 127.0.0.1).
pub const USER: &str = "weauth";
/// Its password.
pub const PASSWORD: &str = "weauth";

fn io_err(what: &str, err: std::io::Error) -> ServerError {
    ServerError {
        what: what.to_string(),
        source: err,
    }
}

fn bin(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        ["/usr/sbin", "/usr/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(default))
            .find(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(default))
    })
}

/// `mariadbd`: `WEAUTH_MARIADBD_BIN`, else `/usr/sbin/mariadbd`.
pub fn server_bin() -> PathBuf {
    bin("WEAUTH_MARIADBD_BIN", "mariadbd")
}

/// Makes the data directory `dir/data` (system tables, no test database) and the init file
/// creating the `weauth` user.
fn install(dir: &Path) -> Result<(), ServerError> {
    let data = dir.join("data");
    // Its own tmpdir: the bootstrap's internal temporary tables in the shared /tmp were seen
    // to vanish under it (`Could not remove temporary table` then `Unknown table
    // 'mysql.tmp_user_sys'`) while other tests ran.
    std::fs::create_dir_all(dir.join("tmp")).map_err(|e| io_err("creating the tmpdir", e))?;
    let output = std::process::Command::new(bin("WEAUTH_MARIADB_INSTALL_DB_BIN", "mariadb-install-db"))
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            "--innodb-log-file-size=16M",
        ])
        .args(user_args())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            io_err(
                "running mariadb-install-db (install it with `make setup`, Debian package mariadb-server)",
                e,
            )
        })?;
    if !output.status.success() {
        return Err(io_err(
            "mariadb-install-db",
            std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
        ));
    }
    std::fs::write(
        dir.join("init.sql"),
        format!(
            "CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';\n\
             GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION;\n"
        ),
    )
    .map_err(|e| io_err("writing init.sql", e))
}

/// `--user=root` when running as root (mariadbd refuses root unless told so); nothing for a
/// normal user (the server runs as that user; `--user=NAME` would make `mariadb-install-db`
/// try to chown the datadir, which only root may). The effective uid is the owner of
/// `/proc/self`.
fn user_args() -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        vec!["--user=root".into()]
    } else {
        Vec::new()
    }
}

fn server_args(dir: &Path, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--no-defaults".into(),
        format!("--datadir={}", dir.join("data").display()),
        format!("--tmpdir={}", dir.join("tmp").display()),
        format!("--socket={}", dir.join("mysqld.sock").display()),
        format!("--pid-file={}", dir.join("mysqld.pid").display()),
        format!("--log-error={}", dir.join("error.log").display()),
        format!("--init-file={}", dir.join("init.sql").display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".into(),
        "--skip-name-resolve".into(),
        "--innodb-buffer-pool-size=32M".into(),
        "--innodb-log-file-size=16M".into(),
        "--max-connections=400".into(),
    ];
    args.extend(user_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Waits until `weauth` can log in (the init file has run), up to 30 s.
async fn wait_ready(port: u16, dir: &Path) -> Result<(), ServerError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && client_sql(port, "SELECT 1").is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io_err(
                "mariadbd did not accept logins within 30 s",
                std::io::Error::other(tail_file(&dir.join("error.log"), 20)),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `sql` with the `mariadb` client as `weauth`.
fn client_sql(port: u16, sql: &str) -> Result<String, ServerError> {
    let output = std::process::Command::new(bin("WEAUTH_MARIADB_CLIENT_BIN", "mariadb"))
        .args(["--no-defaults", "-h", "127.0.0.1", "-P", &port.to_string()])
        .args(["-u", USER, &format!("-p{PASSWORD}"), "-N", "-B", "-e", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_err("running the mariadb client", e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(io_err(
            "mariadb client",
            std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
        ))
    }
}

/// One `mariadbd` with its own data directory.
pub struct MariaDb {
    guard: Option<Guard>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    _temp: Option<TempDir>,
}

impl MariaDb {
    /// A server in a fresh temp directory, killed on drop; `extra` are more `--name=value`
    /// server options (e.g. `--innodb-flush-log-at-trx-commit=2`).
    ///
    /// # Errors
    /// The binaries are missing, or the server did not accept logins within 30 s.
    pub async fn start(extra: &[&str]) -> Result<MariaDb, ServerError> {
        let temp = temp_dir("weauth-mariadb").map_err(|e| io_err("creating temp dir", e))?;
        let dir = temp.path().to_path_buf();
        MariaDb::launch(dir, Some(temp), extra).await
    }

    /// A server whose data directory is `dir/data` (made when missing, kept otherwise: `make
    /// up` finds its data again), killed on drop.
    ///
    /// # Errors
    /// As [`MariaDb::start`].
    pub async fn start_in(dir: &Path, extra: &[&str]) -> Result<MariaDb, ServerError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating the mariadb dir", e))?;
        MariaDb::launch(dir.to_path_buf(), None, extra).await
    }

    async fn launch(
        dir: PathBuf,
        temp: Option<TempDir>,
        extra: &[&str],
    ) -> Result<MariaDb, ServerError> {
        if !dir.join("data").join("mysql").is_dir() {
            install(&dir)?;
        }
        std::fs::create_dir_all(dir.join("tmp")).map_err(|e| io_err("creating the tmpdir", e))?;
        let port = free_port().map_err(|e| io_err("finding a free port", e))?;
        let mut server = MariaDb {
            guard: None,
            port,
            args: server_args(&dir, port, extra),
            dir,
            _temp: temp,
        };
        server.restart().await?;
        Ok(server)
    }

    /// (Re)starts the process on the same port and data directory (InnoDB recovers).
    ///
    /// # Errors
    /// As [`MariaDb::start`].
    pub async fn restart(&mut self) -> Result<(), ServerError> {
        let guard = Guard::spawn(&server_bin(), &self.args, &self.dir).map_err(|e| {
            io_err(
                "starting mariadbd (install it with `make setup`, Debian package mariadb-server)",
                e,
            )
        })?;
        self.guard = Some(guard);
        wait_ready(self.port, &self.dir).await
    }

    /// SIGKILL: nothing flushed beyond what InnoDB's redo log already holds. Returns once the
    /// process is gone (a restart can take its data directory's locks).
    pub async fn kill(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.kill();
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://weauth:weauth@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL as `weauth` (the `mariadb` client); returns its tab-separated output.
    ///
    /// # Errors
    /// The client failed (the message has the server's error).
    pub fn sql(&self, sql: &str) -> Result<String, ServerError> {
        client_sql(self.port, sql)
    }

    /// A new, empty database with a unique name; returns the name.
    ///
    /// # Errors
    /// As [`MariaDb::sql`].
    pub fn create_database(&self) -> Result<String, ServerError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.sql(&format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }
}

/// The shared server of this test process (see the module docs).
pub struct Shared {
    port: u16,
}

impl Shared {
    /// `mysql://weauth:weauth@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// As [`MariaDb::sql`].
    ///
    /// # Errors
    /// As [`MariaDb::sql`].
    pub fn sql(&self, sql: &str) -> Result<String, ServerError> {
        client_sql(self.port, sql)
    }

    /// As [`MariaDb::create_database`].
    ///
    /// # Errors
    /// As [`MariaDb::sql`].
    pub fn create_database(&self) -> Result<String, ServerError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("s{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.sql(&format!("CREATE DATABASE {name}"))?;
        Ok(name)
    }
}

/// This process's shared server, started at the first call.
///
/// # Errors
/// The server could not be started (the error is the same for every later call).
pub fn shared() -> Result<&'static Shared, String> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| start_shared().map_err(|err| err.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

fn start_shared() -> Result<Shared, ServerError> {
    let temp = temp_dir("weauth-mariadb-shared").map_err(|e| io_err("creating temp dir", e))?;
    // The watchdog removes the directory; a TempDir dropped here would remove it now.
    let dir = temp.keep();
    install(&dir)?;
    let port = free_port().map_err(|e| io_err("finding a free port", e))?;
    // SIGINT, SIGTERM and SIGHUP ignored: as for a [`Guard`], the Ctrl-C that ends the test
    // process must leave the watchdog to kill the server (`mariadbd` ignores SIGINT).
    let mut script = String::from("trap '' INT TERM HUP; \"$0\" \"$@\" & server=$!; ");
    // Poll the test process (our parent's pid, passed in) every 200 ms; when it is gone (or
    // the server died), SIGKILL the server and remove the directory.
    script.push_str(&format!(
        "while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 0.2; done; \
         kill -9 $server 2>/dev/null; wait $server 2>/dev/null; rm -rf '{dir}'",
        parent = std::process::id(),
        dir = dir.display()
    ));
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(server_bin())
        .args(server_args(&dir, port, &[]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io_err("starting mariadbd", e))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client_sql(port, "SELECT 1").is_err() {
        if Instant::now() > deadline {
            return Err(io_err(
                "mariadbd did not accept logins within 30 s",
                std::io::Error::other(tail_file(&dir.join("error.log"), 20)),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Shared { port })
}
