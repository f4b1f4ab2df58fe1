"""TPU slice arithmetic: chips, chips per host and hosts per slice from a topology."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .accelerators import Accelerator


@dataclass(frozen=True)
class TpuSlice:
    topology: str
    chips: int
    chips_per_host: int
    machine_type: str

    @property
    def hosts(self) -> int:
        return self.chips // self.chips_per_host

    @property
    def multi_host(self) -> bool:
        return self.hosts > 1


def chips_in(topology: str) -> int:
    return math.prod(int(d) for d in topology.split("x"))


def tpu_slice(acc: Accelerator, topology: str) -> TpuSlice:
    """Single-host machines hold the whole slice when one exists with exactly that many chips
    (v5e/v6e 1x1, 2x2, 2x4); larger slices use 4-chip hosts. Ray makes the same choice
    (ray._private.accelerators.tpu.get_chips_per_host), so both sides agree on host counts."""
    if topology not in acc.topologies:
        raise ValueError(f"{topology!r} is not a {acc.key} topology; valid: {', '.join(acc.topologies)}")
    chips = chips_in(topology)
    per_host = chips if acc.machine_type(chips) else 4
    machine = acc.machine_type(per_host)
    assert machine, f"catalog: {acc.key} has no {per_host}-chip machine"
    return TpuSlice(topology, chips, per_host, machine)
