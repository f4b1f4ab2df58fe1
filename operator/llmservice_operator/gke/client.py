"""The ClusterManagerClient and the Compute Engine clients (workload policies): Application
Default Credentials (Workload Identity on GKE), or a local endpoint for tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1, container_v1

from ..settings import GKECluster


def _local(cluster: GKECluster) -> dict[str, Any]:
    """A test endpoint: anonymous, over REST (the async client does not work over REST; the sync
    one is called from worker threads)."""
    if not cluster.endpoint:
        return {}
    return {"credentials": AnonymousCredentials(), "client_options": ClientOptions(api_endpoint=cluster.endpoint)}


def cluster_manager(cluster: GKECluster) -> container_v1.ClusterManagerClient:
    if cluster.endpoint:
        return container_v1.ClusterManagerClient(transport="rest", **_local(cluster))
    return container_v1.ClusterManagerClient()


@dataclass(frozen=True)
class Compute:
    """Compute Engine's regional resource policies and the operations that change them."""

    policies: compute_v1.ResourcePoliciesClient
    operations: compute_v1.RegionOperationsClient


def compute(cluster: GKECluster) -> Compute:
    # Compute Engine speaks REST only; a test endpoint serves it beside the fake GKE API.
    return Compute(
        compute_v1.ResourcePoliciesClient(transport="rest", **_local(cluster)),
        compute_v1.RegionOperationsClient(transport="rest", **_local(cluster)),
    )
