"""The `llmservice` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .conftest import ROOT, SAMPLES

CLI = str(ROOT / ".venv" / "bin" / "llmservice")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, input=stdin)


def test_validate_samples():
    for path in SAMPLES:
        res = run("validate", str(path))
        assert res.returncode == 0, res.stderr
        assert "is valid" in res.stdout


def test_validate_lists_every_error_with_its_path(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "manifests/samples/gemma-b200.yaml")
        .read_text()
        .replace("replicas: {min: 8, max: 8}", "replicas: {min: 9, max: 8}")
        .replace("google/gemma-4-e2b-it", "ftp://nope")
    )
    res = run("validate", str(bad))
    assert res.returncode == 1
    assert "spec.replicas.min: must be <= replicas.max" in res.stderr
    assert "spec.model.source: must be a Hugging Face id" in res.stderr
    assert "Traceback" not in res.stderr


def test_unreadable_and_broken_files_get_one_line(tmp_path: Path):
    res = run("validate", str(tmp_path / "missing.yaml"))
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "cannot read" in res.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    res = run("render", str(broken))
    assert res.returncode == 1
    assert "not valid YAML (line" in res.stderr and "Traceback" not in res.stderr


def test_render_json_and_stdin():
    text = (ROOT / "manifests/samples/tpu-v6e-2x4.yaml").read_text()
    res = run("render", "-", "-o", "json", "--kubernetes-only", stdin=text)
    assert res.returncode == 0, res.stderr
    kinds = [o["kind"] for o in json.loads(res.stdout)]
    assert kinds == ["ConfigMap", "RayService", "PodDisruptionBudget", "PodMonitoring"]


def test_render_includes_node_pools_unless_asked_not_to():
    path = str(ROOT / "manifests/samples/l4-spot-fallback.yaml")
    assert "kind: NodePool" in run("render", path).stdout
    assert "kind: NodePool" not in run("render", path, "--kubernetes-only").stdout


def test_other_objects_in_the_file_are_ignored(tmp_path: Path):
    f = tmp_path / "bundle.yaml"
    f.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: hf-token}\n---\n" + SAMPLES[0].read_text())
    assert run("validate", str(f)).returncode == 0
