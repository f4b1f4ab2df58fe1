"""What ships for watching llmservice-operator and its services: Grafana dashboards (built
here with grafana-foundation-sdk, written into the chart) and the metric names the
dashboards and the chart's alerts query."""

from __future__ import annotations

from pathlib import Path

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "charts" / "llmservice-operator" / "files" / "alerts.yaml"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (by name or by __name__="...")."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            found.update(m.value for m in node.matchers.matchers if m.name == "__name__")
            return
        for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if child is not None:
                walk(child)
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(promql_parser.parse(expr))
    return found


def alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def queried_metrics() -> set[str]:
    """Every metric name a shipped dashboard or alert queries."""
    from .dashboards import DASHBOARDS, queries

    exprs = alert_exprs() + [q for name in DASHBOARDS for q in queries(name)]
    return set().union(*(metric_names(_promql(e)) for e in exprs))


def _promql(expr: str) -> str:
    """A dashboard query as plain PromQL: Grafana's variables replaced by sample values."""
    if expr.startswith("label_values("):  # label_values(<selector>, <label>)
        expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
    return expr.replace("$__rate_interval", "5m").replace("$namespace", "ns").replace("$llmservice", "svc")
