//! The WeChat apps one issuer serves: mini-programs, official accounts (公众号 H5 pages) and
//! websites (QR login), read from `WEAUTH_APPS_FILE` or from the one-app shortcut
//! `WEAUTH_WECHAT_APPID` + `WEAUTH_WECHAT_SECRET`.
//!
//! The file is JSON, unknown fields refused:
//!
//! ```json
//! {"apps": [
//!   {"appid": "wx…", "secret_file": "/run/secrets/mini", "kind": "miniprogram"},
//!   {"appid": "wx…", "secret": "…", "kind": "official_account",
//!    "redirect_uris": ["https://www.example.com/h5/after-login"]},
//!   {"appid": "wx…", "secret": "…", "kind": "website", "redirect_uris": ["https://www.example.com/"]},
//!   {"appid": "wx…", "secret_file": "/run/secrets/plugin", "kind": "plugin"}
//! ]}
//! ```
//!
//! Rules, checked once at start ([`parse_apps_file`]); a violation stops the process naming the
//! entry (`apps[1] (wx…)`):
//! - at least one app; appids are `[A-Za-z0-9_]`, unique;
//! - exactly one of `secret` / `secret_file` (the file's trailing newline is dropped);
//! - `official_account` and `website` need at least one `redirect_uris` entry; a
//!   `miniprogram` or `plugin` has none;
//! - a redirect URI is an absolute `https://` URL without fragment or user info, or
//!   `http://` on a loopback host (`localhost`, `127.0.0.1`, `[::1]`) for development. It is
//!   later compared to the requested `redirect_uri` byte for byte ([`App::allows_redirect`]):
//!   no prefix match, no normalisation, so no open redirect.
//! - a `miniprogram` may carry `"risk": {"max_rank": 0–4, "scene": 0|1, "on_error":
//!   "allow"|"deny"}` (`scene` defaults to 0, `on_error` to `allow`): WeChat's risk control
//!   at login ([`Risk`]); other kinds may not (the API judges mini-program users).
//! - a `miniprogram` or `plugin` may carry `"api_security"`: the keys of WeChat's server API
//!   security (服务端API安全鉴权, the console's "API security" page). With them, the calls that
//!   support it are sent encrypted and signed and their answers verified
//!   ([`crate::apisec`]). Each key comes from a file (`*_file`) or an environment
//!   variable (`*_env`), never inline; each has its number from the console (`*_sn`):
//!
//!   ```json
//!   "api_security": {
//!     "sym_key_file": "/run/secrets/wx-sym-key", "sym_sn": "fa05fe1e…",
//!     "private_key_env": "WX_API_PRIVATE_KEY", "private_key_sn": "97845f6e…",
//!     "platform_cert_file": "/etc/weauth/wx-platform.pem", "platform_cert_sn": "79ba700e…"
//!   }
//!   ```
//!
//!   `sym_key`: base64 of 32 bytes (AES-256) as the console shows it; `private_key`: the app's
//!   RSA private key in PEM (PKCS#1 as downloaded, or PKCS#8), 2048 bits or more;
//!   `platform_cert`: WeChat's platform certificate in PEM (or its `PUBLIC KEY`). A key that is
//!   missing, unreadable, does not parse or is written inline refuses the start, naming the
//!   app and the field.
//!
//! Everything else per app (WeChat clients, the app access token and its lease, metrics labels,
//! the `appid` claim) is keyed by the appid found here.

use std::collections::HashSet;
use std::sync::Arc;

use crate::secrets::Secret;
use serde::Deserialize;

use crate::apisec::ApiSecurityKeys;

/// What kind of WeChat app an appid is; decides which login routes it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// `wx.login` + `sns/jscode2session` (`POST /v1/login`).
    Miniprogram,
    /// Official-account web OAuth2 (`connect/oauth2/authorize`, `snsapi_base|snsapi_userinfo`).
    OfficialAccount,
    /// Website QR login (`connect/qrconnect`, `snsapi_login`) of an Open Platform web app.
    Website,
    /// A mini-program plugin: `wx.pluginLogin` + `wxa/getpluginopenpid` (`POST /v1/login` with
    /// the plugin's appid). Its users are known by `openpid` only: a plugin never sees an
    /// openid, a unionid or a session_key.
    Plugin,
}

impl AppKind {
    /// The name used in the apps file and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Miniprogram => "miniprogram",
            AppKind::OfficialAccount => "official_account",
            AppKind::Website => "website",
            AppKind::Plugin => "plugin",
        }
    }

    /// Whether the kind logs in through the browser (`/v1/web/*`).
    pub fn is_web(self) -> bool {
        matches!(self, AppKind::OfficialAccount | AppKind::Website)
    }
}

/// What to do with a login when WeChat's risk API cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskOnError {
    /// Log the user in unjudged (counted as `error_allowed`).
    Allow,
    /// Refuse the login with WeChat's failure (502/503: the client may retry).
    Deny,
}

/// WeChat's risk control at login (`wxa/getuserriskrank`), per mini-program: after the code
/// exchange and before any session is written, the user's rank (0 lowest … 4 highest) is
/// asked for; a rank above `max_rank` refuses the login with 403 `user_risky`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Risk {
    /// The highest rank still let in (0–4).
    pub max_rank: u8,
    /// WeChat's scene: 0 registration, 1 marketing (default 0: a login).
    #[serde(default)]
    pub scene: u8,
    /// When WeChat fails (default `allow`).
    #[serde(default = "default_on_error")]
    pub on_error: RiskOnError,
}

fn default_on_error() -> RiskOnError {
    RiskOnError::Allow
}

impl Risk {
    /// Checks the ranges.
    ///
    /// # Errors
    /// The field and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_rank > 4 {
            return Err(format!(
                "risk.max_rank {} is out of range: WeChat ranks users 0 (lowest) to 4",
                self.max_rank
            ));
        }
        if self.scene > 1 {
            return Err(format!(
                "risk.scene {} is out of range: 0 (registration/login) or 1 (marketing)",
                self.scene
            ));
        }
        Ok(())
    }

    /// Whether a user of `rank` may log in.
    pub fn admits(&self, rank: u8) -> bool {
        rank <= self.max_rank
    }
}

/// One configured app.
#[derive(Clone)]
pub struct App {
    /// The WeChat appid (`wx…`).
    pub appid: String,
    /// The app secret. Never logged (see the `Debug` impl).
    pub secret: Secret<String>,
    pub kind: AppKind,
    /// Exact redirect targets after a web login (empty for a mini-program).
    pub redirect_uris: Vec<String>,
    /// Risk control at login (mini-programs only; `None`: off).
    pub risk: Option<Risk>,
    /// WeChat's server API security keys (mini-programs and plugins; `None`: calls in clear).
    pub api_security: Option<Arc<ApiSecurityKeys>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("appid", &self.appid)
            .field("kind", &self.kind)
            .field("redirect_uris", &self.redirect_uris)
            .field("risk", &self.risk)
            .field("api_security", &self.api_security)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Whether `uri` is one of this app's redirect URIs, compared exactly (byte for byte).
    pub fn allows_redirect(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|allowed| allowed == uri)
    }
}

/// The configured apps, in file order.
#[derive(Debug, Clone)]
pub struct Apps {
    apps: Vec<App>,
}

/// Why an appid cannot be used on a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppLookupError {
    #[error("unknown appid `{0}`")]
    Unknown(String),
    #[error("appid `{appid}` is a {actual} app; this route needs {wanted}")]
    WrongKind {
        appid: String,
        actual: &'static str,
        wanted: &'static str,
    },
    #[error("`appid` is required: {0} mini-programs are configured")]
    Ambiguous(usize),
}

impl Apps {
    /// Wraps an already validated list (see [`parse_apps_file`] and [`Apps::single`]).
    pub fn new(apps: Vec<App>) -> Apps {
        Apps { apps }
    }

    /// The one-app shortcut: a single mini-program.
    pub fn single(appid: String, secret: Secret<String>) -> Apps {
        Apps {
            apps: vec![App {
                appid,
                secret,
                kind: AppKind::Miniprogram,
                redirect_uris: Vec::new(),
                risk: None,
                api_security: None,
            }],
        }
    }

    /// Every app, in file order.
    pub fn all(&self) -> &[App] {
        &self.apps
    }

    /// The app with this appid.
    pub fn get(&self, appid: &str) -> Option<&App> {
        self.apps.iter().find(|app| app.appid == appid)
    }

    /// The app of a `POST /v1/login` code: the named mini-program or plugin, or the only
    /// mini-program when `appid` is left out (a plugin is always named).
    ///
    /// # Errors
    /// Unknown appid, an appid of another kind, or no appid while there are zero or several
    /// mini-programs.
    pub fn miniprogram(&self, appid: Option<&str>) -> Result<&App, AppLookupError> {
        match appid {
            Some(appid) => self.of_kind(
                appid,
                &[AppKind::Miniprogram, AppKind::Plugin],
                "a miniprogram or plugin",
            ),
            None => {
                let mut minis = self
                    .apps
                    .iter()
                    .filter(|app| app.kind == AppKind::Miniprogram);
                match (minis.next(), minis.next()) {
                    (Some(app), None) => Ok(app),
                    (None, _) => Err(AppLookupError::Ambiguous(0)),
                    (Some(_), Some(_)) => Err(AppLookupError::Ambiguous(
                        self.apps
                            .iter()
                            .filter(|app| app.kind == AppKind::Miniprogram)
                            .count(),
                    )),
                }
            }
        }
    }

    /// The official account or website for `/v1/web/authorize`.
    ///
    /// # Errors
    /// Unknown appid or a mini-program.
    pub fn web(&self, appid: &str) -> Result<&App, AppLookupError> {
        self.of_kind(
            appid,
            &[AppKind::OfficialAccount, AppKind::Website],
            "an official_account or website",
        )
    }

    fn of_kind(
        &self,
        appid: &str,
        kinds: &[AppKind],
        wanted: &'static str,
    ) -> Result<&App, AppLookupError> {
        let app = self
            .get(appid)
            .ok_or_else(|| AppLookupError::Unknown(appid.to_string()))?;
        if kinds.contains(&app.kind) {
            Ok(app)
        } else {
            Err(AppLookupError::WrongKind {
                appid: appid.to_string(),
                actual: app.kind.as_str(),
                wanted,
            })
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    apps: Vec<RawApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    appid: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_file: Option<String>,
    kind: AppKind,
    #[serde(default)]
    redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    risk: Option<Risk>,
    #[serde(default)]
    api_security: Option<RawApiSecurity>,
}

/// `api_security` as written. The inline key fields exist only to be refused with a clear
/// message (any other unknown field is refused by serde).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiSecurity {
    #[serde(default)]
    sym_key: Option<serde_json::Value>,
    #[serde(default)]
    sym_key_file: Option<String>,
    #[serde(default)]
    sym_key_env: Option<String>,
    #[serde(default)]
    sym_sn: Option<String>,
    #[serde(default)]
    private_key: Option<serde_json::Value>,
    #[serde(default)]
    private_key_file: Option<String>,
    #[serde(default)]
    private_key_env: Option<String>,
    #[serde(default)]
    private_key_sn: Option<String>,
    #[serde(default)]
    platform_cert: Option<serde_json::Value>,
    #[serde(default)]
    platform_cert_file: Option<String>,
    #[serde(default)]
    platform_cert_env: Option<String>,
    #[serde(default)]
    platform_cert_sn: Option<String>,
}

/// Where the apps file's secrets come from: files and environment variables.
pub struct SecretSources<'a> {
    pub read_file: &'a dyn Fn(&str) -> std::io::Result<String>,
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
}

/// One key of `api_security`: its text from `{name}_file` or `{name}_env`, and where it came
/// from (for errors). Refuses the inline form and both or neither source.
fn api_key_text(
    name: &str,
    inline: Option<&serde_json::Value>,
    file: Option<&str>,
    env: Option<&str>,
    sources: &SecretSources<'_>,
) -> Result<(Secret<String>, String), String> {
    if inline.is_some() {
        return Err(format!(
            "api_security.{name}: keys are never written in the apps file; \
             use {name}_file (a path) or {name}_env (an environment variable's name)"
        ));
    }
    let (text, origin) = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "api_security: set either {name}_file or {name}_env, not both"
            ))
        }
        (None, None) => {
            return Err(format!(
                "api_security.{name}_file or api_security.{name}_env is required"
            ))
        }
        (Some(path), None) => (
            (sources.read_file)(path)
                .map_err(|err| format!("api_security.{name}_file: cannot read `{path}`: {err}"))?,
            format!("api_security.{name}_file `{path}`"),
        ),
        (None, Some(var)) => (
            (sources.lookup)(var)
                .filter(|value| !value.trim().is_empty())
                .ok_or_else(|| {
                    format!("api_security.{name}_env: the variable `{var}` is not set or empty")
                })?,
            format!("api_security.{name}_env `{var}`"),
        ),
    };
    Ok((Secret::new(text), origin))
}

/// A key number (`*_sn`): required, non-empty, printable ASCII without spaces (it goes into
/// the AAD and a header).
fn key_number(name: &str, value: Option<&str>) -> Result<String, String> {
    match value {
        Some(sn) if !sn.is_empty() && sn.bytes().all(|b| b.is_ascii_graphic() && b != b'|') => {
            Ok(sn.to_string())
        }
        Some(_) => Err(format!(
            "api_security.{name} must be the console's key number (printable, no spaces or `|`)"
        )),
        None => Err(format!("api_security.{name} is required")),
    }
}

/// Reads and checks `api_security`.
fn api_security(
    raw: &RawApiSecurity,
    sources: &SecretSources<'_>,
) -> Result<ApiSecurityKeys, String> {
    let sym_sn = key_number("sym_sn", raw.sym_sn.as_deref())?;
    let private_key_sn = key_number("private_key_sn", raw.private_key_sn.as_deref())?;
    let platform_sn = key_number("platform_cert_sn", raw.platform_cert_sn.as_deref())?;
    let (sym, sym_origin) = api_key_text(
        "sym_key",
        raw.sym_key.as_ref(),
        raw.sym_key_file.as_deref(),
        raw.sym_key_env.as_deref(),
        sources,
    )?;
    let (private, private_origin) = api_key_text(
        "private_key",
        raw.private_key.as_ref(),
        raw.private_key_file.as_deref(),
        raw.private_key_env.as_deref(),
        sources,
    )?;
    let (cert, cert_origin) = api_key_text(
        "platform_cert",
        raw.platform_cert.as_ref(),
        raw.platform_cert_file.as_deref(),
        raw.platform_cert_env.as_deref(),
        sources,
    )?;
    use crate::apisec::KeyError;
    ApiSecurityKeys::from_pem(&sym, sym_sn, &private, private_key_sn, &cert, platform_sn).map_err(
        |err| {
            let origin = match err {
                KeyError::SymKey => sym_origin,
                KeyError::PrivateKey | KeyError::PrivateKeySize(_) => private_origin,
                KeyError::PlatformCert => cert_origin,
            };
            format!("{origin}: {err}")
        },
    )
}

/// Whether `appid` has the shape of a WeChat appid (non-empty, `[A-Za-z0-9_]`, ≤ 64).
pub fn valid_appid(appid: &str) -> bool {
    !appid.is_empty()
        && appid.len() <= 64
        && appid.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks one redirect URI (see the module docs).
///
/// # Errors
/// A reason for the operator.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let url = url::Url::parse(uri).map_err(|err| format!("redirect URI `{uri}`: {err}"))?;
    // The configured text is what a request's `redirect_uri` is compared with and what the
    // callback's `Location` carries, and a header value is visible ASCII: a non-ASCII host or
    // path (which the URL parser accepts, as it drops tabs and newlines) passed here, then
    // failed every callback with a 500 after WeChat's code was spent and a session written.
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "redirect URI `{}` must be written in ASCII, as browsers send it: `{url}`",
            uri.escape_debug()
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("redirect URI `{uri}` must not have a #fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("redirect URI `{uri}` must not carry user info"));
    }
    let loopback = matches!(url.host(), Some(url::Host::Domain("localhost")))
        || matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
        || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "redirect URI `{uri}` must be https:// (http:// only on localhost)"
        )),
    }
}

/// Parses and validates the apps file `text`; `sources` reads `secret_file` and
/// `api_security.*_file` paths and `api_security.*_env` variables.
///
/// # Errors
/// The first problem, naming the entry (`apps[1] (wx…): …`).
pub fn parse_apps_file(text: &str, sources: &SecretSources<'_>) -> Result<Apps, String> {
    let read_file = sources.read_file;
    let raw: RawFile = serde_json::from_str(text).map_err(|err| format!("not valid: {err}"))?;
    if raw.apps.is_empty() {
        return Err("`apps` is empty: configure at least one app".into());
    }
    let mut seen = HashSet::new();
    let mut apps = Vec::with_capacity(raw.apps.len());
    for (index, entry) in raw.apps.into_iter().enumerate() {
        let name = format!("apps[{index}] ({})", entry.appid);
        if !valid_appid(&entry.appid) {
            return Err(format!("{name}: appid must be alphanumeric (wx…)"));
        }
        if !seen.insert(entry.appid.clone()) {
            return Err(format!("{name}: duplicate appid"));
        }
        let secret = match (entry.secret, entry.secret_file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{name}: set either secret or secret_file, not both"
                ))
            }
            (None, None) => return Err(format!("{name}: secret or secret_file is required")),
            (Some(secret), None) => Secret::new(secret),
            (None, Some(path)) => {
                let text = read_file(&path)
                    .map_err(|err| format!("{name}: cannot read secret_file `{path}`: {err}"))?;
                Secret::new(text.trim_end_matches(['\n', '\r']).to_string())
            }
        };
        if secret.is_empty() {
            return Err(format!("{name}: the secret is empty"));
        }
        let redirect_uris = entry.redirect_uris.unwrap_or_default();
        if entry.kind.is_web() {
            if redirect_uris.is_empty() {
                return Err(format!(
                    "{name}: a {} app needs at least one redirect_uris entry",
                    entry.kind.as_str()
                ));
            }
            for uri in &redirect_uris {
                check_redirect_uri(uri).map_err(|reason| format!("{name}: {reason}"))?;
            }
        } else if !redirect_uris.is_empty() {
            return Err(format!(
                "{name}: redirect_uris is only for official_account and website apps, not a {}",
                entry.kind.as_str()
            ));
        }
        if let Some(risk) = &entry.risk {
            if entry.kind != AppKind::Miniprogram {
                return Err(format!(
                    "{name}: risk is only for miniprogram apps (WeChat's getuserriskrank judges \
                     mini-program users)"
                ));
            }
            risk.validate()
                .map_err(|reason| format!("{name}: {reason}"))?;
        }
        let api_security = match &entry.api_security {
            None => None,
            Some(_) if entry.kind.is_web() => {
                return Err(format!(
                    "{name}: api_security is only for miniprogram and plugin apps (the web \
                     login APIs do not support WeChat's API security)"
                ))
            }
            Some(raw) => Some(Arc::new(
                api_security(raw, sources).map_err(|reason| format!("{name}: {reason}"))?,
            )),
        };
        apps.push(App {
            appid: entry.appid,
            secret,
            kind: entry.kind,
            redirect_uris,
            risk: entry.risk,
            api_security,
        });
    }
    Ok(Apps { apps })
}

#[cfg(test)]
mod tests;
