"""Ray Serve config (KubeRay `serveConfigV2`) running Ray Serve LLM's OpenAI app builders."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from ..api.spec import LLMServiceSpec, ReplicaSpec, engine_arg
from . import ray_hooks
from .plan import MODELS_MOUNT, Plan
from .shape import WorkerBounds
from .storage import bucket_uri, loading_kwargs

SERVE_PORT = 8000
PREFIX_ROUTER = "ray.serve.llm.request_router:PrefixCacheAffinityRouter"
# routing.policy -> the Serve request router that picks the replica (least-loaded: Serve's own
# power-of-two-choices). The router runs where a request is routed: in the LLM router that
# HAProxy asks (direct streaming) or in the OpenAI ingress; both pass X-Session-Id on.
ROUTERS = {
    "prefix-aware": PREFIX_ROUTER,
    "session-affinity": "ray.serve.experimental.consistent_hash_router:ConsistentHashRouter",
    "round-robin": "ray.serve.experimental.round_robin_router:RoundRobinRouter",
}
BUILDERS = {
    "openai": "ray.serve.llm:build_openai_app",
    "dp": "ray.serve.llm:build_dp_openai_app",
    "pd": "ray.serve.llm:build_pd_openai_app",
}


def engine_kwargs(p: Plan, tensor_parallel_size: int | None = None) -> dict[str, Any]:
    spec = p.spec
    e = spec.engine
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": tensor_parallel_size or e.tensor_parallel_size,
        "pipeline_parallel_size": e.pipeline_parallel_size,
        "enable_prefix_caching": e.enable_prefix_caching,
    }
    optional = {
        "max_model_len": e.max_model_len,
        "gpu_memory_utilization": e.gpu_memory_utilization,
        "quantization": e.quantization,
        "kv_cache_dtype": e.kv_cache_dtype,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if e.data_parallel_size > 1:
        kwargs["data_parallel_size"] = e.data_parallel_size
    if e.speculative:
        sp = e.speculative
        conf: dict[str, Any] = {
            "method": "draft_model" if sp.method == "draft-model" else sp.method,
            "num_speculative_tokens": sp.num_speculative_tokens,
        }
        if sp.model:
            conf["model"] = sp.model
        if sp.method == "ngram":
            conf["prompt_lookup_max"] = 4
        kwargs["speculative_config"] = conf
    if spec.model.lora:
        kwargs["enable_lora"] = True
    if spec.prefill_decode:
        kwargs["kv_transfer_config"] = {"kv_connector": spec.prefill_decode.kv_connector, "kv_role": "kv_both"}
    kwargs.update(loading_kwargs(spec, p.source.scheme == "hf"))
    if p.accelerator.is_cpu:
        # torch.compile on CPU needs a C++ compiler in the image; eager mode does not.
        kwargs["enforce_eager"] = True
    kwargs.update({engine_arg(k): v for k, v in e.extra_args.items()})
    return dict(sorted(kwargs.items()))


def autoscaling_config(spec: LLMServiceSpec, replicas: ReplicaSpec) -> dict[str, Any]:
    a = spec.autoscaling
    conf: dict[str, Any] = {
        "min_replicas": replicas.min,
        "max_replicas": replicas.max,
        "initial_replicas": replicas.initial if replicas.initial is not None else replicas.min,
        # Ray LLM defaults this to 1e9 (never scales): always set it.
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_seconds,
        "downscale_delay_s": a.downscale_delay_seconds,
    }
    if a.downscale_to_zero_delay_seconds is not None:
        conf["downscale_to_zero_delay_s"] = a.downscale_to_zero_delay_seconds
    return conf


def scaling_options(spec: LLMServiceSpec, replicas: ReplicaSpec) -> dict[str, Any]:
    """The deployment options Serve changes on the running replicas (autoscaling, concurrency)."""
    return {
        "autoscaling_config": autoscaling_config(spec, replicas),
        "max_ongoing_requests": spec.autoscaling.max_ongoing_requests or 4 * spec.autoscaling.target_ongoing_requests,
    }


def llm_deployment_name(model_id: str) -> str:
    """The name Ray Serve LLM gives a model's LLMServer deployment (core/server/builder.py)."""
    return "LLMServer:" + model_id.replace("/", "--").replace(".", "_")


def llm_config(
    p: Plan, group: WorkerBounds, replicas: ReplicaSpec | None = None, scaling: bool = True
) -> dict[str, Any]:
    """One entry of Ray Serve LLM's `llm_configs` (validated in tests against Ray's LLMConfig):
    the Serve deployment of one worker group (`replicas`: its own unless given). `scaling`
    False leaves the autoscaling and concurrency options to the Serve config's `deployments`."""
    spec, sh = p.spec, group.shape
    replicas = replicas or group.replicas
    source = p.source.serve_source
    if spec.model.load_format == "mount":  # the bucket folder, mounted in the worker pods
        source = MODELS_MOUNT
    elif p.source.scheme in ("gs", "s3"):  # the bucket as the loader must read it
        source = {"bucket_uri": bucket_uri(spec, p.source.uri, streamed=spec.model.load_format == "stream")}
    loading: dict[str, Any] = {"model_id": spec.model.name, "model_source": source}
    if spec.model.tokenizer:
        loading["tokenizer_source"] = spec.model.tokenizer
    deployment: dict[str, Any] = scaling_options(spec, replicas) if scaling else {}
    if spec.routing.policy in ROUTERS:
        deployment["request_router_config"] = {"request_router_class": ROUTERS[spec.routing.policy]}
    # The replica fetches its own model files when it fits one node (render/ray_hooks.py).
    conf: dict[str, Any] = {"model_loading_config": loading, "callback_config": {"callback_class": ray_hooks.CALLBACK}}
    if sh.ray_cpus is not None:
        # CPU: no accelerator_type (Ray refuses one with kind cpu). The replica is one
        # placement-group bundle of all the worker pod's Ray CPUs (rayStartParams num-cpus), and
        # the replica actor takes none of its own, so exactly one replica fits a pod. One
        # bundle also for tensorParallelSize x pipelineParallelSize > 1: vLLM on CPU starts its
        # ranks as local processes (multiprocessing executor), which use no bundles.
        conf["accelerator_config"] = {"kind": "cpu"}
        conf["placement_group_config"] = {"bundles": [{"CPU": sh.ray_cpus}], "strategy": "STRICT_PACK"}
        deployment["ray_actor_options"] = {"num_cpus": 0}
    else:
        conf["accelerator_type"] = sh.accelerator.ray_type
    conf["engine_kwargs"] = engine_kwargs(p, group.tensor_parallel_size)
    conf["deployment_config"] = deployment
    if spec.routing.stream_batching_ms is not None:
        conf["experimental_configs"] = {"stream_batching_interval_ms": spec.routing.stream_batching_ms}
    if sh.tpu:
        # Ray reserves the whole slice for the replica (SlicePlacementGroup) from the topology.
        conf["accelerator_config"] = {"kind": "tpu", "topology": sh.tpu.topology}
    if spec.model.lora:
        conf["lora_config"] = {
            "dynamic_lora_loading_path": bucket_uri(spec, spec.model.lora.source),
            "max_num_adapters_per_replica": spec.model.lora.max_adapters_per_replica,
        }
    return conf


def application(p: Plan) -> dict[str, Any]:
    spec = p.spec
    roles = {g.role: g for g in p.groups}
    args: dict[str, Any]
    overrides: list[dict[str, Any]] = []
    if spec.prefill_decode:
        builder = "pd"
        args = {role + "_config": llm_config(p, roles[role]) for role in ("prefill", "decode")}
    elif spec.engine.data_parallel_size > 1:
        # Ray's DPServer counts DP groups here and multiplies by data_parallel_size itself.
        builder, args = "dp", {"llm_config": llm_config(p, roles["dp"], spec.replicas)}
    else:
        # Serve restarts every replica (reloading its weights) when an application's args change:
        # they are in its code version. So what Serve changes on running replicas goes in the
        # config's per-deployment options instead, and a changed replicas.max or delay reaches
        # the running engines in place. (The DP and PD builders derive their deployments'
        # options from the llm_config: DPServer multiplies the bounds by the DP size.)
        builder, args = "openai", {"llm_configs": [llm_config(p, roles["llm"], scaling=False)]}
        name = llm_deployment_name(spec.model.name)
        overrides = [{"name": name, **scaling_options(spec, roles["llm"].replicas)}]
        # Ray refuses ingress_deployment_config with direct streaming, where no such deployment exists.
        ingress: dict[str, Any] = {}
        if p.accelerator.is_cpu and not spec.routing.direct_streaming:
            # The OpenAI ingress deployment asks for 1 CPU by default: a CPU service has none
            # to spare (the head has num-cpus 0, workers' CPUs belong to their replica).
            ingress["ray_actor_options"] = {"num_cpus": 0}
        if spec.replicas.min == 0 and not spec.routing.direct_streaming:
            # Ray scales the ingress to zero with the model (measured on the real node: a first
            # request then waited ~17 s for it before the model replica even started, and the
            # model's scale-to-zero timer ran while no request could reach it). It holds no
            # accelerator: one stays.
            ingress["autoscaling_config"] = {"min_replicas": 1}
        if ingress:
            args["ingress_deployment_config"] = ingress
    app: dict[str, Any] = {"name": "llm", "route_prefix": "/", "import_path": BUILDERS[builder], "args": args}
    if overrides:
        app["deployments"] = overrides
    return app


def serve_config(p: Plan) -> dict[str, Any]:
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        "applications": [application(p)],
    }


def engine_digest(conf: dict[str, Any]) -> str:
    """A digest of what each replica's engine loads: every llm_config of the app except its
    deployment_config (autoscaling, routing, concurrency), which Serve changes on the same Ray
    cluster (a routing change restarts the replicas one by one: the router is in Serve's code
    version)."""
    args = conf["applications"][0]["args"]
    configs = args.get("llm_configs") or [
        args[k] for k in ("llm_config", "prefill_config", "decode_config") if k in args
    ]
    engines = [{k: v for k, v in c.items() if k != "deployment_config"} for c in configs]
    return hashlib.sha256(json.dumps(engines, sort_keys=True).encode()).hexdigest()[:16]


def initial_replicas(conf: dict[str, Any] | None) -> int | None:
    """The model deployment's initial_replicas in the config's per-deployment options (the
    OpenAI builder's, changed in place); None for the DP and PD builders (in their args, so
    any change restarts every replica anyway)."""
    for app in (conf or {}).get("applications") or []:
        for d in app.get("deployments") or []:
            found = (d.get("autoscaling_config") or {}).get("initial_replicas")
            if found is not None:
                return int(found)
    return None


def without_initial(conf: dict[str, Any]) -> dict[str, Any]:
    """The config with every per-deployment initial_replicas left out (to compare the rest)."""
    out = copy.deepcopy(conf)
    for app in out.get("applications") or []:
        for d in app.get("deployments") or []:
            (d.get("autoscaling_config") or {}).pop("initial_replicas", None)
    return out
