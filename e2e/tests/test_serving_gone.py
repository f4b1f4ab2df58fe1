"""The served sample, deleted by test_serving_end.py (while the real-vLLM data path runs when
both are in one pytest), left nothing behind: no pod, Service, ConfigMap, RayService, RayCluster, PDB, NetworkPolicy or
Secret of its own (the user's Secrets stay)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e import serving

from .conftest import SERVED_DONE, SERVED_NS, Served

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]
NS = SERVED_NS
NAME = serving.SERVICE


@pytest.fixture(scope="module", autouse=True)
def _done() -> Iterator[None]:
    """Tells the real-pod stories that wait for it that the served sample is gone."""
    yield
    SERVED_DONE.set()


def test_deleting_the_llmservice_removes_every_pod_service_and_configmap(served: Served):
    cluster = served.cluster
    if not served.handover.get("deleted"):  # this module alone
        cluster.kubectl("delete", "llmsvc", NAME, "-n", NS)

    def left() -> list[str]:
        found = []
        for kind in ("pods", "services", "configmaps", "rayservices", "rayclusters", "pdb", "networkpolicies"):
            for obj in cluster.get_json(kind, "-n", NS)["items"]:
                if obj["metadata"]["name"] != "kube-root-ca.crt":
                    found.append(f"{kind}/{obj['metadata']['name']}")
        # The Secrets the service made (the Ray token); the user's own stay.
        for obj in cluster.get_json("secrets", "-n", NS, "-l", f"llmservice.dev/name={NAME}")["items"]:
            found.append(f"secrets/{obj['metadata']['name']}")
        return found

    try:
        cluster.wait_for("nothing of the service left", lambda: not left(), timeout=180)
    finally:
        assert left() == []
