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
    made: list[handlers.Controller] = []

    def _install(*errors: Exception) -> handlers.Controller:
        made.append(handlers.Controller(_Failing(*errors)))  # type: ignore[arg-type]
        return made[-1]

    yield _install
    for c in made:
        c.stop()


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    return [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records if r.name == handlers.log.name]


def test_an_unexpected_error_is_logged_once_with_its_traceback(install, caplog):
    controller = install(KeyError("apis"), KeyError("apis"), KeyError("apis"))
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            controller.reconcile_now("team-a", "gemma")
    records = _records(caplog)
    assert [tb for _, _, tb in records] == [True, False, False], records
    level, message, _ = records[0]
    assert level == logging.ERROR and "team-a/gemma" in message
    first = next(r for r in caplog.records if r.name == handlers.log.name)
    assert first.exc_info is not None and repr(first.exc_info[1]) == "KeyError('apis')"
    assert all("KeyError('apis')" in m for _, m, _ in records[1:])
    # Success forgets it: the same bug later gets its traceback again.
    controller.reconcile_now("team-a", "gemma")
    assert ("team-a", "gemma") not in controller._unexpected


@pytest.mark.parametrize(
    "error",
    [ApiException(status=409, reason="Conflict"), ApiException(status=503), TimeoutError("read timed out")],
    ids=["409", "503", "timeout"],
)
def test_expected_api_errors_stay_one_line_warnings(install, caplog, error):
    controller = install(error)
    with caplog.at_level(logging.INFO):
        controller.reconcile_now("team-a", "gemma")
    assert _records(caplog) == [(logging.WARNING, f"reconcile team-a/gemma failed, will retry: {error}", False)]


def test_a_client_error_is_not_expected(install, caplog):
    """A 422 or 403 will not go away by retrying: it is a bug (or missing RBAC), with a traceback."""
    controller = install(ApiException(status=403, reason="Forbidden"))
    with caplog.at_level(logging.INFO):
        controller.reconcile_now("team-a", "gemma")
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
    controller = handlers.Controller(_Recorder(), cache)  # type: ignore[arg-type]
    queue = controller.queue
    owner = ("team-a", "gemma")
    assert controller.observe(_event("LLMService", "10", None, spec={"a": 1}), owner) == "queued"  # startup listing
    # The operator's own status write is in the cache already (write-through): its echo is nothing new.
    cache.put(_event("LLMService", "11", spec={"a": 1}, status={"phase": "Ready"})["object"])
    assert (
        controller.observe(_event("LLMService", "11", spec={"a": 1}, status={"phase": "Ready"}), owner) == "own-write"
    )
    assert controller.observe(_event("LLMService", "10", spec={"a": 1}), owner) == "own-write", "an older copy"
    assert controller.observe(_event("LLMService", "12", spec={"a": 2}), owner) == "queued"
    pdb = {"spec": {"minAvailable": 1}}
    assert (
        controller.observe(_event("PodDisruptionBudget", "20", **pdb, status={"currentHealthy": 0}), owner) == "queued"
    )
    assert (
        controller.observe(_event("PodDisruptionBudget", "21", **pdb, status={"currentHealthy": 3}), owner)
        == "status-only"
    )
    assert controller.observe(_event("PodDisruptionBudget", "22", spec={"minAvailable": 2}), owner) == "queued"
    assert controller.observe(_event("PodDisruptionBudget", "23", "DELETED"), owner) == "queued"
    assert cache.get("PodDisruptionBudget", "team-a", "gemma-workers") is None
    assert queue.tracked() == 1, "however many events, the service waits in the queue once"


def test_two_controllers_in_one_process_keep_apart():
    """No module state: each controller has its own queue, cache and kopf registry, whose
    handlers feed it alone; every kind the child registry marks watched is watched."""
    from llmservice_operator.controller.cache import Cache
    from llmservice_operator.render import children as ck

    a, b = handlers.Controller(_Recorder(), Cache()), handlers.Controller(_Recorder(), Cache())  # type: ignore[arg-type]
    registry = a.registry()
    watched = {(h.selector.group, h.selector.plural) for h in registry._watching.get_all_handlers()}
    assert {(k.group, k.plural) for k in ck.WATCHED} <= watched
    assert a.observe(_event("LLMService", "10", spec={}), ("team-a", "gemma")) == "queued"
    assert a.queue.tracked() == 1 and b.queue.tracked() == 0
    assert b.cache.get("LLMService", "team-a", "gemma") is None
