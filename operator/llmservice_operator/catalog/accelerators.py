"""The accelerators an LLMService can ask for, keyed by `spec.accelerator.type`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import labels


@dataclass(frozen=True)
class Machine:
    name: str
    accelerators: int  # GPUs, or TPU chips per host
    vcpus: int
    memory_gib: int


def _m(*specs: tuple[str, int, int, int]) -> tuple[Machine, ...]:
    return tuple(Machine(*s) for s in specs)


@dataclass(frozen=True)
class Accelerator:
    key: str  # spec.accelerator.type
    family: Literal["gpu", "tpu"]
    gke_label: str  # value of gke-accelerator (GPU) or gke-tpu-accelerator (TPU)
    ray_type: str  # Ray Serve LLM `accelerator_type`
    memory_gib: int  # HBM per GPU or per TPU chip
    machines: tuple[Machine, ...]  # GCE machine types that carry this accelerator
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
    def resource(self) -> str:
        return labels.TPU_RESOURCE if self.is_tpu else labels.GPU_RESOURCE

    @property
    def node_label(self) -> str:
        return labels.TPU_ACCELERATOR if self.is_tpu else labels.GPU_ACCELERATOR

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
    return [k for k, a in ACCELERATORS.items() if not a.is_tpu]


def tpu_types() -> list[str]:
    return [k for k, a in ACCELERATORS.items() if a.is_tpu]
