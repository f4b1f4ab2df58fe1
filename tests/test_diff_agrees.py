"""`llmservice diff` and the operator agree: on a corpus of spec changes to a running service
(and a deleted Secret), what diff says the operator would write is what the operator then
writes, verb for verb and object for object, as the in-memory API's audit log records it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llmservice_operator.api import parse
from llmservice_operator.controller.preview import Change, preview
from llmservice_operator.controller.reconcile import Reconciler
from llmservice_operator.settings import OperatorSettings
from testkit.kube import DictKube

from .conftest import sample_doc

NS, NAME = "team-a", "tiny"
# The changes a user makes to a running service, as merge-style spec edits (None deletes).
CASES: dict[str, dict[str, Any]] = {
    "nothing": {},
    "metrics off": {"observability": {"metrics": False}},
    "sidecar off": {"ingress": {"sidecar": False, "apiKeysSecret": None}},
    "min 0": {"replicas": {"min": 0, "max": 1, "initial": 1}},
    "an engine change": {"engine": {"maxModelLen": 384, "extraArgs": {"dtype": "bfloat16"}}},
    "a routing change": {"routing": {"policy": "round-robin"}},
    "keys off": {"ingress": {"apiKeysSecret": None}},
    "suspended": {"suspend": True},
}


def _base() -> dict[str, Any]:
    doc = sample_doc("cpu-tiny.yaml")
    doc["metadata"].update(namespace=NS, uid="u-1", generation=1)
    return doc


def _referenced() -> list[dict[str, Any]]:
    meta, keys = {"namespace": NS}, {"api-keys.map": "c2stMSBh"}  # "sk-1 a"
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {**meta, "name": "llm-keys"}, "data": keys},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {**meta, "name": "tiny-models"}},
    ]


def _running(settings: OperatorSettings) -> DictKube:
    """The service reconciled until the operator has nothing more to write."""
    kube = DictKube(_base(), *_referenced())
    r = Reconciler(kube, settings)  # type: ignore[arg-type]
    for _ in range(5):
        before = len(kube.writes)
        r.reconcile(NS, NAME)
        if len(kube.writes) == before:
            kube.writes.clear()
            return kube
    raise AssertionError(f"the operator keeps writing: {kube.writes[-10:]}")


def _said(changes: list[Change]) -> list[str]:
    """diff's changes in the audit log's words (an apply and a create are both a write)."""
    out = []
    for c in changes:
        if c.kind == "LLMService" and not c.what:
            continue  # the user's own apply of the manifest
        if c.what == "status":
            out.append(f"patch LLMService/{c.name}/status")
        elif c.what == "finalizers" or c.action == "patch":
            out.append(f"patch {c.kind}/{c.name}")
        else:
            out.append(f"{'delete' if c.action == 'delete' else 'write'} {c.kind}/{c.name}")
    return sorted(out)


def _wrote(writes: list[str]) -> list[str]:
    return sorted(w.replace("apply ", "write ", 1).replace("create ", "write ", 1) for w in writes)


def _edited(doc: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out.pop("status", None)
    for section, value in spec.items():
        if isinstance(value, dict) and isinstance(out["spec"].get(section), dict):
            merged = {**out["spec"][section], **value}
            out["spec"][section] = {k: v for k, v in merged.items() if v is not None}
        else:
            out["spec"][section] = value
    out["metadata"]["generation"] = out["metadata"].get("generation", 1) + (1 if spec else 0)
    return out


@pytest.mark.parametrize("case", CASES)
def test_diff_lists_exactly_what_the_operator_then_writes(case: str, settings: OperatorSettings):
    live = _running(settings)
    doc = _edited(live.get_llmservice(NS, NAME), CASES[case])

    said = preview(copy.deepcopy(live), doc, parse(doc), settings)
    kube = copy.deepcopy(live)
    kube.apply(doc)  # what kubectl apply does; then the operator reconciles
    kube.writes.clear()
    Reconciler(kube, settings).reconcile(NS, NAME)  # type: ignore[arg-type]

    assert _said(said.changes) == _wrote(kube.writes)
    assert not said.problems
    if case != "nothing":
        assert kube.writes, "a spec change the operator does nothing about"


def test_diff_names_a_deleted_secret_and_the_operator_writes_what_it_said(settings: OperatorSettings):
    live = _running(settings)
    del live.objects[("Secret", NS, "llm-keys")]
    doc = _edited(live.get_llmservice(NS, NAME), {})

    said = preview(copy.deepcopy(live), doc, parse(doc), settings)
    kube = copy.deepcopy(live)
    Reconciler(kube, settings).reconcile(NS, NAME)  # type: ignore[arg-type]

    assert any("llm-keys" in p for p in said.problems), said.problems
    assert _said(said.changes) == _wrote(kube.writes)
    status = kube.get_llmservice(NS, NAME)["status"]
    assert "llm-keys" in (status.get("message") or ""), status
