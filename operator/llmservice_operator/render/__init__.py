"""Pure, deterministic rendering: (LLMService, operator settings) -> desired objects.

No network, no kopf, no clock: the same input gives byte-identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.resource import LLMService
from ..settings import OperatorSettings
from . import edge, network, nodepools, policy, rayservice


@dataclass(frozen=True)
class Rendered:
    ray_service: dict[str, Any]
    edge_config: dict[str, Any] | None
    pdb: dict[str, Any] | None
    monitoring: dict[str, Any] | None
    network_policy: dict[str, Any] | None = None
    edge_peers: dict[str, Any] | None = None  # the headless Service sidecars find each other by
    node_pools: list[dict[str, Any]] = field(default_factory=list)
    workload_policies: list[dict[str, Any]] = field(default_factory=list)  # Compute resource policies
    managed_pools: bool = False  # spec.nodePool.managed: the pools above are the operator's to keep

    def kubernetes_objects(self) -> list[dict[str, Any]]:
        """In apply order: the fence and the edge config exist before the pods."""
        objs = [self.network_policy, self.edge_config, self.edge_peers, self.ray_service, self.pdb, self.monitoring]
        return [o for o in objs if o is not None]


def render(svc: LLMService, settings: OperatorSettings | None = None) -> Rendered:
    settings = settings or OperatorSettings()
    return Rendered(
        ray_service=rayservice.ray_service(svc, settings),
        edge_config=edge.config_map(svc) if svc.spec.ingress.sidecar else None,
        pdb=policy.pod_disruption_budget(svc),
        monitoring=policy.monitoring(svc, settings),
        network_policy=network.network_policy(svc, settings),
        edge_peers=edge.peers_service(svc, rayservice.head_in_service(svc.spec)),
        node_pools=nodepools.node_pools(svc) if svc.spec.node_pool.managed else [],
        workload_policies=nodepools.workload_policies(svc) if svc.spec.node_pool.managed else [],
        managed_pools=svc.spec.node_pool.managed,
    )


__all__ = ["Rendered", "render"]
