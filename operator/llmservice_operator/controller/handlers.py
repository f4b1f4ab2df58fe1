"""kopf wiring: which events lead to a reconcile. All decisions are in decide.py and render/.

One Controller object holds what the operator runs on (the reconciler, the work queue, the
watch-fed cache, the leadership): it lives in kopf's `memo`, is started by kopf's startup and
stopped by its cleanup, and registers its handlers in a registry of its own, so two can run in
one process (tests do). No module state.

kopf delivers watch events; each one updates the cache (cache.py) and, unless it cannot change
the outcome, adds its LLMService to the work queue (queue.py), which runs the reconciles: one at
a time per service, however many events arrive. No reconcile for:

- the echo of the operator's own write (the cache already holds that resourceVersion);
- a status-only update of a child whose status nothing reads (PodDisruptionBudget: the
  disruption controller rewrites it as pods come and go).

Every handler is a plain event handler: kopf stores no state on the LLMService (no diff-base
annotations, no finalizer, no status.kopf), so a reconcile that finds nothing to change makes
no write at all. Retries (API errors with backoff, missing references after a delay, GKE
states changing outside our own operations) go through the same queue, which holds them while
another replica leads (leader.py). GKE mutations wait in the cluster's operation queue
(gke/ops.py), which adds their service to this queue when they start and when they end. The
watched kinds, and which statuses matter, come from the child registry (render/children.py).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any

import kopf
import urllib3
from google.api_core.exceptions import GoogleAPIError
from kubernetes.client.exceptions import ApiException

from .. import GROUP, PLURAL, VERSION
from .. import labels as keys
from ..render import children as ck
from . import metrics
from .cache import Cache
from .leader import Leadership
from .queue import Requeue, WorkQueue
from .reconcile import Reconciler

MANAGED = {keys.MANAGED_BY: keys.MANAGER}
# Children whose status no reconcile reads: a status-only update of one changes nothing.
STATUS_UNREAD = frozenset(k.kind for k in ck.KINDS if not k.status_read)
log = logging.getLogger(__name__)


def expected(e: BaseException) -> bool:
    """Errors of talking to an API that a later attempt may not meet: conflicts, throttling,
    server errors, timeouts, dropped connections. Anything else is a bug (ours or a library's)."""
    if isinstance(e, ApiException):  # also the dynamic client's DynamicApiError
        return e.status in (409, 429) or (e.status or 0) >= 500
    return isinstance(e, TimeoutError | ConnectionError | urllib3.exceptions.HTTPError | GoogleAPIError)


def _same_but_status(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def core(obj: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}

    return core(old) == core(new)


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


class Controller:
    def __init__(
        self,
        reconciler: Reconciler,
        cache: Cache | None = None,
        leadership: Leadership | None = None,
        workers: int | None = None,
    ):
        self.reconciler = reconciler
        self.cache = cache if cache is not None else Cache()
        self.leadership = leadership
        active = leadership.active if leadership else lambda: True
        self.queue = WorkQueue(
            self._process,
            workers=workers or reconciler.settings.reconcile_workers,
            active=active,
            max_backoff=reconciler.settings.retry_max_delay_seconds,
        )
        if reconciler.node_pools is not None:  # GKE operations wake their service when they start and end
            reconciler.node_pools.bind(self.queue.add, active)
        reconciler.secret_watch.bind(self.queue.add, active)  # so do changed Secrets their pods read
        self._unexpected: dict[Hashable, str] = {}  # the last unexpected error per object, until it succeeds
        self.started = False  # kopf has run its start-up: it is about to watch (readiness, endpoints.py)

    def start(self) -> None:
        if self.leadership is not None:
            self.leadership.start()
        self.queue.start()
        self.started = True

    def stop(self) -> None:
        self.queue.stop()
        if self.reconciler.node_pools is not None:
            self.reconciler.node_pools.stop()
        self.reconciler.secret_watch.stop()
        if self.leadership is not None:
            self.leadership.stop()

    def reconcile_now(self, namespace: str, name: str) -> Requeue | None:
        """Reconcile one LLMService; what to do next: nothing, retry after a delay (a missing
        Secret or PVC, which is not watched) or with backoff (an API error, a GKE operation)."""
        key = (namespace, name)
        try:
            outcome = self.reconciler.reconcile(namespace, name)
        except Exception as e:  # retried with backoff, never dropped
            if expected(e):
                log.warning("reconcile %s/%s failed, will retry: %s", namespace, name, e)
            elif self._unexpected.get(key) != repr(e):  # the traceback once; the retries in one line
                self._unexpected[key] = repr(e)
                log.exception("reconcile %s/%s hit an unexpected error, will retry", namespace, name)
            else:
                log.warning("reconcile %s/%s failed again, will retry: %r", namespace, name, e)
            return Requeue(backoff=True)
        self._unexpected.pop(key, None)
        if outcome is None:
            return None
        if outcome.busy:
            return Requeue(after=self.reconciler.settings.gke_poll_seconds)  # look at GKE again
        if outcome.requeue_after is not None:
            return Requeue(after=outcome.requeue_after)
        if outcome.refused:
            return Requeue(backoff=True)  # the same write again, less and less often
        return None

    def _process(self, key: Hashable) -> Requeue | None:
        assert isinstance(key, tuple), key  # the queue holds (namespace, name)
        return self.reconcile_now(*key)

    def observe(self, event: dict[str, Any], owner: tuple[str, str]) -> str:
        """Feed one watch event to the cache and, if it may change the outcome, queue `owner`;
        returns what was done (also counted in llmservice_events_total)."""
        obj = event["object"]
        kind, meta = obj.get("kind", ""), obj.get("metadata", {})
        if event.get("type") == "DELETED":
            self.cache.delete(kind, meta.get("namespace", ""), meta.get("name", ""))
            action = "queued"
        else:
            old, newer = self.cache.put(obj, previous=kind in STATUS_UNREAD)  # only those are compared
            if not newer:
                action = "own-write"
            elif old is not None and kind in STATUS_UNREAD and _same_but_status(old, obj):
                action = "status-only"
            else:
                action = "queued"
        if action == "queued":
            self.queue.add(owner)
        metrics.EVENTS.labels(kind, action).inc()
        return action

    def registry(self) -> kopf.OperatorRegistry:
        """kopf handlers bound to this controller: start-up, clean-up, and one event handler
        per watched kind (the LLMServices, and every child kind the registry marks watched)."""
        reg = kopf.OperatorRegistry()

        @kopf.on.login(registry=reg)  # what kopf's default registry would do: the kubernetes client's config
        def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            return kopf.login_via_client(**kwargs)

        @kopf.on.startup(registry=reg)
        def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
            # Events only for kopf's own warnings; the reconciler posts phase transitions.
            settings.posting.level = logging.WARNING
            settings.persistence.diffbase_storage = _NoDiffBase()
            settings.persistence.progress_storage = _NoProgress()
            settings.watching.server_timeout = 300
            settings.watching.client_timeout = 330
            settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
            self.start()

        @kopf.on.cleanup(registry=reg)
        def _cleanup(**_: Any) -> None:
            self.stop()

        @kopf.on.event(GROUP, VERSION, PLURAL, registry=reg)
        def _llmservice(event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
            self.observe(dict(event), (namespace or "", name))

        def _child(event: kopf.RawEvent, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
            """Status from KubeRay or the kubelet, a hand edit or a deletion of a child:
            reconcile its owner. (KubeRay copies the RayService's labels to its RayCluster
            and the pod templates carry them.)"""
            owner = labels.get(keys.OWNER)
            if owner:
                self.observe(dict(event), (namespace or "", owner))

        for kind in ck.WATCHED:
            on = kopf.on.event(group=kind.group, version=kind.version, plural=kind.plural, labels=MANAGED, registry=reg)
            on(_child)
        return reg
