"""The NetworkPolicy that fences a service's Ray pods: only what must reach each port does.

Without it the head's dashboard (job submission: code execution on the GPU nodes), GCS and
Ray client ports are open to every pod in the cluster. Ray token authentication
(spec.ray.auth) refuses unauthenticated calls; the policy keeps them from arriving at all.
Egress is not restricted (model downloads, Redis, object storage).
"""

from __future__ import annotations

from typing import Any

from .. import labels as keys
from ..settings import OperatorSettings
from . import edge, names
from .plan import Plan
from .policy import metrics_endpoints


def _ports(*port_names: str) -> list[dict[str, Any]]:
    # Named ports: each pod resolves them to its own containers' ports.
    return [{"port": n, "protocol": "TCP"} for n in port_names]


def network_policy(p: Plan, settings: OperatorSettings, live: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """`live`: the ports the running Ray clusters serve on. When the sidecar is switched, the
    old cluster keeps serving on the other port until its pods are gone, so the policy keeps
    that port open as long (the old cluster was open there already; the Service targets the
    new port on the new pods)."""
    svc = p.svc
    if not svc.spec.ray.network_policy:
        return None
    name = p.name
    own = {"podSelector": {"matchLabels": {keys.OWNER: name}}}  # also the pods the policy applies to
    serving = sorted({edge.serving_port(p.spec), *live})
    metrics = list(dict.fromkeys(e["port"] for e in metrics_endpoints(svc)))  # the ports PodMonitoring scrapes
    kuberay = {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(settings.kuberay_operator_labels)}}
    operator = {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(settings.operator_pod_labels)}}
    scrapers = {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(settings.metrics_namespaces)}
            ]
        }
    }
    ingress: list[dict[str, Any]] = [
        # Requests, from wherever the Service is reachable (the sidecar checks API keys).
        {"ports": _ports(*serving)},
        # Ray's own traffic between the service's pods: GCS, raylets, object transfer, workers.
        {"from": [own]},
        # KubeRay deploys and watches the Serve app through the dashboard and health-checks
        # each pod's Serve proxy.
        {"from": [kuberay], "ports": _ports("dashboard", "serve")},
        # This operator reads why a replica failed to start from the dashboard's log API.
        {"from": [operator], "ports": _ports("dashboard")},
    ]
    if svc.spec.observability.metrics and settings.metrics_namespaces:
        ingress.append({"from": [scrapers], "ports": _ports(*metrics)})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": p.names.network_policy, "namespace": p.namespace, "labels": names.labels(name)},
        # The node a pod runs on (kubelet probes) is always let in by NetworkPolicy's rules.
        "spec": {**own, "policyTypes": ["Ingress"], "ingress": ingress},
    }
