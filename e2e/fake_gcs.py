"""A fake GCS that speaks the real JSON API: fake-gcs-server, built from Go modules by
`make e2e-bins`. Ray's loader (pyarrow's GcsFileSystem) and the Run:ai streamer reach it through
`spec.model.storage.gcs` (an endpoint, anonymous reads), as they would reach a GCS proxy or a
public bucket. Where it runs: `fakes.Server`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from e2e.bins import load_versions

from .fakes import Server


def binary() -> Path:
    return load_versions()["fake-gcs-server"].bin_dir / "fake-gcs-server"


class FakeGCS(Server):
    name = "fake-gcs"
    default_port = 4443

    def command(self) -> list[str]:
        return [
            str(binary()), "-scheme", "http", "-host", self.ip, "-port", str(self.port), "-backend", "memory",
            "-public-host", f"{self.ip}:{self.port}", "-external-url", self.endpoint, "-log-level", "warn",
        ]  # fmt: skip

    def ready_path(self) -> str:
        return "/storage/v1/b"

    def _post(self, path: str, data: bytes, content_type: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}{path}", data=data, headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=30):
            pass

    def upload(self, src: Path, bucket: str, prefix: str) -> str:
        """Every file under `src` to gs://bucket/prefix/..., with an empty `dir/` object for
        each folder (as the console and gcsfuse make them: pyarrow lists subfolders by them);
        returns that URI."""
        try:
            self._post("/storage/v1/b", json.dumps({"name": bucket}).encode(), "application/json")
        except urllib.error.HTTPError as e:
            if e.code != 409:  # it exists
                raise
        names: dict[str, bytes] = {}
        for f in sorted(src.rglob("*")):
            if f.is_file():
                key = f"{prefix}/{f.relative_to(src).as_posix()}"
                names[key] = f.read_bytes()
                parts = key.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    names.setdefault("/".join(parts[:i]) + "/", b"")
        for key, data in names.items():
            query = urllib.parse.urlencode({"uploadType": "media", "name": key})
            self._post(f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")
        return f"gs://{bucket}/{prefix}"
