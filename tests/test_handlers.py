"""How a failed reconcile is reported: API errors a retry may not meet are one-line warnings;
anything else is a bug, logged once with its traceback and the object it hit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from kubernetes.client.exceptions import ApiException

from llmservice_operator.controller import handlers
from llmservice_operator.controller.secret_watch import SecretWatch


class _Failing:
    """A reconciler that raises the queued errors in turn, then succeeds."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.settings = SimpleNamespace(retry_delay_seconds=3600, retry_max_delay_seconds=3600, reconcile_workers=4)
        self.node_pools = None
        self.secret_watch = SecretWatch(lambda ns, name: None, period=0)

    def reconcile(self, namespace: str, name: str) -> None:
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
def install() -> Iterator:
    def _install(*errors: Exception) -> None:
        handlers.install(_Failing(*errors))  # type: ignore[arg-type]

    yield _install
    handlers._unexpected.clear()


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    return [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records if r.name == handlers.log.name]


def test_an_unexpected_error_is_logged_once_with_its_traceback(install, caplog):
    install(KeyError("apis"), KeyError("apis"), KeyError("apis"))
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            handlers.reconcile_now("team-a", "gemma")
    records = _records(caplog)
    assert [tb for _, _, tb in records] == [True, False, False], records
    level, message, _ = records[0]
    assert level == logging.ERROR and "team-a/gemma" in message
    first = next(r for r in caplog.records if r.name == handlers.log.name)
    assert first.exc_info is not None and repr(first.exc_info[1]) == "KeyError('apis')"
    assert all("KeyError('apis')" in m for _, m, _ in records[1:])
    # Success forgets it: the same bug later gets its traceback again.
    handlers.reconcile_now("team-a", "gemma")
    assert ("team-a", "gemma") not in handlers._unexpected


@pytest.mark.parametrize(
    "error",
    [ApiException(status=409, reason="Conflict"), ApiException(status=503), TimeoutError("read timed out")],
    ids=["409", "503", "timeout"],
)
def test_expected_api_errors_stay_one_line_warnings(install, caplog, error):
    install(error)
    with caplog.at_level(logging.INFO):
        handlers.reconcile_now("team-a", "gemma")
    assert _records(caplog) == [(logging.WARNING, f"reconcile team-a/gemma failed, will retry: {error}", False)]


def test_a_client_error_is_not_expected(install, caplog):
    """A 422 or 403 will not go away by retrying: it is a bug (or missing RBAC), with a traceback."""
    install(ApiException(status=403, reason="Forbidden"))
    with caplog.at_level(logging.INFO):
        handlers.reconcile_now("team-a", "gemma")
    assert [tb for _, _, tb in _records(caplog)] == [True]


class _Recorder:
    settings = SimpleNamespace(retry_delay_seconds=30, retry_max_delay_seconds=60, reconcile_workers=4)
    node_pools = None
    secret_watch = SecretWatch(lambda ns, name: None, period=0)

    def reconcile(self, namespace: str, name: str) -> None:
        return None


def _event(kind: str, rv: str, type_: str | None = "MODIFIED", **fields) -> dict:
    meta = {"name": "gemma-workers" if kind != "LLMService" else "gemma", "namespace": "team-a", "resourceVersion": rv}
    return {"type": type_, "object": {"kind": kind, "metadata": meta, **fields}}


def test_events_that_cannot_change_the_outcome_queue_nothing():
    from llmservice_operator.controller.cache import Cache

    cache = Cache()
    queue = handlers.install(_Recorder(), cache)  # type: ignore[arg-type]
    owner = ("team-a", "gemma")
    assert handlers.observe(_event("LLMService", "10", None, spec={"a": 1}), owner) == "queued"  # startup listing
    # The operator's own status write is in the cache already (write-through): its echo is nothing new.
    cache.put(_event("LLMService", "11", spec={"a": 1}, status={"phase": "Ready"})["object"])
    assert handlers.observe(_event("LLMService", "11", spec={"a": 1}, status={"phase": "Ready"}), owner) == "own-write"
    assert handlers.observe(_event("LLMService", "10", spec={"a": 1}), owner) == "own-write", "an older copy"
    assert handlers.observe(_event("LLMService", "12", spec={"a": 2}), owner) == "queued"
    pdb = {"spec": {"minAvailable": 1}}
    assert handlers.observe(_event("PodDisruptionBudget", "20", **pdb, status={"currentHealthy": 0}), owner) == "queued"
    assert (
        handlers.observe(_event("PodDisruptionBudget", "21", **pdb, status={"currentHealthy": 3}), owner)
        == "status-only"
    )
    assert handlers.observe(_event("PodDisruptionBudget", "22", spec={"minAvailable": 2}), owner) == "queued"
    assert handlers.observe(_event("PodDisruptionBudget", "23", "DELETED"), owner) == "queued"
    assert cache.get("PodDisruptionBudget", "team-a", "gemma-workers") is None
    assert queue.tracked() == 1, "however many events, the service waits in the queue once"
