"""The reconcile against a dict-backed API: what it writes for a spec only the renderer rejects."""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import ForbiddenError, NotFoundError

from llmservice_operator.controller.reconcile import Reconciler
from llmservice_operator.gke import NodePools, cluster_manager, compute
from llmservice_operator.render import edge as edge_mod
from llmservice_operator.settings import GKECluster
from testkit.fake_gke import FakeGKE, FakeGKEServer
from testkit.kube import DictKube

from .conftest import sample_doc, with_spec


def test_a_spec_only_the_renderer_rejects_is_degraded_and_nothing_is_applied(settings):
    """The API server admits any engine.extraArgs (CEL cannot see its keys): the operator
    refuses a reserved one, in vLLM's CLI spelling too, naming the field and the fix, and
    leaves the cluster alone."""
    doc = with_spec(sample_doc("cpu-tiny.yaml"), engine__extraArgs={"tensor-parallel-size": 2})
    doc["metadata"].update(namespace="team-a", uid="u-1", generation=1)
    kube = DictKube(doc)
    Reconciler(kube, settings).reconcile("team-a", doc["metadata"]["name"])  # type: ignore[arg-type]
    status = kube.get_llmservice("team-a", doc["metadata"]["name"])["status"]
    assert status["phase"] == "Degraded"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.engine.extraArgs: must not repeat a typed field" in degraded["message"]
    assert "engine.tensorParallelSize instead of tensor_parallel_size" in degraded["message"]
    assert kube.applied == []
    assert kube.events == [("Warning", "InvalidSpec", degraded["message"])]


def _until_idle(r: Reconciler, namespace: str, name: str, rounds: int = 100) -> None:
    for _ in range(rounds):
        outcome = r.reconcile(namespace, name)
        if outcome is not None and not outcome.busy and not outcome.queued and outcome.requeue_after is None:
            return
        time.sleep(0.05)
    raise AssertionError("still busy")


def _settle(r: Reconciler, namespace: str, name: str) -> None:
    """Reconcile as the work queue does: again at once when it asks to (GKE's view changed under
    its decision), until it does not."""
    for _ in range(10):
        outcome = r.reconcile(namespace, name)
        if outcome is None or outcome.requeue_after != 0:
            return
    raise AssertionError("asks to be reconciled again and again")


def test_a_node_pool_replacement_is_reported_in_progressing(settings):
    """nodePool.diskSizeGb cannot change on a GKE pool: the reconcile makes new pools (the
    real clients, as `llmservice run` builds them, against the fake GKE) and says so in status."""
    doc = sample_doc("l4-spot-fallback.yaml")
    doc["metadata"].update(namespace="serving", uid="u-1", generation=1)
    with FakeGKEServer(FakeGKE(op_seconds=0.1)) as gke:
        cluster = GKECluster(project="p", location="us-central1", cluster="c", endpoint=gke.endpoint)
        kube = DictKube(doc)
        pools = NodePools(cluster_manager(cluster), cluster, compute=compute(cluster), poll_seconds=0.05)
        r = Reconciler(kube, settings, pools)
        _until_idle(r, "serving", "qwen-l4")
        before = {p["name"] for p in kube.get_llmservice("serving", "qwen-l4")["status"]["nodePools"]}
        live = kube.objects[("LLMService", "serving", "qwen-l4")]
        live["spec"] = with_spec(doc, nodePool__diskSizeGb=300)["spec"]
        live["metadata"]["generation"] = 2
        _settle(r, "serving", "qwen-l4")
        status = kube.get_llmservice("serving", "qwen-l4")["status"]
        progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
        assert progressing["reason"] == "UpdatingNodePools"
        assert "disk 200GB hyperdisk-balanced->300GB hyperdisk-balanced" in progressing["message"]
        assert before <= {p["name"] for p in status["nodePools"]}, "the old pools are listed until gone"
        _until_idle(r, "serving", "qwen-l4")
        status = kube.get_llmservice("serving", "qwen-l4")["status"]
        after = {p["name"] for p in status["nodePools"]}
        assert after == set(gke.fake.pools["projects/p/locations/us-central1/clusters/c"]) and not after & before
        assert next(c for c in status["conditions"] if c["type"] == "Progressing")["reason"] != "UpdatingNodePools"
        pools.stop()


def _pod(name: str, containers: list[str], phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta = {"name": name, "namespace": "team-a", "labels": {"llmservice.dev/name": "tiny"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T00:00:00Z"
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": c} for c in containers]},
        "status": {"phase": phase},
    }


def test_a_changed_api_keys_secret_reaches_the_running_sidecars_by_a_pod_annotation(settings):
    """The Secret's new version is noticed by its metadata (SecretWatch), named on the edge
    ConfigMap, and the serving pods that run the sidecar get annotated once, so the kubelet
    refreshes their mounted key map now."""
    doc = sample_doc("cpu-tiny.yaml")
    doc["metadata"].update(namespace="team-a", uid="u-1", generation=1)
    secret = {
        "kind": "Secret",
        "metadata": {"name": "llm-keys", "namespace": "team-a", "resourceVersion": "1"},
        "data": {"api-keys.map": "c2stYSB0ZWFtLWEK"},
    }
    pods = [
        _pod("tiny-worker-a", ["ray", "edge"]),
        _pod("tiny-head", ["ray"]),
        _pod("tiny-worker-b", ["ray", "edge"], phase="Pending"),
        _pod("tiny-worker-c", ["ray", "edge"], deleting=True),
    ]
    claim = {"kind": "PersistentVolumeClaim", "metadata": {"name": "tiny-models", "namespace": "team-a"}}
    kube = DictKube(doc, secret, claim, *pods)
    r = Reconciler(kube, settings)  # type: ignore[arg-type]
    woken: list[Any] = []
    r.secret_watch.bind(woken.append, lambda: True)  # period 10 s: polled by hand below
    r.reconcile("team-a", "tiny")
    edge = kube.objects[("ConfigMap", "team-a", "tiny-edge")]
    assert edge["metadata"]["annotations"]["llmservice.dev/edge-secrets"] == "llm-keys@1"
    assert kube.patched == [], "a new ConfigMap: the pods mount it as they start"
    assert r.secret_watch.poll() == [] and woken == []

    kube.objects[("Secret", "team-a", "llm-keys")]["metadata"]["resourceVersion"] = "2"
    assert r.secret_watch.poll() == [("team-a", "tiny")] == woken
    r.reconcile("team-a", "tiny")
    edge = kube.objects[("ConfigMap", "team-a", "tiny-edge")]
    assert edge["metadata"]["annotations"]["llmservice.dev/edge-secrets"] == "llm-keys@2"
    revision = edge_mod.revision(edge)
    assert kube.patched == [
        ("Pod", "tiny-worker-a", {"metadata": {"annotations": {"llmservice.dev/edge-revision": revision}}})
    ], "only running pods with the sidecar"
    r.reconcile("team-a", "tiny")
    assert len(kube.patched) == 1, "nothing changed: no write"

    kube.objects.pop(("LLMService", "team-a", "tiny"))
    r.reconcile("team-a", "tiny")
    assert len(r.secret_watch) == 0, "a deleted service's Secrets are no longer read"


def test_a_pod_gone_between_list_and_patch_does_not_fail_the_reconcile(settings):
    doc = sample_doc("cpu-tiny.yaml")
    doc["metadata"].update(namespace="team-a", uid="u-1", generation=1)
    secret = {"kind": "Secret", "metadata": {"name": "llm-keys", "namespace": "team-a", "resourceVersion": "1"}}
    secret["data"] = {"api-keys.map": "c2stYSB0ZWFtLWEK"}
    claim = {"kind": "PersistentVolumeClaim", "metadata": {"name": "tiny-models", "namespace": "team-a"}}

    class Vanishing(DictKube):
        def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
            if name == "tiny-worker-gone":
                raise NotFoundError(ApiException(status=404, reason="Not Found"))
            super().merge_patch(api_version, kind, namespace, name, body)

    pods = [_pod("tiny-worker-gone", ["ray", "edge"]), _pod("tiny-worker-a", ["ray", "edge"])]
    kube = Vanishing(doc, secret, claim, *pods)
    r = Reconciler(kube, settings)  # type: ignore[arg-type]
    r.reconcile("team-a", "tiny")
    kube.objects[("Secret", "team-a", "llm-keys")]["metadata"]["resourceVersion"] = "2"
    r.secret_watch.poll()
    outcome = r.reconcile("team-a", "tiny")
    assert outcome is not None and "Pod/tiny-worker-a" in outcome.applied
    assert "Pod/tiny-worker-gone" not in outcome.applied


def test_a_write_the_api_server_refuses_is_told_in_the_status_until_it_goes_through(settings):
    """A suspended service's RayService must go, but the operator's role may not delete it (a
    chart without the verb, seen on the real node; an admission policy answers the same way):
    the status turns Degraded with the API server's own words instead of staying Ready, the
    other writes still happen, and once the delete goes through the status says Suspended."""
    doc = with_spec(sample_doc("cpu-tiny.yaml"), ingress={"sidecar": False})
    doc["metadata"].update(namespace="team-a", uid="u-1", generation=1)
    claim = {"kind": "PersistentVolumeClaim", "metadata": {"name": "tiny-models", "namespace": "team-a"}}
    denied = json.dumps({
        "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'rayservices.ray.io "tiny" is forbidden: User "system:serviceaccount:llmservice-system:'
                   'llmservice-operator" cannot delete resource "rayservices" in API group "ray.io"',
    })  # fmt: skip

    class NoDelete(DictKube):
        allowed = False

        def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
            if kind == "RayService" and not self.allowed:
                refused = ApiException(status=403, reason="Forbidden")
                refused.body = denied  # what the API server answers
                raise ForbiddenError(refused)
            super().delete(api_version, kind, namespace, name)

    kube = NoDelete(doc, claim)
    r = Reconciler(kube, settings)  # type: ignore[arg-type]
    _settle(r, "team-a", "tiny")
    assert ("RayService", "team-a", "tiny") in kube.objects
    kube.objects[("LLMService", "team-a", "tiny")]["spec"]["suspend"] = True
    kube.objects[("LLMService", "team-a", "tiny")]["metadata"]["generation"] = 2

    _settle(r, "team-a", "tiny")
    outcome = r.reconcile("team-a", "tiny")
    assert outcome is not None and outcome.refused, "retried (with backoff) while refused"
    status = kube.get_llmservice("team-a", "tiny")["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert status["phase"] == "Degraded" and degraded["reason"] == "WriteRefused", status
    assert degraded["message"].startswith('delete RayService tiny: rayservices.ray.io "tiny" is forbidden'), degraded
    assert ("Warning", "WriteRefused", degraded["message"]) in kube.events

    kube.allowed = True  # the role fixed
    _settle(r, "team-a", "tiny")
    assert ("RayService", "team-a", "tiny") not in kube.objects
    status = kube.get_llmservice("team-a", "tiny")["status"]
    assert status["phase"] == "Suspended", status
    assert next(c for c in status["conditions"] if c["type"] == "Degraded")["status"] == "False"
