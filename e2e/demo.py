"""`make demo`: the product's main job on the embedded default.

Starts (or reuses) the local control plane with simulated GKE nodes and the real KubeRay
operator, installs the LLMService CRD, starts the operator (`llmservice run`), applies every
sample LLMService, and shows what the operator made of them and where KubeRay's pods landed.
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

from llmservice_operator.api import parse
from llmservice_operator.render import render
from llmservice_operator.settings import OperatorSettings

from . import cluster as cl

ROOT = Path(__file__).resolve().parents[1]
console = Console(soft_wrap=True)


class Running(cl.Cluster):
    """The cluster `make cluster-up` left running, driven through its kubeconfig."""

    @classmethod
    def attach(cls) -> Running:
        state = json.loads(cl.STATE_FILE.read_text())
        c = cls(workdir=Path(state["workdir"]))
        c.ports = state["ports"]
        return c


def _cluster() -> cl.Cluster:
    if cl.STATE_FILE.exists():
        console.print(f"reusing the running cluster ({cl.STATE_FILE})")
        return Running.attach()
    console.print("starting the local control plane (etcd, kube-apiserver, scheduler, kwok, KubeRay) ...")
    c = cl.Cluster().start()
    c.save_state()
    console.print(f"ready in {c.timings['total']:.1f}s")
    return c


def _start_operator(c: cl.Cluster) -> None:
    """`llmservice run` in the background, stopped by `make cluster-down` with the rest."""
    state = json.loads(cl.STATE_FILE.read_text())
    if state.get("operator_pid"):
        return
    log = c.workdir / "operator.log"
    env = {"KUBECONFIG": str(c.kubeconfig_for("llmservice-operator", ("system:masters",))), "PATH": ""}
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
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"}, "data": data}


def main() -> None:
    c = _cluster()
    c.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmservice.dev_llmservices.yaml"))
    c.wait_established(["llmservices.llmservice.dev"])
    _start_operator(c)
    # Secrets the samples reference (placeholders: nothing downloads a model here).
    c.apply([_secret("hf-token", "token", "hf_demo"), _secret("llm-keys", "api-keys.map", "sk-demo demo-team\n")])
    settings = OperatorSettings()
    expected = 0
    for path in sorted((ROOT / "manifests" / "samples").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        c.apply([doc])  # the API server validates it against the CRD's schema and CEL rules
        group = render(parse(doc), settings).ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        expected += 1 + sum(g["replicas"] * g["numOfHosts"] for g in group)
        console.print(f"applied {path.name}: LLMService {doc['metadata']['name']}")

    def pods() -> list[dict]:
        return c.get_json("pods", "-l", "llmservice.dev/name")["items"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ps = pods()
        if len(ps) >= expected and all(p["status"].get("phase") == "Running" for p in ps):
            break
        time.sleep(1)
    _show(c, pods())


def _show(c: cl.Cluster, pods: list[dict]) -> None:
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in c.get_json("nodes")["items"]}
    print(c.kubectl("get", "llmsvc").stdout)
    placed: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for p in pods:
        svc = p["metadata"]["labels"]["llmservice.dev/name"]
        role = p["metadata"]["labels"].get("ray.io/node-type", "?")
        node = p["spec"].get("nodeName")
        where = nodes[node]["cloud.google.com/gke-nodepool"] if node else "Pending"
        placed[(svc, role)][where] += 1
    table = Table(title="Where KubeRay's pods landed (real kube-scheduler, simulated GKE nodes)")
    for col in ("LLMService", "pod", "node pool -> pods"):
        table.add_column(col)
    for (svc, role), where in sorted(placed.items()):
        table.add_row(svc, role, ", ".join(f"{k}: {v}" for k, v in sorted(where.items())))
    console.print(table)
    console.print(
        "kwok simulates the nodes: containers never start, so Ray never reports ready and the\n"
        "services stay Provisioning. `make test` plays KubeRay's status to show the Ready path.\n"
        "Samples with nodePool.managed are Degraded here on purpose: the demo configures no GKE API\n"
        "(kubectl describe llmsvc qwen-l4 says so; `make test` runs them against a fake GKE).\n"
        f"Look around:  export KUBECONFIG={c.kubeconfig}\n"
        "              kubectl get llmsvc,rayservices,rayclusters,pods -o wide\n"
        "              kubectl describe llmsvc gemma; kubectl explain llmservice.spec\n"
        f"              operator log: {c.workdir / 'operator.log'}\n"
        "              kubectl get nodes -L cloud.google.com/gke-nodepool,cloud.google.com/gke-accelerator\n"
        "Stop it:      make cluster-down"
    )


if __name__ == "__main__":
    main()
