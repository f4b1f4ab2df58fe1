"""Observe: everything one reconcile decides from, read first and frozen.

The snapshot holds the LLMService (as read and as parsed), the objects its spec references,
the RayService with its active and pending RayClusters, every child slot's live object, the
service's Ray pods, KubeRay's serve Service, GKE's view of its node pools and the root causes of
replicas that failed to start. `decide()` takes nothing else (besides the operator's settings),
so it is pure; a dict-backed fake of `Reader` is all a unit test needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import labels as keys
from ..api import InvalidLLMService, LLMService, parse
from ..gke import PoolSync
from ..render import slot_kinds
from ..render.plan import ChildNames
from . import preflight
from .rootcause import RootCause

Key = tuple[str, str]  # (kind, name) in the service's namespace


class Reader(Protocol):
    """The reads observe makes (controller.kube.Kube, its watch-fed cache, or a test's dict)."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def peek(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    def kind_served(self, api_version: str, kind: str) -> bool: ...


@dataclass(frozen=True)
class Observed:
    namespace: str
    name: str
    body: dict[str, Any]  # the LLMService as read
    svc: LLMService | None  # parsed; None when the renderer's own rules reject it
    invalid: tuple[str, ...] = ()  # those rules' errors, with field paths
    first: bool = False  # never reconciled: its children most likely do not exist yet
    references: Mapping[Key, dict[str, Any] | None] = field(default_factory=dict)  # Secrets (key names), SA, PVC
    ray_service: dict[str, Any] | None = None
    clusters: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # the active and pending RayClusters
    children: Mapping[Key, dict[str, Any] | None] = field(default_factory=dict)  # every served child slot
    unserved: frozenset[str] = frozenset()  # child kinds whose API the cluster lacks (monitoring CRDs)
    serve_service: dict[str, Any] | None = None  # KubeRay's Service clients call
    pods: tuple[dict[str, Any], ...] = ()  # the service's Ray pods
    pools: PoolSync | None = None  # GKE's view of the service's node pools (as last synced)
    root_causes: Mapping[str, RootCause] = field(default_factory=dict)  # Serve deployment -> why it fails
    engine_steps: Mapping[str, str] = field(default_factory=dict)  # the starting replica's engine: step -> time
    refused: tuple[str, ...] = ()  # the writes the API server refused at the last reconcile, in its words
    now: str = ""  # RFC 3339, for lastTransitionTime

    @property
    def deleting(self) -> bool:
        return bool(self.body["metadata"].get("deletionTimestamp"))

    @property
    def generation(self) -> int:
        return int(self.body["metadata"].get("generation", 0))

    def cluster(self, which: str) -> dict[str, Any] | None:
        """The RayCluster KubeRay reports as `which` (activeServiceStatus, pendingServiceStatus)."""
        name = (((self.ray_service or {}).get("status") or {}).get(which) or {}).get("rayClusterName")
        return self.clusters.get(name) if name else None


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def never_reconciled(body: dict[str, Any]) -> bool:
    """No status written yet: the service's children most likely do not exist."""
    return "observedGeneration" not in (body.get("status") or {})


def cluster_names(ray_service: dict[str, Any] | None) -> list[str]:
    status = (ray_service or {}).get("status") or {}
    names = [(status.get(k) or {}).get("rayClusterName") for k in ("activeServiceStatus", "pendingServiceStatus")]
    return [n for n in names if n]


def observe(
    kube: Reader,
    body: dict[str, Any],
    *,
    references: preflight.Getter,
    pools: PoolSync | None = None,
    root_causes: Any = None,
    refused: tuple[str, ...] = (),
    clock: Any = now,
) -> Observed:
    """The snapshot of one LLMService (`body`, as just read). `references` reads what the spec
    names (controller.preflight.References: recently found ones are remembered); `root_causes`
    (controller.rootcause.RootCauses) reads failing replicas' logs; `pools` is GKE's view;
    `refused`, the writes the last act() had refused."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    base = {"namespace": ns, "name": name, "body": body, "now": clock()}
    if meta.get("deletionTimestamp"):
        return Observed(svc=None, **base)
    svc: LLMService | None = None
    invalid: tuple[str, ...] = ()
    try:
        svc = parse(body)
    except InvalidLLMService as e:  # rules CEL cannot express (engine.extraArgs)
        invalid = tuple(str(x) for x in e.errors)
    first = never_reconciled(body)
    # A service never reconciled has no children yet: a cache miss is not asked again of the
    # API server (if a same-named predecessor left some, server-side apply rewrites them).
    read = kube.peek if first else kube.get
    rs = read("ray.io/v1", "RayService", ns, name)
    if svc is None:
        return Observed(svc=None, invalid=invalid, first=first, ray_service=rs, **base)
    refs: dict[Key, dict[str, Any] | None] = {
        (kind, ref): references(kind, ns, ref) for kind, ref in preflight.referenced(svc)
    }
    if svc.spec.ray.auth == "token" and not first:  # made once by the operator; a create answers the first time
        secret = ChildNames.of(name).ray_auth
        refs[("Secret", secret)] = references("Secret", ns, secret)
    clusters = {n: c for n in cluster_names(rs) if (c := kube.get("ray.io/v1", "RayCluster", ns, n)) is not None}
    children: dict[Key, dict[str, Any] | None] = {("RayService", name): rs}
    unserved: set[str] = set()
    for kind, child in slot_kinds(ChildNames.of(name)):
        if not kind.watched and not kube.kind_served(kind.api_version, kind.kind):
            unserved.add(kind.kind)
            continue
        if (kind.kind, child) not in children:
            children[(kind.kind, child)] = read(kind.api_version, kind.kind, ns, child)
    # KubeRay makes the serve Service once it has a Ray cluster.
    serve = kube.get("v1", "Service", ns, name) if cluster_names(rs) else None
    pods = tuple(kube.list("v1", "Pod", ns, f"{keys.OWNER}={name}")) if rs is not None else ()
    causes = root_causes.find(svc, rs, pods) if root_causes is not None and rs is not None else {}
    engine = root_causes.engine_steps(svc, rs, pods) if root_causes is not None and rs is not None else {}
    return Observed(
        svc=svc,
        first=first,
        references=refs,
        ray_service=rs,
        clusters=clusters,
        children=children,
        unserved=frozenset(unserved),
        serve_service=serve,
        pods=pods,
        pools=pools,
        root_causes=causes,
        engine_steps=engine,
        refused=refused,
        **base,
    )
