"""Fills vLLM's model-info cache for every architecture it registers, at image build time.

Before vLLM builds an engine it inspects the model's class (`ModelRegistry.inspect_model_cls`).
On a cache miss it does that in a fresh Python subprocess that imports vLLM and torch again,
which costs seconds on every cold start of every replica, because a new container's cache
(`$VLLM_CACHE_ROOT/modelinfos`) is always empty. The cache is keyed by a hash of the model's
module file, so entries made here stay valid for the image's own vLLM and are ignored if a
user's image changes the code. Here the inspection runs in this one process, once per
architecture, through vLLM's own lookup and save.

Usage: python modelinfo_cache.py <cache root>   (vLLM's VLLM_CACHE_ROOT, e.g. ~/.cache/vllm)
"""

from __future__ import annotations

import os
import sys


def main(cache_root: str) -> None:
    os.environ["VLLM_CACHE_ROOT"] = cache_root
    from vllm.model_executor.models import registry

    # The subprocess exists to keep CUDA uninitialised in a serving process; this one only
    # builds the cache and exits.
    registry._run_in_subprocess = lambda fn: fn()
    done, failed = 0, []
    for arch, model in sorted(registry.ModelRegistry.models.items()):
        if not isinstance(model, registry._LazyRegisteredModel):
            continue
        try:
            model.inspect_model_cls()
            done += 1
        except Exception as e:  # an architecture whose optional dependency is absent here
            failed.append(f"{arch} ({type(e).__name__})")
    print(f"vLLM model-info cache: {done} architectures in {cache_root}/modelinfos; skipped {len(failed)}")
    if not done:
        sys.exit("no architecture could be inspected: vLLM's registry API changed?")


if __name__ == "__main__":
    main(sys.argv[1])
