"""The cluster's GKE operation queue (gke/ops.py), driven through NodePools and the real
ClusterManagerClient against the fake GKE: one operation at a time, services taking turns,
backoff per cluster, waiting where the status says."""

from __future__ import annotations

import time

from llmservice_operator.gke.ops import BACKOFF_CAP

from .conftest import gke_manager as manager
from .test_gke_pools import CLUSTER, desired

OWNERS = [("serving", f"svc-{i}") for i in range(3)]


def _sync_all(pools, owners=OWNERS):
    return {o: pools.sync(o, desired(o[1])) for o in owners}


def _wait(done, timeout: float = 20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if done():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def _pools_running(gke, n: int) -> bool:
    pools = gke.fake.pools.get(CLUSTER, {}).values()
    return len(pools) == n and all(p["status"] == "RUNNING" for p in pools)


def test_services_take_turns_and_each_operation_starts_when_the_previous_ends(gke):
    woken: list[tuple[str, str]] = []
    pools = manager(gke)
    pools.bind(woken.append, lambda: True)
    first = _sync_all(pools)
    assert all(out.busy and out.queued for out in first.values())
    _wait(lambda: _pools_running(gke, 6))
    # One pool of each service, then the second of each: nobody waits for a service's whole set.
    order = [name.removeprefix("serving-").split("-")[1] for name in gke.fake.create_attempts]
    assert order == ["0", "1", "2", "0", "1", "2"], gke.fake.create_attempts
    assert len(gke.fake.mutations()) == 6, "no collision: every create was accepted the first time"
    # Each service was woken when its operations started and ended (the last end is seen at
    # the queue's next poll), and not in between.
    _wait(lambda: all(woken.count(o) >= 4 for o in OWNERS))
    time.sleep(0.2)
    assert all(woken.count(o) == 4 for o in OWNERS), woken
    settled = _sync_all(pools)
    assert not any(out.busy or out.queued for out in settled.values())


def test_the_status_says_where_each_service_waits(gke):
    gke.fake.op_seconds = 1.0
    pools = manager(gke)
    _sync_all(pools)
    _wait(lambda: any("under way" in m for m in pools.ops.where(OWNERS[0])))
    progress = {o: pools.sync(o, desired(o[1])).progress for o in OWNERS}
    assert any("create under way (operation operation-" in m for m in progress[OWNERS[0]]), progress
    last = progress[OWNERS[2]]
    assert any("create waits its turn in GKE cluster c (2 operation(s) ahead)" in m for m in last), last
    assert any("(5 operation(s) ahead)" in m for m in last), "its second pool waits for the others' first ones"


def test_a_storm_backs_off_for_the_cluster_and_work_resumes_within_seconds(gke):
    """429s, 503s and "incompatible operation" for 3 s: the cluster makes a few attempts (not a
    few per service), and the first create starts within the backoff cap of the storm's end."""
    gke.fake.storm_until = time.monotonic() + 3
    pools = manager(gke)
    _sync_all(pools)
    time.sleep(3)
    during = gke.fake.storm_answers
    assert 2 <= during <= 8, during
    _wait(lambda: len(gke.fake.mutations()) > during)
    resumed = time.monotonic() - gke.fake.storm_until
    assert resumed <= BACKOFF_CAP + 0.5, resumed
    status = pools.sync(OWNERS[2], desired("svc-2"))
    assert not status.problems, "throttling is not an error of the service"
    _wait(lambda: _pools_running(gke, 6))


def test_a_replica_that_does_not_lead_starts_nothing_and_hands_the_work_back(gke):
    leading = False
    woken: list[tuple[str, str]] = []
    pools = manager(gke)
    pools.bind(woken.append, lambda: leading)
    _sync_all(pools)
    # Queued work is dropped and its services woken (queued again when leading)...
    _wait(lambda: set(woken) == set(OWNERS))
    # ...and nothing was sent to GKE on the way.
    assert not gke.fake.mutations()
    assert not any(pools.ops.pending(o) for o in OWNERS)
    leading = True
    _sync_all(pools)
    _wait(lambda: _pools_running(gke, 6))


def test_a_mutation_no_longer_wanted_leaves_the_queue(gke):
    gke.fake.op_seconds = 1.0
    pools = manager(gke)
    assert pools.policies and pools.policies.compute.policies  # loaded now, not in delete_owned
    _sync_all(pools)
    out = pools.delete_owned(OWNERS[2])  # deleted while its creates waited: nothing to delete yet
    assert not out.busy and not pools.ops.pending(OWNERS[2])
    _wait(lambda: len(gke.fake.create_attempts) == 3)
    assert [n.split("-")[2] for n in gke.fake.create_attempts] == ["0", "1", "0"], gke.fake.create_attempts
