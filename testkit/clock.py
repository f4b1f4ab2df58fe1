"""A clock for tests of code that waits: time moves only when the test says so."""

from __future__ import annotations

import threading
from collections.abc import Callable


class FakeClock:
    """Monotonic seconds that advance on `advance()`; whoever waits on this clock registers a
    `wake` callback, called after each jump so a sleeping thread looks at the time again."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def on_advance(self, wake: Callable[[], None]) -> None:
        self._wakers.append(wake)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
        for wake in self._wakers:
            wake()
