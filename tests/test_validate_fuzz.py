"""Property-based: `llmservice validate` never crashes, answers fast, and whatever it accepts
renders into a RayService that passes KubeRay's schema and llm_configs Ray's LLMConfig takes."""

from __future__ import annotations

import copy
import re
import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from typer.testing import CliRunner

from llmservice_operator.api import parse
from llmservice_operator.api.crd import spec_schema
from llmservice_operator.cli import app
from llmservice_operator.render import render
from llmservice_operator.settings import OperatorSettings
from llmservice_operator.yamlio import load_all

from .conftest import FUZZ, SAMPLES
from .kube_schema import check, kuberay_crd, open_api_schema
from .test_render import _llm_configs

BASES = [yaml.safe_load(p.read_text()) for p in SAMPLES]
SPEC = spec_schema()
RAYSERVICE = open_api_schema(kuberay_crd("rayservices"), "v1")
OPERATOR = OperatorSettings()
FUZZ_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["1", "true", "yes", "2.0", "gemma", "nvidia-h100", "2x4", "16Gi"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _value_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values near what the schema allows: its enums, its bounds and one past them."""
    kind = schema.get("type")
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | json_values
    if kind == "integer":
        lo, hi = schema.get("minimum", -3), schema.get("maximum", 2000)
        return st.integers(lo - 1, hi + 1) | st.sampled_from([lo, hi])
    if kind == "number":
        return st.floats(-0.5, 1.5, allow_nan=False) | st.integers(0, 2)
    if kind == "boolean":
        return st.booleans() | json_values
    if kind == "object" and "properties" in schema:
        return st.fixed_dictionaries({}, optional={k: _value_for(v) for k, v in schema["properties"].items()})
    return json_values


def _paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    out = []
    for name, sub in schema.get("properties", {}).items():
        out.append(((*prefix, name), sub))
        out += _paths(sub, (*prefix, name))
    return out


SPEC_PATHS = _paths(SPEC)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A sample with one to four edits: a schema field set (near its bounds or to any JSON),
    a field deleted, a key renamed (snake_case, typo), or junk added."""
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        path, schema = draw(st.sampled_from(SPEC_PATHS))
        node = doc["spec"]
        for p in path[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict):
            continue
        how = draw(st.sampled_from(["set", "set", "any", "delete", "rename"]))
        key = path[-1]
        if how == "delete":
            node.pop(key, None)
        elif how == "rename" and key in node:
            new = draw(st.sampled_from([re.sub(r"([A-Z])", r"_\1", key).lower(), key + "s", key.lower()]))
            node[new] = node.pop(key)
        else:
            node[key] = draw(_value_for(schema) if how == "set" else json_values)
    if draw(st.booleans()):
        doc["metadata"]["name"] = draw(st.from_regex(r"[a-z][-a-z0-9.]{0,44}", fullmatch=True))
    return doc


def _validate(text: str | bytes) -> bool:
    # validate's own CPU time: the wall clock also counts whatever else runs on the machine (the
    # local cluster starts beside the unit tests).
    started = time.thread_time()
    res = CliRunner().invoke(app, ["validate", "-"], input=text)
    took = time.thread_time() - started
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code in (0, 1), res.output
    assert "Traceback" not in res.output
    assert took < 1.0, f"validate took {took:.2f} s of CPU"
    FUZZ["validate runs"] = FUZZ.get("validate runs", 0) + 1
    return res.exit_code == 0


def _accepted_renders(text: str) -> None:
    FUZZ["accepted by validate, then rendered and checked"] = (
        FUZZ.get("accepted by validate, then rendered and checked", 0) + 1
    )
    svc = parse(load_all(text)[0])
    out = render(svc, OPERATOR)
    assert check(out.ray_service, RAYSERVICE) == []
    for conf in _llm_configs(out.ray_service):
        conf = copy.deepcopy(conf)
        conf["deployment_config"].pop("request_router_config", None)  # needs vLLM to import
        LLMConfig.model_validate(conf)


@FUZZ_SETTINGS
@given(mutated())
def test_mutated_manifests(doc):
    text = yaml.safe_dump(doc, sort_keys=False)
    if _validate(text):
        _accepted_renders(text)


@FUZZ_SETTINGS
@given(st.sampled_from(SAMPLES), st.integers(0, 10_000), st.text(max_size=8))
def test_edited_text(sample, where, insert):
    """Characters typed anywhere in a sample's text: broken YAML gets a message, never a crash."""
    text = sample.read_text()
    where %= len(text)
    edited = text[:where] + insert + text[where:]
    if _validate(edited):
        _accepted_renders(edited)


@FUZZ_SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes(data):
    _validate(data)


@pytest.mark.parametrize("size_mb", [0.9])
def test_large_valid_looking_input_is_fast(size_mb):
    """Near the 1 MB the property promises: one sample plus a long comment block and a big map."""
    text = SAMPLES[0].read_text() + "".join(f"# {'x' * 60}\n" for _ in range(int(size_mb * 2**20) // 64 // 2))
    env = "".join(f"      K{i}: v\n" for i in range(int(size_mb * 2**20) // 16 // 2))
    _validate(text)
    _validate(text.replace("spec:\n", "spec:\n  ray:\n    env:\n" + env, 1))
