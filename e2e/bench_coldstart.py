"""`make bench-coldstart`: warm apply -> first token of the CPU sample on the local node, per
model source and loading mode, side by side in one run.

One cluster (a real control plane, the real node, KubeRay) and the operator installed with its
Helm chart, as `make demo` does. Each mode applies the sample with only `spec.model` changed,
waits for Ready, streams a completion, and records:
- apply -> Ready and apply -> first token, as a user sees them;
- the operator's own cold-start breakdown (`status.startup`: the steps `kubectl describe llmsvc`
  shows), from the Ray cluster's creation;
- the worker pod's peak ephemeral storage, sampled from the kubelet's stats summary (what a
  download writes to the pod's disk; a streamed or mounted model writes nothing there).
Then it deletes the service and waits until its pods are gone, so each mode starts from the
same empty node. The sources are the test kit's stand-ins: moto for s3://, fake-gcs-server for
gs://, the Hub stand-in for Hugging Face ids, all inside the node's network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from e2e import incluster, serving
from e2e.build import image, model
from e2e.cluster import Cluster
from e2e.hub import FakeHub
from e2e.node import NODE_NAME
from llmservice_operator.render import startup
from testkit.fake_hub import Repo

NS = "default"
NAME = "coldstart"
REPO = "bench/tiny-llama"
console = Console(soft_wrap=True, width=220)  # the tables side by side, also in a log file


@dataclass
class Run:
    mode: str
    ready_s: float = 0
    first_token_s: float = 0
    steps: dict[str, int] = field(default_factory=dict)
    peak_disk_mib: float = 0
    error: str = ""


class DiskSampler(threading.Thread):
    """The largest ephemeral-storage use the kubelet reports for the service's worker pods."""

    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True)
        self.cluster, self.peak, self.stop = cluster, 0, threading.Event()

    def run(self) -> None:
        path = f"/api/v1/nodes/{NODE_NAME}/proxy/stats/summary"
        while not self.stop.wait(2):
            out = self.cluster.kubectl("get", "--raw", path, check=False).stdout
            try:
                pods = json.loads(out).get("pods", [])
            except json.JSONDecodeError:
                continue
            for p in pods:
                if p["podRef"]["name"].startswith(f"{NAME}-") and "-worker-" in p["podRef"]["name"]:
                    self.peak = max(self.peak, (p.get("ephemeral-storage") or {}).get("usedBytes") or 0)


def modes(cluster: Cluster) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each mode's `spec.model`, made when its turn comes (the stand-ins start once)."""
    assert cluster.node
    built = model.ensure()
    st = serving.stores(cluster, built, NS)
    hub = FakeHub(cluster.node, {REPO: built.model_dir}).start()
    sha = Repo(REPO, built.model_dir).sha
    hub_spec = {"source": REPO, "revision": sha, "hfEndpoint": hub.endpoint}
    s3_spec = st.model_spec | {"source": st.model_uri}

    def cache(name: str) -> dict[str, Any]:  # one directory per source: the first run fills it
        return {"nodeCache": {"path": str(cluster.workdir / f"node-cache-{name}")}}

    return {
        "pvc:// (the sample)": lambda: {},
        "s3:// download": lambda: s3_spec,
        "s3:// download, node cache empty": lambda: s3_spec | cache("s3"),
        "s3:// download, node cache filled": lambda: s3_spec | cache("s3"),
        "gs:// download": lambda: st.model_spec | {"source": st.gcs_model_uri},
        "gs:// stream": lambda: st.model_spec | {"source": st.gcs_model_uri, "loadFormat": "stream"},
        "hf id download": lambda: hub_spec,
        "hf id, node cache empty": lambda: hub_spec | cache("hf"),
        "hf id, node cache filled": lambda: hub_spec | cache("hf"),
    }


def one(cluster: Cluster, mode: str, spec_model: dict[str, Any]) -> Run:
    doc = serving.sample(NS)
    doc["metadata"]["name"] = NAME
    doc["spec"]["model"] |= spec_model
    if mode.endswith("node cache empty"):  # as on a node that never ran the model
        shutil.rmtree(spec_model["nodeCache"]["path"], ignore_errors=True)
    run, disk = Run(mode), DiskSampler(cluster)
    disk.start()
    applied = time.monotonic()
    cluster.apply([doc])
    try:
        status = serving.wait_ready(cluster, NS, NAME, timeout=600)
        run.ready_s = time.monotonic() - applied
        console.print(f"  Ready at {time.strftime('%H:%M:%S')}", style="dim")
        url = f"http://{serving.service_ip(cluster, NS, NAME)}:8000/v1"
        serving.stream(url, max_tokens=4, first=True)
        run.first_token_s = time.monotonic() - applied
        run.steps = _steps(cluster, status)
    except Exception as e:  # a mode that fails is reported in its row, the others still run
        run.error = f"{type(e).__name__}: {str(e)[:200]}"
        console.print(traceback.format_exc(), markup=False, highlight=False)
        if isinstance(e, httpx.TransportError):  # where the first request stopped
            console.print(json.dumps(serving.reachability(cluster, NS, NAME, 8000), indent=1), markup=False)
    finally:
        disk.stop.set()
        disk.join()
        run.peak_disk_mib = disk.peak / 2**20
        cluster.kubectl("delete", "llmsvc", NAME, "-n", NS, "--wait=false")
        cluster.wait_for(
            "the service's pods gone",
            lambda: not cluster.get_json("pods", "-n", NS, "-l", f"llmservice.dev/name={NAME}")["items"],
            timeout=300,
        )
    return run


def _steps(cluster: Cluster, status: dict[str, Any], wait_s: float = 30) -> dict[str, int]:
    """The start's steps in the status: the engine's come from the replica's log, which the
    operator reads once the app runs, a few seconds after Ready."""
    deadline = time.monotonic() + wait_s
    while True:
        steps = {s["name"]: s["seconds"] for s in (status.get("startup") or {}).get("steps", [])}
        if "EngineReady" in steps or time.monotonic() > deadline:
            return steps
        time.sleep(2)
        status = cluster.get_json("llmsvc", NAME, "-n", NS).get("status") or {}


def report(runs: list[Run], goal_s: float) -> None:
    table = Table(title="Cold start on the local node, per model source (seconds from apply)")
    for col in ("mode", "Ready", "first token", "worker disk peak MiB", "error"):
        table.add_column(col, justify="left" if col in ("mode", "error") else "right")
    for r in runs:
        ok = not r.error
        table.add_row(r.mode, f"{r.ready_s:.1f}" if ok else "", f"{r.first_token_s:.1f}" if ok else "",
                      f"{r.peak_disk_mib:.1f}", r.error)  # fmt: skip
    console.print(table)
    steps = Table(title="status.startup (kubectl describe llmsvc): seconds from the Ray cluster's creation")
    steps.add_column("step")
    for r in runs:
        steps.add_column(r.mode, justify="right")
    for s in startup.ORDER:
        steps.add_row(s, *(str(r.steps.get(s, "")) for r in runs))
    console.print(steps)
    sample = [r.first_token_s for r in runs if r.mode.startswith("pvc") and not r.error]
    if sample:
        best = min(sample)
        verdict = "met" if best <= goal_s else "NOT met"
        console.print(
            f"goal: warm apply -> first token <= {goal_s:.0f} s for the sample: {verdict} "
            f"(best {best:.1f} s, median {statistics.median(sample):.1f} s of {len(sample)})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", help="comma-separated prefixes of the modes to run (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each mode")
    ap.add_argument("--goal", type=float, default=90.0, help="seconds, apply -> first token of the sample")
    args = ap.parse_args()
    cluster = Cluster(images=(image.PAUSE, image.OPERATOR, image.RAY_CPU)).start()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(serving.ROOT / "crds" / "llmservice.dev_llmservices.yaml"))
        cluster.wait_established(["llmservices.llmservice.dev"])
        # The operator as users run it (its image, the Helm chart, in the cluster's network):
        # it reads the engine's steps from the replica's log through the Ray dashboard, which
        # the service's NetworkPolicy opens to the operator's pods only.
        took = incluster.InCluster(cluster, incluster.local_values(cluster, [NS])).install()
        console.print(f"operator installed with Helm in {took:.0f} s")
        serving.prepare(cluster, NS)
        table = modes(cluster)
        wanted = [m for m in table if not args.modes or any(m.startswith(p) for p in args.modes.split(","))]
        runs = []
        for i in range(args.repeat):
            for mode in wanted:
                console.print(f"[{i + 1}/{args.repeat}] {mode} ...")
                runs.append(one(cluster, mode, table[mode]()))
                r = runs[-1]
                console.print(f"  {r.error or f'Ready {r.ready_s:.1f} s, first token {r.first_token_s:.1f} s'}")
        report(runs, args.goal)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
