"""The Hub stand-in answers the real huggingface_hub client as the Hub does: downloads at a
branch or a commit, and the Hub's own errors, each raised as the client's typed exception (a
drift here would show on the real node only as a model that fails to load)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from testkit.fake_hub import Hub, Repo, serve

pytestmark = pytest.mark.component  # a server thread and the real client over HTTP


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Repo]]:
    root = tmp_path_factory.mktemp("repo")
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "sub").mkdir()
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    repo = Repo("acme/tiny", root)
    gated = Repo("acme/gated", root, gated=True)
    server = serve("127.0.0.1", 0, Hub([repo, gated], token="sekret"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", repo
    server.shutdown()


def test_a_snapshot_at_main_and_at_the_commit_is_the_repo(hub, tmp_path: Path):
    endpoint, repo = hub
    for rev in ("main", repo.sha):
        path = Path(snapshot_download("acme/tiny", revision=rev, endpoint=endpoint, cache_dir=tmp_path / rev))
        assert path.name == repo.sha
        assert (path / "sub" / "weights.bin").read_bytes() == (repo.root / "sub" / "weights.bin").read_bytes()
    info = HfApi(endpoint=endpoint).model_info("acme/tiny")
    assert info.sha == repo.sha and sorted(s.rfilename for s in info.siblings or []) == [
        "config.json",
        "sub/weights.bin",
    ]


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "error"),
    [
        ("acme/none", "config.json", "main", RepositoryNotFoundError),
        ("acme/tiny", "config.json", "v9", RevisionNotFoundError),
        ("acme/tiny", "tokenizer.model", "main", RemoteEntryNotFoundError),
        ("acme/gated", "config.json", "main", GatedRepoError),
    ],
)
def test_the_hubs_errors_reach_the_client_typed(hub, tmp_path: Path, repo_id, filename, revision, error):
    with pytest.raises(error):
        hf_hub_download(repo_id, filename, revision=revision, endpoint=hub[0], cache_dir=tmp_path, token=False)


def test_a_gated_repo_opens_with_its_token(hub, tmp_path: Path):
    path = hf_hub_download("acme/gated", "config.json", endpoint=hub[0], cache_dir=tmp_path, token="sekret")
    assert Path(path).read_text() == '{"model_type": "llama"}'
