//! Compact JWS: signing weauth access tokens and verifying them, on `jsonwebtoken`.
//!
//! The JWS mechanics are the `jsonwebtoken` crate's (11.x); its cryptography is weauth's own
//! provider (`crypto.rs`: ed25519-dalek, p256, hmac; not the crate's `rust_crypto` feature,
//! which links RSA into the filter). This module is the ONE place where weauth's stricter
//! policy wraps it; [`verify`] and `sign` (feature `sign`) are the only ways in, for the issuer
//! (its own bearer check) and the edge filter alike.
//!
//! # What `jsonwebtoken` checks
//!
//! The signature over `b64(header).b64(payload)`, through `jsonwebtoken::crypto::verify` and
//! the installed provider: Ed25519 (`ed25519-dalek`'s `verify`, which refuses a non-canonical
//! `S`), ECDSA P-256 with SHA-256 (`p256`, which accepts both `S` and `n - S`), HMAC-SHA256
//! (constant-time comparison); the provider refuses a key of another family than the
//! algorithm's. `jsonwebtoken::decode` is not used: it would read the header a second time
//! into the crate's own `Header` (see `check_signature_and_read`), and its time, audience and
//! issuer checks read `SystemTime`, where time is an argument in this project (STYLE.md
//! habit 3). Base64url is strict (`b64`: no padding, canonical trailing bits); the header and
//! the claims are read with serde's derive (a repeated known member is refused).
//!
//! # What weauth checks (in this order; the crate runs at step 5)
//!
//! 1. a size cap ([`Validation::max_token_bytes`]) and exactly three segments, each strict
//!    base64url (one spelling per token, so a cache keyed by the token text sees one token);
//! 2. a header that repeats a member is refused, and the `alg` allow-list by exact JOSE name
//!    (`none`, `None`, `RS256`, anything unlisted: [`VerifyError::AlgorithmNotAllowed`]);
//! 3. `crit`, `jku`, `jwk`, `x5u`, `x5c` refused (the crate never fetches `jku`/`x5u` nor
//!    trusts an embedded `jwk`, but it ignores `crit`, which RFC 7515 §4.1.11 forbids, and
//!    none of them has a use in a weauth token); `typ` must be `at+jwt` (RFC 9068 §2.1);
//! 4. the key by `kid` (a token without `kid` only when the set has one key), and the
//!    algorithm pinned per key: the key's own type fixes it, the header cannot choose it
//!    ([`VerifyError::KeyAlgorithmMismatch`]); an Ed25519 key with a weak (small-order) point
//!    never gets into a [`KeySet`] (`jwk.rs`). (The crate verifies Ed25519 with dalek's
//!    `verify`, where the hand-written code used `verify_strict`; with weak keys kept out, the
//!    one difference left is a small-order `R`, which only the private key's holder can put
//!    in a signature that verifies — no forgery, no second spelling of a token.)
//! 5. ES256: only low-`S` signatures (ECDSA's `(r, n - s)` twin also verifies; accepting one
//!    spelling keeps tokens unforgeable as strings); then the crate checks the signature, and
//!    only then are the claims read into [`Claims`], whose type requires every claim but
//!    `unionid` and `scope`;
//! 6. `exp`, `nbf` and `iat` with leeway against the caller's `now`; `iss` exactly; `aud` any
//!    of the accepted audiences;
//! 7. (the caller's) revocation.
//!
//! Signing goes through `jsonwebtoken::encode` with the header `{"typ":"at+jwt","alg",
//! "kid"}`. For ES256 the signer (p256 `sign_recoverable`, `crypto.rs`) returns a high-`S`
//! signature about half the time, so `sign` rewrites it to its low-`S` twin — the same
//! signature, in the one spelling [`verify`] accepts.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::b64;
use crate::claims::Claims;
use crate::jwk::{Algorithm, Jwk, JwkError, KeyEntry, KeySet, VerifyingKey};
use crate::ACCESS_TOKEN_TYP;

/// The JOSE header as the policy reads it, the one time a token's header is read.
///
/// Members weauth never uses but an attacker might (`jku`, `x5u`, `x5c`, `jwk`, `crit`) are
/// captured, whatever their type, so that their presence can be refused; the other registered
/// members (RFC 7515 §4.1: `cty`, `x5t`, `x5t#S256`) must be strings;
/// a member given twice makes the header unreadable (serde's derive refuses it). Other
/// members are ignored (RFC 7515 §4: a recipient ignores what it does not understand, and
/// `crit` is refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5t: Option<String>,
    #[serde(default, rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    #[serde(default, skip_serializing, deserialize_with = "present")]
    crit: bool,
    #[serde(default, skip_serializing, deserialize_with = "present")]
    jku: bool,
    #[serde(default, skip_serializing, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, skip_serializing, deserialize_with = "present")]
    x5c: bool,
    #[serde(default, skip_serializing, deserialize_with = "present")]
    jwk: bool,
}

/// A member that is there, whatever its value — `null` too, which an `Option` would read as
/// absent (`"crit": null` passed as no `crit`).
fn present<'de, D: serde::Deserializer<'de>>(member: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(member).map(|_| true)
}

/// A private (or, for HS256, shared) signing key (feature `sign`).
#[cfg(feature = "sign")]
pub enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    Hmac(zeroize::Zeroizing<Vec<u8>>),
}

#[cfg(feature = "sign")]
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey::{}", self.algorithm())
    }
}

/// Why a signing key could not be built or read.
#[cfg(feature = "sign")]
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

/// Why a token could not be signed. Neither happens with keys built by this module and the
/// [`Claims`] type; the enum exists so that a failure is reported, never papered over.
#[cfg(feature = "sign")]
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the {0} signing key could not be exported as PKCS#8 for jsonwebtoken")]
    Export(Algorithm),
    #[error("jsonwebtoken could not sign: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("the ES256 signature is not 64 bytes of r||s")]
    EcdsaShape,
}

#[cfg(feature = "sign")]
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
    /// signature (ES256 in its low-`S` form). [`sign`] is the way to mint tokens; this exists
    /// for tests that forge tokens with unusual headers or payloads, correctly signed, to prove
    /// verifiers refuse them.
    ///
    /// # Errors
    /// See [`SignError`].
    pub fn sign_input(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
        let alg = self.algorithm();
        crate::crypto::install();
        let signature = jsonwebtoken::crypto::sign(input, &self.encoding_key()?, jwt_alg(alg))?;
        let signature = b64::decode(&signature).map_err(|_| SignError::EcdsaShape)?;
        low_s_form(alg, signature)
    }

    /// The key in `jsonwebtoken`'s form: PKCS#8 DER for the asymmetric keys (the crate's
    /// signers parse exactly that), the secret for HMAC.
    fn encoding_key(&self) -> Result<jsonwebtoken::EncodingKey, SignError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        Ok(match self {
            SigningKey::Ed25519(key) => {
                let der = key
                    .to_pkcs8_der()
                    .map_err(|_| SignError::Export(Algorithm::EdDSA))?;
                jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes())
            }
            SigningKey::P256(key) => {
                let der = key
                    .to_pkcs8_der()
                    .map_err(|_| SignError::Export(Algorithm::ES256))?;
                jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes())
            }
            SigningKey::Hmac(secret) => jsonwebtoken::EncodingKey::from_secret(secret),
        })
    }
}

/// The crate's name for one of our algorithms.
pub(crate) fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    match alg {
        Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
    }
}

/// ES256: the low-`S` twin of `signature` (unchanged when it already is low-`S`); other
/// algorithms pass through.
#[cfg(feature = "sign")]
fn low_s_form(alg: Algorithm, signature: Vec<u8>) -> Result<Vec<u8>, SignError> {
    if alg != Algorithm::ES256 {
        return Ok(signature);
    }
    let parsed =
        p256::ecdsa::Signature::from_slice(&signature).map_err(|_| SignError::EcdsaShape)?;
    Ok(match parsed.normalize_s() {
        Some(low) => low.to_bytes().to_vec(),
        None => signature,
    })
}

/// Signs `claims` as a weauth access token (`typ: at+jwt`, `kid` = the key's thumbprint) with
/// `jsonwebtoken::encode`.
///
/// # Errors
/// See [`SignError`] (not expected with keys built by this module).
#[cfg(feature = "sign")]
pub fn sign(claims: &Claims, key: &SigningKey) -> Result<String, SignError> {
    let alg = key.algorithm();
    let mut header = jsonwebtoken::Header::new(jwt_alg(alg));
    header.typ = Some(ACCESS_TOKEN_TYP.to_string());
    header.kid = Some(key.kid());
    crate::crypto::install();
    let token = jsonwebtoken::encode(&header, claims, &key.encoding_key()?)?;
    if alg != Algorithm::ES256 {
        return Ok(token);
    }
    let (input, signature) = token.rsplit_once('.').ok_or(SignError::EcdsaShape)?;
    let signature = b64::decode(signature).map_err(|_| SignError::EcdsaShape)?;
    Ok(format!(
        "{input}.{}",
        b64::encode(low_s_form(alg, signature)?)
    ))
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
struct Parts<'t> {
    header: Header,
    /// `b64(header).b64(payload)`: what the signature covers.
    signing_input: &'t str,
    payload: Vec<u8>,
    signature: Vec<u8>,
    signature_b64: &'t str,
}

/// Step 1 and the first half of 2: size, three strict base64url segments, a readable header.
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
    // The payload is read only after the signature held; decoding it here keeps every
    // malformed segment a `Malformed`, whatever the signature.
    let payload =
        b64::decode(payload_b64).map_err(|_| VerifyError::Malformed("payload is not base64url"))?;
    let signature = b64::decode(signature_b64)
        .map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
    Ok(Parts {
        header,
        signing_input: &token[..header_b64.len() + 1 + payload_b64.len()],
        payload,
        signature,
        signature_b64,
    })
}

/// Steps 2 and 3: the allow-list, the forbidden members, the type.
fn check_header(header: &Header, allowed: &[Algorithm]) -> Result<Algorithm, VerifyError> {
    // The allow-list comes first: `none`, `None`, `RS256`, anything unlisted stops here.
    let alg = Algorithm::from_name(&header.alg)
        .filter(|alg| allowed.contains(alg))
        .ok_or(VerifyError::AlgorithmNotAllowed)?;
    let forbidden = [
        ("crit", header.crit),
        ("jku", header.jku),
        ("x5u", header.x5u),
        ("x5c", header.x5c),
        ("jwk", header.jwk),
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

/// Step 5: ES256 low-`S`, then the signature through jsonwebtoken's `crypto::verify` (the
/// installed provider, the key's own algorithm), then the claims.
///
/// Not `jsonwebtoken::decode`: it reads the header again into the crate's `Header`, whose
/// embedded-`jwk` member and flattened extras were a sixth of the filter's wasm code and of
/// V8's compile time at Envoy's start (issue 22, first token); the header was read and judged
/// above, and the crate's own claim checks are switched off here anyway.
fn check_signature_and_read(
    parts: &Parts<'_>,
    entry: &KeyEntry,
    alg: Algorithm,
) -> Result<Claims, VerifyError> {
    if alg == Algorithm::ES256 {
        let low_s = p256::ecdsa::Signature::from_slice(&parts.signature)
            .is_ok_and(|sig| sig.normalize_s().is_none());
        if !low_s {
            return Err(VerifyError::BadSignature);
        }
    }
    crate::crypto::install();
    let valid = jsonwebtoken::crypto::verify(
        parts.signature_b64,
        parts.signing_input.as_bytes(),
        &entry.decoding,
        jwt_alg(alg),
    );
    // `Err`: a key the provider refuses for the algorithm, which a KeySet never holds.
    if !matches!(valid, Ok(true)) {
        return Err(VerifyError::BadSignature);
    }
    // Claims that are not a weauth claims set (a missing member, a wrong type, a repeated
    // member), read only after the signature held.
    serde_json::from_slice(&parts.payload)
        .map_err(|_| VerifyError::Malformed("payload is not a valid claims set"))
}

/// Step 6: time claims against `now`, issuer and audience.
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
    let entry = match parts.header.kid.as_deref() {
        Some(kid) => keys.entry(kid),
        None => keys.sole_entry(),
    }
    .ok_or(VerifyError::UnknownKey)?;
    if entry.key.algorithm() != alg {
        return Err(VerifyError::KeyAlgorithmMismatch);
    }
    let claims = check_signature_and_read(&parts, entry, alg)?;
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
#[cfg(feature = "sign")]
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
        let sig = key.sign_input(input.as_bytes()).unwrap();
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
            // Any value, `null` included: the member is there.
            for value in [r#"["x"]"#, "null", "{}", "0"] {
                let header = format!(
                    r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}","{member}":{value}}}"#,
                    key.kid()
                );
                let token = resign(&key, &header, &payload);
                assert_eq!(
                    verify(&token, &keys, &validation, NOW),
                    Err(VerifyError::ForbiddenHeader(member)),
                    "{member}: {value}"
                );
            }
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
    fn verify_token_for_key_of_other_type_refused() {
        // Each algorithm's token presented under the kid of a key of each other type (both in
        // the set and in the allow-list): the key's type pins the algorithm.
        let ed = SigningKey::from_seed(Algorithm::EdDSA, &[1u8; 32]).unwrap();
        let ec = SigningKey::from_seed(Algorithm::ES256, &[2u8; 32]).unwrap();
        let hs = SigningKey::from_seed(Algorithm::HS256, &[3u8; 32]).unwrap();
        let mut keys = KeySet::default();
        for key in [&ed, &ec, &hs] {
            keys.insert(key.kid(), key.verifying_key());
        }
        let mut validation = Validation::new("https://issuer.example", vec!["weauth".into()]);
        validation.algorithms = vec![Algorithm::EdDSA, Algorithm::ES256, Algorithm::HS256];
        let payload = serde_json::to_string(&sample(NOW)).unwrap();
        for signer in [&ed, &ec, &hs] {
            for holder in [&ed, &ec, &hs] {
                let header = format!(
                    r#"{{"alg":"{}","typ":"at+jwt","kid":"{}"}}"#,
                    signer.algorithm(),
                    holder.kid()
                );
                let token = resign(signer, &header, &payload);
                let expected = if signer.algorithm() == holder.algorithm() {
                    Ok(sample(NOW))
                } else {
                    Err(VerifyError::KeyAlgorithmMismatch)
                };
                assert_eq!(
                    verify(&token, &keys, &validation, NOW),
                    expected,
                    "{} token under the {} key",
                    signer.algorithm(),
                    holder.algorithm()
                );
            }
        }
    }

    #[test]
    fn verify_bad_signature_each_algorithm_refused() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::HS256] {
            let key = SigningKey::from_seed(alg, &[4u8; 32]).unwrap();
            let other = SigningKey::from_seed(alg, &[6u8; 32]).unwrap();
            let (keys, validation) = setup(&key);
            let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, key.kid());
            // signed by another key of the same type, under this key's kid
            let token = resign(
                &other,
                &header,
                &serde_json::to_string(&sample(NOW)).unwrap(),
            );
            assert_eq!(
                verify(&token, &keys, &validation, NOW),
                Err(VerifyError::BadSignature),
                "{alg} other key"
            );
            // this key's signature with one bit flipped, and an empty signature
            let token = sign(&sample(NOW), &key).unwrap();
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut bytes = b64::decode(sig).unwrap();
            bytes[9] ^= 0x10;
            for forged in [
                format!("{input}.{}", b64::encode(bytes)),
                format!("{input}."),
            ] {
                assert_eq!(
                    verify(&forged, &keys, &validation, NOW),
                    Err(VerifyError::BadSignature),
                    "{alg} forged"
                );
            }
        }
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
    fn sign_es256_every_signature_low_s_and_verifies() {
        // jsonwebtoken's P-256 signer returns high-S about half the time; sign() must rewrite
        // each to low-S, or the issuer would mint tokens its own verifier refuses.
        let key = SigningKey::from_seed(Algorithm::ES256, &[5u8; 32]).unwrap();
        let (keys, validation) = setup(&key);
        for n in 0..32 {
            let mut claims = sample(NOW);
            claims.jti = format!("j_{n}");
            let token = sign(&claims, &key).unwrap();
            let sig = b64::decode(token.rsplit_once('.').unwrap().1).unwrap();
            let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
            assert!(sig.normalize_s().is_none(), "token {n} is high-S");
            assert_eq!(verify(&token, &keys, &validation, NOW).unwrap(), claims);
        }
    }

    #[test]
    fn sign_same_bytes_as_rust_crypto_provider() {
        // Tokens signed before weauth's provider replaced jsonwebtoken's `rust_crypto` one
        // (tests/fixtures/rust-crypto/README.md): the same keys and claims sign to the same
        // bytes, and each verifies.
        let pinned = [
            (
                Algorithm::EdDSA,
                3u8,
                include_str!("../tests/fixtures/rust-crypto/eddsa-seed3.jwt"),
            ),
            (
                Algorithm::EdDSA,
                5,
                include_str!("../tests/fixtures/rust-crypto/eddsa-seed5.jwt"),
            ),
            (
                Algorithm::ES256,
                3,
                include_str!("../tests/fixtures/rust-crypto/es256-seed3.jwt"),
            ),
            (
                Algorithm::ES256,
                5,
                include_str!("../tests/fixtures/rust-crypto/es256-seed5.jwt"),
            ),
            (
                Algorithm::HS256,
                3,
                include_str!("../tests/fixtures/rust-crypto/hs256-seed3.jwt"),
            ),
            (
                Algorithm::HS256,
                5,
                include_str!("../tests/fixtures/rust-crypto/hs256-seed5.jwt"),
            ),
        ];
        for (alg, seed, old) in pinned {
            let key = SigningKey::from_seed(alg, &[seed; 32]).unwrap();
            let (keys, validation) = setup(&key);
            assert_eq!(
                sign(&sample(NOW), &key).unwrap(),
                old.trim(),
                "{alg} seed {seed}"
            );
            assert_eq!(
                verify(old.trim(), &keys, &validation, NOW).unwrap(),
                sample(NOW),
                "{alg} seed {seed}"
            );
        }
    }

    #[test]
    fn sign_header_typ_alg_kid_only() {
        let key = ed_key();
        let token = sign(&sample(NOW), &key).unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&b64::decode(token.split('.').next().unwrap()).unwrap())
                .unwrap();
        assert_eq!(
            header,
            serde_json::json!({"typ": "at+jwt", "alg": "EdDSA", "kid": key.kid()})
        );
    }

    #[test]
    fn verify_time_is_the_callers_clock_not_the_systems() {
        // jsonwebtoken's own exp/nbf checks read SystemTime; they are off. A token long expired
        // by the machine's clock verifies at a `now` inside its lifetime, and a token valid by
        // the machine's clock is refused at a `now` after it.
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let old = sign(&sample(1_000_000_000), &key).unwrap();
        assert!(verify(&old, &keys, &validation, 1_000_000_100).is_ok());
        let future = 4_000_000_000;
        let token = sign(&sample(future), &key).unwrap();
        assert!(verify(&token, &keys, &validation, future).is_ok());
        assert_eq!(
            verify(&token, &keys, &validation, future + 2000),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn verify_header_duplicate_member_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let header = format!(
            r#"{{"alg":"EdDSA","alg":"HS256","typ":"at+jwt","kid":"{}"}}"#,
            key.kid()
        );
        let token = resign(&key, &header, &serde_json::to_string(&sample(NOW)).unwrap());
        assert!(matches!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn verify_header_member_of_wrong_type_refused_as_malformed() {
        // `cty` is no concern of the policy, but RFC 7515 §4.1.10 makes it a string.
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let header = format!(
            r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}","cty":5}}"#,
            key.kid()
        );
        let token = resign(&key, &header, &serde_json::to_string(&sample(NOW)).unwrap());
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::Malformed(
                "header is not a JSON object of strings"
            ))
        );
    }

    #[test]
    fn verify_missing_required_claim_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        let header = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#, key.kid());
        let mut payload = serde_json::to_value(sample(NOW)).unwrap();
        for claim in ["sid", "sub", "exp", "iss", "aud", "jti", "openid", "appid"] {
            let mut without = payload.clone();
            without.as_object_mut().unwrap().remove(claim);
            let token = resign(&key, &header, &without.to_string());
            assert_eq!(
                verify(&token, &keys, &validation, NOW),
                Err(VerifyError::Malformed("payload is not a valid claims set")),
                "{claim}"
            );
        }
        payload["exp"] = serde_json::json!("soon");
        let token = resign(&key, &header, &payload.to_string());
        assert!(matches!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn verify_non_canonical_payload_spelling_refused() {
        let key = ed_key();
        let (keys, validation) = setup(&key);
        // Claims whose payload segment ends in a character with 4 unused bits; set them.
        let mut claims = sample(NOW);
        let mut n = 0;
        let (tail, seg) = loop {
            claims.jti = format!("j{n}");
            let seg = b64::encode(serde_json::to_vec(&claims).unwrap());
            if seg.len() % 4 == 2 {
                break (seg.chars().last().unwrap(), seg);
            }
            n += 1;
        };
        let signed = sign(&claims, &key).unwrap();
        assert!(signed.contains(&seg));
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = ALPHABET.find(tail).unwrap();
        let respelled = &ALPHABET[(index | 0b1111)..=(index | 0b1111)];
        let twin_seg = format!("{}{respelled}", &seg[..seg.len() - 1]);
        assert_ne!(twin_seg, seg);
        let twin = signed.replace(&seg, &twin_seg);
        assert_eq!(
            verify(&twin, &keys, &validation, NOW),
            Err(VerifyError::Malformed("payload is not base64url"))
        );
    }

    #[test]
    fn verify_token_of_exactly_max_bytes_accepted() {
        // `max_token_bytes` is the longest token accepted: the cap itself is allowed.
        let key = ed_key();
        let (keys, mut validation) = setup(&key);
        let token = sign(&sample(NOW), &key).unwrap();
        validation.max_token_bytes = token.len();
        assert!(verify(&token, &keys, &validation, NOW).is_ok());
        validation.max_token_bytes = token.len() - 1;
        assert_eq!(
            verify(&token, &keys, &validation, NOW),
            Err(VerifyError::TooLarge(token.len() - 1))
        );
    }

    #[test]
    fn verify_iat_within_leeway_accepted_past_it_refused() {
        // A token issued by a clock up to `leeway` ahead is accepted (iat = now + leeway), one
        // second more is not. nbf is kept at `now` so that only iat decides.
        let key = ed_key();
        let (keys, validation) = setup(&key);
        for (ahead, accepted) in [(validation.leeway, true), (validation.leeway + 1, false)] {
            let claims = Claims {
                iat: NOW + ahead,
                nbf: NOW,
                ..sample(NOW)
            };
            let token = sign(&claims, &key).unwrap();
            let result = verify(&token, &keys, &validation, NOW);
            if accepted {
                assert_eq!(result, Ok(claims), "iat {ahead} s ahead");
            } else {
                assert_eq!(
                    result,
                    Err(VerifyError::IssuedInFuture),
                    "iat {ahead} s ahead"
                );
            }
        }
    }

    #[test]
    fn verify_error_reasons_are_the_stable_metric_labels() {
        // Metrics and logs are keyed by these names (dashboards, alerts): pinned one by one.
        let reasons = [
            (VerifyError::TooLarge(1), "too_large"),
            (VerifyError::Malformed("x"), "malformed"),
            (VerifyError::AlgorithmNotAllowed, "alg_not_allowed"),
            (VerifyError::ForbiddenHeader("crit"), "forbidden_header"),
            (VerifyError::UnknownKey, "unknown_kid"),
            (VerifyError::KeyAlgorithmMismatch, "key_alg_mismatch"),
            (VerifyError::BadSignature, "bad_signature"),
            (VerifyError::WrongType, "wrong_type"),
            (VerifyError::Expired, "expired"),
            (VerifyError::NotYetValid, "not_yet_valid"),
            (VerifyError::IssuedInFuture, "issued_in_future"),
            (VerifyError::WrongIssuer, "wrong_issuer"),
            (VerifyError::WrongAudience, "wrong_audience"),
        ];
        for (error, reason) in reasons {
            assert_eq!(error.reason(), reason, "{error:?}");
        }
    }

    #[test]
    fn hmac_secret_of_32_bytes_accepted_shorter_refused() {
        assert_eq!(
            SigningKey::hmac(&[7u8; 31]).unwrap_err(),
            KeyError::ShortSecret
        );
        let key = SigningKey::hmac(&[7u8; 32]).unwrap();
        assert_eq!(key.algorithm(), Algorithm::HS256);
        assert!(SigningKey::hmac(&[7u8; 64]).is_ok());
    }

    #[test]
    fn signing_key_debug_names_the_algorithm_never_the_secret() {
        let key = SigningKey::hmac(b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey::HS256");
        assert_eq!(format!("{:?}", ed_key()), "SigningKey::EdDSA");
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
