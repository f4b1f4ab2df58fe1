"""`llmservice run`: the operator process (kopf) with metrics and health endpoints."""

from __future__ import annotations

import logging

import kopf
from prometheus_client import start_http_server

from ..gke import NodePools, cluster_manager, compute
from ..settings import OperatorSettings
from . import handlers
from .kube import Kube
from .reconcile import Reconciler


def run(
    settings: OperatorSettings,
    *,
    namespaces: list[str],
    peering: str | None,
    priority: int,
    health_address: str,
    metrics_address: str,
    json_logs: bool,
    verbose: bool,
) -> None:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    gke = settings.gke
    pools = NodePools(cluster_manager(gke), gke, compute=compute(gke)) if gke else None
    handlers.install(Reconciler(Kube(), settings, pools))
    host, _, port = metrics_address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0")
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
        liveness_endpoint=f"http://{health_address}/healthz",
    )
