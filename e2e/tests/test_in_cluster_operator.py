"""The operator as users run it, on the real node: its image (built offline like the serving
image, imported into the node's containerd), installed with `helm install`: the chart's
Deployment of two replicas electing a leader (kopf peering), its ServiceAccount and RBAC, its
probes and metrics port. It is the operator that took the served CPU sample to Ready
(conftest `in_cluster`); here it hands over between replicas, rolls with `helm upgrade`, and
`helm uninstall` leaves the services running.

Runs before test_serving.py, on the same service.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from e2e import incluster, serving

from .conftest import MEASURED, SERVED_NS, Served, until

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # audit log, node, simulated nodes
NAME = serving.SERVICE
SA = f"system:serviceaccount:{incluster.NAMESPACE}:llmservice-operator"
POD_NAME = "authentication.kubernetes.io/pod-name"  # in the audit log's user.extra (bound tokens)


def _writers(served: Served, since: float = 0) -> set[str]:
    """The operator pods that wrote the service's status, from the audit log."""
    pods = set()
    for ev in served.cluster.audit_writes_to("llmservices", "status"):
        ref, user = ev["objectRef"], ev["user"]
        if ref.get("namespace") == SERVED_NS and user["username"] == SA and _at(ev) >= since:
            pods.update(user.get("extra", {}).get(POD_NAME, []))
    return pods


def _at(ev: dict[str, Any]) -> float:
    return datetime.fromisoformat(ev["stageTimestamp"].replace("Z", "+00:00")).timestamp()


def _in_peering(served: Served, pod: str) -> bool:
    return any(ident.split("/")[0] == pod for ident in served.operator.peering(SERVED_NS))


def _body_limit(served: Served) -> str:
    """What the edge ConfigMap the operator renders says the body limit is."""
    cm = served.cluster.get_json("configmap", f"{NAME}-edge", "-n", SERVED_NS)
    found = re.search(r"content-length\) gt ([0-9]+)", cm["data"]["haproxy.cfg"])
    assert found, "the body limit rule"
    return found.group(1)


def _set_body_limit(served: Served, size: str | None) -> None:
    if size is None:
        patch = [{"op": "remove", "path": "/spec/ingress/maxBodySize"}]
        served.cluster.kubectl("patch", "llmsvc", NAME, "-n", SERVED_NS, "--type=json", "-p", json.dumps(patch))
    else:
        patch = {"spec": {"ingress": {"maxBodySize": size}}}
        served.cluster.kubectl("patch", "llmsvc", NAME, "-n", SERVED_NS, "--type=merge", "-p", json.dumps(patch))


def test_the_chart_runs_the_operator_that_served_the_sample(served: Served):
    """Both replicas are the operator image on the real node, as the chart's ServiceAccount;
    the one that leads wrote the CPU service's status (so took it to Ready); the metrics
    port serves the operator's metrics."""
    op, cluster = served.operator, served.cluster
    pods = op.pods()
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] == cluster.node.name
        assert pod["spec"]["serviceAccountName"] == "llmservice-operator"
        [c] = pod["spec"]["containers"]
        assert c["image"] == incluster.image_values()["image"]["repository"] + ":0.1.0"
        assert all(s["ready"] for s in pod["status"]["containerStatuses"])
    writers = _writers(served)
    assert writers and writers <= {p["metadata"]["name"] for p in pods}, writers
    assert op.leader(SERVED_NS) in writers
    ip = next(p for p in pods if p["metadata"]["name"] == op.leader(SERVED_NS))["status"]["podIP"]
    text = httpx.get(f"http://{ip}:9090/metrics", timeout=10).text
    assert 'llmservice_services{phase="Ready"} 1.0' in text


def test_deleting_the_leading_pod_hands_over_to_the_other(served: Served):
    """`kubectl delete pod` of the leader (a drain or a rollout does the same): it leaves the
    peering on its way out and the other replica acts on the next change within seconds."""
    op = served.operator
    leader = op.leader(SERVED_NS)
    assert leader is not None
    before = _body_limit(served)
    served.cluster.kubectl("delete", "pod", leader, "-n", incluster.NAMESPACE, "--wait=false")
    deleted = time.monotonic()
    # Change only once the old leader has left the peering: a change made before its SIGTERM
    # lands is still applied by it (CI saw that: 0.1 s, written by the deleted pod).
    until("the deleted leader to leave the peering", lambda: not _in_peering(served, leader), 60, 0.2)
    _set_body_limit(served, "3Mi")
    try:
        took = until("the other replica to apply the change", lambda: _body_limit(served) != before, 90, 0.2)
        MEASURED["in-cluster operator: leader pod deleted -> next change applied (s)"] = round(took, 1)
        new = op.leader(SERVED_NS)
        assert new is not None and new != leader
        # A replica other than the deleted one wrote after the deletion. (Not necessarily
        # the leader read after it: the Deployment's replacement pod may lead by then.)
        writers = _writers(served, since=time.time() - (time.monotonic() - deleted))
        assert writers - {leader}, (leader, writers)
    finally:
        _set_body_limit(served, None)
        until("the default body limit back", lambda: _body_limit(served) == before, 90, 0.2)
    op.wait_rolled_out()  # the Deployment replaced the deleted pod


def test_helm_upgrade_rolls_the_deployment_without_a_gap_in_reconciling(served: Served):
    """A changed value rolls both pods one by one (the Deployment surges one, then stops an
    old one); meanwhile a change is made every few seconds and each is applied: the longest
    wait is what the rollout costs the user."""
    op = served.operator
    old = {p["metadata"]["name"] for p in op.pods()}
    waits: list[float] = []
    stop = threading.Event()

    def keep_changing() -> None:
        sizes = ["2Mi", "4Mi"]
        while not stop.is_set():
            size = sizes[len(waits) % 2]
            _set_body_limit(served, size)
            waits.append(until(f"body limit {size}", lambda s=size: _body_limit(served) == str(_bytes(s)), 120, 0.2))
            stop.wait(2)

    worker = threading.Thread(target=keep_changing, daemon=True)
    worker.start()
    try:
        took = op.install(settings={"retryDelaySeconds": 3})
    finally:
        stop.set()
        worker.join(150)
        _set_body_limit(served, None)
    assert not old & {p["metadata"]["name"] for p in op.pods()}, "every pod replaced"
    assert len(waits) >= 3, waits
    MEASURED["in-cluster operator: helm upgrade rolled out (s)"] = round(took, 1)
    MEASURED["in-cluster operator: longest change -> applied during the rollout (s)"] = round(max(waits), 1)
    assert max(waits) < 30, waits


def _bytes(size: str) -> int:
    return int(size[:-2]) * 2**20


def test_helm_uninstall_leaves_the_services_and_their_children(served: Served):
    """The chart's CRDs are in crds/ (Helm never deletes those), the LLMServices are the
    users' and their children are owned by them, not by the release: uninstalling the
    operator stops reconciling and removes nothing else. Reinstalled, it finds nothing to do."""
    op, cluster = served.operator, served.cluster
    rs = served.rayservice()
    op.uninstall()
    try:
        assert not op.pods()
        assert cluster.kubectl("get", "crd", "llmservices.llmservice.dev", check=False).returncode == 0
        svc = cluster.get_json("llmsvc", NAME, "-n", SERVED_NS)
        assert svc["status"]["phase"] == "Ready"
        assert served.rayservice()["metadata"]["uid"] == rs["metadata"]["uid"]
        assert served.client.models.list().data, "still serving"
    finally:
        reinstalled = time.time()
        op.install()
    serving.wait_ready(cluster, SERVED_NS, NAME, timeout=120)
    time.sleep(5)  # the new leader's first reconcile
    writes = [
        ev
        for ev in cluster.audit_writes(SA)
        if ev["objectRef"].get("namespace") == SERVED_NS and _at(ev) >= reinstalled and ev["verb"] != "create"
    ]
    kinds = {ev["objectRef"]["resource"] for ev in writes} - {"events", "kopfpeerings"}
    assert "rayservices" not in kinds, writes
