"""Facts about GKE accelerators: labels, machine types, chips per host, TPU topologies.

Data with tests, no I/O. Sources: GKE docs and ../shared/reference/FACTS.md.
"""

from .accelerators import ACCELERATORS, Accelerator, Machine, get, gpu_types, machine_by_name, tpu_types
from .tpu import TpuSlice, tpu_slice

__all__ = [
    "ACCELERATORS",
    "Accelerator",
    "Machine",
    "TpuSlice",
    "get",
    "gpu_types",
    "machine_by_name",
    "tpu_slice",
    "tpu_types",
]
