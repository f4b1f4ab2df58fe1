"""The suite against a cluster known only by a kubeconfig (E2E_KUBECONFIG), as it runs against
kind or GKE. `make test` itself runs every test this way against the local cluster started
beside it (`e2e.cluster up`): that one is recognised by its state file and keeps every local
capability. Here a kubeconfig the state file does not name stands for another cluster's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from e2e import kuberay
from e2e.build import image
from e2e.cluster import Cluster, ClusterError

pytestmark = [pytest.mark.e2e, pytest.mark.local_cluster]


def _other_kubeconfig(cluster: Cluster, tmp_path: Path) -> Path:
    """The same API server and credentials under other names: not this machine's cluster file."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["contexts"][0]["name"] = config["current-context"] = "elsewhere"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_cluster_known_only_by_its_kubeconfig(cluster: Cluster, tmp_path: Path):
    cluster.wait_images()  # the suite's own loads, done
    other = Cluster.attach(_other_kubeconfig(cluster, tmp_path), timeout=5)
    try:
        assert not other.local and not other.owned and other.node is None
        assert {n["metadata"]["name"] for n in other.get_json("nodes")["items"]} == cluster.ready_node_names()
        # What the suite brings in where it is missing: images the nodes already have are left
        # alone; one they lack needs kind or a registry, and the error says so.
        other.load_images((image.OPERATOR, replace(image.PAUSE, name="llmservice.dev/not-there:1")))
        other.wait_images(image.OPERATOR)
        with pytest.raises(ClusterError, match=r"E2E_IMAGE_REGISTRY.*E2E_KIND_CLUSTER"):
            other.wait_images()
        # KubeRay runs here as a process, not as a pod: from the outside it is missing, and
        # its chart comes from the chart repository, which this machine cannot reach.
        assert not kuberay.present(other)
    finally:
        other.stop()
    assert not other.workdir.exists(), "its temporary copy of the kubeconfig is gone"
    assert cluster.get_json("namespace", "default")["metadata"]["name"] == "default", "the cluster is left running"


def test_a_cluster_that_failed_to_start_is_reported(tmp_path: Path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.with_suffix(".failed").write_text("ClusterError: etcd did not start\n")
    with pytest.raises(ClusterError, match="did not start: ClusterError: etcd did not start"):
        Cluster.attach(kubeconfig, timeout=5)
