"""LLMService status from what the cluster reports: pure, so every transition is unit-tested.

Inputs are the LLMService, the live RayService (or None), problems found before applying
(missing Secrets, render errors), and the previous conditions (to keep lastTransitionTime).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.resource import LLMService
from ..api.status import ConditionType as C
from ..api.status import Phase as P
from ..api.status import Reason as R
from ..settings import OperatorSettings
from . import names
from .serve_config import SERVE_PORT
from .shape import worker_bounds

HEALTHY_APPS = {"RUNNING"}
# Serve applying a new config (replica bounds, routing) to an app that serves meanwhile.
UPDATING_APPS = {"DEPLOYING"}
FAILED_APPS = {"DEPLOY_FAILED", "UNHEALTHY"}


@dataclass(frozen=True)
class Observed:
    generation: int
    ray_service: dict[str, Any] | None
    problems: list[str]  # block applying: missing references, invalid spec
    pool_problems: list[str] = field(default_factory=list)  # GKE refused: quota, stockout, permission
    node_pools: list[dict[str, Any]] = field(default_factory=list)
    ray_cluster: dict[str, Any] | None = None  # the active RayCluster: its status counts ready workers
    pool_progress: list[str] = field(default_factory=list)  # a node pool being replaced, a policy awaited


def _cond(ctype: C, ok: bool, reason: str, message: str) -> dict[str, Any]:
    """A condition as written; plain strings (not the enums) so the dict is plain JSON data.
    `reason` may be KubeRay's own (Ready while deploying)."""
    return {"type": str(ctype), "status": "True" if ok else "False", "reason": str(reason), "message": message}


def _ray_condition(rs: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in rs.get("status", {}).get("conditions", []) if c.get("type") == ctype), None)


def _apps(rs: dict[str, Any], which: str = "activeServiceStatus") -> dict[str, dict[str, Any]]:
    return (rs.get("status", {}).get(which) or {}).get("applicationStatuses") or {}


def _error(message: str, limit: int = 400) -> str:
    """The exception line of Ray's traceback (the whole one is in the RayService status)."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else last[: limit - 3] + "..."


def endpoint(svc: LLMService, settings: OperatorSettings) -> str:
    scheme = "https" if svc.spec.ingress.tls_secret else "http"
    return f"{scheme}://{svc.metadata.name}.{svc.metadata.namespace}.svc:{SERVE_PORT}/v1"


def replicas(svc: LLMService, rs: dict[str, Any] | None, ray_cluster: dict[str, Any] | None = None) -> dict[str, int]:
    """Model replicas from the active cluster's worker pods (pods per replica > 1 for
    multi-host TPU slices and multi-node GPU replicas): from the RayCluster when it was read
    (the RayService's copy of its status goes stale), else from that copy."""
    cluster = (
        (ray_cluster or {}).get("status")
        or (rs or {}).get("status", {}).get("activeServiceStatus", {}).get("rayClusterStatus")
        or {}
    )
    groups = worker_bounds(svc.spec)
    per = groups[0].shape.pods_per_replica if len(groups) == 1 else 1
    return {
        "ready": int(cluster.get("readyWorkerReplicas", 0)) // per,
        "desired": int(cluster.get("desiredWorkerReplicas", 0)) // per,
    }


def conditions(svc: LLMService, obs: Observed) -> tuple[P, list[dict[str, Any]]]:
    """(phase, [Ready, Progressing, Degraded])."""
    rs = obs.ray_service
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
            _cond(C.READY, False, R.SUSPENDED, "spec.suspend is true: the Ray cluster is deleted"),
            _cond(C.PROGRESSING, False, R.SUSPENDED, ""),
            _cond(C.DEGRADED, False, R.SUSPENDED, ""),
        ]
    if rs is None:
        return P.PENDING, [
            _cond(C.READY, False, R.CREATING, "creating the RayService"),
            _cond(C.PROGRESSING, True, R.CREATING, "creating the RayService"),
            _cond(C.DEGRADED, False, R.AS_EXPECTED, ""),
        ]
    ready = _ray_condition(rs, "Ready") or {}
    upgrading = _ray_condition(rs, "UpgradeInProgress") or {}
    apps = _apps(rs)
    failed = {n: a for n, a in apps.items() if a.get("status") in FAILED_APPS}
    # The cluster KubeRay is bringing up (first deploy or upgrade) fails before it ever serves:
    # a user must see why, not an endless Provisioning.
    failed |= {
        f"{n} (new cluster)": a for n, a in _apps(rs, "pendingServiceStatus").items() if a.get("status") in FAILED_APPS
    }
    # While a new cluster starts beside the serving one, KubeRay 1.6 reports the pending
    # cluster's applications only (the active cluster's are absent), and keeps Ready True:
    # the old cluster still answers (seen on a real node during an engine.maxModelLen change).
    upgrade = upgrading.get("status") == "True"
    healthy = all(a.get("status") in HEALTHY_APPS | UPDATING_APPS for a in apps.values()) if apps else upgrade
    # Once it has served (KubeRay's Ready), an app Serve is updating still serves: Ready stays
    # True and Progressing says so, as a Deployment stays Available while it rolls.
    serving = ready.get("status") == "True" and healthy
    updating = sorted(n for n, a in apps.items() if a.get("status") in UPDATING_APPS)
    if failed:
        detail = "; ".join(
            f"{n}: {a.get('status')}: {_error(a.get('message', ''))}".rstrip(": ") for n, a in failed.items()
        )
        degraded = _cond(C.DEGRADED, True, R.SERVE_APPLICATION_FAILED, detail)
    else:
        degraded = _cond(C.DEGRADED, False, R.AS_EXPECTED, "")
    if upgrade:
        progressing = _cond(C.PROGRESSING, True, R.UPGRADING, upgrading.get("message", "new Ray cluster starting"))
    elif not spec_seen:
        progressing = _cond(C.PROGRESSING, True, R.RECONCILING, "KubeRay has not yet observed the latest spec")
    elif not serving:
        progressing = _cond(C.PROGRESSING, True, R.DEPLOYING, ready.get("message") or "waiting for serve endpoints")
    elif updating:
        progressing = _cond(
            C.PROGRESSING, True, R.DEPLOYING, f"Serve is updating {', '.join(updating)}; it serves meanwhile"
        )
    else:
        progressing = _cond(C.PROGRESSING, False, R.RECONCILED, "")
    if serving:
        n = rs.get("status", {}).get("numServeEndpoints", 0)
        ready_c = _cond(C.READY, True, R.SERVING_TRAFFIC, f"{n} serve endpoint(s)")
    else:
        ready_c = _cond(C.READY, False, ready.get("reason") or R.DEPLOYING, ready.get("message", ""))
    phase = P.READY if serving else (P.DEGRADED if failed else P.PROVISIONING)
    return phase, [ready_c, progressing, degraded]


def _keep_transition_times(new: list[dict[str, Any]], old: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
    previous = {c.get("type"): c for c in old}
    out = []
    for c in new:
        before = previous.get(c["type"])
        same = before is not None and before.get("status") == c["status"]
        out.append({**c, "lastTransitionTime": before.get("lastTransitionTime", now) if same else now})
    return out


def status(
    svc: LLMService, obs: Observed, settings: OperatorSettings, previous: dict[str, Any], now: str
) -> dict[str, Any]:
    phase, conds = conditions(svc, obs)
    if obs.pool_problems and not obs.problems:
        # The Ray side may be fine; the nodes it needs are not coming: say why, in GKE's words.
        phase = P.DEGRADED
        conds = [c for c in conds if c["type"] != C.DEGRADED]
        conds.append(_cond(C.DEGRADED, True, R.NODE_POOL_ERROR, "; ".join(obs.pool_problems)))
    if obs.pool_progress and not obs.problems:
        # Nodes are changing under a service that may well be serving: Progressing says so
        # (the phase stays what the Ray side makes it).
        conds = [c for c in conds if c["type"] != C.PROGRESSING]
        conds.append(_cond(C.PROGRESSING, True, R.UPDATING_NODE_POOLS, "; ".join(obs.pool_progress)))
    conds = [{**c, "observedGeneration": obs.generation} for c in conds]
    rs = obs.ray_service
    rs_status = (rs or {}).get("status") or {}
    # The active cluster serves; before the first one is ready, KubeRay reports it as pending.
    cluster = (rs_status.get("activeServiceStatus") or {}).get("rayClusterName") or (
        rs_status.get("pendingServiceStatus") or {}
    ).get("rayClusterName")
    return {
        "observedGeneration": obs.generation,
        "phase": str(phase),
        "conditions": _keep_transition_times(conds, previous.get("conditions", []), now),
        "endpoint": endpoint(svc, settings) if phase == P.READY else previous.get("endpoint"),
        "replicas": replicas(svc, rs, obs.ray_cluster),
        "children": {
            k: v
            for k, v in {
                "rayService": svc.metadata.name if rs else None,
                "rayCluster": cluster,
                "serveService": svc.metadata.name if rs else None,
                "edgeConfig": names.child(svc.metadata.name, "edge") if svc.spec.ingress.sidecar else None,
            }.items()
            if v
        },
        **({"nodePools": obs.node_pools} if svc.spec.node_pool.managed else {}),
    }


def invalid(problems: list[str], generation: int, previous: dict[str, Any], now: str) -> dict[str, Any]:
    """Status of a manifest the renderer rejects (a rule CEL cannot express)."""
    message = "; ".join(problems)
    conds = [
        _cond(C.READY, False, R.INVALID_SPEC, "nothing was applied"),
        _cond(C.PROGRESSING, False, R.BLOCKED, message),
        _cond(C.DEGRADED, True, R.INVALID_SPEC, message),
    ]
    conds = [{**c, "observedGeneration": generation} for c in conds]
    return {
        "observedGeneration": generation,
        "phase": str(P.DEGRADED),
        "conditions": _keep_transition_times(conds, previous.get("conditions", []), now),
    }


def without_times(status: dict[str, Any]) -> dict[str, Any]:
    """For "did anything change?": transition times alone never justify a write."""
    conds = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []]
    return {**status, "conditions": conds}
