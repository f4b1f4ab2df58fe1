"""GKE node pools through google-cloud-container (create, resize bounds, replace, delete owned
pools) and the Compute Engine workload policies tpu7x slices name (google-cloud-compute)."""

from .client import Compute, cluster_manager, compute
from .pools import NodePools, PoolSync

__all__ = ["Compute", "NodePools", "PoolSync", "cluster_manager", "compute"]
