//! The WeChat client: answers of every API parsed, errcodes mapped, retries and backoff.

use super::*;

#[test]
fn classify_success_without_errcode_ok() {
    let body = br#"{"openid":"o1","session_key":"a2V5a2V5a2V5a2V5a2V5aw==","unionid":"u1"}"#;
    let session = classify(200, body).unwrap();
    assert_eq!(session.openid, "o1");
    assert_eq!(session.unionid.as_deref(), Some("u1"));
}

#[test]
fn wechat_errmsg_kept_short_and_on_one_line() {
    let echoed = format!("bad request\n{}", "x".repeat(5000));
    let WechatError::Other { errmsg, .. } = errcode_error(47001, &echoed) else {
        panic!("an Other error");
    };
    assert_eq!(errmsg.chars().count(), 200);
    assert!(!errmsg.contains('\n'), "{errmsg}");
    assert!(errmsg.starts_with("bad request "), "{errmsg}");
}

#[test]
fn classify_errcode_zero_is_success() {
    let body = br#"{"openid":"o1","session_key":"k","errcode":0,"errmsg":"ok"}"#;
    let session = classify(200, body).unwrap();
    assert!(session.unionid.is_none());
}

#[test]
fn classify_errcodes_mapped() {
    let cases = [
        (40029, WechatError::InvalidCode { errcode: 40029 }),
        (40163, WechatError::InvalidCode { errcode: 40163 }),
        (45011, WechatError::RateLimited),
        (40226, WechatError::HighRisk),
        (-1, WechatError::Busy),
    ];
    for (errcode, expected) in cases {
        let body = format!(r#"{{"errcode":{errcode},"errmsg":"x, rid: 1a"}}"#);
        assert_eq!(classify(200, body.as_bytes()).unwrap_err(), expected);
    }
    let body = br#"{"errcode":40125,"errmsg":"invalid appsecret, rid: 2b"}"#;
    assert!(matches!(
        classify(200, body),
        Err(WechatError::Misconfigured { errcode: 40125, .. })
    ));
}

#[test]
fn classify_html_is_unreadable_and_retryable() {
    let err = classify(200, b"<html>502 Bad Gateway</html>").unwrap_err();
    assert!(matches!(err, WechatError::Unreadable(_)));
    assert!(err.is_retryable());
}

#[test]
fn classify_5xx_status_retryable_4xx_not() {
    assert!(classify(503, b"").unwrap_err().is_retryable());
    assert!(!classify(404, b"").unwrap_err().is_retryable());
}

#[test]
fn classify_success_missing_session_key_unreadable() {
    assert!(matches!(
        classify(200, br#"{"openid":"o1"}"#),
        Err(WechatError::Unreadable(_))
    ));
}

#[test]
fn invalid_code_not_retryable() {
    assert!(!WechatError::InvalidCode { errcode: 40029 }.is_retryable());
    assert!(!WechatError::RateLimited.is_retryable());
    assert!(WechatError::Busy.is_retryable());
}

#[test]
fn backoff_grows_and_caps() {
    let base = Duration::from_millis(100);
    let cap = Duration::from_millis(1000);
    assert_eq!(
        backoff(1, base, cap, 0.999_999),
        Duration::from_nanos(99_999_900)
    );
    assert_eq!(backoff(2, base, cap, 0.5), Duration::from_millis(100));
    assert_eq!(backoff(10, base, cap, 0.5), Duration::from_millis(500));
    assert_eq!(backoff(3, base, cap, 0.0), Duration::ZERO);
}

#[test]
fn classify_stable_token_success_ok() {
    let token = classify_stable_token(200, br#"{"access_token":"AT","expires_in":7200}"#).unwrap();
    assert_eq!(token.token.as_str(), "AT");
    assert_eq!(token.expires_in, 7200);
    assert!(!format!("{token:?}").contains("AT\""));
}

#[test]
fn classify_stable_token_missing_expiry_unreadable() {
    assert!(matches!(
        classify_stable_token(200, br#"{"access_token":"AT"}"#),
        Err(WechatError::Unreadable(_))
    ));
}

#[test]
fn classify_json_token_errcodes_invalid_access_token() {
    for errcode in [40001, 42001, 40014] {
        let body = format!(r#"{{"errcode":{errcode},"errmsg":"x, rid: 1"}}"#);
        assert_eq!(
            classify_json(200, body.as_bytes()).unwrap_err(),
            WechatError::InvalidAccessToken {
                errcode,
                after_lost: None
            }
        );
    }
}

#[test]
fn classify_openpid_reads_openpid() {
    let body = br#"{"errcode":0,"errmsg":"ok","openpid":"oP123"}"#;
    assert_eq!(classify_openpid(200, body).unwrap(), "oP123");
    assert!(matches!(
        classify_openpid(200, br#"{"errcode":0,"errmsg":"ok"}"#),
        Err(WechatError::Unreadable(_))
    ));
    assert!(matches!(
        classify_openpid(200, br#"{"errcode":40029,"errmsg":"invalid code"}"#),
        Err(WechatError::InvalidCode { errcode: 40029 })
    ));
}

#[test]
fn classify_risk_rank_reads_the_rank_with_wechats_unoin_id() {
    let body = br#"{"errcode":0,"errmsg":"getuserriskrank succ","risk_rank":3,"unoin_id":123}"#;
    assert_eq!(classify_risk_rank(200, body).unwrap(), 3);
    for body in [
        &br#"{"errcode":0,"errmsg":"getuserriskrank succ"}"#[..],
        br#"{"errcode":0,"errmsg":"ok","risk_rank":9}"#,
        br#"{"errcode":0,"errmsg":"ok","risk_rank":-1}"#,
    ] {
        assert!(
            matches!(
                classify_risk_rank(200, body),
                Err(WechatError::Unreadable(_))
            ),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let missing = br#"{"errcode":61010,"errmsg":"code is expired"}"#;
    assert!(matches!(
        classify_risk_rank(200, missing),
        Err(WechatError::Other { errcode: 61010, .. })
    ));
}

#[test]
fn encrypted_msg_hash_matches_wechats_documented_example() {
    // checkEncryptedData's documentation: this encryptedData hashes to 657edd86….
    let data = "hsSuSUsePBqSQw2rYMtf9Nvha603xX8f2BMQBcYRoJiMNwOqt/UEhrqekebG5ar0LFNAm5MD4Uz6zorRwiXJwbySJ/FEJHav4NsobBIU1PwdjbJWVQLFy7+YFkHB32OnQXWMh6ugW7Dyk2KS5BXp1f5lniKPp1KNLyNLlFlNZ2mgJCJmWvHj5AI7BLpWwoRvqRyZvVXo+9FsWqvBdxmAPA==";
    assert_eq!(
        encrypted_msg_hash(data),
        "657edd868c9715a9bebe42b833269a557a48498785397a796f1568c29a200b2c"
    );
}

#[test]
fn classify_encrypted_check_reads_wechats_vaild_spelling() {
    let body = br#"{"errcode":0,"errmsg":"ok","vaild":true,"create_time":1629121902}"#;
    assert_eq!(
        classify_encrypted_check(200, body).unwrap(),
        EncryptedCheck {
            valid: true,
            create_time: Some(1629121902)
        }
    );
}

#[test]
fn classify_encrypted_check_errcode_1_is_not_genuine_not_an_error() {
    let body = br#"{"errcode":1,"errmsg":"data not exist rid: 1"}"#;
    assert_eq!(
        classify_encrypted_check(200, body).unwrap(),
        EncryptedCheck {
            valid: false,
            create_time: None
        }
    );
    let busy = br#"{"errcode":-1,"errmsg":"system error"}"#;
    assert!(matches!(
        classify_encrypted_check(200, busy),
        Err(WechatError::Busy)
    ));
    let unreadable = br#"{"errcode":0,"errmsg":"ok"}"#;
    assert!(matches!(
        classify_encrypted_check(200, unreadable),
        Err(WechatError::Unreadable(_))
    ));
}

/// The API page's example answer has `countryCode` as a number (its table says string).
#[test]
fn classify_phone_reads_a_numeric_country_code() {
    let body = br#"{"errcode":0,"errmsg":"ok","phone_info":{"phoneNumber":"13800138000","purePhoneNumber":"13800138000","countryCode":86,"watermark":{"timestamp":1,"appid":"wx1"}}}"#;
    assert_eq!(classify_phone(200, body).unwrap().country_code, "86");
}

/// getpluginopenpid's own errcodes, from its API page.
#[test]
fn classify_openpid_maps_the_plugin_errcodes() {
    let answer = |errcode: i64| {
        let body = format!(r#"{{"errcode":{errcode},"errmsg":"x"}}"#);
        classify_openpid(200, body.as_bytes()).unwrap_err()
    };
    for errcode in [1001, 1005, 1007, 40029] {
        assert_eq!(answer(errcode), WechatError::InvalidCode { errcode });
    }
    assert_eq!(answer(1000), WechatError::Busy);
    assert_eq!(answer(1003), WechatError::RateLimited);
    assert!(matches!(
        answer(1022),
        WechatError::Other { errcode: 1022, .. }
    ));
}

#[test]
fn classify_phone_success_reads_phone_info() {
    let body = br#"{"errcode":0,"errmsg":"ok","phone_info":{"phoneNumber":"13800138000","purePhoneNumber":"13800138000","countryCode":"86","watermark":{"timestamp":1,"appid":"wx1"}}}"#;
    let info = classify_phone(200, body).unwrap();
    assert_eq!(info.phone_number, "13800138000");
    assert_eq!(info.country_code, "86");
    assert!(!format!("{info:?}").contains("13800138000"));
}

#[test]
fn classify_phone_used_code_invalid_code() {
    let body = br#"{"errcode":40029,"errmsg":"invalid code, rid: 1"}"#;
    assert_eq!(
        classify_phone(200, body).unwrap_err(),
        WechatError::InvalidCode { errcode: 40029 }
    );
}

#[test]
fn classify_checksession_87009_is_invalid_not_error() {
    assert_eq!(
        classify_checksession(200, br#"{"errcode":0,"errmsg":"ok"}"#),
        Ok(true)
    );
    assert_eq!(
        classify_checksession(200, br#"{"errcode":87009,"errmsg":"invalid signature"}"#),
        Ok(false)
    );
    assert!(classify_checksession(200, br#"{"errcode":40001,"errmsg":"x"}"#).is_err());
    // Only an explicit errcode 0 vouches for the session_key.
    for body in [
        &br#"{}"#[..],
        br#"{"errmsg":"ok"}"#,
        br#"{"errcode":"87009"}"#,
    ] {
        assert!(
            matches!(
                classify_checksession(200, body),
                Err(WechatError::Unreadable(_))
            ),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn debug_hides_session_key_and_openid() {
    let session = classify(200, br#"{"openid":"oSECRETOPENID","session_key":"SK"}"#).unwrap();
    let text = format!("{session:?}");
    assert!(!text.contains("oSECRETOPENID"));
    assert!(!text.contains("SK\""));
}

/// Runs `with_retry` over `answers`, one per attempt (two retries).
fn retried(answers: Vec<Result<u8, WechatError>>) -> Result<u8, WechatError> {
    let answers = std::sync::Mutex::new(answers.into_iter());
    let metrics = Metrics::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(with_retry(&metrics, "wx1", 2, "jscode2session", || {
        let next = answers.lock().unwrap().next().unwrap();
        async move { next }
    }))
}

/// A refusal of the code after an attempt that could not connect is the code's own (400
/// `invalid_grant`): nothing was sent. After a lost answer it is that answer's echo.
#[test]
fn with_retry_code_refused_after_a_failed_connect_is_the_codes_own() {
    let refused = WechatError::InvalidCode { errcode: 40163 };
    let unreachable = WechatError::Unreachable("connection refused".into());
    assert_eq!(
        retried(vec![Err(unreachable.clone()), Err(refused.clone())]),
        Err(refused.clone())
    );
    assert_eq!(
        retried(vec![Err(WechatError::Timeout), Err(refused.clone())]),
        Err(WechatError::Timeout)
    );
    // A lost answer stays the echo's cause through a later failed connect.
    assert_eq!(
        retried(vec![
            Err(WechatError::Timeout),
            Err(unreachable),
            Err(refused)
        ]),
        Err(WechatError::Timeout)
    );
}

/// A connection refused (nothing listening) is `Unreachable`, counted as `transport`.
#[test]
fn transport_error_connect_refused_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = runtime
        .block_on(
            reqwest::Client::new()
                .get(format!("http://127.0.0.1:{port}/"))
                .send(),
        )
        .unwrap_err();
    let err = transport_error(err);
    assert!(matches!(err, WechatError::Unreachable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.metric_label(), "transport");
}

/// A token WeChat says is valid for 0 seconds (or less) would be cached as already expired
/// and asked for again at every call: refused as unreadable, while 1 s is a token.
#[test]
fn classify_stable_token_expiry_must_be_positive() {
    for expires_in in [0, -5] {
        let body = format!(r#"{{"access_token":"AT","expires_in":{expires_in}}}"#);
        assert!(
            matches!(
                classify_stable_token(200, body.as_bytes()),
                Err(WechatError::Unreadable(_))
            ),
            "expires_in {expires_in}"
        );
    }
    let token = classify_stable_token(200, br#"{"access_token":"AT","expires_in":1}"#).unwrap();
    assert_eq!(token.expires_in, 1);
    // A lifetime past a day (i64::MAX overflowed the expiry) is taken as a day.
    let body = format!(r#"{{"access_token":"AT","expires_in":{}}}"#, i64::MAX);
    let token = classify_stable_token(200, body.as_bytes()).unwrap();
    assert_eq!(token.expires_in, answers::MAX_TOKEN_LIFETIME_S);
    assert!(
        crate::wechat::access_token::refresh_at(1_700_000_000, token.expires_in) > 1_700_000_000
    );
}

/// What the logs may show of an app access token and a phone number: the lifetime and the
/// country code, never the token or the number.
#[test]
fn debug_shows_expiry_and_country_code_only() {
    let token =
        classify_stable_token(200, br#"{"access_token":"ATSECRET","expires_in":7200}"#).unwrap();
    let text = format!("{token:?}");
    assert!(text.contains("expires_in: 7200"), "{text}");
    assert!(!text.contains("ATSECRET"), "{text}");
    let body = br#"{"errcode":0,"errmsg":"ok","phone_info":{"phoneNumber":"+15550001111","purePhoneNumber":"5550001111","countryCode":"1"}}"#;
    let info = classify_phone(200, body).unwrap();
    let text = format!("{info:?}");
    assert!(text.contains(r#"country_code: "1""#), "{text}");
    assert!(!text.contains("5550001111"), "{text}");
}
