//! `deploy/monitoring/`: the alert rules' shape (every alert has a severity, a summary, a
//! description and a runbook section in docs/RUNBOOK.md, and is exercised by
//! `alerts_test.yaml`), the PrometheusRule carrying the same groups, the issuer alerts counting
//! the issuer once when a mesh-wide job scrapes its pods too (promtool), and the Grafana
//! dashboard and prometheus-adapter's rule against a real Prometheus scraping the test stack.
//! Also the issuer's Deployment and autoscaler in `deploy/kubernetes/` as the monitoring and
//! the HPA's metrics need them.
//!
//! What the rules evaluate to is `promtool test rules` (`make monitoring-check`); these tests
//! check what promtool does not.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weauth_tests::harness::{free_port, temp_dir, workspace_root, Stack};
use weauth_tests::prometheus::{self, Prometheus, Targets};

fn monitoring(file: &str) -> PathBuf {
    workspace_root().join("deploy/monitoring").join(file)
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &PathBuf) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every alerting rule of alerts.yaml.
fn alert_rules() -> Vec<Value> {
    let rules = yaml(&monitoring("alerts.yaml"));
    let groups = rules["groups"].as_array().expect("alerts.yaml: groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// The issuer's readiness in deploy/kubernetes/issuer.yaml does not follow the store, which
/// every replica shares: `/readyz` (the store reachable) as the readiness probe took every
/// replica out of the mesh's endpoints during a store outage, and with them the revocation
/// feed and the JWKS that a replica serves from memory — the sidecars' filters then refused
/// every token once their set went stale (`stale_mode: deny`).
#[test]
fn issuer_readiness_does_not_follow_the_store() {
    let issuer = issuer_container();
    let path = issuer["readinessProbe"]["httpGet"]["path"].as_str();
    assert_eq!(path, Some("/healthz"), "readiness probe: {path:?}");
}

/// The pod template's spec of the Deployment in deploy/kubernetes/issuer.yaml.
fn issuer_pod_spec() -> Value {
    issuer_pod_template()["spec"].clone()
}

/// The issuer container of the issuer Deployment.
fn issuer_container() -> Value {
    issuer_pod_spec()["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "issuer")
        .expect("the issuer container")
        .clone()
}

/// The issuer Deployment's pod template (metadata and spec).
fn issuer_pod_template() -> Value {
    let path = workspace_root().join("deploy/kubernetes/issuer.yaml");
    let text = read(&path);
    let deployment = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("issuer.yaml parses"))
        .find(|doc: &Value| doc["kind"] == "Deployment")
        .expect("issuer.yaml has a Deployment");
    deployment["spec"]["template"].clone()
}

/// Service links would put `WEAUTH_ISSUER_SERVICE_HOST`, `WEAUTH_REDIS_PORT`… (the namespace's
/// Services) in the issuer's environment, and the issuer warns at start of every `WEAUTH_*`
/// variable it does not read.
#[test]
fn issuer_pods_get_no_service_links() {
    let spec = issuer_pod_spec();
    assert_eq!(
        spec["enableServiceLinks"], false,
        "issuer.yaml: enableServiceLinks"
    );
}

/// The issuer keeps serving for a `preStop` pause while its endpoint is removed (it stops
/// accepting at SIGTERM), then drains for `WEAUTH_SHUTDOWN_GRACE`: both within the pod's
/// `terminationGracePeriodSeconds`, or the kubelet kills it mid-drain.
#[test]
fn issuer_pre_stop_pause_and_drain_fit_the_grace_period() {
    let spec = issuer_pod_spec();
    let issuer = issuer_container();
    let pause = issuer["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64();
    assert!(
        pause.is_some_and(|s| s >= 1),
        "issuer.yaml: preStop sleep {pause:?}"
    );
    let path = workspace_root().join("deploy/kubernetes/issuer-configmap.yaml");
    let text = read(&path);
    let configmap = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("issuer-configmap.yaml parses"))
        .find(|doc: &Value| doc["metadata"]["name"] == "weauth-issuer")
        .expect("issuer-configmap.yaml has the ConfigMap weauth-issuer");
    let grace = configmap["data"]["WEAUTH_SHUTDOWN_GRACE"].as_str();
    let drain: u64 = grace
        .and_then(|g| g.strip_suffix('s'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("WEAUTH_SHUTDOWN_GRACE {grace:?}: whole seconds expected"));
    let period = spec["terminationGracePeriodSeconds"].as_u64();
    assert!(
        period.is_some_and(|p| p > pause.unwrap_or_default() + drain),
        "terminationGracePeriodSeconds {period:?} does not cover the preStop pause \
         ({pause:?} s) and the drain ({drain} s)"
    );
    // The Istio sidecar gets SIGTERM with the issuer: it must keep proxying (to Redis) for the
    // pause and the drain, and be done within the grace period.
    let proxy = issuer_pod_template()["metadata"]["annotations"]["proxy.istio.io/config"]
        .as_str()
        .map(|text| serde_yaml_ng::from_str::<Value>(text).expect("proxy.istio.io/config parses"))
        .expect("issuer.yaml: the proxy.istio.io/config annotation");
    let sidecar: u64 = proxy["terminationDrainDuration"]
        .as_str()
        .and_then(|d| d.strip_suffix('s'))
        .and_then(|n| n.parse().ok())
        .expect("issuer.yaml: terminationDrainDuration in whole seconds");
    assert!(
        sidecar >= pause.unwrap_or_default() + drain && period.is_some_and(|p| sidecar < p),
        "the sidecar's terminationDrainDuration ({sidecar} s) must cover the preStop pause \
         ({pause:?} s) and the drain ({drain} s), within terminationGracePeriodSeconds \
         ({period:?})"
    );
}

/// Every document of the YAML files in deploy/kubernetes/ and one level below, with its file.
fn kubernetes_documents() -> Vec<(String, Value)> {
    let root = workspace_root().join("deploy/kubernetes");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() && dir == root {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .iter()
        .flat_map(|path| {
            let text = read(path);
            let name = path
                .strip_prefix(workspace_root())
                .unwrap_or(path)
                .display()
                .to_string();
            serde_yaml_ng::Deserializer::from_str(&text)
                .map(|doc| {
                    let doc: Value = serde::Deserialize::deserialize(doc)
                        .unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
                    (name.clone(), doc)
                })
                .filter(|(_, doc)| !doc.is_null())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every Istio route to the issuer retries only what never reached it and gives a login's
/// WeChat attempts their 30 s; the public one exposes no internal path; idle connections close
/// before the issuer closes them. Istio's default retried a 503 (before 1.24), a POST
/// included: a login answered 503 after its code was spent came back as a 400.
#[test]
fn istio_routes_to_the_issuer_never_retry_what_reached_it() {
    const ISSUER: &str = "weauth-issuer.weauth.svc.cluster.local";
    let docs = kubernetes_documents();
    let services: Vec<&(String, Value)> = docs
        .iter()
        .filter(|(_, doc)| doc["kind"] == "VirtualService")
        .collect();
    assert!(services.len() >= 2, "deploy/kubernetes/: {services:?}");
    let safe: BTreeSet<&str> = ["connect-failure", "refused-stream", "reset-before-request"]
        .into_iter()
        .collect();
    let mut public = false;
    for (file, service) in services {
        for route in service["spec"]["http"].as_array().unwrap() {
            let to_issuer = route["route"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["destination"]["host"] == ISSUER);
            if !to_issuer {
                continue;
            }
            let retry_on = route["retries"]["retryOn"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a route without its retries: {route}"));
            for condition in retry_on.split(',') {
                assert!(safe.contains(condition), "{file}: retries on {condition}");
            }
            assert_eq!(route["timeout"], "30s", "{file}: {route}");
            if service["spec"]["gateways"].is_array() {
                public = true;
                let paths: Vec<&str> = route["match"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|m| m["uri"]["exact"].as_str().or(m["uri"]["prefix"].as_str()))
                    .collect();
                assert!(paths.contains(&"/v1/login"), "{file}: {paths:?}");
                for path in paths {
                    assert!(
                        !path.starts_with("/v1/admin")
                            && !path.starts_with("/v1/revocations")
                            && path != "/"
                            && path != "/v1/",
                        "{file}: exposes {path}"
                    );
                }
            }
        }
    }
    assert!(public, "no gateway route to the issuer");
    let rule = docs
        .iter()
        .find(|(_, doc)| doc["kind"] == "DestinationRule" && doc["spec"]["host"] == ISSUER)
        .map(|(_, doc)| doc)
        .expect("a DestinationRule for the issuer");
    assert_eq!(
        rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"], "5s",
        "under WEAUTH_HEADER_TIMEOUT (10 s)"
    );
}

/// A Deployment an HPA scales has no `replicas`: `kubectl apply` of the manifest would set the
/// Deployment back to it at every apply, whatever the HPA had scaled it to (down from six to
/// two in the middle of a login burst, until the HPA scales up again).
#[test]
fn deployments_an_hpa_scales_set_no_replicas() {
    let docs = kubernetes_documents();
    let hpas: Vec<&(String, Value)> = docs
        .iter()
        .filter(|(_, doc)| doc["kind"] == "HorizontalPodAutoscaler")
        .collect();
    assert!(
        !hpas.is_empty(),
        "deploy/kubernetes/: no HorizontalPodAutoscaler"
    );
    for (file, hpa) in hpas {
        let target = &hpa["spec"]["scaleTargetRef"];
        assert_eq!(target["kind"], "Deployment", "{file}: {target}");
        let scaled: Vec<&(String, Value)> = docs
            .iter()
            .filter(|(_, doc)| {
                doc["kind"] == "Deployment"
                    && doc["metadata"]["name"] == target["name"]
                    && doc["metadata"]["namespace"] == hpa["metadata"]["namespace"]
            })
            .collect();
        assert!(
            !scaled.is_empty(),
            "{file}: the HPA scales {target}, which is not shipped"
        );
        for (file, deployment) in scaled {
            assert!(
                deployment["spec"].get("replicas").is_none(),
                "{file}: Deployment {} sets replicas, which an HPA scales: every `kubectl \
                 apply` would reset its scale",
                deployment["metadata"]["name"]
            );
        }
    }
}

/// The issuer's HPA in deploy/kubernetes/issuer.yaml: its CPU target is the issuer
/// container's own (a `Resource` metric averages over the pod's containers' requests, the
/// Istio sidecar's included, which its comment's arithmetic does not count), and it scales
/// down more slowly than Kubernetes's default (a 300 s window, then down to the
/// recommendation at once), as its comment says: each replica removed answers its sidecars'
/// long polls, which all move to the others at once.
#[test]
fn issuer_hpa_watches_the_issuers_own_cpu_and_scales_down_one_pod_at_a_time() {
    let hpa = kubernetes_documents()
        .into_iter()
        .find(|(file, doc)| {
            file.ends_with("issuer.yaml") && doc["kind"] == "HorizontalPodAutoscaler"
        })
        .map(|(_, doc)| doc)
        .expect("issuer.yaml: the HorizontalPodAutoscaler");
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert!(
        !metrics
            .iter()
            .any(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu"),
        "issuer.yaml: a `Resource` CPU metric counts the sidecar's CPU and request too"
    );
    let cpu = metrics
        .iter()
        .find(|m| m["type"] == "ContainerResource" && m["containerResource"]["name"] == "cpu")
        .expect("issuer.yaml: a ContainerResource CPU metric");
    let container = &cpu["containerResource"]["container"];
    assert_eq!(container, "issuer", "issuer.yaml: CPU of {container}");
    assert!(
        issuer_pod_spec()["containers"]
            .as_array()
            .is_some_and(|all| all.iter().any(|c| c["name"] == *container)),
        "issuer.yaml: the pod has no container {container}"
    );

    let down = &hpa["spec"]["behavior"]["scaleDown"];
    let window = down["stabilizationWindowSeconds"].as_u64().unwrap_or(300);
    assert!(
        window > 300,
        "issuer.yaml: scale-down window {window} s, the default is 300"
    );
    let policies = down["policies"].as_array().cloned().unwrap_or_default();
    assert!(
        !policies.is_empty()
            && policies.iter().all(|p| {
                p["type"] == "Pods"
                    && p["value"] == 1
                    && p["periodSeconds"].as_u64().is_some_and(|s| s >= 60)
            }),
        "issuer.yaml: scale-down policies {policies:?}: one pod at a time expected"
    );
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to `-`, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn alerts_have_severity_summary_and_a_runbook_section() {
    let runbook = read(&workspace_root().join("docs/RUNBOOK.md"));
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let rules = alert_rules();
    assert!(rules.len() >= 10, "{} alerting rules", rules.len());
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 10, "{name}: annotation {key} missing");
        }
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let (page, fragment) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook_url {url:?} has no anchor"));
        assert!(page.ends_with("/docs/RUNBOOK.md"), "{name}: {url}");
        assert_eq!(fragment, name.to_lowercase(), "{name}: anchor");
        assert!(
            anchors.contains(fragment),
            "{name}: docs/RUNBOOK.md has no section `## {name}`"
        );
    }
}

#[test]
fn every_alert_is_exercised_by_the_promtool_tests() {
    let tests = yaml(&monitoring("alerts_test.yaml"));
    let exercised: BTreeSet<&str> = tests["tests"]
        .as_array()
        .expect("alerts_test.yaml: tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|case| {
            // fires somewhere: at least one case expects an alert
            case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    for rule in alert_rules() {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            exercised.contains(name),
            "alerts_test.yaml never shows {name} firing"
        );
    }
}

/// A job other than the issuer's that scrapes the issuer's pods too: a mesh-wide scrape — Istio's
/// `envoy-stats` PodMonitor, its Prometheus add-on's `kubernetes-pods` job — takes every pod
/// annotated `prometheus.io/scrape`, as issuer.yaml's are, from the same merged-metrics port: the
/// issuer's series then arrive twice, under two job names, with the same `namespace` and `pod`.
const MESH_JOB: &str = "envoy-stats";

/// `promtool`: next to `WEAUTH_PROMETHEUS_BIN` when that names a path, else on the PATH
/// (Debian's `prometheus` package has both).
fn promtool() -> PathBuf {
    match prometheus::bin().parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("promtool"),
        _ => PathBuf::from("promtool"),
    }
}

/// The issuer alerts select `job="weauth-issuer"`: alerts_test.yaml's promtool tests, with
/// every series of the issuer's job given again under [`MESH_JOB`], expect the very same
/// alerts. Without the matcher each alert fired once more for the mesh job's copy, and a
/// ratio summed over both jobs.
#[test]
fn issuer_alerts_fire_once_when_a_mesh_wide_job_scrapes_the_issuer_too() {
    let mut tests = yaml(&monitoring("alerts_test.yaml"));
    let issuer = r#"job="weauth-issuer""#;
    let mut copies = 0;
    for test in tests["tests"]
        .as_array_mut()
        .expect("alerts_test.yaml: tests")
    {
        let inputs = test["input_series"].as_array_mut().expect("input_series");
        let again: Vec<Value> = inputs
            .iter()
            .filter_map(|input| {
                let series = input["series"].as_str()?;
                series.contains(issuer).then(|| {
                    let mut copy = input.clone();
                    copy["series"] = json!(series.replace(issuer, &format!("job=\"{MESH_JOB}\"")));
                    copy
                })
            })
            .collect();
        copies += again.len();
        inputs.extend(again);
    }
    assert!(
        copies >= 10,
        "alerts_test.yaml: {copies} series of the issuer's job"
    );
    tests["rule_files"] = json!([monitoring("alerts.yaml").display().to_string()]);
    let dir = temp_dir("weauth-promtool").unwrap();
    let file = dir.path().join("alerts_test_mesh_job.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&tests).unwrap()).unwrap();
    let output = Command::new(promtool())
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `make monitoring-tools`, or set WEAUTH_PROMETHEUS_BIN)",
                promtool().display()
            )
        });
    assert!(
        output.status.success(),
        "with the issuer's series also under job {MESH_JOB}, the issuer alerts fire otherwise \
         (an alert without a job matcher counts the mesh job's copy):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheusrule_carries_the_same_groups() {
    let rules = yaml(&monitoring("alerts.yaml"));
    let operator = yaml(&monitoring("prometheusrule.yaml"));
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        operator["spec"]["groups"], rules["groups"],
        "deploy/monitoring/prometheusrule.yaml differs from alerts.yaml: run `make monitoring-rules`"
    );
}

// --- the dashboard against a real Prometheus ---------------------------------------------------

/// How long the panels may take to show data after traffic starts. With a 1 s scrape and a
/// 10 s rate window they do within about 15 s; the rest is room for a loaded 2-core machine.
const DATA_DEADLINE: Duration = Duration::from_secs(120);

/// What Grafana would put in place of the dashboard's variables (`$sidecar_scrape_interval`:
/// this test's scrape interval).
fn grafana_expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$issuer_job", "weauth-issuer")
        .replace("$sidecar_scrape_interval", "1s")
}

/// Panels that may stay empty after this test's traffic, and why.
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    (
        "App access token fetches",
        "no call in this traffic needs WeChat's app access token (phone numbers, risk checks do)",
    ),
    (
        "User data calls",
        "this traffic decrypts nothing and asks for no phone number",
    ),
];

/// One query of one panel.
struct Query {
    panel: String,
    ref_id: String,
    expr: String,
}

fn dashboard_queries() -> Vec<Query> {
    let dashboard: Value = serde_json::from_str(&read(&monitoring("dashboard.json")))
        .unwrap_or_else(|e| panic!("dashboard.json: {e}"));
    let mut queries = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .expect("dashboard.json: panels")
    {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            queries.push(Query {
                panel: title.clone(),
                ref_id: target["refId"].as_str().unwrap_or_default().to_string(),
                expr: grafana_expand(target["expr"].as_str().unwrap_or_default()),
            });
        }
    }
    queries
}

/// The namespace and the pod the test's Prometheus labels the issuer's target with, as
/// Kubernetes service discovery labels a pod's.
const TEST_NAMESPACE: &str = "weauth";
const TEST_POD: &str = "weauth-issuer-7d9f8-x2x5k";

/// prometheus-adapter's `metricsQuery` with `<<.Series>>` filled in and `<<.LabelMatchers>>`
/// and `<<.GroupBy>>` as given.
fn adapter_metrics_query(label_matchers: &str, group_by: &str) -> String {
    let path = workspace_root().join("deploy/kubernetes/prometheus-adapter.yaml");
    let configmap = yaml(&path);
    let config: Value = serde_yaml_ng::from_str(configmap["data"]["config.yaml"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("prometheus-adapter.yaml config.yaml: {e}"));
    let rule = &config["rules"][0];
    assert_eq!(rule["name"]["as"], "weauth_http_requests_per_second");
    assert!(rule["seriesQuery"]
        .as_str()
        .unwrap()
        .starts_with("weauth_http_request_duration_seconds_count{"));
    rule["metricsQuery"]
        .as_str()
        .unwrap()
        .replace("<<.Series>>", "weauth_http_request_duration_seconds_count")
        .replace("<<.LabelMatchers>>", label_matchers)
        .replace("<<.GroupBy>>", group_by)
}

/// What the adapter puts in `<<.LabelMatchers>>` when the HPA asks for the issuer's pods: their
/// namespace and their names — no job, which so must come from the rule itself.
fn adapter_label_matchers() -> String {
    format!("namespace=\"{TEST_NAMESPACE}\",pod=~\"{TEST_POD}\"")
}

/// The adapter's query as it runs for the HPA (by pod).
fn adapter_query() -> String {
    adapter_metrics_query(&adapter_label_matchers(), "pod")
}

/// The adapter's query over every pod, as a dashboard panel shows it: the adapter's
/// `<<.LabelMatchers>>` (the pods the HPA asks about) left out, by instance.
fn adapter_query_every_pod() -> String {
    adapter_metrics_query("", "instance")
        .replace("{,", "{")
        .replace(",,", ",")
        .replace(",}", "}")
}

/// The dashboard's per-pod request rate is the HPA's metric, as issuer.yaml's HPA tells to tune
/// its target from it: prometheus-adapter's query (the same series and job, the feed's answers,
/// JWKS fetches and probes left out, the same window), grouped by instance.
#[test]
fn dashboard_per_pod_request_rate_is_the_hpa_query() {
    let title = "Requests per second per pod";
    let queries: Vec<Query> = dashboard_queries()
        .into_iter()
        .filter(|q| q.panel == title)
        .collect();
    let [panel] = &queries[..] else {
        panic!("dashboard.json: one query expected in panel {title:?}");
    };
    assert_eq!(
        panel.expr,
        adapter_query_every_pod(),
        "panel {title:?} is not prometheus-adapter's metricsQuery"
    );
}

/// Every subquery of the dashboard has a step: without one (`[5m:]`) Prometheus evaluates it
/// at its global `evaluation_interval` (1m by default), which leaves a `rate` over a
/// `$__rate_interval` of a minute or two one point or none. (The panels' data, below, is
/// looked at with a 1 s evaluation interval, which hides this.)
#[test]
fn dashboard_subqueries_have_a_step() {
    for q in dashboard_queries() {
        assert!(
            !q.expr.contains(":]"),
            "panel {:?} query {}: a subquery without a step: `{}`",
            q.panel,
            q.ref_id,
            q.expr
        );
    }
}

/// `config` with the issuer's target labelled with a `namespace` and a `pod`, as Kubernetes
/// service discovery labels a pod's, and scraped a second time, with the same labels, by
/// [`MESH_JOB`].
fn with_pod_labels_and_a_mesh_job(config: &str, issuer: &str) -> String {
    let mut cfg: Value = serde_yaml_ng::from_str(config).expect("the test's prometheus.yml");
    let jobs = cfg["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs");
    let targets = json!([{
        "targets": [issuer],
        "labels": {"namespace": TEST_NAMESPACE, "pod": TEST_POD},
    }]);
    let job = jobs
        .iter_mut()
        .find(|job| job["job_name"] == "weauth-issuer")
        .expect("the job weauth-issuer");
    job["static_configs"] = targets.clone();
    jobs.push(json!({
        "job_name": MESH_JOB,
        "metrics_path": "/metrics",
        "static_configs": targets,
    }));
    serde_yaml_ng::to_string(&cfg).expect("prometheus.yml")
}

/// The job of [`with_podmonitor_job`].
const PODMONITOR_JOB: &str = "podmonitor-relabelling";

/// `config` with one more job: deploy/monitoring/podmonitor.yaml's relabelling as Prometheus
/// applies it, over a target labelled as Kubernetes discovery labels the issuer container of
/// a pod without a sidecar (its `prometheus.io` annotations naming the issuer's own port and
/// /metrics; with Istio's metrics merging the injector rewrites them to :15020
/// /stats/prometheus, which the same rules follow). The target's own address leads nowhere:
/// the scrape reaches the issuer only if the relabelling builds its address from the labels.
fn with_podmonitor_job(config: &str, issuer: &str) -> String {
    let monitor = yaml(&monitoring("podmonitor.yaml"));
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    let relabel: Vec<Value> = endpoint["relabelings"]
        .as_array()
        .expect("podmonitor.yaml: relabelings")
        .iter()
        .map(|rule| {
            let fields = rule
                .as_object()
                .expect("a relabeling")
                .iter()
                .map(|(k, v)| {
                    let key = match k.as_str() {
                        "sourceLabels" => "source_labels",
                        "targetLabel" => "target_label",
                        other => other,
                    };
                    (key.to_string(), v.clone())
                });
            Value::Object(fields.collect())
        })
        .collect();
    let (host, port) = issuer.rsplit_once(':').expect("host:port");
    let mut cfg: Value = serde_yaml_ng::from_str(config).expect("the test's prometheus.yml");
    cfg["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs")
        .push(json!({
            "job_name": PODMONITOR_JOB,
            "relabel_configs": relabel,
            "static_configs": [{
                "targets": ["discovered.invalid:1"],
                "labels": {
                    "__meta_kubernetes_pod_container_name": "issuer",
                    "__meta_kubernetes_pod_annotation_prometheus_io_port": port,
                    "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
                    "__meta_kubernetes_pod_ip": host,
                },
            }],
        }));
    serde_yaml_ng::to_string(&cfg).expect("prometheus.yml")
}

/// The job of [`with_edge_podmonitor_job`].
const EDGE_PODMONITOR_JOB: &str = "podmonitor-edge";

/// `config` with one more job: deploy/monitoring/podmonitor-edge.yaml's endpoint (its path and
/// its metric relabelling) scraping the test stack's Envoy, as it scrapes a sidecar.
fn with_edge_podmonitor_job(config: &str, envoy_admin: &str) -> String {
    let monitor = yaml(&monitoring("podmonitor-edge.yaml"));
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    let keep: Vec<Value> = endpoint["metricRelabelings"]
        .as_array()
        .expect("podmonitor-edge.yaml: metricRelabelings")
        .iter()
        .map(|rule| {
            json!({
                "action": rule["action"],
                "source_labels": rule["sourceLabels"],
                "regex": rule["regex"],
            })
        })
        .collect();
    let mut cfg: Value = serde_yaml_ng::from_str(config).expect("the test's prometheus.yml");
    cfg["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs")
        .push(json!({
            "job_name": EDGE_PODMONITOR_JOB,
            "metrics_path": endpoint["path"],
            "metric_relabel_configs": keep,
            "static_configs": [{"targets": [envoy_admin]}],
        }));
    serde_yaml_ng::to_string(&cfg).expect("prometheus.yml")
}

/// The outcome of one instant query.
enum Answer {
    /// Rejected by the parser or the engine (the text says why).
    Refused(String),
    /// The values of the result (vector samples, or the scalar).
    Values(Vec<f64>),
}

async fn instant(client: &reqwest::Client, prometheus: &str, expr: &str) -> Answer {
    let resp = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let body: Value = match resp {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        // Prometheus itself busy: not a verdict on the query, try again next round.
        Err(_) => return Answer::Values(Vec::new()),
    };
    if body["status"] != "success" {
        return Answer::Refused(format!("{}: {}", body["errorType"], body["error"]));
    }
    let value = |v: &Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok());
    let data = &body["data"];
    let values = match data["resultType"].as_str() {
        Some("scalar") => value(&data["result"]).into_iter().collect(),
        _ => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| value(&s["value"]))
            .collect(),
    };
    Answer::Values(values)
}

/// One round of traffic through Envoy: a login, API calls with the token (a cache miss then
/// hits), without a token and with a malformed one (denials), a refresh, a login WeChat refuses
/// (40029), and a logout (a revocation entry at every sidecar).
async fn traffic(stack: &Stack, round: usize) {
    let user = format!("monitor-{round}");
    let Ok(tokens) = stack.login(&user).await else {
        return;
    };
    for _ in 0..3 {
        let _ = stack
            .get_json("/api/hello", Some(&tokens.access_token))
            .await;
    }
    let _ = stack.get_json("/api/hello", None).await;
    let _ = stack.get_json("/api/hello", Some("not.a.jwt")).await;
    let _ = stack
        .post_json(
            "/v1/token/refresh",
            None,
            &json!({"refresh_token": tokens.refresh_token}),
        )
        .await;
    let _ = stack
        .post_json("/v1/login", None, &json!({"code": "no-such-code"}))
        .await;
    let _ = stack
        .request(reqwest::Method::POST, "/v1/logout")
        .bearer_auth(&tokens.access_token)
        .send()
        .await;
}

#[tokio::test]
async fn dashboard_queries_parse_and_panels_show_data_after_traffic() {
    let began = Instant::now();
    let stack = Stack::builder()
        // Logins every round from one address: no per-IP login limit in this test.
        .issuer_env("WEAUTH_LOGIN_RATE", "0")
        .start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the weauth stack: {e}"));
    let dir = temp_dir("weauth-prometheus").unwrap();
    let shipped = read(&monitoring("prometheus.yml"));
    let targets = Targets {
        issuers: vec![prometheus::host_port(&stack.issuer_url())],
        envoy_admin: prometheus::host_port(&stack.admin_url()),
    };
    let config = prometheus::config(&shipped, &targets, &monitoring("alerts.yaml"), Some("1s"))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = with_podmonitor_job(&config, &targets.issuers[0]);
    let config = with_pod_labels_and_a_mesh_job(&config, &targets.issuers[0]);
    let config = with_edge_podmonitor_job(&config, &targets.envoy_admin);
    let port = free_port().unwrap();
    let prom = Prometheus::start(dir.path(), port, &config)
        .await
        .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
    let url = prom.url().to_string();
    let client = reqwest::Client::new();
    let started_traffic = Instant::now();

    let mut queries = dashboard_queries();
    queries.push(Query {
        panel: "prometheus-adapter rule (deploy/kubernetes/prometheus-adapter.yaml)".into(),
        ref_id: "metricsQuery".into(),
        expr: adapter_query(),
    });
    queries.push(Query {
        panel: "PodMonitor relabelling (deploy/monitoring/podmonitor.yaml)".into(),
        ref_id: "issuer series through it".into(),
        expr: format!("weauth_store_up{{job=\"{PODMONITOR_JOB}\"}}"),
    });
    queries.push(Query {
        panel: "PodMonitor of the edge (deploy/monitoring/podmonitor-edge.yaml)".into(),
        ref_id: "filter series through it".into(),
        expr: format!("weauth_revocation_age_seconds{{job=\"{EDGE_PODMONITOR_JOB}\"}}"),
    });
    let may_be_empty = |panel: &str| MAY_BE_EMPTY.iter().any(|(p, _)| *p == panel);
    let mut round = 0;
    let missing = loop {
        traffic(&stack, round).await;
        round += 1;
        let mut missing = Vec::new();
        for q in &queries {
            match instant(&client, &url, &q.expr).await {
                Answer::Refused(why) => panic!(
                    "panel {:?} query {}: Prometheus refuses `{}`: {why}",
                    q.panel, q.ref_id, q.expr
                ),
                Answer::Values(values) => {
                    if !may_be_empty(&q.panel) && !values.iter().any(|v| v.is_finite()) {
                        missing.push(format!(
                            "panel {:?} query {} `{}` → {values:?}",
                            q.panel, q.ref_id, q.expr
                        ));
                    }
                }
            }
        }
        if missing.is_empty() || started_traffic.elapsed() > DATA_DEADLINE {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "waited {:?} ({round} rounds of traffic) for every panel to show a finite value; \
         still without data:\n{}\nPrometheus log: {} (kept with WEAUTH_KEEP_TMP=1)",
        started_traffic.elapsed(),
        missing.join("\n"),
        prom.log().display()
    );
    // The edge's PodMonitor keeps weauth's series alone of Envoy's thousands (Prometheus's own
    // `up` and `scrape_*` series of the job aside).
    let others =
        format!("count({{job=\"{EDGE_PODMONITOR_JOB}\",__name__!~\"weauth_.*|up|scrape_.*\"}})");
    match instant(&client, &url, &others).await {
        Answer::Values(values) => assert!(values.is_empty(), "{others} → {values:?}"),
        Answer::Refused(why) => panic!("{others}: {why}"),
    }

    // prometheus-adapter's rule counts the issuer once although MESH_JOB scrapes it too: the
    // adapter's matchers (namespace, pod) select both jobs' series, so the rule's own job
    // matcher is what keeps the HPA's request rate from doubling. Against the same query with
    // the issuer's job added, the ratio is 1 (about 2 without the rule's matcher).
    let single = adapter_metrics_query(
        &format!("job=\"weauth-issuer\",{}", adapter_label_matchers()),
        "pod",
    );
    let ratio = format!("({}) / on (pod) ({single})", adapter_query());
    let mut ratios = Vec::new();
    for _ in 0..20 {
        match instant(&client, &url, &ratio).await {
            Answer::Refused(why) => panic!("Prometheus refuses `{ratio}`: {why}"),
            Answer::Values(values) if !values.is_empty() => {
                ratios = values;
                break;
            }
            Answer::Values(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    assert!(
        ratios.len() == 1 && (ratios[0] - 1.0).abs() < 0.25,
        "prometheus-adapter's rate for pod {TEST_POD}, scraped by weauth-issuer and by \
         {MESH_JOB}, over the issuer job's alone: {ratios:?} (`{ratio}`)"
    );

    // The alert rules loaded next to the dashboard evaluate without error against the real
    // series, and none fires on a healthy stack.
    let rules_deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let body: Value = client
            .get(format!("{url}/api/v1/rules"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rules: Vec<Value> = body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.iter().all(|r| r["health"] != "unknown");
        if (evaluated && !rules.is_empty()) || Instant::now() > rules_deadline {
            break rules;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        rules.len(),
        alert_rules().len(),
        "rules loaded by Prometheus"
    );
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "rule {} evaluates with an error: {}",
            rule["name"], rule["lastError"]
        );
        assert_ne!(
            rule["state"], "firing",
            "alert {} fires on a healthy stack: {}",
            rule["name"], rule["alerts"]
        );
    }
    eprintln!(
        "monitoring: {} queries with data after {:?} of traffic ({round} rounds); test took {:?}",
        queries.len(),
        started_traffic.elapsed(),
        began.elapsed()
    );
    prom.stop().await;
    stack.shutdown().await;
}

// --- logs joined to traces -----------------------------------------------------------------------

/// The issuer's JSON log lines about `path`'s request (the `request` line api/mod.rs logs at
/// debug level for every answer).
fn request_lines(log: &str, path: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "request" && l["fields"]["path"] == path)
        .collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn json_log_lines_carry_the_callers_trace_id() {
    let stack = Stack::builder()
        .without_envoy()
        .issuer_env("WEAUTH_LOG_FORMAT", "json")
        .issuer_env("WEAUTH_LOG", "info,weauth_issuer=debug")
        .start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the issuer: {e}"));
    let client = reqwest::Client::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let code = stack.mock.login("traced").code;
    let resp = client
        .post(format!("{}/v1/login", stack.issuer_url()))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // No traceparent: a trace of its own.
    let resp = client
        .get(format!("{}/.well-known/jwks.json", stack.issuer_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // B3 only (Envoy's Zipkin tracer): the caller's trace too.
    let b3_trace = "463ac35c9f6413ad48485a3953bb6124";
    let b3_span = "a2fb4a1d1a96d312";
    let resp = client
        .get(format!(
            "{}/.well-known/openid-configuration",
            stack.issuer_url()
        ))
        .header("b3", format!("{b3_trace}-{b3_span}-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The line is written before the answer is sent; allow for a slow file system anyway.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (login, jwks, b3) = loop {
        let log = std::fs::read_to_string(stack.issuer_log()).unwrap_or_default();
        let (login, jwks, b3) = (
            request_lines(&log, "/v1/login"),
            request_lines(&log, "/.well-known/jwks.json"),
            request_lines(&log, "/.well-known/openid-configuration"),
        );
        if (!login.is_empty() && !jwks.is_empty() && !b3.is_empty()) || Instant::now() > deadline {
            break (login, jwks, b3);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let [login] = &login[..] else {
        panic!("one /v1/login request line expected in the issuer's log, got {login:?}");
    };
    let span = &login["span"];
    assert_eq!(span["name"], "request", "{login}");
    assert_eq!(span["trace_id"], trace, "{login}");
    assert_eq!(span["parent_id"], parent, "{login}");
    let span_id = span["span_id"].as_str().unwrap_or_default();
    assert!(is_hex(span_id, 16) && span_id != parent, "{login}");

    let [jwks] = &jwks[..] else {
        panic!("one JWKS request line expected in the issuer's log, got {jwks:?}");
    };
    let fresh = jwks["span"]["trace_id"].as_str().unwrap_or_default();
    assert!(is_hex(fresh, 32) && fresh != trace, "{jwks}");
    assert_eq!(jwks["span"]["parent_id"], "", "{jwks}");

    let [b3] = &b3[..] else {
        panic!("one discovery request line expected in the issuer's log, got {b3:?}");
    };
    assert_eq!(b3["span"]["trace_id"], b3_trace, "{b3}");
    assert_eq!(b3["span"]["parent_id"], b3_span, "{b3}");
    stack.shutdown().await;
}

// --- traces over OTLP --------------------------------------------------------------------------

/// A small OTLP/HTTP receiver: keeps every span posted to `/v1/traces` (JSON encoding).
async fn otlp_receiver() -> (
    weauth_tests::serve::ServerHandle,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
) {
    use http_body_util::Full;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let kept = spans.clone();
    let server = weauth_tests::serve::ServerHandle::start(
        ([127, 0, 0, 1], 0).into(),
        move |req: weauth_tests::serve::Request| {
            let kept = kept.clone();
            async move {
                let path_ok = req.uri().path() == "/v1/traces";
                let body = weauth_tests::serve::read_body(req.into_body()).await;
                let parsed: Value = body
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null);
                let batch: Vec<Value> = parsed["resourceSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
                    .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
                    .collect();
                let status = if path_ok && !batch.is_empty() {
                    200
                } else {
                    400
                };
                kept.lock().unwrap().extend(batch);
                let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from_static(b"{}")));
                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                resp
            }
        },
    )
    .await
    .unwrap();
    (server, spans)
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// An issuer (no Envoy) exporting its traces to `receiver`.
async fn traced_issuer(receiver: &weauth_tests::serve::ServerHandle) -> Stack {
    Stack::builder()
        .without_envoy()
        .issuer_env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.addr()),
        )
        .start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the issuer: {e}"))
}

/// `POST /v1/login` with `code` under the `traceparent` `header`: the status.
async fn traced_login(stack: &Stack, code: &str, header: String) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/v1/login", stack.issuer_url()))
        .header("traceparent", header)
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn otlp_spans_join_the_callers_trace() {
    let (receiver, spans) = otlp_receiver().await;
    let stack = traced_issuer(&receiver).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    // A trace the caller did not sample (flags 00: the mesh's 99 %) is not exported: sent
    // first, its spans would be in the batches that bring the sampled ones below.
    let unsampled = "2af7651916cd43dd8448eb211c80319c";
    let code = stack.mock.login("unsampled").code;
    let header = format!("00-{unsampled}-{caller}-00");
    assert_eq!(traced_login(&stack, &code, header).await, 200);
    let code = stack.mock.login("traced").code;
    let header = format!("00-{trace}-{caller}-01");
    assert_eq!(traced_login(&stack, &code, header).await, 200);
    // A code WeChat refuses (40029): the WeChat span says so, and never carries the code.
    let bad_code = "no-such-code-4711";
    let bad_trace = "1af7651916cd43dd8448eb211c80319c";
    let header = format!("00-{bad_trace}-{caller}-01");
    assert_eq!(traced_login(&stack, bad_code, header).await, 400);

    // Exported in batches every second.
    let deadline = Instant::now() + Duration::from_secs(20);
    let of_trace = |t: &str| -> Vec<Value> {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["traceId"] == t)
            .cloned()
            .collect()
    };
    let (good, bad) = loop {
        let (good, bad) = (of_trace(trace), of_trace(bad_trace));
        let done = |v: &[Value]| {
            ["request", "wechat", "store"]
                .iter()
                .all(|n| v.iter().any(|s| s["name"] == *n))
        };
        if (done(&good) && bad.iter().any(|s| s["name"] == "wechat")) || Instant::now() > deadline {
            break (good, bad);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let named = |v: &[Value], n: &str| -> Vec<Value> {
        v.iter().filter(|s| s["name"] == n).cloned().collect()
    };
    let request = named(&good, "request");
    let [request] = &request[..] else {
        panic!("one request span expected in trace {trace}: {good:#?}");
    };
    assert_eq!(request["parentSpanId"], caller, "{request}");
    assert_eq!(request["kind"], 2, "SERVER: {request}");
    assert_eq!(
        attr(request, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    let request_id = request["spanId"].as_str().unwrap();
    let wechat = named(&good, "wechat");
    assert!(!wechat.is_empty(), "no wechat span: {good:#?}");
    for span in &wechat {
        assert_eq!(span["parentSpanId"], request_id, "{span}");
        assert_eq!(attr(span, "api").unwrap()["stringValue"], "jscode2session");
        assert_eq!(attr(span, "outcome").unwrap()["stringValue"], "ok");
    }
    let store = named(&good, "store");
    assert!(!store.is_empty(), "no store span: {good:#?}");
    for span in &store {
        assert_eq!(span["parentSpanId"], request_id, "{span}");
        assert!(attr(span, "op").is_some(), "{span}");
    }

    let refused = named(&bad, "wechat");
    assert!(
        !refused.is_empty(),
        "no wechat span for the refused code: {bad:#?}"
    );
    assert_eq!(
        attr(&refused[0], "errcode").unwrap()["stringValue"],
        "40029"
    );
    assert_eq!(refused[0]["status"]["code"], 2, "ERROR: {}", refused[0]);
    assert_eq!(
        of_trace(unsampled),
        Vec::<Value>::new(),
        "an unsampled trace was exported"
    );
    let everything = serde_json::to_string(&*spans.lock().unwrap()).unwrap();
    assert!(!everything.contains(bad_code), "a login code was exported");
    assert!(!everything.contains(&code), "a login code was exported");
    // What the collector accepted is counted (every post here was answered 200), once its
    // answer is back: read until it shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = reqwest::get(format!("{}/metrics", stack.issuer_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let exported: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weauth_otlp_spans_total{outcome=\"exported\"} "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exported count: {metrics}"));
        if exported >= 3 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("weauth_otlp_spans_total{outcome=\"export_failed\"} 0"),
        "{metrics}"
    );
    stack.shutdown().await;
    receiver.shutdown().await;
}

/// The spans of a stopping issuer's last moment are posted before it exits: the exporter is
/// told to flush after the drain (they were lost — the export task died with the runtime,
/// batches go out once a second).
#[tokio::test]
async fn otlp_spans_of_the_last_moment_are_posted_at_shutdown() {
    let (receiver, spans) = otlp_receiver().await;
    let stack = traced_issuer(&receiver).await;
    let trace = "3af7651916cd43dd8448eb211c80319c";
    let code = stack.mock.login("last-moment").code;
    let header = format!("00-{trace}-b7ad6b7169203331-01");
    assert_eq!(traced_login(&stack, &code, header).await, 200);
    stack.shutdown().await;
    let exported = spans
        .lock()
        .unwrap()
        .iter()
        .any(|s| s["traceId"] == trace && s["name"] == "request");
    assert!(exported, "the last login's spans were lost at shutdown");
    receiver.shutdown().await;
}
