"""The operator's per-service and leadership metrics: one series per service for its current
phase, replicas ready and desired, nothing left of a deleted service, nothing reported by a
replica that stopped leading (the one that leads reports)."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from llmservice_operator.controller import metrics
from llmservice_operator.controller.leader import Leadership


def _series(name: str) -> dict[str, float]:
    out = {}
    for line in generate_latest(REGISTRY).decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_a_service_has_one_phase_series_and_its_replicas():
    metrics.forget_services()
    metrics.set_service("serving", "tiny", "Provisioning", {"ready": 0, "desired": 1})
    metrics.set_service("serving", "tiny", "Ready", {"ready": 1, "desired": 1})
    assert _series("llmservice_service_phase") == {
        'llmservice_service_phase{llmservice="tiny",llmservice_namespace="serving",phase="Ready"}': 1.0
    }
    assert _series("llmservice_service_replicas") == {
        'llmservice_service_replicas{llmservice="tiny",llmservice_namespace="serving",state="ready"}': 1.0,
        'llmservice_service_replicas{llmservice="tiny",llmservice_namespace="serving",state="desired"}': 1.0,
    }
    assert _series("llmservice_services")['llmservice_services{phase="Ready"}'] == 1.0
    metrics.set_service("serving", "tiny", None)  # deleted
    assert _series("llmservice_service_phase") == {} and _series("llmservice_service_replicas") == {}
    assert _series("llmservice_services")['llmservice_services{phase="Ready"}'] == 0.0


def test_a_replica_that_stops_leading_forgets_the_services():
    status = {"other/1": {"priority": 5, "lifetime": 60}}
    leadership = Leadership(lambda: {"status": status}, "me/1", priority=10)
    leadership.refresh()
    assert leadership.active() and _series("llmservice_leader") == {"llmservice_leader": 1.0}
    metrics.set_service("serving", "tiny", "Ready", {"ready": 1, "desired": 1})
    status["other/1"]["priority"] = 20  # a higher-priority replica appears
    leadership.refresh()
    assert not leadership.active() and _series("llmservice_leader") == {"llmservice_leader": 0.0}
    assert _series("llmservice_service_phase") == {}


def test_reconcile_outcomes_exist_before_any_reconcile():
    """Alerts on errors see 0, not no series, on a healthy operator."""
    outcomes = _series("llmservice_reconciles_total")
    assert {f'llmservice_reconciles_total{{outcome="{o}"}}' for o in ("applied", "unchanged", "error")} <= set(outcomes)
