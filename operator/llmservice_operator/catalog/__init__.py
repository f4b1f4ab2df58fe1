"""Facts about GKE accelerators: labels, machine types, chips per host, TPU topologies.

Data with tests, no I/O. Sources: GKE docs and ../shared/reference/FACTS.md.
"""

from .accelerators import ACCELERATORS, Accelerator, get, gpu_types, tpu_types
from .tpu import TpuSlice, tpu_slice

__all__ = [
    "ACCELERATORS",
    "Accelerator",
    "TpuSlice",
    "get",
    "gpu_types",
    "tpu_slice",
    "tpu_types",
]
