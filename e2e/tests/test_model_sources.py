"""Model sources on the real node, beside the served sample's (an s3:// download into the node
cache, then gs:// streamed by its upgrade): a Hugging Face id at a pinned commit, from the Hub
stand-in (testkit/fake_hub.py) reached through spec.model.hfEndpoint as a company mirror would
be, into the node cache; and a gs:// bucket that is not there, as a typo would name it, which
the status names before anything downloads. Both run in the background from the moment
test_serving_end.py starts waiting for the upgrade's old cluster (conftest.sourced): their Ray
clusters start while the sample's old one drains and goes. Reconciled by the operator the
chart installed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e import serving
from e2e.build import model
from e2e.cluster import Cluster
from e2e.hub import FakeHub
from e2e.story import Story
from testkit.fake_hub import Repo

from .conftest import MEASURED, SERVED_NS, SOURCES_NS

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]
NS = SOURCES_NS
HUB, TYPO = "hub", "typo"
REPO = "acme/tiny-llama-sources"  # its own, not the hub story's: each counts its own downloads
MISSING = "gs://no-such-bucket/tiny-llama"
STEPS = ["typo", "hub"]


def _condition(cluster: Cluster, name: str, ctype: str) -> dict[str, Any]:
    status = cluster.get_json("llmsvc", name, "-n", NS).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), {})


def scenario(cluster: Cluster, story: Story, storage: dict[str, Any]) -> None:
    """`storage`: the served sample's spec.model.storage (its fake GCS, anonymous)."""
    assert cluster.node
    serving.prepare(cluster, NS)
    built = model.ensure()
    hub = FakeHub(cluster.node, {REPO: built.model_dir}, port=8089).start()  # the hub story's is 8088
    try:
        commit = Repo(REPO, built.model_dir).sha
        doc = serving.hub_service(cluster, NS, HUB, REPO, commit, hub.endpoint)
        applied = time.monotonic()
        cluster.apply([doc])

        # The typo's Ray cluster once the sample's old one is gone: the node's memory holds three.
        def old_gone() -> bool:
            return len(cluster.get_json("rayclusters", "-n", SERVED_NS)["items"]) <= 1

        cluster.wait_for("the served sample's old Ray cluster gone", old_gone, timeout=600)
        typo = serving.small_service(NS, TYPO, model__source=MISSING, model__storage={"gcs": storage["gcs"]})
        typoed = time.monotonic()
        cluster.apply([typo])
        seen: dict[str, Any] = {}

        def named() -> bool:
            cond = _condition(cluster, TYPO, "Degraded")
            if cond.get("status") == "True" and MISSING in cond.get("message", ""):
                seen.update(cond)
            return bool(seen)

        cluster.wait_for("the status naming the missing bucket", named, timeout=600)
        story.done("typo", degraded=seen, after=round(time.monotonic() - typoed, 1))
        cluster.kubectl("delete", "llmsvc", TYPO, "-n", NS, "--wait=false")

        serving.wait_ready(cluster, NS, HUB, timeout=900)
        ready = time.monotonic() - applied
        url = f"http://{serving.service_ip(cluster, NS, HUB)}:8000/v1"
        ttft, pieces = serving.first_token(serving.client(url, retries=3), serving.MODEL)
        status = cluster.get_json("llmsvc", HUB, "-n", NS)["status"]
        served = {
            "ready": round(ready, 1),
            "ttft": round(ttft, 3),
            "pieces": pieces,
            "weights": hub.downloads(REPO, "model.safetensors", commit),
            "commit": commit,
            "fetched": [s["name"] for s in (status.get("startup") or {}).get("steps") or []],
            "cache": sorted(str(p.relative_to(cluster.workdir)) for p in _cached(cluster, commit)),
        }
        story.done("hub", **served)
    finally:
        cluster.kubectl("delete", "llmsvc", "--all", "-n", NS, "--wait=false", check=False)
        hub.stop()


def _cached(cluster: Cluster, commit: str) -> list[Any]:
    """The Hub's weights at `commit` in the node cache (the Hub client's layout: snapshots/<commit>)."""
    root = cluster.workdir / serving.NODE_CACHE
    return [p for p in root.rglob("model.safetensors") if f"snapshots/{commit}" in p.as_posix()]


def test_a_missing_bucket_is_named_in_the_status(sourced: Story):
    res = sourced.result("typo")
    MEASURED["missing gs:// bucket: apply -> named in the status (s)"] = res["after"]
    cond = res["degraded"]
    assert cond["reason"] in ("ReplicaStartFailed", "ServeApplicationFailed"), cond
    assert f"spec.model.source {MISSING}: there is no bucket no-such-bucket; check the name" in cond["message"], cond


def test_a_hugging_face_id_is_served_at_its_commit_through_the_mirror_into_the_node_cache(sourced: Story):
    res = sourced.result("hub")
    MEASURED["Hugging Face id (Hub stand-in, node cache): apply -> Ready (s)"] = res["ready"]
    assert "".join(res["pieces"]).strip(), res
    # The weights came from the Hub stand-in once, at the pinned commit, into the node cache.
    assert res["weights"] == 1, res
    assert res["cache"], f"no model.safetensors of {res['commit']} in the node cache: {res}"
    assert "ModelFetched" in res["fetched"], res
