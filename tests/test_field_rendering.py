"""Fields that only pass a value through: each set on a sample lands where its consumer (Ray
Serve LLM, KubeRay, GKE) reads it, and nowhere else changes meaning."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llmservice_operator.api import parse
from llmservice_operator.catalog.labels import TOPOLOGY_LEVELS
from llmservice_operator.render import render
from llmservice_operator.render.nodepools import node_pools
from llmservice_operator.render.plan import plan

from .conftest import sample_doc, with_spec


def _rs(doc: dict[str, Any]) -> dict[str, Any]:
    return render(parse(doc)).ray_service


def _llm_config(doc: dict[str, Any]) -> dict[str, Any]:
    serve = yaml.safe_load(_rs(doc)["spec"]["serveConfigV2"])
    return serve["applications"][0]["args"]["llm_configs"][0]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = _rs(doc)["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"] if "ray" in c["name"]]


def test_model_tokenizer_is_serve_llms_tokenizer_source():
    doc = with_spec(sample_doc("cpu-tiny.yaml"), model__tokenizer="org/other-tokenizer")
    assert _llm_config(doc)["model_loading_config"]["tokenizer_source"] == "org/other-tokenizer"


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_engine_quantization_reaches_vllm(method: str):
    doc = with_spec(sample_doc("gemma-b200.yaml"), engine__quantization=method)
    assert _llm_config(doc)["engine_kwargs"]["quantization"] == method


def test_ray_image_is_every_ray_containers_image():
    doc = with_spec(sample_doc("gemma-b200.yaml"), ray__image="registry.example.com/ray-llm:custom")
    images = {c["image"] for c in _containers(doc)}
    assert images == {"registry.example.com/ray-llm:custom"}


def test_node_pool_service_account_is_the_pools_node_identity():
    doc = with_spec(sample_doc("l4-spot-fallback.yaml"), nodePool__serviceAccount="nodes@p.iam.gserviceaccount.com")
    pools = node_pools(plan(parse(doc)))
    assert pools and {p["config"]["service_account"] for p in pools} == {"nodes@p.iam.gserviceaccount.com"}


@pytest.mark.parametrize("level", sorted(TOPOLOGY_LEVELS))
def test_placement_topology_level_is_the_affinity_topology_key(level: str):
    doc = with_spec(sample_doc("llama-70b-b200-tp8.yaml"), placement__topologyLevel=level)
    worker = _rs(doc)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    terms = worker["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [t["podAffinityTerm"]["topologyKey"] for t in terms] == [TOPOLOGY_LEVELS[level]]


def test_redis_password_secret_is_kuberays_gcs_password_reference():
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"),
        faultTolerance={"redisAddress": "redis:6379", "redisPasswordSecret": {"name": "redis", "key": "pw"}},
    )
    gcs = _rs(doc)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs == {
        "redisAddress": "redis:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis", "key": "pw"}}},
    }


def test_incremental_upgrade_options_are_kuberays():
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"),
        ingress={"sidecar": False},
        upgrade={"strategy": "incremental", "gatewayClassName": "gke-l7", "maxSurgePercent": 50,
                 "stepSizePercent": 25, "intervalSeconds": 90},
    )  # fmt: skip
    opts = _rs(doc)["spec"]["upgradeStrategy"]
    assert opts == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {
            "maxSurgePercent": 50, "stepSizePercent": 25, "intervalSeconds": 90, "gatewayClassName": "gke-l7"
        },
    }  # fmt: skip
