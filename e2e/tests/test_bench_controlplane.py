"""A small run of `make bench-controlplane` on the suite's cluster: the operator converges a
few services with at most 2 reconciles each, writes nothing while idle, and the report has
every row and the targets."""

from __future__ import annotations

import pytest
from kubernetes.config import new_client_from_config

from e2e import bench_controlplane as bench
from e2e.cluster import Cluster
from llmservice_operator.controller.kube import Kube

from .conftest import Operator

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]  # audit log, node, simulated nodes


def test_bench_controlplane_smoke(cluster: Cluster, operator: Operator, tmp_path):
    kube = Kube(new_client_from_config(config_file=str(cluster.kubeconfig)))
    operator.stop()  # the suite's operator watches every namespace: the bench's own is alone
    try:
        result = bench.run_n(cluster, kube, 4, idle_s=0.5, edits=1, settle_s=0, delete=False)
    finally:
        operator.start()
    assert result.reconciles_per_svc <= 2, result
    assert result.idle_writes == 0 and result.label_writes == 0, result
    assert result.raw_per_s > 0 and result.child_per_s > 0
    png = tmp_path / "bench.png"
    table = bench.report([result], png)
    assert "| ratio |" in table and "Targets:" in table and png.stat().st_size > 5_000
