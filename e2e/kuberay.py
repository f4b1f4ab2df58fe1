"""KubeRay on a cluster that lacks it (kind, GKE): its Helm chart, at the version the local
cluster builds (e2e/versions.toml). The local cluster runs KubeRay itself (e2e/cluster.py);
this needs the chart repository, so it cannot run on machines without internet access."""

from __future__ import annotations

from .bins import load_versions
from .cluster import Cluster

REPO = "https://ray-project.github.io/kuberay-helm/"
NAMESPACE = "kuberay-system"


def present(cluster: Cluster) -> bool:
    """Its CRDs are served and an operator runs (in the cluster, or as the local cluster's process)."""
    if cluster.kubectl("get", "crd", "rayservices.ray.io", check=False).returncode != 0:
        return False
    if cluster.local:
        return True  # the local cluster's KubeRay is a process in the node's network
    pods = cluster.get_json("pods", "-A", "-l", "app.kubernetes.io/name=kuberay-operator")["items"]
    return any(p.get("status", {}).get("phase") == "Running" for p in pods)


def ensure(cluster: Cluster, watch: list[str] | None = None) -> bool:
    """Install KubeRay's chart unless KubeRay is there; whether it installed it."""
    if present(cluster):
        return False
    version = load_versions()["kuberay"].version.removeprefix("v")
    args = ["upgrade", "--install", "kuberay-operator", "kuberay-operator", "--repo", REPO, "--version", version,
            "-n", NAMESPACE, "--create-namespace", "--wait"]  # fmt: skip
    if watch:
        args += ["--set", f"watchNamespace={{{','.join(watch)}}}", "--set", "singleNamespaceInstall=false"]
    cluster.helm(*args)
    return True
