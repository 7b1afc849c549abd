//! Rendering of the Envoy bootstrap template and the filter's plugin configuration (pure).
//!
//! Templates use `{{NAME}}` placeholders, replaced by plain string replacement. Rendering is
//! strict both ways: a placeholder left without a value and a value given for a name the
//! template does not contain are both errors, so a renamed placeholder cannot silently yield a
//! broken Envoy config. [`merge_patch`] applies an RFC 7386 JSON merge patch, which is how a
//! test overrides parts of the default plugin configuration.

use serde_json::Value;

/// The Envoy bootstrap template (`envoy/envoy.yaml`), compiled in.
pub const ENVOY_TEMPLATE: &str = include_str!("../../envoy/envoy.yaml");
/// The bootstrap with Envoy's own jwt_authn instead of the weauth filter
/// (`envoy/jwt-authn.yaml`), compiled in.
pub const JWT_AUTHN_TEMPLATE: &str = include_str!("../../envoy/jwt-authn.yaml");
/// The default plugin configuration template (`envoy/plugin-config.json`), compiled in.
pub const PLUGIN_CONFIG_TEMPLATE: &str = include_str!("../../envoy/plugin-config.json");
/// The environment variable that carries the revocation feed credential into the filter's VM:
/// `envoy/envoy.yaml` passes it from Envoy's environment (`host_env_keys`) and
/// `envoy/plugin-config.json` names it in `revocation.credential_env`.
pub const FEED_TOKEN_ENV: &str = "WEAUTH_FEED_TOKEN";

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{{NAME}}` had no value.
    #[error("template placeholder {{{{{0}}}}} has no value")]
    Leftover(String),
    /// A value was given for a name the template lacks.
    #[error("template has no placeholder {{{{{0}}}}} (renamed?)")]
    Unused(String),
    /// The plugin configuration template is not JSON after rendering.
    #[error("plugin configuration is not valid JSON after rendering: {0}")]
    BadJson(String),
    /// The rendered bootstrap could not be split into a bootstrap and listeners.
    #[error("bootstrap listeners cannot be moved to an LDS file: {0}")]
    Lds(String),
}

/// The three path-normalization settings every shipped bootstrap sets, and their values
/// with normalization off (Envoy's own defaults).
const PATH_NORMALIZATION: [(&str, &str); 3] = [
    ("normalize_path: true", "normalize_path: false"),
    ("merge_slashes: true", "merge_slashes: false"),
    (
        "path_with_escaped_slashes_action: REJECT_REQUEST",
        "path_with_escaped_slashes_action: KEEP_UNCHANGED",
    ),
];

/// A rendered bootstrap with Envoy's path normalization switched off, as in an Envoy
/// configured by someone else: the path-confusion tests show the filter is safe there too.
///
/// # Errors
/// [`TemplateError::Unused`] naming a setting the bootstrap does not contain (renamed?).
pub fn without_path_normalization(yaml: &str) -> Result<String, TemplateError> {
    let mut out = yaml.to_string();
    for (on, off) in PATH_NORMALIZATION {
        if !out.contains(on) {
            return Err(TemplateError::Unused(on.to_string()));
        }
        out = out.replace(on, off);
    }
    Ok(out)
}

/// A rendered bootstrap with `routes` (each an Envoy `Route` as JSON, which is YAML) placed
/// first in the public listener's route table, ahead of the shipped routes: how a test routes on
/// what the filter forwards.
///
/// # Errors
/// [`TemplateError::Unused`] when the bootstrap has no public route table where this expects it.
pub fn with_routes_first(yaml: &str, routes: &[Value]) -> Result<String, TemplateError> {
    const TABLE: &str = "                  name: weauth_routes\n";
    const ROUTES: &str = "                      routes:\n";
    let table = yaml
        .find(TABLE)
        .ok_or_else(|| TemplateError::Unused("weauth_routes".into()))?;
    let at = yaml[table..]
        .find(ROUTES)
        .map(|i| table + i + ROUTES.len())
        .ok_or_else(|| TemplateError::Unused("weauth_routes' routes".into()))?;
    let entries: String = routes
        .iter()
        .map(|route| format!("                        - {route}\n"))
        .collect();
    Ok(format!("{}{entries}{}", &yaml[..at], &yaml[at..]))
}

/// Replaces every `{{NAME}}` of `template` by its value in `values`.
///
/// # Errors
/// [`TemplateError::Unused`] when a name of `values` does not occur in the template;
/// [`TemplateError::Leftover`] when a `{{` remains afterwards (named when it looks like a
/// placeholder).
pub fn render(template: &str, values: &[(&str, String)]) -> Result<String, TemplateError> {
    let mut out = template.to_string();
    for (name, value) in values {
        let needle = format!("{{{{{name}}}}}");
        if !out.contains(&needle) {
            return Err(TemplateError::Unused((*name).to_string()));
        }
        out = out.replace(&needle, value);
    }
    if let Some(i) = out.find("{{") {
        let rest = &out[i + 2..];
        let name = rest.split("}}").next().unwrap_or(rest);
        let name: String = name.chars().take(40).collect();
        return Err(TemplateError::Leftover(name));
    }
    Ok(out)
}

/// `value` as a JSON string literal, quotes included. JSON string literals are valid YAML
/// double-quoted scalars, so this is how paths and the plugin configuration go into the
/// Envoy template.
pub fn quoted(value: &str) -> String {
    Value::String(value.to_string()).to_string()
}

/// `value` escaped for use inside a JSON string (no surrounding quotes).
pub fn json_escaped(value: &str) -> String {
    let q = quoted(value);
    q[1..q.len() - 1].to_string()
}

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, `null` removes a member,
/// anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(target_map) = target {
                for (k, v) in patch_map {
                    if v.is_null() {
                        target_map.remove(k);
                    } else {
                        merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The default plugin configuration for an issuer at `issuer_url` with `audience`, with
/// `patches` (RFC 7386) applied in order. The feed credential is not in it: the filter reads
/// it from [`FEED_TOKEN_ENV`] in its VM's environment.
///
/// # Errors
/// [`TemplateError`] if the template and the names disagree or the result is not JSON.
pub fn plugin_config(
    issuer_url: &str,
    audience: &str,
    patches: &[Value],
) -> Result<Value, TemplateError> {
    let text = render(
        PLUGIN_CONFIG_TEMPLATE,
        &[
            ("ISSUER_URL", json_escaped(issuer_url)),
            ("AUDIENCE", json_escaped(audience)),
        ],
    )?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| TemplateError::BadJson(e.to_string()))?;
    for patch in patches {
        merge_patch(&mut config, patch);
    }
    Ok(config)
}

/// The ports Envoy's bootstrap refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvoyPorts {
    /// Public listener.
    pub envoy: u16,
    /// Internal listener (admin API and revocation feed; `envoy/envoy.yaml` only).
    pub internal: u16,
    /// Admin interface.
    pub admin: u16,
    /// weauth-issuer (cluster `weauth_issuer`).
    pub issuer: u16,
    /// Demo upstream (cluster `demo_upstream`).
    pub upstream: u16,
}

/// The Envoy bootstrap for `ports`, the filter at `wasm_path` and `plugin_config`.
///
/// # Errors
/// [`TemplateError`] if `envoy/envoy.yaml` and these names disagree.
pub fn envoy_config(
    ports: EnvoyPorts,
    wasm_path: &str,
    plugin_config: &Value,
) -> Result<String, TemplateError> {
    envoy_config_replicas(ports, &[], wasm_path, plugin_config)
}

/// The issuer cluster's `lb_endpoints`: one per port on 127.0.0.1, as a JSON list.
pub fn issuer_endpoints(ports: &[u16]) -> String {
    let endpoints: Vec<Value> = ports
        .iter()
        .map(|port| {
            serde_json::json!({
                "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
            })
        })
        .collect();
    Value::Array(endpoints).to_string()
}

/// As [`envoy_config`], with more issuer replicas on `more_issuers` in the same cluster.
///
/// # Errors
/// [`TemplateError`] if `envoy/envoy.yaml` and these names disagree.
pub fn envoy_config_replicas(
    ports: EnvoyPorts,
    more_issuers: &[u16],
    wasm_path: &str,
    plugin_config: &Value,
) -> Result<String, TemplateError> {
    let mut issuers = vec![ports.issuer];
    issuers.extend_from_slice(more_issuers);
    render(
        ENVOY_TEMPLATE,
        &[
            ("ENVOY_PORT", ports.envoy.to_string()),
            ("INTERNAL_PORT", ports.internal.to_string()),
            ("ADMIN_PORT", ports.admin.to_string()),
            ("ISSUER_ENDPOINTS", issuer_endpoints(&issuers)),
            ("UPSTREAM_PORT", ports.upstream.to_string()),
            ("WASM_PATH", quoted(wasm_path)),
            ("PLUGIN_CONFIG", quoted(&plugin_config.to_string())),
        ],
    )
}

/// The weauth filter of `envoy/envoy.yaml` as Envoy's dynamic-modules HTTP filter
/// (`envoy.filters.http.dynamic_modules`, module `weauth_filter` found through
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`) instead of the wasm filter, with the same plugin
/// configuration JSON as its `filter_config` StringValue. Everything else is left as it is.
///
/// # Errors
/// [`TemplateError::Unused`] when the wasm filter block is not where this expects it.
pub fn native_filter(yaml: &str) -> Result<String, TemplateError> {
    const START: &str = "                  - name: envoy.filters.http.wasm\n";
    const END: &str = "                  - name: envoy.filters.http.router\n";
    const VALUE: &str = "                          value: ";
    let start = yaml
        .find(START)
        .ok_or_else(|| TemplateError::Unused("envoy.filters.http.wasm".into()))?;
    let end = yaml[start..]
        .find(END)
        .map(|i| start + i)
        .ok_or_else(|| TemplateError::Unused("envoy.filters.http.router".into()))?;
    let block = &yaml[start..end];
    let value = block
        .lines()
        .find_map(|line| line.strip_prefix(VALUE))
        .ok_or_else(|| TemplateError::Unused("wasm plugin configuration value".into()))?;
    let native = format!(
        "                  - name: envoy.filters.http.dynamic_modules\n\
         \x20                   typed_config:\n\
         \x20                     \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter\n\
         \x20                     dynamic_module_config: {{ name: weauth_filter }}\n\
         \x20                     filter_name: weauth\n\
         \x20                     filter_config:\n\
         \x20                       \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
         \x20                       value: {value}\n"
    );
    // The module's stats namespace registered as a custom one (as Envoy registers `wasmcustom`
    // for wasm), so Prometheus shows the filter's stats as `weauth_*`, the names the wasm
    // build's have there (deploy/monitoring's alerts use them), not
    // `envoy_dynamicmodulescustom_weauth_*`. /stats keeps the `dynamicmodulescustom.` prefix,
    // as it keeps `wasmcustom.`.
    Ok(format!(
        "{}{native}{}\n{NATIVE_RUNTIME}",
        &yaml[..start],
        &yaml[end..]
    ))
}

/// The type URL of a listener in an xDS resource list.
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// A rendered bootstrap with its listeners served by LDS from the file `lds_path` instead of
/// `static_resources`, as Istio and Envoy Gateway serve them (through xDS): a listener can
/// then be updated while Envoy runs ([`lds_file`], written over `lds_path` by a rename).
/// Returns the bootstrap (JSON, which Envoy reads as YAML) and the listeners.
///
/// # Errors
/// [`TemplateError::Lds`] when the bootstrap is not YAML or has no static listeners.
pub fn listeners_from_file(
    yaml: &str,
    lds_path: &str,
) -> Result<(String, Vec<Value>), TemplateError> {
    let mut bootstrap: Value =
        serde_yaml_ng::from_str(yaml).map_err(|e| TemplateError::Lds(e.to_string()))?;
    let listeners = bootstrap
        .get_mut("static_resources")
        .and_then(Value::as_object_mut)
        .and_then(|resources| resources.remove("listeners"))
        .and_then(|listeners| match listeners {
            Value::Array(listeners) if !listeners.is_empty() => Some(listeners),
            _ => None,
        })
        .ok_or_else(|| TemplateError::Lds("no static_resources.listeners".into()))?;
    if bootstrap.get("node").is_none() {
        // LDS needs the node named.
        bootstrap["node"] = serde_json::json!({"id": "weauth", "cluster": "weauth"});
    }
    bootstrap["dynamic_resources"] = serde_json::json!({
        "lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": lds_path}
        }
    });
    Ok((bootstrap.to_string(), listeners))
}

/// The LDS file serving `listeners` (see [`listeners_from_file`]).
pub fn lds_file(listeners: &[Value]) -> String {
    let resources: Vec<Value> = listeners
        .iter()
        .map(|listener| {
            let mut resource = listener.clone();
            if let Some(fields) = resource.as_object_mut() {
                fields.insert("@type".into(), LISTENER_TYPE.into());
            }
            resource
        })
        .collect();
    serde_json::json!({ "resources": resources }).to_string()
}

/// The weauth filter's configuration string in a listener (the wasm build's plugin
/// `configuration` or the native build's `filter_config`), for every weauth filter in it.
pub fn weauth_filter_configs(listener: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    let chains = listener
        .get_mut("filter_chains")
        .and_then(Value::as_array_mut);
    for chain in chains.into_iter().flatten() {
        let filters = chain.get_mut("filters").and_then(Value::as_array_mut);
        for network in filters.into_iter().flatten() {
            let http = network
                .pointer_mut("/typed_config/http_filters")
                .and_then(Value::as_array_mut);
            for filter in http.into_iter().flatten() {
                let value = match filter.get("name").and_then(Value::as_str) {
                    Some("envoy.filters.http.wasm") => {
                        filter.pointer_mut("/typed_config/config/configuration/value")
                    }
                    Some("envoy.filters.http.dynamic_modules") => {
                        filter.pointer_mut("/typed_config/filter_config/value")
                    }
                    _ => None,
                };
                out.extend(value);
            }
        }
    }
    out
}

/// The runtime layer the native build's bootstrap needs (see [`native_filter`]).
pub const NATIVE_RUNTIME: &str = "layered_runtime:\n\
  \x20 layers:\n\
  \x20   - name: weauth-native\n\
  \x20     static_layer:\n\
  \x20       envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix: true\n";

/// The jwt_authn bootstrap (`envoy/jwt-authn.yaml`) for `ports`, accepting tokens of
/// `issuer_url` for `audience`, with the keys from the issuer's JWKS.
///
/// # Errors
/// [`TemplateError`] if `envoy/jwt-authn.yaml` and these names disagree.
pub fn jwt_authn_config(
    ports: EnvoyPorts,
    issuer_url: &str,
    audience: &str,
) -> Result<String, TemplateError> {
    render(
        JWT_AUTHN_TEMPLATE,
        &[
            ("ENVOY_PORT", ports.envoy.to_string()),
            ("ADMIN_PORT", ports.admin.to_string()),
            ("ISSUER_PORT", ports.issuer.to_string()),
            ("UPSTREAM_PORT", ports.upstream.to_string()),
            ("ISSUER_URL", quoted(issuer_url)),
            ("AUDIENCE", quoted(audience)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize as _;
    use serde_json::json;

    #[test]
    fn render_all_values_replaced() {
        let out = render(
            "a={{A}} b={{B}} a={{A}}",
            &[("A", "1".into()), ("B", "2".into())],
        );
        assert_eq!(out.unwrap(), "a=1 b=2 a=1");
    }

    #[test]
    fn render_leftover_placeholder_refused_with_name() {
        let err = render("a={{A}} b={{B}}", &[("A", "1".into())]).unwrap_err();
        assert_eq!(err, TemplateError::Leftover("B".into()));
    }

    #[test]
    fn render_unused_value_refused() {
        let err = render("a={{A}}", &[("A", "1".into()), ("C", "3".into())]).unwrap_err();
        assert_eq!(err, TemplateError::Unused("C".into()));
    }

    #[test]
    fn render_value_introducing_braces_refused() {
        let err = render("a={{A}}", &[("A", "{{oops".into())]).unwrap_err();
        assert!(matches!(err, TemplateError::Leftover(_)));
    }

    #[test]
    fn merge_patch_rfc7386_example() {
        // RFC 7386 §3 example.
        let mut target = json!({"title": "Goodbye!", "author": {"givenName": "John",
            "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null}, "tags": ["example"]});
        merge_patch(&mut target, &patch);
        assert_eq!(
            target,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
    }

    #[test]
    fn plugin_config_default_has_issuer_feed_and_rules() {
        let c = plugin_config("http://127.0.0.1:1", "weauth", &[]).unwrap();
        assert_eq!(c["issuer"], "http://127.0.0.1:1");
        assert_eq!(c["audiences"], json!(["weauth"]));
        assert_eq!(c["revocation"]["credential_env"], FEED_TOKEN_ENV);
        assert!(c["revocation"].get("credential").is_none());
        assert!(
            ENVOY_TEMPLATE.contains(&format!("host_env_keys: [\"{FEED_TOKEN_ENV}\"]")),
            "envoy/envoy.yaml must pass {FEED_TOKEN_ENV} into the VM"
        );
        assert_eq!(c["jwks"]["cluster"], "weauth_issuer");
        assert_eq!(c["jwks"]["path"], "/.well-known/jwks.json");
        let rules = c["rules"].as_array().unwrap();
        let api = rules.iter().find(|r| r["prefix"] == "/api/").unwrap();
        // The admin API and the feed are not public routes at the edge (internal listener).
        assert!(rules.iter().all(|r| r["require"] != "none"
            || !(r["prefix"] == "/v1/admin/" || r["exact"] == "/v1/revocations")));
        assert_eq!(api["require"], "required");
        let login = rules
            .iter()
            .position(|r| r["exact"] == "/v1/login")
            .unwrap();
        let v1 = rules.iter().position(|r| r["prefix"] == "/v1/").unwrap();
        assert!(
            login < v1,
            "first match wins: public /v1/ routes come before /v1/"
        );
    }

    #[test]
    fn plugin_config_patch_applied() {
        let patch = json!({"revocation": null, "clock_skew_seconds": 0});
        let c = plugin_config("http://i", "weauth", &[patch]).unwrap();
        assert!(c.get("revocation").is_none());
        assert_eq!(c["clock_skew_seconds"], 0);
    }

    /// The ports and the default plugin configuration the rendering tests use.
    fn example() -> (EnvoyPorts, Value) {
        let ports = EnvoyPorts {
            envoy: 10000,
            internal: 10001,
            admin: 9901,
            issuer: 8080,
            upstream: 8081,
        };
        let plugin = plugin_config("http://127.0.0.1:8080", "weauth", &[]).unwrap();
        (ports, plugin)
    }

    /// The longest a login's WeChat call takes with the issuer's defaults before it answers:
    /// `1 + WEAUTH_WECHAT_RETRIES` (2) attempts of `WEAUTH_WECHAT_TIMEOUT` (5 s) and a backoff
    /// of at most 1 s before each retry (`issuer/src/wechat/http.rs`), risk control not counted.
    const LOGIN_WORST_SECONDS: u64 = 3 * 5 + 2;

    /// `"30s"` as seconds.
    fn seconds(duration: &Value) -> u64 {
        let text = duration
            .as_str()
            .unwrap_or_else(|| panic!("no duration: {duration}"));
        text.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not whole seconds: {text}"))
    }

    /// The routes to the issuer's login outlast its WeChat retries: cut sooner (plain Envoy's
    /// and Envoy Gateway's default is 15 s), a login that would succeed answers 504 with its
    /// `wx.login` code spent.
    #[test]
    fn issuer_routes_outlast_a_logins_wechat_retries() {
        let (ports, plugin) = example();
        let bootstraps = [
            (
                "envoy/envoy.yaml",
                envoy_config(ports, "/x/w.wasm", &plugin).unwrap(),
            ),
            (
                "envoy/jwt-authn.yaml",
                jwt_authn_config(ports, "http://127.0.0.1:8080", "weauth").unwrap(),
            ),
        ];
        for (path, yaml) in bootstraps {
            let bootstrap: Value = serde_yaml_ng::from_str(&yaml).unwrap();
            let listeners = bootstrap["static_resources"]["listeners"]
                .as_array()
                .unwrap();
            let mut checked = 0;
            for listener in listeners {
                let manager = &listener["filter_chains"][0]["filters"][0]["typed_config"];
                for host in manager["route_config"]["virtual_hosts"].as_array().unwrap() {
                    for route in host["routes"].as_array().unwrap() {
                        if route["match"]["prefix"] == "/v1/" {
                            let timeout = seconds(&route["route"]["timeout"]);
                            assert!(timeout > LOGIN_WORST_SECONDS, "{path}: /v1/ {timeout} s");
                            checked += 1;
                        }
                    }
                }
            }
            assert_eq!(checked, 1, "{path}: one /v1/ route expected");
        }
        let path = "deploy/native/envoy-gateway-extensionpolicy.yaml";
        let text = std::fs::read_to_string(crate::harness::workspace_root().join(path)).unwrap();
        let route = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| serde_json::to_value(serde_yaml_ng::Value::deserialize(doc).unwrap()))
            .map(Result::unwrap)
            .find(|doc| doc["kind"] == "HTTPRoute")
            .unwrap();
        let rule = &route["spec"]["rules"][0];
        assert!(rule["matches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["path"]["value"] == "/v1/login"));
        let timeout = seconds(&rule["timeouts"]["request"]);
        assert!(timeout > LOGIN_WORST_SECONDS, "{path}: {timeout} s");
    }

    #[test]
    fn envoy_config_renders_without_leftovers() {
        let (ports, plugin) = example();
        let yaml = envoy_config(ports, "/x/weauth_filter.wasm", &plugin).unwrap();
        assert!(yaml.contains("port_value: 10000"));
        assert!(yaml.contains("port_value: 10001"));
        assert!(yaml.contains("port_value: 9901"));
        assert!(yaml.contains(r#""port_value":8080"#));
        let replicas = envoy_config_replicas(ports, &[8090], "/x/w.wasm", &plugin).unwrap();
        assert!(
            replicas.contains(r#""port_value":8080"#) && replicas.contains(r#""port_value":8090"#)
        );
        assert!(yaml.contains("filename: \"/x/weauth_filter.wasm\""));
        // The plugin configuration is one JSON string literal that decodes back to the JSON.
        let line = yaml
            .lines()
            .find(|l| l.trim_start().starts_with("value: \""))
            .unwrap();
        let literal = line.trim_start().trim_start_matches("value: ");
        let decoded: String = serde_json::from_str(literal).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&decoded).unwrap(), plugin);
    }

    #[test]
    fn listeners_move_to_an_lds_file_and_their_filter_configs_are_found_in_either_build() {
        let (ports, plugin) = example();
        let wasm = envoy_config(ports, "/x/weauth_filter.wasm", &plugin).unwrap();
        for yaml in [native_filter(&wasm).unwrap(), wasm] {
            let (bootstrap, mut listeners) = listeners_from_file(&yaml, "/run/lds.yaml").unwrap();
            let bootstrap: Value = serde_json::from_str(&bootstrap).unwrap();
            assert!(bootstrap["static_resources"].get("listeners").is_none());
            assert!(bootstrap["static_resources"]["clusters"].is_array());
            assert_eq!(
                bootstrap["dynamic_resources"]["lds_config"]["path_config_source"]["path"],
                "/run/lds.yaml"
            );
            let names: Vec<&str> = listeners
                .iter()
                .map(|l| l["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["weauth_ingress", "weauth_internal"]);
            let lds: Value = serde_json::from_str(&lds_file(&listeners)).unwrap();
            let resources = lds["resources"].as_array().unwrap();
            assert_eq!(resources.len(), 2);
            assert!(resources.iter().all(|r| r["@type"] == LISTENER_TYPE));
            assert_eq!(
                resources[0]["address"]["socket_address"]["port_value"],
                10000
            );
            // The public listener carries the one weauth filter, whichever the build.
            let configs = weauth_filter_configs(&mut listeners[0]);
            assert_eq!(configs.len(), 1);
            let config: Value = serde_json::from_str(configs[0].as_str().unwrap()).unwrap();
            assert_eq!(config, plugin);
            assert!(weauth_filter_configs(&mut listeners[1]).is_empty());
        }
        assert!(listeners_from_file("admin: {}", "/run/lds.yaml").is_err());
    }

    #[test]
    fn without_path_normalization_turns_every_setting_off() {
        for template in [ENVOY_TEMPLATE, JWT_AUTHN_TEMPLATE] {
            let off = without_path_normalization(template).unwrap();
            for (on, off_value) in PATH_NORMALIZATION {
                assert!(!off.contains(on), "{on} left on");
                assert!(off.contains(off_value), "{off_value} missing");
            }
        }
        assert!(without_path_normalization("admin: {}").is_err());
    }

    #[test]
    fn with_routes_first_puts_them_ahead_of_the_public_routes_only() {
        let route = json!({"match": {"prefix": "/x/"}, "direct_response": {"status": 418}});
        let yaml = with_routes_first(ENVOY_TEMPLATE, std::slice::from_ref(&route)).unwrap();
        let entry = format!("                        - {route}\n");
        assert_eq!(yaml.matches(&entry).count(), 1);
        let at = yaml.find(&entry).unwrap();
        let table = yaml.find("name: weauth_routes\n").unwrap();
        assert!(table < at, "inside the public route table");
        let first_shipped = yaml.find("- match: { prefix: \"/v1/admin/\" }").unwrap();
        assert!(at < first_shipped, "ahead of the shipped routes");
        assert!(!yaml[..table].contains("/x/"));
        assert_eq!(
            with_routes_first(ENVOY_TEMPLATE, &[]).unwrap(),
            ENVOY_TEMPLATE
        );
        assert!(with_routes_first("admin: {}", &[route]).is_err());
    }
}
