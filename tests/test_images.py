"""The operator image: the Dockerfile (for users with Docker) and the offline builder (this
machine, e2e/build/image.py) make the same image: the same Debian suite, install script,
pinned packages and source, the same runtime config. (The built archive is read back by
e2e/tests/test_operator_archive.py.)"""

from __future__ import annotations

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
    # install.sh, its package list and pins; then the operator's packages where the recipe lays them.
    assert (["images/operator/"], "/tmp/build/") in copies
    assert "RUN /tmp/build/install.sh" in text
    packages = [(src, dest) for sources, dest in copies if not dest.startswith("/tmp/") for src in sources]
    assert packages == list(image.OPERATOR.packages)
    assert text.index("RUN /tmp/build/install.sh") < text.index(f"COPY {packages[0][0]}")
    assert all(f"compileall -q --invalidation-mode checked-hash \\\n      {dest}" in text for _, dest in packages)
    assert image.OPERATOR.dockerfile == DOCKERFILE
    # Non-root by number (runAsNonRoot can check it), the operator's command line.
    config = oci.parse_dockerfile(text)
    assert config.user == "65532:65532" and config.entrypoint == ["llmservice"] and config.cmd == ["run"]
    # .dockerignore keeps the build context to what the image needs.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"e2e", "tests", ".venv", ".git", "**/__pycache__", "**/*.egg-info"} <= set(ignored)
