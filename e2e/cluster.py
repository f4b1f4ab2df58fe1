"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver (RBAC), controller-manager,
scheduler and kwok with simulated GKE nodes, plus KubeRay's operator out of cluster.

    python -m e2e.cluster up      # start in the background, print the kubeconfig path
    python -m e2e.cluster down    # stop it and remove its files
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import bins, nodes
from .pki import PKI

HOST = "127.0.0.1"
STATE_FILE = bins.cache_root() / "cluster" / "state.json"
SERVICE_CIDR = "10.96.0.0/16"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


class ClusterError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    args: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # own process group: stopped as a whole, survives our exit
            )

    def check_alive(self) -> None:
        if self.popen and self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise ClusterError(f"{self.name} exited with {self.popen.returncode}; log {self.log}:\n{tail}")


def _group_alive(pid: int, popen: subprocess.Popen | None) -> bool:
    if popen is not None and popen.poll() is None:
        return True  # our own child: poll() reaps it, so a zombie does not count as alive
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return popen is None


def _stop_group(pid: int, popen: subprocess.Popen | None = None, timeout: float = 10) -> None:
    """SIGTERM the process group, SIGKILL what is left after `timeout`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pid, popen):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if popen is not None:
        popen.wait()


@dataclass
class Cluster:
    """Start with `start()` (or as a context manager); `stop()` always cleans up."""

    node_file: Path = nodes.DEFAULT_NODES
    with_kuberay: bool = True
    # Namespaces the KubeRay operator watches. Elsewhere RayServices are left alone, so tests
    # can play KubeRay by writing RayService status themselves.
    kuberay_namespaces: tuple[str, ...] = ("default", "kuberay")
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="llmservice-e2e-")))
    processes: list[Process] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.ports['apiserver']}"

    def _bin(self, component: str, name: str) -> str:
        return str(bins.load_versions()[component].bin_dir / name)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self._bin("kubernetes", "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, input=input)
        if check and res.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {res.stderr.strip()}")
        return res

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_for(self, what: str, ready: Any, timeout: float = 60) -> None:
        """Poll `ready()` until true; fails early, with the log, if a component died."""
        self._wait(what, ready, timeout)

    def wait_established(self, crd_names: list[str], timeout: float = 60) -> None:
        """Poll instead of `kubectl wait`, which errors out while status.conditions is unset."""

        def established() -> bool:
            items = {c["metadata"]["name"]: c for c in self.get_json("crds")["items"]}
            return all(
                any(
                    cond["type"] == "Established" and cond["status"] == "True"
                    for cond in items.get(n, {}).get("status", {}).get("conditions", [])
                )
                for n in crd_names
            )

        self._wait(f"CRDs {', '.join(crd_names)} established", established, timeout)

    def apply(self, objs: list[dict[str, Any]] | str, server_side: bool = True) -> None:
        text = objs if isinstance(objs, str) else yaml.safe_dump_all(objs)
        args = ["apply", "-f", "-"] + (["--server-side", "--force-conflicts"] if server_side else [])
        self.kubectl(*args, input=text)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        started = time.monotonic()
        try:
            missing = [c.name for c in bins.load_versions().values() if not c.ready]
            if missing:
                raise ClusterError(f"binaries not built: {', '.join(missing)}; run `make e2e-bins`")
            self._pki()
            self._step("etcd", self._start_etcd)
            self._step("kube-apiserver", self._start_apiserver)
            if self.with_kuberay:  # KubeRay warms up while the rest starts
                self._step("kuberay-start", self._start_kuberay)
            self._step("controllers+scheduler+kwok", self._start_controllers)
            self._step("nodes", self._create_nodes)
            if self.with_kuberay:
                self._step("kuberay-ready", self._wait_kuberay)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    def _step(self, name: str, fn: Any) -> None:
        t = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - t

    def stop(self) -> None:
        for p in reversed(self.processes):
            if p.popen:
                _stop_group(p.popen.pid, p.popen)
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        p = Process(name, args, self.workdir / f"{name}.log", env)
        p.start()
        self.processes.append(p)
        return p

    def _wait(self, what: str, ready: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.processes:
                p.check_alive()
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (logs in {self.workdir})")

    # -- components ------------------------------------------------------------------------

    def kubeconfig_for(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig with its own client certificate: the audit log tells its requests apart."""
        crt, key = self.pki.issue(f"user-{user}", user, org=",".join(groups) or None)
        path = self.workdir / f"kubeconfig-{user}"
        self._write_kubeconfig(path, crt, key)
        return path

    def kubeconfig_with_token(self, name: str, token: str) -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's, say)."""
        path = self.workdir / f"kubeconfig-{name}"
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        path.write_text(yaml.safe_dump(config))
        return path

    def _pki(self) -> None:
        self.pki = pki = PKI(self.workdir / "pki")
        self.ca = pki.ca
        self.serving = pki.issue("apiserver", "kube-apiserver", server=True)
        self.admin = pki.issue("admin", "llmservice-e2e-admin", org="system:masters")
        self.sa_key = pki.service_account_key()

    def _start_etcd(self) -> None:
        self.ports["etcd"], self.ports["etcd-peer"] = free_port(), free_port()
        client = f"http://{HOST}:{self.ports['etcd']}"
        peer = f"http://{HOST}:{self.ports['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                self._bin("etcd", "etcd"),
                "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"default={peer}",
                "--unsafe-no-fsync",  # a throwaway store: speed over durability
                "--log-level", "warn",
            ],
        )  # fmt: skip
        self._wait("etcd", lambda: _port_open(self.ports["etcd"]))

    def _start_apiserver(self) -> None:
        self.ports["apiserver"] = free_port()
        crt, key = self.serving
        self._spawn(
            "kube-apiserver",
            [
                self._bin("kubernetes", "kube-apiserver"),
                f"--etcd-servers=http://{HOST}:{self.ports['etcd']}",
                f"--bind-address={HOST}",
                f"--advertise-address={HOST}",
                f"--secure-port={self.ports['apiserver']}",
                f"--tls-cert-file={crt}",
                f"--tls-private-key-file={key}",
                f"--client-ca-file={self.ca}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={self.sa_key}",
                f"--service-account-signing-key-file={self.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                # Audit log: tests count the writes a reconcile makes.
                f"--audit-policy-file={self._audit_policy()}",
                f"--audit-log-path={self.workdir / 'audit.log'}",
                "--audit-log-mode=blocking",
            ],
        )
        self._write_kubeconfig()
        self._wait("kube-apiserver /readyz", self._apiserver_ready, timeout=90)

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {"level": "None", "verbs": ["get", "list", "watch"]},
                {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
                {"level": "Metadata"},
            ],
        }
        path.write_text(yaml.safe_dump(policy))
        return path

    def _write_kubeconfig(self, path: Path | None = None, crt: Path | None = None, key: Path | None = None) -> None:
        if crt is None or key is None:
            crt, key = self.admin
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {"server": self.server, "certificate-authority": str(self.ca)}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(crt), "client-key": str(key)}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
            "current-context": "e2e",
        }
        (path or self.kubeconfig).write_text(yaml.safe_dump(config))

    def _apiserver_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(*map(str, self.admin))
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _start_controllers(self) -> None:
        kc = f"--kubeconfig={self.kubeconfig}"
        self.ports["controller-manager"], self.ports["scheduler"] = free_port(), free_port()
        self.ports["kwok"] = free_port()
        self._spawn(
            "kube-controller-manager",
            [
                self._bin("kubernetes", "kube-controller-manager"),
                kc,
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--bind-address={HOST}",
                f"--secure-port={self.ports['controller-manager']}",
                "--leader-elect=false",
                f"--service-account-private-key-file={self.sa_key}",
                f"--root-ca-file={self.ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--use-service-account-credentials=true",
                # No cloud, no node IPAM (kwok assigns pod IPs). nodelifecycle stays: it lifts the
                # not-ready taint that admission puts on every new node once kwok reports Ready.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                self._bin("kubernetes", "kube-scheduler"),
                kc,
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--bind-address={HOST}",
                f"--secure-port={self.ports['scheduler']}",
                "--leader-elect=false",
            ],
        )
        self._spawn(
            "kwok",
            [
                self._bin("kwok", "kwok"),
                kc,
                f"--manage-nodes-with-label-selector={nodes.KWOK_LABEL}=kwok",
                f"--server-address={HOST}:{self.ports['kwok']}",
                *(f"--config={f}" for f in sorted((bins.load_versions()["kwok"].bin_dir / "stages").glob("*.yaml"))),
                "--node-ip=127.0.0.1",
            ],
        )
        self._wait(
            "the default ServiceAccount",
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
        )

    def _create_nodes(self) -> None:
        self.node_objects = nodes.nodes(self.node_file)
        # Node status is set on create; kwok then keeps the nodes Ready and heartbeating.
        self.apply(self.node_objects, server_side=False)
        expected = len(self.node_objects)
        self._wait(f"{expected} Ready nodes", lambda: self.ready_nodes() == expected)

    def audit_writes(self, user: str) -> list[dict[str, Any]]:
        """Write requests (create/update/patch/delete) `user` made, from the audit log."""
        out = []
        for line in (self.workdir / "audit.log").read_text().splitlines():
            ev = json.loads(line)
            if ev.get("user", {}).get("username") == user and ev.get("stage") == "ResponseComplete":
                out.append(ev)
        return out

    def ready_nodes(self) -> int:
        """Ready and schedulable: the not-ready taint admission adds is gone."""
        return sum(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
            and not any(t["key"] == "node.kubernetes.io/not-ready" for t in n["spec"].get("taints", []))
            for n in self.get_json("nodes")["items"]
        )

    def _start_kuberay(self) -> None:
        kuberay = bins.load_versions()["kuberay"]
        crds = sorted((kuberay.bin_dir / "crds").glob("*.yaml"))
        # Server-side: the RayCluster CRD is too large for the last-applied annotation.
        self.kubectl("apply", "--server-side", *(f"--filename={crd}" for crd in crds))
        names = [yaml.safe_load(crd.read_text())["metadata"]["name"] for crd in crds]
        self.wait_established(names)
        self.ports["kuberay-metrics"], self.ports["kuberay-health"] = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        self._spawn(
            "kuberay-operator",
            [
                str(kuberay.bin_dir / "ray-operator"),
                f"-metrics-addr={HOST}:{self.ports['kuberay-metrics']}",
                f"-health-probe-bind-address={HOST}:{self.ports['kuberay-health']}",
                "-enable-leader-election=false",
                "-log-stdout-encoder=console",
                f"-watch-namespace={','.join(self.kuberay_namespaces)}",
            ],
            env=env,
        )

    def _wait_kuberay(self) -> None:
        self._wait("KubeRay operator health", lambda: self._http_ok(self.ports["kuberay-health"], "/readyz"))

    @staticmethod
    def _http_ok(port: int, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    # -- persistence for `make cluster-up` / `cluster-down` ------------------------------

    def save_state(self) -> None:
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "workdir": str(self.workdir),
            "kubeconfig": str(self.kubeconfig),
            "pids": [p.popen.pid for p in self.processes if p.popen],
            "ports": self.ports,
        }
        STATE_FILE.write_text(json.dumps(state, indent=2))


def down() -> bool:
    if not STATE_FILE.exists():
        return False
    state = json.loads(STATE_FILE.read_text())
    for pid in reversed(state["pids"]):
        _stop_group(pid)
    shutil.rmtree(state["workdir"], ignore_errors=True)
    STATE_FILE.unlink()
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--no-kuberay", action="store_true", help="skip the KubeRay operator")
    args = parser.parse_args()
    if args.action == "down":
        print("cluster stopped" if down() else "no cluster running")
        return
    if STATE_FILE.exists():
        sys.exit(f"a cluster is already running ({STATE_FILE}); run `make cluster-down` first")
    cluster = Cluster(with_kuberay=not args.no_kuberay).start()
    cluster.save_state()
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items())
    print(f"cluster ready in {cluster.timings['total']:.1f}s ({steps})")
    print(f"kubeconfig: {cluster.kubeconfig}")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print("  kubectl get nodes -L cloud.google.com/gke-nodepool")
    print("stop with: make cluster-down")


if __name__ == "__main__":
    main()
