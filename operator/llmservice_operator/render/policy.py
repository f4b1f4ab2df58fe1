"""Objects around the Ray cluster: PodDisruptionBudget and Prometheus scraping."""

from __future__ import annotations

from typing import Any

from .. import labels as keys
from ..api.resource import LLMService
from ..settings import OperatorSettings
from . import edge, names
from .plan import Plan


def _meta(p: Plan, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": p.namespace, "labels": names.labels(p.name)}


def pod_disruption_budget(p: Plan) -> dict[str, Any] | None:
    """Voluntary evictions (node upgrades, drains) never take the workers below the pods that
    `replicas.min` needs: a lost pod is a lost model replica, minutes to reload. An integer
    minAvailable, because the pods' owner (a RayCluster) has no scale subresource, which
    maxUnavailable and percentages need."""
    floor = p.min_worker_pods
    if floor == 0:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(p, p.names.pdb),
        "spec": {
            "minAvailable": floor,
            "selector": {"matchLabels": {keys.OWNER: p.name, keys.RAY_NODE_TYPE: "worker"}},
        },
    }


def metrics_endpoints(svc: LLMService) -> list[dict[str, Any]]:
    eps = [{"port": "metrics", "path": "/metrics"}]  # Ray + vLLM metrics on the Ray container
    if svc.spec.ingress.sidecar:
        eps.append({"port": "edge-metrics", "path": "/metrics"})  # HAProxy's own
    if edge.counts_clients(svc):
        eps.append({"port": "edge-metrics", "path": "/metrics/clients"})  # per API client
    return eps


def monitoring(p: Plan, settings: OperatorSettings) -> dict[str, Any] | None:
    if not p.spec.observability.metrics or settings.monitoring == "none":
        return None
    selector = {"matchLabels": {keys.OWNER: p.name}}
    endpoints = [{"port": e["port"], "path": e["path"], "interval": "30s"} for e in metrics_endpoints(p.svc)]
    if settings.monitoring == "gmp":
        return {
            "apiVersion": "monitoring.googleapis.com/v1",
            "kind": "PodMonitoring",
            "metadata": _meta(p, p.names.monitoring),
            "spec": {
                "selector": selector,
                "endpoints": endpoints,
            },
        }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta(p, p.names.monitoring),
        "spec": {
            "selector": selector,
            "podMetricsEndpoints": endpoints,
        },
    }
