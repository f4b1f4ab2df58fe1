"""Every validation rule rejects bad input with its field path and a fix."""

from __future__ import annotations

import pytest

from llmservice_operator.api import RULES, InvalidLLMService, parse

from .conftest import sample_doc, with_spec

GPU = "gemma-b200.yaml"
TPU = "tpu-v6e-4x4-multihost.yaml"
PD = "prefill-decode.yaml"  # nvidia-h200, engine TP 2, decode TP 4
CPU = "cpu-tiny.yaml"
LB = "networking.gke.io/load-balancer-type"  # n2-standard-2, workers of 500m (1 Ray CPU) and 6Gi

# (base sample, spec changes, field path, words the message must contain)
CASES = [
    (GPU, {"model__source": "ftp://weights/x"}, "spec.model.source", "Hugging Face id"),
    (GPU, {"ray__version": "2.51.1"}, "spec.ray.auth", "needs Ray 2.52.0 or newer"),
    (GPU, {"ray__version": "1.13.0"}, "spec.ray.auth", "set ray.auth: disabled"),
    (GPU, {"model__source": "just-a-name"}, "spec.model.source", "gs://bucket/path"),
    (GPU, {"replicas": {"min": 5, "max": 2}}, "spec.replicas.min", "<= replicas.max"),
    (GPU, {"replicas": {"min": 1, "max": 2, "initial": 4}}, "spec.replicas.initial", "between"),
    (TPU, {"accelerator": {"type": "tpu-v6e"}}, "spec.accelerator.topology", "required for TPU"),
    (GPU, {"accelerator__topology": "2x4"}, "spec.accelerator.topology", "only to TPU"),
    (TPU, {"accelerator__topology": "3x3"}, "spec.accelerator.topology", "tpu-v6e: 1x1"),
    (TPU, {"engine__tensorParallelSize": 8}, "spec.engine.tensorParallelSize", "chips in accelerator.topology"),
    (TPU, {"accelerator__perReplica": 16}, "spec.accelerator.perReplica", "taken from accelerator.topology"),
    (GPU, {"accelerator__perReplica": 2}, "spec.accelerator.perReplica", "must equal engine.tensorParallelSize"),
    (GPU, {"engine__tensorParallelSize": 16}, "spec.engine.tensorParallelSize", "pipelineParallelSize instead"),
    (
        GPU,
        {"engine__tensorParallelSize": 4, "engine__pipelineParallelSize": 3},
        "spec.engine.pipelineParallelSize",
        "whole nodes",
    ),
    (GPU, {"accelerator__provisioning": "reservation"}, "spec.accelerator.reservation", "is required"),
    (GPU, {"accelerator__reservation": "res-a"}, "spec.accelerator.reservation", "only used with"),
    (TPU, {"accelerator__machineType": "ct6e-standard-8t"}, "spec.accelerator.machineType", "TPU machine types"),
    (
        GPU,
        {"routing": {"policy": "prefix-aware"}, "engine__enablePrefixCaching": False},
        "spec.engine.enablePrefixCaching",
        "prefix-aware",
    ),
    (
        GPU,
        {"prefillDecode": {"prefill": {}, "decode": {}}, "replicas": None},
        "spec.routing.directStreaming",
        "exactly one model",
    ),
    (GPU, {"routing": {"policy": "prefix-aware"}}, "spec.routing.policy", "prefix-aware needs routing.directStreaming"),
    (GPU, {"ingress": {"rateLimit": {"requestsPerMinute": 10}}}, "spec.ingress.rateLimit", "apiKeysSecret"),
    (GPU, {"ingress": {"sidecar": False, "tlsSecret": "tls"}}, "spec.ingress.sidecar", "must be true"),
    (
        GPU,
        {"upgrade": {"strategy": "incremental"}, "ingress": {"sidecar": False}},
        "spec.upgrade.gatewayClassName",
        "required",
    ),
    (
        GPU,
        {"upgrade": {"strategy": "incremental", "gatewayClassName": "gke-l7"}},
        "spec.upgrade.strategy",
        "sidecar: false",
    ),
    (
        GPU,
        {"placement": {"spreadAcrossZones": True, "zones": ["us-central1-a"]}},
        "spec.placement.spreadAcrossZones",
        "two",
    ),
    (GPU, {"engine__speculative": {"method": "eagle"}}, "spec.engine.speculative.model", "eagle"),
    (GPU, {"model__source": "gs://weights/gemma", "model__revision": "v2"}, "spec.model.revision", "Hugging Face"),
    (GPU, {"model__loadFormat": "stream"}, "spec.model.loadFormat", "gs:// or s3://"),
    (GPU, {"model__source": "pvc://weights/gemma", "model__nodeCache": {}}, "spec.model.nodeCache", "in place"),
    (
        GPU,
        {"model__source": "s3://weights/gemma", "model__loadFormat": "stream", "model__nodeCache": {}},
        "spec.model.nodeCache",
        "loadFormat download",
    ),
    (
        GPU,
        {"model__storage": {"gcs": {"endpoint": "http://gcs.storage:4443"}}},
        "spec.model.storage.gcs.endpoint",
        "anonymous: true",
    ),
    (
        GPU,
        {"prefillDecode": {}, "routing": {"directStreaming": False}, "engine__dataParallelSize": 2},
        "spec.prefillDecode",
        "dataParallelSize",
    ),
    (TPU, {"prefillDecode": {}, "routing": {"directStreaming": False}}, "spec.prefillDecode", "needs GPUs"),
    # Each side of prefill/decode meets the same per-node rules as the main engine (H200: 8 GPUs).
    (PD, {"prefillDecode__prefill__tensorParallelSize": 16}, "spec.prefillDecode.prefill.tensorParallelSize", "fit"),
    (PD, {"prefillDecode__decode__tensorParallelSize": 12}, "spec.prefillDecode.decode.tensorParallelSize", "fit"),
    (
        PD,
        {"prefillDecode__prefill__tensorParallelSize": 6, "engine__pipelineParallelSize": 2},
        "spec.prefillDecode.prefill.tensorParallelSize",
        "whole nodes",
    ),
    (
        PD,
        {"prefillDecode__decode__tensorParallelSize": 6, "engine__pipelineParallelSize": 2},
        "spec.prefillDecode.decode.tensorParallelSize",
        "whole nodes",
    ),
    (GPU, {"engine__extraArgs": {"tensor_parallel_size": 2}}, "spec.engine.extraArgs", "engine.tensorParallelSize"),
    # vLLM's CLI spelling is the same argument: refused just the same.
    (GPU, {"engine__extraArgs": {"tensor-parallel-size": 2}}, "spec.engine.extraArgs", "engine.tensorParallelSize"),
    (GPU, {"engine__extraArgs": {"max-model-len": 4096}}, "spec.engine.extraArgs", "engine.maxModelLen"),
    (GPU, {"engine__extraArgs": {"model": "other/model"}}, "spec.engine.extraArgs", "model.source instead of model"),
    (GPU, {"engine__extraArgs": {"max_num_seqs": 8, "max-num-seqs": 16}}, "spec.engine.extraArgs", "keep one spelling"),
    (CPU, {"accelerator__topology": "2x4"}, "spec.accelerator.topology", "CPU replicas by ray.workerResources"),
    (CPU, {"accelerator__perReplica": 1}, "spec.accelerator.perReplica", "counts GPUs"),
    (CPU, {"engine__tensorParallelSize": 2}, "spec.engine.tensorParallelSize", "Ray CPUs of a worker pod"),
    (
        CPU,
        {"ray__workerResources": None, "accelerator__machineType": None, "engine__pipelineParallelSize": 9},
        "spec.engine.tensorParallelSize",
        "rounded up (default 8)",
    ),
    (CPU, {"engine__dataParallelSize": 2}, "spec.engine.dataParallelSize", "scale a CPU service with replicas"),
    (CPU, {"engine__gpuMemoryUtilization": 0.9}, "spec.engine.gpuMemoryUtilization", "VLLM_CPU_KVCACHE_SPACE"),
    (
        GPU,
        {"model__source": "s3://models/gemma", "model__loadFormat": "mount"},
        "spec.model.loadFormat",
        "needs a gs:// model.source",
    ),
    (
        CPU,
        {"ray__headResources": {"cpu": "100m", "memory": "2Gi"}},
        "spec.ray.headResources.memory",
        "memory monitor kills the Serve controller",
    ),
    (CPU, {"accelerator__provisioning": "flex-start"}, "spec.accelerator.provisioning", "GPUs and TPUs only"),
    (
        CPU,
        {"ray__workerResources": {"cpu": "4", "memory": "6Gi"}},
        "spec.accelerator.machineType",
        "smaller than one worker pod",
    ),
    (
        CPU,
        {"ray__workerResources": {"cpu": "1", "memory": "9Gi"}},
        "spec.accelerator.machineType",
        "smaller than one worker pod",
    ),
    (CPU, {"ray__workerResources": None}, "spec.accelerator.machineType", "default 8 CPUs and 32Gi"),
    (
        CPU,
        {
            "accelerator__machineType": None,
            "nodePool": {"managed": True},
            "ray__workerResources": {"cpu": "44", "memory": "8Gi"},
        },
        "spec.ray.workerResources",
        "largest catalog CPU machine",
    ),
    (CPU, {"prefillDecode": {}, "routing": {"directStreaming": False}}, "spec.prefillDecode", "needs GPUs"),
]

# Valid specs near the rules' edges: no rule may misfire (in CEL, a failed map lookup would
# reject them with a runtime error instead of accepting them).
POD_OVERRIDES = {
    "labels": {"team": "search", "example.com/cost-centre": "llm-01"},
    "annotations": {"gke-gcsfuse/volumes": "true"},
    "nodeSelector": {"example.com/dedicated": "llm"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
        {"operator": "Exists"},
    ],
}
GOOD_CASES = [
    (CPU, {}),
    (GPU, {"model__source": "gs://models/gemma", "model__loadFormat": "mount"}),
    (CPU, {"ray__headResources": {"cpu": "100m", "memory": "3072Mi"}}),  # the smallest head
    (CPU, {"model__source": "gs://weights/tiny", "model__loadFormat": "stream"}),  # the CPU image has the streamer
    (CPU, {"model__source": "gs://weights/tiny", "model__loadFormat": "stream", "ray__image": "ray-llm:runai"}),
    (GPU, {"model__revision": "0123456789abcdef0123456789abcdef01234567", "model__hfEndpoint": "https://hf.corp:8443"}),
    (
        GPU,
        {
            "model__source": "gs://weights/gemma",
            "model__loadFormat": "stream",
            "model__storage": {"gcs": {"endpoint": "http://10.0.0.5:4443", "anonymous": True}},
        },
    ),
    (
        GPU,
        {
            "model__source": "s3://weights/gemma",
            "model__storage": {
                "s3": {"endpoint": "http://minio:9000", "region": "eu-west-1", "credentialsSecret": "s3"}
            },
        },
    ),
    (GPU, {"ray__version": "2.51.1", "ray__auth": "disabled"}),
    (GPU, {"ray__version": "2.52.0"}),
    (GPU, {"ray__version": "3.0.0", "ray__networkPolicy": False}),
    (
        GPU,
        {
            "ray__headPod": POD_OVERRIDES,
            "ray__workerPods": POD_OVERRIDES,
            "ray__serviceAccountName": "llm-serving",
            "ray__env": {"AWS_REGION": "us-east-1"},
            "ray__secretEnv": {"AWS_ACCESS_KEY_ID": {"name": "s3-credentials", "key": "access-key-id"}},
            "ingress": {
                "apiKeysSecret": "llm-keys",
                "service": {
                    "type": "ExternalLoadBalancer",
                    "annotations": {"cloud.google.com/l4-rbs": "enabled"},
                    "loadBalancerSourceRanges": ["203.0.113.0/24"],
                },
            },
        },
    ),
    (CPU, {"accelerator": {"type": "cpu"}, "ray": None}),  # kind: no machine type, default workers
    (
        CPU,
        {
            "engine__tensorParallelSize": 16,
            "ray__workerResources": {"cpu": "15.5", "memory": "32Gi"},
            "accelerator__machineType": "n2-standard-16",
        },
    ),
    (CPU, {"engine__tensorParallelSize": 2, "ray__workerResources": {"cpu": "1500m", "memory": "6Gi"}}),
    (CPU, {"accelerator__machineType": "n2-highcpu-96", "ray__workerResources": {"cpu": "90", "memory": "80Gi"}}),
    (CPU, {"accelerator__provisioning": "reservation", "accelerator__reservation": "cpu-res"}),
    (CPU, {"accelerator__provisioning": "spot-with-fallback", "nodePool": {"managed": True}}),
    (CPU, {"routing": {"directStreaming": False}}),
    (GPU, {"ray": {"workerResources": {"cpu": "20", "memory": "200Gi"}}}),
    (GPU, {"engine__extraArgs": {"max-num-seqs": 8, "enable_chunked_prefill": True, "max-loras": 4}}),
    (PD, {"prefillDecode__prefill__tensorParallelSize": 8, "engine__pipelineParallelSize": 2}),  # two whole nodes
]


# Each prefill/decode pool's replica range, as the service's.
for _role in ("prefill", "decode"):
    CASES += [
        (
            PD,
            {f"prefillDecode__{_role}__replicas": {"min": 5, "max": 4}},
            f"spec.prefillDecode.{_role}.replicas.min",
            "<= ",
        ),
        (
            PD,
            {f"prefillDecode__{_role}__replicas": {"min": 1, "max": 2, "initial": 3}},
            f"spec.prefillDecode.{_role}.replicas.initial",
            "between",
        ),
    ]

# What users add to the Ray pods and the Service (api/pod_rules.py), for both pods.
for _pod in ("headPod", "workerPods"):
    CASES += [
        (GPU, {f"ray__{_pod}": {"labels": {"ray.io/group": "x"}}}, f"spec.ray.{_pod}.labels", "KubeRay sets"),
        (GPU, {f"ray__{_pod}": {"labels": {"team": "a b"}}}, f"spec.ray.{_pod}.labels", "values must be up to 63"),
        (GPU, {f"ray__{_pod}": {"annotations": {"llmservice.dev/engine": "x"}}}, f"spec.ray.{_pod}.annotations", "own"),
        (
            GPU,
            {f"ray__{_pod}": {"nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}},
            f"spec.ray.{_pod}.nodeSelector",
            "set those fields instead",
        ),
        (GPU, {f"ray__{_pod}": {"nodeSelector": {"pool": "a/b"}}}, f"spec.ray.{_pod}.nodeSelector", "values must"),
        (
            GPU,
            {f"ray__{_pod}": {"tolerations": [{"key": "dedicated", "operator": "Exists", "value": "llm"}]}},
            f"spec.ray.{_pod}.tolerations",
            "Exists takes no value",
        ),
    ]
CASES += [
    (GPU, {"ray__env": {"1BAD": "x"}}, "spec.ray.env", "environment variable names"),
    (
        GPU,
        {"ray__env": {"AWS_REGION": "x"}, "ray__secretEnv": {"AWS_REGION": {"name": "s3", "key": "region"}}},
        "spec.ray.secretEnv",
        "not also in ray.env",
    ),
    (
        GPU,
        {"model__hfTokenSecret": {"name": "hf"}, "ray__secretEnv": {"HF_TOKEN": {"name": "hf2", "key": "t"}}},
        "spec.ray.secretEnv",
        "keep one",
    ),
    (GPU, {"ingress": {"service": {"type": "ExternalLoadBalancer"}}}, "spec.ingress.service.type", "apiKeysSecret"),
    (
        GPU,
        {"ingress": {"service": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}}},
        "spec.ingress.service.loadBalancerSourceRanges",
        "only to a load balancer",
    ),
    (
        GPU,
        {"ingress": {"service": {"type": "InternalLoadBalancer", "annotations": {LB: "External"}}}},
        "spec.ingress.service.annotations",
        "type chooses it",
    ),
]

# Schema-level errors (types, enums, unknown fields) carry their path as well.
SCHEMA_CASES = [
    (GPU, {"accelerator": {"type": "nvidia-a100"}}, "spec.accelerator.type", "must be one of"),
    (GPU, {"replicas": {"min": -1, "max": 2}}, "spec.replicas.min", "must be >= 0 (got -1)"),
    (GPU, {"engine__tensorParalelSize": 2}, "spec.engine.tensorParalelSize", "unknown field"),
    (GPU, {"ingress": {"maxBodySize": "16MB"}}, "spec.ingress.maxBodySize", "does not match"),
    (GPU, {"model__hfEndpoint": "hf-mirror.example.com"}, "spec.model.hfEndpoint", "does not match"),
    (GPU, {"nodePool__imageCacheDisk": "global/images/vllm"}, "spec.nodePool.imageCacheDisk", "does not match"),
    (GPU, {"model__revision": "main branch"}, "spec.model.revision", "does not match"),
    (GPU, {"engine__gpuMemoryUtilization": 1.5}, "spec.engine.gpuMemoryUtilization", "must be <= 1 (got 1.5)"),
    (GPU, {"engine__gpuMemoryUtilization": 0}, "spec.engine.gpuMemoryUtilization", "must be > 0"),
    # What pydantic alone used to coerce or accept, and the API server refuses:
    (GPU, {"engine__max_model_len": 4096}, "spec.engine.max_model_len", "camelCase: write maxModelLen"),
    (GPU, {"node_pool": {"managed": True}}, "spec.node_pool", "camelCase: write nodePool"),
    (GPU, {"replicas": {"min": 1, "max": "10"}}, "spec.replicas.max", "type integer, got string: write 10 without"),
    (GPU, {"replicas": {"min": 1, "max": 1.5}}, "spec.replicas.max", "type integer, got number"),
    (GPU, {"suspend": "true"}, "spec.suspend", "type boolean, got string"),
    (GPU, {"suspend": 1}, "spec.suspend", "type boolean, got integer"),
    (GPU, {"ray": {"env": {"A": 1}}}, "spec.ray.env.A", "type string, got integer"),
    (GPU, {"placement": {"zones": [None]}}, "spec.placement.zones[0]", "type string, got null"),
]


def _errors(doc) -> list[str]:
    with pytest.raises(InvalidLLMService) as exc:
        parse(doc)
    return [str(e) for e in exc.value.errors]


@pytest.mark.parametrize(("base", "changes", "path", "words"), CASES + SCHEMA_CASES)
def test_bad_input_names_field_and_fix(base, changes, path, words):
    errors = _errors(with_spec(sample_doc(base), **changes))
    matching = [e for e in errors if e.startswith(path + ": ")]
    assert matching, f"no error for {path}; got {errors}"
    assert any(words in e for e in matching), matching


@pytest.mark.parametrize(("base", "changes"), GOOD_CASES)
def test_valid_specs_pass(base, changes):
    parse(with_spec(sample_doc(base), **changes))


def test_every_rule_has_a_bad_input_case():
    hit = set()
    for base, changes, _path, _words in CASES:
        for e in _errors(with_spec(sample_doc(base), **changes)):
            hit.add(e)
    for rule in RULES:
        assert f"spec.{rule.field}: {rule.message}" in hit, f"rule not exercised: {rule.field}: {rule.message}"


def test_all_errors_reported_at_once():
    doc = with_spec(sample_doc(GPU), replicas={"min": 3, "max": 1}, model__source="ftp://x/y")
    paths = {e.split(":")[0] for e in _errors(doc)}
    assert {"spec.replicas.min", "spec.model.source"} <= paths


def test_long_name_rejected():
    doc = sample_doc(GPU)
    doc["metadata"]["name"] = "a" * 41
    assert any(e.startswith("metadata.name: must be at most 40") for e in _errors(doc))


@pytest.mark.parametrize("name", ["gemma.v2", "1gemma", "Gemma", "gemma-", "gemma\n"])
def test_names_the_api_server_refuses_are_refused(name):
    doc = sample_doc(GPU)
    doc["metadata"]["name"] = name
    assert any(e.startswith("metadata.name: must start with a lowercase letter") for e in _errors(doc))


def test_null_fields_are_dropped_as_the_api_server_does():
    svc = parse(with_spec(sample_doc(GPU), engine__maxModelLen=None, placement=None))
    assert svc.spec.engine.max_model_len is None and svc.spec.placement.zones == []


def test_integral_numbers_are_integers():
    assert parse(with_spec(sample_doc(GPU), replicas={"min": 1, "max": 2.0})).spec.replicas.max == 2


def test_metadata_is_checked_like_object_meta():
    doc = sample_doc(GPU)
    doc["metadata"] |= {"labels": {"team": "a b", "bad key!": "x"}, "nmae": "typo"}
    errors = _errors(doc)
    assert "metadata.nmae: unknown field: remove it or check its spelling" in errors
    assert any(e.startswith("metadata.labels.team: value must be") for e in errors)
    assert any(e.startswith("metadata.labels: key 'bad key!'") for e in errors)


def test_wrong_kind():
    doc = sample_doc(GPU)
    doc["kind"] = "RayService"
    assert _errors(doc)[0].startswith("apiVersion/kind: must be llmservice.dev/v1alpha1 / LLMService")


def test_defaults_are_filled():
    svc = parse(sample_doc(GPU))
    s = svc.spec
    assert s.routing.direct_streaming and s.ingress.sidecar and s.engine.enable_prefix_caching
    assert s.autoscaling.target_ongoing_requests == 64
    assert s.upgrade.strategy == "new-cluster"
    assert s.ray.version == "2.60.0"
