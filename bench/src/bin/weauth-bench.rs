//! `weauth-bench`: the `make bench` driver. Runs the edge comparison (and the other sections
//! that are available), prints one table, and writes `results.md` and `edge.svg` under the
//! output folder (default `bench-results/`).
//!
//! Usage: `weauth-bench [--mode quick|full] [--out DIR]`; the mode may also come from
//! `BENCH_MODE`; `--only edge,delay,issuer,fanout` runs some sections; `--rows native,1M`
//! keeps only the edge rows whose name contains one of the words (and the no-auth baseline),
//! for a quick look at a few rows. Paths: `WEAUTH_ENVOY_BIN` (default `.tools/bin/envoy`), `WEAUTH_FILTER_WASM`
//! (default `target/wasm32-wasip1/wasm-release/weauth_filter.wasm`), `WEAUTH_BENCH_EMPTY_WASM`
//! (default `target/wasm32-wasip1/wasm-release/weauth_empty_filter.wasm`),
//! `WEAUTH_BENCH_EMPTY_NATIVE` (default `target/native/libweauth_empty_filter.so`),
//! `WEAUTH_BENCH_COMPARE_WASM` (optional: another build of the filter, measured as one more
//! row in the same rounds, for a before/after), `WEAUTH_BENCH_COMPARE_NATIVE` (the same for
//! the native build: another `libweauth_filter.so`, under any file name; also a listener of the
//! one Envoy of the native target's rows), and
//! `weauth-revocation-check` next to this executable.

use std::path::PathBuf;

use std::time::Duration;

use weauth_bench::edge::{self, EdgeSettings};
use weauth_bench::issuer;
use weauth_bench::report::{
    delay_markdown, edge_markdown, edge_svg, issuer_markdown, memory_markdown, paired_cpu,
    paired_text, targets, targets_markdown, NATIVE_1M,
};
use weauth_tests::harness::Edge;

const USAGE: &str = "usage: weauth-bench [--mode quick|full] [--out DIR] \
     [--only edge,delay,issuer,fanout] [--rows WORD,...]";

struct Args {
    full: bool,
    out: PathBuf,
    /// Sections to run (default all): edge (with filter memory), delay, issuer.
    sections: Vec<String>,
    /// Edge rows to keep (empty: all).
    rows: Vec<String>,
}

fn args() -> Result<Args, String> {
    let mut mode = std::env::var("BENCH_MODE").unwrap_or_else(|_| "quick".into());
    let mut out = PathBuf::from("bench-results");
    let mut sections = vec![
        "edge".to_string(),
        "delay".into(),
        "issuer".into(),
        "fanout".into(),
    ];
    let mut rows = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mode" => mode = it.next().ok_or("--mode needs quick or full")?,
            "--out" => out = it.next().ok_or("--out needs a folder")?.into(),
            "--only" => {
                sections = it
                    .next()
                    .ok_or("--only needs a comma list of edge,delay,issuer,fanout")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--rows" => {
                rows = it
                    .next()
                    .ok_or("--rows needs a comma list of words from the edge rows' names")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            other => return Err(format!("unknown argument {other}; {USAGE}")),
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
    Ok(Args {
        full,
        out,
        sections,
        rows,
    })
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
        native: env_path("WEAUTH_FILTER_NATIVE", "target/native/libweauth_filter.so"),
        empty_wasm: env_path(
            "WEAUTH_BENCH_EMPTY_WASM",
            "target/wasm32-wasip1/wasm-release/weauth_empty_filter.wasm",
        ),
        empty_native: env_path(
            "WEAUTH_BENCH_EMPTY_NATIVE",
            "target/native/libweauth_empty_filter.so",
        ),
        compare_wasm: std::env::var_os("WEAUTH_BENCH_COMPARE_WASM")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        compare_native: std::env::var_os("WEAUTH_BENCH_COMPARE_NATIVE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        revocation_check: exe_dir.join("weauth-revocation-check"),
        work_dir: std::fs::canonicalize(&work_dir)?,
        rounds: if args.full { 5 } else { 2 },
        seconds: if args.full { 15 } else { 4 },
        warmup_seconds: if args.full { 3 } else { 1 },
        connections: 16,
        base_id: 4100 + (std::process::id() % 500) * 20,
        rows: args.rows.clone(),
        one_envoy_rounds: if args.full { 8 } else { 2 },
        one_envoy_seconds: if args.full { 6 } else { 3 },
    };
    let mode = if args.full { "full" } else { "quick" };
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let run = |name: &str| args.sections.iter().any(|s| s == name);
    let edge_run = if run("edge") {
        rt.block_on(edge::run(&settings))
    } else {
        edge::EdgeRun::default()
    };
    let (rows, one_envoy, memories) = (edge_run.rows, edge_run.one_envoy, edge_run.memory);
    let memory = memories.wasm;
    let delay = run("delay").then(|| {
        let count = if args.full { 300 } else { 100 };
        eprintln!("bench: revocation delay over {count} logouts");
        rt.block_on(issuer::revocation_delay(
            count,
            Duration::from_secs(3),
            Edge::WeauthFilter,
        ))
    });
    let delay_native = (run("delay") && settings.native.is_file()).then(|| {
        let count = if args.full { 300 } else { 100 };
        eprintln!("bench: revocation delay over {count} logouts, native build");
        rt.block_on(issuer::revocation_delay(
            count,
            Duration::from_secs(3),
            Edge::WeauthNative,
        ))
    });
    let issuer_result = run("issuer").then(|| {
        let secs = if args.full { 15 } else { 4 };
        eprintln!("bench: issuer logins and refreshes, {secs} s each");
        rt.block_on(issuer::throughput(16, Duration::from_secs(secs), false))
    });
    let issuer_redis = run("issuer").then(|| {
        let secs = if args.full { 15 } else { 4 };
        eprintln!("bench: issuer on Redis, logins and refreshes, {secs} s each");
        rt.block_on(issuer::throughput(16, Duration::from_secs(secs), true))
    });
    let issuer_mysql = run("issuer").then(|| {
        let secs = if args.full { 15 } else { 4 };
        eprintln!("bench: issuer on MariaDB, logins and refreshes, {secs} s each");
        rt.block_on(issuer::throughput_mysql(16, Duration::from_secs(secs)))
    });
    let issuer_cluster = run("issuer").then(|| {
        let secs = if args.full { 15 } else { 4 };
        eprintln!("bench: issuer on a Redis Cluster, logins and refreshes, {secs} s each");
        rt.block_on(issuer::throughput_cluster(16, Duration::from_secs(secs)))
    });
    let fanout_rows = run("fanout").then(|| {
        let secs = if args.full { 8 } else { 4 };
        eprintln!("bench: feed fan-out over two replicas on Redis, {secs} s per case");
        rt.block_on(weauth_bench::fanout::run(
            &[
                (1_000, 1, 250),
                (1_000, 10, 250),
                (1_000, 100, 250),
                (10_000, 1, 250),
                (10_000, 10, 250),
                (10_000, 100, 250),
                // A longer cap: fewer answers, a longer wait for the wake.
                (10_000, 100, 500),
                // The unbounded baseline, in the same run.
                (10_000, 100, 0),
            ],
            Duration::from_secs(secs),
        ))
    });

    let delay_p99 = match &delay {
        // A logout still accepted when the poll gave up is slower than every sample: with
        // one, the p99 is not known to be under the target.
        Some(Ok(d)) if d.timeouts > 0 => Some(f64::INFINITY),
        Some(Ok(d)) => d.summary.map(|s| s.p99),
        _ => None,
    };
    let table = edge_markdown(&rows);
    let goals = targets_markdown(&targets(&rows, &one_envoy, delay_p99, memory.as_ref()));
    let title = format!("weauth edge benchmark ({mode} mode)");
    let mut md = String::new();
    md.push_str(&format!("# weauth benchmark ({mode} mode)\n\n"));
    md.push_str(&format!(
        "Host: {}. Run took {:.0} s. Produced by `make bench` (`scripts/bench.sh`, \
         `BENCH_MODE={mode}`).\n\n## Edge\n\n\
         Envoy: one worker (`--concurrency 1`) pinned with `taskset -c 0`; wrk (1 thread, {} \
         connections) and the ext_authz service on core 1; route = direct_response. {} round(s) \
         of {} s each per row after a {} s warm-up, rounds interleaved across rows; each number \
         is the median over rounds. Envoy CPU µs/req = /proc utime+stime of the Envoy process ÷ \
         its `{}` delta. The edge rows' revocation sets (weauth filter and ext_authz service \
         alike) came from **the driver's own feed** in the issuer's wire format, not from an \
         issuer; a set over {} entries is served as a first full chunk of that many and then \
         deltas, because the filter refuses a feed body over 16 MiB (1M entries ≈ 75 MB of \
         JSON); the revoked token checked is the set's last entry, so its refusal shows the \
         whole set arrived. Every token is the same one repeated, so caches always hit. Latency is wrk's, \
         at saturation, so it tracks throughput. On a shared host requests/s and latency move \
         with the neighbours' load while CPU per request barely does: judge the rows by it.\n\n",
        host_line(),
        started.elapsed().as_secs_f64(),
        settings.connections,
        settings.rounds,
        settings.seconds,
        settings.warmup_seconds,
        edge::RQ_COUNTER,
        edge::FEED_CHUNK,
    ));
    if run("edge") {
        md.push_str(&table);
        md.push_str("\n![edge](edge.svg)\n\n");
        if !one_envoy.is_empty() {
            md.push_str(&format!(
                "### The native target's rows side by side in one Envoy\n\n\
                 The same configurations as listeners of one Envoy (one worker, core 0), a \
                 fresh Envoy for each of {} rounds, each listener loaded for {} s after a {} s \
                 warm-up, in an order rotated by round; Envoy CPU per request = the process's \
                 CPU over a listener's load ÷ that listener's `http.side_<n>.downstream_rq_total` \
                 delta; medians over rounds. Separate Envoys carry a bias fixed for each \
                 process's life as large as the differences the native target judges; listeners \
                 of one process share it, so the target is judged on these rows, each row's cost \
                 above no-auth taken round by round.\n\n",
                settings.one_envoy_rounds,
                settings.one_envoy_seconds,
                edge::ONE_ENVOY_WARMUP_SECONDS,
            ));
            md.push_str(&edge_markdown(&one_envoy));
            let named = |name: &str| one_envoy.iter().find(|r| r.name.starts_with(name));
            if let (Some(compare), Some(native)) =
                (named("comparison native build"), named(NATIVE_1M))
            {
                md.push_str(&format!(
                    "\nThe comparison build (`WEAUTH_BENCH_COMPARE_NATIVE`, a listener of the \
                     same Envoys) less this build, 1M revoked, round by round: {}.\n",
                    paired_text(paired_cpu(compare, native))
                ));
            }
            md.push('\n');
        }
    } else {
        md.push_str("Not run (`--only`).\n\n");
    }
    md.push_str(
        "## Revocation delay\n\nReal issuer + mock WeChat + Envoy (1 worker) with the filter \
         (`weauth_tests::harness`, feed long poll `wait_seconds` 20): from the issuer's \
         `POST /v1/logout` response to the first request Envoy refuses with that token, polling \
         back to back.\n\n",
    );
    match &delay {
        Some(Ok(d)) => md.push_str(&delay_markdown(d)),
        Some(Err(e)) => md.push_str(&format!("Not measured: {e}\n")),
        None => md.push_str("Not run (`--only`).\n"),
    }
    md.push_str(
        "\n### Native build\n\nThe same, with the filter's native build (`make native`).\n\n",
    );
    match &delay_native {
        Some(Ok(d)) => md.push_str(&delay_markdown(d)),
        Some(Err(e)) => md.push_str(&format!("Not measured: {e}\n")),
        None => md.push_str("Not run (`--only`, or no target/native/libweauth_filter.so).\n"),
    }
    md.push_str(
        "\n## Issuer\n\nThe issuer (release build; SQLite, then Redis, MySQL and a Redis Cluster) straight, not through Envoy, \
         against the in-process mock WeChat; login rate limit off (`WEAUTH_LOGIN_RATE=0`); each \
         login is a new user with a fresh code minted outside the timed request.\n\n",
    );
    md.push_str("\n### SQLite\n\n");
    match &issuer_result {
        Some(Ok(r)) => md.push_str(&issuer_markdown(r)),
        Some(Err(e)) => md.push_str(&format!("Not measured: {e}\n")),
        None => md.push_str("Not run (`--only`).\n"),
    }
    md.push_str(
        "\n### Redis\n\nThe same, with one issuer replica on a local `redis-server` (AOF, \
         `appendfsync always`), same run.\n\n",
    );
    match &issuer_redis {
        Some(Ok(r)) => md.push_str(&issuer_markdown(r)),
        Some(Err(e)) => md.push_str(&format!("Not measured: {e}\n")),
        None => md.push_str("Not run (`--only`).\n"),
    }
    md.push_str(
        "\n### MySQL (MariaDB)\n\nThe same, with one issuer replica on a local `mariadbd` \
         (InnoDB, `innodb_flush_log_at_trx_commit=1`, binary log off), same run.\n\n",
    );
    match &issuer_mysql {
        Some(Ok(r)) => md.push_str(&issuer_markdown(r)),
        Some(Err(e)) => md.push_str(&format!("Not measured: {e}\n")),
        None => md.push_str("Not run (`--only`).\n"),
    }
    md.push_str(
        "\n### Redis Cluster\n\nThe same, with one issuer replica on a local 6-node Redis \
         Cluster (3 primaries, 3 replicas, AOF `appendfsync always`; sessions spread over the \
         slots by family; every write `WAIT`s for a replica of every primary), same run.\n\n",
    );
    match &issuer_cluster {
        Some(Ok(r)) => md.push_str(&issuer_markdown(r)),
        Some(Err(e)) => md.push_str(&format!("Not measured: {e}\n")),
        None => md.push_str("Not run (`--only`).\n"),
    }
    md.push_str(&weauth_bench::fanout::markdown(fanout_rows.as_ref()));
    md.push_str(
        "\n## Filter memory\n\nEnvoy with the weauth filter, 0 revocations against the largest set \
         that loaded (1 000 000 if the filter took it), at one and two workers, after load.\n\n",
    );
    match &memory {
        Some(m) => md.push_str(&memory_markdown(m)),
        None => md.push_str("Not measured (needs the weauth 0 and 1M edge rows).\n"),
    }
    md.push_str(
        "\n### Native build\n\nThe same with the native build: one revocation set for every \
         worker thread, so the \"per worker\" figure should stay near zero.\n\n",
    );
    match &memories.native {
        Some(m) => md.push_str(&memory_markdown(m)),
        None => md.push_str("Not measured (needs the native 0 and 1M edge rows).\n"),
    }
    md.push_str("\n## Targets for the weauth filter\n\n");
    md.push_str(&goals);
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(args.out.join("edge.svg"), edge_svg(&rows, &title))?;
    println!("{md}");
    println!(
        "bench: wrote {} and {}",
        args.out.join("results.md").display(),
        args.out.join("edge.svg").display()
    );
    Ok(())
}
