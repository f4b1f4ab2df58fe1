"""`make images`: everything the local cluster's real node runs, built offline and cached.

python -m e2e.build   # pause image, CPU serving image, operator image, tiny model + LoRA

The operator image changes with every commit, but only its top layer (the operator's package,
about a second): its dependencies' root is rebuilt only when they change.
"""

from __future__ import annotations

import time

from . import engine, image, model


def main() -> None:
    start = time.monotonic()
    images = [(image.PAUSE, image.build_pause), (image.RAY_CPU, image.build), (image.OPERATOR, image.build)]
    for recipe, build in images:
        t, cached = time.monotonic(), recipe.ready
        path = build(recipe)
        how = "cached" if cached else "built"
        print(f"{recipe.name:<42} {how} {time.monotonic() - t:6.1f}s {path.stat().st_size / 2**20:7.0f} MiB  {path}")
    built = model.ensure()
    print(f"{'tiny model + LoRA':<42} {'cached' if built.cached else 'built'} {built.seconds:6.1f}s  {built.root}")
    t, cached = time.monotonic(), engine.ready()
    root = engine.ensure()
    how = "cached" if cached else "built"
    print(f"{'engine venv (data-path harness)':<42} {how} {time.monotonic() - t:6.1f}s  {root}")
    print(f"total {time.monotonic() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
