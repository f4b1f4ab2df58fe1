"""The rendered request path with the real engine: vLLM on CPU under Ray Serve LLM's
`build_openai_app`, Ray Serve's HAProxy ingress and the edge sidecar, on this host
(`DataPath(engine="vllm")`). The cpu-tiny sample with prefix-aware routing, two replicas, API
keys on the edge and multi-LoRA from a fake S3 (moto on 127.0.0.1, Ray's real boto3 client).
One Ray for the whole module; its start is most of the module's time.

Found here: with direct streaming (the default) Ray 2.60's prefix-aware router is consulted
but never learns a prefix (LLMRouter picks a replica with handle.choose_replica(_reserve=False),
which never calls the router's on_request_routed), so it only balances load. The API now
refuses prefix-aware routing with direct streaming; this module runs it as users must:
through the OpenAI ingress (`routing.directStreaming: false`), where affinity holds.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from e2e.build import model
from e2e.cluster import free_port
from e2e.dataplane.harness import LORA_CACHE, DataPath
from e2e.fake_s3 import FakeS3
from e2e.hub import FakeHub
from llmservice_operator.api import parse
from llmservice_operator.render import ray_hooks
from testkit.fake_hub import Repo
from tests.conftest import sample_doc, with_spec

from .conftest import MEASURED

pytestmark = pytest.mark.e2e
MODEL = "tiny-llama"
KEY = "sk-team-a"
REPO = "acme/tiny-llama"
REPLICAS = 2
ROUTER = "PrefixCacheAffinityRouter"

# What Ray Serve LLM's prefix-aware router knows, read from the data path's Ray: each
# deployment's configured router class and replica ids, and the router's prefix tree (the
# detached actor the router creates when it starts): which replicas hold each prompt's prefix.
_ROUTING = """
import json
from ray.serve.context import _get_global_client
deps = _get_global_client().get_serve_details()["applications"]["llm"]["deployments"]
out = {"routers": {}, "replicas": {}, "tree": None}
for name, d in deps.items():
    out["routers"][name] = (d["deployment_config"].get("request_router_config") or {}).get("request_router_class")
    out["replicas"][name] = sorted(r["replica_id"] for r in d["replicas"] if r["state"] == "RUNNING")
for a in ray.util.list_named_actors(all_namespaces=True):
    if a["name"] == "LlmPrefixTreeActor":
        tree = ray.get_actor(a["name"], namespace=a["namespace"])
        match = {k: ray.get(tree.prefix_match.remote(text)) for k, text in PREFIXES.items()}
        tenants = sorted(ray.get(tree.getattr.remote("tenant_to_char_count")))
        out["tree"] = {"namespace": a["namespace"], "tenants": tenants, "match": match}
print(json.dumps(out))
"""


@dataclass
class Real:
    dp: DataPath
    lora: str  # the adapter's model id: <model>:<adapter folder>
    hub: FakeHub  # where the model comes from
    commit: str  # the revision the service pins

    def client(self, key: str = KEY) -> OpenAI:
        return OpenAI(base_url=f"{self.dp.edge_url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    built = model.ensure()
    with FakeS3.local() as s3, FakeHub(None, {REPO: built.model_dir}, port=free_port()) as hub:
        uri = s3.upload(built.lora_dir, "loras", f"adapters/{built.lora_dir.name}")
        sha = Repo(REPO, built.model_dir).sha
        doc = with_spec(
            sample_doc("cpu-tiny.yaml"),
            routing={"policy": "prefix-aware", "directStreaming": False},
            replicas={"min": REPLICAS, "max": REPLICAS},
            # By its Hugging Face id at a pinned commit, from the Hub stand-in as from a company
            # mirror, into a cache both replicas share as the pods of one node do.
            model__source=REPO,
            model__revision=sha,
            model__hfEndpoint=hub.endpoint,
            model__nodeCache={"path": str(tmp_path_factory.mktemp("node-model-cache"))},
            model__lora={"source": uri.rsplit("/", 1)[0], "maxAdaptersPerReplica": 2},
            ray__env=s3.env(),
        )
        start = time.monotonic()
        dp = DataPath(parse(doc), api_keys={KEY: "team-a"}, engine="vllm")
        with dp:
            MEASURED[f"real vLLM data path, {REPLICAS} replicas: start (s)"] = round(time.monotonic() - start, 1)
            yield Real(dp, f"{MODEL}:{built.lora_dir.name}", hub, sha)


def _routing(dp: DataPath, prefixes: dict[str, str]) -> dict[str, Any]:
    return json.loads(dp.driver(_ROUTING, PREFIXES=prefixes).strip().splitlines()[-1])


def _served(dp: DataPath) -> Counter[str]:
    """Requests Ray's HAProxy sent to each replica so far (by Serve replica id), from its stats."""
    url = f"http://127.0.0.1:{dp.ports['hp-stats']}/stats;csv"
    rows = csv.DictReader(io.StringIO(httpx.get(url, timeout=10).text.lstrip("# ")))
    served: Counter[str] = Counter()
    for row in rows:
        if row["svname"].startswith("SERVE_REPLICA"):
            served[row["svname"].rsplit("-", 1)[-1]] += int(row["stot"] or 0)
    return served


def test_a_short_first_prompt_is_answered_by_a_fresh_engine(real: Real):
    """First in the module, while the engines are fresh. On hosts with AMX (Sapphire Rapids and
    later), vLLM's CPU worker ran an AMX kernel without asking Linux for the tile state when
    its first prompt was short: "x = 1" killed the engine with SIGILL, and every later request
    got a 500 (seen as a blue/green upgrade's failed requests). The image's amx_permission.py
    asks in every process; the engine venv here has the same file."""
    c = real.client()
    for prompt in ("x = 1", "y = 2", "z = 3", "x = 1"):
        out = c.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
        assert out.usage.completion_tokens > 0, prompt


def test_each_replica_fetched_its_model_in_its_own_process(real: Real):
    """The operator's callback (render/ray_hooks.py) in Ray Serve LLM: no node-initialization
    task, a Python importing torch and vLLM again, ran beside the replicas."""
    logs = real.dp.workdir / "ray" / "session_latest" / "logs"
    text = "\n".join(
        p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file() and p.suffix in (".out", ".err", ".log")
    )
    assert text.count(ray_hooks.FETCHED) >= REPLICAS
    assert ":task_name:initialize_remote_node" not in text


def test_two_replicas_sharing_the_node_cache_download_the_weights_from_the_hub_once(real: Real):
    """model.source by Hugging Face id, model.revision, model.hfEndpoint and model.nodeCache with
    the real huggingface_hub, vLLM and Ray Serve LLM: both replicas serve the pinned commit's
    weights, which the Hub stand-in sent once (its access log)."""
    assert real.hub.downloads(REPO, "model.safetensors", real.commit) == 1, real.hub.log()[-3000:]
    assert real.client().models.list().data[0].id == MODEL


@dataclass
class PrefixTraffic:
    prefixes: dict[str, str]  # name -> a long prompt prefix
    sent_to: dict[str, Counter[str]]  # name -> requests Ray's HAProxy sent to each replica
    routing: dict[str, Any]  # `_ROUTING` after the requests


@pytest.fixture(scope="module")
def prefix_traffic(real: Real) -> PrefixTraffic:
    """Three long prefixes, three completions each (one after another), through the edge."""
    c = real.client()
    body = "\n".join(f"    value_{i} = compute(items[{i}], key={i!r})" for i in range(12))
    prefixes = {name: f"def {name}(items):\n{body}\n" for name in ("alpha", "beta", "gamma")}
    sent_to = {}
    for name, prefix in prefixes.items():
        before = _served(real.dp)
        for i in range(3):
            out = c.completions.create(model=MODEL, prompt=f"{prefix}    # step {i}\n", max_tokens=2, temperature=0)
            assert out.usage.completion_tokens > 0, name
        sent_to[name] = +(_served(real.dp) - before)
    return PrefixTraffic(prefixes, sent_to, _routing(real.dp, prefixes))


def test_prefix_aware_router_runs_on_the_request_path(real: Real, prefix_traffic: PrefixTraffic):
    """Ray Serve LLM's PrefixCacheAffinityRouter is the engine deployment's router and runs
    where requests are routed: with direct streaming, in the LLMRouter deployment that Ray's
    HAProxy asks for a replica (/internal/route); without, in the OpenAI ingress. It started
    there (its prefix tree actor exists, named for the engine deployment) and tracks both
    replicas; the long-prefix requests were answered."""
    routing = prefix_traffic.routing
    [engine] = [n for n, r in routing["routers"].items() if r and ROUTER in r]
    ingress = "LLMRouter" if real.dp.svc.spec.routing.direct_streaming else "OpenAiIngress"
    assert any(ingress in n for n in routing["routers"]), routing["routers"]
    replicas = routing["replicas"][engine]
    assert len(replicas) == REPLICAS, routing
    tree = routing["tree"]
    assert tree and tree["namespace"].endswith(f"::{engine}"), tree
    assert sorted(t.rsplit("#", 1)[-1] for t in tree["tenants"]) == replicas, (tree, replicas)


def test_prefix_aware_router_keeps_each_prefix_on_one_replica(real: Real, prefix_traffic: PrefixTraffic):
    """What prefix-aware routing promises: prompts sharing a long prefix go to the replica
    that got the prefix first, and a new prefix to the replica holding the least text, so
    three prefixes use both replicas (the OpenAI ingress dispatches through the engine's
    handle, which tells the router where each prompt went)."""
    routing, prefixes = prefix_traffic.routing, prefix_traffic.prefixes
    holders = {}
    for name, (matched, tenants) in routing["tree"]["match"].items():
        assert matched == prefixes[name], (name, matched)  # the whole prefix was seen ...
        assert tenants and len(tenants) == 1, (name, tenants)  # ... by one replica, all three times
        holders[name] = tenants[0].rsplit("#", 1)[-1]
        if real.dp.svc.spec.routing.direct_streaming:
            # ... and Ray's HAProxy sent all three there, as the router said.
            assert prefix_traffic.sent_to[name] == {holders[name]: 3}, (name, prefix_traffic.sent_to, holders)
    assert len(set(holders.values())) == REPLICAS, holders


def test_chat_and_a_streamed_completion_through_the_edge(real: Real):
    c = real.client()
    chat = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens > 0
    # Streamed: several server-sent events. When they arrive depends on the tiny model's pace
    # against Ray Serve LLM's stream batching (48 tokens came in two bursts 0.3 ms apart in CI);
    # that nothing on the path holds tokens back is shown with an engine of known pace
    # (test_dataplane.py::test_tokens_stream_through_the_sidecar_as_they_are_generated).
    start = time.monotonic()
    arrivals: list[float] = []
    stream = c.completions.create(
        model=MODEL, prompt="import os\n", max_tokens=160, stream=True, temperature=0, extra_body={"ignore_eos": True}
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 3, arrivals
    MEASURED["real vLLM data path: TTFT, streamed completion through the edge (ms)"] = round(arrivals[0] * 1000)
    # The edge checks the key before Ray Serve sees the request.
    with pytest.raises(openai.AuthenticationError):
        real.client("sk-wrong").models.list()
    assert httpx.get(f"{real.dp.edge_url}/v1/models", timeout=10).status_code == 401


def test_a_lora_request_is_answered_by_the_adapter(real: Real):
    """The adapter comes from the fake S3 on the first request naming it; greedy output with
    it differs from the base model's (random weights, but deterministic) and stays the same."""
    c = real.client()

    def greedy(model_id: str) -> str:
        return c.completions.create(model=model_id, prompt="def main():", max_tokens=16, temperature=0).choices[0].text

    base, adapted = greedy(MODEL), greedy(real.lora)
    assert adapted == greedy(real.lora) and base == greedy(MODEL)
    assert base != adapted
    # /v1/models is vLLM's own with direct streaming: a replica lists an adapter it has loaded,
    # and LoRA requests go to a replica that has it. Each listing is answered by one replica.
    direct = [{m["id"] for m in httpx.get(f"{u}/v1/models", timeout=10).json()["data"]} for u in real.dp.replica_urls()]
    assert all(MODEL in ids for ids in direct) and any(real.lora in ids for ids in direct), direct
    listings = []
    for _ in range(10):
        listings.append({m.id for m in c.models.list()})
        if real.lora in listings[-1]:
            break
    assert {MODEL, real.lora} <= listings[-1], listings


def test_stop_leaves_nothing(real: Real):
    """Last: stops the data path. No process of it, no work dir, no new LoRA download is left."""
    dp = real.dp
    assert dp.processes(), "found none of the running data path's processes"
    dp.stop()
    assert dp.processes() == []
    assert not dp.workdir.exists()
    left = set(LORA_CACHE.glob("*")) if LORA_CACHE.is_dir() else set()
    assert left <= (dp.lora_cache_before or set())
