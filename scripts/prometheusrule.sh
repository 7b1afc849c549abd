#!/usr/bin/env bash
# Prints deploy/monitoring/alerts.yaml (or $1) as a Prometheus Operator PrometheusRule: the same
# groups, indented under `spec:`. `make monitoring-rules` writes deploy/monitoring/prometheusrule.yaml
# with it; `make monitoring-check` fails when the committed file differs, so the two cannot drift.
set -euo pipefail
src=${1:-deploy/monitoring/alerts.yaml}
cat <<'HEAD'
# GENERATED from deploy/monitoring/alerts.yaml by scripts/prometheusrule.sh (`make
# monitoring-rules`): edit alerts.yaml, then regenerate. `make monitoring-check` compares them.
# docs/RUNBOOK.md explains each alert. Apply where the Prometheus Operator runs; set the label
# its `ruleSelector` matches (kube-prometheus-stack selects `release: <its release name>`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: weauth
  namespace: weauth
  labels:
    app.kubernetes.io/name: weauth
    release: prometheus
spec:
HEAD
# From `groups:` on, every non-empty line two spaces deeper.
sed -n '/^groups:/,$p' "$src" | sed 's/^\(.\)/  \1/'
