"""The Hugging Face Hub stand-in (`testkit/fake_hub.py`, stdlib only) as a server of the local
cluster: the pods' huggingface_hub (vLLM, transformers, Ray Serve LLM) reach it through
`spec.model.hfEndpoint`, as they would reach a company mirror. Where it runs: `fakes.Server`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import testkit.fake_hub

from .fakes import Server

SCRIPT = Path(testkit.fake_hub.__file__)


class FakeHub(Server):
    name = "fake-hub"
    default_port = 8088

    def __init__(self, node, repos: Mapping[str, Path], gated: Mapping[str, str] | None = None, port=None):
        """`repos`: repo id -> folder; `gated`: repo id -> the token it asks for (one token)."""
        super().__init__(node, port)
        self.repos, self.gated = dict(repos), dict(gated or {})
        assert len(set(self.gated.values())) <= 1, "the stand-in accepts one token"

    def command(self) -> list[str]:
        cmd = [sys.executable, str(SCRIPT), "--host", self.ip, "--port", str(self.port)]
        cmd += [a for repo, root in sorted(self.repos.items()) for a in ("--repo", f"{repo}={root}")]
        cmd += [a for repo in sorted(self.gated) for a in ("--gated", repo)]
        if self.gated:
            cmd += ["--token", next(iter(self.gated.values()))]
        return cmd

    def downloads(self, repo: str, path: str, revision: str) -> int:
        """How many times `path` of `repo` at `revision` was sent whole (a GET answered 200)."""
        want = f"GET /{repo}/resolve/{revision}/{path} 200"
        return sum(1 for ln in self.log().splitlines() if ln == want)
