"""Why a replica fails to start, from what the Ray dashboard answers: the exception a traceback in
the replica's log ends with (not the wrappers Serve and vLLM put around it), or, for a replica
killed from outside its code, Ray's own death cause; each dead replica read once."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from llmservice_operator.api import parse
from llmservice_operator.controller.rootcause import RootCauses, cause_in, death_cause
from llmservice_operator.render.plan import plan
from llmservice_operator.render.status import exception_line, explain

from .conftest import sample_doc, with_spec

BAD_ARG_LOG = """\
INFO 12-06 02:47:31 [cpu_model_runner.py:131] Starting to load model /mnt/models/tiny-llama...
(EngineCore pid=349) ERROR 12-06 02:47:33 [core.py:1020] EngineCore failed to start.
(EngineCore pid=349) ERROR 12-06 02:47:33 [core.py:1020] Traceback (most recent call last):
(EngineCore pid=349) ERROR 12-06 02:47:33 [core.py:1020]   File "vllm/v1/engine/core.py", line 1011, in run
(EngineCore pid=349) ERROR 12-06 02:47:33 [core.py:1020] ValueError: No common block size for 7.
Traceback (most recent call last):
  File "ray/serve/_private/replica.py", line 1200, in initialize
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
ray.exceptions.RayTaskError(RuntimeError): please check the stack trace above
"""

OOM = (
    "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY Worker exit "
    "detail: Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.251.0.5, ID: "
    "d6e5) where the lease (actor ID: a1, name=ServeReplica:llm:LLMServer:tiny-llama.__init__, pid=838, memory "
    "used=1.21GB) was running was 2.87GB / 3.00GB (0.956), which exceeds the memory usage threshold of 0.95. "
    "Ray killed this worker (ID: w1) because it was the most recently scheduled task; to see more information "
    "about memory usage on this node, use `ray logs raylet.out -ip 10.251.0.5`."
)


def test_the_cause_is_the_exception_under_the_wrappers():
    cause = cause_in(BAD_ARG_LOG)
    assert cause is not None and cause.line == "ValueError: No common block size for 7."
    assert "EngineCore failed to start." in cause.text


def test_an_exception_logged_in_passing_is_not_a_cause():
    assert cause_in("WARNING retrying: ConnectionError: refused\nINFO started\n") is None


def test_a_replica_killed_for_memory_names_it_and_the_field_to_raise():
    cause = death_cause(
        {"death_cause": {"actor_died_error_context": {"error_message": OOM, "reason": "OUT_OF_MEMORY"}}}
    )
    assert cause is not None
    assert cause.line.startswith("OutOfMemory: Task was killed due to the node running low on memory. Memory on")
    assert "2.87GB / 3.00GB" in cause.line
    doc = with_spec(sample_doc("cpu-tiny.yaml"), ray__workerResources={"cpu": "100m", "memory": "3Gi"})
    said = explain(plan(parse(doc)), cause.line)
    assert said.startswith("spec.ray.workerResources.memory: the replica ran out of memory; raise it (now 3Gi)")


def test_a_replica_serve_stopped_has_no_cause():
    stopped = "The actor is dead because it was killed by `ray.kill`. Worker exit type: INTENDED_USER_EXIT"
    assert death_cause({"death_cause": {"actor_died_error_context": {"error_message": stopped}}}) is None


class Dashboard:
    """The three dashboard endpoints the operator reads, answering from dicts; every URL asked."""

    def __init__(self, dead: list[dict[str, Any]], logs: dict[str, str]):
        self.dead, self.logs = dead, logs
        self.asked: list[str] = []

    def __call__(self, url: str, token: str | None) -> bytes | None:
        self.asked.append(url)
        path, _, query = url.partition("?")
        q = dict(urllib.parse.parse_qsl(query))
        if path.endswith("/api/serve/applications/"):
            return json.dumps({"applications": {"llm": {}}}).encode()
        if path.endswith("/api/v0/actors"):
            return json.dumps({"data": {"result": {"result": self.dead}}}).encode()
        if path.endswith("/api/v0/logs/file"):
            return self.logs.get(f"{q['actor_id']}.{q['suffix']}", "").encode()
        return None


def test_dead_replicas_are_read_once_and_ray_says_why_when_their_log_does_not():
    dead = [
        {"actor_id": "a1", "class_name": "ServeReplica:llm:LLMServer:tiny-llama", "death_cause": {}},
        {
            "actor_id": "a2",
            "class_name": "ServeReplica:llm:LLMServer:tiny-llama",
            "death_cause": {"actor_died_error_context": {"error_message": OOM}},
        },
        {"actor_id": "a3", "class_name": "ServeReplica:other-app:X", "death_cause": {}},
    ]
    dash = Dashboard(dead, {"a1.err": "INFO nothing wrong\n"})
    causes = RootCauses(kube=None, fetch=dash)
    read: set[str] = set()
    found = causes._causes("http://head:8265", None, read)
    assert found["LLMServer:tiny-llama"].line.startswith("OutOfMemory:")
    assert read == {"a1", "a2"}, "only the service's app's replicas"
    asked = len(dash.asked)
    assert causes._causes("http://head:8265", None, read) == {}
    assert len(dash.asked) == asked + 2, "the second look reads no log again"


def test_a_validation_error_keeps_its_first_detail_line():
    """pydantic's "1 validation error for ModelConfig" says nothing by itself; vLLM's reason is
    the line after it (here as vLLM raised it for a model id it could not resolve)."""
    log = (
        "Traceback (most recent call last):\n"
        '  File "vllm/engine/arg_utils.py", line 1402, in create_model_config\n'
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
        "  Value error, Invalid repository ID or local directory specified: 'acme/x'.\n"
        "Please verify the following requirements:\n"
    )
    cause = cause_in(log)
    assert cause is not None
    assert cause.line == (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig: "
        "Value error, Invalid repository ID or local directory specified: 'acme/x'."
    )
    assert exception_line(log) == cause.line
    said = explain(plan(parse(with_spec(sample_doc("cpu-tiny.yaml"), model__source="acme/x"))), cause.line)
    assert said.startswith("spec.model.source: the Hugging Face Hub has no acme/x (a private repo needs"), said


class _NoSecrets:
    def get(self, *args: str) -> None:
        return None


def test_the_engine_start_is_read_once_from_the_first_running_replica_once_the_app_runs():
    """status.startup's engine steps: the log of the model replica Serve started first (not
    the ingress's), read once per Ray cluster, and only once its app runs."""
    log = (
        "(EngineCore pid=3) INFO 12-07 10:00:42 [core.py:123] Initializing a V1 LLM engine (v0.29.0) with config\n"
        "(Worker pid=4) INFO 12-07 10:00:51 [default_loader.py:430] Loading weights took 0.80 seconds\n"
    )
    replicas = [
        {"actor_id": "late", "state": "RUNNING", "start_time_s": 200.0},
        {"actor_id": "first", "state": "RUNNING", "start_time_s": 100.0},
    ]
    apps = {
        "llm": {
            "deployments": {
                "OpenAiIngress": {"replicas": [{"actor_id": "ingress", "state": "RUNNING", "start_time_s": 1.0}]},
                "LLMServer:tiny-llama": {"replicas": replicas},
            }
        }
    }
    asked: list[str] = []

    def fetch(url: str, token: str | None) -> bytes | None:
        asked.append(url)
        if url.endswith("/api/serve/applications/"):
            return json.dumps({"applications": apps}).encode()
        q = dict(urllib.parse.parse_qsl(url.partition("?")[2]))
        return log.encode() if q.get("actor_id") == "first" and q.get("suffix") == "out" else b""

    svc = parse(sample_doc("cpu-tiny.yaml"))
    head = {"metadata": {"labels": {"ray.io/cluster": "c1", "ray.io/node-type": "head"}}, "status": {"podIP": "h"}}
    rs = {
        "metadata": {"creationTimestamp": "2026-12-07T09:59:00Z"},
        "status": {
            "pendingServiceStatus": {"rayClusterName": "c1", "applicationStatuses": {"llm": {"status": "DEPLOYING"}}}
        },
    }
    causes = RootCauses(kube=_NoSecrets(), fetch=fetch, period=0)
    assert causes.engine_steps(svc, rs, (head,)) == {}
    assert asked == [], "nothing asked while the app deploys"
    rs["status"] = {
        "activeServiceStatus": {"rayClusterName": "c1", "applicationStatuses": {"llm": {"status": "RUNNING"}}}
    }
    want = {"EngineInitializing": "2026-12-07T10:00:42Z", "WeightsLoaded": "2026-12-07T10:00:51Z"}
    assert causes.engine_steps(svc, rs, (head,)) == want
    assert causes.engine_steps(svc, rs, (head,)) == want
    assert len(asked) == 2, "read once"
