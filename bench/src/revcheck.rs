//! `weauth-revocation-check`: the HTTP ext_authz service of the comparison row. It follows a
//! revocation feed (the issuer's, or the driver's own) with long polls, the way the filter does,
//! and answers every check from memory: 200 to let the request through, 403 when the token is
//! revoked or carries no readable claims.
//!
//! Routes: `GET /ready` (200 with the entry count once the first full set is loaded, else 503);
//! anything else is a check. Envoy's HTTP ext_authz sends the original path after the
//! configured prefix, so any path is accepted.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use weauth_token::revocation::FeedResponse;

use crate::revset::{RevocationClaims, RevocationSet};
use crate::serve::{respond, Request, Response, Server};

/// The header jwt_authn's `forward_payload_header` is configured with in `bench/envoy`.
pub const PAYLOAD_HEADER: &str = "x-jwt-payload";

/// Shared state: the set, and whether a full set was loaded yet.
#[derive(Default)]
pub struct Shared {
    set: RwLock<RevocationSet>,
    loaded: std::sync::atomic::AtomicBool,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Serves checks on `listen` and follows `feed_url` (e.g. `http://127.0.0.1:8080/v1/revocations`)
/// with `credential` until the process ends.
pub async fn run(listen: SocketAddr, feed_url: String, credential: String) -> std::io::Result<()> {
    let shared = Arc::new(Shared::default());
    let sh = shared.clone();
    let server = Server::start(listen, move |req| {
        let sh = sh.clone();
        async move { check(req, &sh) }
    })
    .await?;
    println!("weauth-revocation-check listening on {}", server.addr());
    follow(feed_url, credential, shared).await;
    Ok(())
}

/// Long-polls the feed forever, applying each response; backs off 200 ms after a failure.
async fn follow(feed_url: String, credential: String, shared: Arc<Shared>) {
    let client = reqwest::Client::new();
    loop {
        let since = shared.set.read().map(|s| s.seq()).unwrap_or(0);
        let result = client
            .get(format!("{feed_url}?since={since}&wait=20"))
            .bearer_auth(&credential)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let feed = match result {
            Ok(resp) if resp.status().is_success() => resp.json::<FeedResponse>().await.ok(),
            _ => None,
        };
        let Some(feed) = feed else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let full = feed.full;
        if let Ok(mut set) = shared.set.write() {
            set.apply(feed, now_unix());
        }
        if full {
            shared
                .loaded
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

fn check(req: Request, shared: &Shared) -> Response {
    if req.uri().path() == "/ready" {
        if !shared.loaded.load(std::sync::atomic::Ordering::Acquire) {
            return respond(503, "text/plain", "feed not loaded yet\n");
        }
        let len = shared.set.read().map(|s| s.len()).unwrap_or(0);
        return respond(200, "text/plain", format!("{len}\n"));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let claims = header(PAYLOAD_HEADER)
        .and_then(RevocationClaims::from_b64_payload)
        .or_else(|| header("authorization").and_then(RevocationClaims::from_bearer));
    let Some(claims) = claims else {
        return respond(403, "text/plain", "no claims to check\n");
    };
    let revoked = shared
        .set
        .read()
        .map(|set| set.is_revoked(&claims))
        .unwrap_or(true);
    if revoked {
        respond(403, "text/plain", "token revoked\n")
    } else {
        respond(200, "text/plain", "")
    }
}
