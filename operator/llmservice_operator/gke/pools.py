"""Node pool reconciliation. Never blocks on a GKE operation: it queues the mutation in the
cluster's operation queue (ops.py: one at a time, services taking turns), which wakes the
service when its operation starts and ends; `busy` says the pools are not settled yet.

Only pools labelled as owned by this LLMService are changed or deleted; a same-named pool
that is not ours is reported, never touched. The same holds for the Compute Engine workload
policies tpu7x slices name (policies.py): created before the first pool that names one, deleted
once no pool in the cluster names it any more.

A GKE error stays a problem (so the LLMService stays Degraded with GKE's words) until the
pool is seen healthy: an operation error is remembered per pool, and a pool GKE reports in
ERROR or RUNNING_WITH_ERROR carries its own message (also after an operator restart). A pool
left in ERROR by a failed create (a stockout: ZONE_RESOURCE_POOL_EXHAUSTED) is deleted and
created again, with the caller's backoff, until capacity returns.

Hardware changes (machine type, accelerators, disk, spot, ...) cannot be made in place: the
desired pool then has a new name (render/nodepools.py) and the old one becomes *replaced*. It
is deleted (GKE drains its nodes) only once every desired pool is RUNNING, so the service is
never left without a pool; everything needed to resume is in GKE (names, labels, states), so an
operator restart mid-replacement carries on where it was.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import container_v1

from ..render.nodepools import OWNER_LABEL, OWNER_NS_LABEL, SLOT_LABEL
from ..settings import GKECluster
from .client import Compute
from .ops import Mutation, OperationQueue, Owner, Poll, message, transient
from .policies import READY, WorkloadPolicies, basename, region

log = logging.getLogger(__name__)

NO_COMPUTE = "the operator has no Compute Engine client for the workload policies tpu7x slices need"


BUSY_STATES = {"PROVISIONING", "RECONCILING", "STOPPING"}
ERROR_STATES = {"ERROR", "RUNNING_WITH_ERROR"}


def _state(pool: container_v1.NodePool) -> str:
    return container_v1.NodePool.Status(pool.status).name


def _pool_error(pool: container_v1.NodePool, state: str) -> str:
    """What GKE says is wrong with a pool: its conditions, else the older status_message."""
    said = [c.message for c in pool.conditions if c.message] or [pool.status_message]
    return "; ".join(m for m in said if m) or f"GKE reports the pool {state}"


def _problems(errors: dict[str, str]) -> list[str]:
    return [f"{what}: {message}" for what, message in sorted(errors.items())]


def _slot(pool: container_v1.NodePool) -> str:
    # Pools made before pools had slots are named after theirs.
    return pool.config.labels.get(SLOT_LABEL) or pool.name


def _hardware(pool: container_v1.NodePool) -> dict[str, str]:
    """The fields GKE cannot update in place, as words for a status message."""
    c, pp, rsv = pool.config, pool.placement_policy, pool.config.reservation_affinity
    specific = rsv.consume_reservation_type == container_v1.ReservationAffinity.Type.SPECIFIC_RESERVATION
    placement = [pp.type_.name if pp.type_ else "", pp.tpu_topology, basename(pp.policy_name)]
    return {
        "machine type": c.machine_type,
        "accelerators": ",".join(f"{a.accelerator_count}x{a.accelerator_type}" for a in c.accelerators) or "none",
        "disk": f"{c.disk_size_gb}GB {c.disk_type}",
        "spot": str(c.spot).lower(),
        "flex-start": str(c.flex_start).lower(),
        "reservation": ",".join(rsv.values) if specific else "none",
        "placement": "/".join(p for p in placement if p) or "none",
        "zones": ",".join(sorted(pool.locations)),
        "service account": c.service_account,
        "image cache disk": ",".join(d.disk_image for d in c.secondary_boot_disks) or "none",
    }


def hardware_changes(live: container_v1.NodePool, want: container_v1.NodePool) -> list[str]:
    """What differs, as "machine type a2-highgpu-1g->g2-standard-8". Fields the desired pool
    leaves to GKE (zones, service account, GPU-less accelerators) are not compared: GKE fills
    them in."""
    old, new = _hardware(live), _hardware(want)
    unset = {"zones": not want.locations, "service account": not want.config.service_account}
    return [f"{k} {old[k]}->{new[k]}" for k in new if old[k] != new[k] and not unset.get(k)]


@dataclass
class PoolSync:
    pools: list[dict[str, Any]] = field(default_factory=list)  # status.nodePools entries
    problems: list[str] = field(default_factory=list)  # GKE's own words: quota, stockout, permission
    busy: bool = False  # not settled: an operation is queued or under way, or a pool is changing
    queued: bool = False  # a mutation is in the operation queue, which wakes the owner: no need to poll
    submitted: set[tuple[str, str]] = field(default_factory=set, repr=False)  # (what, verb) wanted now
    progress: list[str] = field(default_factory=list)  # changes under way: a pool replaced, a policy awaited


class NodePools:
    def __init__(
        self,
        client: container_v1.ClusterManagerClient,
        cluster: GKECluster,
        op_timeout: float = 3600,
        compute: Compute | None = None,
        poll_seconds: float = 5.0,
    ):
        self.client = client
        self.cluster = cluster
        self.policies = WorkloadPolicies(compute, cluster) if compute else None
        # GKE runs one node pool operation per cluster at a time; Compute Engine's policy
        # operations are queued the same way (they are few), so both have one mechanism.
        self.ops = OperationQueue(
            f"GKE cluster {cluster.cluster}",
            foreign=self._running_operations,
            poll_seconds=poll_seconds,
            op_timeout=op_timeout,
        )
        self.policy_ops = OperationQueue(
            f"Compute region {region(cluster.location)}", poll_seconds=poll_seconds, op_timeout=op_timeout
        )
        # The last error per owned pool or policy ("node pool X"), until it is seen healthy or
        # is no longer wanted.
        self._errors: dict[Owner, dict[str, str]] = {}
        # Owners that had workload policies: the Compute API is only asked about these and
        # about owners whose spec or pools name one (GPU-only users need no Compute permission).
        self._policy_owners: set[Owner] = set()
        self._last: dict[Owner, PoolSync] = {}  # each owner's last sync: GKE's view for its status

    def bind(self, notify: Callable[[Owner], None], active: Callable[[], bool]) -> None:
        """`notify(owner)` when an owner's mutation starts or ends; start nothing while
        `active()` is false (another replica leads)."""
        for q in (self.ops, self.policy_ops):
            q.notify, q.active = notify, active

    def stop(self) -> None:
        for q in (self.ops, self.policy_ops):
            q.stop()

    @property
    def parent(self) -> str:
        return self.cluster.path

    def _owned(self, pool: container_v1.NodePool, owner: Owner) -> bool:
        labels = pool.config.labels
        return labels.get(OWNER_NS_LABEL) == owner[0] and labels.get(OWNER_LABEL) == owner[1]

    def _gke_poll(self, operation: str) -> tuple[bool, str]:
        name = f"projects/{self.cluster.project}/locations/{self.cluster.location}/operations/{operation}"
        op = self.client.get_operation(name=name)
        return op.status == container_v1.Operation.Status.DONE, op.error.message if op.error else ""

    def _running_operations(self) -> list[tuple[str, Poll]]:
        """Operations under way in this cluster, whoever started them."""
        parent = f"projects/{self.cluster.project}/locations/{self.cluster.location}"
        ours = re.compile(rf"/clusters/{re.escape(self.cluster.cluster)}(/|$)")
        ops = self.client.list_operations(parent=parent).operations
        done = container_v1.Operation.Status.DONE
        return [(op.name, self._gke_poll) for op in ops if op.status != done and ours.search(op.target_link)]

    def _submit(self, queue: OperationQueue, m: Mutation, out: PoolSync) -> None:
        queue.submit(m)
        out.submitted.add((m.what, m.verb))
        out.busy = True

    def _gke(self, owner: Owner, pool: str, verb: str, call: Callable[[], Any], out: PoolSync) -> None:
        self._submit(self.ops, Mutation(owner, f"node pool {pool}", verb, call, self._gke_poll), out)

    def _policy(self, owner: Owner, name: str, verb: str, call: Callable[[], Any], out: PoolSync) -> None:
        assert self.policies is not None
        self._submit(self.policy_ops, Mutation(owner, f"workload policy {name}", verb, call, self.policies.poll), out)

    def _take_errors(self, owner: Owner) -> dict[str, str]:
        return {**self.ops.take_errors(owner), **self.policy_ops.take_errors(owner)}

    def _finish(self, owner: Owner, out: PoolSync) -> None:
        """Queued mutations no longer wanted go; the status says where the others wait."""
        self.ops.retain(owner, out.submitted)
        self.policy_ops.retain(owner, out.submitted)
        out.progress += self.ops.where(owner) + self.policy_ops.where(owner)
        out.queued = self.ops.pending(owner) or self.policy_ops.pending(owner)

    def sync(
        self,
        owner: Owner,
        desired: list[dict[str, Any]],
        policies: list[dict[str, Any]] | None = None,
        hold_replaced: bool = False,
    ) -> PoolSync:
        """Make GKE match `desired` pools (render.nodepools.node_pools) and the workload
        `policies` they name (render.nodepools.workload_policies). `hold_replaced`: the old
        Ray cluster still serves on the pools being replaced (a blue/green switch under way),
        so they stay until it is done."""
        out = PoolSync()
        errors = self._errors.setdefault(owner, {})
        errors.update(self._take_errors(owner))
        live = {p.name: p for p in self.client.list_node_pools(parent=self.parent).node_pools}
        ready, owned_policies = self._sync_policies(owner, policies or [], live, out)
        desired = self._adopt(owner, desired, live)
        for d in desired:
            name = d["name"]
            pool = live.get(name)
            want = container_v1.NodePoolAutoscaling(**d["autoscaling"])
            if pool is None:
                needs = d.get("placement_policy", {}).get("policy_name")
                if needs and needs not in ready:  # GKE refuses a pool whose policy does not exist
                    out.busy = True
                    out.progress.append(f"node pool {name} waits for workload policy {needs}")
                    continue
                msg = container_v1.NodePool(**d)
                create = lambda m=msg: self.client.create_node_pool(parent=self.parent, node_pool=m)  # noqa: E731
                self._gke(owner, name, "create", create, out)
                continue
            if not self._owned(pool, owner):
                out.problems.append(
                    f"node pool {name} exists but was not created for this LLMService: rename or remove it"
                )
                continue
            state = _state(pool)
            if state in ERROR_STATES:
                errors[f"node pool {name}"] = _pool_error(pool, state)
            elif state == "RUNNING":
                errors.pop(f"node pool {name}", None)
            out.pools.append(self._status(pool))
            if state in BUSY_STATES:
                out.busy = True
            elif state == "ERROR":  # unusable (a failed create): delete it, then make it again
                self._delete(owner, pool, out)
            elif (pool.autoscaling.total_min_node_count, pool.autoscaling.total_max_node_count) != (
                want.total_min_node_count,
                want.total_max_node_count,
            ):
                self._gke(owner, name, "set autoscaling", self._autoscale_call(name, want), out)
        # Every desired pool is ours and RUNNING: the pools they replace may go.
        running = all(
            (p := live.get(d["name"])) is not None and self._owned(p, owner) and _state(p) == "RUNNING" for d in desired
        )
        self._retire(owner, desired, live, running, hold_replaced, out)
        # Errors stay while what they are about is wanted or still there (a pool being replaced,
        # a policy being deleted).
        pools = {d["name"] for d in desired} | {n for n, p in live.items() if self._owned(p, owner)}
        keep = {f"node pool {n}" for n in pools} | {f"workload policy {n}" for n in owned_policies}
        keep |= {f"workload policy {p['name']}" for p in policies or []}
        for gone in set(errors) - keep:
            del errors[gone]
        out.problems += _problems(errors)
        if not errors:
            del self._errors[owner]
        self._finish(owner, out)
        self._last[owner] = out
        return out

    def last(self, owner: Owner) -> PoolSync | None:
        """What the owner's last sync found (pools, GKE's problems, progress), or None."""
        return self._last.get(owner)

    @staticmethod
    def _status(pool: container_v1.NodePool) -> dict[str, Any]:
        return {
            "name": pool.name,
            "state": _state(pool),
            "minNodes": pool.autoscaling.total_min_node_count,
            "maxNodes": pool.autoscaling.total_max_node_count,
        }

    def _adopt(
        self, owner: Owner, desired: list[dict[str, Any]], live: dict[str, container_v1.NodePool]
    ) -> list[dict[str, Any]]:
        """A missing desired pool whose slot already has an owned pool of the same hardware under
        another name (made before names carried a hardware digest) is that pool: no needless
        replacement."""
        names = {d["name"] for d in desired}
        spare = [p for n, p in sorted(live.items()) if n not in names and self._owned(p, owner)]
        out = []
        for d in desired:
            if d["name"] not in live:
                slot, want = d["config"]["labels"][SLOT_LABEL], container_v1.NodePool(**d)
                same = [p for p in spare if _slot(p) == slot and not hardware_changes(p, want)]
                if same:
                    spare.remove(same[0])
                    d = {**d, "name": same[0].name}
            out.append(d)
        return out

    def _retire(
        self,
        owner: Owner,
        desired: list[dict[str, Any]],
        live: dict[str, container_v1.NodePool],
        running: bool,
        hold: bool,
        out: PoolSync,
    ) -> None:
        """Owned pools no longer desired (old hardware, fewer slices) are deleted once every
        desired pool is RUNNING and no old Ray cluster serves on them (`hold`): never a moment
        without a pool to run on."""
        by_slot = {d["config"]["labels"][SLOT_LABEL]: d for d in desired}
        wanted = {d["name"] for d in desired}
        for name, pool in sorted(live.items()):
            if name in wanted or not self._owned(pool, owner):
                continue
            out.pools.append(self._status(pool))
            new = by_slot.get(_slot(pool))
            if new is not None:
                changes = ", ".join(hardware_changes(pool, container_v1.NodePool(**new))) or "hardware"
                now = live.get(new["name"])
                if now is None:
                    step = f"new pool {new['name']} is being created"
                elif running and hold and _state(pool) != "STOPPING":
                    step = f"new pool {new['name']} is RUNNING; the old one stays until the new Ray cluster serves"
                elif running or _state(pool) == "STOPPING":
                    step = f"new pool {new['name']} is RUNNING, deleting the old one (GKE drains its nodes)"
                else:
                    step = f"new pool {new['name']} is {_state(now)}"
                out.progress.append(f"replacing node pool {name} ({changes}): {step}")
            if running and not hold:
                self._delete(owner, pool, out)
            else:
                out.busy = True  # look again soon: the new pool is on its way, or the switch

    def _sync_policies(
        self,
        owner: Owner,
        desired: list[dict[str, Any]],
        live: dict[str, container_v1.NodePool],
        out: PoolSync,
    ) -> tuple[set[str], set[str]]:
        """Create the desired workload policies, delete owned ones no pool names any more;
        return the names of those READY for a pool to name, and of all owned ones found."""
        named = {basename(p.placement_policy.policy_name) for p in live.values() if p.placement_policy.policy_name}
        ours = any(self._owned(p, owner) and p.placement_policy.policy_name for p in live.values())
        if not desired and not ours and owner not in self._policy_owners:
            return set(), set()
        if self.policies is None:
            if desired:
                out.problems.append(NO_COMPUTE)
            return set(), set()
        try:
            existing = self.policies.list()
        except gexc.GoogleAPICallError as e:
            if isinstance(e, gexc.PermissionDenied) and not desired and not ours:
                # Nothing needs a policy: a setup without Compute permissions has none of ours.
                log.warning("cannot list workload policies to clean up: %s", message(e))
                self._policy_owners.discard(owner)
            elif transient(e):
                out.busy = True
            else:
                out.problems.append(f"workload policies: {message(e)}")
            return set(), set()
        ready: set[str] = set()
        for d in desired:
            name, policy = d["name"], existing.get(d["name"])
            if policy is None:
                self._policy(owner, name, "create", self.policies.insert(owner, d), out)
            elif not self.policies.owned(policy, owner):
                out.problems.append(
                    f"workload policy {name} exists but was not created for this LLMService: rename or remove it"
                )
            elif policy.status == READY:
                ready.add(name)
            else:
                out.busy = True  # CREATING
        wanted = {d["name"] for d in desired}
        left = [p for n, p in existing.items() if n not in wanted and self.policies.owned(p, owner)]
        for policy in left:
            if policy.name in named or policy.status == "DELETING":
                out.busy = True  # a pool still names it (it is being replaced or deleted)
            else:
                self._policy(owner, policy.name, "delete", self.policies.delete(policy.name), out)
        if desired or left:
            self._policy_owners.add(owner)
        else:
            self._policy_owners.discard(owner)
        return ready, {n for n, p in existing.items() if self.policies.owned(p, owner)}

    def _autoscale_call(self, pool: str, want: container_v1.NodePoolAutoscaling) -> Any:
        req = container_v1.SetNodePoolAutoscalingRequest(name=f"{self.parent}/nodePools/{pool}", autoscaling=want)
        return lambda: self.client.set_node_pool_autoscaling(request=req)

    def _delete(self, owner: Owner, pool: container_v1.NodePool, out: PoolSync) -> None:
        if _state(pool) == "STOPPING":
            out.busy = True
            return
        name = f"{self.parent}/nodePools/{pool.name}"
        self._gke(owner, pool.name, "delete", lambda: self.client.delete_node_pool(name=name), out)

    def delete_owned(self, owner: Owner) -> PoolSync:
        """Start deleting every pool this LLMService owns, then its workload policies; done when
        `busy` is False and nothing owned is left (a pool already gone counts as deleted)."""
        out = PoolSync()
        self._errors.pop(owner, None)  # deletion errors are reported; earlier ones no longer matter
        errors = self._take_errors(owner)
        live = {p.name: p for p in self.client.list_node_pools(parent=self.parent).node_pools}
        for pool in live.values():
            if self._owned(pool, owner):
                out.busy = True
                self._delete(owner, pool, out)
        if self.policies is not None:
            self._policy_owners.add(owner)  # also after a restart: policies may be left
            self._sync_policies(owner, [], live, out)
        out.problems += _problems(errors)
        self._finish(owner, out)
        if not out.busy:
            self._policy_owners.discard(owner)
            self.ops.forget(owner)
            self.policy_ops.forget(owner)
            self._last.pop(owner, None)
        return out
