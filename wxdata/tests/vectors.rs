//! Checks the crate against vectors made by independent tools (OpenSSL's command line, Python's
//! standard library) and against WeChat's own published decryptData sample. How each file in
//! `tests/vectors/` was made is written in `tests/vectors/README.md`.

// Helpers outside #[test] functions are test code too: a vector file that does not parse must
// fail the test loudly (clippy.toml only covers #[test] bodies).
#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::Value;
use weauth_wxdata::{
    check_raw_data_signature, checksession_signature, decrypt, encrypt, raw_data_signature,
    DecryptError, Field,
};

fn load(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn s<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {case}"))
}

fn aes_cases() -> Vec<Value> {
    let file = load(include_str!("vectors/aes_cbc.json"));
    let cases = file["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 10, "vector file lost cases");
    cases
}

fn decrypt_case(case: &Value) -> Result<Value, DecryptError> {
    decrypt(
        s(case, "session_key"),
        s(case, "encrypted_data"),
        s(case, "iv"),
        s(case, "appid"),
        case["now"].as_i64().unwrap(),
        case["max_age"].as_u64(),
    )
}

#[test]
fn aes_vectors_ok_cases_decrypt_to_plaintext() {
    let mut seen = 0;
    for case in aes_cases().iter().filter(|c| c["expect"] == "ok") {
        let name = s(case, "name");
        let value = decrypt_case(case).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(value, load(s(case, "plaintext")), "{name}");
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[test]
fn aes_vectors_encrypt_matches_openssl_ciphertext() {
    let mut seen = 0;
    for case in aes_cases()
        .iter()
        .filter(|c| c.get("encrypt_payload").is_some())
    {
        let name = s(case, "name");
        let data = encrypt(
            s(case, "session_key"),
            s(case, "iv"),
            &case["encrypt_payload"],
            s(case, "appid"),
            case["watermark_timestamp"].as_i64().unwrap(),
        )
        .unwrap();
        assert_eq!(data, s(case, "encrypted_data"), "{name}");
        seen += 1;
    }
    assert_eq!(seen, 3);
}

#[test]
fn aes_vectors_error_cases_give_expected_code() {
    let mut seen = 0;
    for case in aes_cases().iter().filter(|c| c["expect"] != "ok") {
        let name = s(case, "name");
        let err = match decrypt_case(case) {
            Ok(v) => panic!("{name}: decrypted to {v}"),
            Err(e) => e,
        };
        assert_eq!(err.code(), s(case, "expect"), "{name}: {err}");
        seen += 1;
    }
    assert_eq!(seen, 7);
}

#[test]
fn aes_vectors_plus_became_space_flagged() {
    let cases = aes_cases();
    let case = cases
        .iter()
        .find(|c| c["name"] == "plus_became_space")
        .unwrap();
    assert_eq!(
        decrypt_case(case).unwrap_err(),
        DecryptError::Base64 {
            field: Field::EncryptedData,
            plus_became_space: true
        }
    );
    // And with the '+' restored, it decrypts.
    let mut fixed = case.clone();
    fixed["encrypted_data"] = Value::from(s(case, "encrypted_data").replace(' ', "+"));
    assert_eq!(decrypt_case(&fixed).unwrap(), load(s(case, "plaintext")));
}

#[test]
fn aes_vectors_full_padding_block_adds_sixteen_bytes() {
    use base64::Engine as _;
    let cases = aes_cases();
    let case = cases
        .iter()
        .find(|c| c["name"] == "full_padding_block_ok")
        .unwrap();
    let ciphertext = base64::engine::general_purpose::STANDARD
        .decode(s(case, "encrypted_data"))
        .unwrap();
    assert_eq!(ciphertext.len(), s(case, "plaintext").len() + 16);
}

fn wechat() -> Value {
    load(include_str!("vectors/wechat_published.json"))
}

#[test]
fn wechat_sample_decrypts_to_documented_user() {
    let sample = &wechat()["decrypt"];
    let value = decrypt(
        s(sample, "session_key"),
        s(sample, "encrypted_data"),
        s(sample, "iv"),
        s(sample, "appid"),
        1_477_314_187 + 60,
        Some(300),
    )
    .unwrap();
    assert_eq!(value, load(s(sample, "plaintext")));
    assert_eq!(value["openId"], "oGZUI0egBJY1zhBYw2KhdUfwVJJE");
    assert_eq!(value["watermark"]["appid"], "wx4f4bc4dec97d474b");
}

#[test]
fn wechat_sample_another_app_refused() {
    let sample = &wechat()["decrypt"];
    let err = decrypt(
        s(sample, "session_key"),
        s(sample, "encrypted_data"),
        s(sample, "iv"),
        "wx0123456789abcdef",
        0,
        None,
    )
    .unwrap_err();
    assert_eq!(
        err,
        DecryptError::WrongApp {
            found: "wx4f4bc4dec97d474b".to_owned()
        }
    );
}

#[test]
fn wechat_sample_years_later_with_limit_expired() {
    let sample = &wechat()["decrypt"];
    let err = decrypt(
        s(sample, "session_key"),
        s(sample, "encrypted_data"),
        s(sample, "iv"),
        s(sample, "appid"),
        1_700_000_000,
        Some(3600),
    )
    .unwrap_err();
    assert_eq!(err.code(), "watermark_expired");
}

#[test]
fn wechat_sample_form_encoded_plus_flagged() {
    let sample = &wechat()["decrypt"];
    let err = decrypt(
        s(sample, "session_key"),
        &s(sample, "encrypted_data").replace('+', " "),
        s(sample, "iv"),
        s(sample, "appid"),
        0,
        None,
    )
    .unwrap_err();
    assert_eq!(
        err,
        DecryptError::Base64 {
            field: Field::EncryptedData,
            plus_became_space: true
        }
    );
}

#[test]
fn wechat_sample_other_session_key_mismatch() {
    let sample = &wechat()["decrypt"];
    let err = decrypt(
        "HyVFkGl5F5OQWJZZaNzBBg==",
        s(sample, "encrypted_data"),
        s(sample, "iv"),
        s(sample, "appid"),
        0,
        None,
    )
    .unwrap_err();
    assert_eq!(err, DecryptError::SessionKeyMismatch);
}

#[test]
fn wechat_published_raw_data_signature_verifies() {
    let sample = &wechat()["raw_data_signature"];
    let (raw, key, sig) = (
        s(sample, "raw_data"),
        s(sample, "session_key"),
        s(sample, "signature"),
    );
    assert!(check_raw_data_signature(raw, key, sig));
    assert_eq!(raw_data_signature(raw, key), sig);
    assert!(!check_raw_data_signature(
        &raw.replace("\"gender\":1", "\"gender\":2"),
        key,
        sig
    ));
}

#[test]
fn raw_data_vectors_match_openssl_sha1() {
    let file = load(include_str!("vectors/raw_data_signature.json"));
    let cases = file["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let (raw, key, sig) = (
            s(case, "raw_data"),
            s(case, "session_key"),
            s(case, "signature"),
        );
        assert_eq!(raw_data_signature(raw, key), sig, "{raw:?}");
        assert!(check_raw_data_signature(raw, key, sig), "{raw:?}");
        assert!(
            check_raw_data_signature(raw, key, &sig.to_uppercase()),
            "{raw:?}"
        );
        assert!(
            !check_raw_data_signature(raw, "AAAAAAAAAAAAAAAAAAAAAA==", sig),
            "{raw:?}"
        );
    }
}

#[test]
fn checksession_vectors_match_openssl_hmac() {
    let file = load(include_str!("vectors/checksession.json"));
    let cases = file["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let key = s(case, "session_key");
        assert_eq!(checksession_signature(key), s(case, "signature"), "{key}");
    }
}
