"""Asks Linux for the AMX tile state in every Python process of the image, at start-up.

On CPUs with AMX (Intel Sapphire Rapids and later: GCE C3, C4, N4), a process must request the
tile state once (arch_prctl ARCH_REQ_XCOMP_PERM) before it runs an AMX instruction, or the
kernel kills it with SIGILL. vLLM's CPU worker, a process of its own, runs AMX kernels
(`tilezero`, seen in a core dump) without having asked when the first request is short, so
"x = 1" killed the engine ("Worker proc VllmWorker-0 died unexpectedly (exit code: -4)") and
every later request got a 500 until Serve replaced the replica. Asking here, while the
interpreter still has one thread, always succeeds where AMX exists and is a no-op elsewhere.

Usage: python3 amx_permission.py <site-packages>   (install.sh, and e2e/build/engine.py for
the host's engine venv): copies this file there with a .pth line that imports it, so it runs
at every interpreter start, before any user code.
"""

import ctypes
import platform
import sys
from pathlib import Path

MODULE = "llmservice_amx_permission"
_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def request() -> None:
    if platform.machine() == "x86_64":
        ctypes.CDLL(None, use_errno=True).syscall(_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)


def install(site: Path) -> None:
    (site / f"{MODULE}.py").write_text(Path(__file__).read_text())
    (site / f"{MODULE}.pth").write_text(f"import {MODULE}\n")


if __name__ == "__main__":
    install(Path(sys.argv[1]))
else:
    request()
