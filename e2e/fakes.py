"""Stand-ins for what cannot run here (object stores, the Hugging Face Hub), each a real server
that speaks its service's wire protocol to the real client libraries.

A stand-in runs inside the real node's network namespace on the node IP, where pods and this
host (through the node's veth) reach it, and stops with the node; or, with no node
(`local()`), as a plain process on 127.0.0.1 on a free port (the data-path harness's Ray).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import IO, TypeVar

from e2e.node import Node

S = TypeVar("S", bound="Server")


class Server:
    name = "server"  # the node's log name
    default_port = 0

    def __init__(self, node: Node | None, port: int | None = None):
        """In `node`'s network on its IP; with no node, a child process on 127.0.0.1."""
        self.node, self.port = node, port or self.default_port
        self.ip = node.network.node_ip if node else "127.0.0.1"
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None  # the local process's output

    @classmethod
    def local(cls: type[S]) -> S:
        """On 127.0.0.1 on a free port, as a plain process (stop it with `stop`)."""
        from .cluster import free_port

        return cls(None, free_port())

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_path(self) -> str:
        """A path that answers (any HTTP status) once the server serves."""
        return "/"

    def log(self) -> str:
        if self.node:
            return self.node.log_of(self.name)
        if not self._log:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def start(self: S, timeout: float = 60) -> S:
        cmd = self.command()
        if self.node:
            self.proc = self.node.run_in_network(self.name, cmd)
        else:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}{self.ready_path()}", timeout=2):
                    return self
            except urllib.error.HTTPError:  # it answers
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"{self.name} not answering at {self.endpoint} after {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
