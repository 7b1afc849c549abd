use super::*;

// WeChat's worked example (服务端 API 签名加密指南 §3.1.2, §3.2.2, §4.1.2, §4.2.1): the
// getuserriskrank call of wxba6223c06417af7b at 1635927954, its answer at 1635927956.
// Every value below is copied from the guide, and was recomputed independently of this
// code with Python's `cryptography` 48 (AESGCM.encrypt/decrypt with the iv and AAD below;
// RSA PSS(MGF1(SHA256), salt_length=32) verification of both signatures with the guide's
// key and certificate; hashlib.sha256 of the answer's signed string = the guide's H0).
const SYM_KEY: &str = "otUpngOjU+nVQaWJIC3D/yMLV17RKaP6t4Ot9tbnzLY=";
const SYM_SN: &str = "fa05fe1e5bcc79b81ad5ad4b58acf787";
const APPID: &str = "wxba6223c06417af7b";
const URLPATH: &str = "https://api.weixin.qq.com/wxa/getuserriskrank";
const REQ_TS: i64 = 1635927954;
const REQ_IV: &str = "fmW/zNxXlytUZBgj";
const REQ_NONCE: &str = "o89QaPVsRu1yppIZzvSZc4";
// The original body in the guide's member order (the plaintext is its compact form with
// the security fields first).
const REQ_PARAMS: &str = r#"{"appid":"wxba6223c06417af7b","openid":"oEWzBfmdLqhFS2mTXCo2E4Y9gJAM","scene":0,"client_ip":"127.0.0.1"}"#;
const REQ_PLAINTEXT: &str = r#"{"_n":"o89QaPVsRu1yppIZzvSZc4","_appid":"wxba6223c06417af7b","_timestamp":1635927954,"appid":"wxba6223c06417af7b","openid":"oEWzBfmdLqhFS2mTXCo2E4Y9gJAM","scene":0,"client_ip":"127.0.0.1"}"#;
const REQ_BODY: &str = r#"{"iv":"fmW/zNxXlytUZBgj","data":"0IDVdrPtSPF/Oe2CTXCV2vVNPbVJdJlP2WaTMQnoYLh5iCrrSNfQFh25EnStDMf0hLlVNBCZQtf9NaV0m4aRA4AAYIO7oR/Ge+4yY4EmZp5EVPB42xjScgMx5X3D4VdLCfynXIUKUtZHZvk1zmLVE3RauzJgiM1BB1CPmwcENo3MTJ0z8Vfkf5tMv54kOXobDLlV5rfqKdAX7gM/rP82DgZdt9vvZX44ipdbHIjJvw83ZXAFtvftdVw2Qd8=","authtag":"5qeM/2vZv+6KtScN94IpMg=="}"#;
// The guide's own signature of the request (PSS is randomized: ours differs, both verify).
const REQ_SIGNATURE: &str = "wcSSWHZunjz9VKl9q+If9deiyECXDAELfAJNZ4+5T+NhFr8zfhkwdQtlgQ7nN5xs99R57La9UjBTRBGge2KYyshWtw7HIMPAqWNsnpHvx0b2f7s6Bt7OpfOQLlIfNgepgTVmUwrqW8/7A12szj7tCe/bRFilwnaX6N0w4duHlfL7ic7IIZXouvy9dLRAa5GtEk1eD/LPWRiKh0SvJ3znPY/pSiQW9zSkXVdj9UGGM8qcKLzPGJ7gSmt3ZOPkFapk9wqFmhJwQj//xN5+hUlr2UiNPMNSHve5Y2ADLsNHqk5t7RfAZ8nW9/8lzhVt4t+toy1FeehxCGIC8qgmjIl1hg==";
const APP_SN: &str = "97845f6ed842ea860df6fdf65941ff56";
const APP_KEY: &str = include_str!("../../tests/fixtures/apisec/guide_app_key.pem");
const PLATFORM_SN: &str = "79ba700ea147819f640941bceb38b1d1";
const PLATFORM_CERT: &str = include_str!("../../tests/fixtures/apisec/guide_platform_cert.pem");
const ANS_TS: &str = "1635927956";
const ANS_BODY: &str = r#"{"iv":"r2WDQt56rEAmMuoR","data":"HExs66Ik3el+iM4IpeQ7SMEN934FRLFYOd3EmeaIrpP4EPTHckoco6O+PaoRZRa3lqaPRZT7r52f7LUok6gLxc6cdR8C4vpIIfh4xfLC4L7FNy9GbuMK1hcoi8b7gkWJcwZMkuCFNEDmqn3T49oWzAQOrY4LZnnnykv6oUJotdAsnKvmoJkLK7hRh7M2B1d2UnTnRuoIyarXc5Iojwoghx4BOvnV","authtag":"z2BFD8QctKXTuBlhICGOjQ=="}"#;
const ANS_SIGNATURE: &str = "Ht0VfQkkEweJ4hU266C14Aj64H9AXfkwNi5zxUZETCvR2svU1ZYdosDhFX/voLj1TyszqKsVxAlENGt7PPZZ8RQX7jnA4SKhiPUhW4LTbyTenisHJ+ohSfDjYnXavjQsBHspFS+BlPHuSSJ2xyQzw1+HuC6nid09ZL4FnGSYo4OI5MJrSb9xLzIVZMIDuUQchGKi/KaB1KzxECLEZcfjqbAgmxC7qOmuBLyO1WkHYDM95NJrHJWba5xv4wrwPru9yYTJSNRnlM+zrW5w9pOubC4Jtj3szTAEuOz9AcqUmgaAvMLNAIa8hfODLRe3n/cu4SgYlN/ZkNRU4QXVNbPGMg==";

fn guide_keys() -> ApiSecurityKeys {
    ApiSecurityKeys::from_pem(
        SYM_KEY,
        SYM_SN.into(),
        APP_KEY,
        APP_SN.into(),
        PLATFORM_CERT,
        PLATFORM_SN.into(),
    )
    .unwrap()
}

fn guide_nonces() -> RequestNonces {
    let iv: [u8; 12] = STANDARD.decode(REQ_IV).unwrap().try_into().unwrap();
    RequestNonces {
        iv,
        nonce: REQ_NONCE.into(),
    }
}

fn guide_answer_headers() -> AnswerHeaders {
    AnswerHeaders {
        appid: Some(APPID.into()),
        timestamp: Some(ANS_TS.into()),
        serial: Some(PLATFORM_SN.into()),
        signature: Some(ANS_SIGNATURE.into()),
        serial_deprecated: Some("2171af9cdf1d7404423852e7e183d852".into()),
        signature_deprecated: Some("ZP1OODikAOePc+YJUMLxunF6xV05kextO/T1fy5lWv/CwV6OCsPBRM2xRRCi+B4lYXbbfYDdjzCz5BIAWEwIdjMlg/IHcJVHhRNAlKt5A3zvzfaJa5IJQel7xuUEXk/B6KVyEb41PbzrptjUGqWyTFMrjxQ4ThJfCuYocnUng7OuDU95enMqK2hZpO8o7kFW638BAwKDSiFNEwEJDWYkLz0kEw7ma3keezm4YHYKfJmjChK39tmZld7Rw/yrV1U9RiL/DO5ayP9VmrQkT/vYrPKyqI4/xKrIaTq44jFYTPIJKdU2OnLt6kjqwp2hvCzMuJdjRcrvzhWJ2A8xZ5hI2w==".into()),
    }
}

fn verifies(key: &RsaPublicKey, message: &str, signature_b64: &str) -> bool {
    let verifier = rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(key.clone(), 32);
    let bytes = STANDARD.decode(signature_b64).unwrap();
    let signature = rsa::pss::Signature::try_from(bytes.as_slice()).unwrap();
    verifier.verify(message.as_bytes(), &signature).is_ok()
}

/// Signed with the maximum PSS salt or the digest's 32 bytes: verified; another length,
/// or another message, not.
#[test]
fn platform_signatures_with_the_digest_or_the_maximum_salt_verify() {
    let private = parse_private_key(APP_KEY).unwrap();
    let platform = PlatformKey::new(RsaPublicKey::from(&private));
    let key_bytes = rsa::traits::PublicKeyParts::size(&private);
    let sign = |salt: usize, message: &str| {
        rsa::pss::BlindedSigningKey::<Sha256>::new_with_salt_len(private.clone(), salt)
            .sign_with_rng(&mut rand::thread_rng(), message.as_bytes())
    };
    let message = "/wxa/x\nwx1\n1700000000\n{}";
    for salt in [32, key_bytes - 32 - 2] {
        assert!(
            platform.verify(message.as_bytes(), &sign(salt, message)),
            "salt {salt}"
        );
    }
    assert!(!platform.verify(message.as_bytes(), &sign(20, message)));
    assert!(!platform.verify(b"another", &sign(32, message)));
}

#[test]
fn request_matches_the_guides_worked_example() {
    let keys = guide_keys();
    assert_eq!(
        request_plaintext(REQ_PARAMS, REQ_NONCE, APPID, REQ_TS).unwrap(),
        REQ_PLAINTEXT
    );
    assert_eq!(
        aad(URLPATH, APPID, "1635927954", SYM_SN),
        "https://api.weixin.qq.com/wxa/getuserriskrank|wxba6223c06417af7b|1635927954|fa05fe1e5bcc79b81ad5ad4b58acf787"
    );
    let request =
        secure_request(&keys, APPID, URLPATH, REQ_PARAMS, REQ_TS, &guide_nonces()).unwrap();
    // Ciphertext and tag exactly as the guide (and Python's AESGCM) computed them.
    assert_eq!(request.body, REQ_BODY);
    assert_eq!(request.body.len(), 324, "the guide: postdata is 324 bytes");
    // The exact signed string, no trailing newline.
    assert_eq!(
        request.signed,
        format!("https://api.weixin.qq.com/wxa/getuserriskrank\nwxba6223c06417af7b\n1635927954\n{REQ_BODY}")
    );
    let headers: std::collections::HashMap<_, _> = request.headers.iter().cloned().collect();
    assert_eq!(headers[H_APPID], APPID);
    assert_eq!(headers[H_TIMESTAMP], "1635927954");
    assert_eq!(headers[H_SERIAL], APP_SN);
    // PSS is randomized: our signature differs from the guide's, and both verify with the
    // public half of the guide's key (salt 32).
    let public = parse_private_key(APP_KEY).unwrap().to_public_key();
    assert!(verifies(&public, &request.signed, &headers[H_SIGNATURE]));
    assert!(verifies(&public, &request.signed, REQ_SIGNATURE));
    assert_ne!(headers[H_SIGNATURE], REQ_SIGNATURE);
    assert!(!verifies(
        &public,
        &format!("{} ", request.signed),
        &headers[H_SIGNATURE]
    ));
}

#[test]
fn answer_of_the_guides_worked_example_verifies_and_decrypts() {
    let keys = guide_keys();
    let now = 1635927956 + 10;
    let answer = open_answer(
        &keys,
        APPID,
        URLPATH,
        &guide_answer_headers(),
        ANS_BODY.as_bytes(),
        now,
    )
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"errcode": 0, "errmsg": "getuserriskrank succ", "risk_rank": 0,
                           "unoin_id": 2258658297u64})
    );
}

#[test]
fn answer_refusals() {
    let keys = guide_keys();
    let now = 1635927956;
    let body = ANS_BODY.as_bytes();
    let check = |headers: AnswerHeaders, body: &[u8], now: i64| {
        open_answer(&keys, APPID, URLPATH, &headers, body, now).unwrap_err()
    };
    // Stale, either way.
    assert_eq!(
        check(guide_answer_headers(), body, now + 301),
        ApiSecError::Stale { skew: 301 }
    );
    assert!(matches!(
        check(guide_answer_headers(), body, now - 400),
        ApiSecError::Stale { .. }
    ));
    // A serial we do not hold (neither current nor deprecated).
    let mut headers = guide_answer_headers();
    headers.serial = Some("0000".into());
    headers.serial_deprecated = None;
    assert!(matches!(
        check(headers, body, now),
        ApiSecError::WrongSerial { .. }
    ));
    // During rotation our certificate's number may be the deprecated one.
    let mut headers = guide_answer_headers();
    headers.serial = Some("new-cert".into());
    headers.signature = Some("bm90IG91cnM=".into());
    headers.serial_deprecated = Some(PLATFORM_SN.into());
    headers.signature_deprecated = Some(ANS_SIGNATURE.into());
    assert!(open_answer(&keys, APPID, URLPATH, &headers, body, now).is_ok());
    // A signature that does not verify: another one, a tampered body, another URL.
    let mut headers = guide_answer_headers();
    headers.signature = Some(REQ_SIGNATURE.into());
    assert_eq!(check(headers, body, now), ApiSecError::BadSignature);
    let tampered = ANS_BODY.replace("r2WDQt56rEAmMuoR", "r2WDQt56rEAmMuoS");
    assert_eq!(
        check(guide_answer_headers(), tampered.as_bytes(), now),
        ApiSecError::BadSignature
    );
    assert_eq!(
        open_answer(
            &keys,
            APPID,
            "https://api.weixin.qq.com/wxa/getpluginopenpid",
            &guide_answer_headers(),
            body,
            now
        )
        .unwrap_err(),
        ApiSecError::BadSignature
    );
    // Another appid in the header.
    let mut headers = guide_answer_headers();
    headers.appid = Some("wxother".into());
    assert!(matches!(
        check(headers, body, now),
        ApiSecError::OtherAppid(_)
    ));
    // Unsigned: WeChat's clear refusal is its errcode, anything else is refused.
    let unsigned_error = br#"{"errcode":40234,"errmsg":"invalid signature rid: 1"}"#;
    assert!(matches!(
        check(AnswerHeaders::default(), unsigned_error, now),
        ApiSecError::Refused { errcode: 40234, .. }
    ));
    for body in [
        &br#"{"errcode":0,"errmsg":"ok","risk_rank":0}"#[..],
        br#"{"risk_rank":0}"#,
        b"<html>",
    ] {
        assert_eq!(
            check(AnswerHeaders::default(), body, now),
            ApiSecError::Unsigned
        );
    }
}

#[test]
fn a_validly_signed_answer_that_does_not_decrypt_is_refused() {
    // Signed with a key we hold the private half of (the guide's app key standing in for a
    // platform key), so the signature verifies and the next checks are reached.
    let app_private = parse_private_key(APP_KEY).unwrap();
    let keys = ApiSecurityKeys::from_pem(
        SYM_KEY,
        SYM_SN.into(),
        APP_KEY,
        APP_SN.into(),
        &rsa::pkcs8::EncodePublicKey::to_public_key_pem(
            &app_private.to_public_key(),
            rsa::pkcs8::LineEnding::LF,
        )
        .unwrap(),
        "p1".into(),
    )
    .unwrap();
    let sign = |body: &str, ts: &str| {
        let signer =
            rsa::pss::BlindedSigningKey::<Sha256>::new_with_salt_len(app_private.clone(), 32);
        let signature = signer.sign_with_rng(
            &mut rand::thread_rng(),
            signing_string(URLPATH, APPID, ts, body).as_bytes(),
        );
        AnswerHeaders {
            appid: Some(APPID.into()),
            timestamp: Some(ts.into()),
            serial: Some("p1".into()),
            signature: Some(STANDARD.encode(signature.to_bytes())),
            ..AnswerHeaders::default()
        }
    };
    let now = 1_700_000_000i64;
    let ts = now.to_string();
    let open = |body: &str| {
        open_answer(
            &keys,
            APPID,
            URLPATH,
            &sign(body, &ts),
            body.as_bytes(),
            now,
        )
    };
    // The guide's answer body, signed by us at another time: its AAD carries the guide's
    // timestamp, so decryption fails.
    assert_eq!(open(ANS_BODY).unwrap_err(), ApiSecError::Decrypt);
    // Not an envelope.
    assert_eq!(
        open(r#"{"errcode":0,"risk_rank":0}"#).unwrap_err(),
        ApiSecError::Envelope
    );
    // An envelope of `plain` that decrypts at this timestamp.
    let key = parse_sym_key(SYM_KEY).unwrap();
    let sealed = |plain: &str| {
        seal(
            &key,
            &[7; 12],
            &aad(URLPATH, APPID, &ts, SYM_SN),
            plain.as_bytes(),
        )
        .to_json()
    };
    // Decrypts, but the plaintext's _timestamp is not the header's.
    let plain = format!(r#"{{"_n":"x","_appid":"{APPID}","_timestamp":1,"errcode":0}}"#);
    assert_eq!(
        open(&sealed(&plain)).unwrap_err(),
        ApiSecError::Mismatch("_timestamp")
    );
    // And the same with everything right is accepted, security fields removed.
    let plain = format!(r#"{{"_n":"x","_appid":"{APPID}","_timestamp":{now},"errcode":0}}"#);
    assert_eq!(open(&sealed(&plain)).unwrap(), r#"{"errcode":0}"#);
}

#[test]
fn request_plaintext_of_an_empty_object_and_refusals() {
    assert_eq!(
        request_plaintext("{}", "n", "wx1", 5).unwrap(),
        r#"{"_n":"n","_appid":"wx1","_timestamp":5}"#
    );
    assert_eq!(
        request_plaintext("[1]", "n", "wx1", 5),
        Err(ApiSecError::Params)
    );
    let random = RequestNonces::random();
    assert!((22..=32).contains(&random.nonce.len()), "{}", random.nonce);
}

#[test]
fn key_parsing_refusals() {
    assert_eq!(parse_sym_key("c2hvcnQ=").unwrap_err(), KeyError::SymKey);
    assert_eq!(parse_sym_key("not base64!").unwrap_err(), KeyError::SymKey);
    assert!(parse_sym_key(&format!("{SYM_KEY}\n")).is_ok());
    assert_eq!(
        parse_private_key("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----")
            .unwrap_err(),
        KeyError::PrivateKey
    );
    assert_eq!(
        parse_platform_key(APP_KEY).unwrap_err(),
        KeyError::PlatformCert
    );
    assert!(parse_platform_key(PLATFORM_CERT).is_ok());
    let debug = format!("{:?}", guide_keys());
    assert!(
        debug.contains(SYM_SN) && !debug.contains("otUpng"),
        "{debug}"
    );
}
