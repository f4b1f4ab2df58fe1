"""Scale to zero on the real node, with the edge sidecar, API keys and TLS on (the defaults a
production service has): the service becomes Ready, idles down to no worker pod, holds a request
that arrives at zero while a replica starts, answers it, and idles down again; suspended, its
pods go; resumed, it serves again. In the background from the session's start (stories.zero),
reconciled by the operator the chart installed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from e2e import serving
from e2e.cluster import Cluster
from e2e.story import Story

from .conftest import MEASURED

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]
NS = "serving-zero"
NAME = "zero"
HOST = f"{NAME}.{NS}.svc"  # the name the served certificate is for
STEPS = ["ready", "zero", "from-zero", "zero-again", "suspended", "resumed"]
IDLE = 10  # downscale (to zero) delay and worker idle time, seconds


def _status(cluster: Cluster) -> dict[str, Any]:
    return cluster.get_json("llmsvc", NAME, "-n", NS).get("status") or {}


def _workers(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.get_json("pods", "-n", NS, "-l", f"llmservice.dev/name={NAME},ray.io/node-type=worker")["items"]


def _pods(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.get_json("pods", "-n", NS, "-l", f"llmservice.dev/name={NAME}")["items"]


def zero(cluster: Cluster, story: Story) -> None:
    serving.prepare(cluster, NS)
    ca = serving.tls_secret(cluster, NS, "zero-tls", HOST)
    doc = serving.small_service(
        NS, NAME,
        replicas={"min": 0, "max": 1, "initial": 1},
        autoscaling={"downscaleDelaySeconds": IDLE, "downscaleToZeroDelaySeconds": IDLE, "workerIdleSeconds": IDLE},
        ingress={"apiKeysSecret": serving.KEYS_SECRET, "tlsSecret": "zero-tls"},
    )  # fmt: skip
    applied = time.monotonic()
    cluster.apply([doc])
    status = serving.wait_ready(cluster, NS, NAME, timeout=900)
    ready = time.monotonic() - applied
    url = f"https://{serving.service_ip(cluster, NS, NAME)}:8000/v1"

    def ask() -> tuple[float, list[str]]:
        return serving.stream(url, verify=str(ca), sni=HOST)

    ttft, pieces = ask()
    story.done("ready", status=status, apply_to_ready=round(ready, 1),
               apply_to_first_token=round(time.monotonic() - applied, 1), pieces=pieces)  # fmt: skip

    def at_zero() -> float:
        idle = time.monotonic()
        cluster.wait_for(
            "no worker pod left, the status ScaledToZero",
            lambda: not _workers(cluster) and _status(cluster).get("reason") == "ScaledToZero",
            timeout=300,
        )
        return time.monotonic() - idle

    went = at_zero()
    story.done("zero", idle_to_zero=round(went, 1), status=_status(cluster))
    t = time.monotonic()
    ttft, pieces = ask()  # held while a replica starts
    story.done("from-zero", ttft=round(ttft, 1), total=round(time.monotonic() - t, 1), pieces=pieces,
               workers=len(_workers(cluster)))  # fmt: skip
    story.done("zero-again", idle_to_zero=round(at_zero(), 1))

    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps({"spec": {"suspend": True}}))
    t = time.monotonic()
    cluster.wait_for("every pod of the suspended service gone", lambda: not _pods(cluster), timeout=300)
    cluster.wait_for("phase Suspended", lambda: _status(cluster).get("phase") == "Suspended", timeout=60)
    story.done("suspended", pods_gone=round(time.monotonic() - t, 1), status=_status(cluster))
    cluster.kubectl("patch", "llmsvc", NAME, "-n", NS, "--type=merge", "-p", json.dumps({"spec": {"suspend": False}}))
    t = time.monotonic()
    serving.wait_ready(cluster, NS, NAME, timeout=900)
    ttft, pieces = serving.stream(f"https://{serving.service_ip(cluster, NS, NAME)}:8000/v1", verify=str(ca), sni=HOST)
    story.done("resumed", resume_to_first_token=round(time.monotonic() - t, 1), pieces=pieces)
    cluster.kubectl("delete", "llmsvc", NAME, "-n", NS, "--wait=false")


def test_with_sidecar_keys_and_tls_it_becomes_ready_and_answers_over_https(zeroed: Story):
    """The head serves (replicas.min 0: its fallback proxy holds requests at zero), so it carries
    the edge sidecar; KubeRay deployed the app to it (the deadlock is gone)."""
    res = zeroed.result("ready")
    assert res["status"]["phase"] == "Ready" and res["pieces"], res
    MEASURED["scale to zero: apply -> Ready (s)"] = res["apply_to_ready"]
    MEASURED["scale to zero: apply -> first token, HTTPS + key (s)"] = res["apply_to_first_token"]


def test_idle_it_goes_to_zero_worker_pods(zeroed: Story):
    res = zeroed.result("zero")
    assert res["status"]["reason"] == "ScaledToZero" and res["status"]["phase"] == "Ready", res["status"]
    assert res["status"]["replicas"] == {"ready": 0, "desired": 0}
    MEASURED["scale to zero: last request -> no worker pod (s)"] = res["idle_to_zero"]


def test_a_request_at_zero_is_held_and_answered(zeroed: Story):
    res = zeroed.result("from-zero")
    assert res["pieces"], res
    assert res["workers"] == 1
    MEASURED["scale to zero: zero -> first token, streamed (s)"] = res["ttft"]


def test_idle_again_it_goes_to_zero_again(zeroed: Story):
    MEASURED["scale to zero: again, last request -> no worker pod (s)"] = zeroed.result("zero-again")["idle_to_zero"]


def test_suspended_its_pods_go_and_resumed_it_serves_again(zeroed: Story):
    res = zeroed.result("suspended")
    assert res["status"]["phase"] == "Suspended" and res["status"]["reason"] == "Suspended", res["status"]
    resumed = zeroed.result("resumed")
    assert resumed["pieces"]
    MEASURED["suspend: pods gone (s)"] = res["pods_gone"]
    MEASURED["resume -> first token (s)"] = resumed["resume_to_first_token"]
