"""Serve bounds, worker pods and node pools agree for data parallelism, checked against Ray's
own DPServer code. Not an end-to-end test (no cluster), but it runs in the end-to-end phase,
beside the CPU service's deploy: importing DPServer imports vLLM, 10-35 s on 2 cores, from
the engine venv that `make images` builds."""

from __future__ import annotations

import json
import os
import subprocess

import yaml

from llmservice_operator.api import parse
from llmservice_operator.render import render
from llmservice_operator.render.nodepools import node_pools
from llmservice_operator.render.plan import plan
from llmservice_operator.render.shape import worker_bounds
from llmservice_operator.settings import OperatorSettings
from tests.conftest import sample_doc, with_spec

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
    res = subprocess.run(
        [str(engine.ensure() / "bin" / "python"), "-c", _RAY_DP_RANKS],
        input=json.dumps([c["applications"][0]["args"]["llm_config"] for c in confs]),
        capture_output=True, text=True, timeout=300, env={**os.environ, **engine.ENV, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    for svc, (lo, hi, initial) in zip(svcs, json.loads(res.stdout.splitlines()[-1]), strict=True):
        dp = svc.spec.engine.data_parallel_size
        assert (lo, hi, initial) == (svc.spec.replicas.min * dp, svc.spec.replicas.max * dp, svc.spec.replicas.min * dp)
        [group] = render(svc, settings).ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        [wb] = worker_bounds(svc.spec)
        hosts = group.get("numOfHosts", 1)
        per_rank = wb.shape.pods_per_replica
        assert (group["minReplicas"] * hosts, group["maxReplicas"] * hosts) == (lo * per_rank, hi * per_rank)
        [pool] = node_pools(plan(svc))
        assert pool["autoscaling"]["total_max_node_count"] == wb.shape.nodes(hi)
