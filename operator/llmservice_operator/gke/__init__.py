"""GKE node pools through google-cloud-container: create, resize bounds, delete owned pools."""

from .client import cluster_manager
from .pools import NodePools, PoolSync

__all__ = ["NodePools", "PoolSync", "cluster_manager"]
