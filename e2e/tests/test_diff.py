"""`llmservice diff FILE` against the real API server: what applying the manifest would change,
object by object, by server-side dry run; exit codes a CI pipeline can branch on (0 nothing
to change, 1 changes, 2 an error); nothing written either way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import serving
from e2e.cluster import Cluster
from tests.conftest import sample_doc

from .conftest import Operator
from .test_operator import _get, _in, _secrets, _wait_status

pytestmark = pytest.mark.e2e
NAME = "llama-lora"


def _diff(cluster: Cluster, doc: dict[str, Any] | str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "llmservice.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    cli = str(Path(sys.executable).with_name("llmservice"))
    # The settings of the suite's operator (it reconciles this namespace), not the in-cluster one's.
    env = {**os.environ, **serving.OPERATOR_ENV, "KUBECONFIG": str(cluster.kubeconfig)}
    args = [cli, "diff", str(path), "--operator", "none/none"]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def _changed(out: str) -> dict[str, str]:
    """kind (or kind/part) -> action, from the `# <action> <Kind>/<ns>/<name> [(<part>)]` headers."""
    heads = [ln.split() for ln in out.splitlines() if ln.startswith("# ") and "/" in ln]
    return {ref.split("/")[0] + ("/" + part[0].strip("()") if part else ""): action for _, action, ref, *part in heads}


def test_diff_shows_what_applying_would_change_and_writes_nothing(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
):
    cluster.apply(_secrets(namespace))
    doc = _in(sample_doc("prefix-aware-lora.yaml"), namespace)
    # Not applied yet: the LLMService and every child would be created.
    new = _diff(cluster, doc, tmp_path)
    assert new.returncode == 1, new.stderr
    assert _changed(new.stdout) == {
        "LLMService": "create", "NetworkPolicy": "create", "ConfigMap": "create", "Service": "create",
        "RayService": "create", "PodDisruptionBudget": "create", "Secret": "create", "LLMService/status": "update",
    }, new.stdout  # fmt: skip
    assert _get(cluster, "llmsvc", namespace, NAME) is None, "a dry run stores nothing"

    # Applied and reconciled: the same file changes nothing (no noise from defaults,
    # managed fields or what the operator adds).
    cluster.apply([doc])
    _wait_status(cluster, namespace, NAME, lambda s: s.get("phase") == "Provisioning", "reconciled")
    same = _diff(cluster, doc, tmp_path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout == ""

    # An engine change: the LLMService's spec and the RayService's serve config, nothing else.
    before = _get(cluster, "rayservice", namespace, NAME)["metadata"]["resourceVersion"]
    doc["spec"]["engine"]["maxModelLen"] = 4096
    changed = _diff(cluster, doc, tmp_path)
    assert changed.returncode == 1
    # (and the status the operator would write for the new generation)
    assert _changed(changed.stdout) == {
        "LLMService": "update", "RayService": "update", "LLMService/status": "update"
    }, changed.stdout  # fmt: skip
    lines = changed.stdout.splitlines()
    assert "-    maxModelLen: 16384" in lines and "+    maxModelLen: 4096" in lines, changed.stdout
    assert any(ln.startswith("+") and "max_model_len: 4096" in ln for ln in lines), changed.stdout
    assert _get(cluster, "rayservice", namespace, NAME)["metadata"]["resourceVersion"] == before

    # The sidecar off: its ConfigMap and peers Service would go (the operator deletes what it
    # no longer renders), the RayService's pods change.
    del doc["spec"]["ingress"]
    doc["spec"]["ingress"] = {"sidecar": False}
    off = _diff(cluster, doc, tmp_path)
    assert off.returncode == 1
    changes = _changed(off.stdout)
    assert changes["ConfigMap"] == "delete" and changes["Service"] == "delete", off.stdout


def test_diff_exits_2_on_an_invalid_manifest_or_no_cluster(cluster: Cluster, tmp_path: Path):
    bad = sample_doc("gemma-b200.yaml")
    bad["spec"]["replicas"] = {"min": 5, "max": 2}
    res = _diff(cluster, bad, tmp_path)
    assert res.returncode == 2 and "spec.replicas" in res.stderr, res.stderr
    assert res.stdout == ""
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing")}
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(sample_doc("gemma-b200.yaml")))
    cli = str(Path(sys.executable).with_name("llmservice"))
    res = subprocess.run([cli, "diff", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and "cannot diff against the cluster" in res.stderr, res.stderr
