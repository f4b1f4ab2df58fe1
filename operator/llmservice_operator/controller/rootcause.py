"""Why a Serve replica fails to start, from the replica's own log.

Serve reports a replica that fails to start only after its third attempt (DEPLOY_FAILED, minutes
later), and then with the replica constructor's exception ("Engine core initialization failed.
See root cause above."), while the cause (the engine argument vLLM refused, the path it could not
read) is in the replica's log inside the worker pod. The operator reads that log through the Ray
dashboard's log API, with the cluster's token, as soon as a replica of a deploying app is
starting, and keeps the exception line that stopped it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RootCause:
    line: str  # the exception that stopped the replica, one line
    text: str  # the log lines that show it (for an Event)


class RootCauses:
    """Reads failing replicas' logs through the Ray dashboard (filled in below)."""

    def __init__(self, kube: object):
        self.kube = kube

    def find(self, svc: object, ray_service: dict, pods: tuple) -> dict[str, RootCause]:
        return {}
