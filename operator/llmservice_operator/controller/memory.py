"""Give freed memory back to the OS once the fleet has shrunk.

CPython frees the objects of deleted services, but glibc keeps the freed heap pages for reuse,
so the operator's RSS stays at the largest fleet it has seen. `malloc_trim` returns the free
ones; called when the cache has halved, it costs milliseconds a few times per mass deletion.
Pages that still hold a few long-lived objects stay (pymalloc's arenas above all), so the
operator image runs every allocation through jemalloc with one arena and no thread caches
(Dockerfile ENV), which gives freed pages back by itself within a second; there this call only
collects garbage. Measured at 1000 services: RSS after deleting them 5% above the start, 13-14%
with jemalloc's default arenas and thread caches, 36-41% with glibc's allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

_trim: Any
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
    _trim = None


def release() -> None:
    gc.collect()
    if _trim is not None:
        _trim(0)
