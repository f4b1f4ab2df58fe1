"""`llmservice diff`: what applying an LLMService manifest would change in the cluster, object
by object, the way `kubectl diff` shows it: each object the operator would write is sent as a
server-side apply dry run (the API server merges it, defaults it, runs admission and
validation, and stores nothing), and what comes back is compared with the live object.

The children are rendered here, as the operator would render them, with the operator's
settings read from its Deployment (images, monitoring): the same children the operator will
apply once the LLMService is applied. GKE node pools are not shown (they are not Kubernetes
objects; `llmservice render` prints them).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any, Literal

from .. import FIELD_MANAGER, KIND
from ..api import LLMService
from ..render import edge, names, render
from ..settings import OperatorSettings
from ..yamlio import dump
from .kube import Kube
from .reconcile import OPTIONAL_CHILDREN, owner_ref

Action = Literal["create", "update", "delete"]
# Fields the API server or controllers keep that no apply changes: left out of the diff.
_META_NOISE = ("managedFields", "resourceVersion", "generation", "uid", "creationTimestamp", "selfLink")


@dataclass(frozen=True)
class Change:
    kind: str
    namespace: str
    name: str
    action: Action
    diff: str  # unified diff of the YAML, live -> applied

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


def _clean(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    if obj is None:
        return None
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.get("metadata", {})
    for key in _META_NOISE:
        meta.pop(key, None)
    (meta.get("annotations") or {}).pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if not meta.get("annotations"):
        meta.pop("annotations", None)
    return out


def _diff(live: dict[str, Any] | None, applied: dict[str, Any] | None, ref: str) -> str:
    before = dump(_clean(live)).splitlines(keepends=True) if live is not None else []
    after = dump(_clean(applied)).splitlines(keepends=True) if applied is not None else []
    return "".join(difflib.unified_diff(before, after, f"live/{ref}", f"applied/{ref}"))


def _change(
    kind: str, ns: str, name: str, live: dict[str, Any] | None, applied: dict[str, Any] | None
) -> Change | None:
    ref = f"{kind}/{ns}/{name}"
    text = _diff(live, applied, ref)
    if not text:
        return None
    action: Action = "create" if live is None else "delete" if applied is None else "update"
    return Change(kind, ns, name, action, text)


def preview(
    kube: Kube, doc: dict[str, Any], svc: LLMService, settings: OperatorSettings, field_manager: str = "kubectl"
) -> list[Change]:
    """The changes applying `doc` (the LLMService `svc`, as written) would make: the
    LLMService itself (applied by `field_manager`), then each child the operator would apply,
    create or delete."""
    ns, name = svc.metadata.namespace, svc.metadata.name
    out: list[Change] = []
    live_svc = kube.get_llmservice(ns, name)
    applied_svc = kube.apply({**doc, "metadata": {**doc["metadata"], "namespace": ns}},
                             field_manager=field_manager, dry_run=True)  # fmt: skip
    if (c := _change(KIND, ns, name, live_svc, applied_svc)) is not None:
        out.append(c)
    rendered = render(svc, settings)
    owner = owner_ref(live_svc or applied_svc)
    versions = {}
    for secret in edge.secret_inputs(svc):
        found = kube.metadata("v1", "Secret", ns, secret)
        versions[secret] = ((found or {}).get("metadata") or {}).get("resourceVersion")
    if rendered.edge_config is not None:
        edge.name_inputs(rendered.edge_config, versions)
    desired = rendered.kubernetes_objects()
    for obj in desired:
        if obj["kind"] in ("PodMonitoring", "PodMonitor") and not kube.kind_served(obj["apiVersion"], obj["kind"]):
            continue  # the operator skips these too where the API is not served
        obj["metadata"]["ownerReferences"] = [owner]
        live = kube.get(obj["apiVersion"], obj["kind"], ns, obj["metadata"]["name"])
        applied = kube.apply(obj, field_manager=FIELD_MANAGER, dry_run=True)
        if (c := _change(obj["kind"], ns, obj["metadata"]["name"], live, applied)) is not None:
            out.append(c)
    if svc.spec.ray.auth == "token" and kube.metadata("v1", "Secret", ns, names.ray_auth_secret(name)) is None:
        secret = names.ray_auth_secret(name)  # made once by the operator; its token is never shown
        out.append(Change("Secret", ns, secret, "create", f"+++ applied/Secret/{ns}/{secret}\n+ (a new Ray token)\n"))
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    for api, kind, suffix in OPTIONAL_CHILDREN:
        child = names.child(name, suffix)
        live = kube.get(api, kind, ns, child) if (kind, child) not in wanted else None
        owners = ((live or {}).get("metadata") or {}).get("ownerReferences") or []
        if live is not None and any(o.get("kind") == KIND and o.get("name") == name for o in owners):
            out.append(Change(kind, ns, child, "delete", _diff(live, None, f"{kind}/{ns}/{child}")))
    return out


def operator_environ(kube: Kube, namespace: str, deployment: str) -> dict[str, str] | None:
    """The LLMSERVICE_* variables of the operator's Deployment (plain values; those from
    Secrets or fields are not read), or None without such a Deployment."""
    found = kube.get("apps/v1", "Deployment", namespace, deployment)
    if found is None:
        return None
    containers = found["spec"]["template"]["spec"]["containers"]
    env = next((c.get("env") or [] for c in containers if c["name"] == "operator"), containers[0].get("env") or [])
    return {e["name"]: e["value"] for e in env if e["name"].startswith("LLMSERVICE_") and "value" in e}
