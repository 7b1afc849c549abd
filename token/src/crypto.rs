//! weauth's [`jsonwebtoken`] crypto provider: EdDSA (Ed25519), ES256 and HS256, and nothing else.
//!
//! `jsonwebtoken` 11 leaves its cryptography to a process-wide `CryptoProvider`. Its own
//! RustCrypto provider (the `rust_crypto` feature) is one feature that links `rsa`, `p384`,
//! `hmac`, `rand` and `sha2` along with `ed25519-dalek` and `p256`, and its algorithm dispatch
//! keeps the RSA code reachable, so LTO cannot drop it: the filter's wasm module was
//! 1 552 394 bytes with it (issue 22 §5, docs/PERFORMANCE.md "Module size"). This provider does
//! what that one does for the three algorithms weauth signs and verifies, with the same crates
//! and the same calls (so a token signs to the same bytes and verifies the same way), and
//! refuses every other algorithm with an error, never a panic.
//!
//! [`install`] makes it the process default. Every `jsonwebtoken` call in this crate comes after
//! it ([`crate::jws`]); without it the crate, built with no provider feature, would panic on the
//! first token. When another provider was installed first (a program that links this crate next
//! to its own `jsonwebtoken` use), that one is used: `jsonwebtoken` allows one per process.
//!
//! | algorithm | signer | verifier |
//! |---|---|---|
//! | EdDSA | `ed25519-dalek` `sign`, key from PKCS#8 DER (the last one parsed kept per thread) | dalek `verify` (refuses a non-canonical `S`), key = the 32 public bytes |
//! | ES256 | `p256` `sign_recoverable` (RFC 6979), key from PKCS#8 DER | `p256` `verify` (accepts high-`S`: [`crate::jws`] refuses it first), key = SEC1 point |
//! | HS256 | HMAC-SHA256 | HMAC-SHA256, constant-time comparison |
//!
//! The signers exist with the crate's `sign` feature only (the issuer's build); the edge filter's
//! build has verifiers alone, and its table entry for signers refuses every algorithm.
//!
//! Of the JWK helpers only SHA-256 digests are offered; weauth computes its thumbprints itself
//! (`jwk.rs`) and never asks `jsonwebtoken` for one.

use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{new_error, Error, ErrorKind, Result};
use jsonwebtoken::jwk::ThumbprintHash;
#[cfg(feature = "sign")]
use jsonwebtoken::signature::Signer;
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
#[cfg(feature = "sign")]
use p256::pkcs8::DecodePrivateKey;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The provider: see the module docs.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(unsupported()),
        rsa_pub_components_from_public_key: |_| Err(unsupported()),
        ec_pub_components_from_private_key: |_, _| Err(unsupported()),
        ed_pub_components_from_private_key: |_, _| Err(unsupported()),
        compute_digest,
    },
};

/// Makes [`PROVIDER`] the process default, once; later calls cost one atomic load. Called before
/// every `jsonwebtoken` call in this crate.
pub fn install() {
    // `Err` means a provider is already installed: this one by an earlier call, or (see the
    // module docs) another program's own, which then stays.
    let _ = PROVIDER.install_default();
}

/// What this provider answers for an algorithm or a helper it does not offer.
fn unsupported() -> Error {
    new_error(ErrorKind::Provider(
        "weauth's crypto provider offers EdDSA, ES256 and HS256 only".into(),
    ))
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    match hash {
        ThumbprintHash::SHA256 => Ok(Sha256::digest(data).to_vec()),
        // SHA-384, SHA-512 and whatever a later version adds (the enum is non-exhaustive).
        _ => Err(unsupported()),
    }
}

/// Refuses a key of another family than `alg`'s (`InvalidKeyFormat`, as the crate's own
/// providers do): the crate hands any key to any algorithm's factory.
fn require_family(alg: Algorithm, family: AlgorithmFamily) -> Result<()> {
    if alg.family() == family {
        Ok(())
    } else {
        Err(new_error(ErrorKind::InvalidKeyFormat))
    }
}

/// Without the `sign` feature (the edge filter's build) there are no signers: the table entry
/// refuses, and the signing code is not linked.
#[cfg(not(feature = "sign"))]
fn new_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(unsupported())
}

/// The Ed25519 signing key of PKCS#8 `der`. `jsonwebtoken` hands the signer factory the key's
/// DER for every token it signs, and parsing it derives the public key (a scalar
/// multiplication as costly as the signature): the key last parsed on this thread is kept,
/// with its DER, and used again while the same DER comes — an issuer signs with one key for
/// weeks. Measured with `weauth_bench::issuer::signing_rate` (one thread): 20 000 tokens/s
/// without this, 43 000 with it. The copy is zeroized when replaced and with its thread.
#[cfg(feature = "sign")]
fn ed_signing_key(der: &[u8]) -> Result<ed25519_dalek::SigningKey> {
    type Parsed = (zeroize::Zeroizing<Vec<u8>>, ed25519_dalek::SigningKey);
    thread_local! {
        static LAST: std::cell::RefCell<Option<Parsed>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((bytes, key)) = last.as_ref() {
            // Both are the issuer's own keys, never a client's bytes: no timing to hide.
            if bytes.as_slice() == der {
                return Ok(key.clone());
            }
        }
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|_| ErrorKind::InvalidEddsaKey)?;
        *last = Some((zeroize::Zeroizing::new(der.to_vec()), key.clone()));
        Ok(key)
    })
}

#[cfg(feature = "sign")]
fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    require_family(*alg, key.family())?;
    Ok(match alg {
        Algorithm::EdDSA => Box::new(EdDsaSigner(ed_signing_key(key.as_bytes())?)),
        Algorithm::ES256 => Box::new(Es256Signer(
            p256::ecdsa::SigningKey::from_pkcs8_der(key.as_bytes())
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
        )),
        Algorithm::HS256 => Box::new(Hs256Signer(
            HmacSha256::new_from_slice(key.as_bytes()).map_err(|_| ErrorKind::InvalidKeyFormat)?,
        )),
        _ => return Err(unsupported()),
    })
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    require_family(*alg, key.family())?;
    let bytes = key.try_get_as_bytes()?;
    Ok(match alg {
        Algorithm::EdDSA => {
            let public: &[u8; 32] = bytes.try_into().map_err(|_| ErrorKind::InvalidEddsaKey)?;
            Box::new(EdDsaVerifier(
                ed25519_dalek::VerifyingKey::from_bytes(public)
                    .map_err(|_| ErrorKind::InvalidEddsaKey)?,
            ))
        }
        Algorithm::ES256 => Box::new(Es256Verifier(
            p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
        )),
        Algorithm::HS256 => Box::new(Hs256Verifier(
            HmacSha256::new_from_slice(bytes).map_err(|_| ErrorKind::InvalidKeyFormat)?,
        )),
        _ => return Err(unsupported()),
    })
}

#[cfg(feature = "sign")]
struct EdDsaSigner(ed25519_dalek::SigningKey);

#[cfg(feature = "sign")]
impl Signer<Vec<u8>> for EdDsaSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

#[cfg(feature = "sign")]
impl JwtSigner for EdDsaSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdDsaVerifier(ed25519_dalek::VerifyingKey);

impl Verifier<Vec<u8>> for EdDsaVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        self.0
            .verify(msg, &ed25519_dalek::Signature::from_slice(sig)?)
    }
}

impl JwtVerifier for EdDsaVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(feature = "sign")]
struct Es256Signer(p256::ecdsa::SigningKey);

#[cfg(feature = "sign")]
impl Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        // `sign_recoverable`, as the crate's own provider: the same (RFC 6979) signature bytes,
        // high-`S` about half the time; `jws::sign` rewrites those to low-`S`.
        let (sig, _) = self.0.sign_recoverable(msg)?;
        Ok(sig.to_vec())
    }
}

#[cfg(feature = "sign")]
impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

struct Es256Verifier(p256::ecdsa::VerifyingKey);

impl Verifier<Vec<u8>> for Es256Verifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        self.0
            .verify(msg, &p256::ecdsa::Signature::from_slice(sig)?)
    }
}

impl JwtVerifier for Es256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

#[cfg(feature = "sign")]
struct Hs256Signer(HmacSha256);

#[cfg(feature = "sign")]
impl Signer<Vec<u8>> for Hs256Signer {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

#[cfg(feature = "sign")]
impl JwtSigner for Hs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

struct Hs256Verifier(HmacSha256);

impl Verifier<Vec<u8>> for Hs256Verifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        // `verify_slice` compares in constant time and refuses a truncated tag.
        mac.verify_slice(sig).map_err(signature::Error::from_source)
    }
}

impl JwtVerifier for Hs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

#[cfg(test)]
#[cfg(feature = "sign")]
mod tests {
    use super::*;
    use crate::jws::SigningKey as WeauthSigningKey;
    use jsonwebtoken::jwk::EllipticCurve;

    const MSG: &[u8] = b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0";

    fn verifier(alg: Algorithm, key: &DecodingKey) -> Option<Box<dyn JwtVerifier>> {
        new_verifier(&alg, key).ok()
    }

    /// The decoding key `KeySet` builds for a key made from `seed`, and that key's signature over
    /// [`MSG`] by this provider's signer.
    fn signed(alg: crate::Algorithm, seed: u8) -> (DecodingKey, Vec<u8>) {
        let key = WeauthSigningKey::from_seed(alg, &[seed; 32]).unwrap();
        let signature = key.sign_input(MSG).unwrap();
        (key.verifying_key().to_decoding_key(), signature)
    }

    /// The Ed25519 key kept from the last token (`ed_signing_key`) signs only while the same
    /// key comes: keys taken in turn on one thread each sign with their own, as a fresh
    /// parse of each would.
    #[test]
    fn ed25519_keys_in_turn_on_one_thread_each_sign_with_their_own() {
        for seed in [1, 2, 1, 3, 3, 2] {
            let key = WeauthSigningKey::from_seed(crate::Algorithm::EdDSA, &[seed; 32]).unwrap();
            let fresh = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
            assert_eq!(
                key.sign_input(MSG).unwrap(),
                fresh.sign(MSG).to_bytes().to_vec(),
                "key {seed}"
            );
        }
    }

    #[test]
    fn provider_each_algorithm_sign_then_verify_ok() {
        for (alg, ours) in [
            (Algorithm::EdDSA, crate::Algorithm::EdDSA),
            (Algorithm::ES256, crate::Algorithm::ES256),
            (Algorithm::HS256, crate::Algorithm::HS256),
        ] {
            let (key, signature) = signed(ours, 7);
            let verifier = verifier(alg, &key).unwrap();
            assert_eq!(verifier.algorithm(), alg);
            assert!(verifier.verify(MSG, &signature).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn provider_bad_signature_refused() {
        for (alg, ours) in [
            (Algorithm::EdDSA, crate::Algorithm::EdDSA),
            (Algorithm::ES256, crate::Algorithm::ES256),
            (Algorithm::HS256, crate::Algorithm::HS256),
        ] {
            let (key, signature) = signed(ours, 7);
            let verifier = verifier(alg, &key).unwrap();
            let mut flipped = signature.clone();
            flipped[5] ^= 0x40;
            assert!(verifier.verify(MSG, &flipped).is_err(), "{alg:?} flipped");
            assert!(
                verifier.verify(b"other input", &signature).is_err(),
                "{alg:?} other input"
            );
            let short = signature[..signature.len() - 1].to_vec();
            assert!(verifier.verify(MSG, &short).is_err(), "{alg:?} short");
            assert!(verifier.verify(MSG, &Vec::new()).is_err(), "{alg:?} empty");
        }
    }

    #[test]
    fn provider_signature_by_another_key_refused() {
        for ours in [
            crate::Algorithm::EdDSA,
            crate::Algorithm::ES256,
            crate::Algorithm::HS256,
        ] {
            let (key, _) = signed(ours, 7);
            let (_, other) = signed(ours, 8);
            let verifier = verifier(crate::jws::jwt_alg(ours), &key).unwrap();
            assert!(verifier.verify(MSG, &other).is_err(), "{ours}");
        }
    }

    #[test]
    fn provider_es256_high_s_twin_verifies_here_so_jws_refuses_it_first() {
        // ECDSA's (r, n - s) twin is a valid signature to p256; `jws::verify` must refuse it
        // before this provider runs (jws.rs: verify_es256_high_s_twin_refused).
        let (key, signature) = signed(crate::Algorithm::ES256, 7);
        let sig = p256::ecdsa::Signature::from_slice(&signature).unwrap();
        let (r, s) = sig.split_scalars();
        let twin = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        let verifier = verifier(Algorithm::ES256, &key).unwrap();
        assert!(verifier.verify(MSG, &twin.to_vec()).is_ok());
    }

    #[test]
    fn provider_key_of_other_family_refused() {
        let (ed, _) = signed(crate::Algorithm::EdDSA, 7);
        let (ec, _) = signed(crate::Algorithm::ES256, 7);
        let (hs, _) = signed(crate::Algorithm::HS256, 7);
        for (alg, key) in [
            (Algorithm::EdDSA, &ec),
            (Algorithm::EdDSA, &hs),
            (Algorithm::ES256, &ed),
            (Algorithm::ES256, &hs),
            (Algorithm::HS256, &ed),
            (Algorithm::HS256, &ec),
        ] {
            assert!(
                verifier(alg, key).is_none(),
                "{alg:?} with {:?}",
                key.family()
            );
        }
    }

    #[test]
    fn provider_other_algorithms_refused_without_panic() {
        let secret = DecodingKey::from_secret(&[1u8; 32]);
        let (ec, _) = signed(crate::Algorithm::ES256, 7);
        let rsa = DecodingKey::from_rsa_raw_components(&[0xc3; 256], &[1, 0, 1]);
        for (alg, key) in [
            (Algorithm::HS384, &secret),
            (Algorithm::HS512, &secret),
            (Algorithm::ES384, &ec),
            (Algorithm::RS256, &rsa),
            (Algorithm::PS256, &rsa),
            (Algorithm::RS512, &rsa),
        ] {
            assert!(verifier(alg, key).is_none(), "{alg:?}");
        }
        let encoding = EncodingKey::from_secret(&[1u8; 32]);
        assert!(new_signer(&Algorithm::HS512, &encoding).is_err());
        assert!(new_signer(&Algorithm::RS256, &EncodingKey::from_rsa_der(&[0x30])).is_err());
    }

    #[test]
    fn provider_malformed_keys_refused_without_panic() {
        // The crate's own EdDSA verifier slices the key's first 32 bytes, which panics on a
        // shorter key; this one refuses any length but 32.
        for bytes in [&[][..], &[9u8; 31][..], &[9u8; 33][..]] {
            let key = DecodingKey::from_ed_der(bytes);
            assert!(verifier(Algorithm::EdDSA, &key).is_none());
        }
        let not_a_point = DecodingKey::from_ec_der(&[4u8; 65]);
        assert!(verifier(Algorithm::ES256, &not_a_point).is_none());
        for der in [&[][..], &[0x30, 0x03, 0x02, 0x01, 0x00][..]] {
            assert!(new_signer(&Algorithm::EdDSA, &EncodingKey::from_ed_der(der)).is_err());
            assert!(new_signer(&Algorithm::ES256, &EncodingKey::from_ec_der(der)).is_err());
        }
    }

    #[test]
    fn provider_digest_sha256_only() {
        let digest = (PROVIDER.key_utils.compute_digest)(b"abc", ThumbprintHash::SHA256).unwrap();
        assert_eq!(digest, Sha256::digest(b"abc").to_vec());
        assert!((PROVIDER.key_utils.compute_digest)(b"abc", ThumbprintHash::SHA384).is_err());
        assert!((PROVIDER.key_utils.rsa_pub_components_from_public_key)(&[0x30]).is_err());
        assert!(
            (PROVIDER.key_utils.ec_pub_components_from_private_key)(&[0x30], Algorithm::ES256)
                .is_err()
        );
        assert!((PROVIDER.key_utils.ed_pub_components_from_private_key)(
            &[0x30],
            &EllipticCurve::Ed25519
        )
        .is_err());
    }
}
