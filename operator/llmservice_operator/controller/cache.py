"""Watch-fed copies of the objects reconciles read: the LLMServices and their children.

An informer cache, fed by the kopf watch events the operator receives anyway: a reconcile
reads these from memory instead of GETting each of them from the API server. The operator's
own writes go in too (write-through), so the watch event that echoes a write finds the same
resourceVersion and is recognised as nothing new. Secrets, PVCs and ServiceAccounts are not
cached: they are read by name when a reconcile needs them, so the operator needs no list or
watch on Secrets and never holds their data.

Deleted objects leave the cache with their DELETED event: nothing outlives its object.

Each object is held as one compact JSON string, decoded on read: a parsed object is a tree of
small dicts and strings several times its JSON size, and those small allocations, spread over
the allocator's pages between short-lived ones, kept the operator's memory at the largest fleet
it had seen. One large allocation per object is freed whole when the object goes.
"""

from __future__ import annotations

import builtins
import json
import threading
from typing import Any

from .. import FIELD_MANAGER, GROUP, KIND, VERSION
from .. import labels as keys
from ..render import children as ck
from . import memory
from .kube import Kube

Key = tuple[str, str, str]  # (kind, namespace, name)
# What the watches feed: the kinds the controller reads and the handlers watch.
WATCHED = {(f"{GROUP}/{VERSION}", KIND)} | {(k.api_version, k.kind) for k in ck.WATCHED}


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


# Kinds whose status alone is read (the serving RayCluster's ready workers): their spec, a copy
# of the RayService's pod templates, is not kept (but for the worker groups' sizes).
STATUS_ONLY = {k.kind for k in ck.KINDS if k.status_only}
GROUP_SIZE = ("groupName", "replicas", "minReplicas", "maxReplicas")
# Of a pod: what says where it stands (scheduling, readiness) and what it mounts; not its
# containers' specs (their env, probes, commands), which are the RayService's.
POD_META = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "creationTimestamp",
            "deletionTimestamp", "ownerReferences")  # fmt: skip


def _slim_pod(obj: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": "Pod",
        "metadata": {k: meta[k] for k in POD_META if k in meta},
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": [{"name": c.get("name")} for c in spec.get("containers") or []],
            "volumes": [v for v in spec.get("volumes") or [] if "configMap" in v or "secret" in v],
        },
        "status": {k: v for k, v in (obj.get("status") or {}).items() if k in ("phase", "conditions", "podIP")}
        | {"containerStatuses": [_started(c) for c in (obj.get("status") or {}).get("containerStatuses") or []]},
    }


def _started(container: dict[str, Any]) -> dict[str, Any]:
    """A container's status as far as status.startup reads it: when it started running."""
    running = (container.get("state") or {}).get("running")
    state = {"running": {"startedAt": running.get("startedAt")}} if running else {}
    return {"name": container.get("name"), "state": state}


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What reconciles read, without what they never do: managedFields (often the larger part
    of a small object) and, for STATUS_ONLY kinds, the spec. A copy: the watch event's dict
    is kopf's."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "managedFields"}
    if obj.get("kind") == "Pod":
        return _slim_pod(obj, meta)
    if obj.get("kind") in STATUS_ONLY:
        slim = {k: obj[k] for k in ("apiVersion", "kind", "status") if k in obj} | {"metadata": meta}
        # ...and the worker groups' sizes, which the operator keeps in line with the spec.
        groups = (obj.get("spec") or {}).get("workerGroupSpecs") or []
        slim["spec"] = {"workerGroupSpecs": [{k: g[k] for k in GROUP_SIZE if k in g} for g in groups]}
        return slim
    return {**obj, "metadata": meta}


def _version(obj: dict[str, Any]) -> int:
    # resourceVersions are opaque, but etcd's are increasing integers: an older copy (an event
    # that arrives after our own write's answer) must not replace a newer one.
    rv = (obj.get("metadata") or {}).get("resourceVersion") or ""
    return int(rv) if rv.isdigit() else -1


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _owner(obj: dict[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(keys.OWNER)


class Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, tuple[int, str]] = {}  # (resourceVersion, compact JSON)
        self._peak = 0  # the most objects held since memory was last released
        # (kind, namespace, owner) -> names: the pods of a service, without a scan of all pods.
        self._by_owner: dict[tuple[str, str, str], set[str]] = {}
        self._owner_of: dict[Key, tuple[str, str, str]] = {}

    def list(self, kind: str, namespace: str, owner: str) -> list[dict[str, Any]]:
        """The objects of `kind` labelled as `owner`'s (llmservice.dev/name)."""
        with self._lock:
            held = [self._objects.get((kind, namespace, n)) for n in self._by_owner.get((kind, namespace, owner), ())]
        return [json.loads(h[1]) for h in held if h]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            held = self._objects.get((kind, namespace, name))
        return json.loads(held[1]) if held else None  # a fresh copy: callers may change it

    def put(self, obj: dict[str, Any], previous: bool = False) -> tuple[dict[str, Any] | None, bool]:
        """Store a watched or just-written object; returns (the previous copy if `previous`
        and this one replaces it, whether this one is newer). Not newer: our own write's echo,
        a relist, or an old event. The previous copy is decoded only when asked for."""
        key, version = _key(obj), _version(obj)
        with self._lock:
            old = self._objects.get(key)
            newer = old is None or version > old[0]
            if newer:  # an echo of our own write (most events) is not encoded again
                self._objects[key] = (version, _encode(_slim(obj)))
                self._peak = max(self._peak, len(self._objects))
                owner = _owner(obj)
                if owner is not None and key[0] == "Pod" and key not in self._owner_of:
                    self._owner_of[key] = (key[0], key[1], owner)
                    self._by_owner.setdefault(self._owner_of[key], set()).add(key[2])
        return (json.loads(old[1]) if previous and old and newer else None), newer

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((kind, namespace, name), None)
            owned = self._owner_of.pop((kind, namespace, name), None)
            if owned is not None:
                self._by_owner[owned].discard(name)
                if not self._by_owner[owned]:
                    del self._by_owner[owned]
            halved = self._peak >= 64 and len(self._objects) <= self._peak // 2
            if halved:
                self._peak = len(self._objects)
        if halved:  # a mass deletion: give the memory back instead of keeping the high-water mark
            memory.release()

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


class CachedKube(Kube):
    """Kube whose reads of watched kinds come from the cache (a miss, such as an object the
    watch has not delivered yet, is read from the API server and kept), and whose writes
    refresh it."""

    def __init__(self, kube: Kube, cache: Cache):
        self.__dict__.update(kube.__dict__)  # the same client, discovery and lock
        self.cache = cache

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if (api_version, kind) not in WATCHED:
            return super().get(api_version, kind, namespace, name)
        found = self.cache.get(kind, namespace, name)
        if found is None:
            found = super().get(api_version, kind, namespace, name)
            if found is not None:
                self.cache.put(found)
        return found

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Pods of a service (`llmservice.dev/name=<service>`) from the cache: the watch
        delivers every one of them (by the operator's labels); other lists ask the API server."""
        key, _, owner = label_selector.partition("=")
        if kind == "Pod" and key == keys.OWNER and "," not in owner:
            return self.cache.list(kind, namespace, owner)
        return super().list(api_version, kind, namespace, label_selector)

    def peek(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if (api_version, kind) not in WATCHED:
            return super().get(api_version, kind, namespace, name)
        return self.cache.get(kind, namespace, name)

    def apply(self, obj: dict[str, Any], field_manager: str = FIELD_MANAGER, dry_run: bool = False) -> dict[str, Any]:
        live = super().apply(obj, field_manager, dry_run)
        if (obj["apiVersion"], obj["kind"]) in WATCHED and not dry_run:
            self.cache.put(live)
        return live

    def json_patch(
        self, api_version: str, kind: str, namespace: str, name: str, ops: builtins.list[dict[str, Any]]
    ) -> dict[str, Any]:
        live = super().json_patch(api_version, kind, namespace, name, ops)
        if (api_version, kind) in WATCHED:
            self.cache.put(live)
        return live

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        live = super().patch_status(namespace, name, status)
        self.cache.put(live)
        return live

    def set_finalizers(self, namespace: str, name: str, finalizers: builtins.list[str]) -> dict[str, Any]:
        live = super().set_finalizers(namespace, name, finalizers)
        self.cache.put(live)
        return live

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        super().delete(api_version, kind, namespace, name)
        self.cache.delete(kind, namespace, name)
