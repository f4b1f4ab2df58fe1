"""GKE node pools per worker group, as dicts that map 1:1 onto google.cloud.container_v1.NodePool,
and the Compute Engine workload policies some of them name (tpu7x multi-host slices).

Pools are named and labelled so the operator only ever touches pools it created. GKE cannot
change a pool's hardware in place, so a pool's name ends with a digest of the fields it
cannot update (HARDWARE): new hardware is a new pool beside the old one, which the operator
deletes once the new one runs. The `slot` label (the name without the digest) pairs the two.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .. import labels as keys
from ..api.resource import LLMService
from ..catalog import boot_disk_type
from ..catalog.labels import IMAGE_CACHE_MODE
from . import names
from .plan import Plan
from .shape import WorkerBounds

OWNER_LABEL = keys.POOL_OWNER
OWNER_NS_LABEL = keys.POOL_NAMESPACE
SLOT_LABEL = keys.POOL_SLOT
POOL_NAME_LIMIT = 40  # GKE node pool names: at most 40 characters
POLICY_NAME_LIMIT = 63  # Compute Engine resource names (RFC 1035)
# NodeConfig and NodePool fields GKE cannot update in place: a change needs a new pool.
HARDWARE_CONFIG: tuple[str, ...] = ("machine_type", "disk_size_gb", "disk_type", "accelerators", "spot", "flex_start")
HARDWARE_CONFIG += ("reservation_affinity", "service_account")
HARDWARE_POOL = ("placement_policy", "locations")
# Hardware fields added later: in the digest only when set, so that pools without them keep
# their names (a new digest would replace every existing pool when the operator is upgraded).
HARDWARE_CONFIG_IF_SET = ("secondary_boot_disks",)


def _taint(key: str) -> dict[str, Any]:
    return {"key": key, "value": "present", "effect": "NO_SCHEDULE"}


def _base(svc: LLMService) -> str:
    # Node pool names are cluster-wide and workload policies region-wide: the namespace keeps
    # same-named services apart.
    return f"{svc.metadata.namespace}-{svc.metadata.name}"


def workload_policy_name(svc: LLMService, topology: str) -> str:
    """One policy per service and slice topology (a policy's topology cannot change)."""
    return names.child(_base(svc), "slice", topology, limit=POLICY_NAME_LIMIT)


def hardware_digest(pool: dict[str, Any]) -> str:
    """Five hex digits that change whenever a field GKE cannot update in place changes."""
    config = pool["config"]
    hw = {k: config.get(k) for k in HARDWARE_CONFIG} | {k: pool.get(k) for k in HARDWARE_POOL}
    hw |= {k: config[k] for k in HARDWARE_CONFIG_IF_SET if k in config}
    hw["accelerators"] = [[a["accelerator_type"], a["accelerator_count"]] for a in config.get("accelerators", [])]
    return hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:5]


def _pool(svc: LLMService, wb: WorkerBounds, suffix: str, spot: bool) -> dict[str, Any]:
    spec = svc.spec
    sh = wb.shape
    acc = sh.accelerator
    slot = names.child(_base(svc), wb.role if wb.role in ("prefill", "decode") else "", suffix, limit=POOL_NAME_LIMIT)
    node_labels = {
        OWNER_LABEL: svc.metadata.name,
        OWNER_NS_LABEL: svc.metadata.namespace,
        SLOT_LABEL: slot,
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
    if spec.node_pool.image_cache_disk:
        # The image cache mode reads the disk through image streaming's containerd plugin.
        config["secondary_boot_disks"] = [{"disk_image": spec.node_pool.image_cache_disk, "mode": IMAGE_CACHE_MODE}]
        config["gcfs_config"] = {"enabled": True}
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
    pool: dict[str, Any] = {"name": slot, "config": config, "initial_node_count": 0}
    if spec.placement.zones:
        pool["locations"] = list(spec.placement.zones)
    # Multi-host TPU slices are atomic: a pool is one slice and scales 0 <-> hosts.
    if sh.tpu and sh.tpu.multi_host and acc.multihost_needs_workload_policy:
        # Ironwood: the workload policy (see workload_policies) carries the slice topology, in
        # place of tpu_topology (GKE docs, "About Ironwood (TPU7x) in GKE").
        pool["placement_policy"] = {"policy_name": workload_policy_name(svc, sh.tpu.topology)}
    elif sh.tpu and sh.tpu.multi_host:
        pool["placement_policy"] = {"type_": "COMPACT", "tpu_topology": sh.tpu.topology}
    elif spec.placement.compact and not sh.tpu:  # single-host slices need no placement
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
    pool["name"] = names.child(slot, hardware_digest(pool), limit=POOL_NAME_LIMIT)
    return pool


def node_pools(p: Plan) -> list[dict[str, Any]]:
    """One pool per worker group (two for spot-with-fallback); a multi-host TPU service gets
    one pool per slice, because GKE sizes a multi-host slice pool as a whole."""
    svc = p.svc
    pools: list[dict[str, Any]] = []
    provisioning = svc.spec.accelerator.provisioning
    for wb in p.groups:
        sh = wb.shape
        if sh.tpu and sh.tpu.multi_host:
            pools += [_pool(svc, wb, f"slice{i}", False) for i in range(wb.replicas.max)]
        elif provisioning == "spot-with-fallback":
            pools += [_pool(svc, wb, "spot", True), _pool(svc, wb, "ondemand", False)]
        else:
            pools.append(_pool(svc, wb, "", provisioning == "spot"))
    return pools


def workload_policies(p: Plan) -> list[dict[str, Any]]:
    """The workload policies the service's pools name, as dicts that map onto
    google.cloud.compute_v1.ResourcePolicy (less region and description, which the GKE layer
    adds): `gcloud compute resource-policies create workload-policy NAME --type=HIGH_THROUGHPUT
    --accelerator-topology=AxBxC`."""
    svc = p.svc
    out: dict[str, dict[str, Any]] = {}
    for wb in p.groups:
        tpu = wb.shape.tpu
        if tpu and tpu.multi_host and wb.shape.accelerator.multihost_needs_workload_policy:
            name = workload_policy_name(svc, tpu.topology)
            out[name] = {
                "name": name,
                "workload_policy": {"type_": "HIGH_THROUGHPUT", "accelerator_topology": tpu.topology},
            }
    return list(out.values())
