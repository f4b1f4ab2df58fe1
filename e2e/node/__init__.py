"""A real Kubernetes node on this machine, isolated like a kind node in its container.

containerd + runc + the CNI bridge plugin (Debian packages), kubelet and kube-proxy (built from
k8s.io/kubernetes) and CoreDNS (cluster DNS, built from its Go module) run in the node's own
network namespace (see network.py) and in a private mount and PID namespace. The API server
stays on the host's loopback; a forwarder makes it appear on the node IP, where kubelet, the
daemons and the pods (the `kubernetes` Service) reach it.

Teardown kills the PID namespace's init with SIGKILL, which takes every daemon, shim and
container at once; the mount namespace and its tmpfs go with the last process; then the
cgroups kubelet made are removed and the network namespace is deleted (veth, routes and
iptables with it). `leftovers()` lists anything that survived, for tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e import bins
from e2e.pki import PKI

from . import config
from .network import NodeNetwork

CGROUP_ROOT = Path("/sys/fs/cgroup")
NODE_NAME = "gke-cpu-local-0"
# The node looks like one node of a GKE CPU pool (labels as GKE sets them).
NODE_LABELS = {
    "cloud.google.com/gke-nodepool": "cpu-local",
    "cloud.google.com/machine-family": "n2",
    "node.kubernetes.io/instance-type": "n2-standard-2",
    "topology.kubernetes.io/region": "us-central1",
    "topology.kubernetes.io/zone": "us-central1-b",
}


class NodeError(RuntimeError):
    pass


def _kubeconfig(path: Path, server: str, ca: Path, cert: tuple[Path, Path]) -> Path:
    conf = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "u", "user": {"client-certificate": str(cert[0]), "client-key": str(cert[1])}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "u"}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(conf))
    return path


def _bin(component: str, name: str) -> str:
    return str(bins.load_versions()[component].bin_dir / name)


@dataclass
class Node:
    network: NodeNetwork
    state: Path  # the node's own files: configs, logs, containerd's store, kubelet's root
    pki: PKI
    apiserver_port: int
    name: str = NODE_NAME
    labels: dict[str, str] = field(default_factory=lambda: dict(NODE_LABELS))
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def apiserver(self) -> str:
        """The API server as everything inside the node sees it."""
        return f"https://{self.network.node_ip}:{self.apiserver_port}"

    @property
    def containerd_socket(self) -> Path:
        return self.state / "containerd.sock"

    def kubeconfig_for(self, name: str, cn: str, org: str | None = None) -> Path:
        """A kubeconfig for a client inside the node's network."""
        cert = self.pki.issue(f"node-{name}", cn, org)
        return _kubeconfig(self.state / f"{name}.kubeconfig", self.apiserver, self.pki.ca, cert)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the forwarder and the node's daemons; returns while they come up."""
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "sysctl").mkdir(exist_ok=True)
        self._start_forwarder()
        init = self.state / "init.sh"
        init.write_text(config.init_script(self.state, self.network.cgroup_root, self._daemons()))
        # nsenter joins the node's network; unshare makes the mount and PID namespaces and
        # forks the init as PID 1. --kill-child: when unshare dies, the init gets SIGKILL.
        args = ["nsenter", f"--net={self.network.netns_path}", "--",
                "unshare", "--mount", "--propagation=private", "--pid", "--fork", "--mount-proc", "--kill-child",
                "--", "/bin/bash", str(init)]  # fmt: skip
        self._spawn("node", args)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        with (self.state / f"{name}.out").open("ab") as out:
            proc = self.processes[name] = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        return proc

    def run_in_network(self, name: str, args: list[str]) -> subprocess.Popen:
        """A server of the tests (Redis, a fake object store) in the node's network, where pods
        and this host reach it at the node IP; it stops with the node at the latest."""
        return self._spawn(name, ["nsenter", f"--net={self.network.netns_path}", "--", *args])

    def log_of(self, name: str) -> str:
        path = self.state / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def _start_forwarder(self) -> None:
        self._spawn(
            "forward",
            [sys.executable, "-m", "e2e.node.forward", "--netns", str(self.network.netns_path),
             "--listen", f"{self.network.node_ip}:{self.apiserver_port}",
             "--to", f"127.0.0.1:{self.apiserver_port}"],
        )  # fmt: skip

    def _daemons(self) -> dict[str, list[str]]:
        net, s = self.network, self.state
        ca = self.pki.ca
        serving = self.pki.issue("kubelet-serving", self.name, server=True, ips=(net.node_ip,))
        kubelet_kc = self.kubeconfig_for("kubelet", f"system:node:{self.name}", "system:nodes")
        proxy_kc = self.kubeconfig_for("kube-proxy", "system:kube-proxy")
        dns_kc = self.kubeconfig_for("coredns", "system:coredns", "system:masters")
        router_kc = self.kubeconfig_for("kube-router", "system:kube-router", "system:masters")
        (s / "cni").mkdir(exist_ok=True)
        (s / "cni" / "10-llmsvc.conflist").write_text(config.cni_conflist(net, s))
        (s / "containerd.toml").write_text(config.containerd_toml(s))
        default_spec = json.loads(subprocess.run(["ctr", "oci", "spec"], check=True, capture_output=True).stdout)
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
        (s / "base-runtime-spec.json").write_text(config.base_runtime_spec(default_spec, nofile))
        (s / "kubelet.yaml").write_text(config.kubelet_config(net, s, ca, serving))
        (s / "kube-proxy.yaml").write_text(config.kube_proxy_config(net, proxy_kc, self.name))
        (s / "Corefile").write_text(config.corefile(net, dns_kc))
        (s / "resolv.conf").write_text(f"nameserver {net.dns_ip}\n")
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return {
            "containerd": ["containerd", "--config", str(s / "containerd.toml")],
            "kubelet": [
                _bin("kubernetes", "kubelet"), f"--config={s / 'kubelet.yaml'}", f"--kubeconfig={kubelet_kc}",
                f"--root-dir={s / 'kubelet'}", f"--hostname-override={self.name}", f"--node-ip={net.node_ip}",
                f"--node-labels={labels}",
            ],
            "kube-proxy": [_bin("kubernetes", "kube-proxy"), f"--config={s / 'kube-proxy.yaml'}"],
            "coredns": [_bin("coredns", "coredns"), "-conf", str(s / "Corefile")],
            # NetworkPolicy enforcement, as Dataplane V2 or Calico do on GKE: kube-router's
            # firewall alone (iptables and ipsets, in this network namespace only).
            # It needs the Node object kubelet registers: it waits for it.
            "kube-router": [
                "/bin/sh", "-c",
                f'until "$0" --kubeconfig={router_kc} get node {self.name} >/dev/null 2>&1; do sleep 1; done; '
                'exec "$@"',
                _bin("kubernetes", "kubectl"),
                _bin("kube-router", "kube-router"), f"--kubeconfig={router_kc}", f"--hostname-override={self.name}",
                "--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
                f"--service-cluster-ip-range={net.service_cidr}", "--health-port=0", "--metrics-port=0",
            ],
        }  # fmt: skip

    def check_alive(self) -> None:
        for name in ("node", "forward"):
            proc = self.processes.get(name)
            if proc is not None and proc.poll() is not None:
                raise NodeError(f"node {name} exited with {proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        out = []
        for log in sorted(self.state.glob("*.log")) + sorted(self.state.glob("*.out")):
            text = log.read_text(errors="replace")
            if text:
                out.append(f"--- {log.name}\n{text[-chars:]}")
        return "\n".join(out)

    def wait_runtime(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self._ctr_ok():
            self.check_alive()
            if time.monotonic() > deadline:
                raise NodeError(f"containerd not up after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if check and res.returncode != 0:
            raise NodeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
        return res

    def _ctr_ok(self) -> bool:
        return self.containerd_socket.exists() and self._ctr("version", check=False).returncode == 0

    def import_image(self, archive: Path) -> float:
        """Load an OCI archive into containerd's k8s.io namespace (unpacked for overlayfs)."""
        start = time.monotonic()
        self._ctr("images", "import", "--snapshotter", "overlayfs", str(archive))
        return time.monotonic() - start

    def images(self) -> list[str]:
        return self._ctr("images", "list", "--quiet").stdout.split()

    def stop(self) -> None:
        """SIGKILL the PID namespace (via unshare --kill-child), then clean what outlives it."""
        node = self.processes.pop("node", None)
        if node is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.processes.clear()
        remove_cgroups(self.network.cgroup_root)

    def stop_own(self) -> None:
        """Of a node another process started: stop only what this process ran in its network."""
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.processes.clear()

    # -- what a test can check after teardown ------------------------------------------------

    def leftovers(self) -> list[str]:
        return leftovers(self.network, self.state)


def _cgroup_dirs(root_name: str) -> list[Path]:
    """The node's cgroup root in every v1 hierarchy (cgroupRoot: /<netns name>)."""
    if not CGROUP_ROOT.is_dir():
        return []
    return [d / root_name for d in CGROUP_ROOT.iterdir() if (d / root_name).is_dir()]


def remove_cgroups(root_name: str, timeout: float = 10) -> None:
    """rmdir the cgroups kubelet and runc made, deepest first, once their tasks are gone."""
    deadline = time.monotonic() + timeout
    for top in _cgroup_dirs(root_name):
        for d in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), top]:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)


def leftovers(net: NodeNetwork, state: Path) -> list[str]:
    """What the node left on the host: processes, mounts, namespaces, cgroups, host routes."""
    found: list[str] = []
    if net.exists():
        found.append(f"network namespace {net.netns}")
    link = subprocess.run(["ip", "link", "show", net.host_if], capture_output=True, text=True)
    if link.returncode == 0:
        found.append(f"interface {net.host_if}")
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    found += [f"host route {ln}" for ln in routes.splitlines() if net.host_if in ln]
    found += [f"cgroup {d}" for d in _cgroup_dirs(net.cgroup_root)]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {ln.split()[4]}" for ln in mounts.splitlines() if str(state) in ln or "llmsvc-node" in ln]
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(state) in cmdline or str(net.netns_path) in cmdline:
                found.append(f"process {pid}: {cmdline[:120]}")
    return found


def state_dict(node: Node) -> dict[str, Any]:
    """What `make cluster-down` needs to stop a node another process started."""
    return {"slot": node.network.slot, "state": str(node.state), "pids": [p.pid for p in node.processes.values()]}


def stop_from_state(data: dict[str, Any]) -> None:
    for pid in data["pids"]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    net = NodeNetwork(data["slot"])
    deadline = time.monotonic() + 10
    while any(p.startswith("process") for p in leftovers(net, Path(data["state"]))) and time.monotonic() < deadline:
        time.sleep(0.1)
    remove_cgroups(net.cgroup_root)
    net.delete()


__all__ = ["NODE_LABELS", "Node", "NodeError", "NodeNetwork"]
