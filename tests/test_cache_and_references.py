"""What the controller keeps in memory: the watch cache's slim copies, and recently found
references (Secrets by key names only)."""

from __future__ import annotations

from typing import Any

from llmservice_operator.controller import cache as cache_mod
from llmservice_operator.controller import preflight
from llmservice_operator.controller.cache import Cache

from .conftest import parse, sample_doc


def _obj(kind: str, name: str, rv: int, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "resourceVersion": str(rv), "managedFields": [{"manager": "x"}]}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, **extra}


def test_the_cache_keeps_what_reconciles_read_and_gives_memory_back_when_it_halves(monkeypatch):
    released = []
    monkeypatch.setattr(cache_mod.memory, "release", lambda: released.append(1))
    c = Cache()
    group = {"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 2, "template": {"big": "x" * 1000}}
    event = _obj("RayCluster", "rc", 5, spec={"workerGroupSpecs": [group]}, status={"readyWorkerReplicas": 2})
    c.put(event)
    kept = c.get("RayCluster", "ns", "rc")
    # Its status and its worker groups' sizes; not the pod templates.
    sizes = {"workerGroupSpecs": [{"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 2}]}
    assert kept == {
        "apiVersion": "v1", "kind": "RayCluster", "metadata": kept["metadata"], "status": event["status"], "spec": sizes
    }  # fmt: skip
    assert "managedFields" not in kept["metadata"] and "managedFields" in event["metadata"], "kopf's dict untouched"
    c.put(_obj("ConfigMap", "cm", 7, data={"k": "v"}))
    assert c.get("ConfigMap", "ns", "cm")["data"] == {"k": "v"}
    for i in range(100):
        c.put(_obj("ConfigMap", f"m{i}", 10 + i))
    for i in range(50):
        c.delete("ConfigMap", "ns", f"m{i}")
    assert not released
    c.delete("ConfigMap", "ns", "m50")  # 51 of 102 left: halved
    assert released == [1]


def test_a_shared_secret_is_read_once_per_ttl_by_its_key_names_only():
    now = [0.0]
    reads: list[tuple[str, str, str]] = []
    store = {("Secret", "ns", "hf-token"): {"metadata": {"resourceVersion": "7"}, "data": {"token": "c2VjcmV0"}}}

    def get(kind: str, ns: str, name: str) -> dict[str, Any] | None:
        reads.append((kind, ns, name))
        return store.get((kind, ns, name))

    refs = preflight.References(get, ttl=10, clock=lambda: now[0])
    kept = {"data": {"token": ""}, "metadata": {"resourceVersion": "7"}}
    assert refs.get("Secret", "ns", "hf-token") == kept, "its key names and version, never its data"
    refs.get("Secret", "ns", "hf-token")
    assert len(reads) == 1
    now[0] = 11
    refs.get("Secret", "ns", "hf-token")
    assert len(reads) == 2, "read again after the ttl"
    assert refs.get("Secret", "ns", "missing") is None and refs.get("Secret", "ns", "missing") is None
    assert len(reads) == 4, "what is not found is read every time"


def test_a_secret_that_fails_its_check_is_read_again_on_the_retry():
    doc = sample_doc("gemma-b200.yaml")
    doc["metadata"]["namespace"] = "ns"
    svc = parse(doc)
    hf = svc.spec.model.hf_token_secret
    assert hf is not None
    secrets = {hf.name: {"data": {"wrong": ""}}}
    reads: list[str] = []

    def get(kind: str, ns: str, name: str) -> dict[str, Any] | None:
        reads.append(name)
        return secrets.get(name)

    refs = preflight.References(get, ttl=60)

    def check() -> list[str]:
        """What a reconcile does: observe reads the references, decide checks them, and what
        failed a check is forgotten (reconcile.Reconciler)."""
        found = {(kind, name): refs.get(kind, "ns", name) for kind, name in preflight.referenced(svc)}
        problems, stale = preflight.problems(svc, found)
        for name in stale:
            refs.forget("Secret", "ns", name)
        return problems

    assert any(f"has no key {hf.key}" in p for p in check())
    secrets[hf.name] = {"data": {hf.key: ""}}  # the user adds the key
    assert check() == []
    assert reads.count(hf.name) == 2
    assert check() == [] and reads.count(hf.name) == 2, "now remembered"


def test_a_cached_pod_keeps_where_it_stands_and_when_its_containers_started():
    """What status reads of a Ray pod (scheduling, readiness, container starts for
    status.startup, what it mounts), not its containers' specs or their other state."""
    started = {"running": {"startedAt": "2026-12-07T10:00:03Z"}}
    status = {
        "phase": "Running",
        "podIP": "10.0.0.1",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [
            {"name": "ray", "state": started, "image": "x", "lastState": {"terminated": {"exitCode": 1}}},
            {"name": "edge", "state": {"waiting": {"reason": "ContainerCreating"}}},
        ],
    }
    spec = {"nodeName": "n", "containers": [{"name": "ray", "env": [{"name": "BIG", "value": "x" * 100}]}]}
    c = Cache()
    c.put(_obj("Pod", "p", 3, spec=spec, status=status))
    kept = c.get("Pod", "ns", "p")
    assert kept["status"] == {
        "phase": "Running",
        "podIP": "10.0.0.1",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "ray", "state": started}, {"name": "edge", "state": {}}],
    }
    assert kept["spec"]["containers"] == [{"name": "ray"}]
