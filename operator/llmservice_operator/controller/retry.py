"""Delayed re-reconciles: exponential backoff after errors, a fixed delay while blocked."""

from __future__ import annotations

import threading
from collections.abc import Callable

BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

Key = tuple[str, str]


class Retrier:
    def __init__(self, fn: Callable[[str, str], None], problem_delay: float, max_delay: float = BACKOFF[-1]):
        self._fn = fn
        self._problem_delay = problem_delay
        self._max_delay = max_delay
        self._lock = threading.Lock()
        self._timers: dict[Key, threading.Timer] = {}
        self._failures: dict[Key, int] = {}
        self._stopped = False

    def _schedule(self, key: Key, delay: float) -> bool:
        """Start a timer unless one is already pending: events between retries (our own status
        writes, KubeRay's updates) must not push the retry further out."""
        with self._lock:
            if self._stopped or key in self._timers:
                return False
            timer = threading.Timer(delay, self._fire, args=key)
            timer.daemon = True
            self._timers[key] = timer
            timer.start()
            return True

    def _fire(self, namespace: str, name: str) -> None:
        with self._lock:
            self._timers.pop((namespace, name), None)
        self._fn(namespace, name)

    def failed(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        n = self._failures.get(key, 0)
        if self._schedule(key, min(BACKOFF[min(n, len(BACKOFF) - 1)], self._max_delay)):
            self._failures[key] = n + 1

    def waiting(self, namespace: str, name: str) -> None:
        """Something outside is in progress (a GKE operation): look again with backoff."""
        self.failed(namespace, name)

    def blocked(self, namespace: str, name: str) -> None:
        self._failures.pop((namespace, name), None)
        self._schedule((namespace, name), self._problem_delay)

    def done(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._lock:
            self._failures.pop(key, None)
            timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()

    def pending(self) -> int:
        with self._lock:
            return len(self._timers)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for t in self._timers.values():
                t.cancel()
            self._timers.clear()
