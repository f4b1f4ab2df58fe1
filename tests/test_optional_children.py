"""Every optional child goes when the switch that made it is turned off: the reconcile deletes
what it no longer renders, in every slot of the child registry (render/children.py), the
scraping objects included, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from llmservice_operator.controller.reconcile import Reconciler
from llmservice_operator.render import children
from llmservice_operator.settings import OperatorSettings
from testkit.kube import DictKube

from .conftest import sample_doc

NS, NAME = "team-a", "tiny"
# The switch that turns each optional child off, as a spec section merged over the sample's.
OFF: dict[tuple[str, str], dict[str, Any]] = {
    ("PodMonitoring", "tiny"): {"observability": {"metrics": False}},  # GKE Managed Prometheus
    ("PodMonitor", "tiny"): {"observability": {"metrics": False}},  # the Prometheus operator
    ("ConfigMap", "tiny-edge"): {"ingress": {"sidecar": False}},
    ("Service", "tiny-edge-peers"): {"ingress": {"sidecar": False}},
    ("PodDisruptionBudget", "tiny-workers"): {"replicas": {"min": 0, "max": 1}},
    ("NetworkPolicy", "tiny-ray"): {"ray": {"networkPolicy": False}},
}


def _doc(spec: dict[str, Any]) -> dict[str, Any]:
    doc = sample_doc("cpu-tiny.yaml")
    doc["metadata"].update(namespace=NS, uid="u-1", generation=1)
    doc["spec"]["ingress"] = {}  # no keys: the sidecar may go
    for section, value in spec.items():
        doc["spec"][section] = {**doc["spec"].get(section, {}), **value} if isinstance(value, dict) else value
    return doc


def _reconciled(kube: DictKube, settings: OperatorSettings) -> DictKube:
    r = Reconciler(kube, settings)  # type: ignore[arg-type]
    for _ in range(5):
        before = len(kube.writes)
        r.reconcile(NS, NAME)
        if len(kube.writes) == before:
            return kube
    raise AssertionError(f"the operator keeps writing: {kube.writes[-10:]}")


def _children(kube: DictKube) -> set[tuple[str, str]]:
    return {(k, n) for (k, ns, n) in kube.objects if ns == NS and k not in ("LLMService", "PersistentVolumeClaim")}


@pytest.mark.parametrize("child", OFF, ids=lambda c: c[0])
def test_an_optional_child_goes_when_its_switch_is_turned_off(child: tuple[str, str]):
    settings = OperatorSettings(monitoring="prometheus-operator" if child[0] == "PodMonitor" else "gmp")
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"namespace": NS, "name": "tiny-models"}}
    kube = _reconciled(DictKube(_doc({}), claim, served=True), settings)
    before = _children(kube)
    assert child in before, f"{child} is not made by the sample: {sorted(before)}"

    kube.apply(_doc(OFF[child]))
    kube.writes.clear()
    after = _children(_reconciled(kube, settings))

    assert child not in after
    assert f"delete {child[0]}/{child[1]}" in kube.writes
    gone = before - after
    assert all((k, n) in OFF and OFF[(k, n)] == OFF[child] for k, n in gone), f"more went than the switch's: {gone}"


def test_every_kind_the_operator_writes_has_a_switch_here_but_the_ray_service_and_its_token():
    written = {k.kind for k in children.KINDS if k.applied} - {"RayService", "Secret"}
    switched = {kind for kind, _ in OFF}
    assert written <= switched, written - switched
