"""Decide: what one reconcile writes, as a pure function of the observed snapshot.

`decide(observed, settings)` returns Actions: the children to apply, create and delete, the
patches (replica bounds on running Ray clusters, the serve Service's exposure, serving pods to
refresh), the finalizers, the status, the Events and when to look again. It reads no clock and
calls no API: the operator runs it and `act()` writes the result; `llmservice diff` runs it and
shows the result. The two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .. import labels as keys
from ..api import LLMService
from ..api.status import ConditionType as Cond
from ..api.status import LLMServiceStatus, Phase
from ..api.status import Reason as R
from ..render import Inputs, Rendered, edge, names, render, serve_config, startup
from ..render import status as status_mod
from ..render.rayservice import exposure
from ..settings import OperatorSettings
from . import preflight
from .drift import bounds_patch, exposure_patch, merge_patch, up_to_date
from .observe import Observed
from .rootcause import RootCause

FINALIZER = keys.FINALIZER  # only on services with managed node pools
NO_GKE = (
    "spec.nodePool.managed: the operator has no GKE cluster configured: set LLMSERVICE_GKE__PROJECT, "
    "LLMSERVICE_GKE__LOCATION and LLMSERVICE_GKE__CLUSTER (Helm: gke.*)"
)
ROOT_CAUSE_POLL_SECONDS = 10.0  # while a replica starts: how soon a failed start is found


@dataclass(frozen=True)
class Patch:
    api_version: str
    kind: str
    name: str
    type: Literal["merge", "json"]
    body: Any


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class PoolRequest:
    """GKE node pools to converge to (gke.NodePools.sync), or (delete) to remove."""

    desired: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    hold_replaced: bool = False  # an old Ray cluster still serves on pools being replaced
    delete: bool = False


@dataclass(frozen=True)
class Actions:
    apply: tuple[dict[str, Any], ...] = ()  # server-side apply, in this order
    create: tuple[dict[str, Any], ...] = ()  # created unless one exists (the Ray token: act fills it in)
    delete: tuple[tuple[str, str, str], ...] = ()  # (apiVersion, kind, name) of our children no longer wanted
    patches: tuple[Patch, ...] = ()  # after the applies
    finalizers: list[str] | None = None  # the LLMService's new finalizers, when they change
    status: LLMServiceStatus | None = None  # the status decided (written only when it differs)
    status_patch: dict[str, Any] | None = None  # the merge patch that writes it; None: unchanged
    events: tuple[Event, ...] = ()
    pools: PoolRequest | None = None  # for the GKE layer's own queue
    secrets_read: dict[str, str | None] = field(default_factory=dict)  # Secret -> version the pods should have
    stale_references: tuple[tuple[str, str], ...] = ()  # (kind, name) to read again next time
    requeue_after: float | None = None  # look again after this many seconds
    problems: tuple[str, ...] = ()  # what blocks applying (also in the status)
    release_finalizer_when_pools_gone: bool = False  # deletion: drop FINALIZER once GKE has no pool left

    @property
    def writes(self) -> bool:
        return bool(self.apply or self.create or self.delete or self.patches or self.status_patch)


def _owned(obj: dict[str, Any], owner: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("kind") == "LLMService" and r.get("name") == owner for r in refs)


def _mounted(pods: tuple[dict[str, Any], ...], kind: str, name: str) -> list[str]:
    """Pods not yet gone that mount ConfigMap or Secret `name`."""
    field_name = {"ConfigMap": ("configMap", "name"), "Secret": ("secret", "secretName")}.get(kind)
    if field_name is None:
        return []
    source, key = field_name
    out = []
    for pod in pods:
        if _gone(pod):
            continue
        vols = (pod.get("spec") or {}).get("volumes") or []
        if any((v.get(source) or {}).get(key) == name for v in vols):
            out.append(pod["metadata"]["name"])
    return out


def _gone(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _serving_ports(obs: Observed) -> frozenset[str]:
    """The ports the live Ray pods serve requests on: `edge` where a pod runs the sidecar,
    `serve` where a worker runs none (a head without the sidecar serves only when the spec
    says so). From the pods, as the cache keeps them: KubeRay may still be taking down an old
    cluster that serves on the other port."""
    ports: set[str] = set()
    for pod in obs.pods:
        if _gone(pod):
            continue
        if any(c["name"] == "edge" for c in pod["spec"]["containers"]):
            ports.add(edge.serving_port_of(True))
        elif (pod["metadata"].get("labels") or {}).get(keys.RAY_NODE_TYPE) == "worker":
            ports.add(edge.serving_port_of(False))
    return frozenset(ports)


def owner_ref(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _switching(ray_service: dict[str, Any] | None) -> bool:
    """KubeRay is starting a new Ray cluster beside the serving one (blue/green): pools the
    old one runs on must stay until traffic has moved."""
    pending = ((ray_service or {}).get("status") or {}).get("pendingServiceStatus") or {}
    return bool(pending.get("rayClusterName"))


def _serve_config(ray_service: dict[str, Any] | None) -> dict[str, Any] | None:
    text = ((ray_service or {}).get("spec") or {}).get("serveConfigV2")
    return yaml.safe_load(text) if text else None


def _carried_initial(obs: Observed, svc: LLMService, rendered: Rendered) -> int | None:
    """The initial_replicas a running service's Serve config carries. Ray (2.60) sets an
    autoscaling deployment's target back to initial_replicas on ANY change of its config (a
    new replicas.max, delay or routing policy), so a loaded service would drop to
    replicas.initial. Instead: while nothing else in the config changes, the live value (no
    write); when something does, the replicas running now, within the new bounds. None: no
    service runs yet, or the rendered value is that already."""
    live = _serve_config(obs.ray_service)
    have = serve_config.initial_replicas(live)
    active = obs.cluster("activeServiceStatus")
    if live is None or have is None or active is None:
        return None
    wanted = _serve_config(rendered.wanted_ray_service)
    rendered_initial = serve_config.initial_replicas(wanted)
    if wanted is None or rendered_initial is None:
        return None
    bounds = svc.spec.replicas
    if serve_config.without_initial(live) != serve_config.without_initial(wanted):
        have = status_mod.replicas(rendered.plan, obs.ray_service, active).desired
    carried = min(max(have, bounds.min), bounds.max)
    return carried if carried != rendered_initial else None


def _with_initial(svc: LLMService, initial: int) -> LLMService:
    replicas = svc.spec.replicas.model_copy(update={"initial": initial})
    return svc.model_copy(update={"spec": svc.spec.model_copy(update={"replicas": replicas})})


def _finalize(obs: Observed) -> Actions:
    """A deleted service: its children go with it through their ownerReferences; managed node
    pools are deleted through GKE first (the finalizer holds the deletion until they are)."""
    if FINALIZER not in (obs.body["metadata"].get("finalizers") or []):
        return Actions()
    return Actions(pools=PoolRequest(delete=True), release_finalizer_when_pools_gone=True)


def _children(obs: Observed, rendered: Rendered) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """The children to apply (missing or different) and to delete (slots no longer wanted,
    ours, and not mounted by a pod that still runs: a running pod keeps what it mounts)."""
    apply, delete = [], []
    for child in rendered.children:
        if child.kind.kind in obs.unserved:
            continue
        live = obs.children.get(child.key)
        if child.obj is not None:
            if not up_to_date(live, child.obj):
                apply.append(child.obj)
        elif live is not None and _owned(live, obs.name) and not _mounted(obs.pods, child.kind.kind, child.name):
            delete.append((child.kind.api_version, child.kind.kind, child.name))
    return apply, delete


def _edge_refresh(obs: Observed, rendered: Rendered, applying: list[dict[str, Any]]) -> list[Patch]:
    """The edge ConfigMap changes (limits, or a Secret it names): annotate the serving pods.
    The kubelet refreshes a pod's mounted ConfigMaps and Secrets when the pod changes
    (otherwise at its periodic sync, a minute or more later); the sidecar then reloads."""
    cm = rendered.edge_config
    if cm is None:
        return []
    revision = edge.revision(cm)
    changed = any(o is cm for o in applying) and obs.children.get(("ConfigMap", cm["metadata"]["name"])) is not None
    out = []
    for pod in obs.pods:
        meta = pod["metadata"]
        has_edge = any(c["name"] == "edge" for c in pod["spec"]["containers"])
        if not has_edge or meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
            continue
        seen = (meta.get("annotations") or {}).get(keys.EDGE_REVISION)
        if seen == revision or (seen is None and not changed):
            continue
        patch = {"metadata": {"annotations": {keys.EDGE_REVISION: revision}}}
        out.append(Patch("v1", "Pod", meta["name"], "merge", patch))
    return out


def _after_kuberay(obs: Observed, rendered: Rendered) -> list[Patch]:
    """What KubeRay leaves as it was: the serve Service's exposure (KubeRay writes a Service's
    spec only when traffic moves to a new Ray cluster, its annotations never) and the replica
    bounds of running Ray clusters (out of the hash that makes KubeRay update one)."""
    out = []
    live = obs.serve_service
    if live is not None:
        meta, spec = exposure(rendered.plan.spec)
        patch = exposure_patch(live, meta.get("annotations", {}), spec)
        if patch is not None:
            out.append(Patch("v1", "Service", live["metadata"]["name"], "merge", patch))
    desired = rendered.wanted_ray_service
    if desired is None:  # suspended: the clusters go with the RayService
        return out
    for name, cluster in sorted(obs.clusters.items()):
        ops = bounds_patch(cluster, desired)
        if ops:
            out.append(Patch("ray.io/v1", "RayCluster", name, "json", ops))
    return out


def _pool_view(obs: Observed, rendered: Rendered | None) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """(problems, node pool statuses, progress) from GKE's view, for services that manage pools."""
    if rendered is None or not rendered.managed_pools:
        return [], [], []
    if obs.pools is None:
        return [], [], []
    return list(obs.pools.problems), list(obs.pools.pools), list(obs.pools.progress)


def _as_applied(live: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """The RayService as this reconcile's apply leaves it: KubeRay's status as it was, for a
    spec it has not seen yet (a new generation). The status then says "Reconciling" at once,
    instead of what the object was before (or "Creating") until the next reconcile."""
    meta = (live or {}).get("metadata") or {}
    generation = int(meta.get("generation") or 0) + 1
    return {
        **desired,
        "metadata": {**desired["metadata"], "generation": generation},
        "status": (live or {}).get("status") or {},
    }


def _status(
    obs: Observed,
    settings: OperatorSettings,
    rendered: Rendered | None,
    problems: list[str],
    gke: bool,
    applying: list[dict[str, Any]] | None = None,
) -> LLMServiceStatus:
    previous = obs.body.get("status") or {}
    if obs.svc is None or rendered is None:
        return status_mod.invalid(list(obs.invalid), obs.generation, previous, obs.now)
    pool_problems, pools, progress = _pool_view(obs, rendered)
    if rendered.managed_pools and not gke:
        pool_problems = [NO_GKE]
    ray_service = obs.ray_service
    wanted = rendered.wanted_ray_service
    if wanted is not None and any(o is wanted for o in applying or []):
        ray_service = _as_applied(ray_service, wanted)
    view = status_mod.Observed(
        obs.generation,
        ray_service,
        problems,
        pool_problems,
        pools,
        obs.cluster("activeServiceStatus"),
        progress,
        pods=obs.pods,
        serve_service=obs.serve_service is not None,
        root_causes={d: c.line for d, c in obs.root_causes.items()},
        pending_cluster=obs.cluster("pendingServiceStatus"),
        engine_steps=obs.engine_steps,
        refused=obs.refused,
    )
    return status_mod.status(rendered.plan, view, settings, previous, obs.now)


EVENT_MESSAGE_LIMIT = 1024  # what the Event API keeps (kube.py cuts there)


def start_failure_message(deployment: str, cause: RootCause) -> str:
    """The cause first, then as many of the log lines before it as fit: cut at the limit, the
    exception at the end of the log would be the part lost."""
    head = f"{deployment}: {cause.line}\nreplica log:\n"
    lines, room = cause.text.splitlines(), EVENT_MESSAGE_LIMIT - len(head)
    kept: list[str] = []
    for ln in reversed(lines):
        if len(ln) + 1 > room:
            break
        kept.insert(0, ln)
        room -= len(ln) + 1
    return (head + "\n".join(kept))[:EVENT_MESSAGE_LIMIT]


def _events(obs: Observed, new: LLMServiceStatus, previous: dict[str, Any]) -> list[Event]:
    out = []
    before = previous.get("message") or ""
    for deployment, cause in sorted(obs.root_causes.items()):
        if cause.line not in before:  # a cause not yet told: the whole text, once
            out.append(Event("Warning", str(R.REPLICA_START_FAILED), start_failure_message(deployment, cause)))
    for line in startup.new_steps(previous.get("startup"), new.startup):
        out.append(Event("Normal", str(R.COLD_START), line))
    if new.phase != previous.get("phase"):
        # The condition that explains the new phase becomes the Event.
        explains = {Phase.READY: Cond.READY, Phase.DEGRADED: Cond.DEGRADED}.get(
            new.phase or Phase.PENDING, Cond.PROGRESSING
        )
        cond = next(c for c in new.conditions if c.type == explains)
        message = cond.message or f"phase {previous.get('phase') or '-'} -> {new.phase}"
        out.append(Event("Warning" if new.phase == Phase.DEGRADED else "Normal", cond.reason, message))
    return out


def decide(obs: Observed, settings: OperatorSettings, gke: bool = False) -> Actions:
    """`gke`: the operator has a GKE cluster to manage node pools in."""
    if obs.deleting:
        return _finalize(obs)
    previous = obs.body.get("status") or {}
    svc = obs.svc
    problems: list[str] = []
    stale: list[tuple[str, str]] = []
    rendered = None
    secrets: dict[str, str | None] = {}
    if svc is not None:
        problems, stale_secrets = preflight.problems(svc, obs.references)
        stale = [("Secret", n) for n in stale_secrets]
        used = edge.secret_inputs(svc)
        secrets = {
            n: ((obs.references.get(("Secret", n)) or {}).get("metadata") or {}).get("resourceVersion") for n in used
        }
        inputs = Inputs(owner=owner_ref(obs.body), secret_versions=secrets, serving_ports=_serving_ports(obs))
        rendered = render(svc, settings, inputs)
        carried = _carried_initial(obs, svc, rendered)
        if carried is not None:
            rendered = render(_with_initial(svc, carried), settings, inputs)
    apply: list[dict[str, Any]] = []
    delete: list[tuple[str, str, str]] = []
    create: list[dict[str, Any]] = []
    patches: list[Patch] = []
    if svc is not None and rendered is not None and not problems:
        apply, delete = _children(obs, rendered)
        token = rendered.plan.names.ray_auth
        if svc.spec.ray.auth == "token" and (obs.first or obs.references.get(("Secret", token)) is None):
            create.append(_token_secret(obs, token))
        patches = _edge_refresh(obs, rendered, apply) + _after_kuberay(obs, rendered)
    finalizers = _finalizers(obs, rendered, gke)
    pools = None
    if rendered is not None and rendered.managed_pools and gke:
        pools = PoolRequest(rendered.node_pools, rendered.workload_policies, _switching(obs.ray_service))
    new = _status(obs, settings, rendered, problems, gke, apply)
    new_dict = new.to_dict()
    unchanged = status_mod.without_times(new_dict) == status_mod.without_times(previous)
    requeue = None
    if problems:
        requeue = settings.retry_delay_seconds  # a missing Secret or PVC is not watched
    elif new.reason in (R.RETRYING, R.DEPLOYING) and _workers_running(obs):
        requeue = ROOT_CAUSE_POLL_SECONDS  # a replica may be starting: find a failed start soon
    elif startup.engine_pending(new.startup, obs.now):
        requeue = ROOT_CAUSE_POLL_SECONDS  # serving, its engine's start not read yet (the dashboard was busy)
    return Actions(
        apply=tuple(apply),
        create=tuple(create),
        delete=tuple(delete),
        patches=tuple(patches),
        finalizers=finalizers,
        status=new,
        status_patch=None if unchanged else merge_patch(previous, new_dict),
        events=() if unchanged else tuple(_events(obs, new, previous)),
        pools=pools,
        secrets_read=secrets,
        stale_references=tuple(stale),
        requeue_after=requeue,
        problems=tuple(problems or obs.invalid),
    )


def _finalizers(obs: Observed, rendered: Rendered | None, gke: bool) -> list[str] | None:
    """FINALIZER while the service manages node pools (deletion waits for them); removed when
    it no longer does (the pools stay, the user's now). Unchanged: None."""
    have = obs.body["metadata"].get("finalizers") or []
    if rendered is None:
        return None
    if rendered.managed_pools and gke and FINALIZER not in have:
        return [*have, FINALIZER]
    if not rendered.managed_pools and FINALIZER in have:
        return [f for f in have if f != FINALIZER]
    return None


def _workers_running(obs: Observed) -> bool:
    return any(
        (p["metadata"].get("labels") or {}).get(keys.RAY_NODE_TYPE) == "worker"
        and (p.get("status") or {}).get("phase") == "Running"
        for p in obs.pods
    )


def _token_secret(obs: Observed, name: str) -> dict[str, Any]:
    """The Ray cluster's token Secret (ray.auth: token), without its token: act() generates it
    once; it is never rewritten, so the token outlives upgrades and operator restarts."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": obs.namespace,
            "labels": names.labels(obs.name),
            "ownerReferences": [owner_ref(obs.body)],
        },
        "type": "Opaque",
        "stringData": {names.RAY_AUTH_TOKEN_KEY: ""},
    }
