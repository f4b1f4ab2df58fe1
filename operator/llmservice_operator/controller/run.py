"""`llmservice run`: the operator process (kopf) with metrics and health endpoints."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any, cast

import kopf

from ..gke import NodePools, cluster_manager, compute
from ..settings import OperatorSettings
from . import endpoints, metrics
from .cache import Cache, CachedKube
from .handlers import Controller
from .kube import Kube
from .leader import Leadership
from .reconcile import Reconciler
from .rootcause import RootCauses


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
    pools = (
        NodePools(cluster_manager(gke), gke, compute=compute(gke), poll_seconds=settings.gke_poll_seconds)
        if gke
        else None
    )
    cache = Cache()
    kube = CachedKube(Kube(), cache)
    # kopf's own rule for "another replica leads" is applied to the queue too (leader.py).
    identity = os.environ.get("POD_ID") or f"{socket.gethostname()}/{uuid.uuid4().hex[:8]}"
    leadership = None
    if peering is not None:
        readers = [_peering_reader(kube, peering, ns) for ns in ([*namespaces] if namespaces else [None])]
        leadership = Leadership(lambda: _merged(readers), identity, priority)
    else:
        metrics.LEADER.set(1)  # standalone: this process does the work
    controller = Controller(Reconciler(kube, settings, pools, RootCauses(kube)), cache, leadership)
    endpoints.serve(metrics_address, lambda: _not_ready(controller))
    kopf.run(
        registry=controller.registry(),
        memo=kopf.Memo(controller=controller),
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
        identity=cast(Any, identity),  # kopf's Identity: a str NewType it does not export
        liveness_endpoint=f"http://{health_address}/healthz",
    )


def _not_ready(controller: Controller) -> str | None:
    if not controller.started:
        return "the operator is starting"
    leadership = controller.leadership
    if leadership is not None and not leadership.registered():
        return "not in the peering yet (it could not take over)"
    return None


def _peering_reader(kube: Kube, name: str, namespace: str | None) -> Callable[[], dict[str, Any] | None]:
    kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
    return lambda: kube.get("kopf.dev/v1", kind, namespace or "", name)


def _merged(readers: list[Callable[[], dict[str, Any] | None]]) -> dict[str, Any]:
    """kopf pauses the whole operator while any of its peerings (one per namespace) has a
    leader other than this replica: one status with every peer of every peering."""
    status: dict[str, Any] = {}
    for read in readers:
        status.update(((read() or {}).get("status")) or {})
    return {"status": status}
