"""Compute Engine workload policies (resource policies) that tpu7x multi-host node pools name in
`placement_policy.policy_name`: the calls, and how this operator marks the ones it owns.

Resource policies carry no labels, so ownership is the description: exactly `description()`
of the owning LLMService and cluster. A same-named policy with any other description is not
ours and is never changed or deleted. Orchestration (when to create, when to delete) lives in
pools.py beside the pools that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..settings import GKECluster
from .client import Compute

if TYPE_CHECKING:  # loaded on first use (see client.Compute)
    from google.cloud import compute_v1

READY = "READY"  # compute_v1.ResourcePolicy.status is a string (Operation.status an enum)


def region(location: str) -> str:
    """A policy lives in the node pool's region: us-central1-a (a zonal cluster) -> us-central1."""
    return location.rsplit("-", 1)[0] if location.count("-") >= 2 else location


def basename(policy: str) -> str:
    """`policy_name` as GKE reports it may be a full resource path."""
    return policy.rsplit("/", 1)[-1]


class WorkloadPolicies:
    def __init__(self, compute: Compute, cluster: GKECluster):
        self.compute = compute
        self.project = cluster.project
        self.region = region(cluster.location)
        self.cluster = cluster.path

    def description(self, owner: tuple[str, str]) -> str:
        # The cluster is part of it: policies are regional, several clusters may share a region.
        return f"llmservice-operator: workload policy of LLMService {owner[0]}/{owner[1]} in {self.cluster}"

    def owned(self, policy: compute_v1.ResourcePolicy, owner: tuple[str, str]) -> bool:
        return policy.description == self.description(owner)

    def list(self) -> dict[str, compute_v1.ResourcePolicy]:
        return {p.name: p for p in self.compute.policies.list(project=self.project, region=self.region)}

    def insert(self, owner: tuple[str, str], desired: dict[str, Any]) -> Callable[[], compute_v1.Operation]:
        from google.cloud import compute_v1

        policy = compute_v1.ResourcePolicy(**desired, description=self.description(owner))
        req = compute_v1.InsertResourcePolicyRequest(
            project=self.project, region=self.region, resource_policy_resource=policy
        )
        # *_unary: the plain Operation, returned at once (the other form wraps it for waiting).
        return lambda: self.compute.policies.insert_unary(request=req)

    def delete(self, name: str) -> Callable[[], compute_v1.Operation]:
        from google.cloud import compute_v1

        req = compute_v1.DeleteResourcePolicyRequest(project=self.project, region=self.region, resource_policy=name)
        return lambda: self.compute.policies.delete_unary(request=req)

    def poll(self, operation: str) -> tuple[bool, str]:
        """(done, error message or "") of a region operation."""
        from google.cloud import compute_v1

        op = self.compute.operations.get(project=self.project, region=self.region, operation=operation)
        if op.status != compute_v1.Operation.Status.DONE:
            return False, ""
        return True, "; ".join(e.message for e in op.error.errors if e.message)
