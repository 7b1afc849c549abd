//! What the `weauth-wxdata` fuzz targets do with one input, shared by the libFuzzer targets in
//! `fuzz/fuzz_targets/` and by the replay test `wxdata/tests/fuzz_regressions.rs` (which
//! includes this file with `#[path]`), so a crash file replays through exactly the same code.
//!
//! Inputs are split into the functions' string arguments at `0xFF` bytes (a byte that never
//! occurs in UTF-8, so it cannot be confused with text). Missing arguments take the fixture's
//! valid value, which lets the fuzzer work on one argument at a time. Every function calls the
//! public function production uses (`weauth_wxdata::decrypt`, `check_raw_data_signature`) and
//! checks an oracle with `assert!`.

// This is test code (a fuzz harness): a broken property must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use aes::Aes128;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use serde_json::Value;
use weauth_wxdata::{
    check_raw_data_signature, checksession_signature, decrypt, raw_data_signature, DecryptError,
};

/// This app's appid in every target.
pub const APPID: &str = "wx0123456789abcdef";
/// The session_key (bytes 0x00..=0x0f) of the plaintext mode.
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODw==";
/// The iv (bytes 0x10..=0x1f) of the plaintext mode.
pub const IV: &str = "EBESExQVFhcYGRobHB0eHw==";
/// The decrypting side's clock.
pub const NOW: i64 = 1_700_000_000;

/// Splits `data` at `0xFF` bytes into (lossy UTF-8) strings.
pub fn split_fields(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0xff)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// AES-128-CBC + PKCS#7 of arbitrary bytes under [`KEY`] and [`IV`], base64: what WeChat sends
/// as `encryptedData`, for plaintexts the crate's own `encrypt` cannot make (not JSON, not
/// UTF-8).
pub fn encrypt_raw(plaintext: &[u8]) -> String {
    let key = STANDARD.decode(KEY).expect("fixture key is base64");
    let iv = STANDARD.decode(IV).expect("fixture iv is base64");
    let enc = cbc::Encryptor::<Aes128>::new_from_slices(&key, &iv).expect("16-byte key and iv");
    STANDARD.encode(enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext))
}

/// Calls what production reports about a refusal.
fn touch_error(err: &DecryptError) {
    let _ = err.code();
    let _ = err.relogin_required();
    let _ = err.to_string();
}

/// Checks what every accepted result must satisfy: a JSON object whose watermark names
/// `appid`, and, with `max_age`, a timestamp at most that old.
fn check_accepted(value: &Value, appid: &str, max_age: Option<u64>) {
    let watermark = value["watermark"].as_object().expect("accepted: watermark");
    assert_eq!(watermark["appid"].as_str(), Some(appid), "accepted: appid");
    if let Some(max_age) = max_age {
        let ts = watermark["timestamp"]
            .as_i64()
            .expect("accepted: timestamp");
        let age = NOW.saturating_sub(ts);
        assert!(
            age <= i64::try_from(max_age).unwrap_or(i64::MAX),
            "accepted a stale watermark"
        );
    }
}

/// Target `wxdata_decrypt`. Byte 0 is a mode: bit 0 picks the mode, bit 1 turns the watermark
/// age check on, bits 2..8 are the maximum age in minutes.
///
/// - Fields mode (bit 0 clear): the rest is `encryptedData 0xFF iv 0xFF session_key 0xFF
///   appid`, each defaulting to the fixture's when absent, passed to `decrypt` as they are.
///   Oracle: an accepted result satisfies the watermark checks.
/// - Plaintext mode (bit 0 set): the rest is a plaintext, encrypted under the fixture's key and
///   iv and decrypted back. Oracles: with the right key only a non-UTF-8 plaintext is a
///   `SessionKeyMismatch`; an accepted result is exactly the plaintext's JSON; a JSON object
///   with this app's watermark is accepted when no age check applies.
///
/// Returns whether `decrypt` accepted the input.
pub fn wxdata_decrypt(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let max_age = (mode & 2 != 0).then(|| u64::from(mode >> 2) * 60);
    if mode & 1 == 0 {
        let fields = split_fields(rest);
        let field = |i: usize, default: &str| -> String {
            fields.get(i).cloned().unwrap_or_else(|| default.to_owned())
        };
        let encrypted = field(0, "");
        let iv = field(1, IV);
        let key = field(2, KEY);
        let appid = field(3, APPID);
        match decrypt(&key, &encrypted, &iv, &appid, NOW, max_age) {
            Ok(value) => {
                check_accepted(&value, &appid, max_age);
                true
            }
            Err(err) => {
                touch_error(&err);
                false
            }
        }
    } else {
        let encrypted = encrypt_raw(rest);
        let result = decrypt(KEY, &encrypted, IV, APPID, NOW, max_age);
        let text = std::str::from_utf8(rest).ok();
        assert_eq!(
            matches!(result, Err(DecryptError::SessionKeyMismatch)),
            text.is_none(),
            "with the right key, SessionKeyMismatch means exactly: not UTF-8"
        );
        let parsed: Option<Value> = text.and_then(|t| serde_json::from_str(t).ok());
        if max_age.is_none() {
            let has_watermark = parsed
                .as_ref()
                .and_then(|v| v.get("watermark"))
                .and_then(|w| w.get("appid"))
                .and_then(Value::as_str)
                == Some(APPID);
            assert_eq!(
                result.is_ok(),
                has_watermark,
                "acceptance must follow the watermark"
            );
        }
        match result {
            Ok(value) => {
                assert_eq!(
                    Some(&value),
                    parsed.as_ref(),
                    "accepted value is the plaintext"
                );
                check_accepted(&value, APPID, max_age);
                true
            }
            Err(err) => {
                touch_error(&err);
                false
            }
        }
    }
}

/// Target `wxdata_signature`: the input is `raw_data 0xFF session_key 0xFF signature_hex`.
///
/// Oracles: `check_raw_data_signature` accepts exactly the 40-hex-digit spellings (either
/// case) of `raw_data_signature`, and always accepts that signature itself; the checksession
/// signature is 64 lowercase hex digits. Returns whether the given signature was accepted.
pub fn wxdata_signature(data: &[u8]) -> bool {
    let fields = split_fields(data);
    let raw = fields.first().map(String::as_str).unwrap_or("");
    let key = fields.get(1).map(String::as_str).unwrap_or(KEY);
    let expected = raw_data_signature(raw, key);
    assert_eq!(expected.len(), 40);
    assert!(check_raw_data_signature(raw, key, &expected));
    assert!(check_raw_data_signature(
        raw,
        key,
        &expected.to_ascii_uppercase()
    ));
    let session = checksession_signature(key);
    assert!(session.len() == 64 && session.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(session, session.to_ascii_lowercase());
    let Some(given) = fields.get(2) else {
        return true;
    };
    let accepted = check_raw_data_signature(raw, key, given);
    assert_eq!(
        accepted,
        given.len() == 40 && given.to_ascii_lowercase() == expected,
        "signature check disagrees with the signature"
    );
    accepted
}
