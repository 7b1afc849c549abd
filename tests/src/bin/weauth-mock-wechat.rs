//! `weauth-mock-wechat`: the mock WeChat API as a standalone server (see
//! `weauth_tests::mock_wechat` for the routes).
//!
//! Usage: `weauth-mock-wechat [--listen 127.0.0.1:8090] [--appid ID] [--secret S] [--unionid]
//! [--token-overlap-secs N] [--mini-program APPID:SECRET]... [--web-app KIND:APPID:SECRET]...`
//! where `--mini-program` adds a mini-program of the same Open Platform account beside
//! `--appid`'s (its own codes, openids and access tokens, one unionid per person) and KIND is
//! `official_account` or `website` (bound to the Open Platform, so `unionid` is returned for
//! `snsapi_userinfo`/`snsapi_login`); `--web-apps` adds the default official account and
//! website (`MockApp::official_account()`, `MockApp::website()`); `--api-security` gives the
//! mini-program the test keys of WeChat's server API security (`mockwechat/fixtures/apisec`, key
//! numbers `sym-test-sn`, `app-test-sn`, `platform-test-sn`). Prints `listening on ADDR` once ready; stops on Ctrl-C/SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use weauth_tests::mock_wechat::{
    MockApiSecurity, MockApp, MockAppKind, MockConfig, MockMiniProgram, MockWechat,
};

const USAGE: &str = "usage: weauth-mock-wechat [--listen 127.0.0.1:8090] [--appid ID] \
[--secret S] [--unionid] [--token-overlap-secs N] [--mini-program APPID:SECRET]... \
[--web-app KIND:APPID:SECRET]... [--web-apps] \
[--api-security]";

fn web_app(spec: &str) -> Result<MockApp, String> {
    let mut parts = spec.splitn(3, ':');
    let (Some(kind), Some(appid), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("--web-app {spec:?}: expected KIND:APPID:SECRET"));
    };
    let kind = match kind {
        "official_account" => MockAppKind::OfficialAccount,
        "website" => MockAppKind::Website,
        other => return Err(format!("--web-app: unknown kind {other:?}")),
    };
    Ok(MockApp {
        appid: appid.to_string(),
        secret: secret.to_string(),
        kind,
        unionid: true,
    })
}

fn mini_program(spec: &str) -> Result<MockMiniProgram, String> {
    match spec.split_once(':') {
        Some((appid, secret)) if !appid.is_empty() && !secret.is_empty() => Ok(MockMiniProgram {
            appid: appid.to_string(),
            secret: secret.to_string(),
        }),
        _ => Err(format!("--mini-program {spec:?}: expected APPID:SECRET")),
    }
}

fn parse(args: impl Iterator<Item = String>) -> Result<MockConfig, String> {
    let mut cfg = MockConfig {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 8090))),
        ..Default::default()
    };
    let mut args = args;
    let mut api_security = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                cfg.listen = Some(v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?);
            }
            "--appid" => cfg.appid = value("--appid")?,
            "--secret" => cfg.secret = value("--secret")?,
            "--unionid" => cfg.unionid = true,
            "--mini-program" => cfg
                .mini_programs
                .push(mini_program(&value("--mini-program")?)?),
            "--web-app" => cfg.web_apps.push(web_app(&value("--web-app")?)?),
            "--web-apps" => {
                cfg.web_apps.push(MockApp::official_account());
                cfg.web_apps.push(MockApp::website());
            }
            "--token-overlap-secs" => {
                let v = value("--token-overlap-secs")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|e| format!("--token-overlap-secs {v:?}: {e}"))?;
                cfg.token_overlap = Duration::from_secs(secs);
            }
            "--api-security" => api_security = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if api_security {
        cfg.api_security
            .push(MockApiSecurity::test_keys(&cfg.appid));
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = match parse(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let listen = cfg.listen;
    let mock = MockWechat::start(cfg)
        .await
        .map_err(|e| format!("cannot listen on {listen:?}: {e}"))?;
    println!("listening on {}", mock.addr());
    weauth_tests::signal::terminated().await;
    mock.shutdown().await;
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
    fn parse_no_args_defaults_to_local_stack_port() {
        let cfg = parse(args(&[])).unwrap();
        assert_eq!(cfg.listen, Some("127.0.0.1:8090".parse().unwrap()));
        assert_eq!(cfg.appid, "wx0123456789abcdef");
        assert!(!cfg.unionid);
    }

    #[test]
    fn parse_all_flags_applied() {
        let cfg = parse(args(&[
            "--listen",
            "127.0.0.1:0",
            "--appid",
            "wxA",
            "--secret",
            "s",
            "--unionid",
            "--token-overlap-secs",
            "2",
        ]))
        .unwrap();
        assert_eq!(cfg.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!((cfg.appid.as_str(), cfg.secret.as_str()), ("wxA", "s"));
        assert!(cfg.unionid);
        assert_eq!(cfg.token_overlap, Duration::from_secs(2));
        assert!(cfg.api_security.is_empty());
        // The API security test keys follow --appid, wherever it is given.
        let cfg = parse(args(&["--api-security", "--appid", "wxA"])).unwrap();
        assert_eq!(cfg.api_security.len(), 1);
        assert_eq!(cfg.api_security[0].appid, "wxA");
    }

    #[test]
    fn parse_web_app_flags() {
        let cfg = parse(args(&["--web-app", "website:wxW:s:x", "--web-apps"])).unwrap();
        assert_eq!(cfg.web_apps.len(), 3);
        assert_eq!(cfg.web_apps[0].kind, MockAppKind::Website);
        assert_eq!(cfg.web_apps[0].secret, "s:x");
        assert!(parse(args(&["--web-app", "mini:wx:s"])).is_err());
        assert!(parse(args(&["--web-app", "website:wx"])).is_err());
    }

    #[test]
    fn parse_mini_program_flags() {
        let cfg = parse(args(&[
            "--mini-program",
            "wxB:s:x",
            "--mini-program",
            "wxC:t",
        ]))
        .unwrap();
        let apps: Vec<_> = cfg
            .mini_programs
            .iter()
            .map(|app| (app.appid.as_str(), app.secret.as_str()))
            .collect();
        assert_eq!(apps, [("wxB", "s:x"), ("wxC", "t")]);
        for bad in ["wxB", ":s", "wxB:"] {
            assert!(parse(args(&["--mini-program", bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_unknown_or_incomplete_refused() {
        assert!(parse(args(&["--bogus"])).is_err());
        assert!(parse(args(&["--listen"])).is_err());
        assert!(parse(args(&["--listen", "nowhere"])).is_err());
    }
}
