import pytest
from ray._private.accelerators.tpu import get_chips_per_host
from ray.util.accelerators import accelerators as ray_accelerators

from llmservice_operator.catalog import (
    ACCELERATORS,
    boot_disk_type,
    cpu_machine_for,
    cpu_machines,
    get,
    machine_by_name,
    tpu_slice,
)


def test_ray_knows_every_accelerator_type():
    ray_types = {getattr(ray_accelerators, n) for n in dir(ray_accelerators) if n.isupper()}
    for acc in ACCELERATORS.values():
        if not acc.is_cpu:  # Ray refuses accelerator_type on CPU
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


def test_cpu_is_no_accelerator():
    cpu = get("cpu")
    assert cpu.is_cpu and not cpu.is_tpu and not cpu.is_gpu
    assert (cpu.resource, cpu.node_label, cpu.taint_key, cpu.ray_type) == (None, None, None, "")
    assert get("nvidia-l4").taint_key == "nvidia.com/gpu" and get("tpu-v6e").taint_key == "google.com/tpu"


def test_cpu_machines():
    by_name = {m.name: m for m in cpu_machines()}
    assert set(by_name) == {
        *(f"c3-standard-{n}" for n in (4, 8, 22, 44)),
        *(f"n2-standard-{n}" for n in (2, 4, 8, 16, 32)),
    }
    assert all(m.memory_gib == 4 * m.vcpus and m.accelerators == 0 for m in by_name.values())
    assert machine_by_name("c3-standard-22") == (get("cpu"), by_name["c3-standard-22"])
    # Room for pods: GKE's allocatable (its documented kubelet reservation and eviction
    # threshold) less what system pods and the edge sidecar ask for.
    assert [round(x, 2) for x in by_name["n2-standard-2"].room] == [1.43, 5.1]
    assert [round(x, 2) for x in by_name["n2-standard-8"].room] == [7.41, 27.34]
    # The smallest machine with room for one worker pod, C3 before N2 on a tie.
    assert cpu_machine_for(1, 4).name == "n2-standard-2"
    assert cpu_machine_for(0.5, 6).name == "c3-standard-4"  # not n2-standard-2: 6 GiB > 5.1
    assert cpu_machine_for(8, 32).name == "n2-standard-16"  # not *-standard-8: 8 vCPUs > 7.41
    assert cpu_machine_for(40, 32).name == "c3-standard-44"
    assert cpu_machine_for(50, 32) is None


def test_boot_disk_follows_the_machine_series():
    assert boot_disk_type("n2-standard-8") == "pd-balanced"  # N2 has no Hyperdisk
    assert boot_disk_type("c3-standard-8") == "hyperdisk-balanced"
    assert boot_disk_type("a4-highgpu-8g") == "hyperdisk-balanced"
