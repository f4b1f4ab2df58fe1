"""Session-scoped local control plane shared by every e2e test (and later issues' tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from e2e.cluster import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with Cluster() as c:  # stop() runs even when a test fails or is interrupted
        yield c


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
