//! WeChat's answers, parsed (pure): every errcode mapped to a [`WechatError`], each API's
//! fields with WeChat's spellings and quirks.

use super::*;

#[derive(Deserialize)]
struct RawCode2Session {
    #[serde(default)]
    openid: Option<String>,
    #[serde(default)]
    session_key: Option<String>,
    #[serde(default)]
    unionid: Option<String>,
    #[serde(default)]
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: Option<String>,
}

/// How much of WeChat's `errmsg` an error keeps (and so the log lines that print it).
const ERRMSG_CHARS: usize = 200;

/// Maps an errcode to an error (`errcode` 0 is not an error and is not passed here). WeChat's
/// `errmsg` is kept cut to [`ERRMSG_CHARS`] characters, control characters blanked: it is text
/// from outside (a proxy at `WEAUTH_WECHAT_API_BASE` could echo a request back), logged as it
/// is kept.
pub fn errcode_error(errcode: i64, errmsg: &str) -> WechatError {
    let errmsg: String = errmsg
        .chars()
        .take(ERRMSG_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let errmsg = errmsg.as_str();
    match errcode {
        -1 => WechatError::Busy,
        // 42003: an expired web OAuth2 code.
        40029 | 40163 | 42003 => WechatError::InvalidCode { errcode },
        // The app lacks the API; `sns/userinfo` reads it as the user's scope instead
        // (`web::classify_userinfo`).
        48001 => WechatError::ApiUnauthorized {
            errmsg: errmsg.to_string(),
        },
        45011 => WechatError::RateLimited,
        40226 => WechatError::HighRisk,
        40001 | 42001 | 40014 => WechatError::InvalidAccessToken {
            errcode,
            after_lost: None,
        },
        40013 | 40125 => WechatError::Misconfigured {
            errcode,
            errmsg: errmsg.to_string(),
        },
        // The refusals of WeChat's API security layer (missing headers, bad signature or
        // encryption, expired timestamp, keys not set in the console).
        40230..=40240 => WechatError::ApiSecurity(crate::wechat::apisec::ApiSecError::Refused {
            errcode,
            errmsg: errmsg.to_string(),
        }),
        _ => WechatError::Other {
            errcode,
            errmsg: errmsg.to_string(),
        },
    }
}

/// Interprets a `jscode2session` answer (status and body), whatever its content type.
///
/// # Errors
/// Non-2xx → [`WechatError::Status`]; non-JSON → [`WechatError::Unreadable`]; an `errcode`
/// other than 0 → see [`errcode_error`]; a success missing `openid` or `session_key` →
/// [`WechatError::Unreadable`].
pub fn classify(status: u16, body: &[u8]) -> Result<Code2Session, WechatError> {
    if !(200..300).contains(&status) {
        return Err(WechatError::Status(status));
    }
    let raw: RawCode2Session = serde_json::from_slice(body)
        .map_err(|_| WechatError::Unreadable(format!("{} bytes of non-JSON", body.len())))?;
    if let Some(errcode) = raw.errcode.filter(|code| *code != 0) {
        return Err(errcode_error(errcode, raw.errmsg.as_deref().unwrap_or("")));
    }
    let openid = raw
        .openid
        .filter(|o| !o.is_empty())
        .ok_or_else(|| WechatError::Unreadable("success without openid".into()))?;
    let session_key = raw
        .session_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| WechatError::Unreadable("success without session_key".into()))?;
    Ok(Code2Session {
        openid,
        session_key: Zeroizing::new(session_key),
        unionid: raw.unionid.filter(|u| !u.is_empty()),
    })
}

/// An app access token from `cgi-bin/stable_token`.
#[derive(Clone)]
pub struct AccessToken {
    /// The token. Never logged.
    pub token: Zeroizing<String>,
    /// Seconds it stays valid from now, as WeChat said.
    pub expires_in: i64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The `phone_info` of `getuserphonenumber`. The number is personal data: never logged.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct PhoneInfo {
    /// With the country prefix for numbers outside mainland China (`+1...`), else bare.
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
    /// Without country code.
    #[serde(rename = "purePhoneNumber")]
    pub pure_phone_number: String,
    /// Country calling code, e.g. `86`.
    #[serde(rename = "countryCode", deserialize_with = "string_or_number")]
    pub country_code: String,
}

impl std::fmt::Debug for PhoneInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneInfo")
            .field("country_code", &self.country_code)
            .finish_non_exhaustive()
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(
            "countryCode is neither string nor number",
        )),
    }
}

/// Interprets the answer of a WeChat API other than `jscode2session`: a 2xx JSON object whose
/// `errcode`, when present and not 0, is an error. Returns the object.
///
/// # Errors
/// As [`classify`]: non-2xx, non-JSON, or an errcode (see [`errcode_error`]).
pub fn classify_json(status: u16, body: &[u8]) -> Result<serde_json::Value, WechatError> {
    if !(200..300).contains(&status) {
        return Err(WechatError::Status(status));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| WechatError::Unreadable(format!("{} bytes of non-JSON", body.len())))?;
    if !value.is_object() {
        return Err(WechatError::Unreadable("JSON that is not an object".into()));
    }
    let errcode =
        match value.get("errcode") {
            None => None,
            Some(code) => Some(code.as_i64().ok_or_else(|| {
                WechatError::Unreadable("an errcode that is not an integer".into())
            })?),
        };
    if let Some(errcode) = errcode.filter(|code| *code != 0) {
        let errmsg = value
            .get("errmsg")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        return Err(errcode_error(errcode, errmsg));
    }
    Ok(value)
}

/// The longest an app access token is taken to live, whatever `expires_in` says (WeChat's
/// is 7200 s): a larger number — up to `i64::MAX` from whatever answers at
/// `WEAUTH_WECHAT_API_BASE` — overflowed the expiry's arithmetic (a panic in a debug build, in
/// release a token expired at once and fetched again at every call).
pub const MAX_TOKEN_LIFETIME_S: i64 = 86_400;

/// Interprets a `stable_token` answer.
///
/// # Errors
/// See [`classify_json`]; a success without `access_token` or a positive `expires_in` is
/// [`WechatError::Unreadable`]. An `expires_in` over [`MAX_TOKEN_LIFETIME_S`] is taken as that.
pub fn classify_stable_token(status: u16, body: &[u8]) -> Result<AccessToken, WechatError> {
    let value = classify_json(status, body)?;
    let token = value
        .get("access_token")
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| WechatError::Unreadable("stable_token without access_token".into()))?;
    let expires_in = value
        .get("expires_in")
        .and_then(serde_json::Value::as_i64)
        .filter(|e| *e > 0)
        .ok_or_else(|| WechatError::Unreadable("stable_token without expires_in".into()))?
        .min(MAX_TOKEN_LIFETIME_S);
    Ok(AccessToken {
        token: Zeroizing::new(token.to_string()),
        expires_in,
    })
}

/// Interprets a `getuserphonenumber` answer.
///
/// # Errors
/// See [`classify_json`]; a success without a readable `phone_info` is
/// [`WechatError::Unreadable`].
pub fn classify_phone(status: u16, body: &[u8]) -> Result<PhoneInfo, WechatError> {
    let mut value = classify_json(status, body)?;
    let info = value
        .get_mut("phone_info")
        .map(serde_json::Value::take)
        .ok_or_else(|| WechatError::Unreadable("success without phone_info".into()))?;
    serde_json::from_value(info)
        .map_err(|_| WechatError::Unreadable("phone_info without a phone number".into()))
}

/// Interprets a `checksession` answer: `Ok(true)` valid — only for an explicit `errcode` 0, as
/// WeChat always sends (`{"errcode":0,"errmsg":"ok"}`): an answer without one vouches for
/// nothing — `Ok(false)` for 87009 (the signature, i.e. the session_key, is not the user's
/// current one).
///
/// # Errors
/// Any other failure, see [`classify_json`]; no `errcode` is [`WechatError::Unreadable`].
pub fn classify_checksession(status: u16, body: &[u8]) -> Result<bool, WechatError> {
    match classify_json(status, body) {
        Ok(answer) if answer.get("errcode").and_then(serde_json::Value::as_i64) == Some(0) => {
            Ok(true)
        }
        Ok(_) => Err(WechatError::Unreadable(
            "checksession without errcode 0".into(),
        )),
        Err(WechatError::Other { errcode: 87009, .. }) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Interprets a `getuserriskrank` answer: the user's `risk_rank`, 0 (lowest) to 4. The rest
/// of the answer (`unoin_id`, WeChat's spelling of a unionid) is not used.
///
/// # Errors
/// See [`classify_json`]; a success without a rank 0–4 is [`WechatError::Unreadable`].
pub fn classify_risk_rank(status: u16, body: &[u8]) -> Result<u8, WechatError> {
    classify_json(status, body)?
        .get("risk_rank")
        .and_then(serde_json::Value::as_u64)
        .and_then(|rank| u8::try_from(rank).ok())
        .filter(|rank| *rank <= 4)
        .ok_or_else(|| WechatError::Unreadable("getuserriskrank without a risk_rank 0-4".into()))
}

/// Interprets a `getpluginopenpid` answer: the user's `openpid` in the plugin.
///
/// Its API page lists errcodes of its own rather than the common ones: 1007 (no data for the
/// code: unknown, used or expired), 1001 (invalid parameters: a malformed code) and 1005 (the
/// code is another plugin's) are [`WechatError::InvalidCode`] — 400 `invalid_grant`, and a
/// retry that meets them after a lost answer is that answer's echo (`with_retry`); 1000
/// (system error) is [`WechatError::Busy`], retried; 1003 (too frequent) is
/// [`WechatError::RateLimited`]. The common codes (40029, 40001, …) mean what they mean
/// elsewhere.
///
/// # Errors
/// See [`classify_json`]; a success without an `openpid` is [`WechatError::Unreadable`].
pub fn classify_openpid(status: u16, body: &[u8]) -> Result<String, WechatError> {
    classify_json(status, body)
        .map_err(|err| match err {
            WechatError::Other { errcode, .. } => match errcode {
                1001 | 1005 | 1007 => WechatError::InvalidCode { errcode },
                1000 => WechatError::Busy,
                1003 => WechatError::RateLimited,
                _ => err,
            },
            other => other,
        })?
        .get("openpid")
        .and_then(serde_json::Value::as_str)
        .filter(|openpid| !openpid.is_empty())
        .map(String::from)
        .ok_or_else(|| WechatError::Unreadable("getpluginopenpid without openpid".into()))
}

/// What `getuserriskrank` is asked about: the user at login.
#[derive(Debug, Clone, Copy)]
pub struct RiskQuery<'a> {
    pub appid: &'a str,
    pub openid: &'a str,
    /// 0 registration/login, 1 marketing.
    pub scene: u8,
    /// The real client's address (the trusted `X-Forwarded-For` hop, else the peer).
    pub client_ip: std::net::IpAddr,
}

/// What `checkencryptedmsg` said of a user's encrypted data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EncryptedCheck {
    /// WeChat generated the data within the last 3 days.
    pub valid: bool,
    /// When WeChat generated it (unix seconds), when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
}

/// `checkencryptedmsg`'s `encrypted_msg_hash`: hex(SHA-256) of `encryptedData` exactly as the
/// client received it (the base64 text, not the decoded bytes — WeChat's documented example
/// hashes the text).
pub fn encrypted_msg_hash(encrypted_data: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(encrypted_data.as_bytes()))
}

/// Interprets a `checkencryptedmsg` answer: errcode 0 with `vaild` (WeChat's spelling; a
/// corrected `valid` is read too) and `create_time`; errcode 1 (no such data: not generated by
/// WeChat, or more than 3 days ago) is `valid: false`, not an error.
///
/// # Errors
/// Any other failure, see [`classify_json`]; a success without a boolean verdict is
/// [`WechatError::Unreadable`].
pub fn classify_encrypted_check(status: u16, body: &[u8]) -> Result<EncryptedCheck, WechatError> {
    let value = match classify_json(status, body) {
        Ok(value) => value,
        Err(WechatError::Other { errcode: 1, .. }) => {
            return Ok(EncryptedCheck {
                valid: false,
                create_time: None,
            })
        }
        Err(err) => return Err(err),
    };
    let valid = value
        .get("vaild")
        .or_else(|| value.get("valid"))
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| WechatError::Unreadable("checkencryptedmsg without vaild".into()))?;
    Ok(EncryptedCheck {
        valid,
        create_time: value.get("create_time").and_then(serde_json::Value::as_i64),
    })
}
