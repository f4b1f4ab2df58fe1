"""Node objects for simulated GKE node pools (see gke-nodes.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmservice_operator.catalog import Machine, labels, machine_by_name

DEFAULT_NODES = Path(__file__).with_name("gke-nodes.yaml")
KWOK_LABEL = "type"  # kwok manages nodes labelled type=kwok
MAX_PODS = 110


def _node(pool: dict[str, Any], index: int, zone: str) -> dict[str, Any]:
    if "vcpus" in pool:  # a CPU pool: not in the accelerator catalog
        acc, machine = None, Machine(pool["machineType"], 0, pool["vcpus"], pool["memoryGib"])
    else:
        acc, machine = machine_by_name(pool["machineType"])
    name = f"gke-{pool['name']}-{index}"
    node_labels = {
        KWOK_LABEL: "kwok",
        labels.NODEPOOL: pool["name"],
        labels.MACHINE_TYPE: machine.name,
        labels.ZONE: pool.get("zones", [zone])[index % len(pool.get("zones", [zone]))],
        "topology.kubernetes.io/region": zone.rsplit("-", 1)[0],
        "kubernetes.io/hostname": name,
        "kubernetes.io/arch": acc.arch if acc else "amd64",
        "kubernetes.io/os": "linux",
    }
    capacity = {
        "cpu": str(machine.vcpus),
        "memory": f"{machine.memory_gib}Gi",
        "pods": str(MAX_PODS),
        "ephemeral-storage": "200Gi",
    }
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
    if acc is None:
        return node
    node_labels[acc.node_label] = acc.gke_label
    capacity[acc.resource] = str(machine.accelerators)
    node["spec"]["taints"] = [{"key": acc.resource, "value": "present", "effect": "NoSchedule"}]
    if acc.arch != "amd64":  # as GKE taints Arm nodes
        node["spec"]["taints"].append({"key": labels.ARCH, "value": acc.arch, "effect": "NoSchedule"})
    if acc.is_tpu:
        node_labels[labels.TPU_TOPOLOGY] = pool["tpuTopology"]
    if pool.get("spot"):
        node_labels[labels.SPOT] = "true"
        node_labels[labels.PROVISIONING] = "spot"
    if acc.topology_labels:
        blocks = pool.get("topologyBlocks", 1)
        block = index % blocks
        node_labels[labels.TOPOLOGY_BLOCK] = f"{pool['name']}-block{block}"
        node_labels[labels.TOPOLOGY_SUBBLOCK] = f"{pool['name']}-block{block}-sub0"
        node_labels[labels.TOPOLOGY_HOST] = f"{pool['name']}-host{index}"
    return node


def nodes(path: Path = DEFAULT_NODES) -> list[dict[str, Any]]:
    desc = yaml.safe_load(path.read_text())
    return [_node(p, i, desc["zone"]) for p in desc["pools"] for i in range(p["nodes"])]
