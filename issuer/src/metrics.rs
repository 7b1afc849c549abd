//! Prometheus metrics in the text exposition format, kept in a small registry (no globals:
//! one [`Metrics`] lives in the application state).
//!
//! Series: `weauth_logins_total{outcome}`, `weauth_refreshes_total{outcome}`,
//! `weauth_revocations_total{kind}`, `weauth_wechat_errors_total{api,errcode}`,
//! `weauth_wechat_call_seconds{api}` (histogram), `weauth_http_requests_total{status}`,
//! `weauth_bearer_rejections_total{reason}`, `weauth_wechat_token_refreshes_total{outcome}`,
//! `weauth_wechat_token_invalidations_total{errcode}`, `weauth_decrypt_total{outcome}`,
//! `weauth_phone_total{outcome}`, `weauth_checksession_total{outcome}`,
//! `weauth_login_risk_total{appid,outcome,rank}`,
//! `weauth_wechat_app_calls_total{appid,api,outcome}` (per configured app: `ok` or the
//! errcode/failure class); gauges passed in at scrape time by the caller
//! (`weauth_revocation_seq`, `weauth_signing_keys_published`, `weauth_feed_waiters`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::wechat::WechatError;

/// Upper bounds of the WeChat latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, String), u64>,
    histograms: BTreeMap<String, Histogram>,
}

/// The registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

const HELP: [(&str, &str, &str); 13] = [
    (
        "weauth_login_risk_total",
        "counter",
        "WeChat risk control at login, by app, outcome (admitted, refused, error_allowed, error_denied) and rank.",
    ),
    (
        "weauth_wechat_app_calls_total",
        "counter",
        "WeChat call attempts per configured app, by API and outcome (ok or errcode/failure class).",
    ),
    (
        "weauth_wechat_token_refreshes_total",
        "counter",
        "WeChat app access token fetches by this replica, by outcome (ok, forced, failed, failed_kept_old).",
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
        "HTTP responses by status.",
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
            *inner.counters.entry((name, labels)).or_default() += 1;
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

    /// Counts a WeChat access-token fetch by outcome.
    pub fn wechat_token_refresh(&self, outcome: &str) {
        self.add(
            "weauth_wechat_token_refreshes_total",
            format!("outcome=\"{}\"", escape(outcome)),
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

    /// Counts an HTTP response.
    pub fn http(&self, status: u16) {
        self.add("weauth_http_requests_total", format!("status=\"{status}\""));
    }

    /// [`Metrics::wechat_call`], also counted per app in
    /// `weauth_wechat_app_calls_total{appid,api,outcome}`.
    pub fn wechat_app_call(
        &self,
        appid: &str,
        api: &str,
        elapsed: Duration,
        error: Option<&WechatError>,
    ) {
        self.wechat_call(api, elapsed, error);
        let outcome = error.map_or_else(|| "ok".to_string(), WechatError::metric_label);
        self.add(
            "weauth_wechat_app_calls_total",
            format!(
                "appid=\"{}\",api=\"{}\",outcome=\"{}\"",
                escape(appid),
                escape(api),
                escape(&outcome)
            ),
        );
    }

    /// Records one WeChat call attempt: latency, and the error when it failed.
    pub fn wechat_call(&self, api: &str, elapsed: Duration, error: Option<&WechatError>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let seconds = elapsed.as_secs_f64();
        let histogram = inner
            .histograms
            .entry(format!("api=\"{}\"", escape(api)))
            .or_default();
        histogram.count += 1;
        histogram.sum += seconds;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                histogram.counts[i] += 1;
            }
        }
        if let Some(err) = error {
            let labels = format!(
                "api=\"{}\",errcode=\"{}\"",
                escape(api),
                escape(&err.metric_label())
            );
            *inner
                .counters
                .entry(("weauth_wechat_errors_total", labels))
                .or_default() += 1;
        }
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
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((series, labels), value) in &inner.counters {
                if *series == name {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        let name = "weauth_wechat_call_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} WeChat call latency per attempt.\n# TYPE {name} histogram"
        );
        for (labels, histogram) in &inner.histograms {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{bound}\"}} {}",
                    histogram.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.count);
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
        metrics.wechat_call(
            "jscode2session",
            Duration::from_millis(300),
            Some(&WechatError::Busy),
        );
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
            Some(&WechatError::InvalidCode { errcode: 40029 }),
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
}
