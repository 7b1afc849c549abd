//! Faults and hostile clients against the real issuer (and, where it matters, the real Envoy).
//!
//! - `sigkill_mid_logins_and_refreshes_loses_nothing`: eight clients log in, refresh, log out
//!   and revoke directly at the issuer; the issuer is SIGKILLed in the middle and restarted on
//!   the same SQLite file. Every refresh token a client received is still good, every
//!   acknowledged revocation is still in force (at `/v1/me` and in the feed), and the database
//!   holds no half-written session (checked with `sqlite3`: integrity, no orphan rows, every
//!   live session has exactly one unused refresh token).
//! - `store_on_full_filesystem_fails_clearly_then_recovers`: the store on a tiny tmpfs that is
//!   then filled (as root `chmod` does not stop writes; a full filesystem does): writes answer a
//!   JSON 5xx, reads and health go on, nothing is consumed, and once space is back everything
//!   works with the same tokens.
//! - `store_path_unusable_exits_naming_the_variable`: a store under a regular file.
//! - `slow_clients_do_not_starve_others`: slowloris (headers and bodies dribbled) on the issuer
//!   and on Envoy while normal logins go through both promptly; the issuer cuts slow headers.
//! - `bad_input_answers_clear_4xx`: requests not covered by `issuer/tests/service.rs` and
//!   `login.rs` (refresh and admin bodies, nesting, methods, odd paths, huge URL and headers,
//!   garbage request line), each a 4xx, the issuer healthy afterwards.
//! - `envoy_restart_recovers_keys_and_revocations`: a revocation made before, and one made
//!   while, Envoy was down are both enforced after it restarts.
//! - `edge_after_a_restored_backup_keeps_what_it_read_and_gets_what_follows`: the issuer's
//!   database put back as it was before its last start and a logout: the edge still refuses
//!   that token, and a logout after the restore reaches it.
//!
//! WeChat faults (timeouts, 5xx, garbage, HTML, -1 busy) are covered by `issuer/tests/login.rs`
//! (`login_wechat_transient_failures_retried_then_5xx`, `login_wechat_hang_times_out_with_503`,
//! `login_wechat_errcodes_map_to_http_and_write_nothing`); see SECURITY.md.
//!
//! The two filesystem tests mount a small tmpfs: as root directly; as a normal user they re-run
//! themselves under `unshare --user --map-root-user --mount`, and where the kernel refuses
//! unprivileged user namespaces they are skipped with the reason printed.
//!
//! Run: `cargo test --target x86_64-unknown-linux-musl -p weauth-tests --test suites -- e2e_faults:: --nocapture`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weauth_tests::harness::{peek_claims, temp_dir, Stack, StackBuilder};

async fn start(builder: StackBuilder) -> Stack {
    match builder.start().await {
        Ok(stack) => stack,
        Err(e) => panic!("cannot start the weauth stack: {e}"),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn post(
    client: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: Value,
) -> reqwest::Result<(u16, Value)> {
    let mut req = client.post(url).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

async fn me(client: &reqwest::Client, issuer: &str, token: &str) -> (u16, Value) {
    let resp = client
        .get(format!("{issuer}/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// One query with the `sqlite3` CLI; its trimmed output.
fn sql(db: &Path, query: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(query)
        .output()
        .unwrap_or_else(|e| panic!("sqlite3 (needed to inspect the store): {e}"));
    assert!(
        out.status.success(),
        "sqlite3 {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the clients were told before the crash.
#[derive(Default)]
struct Ledger {
    /// Refresh tokens received in a 200 and never presented.
    parked: Vec<String>,
    /// Access tokens of sessions nobody revoked.
    live: Vec<String>,
    /// Refresh tokens presented whose answer never came (the crash).
    in_flight: Vec<String>,
    /// (access token, sid) whose logout or admin revocation was acknowledged.
    revoked: Vec<(String, String)>,
    /// Highest revocation seq acknowledged by the admin API.
    max_seq: i64,
    /// Completed client operations.
    ops: usize,
}

async fn client_loop(
    issuer: String,
    admin: String,
    codes: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let client = http();
    for (i, code) in codes.into_iter().enumerate() {
        let Ok((200, pair)) = post(
            &client,
            format!("{issuer}/v1/login"),
            None,
            json!({"code": code}),
        )
        .await
        else {
            return;
        };
        let mut access = pair["access_token"].as_str().unwrap().to_string();
        let mut refresh = pair["refresh_token"].as_str().unwrap().to_string();
        let sid = peek_claims(&access).unwrap().sid;
        match i % 4 {
            0 => {}
            1 => {
                for _ in 0..3 {
                    match post(
                        &client,
                        format!("{issuer}/v1/token/refresh"),
                        None,
                        json!({"refresh_token": refresh}),
                    )
                    .await
                    {
                        Ok((200, pair)) => {
                            access = pair["access_token"].as_str().unwrap().to_string();
                            refresh = pair["refresh_token"].as_str().unwrap().to_string();
                            ledger.lock().unwrap().ops += 1;
                        }
                        Ok((status, body)) => {
                            panic!("refresh answered {status} {body} before the crash")
                        }
                        Err(_) => {
                            let mut l = ledger.lock().unwrap();
                            l.in_flight.push(refresh);
                            return;
                        }
                    }
                }
            }
            2 => match client
                .post(format!("{issuer}/v1/logout"))
                .bearer_auth(&access)
                .send()
                .await
            {
                Ok(r) if r.status() == 204 => {
                    let mut l = ledger.lock().unwrap();
                    l.revoked.push((access, sid));
                    l.ops += 1;
                    continue;
                }
                Ok(r) => panic!("logout answered {} before the crash", r.status()),
                Err(_) => return,
            },
            _ => {
                match post(
                    &client,
                    format!("{issuer}/v1/admin/revoke"),
                    Some(&admin),
                    json!({"sid": sid}),
                )
                .await
                {
                    Ok((200, entry)) => {
                        let mut l = ledger.lock().unwrap();
                        l.max_seq = l.max_seq.max(entry["seq"].as_i64().unwrap_or(0));
                        l.revoked.push((access, sid));
                        l.ops += 1;
                        continue;
                    }
                    Ok((status, body)) => {
                        panic!("admin revoke answered {status} {body} before the crash")
                    }
                    Err(_) => return,
                }
            }
        }
        let mut l = ledger.lock().unwrap();
        l.parked.push(refresh);
        l.live.push(access);
        l.ops += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_logins_and_refreshes_loses_nothing() {
    let mut stack = start(
        Stack::builder()
            .without_envoy()
            .issuer_env("WEAUTH_LOGIN_RATE", "0"),
    )
    .await;
    let issuer = stack.issuer_url();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let codes: Vec<String> = (0..200)
            .map(|i| stack.mock.login(&format!("crash-{w}-{i}")).code)
            .collect();
        tasks.push(tokio::spawn(client_loop(
            issuer.clone(),
            stack.admin_token().to_string(),
            codes,
            ledger.clone(),
        )));
    }
    // Kill once enough has happened (not on a timer: the machine may be loaded).
    let started = Instant::now();
    while ledger.lock().unwrap().ops < 80 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "clients made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.kill_issuer().await;
    for t in tasks {
        t.await.unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    println!(
        "killed after {} operations: {} parked refresh tokens, {} live sessions, {} revocations acknowledged, {} refreshes in flight",
        ledger.ops,
        ledger.parked.len(),
        ledger.live.len(),
        ledger.revoked.len(),
        ledger.in_flight.len()
    );

    // The database as the crash left it (sqlite3 replays the WAL like the issuer will).
    let db = stack.dir().join("weauth.db");
    assert_eq!(sql(&db, "PRAGMA integrity_check;"), "ok");
    let invariants = [
        ("sessions without a user", "SELECT count(*) FROM sessions s LEFT JOIN users u ON u.sub = s.sub WHERE u.sub IS NULL;"),
        ("sessions without an identity", "SELECT count(*) FROM sessions s LEFT JOIN identities i ON i.appid = s.appid AND i.openid = s.openid WHERE i.sub IS NULL;"),
        ("refresh tokens without a session", "SELECT count(*) FROM refresh_tokens r LEFT JOIN sessions s ON s.sid = r.sid WHERE s.sid IS NULL;"),
        ("live sessions without exactly one unused refresh token", "SELECT count(*) FROM sessions s WHERE s.revoked_at IS NULL AND (SELECT count(*) FROM refresh_tokens r WHERE r.sid = s.sid AND r.used_at IS NULL) != 1;"),
    ];
    for (what, query) in invariants {
        assert_eq!(sql(&db, query), "0", "{what} after SIGKILL");
    }

    stack.start_issuer().await.unwrap();
    let client = http();
    // Acknowledged revocations survived: refused at /v1/me and present in the feed.
    for (access, _) in &ledger.revoked {
        let (status, body) = me(&client, &issuer, access).await;
        assert_eq!(
            status, 401,
            "a revoked token passed after the restart: {body}"
        );
        assert_eq!(body["error_description"], "the token has been revoked");
    }
    let feed: Value = client
        .get(format!("{issuer}/v1/revocations?since=0"))
        .bearer_auth(stack.feed_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(feed["seq"].as_i64().unwrap() >= ledger.max_seq, "{feed}");
    let values: Vec<&str> = feed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["value"].as_str())
        .collect();
    for (_, sid) in &ledger.revoked {
        assert!(
            values.contains(&sid.as_str()),
            "revocation of {sid} lost from the feed"
        );
    }
    // Live sessions still work, and every refresh token a client holds still refreshes.
    for access in &ledger.live {
        let (status, body) = me(&client, &issuer, access).await;
        assert_eq!(status, 200, "a live session was lost: {body}");
    }
    for refresh in &ledger.parked {
        let (status, body) = post(
            &client,
            format!("{issuer}/v1/token/refresh"),
            None,
            json!({"refresh_token": refresh}),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "an issued refresh token was lost: {body}");
    }
    // A refresh cut by the crash either never committed (the token still works), or committed
    // and the client never saw the answer: presenting the old token again within the reuse
    // grace gets the refresh token the cut rotation wrote (200), after it is reuse (400, RFC
    // 9700).
    let mut reused = 0;
    for refresh in &ledger.in_flight {
        let (status, body) = post(
            &client,
            format!("{issuer}/v1/token/refresh"),
            None,
            json!({"refresh_token": refresh}),
        )
        .await
        .unwrap();
        assert!(
            status == 200 || (status == 400 && body["error"] == "invalid_grant"),
            "{status} {body}"
        );
        reused += usize::from(status == 400);
    }
    println!(
        "in-flight refreshes: {} of {} retried after the reuse grace (400), the rest refreshed",
        reused,
        ledger.in_flight.len()
    );
    // And the restarted issuer works normally.
    let code = stack.mock.login("after-crash").code;
    let (status, body) = post(
        &client,
        format!("{issuer}/v1/login"),
        None,
        json!({"code": code}),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Set in the copy of this test binary that runs inside a user and mount namespace.
const IN_NAMESPACE: &str = "WEAUTH_FAULTS_IN_MOUNT_NAMESPACE";

/// Whether a small tmpfs can be mounted right here.
fn can_mount_here() -> bool {
    let Ok(dir) = temp_dir("weauth-mount-probe") else {
        return false;
    };
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
    }
    mounted
}

/// Where a filesystem test that mounts a tmpfs runs: `Here` when this process may mount (root
/// with CAP_SYS_ADMIN, or already inside the namespace); otherwise the test is re-run in a copy
/// of this binary under `unshare --user --map-root-user --mount` (the issuer it starts inherits
/// the namespace and so sees the mount) and `Done` is returned with its result asserted; where
/// the kernel refuses unprivileged user namespaces, the test is skipped with the reason printed.
enum MountPlace {
    Here,
    Done,
}

fn mount_place(test: &str) -> MountPlace {
    if std::env::var_os(IN_NAMESPACE).is_some() || can_mount_here() {
        return MountPlace::Here;
    }
    let probe = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs \"$d\" && umount \"$d\"; rc=$?; rmdir \"$d\"; exit $rc")
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            weauth_tests::report_skip(&format!(
                "{test}: cannot mount a tmpfs as this user, and the kernel refuses it in an \
                 unprivileged user+mount namespace too ({}); run as root to include this test",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return MountPlace::Done;
        }
        Err(e) => {
            weauth_tests::report_skip(&format!(
                "{test}: cannot mount a tmpfs as this user, and `unshare` cannot run ({e})"
            ));
            return MountPlace::Done;
        }
    }
    let exe = std::env::current_exe().unwrap();
    println!(
        "{test}: re-running in a user+mount namespace (unshare --user --map-root-user --mount)"
    );
    // The test's name in its binary, as `--exact` wants it: its module path below the crate
    // (`e2e_faults::…` in tests/main.rs's binary).
    let exact = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_owned(),
    };
    let status = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount"])
        .arg(exe)
        .args([exact.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NAMESPACE, "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{test} failed in the user+mount namespace (its output is above)"
    );
    MountPlace::Done
}

/// A tmpfs mounted for the test; lazily unmounted on drop (also after a panic).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("running mount: {e}"));
        assert!(
            out.status.success(),
            "mounting a small tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Makes the mount read-only (`ro`) or writable again (`rw`). A bind remount changes only
    /// this mount point's flag, which a user namespace may do where a superblock remount is
    /// refused.
    fn remount(&self, mode: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,bind,{mode}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `dir` with a file until the kernel says it is full.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 16 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk).and_then(|_| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            break;
        }
    }
    // Top it up byte-wise, so not even a page is left.
    while file.write_all(&[0]).and_then(|_| file.sync_all()).is_ok() {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_on_full_filesystem_fails_clearly_then_recovers() {
    if let MountPlace::Done = mount_place("store_on_full_filesystem_fails_clearly_then_recovers") {
        return;
    }
    let dir = temp_dir("weauth-fullfs").unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _tmpfs = Tmpfs::mount(&mnt, "8m");
    let db = mnt.join("weauth.db");
    let stack = start(
        Stack::builder()
            .without_envoy()
            .issuer_env("WEAUTH_LOGIN_RATE", "0")
            .issuer_env("WEAUTH_STORE", format!("sqlite://{}", db.display())),
    )
    .await;
    let issuer = stack.issuer_url();
    let client = http();
    let login = |user: &str| {
        let code = stack.mock.login(user).code;
        let client = client.clone();
        let url = format!("{issuer}/v1/login");
        async move {
            post(&client, url, None, json!({ "code": code }))
                .await
                .unwrap()
        }
    };
    let (status, alice) = login("alice").await;
    assert_eq!(status, 200, "{alice}");
    let access = alice["access_token"].as_str().unwrap().to_string();
    let refresh = alice["refresh_token"].as_str().unwrap().to_string();
    let pid = stack.issuer_pid();

    let filler = fill(&mnt);
    // Writes fail with a clear JSON 5xx; the process stays up.
    let mut write_statuses = Vec::new();
    for i in 0..5 {
        let (status, body) = login(&format!("full-{i}")).await;
        assert!(
            status == 200 || (status == 500 && body["error"] == "server_error"),
            "login on a full disk: {status} {body}"
        );
        write_statuses.push(status);
    }
    let (status, body) = post(
        &client,
        format!("{issuer}/v1/token/refresh"),
        None,
        json!({ "refresh_token": refresh }),
    )
    .await
    .unwrap();
    println!("on a full filesystem: logins {write_statuses:?}, refresh {status} {body}");
    assert!(
        write_statuses.contains(&500),
        "no write failed on a full filesystem: {write_statuses:?}"
    );
    assert!(
        status == 500 && body["error"] == "server_error",
        "refresh on a full disk: {status} {body}"
    );
    // Reads and health go on.
    let (status, body) = me(&client, &issuer, &access).await;
    assert_eq!(status, 200, "reads must work on a full disk: {body}");
    let health = client
        .get(format!("{issuer}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        stack.issuer_pid(),
        pid,
        "the issuer must not exit on a full disk"
    );

    // Space back: the same refresh token (not consumed by the failed attempt) and new logins work.
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = post(
        &client,
        format!("{issuer}/v1/token/refresh"),
        None,
        json!({ "refresh_token": refresh }),
    )
    .await
    .unwrap();
    assert_eq!(
        status, 200,
        "the refresh token was lost by the failed write: {body}"
    );
    let (status, body) = login("after-full").await;
    assert_eq!(status, 200, "{body}");
    let db_check = sql(&db, "PRAGMA integrity_check;");
    assert_eq!(db_check, "ok");
}

#[tokio::test]
async fn store_path_unusable_exits_naming_the_variable() {
    let dir = temp_dir("weauth-badstore").unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let bin = weauth_tests::harness::Binaries::from_env().issuer;
    let mut cmd = std::process::Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WEAUTH_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .env("WEAUTH_LISTEN", "127.0.0.1:0")
        .env(
            "WEAUTH_STORE",
            format!("sqlite://{}/weauth.db", file.display()),
        )
        .env("WEAUTH_WECHAT_APPID", "wx0123456789abcdef")
        .env("WEAUTH_WECHAT_SECRET", "mock-secret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on an unusable store: {stderr}"
    );
    assert!(
        stderr.contains("WEAUTH_STORE") || stderr.contains("not-a-dir"),
        "the error must say which store: {stderr}"
    );
}

/// Opens a connection to `addr`, writes `head`, then `piece` every `every`, `pieces` times.
/// Returns how long until the server closed the connection, or `None` if it never did.
async fn dribble(
    addr: std::net::SocketAddr,
    head: String,
    piece: &'static [u8],
    pieces: usize,
    every: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let Ok(stream) = TcpStream::connect(addr).await else {
        return Some(Duration::ZERO);
    };
    let (mut r, mut w) = stream.into_split();
    if w.write_all(head.as_bytes()).await.is_err() {
        return Some(started.elapsed());
    }
    let reader = async move {
        let mut buf = [0u8; 512];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    let writer = async move {
        for _ in 0..pieces {
            tokio::time::sleep(every).await;
            if w.write_all(piece).await.is_err() {
                return true;
            }
        }
        false
    };
    tokio::select! {
        _ = reader => Some(started.elapsed()),
        closed = writer => closed.then(|| started.elapsed()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_starve_others() {
    let stack = start(
        Stack::builder()
            .issuer_env("WEAUTH_LOGIN_RATE", "0")
            .issuer_env("WEAUTH_HEADER_TIMEOUT", "2s"),
    )
    .await;
    let issuer_addr: std::net::SocketAddr = ([127, 0, 0, 1], stack.ports().issuer).into();
    let envoy_addr: std::net::SocketAddr = ([127, 0, 0, 1], stack.ports().envoy).into();
    let every = Duration::from_millis(300);
    let slow_head = "POST /v1/login HTTP/1.1\r\nHost: x\r\n".to_string();
    let slow_body_head = "POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"code\":\"".to_string();
    let mut issuer_headers = Vec::new();
    let mut others = Vec::new();
    for _ in 0..100 {
        issuer_headers.push(tokio::spawn(dribble(
            issuer_addr,
            slow_head.clone(),
            b"X-Slow: 1\r\n",
            60,
            every,
        )));
        others.push((
            "envoy slow headers",
            tokio::spawn(dribble(
                envoy_addr,
                slow_head.clone(),
                b"X-Slow: 1\r\n",
                60,
                every,
            )),
        ));
    }
    for _ in 0..30 {
        others.push((
            "issuer slow body",
            tokio::spawn(dribble(
                issuer_addr,
                slow_body_head.clone(),
                b"a",
                60,
                every,
            )),
        ));
        others.push((
            "envoy slow body",
            tokio::spawn(dribble(envoy_addr, slow_body_head.clone(), b"a", 60, every)),
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Normal clients, through Envoy and directly, while 260 slow connections are held.
    let client = http();
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let t = Instant::now();
        let tokens = stack.login(&format!("patient-{i}")).await.unwrap();
        let (status, _) = stack
            .get_json("/api/hello", Some(&tokens.access_token))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let code = stack.mock.login(&format!("direct-{i}")).code;
        let (status, body) = post(
            &client,
            format!("{}/v1/login", stack.issuer_url()),
            None,
            json!({ "code": code }),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        worst = worst.max(t.elapsed());
    }
    println!("worst login + API call + direct login under slowloris: {worst:?}");
    assert!(
        worst < Duration::from_secs(10),
        "normal clients were held up: {worst:?}"
    );

    // The issuer cuts slow headers after WEAUTH_HEADER_TIMEOUT (2 s), long before the 18 s
    // the dribble would take.
    for handle in issuer_headers {
        let closed = handle.await.unwrap();
        assert!(
            closed.is_some_and(|d| d < Duration::from_secs(12)),
            "a slow-header connection was not cut off: {closed:?}"
        );
    }
    let mut report = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    for (what, handle) in others {
        let closed = tokio::time::timeout(Duration::from_secs(1), handle)
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
        let entry = report.entry(what).or_default();
        entry.0 += 1;
        entry.1 += usize::from(closed.is_some());
    }
    println!("slow connections closed by the server within the dribble: {report:?}");
}

/// Writes `request` raw to `addr` and returns the status code of the answer (0 when the
/// connection closed without one).
/// The status of the answer to `request`, and the answer (head and body) as text.
async fn raw_answer(addr: std::net::SocketAddr, request: Vec<u8>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(&request).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    // The head, and as much body as it says there is.
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: issuer\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_answers_clear_4xx() {
    let stack = start(Stack::builder().without_envoy()).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], stack.ports().issuer).into();
    let admin = format!("Bearer {}", stack.admin_token());
    let json_ct = ("Content-Type", "application/json");
    let nested = format!("{{\"code\":{}{}}}", "[".repeat(3000), "]".repeat(3000));
    let long_path = format!("/v1/{}", "a".repeat(70_000));
    let many_headers: Vec<(String, String)> =
        (0..300).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "refresh: malformed JSON",
            request("POST", "/v1/token/refresh", &[json_ct], b"{not json"),
            400,
        ),
        (
            "refresh: empty body",
            request("POST", "/v1/token/refresh", &[json_ct], b""),
            400,
        ),
        (
            "refresh: missing field",
            request("POST", "/v1/token/refresh", &[json_ct], b"{}"),
            400,
        ),
        (
            "refresh: wrong type",
            request(
                "POST",
                "/v1/token/refresh",
                &[json_ct],
                b"{\"refresh_token\":5}",
            ),
            400,
        ),
        (
            "refresh: JSON array",
            request("POST", "/v1/token/refresh", &[json_ct], b"[\"x\"]"),
            400,
        ),
        (
            "refresh: unknown field",
            request(
                "POST",
                "/v1/token/refresh",
                &[json_ct],
                b"{\"refresh_token\":\"x\",\"a\":1}",
            ),
            400,
        ),
        (
            "refresh: text/plain",
            request(
                "POST",
                "/v1/token/refresh",
                &[("Content-Type", "text/plain")],
                b"{\"refresh_token\":\"x\"}",
            ),
            415,
        ),
        (
            "refresh: no content type",
            request(
                "POST",
                "/v1/token/refresh",
                &[],
                b"{\"refresh_token\":\"x\"}",
            ),
            415,
        ),
        (
            "refresh: form encoded",
            request(
                "POST",
                "/v1/token/refresh",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                b"refresh_token=x",
            ),
            415,
        ),
        (
            "login: invalid UTF-8",
            request("POST", "/v1/login", &[json_ct], b"{\"code\":\"\xff\xfe\"}"),
            400,
        ),
        (
            "login: 3000-deep nesting",
            request("POST", "/v1/login", &[json_ct], nested.as_bytes()),
            400,
        ),
        (
            "login: duplicate code member",
            request(
                "POST",
                "/v1/login",
                &[json_ct],
                b"{\"code\":\"a\",\"code\":\"b\"}",
            ),
            400,
        ),
        (
            "login: null code",
            request("POST", "/v1/login", &[json_ct], b"{\"code\":null}"),
            400,
        ),
        (
            "admin: malformed JSON",
            request(
                "POST",
                "/v1/admin/revoke",
                &[json_ct, ("Authorization", &admin)],
                b"{",
            ),
            400,
        ),
        (
            "admin: empty object",
            request(
                "POST",
                "/v1/admin/revoke",
                &[json_ct, ("Authorization", &admin)],
                b"{}",
            ),
            400,
        ),
        (
            "admin: wrong credential",
            request(
                "POST",
                "/v1/admin/revoke",
                &[json_ct, ("Authorization", "Bearer nope-nope-nope")],
                b"{\"jti\":\"x\"}",
            ),
            401,
        ),
        (
            "admin: no credential",
            request("POST", "/v1/admin/revoke", &[json_ct], b"{\"jti\":\"x\"}"),
            401,
        ),
        (
            "feed: no credential",
            request("GET", "/v1/revocations?since=0", &[], b""),
            401,
        ),
        (
            "feed: bad since",
            request(
                "GET",
                "/v1/revocations?since=abc",
                &[("Authorization", &format!("Bearer {}", stack.feed_token()))],
                b"",
            ),
            400,
        ),
        (
            "DELETE /v1/login",
            request("DELETE", "/v1/login", &[], b""),
            405,
        ),
        ("PATCH /v1/me", request("PATCH", "/v1/me", &[], b""), 405),
        ("TRACE /v1/me", request("TRACE", "/v1/me", &[], b""), 405),
        (
            "unknown method BREW",
            request("BREW", "/v1/login", &[], b""),
            405,
        ),
        (
            "trailing slash",
            request("POST", "/v1/login/", &[json_ct], b"{}"),
            404,
        ),
        (
            "upper-case path",
            request("POST", "/V1/LOGIN", &[json_ct], b"{}"),
            404,
        ),
        (
            "dot-dot path",
            request("GET", "/v1/../healthz", &[], b""),
            404,
        ),
        (
            "encoded dot-dot",
            request("GET", "/%2e%2e/%2e%2e/etc/passwd", &[], b""),
            404,
        ),
        ("70 KB path", request("GET", &long_path, &[], b""), 414),
        ("300 headers", request("GET", "/healthz", &many, b""), 431),
        ("garbage request line", b"HELLO THERE\r\n\r\n".to_vec(), 400),
    ];
    let calls = stack.mock.calls("jscode2session");
    let mut problems = Vec::new();
    for (name, req, want) in cases {
        let (got, answer) = raw_answer(addr, req).await;
        println!("{name} | {got}");
        if got != want {
            problems.push(format!("{name}: {got}, wanted {want}"));
        }
        // A body of the wrong shape is refused as such: not read leniently, then refused for
        // its (made-up) token or code, which answers 400 too.
        let shape = name.starts_with("refresh: ") || name.starts_with("login: ");
        if shape && want == 400 && !answer.contains("\"error\":\"invalid_request\"") {
            problems.push(format!("{name}: not invalid_request: {answer}"));
        }
    }
    assert_eq!(
        stack.mock.calls("jscode2session"),
        calls,
        "a bad login body reached WeChat"
    );
    // Still healthy, still logging people in.
    let client = http();
    let health = client
        .get(format!("{}/healthz", stack.issuer_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let code = stack.mock.login("after-bad-input").code;
    let (status, body) = post(
        &client,
        format!("{}/v1/login", stack.issuer_url()),
        None,
        json!({ "code": code }),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn envoy_restart_recovers_keys_and_revocations() {
    let mut stack = start(Stack::builder().concurrency(2)).await;
    let before = stack.login("revoked-before").await.unwrap().access_token;
    let during = stack.login("revoked-during").await.unwrap().access_token;
    let live = stack.login("still-live").await.unwrap().access_token;
    let (status, _) = stack
        .post_json("/v1/logout", Some(&before), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 204);
    stack.stop_envoy().await;
    // Revoked at the issuer while Envoy is down.
    let resp = stack
        .client()
        .post(format!("{}/v1/logout", stack.issuer_url()))
        .bearer_auth(&during)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    stack.restart_envoy().await.unwrap();
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..8 {
        for (token, want) in [(&before, 401), (&during, 401), (&live, 200)] {
            let status = fresh
                .get(format!("{}/api/hello", stack.envoy_url()))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            assert_eq!(status, want, "after the Envoy restart");
        }
    }
}

/// A restored backup loses the revocations made since it was taken — here a backup taken
/// before the issuer's last start, as a nightly one is. The edge that read such a revocation
/// keeps it until its `until`; and the revocations made after the restore reach it: the start
/// after the restore moves the seq past every seq handed out since the backup (by the time:
/// moved on by a million from the backup's seq only, it landed where the last start had moved
/// it, the next logout was given the lost one's seq, and the edge, past it, never asked for it).
#[tokio::test]
async fn edge_after_a_restored_backup_keeps_what_it_read_and_gets_what_follows() {
    let mut stack = start(Stack::builder()).await;
    let lost = stack.login("restored-lost").await.unwrap().access_token;
    let after = stack.login("restored-after").await.unwrap().access_token;
    let files = ["weauth.db", "weauth.db-wal", "weauth.db-shm"];
    let backup = temp_dir("weauth-backup").unwrap();
    stack.stop_issuer().await;
    for file in files {
        let from = stack.dir().join(file);
        if from.exists() {
            std::fs::copy(&from, backup.path().join(file)).unwrap();
        }
    }
    stack.start_issuer().await.unwrap();
    let (client, url) = (
        stack.client().clone(),
        format!("{}/api/hello", stack.envoy_url()),
    );
    let edge = |token: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client.get(url).bearer_auth(token).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    let refused_within = |token: String, what: &'static str| {
        let edge = &edge;
        async move {
            let start = Instant::now();
            loop {
                let (status, body) = edge(token.clone()).await;
                if status == 401 {
                    assert!(body.contains("revoked"), "{what}: {body}");
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{what}: never refused at the edge ({status})"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (status, _) = stack
        .post_json("/v1/logout", Some(&lost), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 204);
    refused_within(lost.clone(), "the logout before the restore").await;

    // The backup put back: the issuer has never heard of that logout.
    stack.stop_issuer().await;
    for file in files {
        let _ = std::fs::remove_file(stack.dir().join(file));
        let from = backup.path().join(file);
        if from.exists() {
            std::fs::copy(&from, stack.dir().join(file)).unwrap();
        }
    }
    stack.start_issuer().await.unwrap();
    let (status, body) = me(&http(), &stack.issuer_url(), &lost).await;
    assert_eq!(
        status, 200,
        "the restored store still knew of the logout: {body}"
    );
    let (status, _) = stack
        .post_json("/v1/logout", Some(&after), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 204);
    refused_within(after, "the logout after the restore").await;
    for _ in 0..4 {
        let (status, body) = edge(lost.clone()).await;
        assert_eq!(
            status, 401,
            "a revocation the store lost passed the edge: {body}"
        );
    }
    let fresh = stack.login("after-restore").await.unwrap().access_token;
    assert_eq!(edge(fresh).await.0, 200);
}

/// The store's filesystem turned read-only between two runs (as root, `chmod` would not stop
/// the writes; a read-only mount does): the issuer must not come up half-working or lose data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_on_read_only_filesystem_refused_then_data_intact() {
    if let MountPlace::Done = mount_place("store_on_read_only_filesystem_refused_then_data_intact")
    {
        return;
    }
    let dir = temp_dir("weauth-rofs").unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let tmpfs = Tmpfs::mount(&mnt, "8m");
    let db = mnt.join("weauth.db");
    let mut stack = start(
        Stack::builder()
            .without_envoy()
            .issuer_env("WEAUTH_STORE", format!("sqlite://{}", db.display())),
    )
    .await;
    let issuer = stack.issuer_url();
    let client = http();
    let code = stack.mock.login("alice").code;
    let (status, alice) = post(
        &client,
        format!("{issuer}/v1/login"),
        None,
        json!({ "code": code }),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{alice}");
    stack.stop_issuer().await;

    tmpfs.remount("ro");
    let outcome = stack.start_issuer().await;
    let described = match &outcome {
        Err(_) => {
            let log = std::fs::read_to_string(stack.issuer_log()).unwrap_or_default();
            let line = log
                .lines()
                .rev()
                .find(|l| l.contains("cannot open the store"))
                .unwrap_or_else(|| panic!("no clear log line for the read-only store:\n{log}"));
            format!("refused to start: {line}")
        }
        Ok(()) => {
            // If it starts, writes must fail clearly and reads must work.
            let code = stack.mock.login("bob").code;
            let (status, body) = post(
                &client,
                format!("{issuer}/v1/login"),
                None,
                json!({ "code": code }),
            )
            .await
            .unwrap();
            assert!(
                status == 500 && body["error"] == "server_error",
                "login on a read-only store: {status} {body}"
            );
            format!("started; login answered {status}")
        }
    };
    println!(
        "issuer on a read-only store: {}",
        described.lines().next().unwrap_or("")
    );
    stack.stop_issuer().await;
    tmpfs.remount("rw");
    stack.start_issuer().await.unwrap();
    let refresh = alice["refresh_token"].as_str().unwrap();
    let (status, body) = post(
        &client,
        format!("{issuer}/v1/token/refresh"),
        None,
        json!({ "refresh_token": refresh }),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "data lost after the read-only episode: {body}");
}
