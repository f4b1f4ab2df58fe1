"""Prometheus metrics of the operator (served by `llmservice run --metrics-port`)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("llmservice_reconciles_total", "Reconciles by outcome.", ["outcome"])
WRITES = Counter("llmservice_child_applies_total", "Server-side applies of children, by kind.", ["kind"])
ERRORS = Counter("llmservice_reconcile_errors_total", "Reconciles that raised.", ["error"])
DURATION = Histogram("llmservice_reconcile_duration_seconds", "Time per reconcile.")
BY_PHASE = Gauge("llmservice_services", "LLMServices by phase.", ["phase"])
QUEUE_DEPTH = Gauge("llmservice_queue_depth", "Keys ready to be processed, by queue.", ["queue"])
EVENTS = Counter("llmservice_events_total", "Watch events by kind and what they led to.", ["kind", "action"])

_phases: dict[tuple[str, str], str] = {}


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    if phase is None:
        _phases.pop((namespace, name), None)
    else:
        _phases[(namespace, name)] = phase
    counts = Tally(_phases.values())
    for p in ("Pending", "Provisioning", "Ready", "Degraded", "Suspended"):
        BY_PHASE.labels(p).set(counts.get(p, 0))
