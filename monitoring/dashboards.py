"""Grafana dashboards for llmservice-operator, built with grafana-foundation-sdk.

    python -m monitoring.dashboards           # write charts/llmservice-operator/dashboards/*.json
    python -m monitoring.dashboards --check   # exit 1 when the files differ from what this builds

Three dashboards: the operator (leadership, reconciles, errors, durations, phases), the
serving path of one LLMService (Ray Serve requests, latency and errors; vLLM time to first
token, inter-token latency, tokens/s, KV cache and queues, per replica) and its edge sidecars
(per-client requests, refusals by reason, latency). The chart ships the JSON files as
ConfigMaps for Grafana's sidecar. Every metric a panel queries is one the local cluster's
Prometheus scrapes from real pods (e2e/tests/test_metrics.py).

Labels: the operator's per-service series carry `llmservice_namespace` and `llmservice`;
series scraped from a service's pods carry `namespace` and `llmservice` (the operator's
PodMonitoring/PodMonitor copies the pod label llmservice.dev/name).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "charts" / "llmservice-operator" / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
POD = 'namespace="$namespace", llmservice="$llmservice"'  # one service's pods


def _query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref)


def _rate(metric: str, selector: str = "") -> str:
    return f"rate({metric}{{{selector}}}[{RATE}])"


def _series(title: str, unit: str, *queries: tuple[str, str], width: int = 12, desc: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DS).height(8).span(width).description(desc)
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + i)))
    return panel


def _stat(title: str, expr: str, desc: str = "") -> stat.Panel:
    panel = stat.Panel().title(title).unit("none").datasource(DS).height(4).span(6).description(desc)
    return panel.with_target(_query(expr))


def _table(title: str, *exprs: str) -> table.Panel:
    panel = table.Panel().title(title).datasource(DS).height(8).span(24)
    for i, expr in enumerate(exprs):
        panel = panel.with_target(_query(expr, ref=chr(ord("A") + i)).format(PromQueryFormat.TABLE).instant())
    return panel


def _quantiles(metric: str, selector: str, by: str = "") -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, per `by` (labels followed by a comma) or overall."""
    rate = _rate(f"{metric}_bucket", selector)
    return [(f"histogram_quantile({q}, sum by ({by}le) ({rate}))", f"p{p}") for q, p in ((0.5, "50"), (0.99, "99"))]


def _base(title: str, uid: str, tags: list[str]) -> gd.Dashboard:
    datasource = gd.DatasourceVariable("datasource").label("Data source").type("prometheus")
    board = gd.Dashboard(title).uid(uid).tags(["llmservice", *tags]).refresh("30s").time("now-3h", "now")
    return board.timezone("browser").editable().with_variable(datasource)


def _per_service(title: str, uid: str, tags: list[str], metric: str) -> gd.Dashboard:
    """With $namespace and $llmservice, from the label values of `metric` (a series every
    service's pods export)."""
    refresh = VariableRefresh.ON_TIME_RANGE_CHANGED
    namespace = gd.QueryVariable("namespace").label("Namespace").datasource(DS)
    namespace = namespace.query(f"label_values({metric}, namespace)").refresh(refresh)
    service = gd.QueryVariable("llmservice").label("LLMService").datasource(DS)
    service = service.query(f'label_values({metric}{{namespace="$namespace"}}, llmservice)').refresh(refresh)
    return _base(title, uid, tags).with_variable(namespace).with_variable(service)


def operator() -> gd.Dashboard:
    svc = "llmservice_namespace, llmservice"
    board = _base("LLMService operator", "llmservice-operator", ["operator"]).with_row(gd.Row("Health"))
    for panel in (
        _stat("Replica leading", "max(llmservice_leader)", "1 when a replica works; 0 or none: nothing reconciles."),
        _stat("Services", "sum(max by (phase) (llmservice_services))"),
        _stat("Degraded", 'sum(max by (phase) (llmservice_services{phase="Degraded"}))'),
        _stat("Reconcile errors (1h)", 'sum(increase(llmservice_reconciles_total{outcome="error"}[1h]))'),
        _series("Services by phase", "none", ("max by (phase) (llmservice_services)", "{{phase}}")),
        _series("Leader by pod", "none", ("llmservice_leader", "{{pod}}"), desc="kopf peering: one replica works."),
    ):
        board = board.with_panel(panel)
    board = board.with_row(gd.Row("Reconciles"))

    def by(label: str, counter: str) -> tuple[str, str]:
        return f"sum by ({label}) ({_rate(counter)})", f"{{{{{label}}}}}"

    for panel in (
        _series("Reconciles / s by outcome", "ops", by("outcome", "llmservice_reconciles_total")),
        _series("Reconcile duration", "s", *_quantiles("llmservice_reconcile_duration_seconds", "")),
        _series("Child applies / s by kind", "ops", by("kind", "llmservice_child_applies_total")),
        _series(
            "Watch events / s by outcome", "ops", by("action", "llmservice_events_total"),
            desc="queued: a reconcile follows; own-write and status-only: none is needed.",
        ),
        _series("Work queue depth", "none", ("max by (queue) (llmservice_queue_depth)", "{{queue}}")),
    ):  # fmt: skip
        board = board.with_panel(panel)
    phases = f"max by ({svc}, phase) (llmservice_service_phase) == 1"
    replicas = f"max by ({svc}, state) (llmservice_service_replicas)"
    return board.with_row(gd.Row("Services")).with_panel(
        _table("Phase and replicas of each LLMService", phases, replicas)
    )


def serving() -> gd.Dashboard:
    board = _per_service("LLMService serving", "llmservice-serving", ["serving"], "ray_serve_num_http_requests_total")
    requests = _rate("ray_serve_num_http_requests_total", POD)
    errors = _rate("ray_serve_num_http_error_requests_total", POD)
    generated, prompt = _rate("ray_vllm_generation_tokens_total", POD), _rate("ray_vllm_prompt_tokens_total", POD)
    waiting, running = f"ray_vllm_num_requests_waiting{{{POD}}}", f"ray_vllm_num_requests_running{{{POD}}}"
    ttft = "ray_vllm_time_to_first_token_seconds"
    rows = {
        "Ray Serve": (
            _series("Requests / s by status", "reqps", (f"sum by (status_code) ({requests})", "{{status_code}}")),
            _series("Request latency", "ms", *_quantiles("ray_serve_http_request_latency_ms", POD)),
            _series("Errors / s by code", "reqps", (f"sum by (error_code) ({errors})", "{{error_code}}")),
            _series("Requests in flight", "none", (f"sum(ray_serve_num_ongoing_http_requests{{{POD}}})", "in flight")),
        ),
        "vLLM": (
            _series("Time to first token", "s", *_quantiles(ttft, POD)),
            _series("Inter-token latency", "s", *_quantiles("ray_vllm_inter_token_latency_seconds", POD)),
            _series("Tokens / s", "none", (f"sum({generated})", "generated"), (f"sum({prompt})", "prompt")),
            _series("Queue", "none", (f"sum({waiting})", "waiting"), (f"sum({running})", "running")),
        ),
        "Per replica (pod)": (
            _series(
                "KV cache used", "percentunit", (f"max by (pod) (ray_vllm_kv_cache_usage_perc{{{POD}}})", "{{pod}}")
            ),
            _series("Time to first token p99", "s", *_quantiles(ttft, POD, by="pod, ")[1:]),
            _series("Generated tokens / s", "none", (f"sum by (pod) ({generated})", "{{pod}}")),
            _series("Waiting requests", "none", (f"sum by (pod) ({waiting})", "{{pod}}")),
        ),
    }
    for row, panels in rows.items():
        board = board.with_row(gd.Row(row))
        for panel in panels:
            board = board.with_panel(panel)
    return board


def edge() -> gd.Dashboard:
    board = _per_service(
        "LLMService edge sidecar", "llmservice-edge", ["edge", "haproxy"], "haproxy_process_start_time_seconds"
    )
    fe, serve = f'proxy="edge", {POD}', f'proxy="ray_serve", {POD}'
    accepted = _rate("llmservice_edge_client_requests_total", f'outcome="accepted", {POD}')
    limited = _rate("llmservice_edge_client_requests_total", f'outcome="limited", {POD}')
    refused = _rate("haproxy_backend_http_responses_total", f'proxy=~"refused_.*", {POD}')
    rows = {
        "Clients": (
            _series(
                "Accepted requests / s per client", "reqps",
                (f"sum by (client) ({accepted})", "{{client}}"),
                desc="Per client name of the API key map (never the key), summed over the service's pods.",
            ),
            _series(
                "Rate-limited requests / s per client", "reqps",
                (f"sum by (client) ({limited})", "{{client}}"),
            ),
        ),
        "Responses": (
            _series("Requests / s", "reqps", (f"sum({_rate('haproxy_frontend_http_requests_total', fe)})", "requests")),
            _series(
                "Responses / s by class", "reqps",
                (f"sum by (code) ({_rate('haproxy_frontend_http_responses_total', fe)})", "{{code}}"),
            ),
            _series(
                "Refused / s by reason", "reqps", (f"sum by (proxy) ({refused})", "{{proxy}}"),
                desc="401: no or unknown API key; 411: no Content-Length; 413: body over maxBodySize; 429: rate limit.",
            ),
            _series("Connections", "none", (f"sum by (pod) (haproxy_frontend_current_sessions{{{fe}}})", "{{pod}}")),
        ),
        "Latency (HAProxy's average over its last 1024 requests)": (
            _series(
                "Time to response headers", "s",
                (f"max by (pod) (haproxy_backend_response_time_average_seconds{{{serve}}})", "{{pod}}"),
            ),
            _series(
                "Total time (streams included)", "s",
                (f"max by (pod) (haproxy_backend_total_time_average_seconds{{{serve}}})", "{{pod}}"),
            ),
        ),
    }  # fmt: skip
    for row, panels in rows.items():
        board = board.with_row(gd.Row(row))
        for panel in panels:
            board = board.with_panel(panel)
    return board


DASHBOARDS: dict[str, Callable[[], gd.Dashboard]] = {"operator": operator, "serving": serving, "edge": edge}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name]().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def queries(name: str) -> list[str]:
    """Every PromQL expression of a dashboard (panels and variables)."""
    built = json.loads(render(name))
    exprs = [t["expr"] for p in built.get("panels", []) for t in p.get("targets", []) if t.get("expr")]
    for v in built.get("templating", {}).get("list", []):
        query = v.get("query")
        if v.get("type") == "query" and isinstance(query, str):
            exprs.append(query)
    return exprs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the files differ from what this builds")
    args = parser.parse_args()
    stale = []
    for name in DASHBOARDS:
        path, text = OUT / f"{name}.json", render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        sys.exit(f"out of date (run `make dashboards`): {', '.join(stale)}")


if __name__ == "__main__":
    main()
