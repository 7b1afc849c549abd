//! Prometheus metrics in the text exposition format, kept in a small registry (no globals:
//! one [`Metrics`] lives in the application state).
//!
//! Series: `weauth_logins_total{outcome}`, `weauth_refreshes_total{outcome}`,
//! `weauth_revocations_total{kind}`, `weauth_wechat_errors_total{api,errcode}`,
//! `weauth_wechat_call_seconds{api}` (histogram), `weauth_http_requests_total{route,status}`,
//! `weauth_bearer_rejections_total{reason}`, `weauth_wechat_token_refreshes_total{appid,outcome}`,
//! `weauth_wechat_token_invalidations_total{errcode}`, `weauth_decrypt_total{outcome}`,
//! `weauth_phone_total{outcome}`, `weauth_checksession_total{outcome}`,
//! `weauth_login_risk_total{appid,outcome,rank}`,
//! `weauth_wechat_app_calls_total{appid,api,outcome}` (per configured app: `ok` or the
//! errcode/failure class), `weauth_http_request_duration_seconds{route}` (histogram; `route`
//! here and in `weauth_http_requests_total` is one of a fixed set, see [`route_label`]),
//! `weauth_store_check_failures_total`; on Redis,
//! from the store's health check, `weauth_store_evicted_keys_total` and
//! `weauth_store_unreplicated_writes_total`; gauges set by the background tasks
//! (`weauth_store_up`, `weauth_signing_key_activated_timestamp_seconds`,
//! `weauth_signing_keys_next`, `weauth_signing_keys_loaded_timestamp_seconds`, and on Redis `weauth_store_replicas`,
//! `weauth_store_replicas_wanted`) and gauges passed in at scrape time by the caller
//! (`weauth_revocation_seq`, `weauth_signing_keys_published`, `weauth_feed_waiters`); with
//! traces exported, `weauth_otlp_spans_total{outcome}` from the exporter's totals.
//!
//! The alerts and the dashboard built on these series are in `deploy/monitoring/`
//! (docs/RUNBOOK.md explains each alert).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::telemetry::otel::SpanCounts;

/// Upper bounds of the WeChat latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the HTTP latency histogram, in seconds (most answers take well under 10 ms).
const HTTP_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The histograms: (name, help, bucket bounds), rendered in this order.
const HISTOGRAMS: [(&str, &str, &[f64]); 2] = [
    (
        "weauth_wechat_call_seconds",
        "WeChat call latency per attempt.",
        &BUCKETS,
    ),
    (
        "weauth_http_request_duration_seconds",
        "Time to answer an HTTP request, by route (revocations: long polls, held up to their wait).",
        &HTTP_BUCKETS,
    ),
];

struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        for (count, bound) in self.counts.iter_mut().zip(bounds) {
            if seconds <= *bound {
                *count += 1;
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, String), u64>,
    histograms: BTreeMap<(&'static str, String), Histogram>,
    gauges: BTreeMap<&'static str, f64>,
    /// Series per counter name, for [`MAX_SERIES`].
    series: BTreeMap<&'static str, usize>,
    /// Increments of a series refused for [`MAX_SERIES`].
    series_refused: u64,
}

/// The most series one counter keeps. Label values taken from outside — WeChat's errcodes and
/// HTTP statuses, as received from whatever answers at `WEAUTH_WECHAT_API_BASE` — could
/// otherwise grow the registry, and every Prometheus scraping it, without end; WeChat's
/// catalogue per app and API is a few dozen codes. Past it a new series is not made and the
/// increment is counted in `weauth_metrics_series_refused_total`.
const MAX_SERIES: usize = 1000;

impl Inner {
    /// Adds one to the counter `name{labels}`, made if it has fewer than [`MAX_SERIES`].
    fn bump(&mut self, name: &'static str, labels: String) {
        let key = (name, labels);
        if let Some(count) = self.counters.get_mut(&key) {
            *count += 1;
            return;
        }
        let series = self.series.entry(name).or_default();
        if *series >= MAX_SERIES {
            self.series_refused += 1;
            return;
        }
        *series += 1;
        self.counters.insert(key, 1);
    }
}

/// The gauges set by [`Metrics`] methods: (name, help).
const GAUGES: [(&str, &str); 6] = [
    (
        "weauth_store_up",
        "1 when the last background store check (the revocation seq read) succeeded, else 0.",
    ),
    (
        "weauth_signing_key_activated_timestamp_seconds",
        "When the current signing key began signing (unix seconds).",
    ),
    (
        "weauth_signing_keys_next",
        "Keys published in the JWKS that do not sign yet (a successor in waiting).",
    ),
    (
        "weauth_signing_keys_loaded_timestamp_seconds",
        "When this replica last read its signing keys from the store (unix seconds); a reload that fails leaves it, and the keys it holds.",
    ),
    (
        "weauth_store_replicas",
        "Redis: replicas the primary reports online (state=online); below weauth_store_replicas_wanted, acknowledged writes are on fewer machines than configured.",
    ),
    (
        "weauth_store_replicas_wanted",
        "Redis: WEAUTH_REDIS_WAIT_REPLICAS, the replicas each write WAITs for.",
    ),
];

/// The `route` label of `weauth_http_request_duration_seconds` and `weauth_http_requests_total`
/// for a request path: the API's routes by name, everything else `other` (so a scanner's paths
/// cannot grow the series).
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/login" => "login",
        "/v1/token/refresh" => "refresh",
        "/v1/logout" => "logout",
        "/v1/revocations" => "revocations",
        "/.well-known/jwks.json" => "jwks",
        "/metrics" | "/healthz" | "/readyz" => "probe",
        p if p.starts_with("/v1/me") => "me",
        p if p.starts_with("/v1/web/") => "web",
        p if p.starts_with("/v1/admin/") => "admin",
        _ => "other",
    }
}

/// The registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// The OTLP exporter's totals, when traces are exported ([`Metrics::watch_spans`]).
    spans: std::sync::OnceLock<Arc<SpanCounts>>,
}

const HELP: [(&str, &str, &str); 17] = [
    (
        "weauth_http_shed_total",
        "counter",
        "Client requests answered 503 at once, by route, because WEAUTH_MAX_IN_FLIGHT requests were under way on this replica.",
    ),
    (
        "weauth_login_risk_total",
        "counter",
        "WeChat risk control at login, by app, outcome (admitted, refused, error_allowed, error_denied) and rank.",
    ),
    (
        "weauth_store_check_failures_total",
        "counter",
        "Background store checks (the revocation seq read) that failed.",
    ),
    (
        "weauth_store_evicted_keys_total",
        "counter",
        "Redis: keys the server evicted (growth of its evicted_keys) since this replica started watching; anything above 0 can be lost acknowledged writes.",
    ),
    (
        "weauth_store_unreplicated_writes_total",
        "counter",
        "Redis: writes acknowledged without reaching WEAUTH_REDIS_WAIT_REPLICAS replicas (WAIT skipped because none was online, or timed out).",
    ),
    (
        "weauth_wechat_app_calls_total",
        "counter",
        "WeChat call attempts per configured app, by API and outcome (ok or errcode/failure class).",
    ),
    (
        "weauth_wechat_token_refreshes_total",
        "counter",
        "WeChat app access token fetches by this replica, by app and outcome (ok, forced, force_withheld, failed, failed_kept_old).",
    ),
    (
        "weauth_wechat_token_invalidations_total",
        "counter",
        "Cached WeChat access tokens refused by WeChat and invalidated, by errcode.",
    ),
    (
        "weauth_decrypt_total",
        "counter",
        "POST /v1/me/decrypt by outcome (ok or the error code).",
    ),
    (
        "weauth_phone_total",
        "counter",
        "POST /v1/me/phone by outcome.",
    ),
    (
        "weauth_checksession_total",
        "counter",
        "GET /v1/me/session by outcome (valid, invalid, error).",
    ),
    ("weauth_logins_total", "counter", "Logins by outcome."),
    (
        "weauth_refreshes_total",
        "counter",
        "Refresh-token rotations by outcome.",
    ),
    (
        "weauth_revocations_total",
        "counter",
        "Revocation entries written, by kind.",
    ),
    (
        "weauth_wechat_errors_total",
        "counter",
        "Failed WeChat calls (each attempt) by errcode or failure class.",
    ),
    (
        "weauth_http_requests_total",
        "counter",
        "HTTP responses by route and status (revocations: the feed's long-poll answers; probe: health checks and scrapes; 499: the client went away before the answer).",
    ),
    (
        "weauth_bearer_rejections_total",
        "counter",
        "Bearer tokens refused on the issuer's own routes, by reason.",
    ),
];

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn add(&self, name: &'static str, labels: String) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.bump(name, labels);
        }
    }

    /// Counts a login by outcome (`ok`, `invalid_grant`, `rate_limited`, ...).
    pub fn login(&self, outcome: &str) {
        self.add(
            "weauth_logins_total",
            format!("outcome=\"{}\"", escape(outcome)),
        );
    }

    /// Counts a refresh by outcome (`ok`, `reuse`, `invalid_grant`, ...).
    pub fn refresh(&self, outcome: &str) {
        self.add(
            "weauth_refreshes_total",
            format!("outcome=\"{}\"", escape(outcome)),
        );
    }

    /// Counts a revocation entry by kind (`jti`, `sid`, `sub`).
    pub fn revocation(&self, kind: &str) {
        self.add(
            "weauth_revocations_total",
            format!("kind=\"{}\"", escape(kind)),
        );
    }

    /// Counts a refused bearer token (`missing`, `expired`, `revoked`, `bad_signature`, ...).
    pub fn bearer_rejected(&self, reason: &str) {
        self.add(
            "weauth_bearer_rejections_total",
            format!("reason=\"{}\"", escape(reason)),
        );
    }

    /// Counts a WeChat access-token fetch for `appid` by outcome (the app, so that the alert on
    /// a token that cannot be had names it, and a success of one app does not hide another's
    /// failures).
    pub fn wechat_token_refresh(&self, appid: &str, outcome: &str) {
        self.add(
            "weauth_wechat_token_refreshes_total",
            format!(
                "appid=\"{}\",outcome=\"{}\"",
                escape(appid),
                escape(outcome)
            ),
        );
    }

    /// Counts a cached access token WeChat refused (40001, 42001, 40014).
    pub fn wechat_token_invalidated(&self, errcode: i64) {
        self.add(
            "weauth_wechat_token_invalidations_total",
            format!("errcode=\"{errcode}\""),
        );
    }

    /// Counts a decrypt request by outcome.
    pub fn decrypt(&self, outcome: &str) {
        self.add(
            "weauth_decrypt_total",
            format!("outcome=\"{}\"", escape(outcome)),
        );
    }

    /// Counts a phone-number request by outcome.
    pub fn phone(&self, outcome: &str) {
        self.add(
            "weauth_phone_total",
            format!("outcome=\"{}\"", escape(outcome)),
        );
    }

    /// Counts a risk-control verdict at login: `outcome` is `admitted`, `refused`,
    /// `error_allowed` or `error_denied`; `rank` is WeChat's rank (0–4, `none` when WeChat
    /// did not answer).
    pub fn login_risk(&self, appid: &str, outcome: &str, rank: Option<u8>) {
        let rank = rank.map_or_else(|| "none".to_string(), |rank| rank.to_string());
        self.add(
            "weauth_login_risk_total",
            format!(
                "appid=\"{}\",outcome=\"{}\",rank=\"{rank}\"",
                escape(appid),
                escape(outcome)
            ),
        );
    }

    /// Counts a checksession request by outcome.
    pub fn checksession(&self, outcome: &str) {
        self.add(
            "weauth_checksession_total",
            format!("outcome=\"{}\"", escape(outcome)),
        );
    }

    /// Counts an HTTP response to a request on `route` (see [`route_label`]). The route lets
    /// an error ratio leave out the feed's long polls, the probes and the JWKS, which answer
    /// from memory and would dilute an outage of the API.
    /// [`Metrics::http_shed`]'s series of `routes` at 0, so that they exist before the first
    /// request turned away (a rate over a series that is not there is no data, not 0).
    pub fn http_shed_ready(&self, routes: &[&str]) {
        if let Ok(mut inner) = self.inner.lock() {
            for route in routes {
                let labels = format!("route=\"{}\"", escape(route));
                inner
                    .counters
                    .entry(("weauth_http_shed_total", labels))
                    .or_insert(0);
            }
        }
    }

    /// A client request answered 503 at once: every place of `WEAUTH_MAX_IN_FLIGHT` taken.
    pub fn http_shed(&self, route: &str) {
        self.add(
            "weauth_http_shed_total",
            format!("route=\"{}\"", escape(route)),
        );
    }

    pub fn http(&self, route: &str, status: u16) {
        self.add(
            "weauth_http_requests_total",
            format!("route=\"{}\",status=\"{status}\"", escape(route)),
        );
    }

    /// [`Metrics::wechat_call`], also counted per app in
    /// `weauth_wechat_app_calls_total{appid,api,outcome}`.
    pub fn wechat_app_call(&self, appid: &str, api: &str, elapsed: Duration, error: Option<&str>) {
        self.wechat_call(api, elapsed, error);
        let outcome = error.unwrap_or("ok");
        self.add(
            "weauth_wechat_app_calls_total",
            format!(
                "appid=\"{}\",api=\"{}\",outcome=\"{}\"",
                escape(appid),
                escape(api),
                escape(outcome)
            ),
        );
    }

    /// Records one WeChat call attempt: latency, and the error's label (`WechatError::metric_label`:
    /// WeChat's errcode, or `timeout`, `http_502`, ...) when it failed.
    pub fn wechat_call(&self, api: &str, elapsed: Duration, error: Option<&str>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        Self::observe(
            &mut inner,
            "weauth_wechat_call_seconds",
            format!("api=\"{}\"", escape(api)),
            elapsed,
        );
        if let Some(err) = error {
            let labels = format!("api=\"{}\",errcode=\"{}\"", escape(api), escape(err));
            inner.bump("weauth_wechat_errors_total", labels);
        }
    }

    fn observe(inner: &mut Inner, name: &'static str, labels: String, elapsed: Duration) {
        let bounds = HISTOGRAMS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map_or(&[][..], |(_, _, b)| *b);
        inner
            .histograms
            .entry((name, labels))
            .or_insert_with(|| Histogram {
                counts: vec![0; bounds.len()],
                count: 0,
                sum: 0.0,
            })
            .observe(bounds, elapsed.as_secs_f64());
    }

    /// Records the time taken to answer a request on `route` (see [`route_label`]).
    pub fn http_duration(&self, route: &str, elapsed: Duration) {
        if let Ok(mut inner) = self.inner.lock() {
            Self::observe(
                &mut inner,
                "weauth_http_request_duration_seconds",
                format!("route=\"{}\"", escape(route)),
                elapsed,
            );
        }
    }

    /// Records a background store check: `weauth_store_up` becomes 1 or 0, and a failure is
    /// counted in `weauth_store_check_failures_total`.
    pub fn store_check(&self, ok: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .gauges
                .insert("weauth_store_up", if ok { 1.0 } else { 0.0 });
            let failures = inner
                .counters
                .entry(("weauth_store_check_failures_total", String::new()))
                .or_default();
            *failures += u64::from(!ok);
        }
    }

    /// Records the Redis store's health check: `weauth_store_replicas` (absent while unknown),
    /// `weauth_store_replicas_wanted`, and the store's own running totals as the counters
    /// `weauth_store_evicted_keys_total` and `weauth_store_unreplicated_writes_total`.
    pub fn redis_health(
        &self,
        replicas: Option<usize>,
        wanted: usize,
        evicted_keys: u64,
        unreplicated_writes: u64,
    ) {
        if let Ok(mut inner) = self.inner.lock() {
            match replicas {
                Some(n) => inner.gauges.insert("weauth_store_replicas", n as f64),
                None => inner.gauges.remove("weauth_store_replicas"),
            };
            inner
                .gauges
                .insert("weauth_store_replicas_wanted", wanted as f64);
            for (name, value) in [
                ("weauth_store_evicted_keys_total", evicted_keys),
                (
                    "weauth_store_unreplicated_writes_total",
                    unreplicated_writes,
                ),
            ] {
                inner.counters.insert((name, String::new()), value);
            }
        }
    }

    /// Records the key ring in use: when its signing key began signing (unix seconds) and how
    /// many published keys wait to sign.
    pub fn signing_keys(&self, signing_since: i64, next: usize, loaded_at: i64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.gauges.insert(
                "weauth_signing_keys_loaded_timestamp_seconds",
                loaded_at as f64,
            );
            inner.gauges.insert(
                "weauth_signing_key_activated_timestamp_seconds",
                signing_since as f64,
            );
            inner.gauges.insert("weauth_signing_keys_next", next as f64);
        }
    }

    /// Renders `weauth_otlp_spans_total{outcome}` from the trace exporter's totals (`exported`,
    /// `queue_full`, `export_failed`); absent when traces are not exported.
    pub fn watch_spans(&self, counts: Arc<SpanCounts>) {
        let _ = self.spans.set(counts);
    }

    /// The text exposition (format 0.0.4), with `gauges` (name, help, value) appended.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        for (name, help) in GAUGES {
            if let Some(value) = inner.gauges.get(name) {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
                );
            }
        }
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((series, labels), value) in &inner.counters {
                if *series == name {
                    if labels.is_empty() {
                        let _ = writeln!(out, "{name} {value}");
                    } else {
                        let _ = writeln!(out, "{name}{{{labels}}} {value}");
                    }
                }
            }
        }
        let name = "weauth_metrics_series_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Counter increments not recorded because their counter already had {MAX_SERIES} series (label values from outside, such as WeChat's errcodes, growing without end).\n# TYPE {name} counter\n{name} {}",
            inner.series_refused
        );
        if let Some(spans) = self.spans.get() {
            let name = "weauth_otlp_spans_total";
            let _ = writeln!(
                out,
                "# HELP {name} Finished trace spans by what became of them: exported (accepted by the collector), queue_full (dropped: the exporter's queue was full), export_failed (dropped with a post that failed).\n# TYPE {name} counter"
            );
            for (outcome, count) in [
                ("exported", &spans.exported),
                ("queue_full", &spans.queue_full),
                ("export_failed", &spans.export_failed),
            ] {
                let count = count.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {count}");
            }
        }
        for (name, help, bounds) in HISTOGRAMS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for ((series, labels), histogram) in &inner.histograms {
                if *series != name {
                    continue;
                }
                for (count, bound) in histogram.counts.iter().zip(bounds) {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                    histogram.count
                );
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum);
                let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.count);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_and_histogram() {
        let metrics = Metrics::default();
        metrics.login("ok");
        metrics.login("ok");
        metrics.login("invalid_grant");
        metrics.wechat_call("jscode2session", Duration::from_millis(30), None);
        metrics.wechat_call("jscode2session", Duration::from_millis(300), Some("-1"));
        metrics.bearer_rejected("expired");
        let text = metrics.render(&[("weauth_feed_waiters", "Open long polls.", 3.0)]);
        assert!(text.contains("# TYPE weauth_feed_waiters gauge\nweauth_feed_waiters 3\n"));
        assert!(text.contains("weauth_bearer_rejections_total{reason=\"expired\"} 1\n"));
        assert!(text.contains("weauth_logins_total{outcome=\"ok\"} 2\n"));
        assert!(text.contains("weauth_logins_total{outcome=\"invalid_grant\"} 1\n"));
        assert!(
            text.contains("weauth_wechat_errors_total{api=\"jscode2session\",errcode=\"-1\"} 1\n")
        );
        assert!(text
            .contains("weauth_wechat_call_seconds_bucket{api=\"jscode2session\",le=\"0.05\"} 1\n"));
        assert!(text
            .contains("weauth_wechat_call_seconds_bucket{api=\"jscode2session\",le=\"0.5\"} 2\n"));
        assert!(text.contains("weauth_wechat_call_seconds_count{api=\"jscode2session\"} 2\n"));
    }

    #[test]
    fn wechat_app_call_counted_per_appid() {
        let metrics = Metrics::default();
        metrics.wechat_app_call("wxA", "oauth2_access_token", Duration::from_millis(5), None);
        metrics.wechat_app_call(
            "wxB",
            "oauth2_access_token",
            Duration::from_millis(5),
            Some("40029"),
        );
        let text = metrics.render(&[]);
        assert!(text.contains(
            "weauth_wechat_app_calls_total{appid=\"wxA\",api=\"oauth2_access_token\",outcome=\"ok\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "weauth_wechat_app_calls_total{appid=\"wxB\",api=\"oauth2_access_token\",outcome=\"40029\"} 1\n"
        ), "{text}");
        assert!(text.contains("weauth_wechat_call_seconds_count{api=\"oauth2_access_token\"} 2\n"));
    }

    #[test]
    fn http_duration_histogram_per_route() {
        let metrics = Metrics::default();
        metrics.http_duration(route_label("/v1/login"), Duration::from_micros(1500));
        metrics.http_duration(route_label("/v1/login"), Duration::from_millis(40));
        metrics.http_duration(route_label("/wp-admin.php"), Duration::from_millis(1));
        let text = metrics.render(&[]);
        let name = "weauth_http_request_duration_seconds";
        assert!(
            text.contains(&format!("# TYPE {name} histogram\n")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "{name}_bucket{{route=\"login\",le=\"0.001\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "{name}_bucket{{route=\"login\",le=\"0.0025\"}} 1\n"
        )));
        assert!(text.contains(&format!("{name}_bucket{{route=\"login\",le=\"0.05\"}} 2\n")));
        assert!(text.contains(&format!("{name}_bucket{{route=\"login\",le=\"+Inf\"}} 2\n")));
        assert!(text.contains(&format!("{name}_count{{route=\"other\"}} 1\n")));
    }

    #[test]
    fn http_requests_counted_by_route_and_status() {
        let metrics = Metrics::default();
        metrics.http(route_label("/v1/login"), 503);
        metrics.http(route_label("/v1/login"), 503);
        metrics.http(route_label("/v1/revocations"), 200);
        let text = metrics.render(&[]);
        assert!(
            text.contains("weauth_http_requests_total{route=\"login\",status=\"503\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("weauth_http_requests_total{route=\"revocations\",status=\"200\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn route_label_fixed_set() {
        assert_eq!(route_label("/v1/revocations"), "revocations");
        assert_eq!(route_label("/v1/me/decrypt"), "me");
        assert_eq!(route_label("/v1/web/callback"), "web");
        assert_eq!(route_label("/v1/admin/revoke"), "admin");
        assert_eq!(route_label("/healthz"), "probe");
        assert_eq!(route_label("/v1/login/../x"), "other");
    }

    #[test]
    fn store_check_sets_up_gauge_and_counts_failures() {
        let metrics = Metrics::default();
        assert!(!metrics.render(&[]).contains("weauth_store_up "));
        metrics.store_check(true);
        let text = metrics.render(&[]);
        assert!(
            text.contains("# TYPE weauth_store_up gauge\nweauth_store_up 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weauth_store_check_failures_total 0\n"),
            "{text}"
        );
        metrics.store_check(false);
        metrics.store_check(false);
        let text = metrics.render(&[]);
        assert!(text.contains("weauth_store_up 0\n"), "{text}");
        assert!(
            text.contains("weauth_store_check_failures_total 2\n"),
            "{text}"
        );
    }

    #[test]
    fn redis_health_gauges_and_counters_rendered() {
        let metrics = Metrics::default();
        metrics.redis_health(Some(0), 1, 12, 3);
        let text = metrics.render(&[]);
        assert!(
            text.contains("# TYPE weauth_store_replicas gauge\nweauth_store_replicas 0\n"),
            "{text}"
        );
        assert!(text.contains("weauth_store_replicas_wanted 1\n"), "{text}");
        assert!(
            text.contains("# TYPE weauth_store_evicted_keys_total counter\nweauth_store_evicted_keys_total 12\n"),
            "{text}"
        );
        assert!(
            text.contains("weauth_store_unreplicated_writes_total 3\n"),
            "{text}"
        );
        metrics.redis_health(None, 1, 12, 3);
        assert!(!metrics.render(&[]).contains("weauth_store_replicas "));
    }

    #[test]
    fn a_counter_keeps_at_most_max_series_and_counts_the_rest() {
        let metrics = Metrics::default();
        for errcode in 0..MAX_SERIES + 5 {
            metrics.wechat_call(
                "getuserphonenumber",
                Duration::ZERO,
                Some(&errcode.to_string()),
            );
        }
        // Series made before the cap still count.
        metrics.wechat_call("getuserphonenumber", Duration::ZERO, Some("0"));
        let text = metrics.render(&[]);
        let series = text
            .lines()
            .filter(|l| l.starts_with("weauth_wechat_errors_total{"))
            .count();
        assert_eq!(series, MAX_SERIES);
        assert!(
            text.contains("weauth_wechat_errors_total{api=\"getuserphonenumber\",errcode=\"0\"} 2")
        );
        assert!(
            text.lines()
                .any(|l| l == "weauth_metrics_series_refused_total 5"),
            "{}",
            text.lines()
                .filter(|l| l.contains("refused"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Another counter has its own budget.
        metrics.login("ok");
        assert!(metrics
            .render(&[])
            .contains("weauth_logins_total{outcome=\"ok\"} 1"));
    }

    #[test]
    fn otlp_span_totals_rendered_once_watched() {
        let metrics = Metrics::default();
        assert!(!metrics.render(&[]).contains("weauth_otlp_spans_total"));
        let counts = Arc::new(SpanCounts::default());
        metrics.watch_spans(Arc::clone(&counts));
        counts.exported.fetch_add(7, Ordering::Relaxed);
        counts.export_failed.fetch_add(2, Ordering::Relaxed);
        let text = metrics.render(&[]);
        assert!(
            text.contains("# TYPE weauth_otlp_spans_total counter"),
            "{text}"
        );
        for line in [
            "weauth_otlp_spans_total{outcome=\"exported\"} 7",
            "weauth_otlp_spans_total{outcome=\"queue_full\"} 0",
            "weauth_otlp_spans_total{outcome=\"export_failed\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
    }

    #[test]
    fn signing_keys_gauges_rendered() {
        let metrics = Metrics::default();
        metrics.signing_keys(1_700_000_000, 1, 1_700_000_100);
        let text = metrics.render(&[]);
        assert!(
            text.contains("weauth_signing_key_activated_timestamp_seconds 1700000000\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE weauth_signing_keys_next gauge\nweauth_signing_keys_next 1\n")
        );
        assert!(
            text.contains("weauth_signing_keys_loaded_timestamp_seconds 1700000100\n"),
            "{text}"
        );
    }
}
