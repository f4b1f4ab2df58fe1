"""One mutation at a time per GKE cluster, in order, the services taking turns.

GKE runs one node pool operation per cluster at a time and answers any other with 400
"incompatible operation". Services retrying on their own collide, and each one's backoff grows
(measured before this queue: 10 services' pools deleted at once were half there 7 minutes
later). Here every mutation of a cluster waits in one queue, run by one thread:

- the next mutation starts as soon as the previous operation is done;
- owners (LLMServices) take turns: the one served least goes next, so one service's pools do
  not hold back the others; within an owner, mutations keep their order;
- throttling and server errors back off once for the cluster (capped, so work resumes within
  seconds of a storm ending), never per service;
- an operation this process did not start (the previous operator before a kill -9, GKE's own
  upgrades) is found with a list of the cluster's operations and waited for, not collided with.

The queue wakes an owner (`notify`) when its mutation starts and when it ends, so a service
waiting its turn is not reconciled in between. While another replica leads (`active` is false)
nothing starts, and queued mutations are dropped (their owners woken, to queue them again
when this replica leads and they are still wanted).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc

log = logging.getLogger(__name__)

Owner = tuple[str, str]
Poll = Callable[[str], tuple[bool, str]]  # operation name -> (done, error message)

# Retried later, not reported: GKE is busy with another operation, or throttling us.
TRANSIENT = (
    gexc.FailedPrecondition,
    gexc.TooManyRequests,
    gexc.ServiceUnavailable,
    gexc.Aborted,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
)
_HTTP_PREFIX = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ")
_INCOMPATIBLE = "incompatible operation"
BACKOFF_CAP = 5.0  # seconds: the longest pause after throttling or a server error


def message(e: gexc.GoogleAPICallError) -> str:
    """GKE's own words, without the REST client's "POST <url>: " prefix."""
    return _HTTP_PREFIX.sub("", e.message or str(e))


def transient(e: gexc.GoogleAPICallError) -> bool:
    # Over REST a 400 arrives as BadRequest even when GKE means FAILED_PRECONDITION.
    return isinstance(e, TRANSIENT) or _INCOMPATIBLE in (e.message or "")


@dataclass
class Mutation:
    owner: Owner
    what: str  # "node pool X", "workload policy Y": for messages and errors
    verb: str  # "create", "delete", "set autoscaling", ...
    call: Callable[[], Any]  # starts it; returns the long-running operation (its .name)
    poll: Poll

    @property
    def key(self) -> tuple[Owner, str, str]:
        return self.owner, self.what, self.verb


@dataclass
class _Running:
    operation: str
    poll: Poll
    started: float
    mutation: Mutation | None = None  # None: an operation this process did not start
    next_poll: float = 0.0


@dataclass
class _State:
    """Everything guarded by the queue's lock."""

    queues: dict[Owner, deque[Mutation]] = field(default_factory=dict)  # in order of arrival
    served: dict[Owner, int] = field(default_factory=dict)  # started since the owner last had none queued
    retry: Mutation | None = None  # refused for now (throttled, busy): tried again first
    running: _Running | None = None
    resume_at: float = 0.0  # backoff for the whole cluster
    failures: int = 0
    waiting_for: str = ""  # why nothing starts now, in words (throttled, a foreign operation)
    look_for_foreign: bool = True  # at start, and after an "incompatible operation" answer
    errors: dict[Owner, dict[str, str]] = field(default_factory=dict)


class OperationQueue:
    def __init__(
        self,
        name: str,
        *,
        foreign: Callable[[], list[tuple[str, Poll]]] | None = None,
        poll_seconds: float = 5.0,
        op_timeout: float = 3600,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name  # "GKE cluster c": for messages
        self._clock = clock  # monotonic seconds; a test's clock that jumps calls wake()
        self._foreign = foreign  # running operations in the cluster, whoever started them
        self.poll_seconds = poll_seconds
        self.op_timeout = op_timeout
        self.notify: Callable[[Owner], None] = lambda owner: None
        self.active: Callable[[], bool] = lambda: True
        self._cond = threading.Condition()
        self._s = _State()
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- what reconciles call ---------------------------------------------------------------

    def submit(self, m: Mutation) -> None:
        """Queue `m` unless the same (owner, what, verb) is queued or running; a queued one
        takes the newer call (autoscaling bounds changed meanwhile) and keeps its place."""
        with self._cond:
            s = self._s
            if s.running and s.running.mutation and s.running.mutation.key == m.key:
                return
            if s.retry and s.retry.key == m.key:
                s.retry = m
                return
            queue = s.queues.setdefault(m.owner, deque())
            for i, queued in enumerate(queue):
                if queued.key == m.key:
                    queue[i] = m
                    return
            queue.append(m)
            self._start_thread_locked()
            self._cond.notify()

    def retain(self, owner: Owner, keep: set[tuple[str, str]]) -> None:
        """Drop `owner`'s queued mutations whose (what, verb) is not in `keep` (no longer wanted:
        the spec changed, the service is being deleted). A started operation runs to its end."""
        with self._cond:
            s = self._s
            if s.retry and s.retry.owner == owner and (s.retry.what, s.retry.verb) not in keep:
                s.retry = None
            queue = s.queues.get(owner)
            if queue is not None:
                left = deque(m for m in queue if (m.what, m.verb) in keep)
                if left:
                    s.queues[owner] = left
                else:
                    del s.queues[owner]
                    s.served.pop(owner, None)

    def pending(self, owner: Owner) -> bool:
        """A mutation of `owner` is queued or under way: the queue will wake it."""
        with self._cond:
            s = self._s
            return (
                owner in s.queues
                or (s.retry is not None and s.retry.owner == owner)
                or (s.running is not None and s.running.mutation is not None and s.running.mutation.owner == owner)
            )

    def take_errors(self, owner: Owner) -> dict[str, str]:
        """Errors of `owner`'s mutations since the last call: what -> GKE's words."""
        with self._cond:
            return self._s.errors.pop(owner, {})

    def where(self, owner: Owner) -> list[str]:
        """Where each of `owner`'s mutations is, in words, for its status."""
        with self._cond:
            s = self._s
            out = []
            run = s.running
            if run and run.mutation and run.mutation.owner == owner:
                out.append(f"{run.mutation.what}: {run.mutation.verb} under way (operation {run.operation})")
            ahead = 1 if run else 0
            order = self._order_locked()
            for i, m in enumerate(order):
                if m.owner != owner:
                    continue
                why = f"; {s.waiting_for}" if s.waiting_for else ""
                n = ahead + i
                turn = f"waits its turn in {self.name} ({n} operation(s) ahead)" if n else f"is next in {self.name}"
                out.append(f"{m.what}: {m.verb} {turn}{why}")
            return out

    def forget(self, owner: Owner) -> None:
        """The owner is gone: nothing of it stays (a started operation runs to its end)."""
        self.retain(owner, set())
        with self._cond:
            self._s.errors.pop(owner, None)

    def wake(self) -> None:
        """Look at the time again now (a test's clock jumped)."""
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 5) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the thread -------------------------------------------------------------------------

    def _start_thread_locked(self) -> None:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._loop, name=f"gke-{self.name}", daemon=True)
            self._thread.start()

    @staticmethod
    def _turn(queues: dict[Owner, Any], served: dict[Owner, int]) -> Owner:
        """Whose mutation starts next: the owner served least so far, the earliest to arrive
        among equals (a service arriving later still goes before one on its second pool)."""
        order = {o: i for i, o in enumerate(queues)}
        return min(queues, key=lambda o: (served.get(o, 0), order[o]))

    def _order_locked(self) -> list[Mutation]:
        """The queued mutations in the order they will start: the retried one first."""
        s = self._s
        out = [s.retry] if s.retry else []
        queues = {o: list(q) for o, q in s.queues.items()}
        served = dict(s.served)
        while queues:
            owner = self._turn(queues, served)
            out.append(queues[owner].pop(0))
            served[owner] = served.get(owner, 0) + 1
            if not queues[owner]:
                del queues[owner]
        return out

    def _loop(self) -> None:
        while True:
            try:
                wait = self._step()
            except Exception:  # a bug: keep the queue alive, look again shortly
                log.exception("%s: the operation queue hit an unexpected error", self.name)
                wait = self.poll_seconds
            with self._cond:
                if self._stopped:
                    return
                if wait is None or wait > 0:
                    self._cond.wait(wait)

    def _step(self) -> float | None:
        """One step; returns how long to wait (None: until something is submitted)."""
        now = self._clock()
        if not self.active():
            self._drop_queued()
            return 1.0
        with self._cond:
            s = self._s
            run = s.running
            if run is None and now < s.resume_at:
                return s.resume_at - now
            look = s.look_for_foreign and run is None and self._foreign is not None
            s.look_for_foreign = False
        if run is not None:
            return self._poll(run, now)
        if look and self._adopt_foreign():
            return 0
        with self._cond:
            m = self._next_locked()
            if m is None:
                return None
        return self._start(m)

    def _next_locked(self) -> Mutation | None:
        s = self._s
        if s.retry is not None:
            m, s.retry = s.retry, None
            return m
        if not s.queues:
            return None
        owner = self._turn(s.queues, s.served)
        m = s.queues[owner].popleft()
        if s.queues[owner]:
            s.served[owner] = s.served.get(owner, 0) + 1
        else:
            del s.queues[owner]
            s.served.pop(owner, None)
        return m

    def _adopt_foreign(self) -> bool:
        assert self._foreign is not None
        try:
            ops = self._foreign()
        except gexc.GoogleAPICallError as e:
            log.info("%s: cannot list running operations: %s", self.name, message(e))
            return False
        if not ops:
            return False
        name, poll = ops[0]
        log.info("%s: waiting for operation %s, which this process did not start", self.name, name)
        with self._cond:
            self._s.running = _Running(name, poll, self._clock())
            self._s.waiting_for = f"waiting for operation {name} (not started by this operator)"
        return True

    def _start(self, m: Mutation) -> float | None:
        try:
            op = m.call()
        except (gexc.Conflict, gexc.NotFound):
            self.notify(m.owner)  # created or deleted meanwhile: its owner looks again
            return 0
        except gexc.GoogleAPICallError as e:
            if transient(e):
                return self._refused(m, message(e), incompatible=_INCOMPATIBLE in (e.message or ""))
            with self._cond:  # quota, permission, invalid request: the owner reports it
                self._s.errors.setdefault(m.owner, {})[m.what] = message(e)
            self.notify(m.owner)
            return 0
        except Exception as e:  # a dropped connection, a timeout below the API layer
            return self._refused(m, repr(e), incompatible=False)
        log.info("%s: %s %s started (operation %s)", self.name, m.verb, m.what, op.name)
        with self._cond:
            s = self._s
            s.running = _Running(op.name, m.poll, self._clock(), m, self._clock() + self.poll_seconds)
            s.failures, s.waiting_for = 0, ""
        self.notify(m.owner)
        return self.poll_seconds

    def _refused(self, m: Mutation, why: str, *, incompatible: bool) -> float:
        """Not started now: first again once the cluster is free or the backoff is over."""
        with self._cond:
            s = self._s
            s.retry = m
            if incompatible:  # someone else's operation: find it and wait for it
                s.look_for_foreign = True
                s.waiting_for = f"the cluster is busy: {why}"
                s.resume_at = self._clock() + self.poll_seconds
            else:
                delay = min(2.0**s.failures, BACKOFF_CAP)
                s.failures += 1
                s.waiting_for = f"GKE refused the last request ({why}); next attempt within {BACKOFF_CAP:.0f}s"
                s.resume_at = self._clock() + delay
            log.info("%s: %s %s not started: %s", self.name, m.verb, m.what, why)
            return s.resume_at - self._clock()

    def _poll(self, run: _Running, now: float) -> float:
        if now < run.next_poll:
            return run.next_poll - now
        try:
            done, error = run.poll(run.operation)
        except gexc.GoogleAPICallError as e:
            if not isinstance(e, gexc.NotFound):
                log.info("%s: polling %s failed: %s", self.name, run.operation, message(e))
                run.next_poll = now + self.poll_seconds
                return self.poll_seconds
            done, error = True, ""  # forgotten by the API: nothing to wait for
        except Exception as e:
            log.info("%s: polling %s failed: %r", self.name, run.operation, e)
            run.next_poll = now + self.poll_seconds
            return self.poll_seconds
        m = run.mutation
        if not done and now - run.started > self.op_timeout:
            done, error = True, f"operation {run.operation} did not finish in {self.op_timeout:.0f}s"
        if not done:
            run.next_poll = now + self.poll_seconds
            return self.poll_seconds
        with self._cond:
            self._s.running = None
            self._s.waiting_for = ""
            if m is not None and error:
                self._s.errors.setdefault(m.owner, {})[m.what] = error
        if m is not None:
            log.info("%s: %s %s done%s", self.name, m.verb, m.what, f": {error}" if error else "")
            self.notify(m.owner)
        return 0

    def _drop_queued(self) -> None:
        with self._cond:
            s = self._s
            owners = set(s.queues) | ({s.retry.owner} if s.retry else set())
            s.queues.clear()
            s.served.clear()
            s.retry = None
        for owner in owners:  # queued again by their reconciles once this replica leads
            self.notify(owner)
