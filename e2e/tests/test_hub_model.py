"""A model by its Hugging Face id, from a gated repo on the Hub stand-in (testkit/fake_hub.py,
reached through spec.model.hfEndpoint as a company mirror would be), at a pinned commit, on the
real node: without a token the status names spec.model.hfTokenSecret, and once the user sets it
the service becomes Ready and answers with the weights of that commit; a second replica on the
node then reads them from the node cache (model.nodeCache), not from the Hub. In the background
(conftest.hubbed), once the sidecar-off story is done; reconciled by the operator the chart
installed."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any

import pytest

from e2e import serving
from e2e.build import model
from e2e.cluster import Cluster
from e2e.hub import FakeHub
from e2e.story import Story
from llmservice_operator.render.serve_config import llm_deployment_name
from testkit.fake_hub import Repo

from .conftest import MEASURED

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster, pytest.mark.story]  # make test-stories
NS = "serving-hub"
NAME = "hub"
REPO = "acme/tiny-llama"
TOKEN_SECRET = "hf-token"
TOKEN = "hf_e2e_token"
STEPS = ["gated", "served", "second", "cleaned"]


def _status(cluster: Cluster) -> dict[str, Any]:
    return cluster.get_json("llmsvc", NAME, "-n", NS).get("status") or {}


_STAMP = r"(\d\d-\d\d \d\d:\d\d:\d\d)"  # vLLM's log time: month-day, to the second


# The log of a Ray actor, from the head's dashboard (as the operator reads a replica's engine log).
_ACTOR_LOG = """
import os, sys, urllib.parse, urllib.request
headers = {"Authorization": "Bearer " + os.environ["RAY_AUTH_TOKEN"]} if os.environ.get("RAY_AUTH_TOKEN") else {}
query = urllib.parse.urlencode({"actor_id": sys.argv[1], "suffix": "out", "lines": 20000})
req = urllib.request.Request("http://127.0.0.1:8265/api/v0/logs/file?" + query, headers=headers)
print(urllib.request.urlopen(req, timeout=30).read().decode(errors="replace"))
"""


def _model_loads(cluster: Cluster) -> list[dict[str, float]]:
    """Each replica's weights, from vLLM's log lines in its Ray log, in the order the replicas
    started: `fetch_and_load` from "Starting to load model" to "Loading weights took" (whole
    seconds; the fetch from the Hub or the node cache comes first), and `load`, vLLM's own
    count of reading the weights."""
    details = serving.serve_deployment(cluster, NS, NAME, llm_deployment_name(serving.MODEL))
    replicas = sorted(details.get("replicas", []), key=lambda r: r.get("start_time_s") or 0)
    head = serving.running_head(cluster, NS, NAME)
    out = []
    for replica in replicas:
        logs = cluster.kubectl("exec", "-n", NS, head, "-c", "ray", "--", "python3", "-c", _ACTOR_LOG,
                               replica["actor_id"], check=False).stdout  # fmt: skip
        started = re.findall(_STAMP + r".*Starting to load model", logs)
        loaded = re.findall(_STAMP + r".*Loading weights took ([0-9.]+) seconds", logs)
        if not started or not loaded:
            out.append({"fetch_and_load": -1.0, "load": -1.0})
            continue
        at = [dt.datetime.strptime(stamp, "%m-%d %H:%M:%S") for stamp in (started[-1], loaded[-1][0])]
        out.append({"fetch_and_load": (at[1] - at[0]).total_seconds(), "load": float(loaded[-1][1])})
    return out


def scenario(cluster: Cluster, story: Story) -> None:
    assert cluster.node
    serving.prepare(cluster, NS)
    built = model.ensure()
    hub = FakeHub(cluster.node, {REPO: built.model_dir}, gated={REPO: TOKEN}).start()
    try:
        commit = Repo(REPO, built.model_dir).sha
        doc = serving.hub_service(cluster, NS, NAME, REPO, commit, hub.endpoint)
        applied = time.monotonic()
        cluster.apply([doc])
        seen: list[dict[str, Any]] = []  # each status the user could have read, in turn

        def named() -> bool:
            st = {k: v for k, v in _status(cluster).items() if k in ("phase", "reason", "message")}
            if st and (not seen or seen[-1] != st):
                seen.append(st)
                story.note(f"status {st}")
            return bool(seen) and "spec.model.hfTokenSecret" in (seen[-1].get("message") or "")

        cluster.wait_for("the status naming spec.model.hfTokenSecret", named, timeout=600)
        story.done("gated", status=seen[-1], history=seen, after=round(time.monotonic() - applied, 1))

        serving.secret(cluster, NS, TOKEN_SECRET, {"token": TOKEN})
        patch = {"spec": {"model": {"hfTokenSecret": {"name": TOKEN_SECRET}}}}
        t = time.monotonic()
        cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))
        serving.wait_ready(cluster, NS, NAME, timeout=900)
        ready = time.monotonic() - t
        url = f"http://{serving.service_ip(cluster, NS, NAME)}:8000/v1"
        ttft, pieces = serving.first_token(serving.client(url, retries=3), serving.MODEL)
        weights = hub.downloads(REPO, "model.safetensors", commit)
        story.done("served", fix_to_ready=round(ready, 1), ttft=round(ttft, 3), pieces=pieces, weights=weights)

        # One download per node: a second replica on the node reads the weights the first one
        # left in the node cache.
        t = time.monotonic()
        bounds = {"spec": {"replicas": {"min": 2, "max": 2}}}
        cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(bounds))
        cluster.wait_for(
            "a second replica serving",
            lambda: (_status(cluster).get("replicas") or {}).get("ready") == 2,
            timeout=900,
        )
        second = round(time.monotonic() - t, 1)
        weights = hub.downloads(REPO, "model.safetensors", commit)
        story.done("second", ready=second, weights=weights, loads=_model_loads(cluster))
        cluster.kubectl("delete", "llmsvc", NAME, "-n", NS, "--wait=false")
        cluster.wait_for("the hub service's pods gone", lambda: not cluster.get_json("pods", "-n", NS)["items"], 300)
        story.done("cleaned")
    finally:
        hub.stop()


def test_a_gated_model_without_a_token_names_the_token_field(hubbed: Story):
    res = hubbed.result("gated")
    st = res["status"]
    assert f"spec.model.hfTokenSecret: {REPO} is gated; set it to a Secret" in st["message"], st["message"]
    assert st["phase"] != "Ready", st
    MEASURED["gated Hub model without a token: apply -> status names hfTokenSecret (s)"] = res["after"]


def test_with_the_token_it_serves_the_pinned_commit_from_the_hub(hubbed: Story):
    res = hubbed.result("served")
    assert res["pieces"], res
    assert res["weights"] >= 1, "the weights came from the Hub stand-in at the pinned commit"
    MEASURED["gated Hub model: token set -> Ready (s)"] = res["fix_to_ready"]


def test_a_second_replica_on_the_node_reads_the_weights_from_the_node_cache(hubbed: Story):
    """model.nodeCache: the second replica's pod fetched nothing from the Hub; both loaded."""
    first = hubbed.result("served")["weights"]
    res = hubbed.result("second")
    assert first >= 1 and res["weights"] == first, res
    assert len(res["loads"]) == 2, res["loads"]  # two replicas served; their timings are reported
    MEASURED["node cache: replicas 1 -> 2, second replica serving (s)"] = res["ready"]
    for which, load in zip(("first (from the Hub)", "second (node cache)"), res["loads"], strict=True):
        MEASURED[f"node cache: {which} replica: fetch + load / load weights (s)"] = (
            f"{load['fetch_and_load']:.0f} / {load['load']:.2f}"
        )
    hubbed.result("cleaned")
