"""A service that cannot serve says why, in one line a user can act on, on the real node: an
engine argument vLLM refuses (the cause is only in the replica's log, read through the Ray
dashboard as soon as the first start fails), a pvc:// path with no model in it, and a Ray pod no
node can take (the scheduler's reason). Three services at once, in the background from the
start of the session (conftest.failed), reconciled by the operator the chart installed, which
reaches the Ray dashboard through the services' NetworkPolicy."""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e import serving
from e2e.cluster import Cluster
from e2e.story import Story

from .conftest import MEASURED

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster, pytest.mark.story]  # make test-stories
NS = "serving-fail"
STEPS = ["no-room", "bad-arg", "no-model", "cleaned"]
NO_SIDECAR = {"ingress": {"sidecar": False}}


def _status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get_json("llmsvc", name, "-n", NS).get("status") or {}


def _conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


def consistent(status: dict[str, Any]) -> list[str]:
    """What would make the conditions contradict each other or name what does not exist."""
    c, out = _conds(status), []
    if (
        c.get("Degraded", {}).get("reason") == "ServeApplicationFailed"
        and c.get("Progressing", {}).get("status") == "True"
    ):
        out.append("Serve gave up, yet Progressing is True")
    if status.get("phase") == "Ready" and c.get("Ready", {}).get("status") != "True":
        out.append("phase Ready with Ready False")
    return out


def scenario(cluster: Cluster, story: Story) -> None:
    serving.prepare(cluster, NS)
    docs = {
        # Its head asks for more CPU than the node has left (it fits the machine type, not the
        # node now): nothing of it runs, as with a replica's pod on a full GPU pool.
        "no-room": serving.small_service(
            NS,
            "no-room",
            ray__headResources={"cpu": "1900m", "memory": "3Gi"},
            replicas={"min": 0, "max": 1, "initial": 0},
            **NO_SIDECAR,
        ),
        # vLLM refuses it when the engine starts, in the replica's log only. With the sample's
        # 4Gi: at 3Gi, with other engines starting beside it, vLLM refused the KV cache first.
        "bad-arg": serving.small_service(
            NS,
            "bad-arg",
            engine__extraArgs={"dtype": "bfloat16", "block_size": 7},
            ray__workerResources={"cpu": "100m", "memory": "4Gi"},
            **NO_SIDECAR,
        ),
        "no-model": serving.small_service(NS, "no-model", model__source="pvc://tiny-models/no-such-dir", **NO_SIDECAR),
    }
    applied = time.monotonic()
    cluster.apply(list(docs.values()))
    seen: dict[str, list[dict[str, Any]]] = {n: [] for n in docs}
    first: dict[str, dict[str, float]] = {n: {} for n in docs}

    def look() -> None:
        for name in docs:
            st = _status(cluster, name)
            if st and (not seen[name] or seen[name][-1] != st):
                seen[name].append(st)
            first[name].setdefault(st.get("reason") or "-", round(time.monotonic() - applied, 1))

    def wait(name: str, done: Any, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            look()
            if seen[name] and done(seen[name][-1]):
                return seen[name][-1]
            time.sleep(2)
        raise AssertionError(f"{name}: not within {timeout:.0f} s; last status {seen[name][-1:]}")

    st = wait("no-room", lambda s: s.get("reason") == "WaitingForCapacity", 300)
    story.done("no-room", status=st, after=first["no-room"]["WaitingForCapacity"])
    st = wait("bad-arg", lambda s: "No common block size for 7" in (s.get("message") or ""), 900)
    events = cluster.get_json("events", "-n", NS, "--field-selector", "involvedObject.name=bad-arg")["items"]
    story.done("bad-arg", status=st, first=dict(first["bad-arg"]), history=seen["bad-arg"], events=events)
    st = wait("no-model", lambda s: "no model at 'no-such-dir'" in (s.get("message") or ""), 900)
    story.done("no-model", status=st, history=seen["no-model"])
    cluster.kubectl("delete", "llmsvc", "--all", "-n", NS, "--wait=false")
    cluster.wait_for("the failed services' pods gone", lambda: not cluster.get_json("pods", "-n", NS)["items"], 180)
    story.done("cleaned")


def test_a_pod_no_node_can_take_waits_for_capacity_with_the_schedulers_reason(failed: Story):
    st = failed.result("no-room")["status"]
    c = _conds(st)
    assert c["Progressing"]["status"] == "True" and c["Progressing"]["reason"] == "WaitingForCapacity"
    assert "Insufficient cpu" in st["message"] and "waits for a node" in st["message"], st["message"]
    assert st["reason"] == "WaitingForCapacity" and st["phase"] == "Provisioning"
    MEASURED["no room on the node: apply -> WaitingForCapacity (s)"] = failed.result("no-room")["after"]


def test_an_engine_argument_vllm_refuses_is_named_as_soon_as_the_first_start_fails(failed: Story):
    """Serve gives up after its third attempt (minutes later) with "Engine core initialization
    failed. See root cause above."; the operator names vLLM's own error from the replica's log
    as soon as the first attempt fails, and posts the lines around it as an Event."""
    res = failed.result("bad-arg")
    st = res["status"]
    assert "ValueError: No common block size for 7." in st["message"], st["message"]
    assert st["phase"] == "Degraded" and _conds(st)["Degraded"]["status"] == "True"
    # Named while Serve still retried: before the app failed for good (DEPLOY_FAILED).
    first = res["first"]
    assert "ReplicaStartFailed" in first, first
    if "ServeApplicationFailed" in first:
        assert first["ReplicaStartFailed"] < first["ServeApplicationFailed"], first
    reasons = {e["reason"]: e["message"] for e in res["events"]}
    assert "No common block size for 7" in reasons.get("ReplicaStartFailed", ""), reasons
    for s in res["history"]:
        assert not consistent(s), (consistent(s), s)
    MEASURED["bad engine argument: apply -> root cause in status (s)"] = first["ReplicaStartFailed"]
    if "ServeApplicationFailed" in first:
        MEASURED["bad engine argument: apply -> Serve gives up (s)"] = first["ServeApplicationFailed"]


def test_a_pvc_path_without_a_model_names_the_source_to_fix(failed: Story):
    st = failed.result("no-model")["status"]
    assert st["message"].startswith("llm (new cluster):"), st["message"]
    assert "spec.model.source pvc://tiny-models/no-such-dir: no model at 'no-such-dir'" in st["message"]
    children = st.get("children") or {}
    assert "serveService" not in children or children["serveService"] == "no-model", children
    for s in failed.result("no-model")["history"]:
        assert not consistent(s), (consistent(s), s)
