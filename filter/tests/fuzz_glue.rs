//! Replays the fuzz target `filter_glue`'s inputs as ordinary tests (`cargo test
//! --workspace`): every committed seed in `fuzz/seeds/filter_glue/`, every input the fuzzer
//! kept in `fuzz/regressions/filter_glue/` (none is fine) and the large generated hostile
//! inputs go through the very harness the fuzzer runs (`fuzz/src/glue_harness.rs`, included
//! below): one request through `request::on_request_headers` against a mock host, and the
//! oracles on what would be forwarded or answered. The seeds' outcomes are checked too, so a
//! seed that stops reaching the branch it was written for is noticed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/fixture.rs"]
mod fixture;
#[path = "../../fuzz/src/glue_harness.rs"]
mod glue_harness;
#[path = "../../fuzz/src/replay.rs"]
mod replay;

use glue_harness::{filter_glue_report, GlueFixture, Outcome, KNOWN_BUGS, TOKEN_MARK};
use replay::{count, inputs, run_all, Origin};

/// Byte 0 of an input: configuration `config` (0-3) in key state `state` (0 fresh, 1 no
/// revocation set loaded, 2 a stale one, 3 no keys).
const fn mode(config: u8, state: u8) -> u8 {
    config | (state << 2)
}

/// An input: the mode byte, then `name 0xFF value` pairs; in a value `{Tk}` stands for token
/// `k` (`0xFE k`).
fn input(mode: u8, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![mode];
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(0xff);
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0xff);
        let mut rest = *value;
        while let Some(at) = rest.find("{T") {
            out.extend_from_slice(&rest.as_bytes()[..at]);
            let k = rest.as_bytes()[at + 2] - b'0';
            out.extend_from_slice(&[TOKEN_MARK, k]);
            rest = &rest[at + 4..];
        }
        out.extend_from_slice(rest.as_bytes());
    }
    out
}

/// The committed seeds: name, input, outcome.
fn seeds() -> Vec<(&'static str, Vec<u8>, Outcome)> {
    use Outcome::{Allowed, Anonymous, Refused, Unchecked};
    let get = |path: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![(":method", "GET"), (":path", path)]
    };
    let with = |mut base: Vec<(&'static str, &'static str)>,
                more: &[(&'static str, &'static str)]| {
        base.extend_from_slice(more);
        base
    };
    let post = |path: &'static str| vec![(":method", "POST"), (":path", path)];
    let c0 = mode(0, 0);
    vec![
        (
            "c0-bearer-allowed",
            input(
                c0,
                &with(get("/api/me"), &[("authorization", "Bearer {T0}")]),
            ),
            Allowed,
        ),
        (
            "c0-cookie-allowed-other-cookies-kept",
            input(
                c0,
                &with(get("/api/me"), &[("cookie", "a=1; weauth_at={T2}; b=2")]),
            ),
            Allowed,
        ),
        (
            "c0-query-allowed",
            input(c0, &get("/api/me?x=1&access_token={T0}")),
            Allowed,
        ),
        (
            "c0-admin-scope-allowed",
            input(
                c0,
                &with(get("/admin/users"), &[("authorization", "Bearer {T3}")]),
            ),
            Allowed,
        ),
        (
            "c0-admin-insufficient-scope",
            input(
                c0,
                &with(get("/admin/users"), &[("authorization", "Bearer {T0}")]),
            ),
            Refused(403),
        ),
        (
            "c0-revoked-jti",
            input(
                c0,
                &with(get("/api/me"), &[("authorization", "Bearer {T1}")]),
            ),
            Refused(401),
        ),
        (
            "c0-revoked-sid-cookie",
            input(c0, &with(get("/api/me"), &[("cookie", "weauth_at={T4}")])),
            Refused(401),
        ),
        (
            "c0-forged-signature",
            input(
                c0,
                &with(get("/api/me"), &[("authorization", "Bearer {T5}")]),
            ),
            Refused(401),
        ),
        (
            "c0-unknown-kid",
            input(
                c0,
                &with(get("/api/me"), &[("authorization", "Bearer {T6}")]),
            ),
            Refused(401),
        ),
        (
            "c0-expired",
            input(c0, &get("/api/me?access_token={T7}")),
            Refused(401),
        ),
        ("c0-missing", input(c0, &get("/api/me")), Refused(401)),
        (
            "c0-two-bearer-headers",
            input(
                c0,
                &with(
                    get("/api/me"),
                    &[
                        ("authorization", "Bearer {T0}"),
                        ("authorization", "Bearer {T2}"),
                    ],
                ),
            ),
            Refused(400),
        ),
        (
            "c0-two-token-cookies",
            input(
                c0,
                &with(
                    get("/api/me"),
                    &[("cookie", "weauth_at={T0}; weauth_at={T2}")],
                ),
            ),
            Refused(400),
        ),
        (
            "c0-spoofed-identity-both-spellings-allowed",
            input(
                c0,
                &with(
                    get("/api/me"),
                    &[
                        ("authorization", "Bearer {T0}"),
                        ("x-weauth-sub", "admin"),
                        ("x_weauth_sub", "admin"),
                        ("X-Weauth-Role", "admin"),
                        ("x-weauth_unionid", "forged"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c0-spoofed-identity-optional-anonymous",
            input(
                c0,
                &with(
                    get("/opt/feed"),
                    &[("x-weauth-sub", "admin"), ("x_weauth_scope", "admin")],
                ),
            ),
            Anonymous,
        ),
        (
            "c0-spoofed-identity-public",
            input(
                c0,
                &with(
                    get("/public/x"),
                    &[("x_weauth_sub", "admin"), ("authorization", "Bearer {T1}")],
                ),
            ),
            Unchecked,
        ),
        ("c0-login-none", input(c0, &post("/v1/login")), Unchecked),
        (
            "c0-header-wins-cookie-removed",
            input(
                c0,
                &with(
                    get("/api/me"),
                    &[
                        ("authorization", "Bearer {T0}"),
                        ("cookie", "weauth_at={T2}; theme=dark"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c0-two-cookie-headers",
            input(
                c0,
                &with(
                    get("/api/me"),
                    &[("cookie", "a=1; weauth_at={T0}"), ("cookie", "b=2")],
                ),
            ),
            Allowed,
        ),
        (
            "c0-forward-rule-keeps-token",
            input(
                c0,
                &with(get("/fwd/x"), &[("authorization", "Bearer {T2}")]),
            ),
            Allowed,
        ),
        (
            "c0-csrf-cross-site-cookie-post",
            input(
                c0,
                &with(
                    post("/api/pay"),
                    &[
                        ("cookie", "weauth_at={T0}"),
                        ("sec-fetch-site", "cross-site"),
                        ("origin", "https://evil.example"),
                    ],
                ),
            ),
            Refused(403),
        ),
        (
            "c0-csrf-same-origin-cookie-post",
            input(
                c0,
                &with(
                    post("/api/pay"),
                    &[
                        ("cookie", "weauth_at={T0}"),
                        ("sec-fetch-site", "same-origin"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c0-csrf-upgrade-same-site",
            input(
                c0,
                &with(
                    get("/api/ws"),
                    &[
                        ("cookie", "weauth_at={T0}"),
                        ("connection", "Upgrade"),
                        ("upgrade", "websocket"),
                        ("sec-fetch-site", "same-site"),
                    ],
                ),
            ),
            Refused(403),
        ),
        (
            "c0-csrf-bearer-post-not-affected",
            input(
                c0,
                &with(
                    post("/api/pay"),
                    &[
                        ("authorization", "Bearer {T0}"),
                        ("sec-fetch-site", "cross-site"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c0-cors-preflight",
            input(
                c0,
                &[
                    (":method", "OPTIONS"),
                    (":path", "/api/me"),
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "POST"),
                    ("x-weauth-sub", "admin"),
                ],
            ),
            Unchecked,
        ),
        (
            "c0-encoded-slash",
            input(
                c0,
                &with(get("/api/a%2fb"), &[("authorization", "Bearer {T0}")]),
            ),
            Refused(400),
        ),
        (
            "c0-connect-no-path",
            input(c0, &[(":method", "CONNECT"), (":authority", "db:5432")]),
            Refused(400),
        ),
        (
            "c0-dot-segments-into-admin",
            input(
                c0,
                &with(
                    get("/public/../admin/x"),
                    &[("authorization", "Bearer {T0}")],
                ),
            ),
            Refused(403),
        ),
        (
            "c0-stale-revocation-503",
            input(
                mode(0, 2),
                &with(get("/api/me"), &[("authorization", "Bearer {T0}")]),
            ),
            Refused(503),
        ),
        (
            "c0-revocation-not-loaded-503",
            input(
                mode(0, 1),
                &with(get("/api/me"), &[("authorization", "Bearer {T0}")]),
            ),
            Refused(503),
        ),
        (
            "c2-not-loaded-allow-mode-nothing-revoked",
            input(
                mode(2, 1),
                &with(get("/api/me"), &[("cookie", "weauth_at={T1}")]),
            ),
            Allowed,
        ),
        (
            "c0-no-keys-503",
            input(
                mode(0, 3),
                &with(get("/api/me"), &[("cookie", "weauth_at={T2}")]),
            ),
            Refused(503),
        ),
        (
            "c1-outside-prefix-claim-header-spoofed",
            input(
                mode(1, 0),
                &with(
                    get("/api/hooks/x"),
                    &[
                        ("authorization", "Bearer {T3}"),
                        ("x-user-openid", "o_admin"),
                        ("x_user_openid", "o_admin"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c1-forwarded-token-spoofed-outside-prefix",
            input(
                mode(1, 0),
                &with(
                    get("/feed"),
                    &[
                        ("authorization", "Bearer {T0}"),
                        ("x_user_openid", "o_admin"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c1-strip-rule-header-and-cookie",
            input(
                mode(1, 0),
                &with(
                    get("/api/strip/x"),
                    &[
                        ("authorization", "Bearer {T2}"),
                        ("cookie", "weauth_at={T0}; a=1"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c1-lax-case-strip-rule",
            input(
                mode(1, 0),
                &with(
                    get("/API/Strip/x"),
                    &[
                        ("authorization", "Bearer {T0}"),
                        ("cookie", "weauth_at={T2}"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c1-csrf-allowed-origin",
            input(
                mode(1, 0),
                &with(
                    post("/feed"),
                    &[
                        ("cookie", "weauth_at={T0}"),
                        ("origin", "https://APP.example.com"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c1-csrf-off-rule",
            input(
                mode(1, 0),
                &with(
                    post("/api/hooks/pay"),
                    &[
                        ("cookie", "weauth_at={T0}"),
                        ("sec-fetch-site", "cross-site"),
                    ],
                ),
            ),
            Allowed,
        ),
        (
            "c2-cookie-first-two-token-cookies",
            input(
                mode(2, 0),
                &with(
                    get("/api/me"),
                    &[("cookie", "wa_legacy={T2}; weauth_at={T0}; lang=zh")],
                ),
            ),
            Allowed,
        ),
        (
            "c2-own-prefix-x-weauth-not-ours",
            input(
                mode(2, 0),
                &with(
                    get("/pub/x"),
                    &[
                        ("x-weauth-sub", "kept"),
                        ("x-auth-user", "forged"),
                        ("x_uid", "forged"),
                    ],
                ),
            ),
            Unchecked,
        ),
        (
            "c2-stale-allow-mode",
            input(
                mode(2, 2),
                &with(get("/opt/x"), &[("cookie", "weauth_at={T3}")]),
            ),
            Allowed,
        ),
        (
            "c3-lax-case-admin",
            input(
                mode(3, 0),
                &with(get("/API/Admin/x"), &[("authorization", "Bearer {T0}")]),
            ),
            Refused(403),
        ),
        (
            "c3-lax-trailing-slash-exact",
            input(mode(3, 0), &get("/api/admin/stats/")),
            Refused(401),
        ),
        (
            "c3-docs-lowercase-needs-token",
            input(mode(3, 0), &get("/docs/x")),
            Refused(401),
        ),
    ]
}

fn file_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

#[test]
fn filter_glue_inputs_forward_only_what_the_filter_allows() {
    let gx = GlueFixture::new();
    let all = inputs(&replay::fuzz_dir(env!("CARGO_MANIFEST_DIR")), "filter_glue");
    let expected = seeds();
    assert!(
        count(&all, Origin::Seed) >= expected.len(),
        "fuzz/seeds/filter_glue/ has fewer than {} seeds: the corpus was lost",
        expected.len()
    );
    let mut outcomes = Vec::new();
    run_all(&all, |input| {
        let (outcome, known) = filter_glue_report(&gx, &input.data);
        let name = file_name(&input.name).to_owned();
        // An input kept for a known filter bug shows it until the fix is in (then the entry
        // in KNOWN_BUGS can go, and the input must pass the whole oracle).
        if let Some(bug) = KNOWN_BUGS
            .iter()
            .find(|bug| name.starts_with(&format!("bug-{bug}-")))
        {
            if !known.contains(bug) {
                eprintln!(
                    "note: {name} no longer shows the filter bug `{bug}`: once the fix is \
                     committed, remove it from glue_harness::KNOWN_BUGS"
                );
            }
        }
        outcomes.push((name, outcome));
    });
    for (name, _, outcome) in &expected {
        let got = outcomes.iter().find(|(n, _)| n == name).map(|(_, o)| *o);
        assert_eq!(got, Some(*outcome), "seed {name}");
    }
    for name in outcomes
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("bug-"))
    {
        assert!(
            KNOWN_BUGS
                .iter()
                .any(|bug| name.starts_with(&format!("bug-{bug}-"))),
            "{name} names a bug glue_harness::KNOWN_BUGS does not list"
        );
    }
}

/// The seeds on disk are the ones [`seeds`] writes (rerun the writer after changing either).
#[test]
fn filter_glue_seeds_on_disk_are_current() {
    let dir = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join("filter_glue");
    for (name, data, _) in seeds() {
        let on_disk = std::fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            on_disk == data,
            "fuzz/seeds/filter_glue/{name} is stale: rerun \
             `cargo test -p weauth-filter --test fuzz_glue -- --ignored write_seeds`"
        );
    }
}

/// Writes `fuzz/seeds/filter_glue/`. Run by hand after changing [`seeds`]:
/// `cargo test -p weauth-filter --test fuzz_glue -- --ignored write_seeds`.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand"]
fn write_seeds() {
    let dir = replay::fuzz_dir(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join("filter_glue");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data, _) in seeds() {
        std::fs::write(dir.join(name), data).unwrap();
    }
}
