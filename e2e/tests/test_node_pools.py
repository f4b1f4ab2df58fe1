"""Managed GKE node pools through the operator: created, reported, replaced when their hardware
changes, deleted with the service; tpu7x workload policies created and deleted with them."""

from __future__ import annotations

import time

import pytest

from e2e.cluster import Cluster
from llmservice_operator.api import parse
from llmservice_operator.render.nodepools import node_pools
from llmservice_operator.render.plan import plan
from testkit.fake_gke import FakeGKEServer
from tests.conftest import sample_doc, with_spec

from .conftest import GKE_PARENT, MEASURED, Operator
from .test_operator import _cond, _events, _get, _in, _wait_status

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # audit log, node, simulated nodes
FINALIZER = "llmservice.dev/node-pools"


def _pools(fake_gke: FakeGKEServer, namespace: str) -> dict[str, dict]:
    return {n: p for n, p in fake_gke.fake.pools.get(GKE_PARENT, {}).items() if n.startswith(namespace)}


def _names(doc: dict) -> set[str]:
    """Pool names as the operator renders them (<namespace>-<name>-<slot>-<hardware digest>)."""
    return {p["name"] for p in node_pools(plan(parse(doc)))}


def _running(status: dict) -> bool:
    pools = status.get("nodePools") or []
    return len(pools) == 2 and all(p["state"] == "RUNNING" for p in pools)


def test_pools_are_created_reported_and_deleted_with_the_service(
    cluster: Cluster, operator: Operator, fake_gke: FakeGKEServer, namespace: str
):
    doc = _in(sample_doc("l4-spot-fallback.yaml"), namespace)
    cluster.apply([doc])
    status = _wait_status(cluster, namespace, "qwen-l4", _running, "node pools RUNNING", timeout=60)
    assert {p["name"] for p in status["nodePools"]} == _names(doc)
    assert all(p["maxNodes"] == 4 for p in status["nodePools"])
    assert FINALIZER in _get(cluster, "llmsvc", namespace, "qwen-l4")["metadata"]["finalizers"]
    cluster.kubectl("delete", "llmsvc", "qwen-l4", "-n", namespace, "--wait=false")
    cluster.wait_for(
        "pools deleted, then the LLMService",
        lambda: not _pools(fake_gke, namespace) and _get(cluster, "llmsvc", namespace, "qwen-l4") is None,
        timeout=60,
    )


def test_finalizer_is_released_when_the_pools_are_already_gone(
    cluster: Cluster, operator: Operator, fake_gke: FakeGKEServer, namespace: str
):
    cluster.apply([_in(sample_doc("l4-spot-fallback.yaml"), namespace)])
    _wait_status(cluster, namespace, "qwen-l4", _running, "node pools RUNNING", timeout=60)
    for name in list(_pools(fake_gke, namespace)):  # someone deleted them by hand
        del fake_gke.fake.pools[GKE_PARENT][name]
    cluster.kubectl("delete", "llmsvc", "qwen-l4", "-n", namespace, "--wait=false")
    cluster.wait_for("the LLMService to go", lambda: _get(cluster, "llmsvc", namespace, "qwen-l4") is None, timeout=30)


def test_quota_errors_degrade_with_gkes_message(
    cluster: Cluster, operator: Operator, fake_gke: FakeGKEServer, namespace: str
):
    fake_gke.fake.gpu_quota["nvidia-l4"] = 2
    try:
        cluster.apply([_in(sample_doc("l4-spot-fallback.yaml"), namespace)])
        status = _wait_status(cluster, namespace, "qwen-l4", lambda s: s.get("phase") == "Degraded", "Degraded", 60)
        degraded = _cond(status, "Degraded")
        assert degraded["reason"] == "NodePoolError"
        assert 'Insufficient regional quota to satisfy request: resource "NVIDIA_L4_GPUS"' in degraded["message"]
        # The RayService is still applied: pods can use capacity that exists.
        assert _get(cluster, "rayservice", namespace, "qwen-l4") is not None
        cluster.wait_for(
            "a Warning Event", lambda: ("Warning", "NodePoolError") in _events(cluster, namespace, "qwen-l4")
        )
    finally:
        fake_gke.fake.gpu_quota.clear()
        cluster.kubectl("delete", "llmsvc", "qwen-l4", "-n", namespace, "--wait=false", check=False)


def _event_messages(cluster: Cluster, namespace: str, name: str, reason: str) -> list[str]:
    items = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["message"] for e in items if e["reason"] == reason]


def test_a_stockout_degrades_the_service_until_capacity_returns(
    cluster: Cluster, operator: Operator, fake_gke: FakeGKEServer, namespace: str
):
    """GKE fails the spot pool's create with ZONE_RESOURCE_POOL_EXHAUSTED: the LLMService says
    so in its Degraded condition (what `kubectl get`, Argo CD and alerts read), as long as it
    lasts, with the Event's words; the operator re-creates the pool until it comes up."""
    fake_gke.fake.stockout = {"g2-standard-8"}
    doc = _in(sample_doc("l4-spot-fallback.yaml"), namespace)
    spot = next(n for n in _names(doc) if "-spot-" in n)
    try:
        cluster.apply([doc])
        status = _wait_status(cluster, namespace, "qwen-l4", lambda s: s.get("phase") == "Degraded", "Degraded", 30)
        degraded = _cond(status, "Degraded")
        assert degraded["reason"] == "NodePoolError"
        assert f"node pool {spot}: ZONE_RESOURCE_POOL_EXHAUSTED" in degraded["message"]
        events = lambda: _event_messages(cluster, namespace, "qwen-l4", "NodePoolError")  # noqa: E731
        cluster.wait_for("the Warning Event", lambda: degraded["message"] in events())
        # Later reconciles (the operator's own status write, KubeRay's, the next GKE poll) keep it.
        time.sleep(5)
        assert _cond(_get(cluster, "llmsvc", namespace, "qwen-l4")["status"], "Degraded")["status"] == "True"
    finally:
        fake_gke.fake.stockout = set()
    status = _wait_status(
        cluster, namespace, "qwen-l4", lambda s: _cond(s, "Degraded").get("status") == "False" and _running(s),
        "Degraded cleared and both pools RUNNING", timeout=120,
    )  # fmt: skip
    assert status["phase"] != "Degraded"
    assert fake_gke.fake.create_attempts.count(spot) >= 2
    cluster.kubectl("delete", "llmsvc", "qwen-l4", "-n", namespace, "--wait=false")
    cluster.wait_for("pools deleted", lambda: not _pools(fake_gke, namespace), timeout=60)


def test_a_hardware_change_replaces_the_pools_and_says_so(
    cluster: Cluster, operator: Operator, fake_gke: FakeGKEServer, namespace: str
):
    """A bigger boot disk cannot be set on an existing pool: new pools come up beside the old
    ones, Progressing says so, then the old ones go."""
    doc = _in(sample_doc("l4-spot-fallback.yaml"), namespace)
    cluster.apply([doc])
    _wait_status(cluster, namespace, "qwen-l4", _running, "node pools RUNNING", timeout=60)
    bigger = with_spec(doc, nodePool__diskSizeGb=300)
    cluster.apply([bigger])
    status = _wait_status(
        cluster, namespace, "qwen-l4", lambda s: _cond(s, "Progressing").get("reason") == "UpdatingNodePools",
        "Progressing: UpdatingNodePools", timeout=60,
    )  # fmt: skip
    assert "replacing node pool" in _cond(status, "Progressing")["message"]
    assert "disk 200GB hyperdisk-balanced->300GB hyperdisk-balanced" in _cond(status, "Progressing")["message"]
    status = _wait_status(
        cluster, namespace, "qwen-l4", lambda s: _running(s) and {p["name"] for p in s["nodePools"]} == _names(bigger),
        "only the new pools, RUNNING", timeout=120,
    )  # fmt: skip
    assert set(_pools(fake_gke, namespace)) == _names(bigger)
    assert {p["config"]["diskSizeGb"] for p in _pools(fake_gke, namespace).values()} == {300}
    cluster.kubectl("delete", "llmsvc", "qwen-l4", "-n", namespace, "--wait=false")
    cluster.wait_for("pools deleted", lambda: not _pools(fake_gke, namespace), timeout=60)


def test_tpu7x_slices_get_a_workload_policy_that_goes_with_the_service(
    cluster: Cluster, operator: Operator, fake_gke: FakeGKEServer, namespace: str
):
    doc = with_spec(
        sample_doc("tpu-v6e-4x4-multihost.yaml"),
        accelerator={"type": "tpu-7x", "topology": "2x2x2"},
        engine__tensorParallelSize=8,
        model__hfTokenSecret=None,
    )
    cluster.apply([_in(doc, namespace)])
    _wait_status(cluster, namespace, "llama-tpu", _running, "slice pools RUNNING", timeout=90)
    region = fake_gke.fake.policies["projects/e2e-project/regions/us-central1"]
    policy = f"{namespace}-llama-tpu-slice-2x2x2"
    assert region[policy]["workloadPolicy"] == {"type": "HIGH_THROUGHPUT", "acceleratorTopology": "2x2x2"}
    assert {p["placementPolicy"]["policyName"] for p in _pools(fake_gke, namespace).values()} == {policy}
    cluster.kubectl("delete", "llmsvc", "llama-tpu", "-n", namespace, "--wait=false")
    cluster.wait_for(
        "pools, then the policy, then the LLMService deleted",
        lambda: policy not in region and _get(cluster, "llmsvc", namespace, "llama-tpu") is None,
        timeout=90,
    )
    assert not _pools(fake_gke, namespace)


def test_services_deleted_at_once_lose_their_pools_in_turn_even_across_a_kill_9(
    cluster: Cluster, operator: Operator, fake_gke: FakeGKEServer, namespace: str
):
    """GKE runs one node pool operation per cluster at a time. The operator's queue for the
    cluster starts each create and delete when the previous one is done: every request is
    accepted the first time. Killed (-9) mid-deletion, the restarted operator finds the
    operation under way, waits for it, and deletes the rest: no pool left, none deleted twice."""
    n = 3
    docs = []
    for i in range(n):
        doc = _in(sample_doc("l4-spot-fallback.yaml"), namespace)
        doc["metadata"]["name"] = f"fleet-{i}"
        docs.append(doc)
    cluster.apply(docs)
    ours = lambda: _pools(fake_gke, namespace)  # noqa: E731
    cluster.wait_for(
        "every pool RUNNING", lambda: len(ours()) == 2 * n and all(p["status"] == "RUNNING" for p in ours().values())
    )
    started = time.monotonic()
    cluster.kubectl("delete", "llmsvc", "--all", "-n", namespace, "--wait=false")
    cluster.wait_for("the first pool deleted", lambda: len(ours()) < 2 * n, timeout=30)
    operator.kill()
    operator.start()
    cluster.wait_for(
        "pools, then services, gone",
        lambda: not ours() and not cluster.get_json("llmsvc", "-n", namespace)["items"],
        timeout=60,
    )
    MEASURED[f"node pools: {n} services ({2 * n} pools) deleted, kill -9 midway (s)"] = round(
        time.monotonic() - started, 1
    )
    requests = [(m, path) for m, path in fake_gke.fake.mutations() if f"/nodePools/{namespace}-" in path]
    creates = [n for n in fake_gke.fake.create_attempts if n.startswith(namespace)]
    assert len(creates) == 2 * n, "each pool created once, never refused"
    deletes = [path for m, path in requests if m == "DELETE"]
    assert sorted(deletes) == sorted(set(deletes)) and len(deletes) == 2 * n, "each pool deleted once, never refused"
