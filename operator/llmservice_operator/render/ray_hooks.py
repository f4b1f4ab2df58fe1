"""The operator's Ray Serve LLM callbacks (templates/llmservice_ray_hooks.py), delivered to every
Ray container of any image: the module's source is a pod template annotation, projected as a
file by a downward API volume on PYTHONPATH. So no image of ours is needed, and the file lives
exactly as long as the pods that import it (no child object to keep until old pods are gone).

The callback, `ReplicaInit`: Ray Serve LLM fetches a replica's model files in a Ray task on
each node of the replica's placement group (`initialize_node`). That task is a fresh Python that
imports torch, transformers and vLLM again before it looks at a single file (20-35 s of CPU on a
2-core node, and 0.7 GB its idle worker keeps), even for a pvc:// model it does not copy. When
every bundle is on the replica's own node, the callback runs the same fetch in the replica,
which has imported all of that already. Across nodes (multi-host TPU slices, pipeline
parallelism over nodes) Ray's task runs as before.

For a gs:// or s3:// model (loadFormat download) it lists the bucket folder first, so a wrong
bucket, path or credential stops the replica with one line that names the field to fix
(`ModelSourceError`, shown as is in the status). With model.nodeCache it keeps the folder on
the node, keyed by its URI and what the bucket lists: a later replica on the node reads that
copy (Ray's own loader downloads again every time), one pod of the node downloads while the
others wait on a lock, and a changed bucket is fetched again. (vLLM on CPU keeps its multiprocessing
executor even when asked for the in-process one: OMP needs it, platforms/cpu.py.)
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from .. import labels as keys

MODULE = "llmservice_ray_hooks"
DIR = "/opt/llmservice/ray-hooks"
VOLUME = "llmservice-ray-hooks"
# A replica's start without Ray's node-initialization task (see above).
CALLBACK = f"{MODULE}:ReplicaInit"
# What the callback logs once it fetched the files (its own FETCHED): the start's ModelFetched step.
FETCHED = "model files fetched in the replica's own process"
# Where the callback keeps gs:// and s3:// model folders on the node (model.nodeCache), as its
# own BUCKET_CACHE_ENV names it.
BUCKET_CACHE_ENV = "LLMSERVICE_BUCKET_CACHE"
# The exception class the callback raises for a bucket model it cannot read.
SOURCE_ERROR = "ModelSourceError"


@cache
def source() -> str:
    return resources.files(__package__).joinpath("templates", f"{MODULE}.py").read_text()


def pod_annotations() -> dict[str, str]:
    return {keys.RAY_HOOKS_ANNOTATION: source()}


def volume() -> dict[str, Any]:
    field = {"fieldPath": f"metadata.annotations['{keys.RAY_HOOKS_ANNOTATION}']"}
    return {"name": VOLUME, "downwardAPI": {"items": [{"path": f"{MODULE}.py", "fieldRef": field}]}}


def mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": DIR, "readOnly": True}


def pythonpath(users: str | None) -> str:
    """The hooks' directory after what the user's spec.ray.env puts on PYTHONPATH."""
    return f"{users}:{DIR}" if users else DIR
