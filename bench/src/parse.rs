//! Parsers for what the benchmark reads from other programs: `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (CPU time and resident memory), Envoy's admin `/stats` text, and
//! `wrk --latency` output. All pure, so that a format change shows up as a failing unit test
//! rather than as a silently wrong number.

use thiserror::Error;

/// Why a piece of program output could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("/proc/<pid>/stat has no `)` closing the command name, or too few fields")]
    ProcStatShape,
    #[error("/proc/<pid>/stat field {0} is not a number")]
    ProcStatField(usize),
    #[error("/proc/<pid>/status has no VmRSS line")]
    NoVmRss,
    #[error("Envoy stats have no counter named {0}")]
    NoStat(String),
    #[error("wrk printed no `{0}` line (was it run with --latency?)")]
    WrkMissing(&'static str),
    #[error("wrk printed a latency `{0}` this parser does not understand")]
    WrkLatency(String),
}

/// User plus system CPU time, in clock ticks, from the text of `/proc/<pid>/stat`. Counts every
/// thread of the process (fields 14 `utime` and 15 `stime`, see proc(5)).
pub fn proc_stat_cpu_ticks(stat: &str) -> Result<u64, ParseError> {
    // The command name (field 2) may hold spaces and parentheses: split after the last `)`.
    let close = stat.rfind(')').ok_or(ParseError::ProcStatShape)?;
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // `rest[0]` is field 3 (state), so field N is rest[N - 3].
    let field = |n: usize| -> Result<u64, ParseError> {
        rest.get(n - 3)
            .ok_or(ParseError::ProcStatShape)?
            .parse::<u64>()
            .map_err(|_| ParseError::ProcStatField(n))
    };
    Ok(field(14)? + field(15)?)
}

/// Resident set size in KiB from the text of `/proc/<pid>/status`.
pub fn proc_status_rss_kib(status: &str) -> Result<u64, ParseError> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or(ParseError::NoVmRss)
}

/// The value of counter or gauge `name` in Envoy's admin `/stats` plain-text output
/// (`name: value` lines).
pub fn envoy_stat(stats: &str, name: &str) -> Result<u64, ParseError> {
    stats
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            (key.trim() == name).then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| ParseError::NoStat(name.to_string()))
}

/// What one `wrk --latency` run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkReport {
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Responses that were not 2xx/3xx.
    pub non_2xx: u64,
    /// Socket errors of every kind added up.
    pub socket_errors: u64,
}

/// Reads wrk's text output (it must have been run with `--latency`).
pub fn wrk_report(out: &str) -> Result<WrkReport, ParseError> {
    let mut p50 = None;
    let mut p99 = None;
    let mut rps = None;
    let mut requests = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(wrk_latency_ms(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(wrk_latency_ms(v.trim())?);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    Ok(WrkReport {
        requests: requests.ok_or(ParseError::WrkMissing("N requests in"))?,
        requests_per_sec: rps.ok_or(ParseError::WrkMissing("Requests/sec"))?,
        p50_ms: p50.ok_or(ParseError::WrkMissing("50%"))?,
        p99_ms: p99.ok_or(ParseError::WrkMissing("99%"))?,
        non_2xx,
        socket_errors,
    })
}

/// A wrk latency such as `215.43us`, `1.20ms`, `2.00s` or `1.50m`, in milliseconds.
fn wrk_latency_ms(text: &str) -> Result<f64, ParseError> {
    let bad = || ParseError::WrkLatency(text.to_string());
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return Err(bad()),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (envoy (main)) S 1 4242 4242 0 -1 4194560 12000 0 3 0 \
        1234 567 0 0 20 0 9 0 5555 1000000 3000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0 0 0 0";

    #[test]
    fn proc_stat_cpu_ticks_name_with_parens_adds_utime_stime() {
        assert_eq!(proc_stat_cpu_ticks(STAT), Ok(1234 + 567));
    }

    #[test]
    fn proc_stat_cpu_ticks_truncated_is_error() {
        assert_eq!(
            proc_stat_cpu_ticks("1 (x) S 1 2 3"),
            Err(ParseError::ProcStatShape)
        );
        assert_eq!(
            proc_stat_cpu_ticks("no paren"),
            Err(ParseError::ProcStatShape)
        );
    }

    #[test]
    fn proc_status_rss_reads_kib() {
        let status = "Name:\tenvoy\nVmPeak:\t  900000 kB\nVmRSS:\t   45678 kB\nThreads:\t9\n";
        assert_eq!(proc_status_rss_kib(status), Ok(45678));
        assert_eq!(proc_status_rss_kib("Name:\tx\n"), Err(ParseError::NoVmRss));
    }

    #[test]
    fn envoy_stat_exact_name_only() {
        let stats = "http.bench.downstream_rq_total: 1200\nhttp.bench.downstream_rq_total_x: 5\n\
            http.bench.downstream_rq_2xx: 1100\n";
        assert_eq!(
            envoy_stat(stats, "http.bench.downstream_rq_total"),
            Ok(1200)
        );
        assert_eq!(envoy_stat(stats, "http.bench.downstream_rq_2xx"), Ok(1100));
        assert!(envoy_stat(stats, "http.bench.downstream_rq_5xx").is_err());
    }

    const WRK: &str = "Running 5s test @ http://127.0.0.1:20001/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   215.43us  120.11us   5.11ms   94.15%
    Req/Sec    74.30k     3.01k   78.50k    81.00%
  Latency Distribution
     50%  200.00us
     75%  230.00us
     90%  260.00us
     99%    1.25ms
  370000 requests in 5.00s, 26.46MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 12
Requests/sec:  73994.07
Transfer/sec:      5.29MB
";

    #[test]
    fn wrk_report_reads_every_field() {
        let r = wrk_report(WRK).unwrap();
        assert_eq!(r.requests, 370000);
        assert!((r.requests_per_sec - 73994.07).abs() < 1e-6);
        assert!((r.p50_ms - 0.2).abs() < 1e-9);
        assert!((r.p99_ms - 1.25).abs() < 1e-9);
        assert_eq!(r.non_2xx, 12);
        assert_eq!(r.socket_errors, 3);
    }

    #[test]
    fn wrk_report_without_latency_flag_is_error() {
        let out = "  100 requests in 1.00s, 1KB read\nRequests/sec: 100.00\n";
        assert_eq!(wrk_report(out), Err(ParseError::WrkMissing("50%")));
    }

    #[test]
    fn wrk_latency_units_convert_to_ms() {
        assert_eq!(wrk_latency_ms("2.00s"), Ok(2000.0));
        assert_eq!(wrk_latency_ms("1.50m"), Ok(90000.0));
        assert!(wrk_latency_ms("3.0parsecs").is_err());
    }
}
