"""A scenario on the real node that runs in a thread from the start of the session, step by step,
while other tests run: on 2 cores most of a real-pod scenario is waiting (Ray starting, vLLM
loading, autoscaling delays), so scenarios on different services overlap instead of adding up.

The scenario function records each step's outcome (`step.done(...)`, or the exception that
stopped it); a test waits for its step and asserts on what was recorded, so a failure is
reported by the test of that step, with the scenario's log of what happened before it.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any


class StepFailed(AssertionError):
    pass


class Story:
    def __init__(self, name: str, steps: list[str]):
        self.name = name
        self.steps = steps
        self.started = time.monotonic()
        self._cond = threading.Condition()
        self._results: dict[str, dict[str, Any]] = {}
        self._error: tuple[str, BaseException, str] | None = None  # (step, exception, traceback)
        self.log: list[str] = []
        self._thread: threading.Thread | None = None

    def note(self, text: str) -> None:
        self.log.append(f"+{time.monotonic() - self.started:6.1f}s {text}")

    def done(self, step: str, **values: Any) -> None:
        assert step in self.steps, step
        with self._cond:
            self._results[step] = values
            self._cond.notify_all()
        self.note(f"{step}: done {values}")

    def run(self, scenario: Callable[[Story], None]) -> Story:
        def main() -> None:
            current = "start"
            try:
                scenario(self)
            except BaseException as e:  # recorded for the step it stopped
                current = next((s for s in self.steps if s not in self._results), current)
                with self._cond:
                    self._error = (current, e, traceback.format_exc())
                    self._cond.notify_all()
                self.note(f"{current}: {type(e).__name__}: {e}")

        self._thread = threading.Thread(target=main, name=f"story-{self.name}", daemon=True)
        self._thread.start()
        return self

    def result(self, step: str, timeout: float = 1800) -> dict[str, Any]:
        """What `step` recorded, once it is done; the failure that stopped the scenario at or
        before it, with the scenario's log."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while step not in self._results:
                if self._error is not None:
                    failed, e, tb = self._error
                    history = "\n".join(self.log[-30:])
                    raise StepFailed(f"{self.name}: stopped at {failed!r}: {type(e).__name__}: {e}\n{history}\n{tb}")
                left = deadline - time.monotonic()
                assert left > 0, f"{self.name}: {step!r} not done within {timeout:.0f} s\n" + "\n".join(self.log[-30:])
                self._cond.wait(min(left, 5))
            return self._results[step]

    def join(self, timeout: float = 60) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
