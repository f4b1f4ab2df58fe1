import pytest
from ray._private.accelerators.tpu import get_chips_per_host
from ray.util.accelerators import accelerators as ray_accelerators

from llmservice_operator.catalog import ACCELERATORS, get, tpu_slice


def test_ray_knows_every_accelerator_type():
    ray_types = {getattr(ray_accelerators, n) for n in dir(ray_accelerators) if n.isupper()}
    for acc in ACCELERATORS.values():
        assert acc.ray_type in ray_types, acc.key


@pytest.mark.parametrize("key", [k for k, a in ACCELERATORS.items() if a.is_tpu])
def test_tpu_hosts_agree_with_ray(key):
    """Ray's autoscaler and Serve LLM size TPU slices with get_chips_per_host; a mismatch would
    leave hosts idle or replicas unschedulable."""
    acc = get(key)
    for topology in acc.topologies:
        s = tpu_slice(acc, topology)
        assert s.chips_per_host == get_chips_per_host(topology, acc.tpu_version), topology
        assert s.hosts * s.chips_per_host == s.chips


def test_v6e_shapes():
    v6e = get("tpu-v6e")
    single = tpu_slice(v6e, "2x4")
    assert (single.hosts, single.chips_per_host, single.machine_type) == (1, 8, "ct6e-standard-8t")
    multi = tpu_slice(v6e, "4x4")
    assert (multi.hosts, multi.chips_per_host, multi.machine_type) == (4, 4, "ct6e-standard-4t")
    assert multi.multi_host and not single.multi_host


def test_unknown_topology_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: 1x1, 2x2"):
        tpu_slice(get("tpu-v6e"), "3x3")


def test_gpu_catalog_facts():
    b200 = get("nvidia-b200")
    assert (b200.gke_label, b200.machine_type(8), b200.max_per_node) == ("nvidia-b200", "a4-highgpu-8g", 8)
    assert get("nvidia-h200").gke_label == "nvidia-h200-141gb"
    assert get("nvidia-h100-mega").machine_type(8) == "a3-megagpu-8g"
    assert get("nvidia-gb200").arch == "arm64"
    assert get("nvidia-l4").node_size_for(3) == 4
    assert get("nvidia-b200").node_size_for(16) == 8
    assert get("nvidia-b200").resource == "nvidia.com/gpu"
    assert get("tpu-7x").resource == "google.com/tpu"
