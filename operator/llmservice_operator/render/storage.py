"""How the Ray pods reach the model's weights and adapters: the Hub, S3 and GCS settings of
spec.model, as the environment their real clients read (huggingface_hub, boto3 and pyarrow in
Ray Serve LLM's loader, the Run:ai streamer in vLLM), and the URIs Ray is given.

Every value comes from a spec field a user sets for real (a mirror, MinIO, a public bucket), so
the tests' stand-ins are reached through the same fields.
"""

from __future__ import annotations

from typing import Any

from ..api.spec import LLMServiceSpec
from . import ray_hooks
from .plan import parse_source

# Keys of model.storage.s3.credentialsSecret: the names boto3 and the streamer read.
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_SESSION_TOKEN",)
STREAMER_FORMAT = "runai_streamer"


def storage_env(spec: LLMServiceSpec) -> dict[str, str]:
    """Plain environment for every Ray container."""
    m = spec.model
    env: dict[str, str] = {}
    if m.hf_endpoint:
        env["HF_ENDPOINT"] = m.hf_endpoint
    if s3 := m.storage.s3:
        if s3.endpoint:
            # boto3 and Ray's pyarrow S3 read the first; the Run:ai streamer the second.
            env["AWS_ENDPOINT_URL_S3"] = s3.endpoint
            env["RUNAI_STREAMER_S3_ENDPOINT"] = s3.endpoint
        if s3.region:
            env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = s3.region
    if m.node_cache:
        env["HF_HUB_CACHE"] = HF_HUB_CACHE
        if parse_source(m.source).scheme in ("gs", "s3"):
            # The operator's callback keeps the bucket folder there (render/ray_hooks.py).
            env[ray_hooks.BUCKET_CACHE_ENV] = BUCKET_CACHE
    if gcs := m.storage.gcs:
        if gcs.endpoint:
            # pyarrow's GcsFileSystem and the streamer (google-cloud-cpp) read the first, the
            # google-cloud-storage library the second.
            env["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = gcs.endpoint
            env["STORAGE_EMULATOR_HOST"] = gcs.endpoint
        if gcs.anonymous:
            env["RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS"] = "true"
    return env


def storage_secret_env(spec: LLMServiceSpec) -> list[dict[str, Any]]:
    """Environment from model.storage.s3.credentialsSecret."""
    s3 = spec.model.storage.s3
    if not s3 or not s3.credentials_secret:
        return []
    out = []
    for key in (*S3_KEYS, *S3_OPTIONAL_KEYS):
        ref: dict[str, Any] = {"name": s3.credentials_secret, "key": key}
        if key in S3_OPTIONAL_KEYS:
            ref["optional"] = True
        out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return out


def bucket_uri(spec: LLMServiceSpec, uri: str, *, streamed: bool = False) -> str:
    """`uri` as Ray's loader reads it: pyarrow reads a gs:// bucket without credentials only when
    told so in the URI (gs://anonymous@bucket/...). The streamer is told by its environment
    instead, and takes the plain URI."""
    gcs = spec.model.storage.gcs
    if uri.startswith("gs://") and gcs and gcs.anonymous and not streamed:
        return "gs://anonymous@" + uri.removeprefix("gs://")
    return uri


def loading_kwargs(spec: LLMServiceSpec, hf_source: bool) -> dict[str, Any]:
    """vLLM engine arguments for where the weights come from."""
    m = spec.model
    kwargs: dict[str, Any] = {}
    if m.load_format == "stream":
        kwargs["load_format"] = STREAMER_FORMAT
    if m.revision and hf_source:
        kwargs["revision"] = m.revision
        if not m.tokenizer:  # the tokenizer is the model's own: the same commit
            kwargs["tokenizer_revision"] = m.revision
    return kwargs


# GKE's Cloud Storage FUSE CSI driver (GoogleCloudPlatform/gcs-fuse-csi-driver): the pod
# annotation that injects its sidecar, and the sidecar's limits, "0" for none (GKE Standard;
# Autopilot needs values: set them in ray.workerPods.annotations, which win).
GCSFUSE_DRIVER = "gcsfuse.csi.storage.gke.io"
GCSFUSE_ANNOTATIONS = {
    "gke-gcsfuse/volumes": "true",
    "gke-gcsfuse/cpu-limit": "0",
    "gke-gcsfuse/memory-limit": "0",
    "gke-gcsfuse/ephemeral-storage-limit": "0",
}
# Reads of whole safetensors files: listed folders without placeholder objects, a file cache as
# large as its volume (the sidecar's emptyDir on the node's disk), filled by parallel downloads.
GCSFUSE_MOUNT_OPTIONS = ("implicit-dirs", "file-cache:enable-parallel-downloads:true")


def gcsfuse_volume(uri: str) -> dict[str, Any]:
    """A read-only inline CSI volume of the gs:// folder `uri` (only that folder is mounted)."""
    bucket, _, folder = uri.removeprefix("gs://").partition("/")
    options = list(GCSFUSE_MOUNT_OPTIONS) + ([f"only-dir={folder.strip('/')}"] if folder.strip("/") else [])
    attributes = {"bucketName": bucket, "mountOptions": ",".join(options), "fileCacheCapacity": "-1"}
    return {"driver": GCSFUSE_DRIVER, "readOnly": True, "volumeAttributes": attributes}


# model.nodeCache: the node's directory, mounted in every Ray container as the Hugging Face cache.
NODE_CACHE_VOLUME = "model-cache"
NODE_CACHE_MOUNT = "/mnt/model-cache"
HF_HUB_CACHE = f"{NODE_CACHE_MOUNT}/hub"
BUCKET_CACHE = f"{NODE_CACHE_MOUNT}/buckets"
RAY_UID = 1000  # the Ray images' user (rayproject/ray and images/ray-cpu)


def node_cache_volume(spec: LLMServiceSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The node directory as a volume and its mount; None without model.nodeCache."""
    cache = spec.model.node_cache
    if cache is None:
        return None
    volume = {"name": NODE_CACHE_VOLUME, "hostPath": {"path": cache.path, "type": "DirectoryOrCreate"}}
    return volume, {"name": NODE_CACHE_VOLUME, "mountPath": NODE_CACHE_MOUNT}


def node_cache_owner(image: str) -> dict[str, Any]:
    """An init container that gives the cache to the Ray user: the kubelet creates a missing
    hostPath directory as root, and Ray runs as RAY_UID. huggingface_hub's own file locks in
    the cache, and the callback's for bucket folders, keep two pods from fetching the same
    files at once."""
    return {
        "name": "model-cache-owner",
        "image": image,
        "command": ["install", "-d", "-o", str(RAY_UID), "-g", str(RAY_UID), HF_HUB_CACHE, BUCKET_CACHE],
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": NODE_CACHE_VOLUME, "mountPath": NODE_CACHE_MOUNT}],
    }
