"""kopf wiring: which events lead to a reconcile. All decisions are in reconcile.py and render/.

kopf delivers watch events; each one updates the watch-fed cache (cache.py) and, unless it
cannot change the outcome, adds its LLMService to the work queue (queue.py), which runs the
reconciles: one at a time per service, however many events arrive. No reconcile for:

- the echo of the operator's own write (the cache already holds that resourceVersion);
- a status-only update of a child whose status nothing reads (PodDisruptionBudget: the
  disruption controller rewrites it as pods come and go).

Every handler is a plain event handler: kopf stores no state on the LLMService (no diff-base
annotations, no finalizer, no status.kopf), so a reconcile that finds nothing to change makes
no write at all. Retries (API errors with backoff, missing references after a delay, GKE
states changing outside our own operations) go through the same queue, which holds them while
another replica leads (leader.py). GKE mutations wait in the cluster's operation queue
(gke/ops.py), which adds their service to this queue when they start and when they end.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

import kopf
import urllib3
from google.api_core.exceptions import GoogleAPIError
from kubernetes.client.exceptions import ApiException

from .. import GROUP, PLURAL, VERSION
from .. import labels as keys
from . import metrics
from .cache import Cache
from .leader import Leadership
from .queue import Requeue, WorkQueue
from .reconcile import Reconciler

MANAGED = {keys.MANAGED_BY: keys.MANAGER}
OWNER_LABEL = keys.OWNER
# Children whose status no reconcile reads: a status-only update of one changes nothing.
STATUS_UNREAD = {"PodDisruptionBudget"}
log = logging.getLogger(__name__)

_reconciler: Reconciler | None = None
_queue: WorkQueue | None = None
_cache: Cache | None = None
_leadership: Leadership | None = None


def install(
    reconciler: Reconciler, cache: Cache | None = None, leadership: Leadership | None = None, workers: int | None = None
) -> WorkQueue:
    global _reconciler, _queue, _cache, _leadership
    _reconciler, _cache, _leadership = reconciler, cache if cache is not None else Cache(), leadership
    active = leadership.active if leadership else lambda: True
    _queue = WorkQueue(
        _process,
        workers=workers or reconciler.settings.reconcile_workers,
        active=active,
        max_backoff=reconciler.settings.retry_max_delay_seconds,
    )
    if reconciler.node_pools is not None:  # GKE operations wake their service when they start and end
        reconciler.node_pools.bind(_queue.add, active)
    reconciler.secret_watch.bind(_queue.add, active)  # so do changed Secrets their pods read
    return _queue


def expected(e: BaseException) -> bool:
    """Errors of talking to an API that a later attempt may not meet: conflicts, throttling,
    server errors, timeouts, dropped connections. Anything else is a bug (ours or a library's)."""
    if isinstance(e, ApiException):  # also the dynamic client's DynamicApiError
        return e.status in (409, 429) or (e.status or 0) >= 500
    return isinstance(e, TimeoutError | ConnectionError | urllib3.exceptions.HTTPError | GoogleAPIError)


_unexpected: dict[Hashable, str] = {}  # the last unexpected error per object, until it succeeds


def reconcile_now(namespace: str, name: str) -> Requeue | None:
    """Reconcile one LLMService; what to do next: nothing, retry after a delay (a missing
    Secret or PVC, which is not watched) or with backoff (an API error, a GKE operation)."""
    assert _reconciler is not None, "controller.handlers.install() first"
    key = (namespace, name)
    try:
        outcome = _reconciler.reconcile(namespace, name)
    except Exception as e:  # retried with backoff, never dropped
        if expected(e):
            log.warning("reconcile %s/%s failed, will retry: %s", namespace, name, e)
        elif _unexpected.get(key) != repr(e):  # the traceback once; the retries in one line
            _unexpected[key] = repr(e)
            log.exception("reconcile %s/%s hit an unexpected error, will retry", namespace, name)
        else:
            log.warning("reconcile %s/%s failed again, will retry: %r", namespace, name, e)
        return Requeue(backoff=True)
    _unexpected.pop(key, None)
    if outcome is not None and outcome.busy:
        return Requeue(after=_reconciler.settings.gke_poll_seconds)  # look at GKE again
    if outcome is not None and outcome.problems:
        return Requeue(after=_reconciler.settings.retry_delay_seconds)
    return None


def _process(key: Hashable) -> Requeue | None:
    namespace, name = key  # type: ignore[misc]
    return reconcile_now(namespace, name)


def _same_but_status(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def core(obj: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}

    return core(old) == core(new)


def observe(event: dict[str, Any], owner: tuple[str, str]) -> str:
    """Feed one watch event to the cache and, if it may change the outcome, queue `owner`;
    returns what was done (also counted in llmservice_events_total)."""
    assert _cache is not None and _queue is not None, "controller.handlers.install() first"
    obj = event["object"]
    kind, meta = obj.get("kind", ""), obj.get("metadata", {})
    if event.get("type") == "DELETED":
        _cache.delete(kind, meta.get("namespace", ""), meta.get("name", ""))
        action = "queued"
    else:
        old, newer = _cache.put(obj, previous=kind in STATUS_UNREAD)  # only those are compared
        if not newer:
            action = "own-write"
        elif old is not None and kind in STATUS_UNREAD and _same_but_status(old, obj):
            action = "status-only"
        else:
            action = "queued"
    if action == "queued":
        _queue.add(owner)
    metrics.EVENTS.labels(kind, action).inc()
    return action


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf keeps the last-handled state of an object for change handlers; with only event
    handlers there is none to keep, yet kopf would deep-copy every event's body to build it
    (with the progress storage's clean-up, ~15% of the operator's CPU at fleet scale)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


class _NoProgress(kopf.ProgressStorage):
    """Nor per-handler progress: event handlers are not retried by kopf (our queue does it)."""

    def fetch(self, *, key: Any, body: kopf.Body) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        pass

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


_started = False


def started() -> bool:
    """kopf has run its start-up: it is about to watch (readiness, endpoints.py)."""
    return _started


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _started
    # Events only for kopf's own warnings; the reconciler posts phase transitions.
    settings.posting.level = logging.WARNING
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.persistence.progress_storage = _NoProgress()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    if _leadership is not None:
        _leadership.start()
    if _queue is not None:
        _queue.start()
    _started = True


@kopf.on.cleanup()
def _stop(**_: Any) -> None:
    if _queue is not None:
        _queue.stop()
    if _reconciler is not None and _reconciler.node_pools is not None:
        _reconciler.node_pools.stop()
    if _reconciler is not None:
        _reconciler.secret_watch.stop()
    if _leadership is not None:
        _leadership.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
def llmservice_event(event: dict[str, Any], namespace: str, name: str, **_: Any) -> None:
    observe(event, (namespace, name))


@kopf.on.event("ray.io", "v1", "rayservices", labels=MANAGED)
@kopf.on.event("ray.io", "v1", "rayclusters", labels=MANAGED)  # KubeRay copies the RayService's labels
@kopf.on.event("v1", "configmaps", labels=MANAGED)
@kopf.on.event("v1", "services", labels=MANAGED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)
def child_event(event: dict[str, Any], namespace: str, labels: dict[str, str], **_: Any) -> None:
    """Status from KubeRay, a hand edit or a deletion of a child: reconcile its owner."""
    owner = labels.get(OWNER_LABEL)
    if owner:
        observe(event, (namespace, owner))
