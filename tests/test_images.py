"""The operator image: the Dockerfile (for users with Docker) and the offline builder (this
machine, e2e/build/image.py) make the same image: the same Debian suite, install script,
pinned packages and source, the same runtime config. The archive `make images` built is read
back to check what it holds."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile

import pytest

from e2e.build import image, oci

from .conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _copies(text: str) -> list[tuple[list[str], str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("COPY "):
            *sources, dest = line.split()[1:]
            out.append((sources, dest))
    return out


def test_the_dockerfile_and_the_offline_recipe_install_the_same_things():
    text = DOCKERFILE.read_text()
    assert f"FROM debian:{image.SUITE}-slim" in text, "the suite mmdebstrap builds from"
    copies = _copies(text)
    # install.sh, its package list and pins; the source the recipe copies to src/.
    assert (["images/operator/"], "/tmp/build/") in copies
    copied_src = {src.rstrip("/") for sources, dest in copies if dest.startswith("/tmp/build/src") for src in sources}
    assert copied_src == set(image.OPERATOR.sources)
    assert "RUN /tmp/build/install.sh" in text
    assert image.OPERATOR.dockerfile == DOCKERFILE
    # Non-root by number (runAsNonRoot can check it), the operator's command line.
    config = oci.parse_dockerfile(text)
    assert config.user == "65532:65532" and config.entrypoint == ["llmservice"] and config.cmd == ["run"]
    # .dockerignore keeps the build context to what the image needs.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"e2e", "tests", ".venv", ".git"} <= set(ignored)


def _archive_files() -> tuple[dict, set[str]]:
    """The archive's image config and the paths of its layer."""
    with tarfile.open(image.OPERATOR.archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        blob = lambda digest: tar.extractfile("blobs/sha256/" + digest.split(":")[1]).read()  # noqa: E731
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        names: set[str] = set()
        for layer in manifest["layers"]:
            raw = subprocess.run(["zstd", "-dc"], input=blob(layer["digest"]), capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as inner:
                names.update(m.name.lstrip("./") for m in inner)
    return config, names


@pytest.mark.skipif(not image.OPERATOR.ready, reason="the operator image is built by `make images`")
def test_the_built_archive_holds_what_the_dockerfile_says():
    config, names = _archive_files()
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
    # Every pin at its version, the operator itself; the installers removed after use.
    assert installed == {k: v for k, v in pins.items() if k not in ("setuptools", "pip")} | {
        "llmservice-operator": "0.1.0"
    }
    assert "opt/llmservice/bin/llmservice" in names
