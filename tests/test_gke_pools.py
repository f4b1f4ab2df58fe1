"""Node pool reconciliation: the real ClusterManagerClient over REST against a local fake GKE."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from e2e.fake_gke import FakeGKE, FakeGKEServer
from llmservice_operator.api import parse
from llmservice_operator.gke import NodePools, cluster_manager
from llmservice_operator.render.nodepools import node_pools
from llmservice_operator.settings import GKECluster

from .conftest import sample_doc, with_spec

OWNER = ("serving", "qwen-l4")


@pytest.fixture
def gke() -> Iterator[FakeGKEServer]:
    with FakeGKEServer(FakeGKE(op_seconds=0.2)) as server:
        yield server


def manager(server: FakeGKEServer, **kw) -> NodePools:
    cluster = GKECluster(project="p", location="us-central1", cluster="c", endpoint=server.endpoint)
    return NodePools(cluster_manager(cluster), cluster, **kw)


def desired(name: str = "qwen-l4", **changes) -> list[dict]:
    doc = with_spec(sample_doc("l4-spot-fallback.yaml"), **changes)
    doc["metadata"].update(name=name, namespace="serving")
    return node_pools(parse(doc))


def settle(pools: NodePools, owner=OWNER, want=None, rounds: int = 40):
    want = desired() if want is None else want
    for _ in range(rounds):
        out = pools.sync(owner, want)
        if not out.busy:
            return out
        time.sleep(0.1)
    raise AssertionError("node pools never settled")


def test_creates_pools_one_operation_at_a_time_then_stays_quiet(gke):
    pools = manager(gke)
    first = pools.sync(OWNER, desired())
    assert first.busy and not first.problems
    out = settle(pools)
    assert [(p["name"], p["state"]) for p in out.pools] == [
        ("serving-qwen-l4-spot", "RUNNING"),
        ("serving-qwen-l4-ondemand", "RUNNING"),
    ]
    # The second create met "incompatible operation" (400) while the first ran, and was retried.
    creates = [r for r in gke.fake.mutations() if r[0] == "POST" and r[1].endswith("/nodePools")]
    assert len(creates) >= 3
    before = len(gke.fake.mutations())
    assert not pools.sync(OWNER, desired()).busy
    assert len(gke.fake.mutations()) == before, "in sync: no mutation"
    spot = gke.fake.pools["projects/p/locations/us-central1/clusters/c"]["serving-qwen-l4-spot"]
    assert spot["config"]["spot"] is True
    assert spot["config"]["accelerators"][0]["acceleratorType"] == "nvidia-l4"


def test_replica_range_change_updates_autoscaling_bounds(gke):
    pools = manager(gke)
    settle(pools)
    bigger = desired(replicas={"min": 0, "max": 8})
    out = settle(pools, want=bigger)
    assert {p["maxNodes"] for p in out.pools} == {8}
    assert any(p.endswith(":setAutoscaling") for _, p in gke.fake.mutations())


def test_pools_of_others_are_never_touched(gke):
    cluster = "projects/p/locations/us-central1/clusters/c"
    gke.fake.pools[cluster] = {
        "serving-qwen-l4-spot": {
            "name": "serving-qwen-l4-spot",
            "status": "RUNNING",
            "config": {"labels": {"team": "other"}},
        },
        "default-pool": {"name": "default-pool", "status": "RUNNING", "config": {}},
    }
    pools = manager(gke)
    out = settle(pools)
    assert any("qwen-l4-spot exists but was not created for this LLMService" in p for p in out.problems)
    assert gke.fake.pools[cluster]["serving-qwen-l4-spot"]["config"]["labels"] == {"team": "other"}
    for _ in range(40):
        if not pools.delete_owned(OWNER).busy:
            break
        time.sleep(0.1)
    assert set(gke.fake.pools[cluster]) == {"serving-qwen-l4-spot", "default-pool"}


def test_delete_owned_removes_ours_and_is_done_when_already_gone(gke):
    pools = manager(gke)
    settle(pools)
    other = ("serving", "someone-else")
    settle(pools, owner=other, want=desired("someone-else"))
    for _ in range(60):
        if not pools.delete_owned(OWNER).busy:
            break
        time.sleep(0.1)
    names = set(gke.fake.pools["projects/p/locations/us-central1/clusters/c"])
    assert names == {"serving-someone-else-spot", "serving-someone-else-ondemand"}
    assert not pools.delete_owned(OWNER).busy  # nothing left: the finalizer can go


def test_quota_error_is_reported_in_gkes_words_and_blocks_nobody_else(gke):
    gke.fake.gpu_quota = {"nvidia-b200": 8}
    pools = manager(gke)
    doc = with_spec(sample_doc("gemma-b200.yaml"), nodePool={"managed": True}, replicas={"min": 8, "max": 16})
    doc["metadata"]["namespace"] = "serving"
    out = pools.sync(("serving", "gemma"), node_pools(parse(doc)))
    assert any('Insufficient regional quota to satisfy request: resource "NVIDIA_B200_GPUS"' in p for p in out.problems)
    assert settle(pools).pools, "another LLMService still gets its pools"


def _until(pools: NodePools, done, rounds: int = 60):
    for _ in range(rounds):
        out = pools.sync(OWNER, desired())
        if done(out):
            return out
        time.sleep(0.1)
    raise AssertionError(f"never reached; last: {out}")


STOCKOUT = "ZONE_RESOURCE_POOL_EXHAUSTED"


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "restart-mid-create"])
def test_a_stockout_stays_a_problem_until_the_pool_comes_up(gke, restart):
    gke.fake.stockout = {"g2-standard-8"}
    pools = manager(gke)
    pools.sync(OWNER, desired())  # the first create is under way
    if restart:
        pools = manager(gke)  # knows nothing of the operation: reads GKE's record on the pool
    out = _until(pools, lambda o: o.problems)
    assert any(STOCKOUT in p and "serving-qwen-l4-spot" in p for p in out.problems), out.problems
    # Every later pass says it again (the pool is deleted and created again meanwhile).
    for _ in range(10):
        assert any(STOCKOUT in p for p in pools.sync(OWNER, desired()).problems)
        time.sleep(0.1)
    assert gke.fake.create_attempts.count("serving-qwen-l4-spot") >= 2, "the failed pool is created again"
    gke.fake.stockout = set()  # capacity is back
    out = _until(pools, lambda o: not o.busy and not o.problems, rounds=100)
    assert {p["state"] for p in out.pools} == {"RUNNING"}


def test_rate_limits_and_permission_errors(gke):
    gke.fake.rate_limit_next = 2
    pools = manager(gke)
    out = pools.sync(OWNER, desired())
    assert out.busy and not out.problems  # 429: later, not an error
    settle(pools)
    gke.fake.forbidden = True
    out = pools.sync(("serving", "new"), desired("new"))
    assert any("permission" in p for p in out.problems)


def test_no_duplicate_pool_after_a_restart_mid_operation(gke):
    gke.fake.op_seconds = 1.0
    manager(gke).sync(OWNER, desired())  # starts the first create, then "crashes"
    restarted = manager(gke)  # knows nothing of the operation
    out = restarted.sync(OWNER, desired())
    assert out.busy
    assert gke.fake.create_attempts.count("serving-qwen-l4-spot") == 1, "the pool being created is not created again"
    assert list(gke.fake.pools["projects/p/locations/us-central1/clusters/c"]) == ["serving-qwen-l4-spot"]


def test_operation_timeout_is_a_problem(gke):
    gke.fake.op_seconds = 30
    pools = manager(gke, op_timeout=0.2)
    pools.sync(OWNER, desired())
    time.sleep(0.3)
    out = pools.sync(OWNER, desired())
    assert any("did not finish" in p for p in out.problems)
