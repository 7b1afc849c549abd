//! `weauth-demo-upstream`: the demo upstream as a standalone server; answers every request
//! with a JSON echo of the method, path and headers it received.
//!
//! Usage: `weauth-demo-upstream [--listen 127.0.0.1:8081]`. Prints `listening on ADDR` once
//! ready; stops on Ctrl-C/SIGTERM.

use std::net::SocketAddr;

use weauth_tests::upstream::Upstream;

const USAGE: &str = "usage: weauth-demo-upstream [--listen 127.0.0.1:8081]";

fn parse(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 8081));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let v = args.next().ok_or("--listen needs a value")?;
                listen = v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(listen)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = match parse(std::env::args().skip(1)) {
        Ok(l) => l,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let upstream = Upstream::start(Some(listen))
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("listening on {}", upstream.addr());
    weauth_tests::signal::terminated().await;
    upstream.shutdown().await;
    Ok(())
}
