"""The `llmservice` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

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
    assert kinds == ["NetworkPolicy", "ConfigMap", "Service", "RayService", "PodDisruptionBudget", "PodMonitoring"]


def test_render_includes_node_pools_unless_asked_not_to():
    path = str(ROOT / "manifests/samples/l4-spot-fallback.yaml")
    assert "kind: NodePool" in run("render", path).stdout
    assert "kind: NodePool" not in run("render", path, "--kubernetes-only").stdout


def test_other_objects_in_the_file_are_ignored(tmp_path: Path):
    f = tmp_path / "bundle.yaml"
    f.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: hf-token}\n---\n" + SAMPLES[0].read_text())
    assert run("validate", str(f)).returncode == 0


def _one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert all(w in res.stderr for w in words), res.stderr


def test_files_in_other_encodings_get_one_line_naming_the_file(tmp_path: Path):
    text = (ROOT / "manifests/samples/cpu-tiny.yaml").read_text() + "# café\n"
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text(text, encoding="utf-16")  # with a byte order mark, as Windows editors save it
    assert run("validate", str(utf16)).returncode == 0, "UTF-16 with a BOM is YAML (and kubectl reads it)"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(text.encode("latin-1"))
    _one_line_error(run("validate", str(latin1)), str(latin1), "not UTF-8 text (byte 0xe9", "save it as UTF-8")
    no_bom = tmp_path / "utf16le.yaml"
    no_bom.write_bytes(text.encode("utf-16-le"))
    _one_line_error(run("render", str(no_bom)), str(no_bom), "UTF-16 without a byte order mark")


def test_deep_large_and_self_referencing_yaml_get_one_line(tmp_path: Path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("spec: " + "[" * 500 + "]" * 500 + "\n")
    _one_line_error(run("validate", str(deep)), str(deep), "nested more than 64 levels deep")
    deep_map = tmp_path / "deep-map.yaml"
    deep_map.write_text("spec:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 90)) + "  " * 90 + "v: 1\n")
    _one_line_error(run("validate", str(deep_map)), "levels deep")
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("spec: &a {engine: {extraArgs: {x: *a}}}\n")
    _one_line_error(run("validate", str(cycle)), "contains itself")
    laughs = tmp_path / "laughs.yaml"  # 9 levels of 10 aliases: a billion strings from 1 KB
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    laughs.write_text("\n".join(lines) + "\n")
    _one_line_error(run("validate", str(laughs)), str(laughs), "more than 200000 values")
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 400_000)  # 4 MB
    _one_line_error(run("validate", str(big)), str(big), "larger than 3 MiB")


def test_render_shows_the_workload_policy_a_tpu7x_slice_needs(tmp_path: Path):
    doc = yaml.safe_load((ROOT / "manifests/samples/tpu-v6e-4x4-multihost.yaml").read_text())
    doc["spec"]["accelerator"] |= {"type": "tpu-7x", "topology": "2x2x4"}
    doc["spec"]["engine"]["tensorParallelSize"] = 16
    f = tmp_path / "tpu7x.yaml"
    f.write_text(yaml.safe_dump(doc))
    res = run("render", str(f))
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(res.stdout))
    policies = [d for d in docs if d["kind"] == "ResourcePolicy"]
    pools = [d for d in docs if d["kind"] == "NodePool"]
    assert [p["spec"]["workload_policy"] for p in policies] == [
        {"type_": "HIGH_THROUGHPUT", "accelerator_topology": "2x2x4"}
    ]
    assert {p["spec"]["placement_policy"]["policy_name"] for p in pools} == {policies[0]["metadata"]["name"]}
