"""Act: write what decide() returned, in order, and nothing else.

Applies (server-side, our field manager), creates, deletes, then the patches that depend on
them, the finalizers, the status (only when it changed) and its Events. A child write the API
server refuses (403 from the operator's role, 400/422 from an admission policy) does not stop
the others: it is reported, in the server's words, for the next decide() to tell in the status.
GKE node pools go to their own asynchronous queue (gke.NodePools), which wakes the service when
an operation starts and ends; what it reports is GKE's view for the next reconcile.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes.dynamic.exceptions import BadRequestError, ForbiddenError, NotFoundError, UnprocessibleEntityError

from ..gke import NodePools, PoolSync
from ..render import names
from . import metrics
from .decide import FINALIZER, Actions
from .observe import Observed


class Writer(Protocol):
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    def create(self, obj: dict[str, Any]) -> bool: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None: ...

    def json_patch(
        self, api_version: str, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]: ...

    def set_finalizers(self, namespace: str, name: str, finalizers: list[str]) -> Any: ...

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> Any: ...

    def event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None: ...


@dataclass
class Acted:
    written: list[str] = field(default_factory=list)  # "Kind/name", "-Kind/name" for deletions
    status_written: bool = False
    pools: PoolSync | None = None  # what GKE's layer reported now
    pool_poll: bool = False  # GKE changes something no queued operation of ours covers: look again
    refused: list[str] = field(default_factory=list)  # child writes the API server refused, in its words


# The API server's "no" to a write: retrying the same write gets the same answer until a person
# changes the role or the policy, so it is told, not only retried.
REFUSED = (ForbiddenError, BadRequestError, UnprocessibleEntityError)


def refusal(verb: str, kind: str, name: str, e: Exception) -> str:
    """`delete RayService tiny: <the API server's message>`."""
    body = getattr(e, "body", None)
    try:
        message = json.loads(body)["message"] if body else str(e)
    except (ValueError, KeyError, TypeError):
        message = str(body)
    return f"{verb} {kind} {name}: {message}"


def act(kube: Writer, obs: Observed, actions: Actions, node_pools: NodePools | None = None) -> Acted:
    ns, name = obs.namespace, obs.name
    out = Acted()
    for obj in actions.apply:
        kind, child = obj["kind"], obj["metadata"]["name"]
        try:
            kube.apply(obj)
        except REFUSED as e:
            out.refused.append(refusal("apply", kind, child, e))
            continue
        metrics.WRITES.labels(kind).inc()
        out.written.append(f"{kind}/{child}")
    for obj in actions.create:
        kind, child = obj["kind"], obj["metadata"]["name"]
        if kind == "Secret" and child == names.ray_auth_secret(name):
            obj = {**obj, "stringData": {names.RAY_AUTH_TOKEN_KEY: secrets.token_hex(32)}}
        try:
            made = kube.create(obj)
        except REFUSED as e:
            out.refused.append(refusal("create", kind, child, e))
            continue
        if made:
            metrics.WRITES.labels(kind).inc()
            out.written.append(f"{kind}/{child}")
    for api_version, kind, child in actions.delete:
        try:
            kube.delete(api_version, kind, ns, child)
        except REFUSED as e:
            out.refused.append(refusal("delete", kind, child, e))
            continue
        out.written.append(f"-{kind}/{child}")
    for p in actions.patches:
        try:
            if p.type == "json":
                kube.json_patch(p.api_version, p.kind, ns, p.name, p.body)
            else:
                kube.merge_patch(p.api_version, p.kind, ns, p.name, p.body)
        except NotFoundError:  # gone since it was observed (a pod replaced): nothing to patch
            continue
        except REFUSED as e:
            out.refused.append(refusal("patch", p.kind, p.name, e))
            continue
        metrics.WRITES.labels(p.kind).inc()
        out.written.append(f"{p.kind}/{p.name}")
    if actions.finalizers is not None:  # before GKE creates a pool the deletion must wait for
        kube.set_finalizers(ns, name, actions.finalizers)
    if actions.pools is not None:
        _pools(kube, obs, actions, node_pools, out)
    if actions.status_patch is not None:
        kube.patch_status(ns, name, actions.status_patch)
        out.status_written = True
        for ev in actions.events:
            kube.event(obs.body, ev.type, ev.reason, ev.message)
    return out


def _pools(kube: Writer, obs: Observed, actions: Actions, node_pools: NodePools | None, out: Acted) -> None:
    request, owner = actions.pools, (obs.namespace, obs.name)
    assert request is not None
    if request.delete:
        if node_pools is not None:
            out.pools = sync = node_pools.delete_owned(owner)
            out.pool_poll = sync.busy and not sync.queued
            if sync.busy or sync.problems:
                return
        # Released also when the pools were already gone (or GKE was never configured).
        if actions.release_finalizer_when_pools_gone:
            have = obs.body["metadata"].get("finalizers") or []
            kube.set_finalizers(obs.namespace, obs.name, [f for f in have if f != FINALIZER])
        return
    if node_pools is None:
        return
    out.pools = sync = node_pools.sync(owner, request.desired, request.policies, hold_replaced=request.hold_replaced)
    out.pool_poll = sync.busy and not sync.queued  # queued: the GKE queue wakes the service
