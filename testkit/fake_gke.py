"""A local stand-in for the GKE API (container.googleapis.com v1, REST), for tests.

The real `google.cloud.container_v1.ClusterManagerClient` talks to it over HTTP on 127.0.0.1.
It models what the operator must cope with: node pool mutations are long-running operations
that take time; a cluster runs one operation at a time (others get 400 FAILED_PRECONDITION
"incompatible operation"); accelerator quota (403 at request time); stockouts (the operation
ends with an error); 429s; NotFound; a storm of 429, 503 and "incompatible operation" answers.

The same server answers Compute Engine's regional resource policies (compute.googleapis.com
`/compute/v1/...`: list, insert, get, delete, and region operations) for the real
`google.cloud.compute_v1.ResourcePoliciesClient`, as tpu7x workload policies need: a policy is
CREATING until its insert operation is done, names are unique per region (409), a policy a
node pool names cannot be deleted (400), and GKE refuses a pool naming a policy that is not
there (400 INVALID_ARGUMENT).
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
    ("GET", re.compile(r"^/v1/projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)/operations$"), "operations"),
]
_REGION = r"^/compute/v1/projects/(?P<p>[^/]+)/regions/(?P<r>[^/]+)"
_COMPUTE_ROUTES = [
    ("GET", re.compile(rf"{_REGION}/resourcePolicies$"), "list"),
    ("POST", re.compile(rf"{_REGION}/resourcePolicies$"), "insert"),
    ("GET", re.compile(rf"{_REGION}/resourcePolicies/(?P<n>[^/]+)$"), "get"),
    ("DELETE", re.compile(rf"{_REGION}/resourcePolicies/(?P<n>[^/]+)$"), "delete"),
    ("GET", re.compile(rf"{_REGION}/operations/(?P<o>[^/]+)$"), "operation"),
]
_API = "https://container.googleapis.com/v1"
_COMPUTE_API = "https://www.googleapis.com/compute/v1"
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
class ComputeOperation:
    """A Compute Engine region operation (compute#operation): status PENDING/RUNNING/DONE and,
    when failed, error.errors[]."""

    name: str
    region: str  # projects/P/regions/R
    kind: str  # insert, delete
    target: str
    done_at: float
    effect: Any
    error: dict[str, Any] | None = None
    done: bool = False

    def as_json(self) -> dict[str, Any]:
        out = {
            "kind": "compute#operation",
            "id": self.name.rsplit("-", 1)[-1],
            "name": self.name,
            "operationType": self.kind,
            "status": "DONE" if self.done else "RUNNING",
            "targetLink": self.target,
            "region": f"{_COMPUTE_API}/{self.region}",
            "selfLink": f"{_COMPUTE_API}/{self.region}/operations/{self.name}",
        }
        if self.done and self.error:
            out["error"] = self.error
        return out


def _region(cluster: str) -> str:
    """projects/P/locations/us-central1[-a]/clusters/C -> projects/P/regions/us-central1."""
    project, location = cluster.split("/")[1], cluster.split("/")[3]
    return f"projects/{project}/regions/{location.rsplit('-', 1)[0] if location.count('-') >= 2 else location}"


@dataclass
class FakeGKE:
    """State and knobs. Tests change the knobs between calls."""

    op_seconds: float = 0.5
    gpu_quota: dict[str, int] = field(default_factory=dict)  # accelerator type -> GPUs in the region
    stockout: set[str] = field(default_factory=set)  # machine types that never come up
    forbidden: bool = False
    rate_limit_next: int = 0  # answer the next N mutations with 429
    storm_until: float = 0.0  # until this time.monotonic(), mutations get 429, 503 and "incompatible" in turn
    pools: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # cluster -> name -> pool
    ops: dict[str, Operation] = field(default_factory=dict)
    policies: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # region -> name -> policy
    compute_ops: dict[str, ComputeOperation] = field(default_factory=dict)
    policy_inserts: list[str] = field(default_factory=list)  # policy names, in order
    requests: list[tuple[str, str]] = field(default_factory=list)
    storm_answers: int = 0
    create_attempts: list[str] = field(default_factory=list)  # pool names, in order
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- behaviour -----------------------------------------------------------------------

    def _advance(self) -> None:
        now = time.monotonic()
        for op in [*self.ops.values(), *self.compute_ops.values()]:
            if not op.done and op.done_at <= now:
                op.done = True
                op.effect(op)

    def _running(self, cluster: str) -> Operation | None:
        return next((o for o in self.ops.values() if o.cluster == cluster and not o.done), None)

    def _mutation(self, cluster: str) -> None:
        if time.monotonic() < self.storm_until:
            self.storm_answers += 1
            kind = self.storm_answers % 3
            if kind == 0:
                raise ApiError(429, "Quota exceeded for quota metric 'Mutate requests' (rate limit)")
            if kind == 1:
                raise ApiError(503, "The service is currently unavailable.", "UNAVAILABLE")
            raise ApiError(400, "Cluster is running incompatible operation operation-upgrade-master.")
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
        pool = camel(body.get("nodePool") or {})
        name = pool.get("name", "")
        self.create_attempts.append(name)
        self._mutation(cluster)
        pools = self.pools.setdefault(cluster, {})
        if name in pools:
            raise ApiError(409, f"Already exists: {cluster}/nodePools/{name}.")
        policy = pool.get("placementPolicy", {}).get("policyName")
        if policy and self.policies.get(_region(cluster), {}).get(policy, {}).get("status") != "READY":
            where = _region(cluster)
            raise ApiError(400, f"Resource policy {where}/resourcePolicies/{policy} not found.", "INVALID_ARGUMENT")
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
        autoscaling = camel(body.get("autoscaling") or {})

        def effect(op: Operation) -> None:
            pool["autoscaling"] = autoscaling
            pool["status"] = "RUNNING"

        return self._start(cluster, "SET_NODE_POOL_AUTOSCALING", name, effect)

    # -- Compute Engine resource policies -------------------------------------------------

    def _compute_start(self, region: str, kind: str, target: str, effect: Any) -> dict:
        name = f"operation-{next(self._ids)}"
        op = ComputeOperation(name, region, kind, target, time.monotonic() + self.op_seconds, effect)
        self.compute_ops[name] = op
        return op.as_json()

    def _policy(self, region: str, name: str) -> dict[str, Any]:
        policy = self.policies.get(region, {}).get(name)
        if policy is None:
            raise ApiError(404, f"The resource '{region}/resourcePolicies/{name}' was not found")
        return policy

    def insert_policy(self, region: str, body: dict[str, Any]) -> dict:
        name = body.get("name", "")
        self.policy_inserts.append(name)
        if self.forbidden:
            raise ApiError(403, "Required 'compute.resourcePolicies.create' permission")
        policies = self.policies.setdefault(region, {})
        if name in policies:
            raise ApiError(409, f"The resource '{region}/resourcePolicies/{name}' already exists")
        link = f"{_COMPUTE_API}/{region}/resourcePolicies/{name}"
        policy = {**body, "kind": "compute#resourcePolicy", "status": "CREATING", "selfLink": link}
        policy["region"] = f"{_COMPUTE_API}/{region}"
        policies[name] = policy
        return self._compute_start(region, "insert", link, lambda op: policy.update(status="READY"))

    def delete_policy(self, region: str, name: str) -> dict:
        policy = self._policy(region, name)
        users = [
            p["name"]
            for cluster, pools in self.pools.items()
            if _region(cluster) == region
            for p in pools.values()
            if p.get("placementPolicy", {}).get("policyName") == name
        ]
        if users:
            why = f"The resource_policy resource '{region}/resourcePolicies/{name}' is already being used by"
            raise ApiError(400, f"{why} node pool {users[0]}", "FAILED_PRECONDITION")
        policy["status"] = "DELETING"
        done = lambda op: self.policies[region].pop(name, None)  # noqa: E731
        return self._compute_start(region, "delete", policy["selfLink"], done)

    def compute(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        for m, pattern, action in _COMPUTE_ROUTES:
            match = pattern.match(path)
            if m != method or not match:
                continue
            g = match.groupdict()
            region = f"projects/{g['p']}/regions/{g['r']}"
            if action == "list":
                return {"kind": "compute#resourcePolicyList", "items": list(self.policies.get(region, {}).values())}
            if action == "insert":
                return self.insert_policy(region, body)
            if action == "get":
                return self._policy(region, g["n"])
            if action == "delete":
                return self.delete_policy(region, g["n"])
            op = self.compute_ops.get(g["o"])
            if op is None:
                raise ApiError(404, f"The resource '{region}/operations/{g['o']}' was not found")
            return op.as_json()
        return None

    def handle(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append((method, path))
            self._advance()
            if path.startswith("/compute/"):
                out = self.compute(method, path, body)
                if out is not None:
                    return out
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
                if action == "operations":  # every cluster's in the location, as GKE lists them
                    where = f"projects/{g['p']}/locations/{g['l']}/"
                    return {"operations": [o.as_json() for o in self.ops.values() if o.cluster.startswith(where)]}
                if action == "operation":
                    op = self.ops.get(g["o"])
                    if op is None:
                        raise ApiError(404, f"Operation {g['o']} not found.")
                    return op.as_json()
            raise ApiError(404, f"no route for {method} {path}")

    def mutations(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m in ("POST", "DELETE")]


def camel(obj: Any) -> Any:
    """The client may send snake_case or lowerCamelCase; store camelCase like the API does."""
    if isinstance(obj, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camel(v) for v in obj]
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
        # A short poll: shutdown() waits for it (each unit test starts and stops a server).
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeGKEServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
