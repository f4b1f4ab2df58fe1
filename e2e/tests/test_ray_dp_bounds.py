"""The rendered Serve configs checked against Ray's own code: the deployments Ray Serve LLM's
builders make, and for data parallelism, Serve bounds, worker pods and node pools agree with
DPServer's arithmetic. Not an end-to-end test (no cluster): `make test` runs it in the host's
pytest, beside the cluster's; importing DPServer imports vLLM, 10-35 s on 2 cores, from the
engine venv that `make images` builds."""

from __future__ import annotations

import collections
from typing import Any

import yaml

from llmservice_operator.api import parse
from llmservice_operator.render import render
from llmservice_operator.render.nodepools import node_pools
from llmservice_operator.render.plan import plan
from llmservice_operator.render.shape import worker_bounds
from llmservice_operator.settings import OperatorSettings
from tests.conftest import SAMPLES, sample_doc, with_spec

# Ray's DPServer arithmetic, from Ray's own code in the CPU image's packages (importing it
# needs vLLM). Only DPServer's part: its base class would resolve the model (a download).
_RAY_DP_RANKS = """
import copy, json, sys
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.serving_patterns.data_parallel.dp_server import DPServer
LLMServer.get_deployment_options = classmethod(lambda cls, c: copy.deepcopy(c.deployment_config))
out = []
for conf in json.load(sys.stdin):
    a = DPServer.get_deployment_options(LLMConfig.model_validate(conf))["autoscaling_config"]
    out.append([a["min_replicas"], a["max_replicas"], a["initial_replicas"]])
print(json.dumps(out))
"""


def test_data_parallel_ranks_ray_runs_match_the_worker_pods():
    settings = OperatorSettings()
    """Serve bounds, worker pods and node pools agree for DP and DP x TP: Ray's DPServer
    multiplies the serve config's bounds by data_parallel_size (rendering them already
    multiplied made 4-8 ranks for 1-2 replicas of DP 2, beside 2-4 worker pods)."""
    from e2e.build import engine

    svcs = [
        parse(with_spec(sample_doc("gemma-b200.yaml"), engine__dataParallelSize=2, replicas={"min": 1, "max": 2})),
        parse(
            with_spec(
                sample_doc("gemma-b200.yaml"),
                engine__dataParallelSize=2,
                engine__tensorParallelSize=4,
                accelerator__perReplica=4,
                replicas={"min": 1, "max": 3},
            )
        ),
        parse(
            with_spec(sample_doc("llama-70b-b200-tp8.yaml"), engine__dataParallelSize=2, replicas={"min": 0, "max": 2})
        ),
    ]
    confs = [yaml.safe_load(render(s, settings).ray_service["spec"]["serveConfigV2"]) for s in svcs]
    ranks = engine.run_json(
        _RAY_DP_RANKS, [c["applications"][0]["args"]["llm_config"] for c in confs], env={"HF_HUB_OFFLINE": "1"}
    )
    for svc, (lo, hi, initial) in zip(svcs, ranks, strict=True):
        dp = svc.spec.engine.data_parallel_size
        assert (lo, hi, initial) == (svc.spec.replicas.min * dp, svc.spec.replicas.max * dp, svc.spec.replicas.min * dp)
        [group] = render(svc, settings).ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        [wb] = worker_bounds(svc.spec)
        hosts = group.get("numOfHosts", 1)
        per_rank = wb.shape.pods_per_replica
        assert (group["minReplicas"] * hosts, group["maxReplicas"] * hosts) == (lo * per_rank, hi * per_rank)
        [pool] = node_pools(plan(svc))
        assert pool["autoscaling"]["total_max_node_count"] == wb.shape.nodes(hi)


# The deployments Ray Serve LLM's real builder makes of each app (names sorted).
_RAY_BUILDS = """
import copy, importlib, json, sys
from ray.llm._internal.serve.core.server.llm_server import LLMServer
LLMServer.get_deployment_options = classmethod(lambda cls, c: copy.deepcopy(c.deployment_config))
from ray.serve._private.build_app import build_app
out = []
for app in json.load(sys.stdin):
    module, fn = app["import_path"].split(":")
    built = build_app(getattr(importlib.import_module(module), fn)(app["args"]), name=app["name"])
    out.append(sorted(d.name for d in built.deployments))
print(json.dumps(out))
"""
# The pod env Ray's builders read (HAProxy in front, direct streaming: LLMServer is the ingress).
_BUILD_ENV = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING")


def test_the_serve_configs_per_deployment_options_name_deployments_ray_builds():
    """The scaling options live in the Serve config's `deployments` (so a change reaches the
    running replicas without restarting them); Serve refuses the whole config when one names a
    deployment the app does not have, so each sample's names are checked against what Ray's
    builder makes of its args, with the env its pods have."""
    from e2e.build import engine

    settings = OperatorSettings()
    groups: dict[tuple[tuple[str, str], ...], list[tuple[str, dict[str, Any]]]] = collections.defaultdict(list)
    docs = [yaml.safe_load(path.read_text()) for path in SAMPLES]
    docs.append(with_spec(sample_doc("cpu-tiny.yaml"), model__name="acme/tiny-1.5b"))  # '/' and '.' in the id
    for doc in docs:
        rs = render(parse(doc), settings).ray_service
        app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
        head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in head["env"]}
        groups[tuple((k, env[k]) for k in _BUILD_ENV if env.get(k))].append((doc["metadata"]["name"], app))
    checked = 0
    for env, apps in groups.items():
        builds = engine.run_json(_RAY_BUILDS, [app for _, app in apps], env={**dict(env), "HF_HUB_OFFLINE": "1"})
        for (name, app), built in zip(apps, builds, strict=True):
            named = [d["name"] for d in app.get("deployments", [])]
            assert set(named) <= set(built), (name, named, built)
            checked += len(named)
    assert checked >= 7, "the openai samples carry their scaling options per deployment"
