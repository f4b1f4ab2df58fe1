"""Node pool reconciliation. Never blocks on a GKE operation: it starts one, remembers it, and
reports `busy` so the caller reconciles again later (with backoff) to poll it.

Only pools labelled as owned by this LLMService are changed or deleted; a same-named pool
that is not ours is reported, never touched.

A GKE error stays a problem (so the LLMService stays Degraded with GKE's words) until the
pool is seen healthy: an operation error is remembered per pool, and a pool GKE reports in
ERROR or RUNNING_WITH_ERROR carries its own message (also after an operator restart). A pool
left in ERROR by a failed create (a stockout: ZONE_RESOURCE_POOL_EXHAUSTED) is deleted and
created again, with the caller's backoff, until capacity returns.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import container_v1

from ..render.nodepools import OWNER_LABEL, OWNER_NS_LABEL
from ..settings import GKECluster

log = logging.getLogger(__name__)

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


def _message(e: gexc.GoogleAPICallError) -> str:
    """GKE's own words, without the REST client's "POST <url>: " prefix."""
    return _HTTP_PREFIX.sub("", e.message or str(e))


def _transient(e: gexc.GoogleAPICallError) -> bool:
    # Over REST a 400 arrives as BadRequest even when GKE means FAILED_PRECONDITION.
    return isinstance(e, TRANSIENT) or "incompatible operation" in (e.message or "")


BUSY_STATES = {"PROVISIONING", "RECONCILING", "STOPPING"}
ERROR_STATES = {"ERROR", "RUNNING_WITH_ERROR"}


def _pool_error(pool: container_v1.NodePool, state: str) -> str:
    """What GKE says is wrong with a pool: its conditions, else the older status_message."""
    said = [c.message for c in pool.conditions if c.message] or [pool.status_message]
    return "; ".join(m for m in said if m) or f"GKE reports the pool {state}"


def _problems(errors: dict[str, str]) -> list[str]:
    return [f"node pool {name}: {message}" for name, message in sorted(errors.items())]


@dataclass
class PoolSync:
    pools: list[dict[str, Any]] = field(default_factory=list)  # status.nodePools entries
    problems: list[str] = field(default_factory=list)  # GKE's own words: quota, stockout, permission
    busy: bool = False  # an operation is under way or GKE asked us to come back later


@dataclass
class _Pending:
    operation: str
    pool: str
    started: float


class NodePools:
    def __init__(self, client: container_v1.ClusterManagerClient, cluster: GKECluster, op_timeout: float = 3600):
        self.client = client
        self.cluster = cluster
        self.op_timeout = op_timeout
        self._pending: dict[tuple[str, str], list[_Pending]] = {}
        # The last GKE error per owned pool, until the pool is seen healthy or is no longer wanted.
        self._errors: dict[tuple[str, str], dict[str, str]] = {}

    @property
    def parent(self) -> str:
        return self.cluster.path

    def _owned(self, pool: container_v1.NodePool, owner: tuple[str, str]) -> bool:
        labels = pool.config.labels
        return labels.get(OWNER_NS_LABEL) == owner[0] and labels.get(OWNER_LABEL) == owner[1]

    def _poll(self, owner: tuple[str, str], out: PoolSync) -> None:
        """Check the operations this process started; failed ones become problems."""
        still = []
        for p in self._pending.get(owner, []):
            name = f"projects/{self.cluster.project}/locations/{self.cluster.location}/operations/{p.operation}"
            op = self.client.get_operation(name=name)
            if op.status != container_v1.Operation.Status.DONE:
                if time.monotonic() - p.started > self.op_timeout:
                    out.problems.append(
                        f"node pool {p.pool}: GKE operation {p.operation} did not finish in {self.op_timeout:.0f}s"
                    )
                else:
                    out.busy = True
                    still.append(p)
            elif op.error and op.error.message:
                self._errors.setdefault(owner, {})[p.pool] = op.error.message
        if still:
            self._pending[owner] = still
        else:
            self._pending.pop(owner, None)

    def _start(self, owner: tuple[str, str], pool: str, call: Any, out: PoolSync) -> None:
        try:
            op = call()
        except (gexc.AlreadyExists, gexc.NotFound):
            out.busy = True  # created or deleted meanwhile: the next pass re-reads the list
            return
        except gexc.GoogleAPICallError as e:
            if _transient(e):
                log.info("GKE busy for node pool %s, retrying later: %s", pool, _message(e))
                out.busy = True
            else:  # quota, permission, invalid request
                self._errors.setdefault(owner, {})[pool] = _message(e)
            return
        self._pending.setdefault(owner, []).append(_Pending(op.name, pool, time.monotonic()))
        out.busy = True

    def sync(self, owner: tuple[str, str], desired: list[dict[str, Any]]) -> PoolSync:
        out = PoolSync()
        self._poll(owner, out)
        live = {p.name: p for p in self.client.list_node_pools(parent=self.parent).node_pools}
        wanted = {d["name"] for d in desired}
        errors = self._errors.setdefault(owner, {})
        for gone in set(errors) - wanted:
            del errors[gone]
        for d in desired:
            name = d["name"]
            pool = live.get(name)
            want = container_v1.NodePoolAutoscaling(**d["autoscaling"])
            if pool is None:
                msg = container_v1.NodePool(**d)
                self._start(
                    owner, name, lambda m=msg: self.client.create_node_pool(parent=self.parent, node_pool=m), out
                )
                continue
            if not self._owned(pool, owner):
                out.problems.append(
                    f"node pool {name} exists but was not created for this LLMService: rename or remove it"
                )
                continue
            state = container_v1.NodePool.Status(pool.status).name
            if state in ERROR_STATES:
                errors[name] = _pool_error(pool, state)
            elif state == "RUNNING":
                errors.pop(name, None)
            out.pools.append(
                {
                    "name": name,
                    "state": state,
                    "minNodes": pool.autoscaling.total_min_node_count,
                    "maxNodes": pool.autoscaling.total_max_node_count,
                }
            )
            if state in BUSY_STATES:
                out.busy = True
            elif state == "ERROR":  # unusable (a failed create): make it again, with backoff
                self._delete(owner, pool, out)
            elif (pool.autoscaling.total_min_node_count, pool.autoscaling.total_max_node_count) != (
                want.total_min_node_count,
                want.total_max_node_count,
            ):
                self._start(owner, name, self._autoscale_call(name, want), out)
        for name, pool in live.items():
            if name not in wanted and self._owned(pool, owner):
                self._delete(owner, pool, out)
        out.problems += _problems(errors)
        if not errors:
            del self._errors[owner]
        return out

    def _autoscale_call(self, pool: str, want: container_v1.NodePoolAutoscaling) -> Any:
        req = container_v1.SetNodePoolAutoscalingRequest(name=f"{self.parent}/nodePools/{pool}", autoscaling=want)
        return lambda: self.client.set_node_pool_autoscaling(request=req)

    def _delete(self, owner: tuple[str, str], pool: container_v1.NodePool, out: PoolSync) -> None:
        if container_v1.NodePool.Status(pool.status).name == "STOPPING":
            out.busy = True
            return
        name = f"{self.parent}/nodePools/{pool.name}"
        self._start(owner, pool.name, lambda: self.client.delete_node_pool(name=name), out)

    def delete_owned(self, owner: tuple[str, str]) -> PoolSync:
        """Start deleting every pool this LLMService owns; done when `busy` is False and no
        owned pool is left (a pool already gone counts as deleted)."""
        out = PoolSync()
        self._errors.pop(owner, None)  # deletion errors are reported; earlier ones no longer matter
        self._poll(owner, out)
        for pool in self.client.list_node_pools(parent=self.parent).node_pools:
            if self._owned(pool, owner):
                out.busy = True
                self._delete(owner, pool, out)
        out.problems += _problems(self._errors.pop(owner, {}))
        if not out.busy:
            self._pending.pop(owner, None)
        return out
