"""`llmservice run` as a process on the local cluster: for the end-to-end tests and the
control-plane benchmark."""

from __future__ import annotations

import ctypes.util
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from e2e.build import image, oci
from e2e.cluster import HOST, Cluster, free_port


def image_allocator() -> dict[str, str]:
    """The operator image's allocator settings (its Dockerfile's ENV), so the operator run
    here, in the tests and the benchmark, manages memory as the chart's pods do; none where
    this machine has no jemalloc (`make node-deps` installs it)."""
    env = oci.parse_dockerfile(image.OPERATOR.recipe_file.read_text()).env
    if not ctypes.util.find_library("jemalloc"):
        return {}
    return {k: v for k, v in env.items() if k in ("LD_PRELOAD", "PYTHONMALLOC", "MALLOC_CONF")}


class Operator:
    """`llmservice run` as a process, with its own client certificate (user llmservice-operator)."""

    USER = "llmservice-operator"

    def __init__(
        self,
        cluster: Cluster,
        user: str = USER,
        args: tuple[str, ...] = ("--log-format", "text"),
        env: dict[str, str] | None = None,
        kubeconfig: Path | None = None,
    ):
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.extra_env = env or {}
        self.user = user
        self.args = args
        self.health_port, self.metrics_port = free_port(), free_port()
        self.log = cluster.workdir / f"{user}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            **image_allocator(),
            "KUBECONFIG": str(self.kubeconfig or self.cluster.kubeconfig_for(self.user, ("system:masters",))),
            "LLMSERVICE_RETRY_DELAY_SECONDS": "2",
            "LLMSERVICE_RETRY_MAX_DELAY_SECONDS": "2",
            "LLMSERVICE_SECRET_REFRESH_SECONDS": "2",  # the default is 10
            "LLMSERVICE_GKE_POLL_SECONDS": "0.25",  # GKE's fake finishes operations in 1 s
            **self.extra_env,
        }
        cli = str(Path(sys.executable).with_name("llmservice"))
        args = [cli, "run", *self.args, "--health-address", f"{HOST}:{self.health_port}",
                "--metrics-address", f"{HOST}:{self.metrics_port}"]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.cluster.wait_for("the operator's /healthz", self.healthy, timeout=60)

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        return Cluster._http_ok(self.health_port, "/healthz")

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5).read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} ") or (not want and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def total(self, name: str) -> float:
        """A counter summed over all its label sets."""
        text = urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    @property
    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def kill(self) -> None:
        """kill -9: no clean-up of any kind, as when a node or the container dies."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
