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
//! The module Envoy loads is the one each example's pod delivers to where the proxy looks:
//! the pod's volumes are made directories here (an image volume of the filter-native image
//! holds the module where `deploy/images/filter-native.Containerfile` puts it), its init
//! containers' commands run in order with their mount paths mapped onto those directories,
//! and the proxy's mount of the module must be an `emptyDir` — never an image volume, which
//! Kubernetes mounts `noexec` (on Linux, typically), where Envoy's `dlopen` fails with
//! "failed to map segment from shared object".
//!
//! Needs the native module (`WEAUTH_FILTER_NATIVE`): `make test` runs this with the other
//! suites it runs against the native build.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use weauth_tests::harness::{temp_dir, workspace_root, Binaries};

const FEED_ENV: &str = "WEAUTH_FEED_TOKEN";

/// What `deploy/images/filter-native.Containerfile` builds (the image's reference in the
/// examples names it).
const MODULE_IMAGE: &str = "filter-native";

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

/// The pod an example runs its proxy in, as far as the module's delivery goes: the pod's
/// volumes, its init containers in order, and the proxy container's volume mounts.
struct Pod {
    volumes: Vec<Value>,
    init_containers: Vec<Value>,
    proxy_mounts: Vec<Value>,
}

fn list(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

/// Where the filter-native image holds the module: its `COPY` destination. The image is
/// `FROM scratch`, that file alone: no shell, no `cp`.
fn module_in_image() -> String {
    let path = "deploy/images/filter-native.Containerfile";
    let text = std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines.first(), Some(&"FROM scratch"), "{path}");
    lines
        .iter()
        .find_map(|l| l.strip_prefix("COPY libweauth_filter.so "))
        .unwrap_or_else(|| panic!("{path}: no COPY of libweauth_filter.so"))
        .trim()
        .to_string()
}

/// `text` with every path under one of `mounts` (a container's mount path, longest first)
/// moved to that mount's directory here. One pass: a directory here that contains another
/// mount path's text is not rewritten again.
fn on_host(text: &str, mounts: &[(String, PathBuf)]) -> String {
    let at_boundary =
        |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || "-_.".contains(c)));
    let mut out = String::new();
    let mut rest = text;
    let mut before: Option<char> = None;
    'scan: while let Some(c) = rest.chars().next() {
        if before.is_none_or(|b| b != '/' && at_boundary(Some(b))) {
            for (path, host) in mounts {
                if let Some(after) = rest.strip_prefix(path.as_str()) {
                    if at_boundary(after.chars().next()) {
                        out.push_str(&host.display().to_string());
                        before = path.chars().last();
                        rest = after;
                        continue 'scan;
                    }
                }
            }
        }
        out.push(c);
        before = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Delivers `module` as `pod` would, in directories under `dir`, and returns where the proxy
/// finds it: `in_proxy` (its path in the proxy container) mapped through the proxy's mounts.
fn deliver(name: &str, pod: &Pod, module: &Path, in_proxy: &str, dir: &Path) -> PathBuf {
    let mut volumes: Vec<(String, PathBuf, Value)> = Vec::new();
    for (index, volume) in pod.volumes.iter().enumerate() {
        let volume_name = volume["name"].as_str().unwrap_or_default().to_string();
        let host = dir.join(format!("volume-{index}"));
        std::fs::create_dir_all(&host).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
        if let Some(reference) = volume["image"]["reference"].as_str() {
            assert!(
                reference.contains(MODULE_IMAGE),
                "{name}: image volume {volume_name} of {reference}: which content?"
            );
            let file = host.join(module_in_image().trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap_or(&host)).unwrap();
            std::fs::copy(module, &file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        } else {
            assert!(
                volume["emptyDir"].is_object(),
                "{name}: volume {volume_name}: only image and emptyDir volumes are modelled"
            );
        }
        volumes.push((volume_name, host, volume.clone()));
    }
    let volume = |mount: &Value| {
        volumes
            .iter()
            .find(|(volume_name, _, _)| mount["name"] == volume_name.as_str())
            .unwrap_or_else(|| panic!("{name}: mount {mount} names no volume of the pod"))
    };
    let mounts_of = |mounts: &[Value]| -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = mounts
            .iter()
            .map(|mount| {
                assert!(
                    mount.get("subPath").is_none(),
                    "{name}: subPath is not modelled"
                );
                let path = mount["mountPath"].as_str().unwrap_or_default();
                (
                    path.trim_end_matches('/').to_string(),
                    volume(mount).1.clone(),
                )
            })
            .collect();
        out.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        out
    };

    for init in &pod.init_containers {
        let image = init["image"].as_str().unwrap_or_default();
        assert!(
            !image.contains(MODULE_IMAGE),
            "{name}: init container {} runs the filter-native image, which is FROM scratch: \
             it has no shell and no cp to run",
            init["name"]
        );
        let mounts = mounts_of(&list(&init["volumeMounts"]));
        let argv: Vec<String> = list(&init["command"])
            .iter()
            .chain(list(&init["args"]).iter())
            .map(|arg| on_host(arg.as_str().unwrap_or_default(), &mounts))
            .collect();
        let (program, args) = argv
            .split_first()
            .unwrap_or_else(|| panic!("{name}: init container {} has no command", init["name"]));
        let output = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{name}: {argv:?}: {e}"));
        assert!(
            output.status.success(),
            "{name}: init container {} failed: {argv:?}\n{}{}",
            init["name"],
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let (mount_path, mount) = pod
        .proxy_mounts
        .iter()
        .filter_map(|mount| {
            let path = mount["mountPath"].as_str()?.trim_end_matches('/');
            in_proxy
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/'))
                .then_some((path, mount))
        })
        .max_by_key(|(path, _)| path.len())
        .unwrap_or_else(|| panic!("{name}: no proxy mount holds {in_proxy}"));
    let (volume_name, host, spec) = volume(mount);
    assert!(
        spec.get("image").is_none() && spec["emptyDir"].is_object(),
        "{name}: the proxy loads the module from volume {volume_name}, which is not an emptyDir \
         filled by an init container ({spec}): Kubernetes mounts image volumes noexec (on Linux, \
         typically), and Envoy's dlopen then fails (failed to map segment from shared object)"
    );
    let delivered = host.join(in_proxy[mount_path.len()..].trim_start_matches('/'));
    let same = std::fs::read(&delivered).ok() == std::fs::read(module).ok();
    assert!(
        same,
        "{name}: {in_proxy} (here {}) is not the module after the init containers ran",
        delivered.display()
    );
    delivered
}

/// The Istio example's pod: the workload's pod template excerpt at the end of the file (YAML
/// in comments, indented under `#   `), with the sidecar's mounts from its
/// `sidecar.istio.io/userVolumeMount` annotation and from a template container named
/// `istio-proxy` (which the injector merges into the sidecar); and where the sidecar looks for
/// the module (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, the file named after the EnvoyFilter's
/// `dynamic_module_config`).
fn istio_pod() -> (Pod, String) {
    let path = "deploy/native/istio-envoyfilter.yaml";
    let text = std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let excerpt: Vec<&str> = text
        .lines()
        .skip_while(|line| *line != "#   metadata:")
        .map(|line| {
            line.strip_prefix("#   ")
                .unwrap_or(line.trim_start_matches('#'))
        })
        .collect();
    assert!(
        !excerpt.is_empty(),
        "{path}: no pod template excerpt (`#   metadata:`)"
    );
    let template: Value = serde_yaml_ng::from_str(&excerpt.join("\n"))
        .unwrap_or_else(|e| panic!("{path}: the pod template excerpt is not YAML: {e}"));
    let annotations = &template["metadata"]["annotations"];
    let spec = &template["spec"];
    let json_annotation = |key: &str| -> Value {
        annotations[key]
            .as_str()
            .map(|text| serde_json::from_str(text).unwrap_or_else(|e| panic!("{path}: {key}: {e}")))
            .unwrap_or(Value::Null)
    };
    let mut proxy_mounts = list(&json_annotation("sidecar.istio.io/userVolumeMount"));
    for container in list(&spec["containers"]) {
        if container["name"] == "istio-proxy" {
            proxy_mounts.extend(list(&container["volumeMounts"]));
        }
    }
    let mut volumes = list(&spec["volumes"]);
    volumes.extend(list(&json_annotation("sidecar.istio.io/userVolume")));
    let init_containers = list(&spec["initContainers"]);
    // With native sidecars (Istio's default since 1.27, on Kubernetes 1.29+) the injector
    // moves istio-proxy ahead of the pod's own init containers: the sidecar would get the
    // EnvoyFilter's listener before the copy ran, and refuse it for a missing module.
    if !init_containers.is_empty() {
        assert_eq!(
            annotations["sidecar.istio.io/nativeSidecar"], "false",
            "{path}: the module's copy must run before the sidecar starts"
        );
    }
    let search = json_annotation("proxy.istio.io/config")["proxyMetadata"]
        ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no ENVOY_DYNAMIC_MODULES_SEARCH_PATH"))
        .to_string();
    let docs = documents(path);
    let module_name = one(&docs, "EnvoyFilter")["spec"]["configPatches"][0]["patch"]["value"]
        ["typed_config"]["dynamic_module_config"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: the filter names no module"))
        .to_string();
    let in_proxy = format!("{}/lib{module_name}.so", search.trim_end_matches('/'));
    (
        Pod {
            volumes,
            init_containers,
            proxy_mounts,
        },
        in_proxy,
    )
}

/// The Envoy Gateway example's pod, as its EnvoyProxy describes it, and the module's path in
/// the proxy container (its registration's local path).
fn envoy_gateway_pod() -> (Pod, String) {
    let docs = documents("deploy/native/envoy-gateway-extensionpolicy.yaml");
    let proxy = &one(&docs, "EnvoyProxy")["spec"];
    let deployment = &proxy["provider"]["kubernetes"]["envoyDeployment"];
    let wanted = &one(&docs, "EnvoyExtensionPolicy")["spec"]["dynamicModule"][0];
    let in_proxy = list(&proxy["dynamicModules"])
        .iter()
        .find(|entry| entry["name"] == wanted["name"])
        .and_then(|entry| entry["source"]["local"]["path"].as_str().map(String::from))
        .unwrap_or_else(|| {
            panic!(
                "module {} is not registered by a local path",
                wanted["name"]
            )
        });
    (
        Pod {
            volumes: list(&deployment["pod"]["volumes"]),
            init_containers: list(&deployment["initContainers"]),
            proxy_mounts: list(&deployment["container"]["volumeMounts"]),
        },
        in_proxy,
    )
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
/// up in the EnvoyProxy's registry and loaded by its path (here: where the pod put it), the
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

/// Runs Envoy `--mode init_only` on `example`, with `module`'s directory as its
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`: whether it exited 0, and its log.
fn init_only(
    binaries: &Binaries,
    example: &Example,
    module: &Path,
    dir: &Path,
    name: &str,
) -> (bool, String) {
    let config = dir.join(format!("{name}.json"));
    std::fs::write(&config, bootstrap(example).to_string())
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let search_path = module.parent().unwrap_or(Path::new("."));
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

/// `example` loads with the module where `pod` delivers it (the module says it is configured),
/// and without its `issuer` Envoy refuses it, the module saying why.
fn loads_and_control_refused(
    name: &str,
    (pod, in_proxy): (Pod, String),
    example: impl Fn(&Path) -> Example,
) {
    let binaries = Binaries::from_env();
    assert!(
        binaries.native.is_file() && binaries.envoy.is_file(),
        "needs Envoy ({}) and the native module ({}): `make native`, or set \
         WEAUTH_FILTER_NATIVE",
        binaries.envoy.display(),
        binaries.native.display()
    );
    let dir = temp_dir(&format!("deploy-native-{name}")).unwrap_or_else(|e| panic!("{e}"));
    let dir = dir.path();
    let module: PathBuf = deliver(name, &pod, &binaries.native, &in_proxy, &dir.join("pod"));

    let (loaded, log) = init_only(&binaries, &example(&module), &module, dir, name);
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
    let (loaded, log) = init_only(
        &binaries,
        &control,
        &module,
        dir,
        &format!("{name}-control"),
    );
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
    loads_and_control_refused("istio", istio_pod(), |_| istio());
}

#[test]
fn envoy_gateway_resources_load_in_envoy_as_translated() {
    loads_and_control_refused("envoy-gateway", envoy_gateway_pod(), envoy_gateway);
}
