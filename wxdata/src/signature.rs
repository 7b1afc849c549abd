//! The two signatures WeChat builds from a session's `session_key`:
//!
//! - the `rawData` signature a mini-program receives with user info:
//!   `signature = hex(sha1(rawData + session_key))`, where `session_key` is the base64 TEXT as
//!   WeChat returned it, appended to the raw JSON text;
//! - the `signature` parameter of WeChat's server API `/wxa/checksession`, which tells whether a
//!   session_key is still the user's current one:
//!   `signature = hex(HMAC-SHA256(key = session_key TEXT bytes, message = ""))`.
//!
//! Checks compare in constant time and accept hex in either case.

use hmac::digest::Key;
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Length in bytes of a SHA-1 digest (a `rawData` signature is 40 hex digits).
const SHA1_LEN: usize = 20;

/// `hex(sha1(raw_data + session_key))` in lowercase, as WeChat signs `rawData`.
/// `session_key` is the base64 text, not its decoded bytes.
pub fn raw_data_signature(raw_data: &str, session_key: &str) -> String {
    hex::encode(raw_data_digest(raw_data, session_key))
}

/// Whether `signature_hex` is WeChat's signature of `raw_data` under `session_key`
/// (see [`raw_data_signature`]). Hex of either case is accepted; anything that is not 40 hex
/// digits is `false`. The comparison is constant-time.
pub fn check_raw_data_signature(raw_data: &str, session_key: &str, signature_hex: &str) -> bool {
    let mut given = [0u8; SHA1_LEN];
    if hex::decode_to_slice(signature_hex, &mut given).is_err() {
        return false;
    }
    raw_data_digest(raw_data, session_key)
        .as_slice()
        .ct_eq(&given)
        .into()
}

/// Whether `raw_data` (a JSON object, as WeChat sends it with `getUserProfile` /
/// `getUserInfo`) says what `decrypted` (the same call's `encryptedData`, decrypted) says: every
/// member of `raw_data` is in `decrypted` with an equal value, but for [`RAW_DATA_ONLY`]. The
/// signature covers `rawData` only and the decryption has no integrity (the client chooses the
/// iv, which rewrites the first block), so a good signature vouches for the decrypted data only
/// when they agree; a `rawData` that is not a JSON object agrees with nothing. Every member
/// counts, not only the shared ones: a first block rewritten to rename its member (`nickName`
/// into `unionId`) would otherwise drop the member from the comparison and pass.
pub fn raw_data_agrees(raw_data: &str, decrypted: &serde_json::Value) -> bool {
    match serde_json::from_str::<serde_json::Value>(raw_data) {
        Ok(serde_json::Value::Object(members)) => members.iter().all(|(name, value)| {
            decrypted.get(name) == Some(value)
                || (RAW_DATA_ONLY.contains(&name.as_str()) && decrypted.get(name).is_none())
        }),
        _ => false,
    }
}

/// Members of `userInfo` (which `rawData` serializes) that the decrypted data may lack: WeChat
/// documents `language` in `userInfo` and not in the decrypted data. Absent there, they are
/// not compared; present, they must be equal.
pub const RAW_DATA_ONLY: &[&str] = &["language"];

fn raw_data_digest(raw_data: &str, session_key: &str) -> [u8; SHA1_LEN] {
    Sha1::new()
        .chain_update(raw_data.as_bytes())
        .chain_update(session_key.as_bytes())
        .finalize()
        .into()
}

/// The `signature` for WeChat's `/wxa/checksession`: lowercase
/// `hex(HMAC-SHA256(key = session_key text bytes, message = ""))`.
pub fn checksession_signature(session_key: &str) -> String {
    let mut mac = Hmac::<Sha256>::new(&hmac_key(session_key.as_bytes()));
    mac.update(b"");
    hex::encode(mac.finalize().into_bytes())
}

/// The HMAC block-sized key of RFC 2104 §2: a key longer than the block is first hashed, and
/// the result is zero-padded to the block. Doing this here (rather than `new_from_slice`) keeps
/// [`checksession_signature`] infallible without an unreachable error branch.
fn hmac_key(secret: &[u8]) -> Key<Hmac<Sha256>> {
    let mut key = Key::<Hmac<Sha256>>::default();
    if secret.len() <= key.len() {
        key[..secret.len()].copy_from_slice(secret);
    } else {
        let digest = Sha256::digest(secret);
        key[..digest.len()].copy_from_slice(&digest);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION_KEY: &str = "HyVFkGl5F5OQWJZZaNzBBg==";
    const RAW: &str = r#"{"nickName":"Band","gender":1}"#;

    #[test]
    fn check_raw_data_signature_own_signature_accepted() {
        let sig = raw_data_signature(RAW, SESSION_KEY);
        assert_eq!(sig.len(), 40);
        assert!(check_raw_data_signature(RAW, SESSION_KEY, &sig));
    }

    #[test]
    fn check_raw_data_signature_uppercase_hex_accepted() {
        let sig = raw_data_signature(RAW, SESSION_KEY).to_uppercase();
        assert!(check_raw_data_signature(RAW, SESSION_KEY, &sig));
    }

    #[test]
    fn check_raw_data_signature_other_key_refused() {
        let sig = raw_data_signature(RAW, SESSION_KEY);
        assert!(!check_raw_data_signature(
            RAW,
            "tiihtNczf5v6AKRyjwEUhQ==",
            &sig
        ));
    }

    #[test]
    fn check_raw_data_signature_tampered_data_refused() {
        let sig = raw_data_signature(RAW, SESSION_KEY);
        let tampered = RAW.replace("Band", "Bond");
        assert!(!check_raw_data_signature(&tampered, SESSION_KEY, &sig));
    }

    #[test]
    fn check_raw_data_signature_one_digit_changed_refused() {
        let mut sig = raw_data_signature(RAW, SESSION_KEY).into_bytes();
        sig[39] = if sig[39] == b'0' { b'1' } else { b'0' };
        let sig = String::from_utf8(sig).unwrap();
        assert!(!check_raw_data_signature(RAW, SESSION_KEY, &sig));
    }

    #[test]
    fn check_raw_data_signature_malformed_hex_refused() {
        let sig = raw_data_signature(RAW, SESSION_KEY);
        assert!(!check_raw_data_signature(RAW, SESSION_KEY, ""));
        assert!(!check_raw_data_signature(RAW, SESSION_KEY, &sig[..38]));
        assert!(!check_raw_data_signature(
            RAW,
            SESSION_KEY,
            &format!("{sig}00")
        ));
        assert!(!check_raw_data_signature(
            RAW,
            SESSION_KEY,
            &format!("{}zz", &sig[..38])
        ));
        assert!(!check_raw_data_signature(
            RAW,
            SESSION_KEY,
            &format!(" {}", &sig[1..])
        ));
    }

    #[test]
    fn raw_data_signature_key_is_appended_text_not_bytes() {
        // The digest covers rawData followed by the key text: moving the boundary between the
        // two does not change it, which shows plain concatenation.
        let joined = raw_data_signature(&format!("{RAW}HyVF"), "kGl5F5OQWJZZaNzBBg==");
        assert_eq!(joined, raw_data_signature(RAW, SESSION_KEY));
    }

    #[test]
    fn checksession_signature_is_lowercase_sha256_hex() {
        let sig = checksession_signature(SESSION_KEY);
        assert_eq!(sig.len(), 64);
        assert!(sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    #[test]
    fn checksession_signature_differs_per_key() {
        assert_ne!(
            checksession_signature(SESSION_KEY),
            checksession_signature("tiihtNczf5v6AKRyjwEUhQ==")
        );
    }

    #[test]
    fn checksession_signature_matches_hmac_new_from_slice() {
        // The hand-built block key must equal the library's own key handling, for short keys
        // and for keys longer than the 64-byte block (which RFC 2104 hashes first).
        for secret in [
            "",
            SESSION_KEY,
            &"k".repeat(64),
            &"k".repeat(65),
            &"x".repeat(200),
        ] {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(b"");
            let expected = hex::encode(mac.finalize().into_bytes());
            assert_eq!(
                checksession_signature(secret),
                expected,
                "key length {}",
                secret.len()
            );
        }
    }

    #[test]
    fn raw_data_agrees_only_when_every_member_matches() {
        let decrypted = serde_json::json!({
            "nickName": "Bob", "gender": 0, "avatarUrl": "https://x/a.png",
            "watermark": {"appid": "wx1", "timestamp": 1}
        });
        let raw = r#"{"nickName":"Bob","gender":0,"avatarUrl":"https://x/a.png"}"#;
        assert!(raw_data_agrees(raw, &decrypted));
        // A first block rewritten through the iv: the name differs.
        let eve =
            serde_json::json!({"nickName": "Eve", "gender": 0, "avatarUrl": "https://x/a.png"});
        assert!(!raw_data_agrees(raw, &eve));
        // ...or the member renamed (`{"nickName":"Bob` → `{"unionId":"XYZW`): nickName missing.
        let renamed =
            serde_json::json!({"unionId": "XYZW", "gender": 0, "avatarUrl": "https://x/a.png"});
        assert!(!raw_data_agrees(raw, &renamed));
        // userInfo's `language`, which the decrypted data may lack, is not compared then...
        let with_language = r#"{"nickName":"Bob","gender":0,"language":"zh_CN"}"#;
        assert!(raw_data_agrees(with_language, &decrypted));
        // ...but compared when there.
        let mut english = decrypted.clone();
        english["language"] = "en".into();
        assert!(!raw_data_agrees(with_language, &english));
        // A member the decrypted data lacks, another type, not an object.
        assert!(!raw_data_agrees(
            r#"{"nickName":"Bob","city":"X"}"#,
            &decrypted
        ));
        assert!(!raw_data_agrees(r#"{"gender":"0"}"#, &decrypted));
        assert!(!raw_data_agrees("[1]", &decrypted));
        assert!(!raw_data_agrees("not json", &decrypted));
    }
}
