"""The checked-in CRD is what the models generate, and it is a valid structural schema."""

from __future__ import annotations

import json

import yaml

from llmservice_operator.api import parse
from llmservice_operator.api.crd import crd, kopf_peering_crds
from llmservice_operator.yamlio import dump, dump_all

from .conftest import ROOT, SAMPLES
from .kube_schema import check, open_api_schema

CRD_FILE = ROOT / "crds" / "llmservice.dev_llmservices.yaml"


def test_checked_in_crd_matches_models():
    assert CRD_FILE.read_text() == dump(crd()), "crds/ drifted from the API models: run `make crds`"
    peering = (ROOT / "crds" / "kopf-peering.yaml").read_text()
    assert peering == dump_all(kopf_peering_crds()), "run `make crds`"


def _walk(node, path=""):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_schema_is_structural():
    schema = open_api_schema(crd(), "v1alpha1")
    text = json.dumps(schema)
    for bad in ('"$ref"', '"anyOf"', '"$defs"', '"title"', '"additionalProperties": false', '"const"'):
        assert bad not in text, bad
    for path, node in _walk(schema["properties"]["spec"]):
        if "properties" in node:
            assert node.get("type") == "object", path
            for name, prop in node["properties"].items():
                assert "type" in prop, f"{path}.{name} has no type"
                assert prop.get("description") or prop.get("type") == "object" or name in ("key", "cpu", "memory"), (
                    f"{path}.{name}: kubectl explain needs a description"
                )


def test_samples_pass_the_generated_schema():
    schema = open_api_schema(crd(), "v1alpha1")
    for path in SAMPLES:
        doc = yaml.safe_load(path.read_text())
        assert check(doc, schema) == [], path.name


def test_every_rule_is_in_the_crd_with_its_field_path():
    rules = open_api_schema(crd(), "v1alpha1")["properties"]["spec"]["x-kubernetes-validations"]
    assert all(r["fieldPath"].startswith(".") and r["message"] for r in rules)
    assert any(r["fieldPath"] == ".replicas.min" for r in rules)


def test_crd_names_and_columns():
    spec = crd()["spec"]
    assert spec["names"]["shortNames"] == ["llmsvc"]
    assert spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    for c in ("Ready", "Model", "Accelerator", "Replicas", "Endpoint", "Age"):
        assert c in cols


def test_defaults_in_schema_match_models():
    """The API server fills defaults from the schema; they must equal the models' defaults."""
    schema = open_api_schema(crd(), "v1alpha1")["properties"]["spec"]["properties"]
    svc = parse(yaml.safe_load(SAMPLES[0].read_text()))
    assert schema["autoscaling"]["properties"]["targetOngoingRequests"]["default"] == 32
    assert schema["routing"]["properties"]["directStreaming"]["default"] is True
    assert schema["routing"]["default"] == {}
    # Optional objects stay absent: a defaulted `prefillDecode: {}` would switch the pattern on.
    for optional in ("prefillDecode", "faultTolerance"):
        assert "default" not in schema[optional], optional
    assert "default" not in schema["engine"]["properties"]["speculative"]
    assert svc.spec.routing.direct_streaming is True
