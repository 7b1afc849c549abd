//! WeChat's encrypted user data (`encryptedData` + `iv` from `wx.getUserInfo`,
//! `getPhoneNumber`, `wx.getWeRunData`, ...): decryption with the session's `session_key`, the
//! watermark checks, and the inverse ([`encrypt`]) for tests and the mock WeChat.
//!
//! The scheme, as WeChat documents it: key = base64-decode(session_key), which must be 16 bytes;
//! iv = base64-decode(iv), 16 bytes; ciphertext = base64-decode(encryptedData); AES-128-CBC with
//! PKCS#7 padding. The plaintext is a JSON object whose `watermark` carries the `appid` the data
//! was made for and the `timestamp` (Unix seconds) it was made at. Base64 is the standard
//! alphabet with `=` padding.
//!
//! Every failure is a [`DecryptError`] naming what went wrong, with a stable short
//! [`DecryptError::code`] for clients. None of them is an internal error: each comes from the
//! request or from the session it was made under, so none should become a 500.

use std::fmt;

use aes::Aes128;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use serde_json::Value;
use zeroize::Zeroizing;

/// Length in bytes of a decoded `session_key` (AES-128).
pub const KEY_LEN: usize = 16;
/// Length in bytes of a decoded `iv` (the AES block size).
pub const IV_LEN: usize = 16;
const BLOCK_LEN: usize = 16;

/// Which input a [`DecryptError::Base64`] is about. Displays as the name the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The session's `session_key` (held by the issuer, not sent by the client).
    SessionKey,
    /// The client's `encryptedData`.
    EncryptedData,
    /// The client's `iv`.
    Iv,
}

impl Field {
    /// The field's wire name: `session_key`, `encryptedData` or `iv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::SessionKey => "session_key",
            Field::EncryptedData => "encryptedData",
            Field::Iv => "iv",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why [`decrypt`] refused its input. `Display` is written for operators and may be shown to the
/// client (it never contains key material or decrypted data); [`DecryptError::code`] is the
/// stable machine-readable name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecryptError {
    /// A field is not standard base64 with padding. `plus_became_space` is true when the text
    /// contains spaces and would decode if they were `+`: the classic sign of a value sent
    /// form-encoded (or in a query string) without percent-encoding `+` as `%2B`.
    Base64 {
        /// The field that failed to decode.
        field: Field,
        /// Whether replacing every space with `+` makes the field decode.
        plus_became_space: bool,
    },
    /// The session_key does not decode to 16 bytes.
    KeyLength {
        /// The decoded length.
        len: usize,
    },
    /// The iv does not decode to 16 bytes.
    IvLength {
        /// The decoded length.
        len: usize,
    },
    /// encryptedData decodes to an empty or non-whole number of 16-byte blocks: it was
    /// truncated or is not AES-CBC output at all.
    CiphertextLength {
        /// The decoded length.
        len: usize,
    },
    /// The data does not decrypt under this session_key (bad PKCS#7 padding, or a plaintext that
    /// is not even UTF-8). Almost always the data was encrypted under a newer session_key: the
    /// mini-program called `wx.login` again after this session was created, which rotates the
    /// session_key at WeChat. The client should call `wx.login`, log in again and retry.
    SessionKeyMismatch,
    /// The plaintext is text but not a JSON object.
    NotJson,
    /// The JSON has no usable watermark entry; `field` names the missing or mistyped member
    /// (`watermark`, `watermark.appid` or `watermark.timestamp`).
    WatermarkMissing {
        /// The member that is absent or of the wrong type.
        field: &'static str,
    },
    /// The watermark names another app: the data was produced for a different mini-program
    /// (appids are public identifiers, so the one found is reported).
    WrongApp {
        /// The appid in the watermark.
        found: String,
    },
    /// The watermark is older than the configured limit.
    StaleWatermark {
        /// `now - watermark.timestamp`, in seconds.
        age_secs: i64,
        /// The limit that was exceeded, in seconds.
        max_age_secs: u64,
    },
}

impl DecryptError {
    /// A stable short code for API responses:
    /// `invalid_base64`, `invalid_key_length`, `invalid_iv_length`,
    /// `invalid_encrypted_data_length`, `session_key_mismatch`, `not_json`,
    /// `watermark_missing`, `watermark_appid_mismatch` or `watermark_expired`.
    pub fn code(&self) -> &'static str {
        match self {
            DecryptError::Base64 { .. } => "invalid_base64",
            DecryptError::KeyLength { .. } => "invalid_key_length",
            DecryptError::IvLength { .. } => "invalid_iv_length",
            DecryptError::CiphertextLength { .. } => "invalid_encrypted_data_length",
            DecryptError::SessionKeyMismatch => "session_key_mismatch",
            DecryptError::NotJson => "not_json",
            DecryptError::WatermarkMissing { .. } => "watermark_missing",
            DecryptError::WrongApp { .. } => "watermark_appid_mismatch",
            DecryptError::StaleWatermark { .. } => "watermark_expired",
        }
    }

    /// True when the refusal was decided on the plaintext (its padding, its JSON, its
    /// watermark), so says something of it: under an `iv` the caller chooses, enough such
    /// answers are a padding oracle that decrypts or forges any block (CBC without integrity).
    /// A caller of [`decrypt`] serving untrusted clients limits them; the others (base64,
    /// lengths) are decided on the input alone.
    pub fn reveals_plaintext(&self) -> bool {
        matches!(
            self,
            DecryptError::SessionKeyMismatch
                | DecryptError::NotJson
                | DecryptError::WatermarkMissing { .. }
                | DecryptError::WrongApp { .. }
                | DecryptError::StaleWatermark { .. }
        )
    }

    /// True when the fix is for the client to call `wx.login` and log in again: the data was
    /// encrypted under another session_key, or the session's own session_key is unusable.
    pub fn relogin_required(&self) -> bool {
        matches!(
            self,
            DecryptError::SessionKeyMismatch
                | DecryptError::KeyLength { .. }
                | DecryptError::Base64 {
                    field: Field::SessionKey,
                    ..
                }
        )
    }
}

impl fmt::Display for DecryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecryptError::Base64 {
                field,
                plus_became_space: true,
            } => write!(
                f,
                "{field} is not valid base64: it contains spaces where '+' was expected, so it \
                 was probably sent form-encoded or in a URL without percent-encoding '+' as %2B; \
                 send it in a JSON body or encode it properly"
            ),
            DecryptError::Base64 {
                field,
                plus_became_space: false,
            } => write!(
                f,
                "{field} is not valid standard base64 (alphabet A-Z a-z 0-9 + /, '=' padding)"
            ),
            DecryptError::KeyLength { len } => write!(
                f,
                "session_key decodes to {len} bytes, expected {KEY_LEN}; log in again with \
                 wx.login to get a fresh session"
            ),
            DecryptError::IvLength { len } => {
                write!(f, "iv decodes to {len} bytes, expected {IV_LEN}")
            }
            DecryptError::CiphertextLength { len } => write!(
                f,
                "encryptedData decodes to {len} bytes, which is not a positive multiple of the \
                 {BLOCK_LEN}-byte AES block: it is truncated or not WeChat encrypted data"
            ),
            DecryptError::SessionKeyMismatch => f.write_str(
                "encryptedData does not decrypt with this session's session_key (bad padding): \
                 most often wx.login was called again after this session was created, which \
                 gives WeChat a new session_key; call wx.login, log in again, then fetch the \
                 encrypted data again and retry",
            ),
            DecryptError::NotJson => {
                f.write_str("encryptedData decrypted, but the plaintext is not a JSON object")
            }
            DecryptError::WatermarkMissing { field } => write!(
                f,
                "the decrypted data has no usable {field}: it is not WeChat user data"
            ),
            DecryptError::WrongApp { found } => write!(
                f,
                "the decrypted data's watermark is for appid {found}, not this app: it was \
                 produced for another mini-program"
            ),
            DecryptError::StaleWatermark {
                age_secs,
                max_age_secs,
            } => write!(
                f,
                "the decrypted data's watermark is {age_secs} s old, more than the allowed \
                 {max_age_secs} s: fetch the encrypted data again"
            ),
        }
    }
}

impl std::error::Error for DecryptError {}

/// Why [`encrypt`] refused its input (only tests and the mock WeChat encrypt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncryptError {
    /// The session_key is not standard base64 of 16 bytes.
    InvalidSessionKey,
    /// The iv is not standard base64 of 16 bytes.
    InvalidIv,
    /// The payload is not a JSON object, so it cannot carry a watermark.
    PayloadNotObject,
}

impl fmt::Display for EncryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncryptError::InvalidSessionKey => "session_key is not standard base64 of 16 bytes",
            EncryptError::InvalidIv => "iv is not standard base64 of 16 bytes",
            EncryptError::PayloadNotObject => "the payload to encrypt is not a JSON object",
        })
    }
}

impl std::error::Error for EncryptError {}

/// Decrypts WeChat `encryptedData` with the session's `session_key` and checks its watermark.
///
/// - `session_key_b64`, `encrypted_data_b64`, `iv_b64`: standard base64 with padding, as WeChat
///   hands them out. Nothing is trimmed or repaired: a space where `+` belongs is reported
///   ([`DecryptError::Base64`] with `plus_became_space`), not silently fixed.
/// - `expected_appid`: this app's appid; `watermark.appid` must equal it exactly.
/// - `now`: the current Unix time in seconds (the caller's clock; this crate reads none).
/// - `max_age`: when `Some(s)`, `now - watermark.timestamp` must be at most `s` seconds
///   (a timestamp in the future is accepted: clocks differ). When `None`, the timestamp is not
///   looked at.
///
/// Returns the whole decrypted JSON object, watermark included.
///
/// # Errors
/// Checks run in this order, and the first failure is returned: base64 of session_key, iv and
/// encryptedData; key length; iv length; ciphertext length; padding and UTF-8
/// ([`DecryptError::SessionKeyMismatch`]: with a wrong key the padding check passes about once in
/// 256 tries, and the garbage is then caught by the UTF-8 check); JSON object; watermark appid;
/// watermark age.
pub fn decrypt(
    session_key_b64: &str,
    encrypted_data_b64: &str,
    iv_b64: &str,
    expected_appid: &str,
    now: i64,
    max_age: Option<u64>,
) -> Result<Value, DecryptError> {
    let key = decode_field(session_key_b64, Field::SessionKey)?;
    let iv = decode_field(iv_b64, Field::Iv)?;
    let ciphertext = decode_field(encrypted_data_b64, Field::EncryptedData)?;
    if key.len() != KEY_LEN {
        return Err(DecryptError::KeyLength { len: key.len() });
    }
    if iv.len() != IV_LEN {
        return Err(DecryptError::IvLength { len: iv.len() });
    }
    if ciphertext.is_empty() || ciphertext.len() % BLOCK_LEN != 0 {
        return Err(DecryptError::CiphertextLength {
            len: ciphertext.len(),
        });
    }
    let decryptor = cbc::Decryptor::<Aes128>::new_from_slices(&key, &iv)
        .map_err(|_| DecryptError::KeyLength { len: key.len() })?;
    let plaintext = Zeroizing::new(
        decryptor
            .decrypt_padded_vec_mut::<Pkcs7>(&ciphertext)
            .map_err(|_| DecryptError::SessionKeyMismatch)?,
    );
    // WeChat's plaintext is always UTF-8 JSON. Bytes that are not UTF-8 are what a wrong key
    // produces on the rare occasions its padding happens to look valid.
    let text = std::str::from_utf8(&plaintext).map_err(|_| DecryptError::SessionKeyMismatch)?;
    let value: Value = serde_json::from_str(text).map_err(|_| DecryptError::NotJson)?;
    let watermark = value
        .as_object()
        .ok_or(DecryptError::NotJson)?
        .get("watermark")
        .and_then(Value::as_object)
        .ok_or(DecryptError::WatermarkMissing { field: "watermark" })?;
    let appid =
        watermark
            .get("appid")
            .and_then(Value::as_str)
            .ok_or(DecryptError::WatermarkMissing {
                field: "watermark.appid",
            })?;
    if appid != expected_appid {
        return Err(DecryptError::WrongApp {
            found: appid.to_owned(),
        });
    }
    if let Some(max_age_secs) = max_age {
        let timestamp = watermark.get("timestamp").and_then(Value::as_i64).ok_or(
            DecryptError::WatermarkMissing {
                field: "watermark.timestamp",
            },
        )?;
        let age_secs = now.saturating_sub(timestamp);
        if age_secs > i64::try_from(max_age_secs).unwrap_or(i64::MAX) {
            return Err(DecryptError::StaleWatermark {
                age_secs,
                max_age_secs,
            });
        }
    }
    Ok(value)
}

/// The inverse of [`decrypt`], as WeChat does it: sets `watermark` to
/// `{"appid": appid, "timestamp": timestamp}` on a copy of `payload` (replacing any watermark
/// already there), serializes it compactly (serde_json's key order), encrypts with AES-128-CBC + PKCS#7 and returns
/// standard base64. The caller picks the iv (16 random bytes in base64); this crate has no
/// randomness source.
///
/// # Errors
/// [`EncryptError`] if the key or iv is not base64 of 16 bytes, or `payload` is not an object.
pub fn encrypt(
    session_key_b64: &str,
    iv_b64: &str,
    payload: &Value,
    appid: &str,
    timestamp: i64,
) -> Result<String, EncryptError> {
    let key = STANDARD
        .decode(session_key_b64)
        .map(Zeroizing::new)
        .map_err(|_| EncryptError::InvalidSessionKey)?;
    let iv = STANDARD
        .decode(iv_b64)
        .map_err(|_| EncryptError::InvalidIv)?;
    if key.len() != KEY_LEN {
        return Err(EncryptError::InvalidSessionKey);
    }
    if iv.len() != IV_LEN {
        return Err(EncryptError::InvalidIv);
    }
    let mut payload = payload.clone();
    let object = payload
        .as_object_mut()
        .ok_or(EncryptError::PayloadNotObject)?;
    // Built in sorted key order so that the serialized text is the same whether or not
    // serde_json's `preserve_order` feature is on somewhere in the build.
    let mut watermark = serde_json::Map::new();
    watermark.insert("appid".to_owned(), Value::from(appid));
    watermark.insert("timestamp".to_owned(), Value::from(timestamp));
    object.insert("watermark".to_owned(), Value::Object(watermark));
    let plaintext = Zeroizing::new(payload.to_string().into_bytes());
    let encryptor = cbc::Encryptor::<Aes128>::new_from_slices(&key, &iv)
        .map_err(|_| EncryptError::InvalidSessionKey)?;
    Ok(STANDARD.encode(encryptor.encrypt_padded_vec_mut::<Pkcs7>(&plaintext)))
}

/// Decodes one field as standard padded base64, diagnosing the `+`-became-space client bug.
fn decode_field(input: &str, field: Field) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    match STANDARD.decode(input) {
        Ok(bytes) => Ok(Zeroizing::new(bytes)),
        Err(_) => {
            let plus_became_space =
                input.contains(' ') && STANDARD.decode(input.replace(' ', "+")).is_ok();
            Err(DecryptError::Base64 {
                field,
                plus_became_space,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const APPID: &str = "wx0123456789abcdef";
    const KEY: &str = "AAECAwQFBgcICQoLDA0ODw=="; // bytes 0x00..=0x0f
    const IV: &str = "EBESExQVFhcYGRobHB0eHw=="; // bytes 0x10..=0x1f
    const NOW: i64 = 1_700_000_000;

    fn key_b64(bytes: [u8; KEY_LEN]) -> String {
        STANDARD.encode(bytes)
    }

    /// Raw AES-128-CBC + PKCS#7 of arbitrary bytes, for plaintexts `encrypt` cannot make.
    fn encrypt_bytes(key: &str, iv: &str, plaintext: &[u8]) -> String {
        let key = STANDARD.decode(key).unwrap();
        let iv = STANDARD.decode(iv).unwrap();
        let enc = cbc::Encryptor::<Aes128>::new_from_slices(&key, &iv).unwrap();
        STANDARD.encode(enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext))
    }

    fn sample() -> String {
        encrypt(
            KEY,
            IV,
            &json!({"openId": "o-test", "nickName": "Band"}),
            APPID,
            NOW,
        )
        .unwrap()
    }

    #[test]
    fn decrypt_roundtrip_returns_payload_and_watermark() {
        let value = decrypt(KEY, &sample(), IV, APPID, NOW, None).unwrap();
        assert_eq!(value["openId"], "o-test");
        assert_eq!(value["nickName"], "Band");
        assert_eq!(value["watermark"]["appid"], APPID);
        assert_eq!(value["watermark"]["timestamp"], NOW);
    }

    #[test]
    fn encrypt_existing_watermark_is_replaced() {
        let payload = json!({"a": 1, "watermark": {"appid": "wxother", "timestamp": 5}});
        let data = encrypt(KEY, IV, &payload, APPID, NOW).unwrap();
        let value = decrypt(KEY, &data, IV, APPID, NOW, Some(0)).unwrap();
        assert_eq!(
            value["watermark"],
            json!({"timestamp": NOW, "appid": APPID})
        );
    }

    #[test]
    fn encrypt_non_object_payload_refused() {
        let err = encrypt(KEY, IV, &json!([1, 2]), APPID, NOW).unwrap_err();
        assert_eq!(err, EncryptError::PayloadNotObject);
    }

    #[test]
    fn encrypt_bad_key_or_iv_refused() {
        assert_eq!(
            encrypt("AAAA", IV, &json!({}), APPID, NOW).unwrap_err(),
            EncryptError::InvalidSessionKey
        );
        assert_eq!(
            encrypt(KEY, "not base64!", &json!({}), APPID, NOW).unwrap_err(),
            EncryptError::InvalidIv
        );
    }

    #[test]
    fn decrypt_space_for_plus_in_data_reported() {
        let data = sample();
        assert!(data.contains('+'), "fixture must contain a '+': {data}");
        let mangled = data.replace('+', " ");
        let err = decrypt(KEY, &mangled, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(
            err,
            DecryptError::Base64 {
                field: Field::EncryptedData,
                plus_became_space: true
            }
        );
        assert_eq!(err.code(), "invalid_base64");
        assert!(err.to_string().contains("%2B"), "{err}");
        assert!(err.to_string().starts_with("encryptedData "), "{err}");
    }

    #[test]
    fn decrypt_space_for_plus_in_iv_reported() {
        let iv = "ab+/AAAAAAAAAAAAAAAAAA==";
        let data = encrypt(KEY, iv, &json!({}), APPID, NOW).unwrap();
        let err = decrypt(KEY, &data, &iv.replace('+', " "), APPID, NOW, None).unwrap_err();
        assert_eq!(
            err,
            DecryptError::Base64 {
                field: Field::Iv,
                plus_became_space: true
            }
        );
    }

    #[test]
    fn decrypt_garbage_base64_not_blamed_on_plus() {
        let err = decrypt(KEY, "not*base64", IV, APPID, NOW, None).unwrap_err();
        assert_eq!(
            err,
            DecryptError::Base64 {
                field: Field::EncryptedData,
                plus_became_space: false
            }
        );
        assert!(!err.to_string().contains("%2B"), "{err}");
    }

    #[test]
    fn decrypt_space_that_plus_would_not_fix_not_blamed_on_plus() {
        let err = decrypt(KEY, "AB CD*", IV, APPID, NOW, None).unwrap_err();
        assert_eq!(
            err,
            DecryptError::Base64 {
                field: Field::EncryptedData,
                plus_became_space: false
            }
        );
    }

    #[test]
    fn decrypt_urlsafe_alphabet_refused() {
        let data = sample().replace('+', "-").replace('/', "_");
        let err = decrypt(KEY, &data, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err.code(), "invalid_base64");
    }

    #[test]
    fn decrypt_missing_padding_refused() {
        let err = decrypt(KEY, &sample(), IV.trim_end_matches('='), APPID, NOW, None).unwrap_err();
        assert_eq!(
            err,
            DecryptError::Base64 {
                field: Field::Iv,
                plus_became_space: false
            }
        );
    }

    #[test]
    fn decrypt_bad_session_key_base64_requires_relogin() {
        let err = decrypt("%%%", &sample(), IV, APPID, NOW, None).unwrap_err();
        assert_eq!(
            err,
            DecryptError::Base64 {
                field: Field::SessionKey,
                plus_became_space: false
            }
        );
        assert!(err.relogin_required());
    }

    #[test]
    fn decrypt_short_key_invalid_key_length() {
        let key = STANDARD.encode([7u8; 15]);
        let err = decrypt(&key, &sample(), IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::KeyLength { len: 15 });
        assert_eq!(err.code(), "invalid_key_length");
        assert!(err.relogin_required());
    }

    #[test]
    fn decrypt_aes256_sized_key_invalid_key_length() {
        let key = STANDARD.encode([7u8; 32]);
        let err = decrypt(&key, &sample(), IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::KeyLength { len: 32 });
    }

    #[test]
    fn decrypt_wrong_iv_length_invalid_iv_length() {
        let iv = STANDARD.encode([1u8; 12]);
        let err = decrypt(KEY, &sample(), &iv, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::IvLength { len: 12 });
        assert_eq!(err.code(), "invalid_iv_length");
        assert!(!err.relogin_required());
        assert!(err.to_string().contains("12 bytes"), "{err}");
    }

    #[test]
    fn decrypt_truncated_ciphertext_invalid_length() {
        let mut bytes = STANDARD.decode(sample()).unwrap();
        bytes.pop();
        let err = decrypt(KEY, &STANDARD.encode(&bytes), IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::CiphertextLength { len: bytes.len() });
        assert_eq!(err.code(), "invalid_encrypted_data_length");
    }

    #[test]
    fn decrypt_empty_ciphertext_invalid_length() {
        let err = decrypt(KEY, "", IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::CiphertextLength { len: 0 });
    }

    #[test]
    fn decrypt_rotated_session_key_session_key_mismatch() {
        let data = sample();
        let newer = key_b64([0xA5; KEY_LEN]);
        let err = decrypt(&newer, &data, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::SessionKeyMismatch);
        assert_eq!(err.code(), "session_key_mismatch");
        assert!(err.relogin_required());
        assert!(err.to_string().contains("wx.login"), "{err}");
    }

    #[test]
    fn decrypt_many_wrong_keys_always_session_key_mismatch() {
        // About 1 key in 256 yields plausible padding; 2000 keys exercise that path several
        // times, and the UTF-8 check must still classify it as a key mismatch.
        let data = sample();
        let mut padding_passed = 0;
        for i in 0..2000u32 {
            let mut key = [0u8; KEY_LEN];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[15] = 0xEE;
            let err = decrypt(&key_b64(key), &data, IV, APPID, NOW, None).unwrap_err();
            assert_eq!(err, DecryptError::SessionKeyMismatch, "key #{i}");
            let iv = STANDARD.decode(IV).unwrap();
            let dec = cbc::Decryptor::<Aes128>::new_from_slices(&key, &iv).unwrap();
            let bytes = STANDARD.decode(&data).unwrap();
            if dec.decrypt_padded_vec_mut::<Pkcs7>(&bytes).is_ok() {
                padding_passed += 1;
            }
        }
        assert!(padding_passed > 0, "no wrong key passed the padding check");
    }

    #[test]
    fn decrypt_wrong_iv_garbles_first_block_only_not_json() {
        // CBC: a wrong iv corrupts only the first block, so padding still checks out. With an
        // iv differing in one bit the first byte '{' becomes 'z' and the text is no longer JSON.
        let data = sample();
        let mut iv = STANDARD.decode(IV).unwrap();
        iv[0] ^= 0x01;
        let err = decrypt(KEY, &data, &STANDARD.encode(&iv), APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::NotJson);
    }

    #[test]
    fn decrypt_text_plaintext_not_json() {
        let data = encrypt_bytes(KEY, IV, b"hello, not json");
        let err = decrypt(KEY, &data, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::NotJson);
        assert_eq!(err.code(), "not_json");
    }

    #[test]
    fn decrypt_json_array_not_json_object() {
        let data = encrypt_bytes(KEY, IV, br#"[{"watermark":{}}]"#);
        let err = decrypt(KEY, &data, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::NotJson);
    }

    #[test]
    fn decrypt_no_watermark_watermark_missing() {
        let data = encrypt_bytes(KEY, IV, br#"{"openId":"o"}"#);
        let err = decrypt(KEY, &data, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err, DecryptError::WatermarkMissing { field: "watermark" });
        assert_eq!(err.code(), "watermark_missing");
    }

    #[test]
    fn decrypt_watermark_without_appid_watermark_missing() {
        let data = encrypt_bytes(KEY, IV, br#"{"watermark":{"timestamp":1,"appid":7}}"#);
        let err = decrypt(KEY, &data, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(
            err,
            DecryptError::WatermarkMissing {
                field: "watermark.appid"
            }
        );
    }

    #[test]
    fn decrypt_other_app_watermark_appid_mismatch() {
        let data = encrypt(KEY, IV, &json!({}), "wxotherapp00000000", NOW).unwrap();
        let err = decrypt(KEY, &data, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(
            err,
            DecryptError::WrongApp {
                found: "wxotherapp00000000".to_owned()
            }
        );
        assert_eq!(err.code(), "watermark_appid_mismatch");
        assert!(!err.relogin_required());
    }

    #[test]
    fn decrypt_appid_compare_is_exact() {
        let data = encrypt(KEY, IV, &json!({}), &APPID.to_uppercase(), NOW).unwrap();
        let err = decrypt(KEY, &data, IV, APPID, NOW, None).unwrap_err();
        assert_eq!(err.code(), "watermark_appid_mismatch");
    }

    #[test]
    fn decrypt_watermark_at_max_age_accepted() {
        let data = encrypt(KEY, IV, &json!({}), APPID, NOW - 300).unwrap();
        assert!(decrypt(KEY, &data, IV, APPID, NOW, Some(300)).is_ok());
    }

    #[test]
    fn decrypt_watermark_past_max_age_expired() {
        let data = encrypt(KEY, IV, &json!({}), APPID, NOW - 301).unwrap();
        let err = decrypt(KEY, &data, IV, APPID, NOW, Some(300)).unwrap_err();
        assert_eq!(
            err,
            DecryptError::StaleWatermark {
                age_secs: 301,
                max_age_secs: 300
            }
        );
        assert_eq!(err.code(), "watermark_expired");
    }

    #[test]
    fn decrypt_old_watermark_without_limit_accepted() {
        let data = encrypt(KEY, IV, &json!({}), APPID, 0).unwrap();
        assert!(decrypt(KEY, &data, IV, APPID, NOW, None).is_ok());
    }

    #[test]
    fn decrypt_future_watermark_within_limit_accepted() {
        let data = encrypt(KEY, IV, &json!({}), APPID, NOW + 30).unwrap();
        assert!(decrypt(KEY, &data, IV, APPID, NOW, Some(0)).is_ok());
    }

    #[test]
    fn decrypt_huge_max_age_does_not_overflow() {
        let data = encrypt(KEY, IV, &json!({}), APPID, i64::MIN).unwrap();
        assert!(decrypt(KEY, &data, IV, APPID, i64::MAX, Some(u64::MAX)).is_ok());
    }

    #[test]
    fn decrypt_missing_timestamp_with_limit_watermark_missing() {
        let data = encrypt_bytes(
            KEY,
            IV,
            format!(r#"{{"watermark":{{"appid":"{APPID}"}}}}"#).as_bytes(),
        );
        assert!(decrypt(KEY, &data, IV, APPID, NOW, None).is_ok());
        let err = decrypt(KEY, &data, IV, APPID, NOW, Some(60)).unwrap_err();
        assert_eq!(
            err,
            DecryptError::WatermarkMissing {
                field: "watermark.timestamp"
            }
        );
    }

    #[test]
    fn reveals_plaintext_only_for_refusals_decided_on_the_plaintext() {
        // The issuer rate-limits the refusals that say something of the plaintext (a padding
        // oracle under a client-chosen iv); those decided on the input alone are not limited.
        // Each kind of refusal, produced by `decrypt` itself.
        let revealing = [
            decrypt(&key_b64([0xA5; KEY_LEN]), &sample(), IV, APPID, NOW, None),
            decrypt(KEY, &encrypt_bytes(KEY, IV, b"text"), IV, APPID, NOW, None),
            decrypt(KEY, &encrypt_bytes(KEY, IV, b"{}"), IV, APPID, NOW, None),
            decrypt(KEY, &sample(), IV, "wxother", NOW, None),
            decrypt(KEY, &sample(), IV, APPID, NOW + 100, Some(10)),
        ];
        let codes: Vec<_> = revealing
            .into_iter()
            .map(|result| result.unwrap_err())
            .inspect(|err| assert!(err.reveals_plaintext(), "{err:?}"))
            .map(|err| err.code())
            .collect();
        assert_eq!(
            codes,
            [
                "session_key_mismatch",
                "not_json",
                "watermark_missing",
                "watermark_appid_mismatch",
                "watermark_expired"
            ]
        );
        let silent = [
            decrypt("%%%", &sample(), IV, APPID, NOW, None),
            decrypt(KEY, &sample(), "%%%", APPID, NOW, None),
            decrypt(KEY, "%%%", IV, APPID, NOW, None),
            decrypt(&STANDARD.encode([7u8; 15]), &sample(), IV, APPID, NOW, None),
            decrypt(
                KEY,
                &sample(),
                &STANDARD.encode([1u8; 12]),
                APPID,
                NOW,
                None,
            ),
            decrypt(KEY, "", IV, APPID, NOW, None),
        ];
        let codes: Vec<_> = silent
            .into_iter()
            .map(|result| result.unwrap_err())
            .inspect(|err| assert!(!err.reveals_plaintext(), "{err:?}"))
            .map(|err| err.code())
            .collect();
        assert_eq!(
            codes,
            [
                "invalid_base64",
                "invalid_base64",
                "invalid_base64",
                "invalid_key_length",
                "invalid_iv_length",
                "invalid_encrypted_data_length"
            ]
        );
    }

    #[test]
    fn decrypt_error_codes_are_distinct() {
        let errors = [
            DecryptError::Base64 {
                field: Field::Iv,
                plus_became_space: false,
            },
            DecryptError::KeyLength { len: 0 },
            DecryptError::IvLength { len: 0 },
            DecryptError::CiphertextLength { len: 0 },
            DecryptError::SessionKeyMismatch,
            DecryptError::NotJson,
            DecryptError::WatermarkMissing { field: "watermark" },
            DecryptError::WrongApp {
                found: String::new(),
            },
            DecryptError::StaleWatermark {
                age_secs: 0,
                max_age_secs: 0,
            },
        ];
        let mut codes: Vec<_> = errors.iter().map(DecryptError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
    }
}
