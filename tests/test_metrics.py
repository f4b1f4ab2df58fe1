"""The operator's per-service and leadership metrics: one series per service for its current
phase, replicas ready and desired, nothing left of a deleted service, nothing reported by a
replica that stopped leading (the one that leads reports)."""

from __future__ import annotations

import pytest
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


def test_readiness_says_why_not_until_the_replica_could_take_over():
    import urllib.error
    import urllib.request

    from e2e.cluster import free_port
    from llmservice_operator.controller import endpoints

    why: list[str | None] = ["not in the peering yet"]
    port = free_port()
    server = endpoints.serve(f"127.0.0.1:{port}", lambda: why[0])
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert err.value.code == 503 and b"not in the peering yet" in err.value.read()
        why[0] = None
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read() == b"ready\n"
        metrics_text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "llmservice_reconciles_total" in metrics_text
    finally:
        server.shutdown()


def test_a_replica_is_registered_once_the_peering_names_it():
    status: dict = {"other/1": {"priority": 50, "lifetime": 60}}
    leadership = Leadership(lambda: {"status": status}, "me/1", priority=10)
    assert not leadership.registered()
    leadership.refresh()
    assert not leadership.registered() and not leadership.active()
    status["me/1"] = {"priority": 10, "lifetime": 60}
    leadership.refresh()
    assert leadership.registered() and not leadership.active(), "registered: it would take over, not lead"
