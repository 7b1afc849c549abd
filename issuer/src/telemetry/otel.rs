//! OpenTelemetry traces, exported over OTLP/HTTP with the JSON encoding, when the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (plus
//! `/v1/traces`) is set; `OTEL_SERVICE_NAME` names the service (default `weauth-issuer`).
//! Unset, no layer is installed and the `wechat` and `store` spans (DEBUG level) are disabled
//! at their call sites: nothing is recorded.
//!
//! Spans exported: `request` (kind SERVER; server.rs; its ids come from the caller's
//! `traceparent`, see [`crate::telemetry::tracecontext`]), `wechat` (CLIENT, one per attempt, with `api`,
//! `appid` and `outcome`: `ok` or the errcode / failure class; never a code, token or openid),
//! and `store` (INTERNAL, one per store operation, with `op`). Only spans inside a request are
//! exported: the background tasks' store reads (4 a second on SQLite) are not.
//!
//! A small hand-written exporter rather than the `opentelemetry` crates: three span names, one
//! encoding, no extra dependency. Finished spans go through a bounded channel (dropped, and
//! counted in a warning, when the collector cannot keep up) to a task that posts them in
//! batches every second; what became of them is counted ([`SpanCounts`]) for the metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::SystemClock;
use crate::telemetry::tracecontext::{Sampler, TraceContext};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Span names this layer exports.
pub const EXPORTED: [&str; 3] = ["request", "wechat", "store"];

/// Finished spans waiting for the exporter, at most.
const QUEUE: usize = 8192;
/// Spans per POST, at most.
const BATCH: usize = 512;

/// Where and as what to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The full URL spans are posted to.
    pub traces_url: String,
    /// `service.name`.
    pub service_name: String,
    /// Which requests' spans are exported (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
    pub sampler: Sampler,
}

impl OtlpConfig {
    /// The endpoint as logged: scheme, host, port and path, without a user, password or
    /// query, where a collector's credential would be (the issuer sends no
    /// `OTEL_EXPORTER_OTLP_HEADERS`, so an authenticated collector's key may well be there).
    pub fn endpoint_for_log(&self) -> String {
        match url::Url::parse(&self.traces_url) {
            Ok(url) => {
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let host = url.host_str().unwrap_or("");
                format!("{}://{host}{port}{}", url.scheme(), url.path())
            }
            Err(_) => "(not a URL)".into(),
        }
    }

    /// From the standard variables (`get` reads one), or `None` when no endpoint is set.
    ///
    /// # Errors
    /// A sampler setting that is not one ([`Sampler::from_env`]).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpConfig>, String> {
        let set = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(traces_url) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            set("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        }) else {
            return Ok(None);
        };
        Ok(Some(OtlpConfig {
            traces_url,
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| "weauth-issuer".into()),
            sampler: Sampler::from_env(
                set("OTEL_TRACES_SAMPLER").as_deref(),
                set("OTEL_TRACES_SAMPLER_ARG").as_deref(),
            )?,
        }))
    }
}

/// What the layer keeps about an open span (in the registry's extensions).
struct SpanData {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    name: &'static str,
    /// Unix nanoseconds.
    start: u128,
    attributes: BTreeMap<String, Value>,
}

/// Collects span fields as OTLP attribute values.
#[derive(Default)]
struct Fields(BTreeMap<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), json!({"stringValue": value}));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        // OTLP JSON carries 64-bit integers as strings.
        self.0
            .insert(field.name().into(), json!({"intValue": value.to_string()}));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0
            .insert(field.name().into(), json!({"intValue": value.to_string()}));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0
            .insert(field.name().into(), json!({"boolValue": value}));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().into(),
            json!({"stringValue": format!("{value:?}")}),
        );
    }
}

impl Fields {
    fn take_string(&mut self, name: &str) -> Option<String> {
        self.0
            .remove(name)
            .and_then(|v| v["stringValue"].as_str().map(str::to_string))
    }
}

fn hex_id<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn unix_nanos(t: u128) -> String {
    t.to_string()
}

/// OTLP span kinds.
fn kind(name: &str) -> u8 {
    match name {
        "request" => 2, // SERVER
        "wechat" => 3,  // CLIENT
        _ => 1,         // INTERNAL
    }
}

impl SpanData {
    /// The span in OTLP JSON, ended at `end`.
    fn to_otlp(&self, end: u128) -> Value {
        let failed = match self.name {
            "request" => self
                .attributes
                .get("http.response.status_code")
                .and_then(|v| v["intValue"].as_str())
                .and_then(|s| s.parse::<u16>().ok())
                .is_some_and(|status| status >= 500),
            _ => self
                .attributes
                .get("outcome")
                .and_then(|v| v["stringValue"].as_str())
                .is_some_and(|o| o != "ok"),
        };
        let mut span = json!({
            "traceId": hex::encode(self.trace_id),
            "spanId": hex::encode(self.span_id),
            "name": self.name,
            "kind": kind(self.name),
            "startTimeUnixNano": unix_nanos(self.start),
            "endTimeUnixNano": unix_nanos(end),
            "attributes": self.attributes.iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect::<Vec<_>>(),
            // 1 OK, 2 ERROR
            "status": {"code": if failed { 2 } else { 1 }},
        });
        if let Some(parent) = self.parent_id {
            span["parentSpanId"] = json!(hex::encode(parent));
        }
        span
    }
}

/// The tracing layer: records the exported spans and hands them, finished, to the exporter.
pub struct OtlpLayer {
    tx: mpsc::Sender<Value>,
    sampler: Sampler,
    counts: Arc<SpanCounts>,
}

/// The finished spans, in OTLP JSON, on their way to [`export`], and how many were dropped
/// on the way (a full queue: the collector is behind).
pub struct SpanReceiver {
    rx: mpsc::Receiver<Value>,
    counts: Arc<SpanCounts>,
}

impl SpanReceiver {
    /// The running totals of what became of the spans, for the metrics
    /// (`weauth_otlp_spans_total`, [`crate::telemetry::metrics::Metrics::watch_spans`]).
    pub fn counts(&self) -> Arc<SpanCounts> {
        Arc::clone(&self.counts)
    }
}

/// What became of the finished spans since the start: posted to the collector (accepted),
/// dropped for a full queue (the collector or the network slower than the spans), or dropped
/// with a post that failed. The log says so once a minute; these are for alerts and graphs.
#[derive(Debug, Default)]
pub struct SpanCounts {
    pub exported: AtomicU64,
    pub queue_full: AtomicU64,
    pub export_failed: AtomicU64,
}

/// The layer and the receiving end its exporter ([`export`]) reads.
pub fn layer(sampler: Sampler) -> (OtlpLayer, SpanReceiver) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let counts = Arc::new(SpanCounts::default());
    (
        OtlpLayer {
            tx,
            sampler,
            counts: Arc::clone(&counts),
        },
        SpanReceiver { rx, counts },
    )
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let name = attrs.metadata().name();
        let Some(name) = EXPORTED.iter().find(|n| **n == name) else {
            return;
        };
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let ids = match (
            fields.take_string("trace_id"),
            fields.take_string("span_id"),
        ) {
            // The request span: its ids are its fields (api/mod.rs), and whether it is
            // exported — with its children — the sampler's decision.
            (Some(trace), Some(own)) => {
                let parent = fields
                    .take_string("parent_id")
                    .and_then(|p| hex_id::<8>(&p));
                let caller_sampled = match fields.take_string("caller_sampled").as_deref() {
                    Some("yes") => Some(true),
                    Some("no") => Some(false),
                    _ => None,
                };
                hex_id::<16>(&trace)
                    .zip(hex_id::<8>(&own))
                    .filter(|(trace_id, span_id)| {
                        self.sampler.sampled(&TraceContext {
                            trace_id: *trace_id,
                            parent_id: parent,
                            span_id: *span_id,
                            caller_sampled,
                        })
                    })
                    .map(|(t, s)| (t, s, parent))
            }
            // Inside a request: a child of the closest exported ancestor.
            _ => span.scope().skip(1).find_map(|ancestor| {
                ancestor
                    .extensions()
                    .get::<SpanData>()
                    .map(|p| (p.trace_id, rand_span_id(), Some(p.span_id)))
            }),
        };
        let Some((trace_id, span_id, parent_id)) = ids else {
            return;
        };
        span.extensions_mut().insert(SpanData {
            trace_id,
            span_id,
            parent_id,
            name,
            start: SystemClock.now_nanos(),
            attributes: fields.0,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(data) = span.extensions_mut().get_mut::<SpanData>() {
                let mut fields = Fields::default();
                values.record(&mut fields);
                data.attributes.extend(fields.0);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(data) = span.extensions_mut().remove::<SpanData>() {
                // Full queue: the collector is behind; the span is dropped, and counted for
                // [`export`] to say so.
                if self
                    .tx
                    .try_send(data.to_otlp(SystemClock.now_nanos()))
                    .is_err()
                {
                    self.counts.queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn rand_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// The OTLP request body for `spans`.
pub fn body(service_name: &str, spans: Vec<Value>) -> Value {
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service_name}}
        ]},
        "scopeSpans": [{
            "scope": {"name": "weauth-issuer", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans,
        }],
    }]})
}

/// How long a stopping issuer waits for its last spans to be posted.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Posts the finished spans to the collector every second (or as soon as a batch is full),
/// until `rx` closes or `flush` fires (the issuer stopping: what is queued is posted, then it
/// returns). A failed post is logged (at most once a minute) and its spans dropped; so, as
/// often, are the spans the queue had no room for (a collector too slow to keep up).
pub async fn export(
    config: OtlpConfig,
    receiver: SpanReceiver,
    flush: tokio::sync::oneshot::Receiver<()>,
) {
    let SpanReceiver { mut rx, counts } = receiver;
    // The full queue's drops already reported in the log (the counter only grows).
    let mut reported_full = 0;
    let mut flush = std::pin::pin!(flush);
    let mut stopping = false;
    let client = reqwest::Client::new();
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut last_drop_report = tokio::time::Instant::now();
    loop {
        if last_drop_report.elapsed() >= Duration::from_secs(60) {
            last_drop_report = tokio::time::Instant::now();
            let full = counts.queue_full.load(Ordering::Relaxed);
            let lost = full.saturating_sub(reported_full);
            reported_full = full;
            if lost > 0 {
                tracing::warn!(url = %config.endpoint_for_log(), dropped = lost, "OTLP export: spans dropped in the last minute, the queue was full (the collector does not keep up: raise its capacity, or sample fewer traces with OTEL_TRACES_SAMPLER_ARG)");
            }
        }
        let mut spans = Vec::new();
        if stopping {
            // What is queued, without waiting for more: the issuer is going.
            while spans.len() < BATCH {
                match rx.try_recv() {
                    Ok(span) => spans.push(span),
                    Err(_) => break,
                }
            }
            if spans.is_empty() {
                return;
            }
        } else {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while spans.len() < BATCH {
                tokio::select! {
                    _ = &mut flush => {
                        stopping = true;
                        break;
                    }
                    got = tokio::time::timeout_at(deadline, rx.recv()) => match got {
                        Ok(Some(span)) => spans.push(span),
                        Ok(None) if spans.is_empty() => return,
                        Ok(None) | Err(_) => break,
                    },
                }
            }
        }
        if spans.is_empty() {
            continue;
        }
        let count = spans.len();
        let result = client
            .post(&config.traces_url)
            .timeout(if stopping {
                FLUSH_TIMEOUT / 2
            } else {
                Duration::from_secs(5)
            })
            .json(&body(&config.service_name, spans))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let outcome = match &result {
            Ok(_) => &counts.exported,
            Err(_) => &counts.export_failed,
        };
        outcome.fetch_add(count as u64, Ordering::Relaxed);
        if let Err(err) = result {
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                last_warning = Some(tokio::time::Instant::now());
                let err = err.without_url();
                tracing::warn!(url = %config.endpoint_for_log(), error = %err, dropped = count, "OTLP export failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn from_env_unset_none() {
        assert_eq!(OtlpConfig::from_env(env(&[])), Ok(None));
        assert_eq!(
            OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            Ok(None)
        );
    }

    #[test]
    fn from_env_base_endpoint_gets_v1_traces() {
        let cfg = OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]))
            .unwrap()
            .unwrap();
        assert_eq!(cfg.traces_url, "http://c:4318/v1/traces");
        assert_eq!(cfg.service_name, "weauth-issuer");
        assert_eq!(cfg.sampler, Sampler::default());
    }

    #[test]
    fn from_env_traces_endpoint_used_as_is_and_service_name() {
        let cfg = OtlpConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/x"),
            ("OTEL_SERVICE_NAME", "auth"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(cfg.traces_url, "http://t:4318/x");
        assert_eq!(cfg.service_name, "auth");
        assert_eq!(
            cfg.sampler,
            Sampler {
                parent_based: true,
                ratio: 0.25
            }
        );
        let err = OtlpConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
        ]))
        .unwrap_err();
        assert!(err.contains("OTEL_TRACES_SAMPLER"), "{err}");
    }

    /// A span the full queue has no room for is counted (the exporter's warning reports it),
    /// not dropped unseen; an unsampled request leaves no span at all.
    #[test]
    fn full_queue_drops_are_counted_unsampled_requests_skipped() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let (layer, receiver) = super::layer(Sampler::default());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for sampled in ["no", "yes"] {
                for _ in 0..QUEUE + 3 {
                    let _span = tracing::error_span!(
                        "request",
                        trace_id = "0af7651916cd43dd8448eb211c80319c",
                        span_id = "b7ad6b7169203331",
                        parent_id = "00f067aa0ba902b7",
                        caller_sampled = sampled,
                    )
                    .entered();
                }
            }
        });
        assert_eq!(receiver.rx.len(), QUEUE);
        assert_eq!(receiver.counts().queue_full.load(Ordering::Relaxed), 3);
    }

    /// Spans posted to a collector that is not there are counted as `export_failed` (the
    /// accepted ones as `exported`: the monitoring suite, through the binary).
    #[tokio::test]
    async fn spans_lost_with_a_failed_post_are_counted() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (layer, receiver) = super::layer(Sampler::default());
        let counts = receiver.counts();
        for _ in 0..2 {
            layer.tx.try_send(json!({"name": "request"})).unwrap();
        }
        drop(layer);
        let config = OtlpConfig {
            traces_url: format!("http://127.0.0.1:{port}/v1/traces"),
            service_name: "t".into(),
            sampler: Sampler::default(),
        };
        let (_flush, flush) = tokio::sync::oneshot::channel();
        tokio::time::timeout(Duration::from_secs(30), export(config, receiver, flush))
            .await
            .unwrap();
        assert_eq!(counts.export_failed.load(Ordering::Relaxed), 2);
        assert_eq!(counts.exported.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn span_to_otlp_ids_hex_times_nanos_and_error_status() {
        let mut attributes = BTreeMap::new();
        attributes.insert("outcome".to_string(), json!({"stringValue": "-1"}));
        let data = SpanData {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            name: "wechat",
            start: 1_000_000_000,
            attributes,
        };
        let span = data.to_otlp(1_500_000_000);
        assert_eq!(span["traceId"], "01010101010101010101010101010101");
        assert_eq!(span["spanId"], "0202020202020202");
        assert_eq!(span["parentSpanId"], "0303030303030303");
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1000000000");
        assert_eq!(span["endTimeUnixNano"], "1500000000");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["attributes"][0]["key"], "outcome");
    }

    #[test]
    fn the_endpoint_is_logged_without_a_credential() {
        let cfg = OtlpConfig::from_env(|name| {
            (name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| {
                "https://user:s3cret@collector.example:4318/v1/traces?api-key=s3cret".into()
            })
        })
        .unwrap()
        .unwrap();
        let shown = cfg.endpoint_for_log();
        assert_eq!(shown, "https://collector.example:4318/v1/traces");
        assert!(!shown.contains("s3cret"));
    }
}
