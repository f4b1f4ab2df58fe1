"""A local Kubernetes cluster: a real control plane on 127.0.0.1 (etcd, kube-apiserver with
RBAC, controller-manager, scheduler), kwok with simulated GKE GPU/TPU nodes, one real node that
runs pods (containerd, kubelet, kube-proxy, CoreDNS in its own namespaces: e2e/node/), and
KubeRay's operator in the node's network (it reaches Ray heads' dashboards by Service name).

    python -m e2e.cluster up      # start in the background, print the kubeconfig path
    python -m e2e.cluster down    # stop it and remove its files

`Cluster.attach(kubeconfig)` drives a cluster another process started: this one (found by
its state file, every local capability included) or any other (kind, GKE: only what a
kubeconfig gives).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ipaddress
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

import psutil
import yaml

from . import bins, nodes
from .build import image
from .node import Node, NodeNetwork, stop_from_state
from .node import state_dict as node_state
from .pki import PKI

HOST = "127.0.0.1"
STATE_FILE = bins.cache_root() / "cluster" / "state.json"


def state_file() -> Path:
    """Where `up` records a running cluster: E2E_CLUSTER_STATE, or the one `make cluster-up` uses."""
    return Path(os.environ.get("E2E_CLUSTER_STATE") or STATE_FILE)


SERVICE_CIDR = "10.96.0.0/16"


def _done() -> concurrent.futures.Future:
    done: concurrent.futures.Future = concurrent.futures.Future()
    done.set_result(None)
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


SERVING_NAMESPACES = ("serving", "serving-switches", "serving-fail", "serving-plain", "serving-hub", "serving-sources")


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


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """status.conditions, which is null for a moment after a CRD (or node) is created."""
    return (obj.get("status") or {}).get("conditions") or []


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
    # One real node that runs pods (needs root, containerd and the images of `make images`),
    # loaded with these images.
    real_node: bool = True
    images: tuple[image.ImageRecipe, ...] = (image.PAUSE, image.OPERATOR, image.RAY_CPU)
    # start() returns once the first image (the pod sandbox's pause) is in; the rest (the
    # serving image, ~45 s to import) go on in the background: wait_images() before using them.
    images_in_background: bool = False
    # Namespaces the KubeRay operator watches. Elsewhere RayServices are left alone, so tests
    # can play KubeRay by writing RayService status themselves.
    # The real-pod tests' namespaces (served by the operator the chart installs) and the API-level
    # tests' own: KubeRay leaves the others alone, where tests play its part.
    kuberay_namespaces: tuple[str, ...] = ("default", "kuberay", *SERVING_NAMESPACES)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="llmservice-e2e-")))
    processes: list[Process] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    _imports: list[concurrent.futures.Future] = field(default_factory=list)  # one per image, in order
    _stopped: bool = False
    owned: bool = True  # started by this process (stop() stops it); False: attached
    local: bool = True  # this machine's cluster: node, audit log, PKI, kwok nodes at hand

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

    def helm(self, *args: str) -> subprocess.CompletedProcess:
        exe = str(bins.load_versions()["helm"].bin_dir / "helm")
        res = subprocess.run([exe, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise ClusterError(f"helm {' '.join(args)} failed: {res.stderr.strip()}")
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
                    for cond in _conditions(items.get(n) or {})
                )
                for n in crd_names
            )

        self._wait(f"CRDs {', '.join(crd_names)} established", established, timeout)

    def apply(self, objs: list[dict[str, Any]] | str, server_side: bool = True) -> None:
        text = objs if isinstance(objs, str) else yaml.safe_dump_all(objs)
        args = ["apply", "-f", "-"] + (["--server-side", "--force-conflicts"] if server_side else [])
        self.kubectl(*args, input=text)

    # -- another process's cluster -------------------------------------------------------------

    @classmethod
    def attach(cls, kubeconfig: Path, timeout: float = 900) -> Cluster:
        """The cluster behind `kubeconfig`, started by someone else; waits up to `timeout` for
        the file (`up --kubeconfig-out` writes it once the cluster is ready, FILE.failed if it
        could not start). This machine's local cluster (its state file names that kubeconfig)
        comes with everything the tests use; any other with what a kubeconfig gives."""
        failed, deadline = kubeconfig.with_suffix(".failed"), time.monotonic() + timeout
        while not kubeconfig.exists():
            if failed.exists():
                raise ClusterError(f"the cluster did not start: {failed.read_text().strip()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"no kubeconfig at {kubeconfig} after {timeout:.0f}s")
            time.sleep(0.5)
        state = json.loads(state_file().read_text()) if state_file().exists() else {}
        if state and Path(state["kubeconfig"]).read_bytes() == kubeconfig.read_bytes():
            return cls._from_state(state)
        c = cls(real_node=False, with_kuberay=False, images=(), owned=False, local=False)
        shutil.copyfile(kubeconfig, c.kubeconfig)
        return c

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Cluster:
        c = cls(workdir=Path(state["workdir"]), images=(), owned=False)
        c.ports, c.timings = state["ports"], dict(state.get("timings") or {})
        c.pki = PKI(c.workdir / "pki")  # the CA of the running cluster
        c.ca = c.pki.ca
        c.admin = (c.workdir / "pki" / "admin.crt", c.workdir / "pki" / "admin.key")
        if state.get("slot") is not None:
            c.network = NodeNetwork(state["slot"])
        if state.get("node"):
            assert c.network is not None
            c.node = Node(c.network, Path(state["node"]["state"]), c.pki, c.ports["apiserver"])
        return c

    def load_images(self, recipes: tuple[image.ImageRecipe, ...]) -> None:
        """Put what the node lacks of `recipes` there, in the background (`wait_images` waits):
        on this machine's node by importing the archive into its containerd, on kind with
        `kind load image-archive` (E2E_KIND_CLUSTER names it); elsewhere the images must be
        in a registry the nodes pull from (E2E_IMAGE_REGISTRY, not done here)."""
        nodes = self.get_json("nodes")["items"]
        present = {n for node in nodes for img in (node["status"].get("images") or []) for n in img["names"]}
        missing = [r for r in recipes if r.name not in present and f"docker.io/{r.name}" not in present]
        self.images = tuple(recipes)
        # Two at a time: one image may still be building (see _load_image).
        pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="image-load")
        self._imports = [
            pool.submit(self._load_image, r) if r in missing else _done() for r in recipes
        ]  # fmt: skip
        pool.shutdown(wait=False)

    def _load_image(self, recipe: image.ImageRecipe) -> None:
        """Built first if its archive is missing (`make images` builds them all before)."""
        kind = os.environ.get("E2E_KIND_CLUSTER")
        if self.node is None and not kind:
            raise ClusterError(
                f"the cluster's nodes lack {recipe.name}: push it to a registry they pull from and set "
                "E2E_IMAGE_REGISTRY, or set E2E_KIND_CLUSTER for kind (`make kind-demo` does)"
            )
        start = time.monotonic()
        if not recipe.ready:
            image.build(recipe)
            self.timings[f"build {recipe.name}"] = time.monotonic() - start
            start = time.monotonic()
        if self.node is not None:
            self.node.import_image(recipe.archive)
        else:
            cmd = ["kind", "load", "image-archive", str(recipe.archive), "--name", str(kind)]
            subprocess.run(cmd, check=True, capture_output=True)
        self.timings[f"load {recipe.name}"] = time.monotonic() - start

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    network: NodeNetwork | None = None
    node: Node | None = None

    @property
    def service_cidr(self) -> str:
        return self.network.service_cidr if self.network else SERVICE_CIDR

    def start(self) -> Cluster:
        started = time.monotonic()
        try:
            missing = [c.name for c in bins.load_versions().values() if not c.ready]
            if missing:
                raise ClusterError(f"binaries not built: {', '.join(missing)}; run `make e2e-bins`")
            if self.real_node:
                unbuilt = [r.name for r in self.images if not r.ready]
                if unbuilt:
                    raise ClusterError(f"images not built: {', '.join(unbuilt)}; run `make images`")
                self._step("node-network", self._claim_network)
            self._pki()
            self._step("etcd", self._start_etcd)
            self._step("kube-apiserver", self._start_apiserver)
            if self.real_node:  # the node comes up, and imports its images, while the rest starts
                self._step("node-start", self._start_node)
                pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="image-import")
                self._imports = [pool.submit(self._import_image, recipe) for recipe in self.images]
                pool.shutdown(wait=False)
            if self.with_kuberay:
                self._step("kuberay-crds", self._install_kuberay_crds)
            self._step("controllers+scheduler+kwok", self._start_controllers)
            self._step("nodes", self._create_nodes)
            if self.real_node:
                self._step("node-images", self.wait_images if not self.images_in_background else self._wait_sandbox)
                self._step("node-ready", self._wait_real_node)
            if self.with_kuberay:
                self._step("kuberay", self._start_kuberay)
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

    def wait_images(self, *recipes: image.ImageRecipe) -> None:
        """These images (default: every one) are in the node's containerd (raises what the
        import raised)."""
        for recipe, imported in zip(self.images, self._imports, strict=False):
            if not recipes or recipe in recipes:
                imported.result()

    def _wait_sandbox(self) -> None:
        if self._imports:  # the first image is the pause image
            self._imports[0].result()

    def stop(self) -> None:
        """Idempotent: a second call does nothing (the network slot may be another cluster's by then).
        An attached cluster stays: only what this process started in it (servers in the node's
        network) stops; whoever started the cluster stops the rest."""
        if self._stopped:
            return
        self._stopped = True
        if not self.owned:
            for imported in self._imports:
                imported.cancel()
            if self.node:
                self.node.stop_own()
            if not self.local:  # only our copy of its kubeconfig and our logs
                shutil.rmtree(self.workdir, ignore_errors=True)
            return
        for p in reversed(self.processes):
            if p.popen:
                _stop_group(p.popen.pid, p.popen)
        self.processes.clear()
        if self.node:
            self.node.stop()
        for imported in self._imports:
            if not imported.cancel():  # started: cut short, its containerd is gone
                with contextlib.suppress(Exception):
                    imported.result(timeout=60)
        if self.network:
            self.network.delete()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        p = Process(name, args, self.workdir / f"{name}.log", env)
        p.start()
        self.processes.append(p)
        return p

    def _wait(self, what: str, ready: Any, timeout: float = 60) -> None:
        """Poll `ready()` every 0.2 s at first, less often the longer it takes (up to every
        2 s): a check is often a kubectl process (~65 ms of CPU), and a wait of minutes at
        5 a second took a third of a core from the pods being waited for."""
        deadline = time.monotonic() + timeout
        pause = 0.2
        while time.monotonic() < deadline:
            for p in self.processes:
                p.check_alive()
            if self.node:
                self.node.check_alive()
            if ready():
                return
            time.sleep(pause)
            pause = min(2.0, pause * 1.2)
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
        # Pods reach the API server at the `kubernetes` Service's IP (the range's first) and
        # the node at the node IP.
        ips = (self.network.node_ip, str(next(ipaddress.ip_network(self.service_cidr).hosts()))) if self.network else ()
        self.serving = pki.issue("apiserver", "kube-apiserver", server=True, ips=ips)
        # The API server's client certificate for kubelet (logs, exec, port-forward).
        self.kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
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
                # The `kubernetes` Service's endpoint: where pods find the API server.
                f"--advertise-address={self.network.node_ip if self.network else HOST}",
                f"--secure-port={self.ports['apiserver']}",
                f"--tls-cert-file={crt}",
                f"--tls-private-key-file={key}",
                f"--client-ca-file={self.ca}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={self.sa_key}",
                f"--service-account-signing-key-file={self.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--kubelet-client-certificate={self.kubelet_client[0]}",
                f"--kubelet-client-key={self.kubelet_client[1]}",
                "--kubelet-preferred-address-types=InternalIP",
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
                f"--service-cluster-ip-range={self.service_cidr}",
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
                # Simulated pods' addresses: unreachable inside the node's network, so a client
                # there (KubeRay) fails at once instead of waiting for a timeout.
                *([f"--cidr={self.network.kwok_cidr}"] if self.network else []),
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
        expected = {n["metadata"]["name"] for n in self.node_objects}
        self._wait(f"{len(expected)} Ready simulated nodes", lambda: expected <= self.ready_node_names())

    def audit_writes(self, user: str) -> list[dict[str, Any]]:
        """Write requests (create/update/patch/delete) `user` made, from the audit log."""
        out = []
        for line in (self.workdir / "audit.log").read_text().splitlines():
            ev = json.loads(line)
            if ev.get("user", {}).get("username") == user and ev.get("stage") == "ResponseComplete":
                out.append(ev)
        return out

    def audit_writes_to(self, resource: str, subresource: str | None = None) -> list[dict[str, Any]]:
        """Completed write requests to `resource` (and `subresource`), from the audit log."""
        out = []
        for line in (self.workdir / "audit.log").read_text().splitlines():
            ev = json.loads(line)
            ref = ev.get("objectRef", {})
            done = ev.get("stage") == "ResponseComplete"
            if done and ref.get("resource") == resource and ref.get("subresource") == subresource:
                out.append(ev)
        return out

    def memory_pss(self) -> int:
        """Bytes (proportional set size) of every process of this cluster: the control plane,
        KubeRay, the node's daemons, and every container of its pods (their cgroups)."""
        marks = [str(self.workdir)]
        cgroup = f"/{self.network.cgroup_root}/" if self.network else None
        total = 0
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                mine = any(m in " ".join(proc.info["cmdline"] or []) for m in marks)
                if not mine and cgroup:
                    mine = cgroup in Path(f"/proc/{proc.pid}/cgroup").read_text()
                if mine:
                    total += proc.memory_full_info().pss
        return total

    def ready_node_names(self) -> set[str]:
        """Ready and schedulable: the not-ready taint admission adds is gone."""
        return {
            n["metadata"]["name"]
            for n in self.get_json("nodes")["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in _conditions(n))
            and not any(t["key"] == "node.kubernetes.io/not-ready" for t in n["spec"].get("taints", []))
        }

    def ready_nodes(self) -> int:
        return len(self.ready_node_names())

    # -- the real node ------------------------------------------------------------------------

    def _claim_network(self) -> None:
        self.network = NodeNetwork.claim()

    def _start_node(self) -> None:
        assert self.network
        self.node = Node(self.network, self.workdir / "node", self.pki, self.ports["apiserver"])
        self.node.start()

    def _import_image(self, recipe: image.ImageRecipe) -> None:
        assert self.node
        self.node.wait_runtime()
        self.timings[f"import {recipe.name}"] = self.node.import_image(recipe.archive)

    def _wait_real_node(self) -> None:
        assert self.node
        name = self.node.name
        self._wait(f"the real node {name} Ready", lambda: name in self.ready_node_names(), timeout=120)

    # -- KubeRay ---------------------------------------------------------------------------

    def _install_kuberay_crds(self) -> None:
        kuberay = bins.load_versions()["kuberay"]
        crds = sorted((kuberay.bin_dir / "crds").glob("*.yaml"))
        # Server-side: the RayCluster CRD is too large for the last-applied annotation.
        self.kubectl("apply", "--server-side", *(f"--filename={crd}" for crd in crds))
        self.wait_established([yaml.safe_load(crd.read_text())["metadata"]["name"] for crd in crds])

    @property
    def kuberay_host(self) -> str:
        """Where KubeRay's health and metrics ports listen: the node IP when it runs there."""
        return self.network.node_ip if self.node else HOST

    def _start_kuberay(self) -> None:
        kuberay = bins.load_versions()["kuberay"]
        self.ports["kuberay-metrics"], self.ports["kuberay-health"] = free_port(), free_port()
        args = [
            str(kuberay.bin_dir / "ray-operator"),
            f"-metrics-addr={self.kuberay_host}:{self.ports['kuberay-metrics']}",
            f"-health-probe-bind-address={self.kuberay_host}:{self.ports['kuberay-health']}",
            "-enable-leader-election=false",
            "-log-stdout-encoder=console",
            f"-watch-namespace={','.join(self.kuberay_namespaces)}",
        ]
        kubeconfig = self.kubeconfig
        if self.node:
            # As in a real cluster, KubeRay runs in the cluster's network: it reaches each Ray
            # head's dashboard at <head Service>.<namespace>.svc.cluster.local through the
            # node's DNS. Its own mount namespace points /etc/resolv.conf at CoreDNS.
            kubeconfig = self.node.kubeconfig_for("kuberay", "kuberay-operator", "system:masters")
            resolv = self.node.state / "resolv.conf"
            wrap = f'mount --bind {resolv} /etc/resolv.conf && exec "$@"'
            args = ["nsenter", f"--net={self.network.netns_path}", "--", "unshare", "--mount", "--propagation=private",
                    "--", "/bin/sh", "-c", wrap, "kuberay", *args]  # fmt: skip
        self._spawn("kuberay-operator", args, env={**os.environ, "KUBECONFIG": str(kubeconfig)})

    def _wait_kuberay(self) -> None:
        self._wait(
            "KubeRay operator health",
            lambda: self._http_ok(self.ports["kuberay-health"], "/readyz", self.kuberay_host),
            timeout=60,
        )

    @staticmethod
    def _http_ok(port: int, path: str, host: str = HOST) -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    # -- persistence for `make cluster-up` / `cluster-down` ------------------------------

    def save_state(self) -> None:
        path = state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "workdir": str(self.workdir),
            "kubeconfig": str(self.kubeconfig),
            "pids": [p.popen.pid for p in self.processes if p.popen],
            "ports": self.ports,
            "node": node_state(self.node) if self.node else None,
            "slot": self.network.slot if self.network else None,
            "timings": self.timings,
        }
        path.write_text(json.dumps(state, indent=2))


def down() -> bool:
    path = state_file()
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    for pid in reversed(state["pids"]):
        _stop_group(pid)
    if state.get("node"):
        stop_from_state(state["node"])
    if state.get("slot") is not None:
        NodeNetwork(state["slot"]).delete()
    shutil.rmtree(state["workdir"], ignore_errors=True)
    path.unlink()
    return True


IMAGES = {"pause": image.PAUSE, "operator": image.OPERATOR, "ray-cpu": image.RAY_CPU}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--no-kuberay", action="store_true", help="skip the KubeRay operator")
    parser.add_argument("--no-real-node", action="store_true", help="simulated (kwok) nodes only")
    parser.add_argument(
        "--images", default=",".join(IMAGES), help=f"images the node imports at start (of {', '.join(IMAGES)})"
    )
    parser.add_argument(
        "--kubeconfig-out", type=Path, help="copy the kubeconfig here once ready (FILE.failed: why not)"
    )
    args = parser.parse_args()
    if args.action == "down":
        print("cluster stopped" if down() else "no cluster running")
        return
    if state_file().exists():
        sys.exit(f"a cluster is already running ({state_file()}); run `make cluster-down` first")
    out: Path | None = args.kubeconfig_out
    if out is not None:
        out.unlink(missing_ok=True)
        out.with_suffix(".failed").unlink(missing_ok=True)
    try:
        images = tuple(IMAGES[n] for n in args.images.split(",") if n)
        cluster = Cluster(with_kuberay=not args.no_kuberay, real_node=not args.no_real_node, images=images).start()
    except BaseException as e:
        if out is not None:
            out.with_suffix(".failed").write_text(f"{type(e).__name__}: {e}\n")
        raise
    cluster.save_state()
    if out is not None:
        tmp = out.with_suffix(".tmp")
        shutil.copyfile(cluster.kubeconfig, tmp)
        tmp.replace(out)
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items())
    print(f"cluster ready in {cluster.timings['total']:.1f}s ({steps})")
    print(f"kubeconfig: {cluster.kubeconfig}")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print("  kubectl get nodes -L cloud.google.com/gke-nodepool")
    print("stop with: make cluster-down")


if __name__ == "__main__":
    main()
