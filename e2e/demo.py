"""`make demo`: the product's main job on the embedded default.

Starts (or reuses) the local cluster (a real control plane, simulated GKE GPU/TPU pools, one
real node that runs pods), installs the LLMService CRD and the operator (its image, with the
Helm chart), applies every sample, waits until the CPU sample is served for real by vLLM on
the real node, and streams an answer from its endpoint. The GPU/TPU samples land on
simulated nodes: placement is real, containers never start there.

With E2E_KUBECONFIG it uses that cluster instead (`make kind-demo`: a kind cluster) and
brings in what it lacks: the images, KubeRay (its Helm chart), the CRD, the operator.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from . import cluster as cl
from . import incluster, kuberay, serving
from .build import image
from .node import NODE_NAME

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "default"
console = Console(soft_wrap=True)


def _cluster() -> cl.Cluster:
    if os.environ.get("E2E_KUBECONFIG"):
        console.print(f"using the cluster of {os.environ['E2E_KUBECONFIG']}")
        c = cl.Cluster.attach(Path(os.environ["E2E_KUBECONFIG"]))
    elif cl.state_file().exists():
        console.print(f"reusing the running cluster ({cl.state_file()})")
        c = cl.Cluster.attach(Path(json.loads(cl.state_file().read_text())["kubeconfig"]))
    else:
        console.print("starting the local cluster (control plane, simulated GKE pools, a real node, KubeRay) ...")
        c = cl.Cluster().start()
        c.save_state()
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in c.timings.items() if v >= 1)
        console.print(f"ready in {c.timings['total']:.0f}s ({steps})")
        c.owned = False  # it stays up after the demo: `make cluster-down` stops it
    c.load_images((image.OPERATOR, image.RAY_CPU))
    if kuberay.ensure(c):
        console.print("installed KubeRay (its Helm chart)")
    c.wait_images()
    return c


def _install_operator(c: cl.Cluster) -> incluster.InCluster:
    """The operator as users run it: the chart, its image, watching every namespace."""
    op = incluster.InCluster(c, incluster.local_values(c, []))
    took = op.install()
    console.print(
        f"operator installed with Helm ({incluster.NAMESPACE}/{incluster.DEPLOYMENT}, 2 replicas) in {took:.0f}s"
    )
    return op


def _secret(name: str, key: str, value: str) -> dict:
    data = {key: base64.b64encode(value.encode()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE}, "data": data}


def main() -> None:
    started = time.monotonic()
    c = _cluster()
    c.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmservice.dev_llmservices.yaml"))
    c.wait_established(["llmservices.llmservice.dev"])
    op = _install_operator(c)
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
    if c.local:
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
        f"  kubectl logs -n {op.namespace} deploy/{incluster.DEPLOYMENT}   # the operator\n"
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
        elif node == NODE_NAME or not c.local:
            where = f"{node} (runs it)"
        else:
            where = f"{nodes[node].get('cloud.google.com/gke-nodepool', node)} (simulated)"
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
