//! The mini-program's user data, for a caller authenticated by its access token: encrypted
//! data decryption (`POST /v1/me/decrypt`), the phone number (`POST /v1/me/phone`) and
//! whether its session_key is still current at WeChat (`GET /v1/me/session`).
//!
//! Decisions (for `docs/API.md`):
//! - Decrypt uses the session_key of the caller's own session (the token's `sid`): the issuer
//!   keeps one session per login, so a token from before a later `wx.login` holds the old key.
//!   All crypto and checks are `weauth-wxdata`'s ([`weauth_wxdata::decrypt`]); every refusal
//!   is a 400 whose `error` is the specific code ([`crate::error::ApiError::UserData`]), with
//!   `"relogin": true` when the client must `wx.login` and log in again
//!   (`session_key_mismatch`, or an unusable stored key). `WEAUTH_DECRYPT_MAX_AGE` (default
//!   off) limits the watermark's age. `rawData` + `signature`, when given (both or neither),
//!   are checked after decryption: a mismatch is 400 `invalid_signature`.
//!   The answer is `{"data": <decrypted object, watermark included>, "raw_data_verified": bool}`.
//!   With `"verify_with_wechat": true`, after a successful decryption the issuer also asks
//!   WeChat's `checkencryptedmsg` (app access token, hex(SHA-256(encryptedData text))) whether
//!   WeChat generated that data within the last 3 days, and the answer gains
//!   `"wechat_check": {"valid": bool[, "create_time": unix seconds]}`. WeChat's "no such
//!   data" (errcode 1: forged, replayed from elsewhere, or older than 3 days) is
//!   `valid: false`, not an error; WeChat failing is the usual 502/503 (no partial answer).
//!   WeChat documents the check for phone-number data only.
//! - Phone: `{code}` → WeChat `getuserphonenumber` with the shared app access token
//!   ([`crate::wechat::access_token::AccessTokens::call_for`]); the number is stored on the user row SEALED with the data
//!   key (AES-256-GCM, AAD `phone:<sub>`, base64 in the `phone` column), like the session_key,
//!   because it is personal data. It is returned (`phoneNumber`, `purePhoneNumber`,
//!   `countryCode`) and shown by `GET /v1/me` as `phone`. A bad, expired or used code is 400
//!   `invalid_grant` — except the code whose answer is the stored one: the sealed value keeps
//!   WeChat's whole answer with the SHA-256 of the code it answered ([`StoredPhone`]), and the
//!   same code sent again by the same user (its answer lost on the way back: WeChat redeems a
//!   code once) gets that answer again, 200, with no WeChat call. Sent again while the first
//!   request is still at WeChat, it waits for that one on the same replica
//!   ([`super::flights`]); on another replica it gets the stored answer when WeChat's "code
//!   used" comes after the first stored it, else the 400 (nothing tells it a request is under
//!   way there). A number stored before this (the number alone) still opens; its code is not
//!   known.
//! - checksession: `GET /v1/me/session` → `{"valid": bool}`: WeChat `/wxa/checksession` with
//!   the app access token, the caller's openid and hex(HMAC-SHA256(key = session_key text,
//!   "")); WeChat's 87009 (signature mismatch: a later `wx.login` rotated the key) is
//!   `valid: false`, not an error.
//!
//! Nothing here logs the phone number, encryptedData, the session_key or the access token.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use weauth_token::Claims;

use crate::config::apps::Apps;
use crate::config::Config;
use crate::error::{phone_error, ApiError};
use crate::secrets::{sha256_hex, DataKey};
use crate::service::flights::Flights;
use crate::store::shared::Limiter;
use crate::store::Store;
use crate::telemetry::metrics::Metrics;
use crate::wechat::access_token::{AccessTokens, CallError};
use crate::wechat::{encrypted_msg_hash, EncryptedCheck, WechatClients, WechatError};

/// The user-data use cases, with what they use and nothing else.
pub struct UserData {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Opens session_keys; seals phone numbers.
    pub data_key: DataKey,
    pub metrics: Arc<Metrics>,
    pub wechat: Arc<WechatClients>,
    pub access_tokens: Arc<AccessTokens>,
    /// The WeChat calls each user may make the issuer do (`WEAUTH_USER_WECHAT_RATE`): one
    /// token per `checksession`, `getuserphonenumber` or `checkencryptedmsg` a route asks for.
    pub user_limiter: Arc<dyn Limiter<String>>,
    /// The phone codes being redeemed on this replica, by user and code hash: the same code
    /// sent again meanwhile waits for the first request's answer ([`Flights`]).
    pub phone_flights: Flights,
}

/// The user data a mini-program posts to `/v1/me/decrypt`.
#[derive(Debug, Clone, Copy)]
pub struct DecryptInput<'a> {
    pub encrypted_data: &'a str,
    pub iv: &'a str,
    pub raw_data: Option<&'a str>,
    pub signature: Option<&'a str>,
    /// Also ask WeChat whether it generated the data ([`Decrypted::wechat_check`]).
    pub verify_with_wechat: bool,
}

/// The answer of `/v1/me/decrypt`.
#[derive(Debug, Serialize)]
pub struct Decrypted {
    /// The decrypted JSON object, watermark included.
    pub data: serde_json::Value,
    /// Whether `rawData` + `signature` were given, the signature is the session's and every
    /// member of `rawData` is in `data` with the same value.
    pub raw_data_verified: bool,
    /// WeChat's verdict on the data, when asked (`verify_with_wechat`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_check: Option<EncryptedCheck>,
}

impl UserData {
    /// Decrypts the caller's encrypted data with its session's session_key.
    ///
    /// # Errors
    /// 400 [`ApiError::InvalidRequest`] for a lone `rawData` or `signature`;
    /// [`ApiError::UserData`] for every refusal of the data; `invalid_token` when the session is
    /// gone.
    pub async fn decrypt(
        &self,
        claims: &Claims,
        input: DecryptInput<'_>,
        now: i64,
    ) -> Result<Decrypted, ApiError> {
        let result = self.decrypt_inner(claims, input, now).await;
        match &result {
            Ok(_) => self.metrics.decrypt("ok"),
            Err(err) => {
                self.metrics.decrypt(err.code());
                if let ApiError::UserData { code, relogin, .. } = err {
                    tracing::info!(
                        sid = %crate::short_hash(&claims.sid),
                        code,
                        relogin,
                        "user data refused"
                    );
                }
            }
        }
        result
    }

    async fn decrypt_inner(
        &self,
        claims: &Claims,
        input: DecryptInput<'_>,
        now: i64,
    ) -> Result<Decrypted, ApiError> {
        let raw = match (input.raw_data, input.signature) {
            (Some(raw), Some(signature)) => Some((raw, signature)),
            (None, None) => None,
            _ => {
                return Err(ApiError::InvalidRequest(
                    "rawData and signature go together: send both or neither".into(),
                ))
            }
        };
        require_miniprogram(&self.config.apps, claims, "/v1/me/decrypt")?;
        let session_key = self.session_key(&claims.sid).await?;
        let max_age = self.config.decrypt_max_age.map(|d| d.as_secs());
        let data = match weauth_wxdata::decrypt(
            &session_key,
            input.encrypted_data,
            input.iv,
            &claims.appid,
            now,
            max_age,
        ) {
            Ok(data) => data,
            Err(err) => {
                if err.reveals_plaintext() {
                    // Each such refusal says something of the plaintext under an iv the
                    // caller chose: unlimited, they are a padding oracle that forges any data
                    // (millions of requests). They spend the user's allowance; past it the
                    // answer is the limit's 429, which says nothing.
                    self.take_allowance(claims, now, "too many refused decryptions for this user")
                        .await?;
                }
                return Err(err.into());
            }
        };
        if let Some((raw, signature)) = raw {
            if !weauth_wxdata::check_raw_data_signature(raw, &session_key, signature) {
                return Err(ApiError::UserData {
                    code: "invalid_signature",
                    description: "signature is not hex(sha1(rawData + session_key)) for this \
                              session: rawData was altered, or it was signed for another session"
                        .into(),
                    relogin: false,
                });
            }
            // The signature covers rawData, not the decrypted data (whose first block the
            // client can rewrite through the iv): `raw_data_verified` vouches for `data` only
            // when they say the same.
            if !weauth_wxdata::raw_data_agrees(raw, &data) {
                return Err(ApiError::UserData {
                    code: "invalid_signature",
                    description: "rawData is signed but does not match the decrypted data: \
                                  encryptedData or iv was altered, or they come from another call"
                        .into(),
                    relogin: false,
                });
            }
        }
        let wechat_check = if input.verify_with_wechat {
            self.spend_wechat_call(claims, now).await?;
            let hash = encrypted_msg_hash(input.encrypted_data);
            let wechat = self.wechat.for_appid(&claims.appid)?;
            let hash = hash.as_str();
            Some(
                self.access_tokens
                    .call_for(&claims.appid, |token| async move {
                        wechat.check_encrypted_data(&token, hash).await
                    })
                    .await?,
            )
        } else {
            None
        };
        Ok(Decrypted {
            data,
            raw_data_verified: raw.is_some(),
            wechat_check,
        })
    }
}

/// The mini-program-only routes answer 400 for a session of another kind of app: a web login
/// (official account, website) has no `session_key` and no `wx.*` user data.
///
/// # Errors
/// 400 `invalid_request` naming the route and the app's kind.
pub fn require_miniprogram(apps: &Apps, claims: &Claims, route: &str) -> Result<(), ApiError> {
    match apps.get(&claims.appid).map(|entry| entry.kind) {
        Some(crate::config::apps::AppKind::Miniprogram) => Ok(()),
        Some(kind) => Err(ApiError::InvalidRequest(format!(
            "{route} is for mini-program sessions; this session is a web login of a {} app, which has no session_key",
            kind.as_str()
        ))),
        None => Err(ApiError::InvalidRequest(format!(
            "{route}: the session's appid is no longer configured"
        ))),
    }
}

/// The answer of `/v1/me/phone` (WeChat's names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phone {
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
    #[serde(rename = "purePhoneNumber")]
    pub pure_phone_number: String,
    #[serde(rename = "countryCode")]
    pub country_code: String,
}

fn phone_aad(sub: &str) -> String {
    format!("phone:{sub}")
}

/// What the `users.phone` column holds, sealed: WeChat's answer to a phone code and the
/// SHA-256 (hex) of that code, so that the same code sent again is answered from here. Sealed
/// as JSON; a value stored before it was kept is the number alone (never starting with `{`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPhone {
    #[serde(flatten)]
    pub phone: Phone,
    pub code_sha256: Option<String>,
}

/// Seals a phone code's answer for the `users.phone` column (base64 text).
///
/// # Errors
/// 500 when sealing fails.
pub fn seal_phone(data_key: &DataKey, sub: &str, stored: &StoredPhone) -> Result<String, ApiError> {
    let plain = serde_json::to_vec(stored).map_err(|err| ApiError::Internal(err.to_string()))?;
    data_key
        .seal(&plain, &phone_aad(sub))
        .map(|sealed| STANDARD.encode(sealed))
        .map_err(|err| ApiError::Internal(err.to_string()))
}

/// Opens a value sealed by [`seal_phone`], or a number alone sealed before answers were kept
/// (its other fields empty, its code unknown).
///
/// # Errors
/// 500 when the column does not open with the data key or is neither form.
pub fn open_phone(data_key: &DataKey, sub: &str, stored: &str) -> Result<StoredPhone, ApiError> {
    let sealed = STANDARD
        .decode(stored)
        .map_err(|_| ApiError::Internal("stored phone is not base64".into()))?;
    let bytes = data_key
        .open(&sealed, &phone_aad(sub))
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    if bytes.first() == Some(&b'{') {
        return serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::Internal("stored phone is not its JSON form".into()));
    }
    let number = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::Internal("stored phone is not UTF-8".into()))?;
    Ok(StoredPhone {
        phone: Phone {
            phone_number: number,
            pure_phone_number: String::new(),
            country_code: String::new(),
        },
        code_sha256: None,
    })
}

/// A stored phone value sealed again under the current data key, or `None` when it already
/// is (a data-key rotation's reseal, `weauth-issuer data-key reseal`). The plaintext is kept
/// as it is, in either form [`open_phone`] reads.
///
/// # Errors
/// 500 when the value opens under no key.
pub fn reseal_phone(
    data_key: &DataKey,
    sub: &str,
    stored: &str,
) -> Result<Option<String>, ApiError> {
    let sealed = STANDARD
        .decode(stored)
        .map_err(|_| ApiError::Internal("stored phone is not base64".into()))?;
    if data_key.opens_without_previous(&sealed, &phone_aad(sub)) {
        return Ok(None);
    }
    let plain = data_key
        .open(&sealed, &phone_aad(sub))
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    data_key
        .seal(&plain, &phone_aad(sub))
        .map(|sealed| Some(STANDARD.encode(sealed)))
        .map_err(|err| ApiError::Internal(err.to_string()))
}

impl UserData {
    /// Redeems a `getPhoneNumber` code at WeChat and stores the number on the caller's user.
    ///
    /// # Errors
    /// 400 `invalid_request` for an empty or oversized code, 400 `invalid_grant` for a bad, expired
    /// or used code, 503/502 when WeChat or its token endpoint fails, `invalid_token` when the
    /// user is gone.
    pub async fn phone(&self, claims: &Claims, code: &str, now: i64) -> Result<Phone, ApiError> {
        let result = self.phone_inner(claims, code, now).await;
        self.metrics.phone(match &result {
            Ok(_) => "ok",
            Err(err) => err.code(),
        });
        result
    }

    async fn phone_inner(&self, claims: &Claims, code: &str, now: i64) -> Result<Phone, ApiError> {
        if code.is_empty() || code.len() > 512 {
            return Err(ApiError::InvalidRequest(
                "code must be the non-empty code from getPhoneNumber".into(),
            ));
        }
        require_miniprogram(&self.config.apps, claims, "/v1/me/phone")?;
        let wechat = self.wechat.for_appid(&claims.appid)?;
        let code_sha256 = sha256_hex(code.as_bytes());
        // The same code sent again while it is at WeChat: after the first request, the
        // answer it stored (or, when it failed, a WeChat call of this one's own).
        let _flight = self
            .phone_flights
            .enter(&format!("{}:{code_sha256}", claims.sub))
            .await;
        if let Some(phone) = self.answer_kept(claims, &code_sha256).await? {
            return Ok(phone);
        }
        self.spend_wechat_call(claims, now).await?;
        let info = match self
            .access_tokens
            .call_for(&claims.appid, |token| async move {
                wechat.phone_number(&token, code, &claims.openid).await
            })
            .await
        {
            Ok(info) => info,
            Err(CallError::Token(token)) => return Err(ApiError::from(token)),
            Err(CallError::Api(err @ WechatError::InvalidCode { .. })) => {
                // Used: perhaps by a request with the same code on another replica, which
                // stored its answer while this one was on its way to WeChat.
                return match self.answer_kept(claims, &code_sha256).await? {
                    Some(phone) => Ok(phone),
                    None => Err(phone_error(err)),
                };
            }
            Err(CallError::Api(err)) => return Err(phone_error(err)),
        };
        let answer = StoredPhone {
            phone: Phone {
                phone_number: info.phone_number,
                pure_phone_number: info.pure_phone_number,
                country_code: info.country_code,
            },
            code_sha256: Some(code_sha256),
        };
        let sealed = seal_phone(&self.data_key, &claims.sub, &answer)?;
        let stored = self
            .store
            .set_phone(&claims.sub, Some(&sealed), now)
            .await?;
        if !stored {
            return Err(ApiError::InvalidToken(
                "the token's user no longer exists".into(),
            ));
        }
        tracing::info!(sub = %claims.sub, country = %answer.phone.country_code, "phone number stored");
        Ok(answer.phone)
    }

    /// The answer stored on the caller's user for the phone code of this hash, if that is the
    /// code whose answer the user's number is.
    async fn answer_kept(
        &self,
        claims: &Claims,
        code_sha256: &str,
    ) -> Result<Option<Phone>, ApiError> {
        let Some(sealed) = self
            .store
            .user(&claims.sub)
            .await?
            .and_then(|user| user.phone)
        else {
            return Ok(None);
        };
        // A number no key opens (a data key dropped too early, a damaged row) is no answer:
        // bound again, it is replaced.
        let stored = match open_phone(&self.data_key, &claims.sub, &sealed) {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(
                    sub = %claims.sub,
                    error = %err,
                    "the stored phone number does not open: a number bound now replaces it"
                );
                return Ok(None);
            }
        };
        if stored.code_sha256.as_deref() != Some(code_sha256) {
            return Ok(None);
        }
        tracing::info!(
            sub = %claims.sub,
            "phone code sent again: answered with the number it stored (WeChat redeems a code once)"
        );
        Ok(Some(stored.phone))
    }

    /// Asks WeChat whether the caller's session_key is still the user's current one.
    ///
    /// # Errors
    /// `invalid_token` when the session is gone; 503/502 when WeChat or its token endpoint fails.
    pub async fn check_session(&self, claims: &Claims, now: i64) -> Result<bool, ApiError> {
        let result = self.check_session_inner(claims, now).await;
        self.metrics.checksession(match &result {
            Ok(true) => "valid",
            Ok(false) => "invalid",
            Err(ApiError::RateLimited { .. }) => "rate_limited",
            Err(_) => "error",
        });
        result
    }

    async fn check_session_inner(&self, claims: &Claims, now: i64) -> Result<bool, ApiError> {
        require_miniprogram(&self.config.apps, claims, "/v1/me/session")?;
        let session_key = self.session_key(&claims.sid).await?;
        let signature = weauth_wxdata::checksession_signature(&session_key);
        let (openid, signature) = (claims.openid.as_str(), signature.as_str());
        let wechat = self.wechat.for_appid(&claims.appid)?;
        self.spend_wechat_call(claims, now).await?;
        self.access_tokens
            .call_for(&claims.appid, |token| async move {
                wechat.check_session(&token, openid, signature).await
            })
            .await
            .map_err(ApiError::from)
    }
    /// Takes one of the caller's WeChat calls (`WEAUTH_USER_WECHAT_RATE`), just before the call.
    ///
    /// # Errors
    /// 429 `rate_limited` with `Retry-After` when the user has none left.
    async fn spend_wechat_call(&self, claims: &Claims, now: i64) -> Result<(), ApiError> {
        self.take_allowance(claims, now, "too many calls to WeChat for this user")
            .await
    }

    /// Takes one from the user's allowance (`WEAUTH_USER_WECHAT_RATE`); past it, 429 saying
    /// `what`.
    async fn take_allowance(&self, claims: &Claims, now: i64, what: &str) -> Result<(), ApiError> {
        self.user_limiter
            .take(&claims.sub, now as f64)
            .await
            .map_err(|retry| ApiError::RateLimited {
                retry_after: retry.0,
                description: format!("{what}; retry later"),
            })
    }

    /// The decrypted `session_key` (base64 text, as WeChat sent it) of a session, for
    /// `/v1/me/decrypt` and `/v1/me/session` (see `userdata`).
    ///
    /// # Errors
    /// `invalid_token` when the session is unknown; 5xx when it does not decrypt.
    pub async fn session_key(&self, sid: &str) -> Result<zeroize::Zeroizing<String>, ApiError> {
        let sealed =
            self.store.session_key_sealed(sid).await?.ok_or_else(|| {
                ApiError::InvalidToken("the token's session no longer exists".into())
            })?;
        let bytes = self
            .data_key
            .open(&sealed, &format!("session_key:{sid}"))
            .map_err(|err| ApiError::Internal(err.to_string()))?;
        String::from_utf8(bytes.to_vec())
            .map(zeroize::Zeroizing::new)
            .map_err(|_| ApiError::Internal("stored session_key is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_bytes(&[7; 32])
    }

    fn answer(code: Option<&str>) -> StoredPhone {
        StoredPhone {
            phone: Phone {
                phone_number: "+86 138 0013 8000".into(),
                pure_phone_number: "13800138000".into(),
                country_code: "86".into(),
            },
            code_sha256: code.map(|code| sha256_hex(code.as_bytes())),
        }
    }

    #[test]
    fn stored_phone_answer_opens_as_sealed_for_its_user_only() {
        let sealed = seal_phone(&key(), "u_1", &answer(Some("code-1"))).unwrap();
        assert_eq!(
            open_phone(&key(), "u_1", &sealed).unwrap(),
            answer(Some("code-1"))
        );
        assert!(!sealed.contains("13800138000"));
        assert!(
            open_phone(&key(), "u_2", &sealed).is_err(),
            "bound to its user"
        );
    }

    /// A number sealed alone (before the code's answer was kept) still opens: the number, no
    /// code — which no code sent again matches.
    #[test]
    fn number_sealed_alone_opens_without_a_code() {
        let sealed = STANDARD.encode(key().seal(b"13800138000", &phone_aad("u_1")).unwrap());
        let stored = open_phone(&key(), "u_1", &sealed).unwrap();
        assert_eq!(stored.phone.phone_number, "13800138000");
        assert_eq!(stored.code_sha256, None);
    }
}
