"""The served sample's end, after the host-side data-path tests: its upgrade's old Ray cluster
went without failing a request of the load test_serving.py left running (KubeRay keeps it
for upgrade.drainSeconds, then its pods drain: about 100 s of waiting, spent on the data-path
tests instead), and deleting the LLMService removes everything it made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e import serving

from .conftest import MEASURED, SERVED_DONE, SERVED_NS, Served
from .test_serving import Upgrading

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]
NS = SERVED_NS
NAME = serving.SERVICE


@pytest.fixture(scope="module", autouse=True)
def _done() -> Iterator[None]:
    """Tells the real-pod stories that wait for it that the served sample is gone."""
    yield
    SERVED_DONE.set()


def test_the_upgrades_old_cluster_went_without_failing_a_request(served: Served):
    up: Upgrading | None = served.handover.get("upgrade")
    if up is None:
        pytest.skip("finishes test_serving.py's upgrade, which did not switch over in this run")
    cluster = served.cluster
    # The load was on all along: the old cluster's pods' shutdown must fail nothing.
    cluster.wait_for(
        f"the old cluster {up.old_cluster} deleted",
        lambda: cluster.kubectl("get", "raycluster", up.old_cluster, "-n", NS, check=False).returncode != 0,
        timeout=300,
    )
    cluster.wait_for(
        "the old cluster's pods gone", lambda: not served.pods(f"ray.io/cluster={up.old_cluster}"), timeout=120
    )
    up.load.stop()
    load = up.load
    MEASURED["upgrade: failed requests"] = f"{len(load.failures)} of {len(load.results)}"
    MEASURED["upgrade: slowest request (s)"] = round(load.slowest(), 1)
    assert len(load.results) > 20
    assert not load.failures, load.report(up.changed, switched=up.switched)


def test_deleting_the_llmservice_removes_every_pod_service_and_configmap(served: Served):
    cluster = served.cluster
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
