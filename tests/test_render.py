"""What each sample renders to, checked against the real upstream schemas and tools."""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from google.cloud import container_v1
from ray.llm._internal.common.placement import PlacementGroupConfig
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.serve._private.config import ReplicaConfig
from ray.serve.schema import ServeDeploySchema

from llmservice_operator import labels as keys
from llmservice_operator.api import parse
from llmservice_operator.api.quantity import cpu_cores
from llmservice_operator.render import edge, nodepools, ray_hooks, render
from llmservice_operator.render.plan import plan
from llmservice_operator.render.serve_config import llm_deployment_name
from llmservice_operator.render.shape import worker_bounds
from llmservice_operator.yamlio import dump_all

from .conftest import ROOT, SAMPLES, sample_doc, with_spec
from .kube_schema import check, kuberay_crd, open_api_schema

GOLDEN = ROOT / "tests" / "golden"


def _cli_render(path: Path) -> str:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "llmservice"), "render", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_golden(path):
    """`make render-samples` refreshes these after an intended change; review the diff."""
    assert _cli_render(path) == (GOLDEN / path.name).read_text()


def test_output_is_deterministic(sample, settings):
    a = dump_all(render(sample, settings).kubernetes_objects())
    b = dump_all(render(parse(json.loads(json.dumps(sample.model_dump(by_alias=True)))), settings).kubernetes_objects())
    assert a == b


def _llm_configs(rs: dict) -> list[dict]:
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    args = app["args"]
    return args.get("llm_configs") or [args[k] for k in ("llm_config", "prefill_config", "decode_config") if k in args]


def _router_class_exists(path: str) -> bool:
    """Ray validates a router by importing it, which needs vLLM; check the class is defined
    in the module's source instead."""
    module, _, cls = path.partition(":")
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    source = ray_dir.parent / (module.replace(".", "/") + ".py")  # importing ray.serve.llm needs vLLM
    return source.is_file() and f"class {cls}(" in source.read_text()


def test_llm_configs_validate_against_ray(sample, settings):
    rs = render(sample, settings).ray_service
    conf_v2 = ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
    [app] = conf_v2.applications
    overrides = {d.name: d for d in app.deployments}
    for conf in _llm_configs(rs):
        conf = copy.deepcopy(conf)
        router = conf["deployment_config"].pop("request_router_config", None)
        if router:
            assert _router_class_exists(router["request_router_class"])
        parsed = LLMConfig.model_validate(conf)
        # The Serve config's options for the deployment (by the name Ray Serve LLM gives it,
        # checked against Ray's builder in e2e/tests/test_ray_dp_bounds.py), or the llm_config's own.
        name = llm_deployment_name(parsed.model_id)
        own = parsed.deployment_config.get("autoscaling_config")
        auto = overrides[name].autoscaling_config if name in overrides else own
        assert auto["target_ongoing_requests"] < 1e9, "Ray LLM's default never scales"


def test_scaling_changes_leave_the_application_args_and_so_the_replicas_alone(settings):
    """Serve restarts every replica, reloading its weights, when an application's args change
    (they are in its code version); replicas, delays and concurrency are per-deployment
    options instead, which it changes on the running replicas."""

    def app(**changes):
        rs = render(parse(with_spec(sample_doc("cpu-tiny.yaml"), **changes)), settings).ray_service
        return yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]

    base = app()
    changed = app(replicas={"min": 1, "max": 3}, autoscaling={"downscaleDelaySeconds": 30, "maxOngoingRequests": 8})
    assert changed["args"] == base["args"]
    [options] = changed["deployments"]
    assert options["autoscaling_config"]["max_replicas"] == 3 and options["max_ongoing_requests"] == 8
    assert app(routing={"policy": "round-robin"})["args"] != base["args"]  # a new router: replicas restart


def test_engine_args_in_cli_spelling_render_as_engine_args_fields(settings):
    """Ray Serve LLM passes engine_kwargs to vLLM's EngineArgs by field name and refuses
    max-num-seqs ("Unknown engine argument"), which vLLM's CLI takes for max_num_seqs."""
    svc = parse(with_spec(sample_doc("cpu-tiny.yaml"), engine__extraArgs={"max-num-seqs": 8, "max_loras": 2}))
    [conf] = _llm_configs(render(svc, settings).ray_service)
    assert conf["engine_kwargs"]["max_num_seqs"] == 8 and conf["engine_kwargs"]["max_loras"] == 2
    assert not [k for k in conf["engine_kwargs"] if "-" in k]


@pytest.mark.parametrize(("drain", "ray_drain"), [(None, 30), (10, 10), (900, 30)])
def test_ray_pods_stop_gracefully_before_the_kubelet_kills_them(settings, drain, ray_drain):
    """Ray 2.60 drains a node for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S on SIGTERM; Kubernetes'
    default 30 s grace SIGKILLed serving pods mid-drain (after their 5 s preStop)."""
    svc = parse(with_spec(sample_doc("cpu-tiny.yaml"), upgrade={"drainSeconds": drain} if drain else {}))
    cluster = _cluster(svc, settings)
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        ray = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in ray["env"]}
        assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == str(ray_drain)
        sleeps = [c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}) for c in pod["containers"]]
        pre_stop = max(s.get("seconds", 0) for s in sleeps)
        assert pod["terminationGracePeriodSeconds"] > pre_stop + ray_drain


@pytest.fixture(scope="module")
def rayservice_schema():
    return open_api_schema(kuberay_crd("rayservices"), "v1")


def test_rayservice_matches_kuberay_crd(sample, settings, rayservice_schema):
    assert check(render(sample, settings).ray_service, rayservice_schema) == []


def test_a_bucket_mounted_through_gcs_fuse_matches_kuberays_crd(rayservice_schema, settings):
    """model.loadFormat mount: the inline CSI volume, its mount and the sidecar annotations."""
    doc = with_spec(sample_doc("gemma-b200.yaml"), model__source="gs://team-models/gemma", model__loadFormat="mount")
    assert check(render(parse(doc), settings).ray_service, rayservice_schema) == []


def test_a_suspended_service_has_no_rayservice(settings):
    """KubeRay 1.6.1's RayService has no spec.suspend (the API server refused it: "field not
    declared in schema"), and a suspended RayCluster spec never resumed on the real node: a
    suspended service renders no RayService, so it and its Ray cluster are deleted; the edge
    config and the rest stay."""
    doc = sample_doc("cpu-tiny.yaml")
    suspended = render(parse(with_spec(doc, suspend=True)), settings)
    assert suspended.wanted_ray_service is None
    assert "RayService" not in {o["kind"] for o in suspended.kubernetes_objects()}
    assert suspended.edge_config is not None
    running = render(parse(doc), settings).wanted_ray_service
    assert running is not None and "suspend" not in running["spec"]


def test_schema_check_catches_typos(rayservice_schema, settings):
    """The check above must be able to fail: a misspelt field is reported, not pruned."""
    rs = render(parse(sample_doc("gemma-b200.yaml")), settings).ray_service
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica: unknown field" in p for p in check(rs, rayservice_schema))


def test_names_fit_in_63_characters(sample, settings):
    for obj in render(sample, settings).kubernetes_objects():
        assert len(obj["metadata"]["name"]) <= 63
    for pool in render(sample, settings).node_pools:
        assert len(pool["name"]) <= 40


def test_ray_env_turns_on_the_fast_path(settings):
    rs = render(parse(sample_doc("gemma-b200.yaml")), settings).ray_service
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        ray = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in ray["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # head AND workers
        assert env["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] == "1"
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert env["VLLM_USE_RAY_V2_EXECUTOR_BACKEND"] == "1"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in ray["volumeMounts"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head


def test_multi_lora_with_direct_streaming_forwards_the_body_to_the_router(settings):
    """Ray 2.60 refuses to build the app otherwise (`LoRA multiplexing with direct streaming
    requires RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1`, seen on the real node)."""

    def head_env(doc: dict) -> dict:
        rs = render(parse(doc), settings).ray_service
        return {
            e["name"]: e.get("value")
            for e in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
        }

    lora = with_spec(sample_doc("cpu-tiny.yaml"), model__lora={"source": "s3://loras/adapters"})
    assert head_env(lora)["RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY"] == "1"
    assert "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY" not in head_env(sample_doc("cpu-tiny.yaml"))
    indirect = with_spec(lora, routing__directStreaming=False)
    assert "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY" not in head_env(indirect)


def test_an_engine_change_is_a_cluster_change_for_kuberay(settings):
    """Seen on the real node: KubeRay applied a maxModelLen change in place (only serveConfigV2
    changed), restarting the only replica. The engine digest on the pods makes it blue/green;
    autoscaling bounds still change in place; strategy none keeps everything in place."""

    def cluster(**changes) -> dict:
        return render(parse(with_spec(sample_doc("cpu-tiny.yaml"), **changes)), settings).ray_service["spec"][
            "rayClusterConfig"
        ]

    base = cluster()
    digest = base["headGroupSpec"]["template"]["metadata"]["annotations"]["llmservice.dev/engine"]
    assert base["workerGroupSpecs"][0]["template"]["metadata"]["annotations"]["llmservice.dev/engine"] == digest
    assert cluster(engine__maxModelLen=384) != base
    assert cluster(model__lora={"source": "s3://loras/adapters"}) != base
    assert cluster(autoscaling__targetOngoingRequests=8) == base
    none = cluster(upgrade={"strategy": "none"})
    assert keys.ENGINE_ANNOTATION not in none["headGroupSpec"]["template"]["metadata"]["annotations"]


def test_every_ray_container_can_import_the_callback_the_serve_config_names(settings, tmp_path, monkeypatch):
    """The replica loads `callback_config.callback_class` with Ray's own loader from the file the
    downward API projects from the pod annotation, on the container's PYTHONPATH."""
    from ray.llm._internal.common.callbacks.base import CallbackBase
    from ray.llm._internal.common.utils.import_utils import load_class

    rendered = render(parse(sample_doc("cpu-tiny.yaml")), settings)
    cluster = rendered.ray_service["spec"]["rayClusterConfig"]
    [callback] = {c["callback_config"]["callback_class"] for c in _llm_configs(rendered.ray_service)}
    module = callback.partition(":")[0]
    for template in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]:
        [volume] = [v for v in template["spec"]["volumes"] if "downwardAPI" in v]
        [item] = volume["downwardAPI"]["items"]
        annotation = item["fieldRef"]["fieldPath"].split("'")[1]
        [ray] = [c for c in template["spec"]["containers"] if c["name"] == "ray"]
        [mount] = [m for m in ray["volumeMounts"] if m["name"] == volume["name"]]
        env = {e["name"]: e.get("value") for e in ray["env"]}
        assert env["PYTHONPATH"].split(":")[-1] == mount["mountPath"] and item["path"] == f"{module}.py"
        (tmp_path / item["path"]).write_text(template["metadata"]["annotations"][annotation])
    monkeypatch.syspath_prepend(str(tmp_path))
    assert issubclass(load_class(callback), CallbackBase)
    # The line it logs is the one the start's ModelFetched step is read from.
    hooks = importlib.import_module(module)
    assert hooks.FETCHED == ray_hooks.FETCHED
    # The variable the render sets for a bucket model's node cache, and the error the status reads.
    assert hooks.BUCKET_CACHE_ENV == ray_hooks.BUCKET_CACHE_ENV
    assert hooks.ModelSourceError.__name__ == ray_hooks.SOURCE_ERROR


def test_ray_containers_are_probed_with_kuberays_checks_every_two_seconds(settings):
    """KubeRay injects its readiness checks only where none is set: the rendered ones are the
    same checks (the head's dashboard agent; a worker's raylet and Serve proxy) sooner and more
    often, since KubeRay deploys the Serve app only to a Ready head."""
    cluster = render(parse(sample_doc("cpu-tiny.yaml")), settings).ray_service["spec"]["rayClusterConfig"]
    [head] = [c for c in cluster["headGroupSpec"]["template"]["spec"]["containers"] if c["name"] == "ray"]
    assert head["readinessProbe"]["httpGet"] == {"path": "/api/healthz", "port": 52365}
    worker, edge_c = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    command = worker["readinessProbe"]["exec"]["command"][-1]
    assert "52365/api/local_raylet_healthz" in command and "8000/-/healthz" in command
    for probe in (head["readinessProbe"], worker["readinessProbe"], edge_c["readinessProbe"]):
        assert probe["periodSeconds"] == 2 and probe.get("initialDelaySeconds", 0) <= 2, probe
    assert "livenessProbe" not in head and "livenessProbe" not in worker  # KubeRay's own


def test_serving_containers_drain_before_they_stop(settings):
    """A terminating pod leaves the Service's endpoints asynchronously: its sidecar and Ray
    keep answering a few seconds (preStop sleep) so late connections are served."""
    cluster = render(parse(sample_doc("cpu-tiny.yaml")), settings).ray_service["spec"]["rayClusterConfig"]
    ray, edge_c = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    assert ray["lifecycle"] == edge_c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    [head] = cluster["headGroupSpec"]["template"]["spec"]["containers"]  # not in the Service
    assert "lifecycle" not in head


def test_upgrade_drain_keeps_the_old_cluster_for_long_streams(settings, rayservice_schema):
    doc = with_spec(sample_doc("cpu-tiny.yaml"), upgrade__drainSeconds=900)
    rs = render(parse(doc), settings).ray_service
    assert rs["spec"]["rayClusterDeletionDelaySeconds"] == 900
    assert check(rs, rayservice_schema) == []
    assert (
        "rayClusterDeletionDelaySeconds" not in render(parse(sample_doc("cpu-tiny.yaml")), settings).ray_service["spec"]
    )


def test_bounds_are_consistent_across_the_three_autoscalers(settings):
    """Serve [1, 2] replicas of TP 16 on 4-host slices -> KubeRay [1, 2] slices of 4 pods ->
    two slice node pools of 4 nodes."""
    svc = parse(sample_doc("tpu-v6e-4x4-multihost.yaml"))
    out = render(svc, settings)
    group = out.ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"], group["numOfHosts"]) == (1, 2, 4)
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["google.com/tpu"] == "4"
    sel = group["template"]["spec"]["nodeSelector"]
    assert sel == {"cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice", "cloud.google.com/gke-tpu-topology": "4x4"}
    term = group["template"]["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["matchLabelKeys"] == ["ray.io/worker-group-replica-name"]
    assert [p["autoscaling"]["total_max_node_count"] for p in out.node_pools] == [4, 4]
    assert all(p["placement_policy"]["tpu_topology"] == "4x4" for p in out.node_pools)


def _pools(doc: dict) -> list[dict]:
    return nodepools.node_pools(plan(parse(doc)))


def test_pool_names_change_with_hardware_gke_cannot_update_in_place():
    """<namespace>-<name>[-suffix]-<digest of machine, accelerators, disk, spot, placement, ...>:
    new hardware is a new pool; the slot label stays and pairs it with the old one."""
    base = sample_doc("l4-spot-fallback.yaml")
    before = _pools(base)
    assert [p["name"][:-6] for p in before] == ["default-qwen-l4-spot", "default-qwen-l4-ondemand"]
    assert [p["config"]["labels"]["llmservice-dev-slot"] for p in before] == [p["name"][:-6] for p in before]
    for change in (
        {"nodePool__diskSizeGb": 300},
        {"engine__tensorParallelSize": 2},
        {"placement__zones": ["us-central1-a", "us-central1-c"]},
        {"accelerator__provisioning": "spot"},
    ):
        after = _pools(with_spec(base, **change))
        assert not {p["name"] for p in after} & {p["name"] for p in before}, change
    # What GKE updates in place keeps the name: autoscaling bounds, node labels.
    same = _pools(with_spec(base, replicas={"min": 0, "max": 8}, nodePool__labels={"team": "a"}))
    assert [p["name"] for p in same] == [p["name"] for p in before]
    assert all(len(p["name"]) <= nodepools.POOL_NAME_LIMIT for p in _pools(with_spec(base)))


def test_tpu7x_slices_name_a_workload_policy_in_place_of_a_topology():
    doc = with_spec(
        sample_doc("tpu-v6e-4x4-multihost.yaml"),
        accelerator={"type": "tpu-7x", "topology": "2x2x2"},
        engine__tensorParallelSize=8,
    )
    svc = parse(doc)
    assert [p["placement_policy"] for p in nodepools.node_pools(plan(svc))] == [
        {"policy_name": "default-llama-tpu-slice-2x2x2"}
    ] * 2
    assert nodepools.workload_policies(plan(svc)) == [
        {
            "name": "default-llama-tpu-slice-2x2x2",
            "workload_policy": {"type_": "HIGH_THROUGHPUT", "accelerator_topology": "2x2x2"},
        }
    ]
    assert nodepools.workload_policies(plan(parse(sample_doc("tpu-v6e-4x4-multihost.yaml")))) == []


def test_small_gpu_replicas_share_a_node(settings):
    svc = parse(sample_doc("gemma-b200.yaml"))
    wb = worker_bounds(svc.spec)[0]
    assert (wb.min_pods, wb.max_pods, wb.min_nodes, wb.max_nodes) == (8, 8, 1, 1)
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), engine__tensorParallelSize=8, engine__pipelineParallelSize=2))
    wb = worker_bounds(svc.spec)[0]
    assert (wb.shape.per_pod, wb.shape.pods_per_replica, wb.max_nodes) == (8, 2, 16)


def test_multi_node_gpu_replicas_prefer_one_topology_block(settings):
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), engine__tensorParallelSize=8, engine__pipelineParallelSize=2))
    group = render(svc, settings).ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    pref = group["template"]["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref[0]["podAffinityTerm"]["topologyKey"] == "cloud.google.com/gce-topology-block"


def test_spot_with_fallback(settings):
    out = render(parse(sample_doc("l4-spot-fallback.yaml")), settings)
    [group] = out.ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pref = group["template"]["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref[0]["preference"]["matchExpressions"][0]["key"] == "cloud.google.com/gke-spot"
    assert "cloud.google.com/gke-spot" not in group["template"]["spec"]["nodeSelector"]
    assert [p.get("config", {}).get("spot", False) for p in out.node_pools] == [True, False]
    # Scale to zero: the head stays in the Service so its fallback proxy can hold requests.
    assert out.ray_service["spec"]["excludeHeadPodFromServeSvc"] is False


def test_node_pools_map_onto_gke_messages(sample, settings):
    for pool in render(sample.model_copy(update={"spec": sample.spec}), settings).node_pools:
        msg = container_v1.NodePool(**pool)  # proto-plus rejects unknown fields
        assert msg.name == pool["name"]
        assert msg.autoscaling.total_max_node_count >= msg.autoscaling.total_min_node_count


def test_gpu_node_pool_facts(settings):
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), nodePool={"managed": True}))
    [pool] = render(svc, settings).node_pools
    msg = container_v1.NodePool(**pool)
    assert msg.config.machine_type == "a4-highgpu-8g"
    [acc] = msg.config.accelerators
    assert (acc.accelerator_type, acc.accelerator_count) == ("nvidia-b200", 8)
    assert (
        acc.gpu_driver_installation_config.gpu_driver_version
        == container_v1.GPUDriverInstallationConfig.GPUDriverVersion.LATEST
    )
    assert [(t.key, t.effect) for t in msg.config.taints] == [
        ("nvidia.com/gpu", container_v1.NodeTaint.Effect.NO_SCHEDULE)
    ]
    assert msg.config.labels["llmservice-dev-owner"] == "gemma"


def test_prefix_aware_routing_and_lora(settings):
    rs = render(parse(sample_doc("prefix-aware-lora.yaml")), settings).ray_service
    [conf] = _llm_configs(rs)
    assert conf["deployment_config"]["request_router_config"]["request_router_class"].endswith(
        "PrefixCacheAffinityRouter"
    )
    assert conf["lora_config"]["dynamic_lora_loading_path"] == "gs://example-adapters/llama-3.1-8b"
    env = {
        e["name"]: e.get("value")
        for e in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    }
    # Prefix affinity needs the OpenAI ingress on the path: no direct streaming (a rule says so).
    assert "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING" not in env


def test_stream_batching_interval_reaches_ray_serve_llm(settings):
    """Unset keeps Ray's default; a value becomes the llm_config's experimental config."""
    [default] = _llm_configs(render(parse(sample_doc("gemma-b200.yaml")), settings).ray_service)
    assert "experimental_configs" not in default
    doc = with_spec(sample_doc("gemma-b200.yaml"), routing={"streamBatchingMs": 0})
    [conf] = _llm_configs(render(parse(doc), settings).ray_service)
    assert LLMConfig.model_validate(conf).experimental_configs == {"stream_batching_interval_ms": 0}


def test_builders_follow_the_serving_pattern(settings):
    def app(doc):
        return yaml.safe_load(render(parse(doc), settings).ray_service["spec"]["serveConfigV2"])["applications"][0]

    assert app(sample_doc("gemma-b200.yaml"))["import_path"] == "ray.serve.llm:build_openai_app"
    pd = app(sample_doc("prefill-decode.yaml"))
    assert pd["import_path"] == "ray.serve.llm:build_pd_openai_app"
    assert pd["args"]["decode_config"]["engine_kwargs"]["tensor_parallel_size"] == 4
    assert pd["args"]["prefill_config"]["engine_kwargs"]["kv_transfer_config"]["kv_connector"] == "NixlConnector"
    dp = app(with_spec(sample_doc("gemma-b200.yaml"), engine__dataParallelSize=4))
    assert dp["import_path"] == "ray.serve.llm:build_dp_openai_app"
    assert dp["args"]["llm_config"]["engine_kwargs"]["data_parallel_size"] == 4


def test_gb200_workers_select_and_tolerate_arm_and_run_the_arm_image(settings):
    svc = parse(with_spec(sample_doc("gemma-b200.yaml"), accelerator={"type": "nvidia-gb200"}))
    cluster = _cluster(svc, settings)
    [worker] = cluster["workerGroupSpecs"]
    pod = worker["template"]["spec"]
    assert pod["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    assert {"key": "kubernetes.io/arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["containers"][0]["image"] == settings.arm_gpu_ray_image
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == settings.gpu_ray_image  # on an x86 CPU node
    assert "kubernetes.io/arch" not in head.get("nodeSelector", {})
    b200 = _cluster(parse(sample_doc("gemma-b200.yaml")), settings)["workerGroupSpecs"][0]["template"]["spec"]
    assert "kubernetes.io/arch" not in b200["nodeSelector"]


def test_model_sources(settings):
    def loading(source):
        doc = with_spec(sample_doc("gemma-b200.yaml"), model__source=source)
        return _llm_configs(render(parse(doc), settings).ray_service)[0]["model_loading_config"]["model_source"]

    assert loading("gs://bkt/gemma") == {"bucket_uri": "gs://bkt/gemma"}
    assert loading("s3://bkt/gemma") == {"bucket_uri": "s3://bkt/gemma"}
    assert loading("pvc://weights/gemma") == "/mnt/models/gemma"
    assert loading("google/gemma-4-e2b-it") == "google/gemma-4-e2b-it"


# --- accelerator.type cpu -------------------------------------------------------------------


def _cluster(svc, settings) -> dict:
    return render(svc, settings).ray_service["spec"]["rayClusterConfig"]


def _cpu(**changes):
    return parse(with_spec(sample_doc("cpu-tiny.yaml"), **changes))


def _merge_bundles():
    """Ray Serve LLM's own `_merge_replica_actor_and_child_actor_bundles`, taken from its source:
    importing llm_server needs vLLM, which this environment does not install."""
    path = Path(importlib.util.find_spec("ray").origin).parent / "llm/_internal/serve/core/server/llm_server.py"
    tree = ast.parse(path.read_text())
    [fn] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("_merge_replica_actor")]
    namespace: dict = {"copy": copy, "Dict": dict, "List": list}
    exec(compile(ast.Module([fn], []), str(path), "exec"), namespace)
    return namespace[fn.name]


def _replica_bundles(conf: dict) -> tuple[list[dict], str]:
    """The placement group Ray Serve LLM asks for one replica (LLMServer.get_deployment_options):
    the engine bundles (explicit `placement_group_config.bundles`, no accelerator_type hint on
    CPU) with the replica actor's resources merged into the first, checked by Serve's own
    ReplicaConfig the way `serve.deployment` checks it."""
    parsed = LLMConfig.model_validate(conf)
    pg = PlacementGroupConfig(**parsed.placement_group_config).model_dump(exclude_unset=True)
    assert parsed.accelerator_type is None
    actor = parsed.deployment_config.get("ray_actor_options", {})
    replica = {"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0)}
    bundles = _merge_bundles()([dict(b) for b in pg["bundles"]], replica)
    strategy = pg.get("strategy", "PACK")
    ReplicaConfig.create(
        "ray.llm._internal.serve.core.server.llm_server:LLMServer",
        ray_actor_options=actor,
        placement_group_bundles=bundles,
        placement_group_strategy=strategy,
    )
    return bundles, strategy


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"engine__tensorParallelSize": 2, "ray__workerResources": {"cpu": "1500m", "memory": "6Gi"}},
        {
            "engine__tensorParallelSize": 4,
            "engine__pipelineParallelSize": 2,
            "ray__workerResources": None,
            "accelerator__machineType": None,
        },
    ],
    ids=["sample", "tp2", "tp4-pp2-default-workers"],
)
def test_cpu_replica_takes_exactly_one_worker_pod(settings, changes):
    """A replica's placement group asks for all the Ray CPUs of one worker pod and no more, so
    Ray's autoscaler adds one pod per replica and no second replica squeezes in."""
    svc = _cpu(**changes)
    cluster = _cluster(svc, settings)
    [worker] = cluster["workerGroupSpecs"]
    num_cpus = int(worker["rayStartParams"]["num-cpus"])
    assert num_cpus == math.ceil(cpu_cores(worker["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]))
    [conf] = _llm_configs(render(svc, settings).ray_service)
    bundles, strategy = _replica_bundles(conf)
    assert sum(b.get("CPU", 0) for b in bundles) == num_cpus
    assert strategy == "STRICT_PACK" and len(bundles) == 1  # one pod holds the whole replica
    assert conf["accelerator_config"] == {"kind": "cpu"} and "accelerator_type" not in conf
    assert conf["engine_kwargs"]["enforce_eager"] is True
    tp = conf["engine_kwargs"]["tensor_parallel_size"] * conf["engine_kwargs"]["pipeline_parallel_size"]
    assert tp <= num_cpus


def test_cpu_worker_pods(settings):
    cluster = _cluster(_cpu(), settings)
    [worker] = cluster["workerGroupSpecs"]
    assert worker["groupName"] == "cpu"
    assert worker["rayStartParams"] == {"num-cpus": "1"}  # no accelerator_type:X resource
    pod = worker["template"]["spec"]
    ray, edge_c = pod["containers"]
    assert ray["resources"] == {"requests": {"cpu": "300m", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    assert ray["image"] == settings.cpu_ray_image
    env = {e["name"]: e.get("value") for e in ray["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # a quarter of 4Gi, at least 1 GiB
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"  # engines of different pods must not share a pinned core
    assert "VLLM_USE_RAY_V2_EXECUTOR_BACKEND" not in env  # vLLM on CPU uses multiprocessing
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "n2-standard-2"}
    assert "tolerations" not in pod and "affinity" not in pod
    assert edge_c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert cluster["autoscalerOptions"]["resources"] == {
        "requests": {"cpu": "100m", "memory": "512Mi"},
        "limits": {"memory": "512Mi"},
    }
    big = _cluster(_cpu(ray__workerResources={"cpu": "2", "memory": "32Gi"}, accelerator__machineType=None), settings)
    env = {e["name"]: e.get("value") for e in big["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "8"
    mine = _cluster(_cpu(ray__env={"VLLM_CPU_KVCACHE_SPACE": "3"}), settings)
    env = {e["name"]: e.get("value") for e in mine["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"  # spec.ray.env wins


def test_cpu_head_and_workers_share_the_machine_type(settings):
    head = _cluster(_cpu(), settings)["headGroupSpec"]["template"]["spec"]
    assert head["nodeSelector"] == {"node.kubernetes.io/instance-type": "n2-standard-2"}
    ray = head["containers"][0]["resources"]
    assert ray == {"requests": {"cpu": "400m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}  # bursts
    # kind, a dev cluster: no machine type, no selector anywhere.
    cluster = _cluster(_cpu(accelerator={"type": "cpu"}), settings)
    assert "nodeSelector" not in cluster["headGroupSpec"]["template"]["spec"]
    assert "nodeSelector" not in cluster["workerGroupSpecs"][0]["template"]["spec"]
    # Managed pool without a machine type: the catalog's pick, on head and workers.
    six = {"cpu": "500m", "memory": "6Gi"}
    cluster = _cluster(
        _cpu(accelerator={"type": "cpu"}, nodePool={"managed": True}, ray__workerResources=six), settings
    )
    sel = {"node.kubernetes.io/instance-type": "c3-standard-4"}
    assert cluster["headGroupSpec"]["template"]["spec"]["nodeSelector"] == sel
    assert cluster["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"] == sel
    # GPU heads keep going anywhere.
    gpu = _cluster(parse(sample_doc("gemma-b200.yaml")), settings)
    assert "nodeSelector" not in gpu["headGroupSpec"]["template"]["spec"]


def test_cpu_spot_and_reservation_placement(settings):
    spot = _cluster(_cpu(accelerator__provisioning="spot"), settings)["workerGroupSpecs"][0]["template"]["spec"]
    assert spot["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert [t["key"] for t in spot["tolerations"]] == ["cloud.google.com/gke-spot"]
    res = _cpu(accelerator__provisioning="reservation", accelerator__reservation="cpu-res")
    sel = _cluster(res, settings)["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"]
    assert sel["cloud.google.com/reservation-name"] == "cpu-res"


def test_cpu_sample_fits_twice_on_a_two_core_node(settings):
    """Blue/green upgrades run the old and the new Ray cluster side by side."""
    cluster = _cluster(parse(sample_doc("cpu-tiny.yaml")), settings)
    pods = [cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]]
    millicores = sum(cpu_cores(c["resources"]["requests"]["cpu"]) * 1000 for p in pods for c in p["containers"])
    millicores += cpu_cores(cluster["autoscalerOptions"]["resources"]["requests"]["cpu"]) * 1000
    assert [c["name"] for c in pods[0]["containers"]] == ["ray"]  # head not in the Service: no sidecar
    assert millicores == 900
    assert 2 * millicores <= 2000 - 200  # leaves room for another small pod


def test_edge_sidecar_on_the_head_only_while_the_head_serves(settings):
    def head_containers(doc):
        rs = render(parse(doc), settings).ray_service
        names = [c["name"] for c in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]]
        return names, rs["spec"]["excludeHeadPodFromServeSvc"]

    assert head_containers(sample_doc("gemma-b200.yaml")) == (["ray"], True)
    assert head_containers(sample_doc("l4-spot-fallback.yaml")) == (["ray", "edge"], False)  # min 0
    zero = with_spec(sample_doc("cpu-tiny.yaml"), replicas={"min": 0, "max": 1})
    assert head_containers(zero) == (["ray", "edge"], False)
    # The head's sidecar is ready when HAProxy runs: KubeRay deploys Serve only to a ready head
    # (waiting on Serve, it deadlocked); a worker's once its path to Serve is.
    cluster = render(parse(zero), settings).ray_service["spec"]["rayClusterConfig"]
    [head_edge] = [c for c in cluster["headGroupSpec"]["template"]["spec"]["containers"] if c["name"] == "edge"]
    [worker_edge] = [c for c in cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"] if c["name"] == "edge"]
    assert head_edge["readinessProbe"]["httpGet"]["path"] == "/livez"
    assert worker_edge["readinessProbe"]["httpGet"]["path"] == "/-/healthz"


def test_idle_worker_pods_go_after_the_configured_time(settings):
    cluster = render(parse(with_spec(sample_doc("cpu-tiny.yaml"), autoscaling={"workerIdleSeconds": 15})), settings)
    assert cluster.ray_service["spec"]["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] == 15


def test_cpu_ingress_deployment_without_direct_streaming(settings):
    def args(doc):
        rs = render(parse(doc), settings).ray_service
        return yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]

    assert "ingress_deployment_config" not in args(sample_doc("cpu-tiny.yaml"))  # Ray refuses it there
    off = args(with_spec(sample_doc("cpu-tiny.yaml"), routing={"directStreaming": False}))
    assert off["ingress_deployment_config"] == {"ray_actor_options": {"num_cpus": 0}}
    ReplicaConfig.create("x:y", ray_actor_options=off["ingress_deployment_config"]["ray_actor_options"])
    builder = Path(importlib.util.find_spec("ray").origin).parent / "llm/_internal/serve/core/ingress/builder.py"
    assert "    ingress_deployment_config: Dict[str, Any] = Field(" in builder.read_text()  # LLMServingArgs
    assert "ingress_deployment_config" not in args(
        with_spec(sample_doc("gemma-b200.yaml"), routing={"directStreaming": False})
    )


def test_at_zero_the_openai_ingress_stays_up(settings):
    """Ray scales the OpenAI ingress to zero with the model (OpenAiIngress.get_deployment_options:
    its autoscaling with min_replicas 0); one replica of it (no accelerator) stays, so a request
    at zero waits only for the model replica. Ray deep-merges ours over its default."""
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults

    zero = {"min": 0, "max": 2, "initial": 1}
    doc = with_spec(sample_doc("gemma-b200.yaml"), replicas=zero, routing={"directStreaming": False})
    rs = render(parse(doc), settings).ray_service
    ours = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["ingress_deployment_config"]
    assert ours == {"autoscaling_config": {"min_replicas": 1}}
    ray_at_zero = {
        "max_ongoing_requests": 1000,
        "autoscaling_config": {"target_ongoing_requests": 1000, "min_replicas": 0},
    }
    merged = maybe_apply_llm_deployment_config_defaults(ray_at_zero, ours)
    assert merged["autoscaling_config"] == {"target_ongoing_requests": 1000, "min_replicas": 1}
    cpu = with_spec(sample_doc("cpu-tiny.yaml"), replicas=zero, routing={"directStreaming": False})
    rs = render(parse(cpu), settings).ray_service
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["ingress_deployment_config"] == {
        "ray_actor_options": {"num_cpus": 0},
        "autoscaling_config": {"min_replicas": 1},
    }
    with_direct = with_spec(sample_doc("cpu-tiny.yaml"), replicas=zero)
    rs = render(parse(with_direct), settings).ray_service
    assert "ingress_deployment_config" not in rs["spec"]["serveConfigV2"], "no such deployment with direct streaming"


def test_cpu_node_pool(settings):
    six = {"cpu": "500m", "memory": "6Gi"}
    svc = _cpu(
        accelerator={"type": "cpu"}, nodePool={"managed": True}, replicas={"min": 1, "max": 3}, ray__workerResources=six
    )
    [pool] = render(svc, settings).node_pools
    msg = container_v1.NodePool(**pool)
    assert msg.config.machine_type == "c3-standard-4"  # n2-standard-2 has room for 5.1 GiB; C3 on a tie
    assert msg.config.disk_type == "hyperdisk-balanced"
    assert not msg.config.accelerators and not msg.config.taints
    # Two 500m/6Gi workers per c3-standard-4: 3 replicas take 2 nodes, and one more for the head.
    assert (msg.autoscaling.total_min_node_count, msg.autoscaling.total_max_node_count) == (1, 3)
    n2 = _cpu(nodePool={"managed": True}, accelerator__provisioning="spot")
    [pool] = render(n2, settings).node_pools
    assert pool["config"]["machine_type"] == "n2-standard-2" and pool["config"]["disk_type"] == "pd-balanced"
    assert pool["config"]["spot"] is True
    # Default workers (8 CPUs, 32Gi) outgrow an 8-vCPU machine once GKE has taken its share.
    default = _cpu(accelerator={"type": "cpu"}, nodePool={"managed": True}, ray=None)
    assert render(default, settings).node_pools[0]["config"]["machine_type"] == "n2-standard-16"


def test_worker_resources_override_gpu_requests(settings):
    doc = with_spec(sample_doc("gemma-b200.yaml"), ray={"workerResources": {"cpu": "20", "memory": "200Gi"}})
    [worker] = _cluster(parse(doc), settings)["workerGroupSpecs"]
    res = worker["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "20", "memory": "200Gi", "nvidia.com/gpu": "1"}
    assert res["limits"] == {"memory": "200Gi", "nvidia.com/gpu": "1"}


def test_ray_token_auth_is_on_by_default_with_the_operators_secret(settings, rayservice_schema):
    svc = parse(sample_doc("gemma-b200.yaml"))
    rs = render(svc, settings).ray_service
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token", "secretName": "gemma-ray-auth"}
    assert check(rs, rayservice_schema) == []
    # Set by us (KubeRay skips what is set) with an optional reference: KubeRay's Redis cleanup
    # Job copies the head's env and must start after the Secret went with the LLMService.
    cluster = rs["spec"]["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "gemma-ray-auth", "key": "auth_token", "optional": True}
    off = render(parse(with_spec(sample_doc("gemma-b200.yaml"), ray__auth="disabled")), settings).ray_service
    assert "authOptions" not in off["spec"]["rayClusterConfig"]
    assert "RAY_AUTH_MODE" not in str(off)
    # A user's own RAY_AUTH_TOKEN (spec.ray.secretEnv) replaces ours: one entry per name, or
    # server-side apply refuses the duplicate key.
    own = with_spec(sample_doc("gemma-b200.yaml"), ray__secretEnv={"RAY_AUTH_TOKEN": {"name": "mine", "key": "t"}})
    env = render(parse(own), settings).ray_service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    names_ = [e["name"] for e in env["containers"][0]["env"]]
    assert names_.count("RAY_AUTH_TOKEN") == 1 and names_.count("RAY_AUTH_MODE") == 1


def test_network_policy_lets_in_only_what_must_reach_each_port(settings):
    svc = parse(sample_doc("gemma-b200.yaml"))
    np = render(svc, settings).network_policy
    assert np["spec"]["podSelector"] == {"matchLabels": {"llmservice.dev/name": "gemma"}}
    rules = np["spec"]["ingress"]
    open_to_all = [r for r in rules if "from" not in r]
    assert open_to_all == [{"ports": [{"port": "edge", "protocol": "TCP"}]}], "only the sidecar's port is public"
    own_pods = [{"podSelector": {"matchLabels": {"llmservice.dev/name": "gemma"}}}]
    own = next(r for r in rules if r.get("from") == own_pods)
    assert "ports" not in own, "Ray's own traffic: any port, own pods only"
    kuberay = next(r for r in rules if "kuberay-operator" in str(r.get("from")))
    assert [p["port"] for p in kuberay["ports"]] == ["dashboard", "serve"]
    scrape = next(r for r in rules if "gmp-system" in str(r.get("from")))
    assert [p["port"] for p in scrape["ports"]] == ["metrics", "edge-metrics"]  # once each
    # Every named port is a port the pods declare.
    pods = [render(svc, settings).ray_service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]]
    declared = {p["name"] for pod in pods for c in pod["containers"] for p in c.get("ports", [])}
    pods = render(svc, settings).ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    declared |= {p["name"] for c in pods["containers"] for p in c.get("ports", [])}
    assert {p["port"] for r in rules for p in r.get("ports", [])} <= declared

    no_sidecar = render(parse(with_spec(sample_doc("gemma-b200.yaml"), ingress__sidecar=False)), settings)
    assert no_sidecar.network_policy["spec"]["ingress"][0] == {"ports": [{"port": "serve", "protocol": "TCP"}]}
    quiet = render(parse(with_spec(sample_doc("gemma-b200.yaml"), observability__metrics=False)), settings)
    assert not any("gmp-system" in str(r) for r in quiet.network_policy["spec"]["ingress"])
    off = render(parse(with_spec(sample_doc("gemma-b200.yaml"), ray__networkPolicy=False)), settings)
    assert off.network_policy is None


def test_a_rate_limit_is_shared_by_the_sidecars_through_a_headless_service(settings):
    limited = parse(sample_doc("prefix-aware-lora.yaml"))  # 600 requests per minute per client
    out = render(limited, settings)
    peers = out.edge_peers
    assert peers["metadata"]["name"] == "llama-lora-edge-peers"
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    # The head serves nothing here (replicas.min > 0): the workers are the serving pods.
    assert peers["spec"]["selector"] == {"llmservice.dev/name": "llama-lora", "ray.io/node-type": "worker"}
    data = out.edge_config["data"]
    assert "getent hosts llama-lora-edge-peers.default.svc" in data["edge.sh"]
    assert "lua.edge_client_rate" in data["haproxy.cfg"] and data[edge.LUA_FILE] == edge.lua()
    # Scale to zero: the head is in the Service too, and a peer.
    zero = render(parse(with_spec(sample_doc("prefix-aware-lora.yaml"), replicas={"min": 0, "max": 2})), settings)
    assert zero.edge_peers["spec"]["selector"] == {"llmservice.dev/name": "llama-lora"}
    # No limit: HAProxy leaves the peers unused. The supervisor and the pods are the same
    # either way: a running sidecar keeps its script, and for a RayService a pod template
    # change is a whole new Ray cluster; turning a limit on or off changes haproxy.cfg only.
    free = render(parse(with_spec(sample_doc("prefix-aware-lora.yaml"), ingress__rateLimit=None)), settings)
    assert "edge_client_rate" not in free.edge_config["data"]["haproxy.cfg"]
    assert free.edge_config["data"]["edge.sh"] == data["edge.sh"]
    # Without API keys there are no clients to count: no Lua at all.
    open_ = render(parse(with_spec(sample_doc("gemma-b200.yaml"), ingress={"sidecar": True})), settings)
    assert edge.LUA_FILE not in open_.edge_config["data"] and "lua-load" not in open_.edge_config["data"]["haproxy.cfg"]
    assert free.edge_peers == peers and free.ray_service == out.ray_service
    assert render(parse(with_spec(sample_doc("gemma-b200.yaml"), ingress__sidecar=False)), settings).edge_peers is None
    worker = out.ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    sidecar = next(c for c in worker["containers"] if c["name"] == "edge")
    assert {"name": "edge-peers", "containerPort": edge.PEERS_PORT, "protocol": "TCP"} in sidecar["ports"]
    assert sidecar["env"][0]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_a_routing_policy_is_serves_router_and_changes_in_place(settings):
    """The policy picks Serve's request router; changing it changes the Serve config only, which
    KubeRay applies to the running cluster (a pod template change would start a new one)."""
    base = sample_doc("cpu-tiny.yaml")
    routers = {}
    for policy in ("least-loaded", "round-robin", "session-affinity"):
        rs = render(parse(with_spec(base, routing={"policy": policy})), settings).ray_service
        conf = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["llm_configs"][0]
        router = conf["deployment_config"].get("request_router_config", {}).get("request_router_class")
        routers[policy] = (router, rs["spec"]["rayClusterConfig"])
        LLMConfig.model_validate(conf)
    assert routers["least-loaded"][0] is None  # Serve's power of two choices
    assert routers["round-robin"][0] == "ray.serve.experimental.round_robin_router:RoundRobinRouter"
    assert routers["session-affinity"][0] == "ray.serve.experimental.consistent_hash_router:ConsistentHashRouter"
    assert routers["least-loaded"][1] == routers["round-robin"][1] == routers["session-affinity"][1]


def _port_names(template: dict) -> set[str]:
    return {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p}


@pytest.mark.parametrize("sidecar", [True, False], ids=["sidecar", "no-sidecar"])
def test_the_named_ports_requests_reach_exist_on_every_serving_pod(sample, settings, sidecar):
    """The Service's targetPort and the NetworkPolicy's open port are names each pod resolves
    to one of its own ports; a serving pod without the name is an endpoint without a port, and
    the requests to it vanish (seen on the real node: without the sidecar no worker declared
    `serve`, so every request timed out)."""
    doc = sample.model_dump(by_alias=True, exclude_none=True)
    if not sidecar:
        doc["spec"]["ingress"] = {"sidecar": False}
    svc = parse(doc)
    rendered = render(svc, settings)
    cluster = rendered.ray_service["spec"]["rayClusterConfig"]
    serving = [g["template"] for g in cluster["workerGroupSpecs"]]
    if plan(svc).head_serves:
        serving.append(cluster["headGroupSpec"]["template"])
    [target] = {p["targetPort"] for p in rendered.ray_service["spec"]["serveService"]["spec"]["ports"]}
    policy = rendered.network_policy
    opened = {p["port"] for r in policy["spec"]["ingress"] if "from" not in r for p in r["ports"]} if policy else set()
    for template in serving:
        assert target in _port_names(template)
        assert opened <= _port_names(template)
