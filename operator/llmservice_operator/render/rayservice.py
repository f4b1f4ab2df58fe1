"""The KubeRay RayService (ray.io/v1): serveConfigV2 plus the Ray cluster that runs it."""

from __future__ import annotations

import json
from typing import Any

import yaml

from .. import labels as keys
from ..api.pod_rules import LB_TYPE_ANNOTATION
from ..api.quantity import GIB, memory_bytes
from ..api.spec import LLMServiceSpec, PodOverrides
from ..catalog import Accelerator
from ..settings import OperatorSettings
from . import edge, names, probes, ray_hooks, scheduling
from .plan import MODELS_MOUNT, Plan
from .serve_config import SERVE_PORT, engine_digest, serve_config
from .shape import Shape, WorkerBounds
from .storage import (
    GCSFUSE_ANNOTATIONS,
    gcsfuse_volume,
    node_cache_owner,
    node_cache_volume,
    storage_env,
    storage_secret_env,
)

RAY_CONTAINER = "ray"
# HAProxy's choice among a node's ingress replicas (or routers). The replica that serves is the
# Serve request router's choice (routing.policy, serve_config.ROUTERS), so this stays the same
# for every policy: a policy change is then a Serve config update applied in place, not a new
# Ray cluster (a pod env change would be).
HAPROXY_BALANCE = "leastconn"


def kv_cache_gib(sh: Shape) -> int:
    """vLLM's CPU KV cache (VLLM_CPU_KVCACHE_SPACE, GiB): a quarter of the worker pod's memory,
    at least 1 GiB. The rest holds the weights, activations, Ray and the Python processes."""
    assert sh.worker
    return max(1, memory_bytes(sh.worker.memory) // 4 // GIB)


RAY_SHUTDOWN_DRAIN = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"
RAY_SHUTDOWN_DRAIN_DEFAULT = 30  # Ray 2.60's own
SHUTDOWN_MARGIN_SECONDS = 10  # Ray stopping its processes after the drain


def shutdown_drain_seconds(spec: LLMServiceSpec) -> int:
    """How long Ray drains a node on SIGTERM (lets Serve stop routing to it) before stopping
    its processes. When a whole cluster goes (an upgrade's old cluster, a deleted service) no
    other node takes its replicas over, so the drain always runs to its end: no longer than
    upgrade.drainSeconds, which the old cluster already had after traffic moved away."""
    drain = spec.upgrade.drain_seconds
    return RAY_SHUTDOWN_DRAIN_DEFAULT if drain is None else min(drain, RAY_SHUTDOWN_DRAIN_DEFAULT)


def termination_grace_seconds(spec: LLMServiceSpec, serves: bool) -> int:
    """The kubelet SIGKILLs after this: room for the preStop sleep, Ray's drain and its
    process shutdown, so a pod stops gracefully (Kubernetes' default 30 s cut Ray's drain)."""
    drain = spec.ray.env.get(RAY_SHUTDOWN_DRAIN, "")
    seconds = int(drain) if drain.isdigit() else shutdown_drain_seconds(spec)
    return (edge.DRAIN_SECONDS if serves else 0) + seconds + SHUTDOWN_MARGIN_SECONDS


def ray_env(p: Plan, engine_env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Env for every Ray container (`engine_env`: workers only). Serve reads these at
    controller/proxy start, so they must be pod env (runtime_env is too late).
    spec.ray.env wins over everything rendered here."""
    spec = p.spec
    env: dict[str, str] = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": HAPROXY_BALANCE,
        RAY_SHUTDOWN_DRAIN: str(shutdown_drain_seconds(spec)),
    }
    if not p.accelerator.is_cpu:
        # On CPU Ray Serve LLM runs vLLM's multiprocessing executor, never the Ray one.
        env["VLLM_USE_RAY_V2_EXECUTOR_BACKEND"] = "1"
    env.update(engine_env or {})
    env.update(storage_env(spec))
    if spec.routing.direct_streaming:
        env["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] = "1"
        if spec.model.lora:
            # The router reads the body's `model` field to pick a replica with the LoRA adapter
            # (Ray refuses multi-LoRA with direct streaming otherwise). Prefix-aware routing
            # needs direct streaming off (api/rules.py): this router never learns prefixes.
            env["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] = "1"
    env.update(spec.ray.env)
    env["PYTHONPATH"] = ray_hooks.pythonpath(spec.ray.env.get("PYTHONPATH"))
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    secrets = {name: (ref.name, ref.key) for name, ref in spec.ray.secret_env.items()}
    if spec.model.hf_token_secret:
        secrets["HF_TOKEN"] = (spec.model.hf_token_secret.name, spec.model.hf_token_secret.key)
    for name, (secret, key) in sorted(secrets.items()):
        out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    # The storage credentials and Ray's token: what spec.ray.env or secretEnv set wins.
    defaults = storage_secret_env(spec) + (auth_env(p.name) if spec.ray.auth == "token" else [])
    out += [e for e in defaults if e["name"] not in spec.ray.env and e["name"] not in secrets]
    return out


def auth_env(svc_name: str) -> list[dict[str, Any]]:
    """Ray's token, as KubeRay would inject it (it skips names already set), except optional:
    KubeRay's Redis cleanup Job copies the head's env and runs after the LLMService, and with it
    the token Secret, is gone; it talks only to Redis and must still start."""
    ref = {"name": names.ray_auth_secret(svc_name), "key": names.RAY_AUTH_TOKEN_KEY, "optional": True}
    return [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": ref}}]


def _image(spec: LLMServiceSpec, settings: OperatorSettings, acc: Accelerator, worker: bool) -> str:
    """spec.ray.image wins (it must then be multi-arch for Arm workers)."""
    if spec.ray.image:
        return spec.ray.image
    if worker and acc.arch == "arm64":  # the head stays on an x86 CPU node
        return settings.arm_gpu_ray_image
    by_family = {"gpu": settings.gpu_ray_image, "tpu": settings.tpu_ray_image, "cpu": settings.cpu_ray_image}
    return by_family[acc.family]


def _mounts_bucket(p: Plan, worker: bool) -> bool:
    """model.loadFormat mount: the replicas read the weights from the mounted bucket; the head does not."""
    return worker and p.spec.model.load_format == "mount"


def _volumes(p: Plan, worker: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    vols: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}, ray_hooks.volume()]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}, ray_hooks.mount()]
    models: dict[str, Any] | None = None
    if p.source.claim:
        models = {"persistentVolumeClaim": {"claimName": p.source.claim, "readOnly": True}}
    elif _mounts_bucket(p, worker):
        models = {"csi": gcsfuse_volume(p.source.uri)}
    if models:
        vols.append({"name": "models", **models})
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
    if cache := node_cache_volume(p.spec):
        vols.append(cache[0])
        mounts.append(cache[1])
    return vols, mounts


def _pod(
    p: Plan,
    settings: OperatorSettings,
    ray_container: dict[str, Any],
    *,
    serves: bool,
    worker: bool = False,
    engine_env: dict[str, str] | None = None,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`serves`: the pod is behind the Service, so it gets the edge sidecar."""
    svc = p.svc
    vols, mounts = _volumes(p, worker)
    ray_container = {
        **ray_container,
        "image": _image(svc.spec, settings, p.accelerator, worker),
        "env": ray_env(p, engine_env),
        "volumeMounts": mounts,
    }
    if serves:
        # The edge sidecar forwards to this container: it must outlive the sidecar's drain.
        ray_container["lifecycle"] = {"preStop": {"sleep": {"seconds": edge.DRAIN_SECONDS}}}
    containers = [ray_container]
    if svc.spec.ingress.sidecar and serves:
        containers.append(edge.container(p, settings, head=not worker))
        vols += edge.volumes(p)
    pod_spec: dict[str, Any] = {
        "containers": containers,
        "volumes": vols,
        "terminationGracePeriodSeconds": termination_grace_seconds(svc.spec, serves),
        **(extra_spec or {}),
    }
    if svc.spec.model.node_cache:
        pod_spec["initContainers"] = [node_cache_owner(ray_container["image"])]
    if svc.spec.ray.service_account_name:
        pod_spec["serviceAccountName"] = svc.spec.ray.service_account_name
    meta: dict[str, Any] = {"labels": names.labels(svc.metadata.name), "annotations": ray_hooks.pod_annotations()}
    if _mounts_bucket(p, worker):
        meta["annotations"] |= GCSFUSE_ANNOTATIONS
    return _with_overrides(
        {"metadata": meta, "spec": pod_spec}, svc.spec.ray.worker_pods if worker else svc.spec.ray.head_pod
    )


def _with_overrides(template: dict[str, Any], add: PodOverrides) -> dict[str, Any]:
    """The user's additions (api/pod_rules.py keeps them off the keys rendered here)."""
    meta, spec = template["metadata"], template["spec"]
    if add.labels:
        meta["labels"] = {**add.labels, **meta["labels"]}
    if add.annotations or meta.get("annotations"):
        meta["annotations"] = dict(sorted({**meta.get("annotations", {}), **add.annotations}.items()))
    if add.node_selector:
        spec["nodeSelector"] = dict(sorted({**add.node_selector, **spec.get("nodeSelector", {})}.items()))
    if add.tolerations:
        spec["tolerations"] = spec.get("tolerations", []) + [
            t.model_dump(by_alias=True, exclude_none=True) for t in add.tolerations
        ]
    return template


def head_group(p: Plan, settings: OperatorSettings) -> dict[str, Any]:
    svc = p.svc
    r = svc.spec.ray.head_resources
    res = {"cpu": r.cpu, "memory": r.memory}
    # A CPU service's head asks for little (e.g. 100m on a 2-core node) but needs more while
    # Ray and Serve start: no CPU limit there, so it bursts instead of being throttled.
    limits = {"memory": r.memory} if p.accelerator.is_cpu else res
    container = {
        "name": RAY_CONTAINER,
        "ports": [
            {"name": "gcs", "containerPort": 6379},
            {"name": "dashboard", "containerPort": 8265},
            {"name": "client", "containerPort": 10001},
            {"name": "serve", "containerPort": SERVE_PORT},
            {"name": "metrics", "containerPort": 8080},
        ],
        "resources": {"requests": res, "limits": limits},
        "readinessProbe": probes.head_readiness(),
    }
    # A CPU service's head goes to the service's CPU machines (GPU/TPU heads to any CPU node).
    selector = scheduling.cpu_machine_selector(svc.spec, p.shape)
    return {
        # num-cpus 0: no model replica or Serve actor that needs CPU lands on the head.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": _pod(
            p,
            settings,
            container,
            serves=p.head_serves,
            extra_spec={"nodeSelector": selector} if selector else None,
        ),
    }


def worker_group(p: Plan, settings: OperatorSettings, wb: WorkerBounds) -> dict[str, Any]:
    svc = p.svc
    sh = wb.shape
    acc = sh.accelerator
    group = wb.role if wb.role in ("prefill", "decode") else acc.family
    cpu, mem = sh.pod_requests()
    requests, limits = {"cpu": cpu, "memory": mem}, {"memory": mem}
    if acc.resource:
        requests[acc.resource] = limits[acc.resource] = str(sh.per_pod)
    container = {
        "name": RAY_CONTAINER,
        # Named, because the Service targets it without the sidecar and the NetworkPolicy
        # opens it by name: an undeclared name resolves to no port (an endpoint without one).
        "ports": [{"name": "serve", "containerPort": SERVE_PORT}],
        "resources": {"requests": requests, "limits": limits},
        "readinessProbe": probes.worker_readiness(),
    }
    extra: dict[str, Any] = {}
    selector = scheduling.node_selector(svc.spec, sh)
    if selector:
        extra["nodeSelector"] = selector
    tolerations = scheduling.tolerations(svc.spec, sh)
    if tolerations:
        extra["tolerations"] = tolerations
    aff = scheduling.affinity(svc.spec, sh, svc.metadata.name, group)
    if aff:
        extra["affinity"] = aff
    spread = scheduling.spread(svc.spec, svc.metadata.name, group)
    if spread:
        extra["topologySpreadConstraints"] = spread
    start: dict[str, str] = {}
    engine_env: dict[str, str] = {}
    if acc.is_gpu:
        # Advertise the accelerator type before any node exists, so the autoscaler can scale
        # from zero for Serve LLM's `accelerator_type:<X>` resource demand.
        start["resources"] = json.dumps({f"accelerator_type:{acc.ray_type}": 1})
    if sh.ray_cpus is not None:
        # The replica's placement group asks for exactly these CPUs (serve_config.llm_config):
        # one replica per pod. Explicit, because KubeRay would derive it from the request.
        start["num-cpus"] = str(sh.ray_cpus)
        engine_env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib(sh))
        # vLLM pins its threads to cores it picks from the pod's CPU set ("auto"). A pod that
        # does not own its cores (no static CPU manager, no Guaranteed QoS) sees every core of
        # the node, so every engine on the node pinned itself to the same first core (seen on
        # the real node during a blue/green upgrade). Let the kernel place the threads instead;
        # `ray.env` sets "auto" back where pods own their cores.
        engine_env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return {
        "groupName": group,
        "replicas": wb.min_groups,
        "minReplicas": wb.min_groups,
        "maxReplicas": wb.max_groups,
        "numOfHosts": sh.num_of_hosts,
        "rayStartParams": start,
        "template": _pod(p, settings, container, serves=True, worker=True, engine_env=engine_env, extra_spec=extra),
    }


def ray_cluster_spec(p: Plan, settings: OperatorSettings) -> dict[str, Any]:
    svc = p.svc
    idle = svc.spec.autoscaling.worker_idle_seconds
    autoscaler: dict[str, Any] = {"version": "v2", "upscalingMode": "Default", "idleTimeoutSeconds": idle}
    if p.accelerator.is_cpu:
        # KubeRay's default for its autoscaler sidecar on the head (500m CPU) would be most of
        # a small node's CPU; it needs little.
        autoscaler["resources"] = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}
    spec: dict[str, Any] = {
        "rayVersion": svc.spec.ray.version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": autoscaler,
        "headGroupSpec": head_group(p, settings),
        "workerGroupSpecs": [worker_group(p, settings, wb) for wb in p.groups],
    }
    if svc.spec.ray.auth == "token":
        # Our own Secret, not KubeRay's per-RayCluster one: the token outlives a blue/green
        # upgrade, so tools that hold it keep working.
        spec["authOptions"] = {"mode": "token", "secretName": p.names.ray_auth}
    ft = svc.spec.fault_tolerance
    if ft:
        gcs: dict[str, Any] = {"redisAddress": ft.redis_address}
        if ft.redis_password_secret:
            ref = ft.redis_password_secret
            gcs["redisPassword"] = {"valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        spec["gcsFaultToleranceOptions"] = gcs
    return spec


def upgrade_strategy(spec: LLMServiceSpec) -> dict[str, Any]:
    u = spec.upgrade
    kind = {"new-cluster": "NewCluster", "incremental": "NewClusterWithIncrementalUpgrade", "none": "None"}[u.strategy]
    out: dict[str, Any] = {"type": kind}
    if u.strategy == "incremental":
        out["clusterUpgradeOptions"] = {
            "maxSurgePercent": u.max_surge_percent,
            "stepSizePercent": u.step_size_percent,
            "intervalSeconds": u.interval_seconds,
            "gatewayClassName": u.gateway_class_name,
        }
    return out


def serve_service(p: Plan) -> dict[str, Any]:
    """KubeRay keeps this Service pointed at the active cluster's serving pods; naming it after
    the LLMService gives the endpoint http://<name>.<namespace>.svc:8000/v1."""
    svc = p.svc
    target = edge.serving_port(svc.spec)
    meta: dict[str, Any] = {"name": p.names.serve_service, "labels": names.labels(p.name)}
    spec: dict[str, Any] = {"ports": [{"name": "serve", "port": SERVE_PORT, "targetPort": target, "protocol": "TCP"}]}
    meta_exposure, spec_exposure = exposure(svc.spec)
    meta.update(meta_exposure)
    spec.update(spec_exposure)
    return {"metadata": meta, "spec": spec}


EXPOSURE_ANNOTATIONS = keys.EXPOSURE_ANNOTATIONS


def exposure(spec: LLMServiceSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Service's metadata and spec fields that ingress.service decides (the operator also
    applies these to the existing Service: KubeRay writes a Service's spec only when traffic
    moves to a new Ray cluster, and its annotations never)."""
    e = spec.ingress.service
    annotations = dict(e.annotations)
    if e.type == "InternalLoadBalancer":
        annotations[LB_TYPE_ANNOTATION] = "Internal"
    if annotations:  # so that a later change can remove what is no longer wanted
        annotations[EXPOSURE_ANNOTATIONS] = ",".join(sorted(annotations))
    meta = {"annotations": dict(sorted(annotations.items()))} if annotations else {}
    out: dict[str, Any] = {"type": "ClusterIP" if e.type == "ClusterIP" else "LoadBalancer"}
    if e.load_balancer_source_ranges:
        out["loadBalancerSourceRanges"] = list(e.load_balancer_source_ranges)
    return meta, out


def _pin_engine(cluster: dict[str, Any], digest: str) -> None:
    """KubeRay starts a new Ray cluster only when rayClusterConfig changes; a change of the
    Serve config alone is applied in place, restarting replicas on the running cluster (with one
    replica, or no room for a second, that is downtime). The engine's digest on every Ray pod
    makes an engine change (model, engine args, LoRA, accelerator) a change of the cluster, so
    strategy new-cluster really is blue/green; autoscaling bounds stay in-place updates."""
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for g in groups:
        g["template"]["metadata"].setdefault("annotations", {})[keys.ENGINE_ANNOTATION] = digest


def ray_service(p: Plan, settings: OperatorSettings) -> dict[str, Any]:
    spec = p.spec
    conf = serve_config(p)
    cluster = ray_cluster_spec(p, settings)
    if spec.upgrade.strategy != "none":
        _pin_engine(cluster, engine_digest(conf))
    body: dict[str, Any] = {
        "serveConfigV2": yaml.safe_dump(conf, sort_keys=False),
        "rayClusterConfig": cluster,
        "upgradeStrategy": upgrade_strategy(spec),
        "serveService": serve_service(p),
        "excludeHeadPodFromServeSvc": not p.head_serves,
    }
    if spec.upgrade.drain_seconds is not None:
        body["rayClusterDeletionDelaySeconds"] = spec.upgrade.drain_seconds
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": p.names.ray_service, "namespace": p.namespace, "labels": names.labels(p.name)},
        "spec": body,
    }
