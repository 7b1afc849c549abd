//! Compact JWS: signing weauth access tokens and verifying them.
//!
//! Verification order (STYLE.md habit 6): size, shape, header, the pinned algorithm
//! allow-list, the key (whose own type fixes the algorithm), the signature, then the claims
//! (`exp`/`nbf`/`iat` with leeway, `iss`, `aud`) and the token type. Revocation is the
//! caller's last step: it needs state this crate does not hold.

use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::b64;
use crate::claims::Claims;
use crate::jwk::{Algorithm, Jwk, JwkError, KeySet, VerifyingKey};
use crate::ACCESS_TOKEN_TYP;

/// The JOSE header. Members weauth never uses but an attacker might (`jku`, `x5u`, `x5c`,
/// `jwk`, `crit`) are captured so that their presence can be refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing)]
    pub crit: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub jku: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub x5u: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub x5c: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub jwk: Option<serde_json::Value>,
}

/// A private (or, for HS256, shared) signing key.
pub enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    Hmac(zeroize::Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey::{}", self.algorithm())
    }
}

/// Why a signing key could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the random seed does not make a valid {0} key; draw another")]
    BadSeed(Algorithm),
    #[error("the PEM is not a PKCS#8 {0} private key")]
    BadPem(Algorithm),
    #[error("an HS256 secret must be at least 32 bytes")]
    ShortSecret,
    #[error("{0} keys have no PEM form here")]
    NoPem(Algorithm),
}

impl SigningKey {
    /// Builds a key of `alg` from 32 random bytes the caller drew from a CSPRNG.
    ///
    /// # Errors
    /// [`KeyError::BadSeed`] for the (astronomically rare) P-256 seed outside the scalar
    /// range: draw again.
    pub fn from_seed(alg: Algorithm, seed: &[u8; 32]) -> Result<SigningKey, KeyError> {
        Ok(match alg {
            Algorithm::EdDSA => SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(seed)),
            Algorithm::ES256 => SigningKey::P256(
                p256::ecdsa::SigningKey::from_slice(seed).map_err(|_| KeyError::BadSeed(alg))?,
            ),
            Algorithm::HS256 => SigningKey::Hmac(zeroize::Zeroizing::new(seed.to_vec())),
        })
    }

    /// An HS256 key from a shared secret of at least 32 bytes.
    ///
    /// # Errors
    /// [`KeyError::ShortSecret`] below 32 bytes.
    pub fn hmac(secret: &[u8]) -> Result<SigningKey, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::ShortSecret);
        }
        Ok(SigningKey::Hmac(zeroize::Zeroizing::new(secret.to_vec())))
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`) of `alg`.
    ///
    /// # Errors
    /// [`KeyError::BadPem`] when the PEM is not such a key, [`KeyError::NoPem`] for HS256.
    pub fn from_pkcs8_pem(alg: Algorithm, pem: &str) -> Result<SigningKey, KeyError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        match alg {
            Algorithm::EdDSA => ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                .map(SigningKey::Ed25519)
                .map_err(|_| KeyError::BadPem(alg)),
            Algorithm::ES256 => p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
                .map(SigningKey::P256)
                .map_err(|_| KeyError::BadPem(alg)),
            Algorithm::HS256 => Err(KeyError::NoPem(alg)),
        }
    }

    /// Writes the key as PKCS#8 PEM (zeroized on drop).
    ///
    /// # Errors
    /// [`KeyError::NoPem`] for HS256 or an encoder failure.
    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        match self {
            SigningKey::Ed25519(key) => key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| KeyError::NoPem(Algorithm::EdDSA)),
            SigningKey::P256(key) => key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| KeyError::NoPem(Algorithm::ES256)),
            SigningKey::Hmac(_) => Err(KeyError::NoPem(Algorithm::HS256)),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Ed25519(_) => Algorithm::EdDSA,
            SigningKey::P256(_) => Algorithm::ES256,
            SigningKey::Hmac(_) => Algorithm::HS256,
        }
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::Ed25519(key) => VerifyingKey::Ed25519(key.verifying_key()),
            SigningKey::P256(key) => VerifyingKey::P256(*key.verifying_key()),
            SigningKey::Hmac(secret) => VerifyingKey::Hmac(secret.clone()),
        }
    }

    /// The public JWK with `kid` (RFC 7638 thumbprint), `alg` and `use: sig`. For HS256 this
    /// contains the secret: never publish it, only hand it to verifiers' private config.
    pub fn jwk(&self) -> Jwk {
        let mut jwk = self.verifying_key().to_jwk();
        jwk.kid = jwk.thumbprint().ok();
        jwk.alg = Some(self.algorithm().as_str().to_string());
        jwk.use_ = Some("sig".into());
        jwk
    }

    /// The key id: the RFC 7638 thumbprint of the public (or shared) key.
    pub fn kid(&self) -> String {
        // Thumbprints of keys we built ourselves cannot fail: every member is present.
        self.verifying_key()
            .to_jwk()
            .thumbprint()
            .unwrap_or_default()
    }

    /// Signs an arbitrary JWS signing input (`b64(header).b64(payload)`) and returns the raw
    /// signature. [`sign`] is the way to mint tokens; this exists for tests that forge tokens
    /// with unusual headers or payloads, correctly signed, to prove verifiers refuse them.
    pub fn sign_input(&self, input: &[u8]) -> Vec<u8> {
        self.sign_bytes(input)
    }

    fn sign_bytes(&self, input: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed25519(key) => {
                let signature: ed25519_dalek::Signature = key.sign(input);
                signature.to_bytes().to_vec()
            }
            SigningKey::P256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(input);
                // Low-S form, the one spelling verifiers accept (see `check_signature`).
                signature
                    .normalize_s()
                    .unwrap_or(signature)
                    .to_bytes()
                    .to_vec()
            }
            SigningKey::Hmac(secret) => hmac_sha256(secret, input),
        }
    }
}

fn hmac_sha256(secret: &[u8], input: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Signs `claims` as a weauth access token (`typ: at+jwt`, `kid` = the key's thumbprint).
///
/// # Errors
/// Only if the claims cannot be serialized (they always can).
pub fn sign(claims: &Claims, key: &SigningKey) -> Result<String, serde_json::Error> {
    let header = Header {
        alg: key.algorithm().as_str().to_string(),
        typ: Some(ACCESS_TOKEN_TYP.to_string()),
        kid: Some(key.kid()),
        crit: None,
        jku: None,
        x5u: None,
        x5c: None,
        jwk: None,
    };
    let mut token = b64::encode(serde_json::to_vec(&header)?);
    token.push('.');
    token.push_str(&b64::encode(serde_json::to_vec(claims)?));
    let signature = key.sign_bytes(token.as_bytes());
    token.push('.');
    token.push_str(&b64::encode(signature));
    Ok(token)
}

/// What a verifier accepts.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Required `iss`, compared exactly.
    pub issuer: String,
    /// Accepted audiences: the token's `aud` must contain at least one.
    pub audiences: Vec<String>,
    /// The pinned algorithm allow-list. Default: EdDSA only.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds. Default 60.
    pub leeway: i64,
    /// Longest token accepted, in bytes. Default 8192.
    pub max_token_bytes: usize,
}

impl Validation {
    /// A validation with the defaults above for `issuer` and `audiences`.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Validation {
        Validation {
            issuer: issuer.into(),
            audiences,
            algorithms: vec![Algorithm::EdDSA],
            leeway: 60,
            max_token_bytes: 8192,
        }
    }
}

/// Why a token was refused. `Display` is safe to show a client (no token content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("the token's header carries `{0}`, which is not accepted")]
    ForbiddenHeader(&'static str),
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token's algorithm does not match its key")]
    KeyAlgorithmMismatch,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token is not an access token")]
    WrongType,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
}

impl VerifyError {
    /// A short stable reason, for metrics and logs (`expired`, `bad_signature`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::TooLarge(_) => "too_large",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::AlgorithmNotAllowed => "alg_not_allowed",
            VerifyError::ForbiddenHeader(_) => "forbidden_header",
            VerifyError::UnknownKey => "unknown_kid",
            VerifyError::KeyAlgorithmMismatch => "key_alg_mismatch",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::WrongType => "wrong_type",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::IssuedInFuture => "issued_in_future",
            VerifyError::WrongIssuer => "wrong_issuer",
            VerifyError::WrongAudience => "wrong_audience",
        }
    }
}

/// A token split and decoded, signature not yet checked.
struct Parts<'a> {
    header: Header,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

fn split(token: &str, max: usize) -> Result<Parts<'_>, VerifyError> {
    if token.len() > max {
        return Err(VerifyError::TooLarge(max));
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(VerifyError::Malformed("a JWS has exactly three segments"));
    };
    let header_bytes =
        b64::decode(header_b64).map_err(|_| VerifyError::Malformed("header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|_| VerifyError::Malformed("header is not a JSON object of strings"))?;
    let payload =
        b64::decode(payload_b64).map_err(|_| VerifyError::Malformed("payload is not base64url"))?;
    let signature = b64::decode(signature_b64)
        .map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    Ok(Parts {
        header,
        signing_input,
        payload,
        signature,
    })
}

fn check_header(header: &Header, allowed: &[Algorithm]) -> Result<Algorithm, VerifyError> {
    // The allow-list comes first: `none`, `None`, `RS256`, anything unlisted stops here.
    let alg = Algorithm::from_name(&header.alg)
        .filter(|alg| allowed.contains(alg))
        .ok_or(VerifyError::AlgorithmNotAllowed)?;
    let forbidden = [
        ("crit", header.crit.is_some()),
        ("jku", header.jku.is_some()),
        ("x5u", header.x5u.is_some()),
        ("x5c", header.x5c.is_some()),
        ("jwk", header.jwk.is_some()),
    ];
    if let Some((name, _)) = forbidden.iter().find(|(_, present)| *present) {
        return Err(VerifyError::ForbiddenHeader(name));
    }
    match header.typ.as_deref() {
        Some(typ) if typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) => Ok(alg),
        Some(typ) if typ.eq_ignore_ascii_case("application/at+jwt") => Ok(alg),
        _ => Err(VerifyError::WrongType),
    }
}

fn check_signature(key: &VerifyingKey, input: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
    let ok = match key {
        VerifyingKey::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
            .map(|sig| key.verify_strict(input, &sig).is_ok())
            .unwrap_or(false),
        // ECDSA signatures are malleable: (r, n - s) verifies too. Accepting only low-S keeps
        // one spelling per token, so nothing keyed by the token text sees two tokens.
        VerifyingKey::P256(key) => p256::ecdsa::Signature::from_slice(signature)
            .map(|sig| sig.normalize_s().is_none() && key.verify(input, &sig).is_ok())
            .unwrap_or(false),
        VerifyingKey::Hmac(secret) => match Hmac::<Sha256>::new_from_slice(secret) {
            Ok(mut mac) => {
                mac.update(input);
                mac.verify_slice(signature).is_ok()
            }
            Err(_) => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

fn check_claims(claims: &Claims, v: &Validation, now: i64) -> Result<(), VerifyError> {
    if claims.exp.saturating_add(v.leeway) <= now {
        return Err(VerifyError::Expired);
    }
    if claims.nbf.saturating_sub(v.leeway) > now {
        return Err(VerifyError::NotYetValid);
    }
    if claims.iat.saturating_sub(v.leeway) > now {
        return Err(VerifyError::IssuedInFuture);
    }
    if claims.iss != v.issuer {
        return Err(VerifyError::WrongIssuer);
    }
    if !claims.aud.contains_any(&v.audiences) {
        return Err(VerifyError::WrongAudience);
    }
    Ok(())
}

/// Verifies a compact JWS access token at time `now` (unix seconds) and returns its claims.
///
/// A token without `kid` is checked against the set's only key, when it has exactly one.
///
/// # Errors
/// The first check that failed, in the order given in the module docs.
pub fn verify(
    token: &str,
    keys: &KeySet,
    validation: &Validation,
    now: i64,
) -> Result<Claims, VerifyError> {
    let parts = split(token, validation.max_token_bytes)?;
    let alg = check_header(&parts.header, &validation.algorithms)?;
    let key = match parts.header.kid.as_deref() {
        Some(kid) => keys.get(kid),
        None => keys.sole(),
    }
    .ok_or(VerifyError::UnknownKey)?;
    if key.algorithm() != alg {
        return Err(VerifyError::KeyAlgorithmMismatch);
    }
    check_signature(key, parts.signing_input.as_bytes(), &parts.signature)?;
    let claims: Claims = serde_json::from_slice(&parts.payload)
        .map_err(|_| VerifyError::Malformed("payload is not a valid claims set"))?;
    check_claims(&claims, validation, now)?;
    Ok(claims)
}

/// Reads a JWK into a verifying key (re-exported for callers that hold single keys).
///
/// # Errors
/// See [`Jwk::to_verifying_key`].
pub fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, JwkError> {
    jwk.to_verifying_key()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::tests::sample;
    use crate::claims::Audience;

    const NOW: i64 = 1_700_000_000;

    fn ed_key() -> SigningKey {
        SigningKey::from_seed(Algorithm::EdDSA, &[1u8; 32]).unwrap()
    }

    fn setup(key: &SigningKey) -> (KeySet, Validation) {
        let mut keys = KeySet::default();
        keys.insert(key.kid(), key.verifying_key());
        let mut validation = Validation::new("https://issuer.example", vec!["weauth".into()]);
        validation.algorithms = vec![key.algorithm()];
        (keys, validation)
    }

    fn forge(header: &str, payload: &str, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64::encode(header),
            b64::encode(payload),
            b64::encode(signature)
        )
    }

    fn resign(key: &SigningKey, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
        let sig = key.sign_bytes(input.as_bytes());
        format!("{input}.{}", b64::encode(sig))
    }

    #[test]
    fn verify_each_algorithm_roundtrip_ok() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::HS256] {
            let key = SigningKey::from_seed(alg, &[3u8; 32]).unwrap();
            let (keys, validation) = setup(&key);
            let token = sign(&sample(NOW), &key).unwrap();
            assert_eq!(
                verify(&token, &keys, &validation, NOW).unwrap(),
                sample(NOW)
            );
        }
    }

    #[test]
    fn verify_alg_none_any_case_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let payload = serde_json::to_string(&sample(NOW)).unwrap();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let token = forge(
                &format!(r#"{{"alg":"{alg}","typ":"at+jwt"}}"#),
                &payload,
                b"",
            );
            assert_eq!(
                verify(&token, &keys, &validation, NOW),
                Err(VerifyError::AlgorithmNotAllowed)
            );
        }
    }

    #[test]
    fn verify_hs256_with_public_key_as_secret_refused() {
        // Algorithm confusion: HS256 "signed" with the Ed25519 public key bytes.
        let key = ed_key();
        let (keys, mut validation) = setup(&key);
        validation.algorithms = vec![Algorithm::EdDSA, Algorithm::HS256];
        let public = match key.verifying_key() {
            VerifyingKey::Ed25519(public) => public.to_bytes(),
            _ => unreachable!(),
        };
        let mut secret = public.to_vec();
        secret.resize(32, 0);
        let hs = SigningKey::Hmac(zeroize::Zeroizing::new(secret));
        let header = format!(r#"{{"alg":"HS256","typ":"at+jwt","kid":"{}"}}"#, key.kid());
        let token = resign(&hs, &header, &serde_json::to_string(&sample(NOW)).unwrap());
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::KeyAlgorithmMismatch)
        );
    }

    #[test]
    fn verify_alg_not_in_allow_list_refused() {
        let key = SigningKey::from_seed(Algorithm::ES256, &[5u8; 32]).unwrap();
        let (keys, mut validation) = setup(&key);
        validation.algorithms = vec![Algorithm::EdDSA];
        let token = sign(&sample(NOW), &key).unwrap();
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn verify_forbidden_headers_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let payload = serde_json::to_string(&sample(NOW)).unwrap();
        for member in ["crit", "jku", "x5u", "x5c", "jwk"] {
            let header = format!(
                r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}","{member}":["x"]}}"#,
                key.kid()
            );
            let token = resign(&key, &header, &payload);
            assert_eq!(
                verify(&token, &keys, &validation, NOW),
                Err(VerifyError::ForbiddenHeader(member)),
                "{member}"
            );
        }
    }

    #[test]
    fn verify_unknown_kid_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let header = r#"{"alg":"EdDSA","typ":"at+jwt","kid":"../../etc/passwd"}"#;
        let token = resign(&key, header, &serde_json::to_string(&sample(NOW)).unwrap());
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::UnknownKey)
        );
    }

    #[test]
    fn verify_wrong_typ_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let payload = serde_json::to_string(&sample(NOW)).unwrap();
        for header in [
            format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, key.kid()),
            format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, key.kid()),
        ] {
            let token = resign(&key, &header, &payload);
            assert_eq!(
                verify(&token, &keys, &validation, NOW),
                Err(VerifyError::WrongType)
            );
        }
    }

    #[test]
    fn verify_tampered_payload_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let token = sign(&sample(NOW), &key).unwrap();
        let mut claims = sample(NOW);
        claims.sub = "admin".into();
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64::encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            verify(&forged, &keys, &validation, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn verify_tampered_signature_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let token = sign(&sample(NOW), &key).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut bytes = b64::decode(sig).unwrap();
        bytes[0] ^= 1;
        let forged = format!("{input}.{}", b64::encode(bytes));
        assert_eq!(
            verify(&forged, &keys, &validation, NOW),
            Err(VerifyError::BadSignature)
        );
        let truncated = format!("{input}.{}", b64::encode(&b64::decode(sig).unwrap()[..60]));
        assert_eq!(
            verify(&truncated, &keys, &validation, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn verify_es256_high_s_twin_refused() {
        let key = SigningKey::from_seed(Algorithm::ES256, &[5u8; 32]).unwrap();
        let (keys, validation) = setup(&key);
        let token = sign(&sample(NOW), &key).unwrap();
        assert!(verify(&token, &keys, &validation, NOW).is_ok());
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&b64::decode(sig).unwrap()).unwrap();
        let (r, s) = sig.split_scalars();
        let twin = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        let forged = format!("{input}.{}", b64::encode(twin.to_bytes()));
        assert_eq!(
            verify(&forged, &keys, &validation, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn verify_segment_count_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let token = sign(&sample(NOW), &key).unwrap();
        for bad in [
            token.rsplit_once('.').unwrap().0.to_string(),
            format!("{token}.extra"),
            String::new(),
            "...".into(),
        ] {
            assert!(matches!(
                verify(&bad, &keys, &validation, NOW),
                Err(VerifyError::Malformed(_))
            ));
        }
    }

    #[test]
    fn verify_padded_or_non_json_segments_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let token = sign(&sample(NOW), &key).unwrap();
        let padded = token.replacen('.', "=.", 1);
        assert!(matches!(
            verify(&padded, &keys, &validation, NOW),
            Err(VerifyError::Malformed(_))
        ));
        let not_json = forge("not json", "{}", b"sig");
        assert!(matches!(
            verify(&not_json, &keys, &validation, NOW),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn verify_payload_not_claims_refused_after_signature() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let header = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#, key.kid());
        let token = resign(&key, &header, r#"{"sub":"x","sub":"y"}"#);
        assert!(matches!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn verify_too_large_refused_before_parsing() {
        let key = ed_key();
        let (keys, mut validation) = setup(&key);
        validation.max_token_bytes = 100;
        let token = sign(&sample(NOW), &key).unwrap();
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::TooLarge(100))
        );
    }

    #[test]
    fn verify_time_claims_with_leeway() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let claims = sample(NOW);
        let token = sign(&claims, &key).unwrap();
        // exp = NOW + 900; leeway 60.
        assert!(verify(&token, &keys, &validation, NOW + 959).is_ok());
        assert_eq!(
            verify(&token, &keys, &validation, NOW + 960),
            Err(VerifyError::Expired)
        );
        let mut early = sample(NOW + 100);
        early.iat = NOW;
        let token = sign(&early, &key).unwrap();
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::NotYetValid)
        );
        assert!(verify(&token, &keys, &validation, NOW + 40).is_ok());
        let future = sample(NOW + 100);
        let mut future = Claims {
            nbf: NOW,
            ..future.clone()
        };
        future.iat = NOW + 100;
        let token = sign(&future, &key).unwrap();
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::IssuedInFuture)
        );
    }

    #[test]
    fn verify_wrong_issuer_and_audience_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let mut claims = sample(NOW);
        claims.iss = "https://evil.example".into();
        let token = sign(&claims, &key).unwrap();
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::WrongIssuer)
        );
        let mut claims = sample(NOW);
        claims.aud = Audience::Many(vec!["other".into(), "another".into()]);
        let token = sign(&claims, &key).unwrap();
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::WrongAudience)
        );
    }

    #[test]
    fn verify_without_kid_uses_sole_key() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let token = resign(
            &key,
            r#"{"alg":"EdDSA","typ":"at+jwt"}"#,
            &serde_json::to_string(&sample(NOW)).unwrap(),
        );
        assert!(verify(&token, &keys, &validation, NOW).is_ok());
    }

    #[test]
    fn pem_roundtrip_keeps_kid() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let key = SigningKey::from_seed(alg, &[9u8; 32]).unwrap();
            let pem = key.to_pkcs8_pem().unwrap();
            let again = SigningKey::from_pkcs8_pem(alg, &pem).unwrap();
            assert_eq!(key.kid(), again.kid());
        }
        assert!(SigningKey::from_pkcs8_pem(Algorithm::EdDSA, "garbage").is_err());
    }

    #[test]
    fn jwk_publishes_no_private_material_for_asymmetric_keys() {
        let key = ed_key();
        let jwk = key.jwk();
        assert_eq!(jwk.kid.as_deref(), Some(key.kid().as_str()));
        assert!(jwk.k.is_none());
        let (keys, _) = KeySet::from_jwks(&crate::Jwks { keys: vec![jwk] });
        assert!(keys.get(&key.kid()).is_some());
    }
}
