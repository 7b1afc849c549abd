//! Real servers for tests, on free loopback ports with their own data directories, killed
//! on drop: [`redis`] (`redis-server`, Sentinel) and [`mariadb`] (`mariadbd`), and a TCP
//! [`relay`] whose connections can be made to go silent. Never a fake:
//! a test that claims to test a store runs it on the real server. `make setup` installs the
//! Debian packages when missing.
//!
//! Shared by the issuer's store tests and the end-to-end harness (`weauth-tests`), which
//! re-exports [`free_port`], [`temp_dir`] and the log-tail helpers.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

use rand::Rng;
use tempfile::TempDir;

pub mod mariadb;
pub mod redis;
pub mod relay;

/// A server could not be started or did not become ready: what was being done, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct ServerError {
    /// What was being done (with a log tail where the server wrote one).
    pub what: String,
    /// The I/O error behind it.
    #[source]
    pub source: io::Error,
}

/// Longest log line printed (Envoy's start-up lines list every extension).
const TAIL_LINE_CHARS: usize = 300;

/// A test that cannot run here says why: printed (shown with `--nocapture`) and appended to
/// the file `WEAUTH_SKIPPED_LOG` names, which `make test` sets and prints at its end — cargo
/// hides a passing test's output, so a skip printed only would read as a pass.
pub fn report_skip(reason: &str) {
    println!("SKIPPED {reason}");
    if let Some(path) = std::env::var_os("WEAUTH_SKIPPED_LOG") {
        use std::io::Write as _;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| writeln!(file, "{reason}"));
        if let Err(err) = appended {
            println!("(could not record the skip in WEAUTH_SKIPPED_LOG: {err})");
        }
    }
}

/// Creates `<temp>/<prefix>-<random>`, removed on drop — or kept when `WEAUTH_KEEP_TMP` is set,
/// for post-mortems.
pub fn temp_dir(prefix: &str) -> io::Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .disable_cleanup(std::env::var_os("WEAUTH_KEEP_TMP").is_some())
        .tempdir()
}

/// Where [`free_port`] looks: below Linux's ephemeral range (32768–60999 by default).
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A free loopback port for a process the harness starts (bound then released).
///
/// Taken from [`PORT_RANGE`], below the ephemeral range, never twice in one test process: a
/// port the kernel picked for `bind(0)` is an ephemeral port, which any outgoing connection
/// (a test client, Envoy's upstream pool) may take before the child binds it, and then the
/// child fails with "Address already in use" (seen on a loaded machine). Each pick is random in
/// the range, so the test processes running side by side (`make test` runs two streams) seldom
/// pick the same port before its child binds it: they once each walked the range from a
/// random start, and two walks that met went on meeting (Envoy's admin port taken by another
/// binary's child, seen in a full run). A port found busy is skipped.
///
/// # Errors
/// No port of the range could be bound.
pub fn free_port() -> io::Result<u16> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let given = given.get_or_insert_with(HashSet::new);
    let mut rng = rand::thread_rng();
    for _ in 0..4 * usize::from(PORT_RANGE.end - PORT_RANGE.start) {
        let port = rng.gen_range(PORT_RANGE);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free loopback port in {PORT_RANGE:?}"),
    ))
}

/// A server process under a guard `sh`: the guard SIGKILLs the server (and reaps it) once its
/// stdin — a pipe from this process — reaches end of file, which happens when
/// [`Guard::kill`] closes it, when the guard is dropped, or when the test process ends in any
/// way at all (a `static` server is never dropped; a Ctrl-C or SIGTERM runs no destructor). The
/// guard ignores SIGINT, SIGTERM and SIGHUP, so the Ctrl-C of `make test`, which reaches the
/// whole process group, cannot end it before it has killed its server: the server would
/// outlive the run (`mariadbd` ignores SIGINT, and a non-interactive shell starts a background
/// job with SIGINT ignored).
pub(crate) struct Guard {
    child: std::process::Child,
}

impl Guard {
    /// Starts `bin args` in `dir` under a guard (`bin` without a `/` is looked up in `PATH`).
    pub(crate) fn spawn(bin: &Path, args: &[String], dir: &Path) -> io::Result<Guard> {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .arg(bin)
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Ok(Guard {
            child: command.spawn()?,
        })
    }

    /// SIGKILLs the server and waits until it is gone (its port and files released).
    pub(crate) fn kill(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe is the signal; the guard kills and reaps the server by itself.
        drop(self.child.stdin.take());
    }
}

/// The guard: `$0` is the server's binary, `"$@"` its arguments.
const GUARD_SCRIPT: &str =
    "trap '' INT TERM HUP; \"$0\" \"$@\" & pid=$!; cat >/dev/null; kill -9 $pid; wait $pid";

/// The last `n` lines of `text`, each cut to [`TAIL_LINE_CHARS`] characters.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| match l.char_indices().nth(TAIL_LINE_CHARS) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => (*l).to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of the file at `path` (reads at most its last 256 KiB).
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(256 * 1024);
            tail_lines(&String::from_utf8_lossy(&bytes[start..]), n)
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_below_the_ephemeral_range_never_twice_in_a_process() {
        // Not bound again here: the other test processes of a run take ports from the same
        // range, and one had taken a port given here before this test re-bound it (a failed
        // CI run as a normal user). That a port was free when given is `free_port`'s own bind.
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        for port in &ports {
            assert!(PORT_RANGE.contains(port), "{port}");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn tail_lines_keeps_last_n() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 3), "");
    }

    #[test]
    fn tail_lines_long_line_cut() {
        let long = "é".repeat(TAIL_LINE_CHARS + 10);
        let out = tail_lines(&long, 1);
        assert_eq!(out.chars().count(), TAIL_LINE_CHARS + 1);
        assert!(out.ends_with('…'));
    }

    #[test]
    fn temp_dir_removed_on_drop() {
        let dir = temp_dir("weauth-unit").unwrap();
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        if std::env::var_os("WEAUTH_KEEP_TMP").is_none() {
            assert!(!path.exists());
        }
    }

    /// The child side of [`a_guarded_server_dies_with_the_test_process_on_ctrl_c`]: a server
    /// under a guard, then sleeps until a signal ends this process.
    fn guard_child(dir: &Path) {
        let server = [
            "-c".to_string(),
            "echo $$ > server.pid; exec sleep 600".to_string(),
        ];
        let _guard = Guard::spawn(Path::new("sh"), &server, dir).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(600));
    }

    /// A Ctrl-C of `make test` reaches the whole process group; the server (here `sleep`,
    /// started as a background job, so with SIGINT ignored as `mariadbd` ignores it) must still
    /// be gone once the test process is.
    #[test]
    fn a_guarded_server_dies_with_the_test_process_on_ctrl_c() {
        use std::os::unix::process::CommandExt;
        use std::time::{Duration, Instant};
        const CHILD: &str = "WEAUTH_GUARD_TEST_CHILD";
        if let Some(dir) = std::env::var_os(CHILD) {
            return guard_child(Path::new(&dir));
        }
        let dir = temp_dir("weauth-guard").unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::a_guarded_server_dies_with_the_test_process_on_ctrl_c",
                "--nocapture",
            ])
            .env(CHILD, dir.path())
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid_file = dir.path().join("server.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        let server = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the child started no server");
            std::thread::sleep(Duration::from_millis(20));
        };
        let alive = || Path::new(&format!("/proc/{server}")).exists();
        assert!(alive());
        // Ctrl-C: SIGINT to the child's whole process group.
        let status = std::process::Command::new("kill")
            .args(["-INT", "--", &format!("-{}", child.id())])
            .status()
            .unwrap();
        assert!(status.success());
        let status = child.wait().unwrap();
        assert!(!status.success(), "{status:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() {
            if Instant::now() > deadline {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &server.to_string()])
                    .status();
                panic!("the server (pid {server}) outlived the test process");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
