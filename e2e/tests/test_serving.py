"""The product's one job, for real: `kubectl apply` of the CPU sample on the local cluster's real
node ends with KubeRay itself reporting the RayService Ready, the LLMService Ready with its
endpoint, and OpenAI clients answered by vLLM through the edge sidecar and Ray Serve's
HAProxy ingress. Nothing is simulated here: real kubelet, containerd, KubeRay, Ray Serve LLM,
vLLM on CPU, HAProxy, Redis (GCS fault tolerance). Only where the weights live is a stand-in,
each speaking its service's real wire protocol to the real clients: the model in S3 (moto,
boto3) and the LoRA in GCS (fake-gcs-server, pyarrow).

The tests share one service and run in order: serve, LoRA, head kill, upgrade. Then the
host-side data-path modules run while the old cluster goes (KubeRay's drain delay, its pods'
drain), and test_serving_end.py checks that no request failed meanwhile and deletes it all.
Measurements land in MEASURED and are printed at the end of the run.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import itertools
import json
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from e2e import serving
from e2e.build import image
from e2e.cluster import Cluster
from llmservice_operator.render import edge, ray_hooks, storage
from llmservice_operator.render.serve_config import llm_deployment_name
from monitoring import queried_metrics

from .conftest import MEASURED, SERVED_NS, Served, until

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # audit log, node, simulated nodes


NS = SERVED_NS
NAME = serving.SERVICE
MODEL = serving.MODEL
DEPLOYMENT = llm_deployment_name(MODEL)  # Serve's name for the model's deployment


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def test_kuberay_marks_it_ready_and_the_endpoint_streams_tokens(served: Served):
    cluster = served.cluster
    # KubeRay itself reported Ready: its own user wrote every RayService status update.
    rs = served.rayservice()
    assert _condition(rs, "Ready")["status"] == "True"
    assert _condition(rs, "Ready")["reason"] == "NonZeroServeEndpoints"
    writers = {
        ev["user"]["username"]
        for ev in cluster.audit_writes_to("rayservices", "status")
        if ev["objectRef"].get("namespace") == NS
    }
    assert writers == {"kuberay-operator"}, writers
    svc = cluster.get_json("llmsvc", NAME, "-n", NS)
    assert svc["status"]["phase"] == "Ready"
    assert svc["status"]["endpoint"] == f"http://{NAME}.{NS}.svc:8000/v1"
    assert svc["status"]["replicas"] == {"ready": 1, "desired": 1}
    # Every Ray pod runs on the real node, the image imported into its containerd.
    assert {p["spec"]["nodeName"] for p in served.pods()} == {cluster.node.name}
    # ...as the ServiceAccount the spec names, with the S3 credentials from their Secret; the
    # worker carries the label added to it.
    for pod in served.pods():
        assert pod["spec"]["serviceAccountName"] == serving.SERVICE_ACCOUNT
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == serving.S3_SECRET
    # The weights came from the S3 store (moto logs each request), with those credentials.
    key = served.stores.model_uri.removeprefix("s3://")
    assert f'GET /{key}/model.safetensors HTTP/1.1" 200' in served.stores.s3.log(), served.stores.s3.log()[-2000:]
    labels = [p["metadata"]["labels"] for p in served.pods()]
    assert [x.get("team") for x in labels if x.get("ray.io/node-type") == "worker"] == ["e2e"], labels

    chat = served.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
    )
    assert chat.choices[0].message.content and chat.usage.completion_tokens > 0

    # Streamed: the answer comes as several server-sent events. When they arrive depends on how
    # fast the tiny model is against Ray Serve LLM's 50 ms stream batching: 160 tokens took 0.3 s
    # in one run and 11 ms in another, one batch. That nothing on the path holds tokens back is
    # shown with an engine of known pace (test_dataplane.py::
    # test_tokens_stream_through_the_sidecar_as_they_are_generated); here it is measured.
    start = time.monotonic()
    arrivals: list[float] = []
    stream = served.client.completions.create(
        model=MODEL, prompt="import os\n", max_tokens=160, stream=True, extra_body={"ignore_eos": True}
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 3, arrivals
    MEASURED["time to first token, streamed completion (ms)"] = round(arrivals[0] * 1000)
    MEASURED["streamed completion, 160 tokens: first -> last token (ms)"] = round((arrivals[-1] - arrivals[0]) * 1000)

    # The edge sidecar: a wrong key, or none, is refused before Ray sees the request.
    with pytest.raises(openai.AuthenticationError) as err:
        serving.client(served.url, key="sk-wrong").models.list()
    assert err.value.status_code == 401
    no_key = httpx.get(f"{served.url}/models", timeout=10)
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"


# Run in a worker pod's sidecar (the serving image has Python): POST a job to the head's
# dashboard without a token, with a wrong one, and list jobs with the right one.
_SUBMIT = """
import json, sys, urllib.error, urllib.request
url, token = sys.argv[1], sys.argv[2]
def call(method, auth=None):
    headers = {"Content-Type": "application/json"} | ({"Authorization": "Bearer " + auth} if auth else {})
    body = json.dumps({"entrypoint": "touch /tmp/pwned"}).encode() if method == "POST" else None
    try:
        return urllib.request.urlopen(urllib.request.Request(url, body, headers, method=method), timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
print(json.dumps([call("POST"), call("POST", "not-the-token"), call("GET", token)]))
"""


# The steps of a start, in the order they must happen (each pair: before, after).
_STARTUP_ORDER = [
    ("HeadScheduled", "HeadStarted"),
    ("HeadStarted", "HeadReady"),
    ("WorkerScheduled", "WorkerStarted"),
    ("WorkerStarted", "ModelFetched"),
    ("ModelFetched", "EngineInitializing"),
    ("EngineInitializing", "LoadingWeights"),
    ("LoadingWeights", "WeightsLoaded"),
    ("WeightsLoaded", "EngineReady"),
    ("EngineReady", "Serving"),
    ("WorkerStarted", "WorkerReady"),
    ("WorkerReady", "Serving"),
]


def _told_start(cluster: Cluster, ray_cluster: str | None = None) -> dict[str, Any]:
    """The LLMService's status once status.startup tells the start of `ray_cluster` (default:
    the one it tells) with the engine's steps, which come from the replica's log once it runs."""
    found: dict[str, Any] = {}

    def told() -> bool:
        st = cluster.get_json("llmsvc", NAME, "-n", NS)["status"]
        startup = st.get("startup") or {}
        names = {s["name"] for s in startup.get("steps") or []}
        if "EngineReady" in names and ray_cluster in (None, startup.get("rayCluster")):
            found.update(st)
            return True
        return False

    until(f"status.startup of {ray_cluster or 'the Ray cluster'} with the engine's steps", told, 60, 1)
    return found


def test_the_status_and_events_tell_where_the_cold_start_went(served: Served):
    """`kubectl describe llmsvc` shows the start step by step: status.startup counts each step
    from the RayCluster's creation (pods scheduled, images ready, Ray up, the replica serving),
    in the order they must happen, ending about when the test saw the service Ready; each step
    is also a ColdStart Event."""
    cluster = served.cluster
    st = _told_start(cluster)
    startup = st["startup"]
    assert startup["rayCluster"] == st["children"]["rayCluster"]
    at = {s["name"]: s["seconds"] for s in startup["steps"]}
    assert set(at) == {step for pair in _STARTUP_ORDER for step in pair}, at
    for before, after in _STARTUP_ORDER:
        assert at[before] <= at[after] + 1, (before, after, at)  # whole seconds, and the operator's clock
    assert startup["seconds"] == at["Serving"]
    waited = MEASURED["apply -> LLMService Ready, beside other tests (s)"]
    assert at["Serving"] <= waited + 2, (at, waited)  # the Ray cluster is made after the apply
    for name, seconds in at.items():
        MEASURED[f"cold start (cpu-tiny, beside other tests): {name} (s)"] = seconds
    # Downloaded from s3:// before the engine starts (WorkerStarted -> EngineInitializing holds
    # the download), then loaded from the local copy; the upgrade test streams them from gs://.
    MEASURED["cold start, s3:// downloaded: loading weights -> engine ready (s)"] = (
        at["EngineReady"] - at["LoadingWeights"]
    )
    MEASURED["cold start, s3:// downloaded: worker started -> engine ready (s)"] = (
        at["EngineReady"] - at["WorkerStarted"]
    )
    # vLLM inspects the model class in a fresh Python (seconds) unless its model-info cache
    # has the class: the image carries it filled (images/ray-cpu/modelinfo_cache.py). A miss
    # would have rewritten the entry after the container started.
    [worker] = served.pods(f"llmservice.dev/name={NAME},ray.io/node-type=worker")
    entry = "/home/ray/.cache/vllm/modelinfos/vllm-model_executor-models-llama-LlamaForCausalLM.json"
    written = int(cluster.kubectl("exec", "-n", NS, worker["metadata"]["name"], "-c", "ray", "--",
                                  "stat", "-c", "%Y", entry).stdout)  # fmt: skip
    ray_state = next(c for c in worker["status"]["containerStatuses"] if c["name"] == "ray")["state"]
    started = dt.datetime.fromisoformat(ray_state["running"]["startedAt"].replace("Z", "+00:00")).timestamp()
    assert written < started, "the engine did not take the model info from the image's cache"
    # The replica fetched its model files from s3:// itself (render/ray_hooks.py): no second
    # Python imported torch and vLLM for Ray's node-initialization task on the worker.
    logs = cluster.kubectl("exec", "-n", NS, worker["metadata"]["name"], "-c", "ray", "--", "grep", "-rhoE",
                           f"initialize_remote_node|{ray_hooks.FETCHED}", "/tmp/ray/session_latest/logs",
                           check=False).stdout  # fmt: skip
    assert ray_hooks.FETCHED in logs, logs
    assert "initialize_remote_node" not in logs, "Ray's node-initialization task ran on the worker"
    # ...into the node cache (model.nodeCache): the bucket folder, complete, in the node's directory.
    buckets = Path(storage.BUCKET_CACHE).relative_to(storage.NODE_CACHE_MOUNT)
    cached = list((cluster.workdir / serving.NODE_CACHE / buckets).glob("*/*/config.json"))
    assert len(cached) == 1 and (cached[0].parent / ".complete").exists(), cached
    events = cluster.get_json("events", "-n", NS, "--field-selector", f"involvedObject.name={NAME},reason=ColdStart")[
        "items"
    ]
    told = " ".join(e["message"] for e in events)
    for name in at:
        assert f"({name})" in told, (name, told)


def test_the_ray_dashboard_refuses_job_submissions_without_the_token(served: Served):
    """Ray token authentication (spec.ray.auth, on by default): a pod that reaches the head's
    dashboard cannot submit a job (ShadowRay) without the token the operator generated,
    while KubeRay, which has it, deployed the Serve app (the service answers)."""
    cluster = served.cluster
    cluster_name = served.rayservice()["status"]["activeServiceStatus"]["rayClusterName"]
    secret = cluster.get_json("secret", f"{NAME}-ray-auth", "-n", NS)
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "LLMService"
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    [worker] = served.pods(f"llmservice.dev/name={NAME},ray.io/node-type=worker")
    url = f"http://{cluster_name}-head-svc.{NS}.svc:8265/api/jobs/"
    out = cluster.kubectl("exec", "-n", NS, worker["metadata"]["name"], "-c", "edge", "--",
                          "python3", "-c", _SUBMIT, url, token).stdout  # fmt: skip
    assert json.loads(out) == [401, 403, 200], out
    assert served.client.models.list().data, "KubeRay deployed the app with the token"
    # The NetworkPolicy, enforced on the real node (kube-router's firewall, as Dataplane V2 or
    # Calico on GKE): a pod that is not one of the service's cannot even connect to the
    # dashboard, while the serving port stays open to it.
    policy = cluster.get_json("networkpolicy", f"{NAME}-ray", "-n", NS)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"llmservice.dev/name": NAME}}
    head = f"{cluster_name}-head-svc.{NS}.svc"
    outside = _connect_from_another_pod(cluster, [(head, 8265), (worker["status"]["podIP"], edge.EDGE_PORT)])
    assert outside == ["blocked", "connected"], outside


# Run in a pod of no service: connect to each host:port given, report what happened.
_CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, int(port)))
        print("connected")
    except OSError:  # refused or timed out: a dropped or rejected SYN
        print("blocked")
"""


def _connect_from_another_pod(cluster: Cluster, targets: list[tuple[str, int]]) -> list[str]:
    name = f"probe-{int(time.time())}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "probe"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"kubernetes.io/hostname": cluster.node.name},
            "containers": [{
                "name": "probe", "image": image.RAY_CPU.name, "imagePullPolicy": "Never",
                "command": ["python3", "-c", _CONNECT, *(f"{h}:{p}" for h, p in targets)],
            }],
        },
    }  # fmt: skip
    cluster.apply([pod])
    try:
        cluster.wait_for(
            f"pod {name} done",
            lambda: cluster.get_json("pod", name, "-n", NS)["status"].get("phase") in ("Succeeded", "Failed"),
            timeout=120,
        )
        return cluster.kubectl("logs", name, "-n", NS).stdout.split()
    finally:
        cluster.kubectl("delete", "pod", name, "-n", NS, "--wait=false", check=False)


def test_a_lora_request_is_answered_by_the_adapter(served: Served):
    """The adapter is fetched from the GCS bucket (anonymous reads behind an endpoint) on the
    first request that names it."""

    def greedy(model_id: str) -> str:
        out = served.client.completions.create(model=model_id, prompt="def main():", max_tokens=16, temperature=0)
        return out.choices[0].text

    base, adapted = greedy(MODEL), greedy(served.lora)
    # Random weights write noise, but deterministic noise: the adapter changes it.
    assert adapted == greedy(served.lora)
    assert base != adapted
    # With direct streaming, /v1/models is vLLM's own: it lists an adapter once loaded.
    assert {MODEL, served.lora} <= {m.id for m in served.client.models.list()}


def _status(served: Served, key: str) -> int:
    return httpx.get(f"{served.url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def _serving_pods(served: Served) -> dict[str, int]:
    """uid -> restarts of the sidecar, for the pods behind the Service (the workers)."""
    pods = served.pods(f"llmservice.dev/name={NAME},ray.io/node-type=worker")
    return {
        p["metadata"]["uid"]: next(c["restartCount"] for c in p["status"]["containerStatuses"] if c["name"] == "edge")
        for p in pods
    }


def test_a_revoked_key_is_refused_by_the_running_sidecar_while_its_stream_goes_on(served: Served):
    """Editing the API keys Secret reaches the running edge sidecar without a restart: the
    operator notices the Secret's new version, annotates the serving pods (the kubelet then
    refreshes the mounted key map at once) and the sidecar reloads HAProxy gracefully."""
    cluster = served.cluster
    pods = _serving_pods(served)
    cluster_name = served.rayservice()["status"]["activeServiceStatus"]["rayClusterName"]
    serving.api_keys(cluster, NS, {serving.API_KEY: "local-demo", "sk-e2e-leaving": "leaving"})
    added = until("the new key let in", lambda: _status(served, "sk-e2e-leaving") == 200)
    stream = serving.client(served.url, key="sk-e2e-leaving").completions.create(
        model=MODEL, prompt="def f():", max_tokens=300, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = iter(stream)
    received = list(itertools.islice(chunks, 3))
    serving.api_keys(cluster, NS, {serving.API_KEY: "local-demo", "sk-e2e-arriving": "arriving"})
    revoked = until("the revoked key refused", lambda: _status(served, "sk-e2e-leaving") == 401)
    assert _status(served, "sk-e2e-arriving") == 200
    for c in chunks:  # read slowly: the client's connection outlives the reload
        time.sleep(0.01)
        received.append(c)
    # The stream ran to its end: all 300 tokens, finished by length, not cut by the reload.
    # (The loopback test in test_dataplane.py shows the same for a stream still being generated.)
    assert received[-1].usage is not None and received[-1].usage.completion_tokens == 300, received[-1]
    assert [c.choices[0].finish_reason for c in received if c.choices][-1] == "length"
    assert _serving_pods(served) == pods, "no pod was replaced or restarted"
    assert served.rayservice()["status"]["activeServiceStatus"]["rayClusterName"] == cluster_name
    MEASURED["edge on real pods: key added -> accepted (s)"] = round(added, 1)
    MEASURED["edge on real pods: key revoked -> refused (s)"] = round(revoked, 1)
    serving.api_keys(cluster, NS)
    # The bound: LLMSERVICE_SECRET_REFRESH_SECONDS (2 s here) + the sidecar's look (1 s) +
    # the kubelet's refresh and the reload; slack for a loaded 2-core machine.
    assert revoked < 2 + edge.WATCH_SECONDS + 7


def test_a_changed_body_limit_reaches_the_running_sidecar(served: Served):
    """An ingress change rewrites the edge ConfigMap; the pods are annotated, the kubelet
    refreshes the file, the sidecar reloads. Nothing restarts: a pod template change would have
    meant a new Ray cluster."""
    cluster = served.cluster
    pods = _serving_pods(served)
    body = {"model": MODEL, "prompt": "word " * 800, "max_tokens": 1}  # ~4 KiB

    def post() -> int:
        headers = {"Authorization": f"Bearer {serving.API_KEY}"}
        return httpx.post(f"{served.url}/completions", headers=headers, json=body, timeout=30).status_code

    assert post() != 413
    patch = '{"spec":{"ingress":{"maxBodySize":"2Ki"}}}'
    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", patch)
    took = until("the new body limit", lambda: post() == 413)
    assert _serving_pods(served) == pods, "no pod was replaced or restarted"
    MEASURED["edge on real pods: body limit changed -> in effect (s)"] = round(took, 1)
    undo = '[{"op":"remove","path":"/spec/ingress/maxBodySize"}]'
    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=json", "-p", undo)
    until("the default body limit back", lambda: post() != 413)


_http = httpx.Client(timeout=30)  # kept-alive connections to each pod; httpx.get() costs ~20 ms a call


def _edge_get(url: str, key: str) -> int:
    return _http.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"}).status_code


def test_changed_replica_bounds_reach_the_running_ray_cluster(served: Served):
    """KubeRay never carries a RayService's worker min/max replicas over to its running
    RayCluster (they are out of the hash that decides an update): the operator does, or a
    raised replicas.max would leave Serve wanting replicas the cluster may not add workers for
    (seen here: a scale to 2 stuck Deploying). No replica is added: min stays 1, no load. Serve
    applies the new bounds to the running replica without restarting it (in the application's
    args they would restart it, reloading its weights: the args are in Serve's code version)."""
    cluster = served.cluster

    def bounds() -> tuple[int, int]:
        name = served.rayservice()["status"]["activeServiceStatus"]["rayClusterName"]
        [group] = cluster.get_json("raycluster", name, "-n", NS)["spec"]["workerGroupSpecs"]
        return group["minReplicas"], group["maxReplicas"]

    def serve_view() -> dict[str, Any]:
        return serving.serve_deployment(cluster, NS, NAME, DEPLOYMENT)

    def serve_max() -> int | None:
        conf = serve_view().get("deployment_config") or {}
        return (conf.get("autoscaling_config") or {}).get("max_replicas")

    def same_replica(seconds: float) -> None:
        """The replica Serve ran before is the only one it has, in any state, for `seconds`
        after it applied the change: a restart is a rolling update, whose new replica Serve
        lists (starting) at once, beside the old one."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            now = {r["replica_id"] for r in serve_view().get("replicas", [])}
            assert now == replicas, f"the replica restarted: {replicas} -> {now}"
            time.sleep(1)

    replicas = serving.running_replicas(serve_view())
    assert bounds() == (1, 1) and len(replicas) == 1 and serve_max() == 1, replicas
    patch = {"spec": {"replicas": {"min": 1, "max": 2}}}
    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))
    try:
        took = until("the running cluster's max replicas 2", lambda: bounds() == (1, 2), 60, 0.5)
        MEASURED["replicas.max 1 -> 2: on the running RayCluster (s)"] = round(took, 1)
        took = until("Serve's max replicas 2", lambda: serve_max() == 2, 120, 1)
        MEASURED["replicas.max 1 -> 2: in Serve (s)"] = round(took, 1)
        same_replica(6)
    finally:
        undo = {"spec": {"replicas": {"min": 1, "max": 1}}}
        cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(undo))
    until("the bounds back", lambda: bounds() == (1, 1) and serve_max() == 1, 120, 1)
    # Done before the next test kills the head (a head killed mid-update stalled requests for 35 s).
    serving.wait_ready(cluster, NS, NAME, timeout=180)
    same_replica(4)
    assert served.client.models.list().data


class Load:
    """A client that keeps sending (one request at a time, `pause` seconds apart) through the
    Service until stopped; each outcome recorded. Not faster: after each engine step vLLM's CPU
    worker busy-polls its queue for a second (shm_broadcast's SpinCondition), so a request
    a second kept one of the two cores spinning and the new cluster of an upgrade started on
    the other (measured: 297 s to switch over; 249 s with a request every 2 s)."""

    def __init__(self, url: str, pause: float):
        self.client = serving.client(url, timeout=60)
        self.pause = pause
        self.results: list[tuple[float, float, str]] = []  # (start, seconds, "ok" or the error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                self.client.completions.create(model=MODEL, prompt="x = ", max_tokens=8)
                outcome = "ok"
            except openai.OpenAIError as e:
                outcome = f"{type(e).__name__}: {e}"[:200]
            self.results.append((t, time.monotonic() - t, outcome))
            self._stop.wait(self.pause)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(90)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def failures(self) -> list[tuple[float, float, str]]:
        return [r for r in self.results if r[2] != "ok"]

    def slowest(self) -> float:
        return max((r[1] for r in self.results), default=0.0)

    def answering_since(self, t: float) -> float | None:
        """The first successful request at or after t."""
        return next((s for s, _, r in self.results if s >= t and r == "ok"), None)

    def report(self, since: float, **marks: float) -> list[str]:
        """Each failure with when it started, relative to `since` and to the named moments."""
        rel = ", ".join(f"{k} at {v - since:+.1f}s" for k, v in marks.items())
        return [f"{s - since:+.1f}s ({d:.1f}s): {r}" for s, d, r in self.failures] + [rel]


def test_killing_the_head_pod_recovers(served: Served):
    """GCS fault tolerance (real Redis): the worker keeps its replica while the head restarts,
    so the Service (workers only) keeps answering."""
    cluster = served.cluster
    [head] = served.pods(f"llmservice.dev/name={NAME},ray.io/node-type=head")
    with Load(served.url, pause=2.0) as load:
        time.sleep(2)
        killed = time.monotonic()
        cluster.kubectl("delete", "pod", head["metadata"]["name"], "-n", NS, "--grace-period=0", "--force")

        def head_back() -> bool:
            heads = served.pods(f"llmservice.dev/name={NAME},ray.io/node-type=head")
            return any(
                p["metadata"]["name"] != head["metadata"]["name"]
                and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
                and p["status"].get("containerStatuses")
                for p in heads
            )

        cluster.wait_for("a new head pod Ready", head_back, timeout=300)
        head_ready = time.monotonic() - killed
        serving.wait_ready(cluster, NS, NAME, timeout=300)
        time.sleep(3)
    MEASURED["head kill: new head Ready (s)"] = round(head_ready, 1)
    MEASURED["head kill: failed requests"] = f"{len(load.failures)} of {len(load.results)}"
    MEASURED["head kill: slowest request (s)"] = round(load.slowest(), 1)
    answering = load.answering_since(killed + head_ready)
    assert answering is not None, load.failures[-3:]
    ok = serving.client(served.url).completions.create(model=MODEL, prompt="y = ", max_tokens=4)
    assert ok.choices[0].text


RATE_LIMIT = 60  # requests per minute per client, set with the engine change below
BURST_KEYS = {"sk-e2e-burst": "burst", "sk-e2e-probe": "probe"}


def _burst_over(pod_ips: list[str]) -> list[int]:
    """A client far above the limit: 8 connections, 8 x the limit of requests, each to one of
    the serving pods picked at random (as a load balancer spreads them)."""
    urls = [f"http://{ip}:{edge.EDGE_PORT}/v1" for ip in pod_ips]
    a, b = urls[0], urls[1]
    # The sidecars count together (peered): the probe client's budget spent on one pod is
    # refused by the other.
    until("the limit in the sidecars", lambda: _edge_get(a, "sk-e2e-probe") == 429, 60, 0.02)
    until("the other pod counting the first one's requests", lambda: _edge_get(b, "sk-e2e-probe") == 429, 30)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: _edge_get(random.choice(urls), "sk-e2e-burst"), range(8 * RATE_LIMIT)))


def test_an_engine_change_upgrades_to_a_new_cluster_without_failing_requests(served: Served):
    """Blue/green: the new Ray cluster comes up beside the old one, KubeRay switches, the old
    one goes; requests keep being answered throughout. The new cluster streams the model from
    gs:// (the same weights; Run:ai streamer) instead of downloading it from s3://. The same
    change sets a rate limit: in
    the switch-over's drain, with the old cluster's and the new cluster's serving pods both
    up, a client bursting over both gets the service's limit, not twice it (the sidecars of
    both clusters are one service's peers). The load stays on until the old cluster is gone,
    which test_serving_end.py checks: KubeRay keeps it for drainSeconds, then its pods drain,
    while the host-side data-path tests run."""
    cluster = served.cluster
    old = served.rayservice()["status"]["activeServiceStatus"]["rayClusterName"]
    serving.api_keys(cluster, NS, {serving.API_KEY: "local-demo", **BURST_KEYS})
    load = Load(served.url, pause=3.0)
    served.finally_stop.append(load.stop)  # the session stops it if test_serving_end.py does not
    load.start()
    time.sleep(2)
    changed = time.monotonic()
    # The same model, now streamed from gs:// (fake-gcs-server through spec.model.storage.gcs)
    # by vLLM's Run:ai streamer: the new cluster reads the weights from the bucket.
    patch = {
        "spec": {
            # (No node cache: a streamed model is never on the node's disk.)
            "model": {"source": served.stores.gcs_model_uri, "loadFormat": "stream", "nodeCache": None},
            "engine": {"maxModelLen": 384},
            "ingress": {"rateLimit": {"requestsPerMinute": RATE_LIMIT}},
        }
    }
    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))
    switched: dict[str, float] = {}

    def switched_over() -> bool:
        active = served.rayservice()["status"].get("activeServiceStatus", {}).get("rayClusterName")
        if active and active != old and "t" not in switched:
            switched["t"] = time.monotonic()
        return "t" in switched

    cluster.wait_for("KubeRay to switch to the new cluster", switched_over, timeout=600)
    served.handover["upgrade"] = Upgrading(load, old, changed, switched["t"])
    workers = [
        next(p["status"]["podIP"] for p in served.pods(f"ray.io/cluster={c},ray.io/node-type=worker"))
        for c in (old, served.rayservice()["status"]["activeServiceStatus"]["rayClusterName"])
    ]
    codes = _burst_over(workers)
    accepted = codes.count(200)
    serving.wait_ready(cluster, NS, NAME, timeout=300)
    MEASURED["upgrade: spec change -> traffic on the new cluster (s)"] = round(switched["t"] - changed, 1)
    MEASURED[f"edge on real pods: accepted of a {RATE_LIMIT}/min limit, 2 pods, {len(codes)} requests"] = accepted
    assert set(codes) == {200, 429}, codes
    assert RATE_LIMIT <= accepted <= RATE_LIMIT * 1.2, accepted
    assert not load.failures, load.report(changed, switched=switched["t"])
    # The new engine runs with the new context length (Ray's model card says so), on the
    # weights from the bucket.
    card = served.client.models.retrieve(MODEL)
    assert card.model_extra["metadata"]["max_request_context_length"] == 384, card
    conf = served.rayservice()["spec"]["serveConfigV2"]
    assert served.stores.gcs_model_uri in conf and "load_format: runai_streamer" in conf, conf
    # The status now tells the new cluster's start, from its own creation.
    new = served.rayservice()["status"]["activeServiceStatus"]["rayClusterName"]
    startup = _told_start(cluster, new)["startup"]
    assert startup["seconds"] is not None, startup
    MEASURED["upgrade: new Ray cluster created -> serving (s)"] = startup["seconds"]
    at = {s["name"]: s["seconds"] for s in startup["steps"]}
    # (vLLM logs no "Loading weights took" when the streamer loads them.)
    MEASURED["cold start, gs:// streamed: loading weights -> engine ready (s)"] = (
        at["EngineReady"] - at["LoadingWeights"]
    )
    MEASURED["cold start, gs:// streamed: worker started -> engine ready (s)"] = at["EngineReady"] - at["WorkerStarted"]


@dataclass
class Upgrading:
    """An upgrade switched over, its old cluster still going: test_serving_end.py waits for it."""

    load: Load  # still sending
    old_cluster: str
    changed: float  # when the spec changed (monotonic)
    switched: float  # when KubeRay moved traffic to the new cluster


def test_every_metric_the_dashboards_and_alerts_query_is_scraped_from_the_real_pods(served: Served):
    """The shipped dashboards and alerts query only what the pods really export: a real
    Prometheus has scraped the operator's pods, the Ray and vLLM containers and the edge
    sidecars (its /metrics and /metrics/clients) through this whole module's traffic."""
    prom = served.prometheus
    # One answer Ray Serve counts as an error (an unknown model), as real traffic has.
    bad = httpx.post(f"{served.url}/completions", json={"model": "no-such-model", "prompt": "x"},
                     headers={"Authorization": f"Bearer {serving.API_KEY}"}, timeout=30)  # fmt: skip
    assert bad.status_code >= 400
    prom.wait_scrapes()

    def every_pod_scraped() -> bool:
        up = {t["labels"]["pod"] for t in prom.targets() if t["health"] == "up"}
        running = [p for p in [*served.pods(), *served.operator.pods()] if not p["metadata"].get("deletionTimestamp")]
        return {p["metadata"]["name"] for p in running} <= up

    until("every running pod of the service and the operator scraped", every_pod_scraped, 90, 1)
    wanted, scraped = queried_metrics(), prom.metric_names()
    MEASURED["metrics the dashboards and alerts query, found in real scrapes"] = (
        f"{len(wanted & scraped)} of {len(wanted)}"
    )
    assert not wanted - scraped, sorted(wanted - scraped)
