"""kopf wiring: which events lead to a reconcile. All decisions are in reconcile.py and render/.

Every handler is a plain event handler: kopf stores no state on the LLMService (no diff-base
annotations, no finalizer, no status.kopf), so a reconcile that finds nothing to change makes
no write at all. The reconcile is level-triggered, so handling each event is always safe.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

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
    _retrier = Retrier(reconcile, problem_delay=reconciler.settings.retry_delay_seconds)


def reconcile(namespace: str, name: str) -> None:
    """Reconcile now; on an API error or a missing reference, again later with backoff."""
    assert _reconciler is not None and _retrier is not None, "controller.handlers.install() first"
    try:
        outcome = _reconciler.reconcile(namespace, name)
    except Exception as e:  # 409s, 5xx, timeouts: retried with backoff, never dropped
        log.warning("reconcile %s/%s failed, will retry: %s", namespace, name, e)
        _retrier.failed(namespace, name)
        return
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
