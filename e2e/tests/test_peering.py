"""Two operator replicas with kopf peering: one acts, the other waits and takes over."""

from __future__ import annotations

import json
import time

import pytest

from e2e.cluster import Cluster
from tests.conftest import sample_doc

from .conftest import ROOT, Operator
from .test_operator import _get, _secrets, _wait_status

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # audit log, node, simulated nodes
PEERING = "llmservice-e2e"


def _writers(cluster: Cluster, namespace: str, users: tuple[str, ...]) -> set[str]:
    return {
        e["user"]["username"]
        for u in users
        for e in cluster.audit_writes(u)
        if e["objectRef"].get("namespace") == namespace and e["objectRef"].get("resource") == "rayservices"
    }


def _apply(cluster: Cluster, namespace: str, name: str) -> None:
    doc = sample_doc("tpu-v6e-2x4.yaml")
    doc["metadata"].update(name=name, namespace=namespace)
    cluster.apply([doc])


def _peering(cluster: Cluster, namespace: str) -> tuple[str, ...]:
    """The peering object; returns the replicas' common arguments."""
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "kopf-peering.yaml"))
    cluster.wait_established(["kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"])
    cluster.apply(
        [{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING, "namespace": namespace}}]
    )
    return ("-n", namespace, "--peering", PEERING, "--log-format", "json")


def test_only_the_leader_works_even_its_queued_retries_and_a_follower_takes_over(
    cluster: Cluster, operator: Operator, namespace: str
):
    """The lower-priority replica starts first and queues retries for a service whose Secrets
    are missing; when the leader starts, it pauses: once the Secrets appear only the leader
    applies (the audit log). When the leader stops, the follower takes over."""
    operator.stop()  # the suite's standalone operator would act in every namespace
    common = _peering(cluster, namespace)
    leader = Operator(cluster, "operator-a", (*common, "--priority", "200"))
    follower = Operator(cluster, "operator-b", (*common, "--priority", "100"))
    users = (leader.user, follower.user)
    try:
        follower.start()
        doc = sample_doc("gemma-b200.yaml")
        doc["metadata"]["namespace"] = namespace
        cluster.apply([doc])  # its Secrets are missing: retried every 2 s
        _wait_status(cluster, namespace, "gemma", lambda s: s.get("phase") == "Degraded", "Degraded")
        leader.start()
        cluster.wait_for(
            "both replicas in the peering",
            lambda: len(cluster.get_json("kopfpeering", PEERING, "-n", namespace).get("status") or {}) == 2,
            timeout=30,
        )
        cluster.wait_for("the follower to pause", lambda: "follows: work paused" in follower.log.read_text())
        cluster.apply(_secrets(namespace))
        cluster.wait_for("the RayService", lambda: _get(cluster, "rayservice", namespace, "gemma") is not None)
        _apply(cluster, namespace, "first")
        cluster.wait_for("the leader to create the second RayService", lambda: _rayservices(cluster, namespace) == 2)
        time.sleep(4)  # two of the paused follower's retry periods
        assert _writers(cluster, namespace, users) == {leader.user}
        leader.stop()  # a graceful stop removes it from the peering: the follower resumes
        _apply(cluster, namespace, "second")
        cluster.wait_for(
            "the follower to take over",
            lambda: follower.user in _writers(cluster, namespace, users),
            timeout=60,
        )
        for line in follower.log.read_text().splitlines():
            json.loads(line)  # --log-format json: every line is one JSON object
    finally:
        leader.stop()
        follower.stop()
        operator.start()


def _rayservices(cluster: Cluster, namespace: str) -> int:
    return len(cluster.get_json("rayservices", "-n", namespace)["items"])
