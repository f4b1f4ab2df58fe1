"""The operator image archive the offline builder made holds what the Dockerfile says: its
runtime config, the allocator it preloads, every pinned package at its version and the
operator itself, in two layers. Here, not in tests/test_images.py, because it reads the built
archive (`make images`, which `make test` runs first), not only the recipes."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from dataclasses import replace

from e2e.build import image, oci

ROOT = image.ROOT
DOCKERFILE = ROOT / "Dockerfile"


def _archive_files(layers: bool = True) -> tuple[dict, dict, set[str]]:
    """The archive's manifest, image config and (unless `layers` is false) the paths of its layers."""
    with tarfile.open(image.OPERATOR.archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        blob = lambda digest: tar.extractfile("blobs/sha256/" + digest.split(":")[1]).read()  # noqa: E731
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        names: set[str] = set()
        for layer in manifest["layers"] if layers else []:
            raw = subprocess.run(["zstd", "-dc"], input=blob(layer["digest"]), capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as inner:
                names.update(m.name.lstrip("./") for m in inner)
    return manifest, config, names


def test_the_built_archive_holds_what_the_dockerfile_says():
    image.build(image.OPERATOR)  # built already by `make images`, or now
    _, config, names = _archive_files()
    want = oci.parse_dockerfile(DOCKERFILE.read_text()).oci()
    assert {k: config["config"].get(k) for k in want} == want
    # The allocator the image's LD_PRELOAD names is there (a missing one is only a warning).
    assert any(n.endswith("/libjemalloc.so.2") for n in names), "libjemalloc2 (packages.txt) is not in the image"
    site = "opt/llmservice/lib/python3.11/site-packages/"
    installed = {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for n in names
        if (m := re.fullmatch(re.escape(site) + r"([^/]+?)-([^-/]+)\.dist-info", n.rstrip("/")))
    }
    pins = {}
    for line in (image.OPERATOR.context / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    # Every pin at its version; the installers removed after use.
    assert installed == {k: v for k, v in pins.items() if k not in ("setuptools", "pip")}
    # The operator's package over them, every module compiled, and its command.
    package = site + "llmservice_operator/"
    sources = {n for n in names if n.startswith(package) and n.endswith(".py")}
    assert package + "cli.py" in sources and package + "render/templates/llmservice_ray_hooks.py" in sources
    compiled = {n for n in names if n.startswith(package) and n.endswith(".cpython-311.pyc")}
    assert len(compiled) == len(sources), "a module of the operator is not compiled"
    assert "opt/llmservice/bin/llmservice" in names


def test_a_code_change_rebuilds_only_the_operators_own_layer():
    """The dependencies' root is kept while only the operator's code changes: CI's build of a
    new commit is a small layer over the cached root, not a Debian root and 60 packages again."""
    image.build(image.OPERATOR)
    manifest, config, _ = _archive_files(layers=False)
    # Two layers: the first is the cached root, byte for byte.
    assert len(manifest["layers"]) == 2
    assert config["rootfs"]["diff_ids"][0] == "sha256:" + hashlib.sha256(image.OPERATOR.root.read_bytes()).hexdigest()
    # The root's key is what makes the root; the operator's code is only in the archive's.
    edited = replace(image.OPERATOR, packages=(("e2e/build", "/opt/x"),))
    assert edited.root == image.OPERATOR.root and edited.archive != image.OPERATOR.archive
