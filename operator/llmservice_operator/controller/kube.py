"""The few API calls the controller makes, over the official kubernetes client."""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import logging
import threading
import time
from functools import cached_property
from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.discovery import LazyDiscoverer
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError, ResourceNotFoundError

from .. import FIELD_MANAGER, GROUP, KIND, VERSION

USER_AGENT = "llmservice-operator"
log = logging.getLogger(__name__)


class _InMemoryDiscoverer(LazyDiscoverer):
    """The library's discovery, not persisted: its default file in /tmp is shared by every
    process of the user on the host (a second operator replica, the CLI) and can be read
    half-written."""

    def _write_cache(self) -> None:
        pass


def _plain(_client: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The answer as the JSON dict it is: the dynamic client's ResourceInstance (a wrapper
    built field by field, then turned back into a dict) cost ~8% of the operator's CPU."""
    return data


class Kube:
    """Safe for kopf's handler threads: API discovery (which kind is served where) is resolved
    once per kind under a lock. The dynamic client's discovery cache is not thread-safe: one
    thread's refresh (after a lookup of a kind the server lacks) empties it while another
    writes into it, which raised KeyError('apis') and KeyError('api') under concurrent
    reconciles."""

    def __init__(self, api_client: client.ApiClient | None = None):
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        api_client.user_agent = USER_AGENT
        self.api = api_client
        self._lock = threading.Lock()
        self._resources: dict[tuple[str, str], Any] = {}
        self._unserved: dict[tuple[str, str], float] = {}  # kind -> when to ask again

    @cached_property
    def dynamic(self) -> DynamicClient:
        # No file: a path that does not exist makes the discoverer start empty every time.
        no_file = "/nonexistent/llmservice-discovery.json"
        return DynamicClient(self.api, cache_file=no_file, discoverer=_InMemoryDiscoverer)

    def _resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        with self._lock:
            if key not in self._resources:
                self._resources[key] = self.dynamic.resources.get(api_version=api_version, kind=kind)
            return self._resources[key]

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._resource(api_version, kind).get(name=name, namespace=namespace, serializer=_plain)
        except NotFoundError:
            return None

    def metadata(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object's metadata only (PartialObjectMetadata): of a Secret, never its data."""
        accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
        try:
            return self._resource(api_version, kind).get(
                name=name, namespace=namespace, header_params={"Accept": accept}, serializer=_plain
            )
        except NotFoundError:
            return None

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        res = self._resource(api_version, kind)
        return res.get(namespace=namespace, label_selector=label_selector, serializer=_plain)["items"]

    def peek(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """`get`, except that a cache (CachedKube) answers a miss with None instead of a GET:
        for objects that are most likely absent."""
        return self.get(api_version, kind, namespace, name)

    def get_llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(f"{GROUP}/{VERSION}", KIND, namespace, name)

    def apply(self, obj: dict[str, Any], field_manager: str = FIELD_MANAGER, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply as our field manager; force: the operator owns these fields. A dry
        run returns what the object would become, and stores nothing."""
        res = self._resource(obj["apiVersion"], obj["kind"])
        return res.server_side_apply(
            body=obj,
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=field_manager,
            force_conflicts=True,
            dry_run="All" if dry_run else None,
            serializer=_plain,
        )

    def create(self, obj: dict[str, Any]) -> bool:
        """Create `obj` unless an object of that name exists; whether it was created."""
        res = self._resource(obj["apiVersion"], obj["kind"])
        try:
            res.create(body=obj, namespace=obj["metadata"]["namespace"], serializer=_plain)
        except ConflictError:
            return False
        return True

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._resource(api_version, kind).delete(name=name, namespace=namespace)

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self._resource(api_version, kind).patch(
            body=body, name=name, namespace=namespace, content_type="application/merge-patch+json"
        )

    def json_patch(
        self, api_version: str, kind: str, namespace: str, name: str, ops: builtins.list[dict[str, Any]]
    ) -> dict[str, Any]:
        return self._resource(api_version, kind).patch(
            body=ops, name=name, namespace=namespace, content_type="application/json-patch+json", serializer=_plain
        )

    def set_finalizers(self, namespace: str, name: str, finalizers: builtins.list[str]) -> dict[str, Any]:
        res = self._resource(f"{GROUP}/{VERSION}", KIND)
        return res.patch(
            body={"metadata": {"finalizers": finalizers}},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            serializer=_plain,
        )

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        res = self._resource(f"{GROUP}/{VERSION}", KIND)
        return res.status.patch(
            body={"status": status},
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            serializer=_plain,
        )

    UNSERVED_TTL = 300.0  # a kind found missing is asked about again after this (a CRD installed later)

    def kind_served(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves this kind (the monitoring CRDs may be absent). A miss
        is remembered for a while: looking one up makes the client rediscover every API."""
        key = (api_version, kind)
        with self._lock:
            until = self._unserved.get(key)
        if until is not None and until > time.monotonic():
            return False
        try:
            self._resource(api_version, kind)
        except ResourceNotFoundError:
            if until is None:
                log.warning("%s/%s is not served by this cluster: those children are skipped", api_version, kind)
            with self._lock:
                self._unserved[key] = time.monotonic() + self.UNSERVED_TTL
            return False
        with self._lock:
            self._unserved.pop(key, None)
        return True

    def event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = owner["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
        }
        # The dynamic client, not CoreV1Api: that module and its models cost ~1 s of CPU and
        # megabytes of memory to import, for one call.
        self._resource("v1", "Event").create(body=body, namespace=meta["namespace"], serializer=_plain)
