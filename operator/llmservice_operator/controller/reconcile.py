"""One level-triggered reconcile of an LLMService: observe -> decide -> act.

`observe()` reads everything into a frozen snapshot (from the watch-fed cache where it can),
`decide()` is a pure function of it and the settings, `act()` writes the result. This class is
the I/O shell around them: it holds what outlives one reconcile (the references read recently,
the Secret watch, the replica-log reader, GKE's node pool manager) and counts what happened.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..gke import NodePools, PoolSync
from ..settings import OperatorSettings
from . import metrics, preflight
from .act import act
from .decide import Actions, decide
from .kube import Kube
from .observe import Observed, observe
from .rootcause import RootCauses
from .secret_watch import SecretWatch

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    phase: str | None = None
    applied: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    status_written: bool = False
    busy: bool = False  # GKE is changing something no queued operation of ours covers: poll it
    queued: bool = False  # a GKE mutation waits in the cluster's queue, which wakes this service
    replicas: dict[str, int] = field(default_factory=dict)  # status.replicas: ready, desired
    requeue_after: float | None = None  # look again after this many seconds
    refused: list[str] = field(default_factory=list)  # writes the API server refused: retried with backoff


def _pool_view(sync: PoolSync | None) -> tuple[Any, ...] | None:
    return None if sync is None else (sync.pools, sync.problems, sync.progress)


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        node_pools: NodePools | None = None,
        root_causes: RootCauses | None = None,
    ):
        self.kube = kube
        self.settings = settings
        self.node_pools = node_pools
        self.root_causes = root_causes
        self.references = preflight.References(lambda k, ns, n: kube.get("v1", k, ns, n))
        # The writes the API server refused at each service's last act(): observed by the next
        # reconcile, whose status then says so.
        self.refused: dict[tuple[str, str], tuple[str, ...]] = {}
        self.secret_watch = SecretWatch(
            self._secret_version,
            settings.secret_refresh_seconds,
            forget=lambda ns, name: self.references.forget("Secret", ns, name),
        )

    def _secret_version(self, namespace: str, name: str) -> str | None:
        meta = self.kube.metadata("v1", "Secret", namespace, name)
        return None if meta is None else meta["metadata"].get("resourceVersion")

    def reconcile(self, namespace: str, name: str) -> Outcome | None:
        """One at a time per object: the work queue never hands a key to two workers."""
        with metrics.DURATION.time():
            try:
                outcome = self._reconcile(namespace, name)
            except Exception as e:
                metrics.ERRORS.labels(type(e).__name__).inc()
                metrics.RECONCILES.labels("error").inc()
                raise
            metrics.RECONCILES.labels("applied" if outcome and outcome.applied else "unchanged").inc()
            return outcome

    def observe(self, namespace: str, name: str) -> Observed | None:
        body = self.kube.get_llmservice(namespace, name)
        if body is None:
            return None
        pools = self.node_pools.last((namespace, name)) if self.node_pools is not None else None
        return observe(
            self.kube,
            body,
            references=self.references.get,
            pools=pools,
            root_causes=self.root_causes,
            refused=self.refused.get((namespace, name), ()),
        )

    def decide(self, obs: Observed) -> Actions:
        return decide(obs, self.settings, gke=self.node_pools is not None)

    def _reconcile(self, namespace: str, name: str) -> Outcome | None:
        obs = self.observe(namespace, name)
        if obs is None or obs.deleting:
            metrics.set_service(namespace, name, None)
            self.secret_watch.untrack((namespace, name))
            self.refused.pop((namespace, name), None)
        if obs is None:
            return None
        actions = self.decide(obs)
        for kind, ref in actions.stale_references:
            self.references.forget(kind, namespace, ref)
        if not obs.deleting:
            self.secret_watch.track((namespace, name), {(namespace, n): v for n, v in actions.secrets_read.items()})
        acted = act(self.kube, obs, actions, self.node_pools)
        refused = tuple(acted.refused)
        if refused:
            self.refused[(namespace, name)] = refused
            log.warning("%s/%s: the API server refused: %s", namespace, name, "; ".join(refused))
        else:
            self.refused.pop((namespace, name), None)
        out = Outcome(applied=acted.written, problems=list(actions.problems), status_written=acted.status_written)
        out.refused = list(refused)
        out.busy = acted.pool_poll
        out.queued = acted.pools is not None and acted.pools.queued
        if acted.pools is not None and _pool_view(acted.pools) != _pool_view(obs.pools) and not obs.deleting:
            out.requeue_after = 0.0  # GKE's view changed under this decision: decide again with it
        elif refused != obs.refused:
            out.requeue_after = 0.0  # the status told what was refused before this act(): tell it anew
        elif actions.requeue_after is not None:
            out.requeue_after = actions.requeue_after
        if actions.status is not None and not obs.deleting:
            out.phase = str(actions.status.phase)
            out.replicas = actions.status.replicas.model_dump()
            metrics.set_service(namespace, name, out.phase, out.replicas)
        return out
