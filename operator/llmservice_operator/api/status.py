"""LLMService status, following Kubernetes API conventions."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from .spec import Model


class Phase(StrEnum):
    """One word for `kubectl get`: where the service is."""

    PENDING = "Pending"  # the RayService is being created
    PROVISIONING = "Provisioning"  # KubeRay brings up the Ray cluster and the Serve app
    READY = "Ready"  # serving traffic
    DEGRADED = "Degraded"  # cannot get (or stay) there without a change: the Degraded condition says why
    SUSPENDED = "Suspended"  # spec.suspend: the RayService and its Ray cluster are deleted


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class Reason(StrEnum):
    """Every condition reason the operator writes (Ready's may also be KubeRay's own)."""

    # Ready
    SERVING_TRAFFIC = "ServingTraffic"
    SCALED_TO_ZERO = "ScaledToZero"  # no replica: the next request is held while one starts
    SERVING_PREVIOUS_SPEC = "ServingPreviousSpec"  # a reference is missing; the old spec still serves
    NOT_DEPLOYED = "NotDeployed"
    DEPLOYING = "Deploying"
    CREATING = "Creating"
    SUSPENDED = "Suspended"
    # Progressing
    RECONCILED = "Reconciled"
    RECONCILING = "Reconciling"  # KubeRay has not observed the latest spec
    UPGRADING = "Upgrading"  # a new Ray cluster starts beside the serving one
    SCALING = "Scaling"  # Serve wants more (or fewer) replicas than are ready
    WAITING_FOR_CAPACITY = "WaitingForCapacity"  # a Ray pod no node can take: the scheduler's reason
    RETRYING = "Retrying"  # a replica failed to start; Serve starts it again
    UPDATING_NODE_POOLS = "UpdatingNodePools"  # GKE pools being created, replaced or queued
    BLOCKED = "Blocked"  # nothing is applied until the spec or its references are fixed
    FAILED = "Failed"  # Serve gave up: nothing changes until the spec does
    # Degraded
    AS_EXPECTED = "AsExpected"
    INVALID_SPEC = "InvalidSpec"
    INVALID_REFERENCE = "InvalidReference"  # a Secret, key, PVC or ServiceAccount is missing
    REPLICA_START_FAILED = "ReplicaStartFailed"  # a replica failed to start: its root cause
    COLD_START = "ColdStart"  # Event: a step of a Ray cluster's start (status.startup)
    SERVE_APPLICATION_FAILED = "ServeApplicationFailed"
    NODE_POOL_ERROR = "NodePoolError"  # GKE's words: quota, stockout, permission
    WRITE_REFUSED = "WriteRefused"  # the API server refused a write: the operator's role, an admission policy


class Condition(Model):
    """A Kubernetes condition."""

    type: str = Field(description="Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(None, description="RFC 3339 time of the last status change.")
    observed_generation: int | None = Field(None, description="Generation the condition was computed for.")


def set_condition(conditions: list[Condition], new: Condition, now: str) -> None:
    """Put `new` in place of the condition of its type, keeping its lastTransitionTime while
    its status is unchanged (Kubernetes' meta.SetStatusCondition)."""
    old = next((c for c in conditions if c.type == new.type), None)
    keep = old is not None and old.status == new.status and old.last_transition_time
    new = new.model_copy(update={"last_transition_time": old.last_transition_time if keep and old else now})
    conditions[:] = [new if c.type == new.type else c for c in conditions] if old else [*conditions, new]


class ReplicaStatus(Model):
    """Serve replica counts."""

    ready: int = Field(0, description="Serve replicas (endpoints) ready for traffic.")
    desired: int = Field(0, description="Serve replicas the autoscaler currently wants.")


class ChildStatus(Model):
    """Objects the operator created for this service."""

    ray_service: str | None = Field(None, description="RayService name.")
    ray_cluster: str | None = Field(None, description="Active RayCluster name.")
    serve_service: str | None = Field(None, description="Service clients call.")
    edge_config: str | None = Field(None, description="ConfigMap with the edge sidecar's haproxy.cfg.")


class NodePoolStatus(Model):
    """A GKE node pool the operator manages for this service."""

    name: str = Field(description="Node pool name.")
    state: str = Field(description="GKE node pool status (PROVISIONING, RUNNING, ERROR, ...).")
    min_nodes: int = Field(0, description="Autoscaling lower bound (nodes).")
    max_nodes: int = Field(0, description="Autoscaling upper bound (nodes).")


class StartupStep(Model):
    """A step of a Ray cluster's start, counted from its creation."""

    name: str = Field(
        description="HeadScheduled, HeadStarted, HeadReady, WorkerScheduled, WorkerStarted, WorkerReady or Serving."
    )
    seconds: float = Field(description="Seconds after the RayCluster was created.")


class StartupStatus(Model):
    """The last Ray cluster start: where the time to serving went (each step is also an Event)."""

    ray_cluster: str = Field(description="The RayCluster that started.")
    started_at: str = Field(description="RFC 3339 time the RayCluster was created.")
    steps: list[StartupStep] = Field(default_factory=list, description="Steps reached so far, in order.")
    seconds: float | None = Field(None, description="Seconds from the RayCluster's creation to serving.")


class LLMServiceStatus(Model):
    """Observed state, written only by the operator."""

    observed_generation: int | None = Field(None, description="metadata.generation last reconciled.")
    phase: Phase | None = Field(None, description="Pending, Provisioning, Ready, Degraded or Suspended.")
    reason: str | None = Field(
        None,
        description="Why the service is where it is, in one word: the reason of the condition that "
        "matters most (Degraded if true, else Progressing if true, else Ready).",
    )
    message: str | None = Field(None, description="The same condition's message: what to do, if anything.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing and Degraded, with reason and message.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL inside the cluster.")
    replicas: ReplicaStatus = Field(default_factory=ReplicaStatus)
    children: ChildStatus = Field(default_factory=ChildStatus)
    node_pools: list[NodePoolStatus] | None = Field(None, description="Managed GKE node pools.")
    startup: StartupStatus | None = Field(None, description="The last Ray cluster start, step by step.")

    def to_dict(self) -> dict[str, Any]:
        """As written to the API server (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
