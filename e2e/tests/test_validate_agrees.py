"""`llmservice validate` gives the API server's verdict on every edit of the corpus.

The API server gets each document as `kubectl apply --dry-run=server` has it checked: the
YAML itself (so it sees repeated keys, which kubectl's own YAML-to-JSON step would hide by
keeping the last), server-side dry run, strict field validation. validate runs as users run
it, on the same text through stdin.
"""

from __future__ import annotations

import concurrent.futures
import json
import ssl
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from e2e.cluster import Cluster
from e2e.validation_corpus import corpus
from llmservice_operator.cli import app

from .conftest import MEASURED, ROOT

pytestmark = pytest.mark.e2e
PATH = "/apis/llmservice.dev/v1alpha1/namespaces/default/llmservices?dryRun=All&fieldValidation=Strict"


def _api_server_accepts(cluster: Cluster, ctx: ssl.SSLContext, text: str) -> tuple[bool, str]:
    req = urllib.request.Request(
        cluster.server + PATH, data=text.encode(), method="POST", headers={"Content-Type": "application/yaml"}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status == 201, ""
    except urllib.error.HTTPError as e:
        if e.code not in (400, 422):
            raise
        return False, json.loads(e.read()).get("message", "")[:300]


def _validate_accepts(text: str) -> tuple[bool, str]:
    res = CliRunner().invoke(app, ["validate", "-"], input=text)
    assert res.exit_code in (0, 1) and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    return res.exit_code == 0, res.output[-300:]


def test_validate_and_the_api_server_agree_on_every_edit(cluster: Cluster):
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmservice.dev_llmservices.yaml"))
    cluster.wait_established(["llmservices.llmservice.dev"])
    ctx = ssl.create_default_context(cafile=str(cluster.ca))
    ctx.load_cert_chain(*map(str, cluster.admin))
    cases = corpus()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        server = list(pool.map(lambda case: _api_server_accepts(cluster, ctx, case[1]), cases))
    disagree = []
    for (label, text), (api_ok, api_says) in zip(cases, server, strict=True):
        ok, says = _validate_accepts(text)
        if ok != api_ok:
            disagree.append(f"{label}: api server {'accepts' if api_ok else 'rejects'} ({api_says}); validate: {says}")
    accepted = sum(ok for ok, _ in server)
    MEASURED["validate vs API server: same verdict"] = f"{len(cases) - len(disagree)}/{len(cases)}"
    MEASURED["  of which the API server accepts / rejects"] = f"{accepted} / {len(cases) - accepted}"
    assert not disagree, "\n".join(disagree[:40])
