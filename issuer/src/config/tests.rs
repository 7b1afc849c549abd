//! The configuration's parsing and validation, every variable.

use super::variables::edit_distance;
use super::*;
use std::collections::HashMap;

fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    load_for(vars, Mode::Serve)
}

/// The errors of `var=value` (with the variables every start needs), which name `var` alone.
fn refused_naming(var: &'static str, value: &'static str) -> ConfigErrors {
    let err = load(&with(&[(var, value)])).unwrap_err();
    assert_eq!(err.vars(), [var], "{var}={value}: {err}");
    err
}

fn load_for(vars: &[(&str, &str)], mode: Mode) -> Result<Config, ConfigErrors> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| map.get(name).cloned();
    let read_file = |path: &str| {
        if path == "/secret/wechat" {
            Ok("file-secret\n".to_string())
        } else if path == "/etc/weauth/apps.json" {
            Ok(r#"{"apps":[
                {"appid":"wxmini","secret_file":"/secret/wechat","kind":"miniprogram"},
                {"appid":"wxoa","secret":"oa-secret","kind":"official_account",
                 "redirect_uris":["https://h5.example.com/after-login"]}]}"#
                .to_string())
        } else if path == "/etc/weauth/dup.json" {
            Ok(
                r#"{"apps":[{"appid":"wx1","secret":"a","kind":"miniprogram"},
                           {"appid":"wx1","secret":"b","kind":"miniprogram"}]}"#
                    .to_string(),
            )
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            ))
        }
    };
    Config::load(
        &Source {
            lookup: &lookup,
            read_file: &read_file,
        },
        mode,
    )
}

const BASE: [(&str, &str); 2] = [
    ("WEAUTH_WECHAT_APPID", "wx0123456789abcdef"),
    ("WEAUTH_WECHAT_SECRET", "mock-secret"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut vars = BASE.to_vec();
    vars.extend_from_slice(extra);
    vars
}

#[test]
fn parse_duration_units_ok() {
    assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
}

#[test]
fn parse_duration_garbage_refused() {
    assert!(parse_duration("").is_err());
    assert!(parse_duration("m15").is_err());
    assert!(parse_duration("15 minutes").is_err());
    assert!(parse_duration("1.5h").is_err());
    assert!(parse_duration("-5s").is_err());
    assert!(parse_duration("99999999999999999999d").is_err());
}

/// WeChat's bases are kept in their canonical form: API security signs the URL's text, and
/// WeChat checks it against its own (lower-case host, no default port). The issuer's URL, the
/// tokens' `iss`, stays as written.
#[test]
fn config_wechat_bases_canonical_issuer_as_written() {
    let config = load(&with(&[
        ("WEAUTH_WECHAT_API_BASE", "https://API.Weixin.qq.com:443/"),
        ("WEAUTH_WECHAT_OPEN_BASE", "HTTPS://Open.weixin.qq.com:443"),
        ("WEAUTH_ISSUER", "https://Auth.Example.com"),
    ]))
    .unwrap();
    assert_eq!(config.wechat_api_base, "https://api.weixin.qq.com");
    assert_eq!(config.wechat_open_base, "https://open.weixin.qq.com");
    assert_eq!(config.issuer, "https://Auth.Example.com");
    // A mock's port and path prefix are kept.
    let config = load(&with(&[(
        "WEAUTH_WECHAT_API_BASE",
        "http://127.0.0.1:8090/wechat/",
    )]))
    .unwrap();
    assert_eq!(config.wechat_api_base, "http://127.0.0.1:8090/wechat");
}

/// A key reload longer than half the publish delay is refused (a replica publishes a new key
/// only at its reload: with a longer reload, one replica signed with a key another did not
/// publish yet); with no publish delay (tests, one replica) any reload goes. A superseded key
/// stays published one reload longer (a replica signs with it until its next reload).
#[test]
fn config_key_reload_at_most_half_the_publish_delay() {
    let err = load(&with(&[
        ("WEAUTH_KEY_PUBLISH_DELAY", "10m"),
        ("WEAUTH_KEY_RELOAD", "15m"),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("WEAUTH_KEY_RELOAD"), "{err}");
    let config = load(&with(&[
        ("WEAUTH_KEY_PUBLISH_DELAY", "10m"),
        ("WEAUTH_KEY_RELOAD", "5m"),
    ]))
    .unwrap();
    assert_eq!(
        config.key_retain_secs(900),
        900 + config.leeway_secs() + 300
    );
    assert!(load(&with(&[
        ("WEAUTH_KEY_PUBLISH_DELAY", "0s"),
        ("WEAUTH_KEY_RELOAD", "15m"),
    ]))
    .is_ok());
}

#[test]
fn config_minimal_defaults_ok() {
    let config = load(&BASE).unwrap();
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.store, StoreUrl::Sqlite("weauth.db".into()));
    assert_eq!(config.wechat_api_base, "https://api.weixin.qq.com");
    assert_eq!(config.issuer, "http://127.0.0.1:8080");
    assert_eq!(config.audiences, vec!["weauth".to_string()]);
    assert_eq!(config.access_ttl, Duration::from_secs(900));
    assert_eq!(config.refresh_ttl, Duration::from_secs(7 * 86_400));
    assert_eq!(config.session_max, Duration::from_secs(30 * 86_400));
    assert_eq!(config.signing_alg, Algorithm::EdDSA);
    assert_eq!(config.key_publish_delay, Duration::from_secs(600));
    assert!(config.feed_token.is_none());
    assert_eq!(config.login_rate_per_min, 60);
    assert_eq!(config.user_wechat_rate_per_min, 10);
    assert_eq!(config.user_wechat_burst, 10);
}

#[test]
fn config_missing_appid_names_variable() {
    let err = load(&[("WEAUTH_WECHAT_SECRET", "s")]).unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_WECHAT_APPID"]);
}

#[test]
fn config_secret_from_file_ok() {
    let config = load(&[
        ("WEAUTH_WECHAT_APPID", "wx1"),
        ("WEAUTH_WECHAT_SECRET_FILE", "/secret/wechat"),
    ])
    .unwrap();
    assert_eq!(config.wechat_secret.as_str(), "file-secret");
}

#[test]
fn config_secret_file_unreadable_names_file_variable() {
    let err = load(&[
        ("WEAUTH_WECHAT_APPID", "wx1"),
        ("WEAUTH_WECHAT_SECRET_FILE", "/nope"),
    ])
    .unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_WECHAT_SECRET_FILE"]);
}

#[test]
fn config_secret_both_forms_refused() {
    let err = load(&with(&[("WEAUTH_WECHAT_SECRET_FILE", "/secret/wechat")])).unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_WECHAT_SECRET"]);
}

const KEY: (&str, &str) = (
    "WEAUTH_DATA_KEY",
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
);

#[test]
fn config_redis_url_parsed_with_password_masked() {
    let config = load(&with(&[
        ("WEAUTH_STORE", "redis://:s3cret@10.0.0.5:6380/2"),
        KEY,
    ]))
    .unwrap();
    let StoreUrl::Redis { target, display } = &config.store else {
        panic!("expected redis");
    };
    assert_eq!(
        target,
        &RedisTarget::Direct("redis://:s3cret@10.0.0.5:6380/2".into())
    );
    assert_eq!(display, "redis://:***@10.0.0.5:6380/2");
    assert_eq!(config.redis_prefix, "weauth:");
    assert_eq!(config.redis_wait_replicas, 0);
}

#[test]
fn config_redis_allow_eviction_off_by_default_and_parsed() {
    let redis = ("WEAUTH_STORE", "redis://127.0.0.1:6379/0");
    let config = load(&with(&[redis, KEY])).unwrap();
    assert!(!config.redis_allow_eviction);
    let config = load(&with(&[
        redis,
        KEY,
        ("WEAUTH_REDIS_ALLOW_EVICTION", "true"),
    ]))
    .unwrap();
    assert!(config.redis_allow_eviction);
    let Err(errors) = load(&with(&[
        redis,
        KEY,
        ("WEAUTH_REDIS_ALLOW_EVICTION", "maybe"),
    ])) else {
        panic!("`maybe` is not a boolean");
    };
    assert!(
        errors.to_string().contains("WEAUTH_REDIS_ALLOW_EVICTION"),
        "{errors}"
    );
}

#[test]
fn config_redis_sentinel_url_parsed() {
    let config = load(&with(&[
        (
            "WEAUTH_STORE",
            "redis+sentinel://app:pw@s1:26380,s2,s3:26381/mymaster/3",
        ),
        KEY,
    ]))
    .unwrap();
    assert_eq!(
        config.store,
        StoreUrl::Redis {
            target: RedisTarget::Sentinel {
                sentinels: vec![
                    ("s1".into(), 26380),
                    ("s2".into(), 26379),
                    ("s3".into(), 26381)
                ],
                master: "mymaster".into(),
                db: 3,
                username: Some("app".into()),
                password: Some("pw".into()),
            },
            display: "redis+sentinel://app:***@s1:26380,s2,s3:26381/mymaster/3".into(),
        }
    );
    assert_eq!(
        config.redis_wait_replicas, 1,
        "WAIT for one replica by default"
    );
}

#[test]
fn config_redis_without_data_key_refused_naming_it() {
    let err = load(&with(&[("WEAUTH_STORE", "redis://127.0.0.1:6379/0")])).unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_DATA_KEY"]);
}

#[test]
fn config_bad_values_name_their_variable() {
    for (var, value) in [
        ("WEAUTH_LISTEN", "localhost"),
        ("WEAUTH_STORE", "postgres://x"),
        ("WEAUTH_STORE", "redis+sentinel:///mymaster"),
        // More path than the master and the database was ignored.
        ("WEAUTH_STORE", "redis+sentinel://s1:26379/mymaster/0/junk"),
        ("WEAUTH_STORE", "redis://127.0.0.1:6379/db"),
        ("WEAUTH_ACCESS_TTL", "soon"),
        ("WEAUTH_ACCESS_TTL", "0s"),
        ("WEAUTH_REFRESH_TTL", "40d"),
        ("WEAUTH_SIGNING_ALG", "RS256"),
        ("WEAUTH_SIGNING_ALG", "eddsa"),
        ("WEAUTH_DATA_KEY", "c2hvcnQ="),
        ("WEAUTH_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("WEAUTH_LOGIN_RATE", "many"),
        ("WEAUTH_USER_WECHAT_RATE", "-1"),
        ("WEAUTH_USER_WECHAT_BURST", "ten"),
        ("WEAUTH_ISSUER", "ftp://x"),
        ("WEAUTH_WECHAT_API_BASE", "not a url"),
        ("WEAUTH_AUDIENCE", " , "),
        ("WEAUTH_FEED_TOKEN", "short"),
        ("WEAUTH_WECHAT_RETRIES", "9"),
        // tokio's semaphore panicked at start above 2^61 permits.
        ("WEAUTH_MAX_IN_FLIGHT", "2305843009213693952"),
        ("WEAUTH_MAX_IN_FLIGHT", "1000001"),
        ("WEAUTH_REFRESH_REUSE_GRACE", "5m"),
        ("WEAUTH_LOG_FORMAT", "xml"),
        ("WEAUTH_DECRYPT_MAX_AGE", "later"),
        ("WEAUTH_DECRYPT_MAX_AGE", "0s"),
        ("WEAUTH_LOG", "verbose"),
        ("WEAUTH_LOG", "inof"),
        ("WEAUTH_LOG", "info,,debug"),
        ("WEAUTH_LOG", "weauth_issuer=loud"),
        ("WEAUTH_ACCESS_TTL", "30d"),
        ("WEAUTH_ACCESS_TTL", "8d"),
        ("WEAUTH_LEEWAY", "1h"),
        ("WEAUTH_MAX_BODY", "10"),
        // At the Redis client's 3 s response timeout a WAIT would end as a failed command.
        ("WEAUTH_REDIS_WAIT_TIMEOUT", "3s"),
        // Counted in whole seconds: a fraction is refused, not cut (a 500ms grace was none).
        ("WEAUTH_REFRESH_REUSE_GRACE", "500ms"),
        ("WEAUTH_ACCESS_TTL", "1500ms"),
        ("WEAUTH_REFRESH_TTL", "86400001ms"),
        ("WEAUTH_SESSION_MAX", "2500ms"),
        ("WEAUTH_LEEWAY", "100ms"),
        ("WEAUTH_KEY_PUBLISH_DELAY", "10ms"),
        ("WEAUTH_DECRYPT_MAX_AGE", "90500ms"),
        // A brace would end or start a Redis Cluster hash tag inside the prefix: the
        // directory's keys and the sessions' would fall into other slots than the scripts
        // name together.
        ("WEAUTH_REDIS_PREFIX", "weauth{a}:"),
        ("WEAUTH_REDIS_PREFIX", "we}auth:"),
    ] {
        refused_naming(var, value);
    }
}

/// A base URL is extended with paths (`{WEAUTH_ISSUER}/.well-known/…`, WeChat's API paths):
/// a query or a fragment, either one alone, would end up in the middle of every URL built
/// from it, so each is refused.
#[test]
fn config_base_url_with_query_or_fragment_alone_refused() {
    for (var, value) in [
        ("WEAUTH_ISSUER", "https://issuer.example?tenant=a"),
        ("WEAUTH_ISSUER", "https://issuer.example/#top"),
        ("WEAUTH_WECHAT_API_BASE", "https://api.weixin.qq.com/?x=1"),
        ("WEAUTH_WECHAT_OPEN_BASE", "https://open.weixin.qq.com#frag"),
    ] {
        let err = refused_naming(var, value);
        assert!(err.to_string().contains("query or fragment"), "{err}");
    }
}

#[test]
fn config_several_bad_values_all_reported_at_once() {
    let err = load(&[
        ("WEAUTH_LOG", "verbose"),
        ("WEAUTH_ACCESS_TTL", "soon"),
        ("WEAUTH_LISTEN", "nowhere"),
    ])
    .unwrap_err();
    assert_eq!(
        err.vars(),
        [
            "WEAUTH_LISTEN",
            "WEAUTH_WECHAT_APPID",
            "WEAUTH_WECHAT_SECRET",
            "WEAUTH_ACCESS_TTL",
            "WEAUTH_LOG"
        ]
    );
    assert_eq!(err.to_string().lines().count(), 5, "{err}");
}

#[test]
fn config_apps_file_read_with_secret_files() {
    let config = load(&[("WEAUTH_APPS_FILE", "/etc/weauth/apps.json")]).unwrap();
    assert_eq!(config.apps.all().len(), 2);
    assert_eq!(
        config.apps.get("wxmini").unwrap().secret.as_str(),
        "file-secret"
    );
    assert_eq!(
        config.apps.get("wxoa").unwrap().kind,
        crate::config::apps::AppKind::OfficialAccount
    );
    assert_eq!(config.wechat_appid, "wxmini");
}

#[test]
fn config_apps_file_and_shortcut_both_refused() {
    let err = load(&with(&[("WEAUTH_APPS_FILE", "/etc/weauth/apps.json")])).unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_APPS_FILE"]);
    assert!(err.to_string().contains("not both"), "{err}");
}

#[test]
fn config_apps_file_invalid_names_variable_and_entry() {
    let err = load(&[("WEAUTH_APPS_FILE", "/etc/weauth/dup.json")]).unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_APPS_FILE"]);
    assert!(
        err.to_string().contains("apps[1] (wx1): duplicate appid"),
        "{err}"
    );
    let err = load(&[("WEAUTH_APPS_FILE", "/nope.json")]).unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_APPS_FILE"]);
}

#[test]
fn config_shortcut_is_one_miniprogram_and_web_defaults() {
    let config = load(&BASE).unwrap();
    assert_eq!(config.apps.all().len(), 1);
    assert_eq!(
        config.apps.miniprogram(None).unwrap().appid,
        "wx0123456789abcdef"
    );
    assert!(config.cookie_secure);
    assert_eq!(config.wechat_open_base, "https://open.weixin.qq.com");
    let config = load(&with(&[
        ("WEAUTH_COOKIE_SECURE", "false"),
        ("WEAUTH_ISSUER", "http://127.0.0.1:8080"),
    ]))
    .unwrap();
    assert!(!config.cookie_secure);
    // Over https there is no reason to drop the cookies' defences.
    for issuer in ["https://issuer.example.com", "HTTPS://issuer.example.com"] {
        let err = load(&with(&[
            ("WEAUTH_COOKIE_SECURE", "false"),
            ("WEAUTH_ISSUER", issuer),
        ]))
        .unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_COOKIE_SECURE"], "{issuer}: {err}");
    }
    for (var, value) in [
        ("WEAUTH_COOKIE_SECURE", "maybe"),
        ("WEAUTH_WECHAT_OPEN_BASE", "open.weixin.qq.com"),
    ] {
        refused_naming(var, value);
    }
}

#[test]
fn config_log_directives_accepted() {
    for value in [
        "debug",
        "WARN",
        "info,weauth_issuer=debug",
        "off",
        "hyper=warn,trace",
    ] {
        let config = load(&with(&[("WEAUTH_LOG", value)])).unwrap();
        assert_eq!(config.log, value);
    }
}

#[test]
fn config_access_ttl_longer_than_refresh_refused() {
    let err = load(&with(&[
        ("WEAUTH_ACCESS_TTL", "2h"),
        ("WEAUTH_REFRESH_TTL", "1h"),
    ]))
    .unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_ACCESS_TTL"]);
    assert!(err.to_string().contains("WEAUTH_REFRESH_TTL"), "{err}");
    assert!(load(&with(&[
        ("WEAUTH_ACCESS_TTL", "1h"),
        ("WEAUTH_REFRESH_TTL", "1h")
    ]))
    .is_ok());
}

#[test]
fn config_keys_mode_without_wechat_credentials_ok() {
    assert!(load(&[]).is_err());
    let config = load_for(&[], Mode::Keys).unwrap();
    assert!(config.wechat_appid.is_empty());
    let err = load_for(&[("WEAUTH_ACCESS_TTL", "soon")], Mode::Keys).unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_ACCESS_TTL"]);
}

#[test]
fn defaults_come_from_the_table() {
    let config = load(&BASE).unwrap();
    assert_eq!(
        config.wechat_timeout,
        parse_duration(default_of("WEAUTH_WECHAT_TIMEOUT")).unwrap()
    );
    assert_eq!(
        config.access_ttl,
        parse_duration(default_of("WEAUTH_ACCESS_TTL")).unwrap()
    );
    assert_eq!(config.log, default_of("WEAUTH_LOG"));
    assert_eq!(config.max_body.to_string(), default_of("WEAUTH_MAX_BODY"));
}

#[test]
fn help_text_lists_every_variable_with_its_default() {
    let help = help_text();
    for v in VARIABLES {
        let line = help
            .lines()
            .find(|l| {
                let name = l.split_whitespace().next().unwrap_or("");
                name == v.name || name == format!("{}[_FILE]", v.name)
            })
            .unwrap_or_else(|| panic!("{} missing from --help", v.name));
        if !v.default.is_empty() {
            assert!(
                line.contains(&format!("[default: {}]", v.default)),
                "{line}"
            );
        }
    }
    assert!(help.contains("WEAUTH_WECHAT_SECRET[_FILE]"));
}

#[test]
fn unknown_variables_suggest_the_closest_name() {
    let found = unknown_variables([
        "WEAUTH_ACESS_TTL",
        "WEAUTH_ACCESS_TTL",
        "WEAUTH_WECHAT_SECRET_FILE",
        "WEAUTH_ISSUER_BIN",
        "WEAUTH_STACK_BIN",
        "WEAUTH_BENCH_MODE",
        "WEAUTH_SOMETHING_ELSE_ENTIRELY",
        "HOME",
    ]);
    assert_eq!(
        found,
        vec![
            UnknownVar {
                name: "WEAUTH_ACESS_TTL".into(),
                closest: Some("WEAUTH_ACCESS_TTL"),
            },
            UnknownVar {
                name: "WEAUTH_SOMETHING_ELSE_ENTIRELY".into(),
                closest: None,
            },
        ]
    );
}

#[test]
fn edit_distance_counts_insertions_deletions_substitutions() {
    assert_eq!(edit_distance("WEAUTH_ACESS_TTL", "WEAUTH_ACCESS_TTL"), 1);
    assert_eq!(edit_distance("abc", "abc"), 0);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("", "ab"), 2);
}

#[test]
fn config_decrypt_max_age_off_by_default_parsed_when_set() {
    assert_eq!(load(&BASE).unwrap().decrypt_max_age, None);
    assert_eq!(
        load(&with(&[("WEAUTH_DECRYPT_MAX_AGE", "off")]))
            .unwrap()
            .decrypt_max_age,
        None
    );
    assert_eq!(
        load(&with(&[("WEAUTH_DECRYPT_MAX_AGE", "10m")]))
            .unwrap()
            .decrypt_max_age,
        Some(Duration::from_secs(600))
    );
}

#[test]
fn config_audience_list_trimmed() {
    let config = load(&with(&[("WEAUTH_AUDIENCE", "a, b ,c")])).unwrap();
    assert_eq!(config.audiences, vec!["a", "b", "c"]);
}

#[test]
fn config_data_key_base64_32_bytes_ok() {
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let config = load(&with(&[("WEAUTH_DATA_KEY", key)])).unwrap();
    assert_eq!(config.data_key.unwrap()[31], 31);
}

/// The keys a data-key rotation replaced: comma-separated, each 32 bytes of base64; none
/// twice, at most 8; each error names the key by its place.
#[test]
fn config_previous_data_keys_listed_and_checked() {
    use base64::Engine;
    let key = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let previous = |value: String| load(&with(&[("WEAUTH_DATA_KEY_PREVIOUS", value.leak())]));
    let config = previous(format!("{}, {}", key(1), key(2))).unwrap();
    let current = load(&with(&[
        ("WEAUTH_DATA_KEY", key(2).leak()),
        (
            "WEAUTH_DATA_KEY_PREVIOUS",
            format!("{},{}", key(1), key(2)).leak(),
        ),
    ]))
    .unwrap_err();
    assert_eq!(current.vars(), ["WEAUTH_DATA_KEY_PREVIOUS"], "{current}");
    assert!(
        current.to_string().contains("key 2 is WEAUTH_DATA_KEY"),
        "{current}"
    );
    assert_eq!(config.data_key_previous.as_slice(), [[1; 32], [2; 32]]);
    assert!(load(&with(&[])).unwrap().data_key_previous.is_empty());
    let nine: Vec<String> = (0..9).map(key).collect();
    for (value, says) in [
        (
            format!("{},c2hvcnQ=", key(1)),
            "key 2: must decode to 32 bytes, got 5",
        ),
        (format!("{},", key(1)), "key 2 is empty"),
        (format!("{},not base64!", key(1)), "key 2: is not base64"),
        (
            format!("{0},{1},{0}", key(1), key(2)),
            "key 3 is listed twice",
        ),
        (nine.join(","), "lists 9 keys; at most 8"),
    ] {
        let err = previous(value.clone()).unwrap_err();
        assert_eq!(err.vars(), ["WEAUTH_DATA_KEY_PREVIOUS"], "{err}");
        assert!(err.to_string().contains(says), "{value}: {err}");
    }
}

/// A password with a raw `/`, `?` or `#` (base64 passwords have `/`; the docs say to
/// percent-encode them) is hidden in the error that refuses the URL, whatever the store: the
/// `/` once read as the path's start, and the whole URL, password included, went to stderr.
#[test]
fn store_urls_with_a_raw_slash_or_query_in_the_password_never_print_it() {
    for url in [
        "redis://:ab/s3cret@host:6379/0",
        "redis://user:s3/cret@host:6379/0",
        "redis+sentinel://u:99/s3cret@s1:26379/mymaster",
        "redis+cluster://u:ab/s3cret@n1:7000,n2:7001",
        "mysql://weauth:ab/s3cret@db:3306/weauth",
        "mysql://weauth:ab?s3cret@db:3306/weauth",
        "mysql://weauth:ab#s3cret@db:3306/weauth",
        "mysql://weauth:12/s3cret@db:3306/weauth",
        "redis://u:12/s3cret@h/0",
    ] {
        match load(&with(&[("WEAUTH_STORE", url), KEY])) {
            Err(errors) => {
                let text = errors.to_string();
                assert!(!text.contains("s3cret"), "{url}: {text}");
                assert!(text.contains("percent-encode"), "{url}: {text}");
            }
            Ok(config) => {
                let shown = format!("{:?}", config.store);
                assert!(!shown.contains("s3cret"), "{url}: {shown}");
            }
        }
    }
    assert_eq!(
        super::parse::mask_password("redis://:ab/cd@host:6379/0"),
        "redis://:***@host:6379/0"
    );
}

#[test]
fn config_mysql_url_parsed_with_password_masked_and_pool_defaults() {
    let config = load(&with(&[
        (
            "WEAUTH_STORE",
            "mysql://weauth:s3cret@db.internal:3307/weauth",
        ),
        KEY,
    ]))
    .unwrap();
    let StoreUrl::Mysql { url, display } = &config.store else {
        panic!("expected mysql");
    };
    assert_eq!(url, "mysql://weauth:s3cret@db.internal:3307/weauth");
    assert_eq!(display, "mysql://weauth:***@db.internal:3307/weauth");
    assert_eq!(config.mysql_pool_max, 16);
    assert_eq!(config.mysql_acquire_timeout, Duration::from_secs(2));
    assert_eq!(config.mysql_query_timeout, Duration::from_secs(5));
    assert_eq!(config.sqlite_path(), None);
}

#[test]
fn config_mysql_bad_urls_refused_naming_store_without_password() {
    for (url, reason) in [
        ("mysql://weauth:s3cret@db:3306/", "no database name"),
        ("mysql://weauth:s3cret@db:3306", "no database name"),
        ("mysql://:s3cret@db:3306/weauth", "no user"),
        (
            "mysql://weauth:s3cret@db:3306/we;auth",
            "not a plain database name",
        ),
        ("mysql://weauth:s3cret@db:port/weauth", "invalid port"),
    ] {
        let errors = load(&with(&[("WEAUTH_STORE", url), KEY])).unwrap_err();
        let text = errors.to_string();
        assert_eq!(errors.vars(), ["WEAUTH_STORE"], "{url}");
        assert!(text.contains(reason), "{url}: {text}");
        assert!(!text.contains("s3cret"), "{url}: {text}");
    }
}

/// MySQL database names the issuer accepts: letters, digits, `_` and `$` (what an unquoted
/// identifier may hold), so `weauth_prod` and `app$weauth` work as written.
#[test]
fn config_mysql_database_names_with_underscore_and_dollar_accepted() {
    for db in ["weauth_prod", "app$weauth", "_x$1"] {
        let url = format!("mysql://weauth:s3cret@db:3306/{db}");
        let config = load(&[BASE[0], BASE[1], ("WEAUTH_STORE", url.as_str()), KEY]).unwrap();
        assert!(matches!(config.store, StoreUrl::Mysql { .. }), "{db}");
    }
}

#[test]
fn config_mysql_needs_data_key_and_a_valid_pool() {
    let mysql = ("WEAUTH_STORE", "mysql://u:p@127.0.0.1:3306/weauth");
    let errors = load(&with(&[mysql])).unwrap_err();
    assert_eq!(errors.vars(), ["WEAUTH_DATA_KEY"]);
    let errors = load(&with(&[
        mysql,
        KEY,
        ("WEAUTH_MYSQL_POOL_MAX", "0"),
        ("WEAUTH_MYSQL_ACQUIRE_TIMEOUT", "soon"),
        ("WEAUTH_MYSQL_QUERY_TIMEOUT", "10ms"),
    ]))
    .unwrap_err();
    assert_eq!(
        errors.vars(),
        [
            "WEAUTH_MYSQL_POOL_MAX",
            "WEAUTH_MYSQL_ACQUIRE_TIMEOUT",
            "WEAUTH_MYSQL_QUERY_TIMEOUT"
        ]
    );
}

/// A Sentinel or Cluster URL's user and password are percent-decoded as a `redis://` URL's
/// are: a base64 password's `+` is kept (form decoding made it a space, and `&` cut it), `%XX`
/// escapes decoded.
#[test]
fn config_redis_cluster_and_sentinel_passwords_percent_decoded() {
    for (url, want) in [
        ("redis+cluster://:a+b%2Fc=@n1:7000/", "a+b/c="),
        ("redis+cluster://:a%2Bb%40c%3Ad&e@n1:7000/", "a+b@c:d&e"),
    ] {
        let config = load(&with(&[("WEAUTH_STORE", url), KEY])).unwrap();
        let StoreUrl::Redis {
            target: RedisTarget::Cluster { password, .. },
            ..
        } = &config.store
        else {
            panic!("expected a cluster");
        };
        assert_eq!(password.as_deref(), Some(want), "{url}");
    }
    let config = load(&with(&[
        (
            "WEAUTH_STORE",
            "redis+sentinel://u%2B1:p+w@s1:26379/mymaster",
        ),
        KEY,
    ]))
    .unwrap();
    let StoreUrl::Redis {
        target: RedisTarget::Sentinel {
            username, password, ..
        },
        ..
    } = &config.store
    else {
        panic!("expected sentinel");
    };
    assert_eq!(
        (username.as_deref(), password.as_deref()),
        (Some("u+1"), Some("p+w"))
    );
}

#[test]
fn config_redis_cluster_url_parsed_seeds_and_password_masked() {
    let config = load(&with(&[
        (
            "WEAUTH_STORE",
            "rediss+cluster://app:s3cret@n1:7000,n2,n3:7002/",
        ),
        KEY,
    ]))
    .unwrap();
    let StoreUrl::Redis { target, display } = &config.store else {
        panic!("expected redis");
    };
    assert_eq!(
        target,
        &RedisTarget::Cluster {
            nodes: vec![
                ("n1".into(), 7000),
                ("n2".into(), 6379),
                ("n3".into(), 7002)
            ],
            tls: true,
            username: Some("app".into()),
            password: Some("s3cret".into()),
        }
    );
    assert_eq!(display, "rediss+cluster://app:***@n1:7000,n2,n3:7002/");
    assert_eq!(
        config.redis_wait_replicas, 1,
        "a cluster waits for one replica"
    );
    let config = load(&with(&[
        ("WEAUTH_STORE", "redis+cluster://10.0.0.1:7000"),
        KEY,
    ]))
    .unwrap();
    assert!(matches!(
        config.store,
        StoreUrl::Redis {
            target: RedisTarget::Cluster { tls: false, .. },
            ..
        }
    ));
}

#[test]
fn config_redis_ipv6_hosts_in_brackets_read_without_them() {
    let nodes = |url: &'static str| match load(&with(&[("WEAUTH_STORE", url), KEY])) {
        Ok(Config {
            store:
                StoreUrl::Redis {
                    target: RedisTarget::Cluster { nodes, .. },
                    ..
                },
            ..
        }) => nodes,
        Ok(Config {
            store:
                StoreUrl::Redis {
                    target: RedisTarget::Sentinel { sentinels, .. },
                    ..
                },
            ..
        }) => sentinels,
        other => panic!("{url}: {other:?}"),
    };
    assert_eq!(
        nodes("redis+cluster://[fd00::7]:7000,[::1],n3/"),
        [
            ("fd00::7".to_string(), 7000),
            ("::1".to_string(), 6379),
            ("n3".to_string(), 6379)
        ]
    );
    assert_eq!(
        nodes("redis+sentinel://:pw@[::1]:26380,[fd00::2]/mymaster"),
        [("::1".to_string(), 26380), ("fd00::2".to_string(), 26379)]
    );
    // Without brackets the last group read as a port (`::1` was host `:` port 1); a bracket
    // left open, a non-address, or junk after `]` is refused.
    for (url, says) in [
        ("redis+cluster://::1:7000/", "written in brackets"),
        ("redis+cluster://fd00::7/", "written in brackets"),
        ("redis+sentinel://[::1:26379/mymaster", "no `]`"),
        (
            "redis+sentinel://[s1]:26379/mymaster",
            "not an IPv6 address",
        ),
        ("redis+cluster://[::1]7000/", "is not `:port`"),
        ("redis+cluster://[::1]:x/", "`x` is not a port"),
    ] {
        let Err(errors) = load(&with(&[("WEAUTH_STORE", url), KEY])) else {
            panic!("{url} must be refused");
        };
        let text = errors.to_string();
        assert!(
            text.contains("WEAUTH_STORE") && text.contains(says),
            "{url}: {text}"
        );
    }
}

#[test]
fn config_redis_cluster_url_without_node_or_with_db_refused() {
    for url in [
        "redis+cluster:///",
        "redis+cluster://:pw@/",
        "redis+cluster://h:7000/2",
        "redis+cluster://h:x/",
    ] {
        let Err(errors) = load(&with(&[("WEAUTH_STORE", url), KEY])) else {
            panic!("{url} must be refused");
        };
        let text = errors.to_string();
        assert!(text.contains("WEAUTH_STORE"), "{text}");
        assert!(!text.contains("pw@"), "password masked: {text}");
    }
}

#[test]
fn config_seconds_in_milliseconds_taken_when_whole() {
    let config = load(&with(&[
        ("WEAUTH_REFRESH_REUSE_GRACE", "2000ms"),
        ("WEAUTH_ACCESS_TTL", "600000ms"),
    ]))
    .unwrap();
    assert_eq!(config.refresh_reuse_grace, Duration::from_secs(2));
    assert_eq!(config.access_ttl, Duration::from_secs(600));
    let err = load(&with(&[("WEAUTH_REFRESH_REUSE_GRACE", "500ms")])).unwrap_err();
    assert!(err.to_string().contains("whole number of seconds"), "{err}");
}

/// An HS256 secret is never published: a secret the issuer generated could reach no verifier,
/// so HS256 needs the secret from `WEAUTH_SIGNING_KEY_FILE`.
#[test]
fn config_hs256_requires_a_key_file() {
    let Err(errors) = load(&with(&[("WEAUTH_SIGNING_ALG", "HS256")])) else {
        panic!("HS256 without a key file loaded");
    };
    assert_eq!(errors.vars(), ["WEAUTH_SIGNING_KEY_FILE"], "{errors}");
    let config = load(&with(&[
        ("WEAUTH_SIGNING_ALG", "HS256"),
        ("WEAUTH_SIGNING_KEY_FILE", "/run/secrets/hs"),
    ]))
    .unwrap();
    assert_eq!(config.signing_alg, Algorithm::HS256);
}

/// A `{:?}` of the configuration (or of an app entry in it) shows no secret: the app secrets,
/// the feed and admin credentials, the data key (`Zeroizing`'s own `Debug` printed them).
#[test]
fn debug_shows_no_secret() {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let mut vars = BASE.to_vec();
    vars.extend([
        ("WEAUTH_FEED_TOKEN", "feed-credential-xyz"),
        ("WEAUTH_ADMIN_TOKEN", "admin-credential-xyz"),
        ("WEAUTH_DATA_KEY", key.as_str()),
    ]);
    let config = load(&vars).unwrap();
    let shown = format!("{config:?}");
    for secret in [
        "mock-secret",
        "feed-credential-xyz",
        "admin-credential-xyz",
        key.as_str(),
        "7, 7, 7",
    ] {
        assert!(!shown.contains(secret), "{secret} shown");
    }
    assert!(shown.contains("[redacted]"));
    let apps = load(&[("WEAUTH_APPS_FILE", "/etc/weauth/apps.json")]).unwrap();
    let shown = format!("{apps:?}");
    assert!(
        !shown.contains("file-secret") && !shown.contains("oa-secret"),
        "{shown}"
    );
    // The stores' passwords, in every URL form.
    for url in [
        "mysql://weauth:store-pw-xyz@db:3306/weauth",
        "redis://:store-pw-xyz@redis:6379/0",
        "redis+sentinel://weauth:store-pw-xyz@s1:26379,s2:26379/mymaster/0",
        "redis+cluster://weauth:store-pw-xyz@n1:7000,n2:7000/",
    ] {
        let mut vars = BASE.to_vec();
        vars.extend([("WEAUTH_STORE", url), ("WEAUTH_DATA_KEY", key.as_str())]);
        let config = load(&vars).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("store-pw-xyz"), "{url}: {shown}");
        assert!(shown.contains("weauth"), "{shown}");
    }
}

/// The admin credential equal to the feed's (which every sidecar's configuration holds) is
/// refused, naming the admin one.
#[test]
fn admin_token_equal_to_the_feed_token_refused() {
    let err = load(&with(&[
        ("WEAUTH_FEED_TOKEN", "same-secret-1"),
        ("WEAUTH_ADMIN_TOKEN", "same-secret-1"),
    ]))
    .unwrap_err();
    assert_eq!(err.vars(), ["WEAUTH_ADMIN_TOKEN"], "{err}");
    assert!(load(&with(&[
        ("WEAUTH_FEED_TOKEN", "feed-secret-1"),
        ("WEAUTH_ADMIN_TOKEN", "admin-secret-1"),
    ]))
    .is_ok());
}
