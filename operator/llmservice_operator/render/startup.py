"""A cold start's timeline: where the time from a new Ray cluster to serving went.

Each step is read from what Kubernetes recorded (pod conditions and container start times, in
whole seconds) and is counted from the RayCluster's creation; `Serving` is when the operator
first saw the cluster serve, and ends it. A step once seen keeps its time (a worker pod
replaced or added later does not rewrite the start), and the timeline starts over with the
next Ray cluster (an upgrade, a resume). Pure: the status and the Events (one per new step) come from it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .. import labels as keys
from ..api.status import StartupStatus, StartupStep
from . import ray_hooks

# (step, the pod it is read from, what it reads, what it means to a user)
STEPS: tuple[tuple[str, str, str, str], ...] = (
    ("HeadScheduled", "head", "PodScheduled", "head pod placed on a node"),
    ("HeadStarted", "head", "started", "head image ready, Ray starting"),
    ("HeadReady", "head", "Ready", "head ready: Ray's control plane is up"),
    ("WorkerScheduled", "worker", "PodScheduled", "first worker pod placed on a node"),
    ("WorkerStarted", "worker", "started", "worker image ready, Ray starting"),
    ("WorkerReady", "worker", "Ready", "worker ready: KubeRay's readiness probe passes (Ray and Serve's proxy)"),
)
# Steps inside the replica, from vLLM's log lines in the first running replica's log (read
# through the Ray dashboard): (step, what vLLM logs then, what it means to a user).
ENGINE_STEPS: tuple[tuple[str, str, str], ...] = (
    # Logged by the operator's callback (templates/llmservice_ray_hooks.py), when the replica
    # fetches its files itself: Ray up on the worker, the Serve app built, the replica started.
    ("ModelFetched", ray_hooks.FETCHED, "the replica runs and has its model files"),
    ("EngineInitializing", "Initializing a V1 LLM engine", "the replica creates its vLLM engine (model files found)"),
    ("LoadingWeights", "Starting to load model", "the engine loads the weights"),
    ("WeightsLoaded", "Loading weights took", "weights loaded"),
    ("EngineReady", "init engine (profile, create kv cache, warmup model) took", "engine ready (KV cache, warm-up)"),
)
SERVING = "Serving"
MEANING = (
    {name: meaning for name, _, _, meaning in STEPS}
    | {name: meaning for name, _, meaning in ENGINE_STEPS}
    | {SERVING: "the service answers requests"}
)
ORDER = [s for s, *_ in STEPS[:5]] + [s for s, *_ in ENGINE_STEPS] + [STEPS[5][0], SERVING]
# vLLM's log time: "INFO 12-07 01:42:15 [default_loader.py:430] ..." (month-day, no year, UTC in pods)
_LOG_TIME = re.compile(r"\b(?:INFO|DEBUG|WARNING) (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) ")


def engine_steps(log_text: str, year: int) -> dict[str, str]:
    """Step -> RFC 3339 time, the first time vLLM logged it in a replica's log."""
    out: dict[str, str] = {}
    for line in log_text.splitlines():
        for step, marker, _ in ENGINE_STEPS:
            if step in out or marker not in line:
                continue
            m = _LOG_TIME.search(line)
            if m:
                month, day, hh, mm, ss = (int(x) for x in m.groups())
                out[step] = f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}Z"
    return out


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _reached(pod: dict[str, Any], what: str) -> dt.datetime | None:
    """When `pod` reached `what`: a true condition's transition, or its first container's start."""
    status = pod.get("status") or {}
    if what == "started":
        starts = [
            _time((c.get("state") or {}).get("running", {}).get("startedAt"))
            for c in status.get("containerStatuses") or []
        ]
        found = [s for s in starts if s is not None]
        return min(found) if found else None
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == what), None)
    return _time(cond.get("lastTransitionTime")) if cond and cond.get("status") == "True" else None


def ray_pods(pods: Sequence[dict[str, Any]], cluster: str, node_type: str) -> list[dict[str, Any]]:
    """The `node_type` pods (head, worker) of Ray cluster `cluster`, by KubeRay's labels."""
    return [
        p
        for p in pods
        if (p["metadata"].get("labels") or {}).get(keys.RAY_CLUSTER) == cluster
        and (p["metadata"].get("labels") or {}).get(keys.RAY_NODE_TYPE) == node_type
    ]


def _first(pods: Sequence[dict[str, Any]], cluster: str, node_type: str) -> dict[str, Any] | None:
    mine = ray_pods(pods, cluster, node_type)
    return min(mine, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def timeline(
    cluster: dict[str, Any] | None,
    pods: Sequence[dict[str, Any]],
    serving: bool,
    previous: dict[str, Any] | None,
    now: str,
    engine: Mapping[str, str] | None = None,
) -> StartupStatus | None:
    """The start of `cluster` (the RayCluster starting, or the one that serves), with the steps
    reached so far; `serving`: it serves now; `engine`: step -> time, from the replica's log
    (engine_steps). None without a cluster."""
    meta = (cluster or {}).get("metadata") or {}
    name, created = meta.get("name"), _time(meta.get("creationTimestamp"))
    if name is None or created is None:
        return None
    kept = previous if previous and previous.get("rayCluster") == name else {}
    steps = {s["name"]: float(s["seconds"]) for s in kept.get("steps") or []}
    told = SERVING in steps  # to the end: pods that start later (a scale-up) are not this start
    for step, node_type, what, _ in () if told else STEPS:
        pod = _first(pods, name, node_type)
        at = _reached(pod, what) if pod is not None and step not in steps else None
        if at is not None:
            steps[step] = max(0.0, (at - created).total_seconds())
    for step, when in (engine or {}).items():
        at = _time(when)
        seconds = max(0.0, (at - created).total_seconds()) if at is not None else None
        # After Serving, only what happened before it (a replica started later is a scale-up).
        if step not in steps and seconds is not None and (not told or seconds <= steps[SERVING]):
            steps[step] = seconds
    if serving and SERVING not in steps:
        at = _time(now)
        if at is not None:
            steps[SERVING] = max(0.0, round((at - created).total_seconds(), 1))
    return StartupStatus(
        ray_cluster=name,
        started_at=meta["creationTimestamp"],
        steps=[StartupStep(name=s, seconds=steps[s]) for s in sorted(steps, key=lambda s: (steps[s], ORDER.index(s)))],
        seconds=steps.get(SERVING),
    )


ENGINE_READ_SECONDS = 120  # after Serving: how long the engine's steps are still looked for


def engine_pending(st: StartupStatus | None, now: str) -> bool:
    """Told to Serving without the engine's steps, and Serving is recent: look again soon."""
    if st is None or st.seconds is None or any(s.name == ENGINE_STEPS[0][0] for s in st.steps):
        return False
    started, at = _time(st.started_at), _time(now)
    return started is not None and at is not None and (at - started).total_seconds() - st.seconds < ENGINE_READ_SECONDS


def new_steps(before: dict[str, Any] | None, after: StartupStatus | None) -> list[str]:
    """One line per step `after` has that `before` (the previous status's) had not: for Events."""
    if after is None:
        return []
    same = before is not None and before.get("rayCluster") == after.ray_cluster
    had = {s["name"] for s in (before or {}).get("steps") or []} if same else set()
    return [
        f"Ray cluster {after.ray_cluster}: {MEANING.get(s.name, s.name)} ({s.name}), {s.seconds:g} s after its creation"
        for s in after.steps
        if s.name not in had
    ]
