"""An in-memory Kubernetes API with the calls the controller makes (controller.observe.Reader and
controller.act.Writer), over a dict keyed by (kind, namespace, name). Writes are recorded in
order, as an audit log would show them, so a test can compare what the operator wrote with what
`llmservice diff` said it would write."""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import NotFoundError

Key = tuple[str, str, str]


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class DictKube:
    def __init__(self, *objects: dict[str, Any], served: bool = False):
        self.objects: dict[Key, dict[str, Any]] = {}
        for o in objects:
            self.objects[(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])] = copy.deepcopy(o)
        self.writes: list[str] = []  # "<verb> <Kind>/<name>[/<subresource>]", in order
        self.applied: list[str] = []  # "<Kind>/<name>" of applies and creates
        self.events: list[tuple[str, str, str]] = []
        self.patched: list[tuple[str, str, dict[str, Any]]] = []  # merge patches: (kind, name, patch)
        self.version = 100
        self.served = served  # whether the monitoring CRDs are served

    def _bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    # Reads
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    peek = get

    def get_llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("", "LLMService", namespace, name)

    def metadata(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.get(api_version, kind, namespace, name)
        return None if obj is None else {"metadata": obj["metadata"]}

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(self.objects.items())
            if k == kind
            and ns == namespace
            and all(o["metadata"].get("labels", {}).get(a) == b for a, b in wanted.items())
        ]

    def kind_served(self, api_version: str, kind: str) -> bool:
        return self.served or kind not in ("PodMonitoring", "PodMonitor")

    # Writes
    def apply(self, obj: dict[str, Any], field_manager: str = "", dry_run: bool = False) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        live = copy.deepcopy(self.objects.get(key) or {})
        new = copy.deepcopy(obj)
        new["metadata"] = {**live.get("metadata", {}), **new["metadata"]}
        if "status" in live:
            new["status"] = live["status"]
        if dry_run:
            return new
        self._bump(new)
        self.objects[key] = new
        self.writes.append(f"apply {obj['kind']}/{obj['metadata']['name']}")
        self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return copy.deepcopy(new)

    def create(self, obj: dict[str, Any]) -> bool:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            return False
        new = copy.deepcopy(obj)
        self._bump(new)
        self.objects[key] = new
        self.writes.append(f"create {obj['kind']}/{obj['metadata']['name']}")
        self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return True

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        if self.objects.pop((kind, namespace, name), None) is not None:
            self.writes.append(f"delete {kind}/{name}")

    def _live(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise NotFoundError(ApiException(status=404, reason="Not Found"))
        return obj

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        merge(self._live(kind, namespace, name), body)
        self._bump(self.objects[(kind, namespace, name)])
        self.patched.append((kind, name, body))
        self.writes.append(f"patch {kind}/{name}")

    def json_patch(
        self, api_version: str, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        obj = self._live(kind, namespace, name)
        for op in ops:
            if op["op"] == "replace":
                *parents, leaf = op["path"].strip("/").split("/")
                node: Any = obj
                for p in parents:
                    node = node[int(p)] if isinstance(node, list) else node[p]
                node[int(leaf) if isinstance(node, list) else leaf] = op["value"]
        self._bump(obj)
        self.writes.append(f"patch {kind}/{name}")
        return copy.deepcopy(obj)

    def set_finalizers(self, namespace: str, name: str, finalizers: list[str]) -> dict[str, Any]:
        obj = self._live("LLMService", namespace, name)
        obj["metadata"]["finalizers"] = list(finalizers)
        self.writes.append(f"patch LLMService/{name}")
        return copy.deepcopy(obj)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        obj = self._live("LLMService", namespace, name)
        obj["status"] = merge(obj.get("status") or {}, status)
        self.writes.append(f"patch LLMService/{name}/status")
        return copy.deepcopy(obj)

    def event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))
