//! Signing keys: generation, sealing for the store, and the rotation schedule.
//!
//! A stored key has an `activate_at` time. The schedule is computed, not stored, so every
//! replica reading the same rows agrees (clock skew aside) without coordinating:
//! - the signing key is the one with the latest `activate_at <= now`;
//! - keys with `activate_at > now` are "next": published in the JWKS, not signing yet;
//! - an older key stays published until `retain` seconds (the longest access-token lifetime a
//!   token still verifying may have, + leeway) after its successor began signing, i.e. until
//!   the last token it signed has expired; then it is dropped (and deleted from the store by
//!   the periodic purge).
//!
//! `weauth-issuer keys rotate` inserts a key with `activate_at = now + publish delay`.

use std::sync::Arc;

use weauth_token::{Algorithm, Jwks, KeySet, SigningKey};
use zeroize::Zeroizing;

use crate::secrets::{DataKey, SecretError};

/// A stored signing key (material sealed with the data key): what the store keeps of the
/// schedule this module decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub kid: String,
    pub alg: String,
    pub sealed: Vec<u8>,
    pub created_at: i64,
    pub activate_at: i64,
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {kid}: {source}")]
    Sealed { kid: String, source: SecretError },
    #[error("signing key {kid}: {reason}")]
    Material { kid: String, reason: String },
    #[error("WEAUTH_SIGNING_KEY_FILE {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the store holds no usable signing key")]
    NoSigningKey,
}

/// A fresh random key of `alg`.
pub fn generate(alg: Algorithm) -> SigningKey {
    loop {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
        // Only P-256 can refuse a seed (probability ~2^-128); draw again.
        if let Ok(key) = SigningKey::from_seed(alg, &seed) {
            return key;
        }
    }
}

fn material(key: &SigningKey) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    match key {
        SigningKey::Hmac(secret) => Ok(Zeroizing::new(secret.to_vec())),
        other => other
            .to_pkcs8_pem()
            .map(|pem| Zeroizing::new(pem.as_bytes().to_vec()))
            .map_err(|err| KeyError::Material {
                kid: other.kid(),
                reason: err.to_string(),
            }),
    }
}

fn aad(kid: &str) -> String {
    format!("signing_key:{kid}")
}

/// Whether a stored key does not open under `data_key` itself (a rotation of the data key:
/// it needs a previous key; `keys rotate` replaces it, and it goes once retired).
pub fn sealed_under_another_key(record: &KeyRecord, data_key: &DataKey) -> bool {
    !record.sealed.is_empty() && !data_key.opens_without_previous(&record.sealed, &aad(&record.kid))
}

/// Seals a key into a store record activating at `activate_at`.
///
/// # Errors
/// When the key cannot be encoded or sealed.
pub fn seal(
    key: &SigningKey,
    data_key: &DataKey,
    now: i64,
    activate_at: i64,
) -> Result<KeyRecord, KeyError> {
    let kid = key.kid();
    let sealed = data_key
        .seal(&material(key)?, &aad(&kid))
        .map_err(|source| KeyError::Sealed {
            kid: kid.clone(),
            source,
        })?;
    Ok(KeyRecord {
        kid,
        alg: key.algorithm().as_str().to_string(),
        sealed,
        created_at: now,
        activate_at,
    })
}

/// Opens a stored key.
///
/// # Errors
/// When the record does not decrypt or decode, or its kid does not match its material.
pub fn open(record: &KeyRecord, data_key: &DataKey) -> Result<SigningKey, KeyError> {
    let fail = |reason: &str| KeyError::Material {
        kid: record.kid.clone(),
        reason: reason.to_string(),
    };
    let alg = Algorithm::from_name(&record.alg).ok_or_else(|| fail("unknown algorithm"))?;
    let bytes = data_key
        .open(&record.sealed, &aad(&record.kid))
        .map_err(|source| KeyError::Sealed {
            kid: record.kid.clone(),
            source,
        })?;
    let key = match alg {
        Algorithm::HS256 => SigningKey::hmac(&bytes).map_err(|_| fail("short HMAC secret"))?,
        _ => {
            let pem = std::str::from_utf8(&bytes).map_err(|_| fail("PEM is not UTF-8"))?;
            SigningKey::from_pkcs8_pem(alg, pem).map_err(|_| fail("bad PEM"))?
        }
    };
    if key.kid() != record.kid {
        return Err(fail("material does not match the kid"));
    }
    Ok(key)
}

/// Reads `WEAUTH_SIGNING_KEY_FILE`: a PKCS#8 PEM for EdDSA/ES256, the raw secret for HS256.
///
/// # Errors
/// [`KeyError::File`] naming the path.
pub fn from_file(path: &std::path::Path, alg: Algorithm) -> Result<SigningKey, KeyError> {
    let fail = |reason: String| KeyError::File {
        path: path.display().to_string(),
        reason,
    };
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|err| fail(err.to_string()))?);
    match alg {
        Algorithm::HS256 => {
            let trimmed: &[u8] = bytes.strip_suffix(b"\n").unwrap_or(bytes.as_slice());
            SigningKey::hmac(trimmed).map_err(|err| fail(err.to_string()))
        }
        _ => {
            let pem = std::str::from_utf8(&bytes).map_err(|_| fail("not UTF-8 PEM".into()))?;
            SigningKey::from_pkcs8_pem(alg, pem).map_err(|err| fail(err.to_string()))
        }
    }
}

/// When a key rotated in at `now` may start signing: after `delay`, and strictly after every
/// stored key's activation (so it cannot lose a same-second tie to the key it replaces).
pub fn next_activation(records: &[KeyRecord], now: i64, delay: i64) -> i64 {
    let latest = records
        .iter()
        .map(|r| r.activate_at)
        .max()
        .unwrap_or(i64::MIN);
    now.saturating_add(delay).max(latest.saturating_add(1))
}

/// A key's role at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Published, not signing yet.
    Next,
    /// Signing (and published).
    Signing,
    /// Superseded, published until its tokens have expired.
    Retiring,
    /// Superseded long enough: not published, its key material erased.
    Dropped,
}

/// The role of each key (same order as `keys`) at `now`. `keys` are `(kid, activate_at)`;
/// ties on `activate_at` are broken by `kid` so every replica picks the same key.
pub fn schedule(keys: &[(&str, i64)], now: i64, retain: i64) -> Vec<Role> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|a, b| keys[*a].1.cmp(&keys[*b].1).then(keys[*a].0.cmp(keys[*b].0)));
    let mut roles = vec![Role::Dropped; keys.len()];
    let active: Vec<usize> = order
        .iter()
        .copied()
        .filter(|i| keys[*i].1 <= now)
        .collect();
    for (pos, index) in active.iter().enumerate() {
        roles[*index] = match active.get(pos + 1) {
            None => Role::Signing,
            Some(successor) => {
                if keys[*successor].1 + retain >= now {
                    Role::Retiring
                } else {
                    Role::Dropped
                }
            }
        };
    }
    for index in order.iter().filter(|i| keys[**i].1 > now) {
        roles[*index] = Role::Next;
    }
    roles
}

/// The keys in use at one moment: what signs, what verifies, what is published.
pub struct KeyRing {
    pub signing: Arc<SigningKey>,
    /// Every published key (next, signing, retiring): what bearer checks accept.
    pub verify: KeySet,
    /// The JWKS document (public keys only; HS256 secrets are never published).
    pub jwks: Jwks,
    /// Kids no longer needed whose key material is still in the store (to erase: see
    /// [`crate::store::Store::erase_keys`]).
    pub dropped: Vec<String>,
    /// When the signing key began signing (unix seconds): its age, for the
    /// `weauth_signing_key_activated_timestamp_seconds` gauge.
    pub signing_since: i64,
    /// Keys published but not signing yet (a successor in waiting), for `weauth_signing_keys_next`.
    pub next: usize,
}

/// Builds the ring from store records at `now`.
///
/// # Errors
/// [`KeyError::NoSigningKey`] when no key is active; a record that fails to open is an error
/// too (a wrong data key must not silently publish an empty JWKS).
pub fn ring(
    records: &[KeyRecord],
    data_key: &DataKey,
    now: i64,
    retain: i64,
) -> Result<KeyRing, KeyError> {
    let pairs: Vec<(&str, i64)> = records
        .iter()
        .map(|r| (r.kid.as_str(), r.activate_at))
        .collect();
    let roles = schedule(&pairs, now, retain);
    let mut signing = None;
    let mut verify = KeySet::default();
    let mut jwks = Jwks::default();
    let mut dropped = Vec::new();
    let mut signing_since = 0;
    let mut next = 0;
    for (record, role) in records.iter().zip(roles) {
        // An erased key stays out whatever its role now says (a longer retention than when it
        // was erased could make it "retiring" again): there is nothing left to publish.
        if record.sealed.is_empty() {
            continue;
        }
        if role == Role::Dropped {
            dropped.push(record.kid.clone());
            continue;
        }
        let key = open(record, data_key)?;
        verify.insert(record.kid.clone(), key.verifying_key());
        if key.algorithm() != Algorithm::HS256 {
            jwks.keys.push(key.jwk());
        }
        if role == Role::Signing {
            signing = Some(Arc::new(key));
            signing_since = record.activate_at;
        }
        if role == Role::Next {
            next += 1;
        }
    }
    Ok(KeyRing {
        signing: signing.ok_or(KeyError::NoSigningKey)?,
        verify,
        jwks,
        dropped,
        signing_since,
        next,
    })
}

/// The key ring in use: read by every request that signs or verifies, swapped whole by the
/// key reload (a promotion, a retirement).
pub struct KeyRingCell(std::sync::RwLock<Arc<KeyRing>>);

impl KeyRingCell {
    pub fn new(ring: KeyRing) -> KeyRingCell {
        KeyRingCell(std::sync::RwLock::new(Arc::new(ring)))
    }

    /// The current ring.
    pub fn current(&self) -> Arc<KeyRing> {
        match self.0.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `ring` in place of the current one.
    pub fn replace(&self, ring: KeyRing) {
        match self.0.write() {
            Ok(mut guard) => *guard = Arc::new(ring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ring),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_single_key_signs() {
        assert_eq!(schedule(&[("a", 0)], 10, 100), vec![Role::Signing]);
    }

    #[test]
    fn schedule_next_key_published_before_signing() {
        let keys = [("a", 0), ("b", 50)];
        assert_eq!(schedule(&keys, 49, 100), vec![Role::Signing, Role::Next]);
        assert_eq!(
            schedule(&keys, 50, 100),
            vec![Role::Retiring, Role::Signing]
        );
    }

    #[test]
    fn schedule_old_key_dropped_after_retain() {
        let keys = [("a", 0), ("b", 50)];
        assert_eq!(
            schedule(&keys, 150, 100),
            vec![Role::Retiring, Role::Signing]
        );
        assert_eq!(
            schedule(&keys, 151, 100),
            vec![Role::Dropped, Role::Signing]
        );
    }

    #[test]
    fn schedule_tie_broken_by_kid() {
        let keys = [("b", 5), ("a", 5)];
        assert_eq!(schedule(&keys, 5, 10), vec![Role::Signing, Role::Retiring]);
    }

    #[test]
    fn schedule_no_active_key_all_next() {
        assert_eq!(schedule(&[("a", 10)], 5, 10), vec![Role::Next]);
    }

    #[test]
    fn next_activation_after_latest_key() {
        let data_key = DataKey::from_bytes(&[3u8; 32]);
        let record = seal(&generate(Algorithm::EdDSA), &data_key, 100, 100).unwrap();
        assert_eq!(next_activation(std::slice::from_ref(&record), 100, 0), 101);
        assert_eq!(next_activation(&[record], 100, 600), 700);
        assert_eq!(next_activation(&[], 100, 0), 100);
    }

    #[test]
    fn seal_open_roundtrip_each_algorithm() {
        let data_key = DataKey::from_bytes(&[3u8; 32]);
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::HS256] {
            let key = generate(alg);
            let record = seal(&key, &data_key, 1, 1).unwrap();
            assert_eq!(open(&record, &data_key).unwrap().kid(), key.kid());
        }
    }

    #[test]
    fn sealed_material_is_bound_to_signing_key_and_its_kid() {
        // The AAD `signing_key:<kid>` is part of the stored format: the keys sealed by an
        // earlier build must still open under it.
        let data_key = DataKey::from_bytes(&[3u8; 32]);
        let key = generate(Algorithm::HS256);
        let record = seal(&key, &data_key, 1, 1).unwrap();
        let material = data_key
            .open(&record.sealed, &format!("signing_key:{}", key.kid()))
            .unwrap();
        assert_eq!(SigningKey::hmac(&material).unwrap().kid(), key.kid());
    }

    #[test]
    fn from_file_reads_pem_and_hs256_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let key = generate(Algorithm::EdDSA);
        let pem_path = dir.join("ed.pem");
        std::fs::write(&pem_path, key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
        assert_eq!(
            from_file(&pem_path, Algorithm::EdDSA).unwrap().kid(),
            key.kid()
        );
        assert!(from_file(&pem_path, Algorithm::ES256).is_err());
        let hs_path = dir.join("hs");
        std::fs::write(&hs_path, "short\n").unwrap();
        assert!(from_file(&hs_path, Algorithm::HS256).is_err());
        std::fs::write(&hs_path, format!("{}\n", "k".repeat(32))).unwrap();
        assert_eq!(
            from_file(&hs_path, Algorithm::HS256).unwrap().kid(),
            SigningKey::hmac("k".repeat(32).as_bytes()).unwrap().kid()
        );
        assert!(from_file(&dir.join("missing"), Algorithm::EdDSA).is_err());
    }

    #[test]
    fn ring_hs256_not_published() {
        let data_key = DataKey::from_bytes(&[3u8; 32]);
        let record = seal(&generate(Algorithm::HS256), &data_key, 0, 0).unwrap();
        let ring = ring(&[record], &data_key, 1, 10).unwrap();
        assert!(ring.jwks.keys.is_empty());
        assert_eq!(ring.verify.len(), 1);
    }

    #[test]
    fn ring_publishes_next_and_signs_with_current() {
        let data_key = DataKey::from_bytes(&[3u8; 32]);
        let old = generate(Algorithm::EdDSA);
        let new = generate(Algorithm::EdDSA);
        let records = [
            seal(&old, &data_key, 0, 0).unwrap(),
            seal(&new, &data_key, 10, 20).unwrap(),
        ];
        let before = ring(&records, &data_key, 15, 100).unwrap();
        assert_eq!(before.signing.kid(), old.kid());
        assert_eq!(before.jwks.keys.len(), 2);
        let after = ring(&records, &data_key, 200, 100).unwrap();
        assert_eq!(after.signing.kid(), new.kid());
        assert_eq!(after.jwks.keys.len(), 1);
        assert_eq!(after.dropped, vec![old.kid()]);
        // Erased: no longer to erase, and out of the ring even if a longer retention would
        // make it "retiring" again.
        let erased = [
            KeyRecord {
                sealed: Vec::new(),
                ..records[0].clone()
            },
            records[1].clone(),
        ];
        assert!(ring(&erased, &data_key, 200, 100)
            .unwrap()
            .dropped
            .is_empty());
        let longer = ring(&erased, &data_key, 200, 1_000).unwrap();
        assert_eq!(longer.jwks.keys.len(), 1);
        assert_eq!(longer.signing.kid(), new.kid());
    }

    #[test]
    fn ring_cell_serves_the_replacement_and_leaves_a_held_ring_whole() {
        // The key reload swaps the ring: what a request takes afterwards signs with the new
        // key, while a request still holding the old ring keeps it intact.
        let data_key = DataKey::from_bytes(&[3u8; 32]);
        let old = generate(Algorithm::EdDSA);
        let new = generate(Algorithm::EdDSA);
        let ring_of = |key: &SigningKey| {
            ring(&[seal(key, &data_key, 0, 0).unwrap()], &data_key, 1, 10).unwrap()
        };
        let cell = KeyRingCell::new(ring_of(&old));
        let held = cell.current();
        cell.replace(ring_of(&new));
        assert_eq!(cell.current().signing.kid(), new.kid());
        assert_eq!(held.signing.kid(), old.kid());
    }

    #[test]
    fn ring_reports_signing_age_and_successors() {
        let data_key = DataKey::from_bytes(&[3u8; 32]);
        let records = [
            seal(&generate(Algorithm::EdDSA), &data_key, 0, 5).unwrap(),
            seal(&generate(Algorithm::EdDSA), &data_key, 10, 20).unwrap(),
        ];
        let before = ring(&records, &data_key, 15, 100).unwrap();
        assert_eq!((before.signing_since, before.next), (5, 1));
        let after = ring(&records, &data_key, 30, 100).unwrap();
        assert_eq!((after.signing_since, after.next), (20, 0));
    }
}
