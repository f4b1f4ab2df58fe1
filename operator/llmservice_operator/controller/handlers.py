"""kopf wiring: which events lead to a reconcile. All decisions are in reconcile.py and render/.

Every handler is a plain event handler: kopf stores no state on the LLMService (no diff-base
annotations, no finalizer, no status.kopf), so a reconcile that finds nothing to change makes
no write at all. The reconcile is level-triggered, so handling each event is always safe.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
import urllib3
from google.api_core.exceptions import GoogleAPIError
from kubernetes.client.exceptions import ApiException

from .. import GROUP, PLURAL, VERSION
from .reconcile import Reconciler
from .retry import Retrier

MANAGED = {"app.kubernetes.io/managed-by": "llmservice-operator"}
OWNER_LABEL = "llmservice.dev/name"
log = logging.getLogger(__name__)

_reconciler: Reconciler | None = None
_retrier: Retrier | None = None


def install(reconciler: Reconciler) -> None:
    global _reconciler, _retrier
    _reconciler = reconciler
    s = reconciler.settings
    _retrier = Retrier(reconcile, problem_delay=s.retry_delay_seconds, max_delay=s.retry_max_delay_seconds)


def expected(e: BaseException) -> bool:
    """Errors of talking to an API that a later attempt may not meet: conflicts, throttling,
    server errors, timeouts, dropped connections. Anything else is a bug (ours or a library's)."""
    if isinstance(e, ApiException):  # also the dynamic client's DynamicApiError
        return e.status in (409, 429) or (e.status or 0) >= 500
    return isinstance(e, TimeoutError | ConnectionError | urllib3.exceptions.HTTPError | GoogleAPIError)


_unexpected: dict[tuple[str, str], str] = {}  # the last unexpected error per object, until it succeeds


def reconcile(namespace: str, name: str) -> None:
    """Reconcile now; on an API error or a missing reference, again later with backoff."""
    assert _reconciler is not None and _retrier is not None, "controller.handlers.install() first"
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
        _retrier.failed(namespace, name)
        return
    _unexpected.pop(key, None)
    if outcome is not None and outcome.busy:
        _retrier.waiting(namespace, name)  # poll the GKE operation again, with backoff
    elif outcome is not None and outcome.problems:
        # Missing Secrets/PVCs are not watched (that needs cluster-wide Secret access): retry.
        _retrier.blocked(namespace, name)
    else:
        _retrier.done(namespace, name)


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Events only for kopf's own warnings; the reconciler posts phase transitions.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]


@kopf.on.cleanup()
def _stop_retries(**_: Any) -> None:
    if _retrier is not None:
        _retrier.stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
def llmservice_event(namespace: str, name: str, **_: Any) -> None:
    reconcile(namespace, name)


@kopf.on.event("ray.io", "v1", "rayservices", labels=MANAGED)
@kopf.on.event("ray.io", "v1", "rayclusters", labels=MANAGED)  # KubeRay copies the RayService's labels
@kopf.on.event("v1", "configmaps", labels=MANAGED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
def child_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    """Status from KubeRay, a hand edit or a deletion of a child: reconcile its owner."""
    owner = labels.get(OWNER_LABEL)
    if owner:
        reconcile(namespace, owner)
