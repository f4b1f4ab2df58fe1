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


def _one_process_engine(engine_config: Any) -> None:
    """On CPU Ray Serve LLM always asks vLLM for its multiprocessing executor, which spawns one
    more Python (importing torch and vLLM again) to run the model beside the engine core. With a
    world of one process vLLM's own choice is its in-process executor: the model then runs in
    the engine core's process. Patched on the class: each replica is its own process."""
    cls = type(engine_config)
    original = cls.get_initialization_kwargs
    if getattr(original, "llmservice", False):
        return

    def get_initialization_kwargs(self: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = original(self)
        ranks = [kwargs.get(k) or 1 for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")]
        if kwargs.get("distributed_executor_backend") == "mp" and ranks == [1, 1, 1]:
            kwargs["distributed_executor_backend"] = "uni"
        return kwargs

    get_initialization_kwargs.llmservice = True  # type: ignore[attr-defined]
    cls.get_initialization_kwargs = get_initialization_kwargs


class ReplicaInit(CallbackBase):
    """Before the engine starts: one process for the model, and its files fetched in place."""

    async def on_before_node_init(self) -> None:
        _one_process_engine(self.llm_config.get_engine_config())
        here = ray.get_runtime_context().get_node_id()
        if _nodes_of(self.ctx.placement_group) != {here}:
            return
        from ray.llm._internal.serve.utils.node_initialization_utils import initialize_remote_node

        # The function Ray's task runs, with the same callback (this one: cached per process). In
        # this process it also points the engine config (cached too) at the local copy itself.
        path = await asyncio.to_thread(initialize_remote_node, self.llm_config)
        self.ctx.run_init_node = False
        logger.info("%s: %s", FETCHED, path)
