//! Child processes of the benchmark (Envoy, the revocation check, wrk) and what the driver reads
//! about them from `/proc`. Every child is killed by its own pid when its handle drops; the
//! driver never signals a process it did not start.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::parse::{proc_stat_cpu_ticks, proc_status_rss_kib, ParseError};

/// Why a `/proc` read failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read /proc/{pid}: {source}")]
    Read { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}: {source}")]
    Parse { pid: u32, source: ParseError },
}

/// User + system CPU ticks of process `pid`, all threads.
pub fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| ProcError::Read { pid, source })?;
    proc_stat_cpu_ticks(&text).map_err(|source| ProcError::Parse { pid, source })
}

/// Resident memory of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| ProcError::Read { pid, source })?;
    proc_status_rss_kib(&text).map_err(|source| ProcError::Parse { pid, source })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux default, if that fails).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A child process killed (SIGKILL, by pid) and reaped when dropped.
pub struct Owned {
    pub child: Child,
}

impl Owned {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` pinned to `cpus` with `taskset`, stdout and stderr appended to `log`.
pub fn spawn_pinned(
    cpus: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    envs: &[(&str, &str)],
) -> std::io::Result<Owned> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpus).arg(program).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()?;
    Ok(Owned { child })
}

/// A free TCP port on 127.0.0.1: the harness's, drawn below the ephemeral range.
pub use weauth_tests::harness::free_port;

/// Whether process `pid` exists and is not a zombie (an exited child not yet reaped).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let close = stat.rfind(')')?;
            stat[close + 1..]
                .split_whitespace()
                .next()
                .map(|s| s != "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_self_true_unknown_false() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX - 1));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
