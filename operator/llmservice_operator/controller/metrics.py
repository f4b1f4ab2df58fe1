"""Prometheus metrics of the operator (served by `llmservice run --metrics-port`)."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("llmservice_reconciles_total", "Reconciles by outcome: applied, unchanged, error.", ["outcome"])
for _outcome in ("applied", "unchanged", "error"):  # each series from the start: alerts see 0, not nothing
    RECONCILES.labels(_outcome)
WRITES = Counter("llmservice_child_applies_total", "Server-side applies of children, by kind.", ["kind"])
ERRORS = Counter("llmservice_reconcile_errors_total", "Reconciles that raised, by exception type.", ["error"])
DURATION = Histogram("llmservice_reconcile_duration_seconds", "Time per reconcile.")
BY_PHASE = Gauge("llmservice_services", "LLMServices by phase.", ["phase"])
QUEUE_DEPTH = Gauge("llmservice_queue_depth", "Keys ready to be processed, by queue.", ["queue"])
EVENTS = Counter("llmservice_events_total", "Watch events by kind and what they led to.", ["kind", "action"])

SERVICE_PHASE = Gauge(
    "llmservice_service_phase", "1 for each LLMService's current phase (on the replica that leads).",
    ["llmservice_namespace", "llmservice", "phase"],  # not `namespace`: a scrape sets that to the operator pod's
)  # fmt: skip
SERVICE_REPLICAS = Gauge(
    "llmservice_service_replicas", "Model replicas of each LLMService, ready and desired (on the replica that leads).",
    ["llmservice_namespace", "llmservice", "state"],
)  # fmt: skip
LEADER = Gauge("llmservice_leader", "1 on the operator replica that works, 0 on one paused by kopf peering.")

_phases: dict[tuple[str, str], str] = {}
PHASES = ("Pending", "Provisioning", "Ready", "Degraded", "Suspended")


def set_service(namespace: str, name: str, phase: str | None, replicas: dict[str, int] | None = None) -> None:
    """A service's phase and replicas as its last reconcile found them (phase None: gone)."""
    old = _phases.pop((namespace, name), None)
    if old is not None and old != phase:
        SERVICE_PHASE.remove(namespace, name, old)
    if phase is None:
        for state in ("ready", "desired"):
            with contextlib.suppress(KeyError):
                SERVICE_REPLICAS.remove(namespace, name, state)
    else:
        _phases[(namespace, name)] = phase
        SERVICE_PHASE.labels(namespace, name, phase).set(1)
        for state, n in (replicas or {}).items():
            SERVICE_REPLICAS.labels(namespace, name, state).set(n)
    _count_phases()


def forget_services() -> None:
    """A paused replica reports no services: what it last saw goes stale while another leads."""
    _phases.clear()
    SERVICE_PHASE.clear()
    SERVICE_REPLICAS.clear()
    _count_phases()


def _count_phases() -> None:
    counts = Tally(_phases.values())
    for p in PHASES:
        BY_PHASE.labels(p).set(counts.get(p, 0))
