//! The results: the edge table (each metric also as a ratio to the no-auth row), the targets
//! the issue sets for the weauth filter, the other sections as Markdown, and an SVG bar chart
//! drawn by hand (no plotting dependency). Pure: numbers in, text out.

use std::fmt::Write as _;

use crate::stats::{ratio, Summary};

/// One measured round of one edge configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeMeasure {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Envoy CPU microseconds per request.
    pub cpu_us: f64,
    /// The ext_authz service's CPU microseconds per Envoy request (ext_authz row only).
    pub ext_cpu_us: Option<f64>,
    /// Non-2xx responses plus socket errors wrk saw.
    pub non_2xx: u64,
}

/// One row of the edge table: medians over the rounds, or why it was not measured.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeRow {
    pub name: String,
    pub verified: String,
    pub error: Option<String>,
    pub rounds: usize,
    pub rps: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cpu_us: Option<f64>,
    pub ext_cpu_us: Option<f64>,
    pub non_2xx: u64,
    /// Envoy CPU µs per request of each round, in round order (for paired comparisons).
    pub cpu_rounds: Vec<f64>,
}

/// Two rows compared round by round: the rows of one round run minutes apart at most, so
/// their difference carries less of the machine's drift than the difference of two medians.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Median, smallest and largest of `a − b` over the rounds both measured.
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
    /// Rounds in which `a` cost more than `b`.
    pub higher: usize,
}

/// `a − b`, Envoy CPU per request, round by round (`None` without a common round).
pub fn paired_cpu(a: &EdgeRow, b: &EdgeRow) -> Option<Paired> {
    let diffs: Vec<f64> = a
        .cpu_rounds
        .iter()
        .zip(&b.cpu_rounds)
        .map(|(x, y)| x - y)
        .collect();
    Some(Paired {
        median: median(&diffs)?,
        min: diffs.iter().copied().fold(f64::INFINITY, f64::min),
        max: diffs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        rounds: diffs.len(),
        higher: diffs.iter().filter(|d| **d > 0.0).count(),
    })
}

/// The median (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

impl EdgeRow {
    /// A row that could not be measured.
    pub fn failed(name: &str, error: &str) -> EdgeRow {
        EdgeRow {
            name: name.to_string(),
            verified: String::new(),
            error: Some(error.to_string()),
            rounds: 0,
            rps: None,
            p50_ms: None,
            p99_ms: None,
            cpu_us: None,
            ext_cpu_us: None,
            non_2xx: 0,
            cpu_rounds: Vec::new(),
        }
    }

    /// A row from its rounds: the median of each metric.
    pub fn from_samples(name: &str, verified: &str, samples: &[EdgeMeasure]) -> EdgeRow {
        let m = |f: fn(&EdgeMeasure) -> Option<f64>| {
            median(&samples.iter().filter_map(f).collect::<Vec<_>>())
        };
        EdgeRow {
            name: name.to_string(),
            verified: verified.to_string(),
            error: None,
            rounds: samples.len(),
            rps: m(|s| Some(s.rps)),
            p50_ms: m(|s| Some(s.p50_ms)),
            p99_ms: m(|s| Some(s.p99_ms)),
            cpu_us: m(|s| Some(s.cpu_us)),
            ext_cpu_us: m(|s| s.ext_cpu_us),
            non_2xx: samples.iter().map(|s| s.non_2xx).sum(),
            cpu_rounds: samples.iter().map(|s| s.cpu_us).collect(),
        }
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.2}×"))
}

/// The edge table in Markdown; ratios are to the first row (no auth).
pub fn edge_markdown(rows: &[EdgeRow]) -> String {
    let base = rows.first();
    let mut out = String::from(
        "| configuration | req/s | ×no-auth | p50 ms | × | p99 ms | × | Envoy CPU µs/req | × | ext_authz service µs/req | rounds | checked before measuring |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        if let Some(err) = &row.error {
            let _ = writeln!(
                out,
                "| {} | – | – | – | – | – | – | – | – | – | 0 | {} |",
                row.name,
                err.replace('|', "/")
            );
            continue;
        }
        let b = |f: fn(&EdgeRow) -> Option<f64>| ratio(f(row), base.and_then(f));
        let mut checked = row.verified.clone();
        if row.non_2xx > 0 {
            let _ = write!(
                checked,
                "; {} non-2xx/errors during load: not judged against the targets",
                row.non_2xx
            );
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            num(row.rps, 0),
            times(b(|r| r.rps)),
            num(row.p50_ms, 3),
            times(b(|r| r.p50_ms)),
            num(row.p99_ms, 3),
            times(b(|r| r.p99_ms)),
            num(row.cpu_us, 1),
            times(b(|r| r.cpu_us)),
            num(row.ext_cpu_us, 1),
            row.rounds,
            checked.replace('|', "/"),
        );
    }
    out
}

/// One target of the issue and how the run measured against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub goal: &'static str,
    pub measured: String,
    /// `None` when the run lacks the numbers to judge.
    pub met: Option<bool>,
}

/// Whether a row's figures may be judged against the targets: it was measured, and every
/// request under load was answered 2xx (a row answering 401s or dropping connections measured
/// something else than what its name says, usually cheaper).
fn judged(row: &EdgeRow) -> bool {
    row.error.is_none() && row.non_2xx == 0
}

/// The row named `prefix` (its name may go on, as "… (957 633 bytes)"), if measured and
/// [`judged`]: of the rows whose names start so, the shortest — "empty wasm filter" is not
/// "empty wasm filter + weauth's host calls" — and never another one when that row failed.
fn row<'a>(rows: &'a [EdgeRow], prefix: &str) -> Option<&'a EdgeRow> {
    rows.iter()
        .filter(|r| r.name.starts_with(prefix))
        .min_by_key(|r| r.name.len())
        .filter(|r| judged(r))
}

/// Tolerance for "no change between 0 and 1 000 000 entries": within ±10 %, about the
/// round-to-round noise of a shared two-core host.
pub const NO_CHANGE_TOLERANCE: f64 = 0.10;

/// The native row doing what plain jwt_authn cached does (the token forwarded, no identity
/// header): the like-for-like row of the native target.
const NATIVE_PLAIN_JOB: &str = "weauth native EdDSA (cache) doing plain jwt_authn's job";
/// jwt_authn cached doing weauth's job (two identity headers, the token removed, the route
/// matched again).
const JWT_SAME_JOB: &str = "jwt_authn ES256 (cache on) + weauth's header edits";
/// Plain jwt_authn with its cache: the native target's yardstick.
const JWT_CACHED: &str = "jwt_authn ES256, cache on";
/// The native build doing weauth's job with 1 000 000 revocations.
pub const NATIVE_1M: &str = "weauth native EdDSA (cache), 1M revoked";
/// The empty dynamic module, and the same making weauth's reads and counters.
const EMPTY_NATIVE: &str = "empty native module";
const EMPTY_NATIVE_READS: &str = "empty native module + weauth's reads and counters";

/// weauth's cost above no-auth as a multiple of the empty wasm filter's: at most this.
pub const EMPTY_FILTER_MULTIPLE: f64 = 1.5;
/// Memory added by 1 000 000 revocations: at most this with one worker (MiB)...
pub const MEMORY_ONE_WORKER_MIB: f64 = 80.0;
/// ... and at most this per additional worker (MiB).
pub const MEMORY_PER_WORKER_MIB: f64 = 40.0;

/// The issue's targets for the weauth filter, judged on `rows`, the revocation delay p99 and
/// the filter-memory section — the native target on `one_envoy` (its rows side by side in one
/// Envoy, the no-auth listener first) when that was measured, else on `rows` too.
pub fn targets(
    rows: &[EdgeRow],
    one_envoy: &[EdgeRow],
    delay_p99_ms: Option<f64>,
    memory: Option<&MemoryResult>,
) -> Vec<Target> {
    let cpu = |prefix: &str| row(rows, prefix).and_then(|r| r.cpu_us);
    let ext_total = row(rows, "jwt_authn EdDSA (cache on) + ext_authz")
        .and_then(|r| Some(r.cpu_us? + r.ext_cpu_us.unwrap_or(0.0)));
    let weauth0 = cpu("weauth EdDSA (cache), 0 revoked");
    // 1M if it was measured, else the largest set that was.
    let largest = rows
        .iter()
        .filter(|r| r.name.starts_with("weauth EdDSA") && judged(r))
        .rfind(|r| !r.name.ends_with(", 0 revoked"));
    let weauth1m = largest.and_then(|r| r.cpu_us);
    let largest_name = largest.map_or("1M", |r| {
        r.name
            .rsplit(", ")
            .next()
            .unwrap_or("1M")
            .trim_end_matches(" revoked")
    });
    let vs_cache = ratio(weauth0, cpu(JWT_CACHED));
    let vs_ext = ratio(cpu("jwt_authn EdDSA (cache on) + ext_authz"), weauth0);
    let vs_ext_total = ratio(ext_total, weauth0);
    let flat = ratio(weauth1m, weauth0);
    // The same comparison on the cost above the no-auth floor (HTTP handling alone).
    let floor = rows.first().filter(|r| judged(r)).and_then(|r| r.cpu_us);
    let above = |v: Option<f64>| Some(v? - floor?);
    let vs_ext_above = ratio(
        above(cpu("jwt_authn EdDSA (cache on) + ext_authz")),
        above(weauth0),
    );
    let ext_floor = ratio(cpu("jwt_authn EdDSA (cache on) + ext_authz"), floor);
    // weauth's own cost (above no-auth) in units of the empty wasm filter's.
    let empty = cpu("empty wasm filter");
    let empty_above = above(empty);
    let vs_empty0 = ratio(above(weauth0), empty_above);
    let vs_empty1m = ratio(above(weauth1m), empty_above);
    // The same empty filter making weauth's host calls: what the ABI alone costs for what
    // weauth is configured to do; weauth above it is its own computation.
    let abi_floor = cpu("empty wasm filter + weauth's host calls");
    let vs_empty_abi = ratio(above(abi_floor), empty_above);
    let own = |v: Option<f64>| Some(v? - abi_floor?);
    // One crossing of the ABI: the empty filter reading the clock six times, less the empty
    // filter, over six.
    let over_empty = |v: Option<f64>| Some(v? - empty?);
    let crossing = over_empty(cpu("empty wasm filter + 6 clock reads")).map(|d| d / 6.0);
    // The floor split: weauth's reads alone and its header edits alone, above the empty filter.
    let reads = over_empty(cpu("empty wasm filter + weauth's reads only"));
    let edits = over_empty(cpu("empty wasm filter + weauth's header edits only"));
    let us = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1} µs"));
    let one_worker = memory
        .and_then(|m| m.added_one_worker_kib())
        .map(|k| k as f64 / 1024.0);
    let per_worker = memory
        .and_then(|m| m.per_vm_kib())
        .map(|k| k as f64 / 1024.0);
    let mib = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1} MiB"));
    let memory_set = memory.map_or(0, |m| m.set_size);
    vec![
        Target {
            goal: "weauth's cost above no-auth ≤ 1.5× the empty wasm filter's (0 and 1M revoked)",
            measured: format!(
                "{} with 0 revoked, {} with {largest_name} (weauth − no auth) ÷ (empty filter − \
                 no auth), Envoy CPU per request. The empty filter making weauth's host calls \
                 (the ABI floor of the configuration) is {} by itself; weauth's own computation \
                 above that floor: {} with 0 revoked, {} with {largest_name}. Of the floor, \
                 above the empty filter: the reads (header map, shared data, clock) {}, the \
                 header edits (2 adds, 1 removal) {}. One host call with nothing to copy (a \
                 clock read) costs {}",
                times(vs_empty0),
                times(vs_empty1m),
                times(vs_empty_abi),
                us(own(weauth0)),
                us(own(weauth1m)),
                us(reads),
                us(edits),
                us(crossing),
            ),
            met: match (vs_empty0, vs_empty1m) {
                (Some(a), Some(b)) => {
                    Some(a <= EMPTY_FILTER_MULTIPLE && b <= EMPTY_FILTER_MULTIPLE)
                }
                _ => None,
            },
        },
        Target {
            goal: "1 000 000 revocations add ≤ 80 MiB with one worker, ≤ 40 MiB per further worker",
            measured: format!(
                "{} with one worker, {} per further worker ({memory_set} entries)",
                mib(one_worker),
                mib(per_worker)
            ),
            met: match (one_worker, per_worker) {
                (Some(a), Some(b)) if memory_set >= 1_000_000 => {
                    Some(a <= MEMORY_ONE_WORKER_MIB && b <= MEMORY_PER_WORKER_MIB)
                }
                _ => None,
            },
        },
        Target {
            goal: "weauth CPU/request within 1.2× of jwt_authn with its cache on",
            measured: format!(
                "{} (weauth, 0 revoked ÷ jwt_authn ES256 cache on)",
                times(vs_cache)
            ),
            met: vs_cache.map(|r| r <= 1.2),
        },
        Target {
            goal: "weauth at least 5× cheaper than jwt_authn + ext_authz",
            measured: format!(
                "{} in Envoy CPU alone; {} counting the ext_authz service's CPU too; {} on the \
                 cost above no-auth; even a filter costing nothing would be only {} cheaper in \
                 Envoy CPU (ext_authz ÷ no-auth)",
                times(vs_ext),
                times(vs_ext_total),
                times(vs_ext_above),
                times(ext_floor)
            ),
            met: vs_ext.map(|r| r >= 5.0),
        },
        Target {
            goal: "revocation delay p99 under 250 ms",
            measured: delay_p99_ms.map_or("–".into(), |d| {
                if d.is_finite() {
                    format!("{d:.1} ms")
                } else {
                    "over the poll's give-up time (logouts timed out)".into()
                }
            }),
            met: delay_p99_ms.map(|d| d < 250.0),
        },
        Target {
            goal: "no change in per-request cost between 0 and 1 000 000 revocation entries",
            measured: format!(
                "{} ({largest_name} ÷ 0; judged within ±{:.0} %)",
                times(flat),
                NO_CHANGE_TOLERANCE * 100.0
            ),
            met: flat.map(|r| (r - 1.0).abs() <= NO_CHANGE_TOLERANCE),
        },
        {
            // The native build (issue 22): its cost above no-auth against jwt_authn cached's,
            // with revocation on (1M revoked), judged like for like: native doing what plain
            // jwt_authn cached does to an allowed request (the token forwarded, nothing
            // edited), and native doing weauth's job against jwt_authn cached doing the same
            // (two identity headers, the token removed, the route matched again).
            let native0 = above(cpu("weauth native EdDSA (cache), 0 revoked"));
            let native1m = above(cpu(NATIVE_1M));
            let plain_job = above(cpu(NATIVE_PLAIN_JOB));
            let cached = above(cpu(JWT_CACHED));
            let same_job = above(cpu(JWT_SAME_JOB));
            let (plain, same) = (ratio(plain_job, cached), ratio(native1m, same_job));
            let by_round = |native: &str, jwt: &str| {
                paired_text(
                    row(rows, native)
                        .zip(row(rows, jwt))
                        .and_then(|(n, j)| paired_cpu(n, j)),
                )
            };
            // The same rows side by side in one Envoy (judged on when measured): each row's
            // cost above no-auth is the median of its round-by-round differences with the
            // baseline, all listeners of the same process.
            let base = one_envoy.first().filter(|r| judged(r));
            let side = |name: &str| {
                row(one_envoy, name)
                    .zip(base)
                    .and_then(|(r, b)| paired_cpu(r, b))
                    .map(|p| p.median)
            };
            let side_rounds = |native: &str, jwt: &str| {
                row(one_envoy, native)
                    .zip(row(one_envoy, jwt))
                    .and_then(|(n, j)| paired_cpu(n, j))
            };
            let one_plain = ratio(side(NATIVE_PLAIN_JOB), side(JWT_CACHED));
            let one_same = ratio(side(NATIVE_1M), side(JWT_SAME_JOB));
            let one_text = format!(
                "**One Envoy, side by side** ({} rounds, a fresh Envoy each, every row a listener \
                 of it; above no-auth = the median of the round-by-round differences): {} doing \
                 plain jwt_authn's job ({} against {}; native − jwt_authn round by round {}); \
                 {} doing weauth's job ({} against {}; round by round {}); the empty native \
                 module {} by itself, {} making weauth's reads and counters. **Separate \
                 Envoys**: ",
                base.map_or(0, |b| b.rounds),
                times(one_plain),
                us(side(NATIVE_PLAIN_JOB)),
                us(side(JWT_CACHED)),
                paired_text(side_rounds(NATIVE_PLAIN_JOB, JWT_CACHED)),
                times(one_same),
                us(side(NATIVE_1M)),
                us(side(JWT_SAME_JOB)),
                paired_text(side_rounds(NATIVE_1M, JWT_SAME_JOB)),
                us(side(EMPTY_NATIVE)),
                us(side(EMPTY_NATIVE_READS)),
            );
            // Judged side by side when that ran (it pairs rows within one process), else on
            // the rows' own Envoys.
            let (judged_plain, judged_same, one_text) = match (one_plain, one_same) {
                (Some(a), Some(b)) => (Some(a), Some(b), one_text),
                _ => (plain, same, String::new()),
            };
            Target {
                goal: "native: cost above no-auth ≤ jwt_authn cached's (1.0×), revocation on",
                measured: format!(
                    "{one_text}Like for like, 1M revoked, (native − no auth) ÷ (jwt_authn ES256 cached − \
                     no auth): {} doing plain jwt_authn's job (token forwarded, nothing \
                     edited; {} against {}; round by round {}); {} doing weauth's job against \
                     jwt_authn doing it too (two identity headers, token removed, route \
                     matched again; {} against {}; round by round {}). Native doing weauth's \
                     job against plain jwt_authn: {} with 1M revoked, {} with 0 ({} and {}). \
                     The empty native module above no-auth (Envoy's side of being a dynamic \
                     module): {} by itself, {} making weauth's reads and counters, {} making \
                     all of weauth's ABI calls",
                    times(plain),
                    us(plain_job),
                    us(cached),
                    by_round(NATIVE_PLAIN_JOB, JWT_CACHED),
                    times(same),
                    us(native1m),
                    us(same_job),
                    by_round(NATIVE_1M, JWT_SAME_JOB),
                    times(ratio(native1m, cached)),
                    times(ratio(native0, cached)),
                    us(native1m),
                    us(native0),
                    us(above(cpu(EMPTY_NATIVE))),
                    us(above(cpu(
                        EMPTY_NATIVE_READS
                    ))),
                    us(above(cpu("empty native module + weauth's ABI calls"))),
                ),
                met: match (judged_plain, judged_same) {
                    (Some(a), Some(b)) => Some(a <= 1.0 && b <= 1.0),
                    _ => None,
                },
            }
        },
    ]
}

/// A round-by-round comparison in words.
pub fn paired_text(paired: Option<Paired>) -> String {
    paired.map_or("–".to_string(), |p| {
        format!(
            "{:+.1} µs median ({:+.1} to {:+.1}; higher in {} of {} rounds)",
            p.median, p.min, p.max, p.higher, p.rounds
        )
    })
}

/// The targets as a Markdown table.
pub fn targets_markdown(targets: &[Target]) -> String {
    let mut out = String::from("| target | measured | met? |\n|---|---|---|\n");
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured (or a row not judged: see the edge table)",
        };
        let _ = writeln!(out, "| {} | {} | {} |", t.goal, t.measured, met);
    }
    out
}

/// A chart panel: title, the value it plots, decimals shown.
type Panel = (&'static str, fn(&EdgeRow) -> Option<f64>, usize);

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart of two panels (Envoy CPU µs/request, requests/s), one bar per
/// measured row, as a standalone SVG document.
pub fn edge_svg(rows: &[EdgeRow], title: &str) -> String {
    let measured: Vec<&EdgeRow> = rows.iter().filter(|r| r.error.is_none()).collect();
    let (label_w, bar_w, bar_h, gap, panel_gap) = (360.0, 420.0, 18.0, 8.0, 50.0);
    let panel_h = measured.len() as f64 * (bar_h + gap) + 30.0;
    let width = label_w + bar_w + 120.0;
    let height = 50.0 + 2.0 * panel_h + panel_gap;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let panels: [Panel; 2] = [
        (
            "Envoy CPU µs per request (lower is better)",
            |r| r.cpu_us,
            1,
        ),
        ("requests per second (higher is better)", |r| r.rps, 0),
    ];
    for (p, (name, value, decimals)) in panels.iter().enumerate() {
        let top = 45.0 + p as f64 * (panel_h + panel_gap);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{top}" font-weight="bold">{}</text>"#,
            xml_escape(name)
        );
        let max = measured
            .iter()
            .filter_map(|r| value(r))
            .fold(0.0_f64, f64::max);
        for (i, r) in measured.iter().enumerate() {
            let y = top + 12.0 + i as f64 * (bar_h + gap);
            let v = value(r).unwrap_or(0.0);
            let w = if max > 0.0 { v / max * bar_w } else { 0.0 };
            let color = if r.name.starts_with("weauth") {
                "#2a7ab0"
            } else if r.name.starts_with("no auth") {
                "#999999"
            } else {
                "#d08a2c"
            };
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + bar_h - 5.0,
                xml_escape(&r.name)
            );
            let _ = writeln!(
                svg,
                r#"<rect x="{label_w}" y="{y:.1}" width="{w:.1}" height="{bar_h}" fill="{color}"/>"#
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{v:.decimals$}</text>"#,
                label_w + w + 5.0,
                y + bar_h - 5.0
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Revocation delays measured.
#[derive(Debug, Clone)]
pub struct DelayResult {
    pub summary: Option<Summary>,
    pub max_ms: Option<f64>,
    /// Logouts whose token was still accepted when the poll gave up.
    pub timeouts: usize,
    pub errors: Vec<String>,
}

/// One timed phase of the issuer benchmark.
#[derive(Debug, Clone)]
pub struct Phase {
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latency: Option<Summary>,
    pub first_error: Option<String>,
}

impl Phase {
    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The issuer section.
#[derive(Debug, Clone)]
pub struct IssuerResult {
    pub concurrency: usize,
    pub logins: Phase,
    pub refreshes: Phase,
    /// `weauth_token::sign` EdDSA tokens per second on one thread.
    pub sign_per_sec_one_thread: f64,
    pub cores: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub logins_made: u64,
}

fn summary_cells(s: Option<Summary>) -> (String, String) {
    (num(s.map(|s| s.p50), 2), num(s.map(|s| s.p99), 2))
}

/// The revocation-delay section.
pub fn delay_markdown(d: &DelayResult) -> String {
    let (p50, p99) = summary_cells(d.summary);
    let mut out = String::from(
        "| revocations measured | p50 ms | p99 ms | max ms | not refused in time |\n|---:|---:|---:|---:|---:|\n",
    );
    let _ = writeln!(
        out,
        "| {} | {p50} | {p99} | {} | {} |",
        d.summary.map_or(0, |s| s.count),
        num(d.max_ms, 2),
        d.timeouts
    );
    if !d.errors.is_empty() {
        let _ = writeln!(
            out,
            "\n{} error(s), first: {}",
            d.errors.len(),
            d.errors[0].replace('|', "/")
        );
    }
    out
}

/// The issuer section.
pub fn issuer_markdown(r: &IssuerResult) -> String {
    let mut out = format!(
        "| operation ({} concurrent clients) | per second | p50 ms | p99 ms | ok | errors |\n|---|---:|---:|---:|---:|---:|\n",
        r.concurrency
    );
    for (name, p) in [
        ("login (code → WeChat mock → token pair)", &r.logins),
        ("refresh (rotate)", &r.refreshes),
    ] {
        let (p50, p99) = summary_cells(p.latency);
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {p50} | {p99} | {} | {} |",
            p.rate(),
            p.ok,
            p.errors
        );
    }
    let _ = writeln!(
        out,
        "| ceiling: `weauth_token::sign` EdDSA, 1 thread (× {} cores = {:.0}) | {:.0} | – | – | – | – |",
        r.cores,
        r.sign_per_sec_one_thread * r.cores as f64,
        r.sign_per_sec_one_thread
    );
    let mib = |k: Option<u64>| {
        k.map_or("–".to_string(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    let _ = writeln!(
        out,
        "\nIssuer resident memory: {} before, {} after, having made {} logins and {} refreshes.",
        mib(r.rss_before_kib),
        mib(r.rss_after_kib),
        r.logins_made,
        r.refreshes.ok
    );
    for (name, p) in [("login", &r.logins), ("refresh", &r.refreshes)] {
        if let Some(e) = &p.first_error {
            let _ = writeln!(out, "\nFirst {name} error: {}", e.replace('|', "/"));
        }
    }
    out
}

/// Envoy resident memory with the weauth filter: `rss_kib[workers - 1][set]`, set 0 = no
/// revocations, 1 = `set_size` revocations.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryResult {
    /// The revocation set compared with the empty one (1 000 000 unless that did not load).
    pub set_size: usize,
    pub entries_gauge: Option<u64>,
    pub rss_kib: [[Option<u64>; 2]; 2],
}

impl MemoryResult {
    /// What 1M entries add at one worker: shared data plus one worker VM's decoded copy.
    pub fn added_one_worker_kib(&self) -> Option<i64> {
        Some(self.rss_kib[0][1]? as i64 - self.rss_kib[0][0]? as i64)
    }

    /// What 1M entries add at two workers.
    pub fn added_two_workers_kib(&self) -> Option<i64> {
        Some(self.rss_kib[1][1]? as i64 - self.rss_kib[1][0]? as i64)
    }

    /// Per-VM share: the growth from one to two workers.
    pub fn per_vm_kib(&self) -> Option<i64> {
        Some(self.added_two_workers_kib()? - self.added_one_worker_kib()?)
    }

    /// Shared-data share: what one worker adds, less one VM's copy.
    pub fn shared_kib(&self) -> Option<i64> {
        Some(self.added_one_worker_kib()? - self.per_vm_kib()?)
    }
}

/// The filter-memory section.
pub fn memory_markdown(m: &MemoryResult) -> String {
    let mib = |k: Option<u64>| k.map_or("–".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
    let dmib =
        |k: Option<i64>| k.map_or("–".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
    let n = m.set_size;
    let mut out = format!(
        "| Envoy workers | RSS, 0 revoked (MiB) | RSS, {n} revoked (MiB) | added by {n} entries (MiB) |\n|---:|---:|---:|---:|\n",
    );
    let added = [m.added_one_worker_kib(), m.added_two_workers_kib()];
    for (w, row) in m.rss_kib.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            w + 1,
            mib(row[0]),
            mib(row[1]),
            dmib(added[w])
        );
    }
    let _ = writeln!(
        out,
        "\nEstimated from the differences: per worker VM (decoded copy) {} MiB; shared data {} MiB \
         (what one worker adds, less one VM's copy). The filter's `weauth.revocation_entries` \
         gauge read {}.",
        dmib(m.per_vm_kib()),
        dmib(m.shared_kib()),
        m.entries_gauge.map_or("nothing".to_string(), |n| n.to_string())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(rps: f64, cpu: f64) -> EdgeMeasure {
        EdgeMeasure {
            rps,
            p50_ms: 1.0,
            p99_ms: 2.0,
            cpu_us: cpu,
            ext_cpu_us: None,
            non_2xx: 0,
        }
    }

    fn rows() -> Vec<EdgeRow> {
        vec![
            EdgeRow::from_samples("no auth", "ok", &[measure(1000.0, 10.0)]),
            EdgeRow::from_samples("jwt_authn ES256, cache on", "ok", &[measure(800.0, 20.0)]),
            EdgeRow::from_samples(
                "jwt_authn EdDSA (cache on) + ext_authz, 10k revoked",
                "ok",
                &[measure(300.0, 100.0)],
            ),
            EdgeRow::from_samples(
                "weauth EdDSA (cache), 0 revoked",
                "ok",
                &[measure(900.0, 22.0)],
            ),
            EdgeRow::failed("weauth EdDSA (cache), 1M revoked", "not run: no wasm"),
        ]
    }

    #[test]
    fn targets_native_like_for_like() {
        let with = |plain_job: f64| {
            let mut r = rows();
            for (name, cpu) in [
                ("jwt_authn ES256 (cache on) + weauth's header edits", 25.0),
                ("weauth native EdDSA (cache), 0 revoked", 22.5),
                ("weauth native EdDSA (cache), 1M revoked", 20.0),
                (
                    "weauth native EdDSA (cache) doing plain jwt_authn's job, 1M revoked",
                    plain_job,
                ),
                ("empty native module", 11.0),
                ("empty native module + weauth's reads and counters", 16.0),
                ("empty native module + weauth's ABI calls", 18.0),
            ] {
                r.push(EdgeRow::from_samples(name, "ok", &[measure(900.0, cpu)]));
            }
            targets(&r, &[], None, None).pop().unwrap()
        };
        // Above no-auth (10): jwt_authn cached 10, doing weauth's job 15; native 9 doing
        // plain jwt_authn's job, 10 and 12.5 doing weauth's.
        let native = with(19.0);
        assert!(native.goal.starts_with("native:"));
        assert_eq!(native.met, Some(true), "0.90× and 0.67×");
        assert_eq!(
            native.measured,
            "Like for like, 1M revoked, (native − no auth) ÷ (jwt_authn ES256 cached − no \
             auth): 0.90× doing plain jwt_authn's job (token forwarded, nothing edited; 9.0 µs \
             against 10.0 µs; round by round -1.0 µs median (-1.0 to -1.0; higher in 0 of 1 \
             rounds)); 0.67× doing weauth's job against jwt_authn doing it too (two identity \
             headers, token removed, route matched again; 10.0 µs against 15.0 µs; round by \
             round -5.0 µs median (-5.0 to -5.0; higher in 0 of 1 rounds)). Native doing \
             weauth's job against plain jwt_authn: 1.00× with 1M revoked, 1.25× with 0 (10.0 \
             µs and 12.5 µs). The empty native module above no-auth (Envoy's side of being a \
             dynamic module): 1.0 µs by itself, 6.0 µs making weauth's reads and counters, 8.0 \
             µs making all of weauth's ABI calls"
        );
        // Either comparison above 1.0× fails the target.
        assert_eq!(
            with(21.0).met,
            Some(false),
            "1.10× doing plain jwt_authn's job"
        );
        // Without the like-for-like row there is nothing to judge.
        let mut r = rows();
        r.push(EdgeRow::from_samples(
            "weauth native EdDSA (cache), 1M revoked",
            "ok",
            &[measure(900.0, 20.0)],
        ));
        assert_eq!(targets(&r, &[], None, None).pop().unwrap().met, None);
    }

    #[test]
    fn targets_native_judged_side_by_side_when_measured() {
        // Separate Envoys: native doing plain jwt_authn's job 1.10× (not met).
        let mut separate = rows();
        for (name, cpu) in [
            ("jwt_authn ES256 (cache on) + weauth's header edits", 25.0),
            ("weauth native EdDSA (cache), 1M revoked", 20.0),
            (
                "weauth native EdDSA (cache) doing plain jwt_authn's job, 1M revoked",
                21.0,
            ),
        ] {
            separate.push(EdgeRow::from_samples(name, "ok", &[measure(900.0, cpu)]));
        }
        assert_eq!(
            targets(&separate, &[], None, None).pop().unwrap().met,
            Some(false)
        );
        // One Envoy, two rounds; the baseline moved 4 µs between them, and each row's cost
        // above it is taken round by round: jwt_authn cached 2 and 3 (median 2.5), native plain
        // 2 and 2 (2.0), jwt_authn doing weauth's job 5 and 5, native doing it 4 and 4.
        let side = |plain_job: [f64; 2]| {
            let cpu = |name: &str, v: [f64; 2]| {
                let samples: Vec<EdgeMeasure> = v.iter().map(|c| measure(1.0, *c)).collect();
                EdgeRow::from_samples(name, "ok", &samples)
            };
            vec![
                cpu("no auth", [20.0, 24.0]),
                cpu("jwt_authn ES256, cache on", [22.0, 27.0]),
                cpu(
                    "jwt_authn ES256 (cache on) + weauth's header edits",
                    [25.0, 29.0],
                ),
                cpu("weauth native EdDSA (cache), 1M revoked", [24.0, 28.0]),
                cpu(
                    "weauth native EdDSA (cache) doing plain jwt_authn's job, 1M revoked",
                    plain_job,
                ),
            ]
        };
        let met = targets(&separate, &side([22.0, 26.0]), None, None)
            .pop()
            .unwrap();
        assert_eq!(met.met, Some(true), "{}", met.measured);
        assert!(
            met.measured.starts_with(
                "**One Envoy, side by side** (2 rounds, a fresh Envoy each, every row a \
                 listener of it; above no-auth = the median of the round-by-round \
                 differences): 0.80× doing plain jwt_authn's job (2.0 µs against 2.5 µs; \
                 native − jwt_authn round by round -0.5 µs median (-1.0 to +0.0; higher in 0 \
                 of 2 rounds)); 0.80× doing weauth's job (4.0 µs against 5.0 µs;"
            ),
            "{}",
            met.measured
        );
        // The separate Envoys' figures are their own (1.10×), not the side-by-side ones.
        assert!(
            met.measured.contains(
                "**Separate Envoys**: Like for like, 1M revoked, (native − no auth) ÷ \
                 (jwt_authn ES256 cached − no auth): 1.10× doing plain jwt_authn's job"
            ),
            "{}",
            met.measured
        );
        // The judgment follows the side-by-side rows either way.
        let not_met = targets(&rows(), &side([23.0, 27.5]), None, None)
            .pop()
            .unwrap();
        assert_eq!(not_met.met, Some(false), "{}", not_met.measured);
    }

    #[test]
    fn paired_cpu_round_by_round_over_the_common_rounds() {
        let cpu = |name: &str, v: &[f64]| {
            let samples: Vec<EdgeMeasure> = v.iter().map(|c| measure(1.0, *c)).collect();
            EdgeRow::from_samples(name, "ok", &samples)
        };
        // Round by round 3, −1 and 2; `a`'s fourth round has no pair.
        let a = cpu("a", &[30.0, 24.0, 25.0, 22.0]);
        let b = cpu("b", &[27.0, 25.0, 23.0]);
        let p = paired_cpu(&a, &b).unwrap();
        assert_eq!(
            (p.median, p.min, p.max, p.rounds, p.higher),
            (2.0, -1.0, 3.0, 3, 2)
        );
        assert_eq!(paired_cpu(&a, &EdgeRow::failed("c", "not run")), None);
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn from_samples_takes_medians() {
        let r = EdgeRow::from_samples(
            "x",
            "ok",
            &[measure(1.0, 30.0), measure(3.0, 10.0), measure(2.0, 20.0)],
        );
        assert_eq!(r.rps, Some(2.0));
        assert_eq!(r.cpu_us, Some(20.0));
        assert_eq!(r.rounds, 3);
    }

    #[test]
    fn edge_markdown_ratios_to_first_row() {
        let md = edge_markdown(&rows());
        let cache_line = md
            .lines()
            .find(|l| l.starts_with("| jwt_authn ES256"))
            .unwrap();
        assert!(cache_line.contains("| 800 | 0.80× |"), "{cache_line}");
        assert!(cache_line.contains("| 20.0 | 2.00× |"), "{cache_line}");
        assert!(md.contains("| weauth EdDSA (cache), 1M revoked | – |"));
        assert!(md.contains("not run: no wasm"));
    }

    #[test]
    fn targets_flatness_falls_back_to_largest_measured_set() {
        let mut r = rows();
        r.insert(
            4,
            EdgeRow::from_samples(
                "weauth EdDSA (cache), 100k revoked",
                "ok",
                &[measure(900.0, 23.1)],
            ),
        );
        let t = targets(&r, &[], None, None);
        assert_eq!(t[5].met, Some(true));
        assert!(t[5].measured.contains("(100k ÷ 0;"), "{}", t[5].measured);
    }

    #[test]
    fn targets_judged_from_rows() {
        let t = targets(&rows(), &[], Some(120.0), None);
        // 22 / 20 = 1.1 ≤ 1.2
        assert_eq!(t[2].met, Some(true));
        // 100 / 22 ≈ 4.5 < 5; above the floor of 10: 90 / 12 = 7.5; floor bound 100 / 10.
        assert_eq!(t[3].met, Some(false));
        assert!(
            t[3].measured.contains("7.50× on the cost above no-auth"),
            "{}",
            t[3].measured
        );
        assert!(
            t[3].measured.contains("only 10.00× cheaper"),
            "{}",
            t[3].measured
        );
        assert_eq!(t[4].met, Some(true));
        // the 1M row failed: cannot judge
        assert_eq!(t[5].met, None);
        assert!(targets_markdown(&t).contains("not measured"));
    }

    /// A failed "empty wasm filter" row is not stood in for by the next row its name begins
    /// ("+ weauth's host calls"): the multiple is not judged.
    #[test]
    fn targets_do_not_take_a_longer_row_for_a_failed_one() {
        let mut r = rows();
        r.insert(1, EdgeRow::failed("empty wasm filter", "did not start"));
        r.insert(
            2,
            EdgeRow::from_samples(
                "empty wasm filter + weauth's host calls",
                "ok",
                &[measure(930.0, 16.0)],
            ),
        );
        let t = targets(&r, &[], None, None);
        assert_eq!(t[0].met, None, "{}", t[0].measured);
    }

    /// A row that answered non-2xx under load (a token refused, connections dropped) measured
    /// something else: no target is judged on it, and the table says so.
    #[test]
    fn targets_not_judged_on_a_row_with_non_2xx() {
        let mut r = rows();
        r[1] = EdgeRow::from_samples(
            "jwt_authn ES256, cache on",
            "ok",
            &[EdgeMeasure {
                non_2xx: 12,
                ..measure(800.0, 20.0)
            }],
        );
        let t = targets(&r, &[], None, None);
        let cache = t
            .iter()
            .find(|t| t.goal.contains("jwt_authn with its cache on"))
            .unwrap();
        assert_eq!(cache.met, None, "{}", cache.measured);
        assert!(
            edge_markdown(&r).contains("12 non-2xx/errors during load: not judged"),
            "{}",
            edge_markdown(&r)
        );
        // Without the errors, the same row is judged.
        let t = targets(&rows(), &[], None, None);
        let cache = t
            .iter()
            .find(|t| t.goal.contains("jwt_authn with its cache on"))
            .unwrap();
        assert!(cache.met.is_some(), "{}", cache.measured);
    }

    /// Logouts that timed out: the delay target is not met, and says why.
    #[test]
    fn targets_delay_with_timeouts_not_met() {
        let t = targets(&rows(), &[], Some(f64::INFINITY), None);
        let delay = t
            .iter()
            .find(|t| t.goal.starts_with("revocation delay"))
            .unwrap();
        assert_eq!(delay.met, Some(false));
        assert!(delay.measured.contains("timed out"), "{}", delay.measured);
    }

    #[test]
    fn targets_empty_filter_multiple_and_memory() {
        let mut r = rows();
        r.insert(
            1,
            EdgeRow::from_samples("empty wasm filter", "ok", &[measure(950.0, 14.0)]),
        );
        r.insert(
            2,
            EdgeRow::from_samples(
                "empty wasm filter + weauth's host calls",
                "ok",
                &[measure(930.0, 16.0)],
            ),
        );
        r.insert(
            3,
            EdgeRow::from_samples(
                "empty wasm filter + weauth's reads only",
                "ok",
                &[measure(940.0, 14.5)],
            ),
        );
        r.insert(
            4,
            EdgeRow::from_samples(
                "empty wasm filter + weauth's header edits only",
                "ok",
                &[measure(940.0, 15.5)],
            ),
        );
        r.pop();
        r.push(EdgeRow::from_samples(
            "weauth EdDSA (cache), 1M revoked",
            "ok",
            &[measure(900.0, 17.0)],
        ));
        let memory = MemoryResult {
            set_size: 1_000_000,
            entries_gauge: Some(1_000_000),
            // one worker: +60 MiB; two workers: +95 MiB → 35 MiB per further worker.
            rss_kib: [
                [Some(100 * 1024), Some(160 * 1024)],
                [Some(120 * 1024), Some(215 * 1024)],
            ],
        };
        let t = targets(&r, &[], None, Some(&memory));
        // (22 − 10) ÷ (14 − 10) = 3.0 with 0 revoked; (17 − 10) ÷ 4 = 1.75 with 1M.
        assert_eq!(t[0].met, Some(false));
        assert!(
            t[0].measured
                .starts_with("3.00× with 0 revoked, 1.75× with 1M"),
            "{}",
            t[0].measured
        );
        // The floor: (16 − 10) ÷ 4 = 1.5; weauth's own: 22 − 16 and 17 − 16.
        assert!(
            t[0].measured.contains(
                "is 1.50× by itself; weauth's own computation above that floor: 6.0 µs with 0 \
                 revoked, 1.0 µs with 1M. Of the floor, above the empty filter: the reads \
                 (header map, shared data, clock) 0.5 µs, the header edits (2 adds, 1 removal) \
                 1.5 µs"
            ),
            "{}",
            t[0].measured
        );
        assert_eq!(t[1].met, Some(true));
        assert!(
            t[1].measured
                .contains("60.0 MiB with one worker, 35.0 MiB per further"),
            "{}",
            t[1].measured
        );
        let small = MemoryResult {
            set_size: 100_000,
            ..memory
        };
        assert_eq!(targets(&r, &[], None, Some(&small))[1].met, None);
    }

    #[test]
    fn edge_svg_has_a_bar_per_measured_row_and_escapes() {
        let mut r = rows();
        r[0].name = "no auth <baseline> & co".into();
        let svg = edge_svg(&r, "t");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // 4 measured rows × 2 panels, plus the background rect.
        assert_eq!(svg.matches("<rect").count(), 4 * 2 + 1);
        assert!(svg.contains("no auth &lt;baseline&gt; &amp; co"));
        assert!(!svg.contains("1M revoked"));
    }

    #[test]
    fn memory_result_splits_shared_and_per_vm() {
        // 1 worker: +100 MiB; 2 workers: +140 MiB → per VM 40, shared 60.
        let m = MemoryResult {
            set_size: 1_000_000,
            entries_gauge: Some(1_000_000),
            rss_kib: [
                [Some(50 * 1024), Some(150 * 1024)],
                [Some(60 * 1024), Some(200 * 1024)],
            ],
        };
        assert_eq!(m.per_vm_kib(), Some(40 * 1024));
        assert_eq!(m.shared_kib(), Some(60 * 1024));
        let md = memory_markdown(&m);
        assert!(md.contains("| 2 | 60.0 | 200.0 | 140.0 |"), "{md}");
        assert!(md.contains("gauge read 1000000"));
    }

    #[test]
    fn memory_result_missing_two_worker_rss_is_none() {
        let m = MemoryResult {
            set_size: 100_000,
            entries_gauge: None,
            rss_kib: [[Some(1), Some(2)], [None, Some(3)]],
        };
        assert_eq!(m.per_vm_kib(), None);
        assert!(memory_markdown(&m).contains("per worker VM (decoded copy) – MiB"));
    }

    #[test]
    fn delay_markdown_reports_count_and_timeouts() {
        let d = DelayResult {
            summary: Some(Summary {
                count: 100,
                p50: 12.5,
                p99: 80.25,
            }),
            max_ms: Some(90.0),
            timeouts: 1,
            errors: vec!["logout answered 500".into()],
        };
        let md = delay_markdown(&d);
        assert!(md.contains("| 100 | 12.50 | 80.25 | 90.00 | 1 |"), "{md}");
        assert!(md.contains("1 error(s), first: logout answered 500"));
    }

    #[test]
    fn issuer_markdown_rates_and_memory() {
        let phase = |ok| Phase {
            ok,
            errors: 0,
            seconds: 2.0,
            latency: None,
            first_error: None,
        };
        let r = IssuerResult {
            concurrency: 16,
            logins: phase(1000),
            refreshes: phase(3000),
            sign_per_sec_one_thread: 20000.0,
            cores: 2,
            rss_before_kib: Some(10 * 1024),
            rss_after_kib: Some(30 * 1024),
            logins_made: 1000,
        };
        let md = issuer_markdown(&r);
        assert!(md.contains("| 500 |"), "{md}");
        assert!(md.contains("| 1500 |"), "{md}");
        assert!(md.contains("× 2 cores = 40000"), "{md}");
        assert!(md.contains("10.0 MiB before, 30.0 MiB after, having made 1000 logins"));
    }
}
