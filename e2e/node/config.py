"""Configuration files of the real node's daemons: containerd, the CNI bridge, kubelet,
kube-proxy, CoreDNS, and the init script that starts them inside the node's namespaces.

Every path a daemon would write to by default (/var/lib/containerd, /var/lib/kubelet,
/var/lib/cni, /etc/cni, /opt/cni, /var/log/pods, /run/containerd, /run/netns ...) is either
set to the node's state dir or covered by a tmpfs that exists only in the node's mount
namespace, so the host's filesystem never changes.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from .network import NodeNetwork

CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "llmservice.dev/pause:1"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
# Global sysctls kubelet sets at start (kubelet/cm/container_manager_linux.go setupKernelTunables):
# inside the node they are bind-mounted copies, so the host's values never change.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Host paths covered by a private tmpfs in the node's mount namespace.
PRIVATE_DIRS = ("/run", "/var/lib", "/var/log")


def containerd_toml(state: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    runc = f"{cri}.containerd.runtimes.runc"
    return f"""version = 2
root = "{state}/containerd/root"
state = "{state}/containerd/state"
# Plugins that would touch host paths (/opt/containerd) or need kernels features not used here.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{state}/containerd.sock"

[ttrpc]
  address = "{state}/containerd.ttrpc.sock"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{runc}]
  runtime_type = "io.containerd.runc.v2"
  base_runtime_spec = "{state}/base-runtime-spec.json"

[{runc}.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{state}/cni"
"""


def base_runtime_spec(default_spec: dict[str, Any], nofile: int) -> str:
    """containerd's default OCI spec with the open-files limit a GKE node gives containers
    (containerd's own default is 1024, too few for HAProxy's 4096 connections); capped at what
    this machine lets root set, since root here cannot raise a hard limit."""
    spec = json.loads(json.dumps(default_spec))
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]
    return json.dumps(spec, indent=2)


def cni_conflist(net: NodeNetwork, state: Path) -> str:
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "llmsvc",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": net.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(state / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=2)


def kubelet_config(net: NodeNetwork, state: Path, ca: Path, serving: tuple[Path, Path]) -> str:
    conf = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        # The API server authenticates with a client certificate of the cluster CA.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{state}/containerd.sock",
        "clusterDNS": [net.dns_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(state / "resolv.conf"),
        # This VM: cgroup v1 with the cgroupfs driver; an own cgroup root that teardown removes.
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{net.cgroup_root}",
        "failCgroupV1": False,
        "failSwapOn": False,
        "enforceNodeAllocatable": [],
        "podLogsDir": str(state / "pod-logs"),
        "volumePluginDir": str(state / "volume-plugins"),
        "staticPodPath": "",
        # Images are imported, never pulled: never garbage-collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "maxPods": 110,
        "podCIDR": net.pod_cidr,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "logging": {"verbosity": 1},
    }
    return yaml.safe_dump(conf, sort_keys=True)


def kube_proxy_config(net: NodeNetwork, kubeconfig: Path, node_name: str) -> str:
    conf = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": net.pod_cidr,
        "hostnameOverride": node_name,
        "bindAddress": net.node_ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # 0: leave the (host-wide) conntrack table size alone.
        "conntrack": {"maxPerCore": 0, "min": 0},
        # Pod -> Service -> pod on the same bridge: masquerade so replies come back through NAT.
        "iptables": {"masqueradeAll": True},
    }
    return yaml.safe_dump(conf, sort_keys=True)


def corefile(net: NodeNetwork, kubeconfig: Path) -> str:
    """Cluster names from the API server; every other name is NXDOMAIN at once (nothing
    outside the cluster is reachable from the node)."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {net.dns_ip}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
.:53 {{
    bind {net.dns_ip}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def init_script(state: Path, cgroup_root: str, daemons: dict[str, list[str]]) -> str:
    """PID 1 of the node's PID namespace: private mounts, the node's cgroup root, then the
    daemons; when one exits the script exits, which takes the whole namespace (and every
    container) with it."""
    sysctls = " ".join(KUBELET_SYSCTLS)
    lines = [
        "#!/bin/bash",
        "set -euo pipefail",
        f"state={state}",
        # kubelet's cgroupRoot must exist in every hierarchy; a new cpuset starts with no CPUs.
        f'for h in /sys/fs/cgroup/*/; do mkdir -p "${{h}}{cgroup_root}"; done',
        "for f in cpuset.cpus cpuset.mems; do",
        f'  cat "/sys/fs/cgroup/cpuset/$f" > "/sys/fs/cgroup/cpuset/{cgroup_root}/$f"',
        "done",
        *(f"mount -t tmpfs -o mode=755 llmsvc-node {d}" for d in PRIVATE_DIRS),
        f"for f in {sysctls}; do",
        '  [ -e "/proc/sys/$f" ] || continue',
        '  copy="$state/sysctl/${f//\\//_}"; cat "/proc/sys/$f" > "$copy"; mount --bind "$copy" "/proc/sys/$f"',
        "done",
        'mount --bind "$state/resolv.conf" /etc/resolv.conf',
    ]
    for name, cmd in daemons.items():
        lines.append(f'{shlex.join(cmd)} > "$state/{name}.log" 2>&1 &')
        if name == "containerd":  # kubelet gives up when the runtime socket is missing
            lines.append('for _ in $(seq 300); do [ -S "$state/containerd.sock" ] && break; sleep 0.1; done')
    lines += [
        "set +e",
        "wait -n",
        'echo "a node daemon exited ($?); stopping the node" >&2',
        "exit 1",
    ]
    return "\n".join(lines) + "\n"
