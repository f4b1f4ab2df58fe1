"""A work queue with controller-runtime's guarantees, for threads.

- A key waits in the queue at most once, however many events add it.
- A key is processed by one worker at a time; added while being processed, it is processed
  once more afterwards (the events coalesce into that one follow-up).
- `add_after` schedules a key (requeue-after); the earliest time wins.
- Failures back off per key; `forget` ends the backoff.
- While `active()` is false (another replica leads), nothing is processed and nothing is
  lost: keys stay queued and due keys wait until this replica leads again.
- Nothing per key is kept once it is processed and forgotten (bounded by live keys).

Time comes from an injected clock (`clock`, monotonic seconds); a test's clock that jumps calls
`wake()`, so delays and backoffs are tested without waiting for them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from . import metrics

log = logging.getLogger(__name__)

BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Requeue:
    """What processing a key asks for: nothing more (None), a retry after `after` seconds, or
    (`backoff`) a retry with the key's growing backoff."""

    after: float | None = None
    backoff: bool = False


class WorkQueue:
    def __init__(
        self,
        process: Callable[[Hashable], Requeue | None],
        *,
        workers: int = 4,
        active: Callable[[], bool] = lambda: True,
        max_backoff: float = BACKOFF[-1],
        name: str = "reconcile",
        clock: Callable[[], float] = time.monotonic,
    ):
        self._process = process
        self._clock = clock
        self._workers = workers
        self._active = active
        self._max_backoff = max_backoff
        self._name = name
        self._cond = threading.Condition()
        self._ready: deque[Hashable] = deque()
        self._queued: set[Hashable] = set()  # in _ready
        self._processing: set[Hashable] = set()
        self._again: set[Hashable] = set()  # added while processing: once more afterwards
        self._timers: list[tuple[float, int, Hashable]] = []  # heap of (due, seq, key)
        self._due: dict[Hashable, float] = {}  # the earliest due time per scheduled key
        self._failures: dict[Hashable, int] = {}
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    # -- adding ----------------------------------------------------------------------------

    def add(self, key: Hashable) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: Hashable) -> None:
        if self._stopped:
            return
        if key in self._processing:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._cond.notify()
        metrics.QUEUE_DEPTH.labels(self._name).set(len(self._ready))

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            return self.add(key)
        due = self._clock() + delay
        with self._cond:
            if self._stopped or self._due.get(key, float("inf")) <= due:
                return None
            self._due[key] = due
            heapq.heappush(self._timers, (due, next(self._seq), key))
            self._cond.notify()
        return None

    def backoff(self, key: Hashable) -> float:
        """Schedule `key` after its next backoff step; returns the delay."""
        with self._cond:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        delay = min(BACKOFF[min(n, len(BACKOFF) - 1)], self._max_backoff)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """The key needs nothing more: its backoff and any scheduled retry go."""
        with self._cond:
            self._failures.pop(key, None)
            self._due.pop(key, None)  # its heap entry is skipped when it comes due

    # -- processing ------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def wake(self) -> None:
        """Look at the timers now: the clock moved (a test's clock jumps). Keys that came due
        are ready when this returns."""
        with self._cond:
            self._promote_due_locked(self._clock())
            self._cond.notify_all()

    def _promote_due_locked(self, now: float) -> float | None:
        """Move due keys to the ready queue; returns seconds until the next one is due."""
        while self._timers:
            due, _, key = self._timers[0]
            if self._due.get(key) != due:  # superseded by an earlier time, or forgotten
                heapq.heappop(self._timers)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._timers)
            del self._due[key]
            self._add_locked(key)
        return None

    def _next(self) -> Hashable | None:
        with self._cond:
            while not self._stopped:
                wait = self._promote_due_locked(self._clock())
                if self._ready and self._active():
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    metrics.QUEUE_DEPTH.labels(self._name).set(len(self._ready))
                    return key
                # Paused replicas look again each second: leadership is not an event here.
                limit = 1.0 if self._ready else None
                self._cond.wait(min(x for x in (wait, limit, 60.0) if x is not None))
            return None

    def _work(self) -> None:
        while (key := self._next()) is not None:
            try:
                result = self._process(key)
            except Exception:  # the process function handles its errors; this is a bug
                log.exception("processing %s failed", key)
                result = Requeue(backoff=True)
            if result is None:
                self.forget(key)
            elif result.backoff:
                self.backoff(key)
            elif result.after is not None:
                with self._cond:
                    self._failures.pop(key, None)
                self.add_after(key, result.after)
            with self._cond:
                self._processing.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self._add_locked(key)

    # -- observing (tests, metrics) ---------------------------------------------------------

    def idle(self) -> bool:
        """Nothing ready or being processed (scheduled retries may be pending)."""
        with self._cond:
            return not self._ready and not self._processing and not self._again

    def scheduled(self) -> int:
        with self._cond:
            return len(self._due)

    def tracked(self) -> int:
        """Keys with any state at all: what must return to 0 once everything is deleted."""
        with self._cond:
            return len(self._queued | self._processing | self._again | set(self._due) | set(self._failures))
