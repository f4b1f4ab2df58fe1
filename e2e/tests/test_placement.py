"""Topology-aware placement, decided by the real kube-scheduler on simulated GKE nodes."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.operator import Operator
from llmservice_operator.api import parse
from llmservice_operator.catalog import labels
from llmservice_operator.render import render
from llmservice_operator.settings import OperatorSettings
from tests.conftest import sample_doc, with_spec

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # audit log, node, simulated nodes


def _deploy(cluster: Cluster, doc: dict[str, Any], namespace: str, workers: int) -> list[dict[str, str]]:
    """Apply what the operator would, wait for `workers` Running worker pods, return their nodes' labels."""
    doc["metadata"]["namespace"] = namespace
    cluster.apply(render(parse(doc), OperatorSettings(monitoring="none")).kubernetes_objects())
    sel = f"llmservice.dev/name={doc['metadata']['name']},ray.io/node-type=worker"

    def pods() -> list[dict]:
        return cluster.get_json("pods", "-n", namespace, "-l", sel)["items"]

    cluster.wait_for(
        f"{workers} Running workers",
        lambda: len(pods()) == workers and all(p["status"].get("phase") == "Running" for p in pods()),
        timeout=90,
    )
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in cluster.get_json("nodes")["items"]}
    return [nodes[p["spec"]["nodeName"]] for p in pods()]


def test_multi_node_gpu_replica_stays_in_one_topology_block(cluster: Cluster, kuberay_namespace: str):
    doc = with_spec(sample_doc("gemma-b200.yaml"), engine__tensorParallelSize=8, engine__pipelineParallelSize=2)
    doc = with_spec(doc, replicas={"min": 1, "max": 1})
    placed = _deploy(cluster, doc, kuberay_namespace, workers=2)
    assert len({n["kubernetes.io/hostname"] for n in placed}) == 2, "one 8-GPU pod per node"
    assert len({n[labels.TOPOLOGY_BLOCK] for n in placed}) == 1, placed


def test_spot_first_and_spread_across_zones(cluster: Cluster, kuberay_namespace: str):
    doc = with_spec(sample_doc("l4-spot-fallback.yaml"), replicas={"min": 2, "max": 4})
    placed = _deploy(cluster, doc, kuberay_namespace, workers=2)
    assert all(n.get(labels.SPOT) == "true" for n in placed), "spot nodes are used first"
    assert {n[labels.ZONE] for n in placed} == {"us-central1-a", "us-central1-b"}, "one replica per zone"


def test_on_demand_takes_over_when_spot_is_full(cluster: Cluster, kuberay_namespace: str):
    # Two spot nodes with one L4 each: the third replica goes to the on-demand pool.
    doc = with_spec(sample_doc("l4-spot-fallback.yaml"), replicas={"min": 3, "max": 4})
    placed = _deploy(cluster, doc, kuberay_namespace, workers=3)
    assert collections.Counter(n[labels.NODEPOOL] for n in placed) == {"g2-l4-spot": 2, "g2-l4": 1}


def test_gb200_workers_land_on_arm_nodes_with_the_arm_image(cluster: Cluster, kuberay_namespace: str):
    """A4X nodes are Arm and tainted kubernetes.io/arch=arm64:NoSchedule, as GKE does: the
    workers select and tolerate it and run the Arm image; the head stays on an x86 CPU node."""
    doc = with_spec(
        sample_doc("gemma-b200.yaml"),
        accelerator={"type": "nvidia-gb200"},
        engine__tensorParallelSize=4,
        replicas={"min": 2, "max": 2},
    )
    placed = _deploy(cluster, doc, kuberay_namespace, workers=2)
    assert {n[labels.NODEPOOL] for n in placed} == {"a4x-gb200"}
    assert {n[labels.ARCH] for n in placed} == {"arm64"}
    settings = OperatorSettings()
    pods = cluster.get_json("pods", "-n", kuberay_namespace, "-l", "llmservice.dev/name=gemma")["items"]
    images = {p["metadata"]["labels"]["ray.io/node-type"]: p["spec"]["containers"][0]["image"] for p in pods}
    assert images == {"worker": settings.arm_gpu_ray_image, "head": settings.gpu_ray_image}
    [head] = [p["metadata"]["name"] for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head"]

    def node_of_head() -> str | None:
        return cluster.get_json("pod", head, "-n", kuberay_namespace)["spec"].get("nodeName")

    cluster.wait_for("the head scheduled", lambda: node_of_head() is not None)
    assert cluster.get_json("node", node_of_head())["metadata"]["labels"][labels.ARCH] == "amd64"


def test_a_gpu_replica_no_pool_can_take_makes_the_service_wait_for_capacity(
    cluster: Cluster, operator: Operator, kuberay_namespace: str
):
    """Three 8-GPU H100 replicas on a pool of two 8-GPU nodes: the third worker pod stays
    Pending, and the LLMService (reconciled by the suite's operator, KubeRay making the pods, the
    real scheduler placing them) says Progressing/WaitingForCapacity with the pod and the
    scheduler's reason, where before it said only that it was provisioning."""
    ns = kuberay_namespace
    doc = with_spec(
        sample_doc("gemma-b200.yaml"),
        accelerator={"type": "nvidia-h100"},
        engine__tensorParallelSize=8,
        replicas={"min": 3, "max": 3},
    )
    doc["metadata"]["namespace"] = ns
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token", "namespace": ns},
              "stringData": {"token": "hf_test"}}  # fmt: skip
    cluster.apply([secret, doc])
    found: dict[str, Any] = {}

    def waiting() -> bool:
        found.update(cluster.get_json("llmsvc", "gemma", "-n", ns).get("status") or {})
        return found.get("reason") == "WaitingForCapacity"

    cluster.wait_for("the service waiting for capacity", waiting, timeout=120)
    progressing = next(c for c in found["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "True" and progressing["reason"] == "WaitingForCapacity"
    assert "Insufficient nvidia.com/gpu" in found["message"] and "waits for a node" in found["message"], found
    assert found["phase"] == "Provisioning"
