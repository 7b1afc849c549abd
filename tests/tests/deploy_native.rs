//! The native build's deployment examples (`deploy/native/`) load in the real Envoy 1.40 with
//! the module: the HTTP filter each one makes Envoy run — the Istio `EnvoyFilter`'s patch as
//! it is, the Envoy Gateway resources as Envoy Gateway translates them (the module registered
//! by path in the `EnvoyProxy`, the `EnvoyExtensionPolicy`'s `config` passed as a
//! `StringValue` of its JSON, the filter disabled in the listener and enabled on the route,
//! the `EnvoyProxy`'s bootstrap runtime merged in) — is put in a listener, with the cluster its
//! configuration names, and Envoy is run in `--mode init_only`: it builds the listener, which
//! runs the module's configuration hook (the filter's own parser, `credential_env` read from
//! Envoy's environment), and exits 0 only if that accepted it. A control with the `issuer`
//! taken out must make Envoy refuse the same listener, so a pass is the module's answer.
//! (Whether the configurations say what they should — the edge defaults, the clusters, no
//! remote module source — is `filter/tests/deploy_manifests.rs`.)
//!
//! Needs the native module (`WEAUTH_FILTER_NATIVE`): `make test` runs this with the other
//! suites it runs against the native build.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use weauth_tests::harness::{temp_dir, workspace_root, Binaries};

const FEED_ENV: &str = "WEAUTH_FEED_TOKEN";

/// Every YAML document of `path` (relative to the workspace) as JSON.
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{path}: not YAML: {e}"));
            serde_json::to_value(value).unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The one document of `kind` in `docs`.
fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|doc| doc["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

/// What Envoy is to load: the HTTP filter, the route's per-filter configuration (Envoy
/// Gateway enables its filters per route), and the bootstrap's runtime layers.
struct Example {
    filter: Value,
    per_route: Value,
    runtime: Option<Value>,
}

impl Example {
    /// The filter's JSON configuration string, for the control.
    fn config_mut(&mut self) -> &mut Value {
        &mut self.filter["typed_config"]["filter_config"]["value"]
    }

    /// The clusters its configuration fetches through.
    fn clusters(&self) -> Vec<String> {
        let text = self.filter["typed_config"]["filter_config"]["value"]
            .as_str()
            .unwrap_or_default();
        let config: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let mut clusters: Vec<String> = ["jwks", "revocation"]
            .iter()
            .filter_map(|part| config[part]["cluster"].as_str().map(String::from))
            .collect();
        clusters.dedup();
        clusters
    }
}

/// The Istio example: the EnvoyFilter's HTTP filter as it is (the module found by name in
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
fn istio() -> Example {
    let docs = documents("deploy/native/istio-envoyfilter.yaml");
    let filter = &one(&docs, "EnvoyFilter")["spec"]["configPatches"][0]["patch"]["value"];
    assert!(
        filter.is_object(),
        "the EnvoyFilter patches in no HTTP filter"
    );
    Example {
        filter: filter.clone(),
        per_route: json!({}),
        runtime: None,
    }
}

/// The Envoy Gateway example as Envoy Gateway (v1.8+) translates it: the policy's module looked
/// up in the EnvoyProxy's registry and loaded by its path (here: the module under test), the
/// `config` object passed as a `StringValue` of its JSON, the filter disabled in the listener
/// and enabled on the route by an empty `FilterConfig`, the bootstrap's merge applied.
fn envoy_gateway(module: &Path) -> Example {
    let docs = documents("deploy/native/envoy-gateway-extensionpolicy.yaml");
    let proxy = one(&docs, "EnvoyProxy");
    let policy = one(&docs, "EnvoyExtensionPolicy");
    let wanted = &policy["spec"]["dynamicModule"][0];
    let registered = proxy["spec"]["dynamicModules"]
        .as_array()
        .and_then(|all| all.iter().find(|entry| entry["name"] == wanted["name"]))
        .unwrap_or_else(|| panic!("module {} is not in the EnvoyProxy", wanted["name"]));
    assert!(
        registered["source"]["local"]["path"].is_string(),
        "the module is not registered by a local path: {registered}"
    );
    let name = format!(
        "envoy.filters.http.dynamic_modules/envoyextensionpolicy/{}/{}/dynamic-module/0",
        policy["metadata"]["namespace"].as_str().unwrap_or_default(),
        policy["metadata"]["name"].as_str().unwrap_or_default()
    );
    let bootstrap: Value = proxy["spec"]["bootstrap"]["value"]
        .as_str()
        .map(|text| {
            serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("EnvoyProxy bootstrap: {e}"))
        })
        .unwrap_or(Value::Null);
    Example {
        filter: json!({
            "name": name,
            "disabled": true,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": {"module": {"local": {"filename": module}}},
                "filter_name": wanted["filterName"],
                "filter_config": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": wanted["config"].to_string(),
                },
            },
        }),
        per_route: json!({
            name: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
        }),
        runtime: bootstrap
            .get("layered_runtime")
            .map(|runtime| runtime["layers"].clone()),
    }
}

/// A bootstrap with one listener (a free port) running `example`'s filter before the router,
/// and a cluster for each cluster its configuration names (nothing listens there: the
/// fetches fail, which `init_only` does not wait for).
fn bootstrap(example: &Example) -> Value {
    let clusters: Vec<Value> = example
        .clusters()
        .into_iter()
        .map(|name| {
            json!({
                "name": name,
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}
                ]}]},
            })
        })
        .collect();
    let mut out = json!({
        "static_resources": {
            "listeners": [{
                "name": "example",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "example",
                        "route_config": {"virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{
                                "match": {"prefix": "/"},
                                "direct_response": {"status": 200},
                                "typed_per_filter_config": example.per_route,
                            }],
                        }]},
                        "http_filters": [
                            example.filter,
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            }},
                        ],
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    });
    if let Some(layers) = &example.runtime {
        out["layered_runtime"] = json!({"layers": layers});
    }
    out
}

/// Runs Envoy `--mode init_only` on `example`: whether it exited 0, and its log.
fn init_only(binaries: &Binaries, example: &Example, dir: &Path, name: &str) -> (bool, String) {
    let config = dir.join(format!("{name}.json"));
    std::fs::write(&config, bootstrap(example).to_string())
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let search_path = binaries.native.parent().unwrap_or(Path::new("."));
    let output = Command::new(&binaries.envoy)
        .args(["--mode", "init_only", "--disable-hot-restart", "-l", "info"])
        .arg("-c")
        .arg(&config)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", search_path)
        .env(FEED_ENV, "a-feed-credential-for-the-check")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binaries.envoy.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), log)
}

/// `example` loads (the module says it is configured), and without its `issuer` Envoy refuses
/// it, the module saying why.
fn loads_and_control_refused(name: &str, example: impl Fn(&Path) -> Example) {
    let binaries = Binaries::from_env();
    assert!(
        binaries.native.is_file() && binaries.envoy.is_file(),
        "needs Envoy ({}) and the native module ({}): `make native`, or set \
         WEAUTH_FILTER_NATIVE",
        binaries.envoy.display(),
        binaries.native.display()
    );
    let module: PathBuf = binaries.native.clone();
    let dir = temp_dir(&format!("deploy-native-{name}")).unwrap_or_else(|e| panic!("{e}"));
    let dir = dir.path();

    let (loaded, log) = init_only(&binaries, &example(&module), dir, name);
    assert!(
        loaded,
        "{name}: Envoy did not load the example's filter:\n{log}"
    );
    assert!(
        log.contains("weauth: configured: issuer"),
        "{name}: the module did not say it was configured:\n{log}"
    );

    let mut control = example(&module);
    let mut config: Value =
        serde_json::from_str(control.config_mut().as_str().unwrap_or_default()).unwrap();
    if let Some(config) = config.as_object_mut() {
        config.remove("issuer");
    }
    *control.config_mut() = Value::String(config.to_string());
    let (loaded, log) = init_only(&binaries, &control, dir, &format!("{name}-control"));
    assert!(
        !loaded,
        "{name}: Envoy loaded the control without an issuer:\n{log}"
    );
    assert!(
        log.contains("invalid filter configuration: `issuer`"),
        "{name}: the module did not refuse the missing issuer:\n{log}"
    );
}

#[test]
fn istio_envoyfilter_loads_in_envoy_with_the_module() {
    loads_and_control_refused("istio", |_| istio());
}

#[test]
fn envoy_gateway_resources_load_in_envoy_as_translated() {
    loads_and_control_refused("envoy-gateway", envoy_gateway);
}
