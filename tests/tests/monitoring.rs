//! `deploy/monitoring/`: the alert rules' shape (every alert has a severity, a summary, a
//! description and a runbook section in docs/RUNBOOK.md, and is exercised by
//! `alerts_test.yaml`), the PrometheusRule carrying the same groups, and the Grafana dashboard
//! against a real Prometheus scraping the test stack.
//!
//! What the rules evaluate to is `promtool test rules` (`make monitoring-check`); these tests
//! check what promtool does not.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use weauth_tests::harness::workspace_root;

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
