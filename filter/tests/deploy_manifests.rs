//! The Istio `WasmPlugin`s we ship (`deploy/kubernetes/istio-wasmplugin.yaml` and the annotated
//! example `envoy/istio-wasmplugin.yaml`) carry a `pluginConfig` that the filter accepts: each
//! is run through [`Config::parse`], the check `on_configure` makes in a sidecar. The built-in
//! Kubernetes kinds are validated by `kubernetes-validate --strict` in `make test`.
//!
//! Also checked: a `credential_env` is passed into the VM by `vmConfig.env`, and the deployable
//! plugin's clusters name the issuer's Service in `deploy/kubernetes/issuer.yaml` the way Istio
//! names them (`outbound|<port>||<service>.<namespace>.svc.cluster.local`).

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

/// Parses the plugin's `pluginConfig` with the filter's own check. A `credential_env` must be
/// handed to the VM by `vmConfig.env`; the check's environment then holds it, as the sidecar's
/// VM would.
fn check_plugin(path: &str) -> Value {
    let plugin = wasm_plugin(path);
    let config = &plugin["spec"]["pluginConfig"];
    assert!(config.is_object(), "{path}: spec.pluginConfig missing");
    let credential_env = config["revocation"]["credential_env"]
        .as_str()
        .map(String::from);
    if let Some(name) = credential_env.as_deref() {
        let env = plugin["spec"]["vmConfig"]["env"].as_array().cloned();
        assert!(
            env.unwrap_or_default()
                .iter()
                .any(|e| e["name"] == name && e["valueFrom"] == "HOST"),
            "{path}: credential_env {name} is not passed in by vmConfig.env (valueFrom: HOST)"
        );
    }
    let env = |name: &str| {
        (Some(name) == credential_env.as_deref()).then(|| "a-feed-credential-for-the-check".into())
    };
    let bytes = serde_json::to_vec(config).unwrap();
    let parsed = match Config::parse_with_env(&bytes, &env) {
        Ok(parsed) => parsed,
        Err(err) => panic!("{path}: the filter refuses its pluginConfig: {err}"),
    };
    // The edge defaults are said, not left implicit, and nothing is logged as a weakening.
    assert_eq!(
        config["forward_authorization"], false,
        "{path}: say forward_authorization: false"
    );
    assert!(
        config.get("identity_header_prefix").is_some(),
        "{path}: say identity_header_prefix"
    );
    assert!(parsed.warnings.is_empty(), "{path}: {:?}", parsed.warnings);
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE", "{path}");
    assert_eq!(plugin["spec"]["phase"], "AUTHN", "{path}");
    plugin
}

#[test]
fn deploy_wasmplugin_plugin_config_accepted_by_filter() {
    let plugin = check_plugin("deploy/kubernetes/istio-wasmplugin.yaml");
    // The clusters are the issuer Service of deploy/kubernetes/issuer.yaml, as Istio names it.
    let docs = documents("deploy/kubernetes/issuer.yaml");
    let service = docs
        .iter()
        .find(|doc| doc["kind"] == "Service")
        .expect("issuer.yaml has a Service");
    let name = service["metadata"]["name"].as_str().unwrap();
    let namespace = service["metadata"]["namespace"].as_str().unwrap();
    let port = &service["spec"]["ports"][0]["port"];
    let host = format!("{name}.{namespace}.svc.cluster.local");
    let cluster = format!("outbound|{port}||{host}");
    let config = &plugin["spec"]["pluginConfig"];
    for part in ["jwks", "revocation"] {
        assert_eq!(config[part]["cluster"], cluster, "{part}.cluster");
        assert_eq!(config[part]["authority"], host.as_str(), "{part}.authority");
    }
    // No credential in plain text in the resource.
    assert!(config["revocation"].get("credential").is_none());
    assert!(plugin["spec"]["sha256"]
        .as_str()
        .is_some_and(|s| s.len() == 64));
}

#[test]
fn example_wasmplugin_plugin_config_accepted_by_filter() {
    let plugin = check_plugin("envoy/istio-wasmplugin.yaml");
    assert!(plugin["spec"]["pluginConfig"]["revocation"]
        .get("credential")
        .is_none());
}
