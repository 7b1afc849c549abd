//! What the issuer tells its operators: Prometheus metrics, the W3C trace context of each
//! request, and the OTLP trace exporter.

pub mod metrics;
pub mod otel;
pub mod throttle;
pub mod tracecontext;
