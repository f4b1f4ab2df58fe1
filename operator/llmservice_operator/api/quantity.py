"""Kubernetes quantities the spec's patterns allow, parsed the way CEL's quantity library does."""

from __future__ import annotations

import math
import re

_BINARY = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
GIB = 1024**3


def cpu_cores(q: str) -> float:
    """ "8" -> 8.0, "1.5" -> 1.5, "500m" -> 0.5 (`quantity(q).asApproximateFloat()` in CEL)."""
    if q.endswith("m"):
        return int(q[:-1]) / 1000
    return float(q)


def ray_cpus(q: str) -> int:
    """The CPUs Ray sees in a pod requesting `q`: KubeRay rounds a CPU quantity up (500m -> 1)."""
    return math.ceil(cpu_cores(q))


def memory_bytes(q: str) -> int:
    m = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|Ti)?", q)
    if not m:
        raise ValueError(f"not a memory quantity: {q!r}")
    return int(m.group(1)) * _BINARY[m.group(2) or ""]
