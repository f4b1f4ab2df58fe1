"""The served sample's end: its upgrade's old Ray cluster went without failing a request of the
load test_serving.py left running (KubeRay keeps it for upgrade.drainSeconds, then its pods
drain: about 100 s of waiting, spent on the host's data-path tests when they run in the same
pytest); then the LLMService is deleted (test_serving_gone.py checks that nothing of it is
left)."""

from __future__ import annotations

import pytest

from e2e import serving

from .conftest import MEASURED, SERVED_NS, Served
from .test_serving import Upgrading

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]
NS = SERVED_NS
NAME = serving.SERVICE


@pytest.fixture(scope="module", autouse=True)
def _sources_start_meanwhile(request: pytest.FixtureRequest) -> None:
    """test_model_sources.py's services start while this module waits for the old cluster."""
    if any(i.path.name == "test_model_sources.py" for i in request.session.items):
        request.getfixturevalue("sourced")


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


def test_deleting_the_llmservice_is_taken_at_once(served: Served):
    """The delete returns at once (its finalizer has no node pools to wait for); what it removes
    goes meanwhile, and test_serving_gone.py checks nothing is left."""
    served.cluster.kubectl("delete", "llmsvc", NAME, "-n", NS, "--wait=false")
    served.handover["deleted"] = True
