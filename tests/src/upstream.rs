//! The demo upstream: answers every request with 200 and a JSON echo of what it received.
//!
//! Body: `{"method","path","query","headers":{name: value,…}}` with lower-case header names;
//! a header received several times is joined with `", "` so a duplicated identity header is
//! visible to tests. `query` is the raw query string or null. This is what `/api/*` routes to
//! in the local stack, so a curl walkthrough shows the identity headers the filter forwarded.
//!
//! `GET /demo/` is the exception: the web-login demo page (`src/demo/index.html`), which
//! Envoy serves without a token so a browser can start a login from it.
//!
//! In normalizing mode ([`Upstream::start_with`]) the echo also carries `normalized_path`: the
//! path as the laxest common server reads it ([`lax_normalize`]), which is what it would
//! serve, and `normalized_path_twice`: the same read by a server that decodes twice. The
//! path-confusion tests use them to show that no request reaches a protected path without a
//! token.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::serve::{self, Request, Response, ServerHandle};

/// The web-login demo page's path.
pub const DEMO_PATH: &str = "/demo/";

/// The demo page (a login link per web app, buttons calling `/api/hello`, the cookie refresh
/// and logout).
pub const DEMO_PAGE: &str = include_str!("demo/index.html");

/// A revocation feed that never holds a poll: every request gets the same full set at seq 1
/// at once, as a proxy that does not hold long polls, or a server stuck answering `full`,
/// would. The filter's hot-loop test points its feed here (issue 19).
pub const INSTANT_FEED_PATH: &str = "/__weauth_test/instant-feed";

/// The path the harness's readiness probe calls; not counted in [`Upstream::requests`].
pub const PROBE_PATH: &str = "/api/__weauth_ready";

/// A running demo upstream; dropping it (or [`Upstream::shutdown`]) stops the server.
pub struct Upstream {
    server: ServerHandle,
    requests: Arc<AtomicU64>,
    feed_polls: Arc<AtomicU64>,
}

impl Upstream {
    /// Starts on `listen` (`None` = 127.0.0.1 on a free port) in the current tokio runtime.
    pub async fn start(listen: Option<SocketAddr>) -> io::Result<Upstream> {
        Upstream::start_with(listen, false).await
    }

    /// Like [`Upstream::start`]; `normalizes` adds `normalized_path` to every echo.
    pub async fn start_with(listen: Option<SocketAddr>, normalizes: bool) -> io::Result<Upstream> {
        let listen = listen.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let requests = Arc::new(AtomicU64::new(0));
        let feed_polls = Arc::new(AtomicU64::new(0));
        let (counter, polls) = (requests.clone(), feed_polls.clone());
        let server = ServerHandle::start(listen, move |req: Request| {
            match req.uri().path() {
                PROBE_PATH => {}
                INSTANT_FEED_PATH => {
                    polls.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            async move { echo(req, normalizes) }
        })
        .await?;
        Ok(Upstream {
            server,
            requests,
            feed_polls,
        })
    }

    /// How many polls reached [`INSTANT_FEED_PATH`] (not counted in [`Upstream::requests`]).
    pub fn feed_polls(&self) -> u64 {
        self.feed_polls.load(Ordering::Relaxed)
    }

    /// How many requests reached the upstream (tests assert a refused request never did),
    /// not counting the harness's readiness probes ([`PROBE_PATH`]).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// The echo of a request (the body is not read: the echo is about headers).
pub fn echo_value(
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &hyper::HeaderMap,
) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                map.insert(name.as_str().to_string(), Value::String(v));
            }
        }
    }
    json!({"method": method, "path": path, "query": query, "headers": Value::Object(map)})
}

fn echo(req: Request, normalizes: bool) -> Response {
    if req.method() == hyper::Method::GET && req.uri().path() == DEMO_PATH {
        return serve::respond(200, "text/html; charset=utf-8", DEMO_PAGE);
    }
    if req.uri().path() == INSTANT_FEED_PATH {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return serve::json(
            200,
            &json!({"seq": 1, "full": true, "now": now, "entries": []}),
        );
    }
    let mut v = echo_value(
        req.method().as_str(),
        req.uri().path(),
        req.uri().query(),
        req.headers(),
    );
    if normalizes {
        let once = lax_normalize(req.uri().path());
        // As a server that decodes twice (a decoding proxy in front of an app that decodes
        // again) reads it.
        v["normalized_path_twice"] = Value::String(lax_normalize(&once));
        v["normalized_path"] = Value::String(once);
    }
    serve::json(200, &v)
}

/// A path as the laxest common server reads it: every `%XX` decoded once (`%2F` and `%5C`
/// included), then cut at a decoded `?` or `#` (a server that splits the query off again),
/// `\` taken as `/`, `;parameters` cut from each segment, repeated slashes merged, dot segments
/// removed.
pub fn lax_normalize(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded);
    let text = text
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    let parts: Vec<&str> = text.split('/').collect();
    for (n, part) in parts.iter().enumerate() {
        let last = n + 1 == parts.len();
        let segment = part.split(';').next().unwrap_or("");
        match segment {
            "" | "." => trailing = last && n > 0,
            ".." => {
                segments.pop();
                trailing = last;
            }
            other => {
                segments.push(other);
                trailing = false;
            }
        }
    }
    let mut out: String = segments.iter().map(|s| format!("/{s}")).collect();
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn echo_value_repeated_header_joined() {
        let mut h = hyper::HeaderMap::new();
        h.append("x-weauth-sub", HeaderValue::from_static("a"));
        h.append("x-weauth-sub", HeaderValue::from_static("b"));
        h.insert("Accept", HeaderValue::from_static("*/*"));
        let v = echo_value("GET", "/api/hello", Some("x=1"), &h);
        assert_eq!(v["headers"]["x-weauth-sub"], "a, b");
        assert_eq!(v["headers"]["accept"], "*/*");
        assert_eq!(v["path"], "/api/hello");
        assert_eq!(v["query"], "x=1");
    }

    #[test]
    fn lax_normalize_reads_every_trick() {
        for (raw, want) in [
            ("/api/public/../private", "/api/private"),
            ("/api/public/%2e%2E/private", "/api/private"),
            ("/api/public/..%2fprivate", "/api/private"),
            ("/api/public/..%5Cprivate", "/api/private"),
            ("/api/public/..\\private", "/api/private"),
            ("/api/public/..;/private", "/api/private"),
            ("//api//private/", "/api/private/"),
            ("/api/./x", "/api/x"),
            ("/api/stats%3Fx=1", "/api/stats"),
            ("/api/stats%23", "/api/stats"),
            ("/", "/"),
        ] {
            assert_eq!(lax_normalize(raw), want, "{raw}");
        }
    }

    #[test]
    fn echo_value_without_query_is_null() {
        let v = echo_value("POST", "/", None, &hyper::HeaderMap::new());
        assert!(v["query"].is_null());
        assert_eq!(v["method"], "POST");
    }
}
