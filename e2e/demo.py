"""`make demo`: the product's main job on the embedded default.

Starts (or reuses) the local cluster (a real control plane, simulated GKE GPU/TPU pools, one
real node that runs pods), installs the LLMService CRD, starts the operator, applies every
sample, waits until the CPU sample is served for real by vLLM on the real node, and streams
an answer from its endpoint. The GPU/TPU samples land on simulated nodes: placement is real,
containers never start there.
"""

from __future__ import annotations

import base64
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from . import cluster as cl
from . import serving
from .node import NODE_NAME

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "default"
console = Console(soft_wrap=True)


class Running(cl.Cluster):
    """The cluster `make cluster-up` left running, driven through its kubeconfig."""

    @classmethod
    def attach(cls) -> Running:
        state = json.loads(cl.STATE_FILE.read_text())
        c = cls(workdir=Path(state["workdir"]))
        c.ports = state["ports"]
        if state.get("slot") is not None:
            c.network = cl.NodeNetwork(state["slot"])
        return c


def _cluster() -> cl.Cluster:
    if cl.STATE_FILE.exists():
        console.print(f"reusing the running cluster ({cl.STATE_FILE})")
        return Running.attach()
    console.print("starting the local cluster (control plane, simulated GKE pools, a real node, KubeRay) ...")
    c = cl.Cluster().start()
    c.save_state()
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in c.timings.items() if v >= 1)
    console.print(f"ready in {c.timings['total']:.0f}s ({steps})")
    return c


def _start_operator(c: cl.Cluster) -> None:
    """`llmservice run` in the background, stopped by `make cluster-down` with the rest."""
    state = json.loads(cl.STATE_FILE.read_text())
    if state.get("operator_pid"):
        return
    log = c.workdir / "operator.log"
    env = {"KUBECONFIG": str(c.kubeconfig_for("llmservice-operator", ("system:masters",))), "PATH": ""}
    env.update(serving.OPERATOR_ENV)
    cli = str(Path(sys.executable).with_name("llmservice"))
    args = [cli, "run", "--log-format", "text", "--health-address", f"{cl.HOST}:{cl.free_port()}",
            "--metrics-address", f"{cl.HOST}:{cl.free_port()}"]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    state["operator_pid"] = proc.pid
    state["pids"].append(proc.pid)
    cl.STATE_FILE.write_text(json.dumps(state, indent=2))
    console.print(f"operator started (pid {proc.pid}, log {log})")


def _secret(name: str, key: str, value: str) -> dict:
    data = {key: base64.b64encode(value.encode()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE}, "data": data}


def main() -> None:
    started = time.monotonic()
    c = _cluster()
    c.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmservice.dev_llmservices.yaml"))
    c.wait_established(["llmservices.llmservice.dev"])
    _start_operator(c)
    # What the samples reference: the tiny model on a volume of the real node, API keys, and a
    # placeholder Hugging Face token (nothing downloads a model here).
    serving.model_volume(c, NAMESPACE)
    serving.api_keys(c, NAMESPACE)
    c.apply([_secret("hf-token", "token", "hf_demo")])
    applied = time.monotonic()
    for path in sorted((ROOT / "manifests" / "samples").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        c.apply([doc])  # the API server validates it against the CRD's schema and CEL rules
        console.print(f"applied {path.name}: LLMService {doc['metadata']['name']}")
    name = yaml.safe_load(serving.SAMPLE.read_text())["metadata"]["name"]
    console.print(f"waiting for {name} (vLLM on the real node) to be Ready: Ray cluster, model load, Serve ...")
    serving.wait_ready(c, NAMESPACE, name, timeout=900)
    ready = time.monotonic() - applied
    _show(c)
    console.print(f"memory of the whole local cluster now (PSS): {c.memory_pss() / 2**30:.1f} GiB")
    url = f"http://{serving.service_ip(c, NAMESPACE, name)}:8000/v1"
    model_id = yaml.safe_load(serving.SAMPLE.read_text())["spec"]["model"]["name"]
    console.print(f"\n[bold]{name} is Ready {ready:.0f}s after apply.[/] A streamed completion from {url}:")
    start = time.monotonic()
    first = 0.0
    stream = serving.client(url).completions.create(model=model_id, prompt="def main():", max_tokens=48, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            first = first or time.monotonic() - start
            console.print(chunk.choices[0].text, end="", markup=False, highlight=False)
    console.print(
        f"\n(first token after {first * 1000:.0f} ms; a random-weight model writes noise: the path is real)\n"
    )
    console.print(
        "Try it by hand (this host routes to the cluster's Services through the node's veth):\n"
        f"  curl -s {url}/chat/completions -H 'Authorization: Bearer {serving.API_KEY}' \\\n"
        f"    -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{model_id}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 16}}\'\n'
        f"  export KUBECONFIG={c.kubeconfig}\n"
        f"  kubectl get llmsvc,rayservices,rayclusters,pods -o wide\n"
        f"  kubectl port-forward svc/{name} 8000:8000   # the way to reach it from elsewhere\n"
        f"  kubectl describe llmsvc {name}; kubectl explain llmservice.spec\n"
        f"  operator log: {c.workdir / 'operator.log'}\n"
        "Stop it:      make cluster-down"
    )
    console.print(f"make demo took {time.monotonic() - started:.0f}s")


def _show(c: cl.Cluster) -> None:
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in c.get_json("nodes")["items"]}
    print(c.kubectl("get", "llmsvc").stdout)
    placed: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for p in c.get_json("pods", "-l", "llmservice.dev/name")["items"]:
        svc = p["metadata"]["labels"]["llmservice.dev/name"]
        role = p["metadata"]["labels"].get("ray.io/node-type", "?")
        node = p["spec"].get("nodeName")
        if not node:
            where = "Pending"
        elif node == NODE_NAME:
            where = "real node (containerd)"
        else:
            where = f"{nodes[node]['cloud.google.com/gke-nodepool']} (simulated)"
        placed[(svc, role)][where] += 1
    table = Table(title="Where KubeRay's pods landed (real kube-scheduler; GPU/TPU pools simulated by kwok)")
    for col in ("LLMService", "pod", "node pool -> pods"):
        table.add_column(col)
    for (svc, role), where in sorted(placed.items()):
        table.add_row(svc, role, ", ".join(f"{k}: {v}" for k, v in sorted(where.items())))
    console.print(table)
    console.print(
        "GPU/TPU samples run on simulated nodes: containers never start there, so they stay\n"
        "Provisioning; samples with nodePool.managed are Degraded on purpose (no GKE API is\n"
        "configured here; `make test` runs them against a fake GKE)."
    )


if __name__ == "__main__":
    main()
