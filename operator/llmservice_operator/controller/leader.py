"""Whether this replica leads, by the same rule kopf's peering uses to pause a replica.

kopf pauses its watches while a live peer has a higher priority (or the same one); work this
process queued before (requeue-after, backoff) must pause too, or a paused replica would go
on writing. The peering object's status lists every replica's priority and heartbeat; it is
read every few seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from . import metrics

log = logging.getLogger(__name__)

Reader = Callable[[], dict[str, Any] | None]  # the peering object, or None when absent


def _alive(info: dict[str, Any], now: dt.datetime) -> bool:
    seen = info.get("lastseen")
    if not seen:
        return True  # kopf counts a peer without a heartbeat time as just seen
    last = dt.datetime.fromisoformat(str(seen).replace("Z", "+00:00"))
    if last.tzinfo is None:
        last = last.replace(tzinfo=dt.UTC)
    return last + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now


def leads(status: dict[str, Any], identity: str, priority: int, now: dt.datetime | None = None) -> bool:
    """kopf's rule (engines/peering.py): pause while any other live peer has a higher priority
    or the same one."""
    now = now or dt.datetime.now(dt.UTC)
    return not any(
        peer != identity and isinstance(info, dict) and _alive(info, now) and int(info.get("priority", 0)) >= priority
        for peer, info in status.items()
    )


class Leadership:
    """`active()` for the work queue; standalone (no peering) always leads."""

    def __init__(self, read: Reader | None, identity: str, priority: int, interval: float = 2.0):
        self._read, self._identity, self._priority, self._interval = read, identity, priority, interval
        self._active = read is None
        self._registered = read is None
        metrics.LEADER.set(int(self._active))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def active(self) -> bool:
        return self._active

    def registered(self) -> bool:
        """This replica is in the peering object: it would take over when the leader leaves."""
        return self._registered

    def refresh(self) -> None:
        assert self._read is not None
        try:
            obj = self._read()
        except Exception as e:  # keep the last answer through API errors
            log.warning("reading the peering object failed: %s", e)
            return
        status = (obj or {}).get("status") or {}
        self._registered = self._identity in status
        was, self._active = self._active, leads(status, self._identity, self._priority)
        if was != self._active:
            log.info("this replica %s", "leads: resuming work" if self._active else "follows: work paused")
            metrics.LEADER.set(int(self._active))
            if not self._active:
                metrics.forget_services()

    def start(self) -> None:
        if self._read is None:
            return
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="leadership", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
