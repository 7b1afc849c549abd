//! A real Prometheus (Debian's `prometheus`; `make monitoring-tools` installs it) scraping a
//! stack with the shipped `deploy/monitoring/prometheus.yml`: `make up MONITOR=1` runs it on
//! 127.0.0.1:9090, tests/tests/monitoring.rs on a free port with a 1 s scrape interval.
//!
//! [`config`] is pure: it points the shipped jobs (`weauth-issuer`, `weauth-envoy`) at the
//! stack's ports and the rule file at an absolute path; everything else stays as shipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::harness::{tail_file, workspace_root, HarnessError};

/// How long Prometheus may take to answer `/-/ready` (it replays an empty WAL: seconds, but a
/// loaded 2-core machine is slow).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `prometheus` binary: `WEAUTH_PROMETHEUS_BIN`, else `prometheus` on the PATH.
pub fn bin() -> PathBuf {
    std::env::var_os("WEAUTH_PROMETHEUS_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("prometheus"))
}

/// `deploy/monitoring/`.
pub fn monitoring_dir() -> PathBuf {
    workspace_root().join("deploy/monitoring")
}

/// What Prometheus scrapes: `host:port` of each issuer replica and of Envoy's admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub issuers: Vec<String>,
    pub envoy_admin: String,
}

/// The shipped configuration `shipped` (YAML) with the `weauth-issuer` and `weauth-envoy` jobs
/// scraping `targets`, `rule_files` set to `rules`, and, when given, the scrape and evaluation
/// interval set to `interval` (e.g. `"1s"`).
///
/// # Errors
/// The YAML does not parse, or a job is missing (the text says which).
pub fn config(
    shipped: &str,
    targets: &Targets,
    rules: &Path,
    interval: Option<&str>,
) -> Result<String, String> {
    let mut cfg: Value =
        serde_yaml_ng::from_str(shipped).map_err(|e| format!("prometheus.yml: {e}"))?;
    for (job, hosts) in [
        ("weauth-issuer", targets.issuers.clone()),
        ("weauth-envoy", vec![targets.envoy_admin.clone()]),
    ] {
        let scrape = cfg["scrape_configs"]
            .as_array_mut()
            .and_then(|jobs| jobs.iter_mut().find(|j| j["job_name"] == job))
            .ok_or(format!("prometheus.yml: no job {job}"))?;
        scrape["static_configs"] = json!([{ "targets": hosts }]);
    }
    cfg["rule_files"] = json!([rules.display().to_string()]);
    if let Some(interval) = interval {
        cfg["global"]["scrape_interval"] = json!(interval);
        cfg["global"]["evaluation_interval"] = json!(interval);
    }
    serde_yaml_ng::to_string(&cfg).map_err(|e| format!("prometheus.yml: {e}"))
}

/// `host:port` of an `http://host:port` URL.
pub fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    /// Writes `config` to `dir/prometheus.yml` and starts Prometheus on `127.0.0.1:port` with
    /// its data in `dir/data`; returns once `/-/ready` answers 200.
    ///
    /// # Errors
    /// The binary is missing (the error says how to install it), it exited, or it was not
    /// ready within [`READY_TIMEOUT`].
    pub async fn start(dir: &Path, port: u16, config: &str) -> Result<Prometheus, HarnessError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| HarnessError::Io { what, source }
        };
        std::fs::create_dir_all(dir.join("data")).map_err(io("creating prometheus dir"))?;
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).map_err(io("writing prometheus.yml"))?;
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).map_err(io("creating prometheus.log"))?;
        let err = out.try_clone().map_err(io("creating prometheus.log"))?;
        let bin = bin();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    HarnessError::Missing {
                        what: "prometheus binary",
                        path: bin.clone(),
                        hint: "run `make monitoring-tools` (Debian's prometheus), or set \
                               WEAUTH_PROMETHEUS_BIN",
                    }
                } else {
                    HarnessError::Io {
                        what: "starting prometheus".into(),
                        source: e,
                    }
                }
            })?;
        let mut prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    async fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let client = reqwest::Client::new();
        let ready = format!("{}/-/ready", self.url);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(HarnessError::Exited {
                    name: "prometheus",
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail: tail_file(&self.log, 20),
                });
            }
            let last = match client
                .get(&ready)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => return Ok(()),
                Ok(r) => format!("GET {ready} → {}", r.status()),
                Err(e) => format!("GET {ready}: {e}"),
            };
            if start.elapsed() > READY_TIMEOUT {
                return Err(HarnessError::NotReady {
                    name: "prometheus",
                    waited: start.elapsed(),
                    detail: last,
                    log: self.log.clone(),
                    tail: tail_file(&self.log, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops it: SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.child.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../deploy/monitoring/prometheus.yml");

    fn targets() -> Targets {
        Targets {
            issuers: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            envoy_admin: "127.0.0.1:3".into(),
        }
    }

    #[test]
    fn config_points_jobs_at_targets_and_rules_at_path() {
        let text = config(SHIPPED, &targets(), Path::new("/x/alerts.yaml"), None).unwrap();
        let cfg: Value = serde_yaml_ng::from_str(&text).unwrap();
        let jobs = cfg["scrape_configs"].as_array().unwrap();
        let job = |name: &str| jobs.iter().find(|j| j["job_name"] == name).unwrap();
        assert_eq!(
            job("weauth-issuer")["static_configs"][0]["targets"],
            json!(["127.0.0.1:1", "127.0.0.1:2"])
        );
        assert_eq!(job("weauth-issuer")["metrics_path"], "/metrics");
        assert_eq!(
            job("weauth-envoy")["static_configs"][0]["targets"],
            json!(["127.0.0.1:3"])
        );
        assert_eq!(job("weauth-envoy")["metrics_path"], "/stats/prometheus");
        assert_eq!(cfg["rule_files"], json!(["/x/alerts.yaml"]));
        assert_eq!(
            cfg["global"]["scrape_interval"], "5s",
            "shipped interval kept"
        );
    }

    #[test]
    fn config_interval_overrides_scrape_and_evaluation() {
        let text = config(SHIPPED, &targets(), Path::new("/a"), Some("1s")).unwrap();
        let cfg: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(cfg["global"]["scrape_interval"], "1s");
        assert_eq!(cfg["global"]["evaluation_interval"], "1s");
    }

    #[test]
    fn config_missing_job_named() {
        let err = config("scrape_configs: []\n", &targets(), Path::new("/a"), None).unwrap_err();
        assert!(err.contains("weauth-issuer"), "{err}");
    }

    #[test]
    fn host_port_strips_scheme() {
        assert_eq!(host_port("http://127.0.0.1:8080"), "127.0.0.1:8080");
    }
}
