"""LLMService status from what the cluster reports: pure, so every transition is unit-tested.

Inputs are the service's plan, what was observed (the RayService and its clusters, the
service's pods, problems found before applying, GKE's view of the node pools, root causes read
from replica logs) and the previous status (to keep lastTransitionTime). The output is the
typed status model; its three conditions always agree: a service that Serve gave up on is not
also Progressing, and `children` names only what exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api.resource import LLMService
from ..api.status import (
    ChildStatus,
    Condition,
    LLMServiceStatus,
    NodePoolStatus,
    ReplicaStatus,
    StartupStatus,
    set_condition,
)
from ..api.status import ConditionType as C
from ..api.status import Phase as P
from ..api.status import Reason as R
from ..settings import OperatorSettings
from . import ray_hooks
from .plan import Plan, plan
from .serve_config import SERVE_PORT
from .startup import timeline

HEALTHY_APPS = {"RUNNING"}
# Serve applying a new config (replica bounds, routing) to an app that serves meanwhile.
UPDATING_APPS = {"DEPLOYING"}
FAILED_APPS = {"DEPLOY_FAILED", "UNHEALTHY"}
MESSAGE_LIMIT = 400  # a condition's message: one line; the whole text goes into an Event


@dataclass(frozen=True)
class Observed:
    generation: int
    ray_service: dict[str, Any] | None
    problems: list[str]  # block applying: missing references, invalid spec
    pool_problems: list[str] = field(default_factory=list)  # GKE refused: quota, stockout, permission
    node_pools: list[dict[str, Any]] = field(default_factory=list)
    ray_cluster: dict[str, Any] | None = None  # the active RayCluster: its status counts ready workers
    pool_progress: list[str] = field(default_factory=list)  # a node pool being replaced, a policy awaited
    pods: Sequence[dict[str, Any]] = ()  # the service's Ray pods: which wait for a node, and why
    serve_service: bool = False  # KubeRay has made the Service clients call
    root_causes: Mapping[str, str] = field(default_factory=dict)  # Serve deployment -> why its replica failed
    pending_cluster: dict[str, Any] | None = None  # the RayCluster KubeRay starts beside (or before) the active one
    engine_steps: Mapping[str, str] = field(default_factory=dict)  # its first replica's engine start: step -> time
    refused: Sequence[str] = ()  # writes the API server refused at the last try, in its words


def _cond(ctype: C, ok: bool, reason: str, message: str = "") -> Condition:
    """`reason` may be KubeRay's own (Ready while deploying)."""
    return Condition(type=str(ctype), status="True" if ok else "False", reason=str(reason), message=one_line(message))


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ray_condition(rs: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in rs.get("status", {}).get("conditions", []) if c.get("type") == ctype), None)


def _apps(rs: dict[str, Any], which: str = "activeServiceStatus") -> dict[str, dict[str, Any]]:
    return (rs.get("status", {}).get(which) or {}).get("applicationStatuses") or {}


def exception_line(message: str) -> str:
    """The exception line of a Python traceback (the last line that names an exception), or
    the message's last line."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    found = next((i for i in range(len(lines) - 1, -1, -1) if _EXCEPTION.match(lines[i])), None)
    return with_detail(lines, found) if found is not None else (lines[-1] if lines else "")


# pydantic's "1 validation error for ModelConfig" says what failed on the lines after it (vLLM
# refuses a model it cannot find that way; Ray Serve LLM re-raises the text as a RuntimeError).
# The operator's callback's refusal of a bucket model (render/ray_hooks.py), as a traceback ends.
_SOURCE_ERROR = re.compile(rf"^(?:\w+\.)*{ray_hooks.SOURCE_ERROR}: ")
_VALIDATION = re.compile(r"\d+ validation errors? for \w+$")


def with_detail(lines: list[str], i: int) -> str:
    """Line i of `lines`, an exception line, with its first detail line when it only counts
    validation errors."""
    line = lines[i].strip()
    if _VALIDATION.search(line):
        detail = next((ln.strip() for ln in lines[i + 1 :] if ln.strip()), "")
        return f"{line}: {detail}" if detail else line
    return line


# "ValueError: ...", "vllm.x.EngineError: ...", "ray.exceptions.RayTaskError(ValueError): ..."
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception)\w*(?:\([\w.]+\))?: \S")


def endpoint(svc: LLMService, settings: OperatorSettings) -> str:
    scheme = "https" if svc.spec.ingress.tls_secret else "http"
    return f"{scheme}://{svc.metadata.name}.{svc.metadata.namespace}.svc:{SERVE_PORT}/v1"


def replicas(
    svc: LLMService | Plan, rs: dict[str, Any] | None, ray_cluster: dict[str, Any] | None = None
) -> ReplicaStatus:
    """Model replicas from the active cluster's worker pods (pods per replica > 1 for
    multi-host TPU slices and multi-node GPU replicas): from the RayCluster when it was read
    (the RayService's copy of its status goes stale), else from that copy."""
    p = svc if isinstance(svc, Plan) else plan(svc)
    cluster = (
        (ray_cluster or {}).get("status")
        or (rs or {}).get("status", {}).get("activeServiceStatus", {}).get("rayClusterStatus")
        or {}
    )
    per = p.pods_per_replica
    return ReplicaStatus(
        ready=int(cluster.get("readyWorkerReplicas", 0)) // per,
        desired=int(cluster.get("desiredWorkerReplicas", 0)) // per,
    )


def unschedulable(pods: Sequence[dict[str, Any]]) -> list[str]:
    """Each pod no node can take, with the scheduler's reason ("0/3 nodes are available: 1
    Insufficient cpu, ..."), in the order the pods were made."""
    out = []
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        if (pod.get("status") or {}).get("phase") != "Pending" or pod["metadata"].get("deletionTimestamp"):
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                # The scheduler's first sentence: which nodes lack what (its preemption notes follow).
                why = (c.get("message") or "unschedulable").split(" no new claims")[0].split(" preemption:")[0]
                out.append(f"pod {pod['metadata']['name']} waits for a node: {why}")
    return out


def explain(p: Plan, cause: str) -> str:
    """The cause, with the field to fix in front where it is known from vLLM's or the hub
    client's words (vLLM takes a path that does not exist for a Hugging Face repo id)."""
    src = p.source
    if said := _SOURCE_ERROR.match(cause):  # the callback named the field already
        return cause[said.end() :]
    if src.scheme == "pvc" and str(src.serve_source) in cause:
        return f"spec.model.source {src.uri}: no model at '{src.path}' in PersistentVolumeClaim {src.claim} ({cause})"
    if src.scheme == "hf":
        hub_said = _hub_refusal(p, cause)
        if hub_said:
            return f"{hub_said} ({cause})"
        if "huggingface.co" in cause or "LocalEntryNotFoundError" in cause:
            return f"spec.model.source {src.uri}: the pods could not download it from the Hugging Face Hub ({cause})"
    if cause.startswith("OutOfMemory:"):
        memory = p.svc.spec.ray.worker_resources.memory if p.svc.spec.ray.worker_resources else None
        now = f" (now {memory})" if memory else ""
        return f"spec.ray.workerResources.memory: the replica ran out of memory; raise it{now} ({cause})"
    return cause


def _hub_refusal(p: Plan, cause: str) -> str | None:
    """The field to fix when the Hub refused the model, from transformers' words (which vLLM and
    Ray Serve LLM pass on): a gated repo, a repo or a revision it does not have."""
    m, repo = p.svc.spec.model, p.source.uri
    hub = f"the Hub at {m.hf_endpoint}" if m.hf_endpoint else "the Hugging Face Hub"
    if "gated repo" in cause:
        if m.hf_token_secret:
            return (
                f"spec.model.hfTokenSecret: {repo} is gated and the token in Secret {m.hf_token_secret.name} "
                "has no access to it; use one of an account the repo granted access"
            )
        return f"spec.model.hfTokenSecret: {repo} is gated; set it to a Secret with a token that has access"
    if "is not a valid git identifier" in cause:
        return f"spec.model.revision: {hub} has no revision {m.revision or 'main'} of {repo}"
    if "not a valid model identifier" in cause or "Invalid repository ID" in cause:
        private = "" if m.hf_token_secret else " (a private repo needs spec.model.hfTokenSecret)"
        return f"spec.model.source: {hub} has no {repo}{private}"
    return None


def _failures(p: Plan, rs: dict[str, Any], root_causes: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(failed, failing): Serve applications that failed (Serve gave up), and deployments whose
    replicas fail to start while Serve still retries, each as "<where>: <root cause>"."""
    failed, failing = [], []
    for which, where in (("activeServiceStatus", ""), ("pendingServiceStatus", " (new cluster)")):
        for app, a in sorted(_apps(rs, which).items()):
            deployments = a.get("serveDeploymentStatuses") or {}
            causes = {d: root_causes[d] for d in deployments if d in root_causes}
            if a.get("status") in FAILED_APPS:
                bad = {d: s for d, s in deployments.items() if s.get("status") in FAILED_APPS}
                detail = [
                    f"{d}: {explain(p, causes.get(d) or exception_line(s.get('message', '')))}".rstrip(": ")
                    for d, s in sorted(bad.items())
                ] or [explain(p, exception_line(a.get("message", "")))]
                failed.append(f"{app}{where}: {a.get('status')}: " + "; ".join(x for x in detail if x))
            elif causes:
                failing += [f"{app}{where}: {d}: {explain(p, c)}" for d, c in sorted(causes.items())]
    return failed, failing


def conditions(p: Plan, obs: Observed) -> tuple[P, list[Condition]]:
    """(phase, [Ready, Progressing, Degraded])."""
    svc, rs = p.svc, obs.ray_service
    spec_seen = rs is not None and rs.get("status", {}).get("observedGeneration") == rs["metadata"].get("generation")
    if obs.problems:
        message = "; ".join(obs.problems)
        live = "the running RayService was left unchanged" if rs else "nothing was deployed"
        ready = _ray_condition(rs, "Ready") if rs else None
        serving = bool(ready and ready.get("status") == "True")
        return P.DEGRADED, [
            _cond(C.READY, serving, R.SERVING_PREVIOUS_SPEC if serving else R.NOT_DEPLOYED, live),
            _cond(C.PROGRESSING, False, R.BLOCKED, message),
            _cond(C.DEGRADED, True, R.INVALID_REFERENCE, message),
        ]
    if svc.spec.suspend:
        return P.SUSPENDED, [
            _cond(C.READY, False, R.SUSPENDED, "spec.suspend is true: the RayService and its Ray cluster are deleted"),
            _cond(C.PROGRESSING, False, R.SUSPENDED),
            _cond(C.DEGRADED, False, R.SUSPENDED),
        ]
    if rs is None:
        return P.PENDING, [
            _cond(C.READY, False, R.CREATING, "creating the RayService"),
            _cond(C.PROGRESSING, True, R.CREATING, "creating the RayService"),
            _cond(C.DEGRADED, False, R.AS_EXPECTED),
        ]
    ready = _ray_condition(rs, "Ready") or {}
    upgrading = _ray_condition(rs, "UpgradeInProgress") or {}
    apps = _apps(rs)
    failed, failing = _failures(p, rs, obs.root_causes)
    # While a new cluster starts beside the serving one, KubeRay 1.6 reports the pending
    # cluster's applications only (the active cluster's are absent), and keeps Ready True:
    # the old cluster still answers (seen on a real node during an engine.maxModelLen change).
    upgrade = upgrading.get("status") == "True"
    healthy = all(a.get("status") in HEALTHY_APPS | UPDATING_APPS for a in apps.values()) if apps else upgrade
    # Once it has served (KubeRay's Ready), an app Serve is updating still serves: Ready stays
    # True and Progressing says so, as a Deployment stays Available while it rolls.
    serving = ready.get("status") == "True" and healthy
    updating = sorted(n for n, a in apps.items() if a.get("status") in UPDATING_APPS)
    counts = replicas(p, rs, obs.ray_cluster)
    waiting = unschedulable(obs.pods)
    if failed:
        degraded = _cond(C.DEGRADED, True, R.SERVE_APPLICATION_FAILED, "; ".join(failed))
    elif failing:
        degraded = _cond(C.DEGRADED, True, R.REPLICA_START_FAILED, "; ".join(failing))
    else:
        degraded = _cond(C.DEGRADED, False, R.AS_EXPECTED)
    if failed:
        # Serve gave up: nothing moves until the spec does (an upgrade's old cluster may serve on).
        progressing = _cond(C.PROGRESSING, False, R.FAILED, "Serve stopped retrying: fix the spec, then apply it")
    elif waiting:
        progressing = _cond(C.PROGRESSING, True, R.WAITING_FOR_CAPACITY, "; ".join(waiting))
    elif failing:
        progressing = _cond(C.PROGRESSING, True, R.RETRYING, "a replica failed to start; Serve starts it again")
    elif upgrade:
        progressing = _cond(C.PROGRESSING, True, R.UPGRADING, upgrading.get("message", "new Ray cluster starting"))
    elif not spec_seen:
        progressing = _cond(C.PROGRESSING, True, R.RECONCILING, "KubeRay has not yet observed the latest spec")
    elif not serving:
        progressing = _cond(C.PROGRESSING, True, R.DEPLOYING, ready.get("message") or "waiting for serve endpoints")
    elif updating:
        progressing = _cond(
            C.PROGRESSING, True, R.DEPLOYING, f"Serve is updating {', '.join(updating)}; it serves meanwhile"
        )
    elif counts.desired != counts.ready:
        meanwhile = "requests wait meanwhile" if counts.ready == 0 else "it serves meanwhile"
        progressing = _cond(
            C.PROGRESSING, True, R.SCALING, f"{counts.ready} of {counts.desired} replica(s) ready; {meanwhile}"
        )
    else:
        progressing = _cond(C.PROGRESSING, False, R.RECONCILED)
    if serving and counts.ready == 0 and counts.desired == 0 and p.head_serves:
        ready_c = _cond(C.READY, True, R.SCALED_TO_ZERO, "no replica runs: the next request is held while one starts")
    elif serving:
        n = rs.get("status", {}).get("numServeEndpoints", 0)
        ready_c = _cond(C.READY, True, R.SERVING_TRAFFIC, f"{n} serve endpoint(s)")
    elif failed or failing:
        ready_c = _cond(C.READY, False, R.NOT_DEPLOYED, "no replica could start: see Degraded")
    else:
        ready_c = _cond(C.READY, False, ready.get("reason") or R.DEPLOYING, ready.get("message", ""))
    phase = P.READY if serving else (P.DEGRADED if failed or failing else P.PROVISIONING)
    return phase, [ready_c, progressing, degraded]


def summary(conds: list[Condition]) -> Condition:
    """The condition that says most about where the service is: a true Degraded, else a true
    Progressing, else Ready."""
    by = {c.type: c for c in conds}
    for ctype in (C.DEGRADED, C.PROGRESSING):
        c = by.get(str(ctype))
        if c is not None and c.status == "True":
            return c
    return by[str(C.READY)]


def _finish(
    phase: P, conds: list[Condition], generation: int, previous: dict[str, Any], now: str, **fields: Any
) -> LLMServiceStatus:
    kept = [Condition.model_validate(c) for c in previous.get("conditions") or [] if isinstance(c, dict)]
    out: list[Condition] = []
    for c in conds:
        merged = [k for k in kept if k.type == c.type]
        set_condition(merged, c.model_copy(update={"observed_generation": generation}), now)
        out.append(merged[0])
    top = summary(out)
    return LLMServiceStatus(
        observed_generation=generation,
        phase=phase,
        reason=top.reason,
        message=top.message or None,
        conditions=out,
        **fields,
    )


def _replaced(conds: list[Condition], new: Condition) -> list[Condition]:
    """`conds` with `new` in place of the condition of its type (appended last)."""
    return [c for c in conds if c.type != new.type] + [new]


def status(
    svc: LLMService | Plan, obs: Observed, settings: OperatorSettings, previous: dict[str, Any], now: str
) -> LLMServiceStatus:
    p = svc if isinstance(svc, Plan) else plan(svc)
    phase, conds = conditions(p, obs)
    if obs.pool_problems and not obs.problems:
        # The Ray side may be fine; the nodes it needs are not coming: say why, in GKE's words.
        phase = P.DEGRADED
        conds = _replaced(conds, _cond(C.DEGRADED, True, R.NODE_POOL_ERROR, "; ".join(obs.pool_problems)))
    if obs.refused and not obs.problems:
        # The API server refused a write (the operator's role, an admission policy): what it
        # held back does not happen, whatever the Ray side says, until that is fixed.
        phase = P.DEGRADED
        conds = _replaced(conds, _cond(C.DEGRADED, True, R.WRITE_REFUSED, "; ".join(obs.refused)))
    if obs.pool_progress and not obs.problems:
        # Nodes are changing under a service that may well be serving: Progressing says so
        # (the phase stays what the Ray side makes it).
        conds = _replaced(conds, _cond(C.PROGRESSING, True, R.UPDATING_NODE_POOLS, "; ".join(obs.pool_progress)))
    rs = obs.ray_service
    rs_status = (rs or {}).get("status") or {}
    # The active cluster serves; before the first one is ready, KubeRay reports it as pending.
    cluster = (rs_status.get("activeServiceStatus") or {}).get("rayClusterName") or (
        rs_status.get("pendingServiceStatus") or {}
    ).get("rayClusterName")
    return _finish(
        phase,
        conds,
        obs.generation,
        previous,
        now,
        endpoint=endpoint(p.svc, settings) if phase == P.READY else previous.get("endpoint"),
        replicas=replicas(p, rs, obs.ray_cluster),
        children=ChildStatus(
            ray_service=p.names.ray_service if rs else None,
            ray_cluster=cluster,
            serve_service=p.names.serve_service if obs.serve_service else None,
            edge_config=p.names.edge_config if p.spec.ingress.sidecar and rs else None,
        ),
        node_pools=[NodePoolStatus.model_validate(x) for x in obs.node_pools] if p.spec.node_pool.managed else None,
        startup=timeline(
            obs.pending_cluster or obs.ray_cluster,
            obs.pods,
            obs.pending_cluster is None and obs.ray_cluster is not None and phase == P.READY,
            previous.get("startup"),
            now,
            obs.engine_steps,
        )
        or _kept_startup(previous),
    )


def _kept_startup(previous: dict[str, Any]) -> StartupStatus | None:
    """No Ray cluster now (suspended, deleted): the last start stays told."""
    kept = previous.get("startup")
    return StartupStatus.model_validate(kept) if isinstance(kept, dict) else None


def invalid(problems: list[str], generation: int, previous: dict[str, Any], now: str) -> LLMServiceStatus:
    """Status of a manifest the renderer rejects (a rule CEL cannot express)."""
    message = "; ".join(problems)
    conds = [
        _cond(C.READY, False, R.INVALID_SPEC, "nothing was applied"),
        _cond(C.PROGRESSING, False, R.BLOCKED, message),
        _cond(C.DEGRADED, True, R.INVALID_SPEC, message),
    ]
    return _finish(P.DEGRADED, conds, generation, previous, now)


def without_times(status: dict[str, Any]) -> dict[str, Any]:
    """For "did anything change?": transition times alone never justify a write."""
    conds = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []]
    return {**status, "conditions": conds}
