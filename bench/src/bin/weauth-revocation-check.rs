//! `weauth-revocation-check`: the ext_authz revocation service used by `make bench` for the
//! "jwt_authn + ext_authz" comparison row (see `weauth_bench::revcheck`).
//!
//! Usage: `weauth-revocation-check LISTEN_ADDR FEED_URL` with the feed credential in
//! `WEAUTH_FEED_TOKEN`, e.g.
//! `WEAUTH_FEED_TOKEN=dev-feed-token weauth-revocation-check 127.0.0.1:9002 http://127.0.0.1:8080/v1/revocations`.

use std::net::SocketAddr;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: weauth-revocation-check LISTEN_ADDR FEED_URL (credential in WEAUTH_FEED_TOKEN)";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let feed_url = args.next().ok_or(usage)?;
    let credential =
        std::env::var("WEAUTH_FEED_TOKEN").map_err(|_| "WEAUTH_FEED_TOKEN is not set")?;
    // One worker thread: the check service is pinned to one core next to the load generator.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(weauth_bench::revcheck::run(listen, feed_url, credential))?;
    Ok(())
}
