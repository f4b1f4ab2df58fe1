"""Cross-field rules of LLMServiceSpec, each written once for Python and once for CEL.

The CEL expression is evaluated by the API server at `kubectl apply` (CRD
`x-kubernetes-validations` on `spec`, with `fieldPath`), the Python predicate by
`llmservice validate` and the renderer. Both report the same field and message.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..catalog import (
    ACCELERATORS,
    Machine,
    cpu_machine_for,
    cpu_machines,
    cpu_types,
    get,
    gpu_types,
    tpu_types,
)
from ..catalog.tpu import chips_in
from .pod_rules import POD_RULES
from .quantity import GIB, cpu_cores, memory_bytes, ray_cpus
from .rule import FieldError, Rule
from .spec import DEFAULT_CPU_WORKER, SOURCE_PATTERN, LLMServiceSpec, ReplicaSpec, Resources, engine_arg

# The head's smallest memory: measured on the local node, a CPU service's head used 1.9 GiB
# (GCS, dashboard, Serve controller, HAProxy, Ray Serve LLM's router and telemetry actors), and
# at a 2Gi limit Ray's memory monitor killed the Serve controller during a scale-down.
HEAD_MIN_GIB = 3
MAX_NAME_LENGTH = 40  # leaves room for KubeRay's cluster/pod suffixes within 63 characters
# The name becomes Service and Ray cluster names: DNS-1035 labels (no dots, a letter first).
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MESSAGE = (
    "must start with a lowercase letter and hold only lowercase letters, digits and '-' "
    "(it names Services and Ray clusters: no dots)"
)


def _is_tpu(s: LLMServiceSpec) -> bool:
    return get(s.accelerator.type).is_tpu


def _is_gpu(s: LLMServiceSpec) -> bool:
    return get(s.accelerator.type).is_gpu


def _is_cpu(s: LLMServiceSpec) -> bool:
    return get(s.accelerator.type).is_cpu


def _gpus(s: LLMServiceSpec) -> int:
    return s.engine.tensor_parallel_size * s.engine.pipeline_parallel_size


def _worker(s: LLMServiceSpec) -> Resources:
    return s.ray.worker_resources or DEFAULT_CPU_WORKER


def _cpu_machine(s: LLMServiceSpec) -> Machine | None:
    return _CPU_MACHINES.get(s.accelerator.machine_type or "")


def _machine_too_small(s: LLMServiceSpec) -> bool:
    m = _cpu_machine(s)
    w = _worker(s)
    return m is not None and (m.vcpus < cpu_cores(w.cpu) or m.memory_gib * GIB < memory_bytes(w.memory))


def _no_machine_for_pool(s: LLMServiceSpec) -> bool:
    w = _worker(s)
    return cpu_machine_for(cpu_cores(w.cpu), memory_bytes(w.memory) / GIB) is None


def _one_of(types: list[str]) -> str:
    return "(" + " || ".join(f"self.accelerator.type == '{t}'" for t in types) + ")"


_IS_TPU = _one_of(tpu_types())
_IS_GPU = _one_of(gpu_types())
_IS_CPU = _one_of(cpu_types())
_WR = "self.ray.workerResources"
# CEL's Kubernetes quantity library parses "500m" as 0.5 and "32Gi" as bytes, as quantity.py does.
_WORKER_CPU_CEL = f"(has({_WR}) ? quantity({_WR}.cpu).asApproximateFloat() : {cpu_cores(DEFAULT_CPU_WORKER.cpu)})"
_WORKER_MEM_CEL = (
    f"(has({_WR}) ? quantity({_WR}.memory).asApproximateFloat() : {float(memory_bytes(DEFAULT_CPU_WORKER.memory))})"
)
_CPU_MACHINES = {m.name: m for m in cpu_machines()}
# The largest catalog CPU machine has the most vCPUs and the most memory, so a worker fits some
# machine exactly when it fits that one (what _no_machine_for_pool asks).
_LARGEST_CPU = max(_CPU_MACHINES.values(), key=lambda m: (m.vcpus, m.memory_gib))
assert all(m.memory_gib <= _LARGEST_CPU.memory_gib for m in _CPU_MACHINES.values())
_ROOM_CPU, _ROOM_GIB = _LARGEST_CPU.room
_FITS_LARGEST_CEL = f"{_WORKER_CPU_CEL} <= {_ROOM_CPU!r} && {_WORKER_MEM_CEL} <= {_ROOM_GIB * GIB!r}"
_MT = "self.accelerator.machineType"
_VCPUS_CEL = "{" + ", ".join(f"'{m.name}': {float(m.vcpus)}" for m in _CPU_MACHINES.values()) + "}"
_BYTES_CEL = "{" + ", ".join(f"'{m.name}': {float(m.memory_gib * GIB)}" for m in _CPU_MACHINES.values()) + "}"
_CPU_MACHINE_FITS_CEL = (
    f"!{_IS_CPU} || !has({_MT}) || !({_MT} in {_VCPUS_CEL}) || "
    f"({_VCPUS_CEL}[{_MT}] >= {_WORKER_CPU_CEL} && {_BYTES_CEL}[{_MT}] >= {_WORKER_MEM_CEL})"
)
_TOPO = "self.accelerator.topology"
_CHIPS_CEL = (
    f"int({_TOPO}.split('x')[0]) * int({_TOPO}.split('x')[1]) * "
    f"({_TOPO}.split('x').size() > 2 ? int({_TOPO}.split('x')[2]) : 1)"
)
_VALID_TOPOLOGY_CEL = " || ".join(
    f"(self.accelerator.type == '{a.key}' && {_TOPO} in [{', '.join(repr(t) for t in a.topologies)}])"
    for a in ACCELERATORS.values()
    if a.is_tpu
)
_MAX_PER_NODE = {a.key: a.max_per_node for a in ACCELERATORS.values() if a.is_gpu}
_MAX_PER_NODE_CEL = "{" + ", ".join(f"'{k}': {v}" for k, v in _MAX_PER_NODE.items()) + "}"
# A map lookup with a missing key is a runtime error in CEL (the API server would answer with
# that error instead of the rule's message): only GPU types are looked up.
_NOT_GPU_TYPE = f"!(self.accelerator.type in {_MAX_PER_NODE_CEL})"
_PER_NODE_CEL = f"{_MAX_PER_NODE_CEL}[self.accelerator.type]"


# The per-node rules of a replica's tensor parallel size `tp` (the main engine's, or one side
# of prefill/decode): it fits one node; with pipeline stages, it uses whole nodes.
def _tp_fits_cel(tp: str) -> str:
    return f"{_NOT_GPU_TYPE} || {tp} <= {_PER_NODE_CEL}"


def _whole_nodes_cel(tp: str) -> str:
    gpus = f"{tp} * self.engine.pipelineParallelSize"
    return f"{_NOT_GPU_TYPE} || {gpus} <= {_PER_NODE_CEL} || ({gpus}) % {_PER_NODE_CEL} == 0"


def _tp_too_big(s: LLMServiceSpec, tp: int) -> bool:
    return _is_gpu(s) and tp > _MAX_PER_NODE[s.accelerator.type]


def _not_whole_nodes(s: LLMServiceSpec, tp: int) -> bool:
    gpus = tp * s.engine.pipeline_parallel_size
    return _is_gpu(s) and gpus > _MAX_PER_NODE[s.accelerator.type] and gpus % _MAX_PER_NODE[s.accelerator.type] != 0


_ENGINE_TP = "self.engine.tensorParallelSize"
_VALID_TOPOLOGIES = "; ".join(f"{a.key}: {', '.join(a.topologies)}" for a in ACCELERATORS.values() if a.is_tpu)
_GPUS_PER_NODE = ", ".join(f"{k} {v}" for k, v in _MAX_PER_NODE.items())
_SPEC_MODELS = ("eagle", "eagle3", "draft-model")
_RESERVED_ENGINE_ARGS = {
    "model": "model.source",
    "served_model_name": "model.name",
    "tokenizer": "model.tokenizer",
    "tensor_parallel_size": "engine.tensorParallelSize",
    "pipeline_parallel_size": "engine.pipelineParallelSize",
    "data_parallel_size": "engine.dataParallelSize",
    "max_model_len": "engine.maxModelLen",
    "gpu_memory_utilization": "engine.gpuMemoryUtilization",
    "quantization": "engine.quantization",
    "kv_cache_dtype": "engine.kvCacheDtype",
    "enable_prefix_caching": "engine.enablePrefixCaching",
    "speculative_config": "engine.speculative",
    "kv_transfer_config": "prefillDecode.kvConnector",
    "enable_lora": "model.lora",
    "revision": "model.revision",
    "tokenizer_revision": "model.revision",
    "load_format": "model.loadFormat",
}


def _reserved_args(s: LLMServiceSpec) -> list[str]:
    return sorted(k for k in s.engine.extra_args if engine_arg(k) in _RESERVED_ENGINE_ARGS)


def _twice_named_args(s: LLMServiceSpec) -> list[str]:
    seen = [engine_arg(k) for k in s.engine.extra_args]
    return sorted({k for k in seen if seen.count(k) > 1})


def _replica_rules(
    field: str, get: Callable[[LLMServiceSpec], ReplicaSpec | None], guard: str = ""
) -> tuple[Rule, ...]:
    """A replica range is ordered: the service's (`replicas`) and each prefill/decode pool's.
    `guard`: CEL that holds when the range is absent."""
    r = f"self.{field}"
    return (
        Rule(
            f"{field}.min",
            f"must be <= {field}.max",
            lambda s: (x := get(s)) is not None and x.min > x.max,
            f"{guard}{r}.min <= {r}.max",
        ),
        Rule(
            f"{field}.initial",
            f"must be between {field}.min and {field}.max",
            lambda s: (x := get(s)) is not None and x.initial is not None and not x.min <= x.initial <= x.max,
            f"{guard}!has({r}.initial) || ({r}.initial >= {r}.min && {r}.initial <= {r}.max)",
        ),
    )


_NOT_HF = r"^(gs|s3|pvc)://"
_BUCKET = r"^(gs|s3)://"
# Ray versions before 2.52, which has no token authentication.
_NO_TOKEN_AUTH = r"^([01]\.|2\.([0-9]|[1-4][0-9]|5[01])\.)"


RULES: tuple[Rule, ...] = (
    Rule(
        "ray.auth",
        "token authentication needs Ray 2.52.0 or newer: raise ray.version, or set ray.auth: disabled",
        lambda s: s.ray.auth == "token" and re.match(_NO_TOKEN_AUTH, s.ray.version) is not None,
        f"!has(self.ray) || !has(self.ray.auth) || self.ray.auth == 'disabled' || !has(self.ray.version) "
        f"|| !self.ray.version.matches(r'{_NO_TOKEN_AUTH}')",
    ),
    Rule(
        "model.source",
        "must be a Hugging Face id (org/name), gs://bucket/path, s3://bucket/path or pvc://claim/path",
        lambda s: re.fullmatch(SOURCE_PATTERN, s.model.source, re.ASCII) is None,
        f"self.model.source.matches(r'{SOURCE_PATTERN}')",  # raw string: CEL rejects the \\w escape
    ),
    Rule(
        "model.revision",
        "applies to Hugging Face sources only (a gs://, s3:// or pvc:// path is one copy of the "
        "weights): remove it, or put the revision in the path",
        lambda s: s.model.revision is not None and re.match(_NOT_HF, s.model.source) is not None,
        f"!has(self.model.revision) || !self.model.source.matches(r'{_NOT_HF}')",
    ),
    Rule(
        "model.nodeCache",
        "keeps downloads, and a pvc:// model is read in place: remove it",
        lambda s: s.model.node_cache is not None and s.model.source.startswith("pvc://"),
        "!has(self.model.nodeCache) || !self.model.source.startsWith('pvc://')",
    ),
    Rule(
        "model.nodeCache",
        "keeps downloads, and with loadFormat stream or mount nothing is downloaded to the node: "
        "remove it, or use loadFormat download",
        lambda s: s.model.node_cache is not None and s.model.load_format != "download",
        "!has(self.model.nodeCache) || !has(self.model.loadFormat) || self.model.loadFormat == 'download'",
    ),
    Rule(
        "model.loadFormat",
        "stream reads from a bucket: it needs a gs:// or s3:// model.source (use download)",
        lambda s: s.model.load_format == "stream" and re.match(_BUCKET, s.model.source) is None,
        f"!has(self.model.loadFormat) || self.model.loadFormat != 'stream' || self.model.source.matches(r'{_BUCKET}')",
    ),
    Rule(
        "model.loadFormat",
        "mount goes through the Cloud Storage FUSE CSI driver: it needs a gs:// model.source "
        "(use download or stream for s3://)",
        lambda s: s.model.load_format == "mount" and not s.model.source.startswith("gs://"),
        "!has(self.model.loadFormat) || self.model.loadFormat != 'mount' || self.model.source.startsWith('gs://')",
    ),
    Rule(
        "model.storage.gcs.endpoint",
        "needs model.storage.gcs.anonymous: true (the GCS clients send no credentials to a custom "
        "endpoint); for private buckets on Google Cloud leave the endpoint unset and use Workload "
        "Identity",
        lambda s: (
            s.model.storage.gcs is not None
            and s.model.storage.gcs.endpoint is not None
            and not s.model.storage.gcs.anonymous
        ),
        "!has(self.model.storage) || !has(self.model.storage.gcs) || !has(self.model.storage.gcs.endpoint) "
        "|| (has(self.model.storage.gcs.anonymous) && self.model.storage.gcs.anonymous)",
    ),
    *_replica_rules("replicas", lambda s: s.replicas),
    Rule(
        "accelerator.topology",
        "is required for TPU types: set the slice topology of one replica, e.g. 2x4",
        lambda s: _is_tpu(s) and s.accelerator.topology is None,
        f"!{_IS_TPU} || has({_TOPO})",
    ),
    Rule(
        "accelerator.topology",
        "applies only to TPU types: remove it (GPU replicas are sized by accelerator.perReplica, "
        "CPU replicas by ray.workerResources)",
        lambda s: not _is_tpu(s) and s.accelerator.topology is not None,
        f"{_IS_TPU} || !has({_TOPO})",
    ),
    Rule(
        "accelerator.topology",
        f"is not a topology of accelerator.type; valid: {_VALID_TOPOLOGIES}",
        lambda s: (
            _is_tpu(s)
            and s.accelerator.topology is not None
            and s.accelerator.topology not in get(s.accelerator.type).topologies
        ),
        f"!{_IS_TPU} || !has({_TOPO}) || {_VALID_TOPOLOGY_CEL}",
    ),
    Rule(
        "engine.tensorParallelSize",
        "tensorParallelSize x pipelineParallelSize must equal the chips in accelerator.topology "
        "(a 4x4 slice has 16 chips)",
        lambda s: _is_tpu(s) and s.accelerator.topology is not None and chips_in(s.accelerator.topology) != _gpus(s),
        f"!{_IS_TPU} || !has({_TOPO}) || self.engine.tensorParallelSize * "
        f"self.engine.pipelineParallelSize == {_CHIPS_CEL}",
    ),
    Rule(
        "accelerator.perReplica",
        "is taken from accelerator.topology for TPU types: remove it",
        lambda s: _is_tpu(s) and s.accelerator.per_replica is not None,
        f"!{_IS_TPU} || !has(self.accelerator.perReplica)",
    ),
    Rule(
        "accelerator.perReplica",
        "must equal engine.tensorParallelSize x engine.pipelineParallelSize (the GPUs one "
        "replica uses): change one of them",
        lambda s: s.accelerator.per_replica is not None and s.accelerator.per_replica != _gpus(s),
        "!has(self.accelerator.perReplica) || self.accelerator.perReplica == "
        "self.engine.tensorParallelSize * self.engine.pipelineParallelSize",
    ),
    Rule(
        "engine.tensorParallelSize",
        f"must fit in one node of accelerator.type (GPUs per node: {_GPUS_PER_NODE}); "
        "span nodes with pipelineParallelSize instead",
        lambda s: _tp_too_big(s, s.engine.tensor_parallel_size),
        _tp_fits_cel(_ENGINE_TP),
    ),
    Rule(
        "engine.pipelineParallelSize",
        "a replica larger than one node must use whole nodes: tensorParallelSize x "
        f"pipelineParallelSize must be a multiple of the GPUs per node ({_GPUS_PER_NODE})",
        lambda s: _not_whole_nodes(s, s.engine.tensor_parallel_size),
        _whole_nodes_cel(_ENGINE_TP),
    ),
    Rule(
        "accelerator.reservation",
        "is required when accelerator.provisioning is reservation",
        lambda s: s.accelerator.provisioning == "reservation" and s.accelerator.reservation is None,
        "self.accelerator.provisioning != 'reservation' || has(self.accelerator.reservation)",
    ),
    Rule(
        "accelerator.reservation",
        "is only used with accelerator.provisioning: reservation: remove it or set provisioning",
        lambda s: s.accelerator.provisioning != "reservation" and s.accelerator.reservation is not None,
        "self.accelerator.provisioning == 'reservation' || !has(self.accelerator.reservation)",
    ),
    Rule(
        "accelerator.machineType",
        "overrides GPU and CPU machine types only: TPU machine types follow accelerator.topology",
        lambda s: _is_tpu(s) and s.accelerator.machine_type is not None,
        f"!{_IS_TPU} || !has(self.accelerator.machineType)",
    ),
    Rule(
        "accelerator.machineType",
        "is smaller than one worker pod (ray.workerResources, default 8 CPUs and 32Gi): choose a "
        "larger machine or smaller ray.workerResources",
        lambda s: _is_cpu(s) and _machine_too_small(s),
        _CPU_MACHINE_FITS_CEL,
    ),
    Rule(
        "ray.workerResources",
        f"does not fit the largest catalog CPU machine a managed node pool would use "
        f"({_LARGEST_CPU.name}: room for {_ROOM_CPU:.1f} vCPUs and {_ROOM_GIB:.0f} GiB after GKE's "
        "reservations and system pods): set accelerator.machineType or ask for less",
        lambda s: _is_cpu(s) and s.node_pool.managed and s.accelerator.machine_type is None and _no_machine_for_pool(s),
        f"!{_IS_CPU} || !self.nodePool.managed || has({_MT}) || ({_FITS_LARGEST_CEL})",
    ),
    Rule(
        "ray.headResources.memory",
        f"must be at least {HEAD_MIN_GIB}Gi: the head runs Ray's GCS and dashboard, the Serve controller, "
        "its HAProxy and the request router (about 2 GiB together), and above 95% of its memory Ray's "
        "memory monitor kills the Serve controller, which can leave every pod unready",
        lambda s: memory_bytes(s.ray.head_resources.memory) < HEAD_MIN_GIB * GIB,
        # Unset, the default (16Gi) holds: the API server leaves the default out of CEL's view.
        "!has(self.ray) || !has(self.ray.headResources) || "
        f"quantity(self.ray.headResources.memory).asApproximateFloat() >= {float(HEAD_MIN_GIB * GIB)!r}",
    ),
    Rule(
        "accelerator.perReplica",
        "counts GPUs: a CPU replica is one Ray worker pod sized by ray.workerResources: remove it",
        lambda s: _is_cpu(s) and s.accelerator.per_replica is not None,
        f"!{_IS_CPU} || !has(self.accelerator.perReplica)",
    ),
    Rule(
        "engine.tensorParallelSize",
        "tensorParallelSize x pipelineParallelSize (vLLM CPU processes, at least a core each) must "
        "not exceed the Ray CPUs of a worker pod: ray.workerResources.cpu rounded up (default 8)",
        lambda s: _is_cpu(s) and _gpus(s) > ray_cpus(_worker(s).cpu),
        # n <= ceil(cpu) for a whole n is n - 1 < cpu (CEL has no ceil here)
        f"!{_IS_CPU} || double(self.engine.tensorParallelSize * self.engine.pipelineParallelSize) - 1.0 < "
        f"{_WORKER_CPU_CEL}",
    ),
    Rule(
        "engine.dataParallelSize",
        "must be 1 for accelerator.type cpu (data-parallel attention is for multi-GPU MoE serving): "
        "scale a CPU service with replicas",
        lambda s: _is_cpu(s) and s.engine.data_parallel_size > 1,
        f"!{_IS_CPU} || self.engine.dataParallelSize == 1",
    ),
    Rule(
        "engine.gpuMemoryUtilization",
        "applies to accelerator memory: vLLM on CPU takes its KV cache size from "
        "ray.workerResources.memory (VLLM_CPU_KVCACHE_SPACE): remove it",
        lambda s: _is_cpu(s) and s.engine.gpu_memory_utilization is not None,
        f"!{_IS_CPU} || !has(self.engine.gpuMemoryUtilization)",
    ),
    Rule(
        "accelerator.provisioning",
        "flex-start (Dynamic Workload Scheduler) provisions GPUs and TPUs only: use on-demand, "
        "spot, spot-with-fallback or reservation for accelerator.type cpu",
        lambda s: _is_cpu(s) and s.accelerator.provisioning == "flex-start",
        f"!{_IS_CPU} || self.accelerator.provisioning != 'flex-start'",
    ),
    Rule(
        "engine.enablePrefixCaching",
        "must be true when routing.policy is prefix-aware (the router sends shared prefixes to "
        "the replica that has them cached)",
        lambda s: s.routing.policy == "prefix-aware" and not s.engine.enable_prefix_caching,
        "self.routing.policy != 'prefix-aware' || self.engine.enablePrefixCaching",
    ),
    Rule(
        "routing.directStreaming",
        "serves exactly one model per application (Ray 2.60); prefill/decode runs two: set "
        "routing.directStreaming: false",
        lambda s: s.prefill_decode is not None and s.routing.direct_streaming,
        "!has(self.prefillDecode) || !self.routing.directStreaming",
    ),
    Rule(
        "routing.policy",
        "prefix-aware needs routing.directStreaming: false: with direct streaming Ray 2.60's router "
        "picks replicas without ever learning where a prefix went, so it only balances load (seen "
        "with real vLLM); without it the OpenAI ingress routes through the prefix tree",
        lambda s: s.routing.policy == "prefix-aware" and s.routing.direct_streaming,
        "self.routing.policy != 'prefix-aware' || !self.routing.directStreaming",
    ),
    Rule(
        "ingress.rateLimit",
        "limits each API key: set ingress.apiKeysSecret too",
        lambda s: s.ingress.rate_limit is not None and s.ingress.api_keys_secret is None,
        "!has(self.ingress.rateLimit) || has(self.ingress.apiKeysSecret)",
    ),
    Rule(
        "ingress.sidecar",
        "must be true while ingress.apiKeysSecret, rateLimit or tlsSecret is set (the edge "
        "sidecar enforces them): remove those or enable the sidecar",
        lambda s: (
            not s.ingress.sidecar
            and any(x is not None for x in (s.ingress.api_keys_secret, s.ingress.rate_limit, s.ingress.tls_secret))
        ),
        "self.ingress.sidecar || !(has(self.ingress.apiKeysSecret) || has(self.ingress.rateLimit) || "
        "has(self.ingress.tlsSecret))",
    ),
    Rule(
        "upgrade.gatewayClassName",
        "is required when upgrade.strategy is incremental",
        lambda s: s.upgrade.strategy == "incremental" and s.upgrade.gateway_class_name is None,
        "self.upgrade.strategy != 'incremental' || has(self.upgrade.gatewayClassName)",
    ),
    Rule(
        "upgrade.strategy",
        "incremental upgrades route traffic through Gateway API and bypass the edge sidecar: set "
        "ingress.sidecar: false or use new-cluster",
        lambda s: s.upgrade.strategy == "incremental" and s.ingress.sidecar,
        "self.upgrade.strategy != 'incremental' || !self.ingress.sidecar",
    ),
    Rule(
        "placement.spreadAcrossZones",
        "needs at least two placement.zones",
        lambda s: s.placement.spread_across_zones and len(s.placement.zones) < 2,
        "!self.placement.spreadAcrossZones || self.placement.zones.size() >= 2",
    ),
    Rule(
        "engine.speculative.model",
        "is required for speculative methods eagle, eagle3 and draft-model",
        lambda s: (
            s.engine.speculative is not None
            and s.engine.speculative.method in _SPEC_MODELS
            and s.engine.speculative.model is None
        ),
        "!has(self.engine.speculative) || !(self.engine.speculative.method in "
        f"[{', '.join(repr(m) for m in _SPEC_MODELS)}]) || has(self.engine.speculative.model)",
    ),
    Rule(
        "prefillDecode",
        "cannot be combined with engine.dataParallelSize > 1: choose one serving pattern",
        lambda s: s.prefill_decode is not None and s.engine.data_parallel_size > 1,
        "!has(self.prefillDecode) || self.engine.dataParallelSize == 1",
    ),
    Rule(
        "prefillDecode",
        "needs GPUs: KV transfer between prefill and decode uses NIXL/LMCache on NVIDIA GPUs",
        lambda s: s.prefill_decode is not None and not _is_gpu(s),
        f"!has(self.prefillDecode) || {_IS_GPU}",
    ),
    Rule(
        "engine.extraArgs",
        "must not repeat a typed field (in either spelling, max_model_len or max-model-len): use "
        + ", ".join(f"{v} instead of {k}" for k, v in _RESERVED_ENGINE_ARGS.items()),
        lambda s: bool(_reserved_args(s)),
        None,  # CEL cannot see the keys of a map of untyped values: the operator reports it
    ),
    Rule(
        "engine.extraArgs",
        "names an argument twice (vLLM reads max-num-seqs and max_num_seqs as one): keep one spelling",
        lambda s: bool(_twice_named_args(s)),
        None,
    ),
)


def _pool_tp(s: LLMServiceSpec, role: str) -> int | None:
    return getattr(s.prefill_decode, role).tensor_parallel_size if s.prefill_decode else None


def _pool_rules(role: str) -> tuple[Rule, ...]:
    """The main engine's replica and per-node rules for one side of prefill/decode (its own
    replica range and TP size)."""
    tp = f"self.prefillDecode.{role}.tensorParallelSize"
    unset = f"!has(self.prefillDecode) || !has({tp}) || "
    pool = f"self.prefillDecode.{role}"
    return (
        *_replica_rules(
            f"prefillDecode.{role}.replicas",
            lambda s: getattr(s.prefill_decode, role).replicas if s.prefill_decode else None,
            f"!has(self.prefillDecode) || !has({pool}) || !has({pool}.replicas) || ",
        ),
        Rule(
            f"prefillDecode.{role}.tensorParallelSize",
            f"must fit in one node of accelerator.type (GPUs per node: {_GPUS_PER_NODE}); "
            "span nodes with engine.pipelineParallelSize instead",
            lambda s: _tp_too_big(s, _pool_tp(s, role) or 0),
            unset + _tp_fits_cel(tp),
        ),
        Rule(
            f"prefillDecode.{role}.tensorParallelSize",
            "a replica larger than one node must use whole nodes: this x engine.pipelineParallelSize "
            f"must be a multiple of the GPUs per node ({_GPUS_PER_NODE})",
            lambda s: _not_whole_nodes(s, _pool_tp(s, role) or 0),
            unset + _whole_nodes_cel(tp),
        ),
    )


RULES += _pool_rules("prefill") + _pool_rules("decode") + POD_RULES


def spec_errors(spec: LLMServiceSpec) -> list[FieldError]:
    return [FieldError(f"spec.{r.field}", r.message) for r in RULES if r.violated(spec)]


def name_errors(name: str) -> list[FieldError]:
    out = []
    if len(name) > MAX_NAME_LENGTH:
        out.append(FieldError("metadata.name", f"must be at most {MAX_NAME_LENGTH} characters"))
    if re.fullmatch(NAME_PATTERN, name, re.ASCII) is None:
        out.append(FieldError("metadata.name", NAME_MESSAGE))
    return out
