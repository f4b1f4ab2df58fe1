"""The kinds of object a service consists of: the one registry the renderer, the controller's
watches and cache, the deletion of children no longer wanted, and the chart's RBAC derive from.

A rendered service is a list of child *slots*: every child it could have, each with the object
wanted now or None. A slot whose object is None is deleted if it exists and this service owns
it, so a child that can disappear with the spec (the edge ConfigMap, the PDB, the scraping
object) is deleted by construction, not by a hand-kept list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChildKind:
    api_version: str
    kind: str
    plural: str
    watched: bool = True  # its watch events reach the controller and its cache (by our labels)
    status_read: bool = True  # a status-only change may change the outcome
    applied: bool = True  # the operator writes it (else KubeRay or the kubelet makes it)
    status_only: bool = False  # the cache keeps its status (and little else)

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


RAY_SERVICE = ChildKind("ray.io/v1", "RayService", "rayservices")
# KubeRay's, labelled like its RayService: its status counts the ready workers.
RAY_CLUSTER = ChildKind("ray.io/v1", "RayCluster", "rayclusters", applied=False, status_only=True)
NETWORK_POLICY = ChildKind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
CONFIG_MAP = ChildKind("v1", "ConfigMap", "configmaps")
# The edge peers Service (ours) and the serve Service (KubeRay's, whose exposure we patch).
SERVICE = ChildKind("v1", "Service", "services")
# The disruption controller rewrites a PDB's status as pods come and go: nothing reads it.
PDB = ChildKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", status_read=False)
# Scraping objects: their CRDs may be absent (no GMP, no Prometheus operator), so not watched.
POD_MONITORING = ChildKind("monitoring.googleapis.com/v1", "PodMonitoring", "podmonitorings", watched=False)
POD_MONITOR = ChildKind("monitoring.coreos.com/v1", "PodMonitor", "podmonitors", watched=False)
# The Ray pods KubeRay makes from our templates (they carry our labels): their scheduling,
# readiness and mounts explain a service that does not serve yet.
POD = ChildKind("v1", "Pod", "pods", applied=False)
# The Ray token: created once, never rewritten, never watched (the operator lists no Secrets).
SECRET = ChildKind("v1", "Secret", "secrets", watched=False)

KINDS = (RAY_SERVICE, RAY_CLUSTER, NETWORK_POLICY, CONFIG_MAP, SERVICE, PDB, POD_MONITORING, POD_MONITOR, POD, SECRET)
WATCHED = tuple(k for k in KINDS if k.watched)
MONITORING = (POD_MONITORING, POD_MONITOR)


@dataclass(frozen=True)
class Child:
    """One slot of a rendered service: `obj` is what is wanted now, None for a child that is
    not (deleted if it exists and is this service's)."""

    kind: ChildKind
    name: str
    obj: dict[str, Any] | None

    @property
    def key(self) -> tuple[str, str]:
        return self.kind.kind, self.name
