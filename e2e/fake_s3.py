"""A fake object store that speaks the real S3 wire protocol: moto's standalone server.

Ray Serve LLM downloads LoRA adapters from `s3://` with boto3 (its real client library); here
boto3 talks to moto through `AWS_ENDPOINT_URL_S3`. moto lives in its own virtualenv (cached,
pinned): its botocore pins python-dateutil below 3, which the operator's kubernetes client
cannot use. The server runs inside the real node's network namespace on the node IP, where
pods and this host (through the node's veth) reach it, and stops with the node; or, with no
node (`FakeS3.local()`), as a plain process on 127.0.0.1 (the data-path harness's Ray).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

from e2e.bins import cache_root
from e2e.node import Node

MOTO = "moto[server]==5.2.5"
# Moto accepts any credentials; boto3 refuses to sign without some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fake", "AWS_SECRET_ACCESS_KEY": "fake", "AWS_DEFAULT_REGION": "us-east-1"}
_UPLOAD = """
import sys, boto3, pathlib
endpoint, bucket, prefix, src = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint)
s3.create_bucket(Bucket=bucket)
for f in sorted(pathlib.Path(src).rglob("*")):
    if f.is_file():
        s3.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(src).as_posix()}")
"""


def venv() -> Path:
    """moto's own virtualenv, built once (pip, a few seconds) and reused."""
    key = hashlib.sha256(MOTO.encode()).hexdigest()[:12]
    root = cache_root() / "venvs" / f"moto-{key}"
    stamp = root / ".complete"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        subprocess.run([str(root / "bin" / "pip"), "install", "-q", MOTO], check=True)
        stamp.write_text(MOTO)
    return root


class FakeS3:
    def __init__(self, node: Node | None, port: int = 9000):
        """In `node`'s network on its IP; with no node, a child process on 127.0.0.1."""
        self.node, self.port = node, port
        self.ip = node.network.node_ip if node else "127.0.0.1"
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None  # the local process's output

    @classmethod
    def local(cls) -> FakeS3:
        """On 127.0.0.1 on a free port, as a plain process (stop it with `stop`)."""
        from .cluster import free_port

        return cls(None, free_port())

    def _log_tail(self) -> str:
        if self.node:
            return self.node.log_of("fake-s3")[-2000:]
        assert self._log
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def env(self) -> dict[str, str]:
        """What a boto3 client (Ray's LoRA loader) needs to use this store."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, **CREDENTIALS}

    def start(self, timeout: float = 60) -> FakeS3:
        cmd = [str(venv() / "bin" / "moto_server"), "-H", self.ip, "-p", str(self.port)]
        if self.node:
            self.proc = self.node.run_in_network("fake-s3", cmd)
        else:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited {self.proc.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"moto not answering at {self.endpoint} after {timeout:.0f}s")

    def upload(self, src: Path, bucket: str, prefix: str) -> str:
        """Every file under `src` to s3://bucket/prefix/...; returns that URI."""
        env = {"PATH": "/usr/bin:/bin", **self.env()}
        subprocess.run(
            [str(venv() / "bin" / "python"), "-c", _UPLOAD, self.endpoint, bucket, prefix, str(src)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        return f"s3://{bucket}/{prefix}"

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

    def __enter__(self) -> FakeS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
