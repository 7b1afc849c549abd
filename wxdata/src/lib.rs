//! WeChat mini-program user data, for the issuer's `POST /v1/me/decrypt` and its
//! `checksession` support, and for the mock WeChat in `tests/`.
//!
//! - [`userdata`]: [`decrypt`] `encryptedData` + `iv` with the session's `session_key`
//!   (AES-128-CBC, PKCS#7) and check the watermark (appid, optional freshness), with a
//!   [`DecryptError`] that names the cause (a `+` that arrived as a space, a session_key rotated
//!   by a later `wx.login`, data for another app, ...); [`encrypt`] is the inverse.
//! - [`signature`]: the `rawData` signature (`hex(sha1(rawData + session_key))`) and the
//!   `/wxa/checksession` signature (`hex(HMAC-SHA256(session_key, ""))`).
//!
//! The crate is pure: no I/O, no clock (the current time is an argument), no randomness (the
//! caller supplies the iv to [`encrypt`]), so it also builds for `wasm32-wasip1`. Non-test code
//! never panics (clippy denies `unwrap`, `expect` and `panic`). Decoded keys and plaintexts are
//! zeroized when dropped; errors never carry key material or decrypted data.

pub mod signature;
pub mod userdata;

pub use signature::{
    check_raw_data_signature, checksession_signature, raw_data_agrees, raw_data_signature,
};
pub use userdata::{decrypt, encrypt, DecryptError, EncryptError, Field, IV_LEN, KEY_LEN};
