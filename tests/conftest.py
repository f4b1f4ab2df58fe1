from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmservice_operator.api import LLMService, parse
from llmservice_operator.gke import NodePools, cluster_manager, compute
from llmservice_operator.settings import GKECluster, OperatorSettings
from testkit.fake_gke import FakeGKE, FakeGKEServer

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


_managers: list[NodePools] = []


@pytest.fixture
def gke() -> Iterator[FakeGKEServer]:
    """The fake GKE API (0.2 s operations); node pool managers made with gke_manager stop after."""
    with FakeGKEServer(FakeGKE(op_seconds=0.2)) as server:
        yield server
        while _managers:  # their operation queues' threads
            _managers.pop().stop()


def gke_manager(server: FakeGKEServer, **kw: Any) -> NodePools:
    """NodePools as `llmservice run` builds them (real clients), against `server`."""
    cluster = GKECluster(project="p", location="us-central1", cluster="c", endpoint=server.endpoint)
    pools = NodePools(cluster_manager(cluster), cluster, compute=compute(cluster), **{"poll_seconds": 0.05, **kw})
    _managers.append(pools)
    return pools


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ:
        terminalreporter.section("property-based tests of validate")
        for what, n in FUZZ.items():
            terminalreporter.write_line(f"{what:<60} {n}")
