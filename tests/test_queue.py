"""The work queue keeps controller-runtime's promises, with real threads."""

from __future__ import annotations

import threading
import time
from collections import Counter

from llmservice_operator.controller.queue import Requeue, WorkQueue
from testkit.clock import FakeClock


def _until(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _run_clock(q: WorkQueue, clock: FakeClock, pred, step: float = 0.05, limit: float = 120.0) -> None:
    """Advance the clock in steps, each only once the queue has done what was due: the
    times the work sees are the queue's own delays, whatever this machine's speed."""
    start = clock()
    while not pred():
        assert clock() - start < limit, "never happened (in the clock's time)"
        if q.idle():
            clock.advance(step)
        else:
            time.sleep(0.001)


def test_events_for_a_waiting_key_coalesce_into_one_run():
    runs: Counter = Counter()
    q = WorkQueue(lambda k: runs.update([k]), workers=2)
    for _ in range(100):
        q.add("a")
    q.add("b")
    q.start()
    _until(q.idle)
    q.stop()
    assert runs == {"a": 1, "b": 1}


def test_a_key_added_while_running_runs_once_more_after_and_never_twice_at_once():
    started, release = threading.Event(), threading.Event()
    running, overlaps, runs = [0], [0], [0]

    def process(key):
        running[0] += 1
        overlaps[0] = max(overlaps[0], running[0])
        runs[0] += 1
        if runs[0] == 1:
            started.set()
            release.wait(5)
        running[0] -= 1

    q = WorkQueue(process, workers=4)
    q.start()
    q.add("a")
    started.wait(5)
    for _ in range(50):  # while the first run is under way
        q.add("a")
    release.set()
    _until(q.idle)
    q.stop()
    assert runs[0] == 2 and overlaps[0] == 1


def test_requeue_after_and_backoff_then_nothing_is_left():
    clock = FakeClock()
    seen: list[tuple[str, float]] = []
    answers = {"later": [Requeue(after=0.2), None], "flaky": [Requeue(backoff=True), Requeue(backoff=True), None]}

    def process(key):
        seen.append((key, clock()))
        return answers[key].pop(0)

    q = WorkQueue(process, workers=2, clock=clock)
    clock.on_advance(q.wake)
    q.start()
    q.add("later")
    q.add("flaky")
    _run_clock(q, clock, lambda: not answers["later"] and not answers["flaky"] and q.idle() and q.scheduled() == 0)
    q.stop()
    later = [t for k, t in seen if k == "later"]
    flaky = [t for k, t in seen if k == "flaky"]
    assert 0.2 <= later[1] - later[0] < 0.3
    assert 1.0 <= flaky[1] - flaky[0] < 1.1 and 2.0 <= flaky[2] - flaky[1] < 2.1, flaky  # 1 s, then 2 s
    assert q.tracked() == 0, "nothing per key outlives its work"


def test_the_earliest_requeue_wins():
    clock = FakeClock()
    runs: list[float] = []
    q = WorkQueue(lambda k: runs.append(clock()), clock=clock)
    clock.on_advance(q.wake)
    start = clock()
    q.add_after("a", 30)
    q.add_after("a", 0.05)
    q.add_after("a", 60)
    q.start()
    _run_clock(q, clock, lambda: q.scheduled() == 0 and q.idle() and runs)
    q.stop()
    assert len(runs) == 1 and runs[0] - start < 0.2, "one run, at the earliest time asked"


def test_nothing_runs_while_another_replica_leads_and_nothing_is_lost():
    clock = FakeClock()
    leading = threading.Event()
    runs: list[str] = []
    q = WorkQueue(lambda k: runs.append(k), workers=2, active=leading.is_set, clock=clock)
    clock.on_advance(q.wake)
    q.start()
    q.add("a")
    q.add_after("b", 0.05)
    clock.advance(5)  # "b" came due long ago
    time.sleep(0.2)  # the workers had their chance (an absence can only be waited for)
    assert runs == [], "a paused replica does no work, not even retries that came due"
    leading.set()
    _until(lambda: sorted(runs) == ["a", "b"], timeout=5)
    q.stop()
