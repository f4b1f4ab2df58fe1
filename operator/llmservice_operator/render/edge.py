"""The edge HAProxy sidecar: API keys, per-key rate limits, body size, TLS, metrics.

It runs in every Ray pod that serves traffic (the workers; the head only while it is in the
Service, with replicas.min 0) and forwards to Ray Serve's own HAProxy on
localhost, so the Service can target it without another network hop.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jinja2

from .. import labels as keys
from ..api.resource import LLMService
from ..api.spec import LLMServiceSpec
from ..settings import OperatorSettings
from . import names, probes
from .plan import Plan
from .serve_config import SERVE_PORT

EDGE_PORT = 8100
DRAIN_SECONDS = 5  # preStop of the serving containers (edge sidecar and Ray)
EDGE_METRICS_PORT = 8405
PEERS_PORT = 8406  # HAProxy peers between the service's sidecars (shared rate-limit counts)
PEERS_SECTION = "edge"
PEERS_EVERY = 5  # seconds between the sidecar's DNS looks for its peers
WATCH_SECONDS = 1  # how often the sidecar looks for changed config, keys or certificate
CONFIG_DIR = "/usr/local/etc/haproxy"
KEYS_DIR = "/etc/llmservice/api-keys"
TLS_DIR = "/etc/llmservice/tls"
RUN_DIR = "/run/llmservice-edge"  # an emptyDir: the peers file the supervisor writes
LUA_FILE = "edge.lua"
API_KEYS_FILE = "api-keys.map"  # the key the API-keys Secret must hold
STREAM_TIMEOUT = "3600s"  # matches Ray's RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S: long token streams
_UNITS = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def size_bytes(quantity: str) -> int:
    m = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi)?", quantity)
    assert m, f"validated by the schema: {quantity}"
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


@cache
def _template(name: str) -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("llmservice_operator.render", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(name)


def haproxy_cfg(
    svc: LLMService,
    *,
    bind_address: str = "0.0.0.0",
    edge_port: int = EDGE_PORT,
    metrics_port: int = EDGE_METRICS_PORT,
    serve_port: int = SERVE_PORT,
    keys_dir: str = KEYS_DIR,
    tls_dir: str = TLS_DIR,
    lua_file: str = f"{CONFIG_DIR}/{LUA_FILE}",
) -> str:
    """haproxy.cfg text. Ports and paths are parameters so tests can run it on loopback."""
    ing = svc.spec.ingress
    rate = ing.rate_limit.requests_per_minute if ing.rate_limit else None
    return _template("haproxy.cfg.j2").render(
        name=svc.metadata.name,
        namespace=svc.metadata.namespace,
        bind_address=bind_address,
        edge_port=edge_port,
        metrics_port=metrics_port,
        serve_port=serve_port,
        maxconn=4096,
        nbthread=2,
        # After a reload the old worker keeps its streams for as long as one may last.
        hard_stop_after=STREAM_TIMEOUT,
        stream_timeout=STREAM_TIMEOUT,
        max_body_bytes=size_bytes(ing.max_body_size),
        api_keys=ing.api_keys_secret is not None,
        api_keys_map=f"{keys_dir}/{API_KEYS_FILE}",
        rate_limit=rate,
        retry_after=60,
        lua_file=lua_file,
        peers_section=PEERS_SECTION,
        tls=ing.tls_secret is not None,
        tls_cert=f"{tls_dir}/tls.crt",
    )


def watched_files(svc: LLMService, keys_dir: str = KEYS_DIR, tls_dir: str = TLS_DIR) -> list[str]:
    """The mounted files, besides the config, whose change reloads the sidecar."""
    ing = svc.spec.ingress
    files = [f"{keys_dir}/{API_KEYS_FILE}"] if ing.api_keys_secret else []
    return files + ([f"{tls_dir}/tls.crt", f"{tls_dir}/tls.crt.key"] if ing.tls_secret else [])


def counts_clients(svc: LLMService) -> bool:
    """With API keys the sidecar counts each client's requests (edge.lua): for the rate limit,
    summed over the service's sidecars, and as per-client metrics."""
    ing = svc.spec.ingress
    return ing.sidecar and ing.api_keys_secret is not None


@dataclass(frozen=True)
class Peers:
    """How a sidecar finds the others (shell, in the supervisor script): `lookup` prints one
    `<name> <address>:<port>` line per peer and fails when it cannot tell; `name` and
    `address` are this sidecar's own."""

    lookup: str
    name: str
    address: str
    file: str = f"{RUN_DIR}/peers.cfg"
    every: int = PEERS_EVERY
    section: str = PEERS_SECTION

    def every_ticks(self, interval: float) -> int:
        return max(1, round(self.every / interval))


def pod_peers(p: Plan) -> Peers:
    """In a pod: the pod IPs behind the headless peers Service (the pod's own is POD_IP)."""
    dns = f"{p.names.edge_peers}.{p.namespace}.svc"
    lookup = f"hosts=$(getent hosts {dns}) && printf '%s\\n' \"$hosts\" | awk '{{print $1, $1 \":{PEERS_PORT}\"}}'"
    return Peers(lookup=lookup, name="$POD_IP", address=f"$POD_IP:{PEERS_PORT}")


def supervisor_sh(
    svc: LLMService, config: str, watched: list[str], peers: Peers, interval: float = WATCH_SECONDS
) -> str:
    """The sidecar's entrypoint script: HAProxy, reloaded when `config` or `watched` change,
    or when the service's serving pods (its `peers`) do. The same whether or not a rate limit
    is set: a running sidecar keeps the script it started with."""
    return _template("edge.sh.j2").render(
        name=svc.metadata.name, namespace=svc.metadata.namespace,
        cfg=config, watched=" ".join(watched), interval=interval,
        peers=peers, every_ticks=peers.every_ticks(interval),
    )  # fmt: skip


def lua() -> str:
    """edge.lua: per-client keys, the shared rate limit's sum, /metrics/clients (loaded with
    API keys)."""
    return resources.files(__package__).joinpath("templates", LUA_FILE).read_text()


def config_map(p: Plan) -> dict[str, Any]:
    svc = p.svc
    data = {
        "haproxy.cfg": haproxy_cfg(svc),
        "edge.sh": supervisor_sh(svc, f"{CONFIG_DIR}/haproxy.cfg", watched_files(svc), pod_peers(p)),
    }
    if counts_clients(svc):
        data[LUA_FILE] = lua()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": p.names.edge_config, "namespace": p.namespace, "labels": names.labels(p.name)},
        "data": data,
    }


def serving_port_of(sidecar: bool) -> str:
    """The named port requests reach on a serving pod: the sidecar's, or Ray Serve's without it."""
    return "edge" if sidecar else "serve"


def serving_port(spec: LLMServiceSpec) -> str:
    return serving_port_of(spec.ingress.sidecar)


def revision(config_map: dict[str, Any]) -> str:
    """A digest of what the sidecars read from their ConfigMap (its files, and the Secret
    versions named on it): serving pods are annotated with it when it changes, which makes
    the kubelet refresh their mounts now (see reconcile)."""
    inputs = (config_map["metadata"].get("annotations") or {}).get(keys.EDGE_INPUTS)
    what = {"data": config_map.get("data"), "inputs": inputs}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def peers_service(p: Plan) -> dict[str, Any] | None:
    """A headless Service whose DNS name lists the serving pods' IPs, ready or not: how each
    sidecar finds the others to share rate-limit counts with (there whether or not a limit is
    set, like the supervisor that reads it). During a blue/green upgrade the old cluster's pods
    are in it too, so the limit holds across the switch-over."""
    if not p.spec.ingress.sidecar:
        return None
    name = p.name
    selector = {keys.OWNER: name} if p.head_serves else {keys.OWNER: name, keys.RAY_NODE_TYPE: "worker"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": p.names.edge_peers, "namespace": p.namespace, "labels": names.labels(name)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # peers connect before Ray Serve is ready
            "selector": selector,
            "ports": [{"name": "edge-peers", "port": PEERS_PORT, "targetPort": "edge-peers", "protocol": "TCP"}],
        },
    }


def secret_inputs(svc: LLMService) -> list[str]:
    """The Secrets the sidecar mounts (API keys, TLS certificate)."""
    ing = svc.spec.ingress
    return [n for n in (ing.api_keys_secret, ing.tls_secret) if n] if ing.sidecar else []


def name_inputs(config_map: dict[str, Any], versions: dict[str, str | None]) -> None:
    """Name the versions of the Secrets the sidecar reads on its ConfigMap (Secret name ->
    resourceVersion): a new key map or certificate then changes the ConfigMap, and a changed
    ConfigMap refreshes the running sidecars."""
    if versions:
        annotations = config_map["metadata"].setdefault("annotations", {})
        annotations[keys.EDGE_INPUTS] = ",".join(f"{n}@{v}" for n, v in sorted(versions.items()))


def volumes(p: Plan) -> list[dict[str, Any]]:
    ing = p.spec.ingress
    vols: list[dict[str, Any]] = [{"name": "edge-config", "configMap": {"name": p.names.edge_config}}]
    if ing.api_keys_secret:
        vols.append(
            {
                "name": "edge-api-keys",
                "secret": {"secretName": ing.api_keys_secret, "items": [{"key": API_KEYS_FILE, "path": API_KEYS_FILE}]},
            }
        )
    if ing.tls_secret:
        # HAProxy loads <crt>.key beside a certificate that has no key of its own.
        items = [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.crt.key"}]
        vols.append({"name": "edge-tls", "secret": {"secretName": ing.tls_secret, "items": items}})
    # Whether or not a rate limit is set: turning one on or off must not change the pod
    # template (for a RayService, a whole new Ray cluster), only the ConfigMap.
    vols.append({"name": "edge-run", "emptyDir": {"sizeLimit": "1Mi"}})
    return vols


def readiness(p: Plan, head: bool) -> dict[str, Any]:
    """A worker's sidecar is ready once its path to Ray Serve is: the pod then joins the Service
    (ready on HAProxy alone, a new pod's sidecar answered 503 until its own check of Serve
    passed: one failed request at an upgrade's switch-over, seen on the real node). The head's
    sidecar is ready once HAProxy runs: KubeRay deploys the Serve app only to a ready head, so a
    head that serves (replicas.min 0) would wait for itself forever (seen on the real node); the
    head joins the Service only once KubeRay has found its Serve proxy healthy (its ray.io/serve
    label)."""
    # As often as the Ray container's (render/probes.py): the pod is Ready when both are.
    if head:
        return {"httpGet": {"path": "/livez", "port": EDGE_METRICS_PORT}, "periodSeconds": probes.PERIOD_SECONDS}
    scheme = "HTTPS" if p.spec.ingress.tls_secret else "HTTP"
    probe = {"path": "/-/healthz", "port": EDGE_PORT, "scheme": scheme}
    return {"httpGet": probe, "periodSeconds": probes.PERIOD_SECONDS}


def container(p: Plan, settings: OperatorSettings, head: bool = False) -> dict[str, Any]:
    ing = p.spec.ingress
    mounts = [{"name": "edge-config", "mountPath": CONFIG_DIR, "readOnly": True}]
    if ing.api_keys_secret:
        mounts.append({"name": "edge-api-keys", "mountPath": KEYS_DIR, "readOnly": True})
    if ing.tls_secret:
        mounts.append({"name": "edge-tls", "mountPath": TLS_DIR, "readOnly": True})
    # The peering a rate limit uses is in the pod whether or not one is set (see volumes()).
    mounts.append({"name": "edge-run", "mountPath": RUN_DIR})
    # CPU services run on small nodes (kind, a 2-core dev node, n2-standard-2): ask for less.
    cpu, mem = ("100m", "128Mi") if p.accelerator.is_cpu else ("500m", "256Mi")
    return {
        "name": "edge",
        "image": settings.edge_image,
        # `sh` and `haproxy` from PATH: the official haproxy image and the CPU serving image
        # both have them. The script reloads HAProxy when the mounted files change.
        "command": ["sh", f"{CONFIG_DIR}/edge.sh"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [
            {"name": "edge", "containerPort": EDGE_PORT, "protocol": "TCP"},
            {"name": "edge-metrics", "containerPort": EDGE_METRICS_PORT, "protocol": "TCP"},
            {"name": "edge-peers", "containerPort": PEERS_PORT, "protocol": "TCP"},
        ],
        # Endpoints are removed asynchronously after a pod starts terminating: keep accepting
        # for a few seconds, so a connection that still arrives is served, not refused.
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "readinessProbe": readiness(p, head),
        "livenessProbe": {"httpGet": {"path": "/livez", "port": EDGE_METRICS_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 99,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
