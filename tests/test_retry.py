"""Delayed re-reconciles: backoff grows on errors, resets on success, stops cleanly."""

from __future__ import annotations

import threading

from llmservice_operator.controller import retry
from llmservice_operator.controller.retry import Retrier


def test_backoff_grows_and_success_cancels(monkeypatch):
    delays = []
    monkeypatch.setattr(retry.threading, "Timer", lambda d, fn, args: _FakeTimer(d, delays))
    r = Retrier(lambda ns, n: None, problem_delay=7)
    for _ in range(8):
        r.failed("ns", "a")
        r.failed("ns", "a")  # more events before the retry fires do not push it further out
        r._timers.pop(("ns", "a"))  # the timer fired
    assert delays == [1, 2, 5, 10, 30, 60, 60, 60]
    r.blocked("ns", "a")
    assert delays[-1] == 7 and r.pending() == 1
    r.done("ns", "a")
    assert r.pending() == 0
    r.failed("ns", "a")
    assert delays[-1] == 1, "a success resets the backoff"


def test_backoff_is_capped_by_the_setting(monkeypatch):
    delays = []
    monkeypatch.setattr(retry.threading, "Timer", lambda d, fn, args: _FakeTimer(d, delays))
    r = Retrier(lambda ns, n: None, problem_delay=7, max_delay=5)
    for _ in range(6):
        r.failed("ns", "a")
        r._timers.pop(("ns", "a"))
    assert delays == [1, 2, 5, 5, 5, 5]


def test_fires_the_reconcile_and_stop_cancels_everything():
    fired = threading.Event()
    r = Retrier(lambda ns, n: fired.set(), problem_delay=0.05)
    r.blocked("ns", "a")
    assert fired.wait(5)
    r.blocked("ns", "b")
    r.stop()
    assert r.pending() == 0
    r.blocked("ns", "c")
    assert r.pending() == 0, "nothing is scheduled after stop"


class _FakeTimer:
    def __init__(self, delay, log):
        log.append(delay)
        self.daemon = False

    def start(self):
        pass

    def cancel(self):
        pass
