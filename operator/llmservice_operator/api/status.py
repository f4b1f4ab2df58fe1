"""LLMService status, following Kubernetes API conventions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .spec import Model

Phase = Literal["Pending", "Provisioning", "Ready", "Degraded", "Suspended"]


class Condition(Model):
    """A Kubernetes condition."""

    type: str = Field(description="Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(None, description="RFC 3339 time of the last status change.")
    observed_generation: int | None = Field(None, description="Generation the condition was computed for.")


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


class LLMServiceStatus(Model):
    """Observed state, written only by the operator."""

    observed_generation: int | None = Field(None, description="metadata.generation last reconciled.")
    phase: Phase | None = Field(None, description="Pending, Provisioning, Ready, Degraded or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing and Degraded, with reason and message.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL inside the cluster.")
    replicas: ReplicaStatus = Field(default_factory=ReplicaStatus)
    children: ChildStatus = Field(default_factory=ChildStatus)
    node_pools: list[NodePoolStatus] = Field(default_factory=list, description="Managed GKE node pools.")
