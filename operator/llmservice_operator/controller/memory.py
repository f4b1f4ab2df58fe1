"""Give freed memory back to the OS once the fleet has shrunk.

CPython frees the objects of deleted services, but glibc keeps the freed heap pages for reuse,
so the operator's RSS stays at the largest fleet it has seen. `malloc_trim` returns them;
called when the cache has halved, it costs milliseconds a few times per mass deletion.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
    _trim = None


def release() -> None:
    gc.collect()
    if _trim is not None:
        _trim(0)
