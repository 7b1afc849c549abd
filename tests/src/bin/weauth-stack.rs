//! `weauth-stack`: the `make up` launcher. Starts the local stack on the fixed ports of
//! docs/DESIGN.md (Envoy 10000, its internal listener for the admin API and the feed 10001,
//! admin 9901, issuer 8080, demo upstream 8081, mock WeChat 8090) with
//! the same harness code as the end-to-end tests, the database and logs in `<workspace>/.run/`,
//! prints where everything listens and the README's curl walkthrough, then waits for Ctrl-C or SIGTERM
//! and stops every process it started (and only those).
//!
//! `make up MONITOR=1` (`WEAUTH_STACK_MONITOR=1`) also runs Debian's `prometheus` on
//! 127.0.0.1:9090 with `deploy/monitoring/prometheus.yml` and its alert rules, scraping the
//! issuer replica(s) and Envoy's admin; its data and log in `.run/prometheus/`.
//!
//! Its pid goes to `.run/stack.pid` so `make down` can send it SIGTERM. Development
//! credentials: the mini-program appid `wx0123456789abcdef` (secret `mock-secret`), the
//! official account `wx00000000000000a1` (`mock-oa-secret`) and the website
//! `wx00000000000000b2` (`mock-web-secret`), all bound to one Open Platform account (the apps
//! file is `.run/apps.json`); feed token `dev-feed-token`, admin token `dev-admin-token`. The
//! web-login demo page is `http://127.0.0.1:10000/demo/` (the apps file and the demo are for
//! `make up` only: `--free-ports` keeps the one-app configuration its drivers expect).
//!
//! Usage: `weauth-stack [--concurrency N] [--free-ports] [--json] [--issuer-env NAME=VALUE]…
//! [--plugin-patch JSON]…`. The last four are for test drivers in other languages (the
//! mini-program client's end-to-end tests in `client/miniprogram/`):
//! - `--free-ports`: free loopback ports and a temp directory (removed at exit) instead of the
//!   fixed ports and `.run/`; no pid file, so it never disturbs a `make up` stack;
//! - `--json`: instead of the walkthrough, print ONE line of JSON on stdout once everything is
//!   ready: `{"envoy","internal","admin","issuer","upstream","mock"` (base URLs), `"admin_token"`,
//!   `"feed_token"`, `"dir"`, `"pid"}`; the stack then also stops when its stdin is closed, so
//!   a driver that dies without sending SIGTERM does not leave Envoy and the issuer behind;
//! - `--issuer-env NAME=VALUE`: an extra or overriding `WEAUTH_*` variable for the issuer
//!   (e.g. `WEAUTH_ACCESS_TTL=2s`);
//! - `--plugin-patch JSON`: an RFC 7386 merge patch on the filter's configuration (e.g.
//!   `{"clock_skew_seconds":0}`), applied in order.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

use serde_json::{json, Value};
use weauth_tests::harness::{workspace_root, Stack, StackPorts};
use weauth_tests::prometheus::{self, Prometheus, Targets};
use weauth_tests::walkthrough;

const USAGE: &str = "usage: weauth-stack [--concurrency N] [--free-ports] [--json] \
                     [--issuer-env NAME=VALUE]... [--plugin-patch JSON]...";
const FEED_TOKEN: &str = "dev-feed-token";
const ADMIN_TOKEN: &str = "dev-admin-token";
/// `make up MONITOR=1`: Prometheus's port.
const PROMETHEUS_PORT: u16 = 9090;

/// The command line, parsed.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    /// Envoy worker threads, >= 1.
    concurrency: u32,
    /// Free ports and a temp dir instead of the fixed ports and `.run/`.
    free_ports: bool,
    /// One JSON line instead of the walkthrough; also stop when stdin closes.
    json: bool,
    /// Extra `WEAUTH_*` variables for the issuer, in order.
    issuer_env: Vec<(String, String)>,
    /// Merge patches on the plugin configuration, in order.
    plugin_patches: Vec<Value>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options {
        concurrency: 1,
        free_ports: false,
        json: false,
        issuer_env: Vec::new(),
        plugin_patches: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--concurrency" => {
                let v = args.next().ok_or("--concurrency needs a value")?;
                opts.concurrency = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(format!("--concurrency {v:?}: expected a number >= 1"))?;
            }
            "--free-ports" => opts.free_ports = true,
            "--json" => opts.json = true,
            "--issuer-env" => {
                let v = args.next().ok_or("--issuer-env needs NAME=VALUE")?;
                let (name, value) = v
                    .split_once('=')
                    .filter(|(name, _)| name.starts_with("WEAUTH_"))
                    .ok_or(format!(
                        "--issuer-env {v:?}: expected NAME=VALUE with NAME starting WEAUTH_"
                    ))?;
                opts.issuer_env.push((name.to_string(), value.to_string()));
            }
            "--plugin-patch" => {
                let v = args.next().ok_or("--plugin-patch needs a JSON object")?;
                let patch: Value = serde_json::from_str(&v)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or(format!("--plugin-patch {v:?}: expected a JSON object"))?;
                opts.plugin_patches.push(patch);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(opts)
}

/// The `--json` line: where everything listens and the credentials a driver needs.
fn ready_line(stack: &Stack) -> String {
    json!({
        "envoy": stack.envoy_url(),
        "internal": stack.internal_url(),
        "admin": stack.admin_url(),
        "issuer": stack.issuer_url(),
        "upstream": stack.upstream_url(),
        "mock": stack.mock_url(),
        "admin_token": stack.admin_token(),
        "feed_token": stack.feed_token(),
        "dir": stack.dir().display().to_string(),
        "pid": std::process::id(),
    })
    .to_string()
}

/// Resolves when stdin reaches end of file (or cannot be read): the driver that spawned us
/// has closed its end of the pipe, or died. A blocking read on a plain thread, so no tokio
/// feature is needed for it.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Refuses to start when a fixed port is taken (most likely by a stack already running).
fn check_ports_free(ports: StackPorts, monitor: bool) -> Result<(), String> {
    let mut wanted = vec![
        ("Envoy", ports.envoy),
        ("Envoy internal listener", ports.internal),
        ("Envoy admin", ports.admin),
        ("issuer", ports.issuer),
        ("demo upstream", ports.upstream),
        ("mock WeChat", ports.mock),
    ];
    if monitor {
        // On a machine with systemd, installing Debian's prometheus also starts its service
        // on 9090: `systemctl disable --now prometheus` frees the port.
        wanted.push(("Prometheus (MONITOR=1)", PROMETHEUS_PORT));
    }
    for (role, port) in wanted {
        if let Err(e) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            let hint = if port == PROMETHEUS_PORT {
                " (or Debian's prometheus service holds it: `sudo systemctl disable --now prometheus`)"
            } else {
                ""
            };
            return Err(format!(
                "port {port} ({role}) is not available: {e}. Is the stack already running? \
                 Stop it with `make down`{hint}."
            ));
        }
    }
    Ok(())
}

fn walkthrough(stack: &Stack) -> String {
    let envoy = stack.envoy_url();
    let mock = stack.mock_url();
    // The README's walkthrough, the one text (tested by tests/tests/e2e_walkthrough.rs).
    let script = walkthrough::block(walkthrough::README, walkthrough::MAIN)
        .map(|script| walkthrough::for_ports(script, stack.ports()))
        .unwrap_or_else(|| "(the walkthrough block is missing from README.md)\n".into());
    let script: String = script.lines().map(|line| format!("  {line}\n")).collect();
    format!(
        r#"
weauth local stack is up:
  Envoy (filter loaded)  {envoy}   admin {admin}
  Envoy internal         {internal}   (/v1/admin/*, /v1/revocations: not on the public listener)
  issuer                 {issuer}
  demo upstream          {upstream}
  mock WeChat            {mock}
  logs                   {issuer_log}
                         {envoy_log}
  apps {run}/apps.json: mini-program wx0123456789abcdef (secret mock-secret),
       official account wx00000000000000a1, website wx00000000000000b2
  feed token {FEED_TOKEN}  admin token {ADMIN_TOKEN}

Web login (official account): open {envoy}/demo/ in a browser, click "Log in", pick a name
on the mock WeChat page (the same name as a mini-program login below gives the same sub),
then "GET /api/hello", "POST /v1/token/refresh" and "POST /v1/logout".

Try it (copy-paste into another terminal; README.md explains each step, docs/TESTING.md the mock's helper routes):
{script}
Stop with Ctrl-C or `make down`.
"#,
        admin = stack.admin_url(),
        internal = stack.internal_url(),
        issuer = stack.issuer_url(),
        upstream = stack.upstream_url(),
        issuer_log = stack.issuer_log().display(),
        envoy_log = stack.envoy_log().display(),
        run = stack.dir().display(),
    )
}

/// Prometheus scraping `stack` with the shipped configuration: on 9090 with its data in
/// `<run dir>/prometheus`, or on a free port in the stack's temp dir with `--free-ports`.
async fn start_prometheus(stack: &Stack, free_ports: bool) -> Result<Prometheus, String> {
    let dir = prometheus::monitoring_dir();
    let shipped = std::fs::read_to_string(dir.join("prometheus.yml"))
        .map_err(|e| format!("{}: {e}", dir.join("prometheus.yml").display()))?;
    let targets = Targets {
        issuers: (0..stack.replica_count())
            .map(|i| prometheus::host_port(&stack.replica_url(i)))
            .collect(),
        envoy_admin: prometheus::host_port(&stack.admin_url()),
    };
    let config = prometheus::config(&shipped, &targets, &dir.join("alerts.yaml"), None)?;
    let port = if free_ports {
        weauth_tests::harness::free_port().map_err(|e| format!("finding a free port: {e}"))?
    } else {
        PROMETHEUS_PORT
    };
    Prometheus::start(&stack.dir().join("prometheus"), port, &config)
        .await
        .map_err(|e| e.to_string())
}

fn remove_pid_file(path: &Path) {
    // Only remove it if it is still ours (another launcher may have replaced it).
    if std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    // Listened for from here: a stop during the start (`make down`, Ctrl-C, the terminal
    // closed) stops what was started so far.
    let stopped = weauth_tests::signal::terminated();
    tokio::pin!(stopped);
    let mut builder = Stack::builder().concurrency(opts.concurrency);
    for (name, value) in &opts.issuer_env {
        builder = builder.issuer_env(name, value);
    }
    for patch in &opts.plugin_patches {
        builder = builder.plugin_config_patch(patch.clone());
    }
    let monitor = matches!(
        std::env::var("WEAUTH_STACK_MONITOR").as_deref(),
        Ok("1" | "true" | "yes")
    );
    let pid_file = if opts.free_ports {
        // Free ports, a temp dir and random credentials: nothing shared with `make up`.
        None
    } else {
        let ports = StackPorts::LOCAL;
        check_ports_free(ports, monitor)?;
        let run_dir = workspace_root().join(".run");
        std::fs::create_dir_all(&run_dir)?;
        let pid_file = run_dir.join("stack.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;
        builder = builder
            .ports(ports)
            .run_dir(&run_dir)
            .feed_token(FEED_TOKEN)
            .admin_token(ADMIN_TOKEN)
            .web_login();
        Some(pid_file)
    };

    // `make up STORE=redis`: a redis-server and two issuer replicas (8080 and 8082) behind
    // Envoy's issuer cluster; `STORE=mysql`: the same on a mariadbd; `STORE=redis-cluster`: the
    // same on a Redis Cluster.
    match std::env::var("WEAUTH_STACK_STORE")
        .unwrap_or_default()
        .as_str()
    {
        "" | "sqlite" => {}
        "redis" => builder = builder.redis_replicas(2),
        "mysql" => builder = builder.mysql_replicas(2),
        // A 6-node Redis Cluster (3 primaries, 3 replicas, in .run/cluster/, formed afresh
        // at every start) and the same two replicas on `redis+cluster://`.
        "redis-cluster" => builder = builder.redis_replicas(2).redis_cluster(),
        other => {
            eprintln!(
                "weauth-stack: STORE={other}: expected sqlite, redis, redis-cluster or mysql"
            );
            std::process::exit(2);
        }
    }
    let started = tokio::select! {
        started = builder.start() => Some(started),
        // The start's future dropped: the processes it started are killed with it.
        () = &mut stopped => None,
    };
    let stack = match started {
        Some(Ok(stack)) => stack,
        Some(Err(e)) => {
            if let Some(p) = &pid_file {
                remove_pid_file(p);
            }
            eprintln!("weauth-stack: {e}");
            std::process::exit(1);
        }
        None => {
            if let Some(p) = &pid_file {
                remove_pid_file(p);
            }
            eprintln!("weauth-stack: stopped while starting");
            return Ok(());
        }
    };
    let prometheus = if monitor {
        match start_prometheus(&stack, opts.free_ports).await {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("weauth-stack: {e}");
                stack.shutdown().await;
                if let Some(p) = &pid_file {
                    remove_pid_file(p);
                }
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    if opts.json {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", ready_line(&stack))?;
        out.flush()?;
        tokio::select! {
            () = &mut stopped => {}
            _ = stdin_closed() => {}
        }
    } else {
        println!("{}", walkthrough(&stack));
        if let Some(p) = &prometheus {
            println!(
                "Prometheus {} scrapes the issuer and Envoy every 5 s with the alert rules of \
                 deploy/monitoring/alerts.yaml (alerts: {}/alerts; log {}).\n",
                p.url(),
                p.url(),
                p.log().display()
            );
        }
        stopped.await;
    }
    if let Some(p) = prometheus {
        eprintln!("weauth-stack: stopping Prometheus");
        p.stop().await;
    }
    eprintln!("weauth-stack: stopping Envoy and the issuer");
    stack.shutdown().await;
    if let Some(p) = &pid_file {
        remove_pid_file(p);
    }
    eprintln!("weauth-stack: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn parse_concurrency_default_one_and_explicit() {
        assert_eq!(parse(args(&[])).map(|o| o.concurrency), Ok(1));
        assert_eq!(
            parse(args(&["--concurrency", "4"])).map(|o| o.concurrency),
            Ok(4)
        );
    }

    #[test]
    fn parse_concurrency_zero_or_text_refused() {
        assert!(parse(args(&["--concurrency", "0"])).is_err());
        assert!(parse(args(&["--concurrency", "many"])).is_err());
        assert!(parse(args(&["--up"])).is_err());
    }

    #[test]
    fn parse_no_flags_fixed_ports_walkthrough() {
        let opts = parse(args(&[])).unwrap();
        assert!(!opts.free_ports && !opts.json);
        assert!(opts.issuer_env.is_empty() && opts.plugin_patches.is_empty());
    }

    #[test]
    fn parse_driver_flags_kept_in_order() {
        let opts = parse(args(&[
            "--free-ports",
            "--json",
            "--issuer-env",
            "WEAUTH_ACCESS_TTL=2s",
            "--issuer-env",
            "WEAUTH_LEEWAY=0s",
            "--plugin-patch",
            r#"{"clock_skew_seconds":0}"#,
        ]))
        .unwrap();
        assert!(opts.free_ports && opts.json);
        assert_eq!(
            opts.issuer_env,
            vec![
                ("WEAUTH_ACCESS_TTL".to_string(), "2s".to_string()),
                ("WEAUTH_LEEWAY".to_string(), "0s".to_string()),
            ]
        );
        assert_eq!(opts.plugin_patches, vec![json!({"clock_skew_seconds": 0})]);
    }

    #[test]
    fn parse_issuer_env_without_weauth_prefix_or_equals_refused() {
        assert!(parse(args(&["--issuer-env", "PATH=/tmp"])).is_err());
        assert!(parse(args(&["--issuer-env", "WEAUTH_ACCESS_TTL"])).is_err());
        assert!(parse(args(&["--issuer-env"])).is_err());
    }

    #[test]
    fn parse_plugin_patch_not_an_object_refused() {
        assert!(parse(args(&["--plugin-patch", "[1]"])).is_err());
        assert!(parse(args(&["--plugin-patch", "{nope"])).is_err());
    }
}
