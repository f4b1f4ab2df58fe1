"""The real node's network: its own network namespace joined to the host by a veth pair,
like a kind node's container network.

Addresses come from a per-cluster slot, so two local clusters never collide:
    node link   10.250.<slot>.0/24   host end .1, node end .2 (the node IP)
    pods        10.251.<slot>.0/24   the node's bridge (CNI) subnet
    services    10.252.<slot*16>.0/20
    kwok pods   10.253.<slot>.0/24   simulated pods: unreachable inside the node, so clients fail fast

The host gets routes to the pod and service ranges through the veth (tests reach a Service's
ClusterIP as a pod would); they go when the veth goes. Nothing here touches another
interface: `ip netns del` removes the veth pair, its routes and every iptables rule the
node's daemons made inside the namespace.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

PREFIX = "llmsvc"
NETNS_DIR = Path("/run/netns")
SLOTS = 16


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res


@dataclass(frozen=True)
class NodeNetwork:
    slot: int

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.slot}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def cgroup_root(self) -> str:
        """The node's cgroup in every hierarchy (kubelet's cgroupRoot), named like its namespace."""
        return self.netns

    @property
    def host_if(self) -> str:
        return f"{PREFIX}{self.slot}h"

    @property
    def host_ip(self) -> str:
        return f"10.250.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"10.250.{self.slot}.2"

    @property
    def pod_cidr(self) -> str:
        return f"10.251.{self.slot}.0/24"

    @property
    def service_cidr(self) -> str:
        return f"10.252.{self.slot * 16}.0/20"

    @property
    def kwok_cidr(self) -> str:
        return f"10.253.{self.slot}.0/24"

    @property
    def dns_ip(self) -> str:
        """CoreDNS listens on the node IP (pods reach it through the bridge's gateway)."""
        return self.node_ip

    @classmethod
    def claim(cls) -> NodeNetwork:
        """Create the namespace of the first free slot (`ip netns add` fails when taken)."""
        for slot in range(SLOTS):
            net = cls(slot)
            if _ip("netns", "add", net.netns, check=False).returncode == 0:
                try:
                    net._wire()
                except BaseException:
                    net.delete()
                    raise
                return net
        raise RuntimeError(f"no free node network slot: {SLOTS} namespaces {PREFIX}N exist (ip netns list)")

    def _wire(self) -> None:
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        n = self.netns
        _ip("link", "set", "lo", "up", netns=n)
        _ip("addr", "add", f"{self.node_ip}/24", "dev", "eth0", netns=n)
        _ip("link", "set", "eth0", "up", netns=n)
        _ip("route", "add", "default", "via", self.host_ip, netns=n)
        # Simulated (kwok) pods have addresses but no network: refuse at once inside the node.
        _ip("route", "add", "unreachable", self.kwok_cidr, netns=n)
        for cidr in (self.pod_cidr, self.service_cidr):
            _ip("route", "add", cidr, "via", self.node_ip, "dev", self.host_if)

    def delete(self) -> None:
        """Remove the namespace: its veth pair, the host routes through it and its iptables go too."""
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", self.netns)
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", self.host_if)

    def exists(self) -> bool:
        return self.netns_path.exists()
