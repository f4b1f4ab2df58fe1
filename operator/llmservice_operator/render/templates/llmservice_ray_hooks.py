"""llmservice-operator's Ray Serve LLM callbacks, imported by replicas (render/ray_hooks.py says why)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.llm._internal.common.callbacks.base import CallbackBase

# Under vLLM's logger: its lines reach the replica's stdout, where the operator reads the start's
# steps (render/startup.py, ENGINE_STEPS), in vLLM's format.
logger = logging.getLogger("vllm.llmservice")
FETCHED = "model files fetched in the replica's own process"
# The node directory for bucket models (model.nodeCache with a gs:// or s3:// source), if any.
BUCKET_CACHE_ENV = "LLMSERVICE_BUCKET_CACHE"
COMPLETE = ".complete"  # written last: a version directory without it is not used


class ModelSourceError(RuntimeError):
    """A bucket model that cannot be read, said with the field to fix (the operator's status
    shows the line as it is)."""


def _nodes_of(placement_group: Any) -> set[str] | None:
    """The nodes the placement group's bundles are on, None when that cannot be read (then
    Ray's own fetch runs)."""
    try:
        table = ray.util.placement_group_table(placement_group)
        return set(table["bundles_to_node_id"].values())
    except Exception:  # a slice placement group, or a Ray that stores it elsewhere
        return None


def _as_written(uri: str) -> str:
    """The URI as the spec has it: the render adds `anonymous@` for Ray's pyarrow loader."""
    return uri.replace("://anonymous@", "://")


def listing(uri: str) -> list[tuple[str, int, int]]:
    """(path under the folder, size, mtime in ns) of each object under the bucket folder `uri`,
    through the client Ray's loader uses (pyarrow, with the pod's endpoint and credentials).
    Raises ModelSourceError naming what is wrong."""
    from pyarrow import fs as pa_fs
    from ray.llm._internal.common.utils.cloud_filesystem.pyarrow_filesystem import PyArrowFileSystem

    shown = _as_written(uri)
    field = f"spec.model.source {shown}"
    creds = "spec.model.storage.s3.credentialsSecret" if uri.startswith("s3://") else "spec.ray.serviceAccountName"
    fs, root = PyArrowFileSystem.get_fs_and_path(uri)
    root = root.rstrip("/")
    bucket = root.split("/")[0]
    try:
        if fs.get_file_info(bucket).type == pa_fs.FileType.NotFound:
            raise ModelSourceError(f"{field}: there is no bucket {bucket}; check the name")
        infos = fs.get_file_info(pa_fs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as e:
        said = str(e).splitlines()[0] if str(e) else type(e).__name__
        if any(w in said for w in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                   "403", "401", "Forbidden", "credentials")):  # fmt: skip
            raise ModelSourceError(f"{creds}: reading {shown} was refused ({said})") from e
        raise ModelSourceError(f"{field}: the bucket could not be listed ({said})") from e
    files = sorted(
        (i.path[len(root) :].lstrip("/"), int(i.size or 0), int(i.mtime_ns or 0))
        for i in infos
        if i.type == pa_fs.FileType.File and not i.path.endswith("/")
    )
    if not files:
        raise ModelSourceError(f"{field}: bucket {bucket} has no object under this folder; check the path")
    if not any(p == "config.json" or p.endswith("/config.json") for p, _, _ in files):
        found = ", ".join(p for p, _, _ in files[:5])
        raise ModelSourceError(f"{field}: not a model folder, it has no config.json (found: {found})")
    return files


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the node: pods of one node share the cache directory."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(uri: str, root: Path) -> tuple[Path, bool]:
    """The bucket folder's files in the node cache `root`, downloaded unless the cache holds
    them as the bucket lists them now (same paths, sizes and modification times): the local
    folder, and whether it was there already. One pod of the node downloads, the others wait
    for it; other versions of the same folder are removed once the new one is complete."""
    from ray.llm._internal.common.utils.cloud_utils import CloudFileSystem

    files = listing(uri)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    version = hashlib.sha256(repr(files).encode()).hexdigest()[:16]
    base = root / key
    final = base / version
    if (final / COMPLETE).exists():
        return final, True
    base.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock"):
        if (final / COMPLETE).exists():  # another pod of the node fetched it meanwhile
            return final, True
        partial = base / f".partial-{os.getpid()}"
        for old in base.iterdir():  # an older version, a dead pod's partial download or an incomplete copy
            shutil.rmtree(old, ignore_errors=True)
        try:
            CloudFileSystem.download_files(path=str(partial), bucket_uri=uri)
            # Only a whole copy is kept: a short one would be served until the bucket changes.
            short = [p for p, size, _ in files if not (partial / p).is_file() or (partial / p).stat().st_size != size]
            if short:
                raise ModelSourceError(
                    f"spec.model.source {_as_written(uri)}: {len(short)} of {len(files)} files did not download whole "
                    f"({', '.join(short[:3])})"
                )
            (partial / COMPLETE).write_text(f"{uri}\n")
            partial.rename(final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return final, False


def _torch_kernels_dir() -> None:
    """What Ray's fetch does first (download_model_files): torch cannot create its kernels
    directory when the parent is missing."""
    import torch

    os.makedirs(os.path.join(torch.hub._get_torch_home(), "kernels"), exist_ok=True)


def _bucket_source(llm_config: Any) -> str | None:
    """The bucket folder Ray's loader would download the model from; None for other sources
    and for the streamer, which reads the bucket itself."""
    engine = llm_config.get_engine_config()
    mirror = getattr(engine, "mirror_config", None)
    uri = getattr(mirror, "bucket_uri", None)
    if not uri or (llm_config.engine_kwargs or {}).get("load_format") == "runai_streamer":
        return None
    return str(uri)


class ReplicaInit(CallbackBase):
    """Before the engine starts: the model files fetched in the replica's own process."""

    async def on_before_node_init(self) -> None:
        here = ray.get_runtime_context().get_node_id()
        config = self.llm_config
        if config is None or _nodes_of(self.ctx.placement_group) != {here}:
            return
        from ray.llm._internal.serve.utils.node_initialization_utils import initialize_remote_node

        uri = _bucket_source(config)
        cache = os.environ.get(BUCKET_CACHE_ENV)
        if uri and cache:
            folder, hit = await asyncio.to_thread(cached, uri, Path(cache))
            _torch_kernels_dir()
            # The engine config is cached per process: vLLM loads from the node's copy.
            engine: Any = config.get_engine_config()
            engine.hf_model_id = str(folder)
            self.ctx.run_init_node = False
            logger.info("%s: %s (node cache: %s)", FETCHED, folder, "hit" if hit else "downloaded")
            return
        if uri:  # a clear error for a wrong bucket, path or credentials, before Ray's download
            await asyncio.to_thread(listing, uri)
        # The function Ray's task runs, with the same callback (this one: cached per process). In
        # this process it also points the engine config (cached too) at the local copy itself.
        path = await asyncio.to_thread(initialize_remote_node, config)
        self.ctx.run_init_node = False
        logger.info("%s: %s", FETCHED, path)
