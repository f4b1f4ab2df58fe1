"""The operator against a real API server: children, status, drift, deletion, no-op reconciles.

In random namespaces KubeRay does not run (see Cluster.kuberay_namespaces), so the tests play
KubeRay by writing RayService status; in the `kuberay` namespace the real KubeRay operator acts.
The played states are those of GPU services (B200, H100 ...), which cannot run on this machine:
Ready, a failed Serve application, an upgrade. The CPU service reaches Ready, an upgrade, a head
restart and deletion for real on the local cluster's node (test_serving.py).
"""

from __future__ import annotations

import base64
import collections
import threading
import time
from typing import Any

import pytest
import yaml
from kubernetes.config import new_client_from_config

from e2e import serving
from e2e.cluster import Cluster
from llmservice_operator.api import parse
from llmservice_operator.catalog import labels
from llmservice_operator.controller.drift import up_to_date
from llmservice_operator.controller.kube import Kube
from llmservice_operator.render import render
from tests.conftest import SAMPLES, sample_doc, with_spec
from tests.test_validation import CASES, GOOD_CASES

from .conftest import Operator

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # audit log, node, simulated nodes


def _secret(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _secrets(namespace: str) -> list[dict[str, Any]]:
    """What the samples reference: Secrets, and the claim the CPU sample's model is on."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "tiny-models", "namespace": namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    return [
        _secret(namespace, "hf-token", {"token": "hf_test"}),
        _secret(namespace, "llm-keys", {"api-keys.map": "sk-a team-a\n"}),
        claim,
    ]


def _in(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    doc["metadata"]["namespace"] = namespace
    return doc


def _get(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    res = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return yaml.safe_load(res.stdout) if res.returncode == 0 else None


def _wait_status(cluster: Cluster, namespace: str, name: str, pred, what: str, timeout: float = 30) -> dict:
    found: dict[str, Any] = {}

    def ok() -> bool:
        obj = _get(cluster, "llmsvc", namespace, name)
        found["status"] = (obj or {}).get("status") or {}
        return obj is not None and pred(found["status"])

    cluster.wait_for(f"{namespace}/{name} {what}", ok, timeout)
    return found["status"]


def _cond(status: dict, ctype: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), {})


def _desired_rayservice(doc: dict[str, Any]) -> dict[str, Any]:
    """What the suite's operator renders: its settings are the local cluster's images."""
    return render(parse(doc), serving.OPERATOR_SETTINGS).ray_service


def test_every_sample_becomes_its_rendered_children(cluster: Cluster, operator: Operator, namespace: str):
    cluster.apply(_secrets(namespace))
    docs = [_in(yaml.safe_load(p.read_text()), namespace) for p in SAMPLES]
    cluster.apply(docs)
    for doc in docs:
        name = doc["metadata"]["name"]
        desired = _desired_rayservice(doc)
        cluster.wait_for(
            f"RayService {name} as rendered",
            lambda n=name, d=desired: up_to_date(_get(cluster, "rayservice", namespace, n), d),
        )
        rs = _get(cluster, "rayservice", namespace, name)
        [owner] = rs["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("LLMService", name, True)
        status = _wait_status(cluster, namespace, name, lambda s: s.get("phase") == "Provisioning", "Provisioning")
        assert status["observedGeneration"] == 1
        assert _cond(status, "Progressing")["status"] == "True"
    assert _get(cluster, "configmap", namespace, "gemma-edge") is not None
    assert _get(cluster, "pdb", namespace, "qwen-l4-workers") is None  # min 0: no floor to protect
    table = cluster.kubectl("get", "llmsvc", "-n", namespace).stdout
    assert "nvidia-b200" in table and "tpu-v6e" in table and "Provisioning" in table


def _play_kuberay(cluster: Cluster, namespace: str, name: str, app: str = "RUNNING", ready: bool = True) -> None:
    rs = _get(cluster, "rayservice", namespace, name)
    status = {
        "observedGeneration": rs["metadata"]["generation"],
        "numServeEndpoints": 8 if ready else 0,
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "activeServiceStatus": {
            "rayClusterName": f"{name}-x1y2z",
            "applicationStatuses": {"llm": {"status": app, "message": "replica crashed" if app != "RUNNING" else ""}},
            "rayClusterStatus": {"readyWorkerReplicas": 8 if ready else 0, "desiredWorkerReplicas": 8},
        },
    }
    cluster.kubectl(
        "patch", "rayservice", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", yaml.safe_dump({"status": status}),
    )  # fmt: skip


def _events(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    items = cluster.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["type"], e["reason"]) for e in items]


def test_status_follows_the_rayservice(cluster: Cluster, operator: Operator, namespace: str):
    cluster.apply([*_secrets(namespace), _in(sample_doc("gemma-b200.yaml"), namespace)])
    cluster.wait_for("RayService", lambda: _get(cluster, "rayservice", namespace, "gemma") is not None)
    _play_kuberay(cluster, namespace, "gemma")
    status = _wait_status(cluster, namespace, "gemma", lambda s: s.get("phase") == "Ready", "Ready")
    assert status["endpoint"] == f"http://gemma.{namespace}.svc:8000/v1"
    assert status["replicas"] == {"ready": 8, "desired": 8}
    assert _cond(status, "Ready")["reason"] == "ServingTraffic"
    assert status["children"]["rayCluster"] == "gemma-x1y2z"
    table = cluster.kubectl("get", "llmsvc", "gemma", "-n", namespace).stdout
    assert "True" in table and "Ready" in table and f"gemma.{namespace}.svc" in table
    _play_kuberay(cluster, namespace, "gemma", app="DEPLOY_FAILED", ready=False)
    status = _wait_status(cluster, namespace, "gemma", lambda s: s.get("phase") == "Degraded", "Degraded")
    assert "replica crashed" in _cond(status, "Degraded")["message"]
    cluster.wait_for(
        "Events for both transitions",
        lambda: (
            {("Normal", "ServingTraffic"), ("Warning", "ServeApplicationFailed")}
            <= set(_events(cluster, namespace, "gemma"))
        ),
    )


def test_spec_change_updates_the_rayservice(cluster: Cluster, operator: Operator, namespace: str):
    doc = _in(sample_doc("tpu-v6e-2x4.yaml"), namespace)
    cluster.apply([doc])
    cluster.wait_for("RayService", lambda: _get(cluster, "rayservice", namespace, "gemma-tpu") is not None)
    changed = with_spec(doc, model__name="gemma-3-27b-v2", replicas={"min": 2, "max": 6})
    cluster.apply([changed])
    desired = _desired_rayservice(changed)
    cluster.wait_for(
        "the RayService to follow the new spec",
        lambda: up_to_date(_get(cluster, "rayservice", namespace, "gemma-tpu"), desired),
    )
    rs = _get(cluster, "rayservice", namespace, "gemma-tpu")
    assert "model_id: gemma-3-27b-v2" in rs["spec"]["serveConfigV2"]
    assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 6
    status = _wait_status(cluster, namespace, "gemma-tpu", lambda s: s.get("observedGeneration") == 2, "at gen 2")
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])


def test_deleted_or_edited_children_are_restored(cluster: Cluster, operator: Operator, namespace: str):
    cluster.apply([*_secrets(namespace), _in(sample_doc("gemma-b200.yaml"), namespace)])
    cluster.wait_for("edge ConfigMap", lambda: _get(cluster, "configmap", namespace, "gemma-edge") is not None)
    original = _get(cluster, "configmap", namespace, "gemma-edge")["data"]["haproxy.cfg"]
    cluster.kubectl(
        "patch", "configmap", "gemma-edge", "-n", namespace, "--type=merge", "-p", '{"data":{"haproxy.cfg":"x"}}'
    )
    cluster.wait_for(
        "the hand edit to be reverted",
        lambda: _get(cluster, "configmap", namespace, "gemma-edge")["data"]["haproxy.cfg"] == original,
    )
    uid = _get(cluster, "rayservice", namespace, "gemma")["metadata"]["uid"]
    cluster.kubectl("delete", "rayservice", "gemma", "-n", namespace)
    cluster.wait_for(
        "the RayService to be recreated",
        lambda: (
            (_get(cluster, "rayservice", namespace, "gemma") or {}).get("metadata", {}).get("uid") not in (None, uid)
        ),
    )


def test_deleting_the_llmservice_removes_its_children(cluster: Cluster, operator: Operator, namespace: str):
    cluster.apply([*_secrets(namespace), _in(sample_doc("gemma-b200.yaml"), namespace)])
    children = (
        ("rayservice", "gemma"),
        ("configmap", "gemma-edge"),
        ("pdb", "gemma-workers"),
        ("networkpolicy", "gemma-ray"),
        ("secret", "gemma-ray-auth"),
    )
    cluster.wait_for("children", lambda: all(_get(cluster, kind, namespace, name) for kind, name in children))
    cluster.kubectl("delete", "llmsvc", "gemma", "-n", namespace)
    cluster.wait_for(
        "garbage collection of every child",
        lambda: all(_get(cluster, kind, namespace, name) is None for kind, name in children),
    )


def test_exposure_changes_reach_the_live_service(cluster: Cluster, operator: Operator, namespace: str):
    """KubeRay writes the Service it makes from serveService once, and its spec again only when
    traffic moves to a new Ray cluster: the operator changes the live Service's exposure."""
    lb = {"type": "InternalLoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"]}
    doc = with_spec(_in(sample_doc("gemma-b200.yaml"), namespace), ingress={"apiKeysSecret": "llm-keys", "service": lb})
    cluster.apply([*_secrets(namespace), doc])
    cluster.wait_for("RayService", lambda: _get(cluster, "rayservice", namespace, "gemma") is not None)
    # Play KubeRay: the Service from serveService, with KubeRay's selector (the API server gives
    # a LoadBalancer node ports).
    made = _get(cluster, "rayservice", namespace, "gemma")["spec"]["serveService"]
    made["metadata"]["namespace"] = namespace
    made["spec"]["selector"] = {"ray.io/serve": "true", "ray.io/cluster": "gemma-x1y2z"}
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump({"apiVersion": "v1", "kind": "Service", **made}))
    _play_kuberay(cluster, namespace, "gemma")  # the Ray cluster it serves from (gemma-x1y2z)
    live = _get(cluster, "service", namespace, "gemma")
    assert live["spec"]["type"] == "LoadBalancer" and live["spec"]["ports"][0]["nodePort"]
    assert live["metadata"]["annotations"]["networking.gke.io/load-balancer-type"] == "Internal"

    cluster.apply([with_spec(doc, ingress={"apiKeysSecret": "llm-keys"})])  # back to ClusterIP

    def cluster_ip() -> bool:
        svc = _get(cluster, "service", namespace, "gemma")
        return svc["spec"]["type"] == "ClusterIP" and not svc["metadata"].get("annotations")

    cluster.wait_for("the Service back to ClusterIP", cluster_ip)
    svc = _get(cluster, "service", namespace, "gemma")
    assert "loadBalancerSourceRanges" not in svc["spec"] and "nodePort" not in svc["spec"]["ports"][0]
    assert svc["spec"]["selector"] == made["spec"]["selector"], "KubeRay's selector is left alone"
    external = {"type": "ExternalLoadBalancer", "annotations": {"cloud.google.com/l4-rbs": "enabled"}}
    cluster.apply([with_spec(doc, ingress={"apiKeysSecret": "llm-keys", "service": external})])
    cluster.wait_for(
        "the Service external",
        lambda: (
            (_get(cluster, "service", namespace, "gemma")["metadata"].get("annotations") or {}).get(
                "cloud.google.com/l4-rbs"
            )
            == "enabled"
        ),
    )
    assert _get(cluster, "service", namespace, "gemma")["spec"]["type"] == "LoadBalancer"


def test_missing_secret_degrades_and_keeps_the_last_healthy_rayservice(
    cluster: Cluster, operator: Operator, namespace: str
):
    doc = _in(sample_doc("gemma-b200.yaml"), namespace)
    cluster.apply([doc])
    status = _wait_status(cluster, namespace, "gemma", lambda s: s.get("phase") == "Degraded", "Degraded")
    assert f"Secret {namespace}/hf-token not found" in _cond(status, "Degraded")["message"]
    assert _get(cluster, "rayservice", namespace, "gemma") is None, "nothing half-applied"
    cluster.apply(_secrets(namespace)[:1])  # the operator retries and recovers by itself
    cluster.wait_for(
        "the RayService after the Secret appears", lambda: _get(cluster, "rayservice", namespace, "gemma") is not None
    )
    before = _get(cluster, "rayservice", namespace, "gemma")["metadata"]["resourceVersion"]
    cluster.apply([with_spec(doc, ingress={"apiKeysSecret": "no-such-keys"}, model__name="renamed")])
    status = _wait_status(
        cluster,
        namespace,
        "gemma",
        lambda s: s.get("phase") == "Degraded" and s.get("observedGeneration") == 2,
        "Degraded",
    )
    assert "spec.ingress.apiKeysSecret: Secret" in _cond(status, "Degraded")["message"]
    assert _get(cluster, "rayservice", namespace, "gemma")["metadata"]["resourceVersion"] == before
    assert ("Warning", "InvalidReference") in _events(cluster, namespace, "gemma")


def test_a_reconcile_that_finds_nothing_to_change_writes_nothing(cluster: Cluster, operator: Operator, namespace: str):
    cluster.apply([*_secrets(namespace), _in(sample_doc("gemma-b200.yaml"), namespace)])
    cluster.wait_for("RayService", lambda: _get(cluster, "rayservice", namespace, "gemma") is not None)
    _play_kuberay(cluster, namespace, "gemma")
    _wait_status(cluster, namespace, "gemma", lambda s: s.get("phase") == "Ready", "Ready")
    time.sleep(2)  # let the reconciles our own writes triggered settle

    def writes() -> list[str]:
        return [
            f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('name')}"
            f"/{e['objectRef'].get('subresource', '')} {e.get('userAgent', '')[:30]}"
            for e in cluster.audit_writes(Operator.USER)
            if e["objectRef"].get("namespace") == namespace
        ]

    before_writes = writes()
    before_reconciles = operator.metric("llmservice_reconciles_total", outcome="unchanged")
    # KubeRay-style status churn (a field the LLMService does not report) and a label edit.
    for i in range(3):
        rs = _get(cluster, "rayservice", namespace, "gemma")
        rs_status = rs["status"]
        rs_status["lastUpdateTime"] = f"2026-01-01T00:00:0{i}Z"
        cluster.kubectl(
            "patch", "rayservice", "gemma", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", yaml.safe_dump({"status": rs_status}),
        )  # fmt: skip
    cluster.kubectl("label", "llmsvc", "gemma", "-n", namespace, "team=search")
    cluster.wait_for(
        "the operator to reconcile the status changes",
        lambda: operator.metric("llmservice_reconciles_total", outcome="unchanged") >= before_reconciles + 3,
    )
    time.sleep(2)
    assert writes() == before_writes


def test_invalid_specs_are_rejected_by_the_api_server_with_the_rules_message(cluster: Cluster, operator: Operator):
    """The CRD's CEL rules say exactly what `llmservice validate` says, at `kubectl apply`."""
    mismatches = []
    for base, changes, path, words in CASES:
        if path == "spec.engine.extraArgs":
            continue  # CEL cannot see the keys of extraArgs: the operator reports it as Degraded
        doc = with_spec(sample_doc(base), **changes)
        res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
        if res.returncode == 0 or path not in res.stderr or words not in res.stderr:
            mismatches.append((path, res.stderr.strip()[-300:]))
    for base, changes in GOOD_CASES:  # near the rules' edges: no rule may misfire in CEL
        doc = with_spec(sample_doc(base), **changes)
        res = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
        if res.returncode != 0:
            mismatches.append((f"valid: {changes}", res.stderr.strip()[-300:]))
    assert mismatches == []


@pytest.mark.parametrize("args", [{"max_model_len": 4096}, {"tensor-parallel-size": 2}], ids=["snake", "dash"])
def test_reserved_engine_args_in_either_spelling_degrade_with_the_field(
    cluster: Cluster, operator: Operator, namespace: str, args: dict[str, int]
):
    """vLLM reads max-model-len and max_model_len as one argument: both are refused, naming the
    field and the typed setting to use, and nothing is applied."""
    doc = _in(with_spec(sample_doc("tpu-v6e-2x4.yaml"), engine__extraArgs=args), namespace)
    cluster.apply([doc])
    status = _wait_status(cluster, namespace, "gemma-tpu", lambda s: s.get("phase") == "Degraded", "Degraded")
    assert _cond(status, "Degraded")["reason"] == "InvalidSpec"
    message = _cond(status, "Degraded")["message"]
    assert message.startswith("spec.engine.extraArgs: must not repeat a typed field"), message
    assert _get(cluster, "rayservice", namespace, "gemma-tpu") is None


def test_with_real_kuberay_pods_land_on_matching_nodes(cluster: Cluster, operator: Operator, kuberay_namespace: str):
    ns = kuberay_namespace
    cluster.apply([*_secrets(ns), _in(sample_doc("tpu-v6e-4x4-multihost.yaml"), ns)])
    cluster.wait_for(
        "KubeRay's RayCluster", lambda: bool(cluster.get_json("rayclusters", "-n", ns)["items"]), timeout=60
    )

    def workers() -> list[dict]:
        return cluster.get_json("pods", "-n", ns, "-l", "ray.io/node-type=worker")["items"]

    cluster.wait_for(
        "4 Running TPU hosts",
        lambda: len(workers()) == 4 and all(p["status"].get("phase") == "Running" for p in workers()),
        90,
    )
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in cluster.get_json("nodes")["items"]}
    pools = collections.Counter(nodes[p["spec"]["nodeName"]][labels.NODEPOOL] for p in workers())
    assert len(pools) == 1 and next(iter(pools)).startswith("ct6e-4x4-")
    status = _wait_status(cluster, ns, "llama-tpu", lambda s: s.get("children", {}).get("rayCluster"), "cluster name")
    assert status["children"]["rayCluster"] == cluster.get_json("rayclusters", "-n", ns)["items"][0]["metadata"]["name"]


def test_concurrent_reconciles_share_api_discovery_safely(cluster: Cluster, operator: Operator):
    """kopf runs reconciles in threads that share one Kube. Looking up a kind the server does
    not serve (PodMonitoring without GKE Managed Prometheus) refreshes the dynamic client's
    discovery cache; a refresh racing another thread's lookup raised KeyError('apis'), ('resources'), ... (seen
    under leader-election churn, logged as a retry forever). Every lookup must answer."""
    kinds = [
        ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "PersistentVolumeClaim"), ("policy/v1", "PodDisruptionBudget"),
        ("ray.io/v1", "RayService"), ("ray.io/v1", "RayCluster"), ("llmservice.dev/v1alpha1", "LLMService"),
    ]  # fmt: skip
    errors: list[str] = []
    for _ in range(4):  # a fresh client each round: discovery starts cold, as after a handover
        kube = Kube(new_client_from_config(str(cluster.kubeconfig)))
        start = threading.Barrier(len(kinds) * 2 + 2)

        def lookup(api_version: str, kind: str, kube: Kube = kube, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                assert kube.get(api_version, kind, "default", "absent") is None
            except Exception as e:
                errors.append(f"{kind}: {e!r}")

        def unserved(kube: Kube = kube, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                assert not kube.kind_served("monitoring.googleapis.com/v1", "PodMonitoring")
            except Exception as e:
                errors.append(f"PodMonitoring: {e!r}")

        threads = [threading.Thread(target=lookup, args=k) for k in kinds * 2]
        threads += [threading.Thread(target=unserved) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
