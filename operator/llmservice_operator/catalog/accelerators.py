"""The accelerators an LLMService can ask for, keyed by `spec.accelerator.type`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from . import labels

# What GKE's system pods (kube-proxy, logging and metrics agents, CSI) and the edge sidecar
# ask for on a node, beyond GKE's own reservation: vCPUs, GiB.
SYSTEM_PODS = (0.5, 1.0)


def _tiers(amount: float, tiers: tuple[tuple[float, float], ...]) -> float:
    """Sum of rate x the part of `amount` inside each (upper bound, rate) tier."""
    out, low = 0.0, 0.0
    for high, rate in tiers:
        out += rate * max(0.0, min(amount, high) - low)
        low = high
    return out


# GKE Standard node allocatable: the kubelet reservation (GKE docs, "Standard cluster
# architecture: node allocatable resources") plus the 100 MiB eviction threshold.
_CPU_RESERVED = ((1, 0.06), (2, 0.01), (4, 0.005), (math.inf, 0.0025))
_MEMORY_RESERVED = ((4, 0.25), (8, 0.20), (16, 0.10), (128, 0.06), (math.inf, 0.02))
_EVICTION_GIB = 100 / 1024


@dataclass(frozen=True)
class Machine:
    name: str
    accelerators: int  # GPUs, or TPU chips per host; 0 for CPU machines
    vcpus: int
    memory_gib: int

    @property
    def room(self) -> tuple[float, float]:
        """vCPUs and GiB left for workload pods: GKE's allocatable less SYSTEM_PODS."""
        cpu = self.vcpus - _tiers(self.vcpus, _CPU_RESERVED) - SYSTEM_PODS[0]
        mem = self.memory_gib - _tiers(self.memory_gib, _MEMORY_RESERVED) - _EVICTION_GIB - SYSTEM_PODS[1]
        return cpu, mem

    def holds(self, cpu: float, memory_gib: float) -> int:
        """How many pods of `cpu` cores and `memory_gib` fit in this machine's room."""
        room_cpu, room_mem = self.room
        by_cpu = room_cpu / cpu if cpu > 0 else math.inf
        by_memory = room_mem / memory_gib if memory_gib > 0 else math.inf
        return max(0, int(min(by_cpu, by_memory, 1000)))


def _m(*specs: tuple[str, int, int, int]) -> tuple[Machine, ...]:
    return tuple(Machine(*s) for s in specs)


@dataclass(frozen=True)
class Accelerator:
    key: str  # spec.accelerator.type
    family: Literal["gpu", "tpu", "cpu"]
    gke_label: str  # value of gke-accelerator (GPU) or gke-tpu-accelerator (TPU); "" for CPU
    ray_type: str  # Ray Serve LLM `accelerator_type`; "" for CPU (Ray refuses one there)
    memory_gib: int  # HBM per GPU or per TPU chip; 0 for CPU
    machines: tuple[Machine, ...]  # GCE machine types that carry this accelerator (CPU: that serve well)
    arch: Literal["amd64", "arm64"] = "amd64"
    # Nodes carry cloud.google.com/gce-topology-{block,subblock,host} labels.
    topology_labels: bool = False
    # TPU only: valid slice topologies and the version string Ray uses ("v6e").
    topologies: tuple[str, ...] = ()
    tpu_version: str = ""
    # GKE requires a workload policy (placement_policy.policy_name) for multi-host slices.
    multihost_needs_workload_policy: bool = False

    @property
    def is_tpu(self) -> bool:
        return self.family == "tpu"

    @property
    def is_cpu(self) -> bool:
        return self.family == "cpu"

    @property
    def is_gpu(self) -> bool:
        return self.family == "gpu"

    @property
    def resource(self) -> str | None:
        """Extended resource a pod requests (nvidia.com/gpu, google.com/tpu); None for CPU."""
        return {"gpu": labels.GPU_RESOURCE, "tpu": labels.TPU_RESOURCE}.get(self.family)

    @property
    def node_label(self) -> str | None:
        """Node label naming the accelerator (value: gke_label); None for CPU."""
        return {"gpu": labels.GPU_ACCELERATOR, "tpu": labels.TPU_ACCELERATOR}.get(self.family)

    @property
    def taint_key(self) -> str | None:
        """Taint GKE puts on accelerator nodes; None for CPU."""
        return {"gpu": labels.GPU_TAINT_KEY, "tpu": labels.TPU_TAINT_KEY}.get(self.family)

    @property
    def max_per_node(self) -> int:
        return max(m.accelerators for m in self.machines)

    def machine(self, per_node: int) -> Machine | None:
        return next((m for m in self.machines if m.accelerators == per_node), None)

    def machine_type(self, per_node: int) -> str | None:
        m = self.machine(per_node)
        return m.name if m else None

    def node_size_for(self, count: int) -> int:
        """Smallest node size that holds `count` accelerators, or the largest node when it
        takes several nodes (a replica then spans count / max_per_node whole nodes)."""
        fitting = sorted(m.accelerators for m in self.machines if m.accelerators >= count)
        return fitting[0] if fitting else self.max_per_node


_A4 = _m(("a4-highgpu-8g", 8, 224, 3968))
# CPU serving: C3 (Intel Sapphire Rapids, AMX: what vLLM's CPU backend runs fastest on, the
# choice for production) and N2 (general purpose: development, small models). 4 GiB per vCPU.
_CPU_MACHINES = _m(
    *((f"c3-standard-{n}", 0, n, 4 * n) for n in (4, 8, 22, 44)),
    *((f"n2-standard-{n}", 0, n, 4 * n) for n in (2, 4, 8, 16, 32)),
)
_V5E_V6E_TOPOLOGIES = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
_3D_TOPOLOGIES = ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8")

ACCELERATORS: dict[str, Accelerator] = {
    a.key: a
    for a in (
        Accelerator("nvidia-b200", "gpu", "nvidia-b200", "B200", 180, _A4, topology_labels=True),
        Accelerator(
            "nvidia-h200",
            "gpu",
            "nvidia-h200-141gb",
            "H200",
            141,
            _m(("a3-ultragpu-8g", 8, 224, 2952)),
            topology_labels=True,
        ),
        Accelerator(
            "nvidia-h100",
            "gpu",
            "nvidia-h100-80gb",
            "H100",
            80,
            _m(
                ("a3-highgpu-1g", 1, 26, 234),
                ("a3-highgpu-2g", 2, 52, 468),
                ("a3-highgpu-4g", 4, 104, 936),
                ("a3-highgpu-8g", 8, 208, 1872),
            ),
        ),
        Accelerator(
            "nvidia-h100-mega",
            "gpu",
            "nvidia-h100-mega-80gb",
            "H100",
            80,
            _m(("a3-megagpu-8g", 8, 208, 1872)),
            topology_labels=True,
        ),
        Accelerator(
            "nvidia-gb200",
            "gpu",
            "nvidia-gb200",
            "GB200",
            186,
            _m(("a4x-highgpu-4g", 4, 140, 884)),
            arch="arm64",
            topology_labels=True,
        ),
        Accelerator(
            "nvidia-l4",
            "gpu",
            "nvidia-l4",
            "L4",
            24,
            _m(
                ("g2-standard-8", 1, 8, 32),
                ("g2-standard-24", 2, 24, 96),
                ("g2-standard-48", 4, 48, 192),
                ("g2-standard-96", 8, 96, 384),
            ),
        ),
        Accelerator(
            "tpu-v5e",
            "tpu",
            "tpu-v5-lite-podslice",
            "TPU-V5LITEPOD",
            16,
            _m(("ct5lp-hightpu-1t", 1, 24, 48), ("ct5lp-hightpu-4t", 4, 112, 192), ("ct5lp-hightpu-8t", 8, 224, 384)),
            topologies=_V5E_V6E_TOPOLOGIES,
            tpu_version="v5litepod",
        ),
        Accelerator(
            "tpu-v6e",
            "tpu",
            "tpu-v6e-slice",
            "TPU-V6E",
            32,
            _m(("ct6e-standard-1t", 1, 44, 176), ("ct6e-standard-4t", 4, 180, 720), ("ct6e-standard-8t", 8, 180, 1440)),
            topologies=_V5E_V6E_TOPOLOGIES,
            tpu_version="v6e",
        ),
        Accelerator(
            "tpu-v5p",
            "tpu",
            "tpu-v5p-slice",
            "TPU-V5P",
            95,
            _m(("ct5p-hightpu-4t", 4, 208, 448)),
            topologies=_3D_TOPOLOGIES,
            tpu_version="v5p",
        ),
        Accelerator(
            "tpu-7x",
            "tpu",
            "tpu7x",
            "TPU-V7X",
            192,
            _m(("tpu7x-standard-4t", 4, 224, 960)),
            topologies=_3D_TOPOLOGIES,
            tpu_version="v7x",
            multihost_needs_workload_policy=True,
        ),
        Accelerator("cpu", "cpu", "", "", 0, _CPU_MACHINES),
    )
}


def machine_by_name(name: str) -> tuple[Accelerator, Machine]:
    for acc in ACCELERATORS.values():
        for m in acc.machines:
            if m.name == name:
                return acc, m
    raise KeyError(name)


def get(key: str) -> Accelerator:
    return ACCELERATORS[key]


def gpu_types() -> list[str]:
    return [k for k, a in ACCELERATORS.items() if a.is_gpu]


def tpu_types() -> list[str]:
    return [k for k, a in ACCELERATORS.items() if a.is_tpu]


# Machine series that boot from Persistent Disk only (no Hyperdisk Balanced).
_PD_ONLY_SERIES = ("n1-", "n2-", "n2d-", "e2-")


def boot_disk_type(machine_type: str) -> str:
    """The boot disk a node pool of `machine_type` gets unless the spec names one."""
    return "pd-balanced" if machine_type.startswith(_PD_ONLY_SERIES) else "hyperdisk-balanced"


def cpu_types() -> list[str]:
    return [k for k, a in ACCELERATORS.items() if a.is_cpu]


def cpu_machines() -> list[Machine]:
    return [m for a in ACCELERATORS.values() if a.is_cpu for m in a.machines]


def cpu_machine_for(cpu: float, memory_gib: float) -> Machine | None:
    """The smallest catalog CPU machine (fewest vCPUs, then least memory; C3 before N2 on a
    tie) with room for one pod of `cpu` cores and `memory_gib`."""
    fitting = [m for m in cpu_machines() if m.holds(cpu, memory_gib) >= 1]
    return min(fitting, key=lambda m: (m.vcpus, m.memory_gib), default=None)
