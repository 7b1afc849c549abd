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
//!   `invalid_grant`.
//! - checksession: `GET /v1/me/session` → `{"valid": bool}`: WeChat `/wxa/checksession` with
//!   the app access token, the caller's openid and hex(HMAC-SHA256(key = session_key text,
//!   "")); WeChat's 87009 (signature mismatch: a later `wx.login` rotated the key) is
//!   `valid: false`, not an error.
//!
//! Nothing here logs the phone number, encryptedData, the session_key or the access token.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;
use weauth_token::Claims;

use crate::config::apps::Apps;
use crate::config::Config;
use crate::error::{phone_error, ApiError};
use crate::secrets::DataKey;
use crate::store::shared::Limiter;
use crate::store::Store;
use crate::telemetry::metrics::Metrics;
use crate::wechat::access_token::{AccessTokens, CallError};
use crate::wechat::{encrypted_msg_hash, EncryptedCheck, WechatClients};

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
#[derive(Debug, Serialize)]
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

/// Seals a phone number for the `users.phone` column (base64 text).
///
/// # Errors
/// 500 when sealing fails.
pub fn seal_phone(data_key: &DataKey, sub: &str, phone: &str) -> Result<String, ApiError> {
    data_key
        .seal(phone.as_bytes(), &phone_aad(sub))
        .map(|sealed| STANDARD.encode(sealed))
        .map_err(|err| ApiError::Internal(err.to_string()))
}

/// Opens a phone number sealed by [`seal_phone`].
///
/// # Errors
/// 500 when the column does not open with the data key.
pub fn open_phone(data_key: &DataKey, sub: &str, stored: &str) -> Result<String, ApiError> {
    let sealed = STANDARD
        .decode(stored)
        .map_err(|_| ApiError::Internal("stored phone is not base64".into()))?;
    let bytes = data_key
        .open(&sealed, &phone_aad(sub))
        .map_err(|err| ApiError::Internal(err.to_string()))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::Internal("stored phone is not UTF-8".into()))
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
        self.spend_wechat_call(claims, now).await?;
        let info = self
            .access_tokens
            .call_for(&claims.appid, |token| async move {
                wechat.phone_number(&token, code, &claims.openid).await
            })
            .await
            .map_err(|err| match err {
                CallError::Token(token) => ApiError::from(token),
                CallError::Api(api) => phone_error(api),
            })?;
        let sealed = seal_phone(&self.data_key, &claims.sub, &info.phone_number)?;
        let stored = self
            .store
            .set_phone(&claims.sub, Some(&sealed), now)
            .await?;
        if !stored {
            return Err(ApiError::InvalidToken(
                "the token's user no longer exists".into(),
            ));
        }
        tracing::info!(sub = %claims.sub, country = %info.country_code, "phone number stored");
        Ok(Phone {
            phone_number: info.phone_number,
            pure_phone_number: info.pure_phone_number,
            country_code: info.country_code,
        })
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
