"""The served sample's end, after the host-side data-path tests: the upgrade test_serving.py
started switched over to the new Ray cluster, which serves the changed engine on the streamed
weights, and its old cluster went without failing a request of the load left running (the new
cluster's start, KubeRay's drain delay and the old pods' drain: about four minutes of waiting,
spent on the data-path tests instead); then the LLMService is deleted (test_serving_gone.py,
after the real-vLLM data path, checks that nothing of it is left)."""

from __future__ import annotations

import pytest

from e2e import serving

from .conftest import MEASURED, SERVED_NS, Served
from .test_serving import MODEL, RATE_LIMIT, Upgrading, _told_start

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]
NS = SERVED_NS
NAME = serving.SERVICE


def _upgrade(served: Served) -> Upgrading:
    up: Upgrading | None = served.handover.get("upgrade")
    if up is None:
        pytest.skip("finishes test_serving.py's upgrade, which did not start in this run")
    return up


def test_a_missing_bucket_is_named_in_the_status_and_its_cluster_never_serves(served: Served):
    up = _upgrade(served)
    switched = up.switch.result(timeout=900)
    MEASURED["upgrade: missing bucket -> named in the status (s)"] = round(switched.named - up.changed, 1)
    message = switched.degraded["message"]
    assert switched.degraded["reason"] in ("ReplicaStartFailed", "ServeApplicationFailed"), switched.degraded
    assert "(new cluster)" in message, message
    assert "spec.model.source gs://no-such-bucket/" in message and "there is no bucket no-such-bucket" in message, (
        message
    )
    # The old cluster served meanwhile, and the broken one never took traffic.
    assert switched.active_then == up.old_cluster
    assert switched.broken_cluster and switched.new_cluster != switched.broken_cluster, switched
    broken = switched.broken_cluster
    served.cluster.wait_for(f"the broken cluster {broken} deleted", lambda: cluster_gone(served, broken), 300)
    failed_then = [f for f in up.load.failures if f[0] < switched.fixed]
    assert not failed_then, up.load.report(up.changed, named=switched.named, fixed=switched.fixed)


def cluster_gone(served: Served, name: str) -> bool:
    return served.cluster.kubectl("get", "raycluster", name, "-n", NS, check=False).returncode != 0


def test_the_upgrade_switched_to_the_new_engine_on_streamed_weights(served: Served):
    up = _upgrade(served)
    switched = up.switch.result(timeout=600)
    cluster = served.cluster
    serving.wait_ready(cluster, NS, NAME, timeout=300)
    accepted = switched.codes.count(200)
    MEASURED["upgrade: spec fixed -> traffic on the new cluster (s)"] = round(switched.at - switched.fixed, 1)
    MEASURED[f"edge on real pods: accepted of a {RATE_LIMIT}/min limit, 2 pods, {len(switched.codes)} requests"] = (
        accepted
    )
    assert set(switched.codes) == {200, 429}, switched.codes
    assert RATE_LIMIT <= accepted <= RATE_LIMIT * 1.2, accepted
    assert not up.load.failures, up.load.report(up.changed, switched=switched.at)
    # The new engine runs with the new context length (Ray's model card says so), on the
    # weights from the bucket.
    card = served.client.models.retrieve(MODEL)
    assert card.model_extra["metadata"]["max_request_context_length"] == 384, card
    conf = served.rayservice()["spec"]["serveConfigV2"]
    assert served.stores.gcs_model_uri in conf and "load_format: runai_streamer" in conf, conf
    # The status now tells the new cluster's start, from its own creation.
    startup = _told_start(cluster, switched.new_cluster)["startup"]
    assert startup["seconds"] is not None, startup
    MEASURED["upgrade: new Ray cluster created -> serving (s)"] = startup["seconds"]
    at = {s["name"]: s["seconds"] for s in startup["steps"]}
    # (vLLM logs no "Loading weights took" when the streamer loads them.)
    MEASURED["cold start, gs:// streamed: loading weights -> engine ready (s)"] = (
        at["EngineReady"] - at["LoadingWeights"]
    )
    MEASURED["cold start, gs:// streamed: worker started -> engine ready (s)"] = at["EngineReady"] - at["WorkerStarted"]


def test_the_upgrades_old_cluster_went_without_failing_a_request(served: Served):
    up = _upgrade(served)
    if not up.switch.done() or up.switch.exception() is not None:
        pytest.skip("the upgrade did not switch over (the test before says why)")
    cluster = served.cluster
    # The load was on all along: the old cluster's pods' shutdown must fail nothing.
    cluster.wait_for(f"the old cluster {up.old_cluster} deleted", lambda: cluster_gone(served, up.old_cluster), 300)
    cluster.wait_for(
        "the old cluster's pods gone", lambda: not served.pods(f"ray.io/cluster={up.old_cluster}"), timeout=120
    )
    up.load.stop()
    load = up.load
    MEASURED["upgrade: failed requests"] = f"{len(load.failures)} of {len(load.results)}"
    MEASURED["upgrade: slowest request (s)"] = round(load.slowest(), 1)
    assert len(load.results) > 20
    assert not load.failures, load.report(up.changed, switched=up.switch.result().at)


def test_deleting_the_llmservice_is_taken_at_once(served: Served):
    """The delete returns at once (its finalizer has no node pools to wait for); what it removes
    goes while the real-vLLM data path runs, and test_serving_gone.py checks nothing is left."""
    served.cluster.kubectl("delete", "llmsvc", NAME, "-n", NS, "--wait=false")
    served.handover["deleted"] = True
