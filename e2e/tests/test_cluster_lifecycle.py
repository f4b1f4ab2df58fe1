"""The local cluster's own life: a second cluster whose real node runs a pod is stopped by a
failing body and leaves nothing on the host; a component that dies at start is reported with
its log. Each starts a cluster of its own, so `make test` runs them in the host's pytest,
beside the shared cluster's tests."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from e2e.build import image
from e2e.cluster import HOST, Cluster, ClusterError
from e2e.node import NodeNetwork, leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # this machine's node and network


def _bound(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _iptables_host() -> str:
    """The host's rules, without iptables-save's comments (they carry the time it ran)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return "".join(ln for ln in out.splitlines(keepends=True) if not ln.startswith("#"))


def _host_mounts() -> set[str]:
    return {ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()}


PAUSE_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "sleeper", "namespace": "default"},
    "spec": {
        "nodeSelector": {"kubernetes.io/hostname": "gke-cpu-local-0"},
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "pause", "image": image.PAUSE.name, "imagePullPolicy": "Never"}],
    },
}


def test_shutdown_is_clean_even_when_the_body_fails():
    """A second cluster whose real node runs a pod, stopped by a failing body: no process,
    port, mount, network namespace, interface, route, cgroup or iptables rule is left."""
    iptables, mounts = _iptables_host(), _host_mounts()
    c = Cluster(with_kuberay=False, images=(image.PAUSE,))
    with pytest.raises(RuntimeError, match="boom"), c:
        pids = [p.popen.pid for p in c.processes] + [p.pid for p in c.node.processes.values()]
        ports = dict(c.ports)
        net, state = c.network, c.node.state
        assert all(_alive(p) for p in pids) and _bound(ports["apiserver"])
        c.apply([PAUSE_POD])
        c.wait_for("a pod running on the real node", lambda: _phase(c, "sleeper") == "Running", timeout=60)
        assert any(str(net.cgroup_root) in str(d) for d in Path("/sys/fs/cgroup/memory").iterdir())
        raise RuntimeError("boom")
    assert not any(_alive(p) for p in pids)
    assert not any(_bound(p) for p in ports.values())
    assert not c.workdir.exists()
    assert leftovers(net, state) == []
    assert net.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert _iptables_host() == iptables
    assert _host_mounts() == mounts


def _phase(c: Cluster, pod: str) -> str | None:
    res = c.kubectl("get", "pod", pod, "-n", "default", "-o", "jsonpath={.status.phase}", check=False)
    return res.stdout or None


def test_a_component_that_dies_is_reported_with_its_log(tmp_path: Path):
    bad_nodes = tmp_path / "nodes.yaml"
    bad_nodes.write_text("zone: us-central1-b\npools:\n  - {name: x, machineType: no-such-machine, nodes: 1}\n")
    c = Cluster(node_file=bad_nodes, with_kuberay=False, images=(image.PAUSE,))
    with pytest.raises(KeyError, match="no-such-machine"):
        c.start()
    assert not c.workdir.exists() and c.processes == []
    assert leftovers(c.network, c.workdir / "node") == [] and not NodeNetwork(c.network.slot).exists()
    assert ClusterError  # the error type callers catch for component failures
