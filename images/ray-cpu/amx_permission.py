"""Asks Linux for the AMX tile state in every Python process of the image, at start-up.

On CPUs with AMX (Intel Sapphire Rapids and later: GCE C3, C4, N4), a process must request the
tile state once (arch_prctl ARCH_REQ_XCOMP_PERM) before it runs an AMX instruction, or the
kernel kills it with SIGILL. vLLM's CPU worker, a process of its own, runs AMX kernels
(`tilezero`, seen in a core dump) without having asked when the first request is short, so
"x = 1" killed the engine ("Worker proc VllmWorker-0 died unexpectedly (exit code: -4)") and
every later request got a 500 until Serve replaced the replica. Asking here, while the
interpreter still has one thread, always succeeds where AMX exists and is a no-op elsewhere.
Installed as a .pth file's import (install.sh), so it runs before any user code.
"""

import ctypes
import platform

_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

if platform.machine() == "x86_64":
    ctypes.CDLL(None, use_errno=True).syscall(_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)
