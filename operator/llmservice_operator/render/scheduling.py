"""Where Ray worker pods may and should land: node selectors, tolerations, affinity, spread."""

from __future__ import annotations

from typing import Any

from .. import labels as keys
from ..api.spec import LLMServiceSpec
from ..catalog import labels
from .shape import Shape

GROUP_LABEL = keys.RAY_GROUP
REPLICA_LABEL = keys.RAY_REPLICA
HOSTNAME = "kubernetes.io/hostname"


def cpu_machine_selector(spec: LLMServiceSpec, sh: Shape) -> dict[str, str]:
    """CPU services: head and workers on the service's machine type when one is named or its
    node pool is managed; nothing on clusters that just have CPU nodes (kind, a dev cluster)."""
    if sh.accelerator.is_cpu and (spec.accelerator.machine_type or spec.node_pool.managed):
        return {labels.MACHINE_TYPE: sh.machine_type}
    return {}


def node_selector(spec: LLMServiceSpec, sh: Shape) -> dict[str, str]:
    acc = sh.accelerator
    sel = cpu_machine_selector(spec, sh)
    if acc.node_label:
        sel[acc.node_label] = acc.gke_label
    if acc.arch != "amd64":
        sel[labels.ARCH] = acc.arch
    if sh.tpu:
        # GKE's TPU webhook requires the topology selector; Ray's autoscaler reads both.
        sel[labels.TPU_TOPOLOGY] = sh.tpu.topology
    provisioning = spec.accelerator.provisioning
    if provisioning == "spot":
        sel[labels.SPOT] = "true"
    elif provisioning == "flex-start":
        sel[labels.FLEX_START] = "true"
    elif provisioning == "reservation":
        assert spec.accelerator.reservation
        sel[labels.RESERVATION_NAME] = spec.accelerator.reservation
    disk = spec.node_pool.image_cache_disk
    if disk and not spec.node_pool.managed:
        # Pools the operator does not create: ask for nodes with the image cache (a managed
        # pool has it on every node, and its pods already select the pool's hardware).
        project, name = disk.split("/")[1], disk.rsplit("/", 1)[1]
        sel[labels.SECONDARY_BOOT_DISK_PREFIX + name] = f"{labels.IMAGE_CACHE_MODE}.{project}"
    return dict(sorted(sel.items()))


def tolerations(spec: LLMServiceSpec, sh: Shape) -> list[dict[str, Any]]:
    # Spot nodes may carry GKE's spot taint when a pool sets it; flex-start/queued nodes do.
    spot = {"key": labels.SPOT, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    key = sh.accelerator.taint_key
    if key is None:  # CPU nodes carry no accelerator taint (and never flex-start)
        return [spot] if spec.accelerator.provisioning in ("spot", "spot-with-fallback") else []
    out = [
        {"key": key, "operator": "Exists", "effect": "NoSchedule"},
        spot,
        {"key": labels.QUEUED_TAINT, "operator": "Exists", "effect": "NoSchedule"},
    ]
    if sh.accelerator.arch != "amd64":
        # GKE adds this toleration itself only for pods that select arm64 through its webhook;
        # rendered explicitly, the pods schedule on any cluster (and kubectl diff stays quiet).
        out.append({"key": labels.ARCH, "operator": "Equal", "value": sh.accelerator.arch, "effect": "NoSchedule"})
    return out


def _group_selector(svc_name: str, group: str) -> dict[str, Any]:
    return {"matchLabels": {keys.OWNER: svc_name, GROUP_LABEL: group}}


def affinity(spec: LLMServiceSpec, sh: Shape, svc_name: str, group: str) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    node_terms: list[dict[str, Any]] = []
    if spec.placement.zones:
        node_terms.append({"key": labels.ZONE, "operator": "In", "values": list(spec.placement.zones)})
    if node_terms:
        out["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": node_terms}]}
        }
    if spec.accelerator.provisioning == "spot-with-fallback":
        # One worker group, spot preferred by the scheduler: Ray's autoscaler has no priority
        # between groups, so two groups could grow on-demand while spot capacity sits free.
        pref = {
            "weight": 100,
            "preference": {"matchExpressions": [{"key": labels.SPOT, "operator": "In", "values": ["true"]}]},
        }
        out.setdefault("nodeAffinity", {})["preferredDuringSchedulingIgnoredDuringExecution"] = [pref]

    pod_affinity: dict[str, Any] = {}
    if sh.tpu and sh.tpu.multi_host:
        # Every host of one replica inside one slice (a multi-host slice is one node pool).
        # matchLabelKeys narrows the term to pods of the same KubeRay replica.
        pod_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = [
            {
                "labelSelector": _group_selector(svc_name, group),
                "matchLabelKeys": [REPLICA_LABEL],
                "topologyKey": labels.NODEPOOL,
            }
        ]
    elif sh.accelerator.topology_labels and (spec.placement.compact or sh.pods_per_replica > 1):
        # Multi-node GPU replicas talk over the fabric: prefer one topology domain.
        level = labels.TOPOLOGY_LEVELS[spec.placement.topology_level]
        pod_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {
                "weight": 100,
                "podAffinityTerm": {"labelSelector": _group_selector(svc_name, group), "topologyKey": level},
            }
        ]
    elif sh.pods_per_node > 1:
        # Small replicas (e.g. 1 GPU on an 8-GPU node) pack onto nodes the group already uses:
        # the default scheduler spreads them, leaving no node free for a whole-node replica and
        # keeping more nodes up than the cluster autoscaler could otherwise remove.
        pod_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {
                "weight": 50,
                "podAffinityTerm": {"labelSelector": _group_selector(svc_name, group), "topologyKey": HOSTNAME},
            }
        ]
    if pod_affinity:
        out["podAffinity"] = pod_affinity
    return out or None


def spread(spec: LLMServiceSpec, svc_name: str, group: str) -> list[dict[str, Any]] | None:
    if not spec.placement.spread_across_zones:
        return None
    return [
        {
            "maxSkew": 1,
            "topologyKey": labels.ZONE,
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": _group_selector(svc_name, group),
        }
    ]
