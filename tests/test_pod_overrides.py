"""What users add to the Ray pods and the Service: pod overrides, Secret env, a ServiceAccount,
the Service's exposure; rendered, accepted by KubeRay's schema, checked before applying."""

from __future__ import annotations

import pytest

from llmservice_operator.api import parse
from llmservice_operator.controller.drift import exposure_patch
from llmservice_operator.controller.preflight import problems, referenced
from llmservice_operator.render import render
from llmservice_operator.render.rayservice import exposure

from .conftest import sample_doc, with_spec
from .kube_schema import check, kuberay_crd, open_api_schema
from .test_validation import POD_OVERRIDES

OVERRIDES = {
    "ray__headPod": {"labels": {"tier": "head"}, "nodeSelector": {"example.com/system": "true"}},
    "ray__workerPods": POD_OVERRIDES,
    "ray__serviceAccountName": "llm-serving",
    "ray__secretEnv": {
        "AWS_ACCESS_KEY_ID": {"name": "s3-credentials", "key": "access-key-id"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-credentials", "key": "secret-access-key"},
    },
}


@pytest.fixture(scope="module")
def rayservice_schema():
    return open_api_schema(kuberay_crd("rayservices"), "v1")


def _pods(sample: str, **changes) -> tuple[dict, dict, dict]:
    rs = render(parse(with_spec(sample_doc(sample), **changes))).ray_service
    cluster = rs["spec"]["rayClusterConfig"]
    return rs, cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]


@pytest.mark.parametrize("sample", ["gemma-b200.yaml", "cpu-tiny.yaml", "tpu-v6e-4x4-multihost.yaml"])
def test_overrides_reach_the_pods_beside_what_the_operator_renders(sample, rayservice_schema):
    _, _, plain_worker = _pods(sample)
    rs, head, worker = _pods(sample, **OVERRIDES)
    assert check(rs, rayservice_schema) == []
    assert worker["metadata"]["labels"] == {**POD_OVERRIDES["labels"], **plain_worker["metadata"]["labels"]}
    assert head["metadata"]["labels"]["tier"] == "head" and "tier" not in worker["metadata"]["labels"]
    assert worker["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    assert "llmservice.dev/engine" in worker["metadata"]["annotations"], "the engine digest stays"
    rendered_selector = plain_worker["spec"].get("nodeSelector", {})
    assert worker["spec"]["nodeSelector"] == {**rendered_selector, "example.com/dedicated": "llm"}
    assert head["spec"]["nodeSelector"]["example.com/system"] == "true"
    assert worker["spec"]["tolerations"][: len(plain_worker["spec"].get("tolerations", []))] == plain_worker[
        "spec"
    ].get("tolerations", [])
    assert {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"} | {
        "tolerationSeconds": 60
    } in worker["spec"]["tolerations"]
    for pod in (head, worker):
        assert pod["spec"]["serviceAccountName"] == "llm-serving"
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
            "secretKeyRef": {"name": "s3-credentials", "key": "access-key-id"}
        }


@pytest.mark.parametrize(
    ("exposure_spec", "svc_type", "annotations"),
    [
        ({}, "ClusterIP", None),
        ({"type": "InternalLoadBalancer"}, "LoadBalancer", {"networking.gke.io/load-balancer-type": "Internal"}),
        ({"type": "ExternalLoadBalancer", "annotations": {"cloud.google.com/l4-rbs": "enabled"}}, "LoadBalancer", {}),
    ],
)
def test_exposure_renders_the_serve_service(exposure_spec, svc_type, annotations, rayservice_schema):
    ingress = {"apiKeysSecret": "llm-keys", "service": exposure_spec}
    rs = render(parse(with_spec(sample_doc("gemma-b200.yaml"), ingress=ingress))).ray_service
    assert check(rs, rayservice_schema) == []
    service = rs["spec"]["serveService"]
    assert service["spec"]["type"] == svc_type
    if annotations is None:
        assert "annotations" not in service["metadata"]
    else:
        assert annotations.items() <= service["metadata"]["annotations"].items()


def _exposure(**service) -> tuple[dict, dict]:
    spec = parse(
        with_spec(sample_doc("gemma-b200.yaml"), ingress={"apiKeysSecret": "llm-keys", "service": service})
    ).spec
    meta, svc_spec = exposure(spec)
    return meta.get("annotations", {}), svc_spec


def test_exposure_changes_reach_a_live_service_and_leave_no_annotation_behind():
    """KubeRay never rewrites a live Service's annotations: the operator patches them."""
    annotations, spec = _exposure(type="InternalLoadBalancer", loadBalancerSourceRanges=["10.0.0.0/8"])
    live = {"metadata": {"annotations": {**annotations, "kept": "x"}}, "spec": {**spec, "clusterIP": "10.1.2.3"}}
    assert exposure_patch(live, annotations, spec) is None, "nothing to write when it matches"
    annotations, spec = _exposure()  # back to ClusterIP
    patch = exposure_patch(live, annotations, spec)
    assert patch == {
        "metadata": {
            "annotations": {"networking.gke.io/load-balancer-type": None, "llmservice.dev/service-annotations": None}
        },
        "spec": {"type": "ClusterIP", "loadBalancerSourceRanges": None},
    }


def test_preflight_names_missing_env_secrets_and_service_account():
    svc = parse(with_spec(sample_doc("cpu-tiny.yaml"), **OVERRIDES))
    objects: dict = {
        ("Secret", "default", "llm-keys"): {"data": {"api-keys.map": "x"}},
        ("Secret", "default", "s3-credentials"): {"data": {"access-key-id": "x"}},
        ("PersistentVolumeClaim", "default", "tiny-models"): {},
    }
    found = _problems(svc, objects)
    assert found == [
        "spec.ray.secretEnv.AWS_SECRET_ACCESS_KEY: Secret default/s3-credentials has no key secret-access-key: add it",
        "spec.ray.serviceAccountName: ServiceAccount default/llm-serving not found: create it",
    ]
    objects[("Secret", "default", "s3-credentials")]["data"]["secret-access-key"] = "y"
    objects[("ServiceAccount", "default", "llm-serving")] = {}
    assert _problems(svc, objects) == []


def _problems(svc, objects):
    found = {(k, n): objects.get((k, svc.metadata.namespace, n)) for k, n in referenced(svc)}
    return problems(svc, found)[0]
