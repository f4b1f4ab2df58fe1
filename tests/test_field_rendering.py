"""Fields that only pass a value through: each set on a sample lands where its consumer (Ray
Serve LLM, KubeRay, GKE) reads it, and nowhere else changes meaning."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llmservice_operator.api import parse
from llmservice_operator.catalog.labels import TOPOLOGY_LEVELS
from llmservice_operator.render import ray_hooks, render
from llmservice_operator.render.nodepools import node_pools
from llmservice_operator.render.plan import plan

from .conftest import sample_doc, with_spec


def _rs(doc: dict[str, Any]) -> dict[str, Any]:
    return render(parse(doc)).ray_service


def _llm_config(doc: dict[str, Any]) -> dict[str, Any]:
    serve = yaml.safe_load(_rs(doc)["spec"]["serveConfigV2"])
    return serve["applications"][0]["args"]["llm_configs"][0]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = _rs(doc)["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"] if "ray" in c["name"]]


def test_model_tokenizer_is_serve_llms_tokenizer_source():
    doc = with_spec(sample_doc("cpu-tiny.yaml"), model__tokenizer="org/other-tokenizer")
    assert _llm_config(doc)["model_loading_config"]["tokenizer_source"] == "org/other-tokenizer"


@pytest.mark.parametrize("method", ["fp8", "awq"])
def test_engine_quantization_reaches_vllm(method: str):
    doc = with_spec(sample_doc("gemma-b200.yaml"), engine__quantization=method)
    assert _llm_config(doc)["engine_kwargs"]["quantization"] == method


def test_ray_image_is_every_ray_containers_image():
    doc = with_spec(sample_doc("gemma-b200.yaml"), ray__image="registry.example.com/ray-llm:custom")
    images = {c["image"] for c in _containers(doc)}
    assert images == {"registry.example.com/ray-llm:custom"}


def test_node_pool_service_account_is_the_pools_node_identity():
    doc = with_spec(sample_doc("l4-spot-fallback.yaml"), nodePool__serviceAccount="nodes@p.iam.gserviceaccount.com")
    pools = node_pools(plan(parse(doc)))
    assert pools and {p["config"]["service_account"] for p in pools} == {"nodes@p.iam.gserviceaccount.com"}


@pytest.mark.parametrize("level", sorted(TOPOLOGY_LEVELS))
def test_placement_topology_level_is_the_affinity_topology_key(level: str):
    doc = with_spec(sample_doc("llama-70b-b200-tp8.yaml"), placement__topologyLevel=level)
    worker = _rs(doc)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    terms = worker["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [t["podAffinityTerm"]["topologyKey"] for t in terms] == [TOPOLOGY_LEVELS[level]]


def test_redis_password_secret_is_kuberays_gcs_password_reference():
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"),
        faultTolerance={"redisAddress": "redis:6379", "redisPasswordSecret": {"name": "redis", "key": "pw"}},
    )
    gcs = _rs(doc)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs == {
        "redisAddress": "redis:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis", "key": "pw"}}},
    }


def test_incremental_upgrade_options_are_kuberays():
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"),
        ingress={"sidecar": False},
        upgrade={"strategy": "incremental", "gatewayClassName": "gke-l7", "maxSurgePercent": 50,
                 "stepSizePercent": 25, "intervalSeconds": 90},
    )  # fmt: skip
    opts = _rs(doc)["spec"]["upgradeStrategy"]
    assert opts == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {
            "maxSurgePercent": 50, "stepSizePercent": 25, "intervalSeconds": 90, "gatewayClassName": "gke-l7"
        },
    }  # fmt: skip


def _env(doc: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """Each Ray container's environment, by name."""
    return [{e["name"]: e for e in c.get("env", [])} for c in _containers(doc)]


def test_hub_revision_endpoint_and_token_reach_vllm_and_huggingface_hub():
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"),
        model__source="acme/tiny-llama",
        model__revision="v1.2",
        model__hfEndpoint="https://hf-mirror.example.com",
        model__hfTokenSecret={"name": "hf", "key": "token"},
    )
    conf = _llm_config(doc)
    assert conf["model_loading_config"]["model_source"] == "acme/tiny-llama"
    assert (conf["engine_kwargs"]["revision"], conf["engine_kwargs"]["tokenizer_revision"]) == ("v1.2", "v1.2")
    for env in _env(doc):
        assert env["HF_ENDPOINT"]["value"] == "https://hf-mirror.example.com"
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}


def test_a_separate_tokenizer_keeps_its_own_revision():
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"), model__source="acme/m", model__revision="v2", model__tokenizer="acme/t"
    )
    assert "tokenizer_revision" not in _llm_config(doc)["engine_kwargs"]


def test_s3_endpoint_region_and_credentials_reach_boto3_and_the_streamer():
    s3 = {"endpoint": "http://minio.storage:9000", "region": "eu-west-1", "credentialsSecret": "s3-creds"}
    doc = with_spec(sample_doc("cpu-tiny.yaml"), model__source="s3://weights/tiny", model__storage={"s3": s3})
    assert _llm_config(doc)["model_loading_config"]["model_source"] == {"bucket_uri": "s3://weights/tiny"}
    for env in _env(doc):
        assert env["AWS_ENDPOINT_URL_S3"]["value"] == env["RUNAI_STREAMER_S3_ENDPOINT"]["value"] == s3["endpoint"]
        assert env["AWS_REGION"]["value"] == "eu-west-1"
        refs = {k: env[k]["valueFrom"]["secretKeyRef"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        assert refs == {k: {"name": "s3-creds", "key": k} for k in refs}
        assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_ray_secret_env_wins_over_the_storage_credentials():
    doc = with_spec(
        sample_doc("cpu-tiny.yaml"),
        model__source="s3://weights/tiny",
        model__storage={"s3": {"credentialsSecret": "s3-creds"}},
        ray__secretEnv={"AWS_ACCESS_KEY_ID": {"name": "mine", "key": "id"}},
    )
    for env in _env(doc):
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "id"}


@pytest.mark.parametrize(
    ("load_format", "uri"), [("download", "gs://anonymous@public/tiny"), ("stream", "gs://public/tiny")]
)
def test_anonymous_gcs_is_said_in_the_uri_to_pyarrow_and_in_the_env_to_the_streamer(load_format: str, uri: str):
    """pyarrow (Ray's downloader) reads anonymously only when the URI says so; the streamer
    (vLLM, which gets the URI when streaming) only when its environment does."""
    gcs = {"endpoint": "http://gcs.storage:4443", "anonymous": True}
    doc = with_spec(
        sample_doc("gemma-b200.yaml"),
        model__source="gs://public/tiny",
        model__loadFormat=load_format,
        model__storage={"gcs": gcs},
        model__lora={"source": "gs://public/adapters"},
    )
    conf = _llm_config(doc)
    assert conf["model_loading_config"]["model_source"] == {"bucket_uri": uri}
    assert conf["lora_config"]["dynamic_lora_loading_path"] == "gs://anonymous@public/adapters"
    assert ("load_format" in conf["engine_kwargs"]) == (load_format == "stream")
    for env in _env(doc):
        assert (
            env["CLOUD_STORAGE_EMULATOR_ENDPOINT"]["value"] == env["STORAGE_EMULATOR_HOST"]["value"] == gcs["endpoint"]
        )
        assert env["RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS"]["value"] == "true"


DISK = "projects/my-proj/global/images/vllm-image-cache"


def test_image_cache_disk_is_every_managed_pools_secondary_boot_disk():
    """GKE's container image cache: the disk on every new node of every pool (spot and
    on-demand), with image streaming, which the cache mode reads through; accepted by the
    google-cloud-container message the GKE layer sends. A new disk is new hardware (a new
    pool); pools without one keep their names."""
    from google.cloud import container_v1

    doc = sample_doc("l4-spot-fallback.yaml")
    doc["spec"]["nodePool"].pop("imageCacheDisk", None)
    without = node_pools(plan(parse(doc)))
    pools = node_pools(plan(parse(with_spec(doc, nodePool__imageCacheDisk=DISK))))
    assert len(pools) == 2
    for pool in pools:
        assert pool["config"]["secondary_boot_disks"] == [{"disk_image": DISK, "mode": "CONTAINER_IMAGE_CACHE"}]
        assert pool["config"]["gcfs_config"] == {"enabled": True}
        msg = container_v1.NodePool(pool)
        assert msg.config.secondary_boot_disks[0].mode == container_v1.SecondaryBootDisk.Mode.CONTAINER_IMAGE_CACHE
    assert {p["name"] for p in pools}.isdisjoint(p["name"] for p in without)
    assert all("secondary_boot_disks" not in p["config"] for p in without)


def _worker_selector(doc: dict[str, Any]) -> dict[str, str]:
    return _rs(doc)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"].get("nodeSelector", {})


def test_image_cache_disk_without_managed_pools_selects_nodes_that_have_it():
    """On pools the operator does not create (Autopilot, node auto-provisioning), the worker
    pods ask for the disk with the node selector GKE documents; a managed pool needs none."""
    doc = with_spec(sample_doc("gemma-b200.yaml"), nodePool__imageCacheDisk=DISK)
    key = "cloud.google.com.node-restriction.kubernetes.io/gke-secondary-boot-disk-vllm-image-cache"
    assert _worker_selector(doc)[key] == "CONTAINER_IMAGE_CACHE.my-proj"
    managed = with_spec(doc, nodePool__managed=True)
    assert key not in _worker_selector(managed)


def test_mount_load_format_mounts_the_bucket_folder_in_the_worker_pods_only():
    """loadFormat mount: the Cloud Storage FUSE CSI driver's inline volume of the model's folder,
    read-only at the path vLLM is given, with the annotation that injects the driver's sidecar
    (user annotations win, for Autopilot's limits); the head reads no weights and gets none."""
    doc = with_spec(
        sample_doc("gemma-b200.yaml"),
        model__source="gs://team-models/gemma/4-e2b",
        model__loadFormat="mount",
        ray__workerPods={"annotations": {"gke-gcsfuse/memory-limit": "8Gi"}},
    )
    cluster = _rs(doc)["spec"]["rayClusterConfig"]
    worker = cluster["workerGroupSpecs"][0]["template"]
    [volume] = [v for v in worker["spec"]["volumes"] if v["name"] == "models"]
    assert volume["csi"] == {
        "driver": "gcsfuse.csi.storage.gke.io",
        "readOnly": True,
        "volumeAttributes": {
            "bucketName": "team-models",
            "mountOptions": "implicit-dirs,file-cache:enable-parallel-downloads:true,only-dir=gemma/4-e2b",
            "fileCacheCapacity": "-1",
        },
    }
    ray = worker["spec"]["containers"][0]
    assert {"name": "models", "mountPath": "/mnt/models", "readOnly": True} in ray["volumeMounts"]
    notes = worker["metadata"]["annotations"]
    assert notes["gke-gcsfuse/volumes"] == "true" and notes["gke-gcsfuse/memory-limit"] == "8Gi"
    head = cluster["headGroupSpec"]["template"]
    assert all(v["name"] != "models" for v in head["spec"]["volumes"])
    assert "gke-gcsfuse/volumes" not in head["metadata"].get("annotations", {})
    assert _llm_config(doc)["model_loading_config"]["model_source"] == "/mnt/models"
    assert "load_format" not in _llm_config(doc)["engine_kwargs"]  # vLLM reads local files


def test_a_node_cache_is_every_ray_containers_hugging_face_cache_owned_by_ray():
    """model.nodeCache: one directory on the node, mounted in every Ray container as
    huggingface_hub's cache, and given to Ray's user before Ray starts (the kubelet makes a
    missing hostPath directory as root)."""
    doc = with_spec(sample_doc("cpu-tiny.yaml"), model__source="acme/tiny-llama", model__nodeCache={"path": "/data/hf"})
    cluster = _rs(doc)["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "model-cache"]
        assert volume["hostPath"] == {"path": "/data/hf", "type": "DirectoryOrCreate"}
        [ray] = [c for c in pod["containers"] if c["name"] == "ray"]
        [mount] = [m for m in ray["volumeMounts"] if m["name"] == "model-cache"]
        env = {e["name"]: e.get("value") for e in ray["env"]}
        assert env["HF_HUB_CACHE"].startswith(mount["mountPath"] + "/")
        [owner] = pod["initContainers"]
        assert owner["image"] == ray["image"] and owner["securityContext"]["runAsUser"] == 0
        assert env["HF_HUB_CACHE"] in owner["command"] and "1000" in owner["command"]
        assert ray_hooks.BUCKET_CACHE_ENV not in env  # a Hub model: huggingface_hub's cache only
    plain = _rs(with_spec(sample_doc("cpu-tiny.yaml"), model__source="acme/tiny-llama"))
    assert "model-cache" not in yaml.safe_dump(plain) and "HF_HUB_CACHE" not in yaml.safe_dump(plain)


@pytest.mark.parametrize("source", ["s3://weights/tiny", "gs://weights/tiny"])
def test_a_node_cache_for_a_bucket_model_is_where_the_callback_keeps_the_folder(source):
    """model.nodeCache with a gs:// or s3:// model: the operator's callback (render/ray_hooks.py)
    is told the directory, under the mount, that the init container gives to Ray's user."""
    doc = with_spec(sample_doc("cpu-tiny.yaml"), model__source=source, model__nodeCache={"path": "/data/models"})
    cluster = _rs(doc)["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        [ray] = [c for c in pod["containers"] if c["name"] == "ray"]
        [mount] = [m for m in ray["volumeMounts"] if m["name"] == "model-cache"]
        env = {e["name"]: e.get("value") for e in ray["env"]}
        assert env[ray_hooks.BUCKET_CACHE_ENV].startswith(mount["mountPath"] + "/")
        [owner] = pod["initContainers"]
        assert env[ray_hooks.BUCKET_CACHE_ENV] in owner["command"]
