"""Smoke tests of the local control plane: real API server, scheduler, KubeRay, simulated GKE nodes."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.nodes import KWOK_LABEL
from e2e.nodes import nodes as gke_nodes
from llmservice_operator.api import parse
from llmservice_operator.catalog import labels
from llmservice_operator.render import render
from llmservice_operator.settings import OperatorSettings
from tests.conftest import sample_doc, with_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # audit log, node, simulated nodes


def _apply_rendered(cluster: Cluster, doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    doc["metadata"]["namespace"] = namespace
    out = render(parse(doc), OperatorSettings(monitoring="none"))
    cluster.apply(out.kubernetes_objects())
    return out.ray_service


def _pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]


def _running(cluster: Cluster, namespace: str, selector: str, count: int) -> list[dict[str, Any]]:
    def ready() -> bool:
        pods = _pods(cluster, namespace, selector)
        return len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods)

    cluster.wait_for(f"{count} Running pods ({selector})", ready, timeout=90)
    return _pods(cluster, namespace, selector)


def _node_labels(cluster: Cluster) -> dict[str, dict[str, str]]:
    return {n["metadata"]["name"]: n["metadata"]["labels"] for n in cluster.get_json("nodes")["items"]}


def test_kuberay_crds_are_installed(cluster: Cluster):
    names = {c["metadata"]["name"] for c in cluster.get_json("crds")["items"]}
    assert {"rayclusters.ray.io", "rayservices.ray.io", "rayjobs.ray.io"} <= names


def test_simulated_gke_nodes_and_one_real_node(cluster: Cluster):
    nodes = _node_labels(cluster)
    simulated = {n for n, lbl in nodes.items() if lbl.get(KWOK_LABEL) == "kwok"}
    assert simulated == {n["metadata"]["name"] for n in gke_nodes(cluster.node_file)}  # the pools the file lists
    assert cluster.ready_node_names() == set(nodes) == simulated | {cluster.node.name}
    # The real node: kubelet reports what it runs on, and the labels of a GKE CPU pool.
    real = cluster.get_json("node", cluster.node.name)
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["addresses"][0]["address"] == cluster.network.node_ip
    assert nodes[cluster.node.name][labels.NODEPOOL] == "cpu-local"
    b200 = [n for n, lbl in nodes.items() if lbl.get(labels.GPU_ACCELERATOR) == "nvidia-b200"]
    assert len(b200) == 4 and all(labels.TOPOLOGY_BLOCK in nodes[n] for n in b200)
    slice_a = [n for n, lbl in nodes.items() if lbl.get(labels.NODEPOOL) == "ct6e-4x4-a"]
    assert len(slice_a) == 4 and all(nodes[n][labels.TPU_TOPOLOGY] == "4x4" for n in slice_a)
    b200_node = cluster.get_json("node", b200[0])
    assert b200_node["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_our_crd_is_accepted_and_enforces_rules(cluster: Cluster, namespace: str):
    """The generated CRD (structural schema + CEL) is accepted by a real API server, which then
    rejects a bad manifest at apply time with the rule's field path and message."""
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmservice.dev_llmservices.yaml"))
    cluster.wait_established(["llmservices.llmservice.dev"])
    good = sample_doc("gemma-b200.yaml")
    good["metadata"]["namespace"] = namespace
    cluster.apply([good])
    bad = with_spec(sample_doc("tpu-v6e-4x4-multihost.yaml"), accelerator__topology="3x3")
    bad["metadata"]["namespace"] = namespace
    res = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert res.returncode != 0
    assert "spec.accelerator.topology" in res.stderr and "is not a topology of accelerator.type" in res.stderr
    explain = cluster.kubectl("explain", "llmservice.spec.accelerator.provisioning").stdout
    assert "spot-with-fallback" in explain


def test_b200_rayservice_becomes_raycluster_on_b200_nodes(cluster: Cluster, kuberay_namespace: str):
    namespace = kuberay_namespace
    rs = _apply_rendered(cluster, sample_doc("gemma-b200.yaml"), namespace)
    cluster.wait_for(
        "KubeRay to create the RayCluster",
        lambda: len(cluster.get_json("rayclusters", "-n", namespace)["items"]) == 1,
        timeout=60,
    )
    nodes = _node_labels(cluster)
    [head] = _running(cluster, namespace, "ray.io/node-type=head", 1)
    assert labels.GPU_ACCELERATOR not in nodes[head["spec"]["nodeName"]], "the head must not take a GPU node"
    workers = _running(cluster, namespace, "ray.io/node-type=worker", 8)
    for pod in workers:
        node = nodes[pod["spec"]["nodeName"]]
        assert node[labels.GPU_ACCELERATOR] == "nvidia-b200"
    # Eight 1-GPU replicas pack onto one 8-GPU node instead of fragmenting four.
    assert len({p["spec"]["nodeName"] for p in workers}) == 1
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["replicas"] == 8


def test_multi_host_tpu_replicas_stay_inside_one_slice(cluster: Cluster, kuberay_namespace: str):
    namespace = kuberay_namespace
    doc = with_spec(sample_doc("tpu-v6e-4x4-multihost.yaml"), replicas={"min": 2, "max": 2})
    _apply_rendered(cluster, doc, namespace)
    workers = _running(cluster, namespace, "ray.io/node-type=worker", 8)
    nodes = _node_labels(cluster)
    pools_by_replica: dict[str, set[str]] = collections.defaultdict(set)
    for pod in workers:
        node = nodes[pod["spec"]["nodeName"]]
        assert node[labels.TPU_TOPOLOGY] == "4x4"
        pools_by_replica[pod["metadata"]["labels"]["ray.io/worker-group-replica-name"]].add(node[labels.NODEPOOL])
    assert len(pools_by_replica) == 2
    assert all(len(pools) == 1 for pools in pools_by_replica.values()), pools_by_replica
    assert set().union(*pools_by_replica.values()) == {"ct6e-4x4-a", "ct6e-4x4-b"}
