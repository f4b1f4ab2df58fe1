"""The cold-start timeline (status.startup and its Events): each step from what Kubernetes
recorded on the Ray pods, counted from the RayCluster's creation, kept once seen, started over
with the next Ray cluster."""

from __future__ import annotations

from typing import Any

from llmservice_operator.render.startup import engine_pending, engine_steps, new_steps, timeline

T0 = "2026-12-07T10:00:00Z"


def _at(seconds: int) -> str:
    return f"2026-12-07T10:{seconds // 60:02d}:{seconds % 60:02d}Z"


def _cluster(name: str = "svc-abc") -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": T0}}


def _pod(
    name: str,
    node_type: str,
    scheduled: int | None,
    started: int | None = None,
    ready: int | None = None,
    cluster: str = "svc-abc",
) -> dict[str, Any]:
    conds = []
    if scheduled is not None:
        conds.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": _at(scheduled)})
    if ready is not None:
        conds.append({"type": "Ready", "status": "True", "lastTransitionTime": _at(ready)})
    else:
        conds.append({"type": "Ready", "status": "False", "lastTransitionTime": _at(0)})
    state = {"running": {"startedAt": _at(started)}} if started is not None else {"waiting": {}}
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": _at(0),
            "labels": {"ray.io/cluster": cluster, "ray.io/node-type": node_type},
        },
        "status": {"conditions": conds, "containerStatuses": [{"name": "ray", "state": state}]},
    }


def _dump(st: Any) -> dict[str, Any]:
    return st.model_dump(by_alias=True, exclude_none=True)


def _steps(st: Any) -> dict[str, float]:
    return {s.name: s.seconds for s in st.steps}


def test_steps_come_from_the_pods_in_time_order_and_serving_from_when_it_was_seen():
    pods = [_pod("h", "head", 1, 3, 20), _pod("w", "worker", 21, 25)]
    st = timeline(_cluster(), pods, serving=False, previous=None, now=_at(30))
    assert st is not None and st.ray_cluster == "svc-abc" and st.started_at == T0
    assert _steps(st) == {
        "HeadScheduled": 1,
        "HeadStarted": 3,
        "HeadReady": 20,
        "WorkerScheduled": 21,
        "WorkerStarted": 25,
    }
    assert st.seconds is None, "not serving yet"
    pods[1] = _pod("w", "worker", 21, 25, 88)
    later = timeline(_cluster(), pods, serving=True, previous=_dump(st), now=_at(90))
    assert later is not None
    assert [s.name for s in later.steps][-2:] == ["WorkerReady", "Serving"]
    assert later.seconds == 90
    assert new_steps(_dump(st), later) == [
        "Ray cluster svc-abc: worker ready: KubeRay's readiness probe passes (Ray and Serve's proxy) (WorkerReady), "
        "88 s after its creation",
        "Ray cluster svc-abc: the service answers requests (Serving), 90 s after its creation",
    ]
    assert new_steps(_dump(later), later) == [], "an Event once per step"


def test_a_step_once_seen_keeps_its_time_and_a_new_cluster_starts_over():
    pods = [_pod("h", "head", 1, 3, 20), _pod("w", "worker", 21, 25, 60)]
    first = timeline(_cluster(), pods, serving=True, previous=None, now=_at(61))
    assert first is not None
    # Scaled to zero and back: a new worker pod starts much later; the start told stays.
    again = [pods[0], _pod("w2", "worker", 300, 302, 340)]
    kept = timeline(_cluster(), again, serving=True, previous=_dump(first), now=_at(400))
    assert kept == first
    upgraded = timeline(
        _cluster("svc-new"),
        [_pod("h2", "head", 2, cluster="svc-new")],
        False,
        _dump(first),
        _at(5),
    )
    assert upgraded is not None and upgraded.ray_cluster == "svc-new"
    assert _steps(upgraded) == {"HeadScheduled": 2}
    assert new_steps(_dump(first), upgraded) == [
        "Ray cluster svc-new: head pod placed on a node (HeadScheduled), 2 s after its creation"
    ]


def test_no_cluster_no_timeline():
    assert timeline(None, [], serving=False, previous=None, now=T0) is None
    assert timeline({"status": {"readyWorkerReplicas": 1}}, [], serving=True, previous=None, now=T0) is None


LOG = """\
(ServeReplica:llm:LLMServer:tiny pid=108) INFO 2026-12-07 10:00:40,001 llm -- Starting the replica
(ServeReplica:llm:LLMServer:tiny pid=108) INFO 12-07 10:00:41 [llmservice_ray_hooks.py:61] model files fetched\
 in the replica's own process: /mnt/models/tiny
(EngineCore pid=396) INFO 12-07 10:00:42 [core.py:123] Initializing a V1 LLM engine (v0.29.0) with config: ...
(Worker pid=429) INFO 12-07 10:00:50 [cpu_model_runner.py:131] Starting to load model /mnt/models/tiny...
(Worker pid=429) INFO 12-07 10:00:51 [default_loader.py:430] Loading weights took 0.80 seconds
(EngineCore pid=396) INFO 12-07 10:00:55 [core.py:368] init engine (profile, create kv cache, warmup model) took 3.10 s
(Worker pid=429) INFO 12-07 10:09:51 [default_loader.py:430] Loading weights took 0.70 seconds
"""


def test_the_engine_steps_come_from_vllms_lines_in_the_replicas_log():
    engine = engine_steps(LOG, 2026)
    assert engine == {
        "ModelFetched": "2026-12-07T10:00:41Z",
        "EngineInitializing": "2026-12-07T10:00:42Z",
        "LoadingWeights": "2026-12-07T10:00:50Z",
        "WeightsLoaded": "2026-12-07T10:00:51Z",
        "EngineReady": "2026-12-07T10:00:55Z",
    }
    pods = [_pod("h", "head", 1, 3, 20), _pod("w", "worker", 21, 25, 58)]
    st = timeline(_cluster(), pods, serving=True, previous=None, now=_at(60), engine=engine)
    assert st is not None
    assert [s.name for s in st.steps] == [
        "HeadScheduled",
        "HeadStarted",
        "HeadReady",
        "WorkerScheduled",
        "WorkerStarted",
        "ModelFetched",
        "EngineInitializing",
        "LoadingWeights",
        "WeightsLoaded",
        "EngineReady",
        "WorkerReady",
        "Serving",
    ]
    # Read only after Serving was told (the dashboard was busy): what came before it still counts,
    # a replica that started later (scale-up) does not.
    early = timeline(_cluster(), pods, serving=True, previous=None, now=_at(60))
    assert early is not None
    late = {**engine, "EngineReady": "2026-12-07T10:09:55Z"}
    st = timeline(_cluster(), pods, serving=True, previous=_dump(early), now=_at(600), engine=late)
    assert st is not None
    assert "EngineReady" not in _steps(st) and _steps(st)["WeightsLoaded"] == 51


def test_serving_without_the_engines_steps_is_looked_at_again_for_a_while():
    pods = [_pod("h", "head", 1, 3, 20), _pod("w", "worker", 21, 25, 58)]
    st = timeline(_cluster(), pods, serving=True, previous=None, now=_at(60))
    assert engine_pending(st, _at(70))
    assert not engine_pending(st, _at(60 + 121)), "not for ever"
    full = timeline(_cluster(), pods, True, _dump(st), _at(70), engine_steps(LOG, 2026))
    assert not engine_pending(full, _at(70))
    assert not engine_pending(timeline(_cluster(), pods, serving=False, previous=None, now=_at(60)), _at(70))
