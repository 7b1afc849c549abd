//! Secrets at rest and random values: the data key (AES-256-GCM) that encrypts WeChat
//! session keys and signing keys in the store, random identifiers, and hashing helpers.
//!
//! A sealed value is `version(1) || nonce(12) || ciphertext+tag`, with associated data naming
//! what it is (`session_key:<sid>`, `signing_key:<kid>`), so a ciphertext copied onto another
//! row does not decrypt.
//!
//! Rotating the data key: the new key becomes `WEAUTH_DATA_KEY` and the old one is listed in
//! `WEAUTH_DATA_KEY_PREVIOUS`; values are sealed (and refresh successors derived) under the
//! current key only, and opened under it or, failing that, under each previous key in turn
//! (AES-GCM's tag tells a wrong key: no key id is stored, so values sealed before rotation
//! was possible open as they are).

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const VERSION: u8 = 1;

/// Why a secret could not be sealed, opened or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "a sealed value failed to decrypt (wrong WEAUTH_DATA_KEY — after a rotation, list the key it replaced in WEAUTH_DATA_KEY_PREVIOUS — or the row was tampered with)"
    )]
    Open,
    #[error("encryption failed")]
    Seal,
    #[error("data key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

/// A secret held in memory (an app secret, a credential, a key's bytes): zeroed when dropped,
/// as `Zeroizing`, and shown by `Debug` as `[redacted]` — `Zeroizing`'s own `Debug` prints the
/// contents, so a `{:?}` of a struct holding one (the configuration, an app entry, the WeChat
/// client's settings) would have logged it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: zeroize::Zeroize>(Zeroizing<T>);

impl<T: zeroize::Zeroize> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(Zeroizing::new(value))
    }
}

impl<T: zeroize::Zeroize> std::ops::Deref for Secret<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: zeroize::Zeroize> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The AES-256-GCM key for data at rest, and a MAC key derived from it for values every
/// replica must compute alike ([`DataKey::derive`]).
#[derive(Clone)]
pub struct DataKey {
    cipher: Aes256Gcm,
    derive: Hmac<Sha256>,
    /// Keys that only open values (`WEAUTH_DATA_KEY_PREVIOUS`), tried after `cipher`.
    previous: std::sync::Arc<[Aes256Gcm]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A key from 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> DataKey {
        // The MAC key is HMAC(data key, label): never the AES key itself.
        let mut label = hmac_of(bytes);
        label.update(b"weauth derived values v1");
        let derived = Zeroizing::new(<[u8; 32]>::from(label.finalize().into_bytes()));
        DataKey {
            cipher: Aes256Gcm::new(bytes.into()),
            derive: hmac_of(&derived),
            previous: std::sync::Arc::new([]),
        }
    }

    /// This key, also opening values sealed under each of `previous` (a rotation's old keys,
    /// tried in order after this one). A previous key that is this key is refused: listed by
    /// mistake for the new one, it would mean no rotation took place.
    ///
    /// # Errors
    /// [`SecretError::KeyFile`] naming `WEAUTH_DATA_KEY_PREVIOUS` when one of them is this key.
    pub fn with_previous(self, previous: &[[u8; 32]]) -> Result<DataKey, SecretError> {
        let probe = self.seal(b"", "previous key check")?;
        let previous: Vec<Aes256Gcm> = previous
            .iter()
            .map(|key| Aes256Gcm::new(key.into()))
            .collect();
        if previous
            .iter()
            .any(|key| open_with(key, &probe, "previous key check").is_ok())
        {
            return Err(SecretError::KeyFile {
                path: PathBuf::from("WEAUTH_DATA_KEY_PREVIOUS"),
                reason: "holds the current data key (WEAUTH_DATA_KEY or its file): list only the keys it replaced".into(),
            });
        }
        Ok(DataKey {
            previous: previous.into(),
            ..self
        })
    }

    /// 32 bytes that only a holder of this key can compute from `input`, the same on every
    /// replica sharing it: HMAC-SHA256 under a key derived from the data key, `purpose`
    /// separating the uses (a value derived for one purpose says nothing about another).
    pub fn derive(&self, purpose: &str, input: &[u8]) -> [u8; 32] {
        let mut mac = self.derive.clone();
        mac.update(&(purpose.len() as u64).to_be_bytes());
        mac.update(purpose.as_bytes());
        mac.update(input);
        mac.finalize().into_bytes().into()
    }

    /// Encrypts `plaintext`, bound to `aad`.
    ///
    /// # Errors
    /// [`SecretError::Seal`] (not expected in practice).
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Seal)?;
        let mut out = Vec::with_capacity(1 + 12 + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Whether `sealed` opens under this key itself, not only under a previous one (a reseal
    /// leaves it as it is).
    pub fn opens_without_previous(&self, sealed: &[u8], aad: &str) -> bool {
        open_with(&self.cipher, sealed, aad).is_ok()
    }

    /// Decrypts a value sealed with [`DataKey::seal`] under the same `aad`, by this key or a
    /// previous one ([`DataKey::with_previous`]).
    ///
    /// # Errors
    /// [`SecretError::Open`] on a wrong key, wrong `aad`, or damaged value.
    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        std::iter::once(&self.cipher)
            .chain(self.previous.iter())
            .find_map(|cipher| open_with(cipher, sealed, aad).ok())
            .ok_or(SecretError::Open)
    }

    /// The configured key, or the key file next to the database (created with mode 0600 on
    /// first use, with a warning: back it up with the database).
    ///
    /// # Errors
    /// [`SecretError::KeyFile`] when the file cannot be read, created or is malformed.
    pub fn load(configured: Option<&[u8]>, db_path: &Path) -> Result<DataKey, SecretError> {
        if let Some(bytes) = configured {
            let array: [u8; 32] = bytes.try_into().map_err(|_| SecretError::KeyFile {
                path: PathBuf::from("WEAUTH_DATA_KEY"),
                reason: "not 32 bytes".into(),
            })?;
            return Ok(DataKey::from_bytes(&array));
        }
        let path = key_file_path(db_path);
        let fail = |reason: String| SecretError::KeyFile {
            path: path.clone(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|_| fail("not base64".into()))?,
                );
                let array: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| fail("not 32 bytes".into()))?;
                Ok(DataKey::from_bytes(&array))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(bytes.as_mut());
                let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*bytes));
                write_private(&path, text.as_bytes()).map_err(|err| fail(err.to_string()))?;
                tracing::warn!(
                    path = %path.display(),
                    "WEAUTH_DATA_KEY is not set: generated a data key file next to the database; \
                     keep it with the database (losing it makes stored sessions and keys unreadable)"
                );
                Ok(DataKey::from_bytes(&bytes))
            }
            Err(err) => Err(fail(err.to_string())),
        }
    }
}

/// Decrypts `sealed` (`version || nonce || ciphertext+tag`) with one key.
fn open_with(
    cipher: &Aes256Gcm,
    sealed: &[u8],
    aad: &str,
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    if sealed.len() < 1 + 12 + 16 || sealed[0] != VERSION {
        return Err(SecretError::Open);
    }
    let (nonce, ciphertext) = sealed[1..].split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| SecretError::Open)?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: aad.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SecretError::Open)
}

/// HMAC-SHA256 keyed with 32 bytes: the key zero-padded to SHA-256's 64-byte block, as HMAC
/// does with a short key (RFC 2104) — `new_from_slice` would do the same behind a `Result`.
fn hmac_of(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&(*block).into())
}

/// `<dir of db>/<db file name>.datakey`.
pub fn key_file_path(db_path: &Path) -> PathBuf {
    let mut name = db_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "weauth.db".into());
    name.push(".datakey");
    db_path.with_file_name(name)
}

/// Creates `path` exclusively with mode 0600 and writes `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// `n` random bytes from the OS, as base64url (no padding).
pub fn random_b64(n: usize) -> String {
    weauth_token::b64::encode(random_bytes(n))
}

/// A random identifier with a readable prefix (`u_…`, `s_…`, `t_…`), 128 bits.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", random_b64(16))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Constant-time comparison of a presented credential with the configured one. Both are
/// hashed first, so the comparison runs over two 32-byte digests whatever the lengths, and the
/// digests are compared with `subtle` (no early exit).
pub fn credential_matches(presented: &str, expected: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    presented.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_ok() {
        let key = DataKey::from_bytes(&[7u8; 32]);
        let sealed = key.seal(b"session-key", "session_key:s1").unwrap();
        assert_eq!(
            key.open(&sealed, "session_key:s1").unwrap().as_slice(),
            b"session-key"
        );
    }

    #[test]
    fn open_other_aad_refused() {
        let key = DataKey::from_bytes(&[7u8; 32]);
        let sealed = key.seal(b"x", "session_key:s1").unwrap();
        assert!(key.open(&sealed, "session_key:s2").is_err());
        assert!(DataKey::from_bytes(&[8u8; 32])
            .open(&sealed, "session_key:s1")
            .is_err());
    }

    #[test]
    fn open_refuses_another_version() {
        // The version byte is outside the AEAD (neither ciphertext nor AAD): only the check
        // refuses a value of another format, which would otherwise decrypt.
        let key = DataKey::from_bytes(&[7u8; 32]);
        let mut sealed = key.seal(b"session-key", "session_key:s1").unwrap();
        sealed[0] = VERSION + 1;
        assert!(matches!(
            key.open(&sealed, "session_key:s1"),
            Err(SecretError::Open)
        ));
    }

    #[test]
    fn open_takes_the_shortest_value_and_refuses_shorter_ones() {
        // An empty plaintext seals to version, nonce and tag alone: the least `open` accepts.
        let key = DataKey::from_bytes(&[7u8; 32]);
        let sealed = key.seal(b"", "a").unwrap();
        assert_eq!(sealed.len(), 1 + 12 + 16);
        assert!(key.open(&sealed, "a").unwrap().is_empty());
        // A truncated row (even one keeping the version byte) is refused, not sliced into a
        // panic.
        for len in 0..sealed.len() {
            assert!(key.open(&sealed[..len], "a").is_err(), "{len} bytes");
        }
    }

    /// A rotated key: values sealed under the old key open with the old key listed as
    /// previous; new values are sealed under the new key only (the old one alone cannot open
    /// them); the successor derivation is the current key's.
    #[test]
    fn rotated_key_opens_the_old_values_and_seals_under_the_new() {
        let old = DataKey::from_bytes(&[7u8; 32]);
        let sealed_before = old.seal(b"session-key", "session_key:s1").unwrap();
        let rotated = DataKey::from_bytes(&[8u8; 32])
            .with_previous(&[[9u8; 32], [7u8; 32]])
            .unwrap();
        assert_eq!(
            rotated
                .open(&sealed_before, "session_key:s1")
                .unwrap()
                .as_slice(),
            b"session-key"
        );
        assert!(rotated.open(&sealed_before, "session_key:s2").is_err());
        let sealed_after = rotated.seal(b"new", "session_key:s3").unwrap();
        assert!(old.open(&sealed_after, "session_key:s3").is_err());
        assert_eq!(
            DataKey::from_bytes(&[8u8; 32])
                .open(&sealed_after, "session_key:s3")
                .unwrap()
                .as_slice(),
            b"new"
        );
        assert_eq!(
            rotated.derive("p", b"t"),
            DataKey::from_bytes(&[8u8; 32]).derive("p", b"t")
        );
        // Without the old key listed, the old values stay closed.
        assert!(DataKey::from_bytes(&[8u8; 32])
            .open(&sealed_before, "session_key:s1")
            .is_err());
    }

    #[test]
    fn previous_keys_holding_the_current_one_refused() {
        let err = DataKey::from_bytes(&[8u8; 32])
            .with_previous(&[[7u8; 32], [8u8; 32]])
            .unwrap_err();
        assert!(
            err.to_string().contains("WEAUTH_DATA_KEY_PREVIOUS"),
            "{err}"
        );
    }

    #[test]
    fn hmac_of_a_32_byte_key_is_hmac() {
        // The same MAC as `new_from_slice` gives for that key.
        let key = [0x0bu8; 32];
        let mut ours = hmac_of(&key);
        ours.update(b"what do ya want for nothing?");
        let mut theirs = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        theirs.update(b"what do ya want for nothing?");
        assert_eq!(ours.finalize().into_bytes(), theirs.finalize().into_bytes());
    }

    #[test]
    fn derive_is_keyed_deterministic_and_separates_purposes() {
        let key = DataKey::from_bytes(&[7u8; 32]);
        let value = key.derive("refresh successor", b"token");
        assert_eq!(value, key.derive("refresh successor", b"token"));
        assert_eq!(
            value,
            DataKey::from_bytes(&[7u8; 32]).derive("refresh successor", b"token"),
            "every replica with the key computes the same"
        );
        assert_ne!(value, key.derive("refresh successor", b"token2"));
        assert_ne!(value, key.derive("other", b"token"));
        assert_ne!(
            value,
            DataKey::from_bytes(&[8u8; 32]).derive("refresh successor", b"token")
        );
    }

    #[test]
    fn key_file_created_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        let first = DataKey::load(None, &db).unwrap();
        let sealed = first.seal(b"v", "a").unwrap();
        let second = DataKey::load(None, &db).unwrap();
        assert_eq!(second.open(&sealed, "a").unwrap().as_slice(), b"v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_file_path(&db))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn credential_matches_exact_only() {
        assert!(credential_matches("feed-secret", "feed-secret"));
        assert!(!credential_matches("feed-secreT", "feed-secret"));
        assert!(!credential_matches("", "feed-secret"));
    }

    #[test]
    fn sha256_hex_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
