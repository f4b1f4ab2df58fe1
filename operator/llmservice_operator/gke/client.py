"""The ClusterManagerClient: Application Default Credentials (Workload Identity on GKE), or a
local endpoint for tests."""

from __future__ import annotations

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import container_v1

from ..settings import GKECluster


def cluster_manager(cluster: GKECluster) -> container_v1.ClusterManagerClient:
    if cluster.endpoint:
        # The async client does not work over REST; the sync one is called from worker threads.
        return container_v1.ClusterManagerClient(
            transport="rest",
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=cluster.endpoint),
        )
    return container_v1.ClusterManagerClient()
