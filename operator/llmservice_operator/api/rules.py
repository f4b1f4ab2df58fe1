"""Cross-field rules of LLMServiceSpec, each written once for Python and once for CEL.

The CEL expression is evaluated by the API server at `kubectl apply` (CRD
`x-kubernetes-validations` on `spec`, with `fieldPath`), the Python predicate by
`llmservice validate` and the renderer. Both report the same field and message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..catalog import ACCELERATORS, get, tpu_types
from ..catalog.tpu import chips_in
from .spec import SOURCE_PATTERN, LLMServiceSpec

MAX_NAME_LENGTH = 40  # leaves room for KubeRay's cluster/pod suffixes within 63 characters


@dataclass(frozen=True)
class Rule:
    field: str  # dotted path under spec, camelCase as users write it
    message: str
    violated: Callable[[LLMServiceSpec], bool]
    cel: str | None  # holds when valid; None when CEL cannot express it (renderer checks it)


@dataclass(frozen=True)
class FieldError:
    path: str  # full path, e.g. spec.replicas.min
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _is_tpu(s: LLMServiceSpec) -> bool:
    return get(s.accelerator.type).is_tpu


def _gpus(s: LLMServiceSpec) -> int:
    return s.engine.tensor_parallel_size * s.engine.pipeline_parallel_size


_TPU_CEL = " || ".join(f"self.accelerator.type == '{t}'" for t in tpu_types())
_IS_TPU = f"({_TPU_CEL})"
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
_MAX_PER_NODE = {a.key: a.max_per_node for a in ACCELERATORS.values() if not a.is_tpu}
_MAX_PER_NODE_CEL = "{" + ", ".join(f"'{k}': {v}" for k, v in _MAX_PER_NODE.items()) + "}"
_GPU_TP_FITS_CEL = f"{_IS_TPU} || self.engine.tensorParallelSize <= {_MAX_PER_NODE_CEL}[self.accelerator.type]"
_GPU_WHOLE_NODES_CEL = (
    f"{_IS_TPU} || self.engine.tensorParallelSize * self.engine.pipelineParallelSize <= "
    f"{_MAX_PER_NODE_CEL}[self.accelerator.type] || "
    f"(self.engine.tensorParallelSize * self.engine.pipelineParallelSize) % "
    f"{_MAX_PER_NODE_CEL}[self.accelerator.type] == 0"
)
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
}


def _reserved_args(s: LLMServiceSpec) -> list[str]:
    return sorted(k for k in s.engine.extra_args if k in _RESERVED_ENGINE_ARGS)


RULES: tuple[Rule, ...] = (
    Rule(
        "model.source",
        "must be a Hugging Face id (org/name), gs://bucket/path, s3://bucket/path or pvc://claim/path",
        lambda s: re.fullmatch(SOURCE_PATTERN, s.model.source) is None,
        f"self.model.source.matches(r'{SOURCE_PATTERN}')",  # raw string: CEL rejects the \\w escape
    ),
    Rule(
        "replicas.min",
        "must be <= replicas.max",
        lambda s: s.replicas.min > s.replicas.max,
        "self.replicas.min <= self.replicas.max",
    ),
    Rule(
        "replicas.initial",
        "must be between replicas.min and replicas.max",
        lambda s: s.replicas.initial is not None and not s.replicas.min <= s.replicas.initial <= s.replicas.max,
        "!has(self.replicas.initial) || (self.replicas.initial >= self.replicas.min && "
        "self.replicas.initial <= self.replicas.max)",
    ),
    Rule(
        "accelerator.topology",
        "is required for TPU types: set the slice topology of one replica, e.g. 2x4",
        lambda s: _is_tpu(s) and s.accelerator.topology is None,
        f"!{_IS_TPU} || has({_TOPO})",
    ),
    Rule(
        "accelerator.topology",
        "applies only to TPU types: remove it (GPU replicas are sized by accelerator.perReplica)",
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
        lambda s: not _is_tpu(s) and s.engine.tensor_parallel_size > _MAX_PER_NODE[s.accelerator.type],
        _GPU_TP_FITS_CEL,
    ),
    Rule(
        "engine.pipelineParallelSize",
        "a replica larger than one node must use whole nodes: tensorParallelSize x "
        f"pipelineParallelSize must be a multiple of the GPUs per node ({_GPUS_PER_NODE})",
        lambda s: (
            not _is_tpu(s)
            and _gpus(s) > _MAX_PER_NODE[s.accelerator.type]
            and _gpus(s) % _MAX_PER_NODE[s.accelerator.type] != 0
        ),
        _GPU_WHOLE_NODES_CEL,
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
        "overrides GPU node pools only: TPU machine types follow accelerator.topology",
        lambda s: _is_tpu(s) and s.accelerator.machine_type is not None,
        f"!{_IS_TPU} || !has(self.accelerator.machineType)",
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
        "session-affinity hashes X-Session-Id in Ray's HAProxy, which direct streaming bypasses: "
        "set routing.directStreaming: false",
        lambda s: s.routing.policy == "session-affinity" and s.routing.direct_streaming,
        "self.routing.policy != 'session-affinity' || !self.routing.directStreaming",
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
        lambda s: s.prefill_decode is not None and _is_tpu(s),
        f"!has(self.prefillDecode) || !{_IS_TPU}",
    ),
    Rule(
        "engine.extraArgs",
        "must not repeat a typed field: use "
        + ", ".join(f"{v} instead of {k}" for k, v in _RESERVED_ENGINE_ARGS.items()),
        lambda s: bool(_reserved_args(s)),
        None,
    ),
)


def spec_errors(spec: LLMServiceSpec) -> list[FieldError]:
    return [FieldError(f"spec.{r.field}", r.message) for r in RULES if r.violated(spec)]


def name_errors(name: str) -> list[FieldError]:
    if len(name) > MAX_NAME_LENGTH:
        return [FieldError("metadata.name", f"must be at most {MAX_NAME_LENGTH} characters")]
    return []
