//! WeChat's side of the server API security (服务端API安全鉴权), written from WeChat's guide
//! (<https://developers.weixin.qq.com/miniprogram/dev/server/getting_started/api_signature.html>)
//! independently of the issuer's `wechat_apisec` module, so a misreading of the guide in one
//! does not hide in the other.
//!
//! A request to a route that supports it, carrying `Wechatmp-*` headers, is checked as WeChat
//! does and refused in clear with WeChat's errcodes: 40233/40231/40232/40230 for a missing
//! `Wechatmp-Appid`/`-TimeStamp`/`-Signature`/`-Serial`, 40238 for an app without keys,
//! 40237 when the appid is not the access token's app, 40240 for a timestamp more than 300 s
//! from the mock's clock, 40234 for a wrong key number or a signature that does not verify
//! (RSA-PSS SHA-256, salt 32, over `urlpath\nappid\ntimestamp\nbody`), 40235 for a body that
//! does not decrypt (AES-256-GCM, AAD `urlpath|appid|timestamp|sn`) or whose `_appid`,
//! `_timestamp` or `_n` is wrong. A request that passes is answered encrypted (with `_n`,
//! `_appid`, `_timestamp` added) and signed with the platform key, unless the test asked for
//! a broken answer ([`ApiSecAnswer`]). A request without the headers is served in clear.

use std::sync::OnceLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore as _;
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Verifier as _};
use serde_json::Value;
use sha2::Sha256;

/// The routes WeChat lists as supporting encryption (of those the mock serves).
pub const SECURED_ROUTES: [&str; 4] = [
    "getuserphonenumber",
    "getuserriskrank",
    "getpluginopenpid",
    "checkencryptedmsg",
];

/// How far a request's timestamp may be from the mock's clock (seconds).
pub const MAX_SKEW_S: i64 = 300;

/// One app's API security keys, as WeChat holds them: the symmetric key, the app's PUBLIC
/// key (to verify requests) and the platform's PRIVATE key (to sign answers).
#[derive(Clone)]
pub struct MockApiSecurity {
    pub appid: String,
    pub sym_key: [u8; 32],
    pub sym_sn: String,
    /// PEM `PUBLIC KEY` of the app's key pair.
    pub app_public_key_pem: String,
    /// The app key pair's number (the request's `Wechatmp-Serial`).
    pub app_key_sn: String,
    /// PEM PKCS#8 `PRIVATE KEY` of the platform certificate.
    pub platform_private_key_pem: String,
    /// The platform certificate's number (the answer's `Wechatmp-Serial`).
    pub platform_sn: String,
}

impl std::fmt::Debug for MockApiSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockApiSecurity")
            .field("appid", &self.appid)
            .field("sym_sn", &self.sym_sn)
            .field("app_key_sn", &self.app_key_sn)
            .field("platform_sn", &self.platform_sn)
            .finish_non_exhaustive()
    }
}

/// The directory of the test keys (`mockwechat/fixtures/apisec`, see its README).
pub fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/apisec")
}

impl MockApiSecurity {
    /// The test keys of `mockwechat/fixtures/apisec` for `appid`, with the numbers `sym-test-sn`,
    /// `app-test-sn` and `platform-test-sn`. The issuer side of the same keys:
    /// `sym_key.txt`, `app_key.pem`, `platform_cert.pem` in [`fixture_dir`].
    pub fn test_keys(appid: &str) -> MockApiSecurity {
        let text = include_str!("../fixtures/apisec/sym_key.txt");
        let mut sym_key = [0u8; 32];
        let decoded = STANDARD.decode(text.trim()).unwrap_or_default();
        if decoded.len() == 32 {
            sym_key.copy_from_slice(&decoded);
        }
        MockApiSecurity {
            appid: appid.to_string(),
            sym_key,
            sym_sn: "sym-test-sn".into(),
            app_public_key_pem: include_str!("../fixtures/apisec/app_public.pem").into(),
            app_key_sn: "app-test-sn".into(),
            platform_private_key_pem: include_str!("../fixtures/apisec/platform_key.pem").into(),
            platform_sn: "platform-test-sn".into(),
        }
    }
}

/// How the mock answers a verified secured request (a test option; default [`Good`]).
///
/// [`Good`]: ApiSecAnswer::Good
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiSecAnswer {
    /// Encrypted and signed as WeChat does.
    #[default]
    Good,
    /// A signature that does not verify (made over another string).
    BadSignature,
    /// Signed correctly but announced under another platform certificate number.
    WrongSerial,
    /// Signed and encrypted correctly, 600 s in the past.
    Stale,
    /// Encrypted with another AAD (cannot be decrypted), signed correctly.
    BadEncryption,
    /// WeChat rotating its certificate: `Wechatmp-Serial` is a new number with a signature
    /// the app cannot check, `Wechatmp-Serial-Deprecated` the app's number with a good one.
    Rotating,
    /// The plain answer, neither encrypted nor signed.
    Unsigned,
}

impl ApiSecAnswer {
    /// Parses the control route's names.
    pub fn parse(name: &str) -> Option<ApiSecAnswer> {
        Some(match name {
            "good" => ApiSecAnswer::Good,
            "bad_signature" => ApiSecAnswer::BadSignature,
            "wrong_serial" => ApiSecAnswer::WrongSerial,
            "stale" => ApiSecAnswer::Stale,
            "bad_encryption" => ApiSecAnswer::BadEncryption,
            "rotating" => ApiSecAnswer::Rotating,
            "unsigned" => ApiSecAnswer::Unsigned,
            _ => return None,
        })
    }
}

/// What a secured request carried, once verified.
pub struct Opened {
    pub appid: String,
    pub urlpath: String,
    /// The API's parameters (the plaintext without `_n`, `_appid`, `_timestamp`).
    pub params: Vec<u8>,
}

/// A refusal in WeChat's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub errcode: i64,
    pub errmsg: &'static str,
}

fn refuse(errcode: i64, errmsg: &'static str) -> Refusal {
    Refusal { errcode, errmsg }
}

/// The request's `Wechatmp-*` headers.
#[derive(Debug, Default, Clone)]
pub struct RequestHeaders {
    pub appid: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub serial: Option<String>,
}

impl RequestHeaders {
    pub fn read(headers: &hyper::HeaderMap) -> RequestHeaders {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        RequestHeaders {
            appid: get("wechatmp-appid"),
            timestamp: get("wechatmp-timestamp"),
            signature: get("wechatmp-signature"),
            serial: get("wechatmp-serial"),
        }
    }

    /// Whether the caller meant a secured call (any of the headers present).
    pub fn any(&self) -> bool {
        self.appid.is_some()
            || self.timestamp.is_some()
            || self.signature.is_some()
            || self.serial.is_some()
    }
}

/// Verifies and decrypts a secured request of `urlpath` at `now_s`. `keys_of` finds an
/// app's keys; `token_app` says which app the access token belongs to (if any).
pub fn open_request(
    headers: &RequestHeaders,
    urlpath: &str,
    body: &[u8],
    now_s: i64,
    keys_of: impl Fn(&str) -> Option<MockApiSecurity>,
    token_app: Option<String>,
) -> Result<Opened, Refusal> {
    let appid = headers
        .appid
        .as_deref()
        .ok_or(refuse(40233, "API_Missing_Wechatmp_Appid"))?;
    let timestamp = headers
        .timestamp
        .as_deref()
        .ok_or(refuse(40231, "API_Missing_Wechatmp_Timestamp"))?;
    let signature = headers
        .signature
        .as_deref()
        .ok_or(refuse(40232, "API_Missing_Wechatmp_Signature"))?;
    let serial = headers
        .serial
        .as_deref()
        .ok_or(refuse(40230, "API_Missing_Wechatmp_Serial"))?;
    let keys = keys_of(appid).ok_or(refuse(40238, "API_NoExist_DevSecretSym"))?;
    if token_app.is_some_and(|of| of != appid) {
        return Err(refuse(40237, "API_Invalid_Wechatmp_Appidmatch"));
    }
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| refuse(40240, "API_Expired_Wechatmp_Timestamp"))?;
    if (now_s - ts).abs() > MAX_SKEW_S {
        return Err(refuse(40240, "API_Expired_Wechatmp_Timestamp"));
    }
    if serial != keys.app_key_sn {
        return Err(refuse(40234, "API_Invalid_Signature"));
    }
    let body_text = std::str::from_utf8(body).map_err(|_| refuse(40235, "API_Invalid_Encrypt"))?;
    let message = format!("{urlpath}\n{appid}\n{timestamp}\n{body_text}");
    let public = rsa::RsaPublicKey::from_public_key_pem(&keys.app_public_key_pem)
        .map_err(|_| refuse(40239, "API_NoExist_DevSecretAsym"))?;
    let verifier = rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(public, 32);
    let good = STANDARD
        .decode(signature)
        .ok()
        .and_then(|bytes| rsa::pss::Signature::try_from(bytes.as_slice()).ok())
        .is_some_and(|sig| verifier.verify(message.as_bytes(), &sig).is_ok());
    if !good {
        return Err(refuse(40234, "API_Invalid_Signature"));
    }
    let bad_encrypt = || refuse(40235, "API_Invalid_Encrypt");
    let envelope: Value = serde_json::from_str(body_text).map_err(|_| bad_encrypt())?;
    let field = |name: &str| {
        envelope
            .get(name)
            .and_then(Value::as_str)
            .and_then(|text| STANDARD.decode(text).ok())
    };
    let (Some(iv), Some(mut data), Some(tag)) = (field("iv"), field("data"), field("authtag"))
    else {
        return Err(bad_encrypt());
    };
    if iv.len() != 12 || tag.len() != 16 {
        return Err(bad_encrypt());
    }
    data.extend_from_slice(&tag);
    let aad = format!("{urlpath}|{appid}|{timestamp}|{}", keys.sym_sn);
    let iv: [u8; 12] = iv.try_into().map_err(|_| bad_encrypt())?;
    let plaintext = Aes256Gcm::new(&keys.sym_key.into())
        .decrypt(
            &Nonce::from(iv),
            Payload {
                msg: &data,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| bad_encrypt())?;
    let mut params: serde_json::Map<String, Value> =
        serde_json::from_slice(&plaintext).map_err(|_| bad_encrypt())?;
    let nonce_ok = params
        .get("_n")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !nonce_ok
        || params.get("_appid").and_then(Value::as_str) != Some(appid)
        || params.get("_timestamp").and_then(Value::as_i64) != Some(ts)
    {
        return Err(bad_encrypt());
    }
    for name in ["_n", "_appid", "_timestamp"] {
        params.remove(name);
    }
    Ok(Opened {
        appid: appid.to_string(),
        urlpath: urlpath.to_string(),
        params: Value::Object(params).to_string().into_bytes(),
    })
}

/// A signed and encrypted answer: its body and headers.
pub struct Sealed {
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

fn platform_signer(keys: &MockApiSecurity) -> Option<rsa::pss::SigningKey<Sha256>> {
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(&keys.platform_private_key_pem).ok()?;
    Some(rsa::pss::SigningKey::<Sha256>::new_with_salt_len(
        private, 32,
    ))
}

/// Another key than the platform's, for the "rotating" answer's signature the app cannot
/// check (the fixtures' app key: generating one in a debug build takes seconds).
fn other_signer() -> Option<&'static rsa::pss::SigningKey<Sha256>> {
    static OTHER: OnceLock<Option<rsa::pss::SigningKey<Sha256>>> = OnceLock::new();
    OTHER
        .get_or_init(|| {
            use rsa::pkcs1::DecodeRsaPrivateKey as _;
            let pem = include_str!("../fixtures/apisec/app_key.pem");
            let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem).ok()?;
            Some(rsa::pss::SigningKey::<Sha256>::new_with_salt_len(key, 32))
        })
        .as_ref()
}

fn sign(signer: &rsa::pss::SigningKey<Sha256>, message: &str) -> String {
    STANDARD.encode(
        signer
            .sign_with_rng(&mut rand::thread_rng(), message.as_bytes())
            .to_bytes(),
    )
}

/// Encrypts and signs the plain answer `plain` (a JSON object) of `opened`'s call at `now_s`,
/// broken as `mode` says. `None` for [`ApiSecAnswer::Unsigned`] or when `plain` is not a
/// JSON object (the caller then sends it as it is).
pub fn seal_answer(
    keys: &MockApiSecurity,
    opened: &Opened,
    plain: &[u8],
    now_s: i64,
    mode: ApiSecAnswer,
) -> Option<Sealed> {
    if mode == ApiSecAnswer::Unsigned {
        return None;
    }
    let answer: serde_json::Map<String, Value> = serde_json::from_slice(plain).ok()?;
    let signer = platform_signer(keys)?;
    let ts = if mode == ApiSecAnswer::Stale {
        now_s - 600
    } else {
        now_s
    };
    let appid = opened.appid.as_str();
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut fields = serde_json::Map::new();
    fields.insert(
        "_n".into(),
        Value::from(base64::engine::general_purpose::STANDARD_NO_PAD.encode(nonce)),
    );
    fields.insert("_appid".into(), Value::from(appid));
    fields.insert("_timestamp".into(), Value::from(ts));
    fields.extend(answer);
    let plaintext = Value::Object(fields).to_string();
    let sym_sn = if mode == ApiSecAnswer::BadEncryption {
        "not-the-sn"
    } else {
        keys.sym_sn.as_str()
    };
    let aad = format!("{}|{appid}|{ts}|{sym_sn}", opened.urlpath);
    let mut iv = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut iv);
    let sealed = Aes256Gcm::new(&keys.sym_key.into())
        .encrypt(
            &Nonce::from(iv),
            Payload {
                msg: plaintext.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .ok()?;
    let (data, tag) = sealed.split_at(sealed.len() - 16);
    let body = serde_json::json!({
        "iv": STANDARD.encode(iv),
        "data": STANDARD.encode(data),
        "authtag": STANDARD.encode(tag),
    })
    .to_string();
    let message = format!("{}\n{appid}\n{ts}\n{body}", opened.urlpath);
    let good = sign(&signer, &message);
    let mut headers = vec![
        ("Wechatmp-Appid", appid.to_string()),
        ("Wechatmp-TimeStamp", ts.to_string()),
    ];
    match mode {
        ApiSecAnswer::BadSignature => {
            headers.push(("Wechatmp-Serial", keys.platform_sn.clone()));
            headers.push(("Wechatmp-Signature", sign(&signer, &format!("{message} "))));
        }
        ApiSecAnswer::WrongSerial => {
            headers.push(("Wechatmp-Serial", format!("{}-old", keys.platform_sn)));
            headers.push(("Wechatmp-Signature", good));
        }
        ApiSecAnswer::Rotating => {
            headers.push(("Wechatmp-Serial", format!("{}-next", keys.platform_sn)));
            headers.push(("Wechatmp-Signature", sign(other_signer()?, &message)));
            headers.push(("Wechatmp-Serial-Deprecated", keys.platform_sn.clone()));
            headers.push(("Wechatmp-Signature-Deprecated", good));
        }
        _ => {
            headers.push(("Wechatmp-Serial", keys.platform_sn.clone()));
            headers.push(("Wechatmp-Signature", good));
        }
    }
    Some(Sealed { body, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeChat's worked example (the guide's §3.1.2/§3.2.2: getuserriskrank of
    /// wxba6223c06417af7b at 1635927954): the mock opens the guide's own request.
    #[test]
    fn opens_the_guides_request() {
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        use rsa::pkcs8::EncodePublicKey as _;
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(include_str!(
            "../../issuer/tests/fixtures/apisec/guide_app_key.pem"
        ))
        .unwrap();
        let mut sym_key = [0u8; 32];
        sym_key.copy_from_slice(
            &STANDARD
                .decode("otUpngOjU+nVQaWJIC3D/yMLV17RKaP6t4Ot9tbnzLY=")
                .unwrap(),
        );
        let keys = MockApiSecurity {
            appid: "wxba6223c06417af7b".into(),
            sym_key,
            sym_sn: "fa05fe1e5bcc79b81ad5ad4b58acf787".into(),
            app_public_key_pem: private
                .to_public_key()
                .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .unwrap(),
            app_key_sn: "97845f6ed842ea860df6fdf65941ff56".into(),
            platform_private_key_pem: String::new(),
            platform_sn: "79ba700ea147819f640941bceb38b1d1".into(),
        };
        let body = r#"{"iv":"fmW/zNxXlytUZBgj","data":"0IDVdrPtSPF/Oe2CTXCV2vVNPbVJdJlP2WaTMQnoYLh5iCrrSNfQFh25EnStDMf0hLlVNBCZQtf9NaV0m4aRA4AAYIO7oR/Ge+4yY4EmZp5EVPB42xjScgMx5X3D4VdLCfynXIUKUtZHZvk1zmLVE3RauzJgiM1BB1CPmwcENo3MTJ0z8Vfkf5tMv54kOXobDLlV5rfqKdAX7gM/rP82DgZdt9vvZX44ipdbHIjJvw83ZXAFtvftdVw2Qd8=","authtag":"5qeM/2vZv+6KtScN94IpMg=="}"#;
        let headers = RequestHeaders {
            appid: Some("wxba6223c06417af7b".into()),
            timestamp: Some("1635927954".into()),
            signature: Some("wcSSWHZunjz9VKl9q+If9deiyECXDAELfAJNZ4+5T+NhFr8zfhkwdQtlgQ7nN5xs99R57La9UjBTRBGge2KYyshWtw7HIMPAqWNsnpHvx0b2f7s6Bt7OpfOQLlIfNgepgTVmUwrqW8/7A12szj7tCe/bRFilwnaX6N0w4duHlfL7ic7IIZXouvy9dLRAa5GtEk1eD/LPWRiKh0SvJ3znPY/pSiQW9zSkXVdj9UGGM8qcKLzPGJ7gSmt3ZOPkFapk9wqFmhJwQj//xN5+hUlr2UiNPMNSHve5Y2ADLsNHqk5t7RfAZ8nW9/8lzhVt4t+toy1FeehxCGIC8qgmjIl1hg==".into()),
            serial: Some("97845f6ed842ea860df6fdf65941ff56".into()),
        };
        let urlpath = "https://api.weixin.qq.com/wxa/getuserriskrank";
        let keys_of = |_: &str| Some(keys.clone());
        let opened = open_request(
            &headers,
            urlpath,
            body.as_bytes(),
            1635927954 + 100,
            keys_of,
            None,
        )
        .unwrap_or_else(|r| panic!("{r:?}"));
        let params: Value = serde_json::from_slice(&opened.params).unwrap();
        assert_eq!(
            params,
            serde_json::json!({"appid": "wxba6223c06417af7b", "openid": "oEWzBfmdLqhFS2mTXCo2E4Y9gJAM",
                               "scene": 0, "client_ip": "127.0.0.1"})
        );
        // WeChat's refusals.
        let open = |headers: &RequestHeaders, body: &str, now: i64, token_app: Option<String>| {
            open_request(headers, urlpath, body.as_bytes(), now, keys_of, token_app)
                .err()
                .map(|r| r.errcode)
        };
        assert_eq!(open(&headers, body, 1635927954 + 301, None), Some(40240));
        assert_eq!(
            open(&headers, body, 1635927954, Some("wxother".into())),
            Some(40237)
        );
        assert_eq!(
            open(&headers, &format!("{body} "), 1635927954, None),
            Some(40234)
        );
        let mut wrong = headers.clone();
        wrong.serial = Some("other".into());
        assert_eq!(open(&wrong, body, 1635927954, None), Some(40234));
        for (i, code) in [(0, 40233), (1, 40231), (2, 40232), (3, 40230)] {
            let mut missing = headers.clone();
            match i {
                0 => missing.appid = None,
                1 => missing.timestamp = None,
                2 => missing.signature = None,
                _ => missing.serial = None,
            }
            assert_eq!(open(&missing, body, 1635927954, None), Some(code));
        }
        assert_eq!(
            open_request(
                &headers,
                urlpath,
                body.as_bytes(),
                1635927954,
                |_| None,
                None
            )
            .err()
            .map(|r| r.errcode),
            Some(40238)
        );
    }
}
