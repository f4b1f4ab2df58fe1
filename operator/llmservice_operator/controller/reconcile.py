"""One level-triggered reconcile of an LLMService: read, decide (render/), write only what differs."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.dynamic.exceptions import NotFoundError

from .. import labels as keys
from ..api import InvalidLLMService, LLMService, parse
from ..api.status import ConditionType as Cond
from ..api.status import Phase
from ..gke import NodePools, PoolSync
from ..render import Rendered, edge, names, render
from ..render import status as status_mod
from ..render.rayservice import exposure
from ..settings import OperatorSettings
from . import metrics, preflight
from .drift import bounds_patch, exposure_patch, merge_patch, plan
from .kube import Kube
from .secret_watch import SecretWatch

log = logging.getLogger(__name__)

# Children that may come and go with the spec (sidecar off, replicas.min 0).
OPTIONAL_CHILDREN = (
    ("networking.k8s.io/v1", "NetworkPolicy", "ray"),
    ("v1", "ConfigMap", "edge"),
    ("v1", "Service", "edge-peers"),
    ("policy/v1", "PodDisruptionBudget", "workers"),
)


Reader = Callable[[str, str, str, str], dict[str, Any] | None]  # (apiVersion, kind, namespace, name)
FINALIZER = keys.FINALIZER  # only on services with managed node pools
NO_GKE = (
    "spec.nodePool.managed: the operator has no GKE cluster configured: set LLMSERVICE_GKE__PROJECT, "
    "LLMSERVICE_GKE__LOCATION and LLMSERVICE_GKE__CLUSTER (Helm: gke.*)"
)


@dataclass
class Outcome:
    phase: str | None = None
    applied: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    status_written: bool = False
    busy: bool = False  # GKE is changing something no queued operation of ours covers: poll it
    queued: bool = False  # a GKE mutation waits in the cluster's queue, which wakes this service
    replicas: dict[str, int] = field(default_factory=dict)  # status.replicas: ready, desired


def _switching(ray_service: dict[str, Any] | None) -> bool:
    """KubeRay is starting a new Ray cluster beside the serving one (blue/green): pools the
    old one runs on must stay until traffic has moved."""
    pending = ((ray_service or {}).get("status") or {}).get("pendingServiceStatus") or {}
    return bool(pending.get("rayClusterName"))


def _has_cluster(ray_service: dict[str, Any] | None) -> bool:
    status = (ray_service or {}).get("status") or {}
    return any((status.get(k) or {}).get("rayClusterName") for k in ("activeServiceStatus", "pendingServiceStatus"))


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _never_reconciled(body: dict[str, Any]) -> bool:
    """No status written yet: the service's children most likely do not exist."""
    return "observedGeneration" not in (body.get("status") or {})


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


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, node_pools: NodePools | None = None):
        self.kube = kube
        self.settings = settings
        self.node_pools = node_pools
        self._unserved: set[str] = set()
        self._references = preflight.References(lambda k, ns, n: self._get(k, ns, n))
        self.secret_watch = SecretWatch(
            self._secret_version,
            settings.secret_refresh_seconds,
            forget=lambda ns, name: self._references.forget("Secret", ns, name),
        )

    def _secret_version(self, namespace: str, name: str) -> str | None:
        meta = self.kube.metadata("v1", "Secret", namespace, name)
        return None if meta is None else meta["metadata"].get("resourceVersion")

    def _get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get("v1", kind, namespace, name)

    def reconcile(self, namespace: str, name: str) -> Outcome | None:
        """One at a time per object: the work queue never hands a key to two workers."""
        with metrics.DURATION.time():
            try:
                outcome = self._reconcile(namespace, name)
            except Exception as e:
                metrics.ERRORS.labels(type(e).__name__).inc()
                metrics.RECONCILES.labels("error").inc()
                raise
            metrics.RECONCILES.labels("applied" if outcome and outcome.applied else "unchanged").inc()
            return outcome

    def _reconcile(self, namespace: str, name: str) -> Outcome | None:
        body = self.kube.get_llmservice(namespace, name)
        if body is None:
            metrics.set_service(namespace, name, None)
            self.secret_watch.untrack((namespace, name))
            return None
        if body["metadata"].get("deletionTimestamp"):
            metrics.set_service(namespace, name, None)
            self.secret_watch.untrack((namespace, name))
            return self._finalize(body)  # children go with it through their ownerReferences
        out = Outcome()
        svc: LLMService | None = None
        try:
            svc = parse(body)
        except InvalidLLMService as e:  # rules CEL cannot express (engine.extraArgs)
            out.problems = [str(x) for x in e.errors]
        rendered = None
        if svc is not None:
            out.problems += preflight.problems(svc, self._references.get, self._references.forget)
            rendered = render(svc, self.settings)  # once: children, node pools, policies
        # A service never reconciled has no children yet: a cache miss is not asked again of the
        # API server (if a same-named predecessor left some, server-side apply rewrites them).
        read = self.kube.peek if _never_reconciled(body) else self.kube.get
        ray_service = read("ray.io/v1", "RayService", namespace, name)
        pools = self._sync_node_pools(body, rendered, out, _switching(ray_service))
        if svc is not None and rendered is not None and not out.problems:
            ray_service = self._apply_children(body, svc, rendered, ray_service, out, read)
        self._write_status(body, svc, ray_service, out, pools)
        metrics.set_service(namespace, name, out.phase, out.replicas)
        return out

    def _sync_node_pools(
        self, body: dict[str, Any], rendered: Rendered | None, out: Outcome, switching: bool
    ) -> PoolSync:
        """GKE node pools for services that ask for them; the finalizer makes deletion wait
        until the pools are gone."""
        meta = body["metadata"]
        finalizers = meta.get("finalizers") or []
        managed = rendered is not None and rendered.managed_pools
        if not managed:
            if FINALIZER in finalizers and rendered is not None:  # unmanaged now: pools stay for the user
                self.kube.set_finalizers(meta["namespace"], meta["name"], [f for f in finalizers if f != FINALIZER])
            return PoolSync()
        assert rendered is not None
        if self.node_pools is None:
            return PoolSync(problems=[NO_GKE])
        if FINALIZER not in finalizers:
            self.kube.set_finalizers(meta["namespace"], meta["name"], [*finalizers, FINALIZER])
        owner = (meta["namespace"], meta["name"])
        sync = self.node_pools.sync(owner, rendered.node_pools, rendered.workload_policies, hold_replaced=switching)
        out.busy = out.busy or (sync.busy and not sync.queued)  # queued: the GKE queue wakes us
        out.queued = sync.queued
        return sync

    def _finalize(self, body: dict[str, Any]) -> Outcome | None:
        meta = body["metadata"]
        finalizers = meta.get("finalizers") or []
        if FINALIZER not in finalizers:
            return None
        if self.node_pools is not None:
            sync = self.node_pools.delete_owned((meta["namespace"], meta["name"]))
            if sync.busy or sync.problems:
                return Outcome(busy=sync.busy and not sync.queued, queued=sync.queued, problems=sync.problems)
        # Released also when the pools were already gone (or GKE was never configured).
        self.kube.set_finalizers(meta["namespace"], meta["name"], [f for f in finalizers if f != FINALIZER])
        return None

    def _apply_children(
        self,
        body: dict[str, Any],
        svc: LLMService,
        rendered: Rendered,
        ray_service: dict[str, Any] | None,
        out: Outcome,
        read: Reader,
    ) -> dict[str, Any] | None:
        ns, owner = svc.metadata.namespace, owner_ref(body)
        desired = [o for o in rendered.kubernetes_objects() if self._served(o)]
        for obj in desired:
            obj["metadata"]["ownerReferences"] = [owner]
        self._edge_inputs(svc, rendered)
        if svc.spec.ray.auth == "token":
            self._ray_token(svc, owner, first=_never_reconciled(body), out=out)
        optional = [(api, kind, names.child(svc.metadata.name, suffix)) for api, kind, suffix in OPTIONAL_CHILDREN]
        # Observe: each child as it is now (the RayService was read already).
        live: dict[tuple[str, str], dict[str, Any] | None] = {}
        for obj in desired:
            kind, name = obj["kind"], obj["metadata"]["name"]
            live[kind, name] = ray_service if kind == "RayService" else read(obj["apiVersion"], kind, ns, name)
        for api, kind, name in optional:
            if (kind, name) not in live:
                live[kind, name] = read(api, kind, ns, name)
        # Decide (pure), then act.
        todo = plan(desired, live, optional, svc.metadata.name)
        for obj in todo.apply:
            applied = self.kube.apply(obj)
            metrics.WRITES.labels(obj["kind"]).inc()
            out.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
            if obj["kind"] == "RayService":
                ray_service = applied
            if obj is rendered.edge_config and live.get((obj["kind"], obj["metadata"]["name"])) is not None:
                self._refresh_edges(svc, applied["metadata"]["resourceVersion"], out)
        for api, kind, name in todo.delete:
            self.kube.delete(api, kind, ns, name)
            out.applied.append(f"-{kind}/{name}")
        if _has_cluster(ray_service):  # KubeRay makes the Service once it has a Ray cluster
            self._expose(svc, out)
            self._resize_clusters(ray_service, out)
        return ray_service

    def _resize_clusters(self, ray_service: dict[str, Any], out: Outcome) -> None:
        """The RayService's replica bounds on its running Ray clusters (KubeRay leaves them)."""
        status, ns = ray_service.get("status") or {}, ray_service["metadata"]["namespace"]
        for which in ("activeServiceStatus", "pendingServiceStatus"):
            name = (status.get(which) or {}).get("rayClusterName")
            cluster = self.kube.get("ray.io/v1", "RayCluster", ns, name) if name else None
            ops = bounds_patch(cluster, ray_service) if cluster else None
            if ops:
                self.kube.json_patch("ray.io/v1", "RayCluster", ns, name, ops)
                metrics.WRITES.labels("RayCluster").inc()
                out.applied.append(f"RayCluster/{name}")

    def _ray_token(self, svc: LLMService, owner: dict[str, Any], first: bool, out: Outcome) -> None:
        """The Ray cluster's token (ray.auth: token), generated once into a Secret the service
        owns; never rewritten, so the token outlives upgrades and operator restarts. A service
        never reconciled skips the GET: the create answers whether it exists."""
        ns, name = svc.metadata.namespace, names.ray_auth_secret(svc.metadata.name)
        if not first and self._references.get("Secret", ns, name) is not None:
            return
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": names.labels(svc.metadata.name),
                "ownerReferences": [owner],
            },
            "type": "Opaque",
            "stringData": {names.RAY_AUTH_TOKEN_KEY: secrets.token_hex(32)},
        }
        if self.kube.create(secret):
            metrics.WRITES.labels("Secret").inc()
            out.applied.append(f"Secret/{name}")

    def _edge_inputs(self, svc: LLMService, rendered: Rendered) -> None:
        """The versions of the Secrets the edge sidecar reads, named on its ConfigMap."""
        ns = svc.metadata.namespace
        used = edge.secret_inputs(svc) if rendered.edge_config else []
        versions = {
            name: ((self._references.get("Secret", ns, name) or {}).get("metadata") or {}).get("resourceVersion")
            for name in used
        }
        self.secret_watch.track((ns, svc.metadata.name), {(ns, n): v for n, v in versions.items()})
        if rendered.edge_config is not None:
            edge.name_inputs(rendered.edge_config, versions)

    def _refresh_edges(self, svc: LLMService, revision: str, out: Outcome) -> None:
        """The edge ConfigMap changed (limits, or a Secret it names): annotate the serving pods.
        The kubelet refreshes a pod's mounted ConfigMaps and Secrets when the pod changes
        (otherwise at its periodic sync, a minute or more later); the sidecar then reloads."""
        ns, name = svc.metadata.namespace, svc.metadata.name
        for pod in self.kube.list("v1", "Pod", ns, f"{keys.OWNER}={name}"):
            meta = pod["metadata"]
            has_edge = any(c["name"] == "edge" for c in pod["spec"]["containers"])
            if not has_edge or meta.get("deletionTimestamp") or pod.get("status", {}).get("phase") != "Running":
                continue
            if (meta.get("annotations") or {}).get(keys.EDGE_REVISION) == revision:
                continue
            patch = {"metadata": {"annotations": {keys.EDGE_REVISION: revision}}}
            try:
                self.kube.merge_patch("v1", "Pod", ns, meta["name"], patch)
            except NotFoundError:  # gone since the list: its successor mounts the new files
                continue
            metrics.WRITES.labels("Pod").inc()
            out.applied.append(f"Pod/{meta['name']}")

    def _expose(self, svc: LLMService, out: Outcome) -> None:
        """ingress.service on the Service KubeRay made from serveService: KubeRay writes a
        Service's spec only when traffic moves to a new Ray cluster, its annotations never."""
        ns, name = svc.metadata.namespace, svc.metadata.name
        live = self.kube.get("v1", "Service", ns, name)
        if live is None:
            return  # KubeRay creates it (from serveService, with the same exposure)
        meta, spec = exposure(svc.spec)
        patch = exposure_patch(live, meta.get("annotations", {}), spec)
        if patch is not None:
            self.kube.merge_patch("v1", "Service", ns, name, patch)
            metrics.WRITES.labels("Service").inc()
            out.applied.append(f"Service/{name}")

    def _served(self, obj: dict[str, Any]) -> bool:
        """Monitoring CRDs may be absent (no Prometheus operator / GMP): skip, say so once."""
        key = f"{obj['apiVersion']}/{obj['kind']}"
        if key in self._unserved:
            return False
        if obj["kind"] in ("PodMonitoring", "PodMonitor") and not self.kube.kind_served(obj["apiVersion"], obj["kind"]):
            log.warning("%s is not served by this cluster: metrics scraping objects are skipped", key)
            self._unserved.add(key)
            return False
        return True

    def _active_cluster(self, ray_service: dict[str, Any] | None) -> dict[str, Any] | None:
        """The RayCluster serving now: its own status counts ready workers. The RayService's copy
        of it is for display only; KubeRay does not rewrite the RayService when just that copy
        changes, so it stays at the count of when the app last changed (0 ready, seen live)."""
        active = ((ray_service or {}).get("status") or {}).get("activeServiceStatus") or {}
        name = active.get("rayClusterName")
        if not name:
            return None
        return self.kube.get("ray.io/v1", "RayCluster", ray_service["metadata"]["namespace"], name)

    def _write_status(
        self,
        body: dict[str, Any],
        svc: LLMService | None,
        ray_service: dict[str, Any] | None,
        out: Outcome,
        pools: PoolSync,
    ) -> None:
        previous = body.get("status") or {}
        generation = body["metadata"].get("generation", 0)
        if svc is None:
            new = status_mod.invalid(out.problems, generation, previous, _now())
        else:
            obs = status_mod.Observed(
                generation,
                ray_service,
                out.problems,
                pools.problems,
                pools.pools,
                self._active_cluster(ray_service),
                pools.progress,
            )
            new = status_mod.status(svc, obs, self.settings, previous, _now())
        out.phase, out.replicas = new["phase"], new.get("replicas") or {}
        if status_mod.without_times(new) == status_mod.without_times({k: previous.get(k) for k in new}):
            return
        self.kube.patch_status(body["metadata"]["namespace"], body["metadata"]["name"], merge_patch(previous, new))
        out.status_written = True
        if new["phase"] != previous.get("phase"):
            # The condition that explains the new phase becomes the Event.
            explains = {Phase.READY: Cond.READY, Phase.DEGRADED: Cond.DEGRADED}.get(new["phase"], Cond.PROGRESSING)
            cond = next(c for c in new["conditions"] if c["type"] == explains)
            message = cond["message"] or f"phase {previous.get('phase') or '-'} -> {new['phase']}"
            self.kube.event(body, "Warning" if new["phase"] == Phase.DEGRADED else "Normal", cond["reason"], message)
