//! JSON Web Keys (RFC 7517), key sets and RFC 7638 thumbprints.
//!
//! A [`KeySet`] is what a verifier holds: keys by `kid`, each bound to exactly one
//! [`Algorithm`] derived from the key's own type, so a token's header can never choose how its
//! key is used (an Ed25519 or P-256 public key is never an HMAC secret).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::b64;

/// A signature algorithm weauth supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037). The default.
    EdDSA,
    /// ECDSA P-256 with SHA-256, signature as 64-byte r||s (RFC 7518 §3.4).
    ES256,
    /// HMAC-SHA256 with a shared secret. Only where every verifier may hold the secret.
    HS256,
}

impl Algorithm {
    /// The JOSE name (`EdDSA`, `ES256`, `HS256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::HS256 => "HS256",
        }
    }

    /// Parses a JOSE name exactly (case-sensitive, as RFC 7515 §4.1.1 requires).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "EdDSA" => Some(Algorithm::EdDSA),
            "ES256" => Some(Algorithm::ES256),
            "HS256" => Some(Algorithm::HS256),
            _ => None,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a JWK could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("unsupported key type or curve: kty={kty} crv={crv}")]
    Unsupported { kty: String, crv: String },
    #[error("key member `{0}` is missing")]
    Missing(&'static str),
    #[error("key member `{0}` is not valid base64url")]
    Base64(&'static str),
    #[error("key material is invalid: {0}")]
    Invalid(&'static str),
    #[error("the key's `alg` {alg} does not match its type")]
    AlgMismatch { alg: String },
    #[error("the key's `use` is {0}, not sig")]
    NotForSignatures(String),
}

/// One JSON Web Key, as published in a JWKS. Only the members weauth understands are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Symmetric key material (`kty: oct`). Never published; only in inline verifier config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// A JWK Set (`{"keys": [...]}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// A public (or, for HS256, shared) key ready to verify signatures.
#[derive(Clone)]
pub enum VerifyingKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
    Hmac(zeroize::Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material: an HMAC key is a secret.
        f.write_str(match self {
            VerifyingKey::Ed25519(_) => "VerifyingKey::Ed25519",
            VerifyingKey::P256(_) => "VerifyingKey::P256",
            VerifyingKey::Hmac(_) => "VerifyingKey::Hmac",
        })
    }
}

impl VerifyingKey {
    /// The one algorithm this key may verify.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyingKey::Ed25519(_) => Algorithm::EdDSA,
            VerifyingKey::P256(_) => Algorithm::ES256,
            VerifyingKey::Hmac(_) => Algorithm::HS256,
        }
    }

    /// The key in `jsonwebtoken`'s form, built once when the key enters a [`KeySet`]: raw
    /// public key bytes for Ed25519, the uncompressed SEC1 point for P-256 (what the crate's
    /// `from_*_der` constructors actually take, despite the name) and the secret for HMAC.
    pub(crate) fn to_decoding_key(&self) -> jsonwebtoken::DecodingKey {
        match self {
            VerifyingKey::Ed25519(key) => jsonwebtoken::DecodingKey::from_ed_der(key.as_bytes()),
            VerifyingKey::P256(key) => {
                jsonwebtoken::DecodingKey::from_ec_der(key.to_encoded_point(false).as_bytes())
            }
            VerifyingKey::Hmac(secret) => jsonwebtoken::DecodingKey::from_secret(secret),
        }
    }

    /// The key as a JWK (no `kid`, `alg` or `use`); for HMAC the secret is included.
    pub fn to_jwk(&self) -> Jwk {
        match self {
            VerifyingKey::Ed25519(key) => Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(b64::encode(key.as_bytes())),
                ..Jwk::default()
            },
            VerifyingKey::P256(key) => {
                let point = key.to_encoded_point(false);
                Jwk {
                    kty: "EC".into(),
                    crv: Some("P-256".into()),
                    x: point.x().map(b64::encode),
                    y: point.y().map(b64::encode),
                    ..Jwk::default()
                }
            }
            VerifyingKey::Hmac(secret) => Jwk {
                kty: "oct".into(),
                k: Some(b64::encode(secret.as_slice())),
                ..Jwk::default()
            },
        }
    }
}

fn member<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, JwkError> {
    value.as_deref().ok_or(JwkError::Missing(name))
}

fn decode_member(value: &Option<String>, name: &'static str) -> Result<Vec<u8>, JwkError> {
    b64::decode(member(value, name)?).map_err(|_| JwkError::Base64(name))
}

impl Jwk {
    /// The RFC 7638 thumbprint: base64url(SHA-256(canonical JSON of the required members)).
    ///
    /// # Errors
    /// [`JwkError::Missing`] when a required member is absent, [`JwkError::Unsupported`] for a
    /// key type other than OKP, EC or oct.
    pub fn thumbprint(&self) -> Result<String, JwkError> {
        // Members in lexicographic order, no whitespace (RFC 7638 §3.2). Values are base64url or
        // fixed names, so they need no JSON escaping beyond what serde does.
        let canonical = match self.kty.as_str() {
            "OKP" => serde_json::json!({
                "crv": member(&self.crv, "crv")?,
                "kty": "OKP",
                "x": member(&self.x, "x")?,
            }),
            "EC" => serde_json::json!({
                "crv": member(&self.crv, "crv")?,
                "kty": "EC",
                "x": member(&self.x, "x")?,
                "y": member(&self.y, "y")?,
            }),
            "oct" => serde_json::json!({
                "k": member(&self.k, "k")?,
                "kty": "oct",
            }),
            other => {
                return Err(JwkError::Unsupported {
                    kty: other.to_string(),
                    crv: self.crv.clone().unwrap_or_default(),
                })
            }
        };
        // serde_json's Map is a BTreeMap without the preserve_order feature: keys come out sorted.
        let text = canonical.to_string();
        Ok(b64::encode(Sha256::digest(text.as_bytes())))
    }

    /// Turns the JWK into a key ready to verify signatures.
    ///
    /// # Errors
    /// Unsupported types or curves, missing or malformed members, an `alg` that contradicts the
    /// key type, or a `use` other than `sig`.
    pub fn to_verifying_key(&self) -> Result<VerifyingKey, JwkError> {
        if let Some(use_) = &self.use_ {
            if use_ != "sig" {
                return Err(JwkError::NotForSignatures(use_.clone()));
            }
        }
        let key = match (self.kty.as_str(), self.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => {
                let x = decode_member(&self.x, "x")?;
                let bytes: [u8; 32] = x
                    .as_slice()
                    .try_into()
                    .map_err(|_| JwkError::Invalid("Ed25519 x must be 32 bytes"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| JwkError::Invalid("Ed25519 x is not a valid point"))?;
                if key.is_weak() {
                    return Err(JwkError::Invalid("Ed25519 x is a weak (small-order) key"));
                }
                VerifyingKey::Ed25519(key)
            }
            ("EC", Some("P-256")) => {
                let x = decode_member(&self.x, "x")?;
                let y = decode_member(&self.y, "y")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwkError::Invalid("P-256 x and y must be 32 bytes each"));
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|_| JwkError::Invalid("P-256 point is not on the curve"))?;
                VerifyingKey::P256(key)
            }
            ("oct", _) => {
                let k = decode_member(&self.k, "k")?;
                if k.len() < 32 {
                    return Err(JwkError::Invalid("HS256 secret must be at least 32 bytes"));
                }
                VerifyingKey::Hmac(zeroize::Zeroizing::new(k))
            }
            (kty, crv) => {
                return Err(JwkError::Unsupported {
                    kty: kty.to_string(),
                    crv: crv.unwrap_or_default().to_string(),
                })
            }
        };
        if let Some(alg) = &self.alg {
            if Algorithm::from_name(alg) != Some(key.algorithm()) {
                return Err(JwkError::AlgMismatch { alg: alg.clone() });
            }
        }
        Ok(key)
    }
}

/// Keys of a JWKS that were skipped, with their `kid` (when given) and why.
pub type Skipped = Vec<(Option<String>, JwkError)>;

/// One usable key of a [`KeySet`].
#[derive(Clone)]
pub struct KeyEntry {
    pub kid: String,
    pub key: VerifyingKey,
    /// The same key for `jsonwebtoken`, built once at insertion rather than per token.
    pub(crate) decoding: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `VerifyingKey`'s Debug prints no key material; the DecodingKey is left out for the
        // same reason (for HMAC it is the secret).
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The most keys a [`KeySet`] takes from one JWKS.
pub const MAX_KEYS: usize = 64;

/// The keys a verifier trusts, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    entries: Vec<KeyEntry>,
}

impl KeySet {
    /// Builds a key set from a JWKS, keeping every usable key and reporting the others.
    ///
    /// A key without `kid` gets its RFC 7638 thumbprint as `kid`. A JWKS from a standard
    /// issuer may carry keys weauth does not support (RSA, say); they are skipped, not fatal,
    /// and returned with the reason so the caller can log them.
    ///
    /// At most [`MAX_KEYS`] keys are kept; past them the JWKS's other keys are neither parsed
    /// nor trusted, reported as one skipped entry. A key is looked up by `kid` in a list on
    /// every request and added in turn: a JWKS of a hundred thousand keys (a misconfigured
    /// source, or a hostile one) made every request scan them and its load quadratic, where an
    /// issuer publishes two or three.
    pub fn from_jwks(jwks: &Jwks) -> (KeySet, Skipped) {
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for jwk in &jwks.keys {
            if set.entries.len() >= MAX_KEYS {
                skipped.push((
                    None,
                    JwkError::Invalid(
                        "more keys than MAX_KEYS (64) in one JWKS: the rest are left out",
                    ),
                ));
                break;
            }
            let kid = match &jwk.kid {
                Some(kid) => Ok(kid.clone()),
                None => jwk.thumbprint(),
            };
            match kid.and_then(|kid| jwk.to_verifying_key().map(|key| (kid, key))) {
                Ok((kid, key)) => set.insert(kid, key),
                Err(err) => skipped.push((jwk.kid.clone(), err)),
            }
        }
        (set, skipped)
    }

    /// Parses JWKS JSON text into a key set (see [`KeySet::from_jwks`]).
    ///
    /// # Errors
    /// The JSON error when the text is not a JWKS.
    pub fn from_jwks_json(text: &[u8]) -> Result<(KeySet, Skipped), serde_json::Error> {
        let jwks: Jwks = serde_json::from_slice(text)?;
        Ok(KeySet::from_jwks(&jwks))
    }

    /// [`KeySet::from_jwks_json`] for a JWKS fetched from where anyone may read it: a
    /// symmetric (`oct`) key there is a secret published by mistake, or planted — trusting it
    /// would let whoever read it sign tokens — so it is skipped.
    ///
    /// # Errors
    /// The JSON error when the text is not a JWKS.
    pub fn public_from_jwks_json(text: &[u8]) -> Result<(KeySet, Skipped), serde_json::Error> {
        let mut jwks: Jwks = serde_json::from_slice(text)?;
        let mut skipped = Vec::new();
        jwks.keys.retain(|jwk| {
            let public = jwk.kty != "oct";
            if !public {
                skipped.push((
                    jwk.kid.clone(),
                    JwkError::Invalid("a symmetric key in a published JWKS is never trusted"),
                ));
            }
            public
        });
        let (set, mut rest) = KeySet::from_jwks(&jwks);
        skipped.append(&mut rest);
        Ok((set, skipped))
    }

    /// Adds (or replaces) a key.
    pub fn insert(&mut self, kid: String, key: VerifyingKey) {
        self.entries.retain(|entry| entry.kid != kid);
        let decoding = key.to_decoding_key();
        self.entries.push(KeyEntry { kid, key, decoding });
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.entry(kid).map(|entry| &entry.key)
    }

    /// The only key, when there is exactly one (for tokens without `kid`).
    pub fn sole(&self) -> Option<&VerifyingKey> {
        self.sole_entry().map(|entry| &entry.key)
    }

    pub(crate) fn entry(&self, kid: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|entry| entry.kid == kid)
    }

    pub(crate) fn sole_entry(&self) -> Option<&KeyEntry> {
        match self.entries.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `kid`s, in insertion order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|entry| entry.kid.as_str())
    }

    /// Whether `other` holds the same keys under the same `kid`s, in the same order.
    pub fn same_keys(&self, other: &KeySet) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.kid == b.kid && a.key.same_material(&b.key))
    }
}

impl VerifyingKey {
    /// Whether `other` is the same key (type and material).
    fn same_material(&self, other: &VerifyingKey) -> bool {
        match (self, other) {
            (VerifyingKey::Ed25519(a), VerifyingKey::Ed25519(b)) => a.as_bytes() == b.as_bytes(),
            (VerifyingKey::P256(a), VerifyingKey::P256(b)) => a == b,
            (VerifyingKey::Hmac(a), VerifyingKey::Hmac(b)) => a.as_slice() == b.as_slice(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_rfc8037_example_matches() {
        // RFC 8037 Appendix A.3: the Ed25519 public key's thumbprint.
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()),
            ..Jwk::default()
        };
        assert_eq!(
            jwk.thumbprint().unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn thumbprint_ec_p256_matches_a_vector_computed_outside() {
        // RFC 7515 Appendix A.3's P-256 public key. Its thumbprint, the SHA-256 of
        // `{"crv":"P-256","kty":"EC","x":"…","y":"…"}` (RFC 7638: the required members only,
        // in lexicographic order, no whitespace), computed with Python's hashlib; `kid` and
        // `alg` are not part of it.
        let a = Jwk {
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: Some("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU".into()),
            y: Some("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0".into()),
            kid: Some("ignored".into()),
            alg: Some("ES256".into()),
            ..Jwk::default()
        };
        assert_eq!(
            a.thumbprint().unwrap(),
            "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"
        );
        let mut b = a.clone();
        b.kid = None;
        b.alg = None;
        assert_eq!(a.thumbprint().unwrap(), b.thumbprint().unwrap());
    }

    #[test]
    fn from_jwks_keeps_at_most_max_keys() {
        let jwk = |n: usize| Jwk {
            kty: "oct".into(),
            k: Some(b64::encode([n as u8; 32])),
            kid: Some(format!("k{n}")),
            ..Jwk::default()
        };
        let jwks = Jwks {
            keys: (0..MAX_KEYS + 1000).map(jwk).collect(),
        };
        let (set, skipped) = KeySet::from_jwks(&jwks);
        assert_eq!(set.kids().count(), MAX_KEYS);
        assert!(set.get("k0").is_some() && set.get(&format!("k{}", MAX_KEYS - 1)).is_some());
        assert!(set.get(&format!("k{MAX_KEYS}")).is_none());
        assert_eq!(skipped.len(), 1, "one entry for the rest: {skipped:?}");
        // A kid repeated replaces its key: the count is of distinct keys.
        let repeated = Jwks {
            keys: (0..MAX_KEYS + 10).map(|n| jwk(n % 3)).collect(),
        };
        let (set, skipped) = KeySet::from_jwks(&repeated);
        assert_eq!((set.kids().count(), skipped.len()), (3, 0));
    }

    #[test]
    fn to_verifying_key_rsa_unsupported() {
        let jwk = Jwk {
            kty: "RSA".into(),
            ..Jwk::default()
        };
        assert!(matches!(
            jwk.to_verifying_key(),
            Err(JwkError::Unsupported { .. })
        ));
    }

    #[test]
    fn to_verifying_key_alg_mismatch_refused() {
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()),
            alg: Some("HS256".into()),
            ..Jwk::default()
        };
        assert!(matches!(
            jwk.to_verifying_key(),
            Err(JwkError::AlgMismatch { .. })
        ));
    }

    #[test]
    fn to_verifying_key_short_hmac_refused() {
        let jwk = Jwk {
            kty: "oct".into(),
            k: Some(b64::encode([7u8; 16])),
            ..Jwk::default()
        };
        assert!(matches!(jwk.to_verifying_key(), Err(JwkError::Invalid(_))));
    }

    #[test]
    fn to_verifying_key_enc_use_refused() {
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()),
            use_: Some("enc".into()),
            ..Jwk::default()
        };
        assert!(matches!(
            jwk.to_verifying_key(),
            Err(JwkError::NotForSignatures(_))
        ));
    }

    #[test]
    fn same_keys_compares_kids_and_material() {
        let jwks = |seeds: &[u8]| {
            let keys = seeds
                .iter()
                .map(|seed| {
                    crate::SigningKey::from_seed(crate::Algorithm::EdDSA, &[*seed; 32])
                        .unwrap()
                        .jwk()
                })
                .collect();
            KeySet::from_jwks(&Jwks { keys }).0
        };
        assert!(jwks(&[1, 2]).same_keys(&jwks(&[1, 2])));
        assert!(!jwks(&[1, 2]).same_keys(&jwks(&[1, 3])));
        assert!(!jwks(&[1, 2]).same_keys(&jwks(&[2, 1])));
        assert!(!jwks(&[1]).same_keys(&jwks(&[1, 2])));
    }

    #[test]
    fn same_keys_sees_new_material_under_the_same_kid() {
        // Keys configured under fixed kids (an inline JWKS, a rotated HS256 secret): new
        // material under an unchanged kid is a different key set, or a reload keeping the old
        // set would go on trusting the replaced key. Each key type's material counts.
        let ed = |seed: u8| {
            crate::SigningKey::from_seed(Algorithm::EdDSA, &[seed; 32])
                .unwrap()
                .verifying_key()
        };
        let ec = |seed: u8| {
            crate::SigningKey::from_seed(Algorithm::ES256, &[seed; 32])
                .unwrap()
                .verifying_key()
        };
        let hs = |seed: u8| VerifyingKey::Hmac(zeroize::Zeroizing::new(vec![seed; 32]));
        let set = |key: VerifyingKey| {
            let mut set = KeySet::default();
            set.insert("main".into(), key);
            set
        };
        for (one, same, other) in [
            (ed(1), ed(1), ed(2)),
            (ec(1), ec(1), ec(2)),
            (hs(1), hs(1), hs(2)),
        ] {
            let kind = format!("{one:?}");
            assert!(set(one.clone()).same_keys(&set(same)), "{kind}: same key");
            assert!(!set(one).same_keys(&set(other)), "{kind}: new material");
        }
        // The same secret bytes as another type of key are not the same key.
        assert!(!set(hs(1)).same_keys(&set(ed(1))));
    }

    #[test]
    fn sole_and_is_empty_follow_the_key_count() {
        // A token without `kid` is checked against the sole key only; a set with no usable
        // key is what the filter refuses to load.
        let key = |seed: u8| VerifyingKey::Hmac(zeroize::Zeroizing::new(vec![seed; 32]));
        let mut set = KeySet::default();
        assert!(set.is_empty());
        assert!(set.sole().is_none());
        set.insert("a".into(), key(1));
        assert!(!set.is_empty());
        assert!(set.sole().is_some_and(|sole| sole.same_material(&key(1))));
        set.insert("b".into(), key(2));
        assert!(set.sole().is_none());
        // Re-inserting a kid replaces its key rather than adding one.
        set.insert("b".into(), key(3));
        assert_eq!(set.len(), 2);
        assert!(set.get("b").is_some_and(|b| b.same_material(&key(3))));
    }

    #[test]
    fn public_from_jwks_skips_symmetric_keys() {
        let text = br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
            {"kty":"OKP","crv":"Ed25519","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let (all, _) = KeySet::from_jwks_json(text).unwrap();
        assert_eq!(all.len(), 2, "an inline JWKS may hold the HS256 secret");
        let (public, skipped) = KeySet::public_from_jwks_json(text).unwrap();
        assert_eq!(public.kids().collect::<Vec<_>>(), ["e"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0.as_deref(), Some("h"));
    }

    #[test]
    fn debug_names_the_key_type_never_the_secret() {
        // Key sets are logged (the filter's and the issuer's reloads): the output says which
        // kind of key and which kid, and an HMAC secret never appears in it.
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let hmac = VerifyingKey::Hmac(zeroize::Zeroizing::new(secret.clone()));
        assert_eq!(format!("{hmac:?}"), "VerifyingKey::Hmac");
        let ed = Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into()),
            ..Jwk::default()
        }
        .to_verifying_key()
        .unwrap();
        assert_eq!(format!("{ed:?}"), "VerifyingKey::Ed25519");
        let mut set = KeySet::default();
        set.insert("k-hmac".into(), hmac);
        let text = format!("{set:?}");
        assert!(text.contains("k-hmac"), "{text}");
        assert!(text.contains("VerifyingKey::Hmac"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(!text.contains(&format!("{secret:?}")), "{text}");
    }

    #[test]
    fn from_jwks_skips_unsupported_keeps_rest() {
        let text = br#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let (set, skipped) = KeySet::from_jwks_json(text).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 1);
        // No kid given: the thumbprint becomes the kid.
        assert!(set
            .get("kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k")
            .is_some());
    }
}
