"""The ClusterManagerClient and the Compute Engine clients (workload policies): Application
Default Credentials (Workload Identity on GKE), or a local endpoint for tests."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import container_v1

if TYPE_CHECKING:  # google-cloud-compute costs ~100 MiB of RSS: imported when first used
    from google.cloud import compute_v1

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


class Compute:
    """Compute Engine's regional resource policies and the operations that change them; the
    clients (and the library) load on first use: only tpu7x multi-host slices need them."""

    def __init__(self, cluster: GKECluster):
        self._cluster = cluster

    @cached_property
    def policies(self) -> compute_v1.ResourcePoliciesClient:
        from google.cloud import compute_v1

        # Compute Engine speaks REST only; a test endpoint serves it beside the fake GKE API.
        return compute_v1.ResourcePoliciesClient(transport="rest", **_local(self._cluster))

    @cached_property
    def operations(self) -> compute_v1.RegionOperationsClient:
        from google.cloud import compute_v1

        return compute_v1.RegionOperationsClient(transport="rest", **_local(self._cluster))


def compute(cluster: GKECluster) -> Compute:
    return Compute(cluster)
