//! Integration tests of what an operator meets before the first request: every bad variable
//! reported in one start, a bad `WEAUTH_LOG` refused, unknown `WEAUTH_*` names warned about
//! with the closest known name, `--help` and `--version`, `keys list` without WeChat
//! credentials, and a failed start leaving its directory exactly as it was.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Issuer, Stack};
use weauth_issuer::config::VARIABLES;

/// Runs the binary with exactly `vars` (and `args`) in `dir`, to completion.
fn run(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(common::bin())
        .env_clear()
        .envs(vars.iter().copied())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

const CREDS: [(&str, &str); 2] = [
    ("WEAUTH_WECHAT_APPID", "wx0123456789abcdef"),
    ("WEAUTH_WECHAT_SECRET", "mock-secret"),
];

#[test]
fn config_several_bad_variables_reported_in_one_start() {
    let dir = common::temp_dir("several");
    let output = run(
        dir.path(),
        &[
            ("WEAUTH_LOG", "verbose"),
            ("WEAUTH_ACCESS_TTL", "30d"),
            ("WEAUTH_LISTEN", "nowhere"),
            ("WEAUTH_ACESS_TTL", "5m"),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for var in [
        "WEAUTH_LOG:",
        "WEAUTH_ACCESS_TTL:",
        "WEAUTH_LISTEN:",
        "WEAUTH_WECHAT_APPID:",
        "WEAUTH_WECHAT_SECRET:",
    ] {
        assert!(stderr.contains(var), "{var} not reported:\n{stderr}");
    }
    assert!(
        stderr.contains("WEAUTH_ACESS_TTL") && stderr.contains("did you mean WEAUTH_ACCESS_TTL?"),
        "{stderr}"
    );
}

#[test]
fn config_bad_log_value_refused_naming_the_variable() {
    let dir = common::temp_dir("log");
    for value in ["verbose", "inof", "info,weauth=loud"] {
        let mut vars = CREDS.to_vec();
        vars.push(("WEAUTH_LOG", value));
        let output = run(dir.path(), &vars, &[]);
        assert_eq!(output.status.code(), Some(2), "WEAUTH_LOG={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("WEAUTH_LOG:"), "{value}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_unknown_variable_warned_with_closest_name() {
    let mock = weauth_mock_wechat::MockWechat::start(Default::default())
        .await
        .unwrap();
    let dir = common::temp_dir("unknown");
    let mut env = common::base_env(&mock, dir.path());
    env.insert("WEAUTH_ACESS_TTL".into(), "5m".into());
    let issuer = Issuer::start(&env);
    let log = issuer.log_text();
    assert!(
        log.contains("WEAUTH_ACESS_TTL is not a variable weauth-issuer reads")
            && log.contains("did you mean WEAUTH_ACCESS_TTL?"),
        "{log}"
    );
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let dir = common::temp_dir("help");
    let output = run(dir.path(), &[], &["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for var in VARIABLES {
        let line = help
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|name| name.trim_end_matches("[_FILE]") == var.name)
            })
            .unwrap_or_else(|| panic!("{} missing from --help:\n{help}", var.name));
        if !var.default.is_empty() {
            assert!(line.contains(var.default), "{line}");
        }
    }
    assert!(help.contains("keys list"), "{help}");
    assert!(listing(dir.path()).is_empty(), "--help created files");
}

#[test]
fn version_printed_exit_zero() {
    let dir = common::temp_dir("version");
    let output = run(dir.path(), &[], &["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("weauth-issuer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_needs_no_wechat_credentials() {
    let stack = Stack::start(&[]).await;
    let kid = common::header(stack.login("una").await["access_token"].as_str().unwrap())["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let vars: Vec<(&str, &str)> = stack
        .issuer
        .env()
        .iter()
        .filter(|(k, _)| !k.starts_with("WEAUTH_WECHAT_"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let output = run(stack.dir.path(), &vars, &["keys", "list"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&kid) && l.ends_with("signing")),
        "{listed}"
    );
    // Serving still needs them.
    let output = Command::new(common::bin())
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// Run without the replicas' `WEAUTH_STORE`, a `keys` command made a database and a data key
/// file where the shell stood (`rotate` did, then failed on the empty store).
#[test]
fn keys_commands_without_database_create_nothing() {
    for command in ["list", "rotate"] {
        let dir = common::temp_dir("keys-empty");
        let output = run(dir.path(), &[], &["keys", command]);
        assert!(!output.status.success(), "keys {command}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("no database"),
            "keys {command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            listing(dir.path()).is_empty(),
            "keys {command}: {:?}",
            listing(dir.path())
        );
    }
}

#[test]
fn failed_start_leaves_the_directory_as_it_was() {
    let dir = common::temp_dir("failed-start");
    std::fs::write(dir.path().join("note.txt"), "mine").unwrap();
    std::fs::write(dir.path().join("bad-key.pem"), "not a key").unwrap();
    let before = listing(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        ("invalid configuration", vec![("WEAUTH_LOG", "verbose")]),
        ("port in use", vec![("WEAUTH_LISTEN", taken.as_str())]),
        (
            "unreadable signing key file",
            vec![
                ("WEAUTH_LISTEN", "127.0.0.1:0"),
                ("WEAUTH_SIGNING_KEY_FILE", "bad-key.pem"),
            ],
        ),
        (
            "missing signing key file, store in a subdirectory",
            vec![
                ("WEAUTH_LISTEN", "127.0.0.1:0"),
                ("WEAUTH_STORE", "sqlite://state/weauth.db"),
                ("WEAUTH_SIGNING_KEY_FILE", "nope.pem"),
            ],
        ),
    ];
    for (what, extra) in cases {
        let mut vars = CREDS.to_vec();
        vars.extend(extra);
        let output = run(dir.path(), &vars, &[]);
        assert!(!output.status.success(), "{what}: started");
        assert_eq!(
            listing(dir.path()),
            before,
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The same directory with a good configuration does create the database and data key:
    // the test above is not passing because nothing is ever written there.
    let mut vars = CREDS.to_vec();
    vars.push(("WEAUTH_LISTEN", "127.0.0.1:0"));
    let mut child = Command::new(common::bin())
        .env_clear()
        .envs(vars.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let created = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        listing(dir.path()).contains("weauth.db.datakey")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(created, "{:?}", listing(dir.path()));
}
