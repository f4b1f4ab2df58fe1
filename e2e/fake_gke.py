"""A local stand-in for the GKE API (container.googleapis.com v1, REST), for tests.

The real `google.cloud.container_v1.ClusterManagerClient` talks to it over HTTP on 127.0.0.1.
It models what the operator must cope with: node pool mutations are long-running operations
that take time; a cluster runs one operation at a time (others get 400 FAILED_PRECONDITION
"incompatible operation"); accelerator quota (403 at request time); stockouts (the operation
ends with an error); 429s; NotFound.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_CLUSTER = r"projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)/clusters/(?P<c>[^/]+)"
_ROUTES = [
    ("POST", re.compile(rf"^/v1/{_CLUSTER}/nodePools$"), "create"),
    ("GET", re.compile(rf"^/v1/{_CLUSTER}/nodePools$"), "list"),
    ("GET", re.compile(rf"^/v1/{_CLUSTER}/nodePools/(?P<n>[^/:]+)$"), "get"),
    ("DELETE", re.compile(rf"^/v1/{_CLUSTER}/nodePools/(?P<n>[^/:]+)$"), "delete"),
    ("POST", re.compile(rf"^/v1/{_CLUSTER}/nodePools/(?P<n>[^/:]+):setAutoscaling$"), "autoscale"),
    ("GET", re.compile(r"^/v1/projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)/operations/(?P<o>[^/]+)$"), "operation"),
]
_API = "https://container.googleapis.com/v1"
_STATUS = {
    400: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
}


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or _STATUS.get(code, "UNKNOWN")


@dataclass
class Operation:
    name: str
    cluster: str
    kind: str
    target: str
    done_at: float
    effect: Any  # callable run when the operation completes
    error: dict[str, Any] | None = None
    done: bool = False

    def as_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "operationType": self.kind,
            "status": "DONE" if self.done else "RUNNING",
            "targetLink": self.target,
            "selfLink": f"{_API}/{self.cluster.rsplit('/clusters/', 1)[0]}/operations/{self.name}",
        }
        if self.done and self.error:
            out["error"] = self.error
        return out


@dataclass
class FakeGKE:
    """State and knobs. Tests change the knobs between calls."""

    op_seconds: float = 0.5
    gpu_quota: dict[str, int] = field(default_factory=dict)  # accelerator type -> GPUs in the region
    stockout: set[str] = field(default_factory=set)  # machine types that never come up
    forbidden: bool = False
    rate_limit_next: int = 0  # answer the next N mutations with 429
    pools: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # cluster -> name -> pool
    ops: dict[str, Operation] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    create_attempts: list[str] = field(default_factory=list)  # pool names, in order
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- behaviour -----------------------------------------------------------------------

    def _advance(self) -> None:
        now = time.monotonic()
        for op in self.ops.values():
            if not op.done and op.done_at <= now:
                op.done = True
                op.effect(op)

    def _running(self, cluster: str) -> Operation | None:
        return next((o for o in self.ops.values() if o.cluster == cluster and not o.done), None)

    def _mutation(self, cluster: str) -> None:
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            raise ApiError(429, "Quota exceeded for quota metric 'Mutate requests' (rate limit)")
        if self.forbidden:
            raise ApiError(403, "Required 'container.nodePools.create' permission for the cluster")
        if op := self._running(cluster):
            raise ApiError(400, f"Cluster is running incompatible operation {op.name}.")

    def _start(self, cluster: str, kind: str, pool: str, effect: Any, error: dict | None = None) -> dict:
        name = f"operation-{next(self._ids)}"
        target = f"https://container.googleapis.com/v1/{cluster}/nodePools/{pool}"
        op = Operation(name, cluster, kind, target, time.monotonic() + self.op_seconds, effect, error)
        self.ops[name] = op
        return op.as_json()

    def _gpus_in_use(self, accelerator: str) -> int:
        total = 0
        for pools in self.pools.values():
            for p in pools.values():
                for acc in p.get("config", {}).get("accelerators", []):
                    if acc.get("acceleratorType") == accelerator:
                        nodes = p.get("autoscaling", {}).get("totalMaxNodeCount", 0)
                        total += int(acc.get("acceleratorCount", 0)) * int(nodes)
        return total

    def create(self, cluster: str, body: dict[str, Any]) -> dict:
        pool = _camel(body.get("nodePool") or {})
        name = pool.get("name", "")
        self.create_attempts.append(name)
        self._mutation(cluster)
        pools = self.pools.setdefault(cluster, {})
        if name in pools:
            raise ApiError(409, f"Already exists: {cluster}/nodePools/{name}.")
        for acc in pool.get("config", {}).get("accelerators", []):
            kind = acc.get("acceleratorType")
            want = int(acc.get("acceleratorCount", 0)) * int(pool.get("autoscaling", {}).get("totalMaxNodeCount", 0))
            if kind in self.gpu_quota and self._gpus_in_use(kind) + want > self.gpu_quota[kind]:
                quota = kind.upper().replace("-", "_") + "_GPUS"
                short = f"request requires '{want}.0' and is short '{want}.0'"
                raise ApiError(403, f'Insufficient regional quota to satisfy request: resource "{quota}": {short}.')
        pool["status"] = "PROVISIONING"
        pool["selfLink"] = f"https://container.googleapis.com/v1/{cluster}/nodePools/{name}"
        pools[name] = pool
        error = None
        if pool.get("config", {}).get("machineType") in self.stockout:
            machine = pool["config"]["machineType"]
            why = "the zone does not have enough resources available to fulfill the request"
            error = {"code": 8, "message": f"ZONE_RESOURCE_POOL_EXHAUSTED: {why} for {machine}."}

        def effect(op: Operation) -> None:
            pool["status"] = "ERROR" if op.error else "RUNNING"
            if op.error:  # as GKE records a failed create on the pool itself
                pool["statusMessage"] = op.error["message"]
                condition = {"code": "GCE_STOCKOUT", "canonicalCode": "RESOURCE_EXHAUSTED"}
                pool["conditions"] = [{**condition, "message": op.error["message"]}]

        return self._start(cluster, "CREATE_NODE_POOL", name, effect, error)

    def _pool(self, cluster: str, name: str) -> dict[str, Any]:
        pool = self.pools.get(cluster, {}).get(name)
        if pool is None:
            raise ApiError(404, f"Not found: {cluster}/nodePools/{name}.")
        return pool

    def delete(self, cluster: str, name: str) -> dict:
        pool = self._pool(cluster, name)
        self._mutation(cluster)
        pool["status"] = "STOPPING"
        return self._start(cluster, "DELETE_NODE_POOL", name, lambda op: self.pools[cluster].pop(name, None))

    def autoscale(self, cluster: str, name: str, body: dict[str, Any]) -> dict:
        pool = self._pool(cluster, name)
        self._mutation(cluster)
        pool["status"] = "RECONCILING"
        autoscaling = _camel(body.get("autoscaling") or {})

        def effect(op: Operation) -> None:
            pool["autoscaling"] = autoscaling
            pool["status"] = "RUNNING"

        return self._start(cluster, "SET_NODE_POOL_AUTOSCALING", name, effect)

    def handle(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append((method, path))
            self._advance()
            for m, pattern, action in _ROUTES:
                match = pattern.match(path)
                if m != method or not match:
                    continue
                g = match.groupdict()
                cluster = f"projects/{g['p']}/locations/{g['l']}/clusters/{g.get('c')}"
                if action == "create":
                    return self.create(cluster, body)
                if action == "list":
                    return {"nodePools": list(self.pools.get(cluster, {}).values())}
                if action == "get":
                    return self._pool(cluster, g["n"])
                if action == "delete":
                    return self.delete(cluster, g["n"])
                if action == "autoscale":
                    return self.autoscale(cluster, g["n"], body)
                if action == "operation":
                    op = self.ops.get(g["o"])
                    if op is None:
                        raise ApiError(404, f"Operation {g['o']} not found.")
                    return op.as_json()
            raise ApiError(404, f"no route for {method} {path}")

    def mutations(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m in ("POST", "DELETE")]


def _camel(obj: Any) -> Any:
    """The client may send snake_case or lowerCamelCase; store camelCase like the API does."""
    if isinstance(obj, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): _camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGKE

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
            code, out = 200, self.fake.handle(method, self.path.split("?", 1)[0], body)
        except ApiError as e:
            code, out = e.code, {"error": {"code": e.code, "message": e.message, "status": e.status}}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, *args: Any) -> None:
        pass


class FakeGKEServer:
    """`with FakeGKEServer() as gke:` serves `gke.fake` on `gke.endpoint` (127.0.0.1)."""

    def __init__(self, fake: FakeGKE | None = None):
        self.fake = fake or FakeGKE()
        handler = type("Handler", (_Handler,), {"fake": self.fake})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeGKEServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
