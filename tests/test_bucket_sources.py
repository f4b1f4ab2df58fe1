"""gs:// and s3:// models through the operator's Ray callback (render/ray_hooks.py), in the serving
image's packages, with the real clients Ray's loader uses (pyarrow, boto3) against the stand-ins
the local cluster runs (moto for S3, fake-gcs-server for GCS), on this host:
- a bucket, folder or credential that is wrong stops the replica with one line that names the
  field to fix, as the status shows it (the replica's traceback through `cause_in` and `explain`);
- with model.nodeCache, the pods of one node download a bucket folder once, and again only when
  the bucket's objects change (the older copy is removed).
The same module is what the pods import (the projected annotation); the real node runs it in
`make test` (test_serving.py's service) and in the bench (`make bench-coldstart`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import free_port
from e2e.fake_gcs import FakeGCS
from e2e.fake_s3 import FakeS3
from llmservice_operator.api import parse
from llmservice_operator.controller.rootcause import cause_in
from llmservice_operator.render import ray_hooks
from llmservice_operator.render.plan import plan
from llmservice_operator.render.status import explain

from .conftest import sample_doc, with_spec

pytestmark = pytest.mark.component  # the engine venv's Python and two object-store servers

# The callback module's bucket check for each URI: "ok" or the traceback, as a replica logs it.
_LISTING = """
import json, sys, traceback
sys.path.insert(0, HOOKS)
import llmservice_ray_hooks as hooks
out = []
for uri in json.load(sys.stdin):
    try:
        hooks.listing(uri)
        out.append("ok")
    except Exception:
        out.append(traceback.format_exc())
print(json.dumps(out))
"""

# Two processes (two pods of a node) fetch the same bucket folder into one node cache at once.
_CACHED = """
import json, multiprocessing, sys
sys.path.insert(0, HOOKS)
import llmservice_ray_hooks as hooks
from pathlib import Path
uri, root, n = json.load(sys.stdin)

def fetch(_):
    folder, hit = hooks.cached(uri, Path(root))
    return str(folder), hit, sorted(p.name for p in folder.iterdir())

with multiprocessing.get_context("fork").Pool(n) as pool:
    print(json.dumps(pool.map(fetch, range(n))))
"""


def _run(script: str, payload: Any, tmp: Path, env: dict[str, str]) -> Any:
    from e2e.build import engine

    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / f"{ray_hooks.MODULE}.py").write_text(ray_hooks.source())  # as the pods get it
    return engine.run_json(f"HOOKS = {str(hooks)!r}\n{script}", payload, env=env, timeout=120)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from e2e.build import model

    return model.ensure().model_dir


@pytest.fixture(scope="module")
def s3(model_dir: Path) -> Iterator[FakeS3]:
    with FakeS3(None, free_port()) as store:
        store.upload(model_dir, "models", "tiny")
        store.upload(model_dir.parent / "loras", "models", "loras")
        yield store


@pytest.fixture(scope="module")
def gcs(model_dir: Path) -> Iterator[FakeGCS]:
    with FakeGCS(None, free_port()) as store:
        store.upload(model_dir, "models", "tiny")
        yield store


def _status_line(traceback_text: str, source: str, **spec: Any) -> str:
    """What the LLMService's status says for a replica that logged this traceback."""
    cause = cause_in(traceback_text)
    assert cause is not None, traceback_text[-2000:]
    doc = with_spec(sample_doc("cpu-tiny.yaml"), model__source=source, **spec)
    return explain(plan(parse(doc)), cause.line)


def test_a_bucket_model_that_cannot_be_read_names_the_field_to_fix(
    s3: FakeS3, gcs: FakeGCS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    env = {**s3.env(), "CLOUD_STORAGE_EMULATOR_ENDPOINT": gcs.endpoint}
    cases = {
        "s3://models/tiny": "ok",
        "s3://no-such-bucket/tiny": "spec.model.source s3://no-such-bucket/tiny: there is no bucket no-such-bucket",
        "s3://models/tinny": "spec.model.source s3://models/tinny: bucket models has no object under this folder",
        "s3://models/loras": "spec.model.source s3://models/loras: not a model folder, it has no config.json",
        "gs://anonymous@models/tiny": "ok",
        "gs://anonymous@nope/tiny": "spec.model.source gs://nope/tiny: there is no bucket nope",
        "gs://anonymous@models/tinny": "spec.model.source gs://models/tinny: bucket models has no object under",
    }
    said = dict(zip(cases, _run(_LISTING, list(cases), tmp_path, env), strict=True))
    for uri, want in cases.items():
        if want == "ok":
            assert said[uri] == "ok", said[uri][-2000:]
            continue
        user_uri = uri.replace("anonymous@", "")
        assert _status_line(said[uri], user_uri).startswith(want), (uri, said[uri][-1500:])

    # Credentials the store refuses: moto checks them once its first actions (the bucket and
    # its one object) are done.
    one = tmp_path / "one"
    one.mkdir()
    (one / "config.json").write_text("{}")
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "2")
    with FakeS3(None, free_port()) as strict:
        strict.upload(one, "models", "tiny")
        refused = _run(_LISTING, ["s3://models/tiny"], tmp_path, {**env, **strict.env()})[0]
    line = _status_line(refused, "s3://models/tiny", model__storage={"s3": {"credentialsSecret": "s3"}})
    assert line.startswith("spec.model.storage.s3.credentialsSecret: reading s3://models/tiny was refused"), line


def test_pods_of_a_node_download_a_bucket_folder_once_and_again_when_it_changes(
    s3: FakeS3, model_dir: Path, tmp_path: Path
):
    env, root = s3.env(), tmp_path / "node-cache"

    def gets() -> int:
        return s3.log().count("GET /models/tiny/model.safetensors")

    before = gets()
    first = _run(_CACHED, ["s3://models/tiny", str(root), 2], tmp_path, env)
    assert len({folder for folder, _, _ in first}) == 1, first
    assert sorted(hit for _, hit, _ in first) == [False, True], first  # one downloaded, one waited
    assert {p.name for p in model_dir.iterdir()} <= set(first[0][2]), first
    assert gets() - before == 1

    # A changed object: a new copy, the old one gone; then the new copy is read as it is.
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "generation_config.json").write_text('{"temperature": 0.5}')
    s3.upload(changed, "models", "tiny")
    [(folder, hit, _)] = _run(_CACHED, ["s3://models/tiny", str(root), 1], tmp_path, env)
    assert not hit and folder != first[0][0] and not Path(first[0][0]).exists()
    assert gets() - before == 2
    [(again, hit, _)] = _run(_CACHED, ["s3://models/tiny", str(root), 1], tmp_path, env)
    assert hit and again == folder and gets() - before == 2
