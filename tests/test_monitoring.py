"""The dashboards and alerts the chart ships: generated files up to date, every query valid
PromQL, the alerts checked and unit-tested by promtool (built from Go modules), and the chart
wrapping them as Grafana's sidecar and the two Prometheus flavours expect."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from e2e import bins
from monitoring import ALERTS, alert_exprs, dashboards, metric_names, queried_metrics

from .conftest import ROOT
from .test_chart import template

PROMTOOL = bins.load_versions()["prometheus"].bin_dir / "promtool"
needs_promtool = pytest.mark.skipif(not PROMTOOL.exists(), reason="promtool is built by `make e2e-bins`")


def test_the_dashboard_files_are_what_the_generator_builds():
    for name in dashboards.DASHBOARDS:
        path = dashboards.OUT / f"{name}.json"
        assert path.read_text() == dashboards.render(name), f"{path} is stale: run `make dashboards`"


def test_every_panel_has_a_query_and_every_query_parses():
    for name in dashboards.DASHBOARDS:
        built = json.loads(dashboards.render(name))
        panels = [p for p in built["panels"] if p["type"] != "row"]
        assert panels and all(p.get("targets") for p in panels), name
        assert {v["name"] for v in built["templating"]["list"]} >= {"datasource"}
        for expr in dashboards.queries(name):
            assert metric_names(expr.replace("$__rate_interval", "5m") if "label_values" not in expr else "up"), expr
    assert "llmservice_edge_client_requests_total" in queried_metrics()


def test_metric_names_are_read_from_the_query_tree():
    expr = 'sum by (le) (rate(a_bucket{x="1"}[5m])) / on() group_left b or absent({__name__="c"}) > bool 0'
    assert metric_names(expr) == {"a_bucket", "b", "c"}


@needs_promtool
def test_promtool_checks_the_alerts():
    res = subprocess.run([str(PROMTOOL), "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in res.stdout


@needs_promtool
def test_promtool_unit_tests_every_alert():
    tests = ROOT / "tests" / "promtool" / "alerts_test.yaml"
    res = subprocess.run([str(PROMTOOL), "test", "rules", str(tests)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    tested = {t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"] for t in case["alert_rule_test"]}
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert tested == alerts, "every alert has a unit test"


@needs_promtool
def test_promtool_tests_can_fail():
    """A case expecting the wrong labels fails: the suite above is not vacuous."""
    case = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": 'llmservice_leader{pod="a"}', "values": "1x10"}],
            "alert_rule_test": [{"eval_time": "8m", "alertname": "LLMServiceOperatorDown", "exp_alerts": [{}]}],
        }],
    }  # fmt: skip
    res = subprocess.run([str(PROMTOOL), "test", "rules", "/dev/stdin"], input=yaml.safe_dump(case),
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode != 0


def test_the_chart_ships_the_dashboards_for_grafanas_sidecar():
    objs = template()
    maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap" and "dashboard" in o["metadata"]["name"]}
    assert set(maps) == {f"llmservice-operator-dashboard-{n}" for n in dashboards.DASHBOARDS}
    for name, cm in maps.items():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        [(key, text)] = cm["data"].items()
        assert json.loads(text) == json.loads(dashboards.render(key.removesuffix(".json"))), name
    assert not [o for o in template("dashboards.enabled=false") if "dashboard" in o["metadata"]["name"]]


@pytest.mark.parametrize(
    ("kind", "api"), [("PrometheusRule", "monitoring.coreos.com/v1"), ("Rules", "monitoring.googleapis.com/v1")]
)
def test_the_chart_ships_the_alerts_for_either_prometheus(kind, api):
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    objs = template(f"alerts.kind={kind}", "alerts.labels.release=kube-prometheus-stack")
    [rule] = [o for o in objs if o["kind"] == kind]
    assert rule["apiVersion"] == api and rule["spec"]["groups"] == groups
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not [o for o in template() if o["kind"] in ("PrometheusRule", "Rules")], "off by default"
