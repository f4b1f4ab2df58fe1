"""`llmservice diff`: what applying an LLMService manifest would change in the cluster, object
by object, the way `kubectl diff` shows it.

It is the operator's own reconcile with a dry-run act: the LLMService is sent as a server-side
apply dry run (the API server merges, defaults and validates it, and stores nothing); the
result is observed and decided exactly as the operator would (`observe()`, `decide()`), with the
operator's settings read from its Deployment; each child it would apply is sent as a dry run too
and compared with the live one; creates, deletes, patches and the status it would write are
listed; what would block applying (a missing Secret) is reported. GKE node pools are not shown
(they are not Kubernetes objects; `llmservice render` prints them).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Any, Literal

from .. import FIELD_MANAGER, KIND
from ..api import LLMService
from ..settings import OperatorSettings
from ..yamlio import dump
from .decide import Actions, decide
from .kube import Kube
from .observe import Observed, observe

Action = Literal["create", "update", "delete", "patch"]
# Fields the API server or controllers keep that no apply changes: left out of the diff.
_META_NOISE = ("managedFields", "resourceVersion", "generation", "uid", "creationTimestamp", "selfLink")


@dataclass(frozen=True)
class Change:
    kind: str
    namespace: str
    name: str
    action: Action
    diff: str  # unified diff of the YAML, live -> applied
    what: str = ""  # a part of the object: "status"

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" + (f" ({self.what})" if self.what else "")


@dataclass(frozen=True)
class Preview:
    changes: list[Change]
    problems: list[str]  # what keeps the operator from applying the children


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


def _text(obj: Any) -> list[str]:
    return dump(obj).splitlines(keepends=True) if obj is not None else []


def _diff(before: Any, after: Any, ref: str) -> str:
    return "".join(difflib.unified_diff(_text(before), _text(after), f"live/{ref}", f"applied/{ref}"))


def _change(
    kind: str, ns: str, name: str, live: dict[str, Any] | None, applied: dict[str, Any] | None
) -> Change | None:
    text = _diff(_clean(live), _clean(applied), f"{kind}/{ns}/{name}")
    if not text:
        return None
    action: Action = "create" if live is None else "delete" if applied is None else "update"
    return Change(kind, ns, name, action, text)


def dry_run(kube: Kube, obs: Observed, actions: Actions) -> list[Change]:
    """What act() would write for `actions`, each child sent as a server-side apply dry run."""
    ns, out = obs.namespace, []
    for obj in actions.apply:
        kind, name = obj["kind"], obj["metadata"]["name"]
        applied = kube.apply(obj, field_manager=FIELD_MANAGER, dry_run=True)
        if (c := _change(kind, ns, name, obs.children.get((kind, name)), applied)) is not None:
            out.append(c)
    for obj in actions.create:  # the Ray token, made once; its value is never shown
        kind, name = obj["kind"], obj["metadata"]["name"]
        out.append(Change(kind, ns, name, "create", f"+++ applied/{kind}/{ns}/{name}\n+ (a new Ray token)\n"))
    for _, kind, name in actions.delete:
        live = obs.children.get((kind, name))
        out.append(Change(kind, ns, name, "delete", _diff(_clean(live), None, f"{kind}/{ns}/{name}")))
    for p in actions.patches:
        body = dump(p.body)
        out.append(Change(p.kind, ns, p.name, "patch", f"+++ patch ({p.type})/{p.kind}/{ns}/{p.name}\n{body}"))
    if actions.finalizers is not None:
        before = obs.body["metadata"].get("finalizers") or []
        text = _diff({"finalizers": before}, {"finalizers": actions.finalizers}, f"{KIND}/{ns}/{obs.name}")
        out.append(Change(KIND, ns, obs.name, "update", text, "finalizers"))
    if actions.status_patch is not None and actions.status is not None:
        new = actions.status.to_dict()
        text = _diff(obs.body.get("status") or {}, new, f"{KIND}/{ns}/{obs.name}/status")
        out.append(Change(KIND, ns, obs.name, "update", text, "status"))
    return out


def preview(
    kube: Kube, doc: dict[str, Any], svc: LLMService, settings: OperatorSettings, field_manager: str = "kubectl"
) -> Preview:
    """The changes applying `doc` (the LLMService `svc`, as written) would make: the
    LLMService itself (applied by `field_manager`), then what the operator would write."""
    ns, name = svc.metadata.namespace, svc.metadata.name
    live = kube.get_llmservice(ns, name)
    body = kube.apply({**doc, "metadata": {**doc["metadata"], "namespace": ns}}, field_manager=field_manager,
                      dry_run=True)  # fmt: skip
    changes = [c] if (c := _change(KIND, ns, name, live, body)) is not None else []
    if live is not None:  # the operator reconciles with the status it wrote
        body = {**body, "status": live.get("status") or {}}
    obs = observe(kube, body, references=lambda kind, ns_, ref: kube.get("v1", kind, ns_, ref))
    actions = decide(obs, settings, gke=settings.gke is not None)
    return Preview(changes + dry_run(kube, obs, actions), list(actions.problems))


def operator_environ(kube: Kube, namespace: str, deployment: str) -> dict[str, str] | None:
    """The LLMSERVICE_* variables of the operator's Deployment (plain values; those from
    Secrets or fields are not read), or None without such a Deployment."""
    found = kube.get("apps/v1", "Deployment", namespace, deployment)
    if found is None:
        return None
    containers = found["spec"]["template"]["spec"]["containers"]
    env = next((c.get("env") or [] for c in containers if c["name"] == "operator"), containers[0].get("env") or [])
    return {e["name"]: e["value"] for e in env if e["name"].startswith("LLMSERVICE_") and "value" in e}
