"""Node pool reconciliation: the real ClusterManagerClient (and Compute Engine's
ResourcePoliciesClient, for tpu7x workload policies) over REST against a local fake GKE."""

from __future__ import annotations

import time

import pytest

from llmservice_operator.api import parse
from llmservice_operator.gke import NodePools
from llmservice_operator.render.nodepools import node_pools, workload_policies
from llmservice_operator.render.plan import plan
from testkit.fake_gke import FakeGKEServer, camel

from .conftest import gke_manager as manager
from .conftest import sample_doc, with_spec

OWNER = ("serving", "qwen-l4")


def desired(name: str = "qwen-l4", **changes) -> list[dict]:
    doc = with_spec(sample_doc("l4-spot-fallback.yaml"), **changes)
    doc["metadata"].update(name=name, namespace="serving")
    return node_pools(plan(parse(doc)))


SPOT, ONDEMAND = (p["name"] for p in desired())  # <slot>-<hardware digest>
CLUSTER = "projects/p/locations/us-central1/clusters/c"


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
        (SPOT, "RUNNING"),
        (ONDEMAND, "RUNNING"),
    ]
    # The cluster's queue started the second create once the first was done: no collision.
    creates = [r for r in gke.fake.mutations() if r[0] == "POST" and r[1].endswith("/nodePools")]
    assert len(creates) == 2
    before = len(gke.fake.mutations())
    assert not pools.sync(OWNER, desired()).busy
    assert len(gke.fake.mutations()) == before, "in sync: no mutation"
    assert not [r for r in gke.fake.requests if r[1].startswith("/compute/")], "GPU pools need no Compute API"
    spot = gke.fake.pools[CLUSTER][SPOT]
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
    cluster = CLUSTER
    gke.fake.pools[cluster] = {
        SPOT: {
            "name": SPOT,
            "status": "RUNNING",
            "config": {"labels": {"team": "other"}},
        },
        "default-pool": {"name": "default-pool", "status": "RUNNING", "config": {}},
    }
    pools = manager(gke)
    out = settle(pools)
    assert any(f"{SPOT} exists but was not created for this LLMService" in p for p in out.problems)
    assert gke.fake.pools[cluster][SPOT]["config"]["labels"] == {"team": "other"}
    for _ in range(40):
        if not pools.delete_owned(OWNER).busy:
            break
        time.sleep(0.1)
    assert set(gke.fake.pools[cluster]) == {SPOT, "default-pool"}


def test_delete_owned_removes_ours_and_is_done_when_already_gone(gke):
    pools = manager(gke)
    settle(pools)
    other = ("serving", "someone-else")
    settle(pools, owner=other, want=desired("someone-else"))
    for _ in range(60):
        if not pools.delete_owned(OWNER).busy:
            break
        time.sleep(0.1)
    assert set(gke.fake.pools[CLUSTER]) == {p["name"] for p in desired("someone-else")}
    assert not pools.delete_owned(OWNER).busy  # nothing left: the finalizer can go


def test_quota_error_is_reported_in_gkes_words_and_blocks_nobody_else(gke):
    gke.fake.gpu_quota = {"nvidia-b200": 8}
    pools = manager(gke)
    doc = with_spec(sample_doc("gemma-b200.yaml"), nodePool={"managed": True}, replicas={"min": 8, "max": 16})
    doc["metadata"]["namespace"] = "serving"
    out = _until(pools, lambda o: o.problems, owner=("serving", "gemma"), want=node_pools(plan(parse(doc))))
    assert any('Insufficient regional quota to satisfy request: resource "NVIDIA_B200_GPUS"' in p for p in out.problems)
    assert settle(pools).pools, "another LLMService still gets its pools"


def _until(pools: NodePools, done, rounds: int = 60, owner=OWNER, want=None, policies=None):
    for _ in range(rounds):
        out = pools.sync(owner, desired() if want is None else want, policies)
        if done(out):
            return out
        time.sleep(0.1)
    raise AssertionError(f"never reached; last: {out}")


STOCKOUT = "ZONE_RESOURCE_POOL_EXHAUSTED"


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "restart-mid-create"])
def test_a_stockout_stays_a_problem_until_the_pool_comes_up(gke, restart):
    gke.fake.stockout = {"g2-standard-8"}
    pools = manager(gke)
    pools.sync(OWNER, desired())
    if restart:  # once the first create is under way: the new one reads GKE's record on the pool
        crash_once_started(pools, lambda: gke.fake.create_attempts)
        pools = manager(gke)
    out = _until(pools, lambda o: o.problems)
    assert any(STOCKOUT in p and SPOT in p for p in out.problems), out.problems
    # Every later pass says it again (the pool is deleted and created again meanwhile).
    for _ in range(10):
        assert any(STOCKOUT in p for p in pools.sync(OWNER, desired()).problems)
        time.sleep(0.1)
    assert gke.fake.create_attempts.count(SPOT) >= 2, "the failed pool is created again"
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
    out = _until(pools, lambda o: o.problems, owner=("serving", "new"), want=desired("new"))
    assert any("permission" in p for p in out.problems)


def crash_once_started(pools: NodePools, started) -> None:
    """The operator dies (kill -9) once `started()`: its queue and what it knew are gone."""
    for _ in range(100):
        if started():
            pools.stop()
            return
        time.sleep(0.02)
    raise AssertionError("nothing started")


def test_no_duplicate_pool_after_a_restart_mid_operation(gke):
    gke.fake.op_seconds = 1.0
    first = manager(gke)
    first.sync(OWNER, desired())
    crash_once_started(first, lambda: gke.fake.create_attempts)
    restarted = manager(gke)  # knows nothing of the operation
    out = restarted.sync(OWNER, desired())
    assert out.busy
    assert list(gke.fake.pools[CLUSTER]) == [SPOT]
    settle(restarted)
    # The restarted queue found the create under way and waited for it: no duplicate, no collision.
    assert gke.fake.create_attempts == [SPOT, ONDEMAND]


def test_operation_timeout_is_a_problem(gke):
    gke.fake.op_seconds = 30
    pools = manager(gke, op_timeout=0.2)
    pools.sync(OWNER, desired())
    time.sleep(0.3)
    out = pools.sync(OWNER, desired())
    assert any("did not finish" in p for p in out.problems)


# -- node pool drift: hardware GKE cannot change in place ----------------------------------

BIGGER = {"engine__tensorParallelSize": 2}  # 2 L4s per replica: g2-standard-8 -> g2-standard-24


def _ours(gke: FakeGKEServer) -> dict[str, dict]:
    pools = gke.fake.pools.get(CLUSTER, {})
    return {n: p for n, p in pools.items() if p.get("config", {}).get("labels", {}).get("llmservice-dev-owner")}


def _slots(pools: dict[str, dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, p in pools.items():
        out.setdefault(p["config"]["labels"]["llmservice-dev-slot"], []).append(name)
    return out


def test_a_hardware_change_creates_the_new_pool_first_and_touches_only_ours(gke):
    pools = manager(gke)
    settle(pools)
    # Not ours: another team's pool and a same-slot-looking pool without our labels.
    foreign = {"name": "serving-qwen-l4-spot-00000", "status": "RUNNING", "config": {"machineType": "g2-standard-8"}}
    gke.fake.pools[CLUSTER] |= {"default-pool": {"name": "default-pool", "status": "RUNNING", "config": {}}}
    gke.fake.pools[CLUSTER][foreign["name"]] = foreign
    new = desired(**BIGGER)
    progress: list[str] = []
    for _ in range(80):
        out = pools.sync(OWNER, new)
        progress += out.progress
        assert not out.problems, out.problems
        # Never a moment without a pool: each slot keeps one that is not being deleted.
        up = {n: p for n, p in _ours(gke).items() if p["status"] != "STOPPING"}
        assert set(_slots(up)) == {"serving-qwen-l4-spot", "serving-qwen-l4-ondemand"}, _ours(gke)
        if not out.busy:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("never settled")
    ours = _ours(gke)
    assert set(ours) == {p["name"] for p in new}
    assert {p["config"]["machineType"] for p in ours.values()} == {"g2-standard-24"}
    assert {"default-pool", foreign["name"]} <= set(gke.fake.pools[CLUSTER]), "pools of others are never touched"
    old_spot = SPOT
    new_spot = new[0]["name"]
    mine = [m for m in progress if m.startswith(f"replacing node pool {old_spot} (machine type g2-standard-8->g2-")]
    assert mine and "accelerators 1xnvidia-l4->2xnvidia-l4" in mine[0], progress
    assert any(m.endswith(f"): new pool {new_spot} is being created") for m in mine), mine
    assert any(f"): new pool {new_spot} is RUNNING, deleting the old one" in m for m in mine), mine
    # The old pools were deleted only after every new pool ran.
    deletes = [i for i, (m, path) in enumerate(gke.fake.requests) if m == "DELETE"]
    creates = [i for i, (m, path) in enumerate(gke.fake.requests) if m == "POST" and path.endswith("/nodePools")]
    assert min(deletes) > max(creates)


def test_old_pools_stay_while_the_old_ray_cluster_still_serves(gke):
    """An accelerator change is also a blue/green Ray cluster switch: the old workers serve on
    the old pools until traffic has moved, however early the new pools run."""
    pools = manager(gke)
    settle(pools)
    new = desired(**BIGGER)
    for _ in range(80):
        out = pools.sync(OWNER, new, hold_replaced=True)
        if all(p["status"] == "RUNNING" for p in _ours(gke).values()) and len(_ours(gke)) == 4:
            break
        time.sleep(0.1)
    for _ in range(3):  # the switch takes a while: the old pools stay, the service stays busy
        out = pools.sync(OWNER, new, hold_replaced=True)
        assert out.busy and len(_ours(gke)) == 4
    assert any("the old one stays until the new Ray cluster serves" in m for m in out.progress), out.progress
    settle(pools, want=new)  # the switch is done
    assert set(_ours(gke)) == {p["name"] for p in new}


def test_status_shows_both_pools_while_replacing(gke):
    pools = manager(gke)
    settle(pools)
    out = pools.sync(OWNER, desired(**BIGGER))
    assert {p["name"] for p in out.pools} >= {SPOT, ONDEMAND}, "the old pools stay listed until they are gone"
    assert out.busy and out.progress


@pytest.mark.parametrize("phase", ["new-pool-provisioning", "old-pool-stopping"])
def test_a_restart_mid_replacement_ends_with_one_pool_of_the_new_hardware(gke, phase):
    gke.fake.op_seconds = 0.4
    settle(manager(gke))
    new = desired(**BIGGER)
    pools = manager(gke)
    for _ in range(80):
        pools.sync(OWNER, new)
        states = {p["status"] for p in _ours(gke).values()}
        if (phase == "new-pool-provisioning" and "PROVISIONING" in states) or (
            phase == "old-pool-stopping" and "STOPPING" in states
        ):
            break
        time.sleep(0.05)
    pools.stop()  # the operator is killed mid-replacement and restarts: nothing remembered
    pools = manager(gke)
    out = settle(pools, want=new, rounds=100)
    assert not out.problems
    slots = _slots(_ours(gke))
    assert all(len(names) == 1 for names in slots.values()), slots
    assert {p["config"]["machineType"] for p in _ours(gke).values()} == {"g2-standard-24"}


def test_a_pool_made_before_hardware_digests_is_kept_not_replaced(gke):
    """Pools named by an operator version without the digest (the slot name) and of the same
    hardware are adopted: an upgrade of the operator replaces no pool."""
    pools = manager(gke)
    for d in desired():
        legacy = {**d, "name": d["config"]["labels"]["llmservice-dev-slot"]}
        gke.fake.pools.setdefault(CLUSTER, {})[legacy["name"]] = {**camel(legacy), "status": "RUNNING"}
    out = settle(pools)
    assert {p["name"] for p in out.pools} == {"serving-qwen-l4-spot", "serving-qwen-l4-ondemand"}
    assert not gke.fake.mutations()


# -- tpu7x workload policies -------------------------------------------------------------

TPU_OWNER = ("serving", "llama-tpu")
REGION = "projects/p/regions/us-central1"


def tpu7x(topology: str = "2x2x2") -> tuple[list[dict], list[dict]]:
    tp = {"2x2x2": 8, "2x2x4": 16}[topology]
    doc = with_spec(
        sample_doc("tpu-v6e-4x4-multihost.yaml"),
        accelerator={"type": "tpu-7x", "topology": topology},
        engine__tensorParallelSize=tp,
    )
    doc["metadata"]["namespace"] = "serving"
    svc = parse(doc)
    return node_pools(plan(svc)), workload_policies(plan(svc))


def settle_tpu(pools: NodePools, topology: str = "2x2x2", rounds: int = 80) -> tuple:
    want, policies = tpu7x(topology)
    seen: list[str] = []
    for _ in range(rounds):
        out = pools.sync(TPU_OWNER, want, policies)
        seen += out.problems
        if not out.busy:
            return out, seen
        time.sleep(0.1)
    raise AssertionError("never settled")


def delete_all(pools: NodePools, owner=TPU_OWNER) -> list[str]:
    seen: list[str] = []
    for _ in range(100):
        out = pools.delete_owned(owner)
        seen += out.problems
        if not out.busy:
            return seen
        time.sleep(0.1)
    raise AssertionError("never deleted")


def test_tpu7x_policy_is_created_before_its_pools_and_deleted_after_them(gke):
    want, policies = tpu7x()
    [policy] = policies
    name = policy["name"]
    pools = manager(gke)
    first = pools.sync(TPU_OWNER, want, policies)
    assert first.busy and not first.problems
    _until(pools, lambda o: gke.fake.policy_inserts, owner=TPU_OWNER, want=want, policies=policies)
    assert gke.fake.policy_inserts == [name]
    assert gke.fake.create_attempts == [], "no pool before its policy is READY"
    assert any(f"waits for workload policy {name}" in m for m in first.progress)
    out, problems = settle_tpu(pools)
    # The fake refuses (400) a pool naming a missing policy: no problem means none was tried.
    assert not problems
    assert {p["state"] for p in out.pools} == {"RUNNING"} and len(out.pools) == 2
    live = gke.fake.policies[REGION][name]
    assert live["workloadPolicy"] == {"type": "HIGH_THROUGHPUT", "acceleratorTopology": "2x2x2"}
    assert "LLMService serving/llama-tpu" in live["description"]
    assert {p["placementPolicy"]["policyName"] for p in gke.fake.pools[CLUSTER].values()} == {name}
    # With the service: the pools go first, then the policy (the fake refuses, 400, to delete
    # a policy a pool still names).
    assert not delete_all(pools)
    assert not gke.fake.pools[CLUSTER]
    assert name not in gke.fake.policies[REGION]


def test_a_same_named_policy_not_ours_is_reported_and_never_deleted(gke):
    want, policies = tpu7x()
    name = policies[0]["name"]
    theirs = {"name": name, "description": "made by hand", "status": "READY", "workloadPolicy": {}}
    other = {"name": "unrelated", "description": "", "status": "READY"}
    gke.fake.policies[REGION] = {name: theirs, "unrelated": other}
    pools = manager(gke)
    for _ in range(3):
        out = pools.sync(TPU_OWNER, want, policies)
        assert any(f"workload policy {name} exists but was not created for this LLMService" in p for p in out.problems)
    assert gke.fake.create_attempts == [] and gke.fake.policy_inserts == []
    delete_all(pools)
    assert gke.fake.policies[REGION] == {name: theirs, "unrelated": other}


def test_no_duplicate_policy_after_a_restart_mid_insert(gke):
    gke.fake.op_seconds = 1.0
    want, policies = tpu7x()
    first = manager(gke)
    first.sync(TPU_OWNER, want, policies)
    crash_once_started(first, lambda: gke.fake.policy_inserts)
    restarted = manager(gke)
    out = restarted.sync(TPU_OWNER, want, policies)
    assert out.busy and not out.problems
    assert gke.fake.policy_inserts == [policies[0]["name"]]
    assert gke.fake.create_attempts == []
    _, problems = settle_tpu(restarted)
    assert not problems
    assert gke.fake.policy_inserts == [policies[0]["name"]]
    assert len(gke.fake.pools[CLUSTER]) == 2


def test_a_topology_change_makes_a_new_policy_and_pools_then_drops_the_old(gke):
    pools = manager(gke)
    settle_tpu(pools, "2x2x2")
    (old,) = (p["name"] for p in tpu7x("2x2x2")[1])
    _, problems = settle_tpu(pools, "2x2x4", rounds=150)
    assert not problems
    want, policies = tpu7x("2x2x4")
    assert set(gke.fake.pools[CLUSTER]) == {p["name"] for p in want}
    assert set(gke.fake.policies[REGION]) == {policies[0]["name"]}, f"{old} is deleted once no pool names it"
