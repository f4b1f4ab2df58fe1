from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmservice_operator.api import LLMService, parse
from llmservice_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


def sample_doc(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifests" / "samples" / name).read_text())


def with_spec(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `doc` with dotted spec paths set (value None deletes the key)."""
    out = copy.deepcopy(doc)
    for dotted, value in changes.items():
        node = out["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


@pytest.fixture(params=SAMPLES, ids=lambda p: p.stem)
def sample(request: pytest.FixtureRequest) -> LLMService:
    return parse(yaml.safe_load(request.param.read_text()))


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings()


# Counts the property-based tests reach, printed after the run.
FUZZ: dict[str, int] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ:
        terminalreporter.section("property-based tests of validate")
        for what, n in FUZZ.items():
            terminalreporter.write_line(f"{what:<60} {n}")
