"""The Helm chart installed into a real API server; the operator acting with its ServiceAccount."""

from __future__ import annotations

import pytest
import yaml

from e2e.cluster import Cluster
from tests.conftest import sample_doc

from .conftest import ROOT, Operator
from .test_operator import _get, _in, _secrets, _wait_status

pytestmark = pytest.mark.e2e
NS = "llmservice-chart"  # beside the in-cluster operator's release in llmservice-system
SA = f"system:serviceaccount:{NS}:llmservice-operator"


def can_i(cluster: Cluster, *args: str) -> bool:
    res = cluster.kubectl("auth", "can-i", *args, f"--as={SA}", check=False)
    return res.stdout.strip() == "yes"


@pytest.fixture
def installed(cluster: Cluster):
    cluster.helm("install", "llmsvc", str(ROOT / "charts" / "llmservice-operator"), "-n", NS, "--create-namespace")
    yield
    cluster.helm("uninstall", "llmsvc", "-n", NS)


def test_helm_install_and_the_operator_works_with_the_charts_rbac(
    cluster: Cluster, operator: Operator, installed: None, namespace: str
):
    deploy = cluster.get_json("deployment", "llmservice-operator", "-n", NS)
    assert deploy["spec"]["replicas"] == 2
    assert cluster.get_json("clusterkopfpeering", "llmsvc-llmservice-operator")["metadata"]["name"]
    token = cluster.kubectl("create", "token", "llmservice-operator", "-n", NS, "--duration=1h").stdout.strip()
    # The suite's operator has admin rights; stop it so only the chart's identity acts.
    operator.stop()
    # With the cluster-wide grants, watching this test's namespace only (the served namespace
    # is the in-cluster operator's; a second operator there would fight it).
    as_chart = Operator(
        cluster,
        user="chart-operator",
        args=("--log-format", "text", "-n", namespace),
        kubeconfig=cluster.kubeconfig_with_token("chart-sa", token),
    )
    try:
        as_chart.start()
        cluster.apply([*_secrets(namespace), _in(sample_doc("prefix-aware-lora.yaml"), namespace)])
        status = _wait_status(
            cluster, namespace, "llama-lora", lambda s: s.get("phase") == "Provisioning", "reconciled"
        )
        assert status["observedGeneration"] == 1
        assert _get(cluster, "rayservice", namespace, "llama-lora") is not None
        assert _get(cluster, "configmap", namespace, "llama-lora-edge") is not None
        # RBAC denials only: the cluster-wide operator may also meet another test's namespace
        # being deleted ("forbidden: unable to create new content in namespace ... because it
        # is being terminated"), which is not about the chart.
        denied = [ln for ln in as_chart.log.read_text().splitlines() if f'User "{SA}" cannot' in ln]
        assert not denied, "\n".join(denied[:5])
    finally:
        as_chart.stop()
        operator.start()


def test_rbac_is_no_broader_than_needed(cluster: Cluster, installed: None):
    assert can_i(cluster, "get", "secrets", "-n", "serving")
    assert not can_i(cluster, "list", "secrets", "-n", "serving")
    assert not can_i(cluster, "watch", "secrets", "--all-namespaces")
    assert not can_i(cluster, "update", "rayservices.ray.io", "-n", "serving"), "applies, never replaces"
    assert not can_i(cluster, "delete", "rayclusters.ray.io", "-n", "serving"), "KubeRay's to delete"
    assert not can_i(cluster, "create", "pods", "-n", "serving")
    assert not can_i(cluster, "update", "llmservices.llmservice.dev", "-n", "serving"), "never writes spec"
    assert can_i(cluster, "patch", "llmservices.llmservice.dev/status", "-n", "serving")
    assert not can_i(cluster, "*", "*")


def test_reapplying_an_unchanged_manifest_is_a_no_op(cluster: Cluster, operator: Operator, namespace: str):
    """What Argo CD does on every sync: server-side apply of the same manifest changes nothing."""
    doc = _in(sample_doc("tpu-v6e-2x4.yaml"), namespace)
    text = yaml.safe_dump(doc)

    def apply() -> None:
        cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "-f", "-", input=text)

    apply()
    _wait_status(cluster, namespace, "gemma-tpu", lambda s: s.get("phase") == "Provisioning", "settled")
    before = _get(cluster, "llmsvc", namespace, "gemma-tpu")["metadata"]["resourceVersion"]
    apply()
    apply()
    assert _get(cluster, "llmsvc", namespace, "gemma-tpu")["metadata"]["resourceVersion"] == before
