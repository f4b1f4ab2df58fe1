"""GKE node pools per worker group, as dicts that map 1:1 onto google.cloud.container_v1.NodePool.

Pools are named and labelled so the operator only ever touches pools it created.
"""

from __future__ import annotations

from typing import Any

from ..api.resource import LLMService
from ..catalog import boot_disk_type
from . import names
from .shape import WorkerBounds, worker_bounds

OWNER_LABEL = "llmservice-dev-owner"  # GCE label keys allow no dots or slashes
OWNER_NS_LABEL = "llmservice-dev-namespace"
POOL_NAME_LIMIT = 40  # GKE node pool names: at most 40 characters


def _taint(key: str) -> dict[str, Any]:
    return {"key": key, "value": "present", "effect": "NO_SCHEDULE"}


def _pool(svc: LLMService, wb: WorkerBounds, suffix: str, spot: bool) -> dict[str, Any]:
    spec = svc.spec
    sh = wb.shape
    acc = sh.accelerator
    # Node pool names are cluster-wide: the namespace keeps same-named services apart.
    base = f"{svc.metadata.namespace}-{svc.metadata.name}"
    name = names.child(base, wb.role if wb.role in ("prefill", "decode") else "", suffix, limit=POOL_NAME_LIMIT)
    node_labels = {
        OWNER_LABEL: svc.metadata.name,
        OWNER_NS_LABEL: svc.metadata.namespace,
        **spec.node_pool.labels,
    }
    config: dict[str, Any] = {
        "machine_type": sh.machine_type,
        "disk_size_gb": spec.node_pool.disk_size_gb,
        "disk_type": spec.node_pool.disk_type or boot_disk_type(sh.machine_type),
        "labels": dict(sorted(node_labels.items())),
        "resource_labels": {OWNER_LABEL: svc.metadata.name, OWNER_NS_LABEL: svc.metadata.namespace},
    }
    if acc.taint_key:  # CPU pools: no taint, the head and workers select them by machine type
        config["taints"] = [_taint(acc.taint_key)]
    if acc.is_gpu:
        config["accelerators"] = [
            {
                "accelerator_count": acc.node_size_for(sh.per_pod),
                "accelerator_type": acc.gke_label,
                "gpu_driver_installation_config": {"gpu_driver_version": "LATEST"},
            }
        ]
    if spec.node_pool.service_account:
        config["service_account"] = spec.node_pool.service_account
    provisioning = spec.accelerator.provisioning
    if spot:
        config["spot"] = True
    if provisioning == "flex-start":
        config["flex_start"] = True
    if provisioning == "reservation":
        config["reservation_affinity"] = {
            "consume_reservation_type": "SPECIFIC_RESERVATION",
            "key": "compute.googleapis.com/reservation-name",
            "values": [spec.accelerator.reservation],
        }
    pool: dict[str, Any] = {"name": name, "config": config, "initial_node_count": 0}
    if spec.placement.zones:
        pool["locations"] = list(spec.placement.zones)
    # Multi-host TPU slices are atomic: a pool is one slice and scales 0 <-> hosts.
    if sh.tpu:
        pool["placement_policy"] = {"type_": "COMPACT", "tpu_topology": sh.tpu.topology} if sh.tpu.multi_host else {}
        if sh.tpu.multi_host and acc.multihost_needs_workload_policy:
            pool["placement_policy"]["policy_name"] = names.child(svc.metadata.name, "slice", limit=POOL_NAME_LIMIT)
        if not pool["placement_policy"]:
            del pool["placement_policy"]
    elif spec.placement.compact:
        pool["placement_policy"] = {"type_": "COMPACT"}
    if provisioning == "flex-start":
        pool["queued_provisioning"] = {"enabled": False}
    max_nodes = wb.shape.num_of_hosts if sh.tpu and sh.tpu.multi_host else wb.max_nodes
    if acc.is_cpu:
        max_nodes += 1  # the head is on this pool too (same machine type) and may need a node of its own
    pool["autoscaling"] = {
        "enabled": True,
        # Spot capacity comes and goes and slices are atomic: no floor there.
        "total_min_node_count": 0
        if spot or provisioning == "spot-with-fallback" or (sh.tpu and sh.tpu.multi_host)
        else wb.min_nodes,
        "total_max_node_count": max_nodes,
        "location_policy": "ANY",
    }
    return pool


def node_pools(svc: LLMService) -> list[dict[str, Any]]:
    """One pool per worker group (two for spot-with-fallback); a multi-host TPU service gets
    one pool per slice, because GKE sizes a multi-host slice pool as a whole."""
    pools: list[dict[str, Any]] = []
    provisioning = svc.spec.accelerator.provisioning
    for wb in worker_bounds(svc.spec):
        sh = wb.shape
        if sh.tpu and sh.tpu.multi_host:
            pools += [_pool(svc, wb, f"slice{i}", False) for i in range(wb.replicas.max)]
        elif provisioning == "spot-with-fallback":
            pools += [_pool(svc, wb, "spot", True), _pool(svc, wb, "ondemand", False)]
        else:
            pools.append(_pool(svc, wb, "", provisioning == "spot"))
    return pools
