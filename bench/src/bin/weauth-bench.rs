//! `weauth-bench`: the `make bench` driver. Runs the edge comparison (and the other sections
//! that are available), prints one table, and writes `results.md` and `edge.svg` under the
//! output folder (default `bench-results/`).
//!
//! Usage: `weauth-bench [--mode quick|full] [--out DIR]`; the mode may also come from
//! `BENCH_MODE`. Paths: `WEAUTH_ENVOY_BIN` (default `.tools/bin/envoy`), `WEAUTH_FILTER_WASM`
//! (default `target/wasm32-wasip1/wasm-release/weauth_filter.wasm`), and
//! `weauth-revocation-check` next to this executable.

use std::path::PathBuf;

use weauth_bench::edge::{self, EdgeSettings};
use weauth_bench::report::{edge_markdown, edge_svg, targets, targets_markdown};

struct Args {
    full: bool,
    out: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut mode = std::env::var("BENCH_MODE").unwrap_or_else(|_| "quick".into());
    let mut out = PathBuf::from("bench-results");
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mode" => mode = it.next().ok_or("--mode needs quick or full")?,
            "--out" => out = it.next().ok_or("--out needs a folder")?.into(),
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: weauth-bench [--mode quick|full] [--out DIR]"
                ))
            }
        }
    }
    let full = match mode.as_str() {
        "quick" => false,
        "full" => true,
        other => {
            return Err(format!(
                "BENCH_MODE/--mode must be quick or full, not {other}"
            ))
        }
    };
    Ok(Args { full, out })
}

fn env_path(name: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(name).unwrap_or_else(|_| default.to_string()));
    std::fs::canonicalize(&path).unwrap_or(path)
}

fn host_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let envoy = std::process::Command::new(env_path("WEAUTH_ENVOY_BIN", ".tools/bin/envoy"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores; {envoy}")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let work_dir = args.out.join("run");
    std::fs::create_dir_all(&work_dir)?;
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let settings = EdgeSettings {
        envoy: env_path("WEAUTH_ENVOY_BIN", ".tools/bin/envoy"),
        wasm: env_path(
            "WEAUTH_FILTER_WASM",
            "target/wasm32-wasip1/wasm-release/weauth_filter.wasm",
        ),
        revocation_check: exe_dir.join("weauth-revocation-check"),
        work_dir: std::fs::canonicalize(&work_dir)?,
        rounds: if args.full { 5 } else { 2 },
        seconds: if args.full { 15 } else { 4 },
        warmup_seconds: if args.full { 3 } else { 1 },
        connections: 16,
        base_id: 4100 + (std::process::id() % 500) * 20,
    };
    let mode = if args.full { "full" } else { "quick" };
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(edge::run(&settings));

    let table = edge_markdown(&rows);
    let goals = targets_markdown(&targets(&rows, None));
    let title = format!("weauth edge benchmark ({mode} mode)");
    let mut md = String::new();
    md.push_str(&format!("# {title}\n\n"));
    md.push_str(&format!(
        "Host: {}. Run took {:.0} s. Envoy: one worker (`--concurrency 1`) pinned with \
         `taskset -c 0`; wrk (1 thread, {} connections) and the ext_authz service on core 1; \
         route = direct_response. {} round(s) of {} s each per row after a {} s warm-up, rounds \
         interleaved across rows; each number is the median over rounds. Envoy CPU µs/req = \
         /proc utime+stime of the Envoy process ÷ its `{}` delta. The edge rows' revocation \
         sets (weauth filter and ext_authz service alike) came from **the driver's own feed** \
         in the issuer's wire format, not from an issuer. Latency is wrk's, at saturation, so it \
         tracks throughput.\n\n",
        host_line(),
        started.elapsed().as_secs_f64(),
        settings.connections,
        settings.rounds,
        settings.seconds,
        settings.warmup_seconds,
        edge::RQ_COUNTER,
    ));
    md.push_str("## Edge\n\n");
    md.push_str(&table);
    md.push_str("\n![edge](edge.svg)\n\n## Targets for the weauth filter\n\n");
    md.push_str(&goals);
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(args.out.join("edge.svg"), edge_svg(&rows, &title))?;
    println!("{table}\n{goals}");
    println!(
        "bench: wrote {} and {}",
        args.out.join("results.md").display(),
        args.out.join("edge.svg").display()
    );
    Ok(())
}
