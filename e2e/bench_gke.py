"""The managed node pool phase of `make bench-controlplane`: N services with one GKE pool each,
against the fake GKE (one operation per cluster at a time, 2 s each), through the operator.

Per N: the time until every pool is RUNNING; the time until every pool and service is gone
after deleting them all at once, with the operator killed (-9) and restarted halfway; requests
GKE refused (collisions, "incompatible operation"); pools created twice or left behind. For
the smallest N, a storm: 429, 503 and "incompatible operation" answers for a while during the
creates; how long after it ends the next operation is accepted.

`--operator-src DIR` runs another checkout's operator package (for a before/after table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster import Cluster
from e2e.operator import Operator
from testkit.fake_gke import FakeGKE, FakeGKEServer
from tests.conftest import sample_doc, with_spec

OP_SECONDS = 2.0
PARENT = "projects/bench/locations/us-central1/clusters/bench"


@dataclass
class GkeResult:
    n: int
    create_s: float = 0
    delete_s: float = 0  # None-like -1: not done within the limit
    left_pools: int = 0
    left_services: int = 0
    refused: int = 0  # mutations GKE refused: collisions with a running operation, throttling
    duplicates: int = 0  # pools created more than once
    storm_s: float = 0
    resume_s: float = -1  # storm end -> first accepted mutation


def _docs(ns: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        doc = with_spec(sample_doc("l4-spot-fallback.yaml"), accelerator={"type": "nvidia-l4", "provisioning": "spot"})
        doc["metadata"].update(name=f"p{i}", namespace=ns)
        out.append(doc)
    return out


def _pools(fake: FakeGKE, ns: str) -> dict[str, dict]:
    return {k: v for k, v in fake.pools.get(PARENT, {}).items() if k.startswith(f"{ns}-")}


def _accepted(fake: FakeGKE, ns: str) -> int:
    return sum(1 for o in fake.ops.values() if f"/nodePools/{ns}-" in o.target)


def _created_twice(fake: FakeGKE, ns: str) -> int:
    """Pools whose create GKE accepted more than once (refused attempts do not count)."""
    created = [o.target for o in fake.ops.values() if o.kind == "CREATE_NODE_POOL" and f"/nodePools/{ns}-" in o.target]
    return len(created) - len(set(created))


def _wait(what: str, done, limit: float, since: float | None = None) -> float:
    """Seconds from `since` (default: now) until `done()`, or -1 if not within `limit`."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if done():
            return time.monotonic() - (start if since is None else since)
        time.sleep(0.2)
    print(f"  {what}: not done in {limit:.0f} s")
    return -1


def run_n(cluster: Cluster, n: int, storm_s: float, limit: float, src: Path | None) -> GkeResult:
    r = GkeResult(n, storm_s=storm_s)
    ns = f"gke-{n}{'-storm' if storm_s else ''}"
    cluster.kubectl("create", "namespace", ns)
    with FakeGKEServer(FakeGKE(op_seconds=OP_SECONDS)) as gke:
        env = {
            "LLMSERVICE_GKE__PROJECT": "bench",
            "LLMSERVICE_GKE__LOCATION": "us-central1",
            "LLMSERVICE_GKE__CLUSTER": "bench",
            "LLMSERVICE_GKE__ENDPOINT": gke.endpoint,
            "LLMSERVICE_GKE_POLL_SECONDS": "0.5",
            "LLMSERVICE_RETRY_MAX_DELAY_SECONDS": "60",  # the default: backoff as shipped
            **({"PYTHONPATH": str(src)} if src else {}),
        }
        op = Operator(cluster, "bench-gke", ("-n", ns, "--log-format", "text"), env=env)
        op.start()
        try:
            fake = gke.fake
            if storm_s:
                fake.storm_until = time.monotonic() + storm_s
            t = time.monotonic()
            cluster.apply(_docs(ns, n))

            def running() -> bool:
                pools = _pools(fake, ns)
                return len(pools) == n and all(p["status"] == "RUNNING" for p in pools.values())

            if storm_s:
                before = _accepted(fake, ns)
                time.sleep(max(0.0, fake.storm_until - time.monotonic()))
                r.resume_s = _wait("first operation after the storm", lambda: _accepted(fake, ns) > before, limit)
            r.create_s = _wait("pools RUNNING", running, limit, since=t)
            r.duplicates = _created_twice(fake, ns)
            t = time.monotonic()
            cluster.kubectl("delete", "llmsvc", "--all", "-n", ns, "--wait=false")
            _wait("half the pools deleted", lambda: len(_pools(fake, ns)) <= n // 2, limit)
            op.kill()
            op.start()
            gone = lambda: not _pools(fake, ns) and not cluster.get_json("llmsvc", "-n", ns)["items"]  # noqa: E731
            r.delete_s = _wait("pools and services gone", gone, limit, since=t)
            r.left_pools = len(_pools(fake, ns))
            r.left_services = len(cluster.get_json("llmsvc", "-n", ns)["items"])
            mutations = [x for x in fake.mutations() if f"/nodePools/{ns}-" in x[1] or x[1].endswith("/nodePools")]
            r.refused = max(0, len(mutations) - _accepted(fake, ns))
        finally:
            op.stop()
            cluster.kubectl("patch", "llmsvc", "--all", "-n", ns, "--type=merge", "-p",
                            '{"metadata":{"finalizers":[]}}', check=False)  # fmt: skip
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return r


def report(results: list[GkeResult], label: str = "") -> str:
    rows = [
        ("pools RUNNING after create (s)", lambda r: _s(r.create_s)),
        ("deleted, kill -9 midway: all gone (s)", lambda r: _s(r.delete_s)),
        ("left after the limit: pools / services", lambda r: f"{r.left_pools} / {r.left_services}"),
        ("requests GKE refused", lambda r: str(r.refused)),
        ("pools created twice", lambda r: str(r.duplicates)),
        ("storm: next operation accepted after it ends (s)", lambda r: _s(r.resume_s) if r.storm_s else "-"),
    ]
    head = [f"N={r.n}" + (f", {r.storm_s:.0f} s storm" if r.storm_s else "") for r in results]
    out = [f"| managed pools{label} (1 pool/service, {OP_SECONDS:.0f} s/operation) | " + " | ".join(head) + " |"]
    out.append("|---" * (len(results) + 1) + "|")
    out += [f"| {name} | " + " | ".join(f(r) for r in results) + " |" for name, f in rows]
    plain = [r for r in results if not r.storm_s]
    checks = [
        (
            "pools created and deleted in about N x the operation time + 10 s",
            all(0 <= x <= r.n * OP_SECONDS * 1.3 + 10 for r in plain for x in (r.create_s, r.delete_s)),
        ),
        ("work resumes within 10 s of a storm ending", all(0 <= r.resume_s <= 10 for r in results if r.storm_s)),
        ("0 duplicate or orphaned pools", all(r.duplicates == r.left_pools == 0 for r in results)),
    ]
    out += ["", "Targets:"] + [f"- {what}: {'met' if ok else 'NOT met'}" for what, ok in checks]
    return "\n".join(out)


def _s(x: float) -> str:
    return f"{x:.1f}" if x >= 0 else "not done"


def bench(cluster: Cluster, ns: list[int], storm_s: float, limit: float, src: Path | None) -> list[GkeResult]:
    out = [run_n(cluster, n, 0, limit, src) for n in ns]
    if storm_s:
        out.append(run_n(cluster, min(ns), storm_s, limit, src))
    return out
