//! Minimal hyper 1 HTTP/1.1 server glue shared by the mock WeChat and the demo upstream.
//!
//! [`ServerHandle::start`] binds a listener, accepts connections in one task and serves each
//! connection in its own task. Stopping (explicitly with [`ServerHandle::shutdown`] or by
//! dropping the handle) closes the listener and aborts every connection still open, including
//! requests parked on purpose (the mock's `hang` fault), so a test never waits on its doubles.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// A request as the handlers receive it.
pub type Request = hyper::Request<Incoming>;
/// A response as the handlers produce it.
pub type Response = hyper::Response<Full<Bytes>>;

/// Largest request body the doubles read; more is answered with 413.
pub const MAX_BODY: usize = 1024 * 1024;

type BoxFuture = Pin<Box<dyn Future<Output = Response> + Send>>;
type Handler = Arc<dyn Fn(Request) -> BoxFuture + Send + Sync>;

/// A running server; dropping it stops the server.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Binds `listen` (port 0 picks a free port) and serves every request with `handler`.
    pub async fn start<H, F>(listen: SocketAddr, handler: H) -> io::Result<ServerHandle>
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)) as BoxFuture);
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _peer)) => {
                            // Small answers: do not let Nagle hold them back (the benchmark
                            // serves its feed and ext_authz checks through this too).
                            let _ = stream.set_nodelay(true);
                            let handler = handler.clone();
                            conns.spawn(async move {
                                let svc = service_fn(move |req| {
                                    let fut = handler(req);
                                    async move { Ok::<_, Infallible>(fut.await) }
                                });
                                // A client hanging up mid-request is not our problem.
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                        // Out of file descriptors and the like: back off briefly.
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            conns.shutdown().await;
        });
        Ok(ServerHandle {
            addr,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, aborts open connections and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Dropping the task drops the listener and the JoinSet, which aborts connections.
            task.abort();
        }
    }
}

/// Reads a whole request body, at most [`MAX_BODY`] bytes (`None` when larger or broken).
pub async fn read_body(body: Incoming) -> Option<Bytes> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// A response with the given status, content type and body.
pub fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response {
    let mut resp = hyper::Response::new(Full::new(body.into()));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// A JSON response (`application/json`).
pub fn json(status: u16, value: &serde_json::Value) -> Response {
    respond(status, "application/json", value.to_string())
}

/// Parses a query string into (name, value) pairs, percent-decoding both.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name` in `pairs`.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_percent_encoded_plus_decoded_as_space() {
        let pairs = query_pairs(Some("a=1&b=x%2By+z"));
        assert_eq!(param(&pairs, "a"), Some("1"));
        assert_eq!(param(&pairs, "b"), Some("x+y z"));
        assert_eq!(param(&pairs, "c"), None);
    }

    #[test]
    fn respond_unknown_status_becomes_500() {
        assert_eq!(respond(1000, "text/plain", "x").status(), 500);
        assert_eq!(respond(502, "text/plain", "x").status(), 502);
    }
}
