"""Routing policies and engine switches on real pods, with two replicas on the real node:
session affinity (the same X-Session-Id, the same replica), round robin (changed in place, no new
Ray cluster), ngram speculative decoding on vLLM's CPU backend, and the edge sidecar turned off
on the running service (it keeps serving, and nothing a running pod mounts is deleted before the
pod is gone). In the background from the session's start (stories.routes), once the failure
scenario has left the node; reconciled by the operator the chart installed."""

from __future__ import annotations

import collections
import json
import threading
import time
from typing import Any

import httpx
import pytest

from e2e import serving
from e2e.cluster import Cluster
from e2e.story import Story

from .conftest import MEASURED

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]
NS = "serving-routes"
NAME = "routes"
STEPS = ["ready", "affinity", "round-robin", "sidecar-off"]
SESSIONS = [f"s{i}" for i in range(8)]
_COUNT = """
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8080/metrics", timeout=10).read().decode()
print(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
          if l.startswith("ray_vllm_request_success_total{")))
"""


def _workers(cluster: Cluster) -> list[dict[str, Any]]:
    pods = cluster.get_json("pods", "-n", NS, "-l", f"llmservice.dev/name={NAME},ray.io/node-type=worker")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def served_by_pod(cluster: Cluster) -> dict[str, float]:
    """Requests each worker pod's engine finished (vLLM's own counter, read inside the pod: the
    NetworkPolicy keeps its metrics port from this host)."""
    out = {}
    for p in _workers(cluster):
        name = p["metadata"]["name"]
        res = cluster.kubectl("exec", "-n", NS, name, "-c", "ray", "--", "python3", "-c", _COUNT, check=False)
        out[name] = float(res.stdout.strip() or 0) if res.returncode == 0 else 0.0
    return out


def _post(url: str, session: str | None, key: str | None = serving.API_KEY) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if session:
        headers["X-Session-Id"] = session
    body = {"model": serving.MODEL, "prompt": "x = ", "max_tokens": 2}
    return httpx.post(f"{url}/completions", json=body, headers=headers, timeout=120).status_code


def _spread(cluster: Cluster, url: str, sessions: list[str | None], per: int) -> dict[str | None, dict[str, float]]:
    """Per session: how many of its `per` requests each pod served (the engines' counters
    settle within Ray's metrics export interval)."""
    out = {}
    for s in sessions:
        before = served_by_pod(cluster)
        assert all(_post(url, s) == 200 for _ in range(per))
        want = sum(before.values()) + per
        deadline = time.monotonic() + 60
        while True:
            after = served_by_pod(cluster)
            if sum(after.values()) >= want or time.monotonic() > deadline:
                break
            time.sleep(2)
        out[s] = {p: after[p] - before.get(p, 0) for p in after if after[p] - before.get(p, 0)}
    return out


class Probe:
    """One small request every `pause` s through the Service until stopped; every outcome."""

    def __init__(self, url: str, pause: float = 0.5, key: str | None = serving.API_KEY):
        self.url, self.pause, self.key = url, pause, key
        self.results: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                code: int | str = _post(self.url, None, self.key)
            except httpx.HTTPError as e:
                code = f"{type(e).__name__}: {e}"[:150]
            self.results.append((t, code))
            self._stop.wait(self.pause)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(150)

    @property
    def failures(self) -> list[tuple[float, int | str]]:
        return [r for r in self.results if r[1] != 200]


def routes(cluster: Cluster, story: Story) -> None:
    serving.prepare(cluster, NS)
    doc = serving.small_service(
        NS, NAME,
        replicas={"min": 2, "max": 2},
        routing={"policy": "session-affinity", "streamBatchingMs": 0},
        engine__speculative={"method": "ngram", "numSpeculativeTokens": 3},
        ingress={"apiKeysSecret": serving.KEYS_SECRET},
    )  # fmt: skip
    applied = time.monotonic()
    cluster.apply([doc])
    serving.wait_ready(cluster, NS, NAME, timeout=1200)
    url = f"http://{serving.service_ip(cluster, NS, NAME)}:8000/v1"
    _, pieces = serving.stream(url, max_tokens=16)
    rs = cluster.get_json("rayservice", NAME, "-n", NS)
    # Over the sample's engine.maxModelLen (512): refused by the engine, in OpenAI's shape.
    body = {"model": serving.MODEL, "prompt": "word " * 1500, "max_tokens": 4}
    long = httpx.post(f"{url}/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {serving.API_KEY}"})  # fmt: skip
    story.done("ready", apply_to_ready=round(time.monotonic() - applied, 1), pieces=pieces,
               workers=len(_workers(cluster)), serve_config=rs["spec"]["serveConfigV2"],
               too_long=(long.status_code, long.text[:2000]))  # fmt: skip
    story.done("affinity", spread=_spread(cluster, url, SESSIONS, 4))

    cluster_before = rs["status"]["activeServiceStatus"]["rayClusterName"]
    patch = {"spec": {"routing": {"policy": "round-robin"}}}
    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))
    serving.wait_ready(cluster, NS, NAME, timeout=600)
    # Serve reconfigures the replicas in place; give the routers the new config.
    time.sleep(5)
    after = cluster.get_json("rayservice", NAME, "-n", NS)["status"]["activeServiceStatus"]["rayClusterName"]
    story.done("round-robin", spread=_spread(cluster, url, [None], 12)[None], same_cluster=after == cluster_before)

    # The sidecar off (and with it the API keys it checked): a new Ray cluster without the
    # sidecar takes over; requests go on throughout; the edge ConfigMap outlives the old pods.
    old = {p["metadata"]["name"] for p in _workers(cluster)}
    seen: dict[str, float] = {}
    with Probe(url, key=serving.API_KEY) as probe:
        t = time.monotonic()
        ops = [{"op": "replace", "path": "/spec/ingress", "value": {"sidecar": False}}]
        cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=json", "-p", json.dumps(ops))

        def settled() -> bool:
            live = {p["metadata"]["name"] for p in cluster.get_json("pods", "-n", NS)["items"]}
            if not live & old and "old pods gone" not in seen:
                seen["old pods gone"] = time.monotonic() - t
            cm = cluster.kubectl("get", "configmap", f"{NAME}-edge", "-n", NS, check=False).returncode == 0
            if not cm and "edge config deleted" not in seen:
                seen["edge config deleted"] = time.monotonic() - t
            return len(seen) == 2

        cluster.wait_for("the old cluster's pods and the edge config gone", settled, timeout=900)
    # Without the sidecar nothing checks keys: requests without one are served too.
    story.done("sidecar-off", seen=seen, sent=len(probe.results), failures=probe.failures[:10],
               keyless=_post(url, None, key=None))  # fmt: skip
    cluster.kubectl("delete", "llmsvc", NAME, "-n", NS, "--wait=false")


def test_two_replicas_serve_with_ngram_speculative_decoding(routed: Story):
    """vLLM's CPU backend runs ngram speculative decoding (Ray Serve LLM passes the
    speculative_config the operator rendered): both replicas start and answer."""
    res = routed.result("ready")
    assert res["workers"] == 2 and res["pieces"]
    assert "speculative_config" in res["serve_config"] and "ngram" in res["serve_config"]
    MEASURED["2 replicas, speculative ngram: apply -> Ready (s)"] = res["apply_to_ready"]


def test_a_prompt_over_max_model_len_is_refused_with_an_openai_error(routed: Story):
    """engine.maxModelLen reaches vLLM: a longer prompt gets a 400 a client can read (the
    OpenAI error object), not a dropped connection or a 500."""
    code, text = routed.result("ready")["too_long"]
    assert code == 400, (code, text)
    err = json.loads(text)["error"]
    assert "512" in err["message"] and err.get("code") in (400, "400", None), err


def test_stream_batching_off_streams_token_by_token(routed: Story):
    """routing.streamBatchingMs: 0 reaches Serve LLM (its stream batching interval), and the
    answer still streams, in more than one piece."""
    res = routed.result("ready")
    assert "stream_batching_interval_ms: 0" in res["serve_config"], res["serve_config"]
    assert len(res["pieces"]) > 1, res["pieces"]


def test_the_same_session_goes_to_the_same_replica(routed: Story):
    spread = routed.result("affinity")["spread"]
    for session, pods in spread.items():
        assert len(pods) == 1, (session, pods)
    used = collections.Counter(next(iter(p)) for p in spread.values())
    MEASURED["session affinity: sessions per replica"] = dict(used)
    assert len(used) == 2, f"{len(SESSIONS)} sessions hashed onto one replica: {spread}"


def test_round_robin_alternates_and_changes_in_place(routed: Story):
    res = routed.result("round-robin")
    assert res["same_cluster"], "a routing change is a Serve config update, not a new Ray cluster"
    counts = sorted(res["spread"].values())
    assert len(counts) == 2 and counts[1] - counts[0] <= 2, res["spread"]


def test_the_sidecar_off_keeps_serving_and_its_config_outlives_the_old_pods(routed: Story):
    res = routed.result("sidecar-off")
    assert not res["failures"], res["failures"]
    assert res["sent"] > 20
    seen = res["seen"]
    assert seen["edge config deleted"] >= seen["old pods gone"] - 1, seen
    assert res["keyless"] == 200
    MEASURED["sidecar off on a running service: requests failed"] = f"0 of {res['sent']}"
