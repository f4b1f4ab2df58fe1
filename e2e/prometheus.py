"""A real Prometheus (built from Go modules, `make e2e-bins`) scraping the local cluster's real
node the way the operator's PodMonitoring/PodMonitor tells a managed one to: every pod port
named `metrics` (Ray and vLLM on the Ray containers, the operator's pods) or `edge-metrics`
(the edge sidecar: HAProxy's own metrics, and its per-client counts on /metrics/clients),
found through the API server (kubernetes_sd), labelled with `namespace`, `pod` and
`llmservice` (the pod label llmservice.dev/name). It runs in the node's network, where a
scrape comes from the node itself: the services' NetworkPolicies admit that (and Prometheus
pods in the metrics namespaces); the host reaches its API at the node IP."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import bins
from .cluster import Cluster, free_port

SCRAPE_SECONDS = 5
PORTS = {"/metrics": "metrics|edge-metrics", "/metrics/clients": "edge-metrics"}


def scrape_config(cluster: Cluster, kubeconfig: Path) -> dict[str, Any]:
    assert cluster.node is not None
    jobs = []
    for path, ports in PORTS.items():
        jobs.append({
            "job_name": f"pods{path.replace('/', '-')}",
            "metrics_path": path,
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
            "relabel_configs": [
                # The real node's running pods (simulated ones have no reachable address).
                {"source_labels": ["__meta_kubernetes_pod_node_name"], "regex": cluster.node.name, "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": ports, "action": "keep"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_pod_label_llmservice_dev_name"], "target_label": "llmservice"},
            ],
        })  # fmt: skip
    return {"global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": "4s"}, "scrape_configs": jobs}


class Prometheus:
    def __init__(self, cluster: Cluster):
        assert cluster.node is not None, "scrapes the local cluster's real node"
        self.cluster, self.node = cluster, cluster.node
        self.dir = cluster.workdir / "prometheus"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.node.network.node_ip}:{self.port}"

    def start(self) -> Prometheus:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "prometheus.yml"
        kubeconfig = self.node.kubeconfig_for(
            "prometheus", "prometheus", "system:masters"
        )  # the API server from inside
        config.write_text(yaml.safe_dump(scrape_config(self.cluster, kubeconfig)))
        exe = bins.load_versions()["prometheus"].bin_dir / "prometheus"
        args = [str(exe), f"--config.file={config}", f"--web.listen-address={self.node.network.node_ip}:{self.port}",
                f"--storage.tsdb.path={self.dir / 'data'}", "--log.level=warn"]  # fmt: skip
        self.proc = self.node.run_in_network("prometheus", args)
        self.cluster.wait_for("Prometheus ready", self._ready, timeout=60)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.node.log_of('prometheus')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def metric_names(self) -> set[str]:
        """Every metric name scraped so far."""
        return set(self.api("label/__name__/values"))

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def wait_scrapes(self, n: int = 2) -> None:
        """Until every target has been scraped `n` more times."""
        time.sleep(n * SCRAPE_SECONDS + 1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
