//! The Istio `WasmPlugin`s we ship (`deploy/kubernetes/istio-wasmplugin.yaml` and the annotated
//! example `envoy/istio-wasmplugin.yaml`) carry a `pluginConfig` that the filter accepts: each
//! is run through [`Config::parse`], the check `on_configure` makes in a sidecar. The built-in
//! Kubernetes kinds are validated by `kubernetes-validate --strict` in `make test`.
//!
//! Also checked: a `credential_env` is passed into the VM by `vmConfig.env`, and the deployable
//! plugin's clusters name the issuer's Service in `deploy/kubernetes/issuer.yaml` the way Istio
//! names them (`outbound|<port>||<service>.<namespace>.svc.cluster.local`).
//!
//! The native build's examples (`deploy/native/`) get the same checks of their configuration,
//! and theirs: the Istio `EnvoyFilter` fetches from the same Service; the Envoy Gateway one
//! fetches through the cluster Envoy Gateway makes for its issuer `HTTPRoute`, which routes no
//! private path, loads the module from a local path (never fetched at start) and has the
//! credential in Envoy's environment from a Secret. That Envoy loads them with the module is
//! `tests/tests/deploy_native.rs`.

// Test helpers (not #[test] functions themselves) unwrap and panic on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use weauth_filter::config::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every YAML document of `path` as JSON.
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(value).unwrap()
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn wasm_plugin(path: &str) -> Value {
    let docs = documents(path);
    let plugins: Vec<&Value> = docs
        .iter()
        .filter(|doc| doc["kind"] == "WasmPlugin")
        .collect();
    assert_eq!(plugins.len(), 1, "{path}: one WasmPlugin expected");
    assert_eq!(plugins[0]["apiVersion"], "extensions.istio.io/v1alpha1");
    plugins[0].clone()
}

/// Parses a filter configuration with the filter's own check, its `credential_env` (if any)
/// set in the check's environment, as the proxy would have it. The edge defaults must be said,
/// not left implicit, nothing may be logged as a weakening, and no credential may be in plain
/// text. Returns the `credential_env`.
fn check_config(path: &str, config: &Value) -> Option<String> {
    assert!(config.is_object(), "{path}: no filter configuration");
    let credential_env = config["revocation"]["credential_env"]
        .as_str()
        .map(String::from);
    let env = |name: &str| {
        (Some(name) == credential_env.as_deref()).then(|| "a-feed-credential-for-the-check".into())
    };
    let bytes = serde_json::to_vec(config).unwrap();
    let parsed = match Config::parse_with_env(&bytes, &env) {
        Ok(parsed) => parsed,
        Err(err) => panic!("{path}: the filter refuses its configuration: {err}"),
    };
    assert_eq!(
        config["forward_authorization"], false,
        "{path}: say forward_authorization: false"
    );
    assert!(
        config.get("identity_header_prefix").is_some(),
        "{path}: say identity_header_prefix"
    );
    assert!(parsed.warnings.is_empty(), "{path}: {:?}", parsed.warnings);
    assert!(config["revocation"].get("credential").is_none(), "{path}");
    credential_env
}

/// [`check_config`] on the plugin's `pluginConfig`; a `credential_env` must be handed to the VM
/// by `vmConfig.env`.
fn check_plugin(path: &str) -> Value {
    let plugin = wasm_plugin(path);
    if let Some(name) = check_config(path, &plugin["spec"]["pluginConfig"]) {
        let env = plugin["spec"]["vmConfig"]["env"].as_array().cloned();
        assert!(
            env.unwrap_or_default()
                .iter()
                .any(|e| e["name"] == name && e["valueFrom"] == "HOST"),
            "{path}: credential_env {name} is not passed in by vmConfig.env (valueFrom: HOST)"
        );
    }
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE", "{path}");
    assert_eq!(plugin["spec"]["phase"], "AUTHN", "{path}");
    plugin
}

/// The issuer's Service of `deploy/kubernetes/issuer.yaml`: (name, namespace, port).
fn issuer_service() -> (String, String, u64) {
    let docs = documents("deploy/kubernetes/issuer.yaml");
    let service = docs
        .iter()
        .find(|doc| doc["kind"] == "Service")
        .expect("issuer.yaml has a Service");
    (
        service["metadata"]["name"].as_str().unwrap().to_string(),
        service["metadata"]["namespace"]
            .as_str()
            .unwrap()
            .to_string(),
        service["spec"]["ports"][0]["port"].as_u64().unwrap(),
    )
}

/// Both fetches of `config` go through `cluster` with the Service's host as `:authority`.
fn assert_fetches_through(path: &str, config: &Value, cluster: &str) {
    let (name, namespace, _) = issuer_service();
    let host = format!("{name}.{namespace}.svc.cluster.local");
    for part in ["jwks", "revocation"] {
        assert_eq!(config[part]["cluster"], cluster, "{path}: {part}.cluster");
        assert_eq!(
            config[part]["authority"],
            host.as_str(),
            "{path}: {part}.authority"
        );
    }
}

/// The one document of `kind` in `docs`.
fn one<'a>(path: &str, docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|doc| doc["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{path}: one {kind} expected");
    found[0]
}

#[test]
fn deploy_wasmplugin_plugin_config_accepted_by_filter() {
    let path = "deploy/kubernetes/istio-wasmplugin.yaml";
    let plugin = check_plugin(path);
    // The clusters are the issuer Service of deploy/kubernetes/issuer.yaml, as Istio names it.
    assert_fetches_through(path, &plugin["spec"]["pluginConfig"], &istio_cluster());
    assert!(plugin["spec"]["sha256"]
        .as_str()
        .is_some_and(|s| s.len() == 64));
}

/// The issuer's Service as an Istio sidecar names its cluster.
fn istio_cluster() -> String {
    let (name, namespace, port) = issuer_service();
    format!("outbound|{port}||{name}.{namespace}.svc.cluster.local")
}

#[test]
fn example_wasmplugin_plugin_config_accepted_by_filter() {
    let path = "envoy/istio-wasmplugin.yaml";
    let plugin = check_plugin(path);
    // Copied beside the shipped issuer, it must fetch from that issuer's Service: a cluster
    // that does not exist fails every fetch (503 on every protected route under FAIL_CLOSE).
    assert_fetches_through(path, &plugin["spec"]["pluginConfig"], &istio_cluster());
}

#[test]
fn native_istio_envoyfilter_config_accepted_by_filter() {
    let path = "deploy/native/istio-envoyfilter.yaml";
    let docs = documents(path);
    let patch = &one(path, &docs, "EnvoyFilter")["spec"]["configPatches"][0];
    // First in the sidecar's inbound chain, matched on nothing that may be missing: ahead of
    // Istio's RBAC and ext_authz (they see the headers weauth forwards), and never dropped
    // for a filter name not found.
    assert_eq!(patch["applyTo"], "HTTP_FILTER", "{path}");
    assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND", "{path}");
    assert_eq!(patch["patch"]["operation"], "INSERT_FIRST", "{path}");
    let chain = &patch["match"]["listener"]["filterChain"]["filter"];
    assert_eq!(
        chain["name"],
        "envoy.filters.network.http_connection_manager"
    );
    assert!(
        chain.get("subFilter").is_none(),
        "{path}: matched on a sub-filter"
    );
    let typed = &patch["patch"]["value"]["typed_config"];
    assert_eq!(
        typed["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
    );
    assert_eq!(typed["dynamic_module_config"]["name"], "weauth_filter");
    assert_eq!(typed["filter_name"], "weauth");
    let config: Value =
        serde_json::from_str(typed["filter_config"]["value"].as_str().unwrap()).unwrap();
    check_config(path, &config);
    assert_fetches_through(path, &config, &istio_cluster());
}

#[test]
fn native_envoy_gateway_example_accepted_by_filter() {
    let path = "deploy/native/envoy-gateway-extensionpolicy.yaml";
    let docs = documents(path);
    let proxy = &one(path, &docs, "EnvoyProxy")["spec"];
    let policy = &one(path, &docs, "EnvoyExtensionPolicy")["spec"]["dynamicModule"];
    let route = one(path, &docs, "HTTPRoute");
    assert_eq!(policy.as_array().map(Vec::len), Some(1), "{path}");
    let module = &policy[0];
    assert_eq!(module["filterName"], "weauth", "{path}");
    let config = &module["config"];
    let credential_env = check_config(path, config).expect("a credential_env");

    // Fetched through the cluster Envoy Gateway makes for rule 0 of the issuer's HTTPRoute,
    // whose backend is the issuer's Service and whose paths are the public ones only.
    let (service, namespace, port) = issuer_service();
    assert_eq!(route["metadata"]["namespace"], namespace.as_str(), "{path}");
    let rule = &route["spec"]["rules"][0];
    assert_eq!(rule["backendRefs"][0]["name"], service.as_str(), "{path}");
    assert_eq!(rule["backendRefs"][0]["port"], port, "{path}");
    let cluster = format!(
        "httproute/{namespace}/{}/rule/0",
        route["metadata"]["name"].as_str().unwrap()
    );
    assert_fetches_through(path, config, &cluster);
    let private = ["/v1/revocations", "/v1/admin/"];
    for rule in route["spec"]["rules"].as_array().unwrap() {
        for matched in rule["matches"].as_array().unwrap() {
            let (kind, value) = (&matched["path"]["type"], matched["path"]["value"].as_str());
            let value = value.unwrap_or("/");
            assert!(
                kind == "Exact" || kind == "PathPrefix",
                "{path}: a {kind} match cannot be checked"
            );
            for private in private {
                let reached = if kind == "Exact" {
                    value == private.trim_end_matches('/')
                } else {
                    private.starts_with(value)
                };
                assert!(!reached, "{path}: the issuer's route reaches {private}");
            }
        }
    }

    // The module registered under the policy's name, from a local path in a read-only mount —
    // never a remote source, whose failed fetch at start lets traffic through unfiltered.
    let registered = proxy["dynamicModules"]
        .as_array()
        .and_then(|all| all.iter().find(|entry| entry["name"] == module["name"]))
        .unwrap_or_else(|| panic!("{path}: module {} not in the EnvoyProxy", module["name"]));
    assert_eq!(registered["source"]["type"], "Local", "{path}");
    assert!(registered["source"].get("remote").is_none(), "{path}");
    let so = registered["source"]["local"]["path"].as_str().unwrap();
    assert!(so.ends_with("/lib/libweauth_filter.so"), "{path}: {so}");
    let deployment = &proxy["provider"]["kubernetes"]["envoyDeployment"];
    let mounts = deployment["container"]["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|mount| {
            mount["readOnly"] == true
                && mount["mountPath"]
                    .as_str()
                    .is_some_and(|dir| so == format!("{dir}/lib/libweauth_filter.so"))
        }),
        "{path}: {so} is not in a read-only mount of the image's /lib"
    );

    // The credential in Envoy's environment from a Secret; the stats named as the wasm
    // build's in Prometheus.
    let env = deployment["container"]["env"].as_array().unwrap();
    assert!(
        env.iter().any(|var| var["name"] == credential_env.as_str()
            && var["valueFrom"]["secretKeyRef"].is_object()),
        "{path}: {credential_env} is not set from a Secret in Envoy's environment"
    );
    assert!(
        proxy["bootstrap"]["value"]
            .as_str()
            .is_some_and(|b| b.contains("dynamic_modules_strip_custom_stat_prefix: true")),
        "{path}: the stats' runtime key is not set"
    );
}
