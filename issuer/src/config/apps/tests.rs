//! The apps file: parsing, validation and the per-app lookups.

use super::*;

#[test]
fn risk_parsed_with_defaults_and_ranges_checked() {
    let file = r#"{"apps": [{"appid": "wxa", "secret": "s", "kind": "miniprogram",
        "risk": {"max_rank": 2}}]}"#;
    let apps = parse(file).unwrap();
    let risk = apps.get("wxa").unwrap().risk.unwrap();
    assert_eq!(
        risk,
        Risk {
            max_rank: 2,
            scene: 0,
            on_error: RiskOnError::Allow
        }
    );
    assert!(risk.admits(2) && !risk.admits(3));
    for (risk, field) in [
        (r#"{"max_rank": 5}"#, "risk.max_rank 5 is out of range"),
        (
            r#"{"max_rank": 1, "scene": 2}"#,
            "risk.scene 2 is out of range",
        ),
    ] {
        let file = format!(
            r#"{{"apps": [{{"appid": "wxa", "secret": "s", "kind": "miniprogram", "risk": {risk}}}]}}"#
        );
        let err = parse(&file).unwrap_err();
        assert!(
            err.contains("apps[0] (wxa)") && err.contains(field),
            "{err}"
        );
    }
    let bad_on_error = r#"{"apps": [{"appid": "wxa", "secret": "s", "kind": "miniprogram",
        "risk": {"max_rank": 1, "on_error": "maybe"}}]}"#;
    assert!(parse(bad_on_error).is_err());
    let web = r#"{"apps": [{"appid": "wxw", "secret": "s", "kind": "website",
        "redirect_uris": ["https://x.example/"], "risk": {"max_rank": 1}}]}"#;
    let err = parse(web).unwrap_err();
    assert!(
        err.contains("apps[0] (wxw): risk is only for miniprogram"),
        "{err}"
    );
}

/// The top of each range is valid: `max_rank` 4 (every rank admitted: risk control that only
/// counts) and `scene` 1 (marketing), as WeChat defines them.
#[test]
fn risk_range_tops_accepted() {
    let file = r#"{"apps": [{"appid": "wxa", "secret": "s", "kind": "miniprogram",
        "risk": {"max_rank": 4, "scene": 1, "on_error": "deny"}}]}"#;
    let risk = parse(file).unwrap().get("wxa").unwrap().risk.unwrap();
    assert_eq!(
        risk,
        Risk {
            max_rank: 4,
            scene: 1,
            on_error: RiskOnError::Deny
        }
    );
    assert!(risk.admits(4));
}

fn no_files(path: &str) -> std::io::Result<String> {
    if path == "/run/secrets/mini" {
        Ok("file-secret\n".into())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ))
    }
}

fn parse(text: &str) -> Result<Apps, String> {
    parse_apps_file(
        text,
        &SecretSources {
            read_file: &no_files,
            lookup: &|_| None,
        },
    )
}

const THREE: &str = r#"{"apps": [
  {"appid": "wxmini", "secret_file": "/run/secrets/mini", "kind": "miniprogram"},
  {"appid": "wxoa", "secret": "s2", "kind": "official_account",
   "redirect_uris": ["https://h5.example.com/after-login"]},
  {"appid": "wxweb", "secret": "s3", "kind": "website",
   "redirect_uris": ["https://www.example.com/", "http://localhost:3000/cb"]}
]}"#;

#[test]
fn parse_apps_file_three_kinds_ok() {
    let apps = parse(THREE).unwrap();
    assert_eq!(apps.all().len(), 3);
    assert_eq!(apps.get("wxmini").unwrap().secret.as_str(), "file-secret");
    assert_eq!(apps.get("wxoa").unwrap().kind, AppKind::OfficialAccount);
    assert_eq!(apps.get("wxweb").unwrap().redirect_uris.len(), 2);
}

#[test]
fn parse_apps_file_unknown_field_refused() {
    let err = parse(r#"{"apps":[{"appid":"wx1","secret":"s","kind":"miniprogram","scope":"x"}]}"#)
        .unwrap_err();
    assert!(err.contains("unknown field"), "{err}");
    assert!(parse(r#"{"apps":[],"extra":1}"#).is_err());
}

#[test]
fn parse_apps_file_unknown_kind_refused() {
    let err = parse(r#"{"apps":[{"appid":"wx1","secret":"s","kind":"mini"}]}"#).unwrap_err();
    assert!(err.contains("mini"), "{err}");
}

#[test]
fn parse_apps_file_duplicate_appid_names_entry() {
    let err = parse(
        r#"{"apps":[{"appid":"wx1","secret":"s","kind":"miniprogram"},
                    {"appid":"wx1","secret":"t","kind":"miniprogram"}]}"#,
    )
    .unwrap_err();
    assert!(err.starts_with("apps[1] (wx1): duplicate appid"), "{err}");
}

#[test]
fn parse_apps_file_web_app_without_redirect_uris_names_entry() {
    let err =
        parse(r#"{"apps":[{"appid":"wxoa","secret":"s","kind":"official_account"}]}"#).unwrap_err();
    assert!(err.starts_with("apps[0] (wxoa):"), "{err}");
    assert!(err.contains("redirect_uris"), "{err}");
    let err =
        parse(r#"{"apps":[{"appid":"wxw","secret":"s","kind":"website","redirect_uris":[]}]}"#)
            .unwrap_err();
    assert!(err.contains("redirect_uris"), "{err}");
}

#[test]
fn parse_apps_file_http_redirect_off_localhost_refused() {
    let err = parse(
        r#"{"apps":[{"appid":"wxoa","secret":"s","kind":"official_account",
                     "redirect_uris":["http://h5.example.com/cb"]}]}"#,
    )
    .unwrap_err();
    assert!(err.starts_with("apps[0] (wxoa):"), "{err}");
    assert!(err.contains("https"), "{err}");
}

#[test]
fn check_redirect_uri_cases() {
    assert!(check_redirect_uri("https://a.example/cb?x=1").is_ok());
    assert!(check_redirect_uri("http://localhost:10000/demo/").is_ok());
    assert!(check_redirect_uri("http://127.0.0.1:10000/demo/").is_ok());
    assert!(check_redirect_uri("http://[::1]:8/").is_ok());
    assert!(check_redirect_uri("http://example.com/").is_err());
    assert!(check_redirect_uri("https://a.example/#frag").is_err());
    assert!(check_redirect_uri("https://u:p@a.example/").is_err());
    assert!(check_redirect_uri("/relative").is_err());
    assert!(check_redirect_uri("javascript:alert(1)").is_err());
    assert!(check_redirect_uri("http://localhost.evil.example/").is_err());
    // Not a header value: refused at start, naming the form to write.
    let err = check_redirect_uri("https://h5.example.com/登录").unwrap_err();
    assert!(
        err.contains("`https://h5.example.com/%E7%99%BB%E5%BD%95`"),
        "{err}"
    );
    let err = check_redirect_uri("https://例え.jp/cb").unwrap_err();
    assert!(err.contains("`https://xn--r8jz45g.jp/cb`"), "{err}");
    assert!(check_redirect_uri("https://a.example/c\tb").is_err());
    assert!(check_redirect_uri("https://a.example/cb ").is_err());
}

/// User information alone, a user or a password, is refused as `user:password` is: a
/// redirect such as `https://app.example@evil.example/` reads as the app's and is not.
#[test]
fn check_redirect_uri_user_or_password_alone_refused() {
    for uri in [
        "https://app.example@evil.example/cb",
        "https://:secret@a.example/cb",
    ] {
        let err = check_redirect_uri(uri).unwrap_err();
        assert!(err.contains("must not carry user info"), "{uri}: {err}");
    }
}

#[test]
fn parse_apps_file_secret_rules() {
    assert!(parse(r#"{"apps":[{"appid":"wx1","kind":"miniprogram"}]}"#)
        .unwrap_err()
        .contains("secret or secret_file is required"));
    assert!(parse(
        r#"{"apps":[{"appid":"wx1","secret":"s","secret_file":"/run/secrets/mini","kind":"miniprogram"}]}"#
    )
    .unwrap_err()
    .contains("not both"));
    assert!(
        parse(r#"{"apps":[{"appid":"wx1","secret_file":"/nope","kind":"miniprogram"}]}"#)
            .unwrap_err()
            .contains("cannot read secret_file `/nope`")
    );
    assert!(
        parse(r#"{"apps":[{"appid":"wx1","secret":"","kind":"miniprogram"}]}"#)
            .unwrap_err()
            .contains("empty")
    );
}

#[test]
fn parse_apps_file_miniprogram_with_redirect_uris_refused() {
    let err = parse(
        r#"{"apps":[{"appid":"wx1","secret":"s","kind":"miniprogram","redirect_uris":["https://a/"]}]}"#,
    )
    .unwrap_err();
    assert!(err.contains("only for"), "{err}");
}

#[test]
fn parse_apps_file_empty_or_bad_appid_refused() {
    assert!(parse(r#"{"apps":[]}"#)
        .unwrap_err()
        .contains("at least one"));
    assert!(
        parse(r#"{"apps":[{"appid":"wx 1","secret":"s","kind":"miniprogram"}]}"#)
            .unwrap_err()
            .contains("alphanumeric")
    );
}

#[test]
fn allows_redirect_exact_match_only() {
    let apps = parse(THREE).unwrap();
    let oa = apps.get("wxoa").unwrap();
    assert!(oa.allows_redirect("https://h5.example.com/after-login"));
    assert!(!oa.allows_redirect("https://h5.example.com/after-login/"));
    assert!(!oa.allows_redirect("https://h5.example.com/after-login?next=x"));
    assert!(!oa.allows_redirect("https://h5.example.com/after-loginX"));
    assert!(!oa.allows_redirect("https://H5.example.com/after-login"));
    assert!(!oa.allows_redirect("https://h5.example.com/"));
}

#[test]
fn miniprogram_lookup_rules() {
    let apps = parse(THREE).unwrap();
    assert_eq!(apps.miniprogram(None).unwrap().appid, "wxmini");
    assert_eq!(apps.miniprogram(Some("wxmini")).unwrap().appid, "wxmini");
    assert!(matches!(
        apps.miniprogram(Some("wxoa")),
        Err(AppLookupError::WrongKind { .. })
    ));
    assert!(matches!(
        apps.miniprogram(Some("wxnope")),
        Err(AppLookupError::Unknown(_))
    ));
    let two = parse(
        r#"{"apps":[{"appid":"wx1","secret":"s","kind":"miniprogram"},
                    {"appid":"wx2","secret":"t","kind":"miniprogram"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        two.miniprogram(None),
        Err(AppLookupError::Ambiguous(2))
    ));
}

#[test]
fn web_lookup_refuses_miniprogram() {
    let apps = parse(THREE).unwrap();
    assert_eq!(apps.web("wxweb").unwrap().kind, AppKind::Website);
    assert!(matches!(
        apps.web("wxmini"),
        Err(AppLookupError::WrongKind { .. })
    ));
    assert!(matches!(apps.web("x"), Err(AppLookupError::Unknown(_))));
}

/// The test keys of `mockwechat/fixtures/apisec/` (see its README).
fn fixture(name: &str) -> String {
    format!(
        "{}/../mockwechat/fixtures/apisec/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn parse_with_env(text: &str, env: &[(&str, String)]) -> Result<Apps, String> {
    let lookup = |var: &str| {
        env.iter()
            .find(|(name, _)| *name == var)
            .map(|(_, value)| value.clone())
    };
    parse_apps_file(
        text,
        &SecretSources {
            read_file: &|path| std::fs::read_to_string(path),
            lookup: &lookup,
        },
    )
}

fn with_api_security(kind: &str, api_security: &str) -> String {
    format!(
        r#"{{"apps":[{{"appid":"wxa","secret":"s","kind":"{kind}","api_security":{api_security}}}]}}"#
    )
}

fn good_api_security() -> String {
    format!(
        r#"{{"sym_key_env":"WX_SYM","sym_sn":"sym1","private_key_file":"{}","private_key_sn":"app1",
            "platform_cert_file":"{}","platform_cert_sn":"plat1"}}"#,
        fixture("app_key.pem"),
        fixture("platform_cert.pem")
    )
}

fn sym_env() -> Vec<(&'static str, String)> {
    vec![(
        "WX_SYM",
        std::fs::read_to_string(fixture("sym_key.txt")).unwrap(),
    )]
}

#[test]
fn api_security_from_files_and_env() {
    for kind in ["miniprogram", "plugin"] {
        let apps =
            parse_with_env(&with_api_security(kind, &good_api_security()), &sym_env()).unwrap();
        let keys = apps.get("wxa").unwrap().api_security.clone().unwrap();
        assert_eq!(
            (
                keys.sym_sn.as_str(),
                keys.private_key_sn.as_str(),
                keys.platform_sn.as_str()
            ),
            ("sym1", "app1", "plat1")
        );
        let debug = format!("{apps:?}");
        assert!(
            debug.contains("app1") && !debug.contains("PRIVATE"),
            "{debug}"
        );
    }
    // The platform key may be given as a bare public key.
    let public =
        good_api_security().replace(&fixture("platform_cert.pem"), &fixture("app_public.pem"));
    assert!(parse_with_env(&with_api_security("miniprogram", &public), &sym_env()).is_ok());
}

/// A key number is joined with `|` into the data WeChat's API security authenticates
/// (`urlpath|appid|timestamp|sym_sn`) and sent in a header: one holding a `|`, a space, a
/// control or a non-ASCII character is refused at start, not sent.
#[test]
fn key_number_printable_ascii_without_space_or_bar() {
    assert_eq!(
        key_number("sym_sn", Some("fa05fe1e")),
        Ok("fa05fe1e".to_string())
    );
    for bad in ["fa05 fe1e", "fa05|fe1e", "fa05\tfe1e", "fa05\u{e9}"] {
        let err = key_number("sym_sn", Some(bad)).unwrap_err();
        assert!(
            err.starts_with("api_security.sym_sn must be"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn api_security_refusals_name_app_and_field() {
    let good = good_api_security();
    let cases: Vec<(String, &str)> = vec![
        // Inline keys, whatever their form.
        (
            good.replace(r#""sym_key_env":"WX_SYM""#, r#""sym_key":"aGk=""#),
            "api_security.sym_key: keys are never written in the apps file",
        ),
        (
            good.replace(r#""private_key_file""#, r#""private_key""#),
            "api_security.private_key: keys are never written in the apps file",
        ),
        // Both sources, or none.
        (
            good.replace(
                r#""sym_key_env":"WX_SYM""#,
                r#""sym_key_env":"WX_SYM","sym_key_file":"/x""#,
            ),
            "set either sym_key_file or sym_key_env, not both",
        ),
        (
            good.replace(r#""sym_key_env":"WX_SYM","#, ""),
            "api_security.sym_key_file or api_security.sym_key_env is required",
        ),
        // A missing number.
        (
            good.replace(r#""platform_cert_sn":"plat1""#, r#""platform_cert_sn":"""#),
            "api_security.platform_cert_sn must be",
        ),
        (
            good.replace(r#","private_key_sn":"app1""#, ""),
            "api_security.private_key_sn is required",
        ),
        // An unset variable, an unreadable file.
        (
            good.replace("WX_SYM", "WX_NOT_SET"),
            "api_security.sym_key_env: the variable `WX_NOT_SET` is not set",
        ),
        (
            good.replace(&fixture("app_key.pem"), "/nonexistent/key.pem"),
            "api_security.private_key_file: cannot read `/nonexistent/key.pem`",
        ),
        // Keys that do not parse: each named with where it came from.
        (
            good.replace(&fixture("app_key.pem"), &fixture("platform_cert.pem")),
            "is not an RSA private key",
        ),
        (
            good.replace(&fixture("platform_cert.pem"), &fixture("sym_key.txt")),
            "api_security.platform_cert_file",
        ),
        (
            good.replace("WX_SYM", "WX_SHORT"),
            "api_security.sym_key_env `WX_SHORT`: the symmetric key must be",
        ),
        // Unknown fields.
        (
            good.replace(r#""sym_sn""#, r#""sym_serial""#),
            "unknown field `sym_serial`",
        ),
    ];
    let mut env = sym_env();
    env.push(("WX_SHORT", "c2hvcnQ=".into()));
    for (api_security, expected) in cases {
        let err =
            parse_with_env(&with_api_security("miniprogram", &api_security), &env).unwrap_err();
        assert!(
            err.contains(expected)
                && (err.starts_with("apps[0] (wxa)") || err.contains("unknown field")),
            "{api_security}\n→ {err}"
        );
    }
    // Web apps may not carry it.
    let web = format!(
        r#"{{"apps":[{{"appid":"wxw","secret":"s","kind":"website","redirect_uris":["https://x.example/"],"api_security":{good}}}]}}"#
    );
    let err = parse_with_env(&web, &sym_env()).unwrap_err();
    assert!(
        err.contains("apps[0] (wxw): api_security is only for miniprogram and plugin"),
        "{err}"
    );
}

#[test]
fn debug_hides_secret() {
    let apps = parse(THREE).unwrap();
    let text = format!("{apps:?}");
    assert!(!text.contains("s2"), "{text}");
    assert!(!text.contains("file-secret"), "{text}");
}

/// `as_str` names a kind as the apps file spells it: the errors naming an app's kind (at
/// start, and the API's 400s for a route of another kind) tell the operator the word to write.
#[test]
fn kind_names_are_the_apps_file_spelling() {
    for kind in [
        AppKind::Miniprogram,
        AppKind::OfficialAccount,
        AppKind::Website,
        AppKind::Plugin,
    ] {
        let named: AppKind = serde_json::from_value(kind.as_str().into()).unwrap();
        assert_eq!(named, kind);
    }
}
