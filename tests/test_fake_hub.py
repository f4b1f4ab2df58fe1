"""The Hub stand-in answers the real huggingface_hub client as the Hub does: downloads at a
branch or a commit, and the Hub's own errors, each raised as the client's typed exception (a
drift here would show on the real node only as a model that fails to load)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from llmservice_operator.api import parse
from llmservice_operator.controller.rootcause import cause_in
from llmservice_operator.render.plan import plan
from llmservice_operator.render.status import explain
from testkit.fake_hub import Hub, Repo, serve

from .conftest import sample_doc, with_spec

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


# Ray Serve LLM's own engine-config step for a Hub model id, in the serving image's packages (it
# imports vLLM): what the replica runs first. For each (source, revision, token): the traceback as
# the replica logs it, or "ok".
_ENGINE_CONFIG = """
import json, os, sys, traceback
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.llm._internal.serve.engines.vllm.vllm_engine import _get_vllm_engine_config
out = []
for source, revision, token in json.load(sys.stdin):
    os.environ.pop("HF_TOKEN", None)
    if token:
        os.environ["HF_TOKEN"] = token
    conf = LLMConfig(model_loading_config={"model_id": "tiny", "model_source": source},
                     accelerator_config={"kind": "cpu"},
                     engine_kwargs={"revision": revision, "enforce_eager": True})
    try:
        _get_vllm_engine_config(conf, device_type="cpu")
        out.append("ok")
    except Exception:
        out.append(traceback.format_exc())
print(json.dumps(out))
"""


def test_a_hub_model_that_cannot_be_read_names_the_field_to_fix(tmp_path: Path):
    """What the replica's first step (Ray Serve LLM creating vLLM's engine config) says for a
    gated repo without its token, a repo the Hub does not have and a revision it does not have,
    as the status says it: the field to fix first. With the token the same step reads the model.
    Real vLLM and Ray Serve LLM, through the real huggingface_hub client, against the stand-in."""
    from e2e.build import engine, model

    repo = Repo("acme/tiny-llama", model.ensure().model_dir, gated=True)
    server = serve("127.0.0.1", 0, Hub([repo], token="sekret"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    cases = [
        (repo.id, repo.sha, None),
        ("acme/no-such-model", "main", "sekret"),
        (repo.id, "v9", "sekret"),
        (repo.id, repo.sha, "sekret"),
    ]
    try:
        env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf")}
        gated, missing, no_revision, ok = engine.run_json(_ENGINE_CONFIG, cases, env=env)
    finally:
        server.shutdown()
    assert ok == "ok", ok[-2000:]

    def said(log: str, **model: Any) -> str:
        cause = cause_in(log)
        assert cause is not None, log[-2000:]
        spec = {"name": "tiny", "source": repo.id, "hfEndpoint": endpoint, **model}
        return explain(plan(parse(with_spec(sample_doc("cpu-tiny.yaml"), model=spec))), cause.line)

    assert said(gated).startswith("spec.model.hfTokenSecret: acme/tiny-llama is gated; set it to a Secret"), said(gated)
    token = {"hfTokenSecret": {"name": "hf"}}
    assert said(missing, source="acme/no-such-model", **token).startswith(
        f"spec.model.source: the Hub at {endpoint} has no acme/no-such-model"
    ), said(missing, source="acme/no-such-model", **token)
    assert said(no_revision, revision="v9", **token).startswith(
        f"spec.model.revision: the Hub at {endpoint} has no revision v9 of acme/tiny-llama"
    ), said(no_revision, revision="v9", **token)
