"""`make kind-demo`: the kind cluster the demo runs on, for machines with Docker and kind (these
build machines have no Docker engine; nothing here runs it). One node, labelled like the local
cluster's real node (the CPU sample selects n2-standard-2 nodes), with the tiny model's
directory mounted at the same path, so its PersistentVolume (hostPath) works as it does here.

    python -m e2e.kind config     # the kind cluster config, for `kind create cluster --config -`
"""

from __future__ import annotations

import sys

import yaml

from .build import model
from .node import NODE_LABELS


def config() -> dict:
    models = str(model.ensure().root.parent)
    node = {
        "role": "control-plane",
        "labels": dict(NODE_LABELS),
        "extraMounts": [{"hostPath": models, "containerPath": models, "readOnly": True}],
    }
    return {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": [node]}


if __name__ == "__main__":
    if sys.argv[1:] != ["config"]:
        sys.exit(__doc__)
    sys.stdout.write(yaml.safe_dump(config(), sort_keys=False))
