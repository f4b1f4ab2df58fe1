"""The controller's pure helpers: when to write, and what references must exist."""

from __future__ import annotations

import yaml

from llmservice_operator.api import parse
from llmservice_operator.controller.cache import _slim
from llmservice_operator.controller.decide import EVENT_MESSAGE_LIMIT, decide, start_failure_message
from llmservice_operator.controller.drift import contains, merge_patch, plan, up_to_date
from llmservice_operator.controller.observe import Observed
from llmservice_operator.controller.preflight import problems, referenced
from llmservice_operator.controller.rootcause import RootCause
from llmservice_operator.render.serve_config import initial_replicas
from llmservice_operator.settings import OperatorSettings

from .conftest import sample_doc, with_spec


def test_contains_ignores_server_added_fields():
    desired = {"spec": {"a": 1, "l": [{"x": 1}]}}
    live = {"spec": {"a": 1, "b": 2, "l": [{"x": 1, "default": True}]}, "status": {}}
    assert contains(live, desired)
    assert not contains({"spec": {"a": 2, "l": [{"x": 1}]}}, desired)
    assert not contains({"spec": {"a": 1, "l": [{"x": 1}, {"x": 2}]}}, desired)
    assert not contains({"spec": {"l": [{"x": 1}]}}, desired)


def test_up_to_date_needs_a_live_object():
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}}
    assert not up_to_date(None, obj)
    assert up_to_date({"metadata": {"name": "a", "uid": "u"}, "data": {"k": "v"}}, obj)
    assert not up_to_date({"metadata": {"name": "a"}, "data": {"k": "edited"}}, obj)


def test_merge_patch_nulls_what_went_away():
    prev = {"phase": "Ready", "children": {"rayCluster": "a", "edgeConfig": "e"}, "endpoint": "x"}
    new = {"phase": "Degraded", "children": {"rayCluster": "a"}}
    assert merge_patch(prev, new) == {
        "phase": "Degraded",
        "children": {"rayCluster": "a", "edgeConfig": None},
        "endpoint": None,
    }


def test_preflight_names_missing_secrets_and_keys():
    svc = parse(with_spec(sample_doc("prefix-aware-lora.yaml"), model__source="pvc://weights/llama"))
    objects = {("Secret", "default", "hf-token"): {"data": {"other": "x"}}}
    found = _problems(svc, objects)
    assert "spec.model.hfTokenSecret: Secret default/hf-token has no key token: add it" in found
    assert "spec.ingress.apiKeysSecret: Secret default/llm-keys not found: create it" in found
    assert "spec.model.source: PersistentVolumeClaim default/weights not found: create it" in found
    objects[("Secret", "default", "hf-token")] = {"data": {"token": "x"}}
    objects[("Secret", "default", "llm-keys")] = {"data": {"api-keys.map": "x"}}
    objects[("PersistentVolumeClaim", "default", "weights")] = {}
    assert _problems(svc, objects) == []


def test_preflight_names_the_s3_credential_keys_the_pods_read():
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"),
        model__source="s3://weights/tiny",
        model__storage={"s3": {"credentialsSecret": "s3"}},
    )
    svc = parse(doc)
    found = _problems(svc, {("Secret", "default", "s3"): {"data": {"AWS_ACCESS_KEY_ID": "x"}}})
    assert (
        "spec.model.storage.s3.credentialsSecret: Secret default/s3 has no key AWS_SECRET_ACCESS_KEY: add it" in found
    )
    both = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    assert not [p for p in _problems(svc, {("Secret", "default", "s3"): {"data": both}}) if "s3" in p]


def _cm(name: str, data: str, owner: str | None = None) -> dict:
    meta: dict = {"name": name}
    if owner:
        meta["ownerReferences"] = [{"kind": "LLMService", "name": owner}]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": data}}


def test_plan_writes_only_what_differs_and_prunes_only_its_own_optional_children():
    """decide() of a reconcile over a dict of live objects: the RayService is in sync, the
    edge ConfigMap was edited by hand, the PDB is no longer wanted (ours: deleted), and a
    same-named PDB of someone else's would be left alone."""
    rs = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "svc"}, "spec": {"x": 1}}
    edge = _cm("svc-edge", "want")
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "svc-workers"}}
    optional = [("v1", "ConfigMap", "svc-edge"), ("policy/v1", "PodDisruptionBudget", "svc-workers")]
    ours = [{"kind": "LLMService", "name": "svc"}]
    live = {
        ("RayService", "svc"): {**rs, "status": {"ready": True}},
        ("ConfigMap", "svc-edge"): _cm("svc-edge", "edited by hand", owner="svc"),
        ("PodDisruptionBudget", "svc-workers"): {**pdb, "metadata": {**pdb["metadata"], "ownerReferences": ours}},
    }
    todo = plan([rs, edge], live, optional, "svc")
    assert todo.apply == [edge]
    assert todo.delete == [("policy/v1", "PodDisruptionBudget", "svc-workers")]
    live[("PodDisruptionBudget", "svc-workers")] = {**pdb}  # no owner: not ours
    live[("ConfigMap", "svc-edge")] = _cm("svc-edge", "want", owner="svc")
    assert plan([rs, edge], live, optional, "svc").delete == []
    assert plan([rs, edge], live, optional, "svc").apply == [], "in sync: no write at all"
    assert plan([rs, edge], {}, optional, "svc").apply == [rs, edge], "a new service: everything"


def test_bounds_patch_carries_the_replica_bounds_to_a_running_ray_cluster():
    """KubeRay leaves min/max replicas out of what makes it update a running RayCluster: the
    operator patches them (and replicas, into the new range), guarded by each group's name."""
    from llmservice_operator.controller.drift import bounds_patch
    from llmservice_operator.render import render

    svc = parse(with_spec(sample_doc("cpu-tiny.yaml"), replicas={"min": 2, "max": 3}))
    rs = render(svc).ray_service
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    cluster = {"spec": {"workerGroupSpecs": [{"groupName": group, "replicas": 1, "minReplicas": 1, "maxReplicas": 1}]}}
    assert bounds_patch(cluster, rs) == [
        {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": group},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 2},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 3},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2},
    ]
    # The autoscaler's replicas inside the range are its own; nothing to do when in line.
    cluster["spec"]["workerGroupSpecs"][0] |= {"replicas": 3, "minReplicas": 2, "maxReplicas": 3}
    assert bounds_patch(cluster, rs) is None
    # A group the RayService no longer has is not touched.
    assert bounds_patch({"spec": {"workerGroupSpecs": [{"groupName": "gone", "minReplicas": 9}]}}, rs) is None


def _problems(svc, objects):
    found = {(k, n): objects.get((k, svc.metadata.namespace, n)) for k, n in referenced(svc)}
    return problems(svc, found)[0]


def test_a_start_failure_event_leads_with_the_cause_and_keeps_it_under_the_event_limit():
    """vLLM's worker traceback runs to kilobytes: cut at the Event API's limit from the front,
    the exception at its end was the part lost ('No common block size for 7')."""
    text = "\n".join(f"(Worker pid=808) ERROR 12-06 14:14:41 frame {i} " + "x" * 60 for i in range(40))
    cause = RootCause("ValueError: No common block size for 7.", text + "\nValueError: No common block size for 7.")
    msg = start_failure_message("LLMServer:tiny-llama", cause)
    assert msg.startswith("LLMServer:tiny-llama: ValueError: No common block size for 7.\n")
    assert len(msg) <= EVENT_MESSAGE_LIMIT
    assert msg.endswith("\nValueError: No common block size for 7.")  # the log's own last lines


def _decided_rayservice(doc: dict, live: dict | None, desired_workers: int) -> dict | None:
    """The RayService decide() applies for `doc` over a `live` one whose active cluster has
    `desired_workers` worker pods (the Ray autoscaler's count); None: no write."""
    body = {**doc, "metadata": {**doc["metadata"], "namespace": "default", "uid": "u1", "generation": 2}}
    if live is not None:
        live = {**live, "status": {"activeServiceStatus": {"rayClusterName": "c1"}}}
    clusters = {"c1": {"status": {"desiredWorkerReplicas": desired_workers}}} if live is not None else {}
    svc = parse(body)
    present = {"data": {"api-keys.map": "x"}, "status": {"phase": "Bound"}}  # the key file; a bound PVC
    obs = Observed(
        namespace="default",
        name=body["metadata"]["name"],
        body=body,
        svc=svc,
        references={ref: present for ref in referenced(svc)},
        ray_service=live,
        clusters=clusters,
        children={("RayService", body["metadata"]["name"]): live},
    )
    return next((o for o in decide(obs, OperatorSettings()).apply if o["kind"] == "RayService"), None)


def _initial(rs: dict) -> int | None:
    return initial_replicas(yaml.safe_load(rs["spec"]["serveConfigV2"]))


def test_a_running_service_keeps_its_replica_count_through_a_serve_config_change():
    """Ray sets an autoscaling deployment back to initial_replicas on any change of its
    config. A service Serve scaled to 3 replicas gets a new replicas.max: its config carries
    the 3 running (not the spec's 1), and no later reconcile writes it back; a change of
    replicas.initial alone rewrites nothing (it counts when Serve starts the model)."""
    doc = with_spec(sample_doc("cpu-tiny.yaml"), replicas={"min": 1, "max": 4})
    first = _decided_rayservice(doc, None, 0)
    assert first is not None and _initial(first) == 1
    assert _decided_rayservice(doc, first, 3) is None, "in sync"
    wider = with_spec(doc, replicas={"min": 1, "max": 6})
    changed = _decided_rayservice(wider, first, 3)
    assert changed is not None and _initial(changed) == 3
    assert _decided_rayservice(wider, changed, 1) is None, "the carried count stays as Serve scales"
    assert _decided_rayservice(with_spec(wider, replicas={"min": 1, "max": 6, "initial": 2}), changed, 1) is None
    narrower = _decided_rayservice(with_spec(doc, replicas={"min": 1, "max": 2}), changed, 3)
    assert narrower is not None and _initial(narrower) == 2, "within the new bounds"
    to_zero = _decided_rayservice(with_spec(doc, replicas={"min": 0, "max": 4, "initial": 1}), first, 0)
    assert to_zero is not None and _initial(to_zero) == 0, "a service at zero stays at zero"


def test_suspend_deletes_the_rayservice_and_resume_applies_it_again():
    doc = sample_doc("cpu-tiny.yaml")
    running = _decided_rayservice(doc, None, 0)
    assert running is not None
    body = {**doc, "metadata": {**doc["metadata"], "namespace": "default", "uid": "u1", "generation": 3}}
    body = with_spec(body, suspend=True)
    svc = parse(body)
    live = {**running, "metadata": {**running["metadata"], "ownerReferences": [{"kind": "LLMService", "name": "tiny"}]}}
    obs = Observed(
        namespace="default",
        name="tiny",
        body=body,
        svc=svc,
        references={ref: {"data": {"api-keys.map": "x"}} for ref in referenced(svc)},
        ray_service=live,
        children={("RayService", "tiny"): live},
    )
    actions = decide(obs, OperatorSettings())
    assert ("ray.io/v1", "RayService", "tiny") in actions.delete
    assert actions.status is not None and actions.status.phase == "Suspended"
    assert _decided_rayservice(doc, None, 0) is not None, "resumed: applied again"


def _policy_ports(doc: dict, pods: list[dict]) -> list[str]:
    body = {**doc, "metadata": {**doc["metadata"], "namespace": "default", "uid": "u1", "generation": 2}}
    svc = parse(body)
    obs = Observed(
        namespace="default",
        name="tiny",
        body=body,
        svc=svc,
        references={ref: {"data": {"api-keys.map": "x"}, "status": {"phase": "Bound"}} for ref in referenced(svc)},
        ray_service={"status": {"activeServiceStatus": {"rayClusterName": "new"}}},
        pods=tuple(_slim(p) for p in pods),  # what the operator's cache keeps of a pod
    )
    policy = next(o for o in decide(obs, OperatorSettings()).apply if o["kind"] == "NetworkPolicy")
    open_to_all = next(r for r in policy["spec"]["ingress"] if "from" not in r)
    return [p["port"] for p in open_to_all["ports"]]


def test_the_old_clusters_serving_port_stays_open_until_its_pods_are_gone():
    """The sidecar switched off on a running service: the new cluster serves on Ray Serve's
    port, but the old one still serves through its sidecar until KubeRay has taken it down.
    The policy keeps the sidecar's port open while one of its pods runs (on the real node the
    old pods refused every request at once: e2e/tests/test_sidecar_off.py). Turned on again,
    the old workers' Ray Serve port stays open the same way."""

    def pod(cluster: str, containers: list[str], phase: str = "Running", node: str = "worker") -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{cluster}-{node}", "labels": {"ray.io/cluster": cluster, "ray.io/node-type": node}},
            "spec": {"containers": [{"name": c, "image": "ray", "env": []} for c in containers]},
            "status": {"phase": phase},
        }

    off = with_spec(sample_doc("cpu-tiny.yaml"), ingress={"sidecar": False})
    new_head, new_worker = pod("new", ["ray"], node="head"), pod("new", ["ray"])
    assert _policy_ports(off, [pod("old", ["ray", "edge"]), new_head, new_worker]) == ["edge", "serve"]
    assert _policy_ports(off, [pod("old", ["ray", "edge"], "Succeeded"), new_head, new_worker]) == ["serve"]
    on = sample_doc("cpu-tiny.yaml")
    head = pod("new", ["ray"], node="head")  # a head that serves no replica has no sidecar
    assert _policy_ports(on, [pod("old", ["ray"]), head, pod("new", ["ray", "edge"])]) == ["edge", "serve"]
    assert _policy_ports(on, [head, pod("new", ["ray", "edge"])]) == ["edge"]
