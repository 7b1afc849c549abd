//! The smallest hyper 1 HTTP/1.1 server the benchmark needs (the driver's revocation feed and
//! the ext_authz revocation check): one task accepts, one task per connection, and dropping the
//! [`Server`] aborts all of them.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

/// A request as handlers receive it.
pub type Request = hyper::Request<Incoming>;
/// A response as handlers produce it.
pub type Response = hyper::Response<Full<Bytes>>;

/// A running server; dropping it stops the listener and every open connection.
pub struct Server {
    addr: SocketAddr,
    task: AbortHandle,
}

impl Server {
    /// Binds `listen` (port 0 picks a free port) and answers every request with `handler`.
    pub async fn start<H, F>(listen: SocketAddr, handler: H) -> io::Result<Server>
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let handler = handler.clone();
                            conns.spawn(async move {
                                let svc = service_fn(move |req| {
                                    let fut = handler(req);
                                    async move { Ok::<_, Infallible>(fut.await) }
                                });
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        })
        .abort_handle();
        Ok(Server { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// A response with `status`, a content type and `body`.
pub fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response {
    let mut resp = hyper::Response::new(Full::new(body.into()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    resp
}

/// The value of query parameter `name` in `query` (no percent-decoding: the benchmark's
/// parameters are plain numbers).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_exact_name_only() {
        let q = Some("since=42&wait=20&sincex=1");
        assert_eq!(query_param(q, "since"), Some("42"));
        assert_eq!(query_param(q, "wait"), Some("20"));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(query_param(None, "since"), None);
    }
}
