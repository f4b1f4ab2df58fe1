"""Facts about GKE accelerators: labels, machine types, chips per host, TPU topologies.

Data with tests, no I/O. Sources: GKE docs and ../shared/reference/FACTS.md.
"""

from .accelerators import (
    ACCELERATORS,
    SYSTEM_PODS,
    Accelerator,
    Machine,
    boot_disk_type,
    cpu_machine_for,
    cpu_machines,
    cpu_types,
    get,
    gpu_types,
    machine_by_name,
    tpu_types,
)
from .tpu import TpuSlice, tpu_slice

__all__ = [
    "ACCELERATORS",
    "SYSTEM_PODS",
    "Accelerator",
    "Machine",
    "TpuSlice",
    "boot_disk_type",
    "cpu_machine_for",
    "cpu_machines",
    "cpu_types",
    "get",
    "gpu_types",
    "machine_by_name",
    "tpu_slice",
    "tpu_types",
]
