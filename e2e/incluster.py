"""The operator as users run it: the Helm chart's Deployment (two replicas electing a leader
through kopf peering, the chart's ServiceAccount and RBAC, probes, metrics port) running the
operator image on the cluster's node. Shared by the end-to-end tests and `make demo`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .build import image
from .cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "llmservice-operator"
NAMESPACE = "llmservice-system"
RELEASE = "llmservice"
DEPLOYMENT = "llmservice-operator"  # the chart's fixed name
SELECTOR = "app.kubernetes.io/name=llmservice-operator"


def image_values(recipe: image.ImageRecipe = image.OPERATOR) -> dict[str, Any]:
    """The chart's image values for an image the node already has (imported, not pulled)."""
    repository, _, tag = recipe.name.rpartition(":")
    return {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}}


@dataclass
class InCluster:
    cluster: Cluster
    values: dict[str, Any]
    namespace: str = NAMESPACE
    release: str = RELEASE
    revisions: list[int] = field(default_factory=list)

    @property
    def values_file(self) -> Path:
        return self.cluster.workdir / f"values-{self.release}.yaml"

    def install(self, **changes: Any) -> float:
        """`helm upgrade --install` with the values (and `changes` merged in); returns the
        seconds until the Deployment has rolled out."""
        _merge(self.values, changes)
        self.values_file.write_text(yaml.safe_dump(self.values))
        started = time.monotonic()
        self.cluster.helm(
            "upgrade", "--install", self.release, str(CHART), "-n", self.namespace, "--create-namespace",
            "-f", str(self.values_file),
        )  # fmt: skip
        self.wait_rolled_out()
        status = json.loads(self.cluster.helm("status", self.release, "-n", self.namespace, "-o", "json").stdout)
        self.revisions.append(status["version"])
        return time.monotonic() - started

    def uninstall(self) -> None:
        self.cluster.helm("uninstall", self.release, "-n", self.namespace, "--wait")

    def wait_rolled_out(self, timeout: float = 180) -> None:
        def done() -> bool:
            d = self.cluster.get_json("deployment", DEPLOYMENT, "-n", self.namespace)
            st, want = d.get("status") or {}, d["spec"]["replicas"]
            return (
                st.get("observedGeneration") == d["metadata"]["generation"]
                and st.get("updatedReplicas") == want
                and st.get("readyReplicas") == want
                and st.get("replicas") == want  # no old pod left
            )

        self.cluster.wait_for(f"deployment {self.namespace}/{DEPLOYMENT} rolled out", done, timeout=timeout)

    def pods(self) -> list[dict[str, Any]]:
        pods = self.cluster.get_json("pods", "-n", self.namespace, "-l", SELECTOR)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def peering(self, namespace: str) -> dict[str, Any]:
        """The kopf peering object of a watched namespace: every replica's priority."""
        name = f"{self.release}-llmservice-operator"
        return self.cluster.get_json("kopfpeering", name, "-n", namespace).get("status") or {}

    def leader(self, namespace: str) -> str | None:
        """The pod that leads: the live replica of the highest priority (kopf's rule). Its
        peering identity is `<pod name>/<random>`."""
        status = {k: v for k, v in self.peering(namespace).items() if isinstance(v, dict)}
        live = {p["metadata"]["name"] for p in self.pods()}
        ranked = sorted(status.items(), key=lambda kv: -int(kv[1].get("priority", 0)))
        return next((ident.split("/")[0] for ident, _ in ranked if ident.split("/")[0] in live), None)


def local_values(cluster: Cluster, watch: list[str], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Values for a cluster whose nodes have the images built here (imported or kind-loaded):
    the CPU serving image for CPU services and edge sidecars; on the local cluster, the pods
    on its real node (the simulated ones run nothing)."""
    values: dict[str, Any] = {
        **image_values(),
        "watchNamespaces": watch,
        "logFormat": "text",
        "settings": {"cpuRayImage": image.RAY_CPU.name, "edgeImage": image.RAY_CPU.name, **(settings or {})},
    }
    if cluster.node is not None:
        values["nodeSelector"] = {"kubernetes.io/hostname": cluster.node.name}
    return values


def _merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
