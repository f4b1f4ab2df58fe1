"""One service on the real node with the switches a production service turns on, exercised in
turn: API keys and TLS through the edge sidecar, scale to zero, load-driven autoscaling, session
affinity then round robin (a rolling restart on the same Ray cluster), a downscale delay
lowered in place, ngram speculative decoding, stream batching off,
the engine's context limit, and suspend. In the background from the session's start
(conftest.switched), once the served sample is up; reconciled by the operator the chart
installed.

Serve scales on the requests its replicas hold: with direct streaming (the default) a replica
takes up to autoscaling.maxOngoingRequests (4 here) and HAProxy queues the rest, unseen by Serve,
so the target (1) is below what one replica takes. The engine's threads stay on one core
(VLLM_CPU_OMP_THREADS_BIND), so a pod that starts under load gets the other core of this 2-core
machine."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e import serving
from e2e.cluster import Cluster, ClusterError
from e2e.story import Story
from llmservice_operator.render.serve_config import llm_deployment_name

from .conftest import MEASURED

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster, pytest.mark.story]  # make test-stories
NS = "serving-switches"
NAME = "switches"
HOST = f"{NAME}.{NS}.svc"  # the name the served certificate is for
STEPS = ["ready", "up", "affinity", "round-robin", "down", "zero", "from-zero", "zero-again", "suspended", "resumed"]
HOLD = 3600  # the first downscale delay: the second replica stays through the routing checks
DOWN = 30  # the downscale delay then set in place, on the running replicas
ZERO = 30  # seconds before the last replica goes
IDLE = 10  # seconds before an idle worker pod goes
CLIENTS = 3
SESSIONS = [f"s{i}" for i in range(12)]  # all on one replica of two by chance: 1 in 2048
_COUNT = """
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8080/metrics", timeout=10).read().decode()
print(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
          if l.startswith("ray_vllm_request_success_total{")))
"""


def _status(cluster: Cluster) -> dict[str, Any]:
    return cluster.get_json("llmsvc", NAME, "-n", NS).get("status") or {}


def _workers(cluster: Cluster, running: bool = False) -> list[dict[str, Any]]:
    pods = cluster.get_json("pods", "-n", NS, "-l", f"llmservice.dev/name={NAME},ray.io/node-type=worker")["items"]
    if not running:
        return pods
    return [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def _pods(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.get_json("pods", "-n", NS, "-l", f"llmservice.dev/name={NAME}")["items"]


def _replicas(cluster: Cluster) -> set[str]:
    """The model replicas Serve runs (its replica ids)."""
    return serving.running_replicas(serving.serve_deployment(cluster, NS, NAME, llm_deployment_name(serving.MODEL)))


def served_by_pod(cluster: Cluster) -> dict[str, float]:
    """Requests each worker pod's engine finished (vLLM's own counter, read inside the pod: the
    NetworkPolicy keeps its metrics port from this host)."""
    out = {}
    for p in _workers(cluster, running=True):
        name = p["metadata"]["name"]
        res = cluster.kubectl("exec", "-n", NS, name, "-c", "ray", "--", "python3", "-c", _COUNT, check=False)
        out[name] = float(res.stdout.strip() or 0) if res.returncode == 0 else 0.0
    return out


class Endpoint:
    """The service's HTTPS endpoint, verified against its certificate's name, with an API key."""

    def __init__(self, cluster: Cluster, ca: Path):
        self.url = f"https://{serving.service_ip(cluster, NS, NAME)}:8000/v1"
        self.ca = str(ca)

    def stream(self, max_tokens: int = 32, first: bool = False) -> tuple[float, list[str]]:
        return serving.stream(self.url, verify=self.ca, sni=HOST, max_tokens=max_tokens, first=first)

    def post(self, body: dict[str, Any], session: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {serving.API_KEY}"}
        if session:
            headers["X-Session-Id"] = session
        with httpx.Client(verify=self.ca, timeout=300) as http:
            return http.post(f"{self.url}/completions", json=body, headers=headers, extensions={"sni_hostname": HOST})

    def complete(self, session: str | None = None) -> int:
        return self.post({"model": serving.MODEL, "prompt": "x = ", "max_tokens": 2}, session).status_code


# Each pod's view of the replicas from Ray's HAProxy: its servers (use-server rules name the
# replica the request router picked) and their state (a DOWN server's use-server is ignored).
_HAPROXY = """
import glob, socket
d = glob.glob("/tmp/haproxy-serve/*/")[0]
print("".join(l for l in open(d + "haproxy.cfg") if l.strip().startswith("server ")))
s = socket.socket(socket.AF_UNIX)
s.connect(d + "admin.sock")
s.sendall(b"show servers state\\n")
s.settimeout(5)
out = b""
while chunk := s.recv(65536):
    out += chunk
print(out.decode())
"""


def haproxy_views(cluster: Cluster) -> dict[str, str]:
    out = {}
    for p in _pods(cluster):
        name = p["metadata"]["name"]
        res = cluster.kubectl("exec", "-n", NS, name, "-c", "ray", "--", "python3", "-c", _HAPROXY, check=False)
        out[name] = (res.stdout or res.stderr)[-3000:]
    return out


def _settled(cluster: Cluster) -> dict[str, float]:
    """The engines' counters once they stopped moving for longer than Ray's metrics export
    interval (10 s): a request finished just before (the trickle's last) counts before, not
    in the next spread (one did: 7 to 4 for 10 requests, round robin)."""
    last, since = served_by_pod(cluster), time.monotonic()
    deadline = since + 60
    while time.monotonic() - since < 12 and time.monotonic() < deadline:
        time.sleep(2)
        now = served_by_pod(cluster)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _spread(cluster: Cluster, ep: Endpoint, sessions: list[str | None], per: int) -> dict[str | None, dict[str, float]]:
    """Per session: how many of its `per` requests each pod served (the engines' counters
    settle within Ray's metrics export interval)."""
    out = {}
    before = _settled(cluster)
    for s in sessions:
        codes = [ep.complete(s) for _ in range(per)]
        assert codes == [200] * per, codes
        want = sum(before.values()) + per
        deadline = time.monotonic() + 30
        while True:
            after = served_by_pod(cluster)
            if sum(after.values()) >= want or time.monotonic() > deadline:
                break
            time.sleep(1)
        out[s] = {p: after[p] - before.get(p, 0) for p in after if after[p] - before.get(p, 0)}
        before = after
    return out


def streams(ep: Endpoint, clients: int, max_tokens: int, pause: float = 0.0) -> serving.Clients:
    """`clients` clients streaming one completion after another (a failing endpoint not hammered)."""

    def send() -> str:
        try:
            _, pieces = ep.stream(max_tokens)
        except (httpx.HTTPError, serving.ClusterError) as e:
            return f"{type(e).__name__}: {e}"[:200]
        return "ok" if pieces else "no tokens"

    return serving.Clients(send, clients, pause, backoff=1.0)


class Marks:
    """When each thing first happened, in seconds from `start`."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.seen: dict[str, float] = {}

    def __call__(self, name: str, happened: bool) -> bool:
        if happened and name not in self.seen:
            self.seen[name] = round(time.monotonic() - self.start, 1)
        return name in self.seen


def scenario(cluster: Cluster, story: Story) -> None:
    serving.prepare(cluster, NS)
    ca = serving.tls_secret(cluster, NS, "switches-tls", HOST)
    doc = serving.small_service(
        NS, NAME,
        replicas={"min": 0, "max": 2, "initial": 1},
        autoscaling={"targetOngoingRequests": 1, "maxOngoingRequests": 4, "upscaleDelaySeconds": 5,
                     "downscaleDelaySeconds": HOLD, "downscaleToZeroDelaySeconds": ZERO, "workerIdleSeconds": IDLE},
        routing={"policy": "session-affinity", "streamBatchingMs": 0},
        engine__speculative={"method": "ngram", "numSpeculativeTokens": 3},
        ray__env={"VLLM_CPU_OMP_THREADS_BIND": "0"},
        # The sample's 4Gi: at 3Gi Ray's memory monitor killed the ngram replica while vLLM started.
        ray__workerResources={"cpu": "100m", "memory": "4Gi"},
        ingress={"apiKeysSecret": serving.KEYS_SECRET, "tlsSecret": "switches-tls"},
    )  # fmt: skip
    applied = time.monotonic()
    cluster.apply([doc])
    status = serving.wait_ready(cluster, NS, NAME, timeout=900)
    ready = time.monotonic() - applied
    # Ready as soon as the head's proxy can hold requests; the first replica starts meanwhile.
    cluster.wait_for(
        "the first replica serving", lambda: (_status(cluster).get("replicas") or {}).get("ready") == 1, 600
    )
    ep = Endpoint(cluster, ca)
    _, pieces = ep.stream(16, first=True)
    # Over the sample's engine.maxModelLen (512): refused by the engine, in OpenAI's shape.
    long = ep.post({"model": serving.MODEL, "prompt": "word " * 1500, "max_tokens": 4})
    rs = cluster.get_json("rayservice", NAME, "-n", NS)
    story.done("ready", status=status, apply_to_ready=round(ready, 1), pieces=pieces,
               apply_to_first_token=round(time.monotonic() - applied, 1), workers=len(_workers(cluster)),
               serve_config=rs["spec"]["serveConfigV2"], too_long=(long.status_code, long.text[:2000]))  # fmt: skip

    # Load: CLIENTS streams at once on one replica, over the target of 1: Serve wants two
    # replicas and KubeRay adds the pod. Then one client, a request a second, while the pod
    # starts and the new replica comes up: on 2 cores, a pod starting beside an engine that
    # streams for 3 clients lost its raylet (`ray start` gives its agents 30 s) and KubeRay
    # replaced it, again and again.
    marks = Marks()

    def up() -> bool:
        st, pods = _status(cluster), _workers(cluster)
        marks("desired 2", (st.get("replicas") or {}).get("desired") == 2)
        marks("pod created", len(pods) == 2)
        marks("pod running", len(_workers(cluster, running=True)) == 2)
        return marks("replica serving", (st.get("replicas") or {}).get("ready") == 2)

    with streams(ep, CLIENTS, max_tokens=200) as load:
        cluster.wait_for(
            "Serve asking for a second replica and KubeRay adding its pod",
            lambda: up() or "pod created" in marks.seen,
            timeout=300,
        )
    with streams(ep, 1, max_tokens=8, pause=1.0) as trickle:
        cluster.wait_for("the second replica serving", up, timeout=600)
        time.sleep(5)  # the new replica takes its share
    results = load.results + trickle.results
    story.done("up", marks=marks.seen, sent=len(results), failures=(load.failures + trickle.failures)[:10])

    # Two replicas (HOLD) for the routing checks, one request at a time.
    story.done("affinity", spread=_spread(cluster, ep, list(SESSIONS), 2), haproxy=haproxy_views(cluster))

    # A new request router is in Serve's code version: every replica restarts, one at a time,
    # on the same Ray cluster, while a client goes on.
    cluster_before = cluster.get_json("rayservice", NAME, "-n", NS)["status"]["activeServiceStatus"]["rayClusterName"]
    before = _replicas(cluster)
    patch = {"spec": {"routing": {"policy": "round-robin"}}}
    t = time.monotonic()
    # A request every 3 s: on 2 cores each new engine imports vLLM and warms up beside the one
    # that answers (the last run: 15 minutes for both with a request a second).
    with streams(ep, 1, max_tokens=8, pause=3.0) as trickle:
        cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))

        def restarted() -> bool:
            try:
                now = _replicas(cluster)
            except ClusterError:  # the dashboard busy while Serve rebuilds the app: ask again
                return False
            return len(now) == 2 and not now & before and (_status(cluster).get("replicas") or {}).get("ready") == 2

        cluster.wait_for("both replicas restarted with the new router", restarted, timeout=1500)
        serving.wait_ready(cluster, NS, NAME, timeout=300)
    after = cluster.get_json("rayservice", NAME, "-n", NS)["status"]["activeServiceStatus"]["rayClusterName"]
    story.done("round-robin", spread=_spread(cluster, ep, [None], 10)[None], same_cluster=after == cluster_before,
               restart=round(time.monotonic() - t, 1), sent=len(trickle.results),
               failures=trickle.failures[:10])  # fmt: skip

    # The downscale delay lowered in place (no restart): the second replica and its pod go.
    before = _replicas(cluster)
    marks = Marks()
    # The last replica's delay held meanwhile: the replica Serve stops keeps serving the trickle
    # (pinned to its pod by a kept connection) for its drain, about 30 s, while Serve counts
    # only the one that stays, finds it idle, and with ZERO went to zero (README, "Scale to zero").
    patch = {"spec": {"autoscaling": {"downscaleDelaySeconds": DOWN, "downscaleToZeroDelaySeconds": HOLD}}}
    # Less than one replica's load: Serve wants ceil(ongoing / target) replicas, and a client
    # that never pauses keeps the average at about one request, which rounds up to two.
    with streams(ep, 1, max_tokens=8, pause=1.0) as trickle:
        cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))

        def down() -> bool:
            marks("desired 1", (_status(cluster).get("replicas") or {}).get("desired") == 1)
            return marks("pod gone", len(_workers(cluster)) == 1)

        cluster.wait_for("back to one replica and one worker pod", down, timeout=DOWN + 300)
    after = _replicas(cluster)
    story.done("down", marks=marks.seen, sent=len(trickle.results), failures=trickle.failures[:10],
               kept=after <= before, replicas={"before": sorted(before), "after": sorted(after)})  # fmt: skip

    zero = {"spec": {"autoscaling": {"downscaleToZeroDelaySeconds": ZERO}}}
    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(zero))

    def at_zero() -> float:
        idle = time.monotonic()
        cluster.wait_for(
            "no worker pod left, the status ScaledToZero",
            lambda: not _workers(cluster) and _status(cluster).get("reason") == "ScaledToZero",
            timeout=300,
        )
        return round(time.monotonic() - idle, 1)

    story.done("zero", idle_to_zero=at_zero(), status=_status(cluster))
    t = time.monotonic()
    ttft, pieces = ep.stream()  # held by the head's proxy while a replica starts
    story.done("from-zero", ttft=round(ttft, 1), total=round(time.monotonic() - t, 1), pieces=pieces,
               workers=len(_workers(cluster)))  # fmt: skip
    story.done("zero-again", idle_to_zero=at_zero())

    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps({"spec": {"suspend": True}}))
    t = time.monotonic()
    cluster.wait_for("every pod of the suspended service gone", lambda: not _pods(cluster), timeout=300)
    cluster.wait_for("phase Suspended", lambda: _status(cluster).get("phase") == "Suspended", timeout=60)
    story.done("suspended", pods_gone=round(time.monotonic() - t, 1), status=_status(cluster))
    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps({"spec": {"suspend": False}}))
    t = time.monotonic()
    serving.wait_ready(cluster, NS, NAME, timeout=900)
    try:
        _, pieces = Endpoint(cluster, ca).stream(first=True)  # a new Service: the RayService was deleted
    except httpx.TransportError as e:  # say where the request stopped
        raise ClusterError(f"{e!r}: {json.dumps(serving.reachability(cluster, NS, NAME, 8000), indent=1)}") from e
    story.done("resumed", resume_to_first_token=round(time.monotonic() - t, 1), pieces=pieces)
    cluster.kubectl("delete", "llmsvc", NAME, "-n", NS, "--wait=false")


def test_with_keys_tls_and_min_zero_it_becomes_ready_and_answers_over_https(switched: Story):
    """replicas.min 0 keeps the head (its proxy holds requests at zero) in the Service with the
    edge sidecar; KubeRay deployed the app to it (the deadlock is gone)."""
    res = switched.result("ready")
    assert res["status"]["phase"] == "Ready" and res["pieces"] and res["workers"] == 1, res
    MEASURED["switches: apply -> Ready (s)"] = res["apply_to_ready"]
    MEASURED["switches: apply -> first token, HTTPS + key (s)"] = res["apply_to_first_token"]


def test_ngram_speculative_decoding_runs_on_the_cpu_engine(switched: Story):
    """Ray Serve LLM passes the rendered speculative_config to vLLM's CPU backend, which starts
    and answers (every answer in this module comes from it)."""
    res = switched.result("ready")
    assert "speculative_config" in res["serve_config"] and "method: ngram" in res["serve_config"]
    assert res["pieces"]


def test_a_prompt_over_max_model_len_is_refused_with_an_openai_error(switched: Story):
    """engine.maxModelLen reaches vLLM: a longer prompt gets a 400 a client can read (the
    OpenAI error object), not a dropped connection or a 500."""
    code, text = switched.result("ready")["too_long"]
    assert code == 400, (code, text)
    err = json.loads(text)["error"]
    assert "512" in err["message"], err


def test_stream_batching_off_streams_in_pieces(switched: Story):
    """routing.streamBatchingMs: 0 reaches Serve LLM's stream batching interval, and the answer
    still streams, in more than one piece."""
    res = switched.result("ready")
    assert "stream_batching_interval_ms: 0" in res["serve_config"], res["serve_config"]
    assert len(res["pieces"]) > 1, res["pieces"]


def test_load_adds_a_replica_and_its_pod_and_no_request_fails(switched: Story):
    res = switched.result("up")
    assert not res["failures"], res["failures"]
    assert res["sent"] > CLIENTS
    for what, seconds in res["marks"].items():
        MEASURED[f"autoscaling: load -> {what} (s)"] = seconds
    MEASURED["autoscaling up: requests failed"] = f"0 of {res['sent']}"


def test_the_same_session_goes_to_the_same_replica(switched: Story):
    res = switched.result("affinity")
    spread = res["spread"]
    for session, pods in spread.items():
        assert len(pods) == 1, (session, pods)
    used = collections.Counter(next(iter(p)) for p in spread.values())
    MEASURED["session affinity: sessions per replica"] = dict(used)
    views = "\n".join(f"== {pod}\n{view}" for pod, view in res["haproxy"].items())
    assert len(used) == 2, f"{len(SESSIONS)} sessions hashed onto one replica: {spread}\n{views}"


def test_round_robin_alternates_after_a_rolling_restart_on_the_same_cluster(switched: Story):
    """A new request router restarts every replica (Serve's code version), one at a time and on
    the same Ray cluster; a client streaming through it sees no failure."""
    res = switched.result("round-robin")
    assert res["same_cluster"], "a routing change is a Serve config update, not a new Ray cluster"
    assert not res["failures"] and res["sent"] > 10, res
    counts = sorted(res["spread"].values())
    assert len(counts) == 2 and counts[1] - counts[0] <= 2, res["spread"]
    MEASURED["routing policy change: rolling restart of 2 replicas (s)"] = res["restart"]
    MEASURED["routing policy change: requests failed"] = f"0 of {res['sent']}"


def test_a_lowered_downscale_delay_applies_in_place_and_the_idle_replica_and_pod_go(switched: Story):
    """autoscaling.downscaleDelaySeconds changed on the running service: Serve takes it without
    restarting the replica that stays, and the idle second replica and its pod go."""
    res = switched.result("down")
    assert not res["failures"], res["failures"]
    assert res["kept"], f"the replica that stayed was restarted: {res['replicas']}"
    for what, seconds in res["marks"].items():
        MEASURED[f"autoscaling: delay lowered -> {what} (s)"] = seconds
    MEASURED["autoscaling down: requests failed"] = f"0 of {res['sent']}"


def test_idle_it_goes_to_zero_worker_pods(switched: Story):
    res = switched.result("zero")
    assert res["status"]["reason"] == "ScaledToZero" and res["status"]["phase"] == "Ready", res["status"]
    assert res["status"]["replicas"] == {"ready": 0, "desired": 0}
    MEASURED["scale to zero: one replica idle -> no worker pod (s)"] = res["idle_to_zero"]


def test_a_request_at_zero_is_held_and_answered(switched: Story):
    res = switched.result("from-zero")
    assert res["pieces"] and res["workers"] == 1, res
    MEASURED["scale to zero: zero -> first token, streamed (s)"] = res["ttft"]


def test_idle_again_it_goes_to_zero_again(switched: Story):
    MEASURED["scale to zero: again, idle -> no worker pod (s)"] = switched.result("zero-again")["idle_to_zero"]


def test_suspended_its_pods_go_and_resumed_it_serves_again(switched: Story):
    res = switched.result("suspended")
    assert res["status"]["phase"] == "Suspended" and res["status"]["reason"] == "Suspended", res["status"]
    resumed = switched.result("resumed")
    assert resumed["pieces"]
    MEASURED["suspend: pods gone (s)"] = res["pods_gone"]
    MEASURED["resume -> first token (s)"] = resumed["resume_to_first_token"]
