"""Wrap root filesystem tarballs as a single-platform OCI image archive, without Docker.

The archive is an OCI image layout in a tar (`oci-layout`, `index.json`, `blobs/sha256/...`)
that `ctr images import` loads; the index names the image with the annotations containerd
reads (`io.containerd.image.name`) and the OCI ref name.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class ImageConfig:
    """What a Dockerfile's ENV, USER, WORKDIR, ENTRYPOINT and CMD say."""

    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    def oci(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in self.env.items()]}
        if self.user:
            conf["User"] = self.user
        if self.workdir:
            conf["WorkingDir"] = self.workdir
        if self.entrypoint:
            conf["Entrypoint"] = self.entrypoint
        if self.cmd:
            conf["Cmd"] = self.cmd
        return conf


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archive(
    name: str, layers: list[Path], config: ImageConfig, out: Path, arch: str = "amd64", created: str = ""
) -> dict[str, Any]:
    """Write `out` (an OCI layout tar) from uncompressed layer tarballs; returns its manifest.

    Layers are compressed with zstd (multi-threaded, the fastest codec containerd unpacks);
    the config's diff_ids are the digests of the uncompressed tars, as the spec requires.
    """
    blobs: list[tuple[str, Path | bytes]] = []
    layer_descs, diff_ids = [], []
    for layer in layers:
        diff_ids.append("sha256:" + _sha256_file(layer))
        packed = layer.with_name(layer.name + ".zst")
        subprocess.run(["zstd", "-q", "-f", "-T0", "-3", str(layer), "-o", str(packed)], check=True)
        digest = _sha256_file(packed)
        layer_descs.append({"mediaType": LAYER_ZSTD, "digest": f"sha256:{digest}", "size": packed.stat().st_size})
        blobs.append((digest, packed))
    image_config = {
        "architecture": arch,
        "os": "linux",
        "config": config.oci(),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        **({"created": created} if created else {}),
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    blobs.append((config_digest, config_bytes))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": f"sha256:{config_digest}", "size": len(config_bytes)},
        "layers": layer_descs,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    blobs.append((manifest_digest, manifest_bytes))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": f"sha256:{manifest_digest}",
                "size": len(manifest_bytes),
                "platform": {"architecture": arch, "os": "linux"},
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
            }
        ],
    }
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w") as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for digest, blob in blobs:
            if isinstance(blob, bytes):
                _add_bytes(tar, f"blobs/sha256/{digest}", blob)
            else:
                tar.add(blob, f"blobs/sha256/{digest}")
                blob.unlink()
    shutil.move(tmp, out)
    return manifest


def file_layer(files: dict[str, Path], out: Path, mode: int = 0o755) -> Path:
    """A layer tarball holding single files (e.g. a static binary at /coredns)."""
    with tarfile.open(out, "w") as tar:
        for inside, source in files.items():
            info = tar.gettarinfo(str(source), inside.lstrip("/"))
            info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = mode, 0, 0, "", "", 0
            with source.open("rb") as f:
                tar.addfile(info, f)
    return out


def parse_dockerfile(text: str) -> ImageConfig:
    """The runtime config a Dockerfile's final stage sets (ENV k=v, USER, WORKDIR,
    ENTRYPOINT/CMD in exec form): the offline builder reads it so both builds agree."""
    logical, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(buf.strip())
            buf = ""
    env: dict[str, str] = {}
    user = workdir = ""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for stmt in logical:
        word, _, rest = stmt.partition(" ")
        word = word.upper()
        if word == "FROM":
            env, user, workdir, entrypoint, cmd = {}, "", "", [], []
        elif word == "ENV":
            for pair in rest.split():
                k, _, v = pair.partition("=")
                env[k] = v
        elif word == "USER":
            user = rest.strip()
        elif word == "WORKDIR":
            workdir = rest.strip()
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
    return ImageConfig(env, user, workdir, entrypoint, cmd)
