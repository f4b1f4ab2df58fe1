"""llmservice-operator's Ray Serve LLM callbacks, imported by replicas (render/ray_hooks.py says why)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.llm._internal.common.callbacks.base import CallbackBase

# Under vLLM's logger: its lines reach the replica's stdout, where the operator reads the start's
# steps (render/startup.py, ENGINE_STEPS), in vLLM's format.
logger = logging.getLogger("vllm.llmservice")
FETCHED = "model files fetched in the replica's own process"


def _nodes_of(placement_group: Any) -> set[str] | None:
    """The nodes the placement group's bundles are on, None when that cannot be read (then
    Ray's own fetch runs)."""
    try:
        table = ray.util.placement_group_table(placement_group)
        return set(table["bundles_to_node_id"].values())
    except Exception:  # a slice placement group, or a Ray that stores it elsewhere
        return None


class ReplicaInit(CallbackBase):
    """Before the engine starts: the model files fetched in the replica's own process."""

    async def on_before_node_init(self) -> None:
        here = ray.get_runtime_context().get_node_id()
        if _nodes_of(self.ctx.placement_group) != {here}:
            return
        from ray.llm._internal.serve.utils.node_initialization_utils import initialize_remote_node

        # The function Ray's task runs, with the same callback (this one: cached per process). In
        # this process it also points the engine config (cached too) at the local copy itself.
        path = await asyncio.to_thread(initialize_remote_node, self.llm_config)
        self.ctx.run_init_node = False
        logger.info("%s: %s", FETCHED, path)
