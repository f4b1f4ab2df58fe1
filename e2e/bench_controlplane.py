"""`make bench-controlplane`: the operator at fleet scale on the local control plane.

Per N (default 100, 300, 1000), side by side in one run:
- the operator: N LLMServices created by 8 client threads (server-side apply) in a namespace
  KubeRay does not watch; converged when every status has observedGeneration 1. Children per
  second, reconciles per service, the operator's CPU per service, its RSS before / after /
  after deleting everything (twice, 10 s apart: a leak from the allocator), writes during
  idle and after a label edit (audit log), spec-edit-to-RayService latency, deletion time;
- the baseline: the same rendered children applied directly by the same 8 threads;
- the ideal operator: what no operator can do with fewer API writes, done by the same 8
  threads with no operator at all: per service its create, its Ray token Secret, its children,
  one status patch and one Event. Its ratio is the ceiling the API server leaves any operator that writes status.
Prints a table, the targets as met / NOT met, and a PNG of the convergence curves; then the
managed node pool phase against the fake GKE (bench_gke.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.config import new_client_from_config

from e2e import bench_gke
from e2e.cluster import Cluster
from e2e.operator import Operator, image_allocator
from llmservice_operator import GROUP, VERSION
from llmservice_operator.api import parse
from llmservice_operator.controller.decide import owner_ref
from llmservice_operator.controller.kube import Kube
from llmservice_operator.render import names, render
from tests.conftest import sample_doc

ROOT = Path(__file__).resolve().parents[1]
THREADS = 8
OPERATOR_USER = "bench-operator"
SAMPLE = "gemma-b200.yaml"


@dataclass
class Result:
    n: int
    submit_s: float = 0
    converge_s: float = 0
    busy_after_s: float = 0
    child_per_s: float = 0
    raw_per_s: float = 0
    ideal_per_s: float = 0
    reconciles_per_svc: float = 0
    cpu_ms_per_svc: float = 0
    rss_mib: tuple[float, float, float, float] = (0, 0, 0, 0)  # before, after, deleted, deleted +10 s
    idle_writes: int = 0
    label_writes: int = 0
    edit_p50_ms: float = 0
    edit_p99_ms: float = 0
    delete_s: float = 0
    curve: list[tuple[float, int]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.child_per_s / self.raw_per_s if self.raw_per_s else 0

    @property
    def ideal_ratio(self) -> float:
        return self.ideal_per_s / self.raw_per_s if self.raw_per_s else 0


def _rss_mib(op: Operator) -> float:
    return op.process.memory_info().rss / 2**20


def _cpu_s(op: Operator) -> float:
    t = op.process.cpu_times()
    return t.user + t.system


def _doc(namespace: str, i: int) -> dict[str, Any]:
    doc = sample_doc(SAMPLE)
    doc["metadata"] = {"name": f"svc-{i:04d}", "namespace": namespace}
    return doc


def _secrets(namespace: str) -> list[dict[str, Any]]:
    data = {"hf-token": {"token": "aGY="}, "llm-keys": {"api-keys.map": "c2stYSB0ZWFtLWEK"}}
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": n, "namespace": namespace}, "data": d}
        for n, d in data.items()
    ]


def _apply_all(kube: Kube, objs: list[dict[str, Any]]) -> float:
    """Server-side apply by THREADS threads; returns the seconds it took."""

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda obj: _apply_one(kube, obj), objs))
    return time.monotonic() - start


def _apply_one(kube: Kube, obj: dict[str, Any]) -> dict[str, Any]:
    return kube._resource(obj["apiVersion"], obj["kind"]).server_side_apply(
        body=obj, name=obj["metadata"]["name"], namespace=obj["metadata"]["namespace"],
        field_manager="bench", force_conflicts=True,
    ).to_dict()  # fmt: skip


def _ideal(kube: Kube, docs: list[dict[str, Any]], status: dict[str, Any]) -> float:
    """The ideal operator's writes for `docs`, THREADS services at a time; returns seconds."""

    def one(doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        live = _apply_one(kube, doc)
        token = {"apiVersion": "v1", "kind": "Secret", "stringData": {names.RAY_AUTH_TOKEN_KEY: "t"},
                 "metadata": {"name": names.ray_auth_secret(meta["name"]), "namespace": meta["namespace"]}}  # fmt: skip
        for child in [token, *_children(kube, doc)]:  # the Ray token Secret (ray.auth: token), then the rest
            child["metadata"]["ownerReferences"] = [owner_ref(live)]  # as the operator sets them
            _apply_one(kube, child)
        kube.patch_status(meta["namespace"], meta["name"], status)
        kube.event(live, "Normal", "Pending", "the ideal operator's one Event")

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, docs))
    return time.monotonic() - start


def _children(kube: Kube, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What the operator applies for `doc` here (no monitoring CRDs on the local cluster)."""
    objs = render(parse(doc)).kubernetes_objects()
    return [o for o in objs if kube.kind_served(o["apiVersion"], o["kind"])]


def _converged(kube: Kube, namespace: str) -> int:
    items = kube._resource("llmservice.dev/v1alpha1", "LLMService").get(namespace=namespace).to_dict()["items"]
    return sum((i.get("status") or {}).get("observedGeneration") == i["metadata"]["generation"] for i in items)


class _Watch(threading.Thread):
    """Counts converged LLMServices from one watch, as any controller would see them: the
    benchmark does not LIST the whole fleet every half second on the API server the operator
    is being measured against."""

    def __init__(self, kube: Kube, namespace: str):
        super().__init__(daemon=True)
        self.api, self.namespace = client.CustomObjectsApi(kube.api), namespace
        self.rv = self.api.list_namespaced_custom_object(GROUP, VERSION, namespace, "llmservices")["metadata"][
            "resourceVersion"
        ]
        self.done: set[str] = set()
        self.changed = threading.Event()
        self.watch = watch.Watch()
        self.stopped = False

    def run(self) -> None:
        args = (self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, "llmservices")
        try:
            for event in self.watch.stream(*args, resource_version=self.rv):
                obj = event["object"]
                if (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]:
                    self.done.add(obj["metadata"]["name"])
                    self.changed.set()
        except Exception:
            if not self.stopped:  # the connection closing under stop() is no error
                raise

    def stop(self) -> None:
        self.stopped = True
        self.watch.stop()


def _writes(cluster: Cluster) -> int:
    return len(cluster.audit_writes(OPERATOR_USER))


def _quiet(op: Operator, quiet_s: float = 2.0, limit_s: float = 300) -> float:
    """Seconds until the operator's reconcile count stops moving (then `quiet_s` more)."""
    start, last, count = time.monotonic(), time.monotonic(), op.total("llmservice_reconciles_total")
    while time.monotonic() - last < quiet_s and time.monotonic() - start < limit_s:
        time.sleep(0.2)
        now = op.total("llmservice_reconciles_total")
        if now != count:
            count, last = now, time.monotonic()
    return last - start


def _warm_up(cluster: Cluster, kube: Kube, op: Operator, ns: str) -> None:
    """One service created and deleted before "RSS before": what the operator loads on first
    use (the renderer, templates, API discovery) is not counted as memory the fleet kept."""
    doc = _doc(ns, 0)
    doc["metadata"]["name"] = "warm-up"
    _apply_all(kube, [doc])
    cluster.wait_for("the warm-up service", lambda: _converged(kube, ns) == 1, timeout=60)
    cluster.kubectl("delete", "llmsvc", "warm-up", "-n", ns, "--wait=true")
    _quiet(op, quiet_s=1)


def _namespaces(n: int) -> tuple[str, str, str]:
    """The operator's, the raw baseline's and the ideal operator's namespaces for size n."""
    return f"bench-{n}", f"bench-raw-{n}", f"bench-ideal-{n}"


def run_n(
    cluster: Cluster,
    kube: Kube,
    n: int,
    idle_s: float,
    edits: int,
    settle_s: float = 10,
    delete: bool = True,
    env: dict[str, str] | None = None,
) -> Result:
    """One fleet size. The smoke run shortens the pauses that let the operator settle
    (`settle_s`) and leaves the deletion to the namespace's (`delete`)."""
    ns, raw_ns, ideal_ns = _namespaces(n)
    for name in (ns, raw_ns, ideal_ns):
        cluster.kubectl("create", "namespace", name)
    _apply_all(kube, _secrets(ns))
    # Its own user (the audit log counts its writes) and only this namespace.
    env = {"LLMSERVICE_RETRY_DELAY_SECONDS": "5", **(env or {})}
    op = Operator(cluster, OPERATOR_USER, ("-n", ns, "--log-format", "text"), env)
    op.start()
    r = Result(n)
    try:
        _warm_up(cluster, kube, op, ns)
        time.sleep(min(settle_s, 2))
        rss0, cpu0, rec0 = _rss_mib(op), _cpu_s(op), op.total("llmservice_reconciles_total")
        docs = [_doc(ns, i) for i in range(n)]
        seen = _Watch(kube, ns)
        seen.start()
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as submit:
            sub = submit.submit(_apply_all, kube, docs)
            while len(seen.done) < n:
                r.curve.append((time.monotonic() - start, len(seen.done)))
                seen.changed.wait(0.5)
                seen.changed.clear()
                if time.monotonic() - start > 600:
                    raise TimeoutError(f"{len(seen.done)} of {n} services converged in 600 s")
            r.submit_s = sub.result()
        r.converge_s = time.monotonic() - start
        seen.stop()
        r.curve.append((r.converge_s, n))
        r.busy_after_s = _quiet(op, quiet_s=max(1, min(settle_s, 2)))
        children = len(_children(kube, docs[0])) * n
        r.child_per_s = children / r.converge_s
        r.reconciles_per_svc = (op.total("llmservice_reconciles_total") - rec0) / n
        r.cpu_ms_per_svc = (_cpu_s(op) - cpu0) * 1000 / n
        rss_after = _rss_mib(op)
        before = _writes(cluster)
        time.sleep(idle_s)
        r.idle_writes = _writes(cluster) - before
        cluster.kubectl("label", "llmsvc", "svc-0000", "-n", ns, "team=bench")
        time.sleep(min(settle_s, 3) or 0.5)
        r.label_writes = _writes(cluster) - before - r.idle_writes
        lat = []
        rs = kube._resource("ray.io/v1", "RayService")
        for k in range(edits):
            doc = copy.deepcopy(docs[k % n])
            doc["spec"]["autoscaling"] = {"targetOngoingRequests": 10 + k}
            t = time.monotonic()
            _apply_all(kube, [doc])
            want = f"target_ongoing_requests: {10 + k}"
            while want not in rs.get(name=doc["metadata"]["name"], namespace=ns).to_dict()["spec"]["serveConfigV2"]:
                time.sleep(0.005)
            lat.append((time.monotonic() - t) * 1000)
        if lat:
            r.edit_p50_ms = statistics.median(lat)
            r.edit_p99_ms = sorted(lat)[min(len(lat) - 1, int(len(lat) * 0.99))]
        # The baseline: the same rendered children, applied directly (the operator
        # does not watch that namespace).
        raw = []
        for d in docs:
            d = copy.deepcopy(d)
            d["metadata"]["namespace"] = raw_ns
            raw += _children(kube, d)
        r.raw_per_s = len(raw) / _apply_all(kube, raw)
        ideal = [{**copy.deepcopy(d), "metadata": {**d["metadata"], "namespace": ideal_ns}} for d in docs]
        status = kube._resource("llmservice.dev/v1alpha1", "LLMService").get(name="svc-0000", namespace=ns)
        r.ideal_per_s = len(raw) / _ideal(kube, ideal, status.to_dict()["status"])
        rss_after_edits = _rss_mib(op)
        if not delete:
            r.rss_mib = (rss0, rss_after, rss_after_edits, rss_after_edits)
            return r
        t = time.monotonic()
        cluster.kubectl("delete", "llmsvc", "--all", "-n", ns, "--wait=true", "--timeout=600s")
        cluster.wait_for("children garbage-collected", lambda: not rs.get(namespace=ns).to_dict()["items"], 600)
        r.delete_s = time.monotonic() - t
        _quiet(op, quiet_s=min(settle_s, 2))
        deleted = _rss_mib(op)
        time.sleep(settle_s)
        r.rss_mib = (rss0, rss_after, deleted, _rss_mib(op))
    finally:
        op.stop()
        for name in (ns, raw_ns, ideal_ns):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    return r


def report(results: list[Result], png: Path | None) -> str:
    rows = [
        ("submit / converge (s)", lambda r: f"{r.submit_s:.1f} / {r.converge_s:.1f}"),
        ("services/s", lambda r: f"{r.n / r.converge_s:.1f}"),
        ("operator: child objects/s", lambda r: f"{r.child_per_s:.1f}"),
        ("applied directly: objects/s", lambda r: f"{r.raw_per_s:.1f}"),
        ("ratio", lambda r: f"{r.ratio:.2f}"),
        ("ideal operator: child objects/s (ratio)", lambda r: f"{r.ideal_per_s:.1f} ({r.ideal_ratio:.2f})"),
        ("operator / ideal operator", lambda r: f"{r.child_per_s / r.ideal_per_s:.2f}" if r.ideal_per_s else "-"),
        ("reconciles per service on create", lambda r: f"{r.reconciles_per_svc:.1f}"),
        ("operator CPU per service (ms)", lambda r: f"{r.cpu_ms_per_svc:.0f}"),
        ("operator busy after the last status (s)", lambda r: f"{r.busy_after_s:.1f}"),
        ("RSS before / after / deleted / +10 s (MiB)", lambda r: " / ".join(f"{x:.0f}" for x in r.rss_mib)),
        ("writes while idle / after a label edit", lambda r: f"{r.idle_writes} / {r.label_writes}"),
        ("spec edit -> RayService p50 / p99 (ms)", lambda r: f"{r.edit_p50_ms:.0f} / {r.edit_p99_ms:.0f}"),
        ("delete everything (s)", lambda r: f"{r.delete_s:.1f}"),
    ]
    out = ["| | " + " | ".join(f"N={r.n}" for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(f(r) for r in results) + " |" for name, f in rows]
    big = results[-1]
    checks = [
        (f"ratio >= 0.8 at N={big.n}", big.ratio >= 0.8),
        ("<= 2 reconciles per service on create", all(r.reconciles_per_svc <= 2 for r in results)),
        ("0 writes while idle and after a label edit", all(r.idle_writes == r.label_writes == 0 for r in results)),
        (f"RSS <= 200 MiB at N={big.n}", big.rss_mib[1] <= 200),
        ("RSS back within 10% after deleting", all(r.rss_mib[3] <= r.rss_mib[0] * 1.1 for r in results)),
        (f"N={big.n} converged within 60 s", big.converge_s <= 60),
    ]
    out += ["", "Targets:"] + [f"- {what}: {'met' if ok else 'NOT met'}" for what, ok in checks]
    if png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for r in results:
            ax.plot([t for t, _ in r.curve], [c / r.n for _, c in r.curve], label=f"N={r.n}")
        ax.set_xlabel("seconds since the first create")
        ax.set_ylabel("services converged (fraction)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(png)
    return "\n".join(out)


def bench(
    ns: list[int], idle_s: float = 60, edits: int = 20, gke: list[int] | None = None, **gke_opts: Any
) -> tuple[list[Result], list[bench_gke.GkeResult]]:
    with Cluster(real_node=False, kuberay_namespaces=("kuberay",)) as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmservice.dev_llmservices.yaml"))
        cluster.wait_established(["llmservices.llmservice.dev"])
        kube = Kube(new_client_from_config(config_file=str(cluster.kubeconfig)))
        fleet = []
        for n in ns:
            fleet.append(run_n(cluster, kube, n, idle_s, edits))
            # The next size starts on an API server that is no longer deleting this one's
            # thousands of objects (namespace and garbage collectors).
            left = set(_namespaces(n))
            cluster.wait_for(
                f"namespaces {sorted(left)} deleted",
                lambda left=left: not left & {i["metadata"]["name"] for i in cluster.get_json("namespaces")["items"]},
                timeout=900,
            )
        return fleet, bench_gke.bench(cluster, gke, **gke_opts) if gke else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default="100,300,1000", help="fleet sizes, comma-separated")
    p.add_argument("--idle", type=float, default=60, help="seconds of idle to count no-op writes")
    p.add_argument("--edits", type=int, default=20, help="spec edits timed to the RayService")
    p.add_argument("--png", type=Path, default=Path("bench-controlplane.png"))
    p.add_argument("--gke", default="10,50", help="managed-pool phase: services, comma-separated ('' skips)")
    p.add_argument("--storm", type=float, default=20, help="seconds of GKE errors during the smallest create")
    p.add_argument("--gke-limit", type=float, default=420, help="seconds before a GKE step counts as not done")
    p.add_argument("--operator-src", type=Path, help="run this checkout's operator package instead")
    a = p.parse_args()
    sizes = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    fleet, gke = bench(
        sizes(a.n), a.idle, a.edits, sizes(a.gke), storm_s=a.storm, limit=a.gke_limit, src=a.operator_src
    )
    if fleet:
        print(f"operator's allocator: {image_allocator() or 'the default (no jemalloc on this machine)'}")
        print(report(fleet, a.png))
    if gke:
        print(bench_gke.report(gke, f" ({a.operator_src})" if a.operator_src else ""))


if __name__ == "__main__":
    main()
