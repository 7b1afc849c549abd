//! WeChat's server API security (服务端API安全鉴权, the "API security" settings of the
//! mini-program console): encrypted and signed calls, and answers whose signature is verified
//! before they are decrypted and believed. Pure functions; the transport is in
//! [`crate::wechat::HttpWechat`].
//!
//! Followed exactly from WeChat's documentation (its worked example is the unit test below):
//!
//! - 服务端 API 签名加密指南: <https://developers.weixin.qq.com/miniprogram/dev/server/getting_started/api_signature.html>
//!   (formerly `OpenApiDoc/getting_started/api_signature.html`);
//! - 安全鉴权模式介绍 / API安全: <https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/getting_started/signature-verify.html>,
//!   <https://developers.weixin.qq.com/miniprogram/dev/framework/open-ability/api_security.html>;
//! - which APIs support it (the "是否支持加密" column): <https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/>.
//!
//! The request (only AES256_GCM + RSAwithSHA256 are implemented; the console also offers
//! SM4_GCM + SM2withSM3):
//!
//! 1. plaintext = the API's parameters as a JSON object (URL and POST parameters, never the
//!    access_token, which stays in the query) plus `_n` (a random base64 string of 16–32
//!    bytes), `_appid` and `_timestamp` (unix seconds, a number);
//! 2. AES-256-GCM with the console's symmetric key, a random 12-byte iv and the AAD
//!    `urlpath|appid|timestamp|sn` (`urlpath` = the full URL with scheme and host, without
//!    the query; `sn` = the symmetric key's number); the body is `{"iv","data","authtag"}`,
//!    each base64 (standard alphabet, padded), `data` without the 16-byte tag;
//! 3. signature = RSASSA-PSS (SHA-256, MGF1-SHA-256, salt length 32) with the app's private
//!    key over `urlpath\nappid\ntimestamp\npostdata` (no trailing newline; `postdata` the
//!    exact body sent), base64;
//! 4. headers `Wechatmp-Appid`, `Wechatmp-TimeStamp`, `Wechatmp-Signature`, and
//!    `Wechatmp-Serial` = the number of the app's key pair (the guide's request table omits
//!    it, but its errcode table has 40230 `API_Missing_Wechatmp_Serial`, and SDKs that left
//!    it out were refused — WxJava#3915).
//!
//! The answer, checked in this order, every failure an [`ApiSecError`] (never a success):
//!
//! 1. `Wechatmp-Appid` is ours; `Wechatmp-TimeStamp` is within [`MAX_SKEW_S`] of our clock
//!    (the guide's reference implementations refuse answers older than 300 s; we also refuse
//!    ones as far in the future);
//! 2. the signature is the one whose number matches our platform certificate's:
//!    `Wechatmp-Serial`/`Wechatmp-Signature`, or during WeChat's certificate rotation
//!    `Wechatmp-Serial-Deprecated`/`Wechatmp-Signature-Deprecated`; no match is an error (the
//!    numbers are the console's, not the certificate's own serial);
//! 3. RSASSA-PSS (SHA-256, salt 32, as in the guide's example answer) over
//!    `urlpath\nappid\ntimestamp\nrespdata` with the platform certificate's key;
//! 4. AES-256-GCM decryption with AAD `urlpath|appid|<answer timestamp>|sn`;
//! 5. the plaintext's `_appid` and `_timestamp` equal the headers'; `_n`, `_appid` and
//!    `_timestamp` are removed and the rest is the API's ordinary answer.
//!
//! Nothing binds an answer to its request (its `_n` is WeChat's own): docs/CONFIGURATION.md
//! says what follows.
//!
//! An answer without `Wechatmp-Signature` can only be an error: WeChat answers the refusals
//! of the security layer itself (40230–40240) in clear. Such a body with a non-zero
//! `errcode` is reported as that errcode; anything else unsigned is refused.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Verifier as _};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The paths of the APIs the issuer calls that WeChat lists as supporting encryption
/// ("是否支持加密: 是" in the API index). `jscode2session`, `checksession` and the access-token
/// APIs do not support it and are always sent as before. Others WeChat lists (not called by
/// weauth): getuserencryptkey, getQRCode/getUnlimitedQRCode/createQRCode, clearQuota,
/// getApiQuota, getRidInfo, and the express/logistics APIs.
pub const SECURED_PATHS: &[&str] = &[
    "/wxa/business/getuserphonenumber",
    "/wxa/getuserriskrank",
    "/wxa/getpluginopenpid",
    "/wxa/business/checkencryptedmsg",
];

/// How far an answer's `Wechatmp-TimeStamp` may be from our clock, either way (seconds).
pub const MAX_SKEW_S: i64 = 300;

/// PSS salt length the guide names ("需要指定salt长度为32").
const SALT_LEN: usize = 32;

/// Header names (HTTP header names are case-insensitive; these are the guide's spellings).
pub const H_APPID: &str = "Wechatmp-Appid";
pub const H_TIMESTAMP: &str = "Wechatmp-TimeStamp";
pub const H_SIGNATURE: &str = "Wechatmp-Signature";
pub const H_SERIAL: &str = "Wechatmp-Serial";
pub const H_SERIAL_DEPRECATED: &str = "Wechatmp-Serial-Deprecated";
pub const H_SIGNATURE_DEPRECATED: &str = "Wechatmp-Signature-Deprecated";

/// Whether calls to `path` are sent encrypted and signed when the app has keys.
pub fn is_secured(path: &str) -> bool {
    SECURED_PATHS.contains(&path)
}

/// One app's API security keys, as configured in the apps file (`api_security`). Never
/// printed: the `Debug` impl shows the key numbers only.
pub struct ApiSecurityKeys {
    sym_key: Zeroizing<[u8; 32]>,
    /// The symmetric key's number (密钥编号), part of the AAD.
    pub sym_sn: String,
    signing_key: rsa::pss::BlindedSigningKey<Sha256>,
    /// The number of the app's key pair, sent as `Wechatmp-Serial`.
    pub private_key_sn: String,
    platform_key: PlatformKey,
    /// The platform certificate's number (from the console, not the certificate's serial).
    pub platform_sn: String,
}

impl fmt::Debug for ApiSecurityKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSecurityKeys")
            .field("sym_sn", &self.sym_sn)
            .field("private_key_sn", &self.private_key_sn)
            .field("platform_sn", &self.platform_sn)
            .finish_non_exhaustive()
    }
}

/// Why keys do not load: which one and why, never their content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the symmetric key must be the console's base64 of 32 bytes (AES-256)")]
    SymKey,
    #[error("the private key is not an RSA private key in PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`)")]
    PrivateKey,
    #[error("the private key is RSA-{0}; WeChat's API security uses RSA-2048 or larger")]
    PrivateKeySize(usize),
    #[error("the platform certificate is not a PEM certificate (or `PUBLIC KEY`) with an RSA key")]
    PlatformCert,
}

impl ApiSecurityKeys {
    /// Reads the three keys from their texts: the symmetric key as the console downloads it
    /// (base64 of 32 bytes; surrounding whitespace ignored), the app's RSA private key in PEM
    /// (PKCS#1 as the console downloads it, or PKCS#8), WeChat's platform certificate in PEM
    /// (or its public key, `PUBLIC KEY`/`RSA PUBLIC KEY`).
    ///
    /// # Errors
    /// The key that does not parse ([`KeyError`]).
    pub fn from_pem(
        sym_key: &str,
        sym_sn: String,
        private_key: &str,
        private_key_sn: String,
        platform_cert: &str,
        platform_sn: String,
    ) -> Result<ApiSecurityKeys, KeyError> {
        let sym_key = parse_sym_key(sym_key)?;
        let private = parse_private_key(private_key)?;
        let bits = rsa::traits::PublicKeyParts::size(&private) * 8;
        if bits < 2048 {
            return Err(KeyError::PrivateKeySize(bits));
        }
        let platform = parse_platform_key(platform_cert)?;
        Ok(ApiSecurityKeys {
            sym_key,
            sym_sn,
            signing_key: rsa::pss::BlindedSigningKey::new_with_salt_len(private, SALT_LEN),
            private_key_sn,
            platform_key: PlatformKey::new(platform),
            platform_sn,
        })
    }
}

/// WeChat's platform key, verifying its answers' RSASSA-PSS signatures (SHA-256). The guide
/// fixes the salt at 32 bytes for requests and says only that answers are PSS "with no salt
/// length to name, usually" (§4.1.2): the two lengths signers use by default are accepted —
/// the digest's (32, as the guide's worked example) and the maximum the key allows (OpenSSL's
/// default) — either one a sound PSS verification.
struct PlatformKey {
    digest_salt: rsa::pss::VerifyingKey<Sha256>,
    max_salt: rsa::pss::VerifyingKey<Sha256>,
}

impl PlatformKey {
    fn new(key: RsaPublicKey) -> PlatformKey {
        // emLen − hLen − 2, emLen the key's size in bytes (its modulus bits less one, rounded up).
        let em_len = (rsa::traits::PublicKeyParts::n(&key).bits() - 1).div_ceil(8);
        let max = em_len.saturating_sub(SALT_LEN + 2);
        PlatformKey {
            digest_salt: rsa::pss::VerifyingKey::new_with_salt_len(key.clone(), SALT_LEN),
            max_salt: rsa::pss::VerifyingKey::new_with_salt_len(key, max),
        }
    }

    fn verify(&self, message: &[u8], signature: &rsa::pss::Signature) -> bool {
        self.digest_salt.verify(message, signature).is_ok()
            || self.max_salt.verify(message, signature).is_ok()
    }
}

/// The console's symmetric key: base64 (standard, padded) of 32 bytes.
///
/// # Errors
/// [`KeyError::SymKey`].
pub fn parse_sym_key(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| KeyError::SymKey)?);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return Err(KeyError::SymKey);
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// An RSA private key in PEM: PKCS#1 (`RSA PRIVATE KEY`, what the console downloads) or
/// PKCS#8 (`PRIVATE KEY`).
///
/// # Errors
/// [`KeyError::PrivateKey`].
pub fn parse_private_key(pem: &str) -> Result<RsaPrivateKey, KeyError> {
    let pem = pem.trim();
    RsaPrivateKey::from_pkcs1_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
        .map_err(|_| KeyError::PrivateKey)
}

/// WeChat's platform key: a PEM certificate (as the console downloads it), or the bare public
/// key (`PUBLIC KEY` or `RSA PUBLIC KEY`). The certificate's validity dates are not checked:
/// WeChat announces a replacement through `Wechatmp-Serial-Deprecated`, and the console's
/// number, not the certificate, names the key in use.
///
/// # Errors
/// [`KeyError::PlatformCert`].
pub fn parse_platform_key(pem: &str) -> Result<RsaPublicKey, KeyError> {
    use x509_cert::der::DecodePem as _;
    let pem = pem.trim();
    if let Ok(cert) = x509_cert::Certificate::from_pem(pem) {
        let spki = cert.tbs_certificate.subject_public_key_info;
        let der = x509_cert::der::Encode::to_der(&spki).map_err(|_| KeyError::PlatformCert)?;
        return RsaPublicKey::from_public_key_der(&der).map_err(|_| KeyError::PlatformCert);
    }
    RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
        .map_err(|_| KeyError::PlatformCert)
}

/// The AAD of both directions: `urlpath|appid|timestamp|sn`.
pub fn aad(urlpath: &str, appid: &str, timestamp: &str, sym_sn: &str) -> String {
    format!("{urlpath}|{appid}|{timestamp}|{sym_sn}")
}

/// The signed string of both directions: `urlpath\nappid\ntimestamp\nbody`, no trailing
/// newline.
pub fn signing_string(urlpath: &str, appid: &str, timestamp: &str, body: &str) -> String {
    format!("{urlpath}\n{appid}\n{timestamp}\n{body}")
}

/// `urlpath` of the guide: the URL with scheme and host, without the query.
pub fn urlpath(api_base: &str, path: &str) -> String {
    format!("{}{path}", api_base.trim_end_matches('/'))
}

/// The plaintext of a request: `params` (a JSON object's text) with the security fields
/// `_n`, `_appid`, `_timestamp` first — the order of the guide's example, whose compact form
/// is what its ciphertext encrypts.
///
/// # Errors
/// [`ApiSecError::Params`] when `params` is not a JSON object.
pub fn request_plaintext(
    params: &str,
    nonce: &str,
    appid: &str,
    timestamp: i64,
) -> Result<String, ApiSecError> {
    let parsed: serde_json::Value =
        serde_json::from_str(params).map_err(|_| ApiSecError::Params)?;
    let is_empty = match parsed.as_object() {
        Some(object) => object.is_empty(),
        None => return Err(ApiSecError::Params),
    };
    let head = format!(
        "{{\"_n\":{},\"_appid\":{},\"_timestamp\":{timestamp}",
        serde_json::Value::from(nonce),
        serde_json::Value::from(appid)
    );
    if is_empty {
        return Ok(format!("{head}}}"));
    }
    // `params` is an object with members: splice them in after the security fields.
    let rest = params.trim_start().strip_prefix('{').unwrap_or(params);
    Ok(format!("{head},{}", rest.trim_start()))
}

/// The `{"iv","data","authtag"}` body of both directions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub iv: String,
    pub data: String,
    pub authtag: String,
}

impl Envelope {
    /// The JSON text, in the guide's member order.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"iv\":{},\"data\":{},\"authtag\":{}}}",
            serde_json::Value::from(self.iv.as_str()),
            serde_json::Value::from(self.data.as_str()),
            serde_json::Value::from(self.authtag.as_str())
        )
    }
}

/// AES-256-GCM of `plaintext` with `iv` and `aad`.
pub fn seal(key: &[u8; 32], iv: &[u8; 12], aad: &str, plaintext: &[u8]) -> Envelope {
    let cipher = Aes256Gcm::new(key.into());
    // Encryption with a 12-byte nonce and an in-memory buffer cannot fail (the plaintext
    // would have to exceed 64 GiB).
    let sealed = cipher
        .encrypt(
            &Nonce::from(*iv),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .unwrap_or_default();
    let split = sealed.len().saturating_sub(16);
    Envelope {
        iv: STANDARD.encode(iv),
        data: STANDARD.encode(&sealed[..split]),
        authtag: STANDARD.encode(&sealed[split..]),
    }
}

/// Decrypts an envelope with `aad`.
///
/// # Errors
/// [`ApiSecError::Envelope`] (bad base64, an iv not 12 bytes, a tag not 16) or
/// [`ApiSecError::Decrypt`] (wrong key, AAD or tampered data).
pub fn open(key: &[u8; 32], aad: &str, envelope: &Envelope) -> Result<Vec<u8>, ApiSecError> {
    let iv = STANDARD
        .decode(&envelope.iv)
        .map_err(|_| ApiSecError::Envelope)?;
    let mut data = STANDARD
        .decode(&envelope.data)
        .map_err(|_| ApiSecError::Envelope)?;
    let tag = STANDARD
        .decode(&envelope.authtag)
        .map_err(|_| ApiSecError::Envelope)?;
    let iv: [u8; 12] = iv.try_into().map_err(|_| ApiSecError::Envelope)?;
    if tag.len() != 16 {
        return Err(ApiSecError::Envelope);
    }
    data.extend_from_slice(&tag);
    Aes256Gcm::new(key.into())
        .decrypt(
            &Nonce::from(iv),
            Payload {
                msg: &data,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| ApiSecError::Decrypt)
}

/// A request ready to send: the body and the four headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecuredRequest {
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
    /// The signed string (kept for tests).
    pub signed: String,
}

/// The random parts of a request, fixed by tests.
#[derive(Debug, Clone)]
pub struct RequestNonces {
    pub iv: [u8; 12],
    /// `_n`: a base64 string.
    pub nonce: String,
}

impl RequestNonces {
    /// A random iv and a random `_n` (base64 of 16–24 random bytes, unpadded, so its length
    /// varies as the guide recommends).
    pub fn random() -> RequestNonces {
        use rand::Rng as _;
        let mut rng = rand::thread_rng();
        let mut iv = [0u8; 12];
        rng.fill(&mut iv);
        let mut bytes = vec![0u8; rng.gen_range(16..=24)];
        rng.fill(bytes.as_mut_slice());
        RequestNonces {
            iv,
            nonce: base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
        }
    }
}

/// Encrypts and signs a call of `urlpath` with `params` (the API's JSON body) at `now`.
///
/// # Errors
/// [`ApiSecError::Params`] (not a JSON object) or [`ApiSecError::Sign`].
pub fn secure_request(
    keys: &ApiSecurityKeys,
    appid: &str,
    urlpath: &str,
    params: &str,
    now: i64,
    nonces: &RequestNonces,
) -> Result<SecuredRequest, ApiSecError> {
    let timestamp = now.to_string();
    let plaintext = Zeroizing::new(request_plaintext(params, &nonces.nonce, appid, now)?);
    let envelope = seal(
        &keys.sym_key,
        &nonces.iv,
        &aad(urlpath, appid, &timestamp, &keys.sym_sn),
        plaintext.as_bytes(),
    );
    let body = envelope.to_json();
    let signed = signing_string(urlpath, appid, &timestamp, &body);
    let signature = keys
        .signing_key
        .try_sign_with_rng(&mut rand::thread_rng(), signed.as_bytes())
        .map_err(|_| ApiSecError::Sign)?;
    Ok(SecuredRequest {
        headers: vec![
            (H_APPID, appid.to_string()),
            (H_TIMESTAMP, timestamp),
            (H_SERIAL, keys.private_key_sn.clone()),
            (H_SIGNATURE, STANDARD.encode(signature.to_bytes())),
        ],
        body,
        signed,
    })
}

/// The `Wechatmp-*` headers of an answer (absent ones `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerHeaders {
    pub appid: Option<String>,
    pub timestamp: Option<String>,
    pub serial: Option<String>,
    pub signature: Option<String>,
    pub serial_deprecated: Option<String>,
    pub signature_deprecated: Option<String>,
}

impl AnswerHeaders {
    /// Reads the headers through `get` (a case-insensitive lookup).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> AnswerHeaders {
        AnswerHeaders {
            appid: get(H_APPID),
            timestamp: get(H_TIMESTAMP),
            serial: get(H_SERIAL),
            signature: get(H_SIGNATURE),
            serial_deprecated: get(H_SERIAL_DEPRECATED),
            signature_deprecated: get(H_SIGNATURE_DEPRECATED),
        }
    }
}

/// Why an answer was not accepted. The text names the check, never a key or the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiSecError {
    #[error("the call's parameters are not a JSON object")]
    Params,
    #[error("signing the call failed")]
    Sign,
    #[error("WeChat refused the signed call (errcode {errcode}: {errmsg})")]
    Refused { errcode: i64, errmsg: String },
    #[error("the answer is not signed (no Wechatmp-Signature) and is not a WeChat error")]
    Unsigned,
    #[error("the answer lacks the {0} header")]
    MissingHeader(&'static str),
    #[error("the answer is for appid `{0}`, not ours")]
    OtherAppid(String),
    #[error("the answer's timestamp is not a number")]
    BadTimestamp,
    #[error("the answer's timestamp is {skew} s from our clock (at most {MAX_SKEW_S} s allowed)")]
    Stale { skew: i64 },
    #[error("the answer is signed with platform certificate number `{got}`, not our `{want}`")]
    WrongSerial { got: String, want: String },
    #[error("the answer's signature does not verify with the platform certificate")]
    BadSignature,
    #[error("the answer's body is not an {{iv, data, authtag}} envelope")]
    Envelope,
    #[error("the answer does not decrypt with the symmetric key")]
    Decrypt,
    #[error("the decrypted answer's {0} does not match its headers")]
    Mismatch(&'static str),
}

impl ApiSecError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ApiSecError::Params => "params",
            ApiSecError::Sign => "sign",
            ApiSecError::Refused { .. } => "refused",
            ApiSecError::Unsigned => "unsigned",
            ApiSecError::MissingHeader(_) => "missing_header",
            ApiSecError::OtherAppid(_) => "other_appid",
            ApiSecError::BadTimestamp | ApiSecError::Stale { .. } => "stale",
            ApiSecError::WrongSerial { .. } => "wrong_serial",
            ApiSecError::BadSignature => "bad_signature",
            ApiSecError::Envelope | ApiSecError::Decrypt => "decrypt",
            ApiSecError::Mismatch(_) => "mismatch",
        }
    }
}

/// Verifies and decrypts an answer of `urlpath` to `appid` at `now` (see the module docs for
/// the order of the checks). Returns the API's ordinary answer (the plaintext without
/// `_n`, `_appid`, `_timestamp`) as JSON text.
///
/// # Errors
/// Every failed check ([`ApiSecError`]); an unsigned WeChat error is
/// [`ApiSecError::Refused`].
pub fn open_answer(
    keys: &ApiSecurityKeys,
    appid: &str,
    urlpath: &str,
    headers: &AnswerHeaders,
    body: &[u8],
    now: i64,
) -> Result<String, ApiSecError> {
    let Some(signature) = headers.signature.as_deref() else {
        return Err(unsigned(body));
    };
    match headers.appid.as_deref() {
        None => return Err(ApiSecError::MissingHeader(H_APPID)),
        Some(got) if got != appid => return Err(ApiSecError::OtherAppid(got.to_string())),
        Some(_) => {}
    }
    let timestamp = headers
        .timestamp
        .as_deref()
        .ok_or(ApiSecError::MissingHeader(H_TIMESTAMP))?;
    let ts: i64 = timestamp.parse().map_err(|_| ApiSecError::BadTimestamp)?;
    let skew = now.saturating_sub(ts);
    if skew.saturating_abs() > MAX_SKEW_S {
        return Err(ApiSecError::Stale { skew });
    }
    let signature = if headers.serial.as_deref() == Some(keys.platform_sn.as_str()) {
        signature
    } else if headers.serial_deprecated.as_deref() == Some(keys.platform_sn.as_str()) {
        headers
            .signature_deprecated
            .as_deref()
            .ok_or(ApiSecError::MissingHeader(H_SIGNATURE_DEPRECATED))?
    } else {
        return Err(ApiSecError::WrongSerial {
            got: headers.serial.clone().unwrap_or_default(),
            want: keys.platform_sn.clone(),
        });
    };
    let body_text = std::str::from_utf8(body).map_err(|_| ApiSecError::Envelope)?;
    let signature = STANDARD
        .decode(signature.trim())
        .ok()
        .and_then(|bytes| rsa::pss::Signature::try_from(bytes.as_slice()).ok())
        .ok_or(ApiSecError::BadSignature)?;
    if !keys.platform_key.verify(
        signing_string(urlpath, appid, timestamp, body_text).as_bytes(),
        &signature,
    ) {
        return Err(ApiSecError::BadSignature);
    }
    let envelope: Envelope = serde_json::from_str(body_text).map_err(|_| ApiSecError::Envelope)?;
    let plaintext = Zeroizing::new(open(
        &keys.sym_key,
        &aad(urlpath, appid, timestamp, &keys.sym_sn),
        &envelope,
    )?);
    let mut answer: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&plaintext).map_err(|_| ApiSecError::Decrypt)?;
    if answer.get("_appid").and_then(serde_json::Value::as_str) != Some(appid) {
        return Err(ApiSecError::Mismatch("_appid"));
    }
    if answer.get("_timestamp").and_then(serde_json::Value::as_i64) != Some(ts) {
        return Err(ApiSecError::Mismatch("_timestamp"));
    }
    for field in ["_n", "_appid", "_timestamp"] {
        answer.remove(field);
    }
    Ok(serde_json::Value::Object(answer).to_string())
}

/// An unsigned answer: WeChat's clear refusal (a non-zero `errcode`), else not accepted.
fn unsigned(body: &[u8]) -> ApiSecError {
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let errcode = value
        .as_ref()
        .and_then(|v| v.get("errcode"))
        .and_then(serde_json::Value::as_i64)
        .filter(|code| *code != 0);
    match errcode {
        Some(errcode) => ApiSecError::Refused {
            errcode,
            errmsg: value
                .as_ref()
                .and_then(|v| v.get("errmsg"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        },
        None => ApiSecError::Unsigned,
    }
}

/// What WeChat's API-security errcodes (40230–40240) mean, for the operator.
pub fn describe_errcode(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        40230 => "Wechatmp-Serial missing",
        40231 => "Wechatmp-TimeStamp missing",
        40232 => "Wechatmp-Signature missing",
        40233 => "Wechatmp-Appid missing",
        40234 => "invalid signature: check private_key and private_key_sn",
        40235 => "invalid encryption: check sym_key and sym_sn",
        40236 => "invalid Wechatmp-Appid",
        40237 => "Wechatmp-Appid does not match the access token",
        40238 => "no symmetric key set in the console",
        40239 => "no public key set in the console",
        40240 => "timestamp expired: check the issuer's clock",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
