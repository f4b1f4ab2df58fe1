"""LLMService spec: typed models with defaults. The CRD schema is generated from these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ..catalog import ACCELERATORS

if TYPE_CHECKING:  # the catalog's keys, a Literal built at import: a plain str to the type checker
    AcceleratorType = str
else:
    AcceleratorType = Literal[tuple(ACCELERATORS)]

# Hugging Face id (org/name), gs://bucket/path, s3://bucket/path, pvc://claim[/path].
SOURCE_PATTERN = (
    r"^([A-Za-z0-9][\w.-]*/[\w.-]+|(gs|s3)://[a-z0-9][a-z0-9._-]+(/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?)$"
)
REMOTE_PATTERN = r"^(gs|s3)://[a-z0-9][a-z0-9._-]+(/.*)?$"
K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
SIZE_PATTERN = r"^[0-9]+(Ki|Mi|Gi)?$"
CIDR_PATTERN = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$|^[0-9a-fA-F:]+/[0-9]{1,3}$"
# The longest context any open model advertises (Llama 4 Scout: 10M tokens); the model's own
# limit is vLLM's to check at engine start (the operator never reads the weights' config).
MAX_MODEL_LEN = 10 * 2**20
MAX_POD_ENTRIES = 32  # labels, annotations, selectors, tolerations, secret env, source ranges


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(Model):
    """A key in a Secret in the LLMService's namespace."""

    name: Annotated[str, Field(pattern=K8S_NAME, max_length=253, description="Secret name.")]
    key: str = Field("token", description="Key inside the Secret.")


class SecretEnvRef(Model):
    """A key in a Secret in the LLMService's namespace, exposed as an environment variable."""

    name: Annotated[str, Field(pattern=K8S_NAME, max_length=253, description="Secret name.")]
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key inside the Secret.")]


class LoraSpec(Model):
    """Multi-LoRA serving: adapters are loaded on demand from a bucket prefix."""

    source: str = Field(
        pattern=REMOTE_PATTERN,
        description="Bucket prefix holding one folder per adapter (gs://... or s3://...). "
        "Requests name an adapter as `<model name>:<adapter folder>`.",
    )
    max_adapters_per_replica: int = Field(16, ge=1, description="Adapters kept loaded per replica.")


URL_PATTERN = r"^https?://[^\s/]+(/\S*)?$"
# A Hugging Face branch, tag or commit.
REVISION_PATTERN = r"^[A-Za-z0-9][-\w./]{0,127}$"


class S3Storage(Model):
    """How the Ray pods reach s3:// models and adapters."""

    endpoint: str | None = Field(
        None,
        pattern=URL_PATTERN,
        max_length=512,
        description="An S3-compatible store instead of AWS (MinIO, Ceph, Cloudflare R2), e.g. "
        "http://minio.storage:9000. Set as AWS_ENDPOINT_URL_S3 and RUNAI_STREAMER_S3_ENDPOINT.",
    )
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,32}$", description="Bucket region (AWS_REGION).")
    credentials_secret: str | None = Field(
        None,
        pattern=K8S_NAME,
        max_length=253,
        description="Secret in the namespace with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and AWS_SESSION_TOKEN if it has one), given to every Ray container. Unset: the pods' "
        "own identity (EKS Pod Identity or IRSA through ray.serviceAccountName).",
    )


class GcsStorage(Model):
    """How the Ray pods reach gs:// models and adapters."""

    endpoint: str | None = Field(
        None,
        pattern=URL_PATTERN,
        max_length=512,
        description="A GCS-compatible endpoint (an emulator or a proxy), e.g. "
        "http://gcs-proxy.storage:4443. The GCS clients (pyarrow, the Run:ai streamer) send no "
        "credentials to it, so it needs anonymous: true.",
    )
    anonymous: bool = Field(
        False,
        description="Read without credentials: public buckets. Default: the pods' Workload Identity "
        "(ray.serviceAccountName, docs/gke.md).",
    )


class StorageSpec(Model):
    """Access to the object stores that model.source and model.lora.source name."""

    s3: S3Storage | None = Field(None, description="s3:// access: endpoint, region, credentials.")
    gcs: GcsStorage | None = Field(None, description="gs:// access: endpoint, anonymous reads.")


class NodeCacheSpec(Model):
    """A directory on each node that the service's pods share for Hugging Face downloads."""

    path: str = Field(
        "/var/lib/llmservice/model-cache",
        pattern=r"^/[^\s]*$",
        max_length=256,
        description="Absolute directory on the node (created if missing), mounted into every Ray "
        "container. Hugging Face models: the Hugging Face cache (HF_HUB_CACHE), keyed by repo and "
        "revision. gs:// and s3:// models: a copy of the bucket folder, keyed by its URI and by what "
        "the bucket lists (paths, sizes, modification times), so a changed object is fetched again "
        "and the older copy removed. Services on a node share it. It is a hostPath: the namespace "
        "must allow hostPath volumes (Pod Security 'privileged'; not on GKE Autopilot), and it stays "
        "on the node when the service goes.",
    )


class ModelSpec(Model):
    """Which model to serve and where its weights come from."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        max_length=128,
        description="Served model name: the `model` field clients send.",
    )
    source: str = Field(
        max_length=1024,
        description="Weights: a Hugging Face id (google/gemma-4-e2b-it), gs://bucket/path, "
        "s3://bucket/path or pvc://claim/path (a PersistentVolumeClaim in the namespace).",
    )
    tokenizer: str | None = Field(None, description="Hugging Face id of a different tokenizer.")
    revision: str | None = Field(
        None,
        pattern=REVISION_PATTERN,
        description="Hugging Face sources only: the branch, tag or commit to load (default main). "
        "Pin a commit so every replica, and every later one, loads the same weights.",
    )
    hf_token_secret: SecretKeyRef | None = Field(
        None,
        description="Secret with a Hugging Face token, exposed to Ray pods as HF_TOKEN: gated and "
        "private models need one.",
    )
    hf_endpoint: str | None = Field(
        None,
        pattern=URL_PATTERN,
        max_length=512,
        description="The Hub's address for Hugging Face sources, e.g. a company mirror "
        "(HF_ENDPOINT); default https://huggingface.co.",
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec, description="Access to s3:// and gs:// sources (model and adapters)."
    )
    load_format: Literal["download", "stream", "mount"] = Field(
        "download",
        description="download: the weights are copied to the pod's disk, then loaded. stream "
        "(gs:// and s3:// only): vLLM's Run:ai model streamer reads the safetensors from the "
        "bucket straight into memory, with no copy on disk. mount (gs:// only, GKE with the "
        "Cloud Storage FUSE CSI driver): the worker pods mount the bucket folder read-only, with "
        "a file cache filled by parallel downloads, and vLLM reads it as local files.",
    )
    node_cache: NodeCacheSpec | None = Field(
        None,
        description="One download per node, for Hugging Face, gs:// and s3:// sources with loadFormat "
        "download. Replicas on a node read the weights a replica there fetched before (the same "
        "revision, or the same bucket objects) instead of fetching them again.",
    )
    lora: LoraSpec | None = Field(None, description="Serve LoRA adapters on top of the base model.")


class SpeculativeSpec(Model):
    """vLLM speculative decoding."""

    method: Literal["ngram", "eagle", "eagle3", "mtp", "draft-model"] = Field(
        description="ngram needs no extra model; eagle, eagle3 and draft-model need `model`."
    )
    model: str | None = Field(None, description="Draft or EAGLE head model (Hugging Face id or path).")
    num_speculative_tokens: int = Field(3, ge=1, le=16, description="Tokens proposed per step.")


MAX_EXTRA_ARGS = 64


def engine_arg(name: str) -> str:
    """vLLM's own spelling of an engine argument: its CLI takes max-num-seqs for max_num_seqs,
    while Ray Serve LLM passes engine_kwargs to EngineArgs by (snake_case) field name."""
    return name.replace("-", "_")


class EngineSpec(Model):
    """vLLM engine settings. Unset fields keep vLLM's defaults."""

    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs/chips that shard each layer.")
    pipeline_parallel_size: int = Field(1, ge=1, le=16, description="Pipeline stages per replica.")
    data_parallel_size: int = Field(
        1,
        ge=1,
        le=64,
        description="Data-parallel ranks (DP attention, e.g. for MoE models): above 1 the app "
        "is built with build_dp_openai_app and each rank is one Serve replica.",
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        le=MAX_MODEL_LEN,
        description="Context length (prompt + output). vLLM refuses more than the model's own "
        "context at start; the Serve app's error then shows in status (Degraded).",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Fraction of accelerator memory vLLM may use."
    )
    quantization: Literal["fp8", "awq", "gptq", "bitsandbytes", "compressed-tensors", "modelopt"] | None = Field(
        None, description="Weight quantization method."
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] | None = Field(
        None, description="KV-cache dtype; fp8 halves KV memory on H100/H200/B200."
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV cache across shared prompt prefixes.")
    speculative: SpeculativeSpec | None = Field(None, description="Speculative decoding.")
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        max_length=MAX_EXTRA_ARGS,
        description="Other vLLM engine arguments as in vLLM's EngineArgs (e.g. max_num_seqs: 512; "
        "the CLI spelling max-num-seqs is the same argument and is rendered snake_case). "
        "Arguments with a typed setting above are rejected here.",
        # Values of any type: the API server's CEL cannot see this field (its schema has no
        # type), so the operator and `llmservice validate` check the names.
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class AcceleratorSpec(Model):
    """Hardware for each model replica."""

    type: AcceleratorType = Field(
        description="nvidia-b200 (A4), nvidia-h200 (A3 Ultra), nvidia-h100 (A3 High), "
        "nvidia-h100-mega (A3 Mega), nvidia-gb200 (A4X, Arm), nvidia-l4 (G2), tpu-v5e, tpu-v6e, "
        "tpu-v5p, tpu-7x, or cpu: vLLM on CPU (C3/N2 nodes, kind, development clusters; small "
        "models), each replica one Ray worker pod sized by ray.workerResources."
    )
    per_replica: int | None = Field(
        None,
        ge=1,
        description="GPUs per model replica. Defaults to tensorParallelSize x "
        "pipelineParallelSize; must equal it when set. TPUs take the chip count from `topology`; "
        "CPU replicas are sized by ray.workerResources.",
    )
    topology: str | None = Field(
        None,
        pattern=r"^[0-9]+x[0-9]+(x[0-9]+)?$",
        max_length=11,
        description="TPU slice topology per replica (e.g. 2x4, 4x4, 2x2x2). Required for TPUs.",
    )
    provisioning: Literal["on-demand", "spot", "spot-with-fallback", "flex-start", "reservation"] = Field(
        "on-demand",
        description="on-demand; spot; spot-with-fallback (spot nodes preferred, on-demand "
        "nodes when spot is unavailable); flex-start (DWS); reservation (needs `reservation`).",
    )
    reservation: str | None = Field(
        None, pattern=K8S_NAME, description="Compute Engine reservation name (provisioning: reservation)."
    )
    machine_type: str | None = Field(
        None,
        max_length=63,
        description="Override the machine type the catalog picks (GPU and CPU; TPUs follow "
        "`topology`). For cpu it also pins the head and worker pods to nodes of that type "
        "(node.kubernetes.io/instance-type), e.g. c3-standard-8 or n2-standard-4.",
    )


class ReplicaSpec(Model):
    """Model replica range; Serve autoscales inside it and worker pods/nodes follow."""

    min: int = Field(1, ge=0, le=1000, description="Minimum replicas; 0 scales to zero when idle.")
    max: int = Field(1, ge=1, le=1000, description="Maximum replicas.")
    initial: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Replicas when Serve first starts the model (default: min); a running service keeps its count"
        " through later changes.",
    )


class AutoscalingSpec(Model):
    """Ray Serve autoscaling. Ray LLM's own default target is 1e9 (never scales), so it is
    always set."""

    target_ongoing_requests: int = Field(32, ge=1, description="In-flight requests per replica to aim for.")
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Hard cap of in-flight requests per replica (default: 4 x target)."
    )
    upscale_delay_seconds: int = Field(30, ge=0, description="Sustained load before adding replicas.")
    downscale_delay_seconds: int = Field(600, ge=0, description="Sustained idleness before removing replicas.")
    downscale_to_zero_delay_seconds: int | None = Field(
        None, ge=0, description="Idle time before the last replica goes (replicas.min: 0)."
    )
    worker_idle_seconds: int = Field(
        60,
        ge=0,
        le=86400,
        description="How long a Ray worker pod with no replica left on it stays before the Ray "
        "autoscaler removes it (KubeRay's idleTimeoutSeconds): after a scale-down, pods (and then "
        "GKE nodes) follow the replicas after this long.",
    )


class RoutingSpec(Model):
    """How requests pick a replica."""

    policy: Literal["least-loaded", "round-robin", "prefix-aware", "session-affinity"] = Field(
        "least-loaded",
        description="How Ray Serve picks a replica for each request. least-loaded: the less busy of two "
        "(Serve's power of two choices). round-robin: each replica in turn. prefix-aware: requests "
        "sharing a prompt prefix go to the replica that has it cached (needs engine.enablePrefixCaching "
        "and directStreaming: false). session-affinity: the same X-Session-Id header, the same replica "
        "(consistent hashing: adding a replica moves few sessions). Changing it restarts the replicas "
        "one at a time on the same Ray cluster.",
    )
    direct_streaming: bool = Field(
        True,
        description="Tokens stream replica -> HAProxy -> client, skipping the Python ingress "
        "(Ray 2.60: one model per application).",
    )
    stream_batching_ms: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Ray Serve LLM sends streamed tokens in one write per interval (unset: Ray's "
        "default, 50 ms). Lower gives an earlier first token; each write costs the replica and "
        "every proxy on the path CPU, so 0 (one write per token) costs the most.",
    )


class RateLimitSpec(Model):
    """Per-key request rate limit at the edge sidecar (429 with Retry-After above it)."""

    requests_per_minute: int = Field(ge=1, description="Requests per minute allowed per API key.")


class ServiceExposure(Model):
    """How the Service in front of the serving pods is reachable."""

    type: Literal["ClusterIP", "InternalLoadBalancer", "ExternalLoadBalancer"] = Field(
        "ClusterIP",
        description="ClusterIP: inside the cluster (put a Gateway in front). InternalLoadBalancer: "
        "a GKE internal passthrough Network Load Balancer (VPC only). ExternalLoadBalancer: a "
        "public one (needs ingress.apiKeysSecret; prefer tlsSecret too).",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_POD_ENTRIES,
        description="Service annotations, e.g. networking.gke.io/internal-load-balancer-allow-global-access.",
    )
    load_balancer_source_ranges: list[Annotated[str, Field(pattern=CIDR_PATTERN)]] = Field(
        default_factory=list,
        max_length=MAX_POD_ENTRIES,
        description="Client CIDRs a load balancer accepts (default: any).",
    )


class IngressSpec(Model):
    """The edge HAProxy sidecar in front of Ray Serve: API keys, rate limits, TLS, body size."""

    sidecar: bool = Field(True, description="Run the edge sidecar; false exposes Ray Serve's port directly.")
    api_keys_secret: str | None = Field(
        None,
        pattern=K8S_NAME,
        description="Secret whose key `api-keys.map` holds lines `<api-key> <client-name>`; "
        "requests need `Authorization: Bearer <api-key>`.",
    )
    rate_limit: RateLimitSpec | None = Field(None, description="Per-key request rate limit (needs apiKeysSecret).")
    tls_secret: str | None = Field(
        None, pattern=K8S_NAME, description="kubernetes.io/tls Secret: the sidecar terminates TLS."
    )
    max_body_size: str = Field("16Mi", pattern=SIZE_PATTERN, description="Largest request body (413 above).")
    service: ServiceExposure = Field(default_factory=ServiceExposure, description="How the endpoint is exposed.")


class PlacementSpec(Model):
    """Where replicas land."""

    compact: bool = Field(
        False, description="Keep each multi-node replica inside one topology domain (and COMPACT node pools)."
    )
    topology_level: Literal["block", "subblock", "host"] = Field(
        "block", description="Domain for compact placement: gce-topology-block, -subblock or -host."
    )
    zones: list[Annotated[str, Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")]] = Field(
        default_factory=list, description="Zones for node pools and pods (default: the cluster's)."
    )
    spread_across_zones: bool = Field(False, description="Spread replicas evenly across `zones`.")


class NodePoolSpec(Model):
    """GKE node pools the operator creates for this service."""

    managed: bool = Field(False, description="Create and size node pools through the GKE API.")
    disk_size_gb: int = Field(200, ge=50, description="Boot disk per node.")
    disk_type: Literal["pd-balanced", "pd-ssd", "hyperdisk-balanced"] | None = Field(
        None,
        description="Boot disk type. Default hyperdisk-balanced (A4/A3 Ultra/TPU machines need it), "
        "pd-balanced on N1, N2, N2D and E2 machines (they have no Hyperdisk).",
    )
    service_account: str | None = Field(None, description="Node service account email.")
    labels: dict[str, str] = Field(default_factory=dict, description="Extra node labels.")
    image_cache_disk: str | None = Field(
        None,
        # The image name ends a node label key (63 characters, 24 taken): at most 39 here.
        pattern=r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/global/images/[a-z]([-a-z0-9]{0,37}[a-z0-9])?$",
        description="A Compute Engine disk image that holds the Ray serving image (built with "
        "gke-disk-image-builder), as projects/PROJECT/global/images/NAME. GKE attaches it to every "
        "new node as a secondary boot disk in CONTAINER_IMAGE_CACHE mode, so the image starts "
        "without a pull. Managed pools get it, with image streaming on; otherwise the worker pods "
        "ask for nodes that have it (node selector), as Autopilot and node auto-provisioning need.",
    )


# A label value is at most 63 characters; bounded here, CEL's checks of the values stay cheap.
LabelValue = Annotated[str, Field(max_length=63)]


class Toleration(Model):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(None, max_length=316, description="Taint key; unset with operator Exists: every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Equal matches `value`; Exists any value.")
    value: str | None = Field(None, max_length=63, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; unset: every effect."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="NoExecute only: how long the pod stays on a node after the taint appears."
    )


class PodOverrides(Model):
    """Additions to the Ray pods the operator renders; not a pod template: the operator keeps
    choosing images, resources, placement for the accelerator, probes and the edge sidecar."""

    labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=MAX_POD_ENTRIES, description="Extra pod labels (cost centre, team)."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_POD_ENTRIES,
        description="Extra pod annotations (e.g. gke-gcsfuse/volumes, sidecar injection opt-outs).",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_POD_ENTRIES,
        description="Extra node labels the pods require, on top of those the operator derives from "
        "accelerator and placement (which cannot be set here).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=MAX_POD_ENTRIES, description="Extra tolerations (dedicated node pools)."
    )


class Resources(Model):
    """CPU and memory of a container."""

    cpu: str = Field(pattern=r"^[0-9]+(\.[0-9]+|m)?$", max_length=16, description="CPU cores (8, 1.5, 500m).")
    memory: str = Field(pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)?$", max_length=16, description="Memory (32Gi, 512Mi).")


# accelerator.type cpu: one Ray worker pod (one model replica) when ray.workerResources is unset.
DEFAULT_CPU_WORKER = Resources(cpu="8", memory="32Gi")


class RaySpec(Model):
    """The Ray cluster behind the service."""

    version: str = Field("2.60.0", pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", description="Ray version.")
    image: str | None = Field(None, description="Ray image with vLLM (default: the operator's setting).")
    head_resources: Resources = Field(
        default_factory=lambda: Resources(cpu="4", memory="16Gi"),
        description="Head pod resources, request and limit (the head runs no model, but Ray's "
        "control processes, the Serve controller and the request router: memory at least 3Gi; for "
        "accelerator.type cpu the CPU is a request only, so a small head can burst).",
    )
    worker_resources: Resources | None = Field(
        None,
        description="CPU and memory request of each Ray worker pod. accelerator.type cpu: the "
        "size of one model replica (one pod each; default 8 CPUs, 32Gi; vLLM's KV cache gets a "
        "quarter of the memory, at least 1 GiB). GPU/TPU: overrides the request computed from "
        "the pod's share of its node.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for every Ray container.")
    secret_env: dict[str, SecretEnvRef] = Field(
        default_factory=dict,
        max_length=MAX_POD_ENTRIES,
        description="Environment from Secrets for every Ray container, e.g. for s3:// models and "
        "adapters: {AWS_ACCESS_KEY_ID: {name: s3-credentials, key: access-key-id}, ...}. The "
        "operator checks that each Secret and key exists before it applies anything.",
    )
    service_account_name: str | None = Field(
        None,
        pattern=K8S_NAME,
        max_length=253,
        description="Kubernetes ServiceAccount of the Ray pods (default: the namespace's `default`). "
        "On GKE, Workload Identity Federation lets it read gs:// models and LoRA adapters "
        "without keys (docs/gke.md).",
    )
    auth: Literal["token", "disabled"] = Field(
        "token",
        description="Ray token authentication (Ray 2.52+): every call to the Ray cluster's "
        "dashboard (job submission), GCS and client ports must carry the token, which the "
        "operator generates once into the Secret <name>-ray-auth (owned by the LLMService; "
        "KubeRay passes it to the Ray containers and uses it itself). Serving traffic needs no "
        "token. disabled: anyone who reaches the head pod can run code on the cluster; for "
        "debugging only. Changing it starts a new Ray cluster.",
    )
    network_policy: bool = Field(
        True,
        description="A NetworkPolicy on the service's Ray pods: requests only to the serving port, "
        "Ray's ports only from the service's own pods, the dashboard and Serve health port also "
        "from KubeRay, metrics ports from the operator's metricsNamespaces. Needs a cluster "
        "network that enforces NetworkPolicy (GKE Dataplane V2, Calico).",
    )
    head_pod: PodOverrides = Field(default_factory=PodOverrides, description="Additions to the head pod.")
    worker_pods: PodOverrides = Field(
        default_factory=PodOverrides, description="Additions to every worker pod (the ones that run the model)."
    )


class UpgradeSpec(Model):
    """How a changed spec reaches the running cluster."""

    strategy: Literal["new-cluster", "incremental", "none"] = Field(
        "new-cluster",
        description="new-cluster: blue/green RayCluster swap. incremental: shift traffic in "
        "steps through Gateway API (needs gatewayClassName; ingress.sidecar: false). none: in place.",
    )
    gateway_class_name: str | None = Field(None, description="Gateway class for incremental upgrades.")
    max_surge_percent: int = Field(100, ge=1, le=100, description="Extra capacity (%) the new cluster may add.")
    step_size_percent: int = Field(10, ge=1, le=100, description="Traffic (%) shifted per step.")
    interval_seconds: int = Field(30, ge=1, description="Seconds between traffic steps.")
    drain_seconds: int | None = Field(
        None,
        ge=0,
        le=86400,
        description="How long the old Ray cluster lives on after traffic moved to the new one "
        "(KubeRay's rayClusterDeletionDelaySeconds; unset: KubeRay's 60 s). Requests still on "
        "the old cluster, such as long token streams on kept-alive connections, end when it "
        "goes: set it above the longest stream you serve. Also bounds how long a stopping Ray "
        "pod drains (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, Ray's 30 s at most); the pods' "
        "terminationGracePeriodSeconds leaves room for it.",
    )


class FaultToleranceSpec(Model):
    """GCS fault tolerance: Ray metadata kept in Redis so a head restart keeps serving."""

    redis_address: str = Field(pattern=r"^[A-Za-z0-9.-]+:[0-9]+$", description="host:port of Redis.")
    redis_password_secret: SecretKeyRef | None = Field(None, description="Secret with the Redis password.")


class PoolSpec(Model):
    """One side of prefill/decode disaggregation."""

    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec)
    tensor_parallel_size: int | None = Field(None, ge=1, le=64, description="Default: engine.tensorParallelSize.")


class PrefillDecodeSpec(Model):
    """Prefill/decode disaggregation: separate pools exchange KV cache (build_pd_openai_app)."""

    prefill: PoolSpec = Field(default_factory=PoolSpec)
    decode: PoolSpec = Field(default_factory=PoolSpec)
    kv_connector: Literal["NixlConnector", "LMCacheConnectorV1"] = Field(
        "NixlConnector", description="vLLM KV connector that moves KV cache from prefill to decode."
    )


class ObservabilitySpec(Model):
    """Metrics collection."""

    metrics: bool = Field(True, description="Prometheus scraping of Ray, vLLM and HAProxy metrics (PodMonitor).")


class LLMServiceSpec(Model):
    """Desired state of an LLM endpoint."""

    model: ModelSpec
    accelerator: AcceleratorSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    node_pool: NodePoolSpec = Field(default_factory=NodePoolSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    upgrade: UpgradeSpec = Field(default_factory=UpgradeSpec)
    fault_tolerance: FaultToleranceSpec | None = Field(None)
    prefill_decode: PrefillDecodeSpec | None = Field(None)
    observability: ObservabilitySpec = Field(default_factory=ObservabilitySpec)
    suspend: bool = Field(False, description="Delete the Ray cluster but keep the LLMService.")
