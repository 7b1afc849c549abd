//! The accept loop and graceful shutdown.
//!
//! One task per connection (HTTP/1.1 with keep-alive), a header-read timeout against
//! slowloris clients, and on shutdown: stop accepting, tell long polls to answer now, let
//! in-flight requests finish, and give up on the rest after the drain deadline
//! (`WEAUTH_SHUTDOWN_GRACE`). Pattern of hyper-util's `server_graceful` example.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::app::App;
use crate::routes;
use crate::tracecontext::TraceContext;

/// The span a request is handled in: its W3C trace context ([`TraceContext`]), so every log
/// line of the request carries `trace_id` and `span_id`, and the exported trace
/// ([`crate::otel`]) joins the caller's. At ERROR level because a span's level decides whether
/// it is recorded at all: the ids then stay on every line any `WEAUTH_LOG` filter lets through,
/// `warn` included. `route` is the metrics' fixed route label, not the raw path.
fn request_span(headers: &hyper::HeaderMap, method: &str, route: &str) -> tracing::Span {
    let header = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok());
    let ctx = TraceContext::child_of(header, rand::random(), rand::random());
    tracing::error_span!(
        "request",
        trace_id = %ctx.trace_id_hex(),
        span_id = %ctx.span_id_hex(),
        parent_id = %ctx.parent_id_hex(),
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    )
}

/// Serves `listener` until `shutdown` completes, then drains.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let service = service_fn(move |req| {
                    let app = Arc::clone(&app);
                    async move {
                        let route = crate::metrics::route_label(req.uri().path());
                        let span = request_span(req.headers(), req.method().as_str(), route);
                        let started = std::time::Instant::now();
                        let response = routes::handle(Arc::clone(&app), peer, req)
                            .instrument(span.clone())
                            .await;
                        span.record("http.response.status_code", response.status().as_u16());
                        app.metrics.http_duration(route, started.elapsed());
                        Ok::<_, Infallible>(response)
                    }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    app.begin_drain();
    let grace = app.config.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("drain deadline reached; closing remaining connections"),
    }
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = term => tracing::info!("received SIGTERM"),
    }
}
