"""A fake object store that speaks the real S3 wire protocol: moto's standalone server.

Ray Serve LLM downloads LoRA adapters from `s3://` with boto3 (its real client library); here
boto3 talks to moto through `AWS_ENDPOINT_URL_S3`. moto lives in its own virtualenv (cached,
pinned): its botocore pins python-dateutil below 3, which the operator's kubernetes client
cannot use. Where it runs: `fakes.Server`.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from e2e.bins import cache_root

from .fakes import Server

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


class FakeS3(Server):
    name = "fake-s3"
    default_port = 9000

    def command(self) -> list[str]:
        return [str(venv() / "bin" / "moto_server"), "-H", self.ip, "-p", str(self.port)]

    def ready_path(self) -> str:
        return "/moto-api/"

    def env(self) -> dict[str, str]:
        """What a boto3 client (Ray's LoRA loader) needs to use this store."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, **CREDENTIALS}

    def upload(self, src: Path, bucket: str, prefix: str) -> str:
        """Every file under `src` to s3://bucket/prefix/...; returns that URI."""
        env = {"PATH": "/usr/bin:/bin", **self.env()}
        subprocess.run(
            [str(venv() / "bin" / "python"), "-c", _UPLOAD, self.endpoint, bucket, prefix, str(src)],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        return f"s3://{bucket}/{prefix}"
