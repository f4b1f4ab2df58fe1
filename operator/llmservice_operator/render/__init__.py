"""Pure, deterministic rendering: (LLMService, operator settings, what the cluster holds that the
children name) -> desired objects.

No network, no kopf, no clock: the same input gives byte-identical output. The inputs from the
cluster (the owner's uid, the versions of the Secrets the edge sidecar reads) come in as data,
so nothing is changed after rendering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api.resource import LLMService
from ..settings import OperatorSettings
from . import children as ck
from . import edge, network, nodepools, policy, rayservice
from .children import Child
from .plan import ChildNames, Plan, plan


@dataclass(frozen=True)
class Inputs:
    """What the rendered children name from the cluster: the LLMService as an owner
    (ownerReferences), the versions of the Secrets the edge sidecar reads, and the ports the
    live Ray clusters serve requests on (`edge` or `serve`: during a switch of the sidecar the
    old cluster serves on the other one until its pods are gone)."""

    owner: Mapping[str, Any] | None = None
    secret_versions: Mapping[str, str | None] = field(default_factory=dict)
    serving_ports: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rendered:
    plan: Plan
    children: tuple[Child, ...]  # every slot, in apply order: the fence and edge config before the pods
    node_pools: list[dict[str, Any]] = field(default_factory=list)
    workload_policies: list[dict[str, Any]] = field(default_factory=list)  # Compute resource policies

    @property
    def managed_pools(self) -> bool:
        """spec.nodePool.managed: the pools above are the operator's to keep."""
        return self.plan.spec.node_pool.managed

    def _obj(self, kind: ck.ChildKind) -> dict[str, Any] | None:
        return next((c.obj for c in self.children if c.kind == kind and c.obj is not None), None)

    @property
    def ray_service(self) -> dict[str, Any]:
        obj = self._obj(ck.RAY_SERVICE)
        assert obj is not None
        return obj

    @property
    def wanted_ray_service(self) -> dict[str, Any] | None:
        """The RayService, or None while the service is suspended (it is deleted)."""
        return self._obj(ck.RAY_SERVICE)

    @property
    def edge_config(self) -> dict[str, Any] | None:
        return self._obj(ck.CONFIG_MAP)

    @property
    def edge_peers(self) -> dict[str, Any] | None:
        return self._obj(ck.SERVICE)

    @property
    def network_policy(self) -> dict[str, Any] | None:
        return self._obj(ck.NETWORK_POLICY)

    @property
    def pdb(self) -> dict[str, Any] | None:
        return self._obj(ck.PDB)

    @property
    def monitoring(self) -> dict[str, Any] | None:
        return self._obj(ck.POD_MONITORING) or self._obj(ck.POD_MONITOR)

    def kubernetes_objects(self) -> list[dict[str, Any]]:
        """The children wanted now, in apply order."""
        return [c.obj for c in self.children if c.obj is not None]


def slot_kinds(n: ChildNames) -> list[tuple[ck.ChildKind, str]]:
    """Every child a service can have, (kind, name), in apply order: the fence and the edge
    config exist before the pods. Both scraping kinds have a slot, so a change of the
    operator's monitoring setting deletes the other one."""
    return [
        (ck.NETWORK_POLICY, n.network_policy),
        (ck.CONFIG_MAP, n.edge_config),
        (ck.SERVICE, n.edge_peers),
        (ck.RAY_SERVICE, n.ray_service),
        (ck.PDB, n.pdb),
        *((k, n.monitoring) for k in ck.MONITORING),
    ]


def _slots(p: Plan, settings: OperatorSettings, inputs: Inputs) -> list[Child]:
    scraping = policy.monitoring(p, settings)
    wanted = {
        ck.NETWORK_POLICY: network.network_policy(p, settings, inputs.serving_ports),
        ck.CONFIG_MAP: edge.config_map(p) if p.spec.ingress.sidecar else None,
        ck.SERVICE: edge.peers_service(p),
        # Suspended: no RayService, so the Ray cluster goes with it. (KubeRay 1.6.1's RayService
        # has no spec.suspend, and with its RayCluster spec suspended it never resumed on the
        # real node: "found 0 head" on every reconcile.)
        ck.RAY_SERVICE: None if p.spec.suspend else rayservice.ray_service(p, settings),
        ck.PDB: policy.pod_disruption_budget(p),
        **{k: scraping if scraping and scraping["kind"] == k.kind else None for k in ck.MONITORING},
    }
    return [Child(kind, name, wanted[kind]) for kind, name in slot_kinds(p.names)]


def render(svc: LLMService, settings: OperatorSettings | None = None, inputs: Inputs | None = None) -> Rendered:
    settings = settings or OperatorSettings()
    inputs = inputs or Inputs()
    p = plan(svc)
    slots = _slots(p, settings, inputs)
    for child in slots:
        if child.obj is None:
            continue
        if inputs.owner is not None:
            child.obj["metadata"]["ownerReferences"] = [dict(inputs.owner)]
        if child.kind == ck.CONFIG_MAP and inputs.secret_versions:
            edge.name_inputs(child.obj, dict(inputs.secret_versions))
    managed = svc.spec.node_pool.managed
    return Rendered(
        plan=p,
        children=tuple(slots),
        node_pools=nodepools.node_pools(p) if managed else [],
        workload_policies=nodepools.workload_policies(p) if managed else [],
    )


__all__ = ["Inputs", "Rendered", "render", "slot_kinds"]
