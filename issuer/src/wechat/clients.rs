//! One WeChat client per mini-program or plugin, keyed by appid (each with its own appid,
//! secret and API security keys), built once at start.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::apps::AppKind;
use crate::config::Config;
use crate::telemetry::metrics::Metrics;
use crate::wechat::{HttpWechat, HttpWechatConfig, Wechat};

/// The mini-program and plugin clients.
pub struct WechatClients {
    /// The client of `WEAUTH_WECHAT_APPID` (the first mini-program), or of the first app when
    /// no mini-program is configured (only its app-token API could ever be used).
    default: Arc<dyn Wechat>,
    by_appid: HashMap<String, Arc<dyn Wechat>>,
}

/// An appid that is not a configured mini-program (or plugin).
#[derive(Debug, thiserror::Error)]
#[error("appid `{0}` is not a configured mini-program")]
pub struct UnknownApp(pub String);

impl WechatClients {
    /// A client per mini-program and plugin of the apps file; `given` (a test's double)
    /// stands in for every one of them.
    ///
    /// # Errors
    /// The HTTP client could not be built (TLS roots, API security keys).
    pub fn build(
        config: &Config,
        given: Option<Arc<dyn Wechat>>,
        metrics: &Arc<Metrics>,
        clock: &Arc<dyn Clock>,
    ) -> Result<WechatClients, String> {
        let http = |appid: &str,
                    secret: &crate::secrets::Secret<String>,
                    api_security|
         -> Result<Arc<dyn Wechat>, String> {
            Ok(Arc::new(HttpWechat::new(
                HttpWechatConfig {
                    api_base: config.wechat_api_base.clone(),
                    appid: appid.to_string(),
                    secret: secret.clone(),
                    connect_timeout: config.wechat_connect_timeout,
                    timeout: config.wechat_timeout,
                    retries: config.wechat_retries,
                    api_security,
                    clock: Arc::clone(clock),
                },
                Arc::clone(metrics),
            )?))
        };
        let mut by_appid = HashMap::new();
        for entry in config.apps.all() {
            if !matches!(entry.kind, AppKind::Miniprogram | AppKind::Plugin) {
                continue;
            }
            let client = match &given {
                Some(given) => Arc::clone(given),
                None => http(&entry.appid, &entry.secret, entry.api_security.clone())?,
            };
            by_appid.insert(entry.appid.clone(), client);
        }
        let default = match (&given, by_appid.get(&config.wechat_appid)) {
            (Some(given), _) => Arc::clone(given),
            (None, Some(first)) => Arc::clone(first),
            (None, None) => http(&config.wechat_appid, &config.wechat_secret, None)?,
        };
        Ok(WechatClients { default, by_appid })
    }

    /// The client of mini-program (or plugin) `appid`.
    ///
    /// # Errors
    /// [`UnknownApp`] (400 `invalid_request`) when `appid` is not a configured mini-program.
    pub fn for_appid(&self, appid: &str) -> Result<&Arc<dyn Wechat>, UnknownApp> {
        self.by_appid
            .get(appid)
            .ok_or_else(|| UnknownApp(appid.to_string()))
    }

    /// The client that fetches `appid`'s app access token: its own, else the default one.
    pub fn for_token(&self, appid: &str) -> &Arc<dyn Wechat> {
        self.by_appid.get(appid).unwrap_or(&self.default)
    }
}
