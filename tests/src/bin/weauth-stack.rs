//! `weauth-stack`: the `make up` launcher. Starts the local stack on the fixed ports of
//! DESIGN.md (Envoy 10000, admin 9901, issuer 8080, demo upstream 8081, mock WeChat 8090) with
//! the same harness code as the end-to-end tests, the database and logs in `<workspace>/.run/`,
//! prints where everything listens and a curl walkthrough, then waits for Ctrl-C or SIGTERM
//! and stops every process it started (and only those).
//!
//! Its pid goes to `.run/stack.pid` so `make down` can send it SIGTERM. Development
//! credentials: the mini-program appid `wx0123456789abcdef` (secret `mock-secret`), the
//! official account `wx00000000000000a1` (`mock-oa-secret`) and the website
//! `wx00000000000000b2` (`mock-web-secret`), all bound to one Open Platform account (the apps
//! file is `.run/apps.json`); feed token `dev-feed-token`, admin token `dev-admin-token`. The
//! web-login demo page is `http://127.0.0.1:10000/demo/`. Usage: `weauth-stack [--concurrency N]`.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

use weauth_tests::harness::{workspace_root, Stack, StackPorts};

const USAGE: &str = "usage: weauth-stack [--concurrency N]";
const FEED_TOKEN: &str = "dev-feed-token";
const ADMIN_TOKEN: &str = "dev-admin-token";

fn parse(mut args: impl Iterator<Item = String>) -> Result<u32, String> {
    let mut concurrency = 1;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--concurrency" => {
                let v = args.next().ok_or("--concurrency needs a value")?;
                concurrency = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(format!("--concurrency {v:?}: expected a number >= 1"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(concurrency)
}

/// Refuses to start when a fixed port is taken (most likely by a stack already running).
fn check_ports_free(ports: StackPorts) -> Result<(), String> {
    for (role, port) in [
        ("Envoy", ports.envoy),
        ("Envoy admin", ports.admin),
        ("issuer", ports.issuer),
        ("demo upstream", ports.upstream),
        ("mock WeChat", ports.mock),
    ] {
        if let Err(e) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return Err(format!(
                "port {port} ({role}) is not available: {e}. Is the stack already running? \
                 Stop it with `make down`."
            ));
        }
    }
    Ok(())
}

fn walkthrough(stack: &Stack) -> String {
    let envoy = stack.envoy_url();
    let mock = stack.mock_url();
    format!(
        r#"
weauth local stack is up:
  Envoy (filter loaded)  {envoy}   admin {admin}
  issuer                 {issuer}
  demo upstream          {upstream}
  mock WeChat            {mock}
  logs                   {issuer_log}
                         {envoy_log}
  apps {run}/apps.json: mini-program wx0123456789abcdef (secret mock-secret),
       official account wx00000000000000a1, website wx00000000000000b2
  feed token {FEED_TOKEN}  admin token {ADMIN_TOKEN}

Web login (official account): open {envoy}/demo/ in a browser, click "Log in", pick a name
on the mock WeChat page (the same name as a mini-program login below gives the same sub),
then "GET /api/hello", "POST /v1/token/refresh" and "POST /v1/logout".

Try it (copy-paste):
  # 1. wx.login() stand-in: a one-time code for user "alice"
  CODE=$(curl -s '{mock}/mock/login?user=alice' | sed -E 's/.*"code":"([^"]+)".*/\1/')
  # 2. log in through Envoy
  TOKEN=$(curl -s -X POST {envoy}/v1/login -H 'content-type: application/json' \
            -d "{{\"code\":\"$CODE\"}}" | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  # 3. without a token: 401
  curl -i {envoy}/api/hello
  # 4. with the token: 200, and the upstream echoes the x-weauth-* identity headers
  curl -s -H "authorization: Bearer $TOKEN" {envoy}/api/hello
  # 5. log out (revokes the session), then the same token is refused at the edge
  curl -s -X POST -H "authorization: Bearer $TOKEN" {envoy}/v1/logout
  sleep 1; curl -i -H "authorization: Bearer $TOKEN" {envoy}/api/hello

Stop with Ctrl-C or `make down`.
"#,
        admin = stack.admin_url(),
        issuer = stack.issuer_url(),
        upstream = stack.upstream_url(),
        issuer_log = stack.issuer_log().display(),
        envoy_log = stack.envoy_log().display(),
        run = stack.dir().display(),
    )
}

fn remove_pid_file(path: &Path) {
    // Only remove it if it is still ours (another launcher may have replaced it).
    if std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let concurrency = match parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let ports = StackPorts::LOCAL;
    check_ports_free(ports)?;
    let run_dir = workspace_root().join(".run");
    std::fs::create_dir_all(&run_dir)?;
    let pid_file = run_dir.join("stack.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;

    let started = Stack::builder()
        .ports(ports)
        .run_dir(&run_dir)
        .feed_token(FEED_TOKEN)
        .admin_token(ADMIN_TOKEN)
        .concurrency(concurrency)
        .web_login()
        .start()
        .await;
    let stack = match started {
        Ok(stack) => stack,
        Err(e) => {
            remove_pid_file(&pid_file);
            eprintln!("weauth-stack: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", walkthrough(&stack));

    weauth_tests::signal::terminated().await;
    eprintln!("weauth-stack: stopping Envoy and the issuer");
    stack.shutdown().await;
    remove_pid_file(&pid_file);
    eprintln!("weauth-stack: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn parse_concurrency_default_one_and_explicit() {
        assert_eq!(parse(args(&[])), Ok(1));
        assert_eq!(parse(args(&["--concurrency", "4"])), Ok(4));
    }

    #[test]
    fn parse_concurrency_zero_or_text_refused() {
        assert!(parse(args(&["--concurrency", "0"])).is_err());
        assert!(parse(args(&["--concurrency", "many"])).is_err());
        assert!(parse(args(&["--up"])).is_err());
    }
}
