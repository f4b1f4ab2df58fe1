"""Notice when a Secret that running pods read has changed: the edge sidecar's API keys and TLS
certificate.

The operator does not list or watch Secrets (that would let it read every Secret in the
cluster). It reads the ones services reference, by name, metadata only (resourceVersion, never
the data), every `period` seconds, and wakes the services that use one that changed. Their
reconcile then pokes their serving pods, so the kubelet refreshes the mounted files at once
instead of at its next periodic sync (up to a minute or more), and the sidecar reloads.

Bounded: one entry per referenced Secret while a service references it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

SecretKey = tuple[str, str]  # (namespace, name)
ReadVersion = Callable[[str, str], str | None]  # (namespace, name) -> resourceVersion, None if gone


class SecretWatch:
    def __init__(
        self, read_version: ReadVersion, period: float, forget: Callable[[str, str], None] = lambda ns, n: None
    ):
        """`forget` drops a changed Secret from what the reconciles remember of it."""
        self._read, self.period, self._forget = read_version, period, forget
        self._lock = threading.Lock()
        self._users: dict[Hashable, set[SecretKey]] = {}  # service -> the Secrets it reads
        self._versions: dict[SecretKey, str | None] = {}  # as the services were last reconciled with
        self._wake: Callable[[Hashable], None] = lambda key: None
        self._active: Callable[[], bool] = lambda: True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, service: Hashable, versions: dict[SecretKey, str | None]) -> None:
        """`service` was reconciled with these Secrets at these versions."""
        with self._lock:
            if versions:
                self._users[service] = set(versions)
            else:
                self._users.pop(service, None)
            self._versions.update(versions)
            self._drop_unused()

    def untrack(self, service: Hashable) -> None:
        with self._lock:
            self._users.pop(service, None)
            self._drop_unused()

    def _drop_unused(self) -> None:
        used = set().union(*self._users.values()) if self._users else set()
        for key in self._versions.keys() - used:
            del self._versions[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)

    def poll(self) -> list[Hashable]:
        """Read each tracked Secret's version once; wake and return the services whose
        Secrets changed (or went away)."""
        with self._lock:
            known = dict(self._versions)
        changed = set()
        for key, version in known.items():
            try:
                now = self._read(*key)
            except Exception as e:  # the API server may be away: try at the next period
                log.warning("could not read Secret %s/%s: %s", *key, e)
                continue
            if now != version:
                changed.add(key)
                self._forget(*key)
        with self._lock:
            for key in changed:  # the reconcile records the new version
                self._versions.pop(key, None)
            woken = [svc for svc, used in self._users.items() if used & changed]
        for svc in woken:
            self._wake(svc)
        return woken

    def bind(self, wake: Callable[[Hashable], None], active: Callable[[], bool]) -> None:
        """Start polling; `wake` queues a service, `active` says whether this replica leads."""
        self._wake, self._active = wake, active
        if self._thread is None and self.period > 0:
            self._thread = threading.Thread(target=self._run, name="secret-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if self._active():
                self.poll()

    def stop(self) -> None:
        self._stop.set()
