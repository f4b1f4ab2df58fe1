"""Operator-wide settings: defaults an LLMService can leave out, and where the GKE cluster is."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GKECluster(BaseModel):
    project: str
    location: str
    cluster: str
    endpoint: str | None = Field(None, description="GKE API endpoint override (tests); default: Google's.")

    @property
    def path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/clusters/{self.cluster}"


class OperatorSettings(BaseModel):
    """Operator-wide defaults. Plain data: the renderer never reads the environment."""

    gpu_ray_image: str = Field(
        "rayproject/ray-llm:2.60.0-py311-cu128", description="Default image for GPU services (Ray + vLLM)."
    )
    arm_gpu_ray_image: str = Field(
        "rayproject/ray-llm:2.60.0-py311-cu128-aarch64",
        description="Default image of the GPU worker pods on Arm nodes (GB200 on A4X); the head "
        "runs gpu_ray_image on an x86 CPU node.",
    )
    tpu_ray_image: str = Field(
        "rayproject/ray-llm:2.60.0-py311-tpu", description="Default image for TPU services (Ray + vLLM TPU)."
    )
    cpu_ray_image: str = Field(
        "llmservice.dev/ray-cpu:2.60.0-vllm0.29.0",
        description="Default image for CPU services (Ray + vLLM for CPU; built from images/ray-cpu, "
        "push it to your registry).",
    )
    edge_image: str = Field("haproxy:2.8.25-alpine", description="Image of the edge HAProxy sidecar.")
    monitoring: Literal["gmp", "prometheus-operator", "none"] = Field(
        "gmp", description="gmp: GKE Managed Prometheus PodMonitoring; prometheus-operator: PodMonitor."
    )
    kuberay_operator_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "kuberay-operator"},
        description="Labels of the KubeRay operator's pods (any namespace): the services' "
        "NetworkPolicies let them reach the Ray dashboard and Serve's health port.",
    )
    operator_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "llmservice-operator"},
        description="Labels of this operator's own pods (any namespace): the services' NetworkPolicies let "
        "them reach the Ray dashboard, where the operator reads why a replica failed to start.",
    )
    metrics_namespaces: list[str] = Field(
        default_factory=lambda: ["gmp-system", "monitoring"],
        description="Namespaces whose pods may scrape the services' metrics ports (NetworkPolicy).",
    )
    gke: GKECluster | None = Field(None, description="GKE cluster for managed node pools.")
    retry_delay_seconds: float = Field(
        30, gt=0, description="Retry delay while a service waits for a missing Secret or PVC."
    )
    retry_max_delay_seconds: float = Field(
        60,
        gt=0,
        description="Cap of the backoff (1, 2, 5, 10, 30, 60 s) between retries after errors.",
    )
    reconcile_workers: int = Field(
        16,
        ge=1,
        le=64,
        description="Reconciles run at once (each LLMService by one at a time): they mostly wait "
        "on the API server, so more than the CPU count helps a large fleet converge.",
    )
    secret_refresh_seconds: float = Field(
        10,
        ge=0,
        description="How often the Secrets serving pods read (ingress API keys and TLS) are checked for "
        "changes, metadata only; a change reaches the running edge sidecars within this plus ~2 s. 0: off "
        "(the kubelet's periodic sync, about a minute, delivers changes).",
    )
    gke_poll_seconds: float = Field(
        5,
        gt=0,
        description="How often a running GKE or Compute Engine operation is polled, and a node pool "
        "that GKE is changing is looked at again.",
    )


PREFIX = "LLMSERVICE_"


class _EnvSettings(OperatorSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_nested_delimiter="__")


def settings_from_env(environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Settings from LLMSERVICE_* variables (the Helm chart sets them), e.g.
    LLMSERVICE_GPU_RAY_IMAGE, LLMSERVICE_GKE__PROJECT: this process's, or `environ`'s (the
    operator Deployment's, for `llmservice diff`). Lists and maps are JSON, as in the chart."""
    if environ is None:
        return OperatorSettings.model_validate(_EnvSettings().model_dump())
    fields: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.upper().startswith(PREFIX):
            continue
        *parents, leaf = key[len(PREFIX) :].lower().split("__")
        node = fields
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(value) if value[:1] in ("[", "{") else value
    return OperatorSettings.model_validate(fields)
