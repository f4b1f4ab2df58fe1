"""The CPU serving image's Python environment as a virtualenv on this host, for the data-path
harness: the same pinned Ray, Ray Serve LLM requirements and vLLM (images/ray-cpu/
requirements.txt, installed with --no-deps from the same wheel cache) and the same CUDA stubs,
so the harness runs real vLLM through `build_openai_app` without a container.

    python -m e2e.build.engine      # build (or reuse) and print its path
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e.bins import cache_root

from . import image

STAMP = ".complete"
# The image's ENV that matters to the engine (see images/ray-cpu/Dockerfile).
ENV = {"TORCHDYNAMO_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _inputs() -> list[Path]:
    ctx = image.RAY_CPU.context
    return [ctx / "requirements.txt", ctx / "cuda_stubs.py", ctx / "amx_permission.py", Path(__file__)]


def path() -> Path:
    h = hashlib.sha256()
    for p in _inputs():
        h.update(p.read_bytes())
    return cache_root() / "venvs" / f"ray-cpu-{h.hexdigest()[:16]}"


def ready() -> bool:
    return (path() / STAMP).exists()


def ensure() -> Path:
    root = path()
    if ready():
        return root
    wheels = image.download_wheels(image.RAY_CPU)
    shutil.rmtree(root, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter, not the dev venv's
    subprocess.run([base, "-m", "venv", "--without-pip", str(root)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "-q", "--no-deps",
         "--no-index", "--find-links", str(wheels), "-r", str(image.RAY_CPU.context / "requirements.txt")],
        check=True,
    )  # fmt: skip
    site = next((root / "lib").glob("python3.*/site-packages"))
    # As install.sh does in the image: the CUDA stubs, and every process asking for AMX first.
    for script in ("cuda_stubs.py", "amx_permission.py"):
        subprocess.run([str(root / "bin" / "python"), str(image.RAY_CPU.context / script), str(site)], check=True)
    for stale in root.parent.glob("ray-cpu-*"):
        if stale != root:
            shutil.rmtree(stale, ignore_errors=True)
    (root / STAMP).write_text("")
    return root


def run_json(script: str, payload: Any, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run `script` (Python source) in the engine venv with `payload` as JSON on stdin; what it
    printed last, as JSON. Raises with the stderr tail when it fails."""
    res = subprocess.run(
        [str(ensure() / "bin" / "python"), "-c", script], input=json.dumps(payload), capture_output=True,
        text=True, timeout=timeout, env={**os.environ, **ENV, **(env or {})},
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"engine venv script exited {res.returncode}:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.splitlines()[-1])


def main() -> None:
    start, cached = time.monotonic(), ready()
    root = ensure()
    print(f"engine venv {'cached' if cached else 'built'} in {time.monotonic() - start:.1f}s: {root}")


if __name__ == "__main__":
    main()
